//! Fakes for running the controller without root: a [`FakeKernel`] that keeps namespaces,
//! interfaces, routes and files in memory, and a [`FakeDriver`] that keeps its networks,
//! endpoints and joins in memory. Both record what was asked of them and fail at a chosen step
//! on request, so that tests can prove undo after a failure at every step.
//!
//! Built for core's unit tests and, with the `test-hooks` feature, for other crates' tests. A
//! fake kernel's sandboxes all share the caller's own namespace handle (opened without
//! privilege) for the [`SandboxRef`](crate::spi::SandboxRef) drivers get: a fake driver must
//! never use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cnm_sandbox::{
    HostsFile, InterfaceConfig, InterfaceSource, NetNs, Netlink, ResolvConf, RouteSpec,
    SandboxError,
};
use cnm_types::{ErrorKind, IfName, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::kernel::{HostView, Kernel, SandboxNs};
use crate::port::PortBinding;
use crate::spi::{
    Capability, Driver, DriverError, DriverOptions, EndpointInfo, EndpointSpec, JoinInfo,
    JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, ParsedOptions, PublishRequest,
    RestoredEndpoint,
};
use crate::sync::lock;

fn errno(op: &'static str, object: impl fmt::Display, errno: i32) -> SandboxError {
    SandboxError::Kernel {
        op,
        object: object.to_string(),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

// ---------------------------------------------------------------------------------------------
// Failure injection and call counts, for both fakes

/// The steps of a fake that were called, and the one to fail next.
pub struct Faults<S> {
    inner: Mutex<FaultsInner<S>>,
}

struct FaultsInner<S> {
    /// The step to fail, and how many calls of it to let through first.
    fail: Option<(S, usize)>,
    calls: BTreeMap<S, usize>,
}

impl<S> Default for Faults<S> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(FaultsInner {
                fail: None,
                calls: BTreeMap::new(),
            }),
        }
    }
}

impl<S: Copy + Ord + fmt::Debug> Faults<S> {
    /// Fails the next call of `step`, once.
    pub fn fail_next(&self, step: S) {
        self.fail_nth(step, 0);
    }

    /// Fails the call of `step` after `skip` more have succeeded, once.
    pub fn fail_nth(&self, step: S, skip: usize) {
        lock(&self.inner).fail = Some((step, skip));
    }

    /// Whether an armed failure is still pending (its step was not reached).
    pub fn pending(&self) -> bool {
        lock(&self.inner).fail.is_some()
    }

    /// Forgets an armed failure.
    pub fn disarm(&self) {
        lock(&self.inner).fail = None;
    }

    /// How many times each step was called.
    pub fn calls(&self) -> BTreeMap<S, usize> {
        lock(&self.inner).calls.clone()
    }

    /// Forgets the call counts.
    pub fn reset_calls(&self) {
        lock(&self.inner).calls.clear();
    }

