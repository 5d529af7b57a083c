-- 011: the job's writer user `sync_writer` on the cloud database. Run in the cloud database as
-- an administrator AFTER the target table(s) and the bookkeeping tables exist (002 + 003, or
-- the first `sync.py --init-target` run after 013): column grants need the columns, so this
-- script refuses to run, and changes nothing, while a table is missing.
-- Idempotent: a re-run resets the password and leaves the account with exactly the rights
-- below; whatever it held before (013's temporary rights, a database-wide grant) is revoked.
--
-- Rights, per table in @sync_tables: SELECT, INSERT, and UPDATE only on the copied columns,
-- which `INSERT ... ON DUPLICATE KEY UPDATE PackCode = PackCode` needs (MariaDB checks UPDATE
-- on every inserted column). The cloud-side columns in @protected get no UPDATE right: the job
-- cannot change them, even by mistake. On the bookkeeping tables: SELECT, INSERT, UPDATE.
-- CREATE on exactly these tables, because `--init-target` runs CREATE TABLE IF NOT EXISTS,
-- which the server checks even when the table exists (it allows no ALTER, DROP or INDEX).
--
-- A COLUMN ADDED LATER (on the lines and in the cloud table) is not in the UPDATE list: every
-- run then fails with error 1143 (UPDATE command denied ... for column) until this script is
-- run again. Re-run it after every change to the target table's columns.
--
-- Parameters, user variables set in the same session:
--   @writer_password  required; never stored in this repository
--   @writer_host      required, no default: the job host's address as the cloud sees it
--                     (its public address); '%' = from anywhere, only if you mean it
--   @sync_tables      optional, default 'Table1': comma-separated cloud tables (the `target`
--                     of every [[tables]] block), at most 8
--   @protected        optional, default 'chuku,jxs,cky': columns the job must never change
--
-- Run it so that it stops at the first error (in batch mode the client then exits non-zero):
--   cd /opt/mysql_sync
--   mariadb --abort-source-on-error -h CLOUD_HOST -P 5555 -u admin -p cloud
--   MariaDB [cloud]> SET @writer_password = '...';
--   MariaDB [cloud]> SET @writer_host = '203.0.113.7';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/011_grants_target.sql
-- A failed check stops before anything changes, e.g.
--   ERROR 1305 (42000) ...: FUNCTION cloud.error_set_writer_host_first does not exist
--   ERROR 1146 (42S02) ...: Table 'cloud.Table1' doesn't exist   (run 002, or 013 + --init-target)

-- The GRANT lists below are built with GROUP_CONCAT, cut at 1024 bytes by MySQL's default.
SET SESSION group_concat_max_len = 1048576;
SET @bookkeeping = 'sync_state,sync_conflicts,sync_rejects';
SET @list = CONCAT(REPLACE(COALESCE(@sync_tables, 'Table1'), ' ', ''), ',', @bookkeeping);
SET @n = LENGTH(@list) - LENGTH(REPLACE(@list, ',', '')) + 1;
SET @protected_list = REPLACE(COALESCE(@protected, 'chuku,jxs,cky'), ' ', '');
SET @db = CONCAT('`', REPLACE(DATABASE(), '`', '``'), '`');
SET @account = CONCAT('''sync_writer''@', QUOTE(@writer_host));
SET @missing = (
  SELECT GROUP_CONCAT(t.name ORDER BY t.i)
  FROM (SELECT k.i, SUBSTRING_INDEX(SUBSTRING_INDEX(@list, ',', k.i), ',', -1) AS name
        FROM (SELECT 1 AS i UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
              UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8
              UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11) k
        WHERE k.i <= @n) t
  WHERE NOT EXISTS (SELECT 1 FROM information_schema.TABLES x
                    WHERE x.TABLE_SCHEMA = DATABASE() AND x.TABLE_NAME = t.name));

-- Checks first: nothing changes unless all pass. A missing table fails as a SELECT from it.
SET @stmt = CASE
  WHEN DATABASE() IS NULL THEN 'DO error_connect_to_the_cloud_database_first()'
  WHEN COALESCE(@writer_password, '') = '' THEN 'DO error_set_writer_password_first()'
  WHEN COALESCE(@writer_host, '') = '' THEN 'DO error_set_writer_host_first()'
  WHEN @n > 11 THEN 'DO error_at_most_8_tables_in_sync_tables()'
  WHEN @missing IS NOT NULL THEN
    CONCAT('SELECT 1 FROM ', @db, '.`', REPLACE(SUBSTRING_INDEX(@missing, ',', 1), '`', '``'), '`')
  ELSE 'DO 0' END;
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

SET @stmt = CONCAT('CREATE USER IF NOT EXISTS ', @account, ' IDENTIFIED BY ', QUOTE(@writer_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @stmt = CONCAT('ALTER USER ', @account, ' IDENTIFIED BY ', QUOTE(@writer_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @stmt = CONCAT('REVOKE ALL PRIVILEGES, GRANT OPTION FROM ', @account);
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

-- One GRANT per table: bookkeeping tables get UPDATE on the table, data tables UPDATE on their
-- current columns minus @protected. HEX keeps the list safe to split on ','.
SET @grants = (
  SELECT GROUP_CONCAT(HEX(CONCAT(
           'GRANT SELECT, INSERT, CREATE, UPDATE',
           IF(FIND_IN_SET(t.name, @bookkeeping) > 0, '', CONCAT(' (',
              (SELECT GROUP_CONCAT(CONCAT('`', REPLACE(c.COLUMN_NAME, '`', '``'), '`')
                                   ORDER BY c.ORDINAL_POSITION)
               FROM information_schema.COLUMNS c
               WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = t.name
                 AND FIND_IN_SET(c.COLUMN_NAME, @protected_list) = 0), ')')),
           ' ON ', @db, '.`', REPLACE(t.name, '`', '``'), '` TO ', @account)) ORDER BY t.i)
  FROM (SELECT k.i, SUBSTRING_INDEX(SUBSTRING_INDEX(@list, ',', k.i), ',', -1) AS name
        FROM (SELECT 1 AS i UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
              UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8
              UNION ALL SELECT 9 UNION ALL SELECT 10 UNION ALL SELECT 11) k
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
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @i = @i + 1; SET @stmt = IF(@i > @n, 'DO 0', CONVERT(UNHEX(SUBSTRING_INDEX(SUBSTRING_INDEX(@grants, ',', @i), ',', -1)) USING utf8mb4)); PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

-- What the account holds now, and other sync_writer accounts (e.g. 'sync_writer'@'%' made by
-- an older version of this script): drop those you do not use.
SET @stmt = CONCAT('SHOW GRANTS FOR ', @account);
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SELECT CONCAT('''sync_writer''@', QUOTE(Host)) AS `other sync_writer accounts: DROP USER if unused`
FROM mysql.user WHERE User = 'sync_writer' AND Host <> @writer_host;
