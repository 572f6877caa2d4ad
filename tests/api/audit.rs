//! Auditors: a signed verification report, per-order metadata, and the
//! offline `checkoutd audit` with its HTML report — each tamper named.

use std::process::Command;

use checkoutd::audit::report::verify_signed;
use checkoutd::audit::verify::{self, Failure, Report};
use checkoutd::server::identity::Role;
use serde_json::{Value, json};

use crate::fulfillment::gift_order_for_audit;
use crate::helpers::{TestApp, expect_problem, spawn_app};
use crate::orders::order_json;

/// Four orders (one a gift, one Amex), some reads, a denial.
async fn populated() -> (TestApp, Vec<String>) {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    let mut amex = order_json();
    amex["card"] = json!({"number": "378282246310005", "exp_month": 1, "exp_year": crate::orders::exp_year(), "cvc": "4321"});
    amex["customer"]["email"] = json!("grace@example.com");
    for (i, order) in [order_json(), gift_order_for_audit(), amex, order_json()]
        .iter()
        .enumerate()
    {
        let r = app.post_order(&format!("audit-{i}"), order).await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let _ = app.shipments("").await;
    let _ = app
        .client(Role::Marketing)
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    (app, ids)
}

pub async fn run_verify(app: &TestApp) -> Report {
    let store = app.store().await;
    verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap()
}

fn has(report: &Report, table: &str, record_id: &str, what: &str) -> bool {
    report
        .failures
        .iter()
        .any(|f: &Failure| f.table == table && f.record_id == record_id && f.what.contains(what))
}

#[tokio::test]
async fn the_report_is_clean_signed_and_free_of_personal_data() {
    let (app, ids) = populated().await;
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [
        "4111111111111111",
        "378282246310005",
        "ada@example.com",
        "grace@example.com",
        "Lovelace",
        "Babbage",
        "Columbia",
    ] {
        assert!(!text.contains(secret), "the report holds {secret}");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    let report = &doc["report"];
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(report["failures"], json!([]));
    assert_eq!(report["orders_checked"], 4);
    assert_eq!(report["totals"]["orders"], 4);
    assert_eq!(report["totals"]["records"]["gift_recipients"], 1);
    assert_eq!(report["totals"]["kek_versions"]["card"]["1"], 4);
    assert_eq!(
        report["totals"]["kek_versions"]["shipping"]["1"], 3,
        "the gift's shipping row is a marker"
    );
    assert_eq!(report["access_log"]["intact"], true);
    assert_eq!(report["consent"]["customers"], 2, "two distinct emails");
    assert_eq!(report["consent"]["consenting"]["special_offers"], 2);
    assert_eq!(
        report["consent"]["not_consenting"]["third_party_sharing"],
        2
    );

    let key: Value = app.get_json(Role::Auditor, "/v1/audit/public-key").await;
    assert_eq!(key["key_id"], doc["signature"]["key_id"]);
    let raw = checkoutd::hex::decode(key["public_key_hex"].as_str().unwrap()).unwrap();
    assert!(verify_signed(&doc, &raw));
    let mut forged = doc.clone();
    forged["report"]["failure_count"] = json!(0);
    forged["report"]["orders_checked"] = json!(5);
    assert!(!verify_signed(&forged, &raw));

    for role in [Role::Storefront, Role::Fulfillment, Role::Marketing] {
        let r = app
            .client(role)
            .get(app.url("/v1/audit/report"))
            .send()
            .await
            .unwrap();
        expect_problem(r, 403).await;
    }
    // Reading the report is itself logged.
    let log: Value = app.get_json(Role::Auditor, "/v1/audit/log").await;
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "GET /v1/audit/report")
    );
    drop(ids);
}

