//! Docker's generic endpoint options on a bridge network, proven in real namespaces: the
//! interface's sysctls (`com.docker.network.endpoint.sysctls`), its name
//! (`com.docker.network.endpoint.ifname`), and unknown keys kept.

mod common;

use std::net::IpAddr;

use anyhow::{Result, ensure};
use cnm_core::EndpointOptions;
use cnm_core::options::{KEY_ENDPOINT_IFNAME, KEY_ENDPOINT_SYSCTLS};
use cnm_sandbox::get_sysctl;
use cnm_testkit::probe;
use cnm_testkit::server::TcpEchoServer;
use cnm_types::ErrorKind;
use common::*;

/// Options, the kind of error they get, and a word the error names.
type Refusal = (
    &'static [(&'static str, &'static str)],
    ErrorKind,
    &'static str,
);

const ANY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

fn with(opts: &[(&str, &str)]) -> EndpointOptions {
    let mut o = EndpointOptions::default();
    for (k, v) in opts {
        o.driver_options.insert((*k).to_owned(), (*v).to_owned());
    }
    o
}

/// The interfaces inside a namespace, by name.
async fn links_in(ns: &cnm_sandbox::NetNs) -> Result<Vec<String>> {
    let mut v: Vec<String> = cnm_sandbox::Netlink::connect(ns)
        .await?
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    v.sort();
    Ok(v)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn endpoint_sysctls_are_set_on_that_interface_inside_the_sandbox() -> Result<()> {
    let w = World::new().await?;
    let a = w.net4("sc-a", "10.36.0.0/24").await?;
    let b = w.net4("sc-b", "10.37.0.0/24").await?;
    // The CLI lowercases IFNAME; both spellings stand for the interface.
    let c = w
        .run(
            &a,
            "c1",
            with(&[(
                KEY_ENDPOINT_SYSCTLS,
                "net.ipv4.conf.IFNAME.log_martians=1,net.ipv4.conf.ifname.arp_ignore=2",
            )]),
        )
        .await?;
    ensure!(get_sysctl(c.ns(), "net.ipv4.conf.eth0.log_martians").await? == "1");
    ensure!(get_sysctl(c.ns(), "net.ipv4.conf.eth0.arp_ignore").await? == "2");
    // A second interface, without the option, has the namespace's defaults.
    let default = get_sysctl(c.ns(), "net.ipv4.conf.default.log_martians").await?;
    ensure!(
        default == "0",
        "a new namespace's default is 0, got {default}"
    );
    let eth1 = b
        .connect(
            "c1-b",
            &c.sb,
            with(&[(KEY_ENDPOINT_SYSCTLS, "net.ipv4.conf.IFNAME.arp_ignore=1")]),
            [],
        )
        .await?;
    ensure!(get_sysctl(c.ns(), "net.ipv4.conf.eth1.log_martians").await? == default);
    ensure!(get_sysctl(c.ns(), "net.ipv4.conf.eth1.arp_ignore").await? == "1");
    ensure!(get_sysctl(c.ns(), "net.ipv4.conf.eth0.arp_ignore").await? == "2");
    // The option is kept as given; the interface still carries traffic.
    ensure!(
        eth1.options().driver_options[KEY_ENDPOINT_SYSCTLS] == "net.ipv4.conf.IFNAME.arp_ignore=1"
    );
    let peer = w.run(&a, "c2", EndpointOptions::default()).await?;
    let _s = TcpEchoServer::start(peer.ns(), ANY4, 80).await?;
    probe::tcp(c.ns(), peer.v4(), 80).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn endpoint_ifname_names_the_interface_and_traffic_flows_over_it() -> Result<()> {
    let w = World::new().await?;
    let a = w.net4("if-a", "10.38.0.0/24").await?;
    let b = w.net4("if-b", "10.39.0.0/24").await?;
    let c = w
        .run(&a, "c1", with(&[(KEY_ENDPOINT_IFNAME, "lan0")]))
        .await?;
    ensure!(links_in(c.ns()).await? == ["lan0", "lo"]);
    let peer = w.run(&a, "c2", EndpointOptions::default()).await?;
    let _s = TcpEchoServer::start(c.ns(), ANY4, 80).await?;
    probe::tcp(peer.ns(), c.v4(), 80).await?;
    // The default route goes out of lan0: the gateway answers through it.
    probe::icmp(c.ns(), "10.38.0.1".parse()?).await?;
    let (_, name) =
        c.sb.endpoints()
            .into_iter()
            .find(|(e, _)| e.id() == c.ep.id())
            .expect("joined");
    ensure!(name.as_ref().map(|n| n.as_str()) == Some("lan0"));
    // The next unnamed join still gets eth0 (no interface has that name).
    b.connect("c1-b", &c.sb, EndpointOptions::default(), [])
        .await?;
    ensure!(links_in(c.ns()).await? == ["eth0", "lan0", "lo"]);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn bad_endpoint_names_and_sysctls_are_refused_leaving_nothing_behind() -> Result<()> {
    let w = World::new().await?;
    let a = w.net4("bad-a", "10.40.0.0/24").await?;
    let b = w.net4("bad-b", "10.41.0.0/24").await?;
    let c = w
        .run(&a, "c1", with(&[(KEY_ENDPOINT_IFNAME, "lan0")]))
        .await?;
    let links = w.host_links().await?;
    let inside = links_in(c.ns()).await?;
    let cases: [Refusal; 6] = [
        // Taken in the sandbox: a conflict, before any effect.
        (
            &[(KEY_ENDPOINT_IFNAME, "lan0")],
            ErrorKind::Conflict,
            "lan0",
        ),
        (
            &[(KEY_ENDPOINT_IFNAME, "much-too-long-name")],
            ErrorKind::InvalidInput,
            "much-too-long-name",
        ),
        (
            &[(KEY_ENDPOINT_IFNAME, "a/b")],
            ErrorKind::InvalidInput,
            "a/b",
        ),
        // Not a per-interface sysctl: refused as dockerd refuses it.
        (
            &[(KEY_ENDPOINT_SYSCTLS, "net.ipv4.ip_forward=1")],
            ErrorKind::InvalidInput,
            "net.ipv4.ip_forward=1",
        ),
        // No such sysctl, and a value the kernel refuses: the join fails and is undone.
        (
            &[(KEY_ENDPOINT_SYSCTLS, "net.ipv4.conf.IFNAME.no_such_knob=1")],
            ErrorKind::NotFound,
            "no_such_knob",
        ),
        (
            &[(
                KEY_ENDPOINT_SYSCTLS,
                "net.ipv4.conf.IFNAME.log_martians=abc",
            )],
            ErrorKind::InvalidInput,
            "log_martians",
        ),
    ];
    for (opts, kind, named) in cases {
        let e = b
            .connect("c1-b", &c.sb, with(opts), [])
            .await
            .expect_err("refused");
        ensure!(
            e.kind() == kind,
            "{opts:?}: {e} is {:?}, not {kind:?}",
            e.kind()
        );
        ensure!(
            e.to_string().contains(named),
            "{opts:?}: {e} does not name {named}"
        );
        ensure!(
            w.host_links().await? == links,
            "{opts:?}: a link was left in the host"
        );
        ensure!(
            links_in(c.ns()).await? == inside,
            "{opts:?}: an interface was left in the sandbox"
        );
        ensure!(b.endpoints().is_empty(), "{opts:?}: the endpoint was left");
        ensure!(c.sb.endpoints().len() == 1);
    }
    // The same network still takes the sandbox afterwards.
    b.connect("c1-b", &c.sb, EndpointOptions::default(), [])
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn unknown_endpoint_options_are_kept_without_effect() -> Result<()> {
    let w = World::new().await?;
    let a = w.net4("unk-a", "10.42.0.0/24").await?;
    let c = w
        .run(&a, "c1", with(&[("foo", "bar"), ("com.example.x", "1")]))
        .await?;
    ensure!(c.ep.options().driver_options["foo"] == "bar");
    ensure!(links_in(c.ns()).await? == ["eth0", "lo"]);
    let e = a
        .create_endpoint("typo", with(&[("com.cnm.endpoint.nope", "1")]))
        .await
        .expect_err("a key in cnm's namespace is a typo");
    ensure!(e.kind() == ErrorKind::InvalidInput && e.to_string().contains("com.cnm.endpoint.nope"));
    Ok(())
}
