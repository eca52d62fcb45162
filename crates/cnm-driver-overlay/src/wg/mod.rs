//! Encryption of overlay networks (`-o encrypted`): a userspace WireGuard (boringtun's noise
//! protocol, [`boringtun::noise::Tunn`]) behind one TUN device per host.
//!
//! **Design.** Each host has a tunnel address, derived injectively from its IPv4 advertise
//! address ([`tunnel_addr`]: `fd63:6e6d:7767::<a.b.c.d>`, so no allocation is needed), on a
//! TUN device `cnm-wg0` (prefix /96, which routes every other host's tunnel address into the
//! device). An encrypted network's VXLAN device has the tunnel address as its local address,
//! and the other hosts' endpoints are programmed behind their hosts' tunnel addresses, so its
//! VXLAN datagrams (IPv6, between tunnel addresses) enter the TUN device. The engine reads
//! them, picks the peer by destination, encrypts them with that peer's tunnel and sends them
//! as UDP (port [`DEFAULT_PORT`] unless configured) to the peer's advertise address; what it
//! receives there it decrypts and writes to the TUN device, only from a known peer's address
//! and only with that peer's own tunnel address as source (the peer table). On the underlay only
//! WireGuard datagrams are seen.
//!
//! **Keys.** Each host has an X25519 static key pair, kept in `state_dir/overlay/wireguard.key`
//! (mode 0600), and publishes its public key, its WireGuard endpoint and its tunnel address
//! ([`HostFact`]) as a fact under its lease (network [`FACTS_NETWORK`], endpoint = its host
//! id); every host watches the others' and keeps a tunnel per peer. Session keys are
//! renegotiated by WireGuard's own handshake every 2 minutes; the static key is replaced on an
//! interval ([`SETTING_ROTATION`]) or on demand
//! ([`OverlayDriver::rotate_wireguard_key`](crate::OverlayDriver::rotate_wireguard_key)): the
//! new key is saved, used at once, and published; each peer replaces its tunnel on seeing the new key and
//! starts a handshake, so traffic pauses for about one handshake.
//!
//! **Plain VXLAN from the underlay** for an encrypted network is never accepted: the driver's
//! firewall fragment drops IPv6 UDP to an encrypted network's VXLAN port unless it came in
//! through `cnm-wg0` (an IPv4 datagram never reaches the IPv6 VXLAN device: the kernel keeps
//! v4 and v6 VXLAN sockets apart).
//!
//! **Data path.** Three tokio tasks, each woken by readiness (TUN readable, socket readable)
//! or by WireGuard's timer tick ([`TIMER_TICK`], as boringtun's own device drives
//! `update_timers`); no process and no sleep per packet. A wake-up takes what is there: the
//! TUN device is read until it has nothing more and the encrypted datagrams leave in batches
//! of up to 16 per `sendmmsg`, and the socket gives up to 16 datagrams per `recvmmsg`
//! (module `batch`); buffers are allocated once per task.
//!
//! **Kernel WireGuard** where the kernel has it (module `kernel`): the engine's start first tries to
//! create a link of kind `wireguard` named [`TUN_NAME`]; if the kernel makes one, it is
//! configured over generic netlink (module `genl`) with the same key, port, tunnel address and MTU,
//! and the peers follow the same facts (allowed IPs: the peer's tunnel address /128); a
//! rotation sets the new private key. If the kernel answers that it does not know the link
//! type (EOPNOTSUPP, no `wireguard` module), the userspace engine runs instead. Which one runs
//! is logged once and answered by [`OverlayDriver::wireguard_path`](crate::OverlayDriver::wireguard_path).
//! The kernel path could not be exercised on the machine this was written on (no WireGuard
//! module); its messages are checked against the UAPI layout in unit tests.

pub(crate) mod batch;
pub(crate) mod genl;
pub(crate) mod kernel;
pub(crate) mod keys;
pub(crate) mod table;
pub(crate) mod tun;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use boringtun::noise::TunnResult;
use cnm_core::spi::{Conflict, DriverContext, FactEvent, Facts};
use cnm_types::FailedTo;
use ipnet::{IpNet, Ipv6Net};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

