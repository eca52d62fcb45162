//! [`RemoteIpam`]: an IPAM plugin behind cnm's [`Ipam`] trait, with libnetwork's overlap
//! avoidance for the pools it hands out.
//!
//! A pool of the plugin's choosing (no subnet asked) that overlaps a pool of an existing network
//! of this controller, or a network the host is on (the request's exclusions), is held and
//! another is asked for; once a free one comes, the held ones are released (libnetwork's
//! `requestPoolHelper`: holding them keeps the plugin from offering the same pool again). An
//! explicitly asked subnet for which the plugin returns a pool overlapping an existing
//! network's is released and refused with libnetwork's wording ("Pool overlaps with other one
//! on this address space").
//!
//! Pool ids: the SPI's [`PoolId`] is `AddressSpace/subnet[/range]`, the form of Docker's own
//! pool ids; the plugin's own `PoolID` (opaque) is kept beside it, in memory. A gateway the
//! plugin chose with the pool (`Data["com.docker.network.gateway"]`) is used as the network's
//! gateway without asking for it, as libnetwork does.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use cnm_core::cnm_ipam::{AddressRequest, Family, IpamError, Pool, PoolId, PoolRequest};
use cnm_core::{AdoptPool, Ipam};
use ipnet::IpNet;

use crate::driver::RemoteConfig;
use crate::error::RemoteError;
use crate::plugin::{Body, Call, PluginClient, PluginError};
use crate::wire::ipam as wire;

/// How many overlapping pools are held before giving up (libnetwork loops until the plugin
/// runs out; a plugin that ignores held pools would loop forever).
const MAX_HELD: usize = 32;

/// What an IPAM plugin said it needs (`GetCapabilities`; none when it lacks the call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpamCapabilities {
    /// `RequestAddress` needs the endpoint's MAC.
    pub requires_mac_address: bool,
    /// Pools and gateways should be requested again after a restart.
    pub requires_request_replay: bool,
}

/// One pool requested through this adapter.
#[derive(Debug, Clone)]
struct HeldPool {
    /// The plugin's id of it.
    plugin_id: String,
    subnet: IpNet,
    /// The gateway the caller asked for, if any.
    gateway: Option<IpAddr>,
    /// A gateway the plugin chose with the pool, and whether it was handed out.
    data_gateway: Option<(IpNet, bool)>,
    /// Addresses requested through this adapter and not released.
    addresses: BTreeSet<IpAddr>,
}

/// An IPAM driver served by a plugin process.
#[derive(Debug)]
pub struct RemoteIpam {
    client: PluginClient,
    capabilities: IpamCapabilities,
    local_space: String,
    global_space: String,
    pools: Mutex<BTreeMap<PoolId, HeldPool>>,
    /// Pool requests one at a time, so that two cannot both take overlapping pools.
    requesting: tokio::sync::Mutex<()>,
}

impl RemoteIpam {
    /// Finds the plugin `name`, activates it as an `IpamDriver`, and asks its capabilities
    /// (optional) and default address spaces.
    pub async fn connect(name: &str, config: &RemoteConfig) -> Result<Self, RemoteError> {
        let client = config.activate(name, wire::SUBSYSTEM).await?;
        let capabilities = client
            .call_optional::<wire::CapabilitiesResponse>(wire::GET_CAPABILITIES, Body::empty())
            .await?
            .map(|c| IpamCapabilities {
                requires_mac_address: c.requires_mac_address,
                requires_request_replay: c.requires_request_replay,
            })
            .unwrap_or_default();
        let spaces: wire::AddressSpacesResponse = client
            .call(wire::GET_DEFAULT_ADDRESS_SPACES, Body::empty())
            .await?;
        for (field, value) in [
            (
                "LocalDefaultAddressSpace",
                &spaces.local_default_address_space,
            ),
            (
                "GlobalDefaultAddressSpace",
                &spaces.global_default_address_space,
            ),
        ] {
            if value.is_empty() || value.contains('/') {
                return Err(PluginError::InvalidAnswer {
                    plugin: name.to_owned(),
                    call: wire::GET_DEFAULT_ADDRESS_SPACES.method.to_owned(),
                    field,
                    value: value.clone(),
                    reason: "an address space is a non-empty name without '/'".to_owned(),
                }
                .into());
            }
        }
        Ok(Self {
            client,
            capabilities,
            local_space: spaces.local_default_address_space,
            global_space: spaces.global_default_address_space,
            pools: Mutex::new(BTreeMap::new()),
            requesting: tokio::sync::Mutex::new(()),
        })
    }

