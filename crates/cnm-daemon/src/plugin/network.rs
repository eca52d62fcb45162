//! `NetworkDriver.*`: cnm's drivers behind libnetwork's remote driver protocol.
//!
//! A Docker network is the cnm network named by Docker's `NetworkID`, on the cnm driver named
//! by the driver option `com.cnm.driver` (default `bridge`), with exactly the pools and gateways
//! dockerd's IPAM chose. A Docker endpoint is the cnm endpoint named by its `EndpointID`, with
//! the addresses dockerd gives (cnm's IPAM of the network reserves them, and picks them only
//! when dockerd gives none). Both live in cnm's durable store: a cnmd restart keeps serving them.
//!
//! **Shared networks.** With the driver option `com.cnm.network=NAME` (and `--ipam-driver
//! null`), the Docker network is no new cnm network but the existing cnm network `NAME`, of any
//! driver: an overlay over etcd shared by every host's dockerd and cnm's own containers, or a
//! local bridge shared with cnm's containers. Its addresses are cnm's to give (for an overlay,
//! one allocator in etcd for all hosts; dockerd's IPAM of each host would hand out the same
//! addresses twice), so dockerd must bring none: its pools must be the null IPAM's `0.0.0.0/0`,
//! and `CreateEndpoint` answers the address cnm chose. `DeleteNetwork` forgets the mapping and
//! leaves the cnm network to cnm. Why not a global-scope plugin: see [`super::mapping`].
//!
//! **Costs.** A Docker endpoint costs a cnm sandbox (a namespace bind-mounted in the run dir,
//! its hosts and resolv.conf, a netlink socket, a record), because cnm's drivers build the
//! container end inside a sandbox and cnm configures it there. A network this plugin makes has
//! cnm's embedded DNS off (dockerd's containers use dockerd's resolver), so the sandbox has no
//! listener; a shared network keeps its own setting, for cnm's containers on it. The sandbox is
//! made with [`cnm::JoinOption::NoGatewayNetwork`]: on an overlay it gets no endpoint on cnm's
//! gateway network, since dockerd gives the container its own way out (docker_gwbridge).
//!
//! **Join.** libnetwork's remote driver expects the plugin to leave an interface in the host
//! namespace and name it (`InterfaceName {SrcName, DstPrefix}`); dockerd then moves it into the
//! container, renames it `ethN` in its own numbering, gives it the addresses it allocated and
//! sets the default route through the `Gateway` answered. cnm joins the endpoint into a cnm
//! sandbox of its own (container id `docker-<EndpointID>`), so the driver builds the veth (host
//! end on the bridge, MAC, MTU) exactly as for any cnm container; the container end is then
//! moved out of that sandbox into the host namespace as `cnm<first 12 hex of EndpointID>`, and
//! handed to dockerd. Adopting dockerd's namespace as the sandbox instead was rejected: cnm would
//! pick `eth0` itself and add its own default route, colliding with the interfaces and gateway
//! dockerd manages for the container's other networks.
//!
//! **Leave.** dockerd calls `Leave` while the interface is still in the container, then moves it
//! back to the host namespace; the veth is deleted at `DeleteEndpoint`, when cnm's endpoint
//! leaves and deletes its sandbox (deleting the host end deletes the pair wherever the other
//! end is). `Leave` only checks that the endpoint is joined.
//!
//! **Published ports.** dockerd 20.10 sends `docker run -p` to the container's gateway
//! endpoint in `ProgramExternalConnectivity`'s `Options` (`com.docker.network.portmap`, one
//! container port per entry, and `com.docker.network.endpoint.exposedports`), after `Join`.
//! They are parsed into cnm's bindings (every entry checked first, errors name the entry and
//! field) and published with [`Endpoint::publish_ports`]: the cnm driver's own port mapping
//! (for bridge: host-port reservation, DNAT in cnm's nftables table, repaired after a flush),
//! recorded with the endpoint so a cnmd restart publishes them again.
//! `RevokeExternalConnectivity` withdraws them. cnm's sandbox of the endpoint has that one
//! endpoint, so it is always its gateway endpoint; dockerd decides which endpoint of the
//! container gets the ports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use cnm::cnm_types::{IfName, MacAddress};
use cnm::ipnet::IpNet;
use cnm::{CoreError, Endpoint, EndpointOptions, Network, NetworkOptions, PoolConfig};
use cnm_driver_remote::wire::network as wire;
use serde_json::Value;

use super::{Field, PluginState, body, error_reply, reply};

type St = State<Arc<PluginState>>;

