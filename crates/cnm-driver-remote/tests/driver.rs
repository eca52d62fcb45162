//! The remote driver in a controller, against the test plugin making real links in a
//! throwaway host namespace: traffic between two sandboxes, every request checked field by
//! field against Docker's documented shapes, and misbehaving plugins (hangs, garbage, HTTP 500,
//! death mid-join) giving a bounded wait, a clear error and a full rollback.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cnm_core::{EndpointOptions, Network, NetworkOptions, PortBinding, PortRange, Protocol};
use cnm_driver_remote::plugin::MEDIA_TYPE;
use cnm_sandbox::IpFamily;
use cnm_testkit::{probe, server::TcpEchoServer};
use common::{PluginArgs, World};
use ipnet::IpNet;
use serde_json::{Value, json};

/// Fails unless `ep`'s sandbox and join are gone and nothing of the join is left in the host.
async fn no_join_left(w: &World, ep: &cnm_core::Endpoint, bridge_only: &str) -> Result<()> {
    ensure!(ep.sandbox_id().is_none(), "the endpoint is still joined");
    ensure!(w.ctl.sandboxes().is_empty(), "a sandbox is left");
    ensure!(
        w.netns_files()?.is_empty(),
        "netns files left: {:?}",
        w.netns_files()?
    );
    let links = w.host_links().await?;
    ensure!(
        links == ["lo", bridge_only],
        "only the plugin's bridge may remain in the host, found {links:?}"
    );
    let keys: Vec<String> = w
        .ctl
        .store()?
        .list("")
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("sandbox"))
        .collect();
    ensure!(keys.is_empty(), "sandbox records left: {keys:?}");
    Ok(())
}

fn bridge_of(net: &Network) -> String {
    format!("rb{}", &net.id()[..10])
}

