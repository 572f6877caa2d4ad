//! PostgreSQL's order writer: the group-commit batches of
//! `intake::commit`, each **one statement**, sent outside any `BEGIN`: a
//! lone statement is its own transaction, committed (and, with
//! `synchronous_commit` on, flushed) before PostgreSQL says it is done, and
//! rolled back whole if any part fails. One round trip per batch, where a
//! `BEGIN`, the lock, the claim, the rows and the `COMMIT` were five, each
//! a wake-up of this task and of the backend on two busy cores.
//!
//! ```text
//! WITH claim AS (INSERT INTO idempotency_keys … SELECT * FROM unnest(…)
//!                WHERE <the orders' sequence lock is taken>
//!                ON CONFLICT (client, key_hash) DO NOTHING RETURNING order_id),
//!      t0 AS (INSERT INTO orders … SELECT * FROM unnest(…) AS u(…)
//!             WHERE u.id IN (SELECT order_id FROM claim)),
//!      t1 AS (INSERT INTO consent_tags … WHERE u.order_id IN (…claim…)), …
//! SELECT order_id FROM claim
//! ```
//!
//! - The claim: the batch's idempotency rows; a key already stored inserts
//!   nothing and returns nothing, so that order's rows are filtered out of
//!   every other table — exactly as if the requests had come one by one.
//! - The lock (`pg_advisory_xact_lock`, an init plan of the claim, so taken
//!   before its first row and before any `orders` row draws its `seq`) is
//!   held to the commit, so that `orders.seq` follows commit order.
//! - The references between the rows are checked at the end of the
//!   statement, when every table has its rows (migration 0011).
//!
//! Every column is bound as one array, so the statement's text does not
//! change with the batch's size (only with whether it holds a gift order):
//! it is parsed, planned and prepared once per connection. Arrays need the
//! native PostgreSQL driver (`Any` binds none), hence a connection of its
//! own.
//! The rows and columns are those of `sql::order_rows`, shared with
//! SQLite's order writer.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection};
use sqlx::{Arguments, Connection, Executor, Row};

use super::StoreError;
use super::rows::{CommitOutcome, NewOrder};
use super::sql::order_rows::{self, OrderText, Param, Table};

/// The handle: one connection of its own (group commit writes one batch at
/// a time), with the store's session settings, opened again after it
/// failed. Not a pool: a pool tests every connection it takes back with a
/// ping that waits without a limit — a connection whose host went silent
/// at that moment kept the writer's only connection, and every later
/// order, waiting for ever. This writer pings within a limit
/// ([`PING_TIMEOUT`]), and gives a batch's statement up after [`GIVE_UP`].
pub struct OrderWriter {
    options: Box<PgConnectOptions>,
    session: &'static str,
    /// The connection and when it was opened; `None` until the next batch
    /// opens one, after the last failed.
    conn: std::sync::Arc<tokio::sync::Mutex<Option<(PgConnection, Instant)>>>,
    closed: AtomicBool,
}

