//! Abuse limits, over real TLS: slowloris, floods beyond the caps, oversized
//! headers, HTTP/2 rapid reset and stream floods, request smuggling, log
//! injection, and card numbers typed into personal fields.

use std::sync::Arc;
use std::time::{Duration, Instant};

use checkoutd::cli::ServeArgs;
use checkoutd::server::identity::Role;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    HeldRoute, Options, PATIENCE, TestApp, Versions, expect_problem, rustls_client_config,
    spawn_app, spawn_app_with,
};
use crate::orders::order_json;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection offering only `alpn`; `None` if the server closed it.
async fn connect(app: &TestApp, role: Option<Role>, alpn: &[u8]) -> Option<Tls> {
    connect_from(app, "127.0.0.1", role, alpn).await
}

/// As [`connect`], from the local address `source`.
async fn connect_from(app: &TestApp, source: &str, role: Option<Role>, alpn: &[u8]) -> Option<Tls> {
    let cert = role.map(|r| app.pki.client(r).unwrap());
    let mut config = rustls_client_config(
        &app.pki,
        cert.as_ref()
            .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        Versions::Both,
    );
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket
        .bind(std::net::SocketAddr::new(source.parse().unwrap(), 0))
        .ok()?;
    let tcp = socket.connect(app.addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()
}

/// Everything the server sends until it closes (or `within` passes).
async fn read_until_closed(stream: &mut Tls, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn order_count(app: &TestApp) -> i64 {
    let db = app.db().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap()
}

/// A fresh client (its own connection).
fn fresh(app: &TestApp) -> reqwest::Client {
    app.anonymous()
}

/// A client connecting from `source` (another loopback address), with the
/// certificate of `role` if given.
fn from_address(app: &TestApp, source: &str, role: Option<Role>) -> reqwest::Client {
    let cert = role.map(|r| app.pki.client(r).unwrap());
    let config = rustls_client_config(
        &app.pki,
        cert.as_ref()
            .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
        Versions::Both,
    );
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

// ---- 1. slowloris ----

/// One address opens at most `--max-handshakes-per-ip` connections a
/// second: beyond, its connection is closed before the handshake (counted
/// as refused, `handshake_rate`); another address is not held back, and
/// the next second the first may connect again.
#[tokio::test]
async fn connections_beyond_the_handshake_rate_are_closed_before_their_handshake() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_handshakes_per_ip: Some(5),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let refused_before = refused_for(&app, "handshake_rate").await;
    let mut held = Vec::new();
    // The windows are one second from a client's first connection: a burst
    // that took longer than that (a stalled machine) proves nothing, so it
    // is tried again.
    let mut proved = false;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = Instant::now();
        let mut admitted = 0;
        for _ in 0..5 {
            if let Some(tls) = connect_from(&app, "127.0.0.5", Some(Role::Storefront), b"h2").await
            {
                admitted += 1;
                held.push(tls);
            }
        }
        let sixth = connect_from(&app, "127.0.0.5", Some(Role::Storefront), b"h2").await;
        let other = connect_from(&app, "127.0.0.6", Some(Role::Storefront), b"h2").await;
        if started.elapsed() >= Duration::from_millis(900) {
            held.clear();
            continue;
        }
        assert_eq!(admitted, 5, "the first five of the second are served");
        assert!(
            sixth.is_none(),
            "the sixth in a second is closed before its handshake"
        );
        assert!(other.is_some(), "another address is not held back");
        proved = true;
        break;
    }
    assert!(proved, "three bursts each took a second or more");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        connect_from(&app, "127.0.0.5", Some(Role::Storefront), b"h2")
            .await
            .is_some(),
        "the next second it connects again"
    );
    assert!(
        refused_for(&app, "handshake_rate").await > refused_before,
        "the refusal is counted"
    );
    // The network (127.0.0.0/24) opens five times an address's budget:
    // neighbours flooding it keep a newcomer out, not an address that
    // connected with a valid client certificate (127.0.0.6, above).
    let mut proved = false;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = Instant::now();
        let mut neighbours = Vec::new();
        for n in 30..35 {
            for _ in 0..5 {
                neighbours.extend(connect_from(&app, &format!("127.0.0.{n}"), None, b"h2").await);
            }
        }
        let newcomer = connect_from(&app, "127.0.0.35", None, b"h2").await;
        let storefront = connect_from(&app, "127.0.0.6", Some(Role::Storefront), b"h2").await;
        if started.elapsed() >= Duration::from_millis(900) {
            continue;
        }
        assert_eq!(neighbours.len(), 25, "the network's budget");
        assert!(newcomer.is_none(), "a newcomer past the network's budget");
        assert!(
            storefront.is_some(),
            "a certified address is not held back by its network"
        );
        proved = true;
        break;
    }
    assert!(proved, "three floods each took a second or more");
}

