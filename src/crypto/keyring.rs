//! The keyring: versioned key-encrypting keys (KEKs) per data class, the
//! MAC keys and the report-signing key.
//!
//! Invariants:
//! - only the *active* KEK of a class can seal (a [`SealingKek`] is made only
//!   from it); retired versions still open ([`OpeningKek`]);
//! - key material zeroizes on drop and never prints (`Debug` shows versions);
//! - the file is written 0600, atomically (temp file, fsync, rename).
//!
//! The file is the keyring JSON sealed with AES-256-GCM under the master
//! key (`crate::crypto::master`; `docs/encryption.md` describes the bytes).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::aead::{KEY_LEN, random_key};
use super::mac::MacKey;
use super::master::MasterKey;
use super::{CryptoError, DataClass};

pub const FORMAT: &str = "checkoutd-keyring/1";
/// The MAC keys a keyring holds, by their name in the file.
const MAC_NAMES: [&str; 5] = [
    "fingerprint",
    "blind_index",
    "consent_tag",
    "request_hash",
    "access_log",
];
/// The report-signing algorithm.
const SIGNING_ALGORITHM: &str = "ed25519";
pub const FILE_NAME: &str = "keyring.json";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("cannot read the keyring {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the keyring {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message names what is wrong, never a value (values are keys).
    #[error("the keyring file is invalid: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("the master key does not open this keyring (wrong shares or wrong development key)")]
    WrongMasterKey,
    #[error(transparent)]
    Master(#[from] super::master::MasterKeyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KekState {
    /// Seals new records and opens old ones. Exactly one per class.
    Active,
    /// Opens only.
    Retired,
    /// Gone for good: only the version number and dates remain, so that
    /// status reports can say what happened to it.
    Destroyed,
}

struct Kek {
    version: u32,
    state: KekState,
    created_at: String,
    /// `None` once destroyed. Boxed: a KEK's bytes stay where they were
    /// made while the class's version list grows (a `Vec` growing moves its
    /// elements and frees the old block unwiped), and are wiped there.
    key: Option<Box<Zeroizing<[u8; KEY_LEN]>>>,
}

/// The active KEK of a class: the only thing that can wrap a new data key.
pub struct SealingKek<'a> {
    pub class: DataClass,
    pub version: u32,
    pub(crate) key: &'a [u8; KEY_LEN],
}

/// Any KEK version of a class still held: can unwrap, never wrap.
pub struct OpeningKek<'a> {
    pub class: DataClass,
    pub version: u32,
    pub(crate) key: &'a [u8; KEY_LEN],
}

/// Something that holds opening KEKs.
pub trait OpensClass {
    fn opening_kek(&self, class: DataClass, version: u32) -> Result<OpeningKek<'_>, CryptoError>;
}

impl OpensClass for Keyring {
    fn opening_kek(&self, class: DataClass, version: u32) -> Result<OpeningKek<'_>, CryptoError> {
        Keyring::opening_kek(self, class, version)
    }
}

/// The opening KEKs of some classes only (see [`Keyring::class_keys`]).
/// Zeroized on drop; never printed.
pub struct ClassKeys {
    keks: BTreeMap<DataClass, Vec<VersionedKey>>,
}

/// A KEK version number and its key material.
type VersionedKey = (u32, Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for ClassKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes: Vec<DataClass> = self.keks.keys().copied().collect();
        write!(f, "ClassKeys({classes:?}, <redacted>)")
    }
}

impl OpensClass for ClassKeys {
    fn opening_kek(&self, class: DataClass, version: u32) -> Result<OpeningKek<'_>, CryptoError> {
        self.keks
            .get(&class)
            .and_then(|ks| ks.iter().find(|(v, _)| *v == version))
            .map(|(v, key)| OpeningKek {
                class,
                version: *v,
                key,
            })
            .ok_or(CryptoError::UnknownKey)
    }
}

