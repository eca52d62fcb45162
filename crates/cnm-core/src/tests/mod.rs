//! Core's life cycle without root: the controller on a [`FakeKernel`] and a [`FakeDriver`], with
//! the in-memory store, run by plain `cargo test`.
//!
//! Every test compares [`Snapshot`]s: what the kernel, the driver, the store, IPAM and the
//! controller hold. An operation refused or undone must leave the snapshot as it was.

mod commits;
mod concurrency;
mod conflicts;
mod gateway_network;
mod global;
mod life_cycle;
mod orchestration;
mod overlap;
mod resolve;
mod restart;
mod shutdown;
mod spi;
mod undo;

use std::path::Path;
use std::sync::Arc;

use cnm_ipam::IpamState;

use crate::store::{MemoryStore, Store, Versioned};
use crate::testing::{DriverState, FakeDriver, FakeKernel, KernelState};
use crate::{Controller, ControllerBuilder, CoreError, EndpointOptions, NetworkOptions};

/// The host's resolv.conf in the fake kernel.
const RESOLV: &str = "/fake/etc/resolv.conf";

/// A controller on a fake kernel with one fake driver, `fake`, over an in-memory store.
struct World {
    kernel: Arc<FakeKernel>,
    driver: Arc<FakeDriver>,
    store: Arc<MemoryStore>,
    ctl: Controller,
    run: tempfile::TempDir,
}

/// Everything a test can compare.
#[derive(Debug, PartialEq)]
struct Snapshot {
    kernel: KernelState,
    driver: DriverState,
    records: Vec<(String, Versioned<Vec<u8>>)>,
    ipam: Option<IpamState>,
    objects: Vec<String>,
}

impl Snapshot {
    /// The same with every record's version left out: an operation undone after its commit
    /// (a join's records are committed while its kernel work runs) writes its records back
    /// as they were, at a newer version.
    fn unversioned(mut self) -> Snapshot {
        for (_, v) in &mut self.records {
            v.version = 0;
        }
        self
    }
}

impl World {
    async fn new() -> World {
        Self::with_driver(|kernel| FakeDriver::new("fake", Some(kernel))).await
    }

    async fn with_driver(make: impl FnOnce(Arc<FakeKernel>) -> FakeDriver) -> World {
        let kernel = FakeKernel::new().expect("a fake kernel");
        kernel.put_file(Path::new(RESOLV), "nameserver 192.0.2.53\n");
        let driver = Arc::new(make(kernel.clone()));
        let store = Arc::new(MemoryStore::new());
        let run = tempfile::tempdir().expect("a run dir");
        let ctl = builder(&kernel, &driver, &store, run.path())
            .build()
            .await
            .expect("a controller on the fake kernel");
        World {
            kernel,
            driver,
            store,
            ctl,
            run,
        }
    }

    /// A second controller on the same kernel, store and directories: a restart.
    async fn restart(&mut self) -> Result<(), CoreError> {
        self.ctl.shutdown().await?;
        self.ctl = builder(&self.kernel, &self.driver, &self.store, self.run.path())
            .build()
            .await?;
        Ok(())
    }

    async fn snapshot(&self) -> Snapshot {
        let mut objects = Vec::new();
        for net in self.ctl.networks() {
            objects.push(format!("network {}", net.name()));
            for ep in net.endpoints() {
                objects.push(format!(
                    "endpoint {}/{} {:?} {:?} in {:?}",
                    net.name(),
                    ep.name(),
                    ep.ipv4(),
                    ep.mac(),
                    ep.sandbox_id()
                ));
            }
        }
        for sb in self.ctl.sandboxes() {
            let eps: Vec<String> = sb
                .endpoints()
                .into_iter()
                .map(|(e, i)| format!("{}:{i:?}", e.name()))
                .collect();
            objects.push(format!(
                "sandbox {} {eps:?} gw {:?}",
                sb.container_id(),
                sb.gateway_endpoint().map(|e| e.name().to_owned())
            ));
        }
        Snapshot {
            kernel: self.kernel.state(),
            driver: self.driver.state(),
            records: self.store.list("").await.expect("store list"),
            ipam: self.ctl.ipam().expect("not shut down").snapshot().await,
            objects,
        }
    }

    /// A network of the fake driver on `subnet`.
    async fn net(&self, name: &str, subnet: &str) -> crate::Network {
        self.ctl
            .new_network(
                "fake",
                name,
                NetworkOptions::default().subnet(subnet.parse().expect("a subnet")),
            )
            .await
            .expect("network created")
    }

    /// Disarms pending failures (a step the operation never reached).
    fn disarm(&self) {
        self.kernel.faults().disarm();
        self.driver.faults().disarm();
    }
}

fn builder(
    kernel: &Arc<FakeKernel>,
    driver: &Arc<FakeDriver>,
    store: &Arc<MemoryStore>,
    run: &Path,
) -> ControllerBuilder {
    let d = driver.clone();
    Controller::builder()
        .kernel(kernel.clone())
        .store(store.clone())
        .run_dir(run.join("run"))
        .state_dir(run.join("state"))
        .resolv_conf(RESOLV)
        .builtin_drivers(false)
        .driver("fake", move |_| Ok(d))
}

fn ep_opts() -> EndpointOptions {
    EndpointOptions::default()
}
