//! Files holding secrets or ciphertexts are nobody else's business.

use std::path::Path;

/// Creates `dir` (and its parents) readable by the owner only (0700 on
/// Unix). An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Opens (creating) `path` and takes an exclusive advisory lock on it,
/// waiting for other holders; the lock lasts as long as the returned file.
///
/// A lock file holds nothing. It must be a regular file of its own: a
/// symbolic link or a directory there is refused, never followed (run as
/// root, following one would lock — or, below, give away — whatever it
/// points to). An existing one is opened for writing where the caller may,
/// else for reading (`flock` needs no write access, but NFS emulates it
/// with a write lock), and never changes owner. A new one is made
/// exclusively (a link planted meanwhile is not followed), 0640, and given
/// its directory's owner where the caller may (root, through sudo): a lock
/// an operator's `sudo checkoutd keys …` made in the service's data
/// directory must not stop the service, or the next command run as its
/// user, from taking it.
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let not_a_file = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file (a symbolic link or a directory?): remove it",
                path.display()
            ),
        )
    };
    // A file made between the look and the exclusive create is looked at
    // again; twice is plenty.
    for _ in 0..3 {
        let file = match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_file() => return Err(not_a_file()),
            Ok(meta) => {
                let open = |write: bool| {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(write)
                        .open(path)
                };
                let file = match open(true) {
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(false)?,
                    other => other?,
                };
                // Swapped for a link between the look and the open: the
                // file opened is not the one looked at.
                if !same_file(&meta, &file.metadata()?) {
                    return Err(not_a_file());
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut new = std::fs::OpenOptions::new();
                new.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    new.mode(0o640);
                }
                match new.open(path) {
                    Ok(file) => {
                        give_directory_owner(path, &file);
                        file
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        file.lock()?;
        return Ok(file);
    }
    Err(not_a_file())
}

/// Whether two metadata describe the same file (device and inode).
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }
    #[cfg(not(unix))]
    {
        a.is_file() && b.is_file()
    }
}

/// Gives `file`, just created at `path`, the owner and group of its
/// directory if they differ and the caller may change them (only root
/// may): best effort, the lock works either way for its caller.
fn give_directory_owner(path: &Path, file: &std::fs::File) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let (Ok(dir), Ok(own)) = (std::fs::metadata(dir), file.metadata())
            && (dir.uid(), dir.gid()) != (own.uid(), own.gid())
        {
            let _ = std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid()));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
}

/// How [`write_atomically`] places its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Replaces whatever is at the path (a rotated keyring), keeping its
    /// owner and group.
    Replace,
    /// Replaces whatever is at the path with a file of the writer's own (a
    /// report written where others may have put the file it replaces: as
    /// root in `/tmp`, keeping the owner would hand root's report to
    /// whoever planted the old one, to edit).
    ReplaceAsMine,
    /// Only if nothing is there yet (a key never overwrites another).
    CreateNew,
}

/// Writes `bytes` to `path` so that `path` never holds a partial file: into
/// a temporary file beside it (created exclusively with `mode`, so never
/// readable by others even for an instant, and fsynced), then renamed over
/// `path` ([`Placement::Replace`]) or hard-linked to it, which fails if
/// `path` exists ([`Placement::CreateNew`]); then the directory is fsynced.
/// A symbolic link at `path` is replaced, never followed. Returns whether
/// the file was placed (`false`: `CreateNew` and `path` exists, kept).
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    placement: Placement,
) -> std::io::Result<bool> {
    // A bare file name is in the working directory.
    let dir = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file path"))?
        .to_string_lossy();
    let mut suffix = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .map_err(|_| std::io::Error::other("no randomness for a temporary file name"))?;
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", crate::hex::encode(&suffix)));
    write_new(&tmp, bytes, mode)?;
    if placement == Placement::Replace
        && let Err(e) = keep_owner(path, &tmp)
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let placed = match placement {
        Placement::Replace | Placement::ReplaceAsMine => std::fs::rename(&tmp, path).map(|()| true),
        Placement::CreateNew => {
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                // A file system without hard links (FAT and exFAT, as on a
                // custodian's USB stick): the file itself, created
                // exclusively. Not atomic there: a crash part way leaves a
                // short file, which is never overwritten and fails its
                // reader's checks (key files and shares carry checksums).
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
                    ) =>
                {
                    match write_new(path, bytes, mode) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let (Some(dir), Ok(true)) = (dir, &placed)
        && let Err(error) = sync_dir(dir)
    {
        // The new file is in place — every process already reads it — but
        // not yet durable: a power loss could bring the previous one back.
        // Not an error (the caller must go on as for a placed file: a
        // rotation must still be told to the database and logged), but
        // never silent.
        tracing::warn!(
            path = %path.display(),
            %error,
            "the file is in place, but its directory could not be synced: a power loss may bring the previous version back"
        );
    }
    placed
}

/// Syncs a directory's entries. A file system that cannot sync a directory
/// at all (`EINVAL`) gives nothing better to wait for.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        synced => synced,
    }
}

