-- Each record of an order names its consent tag, and that tag must be one
-- of the same order's tags: one composite foreign key
-- (order_id, consent_tag_id) → consent_tags (order_id, id) per record table,
-- in place of two (order_id → orders, consent_tag_id → consent_tags).
--
-- Stronger than before: a record can no longer point at another order's
-- tag (the audit's "consent tag belongs to another order" is now also
-- refused by the database), and the order still exists, because its tag's
-- own foreign key says so. Cheaper: PostgreSQL checks each foreign key with
-- a query per inserted row, about a third of its CPU per order after 0009;
-- an order now needs 6 of them instead of 11. The unique (order_id, id)
-- index the key needs also serves the lookups of `consent_tags_order`,
-- which goes. docs/performance.md. (SQLite, where a foreign-key check is a
-- cheap B-tree probe and a changed constraint means rebuilding the table,
-- keeps the two keys of 0001; the audit checks the pairing on both.)

ALTER TABLE consent_tags ADD CONSTRAINT consent_tags_order_id_id_key UNIQUE (order_id, id);
DROP INDEX consent_tags_order;

ALTER TABLE billing_details
    DROP CONSTRAINT billing_details_order_id_fkey,
    DROP CONSTRAINT billing_details_consent_tag_id_fkey,
    ADD CONSTRAINT billing_details_consent_tag_fkey
        FOREIGN KEY (order_id, consent_tag_id) REFERENCES consent_tags (order_id, id);
ALTER TABLE shipping_details
    DROP CONSTRAINT shipping_details_order_id_fkey,
    DROP CONSTRAINT shipping_details_consent_tag_id_fkey,
    ADD CONSTRAINT shipping_details_consent_tag_fkey
        FOREIGN KEY (order_id, consent_tag_id) REFERENCES consent_tags (order_id, id);
ALTER TABLE gift_recipients
    DROP CONSTRAINT gift_recipients_order_id_fkey,
    DROP CONSTRAINT gift_recipients_consent_tag_id_fkey,
    ADD CONSTRAINT gift_recipients_consent_tag_fkey
        FOREIGN KEY (order_id, consent_tag_id) REFERENCES consent_tags (order_id, id);
ALTER TABLE payment_cards
    DROP CONSTRAINT payment_cards_order_id_fkey,
    DROP CONSTRAINT payment_cards_consent_tag_id_fkey,
    ADD CONSTRAINT payment_cards_consent_tag_fkey
        FOREIGN KEY (order_id, consent_tag_id) REFERENCES consent_tags (order_id, id);
ALTER TABLE contact_emails
    DROP CONSTRAINT contact_emails_order_id_fkey,
    DROP CONSTRAINT contact_emails_consent_tag_id_fkey,
    ADD CONSTRAINT contact_emails_consent_tag_fkey
        FOREIGN KEY (order_id, consent_tag_id) REFERENCES consent_tags (order_id, id);
