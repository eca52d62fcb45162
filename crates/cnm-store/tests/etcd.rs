//! The etcd store against a real etcd (Debian's etcd-server), each test with its own etcd in a
//! namespace it created: outages, partitions, compaction, key roots, leases lost, and
//! concurrent allocation from several clients. The behaviour every store shares is in
//! `behaviour.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_core::store::{Expect, LeaseKeeper, LeaseLost, Store, StoreError, Txn, Watch, WatchEvent};
use cnm_sandbox::Netlink;
use cnm_store::{DEFAULT_CONNECT_TIMEOUT, EtcdConfig, EtcdStore, EtcdStoreError};
use cnm_testkit::TestHost;
use cnm_testkit::etcd::{EtcdServer, run_in};
use cnm_types::ErrorKind;
use tokio::sync::{mpsc, oneshot};

/// Short request timeout: requests during an outage fail fast.
fn config(endpoint: &str) -> Result<EtcdConfig> {
    Ok(EtcdConfig::new(endpoint.parse()?).request_timeout(Duration::from_secs(1))?)
}

async fn next_within(w: &mut Watch, within: Duration, what: &str) -> Result<WatchEvent> {
    tokio::time::timeout(within, w.next())
        .await
        .with_context(|| format!("no watch event within {within:?} ({what})"))?
        .with_context(|| format!("watch ended ({what})"))
}

/// Retries `op` until it succeeds, for at most `within`: a client's first request after an etcd
/// restart may still find the old connection broken. Returns the result and the failures seen.
async fn until_ok<T, F, Fut>(within: Duration, mut op: F) -> Result<(T, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    let mut failures = 0;
    loop {
        match op().await {
            Ok(v) => return Ok((v, failures)),
            Err(e) if e.kind() == ErrorKind::Unavailable && started.elapsed() < within => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context(format!("still failing after {within:?}")),
        }
    }
}

#[tokio::test]
async fn unreachable_etcd_at_start_is_a_clear_error_quickly() -> Result<()> {
    // On loopback only: a port nobody listens on (refused at once) and a listener that accepts
    // connections but never speaks (the client would wait forever without a bound).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent = silent.local_addr()?;
    for address in [
        format!("etcd://{closed}"),
        format!("etcd://{silent}"),
        format!("etcd://{closed},{silent}"),
    ] {
        let started = Instant::now();
        let e = EtcdStore::connect(EtcdConfig::new(address.parse()?))
            .await
            .expect_err("nobody answers");
        let took = started.elapsed();
        ensure!(
            took < DEFAULT_CONNECT_TIMEOUT + Duration::from_secs(1),
            "{address}: took {took:?}"
        );
        assert!(
            matches!(e, EtcdStoreError::Unreachable { .. }),
            "{address}: {e:?}"
        );
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let text = e.to_string();
        assert!(
            text.contains(&address) && text.contains("unreachable"),
            "{text}"
        );
        report(&format!("{address}: refused after {took:?}: {text}"));
    }
    Ok(())
}

/// etcd is killed mid-run and started again: writes fail during the outage, a second client
/// writes right after the restart while the first one's watch is still reconnecting, and the
/// watch delivers every change once, in order.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn watch_resumes_across_an_etcd_restart_without_loss_or_duplicates() -> Result<()> {
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let config = config(&server.endpoint())?;
        let a = EtcdStore::connect(config.clone()).await?;
        let listing = a.list_with_revision("ep/").await?;
        let mut w = a.watch_from("ep/", listing.revision)?;
        let within = Duration::from_secs(10);
        for i in 0..5 {
            let rev = a
                .put(&format!("ep/{i}"), Vec::new(), Expect::Absent)
                .await?;
            assert_eq!(next_within(&mut w, within, "before").await?.revision(), rev);
        }

        server.kill().await?;
        let started = Instant::now();
        let e = a
            .put("ep/during", Vec::new(), Expect::Absent)
            .await
            .expect_err("etcd is down");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().contains(&server.endpoint()), "{e}");

        server.start_again().await?;
        let b = EtcdStore::connect(config).await?;
        let mut written = Vec::new();
        for i in 5..10 {
            let key = format!("ep/{i}");
            written.push((key.clone(), b.put(&key, Vec::new(), Expect::Absent).await?));
        }
        let (rev, failures) =
            until_ok(within, || a.put("ep/10", Vec::new(), Expect::Absent)).await?;
        written.push(("ep/10".to_owned(), rev));
        written.push((
            "ep/end".to_owned(),
            b.put("ep/end", Vec::new(), Expect::Absent).await?,
        ));
        let mut seen = Vec::new();
        while seen.len() < written.len() {
            let e = next_within(&mut w, within, "after the restart").await?;
            seen.push((e.key().to_owned(), e.revision()));
        }
        assert_eq!(seen, written, "every change once, in order");
        assert!(a.get("ep/during").await?.is_none());
        report(&format!(
            "etcd restart: first client's requests failed {failures} times before it reconnected"
        ));
        Ok(())
    })
    .await
}

