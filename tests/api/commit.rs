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
        now: time::OffsetDateTime::now_utc(),
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
    let outcomes = store.commit_orders(batch.into()).await.unwrap();
    use CommitOutcome::*;
    assert_eq!(
        outcomes,
        vec![Committed, Committed, DuplicateKey, Committed]
    );
    // A later batch repeating a stored key writes nothing for it.
    let again = vec![sealed(&app, "batch-b"), sealed(&app, "batch-d")];
    assert_eq!(
        store.commit_orders(again.into()).await.unwrap(),
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
    let before = histogram(&app.metrics().await, "checkoutd_commit_batch_orders");
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
    let after = histogram(&app.metrics().await, "checkoutd_commit_batch_orders");
    let (orders, batches) = (after.0 - before.0, after.1 - before.1);
    assert!(orders >= 64.0, "{orders} orders counted in the meantime");
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
    // This test's handshake failure is seen as growth of the counter.
    let failures_before = handshake_failures(&app.metrics().await);
    // A failed handshake: plaintext bytes on the TLS port. The server
    // counts it once it has read them, so wait for the answer (its alert)
    // or the close before scraping.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut rest));
        assert!(
            read.await.is_ok(),
            "the server never closed a plaintext connection"
        );
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
    let mut text = r.text().await.unwrap();
    // The counter is bumped after the connection is closed: give a busy
    // machine (the whole suite runs in parallel) a moment to get there.
    for _ in 0..100 {
        if handshake_failures(&text) > failures_before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = app.metrics().await;
    }
    assert!(
        handshake_failures(&text) > failures_before,
        "the failed handshake was not counted:\n{text}"
    );
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
    // Personal data could only be in a name or a label: sample values are
    // numbers (whose digits may well hold "4111"), so each line is split
    // into its series and its value, and the value must be a number.
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let series = if line.starts_with('#') {
            line
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
            samples += 1;
            series
        };
        for secret in ["4111", "Ada@", "ada@", "Lovelace", "Columbia", "metrics-1"] {
            assert!(!series.contains(secret), "{secret} in {line}");
        }
    }
    assert!(samples > 20, "{text}");
}

/// All failed TLS handshakes counted, over every reason.
fn handshake_failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("checkoutd_tls_handshake_failures_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The WAL's checkpoint sequence number (SQLite's WAL header, bytes
/// 12..16): it grows each time the WAL is started from its beginning again.
fn wal_restarts(app: &TestApp) -> u32 {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(app.db_path().with_extension("db-wal"))
        .and_then(|mut f| f.read_exact(&mut header))
        .map_or(0, |()| {
            u32::from_be_bytes([header[12], header[13], header[14], header[15]])
        })
}

/// A copy of `order` under new ids and a new Idempotency-Key hash: cheap
/// distinct rows for a storage test (its MACs no longer match; nothing
/// here verifies them).
fn copy_with_new_ids(order: &NewOrder) -> NewOrder {
    use checkoutd::store::rows::ShippingRecord;
    let rng = ring::rand::SystemRandom::new();
    let new_id = || checkoutd::ids::new_id(&rng).unwrap();
    let mut o = order.clone();
    o.id = new_id();
    let customer = (o.customer_tag.id, new_id());
    let recipient = o.recipient_tag.as_ref().map(|t| (t.id, new_id()));
    let tag = |old: uuid::Uuid| {
        [Some(customer), recipient]
            .into_iter()
            .flatten()
            .find(|(from, _)| *from == old)
            .map_or(old, |(_, to)| to)
    };
    o.customer_tag.id = customer.1;
    o.customer_tag.order_id = o.id;
    if let Some(t) = o.recipient_tag.as_mut() {
        t.id = tag(t.id);
        t.order_id = o.id;
    }
    for r in [&mut o.billing.sealed, &mut o.contact, &mut o.card.sealed]
        .into_iter()
        .chain(o.recipient.as_mut())
    {
        r.id = new_id();
        r.consent_tag_id = tag(r.consent_tag_id);
    }
    match &mut o.shipping {
        ShippingRecord::Customer(r) => {
            r.id = new_id();
            r.consent_tag_id = tag(r.consent_tag_id);
        }
        ShippingRecord::GiftRecipient { id, consent_tag_id } => {
            *id = new_id();
            *consent_tag_id = tag(*consent_tag_id);
        }
    }
    ring::rand::SecureRandom::fill(&rng, &mut o.idempotency.key_hash).unwrap();
    o.idempotency.response.order_id = o.id;
    o
}

/// Under sustained commits the SQLite WAL is started over again, instead
/// of growing without bound: checkpoints on another thread never copy all
/// of it while commits keep landing (600 MB in the 10-s benchmark), so the
/// order writer finishes one itself between two batches.
#[tokio::test]
async fn sustained_commits_keep_restarting_the_sqlite_wal() {
    let app = spawn_app().await;
    if app.database.is_postgres() {
        // PostgreSQL's WAL is the server's to recycle.
        return;
    }
    // A second store in this process (its own order writer and
    // checkpointer), so that the batches need neither HTTP nor sealing:
    // nothing slows them down between two commits.
    let store = app.store().await;
    let template = sealed(&app, "wal");
    let before = wal_restarts(&app);
    let started = std::time::Instant::now();
    let mut rounds = 0;
    // Batch after batch, with nothing in between but copying rows, until
    // the WAL has been restarted twice (twice a second here) or for 15 s.
    while wal_restarts(&app).saturating_sub(before) < 2
        && started.elapsed() < std::time::Duration::from_secs(15)
    {
        rounds += 1;
        let batch: Vec<NewOrder> = (0..32).map(|_| copy_with_new_ids(&template)).collect();
        let outcomes = store.commit_orders(batch.into()).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == CommitOutcome::Committed));
    }
    let restarts = wal_restarts(&app).saturating_sub(before);
    assert!(
        restarts >= 2,
        "the WAL was restarted {restarts} times in {rounds} back-to-back batches"
    );
}