/// Public facts about one KEK version (for status reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KekInfo {
    pub class: DataClass,
    pub version: u32,
    pub state: KekState,
    pub created_at: String,
}

pub struct Keyring {
    created_at: String,
    /// Bumped by every change (rotate, destroy): a running server only
    /// swaps in a keyring that follows on from the one it holds.
    generation: u64,
    keks: BTreeMap<DataClass, Vec<Kek>>,
    fingerprint: MacKey,
    blind_index: MacKey,
    consent_tag: MacKey,
    request_hash: MacKey,
    access_log: MacKey,
    signing_version: u32,
    signing_seed: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<(DataClass, Vec<u32>)> = self
            .keks
            .iter()
            .map(|(c, ks)| (*c, ks.iter().map(|k| k.version).collect()))
            .collect();
        f.debug_struct("Keyring")
            .field("keks", &versions)
            .field("key_material", &"<redacted>")
            .finish()
    }
}

impl Keyring {
    /// A fresh keyring: version 1 of every key.
    pub fn generate(rng: &SystemRandom, now: &str) -> Result<Self, CryptoError> {
        let mut keks = BTreeMap::new();
        for class in DataClass::ALL {
            keks.insert(
                class,
                vec![Kek {
                    version: 1,
                    state: KekState::Active,
                    created_at: now.to_owned(),
                    key: Some(Box::new(random_key(rng)?)),
                }],
            );
        }
        Ok(Keyring {
            created_at: now.to_owned(),
            generation: 1,
            keks,
            fingerprint: MacKey::new(1, random_key(rng)?),
            blind_index: MacKey::new(1, random_key(rng)?),
            consent_tag: MacKey::new(1, random_key(rng)?),
            request_hash: MacKey::new(1, random_key(rng)?),
            access_log: MacKey::new(1, random_key(rng)?),
            signing_version: 1,
            signing_seed: random_key(rng)?,
        })
    }

