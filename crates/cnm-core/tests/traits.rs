//! Downstream code written against the card's traits ([`ControllerApi`], [`NetworkApi`],
//! [`EndpointApi`], [`SandboxApi`]) as a container runtime depending on cnm would write it, run
//! twice: against a fake of its own (what the runtime's unit tests do), and against the real
//! controller on core's fake kernel. Neither needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cnm_core::cnm_types::MacAddress;
use cnm_core::ipnet::{Ipv4Net, Ipv6Net};
use cnm_core::store::MemoryStore;
use cnm_core::testing::{FakeDriver, FakeKernel};
use cnm_core::{
    Controller, ControllerApi, CoreError, EndpointApi, EndpointOptions, JoinOption, NetworkApi,
    NetworkOptions, SandboxApi, Scope,
};

// ---- The downstream code ------------------------------------------------------------------

/// Runs a container's networking: one endpoint per network, all joined to its sandbox; returns
/// the sandbox key (the path a runtime enters before it execs the container).
async fn start(
    ctl: &dyn ControllerApi,
    container: &str,
    networks: &[&str],
) -> Result<PathBuf, CoreError> {
    let mut key = None;
    for name in networks {
        let net = ctl.network(name)?;
        let ep = net
            .create_endpoint(&format!("{container}-{name}"), EndpointOptions::default())
            .await?;
        let sandbox = ep
            .join(container, vec![JoinOption::hostname(container)])
            .await?;
        key = Some(sandbox.key().to_owned());
    }
    key.ok_or_else(|| CoreError::NotFound {
        what: "network",
        key: "(none given)".into(),
    })
}

/// Stops it: every endpoint leaves and goes, then the sandbox.
async fn stop(ctl: &dyn ControllerApi, container: &str) -> Result<usize, CoreError> {
    let sandbox = ctl.sandbox_by_container_id(container)?;
    let endpoints = sandbox.endpoints();
    for ep in &endpoints {
        ep.leave(container).await?;
        ep.delete().await?;
    }
    sandbox.delete().await?;
    Ok(endpoints.len())
}

// ---- The runtime's own fake ---------------------------------------------------------------

#[derive(Default)]
struct World {
    /// endpoint name → (network name, joined container)
    endpoints: BTreeMap<String, (String, Option<String>)>,
    sandboxes: BTreeMap<String, PathBuf>,
}

#[derive(Clone, Default)]
struct FakeCtl(Arc<Mutex<World>>);

struct FakeNet {
    world: FakeCtl,
    name: String,
}

struct FakeEp {
    world: FakeCtl,
    name: String,
    network: String,
}

struct FakeSb {
    world: FakeCtl,
    container: String,
    key: PathBuf,
}

impl FakeCtl {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn sandbox(&self, container: &str) -> Arc<dyn SandboxApi> {
        let key = self
            .world()
            .sandboxes
            .entry(container.to_owned())
            .or_insert_with(|| PathBuf::from(format!("/fake/netns/{container}")))
            .clone();
        Arc::new(FakeSb {
            world: self.clone(),
            container: container.to_owned(),
            key,
        })
    }
}

#[async_trait]
impl ControllerApi for FakeCtl {
    async fn new_network(
        &self,
        _driver: &str,
        name: &str,
        _options: NetworkOptions,
    ) -> Result<Arc<dyn NetworkApi>, CoreError> {
        self.network(name)
    }

    fn network(&self, key: &str) -> Result<Arc<dyn NetworkApi>, CoreError> {
        Ok(Arc::new(FakeNet {
            world: self.clone(),
            name: key.to_owned(),
        }))
    }

    fn networks(&self) -> Vec<Arc<dyn NetworkApi>> {
        Vec::new()
    }

    async fn new_sandbox(
        &self,
        container_id: &str,
        _options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        Ok(self.sandbox(container_id))
    }

    fn sandbox_by_container_id(
        &self,
        container_id: &str,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        if !self.world().sandboxes.contains_key(container_id) {
            return Err(CoreError::NotFound {
                what: "sandbox",
                key: container_id.into(),
            });
        }
        Ok(self.sandbox(container_id))
    }
}

