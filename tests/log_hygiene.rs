//! Secret hygiene over the whole integration run (issue #10).
//!
//! Runs the `api` integration-test binary (every test of tests/api, on the
//! engine this run uses) as a child process, with every server log line of
//! that run also written to a file (`CHECKOUTD_TEST_LOG_FILE`, see
//! tests/api/helpers.rs) and its own stdout and stderr captured (no output
//! capture, so panics and anything printed from server threads are in
//! there too). Then scans all of it for what the tests submitted or held:
//! - card numbers: any run of 13–19 digits standing alone that passes the
//!   Luhn check, and every card number in the tests' sources;
//! - email addresses: any at all;
//! - every name, company, street, phone, gift message and CVC the tests'
//!   sources put in an order (string values of those members);
//! - key material: each test app's development master key and the base64
//!   of its TLS private keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `api` test binary cargo built beside this one.
fn api_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let deps = me.parent().unwrap();
    std::fs::read_dir(deps)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("api-")
                .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .expect("the api test binary is built beside this one (cargo test builds every test target first)")
}

#[test]
fn the_whole_integration_run_logs_no_submitted_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let out = Command::new(api_binary())
        .arg("--nocapture")
        .env("CHECKOUTD_TEST_LOG_FILE", &log)
        .output()
        .unwrap();
    let mut hay = std::fs::read(&log).unwrap_or_else(|e| {
        panic!("no log file from the api run ({e}); is the api test binary stale? `cargo test` builds it first")
    });
    let logged = hay.len();
    hay.extend_from_slice(&out.stdout);
    hay.extend_from_slice(&out.stderr);
    assert!(
        out.status.success(),
        "the api run failed:\n{}\nits panics:\n{}",
        String::from_utf8_lossy(&out.stdout),
        panics(&String::from_utf8_lossy(&out.stderr))
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    let passed = summary
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<u32>().ok())
        .sum::<u32>();
    assert!(passed >= 90, "the api run ran {passed} tests");
    assert!(
        logged > 100_000,
        "only {logged} bytes of logs were captured"
    );
    let text = String::from_utf8_lossy(&hay);
    assert!(text.contains("/v1/orders"), "the access log was captured");

    let mut found = std::collections::BTreeSet::new();
    for pan in card_numbers(&hay) {
        found.insert(format!("a card number ending {}", &pan[pan.len() - 4..]));
    }
    for email in emails(&text) {
        found.insert(format!(
            "an email address at {}",
            email.rsplit('@').next().unwrap()
        ));
    }
    let needles = source_needles(Path::new("tests/api"));
    assert!(
        needles.len() > 25,
        "only {} values found in the sources",
        needles.len()
    );
    for needle in &needles {
        if contains(&hay, needle.as_bytes()) {
            found.insert(format!("the submitted value {needle:?}"));
        }
    }
    let keys = std::fs::read_to_string(dir.path().join("server.log.keys")).unwrap();
    let keys: Vec<&str> = keys.lines().flat_map(|l| l.split("\\n")).collect();
    assert!(
        keys.len() > 100,
        "key material of every test app was listed"
    );
    for key in keys {
        if contains(&hay, key.as_bytes()) {
            found.insert(format!("key material ({} characters)", key.len()));
        }
    }
    println!(
        "scanned {} bytes ({logged} of server logs) from {passed} tests for {} submitted values and every card number and email",
        hay.len(),
        needles.len()
    );
    assert!(found.is_empty(), "the run's output holds: {found:#?}");
}

