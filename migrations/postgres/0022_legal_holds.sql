-- Legal holds (mirrored in migrations/sqlite/0016). An order under a
-- hold — a chargeback or dispute open, a court order — keeps its records:
-- retention passes it over and `orders purge` refuses it until the hold is
-- released (`checkoutd orders hold` / `orders release`). A row is the hold
-- in force; releasing deletes it (both are in the access log). A purge and
-- a hold of the same order take its row lock (FOR NO KEY UPDATE) first, so
-- one waits for the other.
-- `reference` names the case (a dispute or ticket number: letters, digits
-- and `._:/#-`, never personal data); `mac` = HMAC-SHA256(consent-tag key,
-- "checkoutd/legal-hold" ‖ len32(order_id) ‖ len32(placed_at) ‖
-- len32(reference)), so the audit names a hold written around the service.
CREATE TABLE legal_holds (
    order_id   TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES orders (id),
    placed_at  TEXT NOT NULL,
    reference  TEXT NOT NULL,
    mac        BYTEA NOT NULL
);
