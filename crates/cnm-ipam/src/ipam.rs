//! The allocator: the registry of pools, default pool selection, and saved state.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::IpamConfig;
use crate::error::{IpamError, check_canonical};
use crate::family::{Family, net_bounds, overlaps};
use crate::pool::{AddressRequest, Pool, PoolId, PoolRequest, PoolSlot};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// The default IPAM. Every method takes `&self`; share it as `Arc<Ipam>`.
///
/// Lock order: the registry lock, then at most one pool's address-set lock. Address operations
/// hold the registry (read) lock only to clone the pool's `Arc`, so they run in parallel across
/// pools and are serialised per pool by a short critical section.
#[derive(Debug)]
pub struct Ipam {
    config: IpamConfig,
    registry: RwLock<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    pools: HashMap<PoolId, Arc<PoolSlot>>,
    /// Per family: first address → (last address, id). Pools never overlap, so the pool with
    /// the greatest start ≤ x is the only one that can contain x.
    v4: BTreeMap<u128, (u128, PoolId)>,
    v6: BTreeMap<u128, (u128, PoolId)>,
}

impl Registry {
    fn index(&self, family: Family) -> &BTreeMap<u128, (u128, PoolId)> {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn index_mut(&mut self, family: Family) -> &mut BTreeMap<u128, (u128, PoolId)> {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    /// An allocated pool overlapping `first..=last`: the one with the highest start (and so the
    /// highest end, as pools are disjoint), or `None`.
    fn overlapping(&self, family: Family, (first, last): (u128, u128)) -> Option<(u128, &PoolId)> {
        let (_, (end, id)) = self.index(family).range(..=last).next_back()?;
        (*end >= first).then_some((*end, id))
    }

    fn insert(&mut self, id: PoolId, slot: PoolSlot) -> Pool {
        let pool = slot.to_pool(&id);
        self.index_mut(slot.family)
            .insert(slot.bounds.0, (slot.bounds.1, id.clone()));
        self.pools.insert(id, Arc::new(slot));
        pool
    }

    fn slots_in_order(&self) -> impl Iterator<Item = (&PoolId, &Arc<PoolSlot>)> + '_ {
        self.v4
            .values()
            .chain(self.v6.values())
            .filter_map(|(_, id)| self.pools.get_key_value(id))
    }
}

impl Default for Ipam {
    fn default() -> Self {
        Self::new(IpamConfig::default())
    }
}

impl Ipam {
    /// An IPAM with no pools. Invalid default pool specs offer no subnets (see
    /// [`IpamConfig::validate`]).
    pub fn new(config: IpamConfig) -> Self {
        Self {
            config,
            registry: RwLock::new(Registry::default()),
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    // Registry updates cannot panic half-way (two map inserts of owned values), so a poisoned
    // lock still guards a consistent registry and is taken over.
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, id: &PoolId) -> Result<Arc<PoolSlot>, IpamError> {
        self.read()
            .pools
            .get(id)
            .cloned()
            .ok_or_else(|| IpamError::PoolNotFound { id: id.clone() })
    }

    /// Allocates a pool: the requested subnet (refused if it overlaps an allocated pool), or
    /// the first default subnet of the family that overlaps neither an allocated pool nor
    /// `req.exclude`.
    pub fn request_pool(&self, req: &PoolRequest) -> Result<Pool, IpamError> {
        let family = req.family;
        let Some(subnet) = req.subnet else {
            let needs_subnet = |field, value: String| Err(IpamError::NeedsSubnet { field, value });
            if let Some(range) = req.ip_range {
                return needs_subnet("ip-range", range.to_string());
            }
            if let Some(gateway) = req.gateway {
                return needs_subnet("gateway", gateway.to_string());
            }
            if let Some(aux) = req.aux_addresses.first() {
                return needs_subnet("aux-address", aux.to_string());
            }
            return self.request_default_pool(family, &req.exclude);
        };
        if Family::of_net(&subnet) != family {
            return Err(IpamError::WrongFamily {
                field: "subnet",
                value: subnet.to_string(),
                family,
            });
        }
        check_canonical("subnet", subnet)?;
        let slot = PoolSlot::new(subnet, req.ip_range, req.gateway, &req.aux_addresses)?;
        let mut registry = self.write();
        if let Some((_, existing)) = registry.overlapping(family, slot.bounds) {
            return Err(IpamError::PoolOverlap {
                subnet,
                existing: existing.subnet(),
            });
        }
        let pool = registry.insert(PoolId::local(subnet, req.ip_range), slot);
        tracing::debug!(pool = %pool.id, "allocated requested pool");
        Ok(pool)
    }

    fn request_default_pool(&self, family: Family, exclude: &[IpNet]) -> Result<Pool, IpamError> {
        let excluded: Vec<(u128, u128)> = exclude
            .iter()
            .filter(|net| Family::of_net(net) == family)
            .map(net_bounds)
            .collect();
        let mut registry = self.write();
        for spec in self.config.pools(family) {
            let mut subnets = spec.subnets();
            while let Some(bounds) = subnets.next_bounds() {
                // Jump past the furthest obstacle instead of stepping subnet by subnet, so a
                // huge split behind a wide exclusion costs one step.
                let obstacle_end = excluded
                    .iter()
                    .filter(|ex| overlaps(**ex, bounds))
                    .map(|ex| ex.1)
                    .chain(registry.overlapping(family, bounds).map(|(end, _)| end))
                    .max();
                if let Some(end) = obstacle_end {
                    subnets.skip_past(end);
                    continue;
                }
                let subnet = subnets.net(bounds.0);
                let slot = PoolSlot::new(subnet, None, None, &[])?;
                let pool = registry.insert(PoolId::local(subnet, None), slot);
                tracing::debug!(pool = %pool.id, "allocated default pool");
                return Ok(pool);
            }
        }
        Err(IpamError::NoDefaultPool { family })
    }

    /// Releases a pool and every address in it.
    pub fn release_pool(&self, id: &PoolId) -> Result<(), IpamError> {
        let mut registry = self.write();
        let slot = registry
            .pools
            .remove(id)
            .ok_or_else(|| IpamError::PoolNotFound { id: id.clone() })?;
        registry.index_mut(slot.family).remove(&slot.bounds.0);
        tracing::debug!(pool = %id, "released pool");
        Ok(())
    }

    /// Allocates an address of a pool; returned with the pool's prefix length.
    pub fn request_address(&self, pool: &PoolId, req: AddressRequest) -> Result<IpNet, IpamError> {
        self.slot(pool)?.request(req)
    }

    /// Releases an allocated address of a pool.
    pub fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), IpamError> {
        self.slot(pool)?.release(addr)
    }

