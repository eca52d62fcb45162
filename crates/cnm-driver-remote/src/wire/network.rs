//! `NetworkDriver.*`: the remote network driver protocol (libnetwork's `docs/remote.md`).
//!
//! The error field of every answer is `Err`. Addresses travel as strings: pools, gateways and
//! endpoint addresses in CIDR notation (`10.0.0.2/24`), join gateways and next hops as bare
//! addresses, MACs as `aa:bb:cc:dd:ee:ff`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::null_default;
use crate::plugin::Call;

/// The subsystem name in `Implements`.
pub const SUBSYSTEM: &str = "NetworkDriver";

/// `NetworkDriver.GetCapabilities` (no body).
pub const GET_CAPABILITIES: Call = Call::new("NetworkDriver.GetCapabilities").idempotent();
/// `NetworkDriver.CreateNetwork`.
pub const CREATE_NETWORK: Call = Call::new("NetworkDriver.CreateNetwork");
/// `NetworkDriver.DeleteNetwork`.
pub const DELETE_NETWORK: Call = Call::new("NetworkDriver.DeleteNetwork").idempotent();
/// `NetworkDriver.CreateEndpoint`.
pub const CREATE_ENDPOINT: Call = Call::new("NetworkDriver.CreateEndpoint");
/// `NetworkDriver.EndpointOperInfo`.
pub const ENDPOINT_OPER_INFO: Call = Call::new("NetworkDriver.EndpointOperInfo").idempotent();
/// `NetworkDriver.DeleteEndpoint`.
pub const DELETE_ENDPOINT: Call = Call::new("NetworkDriver.DeleteEndpoint").idempotent();
/// `NetworkDriver.Join`.
pub const JOIN: Call = Call::new("NetworkDriver.Join");
/// `NetworkDriver.Leave`.
pub const LEAVE: Call = Call::new("NetworkDriver.Leave").idempotent();
/// `NetworkDriver.DiscoverNew` (optional: 404 is success).
pub const DISCOVER_NEW: Call = Call::new("NetworkDriver.DiscoverNew")
    .idempotent()
    .optional();
/// `NetworkDriver.DiscoverDelete` (optional: 404 is success).
pub const DISCOVER_DELETE: Call = Call::new("NetworkDriver.DiscoverDelete")
    .idempotent()
    .optional();
/// `NetworkDriver.ProgramExternalConnectivity` (optional: 404 is success).
pub const PROGRAM_EXTERNAL_CONNECTIVITY: Call =
    Call::new("NetworkDriver.ProgramExternalConnectivity").optional();
/// `NetworkDriver.RevokeExternalConnectivity` (optional: 404 is success).
pub const REVOKE_EXTERNAL_CONNECTIVITY: Call =
    Call::new("NetworkDriver.RevokeExternalConnectivity")
        .idempotent()
        .optional();

/// The key under which the user's driver options (`-o key=value`) travel in `Options`.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// The `Options` key saying whether the network has IPv6.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// The `Options` key present (true) on internal networks.
pub const INTERNAL: &str = "com.docker.network.internal";
/// The option key of published ports, in `ProgramExternalConnectivity`'s `Options`.
pub const PORT_MAP: &str = "com.docker.network.portmap";
/// The option key of exposed ports, in `ProgramExternalConnectivity`'s `Options`.
pub const EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";

/// A free-form `Options` object.
pub type Options = BTreeMap<String, Value>;

// Every answer carries the plugin's error text.
answers!(err: Response, CapabilitiesResponse, CreateEndpointResponse, EndpointOperInfoResponse, JoinResponse);

