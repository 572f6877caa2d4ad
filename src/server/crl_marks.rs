//! The newest client CRL this server has taken from each CA, kept in a file
//! of the data directory ([`FILE_NAME`]) so that a restart does not forget
//! it.
//!
//! A running server refuses a list older (its `thisUpdate`, or its CRL
//! number) than the newest it has taken from the same CA: last week's file
//! put back would let in again every certificate revoked since
//! ([`super::tls::ReloadableTls`]). The number catches what the time
//! cannot: a list re-issued within the same second (times are whole
//! seconds), the earlier one put back.
//! Kept in memory only, that guard ended with the process: a rollback of
//! the CRL file while the server was down, or across a deployment, was
//! taken at the next start. With this file the start refuses it too, and
//! says which list and which file.
//!
//! Nothing in it is secret (a CA's name, the scope of its list, the key
//! identifier it signs with, two times, the highest CRL number). A forged or edited file can only
//! make the server refuse lists, never take one: a mark raised by hand
//! refuses the CA's current list until a newer one is published, and a mark
//! lowered or removed is the state of a server that never saw the list —
//! whoever can write the data directory can do that much anyway, as they
//! can remove `audit-anchors.json`. A damaged file stops the start-up,
//! naming the file: the operator removes it to start without it.
//!
//! Several processes may share a data directory, and so share the marks:
//! each write merges with what is on disk under a lock (`crl-marks.lock`
//! beside it), taking the newer of each list's marks, so none lowers
//! another's — and a server whose CRL file lags another's on the same
//! data directory refuses it as a rollback. The file is removed only with
//! every server on the data directory stopped (a running one writes its
//! marks back).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "crl-marks.json";

/// The file's format version: 2 added each list's CRL number. A file
/// holding no number is written as format 1, which the release before
/// reads too (several servers may share a data directory, one not yet
/// upgraded among them); a format-1 file is read.
const FORMAT: u32 = 2;

/// The formats this release reads.
const READS: [u64; 2] = [1, 2];

/// A CA's list: its issuer's name (DER), its scope (the issuing
/// distribution point extension, DER; empty when it has none) and the key
/// identifier of the CA key that signs it (empty when it names none).
pub type ListKey = (Vec<u8>, Vec<u8>, Vec<u8>);

/// What is kept of one CA's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The newest `thisUpdate` taken.
    pub newest: SystemTime,
    /// What an older list is compared with: the highest of those
    /// `thisUpdate`s, each capped at the taking server's clock plus a small
    /// skew when it was taken.
    pub mark: SystemTime,
    /// The highest CRL number taken; none while no list taken carried one.
    pub number: Option<CrlNumber>,
}

impl Mark {
    /// Raises each of the three to `other`'s where that is higher; whether
    /// anything moved.
    pub fn raise(&mut self, other: &Mark) -> bool {
        let mut moved = false;
        if other.newest > self.newest {
            self.newest = other.newest;
            moved = true;
        }
        if other.mark > self.mark {
            self.mark = other.mark;
            moved = true;
        }
        if other.number > self.number {
            self.number.clone_from(&other.number);
            moved = true;
        }
        moved
    }
}

/// Per list, what was taken.
pub type Marks = HashMap<ListKey, Mark>;

/// A CRL number (RFC 5280, 5.2.3: a non-negative integer of up to 20
/// octets that a CA raises with every list it issues for a scope), kept as
/// its big-endian bytes without leading zeros, so that the order of two
/// numbers is their length first, then their bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlNumber(Vec<u8>);

impl CrlNumber {
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        CrlNumber(bytes[first..].to_vec())
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Ord for CrlNumber {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.len(), &self.0).cmp(&(other.0.len(), &other.0))
    }
}

impl PartialOrd for CrlNumber {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// As `openssl crl -text` prints it: decimal while it fits 128 bits, hex
/// beyond.
impl std::fmt::Display for CrlNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= 16 {
            let value = self.0.iter().fold(0u128, |n, &b| (n << 8) | u128::from(b));
            write!(f, "{value}")
        } else {
            write!(f, "0x{}", crate::hex::encode(&self.0))
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: u32,
    lists: Vec<List>,
}

/// One list's marks: names hex, times in seconds since the Unix epoch.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct List {
    issuer: String,
    scope: String,
    ca_key: String,
    this_update: u64,
    mark: u64,
    /// Hex; absent when no list taken carried one (and in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    number: Option<String>,
}

