//! PostgreSQL's order writer: the group-commit batches of
//! `intake::commit`, each in one transaction of two fixed statements.
//!
//! 1. The claim: the batch's idempotency rows, `ON CONFLICT DO NOTHING
//!    RETURNING order_id` — which orders may be written.
//! 2. The rows of those orders: one `INSERT … SELECT * FROM unnest(…)` per
//!    table, all in one statement as data-modifying `WITH` clauses (the
//!    foreign keys are checked at the end of the statement, when every
//!    table has its rows).
//!
//! Every column is bound as one array, so the statements' text does not
//! change with the batch's size (only with whether it holds a gift
//! order): each is parsed, planned and prepared once per connection.
//! Through sqlx's `Any` driver a batch was a multi-row `INSERT … VALUES`
//! per table, a new text for every batch size, and one round trip each.
//! Arrays need the native PostgreSQL driver (`Any` binds none), hence a
//! pool of its own. The rows and columns are those of `sql::order_rows`,
//! shared with SQLite's order writer.

use sqlx::postgres::{PgArguments, PgPool, Postgres};
use sqlx::{Arguments, Row};

use super::StoreError;
use super::rows::{CommitOutcome, NewOrder};
use super::sql::order_rows::{self, OrderText, Param, Table};

/// The handle: a pool of its own, with the store's session settings. One
/// connection: group commit writes one batch at a time.
pub struct OrderWriter {
    pool: PgPool,
}

impl OrderWriter {
    /// Connects to `url` (already migrated and checked for durability by
    /// the store's own pool) with `session` settings on every connection.
    pub async fn open(url: &str, session: &'static str) -> Result<Self, StoreError> {
        let pool = super::postgres::pool_options::<Postgres>(1, session)
            // No ping before each batch (a round trip of its own): a
            // connection that broke fails the batch's first statement,
            // which answers 503 "retry" like any outage.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                target: super::postgres::redact(url),
                source,
            })?;
        Ok(OrderWriter { pool })
    }

    pub fn is_running(&self) -> bool {
        !self.pool.is_closed()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes `batch` in one transaction under the orders' sequence lock
    /// (see `store::postgres`), so that `orders.seq` follows commit order.
    /// The idempotency keys are claimed first (`ON CONFLICT DO NOTHING
    /// RETURNING`); an order whose key is taken — by an earlier order of
    /// the same batch, or already stored — writes nothing and is
    /// `DuplicateKey`, exactly as if the requests had come one by one.
    pub async fn commit(&self, batch: &[NewOrder]) -> Result<Vec<CommitOutcome>, StoreError> {
        // The wait for the connection and the lock: the metric "database
        // waits".
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await.map_err(StoreError::from_sqlx)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
            .bind(super::postgres::LOCK_ORDERS)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_sqlx)?;
        crate::telemetry::pool_wait(started.elapsed());
        let outcomes = write(&mut tx, batch).await.map_err(StoreError::from_sqlx)?;
        tx.commit().await.map_err(StoreError::from_sqlx)?;
        Ok(outcomes)
    }
}

async fn write(
    tx: &mut sqlx::PgConnection,
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
    let (sql, args) = unnest_insert(
        &order_rows::IDEMPOTENCY_KEYS,
        &format!("{} RETURNING order_id", order_rows::CLAIM_CONFLICT),
        &claims,
    )?;
    let claimed: std::collections::HashSet<String> = sqlx::query_with(&sql, args)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("order_id"))
        .collect::<Result<_, _>>()?;
    let accepted: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| claimed.contains(&text[i].id))
        .collect();
    if accepted.is_empty() {
        return Ok(outcomes);
    }
    for &i in &accepted {
        outcomes[i] = CommitOutcome::Committed;
    }
    let rows: Vec<_> = accepted
        .iter()
        .map(|&i| order_rows::rows(&batch[i], &text[i]))
        .collect();
    let (sql, args) = insert_all(rows)?;
    sqlx::query_with(&sql, args).execute(&mut *tx).await?;
    Ok(outcomes)
}

/// One statement writing every table's rows (each order's rows as
/// `order_rows::rows` gives them): `WITH t0 AS (INSERT …), t1 AS (INSERT
/// …), … SELECT 1`, parameters numbered across all of them. A table with
/// no rows (no gift in the batch) is left out.
fn insert_all(
    mut rows: Vec<[Vec<Vec<Param<'_>>>; 7]>,
) -> Result<(String, PgArguments), sqlx::Error> {
    let mut args = PgArguments::default();
    let mut inserts = Vec::with_capacity(order_rows::ORDER_TABLES.len());
    for (k, table) in order_rows::ORDER_TABLES.iter().enumerate() {
        let table_rows: Vec<Vec<Param>> = rows
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r[k]))
            .collect();
        if !table_rows.is_empty() {
            let insert = unnest_into(table, "", &table_rows, &mut args)?;
            inserts.push(format!("t{} AS ({insert})", inserts.len()));
        }
    }
    Ok((format!("WITH {} SELECT 1", inserts.join(", ")), args))
}