/// The watcher is cut off from etcd (its link down) for longer than the client's keep-alive
/// timeout while another client writes; once the link is back the watch delivers those writes,
/// once each.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn watch_resumes_after_a_partition_with_writes_during_it() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let etcd = EtcdServer::start(host.netns(), outside.host_addr_v4()).await?;
    let endpoint = etcd.endpoint();
    let link = outside.host_ifindex();

    // The watcher lives outside, across the veth; the writer in the host, beside etcd.
    let (events_tx, mut events) = mpsc::unbounded_channel::<WatchEvent>();
    let (listed_tx, listed) = oneshot::channel::<u64>();
    let outside_ns = outside.netns().clone();
    let watcher_endpoint = endpoint.clone();
    let watcher = tokio::spawn(async move {
        run_in(&outside_ns, move || async move {
            let store = EtcdStore::connect(config(&watcher_endpoint)?).await?;
            let listing = store.list_with_revision("p/").await?;
            let mut w = store.watch_from("p/", listing.revision)?;
            let _ = listed_tx.send(listing.revision);
            loop {
                let e = next_within(&mut w, Duration::from_secs(60), "watcher").await?;
                let end = e.key() == "p/end";
                events_tx.send(e)?;
                if end {
                    return Ok(());
                }
            }
        })
        .await
    });

    let host_ns = host.netns().clone();
    run_in(&host_ns.clone(), move || async move {
        let netlink = Netlink::connect(&host_ns).await?;
        let store = EtcdStore::connect(config(&endpoint)?).await?;
        listed.await.context("the watcher never listed")?;
        let within = Duration::from_secs(10);
        for i in 0..3 {
            let rev = store
                .put(&format!("p/{i}"), Vec::new(), Expect::Absent)
                .await?;
            let e = tokio::time::timeout(within, events.recv())
                .await?
                .context("watcher")?;
            assert_eq!(e.revision(), rev);
        }
        netlink.set_down(link).await?;
        let mut written = Vec::new();
        for i in 3..6 {
            let key = format!("p/{i}");
            written.push((
                key.clone(),
                store.put(&key, Vec::new(), Expect::Absent).await?,
            ));
        }
        // Not synchronisation but the outage itself: longer than the client's HTTP/2 keep-alive
        // interval and timeout (2 s + 2 s), so its connection is declared dead and the watch is
        // re-created rather than merely carried on by TCP retransmission.
        tokio::time::sleep(Duration::from_secs(5)).await;
        netlink.set_up(link).await?;
        written.push((
            "p/end".to_owned(),
            store.put("p/end", Vec::new(), Expect::Absent).await?,
        ));
        let mut seen = Vec::new();
        while seen.len() < written.len() {
            let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .context("no event after the link came back")?
                .context("watcher gone")?;
            seen.push((e.key().to_owned(), e.revision()));
        }
        assert_eq!(seen, written, "every change once, in order");
        anyhow::Ok(())
    })
    .await?;
    watcher.await.context("watcher task")??;
    Ok(())
}

