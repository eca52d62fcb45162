//! The driver SPI: what a network driver implements and how it registers itself.
//!
//! A driver is found by name: a built-in one through [`inventory`] (each driver crate submits one
//! [`DriverRegistration`], see [`register_driver!`](crate::register_driver)), one discovered
//! while running through [`ControllerBuilder::driver`](crate::ControllerBuilder::driver) or
//! [`Controller::register_driver`](crate::Controller::register_driver). The controller
//! instantiates each with a [`DriverContext`]. Core never names a driver, nor any driver's option
//! keys: a driver parses its own options once ([`Driver::parse_network_options`],
//! [`Driver::parse_endpoint_options`]) into a value core keeps opaque ([`ParsedOptions`]) and
//! hands back with every call about that network or endpoint.
//!
//! Life cycle, as libnetwork's: `create_network` → `create_endpoint` (addresses already assigned
//! by IPAM) → `join` (returns a [`JoinInfo`]) → `program_external_connectivity` (published ports,
//! gateway endpoint only) → `revoke_external_connectivity` → `leave` → `delete_endpoint` →
//! `delete_network`. Every method gets ids and typed values, never the controller's objects, so a
//! driver cannot reach into core state.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cnm_sandbox::{NetNs, Netlink};
use cnm_types::{ErrorKind, IfName, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::port::PortBinding;
use crate::store::{MemoryStore, ScopedStore, Store};

pub use crate::facts::{Fact, FactEvent, FactWatch, Facts};
pub use crate::lookup::{Conflict, HasEndpoints, Lookup, Networks, find_endpoint, find_network};

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
    /// Whether the driver's networks have no gateway (a point-to-point link, a routed overlay
    /// that routes elsewhere): IPAM then reserves no gateway address in their pools, and a
    /// gateway asked for is refused.
    pub no_gateway: bool,
    /// Whether the driver's networks get a gateway only where the user names one (macvlan,
    /// ipvlan: the gateway is a router on the parent's LAN, not an address cnm owns, so IPAM
    /// reserves none by itself and an endpoint without one gets no default route).
    pub gateway_on_request: bool,
    /// Whether the driver's endpoints are the host's own stack (`host`): a sandbox that joins
    /// one is the namespace the controller treats as the host, made so when the join creates
    /// it (libnetwork's default sandbox), and it joins no other network; a sandbox with a
    /// namespace of its own cannot join one.
    pub host_namespace: bool,
}

impl Capability {
    /// A local-scope driver whose endpoints get IPAM addresses, routed in the host.
    pub fn local() -> Self {
        Self {
            scope: Scope::Local,
            needs_addresses: true,
            singleton: false,
            host_routes: true,
            no_gateway: false,
            gateway_on_request: false,
            host_namespace: false,
        }
    }

    cnm_types::setters! {
        /// Sets whether the driver's endpoints are the host's own stack.
        pub fn with_host_namespace(host: bool) => host_namespace = host;
        /// Sets whether a gateway is reserved only where the user names one.
        pub fn with_gateway_on_request(on_request: bool) => gateway_on_request = on_request;
        /// Sets whether the driver's networks have a gateway (true by default).
        pub fn with_gateway(gateway: bool) => no_gateway = !gateway;
        /// Sets whether the network's subnets are routed in the host namespace.
        pub fn with_host_routes(host_routes: bool) => host_routes = host_routes;
        /// Sets whether endpoints need IPAM addresses.
        pub fn with_addresses(needs_addresses: bool) => needs_addresses = needs_addresses;
        /// Sets whether at most one network of this driver may exist.
        pub fn with_singleton(singleton: bool) => singleton = singleton;
        /// Sets the scope.
        pub fn with_scope(scope: Scope) => scope = scope;
    }
}

/// Raw `key=value` options as a user gave them (`-o com.docker.network.bridge.name=br0`).
///
/// A driver parses them once, into its own typed options, and rejects unknown keys.
pub type DriverOptions = BTreeMap<String, String>;

