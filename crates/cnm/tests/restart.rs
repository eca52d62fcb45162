//! Restart: a controller built on the state and run dirs of a previous one reloads its
//! networks, endpoints and sandboxes (live restore: running sandboxes keep their interfaces,
//! addresses and traffic), and one process owns a state dir.

#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm::{Controller, CoreError, EndpointOptions, NetworkOptions, PoolConfig, Scope};
use cnm_testkit::server::UdpEchoServer;
use cnm_testkit::{TestHost, probe, server::TcpEchoServer};

/// The default store: the embedded durable one, which takes the state dir's lock.
async fn controller(host: &TestHost) -> Result<Controller, CoreError> {
    host.controller_builder()
        .map_err(|e| CoreError::Aborted {
            op: "prepare",
            object: "the test host".into(),
            reason: e.to_string(),
        })?
        .build()
        .await
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn live_restore_keeps_addresses_interfaces_and_traffic() -> Result<()> {
    let host = TestHost::new().await?;
    let links_before = host.netlink().links().await?.len();
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "n1", NetworkOptions::default())
        .await?;
    let mut published = EndpointOptions::default();
    published.port_bindings.push("18090:80".parse()?);
    let e1 = net.create_endpoint("e1", published).await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    e1.join("c1", []).await?;
    e2.join("c2", []).await?;
    let (c1, c2) = (
        ctl.sandbox_by_container_id("c1")?,
        ctl.sandbox_by_container_id("c2")?,
    );
    let a2 = IpAddr::V4(e2.ipv4().context("e2 address")?.addr());
    let server = TcpEchoServer::start(c2.netns(), a2, 7000).await?;
    probe::tcp(c1.netns(), a2, 7000).await?;
    let ports_before = c1.published_ports();
    ensure!(ports_before.len() == 1, "{ports_before:?}");
    let eth0_before = c1.netlink().link("eth0").await?.context("eth0")?;
    let (net_id, created) = (net.id().to_owned(), net.created());
    let held = [e1.ipv4(), e2.ipv4()];
    drop((net, e1, e2, c1, c2));
    drop(ctl);

    // Restart.
    let ctl = controller(&host).await?;
    let net = ctl.network("n1")?;
    ensure!(net.id() == net_id && net.created() == created && net.scope() == Scope::Local);
    let e1 = net.endpoint("e1")?;
    let e2 = net.endpoint("e2")?;
    ensure!([e1.ipv4(), e2.ipv4()] == held, "addresses kept");
    let c1 = ctl.sandbox_by_container_id("c1")?;
    ensure!(e2.sandbox_id().as_deref() == Some(ctl.sandbox_by_container_id("c2")?.id()));
    ensure!(e1.sandbox_id().as_deref() == Some(c1.id()));
    let eth0_after = c1.netlink().link("eth0").await?.context("eth0 after")?;
    ensure!(
        eth0_after.index == eth0_before.index,
        "the interface was adopted, not made again"
    );
    probe::tcp(c1.netns(), a2, 7000).await?;
    ensure!(c1.gateway_endpoint().map(|e| e.id().to_owned()) == Some(e1.id().to_owned()));
    // Its published port is published again, with the same host port (the previous
    // controller's reservation is gone with it).
    let ports = c1.published_ports();
    ensure!(
        ports.len() == 1 && ports[0].host_port.map(|p| p.start) == Some(18090),
        "{ports:?}"
    );

    // A new endpoint never gets a held address; it joins and talks like the others.
    let e3 = net
        .create_endpoint("e3", EndpointOptions::default())
        .await?;
    let gw = net.ipv4().first().and_then(|p| p.gateway);
    ensure!(
        !held.contains(&e3.ipv4()) && e3.ipv4() != gw,
        "{:?}",
        e3.ipv4()
    );
    e3.join("c3", []).await?;
    probe::tcp(ctl.sandbox_by_container_id("c3")?.netns(), a2, 7000).await?;
    drop(server);

    // Everything goes cleanly after the restart.
    for sb in ctl.sandboxes() {
        sb.delete().await?;
    }
    for ep in net.endpoints() {
        ep.delete().await?;
    }
    net.delete().await?;
    ensure!(host.netlink().links().await?.len() == links_before);
    ensure!(ctl.store()?.list("").await?.is_empty());
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn one_controller_per_state_dir_the_second_is_refused_naming_the_lock() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let err = controller(&host)
        .await
        .expect_err("a second controller on the state dir must be refused");
    ensure!(err.kind() == cnm::cnm_types::ErrorKind::Conflict, "{err}");
    let text = format!("{:#}", anyhow::Error::from(err));
    let lock = host.state_dir().join(cnm::cnm_store::LOCK_FILE);
    ensure!(text.contains(&lock.display().to_string()), "{text}");
    ensure!(
        text.contains(&format!(
            "held by this process (pid {})",
            std::process::id()
        )),
        "{text}"
    );
    // The top-level message says what is wrong, not only the chain below it.
    ensure!(err_top_mentions_lock(&text), "{text}");
    // A handle held past the controller does not keep the lock.
    let net = ctl
        .new_network("bridge", "n", NetworkOptions::default())
        .await?;
    ctl.shutdown().await?;
    let again = controller(&host)
        .await
        .context("free once the first is shut down, its handles still held")?;
    ensure!(again.network("n")?.id() == net.id());
    drop(again);
    controller(&host)
        .await
        .context("free once the second is dropped")?;
    Ok(())
}