#[tokio::test]
async fn per_order_metadata_has_no_plaintext() {
    let (app, ids) = populated().await;
    let gift = &ids[1];
    let r = app
        .client(Role::Auditor)
        .get(app.url(&format!("/v1/audit/orders/{gift}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [
        "4111111111111111",
        "4111 1111",
        "Lovelace",
        "Babbage",
        "Dorset",
        "ada@",
        "birthday",
    ] {
        assert!(!text.contains(secret), "{secret}");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["verified"], true);
    let records = doc["records"].as_array().unwrap();
    assert_eq!(
        records.len(),
        5,
        "billing, shipping marker, recipient, card, contact"
    );
    for rec in records {
        assert_eq!(rec["verifies"], true);
        if rec["table"] == "shipping_details" {
            assert!(
                rec["kek_version"].is_null(),
                "a gift's marker has no envelope"
            );
            continue;
        }
        assert_eq!(rec["kek_version"], 1);
        assert_eq!(rec["nonce_len"], 12);
        assert_eq!(rec["wrapped_dek_len"], 60);
        // Rounded: the exact length would tell the length of the email,
        // the name… it encrypts.
        let rounded = rec["ciphertext_len_rounded"].as_u64().unwrap();
        assert!(rounded >= 64 && rounded % 64 == 0, "{rec}");
        assert!(rec["algorithm"].as_str().unwrap().contains("AES-256-GCM"));
    }
    let tags = doc["consent_tags"].as_array().unwrap();
    assert_eq!(tags.len(), 2);
    assert!(tags.iter().all(|t| t["verifies"] == true));
    assert!(
        tags.iter()
            .any(|t| t["subject"] == "gift_recipient" && t["basis"] == "fulfillment_only")
    );
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/orders/00000000-0000-4000-8000-000000000000"))
        .send()
        .await
        .unwrap();
    expect_problem(r, 404).await;
}

#[tokio::test]
async fn an_untouched_database_has_no_false_positives() {
    let (app, _) = populated().await;
    let report = run_verify(&app).await;
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(
        report.records_checked,
        4 * 4 + 1,
        "billing, shipping, card and contact per order, plus one recipient"
    );
}

/// Runs `;`-separated statements on one connection (temp tables persist).
async fn exec(app: &TestApp, sql: &str) {
    let db = app.db().await;
    let mut conn = db.acquire().await.unwrap();
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
}

async fn id_of(app: &TestApp, sql: &str) -> String {
    sqlx::query_scalar(sql)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

/// The id of `order`'s customer consent tag.
async fn customer_tag(app: &TestApp, order: &str) -> String {
    id_of(
        app,
        &format!("SELECT consent_tag_id FROM orders WHERE id = '{order}'"),
    )
    .await
}

#[tokio::test]
async fn a_flipped_consent_purpose_is_named() {
    let (app, ids) = populated().await;
    let tag = customer_tag(&app, &ids[0]).await;
    exec(
        &app,
        &format!("UPDATE consent_tags SET third_party_sharing = 1 WHERE id = '{tag}'"),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "consent_tags", &tag, "MAC does not verify"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);
}

/// A record moved under another order's consent tag (same subject, a valid
/// MAC of its own): on PostgreSQL the database refuses the edit (each record
/// table's `(order_id, consent_tag_id)` must be a tag's own `(order_id,
/// id)`, checked per statement since migration 0011); on SQLite, whose keys
/// check the two columns apart, the audit names the record.
#[tokio::test]
async fn a_record_under_another_orders_tag_is_refused_or_named() {
    let (app, ids) = populated().await;
    let card = id_of(
        &app,
        &format!("SELECT id FROM payment_cards WHERE order_id = '{}'", ids[0]),
    )
    .await;
    let other_tag = customer_tag(&app, &ids[3]).await;
    let edit = sqlx::query(&format!(
        "UPDATE payment_cards SET consent_tag_id = '{other_tag}' WHERE id = '{card}'"
    ))
    .execute(&app.db().await)
    .await;
    if app.database.is_postgres() {
        let error = edit.expect_err("PostgreSQL took a record under another order's tag");
        assert!(
            error
                .to_string()
                .contains("payment_cards: a record must name a consent tag of its own order"),
            "{error}"
        );
        assert_eq!(run_verify(&app).await.failure_count, 0);
        return;
    }
    edit.unwrap();
    let report = run_verify(&app).await;
    assert!(
        has(
            &report,
            "payment_cards",
            &card,
            "consent tag belongs to another order"
        ),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);
}

/// Runs `sql`, which the database must refuse, and returns its error.
async fn refused(app: &TestApp, sql: &str) -> String {
    let error = match sqlx::query(sql).execute(&app.db().await).await {
        Ok(done) => panic!("the database took {sql:?} ({} rows)", done.rows_affected()),
        Err(error) => error.to_string(),
    };
    // Refused for the reference, not for a typo or another constraint:
    // SQLite's foreign keys, or PostgreSQL's checks of migration 0011.
    assert!(
        error.contains("FOREIGN KEY constraint failed")
            || error.contains("must name")
            || error.contains("are never deleted and their keys never change"),
        "{sql:?} was refused for another reason: {error}"
    );
    error
}

/// An order row `bare-order`, a copy of `from`'s, that no record or tag
/// references.
async fn insert_bare_order(app: &TestApp, from: &str) {
    exec(
        app,
        &format!(
            "INSERT INTO orders (id, created_at, status, currency, items, total_minor, gift, \
             consent_tag_id, client_fingerprint, mac) \
             SELECT 'bare-order', created_at, status, currency, items, total_minor, gift, \
             consent_tag_id, client_fingerprint, mac FROM orders WHERE id = '{from}'"
        ),
    )
    .await;
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

/// Direct database writes cannot break the references between an order's
/// rows: a tag without its order, a record without a tag of its own order,
/// an order or tag deleted from under its records. On PostgreSQL these are
/// statement-level checks (migration 0011), so a statement with one bad row
/// among good ones stores none of them, and orders and tags can be neither
/// deleted, truncated nor re-keyed at all; on SQLite the foreign keys of
/// 0001 refuse the same edits.
#[tokio::test]
async fn a_record_that_belongs_to_no_order_is_reported() {
    let (app, ids) = populated().await;
    let db = app.db().await;
    let mut conn = db.acquire().await.unwrap();
    // The references switched off, as whoever plants a row would: the
    // sqlite3 shell has foreign keys off; on PostgreSQL the table's owner
    // disables its triggers (which check the references, 0011).
    if app.database.is_postgres() {
        app.unguard("payment_cards").await;
    } else {
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query(&format!(
        "INSERT INTO payment_cards (id, order_id, consent_tag_id, format_version, kek_version, \
         wrapped_dek, ciphertext, brand, last4, fingerprint, fingerprint_key_version) \
         SELECT '0190aaaa-0000-7000-8000-000000000001', 'no-such-order', consent_tag_id, format_version, kek_version, \
         wrapped_dek, ciphertext, brand, last4, fingerprint, fingerprint_key_version \
         FROM payment_cards WHERE order_id = '{}'",
        ids[0]
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(
            &report,
            "payment_cards",
            "0190aaaa-0000-7000-8000-000000000001",
            "belongs to no order"
        ),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn the_references_between_an_orders_rows_hold_against_direct_writes() {
    let (app, ids) = populated().await;
    let tag = customer_tag(&app, &ids[0]).await;
    let copy_tag = |id: &str, order: &str| {
        format!(
            "SELECT '{id}', '{order}', subject, basis, product_updates, new_offerings, \
             partnerships, special_offers, third_party_sharing, policy_version, captured_at, \
             channel, mac_key_version, mac FROM consent_tags WHERE id = '{tag}'"
        )
    };
    let tag_columns = "INSERT INTO consent_tags (id, order_id, subject, basis, product_updates, \
        new_offerings, partnerships, special_offers, third_party_sharing, policy_version, \
        captured_at, channel, mac_key_version, mac) ";
    let (tags, cards, orders) = (
        count(&app, "consent_tags").await,
        count(&app, "payment_cards").await,
        count(&app, "orders").await,
    );

    // A tag of an order that does not exist; and in one statement with a
    // good tag of an existing order: neither is stored.
    refused(
        &app,
        &format!("{tag_columns}{}", copy_tag("orphan-tag", "no-such-order")),
    )
    .await;
    refused(
        &app,
        &format!(
            "{tag_columns}{} UNION ALL {}",
            copy_tag("good-tag", &ids[1]),
            copy_tag("orphan-tag", "no-such-order")
        ),
    )
    .await;
    assert_eq!(count(&app, "consent_tags").await, tags);

    // A card record of an order that does not exist, under an existing
    // tag; and a card record moved to a tag that does not exist.
    refused(
        &app,
        &format!(
            "INSERT INTO payment_cards (id, order_id, consent_tag_id, format_version, kek_version, \
             wrapped_dek, ciphertext, brand, last4, fingerprint, fingerprint_key_version) \
             SELECT 'orphan-card', 'no-such-order', consent_tag_id, format_version, kek_version, \
             wrapped_dek, ciphertext, brand, last4, fingerprint, fingerprint_key_version \
             FROM payment_cards WHERE order_id = '{}'",
            ids[0]
        ),
    )
    .await;
    refused(
        &app,
        &format!(
            "UPDATE payment_cards SET consent_tag_id = 'no-such-tag' WHERE order_id = '{}'",
            ids[0]
        ),
    )
    .await;
    assert_eq!(count(&app, "payment_cards").await, cards);

    // An order or a tag deleted from under its records.
    refused(
        &app,
        &format!("DELETE FROM consent_tags WHERE id = '{tag}'"),
    )
    .await;
    refused(&app, &format!("DELETE FROM orders WHERE id = '{}'", ids[0])).await;
    assert_eq!(count(&app, "consent_tags").await, tags);
    assert_eq!(count(&app, "orders").await, orders);
    // Everything refused left nothing behind for the audit to find.
    assert_eq!(run_verify(&app).await.failure_count, 0);

    if app.database.is_postgres() {
        // Stricter than a foreign key: no order is ever deleted, even one
        // without tags, and no key of an order or tag changes.
        insert_bare_order(&app, &ids[0]).await;
        let error = refused(&app, "DELETE FROM orders WHERE id = 'bare-order'").await;
        assert!(
            error.contains("orders: orders and consent tags are never deleted"),
            "{error}"
        );
        refused(&app, "TRUNCATE orders CASCADE").await;
        refused(&app, "TRUNCATE consent_tags CASCADE").await;
        // The append-only tables: row triggers do not see a TRUNCATE.
        for table in ["access_log", "consent_events", "purges"] {
            let truncated = sqlx::query(&format!("TRUNCATE {table}"))
                .execute(&app.db().await)
                .await;
            assert!(
                truncated
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("append-only")),
                "TRUNCATE {table}: {truncated:?}"
            );
        }
        refused(
            &app,
            &format!("UPDATE orders SET id = 'renamed' WHERE id = '{}'", ids[0]),
        )
        .await;
        refused(
            &app,
            &format!("UPDATE consent_tags SET order_id = 'bare-order' WHERE id = '{tag}'"),
        )
        .await;
        assert_eq!(count(&app, "orders").await, orders + 1);
        assert_eq!(count(&app, "consent_tags").await, tags);

        // The checks look at checkoutd's own tables, whatever the writing
        // session's search path finds first: a temporary `orders` holding
        // the id does not vouch for a tag.
        let db = app.db().await;
        let mut session = db.acquire().await.unwrap();
        for statement in [
            "CREATE TEMP TABLE orders (id text)",
            "INSERT INTO pg_temp.orders VALUES ('temp-order')",
        ] {
            sqlx::query(statement).execute(&mut *session).await.unwrap();
        }
        let error = sqlx::query(&format!(
            "{tag_columns}{}",
            copy_tag("temp-tag", "temp-order")
        ))
        .execute(&mut *session)
        .await
        .expect_err("a temporary table vouched for a tag");
        assert!(
            error
                .to_string()
                .contains("consent_tags: a consent tag must name an existing order"),
            "{error}"
        );
        sqlx::query("DROP TABLE pg_temp.orders")
            .execute(&mut *session)
            .await
            .unwrap();
        assert_eq!(count(&app, "consent_tags").await, tags);
        // Every checking function (references, retired KEKs — the latter
        // redefined by 0018, which replaces a function's settings) runs
        // with its search path pinned to checkoutd's schema.
        let unpinned: Vec<String> = sqlx::query_scalar(
            "SELECT proname::text FROM pg_proc
              WHERE proname IN ('refuse_tags_without_order', 'refuse_records_without_own_tag',
                                'refuse_retired_kek_rows', 'refuse_retired_reference_kek_rows',
                                'access_log_head_moves_forward',
                                'consent_events_head_moves_forward')
                AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) c
                                WHERE c = 'search_path=' || quote_ident(current_schema()) || ', pg_temp')",
        )
        .fetch_all(&mut *session)
        .await
        .unwrap();
        assert!(unpinned.is_empty(), "search path not pinned: {unpinned:?}");
        let functions: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_proc WHERE proname IN ('refuse_retired_kek_rows', 'refuse_retired_reference_kek_rows')",
        )
        .fetch_one(&mut *session)
        .await
        .unwrap();
        assert_eq!(functions, 2);
        // Every indexed text column compares byte by byte (0019), and the
        // guards whose triggers name such a column were made again.
        let linguistic: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT c.relname || '.' || a.attname
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
              WHERE c.relnamespace = current_schema()::regnamespace
                AND c.relname <> '_sqlx_migrations'
                AND a.atttypid = 'text'::regtype AND a.attcollation <> '\"C\"'::regcollation",
        )
        .fetch_all(&mut *session)
        .await
        .unwrap();
        assert!(linguistic.is_empty(), "not COLLATE \"C\": {linguistic:?}");
        let guards: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_trigger WHERE tgenabled = 'O' AND tgname IN
                ('orders_id_never_changes', 'consent_tags_keys_never_change',
                 'orders_dispatch_never_undone', 'consent_events_no_update')",
        )
        .fetch_one(&mut *session)
        .await
        .unwrap();
        assert_eq!(guards, 4);
    }
}

/// Both engines refuse what no part of checkoutd ever does and what would
/// undo a guarantee: deleting an order or a consent tag (even one nothing
/// references any more) or changing their keys, deleting an
/// Idempotency-Key row (a retry would become a second order), and deleting
/// or changing a KEK retirement (a server still holding the key would seal
/// under it again).
#[tokio::test]
async fn orders_tags_keys_and_retirements_are_never_deleted() {
    let (app, ids) = populated().await;
    let db = app.db().await;
    let tag = customer_tag(&app, &ids[0]).await;
    insert_bare_order(&app, &ids[0]).await;
    exec(
        &app,
        "INSERT INTO kek_retirements (class, version, retired_at) \
         VALUES ('card', 99, '2026-11-29T00:00:00.000Z')",
    )
    .await;
    for (sql, says) in [
        (
            "DELETE FROM orders WHERE id = 'bare-order'".to_owned(),
            "never deleted",
        ),
        (
            "UPDATE orders SET id = 'renamed' WHERE id = 'bare-order'".to_owned(),
            "never deleted",
        ),
        (
            format!("DELETE FROM consent_tags WHERE id = '{tag}'"),
            "never deleted",
        ),
        (
            format!("UPDATE consent_tags SET order_id = 'bare-order' WHERE id = '{tag}'"),
            "never deleted",
        ),
        (
            format!("DELETE FROM idempotency_keys WHERE order_id = '{}'", ids[1]),
            "a key row is never deleted",
        ),
        (
            "UPDATE kek_retirements SET version = 98 WHERE version = 99".to_owned(),
            "append-only",
        ),
        ("DELETE FROM kek_retirements".to_owned(), "append-only"),
    ] {
        let error = match sqlx::query(&sql).execute(&db).await {
            Ok(done) => panic!("the database took {sql:?} ({} rows)", done.rows_affected()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(says), "{sql:?}: {error}");
    }
    if app.database.is_postgres() {
        for table in ["idempotency_keys", "kek_retirements"] {
            let error = sqlx::query(&format!("TRUNCATE {table}"))
                .execute(&db)
                .await
                .expect_err("TRUNCATE was taken");
            assert!(
                error.to_string().contains("never deleted")
                    || error.to_string().contains("append-only"),
                "{table}: {error}"
            );
        }
    }
}

/// SQLite's TEXT takes bytes that are not UTF-8 (`CAST(x'…' AS TEXT)`),
/// and one such value used to fail the audit's whole query: an attacker
/// could stop every audit. Now the audit runs to its end and names each
/// such row — an order, a consent tag, a card record, an access-log entry
/// and a withdrawal here — and the per-order view still answers.
#[tokio::test]
async fn text_that_is_not_utf8_is_named_not_a_stopped_audit() {
    let (app, ids) = populated().await;
    if app.database.is_postgres() {
        // PostgreSQL refuses such bytes in text (UTF8 server encoding).
        return;
    }
    let tag = customer_tag(&app, &ids[1]).await;
    let card = id_of(
        &app,
        &format!("SELECT id FROM payment_cards WHERE order_id = '{}'", ids[2]),
    )
    .await;
    let r = app
        .client(Role::Storefront)
        .post(app.url("/v1/consent/opt-out"))
        .json(&json!({"email": "grace@example.com", "purposes": "all", "channel": "postal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    app.unguard("access_log").await;
    app.unguard("consent_events").await;
    exec(
        &app,
        &format!(
            "UPDATE orders SET storefront_ref = CAST(x'41ff2d31' AS TEXT) WHERE id = '{}';
             UPDATE consent_tags SET policy_version = CAST(x'c0af' AS TEXT) WHERE id = '{tag}';
             UPDATE payment_cards SET brand = CAST(x'76697361fe' AS TEXT) WHERE id = '{card}';
             UPDATE access_log SET origin_ip = CAST(x'3132372e30ff' AS TEXT) WHERE seq = 2;
             UPDATE consent_events SET received_at = CAST(x'32303236ff' AS TEXT) WHERE seq = 1",
            ids[0]
        ),
    )
    .await;
    app.reguard().await;
    let report = run_verify(&app).await;
    for (table, id, what) in [
        ("orders", &ids[0][..], "MAC does not verify"),
        ("consent_tags", &tag, "MAC does not verify"),
        ("payment_cards", &card, "brand does not match"),
        ("access_log", "2", "access-log entry"),
    ] {
        assert!(has(&report, table, id, what), "{:#?}", report.failures);
    }
    assert!(!report.access_log.intact);
    assert!(
        report.failures.iter().any(|f| f.table == "consent_events"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 5, "{:#?}", report.failures);
    let r = app
        .client(Role::Auditor)
        .get(app.url(&format!("/v1/audit/orders/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["verified"], false, "{v:#}");
}

/// Fields that hold what the service never writes — a withdrawal's
/// reference columns half emptied, an access-log entry whose `objects` is no
/// JSON list (an unknown `outcome` the schema's CHECK refuses) — are
/// findings naming the row,
/// not an audit that stops with an error; the access-log page shows the
/// auditor which entry is damaged instead of failing.
#[tokio::test]
async fn fields_the_service_never_writes_are_named_not_a_stopped_audit() {
    let (app, _ids) = populated().await;
    let r = app
        .client(Role::Storefront)
        .post(app.url("/v1/consent/opt-out"))
        .json(
            &json!({"email": "grace@example.com", "purposes": "all", "channel": "email",
                      "reference": "<msg-1@example.com>"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let withdrawal = id_of(&app, "SELECT id FROM consent_events WHERE seq = 1").await;
    app.unguard("access_log").await;
    app.unguard("consent_events").await;
    exec(
        &app,
        "UPDATE consent_events SET reference_kek_version = NULL WHERE seq = 1;
         UPDATE access_log SET objects = 'not a list' WHERE seq = 2",
    )
    .await;
    let report = run_verify(&app).await;
    for (table, id, what) in [
        (
            "consent_events",
            &withdrawal[..],
            "reference columns partly empty",
        ),
        ("access_log", "2", "objects is not a JSON list"),
    ] {
        assert!(has(&report, table, id, what), "{:#?}", report.failures);
    }
    assert!(!report.access_log.intact);
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/log?limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let damaged: Vec<(u64, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["seq"].as_u64()?, e["damaged"].as_str()?.to_owned())))
        .collect();
    assert_eq!(damaged.len(), 1, "{page:#}");
    assert_eq!(damaged[0].0, 2);
    assert!(damaged[0].1.contains("objects"), "{damaged:?}");
}

/// The same for the entries the order checks read: an allowed listing
/// whose `objects` is a JSON object, not a list, and a dispatch entry whose
/// `at` is no time — named by the chain's check, while the checks that
/// look up the orders they name pass them over instead of stopping.
#[tokio::test]
async fn damaged_entries_do_not_stop_the_order_checks_of_the_log() {
    let (app, ids) = populated().await;
    let r = app
        .dispatch(&ids[2], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    for _ in 0..2 {
        let page = app.shipments("").await;
        assert!(page["shipments"].as_array().is_some_and(|s| !s.is_empty()));
    }
    app.unguard("access_log").await;
    exec(
        &app,
        "UPDATE access_log SET objects = '{\"not\":\"a list\"}'
          WHERE seq = (SELECT max(seq) FROM access_log WHERE action = 'GET /v1/shipments');
         UPDATE access_log SET objects = 'not a list'
          WHERE seq = (SELECT min(seq) FROM access_log WHERE action = 'GET /v1/shipments');
         UPDATE access_log SET at = '0000'
          WHERE action = 'POST /v1/shipments/{order_id}/dispatch'",
    )
    .await;
    let report = run_verify(&app).await;
    assert!(!report.access_log.intact);
    assert!(
        report.failures.iter().any(|f| f.table == "access_log"),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn swapped_card_envelopes_are_named() {
    let (app, ids) = populated().await;
    let a = id_of(
        &app,
        &format!("SELECT id FROM payment_cards WHERE order_id = '{}'", ids[0]),
    )
    .await;
    let b = id_of(
        &app,
        &format!("SELECT id FROM payment_cards WHERE order_id = '{}'", ids[3]),
    )
    .await;
    exec(
        &app,
        &format!(
            "CREATE TEMP TABLE swap AS SELECT id, ciphertext, wrapped_dek FROM payment_cards WHERE id IN ('{a}', '{b}');
             UPDATE payment_cards SET ciphertext = (SELECT ciphertext FROM swap WHERE id = '{b}'),
                wrapped_dek = (SELECT wrapped_dek FROM swap WHERE id = '{b}') WHERE id = '{a}';
             UPDATE payment_cards SET ciphertext = (SELECT ciphertext FROM swap WHERE id = '{a}'),
                wrapped_dek = (SELECT wrapped_dek FROM swap WHERE id = '{a}') WHERE id = '{b}'"
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "payment_cards", &a, "does not open"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "payment_cards", &b, "does not open"),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn a_billing_envelope_moved_into_the_shipping_table_is_named() {
    let (app, ids) = populated().await;
    let ship = id_of(
        &app,
        &format!(
            "SELECT id FROM shipping_details WHERE order_id = '{}'",
            ids[0]
        ),
    )
    .await;
    exec(
        &app,
        &format!(
            "UPDATE shipping_details SET
                ciphertext = (SELECT ciphertext FROM billing_details WHERE order_id = '{o}'),
                wrapped_dek = (SELECT wrapped_dek FROM billing_details WHERE order_id = '{o}')
              WHERE id = '{ship}'",
            o = ids[0]
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "shipping_details", &ship, "does not open"),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn a_relabelled_kek_version_is_named() {
    let (app, ids) = populated().await;
    let billing = id_of(
        &app,
        &format!(
            "SELECT id FROM billing_details WHERE order_id = '{}'",
            ids[2]
        ),
    )
    .await;
    exec(
        &app,
        &format!("UPDATE billing_details SET kek_version = 2 WHERE id = '{billing}'"),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(
            &report,
            "billing_details",
            &billing,
            "KEK version 2 is not in the keyring"
        ),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn a_plaintext_card_number_in_a_clear_column_is_named() {
    let (app, ids) = populated().await;
    exec(
        &app,
        &format!(
            "UPDATE orders SET storefront_ref = 'A-1001-4111-1111-1111-1111' WHERE id = '{}'",
            ids[1]
        ),
    )
    .await;
    // The dispatch facts are scanned with the rule a dispatch is checked by.
    exec(
        &app,
        &format!(
            "UPDATE orders SET tracking = 'X 12 4111 1111 1111 1111' WHERE id = '{}'",
            ids[0]
        ),
    )
    .await;
    exec(&app, &format!("UPDATE orders SET items = '[{{\"sku\":\"a\",\"description\":\"ada@example.com\"}}]' WHERE id = '{}'", ids[2])).await;
    // Grouped as a person types it, and followed by the CVC: what intake
    // refuses in a clear field, the audit finds in a clear column.
    exec(
        &app,
        &format!(
            "UPDATE orders SET items = '[{{\"sku\":\"a\",\"description\":\"4111.1111.1111.1111 123\"}}]' WHERE id = '{}'",
            ids[3]
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "orders", &ids[3], "items holds a card number"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(
            &report,
            "orders",
            &ids[1],
            "storefront_ref holds a card number"
        ),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "orders", &ids[0], "tracking holds a card number"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "orders", &ids[2], "items holds an email address"),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn access_log_tampering_is_named() {
    for (sql, seq) in [
        ("UPDATE access_log SET role = 'auditor' WHERE seq = 2", "2"),
        ("DELETE FROM access_log WHERE seq = 1", "1"),
        (
            "UPDATE access_log SET seq = 100 WHERE seq = 1; UPDATE access_log SET seq = 1 WHERE seq = 2; UPDATE access_log SET seq = 2 WHERE seq = 100",
            "1",
        ),
    ] {
        let (app, _) = populated().await;
        app.unguard("access_log").await;
        exec(&app, sql).await;
        let report = run_verify(&app).await;
        assert!(!report.access_log.intact);
        assert!(
            has(&report, "access_log", seq, "access-log entry"),
            "{sql}: {:#?}",
            report.failures
        );
    }
}

/// The ledgers are append-only against SQLite's REPLACE too, which deletes
/// the row in its way without firing a delete or update trigger: swapping
/// an access-log entry or a withdrawal for another is refused, and the
/// chains verify as they were.
#[tokio::test]
async fn a_ledger_entry_is_never_replaced() {
    let (app, _) = populated().await;
    if app.database.is_postgres() {
        crate::multi::skipped(
            "audit::a_ledger_entry_is_never_replaced",
            "PostgreSQL has no REPLACE; its upsert fires the update guards",
        );
        return;
    }
    let db = app.db().await;
    let opt_out = app
        .client(Role::Storefront)
        .post(app.url("/v1/consent/opt-out"))
        .json(&json!({"email": "ada@example.com", "purposes": ["special_offers"], "channel": "email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(opt_out.status(), 202);
    for (sql, what) in [
        (
            "INSERT OR REPLACE INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action,
                 objects, outcome, status, prev_hash, hash, mac)
             SELECT seq, at, 'auditor', cert_fingerprint, origin_ip, action, objects, outcome,
                 status, prev_hash, hash, mac FROM access_log WHERE seq = 1",
            "access_log is append-only",
        ),
        (
            "REPLACE INTO consent_events SELECT * FROM consent_events WHERE seq = 1",
            "consent_events is append-only",
        ),
    ] {
        let refused = sqlx::query(sql).execute(&db).await.unwrap_err().to_string();
        assert!(refused.contains(what), "{sql}: {refused}");
    }
    // The purges and the retirements: a REPLACE is skipped, the row stays.
    let retired_at = "1999-01-01T00:00:00.000Z";
    sqlx::query("INSERT INTO kek_retirements (class, version, retired_at) VALUES ('card', 7, '2026-01-01T00:00:00.000Z')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(&format!(
        "REPLACE INTO kek_retirements (class, version, retired_at) VALUES ('card', 7, '{retired_at}')"
    ))
    .execute(&db)
    .await
    .unwrap();
    let kept: String = sqlx::query_scalar(
        "SELECT retired_at FROM kek_retirements WHERE class = 'card' AND version = 7",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_ne!(kept, retired_at);
    sqlx::query("DELETE FROM kek_retirements WHERE 0")
        .execute(&db)
        .await
        .unwrap();
    let report = run_verify(&app).await;
    assert!(report.access_log.intact);
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.table != "access_log" && f.table != "consent_events"),
        "{:#?}",
        report.failures
    );
}

/// A row numbered 0 or below sits before the chain's first entry: the
/// database refuses it, and one written anyway (the guard switched off)
/// is named by the chain check — the lowest number there is too, which a
/// walk "after n" never reaches.
#[tokio::test]
async fn access_log_rows_numbered_below_one_are_refused_and_named() {
    let copy_of_first = |seq: i64| {
        format!(
            "INSERT INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action, objects,
                 outcome, status, prev_hash, hash, mac)
             SELECT {seq}, at, role, cert_fingerprint, origin_ip, action, objects, outcome,
                 status, prev_hash, hash, mac FROM access_log WHERE seq = 1"
        )
    };
    for (seq, named) in [(0, "below 1"), (-1, "below 1"), (i64::MIN, "below 1")] {
        let (app, _) = populated().await;
        let db = app.db().await;
        let refused = sqlx::query(&copy_of_first(seq)).execute(&db).await;
        // SQLite's trigger says so; PostgreSQL names its constraint.
        let refusal = refused.unwrap_err().to_string();
        assert!(
            refusal.contains("numbered from 1") || refusal.contains("access_log_numbered_from_one"),
            "{refusal}"
        );
        if app.database.is_postgres() {
            exec(
                &app,
                "ALTER TABLE access_log DROP CONSTRAINT access_log_numbered_from_one",
            )
            .await;
        } else {
            app.unguard("access_log").await;
        }
        exec(&app, &copy_of_first(seq)).await;
        // The auditor's pages still start at entry 1, unaffected.
        let entries = app.access_log_entries().await;
        assert_eq!(entries[0]["seq"], 1, "{seq}");
        let report = run_verify(&app).await;
        assert!(!report.access_log.intact);
        assert!(
            report.failures.iter().any(
                |f| f.table == "access_log" && (f.record_id == named || f.what.contains(named))
            ),
            "{seq}: {:#?}",
            report.failures
        );
    }
}

fn checkoutd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_checkoutd"))
}

#[tokio::test]
async fn offline_audit_exit_codes_and_html_report() {
    let (app, ids) = populated().await;
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("data");
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["keyring.json", "master.key"] {
        std::fs::copy(app.dir.path().join("data").join(file), copy.join(file)).unwrap();
    }
    let url = if app.database.is_postgres() {
        // Audited in place, over a read-only connection; the tampering
        // below then edits the test's own database.
        app.database.url.clone()
    } else {
        // A consistent copy: VACUUM INTO.
        let db = app.db().await;
        let file = copy.join("checkoutd.db");
        sqlx::query(&format!("VACUUM INTO '{}'", file.display()))
            .execute(&db)
            .await
            .unwrap();
        format!("sqlite://{}", file.display())
    };

    let out = work.path().join("report.json");
    let html = work.path().join("report.html");
    let status = checkoutd()
        .env("CHECKOUTD_DATABASE_URL", &url)
        .args(["audit", "--data-dir"])
        .arg(&copy)
        .arg("--out")
        .arg(&out)
        .arg("--html")
        .arg(&html)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["report"]["verified"], true);
    assert!(doc["signature"]["value_hex"].as_str().unwrap().len() == 128);
    render_in_chromium(&html, true);

    // An earlier report (JSON or HTML) is replaced; a file that is not one —
    // a keyring named by a mistyped --out — never is (2, kept as it was),
    // nor a symbolic link (its target untouched), checked before anything
    // is written.
    let again = |target: &std::path::Path, html: &std::path::Path| {
        checkoutd()
            .env("CHECKOUTD_DATABASE_URL", &url)
            .args(["audit", "--data-dir"])
            .arg(&copy)
            .arg("--out")
            .arg(target)
            .arg("--html")
            .arg(html)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(again(&out, &html), Some(0), "a report replaces a report");
    let keyring_like = work.path().join("keyring.json");
    std::fs::write(&keyring_like, br#"{"format":"not a report"}"#).unwrap();
    assert_eq!(again(&keyring_like, &html), Some(2));
    assert_eq!(
        std::fs::read(&keyring_like).unwrap(),
        br#"{"format":"not a report"}"#
    );
    // A refused --html leaves the JSON report as it was.
    let before = std::fs::read(&out).unwrap();
    assert_eq!(again(&out, &keyring_like), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    #[cfg(unix)]
    {
        let link = work.path().join("linked.json");
        std::os::unix::fs::symlink(&out, &link).unwrap();
        assert_eq!(again(&link, &html), Some(2));
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&out).unwrap(), before);
    }

    // Tamper with the copy: a flipped purpose and two swapped card envelopes.
    let tampered = sqlx::AnyPool::connect(&url).await.unwrap();
    let (a, b) = (&ids[0], &ids[3]);
    for sql in [
        format!("UPDATE consent_tags SET partnerships = 1 WHERE order_id = '{a}'"),
        format!(
            "UPDATE payment_cards SET ciphertext = (SELECT ciphertext FROM payment_cards WHERE order_id = '{b}') WHERE order_id = '{a}'"
        ),
        format!(
            "UPDATE payment_cards SET wrapped_dek = (SELECT wrapped_dek FROM payment_cards WHERE order_id = '{a}') WHERE order_id = '{b}'"
        ),
    ] {
        sqlx::query(&sql).execute(&tampered).await.unwrap();
    }
    tampered.close().await;
    let out2 = work.path().join("report2.json");
    let html2 = work.path().join("report2.html");
    let status = checkoutd()
        .env("CHECKOUTD_DATABASE_URL", &url)
        .args(["audit", "--data-dir"])
        .arg(&copy)
        .arg("--out")
        .arg(&out2)
        .arg("--html")
        .arg(&html2)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&std::fs::read(&out2).unwrap()).unwrap();
    assert!(
        doc["report"]["failure_count"].as_u64().unwrap() >= 3,
        "{doc:#}"
    );
    render_in_chromium(&html2, false);

    // A head value this service never writes is a finding (1); a log that
    // cannot be read at all is an I/O error (2), not a finding.
    let run = |name: &str| {
        checkoutd()
            .env("CHECKOUTD_DATABASE_URL", &url)
            .args(["audit", "--data-dir"])
            .arg(&copy)
            .arg("--out")
            .arg(work.path().join(name))
            .status()
            .unwrap()
    };
    let tampered = sqlx::AnyPool::connect(&url).await.unwrap();
    // (Past the guard that a head names the last entry.)
    if app.database.is_postgres() {
        app.unguard("access_log_head").await;
    } else {
        sqlx::query("DROP TRIGGER access_log_head_update_moves_forward")
            .execute(&tampered)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE access_log_head SET hash = substr(hash, 1, 4)")
        .execute(&tampered)
        .await
        .unwrap();
    assert_eq!(run("report3.json").code(), Some(1));
    let doc: Value =
        serde_json::from_slice(&std::fs::read(work.path().join("report3.json")).unwrap()).unwrap();
    assert!(
        doc["report"]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["table"] == "access_log"
                && f["what"]
                    .as_str()
                    .unwrap()
                    .contains("access_log_head.hash does not hold")),
        "{doc:#}"
    );
    sqlx::query("ALTER TABLE access_log_head RENAME TO access_log_head_away")
        .execute(&tampered)
        .await
        .unwrap();
    tampered.close().await;
    let unreadable = work.path().join("report4.json");
    assert_eq!(run("report4.json").code(), Some(2));
    assert!(
        !unreadable.exists(),
        "no report is written for a failed run"
    );

    // Usage and I/O errors are 2.
    let status = checkoutd()
        .args(["audit", "--data-dir", "/nonexistent", "--out"])
        .arg(work.path().join("x.json"))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let status = checkoutd()
        .args(["audit", "--no-such-flag"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

/// Loads the HTML report in headless Chromium: it must render its content
/// (summary and both SVG charts) and log no console error.
fn render_in_chromium(path: &std::path::Path, clean: bool) {
    let chromium = chromium_binary();
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", path.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("checkoutd audit report"), "{dom}");
    assert_eq!(dom.matches("<svg").count(), 2, "both charts render");
    assert!(dom.contains("Consent per purpose"));
    assert!(dom.contains(if clean {
        "Everything verifies."
    } else {
        "failure(s) found."
    }));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("CONSOLE") && !stderr.contains("Uncaught"),
        "console errors: {stderr}"
    );
}

/// The Chromium binary; the browser tests need one (`.ci/run` installs it).
pub fn chromium_binary() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("Chromium is needed for the browser tests: apt-get install chromium (.ci/run does this)")
}

#[tokio::test]
async fn edited_orders_rolled_back_dispatches_and_dropped_gift_recipients_are_named() {
    let (app, ids) = populated().await;
    // Dispatch one order, then roll it back to pending (to ship it twice).
    let r = app
        .dispatch(&ids[3], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    exec(&app, &format!("UPDATE orders SET items = replace(items, '\"quantity\":2', '\"quantity\":20') WHERE id = '{}'", ids[0])).await;
    // The database refuses to undo a dispatch (0014 / 0017): switched off,
    // as the table's owner could.
    app.unguard("orders").await;
    exec(
        &app,
        &format!(
            "UPDATE orders SET status = 'accepted' WHERE id = '{}'",
            ids[3]
        ),
    )
    .await;
    // Drop the gift recipient and pretend the order was never a gift.
    exec(
        &app,
        &format!(
            "DELETE FROM gift_recipients WHERE order_id = '{o}'; UPDATE orders SET gift = 0 WHERE id = '{o}'",
            o = ids[1]
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "orders", &ids[0], "MAC does not verify"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "orders", &ids[3], "status rolled back"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "orders", &ids[1], "MAC does not verify"),
        "{:#?}",
        report.failures
    );
    assert!(
        has(&report, "orders", &ids[1], "shipping marker"),
        "{:#?}",
        report.failures
    );
    // The warehouse still gets its page, with the broken gift order flagged.
    let page = app.shipments("").await;
    let broken = page["shipments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["order_id"] == ids[1].as_str())
        .unwrap();
    assert_eq!(broken["integrity_error"], true);
    assert!(broken["ship_to"].is_null());
}

/// A dispatched order deleted whole — its row, records, tags and
/// idempotency row, so that every check among them still agrees — is found
/// through the access log's entry for its dispatch.
#[tokio::test]
async fn a_dispatched_order_deleted_whole_is_found_through_the_access_log() {
    let (app, ids) = populated().await;
    let r = app
        .dispatch(&ids[3], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    let report = run_verify(&app).await;
    assert!(report.verified, "{:#?}", report.failures);
    let id = &ids[3];
    delete_order_whole(&app, id).await;
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(&report, "orders", id, "missing, but access-log entry"),
        "{:#?}",
        report.failures
    );
}

/// Deletes order `id` with everything of it — its records, tags and
/// idempotency row, so that every check among them still agrees — the
/// guards switched off first.
async fn delete_order_whole(app: &TestApp, id: &str) {
    let children = [
        "payment_cards",
        "contact_emails",
        "gift_recipients",
        "shipping_details",
        "billing_details",
        "idempotency_keys",
        "consent_tags",
    ];
    for table in children.iter().chain(&["orders"]) {
        app.unguard(table).await;
    }
    let deletes: Vec<String> = children
        .iter()
        .map(|t| format!("DELETE FROM {t} WHERE order_id = '{id}'"))
        .collect();
    let sql = if app.database.is_postgres() {
        // Orders and their tags refer to each other: one statement, its
        // references checked at its end.
        let ctes: Vec<String> = deletes
            .iter()
            .enumerate()
            .map(|(n, d)| format!("d{n} AS ({d})"))
            .collect();
        format!(
            "WITH {} DELETE FROM orders WHERE id = '{id}'",
            ctes.join(", ")
        )
    } else {
        format!(
            "PRAGMA foreign_keys = OFF; {}; DELETE FROM orders WHERE id = '{id}'",
            deletes.join("; ")
        )
    };
    exec(app, &sql).await;
}

/// An order never dispatched, deleted whole (a customer's latest "no"
/// removed, so that an older "yes" counts again): found through any
/// access-log entry that names it — here the warehouse's listing.
#[tokio::test]
async fn an_undispatched_order_deleted_whole_is_found_through_a_listing_that_named_it() {
    let (app, ids) = populated().await;
    let page = app.shipments("").await;
    assert!(
        page["shipments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["order_id"] == ids[2].as_str()),
        "{page}"
    );
    assert!(run_verify(&app).await.verified);
    delete_order_whole(&app, &ids[2]).await;
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(&report, "orders", &ids[2], "names it (deleted)"),
        "{:#?}",
        report.failures
    );
}

/// A dispatch undone (the guard switched off) and the order dispatched
/// again — the warehouse saw it pending once more and shipped it twice —
/// is found: the first dispatch's access-log entry is older than the
/// order's dispatch now, which no dispatch's own entry ever is (a repeated
/// dispatch keeps the first one's time).
#[tokio::test]
async fn a_dispatch_undone_and_made_again_is_found() {
    let (app, ids) = populated().await;
    let r = app
        .dispatch(&ids[2], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    // The warehouse repeats it a moment later: no finding.
    let r = app
        .dispatch(&ids[2], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    assert!(run_verify(&app).await.verified);
    // Past the clocks' tolerance, the dispatch is undone …
    tokio::time::sleep(std::time::Duration::from_secs(
        u64::from(checkoutd::store::sql::REDISPATCH_TOLERANCE_SECONDS) + 1,
    ))
    .await;
    app.unguard("orders").await;
    exec(
        &app,
        &format!(
            "UPDATE orders SET status = 'accepted', carrier = NULL, tracking = NULL, \
             dispatched_at = NULL, dispatch_mac = NULL WHERE id = '{}'",
            ids[2]
        ),
    )
    .await;
    // … and the warehouse, seeing it pending, ships it again.
    let r = app
        .dispatch(&ids[2], &json!({"carrier": "DHL", "tracking": "JD01"}))
        .await;
    assert_eq!(r.status(), 200);
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(&report, "orders", &ids[2], "undone and dispatched again"),
        "{:#?}",
        report.failures
    );
}

/// A dispatch set back in full — status, carrier, tracking, time and
/// MAC, the row exactly as before it shipped — is found through the
/// access log's entry for it (the order's own MAC cannot cover a status
/// that changes once).
#[tokio::test]
async fn a_dispatch_rolled_back_in_full_is_found_through_the_access_log() {
    let (app, ids) = populated().await;
    for id in [&ids[2], &ids[3]] {
        let r = app
            .dispatch(id, &json!({"carrier": "UPS", "tracking": "1Z"}))
            .await;
        assert_eq!(r.status(), 200);
    }
    // Dispatched orders, and a dispatch repeated (answered 200 again), are
    // no finding.
    let r = app
        .dispatch(&ids[3], &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    let report = run_verify(&app).await;
    assert!(report.verified, "{:#?}", report.failures);
    let db = app.db().await;
    let undo = format!(
        "UPDATE orders SET status = 'accepted', carrier = NULL, tracking = NULL, dispatched_at = NULL, dispatch_mac = NULL WHERE id = '{}'",
        ids[2]
    );
    // The database refuses to undo a dispatch (0014 / 0017), or to change
    // one …
    let refused = sqlx::query(&undo).execute(&db).await.unwrap_err();
    assert!(
        refused.to_string().contains("a dispatch is never undone"),
        "{refused}"
    );
    let changed = format!("UPDATE orders SET tracking = '1Y' WHERE id = '{}'", ids[2]);
    assert!(sqlx::query(&changed).execute(&db).await.is_err());
    // … but the table's owner can switch the guard off: the audit finds it.
    app.unguard("orders").await;
    exec(&app, &undo).await;
    app.reguard().await;
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(
            &report,
            "orders",
            &ids[2],
            "records its dispatch (rolled back)"
        ),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);
    // The warehouse would ship it again: it is pending once more.
    let page = app.shipments("").await;
    assert!(
        page["shipments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["order_id"] == ids[2].as_str())
    );

    // The reverse: a dispatch no log entry records — written as the
    // service writes it (its MAC verifies), but its log append failed, or
    // it was written straight into the database.
    // (An hour ago: a dispatch of the last minutes may still be waiting
    // for its entry, and is no finding yet.)
    let at = checkoutd::ids::timestamp(time::OffsetDateTime::now_utc() - time::Duration::hours(1));
    let mac = app.keyring().consent_tag_key().sign(&[
        &checkoutd::intake::seal::dispatch_canonical_bytes(&ids[0], "UPS", "1Z9", &at),
    ]);
    let db = app.db().await;
    sqlx::query(
        "UPDATE orders SET status = 'dispatched', carrier = 'UPS', tracking = '1Z9', \
         dispatched_at = $1, dispatch_mac = $2 WHERE id = $3",
    )
    .bind(&at)
    .bind(mac.as_slice())
    .bind(&ids[0])
    .execute(&db)
    .await
    .unwrap();
    let report = run_verify(&app).await;
    assert!(
        has(
            &report,
            "orders",
            &ids[0],
            "dispatched, but no access-log entry records its dispatch"
        ),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 2, "{:#?}", report.failures);
}

/// `seq` is under no MAC: an order moved out of the walk's range (to 0,
/// below, or to the lowest value there is) is still audited, or counted as
/// out of reach — never silently skipped.
#[tokio::test]
async fn an_order_whose_sequence_number_was_edited_is_not_skipped() {
    let (app, ids) = populated().await;
    exec(
        &app,
        &format!(
            "UPDATE orders SET seq = -seq WHERE id = '{o}'; UPDATE orders SET items = replace(items, '\"quantity\":2', '\"quantity\":20') WHERE id = '{o}'",
            o = ids[0]
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "orders", &ids[0], "MAC does not verify"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.orders_checked, 4);
    // The lowest value there is, and an edit under it.
    exec(
        &app,
        &format!(
            "UPDATE orders SET seq = -9223372036854775808 WHERE id = '{o}'; UPDATE orders SET total_minor = total_minor + 1 WHERE id = '{o}'",
            o = ids[1]
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        has(&report, "orders", &ids[1], "MAC does not verify"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.orders_checked, 4);
    // A clear card number in a row at the lowest rowid (SQLite) or first
    // position is scanned too.
    let id_type = if app.database.is_postgres() {
        "BIGINT"
    } else {
        "INTEGER"
    };
    exec(
        &app,
        &format!(
            "CREATE TABLE notes (id {id_type} PRIMARY KEY, body TEXT); INSERT INTO notes VALUES (-9223372036854775808, 'card 4111 1111 1111 1111')"
        ),
    )
    .await;
    let report = run_verify(&app).await;
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.table == "notes" && f.what == "clear column body holds a card number"),
        "{:#?}",
        report.failures
    );
}

#[tokio::test]
async fn the_report_runs_in_the_background_and_is_shared() {
    use checkoutd::audit::job::ReportJob;
    use std::sync::Arc;
    use std::time::Duration;
    let (app, _) = populated().await;
    let store: Arc<dyn checkoutd::store::Store> = Arc::new(app.store().await);
    let keyring = Arc::new(app.keyring());
    let job = Arc::new(ReportJob::default());
    // A caller that cannot wait gets "still running" (the API answers 202).
    assert!(
        job.latest_or_start(store.clone(), keyring.clone(), Duration::ZERO)
            .await
            .is_none()
    );
    // A patient caller collects the same run's result.
    let first = job
        .latest_or_start(store.clone(), keyring.clone(), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first["report"]["verified"], true);
    // Within the freshness window the finished report is served as is.
    let again = job
        .latest_or_start(store, keyring, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&first, &again));
}

/// What a database writer plants in a tag's text columns (a card number, an
/// email) is withheld, not quoted, in the auditor's per-order view and in
/// the consent proof: auditors never see a card number, even one put in a
/// column that should hold a policy version.
#[tokio::test]
async fn values_planted_in_the_database_are_not_quoted_to_the_auditor() {
    let (app, ids) = populated().await;
    let tag = customer_tag(&app, &ids[0]).await;
    let (planted_pan, planted_email) = ("378282246310005", "mallory@example.net");
    // Grouped by dots, with a CVC after it: the whole run fails Luhn.
    let planted_grouped = "4012.8888.8888.1881.123";
    exec(
        &app,
        &format!(
            "UPDATE consent_tags SET policy_version = '{planted_pan}', channel = '{planted_email}',
                    captured_at = '{planted_grouped}'
              WHERE id = '{tag}'"
        ),
    )
    .await;
    for path in [
        format!("/v1/audit/orders/{}", ids[0]),
        "/v1/audit/consent?email=ada%40example.com".to_owned(),
    ] {
        let r = app
            .client(Role::Auditor)
            .get(app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(!text.contains(planted_pan), "{path}: {text}");
        assert!(!text.contains(planted_email), "{path}: {text}");
        assert!(!text.contains(planted_grouped), "{path}: {text}");
        assert!(text.contains("withheld"), "{path}: {text}");
    }
}

/// DESIGN: the envelope format is documented "precisely enough that an
/// auditor can decrypt a record with the keyring and an independent AES-GCM
/// implementation". The Python example of docs/encryption.md, as printed
/// there, run against a populated data directory: it opens the keyring with
/// the master key and decrypts every record of every class (Python's
/// `cryptography`, not ring). On PostgreSQL the records' columns are first
/// copied, byte for byte, into the SQLite file the example reads.
#[tokio::test]
async fn the_documented_python_decrypts_every_record_independently() {
    let (app, ids) = populated().await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/encryption.md"))
        .unwrap();
    let script = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("docs/encryption.md has a Python example");
    let tables = [
        "payment_cards",
        "billing_details",
        "shipping_details",
        "gift_recipients",
        "contact_emails",
    ];
    if app.database.is_postgres() {
        let from = app.db().await;
        let copy =
            sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", app.db_path().display()))
                .await
                .unwrap();
        for table in tables {
            sqlx::query(&format!(
                "CREATE TABLE {table} (id TEXT, order_id TEXT, format_version INTEGER, \
                 kek_version INTEGER, wrapped_dek BLOB, ciphertext BLOB)"
            ))
            .execute(&copy)
            .await
            .unwrap();
            let rows = sqlx::query(&format!(
                "SELECT CAST(id AS TEXT) AS id, CAST(order_id AS TEXT) AS order_id, \
                 CAST(format_version AS BIGINT) AS f, CAST(kek_version AS BIGINT) AS k, \
                 wrapped_dek, ciphertext FROM {table}"
            ))
            .fetch_all(&from)
            .await
            .unwrap();
            for r in rows {
                use sqlx::Row;
                sqlx::query(&format!("INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)"))
                    .bind(r.get::<String, _>("id"))
                    .bind(r.get::<String, _>("order_id"))
                    .bind(r.get::<Option<i64>, _>("f"))
                    .bind(r.get::<Option<i64>, _>("k"))
                    .bind(r.get::<Option<Vec<u8>>, _>("wrapped_dek"))
                    .bind(r.get::<Option<Vec<u8>>, _>("ciphertext"))
                    .execute(&copy)
                    .await
                    .unwrap();
            }
        }
        copy.close().await;
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(app.dir.path())
        .output()
        .expect("python3 runs (the suite needs it, with Debian's python3-cryptography)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the documented example failed (is python3-cryptography installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per record: `<table> <plaintext as a Python dict>`.
    let db = app.db().await;
    for table in tables {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE ciphertext IS NOT NULL"
        ))
        .fetch_one(&db)
        .await
        .unwrap();
        let printed = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{table} ")))
            .count();
        assert!(n > 0, "{table}: nothing to decrypt");
        assert_eq!(printed as i64, n, "{table}: {stdout}");
    }
    // What the storefront sent comes back from the ciphertexts alone.
    for plain in [
        "4111111111111111",
        "378282246310005",
        "Ada Lovelace",
        "51 Columbia",
        "ada@example.com",
        "grace@example.com",
    ] {
        assert!(stdout.contains(plain), "{plain} not decrypted: {stdout}");
    }
    assert_eq!(ids.len(), 4);
}

/// Orders are never replaced, Idempotency-Key rows never re-keyed, and no
/// record is moved under a retired KEK by an update (review of the storage
/// rules): SQLite's REPLACE of a dispatched order is refused (it would come
/// back as 'accepted', past the warehouse's cursor, and ship twice); a key
/// row's key or answer never changes (a row re-keyed is as good as deleted:
/// a retry would make a second charge), while its request hash still may
/// (the replay window empties it).
#[tokio::test]
async fn orders_are_never_replaced_nor_key_rows_rekeyed() {
    let (app, ids) = populated().await;
    let db = app.db().await;
    let r = app
        .dispatch(&ids[0], &json!({"carrier": "UPS", "tracking": "1Z999"}))
        .await;
    assert_eq!(r.status(), 200);
    let refused = |sql: String, what: &'static str| {
        let db = db.clone();
        async move {
            let error = sqlx::query(&sql)
                .execute(&db)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains(what), "{sql}: {error}");
        }
    };
    if !app.database.is_postgres() {
        refused(
            format!(
                "REPLACE INTO orders SELECT * FROM orders WHERE id = '{}'",
                ids[0]
            ),
            "orders: orders and consent tags are never deleted",
        )
        .await;
    }
    for set in [
        "key_hash = client",
        &format!("order_id = '{}'", ids[1]),
        "response_status = 200",
        "created_at = '2000-01-01T00:00:00.000Z'",
    ] {
        refused(
            format!(
                "UPDATE idempotency_keys SET {set} WHERE order_id = '{}'",
                ids[0]
            ),
            "idempotency_keys: a key row's key and answer never change",
        )
        .await;
    }
    sqlx::query(&format!(
        "UPDATE idempotency_keys SET request_hash = request_hash WHERE order_id = '{}'",
        ids[0]
    ))
    .execute(&db)
    .await
    .expect("the request hash may still change");
    sqlx::query("INSERT INTO kek_retirements (class, version, retired_at) VALUES ('card', 99, '2026-01-01T00:00:00.000Z')")
        .execute(&db)
        .await
        .unwrap();
    refused(
        format!(
            "UPDATE payment_cards SET kek_version = 99 WHERE order_id = '{}'",
            ids[0]
        ),
        "sealed under a retired KEK version",
    )
    .await;
    // The dispatched order stays dispatched, off the pending list.
    let pending = app.shipments("?status=pending").await;
    assert!(!pending.to_string().contains(&ids[0]), "{pending}");
}

/// The pinned guards (`store::guards`) are exactly what a fresh migration
/// of this engine creates, each enabled. When a migration changes a
/// trigger, this fails and prints the list to pin.
#[tokio::test]
async fn guards_are_what_a_fresh_migration_creates() {
    use checkoutd::store::guards;
    let app = spawn_app().await;
    let db = app.db().await;
    let (pinned, seen) = if app.database.is_postgres() {
        // Every table of the schema, not only those pinned: a trigger on a
        // new table is listed too.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
        (
            guards::POSTGRES,
            checkoutd::store::postgres::guards(&db, &tables)
                .await
                .unwrap(),
        )
    } else {
        (
            guards::SQLITE,
            checkoutd::store::sqlite::guards(&db).await.unwrap(),
        )
    };
    assert!(seen.bypasses.is_empty(), "{:?}", seen.bypasses);
    let mut actual = seen.triggers;
    if app.database.is_postgres() {
        // Pinned with the schema's name taken out: they hold in any schema.
        for g in &actual {
            assert!(g.definition.contains(" ON $schema."), "{}", g.definition);
            assert!(!g.definition.contains("public"), "{}", g.definition);
        }
    }
    actual.sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
    let listed: String = actual
        .iter()
        .map(|g| {
            format!(
                "    (\"{}\", \"{}\", \"{}\"),\n",
                g.table,
                g.name,
                g.digest()
            )
        })
        .collect();
    let now: Vec<(String, String, String)> = actual
        .iter()
        .map(|g| (g.table.clone(), g.name.clone(), g.digest()))
        .collect();
    let want: Vec<(String, String, String)> = pinned
        .iter()
        .map(|&(t, n, d)| (t.to_owned(), n.to_owned(), d.to_owned()))
        .collect();
    assert_eq!(now, want, "pin these in store/guards.rs:\n{listed}");
    assert!(actual.iter().all(|g| g.enabled));
    assert!(actual.len() >= 30, "{} triggers", actual.len());
    let store = app.store().await;
    assert!(
        checkoutd::store::Store::guard_findings(&store)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A guard switched off and left off is found: dropped, replaced by one
/// that does nothing, or (PostgreSQL) disabled or left to replication
/// sessions only. Each finding names the guard and its table.
#[tokio::test]
async fn a_guard_dropped_altered_or_disabled_is_found() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_order("guards-1", &order_json()).await.status(),
        201
    );
    assert!(run_verify(&app).await.verified);
    let db = app.db().await;
    let pg = app.database.is_postgres();
    // The guards running a function, as `(table, trigger)`.
    let users = |function: &'static str| {
        let db = db.clone();
        async move {
            let found: Vec<(String, String)> = sqlx::query_as(
                "SELECT c.relname::text, t.tgname::text FROM pg_trigger t \
                 JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid \
                 WHERE p.proname = $1 AND NOT t.tgisinternal",
            )
            .bind(function)
            .fetch_all(&db)
            .await
            .unwrap();
            assert!(!found.is_empty(), "{function} runs no trigger");
            found
        }
    };
    let mut altered = Vec::new();
    if pg {
        for function in [
            "refuse_breaking_order_references",
            "refuse_retired_kek_rows",
            "consent_events_append_only",
        ] {
            altered.extend(users(function).await);
        }
        altered.push(("purges".to_owned(), "purges_never_truncated".to_owned()));
        sqlx::raw_sql(
            "DROP TRIGGER access_log_no_update ON access_log;
             -- Its body: does nothing now, for every trigger running it.
             CREATE OR REPLACE FUNCTION refuse_breaking_order_references() RETURNS trigger
             LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
             -- Its settings: its queries now find tables through the caller's path.
             ALTER FUNCTION refuse_retired_kek_rows() RESET search_path;
             -- Its security: runs as its owner.
             ALTER FUNCTION consent_events_append_only() SECURITY DEFINER;
             -- Its definition: fires on something else.
             CREATE OR REPLACE TRIGGER purges_never_truncated BEFORE INSERT ON purges
             FOR EACH STATEMENT EXECUTE FUNCTION purges_append_only();
             ALTER TABLE purges DISABLE TRIGGER purges_no_update_or_delete;
             ALTER TABLE idempotency_keys ENABLE REPLICA TRIGGER idempotency_keys_never_deleted;
             -- Around the guards: rows hidden from them, statements rewritten,
             -- rows written to a table inheriting from a guarded one.
             ALTER TABLE kek_retirements ENABLE ROW LEVEL SECURITY;
             -- Forced alone, row-level security does nothing: no finding.
             ALTER TABLE consent_tags FORCE ROW LEVEL SECURITY;
             CREATE RULE keep_none AS ON INSERT TO kek_retirements DO INSTEAD NOTHING;
             CREATE TABLE orders_heir () INHERITS (orders);",
        )
        .execute(&db)
        .await
        .unwrap();
    } else {
        altered.push(("orders".to_owned(), "orders_never_deleted".to_owned()));
        sqlx::raw_sql(
            "DROP TRIGGER access_log_no_update; DROP TRIGGER orders_never_deleted; \
             CREATE TRIGGER orders_never_deleted BEFORE DELETE ON orders WHEN 0 \
             BEGIN SELECT RAISE(ABORT, 'orders are never deleted'); END;",
        )
        .execute(&db)
        .await
        .unwrap();
    }
    let report = run_verify(&app).await;
    assert!(!report.verified);
    assert!(
        has(
            &report,
            "access_log",
            "",
            "database guard access_log_no_update is missing"
        ),
        "{:#?}",
        report.failures
    );
    for (table, trigger) in &altered {
        assert!(
            has(
                &report,
                table,
                "",
                &format!("database guard {trigger} is not as the migrations created it")
            ),
            "{trigger}: {:#?}",
            report.failures
        );
    }
    let mut expected = 1 + altered.len();
    if pg {
        for (table, what) in [
            (
                "purges",
                "database guard purges_no_update_or_delete is disabled",
            ),
            (
                "idempotency_keys",
                "database guard idempotency_keys_never_deleted is disabled",
            ),
            ("kek_retirements", "row-level security is on"),
            ("kek_retirements", "a rule rewrites statements on it"),
            ("orders", "a table inherits from it"),
        ] {
            assert!(
                has(&report, table, "", what),
                "{what}: {:#?}",
                report.failures
            );
        }
        expected += 5;
    }
    assert_eq!(
        report.failure_count, expected as u64,
        "{:#?}",
        report.failures
    );

    if pg {
        // Whoever may set the role's search_path puts an `=` of their own in
        // front of the catalogue's, under which every text is equal (a
        // disabled trigger's 'D' would read as enabled): the guards are read
        // as the catalogue has them all the same.
        let hijacked = hijack_text_equality(&app).await;
        let tables = checkoutd::store::guards::tables(checkoutd::store::guards::POSTGRES);
        let seen = checkoutd::store::postgres::guards(&hijacked, &tables)
            .await
            .unwrap();
        let found = checkoutd::store::guards::compare(checkoutd::store::guards::POSTGRES, &seen);
        assert!(
            found
                .iter()
                .any(|f| f.trigger == Some("purges_no_update_or_delete")
                    && f.problem == checkoutd::store::guards::GuardProblem::Disabled),
            "{found:#?}"
        );
        assert_eq!(found.len(), expected, "{found:#?}");
        undo_hijack(&app).await;
    }
}

/// A guard's function finds its operators through a search path of its
/// own (PostgreSQL, 0024 for the dispatch guard): a role whose path puts a
/// schema of someone's own first — an `=` under which every text is equal
/// — does not make a changed dispatch read as unchanged.
#[tokio::test]
async fn a_guard_keeps_its_operators_whatever_the_callers_search_path() {
    let app = spawn_app().await;
    let order = crate::fulfillment::new_order(&app, "path-1", &order_json()).await;
    let r = app
        .dispatch(&order, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    let db = app.db().await;
    let change = "UPDATE orders SET tracking = '1Y' WHERE id = $1";
    if !app.database.is_postgres() {
        // SQLite has no search path: the guard refuses, as always.
        let refused = sqlx::query(change).bind(&order).execute(&db).await;
        assert!(refused.is_err());
        return;
    }
    let hijacked = hijack_text_equality(&app).await;
    let refused = sqlx::query(change)
        .bind(&order)
        .execute(&hijacked)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("a dispatch is never undone"),
        "{refused}"
    );
    undo_hijack(&app).await;
    let tracking: String = sqlx::query_scalar("SELECT tracking FROM orders WHERE id = $1")
        .bind(&order)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tracking, "1Z");
}

/// As whoever may set this role's `search_path` (PostgreSQL): in the test's
/// database, a schema of their own goes in front of the catalogue's, with an
/// `=` under which every text is equal. Returns a pool whose connections
/// have that path (the app's own were opened before it).
async fn hijack_text_equality(app: &TestApp) -> sqlx::AnyPool {
    let db = app.db().await;
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA evil;
         CREATE FUNCTION evil.always(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE
         AS 'SELECT true';
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always);
         ALTER ROLE CURRENT_USER IN DATABASE \"{name}\" SET search_path = evil, pg_catalog, public;"
    ))
    .execute(&db)
    .await
    .unwrap();
    let hijacked = app.db().await;
    let equal: bool = sqlx::query_scalar("SELECT 'D'::text = 'O'::text")
        .fetch_one(&hijacked)
        .await
        .unwrap();
    assert!(equal, "the role's search_path did not take");
    hijacked
}

/// Undoes [`hijack_text_equality`]'s path for the role.
async fn undo_hijack(app: &TestApp) {
    let db = app.db().await;
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{name}\" RESET search_path"
    ))
    .execute(&db)
    .await
    .unwrap();
}