/// `checkoutd_connections_refused_total` for `reason` (0 if not yet seen).
async fn refused_for(app: &TestApp, reason: &str) -> u64 {
    let prefix = format!("checkoutd_connections_refused_total{{reason=\"{reason}\"}} ");
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn connections_dribbling_headers_do_not_keep_a_real_client_out() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_connections: Some(8),
            max_connections_per_ip: Some(4),
            header_read_timeout: Some("30s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let app = Arc::new(app);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 24 attackers (from 127.0.0.1) for 8 slots, each dribbling a request
    // head one byte every 100 ms and reconnecting at once whenever it is
    // dropped. They may hold 4 slots (the per-address cap): at the cap, each
    // newcomer of theirs sheds their own longest-idle connection.
    let mut attackers = Vec::new();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..24 {
        let app = app.clone();
        let stop = stop.clone();
        let opened = opened.clone();
        let role = [None, Some(Role::Storefront)][i % 2];
        attackers.push(tokio::spawn(async move {
            let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(mut s) = connect(&app, role, b"http/1.1").await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for b in head.iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || s.write_all(&[*b]).await.is_err()
                        || s.flush().await.is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    // The attack is under way: the attackers have opened as many
    // connections as there are slots.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while opened.load(std::sync::atomic::Ordering::Relaxed) < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attackers never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Real clients (other addresses) still get in, promptly, again and
    // again (anonymous and certified): within 10 s, where waiting for a
    // dribbling connection to be dropped would take its whole
    // header_read_timeout (30 s).
    for round in 0..6 {
        let started = Instant::now();
        let client = if round % 2 == 0 {
            from_address(&app, "127.0.0.2", None)
        } else {
            from_address(&app, "127.0.0.3", Some(Role::Fulfillment))
        };
        let path = if round % 2 == 0 {
            "/healthz"
        } else {
            "/v1/shipments"
        };
        let response =
            tokio::time::timeout(Duration::from_secs(15), client.get(app.url(path)).send())
                .await
                .expect("a real client is served within 15 s")
                .unwrap();
        assert_eq!(response.status(), 200, "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round}: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The attack was real: attackers were dropped and came back — shed
    // by their own newcomers at their address's cap, or answered 503 and
    // closed (within `OVERFLOW_TIME`) when all of theirs were too fresh to
    // shed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while opened.load(std::sync::atomic::Ordering::Relaxed) <= 24 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attackers were never dropped and reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
}

/// A burst of connections from one address gets exactly its cap of slots,
/// however fast they arrive. (Counted only once each connection's task ran,
/// a burst all passed the per-address check: one address could take every
/// slot.) Twelve connections from 127.0.0.1 at once, each holding a request
/// in a handler: four get in, eight are answered 503, and another address
/// still finds free slots.
#[tokio::test]
async fn a_burst_from_one_address_gets_no_more_than_its_cap() {
    let held = HeldRoute::default();
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_connections: Some(8),
            max_connections_per_ip: Some(4),
            ..Default::default()
        },
        extra_routes: Some(held.router("/slow", "done")),
        ..Default::default()
    })
    .await;
    let app = Arc::new(app);
    let refused = Arc::new(tokio::sync::Semaphore::new(0));
    let mut burst = Vec::new();
    for _ in 0..12 {
        let (client, url, refused) = (fresh(&app), app.url("/slow"), refused.clone());
        burst.push(tokio::spawn(async move {
            // 0: no answer (a request held past the client's timeout).
            let status = client
                .get(url)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            if status == 503 {
                refused.add_permits(1);
            }
            status
        }));
    }
    held.wait_entered(4).await;
    let eight = tokio::time::timeout(PATIENCE, refused.acquire_many(8)).await;
    assert!(eight.is_ok(), "eight of the burst were answered 503");
    assert_eq!(held.entered(), 4, "one address held more than its cap");
    // The other address's slots are there.
    let other = from_address(&app, "127.0.0.2", None);
    let r = tokio::time::timeout(PATIENCE, other.get(app.url("/healthz")).send())
        .await
        .expect("another address is served")
        .unwrap();
    assert_eq!(r.status(), 200);
    held.release();
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        8,
        "{statuses:?}"
    );
}

// ---- 2. overload ----

/// How fast an overload answer must come. The slow requests that fill the
/// caps are held in their handlers until the test releases them, so an
/// answer that waited for capacity would never come before the release:
/// a bound this wide still tells "answered at once" from "queued", on
/// however loaded a machine.
const FAST: Duration = Duration::from_secs(5);

fn assert_overloaded_fast(status: u16, retry_after: Option<&str>, elapsed: Duration) {
    assert_eq!(status, 503);
    assert_eq!(retry_after, Some("1"));
    assert!(elapsed < FAST, "answered in {elapsed:?}");
}

type Pending = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// A server with `serve`'s limits and a held `/slow` route, and `n`
/// anonymous requests to it, each on its own connection, all inside the
/// handler (and staying there until `held.release()`).
async fn with_held_requests(
    serve: ServeArgs,
    held: &HeldRoute,
    n: usize,
) -> (Arc<TestApp>, Vec<Pending>) {
    let app = spawn_app_with(Options {
        serve,
        extra_routes: Some(held.router("/slow", "done")),
        ..Default::default()
    })
    .await;
    let app = Arc::new(app);
    let mut slow = Vec::new();
    // Each from a network of its own (127.9.i/24): one network holds at
    // most an eighth of the anonymous in-flight cap.
    for i in 0..n {
        let client = from_address(&app, &format!("127.9.{i}.2"), None);
        let url = app.url("/slow");
        slow.push(tokio::spawn(async move { client.get(url).send().await }));
    }
    held.wait_entered(n).await;
    (app, slow)
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_get_a_fast_503_and_capacity_returns() {
    let held = HeldRoute::default();
    let serve = ServeArgs {
        max_requests_in_flight: Some(2),
        ..Default::default()
    };
    // Both slow requests are in their handlers, and stay there: the cap is
    // taken.
    let (app, slow) = with_held_requests(serve, &held, 2).await;
    let client = fresh(&app);
    let flood = (0..40).map(|_| {
        let (client, url) = (client.clone(), app.url("/healthz"));
        async move {
            let started = Instant::now();
            let r = tokio::time::timeout(FAST, client.get(url).send())
                .await
                .expect("answered at once, not queued behind the cap")
                .unwrap();
            (r, started.elapsed())
        }
    });
    for (r, elapsed) in futures_util::future::join_all(flood).await {
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_overloaded_fast(r.status().as_u16(), retry.as_deref(), elapsed);
        assert!(r.headers().contains_key("strict-transport-security"));
        let body = expect_problem(r, 503).await;
        assert_eq!(body["type"], "urn:checkoutd:problem:unavailable");
    }
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "every 503 came while the slow requests were in flight"
    );
    held.release();
    for s in slow {
        let r = s.await.unwrap().unwrap();
        assert_eq!(r.status(), 200, "the slow ones finish");
        assert_eq!(r.text().await.unwrap(), "done");
    }
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "capacity returns");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_a_fast_503_when_none_is_idle() {
    let held = HeldRoute::default();
    let serve = ServeArgs {
        max_connections: Some(3),
        ..Default::default()
    };
    // Three connections, each with a request in flight: nothing to shed.
    let (app, slow) = with_held_requests(serve, &held, 3).await;
    let flood = (0..20).map(|i| {
        let app = app.clone();
        async move {
            let started = Instant::now();
            let result = if i % 2 == 0 {
                fresh(&app)
                    .get(app.url("/healthz"))
                    .send()
                    .await
                    .map_err(|_| ())
            } else {
                // HTTP/1.1 only, read raw.
                let mut s = connect(&app, None, b"http/1.1").await.ok_or(())?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .await
                    .map_err(|_| ())?;
                let (bytes, closed) = read_until_closed(&mut s, FAST).await;
                let text = String::from_utf8_lossy(&bytes).to_lowercase();
                assert!(closed, "the overload answer closes the connection");
                assert_eq!(status_of(&bytes), 503, "{text}");
                assert!(text.contains("retry-after: 1"), "{text}");
                assert!(
                    text.contains("content-type: application/problem+json"),
                    "{text}"
                );
                assert!(text.contains("strict-transport-security"), "{text}");
                return Ok((None, started.elapsed()));
            };
            result.map(|r| (Some(r), started.elapsed()))
        }
    });
    let mut answered = 0;
    for outcome in futures_util::future::join_all(flood).await {
        // Beyond the overflow responders a connection may be closed
        // unanswered; here (20 < 64) every one is answered.
        let (response, elapsed) = outcome.expect("answered, not dropped");
        answered += 1;
        assert!(elapsed < FAST, "answered in {elapsed:?}");
        if let Some(r) = response {
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_overloaded_fast(r.status().as_u16(), retry.as_deref(), elapsed);
            expect_problem(r, 503).await;
        }
    }
    assert_eq!(answered, 20);
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "every 503 came while the slow requests were in flight"
    );
    held.release();
    for s in slow {
        let r = s.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "done");
    }
    // As the answers said: retry after a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = fresh(&app).get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "capacity returns");
}

#[tokio::test]
async fn a_full_commit_queue_answers_503_at_once_and_stores_nothing_extra() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            commit_queue: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let app = Arc::new(app);
    // Hold the database's write lock, so the writer blocks on its first
    // batch and the queue (depth 1) fills.
    let db = app.db().await;
    let mut lock = db.begin().await.unwrap();
    if app.database.is_postgres() {
        sqlx::query("LOCK TABLE orders IN EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .unwrap();
    } else {
        // A write takes SQLite's one writer lock until the transaction ends.
        sqlx::query("CREATE TABLE abuse_lock (x INTEGER)")
            .execute(&mut *lock)
            .await
            .unwrap();
    }
    // Eight orders at once. One is in the writer's batch, blocked on the
    // lock; the queue (depth 1) holds one more; the other six are refused.
    const ORDERS: usize = 8;
    const WAITING: usize = 2;
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..ORDERS {
        let (app, answers) = (app.clone(), answers.clone());
        tokio::spawn(async move {
            let mut order = order_json();
            order["storefront_order_ref"] = json!(format!("Q-{i}"));
            let r = app.post_order(&format!("queue-{i}"), &order).await;
            let _ = answers.send((r, Instant::now()));
        });
    }
    drop(answers);
    // While the lock is held, the refused ones are answered: wait for them
    // (a refusal that waited for the queue would never come while the lock
    // is held; the wait ends well before the writer's 10-s commit timeout).
    let mut responses = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while responses.len() < ORDERS - WAITING {
        match tokio::time::timeout_at(deadline, answered.recv()).await {
            Ok(Some(answer)) => responses.push(answer),
            Ok(None) => panic!("an order task failed"),
            Err(_) => break,
        }
    }
    let releasing = Instant::now();
    lock.rollback().await.unwrap();
    while let Some(answer) = answered.recv().await {
        responses.push(answer);
    }
    assert_eq!(responses.len(), ORDERS);
    let mut created = 0;
    let mut refused = 0;
    for (r, arrived) in responses {
        match r.status().as_u16() {
            201 => {
                created += 1;
                assert!(arrived > releasing, "created only once the lock is gone");
            }
            503 => {
                refused += 1;
                assert!(
                    arrived < releasing,
                    "refused at once, while the lock was still held ({:?} after it was released)",
                    arrived - releasing
                );
                assert_eq!(r.headers()["retry-after"], "1");
                expect_problem(r, 503).await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 1, "a full queue refuses");
    assert!(
        created >= 1,
        "the queued orders commit once the lock is gone"
    );
    assert_eq!(order_count(&app).await, created);
    // A refused order's key was not claimed: a retry commits it.
    let mut order = order_json();
    order["storefront_order_ref"] = json!("Q-retry");
    let retry = app.post_order("queue-retry", &order).await;
    assert_eq!(retry.status(), 201);
}

// ---- 3. oversized headers ----

#[tokio::test]
async fn oversized_headers_get_431() {
    let app = spawn_app().await;
    // HTTP/1.1, our own limit (16 KiB): a problem document.
    let mut s = connect(&app, None, b"http/1.1").await.unwrap();
    let big = "a".repeat(20 * 1024);
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    assert_eq!(status_of(&bytes), 431, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("headers-too-large"), "{text}");
    assert!(closed);
    // Too many fields.
    let mut s = connect(&app, None, b"http/1.1").await.unwrap();
    let fields: String = (0..80).map(|i| format!("X-F{i}: v\r\n")).collect();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n").as_bytes())
        .await
        .unwrap();
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&bytes), 431);
    assert!(String::from_utf8_lossy(&bytes).contains("application/problem+json"));
    // Beyond hyper's 64 KiB read buffer: hyper's own bare 431.
    let mut s = connect(&app, None, b"http/1.1").await.unwrap();
    let huge = "a".repeat(80 * 1024);
    let _ = s
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
        )
        .await;
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        status_of(&bytes),
        431,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(closed);
    // HTTP/2 (reqwest negotiates h2): a problem document too.
    let r = app
        .anonymous()
        .get(app.url("/healthz"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = expect_problem(r, 431).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:headers-too-large");
    // Up to HTTP/2's own limit (a 64 KiB header list) it is still ours.
    let r = app
        .anonymous()
        .get(app.url("/healthz"))
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    let body = expect_problem(r, 431).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:headers-too-large");
    // The server still serves.
    let r = app
        .anonymous()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- 4. HTTP/2 rapid reset and stream floods ----

/// Opens streams (`POST path`, body never sent) and resets each one — if
/// `handler` is given, only once the stream's handler has started (the
/// handler counts itself in there) — until the server closes the
/// connection: how many streams that took, and the GOAWAY reason if one
/// came.
async fn reset_until_closed(
    app: &TestApp,
    path: &str,
    handler: Option<&HeldRoute>,
) -> (u32, Option<h2::Reason>) {
    let tls = connect(app, Some(Role::Storefront), b"h2").await.unwrap();
    let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    let started = Instant::now();
    let mut cycles = 0u32;
    let error = loop {
        assert!(
            // (Each cycle waits for its handler when `handler` is given: on
            // a loaded machine that takes a while.)
            cycles < 5000 && started.elapsed() < 2 * PATIENCE,
            "the server never closed the connection ({cycles} resets)"
        );
        client = match tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => break Some(e),
            Err(_) => break None,
        };
        let request = http::Request::post(app.url(path))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("rr-{cycles}"))
            .body(())
            .unwrap();
        let (mut response, mut stream) = match client.send_request(request, false) {
            Ok(pair) => pair,
            Err(e) => break Some(e),
        };
        if let Some(handler) = handler {
            // This stream's handler is the (cycles + 1)th to start; or the
            // server refuses the stream (it is closing the connection).
            let target = cycles as usize + 1;
            let mut entries = handler.entries();
            tokio::select! {
                reached = entries.wait_for(|n| *n >= target) => {
                    reached.unwrap();
                }
                answer = &mut response => match answer {
                    Err(e) => break Some(e),
                    Ok(r) => panic!("stream {cycles} was answered {}", r.status()),
                },
                () = tokio::time::sleep(PATIENCE) => {
                    panic!("the handler of stream {cycles} never started")
                }
            }
        }
        stream.send_reset(h2::Reason::CANCEL);
        cycles += 1;
        if cycles.is_multiple_of(16) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the connection ended");
    (cycles, error.and_then(|e| e.reason()))
}

#[tokio::test]
async fn http2_rapid_reset_is_answered_goaway_and_others_are_served() {
    // Never released: each request is reset while in its handler.
    let slow = HeldRoute::default();
    let app = spawn_app_with(Options {
        extra_routes: Some(slow.router("/slow", "done")),
        ..Default::default()
    })
    .await;
    // Back-to-back HEADERS + RST_STREAM: h2's pending-accept limit (32).
    let (cycles, reason) = reset_until_closed(&app, "/v1/orders", None).await;
    assert!(cycles <= 1000, "closed after {cycles} resets");
    // Usually h2's GOAWAY ENHANCE_YOUR_CALM; on a loaded machine more
    // streams get accepted before their reset, and our abandon rule's
    // GOAWAY NO_ERROR may come first, or the close may reach the client
    // before the GOAWAY is read (no reason). Either way: bounded, closed.
    assert!(
        matches!(
            reason,
            None | Some(h2::Reason::ENHANCE_YOUR_CALM | h2::Reason::NO_ERROR)
        ),
        "{reason:?}"
    );
    // Resets that wait until a handler is at work (one that does not read
    // the body, so the reset cancels it rather than failing its read): our
    // abandon rule (more than 100 abandoned, more abandoned than completed)
    // sends GOAWAY and closes.
    let (cycles, reason) = reset_until_closed(&app, "/slow", Some(&slow)).await;
    assert!(
        (100..=300).contains(&cycles),
        "closed after {cycles} resets"
    );
    assert!(
        matches!(reason, None | Some(h2::Reason::NO_ERROR)),
        "{reason:?}"
    );
    // Each abandoned request still left its access-log line (status 499,
    // never sent): a flood of resets leaves a trace.
    let abandoned = crate::helpers::captured_logs()
        .lines()
        .filter(|l| l.contains(r#""route":"/slow""#) && l.contains(r#""status":499"#))
        .count();
    assert!(abandoned >= 100, "{abandoned} abandoned requests logged");
    // Nothing was stored, and others are served.
    assert_eq!(order_count(&app).await, 0);
    let r = app.post_order("after-reset", &order_json()).await;
    assert_eq!(r.status(), 201);
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block of literal fields (no indexing, no Huffman).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

#[tokio::test]
async fn http2_streams_beyond_the_limit_are_refused() {
    let app = spawn_app().await;
    let mut s = connect(&app, Some(Role::Storefront), b"h2").await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    // Read the server's SETTINGS and acknowledge them, so its limits apply.
    let mut header = [0u8; 9];
    let mut advertised = None;
    loop {
        s.read_exact(&mut header).await.unwrap();
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        if header[3] == 4 && header[4] & 1 == 0 {
            for setting in payload.chunks(6) {
                if u16::from_be_bytes([setting[0], setting[1]]) == 3 {
                    advertised = Some(u32::from_be_bytes([
                        setting[2], setting[3], setting[4], setting[5],
                    ]));
                }
            }
            s.write_all(&frame(4, 1, 0, &[])).await.unwrap();
            break;
        }
    }
    assert_eq!(advertised, Some(64), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // 100 requests whose bodies never come: each stays open.
    let block = hpack(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/v1/orders"),
        (":authority", "localhost"),
        ("content-type", "application/json"),
    ]);
    let mut burst = Vec::new();
    for i in 0..100u32 {
        burst.extend(frame(1, 0x4, 2 * i + 1, &block)); // HEADERS, END_HEADERS
    }
    s.write_all(&burst).await.unwrap();
    let mut refused = 0;
    let mut goaway = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while refused < 36 && !goaway {
        match tokio::time::timeout_at(deadline, s.read_exact(&mut header)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            break;
        }
        match header[3] {
            3 if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) == 7 => {
                refused += 1
            }
            7 => goaway = true,
            _ => {}
        }
    }
    assert!(
        refused >= 36 || goaway,
        "streams beyond 64 are refused (REFUSED_STREAM) or the connection is closed: {refused} refused"
    );
    drop(s);
    assert_eq!(order_count(&app).await, 0);
    let r = app.post_order("after-streams", &order_json()).await;
    assert_eq!(r.status(), 201);
}

// ---- 5. request smuggling ----

#[tokio::test]
async fn smuggling_attempts_are_refused_and_the_smuggled_order_never_stored() {
    let app = spawn_app().await;
    let order = serde_json::to_string(&order_json()).unwrap();
    let smuggled = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nIdempotency-Key: smuggled\r\nContent-Length: {}\r\n\r\n{order}",
        order.len()
    );
    let chunked_then_smuggled = format!("0\r\n\r\n{smuggled}");
    let n = chunked_then_smuggled.len();
    let head = "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nIdempotency-Key: front\r\n";
    // (framing headers, body, whether our own problem document answers)
    let cases: Vec<(String, String, bool)> = vec![
        (
            format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n"),
            chunked_then_smuggled.clone(),
            true,
        ),
        (
            format!("Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n"),
            chunked_then_smuggled.clone(),
            true,
        ),
        // TE.CL: a front end that honours chunked sends the smuggled
        // request as the chunk; one that honours Content-Length stops early.
        (
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n".into(),
            format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len()),
            true,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n".into(),
            chunked_then_smuggled.clone(),
            true,
        ),
        (
            "Transfer-Encoding: CHUNKED\r\n".into(),
            chunked_then_smuggled.clone(),
            true,
        ),
        (
            "Transfer-Encoding:\tchunked\r\n".into(),
            chunked_then_smuggled.clone(),
            true,
        ),
        (
            format!("Content-Length: 5\r\nContent-Length: {n}\r\n"),
            chunked_then_smuggled.clone(),
            false,
        ),
        (
            format!("Transfer-Encoding: chunked, identity\r\nContent-Length: {n}\r\n"),
            chunked_then_smuggled.clone(),
            false,
        ),
        (
            "Transfer-Encoding: xchunked\r\n".into(),
            chunked_then_smuggled.clone(),
            false,
        ),
        (
            "Transfer-Encoding : chunked\r\n".into(),
            chunked_then_smuggled.clone(),
            false,
        ),
        (
            "X-Pad: a\r\n Transfer-Encoding: chunked\r\n".into(),
            chunked_then_smuggled.clone(),
            false,
        ),
        (
            format!("Content-Length: {n}\r\nTransfer-Encoding: identity\r\n"),
            chunked_then_smuggled.clone(),
            false,
        ),
    ];
    for (i, (framing, body, ours)) in cases.iter().enumerate() {
        let mut s = connect(&app, Some(Role::Storefront), b"http/1.1")
            .await
            .unwrap();
        let _ = s
            .write_all(format!("{head}{framing}\r\n{body}").as_bytes())
            .await;
        let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status_of(&bytes), 400, "case {i}: {text}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "case {i}: one answer only: {text}"
        );
        assert!(closed, "case {i}: the connection is closed");
        if *ours {
            assert!(
                text.contains("application/problem+json"),
                "case {i}: {text}"
            );
            assert!(text.contains("ambiguous-framing"), "case {i}: {text}");
        }
    }
    assert_eq!(order_count(&app).await, 0, "no smuggled order was stored");
    // The same order, sent plainly, is accepted (the attack was the framing).
    let r = app.post_order("plain", &order_json()).await;
    assert_eq!(r.status(), 201);
}

// ---- 6. log injection ----

#[tokio::test]
async fn control_characters_from_clients_never_reach_a_log_raw() {
    let app = spawn_app().await;
    let marker = "INJ7c1";
    let storefront = app.client(Role::Storefront);
    // JSON member names and values with CR, LF, ESC, BEL and C1 controls.
    let hostile = format!("{marker}\r\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m\u{7}\u{9b}");
    let mut order = order_json();
    order[hostile.as_str()] = json!(hostile);
    order["customer"]["name"] = json!(hostile);
    let _ = storefront
        .post(app.url("/v1/orders"))
        .header("idempotency-key", format!("{marker}-k\t1"))
        .header("user-agent", format!("{marker}\tagent"))
        .json(&order)
        .send()
        .await
        .unwrap();
    // A form with hostile field names and values.
    let _ = storefront
        .post(app.url("/v1/orders"))
        .header("idempotency-key", format!("{marker}-form"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "{marker}%0d%0aforged%1b%5b31m=1&customer.name={marker}%0a%1b"
        ))
        .send()
        .await
        .unwrap();
    // Paths and queries (percent-encoded controls), an extension method.
    for path in [
        format!("/v1/orders/{marker}%0d%0aforged%1b%5b31m"),
        format!("/v1/shipments?status={marker}%0d%0a%1b%5b31m&{marker}%0a=1"),
        format!("/nowhere/{marker}%1b%07"),
    ] {
        let _ = storefront.get(app.url(&path)).send().await.unwrap();
    }
    let _ = storefront
        .request(
            reqwest::Method::from_bytes(b"INJ7C1").unwrap(),
            app.url("/healthz"),
        )
        .send()
        .await
        .unwrap();
    // Raw HTTP/1 with obs-text (C1 bytes) in header values, and a raw ESC
    // in a header value (refused by the parser).
    for raw in [
        &b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: INJ7c1\x9b31m\x85\r\nX-Id: INJ7c1\xc2\x9b\r\nConnection: close\r\n\r\n"[..],
        &b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Id: INJ7c1\x1b[31m\r\nConnection: close\r\n\r\n"[..],
        &b"GET /heal\x1bthz HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
    ] {
        let mut s = connect(&app, Some(Role::Storefront), b"http/1.1").await.unwrap();
        let _ = s.write_all(raw).await;
        let _ = read_until_closed(&mut s, Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = crate::helpers::captured_logs();
    // One JSON object per line: nothing split a line. And no field holds
    // a control character once decoded: client text that reaches a field at
    // all was escaped first (`\\x1b`, `\\r`), not left for the JSON
    // writer to escape (`\\u001b`), which a text-format log would not do.
    fn controls(value: &Value) -> bool {
        match value {
            Value::String(s) => s.chars().any(|c| c.is_control() || c == '\u{2028}'),
            Value::Array(a) => a.iter().any(controls),
            Value::Object(o) => o
                .iter()
                .any(|(k, v)| k.chars().any(char::is_control) || controls(v)),
            _ => false,
        }
    }
    for line in logs.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("every log line is one whole event: {line:?}"));
        // (Only this test's lines: the log buffer is shared by all tests.)
        if event.to_string().to_lowercase().contains("inj7c1") {
            assert!(
                !controls(&event),
                "a control character reached a log field: {line}"
            );
        }
    }
    assert!(
        !logs.contains(['\x1b', '\x07', '\r', '\u{9b}', '\u{85}']),
        "a raw control character reached the logs"
    );
}

// ---- 7. card numbers in personal fields ----

#[tokio::test]
async fn a_card_number_typed_into_a_personal_field_is_refused_and_never_stored() {
    let app = spawn_app().await;
    let typed = [
        "5105 1051 0510 5100",
        "5105-1051-0510-5100",
        "5105105105105100",
        "Ada 5105 1051\n0510 5100",
        // With the expiry and CVC in the same run of digits.
        "5105.1051.0510.5100 12/27 123",
        "exp 12/27 5105 1051 0510 5100",
    ];
    let paths: &[&[&str]] = &[
        &["customer", "name"],
        &["customer", "company"],
        &["billing_address", "line1"],
        &["billing_address", "line2"],
        &["billing_address", "city"],
        &["billing_address", "region"],
        &["billing_address", "postal_code"],
        &["shipping_address", "line1"],
        &["gift_recipient", "name"],
        &["gift_recipient", "message"],
        &["gift_recipient", "address", "line1"],
        &["card", "holder_name"],
    ];
    for (n, path) in paths.iter().enumerate() {
        for (m, pan) in typed.iter().enumerate() {
            // A line break only where the field may hold one.
            if pan.contains('\n') && path.last() != Some(&"message") {
                continue;
            }
            let mut order = order_json();
            match path[0] {
                "shipping_address" => {
                    order["shipping_address"] = order["billing_address"].clone();
                }
                "gift_recipient" => {
                    order["gift_recipient"] = json!({
                        "name": "Grace Hopper",
                        "address": order["billing_address"].clone(),
                        "message": "Happy birthday",
                    });
                }
                _ => {}
            }
            set_at(&mut order, path, json!(pan));
            refused_as_card_number(&app, &format!("pan-{n}-{m}"), &order, path).await;
        }
    }
    // A plain order goes through, so the database has content to scan.
    let r = app.post_order("pan-ok", &order_json()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(order_count(&app).await, 1);
    never_stored(
        &app,
        &[
            "5105105105105100",
            "5105 1051",
            "5105-1051",
            "0510 5100",
            "5105.1051",
        ],
    )
    .await;
    let report = crate::audit::run_verify(&app).await;
    assert!(
        !report
            .failures
            .iter()
            .any(|f| f.what.contains("card number")),
        "{:#?}",
        report.failures
    );
    let logs = crate::helpers::captured_logs();
    assert!(!logs.contains("5105105105105100") && !logs.contains("5105 1051"));
}

#[tokio::test]
async fn a_card_number_in_a_clear_field_a_phone_or_an_email_is_refused_and_never_stored() {
    let app = spawn_app().await;
    let cases: &[(&[&str], &str)] = &[
        (&["storefront_order_ref"], "5105/1051/0510/5100"),
        (&["items", "0", "description"], "5105.1051.0510.5100"),
        (&["items", "0", "sku"], "5105 1051 0510 5100 123"),
        (&["customer", "phone"], "5105 1051 0510 5100"),
        (&["customer", "email"], "5105105105105100@example.com"),
        (&["gift_recipient", "phone"], "5105105105105100"),
        // After other digits, or in the email's domain: as typed into a name.
        (&["customer", "phone"], "+1 5105 1051 0510 5100"),
        (&["customer", "email"], "ada@5105105105105100.example"),
        (
            &["customer", "email"],
            "ada.1.5105.1051.0510.5100@example.com",
        ),
        // Grouped by `+`, dressed as a UUID, in superscript digits.
        (&["items", "0", "sku"], "5105+1051+0510+5100"),
        (
            &["storefront_order_ref"],
            "51051051-0510-5100-0000-000000000000",
        ),
        (&["items", "0", "description"], "⁵¹⁰⁵¹⁰⁵¹⁰⁵¹⁰⁵¹⁰⁰"),
        (&["customer", "email"], "5105+1051+0510+5100@example.com"),
        // Blank letters (Hangul fillers) between the groups look like
        // spaces: in a clear column, and in a personal detail.
        (
            &["items", "0", "description"],
            "5105\u{3164}1051\u{3164}0510\u{3164}5100",
        ),
        (
            &["customer", "name"],
            "Ada 5105\u{ffa0}1051\u{ffa0}0510\u{ffa0}5100",
        ),
    ];
    for (n, (path, pan)) in cases.iter().enumerate() {
        let mut order = order_json();
        if path[0] == "gift_recipient" {
            order["gift_recipient"] = json!({
                "name": "Grace Hopper",
                "address": order["billing_address"].clone(),
            });
        }
        set_at(&mut order, path, json!(pan));
        refused_as_card_number(&app, &format!("clear-pan-{n}"), &order, path).await;
    }
    assert_eq!(order_count(&app).await, 0);
    // Phone numbers and references that only look long are taken.
    let mut order = order_json();
    order["customer"]["phone"] = json!("+49 151 2345 6789");
    order["customer"]["email"] = json!("jo.smith.1980.2026@mail2.example.com");
    order["storefront_order_ref"] = json!("ORDER-2026-11-30-300001234564");
    let r = app.post_order("clear-pan-ok", &order).await;
    assert_eq!(r.status(), 201);
    // Real phones and emails whose digits pass the Luhn check but are no
    // card number (an international prefix without `+`, an extension, a
    // cloud host name, a dated alias).
    for (n, (phone, email)) in [
        (
            "0049 151 2345 6787",
            "ops@ec2-203-113-145-104.compute-1.amazonaws.com",
        ),
        ("415 555 2671 1233", "ana.1990.05.17.12348@example.com"),
        ("+1 949 555 0100 1201", "ada@example.com"),
    ]
    .iter()
    .enumerate()
    {
        let mut order = order_json();
        order["customer"]["phone"] = json!(phone);
        order["customer"]["email"] = json!(email);
        let r = app.post_order(&format!("clear-pan-real-{n}"), &order).await;
        assert_eq!(
            r.status(),
            201,
            "{phone} / {email}: {}",
            r.text().await.unwrap()
        );
    }
    // A barcode as the SKU (an EAN-13 that passes the Luhn check too) and
    // a phone number in a gift message are taken.
    let mut order = order_json();
    order["items"][0]["sku"] = json!("5901234123457");
    order["gift_recipient"] = json!({
        "name": "Grace Hopper",
        "address": order["billing_address"].clone(),
        "message": "Happy birthday! Ring me on +49 151 1234 5678",
    });
    let r = app.post_order("clear-pan-barcode", &order).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    never_stored(
        &app,
        &["5105105105105100", "5105 1051", "5105.1051", "5105/1051"],
    )
    .await;
}

/// Sets the value at `path` in `order` (object keys; array indices as
/// numbers).
fn set_at(order: &mut Value, path: &[&str], value: Value) {
    let mut target = order;
    for key in path {
        target = match key.parse::<usize>() {
            Ok(i) => &mut target[i],
            Err(_) => &mut target[*key],
        };
    }
    *target = value;
}

/// Posts `order`: refused 422, `looks_like_card_number` at `path`, the
/// value (a card number starting 5105) never echoed.
async fn refused_as_card_number(app: &TestApp, key: &str, order: &Value, path: &[&str]) {
    let r = app.post_order(key, order).await;
    let body = expect_problem(r, 422).await;
    let field = path.join(".");
    assert!(
        body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"] == field.as_str() && e["code"] == "looks_like_card_number"),
        "{field}: {body}"
    );
    assert!(
        !body.to_string().contains("5105"),
        "the value is never echoed"
    );
}

/// One client certificate holds at most half of the in-flight cap: a
/// warehouse certificate with slow requests (bodies dribbled in, say) does
/// not take every slot from the storefront.
#[tokio::test]
async fn one_certificate_cannot_take_the_whole_in_flight_cap() {
    let held = HeldRoute::default();
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_requests_in_flight: Some(4),
            ..Default::default()
        },
        extra_routes: Some(held.router("/slow", "done")),
        ..Default::default()
    })
    .await;
    let warehouse = app.client(Role::Fulfillment);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let (client, url) = (warehouse.clone(), app.url("/slow"));
        slow.push(tokio::spawn(async move { client.get(url).send().await }));
    }
    held.wait_entered(2).await;
    // Its half is taken: a third request of the same certificate is a
    // fast 503 …
    let started = Instant::now();
    let r = tokio::time::timeout(FAST, warehouse.get(app.url("/slow")).send())
        .await
        .expect("answered at once")
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_overloaded_fast(r.status().as_u16(), retry.as_deref(), started.elapsed());
    // … while the storefront, another certificate, is served.
    let r = app.post_order("cert-share-1", &order_json()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    held.release();
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    let r = warehouse.get(app.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 200, "its share returns");
}

