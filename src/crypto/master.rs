//! The master key that seals the keyring file, and its custodian shares.
//!
//! Production: the master key exists only in memory, as the XOR of N share
//! files held by N custodians (split knowledge, dual control): every share
//! is a full-length random 256-bit component, so any N−1 of them reveal
//! nothing. Each share file carries its set id, its number, N and a
//! checksum, so that a wrong, corrupted, duplicated or missing share is
//! named precisely. The reconstructed key is checked against the key id
//! stored in the sealed keyring.
//!
//! Development: a single `master.key` file (0600) beside the keyring, made
//! on the first `serve` with a loud warning — so that the two README commands
//! still work. Never for real cards.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;

/// The development master key file name (in the data directory).
pub const DEV_FILE_NAME: &str = "master.key";
const SHARE_FORMAT: &str = "checkoutd-master-key-share/1";
const DEV_FORMAT: &str = "checkoutd-dev-master-key/1";

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("cannot read the master-key share {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither shares given nor a development master key in the data
    /// directory: the keyring is sealed under shares, or there is none yet.
    #[error(
        "no master key: {data_dir} holds no development master key (master.key), and no \
         --master-key-share was given. A keyring made by `keys init` opens only with all \
         its custodians' shares (--master-key-share FILE, once each); a new data directory \
         gets a development keyring on the first `serve`"
    )]
    NoMasterKey { data_dir: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a checkoutd master-key share")]
    NotAShare { path: PathBuf },
    /// The development master key file may be read (or replaced) by
    /// others: it is the key to every record.
    #[error(
        "{path} is open to other users (mode {mode:03o}); it holds the master key in clear, \
         so checkoutd will not use it: `chmod 600` it (and find out who could read it)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// A share every local user may read (or replace): with its fellow
    /// shares stored alike, anyone on the machine holds the master key.
    #[error(
        "the master key share {path} is open to every local user (mode {mode:03o}): \
         `chmod o-rwx` it (0600, or 0640 for a custodians' group), and mount removable \
         media with such a mask"
    )]
    ShareExposed { path: PathBuf, mode: u32 },
    #[error("{path} fails its checksum (corrupted or edited share)")]
    Checksum { path: PathBuf },
    #[error("the shares belong to different sets ({path} is from another set)")]
    MixedSets { path: PathBuf },
    #[error("share {number} of {of} is given twice")]
    Duplicate { number: u32, of: u32 },
    #[error("{given} of {of} master-key shares given; all {of} are needed")]
    Missing { given: usize, of: u32 },
    #[error("the shares do not reconstruct the master key of this keyring")]
    WrongKey,
    #[error("at least two custodians are needed")]
    TooFewCustodians,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The 256-bit master key. Zeroized on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareFile {
    format: String,
    set: String,
    number: u32,
    of: u32,
    component: Zeroizing<String>,
    checksum: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevFile {
    format: String,
    key: Zeroizing<String>,
}

fn share_checksum(set: &str, number: u32, of: u32, component: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"checkoutd/master-key-share");
    ctx.update(set.as_bytes());
    ctx.update(&number.to_be_bytes());
    ctx.update(&of.to_be_bytes());
    ctx.update(component);
    crate::hex::encode(&ctx.finish().as_ref()[..8])
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), MasterKeyError> {
    crate::files::create_new_file(path, bytes, 0o600).map_err(|source| MasterKeyError::Write {
        path: path.to_owned(),
        source,
    })
}

impl MasterKey {
    pub fn generate(rng: &SystemRandom) -> Result<Self, CryptoError> {
        Ok(MasterKey(super::aead::random_key(rng)?))
    }

    pub(crate) fn raw(&self) -> &[u8; 32] {
        &self.0
    }

