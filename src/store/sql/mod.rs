//! The SQL engine behind both databases: one implementation of [`Store`]
//! over sqlx's `Any` driver, so every query, every row mapping and every
//! invariant lives once. What differs between SQLite and PostgreSQL —
//! connecting and its durability settings, how a writer serializes with
//! other writers (and other processes), the catalogue queries of the audit,
//! and what a purge must do afterwards — is behind [`Engine`], implemented
//! in `store/sqlite.rs` and `store/postgres.rs`.
//!
//! SQL here is written in the dialect both engines share: `$N` parameters,
//! `ON CONFLICT`, window functions, integers for flags (0/1) and text for
//! timestamps (RFC 3339 UTC, which sorts as time).

mod audit;
pub use audit::REDISPATCH_TOLERANCE_SECONDS;
pub mod order_rows;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};
use uuid::Uuid;

use super::rows::{
    AuditBatch, AuditKeyRow, ClearRow, CommitOutcome, ConsentStats, Dispatch, DispatchOutcome,
    KeyRecord, NewOrder, OrderCheck, OrderSeal, OrderSummary, ShipToRow, ShipmentEntry,
    ShipmentRow, ShipmentStatus, StoredResponse, Totals,
};
use super::{Store, StoreError, postgres, postgres_orders, sqlite, sqlite_orders};
use crate::audit::access_log::{ChainedEntry, Chainer, Entry, GENESIS, Head, Outcome};
use crate::crypto::envelope::Envelope;
use crate::domain::consent::{Basis, ConsentTag, Purposes, Subject};

/// Which database is behind the pool, and everything that differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// What a write transaction must be ordered against. SQLite has one writer
/// at a time anyway (`BEGIN IMMEDIATE`); PostgreSQL takes a transaction
/// advisory lock per chain, so that across processes each chain has
/// exactly one appender. (Orders are ordered the same way by their own
/// writer, `postgres_orders`: a cursor never skips an order that commits
/// late.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOrder {
    /// The access-log chain head.
    AccessLog,
    /// The withdrawal ledger head.
    ConsentEvents,
    /// Anything else (rows are guarded by their own conditions).
    Unordered,
}

impl Engine {
    /// Begins a write transaction ordered by `order`.
    pub async fn begin_write(
        self,
        writer: &Writer,
        order: WriteOrder,
    ) -> Result<WriteTx, StoreError> {
        // The wait for the write gate, a pooled connection, the write lock
        // and (PostgreSQL) the sequence's advisory lock: the metric
        // "database waits".
        let started = std::time::Instant::now();
        let gate = writer.pass().await;
        let tx = match self {
            Engine::Sqlite => sqlite::begin_write(&writer.pool).await,
            Engine::Postgres => postgres::begin_write(&writer.pool, order).await,
        };
        crate::telemetry::pool_wait(started.elapsed());
        Ok(WriteTx {
            tx: tx?,
            _gate: gate,
        })
    }
}

/// Where writes go: the writing pool and, for SQLite, the gate that every
/// writer of this process passes in turn.
///
/// SQLite has one writer at a time, and this process has two writing
/// connections: sqlx's (dispatches, the access log, withdrawals, keys,
/// purges) and the order writer's (`store/sqlite_orders.rs`). SQLite's own
/// busy handler only polls (sleeping up to 100 ms between tries), so under
/// sustained order load — the order writer begins its next batch
/// microseconds after each commit — a waiting access-log append could
/// starve for seconds. The gate is a fair (first come, first served) lock
/// that each writes behind; SQLite's lock then only arbitrates between
/// processes (`checkoutd` CLI commands next to the server).
pub struct Writer {
    pool: AnyPool,
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Writer {
    /// The gate of this writer (for the order writer to share).
    pub fn gate(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.gate.clone()
    }

    /// Waits for this writer's turn; held until the guard drops.
    pub async fn pass(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// A write transaction that holds its writer's turn until it ends.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// A [`Store`] over `Any` pools connected to SQLite or PostgreSQL.
pub struct SqlStore {
    /// Reads.
    pool: AnyPool,
    /// Writes. For SQLite one connection (SQLite has one writer at a time
    /// anyway) for everything but order batches, which the order writer
    /// commits; the two take turns through the writer's gate. For
    /// PostgreSQL the same pool as `pool`.
    writer: Writer,
    engine: Engine,
    /// The engine's order writer, which commits the group-commit batches;
    /// none in a read-only store, which takes no orders.
    orders: Option<OrderWriter>,
    /// The audit's queries over whole tables (totals, consent figures, the
    /// anti-joins): on PostgreSQL read-only sessions without the serving
    /// statement limit, which a large database would outlast at every
    /// report run; else `pool`.
    whole_table_reads: AnyPool,
    /// Bounds the reads that wait for the order commits in flight
    /// ([`Store::idempotency_key_settled`]): however many 422s arrive
    /// while a commit is slow, they hold at most this many of the pool's
    /// connections.
    settled_reads: Arc<tokio::sync::Semaphore>,
}

/// At most this many [`Store::idempotency_key_settled`] reads at once.
const SETTLED_READS: usize = 2;

/// How long such a read waits for the order commits in flight before it
/// gives up (a 503 "retry": the lock timeout is transient).
const SETTLED_WAIT: &str = "2s";

/// Each engine writes order batches its own fastest way, with the same
/// rows (`order_rows`): SQLite on a thread of its own over rusqlite,
/// PostgreSQL in one fixed statement of `unnest` INSERTs (its own
/// transaction) on the native driver.
pub(super) enum OrderWriter {
    Sqlite(sqlite_orders::OrderWriter),
    Postgres(postgres_orders::OrderWriter),
}

impl OrderWriter {
    async fn commit(&self, batch: Arc<[NewOrder]>) -> Result<Vec<CommitOutcome>, StoreError> {
        match self {
            OrderWriter::Sqlite(w) => w.commit(batch).await,
            OrderWriter::Postgres(w) => w.commit(&batch).await,
        }
    }

    fn is_running(&self) -> bool {
        match self {
            OrderWriter::Sqlite(w) => w.is_running(),
            OrderWriter::Postgres(w) => w.is_running(),
        }
    }

    async fn close(&self) {
        match self {
            OrderWriter::Sqlite(w) => w.close().await,
            OrderWriter::Postgres(w) => w.close().await,
        }
    }
}

impl SqlStore {
    /// `SELECT <every column of an access-log entry> FROM access_log`, as
    /// `chained_entry` reads them. Text read as bytes: one value that is
    /// not UTF-8 is a broken link in the chain, not an audit stopped (see
    /// `audit::bytes_of`).
    fn access_log_select(&self) -> String {
        let texts = [
            "at",
            "role",
            "cert_fingerprint",
            "origin_ip",
            "action",
            "objects",
            "outcome",
        ];
        let columns = [
            &["seq"][..],
            &texts,
            &["status", "prev_hash", "hash", "mac"],
        ]
        .concat();
        format!(
            "SELECT {} FROM access_log",
            audit::select_list(self.engine, &columns, &texts)
        )
    }

    pub(super) fn new(pool: AnyPool, writer: AnyPool, engine: Engine) -> Self {
        let gate = (engine == Engine::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        SqlStore {
            whole_table_reads: pool.clone(),
            pool,
            writer: Writer { pool: writer, gate },
            engine,
            orders: None,
            settled_reads: Arc::new(tokio::sync::Semaphore::new(SETTLED_READS)),
        }
    }

    /// Where the audit's whole-table queries run (see the field).
    pub(super) fn with_whole_table_reads(mut self, pool: AnyPool) -> Self {
        self.whole_table_reads = pool;
        self
    }

    /// The writer's gate, which the SQLite order writer passes too.
    pub(super) fn write_gate(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.writer.gate()
    }

    /// Commits order batches through `orders`.
    pub(super) fn with_order_writer(mut self, orders: OrderWriter) -> Self {
        self.orders = Some(orders);
        self
    }

    /// The pool, for this engine's own modules and tests.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The pool of the audit's whole-table reads (see the field), for
    /// tests.
    pub fn whole_table_pool(&self) -> &AnyPool {
        &self.whole_table_reads
    }

    /// Which database this is.
    pub fn engine(&self) -> Engine {
        self.engine
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        if self.orders.as_ref().is_some_and(|w| !w.is_running()) {
            return Err(StoreError::WriterStopped);
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::from_sqlx)
    }

    async fn close(&self) {
        // The order writer's queued batches first; then readers, so that
        // SQLite's final checkpoint finds none.
        if let Some(orders) = &self.orders {
            orders.close().await;
        }
        // A report run may hold one of these for a long query: the stop
        // does not wait for it (its connection goes with the process).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.whole_table_reads.close(),
        )
        .await;
        self.pool.close().await;
        if self.engine == Engine::Sqlite {
            sqlite::before_close(&self.writer.pool).await;
        }
        self.writer.pool.close().await;
    }

    async fn holds_records(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM orders LIMIT 1) AS o) \
                  + (SELECT count(*) FROM (SELECT 1 FROM access_log LIMIT 1) AS a) \
                  + (SELECT count(*) FROM (SELECT 1 FROM consent_events LIMIT 1) AS c) \
                  + (SELECT count(*) FROM (SELECT 1 FROM kek_retirements LIMIT 1) AS k)",
        )
        .fetch_one(&self.pool)
        .await
        .map(|n| n != 0)
        .map_err(StoreError::from_sqlx)
    }