#[tokio::test]
async fn anonymous_requests_cannot_take_the_in_flight_cap_from_the_storefront() {
    let held = HeldRoute::default();
    let serve = ServeArgs {
        max_requests_in_flight: Some(4),
        max_anonymous_requests_in_flight: Some(2),
        ..Default::default()
    };
    let (app, slow) = with_held_requests(serve, &held, 2).await;
    // The anonymous share is taken: another anonymous request is a fast 503…
    let started = Instant::now();
    let r = tokio::time::timeout(FAST, fresh(&app).get(app.url("/openapi.json")).send())
        .await
        .expect("answered at once")
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_overloaded_fast(r.status().as_u16(), retry.as_deref(), started.elapsed());
    // …but a load balancer's probes still pass (they only count against the
    // overall cap),
    for probe in ["/healthz", "/readyz"] {
        let r = fresh(&app).get(app.url(probe)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    // and the storefront still has the rest of the cap: an order goes
    // through, and so does a second request alongside it.
    let storefront = app.client(Role::Storefront);
    let r = storefront
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "anonymous-cap-1")
        .json(&order_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = storefront.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    held.release();
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status(), 200);
    }
    // Released, the anonymous share is free again.
    let r = fresh(&app).get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// One `POST /unsubscribe` over HTTP/2 without a certificate whose body is
/// `body`, then left open (`end` false) or ended; its status and page.
async fn unsubscribe_h2(app: &TestApp, body: &[u8], end: bool) -> (u16, String) {
    let tls = connect(app, None, b"h2").await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(app.url("/unsubscribe"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.reserve_capacity(body.len());
    stream
        .send_data(bytes::Bytes::copy_from_slice(body), end)
        .unwrap();
    let response = tokio::time::timeout(FAST, response)
        .await
        .expect("answered at once, without waiting for the rest of the body")
        .unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut page = Vec::new();
    while let Some(chunk) = tokio::time::timeout(FAST, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        page.extend_from_slice(&chunk);
    }
    driver.abort();
    (status, String::from_utf8_lossy(&page).into_owned())
}

#[tokio::test]
async fn the_public_unsubscribe_page_counts_its_limit_before_reading_a_body_and_reads_at_most_4_kib()
 {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            unsubscribe_rate_limit: Some(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // A body larger than 4 KiB, still being sent, is refused once 4 KiB are
    // in: 413 with the form, without waiting for the rest.
    let big = format!("email={}%40example.com", "a".repeat(5000));
    let (status, page) = unsubscribe_h2(&app, big.as_bytes(), false).await;
    assert_eq!(status, 413);
    assert!(
        page.contains("too large") && page.contains("<form"),
        "{page}"
    );
    // The limit's second request, with a whole body, is recorded.
    let (status, _) = unsubscribe_h2(&app, b"email=a%40example.com", true).await;
    assert_eq!(status, 200);
    // Over the limit, a request is answered 429 before its body is read: a
    // body that never ends gets its answer at once.
    let (status, page) = unsubscribe_h2(&app, b"email=", false).await;
    assert_eq!(status, 429);
    assert!(page.contains("try again"), "{page}");
}

/// None of `needles` is in any file of the database.
async fn never_stored(app: &TestApp, needles: &[&str]) {
    for (what, bytes) in app.database_bytes().await {
        let text = String::from_utf8_lossy(&bytes);
        for needle in needles {
            assert!(!text.contains(needle), "{needle} in the {what}");
        }
    }
}

#[tokio::test]
async fn responses_a_client_never_reads_do_not_hold_the_in_flight_cap() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_requests_in_flight: Some(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // An HTTP/2 client that opens no flow-control window: every response
    // is produced, and then can never be sent.
    let tls = connect(&app, None, b"h2").await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let mut stuck = Vec::new();
    for _ in 0..6 {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::get(app.url("/openapi.json"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        stuck.push(response);
    }
    for response in &mut stuck {
        let head = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.status(), 200, "every stuck request was handled");
    }
    // Their bodies are unsent, and still the cap of 2 is free for others.
    for _ in 0..3 {
        let r = app
            .anonymous()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(!driver.is_finished(), "the stuck connection is still open");
    driver.abort();
}

/// `path`, asked for on an HTTP/2 connection whose client opens `window`
/// bytes per stream, to a server whose idle timeout is 2 s: the server, the
/// response's head and body, and the connection's driver. With `ping`, the
/// client pings every 300 ms to look alive (the task is aborted with the
/// driver's end).
async fn response_on_a_window(
    path: &str,
    window: u32,
    ping: bool,
) -> (
    TestApp,
    http::Response<h2::RecvStream>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            idle_timeout: Some("2s".into()),
            request_timeout: Some("1s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let tls = connect(&app, None, b"h2").await.unwrap();
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    let driver = tokio::spawn(connection);
    if ping {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
                    return;
                }
            }
        });
    }
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(app.url(path)).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.status(), 200);
    (app, head, driver)
}

/// The OpenAPI document (larger than four response pieces) on a window:
/// see [`response_on_a_window`].
async fn large_response_on_a_window(
    window: u32,
    ping: bool,
) -> (
    TestApp,
    http::Response<h2::RecvStream>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let (app, head, driver) = response_on_a_window("/openapi.json", window, ping).await;
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 4 * checkoutd::server::RESPONSE_PIECE, "{length}");
    (app, head, driver)
}

/// A client that opens no HTTP/2 window and pings to look alive would hold
/// its responses in the server's memory for good: a response left unsent
/// for the idle timeout ends the connection.
#[tokio::test]
async fn a_client_that_never_takes_its_responses_is_disconnected() {
    let (_app, _head, driver) = large_response_on_a_window(0, true).await;
    // Pings keep the connection from being idle; the unsent body ends it.
    let closed = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(closed.is_ok(), "the connection was still open after 10 s");
}

/// A small response (one piece) on a one-byte window: HTTP/2 takes it whole
/// into its send buffer, out of the unsent check's sight, and the client's
/// pings keep the connection's I/O busy. No request for the idle timeout
/// ends it all the same.
#[tokio::test]
async fn a_client_that_only_pings_after_a_small_response_is_disconnected() {
    let (_app, _head, driver) = response_on_a_window("/unsubscribe", 1, true).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(closed.is_ok(), "the connection was still open after 10 s");
}

/// The same with a window of one byte: HTTP/2 takes a whole data frame
/// into its send buffer once any window is open, where the unsent check
/// cannot see it. Responses are handed over in pieces, so the rest stays
/// unsent, and the connection is ended as above.
#[tokio::test]
async fn a_client_that_opens_a_one_byte_window_is_disconnected() {
    let (_app, _head, driver) = large_response_on_a_window(1, true).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(closed.is_ok(), "the connection was still open after 10 s");
}

/// A client that reads a large response slowly, but reads it, is not cut
/// off by the unsent-response limit: each piece it takes restarts the
/// clock. Here the whole body takes about twice `--idle-timeout`.
#[tokio::test]
async fn a_client_reading_a_large_response_slowly_gets_all_of_it() {
    let piece = checkoutd::server::RESPONSE_PIECE;
    let (_app, head, driver) =
        large_response_on_a_window(u32::try_from(piece).unwrap(), false).await;
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // About 4 s in all, a piece at a time.
    let pause = Duration::from_millis(4_000 / length.div_ceil(piece) as u64);
    let started = Instant::now();
    let mut body = head.into_body();
    let mut got = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the body was cut off");
        got += chunk.len();
        tokio::time::sleep(pause).await;
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(got, length);
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!driver.is_finished(), "the connection is still open");
    driver.abort();
}

