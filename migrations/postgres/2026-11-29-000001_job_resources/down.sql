ALTER TABLE jobs DROP COLUMN peak_gpu_bytes;
ALTER TABLE jobs DROP COLUMN peak_rss_bytes;