fn body_of(w: &World, method: &str, nth: usize) -> Result<Value> {
    let r = w.plugin.requests_of(method)?;
    Ok(r.get(nth)
        .with_context(|| format!("no request {nth} of {method} among {r:?}"))?
        .body
        .clone())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_plugin_network_carries_traffic_and_every_request_has_dockers_shape() -> Result<()> {
    let w = World::new("fakenet", PluginArgs::default(), Duration::from_secs(5)).await?;
    assert!(w.ctl.drivers().contains(&"fakenet".to_owned()));
    let opts = NetworkOptions::default()
        .subnet("10.80.0.0/24".parse()?)
        .driver_option("test.dst-prefix", "rmt")
        .driver_option("test.routes", "yes")
        .driver_option("test.mac", "plugin")
        .driver_option("test.ipv6-address", "fd00:80::5/64");
    let net = w.ctl.new_network("fakenet", "rnet", opts).await?;
    let ep1 = net
        .create_endpoint("ep1", EndpointOptions::default())
        .await?;
    let published = PortBinding {
        proto: Protocol::Tcp,
        container_port: PortRange::single(80)?,
        host_ip: None,
        host_port: Some(PortRange::single(8080)?),
    };
    let ep2 = net
        .create_endpoint("ep2", EndpointOptions::default().publish(published))
        .await?;
    let key1 = ep1.join("c1", []).await?;
    let key2 = ep2.join("c2", []).await?;
    let sb1 = w.ctl.sandbox_by_container_id("c1")?;
    let sb2 = w.ctl.sandbox_by_container_id("c2")?;
    let (a1, a2) = (
        ep1.ipv4().context("ep1 has an address")?,
        ep2.ipv4().context("ep2 has an address")?,
    );
    assert_eq!(a1.to_string(), "10.80.0.2/24");

    // The interface the plugin returned, moved in and renamed DstPrefix + index, with the MAC
    // the plugin chose and the address IPAM gave.
    let link = sb1.netlink().link("rmt0").await?.context("rmt0 in c1")?;
    let plugin_mac = format!("02:77:{}", {
        let id = ep1.id();
        [&id[0..2], &id[2..4], &id[4..6], &id[6..8]].join(":")
    });
    assert_eq!(link.mac.map(|m| m.to_string()), Some(plugin_mac.clone()));
    assert_eq!(ep1.mac().map(|m| m.to_string()), Some(plugin_mac.clone()));
    let addrs: Vec<IpNet> = sb1
        .netlink()
        .addresses(Some(link.index))
        .await?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    assert!(addrs.contains(&IpNet::V4(a1)), "{addrs:?}");
    // The gateway and static routes the plugin answered, in the sandbox.
    let routes = sb1.netlink().routes(IpFamily::V4).await?;
    let gw: IpAddr = "10.80.0.1".parse()?;
    let has = |dst: &str, via: Option<IpAddr>| {
        let dst: IpNet = dst.parse().unwrap();
        routes
            .iter()
            .any(|r| r.destination == dst && r.gateway == via && r.oif == Some(link.index))
    };
    assert!(has("0.0.0.0/0", Some(gw)), "{routes:?}");
    assert!(has("198.18.0.0/15", Some(gw)), "{routes:?}");
    assert!(has("192.0.2.0/24", None), "{routes:?}");
    // The IPv6 address the plugin filled in is the endpoint's, and on its interface.
    let v6: IpNet = "fd00:80::5/64".parse()?;
    assert_eq!(ep1.ipv6().map(IpNet::V6), Some(v6));
    assert_eq!(
        ep2.ipv6().map(IpNet::V6),
        Some(v6),
        "the plugin gives every endpoint this one"
    );
    assert!(addrs.contains(&v6), "{addrs:?}");

    // Traffic between the two sandboxes, through the plugin's bridge, and to the gateway.
    let server = TcpEchoServer::start(sb2.netns(), IpAddr::V4(a2.addr()), 8080).await?;
    probe::tcp(sb1.netns(), IpAddr::V4(a2.addr()), 8080).await?;
    assert_eq!(server.peers().len(), 1);
    assert_eq!(server.peers()[0].ip(), IpAddr::V4(a1.addr()));
    probe::icmp(sb2.netns(), gw).await?;
    probe::icmp(sb2.netns(), IpAddr::V4(a1.addr())).await?;

    let info = w.driver.endpoint_oper_info(net.id(), ep1.id()).await?;
    assert_eq!(info["network"], net.id());
    assert_eq!(info["veth"], format!("rh{}", &ep1.id()[..10]));

    ep1.leave("c1").await?;
    ep2.leave("c2").await?;
    ep1.delete().await?;
    ep2.delete().await?;
    net.delete().await?;
    w.host_is_clean().await?;

    // Every request, in order, field by field.
    let nid = net.id();
    let (e1, e2) = (ep1.id(), ep2.id());
    let reqs = w.plugin.requests()?;
    for r in &reqs {
        assert_eq!(r.accept.as_deref(), Some(MEDIA_TYPE), "{r:?}");
        assert_eq!(r.content_type.as_deref(), Some(MEDIA_TYPE), "{r:?}");
    }
    let got: Vec<(&str, &Value)> = reqs.iter().map(|r| (r.method.as_str(), &r.body)).collect();
    let ep = |e: &str| json!({"NetworkID": nid, "EndpointID": e});
    let expected: Vec<(&str, Value)> = vec![
        ("Plugin.Activate", Value::Null),
        ("NetworkDriver.GetCapabilities", Value::Null),
        (
            "NetworkDriver.CreateNetwork",
            json!({
                "NetworkID": nid,
                "Options": {
                    "com.docker.network.generic": {
                        "test.dst-prefix": "rmt",
                        "test.ipv6-address": "fd00:80::5/64",
                        "test.mac": "plugin",
                        "test.routes": "yes",
                    },
                    "com.docker.network.enable_ipv6": false,
                },
                "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.80.0.0/24",
                              "Gateway": "10.80.0.1/24"}],
                "IPv6Data": [],
            }),
        ),
        (
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": e1, "Options": {},
                   "Interface": {"Address": "10.80.0.2/24", "AddressIPv6": "", "MacAddress": ""}}),
        ),
        (
            "NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": e2, "Options": {},
                   "Interface": {"Address": a2.to_string(), "AddressIPv6": "", "MacAddress": ""}}),
        ),
        (
            "NetworkDriver.Join",
            json!({"NetworkID": nid, "EndpointID": e1, "Options": {},
                   "SandboxKey": key1.key().display().to_string()}),
        ),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": nid, "EndpointID": e1, "Options": {}}),
        ),
        (
            "NetworkDriver.Join",
            json!({"NetworkID": nid, "EndpointID": e2, "Options": {},
                   "SandboxKey": key2.key().display().to_string()}),
        ),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": nid, "EndpointID": e2, "Options": {
                "com.docker.network.portmap": [{"Proto": 6, "IP": a2.addr().to_string(),
                    "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}],
                "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
            }}),
        ),
        ("NetworkDriver.EndpointOperInfo", ep(e1)),
        ("NetworkDriver.RevokeExternalConnectivity", ep(e1)),
        ("NetworkDriver.Leave", ep(e1)),
        ("NetworkDriver.RevokeExternalConnectivity", ep(e2)),
        ("NetworkDriver.Leave", ep(e2)),
        ("NetworkDriver.DeleteEndpoint", ep(e1)),
        ("NetworkDriver.DeleteEndpoint", ep(e2)),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid})),
    ];
    let expected: Vec<(&str, &Value)> = expected.iter().map(|(m, b)| (*m, b)).collect();
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_hung_plugin_gives_a_bounded_wait_a_clear_error_and_a_full_rollback() -> Result<()> {
    let timeout = Duration::from_millis(500);
    let w = World::new("hung", PluginArgs::default(), timeout).await?;
    let subnet: IpNet = "10.81.0.0/24".parse()?;
    // Bounded by the call timeout, with room for a loaded machine (no retry would be 2×).
    let bound = timeout * 6;

    // CreateNetwork never answers: no network, no record, the pool is free again.
    w.plugin
        .fault("NetworkDriver.CreateNetwork", Some("hang"))?;
    let started = Instant::now();
    let e = w
        .ctl
        .new_network("hung", "n", NetworkOptions::default().subnet(subnet))
        .await
        .unwrap_err();
    let took = started.elapsed();
    ensure!(took < bound, "took {took:?}");
    let text = e.to_string();
    assert!(
        text.contains("plugin \"hung\": NetworkDriver.CreateNetwork: no answer within 500ms"),
        "{text}"
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::Unavailable);
    assert!(w.ctl.networks().is_empty());
    assert!(w.ctl.store()?.list("").await?.is_empty(), "records left");
    // The plugin was told to delete what it may have made.
    assert_eq!(
        w.plugin.methods()?.last().map(String::as_str),
        Some("NetworkDriver.DeleteNetwork")
    );
    w.host_is_clean().await?;
    w.plugin.fault("NetworkDriver.CreateNetwork", None)?;
    let net = w
        .ctl
        .new_network("hung", "n", NetworkOptions::default().subnet(subnet))
        .await
        .context("the same subnet is free again")?;

    // CreateEndpoint never answers: no endpoint, its address is free again.
    w.plugin
        .fault("NetworkDriver.CreateEndpoint", Some("hang"))?;
    let started = Instant::now();
    let e = net
        .create_endpoint("ep", EndpointOptions::default())
        .await
        .unwrap_err();
    ensure!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(
        e.to_string()
            .contains("NetworkDriver.CreateEndpoint: no answer within 500ms"),
        "{e}"
    );
    assert!(net.endpoints().is_empty());
    assert_eq!(
        w.plugin.methods()?.last().map(String::as_str),
        Some("NetworkDriver.DeleteEndpoint")
    );
    w.plugin.fault("NetworkDriver.CreateEndpoint", None)?;
    let ep = net
        .create_endpoint("ep", EndpointOptions::default())
        .await?;
    assert_eq!(
        ep.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.81.0.2/24")
    );

    // Join makes the veth, then never answers: the adapter's Leave has the plugin remove it,
    // the controller removes the sandbox it made for the join.
    w.plugin.fault("NetworkDriver.Join", Some("work-hang"))?;
    let started = Instant::now();
    let e = ep.join("c1", []).await.unwrap_err();
    ensure!(started.elapsed() < bound, "took {:?}", started.elapsed());
    assert!(
        e.to_string()
            .contains("plugin \"hung\": NetworkDriver.Join: no answer within 500ms"),
        "{e}"
    );
    let tail: Vec<String> = w.plugin.methods()?.into_iter().rev().take(2).collect();
    assert_eq!(tail, ["NetworkDriver.Leave", "NetworkDriver.Join"]);
    no_join_left(&w, &ep, &bridge_of(&net)).await?;

    // Healthy again: the same endpoint joins.
    w.plugin.fault("NetworkDriver.Join", None)?;
    ep.join("c1", []).await?;
    ep.leave("c1").await?;
    ep.delete().await?;
    net.delete().await?;
    w.host_is_clean().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn garbage_and_http_500_give_clear_errors_and_a_full_rollback() -> Result<()> {
    let w = World::new("bad", PluginArgs::default(), Duration::from_secs(2)).await?;
    let subnet: IpNet = "10.82.0.0/24".parse()?;

    // CreateNetwork makes the bridge, then answers garbage: DeleteNetwork removes it again.
    w.plugin
        .fault("NetworkDriver.CreateNetwork", Some("work-garbage"))?;
    let e = w
        .ctl
        .new_network("bad", "n", NetworkOptions::default().subnet(subnet))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "plugin \"bad\": NetworkDriver.CreateNetwork: the answer is not valid JSON for this call"
        ),
        "{e}"
    );
    assert!(w.ctl.networks().is_empty());
    assert!(w.ctl.store()?.list("").await?.is_empty(), "records left");
    w.host_is_clean().await?;
    w.plugin.fault("NetworkDriver.CreateNetwork", None)?;
    let net = w
        .ctl
        .new_network("bad", "n", NetworkOptions::default().subnet(subnet))
        .await?;

    // CreateEndpoint answers 500 with an Err text: it is in the error; nothing is left.
    w.plugin
        .fault("NetworkDriver.CreateEndpoint", Some("500"))?;
    let e = net
        .create_endpoint("ep", EndpointOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "plugin \"bad\": NetworkDriver.CreateEndpoint: HTTP 500: simulated failure of NetworkDriver.CreateEndpoint"
        ),
        "{e}"
    );
    assert!(net.endpoints().is_empty());
    w.plugin.fault("NetworkDriver.CreateEndpoint", None)?;
    let ep = net
        .create_endpoint("ep", EndpointOptions::default())
        .await?;
    assert_eq!(
        ep.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.82.0.2/24"),
        "the failed endpoint's address was released"
    );

    // Join makes the veth, then answers garbage: rolled back, veth gone.
    w.plugin.fault("NetworkDriver.Join", Some("work-garbage"))?;
    let e = ep.join("c1", []).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("NetworkDriver.Join: the answer is not valid JSON for this call"),
        "{e}"
    );
    no_join_left(&w, &ep, &bridge_of(&net)).await?;

    // Join answers 500: the plugin's text, nothing left.
    w.plugin.fault("NetworkDriver.Join", Some("500"))?;
    let e = ep.join("c1", []).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("NetworkDriver.Join: HTTP 500: simulated failure of NetworkDriver.Join"),
        "{e}"
    );
    no_join_left(&w, &ep, &bridge_of(&net)).await?;

    // Join "succeeds" naming an interface that does not exist: the controller cannot move it
    // in, and its undo calls the driver's leave, so the plugin removes the veth it made.
    w.plugin.fault("NetworkDriver.Join", Some("work-bogus"))?;
    let e = ep.join("c1", []).await.unwrap_err();
    assert!(e.to_string().contains("nosuchif0"), "{e}");
    let tail: Vec<String> = w.plugin.methods()?.into_iter().rev().take(2).collect();
    assert_eq!(tail, ["NetworkDriver.Leave", "NetworkDriver.Join"]);
    no_join_left(&w, &ep, &bridge_of(&net)).await?;

    w.plugin.fault("NetworkDriver.Join", None)?;
    ep.join("c1", []).await?;
    ep.leave("c1").await?;
    ep.delete().await?;
    net.delete().await?;
    w.host_is_clean().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_plugin_dying_mid_join_leaves_nothing_and_is_activated_again_after_its_restart()
