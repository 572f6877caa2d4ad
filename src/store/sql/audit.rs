//! SQLite queries of the audit: read-only, paged, raw (the verifier in
//! `crate::audit::verify` judges what they return).

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::super::StoreError;
use super::super::rows::{
    AuditBatch, AuditExtra, AuditOrder, AuditRecord, ClearRow, ConsentStats, RawTag, Totals,
};
use super::{Engine, WriteOrder, order_rows};
use crate::crypto::envelope::Envelope;
use crate::domain::consent::Purposes;

fn err(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

/// SQL for [`crate::consent::withdrawal_counts`]: the withdrawal whose
/// `effective_at` is `effective` counts against the checkout captured at
/// `captured` when it is effective no earlier than
/// [`CAPTURED_AT_SKEW`](crate::domain::order::CAPTURED_AT_SKEW) before the
/// capture. Both are our fixed-width RFC 3339 text (milliseconds, `Z`),
/// and each engine writes the moved time back in that form. A capture time
/// not in that form, or not a real time, counts as covered, as in Rust
/// (fail closed) — never a query error that would stop the audit's counts
/// or an export (PostgreSQL: `consent_capture_less`, migration 0021).
pub(crate) fn withdrawal_counts_sql(engine: Engine, effective: &str, captured: &str) -> String {
    let minutes = crate::domain::order::CAPTURED_AT_SKEW.whole_minutes();
    match engine {
        // Only a capture time that comes back the same text: SQLite reads
        // `2026-02-31` as 3 March and `T24:00` as the next day (once a
        // modifier makes it compute the time: without one it echoes them).
        Engine::Sqlite => format!(
            "coalesce({effective} >= CASE WHEN {captured} GLOB '{form}'
                AND strftime('%Y-%m-%dT%H:%M:%fZ', {captured}, '+0 minutes') = {captured}
                THEN strftime('%Y-%m-%dT%H:%M:%fZ', {captured}, '-{minutes} minutes') END, 1)",
            form = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z"
        ),
        Engine::Postgres => {
            format!("coalesce({effective} >= consent_capture_less({captured}, {minutes}), true)")
        }
    }
}

/// `expr AS alias`, a text column read as its bytes. SQLite's TEXT can hold
/// bytes that are not UTF-8 (someone with write access can put them
/// there), and the driver fails the whole query on one such value: the
/// audit would stop instead of naming the row.
pub(super) fn bytes_of(engine: Engine, expr: &str, alias: &str) -> String {
    match engine {
        Engine::Sqlite => format!("CAST({expr} AS BLOB) AS {alias}"),
        Engine::Postgres => format!("convert_to({expr}, 'UTF8') AS {alias}"),
    }
}

/// A text column as text, whether the query read it with [`bytes_of`] (the
/// audit's) or plainly (the same row readers serve the consent history and
/// the marketing audience). Bytes that are not UTF-8 become U+FFFD, which
/// no MAC over the stored text matches and no id equals: the row is named
/// by the verifier, not skipped.
pub(super) fn text(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    Ok(opt_text(row, column)?.unwrap_or_default())
}

fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<Vec<u8>>, _>(column) {
        Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
        Err(_) => row.try_get(column).map_err(err),
    }
}

