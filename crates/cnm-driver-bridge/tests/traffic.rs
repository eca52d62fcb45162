//! The bridge driver proven with real packets, through the controller, in throwaway namespaces.

mod common;

use std::net::IpAddr;

use anyhow::{Result, ensure};
use cnm_core::{EndpointOptions, NetworkOptions, PoolConfig};
use cnm_sandbox::IpFamily;
use cnm_testkit::probe;
use cnm_testkit::server::{TcpEchoServer, UdpEchoServer};
use cnm_types::ErrorKind;
use common::*;

const ANY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn same_network_reaches_other_networks_do_not_and_a_two_network_sandbox_reaches_both()
-> Result<()> {
    let w = World::new().await?;
    let a = w.net4("a", "10.31.0.0/24").await?;
    let b = w.net4("b", "10.32.0.0/24").await?;
    let a1 = w.run(&a, "a1", EndpointOptions::default()).await?;
    let a2 = w.run(&a, "a2", EndpointOptions::default()).await?;
    let b1 = w.run(&b, "b1", EndpointOptions::default()).await?;
    let _s_a2 = TcpEchoServer::start(a2.ns(), ANY4, 80).await?;
    let _s_b1 = TcpEchoServer::start(b1.ns(), ANY4, 80).await?;

    probe::tcp(a1.ns(), a2.v4(), 80).await?;
    probe::icmp(a1.ns(), a2.v4()).await?;
    ensure!(
        probe::tcp(a1.ns(), b1.v4(), 80).await.is_err(),
        "networks a and b must be isolated"
    );
    ensure!(
        probe::tcp(b1.ns(), a2.v4(), 80).await.is_err(),
        "networks b and a must be isolated"
    );

    let both = w.run(&a, "both", EndpointOptions::default()).await?;
    let on_b = w.connect(&b, &both, "both-b").await?;
    probe::tcp(both.ns(), a2.v4(), 80).await?;
    probe::tcp(both.ns(), b1.v4(), 80).await?;
    ensure!(on_b.ipv4().is_some());
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn icc_off_blocks_containers_of_one_network() -> Result<()> {
    let w = World::new().await?;
    // A new namespace starts with bridge-nf-call-iptables=1 whenever br_netfilter is loaded:
    // turn it off, so the isolation proven below comes from the bridge ports alone.
    let br_nf = [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ];
    let br_nf_loaded = std::path::Path::new("/proc/sys/net/bridge").exists();
    if br_nf_loaded {
        for key in br_nf {
            w.host_cmd(&["sysctl", "-qw", &format!("{key}=0")]).await?;
        }
    }
    let opts = NetworkOptions::default()
        .subnet("10.33.0.0/24".parse()?)
        .driver_option("com.docker.network.bridge.enable_icc", "false");
    let n = w.net("noicc", opts).await?;
    let c1 = w.run(&n, "c1", EndpointOptions::default()).await?;
    let c2 = w.run(&n, "c2", EndpointOptions::default()).await?;
    let _s1 = TcpEchoServer::start(c1.ns(), ANY4, 80).await?;
    let _s2 = TcpEchoServer::start(c2.ns(), ANY4, 80).await?;
    ensure!(
        probe::tcp(c1.ns(), c2.v4(), 80).await.is_err(),
        "ICC off must block c1 -> c2"
    );
    ensure!(
        probe::tcp(c2.ns(), c1.v4(), 80).await.is_err(),
        "ICC off must block c2 -> c1"
    );
    // Each still reaches its gateway (the bridge itself) and the outside.
    let gateway: IpAddr = "10.33.0.1".parse()?;
    let _gw = TcpEchoServer::start(w.host.netns(), gateway, 7003).await?;
    let out = w.host.outside().await?;
    let _echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7000).await?;
    for c in [&c1, &c2] {
        probe::tcp(c.ns(), gateway, 7003).await?;
        probe::tcp(c.ns(), out.addr_v4(), 7000).await?;
    }
    if br_nf_loaded {
        for key in br_nf {
            let value = w.host_cmd(&["sysctl", "-n", key]).await?;
            ensure!(
                value.trim() == "0",
                "{key} is {value}: the driver turned it on"
            );
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn internal_network_has_no_route_out_and_no_way_to_the_host() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let _echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7001).await?;
    let n = w
        .net(
            "int",
            NetworkOptions::default()
                .subnet("10.34.0.0/24".parse()?)
                .internal(true),
        )
        .await?;
    let c = w.run(&n, "c", EndpointOptions::default()).await?;
    let routes = c.sb.netlink().routes(IpFamily::V4).await?;
    ensure!(
        routes.iter().all(|r| r.destination.prefix_len() != 0),
        "internal: no default route: {routes:?}"
    );
    ensure!(
        probe::tcp(c.ns(), out.addr_v4(), 7001).await.is_err(),
        "internal network must not reach out"
    );
    // nor the host itself (libnetwork#1151), unless the network allows it (see hardening.rs)
    ensure!(
        probe::icmp(c.ns(), "10.34.0.1".parse()?).await.is_err(),
        "internal network must not reach its gateway"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn outbound_traffic_is_masqueraded_behind_the_host() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7002).await?;
    let udp = UdpEchoServer::start(out.netns(), out.addr_v4(), 7002).await?;
    let n = w.net4("nat", "10.35.0.0/24").await?;
    let c = w.run(&n, "c", EndpointOptions::default()).await?;
    probe::tcp(c.ns(), out.addr_v4(), 7002).await?;
    probe::udp(c.ns(), out.addr_v4(), 7002).await?;
    ensure!(
        echo.peers().iter().all(|p| p.ip() == out.host_addr_v4()),
        "peers {:?}",
        echo.peers()
    );
    ensure!(
        udp.peers().iter().all(|p| p.ip() == out.host_addr_v4()),
        "peers {:?}",
        udp.peers()
    );
    // Without masquerading the outside has no route back to 10.35.0.0/24.
    let opts = NetworkOptions::default()
        .subnet("10.36.0.0/24".parse()?)
        .driver_option("com.docker.network.bridge.enable_ip_masquerade", "false");
    let plain = w.net("plain", opts).await?;
    let d = w.run(&plain, "d", EndpointOptions::default()).await?;
    ensure!(
        probe::tcp(d.ns(), out.addr_v4(), 7002).await.is_err(),
        "only masquerading makes it work"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn published_port_reached_from_outside_from_the_host_loopback_and_by_hairpin() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let n = w.net4("pub", "10.37.0.0/24").await?;
    let web = w
        .run(
            &n,
            "web",
            EndpointOptions::default()
                .publish(p("18080:80"))
                .publish(p("18081:81/udp")),
        )
        .await?;
    let _tcp = TcpEchoServer::start(web.ns(), ANY4, 80).await?;
    let _udp = UdpEchoServer::start(web.ns(), ANY4, 81).await?;
    let other = w.run(&n, "other", EndpointOptions::default()).await?;
    let host_ip = out.host_addr_v4();

    probe::tcp(out.netns(), host_ip, 18080).await?;
    probe::udp(out.netns(), host_ip, 18081).await?;
    probe::tcp(w.host.netns(), "127.0.0.1".parse()?, 18080).await?;
    probe::tcp(w.host.netns(), host_ip, 18080).await?;
    probe::tcp(other.ns(), host_ip, 18080).await?;
    probe::udp(other.ns(), host_ip, 18081).await?;
    ensure!(
        !w.port_free(18080, false).await?,
        "the host port is reserved while published"
    );
    let published = web.published().await;
    ensure!(
        published
            .iter()
            .any(|b| b.host_port.map(|h| h.start) == Some(18080)),
        "{published:?}"
    );

    // Leaving withdraws the mapping and frees the port.
    web.ep.leave("web").await?;
    ensure!(probe::tcp(out.netns(), host_ip, 18080).await.is_err());
    ensure!(
        w.port_free(18080, false).await?,
        "the host port is freed after leave"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ephemeral_host_port_is_picked_from_the_local_port_range() -> Result<()> {
    let w = World::new().await?;
    w.host_cmd(&["sysctl", "-w", "net.ipv4.ip_local_port_range=41000 41010"])
        .await?;
    let out = w.host.outside().await?;
    let n = w.net4("eph", "10.38.0.0/24").await?;
    let c = w
        .run(&n, "c", EndpointOptions::default().publish(p("80")))
        .await?;
    let _tcp = TcpEchoServer::start(c.ns(), ANY4, 80).await?;
    let made = c.published().await;
    let port = made[0].host_port.expect("a host port was chosen").start;
    ensure!(
        (41000..=41010).contains(&port),
        "port {port} outside the range"
    );
    probe::tcp(out.netns(), out.host_addr_v4(), port).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn port_published_on_loopback_is_unreachable_from_outside() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let n = w.net4("lo", "10.39.0.0/24").await?;
    let c = w
        .run(
            &n,
            "c",
            EndpointOptions::default().publish(p("127.0.0.1:18082:80")),
        )
        .await?;
    let _tcp = TcpEchoServer::start(c.ns(), ANY4, 80).await?;
    probe::tcp(w.host.netns(), "127.0.0.1".parse()?, 18082).await?;
    // Give the outside a way to send to 127.0.0.1 through the host (CVE-2020-8558's attack).
    run_in(
        out.netns(),
        &["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"],
    )
    .await?;
    run_in(
        out.netns(),
        &["sysctl", "-w", "net.ipv4.conf.eth0.route_localnet=1"],
    )
    .await?;
    run_in(
        out.netns(),
        &[
            "ip",
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            &out.host_addr_v4().to_string(),
        ],
    )
    .await?;
    ensure!(
        probe::tcp(out.netns(), "127.0.0.1".parse()?, 18082)
            .await
            .is_err(),
        "a port published on 127.0.0.1 must not be reachable from outside"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn port_in_use_fails_early_naming_it_and_leaves_nothing() -> Result<()> {
    let w = World::new().await?;
    let n = w.net4("busy", "10.40.0.0/24").await?;
    let baseline = w.host_links().await?;
    let _squatter = TcpEchoServer::start(w.host.netns(), ANY4, 18083).await?;
    let ep = n
        .create_endpoint(
            "c",
            EndpointOptions::default()
                .publish(p("18084:84"))
                .publish(p("18083:80")),
        )
        .await?;
    let err = ep
        .join("c", [])
        .await
        .expect_err("host port 18083 is taken");
    let text = format!("{:#}", anyhow::Error::from(err));
    ensure!(
        text.contains("host port 18083/tcp on 0.0.0.0 is already in use"),
        "{text}"
    );
    assert_clean(&w, &baseline, &[18084]).await?;
    ensure!(
        w.ctl.sandbox_by_container_id("c").is_err(),
        "the sandbox made for the join is gone"
    );
    ep.delete().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_hundred_ports_and_a_thousand_port_range() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let n = w.net4("many", "10.41.0.0/24").await?;
    let mut opts = EndpointOptions::default();
    for i in 0..100u16 {
        opts = opts.publish(p(&format!("{}:{}", 20000 + i, 3000 + i)));
    }
    let c = w.run(&n, "hundred", opts).await?;
    let r = w
        .run(
            &n,
            "range",
            EndpointOptions::default().publish(p("30000-30999:5000-5999")),
        )
        .await?;
    let mut servers = Vec::new();
    for i in [0u16, 42, 99] {
        servers.push(TcpEchoServer::start(c.ns(), ANY4, 3000 + i).await?);
    }
    for i in [0u16, 500, 999] {
        servers.push(TcpEchoServer::start(r.ns(), ANY4, 5000 + i).await?);
    }
    for i in [0u16, 42, 99] {
        probe::tcp(out.netns(), out.host_addr_v4(), 20000 + i).await?;
    }
    for i in [0u16, 500, 999] {
        probe::tcp(out.netns(), out.host_addr_v4(), 30000 + i).await?;
    }
    Ok(())
}

fn dual(v4: &str, v6: &str) -> Result<NetworkOptions> {
    Ok(NetworkOptions::default()
        .enable_ipv6(true)
        .pool(PoolConfig::new(v4.parse()?))
        .pool(PoolConfig::new(v6.parse()?)))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ipv6_dual_stack_and_ipv6_only() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let echo6 = TcpEchoServer::start(out.netns(), out.addr_v6(), 7003).await?;
    let n = w.net("dual", dual("10.42.0.0/24", "fd00:42::/64")?).await?;
    let a = w
        .run(&n, "a", EndpointOptions::default().publish(p("18085:80")))
        .await?;
    let b = w.run(&n, "b", EndpointOptions::default()).await?;
    let _s4 = TcpEchoServer::start(a.ns(), ANY4, 80).await?;
    let _s6 = TcpEchoServer::start(a.ns(), ANY6, 80).await?;
    probe::tcp(b.ns(), a.v6(), 80).await?;
    probe::tcp(b.ns(), a.v4(), 80).await?;
    probe::tcp(a.ns(), out.addr_v6(), 7003).await?;
    ensure!(
        echo6.peers().iter().all(|p| p.ip() == out.host_addr_v6()),
        "v6 masqueraded: {:?}",
        echo6.peers()
    );
    probe::tcp(out.netns(), out.host_addr_v6(), 18085).await?;
    probe::tcp(out.netns(), out.host_addr_v4(), 18085).await?;
    probe::tcp(b.ns(), out.host_addr_v6(), 18085).await?;

    let only6 = NetworkOptions::default()
        .enable_ipv4(false)
        .enable_ipv6(true)
        .pool(PoolConfig::new("fd00:43::/64".parse()?));
    let m = w.net("v6only", only6).await?;
    let c = w
        .run(
            &m,
            "c",
            EndpointOptions::default().publish(p("[::]:18086:80")),
        )
        .await?;
    let _c6 = TcpEchoServer::start(c.ns(), ANY6, 80).await?;
    ensure!(c.ep.ipv4().is_none());
    probe::tcp(c.ns(), out.addr_v6(), 7003).await?;
    probe::tcp(out.netns(), out.host_addr_v6(), 18086).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn no_ipv6_address_at_all_inside_sandboxes_of_ipv4_only_networks() -> Result<()> {
    let w = World::new().await?;
    let n = w.net4("v4only", "10.44.0.0/24").await?;
    let c = w.run(&n, "c", EndpointOptions::default()).await?;
    let d = w.run(&n, "d", EndpointOptions::default()).await?;
    let _s = TcpEchoServer::start(d.ns(), ANY4, 80).await?;
    probe::tcp(c.ns(), d.v4(), 80).await?;
    for ctr in [&c, &d] {
        let v6 = addresses(ctr.sb.netlink(), IpFamily::V6).await?;
        ensure!(
            v6.is_empty(),
            "IPv6 addresses leaked into an IPv4-only sandbox: {v6:?}"
        );
        let v4 = addresses(ctr.sb.netlink(), IpFamily::V4).await?;
        ensure!(v4.len() == 1, "{v4:?}");
    }
    let bridge = w
        .host_links()
        .await?
        .into_iter()
        .find(|l| l.starts_with("cnm-"))
        .expect("bridge exists");
    let flag = w
        .host_cmd(&[
            "sysctl",
            "-n",
            &format!("net.ipv6.conf.{bridge}.disable_ipv6"),
        ])
        .await?;
    ensure!(
        flag.trim() == "1",
        "IPv6 off on the bridge of an IPv4-only network"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn coexists_with_dockers_forward_drop_policy() -> Result<()> {
    let w = World::new().await?;
    let out = w.host.outside().await?;
    let _echo = TcpEchoServer::start(out.netns(), out.addr_v4(), 7004).await?;
    w.host_cmd(&["iptables", "-P", "FORWARD", "DROP"]).await?;
    let n = w.net4("fwd", "10.45.0.0/24").await?;
    let c = w
        .run(&n, "c", EndpointOptions::default().publish(p("18087:80")))
        .await?;
    let _s = TcpEchoServer::start(c.ns(), ANY4, 80).await?;
    probe::tcp(c.ns(), out.addr_v4(), 7004).await?;
    probe::tcp(out.netns(), out.host_addr_v4(), 18087).await?;
    let policy = w.host_cmd(&["iptables", "-S", "FORWARD"]).await?;
    ensure!(
        policy.contains("-P FORWARD DROP"),
        "the host's FORWARD policy is never changed: {policy}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn bad_input_is_refused_with_typed_errors_and_nothing_changes() -> Result<()> {
    let w = World::new().await?;
    w.host_cmd(&["ip", "link", "add", "br-taken", "type", "bridge"])
        .await?;
    let baseline = w.host_links().await?;

    let opts = NetworkOptions::default()
        .subnet("10.46.0.0/24".parse()?)
        .driver_option("com.docker.network.bridge.name", "br-taken");
    let e = w
        .ctl
        .new_network("bridge", "taken", opts)
        .await
        .expect_err("bridge name in use");
    ensure!(e.kind() == ErrorKind::Conflict, "{e}: {:?}", e.kind());
    ensure!(format!("{:#}", anyhow::Error::from(e)).contains("br-taken"));

    for (key, value, needle) in [
        ("com.docker.network.driver.mtu", "20", "20"),
        ("com.docker.network.driver.mtu", "70000", "70000"),
        (
            "com.docker.network.bridge.inhibit_ipv4",
            "bogus",
            "com.docker.network.bridge.inhibit_ipv4",
        ),
    ] {
        let opts = NetworkOptions::default()
            .subnet("10.46.0.0/24".parse()?)
            .driver_option(key, value);
        let e = w
            .ctl
            .new_network("bridge", "bad", opts)
            .await
            .expect_err("bad option");
        ensure!(e.kind() == ErrorKind::InvalidInput, "{key}={value}: {e}");
        let text = format!("{:#}", anyhow::Error::from(e));
        ensure!(text.contains(needle), "{text}");
    }
    ensure!(w.host_links().await? == baseline, "nothing created");
    ensure!(w.ctl.networks().is_empty(), "no network recorded");

    // An invalid port range is refused before anything happens.
    let n = w.net4("ports", "10.46.0.0/24").await?;
    let baseline = w.host_links().await?;
    let bad = cnm_core::PortBinding {
        proto: cnm_core::Protocol::Tcp,
        container_port: cnm_core::PortRange { start: 80, end: 80 },
        host_ip: None,
        host_port: Some(cnm_core::PortRange {
            start: 18090,
            end: 18091,
        }),
    };
    let e = match n
        .create_endpoint("c", EndpointOptions::default().publish(bad))
        .await
    {
        Err(e) => e,
        Ok(ep) => ep.join("c", []).await.expect_err("size mismatch"),
    };
    ensure!(e.kind() == ErrorKind::InvalidInput, "{e}");
    assert_clean(&w, &baseline, &[18090]).await?;
    Ok(())
}

/// Docker's `inhibit_ipv4`: the bridge gets no IPv4 address, so nothing on the host answers at
/// the gateway address, yet the containers keep their addresses, reach each other, and route
/// through the gateway address, which a router the operator attaches to the bridge then owns.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn inhibit_ipv4_leaves_the_gateway_address_to_a_router_on_the_segment() -> Result<()> {
    let w = World::new().await?;
    let opts = NetworkOptions::default()
        .subnet("10.35.0.0/24".parse()?)
        .driver_option("com.docker.network.bridge.name", "br-inhibit")
        .driver_option("com.docker.network.bridge.inhibit_ipv4", "true");
    let n = w.net("inhibit", opts).await?;
    let c1 = w.run(&n, "c1", EndpointOptions::default()).await?;
    let c2 = w.run(&n, "c2", EndpointOptions::default()).await?;
    let _s2 = TcpEchoServer::start(c2.ns(), ANY4, 80).await?;
    probe::tcp(c1.ns(), c2.v4(), 80).await?;
    let gateway: IpAddr = "10.35.0.1".parse()?;
    ensure!(
        probe::icmp(c1.ns(), gateway).await.is_err(),
        "with inhibit_ipv4 the host must not answer at the gateway address"
    );
    // A router on the bridge's segment takes the gateway address; behind it, 203.0.113.1.
    let router = w.host.sandbox_ns("router").await?;
    let router_path = router
        .path()
        .ok_or_else(|| anyhow::anyhow!("the router namespace has no path"))?
        .display()
        .to_string();
    w.host_cmd(&[
        "ip", "link", "add", "rtr0", "type", "veth", "peer", "name", "rtr1",
    ])
    .await?;
    w.host_cmd(&["ip", "link", "set", "rtr1", "netns", &router_path])
        .await?;
    w.host_cmd(&["ip", "link", "set", "rtr0", "master", "br-inhibit", "up"])
        .await?;
    run_in(
        &router,
        &["ip", "addr", "add", "10.35.0.1/24", "dev", "rtr1"],
    )
    .await?;
    run_in(
        &router,
        &["ip", "addr", "add", "203.0.113.1/32", "dev", "lo"],
    )
    .await?;
    run_in(&router, &["ip", "link", "set", "rtr1", "up"]).await?;
    let _at_gw = TcpEchoServer::start(&router, gateway, 80).await?;
    let beyond: IpAddr = "203.0.113.1".parse()?;
    let _beyond = TcpEchoServer::start(&router, beyond, 81).await?;
    probe::tcp(c1.ns(), gateway, 80).await?;
    // Only the default route through the gateway leads there.
    probe::tcp(c1.ns(), beyond, 81).await?;
    Ok(())
}
