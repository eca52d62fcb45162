//! The one error type of the overlay driver.

use cnm_core::spi::{Conflict, DriverError, Lookup};
use cnm_core::store::StoreError;
use cnm_core::undo::Cleanup;
use cnm_sandbox::SandboxError;
use cnm_types::{ErrorKind, Failed};

/// Everything the overlay driver can fail with; each variant names what was done to which
/// object and keeps the cause as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    /// An option key the overlay driver does not know.
    #[error("unknown overlay network option {key:?}")]
    UnknownOption {
        /// The key as given.
        key: String,
    },
    /// An option (or allocation) with a value that cannot be used.
    #[error("invalid value {value:?} for overlay option {key:?}: {reason}")]
    InvalidOption {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// This host has no advertise address, so no tunnel endpoint.
    #[error(
        "an overlay network needs this host's address on the underlay: start cnmd with \
         --advertise-addr ADDR (ControllerBuilder::advertise_addr)"
    )]
    NoAdvertiseAddr,
    /// The advertise address is on no interface of the host namespace.
    #[error("the advertise address {0} is on no interface of the host namespace")]
    AdvertiseAddrNotFound(std::net::IpAddr),
    /// The VNI the user asked for belongs to another network.
    #[error("VXLAN id {vni} is already taken by network {owner}")]
    VniTaken {
        /// The VNI.
        vni: u32,
        /// The network holding it.
        owner: String,
    },
    /// A network or endpoint this driver does not have.
    #[error(transparent)]
    Lookup(#[from] Lookup),
    /// The operation conflicts with the current state.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] Failed<SandboxError>),
    /// A firewall change failed.
    #[error(transparent)]
    Firewall(Box<Failed<cnm_core::cnm_firewall::FirewallError>>),
    /// The cluster store failed.
    #[error("failed to {op} {key} in the cluster store: {source}")]
    Store {
        /// What was attempted.
        op: &'static str,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A file or device operation failed (the WireGuard key file, the TUN device, the
    /// WireGuard socket).
    #[error("failed to {op} {object}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        object: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// What an encrypted network needs is missing on this host.
    #[error("an encrypted overlay network cannot be set up here: {0}")]
    Unsupported(String),
    /// Core refused a request of the driver (no cluster store, facts).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A failure, and what failed while undoing it.
    #[error("{source} (and while undoing it: {})", list(.cleanup))]
    WithCleanup {
        /// The first failure.
        #[source]
        source: Box<OverlayError>,
        /// What failed while undoing.
        cleanup: Vec<OverlayError>,
    },
}

fn list(errors: &[OverlayError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl OverlayError {
    pub(crate) fn store(op: &'static str, key: impl Into<String>, source: StoreError) -> Self {
        Self::Store {
            op,
            key: key.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, object: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            object: object.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidOption {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownOption { .. } | Self::InvalidOption { .. } => ErrorKind::InvalidInput,
            Self::NoAdvertiseAddr | Self::AdvertiseAddrNotFound(_) => ErrorKind::InvalidInput,
            Self::VniTaken { .. } => ErrorKind::AlreadyExists,
            Self::Lookup(e) => e.kind(),
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Io { .. } => ErrorKind::Internal,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Kernel(e) => e.source.kind(),
            Self::Firewall(e) => e.source.kind(),
            Self::Store { source, .. } => source.kind(),
            Self::Driver(e) => e.kind(),
            Self::WithCleanup { source, .. } => source.kind(),
        }
    }
}

impl From<Failed<cnm_core::cnm_firewall::FirewallError>> for OverlayError {
    fn from(e: Failed<cnm_core::cnm_firewall::FirewallError>) -> Self {
        Self::Firewall(Box::new(e))
    }
}

impl Cleanup for OverlayError {
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
        Self::WithCleanup {
            source: Box::new(self),
            cleanup,
        }
    }
}

impl From<OverlayError> for DriverError {
    fn from(e: OverlayError) -> Self {
        match e {
            OverlayError::Driver(d) => d,
            other => DriverError::new(crate::DRIVER_NAME, other.kind(), other),
        }
    }
}
