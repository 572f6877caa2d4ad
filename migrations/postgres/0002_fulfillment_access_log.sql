-- Fulfillment (dispatch) and the hash-chained access log. DESIGN.md
-- invariant 8. Mirrored in migrations/sqlite/.

ALTER TABLE orders ADD COLUMN carrier TEXT;
ALTER TABLE orders ADD COLUMN tracking TEXT;
ALTER TABLE orders ADD COLUMN dispatched_at TEXT;
-- HMAC over (order id, carrier, tracking, dispatched_at): a dispatched order
-- quietly set back to 'accepted' (to ship twice) is detected.
ALTER TABLE orders ADD COLUMN dispatch_mac BYTEA;
CREATE INDEX orders_status_seq ON orders (status, seq);

CREATE TABLE access_log (
    seq              BIGINT  PRIMARY KEY,
    at               TEXT    NOT NULL,
    role             TEXT    NOT NULL,
    cert_fingerprint TEXT    NOT NULL,
    origin_ip        TEXT    NOT NULL,
    action           TEXT    NOT NULL,
    objects          TEXT    NOT NULL,
    outcome          TEXT    NOT NULL CHECK (outcome IN ('allowed', 'denied')),
    status           INTEGER NOT NULL,
    prev_hash        BYTEA   NOT NULL,
    hash             BYTEA   NOT NULL,
    mac              BYTEA   NOT NULL
);

CREATE TABLE access_log_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash BYTEA   NOT NULL,
    mac  BYTEA   NOT NULL
);

CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'access_log is append-only'; END $$;
CREATE TRIGGER access_log_no_update BEFORE UPDATE OR DELETE ON access_log
FOR EACH ROW EXECUTE FUNCTION access_log_append_only();
