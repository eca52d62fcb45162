//! The controller: the root object holding the driver registry, IPAM, the store, and every
//! network, endpoint and sandbox.
//!
//! The lock order is written down once, on [`Controller`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnm_ipam::{AddressRequest, Family, IpamConfig, PoolRequest};
use cnm_sandbox::{IpFamily, NetNs, Netlink, ResolvConf};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use ipnet::IpNet;
use tracing::Instrument as _;

use crate::CoreError;
use crate::host::{self, HostNetwork};
use crate::id;
use crate::ipam::Ipam;
use crate::network::{Network, NetworkInner, NetworkPool};
use crate::options::{JoinOption, JoinOptions, NetworkOptions, PoolConfig};
use crate::record::{self, NetworkRecord};
use crate::sandbox::{self, Sandbox, SandboxInner};
use crate::spi::{Driver, DriverContext, DriverOptions, DriverRegistration, NetworkSpec};
use crate::store::{DefaultStore, Expect, MemoryStore, Store};
use crate::undo::{Errors, Undo};

/// The default run dir (netns bind mounts, sandbox files).
pub const DEFAULT_RUN_DIR: &str = "/run/cnm";
/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cnm";
/// The default resolv.conf source.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Name servers a container gets when the host has none it can reach (Docker's).
pub const FALLBACK_NAMESERVERS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 4, 4)),
];

/// The names of every driver linked into this program, sorted.
pub fn registered_drivers() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<DriverRegistration>
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// Orders registrations by name, refusing duplicates.
fn registry<'a>(
    regs: impl IntoIterator<Item = &'a DriverRegistration>,
) -> Result<BTreeMap<&'static str, &'a DriverRegistration>, CoreError> {
    let mut out = BTreeMap::new();
    for reg in regs {
        if out.insert(reg.name, reg).is_some() {
            return Err(CoreError::DuplicateDriver(reg.name.to_owned()));
        }
    }
    Ok(out)
}

/// Builds a [`Controller`]; see [`Controller::builder`].
#[derive(Debug)]
#[must_use]
pub struct ControllerBuilder {
    host_ns: Option<NetNs>,
    run_dir: PathBuf,
    state_dir: PathBuf,
    resolv_conf: PathBuf,
    store: Option<Arc<dyn Store>>,
    ipam: Option<Arc<dyn Ipam>>,
}

impl ControllerBuilder {
    /// The namespace the controller treats as the host (default: the caller's own).
    pub fn host_netns(mut self, ns: NetNs) -> Self {
        self.host_ns = Some(ns);
        self
    }

