//! Group commit: concurrent orders share a transaction, each answered only
//! after it is durable; batches resolve idempotency as if one by one.

use checkoutd::domain::order::{Rules, Source, parse};
use checkoutd::intake::{IdempotencyKey, seal::seal_order};
use checkoutd::server::identity::Role;
use checkoutd::store::Store;
use checkoutd::store::rows::{CommitOutcome, NewOrder};
use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};
use crate::orders::order_json;

fn sealed(app: &TestApp, key: &str) -> NewOrder {
    let keyring = app.keyring();
    let rules = Rules {
        policy_versions: &["2002-06-05".to_owned()],
        today: time::OffsetDateTime::now_utc().date(),
    };
    let form = parse(order_json(), Source::Json, &rules).unwrap();
    let key = IdempotencyKey::parse(key.as_bytes()).unwrap();
    seal_order(
        &ring::rand::SystemRandom::new(),
        &keyring,
        form,
        [7; 32],
        &key,
        [9; 32],
    )
    .unwrap()
}

#[tokio::test]
async fn a_batch_resolves_idempotency_as_if_one_by_one() {
    let app = spawn_app().await;
    let store = app.store().await;
    let batch = vec![
        sealed(&app, "batch-a"),
        sealed(&app, "batch-b"),
        sealed(&app, "batch-a"), // same client and key as the first
        sealed(&app, "batch-c"),
    ];
    let outcomes = store.commit_orders(&batch).await.unwrap();
    use CommitOutcome::*;
    assert_eq!(
        outcomes,
        vec![Committed, Committed, DuplicateKey, Committed]
    );
    // A later batch repeating a stored key writes nothing for it.
    let again = vec![sealed(&app, "batch-b"), sealed(&app, "batch-d")];
    assert_eq!(
        store.commit_orders(&again).await.unwrap(),
        vec![DuplicateKey, Committed]
    );
    let db = app.db().await;
    for (table, n) in [
        ("orders", 4),
        ("payment_cards", 4),
        ("billing_details", 4),
        ("shipping_details", 4),
        ("contact_emails", 4),
        ("consent_tags", 4),
        ("idempotency_keys", 4),
    ] {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(count, n, "{table}");
    }
    // The batch's orders are whole and verify like any other.
    let report = crate::audit::run_verify(&app).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.orders_checked, 4);
}

/// `(sum, count)` of a Prometheus histogram in `text`.
fn histogram(text: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{suffix} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("_sum"), value("_count"))
}

#[tokio::test]
async fn concurrent_orders_share_commits_and_every_one_is_stored() {
    let app = spawn_app().await;
    let answers = join_all((0..64).map(|i| {
        let app = &app;
        async move {
            let r = app.post_order(&format!("burst-{i}"), &order_json()).await;
            assert_eq!(r.status(), 201);
            let v: Value = r.json().await.unwrap();
            v["order_id"].as_str().unwrap().to_owned()
        }
    }))
    .await;
    let db = app.db().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 64);
    assert_eq!(answers.len(), 64);
    let metrics = app
        .client(Role::Auditor)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (orders, batches) = histogram(&metrics, "checkoutd_commit_batch_orders");
    assert!(
        orders > batches,
        "some batch held more than one order: {orders} orders in {batches} batches"
    );
}

#[tokio::test]
async fn metrics_are_for_auditors_and_hold_no_personal_data() {
    let app = spawn_app().await;
    let r = app.post_order("metrics-1", &order_json()).await;
    assert_eq!(r.status(), 201);
    // A failed handshake: plaintext bytes on the TLS port.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = s.shutdown().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let denied = app
        .client(Role::Storefront)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let r = app
        .client(Role::Auditor)
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    for name in [
        "checkoutd_http_requests_total{",
        "checkoutd_http_request_duration_seconds_bucket{",
        "checkoutd_orders_accepted_total",
        "checkoutd_commit_batch_orders_bucket",
        "checkoutd_commit_duration_seconds_bucket",
        "checkoutd_tls_handshake_failures_total{reason=",
        "checkoutd_open_connections",
        "checkoutd_db_write_wait_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("route=\"/v1/orders\""));
    assert!(text.contains("status=\"201\""));
    for secret in ["4111", "ada@example.com", "Lovelace", "metrics-1"] {
        assert!(!text.contains(secret), "{secret}");
    }
}