pub use table::HostFact;

use crate::{OverlayError, lock};
use keys::KeyPair;
use table::{Change, Peer, PeerTable, Route};

/// The TUN device of the engine.
pub const TUN_NAME: &str = "cnm-wg0";
/// WireGuard's usual UDP port.
pub const DEFAULT_PORT: u16 = 51820;
/// The pseudo network under which hosts publish their [`HostFact`]s (endpoint = host id).
pub const FACTS_NETWORK: &str = "wireguard";
/// The prefix of tunnel addresses (a ULA: `fd` + "cnm" + "wg").
pub const TUNNEL_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd63, 0x6e6d, 0x7767, 0, 0, 0, 0, 0);
/// Its length: the host's IPv4 address fills the rest.
pub const TUNNEL_PREFIX_LEN: u8 = 96;
/// WireGuard over IPv4: outer IPv4 (20) + UDP (8) + data header (16) + tag (16).
pub const OVERHEAD_V4: u32 = 60;
/// The driver setting (`ControllerBuilder::driver_setting("overlay", …)`, cnmd's
/// `--wireguard-port`) for the UDP port.
pub const SETTING_PORT: &str = "wireguard_port";
/// The driver setting (cnmd's `--wireguard-key-rotation`) for the static key's rotation
/// interval, in seconds (none by default: WireGuard still renews session keys every 2 minutes).
pub const SETTING_ROTATION: &str = "wireguard_key_rotation";
/// How often WireGuard's timers run (boringtun's device uses the same).
pub const TIMER_TICK: Duration = Duration::from_millis(250);
/// The largest datagram or packet handled.
const BUF: usize = 65_535 + 256;
/// How long to wait before listing and watching again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// The engine's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    /// The UDP port WireGuard listens on, on the advertise address.
    pub port: u16,
    /// How often the static key is replaced, if at all.
    pub rotation: Option<Duration>,
    /// `/dev/net/tun` (another path only in tests).
    pub tun_path: PathBuf,
}

impl Default for WgConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            rotation: None,
            tun_path: PathBuf::from(tun::TUN_PATH),
        }
    }
}

impl WgConfig {
    /// The configuration from the driver's settings ([`SETTING_PORT`], [`SETTING_ROTATION`]);
    /// a bad value is refused naming it.
    pub fn from_context(ctx: &DriverContext) -> Result<Self, OverlayError> {
        let mut c = Self::default();
        if let Some(p) = ctx.setting(SETTING_PORT) {
            c.port = crate::options::parse_port(SETTING_PORT, p)?;
        }
        if let Some(r) = ctx.setting(SETTING_ROTATION) {
            let secs: f64 = r.trim().parse().map_err(|_| {
                OverlayError::invalid(SETTING_ROTATION, r, "must be a number of seconds")
            })?;
            c.rotation = match Duration::try_from_secs_f64(secs) {
                Ok(d) if d.is_zero() => None,
                Ok(d) if d >= Duration::from_secs(1) => Some(d),
                _ => {
                    return Err(OverlayError::invalid(
                        SETTING_ROTATION,
                        r,
                        "must be 0 (never) or at least 1 second",
                    ));
                }
            };
        }
        Ok(c)
    }
}

/// The tunnel address of the host whose advertise address is `underlay` (IPv4 only: an IPv6
/// advertise address cannot be embedded injectively in a ULA prefix).
pub fn tunnel_addr(underlay: IpAddr) -> Result<Ipv6Addr, OverlayError> {
    match underlay {
        IpAddr::V4(v4) => {
            let p = TUNNEL_PREFIX.octets();
            let mut o = [0u8; 16];
            o[..12].copy_from_slice(&p[..12]);
            o[12..].copy_from_slice(&v4.octets());
            Ok(Ipv6Addr::from(o))
        }
        IpAddr::V6(_) => Err(OverlayError::Unsupported(format!(
            "the advertise address {underlay} is IPv6; encrypted networks need an IPv4 one"
        ))),
    }
}

