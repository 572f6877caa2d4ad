-- Legal holds (mirrored in migrations/postgres/0022). An order under a
-- hold — a chargeback or dispute open, a court order — keeps its records:
-- retention passes it over and `orders purge` refuses it until the hold is
-- released (`checkoutd orders hold` / `orders release`). A row is the hold
-- in force; releasing deletes it (both are in the access log).
-- `reference` names the case (a dispute or ticket number: letters, digits
-- and `._:/#-`, never personal data); `mac` = HMAC-SHA256(consent-tag key,
-- "checkoutd/legal-hold" ‖ len32(order_id) ‖ len32(placed_at) ‖
-- len32(reference)), so the audit names a hold written around the service.
CREATE TABLE legal_holds (
    order_id   TEXT NOT NULL PRIMARY KEY REFERENCES orders (id),
    placed_at  TEXT NOT NULL,
    reference  TEXT NOT NULL,
    mac        BLOB NOT NULL
) STRICT;