/// The answer of every call whose success is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The plugin's error; empty on success.
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// The answer to `GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// Where the driver's allocations are made: `local` or `global`.
    #[serde(rename = "Scope", default, deserialize_with = "null_default")]
    pub scope: String,
    /// How far the driver's networks reach: `local` or `global`; empty means as `Scope`.
    #[serde(
        rename = "ConnectivityScope",
        default,
        deserialize_with = "null_default"
    )]
    pub connectivity_scope: String,
    /// The plugin's error.
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// One pool of a network in `CreateNetwork` (`IPv4Data` / `IPv6Data` entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamData {
    /// The address space the pool belongs to.
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The pool, in CIDR notation.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The gateway, an address in CIDR notation (`10.0.0.1/24`); left out when there is none.
    #[serde(
        rename = "Gateway",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway: String,
    /// Addresses reserved for the driver by name, in CIDR notation as Docker sends them;
    /// left out when there are none.
    #[serde(
        rename = "AuxAddresses",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `CreateNetwork`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` (the user's driver options), `com.docker.network.enable_ipv6`,
    /// `com.docker.network.internal`.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Options,
    /// The IPv4 pools.
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    /// The IPv6 pools.
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// `DeleteNetwork`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteNetworkRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// An endpoint's interface, asked for in `CreateEndpoint` and possibly filled in by the answer.
///
/// Every field may be empty: in a request, for what IPAM or the user left open; in an answer,
/// for what the plugin leaves as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// The IPv4 address in CIDR notation.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// The IPv6 address in CIDR notation.
    #[serde(rename = "AddressIPv6", default, deserialize_with = "null_default")]
    pub address_ipv6: String,
    /// The MAC address.
    #[serde(rename = "MacAddress", default, deserialize_with = "null_default")]
    pub mac_address: String,
}

impl EndpointInterface {
    /// Whether every field is empty.
    pub fn is_empty(&self) -> bool {
        self.address.is_empty() && self.address_ipv6.is_empty() && self.mac_address.is_empty()
    }
}

/// `CreateEndpoint`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// What is already known of the interface.
    #[serde(rename = "Interface", default, deserialize_with = "null_default")]
    pub interface: EndpointInterface,
    /// The endpoint's options.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Options,
}

/// The answer to `CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateEndpointResponse {
    /// What the plugin filled in (only fields the request left empty), or nothing.
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    /// The plugin's error.
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// The body of `EndpointOperInfo`, `DeleteEndpoint`, `Leave` and `RevokeExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

impl EndpointRequest {
    /// The body naming endpoint `endpoint_id` of network `network_id`.
    pub fn new(network_id: &str, endpoint_id: &str) -> Self {
        Self {
            network_id: network_id.to_owned(),
            endpoint_id: endpoint_id.to_owned(),
        }
    }
}

/// The answer to `EndpointOperInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointOperInfoResponse {
    /// Free-form operational data.
    #[serde(rename = "Value", default, deserialize_with = "null_default")]
    pub value: BTreeMap<String, Value>,
    /// The plugin's error.
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// `Join`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The sandbox key: the path of the container's network namespace.
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    /// The join's options.
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Options,
}

/// The interface a plugin created for a join, to be moved into the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    /// Its name in the host namespace.
    #[serde(rename = "SrcName", default, deserialize_with = "null_default")]
    pub src_name: String,
    /// A full name in the sandbox (in libnetwork's API; Docker itself ignores it).
    #[serde(
        rename = "DstName",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub dst_name: String,
    /// The prefix of its name in the sandbox; an index is appended (`eth` → `eth1`).
    #[serde(rename = "DstPrefix", default, deserialize_with = "null_default")]
    pub dst_prefix: String,
}

/// `RouteType` of a static route through a next hop.
pub const ROUTE_NEXT_HOP: i64 = 0;
/// `RouteType` of a connected (on-link) static route.
pub const ROUTE_CONNECTED: i64 = 1;

/// A static route in `Join`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    /// The destination in CIDR notation.
    #[serde(rename = "Destination", default, deserialize_with = "null_default")]
    pub destination: String,
    /// [`ROUTE_NEXT_HOP`] (with `NextHop`) or [`ROUTE_CONNECTED`] (without).
    #[serde(rename = "RouteType", default, deserialize_with = "null_default")]
    pub route_type: i64,
    /// The next hop, a bare address.
    #[serde(
        rename = "NextHop",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_hop: String,
}

/// The answer to `Join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The interface to move into the sandbox, if the plugin made one.
    #[serde(rename = "InterfaceName", default)]
    pub interface_name: Option<InterfaceName>,
    /// The IPv4 gateway, a bare address.
    #[serde(rename = "Gateway", default, deserialize_with = "null_default")]
    pub gateway: String,
    /// The IPv6 gateway, a bare address.
    #[serde(rename = "GatewayIPv6", default, deserialize_with = "null_default")]
    pub gateway_ipv6: String,
    /// Further routes inside the sandbox.
    #[serde(rename = "StaticRoutes", default, deserialize_with = "null_default")]
    pub static_routes: Vec<StaticRoute>,
    /// When true the endpoint never provides the sandbox's default gateway.
    #[serde(
        rename = "DisableGatewayService",
        default,
        deserialize_with = "null_default"
    )]
    pub disable_gateway_service: bool,
    /// The plugin's error.
    #[serde(rename = "Err", default, deserialize_with = "null_default")]
    pub err: String,
}

/// `ProgramExternalConnectivity`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramExternalConnectivityRequest {
    /// The network's id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// [`PORT_MAP`] (a list of [`PortBinding`]) and [`EXPOSED_PORTS`] (of [`TransportPort`]).
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Options,
}

