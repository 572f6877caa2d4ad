//! Key life-cycle operations behind `checkoutd keys …` (PCI DSS 3.6/3.7):
//! status, rotation, re-wrapping and destruction of key-encrypting keys.
//!
//! Invariants:
//! - no key material is ever printed; status shows versions, states, dates
//!   and how many records each version wraps;
//! - rotation adds an active version and retires the previous one (it still
//!   opens, never seals — enforced by `SealingKek`); a running server picks
//!   the new keyring up within a second (it polls the file);
//! - rewrap re-wraps data keys only (record ciphertexts are untouched), in
//!   batches, each its own transaction and guarded by the old version, so it
//!   is resumable and safe while the server runs;
//! - destroy refuses the active version and any version a record still uses;
//! - every operation is written to the access log (role `operator`, the OS
//!   user in place of a certificate fingerprint).

use std::collections::BTreeMap;
use std::path::Path;

use ring::rand::SystemRandom;
use serde_json::{Value, json};

use crate::audit::access_log::{Chainer, Entry, Outcome};
use crate::crypto::envelope::{self, Binding};
use crate::crypto::keyring::{KekState, Keyring, KeyringError};
use crate::crypto::master::MasterKey;
use crate::crypto::{CryptoError, DataClass};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("a record's data key does not open under its recorded KEK version ({table} {id})")]
    Unopenable { table: &'static str, id: String },
}

/// `card`, `billing`, `shipping`, `recipient`, `contact` or `all`.
pub fn parse_classes(text: &str) -> Option<Vec<DataClass>> {
    if text == "all" {
        return Some(DataClass::ALL.to_vec());
    }
    DataClass::parse(text).map(|c| vec![c])
}

/// Holds an exclusive lock on `<keyring>.lock` while a command changes the
/// keyring, so two operators cannot overwrite each other's change.
fn lock_keyring(path: &Path) -> Result<std::fs::File, KeysError> {
    let lock_path = path.with_extension("lock");
    let err = |source| KeyringError::Write {
        path: lock_path.clone(),
        source,
    };
    Ok(crate::files::lock_file(&lock_path).map_err(err)?)
}

/// Who runs a CLI command, for the access log: the process's real user —
/// its uid as the kernel reports it and the name `/etc/passwd` gives that
/// uid, not an environment variable anyone can set — and, run through
/// sudo, whom sudo says it ran for (`SUDO_USER`, marked as sudo's word).
/// Where `/proc` is missing, the login name from the environment, marked
/// as claimed.
pub fn operator() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| real_uid(&status));
    let name = uid.and_then(|uid| {
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|passwd| user_name(&passwd, uid))
    });
    let mut who = match (name, uid) {
        (Some(name), Some(uid)) => format!("os-user:{} (uid {uid})", visible(&name)),
        (None, Some(uid)) => format!("os-user:uid {uid}"),
        (_, None) => {
            let claimed = std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".to_owned());
            format!("os-user:{} (claimed)", visible(&claimed))
        }
    };
    if let Ok(by) = std::env::var("SUDO_USER") {
        who.push_str(&format!(", sudo from {}", visible(&by)));
    }
    who
}

/// The real uid in the text of `/proc/self/status` (`Uid:` real, effective,
/// saved, file system).
fn real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The name of `uid` in the text of `/etc/passwd`.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

/// At most 64 visible ASCII characters of `text` (a user name goes into the
/// access log; nothing else may ride along).
fn visible(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_graphic)
        .take(64)
        .collect()
}

/// Appends one operator action to the access log.
pub async fn log_operation(
    store: &dyn Store,
    keyring: &Keyring,
    action: String,
    objects: Vec<String>,
    outcome: Outcome,
) -> Result<(), StoreError> {
    logged_operation(store, keyring, action, objects, outcome)
        .await
        .map(|_| ())
}

/// [`log_operation`], returning the entry's sequence number.
async fn logged_operation(
    store: &dyn Store,
    keyring: &Keyring,
    action: String,
    objects: Vec<String>,
    outcome: Outcome,
) -> Result<u64, StoreError> {
    let entry = Entry {
        at: crate::ids::now(),
        role: "operator".to_owned(),
        cert_fingerprint: operator(),
        origin_ip: "local".to_owned(),
        action,
        objects,
        outcome,
        status: 0,
    };
    store
        .append_access_log(
            std::slice::from_ref(&entry),
            &Chainer::new(keyring.access_log_key()),
        )
        .await?
        .first()
        .copied()
        .ok_or(StoreError::Corrupt(
            "an access-log append returned no sequence number",
        ))
}

