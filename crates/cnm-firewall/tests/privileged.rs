//! Privileged tests: real nftables in throwaway network namespaces (never the machine's own).
//! Run with `unshare --mount --propagation private -- cargo test -p cnm-firewall -- --ignored`.
//! (Add `--nocapture` to see the measured restore times and large-publication timings.)
#![allow(clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_firewall::{Firewall, GatewayMode, NetworkRules, PortMapping, Protocol};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink, RouteSpec};

/// Runs `sh -c script` inside `ns` (a child forked from a thread in `ns` inherits it).
async fn sh(ns: &NetNs, script: &str) -> Result<String> {
    let script = script.to_string();
    let out = ns
        .run(move || {
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .map(|o| (script, o))
        })
        .await??;
    let (script, out) = out;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn list(ns: &NetNs) -> Result<String> {
    sh(ns, "nft list ruleset").await
}

fn net(id: &str, bridge: &str, v4: &str) -> NetworkRules {
    NetworkRules {
        subnets_v6: vec!["fd00:1::/64".parse().unwrap()],
        icc: false,
        ..NetworkRules::nat(id, bridge.parse().unwrap(), vec![v4.parse().unwrap()])
    }
}

fn tcp(host: (u16, u16), ip: &str, cont: (u16, u16)) -> PortMapping {
    PortMapping {
        proto: Protocol::Tcp,
        host_ip: None,
        host_ports: host,
        container_ip: ip.parse().unwrap(),
        container_ports: cont,
    }
}

fn sample_ports() -> Vec<PortMapping> {
    vec![
        tcp((8080, 8080), "172.18.0.2", (80, 80)),
        PortMapping {
            proto: Protocol::Udp,
            ..tcp((5000, 5099), "172.18.0.2", (5000, 5099))
        },
        PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            ..tcp((9000, 9000), "172.18.0.2", (9000, 9000))
        },
        PortMapping {
            proto: Protocol::Sctp,
            host_ip: Some("10.9.0.1".parse().unwrap()),
            ..tcp((7000, 7002), "172.18.0.2", (8000, 8002))
        },
        PortMapping {
            host_ip: Some("fd00:9::1".parse().unwrap()),
            ..tcp((443, 443), "fd00:1::2", (8443, 8443))
        },
        tcp((6000, 6010), "fd00:1::2", (6000, 6010)),
    ]
}

async fn populate(fw: &Firewall) -> Result<()> {
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    fw.add_network(&NetworkRules {
        icc: true,
        internal: true,
        ..net("n2", "br-n2", "172.19.0.0/16")
    })
    .await?;
    fw.add_network(&NetworkRules {
        gateway_mode_v4: GatewayMode::Routed,
        gateway_mode_v6: GatewayMode::Routed,
        masquerade: false,
        ..net("n3", "br-n3", "172.20.0.0/16")
    })
    .await?;
    fw.add_port_mappings("n1", "ep1", &sample_ports()).await?;
    fw.add_port_mappings("n3", "ep3", &[tcp((80, 80), "172.20.0.2", (80, 80))])
        .await?;
    Ok(())
}