    /// A public identifier of the key (not the key): the first 8 bytes of
    /// HMAC-SHA256(key, "checkoutd/master-key-id"), hex.
    pub fn id(&self) -> String {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_ref()),
            b"checkoutd/master-key-id",
        );
        crate::hex::encode(&tag.as_ref()[..8])
    }

    /// Splits into `n` share files' contents (n ≥ 2) whose XOR is the key.
    pub fn split(
        &self,
        rng: &SystemRandom,
        n: u32,
    ) -> Result<Vec<Zeroizing<Vec<u8>>>, MasterKeyError> {
        if n < 2 {
            return Err(MasterKeyError::TooFewCustodians);
        }
        let mut set = [0u8; 8];
        rng.fill(&mut set).map_err(|_| CryptoError::Random)?;
        let set = crate::hex::encode(&set);
        let mut last = Zeroizing::new(*self.0);
        let mut out = Vec::new();
        for number in 1..=n {
            let component = if number < n {
                let c = super::aead::random_key(rng)?;
                for (l, b) in last.iter_mut().zip(c.iter()) {
                    *l ^= b;
                }
                c
            } else {
                last.clone()
            };
            let file = ShareFile {
                format: SHARE_FORMAT.to_owned(),
                set: set.clone(),
                number,
                of: n,
                checksum: share_checksum(&set, number, n, component.as_ref()),
                component: Zeroizing::new(crate::hex::encode(component.as_ref())),
            };
            out.push(super::json_zeroizing(&file)?);
        }
        Ok(out)
    }

    /// Reconstructs the key from every share of one set.
    pub fn from_shares(paths: &[PathBuf]) -> Result<Self, MasterKeyError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|source| MasterKeyError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o007 != 0 && reachable_by_others(path) {
                    return Err(MasterKeyError::ShareExposed {
                        path: path.clone(),
                        mode,
                    });
                }
            }
            let bytes =
                Zeroizing::new(std::fs::read(path).map_err(|source| MasterKeyError::Read {
                    path: path.clone(),
                    source,
                })?);
            files.push((path.as_path(), bytes));
        }
        let contents: Vec<(&Path, &[u8])> = files.iter().map(|(p, b)| (*p, b.as_slice())).collect();
        Self::from_share_contents(&contents)
    }

    /// As [`MasterKey::from_shares`], on the files' contents already read;
    /// each path only names its share in errors. (The parser the fuzz
    /// target `master_shares` drives.)
    pub fn from_share_contents(shares: &[(&Path, &[u8])]) -> Result<Self, MasterKeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        let mut seen: Vec<u32> = Vec::new();
        let mut set_and_of: Option<(String, u32)> = None;
        for (path, bytes) in shares {
            let path = path.to_path_buf();
            let file: ShareFile = serde_json::from_slice(bytes)
                .ok()
                .filter(|f: &ShareFile| f.format == SHARE_FORMAT)
                .ok_or_else(|| MasterKeyError::NotAShare { path: path.clone() })?;
            let component = crate::hex::decode_key(&file.component)
                .ok_or_else(|| MasterKeyError::Checksum { path: path.clone() })?;
            if share_checksum(&file.set, file.number, file.of, component.as_slice())
                != file.checksum
            {
                return Err(MasterKeyError::Checksum { path: path.clone() });
            }
            if file.of < 2 || file.number < 1 || file.number > file.of {
                return Err(MasterKeyError::NotAShare { path: path.clone() });
            }
            match &set_and_of {
                None => set_and_of = Some((file.set.clone(), file.of)),
                Some((set, of)) if *set != file.set || *of != file.of => {
                    return Err(MasterKeyError::MixedSets { path: path.clone() });
                }
                Some(_) => {}
            }
            if seen.contains(&file.number) {
                return Err(MasterKeyError::Duplicate {
                    number: file.number,
                    of: file.of,
                });
            }
            seen.push(file.number);
            for (k, c) in key.iter_mut().zip(component.iter()) {
                *k ^= c;
            }
        }
        match set_and_of {
            Some((_, of)) if seen.len() == of as usize => Ok(MasterKey(key)),
            Some((_, of)) => Err(MasterKeyError::Missing {
                given: seen.len(),
                of,
            }),
            None => Err(MasterKeyError::Missing { given: 0, of: 2 }),
        }
    }

    /// Reads the development master key file.
    pub fn load_dev(path: &Path) -> Result<Self, MasterKeyError> {
        let read = |source| MasterKeyError::Read {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(MasterKeyError::Exposed {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(read)?);
        Self::from_dev_contents(path, &bytes)
    }

    /// As [`MasterKey::load_dev`], on the file's contents already read;
    /// `path` only names the file in errors.
    pub fn from_dev_contents(path: &Path, bytes: &[u8]) -> Result<Self, MasterKeyError> {
        let file: DevFile = serde_json::from_slice(bytes)
            .ok()
            .filter(|f: &DevFile| f.format == DEV_FORMAT)
            .ok_or_else(|| MasterKeyError::NotAShare {
                path: path.to_owned(),
            })?;
        let key = crate::hex::decode_key(&file.key).ok_or(MasterKeyError::Checksum {
            path: path.to_owned(),
        })?;
        Ok(MasterKey(key))
    }

    /// Writes the development master key file (0600).
    pub fn save_dev(&self, path: &Path) -> Result<(), MasterKeyError> {
        let file = DevFile {
            format: DEV_FORMAT.to_owned(),
            key: Zeroizing::new(crate::hex::encode(self.0.as_ref())),
        };
        write_private(path, &super::json_zeroizing(&file)?)
    }
}

/// Whether users other than the owner and group can reach `path` at all:
/// every directory above it lets others in (`o+x`). A share on removable
/// media shows its file system's mask (0644 on a FAT stick, which `chmod`
/// cannot change) but sits under a mount point only its custodian may
/// enter (`/media/alice`, 0750): not open to everyone.
#[cfg(unix)]
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(full) = std::fs::canonicalize(path) else {
        return true;
    };
    full.ancestors()
        .skip(1)
        .all(|dir| std::fs::metadata(dir).map_or(true, |m| m.permissions().mode() & 0o001 != 0))
}

