//! Order intake: from a request body to a durable, encrypted order.
//!
//! The steps, all in the request task except the commit:
//! 1. keyed hash of the raw body (for idempotency);
//! 2. a process-local in-flight claim on `(client, key)` → 409 for a
//!    concurrent duplicate;
//! 3. a stored response for the key → replay (same body) or 422 (different);
//! 4. parse and validate ([`crate::domain::order::parse`]) → 400/422;
//! 5. seal every record ([`seal`]) — nothing personal leaves this step in
//!    clear;
//! 6. one transaction writes the order, its records, its consent tags and
//!    the idempotency row together; the response is sent only after commit.
//!
//! Across processes, the `(client, key)` primary key is the arbiter: a
//! losing racer finds the winner's row and replays it.

pub mod commit;
pub mod seal;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::crypto::CryptoError;
use crate::crypto::keyring::KeyringHandle;
use crate::crypto::mac::MacKey;
use crate::domain::form::{self, Malformed};
use crate::domain::json::{self, JsonError};
use crate::domain::order::{self, Rules, Source};
use crate::http::FieldError;
use crate::server::identity::Caller;
use crate::store::rows::{CommitOutcome, StoredResponse};
use crate::store::{Store, StoreError};
use serde_json::Value;

/// The two body formats an order may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Form,
}

impl MediaType {
    /// Parses a Content-Type header: `application/json` or
    /// `application/x-www-form-urlencoded`, with at most a UTF-8 charset.
    pub fn from_header(value: &str) -> Option<MediaType> {
        let mut parts = value.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        // An empty parameter (`application/json;`) is allowed (RFC 9110).
        for param in parts.filter(|p| !p.trim().is_empty()) {
            let (name, val) = param.split_once('=')?;
            let val = val.trim().trim_matches('"').to_ascii_lowercase();
            if !name.trim().eq_ignore_ascii_case("charset") || (val != "utf-8" && val != "utf8") {
                return None;
            }
        }
        match essence.as_str() {
            "application/json" => Some(MediaType::Json),
            "application/x-www-form-urlencoded" => Some(MediaType::Form),
            _ => None,
        }
    }

    /// The request's one `Content-Type`; `None` when it is missing, not
    /// one of ours, or sent more than once (which one the client meant is
    /// not ours to guess).
    pub fn of(headers: &http::HeaderMap) -> Option<MediaType> {
        let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
        let (first, second) = (values.next(), values.next());
        if second.is_some() {
            return None;
        }
        first
            .and_then(|v| v.to_str().ok())
            .and_then(MediaType::from_header)
    }