/// `INSERT INTO table (columns) SELECT * FROM unnest($1::t[], …) suffix`
/// with each column's values bound as one array.
fn unnest_insert(
    table: &Table,
    suffix: &str,
    rows: &[Vec<Param<'_>>],
) -> Result<(String, PgArguments), sqlx::Error> {
    let mut args = PgArguments::default();
    let sql = unnest_into(table, suffix, rows, &mut args)?;
    Ok((sql, args))
}

/// As [`unnest_insert`], adding to `args`: the statement's parameters are
/// numbered after those already there.
fn unnest_into(
    table: &Table,
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
    Ok(format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({}) {suffix}",
        table.name,
        table.columns.join(", "),
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

    /// One statement per table whatever the batch's size, every column one
    /// typed array, in the table's column order.
    #[test]
    fn each_table_is_one_fixed_statement_of_typed_arrays() {
        let orders = [order(true), order(false), order(false)];
        let text: Vec<OrderText> = orders.iter().map(OrderText::of).collect();
        let rows: Vec<_> = orders
            .iter()
            .zip(&text)
            .map(|(o, t)| order_rows::rows(o, t))
            .collect();
        // Consent tags: the gift order has two.
        let tags: Vec<Vec<Param>> = rows.iter().flat_map(|r| r[1].clone()).collect();
        assert_eq!(tags.len(), 4);
        let (sql, _) = unnest_insert(&order_rows::CONSENT_TAGS, "", &tags).unwrap();
        let (one, _) = unnest_insert(&order_rows::CONSENT_TAGS, "", &tags[..1]).unwrap();
        assert_eq!(sql, one, "the statement must not depend on the batch size");
        assert!(sql.starts_with(
            "INSERT INTO consent_tags (id, order_id, subject, basis, product_updates, "
        ));
        assert!(sql.contains(
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], "
        ));
        assert!(sql.ends_with("$13::int8[], $14::bytea[]) "));
        // Shipping to a gift recipient has no envelope: NULLs in the
        // arrays, not another statement.
        let shipping: Vec<Vec<Param>> = rows.iter().flat_map(|r| r[3].clone()).collect();
        let (sql, _) = unnest_insert(&order_rows::SHIPPING_DETAILS, "", &shipping).unwrap();
        assert!(sql.contains("$7::bytea[], $8::bytea[])"));
    }

    /// The batch's rows in one statement: every table's columns numbered
    /// on from the table before, the same text for any number of orders,
    /// and the gift recipients' INSERT only when the batch has a gift.
    #[test]
    fn a_batch_is_one_statement_numbered_across_its_tables() {
        fn rows_of<'a>(
            orders: &'a [NewOrder],
            text: &'a [OrderText],
        ) -> Vec<[Vec<Vec<Param<'a>>>; 7]> {
            orders
                .iter()
                .zip(text)
                .map(|(o, t)| order_rows::rows(o, t))
                .collect()
        }
        let plain = [order(false), order(false)];
        let text: Vec<OrderText> = plain.iter().map(OrderText::of).collect();
        let (sql, args) = insert_all(rows_of(&plain, &text)).unwrap();
        let (one, _) = insert_all(rows_of(&plain[..1], &text[..1])).unwrap();
        assert_eq!(sql, one);
        let total: usize = order_rows::ORDER_TABLES
            .iter()
            .filter(|t| t.name != "gift_recipients")
            .map(|t| t.columns.len())
            .sum();
        assert_eq!(args.len(), total);
        assert!(sql.starts_with("WITH t0 AS (INSERT INTO orders ("));
        assert!(sql.ends_with(&format!("${total}::bytea[]) ) SELECT 1")));
        assert!(!sql.contains("gift_recipients"));
        // Orders take $1..$11, so the consent tags begin at $12.
        assert!(sql.contains("t1 AS (INSERT INTO consent_tags ("));
        assert!(sql.contains("unnest($12::text[], $13::text[]"));

        let mixed = [order(false), order(true)];
        let text: Vec<OrderText> = mixed.iter().map(OrderText::of).collect();
        let (gift, args) = insert_all(rows_of(&mixed, &text)).unwrap();
        assert!(gift.contains("AS (INSERT INTO gift_recipients ("));
        assert_eq!(
            args.len(),
            total + order_rows::GIFT_RECIPIENTS.columns.len()
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
        let error = unnest_insert(&table, "", &rows).unwrap_err();
        assert!(error.to_string().contains("do not match"), "{error}");
        // A short row, and no rows at all: errors too, not panics.
        let short = vec![
            vec![Param::Text("a"), Param::Int(1)],
            vec![Param::Text("b")],
        ];
        assert!(unnest_insert(&table, "", &short).is_err());
        assert!(unnest_insert(&table, "", &[]).is_err());
    }
}
