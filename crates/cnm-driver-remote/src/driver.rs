//! [`RemoteDriver`]: a network driver in another process, behind cnm's [`Driver`] SPI.
//!
//! The adapter is thin on purpose: each SPI call becomes one protocol call (see
//! [`crate::wire::network`]), the answer is checked and turned into the SPI's types, and a call
//! that failed in a way that may have left something behind in the plugin is followed by its
//! inverse (`CreateNetwork` → `DeleteNetwork`, `CreateEndpoint` → `DeleteEndpoint`, `Join` →
//! `Leave`, `ProgramExternalConnectivity` → `RevokeExternalConnectivity`). Each inverse is
//! bounded by the client's call timeout, and its failure is reported with the first one.
//! Everything in the kernel is the controller's to do: the interface a plugin returns from
//! `Join` is moved into the sandbox and renamed by the controller, as for a built-in driver
//! that cannot create it in place ([`JoinedInterface::MoveIn`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use cnm_core::{
    Capability, Driver, DriverError, DriverOptions, EndpointInfo, EndpointSpec, IpamData, JoinInfo,
    JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, ParsedOptions, PortBinding, Protocol,
    PublishRequest, RestoredEndpoint, Scope, StaticRoute,
};
use cnm_types::{IfName, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use serde_json::Value;

use crate::error::RemoteError;
use crate::plugin::{Answer, Body, Call, ClientConfig, PluginClient, PluginDirs, PluginError};
use crate::wire::network as wire;

/// Docker's names of its default IPAM's address spaces, sent in `IPv4Data`/`IPv6Data` (the
/// SPI does not carry a pool's address space yet).
const LOCAL_ADDRESS_SPACE: &str = "LocalDefault";
const GLOBAL_ADDRESS_SPACE: &str = "GlobalDefault";

/// Where to look for plugins and how long to wait for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The plugin directories (Docker's by default).
    pub dirs: PluginDirs,
    /// The client's time limits.
    pub client: ClientConfig,
}

impl RemoteConfig {
    /// Finds the plugin `name` in [`dirs`](Self::dirs) and activates it for `subsystem` (see
    /// [`PluginClient::connect`]).
    pub(crate) async fn activate(
        &self,
        name: &str,
        subsystem: &'static str,
    ) -> Result<PluginClient, PluginError> {
        PluginClient::connect(name, subsystem, self.dirs.clone(), self.client.clone()).await
    }
}

/// What a plugin filled in when an endpoint was created, beyond what cnm asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Filled {
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    mac: Option<MacAddress>,
}

/// What the adapter remembers of an endpoint: its addresses (the container address of
/// `ProgramExternalConnectivity`).
#[derive(Debug, Clone, Copy, Default)]
struct EndpointState {
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
}

/// A network driver served by a plugin process.
#[derive(Debug)]
pub struct RemoteDriver {
    client: PluginClient,
    scope: Scope,
    connectivity_scope: Scope,
    /// Endpoints by id: their addresses (for published ports) and what the plugin chose.
    endpoints: Mutex<HashMap<String, EndpointState>>,
}

/// `local` or `global`, as `GetCapabilities` answers it.
fn parse_scope(plugin: &str, field: &'static str, value: &str) -> Result<Scope, PluginError> {
    match value {
        "local" => Ok(Scope::Local),
        "global" => Ok(Scope::Global),
        other => Err(PluginError::InvalidAnswer {
            plugin: plugin.to_owned(),
            call: wire::GET_CAPABILITIES.method.to_owned(),
            field,
            value: other.to_owned(),
            reason: "expected \"local\" or \"global\"".to_owned(),
        }),
    }
}

