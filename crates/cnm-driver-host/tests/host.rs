//! The host driver through the controller, on a throwaway "host" namespace: a sandbox on the
//! host network is that namespace, and sees (and serves on) the host's own stack.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, ensure};
use cnm_core::cnm_sandbox::{LinkKind, LinkSpec};
use cnm_core::options::KEY_PREDEFINED;
use cnm_core::{CoreError, EndpointOptions, NetworkOptions};
use cnm_driver_host as _;
use cnm_driver_null as _;
use cnm_store as _;
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};
use cnm_types::ErrorKind;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn predefined() -> NetworkOptions {
    NetworkOptions::default().driver_option(KEY_PREDEFINED, "true")
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn host_sandbox_sees_and_serves_on_the_hosts_own_stack() -> Result<()> {
    let host = TestHost::new().await?;
    // An interface only the (throwaway) host has.
    host.netlink()
        .create_link(&LinkSpec::new(
            "hostonly0".parse()?,
            LinkKind::Veth {
                peer_name: "hostonly1".parse()?,
                peer_ns: None,
                peer_mac: None,
                peer_mtu: None,
                peer_up: false,
            },
        ))
        .await?;
    let ctl = host.memory_controller().await?;
    let net = ctl.new_network("host", "host", predefined()).await?;
    let ep = net
        .create_endpoint("web", EndpointOptions::default())
        .await?;
    let sb = ep.join("web", []).await?;
    ensure!(
        sb.netns().id() == host.netns().id(),
        "the sandbox is the host's namespace"
    );
    ensure!(ep.ipv4().is_none(), "no address of its own");
    ensure!(
        sb.netlink().link("hostonly0").await?.is_some(),
        "sees the host's interfaces"
    );
    // A process entered into the sandbox lists the host's links.
    let entry = sb.entry();
    let mut cmd = std::process::Command::new("cat");
    cmd.arg("/proc/net/dev");
    entry.apply(&mut cmd)?;
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    ensure!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.contains("hostonly0"), "{text}");
    // A server in the sandbox is on the host's loopback.
    let _s = TcpEchoServer::start(sb.netns(), LOOPBACK, 8080).await?;
    probe::tcp(host.netns(), LOOPBACK, 8080).await?;

    // Leaving and deleting the sandbox leaves the host alone.
    sb.delete_with_endpoints().await?;
    ensure!(host.netlink().link("hostonly0").await?.is_some());
    ensure!(host.netlink().link("lo").await?.is_some_and(|l| l.up));
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_host_sandbox_joins_only_the_host_network_and_vice_versa() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.memory_controller().await?;
    let hostnet = ctl.new_network("host", "host", predefined()).await?;
    let none = ctl.new_network("null", "none", predefined()).await?;
    let sb = hostnet
        .create_endpoint("a", EndpointOptions::default())
        .await?
        .join("a", [])
        .await?;
    let other = none
        .create_endpoint("a-none", EndpointOptions::default())
        .await?;
    let e = other.join_sandbox(&sb, []).await.expect_err("host sandbox");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    ensure!(e.to_string().contains("host"), "{e}");
    // A sandbox of its own cannot join the host network.
    let own = ctl.new_sandbox("b", []).await?;
    let ep = hostnet
        .create_endpoint("b", EndpointOptions::default())
        .await?;
    let e = ep.join_sandbox(&own, []).await.expect_err("own namespace");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    ensure!(own.endpoints().is_empty() && sb.endpoints().len() == 1);
    // Singleton, as in Docker.
    let e = ctl
        .new_network("host", "host2", NetworkOptions::default())
        .await
        .expect_err("one host network");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn predefined_host_and_none_networks_cannot_be_deleted() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.memory_controller().await?;
    let hostnet = ctl.new_network("host", "host", predefined()).await?;
    let none = ctl.new_network("null", "none", predefined()).await?;
    for net in [&hostnet, &none] {
        let e = net.delete().await.expect_err("predefined");
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        ensure!(
            matches!(e, CoreError::PredefinedNetwork(ref n) if n == net.name()),
            "typed: {e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a pre-defined network and cannot be removed",
                net.name()
            )
        );
        ctl.network(net.name()).context("still there")?;
    }
    // The mark is core's, not the driver's: not shown among the driver's options.
    ensure!(
        hostnet
            .options()
            .driver_options
            .contains_key(KEY_PREDEFINED)
    );
    ensure!(
        !hostnet
            .options()
            .as_docker_options()
            .contains_key(KEY_PREDEFINED)
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_host_sandbox_survives_a_restart_still_on_the_host() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    let net = ctl.new_network("host", "host", predefined()).await?;
    net.create_endpoint("web", EndpointOptions::default())
        .await?
        .join("web", [])
        .await?;
    let ctl = host.restart(ctl).await?;
    let sb = ctl.sandbox_by_container_id("web")?;
    ensure!(sb.netns().id() == host.netns().id());
    ensure!(sb.endpoints().len() == 1);
    sb.delete_with_endpoints().await?;
    ensure!(host.netlink().link("lo").await?.is_some_and(|l| l.up));
    Ok(())
}