/// A client needs no certificate to be refused, and every refusal is a
/// synced row of an access log that is never trimmed: past
/// `DENIALS_LOGGED_PER_MINUTE` refusals from one address, refusals are
/// still answered 401 but only counted (a metric), not written — also those
/// of a certificate that names no role (as a revoked one's drain). Callers
/// of the right role are not affected, and a role's refusals outside its
/// row are all written (invariant 8: they name who to revoke).
#[tokio::test]
async fn a_flood_of_refused_requests_cannot_grow_the_access_log() {
    let app = spawn_app().await;
    let limit = checkoutd::routes::DENIALS_LOGGED_PER_MINUTE;
    let anonymous = app.anonymous();
    let unlogged = || async {
        crate::helpers::metric_value(&app.metrics().await, "checkoutd_denials_unlogged_total")
    };
    let unlogged_before = unlogged().await;
    let extra = 5;
    for _ in 0..limit + extra {
        let r = anonymous
            .get(app.url("/v1/shipments"))
            .send()
            .await
            .unwrap();
        expect_problem(r, 401).await;
    }
    // A caller of the right role from the same address is still served.
    app.shipments("").await;
    // A certificate of another role, from the same address, past the
    // limit: every refusal is written.
    let marketing = app.client(Role::Marketing);
    for _ in 0..extra {
        let r = marketing
            .get(app.url("/v1/shipments"))
            .send()
            .await
            .unwrap();
        expect_problem(r, 403).await;
    }
    // A certificate that names no role, from the same address: refused
    // 403, counted, not written.
    let roleless = app.pki.issue_client("roleless", &[]).unwrap();
    let roleless = crate::helpers::client_with(
        &app.pki,
        Some((&roleless.cert_pem, &roleless.key_pem)),
        crate::helpers::Versions::Both,
    );
    for _ in 0..extra {
        let r = roleless.get(app.url("/v1/shipments")).send().await.unwrap();
        expect_problem(r, 403).await;
    }

    let logged: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT CAST(status AS BIGINT), COUNT(*) FROM access_log
          WHERE action = 'GET /v1/shipments' AND outcome = 'denied'
          GROUP BY status ORDER BY 1",
    )
    .fetch_all(&app.db().await)
    .await
    .unwrap();
    assert_eq!(
        logged,
        vec![(401, i64::from(limit)), (403, i64::from(extra))],
        "the first anonymous refusals are logged, no more; every role's"
    );
    // The recorder is global to the test process: at least this test's
    // unlogged refusals were counted.
    let counted = unlogged().await - unlogged_before;
    assert!(counted >= f64::from(2 * extra), "{counted}");
}

