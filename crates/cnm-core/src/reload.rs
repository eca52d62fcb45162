//! Reload on start: the controller's records come back as live objects, and the kernel is
//! reconciled with them ("persist intent, reconcile reality").
//!
//! Order: the records are read; each sandbox's namespace is reopened by its key (a record whose
//! namespace is gone, say after a reboot, is dropped, its endpoints freed); IPAM is rebuilt from
//! the network and endpoint records themselves (pools, gateways, aux and endpoint addresses);
//! each network is handed back to its driver with its endpoints and joins
//! ([`Driver::restore_network`](crate::spi::Driver::restore_network)); each sandbox gets its
//! gateway endpoint's default route and published ports again and its hosts file rewritten;
//! then the sweep removes what no record owns: namespaces under `run_dir/netns`, directories
//! under `run_dir/sandboxes`, and, through each driver's
//! [`sweep`](crate::spi::Driver::sweep), links and rules of networks without a record.
//!
//! With the write order of the operations (constructive ones: kernel first, records last in
//! one transaction; destructive ones: records first, kernel after, except a network's or an
//! endpoint's delete, which the restore simply redoes from the surviving record), this makes
//! every operation interrupted by a crash look done completely or not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use cnm_ipam::{AddressRequest, Family, PoolRequest};
use cnm_sandbox::{NetNs, Netlink};

use crate::CoreError;
use crate::controller::ControllerInner;
use crate::endpoint::EndpointInner;
use crate::id;
use crate::network::{NetworkInner, NetworkPool};
use crate::options::{EndpointOptions, NetworkOptions, PoolConfig};
use crate::record::{EndpointRecord, NetworkRecord, PoolAllocation, SandboxRecord};
use crate::sandbox::{Joined, SandboxInner, SandboxState};
use crate::spi::{EndpointSpec, NetworkSpec, RestoredEndpoint, RestoredJoin, SandboxRef};
use crate::store::{Expect, Txn, Versioned, list_json};

/// A sandbox whose namespace could be reopened.
struct Opened {
    rec: Versioned<SandboxRecord>,
    ns: NetNs,
    netlink: Netlink,
}

