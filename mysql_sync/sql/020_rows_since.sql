-- 020: rows produced since a moment (notes, query 2). Read-only; works on a line database or
-- the cloud one.
--   MariaDB [cloud]> SET @since = '2022-04-15 11:48:40';
--   MariaDB [cloud]> SOURCE mysql_sync/sql/020_rows_since.sql
-- Without @since it shows today's rows.
SELECT *
FROM `Table1`
WHERE `CreatedDate` >= COALESCE(@since, CURRENT_DATE)
  AND `CreatedDate` <= NOW(6)
ORDER BY `CreatedDate`, `PackCode`;