/// The public opt-out page has a budget for all addresses together (100
/// times the per-address limit a minute) of the opt-outs it records: each
/// is a ledger row for ever, and addresses are cheap. Posts that record
/// nothing do not use it up. (Each address here in a /24 of its own: one
/// network has a smaller budget, below.)
#[tokio::test]
async fn the_public_unsubscribe_page_has_a_budget_for_all_addresses() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            unsubscribe_rate_limit: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Addresses of 127.1/16: no other test's (some find their own log
    // lines by their source address in 127.0.0/24).
    let post = |n: u32| {
        let client = from_address(&app, &format!("127.1.{n}.2"), None);
        let url = app.url("/unsubscribe");
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("email=person{n}%40example.com"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Posts that write nothing (no valid email) do not use the budget up.
    for n in 0..50 {
        let client = from_address(&app, &format!("127.2.0.{}", 2 + n), None);
        let status = client
            .post(app.url("/unsubscribe"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("email=")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 422);
    }
    for n in 0..100 {
        assert_eq!(post(n).await, 200, "address {n}");
    }
    assert_eq!(post(100).await, 429, "past the budget of all addresses");
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_events")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(rows, 100);
}

/// One network (an IPv4 /24 here; an IPv6 /48) records at most ten times
/// the per-address limit a minute: a flood from its many addresses cannot
/// use up the budget of all addresses and keep other customers from
/// opting out.
#[tokio::test]
async fn one_network_cannot_use_up_the_unsubscribe_budget_of_all() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            unsubscribe_rate_limit: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let post = |address: String, n: u32| {
        let client = from_address(&app, &address, None);
        let url = app.url("/unsubscribe");
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("email=someone{n}%40example.com"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Addresses of 127.4/16 (no other test's).
    for n in 0..10 {
        assert_eq!(post(format!("127.4.0.{}", 2 + n), n).await.0, 200, "{n}");
    }
    let (status, page) = post("127.4.0.100".into(), 10).await;
    assert_eq!(status, 429, "past the network's budget");
    assert!(page.contains("from your network"), "{page}");
    // Another network is not held back.
    assert_eq!(post("127.4.1.2".into(), 11).await.0, 200);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM consent_events")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(rows, 11);
}

/// A form body that never finishes arriving (nothing more after its first
/// byte): an opt-out post from `source` that holds its anonymous request
/// slot until the page gives up on it.
fn dribbled_unsubscribe(
    app: &TestApp,
    source: &str,
) -> tokio::task::JoinHandle<Option<(u16, String)>> {
    let client = from_address(app, source, None);
    let url = app.url("/unsubscribe");
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let body = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"e"))
        })
        .chain(futures_util::stream::pending());
        let r = client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
    })
}

