-- 024: restore the outbound fields from a backup table (notes, query 7), matched on PackCode.
-- Idempotent. Rows absent from the backup are left alone.
--   MariaDB [cloud]> SET @backup_table = 'Table1_backup_20220420';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/024_restore_outbound_from_backup.sql
SET @stmt = IF(@backup_table IS NULL,
               'DO error_set_backup_table_first()',
               CONCAT('UPDATE `Table1` a JOIN `', REPLACE(@backup_table, '`', '``'),
                      '` b ON a.`PackCode` = b.`PackCode` ',
                      'SET a.`chuku` = b.`chuku`, a.`jxs` = b.`jxs`, a.`cky` = b.`cky`'));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
SELECT ROW_COUNT() AS `rows_restored`;
