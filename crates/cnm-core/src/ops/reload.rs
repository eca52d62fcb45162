//! Reload on start: the controller's records come back as live objects, and the kernel is
//! reconciled with them ("persist intent, reconcile reality").
//!
//! Order: the records are read; each sandbox's namespace is reopened by its key (a record whose
//! namespace is gone, say after a reboot, is dropped, its endpoints freed); IPAM is rebuilt from
//! the network and endpoint records themselves (pools, gateways, aux and endpoint addresses);
//! each network's and endpoint's driver options are parsed once by the driver, and the network
//! is handed back to its driver with its endpoints and joins
//! ([`Driver::restore_network`](crate::spi::Driver::restore_network)); each sandbox gets its
//! gateway endpoint's default route and published ports again and its hosts file rewritten;
//! then the sweep removes what no record owns: namespaces under `run_dir/netns`, directories
//! under `run_dir/sandboxes`, and, through each driver's
//! [`sweep`](crate::spi::Driver::sweep), links of networks without a record. Last, the host
//! namespace's firewall, loading all along, commits every driver's restored rules in one
//! transaction (rules of networks without a record are simply not in it).
//!
//! With the write order of the operations (constructive ones: kernel first, records last in
//! one transaction, except a sandbox's record, committed while its namespace is made and dropped
//! here when its hosts file, written last, is missing, and a join's, committed once its interface
//! is made while the default route, the ports, the hosts file and the DNS, all redone here,
//! are done; destructive ones: records first, kernel after,
//! except a network's or an endpoint's delete, which the restore simply redoes from the
//! surviving record), this makes every operation interrupted by a crash look done completely or
//! not at all.

use cnm_types::FailedTo;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::Instrument as _;

use cnm_ipam::{AddressRequest, Family, PoolId, PoolRequest};
use cnm_types::IfName;

use crate::CoreError;
use crate::id;
use crate::ipam::{AdoptPool, Ipam};
use crate::kernel::SandboxNs;
use crate::model::endpoint::EndpointInner;
use crate::model::network::{NetworkInner, NetworkParts, NetworkPool};
use crate::model::sandbox::{Joined, SandboxInner, SandboxState};
use crate::options::{NetworkOptions, PoolConfig};
use crate::port::PortBinding;
use crate::record::{EndpointRecord, NetworkRecord, PoolAllocation, SandboxRecord, endpoint_key};
use crate::spi::{EndpointSpec, PublishRequest, RestoredEndpoint, RestoredJoin, SandboxRef, Scope};
use crate::state::{Core, PendingNetwork, WaitingForIpam};
use crate::store::{Expect, Txn, Versioned, list_json};

use super::gateway::program;
use super::join::write_hosts;

/// How many sandboxes a reload restores at once: their kernel work (namespace, netlink, files,
/// DNS listener) is independent, and runs on threads and sockets of its own, so it overlaps;
/// the bound keeps the threads and descriptors in flight few.
pub(crate) const RESTORE_PARALLEL: usize = 32;

/// How many sandboxes' netlink sockets a reload opens on one thread (see
/// [`restore_sandboxes`]).
const OPEN_BATCH: usize = RESTORE_PARALLEL / 2;

/// A sandbox whose namespace could be reopened.
struct Opened {
    rec: Versioned<SandboxRecord>,
    ns: SandboxNs,
}

pub(crate) async fn reload(core: &Arc<Core>) -> Result<(), CoreError> {
    let store = core.store.as_ref();
    let read = |prefix: &'static str| move |e| CoreError::failed("read", prefix, e);
    let mut nets = list_json::<NetworkRecord>(store, "network/")
        .await
        .map_err(read("network/"))?;
    // Global networks: every one of the cluster, each handed to its driver here too; then a
    // watch from the listing's revision keeps the view current.
    let mut cluster_revision = None;
    if let Some(cluster) = core.cluster() {
        let listing = cluster
            .store
            .list_with_revision("network/")
            .await
            .map_err(read("network/ of the cluster store"))?;
        cluster_revision = Some(listing.revision);
        for (key, v) in listing.entries {
            let value = serde_json::from_slice::<NetworkRecord>(&v.value).map_err(|source| {
                CoreError::Record {
                    op: "decode",
                    key: key.clone(),
                    source,
                }
            })?;
            nets.push((
                key,
                Versioned {
                    version: v.version,
                    value,
                },
            ));
        }
    }
    let eps = list_json::<EndpointRecord>(store, "endpoint/")
        .await
        .map_err(read("endpoint/"))?;
    let sbs = list_json::<SandboxRecord>(store, "sandbox/")
        .await
        .map_err(read("sandbox/"))?;
    let mut eps: BTreeMap<String, Versioned<EndpointRecord>> = eps
        .into_iter()
        .map(|(_, v)| (v.value.id.clone(), v))
        .collect();

    let opened = reopen_sandboxes(core, sbs, &mut eps).await?;
    let (endpoints, kept_by_driver) = restore_networks(core, nets, eps, &opened).await?;
    crate::crash::point("reload:after-networks");
    restore_sandboxes(core, opened, &endpoints).await?;
    crate::dns::replay(core).await?;

    // The sweep: what no record owns.
    sweep_run_dir(core).await?;
    for (name, driver) in core.drivers() {
        let keep = kept_by_driver.get(&name).cloned().unwrap_or_default();
        driver
            .sweep(&keep)
            .await
            .map_err(|e| CoreError::failed("sweep after restart", &name, e))?;
    }
    // [firewall] Fail closed: every driver's restored rules (and nothing of networks without a
    // record) replace the previous run's tables in one transaction; then what waited for them
    // (a driver turning forwarding on). Until here the old tables kept filtering.
    core.driver_context
        .firewall()
        .finish_loading()
        .await
        .map_err(|source| CoreError::Firewall {
            op: "install the restored firewall",
            source,
        })?;
    crate::crash::point("reload:after-sweep");
    if let (Some(cluster), Some(revision)) = (core.cluster(), cluster_revision) {
        crate::cluster::watch(core, cluster, revision)?;
    }
    tracing::info!(
        networks = core.networks.len(),
        endpoints = endpoints.len(),
        sandboxes = core.sandboxes.len(),
        "state reloaded"
    );
    Ok(())
}

