//! Attach (create endpoint + join + publish one TCP port) and detach (leave + delete), median of
//! 100, and the firewall transactions each costs. Run with `-- --ignored --nocapture timing`.

#![allow(clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cnm_core::EndpointOptions;
use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn timing_attach_detach_median_of_100() -> Result<()> {
    let w = World::new().await?;
    let fw = w.driver();
    let t0 = fw.firewall_transactions().await?;
    let n = w.net4("bench", "10.60.0.0/16").await?;
    let t_net = fw.firewall_transactions().await? - t0;
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    let (mut tx_attach, mut tx_detach) = (0, 0);
    for i in 0..100u16 {
        let name = format!("c{i}");
        let before = fw.firewall_transactions().await?;
        let start = Instant::now();
        let ep = n
            .create_endpoint(
                &name,
                EndpointOptions::default().publish(p(&format!("{}:80", 21000 + i))),
            )
            .await?;
        ep.join(&name, []).await?;
        attach.push(start.elapsed());
        let mid = fw.firewall_transactions().await?;
        let start = Instant::now();
        ep.leave(&name).await?;
        ep.delete().await?;
        detach.push(start.elapsed());
        let after = fw.firewall_transactions().await?;
        tx_attach = mid - before;
        tx_detach = after - mid;
    }
    println!(
        "bridge attach median {:?}, detach median {:?} (100 runs); firewall transactions: create network {t_net}, attach {tx_attach}, detach {tx_detach}",
        median(attach),
        median(detach)
    );
    ensure!(tx_attach >= 1);
    Ok(())
}