/// Why the marks cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum MarksError {
    #[error("cannot read the client CRL marks {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the client CRL marks {0} are damaged; remove the file to start without them (a CRL \
         rolled back while the server was down is then taken)"
    )]
    Damaged(PathBuf),
    #[error(
        "the client CRL marks {path} are in format {format}, which this release does not know \
         (written by a newer one?): run that release, or remove the file to start without them"
    )]
    UnknownFormat { path: PathBuf, format: u64 },
    #[error("cannot write the client CRL marks {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The marks file of one data directory.
#[derive(Debug, Clone)]
pub struct MarksFile {
    path: PathBuf,
}

impl MarksFile {
    pub fn at(path: PathBuf) -> Self {
        MarksFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The marks kept; none when there is no file yet.
    pub fn read(&self) -> Result<Marks, MarksError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Marks::new()),
            Err(source) => {
                return Err(MarksError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // The format first: a newer release's file is not "damaged".
        #[derive(Deserialize)]
        struct Format {
            format: u64,
        }
        match serde_json::from_slice::<Format>(&bytes) {
            Ok(Format { format }) if !READS.contains(&format) => {
                return Err(MarksError::UnknownFormat {
                    path: self.path.clone(),
                    format,
                });
            }
            _ => {}
        }
        decode(&bytes).ok_or_else(|| MarksError::Damaged(self.path.clone()))
    }

    /// Raises the file's marks to `marks` (blocking). Under a lock beside
    /// the file, what is on disk is read again and merged — another
    /// process may have taken a newer list — and the result replaces the
    /// file in one step. Returns the merged marks.
    pub fn keep(&self, marks: &Marks) -> Result<Marks, MarksError> {
        let write = |source| MarksError::Write {
            path: self.path.clone(),
            source,
        };
        let _lock = crate::files::lock_file(&self.path.with_extension("lock")).map_err(write)?;
        let mut merged = self.read()?;
        merge(&mut merged, marks);
        let bytes = encode(&merged).map_err(|e| write(std::io::Error::other(e)))?;
        crate::files::write_atomically(&self.path, &bytes, 0o600, crate::files::Placement::Replace)
            .map_err(write)?;
        Ok(merged)
    }
}

/// Raises each list of `into` to the marks of `from` (each time the later
/// of the two; a list only in `from` is added). Returns whether anything
/// in `into` moved.
pub fn merge(into: &mut Marks, from: &Marks) -> bool {
    let mut moved = false;
    for (list, taken) in from {
        match into.get_mut(list) {
            Some(kept) => moved |= kept.raise(taken),
            None => {
                into.insert(list.clone(), taken.clone());
                moved = true;
            }
        }
    }
    moved
}

fn seconds(at: SystemTime) -> u64 {
    // Whole seconds, rounded down: a CRL's times carry none, and a mark
    // capped at the clock errs by less than a second towards taking.
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn encode(marks: &Marks) -> serde_json::Result<Vec<u8>> {
    let mut lists: Vec<List> = marks
        .iter()
        .map(|((issuer, scope, ca_key), kept)| List {
            issuer: crate::hex::encode(issuer),
            scope: crate::hex::encode(scope),
            ca_key: crate::hex::encode(ca_key),
            this_update: seconds(kept.newest),
            mark: seconds(kept.mark),
            number: kept
                .number
                .as_ref()
                .map(|n| crate::hex::encode(n.as_bytes())),
        })
        .collect();
    // One order, so that the same marks always make the same file.
    lists.sort_by(|a, b| (&a.issuer, &a.scope, &a.ca_key).cmp(&(&b.issuer, &b.scope, &b.ca_key)));
    let file = OnDisk {
        format: if lists.iter().any(|l| l.number.is_some()) {
            FORMAT
        } else {
            1
        },
        lists,
    };
    let mut bytes = serde_json::to_vec_pretty(&file)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Option<Marks> {
    let file: OnDisk = serde_json::from_slice(bytes).ok()?;
    if !READS.contains(&u64::from(file.format)) {
        return None;
    }
    // A time past the year 9999 is no CRL's (X.509 times end there): a
    // file holding one was edited, and is damaged.
    const LAST: u64 = 253_402_300_799;
    let at = |secs: u64| {
        (secs <= LAST)
            .then(|| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
            .flatten()
    };
    let mut marks = Marks::new();
    for list in file.lists {
        let key = (
            crate::hex::decode(&list.issuer)?,
            crate::hex::decode(&list.scope)?,
            crate::hex::decode(&list.ca_key)?,
        );
        // A number was written without leading zeros, and only from
        // format 2 on.
        let number = match &list.number {
            Some(hex) => {
                let bytes = crate::hex::decode(hex)?;
                if bytes.first() == Some(&0) || file.format < 2 {
                    return None;
                }
                Some(CrlNumber(bytes))
            }
            None => None,
        };
        // A mark is never above the list's own time (it is that time,
        // capped), and a list appears once.
        let kept = Mark {
            newest: at(list.this_update)?,
            mark: at(list.mark)?,
            number,
        };
        if list.mark > list.this_update || marks.insert(key, kept).is_some() {
            return None;
        }
    }
    Some(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn mark(newest: SystemTime, mark: SystemTime) -> Mark {
        Mark {
            newest,
            mark,
            number: None,
        }
    }

    fn numbered(newest: SystemTime, number: &[u8]) -> Mark {
        Mark {
            newest,
            mark: newest,
            number: Some(CrlNumber::from_be_bytes(number)),
        }
    }

    fn key(n: u8) -> ListKey {
        (vec![0x30, n], Vec::new(), vec![n; 20])
    }

    #[test]
    fn marks_survive_the_file_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = MarksFile::at(dir.path().join(FILE_NAME));
        assert!(file.read().unwrap().is_empty(), "no file: no marks");

        let mut marks = Marks::new();
        marks.insert(key(1), mark(at(1_800_000_000), at(1_799_999_000)));
        marks.insert(key(2), mark(at(1_700_000_000), at(1_700_000_000)));
        assert_eq!(file.keep(&marks).unwrap(), marks);
        assert_eq!(file.read().unwrap(), marks);
        // Without a number, the format the release before reads.
        assert!(
            std::fs::read_to_string(file.path())
                .unwrap()
                .contains(r#""format": 1"#)
        );

        // CRL numbers, the largest RFC 5280 allows among them.
        marks.insert(key(3), numbered(at(1_700_000_000), &[0, 0, 7]));
        marks.insert(key(4), numbered(at(1_700_000_000), &[0xff; 20]));
        marks.insert(key(5), numbered(at(1_700_000_000), &[0]));
        assert_eq!(file.keep(&marks).unwrap(), marks);
        assert_eq!(file.read().unwrap(), marks);
        let written = std::fs::read_to_string(file.path()).unwrap();
        assert!(written.contains(r#""number": "07""#), "{written}");
        assert!(written.contains(r#""format": 2"#), "{written}");

        // A file of the release before (format 1, no numbers) is read.
        std::fs::write(
            file.path(),
            r#"{"format":1,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":5,"mark":4}]}"#,
        )
        .unwrap();
        let old = file.read().unwrap();
        assert_eq!(old[&(vec![0x30], vec![], vec![])], mark(at(5), at(4)));

        std::fs::write(file.path(), r#"{"format":3,"lists":[],"later":true}"#).unwrap();
        assert!(
            matches!(
                file.read(),
                Err(MarksError::UnknownFormat { format: 3, .. })
            ),
            "a newer release's file is not called damaged"
        );
        for damaged in [
            "not json",
            r#"{"format":"1","lists":[]}"#,
            r#"{"format":1,"lists":[],"extra":1}"#,
            r#"{"format":1,"lists":[{"issuer":"zz","scope":"","ca_key":"","this_update":1,"mark":1}]}"#,
            // A mark above its list's own time was never written.
            r#"{"format":1,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":1,"mark":2}]}"#,
            // One list twice.
            r#"{"format":1,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":1,"mark":1},
                                    {"issuer":"30","scope":"","ca_key":"","this_update":2,"mark":2}]}"#,
            // Past the year 9999: no CRL's time (and the error naming the
            // rollback could not print it).
            r#"{"format":1,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":300000000000,"mark":300000000000}]}"#,
            // A number: hex, written without a leading zero, not in format 1.
            r#"{"format":2,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":1,"mark":1,"number":"x1"}]}"#,
            r#"{"format":2,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":1,"mark":1,"number":"0001"}]}"#,
            r#"{"format":1,"lists":[{"issuer":"30","scope":"","ca_key":"","this_update":1,"mark":1,"number":"01"}]}"#,
        ] {
            std::fs::write(file.path(), damaged).unwrap();
            assert!(
                matches!(file.read(), Err(MarksError::Damaged(_))),
                "{damaged}"
            );
        }
    }

    /// Two processes on one data directory: each write takes the newer of
    /// what it holds and what the other wrote, so neither lowers a mark.
    #[test]
    fn a_write_never_lowers_a_mark_another_process_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = MarksFile::at(dir.path().join(FILE_NAME));
        let mut first = Marks::new();
        first.insert(key(1), mark(at(2_000), at(2_000)));
        file.keep(&first).unwrap();

        // A process that took an older list of the same CA, and another CA's.
        let mut second = Marks::new();
        second.insert(key(1), mark(at(1_000), at(1_000)));
        second.insert(key(2), mark(at(3_000), at(2_500)));
        let merged = file.keep(&second).unwrap();
        assert_eq!(merged[&key(1)], mark(at(2_000), at(2_000)));
        assert_eq!(merged[&key(2)], mark(at(3_000), at(2_500)));
        assert_eq!(file.read().unwrap(), merged);
    }

    #[test]
    fn merge_raises_each_time_separately_and_says_whether_anything_moved() {
        let mut into = Marks::new();
        into.insert(key(1), mark(at(100), at(90)));
        let mut from = Marks::new();
        from.insert(key(1), mark(at(100), at(90)));
        assert!(!merge(&mut into, &from), "the same marks move nothing");
        from.insert(key(1), mark(at(50), at(95)));
        assert!(merge(&mut into, &from));
        assert_eq!(
            into[&key(1)],
            mark(at(100), at(95)),
            "each time the later one"
        );
        from.insert(key(3), mark(at(10), at(10)));
        assert!(merge(&mut into, &from));
        assert_eq!(into[&key(3)], mark(at(10), at(10)));

        // Numbers rise on their own, whatever the times do; a list without
        // one lowers nothing.
        from.insert(key(3), numbered(at(10), &[1, 0]));
        assert!(merge(&mut into, &from));
        from.insert(key(3), numbered(at(20), &[0xff]));
        assert!(merge(&mut into, &from), "the time moved");
        assert_eq!(
            into[&key(3)],
            numbered(at(20), &[1, 0]),
            "256 stays above 255"
        );
        from.insert(key(3), mark(at(20), at(20)));
        assert!(!merge(&mut into, &from));
        assert_eq!(
            into[&key(3)].number,
            Some(CrlNumber::from_be_bytes(&[1, 0]))
        );
    }

    #[test]
    fn crl_numbers_compare_as_integers_and_print_as_openssl_does() {
        let n = |b: &[u8]| CrlNumber::from_be_bytes(b);
        assert!(n(&[0, 0, 2]) > n(&[1]));
        assert!(n(&[1, 0]) > n(&[0xff]));
        assert_eq!(n(&[0, 0, 9]), n(&[9]));
        assert!(n(&[]) < n(&[1]) && n(&[0]) == n(&[]));
        assert_eq!(n(&[1, 0]).to_string(), "256");
        assert_eq!(n(&[]).to_string(), "0");
        assert_eq!(n(&[0xff; 16]).to_string(), u128::MAX.to_string());
        assert_eq!(n(&[0xab; 17]).to_string(), format!("0x{}", "ab".repeat(17)));
    }
}