/// The driver option choosing the cnm driver of a network (`-o com.cnm.driver=bridge`).
pub const DRIVER_OPTION: &str = "com.cnm.driver";
/// The driver option mapping a Docker network onto the existing cnm network it names
/// (`-o com.cnm.network=NAME`, with `--ipam-driver null`).
pub const NETWORK_OPTION: &str = "com.cnm.network";
/// The cnm driver of a network made without [`DRIVER_OPTION`].
pub const DEFAULT_DRIVER: &str = "bridge";
/// The container id of the cnm sandbox an endpoint is joined to: this prefix and its id.
pub const SANDBOX_PREFIX: &str = "docker-";
/// The prefix of the name the interface has in the host namespace between `Join` and dockerd
/// moving it (followed by the endpoint id's first 12 characters: 15 bytes, the kernel's limit).
pub const HOST_IF_PREFIX: &str = "cnm";

fn fail(msg: impl Into<String>) -> Response {
    error_reply(Field::Err, StatusCode::OK, msg)
}

fn ok() -> Response {
    reply(StatusCode::OK, &serde_json::json!({}))
}

fn core_err(op: &str, what: &str, e: CoreError) -> Response {
    fail(format!("cnm: {op} {what}: {e}"))
}

pub(crate) async fn capabilities() -> Response {
    reply(
        StatusCode::OK,
        &wire::CapabilitiesResponse {
            scope: "local".into(),
            connectivity_scope: "local".into(),
            err: String::new(),
        },
    )
}

