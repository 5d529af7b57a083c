-- 002: the target table(s) in the cloud database, PackCode as PRIMARY KEY. Idempotent.
--   mariadb -h CLOUD_HOST -P 5555 -u admin -p cloud < mysql_sync/sql/002_target_tables.sql
-- Alternative: `sync.py --init-target` creates each missing target table from the source's own
-- definition (all its columns, PackCode as PRIMARY KEY, source_name added). Use this file when
-- you want to write the cloud table yourself: the columns below are an example, keep them in
-- line with the line databases (every copied source column must exist here).

CREATE TABLE IF NOT EXISTS `Table1` (
  `PackCode` VARCHAR(64) NOT NULL,              -- unique pack code: one row per pack, ever
  `parentcode` VARCHAR(64) NULL,                -- parent (carton / pallet) code
  `CreatedDate` DATETIME(6) NULL,               -- production time: the sync cursor
  `product` VARCHAR(200) NULL,
  `weight` DECIMAL(10,3) NULL,
  `x1` VARCHAR(8) NULL,
  `c1` VARCHAR(8) NULL,
  `c2` VARCHAR(64) NULL,
  `j1` VARCHAR(64) NULL,
  `chuku` VARCHAR(16) NULL,                     -- outbound flag: edited in the cloud only
  `jxs` VARCHAR(64) NULL,                       -- dealer: edited in the cloud only
  `cky` VARCHAR(64) NULL,                       -- outbound warehouse: edited in the cloud only
  `source_name` VARCHAR(64) NOT NULL DEFAULT '', -- which production line the row came from
  PRIMARY KEY (`PackCode`),
  KEY `ix_CreatedDate` (`CreatedDate`),
  KEY `ix_parentcode` (`parentcode`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- An EXISTING cloud table from the old sync tool: add what the job needs, only if missing.
-- (Remove duplicate PackCodes first: see 021_duplicate_packcodes.sql.)
SET @has_pk = (SELECT COUNT(*) FROM information_schema.TABLE_CONSTRAINTS
               WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Table1'
                 AND CONSTRAINT_TYPE = 'PRIMARY KEY');
SET @stmt = IF(@has_pk = 0, 'ALTER TABLE `Table1` ADD PRIMARY KEY (`PackCode`)', 'DO 0');
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

SET @has_col = (SELECT COUNT(*) FROM information_schema.COLUMNS
                WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Table1'
                  AND COLUMN_NAME = 'source_name');
SET @stmt = IF(@has_col = 0,
               'ALTER TABLE `Table1` ADD COLUMN `source_name` VARCHAR(64) NOT NULL DEFAULT ''''',
               'DO 0');
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
