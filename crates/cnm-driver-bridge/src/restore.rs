//! Restart: adopting a network's bridge and its endpoints' veths from a previous run of the
//! controller, and sweeping what no record owns.
//!
//! Ownership is marked in the kernel: the bridge carries the alias `cnm:<network id>`
//! (`IFLA_IFALIAS`), set right after it is created. The host-side veth of an endpoint is named
//! after the endpoint ([`endpoint_veth_name`]) and enslaved to the network's bridge; only when
//! that name is taken does it get a random name and the alias `cnm:<endpoint id>`, as every veth
//! did before (older versions' veths are adopted by that alias). Setting an alias costs the
//! kernel a walk of the host's whole IPv6 routing table while the container end is down
//! (`NETDEV_CHANGE` on a link that is not ready), and that table grows with every endpoint, so
//! the join names instead of marking. The sweep deletes only links so marked (or enslaved to one
//! of our bridges), plus bridges named with our `cnm-` prefix that lost the race between
//! creation and marking; never anyone else's links.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cnm_core::spi::{NetworkSpec, RestoredEndpoint};
use cnm_core::undo::Undo;
use cnm_firewall::EndpointPort;
use cnm_types::{FailedTo, IfName, InvalidTo, MacAddress};

use crate::{BridgeDriver, BridgeError, BridgePlan, Endpoint, EndpointState};
use crate::{lock, short};

/// The prefix of the alias that marks links the driver created.
const ALIAS_PREFIX: &str = "cnm:";

/// The alias marking a link created for the network or endpoint `id`.
pub(crate) fn alias(id: &str) -> String {
    format!("{ALIAS_PREFIX}{id}")
}

/// The name of the host-side veth of endpoint `endpoint_id` (15 bytes, `IFNAMSIZ - 1`):
/// `veth` and the id's first 11 characters when they are lowercase hex (every id cnm makes),
/// else 11 hex digits of a stable hash of the id. Random veth names are shorter (`veth` and 7
/// hex digits), so they never take one of these by chance.
pub fn endpoint_veth_name(endpoint_id: &str) -> String {
    let is_hex = |p: &&str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match endpoint_id.get(..11).filter(is_hex) {
        Some(prefix) => format!("veth{prefix}"),
        None => format!(
            "veth{:011x}",
            fnv1a(endpoint_id.as_bytes()) & 0xfff_ffff_ffff
        ),
    }
}