/// The advertise address a tunnel address was derived from, if it is one.
pub(crate) fn host_of_tunnel(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = a.octets();
    (o[..12] == TUNNEL_PREFIX.octets()[..12]).then(|| Ipv4Addr::new(o[12], o[13], o[14], o[15]))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Which WireGuard carries this host's encrypted networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WgPath {
    /// The kernel's (a link of kind `wireguard`, configured over generic netlink).
    Kernel,
    /// cnm's userspace engine over a TUN device, because the kernel has no WireGuard.
    Userspace {
        /// Why not the kernel's, as the kernel answered the link's creation.
        reason: String,
    },
}

impl std::fmt::Display for WgPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kernel => f.write_str("kernel"),
            Self::Userspace { reason } => write!(f, "userspace ({reason})"),
        }
    }
}

/// What carries the packets.
#[derive(Debug)]
enum DataPath {
    /// boringtun's tunnels, one per peer, and the engine's socket.
    Userspace {
        table: Arc<RwLock<PeerTable>>,
        socket: Arc<UdpSocket>,
    },
    /// The kernel's device, configured over generic netlink.
    Kernel(kernel::KernelDevice),
}

/// This host's WireGuard: the device, the keys, the peers, the tasks.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) tunnel: Ipv6Addr,
    endpoint: SocketAddr,
    keys: Mutex<KeyPair>,
    key_path: PathBuf,
    epoch: u64,
    host_id: String,
    facts: Facts,
    path: WgPath,
    data: DataPath,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The tasks hold the TUN device's fd: aborted, they close it and the device goes (the
        // kernel's device is deleted by `stop`, or at the next start).
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Engine {
    /// Starts WireGuard in the host namespace: the kernel's where the kernel has it, else the
    /// userspace engine (the first attempt tells, and the choice is logged once: one engine
    /// per driver). Configures the device (MTU, tunnel address, up), publishes this host's fact
    /// and starts the tasks. On failure nothing stays (a TUN device goes with its fd; the
    /// kernel's device is deleted).
    pub(crate) async fn start(
        ctx: &DriverContext,
        config: &WgConfig,
        underlay_mtu: u32,
    ) -> Result<Arc<Self>, OverlayError> {
        let vtep = ctx.advertise_addr().ok_or(OverlayError::NoAdvertiseAddr)?;
        let tunnel = tunnel_addr(vtep)?;
        let facts = ctx.facts()?;
        let key_path = ctx.state_dir.join(crate::DRIVER_NAME).join(keys::KEY_FILE);
        let keys = KeyPair::load_or_create(&key_path)?;
        let endpoint = SocketAddr::new(vtep, config.port);
        let (path, data, tun) = match kernel::create(ctx).await? {
            kernel::Created::Yes => {
                let configured = async {
                    let dev = kernel::KernelDevice::configure(ctx, &keys, config.port).await?;
                    configure_link(ctx, tunnel, underlay_mtu).await?;
                    Ok::<_, OverlayError>(dev)
                }
                .await;
                match configured {
                    Ok(dev) => (WgPath::Kernel, DataPath::Kernel(dev), None),
                    Err(e) => return Err(with_link_deleted(ctx, e).await),
                }
            }
            kernel::Created::Unsupported(reason) => {
                let (tun, socket) = open_userspace(ctx, config, endpoint).await?;
                configure_link(ctx, tunnel, underlay_mtu).await?;
                // SAFETY: the AsyncFd owns the File, so the fd stays open for as long as it is
                // registered, and nothing else closes it.
                #[allow(unsafe_code)]
                let registered = unsafe { AsyncFd::register(tun) };
                let tun = Arc::new(registered.map_err(|e| {
                    OverlayError::io("register", TUN_NAME, std::io::Error::from(e))
                })?);
                let socket = Arc::new(UdpSocket::from_std(socket).map_err(|e| {
                    OverlayError::io("register WireGuard socket", endpoint.to_string(), e)
                })?);
                (
                    WgPath::Userspace { reason },
                    DataPath::Userspace {
                        table: Arc::default(),
                        socket,
                    },
                    Some(tun),
                )
            }
        };
        let engine = Arc::new(Self {
            tunnel,
            endpoint,
            keys: Mutex::new(keys),
            key_path,
            epoch: rand::random::<u64>() >> 11,
            host_id: ctx.host_id().to_owned(),
            facts,
            path,
            data,
            tasks: Mutex::new(Vec::new()),
        });
        {
            let mut tasks = lock(&engine.tasks);
            if let (DataPath::Userspace { table, socket }, Some(tun)) = (&engine.data, tun) {
                tasks.push(tokio::spawn(from_tun(
                    tun.clone(),
                    socket.clone(),
                    table.clone(),
                )));
                tasks.push(tokio::spawn(from_underlay(
                    tun,
                    socket.clone(),
                    table.clone(),
                )));
                tasks.push(tokio::spawn(timers(socket.clone(), table.clone())));
            }
            tasks.push(tokio::spawn(watch(Arc::downgrade(&engine))));
            if let Some(every) = config.rotation {
                tasks.push(tokio::spawn(rotate_every(Arc::downgrade(&engine), every)));
            }
        }
        if let Err(e) = engine.publish().await {
            return Err(engine.stop_after(ctx, e).await);
        }
        let mtu = underlay_mtu.saturating_sub(OVERHEAD_V4);
        tracing::info!(path = %engine.path, tunnel = %tunnel, %endpoint, mtu, public_key = %lock(&engine.keys).public_hex(), "WireGuard started");
        Ok(engine)
    }

    /// Which WireGuard this is.
    pub(crate) fn path(&self) -> &WgPath {
        &self.path
    }

    /// Stops the tasks and deletes the kernel's device (a TUN device goes with its fd when
    /// the engine is dropped).
    pub(crate) async fn stop(&self, ctx: &DriverContext) -> Result<(), OverlayError> {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        if matches!(self.data, DataPath::Kernel(_)) {
            crate::delete_link_named(&ctx.host_netlink, TUN_NAME).await?;
        }
        Ok(())
    }

    /// `primary`, after stopping (with what failed while stopping).
    async fn stop_after(&self, ctx: &DriverContext, primary: OverlayError) -> OverlayError {
        match self.stop(ctx).await {
            Ok(()) => primary,
            Err(e) => OverlayError::WithCleanup {
                source: Box::new(primary),
                cleanup: vec![e],
            },
        }
    }

    /// This host's fact, as published now.
    fn fact(&self) -> HostFact {
        HostFact {
            public_key: lock(&self.keys).public_hex(),
            endpoint: self.endpoint,
            tunnel: self.tunnel,
            epoch: self.epoch,
        }
    }

    async fn publish(&self) -> Result<(), OverlayError> {
        let fact = self.fact();
        Ok(self
            .facts
            .publish(FACTS_NETWORK, &self.host_id, &fact)
            .await?)
    }

    /// This host's public key (64 hex digits).
    pub(crate) fn public_key(&self) -> String {
        lock(&self.keys).public_hex()
    }

    /// Replaces the static key: saved, used by every tunnel (or the kernel's device) at once,
    /// published. Returns the new public key.
    pub(crate) async fn rotate(&self) -> Result<String, OverlayError> {
        let pair = KeyPair::generate();
        match &self.data {
            DataPath::Userspace { table, .. } => {
                pair.save(&self.key_path)?;
                // Lock order: the table, then the keys (as `learn`).
                let table = write(table);
                *lock(&self.keys) = pair.clone();
                for p in table.peers() {
                    lock(&p.tunn).set_static_private(pair.secret.clone(), pair.public, None);
                }
            }
            DataPath::Kernel(dev) => {
                // The device first: if the kernel refuses, the old key stays everywhere.
                dev.set_key(&pair).await?;
                if let Err(e) = pair.save(&self.key_path) {
                    let old = lock(&self.keys).clone();
                    return Err(match dev.set_key(&old).await {
                        Ok(()) => e,
                        Err(undo) => OverlayError::WithCleanup {
                            source: Box::new(e),
                            cleanup: vec![undo],
                        },
                    });
                }
                *lock(&self.keys) = pair.clone();
            }
        }
        self.publish().await?;
        tracing::info!(public_key = %pair.public_hex(), "WireGuard static key rotated");
        Ok(pair.public_hex())
    }

    /// The hosts with a peer here.
    fn hosts(&self) -> Vec<String> {
        match &self.data {
            DataPath::Userspace { table, .. } => read(table).hosts().map(str::to_owned).collect(),
            DataPath::Kernel(dev) => dev.hosts(),
        }
    }

    /// Takes another host's fact: a new or changed peer gets a tunnel and a handshake at once
    /// (the kernel's device starts its handshake with the first packet).
    async fn learn(&self, host: &str, fact: HostFact) {
        let (table, socket) = match &self.data {
            DataPath::Userspace { table, socket } => (table, socket),
            DataPath::Kernel(dev) => {
                match dev.learn(host, fact).await {
                    Ok(true) => tracing::debug!(host, "WireGuard peer set in the kernel"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(host, error = %e, "WireGuard peer not set"),
                }
                return;
            }
        };
        let peer = {
            let mut table = write(table);
            let secret = lock(&self.keys).secret.clone();
            match table.upsert(host, fact, &secret) {
                Ok(Change::Unchanged) => return,
                Ok(change) => {
                    tracing::debug!(host, ?change, "WireGuard peer learnt");
                    table.get(host)
                }
                Err(e) => {
                    tracing::warn!(host, error = ?e, "unusable WireGuard peer ignored");
                    return;
                }
            }
        };
        if let Some(peer) = peer {
            let mut out = vec![0u8; 256];
            let len = match lock(&peer.tunn).format_handshake_initiation(&mut out, false) {
                TunnResult::WriteToNetwork(d) => d.len(),
                _ => return,
            };
            send(socket, &out[..len], &peer).await;
        }
    }

    async fn forget(&self, host: &str) {
        let removed = match &self.data {
            DataPath::Userspace { table, .. } => write(table).remove(host).is_some(),
            DataPath::Kernel(dev) => match dev.forget(host).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(host, error = %e, "WireGuard peer not removed from the kernel");
                    false
                }
            },
        };
        if removed {
            tracing::debug!(host, "WireGuard peer removed");
        }
    }
}