    /// The run dir (default `/run/cnm`): netns bind mounts under `netns/`, sandbox files under
    /// `sandboxes/`.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = dir.into();
        self
    }

    /// The state dir (default `/var/lib/cnm`).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// The resolv.conf containers' resolv.conf is derived from (default `/etc/resolv.conf`).
    pub fn resolv_conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.resolv_conf = path.into();
        self
    }

    /// The state store. The default is the durable store a linked crate registered as
    /// [`DefaultStore`](crate::store::DefaultStore) (the `cnm` facade links `cnm-store`'s
    /// embedded one, which takes the state dir's lock), opened in the state dir; an in-memory
    /// store when none is linked.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The IPAM (default: the built-in one with Docker's default pools).
    pub fn ipam(mut self, ipam: Arc<dyn Ipam>) -> Self {
        self.ipam = Some(ipam);
        self
    }

    /// Creates the directories, connects to the host namespace, opens the store, instantiates
    /// every linked driver, and reloads the recorded state: IPAM is rebuilt from the network
    /// and endpoint records, each network handed back to its driver with its endpoints
    /// ([`Driver::restore_network`]), each sandbox's namespace reopened by its key, default
    /// routes and published ports of gateway endpoints made again; then what no record owns
    /// (namespaces under `run_dir/netns`, sandbox directories, the drivers' links and rules)
    /// is removed.
    pub async fn build(self) -> Result<Controller, CoreError> {
        let host_ns = match self.host_ns {
            Some(ns) => ns,
            None => {
                NetNs::current().map_err(|e| CoreError::sandbox("open", "the host namespace", e))?
            }
        };
        let host_netlink = Netlink::connect(&host_ns)
            .await
            .map_err(|e| CoreError::sandbox("connect netlink in", "the host namespace", e))?;
        for dir in [&self.run_dir, &self.state_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| CoreError::io("create directory", dir.display(), e))?;
        }
        let ctx = DriverContext::new(
            host_ns.clone(),
            host_netlink.clone(),
            self.run_dir.clone(),
            self.state_dir.clone(),
        );
        let mut drivers = BTreeMap::new();
        for (name, reg) in registry(inventory::iter::<DriverRegistration>)? {
            let driver =
                (reg.create)(&ctx).map_err(|e| CoreError::driver("instantiate driver", name, e))?;
            drivers.insert(name.to_owned(), driver);
        }
        let store = match self.store {
            Some(store) => store,
            None => open_default_store(&self.state_dir).await?,
        };
        let ipam = self.ipam.unwrap_or_else(|| {
            Arc::new(cnm_ipam::Ipam::new(IpamConfig::docker_defaults(
                IpamConfig::DEFAULT_HOST_ID,
            )))
        });
        let inner = ControllerInner {
            host_ns,
            host_netlink,
            run_dir: self.run_dir,
            state_dir: self.state_dir,
            resolv_conf: self.resolv_conf,
            store,
            ipam,
            drivers,
            networks: DashMap::new(),
            network_names: DashMap::new(),
            singletons: DashMap::new(),
            sandboxes: DashMap::new(),
            containers: DashMap::new(),
        };
        let inner = Arc::new(inner);
        crate::reload::reload(&inner).await?;
        tracing::info!(drivers = ?inner.drivers.keys().collect::<Vec<_>>(), "controller built");
        Ok(Controller { inner })
    }
}

/// Opens the store registered as the default (see [`DefaultStore`]), or an in-memory one.
async fn open_default_store(state_dir: &Path) -> Result<Arc<dyn Store>, CoreError> {
    let mut regs: Vec<&'static DefaultStore> =
        inventory::iter::<DefaultStore>.into_iter().collect();
    regs.sort_by_key(|r| r.name);
    let Some(reg) = regs.first() else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let (open, dir) = (reg.open, state_dir.to_owned());
    // Opening may repair the file after a crash: blocking work.
    tokio::task::spawn_blocking(move || open(&dir))
        .await
        .map_err(|e| CoreError::Aborted {
            op: "open store in",
            object: state_dir.display().to_string(),
            reason: e.to_string(),
        })?
        .map_err(|e| CoreError::store("open", state_dir.display().to_string(), e))
}

/// One container's sandbox slot: `None` until its sandbox exists.
pub(crate) type ContainerSlot = Arc<tokio::sync::Mutex<Option<Arc<SandboxInner>>>>;

pub(crate) struct ControllerInner {
    pub(crate) host_ns: NetNs,
    pub(crate) host_netlink: Netlink,
    pub(crate) run_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) resolv_conf: PathBuf,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) ipam: Arc<dyn Ipam>,
    pub(crate) drivers: BTreeMap<String, Arc<dyn Driver>>,
    /// Networks by id.
    pub(crate) networks: DashMap<String, Arc<NetworkInner>>,
    /// Network name → id; `None` while the network is being created (the name is reserved).
    pub(crate) network_names: DashMap<String, Option<String>>,
    /// Singleton driver → the name of its one network.
    pub(crate) singletons: DashMap<String, String>,
    /// Sandboxes by id.
    pub(crate) sandboxes: DashMap<String, Arc<SandboxInner>>,
    /// Container id → its sandbox slot.
    pub(crate) containers: DashMap<String, ContainerSlot>,
}

impl Drop for ControllerInner {
    fn drop(&mut self) {
        // A network holds its endpoints and each endpoint its network: break those cycles, so
        // the networks, and the drivers they hold (with their host-port reservations), go with
        // the controller. A controller restarted in the same process needs those ports back.
        for net in self.networks.iter() {
            net.state().endpoints.clear();
        }
    }
}

impl fmt::Debug for ControllerInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .field("networks", &self.networks.len())
            .field("sandboxes", &self.sandboxes.len())
            .finish_non_exhaustive()
    }
}

