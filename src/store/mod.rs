//! Storage: one [`Store`] trait; one implementation of it (`sql/`) whose
//! queries both engines share, and one module per engine for what differs
//! (`sqlite.rs`, `postgres.rs`).
//!
//! The engine is chosen by the database URL's scheme (see
//! [`crate::config::DatabaseUrl`]); an unknown scheme never reaches this
//! module. Everything a store persists is already encrypted or free of
//! personal data: sealing happens in the request task (see `crate::intake`),
//! so the store only writes rows. Writes take *batches* so that concurrent
//! orders can share one synced commit (group commit) without an interface
//! change.

pub mod guards;
pub mod postgres;
pub mod postgres_orders;
pub mod rows;
pub mod sql;
pub mod sqlite;
pub mod sqlite_orders;

use std::sync::Arc;

use async_trait::async_trait;

use crate::audit::access_log;
use crate::config::DatabaseUrl;

/// Storage failures. Variants carry no row contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("a database query failed")]
    Query(#[source] sqlx::Error),
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no database at {}: name the service's database (--database-url, or CHECKOUTD_DATABASE_URL); only `serve`, `migrate` and `keys init` create one", path.display())]
    NoDatabase { path: std::path::PathBuf },
    #[error("cannot lock {path} to apply the database's migrations")]
    MigrationLock {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database {target}")]
    Connect {
        /// The URL without password or parameters.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "no working connection to the database {target} within 10 s: it is unreachable, or \
         its TLS certificate did not verify (check sslmode, sslrootcert and the server's \
         certificate)"
    )]
    ConnectTimeout { target: String },
    #[error(
        "PostgreSQL has {setting}=off, so an accepted order could be lost or corrupted in a \
         crash or power loss; turn it on, or pass --allow-unsafe-durability (testing only)"
    )]
    NotDurable { setting: &'static str },
    #[error(
        "the PostgreSQL database's encoding is {encoding}, not UTF8: it would refuse order \
         items and references in most of the world's scripts; create it with ENCODING 'UTF8'"
    )]
    NotUtf8 { encoding: String },
    #[error(
        "the database's schema is older than this checkoutd (migration {version} is not \
         applied): run `checkoutd migrate` first (README: some migrations need every `serve` \
         stopped)"
    )]
    SchemaBehind { version: i64 },
    #[error(
        "the database's schema is newer than this checkoutd (it holds migration {version}, \
         which this binary does not know): use the checkoutd release that migrated it"
    )]
    SchemaAhead { version: i64 },
    #[error(
        "migration {version} as applied to this database differs from this checkoutd's: \
         the database was migrated by another build; use that build"
    )]
    SchemaAltered { version: i64 },
    #[error("a stored row is malformed ({0})")]
    Corrupt(&'static str),
    /// The record was sealed under a KEK version that `keys rotate` has
    /// retired (this process has not picked up the new keyring yet; it does
    /// within a second): retry.
    #[error("the record was sealed under a retired KEK version; the keyring is being reloaded")]
    RetiredKek,
    /// The database did not answer in time; the outcome of a write is
    /// unknown (a retry with the same Idempotency-Key replays or commits).
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The group-commit writer's queue is full: nothing was written.
    #[error("the order writer's queue is full")]
    Busy,
    /// The task that commits orders has stopped.
    #[error("the order writer has stopped")]
    WriterStopped,
    /// SQLite's order writer (`store/sqlite_orders.rs`) failed;
    /// `unavailable` when the database was busy or the file failed (503).
    #[error("the SQLite order writer failed: {source}")]
    OrderWriter {
        unavailable: bool,
        #[source]
        source: rusqlite::Error,
    },
    /// The order is under a legal hold: nothing of it was purged.
    #[error(
        "the order is under a legal hold: nothing was purged (`checkoutd orders release` ends the hold)"
    )]
    UnderLegalHold,
    /// An operation did part of its work (the message says which).
    #[error("{0}")]
    Incomplete(&'static str),
    /// One failure reported to several waiters (a failed batch).
    #[error("{0}")]
    Shared(Arc<StoreError>),
}

