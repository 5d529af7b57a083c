-- 010: the job's read-only user `sync_reader` on ONE line database: SELECT on the synced
-- tables only, nothing else in the database (an unrelated `users` table stays unreadable).
-- Run on each line's server, in the line database, as an administrator. Changes no table
-- (the recommended cursor index is a separate, reviewed step: 012_source_cursor_index.sql).
-- Idempotent: a re-run resets the password and leaves the account with exactly the rights
-- below; whatever it held before (e.g. SELECT on the whole database) is revoked first.
--
-- Parameters, user variables set in the same session:
--   @reader_password  required; never stored in this repository
--   @reader_host      required, no default: the job host as the server sees it, e.g.
--                     '192.168.1.50' or '192.168.1.%' ('%' = from anywhere, only if you mean it)
--   @sync_tables      optional, default 'Table1': comma-separated line tables the job copies
--                     (the `source` of every [[tables]] block), at most 8
--
-- Run it so that it stops at the first error (in batch mode the client then exits non-zero):
--   cd /opt/mysql_sync
--   mariadb --abort-source-on-error -h LINE_HOST -u root -p factory
--   MariaDB [factory]> SET @reader_password = '...';
--   MariaDB [factory]> SET @reader_host = '192.168.1.50';
--   MariaDB [factory]> SOURCE mysql_sync/sql/010_grants_source.sql
-- A failed check stops before anything changes and says what to do, e.g.
--   ERROR 1305 (42000) ...: FUNCTION factory.error_set_reader_host_first does not exist
--   ERROR 1146 (42S02) ...: Table 'factory.Table9' doesn't exist     (a name in @sync_tables)
-- Portable SQL (MariaDB 10.x, MySQL 5.7/8): no loops outside stored programs, so the GRANTs
-- are built in one query and run by the eight identical lines at the end.

-- The GRANT lists below are built with GROUP_CONCAT, cut at 1024 bytes by MySQL's default.
SET SESSION group_concat_max_len = 1048576;
SET @list = REPLACE(COALESCE(@sync_tables, 'Table1'), ' ', '');
SET @n = LENGTH(@list) - LENGTH(REPLACE(@list, ',', '')) + 1;
SET @db = CONCAT('`', REPLACE(DATABASE(), '`', '``'), '`');
SET @account = CONCAT('''sync_reader''@', QUOTE(@reader_host));
-- The names in @list, one row each (up to 8).
SET @missing = (
  SELECT GROUP_CONCAT(t.name)
  FROM (SELECT SUBSTRING_INDEX(SUBSTRING_INDEX(@list, ',', k.i), ',', -1) AS name
        FROM (SELECT 1 AS i UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
              UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8) k
        WHERE k.i <= @n) t
  WHERE NOT EXISTS (SELECT 1 FROM information_schema.TABLES x
                    WHERE x.TABLE_SCHEMA = DATABASE() AND x.TABLE_NAME = t.name));

-- Checks first: nothing changes unless all pass. A missing table fails as a SELECT from it.
SET @stmt = CASE
  WHEN DATABASE() IS NULL THEN 'DO error_connect_to_the_line_database_first()'
  WHEN COALESCE(@reader_password, '') = '' THEN 'DO error_set_reader_password_first()'
  WHEN COALESCE(@reader_host, '') = '' THEN 'DO error_set_reader_host_first()'
  WHEN @n > 8 THEN 'DO error_at_most_8_tables_in_sync_tables()'
  WHEN @missing IS NOT NULL THEN
    CONCAT('SELECT 1 FROM ', @db, '.`', REPLACE(SUBSTRING_INDEX(@missing, ',', 1), '`', '``'), '`')
  ELSE 'DO 0' END;
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

SET @stmt = CONCAT('CREATE USER IF NOT EXISTS ', @account, ' IDENTIFIED BY ', QUOTE(@reader_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @stmt = CONCAT('ALTER USER ', @account, ' IDENTIFIED BY ', QUOTE(@reader_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @stmt = CONCAT('REVOKE ALL PRIVILEGES, GRANT OPTION FROM ', @account);
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

-- SELECT on each synced table, nothing on the database as a whole. HEX keeps the list safe
-- to split on ',' whatever the names hold.
SET @grants = (
  SELECT GROUP_CONCAT(HEX(CONCAT('GRANT SELECT ON ', @db, '.`', REPLACE(t.name, '`', '``'),
                                 '` TO ', @account)) ORDER BY t.i)
  FROM (SELECT k.i, SUBSTRING_INDEX(SUBSTRING_INDEX(@list, ',', k.i), ',', -1) AS name
        FROM (SELECT 1 AS i UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
              UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8) k
        WHERE k.i <= @n) t);
SET @i = 0;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

-- What the account holds now, and other sync_reader accounts (e.g. 'sync_reader'@'%' made by
-- an older version of this script with its database-wide SELECT): drop those you do not use.
SET @stmt = CONCAT('SHOW GRANTS FOR ', @account);
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SELECT CONCAT('''sync_reader''@', QUOTE(Host)) AS `other sync_reader accounts: DROP USER if unused`
FROM mysql.user WHERE User = 'sync_reader' AND Host <> @reader_host;
