-- The worker registry: one row per supervisor (a worker id is host:pid:device), upserted at start,
-- refreshed every few seconds while it runs, and given stopped_at on a clean shutdown. A worker is
-- alive while last_seen_at is recent and stopped_at is NULL; /healthz and /metrics read it.
CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    device         TEXT NOT NULL,
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    version        TEXT NOT NULL,
    started_at     TIMESTAMP NOT NULL,
    last_seen_at   TIMESTAMP NOT NULL,
    -- the job it runs now; no foreign key: the registry must never block a job row's life
    current_job_id TEXT,
    stopped_at     TIMESTAMP
);
CREATE INDEX workers_last_seen ON workers (last_seen_at);

-- Seconds per pipeline stage of a completed job, as a JSON object {"segmentation": 12.5, …},
-- reported by the job's process; /metrics builds the stage-duration histogram from it.
ALTER TABLE jobs ADD COLUMN stage_seconds TEXT;