/// The panic messages in a `--nocapture` run's stderr (a failed test's
/// reason is printed there, not in the summary on stdout): each from its
/// "panicked at" line to the next blank line or backtrace, at most 40 lines
/// each.
fn panics(stderr: &str) -> String {
    let mut out = Vec::new();
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            out.push(line);
            out.extend(
                lines
                    .by_ref()
                    .take_while(|l| !l.is_empty() && !l.starts_with("stack backtrace"))
                    .take(40),
            );
            out.push("");
        }
    }
    out.join("\n")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Digit runs of 13–19 that stand alone (no letter, digit or `_` either
/// side: hex digests, UUIDs and identifiers such as a test database's name
/// are not candidates) and pass the Luhn check.
fn card_numbers(hay: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < hay.len() {
        if !hay[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < hay.len() && hay[i].is_ascii_digit() {
            i += 1;
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let alone = (start == 0 || !word(hay[start - 1])) && (i == hay.len() || !word(hay[i]));
        // The fraction of a decimal number (`"elapsed_secs":1.5012345678901234`
        // in a slow-statement warning) is not a card number standing alone.
        let fraction = start >= 2 && hay[start - 1] == b'.' && hay[start - 2].is_ascii_digit();
        let alone = alone && !fraction;
        let digits = &hay[start..i];
        if alone && (13..=19).contains(&digits.len()) && luhn(digits) {
            found.push(String::from_utf8_lossy(digits).into_owned());
        }
    }
    // Grouped as printed on a card and typed (a form post's `+` decodes to
    // a space): four digits, then groups of four and a shorter last one,
    // by single spaces or dashes.
    let grouped = regex::bytes::Regex::new(
        r"(?:^|[^0-9A-Za-z_.])([0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,3})?)(?:$|[^0-9A-Za-z_])",
    )
    .unwrap();
    for m in grouped.captures_iter(hay) {
        let digits: Vec<u8> = m[1].iter().copied().filter(u8::is_ascii_digit).collect();
        if (13..=19).contains(&digits.len()) && luhn(&digits) {
            found.push(String::from_utf8_lossy(&digits).into_owned());
        }
    }
    found
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `local@domain.tld` shapes.
fn emails(text: &str) -> Vec<String> {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let is_domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    let mut found = Vec::new();
    for (at, _) in text.match_indices('@') {
        let local: String = text[..at]
            .chars()
            .rev()
            .take_while(|c| is_local(*c))
            .collect();
        let domain: String = text[at + 1..]
            .chars()
            .take_while(|c| is_domain(*c))
            .collect();
        let tld = domain.rsplit('.').next().unwrap_or("");
        if !local.is_empty()
            && domain.contains('.')
            && tld.len() >= 2
            && tld.chars().all(|c| c.is_ascii_alphabetic())
        {
            found.push(format!(
                "{}@{domain}",
                local.chars().rev().collect::<String>()
            ));
        }
    }
    found
}

/// String values the test sources give to personal and card members of an
/// order (`"name": "Ada Lovelace"`, `["name"] = json!("Ada Lovelace")`), skipping format templates and values
/// too short to be distinctive.
fn source_needles(dir: &Path) -> Vec<String> {
    const MEMBERS: [&str; 11] = [
        "name",
        "holder_name",
        "company",
        "line1",
        "line2",
        "phone",
        "email",
        "message",
        "number",
        "cvc",
        "postal_code",
    ];
    let mut needles = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for member in MEMBERS {
            // `"name": "…"` in json!, and `["name"] = json!("…")`.
            let keys = [format!("\"{member}\":"), format!("[\"{member}\"] = json!(")];
            for (at, key) in keys.iter().flat_map(|k| source.match_indices(k.as_str())) {
                let rest = source[at + key.len()..].trim_start();
                let Some(value) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = value.find('"') else {
                    continue;
                };
                let value = &value[..end];
                let short = match member {
                    "cvc" => value.len() < 3,
                    _ => value.chars().count() < 6,
                };
                if short || value.contains(['{', '}', '\\']) {
                    continue;
                }
                // A CVC is only distinctive as a quoted string.
                let needle = if member == "cvc" {
                    format!("\"{value}\"")
                } else {
                    value.to_owned()
                };
                if !needles.contains(&needle) {
                    needles.push(needle);
                }
            }
        }
    }
    needles
}

#[test]
fn the_scanner_finds_card_numbers_but_not_the_digits_of_a_fraction() {
    let found = |text: &str| card_numbers(text.as_bytes());
    assert_eq!(found("pan=4111111111111111,"), ["4111111111111111"]);
    assert_eq!(found("\"4111111111111111.\""), ["4111111111111111"]);
    assert_eq!(found(".4111111111111111"), ["4111111111111111"]);
    assert!(found("\"elapsed_secs\":1.4111111111111111,").is_empty());
    assert!(found("id_4111111111111111").is_empty());
    assert!(found("4111111111111112").is_empty(), "Luhn");
    assert_eq!(found("number=5555 5555 5555 4444&"), ["5555555555554444"]);
    assert_eq!(found("\"4012-8888-8888-1881\""), ["4012888888881881"]);
    assert!(found("2026-12-02 1234 5678").is_empty());
}
