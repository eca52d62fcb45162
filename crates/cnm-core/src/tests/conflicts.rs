//! Refusals: a name taken, an endpoint joined elsewhere, objects in use, a MAC taken, a sandbox
//! that exists. Each is a typed error of the right kind and changes nothing.

use cnm_types::ErrorKind;

use super::{World, ep_opts};
use crate::testing::FakeDriver;
use crate::{Capability, CoreError, EndpointOptions, NetworkOptions};

#[tokio::test]
async fn names_in_use_objects_in_use_and_joins_elsewhere_are_refused() {
    let w = World::new().await;
    let net = w.net("n", "10.70.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    ep.join("c1", []).await.unwrap();
    let other = net.create_endpoint("f", ep_opts()).await.unwrap();
    let before = w.snapshot().await;

    let cases: Vec<(Result<(), CoreError>, ErrorKind, &str)> = vec![
        (
            w.ctl
                .new_network("fake", "n", NetworkOptions::default())
                .await
                .map(drop),
            ErrorKind::AlreadyExists,
            "network with name n already exists",
        ),
        (
            net.create_endpoint("e", ep_opts()).await.map(drop),
            ErrorKind::AlreadyExists,
            "endpoint with name e already exists in network n",
        ),
        (
            ep.join("c2", []).await.map(drop),
            ErrorKind::Conflict,
            "already joined to sandbox",
        ),
        (
            net.delete().await,
            ErrorKind::Conflict,
            "has active endpoints: e, f",
        ),
        (ep.delete().await, ErrorKind::Conflict, "leave first"),
        (
            w.ctl.new_sandbox("c1", []).await.map(drop),
            ErrorKind::AlreadyExists,
            "sandbox for container c1 already exists",
        ),
        (
            other.leave("c1").await,
            ErrorKind::Conflict,
            "is not joined to sandbox",
        ),
        (
            net.create_endpoint("g", EndpointOptions::default().mac(ep.mac().unwrap()))
                .await
                .map(drop),
            ErrorKind::Conflict,
            "is already used by endpoint e",
        ),
        (
            net.create_endpoint(
                "h",
                EndpointOptions::default().ipv4(ep.ipv4().unwrap().addr()),
            )
            .await
            .map(drop),
            ErrorKind::Conflict,
            "10.70.0.2",
        ),
        (
            w.ctl
                .new_network("nope", "z", NetworkOptions::default())
                .await
                .map(drop),
            ErrorKind::NotFound,
            "driver \"nope\" not found",
        ),
        (
            w.ctl
                .new_network(
                    "fake",
                    "z",
                    NetworkOptions::default().driver_option("color", "red"),
                )
                .await
                .map(drop),
            ErrorKind::InvalidInput,
            "unknown option \"color\"",
        ),
    ];
    for (result, kind, needle) in cases {
        let e = result.expect_err(needle);
        assert_eq!(e.kind(), kind, "{e}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    }
    assert_eq!(w.snapshot().await, before, "a refusal changed state");
}

#[tokio::test]
async fn a_singleton_driver_has_one_network() {
    let w = World::with_driver(|k| {
        FakeDriver::new("fake", Some(k)).with_capability(
            Capability::local()
                .with_addresses(false)
                .with_singleton(true),
        )
    })
    .await;
    w.ctl
        .new_network("fake", "one", NetworkOptions::default())
        .await
        .unwrap();
    let e = w
        .ctl
        .new_network("fake", "two", NetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("network one exists"), "{e}");
    // The name of the refused one is free again.
    assert!(w.ctl.network("two").is_err());
}

#[tokio::test]
async fn a_deleted_object_says_so() {
    let w = World::new().await;
    let net = w.net("n", "10.71.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    ep.delete().await.unwrap();
    let e = ep.delete().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("endpoint e was deleted"), "{e}");
    net.delete().await.unwrap();
    let e = net.create_endpoint("x", ep_opts()).await.unwrap_err();
    assert!(e.to_string().contains("network n was deleted"), "{e}");
}
