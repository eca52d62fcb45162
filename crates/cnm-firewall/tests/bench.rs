//! Timing of publish/unpublish transactions (privileged; prints a small table).
//! `unshare --mount --propagation private -- cargo test -p cnm-firewall --release --test bench -- --ignored --nocapture`
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::Result;
use cnm_firewall::{Backend, Firewall, GatewayMode, NetworkRules, PortMapping, Proto};
use cnm_sandbox::NetNs;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(
    backend: Backend,
    mappings: &[PortMapping],
    runs: usize,
) -> Result<(Duration, Duration, u64, u64)> {
    let ns = NetNs::create_anonymous().await?;
    let fw = Firewall::with_backend(&ns, backend).await?;
    fw.add_network(&NetworkRules {
        id: "n1".into(),
        bridge: "br-n1".parse()?,
        subnets_v4: vec!["172.18.0.0/16".parse()?],
        subnets_v6: vec![],
        icc: true,
        masquerade: true,
        internal: false,
        gateway_mode: GatewayMode::Nat,
    })
    .await?;
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let (mut add_tx, mut del_tx) = (0, 0);
    for _ in 0..runs {
        let t0 = fw.transactions();
        let start = Instant::now();
        fw.add_port_mappings("n1", "ep1", mappings).await?;
        add.push(start.elapsed());
        let t1 = fw.transactions();
        let start = Instant::now();
        fw.remove_port_mappings("ep1").await?;
        del.push(start.elapsed());
        add_tx = t1 - t0;
        del_tx = fw.transactions() - t1;
    }
    Ok((median(add), median(del), add_tx, del_tx))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn publish_and_unpublish_timings() -> Result<()> {
    let ip = "172.18.0.2".parse()?;
    let singles: Vec<PortMapping> = (0..100)
        .map(|i| PortMapping {
            proto: Proto::Tcp,
            host_ip: None,
            host_ports: (8000 + i, 8000 + i),
            container_ip: ip,
            container_ports: (9000 + i, 9000 + i),
        })
        .collect();
    let range = [PortMapping {
        proto: Proto::Tcp,
        host_ip: None,
        host_ports: (8000, 8099),
        container_ip: ip,
        container_ports: (8000, 8099),
    }];
    for (name, backend, maps, runs) in [
        (
            "100 single ports, netlink",
            Backend::Netlink,
            &singles[..],
            50,
        ),
        (
            "100-port range,   netlink",
            Backend::Netlink,
            &range[..],
            50,
        ),
        (
            "100 single ports, nft -f ",
            Backend::NftCommand,
            &singles[..],
            20,
        ),
        (
            "100-port range,   nft -f ",
            Backend::NftCommand,
            &range[..],
            20,
        ),
    ] {
        let (add, del, add_tx, del_tx) = measure(backend, maps, runs).await?;
        eprintln!(
            "{name}: publish {add:?} ({add_tx} tx), unpublish {del:?} ({del_tx} tx), median of {runs}"
        );
        assert_eq!((add_tx, del_tx), (1, 1));
    }
    Ok(())
}