/// 64-bit FNV-1a: stable across builds and versions (the names outlive the process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl BridgeDriver {
    pub(crate) async fn restore_network_inner(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), BridgeError> {
        let plan = BridgePlan::new(crate::options_of(spec)?, spec)?;
        // Fail closed: the controller's firewall is loading, so everything restored goes to
        // the kernel in one transaction (every driver's) once the reload is done; until then
        // the previous run's tables keep filtering.
        let firewall = self.firewall().await?.clone();
        let host = &self.ctx.host_netlink;
        let bridge = plan.bridge.as_str();
        // Gone (a reboot, or deleted behind our back): made again, as on creation. Kept: adopted,
        // what the kernel lost made again and what it kept left untouched, so the endpoints'
        // traffic keeps flowing. One path either way.
        let existing = host
            .link(bridge)
            .await
            .map_err(|e| BridgeError::failed("look up link", bridge, e))?
            .map(|l| l.index);
        let mut undo = Undo::new();
        let result = self
            .apply_network(&plan, existing, &firewall, &mut undo)
            .await;
        let index = undo.finish(result).await?;
        self.add_network(spec, plan, index);
        let net = self.network(&spec.id)?;
        // Only the bridge's ports, filtered by the kernel: a dump of every host link per
        // network made a restart quadratic (10 networks of 1,000 parsed 100,000 links,
        // issue 15).
        let links = host.links_of_master(net.bridge_index).await.map_err(|e| {
            BridgeError::failed("list ports of bridge", net.plan.bridge.to_string(), e)
        })?;
        // An endpoint's veth is on the network's bridge and either carries the endpoint's mark
        // (a veth whose name was taken, or one an older version made) or, carrying no mark of
        // ours, has the endpoint's name. Both by map: one lookup per endpoint, not a scan.
        let on_bridge = links.iter();
        let ports: HashMap<&str, &cnm_sandbox::Link> = on_bridge
            .clone()
            .filter_map(|l| {
                Some((
                    l.alias.as_deref().filter(|a| a.starts_with(ALIAS_PREFIX))?,
                    l,
                ))
            })
            .collect();
        let unmarked: HashMap<&str, &cnm_sandbox::Link> = on_bridge
            .filter(|l| {
                !l.alias
                    .as_deref()
                    .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
            })
            .map(|l| (l.name.as_str(), l))
            .collect();
        let mut owned = HashSet::new();
        // Every joined endpoint's port is guarded again in one trip to the firewall (one per
        // endpoint was most of a restart's wait on it, issue 15).
        let mut guards = Vec::new();
        for ep in endpoints {
            let s = &ep.spec;
            let veth = ep.joined.as_ref().and_then(|_| {
                let (mark, name) = (alias(&s.endpoint_id), endpoint_veth_name(&s.endpoint_id));
                ports
                    .get(mark.as_str())
                    .or_else(|| unmarked.get(name.as_str()))
                    .copied()
            });
            if ep.joined.is_some() && veth.is_none() {
                tracing::warn!(endpoint = %short(&s.endpoint_id), network = %short(&spec.id), "the veth of a joined endpoint is gone");
            }
            let joined = match veth {
                Some(l) => {
                    owned.insert(l.index);
                    Some(IfName::new(l.name.clone()).map_err(|e| {
                        BridgeError::invalid("veth name", l.name.clone(), e.to_string())
                    })?)
                }
                None => None,
            };
            if let (Some(port), Some(join)) = (&joined, &ep.joined) {
                // The MAC the container's interface carries: the record's, else the kernel's.
                let mac = match s.mac {
                    Some(m) => Some(m),
                    None => crate::sandbox_link(&join.sandbox, &join.ifname)
                        .await?
                        .and_then(|l| l.mac),
                };
                match mac {
                    Some(mac) => guards.push(EndpointPort {
                        endpoint_id: s.endpoint_id.clone(),
                        network_id: spec.id.clone(),
                        port: port.clone(),
                        mac,
                        ipv4: s.ipv4.map(|a| a.addr()),
                        ipv6: s.ipv6.map(|a| a.addr()),
                    }),
                    None => {
                        tracing::warn!(endpoint = %short(&s.endpoint_id), "no MAC known for a joined endpoint: its port is not guarded")
                    }
                }
            }
            lock(&net.endpoints).insert(
                s.endpoint_id.clone(),
                Arc::new(Endpoint {
                    id: s.endpoint_id.clone(),
                    ipv4: s.ipv4,
                    ipv6: s.ipv6,
                    mac: s.mac.unwrap_or_else(MacAddress::random_local),
                    state: Mutex::new(EndpointState {
                        joined,
                        published: None,
                    }),
                }),
            );
        }
        firewall.guard_ports(guards).await?;
        // A veth on our bridge that no joined endpoint owns: a join cut short by a crash, or a
        // leave whose records were written before it could delete the veth.
        for l in &links {
            if l.kind.as_deref() == Some("veth") && !owned.contains(&l.index) {
                tracing::info!(veth = %l.name, bridge = %net.plan.bridge, "deleting a veth no endpoint owns");
                host.delete_link(l.index)
                    .await
                    .map_err(|e| BridgeError::failed("delete veth", l.name.clone(), e))?;
            }
        }
        tracing::debug!(network = %short(&spec.id), bridge = %net.plan.bridge, endpoints = endpoints.len(), "bridge network restored");
        Ok(())
    }

    pub(crate) async fn sweep_inner(&self, keep: &[String]) -> Result<(), BridgeError> {
        // The firewall holds exactly what the restored networks put in it, and the controller
        // commits it after every sweep (rules of networks without a record go). One thing of
        // ours outlives the networks, as the forwarding cnm turned on does: the drop of foreign
        // forwarded traffic. Using the firewall puts it back, with or without a network.
        self.firewall().await?;
        let ours: HashSet<String> = lock(&self.networks)
            .values()
            .map(|n| n.plan.bridge.to_string())
            .collect();
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let host = &self.ctx.host_netlink;
        // Only the bridges, filtered by the kernel (not every veth of every endpoint).
        let links = host
            .bridges()
            .await
            .map_err(|e| BridgeError::failed("list bridges of", self.ctx.host_ns.to_string(), e))?;
        for l in links {
            if ours.contains(&l.name) {
                continue;
            }
            let orphan = match l
                .alias
                .as_deref()
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
            {
                Some(id) => !keep.contains(id),
                // Created, then the crash came before it was marked.
                None => l.alias.is_none() && l.name.starts_with("cnm-"),
            };
            if orphan {
                tracing::info!(bridge = %l.name, "deleting a bridge no network owns");
                host.delete_link(l.index)
                    .await
                    .map_err(|e| BridgeError::failed("delete bridge", l.name.clone(), e))?;
            }
        }
        Ok(())
    }
}