/// Runs a mutating operation in its own task (so a dropped caller cannot cut it half-way) inside
/// a span naming it.
pub(crate) async fn run_op<T, F>(op: &'static str, object: String, fut: F) -> Result<T, CoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
{
    let span = tracing::info_span!("cnm", op, object = %object);
    match tokio::spawn(fut.instrument(span)).await {
        Ok(result) => result,
        Err(e) => Err(CoreError::Aborted {
            op,
            object,
            reason: e.to_string(),
        }),
    }
}

impl ControllerInner {
    pub(crate) fn driver(&self, name: &str) -> Result<Arc<dyn Driver>, CoreError> {
        self.drivers
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::DriverNotFound(name.to_owned()))
    }

    /// The networks the host is on (addresses and routes of its namespace), leaving out the
    /// bridges of this controller's networks and catch-all routes (see [`crate::host`]).
    pub(crate) async fn host_networks(&self) -> Result<Vec<HostNetwork>, CoreError> {
        let nl = &self.host_netlink;
        let what = "the host namespace";
        // One after the other: the kernel runs one dump at a time per netlink socket (a second
        // one started meanwhile fails with EBUSY).
        let links = nl
            .links()
            .await
            .map_err(|e| CoreError::sandbox("list links of", what, e))?;
        let addresses = nl
            .addresses(None)
            .await
            .map_err(|e| CoreError::sandbox("list addresses of", what, e))?;
        let v4 = nl
            .routes(IpFamily::V4)
            .await
            .map_err(|e| CoreError::sandbox("list routes of", what, e))?;
        let v6 = nl
            .routes(IpFamily::V6)
            .await
            .map_err(|e| CoreError::sandbox("list routes of", what, e))?;
        let routes: Vec<_> = v4.into_iter().chain(v6).collect();
        Ok(host::collect(&links, &addresses, &routes, |link| {
            link.alias
                .as_deref()
                .and_then(|a| a.strip_prefix(host::ALIAS_PREFIX))
                .is_some_and(|id| self.networks.contains_key(id))
        }))
    }

    /// What default pools must avoid: the networks the host is on and its name servers.
    async fn pool_exclusions(&self) -> Result<Vec<IpNet>, CoreError> {
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
    async fn check_host_overlap(&self, pools: &[PoolConfig]) -> Result<(), CoreError> {
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
        let path = self.resolv_conf.clone();
        tokio::task::spawn_blocking(move || read_resolv_conf(&path))
            .await
            .map_err(|e| CoreError::Aborted {
                op: "read",
                object: self.resolv_conf.display().to_string(),
                reason: e.to_string(),
            })?
    }

    fn network_handles(self: &Arc<Self>) -> Vec<Network> {
        let mut v: Vec<Network> = self
            .networks
            .iter()
            .map(|e| Network::new(self.clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }
}

/// Reads and parses a resolv.conf (blocking); a missing file is an empty one.
pub(crate) fn read_resolv_conf(path: &Path) -> Result<ResolvConf, CoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(ResolvConf::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "resolv.conf source missing");
            Ok(ResolvConf::default())
        }
        Err(e) => Err(CoreError::io("read", path.display(), e)),
    }
}

/// The root of the model: create and find networks and sandboxes here.
///
/// Cheap to clone; every clone is the same controller.
///
/// # Locking
///
/// State is locked per object, never globally across kernel work. When an operation needs more
/// than one lock it takes them in this order, and never the other way round:
///
/// 1. the container slot (`containers`, a tokio mutex per container id: find-or-create of a
///    sandbox, sandbox delete);
/// 2. the sandbox's state (tokio mutex: join, leave, delete);
/// 3. the endpoint's state (tokio mutex: join, leave, delete);
/// 4. the network's state (std mutex, held for a few map operations and never across `.await`);
/// 5. the controller's maps (`DashMap`s; a guard is never held across `.await`).
///
/// Names are reserved atomically (a `DashMap` entry or the network's map) before any work, so of
/// two concurrent creations of one name exactly one proceeds. Every mutating operation runs in
/// its own task, so a caller that drops the future cannot stop it half-way: it completes or
/// unwinds.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<ControllerInner>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// Docker's rule for network and endpoint names.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), CoreError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(CoreError::invalid(
            field,
            name,
            "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
        ));
    }
    Ok(())
}

