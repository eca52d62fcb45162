//! The one error type of this crate and how kernel errnos map to [`ErrorKind`]s.

use std::io;

use cnm_types::{Cleanup, ErrorKind};

/// Everything that can go wrong in the kernel layer.
///
/// Every variant names the operation and the object it was applied to, and keeps the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A system call or netlink request failed; `source` carries the kernel's errno when there is one.
    #[error("failed to {op} {object}: {source}")]
    Kernel {
        /// What was being done ("create veth", "mount netns", …).
        op: &'static str,
        /// The object it was done to (interface, path, namespace, address, …).
        object: String,
        /// The cause, usually an OS error.
        #[source]
        source: io::Error,
    },
    /// The caller passed a value that cannot be used; nothing was changed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// The field or parameter that was rejected.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The operation is not supported (by this build, this kernel or this combination of options).
    #[error("cannot {op} {object}: not supported: {reason}")]
    Unsupported {
        /// What was being attempted.
        op: &'static str,
        /// The object it was attempted on.
        object: String,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// The worker thread doing namespace work died before reporting (the closure panicked).
    #[error("failed to {op} {object}: the namespace worker thread panicked")]
    ThreadPanicked {
        /// What was being done.
        op: &'static str,
        /// The namespace or object it was done to.
        object: String,
    },
    /// An operation failed and undoing its partial effects failed too: the first cause is the
    /// source, every cleanup failure is listed.
    #[error("{source}; cleanup also failed: {}", cnm_types::ErrorList(.cleanup))]
    Cleanup {
        /// The error that made the operation fail.
        #[source]
        source: Box<SandboxError>,
        /// Every error met while undoing.
        cleanup: Vec<SandboxError>,
    },
    /// The path of a namespace handle names another namespace now (it was deleted and the
    /// path reused): the handle's namespace is gone, and nothing was done in the other one.
    #[error(
        "namespace at {path} is net:[{now}] now, not this handle's net:[{was}] (it was deleted)"
    )]
    Replaced {
        /// The bind-mount path.
        path: String,
        /// Inode of the namespace the handle named.
        was: u64,
        /// Inode of the namespace mounted there now.
        now: u64,
    },
    /// No tokio runtime was available to drive a netlink connection.
    #[error("failed to {op} {object}: no tokio runtime is running")]
    NoRuntime {
        /// What was being done.
        op: &'static str,
        /// The object (namespace) it was done to.
        object: String,
    },
}

/// Cleanup failures are attached with [`Cleanup::with_cleanup`] (unchanged when there are none).
impl Cleanup for SandboxError {
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
        Self::Cleanup {
            source: Box::new(self),
            cleanup,
        }
    }
}

impl SandboxError {
    /// The kind of failure, independent of the variant.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Kernel { source, .. } => ErrorKind::from_io(source),
            Self::InvalidInput { .. } => ErrorKind::InvalidInput,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::ThreadPanicked { .. } => ErrorKind::Internal,
            Self::NoRuntime { .. } => ErrorKind::Unavailable,
            Self::Replaced { .. } => ErrorKind::Conflict,
            Self::Cleanup { source, .. } => source.kind(),
        }
    }

    /// The raw OS errno behind this error, if the kernel reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            Self::Cleanup { source, .. } => source.errno(),
            _ => None,
        }
    }

    pub(crate) fn kernel(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        Self::Kernel {
            op,
            object: object.into(),
            source,
        }
    }

    pub(crate) fn errno_err(
        op: &'static str,
        object: impl Into<String>,
        errno: nix::Error,
    ) -> Self {
        Self::kernel(op, object, io::Error::from_raw_os_error(errno as i32))
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Self::InvalidInput {
            field,
            value: value.into(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_op_object_and_cause() {
        let e = SandboxError::kernel(
            "create veth",
            "veth1a2b3c (peer eth0 in netns /run/cnm/netns/3f2a)",
            io::Error::from_raw_os_error(libc::EEXIST),
        );
        let text = e.to_string();
        assert!(
            text.starts_with("failed to create veth veth1a2b3c (peer eth0"),
            "{text}"
        );
        assert!(text.contains("File exists"), "{text}");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(std::error::Error::source(&e).is_some());
        let other = SandboxError::kernel("decode", "link", io::Error::other("garbled"));
        assert_eq!(other.kind(), ErrorKind::Internal);
    }
}
