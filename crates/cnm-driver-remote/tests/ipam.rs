//! The remote IPAM in a controller, against the test plugin (network driver and IPAM driver in
//! one process): pools and addresses allocated and released with Docker's request shapes,
//! libnetwork's overlap avoidance for pools the plugin chooses, and the refusal of a pool that
//! overlaps an existing network's.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use cnm_core::{EndpointOptions, NetworkOptions};
use common::{IpamMode, PluginArgs, World};
use serde_json::{Value, json};

fn ipam_bodies(w: &World) -> Result<Vec<(String, Value)>> {
    Ok(w.plugin
        .requests()?
        .into_iter()
        .filter(|r| r.method.starts_with("IpamDriver."))
        .map(|r| (r.method, r.body))
        .collect())
}

fn plugin_pools(w: &World) -> Result<Value> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(w.plugin.root().join("data/state.json"))?)?;
    Ok(state["pools"].clone())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn remote_ipam_allocates_releases_and_keeps_pools_apart() -> Result<()> {
    let w = World::new(
        "rip",
        PluginArgs {
            implements: "NetworkDriver,IpamDriver",
            // What the plugin hands out when it chooses: first a pool inside network A's.
            pools: "10.90.1.0/24,10.91.0.0/24",
            ..PluginArgs::default()
        },
        Duration::from_secs(2),
    )
    .await?;
    let ipam = w.ipam.clone().context("the IPAM adapter")?;
    assert_eq!(ipam.address_spaces(), ("cnmtest-local", "cnmtest-global"));
    assert!(!ipam.capabilities().requires_mac_address);
    assert_eq!(
        ipam_bodies(&w)?,
        [
            ("IpamDriver.GetCapabilities".to_owned(), Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces".to_owned(), Value::Null),
        ]
    );
    w.plugin.clear_requests()?;

    // A: an explicit subnet; the gateway is asked for as Docker asks for it.
    let a = w
        .ctl
        .new_network(
            "rip",
            "a",
            NetworkOptions::default().subnet("10.90.0.0/16".parse()?),
        )
        .await?;
    assert_eq!(
        a.ipv4()[0].gateway.map(|g| g.to_string()).as_deref(),
        Some("10.90.0.1/16")
    );
    let pool_a = "cnmtest-local:10.90.0.0/16";
    assert_eq!(
        ipam_bodies(&w)?,
        [
            (
                "IpamDriver.RequestPool".to_owned(),
                json!({"AddressSpace": "cnmtest-local", "Pool": "10.90.0.0/16", "SubPool": "",
                       "Options": {}, "V6": false})
            ),
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "",
                       "Options": {"RequestAddressType": "com.docker.network.gateway"}})
            ),
        ]
    );
    w.plugin.clear_requests()?;

    // B: the plugin's choice. Its first pool lies inside A's: held, another asked for, then
    // the held one released (libnetwork's overlap avoidance).
    let b = w
        .ctl
        .new_network("rip", "b", NetworkOptions::default())
        .await?;
    assert_eq!(b.ipv4()[0].pool.to_string(), "10.91.0.0/24");
    let auto = json!({"AddressSpace": "cnmtest-local", "Pool": "", "SubPool": "",
                      "Options": {}, "V6": false});
    let bodies = ipam_bodies(&w)?;
    assert_eq!(
        bodies[..3],
        [
            ("IpamDriver.RequestPool".to_owned(), auto.clone()),
            ("IpamDriver.RequestPool".to_owned(), auto),
            (
                "IpamDriver.ReleasePool".to_owned(),
                json!({"PoolID": "cnmtest-local:10.90.1.0/24"})
            ),
        ]
    );
    w.plugin.clear_requests()?;

    // C: an explicit subnet overlapping A's: the plugin grants it, cnm gives it back and refuses.
    let e = w
        .ctl
        .new_network(
            "rip",
            "c",
            NetworkOptions::default().subnet("10.90.5.0/24".parse()?),
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("Pool overlaps with other one on this address space"),
        "{text}"
    );
    assert!(
        text.contains("10.90.5.0/24") && text.contains("10.90.0.0/16"),
        "{text}"
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::Conflict);
    let names: Vec<String> = w
        .ctl
        .networks()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        w.plugin.methods()?,
        ["IpamDriver.RequestPool", "IpamDriver.ReleasePool"],
        "refused before the network driver was asked"
    );
    assert_eq!(
        ipam_bodies(&w)?[1].1,
        json!({"PoolID": "cnmtest-local:10.90.5.0/24"})
    );
    w.plugin.clear_requests()?;

    // Addresses: any, then specific; released on endpoint deletion.
    let e1 = a.create_endpoint("e1", EndpointOptions::default()).await?;
    let e2 = a
        .create_endpoint("e2", EndpointOptions::default().ipv4("10.90.7.7".parse()?))
        .await?;
    assert_eq!(
        e1.ipv4().map(|x| x.to_string()).as_deref(),
        Some("10.90.0.2/16")
    );
    assert_eq!(
        e2.ipv4().map(|x| x.to_string()).as_deref(),
        Some("10.90.7.7/16")
    );
    e1.join("c1", []).await?;
    e2.join("c2", []).await?;
    let sb1 = w.ctl.sandbox_by_container_id("c1")?;
    cnm_testkit::probe::icmp(sb1.netns(), "10.90.7.7".parse()?).await?;
    for (ep, c) in [(&e1, "c1"), (&e2, "c2")] {
        ep.leave(c).await?;
        ep.delete().await?;
    }
    let bodies: Vec<(String, Value)> = ipam_bodies(&w)?;
    assert_eq!(
        bodies,
        [
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "", "Options": {}})
            ),
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "10.90.7.7", "Options": {}})
            ),
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "10.90.0.2"})
            ),
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "10.90.7.7"})
            ),
        ]
    );
    w.plugin.clear_requests()?;

    // Deleting the networks gives back each gateway, then each pool.
    a.delete().await?;
    b.delete().await?;
    assert_eq!(
        ipam_bodies(&w)?,
        [
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": pool_a, "Address": "10.90.0.1"})
            ),
            (
                "IpamDriver.ReleasePool".to_owned(),
                json!({"PoolID": pool_a})
            ),
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": "cnmtest-local:10.91.0.0/24", "Address": "10.91.0.1"})
            ),
            (
                "IpamDriver.ReleasePool".to_owned(),
                json!({"PoolID": "cnmtest-local:10.91.0.0/24"})
            ),
        ]
    );
    assert_eq!(plugin_pools(&w)?, json!({}), "the plugin holds nothing");
    w.host_is_clean().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_hung_ipam_plugin_fails_the_network_within_the_bound_and_leaves_nothing() -> Result<()> {
    let w = World::new(
        "hungipam",
        PluginArgs {
            implements: "NetworkDriver,IpamDriver",
            pools: "10.92.0.0/24",
            ..PluginArgs::default()
        },
        Duration::from_millis(500),
    )
    .await?;
    // The gateway request hangs after the pool was granted: the pool is given back.
    w.plugin.fault("IpamDriver.RequestAddress", Some("hang"))?;
    let started = std::time::Instant::now();
    let e = w
        .ctl
        .new_network("hungipam", "n", NetworkOptions::default())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.to_string()
            .contains("plugin \"hungipam\": IpamDriver.RequestAddress: no answer within 500ms"),
        "{e}"
    );
    assert!(w.ctl.networks().is_empty());
    assert_eq!(
        w.plugin.methods()?.last().map(String::as_str),
        Some("IpamDriver.ReleasePool")
    );
    assert_eq!(
        plugin_pools(&w)?,
        json!({}),
        "the pool went back to the plugin"
    );
    w.host_is_clean().await?;
    Ok(())
}