impl Controller {
    /// A builder with the defaults: the caller's namespace as the host, `/run/cnm`,
    /// `/var/lib/cnm`, `/etc/resolv.conf`, the registered default store (durable, in the state
    /// dir; in-memory when none is linked) and the built-in IPAM.
    ///
    /// Building reloads what the store holds: networks, endpoints, sandboxes and their
    /// addresses come back, each network is handed back to its driver, and the kernel is
    /// reconciled with the records (see [`ControllerBuilder::build`]).
    pub fn builder() -> ControllerBuilder {
        ControllerBuilder {
            host_ns: None,
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            store: None,
            ipam: None,
        }
    }

    /// The names of the drivers this controller instantiated, sorted.
    pub fn drivers(&self) -> Vec<String> {
        self.inner.drivers.keys().cloned().collect()
    }

    /// Applies driver-wide options (libnetwork's `ConfigureNetworkDriver`).
    pub async fn configure_network_driver(
        &self,
        driver: &str,
        options: DriverOptions,
    ) -> Result<(), CoreError> {
        let d = self.inner.driver(driver)?;
        d.configure(&options)
            .await
            .map_err(|e| CoreError::driver("configure driver", driver, e))
    }

    /// The host namespace.
    pub fn host_netns(&self) -> &NetNs {
        &self.inner.host_ns
    }