/// Loads nft text into `ns` with `nft -f` (the reference the netlink encoding must match).
async fn nft_load(ns: &NetNs, text: &str, name: &str) -> Result<()> {
    let path = std::env::temp_dir().join(format!("cnm-fw-{}-{name}.nft", std::process::id()));
    std::fs::write(&path, text)?;
    let r = sh(ns, &format!("nft -f {}", path.display())).await;
    std::fs::remove_file(&path)?;
    r.map(drop)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn netlink_install_lists_as_nft_loading_the_rendering() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let b = NetNs::create_anonymous().await?;
    let fa = Firewall::new(&a).await?;
    populate(&fa).await?;
    // the same desired ruleset, loaded by nft itself from our rendering
    nft_load(&b, &fa.render(), "reference").await?;
    let (la, lb) = (list(&a).await?, list(&b).await?);
    assert_eq!(la, lb, "netlink and nft -f listings differ");
    assert!(la.contains("tcp . 8080 : 172.18.0.2 . 80"), "{la}");
    assert!(la.contains("udp . 5000-5099 : 172.18.0.2"), "{la}");
    assert!(
        la.contains("meta mark set meta mark | 0x01000000 accept"),
        "{la}"
    );
    assert!(la.contains("table bridge cnm-bridge"), "{la}");
    // nft accepts its own listing back: the tables are well formed for nft 1.0.6
    let c = NetNs::create_anonymous().await?;
    nft_load(&c, &la, "listing").await?;
    assert_eq!(list(&c).await?, la);
    // 3 networks (the first one brings the tables) + 2 publishes; nothing before the first
    assert_eq!(fa.transactions(), 5);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn every_golden_file_loads_into_nft() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let ns = NetNs::create_anonymous().await?;
        sh(&ns, &format!("nft -f {}", path.display()))
            .await
            .with_context(|| path.display().to_string())?;
        ensure!(list(&ns).await?.contains("table inet cnm"));
        n += 1;
    }
    ensure!(n >= 10, "only {n} golden files");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn removals_leave_exactly_the_remaining_model() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    populate(&fw).await?;
    let before = fw.transactions();
    fw.remove_port_mappings("ep1").await?;
    fw.remove_network("n1").await?;
    assert_eq!(
        fw.transactions(),
        before + 2,
        "one transaction per operation"
    );
    let got = list(&a).await?;
    assert!(!got.contains("br-n1") && !got.contains("172.18."), "{got}");
    // the same model built directly in another namespace lists identically
    let b = NetNs::create_anonymous().await?;
    let reference = Firewall::new(&b).await?;
    reference
        .add_network(&NetworkRules {
            icc: true,
            internal: true,
            ..net("n2", "br-n2", "172.19.0.0/16")
        })
        .await?;
    reference
        .add_network(&NetworkRules {
            gateway_mode_v4: GatewayMode::Routed,
            gateway_mode_v6: GatewayMode::Routed,
            masquerade: false,
            ..net("n3", "br-n3", "172.20.0.0/16")
        })
        .await?;
    reference
        .add_port_mappings("n3", "ep3", &[tcp((80, 80), "172.20.0.2", (80, 80))])
        .await?;
    assert_eq!(got, list(&b).await?);
    // removing a network removes its endpoints' ports too
    fw.remove_network("n3").await?;
    let got = list(&a).await?;
    assert!(!got.contains("172.20.0.2"), "{got}");
    let e = fw.remove_network("n3").await.unwrap_err();
    assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn reconcile_restores_the_table_after_a_flush() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    populate(&fw).await?;
    let want = list(&a).await?;
    fw.pause_healing(true);
    sh(&a, "nft flush ruleset").await?;
    assert_eq!(list(&a).await?.trim(), "");
    fw.reconcile().await?;
    assert_eq!(list(&a).await?, want);
    // and again while the table exists
    fw.reconcile().await?;
    assert_eq!(list(&a).await?, want);
    Ok(())
}

