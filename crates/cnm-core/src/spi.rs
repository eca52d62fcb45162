//! The driver SPI: what a network driver implements and how it registers itself.
//!
//! A driver is found by name through [`inventory`]: each driver crate submits one
//! [`DriverRegistration`], and the controller instantiates every linked driver with a
//! [`DriverContext`] when it is built. Core never names a driver.
//!
//! Life cycle, as libnetwork's: `create_network` → `create_endpoint` (addresses already assigned
//! by IPAM) → `join` (returns a [`JoinInfo`]) → `program_external_connectivity` (published ports,
//! gateway endpoint only) → `revoke_external_connectivity` → `leave` → `delete_endpoint` →
//! `delete_network`. Every method gets ids and typed values, never the controller's objects, so a
//! driver cannot reach into core state.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cnm_sandbox::{NetNs, Netlink};
use cnm_types::{ErrorKind, IfName, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::port::PortBinding;

/// Whether a driver's networks are known to this host only or to a whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// State lives on this host only (bridge, null, host, macvlan).
    #[default]
    Local,
    /// State is shared by every host of a cluster (overlay).
    Global,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Global => "global",
        })
    }
}

/// What a driver can do; asked once when the controller is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capability {
    /// The scope of the driver's networks.
    pub scope: Scope,
    /// Whether the endpoints of this driver get addresses from IPAM (false for `null` and `host`).
    pub needs_addresses: bool,
    /// Whether at most one network of this driver may exist (as `host` and `null` in Docker).
    pub singleton: bool,
    /// Whether the network's subnets are routed in the host namespace (a bridge carries the
    /// gateway address, so the host gets an on-link route for each subnet). The controller then
    /// refuses a subnet that overlaps a network the host is on, unless the network allows it
    /// ([`NetworkOptions::allow_host_overlap`](crate::NetworkOptions::allow_host_overlap)).
    /// False for a driver whose addresses live only in containers (macvlan, ipvlan), where
    /// sharing the host's LAN is the point.
    pub host_routes: bool,
}

impl Capability {
    /// A local-scope driver whose endpoints get IPAM addresses, routed in the host.
    pub fn local() -> Self {
        Self {
            scope: Scope::Local,
            needs_addresses: true,
            singleton: false,
            host_routes: true,
        }
    }

    /// Sets whether the network's subnets are routed in the host namespace.
    pub fn with_host_routes(mut self, host_routes: bool) -> Self {
        self.host_routes = host_routes;
        self
    }

    /// Sets whether endpoints need IPAM addresses.
    pub fn with_addresses(mut self, needs_addresses: bool) -> Self {
        self.needs_addresses = needs_addresses;
        self
    }

    /// Sets whether at most one network of this driver may exist.
    pub fn with_singleton(mut self, singleton: bool) -> Self {
        self.singleton = singleton;
        self
    }

    /// Sets the scope.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }
}

/// Raw `key=value` options as a user gave them (`-o com.docker.network.bridge.name=br0`).
///
/// A driver parses them once, into its own typed options, and rejects unknown keys.
pub type DriverOptions = BTreeMap<String, String>;

/// The error every driver method returns: a kind, the driver's name, and the driver's own typed
/// error as the source (downcast it to get the variant back).
#[derive(Debug, thiserror::Error)]
#[error("{driver} driver: {source}")]
pub struct DriverError {
    kind: ErrorKind,
    driver: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl DriverError {
    /// Wraps a driver's own error.
    pub fn new(
        driver: impl Into<String>,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            driver: driver.into(),
            source: source.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The name of the driver that failed.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The driver's own error, for downcasting.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }
}

/// The host as a driver sees it: the namespace the controller treats as the host (a throwaway one
/// in tests), a netlink handle bound to it, and the controller's directories.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverContext {
    /// The namespace that plays the host.
    pub host_ns: NetNs,
    /// A netlink handle whose socket lives in `host_ns`.
    pub host_netlink: Netlink,
    /// The controller's run dir (sockets, netns bind mounts); a driver may use `run_dir/<driver>/`.
    pub run_dir: PathBuf,
    /// The controller's state dir; a driver may use `state_dir/<driver>/`.
    pub state_dir: PathBuf,
}

impl DriverContext {
    /// Builds a context (the controller does this; tests of a driver may too).
    pub fn new(
        host_ns: NetNs,
        host_netlink: Netlink,
        run_dir: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            host_ns,
            host_netlink,
            run_dir,
            state_dir,
        }
    }
}

