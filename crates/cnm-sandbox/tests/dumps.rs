//! Dumps on one shared netlink handle, concurrently: the kernel runs one dump per socket at a
//! time and refuses a second with EBUSY, so the handle must queue them. A controller's host
//! handle is shared by every operation (a network create lists the host's links, addresses and
//! routes while another lists them too).

use anyhow::{Context, Result, ensure};
use cnm_sandbox::{IpFamily, NetNs, Netlink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn concurrent_dumps_on_one_handle_all_succeed() -> Result<()> {
    let ns = NetNs::create_anonymous()
        .await
        .context("create a namespace (needs root)")?;
    let nl = Netlink::connect(&ns).await?;
    nl.loopback_up().await?;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let nl = nl.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => nl.links().await.map(|v| v.len()),
                1 => nl.addresses(None).await.map(|v| v.len()),
                2 => nl.routes(IpFamily::V4).await.map(|v| v.len()),
                _ => nl.routes(IpFamily::V6).await.map(|v| v.len()),
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await? {
            failures.push(e.to_string());
        }
    }
    ensure!(failures.is_empty(), "dumps failed: {failures:?}");
    // Still one coherent answer afterwards.
    ensure!(nl.links().await?.iter().any(|l| l.name == "lo"));
    Ok(())
}
