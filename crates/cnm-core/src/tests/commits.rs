//! Each public call of the attach and detach paths costs at most one store commit (one synced
//! write with a durable store), as the `floor-durable` contender models it: three per attach
//! (sandbox, endpoint, join), three per detach (leave, endpoint delete, sandbox delete).
//! Counted on a store that counts its commits, so a call that starts writing twice cannot slip
//! in unnoticed. (A sandbox's and a join's records are committed while their kernel work runs;
//! only when that work then fails is there a second commit, writing the records back: see
//! `tests::overlap`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::async_trait;
use crate::store::{
    Lease, LeaseId, Listing, MemoryStore, Store, StoreError, Txn, Versioned, Watch,
};
use crate::testing::{FakeDriver, FakeKernel};
use crate::{Controller, EndpointOptions, NetworkOptions};

/// The in-memory store, counting every transaction committed through it.
#[derive(Debug, Default)]
struct CountingStore {
    inner: MemoryStore,
    commits: AtomicUsize,
}

impl CountingStore {
    fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Store for CountingStore {
    fn backend(&self) -> &'static str {
        "counting"
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(txn).await
    }
    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix)
    }
    // `put`, `delete` and `put_leased` keep their defaults: one `commit` each, counted above.
    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.inner.list_with_revision(prefix).await
    }
    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        self.inner.watch_from(prefix, after)
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.revoke_lease(lease).await
    }
}

async fn counted_world() -> (Controller, Arc<CountingStore>, tempfile::TempDir) {
    let kernel = FakeKernel::new().expect("a fake kernel");
    kernel.put_file(
        std::path::Path::new(super::RESOLV),
        "nameserver 192.0.2.53\n",
    );
    let driver = Arc::new(FakeDriver::new("fake", Some(kernel.clone())));
    let store = Arc::new(CountingStore::default());
    let run = tempfile::tempdir().expect("a run dir");
    let d = driver.clone();
    let ctl = Controller::builder()
        .kernel(kernel)
        .store(store.clone())
        .run_dir(run.path().join("run"))
        .state_dir(run.path().join("state"))
        .resolv_conf(super::RESOLV)
        .builtin_drivers(false)
        .driver("fake", move |_| Ok(d))
        .build()
        .await
        .expect("a controller on the fake kernel");
    (ctl, store, run)
}

/// Network `net1` of the fake driver on `subnet`.
async fn net1(ctl: &Controller, subnet: &str) -> crate::Network {
    ctl.new_network(
        "fake",
        "net1",
        NetworkOptions::default().subnet(subnet.parse().expect("a subnet")),
    )
    .await
    .expect("network created")
}

#[tokio::test]
async fn attach_and_detach_commit_once_per_public_call() {
    let (ctl, store, _run) = counted_world().await;
    let net = net1(&ctl, "10.60.0.0/24").await;
    // Two rounds: the first attach of a network may differ from the next ones.
    for round in 0..2 {
        let name = format!("c{round}");
        let before = store.commits();
        let sb = ctl.new_sandbox(&name, []).await.expect("sandbox created");
        assert_eq!(store.commits() - before, 1, "sandbox create, round {round}");

        let before = store.commits();
        let binding = format!("{}:80/tcp", 18080 + round)
            .parse()
            .expect("a binding");
        let ep = net
            .create_endpoint(&name, EndpointOptions::default().publish(binding))
            .await
            .expect("endpoint created");
        assert_eq!(
            store.commits() - before,
            1,
            "endpoint create, round {round}"
        );

        let before = store.commits();
        ep.join_sandbox(&sb, []).await.expect("joined");
        assert_eq!(store.commits() - before, 1, "join, round {round}");
        assert_eq!(sb.published_ports().len(), 1, "the port is published");

        let before = store.commits();
        ep.leave_sandbox(&sb).await.expect("left");
        assert_eq!(store.commits() - before, 1, "leave, round {round}");

        let before = store.commits();
        ep.delete().await.expect("endpoint deleted");
        assert_eq!(
            store.commits() - before,
            1,
            "endpoint delete, round {round}"
        );

        let before = store.commits();
        sb.delete().await.expect("sandbox deleted");
        assert_eq!(store.commits() - before, 1, "sandbox delete, round {round}");
    }
}

/// A join whose host port the driver picks (`-p 80`) cannot commit its records before the
/// ports are published (the record holds the port picked): it still commits once, after the
/// switch, with the port the driver chose, and a restart publishes that same port again.
#[tokio::test]
async fn a_join_whose_driver_picks_the_host_port_commits_once_with_that_port() {
    let (ctl, store, _run) = counted_world().await;
    let net = net1(&ctl, "10.61.0.0/24").await;
    let sb = ctl.new_sandbox("c", []).await.expect("sandbox created");
    let binding = "80/tcp".parse().expect("a binding");
    let ep = net
        .create_endpoint("c", EndpointOptions::default().publish(binding))
        .await
        .expect("endpoint created");
    let before = store.commits();
    ep.join_sandbox(&sb, []).await.expect("joined");
    assert_eq!(store.commits() - before, 1, "one commit for the join");
    let published: Vec<String> = sb.published_ports().iter().map(|b| b.to_string()).collect();
    assert_eq!(
        published,
        ["40000:80/tcp"],
        "the port the fake driver picks"
    );
    let record = store
        .get(&crate::record::sandbox_key(sb.id()))
        .await
        .expect("read")
        .expect("the sandbox's record");
    let record: crate::record::SandboxRecord =
        serde_json::from_slice(&record.value).expect("a sandbox record");
    let recorded: Vec<String> = record
        .endpoints
        .iter()
        .flat_map(|j| j.published.iter().map(|b| b.to_string()))
        .collect();
    assert_eq!(
        recorded,
        ["40000:80/tcp"],
        "the record holds the port picked"
    );
}
