//! Input that could hurt the host, against the real kernel in a throwaway host namespace: each
//! refusal is a typed error naming the value, and changes nothing (the store, IPAM, the host's
//! links, addresses and routes, the sandbox's interfaces are compared before and after).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cnm::cnm_sandbox::{IpFamily, LinkKind, LinkSpec, Netlink, RouteSpec};
use cnm::cnm_types::{ErrorKind, IfName, MacAddress};
use cnm::{
    Controller, CoreError, EndpointOptions, JoinOption, NetworkOptions, PortBinding, PortRange,
    Protocol,
};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};

async fn controller(host: &TestHost) -> Result<Controller> {
    host.memory_controller().await
}

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    store: Vec<(String, Vec<u8>)>,
    ipam: Option<cnm::cnm_ipam::IpamState>,
    links: BTreeSet<String>,
    addresses: BTreeSet<String>,
    routes: BTreeSet<String>,
}

/// IPv6 link-local addresses and their `fe80::/64` routes, which the kernel adds on its own
/// some time after a link comes up (the outside link, a veth's host end): left out of the
/// comparison, since nothing a refused request did made them.
fn link_local(net: &ipnet::IpNet) -> bool {
    matches!(net, ipnet::IpNet::V6(n) if n.addr().is_unicast_link_local())
}

async fn snapshot(ctl: &Controller, nl: &Netlink) -> Result<Snapshot> {
    let mut routes = BTreeSet::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for r in nl.routes(family).await? {
            if !link_local(&r.destination) {
                routes.insert(format!("{r:?}"));
            }
        }
    }
    Ok(Snapshot {
        store: ctl
            .store()?
            .list("")
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect(),
        ipam: ctl.ipam()?.snapshot().await,
        links: nl.links().await?.into_iter().map(|l| l.name).collect(),
        addresses: nl
            .addresses(None)
            .await?
            .into_iter()
            .filter(|a| !link_local(&a.addr))
            .map(|a| format!("{}@{}", a.addr, a.index))
            .collect(),
        routes,
    })
}

fn expect_refused(e: &CoreError, kind: ErrorKind, needles: &[&str]) -> Result<()> {
    ensure!(
        e.kind() == kind,
        "expected {kind:?}, got {:?}: {e}",
        e.kind()
    );
    let text = e.to_string();
    for n in needles {
        ensure!(text.contains(n), "{text:?} lacks {n:?}");
    }
    Ok(())
}

