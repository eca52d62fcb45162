//! Measurements that need a process of their own (resident memory), and probing the CLI.
//!
//! The parent re-executes this binary with a hidden subcommand; the child builds what is
//! measured, prints one JSON object on stdout and exits. Its memory is then its own, not the
//! benchmark's.

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use cnm::{EndpointOptions, NetworkOptions, PortBinding};
use cnm_ipam::{AddressRequest, Ipam, IpamConfig, PoolRequest, parse_subnet};
use serde_json::{Map, Value, json};

use crate::env::rss_kib;

/// Runs `cnm-bench CHILD ARGS…` and returns the JSON object it printed.
pub async fn run_child(child: &str, args: &[&str]) -> Result<Map<String, Value>> {
    let exe = std::env::current_exe().context("failed to find the cnm-bench executable")?;
    let out = tokio::process::Command::new(exe)
        .arg(child)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("failed to run the {child} process"))?;
    if !out.status.success() {
        bail!(
            "{child} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let value: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{child} printed no JSON object"))?;
    match value {
        Value::Object(m) => Ok(m),
        other => bail!("{child} printed {other}, not an object"),
    }
}

fn mb(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Child: a controller with `count` endpoints, each joined to its own sandbox and publishing
/// one port; reports resident memory before and after.
pub async fn memory_child(count: u32) -> Result<Value> {
    let (baseline, _) = rss_kib()?;
    let host = cnm_testkit::TestHost::new().await?;
    let ctl = host.controller().await?;
    let net = ctl
        .new_network(
            "bridge",
            "memnet",
            NetworkOptions::default().subnet("10.90.0.0/16".parse()?),
        )
        .await?;
    let (empty, _) = rss_kib()?;
    let mut live = Vec::new();
    for i in 0..count {
        let name = format!("m{i}");
        let binding: PortBinding = format!("{}:80/tcp", 20000 + i).parse()?;
        let sb = ctl.new_sandbox(&name, []).await?;
        let ep = net
            .create_endpoint(&name, EndpointOptions::default().publish(binding))
            .await?;
        ep.join_sandbox(&sb, []).await?;
        live.push((sb, ep));
    }
    let (full, peak) = rss_kib()?;
    let endpoints = net.endpoints().len();
    // Take it down, so the kernel is quiet for what follows.
    for (sb, ep) in live {
        ep.leave_sandbox(&sb).await?;
        ep.delete().await?;
        sb.delete().await?;
    }
    net.delete().await?;
    Ok(json!({
        "rss_mb": mb(full),
        "peak_rss_mb": mb(peak),
        "baseline_rss_mb": mb(baseline),
        "controller_empty_rss_mb": mb(empty),
        "endpoints": endpoints,
        "published_ports": count,
    }))
}

/// Child: one IPv6 /64 pool with 1 M allocated addresses; resident memory before and after.
pub fn ipam_memory_child() -> Result<Value> {
    const COUNT: u32 = 1_000_000;
    let ipam = Ipam::new(IpamConfig::docker_defaults("bench"));
    let pool = ipam.request_pool(&PoolRequest::with_subnet(parse_subnet(
        "subnet",
        "fd00:b::/64",
    )?))?;
    let (before, _) = rss_kib()?;
    for _ in 0..COUNT {
        ipam.request_address(&pool.id, AddressRequest::Any)?;
    }
    let (after, peak) = rss_kib()?;
    let usage = ipam.usage(&pool.id)?;
    Ok(json!({
        "rss_mb": mb(after),
        "delta_mb": mb(after.saturating_sub(before)),
        "peak_rss_mb": mb(peak),
        "allocated": usage.allocated.to_string(),
        "runs": usage.runs,
    }))
}