/// The network dockerd calls `id`: the cnm network it is mapped onto, or else the cnm network
/// of that name (never an id prefix of another).
fn network(st: &PluginState, id: &str) -> Result<Network, String> {
    if id.is_empty() {
        return Err("NetworkID is empty".into());
    }
    let mapped = st.networks.get(id);
    let name = mapped.as_deref().unwrap_or(id);
    let what = match &mapped {
        Some(m) => format!("network {id} (cnm network {m:?})"),
        None => format!("network {id}"),
    };
    match cnm_network(st, name) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(format!("{what} not found")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The cnm network named `name` exactly, if there is one.
fn cnm_network(st: &PluginState, name: &str) -> Result<Option<Network>, CoreError> {
    match st.ctl.network(name) {
        Ok(n) if n.name() == name => Ok(Some(n)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == cnm::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The endpoint `endpoint_id` of the network dockerd calls `network_id`, if it is (still) there.
fn endpoint_of(
    st: &PluginState,
    network_id: &str,
    endpoint_id: &str,
) -> Result<Option<Endpoint>, String> {
    endpoint(&network(st, network_id)?, endpoint_id)
}

/// The network dockerd calls `network_id` and its endpoint `endpoint_id`, which must exist.
fn existing_endpoint(
    st: &PluginState,
    network_id: &str,
    endpoint_id: &str,
) -> Result<(Network, Endpoint), String> {
    let net = network(st, network_id)?;
    match endpoint(&net, endpoint_id)? {
        Some(ep) => Ok((net, ep)),
        None => Err(format!("endpoint {endpoint_id} not found")),
    }
}

fn endpoint(net: &Network, id: &str) -> Result<Option<Endpoint>, String> {
    if id.is_empty() {
        return Err("EndpointID is empty".into());
    }
    match net.endpoint(id) {
        Ok(ep) if ep.name() == id => Ok(Some(ep)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == cnm::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("endpoint {id}: {e}")),
    }
}

fn string_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn flag(options: &wire::Options, key: &str) -> bool {
    match options.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// Parses one `IPv4Data`/`IPv6Data` entry into a pool with its gateway and aux addresses.
fn pool_of(field: &str, d: &wire::IpamData) -> Result<PoolConfig, String> {
    let subnet: IpNet = d
        .pool
        .parse()
        .map_err(|e| format!("{field}.Pool {:?}: {e}", d.pool))?;
    let mut pool = PoolConfig::new(subnet);
    if !d.gateway.is_empty() {
        let gw = parse_addr(&d.gateway).map_err(|e| format!("{field}.Gateway {e}"))?;
        pool = pool
            .with_gateway(gw)
            .map_err(|e| format!("{field}.Gateway: {e}"))?;
    }
    for (name, addr) in &d.aux_addresses {
        let a = parse_addr(addr).map_err(|e| format!("{field}.AuxAddresses[{name}] {e}"))?;
        pool = pool
            .with_aux_address(name.clone(), a)
            .map_err(|e| format!("{field}.AuxAddresses[{name}]: {e}"))?;
    }
    Ok(pool)
}

/// An address as Docker writes it: CIDR (`10.0.0.1/24`) or bare.
fn parse_addr(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpNet>()
        .map(|n| n.addr())
        .or_else(|_| s.parse::<IpAddr>())
        .map_err(|e| format!("{s:?}: {e}"))
}

/// What `CreateNetwork` makes of a Docker network.
#[derive(Debug)]
enum NetworkPlan {
    /// A new cnm network named by the `NetworkID`: driver and options.
    New(String, NetworkOptions),
    /// The existing cnm network of this name ([`NETWORK_OPTION`]).
    Mapped(String),
}

/// The null IPAM's pools (`--ipam-driver null`): dockerd brings no addresses.
const NULL_POOLS: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// A mapped network (`com.cnm.network=NAME`): nothing else may be asked of it, since its driver,
/// options and addresses are cnm's.
fn plan_mapped(
    req: &wire::CreateNetworkRequest,
    name: String,
    generic: &BTreeMap<String, String>,
) -> Result<NetworkPlan, String> {
    if name.is_empty() {
        return Err(format!(
            "driver option {NETWORK_OPTION}=\"\": want the name of a cnm network"
        ));
    }
    if let Some((k, v)) = generic.iter().next() {
        return Err(format!(
            "driver option {k}={v:?}: the Docker network is cnm network {name:?} \
             ({NETWORK_OPTION}), whose driver and options are set in cnm"
        ));
    }
    let data = req.ipv4_data.iter().map(|d| ("IPv4Data", d));
    let data = data.chain(req.ipv6_data.iter().map(|d| ("IPv6Data", d)));
    for (i, (field, d)) in data.enumerate() {
        if !NULL_POOLS.contains(&d.pool.as_str()) {
            let i = if field == "IPv4Data" {
                i
            } else {
                i - req.ipv4_data.len()
            };
            return Err(format!(
                "{field}[{i}].Pool {:?}: the addresses of cnm network {name:?} \
                 ({NETWORK_OPTION}) are cnm's to give, shared by every host; create the Docker \
                 network with --ipam-driver null",
                d.pool
            ));
        }
    }
    if flag(&req.options, wire::INTERNAL) {
        return Err(format!(
            "Options.{}: whether cnm network {name:?} ({NETWORK_OPTION}) is internal is set in cnm",
            wire::INTERNAL
        ));
    }
    Ok(NetworkPlan::Mapped(name))
}

/// The network `req` asks for: driver, options and pools, all checked before anything is made.
fn plan_network(req: &wire::CreateNetworkRequest) -> Result<NetworkPlan, String> {
    let mut generic: BTreeMap<String, String> = match req.options.get(wire::GENERIC_OPTIONS) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), string_of(v))).collect(),
        Some(other) => {
            return Err(format!(
                "Options.{}: want an object, got {other}",
                wire::GENERIC_OPTIONS
            ));
        }
    };
    if let Some(name) = generic.remove(NETWORK_OPTION) {
        return plan_mapped(req, name, &generic);
    }
    let driver = generic
        .remove(DRIVER_OPTION)
        .unwrap_or_else(|| DEFAULT_DRIVER.to_owned());
    let builtin = cnm::builtin_drivers();
    if !builtin.contains(&driver.as_str()) {
        return Err(format!(
            "driver option {DRIVER_OPTION}={driver:?}: not a cnm driver; one of {}",
            builtin.join(", ")
        ));
    }
    let mut opts = NetworkOptions::default()
        .enable_ipv6(flag(&req.options, wire::ENABLE_IPV6) || !req.ipv6_data.is_empty())
        .enable_ipv4(!req.ipv4_data.is_empty())
        .internal(flag(&req.options, wire::INTERNAL));
    // dockerd's containers ask dockerd's own resolver (127.0.0.11 in their namespace); cnm's
    // listener would sit in the cnm sandbox the interface leaves at once: two sockets and a
    // resolv.conf per endpoint for nothing. `-o com.cnm.network.embedded_dns=true` keeps it.
    if !generic.contains_key(cnm::options::KEY_EMBEDDED_DNS) {
        opts = opts.driver_option(cnm::options::KEY_EMBEDDED_DNS, "false");
    }
    for (k, v) in generic {
        opts = opts.driver_option(k, v);
    }
    for (i, d) in req.ipv4_data.iter().enumerate() {
        opts = opts.pool(pool_of(&format!("IPv4Data[{i}]"), d)?);
    }
    for (i, d) in req.ipv6_data.iter().enumerate() {
        opts = opts.pool(pool_of(&format!("IPv6Data[{i}]"), d)?);
    }
    Ok(NetworkPlan::New(driver, opts))
}

pub(crate) async fn create_network(State(st): St, body: Bytes) -> Response {
    let req: wire::CreateNetworkRequest = body!(Field::Err, "NetworkDriver.CreateNetwork", body);
    if req.network_id.is_empty() {
        return fail("NetworkID is empty");
    }
    let (driver, opts) = match plan_network(&req) {
        Ok(NetworkPlan::New(driver, opts)) => (driver, opts),
        Ok(NetworkPlan::Mapped(name)) => return map_network(&st, &req.network_id, &name).await,
        Err(e) => return fail(e),
    };
    if let Some(name) = st.networks.get(&req.network_id) {
        return fail(format!(
            "network {} exists as cnm network {name:?} ({NETWORK_OPTION})",
            req.network_id
        ));
    }
    // dockerd may repeat a call whose answer it lost: the same network again is success.
    if let Ok(existing) = network(&st, &req.network_id) {
        let same = existing.driver() == driver
            && existing
                .options()
                .pools
                .iter()
                .map(PoolConfig::subnet)
                .eq(opts.pools.iter().map(PoolConfig::subnet));
        return if same {
            ok()
        } else {
            fail(format!(
                "network {} exists with other settings",
                req.network_id
            ))
        };
    }
    match st.ctl.new_network(&driver, &req.network_id, opts).await {
        Ok(net) => {
            tracing::info!(network = %req.network_id, cnm_id = net.id(), %driver, "docker plugin: network created");
            ok()
        }
        Err(e) => core_err("create network", &req.network_id, e),
    }
}

/// Maps Docker's network `id` onto the existing cnm network `name` (see [`NETWORK_OPTION`]).
async fn map_network(st: &PluginState, id: &str, name: &str) -> Response {
    // dockerd may repeat a call whose answer it lost: the same mapping again is success.
    match st.networks.get(id) {
        Some(m) if m == name => return ok(),
        Some(m) => return fail(format!("network {id} exists as cnm network {m:?}")),
        None => {}
    }
    let net = match cnm_network(st, name) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return fail(format!(
                "driver option {NETWORK_OPTION}={name:?}: no cnm network of that name (create it \
                 with cnm first; an overlay made on one host of the cluster is on every host)"
            ));
        }
        Err(e) => return core_err("find network", name, e),
    };
    if matches!(net.driver(), "null" | "host") {
        return fail(format!(
            "driver option {NETWORK_OPTION}={name:?}: its driver {} gives no interface to hand \
             to dockerd",
            net.driver()
        ));
    }
    if cnm_network(st, id).ok().flatten().is_some() {
        return fail(format!("network {id} exists as a cnm network of its own"));
    }
    match st.networks.insert(id, name).await {
        Ok(()) => {
            tracing::info!(network = %id, cnm_network = %name, cnm_id = net.id(), "docker plugin: network mapped");
            ok()
        }
        Err(e) => fail(format!("map network {id} onto cnm network {name:?}: {e}")),
    }
}