    async fn commit_orders(
        &self,
        batch: Arc<[NewOrder]>,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        match &self.orders {
            Some(orders) => orders.commit(batch).await,
            // A read-only store has no order writer.
            None => Err(StoreError::WriterStopped),
        }
    }

    async fn order_exists(&self, order_id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&self.pool)
            .await
            .map(|n| n > 0)
            .map_err(StoreError::from_sqlx)
    }

    async fn idempotency_key(
        &self,
        client: &[u8; 32],
        key_hash: &[u8; 32],
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(KEY_RECORD)
            .bind(client.as_slice())
            .bind(key_hash.as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        row.as_ref().map(key_record).transpose()
    }

    async fn idempotency_key_settled(
        &self,
        client: &[u8; 32],
        key_hash: &[u8; 32],
    ) -> Result<Option<KeyRecord>, StoreError> {
        if self.engine != Engine::Postgres {
            return self.idempotency_key(client, key_hash).await;
        }
        // The wait and the read run on a task of their own, which owns
        // the turn and the connection until both statements are done: a
        // caller that stops waiting (its time limit, a client gone) must
        // not hand its turn on while its connection still waits.
        let turn = self
            .settled_reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Corrupt("the settled-read gate is closed"))?;
        let pool = self.pool.clone();
        let (client, key_hash) = (*client, *key_hash);
        let read = tokio::spawn(async move {
            let _turn = turn;
            // Every batch holds the orders' lock from its claim to its
            // commit or rollback. A shared hold of it, taken and let go in
            // one statement (its own implicit transaction, so no batch
            // ever queues behind it for longer), returns once those
            // running have ended; the read after it (a fresh snapshot,
            // READ COMMITTED) sees what they committed. The wait is
            // bounded by a lock timeout of its own, set first (the
            // subquery) for that statement's implicit transaction only.
            let mut conn = pool.acquire().await.map_err(StoreError::from_sqlx)?;
            sqlx::query(
                "SELECT pg_advisory_xact_lock_shared($1)::text
                   FROM (SELECT set_config('lock_timeout', $2, true)) AS bounded",
            )
            .bind(super::postgres::LOCK_ORDERS)
            .bind(SETTLED_WAIT)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
            let row = sqlx::query(KEY_RECORD)
                .bind(client.as_slice())
                .bind(key_hash.as_slice())
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?;
            row.as_ref().map(key_record).transpose()
        });
        match read.await {
            Ok(read) => read,
            // A panic is the task's own, not the database's: it goes on up.
            Err(stopped) if stopped.is_panic() => std::panic::resume_unwind(stopped.into_panic()),
            // Cancelled: the runtime is shutting down. Nothing was decided.
            Err(_) => Err(StoreError::WriterStopped),
        }
    }

    async fn idempotency_audit_page(
        &self,
        after: Option<(&[u8], &[u8])>,
        limit: u32,
    ) -> Result<Vec<AuditKeyRow>, StoreError> {
        audit::idempotency_page(&self.pool, self.engine, after, limit).await
    }

    async fn orders_without_key_row(&self, limit: u32) -> Result<(u64, Vec<String>), StoreError> {
        audit::orders_without_key_row(&self.whole_table_reads, limit).await
    }

    async fn rows_without_order(
        &self,
        limit: u32,
    ) -> Result<(u64, Vec<(&'static str, String)>), StoreError> {
        audit::rows_without_order(&self.whole_table_reads, limit).await
    }

    async fn orders_named_but_missing(
        &self,
        actions: &[&str],
        limit: u32,
    ) -> Result<(u64, Vec<(String, i64)>), StoreError> {
        audit::orders_named_but_missing(&self.whole_table_reads, self.engine, actions, limit).await
    }

    async fn dispatches_undone(
        &self,
        action: &str,
        limit: u32,
    ) -> Result<(u64, Vec<crate::store::rows::UndoneDispatch>), StoreError> {
        audit::dispatches_undone(&self.whole_table_reads, self.engine, action, limit).await
    }

    async fn purges_unrecorded(
        &self,
        action: &str,
        limit: u32,
    ) -> Result<(u64, Vec<crate::store::rows::UnrecordedPurge>), StoreError> {
        audit::purges_unrecorded(&self.whole_table_reads, self.engine, action, limit).await
    }

    async fn dispatches_unlogged(
        &self,
        action: &str,
        before: &str,
        limit: u32,
    ) -> Result<(u64, Vec<String>), StoreError> {
        audit::dispatches_unlogged(&self.whole_table_reads, action, before, limit).await
    }

    async fn order_check(&self, id: Uuid) -> Result<Option<OrderCheck>, StoreError> {
        let row = sqlx::query(
            "SELECT created_at, status, storefront_ref, currency, items, total_minor, gift,
                    consent_tag_id, client_fingerprint, mac AS order_mac, dispatch_mac,
                    carrier, tracking, dispatched_at
               FROM orders WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        row.as_ref().map(order_check_of).transpose()
    }

    async fn order_summary(
        &self,
        client: &[u8; 32],
        id: Uuid,
    ) -> Result<Option<OrderSummary>, StoreError> {
        let row = sqlx::query(
            "SELECT o.id, o.created_at, o.status, o.storefront_ref, o.currency, o.items, o.total_minor,
                    o.gift, o.consent_tag_id, o.client_fingerprint, o.mac AS order_mac, o.dispatch_mac,
                    o.carrier, o.tracking, o.dispatched_at, c.brand, c.last4,
                    t.id AS tag_id, t.order_id AS tag_order_id, t.subject, t.basis, t.product_updates,
                    t.new_offerings, t.partnerships, t.special_offers, t.third_party_sharing,
                    t.policy_version, t.captured_at, t.channel, t.mac_key_version, t.mac
               FROM orders o
               LEFT JOIN payment_cards c ON c.order_id = o.id
               JOIN consent_tags t ON t.id = o.consent_tag_id
              WHERE o.id = $1 AND o.client_fingerprint = $2",
        )
        .bind(id.to_string())
        .bind(client.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        let get_s = |name: &'static str| {
            row.try_get::<String, _>(name)
                .map_err(StoreError::from_sqlx)
        };
        let items: String = get_s("items")?;
        Ok(Some(OrderSummary {
            seal: order_seal(&row)?,
            id: uuid_col(&row, "id")?,
            created_at: get_s("created_at")?,
            status: get_s("status")?,
            storefront_ref: row
                .try_get("storefront_ref")
                .map_err(StoreError::from_sqlx)?,
            currency: get_s("currency")?,
            items: serde_json::from_str(&items).map_err(|_| StoreError::Corrupt("orders.items"))?,
            total_minor: row.try_get("total_minor").map_err(StoreError::from_sqlx)?,
            gift: row
                .try_get::<i64, _>("gift")
                .map_err(StoreError::from_sqlx)?
                != 0,
            brand: row.try_get("brand").map_err(StoreError::from_sqlx)?,
            last4: row.try_get("last4").map_err(StoreError::from_sqlx)?,
            consent: consent_tag(&row, "tag_id", "tag_order_id")?,
            dispatch: dispatch_of(&row)?,
        }))
    }

    async fn shipments(
        &self,
        status: ShipmentStatus,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ShipmentEntry>, StoreError> {
        // Only shipping and recipient envelopes are selected: billing and
        // card columns never leave the database on this path. Orders whose
        // records were purged are listed too (their ship-to `Missing`), so
        // the warehouse is told rather than the order silently vanishing.
        let page =
            format!("{SHIPMENT_ROWS} WHERE o.status = $1 AND o.seq > $2 ORDER BY o.seq LIMIT $3");
        let fetched = sqlx::query(&page)
            .bind(status.order_status())
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await;
        match fetched {
            Ok(rows) => rows.iter().map(shipment_entry).collect(),
            Err(error) if is_decode(&error) => {
                self.shipments_row_by_row(status, after_seq, limit).await
            }
            Err(error) => Err(StoreError::from_sqlx(error)),
        }
    }

    async fn dispatch(
        &self,
        order_id: Uuid,
        checked: &OrderCheck,
        new: &super::rows::NewDispatch,
    ) -> Result<DispatchOutcome, StoreError> {
        // One conditional update decides: of two concurrent dispatches (in
        // any process) exactly one finds the order still 'accepted'. It is
        // also a compare-and-swap on every column the caller checked: a
        // row edited between the check and this update (items, gift flag,
        // its tag, a dispatch fact) matches no longer and is not shipped.
        // (PostgreSQL re-evaluates the condition on the row's newest
        // version when it waits for a concurrent writer of it.)
        if checked.status != "accepted" || checked.seal.any_dispatch_fact {
            return self.not_dispatched(order_id, checked).await;
        }
        let gate = self.writer.pass().await;
        // An order whose ship-to was purged has nowhere to go: its shipping
        // record, and for a gift the recipient's record, must be there.
        // PostgreSQL reads the shipping record locked (KEY SHARE: a purge's
        // DELETE conflicts with it, a rewrap's UPDATE does not): a purge deleting it
        // in a transaction still open is waited for (and then it is gone),
        // not read past from the statement's snapshot — else the order
        // would be dispatched with its ship-to erased. (SQLite has one
        // writer at a time.) Only that one row is locked: a purge deletes
        // the shipping record before the recipient's, so a dispatch holding
        // a lock on the recipient's while it waits for the shipping record
        // would deadlock with it. Every purge of an undispatched order's
        // ship-to takes the shipping record first: an operator's in the
        // same transaction, retention's undispatched rules in an earlier
        // one (and each of those only while the order, locked, is still
        // undispatched: `PurgeIf::Undispatched`); after dispatch,
        // retention takes the recipient's alone.
        let lock = match self.engine {
            Engine::Postgres => " FOR KEY SHARE",
            Engine::Sqlite => "",
        };
        let seal = &checked.seal;
        let sql = format!(
            "UPDATE orders SET status = 'dispatched', carrier = $2, tracking = $3, dispatched_at = $4,
                    dispatch_mac = $5
              WHERE id = $1 AND status = 'accepted' AND dispatch_mac IS NULL
                AND carrier IS NULL AND tracking IS NULL AND dispatched_at IS NULL
                AND created_at = $6 AND storefront_ref IS NOT DISTINCT FROM $7 AND currency = $8
                AND items = $9 AND total_minor = $10 AND gift = $11 AND consent_tag_id = $12
                AND client_fingerprint = $13 AND mac = $14
                AND (gift = 0 OR EXISTS (SELECT 1 FROM gift_recipients g WHERE g.order_id = $1))
                AND EXISTS (SELECT 1 FROM shipping_details s WHERE s.order_id = $1{lock})"
        );
        let update = sqlx::query(&sql)
            .bind(order_id.to_string())
            .bind(&new.dispatch.carrier)
            .bind(&new.dispatch.tracking)
            .bind(&new.dispatch.dispatched_at)
            .bind(new.mac.as_slice())
            .bind(&checked.created_at)
            .bind(seal.storefront_ref.as_deref())
            .bind(&seal.currency)
            .bind(&seal.items_json)
            .bind(seal.total_minor)
            .bind(i64::from(seal.gift))
            .bind(&seal.consent_tag_id)
            .bind(seal.client_fingerprint.as_slice())
            .bind(seal.mac.as_slice());
        let updated = match self.engine {
            // The order row first, as a purge of an undispatched order
            // takes it (`PurgeIf::Undispatched`): the two are serialised
            // on it, never deadlocked, and the update — a statement of its
            // own, after the wait — reads the records as the purge left
            // them, not from a snapshot taken before it committed.
            Engine::Postgres => {
                let mut tx = self
                    .writer
                    .pool
                    .begin()
                    .await
                    .map_err(StoreError::from_sqlx)?;
                sqlx::query("SELECT id FROM orders WHERE id = $1 FOR NO KEY UPDATE")
                    .bind(order_id.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let updated = update
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .rows_affected();
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                updated
            }
            Engine::Sqlite => update
                .execute(&self.writer.pool)
                .await
                .map_err(StoreError::from_sqlx)?
                .rows_affected(),
        };
        drop(gate);
        if updated == 1 {
            return Ok(DispatchOutcome::Dispatched(new.dispatch.clone()));
        }
        self.not_dispatched(order_id, checked).await
    }

    async fn append_access_log(
        &self,
        entries: &[Entry],
        chainer: &Chainer<'_>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut tx = self
            .engine
            .begin_write(&self.writer, WriteOrder::AccessLog)
            .await?;
        let head = sqlx::query("SELECT seq, hash FROM access_log_head WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        let (mut seq, mut prev) = match head {
            None => (0u64, GENESIS),
            Some(row) => (
                u64::try_from(
                    row.try_get::<i64, _>("seq")
                        .map_err(StoreError::from_sqlx)?,
                )
                .map_err(|_| StoreError::Corrupt("access_log_head.seq"))?,
                blob32(&row, "access_log_head.hash")?,
            ),
        };
        let mut seqs = Vec::with_capacity(entries.len());
        for entry in entries {
            seq += 1;
            let (hash, mac) = chainer.link(seq, &prev, entry);
            sqlx::query(
                "INSERT INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action, objects,
                    outcome, status, prev_hash, hash, mac)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(i64::try_from(seq).map_err(|_| StoreError::Corrupt("access_log.seq"))?)
            .bind(&entry.at)
            .bind(&entry.role)
            .bind(&entry.cert_fingerprint)
            .bind(&entry.origin_ip)
            .bind(&entry.action)
            .bind(entry.objects_json())
            .bind(entry.outcome.as_str())
            .bind(i64::from(entry.status))
            .bind(prev.as_slice())
            .bind(hash.as_slice())
            .bind(mac.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            prev = hash;
            seqs.push(seq);
        }
        let head_seq = i64::try_from(seq).map_err(|_| StoreError::Corrupt("access_log.seq"))?;
        sqlx::query(
            "INSERT INTO access_log_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
        )
        .bind(head_seq)
        .bind(prev.as_slice())
        .bind(chainer.head_mac(seq, &prev).as_slice())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(seqs)
    }

    async fn access_log_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChainedEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "{} WHERE seq > $1 ORDER BY seq LIMIT $2",
            self.access_log_select()
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter().map(chained_entry).collect()
    }

    async fn audit_batch(
        &self,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<AuditBatch, StoreError> {
        audit::batch(
            &self.pool,
            self.engine,
            audit::Selector::After {
                seq: after_seq,
                limit,
            },
        )
        .await
    }

    async fn audit_order(&self, order_id: &str) -> Result<AuditBatch, StoreError> {
        audit::batch(&self.pool, self.engine, audit::Selector::One(order_id)).await
    }

    async fn guard_findings(&self) -> Result<Vec<super::guards::GuardFinding>, StoreError> {
        let (pinned, seen) = match self.engine {
            Engine::Sqlite => (super::guards::SQLITE, sqlite::guards(&self.pool).await?),
            Engine::Postgres => {
                let pinned = super::guards::POSTGRES;
                let tables = super::guards::tables(pinned);
                (pinned, postgres::guards(&self.pool, &tables).await?)
            }
        };
        Ok(super::guards::compare(pinned, &seen))
    }

    async fn schema(&self) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
        audit::schema(&self.pool, self.engine).await
    }

    async fn clear_rows(
        &self,
        table: &str,
        columns: &[String],
        after_rowid: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ClearRow>, StoreError> {
        audit::clear_rows(&self.pool, self.engine, table, columns, after_rowid, limit).await
    }

    async fn totals(&self) -> Result<Totals, StoreError> {
        audit::totals(&self.whole_table_reads).await
    }

    async fn consent_stats(&self) -> Result<ConsentStats, StoreError> {
        audit::consent_stats(&self.whole_table_reads, self.engine).await
    }

    async fn append_consent_event(
        &self,
        event: super::rows::ConsentEventRow,
        sealer: &crate::consent::EventSealer<'_>,
    ) -> Result<(), StoreError> {
        audit::append_consent_event(&self.writer, self.engine, event, sealer).await
    }

    async fn consent_events_head(&self) -> Result<Option<(i64, Vec<u8>, Vec<u8>)>, StoreError> {
        audit::consent_events_head(&self.pool).await
    }

    async fn consent_events_up_to(&self, seq: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM consent_events WHERE seq BETWEEN 1 AND $1")
            .bind(seq)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)
    }

    async fn consent_events_lowest(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT min(seq) FROM consent_events")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)
    }

    async fn audience(
        &self,
        purpose: &'static str,
        after: &[u8],
        subjects: u32,
    ) -> Result<super::rows::AudienceChunk, StoreError> {
        audit::audience(&self.pool, self.engine, purpose, after, subjects).await
    }

    async fn kek_retired(
        &self,
        class: crate::crypto::DataClass,
        version: u32,
    ) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM kek_retirements WHERE class = $1 AND version = $2",
        )
        .bind(class.as_str())
        .bind(i64::from(version))
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(n > 0)
    }

    async fn access_log_of(
        &self,
        action: &str,
        after: i64,
        through: i64,
    ) -> Result<Vec<ChainedEntry>, StoreError> {
        let rows = sqlx::query(&format!(
            "{} WHERE seq > $1 AND seq <= $2 AND action = $3 ORDER BY seq",
            self.access_log_select()
        ))
        .bind(after)
        .bind(through)
        .bind(action)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        rows.iter().map(chained_entry).collect()
    }

    async fn kek_highest_retired(
        &self,
        class: crate::crypto::DataClass,
    ) -> Result<u32, StoreError> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM kek_retirements WHERE class = $1")
                .bind(class.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        Ok(n.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
    }

    async fn retire_keks(
        &self,
        retired: &[(crate::crypto::DataClass, u32)],
        at: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .engine
            .begin_write(&self.writer, WriteOrder::Unordered)
            .await?;
        if self.engine == Engine::Postgres {
            // The database's guard against rows under a retired version
            // reads `kek_retirements` at the end of each statement, taking
            // no lock: an order batch, a withdrawal or a rewrap batch past
            // its guard but not yet committed would land after the
            // retirement. Each holds its lock to its commit (a rewrap batch
            // shares its own), so taking all three here (in this order;
            // nothing takes two of them the other way round) waits for
            // those in flight, and later ones see the retirement.
            for lock in [
                super::postgres::LOCK_ORDERS,
                super::postgres::LOCK_CONSENT_EVENTS,
                super::postgres::LOCK_REWRAP,
            ] {
                sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
                    .bind(lock)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
            }
        }
        for (class, version) in retired {
            sqlx::query("INSERT INTO kek_retirements (class, version, retired_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(class.as_str())
                .bind(i64::from(*version))
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
        }
        tx.commit().await.map_err(StoreError::from_sqlx)
    }

    async fn kek_usage(
        &self,
        class: crate::crypto::DataClass,
    ) -> Result<std::collections::BTreeMap<u32, u64>, StoreError> {
        audit::kek_usage(&self.pool, class).await
    }

    async fn envelopes_to_rewrap(
        &self,
        class: crate::crypto::DataClass,
        from: &[u32],
        limit: u32,
    ) -> Result<Vec<super::rows::RewrapItem>, StoreError> {
        audit::envelopes_to_rewrap(&self.pool, class, from, limit).await
    }

    async fn apply_rewrap(
        &self,
        items: &[(super::rows::RewrapItem, u32, Vec<u8>)],
    ) -> Result<u64, StoreError> {
        audit::apply_rewrap(&self.writer, self.engine, items).await
    }

    async fn purge(
        &self,
        order_id: &str,
        purges: &[super::rows::PurgeRow],
        condition: &super::rows::PurgeIf,
    ) -> Result<Vec<String>, StoreError> {
        audit::purge(&self.writer, self.engine, order_id, purges, condition).await
    }

    async fn replayable_keys(
        &self,
        due: super::rows::KeysDue<'_>,
        limit: u32,
    ) -> Result<Vec<AuditKeyRow>, StoreError> {
        audit::replayable_keys(&self.pool, self.engine, due, limit).await
    }

    async fn retire_request_hashes(
        &self,
        rows: &[super::rows::RetiredRequestHash],
    ) -> Result<u64, StoreError> {
        audit::retire_request_hashes(&self.writer, self.engine, rows).await
    }

    async fn after_purge(&self) -> Result<(), StoreError> {
        audit::after_purge(&self.writer, self.engine).await
    }

    async fn due_for_retention(
        &self,
        classes: &[crate::crypto::DataClass],
        clock: crate::retention::Clock,
        before: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        audit::due_for_retention(&self.pool, classes, clock, before, limit).await
    }

    async fn contact_subject(&self, order_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT email_blind_index FROM contact_emails WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)
    }

    async fn place_hold(
        &self,
        hold: &super::rows::HoldRow,
    ) -> Result<super::rows::HoldPlaced, StoreError> {
        audit::place_hold(&self.writer, self.engine, hold).await
    }

    async fn release_hold(
        &self,
        order_id: &str,
    ) -> Result<Option<super::rows::HoldRow>, StoreError> {
        audit::release_hold(&self.writer, self.engine, order_id).await
    }

    async fn entries_naming_one_order(
        &self,
        actions: &[&str],
    ) -> Result<Vec<super::rows::OrderEntry>, StoreError> {
        audit::entries_naming_one_order(&self.whole_table_reads, self.engine, actions).await
    }

    async fn holds(&self) -> Result<Vec<super::rows::HoldRow>, StoreError> {
        audit::holds(&self.pool, self.engine).await
    }

    async fn purges_of(
        &self,
        order_ids: &[String],
    ) -> Result<Vec<super::rows::PurgeRow>, StoreError> {
        audit::purges_of(&self.pool, self.engine, order_ids).await
    }

    async fn consent_events_page(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, super::rows::ConsentEventRow)>, StoreError> {
        audit::consent_events_page(&self.pool, self.engine, after, limit).await
    }

    async fn consent_history(
        &self,
        email_blind_index: &[u8],
    ) -> Result<super::rows::ConsentHistory, StoreError> {
        audit::consent_history(&self.pool, email_blind_index).await
    }

    async fn access_log_lowest(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT min(seq) FROM access_log")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)
    }

    async fn access_log_head(&self) -> Result<Option<Head>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, mac FROM access_log_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Head {
            seq: u64::try_from(
                row.try_get::<i64, _>("seq")
                    .map_err(StoreError::from_sqlx)?,
            )
            .map_err(|_| StoreError::Corrupt("access_log_head.seq"))?,
            hash: blob32(&row, "access_log_head.hash")?,
            mac: blob32(&row, "access_log_head.mac")?,
        }))
    }
}

