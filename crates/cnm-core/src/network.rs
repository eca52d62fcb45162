//! [`Network`]: a handle to one network, and endpoint creation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cnm_ipam::{AddressRequest, IpamError, PoolId};
use cnm_types::MacAddress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::CoreError;
use crate::controller::{ControllerInner, check_name, run_op};
use crate::endpoint::{Endpoint, EndpointInner};
use crate::id;
use crate::options::{EndpointOptions, NetworkOptions};
use crate::record::{self, EndpointRecord, PoolAllocation};
use crate::spi::{Capability, Driver, EndpointSpec, IpamData};
use crate::store::Expect;
use crate::undo::Undo;

/// One pool of a network as allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkPool {
    pub(crate) pool_id: PoolId,
    pub(crate) subnet: IpNet,
    pub(crate) gateway: Option<IpNet>,
    pub(crate) aux_addresses: BTreeMap<String, IpAddr>,
}

impl NetworkPool {
    pub(crate) fn record(&self) -> PoolAllocation {
        PoolAllocation {
            pool_id: self.pool_id.clone(),
            subnet: self.subnet,
            gateway: self.gateway,
            aux_addresses: self.aux_addresses.clone(),
        }
    }

    pub(crate) fn ipam_data_v4(&self) -> Option<IpamData<Ipv4Net>> {
        let IpNet::V4(pool) = self.subnet else {
            return None;
        };
        let gateway = match self.gateway {
            Some(IpNet::V4(g)) => Some(g),
            _ => None,
        };
        Some(IpamData {
            pool,
            gateway,
            aux_addresses: self.aux_addresses.clone(),
        })
    }

    pub(crate) fn ipam_data_v6(&self) -> Option<IpamData<Ipv6Net>> {
        let IpNet::V6(pool) = self.subnet else {
            return None;
        };
        let gateway = match self.gateway {
            Some(IpNet::V6(g)) => Some(g),
            _ => None,
        };
        Some(IpamData {
            pool,
            gateway,
            aux_addresses: self.aux_addresses.clone(),
        })
    }
}

/// A network's mutable state: its endpoints by name (`None` while one is being created), and
/// which endpoint holds each MAC address (reserved with the name, so two endpoints of one
/// network, one L2 domain, never share a MAC).
#[derive(Default)]
pub(crate) struct NetworkState {
    pub(crate) endpoints: BTreeMap<String, Option<Arc<EndpointInner>>>,
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
}

pub(crate) struct NetworkInner {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) driver_name: String,
    pub(crate) driver: Arc<dyn Driver>,
    pub(crate) capability: Capability,
    pub(crate) options: NetworkOptions,
    pub(crate) pools_v4: Vec<NetworkPool>,
    pub(crate) pools_v6: Vec<NetworkPool>,
    /// The store version of the network record (written once).
    pub(crate) version: u64,
    /// When it was created.
    pub(crate) created: std::time::SystemTime,
    state: Mutex<NetworkState>,
}

impl NetworkInner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        name: String,
        driver_name: String,
        driver: Arc<dyn Driver>,
        capability: Capability,
        options: NetworkOptions,
        pools_v4: Vec<NetworkPool>,
        pools_v6: Vec<NetworkPool>,
        version: u64,
        created: std::time::SystemTime,
    ) -> Self {
        Self {
            id,
            name,
            driver_name,
            driver,
            capability,
            options,
            pools_v4,
            pools_v6,
            version,
            created,
            state: Mutex::new(NetworkState::default()),
        }
    }

    /// The state; held only for map operations, never across `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, NetworkState> {
        // Every critical section leaves the maps consistent, so a poisoned lock is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the network as being deleted; refused while it has endpoints.
    pub(crate) fn begin_delete(&self) -> Result<(), CoreError> {
        let mut st = self.state();
        if st.deleting {
            return Err(CoreError::Deleted {
                what: "network",
                name: self.name.clone(),
            });
        }
        if !st.endpoints.is_empty() {
            return Err(CoreError::NetworkInUse {
                network: self.name.clone(),
                endpoints: st.endpoints.keys().cloned().collect(),
            });
        }
        st.deleting = true;
        Ok(())
    }

    pub(crate) fn abort_delete(&self) {
        self.state().deleting = false;
    }

    /// Whether this network can give a default gateway (not internal).
    pub(crate) fn internal(&self) -> bool {
        self.options.internal
    }
}

