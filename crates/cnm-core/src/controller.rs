//! The controller: the root handle, its builder, and its shutdown.
//!
//! The lock order is written down once, on [`Controller`].

use cnm_types::FailedTo;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use cnm_ipam::IpamConfig;
use cnm_sandbox::NetNs;

use crate::CoreError;
use crate::id;
use crate::ipam::Ipam;
use crate::kernel::{Kernel, NetlinkKernel};
use crate::network::Network;
use crate::ops::{self, run_op};
use crate::options::{JoinOption, JoinOptions, NetworkOptions};
use crate::record::{EndpointRecord, NetworkRecord};
use crate::resolve::DriverResolver;
use crate::sandbox::Sandbox;
use crate::spi::{Driver, DriverContext, DriverError, DriverOptions, DriverRegistration};
use crate::state::Core;
use crate::store::Versioned;
use crate::store::{DefaultStore, MemoryStore, Store};

/// The default run dir (netns bind mounts, sandbox files).
pub const DEFAULT_RUN_DIR: &str = "/run/cnm";
/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cnm";
/// The default resolv.conf source.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The names of every driver linked into this program, sorted.
pub fn registered_drivers() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<DriverRegistration>
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// A driver constructor given to the builder.
type Factory = Box<dyn FnOnce(&DriverContext) -> Result<Arc<dyn Driver>, DriverError> + Send>;

