-- 021: PackCodes that occur more than once (notes, query 6). Read-only. In the cloud table
-- PackCode is the PRIMARY KEY so this returns nothing there; on a line database it finds the
-- duplicates that end up in sync_conflicts. Remove duplicates before adding the key (002).
SELECT `PackCode`, COUNT(*) AS `n`
FROM `Table1`
GROUP BY `PackCode`
HAVING COUNT(*) > 1
ORDER BY `n` DESC, `PackCode`;
