ALTER TABLE jobs DROP COLUMN stage_seconds;
DROP TABLE workers;