/// Builds a [`Controller`]; see [`Controller::builder`].
#[must_use]
pub struct ControllerBuilder {
    host_ns: Option<NetNs>,
    kernel: Option<Arc<dyn Kernel>>,
    run_dir: PathBuf,
    state_dir: PathBuf,
    resolv_conf: PathBuf,
    store: Option<Arc<dyn Store>>,
    cluster_store: Option<Arc<dyn Store>>,
    cluster_awaited: Option<String>,
    advertise_addr: Option<std::net::IpAddr>,
    lease_ttl: std::time::Duration,
    ipam: Option<Arc<dyn Ipam>>,
    builtin_drivers: bool,
    drivers: Vec<(String, Factory)>,
    resolver: Option<Arc<dyn DriverResolver>>,
    ipam_resolver: Option<Arc<dyn crate::ipam::IpamResolver>>,
    embedded_dns: Option<bool>,
    host_dns: Option<SocketAddr>,
    gateway_network: Option<crate::ops::gateway_network::GatewayNetwork>,
    driver_settings: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for ControllerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControllerBuilder")
            .field("host_ns", &self.host_ns)
            .field("kernel", &self.kernel)
            .field("run_dir", &self.run_dir)
            .field("state_dir", &self.state_dir)
            .field("resolv_conf", &self.resolv_conf)
            .field("store", &self.store)
            .field("cluster_store", &self.cluster_store)
            .field("cluster_awaited", &self.cluster_awaited)
            .field("advertise_addr", &self.advertise_addr)
            .field("lease_ttl", &self.lease_ttl)
            .field("ipam", &self.ipam)
            .field("builtin_drivers", &self.builtin_drivers)
            .field("resolver", &self.resolver)
            .field("embedded_dns", &self.embedded_dns)
            .field("host_dns", &self.host_dns)
            .field(
                "drivers",
                &self.drivers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ControllerBuilder {
    cnm_types::setters! {
        /// The namespace the controller treats as the host (default: the caller's own).
        pub fn host_netns(ns: NetNs) => host_ns = Some(ns);
        /// The kernel the controller works on (default: [`NetlinkKernel`] in the host namespace).
        /// A test can plug a fake in; it then decides what the host namespace is, and
        /// [`ControllerBuilder::host_netns`] is not used.
        pub fn kernel(kernel: Arc<dyn Kernel>) => kernel = Some(kernel);
        /// The run dir (default `/run/cnm`): netns bind mounts under `netns/`, sandbox files under
        /// `sandboxes/`.
        pub fn run_dir(dir: impl Into<PathBuf>) => run_dir = dir.into();
        /// The state dir (default `/var/lib/cnm`).
        pub fn state_dir(dir: impl Into<PathBuf>) => state_dir = dir.into();
        /// The resolv.conf containers' resolv.conf is derived from (default `/etc/resolv.conf`).
        pub fn resolv_conf(path: impl Into<PathBuf>) => resolv_conf = path.into();
        /// The state store. The default is the durable store a linked crate registered as
        /// [`DefaultStore`](crate::store::DefaultStore) (the `cnm` facade links `cnm-store`'s
        /// embedded one, which takes the state dir's lock), opened in the state dir; an in-memory
        /// store when none is linked.
        pub fn store(store: Arc<dyn Store>) => store = Some(store);
        /// The store every host of a cluster shares (etcd: `cnm_store::EtcdStore`), where
        /// global-scope networks live: their records, names, subnets and addresses, and what their
        /// drivers keep there ([`DriverContext::store`], [`DriverContext::facts`]). Without one a
        /// global network is refused ([`CoreError::NoClusterStore`]). Local networks never touch
        /// it.
        pub fn cluster_store(store: Arc<dyn Store>) => cluster_store = Some(store);
        /// A cluster store is configured but could not be reached yet (`store` is its address,
        /// e.g. `etcd://10.0.0.1:2379`): the controller starts with local networks, refuses a
        /// global network with [`CoreError::ClusterStoreUnreachable`] naming `store` (kind
        /// `Unavailable`) until [`Controller::attach_cluster_store`] gives it the store, and keeps
        /// this host's cluster id in its own store from the start, as with
        /// [`ControllerBuilder::cluster_store`]. Ignored when a cluster store is given.
        pub fn cluster_store_awaited(store: impl Into<String>)
            => cluster_awaited = Some(store.into());
        /// This host's address on the cluster's underlay, as the other hosts reach it (cnmd's
        /// `--advertise-addr`): an overlay network's tunnel endpoint (VTEP) here.
        pub fn advertise_addr(addr: std::net::IpAddr) => advertise_addr = Some(addr);
        /// The TTL of the lease under which this host's per-endpoint facts live in the cluster
        /// store (default [`DEFAULT_LEASE_TTL`](crate::spi::DEFAULT_LEASE_TTL), 15 s): when this
        /// host dies, the other hosts drop its endpoints within it.
        pub fn cluster_lease_ttl(ttl: std::time::Duration) => lease_ttl = ttl;
    }

    /// A host-wide setting of the driver `driver` (what is the host's, not a network's: the
    /// overlay's `wireguard_port`), which the driver reads with
    /// [`DriverContext::setting`](crate::spi::DriverContext::setting); the driver refuses a
    /// bad value when it uses it.
    pub fn driver_setting(mut self, driver: &str, key: &str, value: impl Into<String>) -> Self {
        self.driver_settings
            .insert(format!("{driver}.{key}"), value.into());
        self
    }

    /// The local network that gives sandboxes a way out when their endpoints' drivers give
    /// none (an overlay's: [`JoinInfo::needs_gateway_network`](crate::spi::JoinInfo)), as
    /// Docker's `docker_gwbridge`: created with `driver` and `options` by the first join that
    /// needs it, then kept (and adopted on restart like any network). Such a sandbox gets an
    /// endpoint `gateway_<sandbox>` on it, joined right after the endpoint that needs it (both
    /// undone together) and removed when nothing needs it any more. Core names no driver:
    /// cnmd asks for a bridge with inter-container traffic off and masquerading on. None by
    /// default: such endpoints then have no way out.
    pub fn gateway_network(
        mut self,
        name: impl Into<String>,
        driver: impl Into<String>,
        options: NetworkOptions,
    ) -> Self {
        self.gateway_network = Some(crate::ops::gateway_network::GatewayNetwork {
            name: name.into(),
            driver: driver.into(),
            options,
            creating: Arc::default(),
        });
        self
    }

    cnm_types::setters! {
        /// The IPAM (default: the built-in one with Docker's default pools).
        pub fn ipam(ipam: Arc<dyn Ipam>) => ipam = Some(ipam);
        /// Whether the drivers linked into the program (registered through `inventory`) are
        /// instantiated (default true).
        pub fn builtin_drivers(on: bool) => builtin_drivers = on;
        /// Whether the controller runs the embedded DNS ([`cnm_dns`]): each sandbox on a network it
        /// serves gets a resolver at `127.0.0.11:53` inside its own namespace (UDP and TCP) and a
        /// resolv.conf naming it; containers find each other by name, alias and `name.network`,
        /// and other names are forwarded to the sandbox's `--dns` servers or the host's. Networks
        /// whose driver gives no addresses (`null`), and networks with
        /// [`KEY_EMBEDDED_DNS`](crate::options::KEY_EMBEDDED_DNS)`=false` (Docker's
        /// default `bridge`), are not served. Default: on with the real kernel, off with a kernel
        /// given to [`ControllerBuilder::kernel`] (a fake has no namespaces to listen in).
        pub fn embedded_dns(on: bool) => embedded_dns = Some(on);
        /// Offers the embedded DNS on the host too (moby#27790): a resolver at `addr` in the host
        /// namespace answering `name.network` and `name.network.cnm` (A, AAAA) for the endpoints
        /// of every served network, and PTR for their addresses. It is authoritative for those
        /// names only and forwards nothing: any other name is REFUSED, so a host resolver that
        /// routes the `cnm` domain (or a network's name) to it never loops through it, and it is
        /// no open resolver. Port 0 picks a free port ([`Controller::host_dns`] tells which).
        ///
        /// `addr` must be a loopback address (`127.0.0.153:53` is what cnmd uses): the listener
        /// must never be reachable from another host, and containers cannot reach the host's
        /// loopback (the kernel never routes 127.0.0.0/8 between namespaces). Anything else is
        /// refused, and so is a host resolver with the embedded DNS off (both
        /// [`CoreError::InvalidOption`], before anything is done). Default: none.
        pub fn host_dns(addr: SocketAddr) => host_dns = Some(addr);
    }

    /// Adds a driver discovered while running (a plugin found by name, a driver of the embedding
    /// program): `create` builds it with the controller's [`DriverContext`]. Its name must not
    /// be a linked driver's.
    pub fn driver(
        mut self,
        name: impl Into<String>,
        create: impl FnOnce(&DriverContext) -> Result<Arc<dyn Driver>, DriverError> + Send + 'static,
    ) -> Self {
        self.drivers.push((name.into(), Box::new(create)));
        self
    }

    cnm_types::setters! {
        /// What finds a driver the controller does not have, by name (default: none, and an unknown
        /// name is [`CoreError::DriverNotFound`]). It is asked when a network is created with a
        /// driver of that name, and at reload for a recorded network's driver, before the network
        /// is restored; what it finds is registered as if by [`Controller::register_driver`].
        pub fn driver_resolver(resolver: Arc<dyn DriverResolver>) => resolver = Some(resolver);
        /// Finds IPAM drivers by name the moment a network names one the controller does not have
        /// (`--ipam-driver NAME`, Docker's `IPAM.Driver`): the network's pools and addresses then
        /// come from it. Without a resolver such a network is refused (`IpamDriverNotFound`).
        pub fn ipam_resolver(resolver: Arc<dyn crate::ipam::IpamResolver>)
            => ipam_resolver = Some(resolver);
    }

    /// Creates the directories, connects to the host namespace, opens the store, instantiates
    /// every driver, and reloads the recorded state: IPAM is rebuilt from the network and
    /// endpoint records, each network handed back to its driver with its endpoints
    /// ([`Driver::restore_network`]), each sandbox's namespace reopened by its key, default
    /// routes and published ports of gateway endpoints made again; then what no record owns
    /// (namespaces under `run_dir/netns`, sandbox directories, the drivers' links and rules)
    /// is removed.
    pub async fn build(self) -> Result<Controller, CoreError> {
        let embedded_dns = self.embedded_dns.unwrap_or(self.kernel.is_none());
        if let Some(addr) = self.host_dns {
            if !addr.ip().is_loopback() {
                return Err(CoreError::invalid(
                    "host DNS address",
                    addr,
                    "not a loopback address: it would be reachable from other machines",
                ));
            }
            if !embedded_dns {
                return Err(CoreError::invalid(
                    "host DNS address",
                    addr,
                    "the host resolver needs the embedded DNS, which is off",
                ));
            }
        }
        let kernel: Arc<dyn Kernel> =
            match (self.kernel, self.host_ns) {
                (Some(kernel), _) => kernel,
                (None, Some(ns)) => Arc::new(NetlinkKernel::new(ns).await.map_err(|e| {
                    CoreError::failed("connect netlink in", "the host namespace", e)
                })?),
                (None, None) => Arc::new(
                    NetlinkKernel::current()
                        .map_err(|e| CoreError::failed("open", "the host namespace", e))?,
                ),
            };
        for dir in [&self.run_dir, &self.state_dir] {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| CoreError::failed("create directory", dir.display(), e))?;
        }
        let store = match self.store {
            Some(store) => store,
            None => open_default_store(&self.state_dir).await?,
        };
        let cluster_awaited = self
            .cluster_awaited
            .filter(|_| self.cluster_store.is_none());
        let host_id = if self.cluster_store.is_some() || cluster_awaited.is_some() {
            host_id(store.as_ref()).await?
        } else {
            // Nobody else to tell this host from: an id for this run, nothing written.
            id::generate()[..16].to_owned()
        };
        // [firewall] The host namespace's one firewall, handed to every driver. Opened on first
        // use (a controller of drivers without rules installs nothing); loading until the
        // reload commits what every driver restored, in one transaction.
        let firewall = cnm_firewall::Firewall::lazy(kernel.host_ns(), true);
        let ctx = DriverContext::new(
            kernel.host_ns().clone(),
            kernel.host_netlink().clone(),
            self.run_dir.clone(),
            self.state_dir.clone(),
        )
        .with_firewall(firewall.clone())
        .with_stores(store.clone(), self.cluster_store.clone(), host_id.clone())
        .with_cluster(self.advertise_addr, self.lease_ttl)
        .with_settings(self.driver_settings.clone());
        let mut factories: Vec<(String, Factory)> = Vec::new();
        if self.builtin_drivers {
            for reg in inventory::iter::<DriverRegistration> {
                factories.push((reg.name.to_owned(), Box::new(reg.create)));
            }
        }
        factories.extend(self.drivers);
        let drivers = instantiate(factories, &ctx)?;
        let ipam = self.ipam.unwrap_or_else(|| {
            Arc::new(cnm_ipam::Ipam::new(IpamConfig::docker_defaults(
                IpamConfig::DEFAULT_HOST_ID,
            )))
        });
        let cluster = self
            .cluster_store
            .map(|store| crate::cluster::Cluster::new(store, host_id));
        let host_ns = kernel.host_ns().clone();
        let mut core = Core::new(kernel, ctx, self.resolv_conf, store, ipam, drivers, cluster);
        core.resolver = self.resolver;
        core.gateway_network = self.gateway_network;
        core.ipam_resolver = self.ipam_resolver;
        core.cluster_awaited = cluster_awaited;
        let core = Arc::new(core);
        let mut host_dns = None;
        if embedded_dns {
            let config =
                cnm_dns::ResolverConfig::new(host_ns.clone()).resolv_conf(core.resolv_conf.clone());
            let resolver = cnm_dns::Resolver::new(config).map_err(|source| CoreError::Dns {
                op: "start",
                object: "the embedded DNS resolver".to_owned(),
                source: Box::new(source),
            })?;
            host_dns = match self.host_dns {
                // Bound before the reload: a refused address changes nothing.
                Some(addr) => Some(resolver.listen_on_host(addr, false).await.map_err(
                    |source| CoreError::Dns {
                        op: "start",
                        object: format!("the host DNS listener at {addr}"),
                        source: Box::new(source),
                    },
                )?),
                None => None,
            };
            core.dns.set(resolver);
        }
        ops::reload::reload(&core).await?;
        if let Some(addr) = host_dns {
            tracing::info!(%addr, "host DNS listener answering name.network");
        }
        tracing::info!(drivers = ?core.driver_names(), "controller built");
        Ok(Controller {
            shared: Arc::new(Shared {
                core: RwLock::new(Some(core)),
                host_ns,
                run_dir: self.run_dir,
                state_dir: self.state_dir,
                host_dns,
            }),
        })
    }
}

/// Instantiates drivers by name, refusing two of one name.
fn instantiate(
    factories: Vec<(String, Factory)>,
    ctx: &DriverContext,
) -> Result<BTreeMap<String, Arc<dyn Driver>>, CoreError> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &factories {
        if !seen.insert(name.clone()) {
            return Err(CoreError::DuplicateDriver(name.clone()));
        }
    }
    let mut out = BTreeMap::new();
    for (name, create) in factories {
        let driver = create(&ctx.for_driver(&name))
            .map_err(|e| CoreError::failed("instantiate driver", &name, e))?;
        out.insert(name, driver);
    }
    Ok(out)
}