/// How a driver is found by name: one `inventory::submit!` per driver crate.
///
/// ```ignore
/// inventory::submit! { DriverRegistration::new("bridge", BridgeDriver::create) }
/// ```
pub struct DriverRegistration {
    /// The driver's name (`bridge`, `null`, …); unique among linked drivers.
    pub name: &'static str,
    /// Builds the driver for one controller.
    pub create: fn(&DriverContext) -> Result<Arc<dyn Driver>, DriverError>,
}

impl DriverRegistration {
    /// A registration, for `inventory::submit!`.
    pub const fn new(
        name: &'static str,
        create: fn(&DriverContext) -> Result<Arc<dyn Driver>, DriverError>,
    ) -> Self {
        Self { name, create }
    }
}

inventory::collect!(DriverRegistration);

/// One address family's IPAM result for a network, as Docker's `IPAMData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamData<N> {
    /// The pool (subnet) of the network.
    pub pool: N,
    /// The gateway address with the pool's prefix length (the bridge's address for `bridge`).
    pub gateway: Option<N>,
    /// Auxiliary addresses reserved for the driver, by name.
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

/// Everything a driver needs to create a network, already validated by the controller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetworkSpec {
    /// The network's 64-hex-character id.
    pub id: String,
    /// The network's user-given name.
    pub name: String,
    /// IPv4 pools (empty for an IPv6-only network, or a driver that needs no addresses).
    pub ipv4: Vec<IpamData<Ipv4Net>>,
    /// IPv6 pools (empty unless IPv6 is enabled).
    pub ipv6: Vec<IpamData<Ipv6Net>>,
    /// Whether IPv6 is enabled on the network.
    pub enable_ipv6: bool,
    /// Whether IPv4 is enabled on the network.
    pub enable_ipv4: bool,
    /// An internal network has no route off its own subnet.
    pub internal: bool,
    /// The driver's own options (already checked by [`Driver::validate_network_options`]).
    pub options: DriverOptions,
    /// User labels.
    pub labels: BTreeMap<String, String>,
}

impl NetworkSpec {
    /// A spec with no pools and no options, to be filled field by field.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            enable_ipv6: false,
            enable_ipv4: true,
            internal: false,
            options: DriverOptions::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// Everything a driver needs to create an endpoint; addresses come from IPAM (or the user).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointSpec {
    /// The network's id.
    pub network_id: String,
    /// The endpoint's 64-hex-character id.
    pub endpoint_id: String,
    /// The endpoint's name.
    pub name: String,
    /// The IPv4 address with its prefix length, if the network has IPv4.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 address with its prefix length, if the network has IPv6.
    pub ipv6: Option<Ipv6Net>,
    /// The MAC the user asked for, if any.
    pub mac: Option<MacAddress>,
    /// The driver's own endpoint options.
    pub options: DriverOptions,
}

/// What a driver chose when creating an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// The MAC the container interface will carry (the driver may pick one when none was asked).
    pub mac: Option<MacAddress>,
}

impl EndpointInfo {
    /// An endpoint with the given MAC.
    pub fn with_mac(mac: Option<MacAddress>) -> Self {
        Self { mac }
    }
}

/// The sandbox an endpoint joins, as a driver sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SandboxRef {
    /// The sandbox's id.
    pub id: String,
    /// The sandbox key: the path of its persisted network namespace.
    pub key: PathBuf,
    /// The sandbox's network namespace.
    pub ns: NetNs,
    /// A netlink handle whose socket lives in the sandbox's namespace.
    pub netlink: Netlink,
}

