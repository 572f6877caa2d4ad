//! PostgreSQL: for deployments that outgrow one machine, where several
//! checkoutd processes share one database. What is particular to it —
//! connecting (TLS via `sslmode`/`sslrootcert` in the URL), refusing a
//! server that acknowledges commits before they are durable, ordering
//! writers across processes with advisory locks, and the catalogue queries
//! of the audit's plaintext scan. Every other query is shared with SQLite in
//! `store/sql/`. Migrations come from `migrations/postgres/`.
//!
//! Across processes:
//! - idempotency is the `(client, key_hash)` primary key: a second insert
//!   waits for the first transaction and then finds the key taken;
//! - orders are committed under one advisory lock, so `orders.seq` is handed
//!   out in commit order and a fulfillment cursor never skips an order that
//!   committed late;
//! - the access log and the withdrawal ledger each have one advisory lock,
//!   held from reading the chain head to commit, so both stay one chain.

use std::time::Duration;

use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use super::StoreError;
use super::rows::ClearRow;
use super::sql::{Engine, OrderWriter, SqlStore, WriteOrder, quote_ident};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Session settings: wait at most 10 s for a lock (then answer 503 rather
/// than queue without bound), and never leave a transaction open. Read
/// committed whatever the database's or role's default: the writes that
/// lock a row (or an advisory lock) and then read rely on each statement
/// seeing what committed while they waited — the access log's head, a
/// legal hold placed while a purge waited for the order.
const SESSION: &str = "SET lock_timeout = '10s'; SET statement_timeout = '20s'; \
    SET idle_in_transaction_session_timeout = '60s'; \
    SET default_transaction_isolation = 'read committed';";
const READ_ONLY_SESSION: &str = "SET lock_timeout = '10s'; SET default_transaction_read_only = on;";
/// The audit report's whole-table reads in a serving process: read-only,
/// and up to half an hour a statement (on a large database the consent
/// figures and the anti-joins outlast [`SESSION`]'s 20 s, and every report
/// run would fail; a bound still ends a runaway one). At most 10 s waiting
/// for a lock.
const WHOLE_TABLE_SESSION: &str = "SET lock_timeout = '10s'; SET statement_timeout = '30min'; \
    SET default_transaction_read_only = on; SET idle_in_transaction_session_timeout = '60s';";

/// Advisory lock keys (`pg_advisory_xact_lock`), one per ordered sequence
/// (the orders' is taken by `postgres_orders`).
/// The high half spells "chkd" so they do not collide with other users of
/// the same database.
pub const LOCK_ORDERS: i64 = 0x6368_6b64_0000_0001;
const LOCK_ACCESS_LOG: i64 = 0x6368_6b64_0000_0002;
pub const LOCK_CONSENT_EVENTS: i64 = 0x6368_6b64_0000_0003;
/// Taken shared by each batch of `keys rewrap`, exclusive by a KEK
/// retirement after the orders' and the withdrawals' locks (see
/// `retire_keks`).
pub const LOCK_REWRAP: i64 = 0x6368_6b64_0000_0005;

/// The migrations' session: no statement limit — a migration over a large
/// database (an index built, a foreign key checked over every row) runs as
/// long as it takes — but the serving 10 s for any table lock: DDL queued
/// behind a long query would hold every serving statement on that table
/// behind it. (Run `checkoutd migrate` when the database is quiet.)
const MIGRATION_SESSION: &str = "SET lock_timeout = '10s'; SET statement_timeout = 0;";
/// Serializes migrating processes: one migrates, the others wait for it
/// as long as it takes (not the 10 s lock limit), then find nothing left.
pub const LOCK_MIGRATIONS: i64 = 0x6368_6b64_0000_0004;

/// Connects to `url`, refuses a non-durable server unless allowed, and
/// applies pending migrations (sqlx serializes concurrent migrators with an
/// advisory lock, so processes may start together) on a connection of
/// their own ([`MIGRATION_SESSION`]), not the serving pool's.
pub async fn open(
    url: &str,
    allow_unsafe_durability: bool,
    schema: super::Schema,
) -> Result<SqlStore, StoreError> {
    let pool = connect(url, SESSION, 16).await?;
    check_durability(&pool, allow_unsafe_durability).await?;
    check_encoding(&pool).await?;
    let mut migrating =
        match tokio::time::timeout(Duration::from_secs(10), AnyConnection::connect(url)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => {
                return Err(StoreError::Connect {
                    target: redact(url),
                    source,
                });
            }
            Err(_) => {
                return Err(StoreError::ConnectTimeout {
                    target: redact(url),
                });
            }
        };
    let migrated = match super::needs_migrating(&mut migrating, &MIGRATOR, schema).await {
        Ok(true) => migrate(&mut migrating).await,
        Ok(false) => Ok(()),
        Err(error) => Err(error),
    };
    let _ = migrating.close().await;
    migrated?;
    let orders = super::postgres_orders::OrderWriter::open(url, SESSION).await?;
    // Two at most: one report run at a time, and a spare.
    let whole_table_reads = pool_options::<sqlx::Any>(2, WHOLE_TABLE_SESSION)
        .connect_lazy(url)
        .map_err(|source| StoreError::Connect {
            target: redact(url),
            source,
        })?;
    Ok(SqlStore::new(pool.clone(), pool, Engine::Postgres)
        .with_order_writer(OrderWriter::Postgres(orders))
        .with_whole_table_reads(whole_table_reads))
}

/// Applies pending migrations on `conn`, after any other process's
/// (waiting for [`LOCK_MIGRATIONS`] without limit, and saying so).
async fn migrate(conn: &mut AnyConnection) -> Result<(), StoreError> {
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_MIGRATIONS)
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::from_sqlx)?;
    if !taken {
        tracing::warn!("another process is migrating the database; waiting for it to finish");
        conn.execute(sqlx::raw_sql("SET lock_timeout = 0"))
            .await
            .map_err(StoreError::from_sqlx)?;
        sqlx::query("SELECT pg_advisory_lock($1)::text")
            .bind(LOCK_MIGRATIONS)
            .execute(&mut *conn)
            .await
            .map_err(StoreError::from_sqlx)?;
    }
    conn.execute(sqlx::raw_sql(MIGRATION_SESSION))
        .await
        .map_err(StoreError::from_sqlx)?;
    let migrated = MIGRATOR.run(&mut *conn).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_MIGRATIONS)
        .execute(&mut *conn)
        .await;
    Ok(migrated?)
}

