-- 022: keep a copy of the cloud-side outbound fields before risky maintenance (re-import,
-- dedup). Idempotent for a given name: an existing backup table is left as it is.
--   MariaDB [cloud]> SET @backup_table = 'Table1_backup_20220420';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/022_backup_outbound_fields.sql
SET @stmt = IF(@backup_table IS NULL,
               'DO error_set_backup_table_first()',
               CONCAT('CREATE TABLE IF NOT EXISTS `', REPLACE(@backup_table, '`', '``'),
                      '` (PRIMARY KEY (`PackCode`)) AS ',
                      'SELECT `PackCode`, `chuku`, `jxs`, `cky` FROM `Table1`'));
PREPARE step FROM @stmt;
EXECUTE step;
DEALLOCATE PREPARE step;