/// The opt-out page waits 5 s for a form's body, not the request time
/// limit: a body dribbled slower holds an anonymous request slot no longer.
#[tokio::test]
async fn the_unsubscribe_page_waits_five_seconds_for_a_body() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            request_timeout: Some("25s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        dribbled_unsubscribe(&app, "127.7.0.2"),
    )
    .await
    .expect("answered before the request time limit")
    .unwrap();
    let (status, page) = answer.expect("an answer");
    assert_eq!(status, 408, "{page}");
    assert!(page.contains("took too long to arrive"), "{page}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// One network (an IPv4 /24 here) may hold an eighth of the anonymous
/// in-flight cap: a few of its addresses dribbling opt-out bodies do not
/// take the page from everybody else.
#[tokio::test]
async fn one_network_holds_at_most_an_eighth_of_the_anonymous_request_slots() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_anonymous_requests_in_flight: Some(16),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Addresses of 127.6/16 (no other test's). Its share: two.
    let held = [
        dribbled_unsubscribe(&app, "127.6.0.2"),
        dribbled_unsubscribe(&app, "127.6.0.3"),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let get = |source: &str| {
        let client = from_address(&app, source, None);
        let url = app.url("/unsubscribe");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("127.6.0.4").await, 503, "the network's share is taken");
    assert_eq!(get("127.6.1.2").await, 200, "another network's is not");
    for h in held {
        h.abort();
    }
}

/// At the anonymous cap, with every anonymous connection busy, a newcomer
/// is answered — 503 with `Retry-After` and the security headers — not
/// dropped without a word. A load balancer's probe of `/healthz` or
/// `/readyz` is answered as on any connection (the cap can be filled from
/// many addresses, none of them a hog to shed, and the instance must not be
/// pulled for it).
#[tokio::test]
async fn a_newcomer_past_the_anonymous_cap_is_told_to_come_back() {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_anonymous_connections: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // The only anonymous slot, busy: a request whose body never comes.
    let mut holder = crate::helpers::tls_connect_offering(&app, None, Some(&[b"http/1.1"])).await;
    holder
        .write_all(
            b"POST /unsubscribe HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail=",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .anonymous()
        .get(app.url("/unsubscribe"))
        .send()
        .await
        .expect("the newcomer was answered, not dropped");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().contains_key("strict-transport-security"));
    let p: Value = r.json().await.unwrap();
    assert!(p["type"].is_string(), "{p}");
    // Counted with the answers by status, though no route matched it.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("checkoutd_http_requests_total{")
                && l.contains("route=\"<overloaded>\"")
                && l.contains("status=\"503\"")),
        "{metrics}"
    );
    for probe in ["/healthz", "/readyz"] {
        let r = app
            .anonymous()
            .get(app.url(probe))
            .send()
            .await
            .expect("the probe was answered");
        assert_eq!(r.status(), 200, "{probe}");
        assert!(r.headers().contains_key("strict-transport-security"));
    }
    // The overload answer buffers no more of a request head than a
    // serving connection does (64 KiB): a 100 KiB head is refused by
    // hyper itself, not read whole to be answered 503.
    let mut big = crate::helpers::tls_connect_offering(&app, None, Some(&[b"http/1.1"])).await;
    let head = format!(
        "GET /unsubscribe HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.lines().next().unwrap_or_default()
    );
    drop(holder);
}

