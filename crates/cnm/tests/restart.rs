//! Restart: a controller built on the state and run dirs of a previous one reloads its
//! networks, endpoints and sandboxes (live restore: running sandboxes keep their interfaces,
//! addresses and traffic), and one process owns a state dir.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use cnm::{Controller, CoreError, EndpointOptions, NetworkOptions, Scope};
use cnm_testkit::{TestHost, probe, server::TcpEchoServer};

/// The default store: the embedded durable one, which takes the state dir's lock.
async fn controller(host: &TestHost) -> Result<Controller, CoreError> {
    Controller::builder()
        .host_netns(host.netns().clone())
        .run_dir(host.run_dir())
        .state_dir(host.state_dir())
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
    let ports_before = c1.published_ports().await;
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
    ensure!(e2.sandbox_id().await.as_deref() == Some(ctl.sandbox_by_container_id("c2")?.id()));
    ensure!(e1.sandbox_id().await.as_deref() == Some(c1.id()));
    let eth0_after = c1.netlink().link("eth0").await?.context("eth0 after")?;
    ensure!(
        eth0_after.index == eth0_before.index,
        "the interface was adopted, not made again"
    );
    probe::tcp(c1.netns(), a2, 7000).await?;
    ensure!(c1.gateway_endpoint().await.map(|e| e.id().to_owned()) == Some(e1.id().to_owned()));
    // Its published port is published again, with the same host port (the previous
    // controller's reservation is gone with it).
    let ports = c1.published_ports().await;
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
    ensure!(ctl.store().list("").await?.is_empty());
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
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    drop(ctl);
    controller(&host)
        .await
        .context("free once the first is dropped")?;
    Ok(())
}