/// A driver's options as the driver parsed them ([`Driver::parse_network_options`],
/// [`Driver::parse_endpoint_options`]): core keeps the value opaque and hands it back with every
/// call about that network or endpoint, so a driver parses each object's options once. Cheap to
/// clone.
///
/// ```
/// use cnm_core::spi::ParsedOptions;
///
/// #[derive(Debug, PartialEq)]
/// struct MyOptions { mtu: u32 }
/// let parsed = ParsedOptions::new(MyOptions { mtu: 1400 });
/// assert_eq!(parsed.get::<MyOptions>(), Some(&MyOptions { mtu: 1400 }));
/// assert_eq!(parsed.get::<String>(), None);
/// assert!(ParsedOptions::none().is_none());
/// ```
#[derive(Clone, Default)]
pub struct ParsedOptions(Option<Arc<dyn Any + Send + Sync>>);

impl ParsedOptions {
    /// Wraps a driver's parsed options.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Some(Arc::new(value)))
    }

    /// No options (what the default parse steps return).
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether there are none.
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|v| v.downcast_ref::<T>())
    }
}

impl fmt::Debug for ParsedOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ParsedOptions(..)"
        } else {
            "ParsedOptions(none)"
        })
    }
}

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
/// in tests), a netlink handle bound to it, the controller's directories, the host
/// namespace's one firewall, and the driver's own corner of the stores.
///
/// Non-exhaustive and built by the controller: what a driver gets from its host grows here
/// without breaking drivers. The controller gives each driver its own copy, bound to the
/// driver's name ([`DriverContext::for_driver`]).
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
    /// The firewall of `host_ns` (see [`DriverContext::firewall`]).
    firewall: cnm_firewall::Firewall,
    /// The driver's name ("" until [`DriverContext::for_driver`]).
    driver: String,
    /// This host's id, until the controller has a cluster store (then the cluster's says).
    host_id: String,
    /// The controller's own store.
    local_store: Arc<dyn Store>,
    /// The store shared by every host, once the controller has one: shared by every copy of
    /// the controller's context, so a store attached after the drivers were made
    /// ([`crate::Controller::attach_cluster_store`]) reaches them all.
    cluster: Arc<OnceLock<ClusterHandle>>,
    /// This host's address on the underlay, as other hosts reach it.
    advertise_addr: Option<IpAddr>,
    /// The TTL of the lease a driver's facts live under.
    lease_ttl: Duration,
    /// That lease, shared by every [`Facts`] of the driver this context is bound to; made on
    /// first use, once there is a cluster store.
    facts_lease: Arc<OnceLock<Arc<crate::facts::HostLease>>>,
    /// Host-wide settings of drivers, by `<driver>.<key>` (see [`DriverContext::setting`]).
    settings: Arc<std::collections::BTreeMap<String, String>>,
}

/// The cluster store and this host's id in it.
#[derive(Debug)]
struct ClusterHandle {
    store: Arc<dyn Store>,
    host_id: String,
}

/// The default TTL of a host's facts lease: a dead host's facts go within it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

impl DriverContext {
    /// Builds a context (the controller does this; tests of a driver may too). It gets a
    /// firewall of its own for `host_ns`, opened on first use, and an in-memory local store
    /// and no cluster store; the controller gives every driver its one firewall and its
    /// stores instead ([`DriverContext::with_firewall`], [`DriverContext::with_stores`]).
    pub fn new(
        host_ns: NetNs,
        host_netlink: Netlink,
        run_dir: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        let firewall = cnm_firewall::Firewall::lazy(&host_ns, false);
        Self {
            host_ns,
            host_netlink,
            run_dir,
            state_dir,
            firewall,
            driver: String::new(),
            host_id: String::new(),
            local_store: Arc::new(MemoryStore::new()),
            cluster: Arc::new(OnceLock::new()),
            advertise_addr: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            facts_lease: Arc::new(OnceLock::new()),
            settings: Arc::default(),
        }
    }

    /// Host-wide settings of drivers (`ControllerBuilder::driver_setting`), each keyed
    /// `<driver>.<key>`: what is not a network's option but the host's (the overlay's
    /// WireGuard port).
    pub fn with_settings(mut self, settings: std::collections::BTreeMap<String, String>) -> Self {
        self.settings = Arc::new(settings);
        self
    }

