//! Commit and list latency of the embedded store on this machine.
//!
//! `cargo run --release -p cnm-store --example latency [STATE_DIR]` (default: a fresh temp dir;
//! pass a directory on the disk you care about, since fsync cost is the whole story).
#![allow(clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use cnm_core::store::{Expect, Store, Txn};
use cnm_store::RedbStore;

/// One line of statistics per measurement.
fn summary(name: &str, samples: Vec<Duration>) {
    common::summary(name, 28, [("median", 0.5), ("p95", 0.95)], samples);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let store = RedbStore::open(&dir)?;
    println!("database: {}", store.path().display());

    let mut single = Vec::with_capacity(1000);
    for i in 0..1000 {
        let t = Instant::now();
        store
            .put(
                &format!("bench/single/{i}"),
                vec![b'x'; 200],
                Expect::Absent,
            )
            .await?;
        single.push(t.elapsed());
    }
    summary("commit, 1 put", single);

    let mut three = Vec::with_capacity(1000);
    let mut version = store
        .put("bench/counter", b"0".to_vec(), Expect::Absent)
        .await?;
    for i in 0..1000 {
        let txn = Txn::new()
            .put_json("bench/counter", &i, Expect::Version(version))?
            .put_json(format!("bench/ep/{i}"), &"endpoint record", Expect::Absent)?
            .delete(format!("bench/single/{i}"), Expect::Any);
        let t = Instant::now();
        version = store.commit(txn).await?;
        three.push(t.elapsed());
    }
    summary("commit, 3-op txn", three);

    // 10k keys under one prefix, written in batches so the setup is quick.
    for batch in 0..10 {
        let mut txn = Txn::new();
        for i in 0..1000 {
            txn = txn.put_json(
                format!("bench/list/{:05}", batch * 1000 + i),
                &"v",
                Expect::Any,
            )?;
        }
        store.commit(txn).await?;
    }
    let mut lists = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let got = store.list("bench/list/").await?;
        lists.push(t.elapsed());
        assert_eq!(got.len(), 10_000);
    }
    summary("list 10k keys", lists);

    let mut gets = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        store.get(&format!("bench/ep/{i}")).await?;
        gets.push(t.elapsed());
    }
    summary("get 1 key", gets);

    // Concurrent commits: 8 tasks x 125 independent puts.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                s.put(&format!("bench/conc/{w}/{i}"), vec![0; 200], Expect::Absent)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    println!(
        "1000 commits from 8 tasks:   {elapsed:.3?} total, {:.0} commits/s",
        1000.0 / elapsed.as_secs_f64()
    );
    // The first phase runs on a fresh, small file; measure single puts again on the grown one.
    let mut again = Vec::with_capacity(1000);
    for i in 0..1000 {
        let t = Instant::now();
        store
            .put(&format!("bench/again/{i}"), vec![b'x'; 200], Expect::Absent)
            .await?;
        again.push(t.elapsed());
    }
    summary("commit, 1 put (grown file)", again);
    Ok(())
}