/// A network. Cheap to clone; a handle to the controller's state.
#[derive(Clone)]
pub struct Network {
    ctl: Arc<ControllerInner>,
    inner: Arc<NetworkInner>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("id", &id::short(&self.inner.id))
            .field("name", &self.inner.name)
            .field("driver", &self.inner.driver_name)
            .finish()
    }
}

impl Network {
    pub(crate) fn new(ctl: Arc<ControllerInner>, inner: Arc<NetworkInner>) -> Self {
        Self { ctl, inner }
    }

    /// The 64-hex-character id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The driver's name.
    pub fn driver(&self) -> &str {
        &self.inner.driver_name
    }

    /// The options it was created with.
    pub fn options(&self) -> &NetworkOptions {
        &self.inner.options
    }

    /// When it was created (kept in its record, so it survives restarts; the Unix epoch for a
    /// network recorded by a build that did not keep it).
    pub fn created(&self) -> std::time::SystemTime {
        self.inner.created
    }

    /// Its scope, as its driver declares it.
    pub fn scope(&self) -> crate::spi::Scope {
        self.inner.capability.scope
    }

    /// The IPv4 subnets and gateways.
    pub fn ipv4(&self) -> Vec<IpamData<Ipv4Net>> {
        self.inner
            .pools_v4
            .iter()
            .filter_map(NetworkPool::ipam_data_v4)
            .collect()
    }

    /// The IPv6 subnets and gateways.
    pub fn ipv6(&self) -> Vec<IpamData<Ipv6Net>> {
        self.inner
            .pools_v6
            .iter()
            .filter_map(NetworkPool::ipam_data_v6)
            .collect()
    }

    /// Every endpoint, sorted by name.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let st = self.inner.state();
        st.endpoints
            .values()
            .flatten()
            .map(|e| Endpoint::new(self.ctl.clone(), e.clone()))
            .collect()
    }

    /// The endpoint with this full id, name, or unique id prefix (in that order, as Docker).
    pub fn endpoint(&self, key: &str) -> Result<Endpoint, CoreError> {
        let candidates: Vec<_> = self
            .inner
            .state()
            .endpoints
            .values()
            .flatten()
            .map(|e| (e.name.clone(), e.id.clone(), e.clone()))
            .collect();
        let inner = id::lookup("endpoint", key, candidates)?;
        Ok(Endpoint::new(self.ctl.clone(), inner))
    }

    /// Creates an endpoint: addresses are assigned here (static ones as asked, else the lowest
    /// free), the driver prepares it, and its record is written. Bad input changes nothing.
    pub async fn create_endpoint(
        &self,
        name: &str,
        options: EndpointOptions,
    ) -> Result<Endpoint, CoreError> {
        let (ctl, net, name) = (self.ctl.clone(), self.inner.clone(), name.to_owned());
        let object = format!("{}/{}", self.inner.name, name);
        let inner = run_op(
            "create endpoint",
            object,
            create_endpoint(ctl, net, name, options),
        )
        .await?;
        Ok(Endpoint::new(self.ctl.clone(), inner))
    }

    /// Deletes the network; refused (naming them) while it has endpoints.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let (ctl, net) = (self.ctl.clone(), self.inner.clone());
        run_op(
            "delete network",
            self.inner.name.clone(),
            crate::controller::delete_network(ctl, net),
        )
        .await
    }
}

/// Releases an endpoint-name reservation (and its MAC) unless the creation committed.
struct EndpointReservation {
    net: Arc<NetworkInner>,
    name: String,
    mac: Option<MacAddress>,
    committed: bool,
}

