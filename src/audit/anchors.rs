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
//! every server on the data directory (a running one would write its
//! anchors back), removes the file, and starts them again; the next intact
//! report anchors anew.

use std::path::Path;

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

/// The heads kept in `path`; none when there is no file yet.
pub fn load(path: &Path) -> Result<Since, AnchorError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Since::default()),
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
    Ok(Since {
        access_log,
        consent_ledger,
    })
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