/// IANA protocol numbers, as Docker's `types.Protocol` sends them.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// One published port, as Docker's `types.PortBinding` (one container port per entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The protocol number ([`proto`]).
    #[serde(rename = "Proto")]
    pub proto: u8,
    /// The container's address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// The container port.
    #[serde(rename = "Port")]
    pub port: u16,
    /// The host address; empty for every address.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// The host port (the first of a range); 0 for an ephemeral port.
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    /// The last host port of a range; 0 or equal to `HostPort` for one port.
    #[serde(rename = "HostPortEnd")]
    pub host_port_end: u16,
}

/// One exposed port, as Docker's `types.TransportPort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportPort {
    /// The protocol number ([`proto`]).
    #[serde(rename = "Proto")]
    pub proto: u8,
    /// The port.
    #[serde(rename = "Port")]
    pub port: u16,
}

/// `DiscoveryType` of node discovery (the only type Docker forwards to plugins).
pub const NODE_DISCOVERY: i64 = 1;

/// `DiscoverNew` / `DiscoverDelete`'s body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryNotification {
    /// The discovery type ([`NODE_DISCOVERY`]).
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i64,
    /// Its data ([`NodeDiscoveryData`] for node discovery).
    #[serde(rename = "DiscoveryData")]
    pub discovery_data: Value,
}

