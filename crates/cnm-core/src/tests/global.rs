//! Global scope without root: two controllers, each on its own fake kernel and own in-memory
//! store, sharing one in-memory cluster store, with a global driver (`overlay`) that takes a
//! VNI in the cluster through its store handle and publishes a fact per endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cnm_types::ErrorKind;
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use super::{RESOLV, builder, ep_opts};
use crate::spi::*;
use crate::store::{Expect, MemoryStore, Store};
use crate::testing::{FakeDriver, FakeKernel};
use crate::{Controller, CoreError, NetworkOptions};

/// What the overlay publishes per endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Vtep {
    ip: String,
    vtep: String,
}

/// A global driver: the fake data plane, a VNI per network claimed in the cluster store, a
/// fact per endpoint.
#[derive(Debug)]
struct Overlay {
    fake: FakeDriver,
    ctx: DriverContext,
    /// Network id → the allocation each host's create (or restore) got.
    created: Mutex<BTreeMap<String, DriverOptions>>,
}

impl Overlay {
    fn capability() -> Capability {
        Capability::local()
            .with_scope(Scope::Global)
            .with_host_routes(false)
    }
}

#[async_trait]
impl Driver for Overlay {
    fn name(&self) -> &str {
        "overlay"
    }
    fn capability(&self) -> Capability {
        Self::capability()
    }
    async fn allocate_network(&self, _spec: &NetworkSpec) -> Result<DriverOptions, DriverError> {
        let store = self.ctx.store(Scope::Global)?;
        for vni in 4096u32.. {
            match store
                .put(&format!("vni/{vni}"), Vec::new(), Expect::Absent)
                .await
            {
                Ok(_) => return Ok(BTreeMap::from([("vni".to_owned(), vni.to_string())])),
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(DriverError::new("overlay", e.kind(), e)),
            }
        }
        unreachable!("the VNI space is not exhausted in a test")
    }
    async fn free_network(&self, _id: &str, allocation: &DriverOptions) -> Result<(), DriverError> {
        let store = self.ctx.store(Scope::Global)?;
        store
            .delete(&format!("vni/{}", allocation["vni"]), Expect::Any)
            .await
            .map_err(|e| DriverError::new("overlay", e.kind(), e))
    }
    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        self.fake.create_network(spec).await?;
        self.created
            .lock()
            .unwrap()
            .insert(spec.id.clone(), spec.allocation.clone());
        Ok(())
    }
    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        self.fake.restore_network(spec, endpoints).await?;
        self.created
            .lock()
            .unwrap()
            .insert(spec.id.clone(), spec.allocation.clone());
        Ok(())
    }
    async fn delete_network(&self, id: &str) -> Result<(), DriverError> {
        self.created.lock().unwrap().remove(id);
        self.fake.delete_network(id).await
    }
    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        let info = self.fake.create_endpoint(spec).await?;
        let fact = Vtep {
            ip: spec.ipv4.map(|a| a.addr().to_string()).unwrap_or_default(),
            vtep: self.ctx.host_id().to_owned(),
        };
        self.ctx
            .facts()?
            .publish(&spec.network_id, &spec.endpoint_id, &fact)
            .await?;
        Ok(info)
    }
    async fn delete_endpoint(&self, net: &str, ep: &str) -> Result<(), DriverError> {
        self.fake.delete_endpoint(net, ep).await
    }
    async fn join(&self, req: &JoinRequest) -> Result<JoinInfo, DriverError> {
        self.fake.join(req).await
    }
    async fn leave(&self, req: &LeaveRequest) -> Result<(), DriverError> {
        self.fake.leave(req).await
    }
}

/// One host of the cluster.
struct Host {
    ctl: Controller,
    overlay: Arc<Overlay>,
    local: Arc<MemoryStore>,
    _run: tempfile::TempDir,
}

async fn host(cluster: &Arc<MemoryStore>) -> Host {
    host_with_ttl(cluster, DEFAULT_LEASE_TTL).await
}

async fn host_with_ttl(cluster: &Arc<MemoryStore>, ttl: Duration) -> Host {
    host_built(Some(cluster), ttl).await
}

/// The store address a host awaiting its cluster store names.
const AWAITED: &str = "etcd://192.0.2.1:2379";

