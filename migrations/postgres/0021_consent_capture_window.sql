-- A checkout's capture time less the skew a storefront's clock may carry,
-- as this service's RFC 3339 text, for the rule that a withdrawal counts
-- against a checkout captured up to five minutes after it (Rust:
-- `consent::withdrawal_counts`; SQL: `store::sql::audit::
-- withdrawal_counts_sql`). NULL for text that is not exactly the form this
-- service writes, or not a real time (edited in the database: its tag then
-- fails its MAC): the caller counts the withdrawal then, as Rust does
-- (fail closed) — never an error that stops the audit's counts or an
-- export, and never `infinity`, `now` or `T24:00`, which a bare cast would
-- take. (PARALLEL UNSAFE, the default, as its EXCEPTION block must be.)
CREATE FUNCTION consent_capture_less(captured text, minutes integer) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    at timestamptz;
BEGIN
    IF captured IS NULL
       OR captured !~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$' THEN
        RETURN NULL;
    END IF;
    at := captured::timestamptz;
    -- Only a time that comes back the same text (the cast takes T24:00).
    IF to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') <> captured THEN
        RETURN NULL;
    END IF;
    RETURN to_char((at - make_interval(mins => minutes)) AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION consent_capture_less(text, integer) SET search_path = %I, pg_temp',
                   current_schema());
END $$;
