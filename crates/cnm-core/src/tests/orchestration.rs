//! Operations composed in core (what the daemon's handlers used to compose): connect creates an
//! endpoint and joins it, undone together; disconnect leaves and deletes; a sandbox is removed
//! with every endpoint it had, an endpoint already gone counting as done.

use super::{World, ep_opts};
use crate::testing::{DriverStep, KernelStep};
use crate::{CoreError, JoinOption};

#[tokio::test]
async fn connect_is_undone_as_a_whole_and_reports_a_failed_cleanup() {
    let w = World::new().await;
    let net = w.net("n", "10.100.0.0/24").await;
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let before = w.snapshot().await;

    w.driver.faults().fail_next(DriverStep::Join);
    let e = net.connect("c", &sb, ep_opts(), []).await.unwrap_err();
    assert!(e.to_string().contains("Join fails on purpose"), "{e}");
    assert_eq!(
        w.snapshot().await,
        before,
        "the endpoint went with the failed join"
    );

    // The join fails late, and deleting the endpoint again fails too: both are reported.
    w.kernel.faults().fail_next(KernelStep::AddRoute);
    w.driver.faults().fail_next(DriverStep::DeleteEndpoint);
    let e = net.connect("c", &sb, ep_opts(), []).await.unwrap_err();
    let CoreError::Cleanup { source, cleanup } = &e else {
        panic!("{e}");
    };
    assert!(source.to_string().contains("AddRoute"), "{source}");
    assert!(
        cleanup[0]
            .to_string()
            .contains("DeleteEndpoint fails on purpose"),
        "{cleanup:?}"
    );

    let ep = net
        .connect("d", &sb, ep_opts(), [JoinOption::gateway_priority(1)])
        .await
        .unwrap();
    assert_eq!(ep.sandbox_id().as_deref(), Some(sb.id()));
}

#[tokio::test]
async fn disconnect_leaves_and_deletes() {
    let w = World::new().await;
    let net = w.net("n", "10.101.0.0/24").await;
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let ep = net.connect("c", &sb, ep_opts(), []).await.unwrap();
    let gone = sb.disconnect(&net).await.unwrap();
    assert_eq!(gone.id(), ep.id());
    assert!(net.endpoints().is_empty());
    assert!(sb.endpoints().is_empty());
    let e = sb.disconnect(&net).await.unwrap_err();
    assert_eq!(e.kind(), cnm_types::ErrorKind::Conflict, "{e}");
}

#[tokio::test]
async fn a_sandbox_goes_with_its_endpoints() {
    let w = World::new().await;
    let empty = w.snapshot().await;
    let a = w.net("a", "10.102.0.0/24").await;
    let b = w.net("b", "10.103.0.0/24").await;
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let ea = a.connect("c-a", &sb, ep_opts(), []).await.unwrap();
    let eb = b.connect("c-b", &sb, ep_opts(), []).await.unwrap();
    let gone = sb.delete_with_endpoints().await.unwrap();
    let ids: Vec<&str> = gone.iter().map(|e| e.id()).collect();
    assert_eq!(ids, [ea.id(), eb.id()]);
    a.delete().await.unwrap();
    b.delete().await.unwrap();
    let end = w.snapshot().await;
    assert_eq!(end.records, empty.records);
    assert_eq!(end.driver, empty.driver);
    assert_eq!(end.ipam, empty.ipam);

    // An endpoint deleted meanwhile (a racing disconnect got there first) is what was wanted.
    let a = w.net("a", "10.102.0.0/24").await;
    let sb = w.ctl.new_sandbox("d", []).await.unwrap();
    let first = a.connect("d1", &sb, ep_opts(), []).await.unwrap();
    let second = a.connect("d2", &sb, ep_opts(), []).await.unwrap();
    let core = crate::state::upgrade(&sb.core_ref()).unwrap();
    let deleted = crate::ops::sandbox_delete::delete_sandbox(core.clone(), sb.inner().clone())
        .await
        .unwrap();
    deleted.kernel.unwrap();
    first.delete().await.unwrap();
    let mut errors = crate::undo::Errors::default();
    let gone = crate::ops::connect::delete_freed(core, deleted.endpoints, &mut errors).await;
    errors.into_result().unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].id, second.id());
}