/// A host whose cluster store (`cluster`) is given at build, or, without one, configured but
/// not reachable yet ([`AWAITED`]).
async fn host_built(cluster: Option<&Arc<MemoryStore>>, ttl: Duration) -> Host {
    let kernel = FakeKernel::new().expect("a fake kernel");
    kernel.put_file(std::path::Path::new(RESOLV), "nameserver 192.0.2.53\n");
    let local = Arc::new(MemoryStore::new());
    let run = tempfile::tempdir().unwrap();
    let slot: Arc<OnceLock<Arc<Overlay>>> = Arc::default();
    let (s, k) = (slot.clone(), kernel.clone());
    let fake = Arc::new(FakeDriver::new("fake", Some(kernel.clone())));
    let builder = builder(&kernel, &fake, &local, run.path());
    let builder = match cluster {
        Some(cluster) => builder.cluster_store(cluster.clone()),
        None => builder.cluster_store_awaited(AWAITED),
    };
    let ctl = builder
        .cluster_lease_ttl(ttl)
        .driver("overlay", move |ctx| {
            let d = Arc::new(Overlay {
                fake: FakeDriver::new("overlay", Some(k)).with_capability(Overlay::capability()),
                ctx: ctx.clone(),
                created: Mutex::default(),
            });
            s.set(d.clone()).unwrap();
            Ok(d)
        })
        .build()
        .await
        .expect("a controller with a cluster store");
    Host {
        ctl,
        overlay: slot.get().unwrap().clone(),
        local,
        _run: run,
    }
}

async fn cluster_pair() -> (Arc<MemoryStore>, Host, Host) {
    let cluster = Arc::new(MemoryStore::cluster());
    let a = host(&cluster).await;
    let b = host(&cluster).await;
    (cluster, a, b)
}

fn overlay() -> NetworkOptions {
    NetworkOptions::default()
}

/// Waits (at most 5 s) until `ctl`'s background watch has synced `check` true.
async fn until(ctl: &Controller, what: &str, check: impl Fn() -> bool) {
    let core = ctl.core().unwrap();
    let mut synced = core.cluster().unwrap().synced.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !check() {
            synced.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 5 s"));
}

/// The next fact event, within 5 s.
async fn next(w: &mut FactWatch) -> FactEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an event within 5 s")
        .expect("the watch goes on")
}

