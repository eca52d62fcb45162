//! Service discovery across hosts: the names of endpoints on a global network, shared through
//! the cluster store so that every host's embedded DNS answers them (issue 12; libnetwork keeps
//! the same in its networkdb `endpoint_table`, written by the controller, not the driver).
//!
//! A host publishes, for each of its endpoints joined on a served global network, a fact
//! ([`NameFact`]: its DNS names and addresses) at `names/facts/<network id>/<endpoint id>` in
//! the cluster store, under a lease of this host (the same mechanism as a driver's facts,
//! [`Facts`]), inside the join's transaction; a leave, a sandbox delete or an endpoint delete
//! withdraws it. Per served global network with a sandbox of this host on it, a task watches
//! the other hosts' facts and adds each as an endpoint of that network in this host's resolver
//! (under a sandbox id of its own, `remote/<endpoint id>`, that no local sandbox has), and
//! removes it as soon as its fact goes: withdrawn, or its host's lease expired. So an answer is
//! never older than the store's watch.

use cnm_types::FailedTo;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cnm_dns::{EndpointDns, Resolver};
use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::facts::HostLease;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::spi::{FactEvent, Facts};
use crate::state::Core;
use crate::store::ScopedStore;
use crate::sync::lock;

/// The prefix of the name facts in the cluster store.
const PREFIX: &str = "names/";

/// How long to wait before listing and watching again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// What a host publishes for one of its endpoints on a global network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NameFact {
    /// Its name, then its aliases and DNS names.
    pub(crate) names: Vec<String>,
    /// Its addresses on the network.
    pub(crate) addresses: Vec<IpAddr>,
}

/// The controller's side of it: this host's name facts and the per-network watch tasks.
#[derive(Default)]
pub(crate) struct RemoteNames {
    facts: Mutex<Option<Facts>>,
    watches: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

/// The key of an endpoint's name fact in the cluster store.
pub(crate) fn cluster_key(network_id: &str, endpoint_id: &str) -> String {
    format!("{PREFIX}facts/{network_id}/{endpoint_id}")
}

/// The resolver's sandbox id for another host's endpoint.
fn remote_sandbox(endpoint_id: &str) -> String {
    format!("remote/{endpoint_id}")
}

fn store_error(op: &'static str, ep: &str) -> impl FnOnce(crate::spi::DriverError) -> CoreError {
    let object = ep.to_owned();
    move |e| CoreError::failed(op, object, e)
}

impl RemoteNames {
    /// This host's name facts, when the controller has a cluster store.
    fn facts(&self, core: &Core) -> Option<Facts> {
        let cluster = core.cluster()?;
        let mut slot = lock(&self.facts);
        if slot.is_none() {
            let scoped =
                ScopedStore::new(cluster.store.clone(), PREFIX).expect("a constant, valid prefix");
            let lease = HostLease::new(
                Some(cluster.store.clone()),
                Some(scoped.clone()),
                core.driver_context.lease_ttl(),
            );
            *slot = Some(Facts::new(scoped, cluster.host_id.clone(), lease));
        }
        slot.clone()
    }

    /// Stops every watch and lets this host's lease go (its facts expire with it): at shutdown.
    pub(crate) fn release(&self) {
        for (_, task) in lock(&self.watches).drain() {
            task.abort();
        }
        lock(&self.facts).take();
    }

