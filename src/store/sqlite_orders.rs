//! SQLite's order writer: the group-commit batches of `intake::commit`,
//! written by one dedicated thread over its own connection.
//!
//! Why not through sqlx like every other query: sqlx runs each SQLite
//! connection on a worker thread and every statement is a round trip to it
//! (≈ 10 per batch, each waiting for a free core), and its statement cache
//! is keyed by SQL text, so a multi-row INSERT is prepared again for every
//! new batch size. Here a batch is one hop — the thread gets the batch,
//! runs `BEGIN IMMEDIATE`, binds each row to a cached single-row statement,
//! `COMMIT`s and answers — and nothing is ever prepared twice.
//! docs/performance.md has the measurements.
//!
//! The rows and the SQL come from `sql::order_rows`, shared with
//! PostgreSQL's order writer, so both engines write the same columns with
//! the same values. The connection has the same settings as sqlx's
//! writer (`synchronous=FULL`, foreign keys, `secure_delete`; checked when
//! it opens), the same migrations apply (they ran before it opens), and the
//! database's own triggers (the retired-KEK check) guard it as they guard
//! every other write.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter};
use tokio::sync::oneshot;

use super::StoreError;
use super::rows::{CommitOutcome, NewOrder};
use super::sql::order_rows::{self, OrderText};

type Answer = Result<Vec<CommitOutcome>, StoreError>;

struct Job {
    batch: Arc<[NewOrder]>,
    queued: Instant,
    done: oneshot::Sender<Answer>,
}