    fn token(self) -> &'static [u8] {
        match self {
            MediaType::Json => b"application/json",
            MediaType::Form => b"application/x-www-form-urlencoded",
        }
    }
}

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// 1–255 visible ASCII characters, or an RFC 8941 sf-string
    /// (`"..."`, with `\"` and `\\` escapes) whose content is 1–255
    /// printable ASCII characters.
    pub fn parse(raw: &[u8]) -> Option<IdempotencyKey> {
        let key = if raw.first() == Some(&b'"') {
            let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => match bytes.next() {
                        Some(&e @ (b'"' | b'\\')) => out.push(e),
                        _ => return None,
                    },
                    b'"' => return None,
                    0x20..=0x7e => out.push(b),
                    _ => return None,
                }
            }
            out
        } else {
            if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
                return None;
            }
            raw.to_vec()
        };
        if key.is_empty() || key.len() > 255 {
            return None;
        }
        String::from_utf8(key).ok().map(IdempotencyKey)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an order was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    MalformedJson(#[from] JsonError),
    #[error("the form body is malformed")]
    MalformedForm(#[from] Malformed),
    #[error("the order form has errors")]
    Invalid(Vec<FieldError>),
    #[error("the idempotency key was used with a different body")]
    KeyReused,
    #[error("a request with this idempotency key is still in progress")]
    InFlight,
    /// The key was used longer ago than the replay window (or its order
    /// was purged): its request hash is gone, so a retry cannot be told
    /// from another body. Neither replayed nor taken as a new order.
    #[error("the idempotency key's replay window has passed")]
    ReplayWindowPassed {
        order_id: uuid::Uuid,
        created_at: String,
    },
    /// The stored response for the key failed its MAC check (edited in the
    /// database, copied from another key, or written before the MAC
    /// existed), or its row cannot even be read (`order_id` is then
    /// `None`): it is not replayed, and no new order is made either.
    #[error("the stored response for an idempotency key does not verify")]
    StoredResponseUnverifiable { order_id: Option<uuid::Uuid> },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// How an accepted submission was answered.
#[derive(Debug)]
pub enum Accepted {
    Created(StoredResponse),
    Replayed(StoredResponse),
}

/// The intake service shared by all requests.
pub struct Intake {
    rng: SystemRandom,
    /// The keyring in force (swapped when `keys rotate` rewrites it).
    keyring: Arc<KeyringHandle>,
    store: Arc<dyn Store>,
    /// The group-commit writer every accepted order goes through.
    commits: commit::GroupCommit,
    policy_versions: Vec<String>,
    /// How long a key's first answer is replayed (`--replay-window-hours`).
    replay_window: std::time::Duration,
    /// `(client, key)` pairs being processed in this process right now.
    in_flight: Arc<InFlight>,
}

/// The `(client, key)` pairs this process is working on, and those whose
/// last commit may have landed without this process knowing.
#[derive(Default)]
pub(crate) struct InFlight {
    held: Mutex<HashSet<([u8; 32], String)>>,
    /// Pairs whose batch failed with its outcome unknown (the connection
    /// broke mid-statement: `StoreError::outcome_unknown`), until when the
    /// database may still commit it. Consulted only where a retry would
    /// otherwise be answered as if nothing had been stored.
    uncertain: Mutex<Uncertain>,
}

/// The uncertain pairs with the time each stops being so, and when the
/// expired ones were last dropped (at most once a second: an outage that
/// fails every batch must not make each mark walk the whole map).
#[derive(Default)]
struct Uncertain {
    until: std::collections::HashMap<([u8; 32], String), std::time::Instant>,
    pruned: Option<std::time::Instant>,
}

impl InFlight {
    /// Whether `(client, key)` is being worked on in this process.
    #[cfg(test)]
    pub(crate) fn is_held(&self, client: [u8; 32], key: &str) -> bool {
        self.held
            .lock()
            .is_ok_and(|set| set.contains(&(client, key.to_owned())))
    }

    /// Whether the last commit of `(client, key)` may still land.
    pub(crate) fn is_uncertain(&self, client: [u8; 32], key: &str) -> bool {
        self.uncertain.lock().is_ok_and(|map| {
            map.until
                .get(&(client, key.to_owned()))
                .is_some_and(|until| std::time::Instant::now() < *until)
        })
    }
}

/// A request's hold on its `(client, key)` pair in this process, taken as
/// soon as the headers are read (so a duplicate sent while the first body is
/// still uploading gets 409) and released when the request ends — unless
/// its order is still with the writer ([`KeyHold`]).
pub struct Claim {
    client: [u8; 32],
    key: IdempotencyKey,
    hold: KeyHold,
}

/// The pair's entry in the in-flight set, removed when the last copy is
/// dropped. The request holds one; group commit holds another with the
/// order until the order is resolved — answered, left out, or, once its
/// request gave up on the commit (answered 503, "retry with the same
/// key"), until the store call that may still commit it has returned
/// (`commit::GroupCommit::commit`). So a retry meanwhile gets 409,
/// retryable, never a final 422 for a body that no longer validates (a
/// card that expired at midnight) while its first attempt is about to
/// land.
#[derive(Clone)]
pub struct KeyHold {
    _held: Arc<HeldKey>,
}

struct HeldKey {
    set: Arc<InFlight>,
    client: [u8; 32],
    key: String,
}

impl KeyHold {
    /// The commit carrying this key failed with its outcome unknown: for
    /// `window`, a retry whose body no longer validates is told the key is
    /// in flight (409, retryable) rather than 422 — the first attempt may
    /// still land. A retry with a valid body needs no such mark: its commit
    /// finds the key taken, or takes it.
    pub fn outcome_unknown(&self, window: std::time::Duration) {
        let held = &self._held;
        if let Ok(mut map) = held.set.uncertain.lock() {
            let now = std::time::Instant::now();
            if map
                .pruned
                .is_none_or(|at| now.saturating_duration_since(at).as_secs() >= 1)
            {
                map.until.retain(|_, until| now < *until);
                map.pruned = Some(now);
            }
            let until = now.checked_add(window).unwrap_or(now);
            map.until.insert((held.client, held.key.clone()), until);
        }
    }
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.held.lock() {
            set.remove(&(self.client, std::mem::take(&mut self.key)));
        }
    }
}

#[cfg(test)]
impl KeyHold {
    /// A hold on `(client, key)` in `set`, taken as `Intake::claim` takes
    /// one (tests of group commit).
    pub(crate) fn taken_in(set: &Arc<InFlight>, client: [u8; 32], key: &str) -> Option<Self> {
        let mut entries = set.held.lock().ok()?;
        entries.insert((client, key.to_owned())).then(|| KeyHold {
            _held: Arc::new(HeldKey {
                set: set.clone(),
                client,
                key: key.to_owned(),
            }),
        })
    }
}

impl std::fmt::Debug for KeyHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHold")
    }
}

