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

/// What the gateway network's driver publishes now, as `-p` strings, by endpoint name.
fn published(w: &World) -> Vec<(String, Vec<String>)> {
    let Ok(gw) = w.ctl.network("gw") else {
        return Vec::new();
    };
    let state = w.driver.state();
    let mut out: Vec<(String, Vec<String>)> = gw
        .endpoints()
        .into_iter()
        .filter_map(|e| {
            let ports = state.published.get(e.id())?;
            Some((
                e.name().to_owned(),
                ports.iter().map(ToString::to_string).collect(),
            ))
        })
        .collect();
    out.sort();
    out
}

fn port(s: &str) -> crate::PortBinding {
    s.parse().expect("a port binding")
}

#[tokio::test]
async fn the_ports_of_an_endpoint_needing_the_gateway_network_are_published_by_its_gateway_endpoint()
 {
    let (w, _ovl) = world().await;
    let net = |name: &'static str, subnet: &'static str| {
        let ctl = w.ctl.clone();
        async move {
            ctl.new_network(
                "ovl",
                name,
                NetworkOptions::default().subnet(subnet.parse().unwrap()),
            )
            .await
            .unwrap()
        }
    };
    let (o, o2, o3) = (
        net("o", "10.240.0.0/24").await,
        net("o2", "10.243.0.0/24").await,
        net("o3", "10.244.0.0/24").await,
    );
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let gw_name = format!("gateway_{}", &sb.id()[..12]);
    let s = |v: &[&str]| v.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();

    // Joined with ports: the gateway endpoint, made for it, publishes them.
    let e = o
        .connect("e", &sb, ep_opts().publish(port("8080:80/tcp")), [])
        .await
        .unwrap();
    assert_eq!(published(&w), [(gw_name.clone(), s(&["8080:80/tcp"]))]);
    assert_eq!(sb.gateway_endpoint().unwrap().name(), gw_name);

    // A second one: the union.
    let e2 = o2
        .connect("e2", &sb, ep_opts().publish(port("53/udp")), [])
        .await
        .unwrap();
    assert_eq!(
        published(&w),
        [(gw_name.clone(), s(&["8080:80/tcp", "40000:53/udp"]))]
    );

    // The gateway network's driver cannot publish a third one's ports: that join is undone
    // and the gateway endpoint keeps what it published.
    w.driver.faults().fail_next(DriverStep::Program);
    let err = o3
        .connect("e3", &sb, ep_opts().publish(port("9090:90/tcp")), [])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fails on purpose"), "{err}");
    assert!(o3.endpoints().is_empty());
    assert_eq!(
        published(&w),
        [(gw_name.clone(), s(&["8080:80/tcp", "40000:53/udp"]))]
    );

    // Replaced through the endpoint: the gateway endpoint follows; what it made is returned.
    let made = e.publish_ports(vec![port("8081:81/tcp")]).await.unwrap();
    assert_eq!(made, [port("8081:81/tcp")]);
    assert_eq!(e.port_bindings(), [port("8081:81/tcp")]);
    assert_eq!(
        published(&w),
        [(gw_name.clone(), s(&["8081:81/tcp", "40000:53/udp"]))]
    );
    // A failure to publish keeps the old ports, on the endpoint and on the gateway endpoint.
    w.driver.faults().fail_next(DriverStep::Program);
    e.publish_ports(vec![port("8082:82/tcp")])
        .await
        .unwrap_err();
    assert_eq!(e.port_bindings(), [port("8081:81/tcp")]);
    assert_eq!(
        published(&w),
        [(gw_name.clone(), s(&["8081:81/tcp", "40000:53/udp"]))]
    );
    // Unpublished.
    assert!(e.publish_ports(Vec::new()).await.unwrap().is_empty());
    assert_eq!(published(&w), [(gw_name.clone(), s(&["40000:53/udp"]))]);

    // A leave takes its ports off the gateway endpoint; the last leave takes the endpoint.
    sb.disconnect(&o2).await.unwrap();
    assert_eq!(published(&w), []);
    assert!(
        e2.port_bindings().len() == 1,
        "the endpoint keeps its own record"
    );
    e.publish_ports(vec![port("8080:80/tcp")]).await.unwrap();
    sb.disconnect(&o).await.unwrap();
    assert_eq!(published(&w), []);
    assert!(w.ctl.network("gw").unwrap().endpoints().is_empty());

    // While another endpoint gives the default route, ports needing the gateway network are
    // refused, naming it, and nothing is joined.
    let f = w.net("f", "10.241.0.0/24").await;
    f.connect("f", &sb, ep_opts(), []).await.unwrap();
    let err = o
        .connect("e4", &sb, ep_opts().publish(port("8080:80/tcp")), [])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crate::CoreError::PortsNotPublishable { gateway: Some(g), .. } if g == "f"),
        "{err}"
    );
    assert_eq!(endpoints(&sb), (vec!["f".to_owned()], Some("f".to_owned())));
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
    // Nothing carries its ports there: they are refused as on any endpoint without a gateway.
    let err = o
        .connect("p", &sb, ep_opts().publish(port("8080:80/tcp")), [])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, crate::CoreError::PortsNotPublishable { .. }),
        "{err}"
    );
    assert_eq!(endpoints(&sb), (vec![], None));
}