/// The age at which the connection is replaced before a batch, as a
/// pool's `max_lifetime` (sqlx's default) did: server-side session state
/// does not grow for ever, and a connection left on a host that is no
/// longer the primary is let go.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long the ping after a batch may take before the connection is
/// given up (the next batch opens a new one).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a batch waits for the connection, and opening it may take (a
/// pool's acquire limit, as the store's pools have): then the batch is
/// answered 503 "retry".
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl OrderWriter {
    /// Connects to `url` (already migrated and checked for durability by
    /// the store's own pool) with `session` settings.
    pub async fn open(url: &str, session: &'static str) -> Result<Self, StoreError> {
        let failed = |source| StoreError::Connect {
            target: super::postgres::redact(url),
            source,
        };
        let options = Box::new(PgConnectOptions::from_str(url).map_err(failed)?);
        let writer = OrderWriter {
            options,
            session,
            conn: std::sync::Arc::new(tokio::sync::Mutex::new(None)),
            closed: AtomicBool::new(false),
        };
        let conn = writer.connect().await.map_err(failed)?;
        *writer.conn.lock().await = Some(conn);
        Ok(writer)
    }

    async fn connect(&self) -> Result<(PgConnection, Instant), sqlx::Error> {
        let connecting = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            conn.execute(sqlx::raw_sql(self.session)).await?;
            Ok((conn, Instant::now()))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    pub fn is_running(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some((conn, _)) = self.conn.lock().await.take() {
            // A goodbye, if the server still listens; the socket closes
            // either way.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await;
        }
    }

    /// Writes `batch` in one statement, its own transaction, under the
    /// orders' sequence lock (see `store::postgres`), so that `orders.seq`
    /// follows commit order. An order whose idempotency key is taken — by
    /// an earlier order of the same batch, or already stored — writes
    /// nothing and is `DuplicateKey`, exactly as if the requests had come
    /// one by one.
    pub async fn commit(&self, batch: &[NewOrder]) -> Result<Vec<CommitOutcome>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::from_sqlx(sqlx::Error::PoolClosed));
        }
        // The wait for the connection: the metric "database waits".
        let started = Instant::now();
        // Taken by a batch still running past its time limit: this one is
        // answered 503 "retry" as a pool's acquire limit would.
        let mut slot = tokio::time::timeout(CONNECT_TIMEOUT, self.conn.clone().lock_owned())
            .await
            .map_err(|_| StoreError::from_sqlx(sqlx::Error::PoolTimedOut))?;
        // Closed while this batch waited for its turn: nothing is written.
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::from_sqlx(sqlx::Error::PoolClosed));
        }
        // Opened before a migration broke its prepared statements (see
        // `stale_plans`), or longer ago than a pool keeps one: closed, not
        // used.
        if slot.as_ref().is_some_and(|(_, opened)| {
            opened.elapsed() >= MAX_LIFETIME
                || super::postgres::stale_plans::predates(opened.elapsed())
        }) {
            *slot = None;
        }
        let (conn, _) = match &mut *slot {
            Some(open) => open,
            None => match self.connect().await {
                Ok(open) => slot.insert(open),
                Err(error) => {
                    // Nothing was sent: not an outcome unknown (its keys
                    // are not held uncertain), a database away — 503.
                    tracing::warn!(%error, "the order writer could not connect to the database");
                    return Err(StoreError::from_sqlx(sqlx::Error::PoolTimedOut));
                }
            },
        };
        crate::telemetry::pool_wait(started.elapsed());
        match tokio::time::timeout(GIVE_UP, write(conn, batch)).await {
            Ok(Ok(outcomes)) => {
                // The batch is answered now; the connection is checked with
                // a ping before the next batch takes it, as a pool checks
                // one it takes back — but within a limit. The round trip
                // also lets the next batch gather orders: without it the
                // benchmark's batches shrank from 30 to 26 orders and intake
                // fell by 4 % (twenty-sixth session).
                tokio::spawn(async move {
                    let answered = match &mut *slot {
                        Some((conn, _)) => {
                            matches!(
                                tokio::time::timeout(PING_TIMEOUT, conn.ping()).await,
                                Ok(Ok(()))
                            )
                        }
                        None => true,
                    };
                    if !answered {
                        *slot = None;
                    }
                });
                Ok(outcomes)
            }
            Ok(Err(error)) => {
                // After the statement's own error (a constraint, a retired
                // key) the connection is as good as before: the statement
                // was its own transaction. After one of the database being
                // away — the connection broke, the server ended the session
                // or is a standby now after a failover — the next batch
                // opens a new one.
                let error = StoreError::from_sqlx(error);
                if matches!(error, StoreError::Unavailable(_)) {
                    *slot = None;
                }
                Err(error)
            }
            Err(_) => {
                // Dropped: its socket is closed, and the next batch opens
                // a new connection.
                *slot = None;
                tracing::error!(
                    seconds = GIVE_UP.as_secs(),
                    "the database did not answer a commit: its connection was closed; the batch's outcome is unknown"
                );
                Err(StoreError::Unavailable(sqlx::Error::Io(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the database did not answer the commit",
                    ),
                )))
            }
        }
    }
}

/// How long a batch's statement may go unanswered before its connection
/// is given up: the session's `statement_timeout` (20 s, which includes
/// its lock waits) and a margin. Only a connection gone silent — its host
/// lost without closing it, packets dropped on the way — takes this long:
/// the server itself ends the statement within its timeout. Without it the
/// order writer's one connection would wait on such a socket for ever (no
/// TCP keepalive is set), and with it every later order and the batch's
/// key holds. The batch's outcome is then unknown: its orders were
/// answered 503 "retry" at the commit's time limit already, and their keys
/// stay uncertain (`StoreError::outcome_unknown`) until the server has
/// surely ended the statement.
pub const GIVE_UP: Duration = Duration::from_secs(30);

