-- A chain's head row only moves forward (mirrored from
-- migrations/postgres/0020, which says why): every insert or update of
-- `access_log_head` or `consent_events_head` must name an entry of its
-- table (seq and hash, or seq and MAC), never at a lower seq than before,
-- and a head row is never deleted. The insert trigger compares with the
-- row already there too: `INSERT OR REPLACE` deletes it without firing the
-- delete trigger (recursive_triggers is off) and fires no update trigger.
CREATE TRIGGER access_log_head_insert_moves_forward BEFORE INSERT ON access_log_head
WHEN NEW.seq < (SELECT seq FROM access_log_head WHERE id = NEW.id)
  OR NEW.hash IS NOT (SELECT hash FROM access_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'access_log_head must move forward to an entry of access_log'); END;
CREATE TRIGGER access_log_head_update_moves_forward BEFORE UPDATE ON access_log_head
WHEN NEW.seq < OLD.seq
  OR NEW.hash IS NOT (SELECT hash FROM access_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'access_log_head must move forward to an entry of access_log'); END;
CREATE TRIGGER access_log_head_no_delete BEFORE DELETE ON access_log_head
BEGIN SELECT RAISE(ABORT, 'access_log_head is never removed'); END;

CREATE TRIGGER consent_events_head_insert_moves_forward BEFORE INSERT ON consent_events_head
WHEN NEW.seq < (SELECT seq FROM consent_events_head WHERE id = NEW.id)
  OR NEW.mac IS NOT (SELECT mac FROM consent_events WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'consent_events_head must move forward to an entry of consent_events'); END;
CREATE TRIGGER consent_events_head_update_moves_forward BEFORE UPDATE ON consent_events_head
WHEN NEW.seq < OLD.seq
  OR NEW.mac IS NOT (SELECT mac FROM consent_events WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'consent_events_head must move forward to an entry of consent_events'); END;
CREATE TRIGGER consent_events_head_no_delete BEFORE DELETE ON consent_events_head
BEGIN SELECT RAISE(ABORT, 'consent_events_head is never removed'); END;