    /// Counts a call of `step`; true when it must fail.
    fn enter(&self, step: S) -> bool {
        let mut inner = lock(&self.inner);
        *inner.calls.entry(step).or_default() += 1;
        match &mut inner.fail {
            Some((s, 0)) if *s == step => {
                inner.fail = None;
                true
            }
            Some((s, skip)) if *s == step => {
                *skip -= 1;
                false
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel

/// A method of the [`Kernel`] seam, for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KernelStep {
    /// [`Kernel::host_view`].
    HostView,
    /// [`Kernel::create_netns`].
    CreateNetns,
    /// [`Kernel::loopback_up`].
    LoopbackUp,
    /// [`Kernel::open_netns`].
    OpenNetns,
    /// [`Kernel::delete_netns`].
    DeleteNetns,
    /// [`Kernel::configure_interface`].
    ConfigureInterface,
    /// [`Kernel::move_to_host`].
    MoveToHost,
    /// [`Kernel::interface_index`].
    InterfaceIndex,
    /// [`Kernel::add_route`].
    AddRoute,
    /// [`Kernel::del_route`].
    DelRoute,
    /// [`Kernel::read_resolv_conf`].
    ReadResolvConf,
    /// [`Kernel::prepare_dir`].
    PrepareDir,
    /// [`Kernel::write_hosts`].
    WriteHosts,
    /// [`Kernel::write_resolv_conf`].
    WriteResolvConf,
    /// [`Kernel::remove_dir`].
    RemoveDir,
    /// [`Kernel::list_dir`].
    ListDir,
}

impl KernelStep {
    /// Every step.
    pub const ALL: [KernelStep; 16] = [
        Self::HostView,
        Self::CreateNetns,
        Self::LoopbackUp,
        Self::OpenNetns,
        Self::DeleteNetns,
        Self::ConfigureInterface,
        Self::MoveToHost,
        Self::InterfaceIndex,
        Self::AddRoute,
        Self::DelRoute,
        Self::ReadResolvConf,
        Self::PrepareDir,
        Self::WriteHosts,
        Self::WriteResolvConf,
        Self::RemoveDir,
        Self::ListDir,
    ];
}

/// An interface in the fake kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeInterface {
    /// Its index.
    pub index: u32,
    /// The MAC set on it.
    pub mac: Option<MacAddress>,
    /// The MTU set on it.
    pub mtu: Option<u32>,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
    /// IPv6 on.
    pub ipv6: bool,
    /// Up.
    pub up: bool,
}

/// A namespace in the fake kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeNamespace {
    /// Loopback is up.
    pub loopback_up: bool,
    /// Interfaces by name.
    pub interfaces: BTreeMap<IfName, FakeInterface>,
    /// Routes, in the order they were added.
    pub routes: Vec<RouteSpec>,
}

/// What the fake kernel holds: compare two to prove an operation changed nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// Namespaces by key.
    pub namespaces: BTreeMap<PathBuf, FakeNamespace>,
    /// The host's interfaces (what drivers make there and the controller moves in).
    pub host_interfaces: BTreeMap<IfName, FakeInterface>,
    /// Files by path.
    pub files: BTreeMap<PathBuf, String>,
    /// Directories.
    pub dirs: BTreeSet<PathBuf>,
}

/// The namespace of `key`, or ENOENT as the kernel would answer.
fn namespace<'m>(
    namespaces: &'m mut BTreeMap<PathBuf, FakeNamespace>,
    key: &Path,
) -> Result<&'m mut FakeNamespace, SandboxError> {
    namespaces
        .get_mut(key)
        .ok_or_else(|| errno("find netns", key.display(), libc::ENOENT))
}

#[derive(Default)]
struct KernelInner {
    state: KernelState,
    next_index: u32,
}

/// A kernel in memory. See the [module](self) documentation.
pub struct FakeKernel {
    host_netlink: Netlink,
    inner: Mutex<KernelInner>,
    faults: Faults<KernelStep>,
}

impl fmt::Debug for FakeKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeKernel")
            .field("state", &lock(&self.inner).state)
            .finish_non_exhaustive()
    }
}

