//! [`StateLock`]: one process owns a state dir, proven by an exclusive `flock` on
//! `<state-dir>/cnmd.lock` that holds the owner's pid.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use crate::DaemonError;

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = "cnmd.lock";

/// An exclusive lock on a state dir, released when dropped (or when the process dies: the kernel
/// drops `flock` locks with the last descriptor, so a crashed cnmd never leaves a stale lock).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock of `state_dir` (created if missing) without waiting; refused, naming the
    /// lock file and the holder's pid, when another process (or another open of it) has it.
    pub fn acquire(state_dir: &Path) -> Result<Self, DaemonError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| DaemonError::io("create state dir", state_dir.display(), e))?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DaemonError::io("open lock file", path.display(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = match file.read_to_string(&mut text) {
                    Ok(_) if !text.trim().is_empty() => format!("pid {}", text.trim()),
                    _ => "an unknown process".to_owned(),
                };
                return Err(DaemonError::Locked { path, holder });
            }
            Err(TryLockError::Error(e)) => {
                return Err(DaemonError::io("lock", path.display(), e));
            }
        }
        // We own it now: record who we are for the next one to name.
        let write = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        })();
        write.map_err(|e| DaemonError::io("write pid to lock file", path.display(), e))?;
        tracing::debug!(path = %path.display(), "state dir locked");
        Ok(Self { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock as well; unlocking first makes the release
        // independent of other descriptors of the same open file (none are made here).
        if let Err(e) = self.file.unlock() {
            tracing::warn!(path = %self.path.display(), error = %e, "failed to unlock state dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_file_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&first.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(err.kind(), cnm::cnm_types::ErrorKind::Conflict);
        drop(first);
        StateLock::acquire(dir.path()).expect("free again once dropped");
    }
}
