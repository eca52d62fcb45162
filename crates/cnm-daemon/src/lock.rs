//! [`StateLock`]: one process owns a state dir. This is `cnm-store`'s [`StateDirLock`] (an
//! exclusive `flock` on `<state-dir>/lock` holding the owner's pid), the same lock a controller
//! built with the default durable store takes: one lock file, one owner, whoever it is.

use std::path::Path;

use cnm::cnm_store::{RedbStoreError, StateDirLock};

use crate::DaemonError;

/// The lock file's name inside the state dir.
pub const LOCK_FILE: &str = cnm::cnm_store::LOCK_FILE;

/// An exclusive lock on a state dir, released when dropped (or when the process dies: the kernel
/// drops `flock` locks with the last descriptor, so a crashed cnmd never leaves a stale lock).
#[derive(Debug)]
pub struct StateLock {
    inner: StateDirLock,
}

impl StateLock {
    /// Takes the lock of `state_dir` (created if missing) without waiting; refused, naming the
    /// lock file and the holder's pid, when another process (or another open of it) has it.
    pub fn acquire(state_dir: &Path) -> Result<Self, DaemonError> {
        // Patient for a moment: after a crash, an orphaned helper of the previous cnmd may hold
        // the lock until its exec (see `StateDirLock::acquire_within`).
        match StateDirLock::acquire_within(state_dir, cnm::cnm_store::RESTART_PATIENCE) {
            Ok(inner) => Ok(Self { inner }),
            Err(RedbStoreError::Locked { path, holder, .. }) => Err(DaemonError::Locked {
                path,
                holder: match holder {
                    Some(pid) => format!("pid {pid}"),
                    None => "an unknown process".to_owned(),
                },
            }),
            Err(source) => Err(DaemonError::Store {
                path: state_dir.to_owned(),
                source,
            }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.inner.path()
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
