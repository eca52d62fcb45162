//! An rtnetlink handle whose socket was created inside one namespace; usable from any task.
//!
//! Messages are built here from typed specs and sent as single requests: one link lookup is one
//! `RTM_GETLINK` with `IFLA_IFNAME` (never a dump), and a veth is created with its peer already
//! inside the sandbox, named, addressed and up, in one `RTM_NEWLINK`.
//!
//! [`Netlink::delete_link_named`] returns when the kernel has unlisted a link (its `RTM_DELLINK`
//! notification), not when it has freed it: the kernel's ack waits out RCU grace periods.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use cnm_types::{IfName, MacAddress};
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, InfoVxlan, IpVlanMode,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkProtoInfoBridge, MacVlanMode,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::{IpvlanMode, MacvlanMode};
use crate::ns::{create_persisted, delete_persisted, on_thread};
use crate::{Address, IpFamily, Link, LinkKind, LinkSpec, NetNs, Route, RouteSpec, SandboxError};

/// A failure to open a connection as the `io::Error` the requests report.
fn sandbox_to_io(e: SandboxError) -> io::Error {
    match e {
        SandboxError::Kernel { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// The loopback device's index in every namespace (`LOOPBACK_IFINDEX` in the kernel).
const LOOPBACK_IFINDEX: u32 = 1;

/// An rtnetlink connection bound to one network namespace. Clone is cheap.
///
/// A handle of a sandbox's namespace ([`Netlink::on_demand`], [`Netlink::create_netns`]) holds
/// its socket only while it is among the [`POOL_LIMIT`] most recently opened ones: the pool
/// closes the oldest (a socket, a connection task and its 72 KiB of buffers) and the next
/// request opens it again on a thread in the namespace. So a process holding thousands of idle
/// sandboxes keeps a bounded number of netlink sockets. A handle opened by
/// [`Netlink::connect`] or [`Netlink::connect_current`] (the host's) stays open.
#[derive(Clone, Debug)]
pub struct Netlink {
    conn: Arc<Conn>,
    ns: NetNs,
    /// Link notifications of the namespace, subscribed on first use (see `delete_link_named`).
    watch: Arc<tokio::sync::OnceCell<Arc<LinkWatch>>>,
    /// Held for the length of a dump: the kernel runs one dump at a time per socket and fails a
    /// second one started meanwhile with EBUSY (`netlink_dump_start`), and every clone of this
    /// handle shares the socket.
    dumps: Arc<tokio::sync::Mutex<()>>,
}

/// The socket of a [`Netlink`] and its clones.
#[derive(Debug)]
struct Conn {
    /// The open connection's handle: `None` before first use and once the pool closed it. A
    /// request clones it, so a close lets the requests in flight finish on the old socket.
    handle: Mutex<Option<rtnetlink::Handle>>,
    /// One opening at a time.
    opening: tokio::sync::Mutex<()>,
    /// Whether the pool may close it.
    pooled: bool,
}

impl Conn {
    fn new(handle: Option<rtnetlink::Handle>, pooled: bool) -> Arc<Conn> {
        Arc::new(Conn {
            handle: Mutex::new(handle),
            opening: tokio::sync::Mutex::new(()),
            pooled,
        })
    }

    fn current(&self) -> Option<rtnetlink::Handle> {
        self.handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How many pooled netlink sockets (those of sandboxes' namespaces) a process keeps open at
/// most, unless [`set_pool_limit`] says otherwise: enough for the sandboxes being worked on at
/// once, few enough that descriptors and memory do not grow with the idle ones.
pub const POOL_LIMIT: usize = 64;

/// The pooled connections in the order they were opened (oldest first), and the limit.
struct Pool {
    open: std::collections::VecDeque<Weak<Conn>>,
    limit: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    open: std::collections::VecDeque::new(),
    limit: POOL_LIMIT,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // Every critical section is a queue update: a poisoned lock still holds a valid queue.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets how many pooled netlink sockets the process keeps open at most (at least one); the
/// oldest beyond it are closed now.
pub fn set_pool_limit(limit: usize) {
    let evicted = {
        let mut p = pool();
        p.limit = limit.max(1);
        p.evict()
    };
    close(evicted);
}

/// How many pooled netlink sockets are open now.
pub fn pool_open() -> usize {
    pool()
        .open
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|c| c.current().is_some())
        .count()
}

impl Pool {
    /// Takes the oldest entries beyond the limit (dropped handles' entries count until then).
    fn evict(&mut self) -> Vec<Weak<Conn>> {
        let extra = self.open.len().saturating_sub(self.limit);
        self.open.drain(..extra).collect()
    }
}

/// Closes the connections `evicted` (outside the pool's lock: dropping a handle wakes its task).
fn close(evicted: Vec<Weak<Conn>>) {
    for conn in evicted.iter().filter_map(Weak::upgrade) {
        drop(
            conn.handle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// Puts a pooled connection just opened at the young end, closing the oldest beyond the limit.
fn admit(conn: &Arc<Conn>) {
    let evicted = {
        let mut p = pool();
        p.open.push_back(Arc::downgrade(conn));
        p.evict()
    };
    close(evicted);
}

/// Waiters for the RTM_DELLINK notification of a link, by name, fed by a multicast netlink
/// connection subscribed to RTNLGRP_LINK in the namespace.
#[derive(Debug)]
struct LinkWatch {
    waiters: Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>,
    /// Keeps the multicast connection open: it closes once the last handle is dropped.
    _handle: rtnetlink::Handle,
}

impl LinkWatch {
    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>> {
        // Every critical section is a plain map update: a poisoned lock still holds a valid map.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify_deleted(&self, name: &str) {
        if let Some(senders) = self.waiters().remove(name) {
            for tx in senders {
                // The waiter may have given up already (its delete failed or was cancelled).
                let _ = tx.send(());
            }
        }
    }
}

/// Forgets a waiter whatever way the wait ends.
struct WaiterGuard<'a> {
    watch: &'a LinkWatch,
    name: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut waiters = self.watch.waiters();
        if let Some(list) = waiters.get_mut(self.name) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(self.name);
            }
        }
    }
}

/// A neighbour (ARP/NDP) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface index.
    pub index: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its link-layer address, if resolved.
    pub mac: Option<MacAddress>,
    /// Whether the entry is permanent (static).
    pub permanent: bool,
}

/// A forwarding database (bridge/vxlan FDB) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// Interface index of the port or vxlan device.
    pub index: u32,
    /// The MAC address.
    pub mac: MacAddress,
    /// Remote VTEP, for vxlan entries.
    pub dst: Option<IpAddr>,
    /// Whether the entry is permanent (static).
    pub permanent: bool,
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket inside `ns` and drives it on the current tokio runtime.
    ///
    /// The socket is created on a short-lived thread that entered `ns` (a netlink socket belongs
    /// to the namespace it was created in); the connection task then runs on tokio, and the
    /// handle works from any task.
    pub async fn connect(ns: &NetNs) -> Result<Netlink, SandboxError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SandboxError::NoRuntime {
                op: "connect netlink in",
                object: ns.to_string(),
            })?;
        let inside = ns.clone();
        let shown = ns.to_string();
        let (connection, handle, _events) =
            on_thread("connect netlink in", ns.to_string(), move || {
                inside.enter()?;
                // The socket registers with the reactor of the runtime we were called from.
                let _guard = runtime.enter();
                rtnetlink::new_connection()
                    .map_err(|e| SandboxError::kernel("open netlink socket in", shown, e))
            })?
            .wait()
            .await??;
        tokio::spawn(connection);
        Ok(Netlink::from_parts(handle, ns.clone(), false))
    }

    /// A handle of `ns` that opens its socket on first use, pooled (see [`Netlink`]): nothing
    /// is opened here.
    pub fn on_demand(ns: &NetNs) -> Netlink {
        Netlink {
            conn: Conn::new(None, true),
            ns: ns.clone(),
            watch: Arc::new(tokio::sync::OnceCell::new()),
            dumps: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Opens the sockets of many handles (those of [`Netlink::on_demand`]) on one thread that
    /// enters each namespace in turn: a restart reaching thousands of sandboxes starts one
    /// thread per batch, not one per namespace (issue 15). A handle already open is skipped;
    /// one whose namespace cannot be entered or whose socket cannot be opened is left unopened
    /// (its first request tries again, and says why it cannot). Pooled handles join the pool:
    /// open no more at once than it holds (see [`set_pool_limit`]).
    pub async fn open_all(handles: &[Netlink]) -> Result<(), SandboxError> {
        let todo: Vec<&Netlink> = handles.iter().filter(|h| !h.is_open()).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SandboxError::NoRuntime {
                op: "connect netlink in",
                object: format!("{} namespaces", todo.len()),
            })?;
        let namespaces: Vec<NetNs> = todo.iter().map(|h| h.ns.clone()).collect();
        let shown = format!("{} namespaces", namespaces.len());
        let opened = on_thread("connect netlink in", shown, move || {
            // The sockets register with the reactor of the runtime we were called from; each
            // belongs to the namespace the thread was in when it was made.
            let _guard = runtime.enter();
            namespaces
                .iter()
                .map(|ns| {
                    ns.enter().ok()?;
                    rtnetlink::new_connection().ok()
                })
                .collect::<Vec<_>>()
        })?
        .wait()
        .await?;
        for (h, opened) in todo.into_iter().zip(opened) {
            let Some((connection, handle, _events)) = opened else {
                continue;
            };
            let _one = h.conn.opening.lock().await;
            if h.conn.current().is_some() {
                // Opened meanwhile by a request: this socket closes as it is dropped.
                continue;
            }
            tokio::spawn(connection);
            *h.conn.handle.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            if h.conn.pooled {
                admit(&h.conn);
            }
        }
        Ok(())
    }

    /// Whether this handle's socket is open now (a pooled one may have been closed).
    pub fn is_open(&self) -> bool {
        self.conn.current().is_some()
    }

    /// The open connection's handle, opening it (on a thread in the namespace) if the pool
    /// closed it or it was never opened.
    async fn handle(&self) -> io::Result<rtnetlink::Handle> {
        if let Some(h) = self.conn.current() {
            return Ok(h);
        }
        let _one = self.conn.opening.lock().await;
        if let Some(h) = self.conn.current() {
            return Ok(h);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other(format!("no tokio runtime to open netlink in {}", self.ns))
        })?;
        let inside = self.ns.clone();
        let opened = on_thread("connect netlink in", self.ns.to_string(), move || {
            inside.enter()?;
            let _guard = runtime.enter();
            rtnetlink::new_connection()
                .map_err(|e| SandboxError::kernel("open netlink socket in", inside.to_string(), e))
        })
        .map_err(sandbox_to_io)?
        .wait()
        .await
        .map_err(sandbox_to_io)?;
        let (connection, handle, _events) = opened.map_err(sandbox_to_io)?;
        tokio::spawn(connection);
        *self
            .conn
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(handle.clone());
        if self.conn.pooled {
            admit(&self.conn);
        }
        Ok(handle)
    }

    /// Opens a NETLINK_ROUTE socket in the calling thread's own namespace and drives it on the
    /// current tokio runtime: no thread, no `setns`, so no privilege is needed. On a tokio
    /// worker that namespace is the process's (nothing in cnm ever moves a worker).
    pub fn connect_current() -> Result<Netlink, SandboxError> {
        let ns = NetNs::current()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SandboxError::NoRuntime {
                op: "connect netlink in",
                object: ns.to_string(),
            });
        }
        let (connection, handle, _events) = rtnetlink::new_connection()
            .map_err(|e| SandboxError::kernel("open netlink socket in", ns.to_string(), e))?;
        tokio::spawn(connection);
        Ok(Netlink::from_parts(handle, ns, false))
    }

    fn from_parts(handle: rtnetlink::Handle, ns: NetNs, pooled: bool) -> Netlink {
        let conn = Conn::new(Some(handle), pooled);
        if pooled {
            admit(&conn);
        }
        Netlink {
            conn,
            ns,
            watch: Arc::new(tokio::sync::OnceCell::new()),
            dumps: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Creates a namespace persisted at `path` (as [`NetNs::create`]), sets `sysctls` inside it
    /// and opens a netlink connection to it, all on the one thread that created it: one thread
    /// instead of three (each costs a clone, a `setns` and a wake-up).
    ///
    /// A sysctl the kernel does not have (no such file: say, IPv6 settings on a kernel without
    /// IPv6) is skipped. On any failure the namespace is removed again.
    pub async fn create_netns(
        path: impl AsRef<Path>,
        sysctls: &[(&str, &str)],
    ) -> Result<(NetNs, Netlink), SandboxError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SandboxError::NoRuntime {
                op: "create netns",
                object: path.as_ref().display().to_string(),
            })?;
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let mut settings = Vec::with_capacity(sysctls.len());
        for (key, value) in sysctls {
            settings.push((key.to_string(), crate::sysctl_path(key)?, value.to_string()));
        }
        let (ns, connection, handle) = on_thread("create netns", shown.clone(), move || {
            // create_persisted leaves this thread inside the new namespace.
            let ns = create_persisted(&path)?;
            let configured = (|| {
                for (key, file, value) in settings {
                    match std::fs::write(&file, value.as_bytes()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            tracing::debug!(%key, "sysctl absent in this kernel; skipped");
                        }
                        Err(e) => {
                            return Err(SandboxError::kernel(
                                "set sysctl",
                                format!("{key} in {ns}"),
                                e,
                            ));
                        }
                    }
                }
                let _guard = runtime.enter();
                let (connection, handle, _events) = rtnetlink::new_connection()
                    .map_err(|e| SandboxError::kernel("open netlink socket in", ns.to_string(), e))?;
                Ok((connection, handle))
            })();
            match configured {
                Ok((connection, handle)) => Ok((ns, connection, handle)),
                Err(primary) => {
                    if let Err(e) = delete_persisted(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cleanup after failed netns create");
                    }
                    Err(primary)
                }
            }
        })
        ?.wait().await??;
        tokio::spawn(connection);
        // A sandbox's: pooled, like those of reopened namespaces.
        let netlink = Netlink::from_parts(handle, ns.clone(), true);
        Ok((ns, netlink))
    }

    /// The namespace this handle talks to.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Sends one request and collects the replies; a NACK becomes the errno it carries.
    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let _dump = if flags & NLM_F_DUMP == NLM_F_DUMP {
            Some(self.dumps.lock().await)
        } else {
            None
        };
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle().await?;
        let mut replies = handle
            .request(nl)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// A dump: every reply `parse` keeps, in order; a failure names `op` and the namespace.
    async fn dump<T>(
        &self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        parse: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, SandboxError> {
        let replies = self
            .request(msg, NLM_F_DUMP)
            .await
            .map_err(|e| SandboxError::kernel(op, self.ns.to_string(), e))?;
        Ok(replies.into_iter().filter_map(parse).collect())
    }

    /// A change acknowledged by the kernel.
    async fn change(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, NLM_F_ACK | flags).await.map(drop)
    }

    fn object(&self, what: impl std::fmt::Display) -> String {
        format!("{what} in {}", self.ns)
    }

    /// A change acknowledged by the kernel; a failure names `op` and the object `what` gives
    /// (built only on failure, so the success path allocates nothing for it).
    async fn apply(
        &self,
        op: &'static str,
        what: impl FnOnce() -> String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), SandboxError> {
        self.change(msg, flags)
            .await
            .map_err(|e| SandboxError::kernel(op, self.object(what()), e))
    }

    /// [`apply`](Self::apply) for an object the kernel must not hold yet
    /// (`NLM_F_CREATE | NLM_F_EXCL`).
    async fn create(
        &self,
        op: &'static str,
        what: impl FnOnce() -> String,
        msg: RouteNetlinkMessage,
    ) -> Result<(), SandboxError> {
        self.apply(op, what, msg, NLM_F_CREATE | NLM_F_EXCL).await
    }

    /// A [`dump`](Self::dump) of objects that belong to a link (addresses, neighbours, FDB
    /// entries), kept to those of link `index` with `Some`; `link_of` reads an object's link.
    async fn dump_of_link<T>(
        &self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        index: Option<u32>,
        parse: impl Fn(RouteNetlinkMessage) -> Option<T>,
        link_of: fn(&T) -> u32,
    ) -> Result<Vec<T>, SandboxError> {
        self.dump(op, msg, |m| {
            parse(m).filter(|t| index.is_none_or(|i| link_of(t) == i))
        })
        .await
    }

    // ---- links ----

    /// Creates a link as specified, with MTU, MAC, master and up state in the same message.
    pub async fn create_link(&self, spec: &LinkSpec) -> Result<(), SandboxError> {
        spec.validate()?;
        // Open until the request is answered (the kernel takes the namespaces from them then).
        let netns_fd = spec.netns.as_ref().map(NetNs::fd).transpose()?;
        let peer_fd = match &spec.kind {
            LinkKind::Veth {
                peer_ns: Some(ns), ..
            } => Some(ns.fd()?),
            _ => None,
        };
        let msg = link_create_message(
            spec,
            netns_fd.as_ref().map(|f| f.as_fd().as_raw_fd()),
            peer_fd.as_ref().map(|f| f.as_fd().as_raw_fd()),
        );
        let object = match &spec.kind {
            LinkKind::Veth {
                peer_name, peer_ns, ..
            } => match peer_ns {
                Some(p) => self.object(format!("{} (peer {peer_name} in {p})", spec.name)),
                None => self.object(format!("{} (peer {peer_name})", spec.name)),
            },
            _ => self.object(&spec.name),
        };
        let op = spec.kind.create_op();
        tracing::debug!(name = %spec.name, kind = spec.kind.kernel_name(), "create link");
        self.change(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map_err(|e| match e.raw_os_error() {
                // "Unknown device type": the kernel has no driver for this link type (and could
                // not load its module). Nothing was created.
                Some(libc::EOPNOTSUPP) => SandboxError::Unsupported {
                    op,
                    object: object.clone(),
                    reason: unsupported_reason(&spec.kind),
                },
                _ => SandboxError::kernel(op, object.clone(), e),
            })?;
        if let LinkKind::Veth {
            peer_name,
            peer_ns,
            peer_up: true,
            ..
        } = &spec.kind
        {
            // The kernel configures the peer before the pair is linked, and veth_open refuses
            // (ENOTCONN) to open a device without a peer: so "up" cannot ride in the peer's
            // create message. Bring it up by name in its namespace instead.
            let up = match peer_ns {
                Some(ns) if *ns != self.ns => {
                    Netlink::connect(ns).await?.set_up_by_name(peer_name).await
                }
                _ => self.set_up_by_name(peer_name).await,
            };
            up.map_err(|e| match e {
                SandboxError::Kernel { source, .. } => {
                    SandboxError::kernel("bring up veth peer of", object, source)
                }
                other => other,
            })?;
        }
        Ok(())
    }

    /// Brings a link up by name (`RTM_SETLINK` with `IFLA_IFNAME`, no lookup round trip).
    pub async fn set_up_by_name(&self, name: &IfName) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(name.as_str().to_owned()));
        self.apply(
            "set up",
            || name.to_string(),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .await
    }

    /// The link named `name`, `None` if absent (one `RTM_GETLINK`, no dump).
    pub async fn link(&self, name: &str) -> Result<Option<Link>, SandboxError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg, || self.object(name)).await
    }

    /// The link with index `index`, `None` if absent.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || self.object(format_args!("link {index}")))
            .await
    }

    async fn get_link(
        &self,
        msg: LinkMessage,
        object: impl FnOnce() -> String,
    ) -> Result<Option<Link>, SandboxError> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0).await {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => {
                Ok(None)
            }
            Err(e) => Err(SandboxError::kernel("get link", object(), e)),
        }
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<Link>, SandboxError> {
        let msg = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump("list links", msg, |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
            _ => None,
        })
        .await
    }

    /// The links enslaved to the link `master` (a bridge's ports).
    ///
    /// The kernel filters the dump (`IFLA_MASTER` in the request, `rtnl_dump_ifinfo`), so a
    /// bridge's ports cost what they are, not what the whole namespace holds: with 10,000
    /// veths over 10 bridges, a full dump per bridge was 100,000 links to parse (issue 15).
    /// The replies are checked again here, for a kernel that would send everything.
    pub async fn links_of_master(&self, master: u32) -> Result<Vec<Link>, SandboxError> {
        self.links_filtered("list ports of a link", LinkAttribute::Controller(master))
            .await
            .map(|links| {
                links
                    .into_iter()
                    .filter(|l| l.master == Some(master))
                    .collect()
            })
    }

    /// The bridges (links of kind `bridge`), filtered by the kernel as
    /// [`links_of_master`](Self::links_of_master) is, and checked again here.
    pub async fn bridges(&self) -> Result<Vec<Link>, SandboxError> {
        self.links_filtered(
            "list bridges",
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        )
        .await
        .map(|links| {
            links
                .into_iter()
                .filter(|l| l.kind.as_deref() == Some("bridge"))
                .collect()
        })
    }

    /// A link dump the kernel filters by `filter` (`IFLA_MASTER` or `IFLA_LINKINFO`'s kind).
    async fn links_filtered(
        &self,
        op: &'static str,
        filter: LinkAttribute,
    ) -> Result<Vec<Link>, SandboxError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(filter);
        self.dump(op, RouteNetlinkMessage::GetLink(msg), |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
            _ => None,
        })
        .await
    }

    /// Deletes a link (for a veth, both ends go).
    pub async fn delete_link(&self, index: u32) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.apply(
            "delete link",
            || format!("link {index}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        )
        .await
    }

    /// Deletes the link named `name` (a veth takes its peer with it) and returns as soon as the
    /// kernel has unlisted it; `Ok(false)` if there is no such link.
    ///
    /// Why not a plain `RTM_DELLINK` and its ack: the kernel acks only after
    /// `unregister_netdevice` has waited out RCU grace periods (`synchronize_net`, then
    /// `rcu_barrier` in `netdev_run_todo`), 15-40 ms on a busy machine, and the sending thread
    /// sits in `sendmsg` all that time (a tokio worker, if sent through the shared connection).
    /// So the request goes out on a thread of its own, and we return on the link's
    /// `RTM_DELLINK` notification, which the kernel sends once the device is closed, unlisted
    /// (its name and index free), detached from its master and stripped of addresses and
    /// routes: everything anyone can observe. The thread finishes the wait in the background.
    pub async fn delete_link_named(&self, name: &str) -> Result<bool, SandboxError> {
        let object = || self.object(name);
        let watch = match self.link_watch().await {
            Ok(w) => Some(w),
            Err(e) => {
                // Without notifications we still delete; we just wait for the ack.
                tracing::debug!(error = %e, "no link notifications; waiting for the delete's ack");
                None
            }
        };
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let _guard = watch.as_deref().map(|w| {
            w.waiters()
                .entry(name.to_owned())
                .or_default()
                .push(seen_tx);
            WaiterGuard { watch: w, name }
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (ns, owned) = (self.ns.clone(), name.to_owned());
        std::thread::Builder::new()
            .name("cnm-netns".into())
            .spawn(move || {
                let result = ns.enter().map_err(|e| match e {
                    SandboxError::Kernel { source, .. } => source,
                    other => io::Error::other(other.to_string()),
                });
                // The receiver is gone once the notification came first: nothing to report then.
                let _ = done_tx.send(result.and_then(|()| delete_link_blocking(&owned)));
            })
            .map_err(|e| {
                SandboxError::kernel("spawn thread to", format!("delete link {}", object()), e)
            })?;
        let acked = async {
            match done_rx.await {
                Ok(Ok(())) => Ok(true),
                Ok(Err(e))
                    if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) =>
                {
                    Ok(false)
                }
                Ok(Err(e)) => Err(SandboxError::kernel("delete link", object(), e)),
                Err(_) => Err(SandboxError::ThreadPanicked {
                    op: "delete link",
                    object: object(),
                }),
            }
        };
        if watch.is_none() {
            return acked.await;
        }
        tokio::select! {
            biased;
            result = acked => result,
            Ok(()) = seen_rx => Ok(true),
        }
    }

    /// The namespace's link notifications, subscribed on first use.
    async fn link_watch(&self) -> Result<Arc<LinkWatch>, SandboxError> {
        self.watch
            .get_or_try_init(|| async {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| SandboxError::NoRuntime {
                        op: "watch links in",
                        object: self.ns.to_string(),
                    })?;
                let inside = self.ns.clone();
                let shown = self.ns.to_string();
                let (connection, handle, mut events) =
                    on_thread("watch links in", self.ns.to_string(), move || {
                        inside.enter()?;
                        let _guard = runtime.enter();
                        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
                            .and_then(|(mut c, h, e)| {
                                // A busy host may outrun us: then the kernel drops events
                                // (a delete waits for its ack instead) rather than failing the
                                // socket with ENOBUFS, which would end the subscription.
                                use netlink_sys::AsyncSocket as _;
                                let socket = c.socket_mut().socket_mut();
                                socket.set_no_enobufs(true)?;
                                socket.set_rx_buf_sz(1 << 20)?;
                                Ok((c, h, e))
                            })
                            .map_err(|e| SandboxError::kernel("subscribe to links in", shown, e))
                    })?
                    .wait()
                    .await??;
                tokio::spawn(connection);
                let watch = Arc::new(LinkWatch {
                    waiters: Mutex::new(HashMap::new()),
                    _handle: handle,
                });
                // The task holds the watch weakly: dropping the last handle to it closes the
                // connection, which ends the stream and the task.
                let weak: Weak<LinkWatch> = Arc::downgrade(&watch);
                tokio::spawn(async move {
                    while let Some((msg, _)) = events.next().await {
                        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) =
                            msg.payload
                        else {
                            continue;
                        };
                        let Some(watch) = weak.upgrade() else { break };
                        let name = link.attributes.iter().find_map(|a| match a {
                            LinkAttribute::IfName(n) => Some(n.as_str()),
                            _ => None,
                        });
                        if let Some(name) = name {
                            watch.notify_deleted(name);
                        }
                    }
                });
                Ok(watch)
            })
            .await
            .cloned()
    }

    async fn set_link(
        &self,
        op: &'static str,
        index: u32,
        build: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        build(&mut msg);
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
            .await
            .map_err(|e| SandboxError::kernel(op, self.object(format_args!("link {index}")), e))
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), SandboxError> {
        self.set_link("set up", index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
        .await
    }

    /// Brings a link down.
    pub async fn set_down(&self, index: u32) -> Result<(), SandboxError> {
        self.set_link("set down", index, |m| {
            m.header.flags = LinkFlags::empty();
            m.header.change_mask = LinkFlags::Up;
        })
        .await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), SandboxError> {
        crate::link::validate_mtu(Some(mtu))?;
        self.set_link("set mtu of", index, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
        .await
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: MacAddress) -> Result<(), SandboxError> {
        crate::link::validate_mac(Some(mac))?;
        self.set_link("set mac of", index, |m| {
            m.attributes
                .push(LinkAttribute::Address(mac.octets().to_vec()))
        })
        .await
    }

    /// Sets a link's alias (`IFLA_IFALIAS`, `ip link set X alias A`). cnm marks the links it
    /// creates with one, so a sweep after a crash deletes only links it owns.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), SandboxError> {
        let alias = alias.to_owned();
        self.set_link("set alias of", index, move |m| {
            m.attributes.push(LinkAttribute::IfAlias(alias))
        })
        .await
    }

    /// Sets the alias of the link named `name` (`RTM_SETLINK` by `IFLA_IFNAME`, no lookup).
    pub async fn set_alias_by_name(&self, name: &IfName, alias: &str) -> Result<(), SandboxError> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(name.as_str().to_owned()));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.apply(
            "set alias of",
            || name.to_string(),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .await
    }

    /// Enslaves a link to `master`, or frees it with `None`.
    pub async fn set_master(&self, index: u32, master: Option<u32>) -> Result<(), SandboxError> {
        self.set_link("set master of", index, |m| {
            m.attributes
                .push(LinkAttribute::Controller(master.unwrap_or(0)))
        })
        .await
    }

    /// Isolates (or frees) a bridge port: `bridge link set dev X isolated on|off`. Isolated
    /// ports of one bridge cannot reach each other, but still reach the bridge itself and
    /// non-isolated ports (kernel `br_skb_isolated`, IFLA_BRPORT_ISOLATED, Linux 4.18). The
    /// kernel refuses IFLA_PROTINFO in a create message (EOPNOTSUPP), so this is its own
    /// `RTM_SETLINK` with family AF_BRIDGE, which the bridge's `ndo_bridge_setlink` handles.
    pub async fn set_bridge_port_isolated(
        &self,
        index: u32,
        isolated: bool,
    ) -> Result<(), SandboxError> {
        /// `IFLA_BRPORT_ISOLATED` (linux/if_link.h); netlink-packet-route has no variant for it.
        const IFLA_BRPORT_ISOLATED: u16 = 33;
        self.set_link("set bridge port isolation of", index, |m| {
            m.header.interface_family = AddressFamily::Bridge;
            m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
                LinkProtoInfoBridge::Other(DefaultNla::new(
                    IFLA_BRPORT_ISOLATED,
                    vec![u8::from(isolated)],
                )),
            ]))
        })
        .await
    }

    /// Renames a link (the kernel refuses with EBUSY while it is up).
    pub async fn rename(&self, index: u32, name: &IfName) -> Result<(), SandboxError> {
        self.set_link("rename", index, |m| {
            m.attributes
                .push(LinkAttribute::IfName(name.as_str().to_owned()))
        })
        .await
    }

    /// Moves the link into `ns`, optionally renaming it in the same message.
    pub async fn move_to_netns(
        &self,
        index: u32,
        ns: &NetNs,
        new_name: Option<&IfName>,
    ) -> Result<(), SandboxError> {
        // Open until the request is answered (the kernel takes the namespace from it then).
        let fd = ns.fd()?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::NetNsFd(fd.as_fd().as_raw_fd()));
        if let Some(n) = new_name {
            // With IFLA_NET_NS_FD the kernel takes IFLA_IFNAME as the name in the target namespace.
            msg.attributes
                .push(LinkAttribute::IfName(n.as_str().to_owned()));
        }
        let object = self.object(format_args!(
            "link {index} to {ns}{}",
            new_name.map(|n| format!(" as {n}")).unwrap_or_default()
        ));
        self.change(RouteNetlinkMessage::SetLink(msg), 0)
            .await
            .map_err(|e| SandboxError::kernel("move", object, e))
    }

    /// Brings `lo` up.
    pub async fn loopback_up(&self) -> Result<(), SandboxError> {
        self.set_up(LOOPBACK_IFINDEX).await
    }

    // ---- addresses ----

    /// Adds an address (IPv6 with IFA_F_NODAD so it is usable at once).
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), SandboxError> {
        self.create(
            "add address",
            || format!("{addr} on link {index}"),
            RouteNetlinkMessage::NewAddress(address_message(index, addr)),
        )
        .await
    }

    /// Deletes an address.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), SandboxError> {
        self.apply(
            "delete address",
            || format!("{addr} on link {index}"),
            RouteNetlinkMessage::DelAddress(address_message(index, addr)),
            0,
        )
        .await
    }

    /// Addresses of one link, or of all links with `None`.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>, SandboxError> {
        let msg = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let parse = |m| match m {
            RouteNetlinkMessage::NewAddress(a) => parse_address(&a),
            _ => None,
        };
        self.dump_of_link("list addresses", msg, index, parse, |a| a.index)
            .await
    }

    // ---- routes ----

    /// Adds a route to the main table.
    pub async fn add_route(&self, route: &RouteSpec) -> Result<(), SandboxError> {
        validate_route(route)?;
        let msg = route_message(route, false);
        self.create(
            "add route",
            || describe_route(route),
            RouteNetlinkMessage::NewRoute(msg),
        )
        .await
    }

    /// Deletes a route from the main table.
    pub async fn del_route(&self, route: &RouteSpec) -> Result<(), SandboxError> {
        let msg = route_message(route, true);
        self.apply(
            "delete route",
            || describe_route(route),
            RouteNetlinkMessage::DelRoute(msg),
            0,
        )
        .await
    }

    /// Unicast routes of the main table.
    pub async fn routes(&self, family: IpFamily) -> Result<Vec<Route>, SandboxError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match family {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        };
        let msg = RouteNetlinkMessage::GetRoute(msg);
        self.dump("list routes", msg, |m| match m {
            RouteNetlinkMessage::NewRoute(r) => parse_route(&r),
            _ => None,
        })
        .await
    }

    // ---- neighbours and FDB ----

    /// Adds a permanent neighbour entry.
    pub async fn add_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddress,
    ) -> Result<(), SandboxError> {
        let mut msg = neighbour_message(index, ip);
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
        self.create(
            "add neighbour",
            || format!("{ip} lladdr {mac} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(msg),
        )
        .await
    }

    /// Deletes a neighbour entry.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), SandboxError> {
        self.apply(
            "delete neighbour",
            || format!("{ip} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(neighbour_message(index, ip)),
            0,
        )
        .await
    }

    /// Neighbour (ARP/NDP) entries of one link, or of all links with `None`.
    pub async fn neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>, SandboxError> {
        let msg = RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default());
        let parse = |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(&n),
            _ => None,
        };
        self.dump_of_link("list neighbours", msg, index, parse, |n| n.index)
            .await
    }

    /// Adds a permanent FDB entry on the device itself (`bridge fdb add … self permanent`); for
    /// a vxlan device `dst` is the remote VTEP.
    pub async fn add_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> Result<(), SandboxError> {
        self.create(
            "add fdb entry",
            || describe_fdb(index, mac, dst),
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
        )
        .await
    }

    /// Appends a destination to an FDB entry of a VXLAN device, creating the entry when
    /// missing (`bridge fdb append MAC dev DEV dst DST`): the kernel sends a frame matching an
    /// entry with several destinations to each of them, which is how the all-zeros entry
    /// replicates broadcast, unknown and multicast frames to a list of remote VTEPs. A
    /// destination already on the entry is fine.
    pub async fn append_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: IpAddr,
    ) -> Result<(), SandboxError> {
        self.apply(
            "append fdb entry",
            || describe_fdb(index, mac, Some(dst)),
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, Some(dst))),
            NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
    }

    /// Deletes an FDB entry (with `dst`, only that destination of a VXLAN device's entry).
    pub async fn del_fdb(
        &self,
        index: u32,
        mac: MacAddress,
        dst: Option<IpAddr>,
    ) -> Result<(), SandboxError> {
        self.apply(
            "delete fdb entry",
            || describe_fdb(index, mac, dst),
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
            0,
        )
        .await
    }

    /// FDB entries of one device, or of all devices with `None`.
    pub async fn fdb(&self, index: Option<u32>) -> Result<Vec<FdbEntry>, SandboxError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        let msg = RouteNetlinkMessage::GetNeighbour(msg);
        let parse = |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse_fdb(&n),
            _ => None,
        };
        self.dump_of_link("list fdb entries", msg, index, parse, |e| e.index)
            .await
    }
}