/// What the controller asks of a driver in `join`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JoinRequest {
    /// The network's id.
    pub network_id: String,
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The sandbox joined.
    pub sandbox: SandboxRef,
    /// The final name of the interface inside the sandbox (`eth0`, `eth1`, … in join order). A
    /// driver that can create the container end directly inside the sandbox must use this name.
    pub ifname: IfName,
    /// The endpoint's IPv4 address, if any.
    pub ipv4: Option<Ipv4Net>,
    /// The endpoint's IPv6 address, if any.
    pub ipv6: Option<Ipv6Net>,
    /// The MAC the interface must carry, if known.
    pub mac: Option<MacAddress>,
    /// Join-time driver options.
    pub options: DriverOptions,
}

/// Where the container's interface comes from after a join.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinedInterface {
    /// The driver created it directly inside the sandbox with [`JoinRequest::ifname`]; the
    /// controller only configures it (the fast path: no move across namespaces).
    InSandbox {
        /// The interface's index inside the sandbox, when the driver knows it (saves a lookup).
        index: Option<u32>,
    },
    /// The driver created it in the host namespace; the controller moves it into the sandbox and
    /// renames it to `ifname` (or to `name_prefix` + N, when the driver asks for its own prefix).
    MoveIn {
        /// The interface's name in the host namespace.
        host_name: IfName,
        /// A name prefix replacing `eth` for this interface, if the driver wants one.
        name_prefix: Option<String>,
    },
    /// No interface: the sandbox keeps loopback only (the `null` driver).
    None,
}

/// A route a driver wants inside the sandbox beyond the default one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// The destination prefix.
    pub destination: IpNet,
    /// The next hop; `None` for an on-link route through the joined interface.
    pub next_hop: Option<IpAddr>,
}

/// What a driver answers to `join`: the interface and how to route through it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JoinInfo {
    /// Where the interface is.
    pub interface: JoinedInterface,
    /// The IPv4 gateway, if this endpoint can be the sandbox's default route.
    pub gateway_v4: Option<Ipv4Addr>,
    /// The IPv6 gateway, if this endpoint can be the sandbox's default route.
    pub gateway_v6: Option<Ipv6Addr>,
    /// Further routes to add inside the sandbox.
    pub static_routes: Vec<StaticRoute>,
    /// When true this endpoint never provides the sandbox's default gateway (internal networks).
    pub disable_gateway_service: bool,
}

impl JoinInfo {
    /// A join with the given interface, no gateway and no routes.
    pub fn new(interface: JoinedInterface) -> Self {
        Self {
            interface,
            gateway_v4: None,
            gateway_v6: None,
            static_routes: Vec::new(),
            disable_gateway_service: false,
        }
    }
}

/// An endpoint handed back to its driver on restart (see [`Driver::restore_network`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestoredEndpoint {
    /// The endpoint as it was created.
    pub spec: EndpointSpec,
    /// The sandbox it is joined to, if any.
    pub joined: Option<RestoredJoin>,
}

/// Where a restored endpoint is joined.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RestoredJoin {
    /// The sandbox (namespace reopened by its key).
    pub sandbox: SandboxRef,
    /// The name the driver was asked to use in the join (`ethN`).
    pub ifname: IfName,
}

impl RestoredEndpoint {
    /// An endpoint, joined to `joined` if given.
    pub fn new(spec: EndpointSpec, joined: Option<RestoredJoin>) -> Self {
        Self { spec, joined }
    }
}

impl RestoredJoin {
    /// A join in `sandbox` under the name `ifname`.
    pub fn new(sandbox: SandboxRef, ifname: IfName) -> Self {
        Self { sandbox, ifname }
    }
}

/// What the controller asks of a driver in `leave`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaveRequest {
    /// The network's id.
    pub network_id: String,
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The sandbox left.
    pub sandbox: SandboxRef,
    /// The interface's name inside the sandbox.
    pub ifname: IfName,
}

