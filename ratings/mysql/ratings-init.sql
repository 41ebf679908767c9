-- The database ratings v2 reads (SERVICE_VERSION=v2, DB_TYPE=mysql): upstream Bookinfo's
-- schema and seed rows. It selects `Rating` from the first two rows the server returns,
-- as Reviewer1 (5) and Reviewer2 (4).
--
-- Used as it is by the MariaDB tests (ratings/tests/mysql.rs), docker-compose.yml's
-- ratings-v2 profile (mounted into /docker-entrypoint-initdb.d) and k8s/mysql/ (a
-- ConfigMap holding an exact copy, which scripts/validate-k8s.py checks). By hand:
--   mysql -h 127.0.0.1 -uroot -ppassword < ratings/mysql/ratings-init.sql

CREATE DATABASE test;
USE test;

CREATE TABLE ratings (
  ReviewID INT NOT NULL,
  Rating INT,
  PRIMARY KEY (ReviewID)
);

INSERT INTO ratings (ReviewID, Rating) VALUES (1, 5), (2, 4);
