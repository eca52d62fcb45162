//! Per network, the task that turns the other hosts' facts into this host's FDB and neighbour
//! entries: for each remote endpoint a static FDB entry on the VXLAN device (its MAC behind
//! `dst <its host's VTEP>`) and a neighbour entry (its IP → its MAC, which the device's ARP
//! proxy answers from), so nothing is learnt or flooded. A removed fact (leave, delete, or
//! the host's lease expiring) takes both away.
//!
//! On a network with [`crate::options::BUM`], the same task keeps the VXLAN device's
//! all-zeros FDB entry in step: one destination per other host with at least one programmed
//! peer, counted per VTEP, so the kernel replicates each broadcast, multicast or unknown-unicast
//! frame to exactly those hosts (head-end replication). The resync's removals and the watch's
//! additions go through the same two functions, so it holds after a resync too.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Weak;
use std::time::Duration;

use cnm_core::spi::{FactEvent, Facts};
use cnm_sandbox::{Netlink, SandboxError};
use cnm_types::{ErrorKind, MacAddress};

use crate::{Network, PeerFact, count_down, count_up, lock, short};

/// The FDB entry a VXLAN device sends frames with no entry of their own to.
const ALL_ZEROS: MacAddress = MacAddress([0; 6]);

/// How long to wait before listing and watching again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// Where the watch programs the other hosts' endpoints: the kernel ([`Netlink`], what the
/// driver uses), or a sink that is not one (the control-plane simulation's recording table,
/// through [`crate::PeerAgent`]). The five calls the watch makes, with [`Netlink`]'s meaning.
pub trait PeerSink: Send + Sync + 'static {
    /// A static FDB entry on the VXLAN device `index`: `mac` behind `dst`.
    fn add_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> impl Future<Output = Result<(), SandboxError>> + Send;
    /// One more destination of the entry `mac` (the all-zeros flood entry).
    fn append_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: IpAddr,
    ) -> impl Future<Output = Result<(), SandboxError>> + Send;
    /// Removes the FDB entry `mac` (behind `dst`, if given).
    fn del_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> impl Future<Output = Result<(), SandboxError>> + Send;
    /// A neighbour entry on the device `index`: `ip` is at `mac`.
    fn add_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddress,
    ) -> impl Future<Output = Result<(), SandboxError>> + Send;
    /// Removes the neighbour entry of `ip`.
    fn del_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
    ) -> impl Future<Output = Result<(), SandboxError>> + Send;
}

impl PeerSink for Netlink {
    async fn add_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> Result<(), SandboxError> {
        Netlink::add_fdb(self, index, mac, dst).await
    }
    async fn append_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: IpAddr,
    ) -> Result<(), SandboxError> {
        Netlink::append_fdb(self, index, mac, dst).await
    }
    async fn del_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> Result<(), SandboxError> {
        Netlink::del_fdb(self, index, mac, dst).await
    }
    async fn add_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddress,
    ) -> Result<(), SandboxError> {
        Netlink::add_neighbour(self, index, ip, mac).await
    }
    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), SandboxError> {
        Netlink::del_neighbour(self, index, ip).await
    }
}

