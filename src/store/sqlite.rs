//! SQLite: the embedded default. What is particular to it — opening the
//! file with its pragmas, one writer at a time, the catalogue queries of the
//! audit's plaintext scan, and emptying the WAL after a purge. Every other
//! query is shared with PostgreSQL in `store/sql/`.
//!
//! WAL journal, `synchronous=FULL` (a commit is on disk before it returns:
//! invariant 9), foreign keys on, `secure_delete` (deleted content is
//! overwritten with zeros, so a purge leaves no wrapped data key behind in
//! free pages), a busy timeout instead of immediate `SQLITE_BUSY`.
//! Migrations come from `migrations/sqlite/`.

use std::path::Path;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};

use super::StoreError;
use super::rows::ClearRow;
use super::sql::{Engine, OrderWriter, SqlStore, quote_ident};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Set on every connection (they are per-connection settings).
/// `temp_store` and `cache_size` are for speed: a multi-row INSERT keeps
/// its statement journal in memory instead of a temporary file, and the
/// indexes a batch touches stay cached (16 MiB per connection at most).
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
    PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 10000; \
    PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;";
/// The writing connections (sqlx's and the order writer's, which take turns:
/// `sql::Writer`) leave checkpoints to the order writer's checkpointer
/// (`sqlite_orders::checkpoint`), so that commits do not pay for them.
const WRITER_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
    PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON; PRAGMA busy_timeout = 10000; \
    PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 0;";
const READ_ONLY_PRAGMAS: &str =
    "PRAGMA query_only = ON; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;";

/// Opens (creating on first use, with an owner-only directory and file) the
/// database at `path`, and applies pending migrations or requires none
/// (`schema`).
pub async fn open(path: &Path, schema: super::Schema) -> Result<SqlStore, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::files::create_private_dir(dir).map_err(|source| StoreError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    // Only ciphertexts are inside, but the files are still nobody else's
    // business: owner-only. SQLite creates -wal and -shm with the database
    // file's mode, so the database file is made 0600 before SQLite first
    // opens it (an empty file is an empty database); files of an older run
    // are narrowed by path. Never open an existing database file here: this
    // process's SQLite connections may hold POSIX locks on it, which closing
    // any other descriptor of the file would silently release.
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        for file in [
            path.to_owned(),
            side_file(path, "-wal"),
            side_file(path, "-shm"),
        ] {
            if file.exists() {
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    let writer = connect(path, "rwc", WRITER_PRAGMAS, 1).await?;
    {
        // Processes starting together after an upgrade (`serve` and
        // `migrate`, or two `serve`s) take turns: one migrates, the next
        // finds nothing pending. sqlx takes no lock on SQLite, and both
        // running the same migration made the second fail to start. A file
        // of its own: the database file's descriptors must not be opened
        // and closed here (see above).
        let lock_path = {
            let mut name = path.as_os_str().to_owned();
            name.push("-migrations.lock");
            std::path::PathBuf::from(name)
        };
        let locking = lock_path.clone();
        let _turn = tokio::task::spawn_blocking(move || crate::files::lock_file(&locking))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|locked| locked)
            .map_err(|source| StoreError::MigrationLock {
                path: lock_path,
                source,
            })?;
        let mut conn = writer.acquire().await.map_err(StoreError::from_sqlx)?;
        if super::needs_migrating(&mut conn, &MIGRATOR, schema).await? {
            MIGRATOR.run(&mut *conn).await?;
        }
    }
    let pool = connect(path, "rw", PRAGMAS, 8).await?;
    let store = SqlStore::new(pool, writer, Engine::Sqlite);
    let gate = store
        .write_gate()
        .ok_or(StoreError::Corrupt("a SQLite store without a write gate"))?;
    let orders = super::sqlite_orders::OrderWriter::open(path, WRITER_PRAGMAS, gate)?;
    Ok(store.with_order_writer(OrderWriter::Sqlite(orders)))
}

/// The database's `-wal` or `-shm` file.
#[cfg(unix)]
fn side_file(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Whether `error` is SQLite's BUSY/LOCKED (someone else holds the lock).
fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))),
        _ => false,
    }
}

/// Leaves an empty WAL behind, so the next start has nothing to replay.
/// Best effort and without waiting: a reader still active keeps the WAL.
pub async fn before_close(writer: &AnyPool) {
    let Ok(mut conn) = writer.acquire().await else {
        return;
    };
    let _ = sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut *conn)
        .await;
    if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await
    {
        tracing::debug!(%error, "final WAL checkpoint failed");
    }
}

/// Opens an existing database read-only, without migrating it (the offline
/// audit must not change what it inspects).
pub async fn open_read_only(path: &Path) -> Result<SqlStore, StoreError> {
    let pool = connect(path, "ro", READ_ONLY_PRAGMAS, 2).await?;
    Ok(SqlStore::new(pool.clone(), pool, Engine::Sqlite))
}

async fn connect(
    path: &Path,
    mode: &str,
    pragmas: &'static str,
    max: u32,
) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    // The path travels in a URL: escape everything but the harmless.
    const PATH: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    let path = path
        .to_str()
        .ok_or(StoreError::Corrupt("the database path is not valid UTF-8"))?;
    let url = format!("sqlite:{}?mode={mode}", utf8_percent_encode(path, PATH));
    AnyPoolOptions::new()
        .max_connections(max)
        // A local file: no connection to test before each use.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(sqlx::raw_sql(pragmas)).await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(StoreError::from_sqlx)
}