/// The 32-byte column `table.column` (so named when it is not 32 bytes).
fn blob32(row: &AnyRow, table_column: &'static str) -> Result<[u8; 32], StoreError> {
    let column = table_column
        .split_once('.')
        .map_or(table_column, |(_, column)| column);
    let v: Vec<u8> = row.try_get(column).map_err(StoreError::from_sqlx)?;
    v.try_into().map_err(|_| StoreError::Corrupt(table_column))
}

fn chained_entry(row: &AnyRow) -> Result<ChainedEntry, StoreError> {
    let text = |name: &'static str| audit::text(row, name);
    // A field this service never writes is named (by the chain check and to
    // the auditor reading the page), not a failed read.
    let mut damaged = None;
    let stored = text("objects")?;
    let objects: Vec<String> = serde_json::from_str(&stored).unwrap_or_else(|_| {
        damaged = Some("objects is not a JSON list of strings (edited)");
        Vec::new()
    });
    // The chain hashes the list as this service writes it; the same list
    // written otherwise (`[ "id" ]`) would verify yet slip past checks that
    // read the stored text (a dispatch's entry, for one).
    if damaged.is_none() && serde_json::to_string(&objects).ok().as_deref() != Some(&stored) {
        damaged = Some("objects is not written as this service writes it (edited)");
    }
    let outcome = Outcome::parse(&text("outcome")?).unwrap_or_else(|| {
        damaged = Some("outcome is neither allowed nor denied (edited)");
        Outcome::Denied
    });
    Ok(ChainedEntry {
        seq: u64::try_from(
            row.try_get::<i64, _>("seq")
                .map_err(StoreError::from_sqlx)?,
        )
        .map_err(|_| StoreError::Corrupt("access_log.seq"))?,
        entry: Entry {
            at: text("at")?,
            role: text("role")?,
            cert_fingerprint: text("cert_fingerprint")?,
            origin_ip: text("origin_ip")?,
            action: text("action")?,
            objects,
            outcome,
            status: u16::try_from(
                row.try_get::<i64, _>("status")
                    .map_err(StoreError::from_sqlx)?,
            )
            .map_err(|_| StoreError::Corrupt("access_log.status"))?,
        },
        prev_hash: blob32(row, "access_log.prev_hash")?,
        hash: blob32(row, "access_log.hash")?,
        mac: blob32(row, "access_log.mac")?,
        damaged,
    })
}