    /// The active KEK of `class`.
    pub fn sealing_kek(&self, class: DataClass) -> Result<SealingKek<'_>, CryptoError> {
        self.keks
            .get(&class)
            .and_then(|ks| ks.iter().find(|k| k.state == KekState::Active))
            .and_then(|k| {
                k.key.as_ref().map(|key| SealingKek {
                    class,
                    version: k.version,
                    key,
                })
            })
            .ok_or(CryptoError::UnknownKey)
    }

    /// Any held version of `class`'s KEK.
    pub fn opening_kek(
        &self,
        class: DataClass,
        version: u32,
    ) -> Result<OpeningKek<'_>, CryptoError> {
        self.keks
            .get(&class)
            .and_then(|ks| ks.iter().find(|k| k.version == version))
            .and_then(|k| {
                k.key.as_ref().map(|key| OpeningKek {
                    class,
                    version: k.version,
                    key,
                })
            })
            .ok_or(CryptoError::UnknownKey)
    }

    pub fn kek_info(&self) -> Vec<KekInfo> {
        self.keks
            .iter()
            .flat_map(|(class, ks)| {
                ks.iter().map(|k| KekInfo {
                    class: *class,
                    version: k.version,
                    state: k.state,
                    created_at: k.created_at.clone(),
                })
            })
            .collect()
    }

    /// Adds a new active KEK version to `class`; the previous active one
    /// becomes retired (it still opens, it can never seal again). Returns
    /// the new version.
    pub fn rotate(
        &mut self,
        rng: &SystemRandom,
        class: DataClass,
        now: &str,
    ) -> Result<u32, CryptoError> {
        self.rotate_above(rng, class, 0, now)
    }

    /// As [`rotate`](Self::rotate), the new version numbered above `floor`
    /// too: after a keyring was restored from a backup older than the
    /// database's last rotation, above every version the database knows,
    /// so that no version number ever names two keys.
    pub fn rotate_above(
        &mut self,
        rng: &SystemRandom,
        class: DataClass,
        floor: u32,
        now: &str,
    ) -> Result<u32, CryptoError> {
        let versions = self.keks.get_mut(&class).ok_or(CryptoError::UnknownKey)?;
        let next = versions
            .iter()
            .map(|k| k.version)
            .max()
            .unwrap_or(0)
            .max(floor)
            .checked_add(1)
            .ok_or(CryptoError::UnknownKey)?;
        for k in versions.iter_mut().filter(|k| k.state == KekState::Active) {
            k.state = KekState::Retired;
        }
        versions.push(Kek {
            version: next,
            state: KekState::Active,
            created_at: now.to_owned(),
            key: Some(Box::new(random_key(rng)?)),
        });
        self.generation += 1;
        Ok(next)
    }

    /// Destroys a retired KEK version: its key material is wiped and only a
    /// tombstone remains. The active version cannot be destroyed; the caller
    /// must first make sure no record uses the version (`keys destroy` does).
    pub fn destroy(&mut self, class: DataClass, version: u32) -> Result<(), KeyringError> {
        let versions = self
            .keks
            .get_mut(&class)
            .ok_or(KeyringError::Invalid("unknown data class"))?;
        let kek = versions
            .iter_mut()
            .find(|k| k.version == version)
            .ok_or(KeyringError::Invalid("no such KEK version"))?;
        match kek.state {
            KekState::Active => Err(KeyringError::Invalid(
                "the active KEK cannot be destroyed; rotate first",
            )),
            KekState::Destroyed => Ok(()),
            KekState::Retired => {
                kek.state = KekState::Destroyed;
                kek.key = None; // Zeroizing wipes it on drop.
                self.generation += 1;
                Ok(())
            }
        }
    }

    /// Whether `self` is a legitimate successor of `current`: a later
    /// generation, the same MAC and signing keys, every version of
    /// `current` still there with the same key (or destroyed), and no
    /// retired or destroyed version active again. A restored backup or a
    /// lost update fails this, and the running server keeps its keyring.
    pub fn follows(&self, current: &Keyring) -> bool {
        let same_macs = [
            (&self.fingerprint, &current.fingerprint),
            (&self.blind_index, &current.blind_index),
            (&self.consent_tag, &current.consent_tag),
            (&self.request_hash, &current.request_hash),
            (&self.access_log, &current.access_log),
        ]
        .iter()
        .all(|(a, b)| a.version() == b.version() && a.raw() == b.raw());
        let keks_follow = current.keks.iter().all(|(class, old)| {
            let Some(new) = self.keks.get(class) else {
                return false;
            };
            old.iter().all(|o| {
                new.iter().any(|n| {
                    n.version == o.version
                        && match (&n.key, &o.key) {
                            (Some(a), Some(b)) => {
                                a == b
                                    && !(n.state == KekState::Active && o.state != KekState::Active)
                            }
                            (None, _) => n.state == KekState::Destroyed,
                            (Some(_), None) => false,
                        }
                })
            })
        });
        self.generation > current.generation
            && same_macs
            && keks_follow
            && self.signing_version == current.signing_version
            && self.signing_seed == current.signing_seed
    }

    pub fn fingerprint_key(&self) -> &MacKey {
        &self.fingerprint
    }
    pub fn blind_index_key(&self) -> &MacKey {
        &self.blind_index
    }
    pub fn consent_tag_key(&self) -> &MacKey {
        &self.consent_tag
    }
    pub fn request_hash_key(&self) -> &MacKey {
        &self.request_hash
    }
    pub fn access_log_key(&self) -> &MacKey {
        &self.access_log
    }

    /// A copy of the KEKs of `classes` only — for a reader that must not be
    /// able to reach any other class's key (fulfillment holds shipping and
    /// recipient keys and nothing else).
    pub fn class_keys(&self, classes: &[DataClass]) -> ClassKeys {
        let keks = classes
            .iter()
            .filter_map(|c| self.keks.get(c).map(|ks| (*c, ks)))
            .map(|(c, ks)| {
                // Sized up front: a growing Vec would leave copies behind.
                let mut copies = Vec::with_capacity(ks.len());
                copies.extend(ks.iter().filter_map(|k| {
                    k.key
                        .as_ref()
                        .map(|key| (k.version, Zeroizing::new(***key)))
                }));
                (c, copies)
            })
            .collect();
        ClassKeys { keks }
    }

    /// The Ed25519 report-signing key pair and its version.
    pub fn signing_key(&self) -> Result<(u32, ring::signature::Ed25519KeyPair), CryptoError> {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(self.signing_seed.as_ref())
            .map(|kp| (self.signing_version, kp))
            .map_err(|_| CryptoError::UnknownKey)
    }

    /// Loads the keyring at `path`, or creates (and saves) a new one when
    /// there is none. Returns whether it was created.
    ///
    /// Creation never replaces a file: when two processes race, one
    /// creates it and both end up with the same keys.
    pub fn load_or_create(
        path: &Path,
        master: &MasterKey,
        now: &str,
    ) -> Result<(Self, bool), KeyringError> {
        if path.exists() {
            return Ok((Self::load(path, master)?, false));
        }
        let ring = Self::generate(&SystemRandom::new(), now)?;
        if ring.write(path, false, master)? {
            Ok((ring, true))
        } else {
            Ok((Self::load(path, master)?, false))
        }
    }

    /// Reads and opens the sealed keyring file.
    pub fn load(path: &Path, master: &MasterKey) -> Result<Self, KeyringError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyringError::Read {
            path: path.to_owned(),
            source,
        })?);
        Self::unseal(&bytes, master)
    }

    /// The keyring file: the keyring JSON sealed with AES-256-GCM under the
    /// master key — `{"format": "checkoutd-keyring-sealed/1", "master_key_id",
    /// "sealed": hex(nonce ‖ ciphertext ‖ tag)}`, AAD `"checkoutd/keyring" ‖
    /// master_key_id`.
    pub fn seal(&self, master: &MasterKey) -> Result<Vec<u8>, KeyringError> {
        let inner = self.to_json()?;
        let id = master.id();
        let aad = [b"checkoutd/keyring".as_slice(), id.as_bytes()].concat();
        let sealed = super::aead::seal(&SystemRandom::new(), master.raw(), &aad, &inner)?;
        let file = SealedFile {
            format: SEALED_FORMAT.to_owned(),
            master_key_id: id,
            sealed: crate::hex::encode(&sealed),
        };
        serde_json::to_vec_pretty(&file)
            .map_err(|_| KeyringError::Invalid("serialising the keyring failed"))
    }

    /// Opens a sealed keyring file's bytes.
    pub fn unseal(bytes: &[u8], master: &MasterKey) -> Result<Self, KeyringError> {
        let file: SealedFile = serde_json::from_slice(bytes)
            .ok()
            .filter(|f: &SealedFile| f.format == SEALED_FORMAT)
            .ok_or(KeyringError::Invalid("not a sealed checkoutd keyring"))?;
        if file.master_key_id != master.id() {
            return Err(KeyringError::WrongMasterKey);
        }
        let sealed = crate::hex::decode(&file.sealed).ok_or(KeyringError::Invalid(
            "the sealed keyring is not hexadecimal",
        ))?;
        let aad = [
            b"checkoutd/keyring".as_slice(),
            file.master_key_id.as_bytes(),
        ]
        .concat();
        // The master key's id matched: this is the right key, so a seal
        // that does not open is a file damaged or edited — restore it from
        // a backup; the custodians' shares are not at fault.
        let inner = super::aead::open(master.raw(), &aad, &sealed).map_err(|_| {
            KeyringError::Invalid(
                "it does not open under the master key it names (damaged or edited): restore \
                 the keyring file from a backup",
            )
        })?;
        Self::from_json(&inner)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyringError> {
        // serde's messages can quote values; map every failure to static text.
        let file: File = serde_json::from_slice(bytes)
            .map_err(|_| KeyringError::Invalid("not a checkoutd keyring JSON document"))?;
        if file.format != FORMAT {
            return Err(KeyringError::Invalid("unknown keyring format version"));
        }
        // Nothing may be ignored: the next rewrite (`keys rotate`) would
        // silently drop it — the keys of a data class or a MAC this build
        // does not know would be lost.
        if file.keks.keys().any(|k| DataClass::parse(k).is_none()) {
            return Err(KeyringError::Invalid("unknown data class"));
        }
        if file
            .mac_keys
            .keys()
            .any(|k| !MAC_NAMES.contains(&k.as_str()))
        {
            return Err(KeyringError::Invalid("unknown MAC key"));
        }
        if file.signing.algorithm != SIGNING_ALGORITHM {
            return Err(KeyringError::Invalid("unknown signing algorithm"));
        }
        let mut keks = BTreeMap::new();
        for class in DataClass::ALL {
            let entries = file
                .keks
                .get(class.as_str())
                .ok_or(KeyringError::Invalid("a data class has no KEK"))?;
            let mut versions = Vec::with_capacity(entries.len());
            for e in entries {
                versions.push(Kek {
                    version: e.version,
                    state: e.state,
                    created_at: e.created_at.clone(),
                    key: match (e.state, &e.key) {
                        (KekState::Destroyed, None) => None,
                        (KekState::Destroyed, Some(_)) => {
                            return Err(KeyringError::Invalid(
                                "a destroyed KEK still holds key material",
                            ));
                        }
                        (_, Some(hex)) => Some(Box::new(key_from_hex(hex)?)),
                        (_, None) => return Err(KeyringError::Invalid("a KEK has no key")),
                    },
                });
            }
            versions.sort_by_key(|k| k.version);
            let active = versions
                .iter()
                .filter(|k| k.state == KekState::Active)
                .count();
            if active != 1 {
                return Err(KeyringError::Invalid(
                    "a data class must have exactly one active KEK",
                ));
            }
            if versions.windows(2).any(|w| w[0].version == w[1].version) {
                return Err(KeyringError::Invalid("a KEK version appears twice"));
            }
            keks.insert(class, versions);
        }
        let mac = |name: &str| -> Result<MacKey, KeyringError> {
            let e = file
                .mac_keys
                .get(name)
                .ok_or(KeyringError::Invalid("a MAC key is missing"))?;
            Ok(MacKey::new(e.version, key_from_hex(&e.key)?))
        };
        Ok(Keyring {
            created_at: file.created_at,
            generation: file.generation,
            keks,
            fingerprint: mac("fingerprint")?,
            blind_index: mac("blind_index")?,
            consent_tag: mac("consent_tag")?,
            request_hash: mac("request_hash")?,
            access_log: mac("access_log")?,
            signing_version: file.signing.version,
            signing_seed: key_from_hex(&file.signing.seed)?,
        })
    }

    /// The JSON file contents (zeroized on drop).
    pub fn to_json(&self) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let hex = |k: &[u8; 32]| Zeroizing::new(crate::hex::encode(k));
        let mut keks = BTreeMap::new();
        for (class, ks) in &self.keks {
            keks.insert(
                class.as_str().to_owned(),
                ks.iter()
                    .map(|k| KekEntry {
                        version: k.version,
                        state: k.state,
                        created_at: k.created_at.clone(),
                        key: k.key.as_ref().map(|key| hex(key)),
                    })
                    .collect(),
            );
        }
        let mut mac_keys = BTreeMap::new();
        for (name, key) in [
            ("fingerprint", &self.fingerprint),
            ("blind_index", &self.blind_index),
            ("consent_tag", &self.consent_tag),
            ("request_hash", &self.request_hash),
            ("access_log", &self.access_log),
        ] {
            mac_keys.insert(
                name.to_owned(),
                MacEntry {
                    version: key.version(),
                    key: hex(key.raw()),
                },
            );
        }
        let file = File {
            format: FORMAT.to_owned(),
            created_at: self.created_at.clone(),
            generation: self.generation,
            keks,
            mac_keys,
            signing: SigningEntry {
                version: self.signing_version,
                algorithm: SIGNING_ALGORITHM.to_owned(),
                seed: hex(&self.signing_seed),
            },
        };
        Ok(super::json_zeroizing(&file)?)
    }

    /// Writes the keyring atomically with mode 0600, replacing any previous
    /// file (rotation).
    pub fn save(&self, path: &Path, master: &MasterKey) -> Result<(), KeyringError> {
        self.write(path, true, master).map(|_| ())
    }

    /// Writes a new keyring file; `false` if one already exists (it is kept).
    pub fn create(&self, path: &Path, master: &MasterKey) -> Result<bool, KeyringError> {
        self.write(path, false, master)
    }

    /// Writes via a uniquely named temporary file, fsynced, then renamed
    /// over `path` (`replace`) or hard-linked to it, which fails if `path`
    /// exists. Returns whether this call put the file in place.
    fn write(&self, path: &Path, replace: bool, master: &MasterKey) -> Result<bool, KeyringError> {
        let json = self.seal(master)?;
        let err = |source| KeyringError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::files::create_private_dir(dir).map_err(err)?;
        }
        let placement = if replace {
            crate::files::Placement::Replace
        } else {
            crate::files::Placement::CreateNew
        };
        crate::files::write_atomically(path, &json, 0o600, placement).map_err(err)
    }
}