async fn write(
    conn: &mut sqlx::PgConnection,
    batch: &[NewOrder],
) -> Result<Vec<CommitOutcome>, sqlx::Error> {
    let mut outcomes = vec![CommitOutcome::DuplicateKey; batch.len()];
    let mut first_with_key = std::collections::HashSet::new();
    let candidates: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            first_with_key.insert((batch[i].idempotency.client, batch[i].idempotency.key_hash))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(outcomes);
    }
    let text: Vec<OrderText> = batch.iter().map(OrderText::of).collect();
    let claims: Vec<Vec<Param>> = candidates
        .iter()
        .map(|&i| order_rows::idempotency_row(&batch[i], &text[i]))
        .collect();
    let rows: Vec<_> = candidates
        .iter()
        .map(|&i| order_rows::rows(&batch[i], &text[i]))
        .collect();
    let (sql, args) = batch_statement(&claims, rows)?;
    // Not inside a transaction: this one statement is the transaction.
    // PostgreSQL sends its rows as they are made, commits at the protocol's
    // Sync and only then answers ReadyForQuery (or an error, if the commit
    // fails); `fetch_all` returns at ReadyForQuery, never on the rows alone.
    let claimed: std::collections::HashSet<String> = sqlx::query_with(&sql, args)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("order_id"))
        .collect::<Result<_, _>>()
        // Read after the commit: the batch is stored, whatever failed here.
        // Its outcome as far as its orders know is unknown ("retry", which
        // replays), never "nothing was stored".
        .map_err(|e| sqlx::Error::Protocol(format!("the committed batch's answer: {e}")))?;
    for &i in &candidates {
        if claimed.contains(&text[i].id) {
            outcomes[i] = CommitOutcome::Committed;
        }
    }
    Ok(outcomes)
}

/// The batch's one statement: the claim (under the orders' sequence lock),
/// then every table's rows (each order's rows as `order_rows::rows` gives
/// them) filtered to the claimed orders, as `WITH` clauses, parameters
/// numbered across all of them; it returns the claimed orders' ids. A table
/// with no rows (no gift in the batch) is left out.
fn batch_statement(
    claims: &[Vec<Param<'_>>],
    mut rows: Vec<[Vec<Vec<Param<'_>>>; 7]>,
) -> Result<(String, PgArguments), sqlx::Error> {
    let mut args = PgArguments::default();
    args.add(super::postgres::LOCK_ORDERS)
        .map_err(sqlx::Error::Encode)?;
    let claim = unnest_into(
        &order_rows::IDEMPOTENCY_KEYS,
        "WHERE (SELECT pg_advisory_xact_lock($1)::text) IS NOT NULL",
        &format!("{} RETURNING order_id", order_rows::CLAIM_CONFLICT),
        claims,
        &mut args,
    )?;
    let mut clauses = vec![format!("claim AS ({claim})")];
    for (k, table) in order_rows::ORDER_TABLES.iter().enumerate() {
        let table_rows: Vec<Vec<Param>> = rows
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r[k]))
            .collect();
        if !table_rows.is_empty() {
            let key = if table.name == order_rows::ORDERS.name {
                "id"
            } else {
                "order_id"
            };
            let filter = format!("WHERE u.{key} IN (SELECT order_id FROM claim)");
            let insert = unnest_into(table, &filter, "", &table_rows, &mut args)?;
            clauses.push(format!("t{} AS ({insert})", clauses.len() - 1));
        }
    }
    Ok((
        format!("WITH {} SELECT order_id FROM claim", clauses.join(", ")),
        args,
    ))
}

