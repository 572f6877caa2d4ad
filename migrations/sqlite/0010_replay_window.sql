-- The replay window (`serve --replay-window-hours`, default 168): an
-- idempotency row's request hash — HMAC(request key, the request without
-- its CVC) — is what tells a retry from another body under the same key.
-- Kept for ever, it would let whoever holds the database and the whole
-- keyring test guesses of a card number and expiry against it (given every
-- other field of the request), long after the order's card data was purged.
-- Once the window has passed, or the order is purged, the hash is emptied
-- and `response_mac` re-made over the empty hash (`retention::retire_request_hashes`):
-- the key itself stays single-use, and a retry of it gets
-- `422 idempotency-window-passed` naming its order instead of a replay.
--
-- This supersedes what 0008 says ("never purged", "no query reads keys by
-- age"): keys are still never deleted, but their hashes now are, by age.
-- Only rows still holding a hash are indexed, by age: the index stays the
-- size of the window, and the purge of one order finds its row through the
-- order's created_at (the same instant as the row's). Every order's commit
-- inserts at this index's right-hand end. Mirrored in the other engine's
-- migrations.
CREATE INDEX idempotency_keys_replayable ON idempotency_keys (created_at)
    WHERE length(request_hash) > 0;