impl RemoteDriver {
    /// Finds the plugin `name`, activates it as a `NetworkDriver` and asks its capabilities.
    ///
    /// A name that matches no socket or spec file fails at once ([`PluginError::NotFound`]).
    pub async fn connect(name: &str, config: &RemoteConfig) -> Result<Self, RemoteError> {
        let client = config.activate(name, wire::SUBSYSTEM).await?;
        let caps: wire::CapabilitiesResponse =
            client.call(wire::GET_CAPABILITIES, Body::empty()).await?;
        let scope = parse_scope(name, "Scope", &caps.scope)?;
        let connectivity_scope = match caps.connectivity_scope.as_str() {
            "" => scope,
            other => parse_scope(name, "ConnectivityScope", other)?,
        };
        Ok(Self {
            client,
            scope,
            connectivity_scope,
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// The protocol client (for its name, address and re-activation count).
    pub fn client(&self) -> &PluginClient {
        &self.client
    }

    /// How far the plugin's networks reach (`ConnectivityScope`).
    pub fn connectivity_scope(&self) -> Scope {
        self.connectivity_scope
    }

    /// `EndpointOperInfo`: the plugin's free-form operational data of an endpoint.
    pub async fn endpoint_oper_info(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<BTreeMap<String, Value>, DriverError> {
        let request = wire::EndpointRequest::new(network_id, endpoint_id);
        let answer: wire::EndpointOperInfoResponse = self
            .client
            .call_json(wire::ENDPOINT_OPER_INFO, &request)
            .await
            .map_err(|e| self.error(e.into()))?;
        Ok(answer.value)
    }

    /// `DiscoverNew`: tells the plugin of a node (404 is success: the call is optional).
    pub async fn discover_new(&self, node: &wire::NodeDiscoveryData) -> Result<(), DriverError> {
        self.discover(wire::DISCOVER_NEW, node).await
    }

    /// `DiscoverDelete`: tells the plugin a node left (404 is success).
    pub async fn discover_delete(&self, node: &wire::NodeDiscoveryData) -> Result<(), DriverError> {
        self.discover(wire::DISCOVER_DELETE, node).await
    }

    async fn discover(
        &self,
        call: Call,
        node: &wire::NodeDiscoveryData,
    ) -> Result<(), DriverError> {
        let notification = wire::DiscoveryNotification {
            discovery_type: wire::NODE_DISCOVERY,
            discovery_data: serde_json::to_value(node)
                .map_err(|e| self.error(self.client.encode_error(call, e).into()))?,
        };
        self.send(call, &notification)
            .await
            .map_err(|e| self.error(e.into()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndpointState>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, e: RemoteError) -> DriverError {
        DriverError::new(self.client.name(), e.kind(), e)
    }

    /// Sends `request` for its effect alone (the answer carries nothing but the plugin's
    /// error); an optional call the plugin does not implement does nothing.
    async fn send(&self, call: Call, request: &impl Serialize) -> Result<(), PluginError> {
        if call.optional {
            self.client
                .call_json_optional::<wire::Response>(call, request)
                .await
                .map(drop)
        } else {
            self.client
                .call_json::<wire::Response>(call, request)
                .await
                .map(drop)
        }
    }

    /// Sends a call on one endpoint for its effect alone (see [`RemoteDriver::send`]).
    async fn send_endpoint(
        &self,
        call: Call,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let request = wire::EndpointRequest::new(network_id, endpoint_id);
        self.send(call, &request)
            .await
            .map_err(|e| self.error(e.into()))
    }

    /// After `cause` failed a constructive call: sends its inverse when the plugin may have done
    /// something (or answered at all, in case it did some of the work before failing), and
    /// returns the error to report. A failed inverse is reported when the plugin may have done
    /// the work; after a plain refusal it only tells that there was nothing to undo.
    async fn undo(
        &self,
        cause: PluginError,
        inverse: Call,
        request: &impl Serialize,
    ) -> RemoteError {
        let answered = matches!(
            cause,
            PluginError::Refused { .. } | PluginError::Status { .. }
        );
        if !cause.may_have_acted() && !answered {
            return cause.into();
        }
        match self.send(inverse, request).await {
            Ok(()) => cause.into(),
            Err(e) if cause.may_have_acted() => RemoteError::with_cleanup(cause, vec![e]),
            Err(e) => {
                tracing::debug!(error = %e, "nothing to undo after a refusal");
                cause.into()
            }
        }
    }

    /// Makes the constructive `call` and reads its answer with `read`, which checks what the
    /// plugin filled in; when either fails, [`RemoteDriver::undo`] sends the call's `inverse`.
    async fn call_checked<A: Answer, T>(
        &self,
        (call, request): (Call, &impl Serialize),
        (inverse, inverse_request): (Call, &impl Serialize),
        read: impl FnOnce(&AnswerCheck<'_>, &A) -> Result<T, PluginError>,
    ) -> Result<T, DriverError> {
        let check = AnswerCheck {
            plugin: self.client.name(),
            call,
        };
        let result = match self.client.call_json::<A>(call, request).await {
            Ok(answer) => read(&check, &answer),
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => Ok(v),
            Err(cause) => Err(self.error(self.undo(cause, inverse, inverse_request).await)),
        }
    }

    fn address_space(&self) -> &'static str {
        match self.scope {
            Scope::Local => LOCAL_ADDRESS_SPACE,
            Scope::Global => GLOBAL_ADDRESS_SPACE,
        }
    }
}

fn ipam_data<N: Copy + Into<IpNet>>(space: &str, data: &IpamData<N>) -> wire::IpamData {
    let pool: IpNet = data.pool.into();
    wire::IpamData {
        address_space: space.to_owned(),
        pool: pool.to_string(),
        gateway: data
            .gateway
            .map(|g| Into::<IpNet>::into(g).to_string())
            .unwrap_or_default(),
        // In CIDR notation with the pool's prefix length, as dockerd sends them.
        aux_addresses: data
            .aux_addresses
            .iter()
            .map(|(k, a)| (k.clone(), format!("{a}/{}", pool.prefix_len())))
            .collect(),
    }
}

fn string_options(options: &DriverOptions) -> wire::Options {
    options
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

/// The `Options` of `CreateNetwork`, as dockerd fills them: the user's driver options under
/// `com.docker.network.generic`, IPv6 and internal flags beside.
fn network_options(spec: &NetworkSpec) -> wire::Options {
    let mut options = wire::Options::new();
    options.insert(
        wire::GENERIC_OPTIONS.to_owned(),
        Value::Object(
            spec.options
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    options.insert(wire::ENABLE_IPV6.to_owned(), Value::Bool(spec.enable_ipv6));
    if spec.internal {
        options.insert(wire::INTERNAL.to_owned(), Value::Bool(true));
    }
    options
}

fn proto_number(proto: Protocol) -> u8 {
    match proto {
        Protocol::Udp => wire::proto::UDP,
        Protocol::Sctp => wire::proto::SCTP,
        _ => wire::proto::TCP,
    }
}

/// Docker's `PortBinding`s (one per container port) and exposed ports for `bindings`.
fn port_options(ip: Option<IpAddr>, bindings: &[PortBinding]) -> wire::Options {
    let mut map = Vec::new();
    let mut exposed: Vec<wire::TransportPort> = Vec::new();
    let ip = ip.map(|a| a.to_string()).unwrap_or_default();
    for b in bindings {
        let proto = proto_number(b.proto);
        let host_ip = b.host_ip.map(|a| a.to_string()).unwrap_or_default();
        let ports = b.container_port.start..=b.container_port.end;
        let one_to_range = b.container_port.start == b.container_port.end;
        for (i, port) in ports.enumerate() {
            let offset = u16::try_from(i).unwrap_or(u16::MAX);
            let (host_port, host_port_end) = match b.host_port {
                None => (0, 0),
                // One container port and a host range: the plugin picks a port of the range.
                Some(h) if one_to_range => (h.start, h.end),
                Some(h) => {
                    let p = h.start.saturating_add(offset);
                    (p, p)
                }
            };
            map.push(wire::PortBinding {
                proto,
                ip: ip.clone(),
                port,
                host_ip: host_ip.clone(),
                host_port,
                host_port_end,
            });
            let t = wire::TransportPort { proto, port };
            if !exposed.contains(&t) {
                exposed.push(t);
            }
        }
    }
    let mut options = wire::Options::new();
    if !map.is_empty() {
        options.insert(
            wire::PORT_MAP.to_owned(),
            serde_json::to_value(map).unwrap_or_default(),
        );
        options.insert(
            wire::EXPOSED_PORTS.to_owned(),
            serde_json::to_value(exposed).unwrap_or_default(),
        );
    }
    options
}

/// Builds the errors of one answer's checks.
struct AnswerCheck<'a> {
    plugin: &'a str,
    call: Call,
}

impl AnswerCheck<'_> {
    fn invalid(&self, field: &'static str, value: &str, reason: impl Into<String>) -> PluginError {
        PluginError::InvalidAnswer {
            plugin: self.plugin.to_owned(),
            call: self.call.method.to_owned(),
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn parse_net(&self, field: &'static str, value: &str) -> Result<IpNet, PluginError> {
        value.parse::<IpNet>().map_err(|e| {
            self.invalid(
                field,
                value,
                format!("not an address in CIDR notation ({e})"),
            )
        })
    }

    fn parse_addr(&self, field: &'static str, value: &str) -> Result<IpAddr, PluginError> {
        value
            .parse::<IpAddr>()
            .map_err(|e| self.invalid(field, value, format!("not an IP address ({e})")))
    }

    /// An address the plugin filled in: CIDR of the right family, and only where cnm had none
    /// (libnetwork refuses a plugin that changes an address it was given).
    fn filled<N: Copy + PartialEq + std::fmt::Display>(
        &self,
        field: &'static str,
        value: &str,
        asked: Option<N>,
        family: fn(IpNet) -> Option<N>,
    ) -> Result<Option<N>, PluginError> {
        if value.is_empty() {
            return Ok(None);
        }
        let net = self.parse_net(field, value)?;
        let Some(n) = family(net) else {
            return Err(self.invalid(field, value, "wrong address family"));
        };
        match asked {
            Some(a) if a != n => Err(self.invalid(
                field,
                value,
                format!(
                    "the endpoint has {a} already; a plugin may only fill in what was left empty"
                ),
            )),
            Some(_) => Ok(None),
            None => Ok(Some(n)),
        }
    }
}

fn v4(net: IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(n),
        IpNet::V6(_) => None,
    }
}

fn v6(net: IpNet) -> Option<Ipv6Net> {
    match net {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    }
}

/// What cnm already gave an endpoint: its addresses and MAC, if any.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    mac: Option<MacAddress>,
}

/// Checks `CreateEndpoint`'s answer against what the request gave.
fn assigned(
    check: &AnswerCheck<'_>,
    spec: Asked,
    answer: &wire::CreateEndpointResponse,
) -> Result<Filled, PluginError> {
    let Some(i) = answer.interface.as_ref().filter(|i| !i.is_empty()) else {
        return Ok(Filled::default());
    };
    let ipv4 = check.filled("Interface.Address", &i.address, spec.ipv4, v4)?;
    let ipv6 = check.filled("Interface.AddressIPv6", &i.address_ipv6, spec.ipv6, v6)?;
    let mac = if i.mac_address.is_empty() {
        None
    } else {
        let mac: MacAddress = i.mac_address.parse().map_err(|e| {
            check.invalid(
                "Interface.MacAddress",
                &i.mac_address,
                format!("not a MAC address ({e})"),
            )
        })?;
        match spec.mac {
            Some(asked) if asked != mac => {
                return Err(check.invalid(
                    "Interface.MacAddress",
                    &i.mac_address,
                    format!("the endpoint has MAC {asked} already; a plugin may only fill in what was left empty"),
                ));
            }
            Some(_) => None,
            None => Some(mac),
        }
    };
    Ok(Filled { ipv4, ipv6, mac })
}

/// Turns `Join`'s answer into the SPI's [`JoinInfo`], refusing what cannot be applied.
fn join_info(
    check: &AnswerCheck<'_>,
    answer: &wire::JoinResponse,
) -> Result<JoinInfo, PluginError> {
    let interface = match answer
        .interface_name
        .as_ref()
        .filter(|n| !n.src_name.is_empty())
    {
        None => JoinedInterface::None,
        Some(n) => {
            let host_name = IfName::new(n.src_name.clone())
                .map_err(|e| check.invalid("InterfaceName.SrcName", &n.src_name, e.to_string()))?;
            let name_prefix = if n.dst_prefix.is_empty() {
                None
            } else {
                // The controller appends the interface's index (at most 5 digits in practice).
                let long = format!("{}99999", n.dst_prefix);
                IfName::new(long).map_err(|_| {
                    check.invalid(
                        "InterfaceName.DstPrefix",
                        &n.dst_prefix,
                        "with an index appended it is not a valid interface name (at most 10 bytes, no '/', ':' or whitespace)",
                    )
                })?;
                Some(n.dst_prefix.clone())
            };
            JoinedInterface::MoveIn {
                host_name,
                name_prefix,
            }
        }
    };
    let mut info = JoinInfo::new(interface);
    if !answer.gateway.is_empty() {
        info.gateway_v4 = Some(match check.parse_addr("Gateway", &answer.gateway)? {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => {
                return Err(check.invalid("Gateway", &answer.gateway, "not an IPv4 address"));
            }
        });
    }
    if !answer.gateway_ipv6.is_empty() {
        info.gateway_v6 = Some(
            match check.parse_addr("GatewayIPv6", &answer.gateway_ipv6)? {
                IpAddr::V6(a) => a,
                IpAddr::V4(_) => {
                    return Err(check.invalid(
                        "GatewayIPv6",
                        &answer.gateway_ipv6,
                        "not an IPv6 address",
                    ));
                }
            },
        );
    }
    for r in &answer.static_routes {
        let destination = check
            .parse_net("StaticRoutes.Destination", &r.destination)?
            .trunc();
        let next_hop = match (r.route_type, r.next_hop.as_str()) {
            (wire::ROUTE_NEXT_HOP, "") => {
                return Err(check.invalid(
                    "StaticRoutes.NextHop",
                    "",
                    format!("route to {destination} has RouteType 0 (next hop) but no NextHop"),
                ));
            }
            (wire::ROUTE_NEXT_HOP, hop) => {
                let hop = check.parse_addr("StaticRoutes.NextHop", hop)?;
                if hop.is_ipv4() != matches!(destination, IpNet::V4(_)) {
                    return Err(check.invalid(
                        "StaticRoutes.NextHop",
                        &r.next_hop,
                        format!("not of the family of {destination}"),
                    ));
                }
                Some(hop)
            }
            (wire::ROUTE_CONNECTED, "") => None,
            (wire::ROUTE_CONNECTED, hop) => {
                return Err(check.invalid(
                    "StaticRoutes.NextHop",
                    hop,
                    "a connected route (RouteType 1) has no next hop",
                ));
            }
            (other, _) => {
                return Err(check.invalid(
                    "StaticRoutes.RouteType",
                    &other.to_string(),
                    "expected 0 (next hop) or 1 (connected)",
                ));
            }
        };
        info.static_routes.push(StaticRoute {
            destination,
            next_hop,
        });
    }
    info.disable_gateway_service = answer.disable_gateway_service;
    Ok(info)
}

#[async_trait]
impl Driver for RemoteDriver {
    fn name(&self) -> &str {
        self.client.name()
    }

    /// The plugin's scope; endpoints get IPAM addresses; the subnets are not assumed routed in
    /// the host (the plugin's data plane is its own), so the controller does not refuse a
    /// subnet for overlapping the host's networks.
    fn capability(&self) -> Capability {
        Capability::local()
            .with_scope(self.scope)
            .with_host_routes(false)
    }

    async fn configure(&self, options: &DriverOptions) -> Result<(), DriverError> {
        match options.keys().next() {
            None => Ok(()),
            Some(key) => Err(self.error(RemoteError::Configure {
                driver: self.client.name().to_owned(),
                key: key.clone(),
            })),
        }
    }

    /// The plugin owns its option keys and checks them in `CreateNetwork`: they pass through
    /// as given (in [`NetworkSpec::options`]), nothing is parsed here.
    fn parse_network_options(
        &self,
        _options: &DriverOptions,
    ) -> Result<ParsedOptions, DriverError> {
        Ok(ParsedOptions::none())
    }

    /// The plugin owns its endpoint option keys too (`CreateEndpoint` and `Join` carry them).
    fn parse_endpoint_options(
        &self,
        _options: &DriverOptions,
    ) -> Result<ParsedOptions, DriverError> {
        Ok(ParsedOptions::none())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        let space = self.address_space();
        let request = wire::CreateNetworkRequest {
            network_id: spec.id.clone(),
            options: network_options(spec),
            ipv4_data: spec.ipv4.iter().map(|d| ipam_data(space, d)).collect(),
            ipv6_data: spec.ipv6.iter().map(|d| ipam_data(space, d)).collect(),
        };
        match self
            .client
            .call_json::<wire::Response>(wire::CREATE_NETWORK, &request)
            .await
        {
            Ok(_) => Ok(()),
            Err(cause) => {
                let inverse = wire::DeleteNetworkRequest {
                    network_id: spec.id.clone(),
                };
                Err(self.error(self.undo(cause, wire::DELETE_NETWORK, &inverse).await))
            }
        }
    }

    /// The plugin keeps its own state across cnm's restarts (as with Docker): nothing is sent;
    /// the adapter takes back what it remembers of each endpoint.
    async fn restore_network(
        &self,
        _spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        let mut map = self.lock();
        for ep in endpoints {
            map.entry(ep.spec.endpoint_id.clone())
                .or_insert_with(|| EndpointState {
                    ipv4: ep.spec.ipv4,
                    ipv6: ep.spec.ipv6,
                });
        }
        Ok(())
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        let request = wire::DeleteNetworkRequest {
            network_id: network_id.to_owned(),
        };
        self.send(wire::DELETE_NETWORK, &request)
            .await
            .map_err(|e| self.error(e.into()))
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        let request = wire::CreateEndpointRequest {
            network_id: spec.network_id.clone(),
            endpoint_id: spec.endpoint_id.clone(),
            interface: wire::EndpointInterface {
                address: spec.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                address_ipv6: spec.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                mac_address: spec.mac.map(|m| m.to_string()).unwrap_or_default(),
            },
            options: string_options(&spec.options),
        };
        let inverse = wire::EndpointRequest::new(&spec.network_id, &spec.endpoint_id);
        let asked = Asked {
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            mac: spec.mac,
        };
        let assigned = self
            .call_checked(
                (wire::CREATE_ENDPOINT, &request),
                (wire::DELETE_ENDPOINT, &inverse),
                |check, answer: &wire::CreateEndpointResponse| assigned(check, asked, answer),
            )
            .await?;
        self.lock().insert(
            spec.endpoint_id.clone(),
            EndpointState {
                ipv4: spec.ipv4.or(assigned.ipv4),
                ipv6: spec.ipv6.or(assigned.ipv6),
            },
        );
        // Addresses the plugin filled in are the endpoint's: the controller uses them (and
        // holds them in IPAM when they lie in one of the network's pools), as libnetwork does.
        let mut info = EndpointInfo::with_mac(assigned.mac);
        if let Some(a) = assigned.ipv4 {
            info = info.ipv4(a);
        }
        if let Some(a) = assigned.ipv6 {
            info = info.ipv6(a);
        }
        Ok(info)
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.send_endpoint(wire::DELETE_ENDPOINT, network_id, endpoint_id)
            .await?;
        self.lock().remove(endpoint_id);
        Ok(())
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        let body = wire::JoinRequest {
            network_id: request.network_id.clone(),
            endpoint_id: request.endpoint_id.clone(),
            sandbox_key: request.sandbox.key.display().to_string(),
            options: string_options(&request.options),
        };
        let inverse = wire::EndpointRequest::new(&request.network_id, &request.endpoint_id);
        self.call_checked((wire::JOIN, &body), (wire::LEAVE, &inverse), join_info)
            .await
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        self.send_endpoint(wire::LEAVE, &request.network_id, &request.endpoint_id)
            .await
    }

    /// Sends the bindings as Docker does (`com.docker.network.portmap`, one entry per container
    /// port, and `com.docker.network.endpoint.exposedports`); the plugin publishes them. A
    /// plugin without the call (404) publishes nothing, as in Docker. The bindings are returned
    /// as given: the protocol does not tell which host ports a plugin chose.
    async fn program_external_connectivity(
        &self,
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        let PublishRequest {
            network_id,
            endpoint_id,
            bindings,
            ..
        } = *request;
        let ip = {
            let endpoints = self.lock();
            endpoints.get(endpoint_id).and_then(|e| {
                e.ipv4
                    .map(|a| IpAddr::V4(a.addr()))
                    .or(e.ipv6.map(|a| IpAddr::V6(a.addr())))
            })
        };
        let request = wire::ProgramExternalConnectivityRequest {
            network_id: network_id.to_owned(),
            endpoint_id: endpoint_id.to_owned(),
            options: port_options(ip, bindings),
        };
        match self
            .client
            .call_json_optional::<wire::Response>(wire::PROGRAM_EXTERNAL_CONNECTIVITY, &request)
            .await
        {
            Ok(_) => Ok(bindings.to_vec()),
            Err(cause) => {
                let inverse = wire::EndpointRequest::new(network_id, endpoint_id);
                Err(self.error(
                    self.undo(cause, wire::REVOKE_EXTERNAL_CONNECTIVITY, &inverse)
                        .await,
                ))
            }
        }
    }

    async fn revoke_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.send_endpoint(wire::REVOKE_EXTERNAL_CONNECTIVITY, network_id, endpoint_id)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use cnm_core::PortRange;

    use super::*;

    const CHECK: AnswerCheck<'static> = AnswerCheck {
        plugin: "p",
        call: wire::JOIN,
    };

    fn answer(json: &str) -> wire::JoinResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_join_answer_becomes_a_move_in_with_gateway_and_routes() {
        let info = join_info(
            &CHECK,
            &answer(
                r#"{"InterfaceName": {"SrcName": "veth1", "DstPrefix": "rmt"},
                    "Gateway": "10.0.0.1", "GatewayIPv6": "fd00::1",
                    "StaticRoutes": [
                        {"Destination": "10.9.0.1/16", "RouteType": 0, "NextHop": "10.0.0.254"},
                        {"Destination": "192.0.2.0/24", "RouteType": 1}],
                    "DisableGatewayService": true}"#,
            ),
        )
        .unwrap();
        assert_eq!(
            info.interface,
            JoinedInterface::MoveIn {
                host_name: IfName::new("veth1").unwrap(),
                name_prefix: Some("rmt".into()),
            }
        );
        assert_eq!(info.gateway_v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            info.gateway_v6,
            Some("fd00::1".parse::<Ipv6Addr>().unwrap())
        );
        assert_eq!(
            info.static_routes,
            [
                StaticRoute {
                    destination: "10.9.0.0/16".parse().unwrap(),
                    next_hop: Some("10.0.0.254".parse().unwrap()),
                },
                StaticRoute {
                    destination: "192.0.2.0/24".parse().unwrap(),
                    next_hop: None,
                },
            ]
        );
        assert!(info.disable_gateway_service);
        // No interface name: nothing to move in. An empty prefix: the controller's ethN.
        assert_eq!(
            join_info(&CHECK, &answer("{}")).unwrap().interface,
            JoinedInterface::None
        );
        let info = join_info(&CHECK, &answer(r#"{"InterfaceName": {"SrcName": "v"}}"#)).unwrap();
        assert!(matches!(
            info.interface,
            JoinedInterface::MoveIn {
                name_prefix: None,
                ..
            }
        ));
    }

    #[test]
    fn a_join_answer_that_cannot_be_applied_is_refused_naming_the_field() {
        for (json, field) in [
            (
                r#"{"InterfaceName": {"SrcName": "a-name-far-too-long"}}"#,
                "InterfaceName.SrcName",
            ),
            (
                r#"{"InterfaceName": {"SrcName": "v", "DstPrefix": "waytoolongprefix"}}"#,
                "InterfaceName.DstPrefix",
            ),
            (r#"{"Gateway": "fd00::1"}"#, "Gateway"),
            (r#"{"Gateway": "nonsense"}"#, "Gateway"),
            (r#"{"GatewayIPv6": "10.0.0.1"}"#, "GatewayIPv6"),
            (
                r#"{"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 0}]}"#,
                "StaticRoutes.NextHop",
            ),
            (
                r#"{"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 1, "NextHop": "10.0.0.1"}]}"#,
                "StaticRoutes.NextHop",
            ),
            (
                r#"{"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 0, "NextHop": "fd00::1"}]}"#,
                "StaticRoutes.NextHop",
            ),
            (
                r#"{"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 7}]}"#,
                "StaticRoutes.RouteType",
            ),
            (
                r#"{"StaticRoutes": [{"Destination": "10.0.0.0", "RouteType": 1}]}"#,
                "StaticRoutes.Destination",
            ),
        ] {
            let e = join_info(&CHECK, &answer(json)).unwrap_err();
            let PluginError::InvalidAnswer { field: f, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(*f, field, "{json}: {e}");
            assert!(
                e.to_string()
                    .starts_with("plugin \"p\": NetworkDriver.Join: invalid "),
                "{e}"
            );
            assert!(
                e.may_have_acted(),
                "the plugin did the join: it must be undone"
            );
        }
    }

    fn spec() -> Asked {
        Asked {
            ipv4: Some("10.0.0.2/24".parse().unwrap()),
            ..Asked::default()
        }
    }

    #[test]
    fn a_plugin_may_fill_in_but_not_change_the_interface() {
        let check = AnswerCheck {
            plugin: "p",
            call: wire::CREATE_ENDPOINT,
        };
        let a: wire::CreateEndpointResponse = serde_json::from_str(
            r#"{"Interface": {"Address": "10.0.0.2/24", "AddressIPv6": "fd00::2/64",
                              "MacAddress": "02:00:00:00:00:01"}}"#,
        )
        .unwrap();
        let got = assigned(&check, spec(), &a).unwrap();
        assert_eq!(
            got.ipv4, None,
            "the same address echoed back is not the plugin's choice"
        );
        assert_eq!(got.ipv6, Some("fd00::2/64".parse().unwrap()));
        assert_eq!(got.mac, Some("02:00:00:00:00:01".parse().unwrap()));
        let a: wire::CreateEndpointResponse =
            serde_json::from_str(r#"{"Interface": {"Address": "10.0.0.9/24"}}"#).unwrap();
        let e = assigned(&check, spec(), &a).unwrap_err();
        assert!(e.to_string().contains("has 10.0.0.2/24 already"), "{e}");
        let a: wire::CreateEndpointResponse =
            serde_json::from_str(r#"{"Interface": {"AddressIPv6": "10.0.0.9/24"}}"#).unwrap();
        assert!(assigned(&check, spec(), &a).is_err());
    }

    #[test]
    fn network_options_and_pools_as_dockerd_sends_them() {
        let mut spec = NetworkSpec::new("nid", "net");
        spec.options.insert("com.example.mtu".into(), "1400".into());
        spec.internal = true;
        let v = serde_json::to_value(network_options(&spec)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "com.docker.network.generic": {"com.example.mtu": "1400"},
                "com.docker.network.enable_ipv6": false,
                "com.docker.network.internal": true,
            })
        );
        let data = IpamData {
            pool: "10.1.0.0/24".parse::<Ipv4Net>().unwrap(),
            gateway: Some("10.1.0.1/24".parse().unwrap()),
            aux_addresses: [("r".to_owned(), "10.1.0.5".parse().unwrap())].into(),
        };
        let w = ipam_data("LocalDefault", &data);
        assert_eq!(w.pool, "10.1.0.0/24");
        assert_eq!(w.gateway, "10.1.0.1/24");
        assert_eq!(w.aux_addresses["r"], "10.1.0.5/24");
    }

    #[test]
    fn published_ports_one_entry_per_container_port() {
        let b = PortBinding {
            proto: Protocol::Udp,
            container_port: PortRange::new(53, 54).unwrap(),
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: Some(PortRange::new(5353, 5354).unwrap()),
        };
        let o = port_options(Some("10.0.0.2".parse().unwrap()), &[b]);
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            serde_json::json!({
                "com.docker.network.portmap": [
                    {"Proto": 17, "IP": "10.0.0.2", "Port": 53, "HostIP": "127.0.0.1",
                     "HostPort": 5353, "HostPortEnd": 5353},
                    {"Proto": 17, "IP": "10.0.0.2", "Port": 54, "HostIP": "127.0.0.1",
                     "HostPort": 5354, "HostPortEnd": 5354}],
                "com.docker.network.endpoint.exposedports": [
                    {"Proto": 17, "Port": 53}, {"Proto": 17, "Port": 54}],
            })
        );
        assert!(port_options(None, &[]).is_empty());
    }
}