impl StoreError {
    /// True when the database could not be reached (answer 503).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_)
            | StoreError::RetiredKek
            | StoreError::Connect { .. }
            | StoreError::ConnectTimeout { .. }
            | StoreError::Timeout(_)
            | StoreError::Busy
            | StoreError::WriterStopped
            | StoreError::OrderWriter {
                unavailable: true, ..
            } => true,
            StoreError::Shared(inner) => inner.is_unavailable(),
            _ => false,
        }
    }

    /// True when the connection broke mid-conversation: the database may
    /// have read the whole request and may still commit it (PostgreSQL
    /// commits a statement it has read whether or not its answer can be
    /// sent), so what it did is not known. A pool that gave no connection,
    /// or an error the database answered with, wrote nothing.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            StoreError::Unavailable(
                sqlx::Error::Io(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            StoreError::Shared(inner) => inner.outcome_unknown(),
            _ => false,
        }
    }

    /// True when a row read back does not read as this service writes it
    /// (a column edited in the database into something that does not
    /// decode): the row fails its integrity check, the database is fine.
    pub fn is_unreadable_row(&self) -> bool {
        match self {
            StoreError::Corrupt(_)
            | StoreError::Query(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => true,
            StoreError::Shared(inner) => inner.is_unreadable_row(),
            _ => false,
        }
    }

    /// True when a row was sealed under a retired KEK version (the order
    /// is answered 503 and re-sealed by its retry).
    pub fn is_retired_kek(&self) -> bool {
        match self {
            StoreError::RetiredKek => true,
            StoreError::Shared(inner) => inner.is_retired_kek(),
            _ => false,
        }
    }

    /// Maps a driver error: connection-level failures are `Unavailable`
    /// (answered 503), everything else `Query` (answered 500).
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        match error {
            // The connection broke, or the server (or something in between)
            // answered nonsense while connecting: the database side is at
            // fault, not the request; the pool replaces the connection.
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| transient(&c)) => {
                StoreError::Unavailable(error)
            }
            // Refused before it ran (a migration changed a column under a
            // prepared statement): retried on a newer connection.
            sqlx::Error::Database(ref db) if postgres::stale_plans::is_stale_plan(db.as_ref()) => {
                postgres::stale_plans::mark();
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(ref db)
                if db.message().contains("sealed under a retired KEK version") =>
            {
                StoreError::RetiredKek
            }
            other => StoreError::Query(other),
        }
    }
}

impl StoreError {
    /// As [`from_sqlx`](Self::from_sqlx), for the SQLite order writer.
    pub fn from_sqlite(error: rusqlite::Error) -> Self {
        match &error {
            rusqlite::Error::SqliteFailure(_, Some(message))
                if message.contains("sealed under a retired KEK version") =>
            {
                StoreError::RetiredKek
            }
            rusqlite::Error::SqliteFailure(e, _) => StoreError::OrderWriter {
                unavailable: transient(&e.extended_code.to_string()),
                source: error,
            },
            _ => StoreError::OrderWriter {
                unavailable: false,
                source: error,
            },
        }
    }
}

/// Whether a database error code means "try again later" (answer 503).
/// PostgreSQL's are five-character SQLSTATEs; SQLite's are numbers below
/// 10000 (result code in the low byte).
fn transient(code: &str) -> bool {
    if code.len() == 5 {
        // Connection exceptions, insufficient resources, operator
        // intervention (shutdown, crash recovery, cancelled statements),
        // system/I-O errors, serialization failures and deadlocks, lock
        // timeouts, a read-only transaction (a failover left us on a
        // standby), an idle-in-transaction timeout.
        return ["08", "53", "57", "58"].iter().any(|p| code.starts_with(p))
            || matches!(code, "40001" | "40P01" | "55P03" | "25006" | "25P03");
    }
    // SQLite: lock contention that outlasted the busy timeout (BUSY,
    // LOCKED), and the file itself failing — read-only or moved
    // (READONLY), I/O errors (IOERR), disk full (FULL), cannot open
    // (CANTOPEN) — with their extended codes.
    code.parse::<i64>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
}

