//! cnmd's embedded DNS, through its API: sandboxes connected to a user-defined network resolve
//! each other by name and alias at 127.0.0.11 (asked from inside their namespaces), inspect
//! shows each endpoint's `Aliases` and `DNSNames`, and Docker's default `bridge` has no embedded
//! DNS (as in dockerd).

mod common;
// The DNS client that asks from inside a namespace: cnm-dns's own test fixture, shared.
#[path = "../../cnm-dns/tests/common/mod.rs"]
mod dns_common;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use common::Client;
use dns_common::{Ask, addrs};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};

fn v4(ep: &Value) -> Result<IpAddr> {
    let cidr = ep["IPv4Address"].as_str().context("IPv4Address")?;
    Ok(cidr.split('/').next().context("address")?.parse()?)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn sandboxes_on_a_user_network_resolve_each_other_and_inspect_shows_their_names() -> Result<()>
{
    let host = TestHost::new().await?;
    let resolv = host.run_dir().join("host-resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\nsearch corp.test\n")?;
    let mut cfg = common::config(&host, false)?;
    cfg.resolv_conf = Some(resolv);
    // cnmd's --host-dns, on a free port of 127.0.0.153 in the test host's namespace.
    cfg.host_dns = cnm_daemon::HostDns::Require("127.0.0.153:0".parse()?);
    let daemon = cnm_daemon::Daemon::start(cfg).await?;
    let api = Client::new(daemon.socket());

    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "front", "IPAM": {"Config": [{"Subnet": "10.98.0.0/24"}]}})),
        201,
    )
    .await?;
    let mut keys = Vec::new();
    for name in ["web", "db", "legacy"] {
        let sb = api
            .expect(
                "POST",
                "/cnm/v1/sandboxes",
                Some(json!({"Name": name})),
                201,
            )
            .await?;
        keys.push(sb["Key"].as_str().context("Key")?.to_owned());
    }
    let web = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web/connect",
            Some(json!({"Network": "front"})),
            200,
        )
        .await?;
    let db = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/db/connect",
            Some(json!({"Network": "front", "Aliases": ["pg"], "DnsNames": ["postgres"]})),
            200,
        )
        .await?;
    let db_ep = &db["Endpoints"][0];
    ensure!(
        db_ep["Aliases"] == json!(["pg"]) && db_ep["DNSNames"] == json!(["db", "pg", "postgres"]),
        "{db}"
    );
    ensure!(web["Endpoints"][0]["DNSNames"] == json!(["web"]), "{web}");
    let db_addr = v4(db_ep)?;

    let web_ns = NetNs::open(&keys[0])?;
    for tcp in [false, true] {
        for name in ["db", "pg", "postgres", "db.front"] {
            let mut q = Ask::new(name, RecordType::A);
            if tcp {
                q = q.tcp();
            }
            let (m, _) = q.from(&web_ns).await?;
            ensure!(
                m.response_code == ResponseCode::NoError && addrs(&m) == [db_addr],
                "{name} (tcp {tcp}): {} {:?}",
                m.response_code,
                addrs(&m)
            );
        }
    }
    // The host resolves it too, as name.network (cnmd's host resolver).
    let at = daemon.host_dns().context("the host resolver runs")?;
    for name in ["db.front", "pg.front.cnm"] {
        let (m, _) = Ask::new(name, RecordType::A)
            .server(at)
            .from(host.netns())
            .await?;
        ensure!(
            addrs(&m) == [db_addr],
            "{name} from the host: {}",
            m.response_code
        );
    }
    // A network's own DNS servers are a driver option; a bad one is refused, naming it.
    let err = api
        .expect(
            "POST",
            "/networks/create",
            Some(json!({"Name": "bad", "Options": {"com.cnm.network.dns": "nowhere"}})),
            400,
        )
        .await?;
    ensure!(err.to_string().contains("com.cnm.network.dns"), "{err}");

    let rc = std::fs::read_to_string(web["ResolvConfPath"].as_str().context("path")?)?;
    ensure!(
        rc == "search corp.test\nnameserver 127.0.0.11\noptions ndots:0\n",
        "{rc:?}"
    );

    // Docker's default bridge: no embedded DNS, the host's servers, no DNS names.
    let legacy = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/legacy/connect",
            Some(json!({"Network": "bridge", "Aliases": ["old"]})),
            200,
        )
        .await?;
    let ep = &legacy["Endpoints"][0];
    ensure!(
        ep["Aliases"] == json!(["old"]) && ep["DNSNames"] == json!([]),
        "{legacy}"
    );
    let rc = std::fs::read_to_string(legacy["ResolvConfPath"].as_str().context("path")?)?;
    ensure!(
        rc.contains("nameserver 192.0.2.53") && !rc.contains("127.0.0.11"),
        "{rc}"
    );
    let legacy_ns = NetNs::open(&keys[2])?;
    ensure!(
        Ask::new("web", RecordType::A)
            .from(&legacy_ns)
            .await
            .is_err(),
        "nothing listens at 127.0.0.11 on the default bridge"
    );

    // Disconnect: the name is gone from the next query on.
    api.expect(
        "POST",
        "/cnm/v1/sandboxes/db/disconnect",
        Some(json!({"Network": "front"})),
        200,
    )
    .await?;
    // (It is not ours any more, so it goes to the host's server, which the test host cannot
    // reach: SERVFAIL after the upstream timeout.)
    let (m, _) = Ask::new("pg", RecordType::A)
        .timeout(Duration::from_secs(8))
        .from(&web_ns)
        .await?;
    ensure!(
        addrs(&m).is_empty() && m.response_code != ResponseCode::NoError,
        "pg after disconnect: {}",
        m.response_code
    );
    daemon.stop().await?;
    Ok(())
}
