//! Creating an endpoint: options validated (the driver parses its own once), the name and MAC
//! reserved, addresses assigned (static ones as asked, else the lowest free; or the driver's,
//! reserved in IPAM when they lie in a pool), the driver asked, the record written last.

use cnm_types::{Failed, FailedTo};
use std::net::IpAddr;
use std::sync::Arc;

use tracing::Instrument as _;

use cnm_ipam::{AddressRequest, IpamError, PoolId};
use cnm_types::MacAddress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{check_name, delete_record, put_new_record};
use crate::CoreError;
use crate::id;
use crate::model::endpoint::{Assigned, EndpointInner};
use crate::model::network::{NetworkInner, NetworkPool};
use crate::options::EndpointOptions;
use crate::record::{self, EndpointRecord, RequestedEndpoint};
use crate::spi::EndpointSpec;
use crate::state::Core;
use crate::undo::Undo;

/// Releases an endpoint-name reservation (and its MAC) unless the creation committed.
struct EndpointReservation {
    net: Arc<NetworkInner>,
    name: String,
    mac: Option<MacAddress>,
    committed: bool,
}

impl EndpointReservation {
    /// Reserves `name` (and the MAC asked for) in `net`.
    fn take(
        net: &Arc<NetworkInner>,
        name: &str,
        mac: Option<MacAddress>,
    ) -> Result<Self, CoreError> {
        let mut st = net.state();
        if st.deleting {
            return Err(net.deleted_error());
        }
        if st.endpoints.contains_key(name) {
            return Err(CoreError::EndpointExists {
                network: net.name.clone(),
                name: name.to_owned(),
            });
        }
        if let Some(mac) = mac {
            st.claim_mac(mac, name, &net.name)?;
        }
        st.endpoints.insert(name.to_owned(), None);
        Ok(Self {
            net: net.clone(),
            name: name.to_owned(),
            mac,
            committed: false,
        })
    }

    /// Claims the MAC the driver chose: unique on the network too (a driver may derive MACs
    /// from addresses, which another endpoint may have asked for).
    fn claim_chosen(&mut self, mac: MacAddress) -> Result<(), CoreError> {
        self.net
            .state()
            .claim_mac(mac, &self.name, &self.net.name)?;
        self.mac = Some(mac);
        Ok(())
    }