fn err_top_mentions_lock(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|l| l.contains("state-directory lock"))
}

/// Runs a program inside `ns` (a thread there forks it, so the child inherits the namespace).
async fn run_in(ns: &cnm::cnm_sandbox::NetNs, args: &[&str]) -> Result<String> {
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let shown = owned.join(" ");
    let out = ns
        .run(move || {
            std::process::Command::new(&owned[0])
                .args(&owned[1..])
                .output()
        })
        .await?
        .with_context(|| format!("failed to run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fail closed: while a restarted controller restores its networks one by one, the previous
/// run's firewall keeps filtering, and the restored one replaces it in one transaction. A UDP
/// stream at several thousand packets per second to a port the container did not publish
/// (from an outside that has a route to the container) delivers nothing across ten restarts,
/// and the published port answers after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn ten_restarts_let_no_packet_through_to_an_unpublished_port() -> Result<()> {
    let host = TestHost::new().await?;
    let out = host.outside().await?;
    let (out_ns, out_host) = (out.netns().clone(), out.host_addr_v4());
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network(
            "bridge",
            "steady",
            NetworkOptions::default().subnet("10.77.0.0/24".parse()?),
        )
        .await?;
    let mut published = EndpointOptions::default();
    published.port_bindings.push("18600:80".parse()?);
    let ep = net.create_endpoint("c", published).await?;
    ep.join("c", []).await?;
    let sb = ctl.sandbox_by_container_id("c")?;
    let addr = IpAddr::V4(ep.ipv4().context("an address")?.addr());
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let _web = TcpEchoServer::start(sb.netns(), any, 80).await?;
    let victim = UdpEchoServer::start(sb.netns(), any, 9_999).await?;
    // the outside knows a route to the container subnet: only the firewall stands between
    run_in(
        &out_ns,
        &[
            "ip",
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            &out_host.to_string(),
        ],
    )
    .await?;
    probe::tcp(&out_ns, out_host, 18_600).await?;
    // the receiver works: a datagram from the host itself arrives
    probe::udp(host.netns(), addr, 9_999).await?;
    let control = victim.peers().len();
    drop((net, ep, sb));

    let sock = out_ns
        .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
        .await??;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let to = SocketAddr::new(addr, 9_999);
            // several thousand packets per second, paced by the clock
            let gap = Duration::from_micros(200);
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                if sock.send_to(b"leak?", to).is_ok() {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                next += gap;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        })
    };
    let started = Instant::now();
    let mut ctl = ctl;
    for round in 1..=10 {
        drop(ctl);
        ctl = controller(&host).await?;
        probe::tcp(&out_ns, out_host, 18_600)
            .await
            .with_context(|| format!("published port after restart {round}"))?;
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("the sender thread does not panic");
    let elapsed = started.elapsed();
    let sent = sent.load(Ordering::SeqCst);
    let rate = sent as f64 / elapsed.as_secs_f64();
    let leaked = victim.peers().len() - control;
    eprintln!(
        "10 restarts in {elapsed:?}: {sent} datagrams ({rate:.0}/s) to an unpublished port, {leaked} delivered"
    );
    ensure!(rate > 2000.0, "the stream ran at {rate:.0} packets/s only");
    ensure!(
        leaked == 0,
        "{leaked} datagrams got through during the restarts"
    );
    drop(ctl);
    Ok(())
}

/// Connects from `from` to a new echo server on `server`'s `addr`, and returns the source
/// address the server saw.
async fn seen_from(
    from: &cnm::cnm_sandbox::NetNs,
    server: &cnm::cnm_sandbox::NetNs,
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

/// Docker's gateway modes per family (IPv4 `nat` beside IPv6 `routed`) come back from the
/// stored record after a restart: the same ruleset, and each family still follows its own mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn per_family_gateway_modes_come_back_after_a_restart() -> Result<()> {
    const MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
    const MODE_V6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
    let host = TestHost::new().await?;
    // a peer whose default routes (both families) go through the host
    let lan = host.lan(1).await?;
    let ctl = controller(&host).await?;
    let opts = NetworkOptions::default()
        .enable_ipv6(true)
        .pool(PoolConfig::new("10.44.0.0/24".parse()?))
        .pool(PoolConfig::new("fd00:44::/64".parse()?))
        .driver_option(MODE_V4, "nat")
        .driver_option(MODE_V6, "routed");
    let net = ctl.new_network("bridge", "mixed", opts).await?;
    let mut published = EndpointOptions::default();
    published.port_bindings.push("18098:80".parse()?);
    let ep = net.create_endpoint("web", published).await?;
    ep.join("web", []).await?;
    let ns = ctl.sandbox_by_container_id("web")?.netns().clone();
    let a4 = IpAddr::V4(ep.ipv4().context("IPv4 address")?.addr());
    let a6 = IpAddr::V6(ep.ipv6().context("IPv6 address")?.addr());
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6 = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    let _s4 = TcpEchoServer::start(&ns, any4, 80).await?;
    let _s6 = TcpEchoServer::start(&ns, any6, 80).await?;
    let _u6 = TcpEchoServer::start(&ns, any6, 81).await?;
    let mut round = 0u16;
    let mut check = async |when: &str| {
        round += 1;
        probe::tcp(lan.netns(), a6, 80)
            .await
            .with_context(|| format!("{when}: routed IPv6 reaches the published port directly"))?;
        ensure!(
            probe::tcp(lan.netns(), a6, 81).await.is_err(),
            "{when}: routed IPv6 must not open an unpublished port"
        );
        ensure!(
            probe::tcp(lan.netns(), a4, 80).await.is_err(),
            "{when}: nat IPv4 must drop direct access to the container's address"
        );
        probe::tcp(lan.netns(), lan.host_addr_v4(), 18098)
            .await
            .with_context(|| format!("{when}: the published port through the host's IPv4"))?;
        let seen4 = seen_from(&ns, lan.netns(), lan.addr_v4(), 7110 + round).await?;
        ensure!(
            seen4 == lan.host_addr_v4(),
            "{when}: IPv4 seen from {seen4}"
        );
        let seen6 = seen_from(&ns, lan.netns(), lan.addr_v6(), 7120 + round).await?;
        ensure!(
            seen6 == a6,
            "{when}: IPv6 seen from {seen6}, not the container's {a6}"
        );
        anyhow::Ok(())
    };
    check("before the restart").await?;
    let before = run_in(host.netns(), &["nft", "list", "ruleset"]).await?;
    drop((net, ep));
    drop(ctl);

    // Restart.
    let ctl = controller(&host).await?;
    let net = ctl.network("mixed")?;
    let stored = &net.options().driver_options;
    ensure!(
        stored.get(MODE_V4).map(String::as_str) == Some("nat")
            && stored.get(MODE_V6).map(String::as_str) == Some("routed"),
        "the options as given: {stored:?}"
    );
    let after = run_in(host.netns(), &["nft", "list", "ruleset"]).await?;
    ensure!(
        after == before,
        "the restored ruleset differs:\n{before}\n---\n{after}"
    );
    check("after the restart").await?;
    Ok(())
}

/// The host-side veth of an endpoint (named after it, or marked with its alias).
async fn veth_of(host: &TestHost, endpoint_id: &str) -> Result<cnm::cnm_sandbox::Link> {
    let (name, mark) = (
        cnm_driver_bridge::endpoint_veth_name(endpoint_id),
        format!("cnm:{endpoint_id}"),
    );
    host.netlink()
        .links()
        .await?
        .into_iter()
        .find(|l| l.name == name || l.alias.as_deref() == Some(mark.as_str()))
        .with_context(|| format!("the veth of endpoint {endpoint_id}"))
}

/// The bridge driver names an endpoint's veth after it (no alias: setting one costs the kernel a
/// walk of the host's IPv6 routes per join). State left by an older version, whose veths carry
/// the alias `cnm:<endpoint id>` and a random name, is adopted all the same; a veth on our bridge
/// that no endpoint owns is swept, even when it has an endpoint-like name.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn veths_named_by_endpoint_or_marked_by_an_older_version_are_adopted() -> Result<()> {
    use cnm::cnm_sandbox::{LinkKind, LinkSpec};
    use cnm::cnm_types::IfName;
    let host = TestHost::new().await?;
    let links_before = host.netlink().links().await?.len();
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "n1", NetworkOptions::default())
        .await?;
    let e1 = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    e1.join("c1", []).await?;
    e2.join("c2", []).await?;
    let new_style = veth_of(&host, e2.id()).await?;
    ensure!(
        new_style.name == cnm_driver_bridge::endpoint_veth_name(e2.id())
            && new_style.alias.is_none(),
        "a new veth is named after its endpoint and carries no alias: {new_style:?}"
    );
    // What an older version left: e1's veth with a random name, marked by alias.
    let old = veth_of(&host, e1.id()).await?;
    let nl = host.netlink();
    nl.set_down(old.index).await?;
    nl.rename(old.index, &IfName::new("veth0a1b2c3")?).await?;
    nl.set_alias(old.index, &format!("cnm:{}", e1.id())).await?;
    nl.set_up(old.index).await?;
    let bridge = old.master.context("e1's veth is on the bridge")?;
    // A veth on our bridge no endpoint owns, named as an endpoint would be.
    let mut stray = LinkSpec::new(
        IfName::new("veth0123456789a")?,
        LinkKind::Veth {
            peer_name: IfName::new("stray1")?,
            peer_ns: None,
            peer_mac: None,
            peer_mtu: None,
            peer_up: false,
        },
    );
    stray.master = Some(bridge);
    nl.create_link(&stray).await?;
    let (a2, e1_id, e2_id) = (
        IpAddr::V4(e2.ipv4().context("e2 address")?.addr()),
        e1.id().to_owned(),
        e2.id().to_owned(),
    );
    drop((net, e1, e2));
    drop(ctl);

    let ctl = controller(&host).await?;
    let adopted = veth_of(&host, &e1_id).await?;
    ensure!(
        adopted.index == old.index && adopted.name == "veth0a1b2c3",
        "the older version's veth was adopted, not made again: {adopted:?}"
    );
    ensure!(veth_of(&host, &e2_id).await?.index == new_style.index);
    ensure!(
        nl.link("veth0123456789a").await?.is_none() && nl.link("stray1").await?.is_none(),
        "the veth no endpoint owns was swept"
    );
    let c2 = ctl.sandbox_by_container_id("c2")?;
    let server = TcpEchoServer::start(c2.netns(), a2, 7000).await?;
    probe::tcp(ctl.sandbox_by_container_id("c1")?.netns(), a2, 7000).await?;
    drop(server);
    // Both leave cleanly: each one's veth goes.
    let net = ctl.network("n1")?;
    for sb in ctl.sandboxes() {
        sb.delete().await?;
    }
    for ep in net.endpoints() {
        ep.delete().await?;
    }
    net.delete().await?;
    ensure!(host.netlink().links().await?.len() == links_before);
    Ok(())
}