/// Opens the TUN device and the engine's socket in the host namespace.
async fn open_userspace(
    ctx: &DriverContext,
    config: &WgConfig,
    endpoint: SocketAddr,
) -> Result<(File, std::net::UdpSocket), OverlayError> {
    let tun_path = config.tun_path.clone();
    ctx.host_ns
        .run(
            move || -> Result<(File, std::net::UdpSocket), OverlayError> {
                let tun = tun::open(&tun_path, TUN_NAME)?;
                let sock = std::net::UdpSocket::bind(endpoint)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(|e| {
                        OverlayError::io("bind WireGuard socket", endpoint.to_string(), e)
                    })?;
                Ok((tun, sock))
            },
        )
        .await
        .map_err(|e| {
            OverlayError::failed("open the WireGuard device in", ctx.host_ns.to_string(), e)
        })?
}

/// The device's MTU (the underlay's less WireGuard's overhead), its tunnel address, up: the
/// same for both paths.
async fn configure_link(
    ctx: &DriverContext,
    tunnel: Ipv6Addr,
    underlay_mtu: u32,
) -> Result<(), OverlayError> {
    let host = &ctx.host_netlink;
    let index = host
        .link(TUN_NAME)
        .await
        .map_err(|e| OverlayError::failed("look up", TUN_NAME, e))?
        .ok_or_else(|| OverlayError::from(Conflict::vanished("configure", TUN_NAME)))?
        .index;
    let mtu = underlay_mtu.saturating_sub(OVERHEAD_V4);
    host.set_mtu(index, mtu)
        .await
        .map_err(|e| OverlayError::failed("set MTU of", TUN_NAME, e))?;
    let net = Ipv6Net::new(tunnel, TUNNEL_PREFIX_LEN)
        .map_err(|e| OverlayError::invalid("tunnel address", tunnel.to_string(), e.to_string()))?;
    host.add_address(index, IpNet::V6(net))
        .await
        .map_err(|e| OverlayError::failed("add address to", format!("{TUN_NAME} ({net})"), e))?;
    host.set_up(index)
        .await
        .map_err(|e| OverlayError::failed("bring up", TUN_NAME, e))
}