/// Runs `script` in `ns` (someone else changing the ruleset), then waits for the firewall to
/// restore it; returns (time from starting the script to the restore, the firewall's own
/// figure from reading the notification to the restore's ack).
async fn heal_after(fw: &Firewall, ns: &NetNs, script: &str) -> Result<(Duration, Duration)> {
    let mut healing = fw.healing();
    let before = healing.borrow_and_update().restores;
    let start = Instant::now();
    sh(ns, script).await?;
    let deadline = Duration::from_secs(10);
    let got = tokio::time::timeout(deadline, healing.wait_for(|h| h.restores > before))
        .await
        .with_context(|| format!("no restore within {deadline:?} after `{script}`"))??;
    let total = start.elapsed();
    let own = got.last_restore.context("a restore reports its duration")?;
    ensure!(
        got.restores == before + 1,
        "one restore, got {}",
        got.restores - before
    );
    Ok((total, own))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn tables_come_back_by_themselves_after_a_flush_a_delete_or_an_edit() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    populate(&fw).await?;
    let want = list(&a).await?;
    let count = fw.transactions();
    for script in [
        "nft flush ruleset",
        "nft delete table inet cnm",
        "nft delete table inet cnm-bridge",
        "nft delete table bridge cnm-bridge",
        "nft flush chain inet cnm-bridge forward",
        "nft flush chain inet cnm guard",
        "nft delete element inet cnm-bridge dnat4_any '{ tcp . 8080 }'",
        "nft flush set inet cnm-bridge bridges",
        "nft add rule inet cnm forward accept",
        "nft 'insert rule inet cnm guard accept'",
    ] {
        let (total, own) = heal_after(&fw, &a, script).await?;
        eprintln!(
            "`{script}`: restored {own:?} after reading the change, {total:?} after starting nft"
        );
        assert_eq!(list(&a).await?, want, "after `{script}`");
        // Milliseconds on a quiet machine; the bound leaves room for a loaded one.
        ensure!(own < Duration::from_secs(1), "restore took {own:?}");
    }
    // one restore transaction per change, none of our own changes restored
    assert_eq!(fw.transactions(), count + 10);
    // changes to other tables are left alone
    sh(
        &a,
        "nft add table inet other; nft add chain inet other c; nft delete table inet other",
    )
    .await?;
    fw.add_port_mappings("n3", "ep4", &[tcp((81, 81), "172.20.0.3", (81, 81))])
        .await?;
    assert_eq!(
        fw.transactions(),
        count + 11,
        "no restore for a foreign table"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_dropped_firewall_stops_watching_and_a_loading_one_changes_nothing_until_committed()
-> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    populate(&fw).await?;
    let want = list(&a).await?;
    let mut alive = fw.watcher_alive();
    drop(fw);
    tokio::time::timeout(Duration::from_secs(10), alive.changed())
        .await
        .context("the watcher thread outlived its firewall")?
        .expect_err("closed, not changed");
    // a restart: the previous run's tables stay while the new firewall loads
    let fw = Firewall::loading(&a).await?;
    let count = fw.transactions();
    populate(&fw).await?;
    fw.add_port_mappings("n1", "ep4", &[tcp((81, 81), "172.18.0.3", (81, 81))])
        .await?;
    assert!(
        fw.ensure_iptables_compat().await?,
        "wanted, done at the commit"
    );
    assert_eq!(fw.transactions(), count, "nothing sent while loading");
    assert_eq!(list(&a).await?, want, "the previous tables are untouched");
    // a change by someone else while loading is not fought: the commit replaces everything
    sh(&a, "nft delete table bridge cnm-bridge").await?;
    fw.finish_loading().await?;
    assert_eq!(fw.transactions(), count + 1, "one transaction");
    let got = list(&a).await?;
    assert!(got.contains("tcp . 81 : 172.18.0.3 . 81"), "{got}");
    assert!(got.contains("table bridge cnm-bridge"), "{got}");
    fw.finish_loading().await?;
    assert_eq!(fw.transactions(), count + 1, "finishing twice is a no-op");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn lost_notifications_restore_only_for_others_changes() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    // a receive buffer of a few notification datagrams, and a watcher held off reading
    let fw = Firewall::with_notify_buffer(&a, 4096).await?;
    let mut healing = fw.healing();
    populate(&fw).await?;
    // our own large transaction: notifications lost, all of them ours, nothing to restore
    fw.stall_watcher(true).await?;
    let many: Vec<PortMapping> = (0..2_000u16)
        .map(|i| tcp((20_000 + i, 20_000 + i), "172.18.0.9", (80 + i, 80 + i)))
        .collect();
    fw.add_port_mappings("n1", "big", &many).await?;
    let before = healing.borrow_and_update().overflows;
    fw.stall_watcher(false).await?;
    let h = tokio::time::timeout(
        Duration::from_secs(10),
        healing.wait_for(|h| h.overflows > before),
    )
    .await
    .context("the overflow was not seen")??
    .to_owned();
    assert_eq!(
        h.restores, 0,
        "our own transaction must not trigger a restore"
    );
    let want = list(&a).await?;
    // our big transaction fills the queue, then someone else deletes a table of ours: all of
    // its notifications are lost, and only the generation tells
    let count = fw.transactions();
    fw.stall_watcher(true).await?;
    let before = healing.borrow_and_update().overflows;
    let big: Vec<PortMapping> = (0..2_000u16)
        .map(|i| tcp((30_000 + i, 30_000 + i), "172.18.0.10", (80 + i, 80 + i)))
        .collect();
    fw.add_port_mappings("n1", "more", &big).await?;
    sh(&a, "nft delete table bridge cnm-bridge").await?;
    fw.stall_watcher(false).await?;
    let h = tokio::time::timeout(
        Duration::from_secs(10),
        healing.wait_for(|h| h.overflows > before && h.restores >= 1),
    )
    .await
    .context("no restore after a foreign change whose notifications were lost")??
    .to_owned();
    eprintln!("restored after lost notifications: {h:?}");
    assert_eq!(h.restores, 1);
    assert_eq!(fw.transactions(), count + 2, "our publish and the restore");
    let got = list(&a).await?;
    assert!(got.contains("table bridge cnm-bridge"), "{got}");
    assert!(got.contains("tcp . 31999 : 172.18.0.10 . 2079"), "{got}");
    assert!(got.len() > want.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn operations_wait_for_the_restore_instead_of_failing() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    // tables gone and the watcher held back: the operation finds ENOENT and restores first
    fw.pause_healing(true);
    sh(&a, "nft flush ruleset").await?;
    fw.pause_healing(false);
    fw.add_port_mappings("n1", "ep1", &[tcp((8080, 8080), "172.18.0.2", (80, 80))])
        .await?;
    let got = list(&a).await?;
    assert!(got.contains("tcp . 8080 : 172.18.0.2 . 80"), "{got}");
    assert!(
        got.contains("\"br-n1\""),
        "the network came back with it: {got}"
    );
    // and operations racing a flush all land
    let mut tasks = Vec::new();
    let flusher = {
        let (a, fw) = (a.clone(), fw.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                let mut healing = fw.healing();
                let before = healing.borrow_and_update().restores;
                sh(&a, "nft flush ruleset").await?;
                tokio::time::timeout(
                    Duration::from_secs(10),
                    healing.wait_for(|h| h.restores > before),
                )
                .await
                .context("no restore within 10 s of a flush")??;
            }
            anyhow::Ok(())
        })
    };
    for i in 0..20u16 {
        let fw = fw.clone();
        tasks.push(tokio::spawn(async move {
            let ip = format!("172.18.1.{}", 10 + i);
            fw.add_port_mappings(
                "n1",
                &format!("ep-r{i}"),
                &[tcp((9000 + i, 9000 + i), &ip, (80, 80))],
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    flusher.await??;
    let got = list(&a).await?;
    for i in 0..20u16 {
        let line = format!("tcp . {} : 172.18.1.{} . 80", 9000 + i, 10 + i);
        ensure!(
            got.contains(&line),
            "{line} missing after the flushes: {got}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn concurrent_publishes_both_land() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    let mut tasks = Vec::new();
    for i in 0..8u16 {
        let fw = fw.clone();
        tasks.push(tokio::spawn(async move {
            let ip = format!("172.18.0.{}", 10 + i);
            fw.add_port_mappings(
                "n1",
                &format!("ep{i}"),
                &[tcp((8000 + i, 8000 + i), &ip, (80, 80))],
            )
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let got = list(&a).await?;
    for i in 0..8u16 {
        let line = format!("tcp . {} : 172.18.0.{} . 80", 8000 + i, 10 + i);
        assert!(got.contains(&line), "missing {line} in {got}");
    }
    assert_eq!(
        fw.transactions(),
        1 + 8,
        "the network (with the tables), then 8 publishes"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_refused_transaction_changes_nothing() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    // the watcher would take the intruder out at once: keep it, to make the kernel refuse
    fw.pause_healing(true);
    // someone else put an element there behind cnm's back: ours has the same key and
    // another value, which the kernel refuses (EBUSY)
    sh(
        &a,
        "nft add element inet cnm-bridge dnat4_any '{ tcp . 9005 : 10.0.0.9 . 80 }'",
    )
    .await?;
    let before = list(&a).await?;
    let rendered = fw.render();
    let count = fw.transactions();
    let e = fw
        .add_port_mappings("n1", "ep1", &[tcp((9005, 9005), "172.18.0.2", (80, 80))])
        .await
        .expect_err("the kernel must refuse a clashing element");
    let text = e.to_string();
    assert!(
        text.contains("add element inet cnm-bridge dnat4_any { tcp . 9005 : 172.18.0.2 . 80 }"),
        "{text}"
    );
    assert_eq!(
        list(&a).await?,
        before,
        "the published4 element of the same batch must not land"
    );
    assert_eq!(fw.render(), rendered);
    assert_eq!(fw.transactions(), count);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn invalid_input_is_refused_before_anything_is_sent() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    let count = fw.transactions();
    let bad = tcp((90, 80), "172.18.0.2", (90, 80));
    let e = fw.add_port_mappings("n1", "ep1", &[bad]).await.unwrap_err();
    assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("host_ports"), "{e}");
    let e = fw
        .add_port_mappings("nope", "ep1", &[tcp((80, 80), "172.18.0.2", (80, 80))])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound);
    let e = fw
        .add_network(&net("n1", "br-other", "172.30.0.0/16"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), cnm_types::ErrorKind::Conflict);
    assert_eq!(fw.transactions(), count);
    Ok(())
}

/// client (10.1.0.2) —veth— host (10.1.0.1 | cnmbr0 172.30.0.1) —veth— server (172.30.0.2)
struct Topology {
    host: NetNs,
    client: NetNs,
    server: NetNs,
}

async fn topology() -> Result<Topology> {
    let host = NetNs::create_anonymous().await?;
    let client = NetNs::create_anonymous().await?;
    let server = NetNs::create_anonymous().await?;
    let nl = Netlink::connect(&host).await?;
    nl.loopback_up().await?;
    for (name, peer_ns) in [("uplink0", &client), ("cnmbr0", &server)] {
        nl.create_link(&LinkSpec {
            up: true,
            ..LinkSpec::new(
                name.parse()?,
                LinkKind::Veth {
                    peer_name: "eth0".parse()?,
                    peer_ns: Some(peer_ns.clone()),
                    peer_mac: None,
                    peer_mtu: None,
                    peer_up: true,
                },
            )
        })
        .await?;
    }
    let up = nl.link("uplink0").await?.context("uplink0")?;
    nl.add_address(up.index, "10.1.0.1/24".parse()?).await?;
    let br = nl.link("cnmbr0").await?.context("cnmbr0")?;
    nl.add_address(br.index, "172.30.0.1/24".parse()?).await?;
    sh(
        &host,
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.cnmbr0.route_localnet=1",
    )
    .await?;
    for (ns, addr, gw) in [
        (&client, "10.1.0.2/24", "10.1.0.1"),
        (&server, "172.30.0.2/24", "172.30.0.1"),
    ] {
        let n = Netlink::connect(ns).await?;
        n.loopback_up().await?;
        let eth0 = n.link("eth0").await?.context("eth0")?;
        n.add_address(eth0.index, addr.parse()?).await?;
        n.add_route(&RouteSpec::default_via(gw.parse()?, Some(eth0.index)))
            .await?;
    }
    Ok(Topology {
        host,
        client,
        server,
    })
}

/// A TCP server in `ns` answering "hello" to every connection, on a thread of its own.
async fn serve(ns: &NetNs, addr: SocketAddr) -> Result<()> {
    let listener = ns.run(move || TcpListener::bind(addr)).await??;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"hello");
        }
    });
    Ok(())
}

/// Connects from `ns` to `to` and reads the greeting.
async fn probe(ns: &NetNs, to: SocketAddr) -> Result<String> {
    Ok(ns
        .run(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(700))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await??)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn published_port_is_dnated_end_to_end_and_direct_access_is_dropped() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    fw.add_network(&NetworkRules {
        subnets_v6: vec![],
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    })
    .await?;
    serve(&t.server, "172.30.0.2:80".parse()?).await?;
    let published: SocketAddr = "10.1.0.1:8080".parse()?;
    probe(&t.client, published)
        .await
        .expect_err("not published yet");
    let ports = [
        tcp((8080, 8080), "172.30.0.2", (80, 80)),
        PortMapping {
            host_ip: Some("127.0.0.1".parse()?),
            ..tcp((9090, 9090), "172.30.0.2", (80, 80))
        },
    ];
    fw.add_port_mappings("n1", "ep1", &ports).await?;
    assert_eq!(probe(&t.client, published).await?, "hello");
    // from the host itself, through the output hook, to its own address and to 127.0.0.1
    assert_eq!(probe(&t.host, "10.1.0.1:8080".parse()?).await?, "hello");
    assert_eq!(probe(&t.host, "127.0.0.1:9090".parse()?).await?, "hello");
    // NAT mode: the container address is not reachable directly from outside the host
    probe(&t.client, "172.30.0.2:80".parse()?)
        .await
        .expect_err("direct access must be dropped");
    // a port published on 127.0.0.1 is not reachable from another host
    sh(&t.client, "ip rule del pref 0 lookup local && ip rule add pref 100 lookup local && ip route add 127.0.0.1/32 via 10.1.0.1 dev eth0 src 10.1.0.2 onlink table 100 && ip rule add to 127.0.0.1 ipproto tcp dport 9090 lookup 100 pref 10 && sysctl -qw net.ipv4.conf.eth0.route_localnet=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0").await?;
    sh(&t.host, "sysctl -qw net.ipv4.conf.uplink0.route_localnet=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.uplink0.rp_filter=0").await?;
    probe(&t.client, "127.0.0.1:9090".parse()?)
        .await
        .expect_err("loopback-published port reached from another host");
    // proof that the setup above would reach it, were it not for cnm's guard (held off the
    // watcher, which would restore it at once)
    fw.pause_healing(true);
    sh(&t.host, "nft flush chain inet cnm guard").await?;
    assert_eq!(probe(&t.client, "127.0.0.1:9090".parse()?).await?, "hello");
    fw.pause_healing(false);
    fw.reconcile().await?;
    probe(&t.client, "127.0.0.1:9090".parse()?)
        .await
        .expect_err("reconcile restores the guard");
    // unpublishing closes it again
    fw.remove_port_mappings("ep1").await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match probe(&t.client, published).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => bail!("port still published after remove_port_mappings"),
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn routed_mode_allows_direct_access_to_published_ports_only() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    fw.add_network(&NetworkRules {
        subnets_v6: vec![],
        gateway_mode_v4: GatewayMode::Routed,
        gateway_mode_v6: GatewayMode::Routed,
        masquerade: false,
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    })
    .await?;
    serve(&t.server, "172.30.0.2:80".parse()?).await?;
    serve(&t.server, "172.30.0.2:81".parse()?).await?;
    sh(&t.client, "ip route add 172.30.0.0/24 via 10.1.0.1")
        .await
        .ok();
    fw.add_port_mappings("n1", "ep1", &[tcp((80, 80), "172.30.0.2", (80, 80))])
        .await?;
    assert_eq!(probe(&t.client, "172.30.0.2:80".parse()?).await?, "hello");
    probe(&t.client, "172.30.0.2:81".parse()?)
        .await
        .expect_err("unpublished port reachable");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn nat_unprotected_mode_lets_any_port_be_reached_directly_nat_does_not() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    let nat = NetworkRules {
        subnets_v6: vec![],
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    };
    fw.add_network(&nat).await?;
    serve(&t.server, "172.30.0.2:81".parse()?).await?;
    sh(&t.client, "ip route add 172.30.0.0/24 via 10.1.0.1")
        .await
        .ok();
    let unpublished: SocketAddr = "172.30.0.2:81".parse()?;
    probe(&t.client, unpublished)
        .await
        .expect_err("nat: an unpublished port reached directly from outside");
    fw.remove_network("n1").await?;
    fw.add_network(&NetworkRules {
        gateway_mode_v4: GatewayMode::NatUnprotected,
        gateway_mode_v6: GatewayMode::NatUnprotected,
        ..nat.clone()
    })
    .await?;
    // nothing is published, yet the port is reachable by routing to the container's address
    assert_eq!(probe(&t.client, unpublished).await?, "hello");
    // after a flush of the whole ruleset the firewall heals itself: still unprotected
    heal_after(&fw, &t.host, "nft flush ruleset").await?;
    assert_eq!(probe(&t.client, unpublished).await?, "hello");
    // and back to nat: filtered again
    fw.remove_network("n1").await?;
    fw.add_network(&nat).await?;
    probe(&t.client, unpublished)
        .await
        .expect_err("nat again: the port must be filtered");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn iptables_compat_rule_lets_marked_traffic_through_a_drop_policy() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    assert!(
        !fw.ensure_iptables_compat().await?,
        "no iptables FORWARD chain yet: nothing to do"
    );
    // not wanted any more, so the chain created below stays as Docker made it
    assert!(!fw.remove_iptables_compat().await?);
    fw.add_network(&NetworkRules {
        subnets_v6: vec![],
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    })
    .await?;
    fw.add_port_mappings("n1", "ep1", &[tcp((8080, 8080), "172.30.0.2", (80, 80))])
        .await?;
    serve(&t.server, "172.30.0.2:80".parse()?).await?;
    let published: SocketAddr = "10.1.0.1:8080".parse()?;
    assert_eq!(probe(&t.client, published).await?, "hello");
    // what Docker does to the host
    sh(&t.host, "iptables -P FORWARD DROP").await?;
    probe(&t.client, published)
        .await
        .expect_err("Docker's DROP policy must drop it");
    assert!(fw.ensure_iptables_compat().await?);
    assert!(fw.ensure_iptables_compat().await?, "idempotent");
    const RULE: &str =
        "-A FORWARD -m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT";
    let rules = sh(&t.host, "iptables -S FORWARD").await?;
    assert_eq!(rules.matches("cnm").count(), 1, "{rules}");
    assert!(
        rules.lines().any(|l| l == RULE),
        "iptables reads it back: {rules}"
    );
    assert_eq!(probe(&t.client, published).await?, "hello");
    // someone flushes the chain (a Docker restart, a firewall reload): it comes back
    let mut healing = fw.healing();
    let before = healing.borrow_and_update().compat_repairs;
    sh(&t.host, "iptables -F FORWARD").await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        healing.wait_for(|h| h.compat_repairs > before),
    )
    .await
    .context("the compatibility rule was not restored")??;
    let rules = sh(&t.host, "iptables -S FORWARD").await?;
    assert!(rules.lines().any(|l| l == RULE), "{rules}");
    assert_eq!(probe(&t.client, published).await?, "hello");
    // an ip6tables FORWARD chain appearing later gets one too
    let before = fw.healing().borrow().compat_repairs;
    sh(&t.host, "ip6tables -P FORWARD DROP").await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        healing.wait_for(|h| h.compat_repairs > before),
    )
    .await
    .context("no rule in the new ip6tables chain")??;
    let rules6 = sh(&t.host, "ip6tables -S FORWARD").await?;
    assert!(rules6.lines().any(|l| l == RULE), "{rules6}");
    // after a flush of the whole ruleset the tables come back, and the rule with them once
    // the chain exists again
    assert!(fw.remove_iptables_compat().await?);
    assert!(!sh(&t.host, "iptables -S FORWARD").await?.contains("cnm"));
    assert!(!sh(&t.host, "ip6tables -S FORWARD").await?.contains("cnm"));
    probe(&t.client, published)
        .await
        .expect_err("dropped again without the rule");
    assert!(
        !fw.remove_iptables_compat().await?,
        "nothing left to remove"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn no_iptables_chain_means_nothing_to_do() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&net("n1", "br-n1", "172.18.0.0/16")).await?;
    assert!(!fw.ensure_iptables_compat().await?);
    assert!(!fw.remove_iptables_compat().await?);
    assert!(
        !list(&a).await?.contains("table ip filter"),
        "no table created"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ten_thousand_ports_and_a_sixty_thousand_port_range_publish_and_go() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    fw.add_network(&NetworkRules {
        subnets_v6: vec![],
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    })
    .await?;
    // 10,000 single ports, each to another container port: 20,000 elements
    let singles: Vec<PortMapping> = (0..10_000u16)
        .map(|i| {
            tcp(
                (20_000 + i, 20_000 + i),
                "172.30.0.2",
                (30_000 + i, 30_000 + i),
            )
        })
        .collect();
    let count = fw.transactions();
    let start = Instant::now();
    fw.add_port_mappings("n1", "many", &singles).await?;
    let singles_took = start.elapsed();
    // a 60,000-port UDP range shifted to other container ports: 60,000 map elements
    let range = PortMapping {
        proto: Protocol::Udp,
        ..tcp((1_025, 61_024), "172.30.0.2", (2_025, 62_024))
    };
    let start = Instant::now();
    fw.add_port_mappings("n1", "range", &[range]).await?;
    let range_took = start.elapsed();
    eprintln!(
        "10,000 single ports in {singles_took:?}, a 60,000-port shifted range in {range_took:?}"
    );
    assert_eq!(fw.transactions(), count + 2, "one transaction each");
    for i in [0u16, 4_999, 9_999] {
        serve(
            &t.server,
            SocketAddr::new("172.30.0.2".parse()?, 30_000 + i),
        )
        .await?;
        let to = SocketAddr::new("10.1.0.1".parse()?, 20_000 + i);
        assert_eq!(probe(&t.client, to).await?, "hello", "port {}", to.port());
    }
    for i in [0u16, 30_000, 59_999] {
        let port = 2_025 + i;
        let server = t
            .server
            .run(move || std::net::UdpSocket::bind(("172.30.0.2", port)))
            .await??;
        let sent = t
            .client
            .run(move || -> std::io::Result<()> {
                let s = std::net::UdpSocket::bind("10.1.0.2:0")?;
                s.send_to(b"x", ("10.1.0.1", 1_025 + i))?;
                Ok(())
            })
            .await?;
        sent?;
        server.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 8];
        let (n, _) = server
            .recv_from(&mut buf)
            .context("UDP through the shifted range")?;
        assert_eq!(&buf[..n], b"x");
    }
    fw.remove_port_mappings("many").await?;
    fw.remove_port_mappings("range").await?;
    assert_eq!(fw.transactions(), count + 4);
    let got = list(&t.host).await?;
    assert!(!got.contains("172.30.0.2 . "), "elements left behind");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn conntrack_flush_deletes_the_entries_of_a_port() -> Result<()> {
    let t = topology().await?;
    let fw = Firewall::new(&t.host).await?;
    fw.add_network(&NetworkRules {
        subnets_v6: vec![],
        ..net("n1", "cnmbr0", "172.30.0.0/24")
    })
    .await?;
    fw.add_port_mappings(
        "n1",
        "ep1",
        &[PortMapping {
            proto: Protocol::Udp,
            ..tcp((5353, 5353), "172.30.0.2", (53, 53))
        }],
    )
    .await?;
    // a UDP flow through the DNAT creates a conntrack entry on the host
    t.client
        .run(|| -> std::io::Result<()> {
            let s = std::net::UdpSocket::bind("10.1.0.2:40000")?;
            s.send_to(b"x", "10.1.0.1:5353")?;
            Ok(())
        })
        .await??;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sh(
        &t.host,
        "cat /proc/net/nf_conntrack 2>/dev/null || conntrack -L 2>/dev/null",
    )
    .await?
    .contains("dport=5353")
    {
        ensure!(Instant::now() < deadline, "no conntrack entry appeared");
        tokio::task::yield_now().await;
    }
    let n = cnm_firewall::flush_conntrack(
        &t.host,
        Protocol::Udp,
        5353,
        Some(IpAddr::from([10, 1, 0, 1])),
    )
    .await?;
    assert_eq!(n, 1);
    let left = sh(&t.host, "conntrack -L -p udp 2>/dev/null").await?;
    assert!(!left.contains("dport=5353"), "{left}");
    assert_eq!(fw.flush_conntrack(Protocol::Udp, 5353, None).await?, 0);
    Ok(())
}
