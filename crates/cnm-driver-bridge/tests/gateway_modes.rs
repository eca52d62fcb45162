//! Docker 28's gateway modes `nat-unprotected` and `isolated`, proven with packets between a
//! LAN peer routing to the containers' subnets through the host, the outside and containers.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cnm_core::{EndpointOptions, NetworkOptions};
use cnm_sandbox::IpFamily;
use cnm_testkit::probe;
use cnm_testkit::server::TcpEchoServer;
use common::*;

const ANY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn nat_unprotected_lets_a_routing_peer_reach_unpublished_ports_nat_does_not() -> Result<()> {
    let w = World::new().await?;
    // a peer whose default route is the host: it routes to the container subnets directly
    let lan = w.host.lan(1).await?;
    let nat = w.net4("nat", "10.36.0.0/24").await?;
    let opts = NetworkOptions::default()
        .subnet("10.37.0.0/24".parse()?)
        .driver_option(MODE_V4, "nat-unprotected");
    let unprotected = w.net("unprotected", opts).await?;
    let c_nat = w.run(&nat, "c-nat", EndpointOptions::default()).await?;
    let c_open = w
        .run(&unprotected, "c-open", EndpointOptions::default())
        .await?;
    let _s1 = TcpEchoServer::start(c_nat.ns(), ANY4, 80).await?;
    let _s2 = TcpEchoServer::start(c_open.ns(), ANY4, 80).await?;
    let check = || async {
        // nothing is published on either network
        probe::tcp(lan.netns(), c_open.v4(), 80)
            .await
            .context("nat-unprotected: the peer must reach an unpublished port directly")?;
        ensure!(
            probe::tcp(lan.netns(), c_nat.v4(), 80).await.is_err(),
            "nat: direct access to a container's address from outside must be dropped"
        );
        anyhow::Ok(())
    };
    check().await?;
    // outbound is still masqueraded behind the host's outside address
    let out = w.host.outside().await?;
    let echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7003).await?;
    probe::tcp(c_open.ns(), out.addr_v4(), 7003).await?;
    ensure!(
        echo.peers().iter().all(|p| p.ip() == out.host_addr_v4()),
        "peers {:?}",
        echo.peers()
    );
    // the firewall heals itself after a flush of the whole ruleset: the same again
    let fw = w.driver().firewall_for_tests().await?;
    let mut healing = fw.healing();
    let before = healing.borrow_and_update().restores;
    w.host_cmd(&["nft", "flush", "ruleset"]).await?;
    tokio::time::timeout(
        Duration::from_secs(2),
        healing.wait_for(|h| h.restores > before),
    )
    .await
    .context("no restore after the flush")??;
    check().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn isolated_has_no_gateway_address_and_no_route_out() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let _echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7004).await?;
    let opts = NetworkOptions::default()
        .subnet("10.38.0.0/24".parse()?)
        .driver_option("com.docker.network.bridge.name", "br-iso")
        .driver_option(MODE_V4, "isolated");
    let n = w.net("iso", opts).await?;
    let c1 = w.run(&n, "c1", EndpointOptions::default()).await?;
    let c2 = w.run(&n, "c2", EndpointOptions::default()).await?;
    let _s2 = TcpEchoServer::start(c2.ns(), ANY4, 80).await?;
    // the bridge has no IPv4 address at all
    let br = w
        .host
        .netlink()
        .link("br-iso")
        .await?
        .context("the bridge exists")?;
    let on_bridge: Vec<_> = w
        .host
        .netlink()
        .addresses(Some(br.index))
        .await?
        .into_iter()
        .filter(|a| a.addr.addr().is_ipv4())
        .collect();
    ensure!(
        on_bridge.is_empty(),
        "isolated: bridge addresses {on_bridge:?}"
    );
    // the containers have no default route, and reach each other but nothing else
    let routes = c1.sb.netlink().routes(IpFamily::V4).await?;
    ensure!(
        routes.iter().all(|r| r.destination.prefix_len() != 0),
        "isolated: no default route: {routes:?}"
    );
    probe::tcp(c1.ns(), c2.v4(), 80).await?;
    ensure!(
        probe::tcp(c1.ns(), out.addr_v4(), 7004).await.is_err(),
        "isolated: the outside must be out of reach"
    );
    ensure!(
        probe::icmp(c1.ns(), "10.38.0.1".parse()?).await.is_err(),
        "isolated: nothing answers at the gateway address"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn a_trusted_host_interface_reaches_published_ports_directly_others_do_not() -> Result<()> {
    let w = World::new().await?;
    // two peers routing to the container subnet through the host, on cnm-lan1 and cnm-lan2
    let trusted = w.host.lan(1).await?;
    let other = w.host.lan(2).await?;
    let opts = NetworkOptions::default()
        .subnet("10.39.0.0/24".parse()?)
        .driver_option(
            "com.docker.network.bridge.trusted_host_interfaces",
            "cnm-lan1:eth9",
        );
    let n = w.net("trusted", opts).await?;
    let web = w
        .run(&n, "web", EndpointOptions::default().publish(p("18090:80")))
        .await?;
    let _s80 = TcpEchoServer::start(web.ns(), ANY4, 80).await?;
    let _s81 = TcpEchoServer::start(web.ns(), ANY4, 81).await?;
    let check = || async {
        probe::tcp(trusted.netns(), web.v4(), 80)
            .await
            .context("the trusted interface must reach the published port directly")?;
        ensure!(
            probe::tcp(other.netns(), web.v4(), 80).await.is_err(),
            "another interface must not reach the container's address directly"
        );
        ensure!(
            probe::tcp(trusted.netns(), web.v4(), 81).await.is_err(),
            "an unpublished port stays filtered, even from the trusted interface"
        );
        // both still reach the port as published on the host
        probe::tcp(other.netns(), other.host_addr_v4(), 18090).await?;
        anyhow::Ok(())
    };
    check().await?;
    let fw = w.driver().firewall_for_tests().await?;
    let mut healing = fw.healing();
    let before = healing.borrow_and_update().restores;
    w.host_cmd(&["nft", "flush", "ruleset"]).await?;
    tokio::time::timeout(
        Duration::from_secs(2),
        healing.wait_for(|h| h.restores > before),
    )
    .await
    .context("no restore after the flush")??;
    check().await?;
    Ok(())
}
