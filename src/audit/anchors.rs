//! The heads of the access log and of the withdrawal ledger that the
//! server's last intact verification saw, kept in a file of the data
//! directory ([`FILE_NAME`]) so that they outlive a restart.
//!
//! Each chain's head row is MACed, but a head row from a backup is as
//! genuine as the current one: with the tail cut off and an older head put
//! back, a chain verifies on its own. Only a head seen before can tell
//! (`access_log::verify_chain_since`). The report job and the consent proof
//! keep the furthest heads they verified in memory; without this file a
//! restart forgot them, and a database writer who rolled a chain back
//! while the server was down (or across a deployment) was not caught by
//! the next report. The file is the server's own memory, in the data
//! directory (0600): out of reach of whoever can only write the database —
//! on PostgreSQL often another machine, on SQLite through SQL alone. Whoever
//! can write the data directory itself can remove it with the rollback (a
//! missing file is a first start); against that, keep the signed reports
//! and audit with `--since`.
//!
//! Nothing in it is secret, and a forged file can only make reports fail
//! (an anchor the real chain does not pass through), never pass. The
//! report job, the consent proof and the audience export start from it.
//! After a database is restored from a backup — a rollback, which the next
//! report rightly flags — or replaced by a new one, the operator stops
//! every server on the data directory, removes the file, and starts them
//! again; the next intact report anchors anew. A server whose file is
//! removed while it runs does not write it back ([`AnchorsFile::keep`]):
//! its heads belong to the database it started on. A server that starts
//! without the file while the access log holds entries says so
//! (`Application::startup_notices`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::access_log::Anchor;
use super::verify::Since;
use crate::consent::LedgerPosition;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "audit-anchors.json";

/// The file's format version.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorFile {
    format: u32,
    access_log: Option<Head>,
    consent_ledger: Option<Head>,
}

/// One chain's head: its sequence number and its hash (the access log) or
/// MAC (the ledger), hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: i64,
    value: String,
}

/// Why the anchors file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read the audit anchors {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the audit anchors {0} are damaged; remove the file to start without them (the next intact report anchors anew)"
    )]
    Damaged(std::path::PathBuf),
}

/// Why the heads were not kept ([`AnchorsFile::keep`]).
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// The file this server read or wrote is gone: an operator removed it
    /// (after a restore, say). This process never writes it again.
    /// `first`: this is the first time the server noticed.
    #[error("the audit anchors file was removed while the server ran")]
    Removed { first: bool },
    #[error("cannot write the audit anchors")]
    Write(#[from] std::io::Error),
}

/// The anchors file as a running server keeps it: read once at start,
/// replaced as the heads move forward, never brought back once removed.
#[derive(Debug)]
pub struct AnchorsFile {
    path: PathBuf,
    /// The file was there when the server started.
    found: bool,
    /// The file is this server's: it was there at start, or written since.
    present: AtomicBool,
    /// It was removed while the server ran: not written again.
    removed: AtomicBool,
}

