//! Global scope: what a global network keeps in the cluster store, and how a host allocates
//! there so that two hosts never take the same name, subnet or address.
//!
//! The cluster store (etcd in production, one shared [`MemoryStore`](crate::store::MemoryStore)
//! in tests) holds:
//!
//! | key | value | written |
//! |---|---|---|
//! | `network/<id>` | the [`NetworkRecord`] (scope global, the driver's allocation) | by the creating host, `Expect::Absent`, in one transaction with the next two |
//! | `network-name/<name>` | the network's id | same transaction: global names are unique in the cluster |
//! | `network-subnets` | every global network's subnets | same transaction, compare-and-swap on its version: no two global networks overlap |
//! | `address/<network id>/<ip>` | the host holding it | per address, `Expect::Absent`, guarded by a check of the network record's version |
//! | `driver/<name>/…` | the driver's own ([`ScopedStore`](crate::store::ScopedStore)), its facts under `facts/` | by the driver |
//! | `names/facts/<network id>/<endpoint id>` | the DNS names and addresses of a joined endpoint, under its host's lease (`remote_names.rs`) | by the endpoint's host, at join; withdrawn at leave |
//!
//! Endpoint and sandbox records stay in each host's own store: they are that host's.
//!
//! A host picks addresses from a mirror of the global pools it keeps in memory (so picking is
//! O(1), not a scan of the cluster), and claims each in the store; a claim lost to another
//! host marks the address taken and moves on, and a mirror that runs dry is rebuilt from the
//! claims once before the pool counts as exhausted. Deleting a network first rewrites its
//! record as `deleting` (so every later claim's check fails), then refuses if any claim
//! remains: a claim and a delete racing cannot both win.

use cnm_types::FailedTo;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use cnm_ipam::{AddressRequest, Family, IpamConfig, IpamError, PoolId, PoolRequest, PoolSpec};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::model::network::NetworkPool;
use crate::options::{NetworkOptions, PoolConfig};
use crate::record::{self, NetworkRecord};
use crate::spi::Capability;
use crate::state::Core;
use crate::store::{Expect, Store, StoreError, Txn, Versioned, WatchEvent, get_json};

/// The key of the index of every global network's subnets.
pub(crate) const SUBNETS_KEY: &str = "network-subnets";

/// The key claiming a global network's name.
pub(crate) fn name_key(name: &str) -> String {
    format!("network-name/{name}")
}

fn address_prefix(network_id: &str) -> String {
    format!("address/{network_id}/")
}

fn address_key(network_id: &str, ip: IpAddr) -> String {
    format!("{}{ip}", address_prefix(network_id))
}

/// Who holds an address of a global network.
#[derive(Debug, Serialize, Deserialize)]
struct AddressClaim {
    host: String,
}

/// Subnet → network id, for every global network.
type SubnetIndex = BTreeMap<IpNet, String>;

/// The default pools of global networks: 10.0.0.0/8 in /24s (Docker's swarm default), and a
/// unique-local /48 of the cluster in /64s.
fn global_pools() -> IpamConfig {
    let v4 = PoolSpec::new(
        IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8).expect("/8")),
        24,
    )
    .expect("a /8 splits into /24s");
    IpamConfig {
        v4_pools: vec![v4],
        v6_pools: IpamConfig::docker_defaults("cnm-cluster").v6_pools,
    }
}

/// A global network this host knows: the version of its record that address claims check,
/// and its pools (to rebuild the mirror).
struct Known {
    version: u64,
    pools: Vec<NetworkPool>,
}

/// This controller's side of the cluster store.
pub(crate) struct Cluster {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) host_id: String,
    /// The addresses this host knows taken in the global pools.
    mirror: cnm_ipam::Ipam,
    known: Mutex<HashMap<String, Known>>,
    /// Serialises [`crate::ops::reload::sync_cluster`].
    pub(crate) sync: tokio::sync::Mutex<()>,
    /// Tells the watcher to stop.
    stop: tokio::sync::watch::Sender<bool>,
    /// The store revision of the last completed sync.
    pub(crate) synced: tokio::sync::watch::Sender<u64>,
}