/// The key of this host's id in its own store.
const HOST_ID_KEY: &str = "host/id";

/// This host's id in the cluster: made once, kept in the controller's own store (written only
/// for a controller with a cluster store).
async fn host_id(store: &dyn Store) -> Result<String, CoreError> {
    let read = |e| CoreError::failed("read", HOST_ID_KEY, e);
    if let Some(v) = store.get(HOST_ID_KEY).await.map_err(read)? {
        return Ok(String::from_utf8_lossy(&v.value).into_owned());
    }
    let id = id::generate()[..16].to_owned();
    match store
        .put(
            HOST_ID_KEY,
            id.clone().into_bytes(),
            crate::store::Expect::Absent,
        )
        .await
    {
        Ok(_) => Ok(id),
        Err(e) => Err(CoreError::failed("write", HOST_ID_KEY, e)),
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
        .map_err(|e| CoreError::failed("open", state_dir.display().to_string(), e))
}

/// What every clone of a controller shares: the core until shutdown, and the configuration.
struct Shared {
    core: RwLock<Option<Arc<Core>>>,
    host_ns: NetNs,
    run_dir: PathBuf,
    state_dir: PathBuf,
    host_dns: Option<SocketAddr>,
}

/// The root of the model: create and find networks and sandboxes here.
///
/// Cheap to clone; every clone is the same controller. The controller lives until
/// [`Controller::shutdown`] or until its last clone is dropped: the handles it gives out
/// ([`Network`], [`crate::Endpoint`], [`Sandbox`]) refer to it weakly, so a stray handle never
/// keeps its store (and the state dir's lock) or its drivers alive.
///
/// # Locking
///
/// State is locked per object, never globally across kernel work. When an operation needs more
/// than one lock it takes them in this order, and never the other way round:
///
/// 1. the container slot (`containers`, a tokio mutex per container id: find-or-create of a
///    sandbox, sandbox delete);
/// 2. the sandbox's operation lock (tokio mutex: join, leave, delete);
/// 3. the endpoint's operation lock (tokio mutex: join, leave, delete);
/// 4. an object's state (std mutex: the committed state getters read, held for a few field or
///    map updates and never across `.await`, and never two at once);
/// 5. the controller's maps (`DashMap`s; a guard is never held across `.await`).
///
/// Names are reserved atomically (a `DashMap` entry or the network's map) before any work, so of
/// two concurrent creations of one name exactly one proceeds. Every mutating operation runs in
/// its own task, so a caller that drops the future cannot stop it half-way: it completes or
/// unwinds.
#[derive(Clone)]
pub struct Controller {
    shared: Arc<Shared>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.core() {
            Ok(core) => core.fmt(f),
            Err(_) => f
                .debug_struct("Controller")
                .field("run_dir", &self.shared.run_dir)
                .field("shut_down", &true)
                .finish(),
        }
    }
}

