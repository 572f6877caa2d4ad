-- The references between an order's rows, checked once per statement
-- instead of once per row. The guarantee is the foreign keys' of 0001 and
-- 0010, whoever writes:
--
-- - a consent tag names an order that exists;
-- - a record (card, billing, contact, shipping, gift recipient) names a
--   consent tag *of its own order* — `(order_id, consent_tag_id)` is a row
--   of `consent_tags (order_id, id)` — on INSERT and on every UPDATE;
-- - and, stricter than a foreign key: orders and consent tags are never
--   deleted or truncated and their keys never change (nothing in checkoutd
--   does either: an order holds no personal data, a tag is the evidence of
--   a consent, and purges delete records only). So no reference can be
--   broken from the parent's side, and the checks need no row locks: the
--   concurrent delete a foreign key's `FOR KEY SHARE` lock guards against
--   cannot happen.
--
-- Why: PostgreSQL checks a foreign key with one query per inserted row —
-- an executor start, an index probe and a row lock (itself a WAL record)
-- each. With group commit inserting a whole batch per statement, those
-- 6 checks per order were about two thirds of the order writer's backend
-- CPU. An AFTER … FOR EACH STATEMENT trigger sees the statement's rows as a
-- transition table and probes the parent's unique index once per row in
-- one query, then raises the foreign-key error, which aborts the statement:
-- nothing of it is stored. docs/performance.md.
--
-- The checking functions name their tables unqualified, so they run with
-- their search path pinned to this schema (then `pg_temp`, last), not the
-- writing session's: a session whose path differs, or that made a
-- temporary `orders` of its own, cannot make them check the wrong table (a
-- foreign key names its table by oid). The retired-KEK guards of 0009 get
-- the same.
--
-- The checking functions pin their plan to index probes (nested loop over
-- the transition table, the parent's unique index inside): the planner
-- knows nothing of a transition table's size and otherwise hashes or
-- merges against the *whole* parent table, a cost that grows with the
-- database (measured: 3 times slower than the foreign keys after a few
-- thousand orders). A statement's check runs after all of its `WITH`
-- clauses, so the order writer's single statement (orders, tags, records)
-- sees its own parents. (SQLite, where a foreign-key check is a cheap
-- B-tree probe, keeps its keys.)

ALTER TABLE consent_tags DROP CONSTRAINT consent_tags_order_id_fkey;
ALTER TABLE billing_details DROP CONSTRAINT billing_details_consent_tag_fkey;
ALTER TABLE shipping_details DROP CONSTRAINT shipping_details_consent_tag_fkey;
ALTER TABLE gift_recipients DROP CONSTRAINT gift_recipients_consent_tag_fkey;
ALTER TABLE payment_cards DROP CONSTRAINT payment_cards_consent_tag_fkey;
ALTER TABLE contact_emails DROP CONSTRAINT contact_emails_consent_tag_fkey;

-- A tag's order exists.
CREATE FUNCTION refuse_tags_without_order() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n
               WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = n.order_id)) THEN
        RAISE EXCEPTION '%: a consent tag must name an existing order', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- A record's tag is one of its own order's tags.
CREATE FUNCTION refuse_records_without_own_tag() RETURNS trigger LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n
               WHERE NOT EXISTS (SELECT 1 FROM consent_tags t
                                 WHERE t.order_id = n.order_id AND t.id = n.consent_tag_id)) THEN
        RAISE EXCEPTION '%: a record must name a consent tag of its own order', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['refuse_tags_without_order()', 'refuse_records_without_own_tag()',
                             'refuse_retired_kek_rows()', 'refuse_retired_reference_kek_rows()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END $$;

-- Orders and consent tags: never deleted, keys never changed.
CREATE FUNCTION refuse_breaking_order_references() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: orders and consent tags are never deleted and their keys never change', TG_TABLE_NAME
        USING ERRCODE = 'foreign_key_violation';
END $$;

CREATE TRIGGER consent_tags_order_exists_on_insert AFTER INSERT ON consent_tags
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_tags_without_order();

CREATE TRIGGER billing_details_own_tag_on_insert AFTER INSERT ON billing_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER billing_details_own_tag_on_update AFTER UPDATE ON billing_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER shipping_details_own_tag_on_insert AFTER INSERT ON shipping_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER shipping_details_own_tag_on_update AFTER UPDATE ON shipping_details
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER gift_recipients_own_tag_on_insert AFTER INSERT ON gift_recipients
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER gift_recipients_own_tag_on_update AFTER UPDATE ON gift_recipients
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER payment_cards_own_tag_on_insert AFTER INSERT ON payment_cards
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER payment_cards_own_tag_on_update AFTER UPDATE ON payment_cards
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER contact_emails_own_tag_on_insert AFTER INSERT ON contact_emails
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();
CREATE TRIGGER contact_emails_own_tag_on_update AFTER UPDATE ON contact_emails
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION refuse_records_without_own_tag();

CREATE TRIGGER orders_never_deleted BEFORE DELETE ON orders
FOR EACH STATEMENT EXECUTE FUNCTION refuse_breaking_order_references();
CREATE TRIGGER orders_never_truncated BEFORE TRUNCATE ON orders
FOR EACH STATEMENT EXECUTE FUNCTION refuse_breaking_order_references();
CREATE TRIGGER orders_id_never_changes BEFORE UPDATE OF id ON orders
FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
EXECUTE FUNCTION refuse_breaking_order_references();
CREATE TRIGGER consent_tags_never_deleted BEFORE DELETE ON consent_tags
FOR EACH STATEMENT EXECUTE FUNCTION refuse_breaking_order_references();
CREATE TRIGGER consent_tags_never_truncated BEFORE TRUNCATE ON consent_tags
FOR EACH STATEMENT EXECUTE FUNCTION refuse_breaking_order_references();
CREATE TRIGGER consent_tags_keys_never_change BEFORE UPDATE OF id, order_id ON consent_tags
FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.order_id IS DISTINCT FROM OLD.order_id)
EXECUTE FUNCTION refuse_breaking_order_references();
