-- Guards PostgreSQL has had since its 0011 (orders and consent tags are
-- never deleted and their keys never change), and two both engines now
-- add (migrations/postgres/0015):
-- - an Idempotency-Key row is never deleted: without it a retry of the key
--   would be taken as a new order (a second charge). The replay window
--   and purges empty its request hash; nothing deletes it.
-- - a KEK retirement is never deleted or changed: without it a server
--   still holding the retired key would seal new records under it.
-- After a full purge no record references an order's consent tags, so
-- without these a tag could be deleted and an older checkout's "yes"
-- become the customer's latest choice again. Nothing in checkoutd does
-- any of this; the audit finds what the MACs cover, the database now
-- refuses it first.
CREATE TRIGGER orders_never_deleted BEFORE DELETE ON orders
BEGIN SELECT RAISE(ABORT, 'orders: orders and consent tags are never deleted and their keys never change'); END;
CREATE TRIGGER orders_id_never_changes BEFORE UPDATE OF id ON orders
WHEN NEW.id IS NOT OLD.id
BEGIN SELECT RAISE(ABORT, 'orders: orders and consent tags are never deleted and their keys never change'); END;
CREATE TRIGGER consent_tags_never_deleted BEFORE DELETE ON consent_tags
BEGIN SELECT RAISE(ABORT, 'consent_tags: orders and consent tags are never deleted and their keys never change'); END;
CREATE TRIGGER consent_tags_keys_never_change BEFORE UPDATE OF id, order_id ON consent_tags
WHEN NEW.id IS NOT OLD.id OR NEW.order_id IS NOT OLD.order_id
BEGIN SELECT RAISE(ABORT, 'consent_tags: orders and consent tags are never deleted and their keys never change'); END;
CREATE TRIGGER idempotency_keys_never_deleted BEFORE DELETE ON idempotency_keys
BEGIN SELECT RAISE(ABORT, 'idempotency_keys: a key row is never deleted (a retry of its key would make a second order)'); END;
CREATE TRIGGER kek_retirements_never_changed BEFORE UPDATE ON kek_retirements
BEGIN SELECT RAISE(ABORT, 'kek_retirements is append-only'); END;
CREATE TRIGGER kek_retirements_never_deleted BEFORE DELETE ON kek_retirements
BEGIN SELECT RAISE(ABORT, 'kek_retirements is append-only'); END;