/// The persistence interface of checkoutd.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Flushes and closes connections; called once on shutdown.
    async fn close(&self);

    /// Whether anything made under a keyring is stored — orders, the
    /// access log's chain, withdrawals, KEK retirements. A new keyring must
    /// never be made for such a database: its records would no longer
    /// open, its chains no longer verify (and the audience export, which
    /// fails closed on an unverifiable ledger, would stay refused).
    async fn holds_records(&self) -> Result<bool, StoreError>;

    /// Writes a batch of accepted orders in one synced transaction. Each
    /// order's idempotency row is inserted first; an order whose key is
    /// already taken is skipped (`DuplicateKey`) without failing the others.
    /// Returns one outcome per order, in order. On `Err` nothing was written.
    async fn commit_orders(
        &self,
        batch: Arc<[rows::NewOrder]>,
    ) -> Result<Vec<rows::CommitOutcome>, StoreError>;

    /// The stored idempotency record of `(client, key_hash)`, if any.
    async fn idempotency_key(
        &self,
        client: &[u8; 32],
        key_hash: &[u8; 32],
    ) -> Result<Option<rows::KeyRecord>, StoreError>;

    /// As [`Self::idempotency_key`], read once every order commit in flight
    /// when it is called — in any process sharing the database — has ended:
    /// for an answer that is final only if no earlier attempt of the key
    /// can still commit (a 422 for a retried body that no longer
    /// validates, while the first attempt's batch, its answer lost to a
    /// broken connection or the commit time limit, may still land).
    /// SQLite's commits are this process's own, whose uncertain keys
    /// intake tracks itself.
    async fn idempotency_key_settled(
        &self,
        client: &[u8; 32],
        key_hash: &[u8; 32],
    ) -> Result<Option<rows::KeyRecord>, StoreError> {
        self.idempotency_key(client, key_hash).await
    }

    /// Whether an order with this id exists (whatever state its rows are in).
    async fn order_exists(&self, order_id: &str) -> Result<bool, StoreError>;

    /// An order's row as its MACs cover it (nothing personal), to check
    /// before acting on it; `None` for an unknown order.
    async fn order_check(&self, id: uuid::Uuid) -> Result<Option<rows::OrderCheck>, StoreError>;

    /// The masked summary of an order created by `client`; `None` for an
    /// unknown order or another client's.
    async fn order_summary(
        &self,
        client: &[u8; 32],
        id: uuid::Uuid,
    ) -> Result<Option<rows::OrderSummary>, StoreError>;

    /// Orders in `status`, in creation order, after the order with sequence
    /// number `after_seq`: their shipping record (or the gift recipient's,
    /// for a gift) and the customer's consent tag. At most `limit` rows.
    /// Billing and card columns are never read on this path. A row that
    /// does not read is returned as [`rows::ShipmentEntry::Damaged`].
    async fn shipments(
        &self,
        status: rows::ShipmentStatus,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<rows::ShipmentEntry>, StoreError>;

    /// Marks an order dispatched, or reports what it already is. One
    /// conditional write: the order is dispatched only while its row is
    /// still, column for column, the `checked` one (read by
    /// [`Store::order_check`] and verified by the caller); a row edited
    /// in between is [`rows::DispatchOutcome::Changed`], not shipped.
    async fn dispatch(
        &self,
        order_id: uuid::Uuid,
        checked: &rows::OrderCheck,
        dispatch: &rows::NewDispatch,
    ) -> Result<rows::DispatchOutcome, StoreError>;

    /// Appends entries to the access log in one transaction, chaining each
    /// to the current head (read under the write lock) with `chainer`, and
    /// moves the head. Returns the sequence numbers given.
    async fn append_access_log(
        &self,
        entries: &[access_log::Entry],
        chainer: &access_log::Chainer<'_>,
    ) -> Result<Vec<u64>, StoreError>;

    /// Up to `limit` entries with `seq > after`, in order. The chain check
    /// starts below 0 (`i64::MIN`): a row numbered below 1, which this
    /// service never writes, is read too (one below 0 is
    /// `StoreError::Corrupt`); the API's pages start at `after` 0.
    async fn access_log_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<access_log::ChainedEntry>, StoreError>;

    /// The chain head, if any entry exists.
    async fn access_log_head(&self) -> Result<Option<access_log::Head>, StoreError>;

    /// The lowest `seq` of any access-log row, if one exists (the chain
    /// counts from 1: anything lower was put there by hand).
    async fn access_log_lowest(&self) -> Result<Option<i64>, StoreError>;

    // ---- audit (read-only) ----

    /// Up to `limit` orders with `seq > after_seq`, with all their records
    /// and consent tags, raw.
    async fn audit_batch(
        &self,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<rows::AuditBatch, StoreError>;

    /// Up to `limit` idempotency rows after the primary key `after`
    /// (`(client, key_hash)`; `None` for the first page), in key order.
    async fn idempotency_audit_page(
        &self,
        after: Option<(&[u8], &[u8])>,
        limit: u32,
    ) -> Result<Vec<rows::AuditKeyRow>, StoreError>;

    /// Orders without their idempotency row (every order is written with
    /// one, and none is ever deleted): how many, and the ids of the first
    /// `limit` in creation order.
    async fn orders_without_key_row(&self, limit: u32) -> Result<(u64, Vec<String>), StoreError>;

    /// Rows of the record tables and of `consent_tags` whose `order_id`
    /// names no order (the audit walks records through their orders, so
    /// it would never open one of these): how many, and the first `limit`
    /// as `(table, id)`.
    async fn rows_without_order(
        &self,
        limit: u32,
    ) -> Result<(u64, Vec<(&'static str, String)>), StoreError>;

    /// Order ids that allowed access-log entries of `actions` name (each
    /// object of 36 characters, an order id in every one of them) and that
    /// no order has: how many, and the first `limit` with the entry's seq.
    /// An order is never deleted (a purge keeps its row): one named by the
    /// log and gone was deleted around the guards.
    async fn orders_named_but_missing(
        &self,
        actions: &[&str],
        limit: u32,
    ) -> Result<(u64, Vec<(String, i64)>), StoreError>;

    /// Orders the access log records as dispatched (an allowed `action`
    /// answered 200 for exactly that order) that are not dispatched now —
    /// or no longer exist at all: how many, and the first `limit`. A
    /// dispatch is written before its log entry, and never undone; an order
    /// is never deleted.
    async fn dispatches_undone(
        &self,
        action: &str,
        limit: u32,
    ) -> Result<(u64, Vec<rows::UndoneDispatch>), StoreError>;

    /// Purges the access log records as done (an allowed `action` entry
    /// naming exactly `["<order id>", "class:<class>"]`, written after the
    /// purge committed) of which `purges` holds no row: how many, and the
    /// first `limit`. The `purges` table is append-only and its rows are
    /// MACed, but a row deleted outright (the guards switched off) leaves
    /// nothing to verify — and with the records put back from a backup,
    /// the order looks as if it had never been purged.
    async fn purges_unrecorded(
        &self,
        action: &str,
        limit: u32,
    ) -> Result<(u64, Vec<rows::UnrecordedPurge>), StoreError>;

    /// The reverse: orders dispatched before `before` (a timestamp) that
    /// no allowed `action` answered 200 in the access log names — how
    /// many, and the first `limit` ids. A dispatch whose log append failed
    /// after its commit (the warehouse got a 503) would otherwise stay
    /// unseen, and so would a later rollback of it. (`before` leaves out
    /// dispatches whose entry may still be on its way: the two are written
    /// one after the other.)
    async fn dispatches_unlogged(
        &self,
        action: &str,
        before: &str,
        limit: u32,
    ) -> Result<(u64, Vec<String>), StoreError>;

    /// One order with all its records and tags, raw; empty when unknown.
    async fn audit_order(&self, order_id: &str) -> Result<rows::AuditBatch, StoreError>;

    /// The database's guards (its triggers) that are not as this release's
    /// migrations create them: missing, altered or disabled (see
    /// [`guards`]).
    async fn guard_findings(&self) -> Result<Vec<guards::GuardFinding>, StoreError>;

    /// Every table and its columns (name, declared type).
    async fn schema(&self) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError>;

    /// Up to `limit` rows of `table` after `after_rowid`, with the named
    /// columns as text. `table` and `columns` must come from [`Store::schema`].
    async fn clear_rows(
        &self,
        table: &str,
        columns: &[String],
        after_rowid: Option<i64>,
        limit: u32,
    ) -> Result<Vec<rows::ClearRow>, StoreError>;

    /// Row counts and KEK-version counts.
    async fn totals(&self) -> Result<rows::Totals, StoreError>;

    /// Consent per purpose over customers (email blind index), latest tag.
    async fn consent_stats(&self) -> Result<rows::ConsentStats, StoreError>;

    // ---- key life cycle ----

    /// Whether KEK `class`/`version` is recorded as retired here (by a
    /// `keys rotate` run against this database).
    async fn kek_retired(
        &self,
        class: crate::crypto::DataClass,
        version: u32,
    ) -> Result<bool, StoreError>;

    /// The access-log entries of `action` with `after < seq <= through`,
    /// in order (the key operations' own record: `keys rotate` names each
    /// version it makes, before the keyring file is saved). Read through
    /// the primary key a window at a time, so a recovery reading a large
    /// log runs bounded statements.
    async fn access_log_of(
        &self,
        action: &str,
        after: i64,
        through: i64,
    ) -> Result<Vec<access_log::ChainedEntry>, StoreError>;

    /// The highest KEK version of `class` the database recorded retired
    /// (0: none).
    async fn kek_highest_retired(&self, class: crate::crypto::DataClass)
    -> Result<u32, StoreError>;

    /// Records KEK versions as retired: from now on the database refuses
    /// new records sealed under them.
    async fn retire_keks(
        &self,
        retired: &[(crate::crypto::DataClass, u32)],
        at: &str,
    ) -> Result<(), StoreError>;

    /// How many records each KEK version of `class` wraps.
    async fn kek_usage(
        &self,
        class: crate::crypto::DataClass,
    ) -> Result<std::collections::BTreeMap<u32, u64>, StoreError>;

    /// Up to `limit` envelopes of `class` under one of the KEK versions
    /// `from` (none if `from` is empty).
    async fn envelopes_to_rewrap(
        &self,
        class: crate::crypto::DataClass,
        from: &[u32],
        limit: u32,
    ) -> Result<Vec<rows::RewrapItem>, StoreError>;

    /// Replaces wrapped data keys in one transaction; a row is changed only
    /// if it still has its old KEK version (safe against a concurrent run).
    /// Returns how many rows changed.
    async fn apply_rewrap(
        &self,
        items: &[(rows::RewrapItem, u32, Vec<u8>)],
    ) -> Result<u64, StoreError>;

    /// Deletes the records of `classes` of one order (their wrapped data keys
    /// with them: crypto-shredding) and records each purge, in one
    /// transaction, if `condition` holds then. Returns the classes actually
    /// purged (a class already gone is skipped; none when the condition
    /// does not hold). [`after_purge`](Self::after_purge) must follow.
    /// `UnderLegalHold`, deleting nothing, when the order is held then (a
    /// hold and a purge of one order take turns: neither sees half the
    /// other).
    async fn purge(
        &self,
        order_id: &str,
        purges: &[rows::PurgeRow],
        condition: &rows::PurgeIf,
    ) -> Result<Vec<String>, StoreError>;

    /// Places a legal hold on `hold.order_id` unless one is in force.
    async fn place_hold(&self, hold: &rows::HoldRow) -> Result<rows::HoldPlaced, StoreError>;

    /// Releases the hold on `order_id`; the hold that was in force, if any.
    async fn release_hold(&self, order_id: &str) -> Result<Option<rows::HoldRow>, StoreError>;

    /// The allowed access-log entries of one of `actions` whose objects
    /// are exactly `["<order id>"]`, in log order (the audit's view of the
    /// legal holds placed and released).
    async fn entries_naming_one_order(
        &self,
        actions: &[&str],
    ) -> Result<Vec<rows::OrderEntry>, StoreError>;

    /// Every hold in force, oldest first (the operator's listing, the
    /// audit).
    async fn holds(&self) -> Result<Vec<rows::HoldRow>, StoreError>;

    /// Up to `limit` idempotency rows that still hold a request hash and
    /// are `due` to lose it (see [`rows::KeysDue`]), oldest first.
    async fn replayable_keys(
        &self,
        due: rows::KeysDue<'_>,
        limit: u32,
    ) -> Result<Vec<rows::AuditKeyRow>, StoreError>;

    /// Empties the request hash of each row (matched by its primary key and
    /// the hash it was read with, so a row changed since is left alone) and
    /// sets its new `response_mac`, in one transaction. Returns how many
    /// rows changed.
    async fn retire_request_hashes(
        &self,
        rows: &[rows::RetiredRequestHash],
    ) -> Result<u64, StoreError>;

    /// The blind index of an order's contact email, if its contact record
    /// is there (what a contact purge keeps, see `PurgeRow`).
    async fn contact_subject(&self, order_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes what deleted records leave behind where the engine can: for
    /// SQLite, moves the zeroed pages into the database file and empties the
    /// WAL (`Incomplete` while readers keep it: running it again — a purge
    /// run again, which finds nothing left to delete — finishes the job).
    async fn after_purge(&self) -> Result<(), StoreError>;

    /// Orders that still hold records of one of `classes` and were dispatched
    /// before `before` ([`Clock::Dispatch`]), or taken before it and never
    /// dispatched ([`Clock::CreationUndispatched`]) — none under a legal
    /// hold.
    ///
    /// [`Clock::Dispatch`]: crate::retention::Clock::Dispatch
    /// [`Clock::CreationUndispatched`]: crate::retention::Clock::CreationUndispatched
    async fn due_for_retention(
        &self,
        classes: &[crate::crypto::DataClass],
        clock: crate::retention::Clock,
        before: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;

    /// Every purge recorded for the orders in a sequence range (audit).
    async fn purges_of(&self, order_ids: &[String]) -> Result<Vec<rows::PurgeRow>, StoreError>;

    // ---- consent life cycle ----

    /// Appends a withdrawal to the ledger in one transaction: reads the head
    /// under the write lock, raises `effective_at` to the subject's latest
    /// checkout capture time if that is later (the two times come from
    /// different processes' clocks: an opt-out made after a checkout must
    /// count against it even when its host's clock is behind), sets `seq`
    /// and `prev_mac`, MACs the event with `sealer`, inserts it and moves
    /// the head.
    async fn append_consent_event(
        &self,
        event: rows::ConsentEventRow,
        sealer: &crate::consent::EventSealer<'_>,
    ) -> Result<(), StoreError>;

    /// The ledger head: (seq, last MAC, head MAC), if any withdrawal exists.
    async fn consent_events_head(&self) -> Result<Option<(i64, Vec<u8>, Vec<u8>)>, StoreError>;

    /// How many withdrawals have a `seq` from 1 to `seq`.
    async fn consent_events_up_to(&self, seq: i64) -> Result<i64, StoreError>;

    /// The lowest `seq` of any withdrawal, if one exists (the ledger counts
    /// from 1: anything lower was put there by hand).
    async fn consent_events_lowest(&self) -> Result<Option<i64>, StoreError>;

    /// One chunk of an audience export: up to `subjects` customers (email
    /// blind indexes) after `after` (empty: from the first), in blind-index
    /// order, and of them those whose latest checkout tag grants `purpose`
    /// and who have not withdrawn it since. `purpose` must be one of
    /// `Purposes::NAMES`. A customer is in one chunk only, however often
    /// they order during an export.
    async fn audience(
        &self,
        purpose: &'static str,
        after: &[u8],
        subjects: u32,
    ) -> Result<rows::AudienceChunk, StoreError>;

    /// Up to `limit` withdrawals with `seq > after`, in order (audit).
    async fn consent_events_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, rows::ConsentEventRow)>, StoreError>;

    /// Every customer tag and withdrawal of one subject, oldest first.
    async fn consent_history(
        &self,
        email_blind_index: &[u8],
    ) -> Result<rows::ConsentHistory, StoreError>;
}

/// Opens an existing store read-only, without migrations (offline audit).
pub async fn open_read_only(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(match url {
        DatabaseUrl::Sqlite { path } => sqlite::open_read_only(path).await?,
        DatabaseUrl::Postgres { url, .. } => postgres::open_read_only(url).await?,
    }))
}

/// Opens the store named by `url` and applies pending migrations. An SQLite
/// file (and its directory) is created on first use; a PostgreSQL database
/// must exist (a URL that does not connect is an error, never a new empty
/// database somewhere else).
pub async fn open(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(open_sql(url).await?))
}

/// For the one-off commands that act on the service's data (`keys`,
/// `orders purge`): the store as it is. An SQLite file that does not exist
/// is an error, never a new empty database — a key counted as unused there
/// could be destroyed while the real database still needs it — and so is
/// a schema behind this binary's migrations: only `serve` and `migrate`
/// apply them (some need every server stopped first, README).
pub async fn open_existing(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    if let DatabaseUrl::Sqlite { path } = url
        && !path.exists()
    {
        return Err(StoreError::NoDatabase { path: path.clone() });
    }
    Ok(Arc::new(open_sql_as(url, Schema::MustBeCurrent).await?))
}

/// For `keys init`: a new database is created and migrated; an existing
/// one must be current (as [`open_existing`]), never migrated.
pub async fn open_new_or_current(url: &DatabaseUrl) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(open_sql_as(url, Schema::MigrateIfNew).await?))
}