impl FakeKernel {
    /// A fake kernel (needs a tokio runtime). Its host namespace, where the controller's
    /// firewall lives, is a throwaway one where the process may make one (as root: the
    /// firewall's reload, which replaces what it finds of cnm's tables, never reaches the real
    /// host's), else the caller's own, where the kernel refuses an unprivileged process every
    /// change.
    pub fn new() -> Result<Arc<Self>, SandboxError> {
        let throwaway = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            NetNs::current().ok()
        })
        .join()
        .ok()
        .flatten();
        let host_netlink = match throwaway {
            Some(ns) => Netlink::on_demand(&ns),
            None => Netlink::connect_current()?,
        };
        Ok(Arc::new(Self {
            host_netlink,
            inner: Mutex::new(KernelInner {
                next_index: 2,
                ..KernelInner::default()
            }),
            faults: Faults::default(),
        }))
    }

    /// Writes a file (the host's resolv.conf, say), creating its directory.
    pub fn put_file(&self, path: &Path, text: &str) {
        let mut inner = lock(&self.inner);
        if let Some(dir) = path.parent() {
            inner.state.dirs.insert(dir.to_owned());
        }
        inner.state.files.insert(path.to_owned(), text.to_owned());
    }

    /// Removes a file (what a crash before it was written leaves); says whether it was there.
    pub fn remove_file(&self, path: &Path) -> bool {
        lock(&self.inner).state.files.remove(path).is_some()
    }

    /// What the kernel holds now.
    pub fn state(&self) -> KernelState {
        lock(&self.inner).state.clone()
    }

    /// The failures armed and the calls counted (a step that fails answers EIO).
    pub fn faults(&self) -> &Faults<KernelStep> {
        &self.faults
    }

    /// Creates an interface (down, no address) in the namespace at `key`, or the host's with
    /// `None`; returns its index. What a driver's veth create does.
    pub fn add_interface(&self, key: Option<&Path>, name: &IfName) -> Result<u32, SandboxError> {
        let mut inner = lock(&self.inner);
        let index = inner.next_index;
        let KernelInner { state, .. } = &mut *inner;
        let interfaces = match key {
            None => &mut state.host_interfaces,
            Some(k) => {
                &mut state
                    .namespaces
                    .get_mut(k)
                    .ok_or_else(|| errno("create link in", k.display(), libc::ENOENT))?
                    .interfaces
            }
        };
        if interfaces.contains_key(name) {
            return Err(errno("create link", name, libc::EEXIST));
        }
        interfaces.insert(
            name.clone(),
            FakeInterface {
                index,
                mac: None,
                mtu: None,
                addresses: Vec::new(),
                ipv6: false,
                up: false,
            },
        );
        inner.next_index += 1;
        Ok(index)
    }

    /// Deletes an interface (and its routes) wherever it is: in the namespace at `key`, or the
    /// host's with `None`. Returns whether there was one.
    pub fn remove_interface(&self, key: Option<&Path>, name: &IfName) -> bool {
        let mut inner = lock(&self.inner);
        let state = &mut inner.state;
        match key {
            None => state.host_interfaces.remove(name).is_some(),
            Some(k) => match state.namespaces.get_mut(k) {
                Some(ns) => match ns.interfaces.remove(name) {
                    Some(i) => {
                        ns.routes.retain(|r| r.oif != Some(i.index));
                        true
                    }
                    None => false,
                },
                None => false,
            },
        }
    }

    /// Counts a call of `step`, failing it if armed.
    fn enter(&self, step: KernelStep, object: impl fmt::Display) -> Result<(), SandboxError> {
        if self.faults.enter(step) {
            return Err(SandboxError::Kernel {
                op: "fail on purpose in the fake kernel:",
                object: format!("{step:?} {object}"),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }

    fn with_ns<T>(
        &self,
        key: &Path,
        f: impl FnOnce(&mut FakeNamespace) -> Result<T, SandboxError>,
    ) -> Result<T, SandboxError> {
        let mut inner = lock(&self.inner);
        let ns = namespace(&mut inner.state.namespaces, key)?;
        f(ns)
    }

    fn sandbox_ns(&self, key: &Path) -> SandboxNs {
        SandboxNs {
            key: key.to_owned(),
            ns: self.host_netlink.netns().clone(),
            netlink: self.host_netlink.clone(),
        }
    }
}

/// Applies a configuration to an interface, as the kernel would, refusing what it would refuse.
fn apply(
    iface: &mut FakeInterface,
    config: &InterfaceConfig,
) -> Result<Vec<RouteSpec>, SandboxError> {
    if config.enable_ipv6 {
        iface.ipv6 = true;
    }
    if let Some(mac) = config.mac {
        iface.mac = Some(mac);
    }
    if let Some(mtu) = config.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(errno("set mtu of", iface.index, libc::EINVAL));
        }
        iface.mtu = Some(mtu);
    }
    for addr in &config.addresses {
        if iface.addresses.contains(addr) {
            return Err(errno("add address", addr, libc::EEXIST));
        }
        // An interface born with IPv6 off refuses IPv6 addresses.
        if matches!(addr, IpNet::V6(_)) && !iface.ipv6 {
            return Err(errno("add address", addr, libc::EACCES));
        }
        iface.addresses.push(*addr);
    }
    if config.up {
        iface.up = true;
    }
    Ok(config
        .routes
        .iter()
        .map(|r| {
            let mut r = *r;
            r.oif = Some(iface.index);
            r
        })
        .collect())
}

/// Adds a route, as the kernel would: refused when it exists or its next hop is not on a link.
fn add_route(ns: &mut FakeNamespace, route: &RouteSpec) -> Result<(), SandboxError> {
    if ns.routes.contains(route) {
        return Err(errno("add route", route.destination, libc::EEXIST));
    }
    if let Some(oif) = route.oif {
        let Some(iface) = ns.interfaces.values().find(|i| i.index == oif) else {
            return Err(errno("add route", route.destination, libc::ENODEV));
        };
        if let Some(gw) = route.gateway
            && !iface.addresses.iter().any(|a| a.contains(&gw))
        {
            return Err(errno("add route", route.destination, libc::ENETUNREACH));
        }
    }
    ns.routes.push(*route);
    Ok(())
}

