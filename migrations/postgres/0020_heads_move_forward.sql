-- A chain's head row names its last entry, always. The access log's head
-- (`access_log_head`: the last entry's seq and hash, MACed) and the
-- withdrawal ledger's (`consent_events_head`: the last withdrawal's seq
-- and MAC) were guarded by nothing: with plain write access, a genuine
-- older head row saved earlier could be written back. The verifiers then
-- walked the chain up to that head, took the entries after it for appends
-- landing meanwhile, and called the log intact — while every later append
-- failed on the seq the head gave it. The verifiers now fail on entries
-- past a head that does not come to cover them; the database now refuses
-- such a head as well: a head row only moves forward (never to a lower
-- seq), names an entry that is there (its seq and its hash or MAC), and is
-- never deleted. Appends write their entries, then the head, in one
-- transaction, so they always pass. (Not "the last entry": a row planted
-- far past the head would then block every append, `keys` recovery's
-- included; the verifiers name such a row instead.) Mirrored in
-- migrations/sqlite/0015.
CREATE FUNCTION access_log_head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'access_log_head is never removed';
    END IF;
    IF (TG_OP = 'UPDATE' AND NEW.seq < OLD.seq)
       OR NEW.hash IS DISTINCT FROM (SELECT hash FROM access_log WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'access_log_head must move forward to an entry of access_log';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER access_log_head_moves_forward
BEFORE INSERT OR UPDATE OR DELETE ON access_log_head
FOR EACH ROW EXECUTE FUNCTION access_log_head_moves_forward();
CREATE TRIGGER access_log_head_never_truncated BEFORE TRUNCATE ON access_log_head
FOR EACH STATEMENT EXECUTE FUNCTION access_log_head_moves_forward();

CREATE FUNCTION consent_events_head_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'consent_events_head is never removed';
    END IF;
    IF (TG_OP = 'UPDATE' AND NEW.seq < OLD.seq)
       OR NEW.mac IS DISTINCT FROM (SELECT mac FROM consent_events WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'consent_events_head must move forward to an entry of consent_events';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER consent_events_head_moves_forward
BEFORE INSERT OR UPDATE OR DELETE ON consent_events_head
FOR EACH ROW EXECUTE FUNCTION consent_events_head_moves_forward();
CREATE TRIGGER consent_events_head_never_truncated BEFORE TRUNCATE ON consent_events_head
FOR EACH STATEMENT EXECUTE FUNCTION consent_events_head_moves_forward();

-- Tables named unqualified are this schema's, never a writing session's
-- or a temporary table's (as 0011 and 0018 pin theirs).
DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['access_log_head_moves_forward()',
                             'consent_events_head_moves_forward()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
    END LOOP;
END $$;
