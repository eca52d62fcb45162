//! Shutdown: the controller lets go of its store, drivers and objects; every later use is a
//! typed `Shutdown`; a handle never keeps a controller alive.

use std::sync::Arc;

use cnm_types::ErrorKind;

use super::{World, ep_opts};
use crate::CoreError;
use crate::testing::DriverStep;

#[tokio::test]
async fn shutdown_releases_the_store_and_the_drivers_and_refuses_later_use() {
    let w = World::new().await;
    let net = w.net("n", "10.95.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let clone = w.ctl.clone();
    assert!(Arc::strong_count(&w.store) > 1);

    w.ctl.shutdown().await.unwrap();
    assert_eq!(
        Arc::strong_count(&w.store),
        1,
        "the controller let go of the store (and with it a state-dir lock)"
    );
    assert_eq!(
        Arc::strong_count(&w.driver),
        1,
        "and of its drivers, the handles still held notwithstanding"
    );
    assert_eq!(w.driver.faults().calls()[&DriverStep::Shutdown], 1);

    for e in [
        ep.leave("c").await.unwrap_err(),
        sb.delete().await.unwrap_err(),
        net.create_endpoint("f", ep_opts()).await.unwrap_err(),
        clone.network("n").unwrap_err(),
        clone
            .new_network("fake", "m", Default::default())
            .await
            .unwrap_err(),
        clone.store().unwrap_err(),
    ] {
        assert!(matches!(e, CoreError::Shutdown), "{e}");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
    // The getters answer with what the objects last were.
    assert_eq!(ep.name(), "e");
    assert_eq!(sb.container_id(), "c");
    assert!(clone.networks().is_empty() && clone.drivers().is_empty());
    // A second shutdown does nothing.
    clone.shutdown().await.unwrap();
    // Nothing was torn down: the kernel keeps the sandbox for the next controller.
    assert!(w.kernel.state().namespaces.contains_key(sb.key()));
}

#[tokio::test]
async fn a_handle_does_not_keep_the_controller_alive() {
    let World {
        ctl,
        store,
        driver,
        kernel: _kernel,
        run: _run,
    } = World::new().await;
    let net = ctl
        .new_network(
            "fake",
            "n",
            crate::NetworkOptions::default().subnet("10.96.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    drop(ctl);
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "dropping the controller released the store"
    );
    assert_eq!(Arc::strong_count(&driver), 1);
    assert!(matches!(
        ep.delete().await.unwrap_err(),
        CoreError::Shutdown
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_waits_for_operations_in_flight() {
    let w = Arc::new(World::new().await);
    let net = w.net("n", "10.97.0.0/24").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let net = net.clone();
        tasks.push(tokio::spawn(async move {
            let ep = net.create_endpoint(&format!("e{i}"), ep_opts()).await?;
            ep.join(&format!("c{i}"), []).await?;
            Ok::<_, CoreError>(())
        }));
    }
    w.ctl.shutdown().await.unwrap();
    // Every operation either ran to the end before the shutdown returned, or was refused
    // before it started: the store holds only whole objects.
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) | Err(CoreError::Shutdown) => {}
            Err(e) => panic!("an operation was cut: {e}"),
        }
    }
    let records = crate::store::Store::list(w.store.as_ref(), "endpoint/")
        .await
        .unwrap();
    let sandboxes = crate::store::Store::list(w.store.as_ref(), "sandbox/")
        .await
        .unwrap();
    assert!(sandboxes.len() <= records.len());
    assert_eq!(Arc::strong_count(&w.store), 1);
}