async fn keys(store: &MemoryStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[tokio::test]
async fn a_global_network_is_one_network_on_every_host() {
    let (cluster, a, b) = cluster_pair().await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    assert_eq!(g.scope(), Scope::Global);
    assert_eq!(
        g.ipv4()[0].pool.to_string(),
        "10.0.0.0/24",
        "the cluster's pools"
    );
    assert_eq!(g.allocation()["vni"], "4096");

    // B's watch adopts it; B's driver creates it with A's allocation.
    until(&b.ctl, "adopted by B", || b.ctl.network("g").is_ok()).await;
    let gb = b.ctl.network("g").unwrap();
    assert_eq!((gb.id(), gb.ipv4()), (g.id(), g.ipv4()));
    assert_eq!(gb.allocation(), g.allocation());
    for h in [&a, &b] {
        assert_eq!(
            h.overlay.created.lock().unwrap().get(g.id()),
            Some(g.allocation())
        );
    }
    // Allocated once for the cluster.
    assert_eq!(
        keys(&cluster, "driver/overlay/vni/").await,
        ["driver/overlay/vni/4096"]
    );

    // Names are the cluster's; subnets and VNIs never repeat.
    let e = b
        .ctl
        .new_network("overlay", "g", overlay())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::NetworkExists(ref n) if n == "g"),
        "{e}"
    );
    let h = b.ctl.new_network("overlay", "h", overlay()).await.unwrap();
    assert_eq!(h.ipv4()[0].pool.to_string(), "10.0.1.0/24");
    assert_eq!(h.allocation()["vni"], "4097");
    let e = a
        .ctl
        .new_network(
            "overlay",
            "i",
            NetworkOptions::default().subnet("10.0.1.128/25".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("10.0.1.0/24"), "{e}");
    // An explicit sync sees the same.
    a.ctl.sync_cluster().await.unwrap();
    assert_eq!(a.ctl.network("h").unwrap().id(), h.id());

    // Nothing of the global networks in the hosts' own stores.
    for host in [&a, &b] {
        assert!(keys(&host.local, "network/").await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_endpoints_at_once_on_each_of_two_hosts_never_share_an_address() {
    let (cluster, a, b) = cluster_pair().await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    b.ctl.sync_cluster().await.unwrap();
    let gb = b.ctl.network("g").unwrap();
    let tasks = (0..64).flat_map(|i| {
        [(g.clone(), format!("a{i}")), (gb.clone(), format!("b{i}"))].map(|(net, name)| {
            tokio::spawn(async move { net.create_endpoint(&name, ep_opts()).await })
        })
    });
    let eps: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    let addrs: BTreeSet<_> = eps.iter().map(|e| e.ipv4().unwrap().addr()).collect();
    assert_eq!(addrs.len(), 128, "every address once");
    assert!(
        !addrs.contains(&"10.0.0.1".parse().unwrap()),
        "not the gateway"
    );
    assert_eq!(
        keys(&cluster, &format!("address/{}/", g.id())).await.len(),
        128
    );
    // Released ones are found again by the other host (its view is rebuilt when it runs dry).
    join_all(eps.iter().map(|e| e.delete()))
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    assert!(keys(&cluster, "address/").await.is_empty());
    let more = join_all((0..253).map(|i| {
        let net = if i % 2 == 0 { g.clone() } else { gb.clone() };
        async move { net.create_endpoint(&format!("c{i}"), ep_opts()).await }
    }))
    .await;
    assert!(
        more.iter().all(Result::is_ok),
        "the whole /24 is usable again"
    );
    let e = g.create_endpoint("full", ep_opts()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn facts_of_one_host_reach_the_other_and_go_with_their_endpoint() {
    let (_cluster, a, b) = cluster_pair().await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    b.ctl.sync_cluster().await.unwrap();
    let early = a
        .ctl
        .network("g")
        .unwrap()
        .create_endpoint("early", ep_opts())
        .await
        .unwrap();
    let facts_b = b.overlay.ctx.facts().unwrap();
    let mut w = facts_b.watch(g.id()).await.unwrap();
    // What existed first, then what comes.
    let host_a = a.ctl.host_id().unwrap();
    match next(&mut w).await {
        FactEvent::Added(f) => {
            assert_eq!(
                (f.endpoint_id.as_str(), f.host.as_str()),
                (early.id(), host_a.as_str())
            );
            let v: Vtep = f.decode().unwrap();
            assert_eq!(v.ip, early.ipv4().unwrap().addr().to_string());
            assert_eq!(v.vtep, host_a);
        }
        other => panic!("{other:?}"),
    }
    // B's own endpoints are not news to B.
    let own = b
        .ctl
        .network("g")
        .unwrap()
        .create_endpoint("own", ep_opts())
        .await
        .unwrap();
    let late = g.create_endpoint("late", ep_opts()).await.unwrap();
    assert!(matches!(next(&mut w).await, FactEvent::Added(f) if f.endpoint_id == late.id()));
    early.delete().await.unwrap();
    match next(&mut w).await {
        FactEvent::Removed {
            endpoint_id, host, ..
        } => assert_eq!(
            (endpoint_id.as_str(), host.as_str()),
            (early.id(), host_a.as_str())
        ),
        other => panic!("{other:?}"),
    }
    own.delete().await.unwrap();
    late.delete().await.unwrap();
    assert!(
        matches!(next(&mut w).await, FactEvent::Removed { endpoint_id, .. } if endpoint_id == late.id())
    );
    assert!(facts_b.list(g.id()).await.unwrap().is_empty());
}

#[tokio::test]
async fn facts_live_under_the_hosts_lease_taken_again_when_lost_and_gone_when_it_dies() {
    let cluster = Arc::new(MemoryStore::cluster());
    let a = host_with_ttl(&cluster, Duration::from_millis(600)).await;
    let b = host(&cluster).await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    b.ctl.sync_cluster().await.unwrap();
    let ep = g.create_endpoint("e", ep_opts()).await.unwrap();
    let mut w = b.overlay.ctx.facts().unwrap().watch(g.id()).await.unwrap();
    assert!(matches!(next(&mut w).await, FactEvent::Added(f) if f.endpoint_id == ep.id()));

    // The lease lost while the host lives (expired, revoked): its fact goes, and comes back
    // under a new lease.
    let facts_a = a.overlay.ctx.facts().unwrap();
    let lease = facts_a
        .lease()
        .await
        .expect("a lease since the first publish");
    cluster.revoke_lease(lease).await.unwrap();
    assert!(
        matches!(next(&mut w).await, FactEvent::Removed { endpoint_id, .. } if endpoint_id == ep.id())
    );
    assert!(matches!(next(&mut w).await, FactEvent::Added(f) if f.endpoint_id == ep.id()));
    let renewed = facts_a.lease().await.unwrap();
    assert_ne!(renewed, lease);
    // Kept alive: still there after several TTLs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(facts_a.list(g.id()).await.unwrap().len(), 1);

    // The host dies (nothing renews its lease any more): within the TTL its fact is gone.
    drop((facts_a, ep, g));
    a.ctl.shutdown().await.unwrap();
    drop(a);
    let gone = tokio::time::Instant::now();
    assert!(matches!(next(&mut w).await, FactEvent::Removed { .. }));
    assert!(
        gone.elapsed() < Duration::from_secs(4),
        "{:?}",
        gone.elapsed()
    );
}

#[tokio::test]
async fn a_global_network_is_deleted_once_no_host_has_an_endpoint_in_it() {
    let (cluster, a, b) = cluster_pair().await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    b.ctl.sync_cluster().await.unwrap();
    let on_b = b
        .ctl
        .network("g")
        .unwrap()
        .create_endpoint("e", ep_opts())
        .await
        .unwrap();
    let e = g.delete().await.unwrap_err();
    assert!(matches!(e, CoreError::NetworkInUse { .. }), "{e}");
    let host_b = b.ctl.host_id().unwrap();
    assert!(
        e.to_string()
            .contains(&format!("10.0.0.2 on host {host_b}")),
        "{e}"
    );
    // The refused delete left the network usable on both.
    let on_a = g.create_endpoint("f", ep_opts()).await.unwrap();
    on_a.delete().await.unwrap();
    on_b.delete().await.unwrap();
    g.delete().await.unwrap();
    until(&b.ctl, "gone from B", || b.ctl.network("g").is_err()).await;
    assert!(
        b.overlay.created.lock().unwrap().is_empty(),
        "B's driver deleted it"
    );
    // Freed once: the VNI, the name and the subnet are free again.
    let left: Vec<String> = keys(&cluster, "").await;
    assert_eq!(left, ["network-subnets"], "{left:?}");
    let again = b.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    assert_eq!(again.ipv4()[0].pool.to_string(), "10.0.0.0/24");
    assert_eq!(again.allocation()["vni"], "4096");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn networks_created_at_once_on_two_hosts_take_distinct_subnets_and_vnis() {
    let (_cluster, a, b) = cluster_pair().await;
    let made = join_all((0..16).map(|i| {
        let ctl = if i % 2 == 0 {
            a.ctl.clone()
        } else {
            b.ctl.clone()
        };
        tokio::spawn(async move {
            ctl.new_network("overlay", &format!("n{i}"), overlay())
                .await
        })
    }))
    .await;
    let nets: Vec<_> = made.into_iter().map(|r| r.unwrap().unwrap()).collect();
    let subnets: BTreeSet<_> = nets.iter().map(|n| n.ipv4()[0].pool).collect();
    let vnis: BTreeSet<_> = nets.iter().map(|n| n.allocation()["vni"].clone()).collect();
    assert_eq!((subnets.len(), vnis.len()), (16, 16));
    for h in [&a, &b] {
        h.ctl.sync_cluster().await.unwrap();
        assert_eq!(h.ctl.networks().len(), 16);
    }
}

#[tokio::test]
async fn local_networks_never_touch_the_cluster_store() {
    let (cluster, a, _b) = cluster_pair().await;
    let before = cluster.list_with_revision("").await.unwrap();
    let net = a
        .ctl
        .new_network(
            "fake",
            "l",
            NetworkOptions::default().subnet("10.70.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    ep.join("c", []).await.unwrap();
    ep.leave("c").await.unwrap();
    ep.delete().await.unwrap();
    net.delete().await.unwrap();
    assert_eq!(cluster.list_with_revision("").await.unwrap(), before);
}

#[tokio::test]
async fn a_global_network_without_a_cluster_store_is_a_typed_error() {
    let w = super::World::new().await;
    let k = w.kernel.clone();
    let ctx_seen: Arc<OnceLock<DriverContext>> = Arc::default();
    let seen = ctx_seen.clone();
    w.ctl
        .register_driver("overlay", move |ctx| {
            seen.set(ctx.clone()).unwrap();
            Ok(Arc::new(
                FakeDriver::new("overlay", Some(k)).with_capability(Overlay::capability()),
            ))
        })
        .await
        .unwrap();
    let before = w.snapshot().await;
    let e = w
        .ctl
        .new_network("overlay", "g", overlay())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::NoClusterStore { ref network, ref driver } if network == "g" && driver == "overlay"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(w.snapshot().await, before, "nothing changed");
    assert!(w.ctl.network("g").is_err());
    // The driver's handles: its own prefix of the local store; no cluster store.
    let ctx = ctx_seen.get().unwrap();
    assert_eq!(ctx.driver_name(), "overlay");
    assert_eq!(
        ctx.store(Scope::Global).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(ctx.facts().unwrap_err().kind(), ErrorKind::Unsupported);
    let local = ctx.store(Scope::Local).unwrap();
    local.put("k", b"v".to_vec(), Expect::Absent).await.unwrap();
    assert!(w.store.get("driver/overlay/k").await.unwrap().is_some());
    assert!(local.get("../../network/x").await.unwrap().is_none());
}

/// A host whose cluster store was unreachable at start refuses global networks, saying so,
/// and once the store is attached works as if it had been there from the start.
#[tokio::test]
async fn a_cluster_store_attached_later_works_as_if_it_was_there_at_start() {
    let cluster = Arc::new(MemoryStore::cluster());
    let a = host(&cluster).await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    let late = host_built(None, DEFAULT_LEASE_TTL).await;
    let id_at_start = late.ctl.host_id().unwrap();
    let e = late
        .ctl
        .new_network("overlay", "h", overlay())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::ClusterStoreUnreachable { ref network, ref store, .. } if network == "h" && store == AWAITED),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("not reachable yet"), "{e}");
    assert!(late.ctl.network("g").is_err());
    assert!(!late.overlay.ctx.has_cluster_store());
    // Local networks work meanwhile.
    late.ctl
        .new_network("fake", "l", NetworkOptions::default())
        .await
        .unwrap();

    late.ctl
        .attach_cluster_store(cluster.clone())
        .await
        .unwrap();
    // The id kept from the start (already in the local store) is the cluster's.
    assert_eq!(late.ctl.host_id().unwrap(), id_at_start);
    assert_eq!(late.overlay.ctx.host_id(), id_at_start);
    // The cluster's networks are adopted at once, and followed from now on.
    let g_late = late.ctl.network("g").unwrap();
    assert_eq!(g_late.id(), g.id());
    let h = late
        .ctl
        .new_network("overlay", "h", overlay())
        .await
        .unwrap();
    until(&a.ctl, "h on host a", || a.ctl.network("h").is_ok()).await;
    assert_eq!(a.ctl.network("h").unwrap().id(), h.id());
    // Endpoints: addresses claimed cluster-wide, facts under the late host's own lease.
    let facts_a = a.overlay.ctx.facts().unwrap();
    let mut w = facts_a.watch(g.id()).await.unwrap();
    let on_late = g_late.create_endpoint("e1", ep_opts()).await.unwrap();
    let on_a = g.create_endpoint("e2", ep_opts()).await.unwrap();
    assert_ne!(on_late.ipv4(), on_a.ipv4());
    match next(&mut w).await {
        FactEvent::Added(f) => {
            assert_eq!(f.endpoint_id, on_late.id());
            assert_eq!(f.host, id_at_start);
        }
        other => panic!("{other:?}"),
    }
    // Once only.
    let again = late.ctl.attach_cluster_store(cluster.clone()).await;
    assert_eq!(again.unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn a_restarted_host_takes_its_global_networks_back_from_the_cluster() {
    let cluster = Arc::new(MemoryStore::cluster());
    let a = host(&cluster).await;
    let b = host(&cluster).await;
    let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
    let e1 = g.create_endpoint("e1", ep_opts()).await.unwrap();
    e1.join("c", []).await.unwrap();
    let (id, addr) = (g.id().to_owned(), e1.ipv4().unwrap());
    let host_a = a.ctl.host_id().unwrap();
    // A restarts (its stores and kernel kept).
    a.ctl.shutdown().await.unwrap();
    let Host {
        local,
        overlay: old,
        _run: run,
        ..
    } = a;
    drop(old);
    let kernel = FakeKernel::new().unwrap();
    kernel.put_file(std::path::Path::new(RESOLV), "nameserver 192.0.2.53\n");
    // The same store and run dir, a fresh overlay; the fake kernel of a new host, whose
    // sandbox namespace is gone: the sandbox record is dropped, the endpoint is free.
    let slot: Arc<OnceLock<Arc<Overlay>>> = Arc::default();
    let (s, k) = (slot.clone(), kernel.clone());
    let fake = Arc::new(FakeDriver::new("fake", Some(kernel.clone())));
    let ctl = builder(&kernel, &fake, &local, run.path())
        .cluster_store(cluster.clone())
        .driver("overlay", move |ctx| {
            let d = Arc::new(Overlay {
                fake: FakeDriver::new("overlay", Some(k)).with_capability(Overlay::capability()),
                ctx: ctx.clone(),
                created: Mutex::default(),
            });
            s.set(d.clone()).unwrap();
            Ok(d)
        })
        .build()
        .await
        .unwrap();
    assert_eq!(ctl.host_id().unwrap(), host_a, "the host id is kept");
    let g2 = ctl.network("g").unwrap();
    assert_eq!(g2.id(), id);
    let e1 = g2.endpoint("e1").unwrap();
    assert_eq!(e1.ipv4(), Some(addr));
    assert_eq!(
        slot.get()
            .unwrap()
            .created
            .lock()
            .unwrap()
            .get(&id)
            .map(|a| a["vni"].clone()),
        Some("4096".to_owned()),
        "restored with its allocation"
    );
    // Its address is still its own: a new endpoint on either host takes another.
    let e2 = g2.create_endpoint("e2", ep_opts()).await.unwrap();
    b.ctl.sync_cluster().await.unwrap();
    let e3 = b
        .ctl
        .network("g")
        .unwrap()
        .create_endpoint("e3", ep_opts())
        .await
        .unwrap();
    let addrs: BTreeSet<_> = [addr, e2.ipv4().unwrap(), e3.ipv4().unwrap()].into();
    assert_eq!(addrs.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_racing_address_claims_on_another_host_never_leaves_one_behind() {
    for round in 0..10 {
        let (cluster, a, b) = cluster_pair().await;
        let g = a.ctl.new_network("overlay", "g", overlay()).await.unwrap();
        b.ctl.sync_cluster().await.unwrap();
        let gb = b.ctl.network("g").unwrap();
        let creations: Vec<_> = (0..8)
            .map(|i| {
                let net = gb.clone();
                tokio::spawn(async move { net.create_endpoint(&format!("e{i}"), ep_opts()).await })
            })
            .collect();
        let deleted = tokio::spawn(async move { g.delete().await });
        let made: Vec<_> = join_all(creations)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .filter_map(Result::ok)
            .collect();
        let deleted = deleted.await.unwrap();
        let claims = keys(&cluster, "address/").await;
        match deleted {
            Ok(()) => {
                assert!(
                    made.is_empty(),
                    "round {round}: endpoints in a deleted network"
                );
                assert!(claims.is_empty(), "round {round}: {claims:?}");
            }
            Err(e) => {
                assert!(
                    matches!(e, CoreError::NetworkInUse { .. }),
                    "round {round}: {e}"
                );
                assert_eq!(claims.len(), made.len(), "round {round}");
                // The refused delete left it usable.
                gb.create_endpoint("after", ep_opts()).await.unwrap();
            }
        }
    }
}
