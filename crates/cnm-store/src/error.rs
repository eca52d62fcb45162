//! Open-time failures of the embedded store and of the state-directory lock.
//!
//! Failures of individual operations on an open store are [`cnm_core::store::StoreError`]s
//! (`Backend { backend: "redb", .. }`), as the [`cnm_core::store::Store`] trait requires.

use std::path::PathBuf;

use cnm_types::ErrorKind;

/// Why the store or the state-directory lock could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedbStoreError {
    /// The state directory could not be created.
    #[error("failed to create state directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another handle (this process or another) has the database open.
    #[error(
        "store database {path} is already open by another process or handle \
         (the daemon takes the state-directory lock before opening it)"
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// The database file could not be opened or created.
    #[error("failed to open store database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// The tables could not be created or read after opening.
    #[error("failed to {op} in store database {path}")]
    Init {
        /// What was being done.
        op: &'static str,
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// The lock file could not be opened, read or written.
    #[error("failed to {op} state-directory lock file {path}")]
    LockFile {
        /// What was being done.
        op: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Someone else holds the state-directory lock.
    #[error("state-directory lock {path} is held by {}", holder_text(*.holder))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The pid written in the lock file by its holder, if it could be read.
        holder: Option<u32>,
        /// The cause (`EWOULDBLOCK`).
        #[source]
        source: nix::errno::Errno,
    },
}

fn holder_text(holder: Option<u32>) -> String {
    match holder {
        Some(pid) if pid == std::process::id() => format!(
            "this process (pid {pid}): a controller or store opened on this state directory \
             earlier is still open; shut that controller down (Controller::shutdown) or drop it \
             first"
        ),
        Some(pid) => format!("pid {pid}"),
        None => "another process or handle (pid unknown)".to_owned(),
    }
}

impl RedbStoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::AlreadyOpen { .. } | Self::Locked { .. } => ErrorKind::Conflict,
            Self::CreateDir { .. } | Self::Open { .. } | Self::LockFile { .. } => {
                ErrorKind::Unavailable
            }
            Self::Init { .. } => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_names_file_and_pid() {
        let e = RedbStoreError::Locked {
            path: "/var/lib/cnm/lock".into(),
            holder: Some(4242),
            source: nix::errno::Errno::EWOULDBLOCK,
        };
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            e.to_string(),
            "state-directory lock /var/lib/cnm/lock is held by pid 4242"
        );
        let ours = RedbStoreError::Locked {
            path: "/var/lib/cnm/lock".into(),
            holder: Some(std::process::id()),
            source: nix::errno::Errno::EWOULDBLOCK,
        };
        assert!(
            ours.to_string().starts_with(&format!(
                "state-directory lock /var/lib/cnm/lock is held by this process (pid {})",
                std::process::id()
            )),
            "{ours}"
        );
    }
}