#[async_trait]
impl Kernel for FakeKernel {
    fn host_netlink(&self) -> &Netlink {
        &self.host_netlink
    }

    async fn host_view(&self) -> Result<HostView, SandboxError> {
        self.enter(KernelStep::HostView, "host")?;
        Ok(HostView::default())
    }

    async fn create_netns(
        &self,
        key: &Path,
        _sysctls: &[(&str, &str)],
    ) -> Result<SandboxNs, SandboxError> {
        self.enter(KernelStep::CreateNetns, key.display())?;
        let mut inner = lock(&self.inner);
        if inner.state.namespaces.contains_key(key) {
            return Err(errno("create netns file", key.display(), libc::EEXIST));
        }
        inner
            .state
            .namespaces
            .insert(key.to_owned(), FakeNamespace::default());
        drop(inner);
        Ok(self.sandbox_ns(key))
    }

    async fn loopback_up(&self, sandbox: &SandboxNs) -> Result<(), SandboxError> {
        self.enter(KernelStep::LoopbackUp, sandbox.key.display())?;
        self.with_ns(&sandbox.key, |ns| {
            ns.loopback_up = true;
            Ok(())
        })
    }

    async fn open_netns(&self, key: &Path) -> Result<SandboxNs, SandboxError> {
        self.enter(KernelStep::OpenNetns, key.display())?;
        self.with_ns(key, |_| Ok(()))?;
        Ok(self.sandbox_ns(key))
    }

    async fn delete_netns(&self, key: &Path) -> Result<(), SandboxError> {
        self.enter(KernelStep::DeleteNetns, key.display())?;
        // As the kernel: the namespace's interfaces go with it (a veth takes its peer).
        lock(&self.inner)
            .state
            .namespaces
            .remove(key)
            .map(drop)
            .ok_or_else(|| errno("remove netns file", key.display(), libc::ENOENT))
    }

    async fn configure_interface(
        &self,
        sandbox: &SandboxNs,
        config: &InterfaceConfig,
    ) -> Result<u32, SandboxError> {
        self.enter(KernelStep::ConfigureInterface, config.source.name())?;
        let mut inner = lock(&self.inner);
        let state = &mut inner.state;
        let ns = namespace(&mut state.namespaces, &sandbox.key)?;
        let (name, mut iface, moved) = match &config.source {
            InterfaceSource::Existing { name, index } => {
                let iface = ns
                    .interfaces
                    .get(name)
                    .cloned()
                    .ok_or_else(|| errno("look up", name, libc::ENODEV))?;
                if index.is_some_and(|i| i != iface.index) {
                    return Err(errno("look up", name, libc::ENODEV));
                }
                (name.clone(), iface, None)
            }
            InterfaceSource::MoveIn { name, rename, .. } => {
                if ns.interfaces.contains_key(rename) {
                    return Err(errno("move", rename, libc::EEXIST));
                }
                let iface = state
                    .host_interfaces
                    .get(name)
                    .cloned()
                    .ok_or_else(|| errno("look up", name, libc::ENODEV))?;
                (rename.clone(), iface, Some(name.clone()))
            }
            _ => return Err(errno("configure", "interface", libc::EOPNOTSUPP)),
        };
        // All or nothing, as the real call is for a moved interface; an interface inside keeps
        // nothing of a failed configuration here (the driver's leave removes it anyway).
        let routes = apply(&mut iface, config)?;
        let mut candidate = ns.clone();
        candidate.interfaces.insert(name, iface.clone());
        for r in &routes {
            add_route(&mut candidate, r)?;
        }
        *ns = candidate;
        if let Some(host_name) = moved {
            state.host_interfaces.remove(&host_name);
        }
        Ok(iface.index)
    }

