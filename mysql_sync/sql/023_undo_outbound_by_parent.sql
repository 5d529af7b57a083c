-- 023: undo the outbound of every pack under one parent code (notes, query 4), in the cloud
-- table where the outbound fields live. Idempotent; without @parent_code nothing changes.
--   MariaDB [cloud]> SET @parent_code = 'LYB201882413481908';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/023_undo_outbound_by_parent.sql
UPDATE `Table1`
SET `chuku` = '否', `jxs` = '', `cky` = ''
WHERE `parentcode` = @parent_code;
SELECT ROW_COUNT() AS `packs_reset`;