/// Connects without migrating; every transaction is read-only (the offline
/// audit must not change what it inspects).
pub async fn open_read_only(url: &str) -> Result<SqlStore, StoreError> {
    let pool = connect(url, READ_ONLY_SESSION, 2).await?;
    Ok(SqlStore::new(pool.clone(), pool, Engine::Postgres))
}

async fn connect(url: &str, session: &'static str, max: u32) -> Result<AnyPool, StoreError> {
    sqlx::any::install_default_drivers();
    let failed = |source| StoreError::Connect {
        target: redact(url),
        source,
    };
    // One direct attempt first: the pool retries until its timeout and then
    // reports only that, while an operator needs the reason (refused, no
    // such database, authentication, a certificate that does not verify).
    match tokio::time::timeout(Duration::from_secs(10), AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(error)) => return Err(failed(error)),
        // Also what a TLS handshake that fails verification looks like
        // from here: the driver does not return from it.
        Err(_) => {
            return Err(StoreError::ConnectTimeout {
                target: redact(url),
            });
        }
    }
    pool_options::<sqlx::Any>(max, session)
        .connect(url)
        .await
        .map_err(failed)
}

/// The options of every pool this store opens (the `Any` pools and the
/// order writer's native one): at most `max` connections, each with the
/// `session` settings.
pub(super) fn pool_options<DB: sqlx::Database>(
    max: u32,
    session: &'static str,
) -> sqlx::pool::PoolOptions<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    sqlx::pool::PoolOptions::new()
        .max_connections(max)
        // While the server is away a request waits this long for a
        // connection, then gets a 503; the pool reconnects by itself.
        .acquire_timeout(Duration::from_secs(3))
        // A connection older than a schema change that broke one of its
        // prepared statements is closed, not used (see `stale_plans`).
        .before_acquire(|_, meta| Box::pin(async move { Ok(!stale_plans::predates(meta.age)) }))
        .after_connect(move |conn: &mut DB::Connection, _| {
            Box::pin(async move {
                conn.execute(sqlx::raw_sql(session)).await?;
                Ok(())
            })
        })
}

