//! The one error type of the macvlan and ipvlan drivers.

use cnm_core::spi::{DriverError, Lookup};
use cnm_core::undo::Cleanup;
use cnm_sandbox::SandboxError;
use cnm_types::{ErrorKind, Failed, FailedTo};

/// Everything the macvlan and ipvlan drivers can fail with.
///
/// Each variant names what was done to which object and keeps the cause as its source. The
/// texts of option errors are Docker's, so a user of the Docker CLI reads what dockerd says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MacvlanError {
    /// An option with a value that cannot be used (Docker's words in `reason`).
    #[error("invalid value {value:?} for {driver} option {key:?}: {reason}")]
    InvalidOption {
        /// `macvlan` or `ipvlan`.
        driver: &'static str,
        /// The key.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The parent link named by `-o parent` is not in the host namespace (and is not a
    /// `name.VLAN` sub-interface of one that is).
    #[error("-o parent interface was not found on the host: {0}")]
    ParentNotFound(String),
    /// The request conflicts with another network on the same parent, or with the parent.
    #[error("{0}")]
    Conflict(String),
    /// The kernel lacks what the network needs (8021q, ipvlan): nothing was left behind.
    #[error("{what} is not supported by this kernel (missing kernel feature {feature})")]
    Unsupported {
        /// What could not be made ("VLAN sub-interface eth0.10 of eth0", "ipvlan links").
        what: String,
        /// The kernel feature (module) missing: `8021q`, `ipvlan`.
        feature: &'static str,
        /// The kernel's refusal.
        #[source]
        source: SandboxError,
    },
    /// A network or endpoint this driver does not have, or already has.
    #[error(transparent)]
    Lookup(#[from] Lookup),
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] Failed<SandboxError>),
    /// An operation failed and undoing its effects failed too.
    #[error("{source}; cleanup also failed: {}", cnm_types::ErrorList(.cleanup))]
    Cleanup {
        /// The first cause.
        #[source]
        source: Box<MacvlanError>,
        /// Every cleanup failure.
        cleanup: Vec<MacvlanError>,
    },
}

impl MacvlanError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidOption { .. } => ErrorKind::InvalidInput,
            Self::ParentNotFound(_) => ErrorKind::NotFound,
            Self::Lookup(e) => e.kind(),
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::Kernel(e) => e.source.kind(),
            Self::Cleanup { source, .. } => source.kind(),
        }
    }

    /// A failed link creation: `Unsupported` (naming `feature`) when the kernel does not know
    /// the link type, a kernel error otherwise.
    pub(crate) fn create(
        what: impl Into<String>,
        feature: &'static str,
        source: SandboxError,
    ) -> Self {
        let what = what.into();
        if matches!(source, SandboxError::Unsupported { .. }) {
            Self::Unsupported {
                what,
                feature,
                source,
            }
        } else {
            Self::failed("create", what, source)
        }
    }

    /// As the SPI carries it, for the driver `driver`.
    pub(crate) fn into_driver(self, driver: &'static str) -> DriverError {
        DriverError::new(driver, self.kind(), self)
    }
}

impl Cleanup for MacvlanError {
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
        Self::Cleanup {
            source: Box::new(self),
            cleanup,
        }
    }
}