/// Per class, each KEK version with its state, creation date and how many
/// records it wraps; plus the versions of the other keys. No key material.
pub async fn status(store: &dyn Store, keyring: &Keyring) -> Result<Value, KeysError> {
    let mut classes = BTreeMap::new();
    for class in DataClass::ALL {
        let usage = store.kek_usage(class).await?;
        let versions: Vec<Value> = keyring
            .kek_info()
            .into_iter()
            .filter(|k| k.class == class)
            .map(|k| {
                json!({
                    "version": k.version,
                    "name": format!("{}/v{}", class.as_str(), k.version),
                    "state": k.state,
                    "created_at": k.created_at,
                    "records": usage.get(&k.version).copied().unwrap_or(0),
                })
            })
            .collect();
        classes.insert(class.as_str().to_owned(), versions);
    }
    let (signing_version, _) = keyring.signing_key()?;
    log_operation(
        store,
        keyring,
        "keys status".into(),
        Vec::new(),
        Outcome::Allowed,
    )
    .await?;
    Ok(json!({
        "keks": classes,
        "mac_keys": {
            "fingerprint": keyring.fingerprint_key().version(),
            "blind_index": keyring.blind_index_key().version(),
            "consent_tag": keyring.consent_tag_key().version(),
            "request_hash": keyring.request_hash_key().version(),
            "access_log": keyring.access_log_key().version(),
        },
        "signing_key": {"algorithm": "Ed25519", "version": signing_version},
    }))
}

