-- A chain's head row names its last entry, always. The access log's head
-- (`access_log_head`: the last entry's seq and hash, MACed) and the
-- withdrawal ledger's (`consent_events_head`: the last withdrawal's seq
-- and MAC) were guarded by nothing: with plain write access, a genuine
-- older head row saved earlier could be written back. The verifiers then
-- walked the chain up to that head, took the entries after it for appends
-- landing meanwhile, and called the log intact — while every later append
-- failed on the seq the head gave it. The verifiers now fail on entries
-- past a head that does not come to cover them; the database now refuses
-- such a head as well: every insert or update of a head row must name the
-- table's last entry (its seq and its hash or MAC), and a head row is
-- never deleted (the entries are append-only, so a head can only move
-- forward). Appends write their entries, then the head, in one
-- transaction, so they always pass. Mirrored in migrations/sqlite/0015.
CREATE FUNCTION access_log_head_names_last_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'access_log_head is never removed';
    END IF;
    IF NEW.seq IS DISTINCT FROM (SELECT max(seq) FROM access_log)
       OR NEW.hash IS DISTINCT FROM (SELECT hash FROM access_log WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'access_log_head must name the last entry of access_log';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER access_log_head_names_last_entry
BEFORE INSERT OR UPDATE OR DELETE ON access_log_head
FOR EACH ROW EXECUTE FUNCTION access_log_head_names_last_entry();
CREATE TRIGGER access_log_head_never_truncated BEFORE TRUNCATE ON access_log_head
FOR EACH STATEMENT EXECUTE FUNCTION access_log_head_names_last_entry();

CREATE FUNCTION consent_events_head_names_last_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'consent_events_head is never removed';
    END IF;
    IF NEW.seq IS DISTINCT FROM (SELECT max(seq) FROM consent_events)
       OR NEW.mac IS DISTINCT FROM (SELECT mac FROM consent_events WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'consent_events_head must name the last entry of consent_events';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER consent_events_head_names_last_entry
BEFORE INSERT OR UPDATE OR DELETE ON consent_events_head
FOR EACH ROW EXECUTE FUNCTION consent_events_head_names_last_entry();
CREATE TRIGGER consent_events_head_never_truncated BEFORE TRUNCATE ON consent_events_head
FOR EACH STATEMENT EXECUTE FUNCTION consent_events_head_names_last_entry();

-- Tables named unqualified are this schema's, never a writing session's
-- or a temporary table's (as 0011 and 0018 pin theirs).
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['access_log_head_names_last_entry()',
                             'consent_events_head_names_last_entry()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END $$;
