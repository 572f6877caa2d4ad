//! Key life cycle: rotation picked up by a running server, rewrap without
//! touching ciphertexts, destruction refused while in use, every operation
//! logged.

use std::process::Command;
use std::time::Duration;

use checkoutd::crypto::DataClass;
use checkoutd::server::identity::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_succeeded, spawn_app};
use crate::orders::order_json;

fn checkoutd(app: &TestApp) -> Command {
    app.command()
}

/// Runs a CLI command against `app`'s data; it must succeed.
fn cli_ok(app: &TestApp, args: &[&str]) {
    let out = checkoutd(app).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a CLI command against `app`'s database with the keyring in `data`
/// (another host's copy, a restored backup).
fn run_in(app: &TestApp, data: &std::path::Path, args: &[&str]) -> std::process::Output {
    checkoutd(app)
        .env("CHECKOUTD_DATA_DIR", data)
        .args(args)
        .output()
        .unwrap()
}

/// The development keyring's file and master key.
fn keyring_file(app: &TestApp) -> (std::path::PathBuf, checkoutd::crypto::master::MasterKey) {
    let data = app.dir.path().join("data");
    let master = checkoutd::crypto::master::MasterKey::load_dev(&data.join("master.key")).unwrap();
    (data.join("keyring.json"), master)
}

pub async fn order(app: &TestApp, key: &str) -> String {
    // Right after a rotation a server may answer 503 (retryable) until it
    // has picked up the new keyring; a storefront retries with the same key.
    for _ in 0..50 {
        let r = app.post_order(key, &order_json()).await;
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        return v["order_id"].as_str().unwrap().to_owned();
    }
    panic!("the order was never accepted");
}

pub async fn card_version(app: &TestApp, order_id: &str) -> u64 {
    let v: Value = app
        .get_json(Role::Auditor, &format!("/v1/audit/orders/{order_id}"))
        .await;
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

/// No task of a running server keeps a keyring that a reload replaced: a
/// KEK that `keys destroy` takes out of the file must leave the process's
/// memory with the keyring that held it (the access-log writer held the
/// start-up keyring, every class's KEKs, for the life of the process).
#[tokio::test]
async fn a_replaced_keyring_is_let_go_by_the_running_server() {
    let app = spawn_app().await;
    order(&app, "let-go-1").await;
    let _ = app.shipments("").await;
    let started = std::sync::Arc::downgrade(&app.state.keyring.current());
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let mut reloaded = false;
    for _ in 0..100 {
        let current = app.state.keyring.current();
        if !std::ptr::eq(std::sync::Arc::as_ptr(&current), started.as_ptr()) {
            reloaded = true;
            break;
        }
        drop(current);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the server never reloaded the rotated keyring");
    // Every path runs once more under the new keyring.
    order(&app, "let-go-2").await;
    let _ = app.shipments("").await;
    let _: Value = app.get_json(Role::Auditor, "/v1/audit/report").await;
    let mut gone = false;
    for _ in 0..50 {
        if started.upgrade().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "a task still holds the keyring the server started with ({} holders)",
        started.strong_count()
    );
}

/// A data directory `name` beside `app`'s holding a copy of its keyring and
/// development master key: another host's copy, or a backup.
fn copy_of_the_keyring(app: &TestApp, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let data = app.dir.path().join("data");
    let copy = app.dir.path().join(name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&copy)
        .unwrap();
    for file in ["keyring.json", "master.key"] {
        std::fs::copy(data.join(file), copy.join(file)).unwrap();
    }
    copy
}

/// Two copies of one keyring — two hosts on one database, the rotated file
/// not yet copied to the second — must not both rotate: each would make
/// its own card/v2, and the records sealed under one of them could never
/// be opened. The stale copy is refused (and the refusal logged) until the
/// newest file is installed.
#[tokio::test]
async fn a_stale_copy_of_the_keyring_cannot_rotate_again() {
    let app = spawn_app().await;
    order(&app, "stale-copy-1").await;
    let data = app.dir.path().join("data");
    let other = copy_of_the_keyring(&app, "other-host");
    // `keys rotate --class <class>` run with the other host's copy.
    let rotate = |class: &str, extra: &[&str]| {
        checkoutd(&app)
            .env("CHECKOUTD_DATA_DIR", &other)
            .args(["keys", "rotate", "--class", class])
            .args(extra)
            .output()
            .unwrap()
    };
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    order(&app, "stale-copy-2").await;
    let stale = std::fs::read(other.join("keyring.json")).unwrap();
    let out = rotate("card", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stale keyring rotated: {stderr}");
    assert!(stderr.contains("another copy of the keyring"), "{stderr}");
    assert_eq!(std::fs::read(other.join("keyring.json")).unwrap(), stale);
    // Nor another class: the two files would fork, and installing either
    // would lose the other's new key.
    let out = rotate("billing", &[]);
    assert!(!out.status.success(), "a stale keyring rotated billing");
    assert_eq!(std::fs::read(other.join("keyring.json")).unwrap(), stale);
    // With the newest file installed, the card class rotates on.
    std::fs::copy(data.join("keyring.json"), other.join("keyring.json")).unwrap();
    let out = rotate("card", &[]);
    assert_succeeded(&out);
    assert!(
        logged_denied(&app, "keys rotate").await,
        "the refused rotation is not in the access log"
    );
    // A keyring restored from a backup older than the database's last
    // rotation, with no newer copy left: refused as above, unless asked to
    // recover, which numbers the new version above every version the
    // database knows: card/v2 wraps records and is recorded retired, and
    // card/v3, made just above by the other copy, is in the access log
    // (wrapping nothing, retired nowhere: before, the recovery made a
    // second card/v3).
    std::fs::write(other.join("keyring.json"), &stale).unwrap();
    let refused = rotate("card", &[]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--after-keyring-restore"),
        "the way out is named: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let recovered = rotate("card", &["--after-keyring-restore"]);
    assert_succeeded(&recovered);
    let made = String::from_utf8_lossy(&recovered.stdout);
    assert!(made.contains("card/v4"), "{made}");
}

/// A rotation another copy of the keyring made and logged, but whose
/// retirement the database never recorded (that host crashed after saving
/// its file, or both ran at once): the log, written before any file is
/// saved, stops this copy from making a second card/v2. One that failed to
/// save (logged again, denied) stops nothing.
#[tokio::test]
async fn a_rotation_logged_elsewhere_stops_a_second_key_under_its_number() {
    use checkoutd::audit::access_log::Outcome;
    let app = spawn_app().await;
    order(&app, "elsewhere-1").await;
    let (path, master) = keyring_file(&app);
    let keyring = checkoutd::crypto::keyring::Keyring::load(&path, &master).unwrap();
    let store = app.store().await;
    let log = |outcome| {
        checkoutd::keys::log_operation(
            &store,
            &keyring,
            "keys rotate".into(),
            vec!["card/v2".into()],
            outcome,
        )
    };
    // Made elsewhere and its file not saved: taken back, nothing stops.
    log(Outcome::Allowed).await.unwrap();
    log(Outcome::Denied).await.unwrap();
    let other = copy_of_the_keyring(&app, "other-host");
    let rotate = |extra: &[&str]| {
        let args: Vec<&str> = ["keys", "rotate", "--class", "card"]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        run_in(&app, &other, &args)
    };
    // Made elsewhere, saved there, retirement never recorded.
    log(Outcome::Allowed).await.unwrap();
    let before = std::fs::read(other.join("keyring.json")).unwrap();
    let refused = rotate(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a second card/v2 was made: {stderr}"
    );
    assert!(stderr.contains("card/v2"), "{stderr}");
    assert_eq!(
        std::fs::read(other.join("keyring.json")).unwrap(),
        before,
        "the keyring file changed"
    );
    assert!(logged_denied(&app, "keys rotate").await);
    // With no copy holding card/v2, the recovery numbers above it.
    let recovered = rotate(&["--after-keyring-restore"]);
    assert_succeeded(&recovered);
    let made = String::from_utf8_lossy(&recovered.stdout);
    assert!(made.contains("card/v3"), "{made}");
    // And a fresh copy whose only rival was taken back rotates as usual.
    let fresh = spawn_app().await;
    let (path, master) = keyring_file(&fresh);
    let keyring = checkoutd::crypto::keyring::Keyring::load(&path, &master).unwrap();
    let store = fresh.store().await;
    for outcome in [Outcome::Allowed, Outcome::Denied] {
        checkoutd::keys::log_operation(
            &store,
            &keyring,
            "keys rotate".into(),
            vec!["card/v2".into()],
            outcome,
        )
        .await
        .unwrap();
    }
    cli_ok(&fresh, &["keys", "rotate", "--class", "card"]);
    // An entry that does not verify (damaged or planted) stops nothing:
    // it would stop every rotation for good.
    sqlx::query(
        "INSERT INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action, objects,
             outcome, status, prev_hash, hash, mac)
         SELECT seq + 10, at, role, cert_fingerprint, origin_ip, 'keys rotate',
             '[\"card/v3\",\"card/v999999\"]', 'allowed', status, prev_hash, hash, mac
           FROM access_log ORDER BY seq DESC LIMIT 1",
    )
    .execute(&fresh.db().await)
    .await
    .unwrap();
    cli_ok(&fresh, &["keys", "rotate", "--class", "card"]);
}

/// A recovery (`--after-keyring-restore`) racing another rotation of the
/// same class: the other's entry for the very version the recovery makes
/// lands between the recovery's snapshot of the log and its own entry.
/// Both would hold a different key under one number; the recovery stops,
/// its file unchanged. (The rival entry is put in by a trigger of the
/// test's own the moment the recovery logs, verified under the log's key:
/// what another host's rotation writes.)
#[tokio::test]
async fn a_recovery_racing_another_rotation_stops_instead_of_a_second_key_under_its_number() {
    use checkoutd::audit::access_log::{Chainer, Entry, Outcome};
    let app = spawn_app().await;
    order(&app, "race-1").await;
    let (path, master) = keyring_file(&app);
    let keyring = checkoutd::crypto::keyring::Keyring::load(&path, &master).unwrap();
    let rival = Entry {
        at: checkoutd::ids::now(),
        role: "operator".into(),
        cert_fingerprint: String::new(),
        origin_ip: "-".into(),
        action: "keys rotate".into(),
        // What the recovery makes: above card/v1, the only version there is.
        objects: vec!["card/v2".into()],
        outcome: Outcome::Allowed,
        status: 0,
    };
    let seq = 900_000u64;
    let prev = [7u8; 32];
    let (hash, mac) = Chainer::new(keyring.access_log_key()).link(seq, &prev, &rival);
    let pg = app.database.is_postgres();
    let blob = |b: &[u8]| {
        let h = checkoutd::hex::encode(b);
        if pg {
            format!("'\\x{h}'::bytea")
        } else {
            format!("X'{h}'")
        }
    };
    let insert = format!(
        "INSERT INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action, objects, \
         outcome, status, prev_hash, hash, mac) VALUES ({seq}, '{}', '{}', '', '-', \
         'keys rotate', '{}', 'allowed', 0, {}, {}, {})",
        rival.at,
        rival.role,
        rival.objects_json(),
        blob(&prev),
        blob(&hash),
        blob(&mac),
    );
    let when = "NEW.action = 'keys rotate' AND NEW.outcome = 'allowed' AND NEW.seq < 900000";
    let db = app.db().await;
    let trigger = if pg {
        format!(
            "CREATE FUNCTION test_rival() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF {when} THEN {insert}; END IF; RETURN NULL; END $$; \
             CREATE TRIGGER test_rival AFTER INSERT ON access_log FOR EACH ROW \
             EXECUTE FUNCTION test_rival();"
        )
    } else {
        format!(
            "CREATE TRIGGER test_rival AFTER INSERT ON access_log WHEN {when} \
             BEGIN {insert}; END;"
        )
    };
    sqlx::raw_sql(&trigger).execute(&db).await.unwrap();
    let recovering = copy_of_the_keyring(&app, "recovering");
    let before = std::fs::read(recovering.join("keyring.json")).unwrap();
    let out = run_in(
        &app,
        &recovering,
        &[
            "keys",
            "rotate",
            "--class",
            "card",
            "--after-keyring-restore",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second card/v2 was made: {stderr}");
    assert!(stderr.contains("card/v2"), "{stderr}");
    assert_eq!(
        std::fs::read(recovering.join("keyring.json")).unwrap(),
        before,
        "the keyring file changed"
    );
    assert!(logged_denied(&app, "keys rotate").await);
    // The rival was put in: without it, the recovery goes ahead.
    let rivals: i64 = sqlx::query_scalar("SELECT count(*) FROM access_log WHERE seq = 900000")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rivals, 1);
}

/// Whether the access log holds a denied entry of `action`.
async fn logged_denied(app: &TestApp, action: &str) -> bool {
    app.access_log_entries()
        .await
        .iter()
        .any(|e| e["action"] == action && e["outcome"] == "denied")
}

/// A stale copy of the keyring — another host rotated since — must not
/// destroy a version either: it would write a file at the newest file's
/// generation, and the two would fork (installing it loses the newer
/// versions, installing the other brings the destroyed key back).
#[tokio::test]
async fn a_stale_copy_of_the_keyring_cannot_destroy() {
    let app = spawn_app().await;
    let data = app.dir.path().join("data");
    // card/v1 retired and wrapping nothing; the copy has card/v2 active.
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let other = copy_of_the_keyring(&app, "other-host");
    // The service's own copy rotates again: card/v3, card/v2 retired.
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let destroy = || {
        checkoutd(&app)
            .env("CHECKOUTD_DATA_DIR", &other)
            .args(["keys", "destroy", "--class", "card", "--version", "1"])
            .output()
            .unwrap()
    };
    let stale = std::fs::read(other.join("keyring.json")).unwrap();
    let out = destroy();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stale keyring destroyed: {stderr}");
    assert!(stderr.contains("install the newest keyring"), "{stderr}");
    assert_eq!(std::fs::read(other.join("keyring.json")).unwrap(), stale);
    assert!(
        logged_denied(&app, "keys destroy").await,
        "the refused destruction is not in the access log"
    );
    // With the newest file installed, it goes ahead.
    std::fs::copy(data.join("keyring.json"), other.join("keyring.json")).unwrap();
    let out = destroy();
    assert_succeeded(&out);
}

/// The state of `name` (`card/v1`) in the keys status of the keyring in
/// `data`.
fn kek_state(app: &TestApp, data: &std::path::Path, name: &str) -> String {
    let out = run_in(app, data, &["keys", "status"]);
    assert_succeeded(&out);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let class = name.split('/').next().unwrap();
    status["keks"][class]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .map(|k| k["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A copy of the keyring from before a `keys destroy` (a backup, another
/// host's file) still holds the destroyed key. It must not rotate or
/// destroy anything else: its file would fork from the newest one, and
/// installing it would bring the destroyed key back. It may destroy that
/// key again, and a recovery with `--after-keyring-restore` destroys it.
#[tokio::test]
async fn a_copy_of_the_keyring_from_before_a_destroy_cannot_change_anything_else() {
    let app = spawn_app().await;
    // card/v1 retired, wrapping nothing; both copies hold it.
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let backup = copy_of_the_keyring(&app, "backup");
    let restored = copy_of_the_keyring(&app, "restored");
    cli_ok(
        &app,
        &["keys", "destroy", "--class", "card", "--version", "1"],
    );
    assert_eq!(kek_state(&app, &backup, "card/v1"), "retired");
    let stale = std::fs::read(backup.join("keyring.json")).unwrap();
    for args in [
        &["keys", "rotate", "--class", "billing"][..],
        &["keys", "rotate", "--class", "card"][..],
    ] {
        let out = run_in(&app, &backup, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("card/v1 was destroyed"), "{stderr}");
        assert!(stderr.contains("install the newest keyring"), "{stderr}");
        assert_eq!(std::fs::read(backup.join("keyring.json")).unwrap(), stale);
    }
    assert!(logged_denied(&app, "keys rotate").await);
    // Destroying that key again is the way out (no newer copy at hand).
    let out = run_in(
        &app,
        &backup,
        &["keys", "destroy", "--class", "card", "--version", "1"],
    );
    assert_succeeded(&out);
    assert_eq!(kek_state(&app, &backup, "card/v1"), "destroyed");
    assert_succeeded(&run_in(
        &app,
        &backup,
        &["keys", "rotate", "--class", "billing"],
    ));
    // A recovery destroys it as it goes.
    let out = run_in(
        &app,
        &restored,
        &[
            "keys",
            "rotate",
            "--class",
            "contact",
            "--after-keyring-restore",
        ],
    );
    assert_succeeded(&out);
    assert_eq!(kek_state(&app, &restored, "card/v1"), "destroyed");
    assert_eq!(kek_state(&app, &restored, "contact/v2"), "active");
}

/// `keys rotate --class card --after-keyring-restore` run with the keyring
/// in `restored`: what it made (stdout).
fn recover_card_class(app: &TestApp, restored: &std::path::Path) -> String {
    let out = checkoutd(app)
        .env("CHECKOUTD_DATA_DIR", restored)
        .args([
            "keys",
            "rotate",
            "--class",
            "card",
            "--after-keyring-restore",
        ])
        .output()
        .unwrap();
    assert_succeeded(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the database records card/v2 retired.
async fn card_v2_retired(app: &TestApp) -> bool {
    let retired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM kek_retirements WHERE class = 'card' AND version = 2",
    )
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    retired == 1
}

/// Recovering a restored keyring retires the versions it lacks that wrap
/// records (the lost keyring's): a server still holding the lost keyring
/// fails closed (503) instead of sealing under a key no file holds.
#[tokio::test]
async fn a_recovered_keyring_retires_the_versions_it_lost() {
    let app = spawn_app().await;
    order(&app, "lost-1").await;
    let restored = copy_of_the_keyring(&app, "restored");
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    order(&app, "lost-2").await; // sealed under card/v2, which the backup lacks
    let made = recover_card_class(&app, &restored);
    assert!(made.contains("card/v3"), "{made}");
    assert!(
        card_v2_retired(&app).await,
        "the lost card/v2 was not retired"
    );
    // The running server still holds card/v2 (the lost keyring): refused.
    let r = app.post_order("lost-3", &order_json()).await;
    assert_eq!(r.status(), 503);
}

/// After a recovery, `keys rewrap` moves what the restored keyring can open
/// (card/v1) to the new version and leaves the records under the version
/// it lost (card/v2), saying so — they never stop it — so the version
/// still held can then be destroyed.
#[tokio::test]
async fn a_rewrap_after_a_recovery_moves_what_it_can_and_names_what_it_cannot() {
    let app = spawn_app().await;
    for n in 0..3 {
        order(&app, &format!("held-{n}")).await; // card/v1
    }
    let restored = copy_of_the_keyring(&app, "restored");
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    order(&app, "lost-1").await; // card/v2, which the backup lacks
    let made = recover_card_class(&app, &restored);
    assert!(made.contains("card/v3"), "{made}");
    let in_restored = |args: &[&str]| run_in(&app, &restored, args);
    // Batches of one: the lost version's record must not stop any batch.
    let rewrap = in_restored(&["keys", "rewrap", "--class", "card", "--batch", "1"]);
    assert_succeeded(&rewrap);
    let said = String::from_utf8_lossy(&rewrap.stdout);
    assert!(said.contains("re-wrapped 3 record(s)"), "{said}");
    assert!(said.contains("left 1 record(s) under card/v2"), "{said}");
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT kek_version FROM payment_cards ORDER BY kek_version")
            .fetch_all(&app.db().await)
            .await
            .unwrap();
    assert_eq!(versions, [2, 3, 3, 3]);
    assert_succeeded(&in_restored(&[
        "keys",
        "destroy",
        "--class",
        "card",
        "--version",
        "1",
    ]));
}

/// The lost keyring's newest version may wrap nothing yet (no order since
/// its rotation) and no retirement names an active version: its number is
/// known from the access log, which records every rotation before the file
/// is saved. The recovery numbers above it, and retires it, so a server
/// still holding it fails closed instead of sealing under a number the new
/// file gives to another key.
#[tokio::test]
async fn a_recovered_keyring_numbers_above_a_lost_version_that_wraps_nothing() {
    let app = spawn_app().await;
    let restored = copy_of_the_keyring(&app, "restored");
    cli_ok(&app, &["keys", "rotate", "--class", "card"]); // card/v2, no order under it
    // An entry in the log that does not verify (damaged, or planted),
    // beyond the head row: a plausible version it names counts (numbering
    // above a version never made costs nothing), the highest version there
    // is does not (no version could be made above it).
    let db = app.db().await;
    sqlx::query(
        "INSERT INTO access_log (seq, at, role, cert_fingerprint, origin_ip, action, objects,
             outcome, status, prev_hash, hash, mac)
         SELECT seq + 10, at, role, cert_fingerprint, origin_ip, 'keys rotate',
             '[\"card/v7\",\"card/v4294967295\"]', 'allowed', status, prev_hash, hash, mac
           FROM access_log ORDER BY seq DESC LIMIT 1",
    )
    .execute(&db)
    .await
    .unwrap();
    let made = recover_card_class(&app, &restored);
    assert!(made.contains("card/v8"), "{made}");
    assert!(
        card_v2_retired(&app).await,
        "the lost card/v2 was not retired"
    );
    // The running server holds the lost keyring (card/v2 active): refused.
    let r = app.post_order("lost-nothing-1", &order_json()).await;
    assert_eq!(r.status(), 503);
}

/// A report run that began under the keyring before a rotation, while
/// orders were sealed under the new version (or records re-wrapped): run
/// again under the keyring in force, not signed with failures that are not
/// there. Alone, the old keyring does find them (the run is not blind).
#[tokio::test]
async fn a_report_run_across_a_rotation_signs_no_false_failure() {
    use checkoutd::audit::job::{KeyringSource, ReportJob};
    use checkoutd::crypto::keyring::Keyring;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Rotated {
        asked: AtomicUsize,
        before: Arc<Keyring>,
        after: Arc<Keyring>,
    }
    impl KeyringSource for Rotated {
        fn current(&self) -> Arc<Keyring> {
            if self.asked.fetch_add(1, Ordering::SeqCst) == 0 {
                self.before.clone()
            } else {
                self.after.clone()
            }
        }
    }
    let app = spawn_app().await;
    order(&app, "across-1").await;
    let before = Arc::new(app.keyring());
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    order(&app, "across-2").await;
    let after = Arc::new(app.keyring());
    let store: Arc<dyn checkoutd::store::Store> = Arc::new(app.store().await);
    async fn report(store: Arc<dyn checkoutd::store::Store>, source: impl KeyringSource) -> Value {
        let job = Arc::new(ReportJob::with_freshness(Duration::ZERO));
        let signed = job
            .latest_or_start(store, source, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        (*signed).clone()
    }
    let stale = report(store.clone(), before.clone()).await;
    assert_eq!(
        stale["report"]["verified"], false,
        "the old keyring misses v2"
    );
    let across = report(
        store,
        Rotated {
            asked: AtomicUsize::new(0),
            before,
            after,
        },
    )
    .await;
    assert_eq!(across["report"]["verified"], true, "{across:#}");
}

/// `keys` run without the service's database setting (another URL, or
/// none: the data directory's default file) must not count "no record
/// uses card/v1" in the wrong database and destroy a key the real one
/// still needs: a missing SQLite file is not created, and a database that
/// never saw the version retired refuses the destruction.
#[tokio::test]
async fn keys_against_another_database_destroy_nothing() {
    let app = spawn_app().await;
    let first = order(&app, "w-1").await;
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let elsewhere = app.dir.path().join("elsewhere.db");
    let other_url = format!("sqlite://{}", elsewhere.display());
    let against_other = |args: &[&str]| {
        checkoutd(&app)
            .env("CHECKOUTD_DATABASE_URL", &other_url)
            .args(args)
            .output()
            .unwrap()
    };
    let destroy = ["keys", "destroy", "--class", "card", "--version", "1"];
    let out = against_other(&destroy);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!elsewhere.exists(), "keys destroy created a database");
    let out = against_other(&["keys", "status"]);
    assert!(!out.status.success());
    assert!(!elsewhere.exists(), "keys status created a database");
    // An existing database that never saw card/v1 retired (no record
    // under it there) is not taken at its word.
    let out = against_other(&["migrate"]);
    assert_succeeded(&out);
    let out = against_other(&destroy);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no record of card/v1's retirement"),
        "{stderr}"
    );
    // The key is intact: the first order's card still opens.
    assert_eq!(card_version(&app, &first).await, 1);
    // Against the service's database, after the rewrap, it goes.
    cli_ok(&app, &["keys", "rewrap", "--class", "card"]);
    cli_ok(&app, &destroy);
    let report = checkoutd::audit::verify::verify(&app.store().await, &app.keyring(), &|_, _| {})
        .await
        .unwrap();
    assert!(report.verified, "{:#?}", report.failures);
    assert_eq!(
        serde_json::to_value(&report.totals.kek_versions["card"]).unwrap(),
        serde_json::json!({"2": 1})
    );
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
    assert_succeeded(&out);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["keks"]["card"][0]["records"], 1);
    assert_eq!(status["keks"]["card"][0]["state"], "active");
    // No key material: no 64-hex-digit run anywhere in the output.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let longest_hex = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_hex < 64, "{text}");

    // Rotate every class while the server runs; it picks the keyring up.
    let stale = app.keyring();
    let out = checkoutd(&app)
        .args(["keys", "rotate", "--class", "all"])
        .output()
        .unwrap();
    assert_succeeded(&out);
    // A server still holding the old keyring cannot store a record sealed
    // under a retired version: the database refuses it (fail closed).
    {
        let versions = vec!["2002-06-05".to_owned()];
        let rules = checkoutd::domain::order::Rules {
            policy_versions: &versions,
            now: time::OffsetDateTime::now_utc(),
        };
        let form = checkoutd::domain::order::parse(
            order_json(),
            checkoutd::domain::order::Source::Json,
            &rules,
        )
        .unwrap();
        let key = checkoutd::intake::IdempotencyKey::parse(b"stale-1").unwrap();
        let sealed = checkoutd::intake::seal::seal_order(
            &ring::rand::SystemRandom::new(),
            &stale,
            form,
            [7; 32],
            &key,
            [0; 32],
        )
        .unwrap();
        let store = app.store().await;
        let refused = checkoutd::store::Store::commit_orders(&store, [sealed].into()).await;
        assert!(
            refused.is_err(),
            "a record sealed under a retired KEK version was stored"
        );
    }
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
    let _before_rewrap = app.keyring();
    let ciphertext_before: Vec<u8> =
        sqlx::query_scalar("SELECT ciphertext FROM payment_cards WHERE order_id = $1")
            .bind(&first)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    // A run interrupted after the card class (batches of one): the billing
    // and other classes are still under v1 when the next run resumes.
    let (path, master) = keyring_file(&app);
    let done = checkoutd::keys::rewrap(&store, &path, &master, &[DataClass::Card], 1, &|_| {})
        .await
        .unwrap();
    assert!(done >= 1, "card keys re-wrapped");
    let usage = checkoutd::store::Store::kek_usage(&store, DataClass::Billing)
        .await
        .unwrap();
    assert!(
        usage.get(&1).is_some_and(|n| *n >= 1),
        "other classes still to do"
    );
    let out = checkoutd(&app)
        .args(["keys", "rewrap", "--batch", "1"])
        .output()
        .unwrap();
    assert_succeeded(&out);
    for class in DataClass::ALL {
        let usage = checkoutd::store::Store::kek_usage(&store, class)
            .await
            .unwrap();
        assert!(usage.keys().all(|v| *v == 2), "{class:?}: {usage:?}");
    }
    // Data ciphertexts untouched; everything opens; the audit is clean.
    let ciphertext_after: Vec<u8> =
        sqlx::query_scalar("SELECT ciphertext FROM payment_cards WHERE order_id = $1")
            .bind(&first)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(ciphertext_before, ciphertext_after);
    let keyring = app.keyring();
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
    assert_succeeded(&out);
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
        app.keyring().opening_kek(DataClass::Card, 1).is_err(),
        "the key material is gone"
    );
    // Again: refused as already done, the file untouched (a rewrite
    // without a new generation would look like a restored backup).
    let (file, _) = keyring_file(&app);
    let before = std::fs::read(&file).unwrap();
    let out = checkoutd(&app)
        .args(["keys", "destroy", "--class", "card", "--version", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already destroyed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Every key operation is in the access log, with the operator.
    let log = app.access_log_entries().await;
    let ops: Vec<(String, String)> = log
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
    assert!(log.iter().any(|e| {
        e["cert_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("os-user:")
    }));
}

#[tokio::test]
async fn custodian_shares_are_all_needed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shares = dir.path().join("shares");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_checkoutd"))
            .env("CHECKOUTD_DATA_DIR", &data)
            .args(args)
            .output()
            .unwrap()
    };
    // One custodian is no split knowledge: a usage error (2) naming the
    // flag, before anything is created.
    let out = run(&[
        "keys",
        "init",
        "--custodians",
        "1",
        "--shares-dir",
        shares.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--custodians"));
    assert!(!data.exists(), "nothing created for a refused init");
    // Shares that cannot be written leave no keyring behind (it would open
    // nothing and block every later init).
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let out = run(&[
        "keys",
        "init",
        "--custodians",
        "2",
        "--shares-dir",
        blocker.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!data.join(checkoutd::crypto::keyring::FILE_NAME).exists());
    let init = || {
        run(&[
            "keys",
            "init",
            "--custodians",
            "2",
            "--shares-dir",
            shares.to_str().unwrap(),
        ])
    };
    // An init killed after writing the keyring, before its shares: the
    // next one is refused, and told how to start again (the database holds
    // nothing that depends on that keyring).
    assert!(data.is_dir(), "the refused init made the data directory");
    let orphan = data.join(checkoutd::crypto::keyring::FILE_NAME);
    std::fs::write(&orphan, b"{}").unwrap();
    let out = init();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped before writing its share files") && stderr.contains("remove"),
        "{stderr}"
    );
    std::fs::remove_file(&orphan).unwrap();
    let out = init();
    assert_succeeded(&out);
    let s1 = shares.join("share-1-of-2.json");
    let s2 = shares.join("share-2-of-2.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&s1).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(
        !data.join("master.key").exists(),
        "no development key in production mode"
    );
    // A second init is refused, with no word of removing the keyring the
    // database now depends on.
    let out = init();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("makes a new keyring only") && !stderr.contains("remove"),
        "{stderr}"
    );
    // Another data directory's init into the same shares directory is
    // refused before it makes a keyring: a share is never overwritten.
    let before = std::fs::read(&s1).unwrap();
    let other = dir.path().join("other");
    let out = Command::new(env!("CARGO_BIN_EXE_checkoutd"))
        .env("CHECKOUTD_DATA_DIR", &other)
        .args([
            "keys",
            "init",
            "--custodians",
            "2",
            "--shares-dir",
            shares.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("never overwrites a share"), "{stderr}");
    assert_eq!(std::fs::read(&s1).unwrap(), before);
    assert!(!other.join(checkoutd::crypto::keyring::FILE_NAME).exists());

    // Both shares: works. One share, or none: refused, saying why.
    let both = run(&[
        "keys",
        "status",
        "--master-key-share",
        s1.to_str().unwrap(),
        "--master-key-share",
        s2.to_str().unwrap(),
    ]);
    assert_succeeded(&both);
    let one = run(&["keys", "status", "--master-key-share", s1.to_str().unwrap()]);
    assert!(!one.status.success());
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("1 of 2"),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let none = run(&["keys", "status"]);
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("no --master-key-share was given"),
        "the operator is told the shares are missing: {stderr}"
    );
    // The environment variable takes a comma-separated list.
    let env = Command::new(env!("CARGO_BIN_EXE_checkoutd"))
        .env("CHECKOUTD_DATA_DIR", &data)
        .env(
            "CHECKOUTD_MASTER_KEY_SHARE",
            format!("{},{}", s1.display(), s2.display()),
        )
        .args(["keys", "status"])
        .output()
        .unwrap();
    assert_succeeded(&env);
    // The name an earlier release read is refused, naming its successor
    // (not ignored: a new data directory would get the development key).
    let old = Command::new(env!("CARGO_BIN_EXE_checkoutd"))
        .env("CHECKOUTD_DATA_DIR", &data)
        .env(
            "CHECKOUTD_MASTER_KEY_SHARES",
            format!("{},{}", s1.display(), s2.display()),
        )
        .args(["keys", "status"])
        .output()
        .unwrap();
    assert_eq!(old.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        stderr.contains("CHECKOUTD_MASTER_KEY_SHARE (") && !stderr.contains(&*s1.to_string_lossy()),
        "{stderr}"
    );
    // A corrupted share is named.
    let text = std::fs::read_to_string(&s2).unwrap();
    let bad = dir.path().join("bad.json");
    let v: Value = serde_json::from_str(&text).unwrap();
    let comp = v["component"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if comp.starts_with('a') { 'b' } else { 'a' },
        &comp[1..]
    );
    std::fs::write(&bad, text.replace(comp, &flipped)).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = run(&[
        "keys",
        "status",
        "--master-key-share",
        s1.to_str().unwrap(),
        "--master-key-share",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));

    // Production key handling never gets a development PKI made for it:
    // with no server certificate, the start is refused and nothing written.
    let empty = dir.path().join("no-certs");
    let refused = checkoutd::app::Application::build(
        &checkoutd::config::Settings::from_args(&checkoutd::cli::ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            certs_dir: Some(empty.clone()),
            store: checkoutd::cli::StoreArgs {
                data_dir: Some(data.clone()),
                master_key_shares: vec![s1.clone(), s2.clone()],
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap(),
    )
    .await
    .err()
    .expect("a development PKI was made for a production configuration");
    assert!(
        refused.to_string().contains("no development PKI"),
        "{refused}"
    );
    assert!(!empty.join("ca.pem").exists());
    // The service starts with the shares and takes orders.
    let pki = checkoutd::pki::DevPki::generate().unwrap();
    pki.write_to(&dir.path().join("certs")).unwrap();
    let args = checkoutd::cli::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        certs_dir: Some(dir.path().join("certs")),
        store: checkoutd::cli::StoreArgs {
            data_dir: Some(data.clone()),
            master_key_shares: vec![s1.clone(), s2.clone()],
            ..Default::default()
        },
        ..Default::default()
    };
    let settings = checkoutd::config::Settings::from_args(&args).unwrap();
    assert!(
        checkoutd::app::Application::build(&checkoutd::config::Settings {
            store: checkoutd::config::StoreSettings {
                master_key_shares: vec![s1.clone()],
                ..settings.store.clone()
            },
            ..settings.clone()
        })
        .await
        .is_err(),
        "one share is not enough to serve"
    );
    let app = checkoutd::app::Application::build(&settings).await.unwrap();
    // Without --client-ca the certificates directory's CA is trusted: said
    // at every start.
    assert!(
        app.startup_notices()
            .iter()
            .any(|n| n.contains("--client-ca is not")),
        "{:?}",
        app.startup_notices()
    );
    let addr = app.local_addr();
    let server = tokio::spawn(app.run_until(std::future::pending()));
    let cert = pki.client(Role::Storefront).unwrap();
    let client = crate::helpers::client_with(
        &pki,
        Some((&cert.cert_pem, &cert.key_pem)),
        crate::helpers::Versions::Both,
    );
    let r = client
        .post(format!("https://localhost:{}/v1/orders", addr.port()))
        .header("idempotency-key", "custodian-1")
        .json(&order_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    server.abort();
}

/// The database's own retired-KEK guard, one class at a time: a batch
/// sealed by a server still holding the keyring from before the rotation is
/// refused whole (`RetiredKek`, nothing of it stored), and the same order
/// sealed under the new keyring is taken. Each class is its own trigger on
/// its own table (SQLite: per row; PostgreSQL: per statement, over the
/// statement's rows), so each is attacked alone; the gift order makes the
/// batch hold a recipient record and a shipping marker without a KEK.
#[tokio::test]
async fn each_retired_class_alone_is_refused_by_the_database() {
    let app = spawn_app().await;
    let store = app.store().await;
    let versions = vec!["2002-06-05".to_owned()];
    let rules = checkoutd::domain::order::Rules {
        policy_versions: &versions,
        now: time::OffsetDateTime::now_utc(),
    };
    let seal = |keyring: &checkoutd::crypto::keyring::Keyring, n: usize, key: &str| {
        let body = if n.is_multiple_of(2) {
            order_json()
        } else {
            crate::fulfillment::gift_order_for_audit()
        };
        let form =
            checkoutd::domain::order::parse(body, checkoutd::domain::order::Source::Json, &rules)
                .unwrap();
        let key = checkoutd::intake::IdempotencyKey::parse(key.as_bytes()).unwrap();
        checkoutd::intake::seal::seal_order(
            &ring::rand::SystemRandom::new(),
            keyring,
            form,
            [7; 32],
            &key,
            [0; 32],
        )
        .unwrap()
    };
    let db = app.db().await;
    let count = |table: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let orders = || count("orders");
    for (i, class) in ["card", "billing", "shipping", "recipient", "contact"]
        .into_iter()
        .enumerate()
    {
        let stale = app.keyring();
        let out = checkoutd(&app)
            .args(["keys", "rotate", "--class", class])
            .output()
            .unwrap();
        assert_succeeded(&out);
        let mut before = orders().await;
        // Four orders (two of them gifts) in one batch, as group commit
        // hands them over.
        let batch: Vec<_> = (0..4)
            .map(|n| seal(&stale, n, &format!("retired-{class}-{n}")))
            .collect();
        let refused = checkoutd::store::Store::commit_orders(&store, batch.into()).await;
        assert!(
            matches!(refused, Err(checkoutd::store::StoreError::RetiredKek)),
            "class {class}: a batch sealed under its retired KEK was not refused: {refused:?}"
        );
        assert_eq!(orders().await, before, "class {class}: nothing stored");
        if class == "card" {
            // One stale order among current ones: a batch is one
            // transaction, so nothing of it is stored — not even the
            // current orders' idempotency claims, which a retry would
            // otherwise find taken (and replay an order that was never
            // stored).
            let keys = || count("idempotency_keys");
            let keys_before = keys().await;
            let current = app.keyring();
            let mixed = vec![
                seal(&current, 0, "mixed-0"),
                seal(&stale, 1, "mixed-1"),
                seal(&current, 2, "mixed-2"),
            ];
            let refused = checkoutd::store::Store::commit_orders(&store, mixed.into()).await;
            assert!(
                matches!(refused, Err(checkoutd::store::StoreError::RetiredKek)),
                "a batch with one stale order was not refused: {refused:?}"
            );
            assert_eq!(orders().await, before, "a refused batch stored orders");
            assert_eq!(keys().await, keys_before, "a refused batch kept claims");
            let retried = vec![seal(&current, 0, "mixed-0"), seal(&current, 2, "mixed-2")];
            assert_eq!(
                checkoutd::store::Store::commit_orders(&store, retried.into())
                    .await
                    .unwrap(),
                vec![checkoutd::store::rows::CommitOutcome::Committed; 2],
                "the current orders' keys were left claimed"
            );
            before += 2;
            assert_eq!(orders().await, before);
        }
        if class == "contact" {
            // The withdrawal ledger seals its reference under the contact
            // KEK too, and has its own guard.
            let ledger = checkoutd::consent::Ledger::new(std::sync::Arc::new(
                checkoutd::crypto::keyring::KeyringHandle::new(stale, None),
            ));
            let withdrawal = |reference: &str| checkoutd::consent::Withdrawal {
                email: checkoutd::domain::contact::Email::parse("ada@example.com").unwrap(),
                purposes: [true; 5],
                channel: checkoutd::consent::Channel::Postal,
                received_at: None,
                reference: Some(
                    checkoutd::domain::text::Personal::parse(reference, 200, false).unwrap(),
                ),
            };
            let refused = ledger.withdraw(&store, &withdrawal("scan-stale")).await;
            assert!(
                matches!(
                    refused,
                    Err(checkoutd::consent::LedgerError::Store(
                        checkoutd::store::StoreError::RetiredKek
                    ))
                ),
                "a withdrawal reference sealed under the retired contact KEK was stored: {refused:?}"
            );
            let current = checkoutd::consent::Ledger::new(std::sync::Arc::new(
                checkoutd::crypto::keyring::KeyringHandle::new(app.keyring(), None),
            ));
            current
                .withdraw(&store, &withdrawal("scan-current"))
                .await
                .unwrap();
        }
        // The control: the same orders under the current keyring are taken,
        // so the refusal above was the retired class and nothing else.
        let fresh = app.keyring();
        let batch: Vec<_> = (0..4)
            .map(|n| seal(&fresh, n, &format!("current-{class}-{n}")))
            .collect();
        let taken = checkoutd::store::Store::commit_orders(&store, batch.into())
            .await
            .unwrap();
        assert!(
            taken
                .iter()
                .all(|o| *o == checkoutd::store::rows::CommitOutcome::Committed),
            "class {class} (round {i}): {taken:?}"
        );
        assert_eq!(orders().await, before + 4);
    }
}

#[tokio::test]
async fn a_rewrap_follows_a_rotation_made_while_it_runs() {
    // Each batch reads the keyring anew, under its lock: a rotation (or a
    // destroy) falls between two batches, and the batches after it go to
    // the new active version. A run that kept the version it started with
    // would go on filling a version that may meanwhile be retired and
    // destroyed (its records then lost).
    let app = spawn_app().await;
    for i in 0..4 {
        order(&app, &format!("follow-{i}")).await;
    }
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let (path, master) = keyring_file(&app);
    let rotated = std::sync::atomic::AtomicBool::new(false);
    let rotate_once = |done: u64| {
        if done == 1 && !rotated.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let mut keyring = checkoutd::crypto::keyring::Keyring::load(&path, &master).unwrap();
            let version = keyring
                .rotate(
                    &ring::rand::SystemRandom::new(),
                    DataClass::Card,
                    &checkoutd::ids::now(),
                )
                .unwrap();
            assert_eq!(version, 3);
            keyring.save(&path, &master).unwrap();
        }
    };
    let store = app.store().await;
    let done = checkoutd::keys::rewrap(&store, &path, &master, &[DataClass::Card], 1, &rotate_once)
        .await
        .unwrap();
    assert!(rotated.load(std::sync::atomic::Ordering::SeqCst));
    // The first record went to v2, then v3 became active: every card key,
    // that one included, ends under v3.
    assert_eq!(done, 5, "4 from v1, then the one re-wrapped to v2 again");
    let usage = checkoutd::store::Store::kek_usage(&store, DataClass::Card)
        .await
        .unwrap();
    assert_eq!(
        usage.keys().copied().collect::<Vec<_>>(),
        vec![3],
        "{usage:?}"
    );
}

#[tokio::test]
async fn a_rewrap_that_fails_part_way_is_still_logged() {
    let app = spawn_app().await;
    let first = order(&app, "part-1").await;
    order(&app, "part-2").await;
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    // One card's wrapped key damaged: the run stops there, whatever it
    // re-wrapped before that committed.
    let db = app.db().await;
    let mut wrapped: Vec<u8> =
        sqlx::query_scalar("SELECT wrapped_dek FROM payment_cards WHERE order_id = $1")
            .bind(&first)
            .fetch_one(&db)
            .await
            .unwrap();
    wrapped[20] ^= 1;
    sqlx::query("UPDATE payment_cards SET wrapped_dek = $1 WHERE order_id = $2")
        .bind(wrapped)
        .bind(&first)
        .execute(&db)
        .await
        .unwrap();
    let out = checkoutd(&app)
        .args(["keys", "rewrap", "--class", "card", "--batch", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the damaged key stops the run");
    let log = app.access_log_entries().await;
    let rewraps: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "keys rewrap")
        .collect();
    assert_eq!(rewraps.len(), 1, "{log:#?}");
    // The start was logged before any batch (a run killed part way leaves
    // that entry).
    let started = log.iter().position(|e| {
        e["action"] == "keys rewrap started" && e["objects"] == serde_json::json!(["card"])
    });
    let ended = log.iter().position(|e| e["action"] == "keys rewrap");
    assert!(started.is_some() && started < ended, "{log:#?}");
    assert!(
        rewraps[0].to_string().contains("records:"),
        "{:#}",
        rewraps[0]
    );
}

/// A directory nothing can create files in until the guard is dropped:
/// mode 0500 — and for root, whom modes do not stop, each command run
/// through [`Unwritable::command`] runs without `CAP_DAC_OVERRIDE` (dropped
/// from its capability bounding set by util-linux's `setpriv`), so the mode
/// stops it on any filesystem; where that cannot be done, the immutable
/// attribute (`chattr +i`, ext4 and most disk filesystems).
struct Unwritable {
    dir: std::path::PathBuf,
    without_override: bool,
}

/// The `setpriv` arguments that drop `CAP_DAC_OVERRIDE` from what follows:
/// root's program gets its inheritable set as well as the bounding set's
/// (a container may hand root a full inheritable set), so both.
const WITHOUT_OVERRIDE: [&str; 3] = [
    "--inh-caps=-dac_override",
    "--bounding-set=-dac_override",
    "--",
];

impl Unwritable {
    fn new(dir: &std::path::Path) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join(".probe");
        let writable = || {
            let made = std::fs::write(&probe, b"").is_ok();
            let _ = std::fs::remove_file(&probe);
            made
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        if !writable() {
            return Unwritable {
                dir: dir.to_owned(),
                without_override: false,
            };
        }
        let setpriv = |tail: &[&std::ffi::OsStr]| {
            Command::new("setpriv")
                .args(WITHOUT_OVERRIDE)
                .args(tail)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if setpriv(&["true".as_ref()]) {
            let touched = setpriv(&["touch".as_ref(), probe.as_os_str()]);
            let _ = std::fs::remove_file(&probe);
            if !touched {
                return Unwritable {
                    dir: dir.to_owned(),
                    without_override: true,
                };
            }
        }
        let _ = Command::new("chattr").arg("+i").arg(dir).output();
        assert!(
            !writable(),
            "{} stays writable (root, without `setpriv`, on a filesystem without `chattr +i`?): \
             run the tests as a normal user",
            dir.display()
        );
        Unwritable {
            dir: dir.to_owned(),
            without_override: false,
        }
    }

    /// `app`'s command (its program and variables: `TestApp::command`
    /// sets nothing else), run so that the directory stops it.
    fn command(&self, app: &TestApp) -> Command {
        let base = app.command();
        if !self.without_override {
            return base;
        }
        let mut wrapped = Command::new("setpriv");
        wrapped.args(WITHOUT_OVERRIDE).arg(base.get_program());
        for (key, value) in base.get_envs() {
            if let Some(value) = value {
                wrapped.env(key, value);
            }
        }
        wrapped
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if !self.without_override {
            let _ = Command::new("chattr").arg("-i").arg(&self.dir).output();
        }
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
    }
}

/// A destruction (or a rotation) logged before its keyring is saved, whose
/// save then fails, is logged again as denied: the log never shows a key
/// destroyed that is still in the file, or versions made that never were.
#[tokio::test]
async fn a_keyring_change_that_cannot_be_saved_is_logged_denied() {
    let app = spawn_app().await;
    // card/v1 retired and wrapping nothing.
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let copy = copy_of_the_keyring(&app, "read-only-host");
    std::fs::write(copy.join("keyring.lock"), b"").unwrap();
    let before = std::fs::read(copy.join("keyring.json")).unwrap();
    let run = |args: &[&str]| {
        checkoutd(&app)
            .env("CHECKOUTD_DATA_DIR", &copy)
            .args(args)
            .output()
            .unwrap()
    };
    let entries = |action: &'static str| {
        let app = &app;
        async move {
            app.access_log_entries()
                .await
                .into_iter()
                .filter(|e| e["action"] == action)
                .map(|e| {
                    (
                        e["outcome"].as_str().unwrap().to_owned(),
                        e["objects"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    {
        let guard = Unwritable::new(&copy);
        let run = |args: &[&str]| {
            guard
                .command(&app)
                .env("CHECKOUTD_DATA_DIR", &copy)
                .args(args)
                .output()
                .unwrap()
        };
        let out = run(&["keys", "rotate", "--class", "billing"]);
        assert!(
            !out.status.success(),
            "the rotation was not saved, yet succeeded"
        );
        let out = run(&["keys", "destroy", "--class", "card", "--version", "1"]);
        assert!(
            !out.status.success(),
            "the destruction was not saved, yet succeeded"
        );
    }
    assert_eq!(std::fs::read(copy.join("keyring.json")).unwrap(), before);
    let destroyed = entries("keys destroy").await;
    let outcomes: Vec<&str> = destroyed.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["allowed", "denied"], "{destroyed:?}");
    assert_eq!(destroyed[1].1, json!(["card/v1"]), "{destroyed:?}");
    let rotated: Vec<String> = entries("keys rotate")
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    // The setup's rotation, then the failed one: allowed, then denied.
    assert_eq!(rotated, ["allowed", "allowed", "denied"]);
    // Until that destruction is finished, the keyring holds a key the log
    // records destroyed, as a copy from before a destroy does: nothing else
    // changes it.
    let out = run(&["keys", "rotate", "--class", "billing"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("card/v1 was destroyed"), "{stderr}");
    // The key is still there: with the directory writable again, the same
    // destruction goes through, and then the rotation.
    let out = run(&["keys", "destroy", "--class", "card", "--version", "1"]);
    assert_succeeded(&out);
    assert_succeeded(&run(&["keys", "rotate", "--class", "billing"]));
}

/// A stale copy of the keyring does not re-wrap either: its active version
/// is one the database has retired (another host rotated since), and the
/// records would be moved under it.
#[tokio::test]
async fn a_stale_copy_of_the_keyring_cannot_rewrap() {
    let app = spawn_app().await;
    order(&app, "stale-rewrap").await;
    let data = app.dir.path().join("data");
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let other = copy_of_the_keyring(&app, "other-host");
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    let rewrap = || {
        checkoutd(&app)
            .env("CHECKOUTD_DATA_DIR", &other)
            .args(["keys", "rewrap", "--class", "card"])
            .output()
            .unwrap()
    };
    let db = app.db().await;
    let versions = || {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT DISTINCT kek_version FROM payment_cards")
                .fetch_all(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(versions().await, [1]);
    let out = rewrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a stale keyring re-wrapped: {stderr}"
    );
    assert!(stderr.contains("install the newest keyring"), "{stderr}");
    assert_eq!(
        versions().await,
        [1],
        "records moved under a retired version"
    );
    assert!(
        logged_denied(&app, "keys rewrap").await,
        "the refused re-wrap is not in the access log as denied"
    );
    // Refused before any work: no run was started.
    assert!(
        !app.access_log_entries()
            .await
            .iter()
            .any(|e| e["action"] == "keys rewrap started"),
        "a refused re-wrap logged a start"
    );
    // Nor does a batch prepared before the retirement landed: the update
    // itself refuses a retired target version (v2 here).
    let store = app.store().await;
    let items = checkoutd::store::Store::envelopes_to_rewrap(&store, DataClass::Card, &[1], 10)
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    let updates: Vec<_> = items.into_iter().map(|i| (i, 2, vec![0u8; 40])).collect();
    assert_eq!(
        checkoutd::store::Store::apply_rewrap(&store, &updates)
            .await
            .unwrap(),
        0
    );
    assert_eq!(versions().await, [1]);
    std::fs::copy(data.join("keyring.json"), other.join("keyring.json")).unwrap();
    assert_succeeded(&rewrap());
    assert_eq!(versions().await, [3]);
}

/// The one-off commands act on the schema as it is: one that lacks a
/// migration of this binary is refused, not migrated behind the running
/// servers' backs (some migrations need them all stopped).
#[tokio::test]
async fn operator_commands_refuse_a_schema_they_would_have_to_migrate() {
    let app = spawn_app().await;
    let db = app.db().await;
    let latest: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(latest)
        .execute(&db)
        .await
        .unwrap();
    let shares = tempfile::tempdir().unwrap();
    let shares_dir = shares.path().join("shares");
    for args in [
        &["keys", "status"][..],
        &[
            "orders",
            "purge",
            "--order",
            "00000000-0000-7000-8000-000000000000",
        ],
        // `keys init` starts a new database; an existing one it must not
        // migrate (it then refuses it for its records anyway).
        &[
            "keys",
            "init",
            "--custodians",
            "2",
            "--shares-dir",
            shares_dir.to_str().unwrap(),
        ],
    ] {
        let out = checkoutd(&app).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("migration {latest} is not applied")),
            "{args:?}: {err}"
        );
        assert!(err.contains("checkoutd migrate"), "{err}");
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
            .bind(latest)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(applied, 0, "a command migrated the database");
    // A schema newer than the binary (a migration it does not know) is
    // refused too, not used as if it were its own.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         SELECT $1, description, success, checksum, execution_time
           FROM _sqlx_migrations WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
    )
    .bind(latest)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET version = 99990101000000 WHERE version = $1")
        .bind(latest)
        .execute(&db)
        .await
        .unwrap();
    let out = checkoutd(&app).args(["keys", "status"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer than this checkoutd"), "{err}");
}

/// A copy from before two destroys holds both keys: destroying one of them
/// again destroys the other too (one at a time, each would be refused for
/// the other, and the copy would be stuck), logged as one destruction.
#[tokio::test]
async fn a_copy_from_before_several_destroys_destroys_them_all_again() {
    let app = spawn_app().await;
    cli_ok(&app, &["keys", "rotate", "--class", "card"]);
    cli_ok(&app, &["keys", "rotate", "--class", "billing"]);
    let backup = copy_of_the_keyring(&app, "backup");
    for class in ["card", "billing"] {
        cli_ok(
            &app,
            &["keys", "destroy", "--class", class, "--version", "1"],
        );
    }
    assert_eq!(kek_state(&app, &backup, "billing/v1"), "retired");
    let out = run_in(
        &app,
        &backup,
        &["keys", "destroy", "--class", "card", "--version", "1"],
    );
    assert_succeeded(&out);
    for name in ["card/v1", "billing/v1"] {
        assert_eq!(kek_state(&app, &backup, name), "destroyed", "{name}");
    }
    let destroyed: Vec<Value> = app
        .access_log_entries()
        .await
        .into_iter()
        .filter(|e| e["action"] == "keys destroy" && e["outcome"] == "allowed")
        .map(|e| e["objects"].clone())
        .collect();
    assert_eq!(
        destroyed.last(),
        Some(&json!(["card/v1", "billing/v1"])),
        "{destroyed:?}"
    );
    // The copy is whole again: it may rotate.
    assert_succeeded(&run_in(
        &app,
        &backup,
        &["keys", "rotate", "--class", "contact"],
    ));
}