/// An order row's MAC-covered columns (`storefront_ref`, `currency`,
/// `items`, `total_minor`, `gift`, `consent_tag_id`, `client_fingerprint`),
/// its MACs (`order_mac`, `dispatch_mac`) and whether it has any dispatch
/// fact (`carrier`, `tracking`, `dispatched_at`), as stored.
fn order_seal(row: &AnyRow) -> Result<OrderSeal, StoreError> {
    Ok(OrderSeal {
        storefront_ref: row
            .try_get("storefront_ref")
            .map_err(StoreError::from_sqlx)?,
        currency: row.try_get("currency").map_err(StoreError::from_sqlx)?,
        items_json: row.try_get("items").map_err(StoreError::from_sqlx)?,
        total_minor: row.try_get("total_minor").map_err(StoreError::from_sqlx)?,
        gift: row
            .try_get::<i64, _>("gift")
            .map_err(StoreError::from_sqlx)?
            != 0,
        consent_tag_id: row
            .try_get("consent_tag_id")
            .map_err(StoreError::from_sqlx)?,
        client_fingerprint: row
            .try_get("client_fingerprint")
            .map_err(StoreError::from_sqlx)?,
        mac: row.try_get("order_mac").map_err(StoreError::from_sqlx)?,
        dispatch_mac: row.try_get("dispatch_mac").map_err(StoreError::from_sqlx)?,
        any_dispatch_fact: ["carrier", "tracking", "dispatched_at"]
            .into_iter()
            .map(|name| row.try_get::<Option<String>, _>(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from_sqlx)?
            .iter()
            .any(Option::is_some),
    })
}

fn order_check_of(row: &AnyRow) -> Result<OrderCheck, StoreError> {
    Ok(OrderCheck {
        created_at: row.try_get("created_at").map_err(StoreError::from_sqlx)?,
        status: row.try_get("status").map_err(StoreError::from_sqlx)?,
        seal: order_seal(row)?,
        dispatch: dispatch_of(row)?,
    })
}

fn dispatch_of(row: &AnyRow) -> Result<Option<Dispatch>, StoreError> {
    let get = |name: &'static str| {
        row.try_get::<Option<String>, _>(name)
            .map_err(StoreError::from_sqlx)
    };
    Ok(
        match (get("carrier")?, get("tracking")?, get("dispatched_at")?) {
            (Some(carrier), Some(tracking), Some(dispatched_at)) => Some(Dispatch {
                carrier,
                tracking,
                dispatched_at,
            }),
            _ => None,
        },
    )
}