/// [`open`], as the concrete engine type.
pub async fn open_sql(url: &DatabaseUrl) -> Result<sql::SqlStore, StoreError> {
    open_sql_as(url, Schema::Migrate).await
}

/// What opening a store does about its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Applies the migrations not applied yet.
    Migrate,
    /// Refuses a schema that is not this binary's exactly: one that lacks
    /// a migration, holds one the binary does not know, or one altered.
    MustBeCurrent,
    /// As `Migrate` for a new database (none applied), else as
    /// `MustBeCurrent` (`keys init`, which starts a new database but must
    /// not migrate the live one it refuses).
    MigrateIfNew,
}

async fn open_sql_as(url: &DatabaseUrl, schema: Schema) -> Result<sql::SqlStore, StoreError> {
    match url {
        DatabaseUrl::Sqlite { path } => sqlite::open(path, schema).await,
        DatabaseUrl::Postgres {
            url,
            allow_unsafe_durability,
        } => postgres::open(url, *allow_unsafe_durability, schema).await,
    }
}

/// Where a database's schema stands against a binary's migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaState {
    /// No migration applied (a new database).
    New,
    Current,
    /// The lowest migration of the binary not applied.
    Behind(i64),
    /// A migration applied that the binary does not know (a newer one).
    Ahead(i64),
    /// A migration applied with other contents than the binary's.
    Altered(i64),
}