impl Intake {
    pub fn new(
        keyring: Arc<KeyringHandle>,
        store: Arc<dyn Store>,
        policy_versions: Vec<String>,
        replay_window: std::time::Duration,
        commit_queue: usize,
    ) -> Self {
        Intake {
            rng: SystemRandom::new(),
            keyring,
            commits: commit::GroupCommit::with_queue(store.clone(), commit_queue),
            store,
            policy_versions,
            replay_window,
            in_flight: Arc::default(),
        }
    }

    /// A graceful stop began; requests still running at `by` are cut off
    /// (`commit::GroupCommit::drain_by`).
    pub fn drain_by(&self, by: tokio::time::Instant) {
        self.commits.drain_by(by);
    }

    /// Whether an order commit outlived its time limit and is still
    /// running (`commit::GroupCommit::stalled`): intake is not ready.
    pub fn commit_stalled(&self) -> bool {
        self.commits.stalled()
    }

    /// Whether a stored consent tag's MAC verifies (an edit in the database
    /// is not served as genuine).
    pub fn tag_verifies(&self, tag: &crate::domain::consent::ConsentTag) -> bool {
        self.keyring
            .current()
            .consent_tag_key()
            .verify(&[&tag.canonical_bytes()], &tag.mac)
    }

    /// Claims `(caller, key)` for one request; `InFlight` if another request
    /// of this process holds it.
    pub fn claim(&self, caller: &Caller, key: IdempotencyKey) -> Result<Claim, IntakeError> {
        let client = *caller.fingerprint.as_bytes();
        let mut set = self
            .in_flight
            .held
            .lock()
            .map_err(|_| IntakeError::InFlight)?;
        if !set.insert((client, key.as_str().to_owned())) {
            return Err(IntakeError::InFlight);
        }
        let hold = KeyHold {
            _held: Arc::new(HeldKey {
                set: self.in_flight.clone(),
                client,
                key: key.as_str().to_owned(),
            }),
        };
        Ok(Claim { client, key, hold })
    }