pub(crate) async fn reload(ctl: &Arc<ControllerInner>) -> Result<(), CoreError> {
    let store = ctl.store.as_ref();
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

    // 1. Sandboxes: reopen each namespace by its key.
    let mut opened: BTreeMap<String, Opened> = BTreeMap::new();
    for (key, rec) in sbs {
        match NetNs::open(&rec.value.key) {
            Ok(ns) => {
                let netlink = Netlink::connect(&ns).await.map_err(|e| {
                    CoreError::sandbox("connect netlink in sandbox", id::short(&rec.value.id), e)
                })?;
                opened.insert(rec.value.id.clone(), Opened { rec, ns, netlink });
            }
            Err(e) => {
                // Its namespace is gone (a reboot, or removed behind our back): so is the
                // container's network. Drop the record and free its endpoints, in one go.
                tracing::warn!(sandbox = id::short(&rec.value.id), key = %rec.value.key.display(), error = %e, "sandbox namespace gone: dropping its record");
                let mut txn = Txn::new().delete(&key, Expect::Version(rec.version));
                let mut freed = Vec::new();
                for j in &rec.value.endpoints {
                    if let Some(ep) = eps.get(&j.endpoint_id) {
                        let mut r = ep.value.clone();
                        r.sandbox_id = None;
                        let ekey = crate::record::endpoint_key(&r.network_id, &r.id);
                        txn = txn
                            .put_json(&ekey, &r, Expect::Version(ep.version))
                            .map_err(|e| CoreError::store("encode", &ekey, e))?;
                        freed.push(j.endpoint_id.clone());
                    }
                }
                let rev = ctl
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

    // 2. Networks, with IPAM rebuilt from the records, handed back to their drivers.
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
        let Some(driver) = ctl.drivers.get(&rec.driver).cloned() else {
            tracing::warn!(network = %rec.name, driver = %rec.driver, "driver of a recorded network is not linked: network not restored");
            continue;
        };
        let capability = driver.capability();
        let v4 = restore_pools(ctl, &rec.ipv4, Family::V4, &rec.name).await?;
        let v6 = restore_pools(ctl, &rec.ipv6, Family::V6, &rec.name).await?;
        let options = NetworkOptions {
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
        };
        let mut spec = NetworkSpec::new(rec.id.clone(), rec.name.clone());
        spec.ipv4 = v4.iter().filter_map(NetworkPool::ipam_data_v4).collect();
        spec.ipv6 = v6.iter().filter_map(NetworkPool::ipam_data_v6).collect();
        spec.enable_ipv4 = rec.enable_ipv4;
        spec.enable_ipv6 = rec.enable_ipv6;
        spec.internal = rec.internal;
        spec.options = rec.driver_options.clone();
        spec.labels = rec.labels.clone();
        let inner = Arc::new(NetworkInner::new(
            rec.id.clone(),
            rec.name.clone(),
            rec.driver.clone(),
            driver.clone(),
            capability,
            options,
            v4,
            v6,
            net.version,
            rec.created,
        ));
        let mut restored = Vec::new();
        let mut live = Vec::new();
        for ep in by_network.remove(&rec.id).unwrap_or_default() {
            let r = &ep.value;
            if capability.needs_addresses {
                for (addr, pool) in r
                    .ipv4
                    .iter()
                    .map(|(a, p)| (IpAddr::V4(a.addr()), p))
                    .chain(r.ipv6.iter().map(|(a, p)| (IpAddr::V6(a.addr()), p)))
                {
                    ctl.ipam
                        .request_address(pool, AddressRequest::Specific(addr))
                        .await
                        .map_err(|e| CoreError::ipam("restore address of endpoint", &r.name, e))?;
                }
            }
            let spec = EndpointSpec {
                network_id: rec.id.clone(),
                endpoint_id: r.id.clone(),
                name: r.name.clone(),
                ipv4: r.ipv4.as_ref().map(|(a, _)| *a),
                ipv6: r.ipv6.as_ref().map(|(a, _)| *a),
                mac: r.mac,
                options: r.driver_options.clone(),
            };
            let joined = r.sandbox_id.as_ref().and_then(|sid| {
                let sb = opened.get(sid)?;
                let j = sb
                    .rec
                    .value
                    .endpoints
                    .iter()
                    .find(|j| j.endpoint_id == r.id)?;
                let ifname = j.requested.clone().or_else(|| j.ifname.clone())?;
                Some(RestoredJoin::new(
                    SandboxRef {
                        id: sid.clone(),
                        key: sb.rec.value.key.clone(),
                        ns: sb.ns.clone(),
                        netlink: sb.netlink.clone(),
                    },
                    ifname,
                ))
            });
            restored.push(RestoredEndpoint::new(spec, joined));
            let options = EndpointOptions {
                mac: r.mac,
                dns_names: r.dns_names.clone(),
                aliases: r.aliases.clone(),
                exposed_ports: r.exposed_ports.clone(),
                port_bindings: r.port_bindings.clone(),
                driver_options: r.driver_options.clone(),
                ..EndpointOptions::default()
            };
            let sandbox_id = r.sandbox_id.clone().filter(|s| opened.contains_key(s));
            let ep_inner = Arc::new(EndpointInner::new(
                r.id.clone(),
                r.name.clone(),
                inner.clone(),
                r.ipv4.clone(),
                r.ipv6.clone(),
                r.mac,
                options,
                r.clone(),
                ep.version,
            ));
            ep_inner.state.lock().await.sandbox = sandbox_id;
            live.push(ep_inner);
        }
        driver
            .restore_network(&spec, &restored)
            .await
            .map_err(|e| CoreError::driver("restore network", &rec.name, e))?;
        {
            let mut st = inner.state();
            for ep in &live {
                st.endpoints.insert(ep.name.clone(), Some(ep.clone()));
                if let Some(mac) = ep.mac
                    && let Err(e) = st.claim_mac(mac, &ep.name, &rec.name)
                {
                    // Recorded by a build that did not check: keep both, say so.
                    tracing::warn!(error = %e, endpoint = %ep.name, "duplicate MAC address restored");
                }
            }
        }
        for ep in live {
            endpoints.insert(ep.id.clone(), ep);
        }
        if capability.singleton {
            ctl.singletons.insert(rec.driver.clone(), rec.name.clone());
        }
        ctl.network_names
            .insert(rec.name.clone(), Some(rec.id.clone()));
        ctl.networks.insert(rec.id.clone(), inner);
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
    crate::crash::point("reload:after-networks");

    // 3. Sandboxes: joins, default route and published ports of the gateway endpoint, files.
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
                Some(name) => o
                    .netlink
                    .link(name.as_str())
                    .await
                    .map_err(|e| {
                        CoreError::sandbox(
                            "look up interface",
                            format!("{name} in sandbox {}", id::short(&sid)),
                            e,
                        )
                    })?
                    .map(|l| l.index),
                None => None,
            };
            if j.ifname.is_some() && index.is_none() {
                tracing::warn!(sandbox = id::short(&sid), ifname = ?j.ifname, "joined interface missing in its sandbox");
            }
            joined.push(Joined::from_record(ep.clone(), j, index));
        }
        let dir = ctl.run_dir.join("sandboxes").join(&sid);
        let sb = Arc::new(SandboxInner {
            id: sid.clone(),
            container_id: rec.container_id.clone(),
            key: rec.key.clone(),
            dir: dir.clone(),
            ns: o.ns,
            netlink: o.netlink,
            options: rec.options.clone(),
            state: tokio::sync::Mutex::new(SandboxState {
                joined: Vec::new(),
                gateway: rec.gateway_endpoint.clone(),
                deleted: false,
                version: o.rec.version,
            }),
        });
        if let Some(gw) = &rec.gateway_endpoint
            && let Some(j) = joined.iter_mut().find(|j| &j.ep.id == gw)
        {
            restore_gateway(&sb, j).await?;
        }
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            return Err(CoreError::io("create directory", dir.display(), e));
        }
        sb.write_hosts(&joined)?;
        if !sb.resolv_conf_path().exists() {
            let host = ctl.host_resolv_conf().await?;
            let path = sb.resolv_conf_path();
            crate::sandbox::container_resolv_conf(&host, &sb.options)
                .write(&path)
                .map_err(|e| {
                    CoreError::sandbox("write resolv.conf", path.display().to_string(), e)
                })?;
        }
        sb.state.lock().await.joined = joined;
        ctl.containers.insert(
            rec.container_id.clone(),
            Arc::new(tokio::sync::Mutex::new(Some(sb.clone()))),
        );
        ctl.sandboxes.insert(sid, sb);
    }

    // 4. The sweep: what no record owns.
    sweep_run_dir(ctl).await?;
    for (name, driver) in &ctl.drivers {
        let keep = kept_by_driver.get(name).cloned().unwrap_or_default();
        driver
            .sweep(&keep)
            .await
            .map_err(|e| CoreError::driver("sweep after restart", name, e))?;
    }
    crate::crash::point("reload:after-sweep");
    tracing::info!(
        networks = ctl.networks.len(),
        endpoints = endpoints.len(),
        sandboxes = ctl.sandboxes.len(),
        "state reloaded"
    );
    Ok(())
}