/// Reopens each sandbox's namespace by its key. A record whose namespace is gone (a reboot, or
/// removed behind our back), or whose creation a crash cut short (no endpoint, no hosts file),
/// is dropped with its endpoints freed, in one transaction.
async fn reopen_sandboxes(
    core: &Core,
    sbs: Vec<(String, Versioned<SandboxRecord>)>,
    eps: &mut BTreeMap<String, Versioned<EndpointRecord>>,
) -> Result<BTreeMap<String, Opened>, CoreError> {
    let mut opened = BTreeMap::new();
    // The namespaces are reopened concurrently (each is its own kernel work); the records of
    // those gone are then dropped one after the other, in the listing's order.
    let reopened: Vec<_> = stream::iter(sbs)
        .map(|(key, rec)| async move {
            // A sandbox's record is committed while its namespace and files are made, the
            // hosts file last: one recorded with no endpoint and no hosts file was cut short
            // by a crash (its namespace, if any, goes with the sweep).
            let cut_short = rec.value.endpoints.is_empty()
                && !core.kernel.file_exists(
                    &core
                        .run_dir
                        .join("sandboxes")
                        .join(&rec.value.id)
                        .join("hosts"),
                );
            let ns = if cut_short {
                None
            } else if rec.value.options.host_namespace {
                Some(Ok(super::sandbox_create::host_sandbox_ns(
                    core.kernel.as_ref(),
                )))
            } else {
                Some(core.kernel.open_netns(&rec.value.key).await)
            };
            (key, rec, ns)
        })
        .buffered(RESTORE_PARALLEL)
        .collect()
        .await;
    for (key, rec, ns) in reopened {
        match ns {
            Some(Ok(ns)) => {
                opened.insert(rec.value.id.clone(), Opened { rec, ns });
            }
            gone => {
                match gone {
                    Some(Err(e)) => {
                        tracing::warn!(sandbox = id::short(&rec.value.id), key = %rec.value.key.display(), error = %e, "sandbox namespace gone: dropping its record");
                    }
                    _ => {
                        tracing::warn!(
                            sandbox = id::short(&rec.value.id),
                            "sandbox creation cut short (no hosts file): dropping its record"
                        );
                    }
                }
                let mut txn = Txn::new().delete(&key, Expect::Version(rec.version));
                let mut freed = Vec::new();
                for j in &rec.value.endpoints {
                    if let Some(ep) = eps.get(&j.endpoint_id) {
                        let mut r = ep.value.clone();
                        r.sandbox_id = None;
                        let ekey = endpoint_key(&r.network_id, &r.id);
                        txn = txn
                            .put_json(&ekey, &r, Expect::Version(ep.version))
                            .map_err(|e| CoreError::failed("encode", &ekey, e))?;
                        freed.push(j.endpoint_id.clone());
                    }
                }
                let rev = core
                    .store
                    .commit(txn)
                    .await
                    .map_err(|e| CoreError::failed("delete", &key, e))?;
                for id in freed {
                    if let Some(ep) = eps.get_mut(&id) {
                        ep.value.sandbox_id = None;
                        ep.version = rev;
                    }
                }
            }
        }
    }
    Ok(opened)
}

/// Networks, with IPAM rebuilt from the records, handed back to their drivers. Returns the
/// endpoints by id, and the networks kept by each driver. A network whose driver is not
/// registered keeps its name, pools and addresses reserved, and waits for the driver
/// ([`restore_pending`]).
async fn restore_networks(
    core: &Arc<Core>,
    nets: Vec<(String, Versioned<NetworkRecord>)>,
    eps: BTreeMap<String, Versioned<EndpointRecord>>,
    opened: &BTreeMap<String, Opened>,
) -> Result<
    (
        HashMap<String, Arc<EndpointInner>>,
        BTreeMap<String, Vec<String>>,
    ),
    CoreError,
> {
    let mut by_network: HashMap<String, Vec<Versioned<EndpointRecord>>> = HashMap::new();
    for ep in eps.into_values() {
        by_network
            .entry(ep.value.network_id.clone())
            .or_default()
            .push(ep);
    }
    let mut endpoints: HashMap<String, Arc<EndpointInner>> = HashMap::new();
    let mut kept_by_driver: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, net) in nets {
        let eps = by_network.remove(&net.value.id).unwrap_or_default();
        let (id, name, driver) = (
            net.value.id.clone(),
            net.value.name.clone(),
            net.value.driver.clone(),
        );
        // An IPAM the program does not link (a plugin) is looked for by name first; a local
        // network whose IPAM is missing waits for it, its links kept from its driver's sweep.
        if let Some(ipam) = waiting_ipam(&net.value)
            && let Err(e) = core.find_ipam(Some(ipam)).await
        {
            tracing::warn!(network = %name, ipam = %ipam, error = %e, "ipam driver of a recorded network not found: network kept, restored when the ipam driver is found");
            core.network_names.insert(name, Some(id.clone()));
            kept_by_driver.entry(driver).or_default().push(id);
            let ipam = ipam.to_owned();
            core.pending_ipam.add(
                &ipam,
                [WaitingForIpam {
                    record: net,
                    endpoints: eps,
                }],
            );
            continue;
        }
        let (pools_v4, pools_v6) = reserve(core, &net, &eps).await?;
        core.network_names.insert(name.clone(), Some(id.clone()));
        // A driver the program does not link (a plugin) is looked for by name first.
        if let Err(e) = core.find_driver(&driver).await {
            tracing::warn!(network = %name, driver = %driver, error = %e, "driver of a recorded network not found: network kept, restored when the driver registers");
            core.pending.add(
                &driver,
                [PendingNetwork {
                    record: net,
                    pools_v4,
                    pools_v6,
                    endpoints: eps,
                }],
            );
            continue;
        }
        let live = restore_one(core, net, pools_v4, pools_v6, eps, opened).await?;
        for ep in live {
            endpoints.insert(ep.id.clone(), ep);
        }
        kept_by_driver.entry(driver).or_default().push(id);
    }
    for (id, eps) in &by_network {
        tracing::warn!(
            network = id::short(id),
            endpoints = eps.len(),
            "endpoint records of a network without a record: ignored"
        );
    }
    Ok((endpoints, kept_by_driver))
}

