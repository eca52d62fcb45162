//! The records written to the [`Store`](crate::store::Store): one versioned serde record per
//! network, endpoint and sandbox, plus the IPAM state. A `schema` number in every record lets a
//! later version read (and migrate) what an earlier one wrote.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::SystemTime;

use cnm_ipam::PoolId;
use cnm_types::{IfName, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::options::{EndpointOptions, ExposedPort, JoinOptions};
use crate::port::PortBinding;
use crate::spi::{DriverOptions, Scope};

/// The schema version of the records this build writes.
pub const SCHEMA: u32 = 1;

/// The key of a network record.
pub fn network_key(id: &str) -> String {
    format!("network/{id}")
}

/// The key of an endpoint record.
pub fn endpoint_key(network_id: &str, id: &str) -> String {
    format!("endpoint/{network_id}/{id}")
}

/// The key of a sandbox record.
pub fn sandbox_key(id: &str) -> String {
    format!("sandbox/{id}")
}

/// The key under which earlier builds wrote the default IPAM's state after every operation.
/// No longer written: on start the controller rebuilds IPAM from the network and endpoint
/// records themselves (see [`crate::Ipam::snapshot`] to look at the live state).
pub const IPAM_KEY: &str = "ipam/default";

/// The creation time of records written before the field existed.
fn unknown_time() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

/// One pool of a network as allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAllocation {
    /// IPAM's id of the pool.
    pub pool_id: PoolId,
    /// The subnet.
    pub subnet: IpNet,
    /// The gateway address allocated for the network (with the pool's prefix length).
    pub gateway: Option<IpNet>,
    /// Auxiliary addresses, by name.
    pub aux_addresses: BTreeMap<String, IpAddr>,
    /// The subnet as the user wrote it, when that had host bits set (written only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_as_given: Option<IpNet>,
    /// The IPAM's own id of the pool (a plugin's `PoolID`), when it has one: what a restart
    /// without replay adopts the pool by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_pool_id: Option<String>,
}

/// A network as persisted under `network/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// [`SCHEMA`] at the time of writing.
    pub schema: u32,
    /// The id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The driver's name.
    pub driver: String,
    /// The IPAM driver's name.
    pub ipam_driver: String,
    /// IPv4 on.
    pub enable_ipv4: bool,
    /// IPv6 on.
    pub enable_ipv6: bool,
    /// Internal.
    pub internal: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    pub driver_options: DriverOptions,
    /// The subnets may overlap networks the host is on (written only when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_host_overlap: bool,
    /// Docker's `Attachable` (written only when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attachable: bool,
    /// Docker's `IPAM.Options` as given (written only when given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_options: Option<BTreeMap<String, String>>,
    /// IPv4 pools as allocated.
    pub ipv4: Vec<PoolAllocation>,
    /// IPv6 pools as allocated.
    pub ipv6: Vec<PoolAllocation>,
    /// When it was created (the Unix epoch for records that predate the field).
    #[serde(default = "unknown_time")]
    pub created: SystemTime,
    /// The network's scope: a global network's record lives in the cluster store (written
    /// only when global).
    #[serde(default, skip_serializing_if = "is_local")]
    pub scope: Scope,
    /// What the driver allocated for the network, once for the cluster
    /// ([`Driver::allocate_network`](crate::spi::Driver::allocate_network)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocation: DriverOptions,
    /// A host is deleting the network: no host may take an address in it any more (written
    /// only when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

fn is_local(scope: &Scope) -> bool {
    *scope == Scope::Local
}