pub(crate) async fn delete_network(State(st): St, body: Bytes) -> Response {
    let req: wire::DeleteNetworkRequest = body!(Field::Err, "NetworkDriver.DeleteNetwork", body);
    if let Some(name) = st.networks.get(&req.network_id) {
        // The cnm network is cnm's (other hosts and containers may use it): only the mapping
        // goes, once dockerd's endpoints on it have.
        return match st.networks.remove(&req.network_id).await {
            Ok(()) => {
                tracing::info!(network = %req.network_id, cnm_network = %name, "docker plugin: network unmapped");
                ok()
            }
            Err(e) => fail(format!("unmap network {}: {e}", req.network_id)),
        };
    }
    let net = match st.ctl.network(&req.network_id) {
        Ok(n) if n.name() == req.network_id => n,
        // Deleting what is gone is done (dockerd may repeat the call).
        Ok(_) => return ok(),
        Err(e) if e.kind() == cnm::ErrorKind::NotFound => return ok(),
        Err(e) => return core_err("find network", &req.network_id, e),
    };
    match net.delete().await {
        Ok(()) => ok(),
        Err(e) => core_err("delete network", &req.network_id, e),
    }
}

/// An address dockerd gave, in CIDR notation; it must lie in the prefix it names.
fn endpoint_address(field: &str, s: &str) -> Result<Option<IpNet>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpNet>()
        .map(Some)
        .map_err(|e| format!("Interface.{field} {s:?}: {e}"))
}