impl Controller {
    /// A builder with the defaults: the caller's namespace as the host, `/run/cnm`,
    /// `/var/lib/cnm`, `/etc/resolv.conf`, the registered default store (durable, in the state
    /// dir; in-memory when none is linked), the built-in IPAM and every linked driver.
    ///
    /// Building reloads what the store holds: networks, endpoints, sandboxes and their
    /// addresses come back, each network is handed back to its driver, and the kernel is
    /// reconciled with the records (see [`ControllerBuilder::build`]).
    pub fn builder() -> ControllerBuilder {
        ControllerBuilder {
            host_ns: None,
            kernel: None,
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            store: None,
            cluster_store: None,
            cluster_awaited: None,
            advertise_addr: None,
            lease_ttl: crate::spi::DEFAULT_LEASE_TTL,
            ipam: None,
            builtin_drivers: true,
            drivers: Vec::new(),
            resolver: None,
            ipam_resolver: None,
            embedded_dns: None,
            host_dns: None,
            gateway_network: None,
            driver_settings: std::collections::BTreeMap::new(),
        }
    }

    /// The core, until shutdown.
    pub(crate) fn core(&self) -> Result<Arc<Core>, CoreError> {
        crate::sync::read(&self.shared.core)
            .clone()
            .ok_or(CoreError::Shutdown)
    }

