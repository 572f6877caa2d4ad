-- The retired-KEK guards of 0009, same guarantee, one probe per statement
-- instead of one per row: no row sealed under a retired KEK version is
-- ever stored, whoever writes it.
--
-- 0009's check joined the statement's rows to `kek_retirements`; the
-- planner, which knows nothing of a transition table's size, runs that as
-- one probe of `kek_retirements`' primary key per inserted row: about
-- four per order (measured: 156 500 probes for 40 841 orders), as many as
-- every reference check of 0011 together, into a table that is nearly
-- always empty. Now
-- the class's retired versions are read first, once; only when there are
-- any are the statement's rows scanned for them (a transition table is
-- scanned in memory, no index). Both queries read the retirements
-- committed when they start, as the single query did.
-- docs/performance.md.

CREATE OR REPLACE FUNCTION refuse_retired_kek_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retired integer[];
BEGIN
    SELECT array_agg(r.version) INTO retired FROM kek_retirements r WHERE r.class = TG_ARGV[0];
    IF retired IS NOT NULL
       AND EXISTS (SELECT 1 FROM new_rows n WHERE n.kek_version = ANY (retired)) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION refuse_retired_reference_kek_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retired integer[];
BEGIN
    SELECT array_agg(r.version) INTO retired FROM kek_retirements r WHERE r.class = 'contact';
    IF retired IS NOT NULL
       AND EXISTS (SELECT 1 FROM new_rows n WHERE n.reference_kek_version = ANY (retired)) THEN
        RAISE EXCEPTION 'sealed under a retired KEK version';
    END IF;
    RETURN NULL;
END $$;

-- CREATE OR REPLACE replaces a function's settings: pin the search path
-- again, as 0011 did (tables named unqualified are this schema's, never a
-- writing session's or a temporary table's).
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['refuse_retired_kek_rows()', 'refuse_retired_reference_kek_rows()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END $$;