/// A watch from a revision etcd has compacted away says "resync" and ends; the listing it asks
/// for is then enough to carry on.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn compacted_history_is_a_resync() -> Result<()> {
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let s = EtcdStore::connect(config(&server.endpoint())?).await?;
        let r1 = s.put("n/a", b"1".to_vec(), Expect::Absent).await?;
        s.put("n/a", b"2".to_vec(), Expect::Version(r1)).await?;
        let r3 = s.put("n/b", Vec::new(), Expect::Absent).await?;
        server.etcdctl(&["compact", &r3.to_string()]).await?;
        let mut w = s.watch_from("n/", r1)?;
        let within = Duration::from_secs(10);
        assert_eq!(
            next_within(&mut w, within, "resync").await?,
            WatchEvent::Resync { compacted: r3 }
        );
        assert_eq!(w.next().await, None, "a resync ends the watch");
        // Start again as the event says: list, then watch from the listing.
        let listing = s.list_with_revision("n/").await?;
        assert_eq!(listing.entries.len(), 2);
        let mut w = s.watch_from("n/", listing.revision)?;
        let r4 = s.put("n/c", Vec::new(), Expect::Absent).await?;
        assert_eq!(
            next_within(&mut w, within, "after resync")
                .await?
                .revision(),
            r4
        );
        Ok(())
    })
    .await
}

/// Each store keeps its keys under its root: two clusters share one etcd without seeing each
/// other, and the keys are where an operator would look for them.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn roots_keep_clusters_apart() -> Result<()> {
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let base = config(&server.endpoint())?;
        let default = EtcdStore::connect(base.clone()).await?;
        let a = EtcdStore::connect(base.clone().root("/cluster-a/cnm/")?).await?;
        let b = EtcdStore::connect(base.root("/cluster-b/cnm/")?).await?;
        assert!(a.is_cluster());
        let mut wb = b.watch("")?;
        default
            .put("network/n", b"d".to_vec(), Expect::Absent)
            .await?;
        a.put("network/n", b"a".to_vec(), Expect::Absent).await?;
        // The same key in another root is another key.
        b.put("network/n", b"b".to_vec(), Expect::Absent).await?;
        assert_eq!(a.get("network/n").await?.context("a")?.value, b"a");
        assert_eq!(a.list("").await?.len(), 1);
        let e = next_within(&mut wb, Duration::from_secs(10), "b's own write").await?;
        assert_eq!(e.key(), "network/n");
        assert!(matches!(&e, WatchEvent::Put { value, .. } if value.value == b"b"));
        let keys = server
            .etcdctl(&["get", "--prefix", "--keys-only", "/"])
            .await?;
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            keys,
            [
                "/cluster-a/cnm/network/n",
                "/cluster-b/cnm/network/n",
                "/cnm/network/n"
            ]
        );
        Ok(())
    })
    .await
}

/// Three clients (three connections) take 45 addresses from one range at once, each by a
/// compare-and-swap transaction on the lowest address it believes free: every address is
/// handed out once, and each client holds exactly what the store says it holds.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn concurrent_allocations_from_three_clients_never_duplicate() -> Result<()> {
    const CLIENTS: usize = 3;
    const EACH: usize = 15;
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let store = EtcdStore::connect(config(&server.endpoint())?).await?;
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut conflicts = 0u32;
                while mine.len() < EACH {
                    let taken = store.list("range/10.0.0.0-26/").await?;
                    let free = (1..64u32)
                        .find(|i| !taken.iter().any(|(k, _)| k.ends_with(&format!("/{i:02}"))))
                        .context("range exhausted")?;
                    let txn = Txn::new().put(
                        format!("range/10.0.0.0-26/{free:02}"),
                        format!("client-{client}").into_bytes(),
                        Expect::Absent,
                    );
                    match store.commit(txn).await {
                        Ok(_) => mine.push(free),
                        Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                }
                anyhow::Ok((client, mine, conflicts))
            }));
        }
        let mut holders: BTreeMap<u32, usize> = BTreeMap::new();
        let mut conflicts = 0;
        for task in tasks {
            let (client, mine, c) = task.await??;
            conflicts += c;
            for addr in mine {
                if let Some(other) = holders.insert(addr, client) {
                    bail!("address {addr} handed to client {other} and client {client}");
                }
            }
        }
        assert_eq!(holders.len(), CLIENTS * EACH);
        let check = EtcdStore::connect(config(&server.endpoint())?).await?;
        let stored = check.list("range/10.0.0.0-26/").await?;
        assert_eq!(stored.len(), CLIENTS * EACH);
        for (key, v) in &stored {
            let addr: u32 = key.rsplit('/').next().context("key")?.parse()?;
            assert_eq!(
                v.value,
                format!("client-{}", holders[&addr]).into_bytes(),
                "{key}"
            );
        }
        report(&format!(
            "{} allocations from {CLIENTS} clients, {conflicts} CAS conflicts retried, 0 duplicates",
            CLIENTS * EACH
        ));
        Ok(())
    })
    .await
}

