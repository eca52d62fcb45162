//! [`Core`]: what one controller owns (drivers, IPAM, the store, the kernel, every object), the
//! lookups operations share, and the gate that lets [`Controller::shutdown`](crate::Controller::shutdown)
//! wait for operations in flight.
//!
//! The public handles ([`crate::Network`], …) hold the core weakly: a handle never keeps a
//! controller (its store, its state-dir lock, its drivers' tasks) alive.

use cnm_types::FailedTo;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use cnm_sandbox::ResolvConf;
use dashmap::DashMap;
use ipnet::IpNet;

use cnm_ipam::{AddressRequest, PoolId};

use crate::CoreError;
use crate::cluster::Cluster;
use crate::host::{self, HostNetwork};
use crate::ipam::Ipam;
use crate::kernel::Kernel;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::model::sandbox::SandboxInner;
use crate::options::PoolConfig;
use crate::resolve::DriverResolver;
use crate::spi::{Driver, DriverContext};
use crate::store::Store;
use crate::sync::{lock, read, write};

/// One container's sandbox slot: `None` until its sandbox exists.
pub(crate) type ContainerSlot = Arc<tokio::sync::Mutex<Option<Arc<SandboxInner>>>>;

/// Everything one controller owns.
pub(crate) struct Core {
    pub(crate) kernel: Arc<dyn Kernel>,
    pub(crate) run_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) resolv_conf: PathBuf,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ipam: Arc<dyn Ipam>,
    /// What drivers are built with (for drivers registered while running).
    pub(crate) driver_context: DriverContext,
    drivers: RwLock<BTreeMap<String, Arc<dyn Driver>>>,
    /// Finds drivers the controller does not have, by name (plugins).
    pub(crate) resolver: Option<Arc<dyn DriverResolver>>,
    /// IPAM drivers besides `ipam`, by name, found by `ipam_resolver` (plugins).
    named_ipams: RwLock<BTreeMap<String, Arc<dyn Ipam>>>,
    /// Finds IPAM drivers the controller does not have, by name.
    pub(crate) ipam_resolver: Option<Arc<dyn crate::ipam::IpamResolver>>,
    /// Networks by id.
    pub(crate) networks: DashMap<String, Arc<NetworkInner>>,
    /// Network name → id; `None` while the network is being created (the name is reserved).
    pub(crate) network_names: DashMap<String, Option<String>>,
    /// Singleton driver → the name of its one network.
    pub(crate) singletons: DashMap<String, String>,
    /// Endpoints by id (their networks find them by name, weakly).
    pub(crate) endpoints: DashMap<String, Arc<EndpointInner>>,
    /// Sandboxes by id.
    pub(crate) sandboxes: DashMap<String, Arc<SandboxInner>>,
    /// Container id → its sandbox slot.
    pub(crate) containers: DashMap<String, ContainerSlot>,
    /// Operations in flight, and whether new ones may start.
    pub(crate) gate: Arc<Gate>,
    /// The cluster store's side, once the controller has one (global-scope networks): set at
    /// build, or later by [`crate::Controller::attach_cluster_store`] when the store was not
    /// reachable at start. Read through [`Core::cluster`].
    pub(crate) cluster: OnceLock<Cluster>,
    /// The cluster store this controller waits for (its address, as the error names it), when
    /// it was configured but not reachable at build.
    pub(crate) cluster_awaited: Option<String>,
    /// Networks whose driver was missing at reload, by driver name: their names, pools and
    /// addresses stay reserved until the driver registers and they are restored.
    pub(crate) pending: Waiting<PendingNetwork>,
    /// Local networks whose IPAM driver (found by name: a plugin) was missing at reload, by IPAM
    /// name: their names stay reserved, and their links are kept by their driver's sweep, until
    /// the IPAM is found and they are restored ([`crate::Controller::restore_waiting`]).
    pub(crate) pending_ipam: Waiting<WaitingForIpam>,
    /// The embedded DNS resolver, when on (see [`crate::dns`]).
    pub(crate) dns: crate::dns::Dns,
    /// The network that gives overlay-like endpoints a way out, if configured.
    pub(crate) gateway_network: Option<crate::ops::gateway_network::GatewayNetwork>,
    /// The names of global networks' endpoints, shared with the other hosts.
    pub(crate) remote_names: crate::remote_names::RemoteNames,
}

/// A recorded network whose driver was not there at reload (a plugin that registers later).
#[derive(Clone)]
pub(crate) struct PendingNetwork {
    pub(crate) record: crate::store::Versioned<crate::record::NetworkRecord>,
    pub(crate) pools_v4: Vec<crate::model::network::NetworkPool>,
    pub(crate) pools_v6: Vec<crate::model::network::NetworkPool>,
    pub(crate) endpoints: Vec<crate::store::Versioned<crate::record::EndpointRecord>>,
}

