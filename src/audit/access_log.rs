//! The append-only, hash-chained access log (DESIGN.md invariant 8).
//!
//! Every read of personal data, every denied request, every read of the log
//! itself (and later every key operation) becomes one [`Entry`] — who (role
//! and certificate fingerprint), what (action), when, outcome, origin IP and
//! which objects — appended *before* the response is sent.
//!
//! Chain: `hash_n = SHA-256("checkoutd/access-log" ‖ 0x01 ‖ hash_{n-1} ‖
//! seq ‖ fields)` (see [`Entry::canonical_bytes`]), with `hash_0` = 32 zero
//! bytes, and `mac_n = HMAC-SHA256(access-log key, hash_n)`. Anyone can
//! re-check the links from the API output; only the keyring can vouch for
//! them, so an attacker who rewrites rows and recomputes hashes is caught by
//! the MACs. A head row (last seq and hash, MACed) is updated with every
//! append, so a truncated tail is caught too. The database also refuses
//! UPDATE and DELETE on entries (triggers).
//!
//! Appends go through one writer task per process, which batches whatever
//! is waiting into one transaction; across processes the store serialises
//! on the head row.

use std::sync::Arc;

use ring::digest;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::crypto::mac::MacKey;
use crate::server::identity::{ClientIdentity, Peer};
use crate::store::{Store, StoreError};

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Whether the request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allowed,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allowed" => Some(Outcome::Allowed),
            "denied" => Some(Outcome::Denied),
            _ => None,
        }
    }
}

/// The fields of one entry, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Entry {
    pub at: String,
    /// A role name, `none` (no certificate) or `unknown` (no valid role).
    pub role: String,
    /// Hex SHA-256 of the client certificate, or empty.
    pub cert_fingerprint: String,
    pub origin_ip: String,
    /// `METHOD /route/template`, e.g. `GET /v1/shipments`.
    pub action: String,
    /// Ids of the objects touched (order ids), in response order.
    pub objects: Vec<String>,
    pub outcome: Outcome,
    pub status: u16,
}

impl Entry {
    /// An entry for a request from `peer`.
    pub fn for_request(
        peer: Option<&Peer>,
        action: String,
        objects: Vec<String>,
        outcome: Outcome,
        status: u16,
    ) -> Self {
        let (role, fingerprint, ip) = match peer {
            None => ("none".to_owned(), String::new(), String::from("-")),
            Some(p) => match &p.identity {
                ClientIdentity::Anonymous => {
                    ("none".to_owned(), String::new(), p.addr.ip().to_string())
                }
                ClientIdentity::Certified { role, fingerprint } => (
                    role.map_or_else(|| "unknown".to_owned(), |r| r.as_str().to_owned()),
                    fingerprint.to_hex(),
                    p.addr.ip().to_string(),
                ),
            },
        };
        Entry {
            at: crate::ids::now(),
            role,
            cert_fingerprint: fingerprint,
            origin_ip: ip,
            action,
            objects,
            outcome,
            status,
        }
    }

    /// The objects as stored: a JSON array of strings.
    pub fn objects_json(&self) -> String {
        serde_json::to_string(&self.objects).unwrap_or_else(|_| String::from("[]"))
    }

    /// The bytes hashed into the chain:
    /// `"checkoutd/access-log" ‖ 0x01 ‖ prev_hash (32) ‖ seq (u64 BE) ‖
    /// for each of at, role, cert_fingerprint, origin_ip, action, objects
    /// (JSON), outcome: u32 BE byte length ‖ UTF-8 bytes ‖ status (u16 BE)`.
    pub fn canonical_bytes(&self, seq: u64, prev_hash: &[u8; 32]) -> Vec<u8> {
        let objects = self.objects_json();
        let mut out = Vec::with_capacity(128 + objects.len() + self.action.len());
        out.extend_from_slice(b"checkoutd/access-log");
        out.push(1);
        out.extend_from_slice(prev_hash);
        out.extend_from_slice(&seq.to_be_bytes());
        for field in [
            self.at.as_str(),
            self.role.as_str(),
            self.cert_fingerprint.as_str(),
            self.origin_ip.as_str(),
            self.action.as_str(),
            objects.as_str(),
            self.outcome.as_str(),
        ] {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(&self.status.to_be_bytes());
        out
    }
}

/// An entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEntry {
    pub seq: u64,
    pub entry: Entry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub mac: [u8; 32],
    /// As read back: a field held what this service never writes (`objects`
    /// not a JSON list of strings, an unknown `outcome`), so `entry` shows
    /// an empty list or `denied` in its place. Never set for an entry this
    /// service wrote; the chain does not verify at such an entry.
    pub damaged: Option<&'static str>,
}