impl EndpointReservation {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for EndpointReservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut st = self.net.state();
            if matches!(st.endpoints.get(&self.name), Some(None)) {
                st.endpoints.remove(&self.name);
                st.release_mac(self.mac, &self.name);
            }
        }
    }
}

/// The pool of `pools` holding `ip`, or an error naming the address and the subnets.
fn pool_for(
    pools: &[NetworkPool],
    ip: IpAddr,
    field: &str,
    network: &str,
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
                    format!("network {network} has no subnet of this family")
                } else {
                    format!(
                        "it is outside the pools of network {network} ({})",
                        subnets.join(", ")
                    )
                },
            )
        })
}

/// Allocates one address: the static one in its pool, else the first free of any pool.
async fn allocate_address(
    ctl: &Arc<ControllerInner>,
    undo: &mut Undo,
    pools: &[NetworkPool],
    fixed: Option<(PoolId, IpAddr)>,
    endpoint: &str,
) -> Result<Option<(IpNet, PoolId)>, CoreError> {
    let attempts: Vec<(PoolId, AddressRequest)> = match fixed {
        Some((pool, ip)) => vec![(pool, AddressRequest::Specific(ip))],
        None => pools
            .iter()
            .map(|p| (p.pool_id.clone(), AddressRequest::Any))
            .collect(),
    };
    let mut last = None;
    for (pool, req) in attempts {
        match ctl.ipam.request_address(&pool, req).await {
            Ok(addr) => {
                let (ipam, id) = (ctl.ipam.clone(), pool.clone());
                undo.push("release address", move || async move {
                    ipam.release_address(&id, addr.addr())
                        .await
                        .map_err(|e| CoreError::ipam("release address", addr.to_string(), e))
                });
                return Ok(Some((addr, pool)));
            }
            Err(e @ IpamError::PoolExhausted { .. }) => last = Some(e),
            Err(e) => {
                return Err(CoreError::ipam(
                    "allocate address for endpoint",
                    endpoint,
                    e,
                ));
            }
        }
    }
    match last {
        Some(e) => Err(CoreError::ipam(
            "allocate address for endpoint",
            endpoint,
            e,
        )),
        None => Ok(None),
    }
}

