-- 013: only for the route where `sync.py --init-target` creates the cloud table from a line's
-- own definition. Until that table exists, 011 cannot name its columns, so this script gives
-- `sync_writer` what the first `--init-target` run needs, on the tables in @sync_tables (which
-- must NOT exist yet) and the bookkeeping tables only: CREATE, SELECT, INSERT and UPDATE on
-- every column. Run 011 right after that first run: it revokes these rights and grants the
-- narrow ones (no UPDATE on chuku/jxs/cky). The first run writes into a table nobody has
-- edited yet and never names the protected columns, so nothing of the cloud's is at risk.
-- Run in the cloud database as an administrator. Adds rights, revokes none.
--
-- Parameters, user variables set in the same session (as in 011):
--   @writer_password  required; never stored in this repository
--   @writer_host      required, no default: the job host's address as the cloud sees it
--   @sync_tables      optional, default 'Table1': the cloud tables --init-target will create
--
--   cd /opt/mysql_sync
--   mariadb --abort-source-on-error -h CLOUD_HOST -P 5555 -u admin -p cloud
--   MariaDB [cloud]> SET @writer_password = '...';
--   MariaDB [cloud]> SET @writer_host = '203.0.113.7';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/013_grants_target_for_init.sql
-- A table that already exists stops it (FUNCTION cloud.error_table_exists_run_011_instead
-- does not exist): the hand-made route (002) needs 011 only.

-- The GRANT lists below are built with GROUP_CONCAT, cut at 1024 bytes by MySQL's default.
SET SESSION group_concat_max_len = 1048576;
SET @bookkeeping = 'sync_state,sync_conflicts,sync_rejects';
SET @tables = REPLACE(COALESCE(@sync_tables, 'Table1'), ' ', '');
SET @list = CONCAT(@tables, ',', @bookkeeping);
SET @n = LENGTH(@list) - LENGTH(REPLACE(@list, ',', '')) + 1;
SET @db = CONCAT('`', REPLACE(DATABASE(), '`', '``'), '`');
SET @account = CONCAT('''sync_writer''@', QUOTE(@writer_host));
SET @existing = (SELECT COUNT(*) FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = DATABASE() AND FIND_IN_SET(TABLE_NAME, @tables) > 0);

SET @stmt = CASE
  WHEN DATABASE() IS NULL THEN 'DO error_connect_to_the_cloud_database_first()'
  WHEN COALESCE(@writer_password, '') = '' THEN 'DO error_set_writer_password_first()'
  WHEN COALESCE(@writer_host, '') = '' THEN 'DO error_set_writer_host_first()'
  WHEN @n > 11 THEN 'DO error_at_most_8_tables_in_sync_tables()'
  WHEN @existing > 0 THEN 'DO error_table_exists_run_011_instead()'
  ELSE 'DO 0' END;
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

SET @stmt = CONCAT('CREATE USER IF NOT EXISTS ', @account, ' IDENTIFIED BY ', QUOTE(@writer_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET @stmt = CONCAT('ALTER USER ', @account, ' IDENTIFIED BY ', QUOTE(@writer_password));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;

-- Table-level grants that include CREATE are allowed before the table exists.
SET @grants = (
  SELECT GROUP_CONCAT(HEX(CONCAT('GRANT SELECT, INSERT, CREATE, UPDATE ON ', @db, '.`',
                                 REPLACE(t.name, '`', '``'), '` TO ', @account)) ORDER BY t.i)
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

SET @stmt = CONCAT('SHOW GRANTS FOR ', @account);
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
