-- Every indexed text column compares byte by byte (COLLATE "C"), whatever
-- the database's default collation.
--
-- These columns hold what this service writes: UUIDs, RFC 3339 UTC
-- timestamps, statuses and class names — ASCII, which no one reads in a
-- language's order. Two reasons:
--
-- - Correctness. With a linguistic default collation (en_US.UTF-8, say),
--   PostgreSQL orders text by the C library's rules, which skip
--   punctuation at the first level: the range scans over RFC 3339
--   timestamps (retention's and the replay window's `created_at`, the
--   withdrawal ledger's `effective_at`) would then not follow the byte
--   order the service compares them in. And such an index depends on the
--   C library's version: an operating-system upgrade that changes a
--   collation silently corrupts it. A "C" index depends on neither.
-- - Speed. Every comparison in these indexes (each order inserts into
--   about a dozen, and the reference checks of 0011 probe five more) went
--   through the C library's `strcoll` with both strings copied first;
--   "C" is a `memcmp`. Measured with the load benchmark: ≈ 7 % less
--   PostgreSQL CPU per order (docs/performance.md, nineteenth session).
--
-- A column compared with one of the database's default collation takes
-- this one (a column's own collation outranks the default), so no query
-- changes. Triggers that name one of these columns (`UPDATE OF …`,
-- `WHEN (…)`) would block the change; they are dropped and made again from
-- their own definitions, in this transaction, in the state they were in
-- (switched off, or firing on a replica only or always).
--
-- Upgrading: the migration rebuilds the text indexes of these tables under
-- an exclusive lock (reads wait too), and the statements that processes
-- still running have prepared stop matching the tables (PostgreSQL answers
-- "cached plan must not change result type" until their connections are
-- replaced). Stop every checkoutd process first, then run
-- `checkoutd migrate` or start the new version (README, "PostgreSQL").
-- The tables are locked first, in the order the order writer's statement
-- takes them (its claim, then the orders' tables), so that the busiest
-- writer, if one is still running, waits for the migration instead of
-- deadlocking with it halfway (other writers could still: stop them).

DO $$
DECLARE
    t record;
    definitions text[] := '{}';
    states text[] := '{}';
    def text;
BEGIN
    LOCK TABLE idempotency_keys, orders, consent_tags, billing_details, shipping_details,
               gift_recipients, contact_emails, payment_cards, consent_events, purges,
               kek_retirements IN ACCESS EXCLUSIVE MODE;
    FOR t IN
        SELECT DISTINCT tg.oid, tg.tgname, tg.tgrelid::regclass AS rel, tg.tgenabled,
               pg_get_triggerdef(tg.oid) AS def
          FROM pg_trigger tg
          JOIN pg_depend d ON d.classid = 'pg_trigger'::regclass AND d.objid = tg.oid
                          AND d.refobjid = tg.tgrelid AND d.refobjsubid > 0
         WHERE NOT tg.tgisinternal
           AND tg.tgrelid IN ('orders'::regclass, 'consent_tags'::regclass,
                              'consent_events'::regclass, 'billing_details'::regclass,
                              'shipping_details'::regclass, 'gift_recipients'::regclass,
                              'payment_cards'::regclass, 'contact_emails'::regclass,
                              'idempotency_keys'::regclass, 'purges'::regclass,
                              'kek_retirements'::regclass)
    LOOP
        definitions := definitions || t.def;
        IF t.tgenabled <> 'O' THEN
            states := states || format('ALTER TABLE %s %s TRIGGER %I', t.rel,
                CASE t.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'R' THEN 'ENABLE REPLICA'
                                 ELSE 'ENABLE ALWAYS' END,
                t.tgname);
        END IF;
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
    END LOOP;

    ALTER TABLE orders ALTER COLUMN id TYPE text COLLATE "C",
                       ALTER COLUMN status TYPE text COLLATE "C";
    ALTER TABLE consent_tags ALTER COLUMN id TYPE text COLLATE "C",
                             ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE billing_details ALTER COLUMN id TYPE text COLLATE "C",
                                ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE shipping_details ALTER COLUMN id TYPE text COLLATE "C",
                                 ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE gift_recipients ALTER COLUMN id TYPE text COLLATE "C",
                                ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE payment_cards ALTER COLUMN id TYPE text COLLATE "C",
                              ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE contact_emails ALTER COLUMN id TYPE text COLLATE "C",
                               ALTER COLUMN order_id TYPE text COLLATE "C";
    ALTER TABLE idempotency_keys ALTER COLUMN created_at TYPE text COLLATE "C";
    ALTER TABLE consent_events ALTER COLUMN id TYPE text COLLATE "C",
                               ALTER COLUMN effective_at TYPE text COLLATE "C";
    ALTER TABLE purges ALTER COLUMN order_id TYPE text COLLATE "C",
                       ALTER COLUMN class TYPE text COLLATE "C";
    ALTER TABLE kek_retirements ALTER COLUMN class TYPE text COLLATE "C";

    FOREACH def IN ARRAY definitions || states LOOP
        EXECUTE def;
    END LOOP;
END $$;
