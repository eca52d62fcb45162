//! The records committed while the kernel works (a sandbox's while its namespace is made, a
//! join's while its default route, ports, hosts file and DNS are done): a failure of the kernel work after the commit
//! leaves no record of the operation, and a record whose kernel work a crash cut short is
//! dropped (sandbox) or finished (join) by the restart.

use super::{World, ep_opts};
use crate::store::Store as _;
use crate::testing::{DriverStep, KernelStep};

/// A join that failed after its commit: the records say what they said before, at a newer
/// version (the write-back is a commit of its own), and the kernel, the driver, IPAM and the
/// objects are as they were.
fn assert_written_back(before: super::Snapshot, after: super::Snapshot) {
    let newest = |s: &super::Snapshot| s.records.iter().map(|(_, v)| v.version).max();
    assert!(
        newest(&after) > newest(&before),
        "the records were committed, then written back"
    );
    assert_eq!(after.unversioned(), before.unversioned(), "nothing changed");
}

/// The join's records are committed while its hosts file is written: when the write fails,
/// a second commit writes back the records as they were, the endpoint is free again, and the
/// versions held in memory follow (the next join commits without a conflict).
#[tokio::test]
async fn a_join_whose_hosts_file_fails_after_its_commit_leaves_no_record() {
    let mut w = World::new().await;
    let net = w.net("a", "10.64.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let before = w.snapshot().await;

    w.kernel.faults().fail_next(KernelStep::WriteHosts);
    let e = ep.join_sandbox(&sb, []).await.unwrap_err();
    assert!(e.to_string().contains("on purpose"), "{e}");
    assert!(
        !w.kernel.faults().pending(),
        "the hosts file was written during the join"
    );
    assert_written_back(before, w.snapshot().await);
    assert_eq!(ep.sandbox_id(), None);

    // The versions in memory follow the written-back records: the join goes through now, and
    // a restart finds it.
    ep.join_sandbox(&sb, []).await.unwrap();
    w.restart().await.unwrap();
    let ep = w.ctl.network("a").unwrap().endpoint("e").unwrap();
    let sb = w.ctl.sandbox_by_container_id("c").unwrap();
    assert_eq!(ep.sandbox_id().as_deref(), Some(sb.id()));
}

/// A sandbox's first gateway endpoint whose ports name their host ports has its join's records
/// committed while the default route and the ports are made: when publishing fails after the
/// commit, a second commit writes the records back, and nothing of the join is left.
#[tokio::test]
async fn a_join_whose_ports_fail_after_its_commit_leaves_no_record() {
    let mut w = World::new().await;
    let net = w.net("a", "10.64.0.0/24").await;
    let binding = "18080:80/tcp".parse().unwrap();
    let ep = net
        .create_endpoint("e", ep_opts().publish(binding))
        .await
        .unwrap();
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let before = w.snapshot().await;

    w.driver.faults().fail_next(DriverStep::Program);
    let e = ep.join_sandbox(&sb, []).await.unwrap_err();
    assert!(e.to_string().contains("on purpose"), "{e}");
    assert!(
        !w.driver.faults().pending(),
        "the ports were published during the join"
    );
    assert_written_back(before, w.snapshot().await);
    assert_eq!(ep.sandbox_id(), None);

    // The join goes through now, with its port, and a restart publishes it again.
    ep.join_sandbox(&sb, []).await.unwrap();
    w.restart().await.unwrap();
    let sb = w.ctl.sandbox_by_container_id("c").unwrap();
    let ports: Vec<String> = sb.published_ports().iter().map(|b| b.to_string()).collect();
    assert_eq!(ports, ["18080:80/tcp"]);
    assert_eq!(
        w.driver.state().published.values().flatten().count(),
        1,
        "the driver publishes the port again"
    );
}

/// A crash after a sandbox's record was committed and before its hosts file (written last)
/// was: the restart drops the record and sweeps the namespace; the container can have a
/// sandbox again.
#[tokio::test]
async fn a_sandbox_recorded_without_its_hosts_file_is_dropped_on_restart() {
    let mut w = World::new().await;
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    let (id, key) = (sb.id().to_owned(), sb.key().to_owned());
    let hosts = w.run.path().join("run/sandboxes").join(&id).join("hosts");
    assert!(
        w.kernel.remove_file(&hosts),
        "the hosts file is at {hosts:?}"
    );
    drop(sb);

    w.restart().await.unwrap();
    assert!(w.ctl.sandbox_by_container_id("c").is_err(), "dropped");
    assert!(
        w.store
            .list(&crate::record::sandbox_key(&id))
            .await
            .unwrap()
            .is_empty(),
        "its record is gone"
    );
    assert!(
        !w.kernel.state().namespaces.contains_key(&key),
        "its namespace is swept"
    );
    w.ctl.new_sandbox("c", []).await.unwrap();

    // A sandbox with its hosts file is kept as ever.
    w.restart().await.unwrap();
    assert!(w.ctl.sandbox_by_container_id("c").is_ok());
}
