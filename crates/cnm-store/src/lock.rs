//! The state-directory lock: one daemon per state directory.
//!
//! An exclusive `flock(2)` on `<state_dir>/lock`, taken without blocking. flock locks belong to
//! the open file description, so a second acquire fails whether it comes from another process or
//! from this one, and the kernel drops the lock when the holder dies, however it dies: no stale
//! lock to clean up after a crash. The holder's pid is written into the file only so that the
//! refusal can name it; the pid is never trusted for the exclusion itself.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::RedbStoreError;

/// The name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive hold on a state directory; released on drop or when the process dies.
#[derive(Debug)]
pub struct StateDirLock {
    path: PathBuf,
    // Held for its Drop: closing the descriptor releases the flock.
    _file: Flock<File>,
}

impl StateDirLock {
    /// Takes the lock on `<state_dir>/lock` (creating the directory and file as needed) and
    /// records this process's pid in it.
    ///
    /// Fails at once with [`RedbStoreError::Locked`] (kind `Conflict`), naming the file and the
    /// holder's pid, if any process — this one included — already holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateDirLock, RedbStoreError> {
        crate::private::create_dir(state_dir).map_err(|source| RedbStoreError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(LOCK_FILE);
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| RedbStoreError::LockFile { op, path, source }
        };
        // Not truncated on open: until we hold the lock, the pid in it is the holder's.
        let file = crate::private::open_rw(&path).map_err(io_err("open", &path))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(RedbStoreError::Locked {
                    holder: read_holder(&path),
                    path,
                    source: Errno::EWOULDBLOCK,
                });
            }
            Err((_, errno)) => {
                return Err(RedbStoreError::LockFile {
                    op: "lock",
                    path,
                    source: errno.into(),
                });
            }
        };
        file.set_len(0).map_err(io_err("truncate", &path))?;
        file.rewind().map_err(io_err("rewind", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("write pid to", &path))?;
        tracing::debug!(path = %path.display(), pid = std::process::id(), "state directory locked");
        Ok(StateDirLock { path, _file: file })
    }

    /// Like [`StateDirLock::acquire`], but while the lock is held, tries again for up to
    /// `patience` (backing off from 5 to 100 ms) before refusing.
    ///
    /// For a restart after a crash: the crashed holder may have been between `fork` and `exec`
    /// of a helper (`iptables`, `conntrack`); that orphan holds a copy of the descriptor, and
    /// so the lock, until its `exec` closes it a moment later. A second live owner is still
    /// refused, `patience` later.
    pub fn acquire_within(
        state_dir: &Path,
        patience: std::time::Duration,
    ) -> Result<StateDirLock, RedbStoreError> {
        let deadline = std::time::Instant::now() + patience;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match Self::acquire(state_dir) {
                Err(RedbStoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote, if the file holds one. Best effort: the holder may be between
/// truncating and writing it.
fn read_holder(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    #[test]
    fn second_acquire_in_same_process_is_refused_naming_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = StateDirLock::acquire(&state).unwrap();
        assert_eq!(held.path(), state.join("lock"));
        let err = StateDirLock::acquire(&state).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        let text = err.to_string();
        assert!(
            text.contains(&state.join("lock").display().to_string()),
            "{text}"
        );
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(held);
        let again = StateDirLock::acquire(&state).unwrap();
        let pid = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