/// One writer at a time: take the write lock up front (`IMMEDIATE`) instead
/// of upgrading a read lock later, which could fail with `SQLITE_BUSY`.
pub async fn begin_write(
    pool: &AnyPool,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(StoreError::from_sqlx)
}

/// After a purge's transaction: one attempt to move the zeroed pages into
/// the database file and empty the WAL, so no copy of the deleted records
/// survives in it either. `Ok(false)` when an active reader keeps the WAL
/// (the caller retries a while, between two commits each time).
pub async fn try_truncate_wal(pool: &AnyPool) -> Result<bool, StoreError> {
    // On the writing connection, without its busy timeout: a checkpoint
    // waiting for readers must not hold up every writer for seconds.
    let mut conn = NoWait(Some(pool.acquire().await.map_err(StoreError::from_sqlx)?));
    let Some(c) = conn.0.as_mut() else {
        return Err(StoreError::Incomplete("the connection was not kept"));
    };
    sqlx::query("PRAGMA busy_timeout = 0")
        .execute(&mut **c)
        .await
        .map_err(StoreError::from_sqlx)?;
    let busy: Result<i64, _> = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut **c)
        .await;
    sqlx::query("PRAGMA busy_timeout = 10000")
        .execute(&mut **c)
        .await
        .map_err(StoreError::from_sqlx)?;
    conn.restored();
    match busy {
        Ok(busy) => Ok(busy == 0),
        Err(error) if is_busy(&error) => Ok(false),
        Err(error) => Err(StoreError::from_sqlx(error)),
    }
}

/// A pooled connection whose busy timeout is off: closed when dropped,
/// not returned to the pool, unless [`NoWait::restored`] — a call cut
/// short (an error, its future dropped) must not leave a writing
/// connection that fails at once whenever another process holds the lock.
struct NoWait(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl NoWait {
    /// The busy timeout is back: the connection returns to the pool.
    fn restored(&mut self) {
        self.0.take();
    }
}

impl Drop for NoWait {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            // Closed by the pool, which keeps its slot until then: no
            // second writing connection opens meanwhile.
            conn.close_on_drop();
        }
    }
}

/// Every table and its columns (name, declared type).
pub async fn schema(pool: &AnyPool) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::from_sqlx)?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let cols = sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
            .bind(&table)
            .fetch_all(pool)
            .await
            .map_err(StoreError::from_sqlx)?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("name").map_err(StoreError::from_sqlx)?,
                    r.try_get("type").map_err(StoreError::from_sqlx)?,
                ))
            })
            .collect::<Result<Vec<(String, String)>, StoreError>>()?;
        out.push((table, cols));
    }
    Ok(out)
}

/// Every trigger, as stored (see `store::guards`). SQLite has nothing
/// that goes around a trigger: no row security, rules or inheritance.
pub async fn guards(pool: &AnyPool) -> Result<super::guards::Seen, StoreError> {
    let rows = sqlx::query(
        "SELECT tbl_name AS t, name AS n, sql AS d FROM sqlite_master WHERE type = 'trigger'",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::from_sqlx)?;
    let text = |r: &sqlx::any::AnyRow, c: &str| -> Result<String, StoreError> {
        r.try_get(c).map_err(StoreError::from_sqlx)
    };
    let triggers = rows
        .iter()
        .map(|r| {
            Ok(super::guards::Guard {
                table: text(r, "t")?,
                name: text(r, "n")?,
                definition: text(r, "d")?,
                enabled: true,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(super::guards::Seen {
        triggers,
        bypasses: Vec::new(),
    })
}

/// Clear columns by `rowid`, each cast to bytes.
pub async fn clear_rows(
    pool: &AnyPool,
    table: &str,
    columns: &[String],
    after_rowid: Option<i64>,
    limit: u32,
) -> Result<Vec<ClearRow>, StoreError> {
    let has_id = columns.iter().any(|c| c == "id");
    let mut select = vec!["rowid AS __rowid".to_owned()];
    if has_id {
        select.push("CAST(\"id\" AS TEXT) AS __id".to_owned());
    }
    for (i, c) in columns.iter().enumerate() {
        // As bytes: a BLOB need not be UTF-8; it is scanned lossily.
        select.push(format!("CAST({} AS BLOB) AS c{i}", quote_ident(c)));
    }
    // No lower bound on the first page: a rowid may be 0 or negative, down
    // to `i64::MIN`. (Two texts, not `$1 IS NULL OR …`, so that each page
    // is a seek on the rowid.)
    let bound = if after_rowid.is_some() {
        "WHERE rowid > $1"
    } else {
        "WHERE $1 IS NULL"
    };
    let sql = format!(
        "SELECT {} FROM {} {bound} ORDER BY rowid LIMIT $2",
        select.join(", "),
        quote_ident(table)
    );
    let rows = sqlx::query(&sql)
        .bind(after_rowid)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx)?;
    super::sql::clear_rows_from(&rows, columns, has_id)
}