/// The master key for a data directory: from the custodians' shares when
/// any are given, else the development key file (which must exist).
pub fn resolve(data_dir: &Path, shares: &[PathBuf]) -> Result<MasterKey, MasterKeyError> {
    if shares.is_empty() {
        let path = data_dir.join(DEV_FILE_NAME);
        if !path.exists() {
            return Err(MasterKeyError::NoMasterKey {
                data_dir: data_dir.to_owned(),
            });
        }
        MasterKey::load_dev(&path)
    } else {
        MasterKey::from_shares(shares)
    }
}

/// The file of share `i` (from 1) of `n` in `dir`.
pub fn share_path(dir: &Path, i: u32, n: u32) -> PathBuf {
    dir.join(format!("share-{i}-of-{n}.json"))
}

/// Writes share files `share-<i>-of-<n>.json` (0600) into `dir` (0700),
/// never over an existing file; all of them or, failing, none.
pub fn write_shares(
    dir: &Path,
    shares: &[Zeroizing<Vec<u8>>],
) -> Result<Vec<PathBuf>, MasterKeyError> {
    crate::files::create_private_dir(dir).map_err(|source| MasterKeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let n = u32::try_from(shares.len()).unwrap_or(u32::MAX);
    let mut paths = Vec::with_capacity(shares.len());
    for (i, share) in (1..).zip(shares) {
        let path = share_path(dir, i, n);
        if let Err(error) = write_private(&path, share) {
            // All or none: a partial set opens nothing and would block the
            // next attempt (shares are never overwritten).
            for written in &paths {
                let _ = std::fs::remove_file(written);
            }
            return Err(error);
        }
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A development master key that others may read is refused, naming
    /// the file and its mode; once `chmod 600`ed it loads.
    #[cfg(unix)]
    #[test]
    fn a_development_master_key_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEV_FILE_NAME);
        let key = MasterKey::generate(&ring::rand::SystemRandom::new()).unwrap();
        key.save_dev(&path).unwrap();
        assert!(MasterKey::load_dev(&path).is_ok());
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = MasterKey::load_dev(&path).unwrap_err();
            assert!(matches!(error, MasterKeyError::Exposed { .. }), "{error}");
            assert!(
                error.to_string().contains(&format!("{mode:03o}")),
                "{error}"
            );
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::load_dev(&path).is_ok());
    }

    #[test]
    fn shares_are_written_all_or_none_and_never_over_a_file() {
        let rng = SystemRandom::new();
        let master = MasterKey::generate(&rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let taken = share_path(dir.path(), 2, 3);
        std::fs::write(&taken, b"someone else's share").unwrap();
        assert!(write_shares(dir.path(), &master.split(&rng, 3).unwrap()).is_err());
        assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's share");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["share-2-of-3.json"], "share 1 was removed again");
    }

    #[test]
    fn shares_reconstruct_only_when_all_are_given_and_intact() {
        let rng = SystemRandom::new();
        let master = MasterKey::generate(&rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths = write_shares(dir.path(), &master.split(&rng, 3).unwrap()).unwrap();
        let back = MasterKey::from_shares(&paths).unwrap();
        assert_eq!(back.raw(), master.raw());
        assert!(matches!(
            MasterKey::from_shares(&paths[..2]),
            Err(MasterKeyError::Missing { given: 2, of: 3 })
        ));
        let twice = vec![paths[0].clone(), paths[0].clone(), paths[1].clone()];
        assert!(matches!(
            MasterKey::from_shares(&twice),
            Err(MasterKeyError::Duplicate { number: 1, .. })
        ));
        // A corrupted component fails its checksum.
        let text = std::fs::read_to_string(&paths[1]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let comp = v["component"].as_str().unwrap().to_owned();
        let flipped = format!(
            "{}{}",
            if comp.starts_with('0') { "1" } else { "0" },
            &comp[1..]
        );
        std::fs::write(&paths[1], text.replace(&comp, &flipped)).unwrap();
        assert!(matches!(
            MasterKey::from_shares(&paths),
            Err(MasterKeyError::Checksum { .. })
        ));
        // A share of another set.
        let other = MasterKey::generate(&rng).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let other_paths = write_shares(dir2.path(), &other.split(&rng, 3).unwrap()).unwrap();
        let mixed = vec![paths[0].clone(), other_paths[1].clone(), paths[2].clone()];
        assert!(matches!(
            MasterKey::from_shares(&mixed),
            Err(MasterKeyError::MixedSets { .. })
        ));
        assert!(matches!(
            master.split(&rng, 1),
            Err(MasterKeyError::TooFewCustodians)
        ));
        assert!(!format!("{master:?}").contains(&crate::hex::encode(master.raw())));
    }

    /// A share every local user may read is refused, naming it; one a
    /// custodians' group may read is taken.
    #[cfg(unix)]
    #[test]
    fn a_share_open_to_every_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let rng = ring::rand::SystemRandom::new();
        let master = MasterKey::generate(&rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A directory every user may enter (as /etc is).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = write_shares(dir.path(), &master.split(&rng, 2).unwrap()).unwrap();
        let chmod = |mode| {
            std::fs::set_permissions(&paths[1], std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(0o644);
        match MasterKey::from_shares(&paths) {
            Err(error @ MasterKeyError::ShareExposed { mode: 0o644, .. }) => {
                assert!(error.to_string().contains("share-2-of-2"), "{error}")
            }
            other => panic!("an exposed share was taken: {:?}", other.err()),
        }
        chmod(0o602);
        assert!(MasterKey::from_shares(&paths).is_err());
        chmod(0o640);
        assert!(MasterKey::from_shares(&paths).is_ok());
        // Under a directory only its owner may enter (a custodian's mount
        // point), the file's own mode opens it to no one.
        chmod(0o644);
        let closed = tempfile::tempdir().unwrap();
        std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let inside = closed.path().join("share-2-of-2.json");
        std::fs::copy(&paths[1], &inside).unwrap();
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::from_shares(&[paths[0].clone(), inside]).is_ok());
    }
}
