//! The lookups every driver that keeps its own networks and endpoints makes, and the errors
//! such a driver shares: a network or endpoint missing or already there, a conflict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cnm_types::ErrorKind;

use crate::sync::lock;

/// A network or endpoint that a driver does not have, or already has.
///
/// A driver's own error type carries it as one variant (`Lookup(#[from] Lookup)`), so that
/// every driver words these failures, and maps them to a kind, the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Lookup {
    /// A network id that the driver does not know.
    #[error("network {0} not found")]
    NetworkNotFound(String),
    /// A network id that the driver already has.
    #[error("network {0} already exists")]
    NetworkExists(String),
    /// An endpoint id that the driver does not know.
    #[error("endpoint {endpoint} not found on network {network}")]
    EndpointNotFound {
        /// The network id.
        network: String,
        /// The endpoint id.
        endpoint: String,
    },
    /// An endpoint id that the driver already has.
    #[error("endpoint {endpoint} already exists on network {network}")]
    EndpointExists {
        /// The network id.
        network: String,
        /// The endpoint id.
        endpoint: String,
    },
}

impl Lookup {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NetworkNotFound(_) | Self::EndpointNotFound { .. } => ErrorKind::NotFound,
            Self::NetworkExists(_) | Self::EndpointExists { .. } => ErrorKind::AlreadyExists,
        }
    }

    /// An endpoint that network `network` does not have.
    pub fn endpoint_not_found(network: &str, endpoint: &str) -> Self {
        Self::EndpointNotFound {
            network: network.to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }

    /// An endpoint that network `network` already has.
    pub fn endpoint_exists(network: &str, endpoint: &str) -> Self {
        Self::EndpointExists {
            network: network.to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }
}

/// A driver's networks by id, each network keeping its endpoints by id.
pub type Networks<N> = Mutex<HashMap<String, Arc<N>>>;

/// A network a driver keeps, with its endpoints by id.
pub trait HasEndpoints {
    /// The driver's endpoint.
    type Endpoint;

    /// The network's endpoints by id.
    fn endpoints(&self) -> &Mutex<HashMap<String, Arc<Self::Endpoint>>>;
}

/// The network `id` of `networks`.
pub fn find_network<N>(networks: &Networks<N>, id: &str) -> Result<Arc<N>, Lookup> {
    lock(networks)
        .get(id)
        .cloned()
        .ok_or_else(|| Lookup::NetworkNotFound(id.to_owned()))
}

/// The endpoint `endpoint_id` of the network `network_id` of `networks`, with its network.
pub fn find_endpoint<N: HasEndpoints>(
    networks: &Networks<N>,
    network_id: &str,
    endpoint_id: &str,
) -> Result<(Arc<N>, Arc<N::Endpoint>), Lookup> {
    let net = find_network(networks, network_id)?;
    let ep = lock(net.endpoints())
        .get(endpoint_id)
        .cloned()
        .ok_or_else(|| Lookup::endpoint_not_found(network_id, endpoint_id))?;
    Ok((net, ep))
}

/// An operation that conflicts with what a driver has now (a network that still has endpoints,
/// an endpoint already joined, a link that vanished under it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} {object}: {reason}")]
pub struct Conflict {
    /// What was attempted.
    pub op: &'static str,
    /// On what.
    pub object: String,
    /// Why not.
    pub reason: String,
}

impl Conflict {
    /// A conflict: `op` cannot be done on `object` because of `reason`.
    pub fn new(op: &'static str, object: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            op,
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// `op` cannot be done on `object`, a link this driver had just created: it is gone again
    /// (deleted by someone else between the create and the look-up).
    pub fn vanished(op: &'static str, object: impl Into<String>) -> Self {
        Self::new(op, object, "it vanished right after it was created")
    }
}