/// When the name an endpoint's veth would get is taken by a link not ours, the join takes a
/// random name and marks the veth by alias; the restart adopts it by that alias, the other link
/// is never touched, and the leave deletes only ours.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_taken_veth_name_falls_back_to_a_random_name_marked_by_alias() -> Result<()> {
    use cnm::cnm_sandbox::{LinkKind, LinkSpec};
    use cnm::cnm_types::IfName;
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "n1", NetworkOptions::default())
        .await?;
    let e1 = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    let taken = cnm_driver_bridge::endpoint_veth_name(e1.id());
    let nl = host.netlink();
    nl.create_link(&LinkSpec::new(
        IfName::new(taken.clone())?,
        LinkKind::Veth {
            peer_name: IfName::new("foreign1")?,
            peer_ns: None,
            peer_mac: None,
            peer_mtu: None,
            peer_up: false,
        },
    ))
    .await?;
    let foreign = nl.link(&taken).await?.context("the foreign link")?;
    e1.join("c1", []).await?;
    e2.join("c2", []).await?;
    let ours = veth_of_by_alias(&host, e1.id()).await?;
    ensure!(
        ours.name != taken && ours.master.is_some(),
        "e1's veth has another name and is on the bridge: {ours:?}"
    );
    let a2 = IpAddr::V4(e2.ipv4().context("e2 address")?.addr());
    let server = TcpEchoServer::start(ctl.sandbox_by_container_id("c2")?.netns(), a2, 7000).await?;
    probe::tcp(ctl.sandbox_by_container_id("c1")?.netns(), a2, 7000).await?;
    drop(server);
    let e1_id = e1.id().to_owned();
    drop((net, e1, e2));
    drop(ctl);

    let ctl = controller(&host).await?;
    ensure!(
        veth_of_by_alias(&host, &e1_id).await?.index == ours.index,
        "adopted by its alias"
    );
    ensure!(nl.link(&taken).await?.map(|l| l.index) == Some(foreign.index));
    ctl.sandbox_by_container_id("c1")?.delete().await?;
    ensure!(
        nl.link(&ours.name).await?.is_none(),
        "the leave deleted our veth"
    );
    ensure!(
        nl.link(&taken).await?.map(|l| l.index) == Some(foreign.index),
        "the foreign link is untouched"
    );
    nl.delete_link(foreign.index).await?;
    Ok(())
}

