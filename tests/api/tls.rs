//! The foundation: TLS only, client-certificate roles, problem documents,
//! security headers, timeouts and graceful shutdown.

use std::time::Duration;

use checkoutd::server::identity::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    HeldRoute, Options, PATIENCE, Versions, client_with, expect_problem, in_a_week, spawn_app,
    spawn_app_with, still_serves,
};

#[tokio::test]
async fn healthz_answers_over_tls_with_security_headers() {
    let app = spawn_app().await;
    let response = app
        .anonymous()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));

    let ready = app
        .anonymous()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn http1_and_http2_are_both_served() {
    let app = spawn_app().await;
    let h2 = app
        .anonymous()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let cfg = crate::helpers::rustls_client_config(&app.pki, None, Versions::Both);
    let mut h1cfg = cfg.clone();
    h1cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = reqwest::Client::builder()
        .use_preconfigured_tls(h1cfg)
        .build()
        .unwrap()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
    assert!(h1.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn plaintext_http_gets_no_http_answer() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plaintext request must not get an HTTP response"
    );
    // Whatever came back (a TLS alert, or nothing) holds no HTTP text.
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1."));
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let app = spawn_app().await;
    for versions in [Versions::Tls12, Versions::Tls13] {
        let client = client_with(&app.pki, None, versions);
        let response = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn the_server_chooses_the_strongest_shared_suite_whatever_the_client_prefers() {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls_pki_types::pem::PemObject;
    let app = spawn_app().await;
    // Each client lists the weakest shared suite first.
    let cases = [
        (
            &rustls::version::TLS13,
            vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
            ],
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (version, suites, expected) in cases {
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls_pki_types::CertificateDer::from_pem_slice(app.pki.ca_pem().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tls_connect(&app, config).await;
        let negotiated = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(negotiated, expected, "{version:?}");
    }
}

#[tokio::test]
async fn client_certificate_from_a_foreign_ca_fails_the_handshake() {
    let app = spawn_app().await;
    let foreign = checkoutd::pki::DevPki::generate().unwrap();
    let cert = foreign.client(Role::Fulfillment).unwrap();
    // Trusts our server CA, but presents a certificate from another CA.
    let client = client_with(
        &app.pki,
        Some((&cert.cert_pem, &cert.key_pem)),
        Versions::Both,
    );
    let result = client.get(app.url("/v1/shipments")).send().await;
    assert!(result.is_err(), "the handshake must fail: {result:?}");
    // Same with TLS 1.2.
    let client = client_with(
        &app.pki,
        Some((&cert.cert_pem, &cert.key_pem)),
        Versions::Tls12,
    );
    assert!(client.get(app.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn client_that_does_not_trust_our_ca_cannot_connect() {
    let app = spawn_app().await;
    let other = checkoutd::pki::DevPki::generate().unwrap();
    let client = client_with(&other, None, Versions::Both);
    assert!(client.get(app.url("/healthz")).send().await.is_err());
}

#[tokio::test]
async fn no_certificate_is_401_and_wrong_role_is_403() {
    let app = spawn_app().await;
    let anonymous = app
        .anonymous()
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    let body = expect_problem(anonymous, 401).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:unauthenticated");

    for role in [Role::Storefront, Role::Auditor, Role::Marketing] {
        let response = app
            .client(role)
            .get(app.url("/v1/shipments"))
            .send()
            .await
            .unwrap();
        let body = expect_problem(response, 403).await;
        assert_eq!(body["type"], "urn:checkoutd:problem:forbidden");
    }
    let right = app
        .client(Role::Fulfillment)
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert_ne!(right.status(), 401);
    assert_ne!(right.status(), 403);
}

#[tokio::test]
async fn every_role_table_entry_is_enforced() {
    let app = spawn_app().await;
    // (method, path, the one role allowed)
    let table = [
        ("POST", "/v1/orders", Role::Storefront),
        (
            "GET",
            "/v1/orders/00000000-0000-4000-8000-000000000000",
            Role::Storefront,
        ),
        ("POST", "/v1/consent/opt-out", Role::Storefront),
        ("GET", "/v1/shipments", Role::Fulfillment),
        (
            "POST",
            "/v1/shipments/00000000-0000-4000-8000-000000000000/dispatch",
            Role::Fulfillment,
        ),
        (
            "GET",
            "/v1/marketing/audience?purpose=special_offers",
            Role::Marketing,
        ),
        ("GET", "/v1/audit/report", Role::Auditor),
        (
            "GET",
            "/v1/audit/orders/00000000-0000-4000-8000-000000000000",
            Role::Auditor,
        ),
        ("GET", "/v1/audit/log", Role::Auditor),
        ("GET", "/v1/audit/public-key", Role::Auditor),
        (
            "GET",
            "/v1/audit/consent?email=a%40example.com",
            Role::Auditor,
        ),
        ("POST", "/v1/audit/consent", Role::Auditor),
        ("GET", "/metrics", Role::Auditor),
    ];
    // Public endpoints answer everyone, with or without a certificate.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            app.anonymous()
                .get(app.url(path))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        for role in Role::ALL {
            assert_eq!(
                app.client(role)
                    .get(app.url(path))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                200
            );
        }
    }
    for (method, path, allowed) in table {
        let method: reqwest::Method = method.parse().unwrap();
        let response = app
            .anonymous()
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        expect_problem(response, 401).await;
        for role in Role::ALL {
            let response = app
                .client(role)
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            if role == allowed {
                // Answered (not refused, no server error); only endpoints a
                // later issue builds (metrics) may still say 501.
                let stub = path == "/metrics" && status == 501;
                assert!(
                    status != 401 && status != 403 && (status < 500 || stub),
                    "{method} {path} as {role}: {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} as {role}");
            }
        }
    }
}

#[tokio::test]
async fn certificates_without_exactly_one_known_role_are_403() {
    let app = spawn_app().await;
    for uris in [
        vec![],
        vec!["urn:checkoutd:role:admin".to_owned()],
        vec![Role::Fulfillment.uri(), Role::Auditor.uri()],
        // The URN's scheme and namespace are case-insensitive: a second
        // role URI, however cased, makes the certificate roleless; a role
        // named only in another case names none.
        vec![
            Role::Fulfillment.uri(),
            "URN:CHECKOUTD:role:auditor".to_owned(),
        ],
        vec!["URN:checkoutd:role:fulfillment".to_owned()],
    ] {
        let cert = app.pki.issue_client("odd client", &uris).unwrap();
        let client = client_with(
            &app.pki,
            Some((&cert.cert_pem, &cert.key_pem)),
            Versions::Both,
        );
        let response = client.get(app.url("/v1/shipments")).send().await.unwrap();
        expect_problem(response, 403).await;
        // Public endpoints stay open to them.
        let health = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_as_problems() {
    let app = spawn_app().await;
    let response = app.anonymous().get(app.url("/nope")).send().await.unwrap();
    assert!(response.headers().contains_key("strict-transport-security"));
    let body = expect_problem(response, 404).await;
    assert_eq!(body["type"], "urn:checkoutd:problem:not-found");
    let response = app
        .anonymous()
        .delete(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 405).await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            handshake_timeout: Some("300ms".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The server closes the connection; it does not wait forever.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn a_connection_beyond_the_cap_takes_the_slot_of_an_idle_one() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            max_connections: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // A connection that sent its ClientHello and then went silent holds the
    // only slot, with nothing in flight ...
    let mut holder = TcpStream::connect(app.addr).await.unwrap();
    let config = crate::helpers::rustls_client_config(&app.pki, None, Versions::Both);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    holder.write_all(&hello).await.unwrap();
    // ... its handshake is under way (the server answered: it has the slot
    // and is registered) ...
    let mut first = [0u8; 1];
    let answered = tokio::time::timeout(PATIENCE, holder.read(&mut first)).await;
    assert!(
        matches!(answered, Ok(Ok(1))),
        "the server answers a ClientHello: {answered:?}"
    );
    // ... and, registered before it answered, it has been idle longer than
    // the grace a new connection gets (admission::MIN_IDLE_MS, 200 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // So a newcomer is served at once (no queue: it does not wait for the
    // holder's 10-s handshake timeout), and the holder is shed.
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        app.anonymous().get(app.url("/healthz")).send(),
    )
    .await
    .expect("the newcomer is served within 5 s, long before the holder's handshake timeout")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(closed_within(&mut holder, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request() {
    let held = HeldRoute::default();
    let mut app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            // The request is held until the test has seen the server stop
            // accepting: a drain that outlasts a slow machine's stalls.
            drain_timeout: Some("30s".into()),
            ..Default::default()
        },
        extra_routes: Some(held.router("/slow", "finished")),
        ..Default::default()
    })
    .await;
    let client = app.anonymous();
    let url = app.url("/slow");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    // The request is in its handler ...
    held.wait_entered(1).await;
    // ... when shutdown begins; it is held there until the server no longer
    // takes new connections (so the shutdown is well under way) ...
    app.shutdown();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while still_serves(&app).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still accepts connections {PATIENCE:?} after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_flight.is_finished(), "the request is still in flight");
    // ... and then finishes, answered in full.
    held.release();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    // The server then stops, and serves no new connection.
    let server = app.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(!still_serves(&app).await);
}

#[tokio::test]
async fn access_log_has_route_templates_and_no_query_values_or_paths() {
    let app = spawn_app().await;
    // A source address of its own makes this test's lines identifiable in
    // the log buffer that all tests share.
    let source: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let with_source = |role: Role| {
        let cert = app.pki.client(role).unwrap();
        let config = crate::helpers::rustls_client_config(
            &app.pki,
            Some((&cert.cert_pem, &cert.key_pem)),
            Versions::Both,
        );
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .local_address(source)
            .build()
            .unwrap()
    };
    let marker = "leakcheck-7f3a@example.com";
    let r = with_source(Role::Fulfillment)
        .get(app.url(&format!("/v1/shipments?status={marker}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = with_source(Role::Storefront)
        .get(app.url("/v1/orders/leakcheck-path-7f3a"))
        .header("x-customer", marker)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let logs = crate::helpers::captured_logs();
    // This test's access-log lines: the access log's target and message, and
    // this test's source address (not any other line naming the address).
    let mine: Vec<&str> = logs
        .lines()
        .filter(|l| {
            let event: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            event["target"] == checkoutd::http::access_log::TARGET
                && event["fields"]["message"] == "request"
                && event["fields"]["client_ip"] == "127.0.0.77"
        })
        .collect();
    assert_eq!(mine.len(), 2, "one access line per request: {mine:?}");
    assert!(
        mine.iter()
            .any(|l| l.contains(r#""route":"/v1/orders/{id}""#) && l.contains(r#""status":404"#))
    );
    assert!(
        mine.iter()
            .any(|l| l.contains(r#""route":"/v1/shipments""#)
                && l.contains(r#""role":"fulfillment""#))
    );
    assert!(
        mine.iter()
            .all(|l| l.contains(r#""tls":"TLSv1.3""#) && l.contains("latency_us"))
    );
    assert!(
        !logs.contains("leakcheck"),
        "a query value, path value or header leaked into the logs"
    );
}

/// Reads until the server closes the connection; true if it did within `within`.
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_client_silent_after_the_handshake_is_dropped_after_the_idle_timeout() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            // Room for a stall: the final /healthz must not become a 408
            // (request_timeout must stay below idle_timeout).
            idle_timeout: Some("2s".into()),
            request_timeout: Some("1s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // Closed by the idle timeout (2 s): 8 s leaves a loaded machine room
    // and stays below the 10-s header_read_timeout, which could otherwise
    // close a silent HTTP/1 client too.
    for role in [None, Some(Role::Storefront)] {
        let mut stream = crate::helpers::tls_connect(&app, role).await;
        assert!(
            closed_within(&mut stream, Duration::from_secs(8)).await,
            "{role:?}"
        );
    }
    // An HTTP/2 client that sent its preface and settings, then nothing, is
    // closed too (the server's own SETTINGS do not keep it alive).
    let mut h2 = crate::helpers::tls_connect(&app, None).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_within(&mut h2, Duration::from_secs(8)).await);
    // Ordinary requests are unaffected.
    assert_eq!(
        app.anonymous()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn anonymous_clients_cannot_take_every_slot() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            max_connections: Some(4),
            max_anonymous_connections: Some(1),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    // One anonymous connection holds the only anonymous slot: it has been
    // served (so the server has admitted it as anonymous) ...
    let mut holder = crate::helpers::tls_connect_offering(&app, None, Some(&[b"http/1.1"])).await;
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let answered = tokio::time::timeout(PATIENCE, holder.read(&mut first)).await;
    assert!(matches!(answered, Ok(Ok(1))), "{answered:?}");
    // ... and has had nothing in flight for longer than the grace a
    // connection gets (admission::MIN_IDLE_MS, 200 ms, counted from the
    // end of its request, before its answer came) ...
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... so a second anonymous connection takes its slot over at once.
    let _second = crate::helpers::tls_connect(&app, None).await;
    assert!(closed_within(&mut holder, Duration::from_secs(5)).await);
    // ... while certified clients are still served.
    let r = app
        .client(Role::Fulfillment)
        .get(app.url("/v1/shipments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Whether `client` gets an HTTP answer on `/v1/orders/…` (any status: a
/// refused certificate gets none, the handshake fails).
async fn answered(client: &reqwest::Client, app: &crate::helpers::TestApp) -> bool {
    client
        .get(app.url("/v1/orders/00000000-0000-7000-8000-000000000000"))
        .send()
        .await
        .is_ok()
}

/// Waits until `client` is refused, at most a few TLS polls.
async fn refused_soon(client: &reqwest::Client, app: &crate::helpers::TestApp) -> bool {
    for _ in 0..40 {
        if !answered(client, app).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// A TLS connection to `app` made with `config`.
async fn tls_connect(
    app: &crate::helpers::TestApp,
    config: rustls::ClientConfig,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 keep-alive connection with `role`'s certificate: what an
/// open connection is, observably (reqwest would reconnect by itself).
struct RawConnection(tokio_rustls::client::TlsStream<TcpStream>);

impl RawConnection {
    async fn open(app: &crate::helpers::TestApp, role: Role) -> Self {
        let cert = app.pki.client(role).unwrap();
        let config = crate::helpers::rustls_client_config(
            &app.pki,
            Some((&cert.cert_pem, &cert.key_pem)),
            Versions::Both,
        );
        let tls = tls_connect(app, config).await;
        RawConnection(tls)
    }

    /// The status of a GET on this connection; `None` once it is closed.
    async fn get(&mut self) -> Option<u16> {
        let request = "GET /v1/orders/00000000-0000-7000-8000-000000000000 HTTP/1.1\r\nhost: localhost\r\n\r\n";
        self.0.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut byte))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body).await.ok()?;
        head.split(' ').nth(1)?.parse().ok()
    }
}

/// A ClientHello whose server name is no DNS name — a card number and an
/// email — from a client with no certificate: the handshake fails, and
/// nothing of that name reaches the log (rustls warns about such a name,
/// quoting it; its logging is not built in, and capped off besides).
#[tokio::test]
async fn a_server_name_holding_a_card_number_is_never_logged() {
    let app = crate::helpers::spawn_app().await;
    let name = b"ada.sni@example.com 4000 0566 5566 5556";
    // TLS 1.2-style ClientHello: version, random, no session, one suite,
    // no compression, one extension (server_name, host_name).
    let mut sni = vec![0x00];
    sni.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    sni.extend_from_slice(name);
    let mut list = u16::try_from(sni.len()).unwrap().to_be_bytes().to_vec();
    list.extend_from_slice(&sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend_from_slice(&u16::try_from(list.len()).unwrap().to_be_bytes());
    extensions.extend_from_slice(&list);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x02, 0x01, 0x00]);
    hello.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(hello.len()).unwrap().to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);

    // Summed over the reasons (the counter is the test process's).
    let failures = || async {
        let text = app.metrics().await;
        text.lines()
            .filter(|l| l.starts_with("checkoutd_tls_handshake_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = failures().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    // The server answers with an alert and closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert_eq!(answer.first(), Some(&0x15), "an alert: {answer:?}");
    // The failed handshake was seen (the server logs it, by reason).
    let mut seen = false;
    for _ in 0..40 {
        if failures().await > before {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the handshake failure was counted");
    let logs = crate::helpers::captured_logs();
    for needle in ["ada.sni@example.com", "4000 0566 5566 5556", "Illegal SNI"] {
        assert!(!logs.contains(needle), "{needle:?} was logged");
    }
}

async fn healthy(app: &crate::helpers::TestApp) -> bool {
    let r = app.anonymous().get(app.url("/healthz")).send().await;
    r.is_ok_and(|r| r.status() == 200)
}

async fn spawn_with_client_crl() -> crate::helpers::TestApp {
    spawn_app_with(Options {
        client_crl: true,
        ..Options::default()
    })
    .await
}

/// `--client-crl`: a revoked client certificate is refused from the next
/// handshake on, without a restart — and the connection it already had
/// open is closed, while another role's open connection goes on; a file
/// that does not load keeps the list in force; an expired list fails
/// closed.
#[tokio::test]
async fn a_revoked_client_certificate_is_refused_without_a_restart() {
    let app = spawn_with_client_crl().await;
    let mut storefront = RawConnection::open(&app, Role::Storefront).await;
    let mut warehouse = RawConnection::open(&app, Role::Fulfillment).await;
    assert_eq!(storefront.get().await, Some(404), "nothing revoked yet");
    assert_eq!(
        warehouse.get().await,
        Some(403),
        "a warehouse may not read orders"
    );

    app.write_client_crl(&[Role::Storefront], in_a_week());
    let mut closed = false;
    for _ in 0..40 {
        if storefront.get().await.is_none() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        closed,
        "the revoked certificate's open connection was closed"
    );
    assert!(
        !answered(&app.client(Role::Storefront), &app).await,
        "and a new one is refused"
    );
    tokio::time::sleep(checkoutd::server::tls::TLS_POLL).await;
    assert_eq!(
        warehouse.get().await,
        Some(403),
        "the warehouse's connection, still trusted, was left open"
    );

    // A half-written or foreign file does not load: the list in force
    // stays, and the failure is counted for the operator's alert.
    let failures = || async {
        crate::helpers::metric_value(&app.metrics().await, "checkoutd_tls_reload_failures_total")
    };
    // The gauge is the process's, other apps of the suite move it too: it
    // is at least this app's 1 while its files fail, and this app's own
    // state says when that ends.
    let failing = || async {
        crate::helpers::metric_value(&app.metrics().await, "checkoutd_tls_reload_failing")
    };
    let failures_before = failures().await;
    assert!(!app.tls.reload_failing());
    app.write_client_crl_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n");
    assert!(
        eventually(|| async { failures().await > failures_before && app.tls.reload_failing() })
            .await,
        "the failure is counted, and shown for as long as it lasts"
    );
    assert!(failing().await >= 1.0, "in the gauge too");
    assert_eq!(warehouse.get().await, Some(403));
    assert!(answered(&app.client(Role::Fulfillment), &app).await);
    assert!(!answered(&app.client(Role::Storefront), &app).await);

    // A list older than the one in force from the same CA — last week's,
    // put back by a rollback of the file — would let in again every
    // certificate revoked since: refused as well, and counted.
    let older = app
        .pki
        .revocation_list(
            &[],
            time::OffsetDateTime::now_utc() - time::Duration::hours(2),
            in_a_week(),
        )
        .unwrap();
    let failures_before_older = failures().await;
    app.write_client_crl_bytes(older.as_bytes());
    assert!(
        eventually(|| async { failures().await > failures_before_older }).await,
        "the older list is refused"
    );
    assert!(answered(&app.client(Role::Fulfillment), &app).await);
    assert!(
        !answered(&app.client(Role::Storefront), &app).await,
        "the revocation stays in force"
    );

    // An expired list: no client certificate is trusted any more (whose
    // revocation would it have missed?); anonymous routes still answer.
    app.write_client_crl(
        &[],
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
    );
    assert!(refused_soon(&app.client(Role::Fulfillment), &app).await);
    assert!(healthy(&app).await, "anonymous routes still answer");
    // Taking that older, expired list did not make the older valid one
    // acceptable: the newest list taken from the CA is remembered, so the
    // expired list stays in force and still refuses everyone (the metrics
    // too: an auditor's certificate is refused as well).
    app.write_client_crl_bytes(older.as_bytes());
    tokio::time::sleep(checkoutd::server::tls::TLS_POLL * 2).await;
    assert!(
        !answered(&app.client(Role::Fulfillment), &app).await,
        "the older valid list was taken after an expired one"
    );

    // A fresh list that revokes nothing: everyone is back.
    app.write_client_crl(&[], in_a_week());
    for _ in 0..40 {
        if answered(&app.client(Role::Storefront), &app).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered(&app.client(Role::Storefront), &app).await);
    assert!(answered(&app.client(Role::Fulfillment), &app).await);
    let mut ended = false;
    for _ in 0..40 {
        if !app.tls.reload_failing() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ended, "lists that load again ended the alert");
}

/// The newest client CRL taken from each CA outlives the process, in the
/// data directory: a list rolled back while the server was down — older
/// than one it took, still within its validity — stops the next start and
/// names the file it was measured against, as a reload refuses it. The
/// current list starts; a newer one taken while running raises the mark on
/// disk; and with the file removed (the documented way out when a CA is
/// replaced) the older list is taken again.
#[tokio::test]
async fn a_client_crl_rolled_back_while_the_server_was_down_stops_the_next_start() {
    let app = spawn_with_client_crl().await;
    let dir = app.dir.clone();
    let pki = app.pki.clone();
    let data = dir.path().join("data");
    let crl = dir.path().join("certs").join("client-crl.pem");
    let marks = data.join(checkoutd::server::crl_marks::FILE_NAME);
    let kept_at_start = std::fs::read_to_string(&marks).expect("the list taken at start is kept");
    assert!(kept_at_start.contains("\"this_update\""), "{kept_at_start}");

    // A newer list, taken while running, raises the mark on disk.
    let issued_later = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let current = pki.revocation_list(&[], issued_later, in_a_week()).unwrap();
    app.write_client_crl_bytes(current.as_bytes());
    let mut raised = false;
    for _ in 0..40 {
        if std::fs::read_to_string(&marks).unwrap() != kept_at_start {
            raised = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(raised, "the newer list's mark was written");
    // The database outlives the app (on PostgreSQL, dropping the last
    // handle drops the test's database).
    let database = app.database.clone();
    let url = database.url.clone();
    drop(app);

    let start = || start_with_client_crl(dir.path(), &crl, &data, &url);
    // Last week's file put back while the server was down: the list the
    // spawn wrote (issued five minutes ago) is older than the one taken.
    for older_by in [time::Duration::minutes(5), time::Duration::days(2)] {
        let older = pki
            .revocation_list(&[], issued_later - older_by, in_a_week())
            .unwrap();
        std::fs::write(&crl, older.as_bytes()).unwrap();
        let kept = std::fs::read(&marks).unwrap();
        let refused = start()
            .await
            .err()
            .expect("a rolled-back client CRL must stop the start");
        let said = refused.to_string();
        // The CA by name, both lists' times, both files.
        let second = |at: time::OffsetDateTime| {
            at.replace_nanosecond(0)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        for expected in [
            "older".to_owned(),
            "checkoutd development CA".to_owned(),
            second(issued_later - older_by),
            second(issued_later),
            crl.display().to_string(),
            marks.display().to_string(),
        ] {
            assert!(said.contains(&expected), "{expected:?} in: {said}");
        }
        assert_eq!(
            std::fs::read(&marks).unwrap(),
            kept,
            "a refused start leaves the marks as they were"
        );
    }

    // An older list already past its next update takes nothing back (it
    // fails closed, refusing every client certificate): it starts, and
    // leaves the marks as they were.
    let kept = std::fs::read(&marks).unwrap();
    let expired = pki
        .revocation_list(
            &[],
            issued_later - time::Duration::days(9),
            issued_later - time::Duration::days(2),
        )
        .unwrap();
    std::fs::write(&crl, expired.as_bytes()).unwrap();
    drop(
        start()
            .await
            .expect("an expired older list starts, failing closed"),
    );
    assert_eq!(std::fs::read(&marks).unwrap(), kept);

    // The current list starts.
    std::fs::write(&crl, current.as_bytes()).unwrap();
    drop(start().await.expect("the current list starts"));

    // Without the file the server never saw a newer list: the older one is
    // taken (and becomes the mark).
    let older = pki
        .revocation_list(&[], issued_later - time::Duration::days(2), in_a_week())
        .unwrap();
    std::fs::write(&crl, older.as_bytes()).unwrap();
    std::fs::remove_file(&marks).unwrap();
    drop(
        start()
            .await
            .expect("with the marks removed the older list is taken"),
    );
    let taken = (issued_later - time::Duration::days(2)).unix_timestamp();
    let now_kept = std::fs::read_to_string(&marks).unwrap();
    assert!(
        now_kept.contains(&format!("\"this_update\": {taken}"))
            && now_kept.contains(&format!("\"mark\": {taken}")),
        "and kept as the mark from now on: {now_kept}"
    );
    drop(database);
}

/// Two lists issued within one second (a CRL's times are whole seconds):
/// the earlier put back has the same `thisUpdate` and a lower CRL number.
/// That is a rollback too — refused while running, the revocation staying
/// in force, and at the next start, naming both numbers.
#[tokio::test]
async fn a_client_crl_with_a_lower_crl_number_is_a_rollback_within_one_second() {
    let app = spawn_with_client_crl().await;
    let issued = (time::OffsetDateTime::now_utc() - time::Duration::minutes(1))
        .replace_nanosecond(0)
        .unwrap();
    // Above the spawn's list, whose number is its time.
    let base = 10_000_000_000_000;
    let storefront = app.pki.client(Role::Storefront).unwrap();
    let first = app
        .pki
        .revocation_list_numbered(&[], issued, in_a_week(), base)
        .unwrap();
    let second = app
        .pki
        .revocation_list_numbered(&[storefront], issued, in_a_week(), base + 1)
        .unwrap();
    app.write_client_crl_bytes(first.as_bytes());
    // Taken: the marks file records its number.
    let data = app.dir.path().join("data");
    let marks = data.join(checkoutd::server::crl_marks::FILE_NAME);
    assert!(
        eventually(|| async {
            std::fs::read_to_string(&marks)
                .is_ok_and(|m| m.contains(&format!("\"number\": \"{}\"", hex_of(base))))
        })
        .await,
        "the first list was taken"
    );
    assert!(answered(&app.client(Role::Storefront), &app).await);
    app.write_client_crl_bytes(second.as_bytes());
    assert!(refused_soon(&app.client(Role::Storefront), &app).await);

    let failures = || async {
        crate::helpers::metric_value(&app.metrics().await, "checkoutd_tls_reload_failures_total")
    };
    let failures_before = failures().await;
    app.write_client_crl_bytes(first.as_bytes());
    assert!(
        eventually(|| async { failures().await > failures_before && app.tls.reload_failing() })
            .await,
        "the earlier list is refused"
    );
    assert!(
        !answered(&app.client(Role::Storefront), &app).await,
        "the revocation stays in force"
    );
    assert!(answered(&app.client(Role::Fulfillment), &app).await);
    // The list in force back in the file: the reload alert ends (its gauge
    // is the test process's, and the server's poller outlives the app).
    app.write_client_crl_bytes(second.as_bytes());
    assert!(
        eventually(|| async { !app.tls.reload_failing() }).await,
        "the alert ended"
    );

    // Marks written, the server stopped; the earlier list stops the start
    // (from a file of its own: the poller above still reads the other).
    let dir = app.dir.clone();
    let crl = dir.path().join("certs").join("client-crl-restart.pem");
    std::fs::write(&crl, first.as_bytes()).unwrap();
    let mut kept = false;
    for _ in 0..40 {
        if std::fs::read_to_string(&marks)
            .unwrap()
            .contains(&format!("\"number\": \"{}\"", hex_of(base + 1)))
        {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(kept, "the highest number is kept on disk");
    let database = app.database.clone();
    let url = database.url.clone();
    drop(app);
    let start = || start_with_client_crl(dir.path(), &crl, &data, &url);
    let said = start()
        .await
        .err()
        .expect("the earlier list must stop the start")
        .to_string();
    for expected in [
        format!("numbered {base} (CRL number)"),
        format!("numbered {}", base + 1),
        "older".to_owned(),
        marks.display().to_string(),
    ] {
        assert!(said.contains(&expected), "{expected:?} in: {said}");
    }
    std::fs::write(&crl, second.as_bytes()).unwrap();
    drop(start().await.expect("the later list starts"));
    drop(database);
}

/// `n` as the marks file writes a CRL number: big-endian hex, no leading
/// zero bytes.
fn hex_of(n: u64) -> String {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[first..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A CRL that passes its next update while clients are connected: their
/// open connections are closed and neither a new handshake nor a resumed
/// session (the client keeps its session tickets) gets in — nothing about
/// the file changed, the time did.
#[tokio::test]
async fn a_client_crl_that_expires_while_clients_are_connected_shuts_them_out() {
    let app = spawn_with_client_crl().await;
    // Whole seconds: a CRL's times carry no fraction.
    let now = time::OffsetDateTime::now_utc();
    let expires = now.replace_nanosecond(0).unwrap() + time::Duration::seconds(10);
    app.write_client_crl(&[], expires);
    // Let the new list be loaded, then connect: the open connection, and
    // the session a client may resume, are made under it.
    tokio::time::sleep(checkoutd::server::tls::TLS_POLL * 2).await;
    let mut open = RawConnection::open(&app, Role::Storefront).await;
    assert_eq!(open.get().await, Some(404));
    let resuming = app.client(Role::Storefront);
    assert!(answered(&resuming, &app).await);
    let until_expired = (expires - time::OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(until_expired + checkoutd::server::tls::TLS_POLL * 2).await;
    assert_eq!(
        open.get().await,
        None,
        "the open connection outlived the CRL"
    );
    assert!(
        refused_soon(&resuming, &app).await,
        "a resumed session (or a new handshake) outlived the CRL"
    );
    assert!(!answered(&app.client(Role::Fulfillment), &app).await);
    assert!(healthy(&app).await, "anonymous routes still answer");
}

/// A client certificate that expires while in use: the connection open
/// with it loses its role and is closed, and a session resumed with it —
/// a resumption verifies no certificate — is refused too.
/// A certificate that expires while one of its orders is still committing:
/// its connection takes no new request, but the order in flight is
/// answered — not cut off after the drain time, which would leave the
/// storefront not knowing, and its retry (under the renewed certificate,
/// another client's keys) making a second order.
#[tokio::test]
async fn an_order_in_flight_when_its_certificate_expires_is_still_answered() {
    let app = spawn_app_with(Options {
        serve: checkoutd::cli::ServeArgs {
            drain_timeout: Some("1s".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let expires = now + time::Duration::seconds(3);
    let cert = app
        .pki
        .issue_client_until("short-lived shop", &[Role::Storefront.uri()], expires)
        .unwrap();
    let client = client_with(
        &app.pki,
        Some((&cert.cert_pem, &cert.key_pem)),
        Versions::Both,
    );
    let db = app.db().await;
    let mut held = crate::orders::hold_the_order_tables(&app, &db).await;
    let url = app.url("/v1/orders");
    let pending = tokio::spawn(async move {
        client
            .post(url)
            .header("idempotency-key", "expiring-1")
            .json(&crate::orders::order_json())
            .send()
            .await
    });
    // Past the expiry, its check a second later, and the drain time.
    let until_expired = (expires - time::OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(until_expired + Duration::from_millis(3500)).await;
    assert!(
        !pending.is_finished(),
        "answered while the tables were held"
    );
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    let answered = pending.await.unwrap().expect("answered, not cut off");
    assert_eq!(answered.status(), 201);
}

#[tokio::test]
async fn a_client_certificate_that_expires_shuts_its_connections_and_sessions_out() {
    let app = spawn_app().await;
    // Whole seconds: a certificate's times carry no fraction.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let expires = now + time::Duration::seconds(4);
    let cert = app
        .pki
        .issue_client_until("short-lived shop", &[Role::Storefront.uri()], expires)
        .unwrap();
    let config = crate::helpers::rustls_client_config(
        &app.pki,
        Some((&cert.cert_pem, &cert.key_pem)),
        Versions::Both,
    );
    let mut open = RawConnection(tls_connect(&app, config.clone()).await);
    assert_eq!(open.get().await, Some(404), "served while valid");
    // Another connection, closed: its session is kept in `config`'s store
    // (read with its answer).
    let mut first = RawConnection(tls_connect(&app, config.clone()).await);
    assert_eq!(first.get().await, Some(404));
    drop(first);
    let until_expired = (expires - time::OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(until_expired + Duration::from_millis(2500)).await;
    let after = open.get().await;
    assert!(
        matches!(after, None | Some(401) | Some(403)),
        "the open connection outlived its certificate: {after:?}"
    );
    let mut resumed = RawConnection(tls_connect(&app, config).await);
    assert_eq!(
        resumed.0.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the session was resumed (what this test is about)"
    );
    let status = resumed.get().await;
    assert!(
        matches!(status, None | Some(401) | Some(403)),
        "a resumed session outlived its certificate: {status:?}"
    );
}

/// A client chain of many intermediates that all name the same issuer,
/// none leading to our CA: building paths through them would cost the
/// verifier up to its whole budget (200 000 steps, each parsing every
/// certificate sent) on a worker thread, for a client with no valid
/// certificate at all. More intermediates than any chain of ours needs
/// are refused before any path is built, counted under their own reason.
#[tokio::test]
async fn a_client_chain_of_many_intermediates_is_refused_before_any_path_is_built() {
    let app = crate::helpers::spawn_app().await;
    let count: usize = std::env::var("CHECKOUTD_TEST_CHAIN_LENGTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(checkoutd::server::tls::MAX_CLIENT_INTERMEDIATES + 1);
    let name = || {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "loop");
        dn
    };
    let mut intermediates = Vec::new();
    let mut signer = None;
    for _ in 0..count {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = name();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        intermediates.push(cert.der().clone());
        signer = Some((cert, key));
    }
    let (issuer_cert, ca_key) = signer.unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        "urn:checkoutd:role:storefront".try_into().unwrap(),
    )];
    let leaf = leaf.signed_by(&leaf_key, &issuer_cert, &ca_key).unwrap();
    let mut chain = vec![leaf.der().clone()];
    chain.extend(intermediates);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            rustls_pki_types::pem::PemObject::from_pem_slice(app.pki.ca_pem().as_bytes())
                .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                .unwrap(),
        ))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        chain,
        rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let refusals = || async {
        let text = app.metrics().await;
        text.lines()
            .filter(|l| {
                l.starts_with("checkoutd_tls_handshake_failures_total{")
                    && l.contains("reason=\"client_chain_too_long\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = refusals().await;
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let server = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(server, tcp)
        .await
        .unwrap();
    // TLS 1.3: the client's certificate is judged after its side of the
    // handshake; the refusal comes as an alert on the first read.
    let _ = tls
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(120), tls.read_to_end(&mut answer)).await;
    eprintln!(
        "{count} intermediates: refused after {:?}",
        started.elapsed()
    );
    assert!(
        !matches!(read, Ok(Ok(_))) || answer.is_empty(),
        "no answer for that chain"
    );
    let mut counted = false;
    for _ in 0..40 {
        if refusals().await > before {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "refused as a chain too long");
}

/// Starts a server on `dir`'s certificates with the client CRL file `crl`,
/// the data directory `data` and the database `url`.
async fn start_with_client_crl(
    dir: &std::path::Path,
    crl: &std::path::Path,
    data: &std::path::Path,
    url: &str,
) -> Result<checkoutd::app::Application, checkoutd::app::StartupError> {
    let args = checkoutd::cli::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        certs_dir: Some(dir.join("certs")),
        client_crl: Some(crl.to_owned()),
        store: checkoutd::cli::StoreArgs {
            data_dir: Some(data.to_owned()),
            database_url: Some(url.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    checkoutd::app::Application::build(&checkoutd::config::Settings::from_args(&args).unwrap())
        .await
}

/// Whether `condition` holds within the suite's patience (asked every
/// 250 ms): what a TLS poll does is waited for, not slept on.
async fn eventually<F, Fut>(mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
