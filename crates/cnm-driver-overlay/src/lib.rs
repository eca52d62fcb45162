//! The overlay network driver: one network across the hosts of a cluster, as Docker's
//! `overlay`, with etcd (the controller's cluster store) as its control plane instead of
//! swarm's gossip.
//!
//! **Owns**
//! - the network's VXLAN id (VNI), taken once for the whole cluster with a create-if-absent
//!   key in the cluster store ([`Driver::allocate_network`]): from 4096 up, or the one asked
//!   for with Docker's `com.docker.network.driver.overlay.vxlanid_list`; two networks never
//!   share one;
//! - per network on each host, a bridge (`ov-<vni>`) with a VXLAN device (`vx-<vni>`, UDP 4789
//!   unless `com.cnm.overlay.vxlan_port` says otherwise, local address = the host's
//!   advertise address, learning off, ARP answered from its neighbour table) enslaved to it;
//!   MTU = the underlay's − 50 (− 70 over IPv6);
//! - a veth per joined endpoint, its container end born inside the sandbox, its host end on
//!   the bridge;
//! - each joined endpoint's fact (IP, MAC, VTEP) in the cluster store, under this host's lease
//!   ([`cnm_core::spi::Facts`]), and, per network, a task that watches the other hosts' facts
//!   and programs a static FDB entry (`dst <vtep>`) and a neighbour entry for each of their
//!   endpoints, removed when the fact goes (leave, delete, or the host's lease expiring). So
//!   nothing is flooded over the underlay (unless the network asks for it, below);
//! - with `com.cnm.overlay.bum=true` ([`options::BUM`]; beyond libnetwork, moby/libnetwork#552),
//!   multicast and broadcast across hosts by head-end replication: the VXLAN device's all-zeros
//!   FDB entry lists the VTEP of every other host with an endpoint on the network (`bridge fdb
//!   append 00:00:00:00:00:00 … dst <vtep>`), added with the host's first peer and removed with
//!   its last, by the same watch;
//! - with `encrypted` ([`options::ENCRYPTED`], Docker's `-o encrypted`, empty or `true`), the
//!   network's traffic between hosts inside WireGuard ([`wg`]): the kernel's (a `wireguard` link
//!   configured over generic netlink) where the kernel has it, else a userspace WireGuard over a
//!   TUN device, either named `cnm-wg0` (one per host, started by the first encrypted network;
//!   which one: [`OverlayDriver::wireguard_path`]), the VXLAN device
//!   local to this host's tunnel address (derived from its IPv4 advertise address), the other
//!   hosts' endpoints behind theirs, MTU = the underlay's − 70 (VXLAN over IPv6) − 60
//!   (WireGuard); host keys in the state dir, published through the cluster store, rotated
//!   (`wireguard_key_rotation`, [`OverlayDriver::rotate_wireguard_key`]); and in its firewall
//!   fragment a guard dropping plain VXLAN to an encrypted network's port that did not come out
//!   of the tunnel. No kernel WireGuard and no `/dev/net/tun`: the network is refused
//!   (`Unsupported`).
//!
//! **Does not**
//! - give the network a gateway, a way out or published ports: its joins ask for the
//!   controller's gateway network ([`JoinInfo::needs_gateway_network`]; cnmd's `cnm_gwbridge`,
//!   a local bridge with masquerading and no inter-container traffic, as Docker's
//!   docker_gwbridge), whose endpoint the controller joins to the sandbox with the default
//!   route, and which publishes the overlay endpoint's ports (DNAT to the sandbox's address on
//!   the gateway network, on the host where the sandbox lives);
//! - put addresses or routes inside the sandbox (the controller does);
//! - run any program: everything goes over netlink through `cnm-sandbox`.

mod error;
pub mod options;
mod peers;
pub mod wg;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use cnm_core::cnm_firewall::{
    Action, ChainHook, ChainType, ElementChange, FieldType, Fragment, FragmentChain, FragmentSet,
    FragmentSpec, Key, Match, Protocol, Rule, SetElement, Value,
};
use cnm_core::spi::{
    Capability, Conflict, Driver, DriverContext, DriverError, DriverOptions, EndpointInfo,
    EndpointSpec, Facts, HasEndpoints, JoinInfo, JoinRequest, JoinedInterface, LeaveRequest,
    Lookup, NetworkSpec, Networks, ParsedOptions, RestoredEndpoint, Scope, find_endpoint,
    find_network,
};
use cnm_core::store::{Expect, StoreError};
use cnm_core::undo::Undo;
use cnm_core::{async_trait, register_driver};
use cnm_sandbox::{LinkKind, LinkSpec, Netlink};
use cnm_types::{FailedTo, IfName, MacAddress};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use error::OverlayError;
pub use options::OverlayOptions;
use options::{Allocation, FIRST_VNI, MAX_VNI, VXLANID_LIST};
pub use peers::PeerSink;

/// The registered name of this driver.
pub const DRIVER_NAME: &str = "overlay";

register_driver!(DRIVER_NAME, OverlayDriver::create);

/// The alias marking links this driver made: `cnm-overlay:<network or endpoint id>` (not the
/// bridge driver's `cnm:`, so neither sweeps the other's).
const ALIAS_PREFIX: &str = "cnm-overlay:";