/// A kept lease that someone revokes is reported lost (typed, at once), and so is one whose
/// keep-alives cannot reach etcd for a whole TTL.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn lease_keeper_reports_a_lost_lease() -> Result<()> {
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let s: Arc<dyn Store> = Arc::new(EtcdStore::connect(config(&server.endpoint())?).await?);
        let lease = s.grant_lease(Duration::from_secs(2)).await?;
        s.put_leased("host/1", Vec::new(), Expect::Absent, lease.id)
            .await?;
        let mut keeper = LeaseKeeper::spawn(Arc::clone(&s), lease);
        // Revoked by another client (an operator, or the host's successor).
        server
            .etcdctl(&["lease", "revoke", &lease.id.to_string()])
            .await?;
        let lost = tokio::time::timeout(lease.ttl * 2, keeper.lost())
            .await
            .context("revocation not noticed")?;
        assert_eq!(lost, LeaseLost::Expired { lease: lease.id });
        assert!(s.get("host/1").await?.is_none());

        let lease = s.grant_lease(Duration::from_secs(2)).await?;
        let mut keeper = LeaseKeeper::spawn(Arc::clone(&s), lease);
        server.kill().await?;
        let started = Instant::now();
        let lost = tokio::time::timeout(lease.ttl * 3, keeper.lost())
            .await
            .context("unreachable etcd not noticed")?;
        assert!(
            matches!(lost, LeaseLost::NotRenewed { lease: l, .. } if l == lease.id),
            "{lost:?}"
        );
        assert_eq!(lost.kind(), ErrorKind::Unavailable);
        ensure!(
            started.elapsed() <= lease.ttl + Duration::from_secs(2),
            "noticed after {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await
}

/// A cluster-store address naming a dead member beside a live one still connects and works.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_dead_endpoint_beside_a_live_one_is_tolerated() -> Result<()> {
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        // Port 1 on etcd's own loopback: nobody listens there.
        let address = format!("etcd://127.0.0.1:1,{}", server.client_addr());
        let s = EtcdStore::connect(config(&address)?).await?;
        for i in 0..20 {
            s.put(&format!("k/{i}"), Vec::new(), Expect::Absent).await?;
        }
        assert_eq!(s.list("k/").await?.len(), 20);
        Ok(())
    })
    .await
}

/// Listing pages through etcd ([`cnm_store::LIST_PAGE`] keys a page) and returns every key, in
/// order, at one revision; a transaction larger than etcd takes is refused before it is sent.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn listing_pages_through_thousands_of_keys() -> Result<()> {
    const KEYS: usize = 2 * cnm_store::LIST_PAGE as usize + 345;
    let etcd = Arc::new(EtcdServer::start_isolated().await?);
    let server = Arc::clone(&etcd);
    etcd.run_client(move || async move {
        let s = EtcdStore::connect(config(&server.endpoint())?).await?;
        let mut last = 0;
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
            let txn = chunk.iter().fold(Txn::new(), |txn, i| {
                txn.put(
                    format!("many/{i:05}"),
                    i.to_string().into_bytes(),
                    Expect::Absent,
                )
            });
            last = s.commit(txn).await?;
        }
        s.put("manyx", Vec::new(), Expect::Absent).await?;
        let listing = s.list_with_revision("many/").await?;
        assert_eq!(listing.entries.len(), KEYS);
        assert_eq!(listing.revision, last + 1);
        for (i, (key, v)) in listing.entries.iter().enumerate() {
            assert_eq!(key, &format!("many/{i:05}"));
            assert_eq!(v.value, i.to_string().into_bytes());
        }
        let too_big = (0..=cnm_store::MAX_TXN_OPS).fold(Txn::new(), |txn, i| {
            txn.put(format!("big/{i}"), Vec::new(), Expect::Any)
        });
        let e = s.commit(too_big).await.expect_err("too many operations");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("129 operations"), "{e}");
        assert!(s.list("big/").await?.is_empty());
        Ok(())
    })
    .await
}

