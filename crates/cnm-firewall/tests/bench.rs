//! Timing of publish/unpublish transactions (privileged; prints a small table).
//! `publish_and_unpublish_timings`: 100 ports in one call; `one_mapping_cost_is_flat`: one
//! mapping added and removed beside 0 and 1000 other endpoints' mappings;
//! `a_fragment_change_is_flat_beside_its_own_and_the_bridges`: one element of a declared
//! fragment added and removed beside 0, then 1000 of its own and 1000 bridge mappings.
//! `unshare --mount --propagation private -- cargo test -p cnm-firewall --release --test bench -- --ignored --nocapture`
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::Result;
use cnm_firewall::{
    Action, ChainHook, ChainType, ElementChange, EndpointPort, FieldType, Firewall, FragmentChain,
    FragmentSet, FragmentSpec, GatewayMode, Key, Match, NetworkRules, PortMapping, Protocol, Rule,
    SetElement, Value,
};
use cnm_sandbox::NetNs;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(mappings: &[PortMapping], runs: usize) -> Result<(Duration, Duration, u64, u64)> {
    let ns = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&ns).await?;
    fw.add_network(&NetworkRules {
        id: "n1".into(),
        bridge: "br-n1".parse()?,
        subnets_v4: vec!["172.18.0.0/16".parse()?],
        subnets_v6: vec![],
        icc: true,
        masquerade: true,
        internal: false,
        host_access: false,
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
            proto: Protocol::Tcp,
            host_ip: None,
            host_ports: (8000 + i, 8000 + i),
            container_ip: ip,
            container_ports: (9000 + i, 9000 + i),
        })
        .collect();
    let range = [PortMapping {
        proto: Protocol::Tcp,
        host_ip: None,
        host_ports: (8000, 8099),
        container_ip: ip,
        container_ports: (8000, 8099),
    }];
    for (name, maps, runs) in [
        ("100 single ports", &singles[..], 50),
        ("100-port range  ", &range[..], 50),
    ] {
        let (add, del, add_tx, del_tx) = measure(maps, runs).await?;
        eprintln!(
            "{name}: publish {add:?} ({add_tx} tx), unpublish {del:?} ({del_tx} tx), median of {runs}"
        );
        assert_eq!((add_tx, del_tx), (1, 1));
    }
    Ok(())
}

fn network() -> Result<NetworkRules> {
    Ok(NetworkRules {
        id: "n1".into(),
        bridge: "br-n1".parse()?,
        subnets_v4: vec!["172.18.0.0/16".parse()?],
        subnets_v6: vec![],
        icc: true,
        masquerade: true,
        internal: false,
        host_access: false,
        gateway_mode: GatewayMode::Nat,
    })
}

/// Median (publish, unpublish) of one single-port mapping with `others` endpoints present,
/// each publishing one port (as with 1000 containers on one network).
async fn one_mapping(others: u16, runs: usize) -> Result<(Duration, Duration)> {
    let ns = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&ns).await?;
    fw.add_network(&network()?).await?;
    for i in 0..others {
        let ip = std::net::Ipv4Addr::new(172, 18, 1 + (i / 250) as u8, 2 + (i % 250) as u8);
        fw.add_port_mappings(
            "n1",
            &format!("ep{i}"),
            &[PortMapping {
                proto: Protocol::Tcp,
                host_ip: None,
                host_ports: (10000 + i, 10000 + i),
                container_ip: ip.into(),
                container_ports: (80, 80),
            }],
        )
        .await?;
    }
    let probe = [PortMapping {
        proto: Protocol::Tcp,
        host_ip: None,
        host_ports: (8080, 8080),
        container_ip: "172.18.0.2".parse()?,
        container_ports: (80, 80),
    }];
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        fw.add_port_mappings("n1", "probe", &probe).await?;
        add.push(start.elapsed());
        let start = Instant::now();
        fw.remove_port_mappings("probe").await?;
        del.push(start.elapsed());
    }
    Ok((median(add), median(del)))
}