    async fn move_to_host(
        &self,
        sandbox: &SandboxNs,
        index: u32,
        name: &IfName,
    ) -> Result<(), SandboxError> {
        self.enter(KernelStep::MoveToHost, name)?;
        let mut inner = lock(&self.inner);
        let state = &mut inner.state;
        let ns = namespace(&mut state.namespaces, &sandbox.key)?;
        let Some(inside) = ns
            .interfaces
            .iter()
            .find(|(_, i)| i.index == index)
            .map(|(n, _)| n.clone())
        else {
            return Err(errno("move", index, libc::ENODEV));
        };
        if state.host_interfaces.contains_key(name) {
            return Err(errno("move", name, libc::EEXIST));
        }
        let mut iface = ns.interfaces.remove(&inside).expect("found above");
        ns.routes.retain(|r| r.oif != Some(index));
        // Addresses and routes do not travel across namespaces; the link comes down.
        iface.addresses.clear();
        iface.up = false;
        state.host_interfaces.insert(name.clone(), iface);
        Ok(())
    }

    async fn interface_index(
        &self,
        sandbox: &SandboxNs,
        name: &IfName,
    ) -> Result<Option<u32>, SandboxError> {
        self.enter(KernelStep::InterfaceIndex, name)?;
        self.with_ns(&sandbox.key, |ns| {
            Ok(ns.interfaces.get(name).map(|i| i.index))
        })
    }

    async fn add_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError> {
        self.enter(KernelStep::AddRoute, route.destination)?;
        self.with_ns(&sandbox.key, |ns| add_route(ns, route))
    }

    async fn del_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError> {
        self.enter(KernelStep::DelRoute, route.destination)?;
        self.with_ns(&sandbox.key, |ns| {
            match ns.routes.iter().position(|r| r == route) {
                Some(i) => {
                    ns.routes.remove(i);
                    Ok(())
                }
                None => Err(errno("delete route", route.destination, libc::ESRCH)),
            }
        })
    }

    async fn read_resolv_conf(&self, path: &Path) -> Result<ResolvConf, SandboxError> {
        self.enter(KernelStep::ReadResolvConf, path.display())?;
        Ok(lock(&self.inner)
            .state
            .files
            .get(path)
            .map(|t| ResolvConf::parse(t))
            .unwrap_or_default())
    }

    async fn prepare_dir(
        &self,
        dir: &Path,
        resolv_source: &Path,
    ) -> Result<ResolvConf, SandboxError> {
        self.enter(KernelStep::PrepareDir, dir.display())?;
        let mut inner = lock(&self.inner);
        inner.state.dirs.insert(dir.to_owned());
        Ok(inner
            .state
            .files
            .get(resolv_source)
            .map(|t| ResolvConf::parse(t))
            .unwrap_or_default())
    }

    fn write_hosts(&self, path: &Path, hosts: &HostsFile) -> Result<(), SandboxError> {
        self.enter(KernelStep::WriteHosts, path.display())?;
        write_file(&mut lock(&self.inner).state, path, hosts.render())
    }

    fn write_resolv_conf(&self, path: &Path, resolv: &ResolvConf) -> Result<(), SandboxError> {
        self.enter(KernelStep::WriteResolvConf, path.display())?;
        write_file(&mut lock(&self.inner).state, path, resolv.render())
    }

    fn file_exists(&self, path: &Path) -> bool {
        lock(&self.inner).state.files.contains_key(path)
    }

    async fn remove_dir(&self, dir: &Path) -> Result<(), SandboxError> {
        self.enter(KernelStep::RemoveDir, dir.display())?;
        let mut inner = lock(&self.inner);
        inner.state.dirs.retain(|d| !d.starts_with(dir));
        inner.state.files.retain(|f, _| !f.starts_with(dir));
        Ok(())
    }

    async fn list_dir(&self, dir: &Path) -> Result<Vec<String>, SandboxError> {
        self.enter(KernelStep::ListDir, dir.display())?;
        let inner = lock(&self.inner);
        let names = inner
            .state
            .namespaces
            .keys()
            .chain(&inner.state.dirs)
            .chain(inner.state.files.keys())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect::<BTreeSet<_>>();
        Ok(names.into_iter().collect())
    }
}

