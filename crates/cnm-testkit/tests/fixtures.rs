//! Privileged tests of the testkit itself: the fixtures build and remove what they claim, and the
//! probes and echo servers carry real packets between the namespaces they made.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cnm_sandbox::{NetNs, get_sysctl};
use cnm_testkit::probe::{self, Probe};
use cnm_testkit::server::{TcpEchoServer, UdpEchoServer};
use cnm_testkit::{Outside, TestHost};

const NOBODY_V4: &str = "198.51.100.99";
const NOBODY_V6: &str = "2001:db8:100::99";
const QUICK: Duration = Duration::from_millis(400);

fn mounted_under(dir: &std::path::Path) -> Result<usize> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| std::path::Path::new(point).starts_with(dir))
        .count())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn test_host_is_a_separate_namespace_and_cleans_up_after_itself() -> Result<()> {
    let machine = NetNs::current()?;
    let host = TestHost::new().await?;
    ensure!(
        host.netns().id() != machine.id(),
        "the test host must not be the machine's namespace"
    );

    let lo = host
        .netlink()
        .link("lo")
        .await?
        .context("no loopback in the test host")?;
    ensure!(lo.up, "loopback must be up in the test host");
    assert_eq!(
        get_sysctl(host.netns(), "net.ipv4.ip_forward")
            .await?
            .trim(),
        "1"
    );
    assert_eq!(
        get_sysctl(host.netns(), "net.ipv6.conf.all.forwarding")
            .await?
            .trim(),
        "1"
    );
    ensure!(host.run_dir().is_dir() && host.state_dir().is_dir());
    ensure!(host.run_dir() != host.state_dir());

    let client = host.sandbox_ns("client").await?;
    let path = host.run_dir().join("testkit-netns/client");
    assert_eq!(client.path(), Some(path.as_path()));
    ensure!(client.id() != host.netns().id() && client.id() != machine.id());
    assert_eq!(
        mounted_under(host.run_dir())?,
        1,
        "the extra namespace is bind-mounted under the run dir"
    );
    ensure!(
        host.sandbox_ns("a/b").await.is_err(),
        "a name with '/' must be refused"
    );

    let outside = host.outside().await?;
    let veth = host
        .netlink()
        .link(outside.host_ifname())
        .await?
        .context("no veth to the outside")?;
    assert_eq!(veth.index, outside.host_ifindex());
    ensure!(veth.up);
    ensure!(
        machine_has_no_link(outside.host_ifname()).await?,
        "the veth must exist only inside the test host"
    );
    let again: *const Outside = host.outside().await?;
    ensure!(
        std::ptr::eq(again, outside),
        "outside() is created once per host"
    );

    let (run_dir, state_dir) = (host.run_dir().to_owned(), host.state_dir().to_owned());
    drop(client);
    drop(host);
    assert_eq!(
        mounted_under(&run_dir)?,
        0,
        "mounts under the run dir are gone after drop"
    );
    ensure!(
        !run_dir.exists() && !state_dir.exists(),
        "directories are removed on drop"
    );
    Ok(())
}