-> Result<()> {
    let w = World::new("mortal", PluginArgs::default(), Duration::from_secs(2)).await?;
    let net = w
        .ctl
        .new_network(
            "mortal",
            "n",
            NetworkOptions::default().subnet("10.83.0.0/24".parse()?),
        )
        .await?;
    let ep1 = net
        .create_endpoint("ep1", EndpointOptions::default())
        .await?;
    let ep2 = net
        .create_endpoint("ep2", EndpointOptions::default())
        .await?;

    w.plugin.fault("NetworkDriver.Join", Some("die"))?;
    let started = Instant::now();
    let e = ep1.join("c1", []).await.unwrap_err();
    let took = started.elapsed();
    // The join's connection breaks; the Leave sent to undo it finds nobody (after the short
    // wait for a restart) and is reported with it.
    ensure!(took < Duration::from_secs(3), "took {took:?}");
    let text = e.to_string();
    assert!(
        text.contains(
            "plugin \"mortal\": NetworkDriver.Join: connection lost before a complete answer"
        ),
        "{text}"
    );
    assert!(
        text.contains("undoing it failed too: plugin \"mortal\": NetworkDriver.Leave"),
        "{text}"
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::Unavailable);
    no_join_left(&w, &ep1, &bridge_of(&net)).await?;
    w.plugin.wait_exit().await?;

    // The plugin comes back (keeping its state, insisting on the handshake): the next join is
    // answered "not activated", the driver activates it again and joins.
    w.plugin.fault("NetworkDriver.Join", None)?;
    w.plugin.restart(|a| a.require_activation = true).await?;
    w.plugin.clear_requests()?;
    ep1.join("c1", []).await?;
    assert_eq!(
        w.plugin.methods()?,
        [
            "NetworkDriver.Join",
            "Plugin.Activate",
            "NetworkDriver.Join",
            "NetworkDriver.ProgramExternalConnectivity"
        ]
    );
    assert_eq!(w.driver.client().reactivations(), 1);
    ep2.join("c2", []).await?;
    let sb1 = w.ctl.sandbox_by_container_id("c1")?;
    let sb2 = w.ctl.sandbox_by_container_id("c2")?;
    let a2 = ep2.ipv4().context("ep2's address")?.addr();
    let server = TcpEchoServer::start(sb2.netns(), IpAddr::V4(a2), 7000).await?;
    probe::tcp(sb1.netns(), IpAddr::V4(a2), 7000).await?;
    drop(server);
    for (ep, c) in [(&ep1, "c1"), (&ep2, "c2")] {
        ep.leave(c).await?;
        ep.delete().await?;
    }
    net.delete().await?;
    w.host_is_clean().await?;
    let body = body_of(&w, "NetworkDriver.DeleteNetwork", 0)?;
    assert_eq!(body, json!({"NetworkID": net.id()}));
    Ok(())
}
