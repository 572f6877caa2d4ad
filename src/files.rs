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
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock()?;
    Ok(file)
}
