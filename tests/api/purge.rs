//! Purge (crypto-shredding) and retention: the data is unrecoverable even
//! with the full keyring, the audit stays green and says what was purged.

use std::time::Duration;

use checkoutd::server::identity::Role;
use checkoutd::store::Store;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, assert_succeeded, spawn_app, spawn_app_with};
use crate::orders::order_json;

async fn place(app: &TestApp, key: &str, order: &Value) -> String {
    let r = app.post_order(key, order).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["order_id"].as_str().unwrap().to_owned()
}

/// Whether the access log holds an operator's purge of `order_id`.
async fn purge_logged(app: &TestApp, order_id: &str) -> bool {
    app.access_log_entries()
        .await
        .iter()
        .any(|e| e["action"] == "purge (operator)" && e["objects"][0] == order_id)
}

/// The audit reports a purge of `order_id` that does not verify.
async fn audit_reports_the_purge_of(app: &TestApp, order_id: &str) {
    let report = checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.table == "purges" && f.record_id == order_id),
        "{:#?}",
        report.failures
    );
}

/// `r` is the 422 for a key past its replay window, naming `order_id`.
async fn window_passed_naming(r: reqwest::Response, order_id: &str) {
    let problem = crate::helpers::expect_problem(r, 422).await;
    assert_eq!(
        problem["type"],
        "urn:checkoutd:problem:idempotency-window-passed"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains(order_id),
        "{problem}"
    );
}

/// The request hash stored with `order_id`'s idempotency row.
async fn request_hash_of(app: &TestApp, order_id: &str) -> Vec<u8> {
    sqlx::query_scalar("SELECT request_hash FROM idempotency_keys WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

async fn order_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_past_its_replay_window_names_its_order_and_is_never_replayed_or_taken_as_new() {
    use checkoutd::store::rows::KeysDue;
    let app = spawn_app().await;
    let old = place(&app, "w-1", &order_json()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let window_start = checkoutd::ids::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let recent = place(&app, "w-2", &order_json()).await;
    let r = app.post_order("w-1", &order_json()).await;
    assert_eq!(
        r.headers()["idempotent-replayed"],
        "true",
        "inside the window"
    );

    let store = app.store().await;
    let keyring = app.keyring();
    let retire = || {
        checkoutd::retention::retire_request_hashes(
            &store,
            &keyring,
            KeysDue::CreatedBefore(&window_start),
        )
    };
    assert_eq!(
        retire().await.unwrap(),
        1,
        "only the key older than the window"
    );
    assert!(request_hash_of(&app, &old).await.is_empty());
    assert_eq!(request_hash_of(&app, &recent).await.len(), 32);
    assert_eq!(retire().await.unwrap(), 0, "nothing left to do");

    // The same request, or another body under the key: refused, naming the
    // order, and nothing stored.
    let mut other = order_json();
    other["items"][0]["quantity"] = json!(3);
    for body in [order_json(), other] {
        let r = app.post_order("w-1", &body).await;
        assert!(!r.headers().contains_key("idempotent-replayed"));
        window_passed_naming(r, &old).await;
    }
    assert_eq!(order_count(&app).await, 2);
    let r = app.post_order("w-2", &order_json()).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");

    // The retired row is still proven by its MAC: the audit is green.
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);

    // Emptying a hash in the database, without the key to re-make the
    // row's MAC, does not pass for a retired row: the retry is refused as
    // unverifiable (no replay, no new order) and the audit names the row.
    sqlx::query("UPDATE idempotency_keys SET request_hash = $1 WHERE order_id = $2")
        .bind(Vec::<u8>::new())
        .bind(&recent)
        .execute(&app.db().await)
        .await
        .unwrap();
    let r = app.post_order("w-2", &order_json()).await;
    let problem = crate::helpers::expect_problem(r, 500).await;
    assert_eq!(
        problem["type"],
        "urn:checkoutd:problem:stored-response-unverifiable"
    );
    assert_eq!(order_count(&app).await, 2);
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.table == "idempotency_keys" && f.what.contains(&recent)),
        "{:#?}",
        report.failures
    );
}