impl Cluster {
    pub(crate) fn new(store: Arc<dyn Store>, host_id: String) -> Self {
        Self {
            store,
            host_id,
            mirror: cnm_ipam::Ipam::new(global_pools()),
            known: Mutex::new(HashMap::new()),
            sync: tokio::sync::Mutex::new(()),
            stop: tokio::sync::watch::channel(false).0,
            synced: tokio::sync::watch::channel(0).0,
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        crate::sync::lock(&self.known)
    }

    fn store_err(
        op: &'static str,
        key: impl std::fmt::Display,
    ) -> impl FnOnce(StoreError) -> CoreError {
        move |e| CoreError::failed(op, key, e)
    }

    /// Stops the watcher.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    // -----------------------------------------------------------------------------------------
    // Networks

    /// The subnet index and its version.
    async fn index(&self) -> Result<(SubnetIndex, Option<u64>), CoreError> {
        let got = get_json::<SubnetIndex>(self.store.as_ref(), SUBNETS_KEY)
            .await
            .map_err(Self::store_err("read", SUBNETS_KEY))?;
        Ok(match got {
            Some(v) => (v.value, Some(v.version)),
            None => (SubnetIndex::new(), None),
        })
    }

    /// Picks a global network's pools (the given subnets, else free default ones) against the
    /// subnets every other global network holds, each with its gateway unless the driver has
    /// none. Returns the pools and the index version they were picked against.
    pub(crate) async fn pick_pools(
        &self,
        options: &NetworkOptions,
        capability: &Capability,
        network: &str,
        id: &str,
    ) -> Result<(Vec<NetworkPool>, Vec<NetworkPool>, SubnetIndex, Option<u64>), CoreError> {
        let (mut index, version) = self.index().await?;
        let scratch = cnm_ipam::Ipam::new(global_pools());
        // Every subnet the cluster holds, and those this host still holds (a network deleted
        // elsewhere that this host's watch has not let go of yet). What is recorded does not
        // overlap: a failure here only means the subnet is in both.
        let held: Vec<IpNet> = self
            .known()
            .values()
            .flat_map(|k| k.pools.iter().map(|p| p.subnet))
            .collect();
        for subnet in index.keys().chain(&held) {
            let _ = scratch.request_pool(&PoolRequest::with_subnet(*subnet));
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        if capability.needs_addresses {
            for (family, out) in [(Family::V4, &mut v4), (Family::V6, &mut v6)] {
                for config in options.pool_configs(family) {
                    let req = PoolConfig::request(config, family);
                    let aux = config
                        .map(|c| c.aux_addresses().clone())
                        .unwrap_or_default();
                    let pool = scratch.request_pool(&req).map_err(|e| {
                        CoreError::failed("allocate a cluster-wide pool for network", network, e)
                    })?;
                    let gateway = if capability.no_gateway {
                        None
                    } else {
                        Some(
                            scratch
                                .request_address(&pool.id, AddressRequest::Gateway)
                                .map_err(|e| {
                                    CoreError::failed("allocate gateway for network", network, e)
                                })?,
                        )
                    };
                    index.insert(pool.subnet, id.to_owned());
                    out.push(NetworkPool {
                        pool_id: pool.id,
                        subnet: pool.subnet,
                        gateway,
                        aux_addresses: aux,
                        as_given: config
                            .map(crate::options::PoolConfig::subnet_as_given)
                            .filter(|g| *g != pool.subnet),
                        ipam_id: None,
                    });
                }
            }
        }
        Ok((v4, v6, index, version))
    }

    /// Writes a global network's record with its name and subnets, in one transaction;
    /// returns the record's version. The store's conflict names the key that was taken.
    pub(crate) async fn claim_network(
        &self,
        rec: &NetworkRecord,
        index: &SubnetIndex,
        index_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        let txn = Txn::new()
            .put_json(record::network_key(&rec.id), rec, Expect::Absent)?
            .put(
                name_key(&rec.name),
                rec.id.clone().into_bytes(),
                Expect::Absent,
            )
            .put_json(
                SUBNETS_KEY,
                index,
                index_version.map_or(Expect::Absent, Expect::Version),
            )?;
        self.store.commit(txn).await
    }

    /// Marks a global network as being deleted (every later address claim fails), then
    /// refuses, unmarking it, while any host holds an address in it. Returns the record and
    /// its marked version.
    pub(crate) async fn begin_delete(
        &self,
        id: &str,
        name: &str,
    ) -> Result<Versioned<NetworkRecord>, CoreError> {
        let key = record::network_key(id);
        let Some(mut rec) = get_json::<NetworkRecord>(self.store.as_ref(), &key)
            .await
            .map_err(Self::store_err("read", &key))?
        else {
            return Err(CoreError::Deleted {
                what: "network",
                name: name.to_owned(),
            });
        };
        // A record left `deleting` by a host that died half-way may be deleted again.
        rec.value.deleting = true;
        rec.version = self.write_record(&rec.value, rec.version).await?;
        let claims = self
            .store
            .list(&address_prefix(id))
            .await
            .map_err(Self::store_err("list", address_prefix(id)))?;
        if !claims.is_empty() {
            let holders = claims
                .iter()
                .map(|(k, v)| {
                    let host = serde_json::from_slice::<AddressClaim>(&v.value)
                        .map(|c| c.host)
                        .unwrap_or_default();
                    let ip = k.rsplit('/').next().unwrap_or_default();
                    format!("{ip} on host {host}")
                })
                .collect();
            rec.value.deleting = false;
            self.write_record(&rec.value, rec.version).await?;
            return Err(CoreError::NetworkInUse {
                network: name.to_owned(),
                endpoints: holders,
            });
        }
        Ok(rec)
    }

    /// Takes back the `deleting` mark (the delete failed after it).
    pub(crate) async fn abort_delete(
        &self,
        mut rec: Versioned<NetworkRecord>,
    ) -> Result<(), CoreError> {
        rec.value.deleting = false;
        self.write_record(&rec.value, rec.version).await.map(drop)
    }

    /// Rewrites a network record at `version`; notes the new version.
    async fn write_record(&self, rec: &NetworkRecord, version: u64) -> Result<u64, CoreError> {
        let key = record::network_key(&rec.id);
        let txn = Txn::new()
            .put_json(&key, rec, Expect::Version(version))
            .map_err(Self::store_err("encode", &key))?;
        let v = self
            .store
            .commit(txn)
            .await
            .map_err(Self::store_err("write", &key))?;
        // Claims check the version of a record that is not being deleted, so a claim racing
        // the delete fails.
        if !rec.deleting
            && let Some(k) = self.known().get_mut(&rec.id)
        {
            k.version = v;
        }
        Ok(v)
    }

    /// Deletes a network marked by [`Cluster::begin_delete`]: its record, name and subnets.
    pub(crate) async fn finish_delete(
        &self,
        rec: &Versioned<NetworkRecord>,
    ) -> Result<(), CoreError> {
        let key = record::network_key(&rec.value.id);
        loop {
            let (mut index, version) = self.index().await?;
            index.retain(|_, id| *id != rec.value.id);
            let txn = Txn::new()
                .delete(&key, Expect::Version(rec.version))
                .delete(name_key(&rec.value.name), Expect::Any)
                .put_json(
                    SUBNETS_KEY,
                    &index,
                    version.map_or(Expect::Absent, Expect::Version),
                )
                .map_err(Self::store_err("encode", SUBNETS_KEY))?;
            match self.store.commit(txn).await {
                Ok(_) => return Ok(()),
                // Another network came or went meanwhile: read the index again.
                Err(StoreError::Conflict { key: k, .. }) if k == SUBNETS_KEY => continue,
                Err(e) => return Err(CoreError::failed("delete", key, e)),
            }
        }
    }

    /// Takes a global network's pools into the mirror (gateways and aux addresses reserved),
    /// its record at `version`. Nothing when known already but the version.
    pub(crate) fn adopt(
        &self,
        id: &str,
        version: u64,
        pools: &[NetworkPool],
    ) -> Result<(), CoreError> {
        let mut known = self.known();
        if let Some(k) = known.get_mut(id) {
            k.version = version;
            return Ok(());
        }
        self.mirror_pools(pools)
            .map_err(|e| CoreError::failed("take the cluster pools of network", id, e))?;
        known.insert(
            id.to_owned(),
            Known {
                version,
                pools: pools.to_vec(),
            },
        );
        Ok(())
    }

    /// Takes `pools` into the mirror, all or none: on failure the pools this call took are
    /// released (never one another network holds).
    fn mirror_pools(&self, pools: &[NetworkPool]) -> Result<(), IpamError> {
        let mut taken: Vec<&PoolId> = Vec::new();
        let result = pools.iter().try_for_each(|p| {
            let mut req = PoolRequest::with_subnet(p.subnet);
            req.ip_range = p.pool_id.range();
            req.gateway = p.gateway.map(|g| g.addr());
            req.aux_addresses = p.aux_addresses.values().copied().collect();
            self.mirror.request_pool(&req)?;
            taken.push(&p.pool_id);
            if let Some(gw) = p.gateway {
                self.mirror
                    .request_address(&p.pool_id, AddressRequest::Specific(gw.addr()))?;
            }
            Ok(())
        });
        if result.is_err() {
            for id in taken {
                let _ = self.mirror.release_pool(id);
            }
        }
        result
    }

    /// Forgets a global network's pools.
    pub(crate) fn forget(&self, id: &str) {
        if let Some(k) = self.known().remove(id) {
            for p in &k.pools {
                let _ = self.mirror.release_pool(&p.pool_id);
            }
        }
    }

    /// Whether this host knows the network.
    pub(crate) fn knows(&self, id: &str) -> bool {
        self.known().contains_key(id)
    }

    // -----------------------------------------------------------------------------------------
    // Addresses

    /// Claims an address of a global network for this host: the one asked for, or the lowest
    /// this host does not know taken, skipping those another host claimed first.
    pub(crate) async fn request_address(
        &self,
        network_id: &str,
        network: &str,
        pool: &PoolId,
        req: AddressRequest,
        object: &str,
    ) -> Result<IpNet, CoreError> {
        let net_key = record::network_key(network_id);
        let claim = serde_json::to_vec(&AddressClaim {
            host: self.host_id.clone(),
        })
        .map_err(|source| CoreError::Record {
            op: "encode",
            key: address_prefix(network_id),
            source,
        })?;
        let mut rebuilt = false;
        loop {
            let candidate = match self.mirror.request_address(pool, req) {
                Ok(a) => a,
                Err(IpamError::PoolExhausted { .. }) if !rebuilt => {
                    // Addresses other hosts released since this host marked them: look again.
                    self.rebuild(network_id).await?;
                    rebuilt = true;
                    continue;
                }
                Err(e) => {
                    return Err(CoreError::failed(
                        "allocate address for endpoint",
                        object,
                        e,
                    ));
                }
            };
            let Some(version) = self.known().get(network_id).map(|k| k.version) else {
                let _ = self.mirror.release_address(pool, candidate.addr());
                return Err(CoreError::Deleted {
                    what: "network",
                    name: network.to_owned(),
                });
            };
            let key = address_key(network_id, candidate.addr());
            let txn = Txn::new().check(&net_key, Expect::Version(version)).put(
                &key,
                claim.clone(),
                Expect::Absent,
            );
            match self.store.commit(txn).await {
                Ok(_) => return Ok(candidate),
                Err(StoreError::Conflict { key: k, .. }) if k == key => {
                    // Another host holds it: it stays marked here; try the next.
                    if let AddressRequest::Specific(addr) = req {
                        return Err(CoreError::failed(
                            "allocate address for endpoint",
                            object,
                            IpamError::AddressInUse {
                                addr,
                                pool: pool.subnet(),
                            },
                        ));
                    }
                }
                Err(StoreError::Conflict { key: k, .. }) if k == net_key => {
                    let _ = self.mirror.release_address(pool, candidate.addr());
                    self.refresh(network_id, network).await?;
                }
                Err(e) => {
                    let _ = self.mirror.release_address(pool, candidate.addr());
                    return Err(CoreError::failed("claim", key, e));
                }
            }
        }
    }

    /// Reads a network's record again after a claim's check failed: a new version to check,
    /// or the network is going.
    async fn refresh(&self, network_id: &str, network: &str) -> Result<(), CoreError> {
        let key = record::network_key(network_id);
        let rec = get_json::<NetworkRecord>(self.store.as_ref(), &key)
            .await
            .map_err(Self::store_err("read", &key))?;
        match rec {
            Some(r) if !r.value.deleting => {
                if let Some(k) = self.known().get_mut(network_id) {
                    k.version = r.version;
                }
                Ok(())
            }
            _ => Err(CoreError::Deleted {
                what: "network",
                name: network.to_owned(),
            }),
        }
    }

    /// Rebuilds a network's pools in the mirror from the claims in the store.
    async fn rebuild(&self, network_id: &str) -> Result<(), CoreError> {
        let prefix = address_prefix(network_id);
        let claims = self
            .store
            .list(&prefix)
            .await
            .map_err(Self::store_err("list", &prefix))?;
        let known = self.known();
        let Some(k) = known.get(network_id) else {
            return Ok(());
        };
        for p in &k.pools {
            let _ = self.mirror.release_pool(&p.pool_id);
        }
        self.mirror_pools(&k.pools).map_err(|e| {
            CoreError::failed("rebuild the cluster pools of network", network_id, e)
        })?;
        for (key, _) in claims {
            let Some(ip) = key
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if let Some(p) = k.pools.iter().find(|p| p.subnet.contains(&ip)) {
                let _ = self
                    .mirror
                    .request_address(&p.pool_id, AddressRequest::Specific(ip));
            }
        }
        Ok(())
    }

    /// Gives an address of a global network back to the cluster.
    pub(crate) async fn release_address(
        &self,
        network_id: &str,
        pool: &PoolId,
        addr: IpAddr,
    ) -> Result<(), CoreError> {
        let key = address_key(network_id, addr);
        self.store
            .delete(&key, Expect::Any)
            .await
            .map_err(Self::store_err("delete", &key))?;
        // After a rebuild the mirror may not have it: nothing to do then.
        let _ = self.mirror.release_address(pool, addr);
        Ok(())
    }

    /// Marks an address this host claimed before a restart as taken in the mirror.
    pub(crate) fn restore_address(&self, pool: &PoolId, addr: IpAddr) {
        let _ = self
            .mirror
            .request_address(pool, AddressRequest::Specific(addr));
    }
}

/// Keeps a controller's view of the global networks current: lists them at `revision`'s
/// successor on, and syncs after every change (a burst of changes, one sync), until the
/// controller goes.
pub(crate) fn watch(core: &Arc<Core>, cluster: &Cluster, revision: u64) -> Result<(), CoreError> {
    let mut watch = cluster
        .store
        .watch_from("network/", revision)
        .map_err(|e| CoreError::failed("watch", "network/", e))?;
    let mut stop = cluster.stop.subscribe();
    let weak: Weak<Core> = Arc::downgrade(core);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                event = watch.next() => event,
            };
            let Some(event) = event else { return };
            let mut resync = matches!(event, WatchEvent::Resync { .. });
            while let Some(e) = watch.try_next() {
                resync |= matches!(e, WatchEvent::Resync { .. });
            }
            let Some(core) = weak.upgrade() else { return };
            // A shutdown waits for a sync in flight, and stops the next.
            let Ok(_pass) = core.gate.enter() else { return };
            match crate::ops::reload::sync_cluster(&core).await {
                Ok(rev) if resync => {
                    let Some(cluster) = core.cluster() else {
                        return;
                    };
                    match cluster.store.watch_from("network/", rev) {
                        Ok(w) => watch = w,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch the cluster's networks again");
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "syncing the cluster's networks failed"),
            }
        }
    });
    Ok(())
}
