-- 010: read-only user for the job on ONE line database. Run on each line's server, in the
-- factory database, as an administrator. Idempotent (re-running also resets the password).
-- The password is never stored in this repository: set it in the same session first, e.g.
--   mariadb -u root -p factory
--   MariaDB [factory]> SET @reader_password = '...';      -- required
--   MariaDB [factory]> SET @reader_host = '192.168.1.%';  -- optional, default '%'
--   MariaDB [factory]> SOURCE mysql_sync/sql/010_grants_source.sql
SET @reader_host = COALESCE(@reader_host, '%');
SET @stmt = IF(@reader_password IS NULL,
               'DO error_set_reader_password_first()',
               CONCAT('CREATE USER IF NOT EXISTS ''sync_reader''@', QUOTE(@reader_host),
                      ' IDENTIFIED BY ', QUOTE(@reader_password)));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

SET @stmt = CONCAT('ALTER USER ''sync_reader''@', QUOTE(@reader_host),
                   ' IDENTIFIED BY ', QUOTE(@reader_password));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

-- SELECT only, on this database only.
SET @stmt = CONCAT('GRANT SELECT ON `', REPLACE(DATABASE(), '`', '``'), '`.* TO ''sync_reader''@',
                   QUOTE(@reader_host));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;

-- Recommended for speed (run once; needs ALTER, so as an administrator): the job reads in
-- (CreatedDate, PackCode) order. Skipped when an index starting with CreatedDate exists.
SET @has_ix = (SELECT COUNT(*) FROM information_schema.STATISTICS
               WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'Table1'
                 AND COLUMN_NAME = 'CreatedDate' AND SEQ_IN_INDEX = 1);
SET @stmt = IF(@has_ix = 0,
               'ALTER TABLE `Table1` ADD INDEX `ix_sync_cursor` (`CreatedDate`, `PackCode`)',
               'DO 0');
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