// ---- message building (pure) ----

/// The request creating `spec`; `netns_fd` and `peer_fd` are the descriptors of its `netns` and
/// (veth) `peer_ns`, open until the request is answered.
fn link_create_message(
    spec: &LinkSpec,
    netns_fd: Option<RawFd>,
    peer_fd: Option<RawFd>,
) -> LinkMessage {
    let mut msg = LinkMessage::default();
    set_common(&mut msg, &spec.name, spec.mtu, spec.mac, spec.up);
    if let Some(master) = spec.master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    if let Some(fd) = netns_fd {
        msg.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    let (kind, data) = match &spec.kind {
        LinkKind::Bridge => (InfoKind::Bridge, None),
        LinkKind::Dummy => (InfoKind::Dummy, None),
        LinkKind::Wireguard => (InfoKind::Wireguard, None),
        LinkKind::Veth {
            peer_name,
            peer_ns,
            peer_mac,
            peer_mtu,
            ..
        } => {
            let mut peer = LinkMessage::default();
            set_common(
                &mut peer,
                peer_name,
                peer_mtu.or(spec.mtu),
                *peer_mac,
                false, // peer_up is applied after creation (see create_link)
            );
            if let (Some(_), Some(fd)) = (peer_ns, peer_fd) {
                peer.attributes.push(LinkAttribute::NetNsFd(fd));
            }
            (InfoKind::Veth, Some(InfoData::Veth(InfoVeth::Peer(peer))))
        }
        LinkKind::Vxlan {
            vni,
            local,
            group,
            port,
            learning,
            proxy,
            parent,
        } => {
            let mut data = vec![InfoVxlan::Id(*vni)];
            match local {
                Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(*a)),
                Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(*a)),
                None => {}
            }
            match group {
                Some(IpAddr::V4(a)) => data.push(InfoVxlan::Group(*a)),
                Some(IpAddr::V6(a)) => data.push(InfoVxlan::Group6(*a)),
                None => {}
            }
            if let Some(p) = parent {
                data.push(InfoVxlan::Link(*p));
            }
            data.push(InfoVxlan::Port(*port));
            data.push(InfoVxlan::Learning(*learning));
            data.push(InfoVxlan::Proxy(*proxy));
            (InfoKind::Vxlan, Some(InfoData::Vxlan(data)))
        }
        LinkKind::Macvlan { parent, mode } => {
            msg.attributes.push(LinkAttribute::Link(*parent));
            let mode = match mode {
                MacvlanMode::Private => MacVlanMode::Private,
                MacvlanMode::Vepa => MacVlanMode::Vepa,
                MacvlanMode::Bridge => MacVlanMode::Bridge,
                MacvlanMode::Passthru => MacVlanMode::Passthrough,
            };
            (
                InfoKind::MacVlan,
                Some(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode)])),
            )
        }
        LinkKind::Vlan { parent, id } => {
            msg.attributes.push(LinkAttribute::Link(*parent));
            (
                InfoKind::Vlan,
                Some(InfoData::Vlan(vec![InfoVlan::Id(*id)])),
            )
        }
        LinkKind::Ipvlan { parent, mode } => {
            msg.attributes.push(LinkAttribute::Link(*parent));
            let mode = match mode {
                IpvlanMode::L2 => IpVlanMode::L2,
                IpvlanMode::L3 => IpVlanMode::L3,
                IpvlanMode::L3s => IpVlanMode::L3S,
            };
            (
                InfoKind::IpVlan,
                Some(InfoData::IpVlan(vec![InfoIpVlan::Mode(mode)])),
            )
        }
    };
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