/// `primary`, after deleting the kernel's device (with what failed while deleting it).
async fn with_link_deleted(ctx: &DriverContext, primary: OverlayError) -> OverlayError {
    match crate::delete_link_named(&ctx.host_netlink, TUN_NAME).await {
        Ok(()) => primary,
        Err(e) => OverlayError::WithCleanup {
            source: Box::new(primary),
            cleanup: vec![e],
        },
    }
}

async fn send(socket: &UdpSocket, data: &[u8], peer: &Peer) {
    if let Err(e) = socket.send_to(data, peer.fact.endpoint).await {
        tracing::debug!(host = %peer.host, error = %e, "WireGuard datagram not sent");
    }
}

async fn write_tun(tun: &AsyncFd<File>, data: &[u8]) -> std::io::Result<()> {
    loop {
        let mut guard = tun.writable().await?;
        if let Ok(r) = guard.try_io(|f| {
            let mut file: &File = f.get_ref();
            file.write(data)
        }) {
            return r.map(drop);
        }
    }
}

/// Packets from the TUN device: encrypted to their peer. Each wake-up reads until the device
/// has nothing more, and the datagrams leave in batches ([`batch::SendBatch`]), in order.
async fn from_tun(tun: Arc<AsyncFd<File>>, socket: Arc<UdpSocket>, table: Arc<RwLock<PeerTable>>) {
    let mut buf = vec![0u8; BUF];
    let mut out = batch::SendBatch::new(BUF + 148);
    loop {
        let mut guard = match tun.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot wait on {TUN_NAME}; encrypted networks stop");
                return;
            }
        };
        loop {
            let n = match guard.try_io(|f| {
                let mut file: &File = f.get_ref();
                file.read(&mut buf)
            }) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read {TUN_NAME}; encrypted networks stop");
                    out.flush(&socket).await;
                    return;
                }
                // Nothing more for now (the readiness is cleared).
                Err(_would_block) => break,
            };
            let peer = match read(&table).route(&buf[..n]) {
                Route::Peer(p) => p,
                Route::NoPeer(dst) => {
                    tracing::trace!(%dst, "no WireGuard peer for a packet; dropped");
                    continue;
                }
                Route::NotIpv6 => continue,
            };
            let slot = out.free().expect("the batch is flushed when full");
            let len = match lock(&peer.tunn).encapsulate(&buf[..n], slot) {
                TunnResult::WriteToNetwork(d) => d.len(),
                TunnResult::Err(e) => {
                    tracing::debug!(host = %peer.host, error = ?e, "cannot encrypt a packet");
                    continue;
                }
                _ => continue,
            };
            out.push(len, peer.fact.endpoint);
            if out.is_full() {
                out.flush(&socket).await;
            }
        }
        out.flush(&socket).await;
    }
}