/// A recorded network whose IPAM driver was not there at reload: nothing of it reserved yet
/// (its pools and addresses are the missing IPAM's).
pub(crate) struct WaitingForIpam {
    pub(crate) record: crate::store::Versioned<crate::record::NetworkRecord>,
    pub(crate) endpoints: Vec<crate::store::Versioned<crate::record::EndpointRecord>>,
}

/// Recorded networks that wait for what they are named after (their driver, or their IPAM
/// driver), by that name, in the order they came to wait. A restore takes a name's networks
/// and adds back those it could not restore.
pub(crate) struct Waiting<T>(Mutex<BTreeMap<String, Vec<T>>>);

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }
}

impl<T> Waiting<T> {
    /// The names waited for, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }

    /// Whether networks wait for `name`.
    pub(crate) fn waits_for(&self, name: &str) -> bool {
        lock(&self.0).contains_key(name)
    }

    /// Adds networks to those waiting for `name`, after them.
    pub(crate) fn add(&self, name: &str, networks: impl IntoIterator<Item = T>) {
        lock(&self.0)
            .entry(name.to_owned())
            .or_default()
            .extend(networks);
    }

    /// Takes every network waiting for `name` (none wait for it afterwards).
    pub(crate) fn take(&self, name: &str) -> Vec<T> {
        lock(&self.0).remove(name).unwrap_or_default()
    }

    /// Visits every waiting network with the name it waits for.
    pub(crate) fn each(&self, mut f: impl FnMut(&str, &T)) {
        for (name, networks) in lock(&self.0).iter() {
            for n in networks {
                f(name, n);
            }
        }
    }

    /// Forgets every waiting network.
    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // [firewall] A driver handle kept elsewhere would otherwise keep the watcher restoring a
        // stale model after its controller is gone.
        self.driver_context.firewall().stop_watching();
        if let Some(c) = self.cluster.get() {
            c.stop();
        }
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("drivers", &self.driver_names())
            .field("networks", &self.networks.len())
            .field("sandboxes", &self.sandboxes.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core with no object yet; its directories are the drivers' context's.
    pub(crate) fn new(
        kernel: Arc<dyn Kernel>,
        driver_context: DriverContext,
        resolv_conf: PathBuf,
        store: Arc<dyn Store>,
        ipam: Arc<dyn Ipam>,
        drivers: BTreeMap<String, Arc<dyn Driver>>,
        cluster: Option<Cluster>,
    ) -> Self {
        let cluster_slot = OnceLock::new();
        if let Some(c) = cluster {
            // A fresh lock: cannot be taken.
            let _ = cluster_slot.set(c);
        }
        Self {
            kernel,
            run_dir: driver_context.run_dir.clone(),
            state_dir: driver_context.state_dir.clone(),
            resolv_conf,
            store,
            ipam,
            driver_context,
            drivers: RwLock::new(drivers),
            resolver: None,
            named_ipams: RwLock::new(BTreeMap::new()),
            ipam_resolver: None,
            networks: DashMap::new(),
            network_names: DashMap::new(),
            singletons: DashMap::new(),
            endpoints: DashMap::new(),
            sandboxes: DashMap::new(),
            containers: DashMap::new(),
            gate: Arc::new(Gate::default()),
            cluster: cluster_slot,
            cluster_awaited: None,
            pending: Waiting::default(),
            pending_ipam: Waiting::default(),
            dns: crate::dns::Dns::default(),
            gateway_network: None,
            remote_names: crate::remote_names::RemoteNames::default(),
        }
    }

    /// The cluster side, if the controller has one yet.
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// The cluster side, or the typed error a global network without a cluster store gets:
    /// [`CoreError::ClusterStoreUnreachable`] while a configured store is not reached yet,
    /// [`CoreError::NoClusterStore`] when none is configured.
    pub(crate) fn cluster_for(&self, network: &str, driver: &str) -> Result<&Cluster, CoreError> {
        self.cluster().ok_or_else(|| match &self.cluster_awaited {
            Some(store) => CoreError::ClusterStoreUnreachable {
                network: network.to_owned(),
                driver: driver.to_owned(),
                store: store.clone(),
            },
            None => CoreError::NoClusterStore {
                network: network.to_owned(),
                driver: driver.to_owned(),
            },
        })
    }

    /// Allocates an address of a network: from IPAM for a local network, claimed in the
    /// cluster store for a global one.
    pub(crate) async fn request_address(
        &self,
        net: &NetworkInner,
        pool: &PoolId,
        req: AddressRequest,
        op: &'static str,
        object: &str,
    ) -> Result<IpNet, CoreError> {
        if net.is_global() {
            let cluster = self.cluster_for(&net.name, &net.driver_name)?;
            return cluster
                .request_address(&net.id, &net.name, pool, req, object)
                .await;
        }
        self.ipam_of(net)?
            .request_address(pool, req)
            .await
            .map_err(|e| CoreError::failed(op, object, e))
    }

    /// Releases an address of a network (see [`Core::request_address`]).
    pub(crate) async fn release_address(
        &self,
        net: &NetworkInner,
        pool: &PoolId,
        addr: IpAddr,
    ) -> Result<(), CoreError> {
        if net.is_global() {
            let cluster = self.cluster_for(&net.name, &net.driver_name)?;
            return cluster.release_address(&net.id, pool, addr).await;
        }
        self.ipam_of(net)?
            .release_address(pool, addr)
            .await
            .map_err(|e| CoreError::failed("release address", addr.to_string(), e))
    }

    /// The IPAM driver called `name` that the controller has: its own (`None`, `default` or its
    /// name) or one found by name before.
    pub(crate) fn ipam_named(&self, name: Option<&str>) -> Result<Arc<dyn Ipam>, CoreError> {
        match name {
            None | Some("default") => Ok(self.ipam.clone()),
            Some(n) if n == self.ipam.name() => Ok(self.ipam.clone()),
            Some(n) => read(&self.named_ipams)
                .get(n)
                .cloned()
                .ok_or_else(|| CoreError::IpamDriverNotFound(n.to_owned())),
        }
    }

    /// The IPAM driver of a network.
    pub(crate) fn ipam_of(&self, net: &NetworkInner) -> Result<Arc<dyn Ipam>, CoreError> {
        self.ipam_named(net.options.ipam_driver.as_deref())
    }

    /// The IPAM driver called `name`; when the controller has none, the one the IPAM resolver
    /// finds by that name, kept for good.
    pub(crate) async fn find_ipam(&self, name: Option<&str>) -> Result<Arc<dyn Ipam>, CoreError> {
        let not_found = match self.ipam_named(name) {
            Ok(ipam) => return Ok(ipam),
            Err(e) => e,
        };
        let (Some(resolver), Some(name)) = (&self.ipam_resolver, name) else {
            return Err(not_found);
        };
        let found = resolver
            .resolve(name)
            .await
            .map_err(|e| CoreError::failed("find ipam driver", name, e))?;
        let mut named = write(&self.named_ipams);
        // Found by a concurrent lookup first: that one is kept.
        let ipam = named.entry(name.to_owned()).or_insert(found).clone();
        tracing::info!(ipam = name, "ipam driver found by name");
        Ok(ipam)
    }

    /// The driver called `name`.
    pub(crate) fn driver(&self, name: &str) -> Result<Arc<dyn Driver>, CoreError> {
        read(&self.drivers)
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::DriverNotFound(name.to_owned()))
    }

