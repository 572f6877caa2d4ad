-- Purges (crypto-shredding): the record of which data class of which order
-- was destroyed, and when. The records' rows (and with them their wrapped
-- data keys) are deleted; the order row, its consent tags and the access
-- log stay. `mac` = HMAC-SHA256(consent-tag key, "checkoutd/purge" ‖
-- len32(order_id) ‖ len32(class) ‖ len32(purged_at) ‖ len32(reason)), so a deletion dressed
-- up as a purge is detected by the audit. Mirrored in migrations/sqlite/.
CREATE TABLE purges (
    order_id   TEXT NOT NULL REFERENCES orders (id),
    class      TEXT NOT NULL CHECK (class IN ('card', 'billing', 'shipping', 'recipient', 'contact')),
    purged_at  TEXT NOT NULL,
    reason     TEXT NOT NULL,                  -- 'operator' or 'retention:<class>'
    mac        BYTEA NOT NULL,
    PRIMARY KEY (order_id, class)
);
