//! The one error type of the bridge driver.

use std::io;

use cnm_core::spi::{Conflict, DriverError, Lookup};
use cnm_core::undo::Cleanup;
use cnm_types::{ErrorKind, Failed, Invalid};

#[cfg(feature = "test-hooks")]
use crate::fault::FaultPoint;

/// Everything the bridge driver can fail with.
///
/// Each variant names what was done to which object and keeps the cause as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// An option key the bridge driver does not know.
    #[error("unknown bridge network option {key:?}")]
    UnknownOption {
        /// The key as given.
        key: String,
    },
    /// An option with a value that cannot be used.
    #[error("invalid value {value:?} for bridge option {key:?}: {reason}")]
    InvalidOption {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// Network or endpoint input that cannot be used (addresses, names, ports).
    #[error(transparent)]
    InvalidInput(#[from] Invalid),
    /// The bridge name is already taken by a link that is not ours (or by another network).
    #[error("bridge name {name:?} is already in use by {owner}")]
    BridgeNameInUse {
        /// The bridge name.
        name: String,
        /// Who holds it ("an existing link", "network 3f2a…").
        owner: String,
    },
    /// A network or endpoint this driver does not have, or already has.
    #[error(transparent)]
    Lookup(#[from] Lookup),
    /// The operation conflicts with the current state (still has endpoints, already joined, …).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// A host port is taken by someone else.
    #[error("host port {port}/{proto} on {host_ip} is already in use")]
    PortInUse {
        /// The port.
        port: u16,
        /// `tcp`, `udp` or `sctp`.
        proto: String,
        /// The host address the port was asked on.
        host_ip: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// No free host port (or block of ports) in the ephemeral range.
    #[error("no free host port block of {count} {proto} port(s) on {host_ip} in {low}-{high}")]
    NoFreePort {
        /// How many consecutive ports were asked for.
        count: u32,
        /// The protocol.
        proto: String,
        /// The host address.
        host_ip: String,
        /// The ephemeral range's first port.
        low: u16,
        /// The ephemeral range's last port.
        high: u16,
    },
    /// A socket operation for a host port reservation failed for another reason.
    #[error("failed to {op} host port {port}/{proto} on {host_ip}: {source}")]
    PortSocket {
        /// What was done (`open socket for`, `bind`).
        op: &'static str,
        /// The port.
        port: u16,
        /// The protocol.
        proto: String,
        /// The host address.
        host_ip: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the driver's files in the run dir failed.
    #[error("failed to {op} {path}: {source}")]
    RunDir {
        /// What was done.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the host's ephemeral port range failed.
    #[error("failed to read the host's ip_local_port_range: {0}")]
    PortRange(#[source] io::Error),
    /// A kernel operation through cnm-sandbox failed.
    #[error(transparent)]
    Kernel(#[from] Failed<cnm_sandbox::SandboxError>),
    /// A firewall transaction failed.
    #[error("failed to {op} for {object}: {source}")]
    Firewall {
        /// What was done.
        op: &'static str,
        /// For what.
        object: String,
        /// The firewall's kind of failure.
        kind: ErrorKind,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A failure forced by a test through the fault injection hook.
    #[cfg(feature = "test-hooks")]
    #[error("injected failure at {0}")]
    Injected(FaultPoint),
    /// An operation failed and undoing its partial effects failed too.
    #[error("{primary}; cleanup also failed: {}", cnm_types::ErrorList(cleanup))]
    WithCleanup {
        /// The first error, which decides the kind.
        #[source]
        primary: Box<BridgeError>,
        /// Every cleanup error, in the order they happened.
        cleanup: Vec<BridgeError>,
    },
}

impl BridgeError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownOption { .. } | Self::InvalidOption { .. } | Self::InvalidInput(_) => {
                ErrorKind::InvalidInput
            }
            Self::BridgeNameInUse { .. } | Self::Conflict(_) | Self::PortInUse { .. } => {
                ErrorKind::Conflict
            }
            Self::Lookup(e) => e.kind(),
            Self::NoFreePort { .. } => ErrorKind::Unavailable,
            Self::PortSocket { source, .. } => ErrorKind::from_io(source),
            Self::PortRange(_) | Self::RunDir { .. } => ErrorKind::Internal,
            #[cfg(feature = "test-hooks")]
            Self::Injected(_) => ErrorKind::Internal,
            Self::Kernel(e) => e.source.kind(),
            Self::Firewall { kind, .. } => *kind,
            Self::WithCleanup { primary, .. } => primary.kind(),
        }
    }

    pub(crate) fn firewall(
        op: &'static str,
        object: impl Into<String>,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::Firewall {
            op,
            object: object.into(),
            kind,
            source: source.into(),
        }
    }
}

impl Cleanup for BridgeError {
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
        Self::WithCleanup {
            primary: Box::new(self),
            cleanup,
        }
    }
}

impl From<BridgeError> for DriverError {
    fn from(e: BridgeError) -> Self {
        DriverError::new(crate::DRIVER_NAME, e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_in_use_names_port_proto_and_address() {
        let e = BridgeError::PortInUse {
            port: 8080,
            proto: "tcp".into(),
            host_ip: "0.0.0.0".into(),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        assert!(
            e.to_string()
                .starts_with("host port 8080/tcp on 0.0.0.0 is already in use"),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn cleanup_errors_are_listed_and_primary_decides_kind() {
        let e = BridgeError::UnknownOption { key: "x".into() }
            .with_cleanup(vec![Lookup::NetworkNotFound("n1".into()).into()]);
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let text = e.to_string();
        assert!(
            text.contains("\"x\"") && text.contains("cleanup also failed: network n1"),
            "{text}"
        );
        let plain = BridgeError::from(Lookup::NetworkNotFound("n".into())).with_cleanup(Vec::new());
        assert!(matches!(
            plain,
            BridgeError::Lookup(Lookup::NetworkNotFound(_))
        ));
    }

    #[test]
    fn converts_to_driver_error_with_kind() {
        let d: DriverError = BridgeError::UnknownOption { key: "k".into() }.into();
        assert_eq!(d.kind(), ErrorKind::InvalidInput);
        assert_eq!(d.driver(), "bridge");
        assert!(d.inner().downcast_ref::<BridgeError>().is_some());
    }
}