/// What four envelope columns of a row hold.
pub(super) enum EnvelopeColumns {
    Sealed(Envelope),
    /// All four NULL (a gift's shipping marker, an event without reference).
    Empty,
    /// Some NULL, or a version out of range: the row was damaged.
    Damaged(&'static str),
}

/// Reads the envelope in columns `[format_version, kek_version,
/// wrapped_dek, ciphertext]` (by these names in the query). The one place
/// that decides what a partly empty envelope means.
pub(super) fn read_envelope(row: &AnyRow, names: [&str; 4]) -> Result<EnvelopeColumns, StoreError> {
    let e = StoreError::from_sqlx;
    let fmt: Option<i64> = row.try_get(names[0]).map_err(e)?;
    let kek: Option<i64> = row.try_get(names[1]).map_err(e)?;
    let dek: Option<Vec<u8>> = row.try_get(names[2]).map_err(e)?;
    let ct: Option<Vec<u8>> = row.try_get(names[3]).map_err(e)?;
    Ok(match (fmt, kek, dek, ct) {
        (None, None, None, None) => EnvelopeColumns::Empty,
        (Some(fmt), Some(kek), Some(wrapped_dek), Some(ciphertext)) => {
            match (u8::try_from(fmt), u32::try_from(kek)) {
                (Ok(format_version), Ok(kek_version)) => EnvelopeColumns::Sealed(Envelope {
                    format_version,
                    kek_version,
                    wrapped_dek,
                    ciphertext,
                }),
                _ => EnvelopeColumns::Damaged("format_version or kek_version is out of range"),
            }
        }
        _ => EnvelopeColumns::Damaged("envelope columns are partly empty"),
    })
}

/// A prefixed envelope of a join (`s_fmt`, `s_kek`, `s_dek`, `s_ct`); a
/// damaged one is an error.
fn envelope_cols(row: &AnyRow, prefix: &str) -> Result<Option<Envelope>, StoreError> {
    let [f, k, d, c] = ["fmt", "kek", "dek", "ct"].map(|n| format!("{prefix}_{n}"));
    match read_envelope(row, [&f, &k, &d, &c])? {
        EnvelopeColumns::Sealed(e) => Ok(Some(e)),
        EnvelopeColumns::Empty => Ok(None),
        EnvelopeColumns::Damaged(what) => Err(StoreError::Corrupt(what)),
    }
}

/// A row of the shipments query, whole or damaged (see [`ShipmentEntry`]).
/// Only the connection failing is an error: the row is already here.
/// The shipments listing's columns and joins; each caller adds its WHERE.
/// Only shipping and recipient envelopes are selected: billing and card
/// columns never leave the database on this path (the billing record's
/// blind index alone, to find the customer's consent). Orders whose records
/// were purged are listed too (their ship-to `Missing`), so the warehouse
/// is told rather than the order silently vanishing.
const SHIPMENT_ROWS: &str = "SELECT o.seq, o.id, o.created_at, o.status, o.items, o.gift, o.carrier, o.tracking, o.dispatched_at,
        o.storefront_ref, o.currency, o.total_minor, o.consent_tag_id, o.client_fingerprint,
        o.mac AS order_mac, o.dispatch_mac,
        s.ship_to, s.id AS ship_id, s.format_version AS s_fmt, s.kek_version AS s_kek,
        s.wrapped_dek AS s_dek, s.ciphertext AS s_ct,
        g.id AS gift_id, g.format_version AS g_fmt, g.kek_version AS g_kek,
        g.wrapped_dek AS g_dek, g.ciphertext AS g_ct,
        t.id AS tag_id, t.order_id AS tag_order_id, t.subject, t.basis, t.product_updates,
        t.new_offerings, t.partnerships, t.special_offers, t.third_party_sharing,
        t.policy_version, t.captured_at, t.channel, t.mac_key_version, t.mac,
        b.email_blind_index
   FROM orders o
   JOIN consent_tags t ON t.id = o.consent_tag_id
   LEFT JOIN shipping_details s ON s.order_id = o.id
   LEFT JOIN billing_details b ON b.order_id = o.id
   LEFT JOIN gift_recipients g ON g.order_id = o.id";

/// A value the driver could not decode: sqlx's `Any` rows decode every
/// column as a row is read, so one text column that is not UTF-8 (SQLite
/// stores whatever bytes it is given) fails the whole fetch.
fn is_decode(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. }
    )
}