/// A row whose MAC does not verify loses its hash to the window all the
/// same, and its MAC (which covers the hash), and is never given a MAC that
/// would make it verify.
#[tokio::test]
async fn the_window_empties_a_forged_rows_hash_without_blessing_it() {
    use checkoutd::store::rows::KeysDue;
    let app = spawn_app().await;
    let id = place(&app, "f-1", &order_json()).await;
    let db = app.db().await;
    // A forgery the database refuses, made with its guards switched off.
    app.unguard("idempotency_keys").await;
    sqlx::query("UPDATE idempotency_keys SET response_body = $1 WHERE order_id = $2")
        .bind(b"{\"forged\":true}".to_vec())
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let mac_before: Vec<u8> =
        sqlx::query_scalar("SELECT response_mac FROM idempotency_keys WHERE order_id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    let n = checkoutd::retention::retire_request_hashes(
        &app.store().await,
        &app.keyring(),
        KeysDue::CreatedBefore("9999-01-01T00:00:00.000Z"),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert!(request_hash_of(&app, &id).await.is_empty());
    // Its old MAC covered the old hash: it goes too.
    assert_eq!(mac_before.len(), 32);
    let mac_after: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT response_mac FROM idempotency_keys WHERE order_id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(mac_after, None);
    let r = app.post_order("f-1", &order_json()).await;
    let problem = crate::helpers::expect_problem(r, 500).await;
    assert_eq!(
        problem["type"],
        "urn:checkoutd:problem:stored-response-unverifiable"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_purged_order_is_unrecoverable_and_the_audit_stays_green() {
    let app = spawn_app().await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({"name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}});
    let doomed = place(&app, "p-1", &gift).await;
    let kept = place(&app, "p-2", &order_json()).await;
    let db = app.db().await;
    let request_hash = request_hash_of(&app, &doomed).await;
    assert_eq!(request_hash.len(), 32);
    let wrapped: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT wrapped_dek FROM payment_cards WHERE order_id = $1
         UNION ALL SELECT wrapped_dek FROM billing_details WHERE order_id = $1
         UNION ALL SELECT wrapped_dek FROM gift_recipients WHERE order_id = $1",
    )
    .bind(&doomed)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(wrapped.len(), 3);
    drop(db);

    purge_order(&app, &doomed);

    // No record, and no byte of any of its wrapped data keys, is left in the
    // database file or its WAL: the full keyring cannot bring them back.
    let db = app.db().await;
    for table in [
        "payment_cards",
        "billing_details",
        "shipping_details",
        "gift_recipients",
        "contact_emails",
    ] {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE order_id = $1"))
                .bind(&doomed)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    for (what, bytes) in app.database_bytes().await {
        for dek in &wrapped {
            assert!(
                !contains(&bytes, dek),
                "a wrapped data key survived the purge in the {what}"
            );
        }
        // Nor the request hash a card number could be searched against.
        assert!(
            !contains(&bytes, &request_hash),
            "the purged order's request hash survived in the {what}"
        );
    }
    assert!(request_hash_of(&app, &doomed).await.is_empty());
    // A retry of its key is refused, naming the order: never replayed,
    // never a second order.
    window_passed_naming(app.post_order("p-1", &gift).await, &doomed).await;
    // The other order's key still replays.
    let r = app.post_order("p-2", &order_json()).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    // The order row, its consent tags and the access log stay.
    let tags: i64 = sqlx::query_scalar("SELECT count(*) FROM consent_tags WHERE order_id = $1")
        .bind(&doomed)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tags, 2);
    let report = checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(report.purged.get("card"), Some(&1));
    assert_eq!(report.purged.get("recipient"), Some(&1));
    let meta: Value = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{doomed}"))
        .await;
    assert_eq!(meta["verified"], true);
    assert_eq!(meta["purged"].as_array().unwrap().len(), 5);
    // The warehouse is told the purged order has nothing to ship; the
    // other order is untouched; the purge is in the access log.
    let shipments = app.shipments("").await;
    assert_eq!(shipments["shipments"][0]["order_id"], doomed.as_str());
    assert_eq!(shipments["shipments"][0]["purged"], true);
    assert_eq!(shipments["shipments"][1]["order_id"], kept.as_str());
    assert!(shipments["shipments"][1].get("purged").is_none());
    assert!(purge_logged(&app, &doomed).await);
    // A forged purge (deleting a record and claiming a purge) is caught.
    sqlx::query("DELETE FROM payment_cards WHERE order_id = $1")
        .bind(&kept)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO purges (order_id, class, purged_at, reason, mac) VALUES ($1, 'card', 'now', 'operator', $2)")
        .bind(&kept)
        .bind(vec![0u8; 32])
        .execute(&db)
        .await
        .unwrap();
    audit_reports_the_purge_of(&app, &kept).await;
}

/// An order the warehouse never ships keeps its card data and its ship-to
/// no longer than the undispatched period after it was taken; a dispatched
/// one — also one dispatched after it was found due — is left to the
/// dispatch clock, and billing stays.
#[tokio::test]
async fn retention_purges_an_order_never_dispatched_after_its_own_period() {
    let app = spawn_app().await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}
    });
    let never = place(&app, "u-1", &gift).await;
    let shipped = place(&app, "u-2", &gift).await;
    let r = app
        .dispatch(&shipped, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let store = app.store().await;
    use checkoutd::crypto::DataClass::{Card, Recipient, Shipping};
    let undispatched = |after| checkoutd::retention::Rule {
        classes: &[Card, Shipping, Recipient],
        after,
        from: checkoutd::retention::Clock::CreationUndispatched,
    };
    // An order found due, then dispatched before its purge runs: the
    // purge checks again in its own transaction and leaves it whole.
    let racing = place(&app, "u-3", &gift).await;
    let due = store
        .due_for_retention(
            &[Recipient],
            checkoutd::retention::Clock::CreationUndispatched,
            &checkoutd::ids::now(),
            10,
        )
        .await
        .unwrap();
    assert!(due.contains(&racing), "{due:?}");
    let r = app
        .dispatch(&racing, &json!({"carrier": "UPS", "tracking": "1Z9"}))
        .await;
    assert_eq!(r.status(), 200);
    let done = checkoutd::retention::purge_records(
        &store,
        &app.keyring(),
        &racing,
        (
            &[Card, Shipping, Recipient],
            &checkoutd::store::rows::PurgeIf::Undispatched {
                taken_before: checkoutd::ids::now(),
            },
        ),
        "retention:undispatched",
        ("system", "retention"),
    )
    .await
    .unwrap();
    assert!(done.is_empty(), "a dispatched order's records were purged");
    // Not yet due: a year's period.
    let rules = [undispatched(Duration::from_secs(365 * 86_400))];
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let rules = [undispatched(Duration::ZERO)];
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert_eq!(
        n, 3,
        "the never-dispatched order's card, shipping and recipient data"
    );
    let db = app.db().await;
    for table in ["payment_cards", "shipping_details", "gift_recipients"] {
        let mut left: Vec<String> = sqlx::query_scalar(&format!("SELECT order_id FROM {table}"))
            .fetch_all(&db)
            .await
            .unwrap();
        left.sort();
        let mut kept = vec![shipped.clone(), racing.clone()];
        kept.sort();
        assert_eq!(left, kept, "{table}");
    }
    // It can no longer be dispatched.
    let r = app
        .dispatch(&never, &json!({"carrier": "UPS", "tracking": "1Z8"}))
        .await;
    assert_eq!(r.status(), 409);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM purges WHERE order_id = $1 ORDER BY reason")
            .bind(&never)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(reasons, ["retention:undispatched"; 3]);
    let billing: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_details")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(billing, 3, "other classes stay");
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
}

#[tokio::test]
async fn retention_purges_card_data_after_dispatch_only() {
    let app = spawn_app().await;
    let shipped = place(&app, "r-1", &order_json()).await;
    let pending = place(&app, "r-2", &order_json()).await;
    let r = app
        .dispatch(&shipped, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let store = app.store().await;
    let rules = [checkoutd::retention::Rule {
        classes: &[checkoutd::crypto::DataClass::Card],
        after: Duration::ZERO,
        from: checkoutd::retention::Clock::Dispatch,
    }];
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let db = app.db().await;
    let cards: Vec<String> = sqlx::query_scalar("SELECT order_id FROM payment_cards")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        cards,
        vec![pending.clone()],
        "only the dispatched order's card data went"
    );
    let billing: i64 = sqlx::query_scalar("SELECT count(*) FROM billing_details")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(billing, 2, "other classes stay");
    assert!(
        request_hash_of(&app, &shipped).await.is_empty(),
        "a retention purge ends the order's replay window"
    );
    assert_eq!(request_hash_of(&app, &pending).await.len(), 32);
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(report.purged.get("card"), Some(&1));
    // A second pass finds nothing more to do.
    assert_eq!(
        checkoutd::retention::run_once(&store, &app.keyring(), &rules)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn the_storefront_summary_survives_a_card_purge() {
    let app = spawn_app().await;
    let id = place(&app, "s-1", &order_json()).await;
    let store = app.store().await;
    checkoutd::retention::purge_order(
        &store,
        &app.keyring(),
        &id,
        &[checkoutd::crypto::DataClass::Card],
        "operator",
        ("operator", "test"),
    )
    .await
    .unwrap();
    let r = app
        .client(Role::Storefront)
        .get(app.url(&format!("/v1/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["card"].is_null());
    assert_eq!(v["items"][0]["sku"], "FAXSTF-PRO");
}

/// A purge on SQLite also empties the WAL, which an open reader can hold
/// up. The deletion is committed and logged all the same, the operator is
/// told to run the purge again, and that run — which finds nothing left to
/// delete — empties the WAL, so no wrapped data key survives in it.
#[tokio::test]
async fn a_purge_held_up_by_a_reader_is_finished_by_running_it_again() {
    let app = spawn_app().await;
    if app.database.is_postgres() {
        // No WAL of ours: PostgreSQL's purge has nothing to empty.
        return;
    }
    let doomed = place(&app, "held-1", &order_json()).await;
    let db = app.db().await;
    let dek: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped_dek FROM payment_cards WHERE order_id = $1")
            .bind(&doomed)
            .fetch_one(&db)
            .await
            .unwrap();
    // A reader on the snapshot from before the purge.
    let mut reader = db.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_cards")
        .fetch_one(&mut *reader)
        .await
        .unwrap();

    let store = app.store().await;
    let keyring = app.keyring();
    let purge = || {
        checkoutd::retention::purge_order(
            &store,
            &keyring,
            &doomed,
            &[checkoutd::crypto::DataClass::Card],
            "operator",
            ("operator", "test"),
        )
    };
    match purge().await {
        Err(checkoutd::store::StoreError::Incomplete(why)) => {
            assert!(why.contains("run the purge again"))
        }
        other => panic!("the WAL was emptied under an open reader: {other:?}"),
    }
    assert!(
        purge_logged(&app, &doomed).await,
        "the committed deletion was not logged"
    );

    reader.rollback().await.unwrap();
    assert_eq!(
        purge().await.unwrap(),
        Vec::<String>::new(),
        "nothing left to delete"
    );
    let wal = std::fs::metadata(app.db_path().with_extension("db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the second run emptied the WAL");
    for (what, bytes) in app.database_bytes().await {
        assert!(
            !contains(&bytes, &dek),
            "the wrapped data key survived in the {what}"
        );
    }
}

/// An order id that does not exist is refused, and not logged as a purge;
/// purging an order again is no error (it is how an `Incomplete` purge is
/// finished) and says there was nothing left.
#[tokio::test]
async fn purging_an_unknown_order_is_refused_and_purging_twice_is_harmless() {
    let app = spawn_app().await;
    let unknown = "0192f8a0-0000-7000-8000-000000000001";
    let out = app
        .command()
        .args(["orders", "purge", "--order", unknown])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such order"), "{stderr}");
    assert!(
        !app.access_log_entries()
            .await
            .iter()
            .any(|e| e["objects"][0] == unknown),
        "an unknown order's purge was logged"
    );

    let id = place(&app, "twice-1", &order_json()).await;
    purge_order(&app, &id);
    assert!(purge_order(&app, &id).contains("nothing left to purge"));
}

/// Records put back after their purge (from a backup) undo the
/// shredding: the audit says so, it does not stay green.
#[tokio::test]
async fn records_restored_after_their_purge_are_found_by_the_audit() {
    let app = spawn_app().await;
    let doomed = place(&app, "r-1", &order_json()).await;
    let db = app.db().await;
    for table in ["payment_cards", "contact_emails"] {
        sqlx::query(&format!(
            "CREATE TABLE backup_{table} AS SELECT * FROM {table} WHERE order_id = '{doomed}'"
        ))
        .execute(&db)
        .await
        .unwrap();
    }
    purge_order(&app, &doomed);
    let verify = || async {
        checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
            .await
            .unwrap()
    };
    let report = verify().await;
    assert!(report.verified, "{:#?}", report.failures);
    for table in ["payment_cards", "contact_emails"] {
        sqlx::query(&format!("INSERT INTO {table} SELECT * FROM backup_{table}"))
            .execute(&db)
            .await
            .unwrap();
    }
    let report = verify().await;
    assert!(!report.verified);
    for table in ["payment_cards", "contact_emails"] {
        assert!(
            report.failures.iter().any(|f| f.record_id == doomed
                && f.what
                    == format!("{table} record present although its purge is recorded (restored)")),
            "{table}: {:#?}",
            report.failures
        );
    }
    // Purged again, they go (the purge recorded first stands); retention
    // does the same, and is not stopped by them.
    purge_order(&app, &doomed);
    let report = verify().await;
    assert!(report.verified, "{:#?}", report.failures);
    let shipped = place(&app, "r-2", &order_json()).await;
    let r = app
        .dispatch(&shipped, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    sqlx::query(&format!(
        "CREATE TABLE backup_shipped AS SELECT * FROM payment_cards WHERE order_id = '{shipped}'"
    ))
    .execute(&db)
    .await
    .unwrap();
    purge_order(&app, &shipped);
    sqlx::query("INSERT INTO payment_cards SELECT * FROM backup_shipped")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rules = [checkoutd::retention::Rule {
        classes: &[checkoutd::crypto::DataClass::Card],
        after: Duration::ZERO,
        from: checkoutd::retention::Clock::Dispatch,
    }];
    checkoutd::retention::run_once(&app.store().await, &app.keyring(), &rules)
        .await
        .unwrap();
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_cards")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(cards, 0, "the shipped order's restored card went");
}

/// A purge row deleted outright — the guards switched off, the records
/// put back from a backup — leaves an order that looks as if it had never
/// been purged. The access log's entry for the purge's outcome (written
/// after it committed, one per class deleted) is what the audit holds the
/// `purges` table to; the entry before the purge says only what was asked.
#[tokio::test]
async fn a_purge_row_deleted_with_its_records_restored_is_found_through_the_access_log() {
    let app = spawn_app().await;
    let doomed = place(&app, "d-1", &order_json()).await;
    let shipped = place(&app, "d-2", &order_json()).await;
    let db = app.db().await;
    for (table, order) in [
        ("payment_cards", &doomed),
        ("billing_details", &doomed),
        ("payment_cards", &shipped),
    ] {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS backup_{table} AS SELECT * FROM {table} WHERE 1 = 0"
        ))
        .execute(&db)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO backup_{table} SELECT * FROM {table} WHERE order_id = '{order}'"
        ))
        .execute(&db)
        .await
        .unwrap();
    }
    // An operator's purge of every class (the order is no gift: four are
    // deleted), and retention's purge of a dispatched order's card.
    purge_order(&app, &doomed);
    let r = app
        .dispatch(&shipped, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rules = [checkoutd::retention::Rule {
        classes: &[checkoutd::crypto::DataClass::Card],
        after: Duration::ZERO,
        from: checkoutd::retention::Clock::Dispatch,
    }];
    let store = app.store().await;
    checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    let outcomes: Vec<(String, String, String)> = app
        .access_log_entries()
        .await
        .iter()
        .filter(|e| e["action"] == checkoutd::retention::PURGED_ACTION)
        .map(|e| {
            assert_eq!(e["objects"].as_array().unwrap().len(), 2, "{e}");
            (
                e["role"].as_str().unwrap().to_owned(),
                e["objects"][0].as_str().unwrap().to_owned(),
                e["objects"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let operator = |class: &str| {
        (
            "operator".to_owned(),
            doomed.clone(),
            format!("class:{class}"),
        )
    };
    assert_eq!(
        outcomes,
        vec![
            operator("card"),
            operator("billing"),
            operator("shipping"),
            operator("contact"),
            (
                "system".to_owned(),
                shipped.clone(),
                "class:card".to_owned()
            ),
        ],
        "one outcome entry per class deleted, none for the recipient the order never had"
    );
    let verify = || async {
        checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
            .await
            .unwrap()
    };
    let report = verify().await;
    assert!(report.verified, "{:#?}", report.failures);

    // The purges table refuses to lose a row …
    let delete = format!(
        "DELETE FROM purges WHERE (order_id = '{doomed}' AND class IN ('card', 'billing')) \
         OR (order_id = '{shipped}' AND class = 'card')"
    );
    assert!(sqlx::query(&delete).execute(&db).await.is_err());
    // … but its owner can switch the guard off, delete them, and put the
    // records back: every record verifies, nothing is missing.
    app.unguard("purges").await;
    sqlx::query(&delete).execute(&db).await.unwrap();
    for table in ["payment_cards", "billing_details"] {
        sqlx::query(&format!("INSERT INTO {table} SELECT * FROM backup_{table}"))
            .execute(&db)
            .await
            .unwrap();
    }
    app.reguard().await;
    let report = verify().await;
    assert!(!report.verified);
    for (order, class) in [(&doomed, "card"), (&doomed, "billing"), (&shipped, "card")] {
        assert!(
            report.failures.iter().any(|f| f.table == "purges"
                && &f.record_id == order
                && f.what.starts_with(&format!(
                    "no purge of {class} stored, but access-log entry "
                ))
                && f.what.ends_with(" records it (deleted)")),
            "{class} of {order}: {:#?}",
            report.failures
        );
    }
    assert_eq!(report.failure_count, 3, "{:#?}", report.failures);
    // Purged again — by the operator, by retention's next pass — the
    // records go and fresh purge rows are written: they do not stand in
    // for the rows the first entries recorded.
    purge_order(&app, &doomed);
    checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert!(cards_of(&app).await.is_empty());
    let report = verify().await;
    assert_eq!(report.failure_count, 3, "{:#?}", report.failures);
}

/// Runs `checkoutd orders purge --order <id>`; it must succeed. Its stdout.
fn purge_order(app: &TestApp, order_id: &str) -> String {
    let out = app
        .command()
        .args(["orders", "purge", "--order", order_id])
        .output()
        .unwrap();
    assert_succeeded(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn purging_the_order_with_a_customers_latest_choice_never_brings_an_older_one_back() {
    use crate::consent::{audience, order_for, place};
    let app = spawn_app().await;
    // Ada says yes to special offers, then, on a later order, no.
    let first = place(&app, &order_for("ada@example.com", true, false)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let latest = place(&app, &order_for("ada@example.com", false, false)).await;
    // Bob says yes twice; his first order is purged.
    let bob_first = place(&app, &order_for("bob@example.com", true, false)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    place(&app, &order_for("bob@example.com", true, false)).await;
    // Carol says yes once; that order is purged: no address is left.
    let carol = place(&app, &order_for("carol@example.com", true, false)).await;
    purge_order(&app, &carol);
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["bob@example.com"]
    );

    // Her latest order's data is purged (contact included)…
    purge_order(&app, &latest);
    purge_order(&app, &bob_first);
    // …and still her latest choice stands: not in the audience, and the
    // warehouse sees "no" on her first order.
    assert_eq!(
        audience(&app, "special_offers").await,
        vec!["bob@example.com"],
        "a purge must not bring an older consent back"
    );
    let shipments = app.shipments("").await;
    let hers = shipments["shipments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["order_id"] == first.as_str())
        .unwrap()
        .clone();
    assert_eq!(hers["consent"]["special_offers"], false, "{hers}");
    // The auditor's proof still holds both of her tags; the audit is green
    // (the purge's MAC covers what it kept).
    let proof: Value = app
        .get_json(Role::Auditor, "/v1/audit/consent?email=ada%40example.com")
        .await;
    assert_eq!(
        proof["records"].as_array().map(Vec::len),
        Some(2),
        "{proof}"
    );
    assert_eq!(proof["effective"]["special_offers"], false, "{proof}");
    let report = checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(report.purged.get("contact"), Some(&3));
    // The report's consent figures agree with the export: Bob consents,
    // Ada — her purged latest "no" still counting — does not, and Carol,
    // with no address left, is not counted (the export cannot reach her).
    assert_eq!(report.consent.customers, 2);
    assert_eq!(report.consent.consenting.get("special_offers"), Some(&1));
    assert_eq!(
        report.consent.not_consenting.get("special_offers"),
        Some(&1)
    );
    // A purge is append-only: the database refuses to delete one (the
    // purged order's "no" would stop counting, an older "yes" would be
    // the latest again) or to edit one.
    let db = app.db().await;
    for tamper in [
        "DELETE FROM purges WHERE order_id = $1",
        "UPDATE purges SET email_blind_index = NULL WHERE order_id = $1",
        // PostgreSQL's TRUNCATE fires no row trigger (SQLite has none).
        "TRUNCATE purges",
    ] {
        if tamper.starts_with("TRUNCATE") && !app.database.is_postgres() {
            continue;
        }
        let query = sqlx::query(tamper);
        let query = if tamper.contains("$1") {
            query.bind(&bob_first)
        } else {
            query
        };
        let refused = query.execute(&db).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("append-only")),
            "{tamper}: {refused:?}"
        );
    }
    // What the purge kept is under its MAC: someone who switches the guard
    // off and points it at someone else is reported.
    app.unguard("purges").await;
    sqlx::query("UPDATE purges SET email_blind_index = (SELECT email_blind_index FROM contact_emails WHERE order_id = $1) WHERE order_id = $2 AND class = 'contact'")
        .bind(&first)
        .bind(&bob_first)
        .execute(&db)
        .await
        .unwrap();
    audit_reports_the_purge_of(&app, &bob_first).await;
}

/// The warehouse is told, not left to wonder: an order purged before
/// dispatch is listed as purged and cannot be dispatched; a gift whose
/// recipient retention purged after dispatch is purged too, not an
/// integrity error; a ship-to record deleted without a purge is one.
#[tokio::test]
async fn the_warehouse_sees_purged_orders_as_purged_and_cannot_ship_them() {
    let app = spawn_app().await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({"name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}});
    let erased = place(&app, "w-1", &order_json()).await;
    let shipped_gift = place(&app, "w-2", &gift).await;
    let deleted = place(&app, "w-3", &order_json()).await;
    let erased_gift = place(&app, "w-4", &gift).await;
    let r = app
        .dispatch(&shipped_gift, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    purge_order(&app, &erased);
    purge_order(&app, &erased_gift);
    let store = app.store().await;
    checkoutd::retention::purge_order(
        &store,
        &app.keyring(),
        &shipped_gift,
        &[checkoutd::crypto::DataClass::Recipient],
        "retention:recipient",
        ("system", "retention"),
    )
    .await
    .unwrap();
    let db = app.db().await;
    sqlx::query("DELETE FROM shipping_details WHERE order_id = $1")
        .bind(&deleted)
        .execute(&db)
        .await
        .unwrap();

    let find = |page: &Value, id: &str| {
        page["shipments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["order_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {page}"))
    };
    let pending = app.shipments("?status=pending").await;
    let e = find(&pending, &erased);
    assert_eq!(e["purged"], true, "{e}");
    assert!(e.get("integrity_error").is_none(), "{e}");
    assert_eq!(e["ship_to"], Value::Null);
    assert_eq!(e["consent"]["special_offers"], false);
    assert_eq!(e["consent"]["verified"], true, "its tag is genuine: {e}");
    // A gift order whose every record is gone, its ship-to marker
    // included, is still a gift (the order row says so).
    let eg = find(&pending, &erased_gift);
    assert_eq!(eg["gift"], true, "{eg}");
    assert_eq!(eg["purged"], true, "{eg}");
    assert!(eg.get("integrity_error").is_none(), "{eg}");
    let d = find(&pending, &deleted);
    assert_eq!(d["integrity_error"], true, "{d}");
    assert!(d.get("purged").is_none(), "{d}");
    let dispatched = app.shipments("?status=dispatched").await;
    let g = find(&dispatched, &shipped_gift);
    assert_eq!(g["purged"], true, "{g}");
    assert_eq!(g["gift"], true);
    assert!(g.get("integrity_error").is_none(), "{g}");

    // Neither the erased order nor the one without a shipping record can
    // be dispatched; both stay pending.
    for id in [&erased, &deleted] {
        let r = app
            .dispatch(id, &json!({"carrier": "UPS", "tracking": "1Z2"}))
            .await;
        let problem = crate::helpers::expect_problem(r, 409).await;
        assert_eq!(problem["type"], "urn:checkoutd:problem:ship-to-purged");
    }
    assert_eq!(
        find(&app.shipments("?status=pending").await, &erased)["status"],
        "pending"
    );
}

/// A gift order whose recipient record is missing has nowhere to ship
/// (its shipping row is only the marker): dispatch is refused. And on
/// PostgreSQL a dispatch racing a purge that is still open waits for it,
/// then finds the ship-to gone — never dispatched with its ship-to erased.
#[tokio::test]
async fn a_dispatch_needs_the_ship_to_and_waits_for_a_purge_in_progress() {
    let app = spawn_app().await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}
    });
    let gift = place(&app, "ship-1", &gift).await;
    let db = app.db().await;
    sqlx::query(&format!(
        "DELETE FROM gift_recipients WHERE order_id = '{gift}'"
    ))
    .execute(&db)
    .await
    .unwrap();
    let r = app
        .dispatch(&gift, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    let problem = crate::helpers::expect_problem(r, 409).await;
    assert_eq!(problem["type"], "urn:checkoutd:problem:ship-to-purged");

    if !app.database.is_postgres() {
        return;
    }
    // A plain order, and a gift order whose purge deletes the recipient's
    // record after the shipping record (as purge does), the dispatch
    // arriving in between: no deadlock, and no dispatch.
    let mut gift = order_json();
    gift["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}
    });
    for (n, order) in [order_json(), gift].iter().enumerate() {
        let racing = place(&app, &format!("ship-race-{n}"), order).await;
        let mut purge = db.begin().await.unwrap();
        sqlx::query(&format!(
            "DELETE FROM shipping_details WHERE order_id = '{racing}'"
        ))
        .execute(&mut *purge)
        .await
        .unwrap();
        let facts = json!({"carrier": "UPS", "tracking": "1Z"});
        let dispatch = app.dispatch(&racing, &facts);
        let finish_later = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sqlx::query(&format!(
                "DELETE FROM gift_recipients WHERE order_id = '{racing}'"
            ))
            .execute(&mut *purge)
            .await
            .unwrap();
            purge.commit().await.unwrap();
        };
        let (r, ()) = tokio::join!(dispatch, finish_later);
        let problem = crate::helpers::expect_problem(r, 409).await;
        assert_eq!(problem["type"], "urn:checkoutd:problem:ship-to-purged");
        let status: String =
            sqlx::query_scalar(&format!("SELECT status FROM orders WHERE id = '{racing}'"))
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(status, "accepted");
    }
}

/// A process that died between a purge's commit and its emptying of
/// SQLite's WAL left the purged records' pages there; the next start
/// empties them first, without waiting for another purge.
#[tokio::test]
async fn a_start_empties_what_a_purge_before_a_crash_left_in_the_wal() {
    let app = spawn_app().await;
    if app.database.is_postgres() {
        return crate::multi::skipped(
            "purge::a_start_empties_what_a_purge_before_a_crash_left",
            "SQLite only: PostgreSQL has no WAL file of ours to empty",
        );
    }
    let doomed = place(&app, "wal-1", &order_json()).await;
    let dek: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped_dek FROM payment_cards WHERE order_id = $1")
            .bind(&doomed)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    // The purge commits, and the process "dies" before emptying the WAL.
    let store = app.store().await;
    let purged = checkoutd::retention::purge_records(
        &store,
        &app.keyring(),
        &doomed,
        (
            &[checkoutd::crypto::DataClass::Card],
            &checkoutd::store::rows::PurgeIf::Always,
        ),
        "test",
        ("operator", ""),
    )
    .await
    .unwrap();
    assert_eq!(purged, vec!["card".to_owned()]);
    // The WAL alone: the database file is the background checkpoints'
    // (they copy the purge's wiped pages into it within a second).
    let left = |bytes: &[(&'static str, Vec<u8>)]| {
        bytes
            .iter()
            .filter(|(what, _)| *what == "wal")
            .any(|(_, b)| b.windows(dek.len()).any(|w| w == dek.as_slice()))
    };
    assert!(
        left(&app.database_bytes().await),
        "the scenario: the purged key is still in the WAL"
    );
    // The next start (a second process on the same files) empties it.
    let _next = spawn_app_with(Options {
        share_with: Some(app.shared()),
        ..Options::default()
    })
    .await;
    let mut gone = false;
    for _ in 0..100 {
        if !left(&app.database_bytes().await) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the purged key outlived the next start in the WAL");
}

/// Runs `checkoutd orders <args>`: its exit status, stdout and stderr.
fn orders_command(app: &TestApp, args: &[&str]) -> (Option<i32>, String, String) {
    let out = app.command().arg("orders").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// On PostgreSQL a release takes its turn on the order's row, as placing a
/// hold and a purge do: a hold being placed that found this one (and reads
/// it back) ends before the release deletes it — stood in for here by a
/// transaction holding the row — instead of failing on a row gone under it.
#[tokio::test]
async fn a_release_waits_for_a_hold_or_purge_of_the_same_order_in_flight() {
    if crate::helpers::postgres_server().is_none() {
        crate::multi::skipped(
            "purge::a_release_waits_...",
            "SQLite's one writer already serializes them",
        );
        return;
    }
    let app = spawn_app().await;
    let id = place(&app, "hr-1", &order_json()).await;
    let (code, _, err) = orders_command(&app, &["hold", "--order", &id, "--reference", "CB-7"]);
    assert_eq!(code, Some(0), "{err}");
    let db = app.db().await;
    let mut in_flight = db.begin().await.unwrap();
    sqlx::query("SELECT id FROM orders WHERE id = $1 FOR NO KEY UPDATE")
        .bind(&id)
        .fetch_one(&mut *in_flight)
        .await
        .unwrap();
    let mut command = app.command();
    command.args(["orders", "release", "--order", &id]);
    let release =
        crate::helpers::start_waiting(command, "the release did not wait for the order's row")
            .await;
    let still_held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM legal_holds WHERE order_id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(still_held, 1, "the release went ahead of the order's row");
    in_flight.commit().await.unwrap();
    let out = crate::helpers::finish(release).await;
    assert_succeeded(&out);
    let (_, holds, _) = orders_command(&app, &["holds"]);
    assert!(!holds.contains(&id), "{holds}");
}

async fn cards_of(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT order_id FROM payment_cards ORDER BY order_id")
        .fetch_all(&app.db().await)
        .await
        .unwrap()
}

/// A chargeback can come after the card-data period: an order under a
/// legal hold keeps its records — retention passes it over and an
/// operator's purge is refused — until the hold is released; then the
/// next pass purges what is due.
#[tokio::test]
async fn a_legal_hold_keeps_an_order_from_retention_and_purge_until_released() {
    let app = spawn_app().await;
    let disputed = place(&app, "h-1", &order_json()).await;
    let other = place(&app, "h-2", &order_json()).await;
    for id in [&disputed, &other] {
        let r = app
            .dispatch(id, &json!({"carrier": "UPS", "tracking": "1Z"}))
            .await;
        assert_eq!(r.status(), 200);
    }
    let (code, out, err) = orders_command(
        &app,
        &["hold", "--order", &disputed, "--reference", "CB-2026-0042"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        format!("held {disputed} (case CB-2026-0042): keeps card, billing, shipping, contact")
    );
    let (code, out, _) = orders_command(&app, &["holds"]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with(&disputed) && out.contains("case CB-2026-0042") && !out.contains("NOT"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    // Held once: a second hold (another case) is refused, the first stands.
    let (code, _, err) = orders_command(
        &app,
        &["hold", "--order", &disputed, "--reference", "CB-2026-0043"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("already held (case CB-2026-0042"), "{err}");

    // Retention passes it over …
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rules = [checkoutd::retention::Rule {
        classes: &[checkoutd::crypto::DataClass::Card],
        after: Duration::ZERO,
        from: checkoutd::retention::Clock::Dispatch,
    }];
    let store = app.store().await;
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(cards_of(&app).await, vec![disputed.clone()]);
    // … an operator's purge is refused, and not logged as a purge …
    let (code, _, err) = orders_command(&app, &["purge", "--order", &disputed]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("under a legal hold (case CB-2026-0042") && err.contains("nothing was purged"),
        "{err}"
    );
    // … a purge by date says held orders are passed over …
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let (code, out, err) = orders_command(&app, &["purge", "--dispatched-before", &today]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("1 order(s) under a legal hold were passed over if due"),
        "{out}"
    );
    assert_eq!(cards_of(&app).await, vec![disputed.clone()]);
    // … and so is a purge that reaches the store once the hold is in force
    // (a hold placed after the purge's own check): nothing is deleted.
    let rows = [checkoutd::store::rows::PurgeRow {
        order_id: disputed.clone(),
        class: "card".to_owned(),
        purged_at: checkoutd::ids::now(),
        reason: "operator".to_owned(),
        email_blind_index: None,
        mac: vec![0; 32],
    }];
    let refused = store
        .purge(&disputed, &rows, &checkoutd::store::rows::PurgeIf::Always)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, checkoutd::store::StoreError::UnderLegalHold),
        "{refused:?}"
    );
    assert_eq!(cards_of(&app).await, vec![disputed.clone()]);
    // … and a purge of retention's that finds the hold placed after it
    // chose the order: refused before it ends the order's replay window.
    let hash = request_hash_of(&app, &disputed).await;
    assert_eq!(hash.len(), 32);
    let refused = checkoutd::retention::purge_order(
        &store,
        &app.keyring(),
        &disputed,
        &[checkoutd::crypto::DataClass::Card],
        "retention:card",
        ("retention", "checkoutd"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, checkoutd::store::StoreError::UnderLegalHold),
        "{refused:?}"
    );
    assert_eq!(request_hash_of(&app, &disputed).await, hash);
    assert_eq!(cards_of(&app).await, vec![disputed.clone()]);
    let log = app.access_log_entries().await;
    assert!(
        log.iter().any(|e| e["action"] == "legal hold"
            && e["objects"] == json!([disputed])
            && e["role"] == "operator"),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|e| e["action"].as_str().unwrap().starts_with("purge (")
                && e["objects"][0] == disputed.as_str()),
        "a refused purge was logged as one"
    );
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(report.legal_holds, 1);
    let view = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{disputed}"))
        .await;
    assert_eq!(view["legal_hold"]["reference"], "CB-2026-0042", "{view}");
    assert_eq!(view["legal_hold"]["verifies"], true, "{view}");
    assert_eq!(view["verified"], true, "{view}");
    let view = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{other}"))
        .await;
    assert!(view.get("legal_hold").is_none(), "{view}");

    // The rule for orders never dispatched passes a held one over too.
    let pending = place(&app, "h-3", &order_json()).await;
    let (code, _, err) = orders_command(
        &app,
        &["hold", "--order", &pending, "--reference", "court:2026/17"],
    );
    assert_eq!(code, Some(0), "{err}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    use checkoutd::crypto::DataClass::{Card, Recipient, Shipping};
    let undispatched = [checkoutd::retention::Rule {
        classes: &[Card, Shipping, Recipient],
        after: Duration::ZERO,
        from: checkoutd::retention::Clock::CreationUndispatched,
    }];
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &undispatched)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(cards_of(&app).await.contains(&pending));
    let (code, _, err) = orders_command(&app, &["release", "--order", &pending]);
    assert_eq!(code, Some(0), "{err}");

    // Released: the next pass purges the card data whose period ran out.
    let (code, out, err) = orders_command(&app, &["release", "--order", &disputed]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("released") && out.contains("CB-2026-0042"),
        "{out}"
    );
    let (code, _, err) = orders_command(&app, &["release", "--order", &disputed]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not under a legal hold"), "{err}");
    assert_eq!(orders_command(&app, &["holds"]).1.trim(), "no legal holds");
    let n = checkoutd::retention::run_once(&store, &app.keyring(), &rules)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(cards_of(&app).await, vec![pending.clone()]);
    assert!(
        app.access_log_entries()
            .await
            .iter()
            .any(|e| e["action"] == "legal hold released" && e["objects"] == json!([disputed])),
    );
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(report.legal_holds, 0);
    // A hold placed after the card went keeps what is left, and says so.
    let (code, out, err) = orders_command(
        &app,
        &["hold", "--order", &other, "--reference", "ticket#77"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim(),
        format!("held {other} (case ticket#77): keeps billing, shipping, contact")
    );
}

/// A hold's reference names a case and is stored in clear: personal data
/// and card numbers are refused before anything is logged, as are unknown
/// orders. A hold written around the service (its MAC fails) would keep
/// card data past its period: the audit names it, the listing flags it.
#[tokio::test]
async fn a_hold_names_a_case_never_personal_data_and_a_forged_one_is_found() {
    let app = spawn_app().await;
    let id = place(&app, "hr-1", &order_json()).await;
    let before = app.access_log_entries().await.len();
    for reference in [
        "",
        "Ada Lovelace",
        "ada@example.com",
        "4111111111111111",
        "CB-4111-1111-1111-1111",
        "4111:1111:1111:1111",
        "4111#1111#1111#1111",
        "case/4111.1111.1111.1111",
        &"A".repeat(65),
    ] {
        let (code, _, err) =
            orders_command(&app, &["hold", "--order", &id, "--reference", reference]);
        assert_eq!(code, Some(2), "{reference:?}: {err}");
        assert!(err.contains("--reference"), "{err}");
        assert!(!err.contains("4111"), "the refusal quotes the value: {err}");
    }
    let (code, _, err) = orders_command(
        &app,
        &["hold", "--order", "not-an-id", "--reference", "CB-1"],
    );
    assert_eq!(code, Some(2), "{err}");
    let unknown = "0192f8a0-0000-7000-8000-000000000001";
    let (code, _, err) = orders_command(&app, &["hold", "--order", unknown, "--reference", "CB-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no such order"), "{err}");
    let (code, _, err) = orders_command(&app, &["release", "--order", unknown]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not under a legal hold"), "{err}");
    // Nothing refused was logged (the listing reads the log: one entry).
    assert_eq!(app.access_log_entries().await.len(), before + 1);

    sqlx::query(
        "INSERT INTO legal_holds (order_id, placed_at, reference, mac) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(checkoutd::ids::now())
    .bind("CB-9")
    .bind(vec![0u8; 32])
    .execute(&app.db().await)
    .await
    .unwrap();
    let (code, out, _) = orders_command(&app, &["holds"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("DOES NOT VERIFY"), "{out}");
    let report = checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(!report.verified);
    assert!(
        report.failures.iter().any(|f| f.table == "legal_holds"
            && f.record_id == id
            && f.what.starts_with("legal hold does not verify (forged)")),
        "{:#?}",
        report.failures
    );
    assert!(
        report.failures.iter().any(|f| f.table == "legal_holds"
            && f.record_id == id
            && f.what.contains("no access-log entry placed it")),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 2, "{:#?}", report.failures);
    let view = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{id}"))
        .await;
    assert_eq!(view["legal_hold"]["verifies"], false, "{view}");
    assert_eq!(view["verified"], false, "{view}");
}

/// An access-log entry of a hold placed on `order_id` at `at`, as
/// `orders hold` writes it before its row.
fn hold_entry(order_id: &str, at: String) -> checkoutd::audit::access_log::Entry {
    checkoutd::audit::access_log::Entry {
        at,
        role: "operator".to_owned(),
        cert_fingerprint: "os-user:test".to_owned(),
        origin_ip: "local".to_owned(),
        action: checkoutd::retention::HOLD_ACTION.to_owned(),
        objects: vec![order_id.to_owned()],
        outcome: checkoutd::audit::access_log::Outcome::Allowed,
        status: 0,
    }
}

/// A hold's row is not append-only (a release deletes it), so the audit
/// holds the table to the access log: a hold deleted (retention would then
/// shred a disputed order's data), put back after its release (its MAC
/// still verifies, and it keeps card data past its period) or replaced by
/// an older one is named — once its last log entry is ten minutes old (a
/// hold or release in another process may be between its entry and its
/// row). The holds and releases here are made as `orders hold` and
/// `orders release` make them, at times an hour or more ago.
#[tokio::test]
async fn a_hold_deleted_or_put_back_is_found_through_the_access_log() {
    let app = spawn_app().await;
    let id = place(&app, "hd-1", &order_json()).await;
    let store = app.store().await;
    let keyring = app.keyring();
    let ago = |minutes: i64| {
        checkoutd::ids::timestamp(
            time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes),
        )
    };
    let who = ("operator", "os-user:test");
    let hold = |reference: &'static str, at: String| {
        let (store, keyring, id) = (&store, &keyring, &id);
        async move {
            checkoutd::retention::place_hold(store, keyring, (id, reference), at, who)
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        hold("CB-1", ago(120)).await,
        checkoutd::store::rows::HoldPlaced::Placed { .. }
    ));
    let db = app.db().await;
    sqlx::query("CREATE TABLE backup_holds AS SELECT * FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    let verify = || async {
        checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
            .await
            .unwrap()
    };
    let finding = |report: &checkoutd::audit::verify::Report, text: &str| {
        report
            .failures
            .iter()
            .any(|f| f.table == "legal_holds" && f.record_id == id && f.what.contains(text))
    };
    let put_back = || async {
        sqlx::query("DELETE FROM legal_holds")
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("INSERT INTO legal_holds SELECT * FROM backup_holds")
            .execute(&db)
            .await
            .unwrap();
    };
    assert!(verify().await.verified);

    sqlx::query("DELETE FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    let report = verify().await;
    assert!(
        finding(&report, "placed one and no entry released it (deleted)"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);
    put_back().await;
    assert!(verify().await.verified);

    checkoutd::retention::release_hold(&store, &keyring, &id, &ago(100), who)
        .await
        .unwrap()
        .unwrap();
    assert!(verify().await.verified);
    put_back().await;
    let report = verify().await;
    assert!(
        finding(&report, "released it (put back)"),
        "{:#?}",
        report.failures
    );
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);

    // Held again for another case: the old row put back in place of the
    // new one verifies, but is not a hold the log placed since the release.
    sqlx::query("DELETE FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    hold("CB-2", ago(80)).await;
    assert!(verify().await.verified);
    put_back().await;
    let report = verify().await;
    assert!(finding(&report, "(entry "), "{:#?}", report.failures);
    assert!(finding(&report, ": replaced)"), "{:#?}", report.failures);
    assert_eq!(report.failure_count, 1, "{:#?}", report.failures);

    // Two holds at once: both logged, one refused as already held; either
    // entry may be the hold in force. (Here the second entry is written as
    // the refused run's would be, after the first hold's row.)
    sqlx::query("DELETE FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    checkoutd::retention::release_hold(&store, &keyring, &id, &ago(70), who)
        .await
        .unwrap();
    hold("CB-3", ago(60)).await;
    let refused = hold_entry(&id, ago(59));
    store
        .append_access_log(
            &[refused],
            &checkoutd::audit::access_log::Chainer::new(keyring.access_log_key()),
        )
        .await
        .unwrap();
    let report = verify().await;
    assert!(report.verified, "{:#?}", report.failures);

    // A hold being placed right now (its entry written, its row not yet)
    // is no finding.
    let other = place(&app, "hd-2", &order_json()).await;
    let in_progress = hold_entry(&other, checkoutd::ids::now());
    store
        .append_access_log(
            &[in_progress],
            &checkoutd::audit::access_log::Chainer::new(keyring.access_log_key()),
        )
        .await
        .unwrap();
    let report = verify().await;
    assert!(report.verified, "{:#?}", report.failures);
}

/// A hold committed while a purge of the same order waits for it is seen
/// by that purge, which then deletes nothing (PostgreSQL: the purge locks
/// the order row first and reads the holds after the wait; SQLite: one
/// writer at a time).
#[tokio::test]
async fn a_purge_waiting_for_a_hold_being_placed_sees_it_and_deletes_nothing() {
    let app = spawn_app().await;
    let id = place(&app, "hw-1", &order_json()).await;
    let db = app.db().await;
    let mut hold = checkoutd::store::rows::HoldRow {
        order_id: id.clone(),
        placed_at: checkoutd::ids::now(),
        reference: "CB-7".to_owned(),
        mac: Vec::new(),
    };
    hold.mac = app
        .keyring()
        .consent_tag_key()
        .sign(&[&checkoutd::retention::hold_canonical_bytes(&hold)])
        .to_vec();
    // A hold being placed as `orders hold` places it, left uncommitted.
    let mut tx = db.begin().await.unwrap();
    if app.database.is_postgres() {
        sqlx::query("SELECT id FROM orders WHERE id = $1 FOR NO KEY UPDATE")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO legal_holds (order_id, placed_at, reference, mac) VALUES ($1, $2, $3, $4)",
    )
    .bind(&hold.order_id)
    .bind(&hold.placed_at)
    .bind(&hold.reference)
    .bind(&hold.mac)
    .execute(&mut *tx)
    .await
    .unwrap();
    let store = std::sync::Arc::new(app.store().await);
    let rows = [checkoutd::store::rows::PurgeRow {
        order_id: id.clone(),
        class: "card".to_owned(),
        purged_at: checkoutd::ids::now(),
        reason: "operator".to_owned(),
        email_blind_index: None,
        mac: vec![0; 32],
    }];
    let purge = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            store
                .purge(&id, &rows, &checkoutd::store::rows::PurgeIf::Always)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!purge.is_finished(), "the purge did not wait for the hold");
    tx.commit().await.unwrap();
    let refused = purge.await.unwrap().unwrap_err();
    assert!(
        matches!(refused, checkoutd::store::StoreError::UnderLegalHold),
        "{refused:?}"
    );
    assert_eq!(cards_of(&app).await, vec![id]);
}

/// A purge made while the access log says the order was held is named: the
/// store refuses every purge of a held order, so the hold's row was deleted
/// around it — and put back afterwards, its MAC still verifying, nothing
/// else would show the disputed data gone. A purge after the hold's
/// release is not.
#[tokio::test]
async fn a_purge_made_while_the_hold_was_deleted_is_found() {
    use checkoutd::crypto::DataClass;
    let app = spawn_app().await;
    let disputed = place(&app, "hp-1", &order_json()).await;
    let released = place(&app, "hp-2", &order_json()).await;
    // A hold whose command failed after logging it (no row was written):
    // retention may purge the order, and a hold placed again after that is
    // no evidence against the purge.
    let failed = place(&app, "hp-3", &order_json()).await;
    let store = app.store().await;
    let keyring = app.keyring();
    let who = ("operator", "os-user:test");
    let ago = |minutes: i64| {
        checkoutd::ids::timestamp(
            time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes),
        )
    };
    for id in [&disputed, &released] {
        let placed = checkoutd::retention::place_hold(&store, &keyring, (id, "CB-7"), ago(30), who)
            .await
            .unwrap();
        assert!(matches!(
            placed,
            checkoutd::store::rows::HoldPlaced::Placed { .. }
        ));
    }
    checkoutd::retention::release_hold(&store, &keyring, &released, &ago(20), who)
        .await
        .unwrap()
        .unwrap();
    let db = app.db().await;
    sqlx::query("CREATE TABLE saved_holds AS SELECT * FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM legal_holds")
        .execute(&db)
        .await
        .unwrap();
    for id in [&disputed, &released] {
        checkoutd::retention::purge_order(&store, &keyring, id, &DataClass::ALL, "operator", who)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO legal_holds SELECT * FROM saved_holds")
        .execute(&db)
        .await
        .unwrap();
    store
        .append_access_log(
            &[hold_entry(&failed, ago(30))],
            &checkoutd::audit::access_log::Chainer::new(keyring.access_log_key()),
        )
        .await
        .unwrap();
    checkoutd::retention::purge_order(&store, &keyring, &failed, &DataClass::ALL, "operator", who)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    checkoutd::retention::place_hold(
        &store,
        &keyring,
        (&failed, "CB-7"),
        checkoutd::ids::now(),
        who,
    )
    .await
    .unwrap();
    let report = checkoutd::audit::verify::verify(&store, &keyring, &|_, _| {})
        .await
        .unwrap();
    assert!(!report.verified);
    let named: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.table == "purges" && f.what.contains("under the legal hold placed at"))
        .collect();
    // One finding per class the purge deleted.
    assert!(!named.is_empty(), "{:#?}", report.failures);
    assert!(
        named.iter().all(|f| f.record_id == disputed),
        "{:#?}",
        report.failures
    );
    for innocent in [&released, &failed] {
        assert!(
            report.failures.iter().all(|f| f.record_id != *innocent),
            "{:#?}",
            report.failures
        );
    }
}

/// `orders purge --dispatched-before` purges one class at a time: between
/// the shipping pass and the recipient pass (or for good, the run stopped
/// there or a hold placed meanwhile), a gift order has lost its ship-to
/// marker but not its recipient. The warehouse sees it purged — not an
/// integrity error ("do not ship, tell the auditors"), which nothing
/// tampered with.
#[tokio::test]
async fn a_gift_order_between_its_shipping_and_recipient_purges_is_purged_not_tampered() {
    let app = spawn_app().await;
    let mut gift = order_json();
    gift["gift_recipient"] = json!({"name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"}});
    let (_, entry) = dispatched_then_purged(
        &app,
        "half-purged",
        &gift,
        checkoutd::crypto::DataClass::Shipping,
    )
    .await;
    assert_ne!(entry["integrity_error"], true, "{entry}");
    assert_eq!(entry["purged"], true, "{entry}");
    assert!(entry["ship_to"].is_null(), "{entry}");
}

/// The same per-class run purges billing before shipping: in between (or
/// for good, the run stopped there), a dispatched order has its ship-to
/// but not the billing record through which the customer's consent
/// history is found. Its own consent tag still verifies: shown verified,
/// with no promotional insert (the current choice cannot be known), and no
/// false alarm of a tag failing its MAC.
#[tokio::test]
async fn an_order_between_its_billing_and_shipping_purges_shows_its_consent_verified() {
    let app = spawn_app().await;
    let (id, entry) = dispatched_then_purged(
        &app,
        "billing-purged",
        &order_json(),
        checkoutd::crypto::DataClass::Billing,
    )
    .await;
    assert_eq!(entry["consent"]["verified"], true, "{entry}");
    assert_eq!(entry["consent"]["special_offers"], false, "{entry}");
    assert!(entry["ship_to"].is_object(), "{entry}");
    let logs = crate::helpers::captured_logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("a consent tag failed its MAC check") && l.contains(&id)),
        "a false alarm was logged"
    );
}

/// Places `order`, dispatches it, purges its records of `class` alone (as
/// one pass of `orders purge --dispatched-before` does): the order id and
/// its entry in the warehouse's dispatched listing.
async fn dispatched_then_purged(
    app: &TestApp,
    key: &str,
    order: &Value,
    class: checkoutd::crypto::DataClass,
) -> (String, Value) {
    let id = place(app, key, order).await;
    let r = app
        .dispatch(&id, &json!({"carrier": "UPS", "tracking": "1Z"}))
        .await;
    assert_eq!(r.status(), 200);
    let store = app.store().await;
    let done = checkoutd::retention::purge_records(
        &store,
        &app.keyring(),
        &id,
        (&[class], &checkoutd::store::rows::PurgeIf::Always),
        "operator",
        ("operator", "test"),
    )
    .await
    .unwrap();
    assert_eq!(done, [class.as_str()]);
    let page = app.shipments("?status=dispatched").await;
    let entry = page["shipments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["order_id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("listed: {page}"));
    (id, entry)
}
