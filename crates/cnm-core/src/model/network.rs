//! A network as the controller holds it: pools as allocated, options as given (and as its driver
//! parsed them), and its endpoints by name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use cnm_ipam::PoolId;
use cnm_types::MacAddress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::endpoint::EndpointInner;
use crate::CoreError;
use crate::options::NetworkOptions;
use crate::record::{self, NetworkRecord, PoolAllocation};
use crate::spi::{Capability, DriverOptions, IpamData, NetworkSpec, ParsedOptions, Scope};

/// One pool of a network as allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkPool {
    pub(crate) pool_id: PoolId,
    pub(crate) subnet: IpNet,
    pub(crate) gateway: Option<IpNet>,
    pub(crate) aux_addresses: BTreeMap<String, IpAddr>,
    /// The subnet as the user wrote it, when that had host bits set.
    pub(crate) as_given: Option<IpNet>,
    /// The IPAM's own id of the pool, when it has one.
    pub(crate) ipam_id: Option<String>,
}

impl NetworkPool {
    pub(crate) fn record(&self) -> PoolAllocation {
        PoolAllocation {
            pool_id: self.pool_id.clone(),
            subnet: self.subnet,
            gateway: self.gateway,
            aux_addresses: self.aux_addresses.clone(),
            subnet_as_given: self.as_given,
            ipam_pool_id: self.ipam_id.clone(),
        }
    }

    pub(crate) fn from_record(p: &PoolAllocation) -> Self {
        Self {
            pool_id: p.pool_id.clone(),
            subnet: p.subnet,
            gateway: p.gateway,
            aux_addresses: p.aux_addresses.clone(),
            as_given: p.subnet_as_given,
            ipam_id: p.ipam_pool_id.clone(),
        }
    }

    /// The IPAM data of a pool of family `N`, if it is one.
    fn ipam_data<N: Copy>(&self, narrow: impl Fn(IpNet) -> Option<N>) -> Option<IpamData<N>> {
        Some(IpamData {
            pool: narrow(self.subnet)?,
            gateway: self.gateway.and_then(&narrow),
            aux_addresses: self.aux_addresses.clone(),
        })
    }

    pub(crate) fn ipam_data_v4(&self) -> Option<IpamData<Ipv4Net>> {
        self.ipam_data(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        })
    }

    pub(crate) fn ipam_data_v6(&self) -> Option<IpamData<Ipv6Net>> {
        self.ipam_data(|n| match n {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        })
    }
}

/// A network's mutable state: its endpoints by name (`None` while one is being created: the
/// name is reserved), which endpoint holds each MAC address (reserved with the name, so two
/// endpoints of one network, one L2 domain, never share a MAC), and whether it is being deleted.
#[derive(Default)]
pub(crate) struct NetworkState {
    pub(crate) endpoints: BTreeMap<String, Option<Weak<EndpointInner>>>,
    pub(crate) macs: HashMap<MacAddress, String>,
    pub(crate) deleting: bool,
}

impl NetworkState {
    /// Records that endpoint `name` holds `mac`; refused, naming the holder, when another does.
    pub(crate) fn claim_mac(
        &mut self,
        mac: MacAddress,
        name: &str,
        network: &str,
    ) -> Result<(), CoreError> {
        match self.macs.get(&mac) {
            Some(other) if other != name => Err(CoreError::MacAddressInUse {
                mac,
                network: network.to_owned(),
                endpoint: other.clone(),
            }),
            _ => {
                self.macs.insert(mac, name.to_owned());
                Ok(())
            }
        }
    }

    /// Forgets that endpoint `name` holds `mac` (if it does).
    pub(crate) fn release_mac(&mut self, mac: Option<MacAddress>, name: &str) {
        if let Some(mac) = mac
            && self.macs.get(&mac).is_some_and(|n| n == name)
        {
            self.macs.remove(&mac);
        }
    }

    /// The live endpoints, by name.
    pub(crate) fn live(&self) -> impl Iterator<Item = Arc<EndpointInner>> + '_ {
        self.endpoints.values().flatten().filter_map(Weak::upgrade)
    }
}

/// One network: its parts, the version its record was written at, and its state. Immutable but
/// for its state; its parts are read through it (`net.id`, `net.options`, …).
pub(crate) struct NetworkInner {
    parts: NetworkParts,
    /// The store version of the network record (written once).
    pub(crate) version: u64,
    state: Mutex<NetworkState>,
}

impl std::ops::Deref for NetworkInner {
    type Target = NetworkParts;

    fn deref(&self) -> &NetworkParts {
        &self.parts
    }
}