async fn schema_state(
    conn: &mut sqlx::AnyConnection,
    migrator: &sqlx::migrate::Migrator,
) -> Result<SchemaState, StoreError> {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await
        {
            Ok(rows) => rows,
            // No such table (PostgreSQL's 42P01, SQLite's message): nothing
            // was ever applied. Any other failure is one.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42P01")
                    || e.message().contains("no such table") =>
            {
                Vec::new()
            }
            Err(error) => return Err(StoreError::from_sqlx(error)),
        };
    if applied.is_empty() {
        return Ok(SchemaState::New);
    }
    let known: Vec<_> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .collect();
    for (version, checksum) in &applied {
        match known.iter().find(|m| m.version == *version) {
            None => return Ok(SchemaState::Ahead(*version)),
            Some(m) if m.checksum.as_ref() != checksum.as_slice() => {
                return Ok(SchemaState::Altered(*version));
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.iter().any(|(applied, _)| applied == v))
        .min()
        .map_or(SchemaState::Current, SchemaState::Behind))
}

/// Whether opening under `schema` must apply `migrator`'s migrations:
/// `true` to migrate, `false` for a schema that is this binary's exactly,
/// an error for one that must not be used as it is.
pub(crate) async fn needs_migrating(
    conn: &mut sqlx::AnyConnection,
    migrator: &sqlx::migrate::Migrator,
    schema: Schema,
) -> Result<bool, StoreError> {
    if schema == Schema::Migrate {
        return Ok(true);
    }
    let first = || migrator.iter().map(|m| m.version).min().unwrap_or(1);
    match schema_state(conn, migrator).await? {
        SchemaState::New if schema == Schema::MigrateIfNew => Ok(true),
        SchemaState::Current => Ok(false),
        SchemaState::New => Err(StoreError::SchemaBehind { version: first() }),
        SchemaState::Behind(version) => Err(StoreError::SchemaBehind { version }),
        SchemaState::Ahead(version) => Err(StoreError::SchemaAhead { version }),
        SchemaState::Altered(version) => Err(StoreError::SchemaAltered { version }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in [
            "5", "6", "517", "262", "8", "1032", "10", "3338", "13", "14", "08006", "57P01",
            "57014", "53300", "58030", "40001", "40P01", "55P03", "25006", "25P03",
        ] {
            assert!(transient(code), "{code}");
        }
        for code in ["19", "2067", "23505", "42P01", "P0001", "22001"] {
            assert!(!transient(code), "{code}");
        }
    }
}