/// What one decapsulation asks for (the tunnel's lock is not held while acting on it).
enum Next {
    Send(usize),
    Tun(usize),
    Done,
}

/// Datagrams from the underlay, up to [`batch::BATCH`] per system call: from a known peer
/// only, decrypted into the TUN device.
async fn from_underlay(
    tun: Arc<AsyncFd<File>>,
    socket: Arc<UdpSocket>,
    table: Arc<RwLock<PeerTable>>,
) {
    let mut inb = batch::RecvBatch::new(BUF);
    let mut out = vec![0u8; BUF];
    loop {
        let count = match inb.recv(&socket).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "WireGuard socket read failed");
                continue;
            }
        };
        for i in 0..count {
            let Some((mut datagram, from)) = inb.get(i) else {
                tracing::debug!("an oversized or unaddressed WireGuard datagram; dropped");
                continue;
            };
            let Some(peer) = read(&table).by_endpoint_ip(from.ip()) else {
                tracing::trace!(%from, "WireGuard datagram from no known peer; dropped");
                continue;
            };
            loop {
                let next = {
                    let mut t = lock(&peer.tunn);
                    match t.decapsulate(Some(from.ip()), datagram, &mut out) {
                        TunnResult::WriteToNetwork(d) => Next::Send(d.len()),
                        TunnResult::WriteToTunnelV6(d, _) => Next::Tun(d.len()),
                        TunnResult::Err(e) => {
                            tracing::debug!(host = %peer.host, error = ?e, "WireGuard datagram refused");
                            Next::Done
                        }
                        _ => Next::Done,
                    }
                };
                match next {
                    Next::Send(len) => {
                        send(&socket, &out[..len], &peer).await;
                        // Then what the tunnel queued, until it has nothing more.
                        datagram = &[];
                    }
                    Next::Tun(len) => {
                        if table::admits(&peer.fact, &out[..len]) {
                            if let Err(e) = write_tun(&tun, &out[..len]).await {
                                tracing::debug!(error = %e, "cannot write to {TUN_NAME}");
                            }
                        } else {
                            tracing::debug!(host = %peer.host, "a peer's packet with another source; dropped");
                        }
                        break;
                    }
                    Next::Done => break,
                }
            }
        }
    }
}

