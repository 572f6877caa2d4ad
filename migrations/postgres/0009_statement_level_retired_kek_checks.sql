-- The retired-KEK guard of 0005, checked once per INSERT statement instead
-- of once per row. The guarantee is the same — no row sealed under a
-- retired KEK version is ever stored, whoever writes it — but the per-row
-- PL/pgSQL trigger (with `to_jsonb(NEW)`, which hex-encodes every
-- ciphertext of the row) was about a fifth of PostgreSQL's CPU per order,
-- and group commit inserts a whole batch per statement. An AFTER … FOR EACH
-- STATEMENT trigger sees the statement's rows as a transition table and
-- raises the same error, which aborts the statement: nothing of it is
-- stored. docs/performance.md. (SQLite has no statement-level triggers; its
-- row triggers of 0005 stay.)

DROP TRIGGER payment_cards_no_retired_kek ON payment_cards;
DROP TRIGGER billing_details_no_retired_kek ON billing_details;
DROP TRIGGER shipping_details_no_retired_kek ON shipping_details;
DROP TRIGGER gift_recipients_no_retired_kek ON gift_recipients;
DROP TRIGGER contact_emails_no_retired_kek ON contact_emails;
DROP TRIGGER consent_events_no_retired_kek ON consent_events;
DROP FUNCTION refuse_retired_kek();

-- TG_ARGV[0]: the data class whose KEK versions the rows' `kek_version` names.
CREATE FUNCTION refuse_retired_kek_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN kek_retirements r
               ON r.class = TG_ARGV[0] AND r.version = n.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;

-- The withdrawal ledger names its reference's version in another column.
CREATE FUNCTION refuse_retired_reference_kek_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN kek_retirements r
               ON r.class = 'contact' AND r.version = n.reference_kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER payment_cards_no_retired_kek AFTER INSERT ON payment_cards
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_kek_rows('card');
CREATE TRIGGER billing_details_no_retired_kek AFTER INSERT ON billing_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_kek_rows('billing');
CREATE TRIGGER shipping_details_no_retired_kek AFTER INSERT ON shipping_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_kek_rows('shipping');
CREATE TRIGGER gift_recipients_no_retired_kek AFTER INSERT ON gift_recipients
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_kek_rows('recipient');
CREATE TRIGGER contact_emails_no_retired_kek AFTER INSERT ON contact_emails
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_kek_rows('contact');
CREATE TRIGGER consent_events_no_retired_kek AFTER INSERT ON consent_events
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_reference_kek_rows();
