-- 012: ALTERS THE PRODUCTION TABLE on a line server: adds the index (CreatedDate, PackCode)
-- that the job reads along. Without it every run scans the whole table; with an index that
-- only starts with CreatedDate the first copy sorts the table. Optional but recommended; review
-- it with whoever owns the line database before running it. Idempotent: nothing happens when
-- an index starting with (@cursor_column, @key_column) exists.
--
-- What it costs on MariaDB/MySQL InnoDB: ALGORITHM=INPLACE, LOCK=NONE, an online index build.
-- The line application keeps reading and writing during the build, which reads the whole
-- table once and sorts it (time grows with the table; try it on a copy first to know how
-- long). Changes made meanwhile are logged and applied at the end; more than
-- innodb_online_alter_log_max_size of them (default 128 MB) makes the ALTER fail, changing
-- nothing. At its start and end the ALTER needs an exclusive metadata lock for a moment: it
-- waits for every open transaction and running query on the table (a sync run's streaming
-- read included), and while it waits, the application's new queries on the table wait behind
-- it. So stop the sync's cron line meanwhile, and this script caps that wait at
-- @lock_wait_seconds (default 5): if the table is busy it fails with error 1205 (Lock wait
-- timeout) instead of stalling the line; run it again at a quieter moment. A table the server
-- cannot index online (MyISAM, some FULLTEXT/spatial cases) fails with error 1845/1846
-- (ALGORITHM=INPLACE or LOCK=NONE is not supported), changing nothing: there the build blocks
-- the application's writes for its whole duration, so do it only in a maintenance window, by
-- hand, with ALGORITHM=COPY, LOCK=SHARED.
--
-- Parameters, user variables set in the same session (all optional):
--   @cursor_table      default 'Table1'       the line table the job copies
--   @cursor_column     default 'CreatedDate'  its [[tables]] cursor
--   @key_column        default 'PackCode'     its [[tables]] key
--   @lock_wait_seconds default 5
--
--   cd /opt/mysql_sync
--   mariadb --abort-source-on-error -h LINE_HOST -u root -p factory
--   MariaDB [factory]> SOURCE mysql_sync/sql/012_source_cursor_index.sql

SET @t = COALESCE(@cursor_table, 'Table1');
SET @c = COALESCE(@cursor_column, 'CreatedDate');
SET @k = COALESCE(@key_column, 'PackCode');
-- An index whose first two columns are (cursor, key) already serves the job.
SET @has_ix = (SELECT COUNT(*) FROM information_schema.STATISTICS a
               JOIN information_schema.STATISTICS b
                 ON b.TABLE_SCHEMA = a.TABLE_SCHEMA AND b.TABLE_NAME = a.TABLE_NAME
                AND b.INDEX_NAME = a.INDEX_NAME AND b.SEQ_IN_INDEX = 2
               WHERE a.TABLE_SCHEMA = DATABASE() AND a.TABLE_NAME = @t AND a.SEQ_IN_INDEX = 1
                 AND a.COLUMN_NAME = @c AND b.COLUMN_NAME = @k);
SET @old_lock_wait = @@SESSION.lock_wait_timeout;
SET @stmt = CONCAT('SET SESSION lock_wait_timeout = ', CAST(COALESCE(@lock_wait_seconds, 5) AS UNSIGNED));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
-- A missing table or column fails here with the server's own error naming it.
SET @stmt = IF(@has_ix > 0, 'DO 0',
               CONCAT('ALTER TABLE `', REPLACE(@t, '`', '``'), '` ADD INDEX `ix_sync_cursor` (`',
                      REPLACE(@c, '`', '``'), '`, `', REPLACE(@k, '`', '``'),
                      '`), ALGORITHM=INPLACE, LOCK=NONE'));
PREPARE step FROM @stmt; EXECUTE step; DEALLOCATE PREPARE step;
SET SESSION lock_wait_timeout = @old_lock_wait;
SELECT INDEX_NAME AS `index`, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) AS `columns`
FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = @t
GROUP BY INDEX_NAME;