async fn create_endpoint(
    ctl: Arc<ControllerInner>,
    net: Arc<NetworkInner>,
    name: String,
    options: EndpointOptions,
) -> Result<Arc<EndpointInner>, CoreError> {
    // 1. Validate.
    check_name("endpoint name", &name)?;
    options.validate()?;
    let needs = net.capability.needs_addresses;
    let fixed_v4 = match options.ipv4 {
        Some(ip) if needs => Some((
            pool_for(&net.pools_v4, ip.into(), "IPv4 address", &net.name)?,
            IpAddr::V4(ip),
        )),
        Some(ip) => {
            return Err(CoreError::invalid(
                "IPv4 address",
                ip,
                format!("driver {} does not use addresses", net.driver_name),
            ));
        }
        None => None,
    };
    let fixed_v6 = match options.ipv6 {
        Some(ip) if needs => Some((
            pool_for(&net.pools_v6, ip.into(), "IPv6 address", &net.name)?,
            IpAddr::V6(ip),
        )),
        Some(ip) => {
            return Err(CoreError::invalid(
                "IPv6 address",
                ip,
                format!("driver {} does not use addresses", net.driver_name),
            ));
        }
        None => None,
    };

    // 2. Reserve the name.
    {
        let mut st = net.state();
        if st.deleting {
            return Err(CoreError::Deleted {
                what: "network",
                name: net.name.clone(),
            });
        }
        if st.endpoints.contains_key(&name) {
            return Err(CoreError::EndpointExists {
                network: net.name.clone(),
                name,
            });
        }
        if let Some(mac) = options.mac {
            st.claim_mac(mac, &name, &net.name)?;
        }
        st.endpoints.insert(name.clone(), None);
    }
    let mut reservation = EndpointReservation {
        net: net.clone(),
        name: name.clone(),
        mac: options.mac,
        committed: false,
    };

    let id = id::generate();
    let mut undo = Undo::new();
    let result = async {
        // 3. Addresses.
        let (mut v4, mut v6) = (None, None);
        if needs {
            v4 = allocate_address(&ctl, &mut undo, &net.pools_v4, fixed_v4, &name).await?;
            v6 = allocate_address(&ctl, &mut undo, &net.pools_v6, fixed_v6, &name).await?;
        }
        let ipv4 = v4.map(|(a, p)| match a {
            IpNet::V4(a) => Ok((a, p)),
            IpNet::V6(_) => Err(CoreError::invalid(
                "IPv4 address",
                a,
                "IPAM returned an IPv6 address for an IPv4 pool",
            )),
        });
        let ipv4 = ipv4.transpose()?;
        let ipv6 = v6
            .map(|(a, p)| match a {
                IpNet::V6(a) => Ok((a, p)),
                IpNet::V4(_) => Err(CoreError::invalid(
                    "IPv6 address",
                    a,
                    "IPAM returned an IPv4 address for an IPv6 pool",
                )),
            })
            .transpose()?;

        // 4. The driver.
        let spec = EndpointSpec {
            network_id: net.id.clone(),
            endpoint_id: id.clone(),
            name: name.clone(),
            ipv4: ipv4.as_ref().map(|(a, _)| *a),
            ipv6: ipv6.as_ref().map(|(a, _)| *a),
            mac: options.mac,
            options: options.driver_options.clone(),
        };
        let info = net
            .driver
            .create_endpoint(&spec)
            .await
            .map_err(|e| CoreError::driver("create endpoint", &name, e))?;
        {
            let (d, nid, eid, name) =
                (net.driver.clone(), net.id.clone(), id.clone(), name.clone());
            undo.push("delete endpoint in driver", move || async move {
                d.delete_endpoint(&nid, &eid)
                    .await
                    .map_err(|e| CoreError::driver("delete endpoint", name, e))
            });
        }
        let mac = options.mac.or(info.mac);
        if options.mac.is_none()
            && let Some(chosen) = info.mac
        {
            // The driver's choice must be unique on the network too (a driver may derive MACs
            // from addresses, which another endpoint may have asked for).
            net.state().claim_mac(chosen, &name, &net.name)?;
            reservation.mac = Some(chosen);
        }
        crate::crash::point("endpoint-create:after-driver");

        // 5. The record.
        let record = EndpointRecord {
            schema: record::SCHEMA,
            id: id.clone(),
            name: name.clone(),
            network_id: net.id.clone(),
            ipv4: ipv4.clone(),
            ipv6: ipv6.clone(),
            mac,
            dns_names: options.dns_names.clone(),
            aliases: options.aliases.clone(),
            exposed_ports: options.exposed_ports.clone(),
            port_bindings: options.port_bindings.clone(),
            driver_options: options.driver_options.clone(),
            sandbox_id: None,
        };
        let key = record::endpoint_key(&net.id, &id);
        let bytes = serde_json::to_vec(&record).map_err(|source| CoreError::Record {
            op: "encode",
            key: key.clone(),
            source,
        })?;
        let version = ctl
            .store
            .put(&key, bytes, Expect::Absent)
            .await
            .map_err(|e| CoreError::store("write", &key, e))?;
        {
            let (store, key) = (ctl.store.clone(), key.clone());
            undo.push("delete endpoint record", move || async move {
                store
                    .delete(&key, Expect::Version(version))
                    .await
                    .map_err(|e| CoreError::store("delete", key, e))
            });
        }
        crate::crash::point("endpoint-create:after-record");
        Ok(Arc::new(EndpointInner::new(
            id.clone(),
            name.clone(),
            net.clone(),
            ipv4,
            ipv6,
            mac,
            options.clone(),
            record,
            version,
        )))
    }
    .await;
    let inner = undo.finish(result).await?;
    net.state()
        .endpoints
        .insert(name.clone(), Some(inner.clone()));
    reservation.commit();
    tracing::info!(endpoint = id::short(&inner.id), name = %name, network = %net.name, "endpoint created");
    Ok(inner)
}
