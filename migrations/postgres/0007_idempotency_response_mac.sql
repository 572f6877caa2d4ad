-- The stored response a retry replays is authenticated like every other
-- fact the service vouches for: HMAC-SHA256 under the consent-tag key over
-- the row's client, key hash, request hash, order id, status, body and
-- created_at (`intake::seal::idempotency_canonical_bytes`). A replay whose
-- MAC is missing or does not verify is refused (500, logged), never
-- served, and the audit names the row. Rows written before this migration
-- have no MAC and are therefore never replayed: a retry of such a key gets
-- the same refusal, not a second order.
ALTER TABLE idempotency_keys ADD COLUMN response_mac BYTEA;