    /// Takes one order under a claim. `body` is zeroized when this returns.
    // Debug level: a span per order costs measurable time on the hot path
    // at the default (info) level; errors name their module anyway.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn submit(
        &self,
        claim: &Claim,
        media: MediaType,
        body: Zeroizing<Vec<u8>>,
        answer_by: Option<tokio::time::Instant>,
    ) -> Result<Accepted, IntakeError> {
        let (client, key) = (claim.client, &claim.key);
        let keyring = self.keyring.current();
        let mut tree = match media {
            MediaType::Json => json::parse_strict(&body)?,
            MediaType::Form => form::parse(&body)?,
        };
        drop(body);
        let request_hash = match request_hash(keyring.request_hash_key(), media, &mut tree) {
            Ok(hash) => hash,
            Err(error) => {
                order::scrub(tree);
                return Err(error.into());
            }
        };

        // No read before the commit: the commit claims the key itself
        // (a new key is the common case). A stored key is looked up only
        // when it matters — the commit found it taken, or the body no longer
        // validates (a retry after the card's expiry month ended, or after
        // its policy version was retired, still replays its first answer).
        let source = match media {
            MediaType::Json => Source::Json,
            MediaType::Form => Source::Form,
        };
        let rules = Rules {
            policy_versions: &self.policy_versions,
            now: time::OffsetDateTime::now_utc(),
        };
        let replay_stored = |found| {
            replay(
                &keyring,
                client,
                key,
                found,
                &request_hash,
                &self.window_start(),
            )
        };
        let form = match order::parse(tree, source, &rules) {
            Ok(form) => form,
            Err(errors) => {
                // Read once the commits in flight anywhere have ended: an
                // earlier attempt's may land after this read otherwise.
                return match self
                    .stored(&keyring, client, key, answer_by, Settled::Yes)
                    .await?
                {
                    Some(found) => replay_stored(found),
                    // An earlier attempt whose commit may yet land (its
                    // connection broke mid-statement): not a final 422.
                    None if self.in_flight.is_uncertain(client, key.as_str()) => {
                        Err(IntakeError::InFlight)
                    }
                    None => Err(IntakeError::Invalid(errors)),
                };
            }
        };
        let sealed = seal::seal_order(&self.rng, &keyring, form, client, key, request_hash)?;
        let response = sealed.idempotency.response.clone();
        match self
            .commits
            .commit(sealed, Some(claim.hold.clone()), answer_by)
            .await?
        {
            CommitOutcome::Committed => Ok(Accepted::Created(response)),
            // The key was stored before (a retry), or by another process in
            // the meantime: answer as the stored record says.
            CommitOutcome::DuplicateKey => {
                match self
                    .stored(&keyring, client, key, answer_by, Settled::No)
                    .await?
                {
                    Some(found) => replay_stored(found),
                    None => Err(IntakeError::InFlight),
                }
            }
        }
    }

    /// The oldest `created_at` whose first answer is still replayed: a key
    /// older is past its window even before retention's hourly pass has
    /// emptied its request hash.
    fn window_start(&self) -> String {
        let window = time::Duration::try_from(self.replay_window).unwrap_or(time::Duration::MAX);
        let start = time::OffsetDateTime::now_utc()
            .checked_sub(window)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        crate::ids::timestamp(start)
    }

    /// The stored idempotency record of `(client, key)`, if any. A row that
    /// is there but cannot be read (a column no longer holds what this
    /// service writes: edited in the database) is answered like one whose
    /// MAC fails — not replayed, no second order — not as a failure of
    /// the database.
    ///
    /// Bounded as the commit wait is (`answer_by` less
    /// [`commit::ANSWER_MARGIN`]): a slow read answers 503 "retry", never
    /// the time limit's 408, which tells a client nothing was kept — and
    /// this read runs exactly when the key's order may exist.
    async fn stored(
        &self,
        keyring: &crate::crypto::keyring::Keyring,
        client: [u8; 32],
        key: &IdempotencyKey,
        answer_by: Option<tokio::time::Instant>,
        settled: Settled,
    ) -> Result<Option<crate::store::rows::KeyRecord>, IntakeError> {
        let key_hash = seal::key_hash(keyring, key);
        let read = async {
            match settled {
                Settled::Yes => self.store.idempotency_key_settled(&client, &key_hash).await,
                Settled::No => self.store.idempotency_key(&client, &key_hash).await,
            }
        };
        let found = match answer_by {
            None => read.await,
            Some(by) => {
                let wait = by
                    .saturating_duration_since(tokio::time::Instant::now())
                    .saturating_sub(commit::ANSWER_MARGIN);
                tokio::time::timeout(wait, read)
                    .await
                    .unwrap_or(Err(StoreError::Timeout(wait)))
            }
        };
        match found {
            Err(e) if e.is_unreadable_row() => {
                Err(IntakeError::StoredResponseUnverifiable { order_id: None })
            }
            found => Ok(found?),
        }
    }
}