/// A replaced file keeps its owner and group: an operator who runs
/// `keys rotate` as root (through sudo) must not leave the service's
/// keyring owned by root, unreadable to the service. Fails (and nothing is
/// replaced) when the owner cannot be kept.
fn keep_owner(path: &Path, tmp: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(old) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        if !old.is_file() {
            return Ok(());
        }
        let new = std::fs::symlink_metadata(tmp)?;
        if (old.uid(), old.gid()) != (new.uid(), new.gid()) {
            std::os::unix::fs::lchown(tmp, Some(old.uid()), Some(old.gid())).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot give the new {} the owner of the one it replaces (uid {}, gid {}): run this as that user, or as root",
                        path.display(),
                        old.uid(),
                        old.gid()
                    ),
                )
            })?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, tmp);
    Ok(())
}

/// Creates `path` exclusively (`AlreadyExists` if it is there) with `mode`,
/// writes `bytes` and fsyncs it; a file it created but could not fill is
/// removed again (one it did not create is never touched).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    let filled = file.write_all(bytes).and_then(|()| file.sync_all());
    if filled.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    filled
}

/// [`write_atomically`] to a new file only: an existing `path` is an
/// `AlreadyExists` error, and kept.
pub fn create_new_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if write_atomically(path, bytes, mode, Placement::CreateNew)? {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "already exists; never overwritten (move it away first)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced file keeps its owner (run as root, as CI does, the
    /// owner is another user's; otherwise the caller's own).
    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        assert!(write_atomically(&path, b"one", 0o600, Placement::CreateNew).unwrap());
        let me = std::fs::metadata(&path).unwrap().uid();
        let owner = if me == 0 {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            (65534, 65534)
        } else {
            let m = std::fs::metadata(&path).unwrap();
            (m.uid(), m.gid())
        };
        assert!(write_atomically(&path, b"two", 0o600, Placement::Replace).unwrap());
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), owner);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn an_atomic_write_creates_new_files_private_and_replaces_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.pem");
        assert!(write_atomically(&path, b"one", 0o600, Placement::CreateNew).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten by a create…
        assert!(!write_atomically(&path, b"two", 0o600, Placement::CreateNew).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        // …only by a replace.
        assert!(write_atomically(&path, b"three", 0o600, Placement::Replace).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        // A symbolic link in the way is replaced, its target untouched.
        #[cfg(unix)]
        {
            let target = dir.path().join("elsewhere");
            std::fs::write(&target, b"theirs").unwrap();
            let link = dir.path().join("link.pem");
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert!(write_atomically(&link, b"ours", 0o600, Placement::Replace).unwrap());
            assert_eq!(std::fs::read(&target).unwrap(), b"theirs");
            assert!(
                !std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
        // A replace keeps the owner of the file it replaces; a report's
        // (`ReplaceAsMine`) is the writer's own. (Root only: to give the
        // old file another owner.)
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let planted = dir.path().join("report.json");
            std::fs::write(&planted, b"theirs").unwrap();
            if std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).is_ok() {
                let me = std::fs::metadata(dir.path()).unwrap().uid();
                assert!(
                    write_atomically(&planted, b"ours", 0o644, Placement::ReplaceAsMine).unwrap()
                );
                assert_eq!(std::fs::metadata(&planted).unwrap().uid(), me);
                std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
                assert!(write_atomically(&planted, b"kept", 0o644, Placement::Replace).unwrap());
                assert_eq!(std::fs::metadata(&planted).unwrap().uid(), 65534);
                std::fs::remove_file(&planted).unwrap();
            }
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    /// A lock file needs no write access; a new one takes its directory's
    /// owner where the caller may give it (root): an operator's `sudo
    /// checkoutd keys …` must not leave a lock the service's user cannot
    /// take. An existing one keeps its owner, and a symbolic link or a
    /// directory at the path is refused, not followed.
    #[cfg(unix)]
    #[test]
    fn a_lock_needs_no_write_access_and_belongs_to_its_directory_owner() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let read_only = dir.path().join("old.lock");
        std::fs::write(&read_only, b"").unwrap();
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o444)).unwrap();
        drop(lock_file(&read_only).unwrap());
        let me = std::fs::metadata(&read_only).unwrap();
        let root = me.uid() == 0;
        let (uid, gid) = if root {
            // The service's user owns its data directory.
            std::os::unix::fs::chown(dir.path(), Some(65_534), Some(65_534)).unwrap();
            (65_534, 65_534)
        } else {
            (me.uid(), me.gid())
        };
        let new = dir.path().join("new.lock");
        let held = lock_file(&new).unwrap();
        let m = std::fs::metadata(&new).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        // Held: a second taker waits (try_lock fails).
        let other = std::fs::File::open(&new).unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
        drop(other);
        // An existing lock keeps its owner, whoever takes it.
        assert_eq!(std::fs::metadata(&read_only).unwrap().uid(), me.uid());
        // A link at the path is refused, and what it points to untouched.
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let before = std::fs::metadata(&target).unwrap();
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(lock_file(&link).is_err());
        let dangling = dir.path().join("dangling.lock");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(lock_file(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists());
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        // So is a directory.
        let sub = dir.path().join("dir.lock");
        std::fs::create_dir(&sub).unwrap();
        assert!(lock_file(&sub).is_err());
    }
}