/// Rotates the KEKs of `classes` and saves the keyring (atomically).
pub async fn rotate(
    store: &dyn Store,
    path: &Path,
    master: &MasterKey,
    classes: &[DataClass],
    after_keyring_restore: bool,
) -> Result<Vec<String>, KeysError> {
    let _lock = lock_keyring(path)?;
    let mut keyring = Keyring::load(path, master)?;
    let behind = behind_the_database(store, &keyring, &[]).await?;
    if let Some(why) = behind
        .filter(|_| !after_keyring_restore)
        .map(|behind| behind_refusal(behind, "instead of rotating again"))
    {
        return Err(refuse_rotation(store, &keyring, classes, why).await);
    }
    let rng = SystemRandom::new();
    let now = crate::ids::now();
    let mut made = Vec::new();
    // Versions that wrap records but that this (restored) keyring lacks:
    // the lost keyring's. Retired too, so that a server still holding it
    // fails closed instead of sealing under a key no file holds.
    let mut lost: Vec<(DataClass, u32)> = Vec::new();
    // Every version a rotation ever made, as the access log records it:
    // the lost keyring's newest version may wrap nothing yet, and no
    // retirement names an active version.
    let logged = if after_keyring_restore {
        rotations_logged(store, &keyring).await?
    } else {
        Vec::new()
    };
    for class in classes {
        let version = if after_keyring_restore {
            // Above every version the database knows: retired, wrapping
            // records (a full count of the class's records: this is a
            // recovery, not the routine rotation) or made by a rotation.
            // Those this keyring lacks are the lost keyring's.
            let prefix = format!("{}/v", class.as_str());
            let with_records: Vec<u32> = store
                .kek_usage(*class)
                .await?
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(v, _)| v)
                .collect();
            let held: Vec<u32> = keyring
                .kek_info()
                .into_iter()
                .filter(|k| k.class == *class)
                .map(|k| k.version)
                .collect();
            let highest_retired = store.kek_highest_retired(*class).await?;
            let known = with_records
                .iter()
                .chain(&held)
                .copied()
                .max()
                .unwrap_or(0)
                .max(highest_retired);
            // A logged rotation that does not verify (damaged, or written
            // around the service) still counts — numbering above a version
            // never made costs nothing — unless its number is beyond any
            // plausible run of rotations (a planted `card/v4294967295`
            // would leave no number to make).
            let in_use: Vec<u32> = logged
                .iter()
                .filter_map(|(object, verified)| {
                    let v: u32 = object.strip_prefix(&prefix)?.parse().ok()?;
                    (*verified || v <= known.saturating_add(PLAUSIBLE_ROTATIONS)).then_some(v)
                })
                .chain(with_records)
                .collect();
            let mut missing: Vec<u32> = in_use
                .iter()
                .copied()
                .filter(|v| !held.contains(v))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            lost.extend(missing.into_iter().map(|v| (*class, v)));
            let floor = in_use.into_iter().max().unwrap_or(0).max(highest_retired);
            keyring.rotate_above(&rng, *class, floor, &now)?
        } else {
            keyring.rotate(&rng, *class, &now)?
        };
        made.push(format!("{}/v{version}", class.as_str()));
    }
    // A restored copy may still hold versions the access log records
    // destroyed (the backup predates that `keys destroy`): destroyed here
    // again, logged before the file is saved, so that the recovery does
    // not bring them back.
    if after_keyring_restore {
        let mut shredded = Vec::new();
        for (class, version) in destroyed_in_the_log(store, &keyring).await? {
            let name = format!("{}/v{version}", class.as_str());
            let active = keyring
                .kek_info()
                .iter()
                .any(|k| k.class == class && k.version == version && k.state == KekState::Active);
            if active {
                let why = format!(
                    "the access log records that {name} was destroyed, and it is the active \
                     version of {class} in this keyring: rotate {class} too (--class {class})",
                    class = class.as_str()
                );
                return Err(refuse_rotation(store, &keyring, classes, why).await);
            }
            keyring.destroy(class, version)?;
            shredded.push(name);
        }
        if !shredded.is_empty() {
            tracing::warn!(
                versions = ?shredded,
                "this keyring still held versions the access log records destroyed; destroyed again"
            );
            log_operation(
                store,
                &keyring,
                "keys destroy".into(),
                shredded,
                Outcome::Allowed,
            )
            .await?;
        }
    }
    // Logged before the file is saved, as a destruction is: a rotation the
    // log cannot record does not happen, and every version ever made is in
    // the log (a recovery numbers above them, `--after-keyring-restore`).
    // A save that fails is logged again, denied: the versions named were
    // never made (the next rotation makes them), which the log then says.
    let own = logged_operation(
        store,
        &keyring,
        "keys rotate".into(),
        made.clone(),
        Outcome::Allowed,
    )
    .await?;
    // Another copy of the keyring may have made the same version of a
    // class and then not recorded the retirement `behind_the_database`
    // reads (it crashed after saving its file, or ran at the same moment
    // as this one): its rotation is in the log, which every rotation
    // writes to before saving. Two keys under one version number would
    // leave the records of one of them unreadable for good, so this one
    // stops (both stop, when two run at once: never both go ahead). So does
    // a recovery (`--after-keyring-restore`): it numbers above every
    // version its snapshot of the log held, so a rotation logged at or
    // above its versions since ran at the same moment (another host's, or
    // a second recovery) — the same two keys under one number.
    if let Some(other) = rotated_elsewhere(store, &keyring, &made, own).await? {
        log_operation(
            store,
            &keyring,
            "keys rotate".into(),
            made.clone(),
            Outcome::Denied,
        )
        .await?;
        return Err(KeysError::Refused(format!(
            "the access log records a rotation that made {other}, which this keyring does not \
             hold (another copy of the keyring rotated, and its file did not reach this host, or \
             that rotation stopped before recording its retirements): install the newest \
             keyring file here instead of rotating again. If no copy holds {other}, \
             `keys rotate --after-keyring-restore` numbers the new versions above it"
        )));
    }
    save_or_log_denied(store, &keyring, path, master, "keys rotate", &made).await?;
    // Tell the database too: from now on it refuses records sealed under a
    // retired version (a server still holding the old keyring fails closed).
    let retired: Vec<(DataClass, u32)> = keyring
        .kek_info()
        .into_iter()
        .filter(|k| k.state != KekState::Active)
        .map(|k| (k.class, k.version))
        .chain(lost)
        .collect();
    store.retire_keks(&retired, &now).await?;
    Ok(made)
}

/// A rotation of `classes` refused for `why`: logged denied first (a
/// failure to log is the error then).
async fn refuse_rotation(
    store: &dyn Store,
    keyring: &Keyring,
    classes: &[DataClass],
    why: String,
) -> KeysError {
    let logged = log_operation(
        store,
        keyring,
        "keys rotate".into(),
        classes.iter().map(|c| c.as_str().to_owned()).collect(),
        Outcome::Denied,
    )
    .await;
    match logged {
        Ok(_) => KeysError::Refused(why),
        Err(error) => error.into(),
    }
}