    /// The run dir.
    pub fn run_dir(&self) -> &Path {
        &self.inner.run_dir
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The IPAM.
    pub fn ipam(&self) -> &Arc<dyn Ipam> {
        &self.inner.ipam
    }

    /// Every network, sorted by name.
    pub fn networks(&self) -> Vec<Network> {
        self.inner.network_handles()
    }

    /// The network with this full id, name, or unique id prefix (in that order, as Docker).
    pub fn network(&self, key: &str) -> Result<Network, CoreError> {
        let candidates = self
            .inner
            .networks
            .iter()
            .map(|e| (e.name.clone(), e.id.clone(), e.value().clone()))
            .collect::<Vec<_>>();
        let inner = id::lookup("network", key, candidates)?;
        Ok(Network::new(self.inner.clone(), inner))
    }

    /// Creates a network.
    ///
    /// Everything is validated first (name, options, driver, driver options); then the name is
    /// reserved, pools and gateways allocated, the driver asked to create it, and the record
    /// written. Any failure undoes what was done: bad input changes nothing.
    pub async fn new_network(
        &self,
        driver: &str,
        name: &str,
        options: NetworkOptions,
    ) -> Result<Network, CoreError> {
        let ctl = self.inner.clone();
        let (driver, name) = (driver.to_owned(), name.to_owned());
        let inner = run_op(
            "create network",
            name.clone(),
            create_network(ctl, driver, name, options),
        )
        .await?;
        Ok(Network::new(self.inner.clone(), inner))
    }

    /// What a network created with `options` on `driver` would keep without acting on: the
    /// driver options its driver does not know and every IPAM option (the built-in IPAM knows
    /// none), one warning each, for Docker's `Warning` in the create response. Docker keeps
    /// such keys and shows them in inspect, and so does cnm; values of known keys are checked
    /// strictly by [`Controller::new_network`]. Reads nothing but the options.
    pub fn option_warnings(
        &self,
        driver: &str,
        options: &NetworkOptions,
    ) -> Result<Vec<String>, CoreError> {
        let d = self.inner.driver(driver)?;
        let mut out: Vec<String> = d
            .unknown_network_options(&options.driver_options)
            .into_iter()
            .map(|key| {
                format!(
                    "option {key:?} is not known to the {driver} driver: kept on the network, \
                     without effect"
                )
            })
            .collect();
        out.extend(options.ipam_options.iter().flatten().map(|(key, _)| {
            format!(
                "IPAM option {key:?} is not known to the default IPAM driver: kept on the \
                 network, without effect"
            )
        }));
        Ok(out)
    }

    /// Creates the sandbox of a container: a persisted network namespace with loopback up, a
    /// hosts file and a resolv.conf. Fails if the container has one.
    pub async fn new_sandbox(
        &self,
        container_id: &str,
        options: impl IntoIterator<Item = JoinOption>,
    ) -> Result<Sandbox, CoreError> {
        let opts = JoinOptions::from_options(options)?;
        let (ctl, cid) = (self.inner.clone(), container_id.to_owned());
        let (inner, _) = run_op("create sandbox", cid.clone(), async move {
            sandbox::find_or_create(&ctl, &cid, opts, false).await
        })
        .await?;
        Ok(Sandbox::new(self.inner.clone(), inner))
    }

    /// The sandbox of a container.
    pub fn sandbox_by_container_id(&self, container_id: &str) -> Result<Sandbox, CoreError> {
        sandbox::find_by_container(&self.inner, container_id)
            .map(|s| Sandbox::new(self.inner.clone(), s))
            .ok_or_else(|| CoreError::NotFound {
                what: "sandbox",
                key: container_id.to_owned(),
            })
    }

    /// The sandbox with this full id, container id, or unique id prefix (in that order).
    pub fn sandbox(&self, key: &str) -> Result<Sandbox, CoreError> {
        let candidates = self
            .inner
            .sandboxes
            .iter()
            .map(|e| (e.container_id.clone(), e.id.clone(), e.value().clone()))
            .collect::<Vec<_>>();
        let inner = id::lookup("sandbox", key, candidates)?;
        Ok(Sandbox::new(self.inner.clone(), inner))
    }

    /// Every sandbox, sorted by container id.
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        let mut v: Vec<Sandbox> = self
            .inner
            .sandboxes
            .iter()
            .map(|e| Sandbox::new(self.inner.clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.container_id().cmp(b.container_id()));
        v
    }
}

/// Releases a name reservation (and a singleton claim) unless the creation committed.
struct NameReservation {
    ctl: Arc<ControllerInner>,
    name: String,
    singleton: Option<String>,
    committed: bool,
}

impl NameReservation {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for NameReservation {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.ctl
            .network_names
            .remove_if(&self.name, |_, id| id.is_none());
        if let Some(driver) = &self.singleton {
            self.ctl
                .singletons
                .remove_if(driver, |_, n| *n == self.name);
        }
    }
}

async fn create_network(
    ctl: Arc<ControllerInner>,
    driver_name: String,
    name: String,
    options: NetworkOptions,
) -> Result<Arc<NetworkInner>, CoreError> {
    // 1. Validate everything before touching anything.
    check_name("network name", &name)?;
    options.validate()?;
    let driver = ctl.driver(&driver_name)?;
    let ipam_name = options.ipam_driver.as_deref().unwrap_or("default");
    if ipam_name != "default" && ipam_name != ctl.ipam.name() {
        return Err(CoreError::IpamDriverNotFound(ipam_name.to_owned()));
    }
    driver
        .validate_network_options(&options.driver_options)
        .map_err(|e| CoreError::driver("validate options of network", &name, e))?;
    let capability = driver.capability();
    if !capability.needs_addresses
        && let Some(pool) = options.pools.first()
    {
        return Err(CoreError::invalid(
            "subnet",
            pool.subnet(),
            format!("driver {driver_name:?} does not use addresses"),
        ));
    }
    // Reading the host's addresses and routes changes nothing.
    if capability.host_routes && !options.allow_host_overlap {
        ctl.check_host_overlap(&options.pools).await?;
    }

    // 2. Reserve the name (and the singleton slot) atomically.
    match ctl.network_names.entry(name.clone()) {
        Entry::Occupied(_) => return Err(CoreError::NetworkExists(name)),
        Entry::Vacant(v) => {
            v.insert(None);
        }
    }
    let mut reservation = NameReservation {
        ctl: ctl.clone(),
        name: name.clone(),
        singleton: None,
        committed: false,
    };
    if capability.singleton {
        match ctl.singletons.entry(driver_name.clone()) {
            Entry::Occupied(o) => {
                return Err(CoreError::SingletonNetwork {
                    driver: driver_name,
                    existing: o.get().clone(),
                });
            }
            Entry::Vacant(v) => {
                v.insert(name.clone());
            }
        }
        reservation.singleton = Some(driver_name.clone());
    }

    let id = id::generate();
    let created = std::time::SystemTime::now();
    let span =
        tracing::info_span!("network", id = id::short(&id), name = %name, driver = %driver_name);
    async move {
        let mut undo = Undo::new();
        let result = async {
            // 3. Pools and gateways.
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            if capability.needs_addresses {
                let needs_default = (options.enable_ipv4 && options.pools_v4().next().is_none())
                    || (options.enable_ipv6 && options.pools_v6().next().is_none());
                let exclude = if needs_default {
                    ctl.pool_exclusions().await?
                } else {
                    Vec::new()
                };
                for (family, on, out) in [
                    (Family::V4, options.enable_ipv4, &mut v4),
                    (Family::V6, options.enable_ipv6, &mut v6),
                ] {
                    if !on {
                        continue;
                    }
                    let configs: Vec<Option<&PoolConfig>> = {
                        let given: Vec<_> = options
                            .pools
                            .iter()
                            .filter(|p| p.is_ipv6() == (family == Family::V6))
                            .collect();
                        if given.is_empty() {
                            vec![None]
                        } else {
                            given.into_iter().map(Some).collect()
                        }
                    };
                    for config in configs {
                        out.push(
                            allocate_pool(&ctl, &mut undo, family, config, &exclude, &name).await?,
                        );
                    }
                }
            }
            // 4. The driver.
            let mut spec = NetworkSpec::new(id.clone(), name.clone());
            spec.ipv4 = v4.iter().filter_map(NetworkPool::ipam_data_v4).collect();
            spec.ipv6 = v6.iter().filter_map(NetworkPool::ipam_data_v6).collect();
            spec.enable_ipv4 = options.enable_ipv4;
            spec.enable_ipv6 = options.enable_ipv6;
            spec.internal = options.internal;
            spec.options = options.driver_options.clone();
            spec.labels = options.labels.clone();
            driver
                .create_network(&spec)
                .await
                .map_err(|e| CoreError::driver("create network", &name, e))?;
            {
                let (d, id) = (driver.clone(), id.clone());
                undo.push("delete network in driver", move || async move {
                    d.delete_network(&id)
                        .await
                        .map_err(|e| CoreError::driver("delete network", id, e))
                });
            }
            crate::crash::point("network-create:after-driver");
            // 5. The record: last, so a crash before it leaves nothing the restart keeps.
            let record = NetworkRecord {
                schema: record::SCHEMA,
                id: id.clone(),
                name: name.clone(),
                driver: driver_name.clone(),
                ipam_driver: ctl.ipam.name().to_owned(),
                enable_ipv4: options.enable_ipv4,
                enable_ipv6: options.enable_ipv6,
                internal: options.internal,
                labels: options.labels.clone(),
                driver_options: options.driver_options.clone(),
                allow_host_overlap: options.allow_host_overlap,
                attachable: options.attachable,
                ipam_options: options.ipam_options.clone(),
                ipv4: v4.iter().map(NetworkPool::record).collect(),
                ipv6: v6.iter().map(NetworkPool::record).collect(),
                created,
            };
            let key = record::network_key(&id);
            let bytes = serde_json::to_vec(&record).map_err(|source| CoreError::Record {
                op: "encode",
                key: key.clone(),
                source,
            })?;
            let version = ctl
                .store
                .put(&key, bytes, Expect::Absent)
                .await
                .map_err(|e| CoreError::store("write", &key, e))?;
            {
                let (store, key) = (ctl.store.clone(), key.clone());
                undo.push("delete network record", move || async move {
                    store
                        .delete(&key, Expect::Version(version))
                        .await
                        .map_err(|e| CoreError::store("delete", key, e))
                });
            }
            crate::crash::point("network-create:after-record");
            Ok(Arc::new(NetworkInner::new(
                id.clone(),
                name.clone(),
                driver_name.clone(),
                driver.clone(),
                capability,
                options,
                v4,
                v6,
                version,
                created,
            )))
        }
        .await;
        let inner = undo.finish(result).await?;
        ctl.networks.insert(inner.id.clone(), inner.clone());
        ctl.network_names
            .insert(name.clone(), Some(inner.id.clone()));
        reservation.commit();
        tracing::info!("network created");
        Ok(inner)
    }
    .instrument(span)
    .await
}

async fn allocate_pool(
    ctl: &Arc<ControllerInner>,
    undo: &mut Undo,
    family: Family,
    config: Option<&PoolConfig>,
    exclude: &[IpNet],
    network: &str,
) -> Result<NetworkPool, CoreError> {
    let mut req = PoolRequest::new(family);
    let mut aux = BTreeMap::new();
    match config {
        Some(c) => {
            req.subnet = Some(c.subnet());
            req.ip_range = c.ip_range();
            req.gateway = c.gateway();
            req.aux_addresses = c.aux_addresses().values().copied().collect();
            aux = c.aux_addresses().clone();
        }
        None => req.exclude = exclude.to_vec(),
    }
    let pool = ctl
        .ipam
        .request_pool(&req)
        .await
        .map_err(|e| CoreError::ipam("allocate pool for network", network, e))?;
    {
        let (ipam, id) = (ctl.ipam.clone(), pool.id.clone());
        undo.push("release pool", move || async move {
            ipam.release_pool(&id)
                .await
                .map_err(|e| CoreError::ipam("release pool", id.to_string(), e))
        });
    }
    let gateway = ctl
        .ipam
        .request_address(&pool.id, AddressRequest::Gateway)
        .await
        .map_err(|e| CoreError::ipam("allocate gateway for network", network, e))?;
    {
        let (ipam, id) = (ctl.ipam.clone(), pool.id.clone());
        undo.push("release gateway", move || async move {
            ipam.release_address(&id, gateway.addr())
                .await
                .map_err(|e| CoreError::ipam("release gateway of pool", id.to_string(), e))
        });
    }
    Ok(NetworkPool {
        pool_id: pool.id,
        subnet: pool.subnet,
        gateway: Some(gateway),
        aux_addresses: aux,
    })
}

/// Deletes a network: refused while it has endpoints.
pub(crate) async fn delete_network(
    ctl: Arc<ControllerInner>,
    net: Arc<NetworkInner>,
) -> Result<(), CoreError> {
    net.begin_delete()?;
    if let Err(e) = net.driver.delete_network(&net.id).await {
        net.abort_delete();
        return Err(CoreError::driver("delete network", &net.name, e));
    }
    // A crash from here until the record is gone leaves the record: the restart recreates the
    // network from it (the delete did not happen).
    crate::crash::point("network-delete:after-driver");
    let mut errors = Errors::default();
    let key = record::network_key(&net.id);
    errors.check(
        ctl.store
            .delete(&key, Expect::Version(net.version))
            .await
            .map_err(|e| CoreError::store("delete", &key, e)),
    );
    if net.capability.needs_addresses {
        for pool in net.pools_v4.iter().chain(&net.pools_v6) {
            errors.check(
                ctl.ipam
                    .release_pool(&pool.pool_id)
                    .await
                    .map_err(|e| CoreError::ipam("release pool of network", &net.name, e)),
            );
        }
    }
    crate::crash::point("network-delete:after-record");
    ctl.networks.remove(&net.id);
    ctl.network_names.remove(&net.name);
    ctl.singletons
        .remove_if(&net.driver_name, |_, n| *n == net.name);
    tracing::info!(network = id::short(&net.id), name = %net.name, "network deleted");
    errors.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(_: &DriverContext) -> Result<Arc<dyn Driver>, crate::spi::DriverError> {
        Err(crate::spi::DriverError::new(
            "x",
            cnm_types::ErrorKind::Internal,
            "unused",
        ))
    }

    #[test]
    fn no_driver_is_linked_into_core_itself() {
        assert!(
            registered_drivers().is_empty(),
            "{:?}",
            registered_drivers()
        );
    }

    #[test]
    fn registry_sorts_and_refuses_duplicates() {
        let regs = [
            DriverRegistration::new("b", fake),
            DriverRegistration::new("a", fake),
        ];
        let r = registry(&regs).unwrap();
        assert_eq!(r.keys().copied().collect::<Vec<_>>(), ["a", "b"]);
        let dup = [
            DriverRegistration::new("a", fake),
            DriverRegistration::new("a", fake),
        ];
        let Err(e) = registry(&dup) else {
            panic!("duplicate accepted")
        };
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[test]
    fn names_follow_docker() {
        assert!(check_name("network name", "net_1.a-b").is_ok());
        for bad in ["", "-a", "a b", "a/b", "é"] {
            let e = check_name("network name", bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