/// Whether a stored-key read waits for the order commits in flight (see
/// [`Store::idempotency_key_settled`]).
///
/// [`Store::idempotency_key_settled`]: crate::store::Store::idempotency_key_settled
#[derive(Clone, Copy)]
enum Settled {
    Yes,
    No,
}

/// The keyed hash that tells a retry from a different request:
/// HMAC(request key, media type ‖ 0x00 ‖ canonical tree), where the
/// canonical tree is the parsed body with sorted object members and
/// **without `card.cvc`** — the stored hash must carry no information
/// about the CVC (invariant 3), or anyone holding the keyring could
/// brute-force the 3–4 digits from it. Two bodies that differ only in
/// their CVC are therefore the same request.
pub fn request_hash(
    key: &MacKey,
    media: MediaType,
    tree: &mut Value,
) -> Result<[u8; 32], CryptoError> {
    let cvc = tree
        .get_mut("card")
        .and_then(Value::as_object_mut)
        .and_then(|card| card.remove("cvc"));
    let canonical = crate::crypto::json_zeroizing(&*tree);
    if let (Some(cvc), Some(card)) = (cvc, tree.get_mut("card").and_then(Value::as_object_mut)) {
        card.insert("cvc".to_owned(), cvc);
    }
    let canonical = canonical?;
    Ok(key.sign(&[media.token(), &[0], canonical.as_slice()]))
}