/// A LAN the host is on: veth `lan0` (its peer stays in the host, down) with `10.77.0.1/24`,
/// and a routed network behind it, `10.88.0.0/16 via 10.77.0.254`.
async fn host_lan(host: &TestHost) -> Result<()> {
    let nl = host.netlink();
    let mut spec = LinkSpec::new(
        IfName::new("lan0")?,
        LinkKind::Veth {
            peer_name: IfName::new("lan0p")?,
            peer_ns: None,
            peer_mac: None,
            peer_mtu: None,
            peer_up: true,
        },
    );
    spec.up = true;
    nl.create_link(&spec).await?;
    let index = nl.link("lan0").await?.context("lan0")?.index;
    nl.add_address(index, "10.77.0.1/24".parse()?).await?;
    nl.add_route(&RouteSpec::via(
        "10.88.0.0/16".parse()?,
        "10.77.0.254".parse()?,
        Some(index),
    ))
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn reserved_and_too_wide_subnets_are_refused_and_change_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    ctl.new_network("bridge", "good", NetworkOptions::default())
        .await?;
    let before = snapshot(&ctl, host.netlink()).await?;
    for (subnet, why) in [
        ("127.0.0.0/8", "loopback"),
        ("127.0.0.1/32", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("239.1.0.0/16", "multicast"),
        ("0.0.0.0/8", "this network"),
        ("169.254.0.0/16", "link-local"),
        ("255.255.255.255/32", "limited broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("0.0.0.0/0", "wider than /8"),
        ("fe80::/64", "link-local"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::/96", "IPv4-compatible"),
        ("::/0", "wider than /16"),
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("ff00::/8", "multicast"),
        ("ff02::/16", "multicast"),
    ] {
        let net: ipnet::IpNet = subnet.parse()?;
        let opts = NetworkOptions::default()
            .enable_ipv6(net.addr().is_ipv6())
            .subnet(net);
        let e = ctl
            .new_network("bridge", "bad", opts)
            .await
            .expect_err(subnet);
        expect_refused(&e, ErrorKind::InvalidInput, &[&net.to_string(), why])?;
    }
    ensure!(
        before == snapshot(&ctl, host.netlink()).await?,
        "a refused subnet changed state"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_subnet_on_a_host_lan_is_refused_naming_it_unless_allowed() -> Result<()> {
    let host = TestHost::new().await?;
    host_lan(&host).await?;
    let ctl = controller(&host).await?;
    let subnet =
        |s: &str| -> Result<NetworkOptions> { Ok(NetworkOptions::default().subnet(s.parse()?)) };
    let before = snapshot(&ctl, host.netlink()).await?;
    for (s, needles) in [
        ("10.77.0.0/24", ["10.77.0.0/24 on lan0 (route)", ""]),
        ("10.77.0.128/25", ["10.77.0.0/24 on lan0 (route)", ""]),
        ("10.0.0.0/8", ["on lan0 (route)", ""]),
        (
            "10.88.5.0/24",
            ["10.88.0.0/16 via 10.77.0.254 on lan0 (route)", ""],
        ),
    ] {
        let e = ctl
            .new_network("bridge", "lan", subnet(s)?)
            .await
            .expect_err(s);
        expect_refused(
            &e,
            ErrorKind::Conflict,
            &[
                &format!("subnet {s} overlaps"),
                needles[0],
                "allow_host_overlap",
            ],
        )?;
    }
    // An IPv6 network on the host's IPv6 LAN (the outside link's 2001:db8:100::/64).
    host.outside().await?;
    let before_v6 = snapshot(&ctl, host.netlink()).await?;
    let e = ctl
        .new_network(
            "bridge",
            "lan6",
            NetworkOptions::default()
                .enable_ipv6(true)
                .subnet("2001:db8:100::/64".parse()?),
        )
        .await
        .expect_err("the outside link's subnet");
    expect_refused(
        &e,
        ErrorKind::Conflict,
        &["2001:db8:100::/64", "cnm-outside"],
    )?;
    ensure!(
        before_v6 == snapshot(&ctl, host.netlink()).await?,
        "a refused overlap changed state"
    );
    // Nothing of the above touched the host: compare what existed before the outside link.
    let now = snapshot(&ctl, host.netlink()).await?;
    ensure!(
        before.store == now.store && before.ipam == now.ipam,
        "store or IPAM changed"
    );

    // cnm's own networks are not the host's: an overlap with one is IPAM's conflict.
    ctl.new_network("bridge", "own", subnet("10.60.0.0/24")?)
        .await?;
    let e = ctl
        .new_network("bridge", "own2", subnet("10.60.0.0/25")?)
        .await
        .expect_err("overlaps cnm's own network");
    expect_refused(
        &e,
        ErrorKind::Conflict,
        &["overlaps existing pool 10.60.0.0/24"],
    )?;

    // Default pools avoid routed networks of the host too, not only on-link ones.
    host.netlink()
        .add_route(&RouteSpec::via(
            "172.17.0.0/16".parse()?,
            "10.77.0.254".parse()?,
            None,
        ))
        .await?;
    let d = ctl
        .new_network("bridge", "dflt", NetworkOptions::default())
        .await?;
    let pool = d.ipv4()[0].pool;
    ensure!(
        pool.to_string() != "172.17.0.0/16",
        "default pool took the routed 172.17.0.0/16"
    );

    // With the opt-in the network is made, on the LAN's own subnet, and says it was allowed.
    let net = ctl
        .new_network(
            "bridge",
            "lan",
            subnet("10.77.0.0/24")?.allow_host_overlap(true),
        )
        .await?;
    ensure!(net.options().allow_host_overlap);
    ensure!(net.ipv4()[0].pool.to_string() == "10.77.0.0/24");
    let rec = ctl
        .store()?
        .get(&format!("network/{}", net.id()))
        .await?
        .context("record")?;
    let rec: serde_json::Value = serde_json::from_slice(&rec.value)?;
    ensure!(rec["allow_host_overlap"] == true, "{rec}");
    // A network cnm made is not "the host's" for the next one: refused by IPAM, not by this.
    let e = ctl
        .new_network("bridge", "lan2", subnet("10.77.0.0/25")?)
        .await
        .expect_err("overlaps the allowed network and lan0");
    ensure!(e.kind() == ErrorKind::Conflict, "{e}");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn duplicate_mac_on_one_network_is_refused_naming_the_holder() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "n1", NetworkOptions::default())
        .await?;
    let other = ctl
        .new_network("bridge", "n2", NetworkOptions::default())
        .await?;
    let mac: MacAddress = "02:42:ac:11:00:99".parse()?;
    let a = net
        .create_endpoint("a", EndpointOptions::default().mac(mac))
        .await?;
    let before = snapshot(&ctl, host.netlink()).await?;
    let e = net
        .create_endpoint("b", EndpointOptions::default().mac(mac))
        .await
        .expect_err("duplicate MAC");
    expect_refused(
        &e,
        ErrorKind::Conflict,
        &["02:42:ac:11:00:99", "endpoint a", "network n1"],
    )?;
    // The MAC the driver picked for an endpoint is held too.
    let c = net.create_endpoint("c", EndpointOptions::default()).await?;
    let c_mac = c.mac().context("driver chose a MAC")?;
    let before_c = snapshot(&ctl, host.netlink()).await?;
    let e = net
        .create_endpoint("d", EndpointOptions::default().mac(c_mac))
        .await
        .expect_err("the driver's MAC of c");
    expect_refused(&e, ErrorKind::Conflict, &[&c_mac.to_string(), "endpoint c"])?;
    ensure!(
        before_c == snapshot(&ctl, host.netlink()).await?,
        "a refused MAC changed state"
    );
    c.delete().await?;
    ensure!(
        before == snapshot(&ctl, host.netlink()).await?,
        "a refused MAC changed state"
    );
    // Another network is another L2 domain; a deleted endpoint gives its MAC back.
    other
        .create_endpoint("a2", EndpointOptions::default().mac(mac))
        .await?;
    a.delete().await?;
    let b = net
        .create_endpoint("b", EndpointOptions::default().mac(mac))
        .await?;
    ensure!(b.mac() == Some(mac));
    // The MAC really is the interface's.
    b.join("cb", []).await?;
    let sb = ctl.sandbox_by_container_id("cb")?;
    let eth0 = sb.netlink().link("eth0").await?.context("eth0")?;
    ensure!(eth0.mac == Some(mac), "{eth0:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_non_unicast_host_ip_for_a_published_port_is_refused() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "n1", NetworkOptions::default())
        .await?;
    let before = snapshot(&ctl, host.netlink()).await?;
    for ip in [
        "255.255.255.255",
        "224.0.0.1",
        "240.0.0.1",
        "ff02::1",
        "::ffff:10.0.0.1",
    ] {
        // Built by hand, past the parser: the controller checks it itself.
        let binding = PortBinding {
            proto: Protocol::Tcp,
            container_port: PortRange::single(80)?,
            host_ip: Some(ip.parse::<IpAddr>()?),
            host_port: Some(PortRange::single(18081)?),
        };
        let e = net
            .create_endpoint("e", EndpointOptions::default().publish(binding))
            .await
            .expect_err(ip);
        expect_refused(&e, ErrorKind::InvalidInput, &["port binding", ip])?;
        // And in docker's -p syntax, as the daemon gets it.
        let spec = if ip.contains(':') {
            format!("[{ip}]:18081:80")
        } else {
            format!("{ip}:18081:80")
        };
        let raw = cnm::RawEndpointOptions {
            port_bindings: vec![spec.clone()],
            ..Default::default()
        };
        let e = EndpointOptions::try_from(raw).expect_err(&spec);
        expect_refused(&e, ErrorKind::InvalidInput, &[ip])?;
    }
    ensure!(
        before == snapshot(&ctl, host.netlink()).await?,
        "a refused host IP changed state"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_mtu_out_of_range_is_refused_before_anything() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let before = snapshot(&ctl, host.netlink()).await?;
    let mtu = "com.docker.network.driver.mtu";
    for (value, ipv6, why) in [
        ("1000", true, "at least 1280"),
        ("1279", true, "at least 1280"),
        ("67", false, "from 68"),
        ("0", false, "from 68"),
        ("65536", false, "65535"),
    ] {
        let mut opts = NetworkOptions::default().driver_option(mtu, value);
        if ipv6 {
            opts = opts.enable_ipv6(true).subnet("fd00:77::/64".parse()?);
        }
        let e = ctl.new_network("bridge", "m", opts).await.expect_err(value);
        expect_refused(
            &e,
            ErrorKind::InvalidInput,
            &[mtu, &format!("{value:?}"), why],
        )?;
    }
    ensure!(
        before == snapshot(&ctl, host.netlink()).await?,
        "a refused MTU changed state"
    );
    // The smallest MTUs that are fine work, on the bridge and the container's interface.
    for (value, ipv6) in [("1280", true), ("576", false)] {
        let mut opts = NetworkOptions::default()
            .driver_option(mtu, value)
            .driver_option("com.docker.network.bridge.name", format!("br-m{value}"));
        if ipv6 {
            opts = opts.enable_ipv6(true).subnet("fd00:77::/64".parse()?);
        }
        let net = ctl
            .new_network("bridge", &format!("m{value}"), opts)
            .await?;
        let br = host
            .netlink()
            .link(&format!("br-m{value}"))
            .await?
            .context("bridge")?;
        ensure!(br.mtu.to_string() == value, "{br:?}");
        let ep = net.create_endpoint("e", EndpointOptions::default()).await?;
        ep.join(&format!("c{value}"), []).await?;
        let sb = ctl.sandbox_by_container_id(&format!("c{value}"))?;
        let eth0 = sb.netlink().link("eth0").await?.context("eth0")?;
        ensure!(eth0.mtu.to_string() == value, "{eth0:?}");
        // Traffic crosses the network at that MTU: a second sandbox reaches the first (over
        // IPv6 on the IPv6 network, which the kernel would have turned off below 1280).
        let peer = net.create_endpoint("p", EndpointOptions::default()).await?;
        peer.join(&format!("p{value}"), []).await?;
        let psb = ctl.sandbox_by_container_id(&format!("p{value}"))?;
        let target = if ipv6 {
            IpAddr::V6(ep.ipv6().context("IPv6 address")?.addr())
        } else {
            IpAddr::V4(ep.ipv4().context("IPv4 address")?.addr())
        };
        let _srv = TcpEchoServer::start(sb.netns(), target, 7000).await?;
        // Generous: the first IPv6 packet waits for neighbour discovery, and one lost
        // solicitation on a loaded machine costs a second's retransmission.
        probe::Probe::new()
            .timeout(Duration::from_secs(5))
            .tcp(psb.netns(), target, 7000)
            .await
            .with_context(|| format!("TCP to {target} at MTU {value}"))?;
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ports_on_a_join_that_does_not_make_the_gateway_are_refused() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let ctl = controller(&host).await?;
    let alpha = ctl
        .new_network("bridge", "alpha", NetworkOptions::default())
        .await?;
    let zeta = ctl
        .new_network("bridge", "zeta", NetworkOptions::default())
        .await?;
    let internal = ctl
        .new_network("bridge", "inside", NetworkOptions::default().internal(true))
        .await?;
    let a = alpha
        .create_endpoint("web-alpha", EndpointOptions::default())
        .await?;
    a.join("web", []).await?;
    let sb = ctl.sandbox_by_container_id("web")?;
    let published = || -> Result<EndpointOptions> {
        let mut o = EndpointOptions::default();
        o.port_bindings.push("18099:8080".parse()?);
        Ok(o)
    };
    let z = zeta.create_endpoint("web-zeta", published()?).await?;
    let i = internal.create_endpoint("web-inside", published()?).await?;
    let sandbox_links = || async {
        Ok::<_, anyhow::Error>(
            sb.netlink()
                .links()
                .await?
                .into_iter()
                .map(|l| l.name)
                .collect::<BTreeSet<_>>(),
        )
    };
    let before = (
        snapshot(&ctl, host.netlink()).await?,
        sandbox_links().await?,
    );

    // alpha keeps the default route (same priority, "alpha" < "zeta"): refused, naming it.
    let e = z.join_sandbox(&sb, []).await.expect_err("not the gateway");
    expect_refused(
        &e,
        ErrorKind::Conflict,
        &[
            "18099:8080/tcp",
            "web-zeta",
            "endpoint web-alpha on network alpha",
            "gateway priority above 0",
        ],
    )?;
    // An internal network never gives the default route: refused for what it is.
    let e = i
        .join_sandbox(&sb, [JoinOption::gateway_priority(100)])
        .await
        .expect_err("internal");
    expect_refused(&e, ErrorKind::InvalidInput, &["18099:8080/tcp", "internal"])?;
    let after = (
        snapshot(&ctl, host.netlink()).await?,
        sandbox_links().await?,
    );
    ensure!(
        before == after,
        "a refused join changed state: {before:#?} {after:#?}"
    );
    ensure!(sb.published_ports().is_empty());
    ensure!(sb.gateway_endpoint().map(|e| e.name().to_owned()) == Some("web-alpha".into()));

    // With a higher priority the join makes it the gateway, and the port answers from outside.
    z.join_sandbox(&sb, [JoinOption::gateway_priority(1)])
        .await?;
    ensure!(sb.gateway_endpoint().map(|e| e.name().to_owned()) == Some("web-zeta".into()));
    ensure!(sb.published_ports().len() == 1);
    let z_ip = IpAddr::V4(z.ipv4().context("zeta address")?.addr());
    let _srv = TcpEchoServer::start(sb.netns(), z_ip, 8080).await?;
    probe::tcp(outside.netns(), outside.host_addr_v4(), 18099)
        .await
        .context("the published port answers through the gateway endpoint")?;
    Ok(())
}