/// One address keeping every anonymous slot busy — each connection polling
/// faster than a connection may be shed for being idle — does not keep an
/// anonymous client of another address (a load balancer's probe, a person
/// on the opt-out page) out: the address holding the most gives way.
#[tokio::test]
async fn one_address_cannot_hold_every_anonymous_slot() {
    // From the hog's own address, no slot is made (nothing is idle long
    // enough to shed): the slots really are held.
    held_slots_give_way(&["127.0.0.2", "127.0.0.2"], "127.0.0.2", "127.0.0.3").await;
}

/// The opt-out page's budget of one network (an IPv4 /24): each address
/// within its own limit, the network's is used up. The first 429 of the
/// window is written to the access log (invariant 8: where the limit
/// began), the others are counted as unlogged refusals — as the
/// per-address limit's are.
#[tokio::test]
async fn the_opt_out_page_budget_of_a_network_is_logged_where_it_began() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        serve: ServeArgs {
            unsubscribe_rate_limit: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let post = |n: u8| {
        let client = from_address(&app, &format!("127.0.1.{n}"), None);
        let url = app.url("/unsubscribe");
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("email=someone%40example.com")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let network = checkoutd::routes::UNSUBSCRIBES_PER_NETWORK_PER_CLIENT_LIMIT;
    for n in 1..=u8::try_from(network).unwrap() {
        assert_eq!(
            post(n).await,
            200,
            "address {n}, within the network's budget"
        );
    }
    // (The refusals after the first are counted in
    // checkoutd_denials_unlogged_total, a counter of the whole test
    // process: other tests move it too, so it proves nothing here.)
    assert_eq!(post(101).await, 429, "the network's budget is used up");
    assert_eq!(post(102).await, 429);
    assert_eq!(post(103).await, 429);
    let logged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM access_log
          WHERE action = 'POST /unsubscribe' AND outcome = 'denied' AND status = 429",
    )
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    assert_eq!(logged, 1, "the first 429 of the window is logged; not each");
}

