//! Creating a network: everything validated first (name, options, driver, the driver's own
//! options parsed once), then the name reserved, pools and gateways allocated, the driver asked
//! to create it, and the record written last.

use cnm_types::FailedTo;
use std::sync::Arc;

use cnm_ipam::{AddressRequest, Family};
use dashmap::mapref::entry::Entry;
use ipnet::IpNet;
use tracing::Instrument as _;

use super::{check_name, delete_record, put_new_record};
use crate::CoreError;
use crate::id;
use crate::ipam::Ipam;
use crate::model::network::{NetworkInner, NetworkParts, NetworkPool};
use crate::options::{NetworkOptions, PoolConfig};
use crate::record;
use crate::spi::{Capability, Driver, DriverOptions, Scope};
use crate::state::Core;
use crate::store::{StoreError, Versioned};
use crate::undo::Undo;

/// Releases a name reservation (and a singleton claim) unless the creation committed.
struct NameReservation {
    core: Arc<Core>,
    name: String,
    singleton: Option<String>,
    committed: bool,
}

impl NameReservation {
    /// Reserves `name` (and the singleton slot of `driver` when it has one) atomically.
    fn take(
        core: &Arc<Core>,
        name: &str,
        driver: &str,
        singleton: bool,
    ) -> Result<Self, CoreError> {
        match core.network_names.entry(name.to_owned()) {
            Entry::Occupied(_) => return Err(CoreError::NetworkExists(name.to_owned())),
            Entry::Vacant(v) => {
                v.insert(None);
            }
        }
        let mut reservation = Self {
            core: core.clone(),
            name: name.to_owned(),
            singleton: None,
            committed: false,
        };
        if singleton {
            match core.singletons.entry(driver.to_owned()) {
                Entry::Occupied(o) => {
                    return Err(CoreError::SingletonNetwork {
                        driver: driver.to_owned(),
                        existing: o.get().clone(),
                    });
                }
                Entry::Vacant(v) => {
                    v.insert(name.to_owned());
                }
            }
            reservation.singleton = Some(driver.to_owned());
        }
        Ok(reservation)
    }

    fn commit(mut self, id: &str) {
        self.core
            .network_names
            .insert(self.name.clone(), Some(id.to_owned()));
        self.committed = true;
    }
}

impl Drop for NameReservation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.core
            .network_names
            .remove_if(&self.name, |_, id| id.is_none());
        if let Some(driver) = &self.singleton {
            self.core
                .singletons
                .remove_if(driver, |_, n| *n == self.name);
        }
    }
}

pub(crate) async fn create_network(
    core: Arc<Core>,
    driver_name: String,
    name: String,
    options: NetworkOptions,
) -> Result<Arc<NetworkInner>, CoreError> {
    // 1. Validate everything before touching anything.
    check_name("network name", &name)?;
    options.validate()?;
    let mtu = options.mtu()?;
    let driver = core.find_driver(&driver_name).await?;
    // An IPAM driver the controller does not have is found by name now (a plugin), or the
    // network is refused before anything is made.
    let ipam = core.find_ipam(options.ipam_driver.as_deref()).await?;
    let parsed = driver
        .parse_network_options(&options.driver_keys())
        .map_err(|e| CoreError::failed("validate options of network", &name, e))?;
    let capability = driver.capability();
    let global = capability.scope == Scope::Global;
    if global {
        // A typed error before anything is reserved.
        core.cluster_for(&name, &driver_name)?;
    }
    check_capability(&capability, &driver_name, &options)?;
    // Reading the host's addresses and routes changes nothing. A global network's subnets are
    // the cluster's: they are checked against every other global network instead.
    if capability.host_routes && !options.allow_host_overlap && !global {
        core.check_host_overlap(&options.pools).await?;
    }

    // 2. Reserve the name (and the singleton slot) atomically.
    let reservation = NameReservation::take(&core, &name, &driver_name, capability.singleton)?;

    let id = id::generate();
    let span =
        tracing::info_span!("network", id = id::short(&id), name = %name, driver = %driver_name);
    async move {
        let mut undo = Undo::new();
        let result = async {
            let mut parts = NetworkParts {
                id: id.clone(),
                name: name.clone(),
                driver_name: driver_name.clone(),
                capability,
                options,
                parsed,
                mtu,
                pools_v4: Vec::new(),
                pools_v6: Vec::new(),
                created: std::time::SystemTime::now(),
                allocation: DriverOptions::new(),
            };
            // 3. Pools and gateways, and the driver's allocation; a global network's claimed
            //    in the cluster store with its record and name, in one transaction.
            let global_version = if global {
                Some(claim_global(&core, &mut undo, &driver, &mut parts).await?)
            } else {
                if capability.needs_addresses {
                    let (v4, v6) =
                        allocate_pools(&core, &mut undo, &parts.options, &capability, &name)
                            .await?;
                    parts.pools_v4 = v4;
                    parts.pools_v6 = v6;
                }
                parts.allocation = allocate_in_driver(&mut undo, &driver, &parts).await?;
                None
            };
            // 4. The driver.
            driver
                .create_network(&parts.spec())
                .await
                .map_err(|e| CoreError::failed("create network", &name, e))?;
            {
                let (d, id) = (driver.clone(), id.clone());
                undo.push("delete network in driver", move || async move {
                    d.delete_network(&id)
                        .await
                        .map_err(|e| CoreError::failed("delete network", id, e))
                });
            }
            crate::crash::point("network-create:after-driver");
            // 5. The record: last, so a crash before it leaves nothing the restart keeps (a
            //    global network's is in the cluster store already: other hosts create it too).
            let version = match global_version {
                Some(v) => v,
                None => {
                    let key = record::network_key(&id);
                    let version = put_new_record(&core, &key, &parts.record(ipam.name())).await?;
                    undo.push("delete network record", delete_record(&core, key, version));
                    version
                }
            };
            crate::crash::point("network-create:after-record");
            Ok(Arc::new(parts.build(version)))
        }
        .await;
        let net = undo.finish(result).await?;
        core.networks.insert(net.id.clone(), net.clone());
        reservation.commit(&net.id);
        tracing::info!("network created");
        Ok(net)
    }
    .instrument(span)
    .await
}