/// Prepared statements a migration made stale. A migration that changes
/// the type of a column (or its collation, as 0019 did) while processes
/// run makes PostgreSQL refuse their prepared statements that return it —
/// "cached plan must not change result type" — on every connection that
/// prepared them, for as long as the connection lives. The first such
/// refusal marks the moment ([`StoreError::from_sqlx`] answers it 503
/// "retry": nothing ran); from then on each pool closes, as it hands them
/// out, its connections opened before it, and opens new ones.
pub(crate) mod stale_plans {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// Microseconds from [`epoch`] to the last refusal, plus one (0: none).
    static MARK: AtomicU64 = AtomicU64::new(0);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn micros_since_epoch(at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether `error` is PostgreSQL's refusal of a stale prepared
    /// statement: told by the routine that raises it, which no server
    /// locale translates (the message is in `lc_messages`' language).
    pub fn is_stale_plan(error: &dyn sqlx::error::DatabaseError) -> bool {
        error.code().as_deref() == Some("0A000")
            && error
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| pg.routine() == Some("RevalidateCachedQuery"))
    }

    /// Marks now: connections opened before it are let go.
    pub fn mark() {
        epoch();
        MARK.fetch_max(micros_since_epoch(Instant::now()) + 1, Ordering::AcqRel);
    }

    /// Whether a connection `age` old was opened before the last mark.
    pub fn predates(age: Duration) -> bool {
        let mark = MARK.load(Ordering::Acquire);
        if mark == 0 {
            return false;
        }
        let opened = Instant::now().checked_sub(age).unwrap_or_else(epoch);
        micros_since_epoch(opened) < mark
    }
}

/// `postgres://user@host:port/db` without password or parameters, for
/// messages.
///
/// Read as a URL is read (WHATWG, as the driver reads it): the authority
/// ends at the first `/`, `?` or `#`, and its user information at its last
/// `@`. A password written with those characters unescaped, or a parameter
/// holding `@`, makes that reading uncertain — an `@` after the authority —
/// and then no host is shown at all: whatever is shown must never be a
/// piece of a password.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().map(|u| format!("{u}@")), host),
        None => (None, authority),
    };
    let user = user.unwrap_or_default();
    if after.contains('@') {
        return format!("{scheme}://{user}<host not shown: the URL has an '@' after it>");
    }
    // The driver lets `host`, `hostaddr` and `port` parameters override the
    // authority: then the authority's host is not the one connected to.
    let params = after
        .split_once('?')
        .map_or("", |(_, q)| q)
        .to_ascii_lowercase();
    if params.split('&').any(|p| {
        ["host=", "hostaddr=", "port="]
            .iter()
            .any(|k| p.starts_with(k))
    }) {
        return format!("{scheme}://{user}<host given by the URL's parameters>");
    }
    let path = after.split(['?', '#']).next().unwrap_or("");
    format!("{scheme}://{user}{host}{path}")
}

/// The server settings that, `off`, lose acknowledged commits in a crash or
/// power loss: `fsync` and `synchronous_commit` say a commit is done before
/// it is on disk; `full_page_writes` lets a page torn by a power loss
/// corrupt committed rows beyond what recovery can repair.
pub(crate) const DURABILITY_SETTINGS: [&str; 3] =
    ["fsync", "synchronous_commit", "full_page_writes"];