/// The answer to a request whose key is stored: the stored response if it
/// verifies and the body is the same request, 422 for another body, and
/// 422 naming the order when the row's replay window has passed — its hash
/// emptied by retention, or its `created_at` before `window_start` (the
/// hourly pass may not have reached it yet, or keep failing). The MAC is
/// checked first: a forged or emptied request hash, or a forged time,
/// must not decide anything.
fn replay(
    keyring: &crate::crypto::keyring::Keyring,
    client: [u8; 32],
    key: &IdempotencyKey,
    found: crate::store::rows::KeyRecord,
    request_hash: &[u8; 32],
    window_start: &str,
) -> Result<Accepted, IntakeError> {
    let key_hash = seal::key_hash(keyring, key);
    if !seal::stored_response_verifies(keyring, &client, &key_hash, &found) {
        return Err(IntakeError::StoredResponseUnverifiable {
            order_id: Some(found.response.order_id),
        });
    }
    // Both timestamps are `ids::timestamp`'s fixed-width UTC form, which
    // sorts as text (retention's pass compares them the same way).
    if found.request_hash.is_empty() || found.created_at.as_str() < window_start {
        return Err(IntakeError::ReplayWindowPassed {
            order_id: found.response.order_id,
            created_at: found.created_at,
        });
    }
    if crate::crypto::mac::constant_time_eq(&found.request_hash, request_hash) {
        Ok(Accepted::Replayed(found.response))
    } else {
        Err(IntakeError::KeyReused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored answer is replayed only inside its window, told by its own
    /// (MAC-covered) time even when its request hash was not emptied yet;
    /// a time edited in the database decides nothing.
    #[test]
    fn a_key_older_than_the_replay_window_is_not_replayed_before_retention_runs() {
        use crate::crypto::keyring::Keyring;
        let rng = SystemRandom::new();
        let keyring = Keyring::generate(&rng, "2026-11-29T00:00:00.000Z").unwrap();
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let form = seal::tests::form(false);
        let sealed = seal::seal_order(&rng, &keyring, form, [1; 32], &key, [2; 32]).unwrap();
        let stored = &sealed.idempotency;
        let found = || crate::store::rows::KeyRecord {
            request_hash: stored.request_hash.to_vec(),
            response: stored.response.clone(),
            created_at: stored.created_at.clone(),
            mac: Some(stored.mac.to_vec()),
        };
        let before = "2000-01-01T00:00:00.000Z";
        let after = "2999-01-01T00:00:00.000Z";
        let replayed = replay(&keyring, [1; 32], &key, found(), &[2; 32], before);
        assert!(matches!(replayed, Ok(Accepted::Replayed(_))));
        let passed = replay(&keyring, [1; 32], &key, found(), &[2; 32], after);
        assert!(
            matches!(passed, Err(IntakeError::ReplayWindowPassed { order_id, .. }) if order_id == stored.response.order_id)
        );
        // Inside the window, an older time written into the row does not
        // verify: refused as unverifiable, not as "window passed".
        let mut edited = found();
        edited.created_at = "2001-01-01T00:00:00.000Z".into();
        let forged = replay(&keyring, [1; 32], &key, edited, &[2; 32], before);
        assert!(matches!(
            forged,
            Err(IntakeError::StoredResponseUnverifiable { .. })
        ));
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse(b"order-123").is_some());
        assert_eq!(
            IdempotencyKey::parse(b"\"a b\\\"c\"").unwrap().as_str(),
            "a b\"c"
        );
        assert!(IdempotencyKey::parse(b"").is_none());
        assert!(IdempotencyKey::parse(b"\"\"").is_none());
        assert!(IdempotencyKey::parse(b"has space").is_none());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_none());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_some());
        assert!(IdempotencyKey::parse(b"\"unterminated").is_none());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_none());
    }

    #[test]
    fn the_request_hash_carries_nothing_of_the_cvc() {
        let key = MacKey::new(1, zeroize::Zeroizing::new([7; 32]));
        let body = |cvc: &str, qty: u32| {
            let text = format!(
                r#"{{"items":[{{"sku":"A","quantity":{qty}}}],"card":{{"number":"4012888888881881","cvc":"{cvc}"}}}}"#
            );
            json::parse_strict(text.as_bytes()).unwrap()
        };
        let hash = |mut v: Value| request_hash(&key, MediaType::Json, &mut v).unwrap();
        // Every CVC gives the same hash: brute force learns nothing.
        let reference = hash(body("123", 1));
        for cvc in ["000", "124", "999", "1234"] {
            assert_eq!(hash(body(cvc, 1)), reference);
        }
        // Anything else changes it; member order does not.
        assert_ne!(hash(body("123", 2)), reference);
        let reordered = json::parse_strict(
            br#"{"card":{"cvc":"9","number":"4012888888881881"},"items":[{"quantity":1,"sku":"A"}]}"#,
        )
        .unwrap();
        assert_eq!(hash(reordered), reference);
        assert_ne!(
            request_hash(&key, MediaType::Form, &mut body("123", 1)).unwrap(),
            reference
        );
        // The CVC is put back for validation.
        let mut v = body("123", 1);
        request_hash(&key, MediaType::Json, &mut v).unwrap();
        assert_eq!(v["card"]["cvc"], "123");
    }

    #[test]
    fn media_types() {
        assert_eq!(
            MediaType::from_header("application/json"),
            Some(MediaType::Json)
        );
        assert_eq!(
            MediaType::from_header("Application/JSON; charset=UTF-8"),
            Some(MediaType::Json)
        );
        assert_eq!(
            MediaType::from_header("application/x-www-form-urlencoded"),
            Some(MediaType::Form)
        );
        assert_eq!(
            MediaType::from_header("application/json; charset=latin1"),
            None
        );
        assert_eq!(MediaType::from_header("text/plain"), None);
        assert_eq!(
            MediaType::from_header("multipart/form-data; boundary=x"),
            None
        );
        // An empty parameter is allowed (RFC 9110).
        assert_eq!(
            MediaType::from_header("application/json;"),
            Some(MediaType::Json)
        );
        assert_eq!(
            MediaType::from_header("application/json; ;charset=utf-8"),
            Some(MediaType::Json)
        );
        // Two Content-Type headers: which one was meant is not ours to guess.
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        assert_eq!(MediaType::of(&headers), Some(MediaType::Json));
        headers.append(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(MediaType::of(&headers), None);
    }
}