    /// The host-wide setting `key` of the driver this context is bound to, if one was given.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .get(&format!("{}.{key}", self.driver))
            .map(String::as_str)
    }

    /// This host's place in the cluster: the address other hosts reach it at on the underlay
    /// (`--advertise-addr`; an overlay's VTEP), and the TTL of the lease its facts live under
    /// (default [`DEFAULT_LEASE_TTL`]).
    pub fn with_cluster(mut self, advertise_addr: Option<IpAddr>, lease_ttl: Duration) -> Self {
        self.advertise_addr = advertise_addr;
        self.lease_ttl = lease_ttl;
        self
    }

    /// This host's address on the underlay, as the other hosts of the cluster reach it
    /// (`ControllerBuilder::advertise_addr`), if one was given.
    pub fn advertise_addr(&self) -> Option<IpAddr> {
        self.advertise_addr
    }

    /// The TTL of the lease this host's facts live under.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Uses `firewall` as the host namespace's firewall (there must be one per namespace).
    pub fn with_firewall(mut self, firewall: cnm_firewall::Firewall) -> Self {
        self.firewall = firewall;
        self
    }

    /// Uses these stores: the controller's own (`local`), the one every host of the cluster
    /// shares (`cluster`, if any), and this host's id in the cluster.
    pub fn with_stores(
        mut self,
        local: Arc<dyn Store>,
        cluster: Option<Arc<dyn Store>>,
        host_id: impl Into<String>,
    ) -> Self {
        self.local_store = local;
        self.host_id = host_id.into();
        self.cluster = Arc::new(OnceLock::new());
        if let Some(store) = cluster {
            self.attach_cluster(store, self.host_id.clone());
        }
        self
    }

    /// Gives this context, and every copy of it (every driver's), the cluster store and this
    /// host's id in it. False, changing nothing, when it has one already.
    pub(crate) fn attach_cluster(&self, store: Arc<dyn Store>, host_id: String) -> bool {
        self.cluster.set(ClusterHandle { store, host_id }).is_ok()
    }

    /// The same context bound to the driver called `name`: its store handles are confined to
    /// `driver/<name>/`.
    pub fn for_driver(&self, name: &str) -> Self {
        Self {
            driver: name.to_owned(),
            facts_lease: Arc::new(OnceLock::new()),
            ..self.clone()
        }
    }

    /// The name of the driver this context is bound to ("" when unbound).
    pub fn driver_name(&self) -> &str {
        &self.driver
    }

    /// This host's id in the cluster (stable across restarts: kept in the local store), as
    /// facts carry it ([`Fact::host`]). Without a cluster store, an id for this run.
    pub fn host_id(&self) -> &str {
        self.cluster.get().map_or(&self.host_id, |c| &c.host_id)
    }

    /// Whether the controller has a cluster store (global-scope networks need one).
    pub fn has_cluster_store(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// The driver's store handle for networks of `scope`: the controller's own store for
    /// [`Scope::Local`], the cluster store for [`Scope::Global`], either seen through the
    /// prefix `driver/<name>/` (see [`ScopedStore`]: the driver cannot reach outside it). Versioned
    /// compare-and-swap, transactions and watches are the store's own, so a global driver
    /// allocates cluster-wide (a VNI) with one `Expect::Absent` put.
    ///
    /// Refused (`Unsupported`) for [`Scope::Global`] when the controller has no cluster store,
    /// and (`InvalidInput`) on a context not bound to a driver.
    pub fn store(&self, scope: Scope) -> Result<ScopedStore, DriverError> {
        if self.driver.is_empty() {
            return Err(DriverError::new(
                "unbound",
                ErrorKind::InvalidInput,
                "this driver context is not bound to a driver (DriverContext::for_driver)",
            ));
        }
        let store = match scope {
            Scope::Local => self.local_store.clone(),
            Scope::Global => self.cluster.get().map(|c| c.store.clone()).ok_or_else(|| {
                DriverError::new(
                    &self.driver,
                    ErrorKind::Unsupported,
                    "the controller has no cluster store (ControllerBuilder::cluster_store)",
                )
            })?,
        };
        ScopedStore::new(store, driver_prefix(&self.driver))
            .map_err(|e| DriverError::new(&self.driver, e.kind(), e))
    }

    /// The driver's per-endpoint facts, shared with every host through the cluster store
    /// (see [`Facts`]), under one lease of this host per driver context. Refused
    /// (`Unsupported`) without a cluster store.
    pub fn facts(&self) -> Result<Facts, DriverError> {
        let store = self.store(Scope::Global)?;
        let lease = self.facts_lease.get_or_init(|| {
            let raw = self.cluster.get().map(|c| c.store.clone());
            crate::facts::HostLease::new(raw, Some(store.clone()), self.lease_ttl)
        });
        Ok(Facts::new(store, self.host_id().to_owned(), lease.clone()))
    }

    /// The host namespace's one firewall, shared by every driver of the controller. A driver
    /// that needs rules declares its own fragment in it
    /// ([`cnm_firewall::Firewall::fragment`], owner = the driver's name) and changes only that
    /// (the bridge driver uses the built-in bridge fragment), so no driver's transaction ever
    /// rewrites another's rules. Opened on first use: a controller whose drivers put no rules
    /// in it installs no table. During the controller's reload it is loading: changes fill its
    /// model, and the controller commits every driver's rules in one transaction at the end
    /// ([`cnm_firewall::Firewall::after_loading`] runs what must wait for that).
    pub fn firewall(&self) -> &cnm_firewall::Firewall {
        &self.firewall
    }
}