/// WireGuard's timers: handshakes, rekeying, keepalives, expiry.
async fn timers(socket: Arc<UdpSocket>, table: Arc<RwLock<PeerTable>>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = vec![0u8; BUF];
    loop {
        tick.tick().await;
        let peers = read(&table).peers();
        for peer in peers {
            let len = match lock(&peer.tunn).update_timers(&mut out) {
                TunnResult::WriteToNetwork(d) => d.len(),
                _ => continue,
            };
            send(&socket, &out[..len], &peer).await;
        }
    }
}

/// The other hosts' facts: peers added, replaced and removed as they change.
async fn watch(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let facts = e.facts.clone();
        match facts.others(FACTS_NETWORK).await {
            Ok(present) => {
                let gone: HashSet<String> = e
                    .hosts()
                    .into_iter()
                    .filter(|h| !present.contains(h))
                    .collect();
                for h in gone {
                    e.forget(&h).await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot list WireGuard peers; retrying");
                drop(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let mut w = match facts.watch(FACTS_NETWORK).await {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch WireGuard peers; retrying");
                drop(e);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        drop(e);
        while let Some(event) = w.next().await {
            let Some(e) = engine.upgrade() else { return };
            match event {
                FactEvent::Added(fact) => match fact.decode::<HostFact>() {
                    Ok(f) => e.learn(&fact.endpoint_id, f).await,
                    Err(err) => {
                        tracing::warn!(host = %fact.endpoint_id, error = %err, "undecodable WireGuard peer ignored")
                    }
                },
                FactEvent::Removed { endpoint_id, .. } => e.forget(&endpoint_id).await,
                _ => {}
            }
        }
        tracing::warn!("WireGuard peer watch ended; watching again");
        tokio::time::sleep(RETRY).await;
    }
}

async fn rotate_every(engine: Weak<Engine>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(e) = engine.upgrade() else { return };
        if let Err(err) = e.rotate().await {
            tracing::warn!(error = %err, "WireGuard key rotation failed; the old key stays in use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_addresses_embed_the_advertise_address_and_only_ipv4() {
        let a = tunnel_addr("192.168.77.2".parse().unwrap()).unwrap();
        assert_eq!(a, "fd63:6e6d:7767::c0a8:4d02".parse::<Ipv6Addr>().unwrap());
        assert_eq!(host_of_tunnel(a), Some(Ipv4Addr::new(192, 168, 77, 2)));
        assert_ne!(a, tunnel_addr("192.168.77.3".parse().unwrap()).unwrap());
        assert_eq!(host_of_tunnel(Ipv6Addr::LOCALHOST), None);
        let e = tunnel_addr("2001:db8::1".parse().unwrap()).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::Unsupported);
    }
}
