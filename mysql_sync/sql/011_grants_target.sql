-- 011: the job's writer user on the cloud database. Run in the cloud database as an
-- administrator after 002 and 003 (column grants need the tables). Idempotent.
--   mariadb -h CLOUD_HOST -P 5555 -u admin -p cloud
--   MariaDB [cloud]> SET @writer_password = '...';   -- required, never stored in the repo
--   MariaDB [cloud]> SET @writer_host = '%';         -- optional: the job host's public address
--   MariaDB [cloud]> SOURCE mysql_sync/sql/011_grants_target.sql
SET @writer_host = COALESCE(@writer_host, '%');
SET @stmt = IF(@writer_password IS NULL,
               'DO error_set_writer_password_first()',
               CONCAT('CREATE USER IF NOT EXISTS ''sync_writer''@', QUOTE(@writer_host),
                      ' IDENTIFIED BY ', QUOTE(@writer_password)));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

SET @stmt = CONCAT('ALTER USER ''sync_writer''@', QUOTE(@writer_host),
                   ' IDENTIFIED BY ', QUOTE(@writer_password));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Data table (repeat for every [[tables]] target): read and insert, and UPDATE only on the
-- columns the job copies, which `INSERT ... ON DUPLICATE KEY UPDATE PackCode = PackCode` needs
-- (MariaDB checks UPDATE on every inserted column). The cloud-side outbound columns chuku, jxs
-- and cky get no UPDATE grant: the job cannot change them, even by mistake.
SET @protected = 'chuku,jxs,cky';
SET @update_cols = (SELECT GROUP_CONCAT(CONCAT('`', REPLACE(COLUMN_NAME, '`', '``'), '`')
                                        ORDER BY ORDINAL_POSITION)
                    FROM information_schema.COLUMNS
                    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Table1'
                      AND FIND_IN_SET(COLUMN_NAME, @protected) = 0);
SET @stmt = CONCAT('GRANT SELECT, INSERT, UPDATE (', @update_cols, ') ON `',
                   REPLACE(DATABASE(), '`', '``'), '`.`Table1` TO ''sync_writer''@',
                   QUOTE(@writer_host));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Bookkeeping tables (003): the watermark, conflicts and rejects.
SET @stmt = CONCAT('GRANT SELECT, INSERT, UPDATE ON `', REPLACE(DATABASE(), '`', '``'),
                   '`.`sync_state` TO ''sync_writer''@', QUOTE(@writer_host));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
SET @stmt = CONCAT('GRANT SELECT, INSERT, UPDATE ON `', REPLACE(DATABASE(), '`', '``'),
                   '`.`sync_conflicts` TO ''sync_writer''@', QUOTE(@writer_host));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
SET @stmt = CONCAT('GRANT SELECT, INSERT, UPDATE ON `', REPLACE(DATABASE(), '`', '``'),
                   '`.`sync_rejects` TO ''sync_writer''@', QUOTE(@writer_host));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Only if the job itself should run --init-target (create missing tables) with this user:
-- GRANT CREATE ON `cloud`.* TO 'sync_writer'@'%';
