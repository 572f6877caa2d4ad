-- Fulfillment (dispatch) and the hash-chained access log. DESIGN.md
-- invariant 8. Mirrored in migrations/postgres/.

-- Dispatch facts; none is personal data.
ALTER TABLE orders ADD COLUMN carrier TEXT;
ALTER TABLE orders ADD COLUMN tracking TEXT;
ALTER TABLE orders ADD COLUMN dispatched_at TEXT;
-- HMAC over (order id, carrier, tracking, dispatched_at): a dispatched order
-- quietly set back to 'accepted' (to ship twice) is detected.
ALTER TABLE orders ADD COLUMN dispatch_mac BLOB;
CREATE INDEX orders_status_seq ON orders (status, seq);

-- Append-only access log. Each entry's `hash` = SHA-256 over its fields and
-- the previous entry's hash; `mac` = HMAC-SHA256(access-log key, hash), so
-- a rewritten chain is detectable without trusting the database.
-- docs/access-log.md describes the bytes.
CREATE TABLE access_log (
    seq              INTEGER PRIMARY KEY,             -- 1, 2, 3, … without gaps
    at               TEXT    NOT NULL,                -- RFC 3339 UTC
    role             TEXT    NOT NULL,                -- a role, 'none' or 'unknown'
    cert_fingerprint TEXT    NOT NULL,                -- SHA-256 hex of the client certificate, or ''
    origin_ip        TEXT    NOT NULL,
    action           TEXT    NOT NULL,                -- 'GET /v1/shipments', …
    objects          TEXT    NOT NULL,                -- JSON array of object ids (order ids)
    outcome          TEXT    NOT NULL CHECK (outcome IN ('allowed', 'denied')),
    status           INTEGER NOT NULL,                -- HTTP status answered
    prev_hash        BLOB    NOT NULL,
    hash             BLOB    NOT NULL,
    mac              BLOB    NOT NULL
) STRICT;

-- The chain head: the last entry's seq and hash, MACed, updated in the same
-- transaction as every append. It serialises appends and makes a truncated
-- tail detectable.
CREATE TABLE access_log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL,
    mac  BLOB    NOT NULL
) STRICT;

-- Append-only: the database refuses edits and deletes of entries.
CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log
BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log
BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