/// Asks the driver for the network's cluster-wide allocation (undone by `free_network`).
async fn allocate_in_driver(
    undo: &mut Undo<CoreError>,
    driver: &Arc<dyn Driver>,
    parts: &NetworkParts,
) -> Result<DriverOptions, CoreError> {
    let allocation = driver
        .allocate_network(&parts.spec())
        .await
        .map_err(|e| CoreError::failed("allocate network", &parts.name, e))?;
    let (d, id, a) = (driver.clone(), parts.id.clone(), allocation.clone());
    undo.push("free network in driver", move || async move {
        d.free_network(&id, &a)
            .await
            .map_err(|e| CoreError::failed("free network", id, e))
    });
    Ok(allocation)
}

/// How often a global network's creation picks its subnets again after another host's
/// network took the index first, before giving up.
const CLAIM_ATTEMPTS: usize = 64;

/// Claims a global network in the cluster store: subnets picked against every other global
/// network's, the driver's allocation, then the record, name and subnet index in one
/// transaction (retried from the pick when another network changed the index first). Returns
/// the record's version.
async fn claim_global(
    core: &Arc<Core>,
    undo: &mut Undo<CoreError>,
    driver: &Arc<dyn Driver>,
    parts: &mut NetworkParts,
) -> Result<u64, CoreError> {
    let cluster = core.cluster_for(&parts.name, &parts.driver_name)?;
    for _ in 0..CLAIM_ATTEMPTS {
        let (v4, v6, index, index_version) = cluster
            .pick_pools(&parts.options, &parts.capability, &parts.name, &parts.id)
            .await?;
        parts.pools_v4 = v4;
        parts.pools_v6 = v6;
        // Held here before the record is visible, so this host's watch does not adopt it and
        // a creation running beside this one picks other subnets; one that picked the same
        // subnets first makes this one pick again.
        let pools: Vec<_> = parts
            .pools_v4
            .iter()
            .chain(&parts.pools_v6)
            .cloned()
            .collect();
        if cluster.adopt(&parts.id, 0, &pools).is_err() {
            continue;
        }
        parts.allocation = match driver.allocate_network(&parts.spec()).await {
            Ok(a) => a,
            Err(e) => {
                cluster.forget(&parts.id);
                return Err(CoreError::failed("allocate network", &parts.name, e));
            }
        };
        let rec = parts.record(
            core.ipam_named(parts.options.ipam_driver.as_deref())?
                .name(),
        );
        let claimed = cluster.claim_network(&rec, &index, index_version).await;
        let e = match claimed {
            Ok(version) => {
                let (d, id, a) = (driver.clone(), parts.id.clone(), parts.allocation.clone());
                undo.push("free network in driver", move || async move {
                    d.free_network(&id, &a)
                        .await
                        .map_err(|e| CoreError::failed("free network", id, e))
                });
                let record = Versioned {
                    version,
                    value: rec,
                };
                let c = core.clone();
                undo.push(
                    "delete the network's claims in the cluster store",
                    move || async move {
                        match c.cluster() {
                            Some(cluster) => cluster.finish_delete(&record).await,
                            None => Ok(()),
                        }
                    },
                );
                cluster.adopt(&parts.id, version, &pools)?;
                let (c, id) = (core.clone(), parts.id.clone());
                undo.push("forget the cluster pools", move || async move {
                    if let Some(cluster) = c.cluster() {
                        cluster.forget(&id);
                    }
                    Ok(())
                });
                return Ok(version);
            }
            Err(e) => e,
        };
        cluster.forget(&parts.id);
        // Nothing was written: give the allocation back, then pick again or give up.
        driver
            .free_network(&parts.id, &parts.allocation)
            .await
            .map_err(|e| CoreError::failed("free network", &parts.name, e))?;
        match &e {
            StoreError::Conflict { key, .. } if key == crate::cluster::SUBNETS_KEY => continue,
            StoreError::Conflict { key, .. } if *key == crate::cluster::name_key(&parts.name) => {
                return Err(CoreError::NetworkExists(parts.name.clone()));
            }
            _ => {
                return Err(CoreError::failed(
                    "write",
                    record::network_key(&parts.id),
                    e,
                ));
            }
        }
    }
    Err(CoreError::Aborted {
        op: "create network",
        object: parts.name.clone(),
        reason: format!("the cluster's subnet index changed {CLAIM_ATTEMPTS} times in a row"),
    })
}