/// A network driver.
///
/// Object-safe and async. Required methods are the life cycle every driver has; optional hooks have
/// default bodies. Each call is for one object; the controller serialises calls per object, so a
/// driver needs no lock per endpoint, but must be safe for calls on different objects at once.
#[async_trait]
pub trait Driver: Send + Sync + fmt::Debug {
    /// The driver's registered name.
    fn name(&self) -> &str;

    /// What the driver can do.
    fn capability(&self) -> Capability;

    /// Applies driver-wide options (`configure_network_driver`). The default accepts none.
    async fn configure(&self, options: &DriverOptions) -> Result<(), DriverError> {
        match options.keys().next() {
            None => Ok(()),
            Some(key) => Err(DriverError::new(
                self.name(),
                ErrorKind::InvalidInput,
                format!("unknown driver option {key:?}"),
            )),
        }
    }

    /// Checks network options before anything is allocated or created. The default accepts none.
    fn validate_network_options(&self, options: &DriverOptions) -> Result<(), DriverError> {
        match options.keys().next() {
            None => Ok(()),
            Some(key) => Err(DriverError::new(
                self.name(),
                ErrorKind::InvalidInput,
                format!("unknown network option {key:?}"),
            )),
        }
    }

    /// The keys of `options` this driver does not know. A driver that keeps unknown keys, as
    /// Docker's do (they are stored and shown in inspect, and the driver ignores them), names
    /// them here so the caller can warn; its [`validate_network_options`] accepts them. The
    /// default knows nothing and keeps nothing (its validation refuses every key).
    ///
    /// [`validate_network_options`]: Driver::validate_network_options
    fn unknown_network_options(&self, options: &DriverOptions) -> Vec<String> {
        let _ = options;
        Vec::new()
    }

    /// Creates the network's data plane. On error nothing of it may remain.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError>;

    /// Takes a network back after a restart of the controller, with its endpoints (and where
    /// each is joined), from the controller's records.
    ///
    /// A driver whose data plane survives the restart adopts what exists (a bridge driver finds
    /// its bridge and each joined endpoint's veth), recreates what is missing, and deletes what
    /// of this network no endpoint owns. The default is the create path: `create_network`, then
    /// `create_endpoint` for each endpoint, which suits drivers that keep no kernel state.
    /// Published ports are not part of this: the controller publishes them again for each
    /// sandbox's gateway endpoint afterwards.
    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        self.create_network(spec).await?;
        for ep in endpoints {
            self.create_endpoint(&ep.spec).await?;
        }
        Ok(())
    }

    /// After a restart, once every recorded network was restored: removes what this driver
    /// made for networks that have no record (`keep` lists the ones that do), left behind by
    /// a crash between the driver's work and the record. The default does nothing.
    async fn sweep(&self, keep: &[String]) -> Result<(), DriverError> {
        let _ = keep;
        Ok(())
    }

    /// Removes the network's data plane.
    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError>;

    /// Prepares an endpoint (no kernel object need exist before `join`).
    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError>;

    /// Forgets an endpoint.
    async fn delete_endpoint(&self, network_id: &str, endpoint_id: &str)
    -> Result<(), DriverError>;

    /// Attaches an endpoint to a sandbox. On error nothing of the join may remain.
    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError>;

    /// Detaches an endpoint from a sandbox.
    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError>;

    /// Publishes ports of the sandbox's gateway endpoint; returns the bindings as made (with the
    /// host ports chosen for ephemeral requests). The default supports none.
    async fn program_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
        bindings: &[PortBinding],
    ) -> Result<Vec<PortBinding>, DriverError> {
        let _ = (network_id, endpoint_id);
        if bindings.is_empty() {
            Ok(Vec::new())
        } else {
            Err(DriverError::new(
                self.name(),
                ErrorKind::Unsupported,
                "this driver cannot publish ports",
            ))
        }
    }

    /// Withdraws what `program_external_connectivity` made for an endpoint.
    async fn revoke_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let _ = (network_id, endpoint_id);
        Ok(())
    }
}