    /// One allocated pool.
    pub fn pool(&self, id: &PoolId) -> Result<Pool, IpamError> {
        Ok(self.slot(id)?.to_pool(id))
    }

    /// Every allocated pool, IPv4 first, each family in address order.
    pub fn pools(&self) -> Vec<Pool> {
        self.read()
            .slots_in_order()
            .map(|(id, slot)| slot.to_pool(id))
            .collect()
    }

    /// How many addresses of a pool are allocated, and how many runs of consecutive addresses
    /// they form (memory use is proportional to the runs).
    pub fn usage(&self, id: &PoolId) -> Result<PoolUsage, IpamError> {
        let (allocated, runs) = self.slot(id)?.usage();
        Ok(PoolUsage { allocated, runs })
    }

    /// Everything allocated, in a form that [`Ipam::restore`] rebuilds exactly.
    pub fn snapshot(&self) -> IpamState {
        let registry = self.read();
        let pools = registry
            .slots_in_order()
            .map(|(_, slot)| PoolRecord {
                subnet: slot.subnet,
                range: slot.range,
                gateway: slot.gateway(),
                aux_addresses: slot.aux_addresses(),
                allocated: slot
                    .runs()
                    .into_iter()
                    .map(|(first, last)| AddressRun { first, last })
                    .collect(),
            })
            .collect();
        IpamState { pools }
    }

    /// Rebuilds an IPAM from a [`IpamState`]; refuses a state no IPAM could have produced
    /// (overlapping pools, addresses outside their pool, …).
    pub fn restore(config: IpamConfig, state: IpamState) -> Result<Self, IpamError> {
        let ipam = Self::new(config);
        {
            let mut registry = ipam.write();
            for record in state.pools {
                let corrupt = |what: String, source: IpamError| IpamError::CorruptState {
                    what,
                    source: Some(Box::new(source)),
                };
                let subnet = record.subnet;
                check_canonical("subnet", subnet)
                    .map_err(|e| corrupt(format!("pool {subnet} is invalid"), e))?;
                let slot = PoolSlot::new(
                    subnet,
                    record.range,
                    Some(record.gateway),
                    &record.aux_addresses,
                )
                .map_err(|e| corrupt(format!("pool {subnet} is invalid"), e))?;
                if let Some((_, existing)) = registry.overlapping(slot.family, slot.bounds) {
                    let existing = existing.subnet();
                    return Err(corrupt(
                        format!("pool {subnet} overlaps pool {existing}"),
                        IpamError::PoolOverlap { subnet, existing },
                    ));
                }
                for run in &record.allocated {
                    if Family::of_addr(&run.first) != Family::of_addr(&run.last)
                        || crate::family::addr_to_u128(run.first)
                            > crate::family::addr_to_u128(run.last)
                    {
                        return Err(IpamError::CorruptState {
                            what: format!(
                                "run {}-{} of pool {subnet} is not a range",
                                run.first, run.last
                            ),
                            source: None,
                        });
                    }
                    slot.restore_run(run.first, run.last).map_err(|e| {
                        corrupt(
                            format!(
                                "run {}-{} of pool {subnet} cannot be restored",
                                run.first, run.last
                            ),
                            e,
                        )
                    })?;
                }
                registry.insert(PoolId::local(subnet, record.range), slot);
            }
        }
        Ok(ipam)
    }
}

/// How much of a pool is in use; see [`Ipam::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// Allocated addresses (gateway included, aux addresses not).
    pub allocated: u128,
    /// Runs of consecutive allocated addresses.
    pub runs: usize,
}

/// The saved state of an [`Ipam`]: its pools and their allocated addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    /// Every pool, IPv4 first, each family in address order.
    pub pools: Vec<PoolRecord>,
}

/// One saved pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The subnet.
    pub subnet: IpNet,
    /// The ip-range, if any.
    #[serde(default)]
    pub range: Option<IpNet>,
    /// The preferred gateway.
    pub gateway: IpAddr,
    /// The reserved aux addresses.
    #[serde(default)]
    pub aux_addresses: Vec<IpAddr>,
    /// The allocated addresses as runs of consecutive addresses, ascending.
    #[serde(default)]
    pub allocated: Vec<AddressRun>,
}

/// Consecutive allocated addresses `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRun {
    /// The first address.
    pub first: IpAddr,
    /// The last address.
    pub last: IpAddr,
}
