//! The command line as an operator meets it: the real binary.

use std::process::Command;

use crate::helpers::assert_succeeded;

fn checkoutd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_checkoutd"))
}

#[tokio::test]
async fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::TestDatabase::create(&dir.path().join("data")).await;
    let out = checkoutd()
        .args(["migrate", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--database-url", &db.url])
        .output()
        .unwrap();
    assert_succeeded(&out);
    if !db.is_postgres() {
        assert!(dir.path().join("data/checkoutd.db").is_file());
    }
    let url = checkoutd::config::DatabaseUrl::parse(&db.url).unwrap();
    let store = checkoutd::store::open_read_only(&url).await.unwrap();
    let tables: Vec<String> = store
        .schema()
        .await
        .unwrap()
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    for t in ["orders", "payment_cards", "consent_events", "access_log"] {
        assert!(tables.iter().any(|n| n == t), "{t} in {tables:?}");
    }
}

/// A first start that makes a development PKI and keyring and then fails
/// (its port taken) still says so loudly: the next start finds them there
/// and would never say it.
#[tokio::test]
async fn a_first_start_that_fails_late_still_announces_its_development_material() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = crate::helpers::TestDatabase::create(&data).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = checkoutd()
        .args(["serve", "--data-dir"])
        .arg(&data)
        .arg("--certs-dir")
        .arg(dir.path().join("certs"))
        .args(["--database-url", &db.url])
        .args(["--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(dir.path().join("certs/server.pem").is_file());
    assert!(stderr.contains("DEVELOPMENT PKI"), "{stderr}");
    assert!(stderr.contains("DEVELOPMENT KEYRING"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn certs_dev_writes_the_pki_with_private_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = checkoutd()
        .args(["certs", "dev", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVELOPMENT"));
    for f in [
        "ca.pem",
        "server.pem",
        "storefront.pem",
        "fulfillment.pem",
        "auditor.pem",
        "marketing.pem",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    for f in [
        "server-key.pem",
        "storefront-key.pem",
        "fulfillment-key.pem",
        "auditor-key.pem",
        "marketing-key.pem",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let certs_dev = |extra: &[&str]| {
        checkoutd()
            .args(["certs", "dev", "--out"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    // Again: refused, nothing overwritten; with --replace, a new PKI.
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    assert!(!certs_dev(&[]).status.success());
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    let replaced = certs_dev(&["--replace"]);
    assert_succeeded(&replaced);
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    assert!(dir.path().join("marketing-key.pem").is_file());
    // A private key that is not its development certificate's (a new key
    // made for a production certificate request): --replace removes nothing.
    let production_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let dev_key = std::fs::read(dir.path().join("server-key.pem")).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), &production_key).unwrap();
    let refused = certs_dev(&["--replace"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("server-key.pem"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server-key.pem")).unwrap(),
        production_key
    );
    std::fs::write(dir.path().join("server-key.pem"), dev_key).unwrap();
    // ca.pem holding the operator's own CA beside the development one (the
    // client-CA bundle): not the development PKI's alone, kept.
    let own_ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_owned()]).unwrap();
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        own_ca.cert.pem()
    );
    std::fs::write(dir.path().join("ca.pem"), &bundle).unwrap();
    assert!(!certs_dev(&["--replace"]).status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        bundle
    );
    let dev_ca: String = bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap()
        .to_owned();
    std::fs::write(dir.path().join("ca.pem"), dev_ca).unwrap();
    assert!(certs_dev(&["--replace"]).status.success());
    // A server certificate that is not the development CA's (a production
    // one dropped in): --replace removes nothing.
    let foreign = rcgen::generate_simple_self_signed(vec!["shop.example".to_owned()]).unwrap();
    std::fs::write(dir.path().join("server.pem"), foreign.cert.pem()).unwrap();
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let refused = certs_dev(&["--replace"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("server.pem"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    assert!(dir.path().join("server-key.pem").is_file());
}

#[test]
fn invalid_settings_are_refused_before_binding_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    // From a flag, from the environment and from a config file.
    let out = checkoutd()
        .args(["serve", "--listen", "not-an-address"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error, as clap's own");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen`"));
    let out = checkoutd()
        .args(["serve"])
        .env("CHECKOUTD_DATABASE_URL", "mysql://secret@db/x")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("database_url") && !err.contains("secret"),
        "{err}"
    );
    let config = dir.path().join("checkoutd.toml");
    std::fs::write(&config, "handshake_timeout = \"forever\"\n").unwrap();
    let out = checkoutd()
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("handshake_timeout"));
    assert_eq!(out.status.code(), Some(2));
    // A client CRL that is not there: named before the first run writes
    // its development PKI.
    let out = checkoutd()
        .args(["serve", "--client-crl", "missing-crl.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("client_crl"));
    // Nothing was created: validation happens before any side effect.
    assert!(!dir.path().join("certs").exists());
    assert!(!dir.path().join("data").exists());
    // A value the flag does not take, in any command: 2 as well.
    let out = checkoutd()
        .args(["orders", "purge", "--dispatched-before", "yesterday"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD"));
    // A request time limit under a second leaves an order no time to
    // wait for its commit.
    let out = checkoutd()
        .args(["serve", "--request-timeout", "500ms"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("request_timeout"));
    // A date after today would purge every dispatched order: refused
    // before anything is opened.
    let out = checkoutd()
        .args(["orders", "purge", "--dispatched-before", "2999-01-01"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("after today"));
    assert!(!dir.path().join("data").exists());
    // Retention beyond 100 years is a settings error, not a retention
    // task that stops on its first pass.
    let out = checkoutd()
        .args(["serve", "--retain-recipient-days", "99999999"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retain_recipient_days"));
}

/// `--help` names the database URL's variable, never its value (it may
/// hold a password).
/// A data class that does not exist is a usage error (exit 2) naming the
/// classes there are, before anything is opened.
#[test]
fn keys_with_an_unknown_class_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["keys", "rotate", "--class", "bogus"][..],
        &["keys", "rewrap", "--class", "cards"],
        &["keys", "destroy", "--class", "all", "--version", "1"],
    ] {
        let out = checkoutd()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("card, billing, shipping"), "{stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} opened the data directory"
        );
    }
}

#[test]
fn help_never_shows_the_database_password() {
    for args in [&["serve", "--help"][..], &["keys", "status", "--help"][..]] {
        let out = checkoutd()
            .args(args)
            .env("CHECKOUTD_DATABASE_URL", "postgres://u:hunter2@h/db")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CHECKOUTD_DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{args:?}: {text}");
    }
}

#[test]
fn help_lists_every_command_and_flag() {
    let top = String::from_utf8(checkoutd().arg("--help").output().unwrap().stdout).unwrap();
    for c in ["serve", "migrate", "certs", "audit"] {
        assert!(top.contains(c), "{c}");
    }
    let serve = String::from_utf8(
        checkoutd()
            .args(["serve", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for f in [
        "--listen",
        "--data-dir",
        "--certs-dir",
        "--database-url",
        "--config",
        "--client-ca",
        "--log-format",
        "--max-connections",
        "--handshake-timeout",
        "--request-timeout",
        "--idle-timeout",
        "--drain-timeout",
        "CHECKOUTD_LISTEN",
    ] {
        assert!(serve.contains(f), "{f} missing from serve --help");
    }
}

#[test]
fn a_database_that_does_not_connect_is_a_clear_startup_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = checkoutd()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .args([
            "--database-url",
            "postgres://shop:s3cret-pw@127.0.0.1:1/orders?sslmode=disable",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the database postgres://shop@127.0.0.1:1/orders"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"), "{err}");
    assert!(
        !dir.path().join("checkoutd.db").exists(),
        "no SQLite fallback"
    );
}

#[test]
fn an_unknown_database_scheme_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = checkoutd()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", "mysql://shop:s3cret-pw@127.0.0.1/orders"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database-url"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
}

#[test]
fn two_first_runs_on_one_data_directory_make_one_keyring() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        checkoutd()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--certs-dir")
            .arg(dir.path().join("certs"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut servers = [start(), start()];
    for server in &mut servers {
        let stderr = BufReader::new(server.stderr.take().unwrap());
        let serving = stderr
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("checkoutd serving"));
        let _ = server.kill();
        let _ = server.wait();
        assert!(serving, "both processes came up");
    }
    // One master key, and the keyring on disk opens with it.
    let data = dir.path().join("data");
    let master = checkoutd::crypto::master::MasterKey::load_dev(&data.join("master.key")).unwrap();
    checkoutd::crypto::keyring::Keyring::load(&data.join("keyring.json"), &master).unwrap();
}

/// Runs `checkoutd serve` with `args`, which must fail at start-up (within
/// 60 s: a server that started would be killed and fail the test); stderr.
fn serve_must_refuse(args: &[&std::ffi::OsStr]) -> String {
    let mut child = checkoutd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "serve started: {stderr}");
            return stderr;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn serve_never_replaces_a_certificates_directory_it_finds_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let data = dir.path().join("data");
    assert!(
        checkoutd()
            .args(["certs", "dev", "--out"])
            .arg(&certs)
            .status()
            .unwrap()
            .success()
    );
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    // `certs dev` again overwrites nothing.
    let again = checkoutd()
        .args(["certs", "dev", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));
    // The server's key did not mount: refused, naming it; the client CA and
    // the role keys stay as they were, and no new key appears.
    std::fs::remove_file(certs.join("server-key.pem")).unwrap();
    let stderr = serve_must_refuse(&[
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--certs-dir".as_ref(),
        certs.as_os_str(),
    ]);
    assert!(stderr.contains("but not server-key.pem"), "{stderr}");
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca);
    assert!(!certs.join("server-key.pem").exists());
    // No server certificate while --client-ca names the production CA:
    // refused, and no development PKI is made.
    let empty = dir.path().join("empty");
    let stderr = serve_must_refuse(&[
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--certs-dir".as_ref(),
        empty.as_os_str(),
        "--client-ca".as_ref(),
        certs.join("ca.pem").as_os_str(),
    ]);
    assert!(stderr.contains("--client-ca"), "{stderr}");
    assert!(!empty.join("ca.pem").exists());
}

/// `serve` with custodian shares but no keyring (another --data-dir than
/// `keys init` was given) says so, not that the database holds orders.
#[test]
fn serve_with_shares_but_no_keyring_names_keys_init() {
    let dir = tempfile::tempdir().unwrap();
    let out = checkoutd()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master-key-share",
            "share-1-of-2.json",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checkoutd keys init"), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(!stderr.contains("already holds"), "{stderr}");
}

/// `serve` with a damaged audit-anchors file stops, naming the file and
/// what to do, rather than start without the heads it vouched for.
#[test]
fn serve_with_damaged_audit_anchors_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join(checkoutd::audit::anchors::FILE_NAME), b"{").unwrap();
    let out = checkoutd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit anchors"), "{stderr}");
    assert!(stderr.contains("remove the file"), "{stderr}");
}

/// Every command turns core dumps off before it reads anything: the
/// server's limits say so while it runs.
#[cfg(target_os = "linux")]
#[test]
fn the_server_never_dumps_core() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = checkoutd()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let mut core = None;
    for _ in 0..100 {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        core = text
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
        if core.as_deref() == Some("0 0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(core.as_deref(), Some("0 0"));
}

/// A `CHECKOUTD_*` variable no setting reads — most likely misspelled — is
/// named on stderr (never its value), and the command still runs.
#[test]
fn a_misspelled_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = checkoutd()
        .args(["certs", "dev", "--out"])
        .arg(dir.path().join("certs"))
        .env("CHECKOUTD_CLIENT_CRLS", "/etc/checkoutd/secret-name.pem")
        .output()
        .unwrap();
    assert_succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CHECKOUTD_CLIENT_CRLS is set, but no setting reads it"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-name"), "{stderr}");
}