/// VXLAN's encapsulation over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const OVERHEAD_V4: u32 = 50;
/// The same over IPv6 (a 40-byte outer header).
const OVERHEAD_V6: u32 = 70;

/// The overlay fragment's set of the VXLAN ports of this host's encrypted networks.
const ENCRYPTED_PORTS: &str = "encrypted_ports";

/// The overlay's firewall fragment: the bridges it claims, and a guard on the input hook
/// dropping IPv6 UDP to an encrypted network's VXLAN port unless it came through the
/// WireGuard TUN device, so that no plain VXLAN from the underlay reaches an encrypted network
/// (its VXLAN device is IPv6, between tunnel addresses; the kernel does not check a datagram's
/// destination against a VXLAN device's local address).
fn fragment_spec() -> FragmentSpec {
    let tun = IfName::new(wg::TUN_NAME.to_owned()).expect("a valid interface name");
    FragmentSpec::new(DRIVER_NAME)
        .set(FragmentSet::new(ENCRYPTED_PORTS, [FieldType::Port]))
        .chain(
            FragmentChain::base("wg_guard", ChainHook::Input, ChainType::Filter, -200).rule(
                Rule::new(
                    [
                        Match::is(Key::Family, Value::Family(cnm_sandbox::IpFamily::V6)),
                        Match::is(Key::L4Proto, Protocol::Udp),
                        Match::in_set([Key::ThDport], ENCRYPTED_PORTS),
                        Match::is_not(Key::IifName, &tun),
                    ],
                    Action::Drop,
                ),
            ),
        )
}

/// What a host publishes for each joined endpoint, and what the others program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFact {
    /// The endpoint's IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// The endpoint's IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The MAC of its interface.
    pub mac: MacAddress,
    /// The tunnel endpoint of its host (the host's advertise address; on an encrypted network,
    /// the host's WireGuard tunnel address).
    pub vtep: IpAddr,
}

/// The overlay driver for one controller (one host).
#[derive(Debug)]
pub struct OverlayDriver {
    ctx: DriverContext,
    networks: Networks<Network>,
    /// The driver's part of the host's firewall: it holds no sets, only the claims of the
    /// overlay bridges (see [`OverlayDriver::claim_bridge`]).
    fragment: std::sync::OnceLock<Fragment>,
    /// The userspace WireGuard, started by the first encrypted network.
    wg: tokio::sync::Mutex<Option<Arc<wg::Engine>>>,
    /// Its configuration (the driver's host-wide settings).
    wg_config: Result<wg::WgConfig, String>,
    /// The VXLAN ports of encrypted networks in [`ENCRYPTED_PORTS`], each with its number of
    /// networks (serialised by the `wg` lock).
    guarded_ports: Mutex<HashMap<u16, usize>>,
}

#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) id: String,
    pub(crate) vni: u32,
    bridge: IfName,
    vxlan: IfName,
    bridge_index: u32,
    pub(crate) vxlan_index: u32,
    mtu: u32,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    /// The other hosts' endpoints programmed here, by endpoint id (only the watch task
    /// changes it).
    pub(crate) peers: Mutex<HashMap<String, PeerFact>>,
    /// Broadcast and multicast replicated to the other hosts' VTEPs
    /// ([`options::BUM`]).
    pub(crate) bum: bool,
    /// This host's VTEP (never a flood destination).
    pub(crate) local_vtep: IpAddr,
    /// With `bum`: the other hosts' VTEPs on the all-zeros FDB entry, each with the number of
    /// programmed peers behind it (only the watch task changes it).
    pub(crate) flood: Mutex<HashMap<IpAddr, usize>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its traffic goes through WireGuard ([`options::ENCRYPTED`]); its VXLAN port is guarded.
    encrypted: bool,
    port: u16,
}

impl HasEndpoints for Network {
    type Endpoint = Endpoint;

    fn endpoints(&self) -> &Mutex<HashMap<String, Arc<Endpoint>>> {
        &self.endpoints
    }
}

#[derive(Debug)]
struct Endpoint {
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    mac: MacAddress,
    /// The host end of the veth, while joined.
    joined: Mutex<Option<IfName>>,
}

/// Locks a std mutex; every critical section is a plain map or field update.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts one holder more of `key` (an encrypted network on a guarded port, a peer behind a
/// VTEP); true for the first, which sets up what they share.
pub(crate) fn count_up<K: Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: K) -> bool {
    let mut counts = lock(counts);
    let n = counts.entry(key).or_insert(0);
    *n += 1;
    *n == 1
}

/// Counts one holder less of `key`; true for the last, which takes down what they shared (the
/// key is gone then). A key not counted is left alone.
pub(crate) fn count_down<K: Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) -> bool {
    let mut counts = lock(counts);
    match counts.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(key);
            true
        }
        None => false,
    }
}

/// The names of a network's links on every host: they follow from the VNI.
fn link_names(vni: u32) -> Result<(IfName, IfName), OverlayError> {
    let name = |n: String| {
        IfName::new(n.clone()).map_err(|e| OverlayError::invalid("link name", n, e.to_string()))
    };
    Ok((
        name(format!("ov-{vni:06x}"))?,
        name(format!("vx-{vni:06x}"))?,
    ))
}

