//! What the driver SPI grew: drivers registered while running, addresses a driver gives,
//! drivers without gateways, options parsed once by the driver that owns them.

use std::net::Ipv4Addr;
use std::sync::Arc;

use cnm_types::ErrorKind;

use super::{World, builder, ep_opts};
use crate::testing::{DriverStep, FakeDriver, FakeInterfaceMode};
use crate::{Capability, CoreError, EndpointOptions, NetworkOptions, PoolConfig};

#[tokio::test]
async fn drivers_register_while_running_and_names_stay_unique() {
    let w = World::new().await;
    assert_eq!(w.ctl.drivers(), ["fake"]);
    let second = Arc::new(FakeDriver::new("late", Some(w.kernel.clone())));
    let d = second.clone();
    w.ctl.register_driver("late", move |_| Ok(d)).await.unwrap();
    assert_eq!(w.ctl.drivers(), ["fake", "late"]);
    let net = w
        .ctl
        .new_network(
            "late",
            "n",
            NetworkOptions::default().subnet("10.110.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    assert!(second.state().networks.contains_key(net.id()));

    let e = w
        .ctl
        .register_driver("late", |_| unreachable!("not built twice"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::DriverExists(ref n) if n == "late"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);

    // Two of one name given to the builder: refused before anything.
    let d1 = Arc::new(FakeDriver::new("x", None));
    let run = tempfile::tempdir().unwrap();
    let e = builder(&w.kernel, &d1, &w.store, run.path())
        .driver("fake", |_| unreachable!("refused before it is built"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::DuplicateDriver(ref n) if n == "fake"),
        "{e}"
    );
}

#[tokio::test]
async fn a_driver_without_a_gateway_gets_no_gateway_address() {
    let w = World::with_driver(|k| {
        FakeDriver::new("fake", Some(k)).with_capability(Capability::local().with_gateway(false))
    })
    .await;
    let net = w.net("p2p", "10.111.0.0/30").await;
    assert_eq!(net.ipv4()[0].gateway, None);
    let a = net.create_endpoint("a", ep_opts()).await.unwrap();
    let b = net.create_endpoint("b", ep_opts()).await.unwrap();
    // A /30 has two host addresses; with no gateway taking one, both go to endpoints.
    assert_eq!(a.ipv4().unwrap().to_string(), "10.111.0.1/30");
    assert_eq!(b.ipv4().unwrap().to_string(), "10.111.0.2/30");
    let sb = a.join("c", []).await.unwrap();
    assert!(
        sb.gateway_endpoint().is_none(),
        "no default route without a gateway"
    );
    let e = w
        .ctl
        .new_network(
            "fake",
            "gw",
            NetworkOptions::default().pool(
                PoolConfig::new("10.112.0.0/24".parse().unwrap())
                    .with_gateway("10.112.0.1".parse().unwrap())
                    .unwrap(),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string().contains("gives its networks no gateway"),
        "{e}"
    );
}

#[tokio::test]
async fn addresses_a_driver_gives_are_used_and_held_by_ipam() {
    // In a pool: IPAM's own choice goes back, the driver's is held.
    let w = World::with_driver(|k| {
        FakeDriver::new("fake", Some(k)).giving(Some("10.113.0.77/24".parse().unwrap()), None)
    })
    .await;
    let net = w.net("n", "10.113.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    assert_eq!(ep.ipv4().unwrap().to_string(), "10.113.0.77/24");
    let e = net
        .create_endpoint(
            "f",
            EndpointOptions::default().ipv4(Ipv4Addr::new(10, 113, 0, 77)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Conflict,
        "IPAM holds the driver's address: {e}"
    );
    // A static address the user asked for is not the driver's to change.
    let before = w.snapshot().await;
    let e = net
        .create_endpoint(
            "g",
            EndpointOptions::default().ipv4(Ipv4Addr::new(10, 113, 0, 9)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e.primary(), CoreError::DriverAddress { .. }),
        "{e}"
    );
    assert_eq!(w.snapshot().await, before);
    // IPAM holds the gateway and the driver's address; its own first choice (.2) went back.
    let ipam = w.ctl.ipam().unwrap().snapshot().await.unwrap();
    let held: Vec<String> = ipam.pools[0]
        .allocated
        .iter()
        .map(|r| format!("{}-{}", r.first, r.last))
        .collect();
    assert_eq!(held, ["10.113.0.1-10.113.0.1", "10.113.0.77-10.113.0.77"]);
    ep.delete().await.unwrap();

    // Outside every pool: used as is, kept across a restart, never released to IPAM.
    let mut w = World::with_driver(|k| {
        FakeDriver::new("fake", Some(k)).giving(None, Some("fd00:114::9/64".parse().unwrap()))
    })
    .await;
    let net = w.net("n", "10.114.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    assert_eq!(ep.ipv6().unwrap().to_string(), "fd00:114::9/64");
    w.restart().await.unwrap();
    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    assert_eq!(ep.ipv6().unwrap().to_string(), "fd00:114::9/64");
    ep.delete().await.unwrap();
}

#[tokio::test]
async fn a_driver_parses_its_options_once_and_core_names_none_of_its_keys() {
    let w = World::with_driver(|k| {
        FakeDriver::new("fake", Some(k)).with_mode(FakeInterfaceMode::MoveIn)
    })
    .await;
    let net = w
        .ctl
        .new_network(
            "fake",
            "n",
            NetworkOptions::default()
                .subnet("10.115.0.0/24".parse().unwrap())
                .driver_option("fake.color", "red")
                .driver_option(crate::options::KEY_DRIVER_MTU, "1450"),
        )
        .await
        .unwrap();
    let mut opts = EndpointOptions::default();
    opts.driver_options.insert("fake.size".into(), "s".into());
    let ep = net.create_endpoint("e", opts).await.unwrap();
    ep.join("c", []).await.unwrap();
    let calls = w.driver.faults().calls();
    assert_eq!(calls[&DriverStep::ParseNetworkOptions], 1);
    assert_eq!(calls[&DriverStep::ParseEndpointOptions], 1);
    assert!(w.driver.always_got_parsed_options());
    // The generic MTU label is core's: kept as given, parsed by core, not the driver's key.
    assert_eq!(
        net.options().driver_options[crate::options::KEY_DRIVER_MTU],
        "1450"
    );
    assert_eq!(w.driver.state().networks[net.id()], Some(1450));
    // A key the driver does not know is the driver's refusal.
    let e = w
        .ctl
        .new_network(
            "fake",
            "m",
            NetworkOptions::default().driver_option("com.docker.network.bridge.name", "br0"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("com.docker.network.bridge.name"),
        "{e}"
    );
}
