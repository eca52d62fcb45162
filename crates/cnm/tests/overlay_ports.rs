//! Published ports of an overlay endpoint through the library: the controller's gateway
//! network (Docker's docker_gwbridge) publishes them on the host where the endpoint lives,
//! DNAT'd to the sandbox's address on it; `Endpoint::publish_ports` replaces and withdraws
//! them, a refused replacement leaves the old ones working, and deleting the sandbox takes
//! them away. Real etcd (the cluster store) in the test host, real traffic from its outside
//! namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm::cnm_store::{EtcdConfig, EtcdStore};
use cnm::{EndpointOptions, NetworkOptions, PortBinding};
use cnm_sandbox::NetNs;
use cnm_testkit::etcd::{EtcdServer, run_in};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};

fn port(s: &str) -> Result<PortBinding> {
    s.parse().with_context(|| format!("port binding {s}"))
}

/// Retries a probe (at most `within`) until it succeeds.
async fn reaches(from: &NetNs, addr: IpAddr, port: u16, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        match probe::tcp(from, addr, port).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > within => {
                return Err(e).context(format!("{addr}:{port} not reached within {within:?}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_overlay_endpoints_ports_are_published_replaced_and_withdrawn_on_its_host() -> Result<()>
{
    let host = TestHost::new().await?;
    let outside = host.outside().await?;
    let vtep = outside.host_addr_v4();
    let etcd = EtcdServer::start(host.netns(), vtep).await?;
    let endpoint = etcd.endpoint();
    let builder = host.controller_builder()?;
    let from = outside.netns().clone();
    // The controller (and its etcd client) live in the host namespace.
    run_in(&host.netns().clone(), move || async move {
        let store = EtcdStore::connect(EtcdConfig::new(endpoint.parse()?)).await?;
        let gw_opts = NetworkOptions::default()
            .driver_option("com.docker.network.bridge.name", "cnm_gwbridge")
            .driver_option("com.docker.network.bridge.enable_icc", "false")
            .driver_option("com.docker.network.bridge.enable_ip_masquerade", "true");
        let ctl = builder
            .cluster_store(Arc::new(store))
            .advertise_addr(vtep)
            .gateway_network("cnm_gwbridge", "bridge", gw_opts)
            .build()
            .await?;
        let net = ctl
            .new_network(
                "overlay",
                "ov",
                NetworkOptions::default().subnet("10.77.0.0/24".parse()?),
            )
            .await?;
        let sb = ctl.new_sandbox("web", []).await?;
        let ns = NetNs::open(sb.key())?;
        let _server = TcpEchoServer::start(&ns, Ipv4Addr::UNSPECIFIED.into(), 7000).await?;
        let ep = net
            .connect(
                "web",
                &sb,
                EndpointOptions::default().publish(port("8080:7000/tcp")?),
                [],
            )
            .await?;
        let within = Duration::from_secs(5);
        let quick = probe::Probe::new().timeout(Duration::from_secs(1));
        reaches(&from, vtep, 8080, within).await?;

        // Replaced: the new port answers, the old one no longer does.
        let made = ep.publish_ports(vec![port("8081:7000/tcp")?]).await?;
        ensure!(made == [port("8081:7000/tcp")?], "made {made:?}");
        reaches(&from, vtep, 8081, within).await?;
        ensure!(
            quick.tcp(&from, vtep, 8080).await.is_err(),
            "8080 after replace"
        );

        // A replacement the gateway network cannot publish (its host port is another
        // sandbox's) is refused, and the old port keeps answering.
        let other = ctl.new_sandbox("other", []).await?;
        net.connect(
            "other",
            &other,
            EndpointOptions::default().publish(port("9090:7000/tcp")?),
            [],
        )
        .await?;
        let e = ep
            .publish_ports(vec![port("9090:7000/tcp")?])
            .await
            .err()
            .context("a host port taken by another sandbox was published twice")?;
        ensure!(
            e.to_string().contains("9090/tcp") && e.to_string().contains("already in use"),
            "{e}"
        );
        ensure!(ep.port_bindings() == [port("8081:7000/tcp")?]);
        reaches(&from, vtep, 8081, within)
            .await
            .context("the old port after a refused replacement")?;

        // Withdrawn: nothing answers; published again; the sandbox deleted: gone.
        ensure!(ep.publish_ports(Vec::new()).await?.is_empty());
        ensure!(
            quick.tcp(&from, vtep, 8081).await.is_err(),
            "8081 withdrawn"
        );
        ep.publish_ports(vec![port("8080:7000/tcp")?]).await?;
        reaches(&from, vtep, 8080, within).await?;
        sb.delete().await?;
        ensure!(
            quick.tcp(&from, vtep, 8080).await.is_err(),
            "8080 after delete"
        );
        let gw = ctl.network("cnm_gwbridge")?;
        if gw.endpoints().len() != 1 {
            bail!("gateway endpoints left: {:?}", gw.endpoints().len());
        }
        ctl.shutdown().await?;
        Ok(())
    })
    .await?;
    drop(etcd);
    Ok(())
}