    /// The protocol client.
    pub fn client(&self) -> &PluginClient {
        &self.client
    }

    /// What the plugin said it needs.
    pub fn capabilities(&self) -> IpamCapabilities {
        self.capabilities
    }

    /// The plugin's default address spaces: (local, global).
    pub fn address_spaces(&self) -> (&str, &str) {
        (&self.local_space, &self.global_space)
    }

    /// The plugin's own id of a pool requested through this adapter.
    pub fn plugin_pool_id(&self, pool: &PoolId) -> Option<String> {
        self.lock().get(pool).map(|p| p.plugin_id.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PoolId, HeldPool>> {
        // Entries change whole under the lock: a poisoned map is still consistent.
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, e: RemoteError) -> IpamError {
        IpamError::Driver {
            driver: self.client.name().to_owned(),
            kind: e.kind(),
            source: Box::new(e),
        }
    }

    fn invalid(&self, call: Call, field: &'static str, value: &str, reason: &str) -> PluginError {
        PluginError::InvalidAnswer {
            plugin: self.client.name().to_owned(),
            call: call.method.to_owned(),
            field,
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    async fn release_plugin_pool(&self, plugin_id: &str) -> Result<(), PluginError> {
        let request = wire::ReleasePoolRequest {
            pool_id: plugin_id.to_owned(),
        };
        self.client
            .call_json::<wire::Response>(wire::RELEASE_POOL, &request)
            .await
            .map(drop)
    }

    async fn release_plugin_address(
        &self,
        plugin_id: &str,
        addr: IpAddr,
    ) -> Result<(), PluginError> {
        let request = wire::ReleaseAddressRequest {
            pool_id: plugin_id.to_owned(),
            address: addr.to_string(),
        };
        self.client
            .call_json::<wire::Response>(wire::RELEASE_ADDRESS, &request)
            .await
            .map(drop)
    }

    /// The pool of an existing network that `net` overlaps, if any.
    fn overlapping_held(&self, net: &IpNet) -> Option<IpNet> {
        self.lock()
            .values()
            .map(|p| p.subnet)
            .find(|s| overlaps(s, net))
    }

    /// Asks for pools until one does not overlap; see the module docs. Returns the chosen
    /// pool's answer and subnet, and the pools held on the way (to release).
    async fn choose_pool(
        &self,
        req: &PoolRequest,
        request: &wire::RequestPoolRequest,
        held: &mut Vec<(String, IpNet)>,
    ) -> Result<(wire::RequestPoolResponse, IpNet), RemoteError> {
        loop {
            let answer: wire::RequestPoolResponse =
                self.client.call_json(wire::REQUEST_POOL, request).await?;
            let checked = self.check_pool(req, &answer);
            let subnet = match checked {
                Ok(subnet) => subnet,
                Err(e) => {
                    let mut cleanup = Vec::new();
                    if !answer.pool_id.is_empty()
                        && let Err(c) = self.release_plugin_pool(&answer.pool_id).await
                    {
                        cleanup.push(c);
                    }
                    return Err(RemoteError::with_cleanup(e, cleanup));
                }
            };
            if req.subnet.is_some() {
                if let Some(existing) = self.overlapping_held(&subnet) {
                    held.push((answer.pool_id, subnet));
                    return Err(RemoteError::PoolOverlap {
                        plugin: self.client.name().to_owned(),
                        pool: subnet,
                        existing,
                    });
                }
                return Ok((answer, subnet));
            }
            let repeated = held.iter().any(|(id, _)| *id == answer.pool_id);
            let taken = self.overlapping_held(&subnet).is_some()
                || req.exclude.iter().any(|x| overlaps(x, &subnet));
            if !taken {
                return Ok((answer, subnet));
            }
            held.push((answer.pool_id, subnet));
            if repeated || held.len() >= MAX_HELD {
                return Err(RemoteError::NoFreePool {
                    plugin: self.client.name().to_owned(),
                    offered: held.iter().map(|(_, s)| *s).collect(),
                });
            }
            tracing::debug!(plugin = %self.client.name(), pool = %subnet, "pool overlaps; holding it and asking again");
        }
    }

    /// The pool of an answer: a CIDR network of the requested family, with an id.
    fn check_pool(
        &self,
        req: &PoolRequest,
        answer: &wire::RequestPoolResponse,
    ) -> Result<IpNet, PluginError> {
        let call = wire::REQUEST_POOL;
        if answer.pool_id.is_empty() {
            return Err(self.invalid(call, "PoolID", "", "a pool needs an id"));
        }
        let subnet: IpNet = answer
            .pool
            .parse()
            .map_err(|_| self.invalid(call, "Pool", &answer.pool, "not a CIDR network"))?;
        if subnet != subnet.trunc() {
            return Err(self.invalid(call, "Pool", &answer.pool, "host bits are set"));
        }
        if Family::of_net(&subnet) != req.family {
            return Err(self.invalid(call, "Pool", &answer.pool, "not of the requested family"));
        }
        Ok(subnet)
    }

    /// Requests each aux address; on failure releases those already taken.
    async fn reserve_aux(
        &self,
        plugin_id: &str,
        aux: &[IpAddr],
    ) -> Result<BTreeSet<IpAddr>, RemoteError> {
        let mut taken = BTreeSet::new();
        for &addr in aux {
            let request = wire::RequestAddressRequest {
                pool_id: plugin_id.to_owned(),
                address: addr.to_string(),
                options: BTreeMap::new(),
            };
            match self
                .client
                .call_json::<wire::RequestAddressResponse>(wire::REQUEST_ADDRESS, &request)
                .await
            {
                Ok(_) => {
                    taken.insert(addr);
                }
                Err(e) => {
                    let mut cleanup = Vec::new();
                    for &a in &taken {
                        if let Err(c) = self.release_plugin_address(plugin_id, a).await {
                            cleanup.push(c);
                        }
                    }
                    return Err(RemoteError::with_cleanup(e, cleanup));
                }
            }
        }
        Ok(taken)
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `space/subnet[/range]`, Docker's form of a pool id.
fn pool_id(space: &str, subnet: IpNet, range: Option<IpNet>) -> Result<PoolId, IpamError> {
    let text = match range {
        Some(r) => format!("{space}/{subnet}/{r}"),
        None => format!("{space}/{subnet}"),
    };
    text.parse()
}

#[async_trait]
impl Ipam for RemoteIpam {
    fn name(&self) -> &str {
        self.client.name()
    }

    /// As the plugin said in `GetCapabilities` (`RequiresRequestReplay`).
    fn requires_request_replay(&self) -> bool {
        self.capabilities.requires_request_replay
    }

    fn external_pool_id(&self, pool: &PoolId) -> Option<String> {
        self.lock().get(pool).map(|h| h.plugin_id.clone())
    }

    /// Takes back a pool the plugin kept across the controller's restart, by the `PoolID` the
    /// controller recorded, with its addresses; the plugin is not called.
    async fn adopt_pool(&self, pool: &AdoptPool<'_>) -> Result<(), IpamError> {
        let AdoptPool {
            request: req,
            id,
            external_id,
            addresses,
            ..
        } = *pool;
        let Some(plugin_id) = external_id else {
            return Err(self.error(RemoteError::NoPluginPoolId {
                plugin: self.client.name().to_owned(),
                pool: id.clone(),
            }));
        };
        self.lock().insert(
            id.clone(),
            HeldPool {
                plugin_id: plugin_id.to_owned(),
                subnet: id.subnet(),
                gateway: req.gateway,
                data_gateway: None,
                addresses: addresses.iter().copied().collect(),
            },
        );
        tracing::info!(plugin = %self.client.name(), pool = %id, "pool adopted");
        Ok(())
    }

    async fn request_pool(&self, req: &PoolRequest) -> Result<Pool, IpamError> {
        if let Some(subnet) = req.subnet
            && Family::of_net(&subnet) != req.family
        {
            return Err(IpamError::WrongFamily {
                field: "subnet",
                value: subnet.to_string(),
                family: req.family,
            });
        }
        let _one_at_a_time = self.requesting.lock().await;
        let request = wire::RequestPoolRequest {
            address_space: self.local_space.clone(),
            pool: req.subnet.map(|s| s.to_string()).unwrap_or_default(),
            sub_pool: req.ip_range.map(|s| s.to_string()).unwrap_or_default(),
            options: BTreeMap::new(),
            v6: req.family == Family::V6,
        };
        let mut held = Vec::new();
        let chosen = self.choose_pool(req, &request, &mut held).await;
        // The pools held on the way go back in any case; a failure to give one back is logged
        // (the pool was never the caller's), as libnetwork does.
        for (id, subnet) in held {
            if let Err(e) = self.release_plugin_pool(&id).await {
                tracing::warn!(plugin = %self.client.name(), pool = %subnet, error = %e, "failed to release an overlapping pool");
            }
        }
        let (answer, subnet) = chosen.map_err(|e| self.error(e))?;
        let data_gateway = match answer.data.get(wire::GATEWAY) {
            None => None,
            Some(text) => match text.parse::<IpNet>() {
                Ok(gw) if subnet.contains(&gw.addr()) => Some((gw, false)),
                _ => {
                    let e = self.invalid(
                        wire::REQUEST_POOL,
                        "Data[com.docker.network.gateway]",
                        text,
                        "not an address of the pool in CIDR notation",
                    );
                    let cleanup = self.release_plugin_pool(&answer.pool_id).await.err();
                    return Err(
                        self.error(RemoteError::with_cleanup(e, cleanup.into_iter().collect()))
                    );
                }
            },
        };
        let id = match pool_id(&self.local_space, subnet, req.ip_range) {
            Ok(id) => id,
            Err(e) => {
                if let Err(c) = self.release_plugin_pool(&answer.pool_id).await {
                    tracing::warn!(error = %c, "failed to release a pool whose id cannot be formed");
                }
                return Err(e);
            }
        };
        let addresses = match self.reserve_aux(&answer.pool_id, &req.aux_addresses).await {
            Ok(a) => a,
            Err(e) => {
                let cleanup = self.release_plugin_pool(&answer.pool_id).await.err();
                let e = match (e, cleanup) {
                    (e, None) => e,
                    (RemoteError::Plugin(cause), Some(c)) => {
                        RemoteError::with_cleanup(cause, vec![c])
                    }
                    (RemoteError::Cleanup { cause, mut cleanup }, Some(c)) => {
                        cleanup.push(c);
                        RemoteError::Cleanup { cause, cleanup }
                    }
                    (other, Some(_)) => other,
                };
                return Err(self.error(e));
            }
        };
        let gateway = req
            .gateway
            .or(data_gateway.map(|(g, _)| g.addr()))
            .unwrap_or_else(|| first_host(subnet));
        self.lock().insert(
            id.clone(),
            HeldPool {
                plugin_id: answer.pool_id,
                subnet,
                gateway: req.gateway,
                data_gateway,
                addresses,
            },
        );
        tracing::info!(plugin = %self.client.name(), pool = %id, "pool allocated");
        Ok(Pool {
            id,
            subnet,
            range: req.ip_range,
            gateway,
            aux_addresses: req.aux_addresses.clone(),
        })
    }

    /// Releases every address still held through this adapter (gateway, aux addresses), then
    /// the pool, as libnetwork does on network deletion; every failure is reported.
    async fn release_pool(&self, pool: &PoolId) -> Result<(), IpamError> {
        let Some(held) = self.lock().remove(pool) else {
            return Err(self.error(RemoteError::UnknownPool {
                plugin: self.client.name().to_owned(),
                pool: pool.clone(),
            }));
        };
        let mut errors = Vec::new();
        for &addr in &held.addresses {
            if let Err(e) = self.release_plugin_address(&held.plugin_id, addr).await {
                errors.push(e);
            }
        }
        if let Err(e) = self.release_plugin_pool(&held.plugin_id).await {
            errors.push(e);
        }
        let mut it = errors.into_iter();
        match it.next() {
            None => Ok(()),
            Some(first) => Err(self.error(RemoteError::with_cleanup(first, it.collect()))),
        }
    }

    async fn request_address(
        &self,
        pool: &PoolId,
        req: AddressRequest,
    ) -> Result<IpNet, IpamError> {
        let held = self.lock().get(pool).cloned().ok_or_else(|| {
            self.error(RemoteError::UnknownPool {
                plugin: self.client.name().to_owned(),
                pool: pool.clone(),
            })
        })?;
        let mut options = BTreeMap::new();
        let address = match req {
            AddressRequest::Any => String::new(),
            AddressRequest::Specific(a) => a.to_string(),
            AddressRequest::Gateway => {
                if held.gateway.is_none()
                    && let Some((gw, handed_out)) = held.data_gateway
                {
                    // The plugin chose it with the pool: libnetwork takes it as it is.
                    if handed_out {
                        return Err(IpamError::AddressInUse {
                            addr: gw.addr(),
                            pool: held.subnet,
                        });
                    }
                    if let Some(p) = self.lock().get_mut(pool) {
                        p.data_gateway = Some((gw, true));
                    }
                    return Ok(IpNet::new(gw.addr(), held.subnet.prefix_len()).unwrap_or(gw));
                }
                options.insert(
                    wire::REQUEST_ADDRESS_TYPE.to_owned(),
                    wire::GATEWAY.to_owned(),
                );
                held.gateway.map(|g| g.to_string()).unwrap_or_default()
            }
        };
        let request = wire::RequestAddressRequest {
            pool_id: held.plugin_id.clone(),
            address,
            options,
        };
        let answer: wire::RequestAddressResponse = self
            .client
            .call_json(wire::REQUEST_ADDRESS, &request)
            .await
            .map_err(|e| self.error(e.into()))?;
        let checked = match answer.address.parse::<IpNet>() {
            Err(_) => Err("not an address in CIDR notation"),
            Ok(a) if !held.subnet.contains(&a.addr()) => Err("not inside the pool"),
            Ok(a) if matches!(req, AddressRequest::Specific(s) if s != a.addr()) => {
                Err("not the address asked for")
            }
            Ok(a) => Ok(a.addr()),
        };
        let addr = match checked {
            Ok(a) => a,
            Err(reason) => {
                let e = self.invalid(wire::REQUEST_ADDRESS, "Address", &answer.address, reason);
                // Give back what the plugin thinks it handed out, if it is an address at all.
                let cleanup = match answer.address.parse::<IpNet>() {
                    Ok(a) => self
                        .release_plugin_address(&held.plugin_id, a.addr())
                        .await
                        .err(),
                    Err(_) => None,
                };
                return Err(self.error(RemoteError::with_cleanup(e, cleanup.into_iter().collect())));
            }
        };
        if let Some(p) = self.lock().get_mut(pool) {
            p.addresses.insert(addr);
        }
        // With the pool's prefix length, whatever the plugin wrote.
        Ok(IpNet::new(addr, held.subnet.prefix_len()).unwrap_or_else(|_| IpNet::from(addr)))
    }

    async fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), IpamError> {
        let held = self.lock().get(pool).cloned().ok_or_else(|| {
            self.error(RemoteError::UnknownPool {
                plugin: self.client.name().to_owned(),
                pool: pool.clone(),
            })
        })?;
        if let Some((gw, true)) = held.data_gateway
            && gw.addr() == addr
        {
            // Chosen by the plugin with the pool: it goes with the pool.
            if let Some(p) = self.lock().get_mut(pool) {
                p.data_gateway = Some((gw, false));
            }
            return Ok(());
        }
        self.release_plugin_address(&held.plugin_id, addr)
            .await
            .map_err(|e| self.error(e.into()))?;
        if let Some(p) = self.lock().get_mut(pool) {
            p.addresses.remove(&addr);
        }
        Ok(())
    }
}

/// The first address of a subnet after the network address (the default gateway's place).
fn first_host(subnet: IpNet) -> IpAddr {
    subnet.hosts().next().unwrap_or(subnet.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_symmetric_and_family_aware() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(overlaps(&n("10.1.0.0/16"), &n("10.1.5.0/24")));
        assert!(overlaps(&n("10.1.5.0/24"), &n("10.1.0.0/16")));
        assert!(!overlaps(&n("10.1.0.0/16"), &n("10.2.0.0/16")));
        assert!(!overlaps(&n("10.1.0.0/16"), &n("fd00::/64")));
    }

    #[test]
    fn pool_ids_have_dockers_form() {
        let id = pool_id("space", "10.1.0.0/16".parse().unwrap(), None).unwrap();
        assert_eq!(id.to_string(), "space/10.1.0.0/16");
        assert_eq!(id.address_space(), "space");
        let id = pool_id(
            "s",
            "10.1.0.0/16".parse().unwrap(),
            Some("10.1.4.0/24".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(id.to_string(), "s/10.1.0.0/16/10.1.4.0/24");
    }
}