/// A 2xx means the order is on disk (invariant 9): refuse a server that
/// says a commit is done before it is, or cannot recover it intact.
async fn check_durability(pool: &AnyPool, allow: bool) -> Result<(), StoreError> {
    for setting in DURABILITY_SETTINGS {
        let value: String = sqlx::query_scalar(&format!("SELECT current_setting('{setting}')"))
            .fetch_one(pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        if value == "off" {
            if allow {
                tracing::warn!(
                    setting,
                    "PostgreSQL has {setting}=off: acknowledged orders can be lost in a crash \
                     (started anyway: --allow-unsafe-durability)"
                );
            } else {
                return Err(StoreError::NotDurable { setting });
            }
        }
    }
    Ok(())
}

/// Order forms carry any script: a database that cannot store one would
/// refuse a valid order with a database error (a 500, on every retry), and
/// make its whole group-commit batch be redone order by order. Refused at
/// start-up instead.
async fn check_encoding(pool: &AnyPool) -> Result<(), StoreError> {
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(pool)
        .await
        .map_err(StoreError::from_sqlx)?;
    // SQL_ASCII stores the UTF-8 the connection sends byte for byte.
    if encoding.eq_ignore_ascii_case("UTF8") || encoding.eq_ignore_ascii_case("SQL_ASCII") {
        Ok(())
    } else {
        Err(StoreError::NotUtf8 { encoding })
    }
}

/// A transaction; for ordered writes, first the sequence's advisory lock
/// (held until commit or rollback).
pub async fn begin_write(
    pool: &AnyPool,
    order: WriteOrder,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::from_sqlx)?;
    let key = match order {
        WriteOrder::AccessLog => Some(LOCK_ACCESS_LOG),
        WriteOrder::ConsentEvents => Some(LOCK_CONSENT_EVENTS),
        WriteOrder::Unordered => None,
    };
    if let Some(key) = key {
        sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
    }
    Ok(tx)
}

/// A purge's rows are deleted when its transaction commits. PostgreSQL has
/// no secure delete: the dead tuples stay in the table's pages until
/// VACUUM reuses them, and in WAL archives and backups until those age out
/// — see README, "Purges on PostgreSQL". Nothing further can be done from
/// here.
pub async fn after_purge(_pool: &AnyPool) -> Result<(), StoreError> {
    Ok(())
}

/// Every table of the current schema and its columns (name, data type).
pub async fn schema(pool: &AnyPool) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.table_name::text AS t, c.column_name::text AS c, c.data_type::text AS ty
           FROM information_schema.columns c
           JOIN information_schema.tables t
             ON t.table_schema = c.table_schema AND t.table_name = c.table_name
          WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
          ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::from_sqlx)?;
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for r in rows {
        let table: String = r.try_get("t").map_err(StoreError::from_sqlx)?;
        let column = (
            r.try_get("c").map_err(StoreError::from_sqlx)?,
            r.try_get("ty").map_err(StoreError::from_sqlx)?,
        );
        match out.last_mut() {
            Some((t, cols)) if *t == table => cols.push(column),
            _ => out.push((table, vec![column])),
        }
    }
    Ok(out)
}