/// How far above every version the keyring and the database know a
/// logged rotation that does not verify may name one and still count.
const PLAUSIBLE_ROTATIONS: u32 = 10_000;

/// The versions (`card/v3`) every rotation made, as the access log
/// records them — allowed `keys rotate` entries, each with whether its hash
/// and MAC verify under `keyring`'s access-log key — read a window of
/// sequence numbers at a time over every row there is, not up to the head
/// row (a head lowered must not hide entries). Entries that do not verify
/// are named in a warning: the audit names them too.
async fn rotations_logged(
    store: &dyn Store,
    keyring: &Keyring,
) -> Result<Vec<(String, bool)>, KeysError> {
    let key = keyring.access_log_key();
    let mut made = Vec::new();
    let mut unverified = Vec::new();
    for e in operation_entries(store, "keys rotate").await? {
        if e.entry.outcome == Outcome::Allowed {
            let verified = e.verifies(key);
            if !verified {
                unverified.push(e.seq);
            }
            made.extend(e.entry.objects.into_iter().map(|o| (o, verified)));
        }
    }
    if !unverified.is_empty() {
        tracing::warn!(
            entries = ?unverified,
            "access-log entries of `keys rotate` do not verify (edited, damaged or written around the service; the audit names them): the versions they name count only if plausible"
        );
    }
    Ok(made)
}

/// Every entry of `action` (`keys rotate`, `keys destroy`) in the access
/// log, in order: read a window of sequence numbers at a time over every
/// row there is, not up to the head row (a head lowered must not hide
/// entries).
async fn operation_entries(
    store: &dyn Store,
    action: &str,
) -> Result<Vec<crate::audit::access_log::ChainedEntry>, KeysError> {
    const WINDOW: i64 = 100_000;
    let mut out = Vec::new();
    let mut after = 0;
    // Each window starts at the next entry there is (a seek on the key),
    // so gaps cost nothing and the walk ends with the rows, whatever the
    // head row says.
    while let Some(next) = store.access_log_page(after, 1).await?.first() {
        let from = i64::try_from(next.seq)
            .unwrap_or(i64::MAX)
            .saturating_sub(1);
        let through = from.saturating_add(WINDOW);
        out.extend(store.access_log_of(action, from, through).await?);
        if through == i64::MAX {
            break;
        }
        after = through;
    }
    Ok(out)
}

/// A version (`card/v2`) at or above one of `made` (of the same class) that
/// a `keys rotate` entry other than `own` records as made, and no later
/// denied entry takes back (a rotation whose file could not be saved logs
/// its versions again, denied): a rotation this keyring has not seen.
/// Only entries that verify under `keyring`'s access-log key count: one
/// damaged or planted (the audit names it) must not stop every rotation
/// for good.
async fn rotated_elsewhere(
    store: &dyn Store,
    keyring: &Keyring,
    made: &[String],
    own: u64,
) -> Result<Option<String>, KeysError> {
    let key = keyring.access_log_key();
    let version_of = |name: &str| -> Option<(String, u32)> {
        let (class, version) = name.split_once("/v")?;
        Some((class.to_owned(), version.parse().ok()?))
    };
    let ours: Vec<(String, u32)> = made.iter().filter_map(|m| version_of(m)).collect();
    let mut standing: BTreeMap<String, i64> = BTreeMap::new();
    for e in operation_entries(store, "keys rotate").await? {
        if e.seq == own || !e.verifies(key) {
            continue;
        }
        let step = match e.entry.outcome {
            Outcome::Allowed => 1,
            Outcome::Denied => -1,
        };
        for object in e.entry.objects {
            *standing.entry(object).or_default() += step;
        }
    }
    Ok(standing
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(object, _)| object)
        .find(|object| {
            version_of(object).is_some_and(|(class, version)| {
                ours.iter().any(|(c, v)| *c == class && version >= *v)
            })
        }))
}

/// How a copy of the keyring is behind the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behind {
    /// An active version of this class is recorded retired: a rotation
    /// this copy has not seen.
    Rotated(DataClass),
    /// This copy still holds a version the access log records destroyed:
    /// a copy from before that `keys destroy`.
    Destroyed(DataClass, u32),
}