/// Median time to guard one endpoint's port (the anti-spoofing transaction of a join) and to
/// forget it, beside `others` guarded endpoints.
async fn one_port(others: u16, runs: usize) -> Result<(Duration, Duration)> {
    let ns = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&ns).await?;
    fw.add_network(&network()?).await?;
    let port = |i: u16| -> Result<EndpointPort> {
        Ok(EndpointPort {
            endpoint_id: format!("ep{i}"),
            network_id: "n1".into(),
            port: format!("veth{i:07x}").parse()?,
            mac: cnm_types::MacAddress([0x02, 0x42, 0xac, 0x12, (i >> 8) as u8, i as u8]),
            ipv4: Some(std::net::Ipv4Addr::new(172, 18, (i >> 8) as u8, i as u8)),
            ipv6: None,
        })
    };
    for i in 1..=others {
        fw.add_endpoint(&port(i)?).await?;
    }
    let probe = port(0)?;
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        fw.add_endpoint(&probe).await?;
        add.push(start.elapsed());
        let start = Instant::now();
        fw.remove_endpoint("ep0").await?;
        del.push(start.elapsed());
    }
    Ok((median(add), median(del)))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn guarding_a_port_is_cheap_and_flat() -> Result<()> {
    let (add0, del0) = one_port(0, 100).await?;
    let (add1k, del1k) = one_port(1000, 100).await?;
    eprintln!("guard one port, 0 others:    add {add0:?}, remove {del0:?}, median of 100");
    eprintln!("guard one port, 1000 others: add {add1k:?}, remove {del1k:?}, median of 100");
    let slack = Duration::from_micros(300);
    assert!(
        add1k <= add0 * 2 + slack,
        "guard grows: {add0:?} -> {add1k:?}"
    );
    assert!(
        del1k <= del0 * 2 + slack,
        "unguard grows: {del0:?} -> {del1k:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn one_mapping_cost_is_flat() -> Result<()> {
    let (add0, del0) = one_mapping(0, 100).await?;
    let (add1k, del1k) = one_mapping(1000, 100).await?;
    eprintln!("one mapping, 0 others:    publish {add0:?}, unpublish {del0:?}, median of 100");
    eprintln!("one mapping, 1000 others: publish {add1k:?}, unpublish {del1k:?}, median of 100");
    // loose bounds: a cost that grows with the number of endpoints is many times larger
    let slack = Duration::from_micros(300);
    assert!(
        add1k <= add0 * 2 + slack,
        "publish grows: {add0:?} -> {add1k:?}"
    );
    assert!(
        del1k <= del0 * 2 + slack,
        "unpublish grows: {del0:?} -> {del1k:?}"
    );
    Ok(())
}

/// Median (add, delete) of one element of a declared fragment's set, with `others` elements of
/// its own in the same set and `others` mappings of the bridge fragment beside it.
async fn one_fragment_element(others: u16, runs: usize) -> Result<(Duration, Duration, u64)> {
    let ns = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&ns).await?;
    fw.add_network(&network()?).await?;
    let frag = fw.fragment(
        FragmentSpec::new("tdrv")
            .set(FragmentSet::new(
                "blocked",
                [FieldType::IfName, FieldType::Ipv4],
            ))
            .chain(
                FragmentChain::base("screen", ChainHook::Forward, ChainType::Filter, -10).rule(
                    Rule::new(
                        [Match::in_set([Key::IifName, Key::IpDaddr], "blocked")],
                        Action::Drop,
                    ),
                ),
            ),
    )?;
    let dev: cnm_types::IfName = "tdrv0".parse()?;
    let element = |i: u16| {
        SetElement::new([
            Value::from(&dev),
            Value::Ipv4(std::net::Ipv4Addr::new(10, 9, (i >> 8) as u8, i as u8)),
        ])
    };
    // the owner's tables stay: one element that is never removed
    frag.apply(&ElementChange::new().add("blocked", element(u16::MAX)))
        .await?;
    let mut bulk = ElementChange::new();
    for i in 1..=others {
        bulk = bulk.add("blocked", element(i));
        let ip = std::net::Ipv4Addr::new(172, 18, 1 + (i / 250) as u8, 2 + (i % 250) as u8);
        fw.add_port_mappings(
            "n1",
            &format!("ep{i}"),
            &[PortMapping {
                proto: Protocol::Tcp,
                host_ip: None,
                host_ports: (10000 + i, 10000 + i),
                container_ip: ip.into(),
                container_ports: (80, 80),
            }],
        )
        .await?;
    }
    frag.apply(&bulk).await?;
    let (mut add, mut del) = (Vec::new(), Vec::new());
    let before = fw.transactions();
    for _ in 0..runs {
        let start = Instant::now();
        frag.apply(&ElementChange::new().add("blocked", element(0)))
            .await?;
        add.push(start.elapsed());
        let start = Instant::now();
        frag.apply(&ElementChange::new().delete("blocked", element(0)))
            .await?;
        del.push(start.elapsed());
    }
    let per_change = (fw.transactions() - before) / (2 * runs as u64);
    Ok((median(add), median(del), per_change))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_fragment_change_is_flat_beside_its_own_and_the_bridges() -> Result<()> {
    let (add0, del0, tx0) = one_fragment_element(0, 100).await?;
    let (add1k, del1k, tx1k) = one_fragment_element(1000, 100).await?;
    eprintln!(
        "fragment element, 0 others:           add {add0:?}, delete {del0:?}, {tx0} tx each, median of 100"
    );
    eprintln!(
        "fragment element, 1000 + 1000 bridge: add {add1k:?}, delete {del1k:?}, {tx1k} tx each, median of 100"
    );
    assert_eq!((tx0, tx1k), (1, 1), "one transaction per change");
    let slack = Duration::from_micros(300);
    assert!(
        add1k <= add0 * 2 + slack,
        "add grows: {add0:?} -> {add1k:?}"
    );
    assert!(
        del1k <= del0 * 2 + slack,
        "delete grows: {del0:?} -> {del1k:?}"
    );
    Ok(())
}