/// Re-reserves a network's pools and gateways in IPAM, as recorded.
async fn restore_pools(
    ctl: &ControllerInner,
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
        let pool = ctl
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
            ctl.ipam
                .request_address(&pool.id, AddressRequest::Specific(gw.addr()))
                .await
                .map_err(|e| CoreError::ipam("restore gateway of network", network, e))?;
        }
        out.push(NetworkPool {
            pool_id: p.pool_id.clone(),
            subnet: p.subnet,
            gateway: p.gateway,
            aux_addresses: p.aux_addresses.clone(),
        });
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
async fn restore_gateway(sb: &Arc<SandboxInner>, j: &mut Joined) -> Result<(), CoreError> {
    for route in j.default_routes() {
        match sb.netlink.add_route(&route).await {
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
        let net = &j.ep.network;
        j.published = net
            .driver
            .program_external_connectivity(&net.id, &j.ep.id, &bindings)
            .await
            .map_err(|e| CoreError::driver("publish ports again of endpoint", &j.ep.name, e))?;
    }
    Ok(())
}

/// Removes namespaces under `run_dir/netns` and directories under `run_dir/sandboxes` that no
/// sandbox owns: left by a crash between creating them and writing the record, or between
/// deleting the record and them.
async fn sweep_run_dir(ctl: &ControllerInner) -> Result<(), CoreError> {
    let owned: BTreeSet<String> = ctl.sandboxes.iter().map(|s| s.id.clone()).collect();
    let netns_dir = ctl.run_dir.join("netns");
    for name in dir_names(&netns_dir).await? {
        if owned.contains(&name) {
            continue;
        }
        let path = netns_dir.join(&name);
        tracing::info!(path = %path.display(), "removing a namespace no sandbox owns");
        NetNs::delete(&path)
            .await
            .map_err(|e| CoreError::sandbox("delete netns", path.display().to_string(), e))?;
    }
    let sb_dir = ctl.run_dir.join("sandboxes");
    for name in dir_names(&sb_dir).await? {
        if owned.contains(&name) {
            continue;
        }
        let path = sb_dir.join(&name);
        tracing::info!(path = %path.display(), "removing a sandbox directory no sandbox owns");
        match tokio::fs::remove_dir_all(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CoreError::io("remove directory", path.display(), e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The entry names of a directory (none when it does not exist).
async fn dir_names(dir: &Path) -> Result<Vec<String>, CoreError> {
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CoreError::io("read directory", dir.display(), e)),
    };
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(|e| CoreError::io("read directory", dir.display(), e))?
    {
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}