fn key_from_hex(hex: &str) -> Result<Zeroizing<[u8; 32]>, KeyringError> {
    if hex.len() != 64 {
        return Err(KeyringError::Invalid("a key is not 32 bytes"));
    }
    crate::hex::decode_key(hex).ok_or(KeyringError::Invalid("a key is not hexadecimal"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    created_at: String,
    #[serde(default)]
    generation: u64,
    keks: BTreeMap<String, Vec<KekEntry>>,
    mac_keys: BTreeMap<String, MacEntry>,
    signing: SigningEntry,
}

/// Format of the sealed keyring file.
pub const SEALED_FORMAT: &str = "checkoutd-keyring-sealed/1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    master_key_id: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KekEntry {
    version: u32,
    state: KekState,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Zeroizing<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MacEntry {
    version: u32,
    key: Zeroizing<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningEntry {
    version: u32,
    algorithm: String,
    seed: Zeroizing<String>,
}

/// The keyring of a running server. `keys rotate` rewrites the file; the
/// server notices (it polls the file's modification time and size, see
/// `crate::app`) and swaps the new keyring in atomically, so new orders are
/// sealed under the new active versions without a restart.
pub struct KeyringHandle {
    /// The file to watch and the master key to open it with.
    source: Option<(PathBuf, MasterKey)>,
    current: std::sync::RwLock<std::sync::Arc<Keyring>>,
    stamp: std::sync::Mutex<Option<(std::time::SystemTime, u64)>>,
}

impl fmt::Debug for KeyringHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyringHandle(<redacted>)")
    }
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl KeyringHandle {
    /// `path` is the file to watch (`None`: a fixed keyring, e.g. in tests).
    pub fn new(keyring: Keyring, source: Option<(PathBuf, MasterKey)>) -> Self {
        let stamp = source.as_ref().and_then(|(p, _)| file_stamp(p));
        KeyringHandle {
            source,
            current: std::sync::RwLock::new(std::sync::Arc::new(keyring)),
            stamp: std::sync::Mutex::new(stamp),
        }
    }

    /// The keyring in force now.
    pub fn current(&self) -> std::sync::Arc<Keyring> {
        match self.current.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file when its modification time or size changed.
    /// `Ok(true)` when a new keyring is now in force. A file that does not
    /// load leaves the current keyring in force (and is reported).
    pub fn reload_if_changed(&self) -> Result<bool, KeyringError> {
        let Some((path, master)) = &self.source else {
            return Ok(false);
        };
        let stamp = file_stamp(path);
        {
            let Ok(seen) = self.stamp.lock() else {
                return Ok(false);
            };
            if *seen == stamp {
                return Ok(false);
            }
        }
        let fresh = Keyring::load(path, master)?;
        if let Ok(mut seen) = self.stamp.lock() {
            *seen = stamp;
        }
        if !fresh.follows(&self.current()) {
            return Err(KeyringError::Invalid(
                "the changed keyring file does not follow on from the keyring in use (a restored backup or a lost update?)",
            ));
        }
        if let Ok(mut current) = self.current.write() {
            *current = std::sync::Arc::new(fresh);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_file_and_never_prints_keys() {
        let rng = SystemRandom::new();
        let ring = Keyring::generate(&rng, "2026-11-29T00:00:00Z").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let master = MasterKey::generate(&rng).unwrap();
        ring.save(&path, &master).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = Keyring::load(&path, &master).unwrap();
        // The file is sealed: no key in it, and another master key cannot open it.
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains(&crate::hex::encode(
            ring.sealing_kek(DataClass::Card).unwrap().key
        )));
        assert!(file.contains(SEALED_FORMAT));
        let stranger = MasterKey::generate(&rng).unwrap();
        assert!(matches!(
            Keyring::load(&path, &stranger),
            Err(KeyringError::WrongMasterKey)
        ));
        // Damaged under the right key: the file's fault, not the shares'.
        let mut damaged: serde_json::Value = serde_json::from_str(&file).unwrap();
        let sealed = damaged["sealed"].as_str().unwrap().to_owned();
        let flipped = if sealed.ends_with('0') { "1" } else { "0" };
        damaged["sealed"] = format!("{}{flipped}", &sealed[..sealed.len() - 1]).into();
        let opened = Keyring::unseal(damaged.to_string().as_bytes(), &master);
        assert!(
            matches!(&opened, Err(KeyringError::Invalid(why)) if why.contains("damaged or edited")),
            "{:?}",
            opened.err()
        );
        let a = ring.sealing_kek(DataClass::Card).unwrap();
        let b = back.sealing_kek(DataClass::Card).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(ring.blind_index_key().raw(), back.blind_index_key().raw());
        let shown = format!("{ring:?}");
        assert!(!shown.contains(&crate::hex::encode(a.key)));
        assert!(back.signing_key().is_ok());
    }

    #[test]
    fn creation_never_replaces_an_existing_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let master = MasterKey::generate(&SystemRandom::new()).unwrap();
        let (first, created) = Keyring::load_or_create(&path, &master, "t").unwrap();
        assert!(created);
        let other = Keyring::generate(&SystemRandom::new(), "t").unwrap();
        assert!(
            !other.write(&path, false, &master).unwrap(),
            "an existing file is kept"
        );
        let (again, created) = Keyring::load_or_create(&path, &master, "t").unwrap();
        assert!(!created);
        assert_eq!(
            first.sealing_kek(DataClass::Card).unwrap().key,
            again.sealing_kek(DataClass::Card).unwrap().key
        );
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn rotation_retires_and_destruction_wipes() {
        let rng = SystemRandom::new();
        let mut ring = Keyring::generate(&rng, "t0").unwrap();
        let v1 = *ring.sealing_kek(DataClass::Card).unwrap().key;
        assert_eq!(ring.rotate(&rng, DataClass::Card, "t1").unwrap(), 2);
        let sealing = ring.sealing_kek(DataClass::Card).unwrap();
        assert_eq!(sealing.version, 2);
        assert_ne!(*sealing.key, v1);
        // The retired version still opens but is never the sealing one.
        assert_eq!(*ring.opening_kek(DataClass::Card, 1).unwrap().key, v1);
        assert!(ring.destroy(DataClass::Card, 2).is_err(), "active");
        ring.destroy(DataClass::Card, 1).unwrap();
        assert_eq!(
            ring.opening_kek(DataClass::Card, 1).err(),
            Some(CryptoError::UnknownKey)
        );
        // Round trip through the file: the tombstone stays, keyless.
        let json = ring.to_json().unwrap();
        let back = Keyring::from_json(&json).unwrap();
        let info: Vec<_> = back
            .kek_info()
            .into_iter()
            .filter(|k| k.class == DataClass::Card)
            .collect();
        assert_eq!(
            info.iter()
                .map(|k| (k.version, k.state))
                .collect::<Vec<_>>(),
            vec![(1, KekState::Destroyed), (2, KekState::Active)]
        );
        assert!(!String::from_utf8_lossy(&json).contains(&crate::hex::encode(&v1)));
    }

    #[test]
    fn only_a_successor_keyring_is_taken() {
        let rng = SystemRandom::new();
        let mut ring = Keyring::generate(&rng, "t0").unwrap();
        let before = Keyring::from_json(&ring.to_json().unwrap()).unwrap();
        ring.rotate(&rng, DataClass::Card, "t1").unwrap();
        assert!(ring.follows(&before));
        assert!(
            !before.follows(&ring),
            "an older generation (a restored backup)"
        );
        let stranger = Keyring::generate(&rng, "t").unwrap();
        assert!(!stranger.follows(&before));
        // A lost update: another edit made from the old file.
        let mut other = Keyring::from_json(&before.to_json().unwrap()).unwrap();
        other.rotate(&rng, DataClass::Billing, "t2").unwrap();
        other.rotate(&rng, DataClass::Billing, "t3").unwrap();
        assert!(!other.follows(&ring), "card/v2 would vanish");
    }

    #[test]
    fn class_keys_hold_only_their_classes() {
        let ring = Keyring::generate(&SystemRandom::new(), "t").unwrap();
        let keys = ring.class_keys(&[DataClass::Shipping, DataClass::Recipient]);
        assert!(OpensClass::opening_kek(&keys, DataClass::Shipping, 1).is_ok());
        assert!(OpensClass::opening_kek(&keys, DataClass::Recipient, 1).is_ok());
        assert_eq!(
            OpensClass::opening_kek(&keys, DataClass::Billing, 1).err(),
            Some(CryptoError::UnknownKey)
        );
        assert_eq!(
            OpensClass::opening_kek(&keys, DataClass::Card, 1).err(),
            Some(CryptoError::UnknownKey)
        );
    }

    #[test]
    fn rejects_broken_files_without_quoting_them() {
        let rng = SystemRandom::new();
        let ring = Keyring::generate(&rng, "t").unwrap();
        let json = String::from_utf8(ring.to_json().unwrap().to_vec()).unwrap();
        let key = crate::hex::encode(ring.sealing_kek(DataClass::Billing).unwrap().key);
        let broken = json.replacen(&key, &key[..60], 1);
        let err = Keyring::from_json(broken.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("32 bytes"), "{err}");
        assert!(!err.contains(&key[..60]));
        let unknown_format = json.replacen(FORMAT, "checkoutd-keyring/9", 1);
        // Nothing unknown is silently dropped (a rewrite would lose it).
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        for case in 0..3 {
            let mut d = doc.clone();
            match case {
                0 => d["keks"]["loyalty"] = serde_json::json!([]),
                1 => {
                    d["mac_keys"]["loyalty"] =
                        serde_json::json!({"version": 1, "key": "00".repeat(32)})
                }
                _ => d["signing"]["algorithm"] = serde_json::json!("rsa"),
            }
            let edited = serde_json::to_vec(&d).unwrap();
            assert!(Keyring::from_json(&edited).is_err(), "case {case}");
        }
        assert!(Keyring::from_json(json.as_bytes()).is_ok());
        assert!(Keyring::from_json(unknown_format.as_bytes()).is_err());
        assert!(Keyring::from_json(b"{").is_err());
    }
}