/// Why the kernel refused a link type it does not know, naming the feature it lacks.
fn unsupported_reason(kind: &LinkKind) -> &'static str {
    match kind {
        LinkKind::Vlan { .. } => "the kernel has no 802.1Q VLAN support (8021q)",
        LinkKind::Ipvlan { .. } => "the kernel has no ipvlan support (ipvlan)",
        LinkKind::Macvlan { .. } => "the kernel has no macvlan support (macvlan)",
        LinkKind::Dummy => "the kernel has no dummy link support (dummy)",
        LinkKind::Wireguard => "the kernel has no WireGuard support (wireguard)",
        LinkKind::Vxlan { .. } => "the kernel has no VXLAN support (vxlan)",
        LinkKind::Veth { .. } => "the kernel has no veth support (veth)",
        LinkKind::Bridge => "the kernel has no bridge support (bridge)",
    }
}

/// Sends `RTM_DELLINK` for `name` on a fresh socket of the calling thread's namespace and waits
/// for the ack (blocking: see [`Netlink::delete_link_named`]).
fn delete_link_blocking(name: &str) -> io::Result<()> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(name.to_owned()));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < reply.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            if let NetlinkPayload::Error(e) = msg.payload {
                return match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                };
            }
            if len == 0 {
                break;
            }
            offset += len.div_ceil(4) * 4;
        }
    }
}