/// Why `keyring` must not change anything against this database, if it
/// must not:
/// - the database knows a rotation this keyring has not seen — an active
///   version of any class recorded retired (every rotation records the
///   versions it retires). That is another copy of the keyring (another
///   host's, before the new file reached this one) having rotated already,
///   or a keyring restored from an older backup. Rotating the same class
///   here would make a different key under the same version number, and
///   the records sealed under one of the two could never be opened again;
///   rotating another class would fork the keyring file, and installing
///   either copy would lose the other's new key.
/// - the access log records the destruction of a version this keyring
///   still holds (a copy from before a `keys destroy`: a backup, another
///   host's file). A rotation or destruction here would write a file at the
///   newest one's generation: the two would fork, and installing this one
///   would bring the destroyed key back. `except`: the versions a `keys
///   destroy` is about to destroy (again) in this copy.
async fn behind_the_database(
    store: &dyn Store,
    keyring: &Keyring,
    except: &[(DataClass, u32)],
) -> Result<Option<Behind>, KeysError> {
    for kek in keyring.kek_info() {
        if kek.state == KekState::Active && store.kek_retired(kek.class, kek.version).await? {
            return Ok(Some(Behind::Rotated(kek.class)));
        }
    }
    Ok(destroyed_in_the_log(store, keyring)
        .await?
        .into_iter()
        .find(|v| !except.contains(v))
        .map(|(class, version)| Behind::Destroyed(class, version)))
}

/// The versions `keyring` holds (not destroyed) that an allowed `keys
/// destroy` entry of the access log names, among the entries that verify
/// under `keyring`'s access-log key (one damaged or planted, which the
/// audit names, must not stop every key operation for good). A
/// destruction whose file could not be saved counts too: what it leaves is
/// the same, a key meant to be gone, and the way out the same (destroy it
/// again).
async fn destroyed_in_the_log(
    store: &dyn Store,
    keyring: &Keyring,
) -> Result<Vec<(DataClass, u32)>, KeysError> {
    let key = keyring.access_log_key();
    let mut destroyed = std::collections::BTreeSet::new();
    for e in operation_entries(store, "keys destroy").await? {
        if e.entry.outcome == Outcome::Allowed && e.verifies(key) {
            destroyed.extend(e.entry.objects);
        }
    }
    Ok(keyring
        .kek_info()
        .into_iter()
        .filter(|k| k.state != KekState::Destroyed)
        .filter(|k| destroyed.contains(&format!("{}/v{}", k.class.as_str(), k.version)))
        .map(|k| (k.class, k.version))
        .collect())
}

/// Why a keyring behind the database may not `instead`, and the ways out.
fn behind_refusal(behind: Behind, instead: &str) -> String {
    match behind {
        Behind::Rotated(class) => {
            let class = class.as_str();
            format!(
                "the database already knows a rotation of {class} that this keyring has not seen \
                 (another copy of the keyring rotated it): install the newest keyring file here, \
                 {instead}. If this keyring was restored from a backup and no newer copy exists, \
                 `keys rotate --class {class} --after-keyring-restore` numbers the new versions above \
                 every version the database knows (records under versions this keyring lacks stay \
                 unreadable)"
            )
        }
        Behind::Destroyed(class, version) => {
            let class = class.as_str();
            format!(
                "the access log records that {class}/v{version} was destroyed, but this keyring \
                 still holds it (a copy from before that `keys destroy`: a backup, or another \
                 host's file): install the newest keyring file here, {instead}. If no newer copy \
                 exists, `keys destroy --class {class} --version {version}` destroys it in this \
                 copy again, with every other version the log records destroyed"
            )
        }
    }
}