impl SqlStore {
    /// Why a dispatch of an order checked as `checked` wrote nothing: the
    /// row as it reads now.
    async fn not_dispatched(
        &self,
        order_id: Uuid,
        checked: &OrderCheck,
    ) -> Result<DispatchOutcome, StoreError> {
        let now = match self.order_check(order_id).await {
            Ok(None) => return Ok(DispatchOutcome::NotFound),
            Ok(Some(now)) => now,
            Err(error) if error.is_unreadable_row() => return Ok(DispatchOutcome::Changed),
            Err(error) => return Err(error),
        };
        Ok(if now.dispatch.is_some() {
            DispatchOutcome::AlreadyDispatched(Box::new(now))
        } else if now != *checked {
            DispatchOutcome::Changed
        } else if now.status == "accepted" && !now.seal.any_dispatch_fact {
            // Still the row checked: the ship-to is missing — or it is
            // there, and the row changed and came back, or holds a value
            // the update's comparison does not take (a gift flag other
            // than 0 or 1 where its CHECK was switched off).
            let ship_to: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM orders o
                  WHERE o.id = $1
                    AND EXISTS (SELECT 1 FROM shipping_details s WHERE s.order_id = o.id)
                    AND (o.gift = 0 OR EXISTS (SELECT 1 FROM gift_recipients g WHERE g.order_id = o.id))",
            )
            .bind(order_id.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
            if ship_to == 0 {
                DispatchOutcome::NoShipTo
            } else {
                DispatchOutcome::Changed
            }
        } else {
            // Not accepted, yet no complete dispatch: the caller's check
            // refuses such a row before it gets here.
            DispatchOutcome::Changed
        })
    }