/// Refuses what the driver cannot take: addresses for a driver without any, a gateway for one
/// without gateways.
fn check_capability(
    capability: &Capability,
    driver: &str,
    options: &NetworkOptions,
) -> Result<(), CoreError> {
    if !capability.needs_addresses
        && let Some(pool) = options.pools.first()
    {
        return Err(CoreError::invalid(
            "subnet",
            pool.subnet(),
            format!("driver {driver:?} does not use addresses"),
        ));
    }
    if capability.no_gateway
        && let Some(gw) = options.pools.iter().find_map(PoolConfig::gateway)
    {
        return Err(CoreError::invalid(
            "gateway",
            gw,
            format!("driver {driver:?} gives its networks no gateway"),
        ));
    }
    Ok(())
}

/// One pool per enabled family (IPAM's choice), or the pools given, each with its gateway
/// unless the driver has none.
async fn allocate_pools(
    core: &Arc<Core>,
    undo: &mut Undo<CoreError>,
    options: &NetworkOptions,
    capability: &Capability,
    network: &str,
) -> Result<(Vec<NetworkPool>, Vec<NetworkPool>), CoreError> {
    let needs_default = (options.enable_ipv4 && options.pools_v4().next().is_none())
        || (options.enable_ipv6 && options.pools_v6().next().is_none());
    let exclude = if needs_default {
        core.pool_exclusions().await?
    } else {
        Vec::new()
    };
    let ipam = core.ipam_named(options.ipam_driver.as_deref())?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (family, out) in [(Family::V4, &mut v4), (Family::V6, &mut v6)] {
        for config in options.pool_configs(family) {
            let pool = allocate_pool(&ipam, undo, family, config, &exclude, network).await?;
            let wanted = !capability.no_gateway
                && (!capability.gateway_on_request
                    || config.and_then(PoolConfig::gateway).is_some());
            let pool = if !wanted {
                pool
            } else {
                allocate_gateway(&ipam, undo, pool, network).await?
            };
            out.push(pool);
        }
    }
    Ok((v4, v6))
}

async fn allocate_pool(
    ipam: &Arc<dyn Ipam>,
    undo: &mut Undo<CoreError>,
    family: Family,
    config: Option<&PoolConfig>,
    exclude: &[IpNet],
    network: &str,
) -> Result<NetworkPool, CoreError> {
    let mut req = PoolConfig::request(config, family);
    if config.is_none() {
        req.exclude = exclude.to_vec();
    }
    let aux = config
        .map(|c| c.aux_addresses().clone())
        .unwrap_or_default();
    let pool = ipam
        .request_pool(&req)
        .await
        .map_err(|e| CoreError::failed("allocate pool for network", network, e))?;
    {
        let (ipam, id) = (ipam.clone(), pool.id.clone());
        undo.push("release pool", move || async move {
            ipam.release_pool(&id)
                .await
                .map_err(|e| CoreError::failed("release pool", id.to_string(), e))
        });
    }
    Ok(NetworkPool {
        ipam_id: ipam.external_pool_id(&pool.id),
        pool_id: pool.id,
        subnet: pool.subnet,
        gateway: None,
        aux_addresses: aux,
        as_given: config
            .map(PoolConfig::subnet_as_given)
            .filter(|g| *g != pool.subnet),
    })
}

async fn allocate_gateway(
    ipam: &Arc<dyn Ipam>,
    undo: &mut Undo<CoreError>,
    mut pool: NetworkPool,
    network: &str,
) -> Result<NetworkPool, CoreError> {
    let gateway = ipam
        .request_address(&pool.pool_id, AddressRequest::Gateway)
        .await
        .map_err(|e| CoreError::failed("allocate gateway for network", network, e))?;
    {
        let (ipam, id) = (ipam.clone(), pool.pool_id.clone());
        undo.push("release gateway", move || async move {
            ipam.release_address(&id, gateway.addr())
                .await
                .map_err(|e| CoreError::failed("release gateway of pool", id.to_string(), e))
        });
    }
    pool.gateway = Some(gateway);
    Ok(pool)
}
