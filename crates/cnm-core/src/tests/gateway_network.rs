//! The gateway network (Docker's docker_gwbridge) without root: a sandbox whose only endpoint's
//! driver gives no way out gets an endpoint on the gateway network with the default route,
//! joined with it and undone with it; it goes when an endpoint with a gateway comes or the
//! last one needing it leaves; an internal network needs none.

use std::path::Path;
use std::sync::Arc;

use super::{RESOLV, World, builder, ep_opts};
use crate::NetworkOptions;
use crate::store::MemoryStore;
use crate::testing::{DriverStep, FakeDriver, FakeKernel};

/// A world whose `fake` driver serves the gateway network `gw`, with an overlay-like driver
/// `ovl` beside it.
async fn world() -> (World, Arc<FakeDriver>) {
    let kernel = FakeKernel::new().expect("a fake kernel");
    kernel.put_file(Path::new(RESOLV), "nameserver 192.0.2.53\n");
    let driver = Arc::new(FakeDriver::new("fake", Some(kernel.clone())));
    let ovl = Arc::new(FakeDriver::new("ovl", Some(kernel.clone())).needing_gateway_network());
    let store = Arc::new(MemoryStore::new());
    let run = tempfile::tempdir().expect("a run dir");
    let o = ovl.clone();
    let ctl = builder(&kernel, &driver, &store, run.path())
        .driver("ovl", move |_| Ok(o))
        .gateway_network(
            "gw",
            "fake",
            NetworkOptions::default().subnet("10.250.0.0/24".parse().unwrap()),
        )
        .build()
        .await
        .expect("a controller on the fake kernel");
    let w = World {
        kernel,
        driver,
        store,
        ctl,
        run,
    };
    (w, ovl)
}

/// The names of the sandbox's endpoints, and of its gateway endpoint.
fn endpoints(sb: &crate::Sandbox) -> (Vec<String>, Option<String>) {
    let mut names: Vec<String> = sb
        .endpoints()
        .into_iter()
        .map(|(e, _)| e.name().to_owned())
        .collect();
    names.sort();
    (names, sb.gateway_endpoint().map(|e| e.name().to_owned()))
}

#[tokio::test]
async fn the_gateway_endpoint_comes_and_goes_with_the_need_and_fails_with_its_join() {
    let (w, ovl) = world().await;
    let o = w
        .ctl
        .new_network(
            "ovl",
            "o",
            NetworkOptions::default().subnet("10.240.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let gw_name = format!("gateway_{}", &sb.id()[..12]);

    // The gateway network's join fails: the overlay endpoint's join is undone with it.
    w.driver.faults().fail_next(DriverStep::Join);
    let e = o.connect("e", &sb, ep_opts(), []).await.unwrap_err();
    assert!(e.to_string().contains("Join fails on purpose"), "{e}");
    assert_eq!(endpoints(&sb), (vec![], None));
    assert!(o.endpoints().is_empty());
    assert!(ovl.state().joined.is_empty() && ovl.state().endpoints.is_empty());
    let gw = w.ctl.network("gw").expect("made on first need, and kept");
    assert!(gw.endpoints().is_empty());
    assert!(w.driver.state().joined.is_empty() && w.driver.state().endpoints.is_empty());

    // It works: the sandbox's default route is the gateway endpoint's.
    o.connect("e", &sb, ep_opts(), []).await.unwrap();
    assert_eq!(
        endpoints(&sb),
        (vec!["e".to_owned(), gw_name.clone()], Some(gw_name.clone()))
    );

    // An endpoint with a gateway of its own: the gateway endpoint goes; and comes back after.
    let f = w.net("f", "10.241.0.0/24").await;
    f.connect("f", &sb, ep_opts(), []).await.unwrap();
    assert_eq!(
        endpoints(&sb),
        (vec!["e".to_owned(), "f".to_owned()], Some("f".to_owned()))
    );
    assert!(gw.endpoints().is_empty(), "the gateway endpoint is deleted");
    sb.disconnect(&f).await.unwrap();
    assert_eq!(
        endpoints(&sb),
        (vec!["e".to_owned(), gw_name.clone()], Some(gw_name.clone()))
    );

    // The last endpoint needing it leaves: it goes, the gateway network stays.
    sb.disconnect(&o).await.unwrap();
    assert_eq!(endpoints(&sb), (vec![], None));
    assert!(gw.endpoints().is_empty());
    assert!(w.driver.state().joined.is_empty());
    w.ctl.network("gw").expect("the gateway network stays");

    // An internal network needs no way out.
    let i = w
        .ctl
        .new_network(
            "ovl",
            "i",
            NetworkOptions::default()
                .subnet("10.242.0.0/24".parse().unwrap())
                .internal(true),
        )
        .await
        .unwrap();
    i.connect("x", &sb, ep_opts(), []).await.unwrap();
    assert_eq!(endpoints(&sb), (vec!["x".to_owned()], None));

    // A sandbox deleted while on the gateway network takes its gateway endpoint along.
    o.connect("e2", &sb, ep_opts(), []).await.unwrap();
    assert_eq!(gw.endpoints().len(), 1);
    sb.delete().await.unwrap();
    assert!(gw.endpoints().is_empty());
}

#[tokio::test]
async fn a_sandbox_made_without_the_gateway_network_never_joins_it() {
    let (w, ovl) = world().await;
    let o = w
        .ctl
        .new_network(
            "ovl",
            "o",
            NetworkOptions::default().subnet("10.240.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let sb = w
        .ctl
        .new_sandbox("c", [crate::JoinOption::no_gateway_network()])
        .await
        .unwrap();
    assert!(sb.options().no_gateway_network);
    o.connect("e", &sb, ep_opts(), []).await.unwrap();
    assert_eq!(endpoints(&sb), (vec!["e".to_owned()], None));
    assert_eq!(ovl.state().joined.len(), 1);
    assert!(
        w.ctl.network("gw").is_err(),
        "the gateway network is not even made"
    );
    assert!(w.driver.state().joined.is_empty());
    sb.disconnect(&o).await.unwrap();
    assert_eq!(endpoints(&sb), (vec![], None));
}