fn write_file(state: &mut KernelState, path: &Path, text: String) -> Result<(), SandboxError> {
    let dir = path.parent().unwrap_or(path);
    if !state.dirs.contains(dir) {
        return Err(errno("write", path.display(), libc::ENOENT));
    }
    state.files.insert(path.to_owned(), text);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The driver

/// A method of the [`Driver`] SPI, for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DriverStep {
    /// [`Driver::parse_network_options`].
    ParseNetworkOptions,
    /// [`Driver::parse_endpoint_options`].
    ParseEndpointOptions,
    /// [`Driver::create_network`].
    CreateNetwork,
    /// [`Driver::restore_network`].
    RestoreNetwork,
    /// [`Driver::delete_network`].
    DeleteNetwork,
    /// [`Driver::create_endpoint`].
    CreateEndpoint,
    /// [`Driver::delete_endpoint`].
    DeleteEndpoint,
    /// [`Driver::join`].
    Join,
    /// [`Driver::leave`].
    Leave,
    /// [`Driver::program_external_connectivity`].
    Program,
    /// [`Driver::revoke_external_connectivity`].
    Revoke,
    /// [`Driver::sweep`].
    Sweep,
    /// [`Driver::shutdown`].
    Shutdown,
}

impl DriverStep {
    /// Every step.
    pub const ALL: [DriverStep; 13] = [
        Self::ParseNetworkOptions,
        Self::ParseEndpointOptions,
        Self::CreateNetwork,
        Self::RestoreNetwork,
        Self::DeleteNetwork,
        Self::CreateEndpoint,
        Self::DeleteEndpoint,
        Self::Join,
        Self::Leave,
        Self::Program,
        Self::Revoke,
        Self::Sweep,
        Self::Shutdown,
    ];
}

/// How a [`FakeDriver`] makes the container's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeInterfaceMode {
    /// Inside the sandbox with the name asked for (as the bridge does).
    InSandbox,
    /// In the host, for the controller to move in (as a remote plugin does).
    MoveIn,
    /// None (as the null driver).
    None,
}

/// The options a [`FakeDriver`] parses: every key `fake.*`, kept as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeOptions(pub BTreeMap<String, String>);

/// What a fake driver holds: compare two to prove an operation changed nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverState {
    /// Networks by id, with their MTU.
    pub networks: BTreeMap<String, Option<u32>>,
    /// Endpoint id → network id.
    pub endpoints: BTreeMap<String, String>,
    /// Endpoint id → (sandbox key, the interface's host-side or inside name).
    pub joined: BTreeMap<String, (PathBuf, IfName)>,
    /// Endpoint id → ports published.
    pub published: BTreeMap<String, Vec<PortBinding>>,
}

#[derive(Default)]
struct DriverInner {
    state: DriverState,
    /// Whether every call about an object got its parsed options back.
    parsed_seen: Vec<bool>,
}

/// A driver in memory. See the [module](self) documentation.
pub struct FakeDriver {
    name: String,
    capability: Capability,
    mode: FakeInterfaceMode,
    kernel: Option<Arc<FakeKernel>>,
    /// Addresses `create_endpoint` gives, for families the controller assigned none in.
    gives: (Option<Ipv4Net>, Option<Ipv6Net>),
    /// Whether its joins ask for the controller's gateway network (as an overlay's).
    needs_gateway_network: bool,
    inner: Mutex<DriverInner>,
    faults: Faults<DriverStep>,
}

impl fmt::Debug for FakeDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDriver")
            .field("name", &self.name)
            .field("state", &lock(&self.inner).state)
            .finish_non_exhaustive()
    }
}

impl FakeDriver {
    /// A local-scope driver named `name` whose interfaces are born in the sandbox of `kernel`
    /// (none without a kernel), with an IPv4 gateway (the pool's).
    pub fn new(name: &str, kernel: Option<Arc<FakeKernel>>) -> Self {
        Self {
            name: name.to_owned(),
            capability: Capability::local(),
            mode: if kernel.is_some() {
                FakeInterfaceMode::InSandbox
            } else {
                FakeInterfaceMode::None
            },
            kernel,
            gives: (None, None),
            needs_gateway_network: false,
            inner: Mutex::new(DriverInner::default()),
            faults: Faults::default(),
        }
    }

    /// Sets what the driver says it can do.
    pub fn with_capability(mut self, capability: Capability) -> Self {
        self.capability = capability;
        self
    }

    /// Sets how it makes interfaces.
    pub fn with_mode(mut self, mode: FakeInterfaceMode) -> Self {
        self.mode = mode;
        self
    }