impl ChainedEntry {
    /// Whether the entry is as this service wrote it: read back whole, its
    /// hash over its own fields, its MAC under `key`. (Where it sits in the
    /// chain is the chain check's to say.)
    pub fn verifies(&self, key: &MacKey) -> bool {
        self.damaged.is_none()
            && entry_hash(self.seq, &self.prev_hash, &self.entry) == self.hash
            && key.verify(&[&self.hash], &self.mac)
    }
}

/// The stored head of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    pub mac: [u8; 32],
}

/// Computes links: owned by the writer, lent to the store inside its
/// append transaction.
pub struct Chainer<'a> {
    key: &'a MacKey,
}

impl<'a> Chainer<'a> {
    pub fn new(key: &'a MacKey) -> Self {
        Chainer { key }
    }

    /// The hash and MAC of `entry` at `seq` after `prev_hash`.
    pub fn link(&self, seq: u64, prev_hash: &[u8; 32], entry: &Entry) -> ([u8; 32], [u8; 32]) {
        let hash = entry_hash(seq, prev_hash, entry);
        (hash, self.key.sign(&[&hash]))
    }

    /// The MAC of the head row.
    pub fn head_mac(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        self.key
            .sign(&[b"checkoutd/access-log-head", &seq.to_be_bytes(), hash])
    }

    /// Whether `head`'s MAC is the one [`Self::head_mac`] gives, compared
    /// in constant time as every MAC is.
    pub fn head_verifies(&self, head: &Head) -> bool {
        crate::crypto::mac::constant_time_eq(&self.head_mac(head.seq, &head.hash), &head.mac)
    }
}

