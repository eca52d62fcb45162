//! cnmd registers its host resolver with systemd-resolved over D-Bus — here a fake
//! `org.freedesktop.resolve1` on a private `dbus-daemon` of the test's own — on the default
//! bridge of the test host's namespace, and reverts it when it stops; without a bus it starts
//! all the same.

mod common;
#[path = "../../cnm-dns/tests/common/mod.rs"]
mod dns_common;
#[path = "../../cnm-dns/tests/fake_resolved/mod.rs"]
mod fake_resolved;

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use cnm::cnm_dns::resolved::ResolvedBus;
use cnm_daemon::{DEFAULT_BRIDGE_IF, Daemon, HostDns, Resolved};
use cnm_testkit::TestHost;
use common::Client;
use dns_common::{Ask, addrs};
use fake_resolved::{Behaviour, Call, FakeResolved, PrivateBus};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn cnmd_registers_the_host_resolver_on_the_default_bridge_and_reverts_at_stop() -> Result<()>
{
    let host = TestHost::new().await?;
    let bus = PrivateBus::start().await?;
    let fake = FakeResolved::start(&bus, Behaviour::default()).await?;
    let mut cfg = common::config(&host, false)?;
    cfg.host_dns = HostDns::Require("127.0.0.153:0".parse()?);
    cfg.resolved = Some(Resolved {
        bus: ResolvedBus::Address(bus.address().to_owned()),
        link: DEFAULT_BRIDGE_IF.to_owned(),
    });
    let daemon = Daemon::start(cfg).await?;
    let at = daemon.host_dns().context("the host resolver runs")?;
    let bridge = host
        .netlink()
        .link(DEFAULT_BRIDGE_IF)
        .await?
        .context("the default bridge exists")?;
    let link = i32::try_from(bridge.index)?;
    let IpAddr::V4(ip) = at.ip() else {
        anyhow::bail!("asked for 127.0.0.153, got {at}");
    };

    // Registered during start, once: the listener's address and port on the bridge, the cnm
    // domain routing-only, never the default route.
    let calls = fake.calls();
    ensure!(
        calls
            == [
                Call::SetLinkDnsEx(
                    link,
                    vec![(2, ip.octets().to_vec(), at.port(), String::new())]
                ),
                Call::SetLinkDomains(link, vec![("cnm".to_owned(), true)]),
                Call::SetLinkDefaultRoute(link, false),
            ],
        "{calls:?} (bridge index {link}, listener {at})"
    );
    // What resolved sends there is answered: a container by NAME.NETWORK.cnm.
    let api = Client::new(daemon.socket());
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "front", "IPAM": {"Config": [{"Subnet": "10.97.0.0/24"}]}})),
        201,
    )
    .await?;
    api.expect(
        "POST",
        "/cnm/v1/sandboxes",
        Some(json!({"Name": "web"})),
        201,
    )
    .await?;
    let web = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web/connect",
            Some(json!({"Network": "front"})),
            200,
        )
        .await?;
    let cidr = web["Endpoints"][0]["IPv4Address"]
        .as_str()
        .context("IPv4Address")?;
    let web_addr: IpAddr = cidr.split('/').next().context("address")?.parse()?;
    let (m, _) = Ask::new("web.front.cnm", RecordType::A)
        .server(at)
        .from(host.netns())
        .await?;
    ensure!(
        m.response_code == ResponseCode::NoError && addrs(&m) == [web_addr],
        "{}: {:?}",
        m.response_code,
        addrs(&m)
    );
    ensure!(
        fake.calls().len() == 3,
        "registered once: {:?}",
        fake.calls()
    );

    daemon.stop().await?;
    let calls = fake.calls();
    ensure!(
        calls.len() == 4 && calls[3] == Call::RevertLink(link),
        "after stop: {calls:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn cnmd_without_a_bus_or_without_resolved_starts_and_serves_the_host_resolver() -> Result<()>
{
    let host = TestHost::new().await?;
    // No bus at all: a socket path nobody listens on.
    let nowhere = host.run_dir().join("no-bus");
    // A bus where resolved does not run.
    let bus = PrivateBus::start().await?;
    for addr in [
        format!("unix:path={}", nowhere.display()),
        bus.address().to_owned(),
    ] {
        let mut cfg = common::config(&host, false)?;
        cfg.host_dns = HostDns::Require("127.0.0.153:0".parse()?);
        cfg.resolved = Some(Resolved {
            bus: ResolvedBus::Address(addr.clone()),
            link: DEFAULT_BRIDGE_IF.to_owned(),
        });
        let daemon = Daemon::start(cfg)
            .await
            .with_context(|| format!("bus {addr}"))?;
        let at = daemon.host_dns().context("the host resolver runs")?;
        // The listener answers (a name of no network: not ours to say, REFUSED).
        let (m, _) = Ask::new("nobody.nonet", RecordType::A)
            .server(at)
            .from(host.netns())
            .await
            .with_context(|| format!("the host resolver with bus {addr}"))?;
        ensure!(
            m.response_code == ResponseCode::Refused,
            "{addr}: {}",
            m.response_code
        );
        daemon
            .stop()
            .await
            .with_context(|| format!("stop with bus {addr}"))?;
    }
    Ok(())
}
