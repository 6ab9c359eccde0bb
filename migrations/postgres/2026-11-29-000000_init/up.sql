-- kneenode's first schema (PostgreSQL). migrations/sqlite holds the same tables for SQLite; keep the
-- two in step. Times are UTC, stored as TIMESTAMP (diesel's multi-backend connection shares one SQL
-- type per column across both databases).

CREATE TABLE instances (
    id                  BIGSERIAL PRIMARY KEY,
    sop_instance_uid    TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    -- a second instance with the same SOP Instance UID but other bytes is kept as revision 2, 3, …
    revision            INTEGER NOT NULL DEFAULT 1,
    path                TEXT NOT NULL,
    size_bytes          BIGINT NOT NULL,
    sha256              TEXT NOT NULL,
    calling_ae          TEXT NOT NULL,
    called_ae           TEXT NOT NULL,
    peer                TEXT NOT NULL,
    association_id      TEXT NOT NULL,
    received_at         TIMESTAMP NOT NULL,
    UNIQUE (sop_instance_uid, revision)
);
CREATE INDEX instances_series ON instances (series_instance_uid);

CREATE TABLE series (
    id                  BIGSERIAL PRIMARY KEY,
    series_instance_uid TEXT NOT NULL UNIQUE,
    study_instance_uid  TEXT NOT NULL,
    modality            TEXT,
    body_part           TEXT,
    series_description  TEXT,
    protocol_name       TEXT,
    calling_ae          TEXT NOT NULL,
    called_ae           TEXT NOT NULL,
    instance_count      INTEGER NOT NULL DEFAULT 0,
    expected_count      INTEGER,
    revision            INTEGER NOT NULL DEFAULT 1,
    -- receiving | complete | routed | unrouted
    status              TEXT NOT NULL DEFAULT 'receiving',
    rule_name           TEXT,
    first_received_at   TIMESTAMP NOT NULL,
    last_received_at    TIMESTAMP NOT NULL,
    completed_at        TIMESTAMP
);

CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,
    revision           INTEGER NOT NULL DEFAULT 1,
    -- dicom | upload | cli
    source             TEXT NOT NULL,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    input_path         TEXT NOT NULL,
    options            TEXT NOT NULL,
    -- hash of (series, revision, options) that makes enqueue idempotent; NULL for one-off jobs
    dedup_key          TEXT UNIQUE,
    -- queued | processing | complete | error | cancelled
    status             TEXT NOT NULL DEFAULT 'queued',
    priority           INTEGER NOT NULL DEFAULT 0,
    attempts           INTEGER NOT NULL DEFAULT 0,
    max_attempts       INTEGER NOT NULL DEFAULT 3,
    run_after          TIMESTAMP NOT NULL,
    worker_id          TEXT,
    lease_expires_at   TIMESTAMP,
    heartbeat_at       TIMESTAMP,
    cancel_requested   BOOLEAN NOT NULL DEFAULT FALSE,
    current_step       INTEGER NOT NULL DEFAULT 0,
    total_steps        INTEGER NOT NULL DEFAULT 0,
    step_name          TEXT,
    progress_percent   DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at         TIMESTAMP NOT NULL,
    started_at         TIMESTAMP,
    completed_at       TIMESTAMP,
    result_path        TEXT,
    result_size_bytes  BIGINT,
    error_code         TEXT,
    error_message      TEXT,
    CHECK (status IN ('queued', 'processing', 'complete', 'error', 'cancelled')),
    CHECK (source IN ('dicom', 'upload', 'cli'))
);
-- the claim query's scan: queued jobs by priority, then age
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE status = 'processing';
CREATE INDEX jobs_status_completed ON jobs (status, completed_at);
CREATE INDEX jobs_series ON jobs (series_instance_uid);

CREATE TABLE dispatches (
    id              BIGSERIAL PRIMARY KEY,
    job_id          TEXT NOT NULL REFERENCES jobs (id),
    destination     TEXT NOT NULL,
    ae_title        TEXT NOT NULL,
    host            TEXT NOT NULL,
    port            INTEGER NOT NULL,
    -- pending | sending | sent | failed
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    -- JSON array of the files to send (the job's SEG and SR)
    files           TEXT NOT NULL DEFAULT '[]',
    last_error      TEXT,
    created_at      TIMESTAMP NOT NULL,
    sent_at         TIMESTAMP,
    UNIQUE (job_id, destination)
);
CREATE INDEX dispatches_due ON dispatches (next_attempt_at) WHERE status = 'pending';

CREATE TABLE users (
    id             BIGSERIAL PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    -- admin | clinician
    role           TEXT NOT NULL,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMP NOT NULL,
    last_login_at  TIMESTAMP,
    CHECK (role IN ('admin', 'clinician'))
);

CREATE TABLE audit_events (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMP NOT NULL,
    -- association | login | download | admin | …
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    -- free-form JSON; never patient names or IDs
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
