-- Access-log entries are numbered from 1 (mirrored in
-- migrations/sqlite/0013). A row numbered 0 or below would sit before the
-- chain's first entry: the chain check and `GET /v1/audit/log` start at 1,
-- yet the audit's dispatch checks, which join the whole table, would count
-- it as a log entry. The database refuses it; the audit names one written
-- before this guard (NOT VALID: existing rows are the audit's to judge,
-- and the migration does not scan the log).
ALTER TABLE access_log ADD CONSTRAINT access_log_numbered_from_one CHECK (seq >= 1) NOT VALID;
