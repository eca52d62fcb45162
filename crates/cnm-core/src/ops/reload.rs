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
//! one transaction; destructive ones: records first, kernel after, except a network's or an
//! endpoint's delete, which the restore simply redoes from the surviving record), this makes
//! every operation interrupted by a crash look done completely or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cnm_ipam::{AddressRequest, Family, PoolRequest};

use crate::CoreError;
use crate::id;
use crate::kernel::SandboxNs;
use crate::model::endpoint::EndpointInner;
use crate::model::network::{NetworkInner, NetworkParts, NetworkPool};
use crate::model::sandbox::{Joined, SandboxInner, SandboxState};
use crate::options::{NetworkOptions, PoolConfig};
use crate::record::{EndpointRecord, NetworkRecord, PoolAllocation, SandboxRecord, endpoint_key};
use crate::spi::{EndpointSpec, RestoredEndpoint, RestoredJoin, SandboxRef};
use crate::state::Core;
use crate::store::{Expect, Txn, Versioned, list_json};

use super::gateway::program;
use super::join::write_hosts;

/// A sandbox whose namespace could be reopened.
struct Opened {
    rec: Versioned<SandboxRecord>,
    ns: SandboxNs,
}

pub(crate) async fn reload(core: &Arc<Core>) -> Result<(), CoreError> {
    let store = core.store.as_ref();
    let read = |prefix: &'static str| move |e| CoreError::store("read", prefix, e);
    let nets = list_json::<NetworkRecord>(store, "network/")
        .await
        .map_err(read("network/"))?;
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
            .map_err(|e| CoreError::driver("sweep after restart", &name, e))?;
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
    tracing::info!(
        networks = core.networks.len(),
        endpoints = endpoints.len(),
        sandboxes = core.sandboxes.len(),
        "state reloaded"
    );
    Ok(())
}

/// Reopens each sandbox's namespace by its key. A record whose namespace is gone (a reboot, or
/// removed behind our back) is dropped with its endpoints freed, in one transaction.
async fn reopen_sandboxes(
    core: &Core,
    sbs: Vec<(String, Versioned<SandboxRecord>)>,
    eps: &mut BTreeMap<String, Versioned<EndpointRecord>>,
) -> Result<BTreeMap<String, Opened>, CoreError> {
    let mut opened = BTreeMap::new();
    for (key, rec) in sbs {
        match core.kernel.open_netns(&rec.value.key).await {
            Ok(ns) => {
                opened.insert(rec.value.id.clone(), Opened { rec, ns });
            }
            Err(e) => {
                tracing::warn!(sandbox = id::short(&rec.value.id), key = %rec.value.key.display(), error = %e, "sandbox namespace gone: dropping its record");
                let mut txn = Txn::new().delete(&key, Expect::Version(rec.version));
                let mut freed = Vec::new();
                for j in &rec.value.endpoints {
                    if let Some(ep) = eps.get(&j.endpoint_id) {
                        let mut r = ep.value.clone();
                        r.sandbox_id = None;
                        let ekey = endpoint_key(&r.network_id, &r.id);
                        txn = txn
                            .put_json(&ekey, &r, Expect::Version(ep.version))
                            .map_err(|e| CoreError::store("encode", &ekey, e))?;
                        freed.push(j.endpoint_id.clone());
                    }
                }
                let rev = core
                    .store
                    .commit(txn)
                    .await
                    .map_err(|e| CoreError::store("delete", &key, e))?;
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
/// endpoints by id, and the networks kept by each driver.
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
        let rec = net.value;
        let Ok(driver) = core.driver(&rec.driver) else {
            tracing::warn!(network = %rec.name, driver = %rec.driver, "driver of a recorded network is not linked: network not restored");
            continue;
        };
        let options = network_options(&rec)?;
        let parsed = driver
            .parse_network_options(&options.driver_keys())
            .map_err(|e| {
                CoreError::driver("parse the recorded options of network", &rec.name, e)
            })?;
        let parts = NetworkParts {
            id: rec.id.clone(),
            name: rec.name.clone(),
            driver_name: rec.driver.clone(),
            capability: driver.capability(),
            mtu: options.mtu()?,
            options,
            parsed,
            pools_v4: restore_pools(core, &rec.ipv4, Family::V4, &rec.name).await?,
            pools_v6: restore_pools(core, &rec.ipv6, Family::V6, &rec.name).await?,
            created: rec.created,
        };
        let spec = parts.spec();
        let net = Arc::new(parts.build(net.version));
        let mut restored = Vec::new();
        let mut live = Vec::new();
        for ep in by_network.remove(&rec.id).unwrap_or_default() {
            let r = ep.value;
            let ep_inner = restore_endpoint(core, &net, r, ep.version).await?;
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
                    options: ep_inner.options.driver_options.clone(),
                    parsed: ep_inner.parsed.clone(),
                },
                joined,
            ));
            live.push(ep_inner);
        }
        driver
            .restore_network(&spec, &restored)
            .await
            .map_err(|e| CoreError::driver("restore network", &rec.name, e))?;
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
        for ep in live {
            core.endpoints.insert(ep.id.clone(), ep.clone());
            endpoints.insert(ep.id.clone(), ep);
        }
        if net.capability.singleton {
            core.singletons.insert(rec.driver.clone(), rec.name.clone());
        }
        core.network_names
            .insert(rec.name.clone(), Some(rec.id.clone()));
        core.networks.insert(rec.id.clone(), net);
        kept_by_driver
            .entry(rec.driver.clone())
            .or_default()
            .push(rec.id.clone());
        tracing::debug!(network = id::short(&rec.id), name = %rec.name, "network restored");
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

/// The options a network was created with, from its record.
fn network_options(rec: &NetworkRecord) -> Result<NetworkOptions, CoreError> {
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
    })
}

