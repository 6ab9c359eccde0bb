-- Instances are hashed with BLAKE3 (several times faster than SHA-256 on the ingest path); the
-- column names what it holds, and every value says its algorithm. Earlier rows keep their
-- SHA-256, marked as such; the store compares bytes when a resend meets one of them.
ALTER TABLE instances RENAME COLUMN sha256 TO content_hash;
UPDATE instances SET content_hash = 'sha256:' || content_hash;
