//! The one public error of this crate.

use cnm_types::ErrorKind;

/// Why a firewall operation failed. Every variant names what was being done to which object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// A caller-supplied value was rejected before anything was sent to the kernel.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// The field, e.g. `port mapping 0 host_ports`.
        field: String,
        /// The offending value, as text.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The named network or endpoint is not in the model.
    #[error("{what} {id:?} not found in the firewall model")]
    NotFound {
        /// `network` or `endpoint`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The object already exists, or a port mapping overlaps one that is already installed.
    #[error("cannot {op} {object}: {reason}")]
    Conflict {
        /// The operation.
        op: String,
        /// The object.
        object: String,
        /// The conflicting state.
        reason: String,
    },
    /// The kernel refused one message of a transaction; the whole transaction was rolled back.
    #[error("nftables transaction for {op} refused by the kernel at {message}: {source}")]
    Kernel {
        /// The operation (`add network br-x`, …).
        op: String,
        /// The failing message, decoded (`add element inet cnm dnat4 …`).
        message: String,
        /// The errno the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the kernel or running a helper binary failed.
    #[error("failed to {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper binary (`nft`, `iptables`) ran but reported failure.
    #[error("{command} failed for {op} (exit status {status}): {stderr}")]
    Command {
        /// The operation.
        op: String,
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A tool the operation needs is missing on this host.
    #[error("cannot {op}: {reason}")]
    Unavailable {
        /// The operation.
        op: String,
        /// What is missing.
        reason: String,
    },
    /// An action deferred until the restored ruleset was committed failed
    /// (see [`crate::Firewall::after_loading`]).
    #[error("failed to {what} once the restored firewall was committed: {source}")]
    AfterLoading {
        /// The action.
        what: String,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Entering the network namespace failed.
    #[error("failed to enter the network namespace for {op}: {source}")]
    Namespace {
        /// The operation.
        op: String,
        /// The cause.
        #[source]
        source: cnm_sandbox::SandboxError,
    },
}

impl FirewallError {
    /// The kind of failure, for callers and the daemon's status mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Kernel { source, .. } | Self::Io { source, .. } => match source.raw_os_error() {
                Some(libc_errno::EEXIST) => ErrorKind::AlreadyExists,
                Some(libc_errno::ENOENT) => ErrorKind::NotFound,
                Some(libc_errno::EBUSY) | Some(libc_errno::ENOTEMPTY) => ErrorKind::Conflict,
                Some(libc_errno::EINVAL) | Some(libc_errno::ERANGE) => ErrorKind::InvalidInput,
                Some(libc_errno::EPERM) | Some(libc_errno::EACCES) => ErrorKind::Unavailable,
                Some(libc_errno::EOPNOTSUPP) => ErrorKind::Unsupported,
                _ => ErrorKind::Internal,
            },
            Self::Command { .. } | Self::AfterLoading { .. } => ErrorKind::Internal,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Namespace { source, .. } => source.kind(),
        }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidInput {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }
}

/// The few errno values `kind()` distinguishes (Linux numbers; this crate is Linux-only).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ERANGE: i32 = 34;
    pub const ENOTEMPTY: i32 = 39;
    pub const EOPNOTSUPP: i32 = 95;
}
