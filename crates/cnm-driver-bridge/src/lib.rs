//! The bridge network driver: one Linux bridge per network, a veth per endpoint, NAT, isolation
//! and published ports, as Docker's `bridge` driver.
//!
//! **Owns**
//! - parsing the bridge options (Docker's keys) into [`BridgeOptions`] and planning a network
//!   ([`BridgePlan`]) before anything is created;
//! - the bridge link (name, pinned MAC, MTU, gateway addresses, its sysctls), forwarding in the host
//!   namespace (never an open router: see `forwarding.rs`), and the veth pair of each endpoint,
//!   whose container end is born inside the sandbox with its final name, its bridge port guarded
//!   against spoofing before it exists;
//! - host port reservations (real sockets bound in the host namespace, held while published);
//! - asking the host namespace's shared firewall (the controller's, see
//!   [`DriverContext::firewall`]) for the network's rules, the endpoint's guarded port and its
//!   port mappings, all in the built-in bridge fragment; on a restart they only fill the
//!   firewall's model until the controller commits every driver's rules in one transaction.
//!
//! **Does not**
//! - render or apply nftables rules itself (`cnm-firewall` does);
//! - put addresses or routes inside the sandbox, or pick its default gateway (the controller does,
//!   from the [`JoinInfo`] it gets back);
//! - persist anything: the controller owns the records.
//!
//! Every operation plans first (pure, all validation), then applies its effects with an undo list,
//! so a failure at any step leaves nothing behind.
//!
//! ```
//! use cnm_driver_bridge::{BridgeOptions, BridgePlan};
//! use cnm_core::spi::{DriverOptions, IpamData, NetworkSpec};
//!
//! let mut raw = DriverOptions::new();
//! raw.insert("com.docker.network.bridge.name".into(), "br-web".into());
//! let opts = BridgeOptions::try_from(&raw).unwrap();
//! let mut spec = NetworkSpec::new("3f2a9c0d1e2b4a5c", "net1");
//! spec.mtu = Some(1400); // Docker's generic MTU label, parsed by the controller
//! spec.ipv4.push(IpamData {
//!     pool: "172.18.0.0/16".parse().unwrap(),
//!     gateway: Some("172.18.0.1/16".parse().unwrap()),
//!     aux_addresses: Default::default(),
//! });
//! let plan = BridgePlan::new(&opts, &spec).unwrap();
//! assert_eq!(plan.bridge.as_str(), "br-web");
//! assert_eq!(plan.mtu, Some(1400));
//!
//! // A known key's value is checked; an unknown key is kept without effect, and named.
//! raw.insert("com.docker.network.bridge.enable_icc".into(), "maybe".into());
//! assert!(BridgeOptions::try_from(&raw).unwrap_err().to_string().contains("maybe"));
//! raw.remove("com.docker.network.bridge.enable_icc");
//! raw.insert("com.docker.network.bridge.bogus".into(), "1".into());
//! assert!(BridgeOptions::try_from(&raw).is_ok());
//! assert_eq!(
//!     cnm_driver_bridge::options::unknown_keys(&raw),
//!     ["com.docker.network.bridge.bogus"]
//! );
//! ```

mod error;
#[cfg(feature = "test-hooks")]
mod fault;
mod firewall;
mod forwarding;
pub mod options;
mod plan;
mod ports;
mod restore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cnm_core::port::{PortBinding, Protocol};
use cnm_core::spi::{
    Capability, Conflict, Driver, DriverContext, DriverError, DriverOptions, EndpointInfo,
    EndpointSpec, HasEndpoints, JoinInfo, JoinRequest, JoinedInterface, LeaveRequest, Lookup,
    NetworkSpec, Networks, ParsedOptions, PublishRequest, find_endpoint, find_network,
};
use cnm_core::undo::{Cleanup, Undo};
use cnm_core::{async_trait, register_driver};
use cnm_firewall::{EndpointMappings, PortMapping};
use cnm_sandbox::{LinkKind, LinkSpec, Netlink, set_sysctls};
use cnm_types::{ErrorKind, FailedTo, IfName, InvalidTo, MacAddress};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::OnceCell;

pub use error::BridgeError;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use fault::FaultPoint;
pub use options::{BridgeOptions, DriverConfig, GatewayMode};
pub use plan::BridgePlan;
pub use restore::endpoint_veth_name;

#[cfg(feature = "test-hooks")]
use crate::fault::Faults;
use crate::firewall::FirewallHandle;
use crate::ports::Reservation;