    /// Makes its joins give no gateway and ask for the controller's gateway network instead
    /// (as an overlay's).
    pub fn needing_gateway_network(mut self) -> Self {
        self.needs_gateway_network = true;
        self
    }

    /// Makes `create_endpoint` give these addresses.
    pub fn giving(mut self, ipv4: Option<Ipv4Net>, ipv6: Option<Ipv6Net>) -> Self {
        self.gives = (ipv4, ipv6);
        self
    }

    /// What the driver holds now.
    pub fn state(&self) -> DriverState {
        lock(&self.inner).state.clone()
    }

    /// The failures armed and the calls counted.
    pub fn faults(&self) -> &Faults<DriverStep> {
        &self.faults
    }

    /// Whether every call about a network or endpoint with options got them parsed.
    pub fn always_got_parsed_options(&self) -> bool {
        lock(&self.inner).parsed_seen.iter().all(|s| *s)
    }

    fn enter(&self, step: DriverStep) -> Result<(), DriverError> {
        if self.faults.enter(step) {
            return Err(self.fail(ErrorKind::Internal, format!("{step:?} fails on purpose")));
        }
        Ok(())
    }

    /// Notes whether raw options came back parsed.
    fn saw(&self, raw: &DriverOptions, parsed: &ParsedOptions) {
        let ok = raw.is_empty() || parsed.get::<FakeOptions>().is_some_and(|o| o.0 == *raw);
        lock(&self.inner).parsed_seen.push(ok);
    }

    fn parse(&self, raw: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        if let Some((key, value)) = raw.iter().find(|(k, _)| !k.starts_with("fake.")) {
            return Err(self.fail(
                ErrorKind::InvalidInput,
                format!("unknown option {key:?} (value {value:?})"),
            ));
        }
        Ok(if raw.is_empty() {
            ParsedOptions::none()
        } else {
            ParsedOptions::new(FakeOptions(raw.clone()))
        })
    }

    fn host_name(endpoint_id: &str) -> IfName {
        IfName::new(format!("fk{}", &endpoint_id[..8])).expect("10 bytes")
    }

    fn err(&self, e: SandboxError) -> DriverError {
        self.fail(e.kind(), e)
    }

    /// Removes `id` from one of the fake's tables: NotFound ("no such {what}") when absent.
    fn forget<V>(
        &self,
        table: &mut BTreeMap<String, V>,
        id: &str,
        what: &str,
    ) -> Result<(), DriverError> {
        table
            .remove(id)
            .map(drop)
            .ok_or_else(|| self.fail(ErrorKind::NotFound, format!("no such {what}")))
    }

    /// This driver's error of `kind`.
    fn fail(
        &self,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> DriverError {
        DriverError::new(&self.name, kind, source)
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capability(&self) -> Capability {
        self.capability
    }

    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        self.enter(DriverStep::ParseNetworkOptions)?;
        self.parse(options)
    }

    fn parse_endpoint_options(
        &self,
        options: &DriverOptions,
    ) -> Result<ParsedOptions, DriverError> {
        self.enter(DriverStep::ParseEndpointOptions)?;
        self.parse(options)
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        self.enter(DriverStep::CreateNetwork)?;
        self.saw(&spec.options, &spec.parsed);
        let mut inner = lock(&self.inner);
        if inner
            .state
            .networks
            .insert(spec.id.clone(), spec.mtu)
            .is_some()
        {
            return Err(self.fail(ErrorKind::AlreadyExists, "network exists"));
        }
        Ok(())
    }

    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        self.enter(DriverStep::RestoreNetwork)?;
        self.saw(&spec.options, &spec.parsed);
        let mut inner = lock(&self.inner);
        inner.state.networks.insert(spec.id.clone(), spec.mtu);
        for ep in endpoints {
            inner
                .state
                .endpoints
                .insert(ep.spec.endpoint_id.clone(), spec.id.clone());
        }
        Ok(())
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        self.enter(DriverStep::DeleteNetwork)?;
        self.forget(&mut lock(&self.inner).state.networks, network_id, "network")
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        self.enter(DriverStep::CreateEndpoint)?;
        self.saw(&spec.options, &spec.parsed);
        let mut inner = lock(&self.inner);
        if !inner.state.networks.contains_key(&spec.network_id) {
            return Err(self.fail(ErrorKind::NotFound, "no such network"));
        }
        inner
            .state
            .endpoints
            .insert(spec.endpoint_id.clone(), spec.network_id.clone());
        let mut info = EndpointInfo::with_mac(spec.mac.or(Some(MacAddress([
            0x02,
            0x42,
            0,
            0,
            0,
            inner.state.endpoints.len() as u8,
        ]))));
        if let Some(a) = self.gives.0 {
            info = info.ipv4(a);
        }
        if let Some(a) = self.gives.1 {
            info = info.ipv6(a);
        }
        Ok(info)
    }