/// Runs until the network goes (the task is aborted, or the network dropped).
pub(crate) async fn watch<S: PeerSink>(net: Weak<Network>, facts: Facts, netlink: S) {
    loop {
        let Some(id) = net.upgrade().map(|n| n.id.clone()) else {
            return;
        };
        // What exists now: a peer programmed earlier whose fact went while the watch was
        // down is removed here; the watch then reports every fact that exists.
        match facts.others(&id).await {
            Ok(present) => {
                let Some(n) = net.upgrade() else { return };
                let gone: Vec<String> = lock(&n.peers)
                    .keys()
                    .filter(|k| !present.contains(*k))
                    .cloned()
                    .collect();
                for ep in gone {
                    remove(&n, &netlink, &ep).await;
                }
            }
            Err(e) => {
                tracing::warn!(network = %short(&id), error = %e, "cannot list overlay peers; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let mut w = match facts.watch(&id).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(network = %short(&id), error = %e, "cannot watch overlay peers; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(event) = w.next().await {
            let Some(n) = net.upgrade() else { return };
            match event {
                FactEvent::Added(fact) => match fact.decode::<PeerFact>() {
                    Ok(peer) => add(&n, &netlink, &fact.endpoint_id, peer).await,
                    Err(e) => tracing::warn!(
                        endpoint = %short(&fact.endpoint_id),
                        error = %e,
                        "undecodable overlay peer ignored"
                    ),
                },
                FactEvent::Removed { endpoint_id, .. } => remove(&n, &netlink, &endpoint_id).await,
                _ => {}
            }
        }
        tracing::warn!(network = %short(&id), "overlay peer watch ended; watching again");
        tokio::time::sleep(RETRY).await;
    }
}

/// Programs a remote endpoint (replacing what an earlier fact of it programmed).
async fn add<S: PeerSink>(net: &Network, netlink: &S, endpoint_id: &str, peer: PeerFact) {
    let old = lock(&net.peers).get(endpoint_id).cloned();
    if old.as_ref() == Some(&peer) {
        return;
    }
    if let Some(old) = old {
        unprogram(net, netlink, &old).await;
        flood_remove(net, netlink, old.vtep).await;
    }
    match program(net, netlink, &peer).await {
        Ok(()) => {
            tracing::debug!(network = %short(&net.id), vni = net.vni, endpoint = %short(endpoint_id), vtep = %peer.vtep, mac = %peer.mac, "overlay peer programmed");
            let vtep = peer.vtep;
            lock(&net.peers).insert(endpoint_id.to_owned(), peer);
            flood_add(net, netlink, vtep).await;
        }
        Err(e) => {
            tracing::warn!(network = %short(&net.id), endpoint = %short(endpoint_id), error = %e, "cannot program overlay peer");
            unprogram(net, netlink, &peer).await;
            lock(&net.peers).remove(endpoint_id);
        }
    }
}

async fn remove<S: PeerSink>(net: &Network, netlink: &S, endpoint_id: &str) {
    let old = lock(&net.peers).remove(endpoint_id);
    if let Some(old) = old {
        unprogram(net, netlink, &old).await;
        flood_remove(net, netlink, old.vtep).await;
        tracing::debug!(network = %short(&net.id), endpoint = %short(endpoint_id), "overlay peer removed");
    }
}

/// Counts one more peer behind `vtep`; the first puts the VTEP on the all-zeros entry.
async fn flood_add<S: PeerSink>(net: &Network, netlink: &S, vtep: IpAddr) {
    if !net.bum || vtep == net.local_vtep {
        return;
    }
    if !count_up(&net.flood, vtep) {
        return;
    }
    match netlink.append_fdb(net.vxlan_index, ALL_ZEROS, vtep).await {
        Ok(()) => {
            tracing::debug!(network = %short(&net.id), vni = net.vni, %vtep, "VTEP added to the flood list");
        }
        Err(e) => {
            // Not counted, so the next peer behind it tries again.
            tracing::warn!(network = %short(&net.id), %vtep, error = %e, "cannot add a VTEP to the flood list");
            lock(&net.flood).remove(&vtep);
        }
    }
}

/// Counts one peer less behind `vtep`; the last takes the VTEP off the all-zeros entry.
async fn flood_remove<S: PeerSink>(net: &Network, netlink: &S, vtep: IpAddr) {
    if !net.bum || vtep == net.local_vtep {
        return;
    }
    if !count_down(&net.flood, &vtep) {
        return;
    }
    match gone_ok(
        netlink
            .del_fdb(net.vxlan_index, ALL_ZEROS, Some(vtep))
            .await,
    ) {
        Ok(()) => {
            tracing::debug!(network = %short(&net.id), vni = net.vni, %vtep, "VTEP removed from the flood list");
        }
        Err(e) => {
            tracing::warn!(network = %short(&net.id), %vtep, error = %e, "cannot remove a VTEP from the flood list");
        }
    }
}

fn ips(peer: &PeerFact) -> impl Iterator<Item = IpAddr> {
    peer.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(peer.ipv6.map(IpAddr::V6))
}

/// The FDB entry, then the neighbour entries; an entry left by an earlier program of the
/// same MAC or IP (another host's, before it moved) is replaced.
async fn program<S: PeerSink>(
    net: &Network,
    netlink: &S,
    peer: &PeerFact,
) -> Result<(), SandboxError> {
    let index = net.vxlan_index;
    match netlink.add_fdb(index, peer.mac, Some(peer.vtep)).await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            gone_ok(netlink.del_fdb(index, peer.mac, None).await)?;
            netlink.add_fdb(index, peer.mac, Some(peer.vtep)).await?;
        }
        other => other?,
    }
    for ip in ips(peer) {
        match netlink.add_neighbour(index, ip, peer.mac).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                gone_ok(netlink.del_neighbour(index, ip).await)?;
                netlink.add_neighbour(index, ip, peer.mac).await?;
            }
            other => other?,
        }
    }
    Ok(())
}

/// Removes what [`program`] made; an entry already gone is fine.
async fn unprogram<S: PeerSink>(net: &Network, netlink: &S, peer: &PeerFact) {
    let index = net.vxlan_index;
    for ip in ips(peer) {
        if let Err(e) = gone_ok(netlink.del_neighbour(index, ip).await) {
            tracing::warn!(%ip, error = %e, "cannot remove overlay neighbour entry");
        }
    }
    if let Err(e) = gone_ok(netlink.del_fdb(index, peer.mac, Some(peer.vtep)).await) {
        tracing::warn!(mac = %peer.mac, error = %e, "cannot remove overlay FDB entry");
    }
}

fn gone_ok(r: Result<(), SandboxError>) -> Result<(), SandboxError> {
    match r {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
