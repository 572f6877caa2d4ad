//! Key life cycle: rotation picked up by a running server, rewrap without
//! touching ciphertexts, destruction refused while in use, every operation
//! logged.

use std::process::Command;
use std::time::Duration;

use checkoutd::crypto::DataClass;
use checkoutd::server::identity::Role;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};
use crate::orders::order_json;

fn checkoutd(app: &TestApp) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_checkoutd"));
    c.env("CHECKOUTD_DATA_DIR", app.dir.path().join("data"));
    c
}

async fn order(app: &TestApp, key: &str) -> String {
    let r = app.post_order(key, &order_json()).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["order_id"].as_str().unwrap().to_owned()
}

async fn card_version(app: &TestApp, order_id: &str) -> u64 {
    let v: Value = app
        .client(Role::Auditor)
        .get(app.url(&format!("/v1/audit/orders/{order_id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["verified"], true, "{v:#}");
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["table"] == "payment_cards")
        .unwrap()["kek_version"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn rotate_rewrap_destroy_end_to_end() {
    let app = spawn_app().await;
    let first = order(&app, "k-1").await;
    assert_eq!(card_version(&app, &first).await, 1);
    // A withdrawal with a sealed reference (contact class) must be re-wrapped too.
    let r = app
        .client(Role::Storefront)
        .post(app.url("/v1/consent/opt-out"))
        .json(&serde_json::json!({"email": "x@example.com", "purposes": "all", "channel": "postal", "reference": "scan-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // keys status: versions and usage, no key material.
    let out = checkoutd(&app).args(["keys", "status"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["keks"]["card"][0]["records"], 1);
    assert_eq!(status["keks"]["card"][0]["state"], "active");
    let keyring_text = std::fs::read_to_string(app.dir.path().join("data/keyring.json")).unwrap();
    let card_key: Value = serde_json::from_str(&keyring_text).unwrap();
    let key_hex = card_key["keks"]["card"][0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key_hex));

    // Rotate every class while the server runs; it picks the keyring up.
    let out = checkoutd(&app)
        .args(["keys", "rotate", "--class", "all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut second = String::new();
    for i in 0..50 {
        second = order(&app, &format!("k-2-{i}")).await;
        if card_version(&app, &second).await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        card_version(&app, &second).await,
        2,
        "new orders under the new version without a restart"
    );
    assert_eq!(
        card_version(&app, &first).await,
        1,
        "old records still open under the retired version"
    );

    // Destroy is refused while v1 wraps records.
    let out = checkoutd(&app)
        .args(["keys", "destroy", "--class", "card", "--version", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rewrap"));
    let out = checkoutd(&app)
        .args(["keys", "destroy", "--class", "card", "--version", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the active version");

    // An interrupted rewrap (one batch of one record) resumes.
    let store = app.store().await;
    let keyring =
        checkoutd::crypto::keyring::Keyring::load(&app.dir.path().join("data/keyring.json"))
            .unwrap();
    let ciphertext_before: Vec<u8> =
        sqlx::query_scalar("SELECT ciphertext FROM payment_cards WHERE order_id = ?1")
            .bind(&first)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    let partial = checkoutd::store::Store::envelopes_to_rewrap(&store, DataClass::Card, 2, 1)
        .await
        .unwrap();
    assert_eq!(partial.len(), 1);
    let out = checkoutd(&app)
        .args(["keys", "rewrap", "--batch", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for class in DataClass::ALL {
        let usage = checkoutd::store::Store::kek_usage(&store, class)
            .await
            .unwrap();
        assert!(usage.keys().all(|v| *v == 2), "{class:?}: {usage:?}");
    }
    // Data ciphertexts untouched; everything opens; the audit is clean.
    let ciphertext_after: Vec<u8> =
        sqlx::query_scalar("SELECT ciphertext FROM payment_cards WHERE order_id = ?1")
            .bind(&first)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(ciphertext_before, ciphertext_after);
    let keyring =
        checkoutd::crypto::keyring::Keyring::load(&app.dir.path().join("data/keyring.json"))
            .unwrap_or(keyring);
    let report = checkoutd::audit::verify::verify(&store, &keyring, &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(card_version(&app, &first).await, 2);

    // Now v1 can go, for good.
    let out = checkoutd(&app)
        .args(["keys", "destroy", "--class", "card", "--version", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(
        &checkoutd(&app)
            .args(["keys", "status"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(status["keks"]["card"][0]["state"], "destroyed");
    assert!(
        !std::fs::read_to_string(app.dir.path().join("data/keyring.json"))
            .unwrap()
            .contains(&key_hex)
    );

    // Every key operation is in the access log, with the operator.
    let log: Value = app
        .client(Role::Auditor)
        .get(app.url("/v1/audit/log?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["role"] == "operator")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("keys rotate", "allowed"),
        ("keys destroy", "denied"),
        ("keys rewrap", "allowed"),
        ("keys destroy", "allowed"),
    ] {
        assert!(
            ops.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {ops:?}"
        );
    }
    assert!(log["entries"].as_array().unwrap().iter().any(|e| {
        e["cert_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("os-user:")
    }));
}
