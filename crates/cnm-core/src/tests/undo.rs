//! Atomic or nothing: a failure at any step of the driver or the kernel leaves the kernel, the
//! driver, the store, IPAM and the controller as they were, and every cleanup error is reported
//! with the first cause.

use std::future::Future;
use std::pin::Pin;

use super::{World, ep_opts};
use crate::testing::{DriverStep, FakeInterfaceMode, KernelStep};
use crate::{CoreError, EndpointOptions, JoinOption, NetworkOptions, PortBinding};

type Op<'a> = Pin<Box<dyn Future<Output = Result<(), CoreError>> + 'a>>;

/// The constructive operations, each from the state the world is in: a network, an endpoint, a
/// join that makes its sandbox, a second join that takes the default route (and so moves the
/// published ports), and a connect (endpoint and join at once).
fn operations(w: &World) -> Vec<(&'static str, Op<'_>)> {
    let published =
        || EndpointOptions::default().publish("8080:80/tcp".parse::<PortBinding>().unwrap());
    vec![
        (
            "create network",
            Box::pin(async move {
                w.ctl
                    .new_network(
                        "fake",
                        "x",
                        NetworkOptions::default()
                            .subnet("10.61.0.0/24".parse().unwrap())
                            .driver_option("fake.color", "blue"),
                    )
                    .await
                    .map(drop)
            }),
        ),
        (
            "create endpoint",
            Box::pin(async move {
                let net = w.ctl.network("a").unwrap();
                net.create_endpoint("x", published()).await.map(drop)
            }),
        ),
        (
            "join with a new sandbox",
            Box::pin(async move {
                let ep = w.ctl.network("a").unwrap().endpoint("free").unwrap();
                ep.join("new", [JoinOption::hostname("n")]).await.map(drop)
            }),
        ),
        (
            "join that takes the default route",
            Box::pin(async move {
                let ep = w.ctl.network("b").unwrap().endpoint("first").unwrap();
                let sb = w.ctl.sandbox_by_container_id("old").unwrap();
                ep.join_sandbox(&sb, [JoinOption::gateway_priority(10)])
                    .await
            }),
        ),
        (
            "connect",
            Box::pin(async move {
                let net = w.ctl.network("b").unwrap();
                let sb = w.ctl.sandbox_by_container_id("old").unwrap();
                net.connect("y", &sb, ep_opts(), []).await.map(drop)
            }),
        ),
    ]
}

/// Networks `a` and `b`; endpoint `free` on `a`; container `old` joined to `a` through `held`
/// (the gateway endpoint, with a published port); endpoint `first` on `b`.
async fn prepared(mode: FakeInterfaceMode) -> World {
    let w =
        World::with_driver(|k| crate::testing::FakeDriver::new("fake", Some(k)).with_mode(mode))
            .await;
    let a = w.net("a", "10.62.0.0/24").await;
    let b = w.net("b", "10.63.0.0/24").await;
    a.create_endpoint("free", ep_opts()).await.unwrap();
    let held = a
        .create_endpoint(
            "held",
            EndpointOptions::default().publish("9090:90/tcp".parse().unwrap()),
        )
        .await
        .unwrap();
    held.join("old", []).await.unwrap();
    b.create_endpoint(
        "first",
        EndpointOptions::default().publish("8081:81/tcp".parse().unwrap()),
    )
    .await
    .unwrap();
    w
}

/// Runs every operation with a failure armed at `arm`'s step and checks: when the step was
/// reached the operation failed and changed nothing; every step is reached by some operation.
async fn every_step<S: Copy + std::fmt::Debug>(
    mode: FakeInterfaceMode,
    steps: &[S],
    arm: impl Fn(&World, S),
    pending: impl Fn(&World) -> bool,
) -> Vec<S> {
    let mut reached = Vec::new();
    for &step in steps {
        let w = prepared(mode).await;
        for (what, op) in operations(&w) {
            let before = w.snapshot().await;
            arm(&w, step);
            let result = op.await;
            if pending(&w) {
                // Not a step of this operation.
                w.disarm();
                result.unwrap_or_else(|e| panic!("{what} failed without the failure: {e}"));
                continue;
            }
            let e = result.expect_err(what);
            assert!(
                e.to_string().contains("on purpose"),
                "{what} at {step:?}: {e}"
            );
            let after = w.snapshot().await;
            assert_eq!(
                after.unversioned(),
                before.unversioned(),
                "{what} failed at {step:?} and changed state"
            );
            reached.push(step);
            break;
        }
    }
    reached
}

#[tokio::test]
async fn a_failure_at_every_driver_step_is_undone() {
    for mode in [FakeInterfaceMode::InSandbox, FakeInterfaceMode::MoveIn] {
        let steps = [
            DriverStep::ParseNetworkOptions,
            DriverStep::CreateNetwork,
            DriverStep::ParseEndpointOptions,
            DriverStep::CreateEndpoint,
            DriverStep::Join,
            DriverStep::Program,
            DriverStep::Revoke,
        ];
        let reached = every_step(
            mode,
            &steps,
            |w, s| w.driver.faults().fail_next(s),
            |w| w.driver.faults().pending(),
        )
        .await;
        assert_eq!(reached, steps, "{mode:?}: each constructive step is tested");
    }
}

