//! The macvlan and ipvlan drivers proven with real packets, through the controller, on a veth
//! parent inside a throwaway host namespace (never the machine's interfaces).
//!
//! The parent is the host's end of a TestHost LAN (`cnm-lanN`), whose other end is a "LAN
//! machine" at 203.0.113.(64N+2): what a macvlan endpoint's frames reach when they leave
//! through the parent.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cnm_core::cnm_sandbox::{IpFamily, Netlink};
use cnm_core::{Controller, EndpointOptions, Network, NetworkOptions, PoolConfig, Sandbox};
use cnm_driver_macvlan as _;
use cnm_driver_macvlan::MacvlanError;
// The durable store is the controller's default once linked: a restart reloads.
use cnm_store as _;
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};
use cnm_types::ErrorKind;

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// LAN `index`'s subnet (a /26 of 203.0.113.0/24).
fn lan_subnet(index: u8) -> String {
    format!("203.0.113.{}/26", 64 * index)
}

/// An address of LAN `index`'s subnet, `n` past its start (host is +1, the LAN machine +2).
fn lan_addr(index: u8, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 64 * index + n)
}

async fn network(
    ctl: &Controller,
    driver: &str,
    name: &str,
    subnet: &str,
    opts: &[(&str, &str)],
) -> Result<Network, cnm_core::CoreError> {
    let mut o = NetworkOptions::default().pool(PoolConfig::new(subnet.parse().expect("subnet")));
    for (k, v) in opts {
        o = o.driver_option(*k, *v);
    }
    ctl.new_network(driver, name, o).await
}

/// A container on `net` at `ip`.
async fn run(net: &Network, name: &str, ip: Ipv4Addr) -> Result<Sandbox> {
    let ep = net
        .create_endpoint(name, EndpointOptions::default().ipv4(ip))
        .await?;
    Ok(ep.join(name, []).await?)
}

async fn sandbox_link(sb: &Sandbox, name: &str) -> Result<cnm_core::cnm_sandbox::Link> {
    sb.netlink()
        .link(name)
        .await?
        .with_context(|| format!("{name} in sandbox"))
}

fn quick() -> probe::Probe {
    probe::Probe::new().timeout(Duration::from_millis(700))
}