impl AnchorsFile {
    /// Reads the heads kept at `path` (none when there is no file).
    pub fn open(path: PathBuf) -> Result<(Self, Since), AnchorError> {
        let (since, found) = read(&path)?;
        let file = AnchorsFile {
            path,
            found,
            present: AtomicBool::new(found),
            removed: AtomicBool::new(false),
        };
        Ok((file, since))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was there when the server started.
    pub fn found_at_start(&self) -> bool {
        self.found
    }

    /// Replaces the file with `since` (blocking: call it off the runtime).
    ///
    /// Once the file has been there, its absence means an operator removed
    /// it — the documented step after restoring the database, which every
    /// server on the data directory must be stopped for. Writing this
    /// process's heads back would make every report after the restart fail
    /// against a chain the restored database never had, so it is not
    /// written again by this process; its heads stay in memory only. (An
    /// operator removing the file between the check and the write is not
    /// covered: the documented order is stop, remove, start.)
    pub fn keep(&self, since: &Since) -> Result<(), KeepError> {
        if self.removed.load(Ordering::Acquire) {
            return Err(KeepError::Removed { first: false });
        }
        if self.present.load(Ordering::Acquire) && !exists(&self.path)? {
            let first = !self.removed.swap(true, Ordering::AcqRel);
            return Err(KeepError::Removed { first });
        }
        save(&self.path, since)?;
        self.present.store(true, Ordering::Release);
        Ok(())
    }
}

/// Whether there is anything at `path` (a dangling link counts).
fn exists(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The heads kept in `path`; none when there is no file yet.
pub fn load(path: &Path) -> Result<Since, AnchorError> {
    read(path).map(|(since, _)| since)
}

/// The heads kept in `path`, and whether there was a file.
fn read(path: &Path) -> Result<(Since, bool), AnchorError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Since::default(), false));
        }
        Err(source) => {
            return Err(AnchorError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let damaged = || AnchorError::Damaged(path.to_owned());
    let file: AnchorFile = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
    if file.format != FORMAT {
        return Err(damaged());
    }
    let access_log = match file.access_log {
        None => None,
        Some(head) => Some(Anchor {
            seq: u64::try_from(head.seq).map_err(|_| damaged())?,
            hash: crate::hex::decode(&head.value)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(damaged)?,
        }),
    };
    let consent_ledger = match file.consent_ledger {
        None => None,
        Some(head) => Some(LedgerPosition {
            seq: head.seq,
            mac: crate::hex::decode(&head.value)
                .filter(|m| m.len() == 32)
                .ok_or_else(damaged)?,
        }),
    };
    Ok((
        Since {
            access_log,
            consent_ledger,
        },
        true,
    ))
}

/// Replaces the file at `path` with `since`, atomically (a crash leaves the
/// old file or the new one), owner-only.
pub fn save(path: &Path, since: &Since) -> std::io::Result<()> {
    let file = AnchorFile {
        format: FORMAT,
        access_log: since.access_log.map(|a| Head {
            seq: i64::try_from(a.seq).unwrap_or(i64::MAX),
            value: crate::hex::encode(&a.hash),
        }),
        consent_ledger: since.consent_ledger.as_ref().map(|p| Head {
            seq: p.seq,
            value: crate::hex::encode(&p.mac),
        }),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &bytes, 0o600, crate::files::Placement::Replace)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_round_trip_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let none = load(&path).unwrap();
        assert!(none.access_log.is_none() && none.consent_ledger.is_none());
        let since = Since {
            access_log: Some(Anchor {
                seq: 42,
                hash: [7; 32],
            }),
            consent_ledger: Some(LedgerPosition {
                seq: 3,
                mac: vec![9; 32],
            }),
        };
        save(&path, &since).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.access_log, since.access_log);
        assert_eq!(back.consent_ledger, since.consent_ledger);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A server keeps its file, and never brings it back once removed.
        std::fs::remove_file(&path).unwrap();
        let (kept, nothing) = AnchorsFile::open(path.clone()).unwrap();
        assert!(!kept.found_at_start() && nothing.access_log.is_none());
        kept.keep(&since).unwrap();
        assert_eq!(load(&path).unwrap().access_log, since.access_log);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            kept.keep(&since),
            Err(KeepError::Removed { first: true })
        ));
        assert!(matches!(
            kept.keep(&since),
            Err(KeepError::Removed { first: false })
        ));
        assert!(!path.exists(), "a removed anchors file was written back");
        save(&path, &since).unwrap();
        let (found, back) = AnchorsFile::open(path.clone()).unwrap();
        assert!(found.found_at_start());
        assert_eq!(back.consent_ledger, since.consent_ledger);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            found.keep(&since),
            Err(KeepError::Removed { first: true })
        ));
        assert!(!path.exists());
        for damaged in [
            "{",
            r#"{"format":2,"access_log":null,"consent_ledger":null}"#,
            r#"{"format":1,"access_log":{"seq":-1,"value":"00"},"consent_ledger":null}"#,
            r#"{"format":1,"access_log":{"seq":1,"value":"zz"},"consent_ledger":null}"#,
            r#"{"format":1,"access_log":null,"consent_ledger":{"seq":1,"value":"0011"}}"#,
        ] {
            std::fs::write(&path, damaged).unwrap();
            assert!(
                matches!(load(&path), Err(AnchorError::Damaged(_))),
                "{damaged}"
            );
        }
    }
}