#[tokio::test]
async fn a_failure_at_every_kernel_step_is_undone() {
    for mode in [FakeInterfaceMode::InSandbox, FakeInterfaceMode::MoveIn] {
        let steps = [
            KernelStep::CreateNetns,
            KernelStep::LoopbackUp,
            KernelStep::PrepareDir,
            KernelStep::WriteResolvConf,
            KernelStep::WriteHosts,
            KernelStep::ConfigureInterface,
            KernelStep::AddRoute,
            KernelStep::DelRoute,
        ];
        let reached = every_step(
            mode,
            &steps,
            |w, s| w.kernel.faults().fail_next(s),
            |w| w.kernel.faults().pending(),
        )
        .await;
        assert_eq!(reached, steps, "{mode:?}: each kernel step is tested");
    }
}

#[tokio::test]
async fn a_failed_cleanup_is_reported_with_the_cause() {
    let w = prepared(FakeInterfaceMode::InSandbox).await;
    let ep = w.ctl.network("a").unwrap().endpoint("free").unwrap();
    // The join fails at its default route; undoing it, the driver's leave fails too.
    w.kernel.faults().fail_next(KernelStep::AddRoute);
    w.driver.faults().fail_next(DriverStep::Leave);
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let e = ep.join_sandbox(&sb, []).await.unwrap_err();
    let CoreError::Cleanup { source, cleanup } = &e else {
        panic!("no cleanup error attached: {e}");
    };
    assert!(source.to_string().contains("AddRoute"), "{source}");
    assert_eq!(cleanup.len(), 1, "{cleanup:?}");
    assert!(cleanup[0].to_string().contains("Leave"), "{}", cleanup[0]);
    assert_eq!(e.kind(), source.kind(), "the cause decides the kind");
}

#[tokio::test]
async fn replacing_published_ports_is_all_or_nothing_and_recorded() {
    let tcp9090: PortBinding = "9090:90/tcp".parse().unwrap();
    let udp8082: PortBinding = "8082:82/udp".parse().unwrap();
    // A failure at either driver call leaves everything as it was, old port published.
    for step in [DriverStep::Revoke, DriverStep::Program] {
        let w = prepared(FakeInterfaceMode::InSandbox).await;
        let ep = w.ctl.network("a").unwrap().endpoint("held").unwrap();
        let before = w.snapshot().await;
        w.driver.faults().fail_next(step);
        let e = ep.publish_ports(vec![udp8082]).await.unwrap_err();
        assert!(e.to_string().contains("on purpose"), "{step:?}: {e}");
        assert_eq!(w.snapshot().await, before, "{step:?} changed state");
        assert_eq!(ep.port_bindings(), vec![tcp9090]);
    }
    let mut w = prepared(FakeInterfaceMode::InSandbox).await;
    let ep = w.ctl.network("a").unwrap().endpoint("held").unwrap();
    let made = ep.publish_ports(vec![udp8082]).await.unwrap();
    assert_eq!(made, vec![udp8082]);
    assert_eq!(w.driver.state().published[ep.id()], vec![udp8082]);
    let sb = w.ctl.sandbox_by_container_id("old").unwrap();
    assert_eq!(sb.published_ports(), vec![udp8082]);
    // Recorded: a restart publishes the new port, not the one the endpoint was created with.
    w.restart().await.unwrap();
    let ep = w.ctl.network("a").unwrap().endpoint("held").unwrap();
    assert_eq!(ep.port_bindings(), vec![udp8082]);
    assert_eq!(w.driver.state().published[ep.id()], vec![udp8082]);
    // An empty list withdraws them.
    assert!(ep.publish_ports(Vec::new()).await.unwrap().is_empty());
    assert!(!w.driver.state().published.contains_key(ep.id()));
    assert!(ep.port_bindings().is_empty());

    // Only the gateway endpoint takes ports; an endpoint not joined takes none; a bad binding
    // is refused by name. None of it changes anything.
    let b = w.ctl.network("b").unwrap();
    let sb = w.ctl.sandbox_by_container_id("old").unwrap();
    let second = b.create_endpoint("second", ep_opts()).await.unwrap();
    second
        .join_sandbox(&sb, [JoinOption::gateway_priority(-10)])
        .await
        .unwrap();
    let before = w.snapshot().await;
    let e = second.publish_ports(vec![udp8082]).await.unwrap_err();
    assert!(
        matches!(&e, CoreError::PortsNotPublishable { gateway: Some(g), .. } if g == "held"),
        "{e}"
    );
    let free = w.ctl.network("a").unwrap().endpoint("free").unwrap();
    let e = free.publish_ports(vec![udp8082]).await.unwrap_err();
    assert!(matches!(e, CoreError::NotJoined { .. }), "{e}");
    let bad = PortBinding {
        host_port: Some(crate::PortRange::new(8000, 8001).unwrap()),
        ..udp8082
    };
    let e = ep.publish_ports(vec![bad]).await.unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("port binding"), "{e}");
    assert_eq!(w.snapshot().await, before, "refusals changed state");
}
