//! [`DnsError`]: what the resolver's API reports.

use cnm_sandbox::SandboxError;
use cnm_types::{ErrorKind, Failed, Invalid};

/// A failure of the resolver's API. Queries never fail this way: a query that cannot be
/// answered gets a DNS error code (FORMERR, SERVFAIL, REFUSED, …), never a Rust error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// Bad input, rejected before anything changed.
    #[error(transparent)]
    InvalidInput(#[from] Invalid),
    /// The network is not registered with the resolver.
    #[error("network {0} is not registered with the resolver")]
    NetworkNotFound(String),
    /// The endpoint is not registered on that network.
    #[error("endpoint {endpoint} is not registered on network {network}")]
    EndpointNotFound {
        /// The network's id.
        network: String,
        /// The endpoint's id.
        endpoint: String,
    },
    /// The endpoint is already registered on that network.
    #[error("endpoint {endpoint} is already registered on network {network}")]
    EndpointExists {
        /// The network's id.
        network: String,
        /// The endpoint's id.
        endpoint: String,
    },
    /// Work inside a namespace (binding a listener, creating upstream sockets) failed.
    #[error(transparent)]
    Sandbox(#[from] Failed<SandboxError>),
    /// A socket operation failed.
    #[error(transparent)]
    Io(#[from] Failed<std::io::Error>),
    /// systemd-resolved (or the bus) refused a registration call ([`crate::resolved`]).
    #[error("systemd-resolved refused {method} on link {link}: {source}")]
    Resolved {
        /// The `org.freedesktop.resolve1.Manager` method.
        method: &'static str,
        /// The interface index.
        link: u32,
        /// The D-Bus error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DnsError {
    /// The kind of failure, for callers that branch on it (the daemon maps it to a status).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::NetworkNotFound(_) | Self::EndpointNotFound { .. } => ErrorKind::NotFound,
            Self::EndpointExists { .. } => ErrorKind::AlreadyExists,
            Self::Sandbox(e) => e.source.kind(),
            // the listener's address not (yet) in the sandbox is the sandbox's state, not bad
            // input from the caller (the shared table says InvalidInput for EADDRNOTAVAIL)
            Self::Io(e) if e.source.kind() == std::io::ErrorKind::AddrNotAvailable => {
                ErrorKind::Unavailable
            }
            Self::Io(e) => ErrorKind::from_io(&e.source),
            Self::Resolved { .. } => ErrorKind::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::{FailedTo, InvalidTo};

    #[test]
    fn kinds_and_texts_name_the_object() {
        let e = DnsError::invalid("alias", "a b", "only letters");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "invalid alias \"a b\": only letters");
        let e = DnsError::failed(
            "bind DNS listener at",
            "127.0.0.11:53 in netns x",
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        );
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.to_string()
                .starts_with("failed to bind DNS listener at 127.0.0.11:53 in netns x: ")
        );
        assert_eq!(
            DnsError::NetworkNotFound("n1".into()).kind(),
            ErrorKind::NotFound
        );
    }
}