    /// The driver called `name`; when the controller has none, the one the resolver finds by
    /// that name, registered for good.
    pub(crate) async fn find_driver(&self, name: &str) -> Result<Arc<dyn Driver>, CoreError> {
        let not_found = match self.driver(name) {
            Ok(driver) => return Ok(driver),
            Err(e) => e,
        };
        let Some(resolver) = &self.resolver else {
            return Err(not_found);
        };
        let driver = resolver
            .resolve(name, &self.driver_context)
            .await
            .map_err(|e| CoreError::failed("find driver", name, e))?;
        match self.add_driver(name.to_owned(), driver.clone()) {
            Ok(()) => {
                tracing::info!(driver = name, "driver found by name and registered");
                Ok(driver)
            }
            // Found by a concurrent lookup first: its driver is the one.
            Err(CoreError::DriverExists(_)) => self.driver(name),
            Err(e) => Err(e),
        }
    }

    /// The driver of a network.
    pub(crate) fn driver_of(&self, net: &NetworkInner) -> Result<Arc<dyn Driver>, CoreError> {
        self.driver(&net.driver_name)
    }

    /// Every driver, by name.
    pub(crate) fn drivers(&self) -> Vec<(String, Arc<dyn Driver>)> {
        read(&self.drivers)
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect()
    }

    pub(crate) fn driver_names(&self) -> Vec<String> {
        read(&self.drivers).keys().cloned().collect()
    }

    /// Adds a driver; refused when one of that name exists.
    pub(crate) fn add_driver(
        &self,
        name: String,
        driver: Arc<dyn Driver>,
    ) -> Result<(), CoreError> {
        let mut drivers = write(&self.drivers);
        if drivers.contains_key(&name) {
            return Err(CoreError::DriverExists(name));
        }
        drivers.insert(name, driver);
        Ok(())
    }