/// The prefix of a driver's keys in either store.
pub(crate) fn driver_prefix(driver: &str) -> String {
    format!("driver/{driver}/")
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

/// Builds a driver for one controller: what [`ControllerBuilder::driver`](crate::ControllerBuilder::driver)
/// and [`Controller::register_driver`](crate::Controller::register_driver) take for a driver
/// discovered while running.
pub type DriverFactory =
    Box<dyn FnOnce(&DriverContext) -> Result<Arc<dyn Driver>, DriverError> + Send + 'static>;

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
    /// The driver's own options as the user gave them (generic labels core owns, such as the
    /// MTU, are left out: their typed values are fields here).
    pub options: DriverOptions,
    /// The same options as [`Driver::parse_network_options`] parsed them.
    pub parsed: ParsedOptions,
    /// The MTU of the network's interfaces, from Docker's generic label
    /// `com.docker.network.driver.mtu`, validated by the controller against the network's
    /// families.
    pub mtu: Option<u32>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// The network's scope (the driver's): a global network is known to every host of the
    /// cluster, and each host's driver gets this same spec.
    pub scope: Scope,
    /// What [`Driver::allocate_network`] returned when the network was created (once for the
    /// whole cluster): the same on every host, and on restore.
    pub allocation: DriverOptions,
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
            parsed: ParsedOptions::none(),
            mtu: None,
            labels: BTreeMap::new(),
            scope: Scope::Local,
            allocation: DriverOptions::new(),
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
    /// The driver's own endpoint options, as the user gave them.
    pub options: DriverOptions,
    /// The same options as [`Driver::parse_endpoint_options`] parsed them.
    pub parsed: ParsedOptions,
}

impl EndpointSpec {
    /// The MAC of an endpoint that `driver` plugs into an L2 segment it owns (bridge, overlay):
    /// the one asked for, which must be unicast and non-zero, else a random locally
    /// administered one. Refuses an endpoint without an IPv4 or IPv6 address, which nothing
    /// on such a segment could reach. Checks only: nothing is changed.
    pub fn segment_mac(&self, driver: &str) -> Result<MacAddress, DriverError> {
        let invalid = |field: &str, value: &str, reason: String| {
            DriverError::new(
                driver,
                ErrorKind::InvalidInput,
                format!("invalid {field} {value:?}: {reason}"),
            )
        };
        if let Some(mac) = self
            .mac
            .filter(|m| m.is_multicast() || m.octets() == [0; 6])
        {
            let reason = "must be a unicast, non-zero address".to_owned();
            return Err(invalid("MAC address", &mac.to_string(), reason));
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            let reason = format!("a {driver} endpoint needs an IPv4 or IPv6 address");
            return Err(invalid("endpoint", &self.name, reason));
        }
        Ok(self.mac.unwrap_or_else(MacAddress::random_local))
    }
}

