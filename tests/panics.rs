//! A panic while a request's data is in hand prints none of it.
//!
//! This file is its own test binary because it installs the service's panic
//! hook (`telemetry::init` does, as `checkoutd serve` does), which is
//! process-wide. The test runs itself again as a child process — the server
//! logging as in production, JSON to stderr — and scans everything the
//! child wrote to stdout and stderr.
//!
//! The panics are forced through test-only routes mounted behind the real
//! layers: one where the standard library's own message would quote the
//! request body (slicing a string inside a character), one with a
//! formatted message holding the body. Each must answer a 500 problem
//! document, keep the connection serving, and log the panic's location
//! without its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::process::Command;

use axum::body::Bytes;
use axum::routing::post;
use checkoutd::config::LogFormat;
use checkoutd::server::identity::Role;

use helpers::{Options, expect_problem, spawn_app_with};

const CHILD: &str = "CHECKOUTD_PANICS_CHILD";

const PAN: &str = "6011000990139424";
const NAME: &str = "Zoë Pennyworth-Quill";
const EMAIL: &str = "zoe.quill@panic.example";
const STREET: &str = "Marigold Steps";
const CVC: &str = "9173";

fn body() -> String {
    format!(
        r#"{{"customer":{{"name":"{NAME}","email":"{EMAIL}"}},"card":{{"number":"{PAN}","cvc":"{CVC}"}},"billing_address":{{"line1":"4 {STREET}"}}}}"#
    )
}

/// Slices the body inside the "ë" of the name: std's panic message quotes
/// the string it was slicing.
async fn slicing(body: Bytes) -> &'static str {
    let text = String::from_utf8_lossy(&body).into_owned();
    let inside = text.find('ë').map_or(0, |at| at + 1);
    std::hint::black_box(&text[..inside]);
    "unreachable"
}

/// A formatted panic message with the body in it.
async fn formatted(body: Bytes) -> &'static str {
    let text = String::from_utf8_lossy(&body).into_owned();
    if !text.is_empty() {
        std::panic::panic_any(format!("could not handle {text}"));
    }
    "unreachable"
}

#[test]
fn a_panic_while_handling_an_order_prints_no_request_data() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "a_panic_while_handling_an_order_prints_no_request_data",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    let all = String::from_utf8_lossy(&all);
    assert!(out.status.success(), "the child run failed:\n{all}");
    // Both panics were logged, with where they happened...
    let panics: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("\"message\":\"panic\""))
        .collect();
    assert_eq!(panics.len(), 2, "two panic events expected:\n{all}");
    for line in &panics {
        assert!(line.contains("tests/panics.rs:"), "{line}");
        assert!(
            line.contains(checkoutd::telemetry::WITHHELD_PANIC_MESSAGE),
            "{line}"
        );
    }
    // ...and nothing of the request anywhere in the output.
    let cvc_quoted = format!("\"{CVC}\"");
    for secret in [
        PAN,
        &PAN[4..],
        NAME,
        "Pennyworth",
        EMAIL,
        STREET,
        &cvc_quoted,
        "could not handle",
    ] {
        assert!(!all.contains(secret), "the output holds {secret:?}:\n{all}");
    }
    assert!(!all.contains("panicked at"), "the default hook ran:\n{all}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn child() {
    // As `checkoutd serve` starts: JSON logs to stderr and the panic hook.
    checkoutd::telemetry::init(LogFormat::Json);
    let routes = axum::Router::new()
        .route("/test/panic/slicing", post(slicing))
        .route("/test/panic/formatted", post(formatted));
    let app = spawn_app_with(Options {
        extra_routes: Some(routes),
        ..Default::default()
    })
    .await;
    let client = app.client(Role::Storefront);
    for path in ["/test/panic/slicing", "/test/panic/formatted"] {
        let r = client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body())
            .send()
            .await
            .unwrap();
        let problem = expect_problem(r, 500).await;
        assert_eq!(problem["type"], "urn:checkoutd:problem:internal");
        // The same connection (keep-alive) goes on serving.
        let r = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
