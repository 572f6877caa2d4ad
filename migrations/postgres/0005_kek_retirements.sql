-- Retired KEK versions (see migrations/sqlite/0005_kek_retirements.sql).
CREATE TABLE kek_retirements (
    class      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    retired_at TEXT    NOT NULL,
    PRIMARY KEY (class, version)
);

CREATE FUNCTION payment_cards_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'card' AND version = NEW.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER payment_cards_no_retired_kek BEFORE INSERT ON payment_cards
FOR EACH ROW EXECUTE FUNCTION payment_cards_no_retired_kek();

CREATE FUNCTION billing_details_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'billing' AND version = NEW.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER billing_details_no_retired_kek BEFORE INSERT ON billing_details
FOR EACH ROW EXECUTE FUNCTION billing_details_no_retired_kek();

CREATE FUNCTION shipping_details_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'shipping' AND version = NEW.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER shipping_details_no_retired_kek BEFORE INSERT ON shipping_details
FOR EACH ROW EXECUTE FUNCTION shipping_details_no_retired_kek();

CREATE FUNCTION gift_recipients_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'recipient' AND version = NEW.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER gift_recipients_no_retired_kek BEFORE INSERT ON gift_recipients
FOR EACH ROW EXECUTE FUNCTION gift_recipients_no_retired_kek();

CREATE FUNCTION contact_emails_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER contact_emails_no_retired_kek BEFORE INSERT ON contact_emails
FOR EACH ROW EXECUTE FUNCTION contact_emails_no_retired_kek();

CREATE FUNCTION consent_events_no_retired_kek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reference_kek_version IS NOT NULL AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.reference_kek_version) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER consent_events_no_retired_kek BEFORE INSERT ON consent_events
FOR EACH ROW EXECUTE FUNCTION consent_events_no_retired_kek();