    /// The shipments page read again one order at a time, after the whole
    /// page failed to decode: the order that does not read is a damaged
    /// entry (named by its id if that reads), the others are listed, and
    /// the queue moves past it instead of failing for good.
    async fn shipments_row_by_row(
        &self,
        status: ShipmentStatus,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ShipmentEntry>, StoreError> {
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT o.seq FROM orders o JOIN consent_tags t ON t.id = o.consent_tag_id
              WHERE o.status = $1 AND o.seq > $2 ORDER BY o.seq LIMIT $3",
        )
        .bind(status.order_status())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        let one = format!("{SHIPMENT_ROWS} WHERE o.seq = $1");
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match sqlx::query(&one).bind(seq).fetch_optional(&self.pool).await {
                Ok(Some(row)) => entries.push(shipment_entry(&row)?),
                Ok(None) => {}
                Err(error) if is_decode(&error) => {
                    let text = |column: &'static str| {
                        let sql = format!("SELECT {column} FROM orders WHERE seq = $1");
                        async move {
                            sqlx::query_scalar::<_, String>(&sql)
                                .bind(seq)
                                .fetch_one(&self.pool)
                                .await
                                .ok()
                        }
                    };
                    entries.push(ShipmentEntry::Damaged {
                        seq,
                        order_id: text("id").await.and_then(|id| Uuid::parse_str(&id).ok()),
                        created_at: text("created_at").await.unwrap_or_default(),
                        status: status.order_status().to_owned(),
                        what: "a column does not read",
                    });
                }
                Err(error) => return Err(StoreError::from_sqlx(error)),
            }
        }
        Ok(entries)
    }
}

fn shipment_entry(row: &AnyRow) -> Result<ShipmentEntry, StoreError> {
    match shipment_row(row) {
        Ok(whole) => Ok(ShipmentEntry::Whole(Box::new(whole))),
        Err(error @ StoreError::Unavailable(_)) => Err(error),
        Err(error) => Ok(ShipmentEntry::Damaged {
            seq: row.try_get("seq").map_err(StoreError::from_sqlx)?,
            order_id: uuid_col(row, "id").ok(),
            created_at: row.try_get("created_at").unwrap_or_default(),
            status: row.try_get("status").unwrap_or_default(),
            what: match error {
                StoreError::Corrupt(what) => what,
                _ => "a column does not read",
            },
        }),
    }
}

