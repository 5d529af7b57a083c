-- 001: the cloud database (run once as an administrator on the cloud server).
-- Idempotent. utf8mb4 so Chinese text and 4-byte characters survive.
--   mariadb -h CLOUD_HOST -P 5555 -u admin -p < mysql_sync/sql/001_target_database.sql
CREATE DATABASE IF NOT EXISTS `cloud` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
