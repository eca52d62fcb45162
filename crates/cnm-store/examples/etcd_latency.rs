//! Latency of the etcd store on this machine: what a put, a compare-and-swap allocation, a
//! leased block and a watch delivery cost. It informs issue 12's choice between "one
//! transaction per address" and "a block of addresses leased to the host".
//!
//! `cargo run -p cnm-store --example etcd_latency [etcd://HOST:PORT]`
//!
//! Without an address it starts its own etcd (Debian's etcd-server) in a throwaway network
//! namespace, which needs root; with one it uses that etcd, under the root `/cnm-bench/`.
#![allow(clippy::print_stdout)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cnm_core::store::{Expect, Store, Txn};
use cnm_store::{EtcdConfig, EtcdStore};
use cnm_testkit::etcd::EtcdServer;
use cnm_types::ErrorKind;

const N: usize = 300;
const BLOCK: usize = 64;
const CLIENTS: usize = 3;

/// One line of statistics per measurement.
fn summary(name: &str, samples: Vec<Duration>) {
    common::summary(name, 44, [("p50", 0.5), ("p99", 0.99)], samples);
}

fn main() -> Result<()> {
    match std::env::args().nth(1) {
        Some(endpoint) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(measure(endpoint)),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let etcd = EtcdServer::start_isolated()
                    .await
                    .context("starting a private etcd (pass etcd://HOST:PORT to use yours)")?;
                let endpoint = etcd.endpoint();
                println!("etcd: a private one at {endpoint} (own namespace, data in a temp dir)");
                etcd.run_client(move || measure(endpoint)).await
            }),
    }
}

async fn connect(endpoint: &str) -> Result<EtcdStore> {
    let config = EtcdConfig::new(endpoint.parse()?).root("/cnm-bench/")?;
    Ok(EtcdStore::connect(config).await?)
}

async fn measure(endpoint: String) -> Result<()> {
    let store = connect(&endpoint).await?;
    // Keys of this run stay apart from an earlier run's on a shared etcd.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let key = |what: &str, i: usize| format!("{run}/{what}/{i}");

    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        store
            .put(&key("put", i), vec![b'x'; 200], Expect::Absent)
            .await?;
        samples.push(t.elapsed());
    }
    summary("put, 1 key (create)", samples);

    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        store.get(&key("put", i)).await?;
        samples.push(t.elapsed());
    }
    summary("get, 1 key", samples);

    let t = Instant::now();
    let listed = store.list(&format!("{run}/put/")).await?.len();
    summary(&format!("list, {listed} keys"), vec![t.elapsed()]);

    // One transaction per address: move the allocation cursor by CAS and record the address,
    // as an uncontended host would.
    let counter = key("counter", 0);
    let mut version = store.put(&counter, b"0".to_vec(), Expect::Absent).await?;
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let txn = Txn::new()
            .put_json(&counter, &(i + 1), Expect::Version(version))?
            .put_json(key("addr", i), &"endpoint record", Expect::Absent)?;
        let t = Instant::now();
        version = store.commit(txn).await?;
        samples.push(t.elapsed());
    }
    summary("allocate 1 address, CAS txn (uncontended)", samples);

    // The same from three clients at once on one range: each allocation is a CAS on the
    // lowest free address, retried on conflict.
    let range = Arc::new(format!("{run}/range/"));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = connect(&endpoint).await?;
        let range = Arc::clone(&range);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut conflicts = 0u32;
            while samples.len() < N / CLIENTS {
                let t = Instant::now();
                loop {
                    let taken = client.list(&range).await?;
                    let free = taken.len(); // addresses are taken densely from 0
                    let txn =
                        Txn::new().put(format!("{range}{free:05}"), Vec::new(), Expect::Absent);
                    match client.commit(txn).await {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                        Err(e) => return Err(anyhow::Error::from(e)),
                    }
                }
                samples.push(t.elapsed());
            }
            anyhow::Ok((samples, conflicts))
        }));
    }
    let mut all = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (samples, c) = task.await??;
        all.extend(samples);
        conflicts += c;
    }
    let took = started.elapsed();
    let n = all.len();
    summary(
        &format!("allocate 1 address, {CLIENTS} clients contending"),
        all,
    );
    println!(
        "{:<44} {:.0} addresses/s, {conflicts} conflicts retried",
        "  throughput",
        n as f64 / took.as_secs_f64()
    );

    // A block leased to the host: one transaction per BLOCK addresses; the addresses inside
    // the block then cost no etcd round trip at all.
    let lease = store.grant_lease(Duration::from_secs(15)).await?;
    let mut samples = Vec::with_capacity(N / 10);
    for b in 0..N / 10 {
        let txn = Txn::new().put_json_leased(
            key("block", b),
            &format!("host-1 holds {BLOCK} addresses"),
            Expect::Absent,
            lease.id,
        )?;
        let t = Instant::now();
        store.commit(txn).await?;
        samples.push(t.elapsed());
    }
    let per_address: Vec<Duration> = samples.iter().map(|d| *d / BLOCK as u32).collect();
    summary(&format!("lease a block of {BLOCK} (1 txn)"), samples);
    summary("  amortised per address", per_address);
    store.revoke_lease(lease.id).await?;

    // Watch delivery: from the start of a put on one client to the event on another's watch.
    let watcher = connect(&endpoint).await?;
    let prefix = format!("{run}/watched/");
    let listing = watcher.list_with_revision(&prefix).await?;
    let mut watch = watcher.watch_from(&prefix, listing.revision)?;
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let t = Instant::now();
        store
            .put(&format!("{prefix}{i}"), Vec::new(), Expect::Absent)
            .await?;
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .context("no watch event within 5 s")?
            .context("watch ended")?;
        samples.push(t.elapsed());
        anyhow::ensure!(event.key().ends_with(&format!("/{i}")), "{event:?}");
    }
    summary("put → event on another client's watch", samples);
    Ok(())
}
