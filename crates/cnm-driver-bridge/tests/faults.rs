//! A failure forced right after each step of create network, join and publish leaves nothing
//! behind: no bridge, veth, address, rule, socket or allocation. One test per step.

mod common;

use anyhow::{Result, ensure};
use cnm_core::EndpointOptions;
use cnm_driver_bridge::FaultPoint;
use common::*;

const SUBNET: &str = "10.50.0.0/24";
const PORT: u16 = 18150;

async fn network_step(point: FaultPoint) -> Result<()> {
    let w = World::new().await?;
    let baseline = w.host_links().await?;
    let rules_before = w.ruleset().await?;
    w.driver().inject_fault(Some(point));
    let e = w
        .net4("n", SUBNET)
        .await
        .expect_err("the injected failure surfaces");
    ensure!(format!("{e:#}").contains(&point.to_string()), "{e:#}");
    assert_clean(&w, &baseline, &[]).await?;
    let rules = w.ruleset().await?;
    ensure!(
        !rules.contains("10.50.0.0"),
        "rules left behind for the network:\n{rules}\n(before:\n{rules_before})"
    );
    ensure!(w.ctl.networks().is_empty(), "no network recorded");
    // The subnet was released: the same network can be created now.
    let n = w.net4("n", SUBNET).await?;
    n.delete().await?;
    assert_clean(&w, &baseline, &[]).await?;
    Ok(())
}

async fn join_step(point: FaultPoint, publish: bool) -> Result<()> {
    let w = World::new().await?;
    let n = w.net4("n", SUBNET).await?;
    let baseline = w.host_links().await?;
    let opts = if publish {
        EndpointOptions::default().publish(p(&format!("{PORT}:80")))
    } else {
        EndpointOptions::default()
    };
    let ep = n.create_endpoint("c", opts).await?;
    w.driver().inject_fault(Some(point));
    let e = ep
        .join("c", [])
        .await
        .expect_err("the injected failure surfaces");
    ensure!(format!("{:#}", anyhow::Error::from(e)).contains(&point.to_string()));
    assert_clean(&w, &baseline, &[PORT]).await?;
    let rules = w.ruleset().await?;
    ensure!(
        !rules.contains("\"veth"),
        "anti-spoofing elements of the failed join left behind:\n{rules}"
    );
    ensure!(
        w.ctl.sandbox_by_container_id("c").is_err(),
        "the sandbox made for the join is gone"
    );
    // Everything is still usable: the same join now succeeds, and tears down cleanly.
    ep.join("c", []).await?;
    ep.leave("c").await?;
    ep.delete().await?;
    n.delete().await?;
    let links = w.host_links().await?;
    ensure!(
        !links
            .iter()
            .any(|l| l.starts_with("cnm-") || l.starts_with("veth")),
        "{links:?}"
    );
    Ok(())
}

macro_rules! fault_tests {
    ($($name:ident => $body:expr;)*) => {$(
        #[tokio::test]
        #[ignore = "privileged: run cargo xtask test"]
        async fn $name() -> Result<()> {
            $body.await
        }
    )*};
}

fault_tests! {
    fail_after_bridge_created => network_step(FaultPoint::NetworkBridgeCreated);
    fail_after_bridge_sysctls => network_step(FaultPoint::NetworkSysctlsSet);
    fail_after_gateway_addresses => network_step(FaultPoint::NetworkAddressesAdded);
    fail_after_bridge_up => network_step(FaultPoint::NetworkBridgeUp);
    fail_after_forwarding_enabled => network_step(FaultPoint::NetworkForwardingEnabled);
    fail_after_network_rules => network_step(FaultPoint::NetworkFirewallProgrammed);
    fail_after_port_guarded => join_step(FaultPoint::JoinPortGuarded, false);
    fail_after_veth_created => join_step(FaultPoint::JoinVethCreated, false);
    fail_after_container_sysctls => join_step(FaultPoint::JoinSysctlsSet, false);
    fail_after_interface_found => join_step(FaultPoint::JoinInterfaceFound, false);
    fail_after_ports_reserved => join_step(FaultPoint::PublishPortsReserved, true);
    fail_after_port_rules => join_step(FaultPoint::PublishFirewallProgrammed, true);
    fail_after_conntrack_flush => join_step(FaultPoint::PublishConntrackFlushed, true);
}

#[test]
fn every_fault_point_has_a_test() {
    // Thirteen tests above, one per point; a new point must get one.
    assert_eq!(FaultPoint::ALL.len(), 13);
}