fn set_common(
    msg: &mut LinkMessage,
    name: &IfName,
    mtu: Option<u32>,
    mac: Option<MacAddress>,
    up: bool,
) {
    msg.attributes
        .push(LinkAttribute::IfName(name.as_str().to_owned()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        msg.attributes
            .push(LinkAttribute::Address(mac.octets().to_vec()));
    }
    if up {
        // The kernel applies ifi_flags/ifi_change of a create message (rtnl_configure_link),
        // no separate "set up" round trip (except a veth peer, see create_link).
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::Address(a) => {
                if let Ok(octets) = <[u8; 6]>::try_from(a.as_slice()) {
                    link.mac = Some(MacAddress(octets));
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.scope = AddressScope::Universe;
    match addr {
        IpNet::V4(net) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes
                .push(AddressAttribute::Local(IpAddr::V4(net.addr())));
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V4(net.addr())));
            // As `ip addr add … brd +` and Docker: a broadcast address unless /31 or /32.
            if net.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(net.broadcast()));
            }
        }
        IpNet::V6(net) => {
            msg.header.family = AddressFamily::Inet6;
            // NODAD: a container address is ours by allocation; waiting ~1 s for duplicate
            // address detection would leave it "tentative" and unusable meanwhile.
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Address(IpAddr::V6(net.addr())));
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    msg
}

