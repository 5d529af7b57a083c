-- 003: bookkeeping tables of mysql_sync in the TARGET database. Idempotent.
-- sync.py --init-target executes exactly this file; operators may run it by hand:
--   mariadb -h CLOUD_HOST -P 5555 -u admin -p cloud < mysql_sync/sql/003_bookkeeping.sql

-- One row per (source, source table, target table): the watermark (cursor, key) of the last
-- committed batch. Written in the same transaction as the rows it covers.
CREATE TABLE IF NOT EXISTS `sync_state` (
  `source_name` VARCHAR(64) NOT NULL,
  `source_table` VARCHAR(64) NOT NULL,
  `target_table` VARCHAR(64) NOT NULL,
  `cursor_value` VARCHAR(64) NULL,
  `key_value` VARCHAR(255) NULL,
  `rows_inserted` BIGINT UNSIGNED NOT NULL DEFAULT 0,
  `updated_at` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (`source_name`, `source_table`, `target_table`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- A PackCode that reached the target with different content (another line, or a duplicate
-- within a line): the first writer wins, the loser is kept here as JSON. One row per distinct
-- (source, table, key, content); seen_count counts how often a run met it again.
CREATE TABLE IF NOT EXISTS `sync_conflicts` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `source_name` VARCHAR(64) NOT NULL,
  `table_name` VARCHAR(64) NOT NULL,
  `key_value` VARCHAR(255) NOT NULL,
  `row_hash` CHAR(32) NOT NULL,
  `row_json` LONGTEXT NOT NULL,
  `winner_source` VARCHAR(64) NULL,
  `first_seen` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `last_seen` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `seen_count` INT UNSIGNED NOT NULL DEFAULT 1,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_conflict` (`source_name`, `table_name`, `key_value`, `row_hash`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Rows that could not be stored: NULL or empty key, NULL cursor, a value the target refuses in
-- strict mode (too long, out of range, bad date), a row larger than max_allowed_packet.
CREATE TABLE IF NOT EXISTS `sync_rejects` (
  `id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  `source_name` VARCHAR(64) NOT NULL,
  `table_name` VARCHAR(64) NOT NULL,
  `key_value` VARCHAR(255) NULL,
  `row_hash` CHAR(32) NOT NULL,
  `row_json` LONGTEXT NOT NULL,
  `error_code` INT NULL,
  `error` VARCHAR(1000) NOT NULL,
  `first_seen` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `last_seen` DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  `seen_count` INT UNSIGNED NOT NULL DEFAULT 1,
  PRIMARY KEY (`id`),
  UNIQUE KEY `uq_reject` (`source_name`, `table_name`, `row_hash`),
  KEY `ix_reject_key` (`source_name`, `table_name`, `key_value`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