pub(crate) async fn create_endpoint(State(st): St, body: Bytes) -> Response {
    let req: wire::CreateEndpointRequest = body!(Field::Err, "NetworkDriver.CreateEndpoint", body);
    let net = match network(&st, &req.network_id) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let iface = &req.interface;
    let planned = (|| -> Result<EndpointOptions, String> {
        let mut opts = EndpointOptions::default();
        match endpoint_address("Address", &iface.address)? {
            Some(IpNet::V4(a)) => opts = opts.ipv4(a.addr()),
            Some(IpNet::V6(_)) => {
                return Err(format!("Interface.Address {:?}: not IPv4", iface.address));
            }
            None => {}
        }
        match endpoint_address("AddressIPv6", &iface.address_ipv6)? {
            Some(IpNet::V6(a)) => opts = opts.ipv6(a.addr()),
            Some(IpNet::V4(_)) => {
                return Err(format!(
                    "Interface.AddressIPv6 {:?}: not IPv6",
                    iface.address_ipv6
                ));
            }
            None => {}
        }
        if !iface.mac_address.is_empty() {
            let mac = MacAddress::from_str(&iface.mac_address)
                .map_err(|e| format!("Interface.MacAddress {:?}: {e}", iface.mac_address))?;
            opts = opts.mac(mac);
        }
        Ok(opts)
    })();
    let opts = match planned {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if req.endpoint_id.is_empty() {
        return fail("EndpointID is empty");
    }
    let ep = match net.create_endpoint(&req.endpoint_id, opts).await {
        Ok(ep) => ep,
        Err(e) => return core_err("create endpoint", &req.endpoint_id, e),
    };
    // Only what dockerd left empty may be answered: it refuses to change what it set.
    let mut out = wire::EndpointInterface::default();
    if iface.address.is_empty()
        && let Some(a) = ep.ipv4()
    {
        out.address = a.to_string();
    }
    if iface.address_ipv6.is_empty()
        && let Some(a) = ep.ipv6()
    {
        out.address_ipv6 = a.to_string();
    }
    if iface.mac_address.is_empty()
        && let Some(m) = ep.mac()
    {
        out.mac_address = m.to_string();
    }
    tracing::info!(network = %req.network_id, endpoint = %req.endpoint_id, "docker plugin: endpoint created");
    reply(
        StatusCode::OK,
        &wire::CreateEndpointResponse {
            interface: (!out.is_empty()).then_some(out),
            err: String::new(),
        },
    )
}

pub(crate) async fn endpoint_oper_info(State(st): St, body: Bytes) -> Response {
    let req: wire::EndpointRequest = body!(Field::Err, "NetworkDriver.EndpointOperInfo", body);
    let (net, ep) = match existing_endpoint(&st, &req.network_id, &req.endpoint_id) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let mut value = BTreeMap::new();
    if let Some(m) = ep.mac() {
        value.insert(
            "com.docker.network.endpoint.macaddress".to_owned(),
            Value::String(m.to_string()),
        );
    }
    value.insert(
        "com.cnm.endpoint.id".to_owned(),
        Value::String(ep.id().into()),
    );
    value.insert(
        "com.cnm.network.id".to_owned(),
        Value::String(net.id().into()),
    );
    reply(
        StatusCode::OK,
        &wire::EndpointOperInfoResponse {
            value,
            err: String::new(),
        },
    )
}

fn sandbox_id(endpoint_id: &str) -> String {
    format!("{SANDBOX_PREFIX}{endpoint_id}")
}

/// The name of the interface in the host namespace between the join and dockerd moving it.
pub fn host_if_name(endpoint_id: &str) -> Result<IfName, String> {
    let short: String = endpoint_id.chars().take(12).collect();
    IfName::from_str(&format!("{HOST_IF_PREFIX}{short}"))
        .map_err(|e| format!("EndpointID {endpoint_id:?} gives no interface name: {e}"))
}

/// Leaves and deletes the cnm sandbox of a Docker endpoint, if it has one.
async fn unjoin(st: &PluginState, endpoint_id: &str) -> Result<(), CoreError> {
    match st.ctl.sandbox_by_container_id(&sandbox_id(endpoint_id)) {
        Ok(sb) => sb.delete().await,
        Err(e) if e.kind() == cnm::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn delete_endpoint(State(st): St, body: Bytes) -> Response {
    let req: wire::EndpointRequest = body!(Field::Err, "NetworkDriver.DeleteEndpoint", body);
    let ep = match endpoint_of(&st, &req.network_id, &req.endpoint_id) {
        Ok(Some(ep)) => ep,
        // Gone already: done (dockerd may repeat the call).
        Ok(None) => return ok(),
        Err(e) => return fail(e),
    };
    if let Err(e) = unjoin(&st, &req.endpoint_id).await {
        return core_err("leave the sandbox of endpoint", &req.endpoint_id, e);
    }
    match ep.delete().await {
        Ok(()) => ok(),
        Err(e) => core_err("delete endpoint", &req.endpoint_id, e),
    }
}

/// The address of the first pool's gateway, as dockerd takes it in a join: empty where the
/// network has none.
fn first_gateway<N: Copy + Into<IpNet>>(pools: &[cnm::IpamData<N>]) -> String {
    pools
        .first()
        .and_then(|d| d.gateway)
        .map(|g| g.into().addr().to_string())
        .unwrap_or_default()
}

pub(crate) async fn join(State(st): St, body: Bytes) -> Response {
    let req: wire::JoinRequest = body!(Field::Err, "NetworkDriver.Join", body);
    let (net, ep) = match existing_endpoint(&st, &req.network_id, &req.endpoint_id) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    let host_name = match host_if_name(&req.endpoint_id) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    // dockerd gives the container its way out (docker_gwbridge for a network without a
    // gateway, as for Docker's overlay): cnm's gateway endpoint would stay behind in the cnm
    // sandbox, a veth and an address per endpoint for nothing.
    let sb = match ep
        .join(
            &sandbox_id(&req.endpoint_id),
            [cnm::JoinOption::no_gateway_network()],
        )
        .await
    {
        Ok(sb) => sb,
        Err(e) => return core_err("join endpoint", &req.endpoint_id, e),
    };
    let moved = async {
        let ifname = sb
            .endpoints()
            .into_iter()
            .find(|(e, _)| e.id() == ep.id())
            .and_then(|(_, n)| n)
            .ok_or_else(|| "the joined endpoint has no interface".to_owned())?;
        let link = sb
            .netlink()
            .link(ifname.as_str())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("interface {ifname} is not in the sandbox"))?;
        sb.netlink()
            .move_to_netns(link.index, st.ctl.host_netns(), Some(&host_name))
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = moved {
        // Atomic or nothing: the sandbox goes, and the veth with it.
        let undo = sb.delete().await;
        let mut msg = format!(
            "cnm: join endpoint {}: hand its interface to dockerd as {host_name}: {e}",
            req.endpoint_id
        );
        if let Err(u) = undo {
            msg.push_str(&format!("; cleanup also failed: {u}"));
        }
        return fail(msg);
    }
    let internal = net.options().internal;
    let (gateway, gateway_ipv6) = if internal {
        Default::default()
    } else {
        (first_gateway(&net.ipv4()), first_gateway(&net.ipv6()))
    };
    tracing::info!(network = %req.network_id, endpoint = %req.endpoint_id, interface = %host_name, sandbox_key = %req.sandbox_key, "docker plugin: joined");
    reply(
        StatusCode::OK,
        &wire::JoinResponse {
            interface_name: Some(wire::InterfaceName {
                src_name: host_name.to_string(),
                dst_name: String::new(),
                dst_prefix: "eth".into(),
            }),
            gateway,
            gateway_ipv6,
            static_routes: Vec::new(),
            disable_gateway_service: internal,
            err: String::new(),
        },
    )
}

pub(crate) async fn leave(State(st): St, body: Bytes) -> Response {
    let req: wire::EndpointRequest = body!(Field::Err, "NetworkDriver.Leave", body);
    match endpoint_of(&st, &req.network_id, &req.endpoint_id) {
        Ok(Some(ep)) if ep.sandbox_id().is_some() => ok(),
        Ok(Some(_)) => fail(format!("endpoint {} is not joined", req.endpoint_id)),
        Ok(None) => fail(format!("endpoint {} not found", req.endpoint_id)),
        Err(e) => fail(e),
    }
}

/// Node discovery concerns global-scope drivers; every network served here is local.
pub(crate) async fn discover(body: Bytes) -> Response {
    let _: wire::DiscoveryNotification = body!(Field::Err, "NetworkDriver.DiscoverNew", body);
    ok()
}

/// Docker's published ports (`Options.com.docker.network.portmap`, one container port per
/// entry) as cnm's bindings, every entry checked before anything is programmed.
///
/// `HostPort` 0 is an ephemeral host port (cnm picks one); `HostPortEnd` equal to `HostPort`
/// (or 0) is that one port. A real range (`-p 8000-8009:80`) asks for any one free port of the
/// range, which cnm's bindings do not express: refused, naming the entry. `IP` (the container's
/// address) is not needed: cnm publishes to the endpoint's own address.
pub fn port_bindings(options: &wire::Options) -> Result<Vec<cnm::PortBinding>, String> {
    let field = |i: usize, f: &str| format!("Options.{}[{i}].{f}", wire::PORT_MAP);
    if let Some(v) = options.get(wire::EXPOSED_PORTS)
        && !v.is_null()
    {
        serde_json::from_value::<Vec<wire::TransportPort>>(v.clone())
            .map_err(|e| format!("Options.{}: {e}: {v}", wire::EXPOSED_PORTS))?;
    }
    let entries: Vec<wire::PortBinding> = match options.get(wire::PORT_MAP) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("Options.{}: {e}: {v}", wire::PORT_MAP))?,
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, b) in entries.iter().enumerate() {
        let proto = match b.proto {
            wire::proto::TCP => cnm::Protocol::Tcp,
            wire::proto::UDP => cnm::Protocol::Udp,
            wire::proto::SCTP => cnm::Protocol::Sctp,
            p => {
                return Err(format!(
                    "{} {p}: not tcp (6), udp (17) or sctp (132)",
                    field(i, "Proto")
                ));
            }
        };
        let container_port = cnm::PortRange::single(b.port)
            .map_err(|e| format!("{} {}: {e}", field(i, "Port"), b.port))?;
        let host_ip = if b.host_ip.is_empty() {
            None
        } else {
            Some(
                b.host_ip
                    .parse::<IpAddr>()
                    .map_err(|e| format!("{} {:?}: {e}", field(i, "HostIP"), b.host_ip))?,
            )
        };
        let host_port = match (b.host_port, b.host_port_end) {
            (0, 0) => None,
            (0, end) => {
                return Err(format!(
                    "{} {end} without HostPort: want both 0 for an ephemeral port",
                    field(i, "HostPortEnd")
                ));
            }
            (p, end) if end == 0 || end == p => Some(
                cnm::PortRange::single(p)
                    .map_err(|e| format!("{} {p}: {e}", field(i, "HostPort")))?,
            ),
            (p, end) if end < p => {
                return Err(format!(
                    "{} {end}: below HostPort {p}",
                    field(i, "HostPortEnd")
                ));
            }
            (p, end) => {
                return Err(format!(
                    "{} {end} (HostPort {p}): cnm publishes one container port on one host \
                     port, not on any free port of a range",
                    field(i, "HostPortEnd")
                ));
            }
        };
        let binding = cnm::PortBinding {
            proto,
            container_port,
            host_ip,
            host_port,
        };
        binding
            .validate()
            .map_err(|e| format!("Options.{}[{i}] {binding}: {e}", wire::PORT_MAP))?;
        out.push(binding);
    }
    Ok(out)
}

/// Publishes the ports dockerd asks for on the endpoint it names (the gateway endpoint of its
/// container), through cnm's own publishing ([`Endpoint::publish_ports`]: the cnm driver's
/// port mapping, one firewall transaction, recorded with the endpoint). Calling it again
/// replaces what was published.
pub(crate) async fn program_external_connectivity(State(st): St, body: Bytes) -> Response {
    let req: wire::ProgramExternalConnectivityRequest = body!(
        Field::Err,
        "NetworkDriver.ProgramExternalConnectivity",
        body
    );
    let bindings = match port_bindings(&req.options) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let (_, ep) = match existing_endpoint(&st, &req.network_id, &req.endpoint_id) {
        Ok(found) => found,
        Err(e) => return fail(e),
    };
    if bindings.is_empty() && ep.port_bindings().is_empty() {
        return ok();
    }
    match ep.publish_ports(bindings).await {
        Ok(made) => {
            tracing::info!(network = %req.network_id, endpoint = %req.endpoint_id, ports = ?made.iter().map(ToString::to_string).collect::<Vec<_>>(), "docker plugin: ports published");
            ok()
        }
        Err(e) => core_err("publish ports of endpoint", &req.endpoint_id, e),
    }
}

/// Withdraws the endpoint's published ports (done already when it is gone or never had any).
pub(crate) async fn revoke_external_connectivity(State(st): St, body: Bytes) -> Response {
    let req: wire::EndpointRequest =
        body!(Field::Err, "NetworkDriver.RevokeExternalConnectivity", body);
    let ep = match endpoint_of(&st, &req.network_id, &req.endpoint_id) {
        Ok(Some(ep)) => ep,
        Ok(None) => return ok(),
        Err(e) => return fail(e),
    };
    if ep.port_bindings().is_empty() || ep.sandbox_id().is_none() {
        return ok();
    }
    match ep.publish_ports(Vec::new()).await {
        Ok(_) => ok(),
        Err(e) => core_err("withdraw published ports of endpoint", &req.endpoint_id, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> wire::CreateNetworkRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_network_plan_takes_dockers_pools_and_options() {
        let plan = plan_network(&req(serde_json::json!({
            "NetworkID": "n1",
            "Options": {"com.docker.network.enable_ipv6": false,
                        "com.docker.network.generic": {"com.cnm.driver": "bridge",
                                                       "com.docker.network.driver.mtu": "1400"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24",
                          "Gateway": "10.9.0.1/24", "AuxAddresses": {"r": "10.9.0.5/24"}}],
            "IPv6Data": null
        })))
        .unwrap();
        let NetworkPlan::New(driver, opts) = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(driver, "bridge");
        assert_eq!(opts.pools.len(), 1);
        assert_eq!(opts.pools[0].gateway(), Some("10.9.0.1".parse().unwrap()));
        assert_eq!(
            opts.pools[0].aux_addresses()["r"],
            "10.9.0.5".parse::<IpAddr>().unwrap()
        );
        assert!(!opts.enable_ipv6 && opts.enable_ipv4 && !opts.internal);
        assert_eq!(
            opts.driver_options
                .get("com.docker.network.driver.mtu")
                .map(String::as_str),
            Some("1400")
        );
        assert!(!opts.driver_options.contains_key(DRIVER_OPTION));
        // dockerd's containers have dockerd's resolver: no cnm listener per endpoint.
        assert_eq!(
            opts.driver_options
                .get(cnm::options::KEY_EMBEDDED_DNS)
                .map(String::as_str),
            Some("false")
        );
    }

    #[test]
    fn bad_plans_name_the_field_and_value() {
        let err = plan_network(&req(serde_json::json!({
            "NetworkID": "n1",
            "Options": {"com.docker.network.generic": {"com.cnm.driver": "weave"}}
        })))
        .unwrap_err();
        assert!(err.contains("com.cnm.driver=\"weave\""), "{err}");
        let err = plan_network(&req(serde_json::json!({
            "NetworkID": "n1",
            "IPv4Data": [{"AddressSpace": "", "Pool": "10.9.0.0/33"}]
        })))
        .unwrap_err();
        assert!(err.contains("IPv4Data[0].Pool \"10.9.0.0/33\""), "{err}");
        let err = plan_network(&req(serde_json::json!({
            "NetworkID": "n1",
            "IPv4Data": [{"AddressSpace": "", "Pool": "10.9.0.0/24", "Gateway": "10.8.0.1/24"}]
        })))
        .unwrap_err();
        assert!(err.contains("IPv4Data[0].Gateway"), "{err}");
    }

    #[test]
    fn a_mapped_network_takes_the_null_ipams_pools_and_nothing_else() {
        let mapped = |generic: Value, v4: Value, v6: Value| {
            plan_network(&req(serde_json::json!({
                "NetworkID": "n1",
                "Options": {"com.docker.network.enable_ipv6": false,
                            "com.docker.network.generic": generic},
                "IPv4Data": v4,
                "IPv6Data": v6
            })))
        };
        let null4 = serde_json::json!([{"AddressSpace": "null", "Pool": "0.0.0.0/0"}]);
        let plan = mapped(
            serde_json::json!({"com.cnm.network": "ov"}),
            null4.clone(),
            serde_json::json!([]),
        )
        .unwrap();
        assert!(
            matches!(&plan, NetworkPlan::Mapped(n) if n == "ov"),
            "{plan:?}"
        );

        let err = mapped(
            serde_json::json!({"com.cnm.network": "ov"}),
            serde_json::json!([{"AddressSpace": "LocalDefault", "Pool": "10.0.0.0/24"}]),
            serde_json::json!([]),
        )
        .unwrap_err();
        assert!(err.contains("IPv4Data[0].Pool \"10.0.0.0/24\""), "{err}");
        assert!(err.contains("--ipam-driver null"), "{err}");
        let err = mapped(
            serde_json::json!({"com.cnm.network": "ov"}),
            null4.clone(),
            serde_json::json!([{"AddressSpace": "LocalDefault", "Pool": "fd00::/64"}]),
        )
        .unwrap_err();
        assert!(err.contains("IPv6Data[0].Pool \"fd00::/64\""), "{err}");
        let err = mapped(
            serde_json::json!({"com.cnm.network": "ov", "com.cnm.driver": "overlay"}),
            null4.clone(),
            serde_json::json!([]),
        )
        .unwrap_err();
        assert!(err.contains("com.cnm.driver=\"overlay\""), "{err}");
        let err = mapped(
            serde_json::json!({"com.cnm.network": ""}),
            null4,
            serde_json::json!([]),
        )
        .unwrap_err();
        assert!(err.contains("com.cnm.network=\"\""), "{err}");
    }

    #[test]
    fn dockers_port_map_becomes_cnm_bindings() {
        let opts: wire::Options = serde_json::from_value(serde_json::json!({
            "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}, {"Proto": 17, "Port": 53}],
            "com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 0},
                {"Proto": 6, "IP": "", "Port": 81, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}
            ]
        }))
        .unwrap();
        let got: Vec<String> = port_bindings(&opts)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        let want: Vec<String> = ["8080:80/tcp", "127.0.0.1:5353:53/udp", "81/tcp"]
            .iter()
            .map(|s| s.parse::<cnm::PortBinding>().unwrap().to_string())
            .collect();
        assert_eq!(got, want);
        assert!(port_bindings(&wire::Options::new()).unwrap().is_empty());
    }

    #[test]
    fn bad_port_maps_name_the_entry_and_field() {
        let entry = |proto: u8, port: u16, host_ip: &str, host_port: u16, end: u16| {
            serde_json::json!({"Proto": proto, "IP": "", "Port": port, "HostIP": host_ip,
                               "HostPort": host_port, "HostPortEnd": end})
        };
        let cases = [
            (entry(1, 80, "", 80, 80), "[0].Proto 1"),
            (entry(6, 0, "", 80, 80), "[0].Port 0"),
            (entry(6, 80, "x", 80, 80), "[0].HostIP \"x\""),
            (entry(6, 80, "", 8000, 8009), "[0].HostPortEnd 8009"),
            (entry(6, 80, "", 0, 9), "[0].HostPortEnd 9"),
            (entry(6, 80, "", 90, 80), "[0].HostPortEnd 80"),
        ];
        for (entry, want) in cases {
            let mut opts = wire::Options::new();
            opts.insert(wire::PORT_MAP.into(), Value::Array(vec![entry]));
            let err = port_bindings(&opts).unwrap_err();
            assert!(
                err.contains(&format!("com.docker.network.portmap{want}")),
                "{err}"
            );
        }
        let mut opts = wire::Options::new();
        opts.insert(wire::PORT_MAP.into(), Value::String("80".into()));
        assert!(
            port_bindings(&opts)
                .unwrap_err()
                .contains("com.docker.network.portmap")
        );
    }

    #[test]
    fn host_interface_names_fit_the_kernel() {
        let n = host_if_name(&"ab".repeat(32)).unwrap();
        assert_eq!(n.as_str(), "cnmabababababab");
        assert_eq!(n.as_str().len(), 15);
    }
}