/// The name of a recorded local network's IPAM driver when it is not the controller's own.
fn waiting_ipam(rec: &NetworkRecord) -> Option<&str> {
    let name = rec.ipam_driver.as_str();
    (rec.scope != Scope::Global && !name.is_empty() && name != "default").then_some(name)
}

/// Restores the networks that waited for their IPAM driver (see [`restore_networks`]) whose
/// IPAM is found now: their pools and addresses reserved in it, then handed to their driver
/// (or, when that is missing, left waiting for it as at reload).
pub(crate) async fn restore_waiting_ipams(core: Arc<Core>) -> Result<(), CoreError> {
    for name in core.pending_ipam.names() {
        if let Err(e) = core.find_ipam(Some(&name)).await {
            tracing::debug!(ipam = %name, error = %e, "ipam driver still missing");
            continue;
        }
        let mut waiting = core.pending_ipam.take(&name).into_iter();
        while let Some(w) = waiting.next() {
            let (pools_v4, pools_v6) = match reserve(&core, &w.record, &w.endpoints).await {
                Ok(pools) => pools,
                Err(e) => {
                    // Still waiting, this one and the rest: tried again on the next call.
                    core.pending_ipam
                        .add(&name, std::iter::once(w).chain(waiting));
                    return Err(e);
                }
            };
            tracing::info!(network = %w.record.value.name, ipam = %name, "ipam driver found: network restored");
            let p = PendingNetwork {
                record: w.record,
                pools_v4,
                pools_v6,
                endpoints: w.endpoints,
            };
            let driver = p.record.value.driver.clone();
            if let Err(e) = core.find_driver(&driver).await {
                tracing::warn!(network = %p.record.value.name, driver = %driver, error = %e, "driver of a recorded network not found: network kept, restored when the driver registers");
                core.pending.add(&driver, [p]);
                continue;
            }
            if let Err(e) = restore_waiting(&core, p.clone()).await {
                // Its pools are reserved now: it waits as one whose driver failed, tried again
                // by the next call with the rest.
                core.pending.add(&driver, [p]);
                core.pending_ipam.add(&name, waiting);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Reserves a recorded network's pools and its endpoints' addresses: in IPAM for a local
/// network, in the cluster mirror for a global one (whose claims are in the cluster store).
async fn reserve(
    core: &Core,
    net: &Versioned<NetworkRecord>,
    eps: &[Versioned<EndpointRecord>],
) -> Result<(Vec<NetworkPool>, Vec<NetworkPool>), CoreError> {
    let rec = &net.value;
    let addresses = eps.iter().flat_map(|e| {
        let v4 = e
            .value
            .ipv4
            .as_ref()
            .map(|(a, p)| (IpAddr::V4(a.addr()), p.clone()));
        let v6 = e
            .value
            .ipv6
            .as_ref()
            .map(|(a, p)| (IpAddr::V6(a.addr()), p.clone()));
        v4.into_iter()
            .chain(v6)
            .map(|(a, p)| (a, p, e.value.name.clone()))
    });
    if rec.scope == Scope::Global {
        let cluster = core.cluster_for(&rec.name, &rec.driver)?;
        let v4: Vec<NetworkPool> = rec.ipv4.iter().map(NetworkPool::from_record).collect();
        let v6: Vec<NetworkPool> = rec.ipv6.iter().map(NetworkPool::from_record).collect();
        let all: Vec<NetworkPool> = v4.iter().chain(&v6).cloned().collect();
        cluster.adopt(&rec.id, net.version, &all)?;
        for (addr, pool, _) in addresses {
            cluster.restore_address(&pool, addr);
        }
        return Ok((v4, v6));
    }
    // The network's IPAM: the controller's, or one found by name (a plugin).
    let ipam = core
        .find_ipam(Some(rec.ipam_driver.as_str()).filter(|n| !n.is_empty()))
        .await?;
    if !ipam.requires_request_replay() {
        // The IPAM kept its own state: it is given its pools back, nothing is asked again.
        let addresses: Vec<(IpAddr, PoolId)> = addresses.map(|(a, p, _)| (a, p)).collect();
        let v4 = adopt_pools(&ipam, &rec.ipv4, Family::V4, &addresses, &rec.name).await?;
        let v6 = adopt_pools(&ipam, &rec.ipv6, Family::V6, &addresses, &rec.name).await?;
        return Ok((v4, v6));
    }
    let v4 = restore_pools(&ipam, &rec.ipv4, Family::V4, &rec.name).await?;
    let v6 = restore_pools(&ipam, &rec.ipv6, Family::V6, &rec.name).await?;
    for (addr, pool, name) in addresses {
        ipam.request_address(&pool, AddressRequest::Specific(addr))
            .await
            .map_err(|e| CoreError::failed("restore address of endpoint", name, e))?;
    }
    Ok((v4, v6))
}

/// One recorded network, its pools and addresses reserved, handed back to its driver with its
/// endpoints (and where each is joined, among `opened`), and put in the controller's maps.
/// Returns the endpoints.
async fn restore_one(
    core: &Arc<Core>,
    net: Versioned<NetworkRecord>,
    pools_v4: Vec<NetworkPool>,
    pools_v6: Vec<NetworkPool>,
    eps: Vec<Versioned<EndpointRecord>>,
    opened: &BTreeMap<String, Opened>,
) -> Result<Vec<Arc<EndpointInner>>, CoreError> {
    let rec = net.value;
    let driver = core.driver(&rec.driver)?;
    let options = network_options(&rec)?;
    let parsed = driver
        .parse_network_options(&options.driver_keys())
        .map_err(|e| CoreError::failed("parse the recorded options of network", &rec.name, e))?;
    let parts = NetworkParts {
        id: rec.id.clone(),
        name: rec.name.clone(),
        driver_name: rec.driver.clone(),
        capability: driver.capability().with_scope(rec.scope),
        mtu: options.mtu()?,
        options,
        parsed,
        pools_v4,
        pools_v6,
        created: rec.created,
        allocation: rec.allocation.clone(),
    };
    let spec = parts.spec();
    let net = Arc::new(parts.build(net.version));
    let mut restored = Vec::new();
    let mut live = Vec::new();
    for ep in eps {
        let r = ep.value;
        let ep_inner = restore_endpoint(core, &net, r, ep.version)?;
        let joined = ep_inner.state().sandbox.clone().and_then(|sid| {
            let sb = opened.get(&sid)?;
            let j = sb
                .rec
                .value
                .endpoints
                .iter()
                .find(|j| j.endpoint_id == ep_inner.id)?;
            let ifname = j.requested.clone().or_else(|| j.ifname.clone())?;
            Some(RestoredJoin::new(
                SandboxRef {
                    id: sid,
                    key: sb.ns.key.clone(),
                    ns: sb.ns.ns.clone(),
                    netlink: sb.ns.netlink.clone(),
                },
                ifname,
            ))
        });
        // A record joined to a sandbox that was not reopened is free.
        let joined_to = ep_inner.state().sandbox.clone();
        if joined_to.is_some_and(|s| !opened.contains_key(&s)) {
            ep_inner.state().sandbox = None;
        }
        restored.push(RestoredEndpoint::new(
            EndpointSpec {
                network_id: rec.id.clone(),
                endpoint_id: ep_inner.id.clone(),
                name: ep_inner.name.clone(),
                ipv4: ep_inner.ipv4.as_ref().map(|a| a.addr),
                ipv6: ep_inner.ipv6.as_ref().map(|a| a.addr),
                mac: ep_inner.mac,
                options: ep_inner.options.options_for_driver(),
                parsed: ep_inner.parsed.clone(),
            },
            joined,
        ));
        live.push(ep_inner);
    }
    driver
        .restore_network(&spec, &restored)
        .await
        .map_err(|e| CoreError::failed("restore network", &rec.name, e))?;
    {
        let mut st = net.state();
        for ep in &live {
            st.endpoints
                .insert(ep.name.clone(), Some(Arc::downgrade(ep)));
            if let Some(mac) = ep.mac
                && let Err(e) = st.claim_mac(mac, &ep.name, &rec.name)
            {
                // Recorded by a build that did not check: keep both, say so.
                tracing::warn!(error = %e, endpoint = %ep.name, "duplicate MAC address restored");
            }
        }
    }
    for ep in &live {
        core.endpoints.insert(ep.id.clone(), ep.clone());
    }
    if net.capability.singleton {
        core.singletons.insert(rec.driver.clone(), rec.name.clone());
    }
    core.network_names
        .insert(rec.name.clone(), Some(rec.id.clone()));
    core.networks.insert(rec.id.clone(), net);
    tracing::debug!(network = id::short(&rec.id), name = %rec.name, "network restored");
    Ok(live)
}

/// Restores the networks that waited for `driver` (see [`restore_networks`]), with their
/// endpoints; an endpoint recorded as joined comes back joined when its sandbox is there.
/// One that fails is left waiting with those after it, tried again on the next call.
pub(crate) async fn restore_pending(core: Arc<Core>, driver: String) -> Result<(), CoreError> {
    let mut pending = core.pending.take(&driver).into_iter();
    while let Some(p) = pending.next() {
        if let Err(e) = restore_waiting(&core, p.clone()).await {
            core.pending.add(&driver, std::iter::once(p).chain(pending));
            return Err(e);
        }
    }
    Ok(())
}

/// Restores the networks that waited for their driver (see [`restore_networks`]) whose driver
/// is found now, by the resolver (a plugin that appeared) or registered meanwhile. Those whose
/// driver is still missing keep waiting; the first error is returned after every driver was
/// tried.
pub(crate) async fn restore_waiting_drivers(core: Arc<Core>) -> Result<(), CoreError> {
    let mut first = None;
    for name in core.pending.names() {
        if let Err(e) = core.find_driver(&name).await {
            tracing::debug!(driver = %name, error = %e, "driver still missing");
            continue;
        }
        tracing::info!(driver = %name, "driver found: restoring the networks that waited for it");
        if let Err(e) = restore_pending(core.clone(), name).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Restores one network that waited (for its driver or its IPAM), its pools reserved, with its
/// endpoints; an endpoint recorded as joined comes back joined when its sandbox is there.
async fn restore_waiting(core: &Arc<Core>, p: PendingNetwork) -> Result<(), CoreError> {
    // A global network deleted by another host meanwhile is let go of, not restored.
    if p.record.value.scope == Scope::Global
        && let Some(cluster) = core.cluster()
    {
        let key = crate::record::network_key(&p.record.value.id);
        let exists = cluster
            .store
            .get(&key)
            .await
            .map_err(|e| CoreError::failed("read", &key, e))?
            .is_some();
        if !exists {
            cluster.forget(&p.record.value.id);
            core.network_names.remove(&p.record.value.name);
            return Ok(());
        }
    }
    let sandboxes: Vec<Arc<SandboxInner>> = p
        .endpoints
        .iter()
        .filter_map(|e| e.value.sandbox_id.as_ref())
        .filter_map(|sid| core.sandboxes.get(sid).map(|s| s.value().clone()))
        .collect();
    // The sandboxes' operation locks, in id order, so no join or leave runs meanwhile.
    let mut sandboxes = sandboxes;
    sandboxes.sort_by(|a, b| a.id.cmp(&b.id));
    sandboxes.dedup_by(|a, b| a.id == b.id);
    let mut guards = Vec::new();
    for sb in &sandboxes {
        guards.push(sb.op.lock().await);
    }
    let opened: BTreeMap<String, Opened> = sandboxes
        .iter()
        .map(|sb| {
            let st = sb.state();
            let rec = sb.record(&st.joined, st.gateway.as_deref());
            let version = st.version;
            drop(st);
            (
                sb.id.clone(),
                Opened {
                    rec: Versioned {
                        version,
                        value: rec,
                    },
                    ns: sb.ns.clone(),
                },
            )
        })
        .collect();
    let live = restore_one(core, p.record, p.pools_v4, p.pools_v6, p.endpoints, &opened).await?;
    for sb in &sandboxes {
        let detached = sb.take_detached(|j| live.iter().any(|e| e.id == j.endpoint_id));
        for j in detached {
            let Some(ep) = live.iter().find(|e| e.id == j.endpoint_id) else {
                return Ok(());
            };
            let index = joined_index(core, &sb.ns, &sb.id, j.ifname.as_ref()).await?;
            let mut joined = Joined::from_record(ep.clone(), &j, index);
            if sb.state().gateway.as_deref() == Some(ep.id.as_str()) {
                restore_gateway(core, sb, &mut joined).await?;
            }
            // Back where it was: before the first join with a later interface.
            let mut st = sb.state();
            let at = joined
                .eth
                .and_then(|n| st.joined.iter().position(|o| o.eth.is_some_and(|m| m > n)))
                .unwrap_or(st.joined.len());
            st.joined.insert(at, joined);
        }
        let joined = sb.state().joined.clone();
        write_hosts(core, sb, &joined)?;
    }
    drop(guards);
    Ok(())
}

/// Brings the controller's global networks in line with the cluster store's records: adopts
/// those it does not have (handed to their drivers, which create them on this host), updates
/// the record versions address claims check, and lets go of those deleted elsewhere. Returns
/// the store revision it read at.
pub(crate) async fn sync_cluster(core: &Arc<Core>) -> Result<u64, CoreError> {
    let Some(cluster) = core.cluster() else {
        return Ok(0);
    };
    let _one = cluster.sync.lock().await;
    let listing = cluster
        .store
        .list_with_revision("network/")
        .await
        .map_err(|e| CoreError::failed("read", "network/", e))?;
    let mut seen = BTreeSet::new();
    for (key, v) in listing.entries {
        let rec: NetworkRecord = match serde_json::from_slice(&v.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key, error = %e, "undecodable network record in the cluster store");
                continue;
            }
        };
        seen.insert(rec.id.clone());
        if core.networks.contains_key(&rec.id) {
            // The version its address claims check; never that of a record being deleted,
            // so a claim racing the delete fails.
            if !rec.deleting {
                let pools: Vec<NetworkPool> = rec
                    .ipv4
                    .iter()
                    .chain(&rec.ipv6)
                    .map(NetworkPool::from_record)
                    .collect();
                cluster.adopt(&rec.id, v.version, &pools)?;
            }
            continue;
        }
        if rec.deleting || cluster.knows(&rec.id) {
            // Going, or being created or restored here, or waiting for its driver.
            continue;
        }
        // The name: free here, or taken by a network being created here (skipped: this host
        // made it or lost the race for it) or by a local network of this host.
        match core.network_names.entry(rec.name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(o) => {
                if o.get().is_some() {
                    tracing::warn!(network = %rec.name, "a global network's name is taken by a local network of this host: not adopted");
                }
                continue;
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                e.insert(None);
            }
        }
        let (id, name) = (rec.id.clone(), rec.name.clone());
        let net = Versioned {
            version: v.version,
            value: rec,
        };
        let adopted = async {
            let (v4, v6) = reserve(core, &net, &[]).await?;
            if core.driver(&net.value.driver).is_err() {
                core.network_names.insert(name.clone(), Some(id.clone()));
                let driver = net.value.driver.clone();
                core.pending.add(
                    &driver,
                    [PendingNetwork {
                        record: net,
                        pools_v4: v4,
                        pools_v6: v6,
                        endpoints: Vec::new(),
                    }],
                );
                return Ok(());
            }
            restore_one(core, net, v4, v6, Vec::new(), &BTreeMap::new())
                .await
                .map(drop)
        }
        .await;
        if let Err(e) = adopted {
            tracing::warn!(network = %name, error = %e, "adopting a global network failed");
            cluster.forget(&id);
            core.network_names.remove_if(&name, |_, v| v.is_none());
        } else {
            tracing::info!(network = %name, "global network adopted");
        }
    }
    // Networks deleted by another host.
    let gone: Vec<Arc<NetworkInner>> = core
        .networks
        .iter()
        .filter(|n| n.is_global() && !seen.contains(&n.id))
        .map(|n| n.value().clone())
        .collect();
    for net in gone {
        {
            let mut st = net.state();
            if st.deleting {
                continue;
            }
            if !st.endpoints.is_empty() {
                tracing::warn!(network = %net.name, "a global network deleted elsewhere still has endpoints here: kept");
                continue;
            }
            st.deleting = true;
        }
        if let Ok(d) = core.driver_of(&net)
            && let Err(e) = d.delete_network(&net.id).await
        {
            tracing::warn!(network = %net.name, error = %e, "deleting a network deleted elsewhere failed in its driver");
        }
        cluster.forget(&net.id);
        core.networks.remove(&net.id);
        core.network_names.remove(&net.name);
        tracing::info!(network = %net.name, "global network deleted by another host");
    }
    cluster.synced.send_replace(listing.revision);
    Ok(listing.revision)
}

/// The options a network was created with, from its record.
pub(crate) fn network_options(rec: &NetworkRecord) -> Result<NetworkOptions, CoreError> {
    Ok(NetworkOptions {
        pools: rec
            .ipv4
            .iter()
            .chain(&rec.ipv6)
            .map(pool_config)
            .collect::<Result<_, _>>()?,
        enable_ipv4: rec.enable_ipv4,
        enable_ipv6: rec.enable_ipv6,
        internal: rec.internal,
        labels: rec.labels.clone(),
        driver_options: rec.driver_options.clone(),
        ipam_driver: (rec.ipam_driver != "default").then(|| rec.ipam_driver.clone()),
        allow_host_overlap: rec.allow_host_overlap,
        attachable: rec.attachable,
        ipam_options: rec.ipam_options.clone(),
    })
}

/// An endpoint from its record (its addresses reserved already, see [`reserve`]): options as
/// the user gave them, the driver's options parsed once.
fn restore_endpoint(
    core: &Core,
    net: &Arc<NetworkInner>,
    r: EndpointRecord,
    version: u64,
) -> Result<Arc<EndpointInner>, CoreError> {
    let driver = core.driver_of(net)?;
    let options = r.options();
    let parsed = driver
        .parse_endpoint_options(&options.options_for_driver())
        .map_err(|e| CoreError::failed("parse the recorded options of endpoint", &r.name, e))?;
    let ep = Arc::new(EndpointInner::from_record(
        r,
        net.clone(),
        options,
        parsed,
        version,
    ));
    Ok(ep)
}

/// Sandboxes: joins, default route and published ports of the gateway endpoint, files.
async fn restore_sandboxes(
    core: &Arc<Core>,
    opened: BTreeMap<String, Opened>,
    endpoints: &HashMap<String, Arc<EndpointInner>>,
) -> Result<(), CoreError> {
    // The endpoints of networks that wait (for their driver or IPAM driver).
    let mut pending = BTreeSet::new();
    core.pending
        .each(|_, p| pending.extend(p.endpoints.iter().map(|e| e.value.id.clone())));
    core.pending_ipam
        .each(|_, w| pending.extend(w.endpoints.iter().map(|e| e.value.id.clone())));
    // Each sandbox's kernel work (interface lookups, default route, published ports, files) is
    // its own: they are restored concurrently, a bounded number at a time. The firewall is
    // loading meanwhile, so their rules still go to the kernel in the one final transaction.
    // The sandboxes go in batches: the netlink sockets of a batch are opened on one thread
    // that visits their namespaces in turn (one thread per sandbox was most of a restart's
    // kernel time, issue 15), then its sandboxes are restored concurrently; two batches at a
    // time keep RESTORE_PARALLEL sandboxes in flight, their sockets within the pool's bound.
    let pending = &pending;
    let opened: Vec<(String, Opened)> = opened.into_iter().collect();
    let mut batches: Vec<Vec<(String, Opened)>> = Vec::new();
    let mut rest = opened.into_iter().peekable();
    while rest.peek().is_some() {
        batches.push(rest.by_ref().take(OPEN_BATCH).collect());
    }
    let gateways: Vec<Vec<Option<Arc<SandboxInner>>>> = stream::iter(batches)
        .map(|batch| async move {
            let sockets: Vec<SandboxNs> = batch
                .iter()
                .filter(|(_, o)| o.rec.value.endpoints.iter().any(|j| j.ifname.is_some()))
                .map(|(_, o)| o.ns.clone())
                .collect();
            if let Err(e) = core.kernel.open_sockets(&sockets).await {
                // Each sandbox's first request opens its socket (or says why not).
                tracing::debug!(error = %e, "opening a batch of sandbox sockets failed");
            }
            futures::future::try_join_all(
                batch
                    .into_iter()
                    .map(|(sid, o)| restore_sandbox(core, sid, o, endpoints, pending)),
            )
            .await
        })
        .buffer_unordered(RESTORE_PARALLEL / OPEN_BATCH)
        .try_collect()
        .await?;
    publish_again(core, gateways.into_iter().flatten().flatten().collect()).await
}

/// A sandbox, its gateway endpoint's join, and the bindings to publish again.
type Republish = (Arc<SandboxInner>, Joined, Vec<PortBinding>);

/// Publishes again the ports of every restored sandbox's gateway endpoint (as they were, host
/// ports included; as requested when none were recorded): one batch per driver, so a restart
/// makes one trip to the firewall, not one per endpoint (issue 15).
async fn publish_again(core: &Core, sandboxes: Vec<Arc<SandboxInner>>) -> Result<(), CoreError> {
    // The gateway joins, by driver.
    let mut by_driver: BTreeMap<String, Vec<Republish>> = BTreeMap::new();
    for sb in sandboxes {
        let gateway = {
            let st = sb.state();
            st.gateway
                .as_ref()
                .and_then(|gw| st.joined.iter().find(|j| &j.ep.id == gw).cloned())
        };
        let Some(j) = gateway else { continue };
        let bindings = to_publish_again(&j);
        if bindings.is_empty() {
            continue;
        }
        by_driver
            .entry(j.ep.network.driver_name.clone())
            .or_default()
            .push((sb, j, bindings));
    }
    for (name, items) in by_driver {
        let driver = core.driver(&name)?;
        let requests: Vec<PublishRequest<'_>> = items
            .iter()
            .map(|(_, j, bindings)| PublishRequest::new(&j.ep.network.id, &j.ep.id, bindings))
            .collect();
        let made = driver
            .program_external_connectivity_batch(&requests)
            .instrument(tracing::debug_span!(
                "driver",
                call = "program_external_connectivity_batch"
            ))
            .await
            .map_err(|e| {
                CoreError::failed(
                    "publish ports again of endpoints",
                    format!("{} endpoints of driver {name}", items.len()),
                    e,
                )
            })?;
        for ((sb, j, _), published) in items.iter().zip(made) {
            if let Some(joined) = sb.state().joined.iter_mut().find(|x| x.ep.id == j.ep.id) {
                joined.published = published;
            }
        }
    }
    Ok(())
}

/// One sandbox of [`restore_sandboxes`]: its joins, its gateway endpoint's default route and
/// published ports, its files; then it is put in the controller's maps.
async fn restore_sandbox(
    core: &Arc<Core>,
    sid: String,
    o: Opened,
    endpoints: &HashMap<String, Arc<EndpointInner>>,
    pending: &BTreeSet<String>,
) -> Result<Option<Arc<SandboxInner>>, CoreError> {
    let rec = o.rec.value;
    let mut joined = Vec::new();
    let mut detached = Vec::new();
    for j in &rec.endpoints {
        let Some(ep) = endpoints.get(&j.endpoint_id) else {
            if pending.contains(&j.endpoint_id) {
                // Its network waits for its driver or its IPAM: kept in the record meanwhile.
                detached.push(j.clone());
                continue;
            }
            tracing::warn!(
                sandbox = id::short(&sid),
                endpoint = id::short(&j.endpoint_id),
                "joined endpoint not restored"
            );
            continue;
        };
        let index = joined_index(core, &o.ns, &sid, j.ifname.as_ref()).await?;
        if j.ifname.is_some() && index.is_none() {
            tracing::warn!(sandbox = id::short(&sid), ifname = ?j.ifname, "joined interface missing in its sandbox");
        }
        joined.push(Joined::from_record(ep.clone(), j, index));
    }
    let dir = core.run_dir.join("sandboxes").join(&sid);
    let sb = Arc::new(SandboxInner::new(
        sid.clone(),
        rec.container_id.clone(),
        dir.clone(),
        o.ns,
        rec.options.clone(),
        SandboxState {
            joined: Vec::new(),
            gateway: rec.gateway_endpoint.clone(),
            deleted: false,
            version: o.rec.version,
        },
    ));
    if let Some(gw) = &rec.gateway_endpoint
        && let Some(j) = joined.iter_mut().find(|j| &j.ep.id == gw)
    {
        restore_default_routes(core, &sb, j).await?;
    }
    // The directory may be gone (a reboot keeps no run dir, a crash may have left it
    // half-made): made again, the hosts file rewritten, resolv.conf written if missing.
    let host = core
        .kernel
        .prepare_dir(&dir, &core.resolv_conf)
        .await
        .map_err(|e| CoreError::failed("prepare the files of sandbox", id::short(&sid), e))?;
    write_hosts(core, &sb, &joined)?;
    let path = sb.resolv_conf_path();
    if !core.kernel.file_exists(&path) {
        core.kernel
            .write_resolv_conf(&path, &sb.resolv_conf(&host))
            .map_err(|e| CoreError::failed("write resolv.conf", path.display().to_string(), e))?;
    }
    sb.state().joined = joined;
    sb.set_detached(detached, rec.gateway_endpoint.as_deref());
    core.containers.insert(
        rec.container_id.clone(),
        Arc::new(tokio::sync::Mutex::new(Some(sb.clone()))),
    );
    core.sandboxes.insert(sid, sb.clone());
    // Its gateway endpoint's ports are published again with every other sandbox's.
    Ok(rec.gateway_endpoint.is_some().then_some(sb))
}

/// Re-reserves a network's pools and gateways in IPAM, as recorded.
async fn restore_pools(
    ipam: &Arc<dyn Ipam>,
    pools: &[PoolAllocation],
    family: Family,
    network: &str,
) -> Result<Vec<NetworkPool>, CoreError> {
    let mut out = Vec::new();
    for p in pools {
        let req = recorded_request(p, family);
        let pool = ipam
            .request_pool(&req)
            .await
            .map_err(|e| CoreError::failed("restore pool of network", network, e))?;
        if pool.id != p.pool_id {
            return Err(CoreError::invalid(
                "pool",
                &p.pool_id,
                format!("IPAM restored it as {} for network {network}", pool.id),
            ));
        }
        if let Some(gw) = p.gateway {
            // As a gateway (the pool was asked with it), as libnetwork replays it.
            let got = ipam
                .request_address(&pool.id, AddressRequest::Gateway)
                .await
                .map_err(|e| CoreError::failed("restore gateway of network", network, e))?;
            if got.addr() != gw.addr() {
                return Err(CoreError::invalid(
                    "gateway",
                    gw,
                    format!("IPAM restored it as {got} for network {network}"),
                ));
            }
        }
        out.push(NetworkPool::from_record(p));
    }
    Ok(out)
}

/// The request a recorded pool was made by.
fn recorded_request(p: &PoolAllocation, family: Family) -> PoolRequest {
    let mut req = PoolRequest::new(family);
    req.subnet = Some(p.pool_id.subnet());
    req.ip_range = p.pool_id.range();
    req.gateway = p.gateway.map(|g| g.addr());
    req.aux_addresses = p.aux_addresses.values().copied().collect();
    req
}

/// Gives an IPAM that needs no replay its recorded pools back, each with the addresses held
/// in it (gateway and endpoints').
async fn adopt_pools(
    ipam: &Arc<dyn Ipam>,
    pools: &[PoolAllocation],
    family: Family,
    addresses: &[(IpAddr, PoolId)],
    network: &str,
) -> Result<Vec<NetworkPool>, CoreError> {
    let mut out = Vec::new();
    for p in pools {
        let mut held: Vec<IpAddr> = p.gateway.map(|g| g.addr()).into_iter().collect();
        held.extend(
            addresses
                .iter()
                .filter(|(_, pool)| *pool == p.pool_id)
                .map(|(a, _)| *a),
        );
        let request = recorded_request(p, family);
        ipam.adopt_pool(&AdoptPool {
            request: &request,
            id: &p.pool_id,
            external_id: p.ipam_pool_id.as_deref(),
            addresses: &held,
        })
        .await
        .map_err(|e| CoreError::failed("adopt pool of network", network, e))?;
        out.push(NetworkPool::from_record(p));
    }
    Ok(out)
}

fn pool_config(p: &PoolAllocation) -> Result<PoolConfig, CoreError> {
    let mut c = PoolConfig::new(p.subnet);
    if let Some(given) = p.subnet_as_given {
        c = c.written_as(given)?;
    }
    if let Some(range) = p.pool_id.range() {
        c = c.with_ip_range(range)?;
    }
    if let Some(gw) = p.gateway {
        c = c.with_gateway(gw.addr())?;
    }
    for (name, addr) in &p.aux_addresses {
        c = c.with_aux_address(name.clone(), *addr)?;
    }
    Ok(c)
}

/// The gateway endpoint's default route (added unless there) and published ports (as they
/// were, host ports included; as requested when none were recorded), for one sandbox whose
/// network comes back late (its driver registered after the reload).
async fn restore_gateway(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    j: &mut Joined,
) -> Result<(), CoreError> {
    restore_default_routes(core, sb, j).await?;
    let bindings = to_publish_again(j);
    if !bindings.is_empty() {
        j.published = program(core, j, &bindings, "publish ports again of endpoint").await?;
    }
    Ok(())
}

/// What a restored gateway join publishes again: its ports as they were (host ports
/// included), or as requested when none were recorded.
fn to_publish_again(j: &Joined) -> Vec<PortBinding> {
    if j.published.is_empty() {
        j.ep.port_bindings()
    } else {
        j.published.clone()
    }
}

/// The gateway endpoint's default route (added unless there); its published ports come
/// after, with every sandbox's ([`publish_again`]).
async fn restore_default_routes(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    j: &Joined,
) -> Result<(), CoreError> {
    for route in j.default_routes() {
        match core.kernel.add_route(&sb.ns, &route).await {
            Ok(()) => {}
            Err(e) if e.kind() == cnm_types::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(CoreError::failed(
                    "restore default route",
                    format!("{} in sandbox {}", route.destination, sb.short()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Removes namespaces under `run_dir/netns` and directories under `run_dir/sandboxes` that no
/// sandbox owns: left by a crash between creating them and writing the record, or between
/// deleting the record and them.
async fn sweep_run_dir(core: &Core) -> Result<(), CoreError> {
    let owned: BTreeSet<String> = core.sandboxes.iter().map(|s| s.id.clone()).collect();
    for (sub, namespaces) in [("netns", true), ("sandboxes", false)] {
        let dir = core.run_dir.join(sub);
        let names = core
            .kernel
            .list_dir(&dir)
            .await
            .map_err(|e| CoreError::failed("read directory", dir.display().to_string(), e))?;
        for name in names.into_iter().filter(|n| !owned.contains(n)) {
            let path = dir.join(&name);
            tracing::info!(path = %path.display(), "removing what no sandbox owns");
            let (op, removed) = if namespaces {
                ("delete netns", core.kernel.delete_netns(&path).await)
            } else {
                ("remove directory", core.kernel.remove_dir(&path).await)
            };
            removed.map_err(|e| CoreError::failed(op, path.display().to_string(), e))?;
        }
    }
    Ok(())
}

/// The index of a joined interface in its sandbox, looked up by its recorded name: `None`
/// without a name or when the interface is gone.
async fn joined_index(
    core: &Core,
    ns: &SandboxNs,
    sandbox: &str,
    ifname: Option<&IfName>,
) -> Result<Option<u32>, CoreError> {
    let Some(name) = ifname else {
        return Ok(None);
    };
    core.kernel.interface_index(ns, name).await.map_err(|e| {
        CoreError::failed(
            "look up interface",
            format!("{name} in sandbox {}", id::short(sandbox)),
            e,
        )
    })
}
