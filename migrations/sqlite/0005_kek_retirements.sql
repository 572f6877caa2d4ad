-- Retired KEK versions, recorded by `checkoutd keys rotate`. The database
-- refuses any new record sealed under one of them, so a server that has not
-- yet picked up a rotated keyring fails closed instead of sealing under a
-- version that `keys destroy` may remove. (Rewrap only moves records *to*
-- the active version.) Mirrored in migrations/postgres/.
CREATE TABLE kek_retirements (
    class      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    retired_at TEXT    NOT NULL,
    PRIMARY KEY (class, version)
) STRICT;

CREATE TRIGGER payment_cards_no_retired_kek BEFORE INSERT ON payment_cards
WHEN NEW.kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'card' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;

CREATE TRIGGER billing_details_no_retired_kek BEFORE INSERT ON billing_details
WHEN NEW.kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'billing' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;

CREATE TRIGGER shipping_details_no_retired_kek BEFORE INSERT ON shipping_details
WHEN NEW.kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'shipping' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;

CREATE TRIGGER gift_recipients_no_retired_kek BEFORE INSERT ON gift_recipients
WHEN NEW.kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'recipient' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;

CREATE TRIGGER contact_emails_no_retired_kek BEFORE INSERT ON contact_emails
WHEN NEW.kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;

CREATE TRIGGER consent_events_no_retired_kek BEFORE INSERT ON consent_events
WHEN NEW.reference_kek_version IS NOT NULL
 AND EXISTS (SELECT 1 FROM kek_retirements WHERE class = 'contact' AND version = NEW.reference_kek_version)
BEGIN SELECT RAISE(ABORT, 'sealed under a retired KEK version'); END;
