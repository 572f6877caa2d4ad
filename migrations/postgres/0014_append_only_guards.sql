-- Purges are append-only, as the access log and the withdrawal ledger are.
-- A purge row is the record that an order's data was destroyed and, for a
-- contact purge, whom it was about: the blind index that keeps the purged
-- order's consent choice in the customer's history. Deleting one, or
-- emptying its blind index, would make an older checkout's "yes" the
-- customer's latest choice again and export them to marketing. The audit
-- detects it (every record of every order is there, or purged under a
-- MAC); the database now refuses it as well. Nothing in checkoutd updates
-- or deletes a purge. Mirrored in migrations/sqlite/0011.
CREATE FUNCTION purges_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'purges is append-only'; END $$;
CREATE TRIGGER purges_no_update_or_delete BEFORE UPDATE OR DELETE ON purges
FOR EACH ROW EXECUTE FUNCTION purges_append_only();

-- Row triggers do not fire for TRUNCATE: each append-only table refuses it
-- too, as orders and consent_tags do (0011). (SQLite has no TRUNCATE; its
-- DELETE without WHERE fires the row triggers.)
CREATE TRIGGER purges_never_truncated BEFORE TRUNCATE ON purges
FOR EACH STATEMENT EXECUTE FUNCTION purges_append_only();
CREATE TRIGGER access_log_never_truncated BEFORE TRUNCATE ON access_log
FOR EACH STATEMENT EXECUTE FUNCTION access_log_append_only();
CREATE TRIGGER consent_events_never_truncated BEFORE TRUNCATE ON consent_events
FOR EACH STATEMENT EXECUTE FUNCTION consent_events_append_only();
