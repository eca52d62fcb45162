//! [`CoreError`]: every failure of the controller, its kind, and the causes it wraps.

use std::fmt;

use cnm_ipam::IpamError;
use cnm_sandbox::SandboxError;
use cnm_types::{ErrorKind, Failed};

use crate::spi::DriverError;
use crate::store::StoreError;

/// Everything that can go wrong in the controller.
///
/// Each variant names what was done to which object; causes from the layers below (IPAM, kernel,
/// driver, store) are kept as the `#[source]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A field of the caller's options was refused; nothing was changed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidOption {
        /// The field (or option key) that was refused.
        field: String,
        /// The refused value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// An option key nobody understands.
    #[error("unknown option key {key:?} (value {value:?})")]
    UnknownOption {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// No driver of that name is linked into this program.
    #[error("driver {0:?} not found")]
    DriverNotFound(String),
    /// No IPAM driver of that name is configured.
    #[error("ipam driver {0:?} not found")]
    IpamDriverNotFound(String),
    /// Two linked drivers registered the same name.
    #[error("driver {0:?} is registered twice")]
    DuplicateDriver(String),
    /// A driver registered while running has the name of one the controller has.
    #[error("a driver named {0:?} is registered already")]
    DriverExists(String),
    /// The controller was shut down ([`Controller::shutdown`](crate::Controller::shutdown));
    /// nothing was done.
    #[error("the controller was shut down")]
    Shutdown,
    /// A driver gave an endpoint an address in a family the controller had assigned one in.
    #[error(
        "driver {driver} gave endpoint {endpoint} the address {given}, but it has {assigned} \
         from IPAM"
    )]
    DriverAddress {
        /// The driver.
        driver: String,
        /// The endpoint's name.
        endpoint: String,
        /// What the driver gave.
        given: String,
        /// What IPAM assigned.
        assigned: String,
    },
    /// A network of that name exists (or is being created).
    #[error("network with name {0} already exists")]
    NetworkExists(String),
    /// Only one network of a singleton driver (null, host) may exist.
    #[error("only one instance of {driver:?} network is allowed (network {existing} exists)")]
    SingletonNetwork {
        /// The driver.
        driver: String,
        /// The existing network's name.
        existing: String,
    },
    /// An endpoint of that name exists in the network.
    #[error("endpoint with name {name} already exists in network {network}")]
    EndpointExists {
        /// The network's name.
        network: String,
        /// The endpoint's name.
        name: String,
    },
    /// A sandbox for that container exists.
    #[error("sandbox for container {0} already exists")]
    SandboxExists(String),
    /// No object matches the name, id or id prefix.
    #[error("{what} {key:?} not found")]
    NotFound {
        /// "network", "endpoint", "sandbox".
        what: &'static str,
        /// The name, id or prefix looked up.
        key: String,
    },
    /// An id prefix matches more than one object.
    #[error("{what} {prefix:?} is ambiguous: it matches {}", .matches.join(", "))]
    Ambiguous {
        /// "network", "endpoint", "sandbox".
        what: &'static str,
        /// The prefix.
        prefix: String,
        /// Every match, as `name (id)`.
        matches: Vec<String>,
    },
    /// The network is one a daemon made itself and keeps
    /// ([`KEY_PREDEFINED`](crate::options::KEY_PREDEFINED)).
    #[error("{0} is a pre-defined network and cannot be removed")]
    PredefinedNetwork(String),
    /// A sandbox in the host's namespace and a network that is not the host's stack, or the
    /// other way round.
    #[error("container {container} cannot be connected to network {network}: {reason}")]
    HostNamespace {
        /// The sandbox's container.
        container: String,
        /// The network.
        network: String,
        /// Why not.
        reason: &'static str,
    },
    /// The network still has endpoints.
    #[error("network {network} has active endpoints: {}", .endpoints.join(", "))]
    NetworkInUse {
        /// The network's name.
        network: String,
        /// The endpoints' names.
        endpoints: Vec<String>,
    },
    /// The endpoint is joined to a sandbox already.
    #[error("endpoint {endpoint} is already joined to sandbox {sandbox} (container {container})")]
    AlreadyJoined {
        /// The endpoint's name.
        endpoint: String,
        /// The sandbox's short id.
        sandbox: String,
        /// The sandbox's container id.
        container: String,
    },
    /// The endpoint is not joined to the sandbox named.
    #[error("endpoint {endpoint} is not joined to sandbox {sandbox}")]
    NotJoined {
        /// The endpoint's name.
        endpoint: String,
        /// The sandbox's short id (or container id).
        sandbox: String,
    },
    /// The sandbox has no endpoint on the network.
    #[error("container {container} is not connected to network {network}")]
    NotConnected {
        /// The sandbox's container id.
        container: String,
        /// The network's name.
        network: String,
    },
    /// The endpoint cannot be deleted while joined.
    #[error("endpoint {endpoint} is still joined to sandbox {sandbox}; leave first")]
    EndpointInUse {
        /// The endpoint's name.
        endpoint: String,
        /// The sandbox's short id.
        sandbox: String,
    },
    /// A subnet overlaps an address or a route the host already has (outside cnm's own
    /// networks); nothing was changed.
    #[error(
        "subnet {subnet} overlaps {host}: a network there would take it away from the host; \
         choose another subnet, or allow the overlap for this network with option \
         {}=true (cnm network create --allow-host-overlap)",
        crate::options::KEY_ALLOW_HOST_OVERLAP
    )]
    HostOverlap {
        /// The subnet asked for.
        subnet: ipnet::IpNet,
        /// What of the host it overlaps: `10.0.0.0/24 on eth1 (route)`.
        host: String,
    },
    /// Another endpoint of the network has this MAC address; nothing was changed.
    #[error("MAC address {mac} is already used by endpoint {endpoint} on network {network}")]
    MacAddressInUse {
        /// The MAC.
        mac: cnm_types::MacAddress,
        /// The network's name.
        network: String,
        /// The endpoint holding it.
        endpoint: String,
    },
    /// The interface name asked for (`com.docker.network.endpoint.ifname`) is another
    /// interface's in the sandbox; nothing was changed.
    #[error("interface name {name} is already in use in sandbox {sandbox}")]
    InterfaceNameInUse {
        /// The name.
        name: String,
        /// The sandbox's short id.
        sandbox: String,
    },
    /// Ports were given for an endpoint whose join does not make it its sandbox's gateway
    /// endpoint: published ports follow the default route, so they would not be published;
    /// nothing was changed.
    #[error(
        "cannot publish ports {} of endpoint {endpoint} on network {network}: {reason}",
        .ports.join(", ")
    )]
    PortsNotPublishable {
        /// The endpoint's name.
        endpoint: String,
        /// Its network's name.
        network: String,
        /// The ports, as given.
        ports: Vec<String>,
        /// The endpoint that provides (and keeps) the sandbox's default route, when another one
        /// does; `None` when this endpoint can never provide it.
        gateway: Option<String>,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A global-scope network needs a cluster store, and the controller has none
    /// ([`ControllerBuilder::cluster_store`](crate::ControllerBuilder::cluster_store)).
    #[error(
        "network {network}: driver {driver} has global scope and needs a cluster store, which this \
         host has not joined (cnmd --cluster-store etcd://HOST:PORT, or \
         ControllerBuilder::cluster_store)"
    )]
    NoClusterStore {
        /// The network's name.
        network: String,
        /// The driver's name.
        driver: String,
    },
    /// A global-scope network needs the cluster store, which is configured but has not been
    /// reached yet ([`ControllerBuilder::cluster_store_awaited`](crate::ControllerBuilder::cluster_store_awaited)):
    /// the request may succeed once it is
    /// ([`Controller::attach_cluster_store`](crate::Controller::attach_cluster_store)).
    #[error(
        "network {network}: driver {driver} has global scope and needs the cluster store \
         {store}, which is not reachable yet (this host keeps trying and joins it as soon as \
         it answers)"
    )]
    ClusterStoreUnreachable {
        /// The network's name.
        network: String,
        /// The driver's name.
        driver: String,
        /// The store's address, as configured.
        store: String,
    },
    /// The object was deleted while this handle was held.
    #[error("{what} {name} was deleted")]
    Deleted {
        /// "network", "endpoint", "sandbox".
        what: &'static str,
        /// Its name or short id.
        name: String,
    },
    /// A driver failed.
    #[error(transparent)]
    Driver(#[from] Failed<DriverError>),
    /// IPAM failed (pool overlap, address taken, address outside the pool, pool exhausted, …).
    #[error(transparent)]
    Ipam(#[from] Failed<IpamError>),
    /// The kernel layer failed.
    #[error(transparent)]
    Sandbox(#[from] Failed<SandboxError>),
    /// The host namespace's firewall failed (see [`crate::spi::DriverContext::firewall`]).
    #[error("failed to {op}: {source}")]
    Firewall {
        /// What was being done.
        op: &'static str,
        /// The firewall's error.
        #[source]
        source: cnm_firewall::FirewallError,
    },
    /// The embedded DNS resolver failed (see [`crate::ControllerBuilder::embedded_dns`]).
    #[error("failed to {op} {object}: {source}")]
    Dns {
        /// What was being done.
        op: &'static str,
        /// To what.
        object: String,
        /// The resolver's error (boxed: it is large, and rare).
        #[source]
        source: Box<cnm_dns::DnsError>,
    },
    /// The store failed (the object is the key).
    #[error(transparent)]
    Store(#[from] Failed<StoreError>),
    /// A record could not be encoded or decoded.
    #[error("failed to {op} record {key}: {source}")]
    Record {
        /// "encode" or "decode".
        op: &'static str,
        /// The record's key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// A file operation failed (the object is the path).
    #[error(transparent)]
    Io(#[from] Failed<std::io::Error>),
    /// The task running an operation died (a panic in a driver, or the runtime shut down).
    #[error("operation {op} on {object} did not complete: {reason}")]
    Aborted {
        /// What was being done.
        op: &'static str,
        /// To which object.
        object: String,
        /// Why.
        reason: String,
    },
    /// An operation failed and undoing its partial effects failed too: the first cause is the
    /// source, every cleanup error is listed.
    #[error("{source}; cleanup also failed: {}", cnm_types::ErrorList(.cleanup))]
    Cleanup {
        /// The first error, which made the operation fail.
        #[source]
        source: Box<CoreError>,
        /// Every error met while undoing.
        cleanup: Vec<CoreError>,
    },
}

impl CoreError {
    /// The kind of failure, independent of the variant.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidOption { .. } | Self::UnknownOption { .. } | Self::Ambiguous { .. } => {
                ErrorKind::InvalidInput
            }
            Self::DriverNotFound(_) | Self::IpamDriverNotFound(_) | Self::NotFound { .. } => {
                ErrorKind::NotFound
            }
            Self::Deleted { .. } => ErrorKind::NotFound,
            Self::NoClusterStore { .. } => ErrorKind::Unsupported,
            Self::ClusterStoreUnreachable { .. } => ErrorKind::Unavailable,
            Self::DuplicateDriver(_) | Self::DriverAddress { .. } => ErrorKind::Internal,
            Self::DriverExists(_) => ErrorKind::AlreadyExists,
            Self::Shutdown => ErrorKind::Unavailable,
            Self::NetworkExists(_) | Self::EndpointExists { .. } | Self::SandboxExists(_) => {
                ErrorKind::AlreadyExists
            }
            Self::SingletonNetwork { .. }
            | Self::PredefinedNetwork(_)
            | Self::HostNamespace { .. }
            | Self::NetworkInUse { .. }
            | Self::AlreadyJoined { .. }
            | Self::NotJoined { .. }
            | Self::NotConnected { .. }
            | Self::EndpointInUse { .. }
            | Self::HostOverlap { .. }
            | Self::MacAddressInUse { .. }
            | Self::InterfaceNameInUse { .. } => ErrorKind::Conflict,
            Self::PortsNotPublishable { gateway, .. } => match gateway {
                Some(_) => ErrorKind::Conflict,
                None => ErrorKind::InvalidInput,
            },
            Self::Driver(e) => e.source.kind(),
            Self::Ipam(e) => e.source.kind(),
            Self::Sandbox(e) => e.source.kind(),
            Self::Store(e) => e.source.kind(),
            Self::Firewall { source, .. } => source.kind(),
            Self::Dns { source, .. } => source.kind(),
            Self::Record { .. } | Self::Aborted { .. } => ErrorKind::Internal,
            Self::Io(e) => ErrorKind::from_io(&e.source),
            Self::Cleanup { source, .. } => source.kind(),
        }
    }

    /// The error that made the operation fail, looking through [`CoreError::Cleanup`].
    pub fn primary(&self) -> &CoreError {
        match self {
            Self::Cleanup { source, .. } => source.primary(),
            other => other,
        }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidOption {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