/// Drivers made by [`BridgeDriver::create`], by host namespace identity (tests reach the
/// instance a controller made through it).
#[cfg(feature = "test-hooks")]
#[allow(clippy::type_complexity)]
static INSTANCES: Mutex<Vec<((u64, u64), std::sync::Weak<BridgeDriver>)>> = Mutex::new(Vec::new());

/// Fails here when a test armed this fault point; nothing without the `test-hooks` feature.
macro_rules! fault_point {
    ($driver:expr, $point:ident) => {
        #[cfg(feature = "test-hooks")]
        $driver.faults.check(crate::fault::FaultPoint::$point)?;
    };
}

/// The registered name of this driver.
pub const DRIVER_NAME: &str = "bridge";

register_driver!(DRIVER_NAME, BridgeDriver::create);

/// The bridge driver for one controller (one host namespace).
#[derive(Debug)]
pub struct BridgeDriver {
    ctx: DriverContext,
    networks: Networks<Network>,
    /// The shared firewall, once the forward drop of an earlier run is back in it.
    firewall: OnceCell<FirewallHandle>,
    /// Forwarding (IPv4, IPv6) a restore needs, waiting for the firewall's commit.
    deferred_forwarding: Mutex<[bool; 2]>,
    /// Driver-wide options (`configure_network_driver`).
    config: Mutex<DriverConfig>,
    #[cfg(feature = "test-hooks")]
    faults: Faults,
}

#[derive(Debug)]
struct Network {
    plan: BridgePlan,
    /// The bridge's interface index in the host namespace.
    bridge_index: u32,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl HasEndpoints for Network {
    type Endpoint = Endpoint;

    fn endpoints(&self) -> &Mutex<HashMap<String, Arc<Endpoint>>> {
        &self.endpoints
    }
}

#[derive(Debug)]
struct Endpoint {
    id: String,
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    mac: MacAddress,
    state: Mutex<EndpointState>,
}

#[derive(Debug, Default)]
struct EndpointState {
    /// The host end of the veth, while joined.
    joined: Option<IfName>,
    /// Published ports, while programmed.
    published: Option<Published>,
}

#[derive(Debug)]
struct Published {
    /// Held open while the mappings exist; dropped after the rules are gone.
    #[expect(dead_code, reason = "held only so that dropping it closes the sockets")]
    reservations: Vec<Reservation>,
}

/// Locks a std mutex; a poisoned lock still guards consistent data here (every critical section
/// is a plain map or field update that cannot panic half-way).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BridgeDriver {
    /// Builds the driver for the host namespace in `ctx` (the registration's constructor).
    pub fn create(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        let driver = Arc::new(Self::new(ctx.clone()));
        #[cfg(feature = "test-hooks")]
        {
            let mut all = lock(&INSTANCES);
            all.retain(|(id, weak)| weak.strong_count() > 0 && *id != ctx.host_ns.id());
            all.push((ctx.host_ns.id(), Arc::downgrade(&driver)));
        }
        Ok(driver)
    }