/// The data of a node discovery, as dockerd encodes it (Go's field names: the docs' sample
/// writes `self` in lower case, which Go's case-insensitive decoder reads either way).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDiscoveryData {
    /// The node's address.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// The address the node binds its data plane to.
    #[serde(rename = "BindAddress", default)]
    pub bind_address: String,
    /// Whether the node is this host.
    #[serde(rename = "Self", alias = "self", default)]
    pub self_: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plugin::Answer as _;
    use crate::wire::keys;

    // The samples below are the shapes of libnetwork's docs/remote.md, with the placeholders
    // (`string`, `ipv4-cidr-string`, …) replaced by values of that form.

    #[test]
    fn capabilities_as_documented() {
        let a: CapabilitiesResponse =
            serde_json::from_str(r#"{"Scope": "local", "ConnectivityScope": "global"}"#).unwrap();
        assert_eq!(
            (a.scope.as_str(), a.connectivity_scope.as_str()),
            ("local", "global")
        );
        assert!(a.err.is_empty());
    }

    #[test]
    fn create_network_has_the_documented_fields() {
        let req = CreateNetworkRequest {
            network_id: "n1".into(),
            options: [(GENERIC_OPTIONS.to_owned(), json!({"k": "v"}))].into(),
            ipv4_data: vec![IpamData {
                address_space: "LocalDefault".into(),
                pool: "10.0.0.0/24".into(),
                gateway: "10.0.0.1/24".into(),
                aux_addresses: [("router".to_owned(), "10.0.0.2/24".to_owned())].into(),
            }],
            ipv6_data: vec![IpamData {
                address_space: "LocalDefault".into(),
                pool: "fd00::/64".into(),
                ..Default::default()
            }],
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(keys(&v), ["IPv4Data", "IPv6Data", "NetworkID", "Options"]);
        assert_eq!(
            keys(&v["IPv4Data"][0]),
            ["AddressSpace", "AuxAddresses", "Gateway", "Pool"]
        );
        // Without a gateway or aux addresses, those fields are left out, as Docker does.
        assert_eq!(keys(&v["IPv6Data"][0]), ["AddressSpace", "Pool"]);
        // And the documented sample reads back into the same type.
        let doc = r#"{
            "NetworkID": "n1",
            "IPv4Data": [{"AddressSpace": "s", "Pool": "10.0.0.0/24", "Gateway": "10.0.0.1/24",
                          "AuxAddresses": {"a": "10.0.0.2", "b": "10.0.0.3"}}],
            "IPv6Data": [{"AddressSpace": "s", "Pool": "fd00::/64", "Gateway": "fd00::1/64",
                          "AuxAddresses": {"a": "fd00::2"}}],
            "Options": {}
        }"#;
        let back: CreateNetworkRequest = serde_json::from_str(doc).unwrap();
        assert_eq!(back.ipv4_data[0].aux_addresses["b"], "10.0.0.3");
        assert_eq!(back.ipv6_data[0].gateway, "fd00::1/64");
    }

    #[test]
    fn endpoint_calls_have_the_documented_fields() {
        let req = CreateEndpointRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
            interface: EndpointInterface {
                address: "192.168.34.12/16".into(),
                ..Default::default()
            },
            options: Options::new(),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            keys(&v),
            ["EndpointID", "Interface", "NetworkID", "Options"]
        );
        // Every interface field is sent, empty when unknown, as Docker's client does.
        assert_eq!(
            keys(&v["Interface"]),
            ["Address", "AddressIPv6", "MacAddress"]
        );
        let a: CreateEndpointResponse = serde_json::from_str(
            r#"{"Interface": {"Address": "", "AddressIPv6": "fd00::2/64",
                              "MacAddress": "6e:75:32:60:44:c9"}}"#,
        )
        .unwrap();
        let i = a.interface.unwrap();
        assert_eq!(i.mac_address, "6e:75:32:60:44:c9");
        assert!(i.address.is_empty());
        // Go plugins answer a nil pointer as null, or leave it out.
        for empty in [r#"{"Interface": null}"#, "{}"] {
            let a: CreateEndpointResponse = serde_json::from_str(empty).unwrap();
            assert_eq!(a.interface, None);
        }
        let v = serde_json::to_value(EndpointRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
        })
        .unwrap();
        assert_eq!(keys(&v), ["EndpointID", "NetworkID"]);
        let a: EndpointOperInfoResponse = serde_json::from_str(r#"{"Value": {"x": 1}}"#).unwrap();
        assert_eq!(a.value["x"], 1);
        let a: EndpointOperInfoResponse = serde_json::from_str(r#"{"Value": null}"#).unwrap();
        assert!(a.value.is_empty());
    }

    #[test]
    fn join_has_the_documented_fields() {
        let v = serde_json::to_value(JoinRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
            sandbox_key: "/run/cnm/netns/abc".into(),
            options: Options::new(),
        })
        .unwrap();
        assert_eq!(
            keys(&v),
            ["EndpointID", "NetworkID", "Options", "SandboxKey"]
        );
        let a: JoinResponse = serde_json::from_str(
            r#"{
                "InterfaceName": {"SrcName": "veth1234", "DstPrefix": "eth"},
                "Gateway": "192.168.0.1",
                "GatewayIPv6": "fe80::7809:baff:fec6:7744",
                "StaticRoutes": [
                    {"Destination": "10.1.0.0/16", "RouteType": 0, "NextHop": "192.168.0.254"},
                    {"Destination": "10.2.0.0/16", "RouteType": 1}
                ],
                "DisableGatewayService": true
            }"#,
        )
        .unwrap();
        let name = a.interface_name.unwrap();
        assert_eq!(
            (name.src_name.as_str(), name.dst_prefix.as_str()),
            ("veth1234", "eth")
        );
        assert_eq!(a.gateway, "192.168.0.1");
        assert_eq!(a.gateway_ipv6, "fe80::7809:baff:fec6:7744");
        assert_eq!(a.static_routes[0].route_type, ROUTE_NEXT_HOP);
        assert_eq!(a.static_routes[1].route_type, ROUTE_CONNECTED);
        assert!(a.static_routes[1].next_hop.is_empty());
        assert!(a.disable_gateway_service);
        let a: JoinResponse =
            serde_json::from_str(r#"{"StaticRoutes": null, "Err": "no"}"#).unwrap();
        assert_eq!(a.error(), "no");
    }

    #[test]
    fn ports_and_discovery_as_docker_encodes_them() {
        let v = serde_json::to_value(PortBinding {
            proto: proto::TCP,
            ip: "10.0.0.2".into(),
            port: 80,
            host_ip: String::new(),
            host_port: 8080,
            host_port_end: 8080,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"Proto": 6, "IP": "10.0.0.2", "Port": 80, "HostIP": "", "HostPort": 8080,
                   "HostPortEnd": 8080})
        );
        assert_eq!(
            serde_json::to_value(TransportPort {
                proto: proto::UDP,
                port: 53
            })
            .unwrap(),
            json!({"Proto": 17, "Port": 53})
        );
        // The docs' DiscoverNew sample.
        let n: DiscoveryNotification = serde_json::from_str(
            r#"{"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.5", "self": true}}"#,
        )
        .unwrap();
        assert_eq!(n.discovery_type, NODE_DISCOVERY);
        let d: NodeDiscoveryData = serde_json::from_value(n.discovery_data).unwrap();
        assert_eq!(d.address, "10.0.0.5");
        assert!(d.self_);
    }

    #[test]
    fn errors_travel_in_err() {
        let a: Response = serde_json::from_str(r#"{"Err": "network not found"}"#).unwrap();
        assert_eq!(a.error(), "network not found");
        let a: Response = serde_json::from_str("{}").unwrap();
        assert_eq!(a.error(), "");
    }
}
