//! Docker 28's gateway modes `nat-unprotected`, `routed` and `isolated`, each family of a
//! dual-stack network with its own, proven with packets between a LAN peer routing to the
//! containers' subnets through the host, the outside and containers.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cnm_core::{EndpointOptions, NetworkOptions, PoolConfig};
use cnm_sandbox::IpFamily;
use cnm_testkit::probe;
use cnm_testkit::server::TcpEchoServer;
use common::*;

const ANY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
const MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
const MODE_V6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
/// The host's IPv6 address on LAN 1 (cnm-testkit's `TestHost::lan`: 2001:db8:200:N::1).
const HOST_ON_LAN1_V6: &str = "2001:db8:200:1::1";

/// A dual-stack network with a gateway mode per family.
fn dual(v4: &str, v6: &str, mode_v4: &str, mode_v6: &str) -> Result<NetworkOptions> {
    Ok(NetworkOptions::default()
        .enable_ipv6(true)
        .pool(PoolConfig::new(v4.parse()?))
        .pool(PoolConfig::new(v6.parse()?))
        .driver_option(MODE_V4, mode_v4)
        .driver_option(MODE_V6, mode_v6))
}

/// `nft flush ruleset` in the host namespace, then waits for cnm to put its tables back.
async fn flush_and_wait_for_the_restore(w: &World) -> Result<()> {
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
    Ok(())
}

