//! A controller built again on the same store and kernel finds everything: objects, addresses,
//! joins, the options as the user gave them (static addresses included), the driver's options
//! parsed once more (once per object), published ports.

use std::net::Ipv4Addr;

use super::World;
use crate::testing::DriverStep;
use crate::{EndpointOptions, JoinOption, NetworkOptions};

#[tokio::test]
async fn objects_options_and_joins_survive_a_restart() {
    let mut w = World::new().await;
    let net = w
        .ctl
        .new_network(
            "fake",
            "n",
            NetworkOptions::default()
                .subnet("10.90.0.0/24".parse().unwrap())
                .driver_option("fake.color", "green"),
        )
        .await
        .unwrap();
    let asked = EndpointOptions::default()
        .ipv4(Ipv4Addr::new(10, 90, 0, 77))
        .alias("db")
        .publish("5432:5432/tcp".parse().unwrap());
    let mut asked = asked;
    asked.driver_options.insert("fake.size".into(), "xl".into());
    let ep = net.create_endpoint("e", asked.clone()).await.unwrap();
    let sb = ep.join("c", [JoinOption::hostname("db")]).await.unwrap();
    let parses_before = w.driver.faults().calls();
    let before = w.snapshot().await;

    w.restart().await.unwrap();
    // The old handles belong to the controller that was shut down.
    assert!(matches!(
        ep.delete().await.unwrap_err(),
        crate::CoreError::Shutdown
    ));
    let after = w.snapshot().await;
    assert_eq!(after.records, before.records, "a restart writes nothing");
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.ipam, before.ipam, "IPAM rebuilt from the records");
    assert_eq!(
        after.kernel, before.kernel,
        "the kernel state adopted as it was"
    );

    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    assert_eq!(
        ep.options(),
        &asked,
        "the options as given, static address included"
    );
    assert_eq!(ep.ipv4().unwrap().to_string(), "10.90.0.77/24");
    let sb2 = w.ctl.sandbox_by_container_id("c").unwrap();
    assert_eq!(sb2.id(), sb.id());
    assert_eq!(sb2.published_ports()[0].to_string(), "5432:5432/tcp");
    assert_eq!(sb2.gateway_endpoint().unwrap().id(), ep.id());
    // One parse per object at reload: the network's and the endpoint's.
    let calls = w.driver.faults().calls();
    for step in [
        DriverStep::ParseNetworkOptions,
        DriverStep::ParseEndpointOptions,
    ] {
        assert_eq!(calls[&step], parses_before[&step] + 1, "{step:?}");
    }
    assert!(
        w.driver.always_got_parsed_options(),
        "every create, restore and join got the options parsed"
    );
    // And it all works on.
    ep.leave("c").await.unwrap();
    sb2.delete().await.unwrap();
    ep.delete().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_whose_namespace_is_gone_is_dropped_and_its_endpoint_freed() {
    let mut w = World::new().await;
    let net = w.net("n", "10.91.0.0/24").await;
    let ep = net
        .create_endpoint("e", EndpointOptions::default())
        .await
        .unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let key = sb.key().to_owned();
    w.ctl.shutdown().await.unwrap();
    // A reboot: namespaces do not survive it.
    crate::kernel::Kernel::delete_netns(w.kernel.as_ref(), &key)
        .await
        .unwrap();
    w.restart().await.unwrap();
    assert!(w.ctl.sandboxes().is_empty());
    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    assert_eq!(ep.sandbox_id(), None);
    ep.join("c", []).await.unwrap();
}