/// The link marked with endpoint `endpoint_id`'s alias.
async fn veth_of_by_alias(host: &TestHost, endpoint_id: &str) -> Result<cnm::cnm_sandbox::Link> {
    let mark = format!("cnm:{endpoint_id}");
    host.netlink()
        .links()
        .await?
        .into_iter()
        .find(|l| l.alias.as_deref() == Some(mark.as_str()))
        .with_context(|| format!("a link marked {mark}"))
}

/// Issue 15: a restart with many endpoints publishing ports goes to the firewall a bounded
/// number of times, not once per endpoint (guards and published ports each in one batch; the
/// restored ruleset in one transaction), leaves the same ruleset as before, and every
/// sandbox's published port carries traffic after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn a_restart_with_200_published_endpoints_makes_a_few_firewall_trips() -> Result<()> {
    const COUNT: u16 = 200;
    const FIRST_PORT: u16 = 21_000;
    let host = TestHost::new().await?;
    let out = host.outside().await?;
    let (out_ns, out_host) = (out.netns().clone(), out.host_addr_v4());
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network(
            "bridge",
            "many",
            NetworkOptions::default().subnet("10.78.0.0/22".parse()?),
        )
        .await?;
    for i in 0..COUNT {
        let mut published = EndpointOptions::default();
        published
            .port_bindings
            .push(format!("{}:80", FIRST_PORT + i).parse()?);
        let ep = net.create_endpoint(&format!("e{i}"), published).await?;
        ep.join(&format!("c{i}"), []).await?;
    }
    let rules_before = run_in(host.netns(), &["nft", "-s", "list", "ruleset"]).await?;
    drop(net);
    drop(ctl);

    let ctl = controller(&host).await?;
    let fw = cnm_driver_bridge::BridgeDriver::instance_for(host.netns())
        .context("the controller made a bridge driver")?
        .firewall_for_tests()
        .await?;
    let (operations, transactions) = (fw.operations(), fw.transactions());
    eprintln!(
        "restart with {COUNT} published endpoints: {operations} firewall operations, \
         {transactions} transactions"
    );
    ensure!(
        transactions <= 2,
        "{transactions} firewall transactions for a restart (one expected)"
    );
    ensure!(
        operations <= 10,
        "{operations} firewall operations for a restart with {COUNT} endpoints: one per endpoint?"
    );
    let rules_after = run_in(host.netns(), &["nft", "-s", "list", "ruleset"]).await?;
    ensure!(
        rules_after == rules_before,
        "the ruleset changed across the restart:\n--- before\n{rules_before}\n--- after\n{rules_after}"
    );
    // Every sandbox's published port was published again with its host port; the first,
    // the last and one between carry traffic from outside.
    let net = ctl.network("many")?;
    ensure!(net.endpoints().len() == usize::from(COUNT));
    for i in 0..COUNT {
        let sb = ctl.sandbox_by_container_id(&format!("c{i}"))?;
        let ports = sb.published_ports();
        ensure!(
            ports.len() == 1 && ports[0].host_port.map(|p| p.start) == Some(FIRST_PORT + i),
            "c{i}: {ports:?}"
        );
    }
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for i in [0, COUNT / 2, COUNT - 1] {
        let sb = ctl.sandbox_by_container_id(&format!("c{i}"))?;
        let _web = TcpEchoServer::start(sb.netns(), any, 80).await?;
        probe::tcp(&out_ns, out_host, FIRST_PORT + i)
            .await
            .with_context(|| format!("published port {} of c{i}", FIRST_PORT + i))?;
    }
    for sb in ctl.sandboxes() {
        sb.delete().await?;
    }
    for ep in net.endpoints() {
        ep.delete().await?;
    }
    net.delete().await?;
    Ok(())
}
