-- The access log's entries and the withdrawal ledger's events are never
-- replaced either. SQLite's REPLACE conflict resolution (`INSERT OR
-- REPLACE`, `REPLACE INTO`) deletes the row in the way without firing its
-- delete trigger (recursive_triggers is off) and fires no update trigger,
-- so it passed the guards of 0002 and 0003: one statement swapped an entry
-- of the chain for another, found only by the next verification. A
-- BEFORE INSERT trigger sees the row it would replace. (PostgreSQL has no
-- REPLACE; its `ON CONFLICT DO UPDATE` fires the update guards.) The
-- chains' head rows have had this guard since 0015.
CREATE TRIGGER access_log_never_replaced BEFORE INSERT ON access_log
WHEN EXISTS (SELECT 1 FROM access_log WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END;
CREATE TRIGGER consent_events_never_replaced BEFORE INSERT ON consent_events
WHEN EXISTS (SELECT 1 FROM consent_events WHERE seq = NEW.seq OR id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END;

-- The purges and the KEK retirements, append-only as well (0011, 0012),
-- are written with `ON CONFLICT DO NOTHING`: an insert of a row already
-- there is skipped here too (RAISE(IGNORE) ends that row's insert without
-- an error), so the service's inserts behave as before and a REPLACE
-- changes nothing.
CREATE TRIGGER purges_never_replaced BEFORE INSERT ON purges
WHEN EXISTS (SELECT 1 FROM purges WHERE order_id = NEW.order_id AND class = NEW.class)
BEGIN SELECT RAISE(IGNORE); END;
CREATE TRIGGER kek_retirements_never_replaced BEFORE INSERT ON kek_retirements
WHEN EXISTS (SELECT 1 FROM kek_retirements WHERE class = NEW.class AND version = NEW.version)
BEGIN SELECT RAISE(IGNORE); END;