/// An endpoint as persisted under `endpoint/<network id>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// [`SCHEMA`] at the time of writing.
    pub schema: u32,
    /// The id.
    pub id: String,
    /// The name.
    pub name: String,
    /// The network's id.
    pub network_id: String,
    /// The IPv4 address and the pool it came from.
    pub ipv4: Option<(Ipv4Net, PoolId)>,
    /// The IPv6 address and the pool it came from.
    pub ipv6: Option<(Ipv6Net, PoolId)>,
    /// The MAC.
    pub mac: Option<MacAddress>,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Exposed ports.
    pub exposed_ports: Vec<ExposedPort>,
    /// Published ports as requested.
    pub port_bindings: Vec<PortBinding>,
    /// Driver options.
    pub driver_options: DriverOptions,
    /// The sandbox it is joined to.
    pub sandbox_id: Option<String>,
    /// An IPv4 address the driver gave outside the network's pools (IPAM holds no pool for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpooled_ipv4: Option<Ipv4Net>,
    /// An IPv6 address the driver gave outside the network's pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpooled_ipv6: Option<Ipv6Net>,
    /// What the user asked for that the fields above do not keep as asked (static addresses,
    /// the MAC before the driver chose one); absent in records that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<RequestedEndpoint>,
}

/// The parts of an endpoint's options that its record keeps apart (see
/// [`EndpointRecord::requested`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedEndpoint {
    /// The static IPv4 address asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// The static IPv6 address asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The MAC asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddress>,
}

impl EndpointRecord {
    /// The options the endpoint was created with, as the user gave them. A record that predates
    /// [`EndpointRecord::requested`] gives its MAC as asked and no static address.
    pub fn options(&self) -> EndpointOptions {
        let requested = self.requested.clone().unwrap_or(RequestedEndpoint {
            mac: self.mac,
            ..RequestedEndpoint::default()
        });
        EndpointOptions {
            ipv4: requested.ipv4,
            ipv6: requested.ipv6,
            mac: requested.mac,
            dns_names: self.dns_names.clone(),
            aliases: self.aliases.clone(),
            exposed_ports: self.exposed_ports.clone(),
            port_bindings: self.port_bindings.clone(),
            driver_options: self.driver_options.clone(),
        }
    }
}

/// One endpoint joined to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedRecord {
    /// The endpoint's id.
    pub endpoint_id: String,
    /// Its network's id.
    pub network_id: String,
    /// The interface's name inside the sandbox (absent for the null driver).
    pub ifname: Option<IfName>,
    /// The gateway priority of the join.
    pub gateway_priority: i32,
    /// The name the driver was asked to use (`ethN`); absent in records that predate it, where
    /// it is `ifname`.
    #[serde(default)]
    pub requested: Option<IfName>,
    /// The host-side name of an interface the controller moved in.
    #[serde(default)]
    pub moved_from: Option<IfName>,
    /// The driver's IPv4 gateway for the endpoint.
    #[serde(default)]
    pub gateway_v4: Option<Ipv4Addr>,
    /// The driver's IPv6 gateway for the endpoint.
    #[serde(default)]
    pub gateway_v6: Option<Ipv6Addr>,
    /// The driver's static routes: destination and next hop (none: on link).
    #[serde(default)]
    pub static_routes: Vec<(IpNet, Option<IpAddr>)>,
    /// The driver said this endpoint never gives the default route.
    #[serde(default)]
    pub disable_gateway_service: bool,
    /// The driver said this endpoint has no way out but the controller's gateway network.
    #[serde(default)]
    pub needs_gateway_network: bool,
    /// The ports as the driver published them while this is the gateway endpoint (host ports
    /// resolved), re-published as they were on restart.
    #[serde(default)]
    pub published: Vec<PortBinding>,
}

/// A sandbox as persisted under `sandbox/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`SCHEMA`] at the time of writing.
    pub schema: u32,
    /// The id.
    pub id: String,
    /// The container's id.
    pub container_id: String,
    /// The sandbox key: the netns bind mount.
    pub key: PathBuf,
    /// The sandbox's options (host name, DNS, …).
    pub options: JoinOptions,
    /// Joined endpoints, in join order.
    pub endpoints: Vec<JoinedRecord>,
    /// The endpoint giving the default route.
    pub gateway_endpoint: Option<String>,
}