async fn machine_has_no_link(name: &str) -> Result<bool> {
    let machine = cnm_sandbox::Netlink::connect(&NetNs::current()?).await?;
    Ok(machine.link(name).await?.is_none())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn outside_has_only_on_link_routes() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    for family in [cnm_sandbox::IpFamily::V4, cnm_sandbox::IpFamily::V6] {
        let routes = outside.netlink().routes(family).await?;
        ensure!(
            routes
                .iter()
                .all(|r| r.gateway.is_none() && r.destination.prefix_len() > 0),
            "the outside must have no default route and no gateway: {routes:?}"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn probes_reach_across_the_outside_veth_in_both_families() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    for (out_addr, host_addr) in [
        (outside.addr_v4(), outside.host_addr_v4()),
        (outside.addr_v6(), outside.host_addr_v6()),
    ] {
        let tcp = TcpEchoServer::start(outside.netns(), out_addr, 0).await?;
        let udp = UdpEchoServer::start(outside.netns(), out_addr, 0).await?;
        probe::tcp(host.netns(), out_addr, tcp.addr().port()).await?;
        probe::udp(host.netns(), out_addr, udp.addr().port()).await?;
        probe::icmp(host.netns(), out_addr).await?;
        // And back: the outside reaches the host on the link, and loopback works in the host.
        probe::icmp(outside.netns(), host_addr).await?;
        let loopback: IpAddr = if out_addr.is_ipv4() {
            "127.0.0.1".parse()?
        } else {
            "::1".parse()?
        };
        probe::icmp(host.netns(), loopback).await?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn probes_to_an_address_nobody_has_fail_fast() -> Result<()> {
    let host = TestHost::new().await?;
    host.outside().await?;
    let quick = Probe::new().timeout(QUICK);
    for nobody in [NOBODY_V4, NOBODY_V6] {
        let nobody: IpAddr = nobody.parse()?;
        let started = Instant::now();
        quick
            .tcp(host.netns(), nobody, 8080)
            .await
            .expect_err("nobody answers TCP");
        quick
            .udp(host.netns(), nobody, 8080)
            .await
            .expect_err("nobody answers UDP");
        quick
            .icmp(host.netns(), nobody)
            .await
            .expect_err("nobody answers ICMP");
        let took = started.elapsed();
        ensure!(
            took < QUICK * 3 + Duration::from_secs(3),
            "three failing probes took {took:?}"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn probes_to_a_closed_port_fail_and_a_stopped_server_stops_answering() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let tcp = TcpEchoServer::start(outside.netns(), outside.addr_v4(), 0).await?;
    let udp = UdpEchoServer::start(outside.netns(), outside.addr_v4(), 0).await?;
    let (tcp_port, udp_port) = (tcp.addr().port(), udp.addr().port());
    probe::tcp(host.netns(), outside.addr_v4(), tcp_port).await?;
    probe::udp(host.netns(), outside.addr_v4(), udp_port).await?;
    drop(tcp);
    drop(udp);
    let started = Instant::now();
    probe::tcp(host.netns(), outside.addr_v4(), tcp_port)
        .await
        .expect_err("the TCP server was stopped");
    probe::udp(host.netns(), outside.addr_v4(), udp_port)
        .await
        .expect_err("the UDP server was stopped");
    // Refused (RST, ICMP port unreachable) is immediate; no timeout was needed.
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "closed ports must be refused at once"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn echo_servers_report_the_peer_address_they_saw() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    for (out_addr, host_addr) in [
        (outside.addr_v4(), outside.host_addr_v4()),
        (outside.addr_v6(), outside.host_addr_v6()),
    ] {
        let tcp = TcpEchoServer::start(outside.netns(), out_addr, 0).await?;
        let udp = UdpEchoServer::start(outside.netns(), out_addr, 0).await?;
        ensure!(tcp.peers().is_empty() && udp.peers().is_empty());
        probe::tcp(host.netns(), out_addr, tcp.addr().port()).await?;
        probe::udp(host.netns(), out_addr, udp.addr().port()).await?;
        assert_eq!(
            tcp.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
            [host_addr]
        );
        assert_eq!(
            udp.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
            [host_addr]
        );
    }

    // With an explicit source address the server sees exactly that one.
    let tcp = TcpEchoServer::start(outside.netns(), outside.addr_v4(), 0).await?;
    let loopback_server = TcpEchoServer::start(host.netns(), "127.0.0.1".parse()?, 0).await?;
    probe::tcp_from(
        host.netns(),
        outside.host_addr_v4(),
        outside.addr_v4(),
        tcp.addr().port(),
    )
    .await?;
    assert_eq!(tcp.peers()[0].ip(), outside.host_addr_v4());
    probe::tcp_from(
        host.netns(),
        "127.0.0.1".parse()?,
        "127.0.0.1".parse()?,
        loopback_server.addr().port(),
    )
    .await?;
    assert_eq!(
        loopback_server.peers()[0].ip(),
        "127.0.0.1".parse::<IpAddr>()?
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_extra_namespace_is_isolated_until_connected() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let client = host.sandbox_ns("client").await?;
    // No links but loopback: nothing is reachable, and the failure is immediate (no route).
    let started = Instant::now();
    probe::icmp(&client, outside.addr_v4())
        .await
        .expect_err("an unconnected namespace reaches nothing");
    probe::tcp(&client, outside.addr_v4(), 80)
        .await
        .expect_err("an unconnected namespace reaches nothing");
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "no route must fail at once"
    );
    probe::icmp(&client, "127.0.0.1".parse()?).await?;
    Ok(())
}
