-- Retired KEK versions (see migrations/sqlite/0005_kek_retirements.sql).
CREATE TABLE kek_retirements (
    class      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    retired_at TEXT    NOT NULL,
    PRIMARY KEY (class, version)
);

-- One function for every sealed table: arguments are the data class and the
-- name of the KEK-version column.
CREATE FUNCTION refuse_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v integer := (to_jsonb(NEW) ->> TG_ARGV[1])::integer;
BEGIN
    IF v IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = TG_ARGV[0] AND version = v) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER payment_cards_no_retired_kek BEFORE INSERT ON payment_cards
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('card', 'kek_version');
CREATE TRIGGER billing_details_no_retired_kek BEFORE INSERT ON billing_details
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('billing', 'kek_version');
CREATE TRIGGER shipping_details_no_retired_kek BEFORE INSERT ON shipping_details
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('shipping', 'kek_version');
CREATE TRIGGER gift_recipients_no_retired_kek BEFORE INSERT ON gift_recipients
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('recipient', 'kek_version');
CREATE TRIGGER contact_emails_no_retired_kek BEFORE INSERT ON contact_emails
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('contact', 'kek_version');
CREATE TRIGGER consent_events_no_retired_kek BEFORE INSERT ON consent_events
FOR EACH ROW EXECUTE FUNCTION refuse_retired_kek('contact', 'reference_kek_version');
