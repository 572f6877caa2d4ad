-- Guards found missing by a review of the storage rules (mirrored in
-- migrations/sqlite/0018, which also refuses REPLACE, an SQLite statement).
--
-- An Idempotency-Key row's key and answer never change: a row whose key
-- columns were changed is as good as deleted (a retry of its key would make
-- a second order, a second charge), which 0015 refuses. Only the request
-- hash and its MAC change (the replay window and purges empty the hash).
CREATE FUNCTION idempotency_keys_answer_never_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.client, NEW.key_hash, NEW.order_id, NEW.response_status, NEW.response_body, NEW.created_at)
       IS DISTINCT FROM
       (OLD.client, OLD.key_hash, OLD.order_id, OLD.response_status, OLD.response_body, OLD.created_at) THEN
        RAISE EXCEPTION 'idempotency_keys: a key row''s key and answer never change';
    END IF;
    RETURN NEW;
END $$;
-- On every update (no column list: a trigger naming a column would hold
-- back a later migration's change of that column's type).
CREATE TRIGGER idempotency_keys_answer_never_changes BEFORE UPDATE ON idempotency_keys
FOR EACH ROW EXECUTE FUNCTION idempotency_keys_answer_never_changes();

-- No record is moved under a retired KEK version by an update either (0009
-- and 0018 guard inserts): `keys rewrap` only moves records to the active
-- version, and checks that it is not retired; the database now refuses it
-- whoever writes it. Statement triggers with the statement's rows before
-- and after, as for inserts (a transition table rules out a column list):
-- only a row whose version the update changed is checked — a record still
-- under a version retired since may be updated otherwise.
CREATE FUNCTION refuse_rows_moved_under_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retired integer[];
BEGIN
    SELECT array_agg(r.version) INTO retired FROM kek_retirements r WHERE r.class = TG_ARGV[0];
    IF retired IS NOT NULL AND EXISTS (
        SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.kek_version = ANY (retired) AND n.kek_version IS DISTINCT FROM o.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION refuse_references_moved_under_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retired integer[];
BEGIN
    SELECT array_agg(r.version) INTO retired FROM kek_retirements r WHERE r.class = 'contact';
    IF retired IS NOT NULL AND EXISTS (
        SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.reference_kek_version = ANY (retired)
           AND n.reference_kek_version IS DISTINCT FROM o.reference_kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER payment_cards_no_retired_kek_update AFTER UPDATE ON payment_cards
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_rows_moved_under_retired_kek('card');
CREATE TRIGGER billing_details_no_retired_kek_update AFTER UPDATE ON billing_details
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_rows_moved_under_retired_kek('billing');
CREATE TRIGGER shipping_details_no_retired_kek_update AFTER UPDATE ON shipping_details
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_rows_moved_under_retired_kek('shipping');
CREATE TRIGGER gift_recipients_no_retired_kek_update AFTER UPDATE ON gift_recipients
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_rows_moved_under_retired_kek('recipient');
CREATE TRIGGER contact_emails_no_retired_kek_update AFTER UPDATE ON contact_emails
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_rows_moved_under_retired_kek('contact');
CREATE TRIGGER consent_events_no_retired_kek_update AFTER UPDATE ON consent_events
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_references_moved_under_retired_kek();

-- The trigger functions named unqualified tables: pinned to this schema,
-- as 0011 and 0018 do.
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['idempotency_keys_answer_never_changes()',
                             'refuse_rows_moved_under_retired_kek()',
                             'refuse_references_moved_under_retired_kek()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END $$;
