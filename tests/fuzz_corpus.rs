//! Replays every committed fuzz corpus input through its target, as an
//! ordinary test on the stable toolchain (no libFuzzer): the target bodies
//! are the very ones the fuzzer runs (`fuzz/src/lib.rs`, included here).
//! A target without a corpus, or a corpus without inputs, fails.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` regenerates the
//! seeds that are made by code (sealed envelopes, keyring files, shares).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str) {
    let (_, body) = targets::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    for (path, data) in inputs(target) {
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn json_order() {
    replay("json_order");
}

#[test]
fn form_order() {
    replay("form_order");
}

#[test]
fn card_contact() {
    replay("card_contact");
}

#[test]
fn envelope_open() {
    replay("envelope_open");
}

#[test]
fn keyring_file() {
    replay("keyring_file");
}

#[test]
fn master_shares() {
    replay("master_shares");
}

#[test]
fn idempotency_key() {
    replay("idempotency_key");
}

/// Own fixture (not the fuzzer's process-wide one), so its scratch
/// database is removed when the test ends.
#[test]
fn audit_verify() {
    let fixture = targets::AuditFixture::new();
    let mut seen = std::collections::BTreeMap::new();
    for (path, data) in inputs("audit_verify") {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fixture.run(&data)));
        let Ok(what) = outcome else {
            panic!("audit_verify: {} fails", path.display());
        };
        *seen.entry(format!("{what:?}")).or_insert(0) += 1;
    }
    eprintln!("audit_verify corpus: {seen:?}");
    // Not vacuous: most seeds really change a row and get it flagged.
    let flagged = seen.get("Flagged").copied().unwrap_or(0);
    assert!(flagged >= 60, "only {flagged} seeds were flagged: {seen:?}");
}

/// The three lists agree: `TARGETS`, `fuzz/fuzz_targets/*.rs` (and their
/// `[[bin]]` entries), `fuzz/corpus/*/`.
#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut bins: Vec<String> = std::fs::read_dir(root.join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    bins.sort();
    let mut corpora: Vec<String> = std::fs::read_dir(root.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    let mut names: Vec<String> = targets::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    names.sort();
    assert_eq!(bins, names);
    assert_eq!(corpora, names);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for name in &names {
        assert!(manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")));
        // A replay test of the same name exists in this file.
        let this = include_str!("fuzz_corpus.rs");
        assert!(
            this.contains(&format!("fn {name}()")),
            "no replay test for {name}"
        );
    }
}

/// Regenerates the seeds made by code (run by hand; deterministic where the
/// format allows — keyring and share files carry random nonces and set ids).
#[test]
#[ignore = "writes into fuzz/corpus; run by hand"]
fn write_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    // Envelopes: the originals, and near misses of each.
    for (i, (bytes, _)) in targets::envelope_originals().iter().enumerate() {
        write("envelope_open", &format!("original-{i}"), bytes);
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        write("envelope_open", &format!("tag-flipped-{i}"), &flipped);
        let mut relabelled = bytes.clone();
        relabelled[37] ^= 3; // kek_version
        write("envelope_open", &format!("kek-relabelled-{i}"), &relabelled);
        write("envelope_open", &format!("truncated-{i}"), &bytes[..60]);
    }
    // Keyring: the inner JSON, a sealed file, a rotated-and-destroyed one.
    let master = targets::fixed_master();
    let ring = targets::fixed_keyring();
    write("keyring_file", "fixed.json", &ring.to_json().unwrap());
    write(
        "keyring_file",
        "fixed.sealed.json",
        &ring.seal(&master).unwrap(),
    );
    let mut rotated = targets::fixed_keyring();
    let rng = ring::rand::SystemRandom::new();
    rotated
        .rotate(
            &rng,
            checkoutd::crypto::DataClass::Billing,
            "2026-02-01T00:00:00Z",
        )
        .unwrap();
    rotated
        .destroy(checkoutd::crypto::DataClass::Card, 1)
        .unwrap();
    write("keyring_file", "rotated.json", &rotated.to_json().unwrap());
    // Shares: splits into two and three, the dev key file.
    for n in [2u32, 3] {
        let shares = master.split(&rng, n).unwrap();
        let joined: Vec<u8> = shares
            .iter()
            .map(|s| s.to_vec())
            .collect::<Vec<_>>()
            .join(&0u8);
        write("master_shares", &format!("split-{n}"), &joined);
        write(
            "master_shares",
            &format!("split-{n}-one-missing"),
            &shares[1..]
                .iter()
                .map(|s| s.to_vec())
                .collect::<Vec<_>>()
                .join(&0u8),
        );
    }
    write("master_shares", "dev-key", &targets::fixed_master_file());
    // Audit: per column, its value replaced by "2" and put in upper case.
    let fixture = targets::AuditFixture::new();
    for (i, table, column) in targets::audit_columns(&fixture) {
        let pick = u8::try_from(i).unwrap();
        let name = format!("{i:03}-{table}.{column}");
        write(
            "audit_verify",
            &format!("{name}-replaced"),
            &[pick, 0, 0, b'2'],
        );
        write("audit_verify", &format!("{name}-upper"), &[pick, 0, 2]);
    }
}