/// The select list of `columns`, the text ones (`texts`) as bytes.
pub(super) fn select_list(engine: Engine, columns: &[&str], texts: &[&str]) -> String {
    columns
        .iter()
        .map(|c| {
            if texts.contains(c) {
                bytes_of(engine, c, c)
            } else {
                (*c).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which orders a batch covers.
pub enum Selector<'a> {
    /// After `seq` (`None`: from the first, whatever its `seq`).
    After {
        seq: Option<i64>,
        limit: u32,
    },
    One(&'a str),
}

pub async fn batch(
    pool: &AnyPool,
    engine: Engine,
    selector: Selector<'_>,
) -> Result<AuditBatch, StoreError> {
    // What the order writer wrote (`order_rows`), and what fulfillment
    // added since.
    let orders_columns: Vec<&str> = ["seq"]
        .iter()
        .chain(order_rows::ORDERS.columns)
        .chain(&["carrier", "tracking", "dispatched_at", "dispatch_mac"])
        .copied()
        .collect();
    let columns = select_list(
        engine,
        &orders_columns,
        &[
            "id",
            "created_at",
            "status",
            "storefront_ref",
            "currency",
            "items",
            "consent_tag_id",
            "carrier",
            "tracking",
            "dispatched_at",
        ],
    );
    let orders = match selector {
        Selector::After { seq, limit } => {
            // No lower bound on the first page: `seq` is under no MAC, and
            // an order edited to any value, `i64::MIN` included, is walked.
            match seq {
                Some(seq) => {
                    sqlx::query(&format!(
                        "SELECT {columns} FROM orders WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .bind(seq)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await
                }
                None => {
                    sqlx::query(&format!(
                        "SELECT {columns} FROM orders ORDER BY seq LIMIT $1"
                    ))
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await
                }
            }
        }
        Selector::One(id) => {
            sqlx::query(&format!("SELECT {columns} FROM orders WHERE id = $1"))
                .bind(id)
                .fetch_all(pool)
                .await
        }
    }
    .map_err(err)?;
    let orders: Vec<AuditOrder> = orders
        .iter()
        .map(|r| -> Result<AuditOrder, StoreError> {
            Ok(AuditOrder {
                seq: r.try_get("seq").map_err(err)?,
                id: text(r, "id")?,
                created_at: text(r, "created_at")?,
                status: text(r, "status")?,
                storefront_ref: opt_text(r, "storefront_ref")?,
                currency: text(r, "currency")?,
                items: text(r, "items")?,
                total_minor: r.try_get("total_minor").map_err(err)?,
                consent_tag_id: text(r, "consent_tag_id")?,
                gift: r.try_get::<i64, _>("gift").map_err(err)? != 0,
                client_fingerprint: r.try_get("client_fingerprint").map_err(err)?,
                mac: r.try_get("mac").map_err(err)?,
                carrier: opt_text(r, "carrier")?,
                tracking: opt_text(r, "tracking")?,
                dispatched_at: opt_text(r, "dispatched_at")?,
                dispatch_mac: r.try_get("dispatch_mac").map_err(err)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let (Some(first), Some(last)) = (orders.first(), orders.last()) else {
        return Ok(AuditBatch::default());
    };
    // Records of the orders in [first.seq, last.seq].
    let (lo, hi) = (first.seq, last.seq);
    let scope = "order_id IN (SELECT id FROM orders WHERE seq BETWEEN $1 AND $2)";
    let mut records = Vec::new();
    // Every column the order writer wrote to each record table; of them,
    // these are text (read as bytes).
    const RECORD_TEXTS: [&str; 6] = [
        "id",
        "order_id",
        "consent_tag_id",
        "ship_to",
        "brand",
        "last4",
    ];
    for table in [
        &order_rows::BILLING_DETAILS,
        &order_rows::SHIPPING_DETAILS,
        &order_rows::GIFT_RECIPIENTS,
        &order_rows::PAYMENT_CARDS,
        &order_rows::CONTACT_EMAILS,
    ] {
        let sql = format!(
            "SELECT {} FROM {} WHERE {scope} ORDER BY order_id",
            select_list(engine, table.columns, &RECORD_TEXTS),
            table.name
        );
        let rows = sqlx::query(&sql)
            .bind(lo)
            .bind(hi)
            .fetch_all(pool)
            .await
            .map_err(err)?;
        for row in &rows {
            records.push(record(table.name, row)?);
        }
    }
    let tag_texts = [
        "id",
        "order_id",
        "subject",
        "basis",
        "policy_version",
        "captured_at",
        "channel",
    ];
    let tag_rows = sqlx::query(&format!(
        "SELECT {} FROM consent_tags WHERE {scope}",
        select_list(engine, order_rows::CONSENT_TAGS.columns, &tag_texts)
    ))
    .bind(lo)
    .bind(hi)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let tags = tag_rows.iter().map(raw_tag).collect::<Result<_, _>>()?;
    Ok(AuditBatch {
        orders,
        records,
        tags,
    })
}

fn record(table: &'static str, row: &AnyRow) -> Result<AuditRecord, StoreError> {
    let envelope = match super::read_envelope(
        row,
        ["format_version", "kek_version", "wrapped_dek", "ciphertext"],
    )? {
        super::EnvelopeColumns::Sealed(e) => Ok(Some(e)),
        super::EnvelopeColumns::Empty => Ok(None),
        super::EnvelopeColumns::Damaged(what) => Err(what),
    };
    let extra = match table {
        "billing_details" | "contact_emails" => AuditExtra::Email {
            email_blind_index: row.try_get("email_blind_index").map_err(err)?,
            blind_index_version: row.try_get("blind_index_version").map_err(err)?,
        },
        "shipping_details" => AuditExtra::Shipping {
            ship_to: text(row, "ship_to")?,
        },
        "payment_cards" => AuditExtra::Card {
            brand: text(row, "brand")?,
            last4: text(row, "last4")?,
            fingerprint: row.try_get("fingerprint").map_err(err)?,
            fingerprint_key_version: row.try_get("fingerprint_key_version").map_err(err)?,
        },
        _ => AuditExtra::Recipient,
    };
    Ok(AuditRecord {
        table,
        id: text(row, "id")?,
        order_id: text(row, "order_id")?,
        consent_tag_id: text(row, "consent_tag_id")?,
        envelope,
        extra,
    })
}

/// An envelope that must be present and whole.
fn sealed(row: &AnyRow, names: [&str; 4]) -> Result<Envelope, StoreError> {
    match super::read_envelope(row, names)? {
        super::EnvelopeColumns::Sealed(e) => Ok(e),
        super::EnvelopeColumns::Empty => Err(StoreError::Corrupt("envelope missing")),
        super::EnvelopeColumns::Damaged(what) => Err(StoreError::Corrupt(what)),
    }
}

fn raw_tag(row: &AnyRow) -> Result<RawTag, StoreError> {
    let mut purposes = [0i64; 5];
    for (slot, name) in purposes.iter_mut().zip(Purposes::NAMES) {
        *slot = row.try_get(name).map_err(err)?;
    }
    Ok(RawTag {
        id: text(row, "id")?,
        order_id: text(row, "order_id")?,
        subject: text(row, "subject")?,
        basis: text(row, "basis")?,
        purposes,
        policy_version: text(row, "policy_version")?,
        captured_at: text(row, "captured_at")?,
        channel: text(row, "channel")?,
        mac_key_version: row.try_get("mac_key_version").map_err(err)?,
        mac: row.try_get("mac").map_err(err)?,
    })
}

/// Every table and its columns (name, declared type).
pub async fn schema(
    pool: &AnyPool,
    engine: Engine,
) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
    match engine {
        Engine::Sqlite => super::super::sqlite::schema(pool).await,
        Engine::Postgres => super::super::postgres::schema(pool).await,
    }
}

/// Up to `limit` rows of `table` after `after_rowid` (a physical position
/// the engine defines), each clear column as bytes read lossily as text.
pub async fn clear_rows(
    pool: &AnyPool,
    engine: Engine,
    table: &str,
    columns: &[String],
    after_rowid: Option<i64>,
    limit: u32,
) -> Result<Vec<ClearRow>, StoreError> {
    match engine {
        Engine::Sqlite => {
            super::super::sqlite::clear_rows(pool, table, columns, after_rowid, limit).await
        }
        Engine::Postgres => {
            super::super::postgres::clear_rows(pool, table, columns, after_rowid, limit).await
        }
    }
}

pub async fn totals(pool: &AnyPool) -> Result<Totals, StoreError> {
    let mut t = Totals::default();
    for table in [
        "orders",
        "billing_details",
        "shipping_details",
        "gift_recipients",
        "payment_cards",
        "consent_tags",
        "contact_emails",
        "consent_events",
        "idempotency_keys",
        "access_log",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .map_err(err)?;
        t.records
            .insert(table.to_owned(), u64::try_from(n).unwrap_or(0));
    }
    t.orders = t.records.get("orders").copied().unwrap_or(0);
    for (class, table) in [
        ("card", "payment_cards"),
        ("billing", "billing_details"),
        ("shipping", "shipping_details"),
        ("recipient", "gift_recipients"),
        ("contact", "contact_emails"),
    ] {
        let rows = sqlx::query(&format!(
            "SELECT kek_version, count(*) AS n FROM {table} WHERE kek_version IS NOT NULL GROUP BY kek_version"
        ))
        .fetch_all(pool)
        .await
        .map_err(err)?;
        let mut versions = BTreeMap::new();
        for r in rows {
            let v: i64 = r.try_get("kek_version").map_err(err)?;
            let n: i64 = r.try_get("n").map_err(err)?;
            // A version is a small positive number; anything else (an
            // edited column: it could hold a card number) is counted as
            // `invalid`, never quoted as a key of the report.
            let version = u32::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .map_or_else(|| "invalid".to_owned(), |v| v.to_string());
            *versions.entry(version).or_insert(0) += u64::try_from(n).unwrap_or(0);
        }
        t.kek_versions.insert(class.to_owned(), versions);
    }
    Ok(t)
}

/// Every (subject, order) pair of the consent histories, reached as the
/// audience export and the consent proof reach them ([`subject_orders`]):
/// through the order's contact record, or the contact purge that kept its
/// blind index. (Through billing records, as before, a purged order's
/// latest "no" dropped out and an older "yes" was counted.)
const SUBJECT_ORDERS: &str = "SELECT email_blind_index AS bi, order_id FROM contact_emails
     UNION ALL
     SELECT email_blind_index AS bi, order_id FROM purges
      WHERE class = 'contact' AND email_blind_index IS NOT NULL";

/// Counted as the export counts: customers with an address on file (a
/// contact record), their latest choice ranked over every order of their
/// history, purged ones included.
pub async fn consent_stats(pool: &AnyPool, engine: Engine) -> Result<ConsentStats, StoreError> {
    let customers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT email_blind_index) FROM contact_emails")
            .fetch_one(pool)
            .await
            .map_err(err)?;
    let customers = u64::try_from(customers).unwrap_or(0);
    let mut stats = ConsentStats {
        customers,
        ..ConsentStats::default()
    };
    for name in Purposes::NAMES {
        // `name` is one of five fixed column names. Effective consent: the
        // customer's latest checkout tag grants it and no withdrawal since.
        let counts = withdrawal_counts_sql(engine, "e.effective_at", "t.captured_at");
        let consenting: i64 = sqlx::query_scalar(&format!(
            "WITH ranked AS (
                SELECT r.bi, o.seq,
                       row_number() OVER (PARTITION BY r.bi
                                          ORDER BY t.captured_at DESC, t.id DESC) AS rn
                  FROM ({SUBJECT_ORDERS}) AS r
                  JOIN orders o ON o.id = r.order_id
                  JOIN consent_tags t ON t.id = o.consent_tag_id),
             latest AS (SELECT bi, seq FROM ranked
                         WHERE rn = 1
                           AND EXISTS (SELECT 1 FROM contact_emails c
                                        WHERE c.email_blind_index = ranked.bi))
             SELECT count(*) FROM latest l
               JOIN orders o ON o.seq = l.seq
               JOIN consent_tags t ON t.id = o.consent_tag_id
              WHERE t.{name} = 1
                AND NOT EXISTS (SELECT 1 FROM consent_events e
                                 WHERE e.email_blind_index = l.bi AND e.{name} = 1
                                   AND {counts})"
        ))
        .fetch_one(pool)
        .await
        .map_err(err)?;
        let opted_out: i64 = sqlx::query_scalar(&format!(
            "SELECT count(DISTINCT email_blind_index) FROM consent_events WHERE {name} = 1"
        ))
        .fetch_one(pool)
        .await
        .map_err(err)?;
        let consenting = u64::try_from(consenting).unwrap_or(0);
        stats.consenting.insert(name.to_owned(), consenting);
        stats
            .not_consenting
            .insert(name.to_owned(), customers.saturating_sub(consenting));
        stats
            .opted_out
            .insert(name.to_owned(), u64::try_from(opted_out).unwrap_or(0));
    }
    Ok(stats)
}

// ---- consent life cycle (the queries live here with the other consent
// statistics) ----

pub async fn append_consent_event(
    writer: &super::Writer,
    engine: Engine,
    mut e: super::super::rows::ConsentEventRow,
    sealer: &crate::consent::EventSealer<'_>,
) -> Result<(), StoreError> {
    let mut tx = engine
        .begin_write(writer, WriteOrder::ConsentEvents)
        .await?;
    let head = sqlx::query("SELECT seq, mac FROM consent_events_head WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
    let (seq, prev_mac) = match head {
        None => (0i64, vec![0u8; 32]),
        Some(r) => (
            r.try_get("seq").map_err(err)?,
            r.try_get("mac").map_err(err)?,
        ),
    };
    // A withdrawal counts against every checkout with `captured_at <=
    // effective_at`. Both times are read from clocks, this process's and
    // the capturing one's: if the latter ran ahead, an opt-out recorded
    // after the checkout would seem to precede it and be ignored. So it
    // takes effect no earlier than the latest checkout committed before it.
    let latest: Option<String> = sqlx::query_scalar(&format!(
        "SELECT max(t.captured_at) FROM {} c
           JOIN orders o ON o.id = c.order_id
           JOIN consent_tags t ON t.id = o.consent_tag_id",
        subject_orders("$1")
    ))
    .bind(&e.email_blind_index)
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    if let Some(latest) = latest.filter(|latest| *latest > e.effective_at) {
        e.effective_at = latest;
    }
    e.seq = seq + 1;
    e.prev_mac = prev_mac;
    e.mac = sealer.mac(&e).to_vec();
    let r = e.reference.as_ref();
    sqlx::query(
        "INSERT INTO consent_events (seq, id, email_blind_index, blind_index_version, kind, product_updates,
            new_offerings, partnerships, special_offers, third_party_sharing, channel, received_at,
            effective_at, recorded_at, reference_format_version, reference_kek_version,
            reference_wrapped_dek, reference_ciphertext, mac_key_version, prev_mac, mac)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
    )
    .bind(e.seq)
    .bind(&e.id)
    .bind(&e.email_blind_index)
    .bind(e.blind_index_version)
    .bind(&e.kind)
    .bind(e.purposes[0])
    .bind(e.purposes[1])
    .bind(e.purposes[2])
    .bind(e.purposes[3])
    .bind(e.purposes[4])
    .bind(&e.channel)
    .bind(&e.received_at)
    .bind(&e.effective_at)
    .bind(&e.recorded_at)
    .bind(r.map(|r| i64::from(r.format_version)))
    .bind(r.map(|r| i64::from(r.kek_version)))
    .bind(r.map(|r| r.wrapped_dek.as_slice()))
    .bind(r.map(|r| r.ciphertext.as_slice()))
    .bind(e.mac_key_version)
    .bind(&e.prev_mac)
    .bind(&e.mac)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    sqlx::query(
        "INSERT INTO consent_events_head (id, seq, mac, head_mac) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, mac = excluded.mac, head_mac = excluded.head_mac",
    )
    .bind(e.seq)
    .bind(&e.mac)
    .bind(sealer.head_mac(e.seq, &e.mac).as_slice())
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(())
}

pub async fn consent_events_head(
    pool: &AnyPool,
) -> Result<Option<(i64, Vec<u8>, Vec<u8>)>, StoreError> {
    let row = sqlx::query("SELECT seq, mac, head_mac FROM consent_events_head WHERE id = 1")
        .fetch_optional(pool)
        .await
        .map_err(err)?;
    row.map(|r| {
        Ok((
            r.try_get("seq").map_err(err)?,
            r.try_get("mac").map_err(err)?,
            r.try_get("head_mac").map_err(err)?,
        ))
    })
    .transpose()
}

/// Every order the consent history of the subject `bi` (an SQL expression:
/// a parameter, or an outer query's column) reaches: through its contact
/// record, or, once that was purged, through the purge that kept the blind
/// index (migration 0009 / 0012) — so purging the order with a customer's
/// latest choice never brings an older one back. One column, `order_id`.
/// The subject is matched inside each branch, so each is a search of its
/// blind-index index even where `bi` comes from an outer query (SQLite
/// would otherwise build the whole union, every contact record, first).
fn subject_orders(bi: &str) -> String {
    format!(
        "(SELECT order_id FROM contact_emails WHERE email_blind_index = {bi}
          UNION ALL
          SELECT order_id FROM purges
           WHERE class = 'contact' AND email_blind_index = {bi})"
    )
}

/// One chunk of an audience export (see [`Store::audience`]): the
/// subjects after `after` in blind-index order, at most `subjects` of them,
/// and of those the ones to export.
///
/// [`Store::audience`]: crate::store::Store::audience
pub async fn audience(
    pool: &AnyPool,
    engine: Engine,
    purpose: &'static str,
    after: &[u8],
    subjects: u32,
) -> Result<super::super::rows::AudienceChunk, StoreError> {
    if !Purposes::NAMES.contains(&purpose) {
        return Err(StoreError::Corrupt("unknown purpose"));
    }
    // The chunk's subjects: customers with a contact record to export (one
    // whose every contact record was purged has no address). A walk of
    // the blind-index index from the cursor, `subjects` distinct values.
    // A blind index of another length than HMAC-SHA256's is no subject
    // (edited in the database; the audit names it): left out, rather than
    // ending every export that reaches it.
    let scanned: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT DISTINCT email_blind_index FROM contact_emails
          WHERE email_blind_index > $1 AND length(email_blind_index) = 32
          ORDER BY email_blind_index
          LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(subjects))
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let Some(last) = scanned.last().cloned() else {
        return Ok(super::super::rows::AudienceChunk {
            rows: Vec::new(),
            scanned: 0,
            last: None,
        });
    };
    // Each subject's latest checkout (by capture time, over every order
    // with its email, purged ones included: purging the order with a
    // customer's latest choice never brings an older one back) — found per
    // subject through the blind-index indexes, so a page costs what its
    // subjects' orders cost, not the whole table. Exported when that
    // checkout's tag grants `purpose` and no withdrawal of it came after.
    // `purpose` is one of five fixed column names (checked above). The
    // range `(after, last]` holds exactly the subjects scanned above (a
    // customer new in it since is evaluated too, and not skipped).
    let sql = format!(
        "WITH subjects AS (
            SELECT DISTINCT email_blind_index AS bi FROM contact_emails
             WHERE email_blind_index > $1 AND email_blind_index <= $2
               AND length(email_blind_index) = 32),
         latest AS (
            SELECT s.bi,
                   (SELECT o.seq FROM {orders} c
                      JOIN orders o ON o.id = c.order_id
                      JOIN consent_tags t ON t.id = o.consent_tag_id
                     ORDER BY t.captured_at DESC, t.id DESC
                     LIMIT 1) AS seq
              FROM subjects s)
         SELECT c.email_blind_index, c.id AS contact_id, c.order_id AS contact_order_id,
                c.format_version, c.kek_version, c.wrapped_dek, c.ciphertext, t.*
           FROM latest l
           JOIN orders o ON o.seq = l.seq
           JOIN contact_emails c ON c.order_id = o.id
           JOIN consent_tags t ON t.id = o.consent_tag_id
          WHERE t.{purpose} = 1
            AND NOT EXISTS (SELECT 1 FROM consent_events e
                             WHERE e.email_blind_index = l.bi AND e.{purpose} = 1
                               AND {counts})
          ORDER BY l.bi",
        orders = subject_orders("s.bi"),
        counts = withdrawal_counts_sql(engine, "e.effective_at", "t.captured_at"),
    );
    let rows = sqlx::query(&sql)
        .bind(after)
        .bind(&last)
        .fetch_all(pool)
        .await
        .map_err(err)?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(super::super::rows::AudienceRow {
                email_blind_index: r.try_get("email_blind_index").map_err(err)?,
                contact_id: r.try_get("contact_id").map_err(err)?,
                // Not `order_id`: `t.*` holds the tag's own, which the
                // audience checks against this one.
                order_id: r.try_get("contact_order_id").map_err(err)?,
                envelope: sealed(
                    r,
                    ["format_version", "kek_version", "wrapped_dek", "ciphertext"],
                )?,
                tag: raw_tag(r)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(super::super::rows::AudienceChunk {
        rows,
        scanned: u32::try_from(scanned.len()).unwrap_or(u32::MAX),
        last: Some(last),
    })
}

pub async fn consent_history(
    pool: &AnyPool,
    bi: &[u8],
) -> Result<super::super::rows::ConsentHistory, StoreError> {
    let sql = format!(
        "SELECT t.*, c.order_id AS via_order FROM {} c
           JOIN orders o ON o.id = c.order_id
           JOIN consent_tags t ON t.id = o.consent_tag_id
          ORDER BY t.captured_at, t.id",
        subject_orders("$1")
    );
    let rows = sqlx::query(&sql)
        .bind(bi)
        .fetch_all(pool)
        .await
        .map_err(err)?;
    let tags = rows.iter().map(raw_tag).collect::<Result<Vec<_>, _>>()?;
    let via_orders = rows
        .iter()
        .map(|r| r.try_get::<String, _>("via_order").map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    let events =
        sqlx::query("SELECT * FROM consent_events WHERE email_blind_index = $1 ORDER BY seq")
            .bind(bi)
            .fetch_all(pool)
            .await
            .map_err(err)?
            .iter()
            .map(event_row)
            .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(super::super::rows::ConsentHistory {
        tags,
        via_orders,
        events,
    })
}

fn event_row(r: &AnyRow) -> Result<super::super::rows::ConsentEventRow, StoreError> {
    let mut purposes = [0i64; 5];
    for (slot, name) in purposes.iter_mut().zip(Purposes::NAMES) {
        *slot = r.try_get(name).map_err(err)?;
    }
    let (reference, reference_damaged) = match super::read_envelope(
        r,
        [
            "reference_format_version",
            "reference_kek_version",
            "reference_wrapped_dek",
            "reference_ciphertext",
        ],
    )? {
        super::EnvelopeColumns::Sealed(e) => (Some(e), false),
        super::EnvelopeColumns::Empty => (None, false),
        // Named by the audit and the ledger check, not a failed read.
        super::EnvelopeColumns::Damaged(_) => (None, true),
    };
    Ok(super::super::rows::ConsentEventRow {
        id: text(r, "id")?,
        email_blind_index: r.try_get("email_blind_index").map_err(err)?,
        blind_index_version: r.try_get("blind_index_version").map_err(err)?,
        kind: text(r, "kind")?,
        purposes,
        channel: text(r, "channel")?,
        received_at: text(r, "received_at")?,
        effective_at: text(r, "effective_at")?,
        recorded_at: text(r, "recorded_at")?,
        reference,
        reference_damaged,
        mac_key_version: r.try_get("mac_key_version").map_err(err)?,
        seq: r.try_get("seq").map_err(err)?,
        prev_mac: r.try_get("prev_mac").map_err(err)?,
        mac: r.try_get("mac").map_err(err)?,
    })
}

/// The head of every query that reads idempotency rows whole (for
/// [`audit_key_row`]); `k` is the row, `o` its order if it exists.
fn key_rows_select(engine: Engine) -> String {
    let bytes = |column: &str| bytes_of(engine, &format!("k.{column}"), column);
    format!(
        "SELECT k.client, k.key_hash, k.request_hash, {}, k.response_status, k.response_body,
                {}, k.response_mac, CASE WHEN o.id IS NULL THEN 0 ELSE 1 END AS order_exists
           FROM idempotency_keys k LEFT JOIN orders o ON o.id = k.order_id",
        bytes("order_id"),
        bytes("created_at"),
    )
}

/// Up to `limit` idempotency rows after the primary key `after` (`(client,
/// key_hash)`; `None` for the first page, so that no key, not even two
/// empty byte strings, sorts before where the scan starts), in key order,
/// each with whether its order exists. The row-value comparison lets both
/// engines seek in the primary key, so every page costs the same.
///
/// A row that cannot be read is returned with the reason, for the report,
/// rather than failing the audit: its text columns are read as bytes
/// (SQLite's STRICT `TEXT` takes invalid UTF-8), then decoded here.
pub async fn idempotency_page(
    pool: &AnyPool,
    engine: Engine,
    after: Option<(&[u8], &[u8])>,
    limit: u32,
) -> Result<Vec<super::super::rows::AuditKeyRow>, StoreError> {
    let sql = format!(
        "{} {}",
        key_rows_select(engine),
        // Parameters numbered in the order they appear (SQLite numbers
        // `$N` that way).
        if after.is_some() {
            "WHERE (k.client, k.key_hash) > ($1, $2) ORDER BY k.client, k.key_hash LIMIT $3"
        } else {
            "ORDER BY k.client, k.key_hash LIMIT $1"
        },
    );
    let mut query = sqlx::query(&sql);
    if let Some((client, key_hash)) = after {
        query = query.bind(client).bind(key_hash);
    }
    let rows = query
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(err)?;
    rows.iter().map(audit_key_row).collect()
}

/// Idempotency rows that still hold a request hash and are `due` to lose
/// it, oldest first. `length(k.request_hash) > 0` is the predicate of the
/// partial index `idempotency_keys_replayable` (migration 0010 / 0013),
/// written exactly so that both engines use it; one order's row is found
/// through the order's `created_at`, the instant its row was written with.
pub async fn replayable_keys(
    pool: &AnyPool,
    engine: Engine,
    due: super::super::rows::KeysDue<'_>,
    limit: u32,
) -> Result<Vec<super::super::rows::AuditKeyRow>, StoreError> {
    use super::super::rows::KeysDue;
    let (filter, value) = match due {
        KeysDue::CreatedBefore(before) => ("k.created_at < $1", before),
        KeysDue::OfOrder(order_id) => (
            "k.created_at = (SELECT created_at FROM orders WHERE id = $1) AND k.order_id = $1",
            order_id,
        ),
    };
    let sql = format!(
        "{} WHERE length(k.request_hash) > 0 AND {filter} ORDER BY k.created_at LIMIT $2",
        key_rows_select(engine),
    );
    let rows = sqlx::query(&sql)
        .bind(value)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(err)?;
    rows.iter().map(audit_key_row).collect()
}

/// See `Store::retire_request_hashes`.
pub async fn retire_request_hashes(
    writer: &super::Writer,
    engine: Engine,
    rows: &[super::super::rows::RetiredRequestHash],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = engine.begin_write(writer, WriteOrder::Unordered).await?;
    let mut changed = 0;
    for row in rows {
        let query = match &row.mac {
            Some(mac) => sqlx::query(
                "UPDATE idempotency_keys SET request_hash = $1, response_mac = $2
                  WHERE client = $3 AND key_hash = $4 AND request_hash = $5",
            )
            .bind(Vec::<u8>::new())
            .bind(mac.as_slice()),
            None => sqlx::query(
                "UPDATE idempotency_keys SET request_hash = $1, response_mac = NULL
                  WHERE client = $2 AND key_hash = $3 AND request_hash = $4",
            )
            .bind(Vec::<u8>::new()),
        };
        changed += query
            .bind(row.client.as_slice())
            .bind(row.key_hash.as_slice())
            .bind(row.request_hash.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
    }
    tx.commit().await.map_err(err)?;
    Ok(changed)
}

fn audit_key_row(r: &AnyRow) -> Result<super::super::rows::AuditKeyRow, StoreError> {
    let order_id: Vec<u8> = r.try_get("order_id").map_err(err)?;
    let created_at: Vec<u8> = r.try_get("created_at").map_err(err)?;
    let status: i64 = r.try_get("response_status").map_err(err)?;
    let request_hash: Result<Vec<u8>, _> = r.try_get("request_hash");
    let found = (|| {
        let order_id = std::str::from_utf8(&order_id).map_err(|_| "order_id is not UTF-8")?;
        Ok(super::super::rows::KeyRecord {
            request_hash: request_hash.as_ref().map_err(|_| "request_hash")?.clone(),
            response: super::super::rows::StoredResponse {
                order_id: uuid::Uuid::parse_str(order_id).map_err(|_| "order_id is not a UUID")?,
                status: u16::try_from(status).map_err(|_| "response_status is out of range")?,
                body: r.try_get("response_body").map_err(|_| "response_body")?,
            },
            created_at: String::from_utf8(created_at).map_err(|_| "created_at is not UTF-8")?,
            mac: r.try_get("response_mac").map_err(|_| "response_mac")?,
        })
    })()
    .map_err(|what: &str| what.to_owned());
    Ok(super::super::rows::AuditKeyRow {
        client: r.try_get("client").map_err(err)?,
        key_hash: r.try_get("key_hash").map_err(err)?,
        request_hash: request_hash.unwrap_or_default(),
        order_id: String::from_utf8_lossy(&order_id).into_owned(),
        found,
        order_exists: r.try_get::<i64, _>("order_exists").map_err(err)? != 0,
    })
}

/// Orders that have no idempotency row: how many, and the first `limit`
/// ids by `seq`. One anti-join each, written as a LEFT JOIN so that SQLite
/// builds a transient ("automatic") index on `idempotency_keys.order_id`
/// for it — as `NOT EXISTS` it scans the whole table once per order — and
/// PostgreSQL a hash join: no standing index that every commit would have
/// to maintain.
pub async fn orders_without_key_row(
    pool: &AnyPool,
    limit: u32,
) -> Result<(u64, Vec<String>), StoreError> {
    const MISSING: &str = "FROM orders o LEFT JOIN idempotency_keys k ON k.order_id = o.id
        WHERE k.order_id IS NULL";
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) {MISSING}"))
        .fetch_one(pool)
        .await
        .map_err(err)?;
    if count == 0 {
        return Ok((0, Vec::new()));
    }
    let ids: Vec<String> =
        sqlx::query_scalar(&format!("SELECT o.id {MISSING} ORDER BY o.seq LIMIT $1"))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(err)?;
    Ok((u64::try_from(count).unwrap_or(0), ids))
}

/// The tables whose rows belong to an order (`order_id`), walked by the
/// audit through their orders.
const ORDER_TABLES: [&str; 6] = [
    "payment_cards",
    "billing_details",
    "shipping_details",
    "gift_recipients",
    "contact_emails",
    "consent_tags",
];

pub async fn rows_without_order(
    pool: &AnyPool,
    limit: u32,
) -> Result<(u64, Vec<(&'static str, String)>), StoreError> {
    let mut count = 0u64;
    let mut listed = Vec::new();
    for table in ORDER_TABLES {
        // `table` is one of six fixed names.
        let missing = format!(
            "FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = t.order_id)"
        );
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) {missing}"))
            .fetch_one(pool)
            .await
            .map_err(err)?;
        if n == 0 {
            continue;
        }
        count += u64::try_from(n).unwrap_or(0);
        let room = u64::from(limit).saturating_sub(listed.len() as u64);
        if room > 0 {
            let ids: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t.id {missing} ORDER BY t.id LIMIT $1"))
                    .bind(i64::try_from(room).unwrap_or(i64::MAX))
                    .fetch_all(pool)
                    .await
                    .map_err(err)?;
            listed.extend(ids.into_iter().map(|id| (table, id)));
        }
    }
    Ok((count, listed))
}

pub async fn orders_named_but_missing(
    pool: &AnyPool,
    engine: Engine,
    actions: &[&str],
    limit: u32,
) -> Result<(u64, Vec<(String, i64)>), StoreError> {
    // Each entry's objects (a JSON array of strings) one by one: of an
    // allowed entry of one of `actions` (or a purge's request, `purge
    // (<reason>)`), each of 36 characters is an order id, looked up through
    // the orders' id index; one finding per order, at the first entry
    // naming it. A value that is no such array (edited: the chain's check
    // names it) is passed over, never an error that stops the audit.
    let expand = match engine {
        Engine::Sqlite => {
            "access_log a, json_each(CASE WHEN json_valid(a.objects) \
             AND json_type(a.objects) = 'array' THEN a.objects ELSE '[]' END) j"
        }
        // As checkoutd writes them: compact arrays of strings that need no
        // escape (ids, `class:card`, `audience:…`).
        Engine::Postgres => {
            "access_log a CROSS JOIN LATERAL jsonb_array_elements_text(CASE WHEN a.objects \
             ~ '^\\[(\"[^\"\\\\]*\"(,\"[^\"\\\\]*\")*)?\\]$' THEN a.objects::jsonb \
             ELSE '[]'::jsonb END) AS j(value)"
        }
    };
    let listed: Vec<String> = (0..actions.len()).map(|i| format!("${}", i + 1)).collect();
    let missing = format!(
        "FROM {expand}
        WHERE a.outcome = 'allowed' AND (a.action IN ({}) OR a.action LIKE 'purge (%')
          AND length(j.value) = 36
          AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = j.value)",
        listed.join(", ")
    );
    let count_sql = format!("SELECT count(DISTINCT j.value) {missing}");
    let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
    for action in actions {
        count = count.bind(*action);
    }
    let count = count.fetch_one(pool).await.map_err(err)?;
    if count == 0 {
        return Ok((0, Vec::new()));
    }
    let rows_sql = format!(
        "SELECT {}, MIN(a.seq) AS seq {missing} GROUP BY j.value ORDER BY MIN(a.seq) LIMIT ${}",
        bytes_of(engine, "j.value", "id"),
        actions.len() + 1
    );
    let mut rows = sqlx::query(&rows_sql);
    for action in actions {
        rows = rows.bind(*action);
    }
    let rows = rows
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(err)?;
    let mut found = Vec::with_capacity(rows.len());
    for r in rows {
        found.push((text(&r, "id")?, r.try_get::<i64, _>("seq").map_err(err)?));
    }
    Ok((u64::try_from(count).unwrap_or(0), found))
}

/// How much later than a dispatch's access-log entry its order's dispatch
/// time may be before the dispatch is taken for one undone and made again
/// ([`dispatches_undone`]): the clocks of two processes sharing a
/// database (a retry's entry may come from the other) differ by far less.
pub const REDISPATCH_TOLERANCE_SECONDS: u32 = 10;

pub async fn dispatches_undone(
    pool: &AnyPool,
    engine: Engine,
    action: &str,
    limit: u32,
) -> Result<(u64, Vec<crate::store::rows::UndoneDispatch>), StoreError> {
    // A dispatch entry's objects are `["<order id>"]`: the id is matched
    // through the orders' id index, the whole text compared; an entry whose
    // order is gone altogether is found too (an order is never deleted).
    let undone = "FROM access_log a LEFT JOIN orders o ON o.id = substr(a.objects, 3, 36)
        WHERE a.action = $1 AND a.outcome = 'allowed' AND a.status = 200
          AND a.objects = '[\"' || substr(a.objects, 3, 36) || '\"]'
          AND (o.id IS NULL OR o.status <> 'dispatched')";
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) {undone}"))
        .bind(action)
        .fetch_one(pool)
        .await
        .map_err(err)?;
    let mut found = Vec::new();
    let mut count = u64::try_from(count).unwrap_or(0);
    if count > 0 {
        let rows = sqlx::query(&format!(
            "SELECT {}, a.seq AS seq, \
             CAST(CASE WHEN o.id IS NULL THEN 1 ELSE 0 END AS BIGINT) AS gone {undone} \
             ORDER BY a.seq LIMIT $2",
            bytes_of(engine, "substr(a.objects, 3, 36)", "id"),
        ))
        .bind(action)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(err)?;
        for r in rows {
            found.push(crate::store::rows::UndoneDispatch {
                order_id: text(&r, "id")?,
                log_seq: r.try_get::<i64, _>("seq").map_err(err)?,
                order_gone: r.try_get::<i64, _>("gone").map_err(err)? == 1,
                dispatched_again: false,
            });
        }
    }
    // An entry older than its order's dispatch: a dispatch's time is taken
    // before its commit and its entry's after, by one process, so every
    // entry of a dispatch is as late as it — one earlier (by more than the
    // clocks of two processes may differ) recorded a dispatch that was
    // undone, and the order dispatched again since. The texts are compared
    // in SQL (one format, so their order is the times'), the tolerance
    // here; a text that does not read as a time is no finding of this
    // check (an edited entry fails the chain's).
    let candidates = sqlx::query(&format!(
        "SELECT {}, a.seq AS seq, {}, {}
           FROM access_log a JOIN orders o ON o.id = substr(a.objects, 3, 36)
          WHERE a.action = $1 AND a.outcome = 'allowed' AND a.status = 200
            AND a.objects = '[\"' || substr(a.objects, 3, 36) || '\"]'
            AND o.status = 'dispatched' AND o.dispatched_at > a.at
          ORDER BY a.seq",
        bytes_of(engine, "substr(a.objects, 3, 36)", "id"),
        bytes_of(engine, "a.at", "entry_at"),
        bytes_of(engine, "o.dispatched_at", "dispatched_at"),
    ))
    .bind(action)
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let tolerance = time::Duration::seconds(i64::from(REDISPATCH_TOLERANCE_SECONDS));
    for r in candidates {
        let entry_at = crate::ids::parse_timestamp(&text(&r, "entry_at")?);
        let dispatched_at = crate::ids::parse_timestamp(&text(&r, "dispatched_at")?);
        let (Some(entry_at), Some(dispatched_at)) = (entry_at, dispatched_at) else {
            continue;
        };
        if dispatched_at - entry_at <= tolerance {
            continue;
        }
        count += 1;
        if found.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
            found.push(crate::store::rows::UndoneDispatch {
                order_id: text(&r, "id")?,
                log_seq: r.try_get::<i64, _>("seq").map_err(err)?,
                order_gone: false,
                dispatched_again: true,
            });
        }
    }
    Ok((count, found))
}

pub async fn purges_unrecorded(
    pool: &AnyPool,
    engine: Engine,
    action: &str,
    limit: u32,
) -> Result<(u64, Vec<crate::store::rows::UnrecordedPurge>), StoreError> {
    // An outcome entry's objects are `["<order id>","class:<class>"]`: the
    // id is the 36 characters from the third, the class what follows
    // `","class:` up to the closing `"]` (the length is never negative:
    // PostgreSQL refuses a negative one whatever the other conditions
    // say). The whole text is compared again, so an entry of any other
    // shape is left out rather than misread.
    //
    // The purge row must be at least as old as the entry (its `purged_at`
    // is taken before the purge, the entry's `at` after it commits, by one
    // process): a row deleted and then written again by a later purge —
    // retention's next pass over records put back — does not stand in for
    // the one the entry records.
    const UNRECORDED: &str = "FROM (
            SELECT a.seq AS seq, a.at AS at, substr(a.objects, 3, 36) AS order_id,
                   substr(a.objects, 48, CASE WHEN length(a.objects) > 49
                                              THEN length(a.objects) - 49 ELSE 0 END) AS class,
                   a.objects AS objects
              FROM access_log a
             WHERE a.action = $1 AND a.outcome = 'allowed'
        ) e LEFT JOIN purges p
               ON p.order_id = e.order_id AND p.class = e.class AND p.purged_at <= e.at
        WHERE e.objects = '[\"' || e.order_id || '\",\"class:' || e.class || '\"]'
          AND p.order_id IS NULL";
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) {UNRECORDED}"))
        .bind(action)
        .fetch_one(pool)
        .await
        .map_err(err)?;
    if count == 0 {
        return Ok((0, Vec::new()));
    }
    // The log's text read as bytes: a value that is not UTF-8 (planted in
    // SQLite) is named, it does not stop the audit.
    let rows = sqlx::query(&format!(
        "SELECT {}, {}, e.seq AS seq {UNRECORDED} ORDER BY e.seq LIMIT $2",
        bytes_of(engine, "e.order_id", "order_id"),
        bytes_of(engine, "e.class", "class"),
    ))
    .bind(action)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let mut found = Vec::with_capacity(rows.len());
    for r in rows {
        found.push(crate::store::rows::UnrecordedPurge {
            order_id: text(&r, "order_id")?,
            class: text(&r, "class")?,
            log_seq: r.try_get::<i64, _>("seq").map_err(err)?,
        });
    }
    Ok((u64::try_from(count).unwrap_or(0), found))
}

pub async fn dispatches_unlogged(
    pool: &AnyPool,
    action: &str,
    before: &str,
    limit: u32,
) -> Result<(u64, Vec<String>), StoreError> {
    // The log's dispatch entries, each reduced to the one order id it
    // names (objects `["<order id>"]`, compared whole), joined to the
    // dispatched orders: an anti-join, not a scan of the log per order.
    const UNLOGGED: &str = "FROM orders o LEFT JOIN (
            SELECT DISTINCT substr(a.objects, 3, 36) AS id FROM access_log a
             WHERE a.action = $1 AND a.outcome = 'allowed' AND a.status = 200
               AND a.objects = '[\"' || substr(a.objects, 3, 36) || '\"]'
        ) logged ON logged.id = o.id
        WHERE o.status = 'dispatched' AND o.dispatched_at < $2 AND logged.id IS NULL";
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) {UNLOGGED}"))
        .bind(action)
        .bind(before)
        .fetch_one(pool)
        .await
        .map_err(err)?;
    if count == 0 {
        return Ok((0, Vec::new()));
    }
    let ids =
        sqlx::query_scalar::<_, String>(&format!("SELECT o.id {UNLOGGED} ORDER BY o.seq LIMIT $3"))
            .bind(action)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(err)?;
    Ok((u64::try_from(count).unwrap_or(0), ids))
}

