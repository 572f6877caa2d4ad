//! PostgreSQL's order writer: the group-commit batches of
//! `intake::commit`, written with one fixed statement per table.
//!
//! Through sqlx's `Any` driver a batch was one multi-row `INSERT … VALUES`
//! per table, whose text (and so its parse, plan and prepared statement)
//! changed with every batch size. Here every column of a table is bound as
//! one array and the rows come from `unnest`, so each table has one
//! statement, prepared once per connection, whatever the batch's size.
//! That needs the native PostgreSQL driver (`Any` binds no arrays); the
//! rows and columns are still those of `sql::order_rows`, shared with
//! SQLite's order writer.

use std::time::Duration;

use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions};
use sqlx::{Arguments, Executor, Row};

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
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(session)).await?;
                    Ok(())
                })
            })
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
    for &i in &accepted {
        outcomes[i] = CommitOutcome::Committed;
    }
    let mut rows: Vec<_> = accepted
        .iter()
        .map(|&i| order_rows::rows(&batch[i], &text[i]))
        .collect();
    for (k, table) in order_rows::ORDER_TABLES.iter().enumerate() {
        let table_rows: Vec<Vec<Param>> = rows
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r[k]))
            .collect();
        if table_rows.is_empty() {
            continue;
        }
        let (sql, args) = unnest_insert(table, "", &table_rows)?;
        sqlx::query_with(&sql, args).execute(&mut *tx).await?;
    }
    Ok(outcomes)
}

/// `INSERT INTO table (columns) SELECT * FROM unnest($1::t[], …) suffix`
/// with each column's values bound as one array.
fn unnest_insert(
    table: &Table,
    suffix: &str,
    rows: &[Vec<Param<'_>>],
) -> Result<(String, PgArguments), sqlx::Error> {
    let mut args = PgArguments::default();
    let mut casts = Vec::with_capacity(table.columns.len());
    for j in 0..table.columns.len() {
        let column = rows.iter().map(|r| r[j]);
        let kind = rows[0][j];
        let bound = match kind {
            Param::Int(_) | Param::OptInt(_) => {
                casts.push("int8[]");
                let v: Vec<Option<i64>> = column
                    .map(|p| match p {
                        Param::Int(v) => Ok(Some(v)),
                        Param::OptInt(v) => Ok(v),
                        _ => Err(mixed(table)),
                    })
                    .collect::<Result<_, _>>()?;
                args.add(v)
            }
            Param::Text(_) | Param::OptText(_) => {
                casts.push("text[]");
                let v: Vec<Option<&str>> = column
                    .map(|p| match p {
                        Param::Text(v) => Ok(Some(v)),
                        Param::OptText(v) => Ok(v),
                        _ => Err(mixed(table)),
                    })
                    .collect::<Result<_, _>>()?;
                args.add(v)
            }
            Param::Bytes(_) | Param::OptBytes(_) => {
                casts.push("bytea[]");
                let v: Vec<Option<&[u8]>> = column
                    .map(|p| match p {
                        Param::Bytes(v) => Ok(Some(v)),
                        Param::OptBytes(v) => Ok(v),
                        _ => Err(mixed(table)),
                    })
                    .collect::<Result<_, _>>()?;
                args.add(v)
            }
        };
        bound.map_err(sqlx::Error::Encode)?;
    }
    let arrays: Vec<String> = casts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}", i + 1))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({}) {suffix}",
        table.name,
        table.columns.join(", "),
        arrays.join(", ")
    );
    Ok((sql, args))
}

fn mixed(table: &Table) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "a column of {} is bound with values of two types",
        table.name
    ))
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
        assert!(error.to_string().contains("two types"), "{error}");
    }
}