fn parse_address(msg: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // For point-to-point IPv4, IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    let ip = local.or(address)?;
    let addr = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some(Address {
        index: msg.header.index,
        addr,
    })
}

pub(crate) fn validate_route(route: &RouteSpec) -> Result<(), SandboxError> {
    if let Some(gw) = route.gateway
        && gw.is_ipv4() != route.destination.addr().is_ipv4()
    {
        return Err(SandboxError::invalid(
            "route gateway",
            gw.to_string(),
            "must be of the destination's family",
        ));
    }
    if route.gateway.is_none() && route.oif.is_none() {
        return Err(SandboxError::invalid(
            "route",
            describe_route(route),
            "needs a gateway or an output interface",
        ));
    }
    Ok(())
}

fn describe_route(route: &RouteSpec) -> String {
    let mut s = format!("{}", route.destination);
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev {oif}"));
    }
    if let Some(m) = route.metric {
        s.push_str(&format!(" metric {m}"));
    }
    s
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn route_message(route: &RouteSpec, delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let dst = route.destination.trunc();
    msg.header.address_family = match dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.kind = RouteType::Unicast;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = if delete {
        // As `ip route del`: NOWHERE matches a route of any scope.
        RouteScope::NoWhere
    } else if route.scope_link {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.addr())));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(m) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    msg
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(msg.header.table);
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = None;
    let to_ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = to_ip(a),
            RouteAttribute::Gateway(a) => gateway = to_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let dst = match (dst, msg.header.address_family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Some(Route {
        destination: IpNet::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        metric,
    })
}

fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    let (family, addr) = match ip {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(addr));
    msg
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // AF_BRIDGE (FDB) messages carry the vxlan remote as raw bytes: decode by length.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn parse_neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    if !matches!(
        msg.header.family,
        AddressFamily::Inet | AddressFamily::Inet6
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddress)
            }
            _ => {}
        }
    }
    Some(Neighbour {
        index: msg.header.ifindex,
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn fdb_message(index: u32, mac: MacAddress, dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.octets().to_vec()));
    if let Some(ip) = dst {
        let addr = match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        msg.attributes.push(NeighbourAttribute::Destination(addr));
    }
    msg
}

fn parse_fdb(msg: &NeighbourMessage) -> Option<FdbEntry> {
    if msg.header.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => dst = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddress)
            }
            _ => {}
        }
    }
    Some(FdbEntry {
        index: msg.header.ifindex,
        mac: mac?,
        dst,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn describe_fdb(index: u32, mac: MacAddress, dst: Option<IpAddr>) -> String {
    match dst {
        Some(d) => format!("{mac} dst {d} on link {index}"),
        None => format!("{mac} on link {index}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_message_carries_peer_settings_and_up() {
        let spec = LinkSpec {
            mtu: Some(1400),
            up: true,
            master: Some(7),
            ..LinkSpec::new(
                "veth0".parse().unwrap(),
                LinkKind::Veth {
                    peer_name: "eth0".parse().unwrap(),
                    peer_ns: None,
                    peer_mac: Some("02:42:ac:11:00:02".parse().unwrap()),
                    peer_mtu: None,
                    peer_up: true,
                },
            )
        };
        let msg = link_create_message(&spec, None, None);
        assert!(msg.header.flags.contains(LinkFlags::Up));
        assert!(msg.attributes.contains(&LinkAttribute::Controller(7)));
        let peer = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("peer message");
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(
            peer.attributes.contains(&LinkAttribute::Mtu(1400)),
            "peer inherits mtu"
        );
        assert!(
            peer.attributes
                .contains(&LinkAttribute::Address(vec![2, 0x42, 0xac, 0x11, 0, 2]))
        );
        assert!(
            !peer.header.flags.contains(LinkFlags::Up),
            "the kernel refuses to open a peer in its create message"
        );
    }

    fn info_data(msg: &LinkMessage) -> (Option<InfoKind>, Option<InfoData>) {
        let mut out = (None, None);
        for a in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => out.0 = Some(k.clone()),
                        LinkInfo::Data(d) => out.1 = Some(d.clone()),
                        _ => {}
                    }
                }
            }
        }
        out
    }

    #[test]
    fn vlan_message_names_parent_and_id() {
        let spec = LinkSpec {
            up: true,
            ..LinkSpec::new(
                "eth0.10".parse().unwrap(),
                LinkKind::Vlan { parent: 4, id: 10 },
            )
        };
        spec.validate().unwrap();
        let msg = link_create_message(&spec, None, None);
        assert!(msg.attributes.contains(&LinkAttribute::Link(4)));
        assert!(
            msg.attributes
                .contains(&LinkAttribute::IfName("eth0.10".into()))
        );
        assert!(msg.header.flags.contains(LinkFlags::Up));
        assert_eq!(
            info_data(&msg),
            (
                Some(InfoKind::Vlan),
                Some(InfoData::Vlan(vec![InfoVlan::Id(10)]))
            )
        );
        for bad in [0, 4095] {
            let e = LinkSpec::new(
                "eth0.x".parse().unwrap(),
                LinkKind::Vlan { parent: 4, id: bad },
            )
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("vlan id"), "{e}");
        }
    }

    #[test]
    fn ipvlan_message_carries_each_mode() {
        for (mode, want) in [
            (IpvlanMode::L2, IpVlanMode::L2),
            (IpvlanMode::L3, IpVlanMode::L3),
            (IpvlanMode::L3s, IpVlanMode::L3S),
        ] {
            let spec = LinkSpec::new("iv0".parse().unwrap(), LinkKind::Ipvlan { parent: 9, mode });
            let msg = link_create_message(&spec, None, None);
            assert!(msg.attributes.contains(&LinkAttribute::Link(9)));
            assert_eq!(
                info_data(&msg),
                (
                    Some(InfoKind::IpVlan),
                    Some(InfoData::IpVlan(vec![InfoIpVlan::Mode(want)]))
                )
            );
        }
        assert_eq!(
            unsupported_reason(&LinkKind::Ipvlan {
                parent: 1,
                mode: IpvlanMode::L2
            }),
            "the kernel has no ipvlan support (ipvlan)"
        );
        assert!(unsupported_reason(&LinkKind::Vlan { parent: 1, id: 2 }).contains("8021q"));
    }

    /// Callers spawn these futures on tokio: they must stay `Send`.
    #[allow(dead_code, clippy::manual_async_fn)]
    fn futures_are_send(nl: Netlink, spec: LinkSpec, ns: NetNs) {
        fn send<T: Send>(_: T) {}
        send(async move {
            let _ = Netlink::connect(&ns).await;
            let _ = nl.create_link(&spec).await;
            let _ = nl.link("eth0").await;
            let _ = nl
                .add_route(&RouteSpec::default_via([10, 0, 0, 1].into(), None))
                .await;
            let _ = ns.run(|| ()).await;
            let _ = crate::set_sysctl(&ns, "net.ipv4.ip_forward", "1").await;
            let _ = NetNs::create("/nonexistent").await;
        });
    }

    #[test]
    fn default_route_message_has_no_destination() {
        let r = RouteSpec::default_via("10.0.0.1".parse().unwrap(), Some(3));
        let msg = route_message(&r, false);
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Oif(3)));
        let parsed = parse_route(&msg).unwrap();
        assert_eq!(parsed.destination.to_string(), "0.0.0.0/0");
        assert_eq!(parsed.gateway, r.gateway);
    }

    #[test]
    fn route_validation() {
        let bad = RouteSpec::default_via("fd00::1".parse().unwrap(), None);
        let bad = RouteSpec {
            destination: "10.0.0.0/8".parse().unwrap(),
            ..bad
        };
        assert!(validate_route(&bad).is_err());
        let nowhere = RouteSpec {
            gateway: None,
            oif: None,
            ..RouteSpec::on_link("10.0.0.0/8".parse().unwrap(), None)
        };
        assert!(validate_route(&nowhere).is_err());
    }

    #[test]
    fn v6_address_is_nodad_and_round_trips() {
        let msg = address_message(4, "fd00::2/64".parse().unwrap());
        assert!(
            msg.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
        assert_eq!(parse_address(&msg).unwrap().addr.to_string(), "fd00::2/64");
        let v4 = address_message(4, "10.0.0.2/24".parse().unwrap());
        assert!(
            v4.attributes
                .contains(&AddressAttribute::Broadcast("10.0.0.255".parse().unwrap()))
        );
    }
}