/// A network with a subnet and one endpoint through the plugin's IPAM: its pool id at the
/// plugin and the endpoint's address.
async fn network_with_an_endpoint(w: &World, name: &str) -> Result<(cnm_core::Network, String)> {
    let net = w
        .ctl
        .new_network(
            &w.plugin.name,
            name,
            NetworkOptions::default().subnet("10.93.0.0/24".parse()?),
        )
        .await?;
    let ep = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    assert_eq!(
        ep.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.93.0.2/24")
    );
    Ok((net, "cnmtest-local:10.93.0.0/24".to_owned()))
}

/// Deletes the endpoint and the network; the plugin is asked to release each address, then
/// the pool, and holds nothing.
async fn delete_and_check_released(w: &World, net: &cnm_core::Network, pool: &str) -> Result<()> {
    w.plugin.clear_requests()?;
    net.endpoint("e1")?.delete().await?;
    net.delete().await?;
    assert_eq!(
        ipam_bodies(w)?,
        [
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": pool, "Address": "10.93.0.2"})
            ),
            (
                "IpamDriver.ReleaseAddress".to_owned(),
                json!({"PoolID": pool, "Address": "10.93.0.1"})
            ),
            ("IpamDriver.ReleasePool".to_owned(), json!({"PoolID": pool})),
        ]
    );
    assert_eq!(plugin_pools(w)?, json!({}), "the plugin holds nothing");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_replaying_ipam_plugin_that_restarts_empty_gets_every_request_again() -> Result<()> {
    let mut w = World::new(
        "rpl",
        PluginArgs {
            implements: "NetworkDriver,IpamDriver",
            replay: true,
            ..PluginArgs::default()
        },
        Duration::from_secs(2),
    )
    .await?;
    let ipam = w.ipam.clone().context("the IPAM adapter")?;
    assert!(ipam.capabilities().requires_request_replay);
    let (_, pool) = network_with_an_endpoint(&w, "r").await?;

    // cnm and the plugin restart; the plugin has forgotten every pool.
    w.ctl.shutdown().await?;
    w.plugin.kill()?;
    w.plugin.forget_pools()?;
    w.plugin.restart(|_| {}).await?;
    w.plugin.clear_requests()?;
    w.restart_controller().await?;
    assert_eq!(
        ipam_bodies(&w)?,
        [
            ("IpamDriver.GetCapabilities".to_owned(), Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces".to_owned(), Value::Null),
            (
                "IpamDriver.RequestPool".to_owned(),
                json!({"AddressSpace": "cnmtest-local", "Pool": "10.93.0.0/24", "SubPool": "",
                       "Options": {}, "V6": false})
            ),
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool, "Address": "10.93.0.1",
                       "Options": {"RequestAddressType": "com.docker.network.gateway"}})
            ),
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool, "Address": "10.93.0.2", "Options": {}})
            ),
        ],
        "the pool, its gateway and the endpoint's address, requested again"
    );
    assert_eq!(
        plugin_pools(&w)?,
        json!({pool.clone(): {"pool": "10.93.0.0/24", "refs": 1,
                              "taken": ["10.93.0.1", "10.93.0.2"]}})
    );
    let net = w.ctl.network("r")?;
    delete_and_check_released(&w, &net, &pool).await?;
    w.host_is_clean().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_ipam_plugin_that_keeps_its_state_is_not_asked_again_after_a_restart() -> Result<()> {
    let mut w = World::new(
        "kst",
        PluginArgs {
            implements: "NetworkDriver,IpamDriver",
            ..PluginArgs::default()
        },
        Duration::from_secs(2),
    )
    .await?;
    assert!(
        !w.ipam
            .clone()
            .context("the IPAM adapter")?
            .capabilities()
            .requires_request_replay
    );
    let (_, pool) = network_with_an_endpoint(&w, "k").await?;
    let held = plugin_pools(&w)?;

    w.plugin.clear_requests()?;
    w.restart_controller().await?;
    assert_eq!(
        ipam_bodies(&w)?,
        [
            ("IpamDriver.GetCapabilities".to_owned(), Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces".to_owned(), Value::Null),
        ],
        "nothing requested again"
    );
    assert_eq!(plugin_pools(&w)?, held);
    // The pool is taken back by the plugin's own PoolID, kept in the network's record.
    let net = w.ctl.network("k")?;
    delete_and_check_released(&w, &net, &pool).await?;
    w.host_is_clean().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_network_naming_an_ipam_plugin_gets_its_pools_and_addresses_from_it() -> Result<()> {
    let mut w = World::with_ipam_mode(
        "ipn",
        PluginArgs {
            implements: "NetworkDriver,IpamDriver",
            pools: "10.94.0.0/24",
            ..PluginArgs::default()
        },
        Duration::from_secs(2),
        IpamMode::ByName,
    )
    .await?;
    let named = |ipam: &str| {
        let mut o = NetworkOptions::default();
        o.ipam_driver = Some(ipam.to_owned());
        o
    };
    // The controller has the default IPAM: the plugin's is not asked until a network names it.
    assert!(ipam_bodies(&w)?.is_empty(), "{:?}", ipam_bodies(&w)?);
    w.plugin.clear_requests()?;

    // An IPAM name no plugin has fails at once, clearly, and leaves nothing.
    let started = std::time::Instant::now();
    let e = w
        .ctl
        .new_network("ipn", "bad", named("nope"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound, "{e}");
    let text = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(text.contains("\"nope\""), "{text}");
    assert!(w.ctl.networks().is_empty());
    assert!(
        w.plugin.requests()?.is_empty(),
        "the plugin was asked nothing"
    );

    // The network's pool (the plugin's choice), gateway and addresses come from the plugin.
    let net = w.ctl.new_network("ipn", "n", named("ipn")).await?;
    assert_eq!(net.ipv4()[0].pool.to_string(), "10.94.0.0/24");
    let pool = "cnmtest-local:10.94.0.0/24";
    assert_eq!(
        ipam_bodies(&w)?,
        [
            ("IpamDriver.GetCapabilities".to_owned(), Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces".to_owned(), Value::Null),
            (
                "IpamDriver.RequestPool".to_owned(),
                json!({"AddressSpace": "cnmtest-local", "Pool": "", "SubPool": "",
                       "Options": {}, "V6": false})
            ),
            (
                "IpamDriver.RequestAddress".to_owned(),
                json!({"PoolID": pool, "Address": "",
                       "Options": {"RequestAddressType": "com.docker.network.gateway"}})
            ),
        ]
    );
    w.plugin.clear_requests()?;
    let e1 = net
        .create_endpoint("e1", EndpointOptions::default())
        .await?;
    let e2 = net
        .create_endpoint("e2", EndpointOptions::default())
        .await?;
    assert_eq!(
        e1.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.94.0.2/24")
    );
    assert_eq!(
        e2.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.94.0.3/24")
    );
    // Real traffic between two sandboxes on it.
    e1.join("c1", []).await?;
    e2.join("c2", []).await?;
    let sb1 = w.ctl.sandbox_by_container_id("c1")?;
    cnm_testkit::probe::icmp(sb1.netns(), "10.94.0.3".parse()?).await?;
    for (ep, c) in [(&e1, "c1"), (&e2, "c2")] {
        ep.leave(c).await?;
    }
    let requested = ipam_bodies(&w)?;
    // A restart finds the network's IPAM by name again; the plugin keeps its state, so it is
    // asked nothing but its capabilities and address spaces.
    w.plugin.clear_requests()?;
    w.restart_controller().await?;
    assert_eq!(
        ipam_bodies(&w)?,
        [
            ("IpamDriver.GetCapabilities".to_owned(), Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces".to_owned(), Value::Null),
        ]
    );
    w.plugin.clear_requests()?;
    let net = w.ctl.network("n")?;
    for e in ["e1", "e2"] {
        net.endpoint(e)?.delete().await?;
    }
    net.delete().await?;
    let release = |a: &str| {
        (
            "IpamDriver.ReleaseAddress".to_owned(),
            json!({"PoolID": pool, "Address": a}),
        )
    };
    let any = (
        "IpamDriver.RequestAddress".to_owned(),
        json!({"PoolID": pool, "Address": "", "Options": {}}),
    );
    assert_eq!(requested, [any.clone(), any]);
    assert_eq!(
        ipam_bodies(&w)?,
        [
            release("10.94.0.2"),
            release("10.94.0.3"),
            release("10.94.0.1"),
            ("IpamDriver.ReleasePool".to_owned(), json!({"PoolID": pool})),
        ]
    );
    assert_eq!(plugin_pools(&w)?, json!({}), "the plugin holds nothing");
    w.host_is_clean().await?;
    Ok(())
}
