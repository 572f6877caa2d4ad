-- Access-log entries are numbered from 1 (mirrored in
-- migrations/postgres/0016). A row numbered 0 or below would sit before
-- the chain's first entry: the chain check and `GET /v1/audit/log` start
-- at 1, yet the audit's dispatch checks, which join the whole table,
-- would count it as a log entry. The database refuses it; the audit names
-- one written before this guard (or with it switched off). Updates are
-- refused already (0002).
CREATE TRIGGER access_log_numbered_from_one BEFORE INSERT ON access_log
WHEN NEW.seq < 1
BEGIN SELECT RAISE(ABORT, 'access_log: entries are numbered from 1'); END;