/// The triggers on `tables` — each table as the service's statements
/// find it through their `search_path` — but the system's own (a foreign
/// key's), and what on them goes around a trigger: row-level security, a
/// rule, a table inheriting from one (see `store::guards`).
///
/// After the tables are found, the transaction's `search_path` is
/// `pg_catalog` alone: whoever may set the role's `search_path` could
/// otherwise put a function or an operator of their own in front of the
/// catalogue's (a `pg_get_triggerdef` that prints the pinned text, an `=`
/// under which every trigger reads as enabled).
pub async fn guards(pool: &AnyPool, tables: &[&str]) -> Result<super::guards::Seen, StoreError> {
    use super::guards::{Bypass, Guard, Seen};
    let e = StoreError::from_sqlx;
    let mut tx = pool.begin().await.map_err(e)?;
    let mut found: Vec<(String, i64)> = Vec::new();
    for table in tables {
        let oid: Option<i64> = sqlx::query_scalar(
            "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid::pg_catalog.int8",
        )
        .bind(*table)
        .fetch_one(&mut *tx)
        .await
        .map_err(e)?;
        if let Some(oid) = oid {
            found.push(((*table).to_owned(), oid));
        }
    }
    tx.execute(sqlx::raw_sql("SET LOCAL search_path = pg_catalog"))
        .await
        .map_err(e)?;
    let name_of = |oid: i64| {
        found
            .iter()
            .find(|(_, o)| *o == oid)
            .map(|(t, _)| t.clone())
    };
    let rows = sqlx::query(
        "SELECT c.oid::int8 AS rel, t.tgname::text AS n, t.tgenabled::text AS en,
                pg_get_triggerdef(t.oid) AS def, quote_ident(cs.nspname) AS ts,
                quote_ident(fs.nspname) AS fs, l.lanname::text AS lang,
                p.prosecdef::int4::int8 AS secdef, p.prosrc AS body,
                coalesce(array_to_string(p.proconfig, E'\\n'), '') AS cfg
           FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_namespace cs ON cs.oid = c.relnamespace
           JOIN pg_proc p ON p.oid = t.tgfoid
           JOIN pg_namespace fs ON fs.oid = p.pronamespace
           JOIN pg_language l ON l.oid = p.prolang
          WHERE NOT t.tgisinternal",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(e)?;
    let mut triggers = Vec::new();
    for r in &rows {
        let Some(table) = name_of(r.try_get("rel").map_err(e)?) else {
            continue;
        };
        let text = |c: &str| -> Result<String, StoreError> { r.try_get(c).map_err(e) };
        let settings: Vec<String> = text("cfg")?
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        triggers.push(Guard {
            table,
            name: text("n")?,
            definition: super::guards::postgres_definition(
                &text("def")?,
                &text("ts")?,
                &text("fs")?,
                &text("lang")?,
                r.try_get::<i64, _>("secdef").map_err(e)? == 1,
                &text("body")?,
                &settings,
            ),
            enabled: matches!(text("en")?.as_str(), "O" | "A"),
        });
    }
    let rows = sqlx::query(
        "SELECT c.oid::int8 AS rel,
                c.relrowsecurity::int4::int8 AS rls,
                (SELECT count(*) FROM pg_rewrite r
                  WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN') AS rules,
                (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) AS heirs
           FROM pg_class c WHERE c.relkind IN ('r', 'p')",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(e)?;
    let mut bypasses = Vec::new();
    for r in &rows {
        let Some(table) = name_of(r.try_get("rel").map_err(e)?) else {
            continue;
        };
        for (column, bypass) in [
            ("rls", Bypass::RowSecurity),
            ("rules", Bypass::Rule),
            ("heirs", Bypass::Inherited),
        ] {
            if r.try_get::<i64, _>(column).map_err(e)? > 0 {
                bypasses.push((table.clone(), bypass));
            }
        }
    }
    tx.rollback().await.map_err(e)?;
    Ok(Seen { triggers, bypasses })
}

/// Clear columns in physical order. The position is the row's `ctid`
/// packed as `block * 65536 + offset` (a heap page holds far fewer than
/// 65536 tuples); `bytea` columns are scanned as their bytes, everything
/// else as its text.
pub async fn clear_rows(
    pool: &AnyPool,
    table: &str,
    columns: &[String],
    after_rowid: Option<i64>,
    limit: u32,
) -> Result<Vec<ClearRow>, StoreError> {
    let types: Vec<(String, String)> = schema(pool)
        .await?
        .into_iter()
        .find(|(t, _)| t == table)
        .map(|(_, cols)| cols)
        .unwrap_or_default();
    let is_bytea = |c: &str| types.iter().any(|(n, ty)| n == c && ty == "bytea");
    let has_id = columns.iter().any(|c| c == "id");
    let mut select = vec![
        "((ctid::text::point)[0]::bigint * 65536 + (ctid::text::point)[1]::bigint) AS __rowid"
            .to_owned(),
    ];
    if has_id {
        select.push("CAST(\"id\" AS TEXT) AS __id".to_owned());
    }
    for (i, c) in columns.iter().enumerate() {
        if is_bytea(c) {
            select.push(format!("{} AS c{i}", quote_ident(c)));
        } else {
            select.push(format!(
                "convert_to(CAST({} AS TEXT), 'UTF8') AS c{i}",
                quote_ident(c)
            ));
        }
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE ctid > format('(%s,%s)', $1::bigint / 65536, $1::bigint % 65536)::tid
          ORDER BY ctid LIMIT $2",
        select.join(", "),
        quote_ident(table)
    );
    // A position is never negative; `None` is from the start.
    let rows = sqlx::query(&sql)
        .bind(after_rowid.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(StoreError::from_sqlx)?;
    super::sql::clear_rows_from(&rows, columns, has_id)
}

#[cfg(test)]
mod tests {
    use super::redact;

    /// Each setting whose `off` loses acknowledged orders is checked
    /// (`full_page_writes` is server-wide: a test cannot turn it off for
    /// its own database, as `multi` does `synchronous_commit`).
    #[test]
    fn every_setting_that_loses_acknowledged_orders_is_checked() {
        for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
            assert!(super::DURABILITY_SETTINGS.contains(&setting), "{setting}");
        }
    }

    #[test]
    fn redaction_never_shows_a_password() {
        let hidden =
            |prefix: &str| format!("{prefix}<host not shown: the URL has an '@' after it>");
        for (url, shown) in [
            (
                "postgres://u:secret@h:5432/db?sslmode=verify-full",
                "postgres://u@h:5432/db".to_owned(),
            ),
            ("postgresql://h/db", "postgresql://h/db".to_owned()),
            (
                "postgres://u@h/db?password=secret",
                "postgres://u@h/db".to_owned(),
            ),
            (
                "postgres://u:secretpassword=1@h/db",
                "postgres://u@h/db".to_owned(),
            ),
            (
                "postgres://u:secret&password=x@h/db",
                "postgres://u@h/db".to_owned(),
            ),
            (
                "postgres://u:s3cr&sslpassword=1@db:5432/app",
                "postgres://u@db:5432/app".to_owned(),
            ),
            ("postgres://u:secret@h", "postgres://u@h".to_owned()),
            // The parameters name the host the driver connects to.
            (
                "postgres://app:secret@localhost/app?host=db.prod&port=6432",
                "postgres://app@<host given by the URL's parameters>".to_owned(),
            ),
            (
                "postgres://app@localhost/app?sslmode=require&hostaddr=10.0.0.5",
                "postgres://app@<host given by the URL's parameters>".to_owned(),
            ),
            // A password with `#`, `?`, `/` or `@` unescaped, or a
            // parameter holding `@`: no host is shown.
            ("postgres://u:pa#secret@h/db", hidden("postgres://")),
            ("postgres://u:p@secret?x@h/db", hidden("postgres://u@")),
            ("postgres://u:s/ecret@h/db?x=1", hidden("postgres://")),
            ("postgres://u:pa#secret@h", hidden("postgres://")),
            ("postgres://app:x?secret@db:5432", hidden("postgres://")),
            ("postgres://u:?password=secret@h/db", hidden("postgres://")),
            (
                "postgres://u@h/db?password=abc@secret",
                hidden("postgres://u@"),
            ),
            (
                "postgres://u@h/db?password=a/b@secret",
                hidden("postgres://u@"),
            ),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=x@secret",
                hidden("postgres://u@"),
            ),
            (
                "postgres://app:pw@db:5432?application_name=ops@secret",
                hidden("postgres://app@"),
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("secret"), "{url}");
        }
    }
}