/// `INSERT INTO table (columns) SELECT * FROM unnest($n::t[], …) AS
/// u(columns) filter suffix`, with each column's values bound as one array
/// (the statement's parameters numbered after those already in `args`).
fn unnest_into(
    table: &Table,
    filter: &str,
    suffix: &str,
    rows: &[Vec<Param<'_>>],
    args: &mut PgArguments,
) -> Result<String, sqlx::Error> {
    let first = args.len();
    let mut casts = Vec::with_capacity(table.columns.len());
    for j in 0..table.columns.len() {
        let kind = rows
            .first()
            .and_then(|r| r.get(j))
            .ok_or_else(|| bad(table))?;
        let bound = match kind {
            Param::Int(_) | Param::OptInt(_) => {
                casts.push("int8[]");
                args.add(column(table, rows, j, |p| match p {
                    Param::Int(v) => Some(Some(v)),
                    Param::OptInt(v) => Some(v),
                    _ => None,
                })?)
            }
            Param::Text(_) | Param::OptText(_) => {
                casts.push("text[]");
                args.add(column(table, rows, j, |p| match p {
                    Param::Text(v) => Some(Some(v)),
                    Param::OptText(v) => Some(v),
                    _ => None,
                })?)
            }
            Param::Bytes(_) | Param::OptBytes(_) => {
                casts.push("bytea[]");
                args.add(column(table, rows, j, |p| match p {
                    Param::Bytes(v) => Some(Some(v)),
                    Param::OptBytes(v) => Some(v),
                    _ => None,
                })?)
            }
        };
        bound.map_err(sqlx::Error::Encode)?;
    }
    let arrays: Vec<String> = casts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", first + i + 1))
        .collect();
    let columns = table.columns.join(", ");
    Ok(format!(
        "INSERT INTO {} ({columns}) SELECT * FROM unnest({}) AS u({columns}) {filter} {suffix}",
        table.name,
        arrays.join(", ")
    ))
}

/// Column `j` of `rows` as one array: `pick` takes a value of the
/// column's type (`None` for any other).
fn column<'a, T>(
    table: &Table,
    rows: &[Vec<Param<'a>>],
    j: usize,
    pick: impl Fn(Param<'a>) -> Option<Option<T>>,
) -> Result<Vec<Option<T>>, sqlx::Error> {
    rows.iter()
        .map(|r| r.get(j).copied().and_then(&pick).ok_or_else(|| bad(table)))
        .collect()
}

/// A bug in `order_rows` (a row of the wrong length, a column of two
/// types, no rows), not an outage: a query error (500), not 503.
fn bad(table: &Table) -> sqlx::Error {
    sqlx::Error::Encode(
        format!("the rows of {} do not match its columns' types", table.name).into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring::Keyring;
    use crate::intake::IdempotencyKey;
    use ring::rand::SystemRandom;

    fn order(gift: bool) -> NewOrder {
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let form = crate::intake::seal::tests::form(gift);
        let key = IdempotencyKey::parse(b"k").unwrap();
        crate::intake::seal::seal_order(&rng, &keyring, form, [1; 32], &key, [2; 32]).unwrap()
    }

    /// One table's rows as `unnest_into` writes them, numbered from `$1`.
    fn unnest_insert(table: &Table, rows: &[Vec<Param<'_>>]) -> Result<String, sqlx::Error> {
        unnest_into(table, "", "", rows, &mut PgArguments::default())
    }

    fn rows_of<'a>(orders: &'a [NewOrder], text: &'a [OrderText]) -> Vec<[Vec<Vec<Param<'a>>>; 7]> {
        orders
            .iter()
            .zip(text)
            .map(|(o, t)| order_rows::rows(o, t))
            .collect()
    }

    fn claims_of<'a>(orders: &'a [NewOrder], text: &'a [OrderText]) -> Vec<Vec<Param<'a>>> {
        orders
            .iter()
            .zip(text)
            .map(|(o, t)| order_rows::idempotency_row(o, t))
            .collect()
    }

    /// One insert per table whatever the batch's size, every column one
    /// typed array, in the table's column order.
    #[test]
    fn each_table_is_one_fixed_insert_of_typed_arrays() {
        let orders = [order(true), order(false), order(false)];
        let text: Vec<OrderText> = orders.iter().map(OrderText::of).collect();
        let rows = rows_of(&orders, &text);
        // Consent tags: the gift order has two.
        let tags: Vec<Vec<Param>> = rows.iter().flat_map(|r| r[1].clone()).collect();
        assert_eq!(tags.len(), 4);
        let sql = unnest_insert(&order_rows::CONSENT_TAGS, &tags).unwrap();
        let one = unnest_insert(&order_rows::CONSENT_TAGS, &tags[..1]).unwrap();
        assert_eq!(sql, one, "the statement must not depend on the batch size");
        assert!(sql.starts_with(
            "INSERT INTO consent_tags (id, order_id, subject, basis, product_updates, "
        ));
        assert!(sql.contains(
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], "
        ));
        assert!(sql.contains("$13::int8[], $14::bytea[]) AS u(id, order_id, subject, "));
        // Shipping to a gift recipient has no envelope: NULLs in the
        // arrays, not another statement.
        let shipping: Vec<Vec<Param>> = rows.iter().flat_map(|r| r[3].clone()).collect();
        let sql = unnest_insert(&order_rows::SHIPPING_DETAILS, &shipping).unwrap();
        assert!(sql.contains("$7::bytea[], $8::bytea[])"));
    }

    /// The batch in one statement: the claim under the sequence lock
    /// (`$1`), then every table's rows filtered to the claimed orders, each
    /// table's columns numbered on from the table before, the same text for
    /// any number of orders, the gift recipients' INSERT only when the
    /// batch has a gift, and the claimed ids as its result.
    #[test]
    fn a_batch_is_one_statement_numbered_across_its_tables() {
        let plain = [order(false), order(false)];
        let text: Vec<OrderText> = plain.iter().map(OrderText::of).collect();
        let (sql, args) =
            batch_statement(&claims_of(&plain, &text), rows_of(&plain, &text)).unwrap();
        let (one, _) = batch_statement(
            &claims_of(&plain[..1], &text[..1]),
            rows_of(&plain[..1], &text[..1]),
        )
        .unwrap();
        assert_eq!(sql, one);
        let claim = order_rows::IDEMPOTENCY_KEYS.columns.len();
        let total: usize = order_rows::ORDER_TABLES
            .iter()
            .filter(|t| t.name != "gift_recipients")
            .map(|t| t.columns.len())
            .sum();
        assert_eq!(args.len(), 1 + claim + total);
        assert!(sql.starts_with("WITH claim AS (INSERT INTO idempotency_keys ("));
        assert!(sql.contains(
            "WHERE (SELECT pg_advisory_xact_lock($1)::text) IS NOT NULL \
             ON CONFLICT (client, key_hash) DO NOTHING RETURNING order_id), "
        ));
        assert!(sql.contains("$2::bytea[], $3::bytea[]"));
        assert!(sql.contains("t0 AS (INSERT INTO orders ("));
        assert!(sql.contains("WHERE u.id IN (SELECT order_id FROM claim) )"));
        assert!(sql.contains("t1 AS (INSERT INTO consent_tags ("));
        assert_eq!(
            sql.matches("WHERE u.order_id IN (SELECT order_id FROM claim) )")
                .count(),
            order_rows::ORDER_TABLES.len() - 2,
            "every record table and the tags are filtered to the claim"
        );
        assert!(sql.ends_with(") SELECT order_id FROM claim"));
        assert!(!sql.contains("gift_recipients"));

        let mixed = [order(false), order(true)];
        let text: Vec<OrderText> = mixed.iter().map(OrderText::of).collect();
        let (gift, args) =
            batch_statement(&claims_of(&mixed, &text), rows_of(&mixed, &text)).unwrap();
        assert!(gift.contains("AS (INSERT INTO gift_recipients ("));
        assert_eq!(
            args.len(),
            1 + claim + total + order_rows::GIFT_RECIPIENTS.columns.len()
        );
    }

    #[test]
    fn a_column_of_two_types_is_refused() {
        let rows = vec![
            vec![Param::Text("a"), Param::Int(1)],
            vec![Param::Text("b"), Param::Text("1")],
        ];
        let table = Table {
            name: "t",
            columns: &["a", "b"],
        };
        let error = unnest_insert(&table, &rows).unwrap_err();
        assert!(error.to_string().contains("do not match"), "{error}");
        // A short row, and no rows at all: errors too, not panics.
        let short = vec![
            vec![Param::Text("a"), Param::Int(1)],
            vec![Param::Text("b")],
        ];
        assert!(unnest_insert(&table, &short).is_err());
        assert!(unnest_insert(&table, &[]).is_err());
    }
}
