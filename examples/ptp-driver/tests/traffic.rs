//! The ptp driver carries traffic, registered both ways: linked (found through `inventory`) and
//! added while running (`Controller::register_driver`, then `ControllerBuilder::driver` across a
//! restart). Privileged: every test runs on a throwaway host namespace (cnm-testkit's TestHost).

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use cnm::{Controller, Endpoint, EndpointOptions, ErrorKind, NetworkOptions};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};
use ptp_driver::PtpDriver;

fn addr(ep: &Endpoint) -> Result<IpAddr> {
    Ok(IpAddr::V4(ep.ipv4().context("an IPv4 address")?.addr()))
}

/// The links of the host namespace whose name starts with `prefix`.
async fn host_ends(host: &TestHost, prefix: &str) -> Result<Vec<String>> {
    let links = host.netlink().links().await?;
    Ok(links
        .into_iter()
        .map(|l| l.name.to_string())
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Two containers on one ptp network: each reaches the other and the host reaches both.
async fn two_containers_talk(ctl: &Controller, driver: &str, net_name: &str) -> Result<()> {
    let subnet = "10.99.0.0/24".parse()?;
    let net = ctl
        .new_network(driver, net_name, NetworkOptions::default().subnet(subnet))
        .await?;
    let e1 = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    let c1 = e1.join("c1", []).await?;
    let c2 = e2.join("c2", []).await?;
    let server = TcpEchoServer::start(c2.netns(), addr(&e2)?, 7000).await?;
    probe::tcp(c1.netns(), addr(&e2)?, 7000).await?;
    let gateway = IpAddr::V4("10.99.0.1".parse()?);
    probe::icmp(c1.netns(), gateway).await?;
    drop(server);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn linked_through_inventory_it_carries_traffic_and_leaves_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    ensure!(
        ctl.drivers().contains(&"ptp".to_owned()),
        "{:?}",
        ctl.drivers()
    );
    two_containers_talk(&ctl, "ptp", "p1").await?;
    ensure!(host_ends(&host, "ptp").await?.len() == 2);

    // A bad option is refused naming the key and the value, and nothing is made.
    let bad = NetworkOptions::default().driver_option("ptp.prefix", "TOO-LONG");
    let err = ctl
        .new_network("ptp", "p2", bad)
        .await
        .expect_err("bad prefix");
    ensure!(err.kind() == ErrorKind::InvalidInput, "{err}");
    ensure!(err.to_string().contains("TOO-LONG"), "{err}");

    let net = ctl.network("p1")?;
    for sb in ctl.sandboxes() {
        sb.delete_with_endpoints().await?;
    }
    net.delete().await?;
    ensure!(
        host_ends(&host, "ptp").await?.is_empty(),
        "every host end went"
    );
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn registered_while_running_it_carries_traffic_and_is_adopted_after_a_restart() -> Result<()>
{
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    // Beside the linked `ptp`, under a name of its own, with its own host-end prefix.
    ctl.register_driver("p2p", |ctx| PtpDriver::named("p2p", ctx))
        .await?;
    let err = ctl
        .register_driver("p2p", |ctx| PtpDriver::named("p2p", ctx))
        .await
        .expect_err("a second driver of one name");
    ensure!(err.kind() == ErrorKind::AlreadyExists, "{err}");
    let opts = NetworkOptions::default()
        .subnet("10.98.0.0/24".parse()?)
        .driver_option("ptp.prefix", "pp");
    let net = ctl.new_network("p2p", "runtime", opts).await?;
    let e1 = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    let c1 = e1.join("c1", []).await?;
    let server = TcpEchoServer::start(c1.netns(), addr(&e1)?, 7001).await?;
    probe::tcp(host.netns(), addr(&e1)?, 7001).await?;
    ensure!(host_ends(&host, "pp").await?.len() == 1);

    // Restart: the driver found while running comes back through the builder; the network,
    // endpoint and sandbox are adopted and the running server still answers.
    ctl.shutdown().await?;
    let ctl = host
        .controller_builder()?
        .driver("p2p", |ctx| PtpDriver::named("p2p", ctx))
        .build()
        .await?;
    let net = ctl.network("runtime")?;
    ensure!(net.driver() == "p2p");
    let e1 = net.endpoint("e1")?;
    probe::tcp(host.netns(), addr(&e1)?, 7001).await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    let c2 = e2.join("c2", []).await?;
    probe::tcp(c2.netns(), addr(&e1)?, 7001).await?;
    drop(server);
    for sb in ctl.sandboxes() {
        sb.delete_with_endpoints().await?;
    }
    net.delete().await?;
    ensure!(host_ends(&host, "pp").await?.is_empty());
    ctl.shutdown().await?;
    Ok(())
}