pub fn entry_hash(seq: u64, prev_hash: &[u8; 32], entry: &Entry) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, &entry.canonical_bytes(seq, prev_hash));
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why the chain does not verify. Names the entry, nothing else.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    #[error("access-log entry {seq}: {what}")]
    Entry { seq: u64, what: &'static str },
    #[error("access-log head: {0}")]
    Head(&'static str),
    /// A stored value of this kind is never written by this service (a
    /// hash of the wrong length, a negative sequence number): an edit.
    #[error("access log: {0} does not hold a value this service writes (edited)")]
    Damaged(&'static str),
    /// The log could not be read: nothing is known about the chain. Not a
    /// finding — callers pass it on as the store error it is (the offline
    /// audit exits 2, an I/O error, not 1, "failures found").
    #[error("reading the access log failed")]
    Store(#[source] Arc<StoreError>),
}

/// Findings compare by what they say; a read failure equals only itself.
impl PartialEq for ChainError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ChainError::Entry { seq, what },
                ChainError::Entry {
                    seq: other_seq,
                    what: other_what,
                },
            ) => seq == other_seq && what == other_what,
            (ChainError::Head(a), ChainError::Head(b)) => a == b,
            (ChainError::Damaged(a), ChainError::Damaged(b)) => a == b,
            (ChainError::Store(a), ChainError::Store(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ChainError {}

/// A read that failed: a value that could not be what this service wrote
/// is a finding, anything else (the database away, a failed query) is not.
fn store_failed(error: StoreError) -> ChainError {
    match error {
        StoreError::Corrupt(column) => ChainError::Damaged(column),
        other => ChainError::Store(Arc::new(other)),
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChainStatus {
    pub entries: u64,
    pub head_seq: u64,
    /// The head's hash: a report that carries it anchors the chain, so a
    /// later rollback to an older head is visible against the report.
    #[serde(serialize_with = "hex_hash")]
    pub head_hash: [u8; 32],
}

fn hex_hash<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::hex::encode(h))
}

/// Page size while verifying: memory stays bounded however long the log.
const VERIFY_PAGE: u32 = 1000;

/// Re-verifies the whole chain: sequence without gaps, every link, every
/// MAC, and the head. The head is read *first* and the chain verified up to
/// it, so entries appended while verification runs (a live server) neither
/// break it nor go unnoticed next time.
pub async fn verify_chain(store: &dyn Store, key: &MacKey) -> Result<ChainStatus, ChainError> {
    verify_chain_since(store, key, None).await
}

/// A point of the chain an earlier verification saw (a signed report's
/// head): the chain must still pass through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// [`verify_chain`], and the chain must still pass through `since`.
///
/// The head row is MACed, but a MACed head from a backup is as genuine as
/// the current one: with the tail cut off and an older head row put back,
/// the chain verifies on its own. Only a head seen before can tell —
/// the previous signed report's (`checkoutd audit --since`), or the last
/// one this process verified (the server's report job).
pub async fn verify_chain_since(
    store: &dyn Store,
    key: &MacKey,
    since: Option<Anchor>,
) -> Result<ChainStatus, ChainError> {
    let status = verify_chain_walk(store, key, since).await?;
    if let Some(anchor) = since
        && anchor.seq > status.head_seq
    {
        return Err(ChainError::Head(
            "behind the head an earlier verification saw (truncated and an older head put back)",
        ));
    }
    Ok(status)
}

/// How many times a walk follows a head that moved while it walked.
const MAX_HEAD_ROUNDS: u32 = 3;

async fn verify_chain_walk(
    store: &dyn Store,
    key: &MacKey,
    since: Option<Anchor>,
) -> Result<ChainStatus, ChainError> {
    let chainer = Chainer::new(key);
    // A row numbered below 1 lies outside the chain, yet the dispatch
    // checks read the whole table; the walk below starts after i64::MIN,
    // which `seq > n` never reaches: asked for directly.
    if store
        .access_log_lowest()
        .await
        .map_err(store_failed)?
        .is_some_and(|lowest| lowest < 1)
    {
        return Err(ChainError::Entry {
            seq: 0,
            what: "numbered below 1, outside the chain (entries are numbered from 1: added)",
        });
    }
    let head = store.access_log_head().await.map_err(store_failed)?;
    let Some(head) = head else {
        // No head: there must be no entries either.
        let first = store
            .access_log_page(i64::MIN, 1)
            .await
            .map_err(store_failed)?;
        if first.is_empty() {
            return Ok(ChainStatus {
                entries: 0,
                head_seq: 0,
                head_hash: GENESIS,
            });
        }
        // Perhaps the first entry was appended just now: look once more.
        return match store.access_log_head().await.map_err(store_failed)? {
            None => Err(ChainError::Head("missing while entries exist")),
            Some(_) => Box::pin(verify_chain_walk(store, key, since)).await,
        };
    };
    if !chainer.head_verifies(&head) {
        return Err(ChainError::Head("MAC does not verify"));
    }
    let mut head = head;
    let mut prev = GENESIS;
    let mut expected_seq = 1u64;
    let mut rounds = 0;
    loop {
        'pages: while expected_seq <= head.seq {
            // The first page from below 0: a row numbered below 1 (planted
            // before the chain's first entry, outside it, yet counted by the
            // dispatch checks that join the whole table) is read and named.
            let after = match expected_seq {
                1 => i64::MIN,
                n => i64::try_from(n - 1).map_err(|_| ChainError::Damaged("access_log.seq"))?,
            };
            let page = store
                .access_log_page(after, VERIFY_PAGE)
                .await
                .map_err(store_failed)?;
            if page.is_empty() {
                break;
            }
            for e in page {
                if e.seq == 0 {
                    return Err(ChainError::Entry {
                        seq: 0,
                        what: "numbered 0, outside the chain (entries are numbered from 1: added)",
                    });
                }
                // Past the head, the chain walked whole: below.
                if e.seq > head.seq && expected_seq > head.seq {
                    break 'pages;
                }
                if e.seq != expected_seq {
                    return Err(ChainError::Entry {
                        seq: expected_seq,
                        what: "missing (sequence gap)",
                    });
                }
                if e.prev_hash != prev {
                    return Err(ChainError::Entry {
                        seq: e.seq,
                        what: "does not link to the previous entry",
                    });
                }
                if let Some(what) = e.damaged {
                    return Err(ChainError::Entry { seq: e.seq, what });
                }
                if entry_hash(e.seq, &e.prev_hash, &e.entry) != e.hash {
                    return Err(ChainError::Entry {
                        seq: e.seq,
                        what: "hash does not match its fields (edited)",
                    });
                }
                if !key.verify(&[&e.hash], &e.mac) {
                    return Err(ChainError::Entry {
                        seq: e.seq,
                        what: "MAC does not verify (rewritten)",
                    });
                }
                if since.is_some_and(|a| a.seq == e.seq && a.hash != e.hash) {
                    return Err(ChainError::Entry {
                        seq: e.seq,
                        what: "differs from the entry an earlier verification saw (rewritten)",
                    });
                }
                prev = e.hash;
                expected_seq += 1;
            }
        }
        // Entries past the head: appends that landed during the walk, whose
        // newer head (written in the same transaction) covers them and is
        // walked to in turn — or a head rolled back (a genuine older head row
        // written back: it verifies, and every later append then fails on the
        // seq it gives), which must not pass for intact.
        if expected_seq - 1 != head.seq {
            break;
        }
        let after = i64::try_from(head.seq).map_err(|_| ChainError::Damaged("access_log.seq"))?;
        let Some(next) = store
            .access_log_page(after, 1)
            .await
            .map_err(store_failed)?
            .into_iter()
            .next()
        else {
            break;
        };
        let newer = store
            .access_log_head()
            .await
            .map_err(store_failed)?
            .ok_or(ChainError::Head("missing while entries exist"))?;
        if !chainer.head_verifies(&newer) {
            return Err(ChainError::Head("MAC does not verify"));
        }
        if newer.seq < next.seq {
            return Err(ChainError::Entry {
                seq: next.seq,
                what: "lies past the head (planted, or an older head put back)",
            });
        }
        // Appends may keep landing: after a few rounds, what lies past the
        // walked head is covered by a newer authentic head, and the next
        // verification walks it.
        rounds += 1;
        if rounds > MAX_HEAD_ROUNDS {
            break;
        }
        head = newer;
    }
    let last = expected_seq - 1;
    if last != head.seq || prev != head.hash {
        return Err(ChainError::Head(
            "does not match the last entry (truncated or rolled back)",
        ));
    }
    Ok(ChainStatus {
        entries: last,
        head_seq: head.seq,
        head_hash: head.hash,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the access-log writer has stopped")]
    WriterGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Job = (Entry, oneshot::Sender<Result<u64, Arc<StoreError>>>);

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Job>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 256;

impl AccessLog {
    /// Starts the writer task. It ends when every handle is dropped.
    ///
    /// It holds the access log's MAC key and nothing else of the keyring:
    /// a task living as long as the process must not keep a KEK that
    /// `keys destroy` later removes from the keyring file.
    pub fn start(store: Arc<dyn Store>, key: crate::crypto::mac::MacKey) -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        tokio::spawn(async move {
            let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                let entries: Vec<Entry> = jobs.iter().map(|(e, _)| e.clone()).collect();
                let chainer = Chainer::new(&key);
                let result = store.append_access_log(&entries, &chainer).await;
                match result {
                    Ok(seqs) => {
                        for ((_, ack), seq) in jobs.drain(..).zip(seqs) {
                            let _ = ack.send(Ok(seq));
                        }
                    }
                    Err(error) => {
                        tracing::error!(error = %error, "appending to the access log failed");
                        let error = Arc::new(error);
                        for (_, ack) in jobs.drain(..) {
                            let _ = ack.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        AccessLog { tx }
    }

    /// Appends one entry and waits until it is committed. Callers send their
    /// response only after this returns `Ok`.
    pub async fn append(&self, entry: Entry) -> Result<u64, AppendError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send((entry, ack))
            .await
            .map_err(|_| AppendError::WriterGone)?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AppendError::Store(StoreError::Shared(e))),
            Err(_) => Err(AppendError::WriterGone),
        }
    }
}
