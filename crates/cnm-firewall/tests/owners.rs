//! Privileged tests of the shared firewall's owners: the bridge fragment and a declared one side
//! by side, each in tables of its own that come with its first element and go with its last;
//! the compatibility rule with them; every owner restored in one transaction. In throwaway
//! network namespaces only.
#![allow(clippy::print_stderr)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cnm_firewall::{
    Action, ChainHook, ChainType, ElementChange, Family, FieldType, Firewall, Fragment,
    FragmentChain, FragmentSet, FragmentSpec, Key, Match, NetworkRules, Protocol, Rule, SetElement,
    Value,
};
use cnm_sandbox::{IpFamily, NetNs};
use cnm_types::{ErrorKind, IfName};

async fn sh(ns: &NetNs, script: &str) -> Result<String> {
    let script = script.to_string();
    let (script, out) = ns
        .run(move || {
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .map(|o| (script, o))
        })
        .await??;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nft list tables`, one table per line, sorted.
async fn tables(ns: &NetNs) -> Result<Vec<String>> {
    let mut v: Vec<String> = sh(ns, "nft list tables")
        .await?
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    Ok(v)
}

fn names(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn bridge_net(id: &str) -> NetworkRules {
    NetworkRules::nat(
        id,
        format!("br-{id}").parse().unwrap(),
        vec!["172.18.0.0/16".parse().unwrap()],
    )
}

/// A second driver's fragment: a blocklist for its interfaces' traffic, a DNAT map of its
/// own, masquerade, and an anti-spoofing check in the bridge family.
fn tdrv() -> FragmentSpec {
    use FieldType as F;
    FragmentSpec::new("tdrv")
        .set(FragmentSet::new("ifaces", [F::IfName]))
        .set(FragmentSet::new("blocked", [F::Ipv4]))
        .set(FragmentSet::new("subnets", [F::IfName, F::Ipv4]).interval())
        .set(FragmentSet::new("forwards", [F::Ipv4, F::Port]).to([F::Ipv4, F::Port]))
        .set(FragmentSet::new("macs", [F::IfName, F::Mac]).family(Family::Bridge))
        .chain(
            FragmentChain::base("screen", ChainHook::Forward, ChainType::Filter, -10)
                .rule(Rule::new(
                    [
                        Match::in_set([Key::IifName], "ifaces"),
                        Match::in_set([Key::IpDaddr], "blocked"),
                    ],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [Match::in_set([Key::IifName], "ifaces")],
                    Action::Allow,
                ))
                .rule(Rule::new(
                    [Match::in_set([Key::OifName], "ifaces")],
                    Action::Allow,
                )),
        )
        .chain(
            FragmentChain::base("nat_in", ChainHook::Prerouting, ChainType::Nat, -95).rule(
                Rule::new(
                    [Match::is(Key::L4Proto, Protocol::Tcp)],
                    Action::Dnat {
                        keys: vec![Key::IpDaddr, Key::ThDport],
                        map: "forwards".into(),
                    },
                ),
            ),
        )
        .chain(
            FragmentChain::base("nat_out", ChainHook::Postrouting, ChainType::Nat, 105).rule(
                Rule::new(
                    [
                        Match::not_in_set([Key::OifName], "ifaces"),
                        Match::in_set([Key::IifName, Key::IpSaddr], "subnets"),
                    ],
                    Action::Masquerade,
                ),
            ),
        )
        .chain(
            FragmentChain::base("spoof", ChainHook::Prerouting, ChainType::Filter, -290)
                .family(Family::Bridge)
                .rule(Rule::new(
                    [Match::not_in_set([Key::IifName, Key::EtherSaddr], "macs")],
                    Action::Drop,
                )),
        )
}

fn ifname(s: &str) -> IfName {
    s.parse().unwrap()
}

fn v4(s: &str) -> Value {
    Value::Ipv4(s.parse().unwrap())
}

/// The elements of one tdrv network on interface `dev`.
fn tdrv_network(dev: &str) -> ElementChange {
    let d = ifname(dev);
    ElementChange::new()
        .add("ifaces", SetElement::new([Value::from(&d)]))
        .add("blocked", SetElement::new([v4("192.0.2.9")]))
        .add(
            "subnets",
            SetElement::new([Value::from(&d), v4("10.77.0.0")])
                .through([Value::from(&d), v4("10.77.255.255")]),
        )
        .add(
            "forwards",
            SetElement::new([v4("10.1.0.1"), Value::Port(9090)])
                .to([v4("10.77.0.2"), Value::Port(90)]),
        )
        .add(
            "macs",
            SetElement::new([
                Value::from(&ifname("tdrvp0")),
                Value::Mac("02:00:00:00:00:01".parse().unwrap()),
            ]),
        )
        .claim_interface(&d)
}

/// The elements of [`tdrv_network`], deleted.
fn tdrv_network_gone(dev: &str) -> ElementChange {
    let d = ifname(dev);
    ElementChange::new()
        .delete("ifaces", SetElement::new([Value::from(&d)]))
        .delete("blocked", SetElement::new([v4("192.0.2.9")]))
        .delete(
            "subnets",
            SetElement::new([Value::from(&d), v4("10.77.0.0")])
                .through([Value::from(&d), v4("10.77.255.255")]),
        )
        .delete(
            "forwards",
            SetElement::new([v4("10.1.0.1"), Value::Port(9090)])
                .to([v4("10.77.0.2"), Value::Port(90)]),
        )
        .delete(
            "macs",
            SetElement::new([
                Value::from(&ifname("tdrvp0")),
                Value::Mac("02:00:00:00:00:01".parse().unwrap()),
            ]),
        )
        .release_interface(&d)
}

async fn fragment(fw: &Firewall) -> Result<Fragment> {
    Ok(fw.fragment(tdrv())?)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_declared_fragment_lists_as_nft_loading_its_rendering() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let b = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&bridge_net("n1")).await?;
    fragment(&fw).await?.apply(&tdrv_network("tdrv0")).await?;
    let path = std::env::temp_dir().join(format!("cnm-owners-{}.nft", std::process::id()));
    std::fs::write(&path, fw.render())?;
    let loaded = sh(&b, &format!("nft -f {}", path.display())).await;
    std::fs::remove_file(&path)?;
    loaded?;
    // the listings match, and so do the rules expression by expression (the debug listing's
    // element lines are left out: hash sets list in each namespace's own hash order)
    for cmd in ["nft list ruleset", "nft --debug=netlink list ruleset"] {
        let exprs = |s: String| -> String {
            s.lines()
                .filter(|l| !l.starts_with("\telement "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (la, lb) = (exprs(sh(&a, cmd).await?), exprs(sh(&b, cmd).await?));
        ensure!(la == lb, "`{cmd}` differs:\n{la}\n---\n{lb}");
    }
    let la = sh(&a, "nft list table inet cnm-tdrv").await?;
    ensure!(
        la.contains("dnat ip to ip daddr . tcp dport map @forwards"),
        "nft reads the DNAT rule back as written: {la}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn each_owners_tables_come_with_its_first_element_and_go_with_its_last() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    // Docker's FORWARD policy: the compatibility rule has somewhere to go
    sh(&a, "iptables -P FORWARD DROP").await?;
    let filter = "table ip filter";
    let fw = Firewall::new(&a).await?;
    ensure!(fw.transactions() == 0, "an empty firewall installs nothing");
    ensure!(tables(&a).await? == names(&[filter]));
    assert!(
        !fw.ensure_iptables_compat().await?,
        "wanted, but no owner's tables yet"
    );
    ensure!(!sh(&a, "iptables -S FORWARD").await?.contains("cnm"));

    // the bridge's first network: its tables and the firewall's own, and (wanted) the rule,
    // in one transaction
    let t = fw.transactions();
    fw.add_network(&bridge_net("n1")).await?;
    ensure!(fw.transactions() == t + 1, "one transaction");
    ensure!(
        tables(&a).await?
            == names(&[
                filter,
                "table inet cnm",
                "table inet cnm-bridge",
                "table bridge cnm-bridge"
            ])
    );
    ensure!(sh(&a, "iptables -S FORWARD").await?.contains("cnm"));
    let bridge_rules = || async {
        Ok::<_, anyhow::Error>(format!(
            "{}{}",
            sh(&a, "nft list table inet cnm-bridge").await?,
            sh(&a, "nft list table bridge cnm-bridge").await?
        ))
    };
    let before = bridge_rules().await?;

    // a second owner: its own tables, one transaction, the bridge's untouched
    let tdrv = fragment(&fw).await?;
    let t = fw.transactions();
    tdrv.apply(&tdrv_network("tdrv0")).await?;
    ensure!(fw.transactions() == t + 1, "one transaction");
    ensure!(
        tables(&a)
            .await?
            .contains(&"table inet cnm-tdrv".to_string())
    );
    ensure!(
        tables(&a)
            .await?
            .contains(&"table bridge cnm-tdrv".to_string())
    );
    let shared = sh(&a, "nft list table inet cnm").await?;
    ensure!(
        shared.contains("\"br-n1\"") && shared.contains("\"tdrv0\""),
        "both owners' interfaces are cnm's: {shared}"
    );
    ensure!(bridge_rules().await? == before, "the bridge's rules moved");

    // a change touches nothing but the owner's own sets: refused changes send nothing
    let t = fw.transactions();
    let e = tdrv
        .apply(&ElementChange::new().add("bridges", SetElement::new([v4("10.0.0.1")])))
        .await
        .unwrap_err();
    ensure!(e.kind() == ErrorKind::NotFound, "{e}");
    let e = tdrv.apply(&tdrv_network("tdrv0")).await.unwrap_err();
    ensure!(e.kind() == ErrorKind::Conflict, "{e}");
    let e = tdrv
        .apply(&ElementChange::new().add("blocked", SetElement::new([Value::Port(80)])))
        .await
        .unwrap_err();
    ensure!(e.kind() == ErrorKind::InvalidInput, "{e}");
    ensure!(fw.transactions() == t, "nothing sent for refused changes");

    // the second owner's last element goes: its tables with it, the bridge's untouched
    tdrv.apply(&tdrv_network_gone("tdrv0")).await?;
    ensure!(fw.transactions() == t + 1, "one transaction");
    ensure!(
        !tables(&a).await?.iter().any(|t| t.contains("cnm-tdrv")),
        "{:?}",
        tables(&a).await?
    );
    ensure!(bridge_rules().await? == before, "the bridge's rules moved");

    // the bridge's last network: nothing of cnm's stays, the compatibility rule included
    fw.remove_network("n1").await?;
    ensure!(fw.transactions() == t + 2, "one transaction");
    ensure!(
        tables(&a).await? == names(&[filter]),
        "{:?}",
        tables(&a).await?
    );
    let fwd = sh(&a, "iptables -S FORWARD").await?;
    ensure!(!fwd.contains("cnm"), "the compatibility rule stayed: {fwd}");

    // a table of that name made by someone else while nobody wants it is not ours to fight;
    // a change to a wanted table is still restored (and only that)
    fw.add_network(&bridge_net("n2")).await?;
    ensure!(fw.transactions() == t + 3, "back in one transaction");
    ensure!(
        sh(&a, "iptables -S FORWARD").await?.contains("cnm"),
        "and the rule with them"
    );
    let mut healing = fw.healing();
    let restores = healing.borrow_and_update().restores;
    sh(&a, "nft add table inet cnm-tdrv").await?;
    sh(&a, "nft flush chain inet cnm-bridge forward").await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        healing.wait_for(|h| h.restores > restores),
    )
    .await
    .context("no restore after a foreign change to a wanted table")??;
    ensure!(fw.healing().borrow().restores == restores + 1);
    ensure!(
        sh(&a, "nft list table inet cnm-tdrv")
            .await?
            .lines()
            .count()
            <= 2
    );
    sh(&a, "nft delete table inet cnm-tdrv").await?;

    // forwarding cnm turned on outlives the networks: the firewall's own table stays for it
    fw.set_forward_drop(IpFamily::V4, true).await?;
    fw.remove_network("n2").await?;
    ensure!(
        tables(&a).await? == names(&[filter, "table inet cnm"]),
        "{:?}",
        tables(&a).await?
    );
    ensure!(!sh(&a, "iptables -S FORWARD").await?.contains("cnm"));
    fw.set_forward_drop(IpFamily::V4, false).await?;
    ensure!(tables(&a).await? == names(&[filter]));
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_flush_brings_every_owner_back_in_one_transaction() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    let fw = Firewall::new(&a).await?;
    fw.add_network(&bridge_net("n1")).await?;
    fragment(&fw).await?.apply(&tdrv_network("tdrv0")).await?;
    let want = sh(&a, "nft list ruleset").await?;
    for script in [
        "nft flush ruleset",
        "nft delete table inet cnm-tdrv",
        "nft delete table bridge cnm-tdrv",
        "nft flush chain inet cnm-tdrv screen",
    ] {
        let mut healing = fw.healing();
        let before = healing.borrow_and_update().restores;
        let t = fw.transactions();
        sh(&a, script).await?;
        let h = tokio::time::timeout(
            Duration::from_secs(10),
            healing.wait_for(|h| h.restores > before),
        )
        .await
        .with_context(|| format!("no restore after `{script}`"))??
        .to_owned();
        eprintln!(
            "`{script}`: every owner back {:?} after the change was read",
            h.last_restore
        );
        ensure!(
            fw.transactions() == t + 1,
            "one transaction after `{script}`"
        );
        let got = sh(&a, "nft list ruleset").await?;
        ensure!(got == want, "after `{script}`:\n{got}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_restart_commits_every_owner_once_and_deletes_what_nobody_wants() -> Result<()> {
    let a = NetNs::create_anonymous().await?;
    // the previous run: the bridge, tdrv, and an owner this run does not have
    let old = Firewall::new(&a).await?;
    old.add_network(&bridge_net("n1")).await?;
    fragment(&old).await?.apply(&tdrv_network("tdrv0")).await?;
    old.fragment(FragmentSpec::new("gone").set(FragmentSet::new("s", [FieldType::Port])))?
        .apply(&ElementChange::new().add("s", SetElement::new([Value::Port(1)])))
        .await?;
    let want = sh(&a, "nft list ruleset").await?;
    ensure!(want.contains("table inet cnm-gone"));
    old.stop_watching();
    let mut alive = old.watcher_alive();
    tokio::time::timeout(Duration::from_secs(10), alive.changed())
        .await
        .context("the watcher outlived stop_watching")?
        .expect_err("closed, not changed");
    drop(old);

    // the new run restores the bridge and tdrv, lazily opened and loading
    let fw = Firewall::lazy(&a, true);
    let ran = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(u64::MAX));
    {
        let (ran, seen, fw2) = (ran.clone(), seen.clone(), fw.clone());
        fw.after_loading("check the order", async move {
            seen.store(fw2.transactions(), Ordering::SeqCst);
            ran.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await?;
    }
    fw.add_network(&bridge_net("n1")).await?;
    fragment(&fw).await?.apply(&tdrv_network("tdrv0")).await?;
    ensure!(fw.transactions() == 0, "nothing sent while loading");
    ensure!(!ran.load(Ordering::SeqCst), "the deferred action waits");
    ensure!(
        sh(&a, "nft list ruleset").await? == want,
        "the old tables keep filtering"
    );
    fw.finish_loading().await?;
    ensure!(fw.transactions() == 1, "one transaction for every owner");
    ensure!(
        ran.load(Ordering::SeqCst) && seen.load(Ordering::SeqCst) == 1,
        "the action ran after the commit"
    );
    let got = tables(&a).await?;
    ensure!(
        got == names(&[
            "table inet cnm",
            "table inet cnm-bridge",
            "table bridge cnm-bridge",
            "table inet cnm-tdrv",
            "table bridge cnm-tdrv"
        ]),
        "{got:?}"
    );
    // with nothing to restore and nothing left behind, a loading firewall opens nothing
    fw.stop_watching();
    let mut alive = fw.watcher_alive();
    tokio::time::timeout(Duration::from_secs(10), alive.changed())
        .await
        .context("the watcher outlived stop_watching")?
        .expect_err("closed, not changed");
    sh(&a, "nft flush ruleset").await?;
    drop(fw);
    let idle = Firewall::lazy(&a, true);
    idle.finish_loading().await?;
    ensure!(idle.transactions() == 0);
    let mut alive = idle.watcher_alive();
    ensure!(alive.changed().await.is_err(), "no watcher started");
    Ok(())
}
