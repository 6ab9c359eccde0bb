-- BLAKE3 values cannot become SHA-256 ones: they are cleared (a resend of such an instance is
-- then kept as a new revision rather than recognised as a duplicate).
UPDATE instances SET content_hash = CASE
    WHEN content_hash LIKE 'sha256:%' THEN substr(content_hash, 8)
    ELSE '' END;
ALTER TABLE instances RENAME COLUMN content_hash TO sha256;