/// The handle: sends batches to the writer thread.
pub struct OrderWriter {
    /// Taken for each batch: the other writing connection of this process
    /// waits its turn here, not in SQLite's busy handler (`sql::Writer`).
    gate: Arc<tokio::sync::Mutex<()>>,
    /// `None` once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Dropped to stop the checkpointer.
    stop_checkpoints: Mutex<Option<mpsc::Sender<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

impl OrderWriter {
    /// Opens a connection to the (migrated) database at `path` with
    /// `pragmas`, checks that it is durable, and starts the thread.
    /// Also starts the WAL checkpointer (see [`checkpoint`]).
    pub fn open(
        path: &Path,
        pragmas: &str,
        gate: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Self, StoreError> {
        let connect = || -> Result<Connection, StoreError> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(StoreError::from_sqlite)?;
            conn.execute_batch(pragmas)
                .map_err(StoreError::from_sqlite)?;
            check_settings(&conn)?;
            Ok(conn)
        };
        let (conn, checkpoints) = (connect()?, connect()?);
        let db_file = sync_handle(path);
        let caught_up = Arc::new(AtomicBool::new(false));
        let statements = Statements::new();
        let (jobs, queue) = mpsc::channel();
        let writer_flag = caught_up.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-orders".into())
            .spawn(move || run(conn, &statements, queue, &writer_flag))
            .map_err(|_| StoreError::WriterStopped)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint(checkpoints, db_file, stop, caught_up))
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(OrderWriter {
            gate,
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            stop_checkpoints: Mutex::new(Some(stop_checkpoints)),
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    /// Writes `batch` in one synced transaction (see `Store::commit_orders`).
    pub async fn commit(&self, batch: Arc<[NewOrder]>) -> Answer {
        let _turn = self.gate.lock().await;
        let (done, answer) = oneshot::channel();
        let job = Job {
            batch,
            queued: Instant::now(),
            done,
        };
        {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let jobs = jobs.as_ref().ok_or(StoreError::WriterStopped)?;
            jobs.send(job).map_err(|_| StoreError::WriterStopped)?;
        }
        // A thread that died mid-batch drops `done`: the outcome is then
        // unknown, answered as retryable.
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Whether the writer still takes batches and the checkpointer still
    /// keeps the WAL bounded.
    pub fn is_running(&self) -> bool {
        let alive = |thread: &Mutex<Option<JoinHandle<()>>>| {
            thread
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|t| !t.is_finished())
        };
        alive(&self.thread)
            && alive(&self.checkpointer)
            && self
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Stops taking batches and checkpointing, lets the writer finish the
    /// queued batches and close its connection, and waits for both threads.
    pub async fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        drop(
            self.stop_checkpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for thread in [&self.thread, &self.checkpointer] {
            let thread = thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(thread) = thread {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}

/// The connection must commit as durably as sqlx's (invariant 9) and
/// enforce foreign keys; a setting that did not take is refused.
fn check_settings(conn: &Connection) -> Result<(), StoreError> {
    let pragma = |name: &str| -> Result<String, StoreError> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(n) => n.to_string(),
            rusqlite::types::Value::Text(t) => t,
            _ => String::new(),
        })
        .map_err(StoreError::from_sqlite)
    };
    // synchronous: 2 = FULL, 3 = EXTRA.
    let durable = pragma("journal_mode")? == "wal"
        && matches!(pragma("synchronous")?.as_str(), "2" | "3")
        && pragma("foreign_keys")? == "1"
        && pragma("secure_delete")? == "1";
    if durable {
        Ok(())
    } else {
        Err(StoreError::Corrupt(
            "the SQLite order writer's connection did not take its settings (WAL, synchronous=FULL, foreign keys, secure_delete)",
        ))
    }
}

/// The SQL of the claim and of each table's single-row INSERT, built once.
struct Statements {
    claim: String,
    tables: [String; 7],
}

impl Statements {
    fn new() -> Self {
        Statements {
            claim: order_rows::single_row_insert(
                &order_rows::IDEMPOTENCY_KEYS,
                order_rows::CLAIM_CONFLICT,
            ),
            tables: order_rows::ORDER_TABLES.map(|t| order_rows::single_row_insert(t, "")),
        }
    }
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copy-and-sync passes per round (see [`checkpoint`]) …
const PASSES: usize = 2;
/// … and at most, while a reader held the last pass back.
const MAX_PASSES: usize = 4;

/// Keeps the WAL bounded, off the writer's thread where it can.
///
/// A checkpoint copies the WAL's pages into the database file; the WAL is
/// started from its beginning again by the first write after a checkpoint
/// that copied *everything*. Under sustained load a checkpoint on another
/// thread never copies everything — a commit always lands while it copies —
/// so the WAL grew without bound (600 MB in 10 s of the benchmark, and the
/// same before this writer existed). So the work is split: this thread
/// copies the bulk every [`CHECKPOINT_EVERY`] (PASSIVE: it takes no lock a
/// writer needs) and then raises `caught_up`; the writer, after its next
/// commit, checkpoints the few pages committed meanwhile. That one
/// usually completes — no order commits while the writer checkpoints, but
/// a write through sqlx's connection (an access-log append, a dispatch)
/// may, as may a reader still using older pages, and then it waits for the
/// next round — and the writer's next transaction restarts the WAL.
///
/// The writer's part must stay short: every order waits while it runs.
/// SQLite syncs the database file only at the end of a *complete*
/// checkpoint, so the writer's would write back everything the passes here
/// copied (≈ 50 MB a round under the benchmark: a 10–17 ms `fsync`, the
/// main source of the p99). So each pass here is followed by an
/// `fdatasync` of the database file, off the writer's path, and a round is
/// [`PASSES`] passes — the second copies what was committed during the
/// first and its sync — before the writer is asked to finish: its part is
/// then ≈ 2 ms. An extra sync costs no durability: the WAL keeps every
/// frame until a complete checkpoint, which SQLite still syncs itself.
fn checkpoint(
    conn: Connection,
    db_file: Option<Arc<std::fs::File>>,
    stop: mpsc::Receiver<()>,
    caught_up: Arc<AtomicBool>,
) {
    let sync = || db_file.as_deref().map_or(Ok(()), std::fs::File::sync_data);
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        match round(|| passive_checkpoint(&conn), sync) {
            Ok(true) => caught_up.store(true, Ordering::Release),
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "background WAL checkpoint failed"),
        }
    }
}

/// A descriptor of the database file for the checkpointer's syncs: one
/// per file for the life of the process, **never closed**.
///
/// Closing *any* descriptor of a file drops every POSIX lock the process
/// holds on it, SQLite's own included (sqlite.org/howtocorrupt.html,
/// 2.2). Among them is the shared lock by which a WAL connection tells
/// other processes it is still there; without it, another process closing
/// its last connection checkpoints and deletes the WAL under this one's
/// readers. A checkpointer that closed its descriptor when its store closed
/// did exactly that in CI (a "disk I/O error" in the key-rotation test,
/// where a CLI process and a second store share the database). So the
/// descriptor is opened once per file (by device and inode) and kept. Read
/// only: `fdatasync` needs no more. `None` (the passes then run unsynced)
/// when it cannot be opened, or off Unix.
fn sync_handle(path: &Path) -> Option<Arc<std::fs::File>> {
    #[cfg(unix)]
    {
        use std::collections::HashMap;
        use std::collections::hash_map::Entry;
        use std::os::unix::fs::MetadataExt;
        use std::sync::OnceLock;

        type Files = Mutex<HashMap<(u64, u64), Arc<std::fs::File>>>;
        static FILES: OnceLock<Files> = OnceLock::new();
        let mut files = FILES
            .get_or_init(Files::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        if let Some(file) = std::fs::metadata(path).ok().and_then(|m| files.get(&id(m))) {
            return Some(file.clone());
        }
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(%error, "the WAL checkpointer cannot open the database file to sync it; the order writer's checkpoints will sync it instead");
                return None;
            }
        };
        // A file replaced since `metadata` may already be known: the new
        // descriptor is then kept open unused, not closed (see above).
        match file.metadata().map(id) {
            Ok(key) => match files.entry(key) {
                Entry::Vacant(entry) => Some(entry.insert(Arc::new(file)).clone()),
                Entry::Occupied(entry) => {
                    std::mem::forget(file);
                    Some(entry.get().clone())
                }
            },
            Err(_) => {
                std::mem::forget(file);
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// One round of the checkpointer: [`PASSES`] times, copy the WAL (`pass`,
/// true when it copied all of it) and sync the database file. True when
/// the last pass copied everything: the order writer may finish.
///
/// A pass cannot copy frames newer than the snapshot of a reader still
/// open when it starts (the request path's idempotency lookups are such
/// readers, for microseconds). Such a last pass is followed by another,
/// up to [`MAX_PASSES`] in all: without them a round now and then ended
/// short under the benchmark, the WAL was not restarted until the next
/// round, and it grew to 130–210 MB instead of 70–90.
///
/// A failed sync is only logged: the writer's complete checkpoint syncs
/// the file again and fails on the same error (Linux reports a write-back
/// error to every open file), so nothing is lost silently, only slower.
fn round(
    mut pass: impl FnMut() -> rusqlite::Result<bool>,
    sync: impl Fn() -> std::io::Result<()>,
) -> rusqlite::Result<bool> {
    let mut passes = 0;
    loop {
        let complete = pass()?;
        if let Err(error) = sync() {
            tracing::warn!(%error, "syncing the database file after a WAL checkpoint failed");
        }
        passes += 1;
        if passes >= PASSES && (complete || passes >= MAX_PASSES) {
            return Ok(complete);
        }
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: whether it copied the whole WAL. It
/// does not when another checkpoint runs at the same time ("busy"), nor
/// when a reader still uses older pages (fewer frames copied than logged).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })
    .map(|(busy, logged, copied)| busy == 0 && logged == copied)
}

fn run(mut conn: Connection, sql: &Statements, queue: mpsc::Receiver<Job>, caught_up: &AtomicBool) {
    // Eight statements: the claim and one per table.
    conn.set_prepared_statement_cache_capacity(16);
    while let Ok(job) = queue.recv() {
        // A batch whose caller is gone (its future dropped: the process
        // stopping) is not written behind its back. One whose orders were
        // answered 503 at the commit timeout is still waited for, on
        // purpose (`intake::commit::commit` keeps the call and the orders'
        // key holds until it returns): it is written, and a retry of its
        // keys meanwhile is told 409, then replays what landed.
        if job.done.is_closed() {
            continue;
        }
        let result = write(&mut conn, sql, &job);
        let _ = job.done.send(result.map_err(StoreError::from_sqlite));
        // Done or not (another checkpoint running, a reader on older
        // pages), the next try follows the next complete background pass.
        if caught_up.swap(false, Ordering::AcqRel)
            && let Err(error) = passive_checkpoint(&conn)
        {
            tracing::debug!(%error, "the order writer's WAL checkpoint failed");
        }
    }
}

/// One batch in one transaction. Orders are written one after the other,
/// each claiming its Idempotency-Key first: a key already taken — stored
/// before, or by an earlier order of this batch — makes that order write
/// nothing (`DuplicateKey`), exactly as if the requests had come one by
/// one. Any error rolls the whole batch back (the transaction's drop).
fn write(
    conn: &mut Connection,
    sql: &Statements,
    job: &Job,
) -> rusqlite::Result<Vec<CommitOutcome>> {
    let batch = &job.batch[..];
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The wait for the writer and its lock: the metric "database waits".
    crate::telemetry::pool_wait(job.queued.elapsed());
    if job.done.is_closed() {
        // Its caller went away while this waited for the lock (another
        // process held it; see `run` for when that is): rolled back by the
        // drop, answered by nobody.
        return Ok(Vec::new());
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut claim = tx.prepare_cached(&sql.claim)?;
        let mut inserts = sql
            .tables
            .iter()
            .map(|s| tx.prepare_cached(s))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for order in batch {
            let text = OrderText::of(order);
            let claimed =
                claim.execute(params_from_iter(order_rows::idempotency_row(order, &text)))?;
            if claimed == 0 {
                outcomes.push(CommitOutcome::DuplicateKey);
                continue;
            }
            for (insert, rows) in inserts.iter_mut().zip(order_rows::rows(order, &text)) {
                for row in rows {
                    insert.execute(params_from_iter(row))?;
                }
            }
            outcomes.push(CommitOutcome::Committed);
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Invariant 9 on SQLite: the order writer refuses a connection that
    /// would acknowledge a commit before it is on disk (or that lost the
    /// other settings it relies on), whatever asked for it.
    #[tokio::test]
    async fn a_connection_that_would_acknowledge_before_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let durable = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                       PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;";
        // The writer opens an existing (migrated) database only.
        let created = |name: &str| {
            let path = dir.path().join(name);
            drop(Connection::open(&path).unwrap());
            path
        };
        let writer = OrderWriter::open(&created("ok.db"), durable, gate.clone());
        assert!(writer.is_ok(), "{:?}", writer.err());
        for (n, weak) in [
            durable.replace("synchronous = FULL", "synchronous = NORMAL"),
            durable.replace("synchronous = FULL", "synchronous = OFF"),
            durable.replace("journal_mode = WAL", "journal_mode = MEMORY"),
            durable.replace("foreign_keys = ON", "foreign_keys = OFF"),
            durable.replace("secure_delete = ON", "secure_delete = OFF"),
        ]
        .iter()
        .enumerate()
        {
            let path = created(&format!("weak-{n}.db"));
            match OrderWriter::open(&path, weak, gate.clone()) {
                Err(StoreError::Corrupt(why)) => {
                    assert!(why.contains("synchronous=FULL"), "{why}")
                }
                Err(other) => panic!("{weak}: {other}"),
                Ok(_) => panic!("{weak}: a connection without its settings was taken"),
            }
        }
    }

    /// Runs a round whose passes report `outcomes` in turn: what it
    /// returned, and the passes and syncs it made, in order.
    fn run_round(outcomes: &[bool]) -> (bool, Vec<&'static str>) {
        let events = RefCell::new(Vec::new());
        let outcomes = RefCell::new(outcomes.iter().copied());
        let complete = round(
            || {
                events.borrow_mut().push("pass");
                Ok(outcomes
                    .borrow_mut()
                    .next()
                    .expect("no more passes expected"))
            },
            || {
                events.borrow_mut().push("sync");
                Ok(())
            },
        )
        .unwrap();
        (complete, events.into_inner())
    }

    /// Each pass is followed by a sync; a round is two passes, and only
    /// the last decides whether the writer is asked to finish.
    #[test]
    fn a_round_syncs_after_every_pass_and_reports_the_last() {
        let (complete, events) = run_round(&[false, true]);
        assert!(complete);
        assert_eq!(events, ["pass", "sync", "pass", "sync"]);
        let (complete, _) = run_round(&[true, true]);
        assert!(complete);
    }

    /// A last pass that a reader held back is followed by another, up to
    /// four passes in all.
    #[test]
    fn a_held_back_last_pass_is_tried_again_up_to_the_limit() {
        let (complete, events) = run_round(&[true, false, true]);
        assert!(complete);
        assert_eq!(events.len(), 6, "{events:?}");
        let (complete, events) = run_round(&[false; MAX_PASSES]);
        assert!(!complete);
        assert_eq!(events.len(), 2 * MAX_PASSES, "{events:?}");
    }

    /// A failed sync neither stops the round nor hides a complete pass; a
    /// failed pass ends it with the error.
    #[test]
    fn a_failed_sync_is_survived_and_a_failed_pass_is_an_error() {
        let syncs = RefCell::new(0);
        let failing_sync = || {
            *syncs.borrow_mut() += 1;
            Err(std::io::Error::other("EIO"))
        };
        assert!(round(|| Ok(true), failing_sync).unwrap());
        assert_eq!(*syncs.borrow(), PASSES);
        let failed = round(|| Err(rusqlite::Error::InvalidQuery), || Ok(()));
        assert!(failed.is_err());
    }

    /// One descriptor per database file, shared by every writer of the
    /// process and never closed: a second writer on the same file (or the
    /// same file by another path) gets the same one.
    #[cfg(unix)]
    #[test]
    fn the_sync_handle_is_one_per_file_and_outlives_its_users() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        std::fs::hard_link(&a, dir.path().join("a-again.db")).unwrap();
        let first = sync_handle(&a).unwrap();
        let again = sync_handle(&dir.path().join("a-again.db")).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "same file, same descriptor");
        assert!(!Arc::ptr_eq(&first, &sync_handle(&b).unwrap()));
        drop((first, again));
        // The registry still holds it: nothing was closed.
        let later = sync_handle(&a).unwrap();
        assert!(Arc::strong_count(&later) >= 2);
        assert!(later.sync_data().is_ok());
        assert!(sync_handle(&dir.path().join("missing.db")).is_none());
    }
}