    /// The driver instance most recently created for `host_ns` by a controller (tests use it to
    /// inject faults and read counters of the instance the controller owns).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn instance_for(host_ns: &cnm_sandbox::NetNs) -> Option<Arc<BridgeDriver>> {
        let all = lock(&INSTANCES);
        all.iter()
            .rev()
            .find(|(id, _)| *id == host_ns.id())
            .and_then(|(_, weak)| weak.upgrade())
    }

    /// Builds the driver (for tests and embedders that want the concrete type).
    pub fn new(ctx: DriverContext) -> Self {
        Self {
            ctx,
            networks: Mutex::new(HashMap::new()),
            firewall: OnceCell::new(),
            deferred_forwarding: Mutex::new([false; 2]),
            config: Mutex::new(DriverConfig::default()),
            #[cfg(feature = "test-hooks")]
            faults: Faults::default(),
        }
    }

    /// Arms a one-shot failure right after `point` (tests only; inert unless called).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn inject_fault(&self, point: Option<FaultPoint>) {
        self.faults.arm(point);
    }

    /// The host namespace's shared firewall, as this driver uses it (tests watch it heal, or
    /// pause its healing to show what happens without it).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn firewall_for_tests(&self) -> Result<cnm_firewall::Firewall, BridgeError> {
        Ok(self.firewall().await?.firewall().clone())
    }

    /// How many transactions the host namespace's shared firewall has committed so far (every
    /// driver's, restores included).
    pub async fn firewall_transactions(&self) -> Result<u64, BridgeError> {
        Ok(self.firewall().await?.transactions())
    }

    /// The shared firewall; on first use, the families cnm turned on in an earlier run get
    /// their drop of foreign forwarded traffic back.
    async fn firewall(&self) -> Result<&FirewallHandle, BridgeError> {
        self.firewall
            .get_or_try_init(|| async {
                let fw = FirewallHandle::new(self.ctx.firewall().clone());
                self.restore_forward_drop(&fw).await?;
                Ok(fw)
            })
            .await
    }

    fn network(&self, id: &str) -> Result<Arc<Network>, BridgeError> {
        Ok(find_network(&self.networks, id)?)
    }

    fn endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(Arc<Network>, Arc<Endpoint>), BridgeError> {
        Ok(find_endpoint(&self.networks, network_id, endpoint_id)?)
    }

    async fn create_network_inner(&self, spec: &NetworkSpec) -> Result<(), BridgeError> {
        let plan = BridgePlan::new(options_of(spec)?, spec)?;
        {
            let nets = lock(&self.networks);
            if nets.contains_key(&spec.id) {
                return Err(Lookup::NetworkExists(spec.id.clone()).into());
            }
            if let Some(other) = nets.values().find(|n| n.plan.bridge == plan.bridge) {
                return Err(BridgeError::BridgeNameInUse {
                    name: plan.bridge.to_string(),
                    owner: format!("network {}", other.plan.network_id),
                });
            }
        }
        let bridge = plan.bridge.as_str();
        if self
            .ctx
            .host_netlink
            .link(bridge)
            .await
            .map_err(|e| BridgeError::failed("look up link", bridge, e))?
            .is_some()
        {
            return Err(BridgeError::BridgeNameInUse {
                name: bridge.to_owned(),
                owner: "an existing link".to_owned(),
            });
        }
        let firewall = self.firewall().await?.clone();
        let mut undo = Undo::new();
        let result = self.apply_network(&plan, None, &firewall, &mut undo).await;
        let bridge_index = undo.finish(result).await?;
        tracing::debug!(network = %short(&spec.id), bridge = %plan.bridge, "bridge network created");
        self.add_network(spec, plan, bridge_index);
        Ok(())
    }

    /// Makes the bridge of `plan` what the plan says, the one path of create and restore: the
    /// bridge created (or, `existing`, adopted as the kernel kept it), its sysctls, its mark, its
    /// gateway addresses (those the kernel kept stay), up, forwarding in the host, the network's
    /// firewall rules. Returns the bridge's index.
    async fn apply_network(
        &self,
        plan: &BridgePlan,
        existing: Option<u32>,
        firewall: &FirewallHandle,
        undo: &mut Undo<BridgeError>,
    ) -> Result<u32, BridgeError> {
        let host = &self.ctx.host_netlink;
        let bridge = plan.bridge.as_str();
        if existing.is_none() {
            let mut link = LinkSpec::new(plan.bridge.clone(), LinkKind::Bridge);
            link.mtu = plan.mtu;
            link.mac = Some(plan.mac);
            host.create_link(&link).await.map_err(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    // Lost a race with someone creating the same name.
                    BridgeError::BridgeNameInUse {
                        name: bridge.to_owned(),
                        owner: "an existing link".to_owned(),
                    }
                } else {
                    BridgeError::failed("create bridge", bridge, e)
                }
            })?;
            let (netlink, name) = (host.clone(), bridge.to_owned());
            undo.push("delete bridge", move || async move {
                delete_link_by_name(&netlink, &name).await
            });
            fault_point!(self, NetworkBridgeCreated);
        }

        let sysctls = plan.bridge_sysctls();
        let pairs: Vec<(&str, &str)> = sysctls
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        set_sysctls(&self.ctx.host_ns, &pairs)
            .await
            .map_err(|e| BridgeError::failed("set sysctls of bridge", bridge, e))?;
        fault_point!(self, NetworkSysctlsSet);

        let index = match existing {
            Some(index) => index,
            None => {
                host.link(bridge)
                    .await
                    .map_err(|e| BridgeError::failed("look up bridge", bridge, e))?
                    .ok_or_else(|| {
                        BridgeError::from(Conflict::vanished("configure bridge", bridge))
                    })?
                    .index
            }
        };
        // Marked as ours, so the sweep after a crash can tell it from anyone else's.
        host.set_alias(index, &restore::alias(&plan.network_id))
            .await
            .map_err(|e| BridgeError::failed("mark bridge", bridge, e))?;
        for addr in plan.bridge_addresses() {
            match host.add_address(index, addr).await {
                Ok(()) => {}
                // Adopted: the kernel kept it across the restart.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && existing.is_some() => {}
                Err(e) => {
                    return Err(BridgeError::failed(
                        "add gateway address to bridge",
                        format!("{bridge} ({addr})"),
                        e,
                    ));
                }
            }
        }
        fault_point!(self, NetworkAddressesAdded);

        host.set_up(index)
            .await
            .map_err(|e| BridgeError::failed("bring up bridge", bridge, e))?;
        fault_point!(self, NetworkBridgeUp);

        self.enable_forwarding(&plan.forwarding(), firewall).await?;
        fault_point!(self, NetworkForwardingEnabled);

        firewall.add_network(plan).await?;
        {
            let (firewall, network_id) = (firewall.clone(), plan.network_id.clone());
            undo.push("remove network rules", move || async move {
                firewall.remove_network(&network_id).await
            });
        }
        fault_point!(self, NetworkFirewallProgrammed);
        Ok(index)
    }

    /// Takes a network on, its bridge at `bridge_index`.
    fn add_network(&self, spec: &NetworkSpec, plan: BridgePlan, bridge_index: u32) {
        lock(&self.networks).insert(
            spec.id.clone(),
            Arc::new(Network {
                plan,
                bridge_index,
                endpoints: Mutex::new(HashMap::new()),
            }),
        );
    }

    async fn delete_network_inner(&self, network_id: &str) -> Result<(), BridgeError> {
        let net = {
            let mut nets = lock(&self.networks);
            let net = nets
                .get(network_id)
                .cloned()
                .ok_or_else(|| Lookup::NetworkNotFound(network_id.to_owned()))?;
            if !lock(&net.endpoints).is_empty() {
                return Err(BridgeError::from(Conflict::new(
                    "delete network",
                    network_id,
                    "it still has endpoints",
                )));
            }
            nets.remove(network_id);
            net
        };
        let mut errors = Vec::new();
        match self.firewall().await {
            Ok(fw) => {
                if let Err(e) = fw.remove_network(network_id).await {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        if let Err(e) = delete_link_by_name(&self.ctx.host_netlink, net.plan.bridge.as_str()).await
        {
            errors.push(e);
        }
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(first) => Err(first.with_cleanup(errors.collect())),
        }
    }

    async fn join_inner(&self, req: &JoinRequest) -> Result<JoinInfo, BridgeError> {
        let (net, ep) = self.endpoint(&req.network_id, &req.endpoint_id)?;
        if lock(&ep.state).joined.is_some() {
            return Err(BridgeError::from(Conflict::new(
                "join",
                format!("endpoint {}", short(&ep.id)),
                "it is already joined",
            )));
        }
        let plan = &net.plan;
        let mac = req.mac.unwrap_or(ep.mac);
        // Named after the endpoint: the name is the mark the restore finds it by. An alias
        // would cost the kernel a walk of the host's IPv6 routes per join (see restore.rs).
        let mut host_if = IfName::new(endpoint_veth_name(&req.endpoint_id)).map_err(|e| {
            BridgeError::invalid("endpoint id", req.endpoint_id.clone(), e.to_string())
        })?;
        let host = &self.ctx.host_netlink;
        // The index noted when the bridge was made: no lookup per join. Should the bridge be
        // gone, the veth create fails and the lookup below says so.
        let bridge_index = net.bridge_index;
        // With a user prefix the controller names the interface, so it is born in the host
        // namespace and moved in; otherwise it is born in the sandbox with its final name.
        let move_in = plan.iface_prefix.clone();
        let peer_name = match &move_in {
            Some(_) => random_veth_name()?,
            None => req.ifname.clone(),
        };
        let mut spec = LinkSpec::new(
            host_if.clone(),
            LinkKind::Veth {
                peer_name: peer_name.clone(),
                peer_ns: if move_in.is_some() {
                    None
                } else {
                    Some(req.sandbox.ns.clone())
                },
                peer_mac: Some(mac),
                peer_mtu: plan.mtu,
                peer_up: false,
            },
        );
        spec.mtu = plan.mtu;
        spec.master = Some(bridge_index);
        spec.up = true;

        let firewall = self.firewall().await?.clone();
        let mut undo = Undo::new();
        let (v4, v6) = (ep.ipv4.map(|a| a.addr()), ep.ipv6.map(|a| a.addr()));
        let guard = async |port: &IfName| {
            firewall
                .guard_port(&req.network_id, &req.endpoint_id, port, mac, v4, v6)
                .await
        };
        let result = async {
            // Guarded before it exists: no frame from the port ever passes unchecked.
            guard(&host_if).await?;
            {
                let (firewall, endpoint_id) = (firewall.clone(), req.endpoint_id.clone());
                undo.push("remove endpoint rules", move || async move {
                    firewall.remove_endpoint(&endpoint_id).await
                });
            }
            fault_point!(self, JoinPortGuarded);
            let mut created = host.create_link(&spec).await;
            let mut marked = false;
            if let Err(e) = &created
                && e.errno() == Some(libc::EEXIST)
            {
                // The endpoint's name is taken (another endpoint's id shares its first 11
                // characters, or a link not ours has it): a random name, marked by alias.
                tracing::debug!(veth = %host_if, endpoint = %short(&req.endpoint_id), "veth name taken: a random one, marked by alias");
                host_if = random_veth_name()?;
                spec.name = host_if.clone();
                firewall.remove_endpoint(&req.endpoint_id).await?;
                guard(&host_if).await?;
                created = host.create_link(&spec).await;
                marked = true;
            }
            if let Err(e) = created {
                if let Ok(None) = host.link(plan.bridge.as_str()).await {
                    return Err(BridgeError::from(Conflict::new(
                        "join",
                        format!("network {}", short(&plan.network_id)),
                        "its bridge is missing",
                    )));
                }
                return Err(BridgeError::failed(
                    "create veth",
                    format!(
                        "{host_if} (peer {peer_name} in {}) on bridge {}",
                        req.sandbox.ns, plan.bridge
                    ),
                    e,
                ));
            }
            {
                let (netlink, name) = (host.clone(), host_if.to_string());
                undo.push("delete veth", move || async move {
                    delete_link_by_name(&netlink, &name).await
                });
            }
            fault_point!(self, JoinVethCreated);
            if marked {
                // Marked with the endpoint's id: the restore finds a joined endpoint's veth by
                // it when the name does not say.
                host.set_alias_by_name(&host_if, &restore::alias(&req.endpoint_id))
                    .await
                    .map_err(|e| BridgeError::failed("mark veth", host_if.to_string(), e))?;
            }
            if !plan.icc {
                isolate_port(host, &host_if).await?;
            }

            if let Some(prefix) = move_in {
                fault_point!(self, JoinSysctlsSet);
                fault_point!(self, JoinInterfaceFound);
                return Ok((
                    host_if.clone(),
                    JoinedInterface::MoveIn {
                        host_name: peer_name,
                        name_prefix: Some(prefix),
                    },
                ));
            }
            // No sysctl here: the controller's sandboxes give every interface born in them
            // IPv6 off (CVE-2024-32473: no link-local IPv6 on "IPv4-only" interfaces), and it
            // turns IPv6 on for an IPv6 endpoint's interface. That saved a thread per join.
            fault_point!(self, JoinSysctlsSet);

            let index = sandbox_link(&req.sandbox, &req.ifname)
                .await?
                .map(|l| l.index);
            fault_point!(self, JoinInterfaceFound);
            Ok((host_if.clone(), JoinedInterface::InSandbox { index }))
        }
        .await;
        let (host_if, interface) = undo.finish(result).await?;
        lock(&ep.state).joined = Some(host_if);
        let mut info = JoinInfo::new(interface);
        if plan.internal {
            info.disable_gateway_service = true;
        } else {
            info.gateway_v4 = plan.gateway_v4_for(ep.ipv4);
            info.gateway_v6 = plan.gateway_v6_for(ep.ipv6);
        }
        Ok(info)
    }

    async fn leave_inner(&self, network_id: &str, endpoint_id: &str) -> Result<(), BridgeError> {
        let (_, ep) = self.endpoint(network_id, endpoint_id)?;
        let joined = lock(&ep.state).joined.take();
        let Some(host_if) = joined else {
            return Err(BridgeError::from(Conflict::new(
                "leave",
                format!("endpoint {}", short(endpoint_id)),
                "it is not joined",
            )));
        };
        if let Err(e) = self.unplug(&ep, &host_if).await {
            lock(&ep.state).joined = Some(host_if);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes an endpoint's veth, then, in one transaction, its guarded port and published
    /// ports (the port is gone first: a port without its elements would pass unchecked), then
    /// frees its host ports. Published ports never outlive the join.
    async fn unplug(&self, ep: &Endpoint, host_if: &IfName) -> Result<(), BridgeError> {
        delete_link_by_name(&self.ctx.host_netlink, host_if.as_str()).await?;
        let published = lock(&ep.state).published.take();
        match self.firewall().await?.remove_endpoint(&ep.id).await {
            // Rules are gone: now the host ports may be freed.
            Ok(()) => {
                drop(published);
                Ok(())
            }
            Err(e) => {
                lock(&ep.state).published = published;
                Err(e)
            }
        }
    }

    /// Publishes one endpoint's ports: the batch of one (see [`Self::program_batch_inner`]).
    async fn program_inner(
        &self,
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, BridgeError> {
        let mut made = self
            .program_batch_inner(std::slice::from_ref(request))
            .await?;
        Ok(made.pop().unwrap_or_default())
    }

    /// Publishes the ports of one or many endpoints (a restart re-publishes every sandbox's in
    /// one call): every request planned first, every host port reserved in one trip to the
    /// host namespace, and every mapping installed in one firewall transaction (issue 15: one
    /// trip each per endpoint made a restart with 10,000 endpoints wait on the firewall). All
    /// or nothing.
    async fn program_batch_inner(
        &self,
        requests: &[PublishRequest<'_>],
    ) -> Result<Vec<Vec<PortBinding>>, BridgeError> {
        // Bad input is refused before any effect.
        let mut planned = Vec::with_capacity(requests.len());
        for r in requests {
            let (net, ep) = self.endpoint(r.network_id, r.endpoint_id)?;
            let ports = port_requests(&net, &ep, r.bindings)?;
            planned.push((r, ep, ports));
        }
        // Programming again replaces what was there (no firewall trip for an endpoint that
        // publishes nothing, as on a restart).
        for r in requests {
            self.revoke_inner(r.network_id, r.endpoint_id).await?;
        }
        if planned.iter().all(|(_, _, ports)| ports.is_empty()) {
            return Ok(vec![Vec::new(); requests.len()]);
        }
        let firewall = self.firewall().await?.clone();
        let for_thread: Vec<Vec<ports::PortRequest>> =
            planned.iter().map(|(_, _, ports)| ports.clone()).collect();
        // One thread in the host namespace for every endpoint's sockets; on failure the ones
        // bound so far are closed as the partial list is dropped.
        let reservations = self
            .ctx
            .host_ns
            .run(move || {
                for_thread
                    .iter()
                    .map(|ports| ports::reserve(ports))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| {
                BridgeError::failed("reserve host ports in", self.ctx.host_ns.to_string(), e)
            })??;
        let mut batch = Vec::with_capacity(planned.len());
        let mut made = Vec::with_capacity(planned.len());
        let mut udp = Vec::new();
        for ((r, _, ports), res) in planned.iter().zip(&reservations) {
            let (mappings, bindings) = mappings_of(ports, res);
            udp.extend(
                mappings
                    .iter()
                    .filter(|m| m.proto == Protocol::Udp)
                    .copied(),
            );
            batch.push(EndpointMappings {
                network_id: r.network_id.to_owned(),
                endpoint_id: r.endpoint_id.to_owned(),
                mappings,
            });
            made.push(bindings);
        }
        let mut undo: Undo<BridgeError> = Undo::new();
        let result = async {
            fault_point!(self, PublishPortsReserved);
            let published: Vec<String> = batch
                .iter()
                .filter(|e| !e.mappings.is_empty())
                .map(|e| e.endpoint_id.clone())
                .collect();
            firewall.add_port_mappings_batch(batch).await?;
            {
                let firewall = firewall.clone();
                undo.push("remove port mappings", move || async move {
                    for endpoint_id in &published {
                        firewall.remove_port_mappings(endpoint_id).await?;
                    }
                    Ok(())
                });
            }
            fault_point!(self, PublishFirewallProgrammed);
            // A UDP flow conntracked before the mapping existed (or towards a previous
            // container) would keep bypassing the new DNAT rule until it times out.
            if !udp.is_empty() {
                firewall.flush_conntrack(&udp).await?;
            }
            fault_point!(self, PublishConntrackFlushed);
            Ok(())
        }
        .await;
        undo.finish(result).await?;
        for ((_, ep, _), reservations) in planned.iter().zip(reservations) {
            if !reservations.is_empty() {
                lock(&ep.state).published = Some(Published { reservations });
            }
        }
        Ok(made)
    }

    async fn revoke_inner(&self, network_id: &str, endpoint_id: &str) -> Result<(), BridgeError> {
        let (_, ep) = self.endpoint(network_id, endpoint_id)?;
        let published = lock(&ep.state).published.take();
        let Some(published) = published else {
            return Ok(());
        };
        let result = match self.firewall().await {
            Ok(fw) => fw.remove_port_mappings(endpoint_id).await,
            Err(e) => Err(e),
        };
        match result {
            // Rules are gone: now the host ports may be freed.
            Ok(()) => {
                drop(published);
                Ok(())
            }
            Err(e) => {
                lock(&ep.state).published = Some(published);
                Err(e)
            }
        }
    }
}

/// Checks an endpoint's bindings against its network and decides host addresses and DNAT
/// targets (see [`ports::plan`]). Pure.
fn port_requests(
    net: &Network,
    ep: &Endpoint,
    bindings: &[PortBinding],
) -> Result<Vec<ports::PortRequest>, BridgeError> {
    if net.plan.internal
        && let Some(b) = bindings.first()
    {
        return Err(BridgeError::invalid(
            "port binding",
            b.to_string(),
            "an internal network has no route to the outside to publish ports on",
        ));
    }
    // An isolated family publishes nothing: its address is left out, as if the endpoint
    // had none of that family (the other family of the network publishes as usual).
    ports::plan(
        bindings,
        net.plan.host_binding_ip,
        ep.ipv4
            .map(|n| n.addr())
            .filter(|_| !net.plan.internal_for(false)),
        ep.ipv6
            .map(|n| n.addr())
            .filter(|_| !net.plan.internal_for(true)),
    )
}

/// The firewall's mappings for reserved requests, and the bindings as made (host ports
/// resolved).
fn mappings_of(
    requests: &[ports::PortRequest],
    reservations: &[ports::Reservation],
) -> (Vec<PortMapping>, Vec<PortBinding>) {
    let mut mappings = Vec::new();
    let mut made = Vec::with_capacity(requests.len());
    for (req, res) in requests.iter().zip(reservations) {
        for (host_ip, container_ip) in &req.targets {
            mappings.push(PortMapping {
                proto: req.binding.proto,
                // Unspecified: every address of the container address's family.
                host_ip: (!host_ip.is_unspecified()).then_some(*host_ip),
                host_ports: (res.host_ports.start, res.host_ports.end),
                container_ip: *container_ip,
                container_ports: (
                    req.binding.container_port.start,
                    req.binding.container_port.end,
                ),
            });
        }
        made.push(PortBinding {
            host_port: Some(res.host_ports),
            ..req.binding
        });
    }
    (mappings, made)
}

/// ICC off: the host end of the veth becomes an isolated bridge port, so the bridge forwards
/// no frame between two ports of the network while each still reaches the bridge (the gateway)
/// and, routed through it, the outside. This replaces br_netfilter, which made every bridged
/// frame of every bridge in the namespace traverse the IP hooks. Routed traffic between the
/// containers (sent to the gateway's MAC) is still dropped by the firewall's `icc_off` set.
async fn isolate_port(host: &cnm_sandbox::Netlink, host_if: &IfName) -> Result<(), BridgeError> {
    let object = || format!("{host_if} in {}", host.netns());
    let index = host
        .link(host_if.as_str())
        .await
        .map_err(|e| BridgeError::failed("look up", object(), e))?
        .map(|l| l.index)
        .ok_or(BridgeError::from(Conflict::vanished(
            "isolate bridge port",
            format!("veth {host_if}"),
        )))?;
    host.set_bridge_port_isolated(index, true)
        .await
        .map_err(|e| BridgeError::failed("isolate bridge port", object(), e))
}

/// The bridge options a network's spec carries, as [`Driver::parse_network_options`] made them.
fn options_of(spec: &NetworkSpec) -> Result<&BridgeOptions, BridgeError> {
    spec.parsed.get::<BridgeOptions>().ok_or_else(|| {
        BridgeError::from(Conflict::new(
            "set up network",
            short(&spec.id),
            "its options were not parsed by the bridge driver",
        ))
    })
}

/// Deletes a link by name; a link already gone is fine (a sandbox deleted first takes its veth).
///
/// Returns once the kernel has unlisted the link, not when it has freed it (see
/// [`Netlink::delete_link_named`]: that saves the 15-40 ms of RCU grace periods per veth).
pub(crate) async fn delete_link_by_name(netlink: &Netlink, name: &str) -> Result<(), BridgeError> {
    netlink
        .delete_link_named(name)
        .await
        .map(drop)
        .map_err(|e| BridgeError::failed("delete link", name, e))
}

/// The link called `name` in a sandbox, if there is one.
pub(crate) async fn sandbox_link(
    sandbox: &cnm_core::spi::SandboxRef,
    name: &IfName,
) -> Result<Option<cnm_sandbox::Link>, BridgeError> {
    sandbox
        .netlink
        .link(name.as_str())
        .await
        .map_err(|e| BridgeError::failed("look up", format!("{name} in {}", sandbox.ns), e))
}

/// `veth` and 7 random hex digits, as Docker names host-side veths.
fn random_veth_name() -> Result<IfName, BridgeError> {
    let n: u32 = rand::random::<u32>() & 0x0fff_ffff;
    let name = format!("veth{n:07x}");
    IfName::new(name.clone()).map_err(|e| BridgeError::invalid("veth name", name, e.to_string()))
}

/// The first 12 characters of an id, for logs and messages.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[async_trait]
impl Driver for BridgeDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn capability(&self) -> Capability {
        Capability::local()
    }

    async fn configure(&self, options: &DriverOptions) -> Result<(), DriverError> {
        let config = DriverConfig::try_from(options)?;
        *lock(&self.config) = config;
        if let Some(fw) = self.firewall.get() {
            self.apply_forward_drop_config(fw).await?;
        }
        Ok(())
    }

    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        Ok(ParsedOptions::new(BridgeOptions::try_from(options)?))
    }

    fn unknown_network_options(&self, options: &DriverOptions) -> Vec<String> {
        options::unknown_keys(options)
    }

    /// The bridge has no endpoint option of its own (MAC, ports, the interface's name and
    /// sysctls are generic, the controller's): any other key is kept without effect, as Docker's
    /// bridge keeps it (compose's and the CLI's `--driver-opt`); one in cnm's namespace is a typo
    /// and refused.
    fn parse_endpoint_options(
        &self,
        options: &DriverOptions,
    ) -> Result<ParsedOptions, DriverError> {
        options::check_endpoint_options(options)?;
        Ok(ParsedOptions::none())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        Ok(self.create_network_inner(spec).await?)
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        Ok(self.delete_network_inner(network_id).await?)
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        // Endpoint options: none of the bridge's own (see `parse_endpoint_options`).
        let net = self.network(&spec.network_id)?;
        let mac = spec.segment_mac(DRIVER_NAME)?;
        let mut eps = lock(&net.endpoints);
        if eps.contains_key(&spec.endpoint_id) {
            let e = Lookup::endpoint_exists(&spec.network_id, &spec.endpoint_id);
            return Err(BridgeError::from(e).into());
        }
        eps.insert(
            spec.endpoint_id.clone(),
            Arc::new(Endpoint {
                id: spec.endpoint_id.clone(),
                ipv4: spec.ipv4,
                ipv6: spec.ipv6,
                mac,
                state: Mutex::new(EndpointState::default()),
            }),
        );
        Ok(EndpointInfo::with_mac(Some(mac)))
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let (net, ep) = self.endpoint(network_id, endpoint_id)?;
        // Tolerate a controller that deletes without leaving first: undo what is still there.
        let joined = lock(&ep.state).joined.take();
        match joined {
            Some(host_if) => {
                if let Err(e) = self.unplug(&ep, &host_if).await {
                    lock(&ep.state).joined = Some(host_if);
                    return Err(e.into());
                }
            }
            None => self.revoke_inner(network_id, endpoint_id).await?,
        }
        lock(&net.endpoints).remove(endpoint_id);
        Ok(())
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        Ok(self.join_inner(request).await?)
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        Ok(self
            .leave_inner(&request.network_id, &request.endpoint_id)
            .await?)
    }

    async fn program_external_connectivity(
        &self,
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        Ok(self.program_inner(request).await?)
    }

    async fn program_external_connectivity_batch(
        &self,
        requests: &[PublishRequest<'_>],
    ) -> Result<Vec<Vec<PortBinding>>, DriverError> {
        Ok(self.program_batch_inner(requests).await?)
    }

    async fn revoke_external_connectivity(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        Ok(self.revoke_inner(network_id, endpoint_id).await?)
    }

    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[cnm_core::spi::RestoredEndpoint],
    ) -> Result<(), DriverError> {
        Ok(self.restore_network_inner(spec, endpoints).await?)
    }

    async fn sweep(&self, keep: &[String]) -> Result<(), DriverError> {
        Ok(self.sweep_inner(keep).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = random_veth_name().unwrap();
        assert_eq!(a.as_str().len(), 11);
        assert!(a.as_str().starts_with("veth"));
        let names: std::collections::HashSet<_> =
            (0..64).map(|_| random_veth_name().unwrap()).collect();
        assert!(names.len() > 60);
    }

    #[test]
    fn short_ids() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }
}