fn alias(id: &str) -> String {
    format!("{ALIAS_PREFIX}{id}")
}

/// The first 12 characters of an id, for logs and messages.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `veth` and 7 random hex digits, as the bridge driver names host-side veths.
fn random_veth_name() -> Result<IfName, OverlayError> {
    let n: u32 = rand::random::<u32>() & 0x0fff_ffff;
    let name = format!("veth{n:07x}");
    IfName::new(name.clone()).map_err(|e| OverlayError::invalid("veth name", name, e.to_string()))
}

async fn delete_link_named(netlink: &Netlink, name: &str) -> Result<(), OverlayError> {
    netlink
        .delete_link_named(name)
        .await
        .map(drop)
        .map_err(|e| OverlayError::failed("delete link", name, e))
}

impl OverlayDriver {
    /// Builds the driver for the host in `ctx` (the registration's constructor).
    pub fn create(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self::new(ctx.clone())))
    }

    /// Builds the driver.
    pub fn new(ctx: DriverContext) -> Self {
        let wg_config = wg::WgConfig::from_context(&ctx).map_err(|e| e.to_string());
        Self {
            ctx,
            networks: Mutex::new(HashMap::new()),
            fragment: std::sync::OnceLock::new(),
            wg: tokio::sync::Mutex::new(None),
            wg_config,
            guarded_ports: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `config` for the WireGuard of encrypted networks instead of the driver's settings
    /// (before the first encrypted network; tests point `tun_path` elsewhere).
    pub fn with_wireguard(mut self, config: wg::WgConfig) -> Self {
        self.wg_config = Ok(config);
        self
    }

    /// Replaces this host's WireGuard static key now (as the periodic rotation does): the new
    /// public key is published and the peers follow. Returns it; `None` when no encrypted
    /// network has started the engine on this host.
    pub async fn rotate_wireguard_key(&self) -> Result<Option<String>, DriverError> {
        let engine = self.wg.lock().await.clone();
        match engine {
            Some(e) => Ok(Some(e.rotate().await?)),
            None => Ok(None),
        }
    }

    /// Which WireGuard carries this host's encrypted networks ([`wg::WgPath::Kernel`] where
    /// the kernel has it, else the userspace engine and why), once the first encrypted
    /// network started it.
    pub async fn wireguard_path(&self) -> Option<wg::WgPath> {
        self.wg.lock().await.as_ref().map(|e| e.path().clone())
    }

    /// This host's WireGuard public key, once the engine runs.
    pub async fn wireguard_public_key(&self) -> Option<String> {
        self.wg.lock().await.as_ref().map(|e| e.public_key())
    }

    /// The engine, started on first use; and the port `port` guarded (counted per network).
    async fn wireguard(
        &self,
        underlay_mtu: u32,
        port: u16,
    ) -> Result<Arc<wg::Engine>, OverlayError> {
        let mut slot = self.wg.lock().await;
        let engine = match slot.as_ref() {
            Some(e) => e.clone(),
            None => {
                let config = self.wg_config.clone().map_err(|reason| {
                    OverlayError::invalid("overlay WireGuard settings", "", reason)
                })?;
                let e = wg::Engine::start(&self.ctx, &config, underlay_mtu).await?;
                *slot = Some(e.clone());
                e
            }
        };
        if count_up(&self.guarded_ports, port) {
            let change =
                ElementChange::new().add(ENCRYPTED_PORTS, SetElement::new([Value::Port(port)]));
            if let Err(e) = self.fragment()?.apply(&change).await {
                lock(&self.guarded_ports).remove(&port);
                return Err(OverlayError::failed(
                    "guard the VXLAN port",
                    port.to_string(),
                    e,
                ));
            }
        }
        Ok(engine)
    }

    /// Counts one encrypted network less on `port`; the last takes the guard away.
    async fn unguard(&self, port: u16) -> Result<(), OverlayError> {
        let _serial = self.wg.lock().await;
        if count_down(&self.guarded_ports, &port) {
            let change =
                ElementChange::new().delete(ENCRYPTED_PORTS, SetElement::new([Value::Port(port)]));
            self.fragment()?
                .apply(&change)
                .await
                .map_err(|e| OverlayError::failed("unguard the VXLAN port", port.to_string(), e))?;
        }
        Ok(())
    }

    fn fragment(&self) -> Result<&Fragment, OverlayError> {
        match self.fragment.get() {
            Some(f) => Ok(f),
            None => {
                let f = self.ctx.firewall().fragment(fragment_spec()).map_err(|e| {
                    OverlayError::failed("declare the firewall fragment of", DRIVER_NAME, e)
                })?;
                Ok(self.fragment.get_or_init(|| f))
            }
        }
    }

    fn facts(&self) -> Result<Facts, OverlayError> {
        Ok(self.ctx.facts()?)
    }

    /// Claims (`true`) or releases an overlay bridge as an interface cnm forwards for. Frames
    /// bridged through it meet the host's forward hook when br_netfilter is active (Docker
    /// loads it; `bridge-nf-call-iptables=1` in every namespace then), and a host whose
    /// forwarding cnm turned on drops forwarded traffic of interfaces nobody claimed: without
    /// the claim, the overlay would carry nothing there.
    async fn claim_bridge(&self, bridge: &IfName, claim: bool) -> Result<(), OverlayError> {
        let fragment = self.fragment()?;
        let (op, change) = if claim {
            ("claim bridge", ElementChange::new().claim_interface(bridge))
        } else {
            (
                "release bridge",
                ElementChange::new().release_interface(bridge),
            )
        };
        fragment
            .apply(&change)
            .await
            .map_err(|e| OverlayError::failed(op, bridge.as_str(), e))
    }

    fn vtep(&self) -> Result<IpAddr, OverlayError> {
        self.ctx
            .advertise_addr()
            .ok_or(OverlayError::NoAdvertiseAddr)
    }

    fn network(&self, id: &str) -> Result<Arc<Network>, OverlayError> {
        Ok(find_network(&self.networks, id)?)
    }

    fn endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(Arc<Network>, Arc<Endpoint>), OverlayError> {
        Ok(find_endpoint(&self.networks, network_id, endpoint_id)?)
    }

    /// The endpoint to `op` (join or leave): a conflict unless it is joined exactly when
    /// `joined` says.
    fn endpoint_to(
        &self,
        op: &'static str,
        network_id: &str,
        endpoint_id: &str,
        joined: bool,
    ) -> Result<(Arc<Network>, Arc<Endpoint>), OverlayError> {
        let (net, ep) = self.endpoint(network_id, endpoint_id)?;
        if lock(&ep.joined).is_some() != joined {
            let reason = if joined {
                "it is not joined"
            } else {
                "it is already joined"
            };
            let object = format!("endpoint {}", short(endpoint_id));
            return Err(OverlayError::from(Conflict::new(op, object, reason)));
        }
        Ok((net, ep))
    }

    /// Takes a VNI for a new network in the cluster store: the one asked for, or the lowest
    /// free one from [`FIRST_VNI`]. Each is a create-if-absent key, so two hosts racing for
    /// one never both get it.
    async fn allocate(&self, spec: &NetworkSpec) -> Result<Allocation, OverlayError> {
        let opts = options_of(spec)?;
        let store = self.ctx.store(Scope::Global)?;
        let claim = |vni: u32| {
            let store = store.clone();
            let id = spec.id.clone();
            async move {
                store
                    .put(&format!("vni/{vni}"), id.into_bytes(), Expect::Absent)
                    .await
            }
        };
        if let Some(vni) = opts.vni {
            return match claim(vni).await {
                Ok(_) => Ok(Allocation {
                    vni,
                    port: opts.port,
                    bum: opts.bum,
                    encrypted: opts.encrypted,
                }),
                Err(StoreError::Conflict { .. }) => {
                    let owner = store
                        .get(&format!("vni/{vni}"))
                        .await
                        .ok()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(&v.value).into_owned())
                        .unwrap_or_else(|| "another network".to_owned());
                    Err(OverlayError::VniTaken { vni, owner })
                }
                Err(e) => Err(OverlayError::store("claim", format!("VNI {vni}"), e)),
            };
        }
        // Allocation happens once per network, so one listing of the VNIs in use is fine.
        let used: std::collections::BTreeSet<u32> = store
            .list("vni/")
            .await
            .map_err(|e| OverlayError::store("list", "VNIs", e))?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("vni/")?.parse().ok())
            .collect();
        let mut vni = FIRST_VNI;
        while vni <= MAX_VNI {
            if !used.contains(&vni) {
                match claim(vni).await {
                    Ok(_) => {
                        return Ok(Allocation {
                            vni,
                            port: opts.port,
                            bum: opts.bum,
                            encrypted: opts.encrypted,
                        });
                    }
                    // Another host took it since the listing: the next one.
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(OverlayError::store("claim", format!("VNI {vni}"), e)),
                }
            }
            vni += 1;
        }
        Err(OverlayError::invalid(
            VXLANID_LIST,
            "",
            "every VXLAN id from 4096 up is taken",
        ))
    }

    /// The underlay link holding `vtep`: its index and MTU.
    async fn underlay(&self, vtep: IpAddr) -> Result<(u32, u32), OverlayError> {
        let host = &self.ctx.host_netlink;
        let addrs = host
            .addresses(None)
            .await
            .map_err(|e| OverlayError::failed("list addresses of", host.netns().to_string(), e))?;
        let index = addrs
            .iter()
            .find(|a| a.addr.addr() == vtep)
            .map(|a| a.index)
            .ok_or(OverlayError::AdvertiseAddrNotFound(vtep))?;
        let link = host
            .link_by_index(index)
            .await
            .map_err(|e| OverlayError::failed("look up underlay link", index.to_string(), e))?
            .ok_or(OverlayError::AdvertiseAddrNotFound(vtep))?;
        Ok((index, link.mtu))
    }

    /// Creates (or, on a restore, adopts) the network's bridge and makes its VXLAN device
    /// anew, enslaved and up. Returns the network, not yet watching its peers.
    async fn build_network(
        &self,
        spec: &NetworkSpec,
        restoring: bool,
    ) -> Result<Arc<Network>, OverlayError> {
        let alloc = Allocation::from_options(&spec.allocation)?;
        let vtep = self.vtep()?;
        // Refused before anything exists when there is no cluster store.
        self.facts()?;
        let (underlay, underlay_mtu) = self.underlay(vtep).await?;
        // An encrypted network's VXLAN runs between WireGuard tunnel addresses (IPv6) inside
        // the WireGuard tunnel: both overheads.
        let (local_vtep, parent, overhead) = if alloc.encrypted {
            let engine = self.wireguard(underlay_mtu, alloc.port).await?;
            (
                IpAddr::V6(engine.tunnel),
                None,
                OVERHEAD_V6 + wg::OVERHEAD_V4,
            )
        } else if vtep.is_ipv4() {
            (vtep, Some(underlay), OVERHEAD_V4)
        } else {
            (vtep, Some(underlay), OVERHEAD_V6)
        };
        let mtu = spec.mtu.unwrap_or(underlay_mtu.saturating_sub(overhead));
        let (bridge, vxlan) = link_names(alloc.vni)?;
        let host = self.ctx.host_netlink.clone();
        let lookup = |name: IfName| {
            let host = host.clone();
            async move {
                host.link(name.as_str())
                    .await
                    .map_err(|e| OverlayError::failed("look up link", name.to_string(), e))
            }
        };
        let mut undo: Undo<OverlayError> = Undo::new();
        let result = async {
            let existing = lookup(bridge.clone()).await?;
            let bridge_index = match existing {
                Some(l) if restoring => l.index,
                Some(_) => {
                    return Err(OverlayError::from(Conflict::new(
                        "create bridge",
                        bridge.to_string(),
                        "a link of that name exists",
                    )));
                }
                None => {
                    let mut link = LinkSpec::new(bridge.clone(), LinkKind::Bridge);
                    link.mtu = Some(mtu);
                    link.up = true;
                    host.create_link(&link)
                        .await
                        .map_err(|e| OverlayError::failed("create bridge", bridge.as_str(), e))?;
                    let (h, n) = (host.clone(), bridge.to_string());
                    undo.push("delete bridge", move || async move {
                        delete_link_named(&h, &n).await
                    });
                    lookup(bridge.clone())
                        .await?
                        .ok_or_else(|| {
                            OverlayError::from(Conflict::vanished(
                                "configure bridge",
                                bridge.to_string(),
                            ))
                        })?
                        .index
                }
            };
            host.set_alias(bridge_index, &alias(&spec.id))
                .await
                .map_err(|e| OverlayError::failed("mark bridge", bridge.as_str(), e))?;
            // The VXLAN device holds only the FDB and neighbour entries of the other hosts'
            // endpoints: made anew on a restore, so that none of a previous run stays stale.
            if restoring {
                delete_link_named(&host, vxlan.as_str()).await?;
            }
            let mut link = LinkSpec::new(
                vxlan.clone(),
                LinkKind::Vxlan {
                    vni: alloc.vni,
                    local: Some(local_vtep),
                    group: None,
                    port: alloc.port,
                    learning: false,
                    proxy: true,
                    parent,
                },
            );
            link.mtu = Some(mtu);
            link.master = Some(bridge_index);
            link.up = true;
            host.create_link(&link).await.map_err(|e| {
                OverlayError::failed(
                    "create vxlan",
                    format!("{vxlan} (VNI {}, port {})", alloc.vni, alloc.port),
                    e,
                )
            })?;
            let (h, n) = (host.clone(), vxlan.to_string());
            undo.push("delete vxlan", move || async move {
                delete_link_named(&h, &n).await
            });
            let vxlan_index = lookup(vxlan.clone())
                .await?
                .ok_or_else(|| {
                    OverlayError::from(Conflict::vanished("configure vxlan", vxlan.to_string()))
                })?
                .index;
            host.set_alias(vxlan_index, &alias(&spec.id))
                .await
                .map_err(|e| OverlayError::failed("mark vxlan", vxlan.as_str(), e))?;
            host.set_up(bridge_index)
                .await
                .map_err(|e| OverlayError::failed("bring up bridge", bridge.as_str(), e))?;
            self.claim_bridge(&bridge, true).await?;
            Ok((bridge_index, vxlan_index))
        }
        .await;
        let result = undo.finish(result).await;
        if result.is_err() && alloc.encrypted {
            // The guard taken for this network goes with it (the engine stays for others).
            if let Err(e) = self.unguard(alloc.port).await {
                tracing::warn!(error = %e, "cannot release the VXLAN port guard");
            }
        }
        let (bridge_index, vxlan_index) = result?;
        tracing::debug!(network = %short(&spec.id), vni = alloc.vni, %bridge, %vxlan, mtu, "overlay network set up");
        Ok(Arc::new(Network {
            id: spec.id.clone(),
            vni: alloc.vni,
            bridge,
            vxlan,
            bridge_index,
            vxlan_index,
            mtu,
            endpoints: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            bum: alloc.bum,
            local_vtep,
            flood: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
            encrypted: alloc.encrypted,
            port: alloc.port,
        }))
    }

    /// Takes `net` on and starts programming the other hosts' endpoints.
    fn add_network(&self, net: Arc<Network>) -> Result<(), OverlayError> {
        let facts = self.facts()?;
        let task = tokio::spawn(peers::watch(
            Arc::downgrade(&net),
            facts,
            self.ctx.host_netlink.clone(),
        ));
        *lock(&net.watcher) = Some(task);
        lock(&self.networks).insert(net.id.clone(), net);
        Ok(())
    }

    async fn create_network_inner(&self, spec: &NetworkSpec) -> Result<(), OverlayError> {
        if lock(&self.networks).contains_key(&spec.id) {
            return Err(OverlayError::from(Conflict::new(
                "create network",
                short(&spec.id),
                "it exists",
            )));
        }
        let net = self.build_network(spec, false).await?;
        if let Err(e) = self.add_network(net.clone()) {
            let mut cleanup = Vec::new();
            for name in [net.vxlan.as_str(), net.bridge.as_str()] {
                if let Err(c) = delete_link_named(&self.ctx.host_netlink, name).await {
                    cleanup.push(c);
                }
            }
            if let Err(c) = self.claim_bridge(&net.bridge, false).await {
                cleanup.push(c);
            }
            return Err(cnm_core::undo::Cleanup::with_cleanup(e, cleanup));
        }
        Ok(())
    }

    async fn delete_network_inner(&self, network_id: &str) -> Result<(), OverlayError> {
        let net = {
            let mut nets = lock(&self.networks);
            let net = nets
                .get(network_id)
                .cloned()
                .ok_or_else(|| Lookup::NetworkNotFound(network_id.to_owned()))?;
            if !lock(&net.endpoints).is_empty() {
                return Err(OverlayError::from(Conflict::new(
                    "delete network",
                    short(network_id),
                    "it still has endpoints",
                )));
            }
            nets.remove(network_id);
            net
        };
        if let Some(task) = lock(&net.watcher).take() {
            task.abort();
        }
        // The FDB and neighbour entries go with the VXLAN device.
        lock(&net.peers).clear();
        lock(&net.flood).clear();
        let host = &self.ctx.host_netlink;
        let vx = delete_link_named(host, net.vxlan.as_str()).await;
        let br = delete_link_named(host, net.bridge.as_str()).await;
        let claim = self.claim_bridge(&net.bridge, false).await;
        let guard = if net.encrypted {
            self.unguard(net.port).await
        } else {
            Ok(())
        };
        let mut errors: Vec<OverlayError> = [vx, br, claim, guard]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors.remove(0);
        Err(if errors.is_empty() {
            first
        } else {
            cnm_core::undo::Cleanup::with_cleanup(first, errors)
        })
    }

    fn fact_of(net: &Network, ep: &Endpoint, mac: MacAddress) -> PeerFact {
        PeerFact {
            ipv4: ep.ipv4.map(|a| a.addr()),
            ipv6: ep.ipv6.map(|a| a.addr()),
            mac,
            vtep: net.local_vtep,
        }
    }

    async fn join_inner(&self, req: &JoinRequest) -> Result<JoinInfo, OverlayError> {
        let (net, ep) = self.endpoint_to("join", &req.network_id, &req.endpoint_id, false)?;
        let mac = req.mac.unwrap_or(ep.mac);
        let fact = Self::fact_of(&net, &ep, mac);
        let facts = self.facts()?;
        let host_if = random_veth_name()?;
        let host = &self.ctx.host_netlink;
        let mut spec = LinkSpec::new(
            host_if.clone(),
            LinkKind::Veth {
                peer_name: req.ifname.clone(),
                peer_ns: Some(req.sandbox.ns.clone()),
                peer_mac: Some(mac),
                peer_mtu: Some(net.mtu),
                peer_up: false,
            },
        );
        spec.mtu = Some(net.mtu);
        spec.master = Some(net.bridge_index);
        spec.up = true;
        let mut undo: Undo<OverlayError> = Undo::new();
        let result = async {
            host.create_link(&spec).await.map_err(|e| {
                OverlayError::failed(
                    "create veth",
                    format!(
                        "{host_if} (peer {} in {}) on bridge {}",
                        req.ifname, req.sandbox.ns, net.bridge
                    ),
                    e,
                )
            })?;
            {
                let (h, n) = (host.clone(), host_if.to_string());
                undo.push("delete veth", move || async move {
                    delete_link_named(&h, &n).await
                });
            }
            host.set_alias_by_name(&host_if, &alias(&req.endpoint_id))
                .await
                .map_err(|e| OverlayError::failed("mark veth", host_if.as_str(), e))?;
            // Kernel first, then the record every other host acts on.
            facts
                .publish(&req.network_id, &req.endpoint_id, &fact)
                .await?;
            Ok(())
        }
        .await;
        undo.finish(result).await?;
        *lock(&ep.joined) = Some(host_if);
        let mut info = JoinInfo::new(JoinedInterface::InSandbox { index: None });
        // Never the sandbox's default gateway: the way out is the controller's gateway
        // network (Docker's docker_gwbridge), which the controller joins the sandbox to.
        info.disable_gateway_service = true;
        info.needs_gateway_network = true;
        Ok(info)
    }

    /// Withdraws an endpoint's fact, then deletes its veth (records first on the way down).
    async fn unplug(
        &self,
        network_id: &str,
        endpoint_id: &str,
        ep: &Endpoint,
    ) -> Result<(), OverlayError> {
        let Some(host_if) = lock(&ep.joined).take() else {
            return Ok(());
        };
        let result = async {
            self.facts()?.withdraw(network_id, endpoint_id).await?;
            delete_link_named(&self.ctx.host_netlink, host_if.as_str()).await
        }
        .await;
        if result.is_err() {
            *lock(&ep.joined) = Some(host_if);
        }
        result
    }

    async fn restore_network_inner(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), OverlayError> {
        let net = self.build_network(spec, true).await?;
        let result = self.adopt_endpoints(spec, endpoints, net.clone()).await;
        if let Err(e) = result {
            // The links stay for the next try; the claim goes, so that try can claim again.
            return Err(match self.claim_bridge(&net.bridge, false).await {
                Ok(()) => e,
                Err(c) => cnm_core::undo::Cleanup::with_cleanup(e, vec![c]),
            });
        }
        Ok(())
    }

    /// The rest of a restore: the endpoints of `net` taken back, then the network taken on.
    async fn adopt_endpoints(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
        net: Arc<Network>,
    ) -> Result<(), OverlayError> {
        let host = &self.ctx.host_netlink;
        let links = host
            .links()
            .await
            .map_err(|e| OverlayError::failed("list links of", host.netns().to_string(), e))?;
        let facts = self.facts()?;
        for restored in endpoints {
            let s = &restored.spec;
            let ep = Arc::new(Endpoint {
                ipv4: s.ipv4,
                ipv6: s.ipv6,
                mac: s.mac.unwrap_or_else(MacAddress::random_local),
                joined: Mutex::new(None),
            });
            if restored.joined.is_some() {
                let mark = alias(&s.endpoint_id);
                match links
                    .iter()
                    .find(|l| l.alias.as_deref() == Some(mark.as_str()))
                {
                    Some(l) => {
                        if l.master != Some(net.bridge_index) {
                            host.set_master(l.index, Some(net.bridge_index))
                                .await
                                .map_err(|e| {
                                    OverlayError::failed("enslave veth", l.name.clone(), e)
                                })?;
                        }
                        let name = IfName::new(l.name.clone()).map_err(|e| {
                            OverlayError::invalid("veth name", l.name.clone(), e.to_string())
                        })?;
                        *lock(&ep.joined) = Some(name);
                        // The container end's MAC, as recorded (not the host end's).
                        let fact = Self::fact_of(&net, &ep, ep.mac);
                        facts.publish(&spec.id, &s.endpoint_id, &fact).await?;
                    }
                    None => tracing::warn!(
                        endpoint = %short(&s.endpoint_id),
                        "the veth of a joined overlay endpoint is gone; it carries no traffic"
                    ),
                }
            }
            lock(&net.endpoints).insert(s.endpoint_id.clone(), ep);
        }
        self.add_network(net)
    }

    async fn sweep_inner(&self, keep: &[String]) -> Result<(), OverlayError> {
        let host = &self.ctx.host_netlink;
        let links = host
            .links()
            .await
            .map_err(|e| OverlayError::failed("list links of", host.netns().to_string(), e))?;
        let keep: std::collections::HashSet<&str> = keep.iter().map(String::as_str).collect();
        let mut orphans = std::collections::HashSet::new();
        for l in &links {
            let Some(id) = l
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
            else {
                continue;
            };
            let network_link = matches!(l.kind.as_deref(), Some("bridge" | "vxlan"));
            if network_link && !keep.contains(id) {
                orphans.insert(l.index);
            }
        }
        for l in &links {
            let ours = l
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX));
            let on_orphan = l.master.is_some_and(|m| orphans.contains(&m));
            if orphans.contains(&l.index) || (ours && on_orphan) {
                tracing::info!(link = %l.name, "deleting an overlay link no network owns");
                delete_link_named(host, &l.name).await?;
            }
        }
        Ok(())
    }
}

