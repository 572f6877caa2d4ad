-- Two more guards, on both engines (mirrored in migrations/sqlite/0012,
-- which also brings SQLite the order and consent-tag guards this engine has
-- had since 0011):
-- - an Idempotency-Key row is never deleted: without it a retry of the key
--   would be taken as a new order (a second charge). The replay window
--   and purges empty its request hash; nothing deletes it.
-- - a KEK retirement is never deleted or changed: without it a server
--   still holding the retired key would seal new records under it.
-- Statement triggers, so TRUNCATE is refused as well. Nothing in checkoutd
-- deletes either.
CREATE FUNCTION idempotency_keys_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'idempotency_keys: a key row is never deleted (a retry of its key would make a second order)';
END $$;
CREATE TRIGGER idempotency_keys_never_deleted BEFORE DELETE ON idempotency_keys
FOR EACH STATEMENT EXECUTE FUNCTION idempotency_keys_never_deleted();
CREATE TRIGGER idempotency_keys_never_truncated BEFORE TRUNCATE ON idempotency_keys
FOR EACH STATEMENT EXECUTE FUNCTION idempotency_keys_never_deleted();

CREATE FUNCTION kek_retirements_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'kek_retirements is append-only'; END $$;
CREATE TRIGGER kek_retirements_append_only BEFORE UPDATE OR DELETE ON kek_retirements
FOR EACH STATEMENT EXECUTE FUNCTION kek_retirements_append_only();
CREATE TRIGGER kek_retirements_never_truncated BEFORE TRUNCATE ON kek_retirements
FOR EACH STATEMENT EXECUTE FUNCTION kek_retirements_append_only();