/// Up to `limit` withdrawals with `seq > after`, in order.
pub async fn consent_events_page(
    pool: &AnyPool,
    engine: Engine,
    after: i64,
    limit: u32,
) -> Result<Vec<(i64, super::super::rows::ConsentEventRow)>, StoreError> {
    let mut columns = vec![
        "seq",
        "id",
        "email_blind_index",
        "blind_index_version",
        "kind",
    ];
    columns.extend(Purposes::NAMES);
    columns.extend([
        "channel",
        "received_at",
        "effective_at",
        "recorded_at",
        "reference_format_version",
        "reference_kek_version",
        "reference_wrapped_dek",
        "reference_ciphertext",
        "mac_key_version",
        "prev_mac",
        "mac",
    ]);
    let texts = [
        "id",
        "kind",
        "channel",
        "received_at",
        "effective_at",
        "recorded_at",
    ];
    sqlx::query(&format!(
        "SELECT {} FROM consent_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        select_list(engine, &columns, &texts)
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(err)?
    .iter()
    .map(|r| Ok((r.try_get("seq").map_err(err)?, event_row(r)?)))
    .collect()
}

// ---- key life cycle ----

/// The tables (and their envelope columns) holding records of `class`.
fn class_tables(
    class: crate::crypto::DataClass,
) -> &'static [(&'static str, &'static str, &'static str, &'static str)] {
    use crate::crypto::DataClass::*;
    // (table, kek column, wrapped-dek column, AAD order-id expression)
    match class {
        Card => &[("payment_cards", "kek_version", "wrapped_dek", "order_id")],
        Billing => &[("billing_details", "kek_version", "wrapped_dek", "order_id")],
        Shipping => &[("shipping_details", "kek_version", "wrapped_dek", "order_id")],
        Recipient => &[("gift_recipients", "kek_version", "wrapped_dek", "order_id")],
        Contact => &[
            ("contact_emails", "kek_version", "wrapped_dek", "order_id"),
            (
                "consent_events",
                "reference_kek_version",
                "reference_wrapped_dek",
                "'00000000-0000-0000-0000-000000000000'",
            ),
        ],
    }
}

pub async fn kek_usage(
    pool: &AnyPool,
    class: crate::crypto::DataClass,
) -> Result<BTreeMap<u32, u64>, StoreError> {
    let mut usage = BTreeMap::new();
    for (table, kek, _, _) in class_tables(class) {
        let rows = sqlx::query(&format!(
            "SELECT {kek} AS v, count(*) AS n FROM {table} WHERE {kek} IS NOT NULL GROUP BY {kek}"
        ))
        .fetch_all(pool)
        .await
        .map_err(err)?;
        for r in rows {
            let v: i64 = r.try_get("v").map_err(err)?;
            let n: i64 = r.try_get("n").map_err(err)?;
            *usage
                .entry(u32::try_from(v).unwrap_or(u32::MAX))
                .or_insert(0) += u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(usage)
}

pub async fn envelopes_to_rewrap(
    pool: &AnyPool,
    class: crate::crypto::DataClass,
    from: &[u32],
    limit: u32,
) -> Result<Vec<super::super::rows::RewrapItem>, StoreError> {
    let mut out = Vec::new();
    if from.is_empty() {
        return Ok(out);
    }
    // Whole numbers, written into the text (an `IN` list of any length).
    let versions = from
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    for (table, kek, dek, order) in class_tables(class) {
        let remaining = i64::from(limit) - out.len() as i64;
        if remaining <= 0 {
            break;
        }
        let (fmt, ct) = if *table == "consent_events" {
            ("reference_format_version", "reference_ciphertext")
        } else {
            ("format_version", "ciphertext")
        };
        let rows = sqlx::query(&format!(
            "SELECT id, {order} AS order_id, {fmt} AS f, {kek} AS k, {dek} AS d, {ct} AS c
               FROM {table} WHERE {kek} IN ({versions}) LIMIT $1"
        ))
        .bind(remaining)
        .fetch_all(pool)
        .await
        .map_err(err)?;
        for r in rows {
            out.push(super::super::rows::RewrapItem {
                table,
                id: r.try_get("id").map_err(err)?,
                order_id: r.try_get("order_id").map_err(err)?,
                envelope: sealed(&r, ["f", "k", "d", "c"])?,
            });
        }
    }
    Ok(out)
}

pub async fn apply_rewrap(
    writer: &super::Writer,
    engine: Engine,
    items: &[(super::super::rows::RewrapItem, u32, Vec<u8>)],
) -> Result<u64, StoreError> {
    let mut tx = engine.begin_write(writer, WriteOrder::Unordered).await?;
    if engine == Engine::Postgres {
        // Shared with the other rewrap batches; a KEK retirement waits for
        // this batch to commit, and a batch after it sees the retirement
        // (its check below reads `kek_retirements` without a lock).
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)::text")
            .bind(super::super::postgres::LOCK_REWRAP)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    let mut changed = 0u64;
    for (item, new_version, wrapped) in items {
        let (kek, dek) = if item.table == "consent_events" {
            ("reference_kek_version", "reference_wrapped_dek")
        } else {
            ("kek_version", "wrapped_dek")
        };
        let Some(class) = table_class(item.table) else {
            return Err(StoreError::Corrupt("unknown re-wrap table"));
        };
        // `item.table` is one of our fixed table names (class_tables). Never
        // to a version the database has retired meanwhile (a rotation by
        // another copy of the keyring): the row is left as it is, and the
        // next batch's check refuses the stale keyring.
        let r = sqlx::query(&format!(
            "UPDATE {} SET {kek} = $1, {dek} = $2 WHERE id = $3 AND {kek} = $4
                AND NOT EXISTS (SELECT 1 FROM kek_retirements r WHERE r.class = $5 AND r.version = $1)",
            item.table
        ))
        .bind(i64::from(*new_version))
        .bind(wrapped)
        .bind(&item.id)
        .bind(i64::from(item.envelope.kek_version))
        .bind(class)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        changed += r.rows_affected();
    }
    tx.commit().await.map_err(err)?;
    Ok(changed)
}

/// The data class whose KEK versions a sealed table's re-wrapped column
/// names (the withdrawal ledger's reference is sealed as contact data).
fn table_class(table: &str) -> Option<&'static str> {
    Some(match table {
        "payment_cards" => "card",
        "billing_details" => "billing",
        "shipping_details" => "shipping",
        "gift_recipients" => "recipient",
        "contact_emails" | "consent_events" => "contact",
        _ => return None,
    })
}

// ---- purges ----

fn class_table(class: &str) -> Option<&'static str> {
    Some(match class {
        "card" => "payment_cards",
        "billing" => "billing_details",
        "shipping" => "shipping_details",
        "recipient" => "gift_recipients",
        "contact" => "contact_emails",
        _ => return None,
    })
}

pub async fn purge(
    writer: &super::Writer,
    engine: Engine,
    order_id: &str,
    purges: &[super::super::rows::PurgeRow],
    condition: &super::super::rows::PurgeIf,
) -> Result<Vec<String>, StoreError> {
    let mut tx = engine.begin_write(writer, WriteOrder::Unordered).await?;
    // The order row locked on PostgreSQL: a dispatch or a legal hold
    // updating or placed on it is waited for (and then seen), one that
    // comes later waits for this purge. NO KEY UPDATE, as the dispatch and
    // the hold take it: an operator's purge of the same order checks its
    // `purges` row's reference to the order with KEY SHARE, which this
    // must not block (it would deadlock with that purge's record
    // deletions). (SQLite has one writer at a time.)
    let lock = match engine {
        Engine::Postgres => " FOR NO KEY UPDATE",
        Engine::Sqlite => "",
    };
    // The condition decided by the database, read back as a number: a
    // damaged column of the order (bytes that are not UTF-8) must not fail
    // the purge — and with it a retention rule's whole pass.
    let goes_ahead = match condition {
        super::super::rows::PurgeIf::Always => "1",
        super::super::rows::PurgeIf::Undispatched { .. } => {
            "CASE WHEN status = 'accepted' AND created_at < $2 THEN 1 ELSE 0 END"
        }
    };
    let sql = format!("SELECT CAST({goes_ahead} AS BIGINT) FROM orders WHERE id = $1{lock}");
    let mut check = sqlx::query_scalar::<_, i64>(&sql).bind(order_id);
    if let super::super::rows::PurgeIf::Undispatched { taken_before } = condition {
        check = check.bind(taken_before);
    }
    if check.fetch_optional(&mut *tx).await.map_err(err)? != Some(1) {
        return Ok(Vec::new());
    }
    // A statement of its own, after the lock: on PostgreSQL it reads a
    // snapshot taken once a hold placed meanwhile has committed.
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM legal_holds WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
    if held > 0 {
        return Err(StoreError::UnderLegalHold);
    }
    let mut done = Vec::new();
    for p in purges {
        let Some(table) = class_table(&p.class) else {
            return Err(StoreError::Corrupt("unknown purge class"));
        };
        // `table` is one of five fixed names.
        let removed = sqlx::query(&format!("DELETE FROM {table} WHERE order_id = $1"))
            .bind(order_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        if removed == 0 {
            continue;
        }
        // A record restored after its purge (from a backup) is deleted
        // again; the purge recorded first stands (the table is append-only
        // and keyed by order and class).
        sqlx::query("INSERT INTO purges (order_id, class, purged_at, reason, email_blind_index, mac) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, class) DO NOTHING")
            .bind(&p.order_id)
            .bind(&p.class)
            .bind(&p.purged_at)
            .bind(&p.reason)
            .bind(p.email_blind_index.as_deref())
            .bind(&p.mac)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        done.push(p.class.clone());
    }
    tx.commit().await.map_err(err)?;
    Ok(done)
}

// ---- legal holds ----

/// The columns of a hold, its texts read as bytes (the audit reads holds
/// through this too: a damaged value fails the MAC, it does not stop the
/// read).
fn hold_columns(engine: Engine) -> String {
    let columns = ["order_id", "placed_at", "reference", "mac"];
    select_list(engine, &columns, &columns[..3])
}

fn hold_row(r: &AnyRow) -> Result<super::super::rows::HoldRow, StoreError> {
    Ok(super::super::rows::HoldRow {
        order_id: text(r, "order_id")?,
        placed_at: text(r, "placed_at")?,
        reference: text(r, "reference")?,
        mac: r.try_get("mac").map_err(err)?,
    })
}

pub async fn place_hold(
    writer: &super::Writer,
    engine: Engine,
    hold: &super::super::rows::HoldRow,
) -> Result<super::super::rows::HoldPlaced, StoreError> {
    use super::super::rows::HoldPlaced;
    let mut tx = engine.begin_write(writer, WriteOrder::Unordered).await?;
    // The order row locked as a purge locks it (see `purge`): a purge
    // running now ends first, and this hold then sees what it left.
    let lock = match engine {
        Engine::Postgres => " FOR NO KEY UPDATE",
        Engine::Sqlite => "",
    };
    let found: Option<String> =
        sqlx::query_scalar(&format!("SELECT id FROM orders WHERE id = $1{lock}"))
            .bind(&hold.order_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
    if found.is_none() {
        return Ok(HoldPlaced::NoSuchOrder);
    }
    let placed = sqlx::query(
        "INSERT INTO legal_holds (order_id, placed_at, reference, mac) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&hold.order_id)
    .bind(&hold.placed_at)
    .bind(&hold.reference)
    .bind(&hold.mac)
    .execute(&mut *tx)
    .await
    .map_err(err)?
    .rows_affected();
    if placed == 0 {
        let r = sqlx::query(&format!(
            "SELECT {} FROM legal_holds WHERE order_id = $1",
            hold_columns(engine)
        ))
        .bind(&hold.order_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        return Ok(HoldPlaced::AlreadyHeld(hold_row(&r)?));
    }
    let mut classes_held = Vec::new();
    for class in crate::crypto::DataClass::ALL {
        let Some(table) = class_table(class.as_str()) else {
            continue;
        };
        // `table` is one of five fixed names.
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE order_id = $1"))
                .bind(&hold.order_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
        if n > 0 {
            classes_held.push(class.as_str().to_owned());
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(HoldPlaced::Placed { classes_held })
}

pub async fn release_hold(
    writer: &super::Writer,
    engine: Engine,
    order_id: &str,
) -> Result<Option<super::super::rows::HoldRow>, StoreError> {
    let mut tx = engine.begin_write(writer, WriteOrder::Unordered).await?;
    // The order row locked as a hold and a purge lock it: a hold being
    // placed (which found this one and reads it back) or another release
    // of it ends first, and this release then sees what it left.
    if engine == Engine::Postgres {
        sqlx::query("SELECT id FROM orders WHERE id = $1 FOR NO KEY UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
    }
    let held = sqlx::query(&format!(
        "SELECT {} FROM legal_holds WHERE order_id = $1",
        hold_columns(engine)
    ))
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(err)?;
    let Some(held) = held else {
        return Ok(None);
    };
    sqlx::query("DELETE FROM legal_holds WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    hold_row(&held).map(Some)
}

pub async fn entries_naming_one_order(
    pool: &AnyPool,
    engine: Engine,
    actions: &[&str],
) -> Result<Vec<super::super::rows::OrderEntry>, StoreError> {
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    // One pass over the log (`action` has no index).
    let placeholders: Vec<String> = (1..=actions.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT a.seq AS seq, {}, {}, {} FROM access_log a \
         WHERE a.action IN ({}) AND a.outcome = 'allowed' \
           AND a.objects = '[\"' || substr(a.objects, 3, 36) || '\"]' ORDER BY a.seq",
        bytes_of(engine, "a.at", "at"),
        bytes_of(engine, "a.action", "action"),
        bytes_of(engine, "substr(a.objects, 3, 36)", "order_id"),
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for action in actions {
        query = query.bind(*action);
    }
    query
        .fetch_all(pool)
        .await
        .map_err(err)?
        .iter()
        .map(|r| {
            Ok(super::super::rows::OrderEntry {
                seq: r.try_get::<i64, _>("seq").map_err(err)?,
                at: text(r, "at")?,
                action: text(r, "action")?,
                order_id: text(r, "order_id")?,
            })
        })
        .collect()
}

pub async fn holds(
    pool: &AnyPool,
    engine: Engine,
) -> Result<Vec<super::super::rows::HoldRow>, StoreError> {
    sqlx::query(&format!(
        "SELECT {} FROM legal_holds ORDER BY placed_at, order_id",
        hold_columns(engine)
    ))
    .fetch_all(pool)
    .await
    .map_err(err)?
    .iter()
    .map(hold_row)
    .collect()
}

/// What must follow purges (`Store::after_purge`).
pub async fn after_purge(writer: &super::Writer, engine: Engine) -> Result<(), StoreError> {
    match engine {
        Engine::Sqlite => {
            // Up to 5 s while a reader keeps the WAL. Each attempt is made
            // between two writes (so no batch lands meanwhile), and the
            // writes go on while it waits for the next.
            for _ in 0..50 {
                let truncated = {
                    let _gate = writer.pass().await;
                    super::super::sqlite::try_truncate_wal(writer.pool()).await?
                };
                if truncated {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(StoreError::Incomplete(
                "the records are deleted, but the WAL could not be truncated while readers are active; run the purge again",
            ))
        }
        Engine::Postgres => super::super::postgres::after_purge(writer.pool()).await,
    }
}

pub async fn due_for_retention(
    pool: &AnyPool,
    classes: &[crate::crypto::DataClass],
    clock: crate::retention::Clock,
    before: &str,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    // Each table one of five fixed names.
    let holds = classes
        .iter()
        .map(|c| {
            class_table(c.as_str())
                .map(|t| format!("EXISTS (SELECT 1 FROM {t} r WHERE r.order_id = o.id)"))
                .ok_or(StoreError::Corrupt("unknown class"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let due = match clock {
        crate::retention::Clock::Dispatch => "o.status = 'dispatched' AND o.dispatched_at < $1",
        crate::retention::Clock::CreationUndispatched => {
            "o.status = 'accepted' AND o.created_at < $1"
        }
    };
    sqlx::query_scalar(&format!(
        "SELECT o.id FROM orders o WHERE {due} AND ({}) \
         AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.order_id = o.id) \
         ORDER BY o.seq LIMIT $2",
        holds.join(" OR ")
    ))
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(err)
}

pub async fn purges_of(
    pool: &AnyPool,
    engine: Engine,
    order_ids: &[String],
) -> Result<Vec<super::super::rows::PurgeRow>, StoreError> {
    let texts = ["order_id", "class", "purged_at", "reason"];
    let sql = format!(
        "SELECT {} FROM purges WHERE order_id = $1",
        select_list(
            engine,
            &[
                "order_id",
                "class",
                "purged_at",
                "reason",
                "email_blind_index",
                "mac"
            ],
            &texts
        )
    );
    let mut out = Vec::new();
    for id in order_ids {
        let rows = sqlx::query(&sql)
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(err)?;
        for r in rows {
            out.push(super::super::rows::PurgeRow {
                order_id: text(&r, "order_id")?,
                class: text(&r, "class")?,
                purged_at: text(&r, "purged_at")?,
                reason: text(&r, "reason")?,
                email_blind_index: r.try_get("email_blind_index").map_err(err)?,
                mac: r.try_get("mac").map_err(err)?,
            });
        }
    }
    Ok(out)
}