#[async_trait]
impl NetworkApi for FakeNet {
    fn id(&self) -> &str {
        &self.name
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn driver(&self) -> &str {
        "fake"
    }
    fn scope(&self) -> Scope {
        Scope::Local
    }
    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>> {
        Vec::new()
    }
    fn endpoint(&self, key: &str) -> Result<Arc<dyn EndpointApi>, CoreError> {
        Err(CoreError::NotFound {
            what: "endpoint",
            key: key.into(),
        })
    }
    async fn create_endpoint(
        &self,
        name: &str,
        _options: EndpointOptions,
    ) -> Result<Arc<dyn EndpointApi>, CoreError> {
        let mut w = self.world.world();
        if w.endpoints.contains_key(name) {
            return Err(CoreError::EndpointExists {
                network: self.name.clone(),
                name: name.into(),
            });
        }
        w.endpoints
            .insert(name.to_owned(), (self.name.clone(), None));
        Ok(Arc::new(FakeEp {
            world: self.world.clone(),
            name: name.to_owned(),
            network: self.name.clone(),
        }))
    }
    async fn delete(&self) -> Result<(), CoreError> {
        Ok(())
    }
}

#[async_trait]
impl EndpointApi for FakeEp {
    fn id(&self) -> &str {
        &self.name
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn network(&self) -> Arc<dyn NetworkApi> {
        Arc::new(FakeNet {
            world: self.world.clone(),
            name: self.network.clone(),
        })
    }
    fn ipv4(&self) -> Option<Ipv4Net> {
        None
    }
    fn ipv6(&self) -> Option<Ipv6Net> {
        None
    }
    fn mac(&self) -> Option<MacAddress> {
        None
    }
    fn sandbox_id(&self) -> Option<String> {
        self.world.world().endpoints[&self.name].1.clone()
    }
    async fn join(
        &self,
        container_id: &str,
        _options: Vec<JoinOption>,
    ) -> Result<Arc<dyn SandboxApi>, CoreError> {
        let sandbox = self.world.sandbox(container_id);
        self.world
            .world()
            .endpoints
            .get_mut(&self.name)
            .expect("created")
            .1 = Some(container_id.to_owned());
        Ok(sandbox)
    }
    async fn leave(&self, _container_id: &str) -> Result<(), CoreError> {
        self.world
            .world()
            .endpoints
            .get_mut(&self.name)
            .expect("created")
            .1 = None;
        Ok(())
    }
    async fn delete(&self) -> Result<(), CoreError> {
        self.world.world().endpoints.remove(&self.name);
        Ok(())
    }
}

#[async_trait]
impl SandboxApi for FakeSb {
    fn id(&self) -> &str {
        &self.container
    }
    fn container_id(&self) -> &str {
        &self.container
    }
    fn key(&self) -> &Path {
        &self.key
    }
    fn endpoints(&self) -> Vec<Arc<dyn EndpointApi>> {
        let w = self.world.world();
        w.endpoints
            .iter()
            .filter(|(_, (_, c))| c.as_deref() == Some(&self.container))
            .map(|(name, (net, _))| {
                Arc::new(FakeEp {
                    world: self.world.clone(),
                    name: name.clone(),
                    network: net.clone(),
                }) as Arc<dyn EndpointApi>
            })
            .collect()
    }
    async fn delete(&self) -> Result<(), CoreError> {
        self.world.world().sandboxes.remove(&self.container);
        Ok(())
    }
}

// ---- The tests ----------------------------------------------------------------------------

#[tokio::test]
async fn downstream_code_runs_against_its_own_fake() {
    let fake = FakeCtl::default();
    let key = start(&fake, "web", &["front", "back"]).await.unwrap();
    assert_eq!(key, Path::new("/fake/netns/web"));
    assert_eq!(fake.world().endpoints.len(), 2);
    assert_eq!(stop(&fake, "web").await.unwrap(), 2);
    assert!(fake.world().endpoints.is_empty() && fake.world().sandboxes.is_empty());
    // The fake refuses what the real one refuses, through the same error type.
    start(&fake, "a", &["front"]).await.unwrap();
    let e = start(&fake, "a", &["front"]).await.unwrap_err();
    assert_eq!(e.kind(), cnm_core::ErrorKind::AlreadyExists);
}

#[tokio::test]
async fn the_same_code_runs_against_the_controller() {
    let kernel = FakeKernel::new().unwrap();
    let driver = Arc::new(FakeDriver::new("fake", Some(kernel.clone())));
    let run = tempfile::tempdir().unwrap();
    let ctl = Controller::builder()
        .kernel(kernel.clone())
        .store(Arc::new(MemoryStore::new()))
        .run_dir(run.path().join("run"))
        .state_dir(run.path().join("state"))
        .resolv_conf(run.path().join("resolv.conf"))
        .builtin_drivers(false)
        .driver("fake", move |_| Ok(driver))
        .build()
        .await
        .unwrap();
    for (name, subnet) in [("front", "10.120.0.0/24"), ("back", "10.121.0.0/24")] {
        ControllerApi::new_network(
            &ctl,
            "fake",
            name,
            NetworkOptions::default().subnet(subnet.parse().unwrap()),
        )
        .await
        .unwrap();
    }
    let key = start(&ctl, "web", &["front", "back"]).await.unwrap();
    assert!(key.starts_with(run.path()), "{}", key.display());
    let sandbox = ctl.sandbox_by_container_id("web").unwrap();
    assert_eq!(sandbox.endpoints().len(), 2);
    assert_eq!(stop(&ctl, "web").await.unwrap(), 2);
    assert!(ctl.sandboxes().is_empty());
    assert!(kernel.state().namespaces.is_empty());
}