/// What a driver chose when creating an endpoint.
///
/// A driver may give addresses (a remote plugin does): the controller then uses them instead of
/// what IPAM assigned (releasing that), and reserves them in IPAM when they lie in one of the
/// network's pools. A static address the user asked for is not the driver's to change: another
/// one is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointInfo {
    /// The MAC the container interface will carry (the driver may pick one when none was asked).
    pub mac: Option<MacAddress>,
    /// The IPv4 address the driver gave the endpoint, with its prefix length.
    pub ipv4: Option<Ipv4Net>,
    /// The IPv6 address the driver gave the endpoint, with its prefix length.
    pub ipv6: Option<Ipv6Net>,
}

impl EndpointInfo {
    /// An endpoint with the given MAC.
    pub fn with_mac(mac: Option<MacAddress>) -> Self {
        Self {
            mac,
            ..Self::default()
        }
    }

    cnm_types::setters! {
        /// Gives the endpoint an IPv4 address.
        pub fn ipv4(addr: Ipv4Net) => ipv4 = Some(addr);
        /// Gives the endpoint an IPv6 address.
        pub fn ipv6(addr: Ipv6Net) => ipv6 = Some(addr);
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
    /// The endpoint's driver options, as the user gave them.
    pub options: DriverOptions,
    /// The same options as [`Driver::parse_endpoint_options`] parsed them.
    pub parsed: ParsedOptions,
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
    /// The driver gives this endpoint no way out of its network (an overlay): unless another
    /// endpoint of the sandbox gives the default route, or the network is internal, the
    /// controller joins the sandbox to its gateway network as well (Docker's `docker_gwbridge`,
    /// see [`ControllerBuilder::gateway_network`](crate::ControllerBuilder::gateway_network)).
    pub needs_gateway_network: bool,
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
            needs_gateway_network: false,
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

/// What the controller asks of a driver in `program_external_connectivity`: the ports to
/// publish for the sandbox's gateway endpoint.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct PublishRequest<'a> {
    /// The network's id.
    pub network_id: &'a str,
    /// The endpoint's id.
    pub endpoint_id: &'a str,
    /// The ports to publish, as the user asked for them.
    pub bindings: &'a [PortBinding],
}

impl<'a> PublishRequest<'a> {
    /// A request to publish `bindings` for the endpoint `endpoint_id` of `network_id`.
    pub fn new(network_id: &'a str, endpoint_id: &'a str, bindings: &'a [PortBinding]) -> Self {
        Self {
            network_id,
            endpoint_id,
            bindings,
        }
    }
}

/// A network driver.
///
/// Object-safe and async. Required methods are the life cycle every driver has; optional hooks have
/// default bodies. Each call is for one object; the controller serialises calls per object, so a
/// driver needs no lock per endpoint, but must be safe for calls on different objects at once.
///
/// Implement it inside `#[async_trait]` (re-exported as [`crate::async_trait`]): without it, the
/// compiler answers every `async fn` with "lifetime parameters or bounds on method do not match
/// the trait declaration" (E0195), which means just that:
///
/// ```compile_fail,E0195
/// use cnm_core::spi::*;
/// #[derive(Debug)]
/// struct Forgot;
/// impl Driver for Forgot {   // needs #[cnm_core::async_trait] above
///     fn name(&self) -> &str { "forgot" }
///     fn capability(&self) -> Capability { Capability::local() }
///     async fn create_network(&self, _: &NetworkSpec) -> Result<(), DriverError> { Ok(()) }
/// #   async fn delete_network(&self, _: &str) -> Result<(), DriverError> { Ok(()) }
/// #   async fn create_endpoint(&self, _: &EndpointSpec) -> Result<EndpointInfo, DriverError> { todo!() }
/// #   async fn delete_endpoint(&self, _: &str, _: &str) -> Result<(), DriverError> { Ok(()) }
/// #   async fn join(&self, _: &JoinRequest) -> Result<JoinInfo, DriverError> { todo!() }
/// #   async fn leave(&self, _: &LeaveRequest) -> Result<(), DriverError> { Ok(()) }
/// }
/// ```
///
/// Done right, with the registration macro:
///
/// ```
/// use std::sync::Arc;
/// use cnm_core::{async_trait, register_driver};
/// use cnm_core::spi::*;
///
/// #[derive(Debug)]
/// struct Loopback;
///
/// #[async_trait]
/// impl Driver for Loopback {
///     fn name(&self) -> &str { "loopback" }
///     fn capability(&self) -> Capability { Capability::local().with_addresses(false) }
///     async fn create_network(&self, _: &NetworkSpec) -> Result<(), DriverError> { Ok(()) }
///     async fn delete_network(&self, _: &str) -> Result<(), DriverError> { Ok(()) }
///     async fn create_endpoint(&self, _: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
///         Ok(EndpointInfo::default())
///     }
///     async fn delete_endpoint(&self, _: &str, _: &str) -> Result<(), DriverError> { Ok(()) }
///     async fn join(&self, _: &JoinRequest) -> Result<JoinInfo, DriverError> {
///         Ok(JoinInfo::new(JoinedInterface::None))
///     }
///     async fn leave(&self, _: &LeaveRequest) -> Result<(), DriverError> { Ok(()) }
/// }
///
/// fn create(_: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
///     Ok(Arc::new(Loopback))
/// }
/// register_driver!("loopback", create);
/// ```
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cnm network driver",
    note = "implement it as `#[cnm::async_trait] impl Driver for {Self} {{ ... }}`"
)]
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

    /// Parses a network's options, once, before anything is allocated or created: refuses an
    /// unknown key or a bad value (naming them), and returns the typed options, which come back
    /// in [`NetworkSpec::parsed`] on create and restore. The default accepts none.
    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        refuse_any(self.name(), "network", options)
    }

    /// Parses an endpoint's options, once, before anything is allocated or created; they come
    /// back in [`EndpointSpec::parsed`] and [`JoinRequest::parsed`]. The default accepts none.
    fn parse_endpoint_options(
        &self,
        options: &DriverOptions,
    ) -> Result<ParsedOptions, DriverError> {
        refuse_any(self.name(), "endpoint", options)
    }

    /// Allocates what a network needs cluster-wide (libnetwork's `NetworkAllocate`): a VNI, a
    /// multicast group. Called once per network, on the host that creates it, before any
    /// host's [`Driver::create_network`]; what it returns is kept in the network's record and
    /// handed to every host in [`NetworkSpec::allocation`]. A global driver allocates through
    /// its cluster store handle ([`DriverContext::store`]) with compare-and-swap, so two hosts
    /// never take the same value. The default allocates nothing.
    async fn allocate_network(&self, spec: &NetworkSpec) -> Result<DriverOptions, DriverError> {
        let _ = spec;
        Ok(DriverOptions::new())
    }

    /// Frees what [`Driver::allocate_network`] allocated (libnetwork's `NetworkFree`): once,
    /// on the host that deletes the network, after its data plane is gone there, or when the
    /// creation is undone. The default does nothing.
    async fn free_network(
        &self,
        network_id: &str,
        allocation: &DriverOptions,
    ) -> Result<(), DriverError> {
        let _ = (network_id, allocation);
        Ok(())
    }

    /// The keys of `options` this driver does not know. A driver that keeps unknown keys, as
    /// Docker's do (they are stored and shown in inspect, and the driver ignores them), names
    /// them here so the caller can warn; its [`parse_network_options`] accepts them. The
    /// default knows nothing and keeps nothing (its parse refuses every key).
    ///
    /// [`parse_network_options`]: Driver::parse_network_options
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
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        if request.bindings.is_empty() {
            Ok(Vec::new())
        } else {
            Err(DriverError::new(
                self.name(),
                ErrorKind::Unsupported,
                "this driver cannot publish ports",
            ))
        }
    }

    /// Publishes the ports of many gateway endpoints at once (a restart re-publishing every
    /// sandbox's ports); returns each request's bindings as made, in order. All or nothing: on
    /// error, none of them stays published. The default publishes them one call each; a
    /// driver overrides it to make them in one trip (the bridge: one firewall transaction).
    async fn program_external_connectivity_batch(
        &self,
        requests: &[PublishRequest<'_>],
    ) -> Result<Vec<Vec<PortBinding>>, DriverError> {
        let mut made = Vec::with_capacity(requests.len());
        for r in requests {
            match self.program_external_connectivity(r).await {
                Ok(bindings) => made.push(bindings),
                Err(e) => {
                    // Undone, the cleanup failures attached to the first error.
                    let mut cleanup = Vec::new();
                    for done in &requests[..made.len()] {
                        if let Err(c) = self
                            .revoke_external_connectivity(done.network_id, done.endpoint_id)
                            .await
                        {
                            cleanup.push(format!("withdraw ports of {}: {c}", done.endpoint_id));
                        }
                    }
                    if cleanup.is_empty() {
                        return Err(e);
                    }
                    return Err(DriverError::new(
                        self.name(),
                        e.kind(),
                        format!("{e} (cleanup failed: {})", cleanup.join("; ")),
                    ));
                }
            }
        }
        Ok(made)
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

    /// The controller is shutting down ([`Controller::shutdown`](crate::Controller::shutdown)):
    /// stop background tasks. The data plane stays as it is (a restarted controller restores it).
    /// The controller drops the driver afterwards. The default does nothing.
    async fn shutdown(&self) -> Result<(), DriverError> {
        Ok(())
    }
}

/// The default parse step: no key is known.
fn refuse_any(
    driver: &str,
    what: &str,
    options: &DriverOptions,
) -> Result<ParsedOptions, DriverError> {
    match options.iter().next() {
        None => Ok(ParsedOptions::none()),
        Some((key, value)) => Err(DriverError::new(
            driver,
            ErrorKind::InvalidInput,
            format!("unknown {what} option {key:?} (value {value:?})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mac: Option<MacAddress>, ipv4: Option<&str>) -> EndpointSpec {
        EndpointSpec {
            network_id: "n1".into(),
            endpoint_id: "e1".into(),
            name: "web".into(),
            ipv4: ipv4.map(|a| a.parse().unwrap()),
            ipv6: None,
            mac,
            options: DriverOptions::new(),
            parsed: ParsedOptions::none(),
        }
    }

    #[test]
    fn segment_mac_keeps_a_unicast_one_or_picks_a_local_one() {
        let mac: MacAddress = "02:42:ac:11:00:02".parse().unwrap();
        let asked = spec(Some(mac), Some("10.0.0.2/24"));
        assert_eq!(asked.segment_mac("bridge").unwrap(), mac);
        let picked = spec(None, Some("10.0.0.2/24"))
            .segment_mac("bridge")
            .unwrap();
        assert!(!picked.is_multicast() && picked.octets() != [0; 6]);
    }

    #[test]
    fn segment_mac_refuses_multicast_zero_and_unaddressed_endpoints() {
        for bad in ["01:00:5e:00:00:01", "00:00:00:00:00:00"] {
            let mac: MacAddress = bad.parse().unwrap();
            let e = spec(Some(mac), Some("10.0.0.2/24"))
                .segment_mac("overlay")
                .unwrap_err();
            assert_eq!((e.kind(), e.driver()), (ErrorKind::InvalidInput, "overlay"));
            assert!(
                e.to_string().contains(&format!("MAC address \"{bad}\"")),
                "{e}"
            );
        }
        let e = spec(None, None).segment_mac("bridge").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains("\"web\": a bridge endpoint needs an IPv4 or IPv6 address"),
            "{e}"
        );
    }
}
