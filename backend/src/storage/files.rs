//! Files: writes that never leave half a file behind, and content digests.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// What every temporary file's name ends with, so that leftovers of a crash can be found.
const PARTIAL_SUFFIX: &str = ".partial";
/// A temporary file untouched this long was left by an interrupted write.
const PARTIAL_ABANDONED: std::time::Duration = std::time::Duration::from_secs(3600);

/// Writes through a temporary file, fsync and rename: readers see the old file or the new one.
/// Concurrent writers use distinct temporary names, and a failed write removes its own.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |temporary| create_with(temporary, bytes))
}

/// [`write_atomic`] of what `write` writes to the temporary file it is given: for files too
/// large to hold in memory first.
pub(crate) fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    through_temporary(path, write, |temporary| std::fs::rename(temporary, path))
}

/// Like [`write_atomic`], but fails with `AlreadyExists` instead of replacing a file: of two
/// writers of the same new name, one succeeds.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A hard link is made only where no file is: an atomic test-and-set.
    through_temporary(
        path,
        |temporary| create_with(temporary, bytes),
        |temporary| {
            std::fs::hard_link(temporary, path)?;
            std::fs::remove_file(temporary)
        },
    )
}

/// Writes `bytes` to a file at `path`, which must not exist yet.
fn create_with(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::File::options().write(true).create_new(true).open(path)?.write_all(bytes)
}

/// Has `write` write a temporary file beside `path`, syncs it and hands it to `install`; the
/// temporary file is removed if anything fails.
fn through_temporary(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>, install: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    // Random too: processes on other hosts sharing the folder may have the same pid.
    name.push(format!(".{}-{}-{:016x}{PARTIAL_SUFFIX}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), rand::random::<u64>()));
    let temporary = path.with_file_name(name);
    let written = (|| {
        write(&temporary)?;
        // fsync acts on the file, whichever handle asks: `write` may have closed its own.
        std::fs::File::open(&temporary)?.sync_all()?;
        install(&temporary)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Removes temporary files that an interrupted process left in `dir`: those untouched for an
/// hour, since another process sharing the folder may be writing the newer ones.
pub(crate) fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let abandoned = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > PARTIAL_ABANDONED));
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let partial = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.') && n.ends_with(PARTIAL_SUFFIX));
        if partial && abandoned(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a temporary file left by an interrupted write"),
                Err(error) => tracing::warn!(path = %path.display(), %error, "could not remove a leftover temporary file"),
            }
        }
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
pub(crate) fn free_space(dir: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Lower-case hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the file itself");
        let error = write_new(&path, b"third").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"second", "write_new never replaces");
        write_new(&dir.path().join("other.bin"), b"new").unwrap();
        std::fs::remove_file(dir.path().join("other.bin")).unwrap();

        let missing = dir.path().join("no-such-folder/file.bin");
        assert!(write_atomic(&missing, b"x").is_err());
        let old = dir.path().join(".file.bin.7-0.partial");
        std::fs::write(&old, b"left by a crash").unwrap();
        let hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(hours_ago).unwrap();
        let fresh = dir.path().join(".file.bin.8-0.partial");
        std::fs::write(&fresh, b"another process is writing it").unwrap();
        remove_partials(dir.path());
        assert!(!old.exists() && fresh.exists(), "only the abandoned one is removed");
    }

    #[test]
    fn a_file_written_through_a_temporary_one_replaces_the_old_only_when_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.bin");
        write_atomic(&path, b"old").unwrap();
        let failed = write_atomic_with(&path, |temporary| {
            std::fs::write(temporary, b"half of the ne")?;
            Err(std::io::Error::other("the disk filled up"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "the disk filled up");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        write_atomic_with(&path, |temporary| std::fs::write(temporary, b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
