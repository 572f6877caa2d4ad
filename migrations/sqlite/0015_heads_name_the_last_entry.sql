-- A chain's head row names its last entry, always (mirrored from
-- migrations/postgres/0020, which says why): every insert or update of
-- `access_log_head` or `consent_events_head` must name its table's last
-- entry (seq and hash, or seq and MAC), and a head row is never deleted.
CREATE TRIGGER access_log_head_insert_names_last_entry BEFORE INSERT ON access_log_head
WHEN NEW.seq IS NOT (SELECT max(seq) FROM access_log)
  OR NEW.hash IS NOT (SELECT hash FROM access_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'access_log_head must name the last entry of access_log'); END;
CREATE TRIGGER access_log_head_update_names_last_entry BEFORE UPDATE ON access_log_head
WHEN NEW.seq IS NOT (SELECT max(seq) FROM access_log)
  OR NEW.hash IS NOT (SELECT hash FROM access_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'access_log_head must name the last entry of access_log'); END;
CREATE TRIGGER access_log_head_no_delete BEFORE DELETE ON access_log_head
BEGIN SELECT RAISE(ABORT, 'access_log_head is never removed'); END;

CREATE TRIGGER consent_events_head_insert_names_last_entry BEFORE INSERT ON consent_events_head
WHEN NEW.seq IS NOT (SELECT max(seq) FROM consent_events)
  OR NEW.mac IS NOT (SELECT mac FROM consent_events WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'consent_events_head must name the last entry of consent_events'); END;
CREATE TRIGGER consent_events_head_update_names_last_entry BEFORE UPDATE ON consent_events_head
WHEN NEW.seq IS NOT (SELECT max(seq) FROM consent_events)
  OR NEW.mac IS NOT (SELECT mac FROM consent_events WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'consent_events_head must name the last entry of consent_events'); END;
CREATE TRIGGER consent_events_head_no_delete BEFORE DELETE ON consent_events_head
BEGIN SELECT RAISE(ABORT, 'consent_events_head is never removed'); END;
