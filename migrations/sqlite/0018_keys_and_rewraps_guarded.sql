-- Guards found missing by a review of the storage rules (mirrored, where
-- PostgreSQL needs them, in migrations/postgres/0023).
--
-- Orders are never replaced either (0017 did the ledgers). REPLACE
-- (`INSERT OR REPLACE`, `REPLACE INTO`) deletes the row in its way without
-- firing 0012's delete guard: one statement put a dispatched order back to
-- 'accepted' with its facts NULL — it passes its MAC check and gets a new
-- `seq`, past the warehouse's cursor, so it would ship twice. An order's
-- keys are its `id` and `seq`.
--
-- Consent tags and Idempotency-Key rows get no such insert guard: each is
-- MACed over its key and content (a tag over its id and order, a key row's
-- answer over its client, key and request hash), so a REPLACE can only put
-- back a row that verifies as it was, or one the audit names. An insert
-- guard costs every order's commit: measured (interleaved benchmark runs),
-- the three together made the order writer 9 % slower (52 → 57 µs an
-- order, 2 % fewer orders a second); this one alone costs 52 → 54 µs, and
-- under 1 % of throughput.
CREATE TRIGGER orders_never_replaced BEFORE INSERT ON orders
WHEN EXISTS (SELECT 1 FROM orders WHERE id = NEW.id OR seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'orders: orders and consent tags are never deleted and their keys never change'); END;

-- What identifies an Idempotency-Key row and the answer it holds never
-- change: a row whose key columns were changed is as good as deleted (a
-- retry of its key would make a second order, a second charge), which 0012
-- refuses. Only the request hash and its MAC change (the replay window and
-- purges empty the hash).
CREATE TRIGGER idempotency_keys_answer_never_changes
BEFORE UPDATE OF client, key_hash, order_id, response_status, response_body, created_at
ON idempotency_keys
WHEN NEW.client IS NOT OLD.client OR NEW.key_hash IS NOT OLD.key_hash
  OR NEW.order_id IS NOT OLD.order_id OR NEW.response_status IS NOT OLD.response_status
  OR NEW.response_body IS NOT OLD.response_body OR NEW.created_at IS NOT OLD.created_at
BEGIN SELECT RAISE(ABORT, 'idempotency_keys: a key row''s key and answer never change'); END;

-- No record is moved under a retired KEK version by an update either (0005
-- guards inserts): `keys rewrap` only moves records to the active version,
-- and checks that it is not retired; the database now refuses it whoever
-- writes it.
CREATE TRIGGER payment_cards_no_retired_kek_update BEFORE UPDATE OF kek_version ON payment_cards
WHEN NEW.kek_version IS NOT NULL AND NEW.kek_version IS NOT OLD.kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'card' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
CREATE TRIGGER billing_details_no_retired_kek_update BEFORE UPDATE OF kek_version ON billing_details
WHEN NEW.kek_version IS NOT NULL AND NEW.kek_version IS NOT OLD.kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'billing' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
CREATE TRIGGER shipping_details_no_retired_kek_update BEFORE UPDATE OF kek_version ON shipping_details
WHEN NEW.kek_version IS NOT NULL AND NEW.kek_version IS NOT OLD.kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'shipping' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
CREATE TRIGGER gift_recipients_no_retired_kek_update BEFORE UPDATE OF kek_version ON gift_recipients
WHEN NEW.kek_version IS NOT NULL AND NEW.kek_version IS NOT OLD.kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'recipient' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
CREATE TRIGGER contact_emails_no_retired_kek_update BEFORE UPDATE OF kek_version ON contact_emails
WHEN NEW.kek_version IS NOT NULL AND NEW.kek_version IS NOT OLD.kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
CREATE TRIGGER consent_events_no_retired_kek_update BEFORE UPDATE OF reference_kek_version ON consent_events
WHEN NEW.reference_kek_version IS NOT NULL
 AND NEW.reference_kek_version IS NOT OLD.reference_kek_version
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.reference_kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
