//! A user's journey across the crates, through the facade only: a two-tier application on one
//! host — a web sandbox on a public and an internal network, a database sandbox on the internal
//! one only, a sandbox with no network at all — proven with traffic, then torn down to nothing.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use cnm::{EndpointOptions, JoinOption, NetworkOptions};
use cnm_testkit::{TestHost, probe, server::TcpEchoServer};
// The facade links the built-in drivers; naming them here keeps that explicit for this binary.
use cnm_driver_bridge as _;
use cnm_driver_null as _;

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn two_tier_application_on_one_host() -> Result<()> {
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let links_before = host.netlink().links().await?.len();
    let ctl = host.controller().await?;
    ensure!(
        ctl.drivers() == ["bridge", "host", "ipvlan", "macvlan", "null", "overlay"],
        "{:?}",
        ctl.drivers()
    );

    let public = ctl
        .new_network("bridge", "public", NetworkOptions::default())
        .await?;
    let internal = ctl
        .new_network(
            "bridge",
            "internal",
            NetworkOptions::default().internal(true),
        )
        .await?;
    let none = ctl
        .new_network("null", "none", NetworkOptions::default())
        .await?;

    // web: public first (eth0, the gateway endpoint, with the published port), then internal.
    let mut published = EndpointOptions::default();
    published.port_bindings.push("18080:8080".parse()?);
    let web_public = public.create_endpoint("web-public", published).await?;
    let web_internal = internal
        .create_endpoint("web-internal", EndpointOptions::default())
        .await?;
    web_public
        .join("web", [JoinOption::hostname("web")])
        .await?;
    web_internal.join("web", []).await?;
    let web = ctl.sandbox_by_container_id("web")?;
    let db_ep = internal
        .create_endpoint("db", EndpointOptions::default())
        .await?;
    db_ep.join("db", [JoinOption::hostname("db")]).await?;
    let db = ctl.sandbox_by_container_id("db")?;
    let lonely_ep = none
        .create_endpoint("lonely", EndpointOptions::default())
        .await?;
    lonely_ep.join("lonely", []).await?;
    let lonely = ctl.sandbox_by_container_id("lonely")?;

    // Interfaces in join order; the public endpoint provides the default route.
    let names: Vec<String> = web
        .netlink()
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    ensure!(
        names.contains(&"eth0".to_owned()) && names.contains(&"eth1".to_owned()),
        "{names:?}"
    );
    ensure!(web.gateway_endpoint().map(|e| e.id().to_owned()) == Some(web_public.id().to_owned()));
    let lonely_links: Vec<String> = lonely
        .netlink()
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    ensure!(
        lonely_links == ["lo"],
        "a null sandbox has loopback only: {lonely_links:?}"
    );

    let web_pub_ip = IpAddr::V4(web_public.ipv4().context("web public address")?.addr());
    let web_int_ip = IpAddr::V4(web_internal.ipv4().context("web internal address")?.addr());
    let db_ip = IpAddr::V4(db_ep.ipv4().context("db address")?.addr());

    // The application: web serves the world, db serves web.
    let _web_srv = TcpEchoServer::start(web.netns(), web_pub_ip, 8080).await?;
    let _db_srv = TcpEchoServer::start(db.netns(), db_ip, 5432).await?;
    let out_srv = TcpEchoServer::start(outside.netns(), outside.addr_v4(), 9000).await?;

    probe::tcp(web.netns(), db_ip, 5432)
        .await
        .context("web reaches db on the internal network")?;
    probe::tcp(db.netns(), web_int_ip, 5432)
        .await
        .expect_err("nothing listens on web's internal side");
    probe::tcp(outside.netns(), outside.host_addr_v4(), 18080)
        .await
        .context("the world reaches web's published port through the host")?;
    probe::tcp(web.netns(), outside.addr_v4(), 9000)
        .await
        .context("web reaches the world")?;
    ensure!(
        out_srv
            .peers()
            .iter()
            .all(|p| p.ip() == outside.host_addr_v4()),
        "the world sees the host's address, not the container's: {:?}",
        out_srv.peers()
    );
    probe::tcp(db.netns(), outside.addr_v4(), 9000)
        .await
        .expect_err("an internal network has no way out");
    probe::tcp(outside.netns(), db_ip, 5432)
        .await
        .expect_err("the world cannot reach the internal network");
    probe::tcp(lonely.netns(), db_ip, 5432)
        .await
        .expect_err("a null sandbox reaches nothing");

    // Tear down in the order a runtime would: containers stop, networks go.
    for sandbox in [web, db, lonely] {
        sandbox.delete().await?;
    }
    for ep in [web_public, web_internal, db_ep, lonely_ep] {
        ep.delete().await?;
    }
    for net in [public, internal, none] {
        net.delete().await?;
    }
    ensure!(ctl.networks().is_empty() && ctl.sandboxes().is_empty());
    let links_after = host.netlink().links().await?.len();
    ensure!(
        links_after == links_before,
        "links left behind: {links_before} before, {links_after} after"
    );
    Ok(())
}