    /// Stops the controller: waits for the operations in flight, asks every driver to stop its
    /// background tasks ([`Driver::shutdown`]), and lets go of the drivers, the store and the
    /// state dir's lock, so that another controller (in this process or another) can be built on
    /// the same directories. Networks, endpoints and sandboxes stay as they are, in the kernel and
    /// in the store. Afterwards every operation on this controller, its clones and its handles
    /// returns [`CoreError::Shutdown`]. A second call does nothing.
    ///
    /// The store is released when its last reference goes: one a caller took with
    /// [`Controller::store`] keeps it (and the lock) until dropped.
    pub async fn shutdown(&self) -> Result<(), CoreError> {
        let core = crate::sync::write(&self.shared.core).take();
        let Some(core) = core else {
            return Ok(());
        };
        core.gate.close().await;
        let mut errors = crate::undo::Errors::default();
        for (name, driver) in core.drivers() {
            errors.check(
                driver
                    .shutdown()
                    .await
                    .map_err(|e| CoreError::failed("shut down driver", name, e)),
            );
        }
        core.release();
        drop(core);
        tracing::info!(run_dir = %self.shared.run_dir.display(), "controller shut down");
        errors.into_result()
    }

    /// The names of the drivers this controller has, sorted (none after shutdown).
    pub fn drivers(&self) -> Vec<String> {
        self.core().map(|c| c.driver_names()).unwrap_or_default()
    }

    /// Adds a driver discovered while running (a plugin found by name): `create` builds it with
    /// the controller's [`DriverContext`]. Refused when a driver of that name exists.
    ///
    /// Networks of this driver that were recorded but could not be restored when the
    /// controller was built, because the driver was not there yet, are restored now, with
    /// their endpoints and joins: their names, pools and addresses stayed reserved meanwhile.
    pub async fn register_driver(
        &self,
        name: &str,
        create: impl FnOnce(&DriverContext) -> Result<Arc<dyn Driver>, DriverError>,
    ) -> Result<(), CoreError> {
        let core = self.core()?;
        if core.driver(name).is_ok() {
            return Err(CoreError::DriverExists(name.to_owned()));
        }
        let driver = create(&core.driver_context.for_driver(name))
            .map_err(|e| CoreError::failed("instantiate driver", name, e))?;
        core.add_driver(name.to_owned(), driver)?;
        tracing::info!(driver = name, "driver registered");
        let driver = name.to_owned();
        run_op(
            core,
            "restore the networks of driver",
            driver.clone(),
            |core| ops::reload::restore_pending(core, driver),
        )
        .await
    }

