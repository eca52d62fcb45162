//! The kernel as the controller uses it: one seam ([`Kernel`]) between the life cycle and the
//! machine, so that the life cycle runs against `cnm-sandbox` in production and against a fake
//! in unit tests (no root).
//!
//! The seam is at the level of what the controller means, not of netlink messages: create a
//! sandbox's namespace, finish an interface in one call ([`InterfaceConfig`]), add a route,
//! write a sandbox's files. [`NetlinkKernel`] maps each method to the `cnm-sandbox` call that
//! did the work before the seam existed, so the real path costs the same (the same threads, the
//! same netlink round trips).

use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use cnm_sandbox::{
    Address, HostsFile, InterfaceConfig, IpFamily, Link, NetNs, Netlink, ResolvConf, Route,
    RouteSpec, SandboxError,
};
use cnm_types::IfName;

/// A sandbox's network namespace as the kernel layer hands it out: where it is persisted, the
/// namespace, and a netlink handle inside it.
#[derive(Clone, Debug)]
pub struct SandboxNs {
    /// The sandbox key: the path the namespace is persisted at.
    pub key: std::path::PathBuf,
    /// The namespace.
    pub ns: NetNs,
    /// A netlink handle whose socket lives in it.
    pub netlink: Netlink,
}

/// What the host's namespace holds, as the controller reads it to keep new subnets off the
/// networks the host is on.
#[derive(Clone, Debug, Default)]
pub struct HostView {
    /// Every link.
    pub links: Vec<Link>,
    /// Every address.
    pub addresses: Vec<Address>,
    /// The main table's unicast routes of both families.
    pub routes: Vec<Route>,
}

/// Everything the controller asks of the kernel and the file system.
///
/// Object-safe and async; errors are the kernel layer's. Implemented by [`NetlinkKernel`] (the
/// real one); a test may plug another in with
/// [`ControllerBuilder::kernel`](crate::ControllerBuilder::kernel).
#[async_trait]
pub trait Kernel: Send + Sync + fmt::Debug {
    /// The namespace the controller treats as the host: the one of [`Kernel::host_netlink`].
    fn host_ns(&self) -> &NetNs {
        self.host_netlink().netns()
    }

    /// A netlink handle in the host namespace (drivers get it in their context).
    fn host_netlink(&self) -> &Netlink;

    /// The host namespace's links, addresses and routes.
    async fn host_view(&self) -> Result<HostView, SandboxError>;

    /// Creates a namespace persisted at `key` with `sysctls` set inside it, and a netlink handle
    /// in it. Leaves nothing behind on failure.
    async fn create_netns(
        &self,
        key: &Path,
        sysctls: &[(&str, &str)],
    ) -> Result<SandboxNs, SandboxError>;

    /// Brings up loopback in a sandbox.
    async fn loopback_up(&self, sandbox: &SandboxNs) -> Result<(), SandboxError>;

    /// Reopens the namespace persisted at `key` (after a restart).
    async fn open_netns(&self, key: &Path) -> Result<SandboxNs, SandboxError>;

    /// Opens the netlink sockets of many sandboxes at once, ahead of their use (a restart): one
    /// thread for them all instead of one per sandbox. Best effort: a socket that cannot be
    /// opened here is opened (or its failure reported) by its first use. The default does
    /// nothing.
    async fn open_sockets(&self, sandboxes: &[SandboxNs]) -> Result<(), SandboxError> {
        let _ = sandboxes;
        Ok(())
    }

    /// Removes the namespace persisted at `key`.
    async fn delete_netns(&self, key: &Path) -> Result<(), SandboxError>;

    /// Finishes an interface inside a sandbox in one call (see
    /// [`Netlink::configure_interface`]); returns its index.
    async fn configure_interface(
        &self,
        sandbox: &SandboxNs,
        config: &InterfaceConfig,
    ) -> Result<u32, SandboxError>;

    /// Moves the interface `index` of a sandbox back to the host namespace as `name`.
    async fn move_to_host(
        &self,
        sandbox: &SandboxNs,
        index: u32,
        name: &IfName,
    ) -> Result<(), SandboxError>;

    /// The index of the interface called `name` in a sandbox, if there is one.
    async fn interface_index(
        &self,
        sandbox: &SandboxNs,
        name: &IfName,
    ) -> Result<Option<u32>, SandboxError>;

    /// Adds a route in a sandbox.
    async fn add_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError>;

    /// Deletes a route in a sandbox.
    async fn del_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError>;

    /// Reads and parses a resolv.conf; a missing file is an empty one.
    async fn read_resolv_conf(&self, path: &Path) -> Result<ResolvConf, SandboxError>;

    /// Creates a sandbox's directory (and its parents), and reads the resolv.conf at
    /// `resolv_source` (a missing one is empty), in one trip to the blocking pool.
    async fn prepare_dir(
        &self,
        dir: &Path,
        resolv_source: &Path,
    ) -> Result<ResolvConf, SandboxError>;

    /// Writes a hosts file in place.
    fn write_hosts(&self, path: &Path, hosts: &HostsFile) -> Result<(), SandboxError>;

    /// Writes a resolv.conf in place.
    fn write_resolv_conf(&self, path: &Path, resolv: &ResolvConf) -> Result<(), SandboxError>;

    /// Whether a file exists.
    fn file_exists(&self, path: &Path) -> bool;

    /// Removes a directory and what it holds; a missing one is fine.
    async fn remove_dir(&self, dir: &Path) -> Result<(), SandboxError>;

    /// The entry names of a directory (none when it does not exist).
    async fn list_dir(&self, dir: &Path) -> Result<Vec<String>, SandboxError>;
}