    async fn delete_endpoint(
        &self,
        _network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.enter(DriverStep::DeleteEndpoint)?;
        let mut inner = lock(&self.inner);
        if inner.state.joined.contains_key(endpoint_id) {
            return Err(self.fail(ErrorKind::Conflict, "deleted while joined"));
        }
        self.forget(&mut inner.state.endpoints, endpoint_id, "endpoint")
    }

    async fn join(&self, req: &JoinRequest) -> Result<JoinInfo, DriverError> {
        self.enter(DriverStep::Join)?;
        self.saw(&req.options, &req.parsed);
        if !lock(&self.inner)
            .state
            .endpoints
            .contains_key(&req.endpoint_id)
        {
            return Err(self.fail(ErrorKind::NotFound, "no such endpoint"));
        }
        let (interface, name) = match (self.mode, &self.kernel) {
            (FakeInterfaceMode::InSandbox, Some(k)) => {
                let index = k
                    .add_interface(Some(&req.sandbox.key), &req.ifname)
                    .map_err(|e| self.err(e))?;
                (
                    JoinedInterface::InSandbox { index: Some(index) },
                    req.ifname.clone(),
                )
            }
            (FakeInterfaceMode::MoveIn, Some(k)) => {
                let name = Self::host_name(&req.endpoint_id);
                k.add_interface(None, &name).map_err(|e| self.err(e))?;
                (
                    JoinedInterface::MoveIn {
                        host_name: name.clone(),
                        name_prefix: None,
                    },
                    name,
                )
            }
            _ => (JoinedInterface::None, req.ifname.clone()),
        };
        lock(&self.inner)
            .state
            .joined
            .insert(req.endpoint_id.clone(), (req.sandbox.key.clone(), name));
        let mut info = JoinInfo::new(interface);
        if self.needs_gateway_network {
            info.disable_gateway_service = true;
            info.needs_gateway_network = true;
        } else if !self.capability.no_gateway {
            info.gateway_v4 = req
                .ipv4
                .map(|a| std::net::Ipv4Addr::from(u32::from(a.network()) + 1));
        }
        Ok(info)
    }

    async fn leave(&self, req: &LeaveRequest) -> Result<(), DriverError> {
        self.enter(DriverStep::Leave)?;
        let joined = lock(&self.inner).state.joined.remove(&req.endpoint_id);
        let Some((key, name)) = joined else {
            return Err(self.fail(ErrorKind::Conflict, "not joined"));
        };
        if let Some(k) = &self.kernel {
            // Deleting either end of a veth removes both, wherever the other end is.
            if !k.remove_interface(None, &name) {
                k.remove_interface(Some(&key), &req.ifname);
            }
        }
        Ok(())
    }

    async fn program_external_connectivity(
        &self,
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        self.enter(DriverStep::Program)?;
        let made: Vec<PortBinding> = request
            .bindings
            .iter()
            .map(|b| PortBinding {
                host_port: b
                    .host_port
                    .or_else(|| crate::port::PortRange::single(40000).ok()),
                ..*b
            })
            .collect();
        if !made.is_empty() {
            lock(&self.inner)
                .state
                .published
                .insert(request.endpoint_id.to_owned(), made.clone());
        }
        Ok(made)
    }

    async fn revoke_external_connectivity(
        &self,
        _network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.enter(DriverStep::Revoke)?;
        lock(&self.inner).state.published.remove(endpoint_id);
        Ok(())
    }

    async fn sweep(&self, _keep: &[String]) -> Result<(), DriverError> {
        self.enter(DriverStep::Sweep)
    }

    async fn shutdown(&self) -> Result<(), DriverError> {
        self.enter(DriverStep::Shutdown)
    }
}

/// An address in `net`'s family, for tests.
pub fn addr(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}
