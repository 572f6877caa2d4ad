-- Consent life cycle: the customer's email sealed on its own (so marketing
-- opens nothing else) and the append-only ledger of withdrawals.
-- Mirrored in migrations/postgres/.

-- One per order: the customer's email under data class `contact`.
CREATE TABLE contact_emails (
    id                  TEXT    PRIMARY KEY,
    order_id            TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    consent_tag_id      TEXT    NOT NULL REFERENCES consent_tags (id),
    email_blind_index   BLOB    NOT NULL,
    blind_index_version INTEGER NOT NULL,
    format_version      INTEGER NOT NULL,
    kek_version         INTEGER NOT NULL,
    wrapped_dek         BLOB    NOT NULL,
    ciphertext          BLOB    NOT NULL
) STRICT;
CREATE INDEX contact_emails_subject ON contact_emails (email_blind_index);

-- Withdrawals. A purpose column is 1 when the event withdraws it. The
-- optional reference (an email's Message-ID, a letter's scan reference) is
-- sealed under `contact` (AAD order id = nil UUID, record id = event id).
-- The ledger is a MAC chain: `mac` = HMAC-SHA256(consent-tag key, canonical
-- event bytes, which include `seq` and `prev_mac`), and the MACed head row
-- moves with every append, so an edited, deleted, reordered or truncated
-- withdrawal is detected (docs/encryption.md, "Consent events").
CREATE TABLE consent_events (
    seq                      INTEGER PRIMARY KEY,          -- 1, 2, 3, … without gaps
    id                       TEXT    NOT NULL UNIQUE,
    email_blind_index        BLOB    NOT NULL,
    blind_index_version      INTEGER NOT NULL,
    kind                     TEXT    NOT NULL CHECK (kind IN ('withdrawal')),
    product_updates          INTEGER NOT NULL CHECK (product_updates IN (0, 1)),
    new_offerings            INTEGER NOT NULL CHECK (new_offerings IN (0, 1)),
    partnerships             INTEGER NOT NULL CHECK (partnerships IN (0, 1)),
    special_offers           INTEGER NOT NULL CHECK (special_offers IN (0, 1)),
    third_party_sharing      INTEGER NOT NULL CHECK (third_party_sharing IN (0, 1)),
    channel                  TEXT    NOT NULL CHECK (channel IN ('online', 'email', 'postal')),
    received_at              TEXT    NOT NULL,
    effective_at             TEXT    NOT NULL,
    recorded_at              TEXT    NOT NULL,
    reference_format_version INTEGER,
    reference_kek_version    INTEGER,
    reference_wrapped_dek    BLOB,
    reference_ciphertext     BLOB,
    mac_key_version          INTEGER NOT NULL,
    prev_mac                 BLOB    NOT NULL,
    mac                      BLOB    NOT NULL
) STRICT;
CREATE INDEX consent_events_subject ON consent_events (email_blind_index, effective_at);

CREATE TABLE consent_events_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    mac  BLOB NOT NULL,
    head_mac BLOB NOT NULL
) STRICT;

-- Append-only, except that `keys rewrap` may re-wrap a reference's data key
-- (reference_kek_version, reference_wrapped_dek), which the MAC does not cover.
CREATE TRIGGER consent_events_no_update
BEFORE UPDATE OF seq, id, email_blind_index, blind_index_version, kind, product_updates,
    new_offerings, partnerships, special_offers, third_party_sharing, channel, received_at,
    effective_at, recorded_at, reference_format_version, reference_ciphertext, mac_key_version,
    prev_mac, mac ON consent_events
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END;
CREATE TRIGGER consent_events_no_delete BEFORE DELETE ON consent_events
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END;
