//! An overlay network on a host that was not forwarding before cnm, with br_netfilter active
//! (Docker loads it; every namespace then starts with `bridge-nf-call-iptables=1`): frames
//! bridged through the overlay's bridge meet the host's forward hook, where cnm drops forwarded
//! traffic of interfaces it does not claim (it turned forwarding on, so it must not make the
//! host an open router). The overlay claims its bridge: traffic passes, again after someone
//! flushes the ruleset. Real etcd in the test host, real packets between two sandboxes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cnm::cnm_store::{EtcdConfig, EtcdStore};
use cnm::{EndpointOptions, NetworkOptions};
use cnm_sandbox::NetNs;
use cnm_testkit::etcd::{EtcdServer, run_in};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};

/// Retries TCP and ICMP from `from` to `addr` (at most `within`) until both pass.
async fn reaches(from: &NetNs, addr: IpAddr, port: u16, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let tcp = probe::tcp(from, addr, port).await;
        let icmp = probe::icmp(from, addr).await;
        match (tcp, icmp) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err(e), _) | (_, Err(e)) if start.elapsed() > within => {
                return Err(e).context(format!("{addr} not reached within {within:?}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn sysctl(ns: &NetNs, key: &'static str) -> impl Future<Output = Result<String>> {
    let ns = ns.clone();
    async move {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        Ok(ns
            .run(move || std::fs::read_to_string(path))
            .await??
            .trim()
            .to_owned())
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn overlay_traffic_passes_with_br_netfilter_on_a_host_cnm_made_forward() -> Result<()> {
    ensure!(
        std::path::Path::new("/proc/sys/net/bridge").exists(),
        "this test needs the br_netfilter module loaded (modprobe br_netfilter): without it \
         bridged frames never meet the forward hook it is about"
    );
    let host = TestHost::with_forwarding(false).await?;
    cnm_sandbox::set_sysctls(
        host.netns(),
        &[
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.bridge.bridge-nf-call-ip6tables", "1"),
        ],
    )
    .await?;
    let outside = host.outside().await?;
    let vtep = outside.host_addr_v4();
    let etcd = EtcdServer::start(host.netns(), vtep).await?;
    let endpoint = etcd.endpoint();
    let builder = host.controller_builder()?;
    let hostns = host.netns().clone();
    run_in(&host.netns().clone(), move || async move {
        let store = EtcdStore::connect(EtcdConfig::new(endpoint.parse()?)).await?;
        let gw_opts = NetworkOptions::default()
            .driver_option("com.docker.network.bridge.name", "cnm_gwbridge")
            .driver_option("com.docker.network.bridge.enable_icc", "false")
            .driver_option("com.docker.network.bridge.enable_ip_masquerade", "true");
        let ctl = builder
            .cluster_store(Arc::new(store))
            .advertise_addr(vtep)
            .gateway_network("cnm_gwbridge", "bridge", gw_opts)
            .build()
            .await?;
        let net = ctl
            .new_network(
                "overlay",
                "ov",
                NetworkOptions::default().subnet("10.79.0.0/24".parse()?),
            )
            .await?;
        let (a, b) = (
            ctl.new_sandbox("a", []).await?,
            ctl.new_sandbox("b", []).await?,
        );
        net.connect("a", &a, EndpointOptions::default(), []).await?;
        let eb = net.connect("b", &b, EndpointOptions::default(), []).await?;
        let (a_ns, b_ns) = (NetNs::open(a.key())?, NetNs::open(b.key())?);
        let b_ip = IpAddr::V4(eb.ipv4().context("b has an IPv4 address")?.addr());
        let _server = TcpEchoServer::start(&b_ns, Ipv4Addr::UNSPECIFIED.into(), 7000).await?;

        // The conditions this is about: cnm turned forwarding on (for the gateway network),
        // and bridged IPv4 frames go through the host's iptables/nftables hooks.
        ensure!(sysctl(&hostns, "net.ipv4.ip_forward").await? == "1");
        ensure!(sysctl(&hostns, "net.bridge.bridge-nf-call-iptables").await? == "1");

        let within = Duration::from_secs(10);
        reaches(&a_ns, b_ip, 7000, within).await?;

        // Someone flushes the ruleset: cnm restores it, the claim with it, and the overlay
        // still carries traffic.
        let out = hostns
            .run(|| {
                std::process::Command::new("nft")
                    .args(["flush", "ruleset"])
                    .output()
            })
            .await??;
        ensure!(out.status.success(), "nft flush ruleset: {out:?}");
        reaches(&a_ns, b_ip, 7000, within)
            .await
            .context("after nft flush ruleset")?;
        ctl.shutdown().await?;
        Ok(())
    })
    .await?;
    drop(etcd);
    Ok(())
}
