//! Several checkoutd processes on one database (DESIGN.md "Storage
//! engines"): every guarantee holds across instances, and a database outage
//! is a clean 503 that heals by itself. The instances here are two servers
//! in one test, each with its own pool, keyring handle, in-flight claims and
//! access-log writer — everything a second process would have of its own —
//! sharing the data directory and the database. They run on SQLite too (two
//! processes on one file are legal there); the outage test needs a server
//! to lose and runs on PostgreSQL only.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use checkoutd::server::identity::Role;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::helpers::{
    Options, TestApp, TestDatabase, assert_succeeded, expect_problem, postgres_addr,
    postgres_server, spawn_app, spawn_app_with, with_authority, with_database,
};
use crate::keys::{card_version, order};
use crate::orders::order_json;

async fn second_instance(first: &TestApp) -> TestApp {
    spawn_app_with(Options {
        share_with: Some(first.shared()),
        ..Options::default()
    })
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_idempotency_key_over_two_instances_stores_one_order() {
    let a = spawn_app().await;
    let b = second_instance(&a).await;
    let body = order_json();
    let answers = join_all((0..20).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = &body;
        async move {
            let r = app.post_order("shared-key-1", body).await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    }))
    .await;
    let mut ids = HashSet::new();
    let mut created = 0;
    for (status, v) in &answers {
        match status {
            201 => {
                created += 1;
                ids.insert(v["order_id"].as_str().unwrap().to_owned());
            }
            // Still in flight in the instance that took it.
            409 => assert_eq!(
                v["type"], "urn:checkoutd:problem:idempotency-key-in-flight",
                "{v}"
            ),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(created >= 1, "{answers:?}");
    assert_eq!(ids.len(), 1, "every success carries the same order id");
    assert_eq!(count(&a, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&a, "SELECT count(*) FROM idempotency_keys").await, 1);
    // Later retries on either instance replay it.
    for app in [&a, &b] {
        let r = app.post_order("shared-key-1", &body).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        let v: Value = r.json().await.unwrap();
        assert!(ids.contains(v["order_id"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn two_instances_keep_one_access_log_chain_and_ordered_cursors() {
    let a = spawn_app().await;
    let b = second_instance(&a).await;
    // 20 distinct orders and shipment reads (each read appends access-log
    // entries) over both instances at once.
    let work = (0..20).map(|i| {
        let (app, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        async move {
            let r = app.post_order(&format!("multi-{i}"), &order_json()).await;
            assert_eq!(r.status(), 201);
            let page = other.shipments("?limit=5").await;
            assert!(page["shipments"].is_array());
        }
    });
    join_all(work).await;
    assert_eq!(count(&a, "SELECT count(*) FROM orders").await, 20);

    // A cursor walk over either instance sees every order exactly once.
    for app in [&a, &b] {
        let mut seen = Vec::new();
        let mut query = "?limit=3".to_owned();
        loop {
            let page = app.shipments(&query).await;
            for s in page["shipments"].as_array().unwrap() {
                seen.push(s["order_id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(c) => query = format!("?limit=3&after={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 20);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 20);
    }

    // One chain, as the signed audit report verifies it: every entry
    // written so far is in it (the report's own read is logged after).
    let entries = count(&a, "SELECT count(*) FROM access_log").await;
    let report = a.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
    assert_eq!(report["report"]["access_log"]["intact"], true);
    assert_eq!(
        report["report"]["access_log"]["head_seq"].as_i64().unwrap(),
        entries,
        "no gap and no fork"
    );
    assert!(
        entries >= 20,
        "every concurrent shipment read is logged: {entries}"
    );
}

#[tokio::test]
async fn a_rotation_by_one_process_is_picked_up_by_the_others() {
    let a = spawn_app().await;
    let b = second_instance(&a).await;
    let before = order(&b, "rot-0").await;
    assert_eq!(card_version(&a, &before).await, 1);
    let out = a
        .command()
        .args(["keys", "rotate", "--class", "all"])
        .output()
        .unwrap();
    assert_succeeded(&out);
    // Both running instances seal under v2 from now on (each may answer a
    // retryable 503 until it has reloaded the keyring; `order` retries).
    for (i, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        let id = order(app, &format!("rot-{}", i + 1)).await;
        assert_eq!(card_version(app, &id).await, 2, "instance {}", i % 2);
    }
}

/// A key retired by `keys rotate` while an order batch or a withdrawal of
/// another process has passed the database's retired-key guard but not yet
/// committed: the retirement waits for it (both hold their sequence's lock
/// to their commit), so nothing lands under a version already recorded
/// retired. Stood in for here by a transaction holding each lock.
#[tokio::test]
async fn a_key_retirement_waits_for_order_batches_and_withdrawals_in_flight() {
    let Some(_) = postgres_server() else {
        skipped(
            "multi::a_key_retirement_waits_...",
            "advisory locks are PostgreSQL's",
        );
        return;
    };
    let app = spawn_app().await;
    // An order batch and a withdrawal hold their sequence's lock; a rewrap
    // batch shares its own with the other rewrap batches.
    for (round, (lock, take)) in [
        (
            checkoutd::store::postgres::LOCK_ORDERS,
            "pg_advisory_xact_lock",
        ),
        (
            checkoutd::store::postgres::LOCK_CONSENT_EVENTS,
            "pg_advisory_xact_lock",
        ),
        (
            checkoutd::store::postgres::LOCK_REWRAP,
            "pg_advisory_xact_lock_shared",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let db = app.db().await;
        let mut in_flight = db.begin().await.unwrap();
        sqlx::query(&format!("SELECT {take}($1)::text"))
            .bind(lock)
            .execute(&mut *in_flight)
            .await
            .unwrap();
        let mut command = app.command();
        command.args(["keys", "rotate", "--class", "card"]);
        let rotate = crate::helpers::start_waiting(
            command,
            &format!("round {round}: the retirement did not wait for the write in flight"),
        )
        .await;
        let retired_meanwhile: i64 =
            sqlx::query_scalar("SELECT count(*) FROM kek_retirements WHERE class = 'card'")
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(retired_meanwhile, i64::try_from(round).unwrap());
        in_flight.commit().await.unwrap();
        let out = crate::helpers::finish(rotate).await;
        assert_succeeded(&out);
    }
    // And a rewrap batch does take its lock: one held exclusively (as a
    // retirement does) holds the rewrap back.
    let r = app
        .post_order("rewrap-lock", &crate::orders::order_json())
        .await;
    assert_eq!(r.status(), 201);
    let mut command = app.command();
    command.args(["keys", "rotate", "--class", "card"]);
    assert_succeeded(&command.output().unwrap());
    let db = app.db().await;
    let mut retiring = db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
        .bind(checkoutd::store::postgres::LOCK_REWRAP)
        .execute(&mut *retiring)
        .await
        .unwrap();
    let mut command = app.command();
    command.args(["keys", "rewrap", "--class", "card"]);
    let rewrap =
        crate::helpers::start_waiting(command, "the rewrap batch did not take its lock").await;
    retiring.commit().await.unwrap();
    let out = crate::helpers::finish(rewrap).await;
    assert_succeeded(&out);
}

/// A TCP proxy in front of the PostgreSQL server that the test can cut
/// (every connection dropped, new ones closed at once) and restore, or
/// freeze: every connection open then, and every one made while frozen,
/// swallows what it is sent and answers nothing — a host gone silent
/// without closing anything — for as long as it lives; a thaw lets new
/// connections through again.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    links: Links,
    accept: JoinHandle<()>,
}

/// The proxy's connections, each with its frozen flag.
type Links = Arc<Mutex<Vec<(JoinHandle<()>, Arc<AtomicBool>)>>>;

/// Copies `from` to `to` until either ends; once `frozen`, what is read is
/// dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !frozen.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let silent = Arc::new(AtomicBool::new(false));
        let links: Links = Arc::default();
        let accept = {
            let (up, silent, links) = (up.clone(), silent.clone(), links.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let frozen = Arc::new(AtomicBool::new(silent.load(Ordering::SeqCst)));
                    let link = {
                        let frozen = frozen.clone();
                        tokio::spawn(async move {
                            if let Ok(server) = TcpStream::connect(target).await {
                                let (client_read, client_write) = client.into_split();
                                let (server_read, server_write) = server.into_split();
                                tokio::select! {
                                    _ = pump(client_read, server_write, frozen.clone()) => {}
                                    _ = pump(server_read, client_write, frozen) => {}
                                }
                            }
                        })
                    };
                    links.lock().await.push((link, frozen));
                }
            })
        };
        Proxy {
            addr,
            up,
            silent,
            links,
            accept,
        }
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for (link, _) in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    async fn freeze(&self) {
        self.silent.store(true, Ordering::SeqCst);
        for (_, frozen) in self.links.lock().await.iter() {
            frozen.store(true, Ordering::SeqCst);
        }
    }

    /// New connections go through again; those frozen stay silent.
    fn thaw(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// An app whose database connections all go through a [`Proxy`]; `None`
/// (the test said skipped) without a PostgreSQL server to lose.
async fn app_behind_a_proxy(test: &str) -> Option<(Proxy, TestApp)> {
    let Some(server) = postgres_server() else {
        skipped(test, "needs a PostgreSQL server to lose");
        return None;
    };
    let proxy = Proxy::start(postgres_addr(&server).await).await;
    let via = proxy.addr;
    let app = spawn_app_with(Options {
        database_url: Some(Box::new(move |url| with_authority(url, via))),
        ..Options::default()
    })
    .await;
    Some((proxy, app))
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(links) = self.links.try_lock() {
            for (link, _) in links.iter() {
                link.abort();
            }
        }
    }
}

/// A database host that goes silent without closing its connections
/// (packets dropped on the way): an order is answered 503 "retry" at the
/// commit's time limit, and the order writer gives its connection up after
/// `GIVE_UP` instead of waiting on it for ever (no TCP keepalive would end
/// the wait) — so once the database answers again, orders are taken again
/// without a restart. The order that met the silence reached no database:
/// it is not stored.
#[tokio::test]
async fn a_database_gone_silent_is_given_up_and_intake_recovers_without_a_restart() {
    let Some((proxy, app)) = app_behind_a_proxy("multi::a_database_gone_silent_...").await else {
        return;
    };
    order(&app, "silent-0").await;
    // The writer's check of its connection after that batch (a ping) is
    // answered before the silence: the next batch finds it open, and its
    // statement is what meets the silence.
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.freeze().await;
    let started = std::time::Instant::now();
    let r = app.post_order("silent-1", &order_json()).await;
    assert!(r.headers().contains_key("retry-after"), "{r:?}");
    expect_problem(r, 503).await;
    proxy.thaw();

    // Until the writer gives its silent connection up, a batch waits on it
    // (answered 503); then a new connection takes the order.
    let give_up = checkoutd::store::postgres_orders::GIVE_UP;
    let mut taken = false;
    let mut attempt = 0;
    while started.elapsed() < give_up + Duration::from_secs(30) {
        attempt += 1;
        let r = app
            .post_order(&format!("silent-2-{attempt}"), &order_json())
            .await;
        if r.status() == 201 {
            taken = true;
            break;
        }
        assert_eq!(r.status(), 503, "{r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(taken, "intake never recovered from a silent connection");
    assert!(
        started.elapsed() >= give_up - Duration::from_secs(2),
        "recovered after {:?}: the silent statement was not what held the writer",
        started.elapsed()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
}

#[tokio::test]
async fn a_database_outage_is_a_retryable_503_and_heals_without_a_restart() {
    let Some((proxy, app)) = app_behind_a_proxy("multi::a_database_outage...").await else {
        return;
    };
    let first = order(&app, "outage-0").await;
    let ready = app
        .anonymous()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    proxy.cut().await;
    // Every request that needs the database: 503 problem + Retry-After,
    // promptly (not a hang), and never a 2xx.
    let started = std::time::Instant::now();
    let r = app.post_order("outage-1", &order_json()).await;
    assert!(r.headers().contains_key("retry-after"), "{r:?}");
    expect_problem(r, 503).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = app
        .client(Role::Fulfillment)
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_problem(r, 503).await;
    // The storefront's summary too: "retry", not a server failure.
    let r = app
        .client(Role::Storefront)
        .get(app.url(&format!("/v1/orders/{first}")))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    expect_problem(r, 503).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // readiness cache
    let r = app
        .anonymous()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    proxy.restore();
    // The same retry now succeeds: the pool reconnects by itself.
    let mut second = None;
    for _ in 0..100 {
        let r = app.post_order("outage-1", &order_json()).await;
        if r.status() == 201 {
            let v: Value = r.json().await.unwrap();
            second = Some(v["order_id"].as_str().unwrap().to_owned());
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = second.expect("recovered without a restart");
    assert_ne!(first, second);
    let mut ready = false;
    for _ in 0..30 {
        let r = app
            .anonymous()
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "/readyz recovers");
    let page = app.shipments("").await;
    assert_eq!(page["shipments"].as_array().unwrap().len(), 2);
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
    let report = app.get_json(Role::Auditor, "/v1/audit/report").await;
    assert_eq!(report["report"]["verified"], true, "{report:#}");
}

pub(crate) fn skipped(test: &str, why: &str) {
    let engine = if crate::helpers::postgres_server().is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let line = format!("{test}: SKIPPED on {engine} ({why})\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn migrate(url: &str, extra: &[&str]) -> std::process::Output {
    migrate_with(url, extra, &[])
}

/// `checkoutd migrate` against `url` with `extra` flags and `env`.
fn migrate_with(url: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_checkoutd"))
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", url])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Processes that start together on a new (or upgraded) SQLite database —
/// `serve` and `migrate`, two `serve`s — take turns at its migrations: one
/// applies them, the others find nothing pending. (sqlx takes no lock on
/// SQLite; both applying the same migration made one fail to start.)
#[tokio::test]
async fn processes_migrating_one_sqlite_database_at_once_all_start() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("checkoutd.db").display());
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::task::spawn_blocking(move || migrate(&url, &[]))
            })
            .collect();
        for run in join_all(runs).await {
            assert_succeeded(&run.unwrap());
        }
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE NOT success")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(failed, 0, "round {round}");
    }
}

#[tokio::test]
async fn a_missing_postgres_database_is_refused_never_created() {
    let Some(server) = postgres_server() else {
        return skipped("multi::a_missing_postgres_database", "PostgreSQL only");
    };
    let url = with_database(&server, "checkoutd_no_such_database");
    let out = migrate(&url, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the database"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let admin = sqlx::PgPool::connect(&server).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname = 'checkoutd_no_such_database'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(n, 0);
}

/// On PostgreSQL a retried body that no longer validates, under a key no
/// row holds, is answered 422 only once the order batches in flight — in
/// any process — have ended: an earlier attempt's batch, its answer lost
/// to a broken connection or the commit time limit, may still commit the
/// key, and its first answer must then be replayed, not refused.
#[tokio::test]
async fn a_final_422_waits_for_order_batches_in_flight_in_any_process() {
    if postgres_server().is_none() {
        return skipped(
            "multi::a_final_422_waits_for_order_batches_in_flight",
            "PostgreSQL only",
        );
    }
    let app = crate::helpers::spawn_app().await;
    // Another process's batch, between its claim and its commit: it holds
    // the orders' lock.
    let other = sqlx::PgPool::connect(&app.database.url).await.unwrap();
    let mut batch = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
        .bind(checkoutd::store::postgres::LOCK_ORDERS)
        .execute(&mut *batch)
        .await
        .unwrap();
    let mut expired = crate::orders::order_json();
    expired["card"]["exp_month"] = serde_json::json!(13);
    let request = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "retried-after-its-card-expired")
        .json(&expired)
        .send();
    let answer = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !answer.is_finished(),
        "a final 422 while a batch was in flight"
    );
    batch.rollback().await.unwrap();
    let r = answer.await.unwrap().unwrap();
    let problem = crate::helpers::expect_problem(r, 422).await;
    assert_eq!(problem["type"], "urn:checkoutd:problem:invalid-order");

    // A batch stuck for longer: the wait gives up after 2 s with a 503
    // "retry" (never a 422 it cannot stand by), and holds no connection
    // beyond that.
    let mut stuck = other.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
        .bind(checkoutd::store::postgres::LOCK_ORDERS)
        .execute(&mut *stuck)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = app
        .client(Role::Storefront)
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "retried-while-a-batch-is-stuck")
        .json(&expired)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    let problem = crate::helpers::expect_problem(r, 503).await;
    assert!(waited < Duration::from_secs(8), "{waited:?}: {problem}");
    stuck.rollback().await.unwrap();
}

/// A migration that changes a column's type or collation under running
/// processes (as 0019 did) makes PostgreSQL refuse their prepared
/// statements that return it — on every connection that prepared them, for
/// as long as it lives. The first refusal is a 503 "retry" (nothing ran),
/// and from then on the pools let their older connections go instead of
/// failing with each of them.
#[tokio::test]
async fn statements_a_migration_made_stale_fail_once_not_for_ever() {
    if postgres_server().is_none() {
        return skipped(
            "multi::statements_a_migration_made_stale_fail_once",
            "PostgreSQL only",
        );
    }
    use checkoutd::store::{Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path()).await;
    let store = checkoutd::store::postgres::open(&db.url, false, checkoutd::store::Schema::Migrate)
        .await
        .unwrap();
    let reads = |n: usize| {
        let store = &store;
        futures_util::future::join_all(
            (0..n).map(move |_| store.idempotency_key(&[7; 32], &[7; 32])),
        )
    };
    // Prepared on as many of the pool's connections as run at once.
    for read in reads(16).await {
        assert!(read.unwrap().is_none());
    }
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        r#"ALTER TABLE idempotency_keys ALTER COLUMN created_at TYPE text COLLATE "POSIX""#,
    )
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let refused = store.idempotency_key(&[7; 32], &[7; 32]).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "the first read on an older connection is refused, as a retry: {refused:?}"
    );
    for _ in 0..3 {
        for read in reads(16).await {
            assert!(
                read.unwrap().is_none(),
                "an older connection was used again"
            );
        }
    }
}

#[tokio::test]
async fn a_server_that_acknowledges_before_disk_is_refused_unless_allowed() {
    if postgres_server().is_none() {
        return skipped(
            "multi::a_server_that_acknowledges_before_disk",
            "PostgreSQL only",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path()).await;
    let name = db
        .url
        .split('/')
        .nth(3)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let out = migrate(&db.url, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synchronous_commit=off"), "{err}");
    assert!(err.contains("--allow-unsafe-durability"), "{err}");
    // A configuration file's `true` is overridden by an explicit false,
    // from the flag or the variable (flag, then variable, then file).
    let config = dir.path().join("checkoutd.toml");
    std::fs::write(&config, "allow_unsafe_durability = true\n").unwrap();
    let config = config.to_str().unwrap();
    let out = migrate(
        &db.url,
        &["--config", config, "--allow-unsafe-durability=false"],
    );
    assert!(!out.status.success(), "the flag's false is kept");
    // Refused for that reason, not a flag or file it could not read.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synchronous_commit=off"), "{err}");
    let out = migrate_with(
        &db.url,
        &["--config", config],
        &[("CHECKOUTD_ALLOW_UNSAFE_DURABILITY", "false")],
    );
    assert!(!out.status.success(), "the variable's false is kept");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synchronous_commit=off"), "{err}");
    assert_succeeded(&migrate(&db.url, &["--config", config]));
    let out = migrate(&db.url, &["--allow-unsafe-durability"]);
    assert_succeeded(&out);
}

#[tokio::test]
async fn a_database_that_cannot_hold_every_script_is_refused() {
    let Some(server) = postgres_server() else {
        return skipped(
            "multi::a_database_that_cannot_hold_every_script",
            "PostgreSQL only",
        );
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let admin = sqlx::PgPool::connect(&server).await.unwrap();
    let mut migrated = Vec::new();
    // SQL_ASCII stores the connection's UTF-8 byte for byte: accepted.
    for encoding in ["LATIN1", "SQL_ASCII"] {
        let name = format!("checkoutd_test_{}_{nanos:x}", encoding.to_lowercase());
        sqlx::query(&format!(
            "CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0"
        ))
        .execute(&admin)
        .await
        .unwrap();
        migrated.push(migrate(&with_database(&server, &name), &[]));
        sqlx::query(&format!("DROP DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    let latin1 = &migrated[0];
    assert!(!latin1.status.success());
    let err = String::from_utf8_lossy(&latin1.stderr);
    assert!(err.contains("encoding is LATIN1, not UTF8"), "{err}");
    assert!(err.contains("ENCODING 'UTF8'"), "{err}");
    assert_succeeded(&migrated[1]);
}

/// A process that starts while another migrates waits for it as long as
/// it takes — not the serving 10-s lock limit — then finds nothing left to
/// do; migrations run without the serving statement limit.
#[tokio::test]
async fn a_start_during_another_process_s_migration_waits_for_it() {
    if postgres_server().is_none() {
        return skipped(
            "multi::a_start_during_another_process_s_migration_waits_for_it",
            "PostgreSQL only",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path()).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Another process migrating, for 11 s.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)::text")
        .bind(checkoutd::store::postgres::LOCK_MIGRATIONS)
        .execute(&mut *other)
        .await
        .unwrap();
    let url = db.url.clone();
    let migrating = tokio::task::spawn_blocking(move || migrate(&url, &[]));
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(checkoutd::store::postgres::LOCK_MIGRATIONS)
        .execute(&mut *other)
        .await
        .unwrap();
    let out = migrating.await.unwrap();
    assert_succeeded(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another process is migrating"),
        "it said why it waited"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(applied >= 15, "{applied}");
    drop(other);
    pool.close().await;
}

/// On PostgreSQL the audit report's whole-table queries (consent figures,
/// totals, the anti-joins) run in read-only sessions with a half-hour
/// statement limit instead of the serving 20 s, which they would outlast
/// on a large database at every report run; serving sessions keep theirs.
#[tokio::test]
async fn the_reports_whole_table_reads_are_not_cut_at_the_serving_limit() {
    if postgres_server().is_none() {
        return skipped(
            "multi::the_reports_whole_table_reads_are_not_cut_at_the_serving_limit",
            "PostgreSQL only",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path()).await;
    let url = checkoutd::config::DatabaseUrl::parse(&db.url).unwrap();
    let store = checkoutd::store::open_sql(&url).await.unwrap();
    let setting = |pool: sqlx::AnyPool, name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SELECT current_setting('{name}')"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(
        setting(store.pool().clone(), "statement_timeout").await,
        "20s"
    );
    let long = store.whole_table_pool().clone();
    assert_eq!(setting(long.clone(), "statement_timeout").await, "30min");
    assert_eq!(setting(long.clone(), "transaction_read_only").await, "on");
    assert_eq!(setting(long, "lock_timeout").await, "10s");
    // And the report runs through them.
    let stats = checkoutd::store::Store::consent_stats(&store)
        .await
        .unwrap();
    assert_eq!(stats.customers, 0);
    checkoutd::store::Store::close(&store).await;
}

/// A PostgreSQL front that answers the client's SSLRequest, speaks TLS with
/// a server certificate of its own CA (`pki`), and forwards the decrypted
/// protocol to the real server: enough to prove that checkoutd verifies the
/// server (`sslmode=verify-full` with `sslrootcert`), without reconfiguring
/// the machine's PostgreSQL.
async fn tls_front(target: SocketAddr, pki_dir: &std::path::Path) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = CertificateDer::pem_file_iter(pki_dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki_dir.join("server-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // SSLRequest: length 8, code 80877103.
                let mut request = [0u8; 8];
                if client.read_exact(&mut request).await.is_err()
                    || request != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
                {
                    return; // plaintext is refused: the connection closes
                }
                if client.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn postgres_over_tls_is_verified_against_the_configured_ca() {
    let Some(server) = postgres_server() else {
        return skipped("multi::postgres_over_tls", "PostgreSQL only");
    };
    let pki_dir = tempfile::tempdir().unwrap();
    checkoutd::pki::DevPki::generate()
        .unwrap()
        .write_to(pki_dir.path())
        .unwrap();
    let front = tls_front(postgres_addr(&server).await, pki_dir.path()).await;
    let ca = pki_dir.path().join("ca.pem");
    let tls_url = move |url: &str, ca: &std::path::Path| {
        let url = with_authority(url, front).replace("127.0.0.1", "localhost");
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sslmode=verify-full&sslrootcert={}", ca.display())
    };

    // Orders stored over the verified connection.
    let url_ca = ca.clone();
    let app = spawn_app_with(Options {
        database_url: Some(Box::new(move |url| tls_url(url, &url_ca))),
        ..Options::default()
    })
    .await;
    let id = order(&app, "tls-1").await;
    assert_eq!(card_version(&app, &id).await, 1);

    // A server whose certificate the configured CA did not issue is refused.
    let other = tempfile::tempdir().unwrap();
    checkoutd::pki::DevPki::generate()
        .unwrap()
        .write_to(other.path())
        .unwrap();
    let out = migrate(
        &tls_url(&app.database.url, &other.path().join("ca.pem")),
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("@localhost:"), "names the database: {err}");
    assert!(err.contains("certificate"), "{err}");
}