/// Connects from `from` to an echo server on `server`'s `addr`, and returns the source address
/// the server saw.
async fn seen_from(
    from: &cnm_sandbox::NetNs,
    server: &cnm_sandbox::NetNs,
    addr: IpAddr,
    port: u16,
) -> Result<IpAddr> {
    let echo = TcpEchoServer::start(server, addr, port).await?;
    probe::tcp(from, addr, port)
        .await
        .with_context(|| format!("outbound to {addr}:{port}"))?;
    let peers = echo.peers();
    ensure!(peers.len() == 1, "one connection expected: {peers:?}");
    Ok(peers[0].ip())
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn dual_stack_nat_ipv4_beside_routed_ipv6_each_family_follows_its_mode() -> Result<()> {
    let w = World::new().await?;
    // a peer whose default routes (both families) go through the host
    let lan = w.host.lan(1).await?;
    let opts = dual("10.40.0.0/24", "fd00:40::/64", "nat", "routed")?;
    let n = w.net("mixed", opts).await?;
    let web = w
        .run(&n, "web", EndpointOptions::default().publish(p("18095:80")))
        .await?;
    let (ns, a4, a6) = (web.ns().clone(), web.v4(), web.v6());
    let _s4 = TcpEchoServer::start(&ns, ANY4, 80).await?;
    let _s6 = TcpEchoServer::start(&ns, ANY6, 80).await?;
    let _u6 = TcpEchoServer::start(&ns, ANY6, 81).await?;
    let mut round = 0u16;
    let mut check = async |when: &str| {
        round += 1;
        // IPv6 routed: the published port at the container's own address, nothing else
        probe::tcp(lan.netns(), a6, 80)
            .await
            .with_context(|| format!("{when}: routed IPv6 reaches the published port directly"))?;
        ensure!(
            probe::tcp(lan.netns(), a6, 81).await.is_err(),
            "{when}: routed IPv6 must not open an unpublished port"
        );
        // IPv4 nat: the container's address is filtered, the host's port DNATs to it
        ensure!(
            probe::tcp(lan.netns(), a4, 80).await.is_err(),
            "{when}: nat IPv4 must drop direct access to the container's address"
        );
        probe::tcp(lan.netns(), lan.host_addr_v4(), 18095)
            .await
            .with_context(|| format!("{when}: the published port through the host's IPv4"))?;
        // outbound: IPv4 masqueraded behind the host, IPv6 with the container's own address
        let seen4 = seen_from(&ns, lan.netns(), lan.addr_v4(), 7010 + round).await?;
        ensure!(
            seen4 == lan.host_addr_v4(),
            "{when}: IPv4 seen from {seen4}"
        );
        let seen6 = seen_from(&ns, lan.netns(), lan.addr_v6(), 7020 + round).await?;
        ensure!(
            seen6 == a6,
            "{when}: IPv6 seen from {seen6}, not the container's {a6}"
        );
        anyhow::Ok(())
    };
    check("created").await?;
    flush_and_wait_for_the_restore(&w).await?;
    check("after nft flush ruleset").await?;
    // (a restart restores the same: the facade's restart tests, which have the durable store)
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn dual_stack_routed_ipv4_beside_nat_ipv6_each_family_follows_its_mode() -> Result<()> {
    let w = World::new().await?;
    let lan = w.host.lan(1).await?;
    let host6: IpAddr = HOST_ON_LAN1_V6.parse()?;
    let opts = dual("10.41.0.0/24", "fd00:41::/64", "routed", "nat")?;
    let n = w.net("mixed", opts).await?;
    let web = w
        .run(&n, "web", EndpointOptions::default().publish(p("18096:80")))
        .await?;
    let (ns, a4, a6) = (web.ns().clone(), web.v4(), web.v6());
    let _s4 = TcpEchoServer::start(&ns, ANY4, 80).await?;
    let _u4 = TcpEchoServer::start(&ns, ANY4, 81).await?;
    let _s6 = TcpEchoServer::start(&ns, ANY6, 80).await?;
    let mut round = 0u16;
    let mut check = async |when: &str| {
        round += 1;
        // IPv4 routed: the published port directly, an unpublished one not, no masquerade
        probe::tcp(lan.netns(), a4, 80)
            .await
            .with_context(|| format!("{when}: routed IPv4 reaches the published port directly"))?;
        ensure!(
            probe::tcp(lan.netns(), a4, 81).await.is_err(),
            "{when}: routed IPv4 must not open an unpublished port"
        );
        let seen4 = seen_from(&ns, lan.netns(), lan.addr_v4(), 7030 + round).await?;
        ensure!(
            seen4 == a4,
            "{when}: IPv4 seen from {seen4}, not the container's {a4}"
        );
        // IPv6 nat: DNAT through the host's address, masquerade out, no direct access
        ensure!(
            probe::tcp(lan.netns(), a6, 80).await.is_err(),
            "{when}: nat IPv6 must drop direct access to the container's address"
        );
        probe::tcp(lan.netns(), host6, 18096)
            .await
            .with_context(|| format!("{when}: the published port through the host's IPv6"))?;
        let seen6 = seen_from(&ns, lan.netns(), lan.addr_v6(), 7040 + round).await?;
        ensure!(
            seen6 == host6,
            "{when}: IPv6 seen from {seen6}, not the host's {host6}"
        );
        anyhow::Ok(())
    };
    check("created").await?;
    flush_and_wait_for_the_restore(&w).await?;
    check("after nft flush ruleset").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn isolated_ipv4_beside_nat_ipv6_leaves_ipv6_working() -> Result<()> {
    let w = World::new().await?;
    let lan = w.host.lan(1).await?;
    let host6: IpAddr = HOST_ON_LAN1_V6.parse()?;
    let opts = dual("10.43.0.0/24", "fd00:43::/64", "isolated", "nat")?
        .driver_option("com.docker.network.bridge.name", "br-iso4");
    let n = w.net("iso4", opts).await?;
    let c1 = w
        .run(&n, "c1", EndpointOptions::default().publish(p("18097:80")))
        .await?;
    let c2 = w.run(&n, "c2", EndpointOptions::default()).await?;
    let _s4 = TcpEchoServer::start(c1.ns(), ANY4, 80).await?;
    let _s6 = TcpEchoServer::start(c1.ns(), ANY6, 80).await?;
    let _t4 = TcpEchoServer::start(c2.ns(), ANY4, 80).await?;
    // the bridge has its IPv6 gateway and no IPv4 address
    let br = w
        .host
        .netlink()
        .link("br-iso4")
        .await?
        .context("the bridge exists")?;
    let on_bridge = w.host.netlink().addresses(Some(br.index)).await?;
    ensure!(
        !on_bridge.iter().any(|a| a.addr.addr().is_ipv4()),
        "isolated IPv4: bridge addresses {on_bridge:?}"
    );
    ensure!(
        on_bridge
            .iter()
            .any(|a| a.addr.addr() == "fd00:43::1".parse::<IpAddr>().unwrap()),
        "nat IPv6 keeps its gateway: {on_bridge:?}"
    );
    // a default route for IPv6 only
    let routes4 = c1.sb.netlink().routes(IpFamily::V4).await?;
    ensure!(
        routes4.iter().all(|r| r.destination.prefix_len() != 0),
        "isolated IPv4: no default route: {routes4:?}"
    );
    let routes6 = c1.sb.netlink().routes(IpFamily::V6).await?;
    ensure!(
        routes6.iter().any(|r| r.destination.prefix_len() == 0),
        "nat IPv6: a default route: {routes6:?}"
    );
    let mut round = 0u16;
    let mut check = async |when: &str| {
        round += 1;
        // IPv4 stays on the bridge: containers talk, nothing leaves or enters
        probe::tcp(c1.ns(), c2.v4(), 80)
            .await
            .with_context(|| format!("{when}: containers of the network talk over IPv4"))?;
        let echo4 = TcpEchoServer::start(lan.netns(), lan.addr_v4(), 7050 + round).await?;
        ensure!(
            probe::tcp(c1.ns(), lan.addr_v4(), 7050 + round)
                .await
                .is_err(),
            "{when}: isolated IPv4 must not reach the outside"
        );
        drop(echo4);
        ensure!(
            probe::tcp(lan.netns(), lan.host_addr_v4(), 18097)
                .await
                .is_err(),
            "{when}: isolated IPv4 publishes nothing"
        );
        // IPv6 works as nat does: out masqueraded, in through the published port
        let seen6 = seen_from(c1.ns(), lan.netns(), lan.addr_v6(), 7060 + round).await?;
        ensure!(seen6 == host6, "{when}: IPv6 seen from {seen6}");
        probe::tcp(lan.netns(), host6, 18097)
            .await
            .with_context(|| format!("{when}: the published port through the host's IPv6"))?;
        anyhow::Ok(())
    };
    check("created").await?;
    flush_and_wait_for_the_restore(&w).await?;
    check("after nft flush ruleset").await?;
    Ok(())
}