/// Every anonymous slot held by one network — each address of it with a
/// single connection, polling faster than a connection may be shed for
/// being idle, so no address is a hog — does not keep an anonymous client
/// of another network out of the opt-out page: the network holding the
/// most gives way (one IPv6 /48 holds 65 536 /64s, each its own client).
#[tokio::test]
async fn one_network_cannot_hold_every_anonymous_slot() {
    // From a third address of the same network, no slot is made: the
    // slots really are held, and no address of it is a hog.
    held_slots_give_way(&["127.0.3.2", "127.0.3.3"], "127.0.3.4", "127.0.4.9").await;
}

/// Two anonymous slots held by pollers from `hogs`: a newcomer from
/// `control` is told to come back (503), one from `newcomer` gets a slot.
/// Both ask for the opt-out page, not a probe (a probe is answered even
/// past the cap).
async fn held_slots_give_way(hogs: &[&str], control: &str, newcomer: &str) {
    let app = spawn_app_with(Options {
        serve: ServeArgs {
            max_anonymous_connections: Some(2),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (stop, pollers) = hold_anonymous_slots(&app, hogs).await;
    let controlled = from_address(&app, control, None)
        .get(app.url("/unsubscribe"))
        .send()
        .await;
    let r = from_address(&app, newcomer, None)
        .get(app.url("/unsubscribe"))
        .send()
        .await;
    let served = release_anonymous_slots(stop, pollers).await;
    assert!(served > 10, "the pollers were served: {served}");
    let controlled = controlled.expect("the control was answered");
    assert_eq!(controlled.status(), 503, "the hogs' side's newcomer waits");
    let r = r.expect("the newcomer was answered, not closed");
    assert_eq!(r.status(), 200, "a slot was made for the newcomer");
}

/// Pollers from `sources` (one connection each), each asking for `/healthz`
/// every 20 ms — never idle as long as a connection must be to be shed
/// (200 ms) — holding the anonymous slots; started, and given 300 ms.
async fn hold_anonymous_slots(
    app: &TestApp,
    sources: &[&str],
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<u32>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pollers = Vec::new();
    for source in sources {
        let client = from_address(app, source, None);
        let url = app.url("/healthz");
        let stop = stop.clone();
        pollers.push(tokio::spawn(async move {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    served += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            served
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    (stop, pollers)
}

/// Stops [`hold_anonymous_slots`]'s pollers: how many answers they had.
async fn release_anonymous_slots(
    stop: Arc<std::sync::atomic::AtomicBool>,
    pollers: Vec<tokio::task::JoinHandle<u32>>,
) -> u32 {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for p in pollers {
        served += p.await.unwrap_or(0);
    }
    served
}
