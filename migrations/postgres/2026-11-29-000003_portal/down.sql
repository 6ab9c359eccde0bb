DROP INDEX audit_events_kind;
DROP INDEX jobs_status_created;
DROP INDEX jobs_created;
DROP TABLE sessions;
