//! Fulfillment sees shipping records and nothing else; every read of
//! personal data lands in the hash-chained access log.

use std::collections::HashSet;

use checkoutd::audit::access_log::{ChainError, verify_chain};
use checkoutd::config::DatabaseUrl;
use checkoutd::server::identity::Role;
use checkoutd::store::sql::SqlStore;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_succeeded, expect_problem, spawn_app};
use crate::orders::order_json;

impl TestApp {
    pub async fn shipments(&self, query: &str) -> Value {
        let r = self
            .client(Role::Fulfillment)
            .get(self.url(&format!("/v1/shipments{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    pub async fn dispatch(&self, order_id: &str, body: &Value) -> reqwest::Response {
        self.client(Role::Fulfillment)
            .post(self.url(&format!("/v1/shipments/{order_id}/dispatch")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn store(&self) -> SqlStore {
        let url = DatabaseUrl::parse(&self.database.url).unwrap();
        checkoutd::store::open_sql(&url).await.unwrap()
    }
}

pub async fn new_order(app: &TestApp, key: &str, order: &Value) -> String {
    let r = app.post_order(key, order).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

pub fn gift_order_for_audit() -> Value {
    gift_order()
}

fn gift_order() -> Value {
    let mut o = order_json();
    o["card"]["number"] = json!("378282246310005");
    o["card"]["cvc"] = json!("4321");
    o["gift_recipient"] = json!({
        "name": "Charles Babbage",
        "address": {"line1": "1 Dorset Street", "city": "London", "postal_code": "W1U 4EG", "country": "GB"},
        "phone": "+44 20 7946 0000",
        "message": "Happy birthday!"
    });
    o
}

#[tokio::test]
async fn fulfillment_sees_the_ship_to_and_nothing_else() {
    let app = spawn_app().await;
    let mut plain = order_json();
    plain["shipping_address"] = json!({"line1": "9 Harbour Road", "city": "Portsmouth", "postal_code": "PO1 3AX",
                                        "country": "GB"});
    let plain_id = new_order(&app, "f-plain", &plain).await;
    let gift_id = new_order(&app, "f-gift", &gift_order()).await;

    let r = app
        .client(Role::Fulfillment)
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [
        "4111111111111111",
        "4111 1111",
        "378282246310005",
        "51 Columbia",
        "Aliso Viejo",
        "ada@example.com",
    ] {
        assert!(
            !text.to_lowercase().contains(&secret.to_lowercase()),
            "fulfillment saw {secret}: {text}"
        );
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let (mut keys, mut strings, mut numbers) = (Vec::new(), Vec::new(), Vec::new());
    walk(&list, &mut keys, &mut strings, &mut numbers);
    for key in [
        "card",
        "brand",
        "last4",
        "total_minor",
        "unit_price_minor",
        "email",
        "billing_address",
        "cvc",
    ] {
        assert!(
            !keys.contains(&key.to_owned()),
            "fulfillment saw a {key} field"
        );
    }
    for value in [
        "1111",
        "0005",
        "visa",
        "amex",
        "ada@example.com",
        "123",
        "4321",
    ] {
        assert!(
            !strings.contains(&value.to_owned()),
            "fulfillment saw {value}"
        );
    }
    for n in [4999, 9998] {
        assert!(!numbers.contains(&n), "fulfillment saw a price or total");
    }
    let shipments = list["shipments"].as_array().unwrap();
    assert_eq!(shipments.len(), 2);
    assert!(list["next_cursor"].is_null());

    let plain = &shipments[0];
    assert_eq!(plain["order_id"], plain_id.as_str());
    assert_eq!(plain["gift"], false);
    assert_eq!(plain["status"], "pending");
    assert_eq!(plain["ship_to"]["name"], "Ada Lovelace");
    assert_eq!(plain["ship_to"]["address"]["line1"], "9 Harbour Road");
    assert_eq!(plain["ship_to"]["phone"], "+1 949 555 0100");
    assert!(plain.get("gift_message").is_none());
    assert_eq!(
        plain["items"],
        json!([{"sku": "FAXSTF-PRO", "description": "Fax stuff", "quantity": 2}])
    );
    assert_eq!(plain["consent"]["special_offers"], true);
    assert_eq!(plain["consent"]["third_party_sharing"], false);
    assert_eq!(plain["consent"]["verified"], true);

    let gift = &shipments[1];
    assert_eq!(gift["order_id"], gift_id.as_str());
    assert_eq!(gift["gift"], true);
    assert_eq!(gift["ship_to"]["name"], "Charles Babbage");
    assert_eq!(gift["ship_to"]["address"]["line1"], "1 Dorset Street");
    assert_eq!(gift["gift_message"], "Happy birthday!");
    // The buyer consents to special offers, but the parcel goes to the
    // recipient, whose details serve delivery only: no promotional insert.
    assert_eq!(gift["consent"]["special_offers"], false);
    assert_eq!(gift["consent"]["verified"], true);
}

#[tokio::test]
async fn a_parcel_shows_only_its_own_customers_consent() {
    use crate::consent::order_for;
    let app = spawn_app().await;
    let ada = new_order(&app, "own-1", &order_for("ada@example.com", false, false)).await;
    new_order(&app, "own-2", &order_for("bob@example.com", true, false)).await;
    let consent_of = |shipments: &Value, id: &str| {
        shipments["shipments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["order_id"] == id)
            .unwrap()["consent"]
            .clone()
    };
    let before = consent_of(&app.shipments("").await, &ada);
    assert_eq!(before["special_offers"], false);
    assert_eq!(before["verified"], true);
    // A database writer points Ada's billing record (whose blind index finds
    // the consent history, and which no MAC covers) at Bob, who consents.
    let db = app.db().await;
    sqlx::query(
        "UPDATE billing_details SET email_blind_index =
            (SELECT c.email_blind_index FROM contact_emails c WHERE c.order_id <> $1)
         WHERE order_id = $1",
    )
    .bind(&ada)
    .execute(&db)
    .await
    .unwrap();
    // Bob's history does not hold Ada's order's tag: not shown as verified,
    // and no purpose granted.
    let after = consent_of(&app.shipments("").await, &ada);
    assert_eq!(after["verified"], false, "{after}");
    assert_eq!(after["special_offers"], false, "{after}");
}

#[tokio::test]
async fn a_damaged_order_row_is_an_integrity_error_and_the_queue_moves_past_it() {
    let app = spawn_app().await;
    let broken = new_order(&app, "dmg-1", &order_json()).await;
    let fine = new_order(&app, "dmg-2", &order_json()).await;
    let db = app.db().await;
    sqlx::query("UPDATE orders SET items = 'not json' WHERE id = $1")
        .bind(&broken)
        .execute(&db)
        .await
        .unwrap();
    // Page by page, as a warehouse walks the queue: the damaged order is
    // shown as an integrity error (nothing to ship), and the next page
    // holds the next order.
    let first = app.shipments("?limit=1").await;
    let shown = &first["shipments"][0];
    assert_eq!(shown["order_id"], broken.as_str());
    assert_eq!(shown["integrity_error"], true, "{shown}");
    assert_eq!(shown["ship_to"], Value::Null);
    assert_eq!(shown["items"], json!([]));
    assert_eq!(shown["consent"]["verified"], false);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app.shipments(&format!("?limit=1&after={cursor}")).await;
    assert_eq!(second["shipments"][0]["order_id"], fine.as_str());
    assert!(second["shipments"][0].get("integrity_error").is_none());
}

/// A dispatch refused because the order's row fails its integrity check.
async fn expect_integrity_conflict(r: reqwest::Response) {
    let problem = expect_problem(r, 409).await;
    let kind = problem["type"].as_str().unwrap_or_default();
    assert!(kind.ends_with("order-integrity"), "{problem}");
}

/// An order row edited in the database — items, the gift flag, dispatch
/// facts — is not served as the order's: the warehouse sees an integrity
/// error with nothing to ship and cannot dispatch it, the storefront's
/// summary is withheld, and the untouched order beside it is unaffected.
#[tokio::test]
async fn an_order_row_edited_in_the_database_is_neither_shown_nor_shipped() {
    let app = spawn_app().await;
    let edited = new_order(&app, "mac-1", &order_json()).await;
    let fine = new_order(&app, "mac-2", &order_json()).await;
    let shipped = new_order(&app, "mac-3", &order_json()).await;
    let partial = new_order(&app, "mac-4", &order_json()).await;
    let unreadable = new_order(&app, "mac-5", &order_json()).await;
    let body = json!({"carrier": "UPS", "tracking": "1Z999AA10123456784"});
    assert_eq!(app.dispatch(&shipped, &body).await.status(), 200);
    let db = app.db().await;
    // Still valid JSON, still the same shape: only the MAC tells.
    let items: String = sqlx::query_scalar("SELECT items FROM orders WHERE id = $1")
        .bind(&edited)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(items.contains("\"quantity\":2"), "{items}");
    sqlx::query("UPDATE orders SET items = $1 WHERE id = $2")
        .bind(items.replacen("\"quantity\":2", "\"quantity\":20", 1))
        .bind(&edited)
        .execute(&db)
        .await
        .unwrap();
    // A dispatched order's facts are guarded too (0014 / 0017): as the
    // table's owner could, with the guard switched off.
    app.unguard("orders").await;
    sqlx::query("UPDATE orders SET tracking = 'REDIRECTED' WHERE id = $1")
        .bind(&shipped)
        .execute(&db)
        .await
        .unwrap();

    // A dispatch fact on an undispatched order (no dispatch at all).
    sqlx::query("UPDATE orders SET carrier = 'UPS' WHERE id = $1")
        .bind(&partial)
        .execute(&db)
        .await
        .unwrap();

    let pending = app.shipments("").await;
    let list = pending["shipments"].as_array().unwrap();
    let of = |id: &str| list.iter().find(|s| s["order_id"] == id).unwrap().clone();
    let shown = of(&edited);
    assert_eq!(shown["integrity_error"], true, "{shown}");
    assert_eq!(shown["ship_to"], Value::Null, "{shown}");
    assert_eq!(shown["items"], json!([]), "{shown}");
    assert_eq!(of(&partial)["integrity_error"], true);
    let untouched = of(&fine);
    assert!(untouched.get("integrity_error").is_none(), "{untouched}");
    assert_eq!(untouched["items"][0]["quantity"], 2, "{untouched}");
    let dispatched = app.shipments("?status=dispatched").await;
    let shown = &dispatched["shipments"][0];
    assert_eq!(shown["order_id"], shipped.as_str());
    assert_eq!(shown["integrity_error"], true, "{shown}");
    assert!(!shown.to_string().contains("REDIRECTED"), "{shown}");

    // Not dispatched on the strength of the edited row; the other is.
    let r = app.dispatch(&edited, &body).await;
    expect_integrity_conflict(r).await;
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(&edited)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "accepted");
    expect_integrity_conflict(app.dispatch(&partial, &body).await).await;
    // A column that no longer reads (SQLite stores any bytes as text): not
    // dispatched either, and the listing still answers — that order an
    // integrity error, the others as they are.
    if !app.database.is_postgres() {
        sqlx::query("UPDATE orders SET items = CAST(x'ff' AS TEXT) WHERE id = $1")
            .bind(&unreadable)
            .execute(&db)
            .await
            .unwrap();
        let r = app.dispatch(&unreadable, &body).await;
        expect_integrity_conflict(r).await;
        let page = app.shipments("").await;
        let list = page["shipments"].as_array().unwrap();
        let shown = list.iter().find(|s| s["order_id"] == unreadable.as_str());
        let shown = shown.unwrap_or_else(|| panic!("{page:#}"));
        assert_eq!(shown["integrity_error"], true, "{shown}");
        assert_eq!(shown["items"], json!([]), "{shown}");
        assert!(
            list.iter().any(|s| s["order_id"] == partial.as_str()),
            "{page:#}"
        );
    }
    assert_eq!(app.dispatch(&fine, &body).await.status(), 200);

    // The storefront's summary is withheld, not served with 20 items.
    let r = app
        .client(Role::Storefront)
        .get(app.url(&format!("/v1/orders/{edited}")))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(r, 500).await;
    assert!(!problem.to_string().contains("20"), "{problem}");
    let r = app
        .client(Role::Storefront)
        .get(app.url(&format!("/v1/orders/{fine}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The dispatch writes only the row it checked: an order whose row is
/// edited in the database after the route's integrity check and before
/// its update (here the store is called with a check taken before the
/// edit) is not dispatched, whichever covered column the edit touched,
/// and the answer is 409 `order-integrity`. An earlier dispatch's facts
/// are believed only from a row that verifies.
#[tokio::test]
async fn a_row_edited_between_the_check_and_the_dispatch_is_not_shipped() {
    use checkoutd::store::rows::{Dispatch, DispatchOutcome, NewDispatch};
    let app = spawn_app().await;
    let store = &app.state.store;
    let new = NewDispatch {
        dispatch: Dispatch {
            carrier: "UPS".to_owned(),
            tracking: "1Z999AA10123456784".to_owned(),
            dispatched_at: "2026-12-01T08:00:00.000000Z".to_owned(),
        },
        mac: [7; 32],
    };
    let db = app.db().await;
    let mut without_ref = order_json();
    without_ref
        .as_object_mut()
        .unwrap()
        .remove("storefront_order_ref");
    let gift = gift_order();
    let plain = order_json();
    let edits: [(&str, &Value); 12] = [
        (
            "UPDATE orders SET items = replace(items, '\"quantity\":2', '\"quantity\":20') WHERE id = $1",
            &plain,
        ),
        // A gift order turned into an ordinary one: shipped to the
        // customer instead of the recipient.
        ("UPDATE orders SET gift = 0 WHERE id = $1", &gift),
        (
            "UPDATE orders SET total_minor = total_minor + 1 WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET storefront_ref = 'elsewhere' WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET storefront_ref = NULL WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET storefront_ref = 'elsewhere' WHERE id = $1",
            &without_ref,
        ),
        ("UPDATE orders SET currency = 'XTS' WHERE id = $1", &plain),
        (
            "UPDATE orders SET consent_tag_id = (SELECT t.id FROM consent_tags t WHERE t.id <> orders.consent_tag_id LIMIT 1) WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET client_fingerprint = mac WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET mac = client_fingerprint WHERE id = $1",
            &plain,
        ),
        (
            "UPDATE orders SET created_at = replace(created_at, '20', '19') WHERE id = $1",
            &plain,
        ),
        ("UPDATE orders SET tracking = 'EARLY' WHERE id = $1", &plain),
    ];
    for (i, (edit, body)) in edits.into_iter().enumerate() {
        let id = new_order(&app, &format!("cas-{i}"), body).await;
        let uuid: uuid::Uuid = id.parse().unwrap();
        let checked = store.order_check(uuid).await.unwrap().unwrap();
        let edited = sqlx::query(edit).bind(&id).execute(&db).await.unwrap();
        assert_eq!(edited.rows_affected(), 1, "{edit}");
        let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
        assert!(
            matches!(outcome, DispatchOutcome::Changed),
            "{edit}: {outcome:?}"
        );
        let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(status, "accepted", "{edit}");
        // Through the API the edited row fails its check first.
        let body = json!({"carrier": "UPS", "tracking": "1Z999AA10123456784"});
        expect_integrity_conflict(app.dispatch(&id, &body).await).await;
    }

    // Rows as checked are dispatched, with or without a storefront
    // reference, gift or not.
    for (name, body) in [("plain", &plain), ("no-ref", &without_ref), ("gift", &gift)] {
        let id = new_order(&app, &format!("cas-{name}"), body).await;
        let uuid: uuid::Uuid = id.parse().unwrap();
        let checked = store.order_check(uuid).await.unwrap().unwrap();
        let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
        assert!(
            matches!(outcome, DispatchOutcome::Dispatched(_)),
            "{name}: {outcome:?}"
        );
    }

    // A second dispatch with the same (now stale) check finds the order
    // dispatched; its facts are believed while the row verifies, and not
    // once they were edited.
    let body = json!({"carrier": "UPS", "tracking": "1Z999AA10123456784"});
    let id = new_order(&app, "cas-twice", &plain).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let checked = store.order_check(uuid).await.unwrap().unwrap();
    assert_eq!(app.dispatch(&id, &body).await.status(), 200);
    let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
    match checkoutd::routes::believed_dispatch(&app.state, uuid, outcome) {
        DispatchOutcome::AlreadyDispatched(now) => {
            assert_eq!(now.dispatch.unwrap().tracking, "1Z999AA10123456784");
        }
        other => panic!("{other:?}"),
    }
    app.unguard("orders").await;
    sqlx::query("UPDATE orders SET tracking = 'REDIRECTED' WHERE id = $1")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
    assert!(
        matches!(outcome, DispatchOutcome::AlreadyDispatched(_)),
        "{outcome:?}"
    );
    let believed = checkoutd::routes::believed_dispatch(&app.state, uuid, outcome);
    assert!(matches!(believed, DispatchOutcome::Changed), "{believed:?}");

    // A gift flag outside 0/1 (its CHECK switched off by the table's
    // owner) reads as a gift, so the row verifies, but the update's
    // comparison does not take it: the row is named changed, not its
    // ship-to purged — the recipient's record is there.
    let id = new_order(&app, "cas-gift-2", &gift).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let mut conn = db.acquire().await.unwrap();
    if app.database.is_postgres() {
        sqlx::query("ALTER TABLE orders DROP CONSTRAINT orders_gift_check")
            .execute(&mut *conn)
            .await
            .unwrap();
    } else {
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE orders SET gift = 2 WHERE id = $1")
        .bind(&id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let checked = store.order_check(uuid).await.unwrap().unwrap();
    assert!(checked.seal.gift);
    let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
    assert!(matches!(outcome, DispatchOutcome::Changed), "{outcome:?}");

    // A purged ship-to is named as such, not as a changed row.
    let id = new_order(&app, "cas-purged", &plain).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let checked = store.order_check(uuid).await.unwrap().unwrap();
    sqlx::query("DELETE FROM shipping_details WHERE order_id = $1")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let outcome = store.dispatch(uuid, &checked, &new).await.unwrap();
    assert!(matches!(outcome, DispatchOutcome::NoShipTo), "{outcome:?}");
}

#[tokio::test]
async fn pagination_covers_every_order_once() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(new_order(&app, &format!("page-{i}"), &order_json()).await);
    }
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = app.shipments(&query).await;
        pages += 1;
        for s in page["shipments"].as_array().unwrap() {
            seen.push(s["order_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=3&after={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "creation order, no loss, no repetition");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
}

/// A cursor walk while orders are being committed concurrently misses
/// none: `seq` follows commit order. The walk only ever moves on by
/// `next_cursor`, so an order that committed after the walk passed its
/// `seq` would be lost.
#[tokio::test]
async fn a_cursor_walk_during_concurrent_intake_misses_no_order() {
    let app = spawn_app().await;
    let writing = std::sync::atomic::AtomicUsize::new(16);
    // One client (kept-alive connection) per writer and for the reader: a
    // new connection per request, every 2 ms, ran into the per-address
    // handshake rate (`--max-handshakes-per-ip`) on a fast run.
    let writers = (0..16).map(|w| {
        let (app, writing) = (&app, &writing);
        async move {
            let client = app.client(Role::Storefront);
            let mut ids = Vec::new();
            for i in 0..12 {
                let r = client
                    .post(app.url("/v1/orders"))
                    .header("idempotency-key", format!("live-{w}-{i}"))
                    .json(&order_json())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let body: Value = r.json().await.unwrap();
                ids.push(body["order_id"].as_str().unwrap().to_owned());
            }
            writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            ids
        }
    });
    let reader = async {
        let client = app.client(Role::Fulfillment);
        let mut seen = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let finished = writing.load(std::sync::atomic::Ordering::SeqCst) == 0;
            let query = match &after {
                Some(c) => format!("?limit=4&after={c}"),
                None => "?limit=4".to_owned(),
            };
            let r = client
                .get(app.url(&format!("/v1/shipments{query}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let page: Value = r.json().await.unwrap();
            for s in page["shipments"].as_array().unwrap() {
                seen.insert(s["order_id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => after = Some(c.to_owned()),
                // At the end: once more after the last writer is done.
                None if finished => break,
                None => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            }
        }
        seen
    };
    let (written, seen) =
        futures_util::future::join(futures_util::future::join_all(writers), reader).await;
    let written: HashSet<String> = written.into_iter().flatten().collect();
    assert_eq!(written.len(), 16 * 12);
    let missed: Vec<_> = written.difference(&seen).collect();
    assert!(missed.is_empty(), "the walk missed {} orders", missed.len());
}

/// PostgreSQL: an order's `orders` row — its `seq` — is written under the
/// orders' sequence lock, held to the commit, so that `seq` follows commit
/// order across batches and processes. While another session holds the
/// lock an order waits with nothing of it visible and no `seq` drawn, and
/// it commits once the lock is released. (SQLite has one writer at a time:
/// nothing to check.)
#[tokio::test]
async fn on_postgresql_an_order_commits_behind_the_sequence_lock() {
    let app = spawn_app().await;
    if !app.database.is_postgres() {
        return;
    }
    let db = app.db().await;
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
        .bind(checkoutd::store::postgres::LOCK_ORDERS)
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiting = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        for table in [
            "orders",
            "consent_tags",
            "payment_cards",
            "idempotency_keys",
        ] {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(n, 0, "{table}: the order did not wait for the lock");
        }
        // Sequences are not transactional: had the `orders` row been
        // inserted before the lock was taken, its seq would be drawn.
        let drawn: bool = sqlx::query_scalar("SELECT is_called FROM orders_seq_seq")
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(!drawn, "a seq was drawn before the lock was held");
        holder.rollback().await.unwrap();
    };
    let (r, ()) =
        futures_util::future::join(app.post_order("behind-the-lock", &order_json()), waiting).await;
    assert_eq!(r.status(), 201);
}

/// A page cursor tells the warehouse nothing of the shop's order volume
/// (it is sealed, not the order's sequence number), differs each time, and
/// is good only for the listing it came from.
#[tokio::test]
async fn page_cursors_are_opaque_and_bound_to_their_listing() {
    let app = spawn_app().await;
    for n in 0..3 {
        new_order(&app, &format!("cur-{n}"), &order_json()).await;
    }
    let first = app.shipments("?limit=1").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor.len(), 72);
    assert!(!cursor.contains("0000000000000001"), "{cursor}");
    let again = app.shipments("?limit=1").await;
    assert_ne!(again["next_cursor"].as_str().unwrap(), cursor);
    let second = app.shipments(&format!("?limit=1&after={cursor}")).await;
    assert_ne!(
        second["shipments"][0]["order_id"],
        first["shipments"][0]["order_id"]
    );
    for elsewhere in [
        format!("/v1/shipments?status=dispatched&after={cursor}"),
        format!("/v1/marketing/audience?purpose=special_offers&after={cursor}"),
    ] {
        let role = if elsewhere.contains("marketing") {
            Role::Marketing
        } else {
            Role::Fulfillment
        };
        let r = app
            .client(role)
            .get(app.url(&elsewhere))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(r, 400).await;
        assert_eq!(problem["errors"][0]["field"], "after", "{elsewhere}");
    }
}

#[tokio::test]
async fn bad_query_values_are_400_problems() {
    let app = spawn_app().await;
    let problem = |role: Role, path: String| {
        let request = app.client(role).get(app.url(&path));
        async move { expect_problem(request.send().await.unwrap(), 400).await }
    };
    for q in [
        "?limit=0",
        "?limit=501",
        "?limit=x",
        "?status=lost",
        "?after=nope",
        "?after=ffffffffffffffff",
        "?after=0000000000000001",
        "?colour=red",
        // One value or the other? Neither: a repeated name is refused.
        "?limit=1&limit=500",
        "?status=pending&status=dispatched",
    ] {
        problem(Role::Fulfillment, format!("/v1/shipments{q}")).await;
    }
    // Each error names the parameter: ours by name, a client's own name
    // only when it is shaped like one (it could hold anything).
    for (role, path, field, code) in [
        (
            Role::Fulfillment,
            "/v1/shipments?colour=red",
            "colour",
            "unknown_parameter",
        ),
        (
            Role::Fulfillment,
            "/v1/shipments?x4111111111111111=1",
            "<unknown>",
            "unknown_parameter",
        ),
        (
            Role::Fulfillment,
            "/v1/shipments?limit=1&limit=500",
            "limit",
            "repeated",
        ),
        (
            Role::Fulfillment,
            "/v1/shipments?status=lost",
            "status",
            "invalid",
        ),
        (
            Role::Marketing,
            "/v1/marketing/audience",
            "purpose",
            "required",
        ),
        (
            Role::Marketing,
            "/v1/marketing/audience?purpose=spam",
            "purpose",
            "unknown_purpose",
        ),
        (
            Role::Marketing,
            "/v1/marketing/audience?purpose=special_offers&colour=red",
            "colour",
            "unknown_parameter",
        ),
    ] {
        let problem = problem(role, path.to_owned()).await;
        assert_eq!(problem["errors"][0]["field"], field, "{path}");
        assert_eq!(problem["errors"][0]["code"], code, "{path}");
    }
}

#[tokio::test]
async fn dispatch_moves_an_order_and_is_idempotent() {
    let app = spawn_app().await;
    let a = new_order(&app, "d-a", &order_json()).await;
    let b = new_order(&app, "d-b", &order_json()).await;
    let body = json!({"carrier": "UPS", "tracking": "1Z999AA10123456784"});
    let r = app.dispatch(&a, &body).await;
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["status"], "dispatched");
    // Same again: a no-op success with the original facts.
    let again: Value = app.dispatch(&a, &body).await.json().await.unwrap();
    assert_eq!(again, first);
    // Another tracking number: conflict.
    let r = app
        .dispatch(&a, &json!({"carrier": "UPS", "tracking": "OTHER"}))
        .await;
    expect_problem(r, 409).await;

    let pending = app.shipments("").await;
    let pending: Vec<&str> = pending["shipments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(pending, vec![b.as_str()]);
    let dispatched = app.shipments("?status=dispatched").await;
    assert_eq!(dispatched["shipments"][0]["order_id"], a.as_str());
    assert_eq!(
        dispatched["shipments"][0]["dispatch"]["tracking"],
        "1Z999AA10123456784"
    );

    let r = app
        .dispatch("00000000-0000-4000-8000-000000000000", &body)
        .await;
    expect_problem(r, 404).await;
    let r = app.dispatch(&b, &json!({"carrier": "UPS"})).await;
    let p = expect_problem(r, 422).await;
    assert_eq!(p["errors"][0]["field"], "tracking");
    let r = app
        .dispatch(
            &b,
            &json!({"carrier": "UPS", "tracking": "1", "signature": "x"}),
        )
        .await;
    expect_problem(r, 422).await;
    let r = app
        .client(Role::Fulfillment)
        .post(app.url(&format!("/v1/shipments/{b}/dispatch")))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    expect_problem(r, 400).await;
    let r = app
        .client(Role::Fulfillment)
        .post(app.url(&format!("/v1/shipments/{b}/dispatch")))
        .body("carrier=UPS")
        .send()
        .await
        .unwrap();
    expect_problem(r, 415).await;
}

/// Carrier and tracking are stored in clear (invariant 2): a card number
/// or an email address in either is refused with a problem naming the
/// field, and nothing is dispatched; a long tracking number that merely
/// passes the Luhn check is accepted, and the audit, which scans those
/// columns with the same rule, stays clean.
#[tokio::test]
async fn a_dispatch_never_stores_a_card_number_or_an_email_in_clear() {
    let app = spawn_app().await;
    let a = new_order(&app, "dc-a", &order_json()).await;
    for (body, field, code) in [
        (
            json!({"carrier": "UPS", "tracking": "4111 1111 1111 1111"}),
            "tracking",
            "looks_like_card_number",
        ),
        (
            json!({"carrier": "REF-7-4111-1111-1111-1111", "tracking": "1Z999"}),
            "carrier",
            "looks_like_card_number",
        ),
        (
            json!({"carrier": "UPS", "tracking": "ada@example.com"}),
            "tracking",
            "looks_like_email",
        ),
    ] {
        let r = app.dispatch(&a, &body).await;
        let p = expect_problem(r, 422).await;
        assert_eq!(p["errors"][0]["field"], field, "{p:#}");
        assert_eq!(p["errors"][0]["code"], code, "{p:#}");
        let text = p.to_string();
        assert!(!text.contains("4111") && !text.contains("ada@"), "{text}");
    }
    let pending = app.shipments("").await;
    assert_eq!(
        pending["shipments"][0]["order_id"],
        a.as_str(),
        "not dispatched"
    );

    // 15 digits passing Luhn, of no card brand: a FedEx Ground-style number.
    let body = json!({"carrier": "FedEx", "tracking": "961234567890126"});
    let r = app.dispatch(&a, &body).await;
    assert_eq!(r.status(), 200);
    let report = crate::audit::run_verify(&app).await;
    assert!(report.verified, "{:?}", report.failures);
}

async fn audit_log(app: &TestApp, query: &str) -> Value {
    let r = app
        .client(Role::Auditor)
        .get(app.url(&format!("/v1/audit/log{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// A refusal names the object its path asked for — which order a wrong
/// role or a stranger tried to read or dispatch — in canonical form; what
/// is not an id there is the client's input and is not written.
#[tokio::test]
async fn a_refused_request_names_the_order_it_asked_for() {
    let app = spawn_app().await;
    let id = "0f6e3a2c-5b1d-4c8e-9a7f-2d4b6c8e0a1b";
    let refused = [
        (
            app.client(Role::Fulfillment),
            format!("/v1/orders/{id}"),
            403,
        ),
        (
            app.client(Role::Storefront),
            format!("/v1/audit/orders/{}", id.to_uppercase()),
            403,
        ),
        (app.anonymous(), format!("/v1/orders/{id}"), 401),
        (
            app.client(Role::Marketing),
            "/v1/orders/ada@example.com".to_owned(),
            403,
        ),
        // Well-formed UUIDs holding a card number (Visa's 4012 8888 8888
        // 4000, then 1881): the client's choice, not logged.
        (
            app.anonymous(),
            "/v1/orders/40128888-8888-4000-8000-000000000000".to_owned(),
            401,
        ),
        (
            app.client(Role::Marketing),
            "/v1/orders/40128888888818810000000000000000".to_owned(),
            403,
        ),
    ];
    for (client, path, status) in &refused {
        let r = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{path}");
    }
    let r = app
        .client(Role::Auditor)
        .post(app.url(&format!("/v1/shipments/{id}/dispatch")))
        .json(&json!({"carrier": "UPS", "tracking": "1Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let log = audit_log(&app, "").await;
    let denied: Vec<(&str, &Value)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .map(|e| (e["action"].as_str().unwrap(), &e["objects"]))
        .collect();
    assert_eq!(
        denied,
        [
            ("GET /v1/orders/{id}", &json!([id])),
            ("GET /v1/audit/orders/{id}", &json!([id])),
            ("GET /v1/orders/{id}", &json!([id])),
            ("GET /v1/orders/{id}", &json!([])),
            ("GET /v1/orders/{id}", &json!([])),
            ("GET /v1/orders/{id}", &json!([])),
            ("POST /v1/shipments/{order_id}/dispatch", &json!([id])),
        ]
    );
    assert!(!log.to_string().contains("ada@"), "{log}");
    assert!(!log.to_string().contains("40128888"), "{log}");
}

#[tokio::test]
async fn the_access_log_names_reads_denials_and_itself_and_its_chain_verifies() {
    let app = spawn_app().await;
    let a = new_order(&app, "log-a", &order_json()).await;
    let b = new_order(&app, "log-b", &gift_order()).await;
    let _ = app.shipments("").await;
    for role in [Role::Storefront, Role::Auditor, Role::Marketing] {
        let r = app
            .client(role)
            .get(app.url("/v1/shipments"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let r = app
        .anonymous()
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let log = audit_log(&app, "").await;
    let entries = log["entries"].as_array().unwrap();
    // Order intake is not a personal-data read: nothing logged for it.
    let read = &entries[0];
    assert_eq!(read["action"], "GET /v1/shipments");
    assert_eq!(read["role"], "fulfillment");
    assert_eq!(read["outcome"], "allowed");
    assert_eq!(read["objects"], json!([a, b]));
    assert_eq!(read["origin_ip"], "127.0.0.1");
    assert_eq!(read["cert_fingerprint"].as_str().unwrap().len(), 64);
    let denied: Vec<&Value> = entries
        .iter()
        .filter(|e| e["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 4);
    let roles: HashSet<&str> = denied.iter().map(|e| e["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        HashSet::from(["storefront", "auditor", "marketing", "none"])
    );
    assert!(denied.iter().all(|e| e["action"] == "GET /v1/shipments"));
    assert!(denied.iter().any(|e| e["status"] == 401));
    // Chain hashes are exposed and link up.
    let mut prev = "0".repeat(64);
    for e in entries {
        assert_eq!(e["prev_hash"].as_str().unwrap(), prev);
        prev = e["hash"].as_str().unwrap().to_owned();
    }
    assert_eq!(log["head"]["hash"].as_str().unwrap(), prev);
    // Reading the log was itself logged.
    let again = audit_log(&app, &format!("?after={}", entries.len())).await;
    assert_eq!(again["entries"][0]["action"], "GET /v1/audit/log");
    assert_eq!(again["entries"][0]["role"], "auditor");
    assert_eq!(
        again["entries"][0]["objects"],
        json!([format!("access_log:1..{}", entries.len())])
    );

    let store = app.store().await;
    let status = verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap();
    assert_eq!(status.entries as usize, entries.len() + 2);
    // A HEAD read is logged as what it was, not as a GET.
    let head = app
        .client(Role::Fulfillment)
        .head(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let last = audit_log(&app, &format!("?after={}", entries.len() + 2)).await;
    assert_eq!(last["entries"][0]["action"], "HEAD /v1/shipments");
    // Any sequence number is a valid `after`, past the last one too; one
    // beyond the largest (the OpenAPI's maximum) is refused, named.
    let beyond = audit_log(&app, &format!("?after={}", i64::MAX)).await;
    assert_eq!(beyond["entries"], json!([]));
    let r = app
        .client(Role::Auditor)
        .get(app.url(&format!("/v1/audit/log?after={}", u64::MAX)))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(r, 400).await;
    assert_eq!(problem["errors"][0]["field"], "after");
    let r = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/log?afterr=1"))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(r, 400).await;
    assert_eq!(problem["errors"][0]["field"], "afterr");
    assert_eq!(problem["errors"][0]["code"], "unknown_parameter");
}

/// Applies `sql` with the append-only triggers out of the way (an attacker
/// with write access to the file can drop them), then verifies.
async fn tampered(sql: &str) -> ChainError {
    let app = spawn_app().await;
    let _ = new_order(&app, "t-a", &order_json()).await;
    for _ in 0..3 {
        let _ = app.shipments("").await;
        let _ = app
            .client(Role::Marketing)
            .get(app.url("/v1/shipments"))
            .send()
            .await
            .unwrap();
    }
    let db = app.db().await;
    assert!(
        sqlx::query("UPDATE access_log SET role = 'x' WHERE seq = 1")
            .execute(&db)
            .await
            .is_err(),
        "append-only"
    );
    assert!(
        sqlx::query("DELETE FROM access_log WHERE seq = 1")
            .execute(&db)
            .await
            .is_err(),
        "append-only"
    );
    app.unguard("access_log").await;
    let store = app.store().await;
    verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap();
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap_err()
}

/// Someone with write access to the database plants a card number and an
/// email in the access log: the auditor reading the log is not shown them;
/// the entries this service wrote are served as written.
#[tokio::test]
async fn an_edited_log_entry_never_shows_the_auditor_a_card_number_or_an_email() {
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let _ = app.shipments("").await;
    app.unguard("access_log").await;
    let db = app.db().await;
    sqlx::query(
        "UPDATE access_log SET action = 'GET 4012 8888 8888 1881', \
         objects = '[\"ada@example.com\"]' WHERE seq = 1",
    )
    .execute(&db)
    .await
    .unwrap();
    let log = audit_log(&app, "").await;
    let text = log.to_string();
    for pan in ["4012 8888 8888 1881", "4012888888881881"] {
        assert!(!text.contains(pan), "{text}");
    }
    assert!(!text.contains("ada@example.com"), "{text}");
    let entries = log["entries"].as_array().unwrap();
    // Not even the last four digits, in any field a person reads. (Not
    // in the whole text: the hashes, MACs and fingerprint are hex, where
    // any four digits turn up by chance — "…a18818ba…" once failed a run.)
    for entry in entries {
        for (field, value) in entry.as_object().unwrap() {
            if !["hash", "prev_hash", "mac", "cert_fingerprint"].contains(&field.as_str()) {
                assert!(!value.to_string().contains("1881"), "{field}: {text}");
            }
        }
    }
    assert!(
        entries[0]["action"]
            .as_str()
            .unwrap()
            .starts_with("(withheld"),
        "{text}"
    );
    assert!(
        entries[0]["objects"][0]
            .as_str()
            .unwrap()
            .starts_with("(withheld"),
        "{text}"
    );
    assert_eq!(entries[1]["action"], "GET /v1/shipments");
}

#[tokio::test]
async fn chain_verification_names_an_edited_entry() {
    let err = tampered("UPDATE access_log SET objects = '[]' WHERE seq = 3").await;
    assert_eq!(
        err,
        ChainError::Entry {
            seq: 3,
            what: "hash does not match its fields (edited)"
        }
    );
}

#[tokio::test]
async fn chain_verification_catches_a_rehashed_edit() {
    // Recomputing the SHA-256 links is possible for anyone; the MAC is not.
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let _ = app.shipments("").await;
    app.unguard("access_log").await;
    let db = app.db().await;
    let store = app.store().await;
    let mut page = checkoutd::store::Store::access_log_page(&store, 0, 10)
        .await
        .unwrap();
    let mut e = page.remove(1);
    e.entry.role = "storefront".into();
    let hash = checkoutd::audit::access_log::entry_hash(e.seq, &e.prev_hash, &e.entry);
    sqlx::query("UPDATE access_log SET role = 'storefront', hash = $1 WHERE seq = 2")
        .bind(hash.as_slice())
        .execute(&db)
        .await
        .unwrap();
    let err = verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::Entry {
            seq: 2,
            what: "MAC does not verify (rewritten)"
        }
    );
}

/// The same list of objects written otherwise (`[ "id" ]`): the chain
/// hashes the list, so it would verify, yet checks that read the stored
/// text (a dispatch's entry, behind the rollback check) would miss it.
#[tokio::test]
async fn chain_verification_names_objects_written_otherwise() {
    let err = tampered(
        "UPDATE access_log SET objects = replace(replace(objects, '[', '[ '), ']', ' ]') \
         WHERE seq = 2",
    )
    .await;
    assert_eq!(
        err,
        ChainError::Entry {
            seq: 2,
            what: "objects is not written as this service writes it (edited)"
        }
    );
}

#[tokio::test]
async fn chain_verification_names_a_deleted_entry() {
    let err = tampered("DELETE FROM access_log WHERE seq = 2").await;
    assert_eq!(
        err,
        ChainError::Entry {
            seq: 2,
            what: "missing (sequence gap)"
        }
    );
}

#[tokio::test]
async fn chain_verification_names_reordered_entries() {
    let err = tampered(
        "UPDATE access_log SET seq = 100 WHERE seq = 2; UPDATE access_log SET seq = 2 WHERE seq = 3; \
         UPDATE access_log SET seq = 3 WHERE seq = 100",
    )
    .await;
    assert_eq!(
        err,
        ChainError::Entry {
            seq: 2,
            what: "does not link to the previous entry"
        }
    );
}

#[tokio::test]
async fn chain_verification_catches_a_truncated_tail() {
    let err =
        tampered("DELETE FROM access_log WHERE seq = (SELECT max(seq) FROM access_log)").await;
    assert!(matches!(err, ChainError::Head(_)), "{err:?}");
}

fn walk(v: &Value, keys: &mut Vec<String>, strings: &mut Vec<String>, numbers: &mut Vec<i64>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                keys.push(k.clone());
                walk(v, keys, strings, numbers);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| walk(v, keys, strings, numbers)),
        Value::String(s) => strings.push(s.to_lowercase()),
        Value::Number(n) => numbers.extend(n.as_i64()),
        _ => {}
    }
}

/// The access log's head row now (seq, hash, MAC), to be put back later.
async fn access_log_head(db: &sqlx::AnyPool) -> (i64, Vec<u8>, Vec<u8>) {
    sqlx::query_as("SELECT seq, hash, mac FROM access_log_head")
        .fetch_one(db)
        .await
        .unwrap()
}

/// The attack an earlier verified head catches: the access log's tail
/// after `seq` cut off and that older — genuine, MACed — head row put back.
async fn cut_access_log_back(app: &TestApp, db: &sqlx::AnyPool, seq: i64, hash: &[u8], mac: &[u8]) {
    app.unguard("access_log").await;
    app.unguard("access_log_head").await;
    sqlx::query("DELETE FROM access_log WHERE seq > $1")
        .bind(seq)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE access_log_head SET seq = $1, hash = $2, mac = $3")
        .bind(seq)
        .bind(hash)
        .bind(mac)
        .execute(db)
        .await
        .unwrap();
}

/// A genuine older head row written back over a log that went on (plain
/// write access: no trigger dropped, no entry deleted). The database
/// refuses it — a head names the last entry, and is never removed — and
/// with that guard switched off the verification finds the entries past
/// the head instead of taking them for appends landing meanwhile.
#[tokio::test]
async fn an_older_head_written_back_over_a_longer_log_is_refused_and_caught() {
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let db = app.db().await;
    let (seq, hash, mac) = access_log_head(&db).await;
    let _ = app.shipments("").await;
    let _ = app.shipments("").await;
    let put_back = || {
        sqlx::query("UPDATE access_log_head SET seq = $1, hash = $2, mac = $3")
            .bind(seq)
            .bind(hash.clone())
            .bind(mac.clone())
            .execute(&db)
    };
    let refused = put_back().await.unwrap_err().to_string();
    assert!(
        refused.contains("must move forward to an entry"),
        "{refused}"
    );
    // Nor by replacing the row (SQLite's REPLACE deletes the old row
    // without its delete trigger), nor by an upsert.
    let replace = if app.database.is_postgres() {
        "INSERT INTO access_log_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac"
    } else {
        "INSERT OR REPLACE INTO access_log_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)"
    };
    let refused = sqlx::query(replace)
        .bind(seq)
        .bind(hash.clone())
        .bind(mac.clone())
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("must move forward to an entry"),
        "{refused}"
    );
    // Nor a head naming a later entry than there is, nor none at all.
    let (now_seq, now_hash, _) = access_log_head(&db).await;
    let refused = sqlx::query("UPDATE access_log_head SET seq = $1")
        .bind(now_seq + 1)
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("must move forward to an entry"),
        "{refused}"
    );
    let refused = sqlx::query("UPDATE access_log_head SET hash = $1")
        .bind(vec![0u8; 32])
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("must move forward to an entry"),
        "{refused}"
    );
    let refused = sqlx::query("DELETE FROM access_log_head")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("never removed"), "{refused}");
    assert_eq!(access_log_head(&db).await.1, now_hash);
    let store = app.store().await;
    verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap();

    app.unguard("access_log_head").await;
    put_back().await.unwrap();
    let err = verify_chain(&store, app.keyring().access_log_key())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChainError::Entry { seq: at, what }
            if what.contains("past the head") && i64::try_from(at).unwrap() == seq + 1),
        "{err:?}"
    );
    let report = checkoutd::audit::verify::verify(&store, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(!report.verified);
    assert!(!report.access_log.intact, "{:#?}", report.access_log);
}

/// The heads the server's last intact report saw outlive a restart (the
/// anchors file of the data directory): a tail cut off and an older head
/// put back while the server was down fails the first report of the next
/// process, as it fails the next report of the same one.
#[tokio::test]
async fn a_rollback_while_the_server_was_down_fails_its_first_report() {
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let db = app.db().await;
    let (seq, hash, mac) = access_log_head(&db).await;
    let _ = app.shipments("").await;
    let report: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true);
    let anchors = app
        .dir
        .path()
        .join("data")
        .join(checkoutd::audit::anchors::FILE_NAME);
    let kept = checkoutd::audit::anchors::load(&anchors).unwrap();
    assert!(
        kept.access_log
            .is_some_and(|a| a.seq > u64::try_from(seq).unwrap())
    );

    cut_access_log_back(&app, &db, seq, &hash, &mac).await;
    // A new process on the same data directory and database.
    let next = app.another_process().await;
    let report: Value = next.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], false, "{report:#}");
    let failure = report["report"]["access_log"]["failure"].as_str().unwrap();
    assert!(
        failure.contains("behind the head an earlier verification saw"),
        "{failure}"
    );
}

/// After a restore the operator removes the anchors file (docs): a server
/// still running does not write its heads — those of the database it
/// started on — back, and a server that starts without the file beside a
/// log that is not new says so.
#[tokio::test]
async fn a_removed_anchors_file_is_not_written_back_and_its_absence_is_told() {
    use checkoutd::audit::job::ReportJob;
    use std::sync::Arc;
    use std::time::Duration;
    let app = spawn_app().await;
    assert!(
        !app.notices.iter().any(|n| n.contains("audit anchors")),
        "a first start warned about anchors: {:?}",
        app.notices
    );
    let anchors = app
        .dir
        .path()
        .join("data")
        .join(checkoutd::audit::anchors::FILE_NAME);
    let _ = app.shipments("").await;
    let store: Arc<dyn checkoutd::store::Store> = Arc::new(app.store().await);
    let keyring = Arc::new(app.keyring());
    let job = Arc::new(
        ReportJob::anchored_in(anchors.clone())
            .unwrap()
            .fresh_for(Duration::ZERO),
    );
    assert!(!job.anchors_found());
    let run = || async {
        job.latest_or_start(store.clone(), keyring.clone(), Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(run().await["report"]["verified"], true);
    let kept = checkoutd::audit::anchors::load(&anchors).unwrap();
    assert!(
        kept.access_log.is_some(),
        "the first intact report kept no anchor"
    );

    std::fs::remove_file(&anchors).unwrap();
    let _ = app.shipments("").await;
    let report = run().await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
    assert!(
        !anchors.exists(),
        "a running job wrote a removed anchors file back"
    );

    // A new process on the same data directory: no file, a log with
    // entries — told, and it still starts.
    let next = app.another_process().await;
    assert!(
        next.notices
            .iter()
            .any(|n| n.contains("no audit anchors file")),
        "{:?}",
        next.notices
    );
    let report: Value = next.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
    assert!(
        anchors.exists(),
        "the next start's first report anchored nothing"
    );
    // With the file there again, a restart is quiet about it.
    let third = app.another_process().await;
    assert!(
        !third.notices.iter().any(|n| n.contains("audit anchors")),
        "{:?}",
        third.notices
    );
}

/// A tail cut off and an older — genuine, MACed — head row put back
/// verifies on its own; against the head an earlier report saw (the
/// server's previous report, or `audit --since` an earlier signed report)
/// it does not.
#[tokio::test]
async fn a_cut_tail_with_an_older_head_put_back_fails_against_an_earlier_report() {
    use checkoutd::audit::job::ReportJob;
    use std::sync::Arc;
    use std::time::Duration;
    let app = spawn_app().await;
    let _ = app.shipments("").await;
    let db = app.db().await;
    let (seq, hash, mac) = access_log_head(&db).await;
    let _ = app.shipments("").await;
    let _ = app.shipments("").await;
    let store: Arc<dyn checkoutd::store::Store> = Arc::new(app.store().await);
    let keyring = Arc::new(app.keyring());
    let job = Arc::new(ReportJob::with_freshness(Duration::ZERO));
    let run = || async {
        job.latest_or_start(store.clone(), keyring.clone(), Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(run().await["report"]["verified"], true);
    let earlier = app.dir.path().join("earlier.json");
    let out = app
        .command()
        .args(["audit", "--out"])
        .arg(&earlier)
        .output()
        .unwrap();
    assert_succeeded(&out);

    cut_access_log_back(&app, &db, seq, &hash, &mac).await;
    // On its own the chain verifies: that is the attack.
    let alone = verify_chain(store.as_ref(), app.keyring().access_log_key())
        .await
        .unwrap();
    assert_eq!(alone.head_seq, u64::try_from(seq).unwrap());

    const BEHIND: &str = "behind the head an earlier verification saw";
    // The server's next report, anchored at its previous one.
    let report = run().await;
    assert_eq!(report["report"]["verified"], false);
    let failure = report["report"]["access_log"]["failure"].as_str().unwrap();
    assert!(failure.contains(BEHIND), "{failure}");
    // The offline audit, anchored at the earlier signed report.
    let later = app.dir.path().join("later.json");
    let out = app
        .command()
        .args(["audit", "--out"])
        .arg(&later)
        .arg("--since")
        .arg(&earlier)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&std::fs::read(&later).unwrap()).unwrap();
    assert_eq!(doc["report"]["access_log"]["intact"], false);
    assert!(
        doc["report"]["access_log"]["failure"]
            .as_str()
            .unwrap()
            .contains(BEHIND)
    );
    assert!(doc["report"]["access_log"]["anchored_at"].as_u64().unwrap() > alone.head_seq);
    // An earlier report that is not this keyring's signed report is refused.
    let mut forged: Value = serde_json::from_slice(&std::fs::read(&earlier).unwrap()).unwrap();
    forged["report"]["access_log"]["head_seq"] = serde_json::json!(1);
    std::fs::write(&earlier, serde_json::to_vec(&forged).unwrap()).unwrap();
    let out = app
        .command()
        .args(["audit", "--out"])
        .arg(&later)
        .arg("--since")
        .arg(&earlier)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a report signed by this keyring"));
}

/// Invariant 8, "before the response is sent": while the access log
/// refuses every entry, no read of personal data answers with the data —
/// each is withheld (503) — and once the log takes entries again, the
/// same reads answer and are logged.
#[tokio::test]
async fn no_personal_data_leaves_while_the_access_log_cannot_record_the_read() {
    let app = spawn_app().await;
    let order = new_order(&app, "unlogged-1", &order_json()).await;
    let _gift = new_order(&app, "unlogged-2", &gift_order()).await;
    let db = app.db().await;
    let (block, unblock): (&[&str], &[&str]) = if app.database.is_postgres() {
        (
            &[
                "CREATE FUNCTION test_refuse_log() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'test: the access log refuses entries'; END $$",
                "CREATE TRIGGER test_refuse_log BEFORE INSERT ON access_log \
                 FOR EACH ROW EXECUTE FUNCTION test_refuse_log()",
            ],
            &["DROP TRIGGER test_refuse_log ON access_log"],
        )
    } else {
        (
            &[
                "CREATE TRIGGER test_refuse_log BEFORE INSERT ON access_log \
               BEGIN SELECT RAISE(ABORT, 'test: the access log refuses entries'); END",
            ],
            &["DROP TRIGGER test_refuse_log"],
        )
    };
    for sql in block {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let reads = |app: &TestApp| {
        let order = order.clone();
        let requests = vec![
            app.client(Role::Fulfillment).get(app.url("/v1/shipments")),
            app.client(Role::Marketing)
                .get(app.url("/v1/marketing/audience?purpose=special_offers")),
            app.client(Role::Auditor)
                .get(app.url(&format!("/v1/audit/orders/{order}"))),
            app.client(Role::Auditor)
                .post(app.url("/v1/audit/consent"))
                .json(&json!({"email": "ada@example.com"})),
            app.client(Role::Auditor).get(app.url("/v1/audit/log")),
        ];
        requests
    };
    for request in reads(&app) {
        let r = request.send().await.unwrap();
        let path = r.url().path().to_owned();
        let text = r.text().await.unwrap();
        for secret in [
            "Lovelace",
            "Columbia",
            "Babbage",
            "Dorset",
            "ada@example.com",
            "W1U",
            &order,
        ] {
            assert!(!text.contains(secret), "{path} disclosed {secret}: {text}");
        }
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["status"], 503, "{path}: {text}");
    }
    for sql in unblock {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    for request in reads(&app) {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.url());
    }
    let shipments = app.shipments("").await;
    assert!(shipments.to_string().contains("Columbia"));
}

/// A dispatch refused — another tracking number for a shipped order, no
/// such order, a row that fails its check — is written to the access log
/// as denied, with its status and the order it named (invariant 8); an id
/// that holds a card number is not. The audit stays clean.
#[tokio::test]
async fn refused_dispatches_are_in_the_access_log() {
    let app = spawn_app().await;
    let shipped = new_order(&app, "rd-1", &order_json()).await;
    let edited = new_order(&app, "rd-2", &order_json()).await;
    let body = json!({"carrier": "UPS", "tracking": "1Z999AA10123456784"});
    assert_eq!(app.dispatch(&shipped, &body).await.status(), 200);
    let other = json!({"carrier": "UPS", "tracking": "OTHER"});
    expect_problem(app.dispatch(&shipped, &other).await, 409).await;
    let unknown = "0190a000-0000-7000-8000-000000000000";
    expect_problem(app.dispatch(unknown, &body).await, 404).await;
    let pan_shaped = "40128888-8888-4000-8000-000000000000";
    expect_problem(app.dispatch(pan_shaped, &body).await, 404).await;
    sqlx::query("UPDATE orders SET items = '[]' WHERE id = $1")
        .bind(&edited)
        .execute(&app.db().await)
        .await
        .unwrap();
    expect_integrity_conflict(app.dispatch(&edited, &body).await).await;

    let denied: Vec<(u64, Value)> = app
        .access_log_entries()
        .await
        .into_iter()
        .filter(|e| {
            e["action"] == checkoutd::fulfillment::DISPATCH_ACTION && e["outcome"] == "denied"
        })
        .map(|e| (e["status"].as_u64().unwrap(), e["objects"].clone()))
        .collect();
    assert_eq!(
        denied,
        vec![
            (409, json!([shipped])),
            (404, json!([unknown])),
            (404, json!([])),
            (409, json!([edited])),
        ]
    );
    let log = serde_json::to_string(&app.access_log_entries().await).unwrap();
    assert!(!log.contains("40128888"), "a card-shaped id was logged");
    // Only the edit is found: the refusals name no order that is gone.
    let report = crate::audit::run_verify(&app).await;
    assert!(
        report.failures.iter().all(|f| f.record_id == edited),
        "{:#?}",
        report.failures
    );
}