    fn commit(mut self, ep: &Arc<EndpointInner>) {
        self.net
            .state()
            .endpoints
            .insert(self.name.clone(), Some(Arc::downgrade(ep)));
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

/// A static address checked against the network's pools.
fn fixed(
    net: &NetworkInner,
    pools: &[NetworkPool],
    ip: Option<IpAddr>,
    field: &str,
) -> Result<Option<(PoolId, IpAddr)>, CoreError> {
    let Some(ip) = ip else {
        return Ok(None);
    };
    if !net.capability.needs_addresses {
        return Err(CoreError::invalid(
            field,
            ip,
            format!("driver {} does not use addresses", net.driver_name),
        ));
    }
    Ok(Some((net.pool_for(pools, ip, field)?, ip)))
}

pub(crate) async fn create_endpoint(
    core: Arc<Core>,
    net: Arc<NetworkInner>,
    name: String,
    options: EndpointOptions,
) -> Result<Arc<EndpointInner>, CoreError> {
    // 1. Validate.
    check_name("endpoint name", &name)?;
    options.validate()?;
    let fixed_v4 = fixed(
        &net,
        &net.pools_v4,
        options.ipv4.map(IpAddr::V4),
        "IPv4 address",
    )?;
    let fixed_v6 = fixed(
        &net,
        &net.pools_v6,
        options.ipv6.map(IpAddr::V6),
        "IPv6 address",
    )?;
    let driver = core.driver_of(&net)?;
    let parsed = driver
        .parse_endpoint_options(&options.options_for_driver())
        .map_err(|e| CoreError::failed("validate options of endpoint", &name, e))?;

    // 2. Reserve the name (and the MAC asked for).
    let mut reservation = EndpointReservation::take(&net, &name, options.mac)?;

    let id = id::generate();
    let mut undo = Undo::new();
    let result = async {
        // 3. Addresses.
        let (mut v4, mut v6) = (None, None);
        if net.capability.needs_addresses {
            v4 = allocate(&core, &mut undo, &net, &net.pools_v4, fixed_v4, &name).await?;
            v6 = allocate(&core, &mut undo, &net, &net.pools_v6, fixed_v6, &name).await?;
        }
        let v4_of = |n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        };
        let v6_of = |n| match n {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        };
        let mut ipv4 = v4
            .map(|(a, p)| narrowed::<Ipv4Net>(a, p, v4_of, "IPv4 address"))
            .transpose()?;
        let mut ipv6 = v6
            .map(|(a, p)| narrowed::<Ipv6Net>(a, p, v6_of, "IPv6 address"))
            .transpose()?;

        // 4. The driver.
        let spec = EndpointSpec {
            network_id: net.id.clone(),
            endpoint_id: id.clone(),
            name: name.clone(),
            ipv4: ipv4.as_ref().map(|a| a.addr),
            ipv6: ipv6.as_ref().map(|a| a.addr),
            mac: options.mac,
            options: options.options_for_driver(),
            parsed: parsed.clone(),
        };
        let info = driver
            .create_endpoint(&spec)
            .instrument(tracing::debug_span!("driver", call = "create_endpoint"))
            .await
            .map_err(|e| CoreError::failed("create endpoint", &name, e))?;
        {
            let (d, nid, eid, name) = (driver.clone(), net.id.clone(), id.clone(), name.clone());
            undo.push("delete endpoint in driver", move || async move {
                d.delete_endpoint(&nid, &eid)
                    .await
                    .map_err(|e| CoreError::failed("delete endpoint", name, e))
            });
        }
        // Addresses the driver gave: used, and held by IPAM when they lie in a pool.
        let asked = (options.ipv4.is_some(), options.ipv6.is_some());
        take_driver_address(&core, &mut undo, &net, &name, &mut ipv4, info.ipv4, asked.0).await?;
        take_driver_address(&core, &mut undo, &net, &name, &mut ipv6, info.ipv6, asked.1).await?;
        let mac = options.mac.or(info.mac);
        if options.mac.is_none()
            && let Some(chosen) = info.mac
        {
            reservation.claim_chosen(chosen)?;
        }
        crate::crash::point("endpoint-create:after-driver");

        // 5. The record.
        let (pooled_v4, unpooled_v4) = split(&ipv4);
        let (pooled_v6, unpooled_v6) = split(&ipv6);
        let record = EndpointRecord {
            schema: record::SCHEMA,
            id: id.clone(),
            name: name.clone(),
            network_id: net.id.clone(),
            ipv4: pooled_v4,
            ipv6: pooled_v6,
            mac,
            dns_names: options.dns_names.clone(),
            aliases: options.aliases.clone(),
            exposed_ports: options.exposed_ports.clone(),
            port_bindings: options.port_bindings.clone(),
            driver_options: options.driver_options.clone(),
            sandbox_id: None,
            unpooled_ipv4: unpooled_v4,
            unpooled_ipv6: unpooled_v6,
            requested: Some(RequestedEndpoint {
                ipv4: options.ipv4,
                ipv6: options.ipv6,
                mac: options.mac,
            }),
        };
        let key = record::endpoint_key(&net.id, &id);
        let version = put_new_record(&core, &key, &record).await?;
        undo.push("delete endpoint record", delete_record(&core, key, version));
        crate::crash::point("endpoint-create:after-record");
        Ok(Arc::new(EndpointInner::from_record(
            record,
            net.clone(),
            options,
            parsed,
            version,
        )))
    }
    .await;
    let ep = undo.finish(result).await?;
    core.endpoints.insert(ep.id.clone(), ep.clone());
    reservation.commit(&ep);
    tracing::info!(endpoint = id::short(&ep.id), name = %name, network = %net.name, "endpoint created");
    Ok(ep)
}

/// A pooled address as the record keeps it, or one outside the pools.
fn split<N: Copy>(a: &Option<Assigned<N>>) -> (Option<(N, PoolId)>, Option<N>) {
    match a {
        Some(Assigned {
            addr,
            pool: Some(pool),
        }) => (Some((*addr, pool.clone())), None),
        Some(Assigned { addr, pool: None }) => (None, Some(*addr)),
        None => (None, None),
    }
}

/// An address IPAM gave, in the family of its pool (`narrow` picks it out).
fn narrowed<N>(
    a: IpNet,
    pool: PoolId,
    narrow: fn(IpNet) -> Option<N>,
    field: &str,
) -> Result<Assigned<N>, CoreError> {
    narrow(a)
        .map(|addr| Assigned {
            addr,
            pool: Some(pool),
        })
        .ok_or_else(|| CoreError::invalid(field, a, "IPAM returned an address of the other family"))
}

/// Takes an address a driver gave for one family (remote drivers do): the driver's address is
/// the endpoint's, held in IPAM when one of the network's pools holds it. Where IPAM had
/// assigned another one dynamically, that one is released; a static address the user asked for
/// is not the driver's to change.
#[allow(clippy::too_many_arguments)]
async fn take_driver_address<N>(
    core: &Arc<Core>,
    undo: &mut Undo<CoreError>,
    net: &Arc<NetworkInner>,
    endpoint: &str,
    assigned: &mut Option<Assigned<N>>,
    given: Option<N>,
    asked: bool,
) -> Result<(), CoreError>
where
    N: Copy + PartialEq + std::fmt::Display + Into<IpNet>,
{
    let Some(given) = given else {
        return Ok(());
    };
    if let Some(a) = assigned.as_ref() {
        if a.addr == given {
            return Ok(());
        }
        if asked {
            return Err(CoreError::DriverAddress {
                driver: net.driver_name.clone(),
                endpoint: endpoint.to_owned(),
                given: given.to_string(),
                assigned: a.addr.to_string(),
            });
        }
    }
    let ip = given.into().addr();
    let pool = net.pool_holding(ip);
    if let Some(pool) = &pool {
        core.request_address(
            net,
            pool,
            AddressRequest::Specific(ip),
            "reserve the driver's address of endpoint",
            endpoint,
        )
        .await?;
        let (c, n, pool) = (core.clone(), net.clone(), pool.clone());
        undo.push("release address", move || async move {
            c.release_address(&n, &pool, ip).await
        });
    }
    if let Some((old, old_pool)) = assigned
        .as_ref()
        .and_then(|a| a.reserved().map(|(ip, p)| (ip, p.clone())))
    {
        core.release_address(net, &old_pool, old).await?;
        let (c, n) = (core.clone(), net.clone());
        undo.push("reserve address again", move || async move {
            c.request_address(
                &n,
                &old_pool,
                AddressRequest::Specific(old),
                "reserve address again",
                &old.to_string(),
            )
            .await
            .map(drop)
        });
    }
    *assigned = Some(Assigned { addr: given, pool });
    Ok(())
}

/// Allocates one address: the static one in its pool, else the first free of any pool.
async fn allocate(
    core: &Arc<Core>,
    undo: &mut Undo<CoreError>,
    net: &Arc<NetworkInner>,
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
        match core
            .request_address(net, &pool, req, "allocate address for endpoint", endpoint)
            .await
        {
            Ok(addr) => {
                let (c, n, id) = (core.clone(), net.clone(), pool.clone());
                undo.push("release address", move || async move {
                    c.release_address(&n, &id, addr.addr()).await
                });
                return Ok(Some((addr, pool)));
            }
            Err(
                e @ CoreError::Ipam(Failed {
                    source: IpamError::PoolExhausted { .. },
                    ..
                }),
            ) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => Ok(None),
    }
}