/// The overlay options a network's spec carries, as [`Driver::parse_network_options`] made them.
fn options_of(spec: &NetworkSpec) -> Result<OverlayOptions, OverlayError> {
    match spec.parsed.get::<OverlayOptions>() {
        Some(o) => Ok(*o),
        None => OverlayOptions::try_from(&spec.options),
    }
}

#[async_trait]
impl Driver for OverlayDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn capability(&self) -> Capability {
        Capability::local()
            .with_scope(Scope::Global)
            .with_host_routes(false)
            .with_gateway(false)
    }

    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        Ok(ParsedOptions::new(OverlayOptions::try_from(options)?))
    }

    async fn allocate_network(&self, spec: &NetworkSpec) -> Result<DriverOptions, DriverError> {
        Ok(self.allocate(spec).await?.to_options())
    }

    async fn free_network(
        &self,
        network_id: &str,
        allocation: &DriverOptions,
    ) -> Result<(), DriverError> {
        let alloc = Allocation::from_options(allocation)?;
        let store = self.ctx.store(Scope::Global)?;
        let key = format!("vni/{}", alloc.vni);
        // Only the network's own claim: never one another network took since.
        match store.get(&key).await {
            Ok(Some(v)) if v.value == network_id.as_bytes() => store
                .delete(&key, Expect::Version(v.version))
                .await
                .map_err(|e| OverlayError::store("free", format!("VNI {}", alloc.vni), e).into()),
            Ok(_) => Ok(()),
            Err(e) => Err(OverlayError::store("read", format!("VNI {}", alloc.vni), e).into()),
        }
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        Ok(self.create_network_inner(spec).await?)
    }

    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        Ok(self.restore_network_inner(spec, endpoints).await?)
    }

    async fn sweep(&self, keep: &[String]) -> Result<(), DriverError> {
        Ok(self.sweep_inner(keep).await?)
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        Ok(self.delete_network_inner(network_id).await?)
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        let net = self.network(&spec.network_id)?;
        let mac = spec.segment_mac(DRIVER_NAME)?;
        // Unless asked for, the MAC follows the IPv4 address (as Docker's overlay does): learning
        // is off, so a peer sandbox still caching a freed address's old MAC would send into the
        // void until its neighbour entry expired.
        let mac = match (spec.mac, spec.ipv4) {
            (None, Some(v4)) => MacAddress::from_ipv4(v4.addr()),
            _ => mac,
        };
        let mut eps = lock(&net.endpoints);
        if eps.contains_key(&spec.endpoint_id) {
            return Err(OverlayError::from(Conflict::new(
                "create endpoint",
                short(&spec.endpoint_id),
                "it exists",
            ))
            .into());
        }
        eps.insert(
            spec.endpoint_id.clone(),
            Arc::new(Endpoint {
                ipv4: spec.ipv4,
                ipv6: spec.ipv6,
                mac,
                joined: Mutex::new(None),
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
        // A controller that deletes without leaving first: undo the join too.
        self.unplug(network_id, endpoint_id, &ep).await?;
        lock(&net.endpoints).remove(endpoint_id);
        Ok(())
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        Ok(self.join_inner(request).await?)
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        let (_, ep) = self.endpoint_to("leave", &request.network_id, &request.endpoint_id, true)?;
        Ok(self
            .unplug(&request.network_id, &request.endpoint_id, &ep)
            .await?)
    }

    async fn shutdown(&self) -> Result<(), DriverError> {
        for net in lock(&self.networks).values() {
            if let Some(task) = lock(&net.watcher).take() {
                task.abort();
            }
        }
        // Its tasks stop and its device goes (the kernel state of the networks stays).
        if let Some(engine) = self.wg.lock().await.take() {
            engine.stop(&self.ctx).await?;
        }
        Ok(())
    }
}

impl Drop for OverlayDriver {
    fn drop(&mut self) {
        for net in lock(&self.networks).values() {
            if let Some(task) = lock(&net.watcher).take() {
                task.abort();
            }
        }
    }
}

/// The per-network peer watch of one host (the task the driver runs for each overlay network
/// it takes on), programming into a [`PeerSink`] that need not be the kernel: what the
/// control-plane simulation runs, one per simulated host, each with its own [`Facts`] (its own
/// lease). The same code path as the driver's, with no bridge or VXLAN device behind it (the
/// sink is called with device index 0). The task stops when the agent is dropped.
#[derive(Debug)]
pub struct PeerAgent {
    net: Arc<Network>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerAgent {
    /// Starts watching `network_id`'s facts of the other hosts (every host but `facts`'s) and
    /// programming them into `sink`; `local_vtep` is this host's VTEP. Needs a tokio runtime.
    pub fn spawn<S: PeerSink>(
        facts: Facts,
        network_id: &str,
        local_vtep: IpAddr,
        bum: bool,
        sink: S,
    ) -> Result<PeerAgent, OverlayError> {
        let (bridge, vxlan) = link_names(0)?;
        let net = Arc::new(Network {
            id: network_id.to_owned(),
            vni: 0,
            bridge,
            vxlan,
            bridge_index: 0,
            vxlan_index: 0,
            mtu: 0,
            endpoints: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            bum,
            encrypted: false,
            port: options::DEFAULT_PORT,
            local_vtep,
            flood: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        });
        let task = tokio::spawn(peers::watch(Arc::downgrade(&net), facts, sink));
        Ok(PeerAgent { net, task })
    }

    /// How many other hosts' endpoints are programmed now.
    pub fn peers(&self) -> usize {
        lock(&self.net.peers).len()
    }
}

impl Drop for PeerAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_follow_the_vni_and_fit() {
        let (b, v) = link_names(4096).unwrap();
        assert_eq!((b.as_str(), v.as_str()), ("ov-001000", "vx-001000"));
        let (b, v) = link_names(MAX_VNI).unwrap();
        assert_eq!((b.as_str(), v.as_str()), ("ov-ffffff", "vx-ffffff"));
    }

    #[test]
    fn the_capability_is_global_without_gateway() {
        let c = Capability::local()
            .with_scope(Scope::Global)
            .with_host_routes(false)
            .with_gateway(false);
        assert_eq!(c.scope, Scope::Global);
        assert!(c.no_gateway && c.needs_addresses && !c.host_routes);
    }
}
