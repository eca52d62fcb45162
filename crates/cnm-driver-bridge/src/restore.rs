//! Restart: adopting a network's bridge and its endpoints' veths from a previous run of the
//! controller, and sweeping what no record owns.
//!
//! Ownership is marked in the kernel: the bridge and each host-side veth carry the alias
//! `cnm:<network or endpoint id>` (`IFLA_IFALIAS`), set right after they are created. The
//! sweep deletes only links so marked (or enslaved to one of our bridges), plus bridges named
//! with our `cnm-` prefix that lost the race between creation and marking; never anyone
//! else's links.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cnm_core::spi::{NetworkSpec, RestoredEndpoint};
use cnm_sandbox::set_sysctls;
use cnm_types::{ErrorKind, IfName, MacAddress};

use crate::{BridgeDriver, BridgeError, BridgeOptions, BridgePlan, Endpoint, EndpointState};
use crate::{Network, lock, short};

/// The prefix of the alias that marks links the driver created.
const ALIAS_PREFIX: &str = "cnm:";

/// The alias marking a link created for the network or endpoint `id`.
pub(crate) fn alias(id: &str) -> String {
    format!("{ALIAS_PREFIX}{id}")
}

/// Ignores "already exists" (the kernel kept it across the restart).
fn tolerate_exists(
    r: Result<(), cnm_sandbox::SandboxError>,
) -> Result<(), cnm_sandbox::SandboxError> {
    match r {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

impl BridgeDriver {
    pub(crate) async fn restore_network_inner(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), BridgeError> {
        let opts = BridgeOptions::try_from(&spec.options)?;
        let plan = BridgePlan::new(&opts, spec)?;
        // Fail closed: everything restored goes to the kernel in one transaction at the sweep;
        // until then the previous run's tables keep filtering.
        let firewall = self.firewall_for_restore().await?.clone();
        let host = &self.ctx.host_netlink;
        let bridge = plan.bridge.as_str();
        let existing = host
            .link(bridge)
            .await
            .map_err(|e| BridgeError::kernel("look up link", bridge, e))?;
        match existing {
            // Gone (a reboot, or deleted behind our back): made again, as on creation.
            None => self.create_network_inner(spec).await?,
            Some(link) => {
                // Adopted: what the kernel lost is made again; what it kept stays untouched,
                // so the endpoints' traffic keeps flowing.
                let index = link.index;
                let sysctls = plan.bridge_sysctls();
                let pairs: Vec<(&str, &str)> = sysctls
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                set_sysctls(&self.ctx.host_ns, &pairs)
                    .await
                    .map_err(|e| BridgeError::kernel("set sysctls of bridge", bridge, e))?;
                let addrs = plan.bridge_addresses();
                for addr in addrs {
                    tolerate_exists(host.add_address(index, addr).await).map_err(|e| {
                        BridgeError::kernel(
                            "add gateway address to bridge",
                            format!("{bridge} ({addr})"),
                            e,
                        )
                    })?;
                }
                host.set_alias(index, &alias(&plan.network_id))
                    .await
                    .map_err(|e| BridgeError::kernel("mark bridge", bridge, e))?;
                host.set_up(index)
                    .await
                    .map_err(|e| BridgeError::kernel("bring up bridge", bridge, e))?;
                self.enable_forwarding(&plan.forwarding(), &firewall)
                    .await?;
                firewall.add_network(&plan).await?;
                lock(&self.networks).insert(
                    spec.id.clone(),
                    Arc::new(Network {
                        plan,
                        bridge_index: index,
                        endpoints: Mutex::new(std::collections::HashMap::new()),
                    }),
                );
            }
        }
        let net = self.network(&spec.id)?;
        let links = host
            .links()
            .await
            .map_err(|e| BridgeError::kernel("list links of", self.ctx.host_ns.to_string(), e))?;
        let mut owned = HashSet::new();
        for ep in endpoints {
            let s = &ep.spec;
            let veth = ep.joined.as_ref().and_then(|_| {
                let mark = alias(&s.endpoint_id);
                links.iter().find(|l| {
                    l.alias.as_deref() == Some(mark.as_str()) && l.master == Some(net.bridge_index)
                })
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
                    None => join
                        .sandbox
                        .netlink
                        .link(join.ifname.as_str())
                        .await
                        .map_err(|e| {
                            BridgeError::kernel(
                                "look up",
                                format!("{} in {}", join.ifname, join.sandbox.ns),
                                e,
                            )
                        })?
                        .and_then(|l| l.mac),
                };
                match mac {
                    Some(mac) => {
                        firewall
                            .guard_port(
                                &spec.id,
                                &s.endpoint_id,
                                port,
                                mac,
                                s.ipv4.map(|a| a.addr()),
                                s.ipv6.map(|a| a.addr()),
                            )
                            .await?
                    }
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
        // A veth on our bridge that no joined endpoint owns: a join cut short by a crash, or a
        // leave whose records were written before it could delete the veth.
        for l in &links {
            if l.master == Some(net.bridge_index)
                && l.kind.as_deref() == Some("veth")
                && !owned.contains(&l.index)
            {
                tracing::info!(veth = %l.name, bridge = %net.plan.bridge, "deleting a veth no endpoint owns");
                host.delete_link(l.index)
                    .await
                    .map_err(|e| BridgeError::kernel("delete veth", l.name.clone(), e))?;
            }
        }
        tracing::debug!(network = %short(&spec.id), bridge = %net.plan.bridge, endpoints = endpoints.len(), "bridge network restored");
        Ok(())
    }

    pub(crate) async fn sweep_inner(&self, keep: &[String]) -> Result<(), BridgeError> {
        // The one transaction of the restart: the tables are replaced with what the restored
        // networks, endpoints and published ports put in the model (the rules of networks
        // without a record go). Without restored networks, opening the firewall does the same.
        let firewall = self.firewall().await?;
        firewall.finish_loading().await?;
        self.firewall_loading
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.flush_deferred_forwarding().await?;
        let ours: HashSet<String> = lock(&self.networks)
            .values()
            .map(|n| n.plan.bridge.to_string())
            .collect();
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let host = &self.ctx.host_netlink;
        let links = host
            .links()
            .await
            .map_err(|e| BridgeError::kernel("list links of", self.ctx.host_ns.to_string(), e))?;
        for l in links {
            if l.kind.as_deref() != Some("bridge") || ours.contains(&l.name) {
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
                    .map_err(|e| BridgeError::kernel("delete bridge", l.name.clone(), e))?;
            }
        }
        Ok(())
    }
}