#[allow(clippy::print_stderr)]
fn report(line: &str) {
    eprintln!("{line}");
}

/// Global scope through etcd: two controllers (each on a fake kernel, with its own in-memory
/// store) share one etcd as their cluster store. A global network created on one is seen by
/// the other, its name is the cluster's, 32 endpoints created at once on each host never share
/// an address, and once deleted nothing of it is left in etcd but the empty subnet index.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn global_addresses_allocated_through_etcd_never_collide() -> Result<()> {
    use cnm_core::spi::{Capability, Scope};
    use cnm_core::store::MemoryStore;
    use cnm_core::testing::{FakeDriver, FakeKernel};
    use cnm_core::{Controller, CoreError, EndpointOptions, NetworkOptions};

    let etcd = EtcdServer::start_isolated().await?;
    let endpoint = etcd.endpoint();
    etcd.run_client(move || async move {
        let cluster: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(EtcdConfig::new(endpoint.parse()?)).await?);
        let resolv = std::path::Path::new("/fake/etc/resolv.conf");
        let mut hosts = Vec::new();
        for _ in 0..2 {
            let kernel = FakeKernel::new()?;
            kernel.put_file(resolv, "nameserver 192.0.2.53\n");
            let run = tempfile::tempdir()?;
            let k = kernel.clone();
            let ctl = Controller::builder()
                .kernel(kernel)
                .store(Arc::new(MemoryStore::new()))
                .cluster_store(cluster.clone())
                .run_dir(run.path().join("run"))
                .state_dir(run.path().join("state"))
                .resolv_conf(resolv)
                .builtin_drivers(false)
                .driver("overlay", move |_| {
                    let capability = Capability::local()
                        .with_scope(Scope::Global)
                        .with_host_routes(false);
                    Ok(Arc::new(
                        FakeDriver::new("overlay", Some(k)).with_capability(capability),
                    ))
                })
                .build()
                .await?;
            hosts.push((ctl, run));
        }
        let (a, b) = (hosts[0].0.clone(), hosts[1].0.clone());
        let g = a
            .new_network("overlay", "g", NetworkOptions::default())
            .await?;
        b.sync_cluster().await?;
        let gb = b.network("g")?;
        ensure!(
            gb.id() == g.id() && gb.ipv4() == g.ipv4(),
            "one network on both"
        );
        let e = b
            .new_network("overlay", "g", NetworkOptions::default())
            .await
            .expect_err("the name is the cluster's");
        ensure!(matches!(e, CoreError::NetworkExists(_)), "{e}");

        let mut tasks = Vec::new();
        for i in 0..32 {
            for (net, host) in [(g.clone(), "a"), (gb.clone(), "b")] {
                tasks.push(tokio::spawn(async move {
                    net.create_endpoint(&format!("{host}{i}"), EndpointOptions::default())
                        .await
                }));
            }
        }
        let mut eps = Vec::new();
        for t in tasks {
            eps.push(t.await??);
        }
        let addrs: std::collections::BTreeSet<_> = eps.iter().filter_map(|e| e.ipv4()).collect();
        ensure!(
            addrs.len() == 64,
            "{} distinct addresses of 64",
            addrs.len()
        );
        let claims = cluster.list(&format!("address/{}/", g.id())).await?;
        ensure!(claims.len() == 64, "{} claims in etcd", claims.len());

        for e in eps {
            e.delete().await?;
        }
        g.delete().await?;
        b.sync_cluster().await?;
        ensure!(b.network("g").is_err(), "gone from the other host");
        let left: Vec<String> = cluster.list("").await?.into_iter().map(|e| e.0).collect();
        ensure!(left == ["network-subnets"], "left in etcd: {left:?}");
        for (ctl, _) in &hosts {
            ctl.shutdown().await?;
        }
        Ok(())
    })
    .await
}