    /// Stops watching a network (deleted): its names go with it from the resolver.
    pub(crate) fn forget(&self, network_id: &str) {
        if let Some(task) = lock(&self.watches).remove(network_id) {
            task.abort();
        }
    }
}

/// Whether `net`'s names are shared across hosts.
pub(crate) fn shared(core: &Core, net: &NetworkInner) -> bool {
    net.is_global() && core.cluster().is_some()
}

/// Publishes the names of `ep` (joined here) to the other hosts, and makes sure this host
/// answers theirs on its network.
pub(crate) async fn publish(
    core: &Arc<Core>,
    ep: &EndpointInner,
    names: Vec<String>,
) -> Result<(), CoreError> {
    let net = &ep.network;
    let Some(facts) = core.remote_names.facts(core) else {
        return Ok(());
    };
    let fact = NameFact {
        names,
        addresses: ep.addresses().collect(),
    };
    facts
        .publish(&net.id, &ep.id, &fact)
        .await
        .map_err(store_error("publish the names of endpoint", &ep.name))?;
    watch(core, net);
    Ok(())
}

/// Withdraws the names of `ep` from the other hosts.
pub(crate) async fn withdraw(core: &Core, ep: &EndpointInner) -> Result<(), CoreError> {
    let Some(facts) = core.remote_names.facts(core) else {
        return Ok(());
    };
    facts
        .withdraw(&ep.network.id, &ep.id)
        .await
        .map_err(store_error("withdraw the names of endpoint", &ep.name))
}

/// Starts the task adding the other hosts' names of `net` to this host's resolver, unless it
/// runs.
pub(crate) fn watch(core: &Arc<Core>, net: &NetworkInner) {
    let Some(facts) = core.remote_names.facts(core) else {
        return;
    };
    let mut watches = lock(&core.remote_names.watches);
    if watches.get(&net.id).is_some_and(|t| !t.is_finished()) {
        return;
    }
    let task = tokio::spawn(run(Arc::downgrade(core), net.id.clone(), facts));
    watches.insert(net.id.clone(), task);
}

/// The resolver, and the network as DNS sees it, while the controller and the network live.
fn current(core: &Weak<Core>, network_id: &str) -> Option<(Resolver, Arc<NetworkInner>)> {
    let core = core.upgrade()?;
    let resolver = core.dns.resolver()?;
    let net = core.networks.get(network_id)?.value().clone();
    Some((resolver, net))
}

/// Runs until the network or the controller goes (or the task is aborted).
async fn run(core: Weak<Core>, network_id: String, facts: Facts) {
    // The other hosts' endpoints this task added to the resolver.
    let mut added: HashSet<String> = HashSet::new();
    loop {
        // What exists now: a name added earlier whose fact went while the watch was down
        // goes here; the watch then reports every fact that exists.
        match facts.others(&network_id).await {
            Ok(present) => {
                let Some((resolver, _)) = current(&core, &network_id) else {
                    return;
                };
                added.retain(|ep| {
                    let keep = present.contains(ep);
                    if !keep {
                        resolver.remove_endpoint(&network_id, ep);
                    }
                    keep
                });
            }
            Err(e) => {
                tracing::warn!(network = %crate::id::short(&network_id), error = %e, "cannot list other hosts' DNS names; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let mut w = match facts.watch(&network_id).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(network = %crate::id::short(&network_id), error = %e, "cannot watch other hosts' DNS names; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(event) = w.next().await {
            let Some((resolver, net)) = current(&core, &network_id) else {
                return;
            };
            match event {
                FactEvent::Added(fact) => match fact.decode::<NameFact>() {
                    Ok(names) => {
                        if add(&resolver, &net, &fact.endpoint_id, &names) {
                            added.insert(fact.endpoint_id);
                        } else {
                            added.remove(&fact.endpoint_id);
                        }
                    }
                    Err(e) => tracing::warn!(
                        endpoint = %crate::id::short(&fact.endpoint_id),
                        error = %e,
                        "undecodable DNS names of another host ignored"
                    ),
                },
                FactEvent::Removed { endpoint_id, .. } => {
                    resolver.remove_endpoint(&network_id, &endpoint_id);
                    added.remove(&endpoint_id);
                    tracing::debug!(network = %net.name, endpoint = %crate::id::short(&endpoint_id), "another host's DNS names removed");
                }
            }
        }
        tracing::warn!(network = %crate::id::short(&network_id), "watch of other hosts' DNS names ended; watching again");
        tokio::time::sleep(RETRY).await;
    }
}

/// Adds (or replaces) another host's endpoint in the resolver; false if it cannot hold it.
fn add(resolver: &Resolver, net: &NetworkInner, endpoint_id: &str, fact: &NameFact) -> bool {
    resolver.remove_endpoint(&net.id, endpoint_id);
    let Some((first, aliases)) = fact.names.split_first() else {
        return false;
    };
    let mut e = EndpointDns::new(endpoint_id, remote_sandbox(endpoint_id), first.clone());
    for alias in aliases {
        e = e.alias(alias.clone());
    }
    for ip in &fact.addresses {
        e = e.address(*ip);
    }
    let result = resolver
        .upsert_network(&net.id, &crate::dns::network_dns(net))
        .and_then(|()| resolver.add_endpoint(&net.id, &e));
    match result {
        Ok(()) => {
            tracing::debug!(network = %net.name, endpoint = %crate::id::short(endpoint_id), name = %first, "another host's DNS names added");
            true
        }
        Err(e) => {
            tracing::warn!(network = %net.name, endpoint = %crate::id::short(endpoint_id), error = %e, "cannot add another host's DNS names");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sandbox_ids_of_remote_names() {
        assert_eq!(cluster_key("n1", "e1"), "names/facts/n1/e1");
        assert_eq!(remote_sandbox("e1"), "remote/e1");
        let f = NameFact {
            names: vec!["web".into(), "www".into()],
            addresses: vec!["10.0.0.2".parse().unwrap()],
        };
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"names": ["web", "www"], "addresses": ["10.0.0.2"]})
        );
    }
}
