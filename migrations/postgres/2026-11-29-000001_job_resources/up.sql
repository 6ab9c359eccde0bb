-- Peak memory of each job's child process, recorded by the worker supervisor.
ALTER TABLE jobs ADD COLUMN peak_rss_bytes BIGINT;
ALTER TABLE jobs ADD COLUMN peak_gpu_bytes BIGINT;