fn shipment_row(row: &AnyRow) -> Result<ShipmentRow, StoreError> {
    let items: String = row.try_get("items").map_err(StoreError::from_sqlx)?;
    let ship_to: Option<String> = row.try_get("ship_to").map_err(StoreError::from_sqlx)?;
    let gift_id: Option<String> = row.try_get("gift_id").map_err(StoreError::from_sqlx)?;
    let customer = || -> Result<ShipToRow, StoreError> {
        Ok(ShipToRow::Customer {
            record_id: uuid_col(row, "ship_id")?,
            envelope: envelope_cols(row, "s")?
                .ok_or(StoreError::Corrupt("shipping_details envelope"))?,
        })
    };
    let gift = || -> Result<ShipToRow, StoreError> {
        Ok(ShipToRow::GiftRecipient {
            record_id: uuid_col(row, "gift_id")?,
            envelope: envelope_cols(row, "g")?
                .ok_or(StoreError::Corrupt("gift_recipients envelope"))?,
        })
    };
    // A purge of every record removes the ship-to marker too: the order
    // row still says whether the parcel was a gift.
    let gift_order: i64 = row.try_get("gift").map_err(StoreError::from_sqlx)?;
    use crate::crypto::DataClass;
    let ship_to = match (ship_to.as_deref(), gift_id) {
        // A gift order's marker goes with a purge of its shipping class —
        // `orders purge --dispatched-before` takes one class at a time, so
        // the recipient's record may still be there, or go later — or with
        // its recipient's.
        (None, _) if gift_order == 1 => Ok(ShipToRow::Missing {
            purged_with: &[DataClass::Shipping, DataClass::Recipient],
            gift: true,
        }),
        (None, _) => Ok(ShipToRow::Missing {
            purged_with: &[DataClass::Shipping],
            gift: false,
        }),
        (Some("customer"), _) => customer(),
        (Some("gift_recipient"), None) => Ok(ShipToRow::Missing {
            purged_with: &[DataClass::Recipient],
            gift: true,
        }),
        (Some("gift_recipient"), Some(_)) => gift(),
        _ => Err(StoreError::Corrupt("shipping_details.ship_to")),
    }
    .unwrap_or(ShipToRow::Broken);
    Ok(ShipmentRow {
        seal: order_seal(row)?,
        seq: row.try_get("seq").map_err(StoreError::from_sqlx)?,
        order_id: uuid_col(row, "id")?,
        created_at: row.try_get("created_at").map_err(StoreError::from_sqlx)?,
        status: row.try_get("status").map_err(StoreError::from_sqlx)?,
        items: serde_json::from_str(&items).map_err(|_| StoreError::Corrupt("orders.items"))?,
        ship_to,
        customer_tag: consent_tag(row, "tag_id", "tag_order_id")?,
        email_blind_index: row
            .try_get("email_blind_index")
            .map_err(StoreError::from_sqlx)?,
        dispatch: dispatch_of(row)?,
    })
}

/// An idempotency row (`request_hash`, `order_id`, `response_status`,
/// `response_body`, `created_at`, `response_mac`).
/// The stored idempotency record of `(client, key_hash)`, as [`key_record`]
/// reads it.
const KEY_RECORD: &str =
    "SELECT request_hash, order_id, response_status, response_body, created_at, response_mac
       FROM idempotency_keys WHERE client = $1 AND key_hash = $2";

fn key_record(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        request_hash: row.try_get("request_hash").map_err(StoreError::from_sqlx)?,
        response: StoredResponse {
            order_id: uuid_col(row, "order_id")?,
            status: u16::try_from(
                row.try_get::<i64, _>("response_status")
                    .map_err(StoreError::from_sqlx)?,
            )
            .map_err(|_| StoreError::Corrupt("idempotency_keys.response_status"))?,
            body: row
                .try_get("response_body")
                .map_err(StoreError::from_sqlx)?,
        },
        created_at: row.try_get("created_at").map_err(StoreError::from_sqlx)?,
        mac: row.try_get("response_mac").map_err(StoreError::from_sqlx)?,
    })
}

fn uuid_col(row: &AnyRow, name: &'static str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(name).map_err(StoreError::from_sqlx)?;
    Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt(name))
}

fn consent_tag(
    row: &AnyRow,
    id: &'static str,
    order_id: &'static str,
) -> Result<ConsentTag, StoreError> {
    let flag = |name: &'static str| -> Result<bool, StoreError> {
        Ok(row.try_get::<i64, _>(name).map_err(StoreError::from_sqlx)? != 0)
    };
    let text = |name: &'static str| {
        row.try_get::<String, _>(name)
            .map_err(StoreError::from_sqlx)
    };
    let mac: Vec<u8> = row.try_get("mac").map_err(StoreError::from_sqlx)?;
    Ok(ConsentTag {
        id: uuid_col(row, id)?,
        order_id: uuid_col(row, order_id)?,
        subject: Subject::parse(&text("subject")?)
            .ok_or(StoreError::Corrupt("consent_tags.subject"))?,
        basis: Basis::parse(&text("basis")?).ok_or(StoreError::Corrupt("consent_tags.basis"))?,
        purposes: Purposes::from_array([
            flag("product_updates")?,
            flag("new_offerings")?,
            flag("partnerships")?,
            flag("special_offers")?,
            flag("third_party_sharing")?,
        ]),
        policy_version: text("policy_version")?,
        captured_at: text("captured_at")?,
        channel: text("channel")?,
        mac_key_version: u32::try_from(
            row.try_get::<i64, _>("mac_key_version")
                .map_err(StoreError::from_sqlx)?,
        )
        .map_err(|_| StoreError::Corrupt("consent_tags.mac_key_version"))?,
        mac: mac
            .try_into()
            .map_err(|_| StoreError::Corrupt("consent_tags.mac"))?,
    })
}

/// `ident` as a quoted SQL identifier (both engines use `"…"`).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The rows of an engine's clear-column query (`__rowid`, optional `__id`,
/// then `c0`, `c1`, … as bytes) as [`ClearRow`]s; bytes that are not UTF-8
/// are read lossily, which is what the scan needs.
pub fn clear_rows_from(
    rows: &[AnyRow],
    columns: &[String],
    has_id: bool,
) -> Result<Vec<ClearRow>, StoreError> {
    rows.iter()
        .map(|r| {
            let rowid: i64 = r.try_get("__rowid").map_err(StoreError::from_sqlx)?;
            let record_id = if has_id {
                r.try_get::<Option<String>, _>("__id")
                    .map_err(StoreError::from_sqlx)?
                    .unwrap_or_default()
            } else {
                format!("rowid:{rowid}")
            };
            let mut values = Vec::with_capacity(columns.len());
            for (i, c) in columns.iter().enumerate() {
                if let Some(v) = r
                    .try_get::<Option<Vec<u8>>, _>(format!("c{i}").as_str())
                    .map_err(StoreError::from_sqlx)?
                {
                    values.push((c.clone(), String::from_utf8_lossy(&v).into_owned()));
                }
            }
            Ok(ClearRow {
                rowid,
                record_id,
                values,
            })
        })
        .collect()
}