/// Spawns `work` and returns once the task has polled it once: whatever
/// `work` does before it first waits (take a free lock, or queue for a taken
/// one) is done.
async fn spawn_polled<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (polled, was_polled) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut work = std::pin::pin!(work);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
        let _ = polled.send(());
        match first {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => work.await,
        }
    });
    was_polled.await.unwrap();
    task
}

/// SQLite's two writing connections in one process — the order writer and
/// sqlx's (dispatches, the access log, withdrawals) — take turns at a fair
/// gate, first come first served. Without it SQLite's busy handler only
/// polls, while the order writer begins its next batch microseconds after
/// each commit: under sustained order load a dispatch (or an access-log
/// append, which every fulfillment read waits for) starved for seconds.
/// Here a dispatch arrives while a batch waits for the database's write
/// lock (held by the test, as another process could), and before the next
/// batch: it must be written after that batch and before the next one. A
/// dispatch that bypassed the gate would race the batches for SQLite's lock
/// instead, and either overtake the first batch or fall behind the next.
///
/// (On one runtime thread, so that each task records that it finished in
/// the same poll as it leaves the gate: the record's order is the gate's.)
#[tokio::test]
async fn other_writes_take_turns_with_order_batches() {
    use checkoutd::store::rows::{Dispatch, DispatchOutcome, NewDispatch};
    use std::sync::{Arc, Mutex};
    let app = spawn_app().await;
    let postgres = app.database.is_postgres();
    let store = Arc::new(app.store().await);
    let template = sealed(&app, "turns");
    let batch = |n: usize| -> Arc<[NewOrder]> {
        (0..n)
            .map(|_| copy_with_new_ids(&template))
            .collect::<Vec<_>>()
            .into()
    };
    let target = copy_with_new_ids(&template);
    let target_id = target.id;
    store.commit_orders([target].into()).await.unwrap();

    let finished = Arc::new(Mutex::new(Vec::new()));
    let commit_batch = |name: &'static str, orders: Arc<[NewOrder]>| {
        let (store, finished) = (store.clone(), finished.clone());
        async move {
            store.commit_orders(orders).await.unwrap();
            finished.lock().unwrap().push(name);
        }
    };
    let checked = store.order_check(target_id).await.unwrap().unwrap();
    let dispatch = {
        let (store, finished) = (store.clone(), finished.clone());
        async move {
            let new = NewDispatch {
                dispatch: Dispatch {
                    carrier: "DHL".into(),
                    tracking: "JD014600006281230".into(),
                    dispatched_at: checkoutd::ids::now(),
                },
                mac: [0; 32],
            };
            let outcome = store.dispatch(target_id, &checked, &new).await.unwrap();
            assert!(matches!(outcome, DispatchOutcome::Dispatched(_)));
            finished.lock().unwrap().push("dispatch");
        }
    };
    // Hold what order batches wait for: SQLite's write lock; on PostgreSQL
    // the orders' advisory lock (store/postgres.rs, LOCK_ORDERS).
    let db = app.db().await;
    let mut lock = db.begin().await.unwrap();
    if postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(0x6368_6b64_0000_0001_i64)
            .execute(&mut *lock)
            .await
            .unwrap();
    } else {
        sqlx::query("CREATE TABLE turns_lock (x INTEGER)")
            .execute(&mut *lock)
            .await
            .unwrap();
    }
    // The first batch takes the gate and waits for the lock; then the
    // dispatch comes, then the next batch (each queued at the gate, in
    // that order, before the next is started).
    let first = spawn_polled(commit_batch("first batch", batch(256))).await;
    let dispatch = spawn_polled(dispatch).await;
    let dispatch = if postgres {
        // No gate there: a dispatch (a row update) does not wait for the
        // order batches at all.
        tokio::time::timeout(crate::helpers::PATIENCE, dispatch)
            .await
            .expect("a dispatch does not wait for order batches")
            .unwrap();
        None
    } else {
        Some(dispatch)
    };
    let next = spawn_polled(commit_batch("next batch", batch(32))).await;
    lock.rollback().await.unwrap();
    for task in [first, next].into_iter().chain(dispatch) {
        tokio::time::timeout(crate::helpers::PATIENCE, task)
            .await
            .expect("every write is done once the lock is gone")
            .unwrap();
    }
    let finished = finished.lock().unwrap().clone();
    if postgres {
        // (Which batch took the lock first is PostgreSQL's business.)
        assert_eq!(finished.len(), 3, "{finished:?}");
        assert_eq!(finished[0], "dispatch", "{finished:?}");
    } else {
        assert_eq!(
            finished,
            ["first batch", "dispatch", "next batch"],
            "the dispatch did not take its turn between the batches (first come, first served)"
        );
    }
}