    /// Forgets every driver and object (at shutdown: the drivers go with the last reference).
    pub(crate) fn release(&self) {
        write(&self.drivers).clear();
        self.containers.clear();
        self.sandboxes.clear();
        self.endpoints.clear();
        self.networks.clear();
        self.network_names.clear();
        self.singletons.clear();
        self.remote_names.release();
        self.dns.release();
        // [firewall] Nobody heals the rules once their controller is gone; the tables stay for
        // the next controller to adopt.
        self.driver_context.firewall().stop_watching();
        if let Some(c) = self.cluster.get() {
            c.stop();
        }
        self.pending.clear();
        self.pending_ipam.clear();
    }

    /// The networks the host is on (addresses and routes of its namespace), leaving out the
    /// bridges of this controller's networks and catch-all routes (see [`crate::host`]).
    pub(crate) async fn host_networks(&self) -> Result<Vec<HostNetwork>, CoreError> {
        let view = self.kernel.host_view().await.map_err(|e| {
            CoreError::failed(
                "list links, addresses and routes of",
                "the host namespace",
                e,
            )
        })?;
        Ok(host::collect(
            &view.links,
            &view.addresses,
            &view.routes,
            |link| {
                link.alias
                    .as_deref()
                    .and_then(|a| a.strip_prefix(host::ALIAS_PREFIX))
                    .is_some_and(|id| self.networks.contains_key(id))
            },
        ))
    }

    /// What default pools must avoid: the networks the host is on and its name servers.
    pub(crate) async fn pool_exclusions(&self) -> Result<Vec<IpNet>, CoreError> {
        let mut out: Vec<IpNet> = self
            .host_networks()
            .await?
            .into_iter()
            .map(|h| h.net)
            .collect();
        out.extend(
            self.host_resolv_conf()
                .await?
                .nameservers
                .into_iter()
                .map(IpNet::from),
        );
        Ok(out)
    }

    /// Refuses an explicit subnet that overlaps a network the host is on (see [`crate::host`]),
    /// naming what of the host's it overlaps.
    pub(crate) async fn check_host_overlap(&self, pools: &[PoolConfig]) -> Result<(), CoreError> {
        if pools.is_empty() {
            return Ok(());
        }
        let host = self.host_networks().await?;
        for pool in pools {
            if let Some(h) = host::overlap(&pool.subnet(), &host) {
                return Err(CoreError::HostOverlap {
                    subnet: pool.subnet(),
                    host: h.description.clone(),
                });
            }
        }
        Ok(())
    }

    /// The host's resolv.conf as configured (empty when the file does not exist).
    pub(crate) async fn host_resolv_conf(&self) -> Result<ResolvConf, CoreError> {
        self.kernel
            .read_resolv_conf(&self.resolv_conf)
            .await
            .map_err(|e| CoreError::failed("read", self.resolv_conf.display().to_string(), e))
    }

    /// The sandbox of a container: O(1) through its slot, unless the slot is busy (a create or
    /// delete of it in flight), then by a scan that sees the committed state.
    pub(crate) fn sandbox_of(&self, cid: &str) -> Option<Arc<SandboxInner>> {
        let slot = self.containers.get(cid).map(|s| s.value().clone())?;
        if let Ok(guard) = slot.try_lock() {
            return guard.clone();
        }
        self.sandboxes
            .iter()
            .find(|s| s.container_id == cid)
            .map(|s| s.value().clone())
    }

    /// The sandbox of a container, or `NotFound`.
    pub(crate) fn require_sandbox_of(&self, cid: &str) -> Result<Arc<SandboxInner>, CoreError> {
        self.sandbox_of(cid).ok_or_else(|| CoreError::NotFound {
            what: "sandbox",
            key: cid.to_owned(),
        })
    }
}

/// Counts operations in flight; once closed, refuses new ones with
/// [`CoreError::Shutdown`] and lets the closer wait until the last one is done.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    idle: tokio::sync::Notify,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    active: usize,
}

/// An operation's pass through the [`Gate`]; dropping it ends the operation.
pub(crate) struct Pass(Arc<Gate>);

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        lock(&self.state)
    }

    /// Lets an operation in, unless the gate is closed.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<Pass, CoreError> {
        let mut st = self.lock();
        if st.closed {
            return Err(CoreError::Shutdown);
        }
        st.active += 1;
        Ok(Pass(self.clone()))
    }

    /// Lets no more operations in and waits until those in flight are done.
    pub(crate) async fn close(&self) {
        self.lock().closed = true;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a wake-up between the two is not lost.
            idle.as_mut().enable();
            if self.lock().active == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.active -= 1;
        if st.active == 0 && st.closed {
            self.0.idle.notify_waiters();
        }
    }
}

/// A weak reference to a core, as handles hold it.
pub(crate) type CoreRef = Weak<Core>;

/// The core behind a handle, or [`CoreError::Shutdown`] once the controller is gone.
pub(crate) fn upgrade(core: &CoreRef) -> Result<Arc<Core>, CoreError> {
    core.upgrade().ok_or(CoreError::Shutdown)
}
