-- checkoutd schema, PostgreSQL. DESIGN.md "Data at rest".
-- No column outside the envelope ciphertexts holds a personal detail or a
-- card number; there is no CVV column anywhere. Mirrored name for name in
-- migrations/sqlite/.

-- One row per accepted order; no personal data. `mac` authenticates the
-- columns fixed at checkout, so an edited item list, total or gift flag is
-- detected.
CREATE TABLE orders (
    seq                BIGSERIAL PRIMARY KEY,           -- creation order, for cursors
    id                 TEXT    NOT NULL UNIQUE,       -- UUID v4
    created_at         TEXT    NOT NULL,              -- RFC 3339 UTC
    status             TEXT    NOT NULL CHECK (status IN ('accepted', 'dispatched')),
    storefront_ref     TEXT,
    currency           TEXT    NOT NULL,
    items              TEXT    NOT NULL,              -- JSON [{sku, description, quantity, unit_price_minor}]
    total_minor        BIGINT NOT NULL,
    gift               INTEGER NOT NULL CHECK (gift IN (0, 1)),
    consent_tag_id     TEXT    NOT NULL,              -- the customer's tag
    client_fingerprint BYTEA    NOT NULL,               -- SHA-256 of the storefront's certificate
    mac                BYTEA    NOT NULL               -- HMAC over the columns above (docs/encryption.md)
);

-- Consent tags; authenticated by an HMAC over their canonical bytes.
CREATE TABLE consent_tags (
    id                  TEXT    PRIMARY KEY,
    order_id            TEXT    NOT NULL REFERENCES orders (id),
    subject             TEXT    NOT NULL CHECK (subject IN ('customer', 'gift_recipient')),
    basis               TEXT    NOT NULL CHECK (basis IN ('consent', 'fulfillment_only')),
    product_updates     INTEGER NOT NULL CHECK (product_updates IN (0, 1)),
    new_offerings       INTEGER NOT NULL CHECK (new_offerings IN (0, 1)),
    partnerships        INTEGER NOT NULL CHECK (partnerships IN (0, 1)),
    special_offers      INTEGER NOT NULL CHECK (special_offers IN (0, 1)),
    third_party_sharing INTEGER NOT NULL CHECK (third_party_sharing IN (0, 1)),
    policy_version      TEXT    NOT NULL,
    captured_at         TEXT    NOT NULL,
    channel             TEXT    NOT NULL,
    mac_key_version     INTEGER NOT NULL,
    mac                 BYTEA    NOT NULL
);
CREATE INDEX consent_tags_order ON consent_tags (order_id);

-- Envelope columns (every encrypted table): format_version, kek_version,
-- wrapped_dek (nonce || AES-256-GCM(KEK, DEK) || tag), ciphertext
-- (nonce || AES-256-GCM(DEK, record JSON) || tag). docs/encryption.md.

CREATE TABLE billing_details (
    id                  TEXT    PRIMARY KEY,
    order_id            TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    consent_tag_id      TEXT    NOT NULL REFERENCES consent_tags (id),
    email_blind_index   BYTEA    NOT NULL,             -- HMAC-SHA256(blind-index key, email)
    blind_index_version INTEGER NOT NULL,
    format_version      INTEGER NOT NULL,
    kek_version         INTEGER NOT NULL,
    wrapped_dek         BYTEA    NOT NULL,
    ciphertext          BYTEA    NOT NULL
);
CREATE INDEX billing_details_email ON billing_details (email_blind_index);

-- The order's ship-to. For a gift only the marker: the recipient's details
-- stay in gift_recipients and are never copied here.
CREATE TABLE shipping_details (
    id              TEXT    PRIMARY KEY,
    order_id        TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    consent_tag_id  TEXT    NOT NULL REFERENCES consent_tags (id),
    ship_to         TEXT    NOT NULL CHECK (ship_to IN ('customer', 'gift_recipient')),
    format_version  INTEGER,
    kek_version     INTEGER,
    wrapped_dek     BYTEA,
    ciphertext      BYTEA,
    CHECK ((ship_to = 'customer') = (ciphertext IS NOT NULL AND wrapped_dek IS NOT NULL
                                     AND kek_version IS NOT NULL AND format_version IS NOT NULL))
);

CREATE TABLE gift_recipients (
    id              TEXT    PRIMARY KEY,
    order_id        TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    consent_tag_id  TEXT    NOT NULL REFERENCES consent_tags (id),
    format_version  INTEGER NOT NULL,
    kek_version     INTEGER NOT NULL,
    wrapped_dek     BYTEA    NOT NULL,
    ciphertext      BYTEA    NOT NULL
);

CREATE TABLE payment_cards (
    id                      TEXT    PRIMARY KEY,
    order_id                TEXT    NOT NULL UNIQUE REFERENCES orders (id),
    consent_tag_id          TEXT    NOT NULL REFERENCES consent_tags (id),
    brand                   TEXT    NOT NULL,
    last4                   TEXT    NOT NULL CHECK (char_length(last4) = 4),
    fingerprint             BYTEA    NOT NULL,         -- HMAC-SHA256(fingerprint key, PAN)
    fingerprint_key_version INTEGER NOT NULL,
    format_version          INTEGER NOT NULL,
    kek_version             INTEGER NOT NULL,
    wrapped_dek             BYTEA    NOT NULL,
    ciphertext              BYTEA    NOT NULL
);
CREATE INDEX payment_cards_fingerprint ON payment_cards (fingerprint);

-- Idempotency: the (client, key_hash) primary key makes a key single-use
-- across processes. The key is client-chosen text (it could hold an email or
-- an order number with personal data), so only its keyed hash is stored:
-- HMAC-SHA256(request key, "idempotency-key" || 0x00 || key). The stored
-- response holds no personal data (ids, brand, last4, consent). Kept at
-- least 24 hours.
CREATE TABLE idempotency_keys (
    client          BYTEA    NOT NULL,                 -- SHA-256 of the client certificate
    key_hash        BYTEA    NOT NULL,                 -- keyed hash of the Idempotency-Key
    request_hash    BYTEA    NOT NULL,                 -- HMAC-SHA256(request key, media type || 0 || body)
    order_id        TEXT    NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   BYTEA    NOT NULL,
    created_at      TEXT    NOT NULL,
    PRIMARY KEY (client, key_hash)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
