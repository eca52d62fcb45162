//! cnmd as a Docker plugin, request by request (no dockerd): every `NetworkDriver.*` and
//! `IpamDriver.*` handler's answer checked against Docker's shapes, dockerd's part of a join
//! (move the interface in, rename it, address it) done here by hand so that two "containers"
//! ping each other, and a failed join leaves nothing.

mod common;

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use cnm::cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink};
use cnm::cnm_types::IfName;
use cnm_daemon::plugin::network::host_if_name;
use cnm_daemon::plugin::{CONTENT_TYPE_V12, DockerPluginConfig};
use cnm_testkit::{TestHost, probe};
use common::Client;
use http_body_util::BodyExt;
use serde_json::{Value, json};

const NET: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";
const EP1: &str = "e1e1e1e1e1e1aaaa0000000000000000000000000000000000000000000000aa";
const EP2: &str = "e2e2e2e2e2e2bbbb0000000000000000000000000000000000000000000000bb";
const EP3: &str = "e3e3e3e3e3e3cccc0000000000000000000000000000000000000000000000cc";

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    k.sort_unstable();
    k
}

/// One call: POST with Docker's content type; checks the answer's status and content type.
async fn call(plugin: &Client, path: &str, body: Option<Value>) -> Result<Value> {
    let bytes = match body {
        Some(v) => serde_json::to_vec(&v)?,
        None => Vec::new(),
    };
    let resp = plugin.stream("POST", path, bytes).await?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(status == 200, "{path}: status {status}: {body:?}");
    ensure!(ct == CONTENT_TYPE_V12, "{path}: content type {ct:?}");
    serde_json::from_slice(&body).with_context(|| format!("{path}: {body:?}"))
}

/// dockerd's half of a join: move `src` into the container's namespace as `eth0`, give it the
/// address dockerd allocated, bring it up.
async fn dockerd_moves_in(host: &Netlink, src: &str, ns: &NetNs, addr: &str) -> Result<Netlink> {
    let link = host.link(src).await?.context("the interface Join named")?;
    let eth0: IfName = "eth0".parse()?;
    host.move_to_netns(link.index, ns, Some(&eth0)).await?;
    let nl = Netlink::connect(ns).await?;
    let l = nl.link("eth0").await?.context("eth0 after the move")?;
    nl.add_address(l.index, addr.parse()?).await?;
    nl.set_up(l.index).await?;
    Ok(nl)
}

/// dockerd's half of a leave: the interface goes back to the host under its source name.
async fn dockerd_moves_out(nl: &Netlink, host_ns: &NetNs, src: &str) -> Result<()> {
    let l = nl.link("eth0").await?.context("eth0")?;
    nl.set_down(l.index).await?;
    nl.move_to_netns(l.index, host_ns, Some(&src.parse()?))
        .await?;
    Ok(())
}

async fn link_names(nl: &Netlink) -> Result<Vec<String>> {
    let mut v: Vec<String> = nl.links().await?.into_iter().map(|l| l.name).collect();
    v.sort();
    Ok(v)
}

