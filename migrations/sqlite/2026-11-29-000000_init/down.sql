DROP TABLE audit_events;
DROP TABLE users;
DROP TABLE dispatches;
DROP TABLE jobs;
DROP TABLE series;
DROP TABLE instances;
