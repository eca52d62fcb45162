//! Input that could hurt the host, over cnmd's HTTP API with a throwaway namespace as its host:
//! the status each refusal maps to (400 for bad values, 409 for conflicts with the host or the
//! sandbox), the message naming the value, and nothing changed (store, IPAM, host links).

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use cnm::cnm_sandbox::{LinkKind, LinkSpec};
use cnm::cnm_types::IfName;
use cnm_daemon::Daemon;
use cnm_testkit::TestHost;
use common::Client;
use serde_json::{Value, json};

/// What a refused request must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    store: Vec<(String, Vec<u8>)>,
    ipam: Option<cnm::cnm_ipam::IpamState>,
    links: BTreeSet<String>,
}

async fn snapshot(daemon: &Daemon, host: &TestHost) -> Result<Snapshot> {
    let ctl = daemon.controller();
    Ok(Snapshot {
        store: ctl
            .store()?
            .list("")
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect(),
        ipam: ctl.ipam()?.snapshot().await,
        links: host
            .netlink()
            .links()
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect(),
    })
}

/// Sends `body`; fails unless the answer is `want`; returns Docker's error message.
async fn refused(api: &Client, method: &str, path: &str, body: Value, want: u16) -> Result<String> {
    let (status, v) = api.json(method, path, Some(body)).await?;
    let m = v["message"].as_str().unwrap_or_default().to_owned();
    ensure!(
        status == want,
        "{method} {path}: expected {want}, got {status}: {v}"
    );
    Ok(m)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn reserved_and_too_wide_subnets_are_400_and_change_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let before = snapshot(&daemon, &host).await?;
    for (subnet, why) in [
        // Given 500 before: now refused up front.
        ("::/0", "wider than /16"),
        ("::1/128", "loopback"),
        ("ff00::/8", "multicast"),
        // Accepted before.
        ("127.0.0.0/8", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("0.0.0.0/8", "this network"),
        ("169.254.0.0/16", "link-local"),
        ("255.255.255.255/32", "limited broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("fe80::/64", "link-local"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("0.0.0.0/0", "wider than /8"),
    ] {
        let body = json!({"Name": "bad", "EnableIPv6": subnet.contains(':'),
                          "IPAM": {"Config": [{"Subnet": subnet}]}});
        let m = refused(&api, "POST", "/networks/create", body, 400).await?;
        ensure!(
            m.contains(&format!("subnet {subnet:?}")) && m.contains(why),
            "{subnet}: {m}"
        );
    }
    ensure!(
        before == snapshot(&daemon, &host).await?,
        "a refused subnet changed state"
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_subnet_on_a_host_lan_is_409_naming_it_unless_allowed() -> Result<()> {
    let host = TestHost::new().await?;
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
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());

    let before = snapshot(&daemon, &host).await?;
    let body = json!({"Name": "lan", "IPAM": {"Config": [{"Subnet": "10.77.0.0/24"}]}});
    let m = refused(&api, "POST", "/networks/create", body.clone(), 409).await?;
    ensure!(
        m.contains("subnet 10.77.0.0/24 overlaps 10.77.0.0/24 on lan0 (route)")
            && m.contains("com.cnm.network.allow_host_overlap"),
        "{m}"
    );
    ensure!(
        before == snapshot(&daemon, &host).await?,
        "a refused overlap changed state"
    );
    // A bad value of the opt-in is named, and is not handed to the driver.
    let mut bad = body.clone();
    bad["Options"] = json!({"com.cnm.network.allow_host_overlap": "maybe"});
    let m = refused(&api, "POST", "/networks/create", bad, 400).await?;
    ensure!(
        m.contains("allow_host_overlap") && m.contains("maybe"),
        "{m}"
    );

    let mut allowed = body;
    allowed["Options"] = json!({"com.cnm.network.allow_host_overlap": "true"});
    api.expect("POST", "/networks/create", Some(allowed), 201)
        .await?;
    let v = api.expect("GET", "/networks/lan", None, 200).await?;
    ensure!(
        v["Options"]["com.cnm.network.allow_host_overlap"] == "true"
            && v["IPAM"]["Config"][0]["Subnet"] == "10.77.0.0/24",
        "{v}"
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn bad_mtu_mac_and_host_ip_are_4xx_and_change_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "n1", "IPAM": {"Config": [{"Subnet": "10.56.0.0/24"}]}})),
        201,
    )
    .await?;
    api.expect("POST", "/cnm/v1/sandboxes", Some(json!({"Name": "a"})), 201)
        .await?;
    api.expect("POST", "/cnm/v1/sandboxes", Some(json!({"Name": "b"})), 201)
        .await?;
    api.expect(
        "POST",
        "/networks/n1/connect",
        Some(json!({"Container": "a", "EndpointConfig": {"MacAddress": "02:42:0a:38:00:63"}})),
        200,
    )
    .await?;
    let before = snapshot(&daemon, &host).await?;

    // MTU: below 1280 on an IPv6 network was a 404 (the kernel's "no such device" when the
    // gateway address went on a bridge without IPv6); below 68 or above 65535 anywhere.
    let mtu = "com.docker.network.driver.mtu";
    for (value, ipv6) in [("1000", true), ("67", false), ("65536", false)] {
        let mut body = json!({"Name": "m", "Options": {mtu: value}});
        if ipv6 {
            body["EnableIPv6"] = json!(true);
            body["IPAM"] = json!({"Config": [{"Subnet": "fd00:56::/64"}]});
        }
        let m = refused(&api, "POST", "/networks/create", body, 400).await?;
        ensure!(m.contains(mtu) && m.contains(value), "{m}");
    }
    // A MAC another endpoint of the network has: 409 naming it and that endpoint.
    for path in ["/networks/n1/connect", "/cnm/v1/sandboxes/b/connect"] {
        let body = if path.starts_with("/networks") {
            json!({"Container": "b", "EndpointConfig": {"MacAddress": "02:42:0a:38:00:63"}})
        } else {
            json!({"Network": "n1", "MacAddress": "02:42:0a:38:00:63"})
        };
        let m = refused(&api, "POST", path, body, 409).await?;
        ensure!(
            m.contains("02:42:0a:38:00:63") && m.contains("endpoint a"),
            "{m}"
        );
    }
    // A published port on a host address that is not unicast: 400 naming it.
    for ip in ["255.255.255.255", "224.0.0.1", "[ff02::1]"] {
        let body = json!({"Network": "n1", "Ports": [format!("{ip}:18082:80")]});
        let m = refused(&api, "POST", "/cnm/v1/sandboxes/b/connect", body, 400).await?;
        ensure!(m.contains(ip.trim_matches(['[', ']'])), "{m}");
    }
    ensure!(
        before == snapshot(&daemon, &host).await?,
        "a refused request changed state"
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ports_on_a_connect_that_does_not_make_the_gateway_are_409() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    for (name, subnet) in [("alpha", "10.57.0.0/24"), ("zeta", "10.58.0.0/24")] {
        api.expect(
            "POST",
            "/networks/create",
            Some(json!({"Name": name, "IPAM": {"Config": [{"Subnet": subnet}]}})),
            201,
        )
        .await?;
    }
    api.expect(
        "POST",
        "/cnm/v1/sandboxes",
        Some(json!({"Name": "web"})),
        201,
    )
    .await?;
    api.expect(
        "POST",
        "/cnm/v1/sandboxes/web/connect",
        Some(json!({"Network": "alpha"})),
        200,
    )
    .await?;
    let before = (
        snapshot(&daemon, &host).await?,
        api.expect("GET", "/cnm/v1/sandboxes/web", None, 200)
            .await?,
    );
    let m = refused(
        &api,
        "POST",
        "/cnm/v1/sandboxes/web/connect",
        json!({"Network": "zeta", "Ports": ["18083:80"]}),
        409,
    )
    .await?;
    ensure!(
        m.contains("18083:80/tcp") && m.contains("network alpha") && m.contains("gateway priority"),
        "{m}"
    );
    let after = (
        snapshot(&daemon, &host).await?,
        api.expect("GET", "/cnm/v1/sandboxes/web", None, 200)
            .await?,
    );
    ensure!(before == after, "a refused connect changed state");
    // With a higher priority it becomes the gateway and its port is published.
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web/connect",
            Some(json!({"Network": "zeta", "Ports": ["18083:80"], "GatewayPriority": 1})),
            200,
        )
        .await?;
    let zeta = sb["Endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["Network"] == "zeta"))
        .context("zeta endpoint")?;
    ensure!(
        zeta["Gateway"] == true && zeta["Ports"][0]["HostPort"] == 18083,
        "{sb}"
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn sandbox_delete_racing_disconnects_never_fails() -> Result<()> {
    const ROUNDS: usize = 80;
    const NETWORKS: usize = 4;
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    for n in 0..NETWORKS {
        api.expect(
            "POST",
            "/networks/create",
            Some(json!({"Name": format!("race{n}"),
                        "IPAM": {"Config": [{"Subnet": format!("10.59.{n}.0/24")}]}})),
            201,
        )
        .await?;
    }
    let mut outcomes = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..ROUNDS {
        let name = format!("r{i}");
        api.expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({"Name": name})),
            201,
        )
        .await?;
        for n in 0..NETWORKS {
            api.expect(
                "POST",
                &format!("/cnm/v1/sandboxes/{name}/connect"),
                Some(json!({"Network": format!("race{n}")})),
                200,
            )
            .await?;
        }
        // The delete and one disconnect per network, all at once.
        let delete = {
            let (api, name) = (api.clone(), name.clone());
            tokio::spawn(async move {
                api.json("DELETE", &format!("/cnm/v1/sandboxes/{name}"), None)
                    .await
            })
        };
        let disconnects: Vec<_> = (0..NETWORKS)
            .map(|n| {
                let (api, name) = (api.clone(), name.clone());
                tokio::spawn(async move {
                    api.json(
                        "POST",
                        &format!("/cnm/v1/sandboxes/{name}/disconnect"),
                        Some(json!({"Network": format!("race{n}")})),
                    )
                    .await
                })
            })
            .collect();
        let (status, body) = delete.await??;
        ensure!(
            status == 204,
            "round {i}: the sandbox delete failed: {status} {body}"
        );
        for d in disconnects {
            // A disconnect wins (200), finds the sandbox gone (404) or the network already
            // left (409): never a server error.
            let (status, body) = d.await??;
            ensure!(
                [200, 404, 409].contains(&status),
                "round {i}: a disconnect answered {status} {body}"
            );
            *outcomes.entry(status).or_default() += 1;
        }
        for n in 0..NETWORKS {
            let net = daemon.controller().network(&format!("race{n}"))?;
            ensure!(
                net.endpoints().is_empty(),
                "round {i}: an endpoint was left on race{n}"
            );
        }
    }
    let records = daemon.controller().store()?.list("endpoint/").await?;
    ensure!(
        records.is_empty(),
        "endpoint records left: {}",
        records.len()
    );
    ensure!(daemon.controller().sandboxes().is_empty());
    ensure!(
        outcomes.get(&200).is_some_and(|n| *n > 0),
        "no disconnect won a race: {outcomes:?}"
    );
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_full_id_finds_its_network_before_one_named_after_it() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let a = api
        .expect("POST", "/networks/create", Some(json!({"Name": "a"})), 201)
        .await?;
    let id = a["Id"].as_str().context("Id")?.to_owned();
    // A network named after a's full id (a valid name: 64 hex digits).
    let b = api
        .expect("POST", "/networks/create", Some(json!({"Name": id})), 201)
        .await?;
    let v = api
        .expect("GET", &format!("/networks/{id}"), None, 200)
        .await?;
    ensure!(v["Name"] == "a" && v["Id"] == id.as_str(), "{v}");
    // b is still reachable by its own id; a delete by the full id removes a, not b.
    let b_id = b["Id"].as_str().context("Id")?;
    let v = api
        .expect("GET", &format!("/networks/{b_id}"), None, 200)
        .await?;
    ensure!(v["Name"] == id.as_str(), "{v}");
    let (s, _) = api.json("DELETE", &format!("/networks/{id}"), None).await?;
    ensure!(s == 204, "{s}");
    let v = api
        .expect("GET", &format!("/networks/{id}"), None, 200)
        .await?;
    ensure!(v["Id"] == b_id, "now the name finds b: {v}");
    daemon.stop().await?;
    Ok(())
}