    /// Restores the networks that could not be restored when the controller was built because
    /// their IPAM driver (found by name through the
    /// [IPAM resolver](ControllerBuilder::ipam_resolver): a plugin) or their driver (found by
    /// name through the [driver resolver](ControllerBuilder::driver_resolver), or registered
    /// meanwhile) was missing, for each the resolvers find now: their pools and addresses are
    /// taken back and they come back with their endpoints and joins. Those whose IPAM or driver
    /// is still missing keep waiting, their names reserved; one whose restore fails keeps
    /// waiting too, and is tried again by the next call (the first such error is returned).
    /// Nothing when none waits.
    pub async fn restore_waiting(&self) -> Result<(), CoreError> {
        let core = self.core()?;
        run_op(
            core,
            "restore the networks waiting for",
            "their driver or ipam driver".to_owned(),
            |core| async move {
                let ipams = ops::reload::restore_waiting_ipams(core.clone()).await;
                let drivers = ops::reload::restore_waiting_drivers(core).await;
                ipams.and(drivers)
            },
        )
        .await
    }

    /// The names of the IPAM drivers that networks recorded before the controller was built
    /// wait for (see [`Controller::restore_waiting`]), sorted; empty when none waits.
    pub fn waiting_ipams(&self) -> Vec<String> {
        self.core()
            .map(|c| c.pending_ipam.names())
            .unwrap_or_default()
    }

    /// The names of the drivers that networks recorded before the controller was built wait
    /// for (see [`Controller::restore_waiting`] and [`Controller::register_driver`]), sorted;
    /// empty when none waits.
    pub fn waiting_drivers(&self) -> Vec<String> {
        self.core().map(|c| c.pending.names()).unwrap_or_default()
    }

    /// The networks recorded before the controller was built that wait for their IPAM driver
    /// or their driver, as recorded, by name. They are not among [`Controller::networks`]
    /// until restored; their names stay taken meanwhile.
    pub fn waiting_networks(&self) -> Vec<WaitingNetwork> {
        let Ok(core) = self.core() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        core.pending_ipam.each(|ipam, w| {
            out.push(WaitingNetwork::new(
                &w.record.value,
                &w.endpoints,
                WaitingFor::IpamDriver(ipam.to_owned()),
            ));
        });
        core.pending.each(|driver, p| {
            out.push(WaitingNetwork::new(
                &p.record.value,
                &p.endpoints,
                WaitingFor::Driver(driver.to_owned()),
            ));
        });
        out.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        out
    }

    /// Brings this controller's view of the cluster's global networks up to date now: adopts
    /// those other hosts created (each handed to its driver) and lets go of those they deleted.
    /// A background watch does the same after every change; this is for a caller that must
    /// see a network another host just created. Nothing without a cluster store.
    pub async fn sync_cluster(&self) -> Result<(), CoreError> {
        let core = self.core()?;
        if core.cluster().is_none() {
            return Ok(());
        }
        run_op(
            core,
            "sync",
            "the cluster's networks".to_owned(),
            |core| async move { ops::reload::sync_cluster(&core).await.map(drop) },
        )
        .await
    }

    /// Gives a running controller the cluster store it could not reach at build
    /// ([`ControllerBuilder::cluster_store_awaited`]), exactly as if
    /// [`ControllerBuilder::cluster_store`] had: from now on global networks are created,
    /// joined and deleted through it, drivers get their handle on it
    /// ([`DriverContext::store`], [`DriverContext::facts`] with this host's lease), and the
    /// cluster's global networks are adopted now and followed by a watch, like after a reload.
    ///
    /// Refused ([`CoreError::InvalidOption`], changing nothing) when the controller has a
    /// cluster store already. If the first listing of the cluster's networks fails, the store
    /// stays attached and the watch, started from the beginning of the store's history,
    /// catches up (its first change triggers a full sync).
    pub async fn attach_cluster_store(&self, store: Arc<dyn Store>) -> Result<(), CoreError> {
        let core = self.core()?;
        if core.cluster().is_some() {
            return Err(CoreError::invalid(
                "cluster store",
                "attach",
                "the controller has a cluster store already",
            ));
        }
        run_op(
            core,
            "attach",
            "the cluster store".to_owned(),
            |core| async move {
                let host_id = host_id(core.store.as_ref()).await?;
                // Drivers first: a global network that gets past the controller's check finds
                // its driver's handle there.
                if !core
                    .driver_context
                    .attach_cluster(store.clone(), host_id.clone())
                {
                    return Err(CoreError::invalid(
                        "cluster store",
                        "attach",
                        "the controller has a cluster store already",
                    ));
                }
                let cluster = crate::cluster::Cluster::new(store, host_id);
                if core.cluster.set(cluster).is_err() {
                    return Err(CoreError::invalid(
                        "cluster store",
                        "attach",
                        "the controller has a cluster store already",
                    ));
                }
                let cluster = core.cluster().expect("set just above");
                let revision = match ops::reload::sync_cluster(&core).await {
                    Ok(revision) => revision,
                    Err(e) => {
                        tracing::warn!(error = %e, "first sync with the cluster store failed; the watch catches up");
                        0
                    }
                };
                crate::cluster::watch(&core, cluster, revision)?;
                tracing::info!(
                    networks = core.networks.iter().filter(|n| n.is_global()).count(),
                    "cluster store attached"
                );
                Ok(())
            },
        )
        .await
    }