async fn link_count(nl: &Netlink) -> Result<usize> {
    Ok(nl.links().await?.len())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn two_macvlan_sandboxes_reach_each_other_and_the_lan_with_ipv6_off_and_no_gateway()
-> Result<()> {
    let host = TestHost::new().await?;
    let lan = host.lan(1).await?;
    let ctl = host.memory_controller().await?;
    let net = network(
        &ctl,
        "macvlan",
        "mv",
        &lan_subnet(1),
        &[("parent", "cnm-lan1")],
    )
    .await?;
    let a = run(&net, "a", lan_addr(1, 10)).await?;
    let b = run(&net, "b", lan_addr(1, 11)).await?;
    let _s = TcpEchoServer::start(b.netns(), ANY4, 80).await?;
    probe::icmp(a.netns(), lan_addr(1, 11).into()).await?;
    probe::tcp(a.netns(), lan_addr(1, 11).into(), 80).await?;
    // Out through the parent, on its LAN.
    probe::icmp(a.netns(), lan.addr_v4()).await?;
    probe::icmp(lan.netns(), lan_addr(1, 10).into()).await?;

    let eth0 = sandbox_link(&a, "eth0").await?;
    assert_eq!(eth0.kind.as_deref(), Some("macvlan"));
    let parent = host.netlink().link("cnm-lan1").await?.context("parent")?;
    assert_eq!(eth0.mtu, parent.mtu, "the parent's MTU");
    // CVE-2024-32473: an IPv4-only endpoint's interface has no IPv6, not even link-local.
    let v6 = a.netlink().addresses(Some(eth0.index)).await?;
    ensure!(
        v6.iter().all(|x| x.addr.addr().is_ipv4()),
        "IPv6 on eth0: {v6:?}"
    );
    let disabled =
        cnm_core::cnm_sandbox::get_sysctl(a.netns(), "net.ipv6.conf.eth0.disable_ipv6").await?;
    assert_eq!(disabled.trim(), "1");
    // No gateway given, none made: no default route.
    let routes = a.netlink().routes(IpFamily::V4).await?;
    ensure!(
        routes.iter().all(|r| r.destination.prefix_len() != 0),
        "no default route without --gateway: {routes:?}"
    );
    a.delete_with_endpoints().await?;
    b.delete_with_endpoints().await?;
    net.delete().await?;
    ensure!(
        host.netlink().link("cnm-lan1").await?.is_some(),
        "the user's parent stays"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_gateway_the_user_names_is_the_default_route() -> Result<()> {
    let host = TestHost::new().await?;
    let lan = host.lan(1).await?;
    let ctl = host.memory_controller().await?;
    let gw = lan.addr_v4();
    let opts = NetworkOptions::default()
        .pool(PoolConfig::new(lan_subnet(1).parse()?).with_gateway(gw)?)
        .driver_option("parent", "cnm-lan1");
    let net = ctl.new_network("macvlan", "mv", opts).await?;
    let a = run(&net, "a", lan_addr(1, 10)).await?;
    let routes = a.netlink().routes(IpFamily::V4).await?;
    ensure!(
        routes
            .iter()
            .any(|r| r.destination.prefix_len() == 0 && r.gateway == Some(gw)),
        "default route via {gw}: {routes:?}"
    );
    // The LAN machine routes back to the container through its own on-link route.
    probe::icmp(a.netns(), gw).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn private_mode_blocks_sandbox_to_sandbox_bridge_mode_allows() -> Result<()> {
    let host = TestHost::new().await?;
    let lan1 = host.lan(1).await?;
    let _lan2 = host.lan(2).await?;
    let ctl = host.memory_controller().await?;
    let private = network(
        &ctl,
        "macvlan",
        "private",
        &lan_subnet(1),
        &[("parent", "cnm-lan1"), ("macvlan_mode", "private")],
    )
    .await?;
    let bridge = network(
        &ctl,
        "macvlan",
        "bridge",
        &lan_subnet(2),
        &[("parent", "cnm-lan2"), ("macvlan_mode", "bridge")],
    )
    .await?;
    let p1 = run(&private, "p1", lan_addr(1, 10)).await?;
    let _p2 = run(&private, "p2", lan_addr(1, 11)).await?;
    let b1 = run(&bridge, "b1", lan_addr(2, 10)).await?;
    let _b2 = run(&bridge, "b2", lan_addr(2, 11)).await?;
    probe::icmp(b1.netns(), lan_addr(2, 11).into()).await?;
    ensure!(
        quick()
            .icmp(p1.netns(), lan_addr(1, 11).into())
            .await
            .is_err(),
        "private mode must block sandbox to sandbox"
    );
    // Private still reaches the parent's LAN.
    probe::icmp(p1.netns(), lan1.addr_v4()).await?;
    Ok(())
}

/// VEPA sends everything, sandbox to sandbox too, out through the parent, to come back only if
/// the adjacent switch reflects it (a hairpin): with a plain LAN machine on the wire, the
/// sandboxes do not reach each other but reach the LAN. Passthru gives the parent to one
/// endpoint: a second is refused, with nothing left.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn vepa_goes_through_the_parent_and_passthru_takes_one_endpoint() -> Result<()> {
    let host = TestHost::new().await?;
    let lan1 = host.lan(1).await?;
    let lan2 = host.lan(2).await?;
    let ctl = host.memory_controller().await?;
    let vepa = network(
        &ctl,
        "macvlan",
        "vepa",
        &lan_subnet(1),
        &[("parent", "cnm-lan1"), ("macvlan_mode", "vepa")],
    )
    .await?;
    let v1 = run(&vepa, "v1", lan_addr(1, 10)).await?;
    let _v2 = run(&vepa, "v2", lan_addr(1, 11)).await?;
    probe::icmp(v1.netns(), lan1.addr_v4()).await?;
    ensure!(
        quick()
            .icmp(v1.netns(), lan_addr(1, 11).into())
            .await
            .is_err(),
        "vepa without a hairpin switch must not reach its sibling"
    );

    let pt = network(
        &ctl,
        "macvlan",
        "pt",
        &lan_subnet(2),
        &[("parent", "cnm-lan2"), ("macvlan_mode", "passthru")],
    )
    .await?;
    let one = run(&pt, "one", lan_addr(2, 10)).await?;
    probe::icmp(one.netns(), lan2.addr_v4()).await?;
    let ep = pt
        .create_endpoint("two", EndpointOptions::default().ipv4(lan_addr(2, 11)))
        .await?;
    let e = ep
        .join("two", [])
        .await
        .expect_err("passthru: one endpoint");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    ensure!(e.to_string().contains("passthru"), "{e}");
    ensure!(ctl.sandbox_by_container_id("two").is_err(), "nothing left");
    // A second network on a passthru parent is refused, in Docker's words.
    let e = network(
        &ctl,
        "macvlan",
        "pt2",
        "10.99.0.0/24",
        &[("parent", "cnm-lan2")],
    )
    .await
    .expect_err("parent in passthru");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    ensure!(e.to_string().contains("in mode passthru"), "{e}");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn two_networks_on_one_parent_may_not_overlap_and_mtu_is_bounded_by_the_parent() -> Result<()>
{
    let host = TestHost::new().await?;
    let _lan = host.lan(1).await?;
    let ctl = host.memory_controller().await?;
    let _a = network(
        &ctl,
        "macvlan",
        "a",
        "10.50.0.0/24",
        &[("parent", "cnm-lan1")],
    )
    .await?;
    let e = network(
        &ctl,
        "macvlan",
        "b",
        "10.50.0.128/25",
        &[("parent", "cnm-lan1")],
    )
    .await
    .expect_err("overlap on one parent");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    ensure!(e.to_string().contains("overlaps"), "{e}");
    network(
        &ctl,
        "macvlan",
        "c",
        "10.51.0.0/24",
        &[("parent", "cnm-lan1")],
    )
    .await?;

    let parent = host.netlink().link("cnm-lan1").await?.context("parent")?;
    host.netlink().set_mtu(parent.index, 1400).await?;
    let e = network(
        &ctl,
        "macvlan",
        "big",
        "10.52.0.0/24",
        &[
            ("parent", "cnm-lan1"),
            ("com.docker.network.driver.mtu", "1450"),
        ],
    )
    .await
    .expect_err("MTU above the parent's");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    ensure!(e.to_string().contains("1400"), "{e}");
    let small = network(
        &ctl,
        "macvlan",
        "small",
        "10.53.0.0/24",
        &[
            ("parent", "cnm-lan1"),
            ("com.docker.network.driver.mtu", "1300"),
        ],
    )
    .await?;
    let s = run(&small, "s", "10.53.0.5".parse()?).await?;
    assert_eq!(sandbox_link(&s, "eth0").await?.mtu, 1300);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn no_parent_gives_an_internal_network_on_a_link_made_for_it() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.memory_controller().await?;
    let net = network(&ctl, "macvlan", "inner", "10.60.0.0/24", &[]).await?;
    let made = format!("dm-{}", &net.id()[..12]);
    let link = host.netlink().link(&made).await?.context("parent made")?;
    assert_eq!(link.kind.as_deref(), Some("veth"));
    let a = run(&net, "a", "10.60.0.2".parse()?).await?;
    let b = run(&net, "b", "10.60.0.3".parse()?).await?;
    let _s = TcpEchoServer::start(b.netns(), ANY4, 80).await?;
    probe::tcp(a.netns(), "10.60.0.3".parse()?, 80).await?;
    a.delete_with_endpoints().await?;
    b.delete_with_endpoints().await?;
    net.delete().await?;
    ensure!(
        host.netlink().link(&made).await?.is_none(),
        "removed with the network"
    );
    ensure!(
        host.netlink()
            .link(&format!("dp-{}", &net.id()[..12]))
            .await?
            .is_none()
    );
    Ok(())
}

/// This kernel has no 8021q: a missing `parent.VLAN` cannot be made. The network is refused
/// at once with a typed `Unsupported` naming the feature, and leaves no link and no network.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn vlan_parent_is_made_or_refused_as_unsupported_leaving_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let _lan = host.lan(1).await?;
    let ctl = host.memory_controller().await?;
    let before = link_count(host.netlink()).await?;
    match network(
        &ctl,
        "macvlan",
        "v",
        "10.70.0.0/24",
        &[("parent", "cnm-lan1.10")],
    )
    .await
    {
        Ok(net) => {
            // A kernel with 8021q: made, and removed with the network.
            let l = host.netlink().link("cnm-lan1.10").await?.context("vlan")?;
            assert_eq!(l.kind.as_deref(), Some("vlan"));
            net.delete().await?;
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            ensure!(e.to_string().contains("8021q"), "names the feature: {e}");
            let typed = std::error::Error::source(&e)
                .and_then(|d| d.downcast_ref::<cnm_core::DriverError>())
                .and_then(|d| d.inner().downcast_ref::<MacvlanError>());
            ensure!(
                matches!(
                    typed,
                    Some(MacvlanError::Unsupported {
                        feature: "8021q",
                        ..
                    })
                ),
                "typed: {e:?}"
            );
        }
    }
    ensure!(host.netlink().link("cnm-lan1.10").await?.is_none());
    assert_eq!(link_count(host.netlink()).await?, before, "no link left");
    ensure!(ctl.network("v").is_err(), "no network left");
    Ok(())
}

/// This kernel has no ipvlan: each mode is refused at once (a probe on the parent), typed,
/// naming ipvlan, leaving nothing; where the kernel has it, two endpoints talk.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ipvlan_works_or_is_refused_as_unsupported_leaving_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let _lan = host.lan(1).await?;
    let ctl = host.memory_controller().await?;
    let before = link_count(host.netlink()).await?;
    for mode in ["l2", "l3", "l3s"] {
        match network(
            &ctl,
            "ipvlan",
            "iv",
            "10.80.0.0/24",
            &[("parent", "cnm-lan1"), ("ipvlan_mode", mode)],
        )
        .await
        {
            Ok(net) => {
                let a = run(&net, "a", "10.80.0.2".parse()?).await?;
                let b = run(&net, "b", "10.80.0.3".parse()?).await?;
                probe::icmp(a.netns(), "10.80.0.3".parse()?).await?;
                a.delete_with_endpoints().await?;
                b.delete_with_endpoints().await?;
                net.delete().await?;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
                ensure!(e.to_string().contains("ipvlan"), "names the feature: {e}");
            }
        }
        assert_eq!(link_count(host.netlink()).await?, before, "no link left");
        ensure!(ctl.network("iv").is_err(), "no network left");
    }
    Ok(())
}

/// Links the drivers made for networks without a record (a crash between the kernel work and
/// the record) are swept on restart; the user's parent is not.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn restart_adopts_an_internal_parent_and_keeps_traffic() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    let net = network(&ctl, "macvlan", "inner", "10.61.0.0/24", &[]).await?;
    let made = format!("dm-{}", &net.id()[..12]);
    let a = run(&net, "a", "10.61.0.2".parse()?).await?;
    let _b = run(&net, "b", "10.61.0.3".parse()?).await?;
    let ctl = host.restart(ctl).await?;
    ensure!(host.netlink().link(&made).await?.is_some(), "adopted");
    probe::icmp(a.netns(), "10.61.0.3".parse()?).await?;
    let net = ctl.network("inner")?;
    for sb in ctl.sandboxes() {
        sb.delete_with_endpoints().await?;
    }
    net.delete().await?;
    ensure!(host.netlink().link(&made).await?.is_none());
    Ok(())
}