/// What a network is made of, before it has a record version.
pub(crate) struct NetworkParts {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) driver_name: String,
    pub(crate) capability: Capability,
    /// The options as the user gave them.
    pub(crate) options: NetworkOptions,
    /// The options as the driver parsed them.
    pub(crate) parsed: ParsedOptions,
    /// The MTU (Docker's generic label), parsed once.
    pub(crate) mtu: Option<u32>,
    pub(crate) pools_v4: Vec<NetworkPool>,
    pub(crate) pools_v6: Vec<NetworkPool>,
    /// When it was created.
    pub(crate) created: SystemTime,
    /// What the driver allocated for the network ([`Driver::allocate_network`](crate::spi::Driver::allocate_network)).
    pub(crate) allocation: DriverOptions,
}

impl NetworkParts {
    /// What the driver is told about the network.
    pub(crate) fn spec(&self) -> NetworkSpec {
        let mut spec = NetworkSpec::new(self.id.clone(), self.name.clone());
        spec.ipv4 = self
            .pools_v4
            .iter()
            .filter_map(NetworkPool::ipam_data_v4)
            .collect();
        spec.ipv6 = self
            .pools_v6
            .iter()
            .filter_map(NetworkPool::ipam_data_v6)
            .collect();
        spec.enable_ipv4 = self.options.enable_ipv4;
        spec.enable_ipv6 = self.options.enable_ipv6;
        spec.internal = self.options.internal;
        spec.options = self.options.driver_keys();
        spec.parsed = self.parsed.clone();
        spec.mtu = self.mtu;
        spec.labels = self.options.labels.clone();
        spec.scope = self.capability.scope;
        spec.allocation = self.allocation.clone();
        spec
    }

    /// The record the network is persisted as; `ipam` is the IPAM driver's name.
    pub(crate) fn record(&self, ipam: &str) -> NetworkRecord {
        NetworkRecord {
            schema: record::SCHEMA,
            id: self.id.clone(),
            name: self.name.clone(),
            driver: self.driver_name.clone(),
            ipam_driver: ipam.to_owned(),
            enable_ipv4: self.options.enable_ipv4,
            enable_ipv6: self.options.enable_ipv6,
            internal: self.options.internal,
            labels: self.options.labels.clone(),
            driver_options: self.options.driver_options.clone(),
            allow_host_overlap: self.options.allow_host_overlap,
            attachable: self.options.attachable,
            ipam_options: self.options.ipam_options.clone(),
            ipv4: self.pools_v4.iter().map(NetworkPool::record).collect(),
            ipv6: self.pools_v6.iter().map(NetworkPool::record).collect(),
            created: self.created,
            scope: self.capability.scope,
            allocation: self.allocation.clone(),
            deleting: false,
        }
    }

    /// The network, its record written at `version`.
    pub(crate) fn build(self, version: u64) -> NetworkInner {
        NetworkInner {
            parts: self,
            version,
            state: Mutex::new(NetworkState::default()),
        }
    }
}

impl NetworkInner {
    /// The state; held only for map operations, never across `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, NetworkState> {
        crate::sync::lock(&self.state)
    }

    /// Whether the network is known to every host of the cluster.
    pub(crate) fn is_global(&self) -> bool {
        self.capability.scope == Scope::Global
    }

    /// Whether this network never gives a default gateway (internal).
    pub(crate) fn internal(&self) -> bool {
        self.options.internal
    }

    /// The live endpoints, sorted by name.
    pub(crate) fn endpoints(&self) -> Vec<Arc<EndpointInner>> {
        self.state().live().collect()
    }

    /// The pool of family `pools` holding `ip`, or an error naming the address and the subnets.
    pub(crate) fn pool_for(
        &self,
        pools: &[NetworkPool],
        ip: IpAddr,
        field: &str,
    ) -> Result<PoolId, CoreError> {
        pools
            .iter()
            .find(|p| p.subnet.contains(&ip))
            .map(|p| p.pool_id.clone())
            .ok_or_else(|| {
                let subnets: Vec<String> = pools.iter().map(|p| p.subnet.to_string()).collect();
                CoreError::invalid(
                    field,
                    ip,
                    if subnets.is_empty() {
                        format!("network {} has no subnet of this family", self.name)
                    } else {
                        format!(
                            "it is outside the pools of network {} ({})",
                            self.name,
                            subnets.join(", ")
                        )
                    },
                )
            })
    }

    /// The pool of either family holding `ip`, if any.
    pub(crate) fn pool_holding(&self, ip: IpAddr) -> Option<PoolId> {
        self.pools_v4
            .iter()
            .chain(&self.pools_v6)
            .find(|p| p.subnet.contains(&ip))
            .map(|p| p.pool_id.clone())
    }

    pub(crate) fn deleted_error(&self) -> CoreError {
        CoreError::Deleted {
            what: "network",
            name: self.name.clone(),
        }
    }
}