    /// This host's id in the cluster, as address claims and driver facts carry it: kept in the
    /// controller's own store, so stable across restarts, when the controller has a cluster
    /// store; made for this run otherwise.
    pub fn host_id(&self) -> Result<String, CoreError> {
        Ok(self.core()?.driver_context.host_id().to_owned())
    }

    /// Applies driver-wide options (libnetwork's `ConfigureNetworkDriver`).
    pub async fn configure_network_driver(
        &self,
        driver: &str,
        options: DriverOptions,
    ) -> Result<(), CoreError> {
        let d = self.core()?.driver(driver)?;
        d.configure(&options)
            .await
            .map_err(|e| CoreError::failed("configure driver", driver, e))
    }

    /// The host namespace.
    pub fn host_netns(&self) -> &NetNs {
        &self.shared.host_ns
    }

    /// The run dir.
    pub fn run_dir(&self) -> &Path {
        &self.shared.run_dir
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// The store (holding it keeps it open after a shutdown).
    pub fn store(&self) -> Result<Arc<dyn Store>, CoreError> {
        Ok(self.core()?.store.clone())
    }

    /// The IPAM.
    pub fn ipam(&self) -> Result<Arc<dyn Ipam>, CoreError> {
        Ok(self.core()?.ipam.clone())
    }

    /// The embedded DNS resolver, when on (see [`ControllerBuilder::embedded_dns`]): for its
    /// counters, or to offer it on the host with
    /// [`Resolver::listen_on_host`](cnm_dns::Resolver::listen_on_host). The controller keeps
    /// its records; a caller only reads or listens.
    pub fn dns_resolver(&self) -> Result<Option<cnm_dns::Resolver>, CoreError> {
        Ok(self.core()?.dns.resolver())
    }

    /// Where the host DNS listener answers ([`ControllerBuilder::host_dns`]), port 0 resolved;
    /// none when it was not asked for.
    pub fn host_dns(&self) -> Option<SocketAddr> {
        self.shared.host_dns
    }

    /// Handles on every object of one of the core's maps, sorted by `key`.
    fn all<T, H>(
        &self,
        map: impl Fn(&Core) -> &dashmap::DashMap<String, Arc<T>>,
        handle: fn(crate::state::CoreRef, Arc<T>) -> H,
        key: fn(&H) -> &str,
    ) -> Vec<H> {
        let Ok(core) = self.core() else {
            return Vec::new();
        };
        let mut v: Vec<H> = map(&core)
            .iter()
            .map(|e| handle(Arc::downgrade(&core), e.value().clone()))
            .collect();
        v.sort_by(|a, b| key(a).cmp(key(b)));
        v
    }

    /// The object of `map` whose id, name (`names` gives both) or unique id prefix is `key`
    /// (in that order, as Docker).
    fn one<T, H>(
        &self,
        what: &'static str,
        key: &str,
        map: impl Fn(&Core) -> &dashmap::DashMap<String, Arc<T>>,
        names: impl Fn(&T) -> (&String, &String),
        handle: fn(crate::state::CoreRef, Arc<T>) -> H,
    ) -> Result<H, CoreError> {
        let core = self.core()?;
        let candidates = map(&core)
            .iter()
            .map(|e| {
                let (name, id) = names(e.value());
                (name.clone(), id.clone(), e.value().clone())
            })
            .collect::<Vec<_>>();
        let inner = id::lookup(what, key, candidates)?;
        Ok(handle(Arc::downgrade(&core), inner))
    }

    /// Every network, sorted by name (none after shutdown).
    pub fn networks(&self) -> Vec<Network> {
        self.all(|c| &c.networks, Network::new, Network::name)
    }

    /// The network with this full id, name, or unique id prefix (in that order, as Docker).
    pub fn network(&self, key: &str) -> Result<Network, CoreError> {
        self.one(
            "network",
            key,
            |c| &c.networks,
            |n| (&n.name, &n.id),
            Network::new,
        )
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
        let core = self.core()?;
        let weak = Arc::downgrade(&core);
        let (driver, name) = (driver.to_owned(), name.to_owned());
        let ipam = options.ipam_driver.clone();
        let waited = core.pending.waits_for(&driver)
            || ipam
                .as_ref()
                .is_some_and(|i| core.pending_ipam.waits_for(i));
        let inner = run_op(core, "create network", name.clone(), |core| {
            ops::network_create::create_network(core, driver, name, options)
        })
        .await?;
        // Its driver or IPAM, found now (a plugin found by name), is one that networks recorded
        // before the controller was built wait for: they come back now. The network exists
        // whatever becomes of them.
        if waited && let Err(e) = self.restore_waiting().await {
            tracing::warn!(network = %inner.name, error = %e, "restoring the networks waiting for its driver or ipam driver failed");
        }
        Ok(Network::new(weak, inner))
    }

    /// What a network created with `options` on `driver` would keep without acting on: the
    /// driver options its driver does not know and every IPAM option (the built-in IPAM knows
    /// none), one warning each, for Docker's `Warning` in the create response. Docker keeps
    /// such keys and shows them in inspect, and so does cnm; values of known keys are checked
    /// strictly by [`Controller::new_network`]. The generic labels core owns are never named.
    /// Reads nothing but the options; `driver` must be registered (a driver a resolver finds by
    /// name is, once a network was created with it).
    pub fn option_warnings(
        &self,
        driver: &str,
        options: &NetworkOptions,
    ) -> Result<Vec<String>, CoreError> {
        let d = self.core()?.driver(driver)?;
        let mut out: Vec<String> = d
            .unknown_network_options(&options.driver_keys())
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
        let core = self.core()?;
        let weak = Arc::downgrade(&core);
        let cid = container_id.to_owned();
        let inner = run_op(core, "create sandbox", cid.clone(), |core| async move {
            ops::sandbox_create::find_or_create(&core, &cid, opts, false)
                .await
                .map(|(sb, _)| sb)
        })
        .await?;
        Ok(Sandbox::new(weak, inner))
    }

    /// The sandbox of a container.
    pub fn sandbox_by_container_id(&self, container_id: &str) -> Result<Sandbox, CoreError> {
        let core = self.core()?;
        let inner = core.require_sandbox_of(container_id)?;
        Ok(Sandbox::new(Arc::downgrade(&core), inner))
    }

    /// The sandbox with this full id, container id, or unique id prefix (in that order).
    ///
    /// A full id or a container id (what cnmd's callers pass on every connect and disconnect)
    /// is found in O(1); only a prefix scans every sandbox.
    pub fn sandbox(&self, key: &str) -> Result<Sandbox, CoreError> {
        let core = self.core()?;
        let exact = core
            .sandboxes
            .get(key)
            .map(|e| e.value().clone())
            // Only a committed sandbox, as the scan below sees them.
            .or_else(|| {
                core.sandbox_of(key)
                    .filter(|sb| core.sandboxes.contains_key(&sb.id))
            });
        if let Some(inner) = exact {
            return Ok(Sandbox::new(Arc::downgrade(&core), inner));
        }
        self.one(
            "sandbox",
            key,
            |c| &c.sandboxes,
            |s| (&s.container_id, &s.id),
            Sandbox::new,
        )
    }

    /// Every sandbox, sorted by container id (none after shutdown).
    pub fn sandboxes(&self) -> Vec<Sandbox> {
        self.all(|c| &c.sandboxes, Sandbox::new, Sandbox::container_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_is_linked_into_core_itself() {
        assert!(
            registered_drivers().is_empty(),
            "{:?}",
            registered_drivers()
        );
    }

    #[test]
    fn names_follow_docker() {
        for good in ["net_1.a-b", "a"] {
            assert!(crate::ops::check_name("network name", good).is_ok());
        }
        for bad in ["", "-a", "a b", "a/b", "é"] {
            let e = crate::ops::check_name("network name", bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}

/// What a [`WaitingNetwork`] waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingFor {
    /// Its driver, by name (a plugin not found yet).
    Driver(String),
    /// Its IPAM driver, by name (a plugin not found yet).
    IpamDriver(String),
}

impl fmt::Display for WaitingFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitingFor::Driver(n) => write!(f, "driver {n}"),
            WaitingFor::IpamDriver(n) => write!(f, "ipam driver {n}"),
        }
    }
}

/// A network recorded before the controller was built, waiting for its driver or its IPAM
/// driver ([`Controller::waiting_networks`]): its record and its endpoints' records.
#[derive(Debug, Clone)]
pub struct WaitingNetwork {
    /// The network as recorded.
    pub record: NetworkRecord,
    /// The options it was created with, from its record (`None` if the record's pools do not
    /// make valid options).
    pub options: Option<NetworkOptions>,
    /// Its endpoints as recorded.
    pub endpoints: Vec<EndpointRecord>,
    /// What it waits for.
    pub waits_for: WaitingFor,
}

impl WaitingNetwork {
    fn new(
        record: &NetworkRecord,
        endpoints: &[Versioned<EndpointRecord>],
        waits_for: WaitingFor,
    ) -> Self {
        Self {
            options: ops::reload::network_options(record).ok(),
            record: record.clone(),
            endpoints: endpoints.iter().map(|e| e.value.clone()).collect(),
            waits_for,
        }
    }
}