fn plugin_config(dir: &Path) -> DockerPluginConfig {
    DockerPluginConfig {
        name: "cnm".into(),
        dir: dir.to_owned(),
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn every_plugin_call_answers_in_dockers_shape_and_a_failed_join_leaves_nothing() -> Result<()>
{
    let host = TestHost::new().await?;
    let mut cfg = common::config(&host, false)?;
    let dir = host.run_dir().join("docker-plugins");
    cfg.docker_plugin = Some(plugin_config(&dir));
    let daemon = cnm_daemon::Daemon::start(cfg).await?;
    let plugin = Client::new(&dir.join("cnm.sock"));
    let ctl = daemon.controller().clone();

    // Handshake and capabilities.
    let a = call(&plugin, "/Plugin.Activate", None).await?;
    assert_eq!(a, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    let c = call(&plugin, "/NetworkDriver.GetCapabilities", None).await?;
    assert_eq!(
        c,
        json!({"Scope": "local", "ConnectivityScope": "local", "Err": ""})
    );
    let c = call(&plugin, "/IpamDriver.GetCapabilities", None).await?;
    assert_eq!(
        c,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false, "Error": ""})
    );
    let s = call(&plugin, "/IpamDriver.GetDefaultAddressSpaces", None).await?;
    assert_eq!(
        s,
        json!({"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global",
               "Error": ""})
    );

    // IPAM: a default pool avoids cnm's own networks (the predefined bridge's pool).
    let taken: Vec<String> = ctl
        .networks()
        .iter()
        .flat_map(|n| n.ipv4().into_iter().map(|d| d.pool.to_string()))
        .collect();
    let p = call(
        &plugin,
        "/IpamDriver.RequestPool",
        Some(
            json!({"AddressSpace": "local", "Pool": "", "SubPool": "", "Options": null,
                    "V6": false}),
        ),
    )
    .await?;
    assert_eq!(keys(&p), ["Data", "Error", "Pool", "PoolID"]);
    let pool = p["Pool"].as_str().unwrap().to_owned();
    assert!(!taken.contains(&pool), "{pool} is one of cnm's {taken:?}");
    let pool_id = p["PoolID"].as_str().unwrap().to_owned();
    assert_eq!(pool_id, format!("local/{pool}"));
    // The same pool again overlaps: refused in `Error`.
    let again = call(
        &plugin,
        "/IpamDriver.RequestPool",
        Some(
            json!({"AddressSpace": "local", "Pool": pool, "SubPool": "", "Options": {},
                    "V6": false}),
        ),
    )
    .await?;
    assert!(
        again["Error"].as_str().unwrap().contains("overlaps"),
        "{again}"
    );
    let gw = call(
        &plugin,
        "/IpamDriver.RequestAddress",
        Some(json!({"PoolID": pool_id, "Address": "",
                    "Options": {"RequestAddressType": "com.docker.network.gateway"}})),
    )
    .await?;
    assert_eq!(keys(&gw), ["Address", "Data", "Error"]);
    let gw_cidr = gw["Address"].as_str().unwrap().to_owned();
    let mut addrs = Vec::new();
    for _ in 0..3 {
        let a = call(
            &plugin,
            "/IpamDriver.RequestAddress",
            Some(json!({"PoolID": pool_id, "Address": "", "Options": null})),
        )
        .await?;
        addrs.push(a["Address"].as_str().unwrap().to_owned());
    }
    let prefix = pool.split('/').nth(1).unwrap();
    assert!(gw_cidr.ends_with(&format!("/{prefix}")), "{gw_cidr}");
    assert_eq!(
        addrs
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );

    // CreateNetwork with those pools: a cnm network named by Docker's id.
    let n = call(
        &plugin,
        "/NetworkDriver.CreateNetwork",
        Some(json!({
            "NetworkID": NET,
            "Options": {"com.docker.network.enable_ipv6": false,
                        "com.docker.network.generic": {"com.cnm.driver": "bridge"}},
            "IPv4Data": [{"AddressSpace": "local", "Pool": pool, "Gateway": gw_cidr}],
            "IPv6Data": []
        })),
    )
    .await?;
    assert_eq!(n, json!({}));
    let net = ctl.network(NET)?;
    assert_eq!(net.driver(), "bridge");
    assert_eq!(net.ipv4()[0].pool.to_string(), pool);
    // The same call again (dockerd lost the answer) is success; other settings are not.
    assert_eq!(
        call(
            &plugin,
            "/NetworkDriver.CreateNetwork",
            Some(json!({"NetworkID": NET, "Options": {},
                        "IPv4Data": [{"AddressSpace": "local", "Pool": pool,
                                      "Gateway": gw_cidr}]})),
        )
        .await?,
        json!({})
    );
    let bad = call(
        &plugin,
        "/NetworkDriver.CreateNetwork",
        Some(json!({"NetworkID": "n2", "Options":
                    {"com.docker.network.generic": {"com.cnm.driver": "weave"}}})),
    )
    .await?;
    assert!(
        bad["Err"]
            .as_str()
            .unwrap()
            .contains("com.cnm.driver=\"weave\""),
        "{bad}"
    );
    assert!(ctl.network("n2").is_err(), "a refused network is not made");

    // CreateEndpoint: dockerd's address is used; only the MAC is answered.
    let mut macs = Vec::new();
    for (ep, addr) in [(EP1, &addrs[0]), (EP2, &addrs[1]), (EP3, &addrs[2])] {
        let r = call(
            &plugin,
            "/NetworkDriver.CreateEndpoint",
            Some(json!({"NetworkID": NET, "EndpointID": ep,
                        "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
                        "Options": {"com.docker.network.endpoint.exposedports": null}})),
        )
        .await?;
        assert_eq!(keys(&r), ["Err", "Interface"]);
        assert_eq!(r["Interface"]["Address"], "");
        assert_eq!(r["Interface"]["AddressIPv6"], "");
        let mac = r["Interface"]["MacAddress"].as_str().unwrap().to_owned();
        assert_eq!(mac.len(), 17, "{r}");
        let cnm_ep = net.endpoint(ep)?;
        assert_eq!(cnm_ep.ipv4().unwrap().to_string(), *addr);
        macs.push(mac);
    }
    let info = call(
        &plugin,
        "/NetworkDriver.EndpointOperInfo",
        Some(json!({"NetworkID": NET, "EndpointID": EP1})),
    )
    .await?;
    assert_eq!(
        info["Value"]["com.docker.network.endpoint.macaddress"],
        macs[0].as_str()
    );

    // Join: an interface left in the host namespace for dockerd, with the gateway.
    let host_nl = host.netlink().clone();
    let before_joins = link_names(&host_nl).await?;
    let gw_addr = gw_cidr.split('/').next().unwrap();
    let mut containers = Vec::new();
    for (i, ep) in [EP1, EP2].into_iter().enumerate() {
        let ns = host.sandbox_ns(&format!("c{i}")).await?;
        let j = call(
            &plugin,
            "/NetworkDriver.Join",
            Some(json!({"NetworkID": NET, "EndpointID": ep,
                        "SandboxKey": format!("/var/run/docker/netns/c{i}"), "Options": {}})),
        )
        .await?;
        let src = host_if_name(ep).map_err(anyhow::Error::msg)?.to_string();
        assert_eq!(
            j,
            json!({"InterfaceName": {"SrcName": src, "DstPrefix": "eth"}, "Gateway": gw_addr,
                   "GatewayIPv6": "", "StaticRoutes": [], "DisableGatewayService": false,
                   "Err": ""})
        );
        let l = host_nl
            .link(&src)
            .await?
            .context("the interface Join named")?;
        assert_eq!(l.mac.map(|m| m.to_string()), Some(macs[i].clone()));
        let nl = dockerd_moves_in(&host_nl, &src, &ns, &addrs[i]).await?;
        containers.push((ns, nl, src));
    }
    // Real traffic between the two "containers" across cnm's bridge.
    let peer: IpAddr = addrs[1].split('/').next().unwrap().parse()?;
    probe::icmp(&containers[0].0, peer).await?;
    let back: IpAddr = addrs[0].split('/').next().unwrap().parse()?;
    probe::icmp(&containers[1].0, back).await?;

    // A join that fails half-way leaves nothing: the name it must hand over is taken.
    let blocker = host_if_name(EP3).map_err(anyhow::Error::msg)?;
    host_nl
        .create_link(&LinkSpec::new(blocker.clone(), LinkKind::Bridge))
        .await?;
    let links_before = link_names(&host_nl).await?;
    let j = call(
        &plugin,
        "/NetworkDriver.Join",
        Some(json!({"NetworkID": NET, "EndpointID": EP3, "SandboxKey": "/x", "Options": null})),
    )
    .await?;
    let err = j["Err"].as_str().unwrap();
    assert!(err.contains(blocker.as_str()), "{j}");
    assert_eq!(keys(&j), ["Err"], "an error answer carries only Err: {j}");
    assert_eq!(link_names(&host_nl).await?, links_before, "no veth left");
    assert!(
        ctl.sandbox_by_container_id(&format!("docker-{EP3}"))
            .is_err()
    );
    assert_eq!(net.endpoint(EP3)?.sandbox_id(), None);
    host_nl.delete_link_named(blocker.as_str()).await?;
    // And the same join then succeeds.
    let j = call(
        &plugin,
        "/NetworkDriver.Join",
        Some(json!({"NetworkID": NET, "EndpointID": EP3, "SandboxKey": "/x", "Options": null})),
    )
    .await?;
    assert_eq!(j["Err"], "", "{j}");

    // Published ports go through cnm's own publishing and are recorded with the endpoint
    // (traffic through them: docker_plugin_dockerd.rs); a bad entry is refused by name and
    // changes nothing; Revoke withdraws them; none is fine.
    let pe = call(
        &plugin,
        "/NetworkDriver.ProgramExternalConnectivity",
        Some(json!({"NetworkID": NET, "EndpointID": EP1, "Options": {
            "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                            "HostPort": 8080, "HostPortEnd": 8080}],
            "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}})),
    )
    .await?;
    assert_eq!(pe, json!({}));
    let published: Vec<String> = ctl
        .sandbox_by_container_id(&format!("docker-{EP1}"))?
        .published_ports()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(published, ["8080:80/tcp"]);
    let pe = call(
        &plugin,
        "/NetworkDriver.ProgramExternalConnectivity",
        Some(json!({"NetworkID": NET, "EndpointID": EP1, "Options": {
            "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                            "HostPort": 8000, "HostPortEnd": 8009}]}})),
    )
    .await?;
    let err = pe["Err"].as_str().unwrap();
    assert!(
        err.contains("Options.com.docker.network.portmap[0].HostPortEnd 8009"),
        "{pe}"
    );
    assert_eq!(
        net.endpoint(EP1)?
            .port_bindings()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["8080:80/tcp"]
    );
    let body = json!({"NetworkID": NET, "EndpointID": EP1});
    assert_eq!(
        call(
            &plugin,
            "/NetworkDriver.RevokeExternalConnectivity",
            Some(body.clone())
        )
        .await?,
        json!({})
    );
    assert!(net.endpoint(EP1)?.port_bindings().is_empty());
    assert!(
        ctl.sandbox_by_container_id(&format!("docker-{EP1}"))?
            .published_ports()
            .is_empty()
    );
    let pe = call(
        &plugin,
        "/NetworkDriver.ProgramExternalConnectivity",
        Some(json!({"NetworkID": NET, "EndpointID": EP1,
                    "Options": {"com.docker.network.portmap": null}})),
    )
    .await?;
    assert_eq!(pe, json!({}));
    assert_eq!(
        call(
            &plugin,
            "/NetworkDriver.DiscoverNew",
            Some(
                json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.5",
                        "self": true}})
            )
        )
        .await?,
        json!({})
    );

    // Leave, dockerd moves the interface out, DeleteEndpoint: nothing is left.
    for (ep, (_ns, nl, src)) in [EP1, EP2].into_iter().zip(&containers) {
        let body = json!({"NetworkID": NET, "EndpointID": ep});
        assert_eq!(
            call(&plugin, "/NetworkDriver.Leave", Some(body.clone())).await?,
            json!({})
        );
        dockerd_moves_out(nl, host.netns(), src).await?;
        assert_eq!(
            call(&plugin, "/NetworkDriver.DeleteEndpoint", Some(body.clone())).await?,
            json!({})
        );
        assert!(net.endpoint(ep).is_err(), "endpoint {ep} deleted in cnm");
        // Deleting again is done already.
        assert_eq!(
            call(&plugin, "/NetworkDriver.DeleteEndpoint", Some(body)).await?,
            json!({})
        );
    }
    // EP3 was never moved in: DeleteEndpoint takes its interface from the host namespace.
    let body = json!({"NetworkID": NET, "EndpointID": EP3});
    assert_eq!(
        call(&plugin, "/NetworkDriver.DeleteEndpoint", Some(body)).await?,
        json!({})
    );
    assert_eq!(link_names(&host_nl).await?, before_joins, "no link left");
    assert!(ctl.sandboxes().is_empty(), "no cnm sandbox left");

    let d = call(
        &plugin,
        "/NetworkDriver.DeleteNetwork",
        Some(json!({"NetworkID": NET})),
    )
    .await?;
    assert_eq!(d, json!({}));
    assert!(ctl.network(NET).is_err());
    for a in addrs.iter().chain([&gw_cidr]) {
        let r = call(
            &plugin,
            "/IpamDriver.ReleaseAddress",
            Some(json!({"PoolID": pool_id, "Address": a.split('/').next().unwrap()})),
        )
        .await?;
        assert_eq!(r, json!({"Error": ""}));
    }
    let r = call(
        &plugin,
        "/IpamDriver.ReleasePool",
        Some(json!({"PoolID": pool_id})),
    )
    .await?;
    assert_eq!(r, json!({"Error": ""}));
    let r = call(
        &plugin,
        "/IpamDriver.ReleasePool",
        Some(json!({"PoolID": pool_id})),
    )
    .await?;
    assert!(!r["Error"].as_str().unwrap().is_empty(), "{r}");

    // Garbage is a 400 in the subsystem's error field; an unknown call a 404.
    let (status, body) = plugin
        .raw("POST", "/NetworkDriver.Join", b"{not json".to_vec())
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 400);
    assert!(
        v["Err"].as_str().unwrap().contains("NetworkDriver.Join"),
        "{v}"
    );
    let (status, body) = plugin
        .raw(
            "POST",
            "/IpamDriver.RequestPool",
            br#"{"V6": "yes"}"#.to_vec(),
        )
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    assert_eq!(status, 400);
    assert!(
        v["Error"]
            .as_str()
            .unwrap()
            .contains("IpamDriver.RequestPool"),
        "{v}"
    );
    let (status, _) = plugin
        .raw("POST", "/VolumeDriver.Create", b"{}".to_vec())
        .await?;
    assert_eq!(status, 404);

    daemon.stop().await?;
    ensure!(
        !dir.join("cnm.sock").exists(),
        "the plugin socket is removed on stop"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn the_ipam_plugins_pools_survive_a_restart() -> Result<()> {
    let host = TestHost::new().await?;
    let dir = host.run_dir().join("docker-plugins");
    let start = || async {
        let mut cfg = common::config(&host, false)?;
        cfg.docker_plugin = Some(plugin_config(&dir));
        anyhow::Ok(cnm_daemon::Daemon::start(cfg).await?)
    };
    let daemon = start().await?;
    let plugin = Client::new(&dir.join("cnm.sock"));
    let p = call(
        &plugin,
        "/IpamDriver.RequestPool",
        Some(
            json!({"AddressSpace": "local", "Pool": "10.66.0.0/24", "SubPool": "",
                    "Options": {}, "V6": false}),
        ),
    )
    .await?;
    let id = p["PoolID"].as_str().unwrap().to_owned();
    let a = call(
        &plugin,
        "/IpamDriver.RequestAddress",
        Some(json!({"PoolID": id, "Address": "10.66.0.7", "Options": {}})),
    )
    .await?;
    assert_eq!(a["Address"], "10.66.0.7/24");
    daemon.stop().await?;

    let daemon = start().await?;
    // The pool is still there (an overlapping one is refused) and so is its address.
    let again = call(
        &plugin,
        "/IpamDriver.RequestPool",
        Some(
            json!({"AddressSpace": "local", "Pool": "10.66.0.0/25", "SubPool": "",
                    "Options": {}, "V6": false}),
        ),
    )
    .await?;
    assert!(
        again["Error"].as_str().unwrap().contains("overlaps"),
        "{again}"
    );
    let b = call(
        &plugin,
        "/IpamDriver.RequestAddress",
        Some(json!({"PoolID": id, "Address": "10.66.0.7", "Options": {}})),
    )
    .await?;
    assert!(
        !b["Error"].as_str().unwrap().is_empty(),
        "10.66.0.7 is still taken: {b}"
    );
    assert_eq!(
        call(
            &plugin,
            "/IpamDriver.ReleaseAddress",
            Some(json!({"PoolID": id, "Address": "10.66.0.7"})),
        )
        .await?,
        json!({"Error": ""})
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_restarted_cnmd_keeps_serving_dockers_networks_and_endpoints() -> Result<()> {
    let host = TestHost::new().await?;
    let dir = host.run_dir().join("docker-plugins");
    let start = || async {
        let mut cfg = common::config(&host, false)?;
        cfg.docker_plugin = Some(plugin_config(&dir));
        anyhow::Ok(cnm_daemon::Daemon::start(cfg).await?)
    };
    let daemon = start().await?;
    let plugin = Client::new(&dir.join("cnm.sock"));
    let host_nl = host.netlink().clone();
    let links_start = link_names(&host_nl).await?;
    let n = call(
        &plugin,
        "/NetworkDriver.CreateNetwork",
        Some(json!({"NetworkID": NET, "Options": {},
                    "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.67.0.0/24",
                                  "Gateway": "10.67.0.1/24"}]})),
    )
    .await?;
    assert_eq!(n, json!({}));
    let mut containers = Vec::new();
    for (i, (ep, addr)) in [(EP1, "10.67.0.2/24"), (EP2, "10.67.0.3/24")]
        .into_iter()
        .enumerate()
    {
        let r = call(
            &plugin,
            "/NetworkDriver.CreateEndpoint",
            Some(json!({"NetworkID": NET, "EndpointID": ep,
                        "Interface": {"Address": addr}, "Options": {}})),
        )
        .await?;
        assert_eq!(r["Err"], "", "{r}");
        let j = call(
            &plugin,
            "/NetworkDriver.Join",
            Some(
                json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/x",
                        "Options": {}}),
            ),
        )
        .await?;
        let src = j["InterfaceName"]["SrcName"].as_str().unwrap().to_owned();
        let ns = host.sandbox_ns(&format!("r{i}")).await?;
        let nl = dockerd_moves_in(&host_nl, &src, &ns, addr).await?;
        containers.push((ns, nl, src));
    }
    probe::icmp(&containers[0].0, "10.67.0.3".parse()?).await?;
    daemon.stop().await?;

    // A new cnmd on the same state: traffic still flows, and dockerd's ids still work.
    let daemon = start().await?;
    probe::icmp(&containers[0].0, "10.67.0.3".parse()?).await?;
    probe::icmp(&containers[1].0, "10.67.0.2".parse()?).await?;
    let info = call(
        &plugin,
        "/NetworkDriver.EndpointOperInfo",
        Some(json!({"NetworkID": NET, "EndpointID": EP2})),
    )
    .await?;
    assert_eq!(info["Err"], "", "{info}");
    for (ep, (_ns, nl, src)) in [EP1, EP2].into_iter().zip(&containers) {
        let body = json!({"NetworkID": NET, "EndpointID": ep});
        assert_eq!(
            call(&plugin, "/NetworkDriver.Leave", Some(body.clone())).await?,
            json!({})
        );
        dockerd_moves_out(nl, host.netns(), src).await?;
        assert_eq!(
            call(&plugin, "/NetworkDriver.DeleteEndpoint", Some(body)).await?,
            json!({})
        );
    }
    assert_eq!(
        call(
            &plugin,
            "/NetworkDriver.DeleteNetwork",
            Some(json!({"NetworkID": NET}))
        )
        .await?,
        json!({})
    );
    assert_eq!(link_names(&host_nl).await?, links_start, "no link left");
    assert!(daemon.controller().sandboxes().is_empty());
    daemon.stop().await?;
    Ok(())
}