/// An endpoint from its record: addresses held in IPAM again, options as the user gave them,
/// the driver's options parsed once.
async fn restore_endpoint(
    core: &Core,
    net: &Arc<NetworkInner>,
    r: EndpointRecord,
    version: u64,
) -> Result<Arc<EndpointInner>, CoreError> {
    let driver = core.driver_of(net)?;
    let parsed = driver
        .parse_endpoint_options(&r.driver_options)
        .map_err(|e| CoreError::driver("parse the recorded options of endpoint", &r.name, e))?;
    let options = r.options();
    let ep = Arc::new(EndpointInner::from_record(
        r,
        net.clone(),
        options,
        parsed,
        version,
    ));
    for (addr, pool) in ep.reserved() {
        core.ipam
            .request_address(pool, AddressRequest::Specific(addr))
            .await
            .map_err(|e| CoreError::ipam("restore address of endpoint", &ep.name, e))?;
    }
    Ok(ep)
}

/// Sandboxes: joins, default route and published ports of the gateway endpoint, files.
async fn restore_sandboxes(
    core: &Arc<Core>,
    opened: BTreeMap<String, Opened>,
    endpoints: &HashMap<String, Arc<EndpointInner>>,
) -> Result<(), CoreError> {
    for (sid, o) in opened {
        let rec = o.rec.value;
        let mut joined = Vec::new();
        for j in &rec.endpoints {
            let Some(ep) = endpoints.get(&j.endpoint_id) else {
                tracing::warn!(
                    sandbox = id::short(&sid),
                    endpoint = id::short(&j.endpoint_id),
                    "joined endpoint not restored"
                );
                continue;
            };
            let index = match &j.ifname {
                Some(name) => core
                    .kernel
                    .interface_index(&o.ns, name)
                    .await
                    .map_err(|e| {
                        CoreError::sandbox(
                            "look up interface",
                            format!("{name} in sandbox {}", id::short(&sid)),
                            e,
                        )
                    })?,
                None => None,
            };
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
            restore_gateway(core, &sb, j).await?;
        }
        // The directory may be gone (a reboot keeps no run dir, a crash may have left it
        // half-made): made again, the hosts file rewritten, resolv.conf written if missing.
        let host = core
            .kernel
            .prepare_dir(&dir, &core.resolv_conf)
            .await
            .map_err(|e| CoreError::sandbox("prepare the files of sandbox", id::short(&sid), e))?;
        write_hosts(core, &sb, &joined)?;
        let path = sb.resolv_conf_path();
        if !core.kernel.file_exists(&path) {
            core.kernel
                .write_resolv_conf(&path, &sb.resolv_conf(&host))
                .map_err(|e| {
                    CoreError::sandbox("write resolv.conf", path.display().to_string(), e)
                })?;
        }
        sb.state().joined = joined;
        core.containers.insert(
            rec.container_id.clone(),
            Arc::new(tokio::sync::Mutex::new(Some(sb.clone()))),
        );
        core.sandboxes.insert(sid, sb);
    }
    Ok(())
}

/// Re-reserves a network's pools and gateways in IPAM, as recorded.
async fn restore_pools(
    core: &Core,
    pools: &[PoolAllocation],
    family: Family,
    network: &str,
) -> Result<Vec<NetworkPool>, CoreError> {
    let mut out = Vec::new();
    for p in pools {
        let mut req = PoolRequest::new(family);
        req.subnet = Some(p.pool_id.subnet());
        req.ip_range = p.pool_id.range();
        req.gateway = p.gateway.map(|g| g.addr());
        req.aux_addresses = p.aux_addresses.values().copied().collect();
        let pool = core
            .ipam
            .request_pool(&req)
            .await
            .map_err(|e| CoreError::ipam("restore pool of network", network, e))?;
        if pool.id != p.pool_id {
            return Err(CoreError::invalid(
                "pool",
                &p.pool_id,
                format!("IPAM restored it as {} for network {network}", pool.id),
            ));
        }
        if let Some(gw) = p.gateway {
            core.ipam
                .request_address(&pool.id, AddressRequest::Specific(gw.addr()))
                .await
                .map_err(|e| CoreError::ipam("restore gateway of network", network, e))?;
        }
        out.push(NetworkPool::from_record(p));
    }
    Ok(out)
}

fn pool_config(p: &PoolAllocation) -> Result<PoolConfig, CoreError> {
    let mut c = PoolConfig::new(p.subnet);
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
/// were, host ports included; as requested when none were recorded).
async fn restore_gateway(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    j: &mut Joined,
) -> Result<(), CoreError> {
    for route in j.default_routes() {
        match core.kernel.add_route(&sb.ns, &route).await {
            Ok(()) => {}
            Err(e) if e.kind() == cnm_types::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(CoreError::sandbox(
                    "restore default route",
                    format!("{} in sandbox {}", route.destination, sb.short()),
                    e,
                ));
            }
        }
    }
    let bindings = if j.published.is_empty() {
        j.ep.options.port_bindings.clone()
    } else {
        j.published.clone()
    };
    if !bindings.is_empty() {
        j.published = program(core, j, &bindings, "publish ports again of endpoint").await?;
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
            .map_err(|e| CoreError::sandbox("read directory", dir.display().to_string(), e))?;
        for name in names.into_iter().filter(|n| !owned.contains(n)) {
            let path = dir.join(&name);
            tracing::info!(path = %path.display(), "removing what no sandbox owns");
            let (op, removed) = if namespaces {
                ("delete netns", core.kernel.delete_netns(&path).await)
            } else {
                ("remove directory", core.kernel.remove_dir(&path).await)
            };
            removed.map_err(|e| CoreError::sandbox(op, path.display().to_string(), e))?;
        }
    }
    Ok(())
}