/// The real kernel: `cnm-sandbox` over netlink, in the namespace that plays the host.
#[derive(Clone, Debug)]
pub struct NetlinkKernel {
    host_netlink: Netlink,
}

/// The sysctl that makes interfaces born in (or moved into) a sandbox start with IPv6 off.
pub(crate) const IPV6_DEFAULT_OFF: &str = "net.ipv6.conf.default.disable_ipv6";

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::Kernel {
        op,
        object: path.display().to_string(),
        source,
    }
}

fn joined(op: &'static str, path: &Path) -> impl FnOnce(tokio::task::JoinError) -> SandboxError {
    let object = path.display().to_string();
    move |_| SandboxError::ThreadPanicked { op, object }
}

/// Reads and parses a resolv.conf (blocking); a missing file is an empty one.
fn read_resolv_blocking(path: &Path) -> Result<ResolvConf, SandboxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(ResolvConf::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "resolv.conf source missing");
            Ok(ResolvConf::default())
        }
        Err(e) => Err(io_error("read", path, e)),
    }
}

impl NetlinkKernel {
    /// The kernel with `host_ns` as the host (a netlink handle is opened in it).
    pub async fn new(host_ns: NetNs) -> Result<Self, SandboxError> {
        let host_netlink = Netlink::connect(&host_ns).await?;
        Ok(Self { host_netlink })
    }

    /// The kernel with the caller's own namespace as the host (no thread: see
    /// [`Netlink::connect_current`]).
    pub fn current() -> Result<Self, SandboxError> {
        let host_netlink = Netlink::connect_current()?;
        Ok(Self { host_netlink })
    }
}

#[async_trait]
impl Kernel for NetlinkKernel {
    fn host_netlink(&self) -> &Netlink {
        &self.host_netlink
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn host_view(&self) -> Result<HostView, SandboxError> {
        let nl = &self.host_netlink;
        // One after the other: the kernel runs one dump at a time per netlink socket (a second
        // one started meanwhile fails with EBUSY).
        let links = nl.links().await?;
        let addresses = nl.addresses(None).await?;
        let mut routes = nl.routes(IpFamily::V4).await?;
        routes.extend(nl.routes(IpFamily::V6).await?);
        Ok(HostView {
            links,
            addresses,
            routes,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn create_netns(
        &self,
        key: &Path,
        sysctls: &[(&str, &str)],
    ) -> Result<SandboxNs, SandboxError> {
        // One thread creates the namespace, sets its sysctls and opens its netlink socket.
        let (ns, netlink) = Netlink::create_netns(key, sysctls).await?;
        Ok(SandboxNs {
            key: key.to_owned(),
            ns,
            netlink,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn loopback_up(&self, sandbox: &SandboxNs) -> Result<(), SandboxError> {
        sandbox.netlink.loopback_up().await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn open_netns(&self, key: &Path) -> Result<SandboxNs, SandboxError> {
        let ns = NetNs::open(key)?;
        // Opened on first use, and closed again by the pool when idle: a sandbox holds no
        // netlink socket of its own.
        let netlink = Netlink::on_demand(&ns);
        Ok(SandboxNs {
            key: key.to_owned(),
            ns,
            netlink,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn open_sockets(&self, sandboxes: &[SandboxNs]) -> Result<(), SandboxError> {
        let handles: Vec<Netlink> = sandboxes.iter().map(|s| s.netlink.clone()).collect();
        Netlink::open_all(&handles).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_netns(&self, key: &Path) -> Result<(), SandboxError> {
        NetNs::delete(key).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn configure_interface(
        &self,
        sandbox: &SandboxNs,
        config: &InterfaceConfig,
    ) -> Result<u32, SandboxError> {
        sandbox.netlink.configure_interface(config).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn move_to_host(
        &self,
        sandbox: &SandboxNs,
        index: u32,
        name: &IfName,
    ) -> Result<(), SandboxError> {
        sandbox
            .netlink
            .move_to_netns(index, self.host_netlink.netns(), Some(name))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn interface_index(
        &self,
        sandbox: &SandboxNs,
        name: &IfName,
    ) -> Result<Option<u32>, SandboxError> {
        Ok(sandbox.netlink.link(name.as_str()).await?.map(|l| l.index))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn add_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError> {
        sandbox.netlink.add_route(route).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn del_route(&self, sandbox: &SandboxNs, route: &RouteSpec) -> Result<(), SandboxError> {
        sandbox.netlink.del_route(route).await
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn read_resolv_conf(&self, path: &Path) -> Result<ResolvConf, SandboxError> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || read_resolv_blocking(&owned))
            .await
            .map_err(joined("read", path))?
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn prepare_dir(
        &self,
        dir: &Path,
        resolv_source: &Path,
    ) -> Result<ResolvConf, SandboxError> {
        let (d, source) = (dir.to_owned(), resolv_source.to_owned());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&d).map_err(|e| io_error("create directory", &d, e))?;
            read_resolv_blocking(&source)
        })
        .await
        .map_err(joined("create directory", dir))?
    }

    #[tracing::instrument(level = "debug", skip_all)]
    fn write_hosts(&self, path: &Path, hosts: &HostsFile) -> Result<(), SandboxError> {
        hosts.write(path)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    fn write_resolv_conf(&self, path: &Path, resolv: &ResolvConf) -> Result<(), SandboxError> {
        resolv.write(path)
    }

    fn file_exists(&self, path: &Path) -> bool {
        path.exists()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn remove_dir(&self, dir: &Path) -> Result<(), SandboxError> {
        match tokio::fs::remove_dir_all(dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("remove directory", dir, e))
            }
            _ => Ok(()),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list_dir(&self, dir: &Path) -> Result<Vec<String>, SandboxError> {
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_error("read directory", dir, e)),
        };
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| io_error("read directory", dir, e))?
        {
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }
}
