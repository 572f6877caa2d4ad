-- No query reads idempotency keys by age: keys are kept (README: "at least
-- 24 hours — in this release they are never purged") and looked up only by
-- their primary key (client, key_hash). The index cost one more B-tree
-- insert in every order's commit. A purge of old keys would bring it back
-- with the query that needs it. docs/performance.md.
DROP INDEX IF EXISTS idempotency_keys_created;