/// Re-wraps every data key of `classes` not under the active KEK version.
/// Batched and resumable; `progress(done)` after each batch. Returns the
/// number of records re-wrapped.
///
/// Each batch runs under the keyring's lock, against the keyring as it is
/// at that moment: a rotation or a destroy (which take the same lock) falls
/// between two batches, never between choosing a batch's target version and
/// committing it. Otherwise `keys destroy` could count no record under the
/// version a batch in flight is re-wrapping to, and destroy it — and every
/// record of the batch with it. A rotation during the run moves the next
/// batches to the new active version.
pub async fn rewrap(
    store: &dyn Store,
    path: &Path,
    master: &MasterKey,
    classes: &[DataClass],
    batch: u32,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, KeysError> {
    let names: Vec<String> = classes.iter().map(|c| c.as_str().to_owned()).collect();
    // A stale copy of the keyring (another host rotated one of the classes
    // since) is refused before any work: it would re-wrap to a version the
    // database has retired. (Each batch checks again, and its update
    // refuses such a version, for a rotation landing meanwhile.)
    {
        let keyring = Keyring::load(path, master)?;
        for class in classes {
            if store
                .kek_retired(*class, keyring.sealing_kek(*class)?.version)
                .await?
            {
                log_operation(
                    store,
                    &keyring,
                    "keys rewrap".into(),
                    names,
                    Outcome::Denied,
                )
                .await?;
                return Err(KeysError::Refused(behind_refusal(
                    Behind::Rotated(*class),
                    "then rewrap",
                )));
            }
        }
    }
    // Logged before the first batch too: a run killed part way has
    // changed records, and the log must say that one was started.
    log_operation(
        store,
        &Keyring::load(path, master)?,
        "keys rewrap started".into(),
        names.clone(),
        Outcome::Allowed,
    )
    .await?;
    let mut done = 0u64;
    let result: Result<(), KeysError> = async {
        let rng = SystemRandom::new();
        for class in classes {
            loop {
                let lock = lock_keyring(path)?;
                let keyring = Keyring::load(path, master)?;
                let active = keyring.sealing_kek(*class)?;
                // A stale copy of the keyring (another host rotated since)
                // would re-wrap to a version the database has retired.
                if store.kek_retired(*class, active.version).await? {
                    return Err(KeysError::Refused(behind_refusal(
                        Behind::Rotated(*class),
                        "then rewrap",
                    )));
                }
                // Only from versions this keyring holds: a record under a
                // version it lacks (lost with a keyring restored from an
                // older copy) cannot be opened, stays as it is, and must
                // not keep the others from being moved off the versions
                // still held (which can then be destroyed).
                let from: Vec<u32> = keyring
                    .kek_info()
                    .into_iter()
                    .filter(|k| k.class == *class && k.state == KekState::Retired)
                    .map(|k| k.version)
                    .collect();
                let items = store.envelopes_to_rewrap(*class, &from, batch).await?;
                if items.is_empty() {
                    break;
                }
                let mut updates = Vec::with_capacity(items.len());
                for item in items {
                    let (Ok(order_id), Ok(record_id)) = (
                        uuid::Uuid::parse_str(&item.order_id),
                        uuid::Uuid::parse_str(&item.id),
                    ) else {
                        return Err(KeysError::Unopenable {
                            table: item.table,
                            id: item.id,
                        });
                    };
                    let binding = Binding {
                        class: *class,
                        order_id,
                        record_id,
                    };
                    let Ok(new) =
                        envelope::rewrap(&rng, &keyring, &active, &binding, &item.envelope)
                    else {
                        return Err(KeysError::Unopenable {
                            table: item.table,
                            id: item.id,
                        });
                    };
                    updates.push((item, new.kek_version, new.wrapped_dek));
                }
                done += store.apply_rewrap(&updates).await?;
                drop(lock);
                progress(done);
            }
        }
        Ok(())
    }
    .await;
    // What was re-wrapped is logged, also when a later batch failed; a
    // run stopped because another copy of the keyring rotated meanwhile
    // is logged denied as well, after the work it did.
    let keyring = Keyring::load(path, master)?;
    log_operation(
        store,
        &keyring,
        "keys rewrap".into(),
        vec![format!("records:{done}")],
        Outcome::Allowed,
    )
    .await?;
    if matches!(result, Err(KeysError::Refused(_))) {
        log_operation(
            store,
            &keyring,
            "keys rewrap".into(),
            names,
            Outcome::Denied,
        )
        .await?;
    }
    result.map(|()| done)
}

/// Per class of `classes`, the records under a KEK version the keyring does
/// not hold (lost with a keyring restored from an older copy): what
/// `rewrap` left, as `(class/vN, records)`. They stay unreadable.
pub async fn not_held(
    store: &dyn Store,
    path: &Path,
    master: &MasterKey,
    classes: &[DataClass],
) -> Result<Vec<(String, u64)>, KeysError> {
    let keyring = Keyring::load(path, master)?;
    let mut out = Vec::new();
    for class in classes {
        let held: Vec<u32> = keyring
            .kek_info()
            .into_iter()
            .filter(|k| k.class == *class && k.state != KekState::Destroyed)
            .map(|k| k.version)
            .collect();
        for (version, records) in store.kek_usage(*class).await? {
            if records > 0 && !held.contains(&version) {
                out.push((format!("{}/v{version}", class.as_str()), records));
            }
        }
    }
    Ok(out)
}

/// Destroys KEK `class`/`version` for good, if nothing uses it.
pub async fn destroy(
    store: &dyn Store,
    path: &Path,
    master: &MasterKey,
    class: DataClass,
    version: u32,
) -> Result<(), KeysError> {
    let _lock = lock_keyring(path)?;
    let mut keyring = Keyring::load(path, master)?;
    let name = format!("{}/v{version}", class.as_str());
    let in_use = store
        .kek_usage(class)
        .await?
        .get(&version)
        .copied()
        .unwrap_or(0);
    let state = keyring
        .kek_info()
        .into_iter()
        .find(|k| k.class == class && k.version == version)
        .map(|k| k.state);
    // A database that never saw this version retired is not the one the
    // rotation ran against — most likely not the service's database at
    // all (another --database-url, or none), where "no record uses it"
    // proves nothing.
    let retired_here = store.kek_retired(class, version).await?;
    // A copy of the keyring behind the database (another host rotated
    // since) must not write a file of its own: at the same generation as
    // the newest, the two would fork — installing this one loses the
    // other's new versions (and every record sealed under them), installing
    // the other brings the destroyed key back.
    // A copy from before some destroys holds every version they destroyed:
    // when the one asked for is among them, they all go in this run (one
    // at a time, each would be refused for the others still held).
    let mut again = destroyed_in_the_log(store, &keyring).await?;
    if !again.contains(&(class, version)) {
        again.clear();
    }
    // (Retired ones only: an active one the log records destroyed is a
    // rotation this copy has not seen, refused below.)
    let retired: Vec<(DataClass, u32)> = keyring
        .kek_info()
        .into_iter()
        .filter(|k| k.state == KekState::Retired)
        .map(|k| (k.class, k.version))
        .collect();
    again.retain(|v| *v != (class, version) && retired.contains(v));
    let mut except = vec![(class, version)];
    except.extend(&again);
    let behind = behind_the_database(store, &keyring, &except)
        .await?
        .map(|behind| behind_refusal(behind, &format!("then destroy {name}")));
    let refusal = match state {
        _ if behind.is_some() => behind,
        None => Some("no such KEK version".to_owned()),
        Some(KekState::Active) => Some(format!("{name} is the active version; rotate first")),
        // Nothing to do: not logged as a destruction, the file not
        // rewritten (a rewrite without a new generation looks to a running
        // server like a restored backup).
        Some(KekState::Destroyed) => Some(format!("{name} is already destroyed")),
        Some(_) if in_use > 0 => Some(format!(
            "{name} still wraps {in_use} record(s); run `checkoutd keys rewrap` first"
        )),
        Some(_) if !retired_here => Some(format!(
            "this database has no record of {name}'s retirement: is it the database the service uses (--database-url, or CHECKOUTD_DATABASE_URL)? If `keys rotate` could not tell it, running `keys rotate` against it records every retired version"
        )),
        Some(_) => None,
    };
    if let Some(why) = refusal {
        log_operation(
            store,
            &keyring,
            "keys destroy".into(),
            vec![name],
            Outcome::Denied,
        )
        .await?;
        return Err(KeysError::Refused(why));
    }
    // Logged before the keys are wiped: a destruction the log cannot record
    // does not happen. (The others destroyed again wrap nothing: the log's
    // destruction of each checked that.)
    let names: Vec<String> = std::iter::once(name)
        .chain(again.iter().map(|(c, v)| format!("{}/v{v}", c.as_str())))
        .collect();
    log_operation(
        store,
        &keyring,
        "keys destroy".into(),
        names.clone(),
        Outcome::Allowed,
    )
    .await?;
    keyring.destroy(class, version)?;
    for (c, v) in &again {
        keyring.destroy(*c, *v)?;
    }
    save_or_log_denied(store, &keyring, path, master, "keys destroy", &names).await
}

/// Saves a keyring whose change (`action` on `objects`) was logged allowed
/// before it; a save that fails is logged again, denied: the change never
/// reached the file (the key a destruction named is still there, the
/// versions a rotation named were never made), which the log then says.
async fn save_or_log_denied(
    store: &dyn Store,
    keyring: &Keyring,
    path: &Path,
    master: &MasterKey,
    action: &str,
    objects: &[String],
) -> Result<(), KeysError> {
    let Err(error) = keyring.save(path, master) else {
        return Ok(());
    };
    let logged = log_operation(
        store,
        keyring,
        action.into(),
        objects.to_vec(),
        Outcome::Denied,
    )
    .await;
    if let Err(log_error) = logged {
        tracing::error!(error = %log_error, action, "a keyring change that failed to save could not be logged as such");
    }
    Err(error.into())
}

/// `keys init`: a fresh keyring sealed under a fresh master key, split into
/// `custodians` share files in `shares_dir`. Refuses when a keyring exists.
pub async fn init(
    store: &dyn Store,
    path: &Path,
    custodians: u32,
    shares_dir: &Path,
) -> Result<Vec<std::path::PathBuf>, KeysError> {
    let holds_records = store.holds_records().await?;
    if path.exists() {
        // The keyring file is written before the share files: an init
        // killed between the two leaves a keyring no share opens. With no
        // record in the database nothing depends on it, and saying how to
        // start again is safe; otherwise it is the real keyring.
        let hint = if holds_records {
            String::new()
        } else {
            format!(
                ". The database holds no records, so nothing depends on it: if an earlier \
                 `keys init` stopped before writing its share files, remove {} and run \
                 `keys init` again",
                path.display()
            )
        };
        return Err(KeysError::Refused(format!(
            "{} exists; keys init makes a new keyring only{hint}",
            path.display()
        )));
    }
    if holds_records {
        return Err(KeysError::Refused(
            "the database already holds records (orders, the access log, withdrawals) made \
             under another keyring"
                .into(),
        ));
    }
    // Share files are never overwritten (they may be another master key's);
    // checked before the keyring exists, so a refusal leaves nothing behind.
    if let Some(taken) = (1..=custodians)
        .map(|i| crate::crypto::master::share_path(shares_dir, i, custodians))
        .find(|p| p.symlink_metadata().is_ok())
    {
        return Err(KeysError::Refused(format!(
            "{} exists; keys init never overwrites a share (move it away first)",
            taken.display()
        )));
    }
    let rng = SystemRandom::new();
    let master = MasterKey::generate(&rng)?;
    let shares = master.split(&rng, custodians).map_err(KeyringError::from)?;
    let keyring = Keyring::generate(&rng, &crate::ids::now())?;
    if !keyring.create(path, &master)? {
        return Err(KeysError::Refused(format!(
            "{} appeared meanwhile; keys init makes a new keyring only",
            path.display()
        )));
    }
    let paths = match crate::crypto::master::write_shares(shares_dir, &shares) {
        Ok(paths) => paths,
        Err(error) => {
            // Without its shares the new keyring opens nothing, and would
            // make every later `keys init` refuse: it goes too.
            let _ = std::fs::remove_file(path);
            return Err(KeyringError::from(error).into());
        }
    };
    let logged = log_operation(
        store,
        &keyring,
        "keys init".into(),
        vec![
            format!("custodians:{custodians}"),
            format!("master_key_id:{}", master.id()),
        ],
        Outcome::Allowed,
    )
    .await;
    if let Err(error) = logged {
        // A keyring the log does not record is not made: it goes, with
        // its shares (nothing was sealed under it yet), and `keys init`
        // can simply be run again. Unless the append may have committed
        // (the connection broke mid-statement): the log may then name it,
        // so it stays, and its files are named here.
        if error.outcome_unknown() {
            let shares: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            tracing::error!(
                keyring = %path.display(),
                shares = %shares.join(", "),
                "keys init: the database may or may not have logged the new keyring; it and its shares are kept"
            );
        } else {
            let _ = std::fs::remove_file(path);
            for share in &paths {
                let _ = std::fs::remove_file(share);
            }
        }
        return Err(error.into());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_is_the_kernels_real_uid_named_by_passwd() {
        let status = "Name:\tcheckoutd\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(
            real_uid(status),
            Some(1000),
            "the real uid, not the effective one"
        );
        assert_eq!(real_uid("Name:\tx\n"), None);
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nada:x:1000:1000::/home/ada:/bin/sh\nbroken\n";
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("ada"));
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 7), None);
        assert_eq!(visible("ada\n\u{1b}[2Jroot x"), "ada[2Jrootx");
        // On this machine: the uid is the kernel's.
        #[cfg(target_os = "linux")]
        assert!(operator().contains("(uid "), "{}", operator());
    }
}
