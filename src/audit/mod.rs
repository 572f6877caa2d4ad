//! Auditing: the hash-chained access log ([`access_log`]), the
//! verification engine ([`verify`]), signed reports ([`report`]) and the
//! HTML rendering of a report ([`html`]).

pub mod access_log;
pub mod anchors;
pub mod html;
pub mod job;
pub mod report;
pub mod verify;

use std::path::PathBuf;

use crate::config::StoreSettings;
use crate::crypto::keyring::{self, Keyring, KeyringError};
use crate::store::StoreError;

/// Why an offline audit could not run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing the report failed")]
    Sign,
    #[error("cannot read the earlier report {path}")]
    ReadSince {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the earlier report {0} is not a report signed by this keyring, or records no intact access log head"
    )]
    BadSince(PathBuf),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `checkoutd audit`: verifies the database and keyring read-only, writes
/// the signed JSON report (and the HTML one), and returns whether
/// everything verified.
///
/// `since`: an earlier signed report of this database; the access log must
/// still pass through the head it recorded (see
/// [`access_log::verify_chain_since`]).
pub async fn offline(
    settings: &StoreSettings,
    out: &std::path::Path,
    html_out: Option<&std::path::Path>,
    since: Option<&std::path::Path>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<bool, OfflineError> {
    let master = crate::crypto::master::resolve(&settings.data_dir, &settings.master_key_shares)
        .map_err(KeyringError::from)?;
    let keyring = Keyring::load(&settings.data_dir.join(keyring::FILE_NAME), &master)?;
    let since = since
        .map(|path| anchor_of(path, &keyring))
        .transpose()?
        .unwrap_or_default();
    // Both paths are checked before the (long) verification, and before
    // either file is written.
    may_write_report(out)?;
    if let Some(path) = html_out {
        may_write_report(path)?;
    }
    let store = crate::store::open_read_only(&settings.database).await?;
    let report = verify::verify_since(store.as_ref(), &keyring, progress, &since).await?;
    store.close().await;
    let signed = report::sign(&report, &keyring).map_err(|_| OfflineError::Sign)?;
    let write = |path: &std::path::Path, bytes: &[u8]| write_report(path, bytes);
    let json = serde_json::to_vec_pretty(&signed).map_err(|_| OfflineError::Sign)?;
    write(out, &json)?;
    if let Some(path) = html_out {
        let sig = signed
            .pointer("/signature/value_hex")
            .and_then(|v| v.as_str());
        let key = signed.pointer("/signature/key_id").and_then(|v| v.as_str());
        write(path, html::render(&report, sig, key).as_bytes())?;
    }
    Ok(report.verified)
}

/// Whether a report may be written to `path`: nothing there yet, or an
/// earlier report (replaced whole) — never a keyring, a share or anything
/// else a mistyped `--out` could name, nor a symbolic link or a device
/// (as root, `/dev/stdout` is a link in `/dev`: give a file's own path).
fn may_write_report(path: &std::path::Path) -> Result<(), OfflineError> {
    let refused = |why: &str| OfflineError::Write {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, why.to_owned()),
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OfflineError::Write {
            path: path.to_owned(),
            source,
        }),
        Ok(meta) if meta.file_type().is_symlink() => Err(refused(
            "is a symbolic link; give the path of the file itself",
        )),
        Ok(meta) if !meta.is_file() => Err(refused("is not a regular file")),
        Ok(_) if !is_a_report(path) => Err(refused(
            "exists and is not a checkoutd audit report; never overwritten (choose another name)",
        )),
        Ok(_) => Ok(()),
    }
}

/// Writes a report to `path` whole or not at all (a temporary file renamed
/// over it), once [`may_write_report`] allowed it.
fn write_report(path: &std::path::Path, bytes: &[u8]) -> Result<(), OfflineError> {
    crate::files::write_atomically(path, bytes, 0o644, crate::files::Placement::ReplaceAsMine)
        .map(|_| ())
        .map_err(|source| OfflineError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Whether `path` begins as a report this command writes does: a signed
/// JSON report (`report`, then `signature`, pretty-printed) or its HTML
/// rendering. Only the first bytes are read (a mistyped `--out` may name
/// a database).
fn is_a_report(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    let read = std::fs::File::open(path).and_then(|f| f.take(512).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    head.starts_with(b"{\n  \"report\": {")
        || (head.starts_with(b"<!DOCTYPE html>")
            && String::from_utf8_lossy(&head).contains("<title>checkoutd audit report"))
}

/// The heads an earlier report recorded (the access log's, required; the
/// withdrawal ledger's, when the report has one), once its signature
/// verifies with this keyring's report-signing key.
fn anchor_of(path: &std::path::Path, keyring: &Keyring) -> Result<verify::Since, OfflineError> {
    let bad = || OfflineError::BadSince(path.to_owned());
    let bytes = std::fs::read(path).map_err(|source| OfflineError::ReadSince {
        path: path.to_owned(),
        source,
    })?;
    let document: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let public = report::public_key(keyring).map_err(|_| bad())?;
    let raw = crate::hex::decode(&public.public_key_hex).ok_or_else(bad)?;
    if !report::verify_signed(&document, &raw) {
        return Err(bad());
    }
    let chain: verify::ChainReport = document
        .pointer("/report/access_log")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(bad)?;
    let ledger: Option<verify::LedgerReport> = document
        .pointer("/report/consent_ledger")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok());
    Ok(verify::Since {
        access_log: Some(chain.anchor().ok_or_else(bad)?),
        consent_ledger: ledger.and_then(|l| l.anchor()),
    })
}
