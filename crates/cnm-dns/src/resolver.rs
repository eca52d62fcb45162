//! [`Resolver`]: the handle the controller drives.

use cnm_types::InvalidTo;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cnm_sandbox::NetNs;
use tokio::sync::Semaphore;

use crate::DnsError;
use crate::forward::{ForwardTiming, Forwarder, Origin, Upstream};
use crate::name::key_of;
use crate::records::{EndpointDns, NetworkDns, Records, SandboxDns};
use crate::resolvconf::{HostResolvConf, SANDBOX_RESOLVER};
use crate::server::{self, Kind, ListenCtx, Listener, is_sandbox_resolver};
use crate::workers::{Workers, default_threads};

/// The domain the host listener also answers under by default (`name.network.cnm`).
pub const DEFAULT_DOMAIN: &str = "cnm";

/// Docker's fallback upstreams when the host lists none.
pub const DEFAULT_FALLBACK_SERVERS: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), 53),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4)), 53),
];

/// Bounds that keep the resolver responsive whatever its clients or upstreams do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Forwarded queries in flight, all listeners together; beyond: REFUSED.
    pub forward_concurrency: usize,
    /// Forwarded queries in flight per listener (per sandbox); beyond: REFUSED.
    pub forward_concurrency_per_listener: usize,
    /// Open TCP connections per listener; beyond: new ones are closed at once.
    pub tcp_connections_per_listener: usize,
    /// How long a TCP client may take to send each message (and to read our answer).
    pub tcp_idle_timeout: Duration,
    /// How long one upstream gets to answer one query.
    pub upstream_timeout: Duration,
    /// How long to wait on one upstream before asking the next one as well.
    pub hedge_delay: Duration,
    /// How long an upstream that did not answer goes to the back of the line.
    pub upstream_down_for: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            forward_concurrency: 1024,
            forward_concurrency_per_listener: 128,
            tcp_connections_per_listener: 16,
            tcp_idle_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(2),
            hedge_delay: Duration::from_millis(250),
            upstream_down_for: Duration::from_secs(30),
        }
    }
}

/// Builder setters, one per field, each taking the field's value and documented as setting it.
macro_rules! setters {
    ($ty:ident { $($field:ident: $t:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`].")]
                pub fn $field(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(Limits {
    forward_concurrency: usize,
    forward_concurrency_per_listener: usize,
    tcp_connections_per_listener: usize,
    tcp_idle_timeout: Duration,
    upstream_timeout: Duration,
    hedge_delay: Duration,
    upstream_down_for: Duration,
});

/// How to build a [`Resolver`].
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    host_netns: NetNs,
    resolv_conf: PathBuf,
    domain: Option<String>,
    ttl: u32,
    fallback_servers: Vec<SocketAddr>,
    limits: Limits,
    threads: usize,
    thread_name: String,
}

impl ResolverConfig {
    /// Defaults: upstreams from `/etc/resolv.conf`, queried from `host_netns`; the cnm domain
    /// `cnm` on the host listener; TTL 0 on local answers (records change on every join and
    /// leave, so nobody should cache them); Docker's fallback servers; [`Limits::default`].
    pub fn new(host_netns: NetNs) -> Self {
        Self {
            host_netns,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            domain: Some(DEFAULT_DOMAIN.to_owned()),
            ttl: 0,
            fallback_servers: DEFAULT_FALLBACK_SERVERS.to_vec(),
            limits: Limits::default(),
            threads: default_threads(),
            thread_name: "cnm-dns".to_owned(),
        }
    }

    /// How many threads serve the listeners (1 to 64; default one per core, at most four).
    /// Each listener is served by one of them, with its forwarded queries; sandboxes are
    /// spread over them in turn.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// The name of those threads, followed by `-N` (default `cnm-dns`; the kernel keeps 15
    /// bytes of a thread's name).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// The resolv.conf the upstream servers come from; followed as it changes.
    pub fn resolv_conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.resolv_conf = path.into();
        self
    }

    /// The domain the host listener also answers under (`name.network.<domain>`); `None` for
    /// `name.network` only.
    pub fn domain(mut self, domain: Option<&str>) -> Self {
        self.domain = domain.map(str::to_owned);
        self
    }

    /// The TTL of local answers.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Upstreams used when the host's resolv.conf lists none (empty: answer SERVFAIL).
    pub fn fallback_servers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.fallback_servers = servers;
        self
    }

    /// The limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Counters, for tests, metrics and `inspect`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolverStats {
    /// Messages received on every listener.
    pub queries: u64,
    /// Queries forwarded upstream.
    pub forwarded: u64,
    /// Queries refused because the forwarding bound was reached.
    pub refused_busy: u64,
    /// TCP connections closed at once because the per-listener cap was reached.
    pub tcp_rejected: u64,
    /// Messages dropped without an answer (not a query, too short).
    pub dropped: u64,
    /// Sandbox listeners running.
    pub sandbox_listeners: usize,
    /// Endpoints registered.
    pub endpoints: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) queries: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) tcp_rejected: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// What every listener task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) records: RwLock<Records>,
    pub(crate) forwarder: Forwarder,
    pub(crate) host_conf: HostResolvConf,
    pub(crate) fallback: Vec<SocketAddr>,
    pub(crate) domain: Option<String>,
    pub(crate) ttl: u32,
    pub(crate) limits: Limits,
    pub(crate) forward_slots: Arc<Semaphore>,
    /// Addresses of our host listeners, never used as upstreams.
    pub(crate) own: RwLock<Vec<SocketAddr>>,
    pub(crate) stats: Stats,
}

impl Shared {
    /// Whether `up` would be this resolver asking itself.
    pub(crate) fn is_self(&self, up: &Upstream) -> bool {
        if is_sandbox_resolver(up.addr) || up.addr.ip().is_unspecified() {
            return true;
        }
        matches!(up.origin, Origin::Host)
            && self
                .own
                .read()
                .expect("own addresses lock poisoned")
                .contains(&up.addr)
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    host_netns: NetNs,
    sandboxes: Mutex<HashMap<Arc<str>, Listener>>,
    host_listeners: Mutex<Vec<Listener>>,
    /// Declared last: dropped after the listeners, it stops the threads they ran on.
    workers: Workers,
}

/// The embedded resolver: one per controller. Cheap to clone (every clone is the same
/// resolver); dropping the last clone stops every listener.
///
/// Record updates are synchronous and take effect for the very next query; attaching a
/// sandbox binds its listener inside the sandbox's namespace.
#[derive(Clone, Debug)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// The sockets of a sandbox's listener, bound by [`Resolver::bind_sandbox`] and not yet
/// served; they close when dropped.
#[derive(Debug)]
pub struct BoundListener {
    netns_id: (u64, u64),
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

impl Resolver {
    /// A resolver with no networks and no listeners.
    pub fn new(config: ResolverConfig) -> Result<Resolver, DnsError> {
        let domain = config
            .domain
            .as_deref()
            .map(|d| key_of("cnm domain", d))
            .transpose()?;
        let l = config.limits;
        for (field, n) in [
            ("forward concurrency", l.forward_concurrency),
            (
                "forward concurrency per listener",
                l.forward_concurrency_per_listener,
            ),
            (
                "TCP connections per listener",
                l.tcp_connections_per_listener,
            ),
        ] {
            if n == 0 || n > Semaphore::MAX_PERMITS {
                return Err(DnsError::invalid(
                    field,
                    n.to_string(),
                    "must be at least 1",
                ));
            }
        }
        if !(1..=64).contains(&config.threads) {
            return Err(DnsError::invalid(
                "resolver threads",
                config.threads.to_string(),
                "must be 1 to 64",
            ));
        }
        if config.thread_name.contains('\0') {
            return Err(DnsError::invalid(
                "resolver thread name",
                config.thread_name.escape_default().to_string(),
                "must not contain NUL",
            ));
        }
        let workers = Workers::start(config.threads, &config.thread_name)?;
        let shared = Shared {
            records: RwLock::new(Records::default()),
            forwarder: Forwarder::new(
                config.host_netns.clone(),
                ForwardTiming {
                    timeout: l.upstream_timeout,
                    hedge: l.hedge_delay,
                    down_for: l.upstream_down_for,
                },
            ),
            host_conf: HostResolvConf::new(config.resolv_conf),
            fallback: config.fallback_servers,
            domain,
            ttl: config.ttl,
            limits: l,
            forward_slots: Arc::new(Semaphore::new(l.forward_concurrency)),
            own: RwLock::new(Vec::new()),
            stats: Stats::default(),
        };
        Ok(Resolver {
            inner: Arc::new(Inner {
                shared: Arc::new(shared),
                host_netns: config.host_netns,
                sandboxes: Mutex::new(HashMap::new()),
                host_listeners: Mutex::new(Vec::new()),
                workers,
            }),
        })
    }

    fn records(&self) -> std::sync::RwLockWriteGuard<'_, Records> {
        self.inner
            .shared
            .records
            .write()
            .expect("records lock poisoned")
    }

    /// Registers a network, or updates one (name, subnets, internal, servers); its endpoints
    /// stay. Call on network create and for every network on reload.
    pub fn upsert_network(&self, id: &str, network: &NetworkDns) -> Result<(), DnsError> {
        self.records().upsert_network(id, network)
    }

    /// Forgets a network and any endpoint still on it; false if it was not registered.
    pub fn remove_network(&self, id: &str) -> bool {
        self.records().remove_network(id)
    }

    /// Publishes a joined endpoint: from the next query on, every sandbox on `network` resolves
    /// its name, aliases and `name.network`, and its addresses resolve back. Call on join (and
    /// for every joined endpoint on reload).
    pub fn add_endpoint(&self, network: &str, endpoint: &EndpointDns) -> Result<(), DnsError> {
        self.records().add_endpoint(network, endpoint)
    }

    /// Withdraws an endpoint; from the next query on its names are gone. Call on leave. False
    /// if it was not registered.
    pub fn remove_endpoint(&self, network: &str, endpoint: &str) -> bool {
        self.records().remove_endpoint(network, endpoint)
    }

    /// Starts the sandbox's resolver at 127.0.0.11:53 (UDP and TCP) inside `netns`, with the
    /// sandbox's settings. Call on sandbox create, and on reload for every adopted sandbox.
    /// Attaching again with the same namespace only updates the settings; with another
    /// namespace (the sandbox was recreated) the old listener stops and a new one starts.
    /// On error nothing changed.
    pub async fn attach_sandbox(
        &self,
        id: &str,
        netns: &NetNs,
        dns: SandboxDns,
    ) -> Result<(), DnsError> {
        self.attach_sandbox_bound(id, netns, None, dns).await
    }

    /// Binds the sockets of a sandbox's listener in `netns` (a thread that enters it), for a
    /// later [`Resolver::attach_sandbox_bound`]: a caller binds them while it does other work.
    /// Nothing answers on them until then; dropped unused, they close.
    pub async fn bind_sandbox(netns: &NetNs) -> Result<BoundListener, DnsError> {
        let addr = SocketAddr::new(IpAddr::V4(SANDBOX_RESOLVER), 53);
        let (udp, tcp) = server::bind(netns, addr).await?;
        Ok(BoundListener {
            netns_id: netns.id(),
            udp,
            tcp,
        })
    }

    /// [`Resolver::attach_sandbox`] with the listener's sockets bound beforehand by
    /// [`Resolver::bind_sandbox`] (used if they are of `netns`, else bound here).
    pub async fn attach_sandbox_bound(
        &self,
        id: &str,
        netns: &NetNs,
        bound: Option<BoundListener>,
        dns: SandboxDns,
    ) -> Result<(), DnsError> {
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(DnsError::invalid(
                "sandbox id",
                id,
                "must be non-empty without control characters",
            ));
        }
        let same_ns = self
            .inner
            .sandboxes
            .lock()
            .expect("listeners lock poisoned")
            .get(id)
            .is_some_and(|l| l.netns_id == netns.id());
        if !same_ns {
            let (udp, tcp) = match bound.filter(|b| b.netns_id == netns.id()) {
                Some(b) => (b.udp, b.tcp),
                None => {
                    let addr = SocketAddr::new(IpAddr::V4(SANDBOX_RESOLVER), 53);
                    server::bind(netns, addr).await?
                }
            };
            let ctx = Arc::new(self.listen_ctx(Kind::Sandbox(Arc::from(id)), netns.clone()));
            let listener = server::spawn(ctx, udp, tcp, self.inner.workers.pick())?;
            let old = self
                .inner
                .sandboxes
                .lock()
                .expect("listeners lock poisoned")
                .insert(Arc::from(id), listener);
            drop(old);
            tracing::debug!(sandbox = %id, %netns, "DNS listener started");
        }
        self.records().set_sandbox_dns(id, dns);
        Ok(())
    }

    /// Stops the sandbox's listener and forgets its settings (its endpoints stay until they
    /// leave). Call on sandbox delete. False if it had none.
    pub fn detach_sandbox(&self, id: &str) -> bool {
        let listener = self
            .inner
            .sandboxes
            .lock()
            .expect("listeners lock poisoned")
            .remove(id);
        self.records().clear_sandbox_dns(id);
        listener.is_some()
    }

    /// Starts a listener on the host (in the controller's host namespace) at `addr`, answering
    /// `name.network` and `name.network.<domain>` for every network, and PTR for their
    /// addresses; anything else is REFUSED (it forwards nothing). Port 0 picks a free port
    /// (the same for UDP and TCP). Returns the bound address.
    ///
    /// Only a loopback address keeps it unreachable from outside the host; another address is
    /// refused unless `allow_non_loopback` is set.
    pub async fn listen_on_host(
        &self,
        addr: SocketAddr,
        allow_non_loopback: bool,
    ) -> Result<SocketAddr, DnsError> {
        if !addr.ip().is_loopback() && !allow_non_loopback {
            return Err(DnsError::invalid(
                "host listener address",
                addr.to_string(),
                "not a loopback address: it would be reachable from other machines",
            ));
        }
        let ns = self.inner.host_netns.clone();
        let (udp, tcp) = server::bind(&ns, addr).await?;
        let ctx = Arc::new(self.listen_ctx(Kind::Host, ns));
        let listener = server::spawn(ctx, udp, tcp, self.inner.workers.pick())?;
        let bound = listener.addr;
        self.inner
            .shared
            .own
            .write()
            .expect("own addresses lock poisoned")
            .push(bound);
        self.inner
            .host_listeners
            .lock()
            .expect("listeners lock poisoned")
            .push(listener);
        tracing::debug!(%bound, "host DNS listener started");
        Ok(bound)
    }

    /// Stops the host listener bound at `addr`; false if there was none.
    pub fn stop_host_listener(&self, addr: SocketAddr) -> bool {
        let mut listeners = self
            .inner
            .host_listeners
            .lock()
            .expect("listeners lock poisoned");
        let before = listeners.len();
        listeners.retain(|l| l.addr != addr);
        self.inner
            .shared
            .own
            .write()
            .expect("own addresses lock poisoned")
            .retain(|a| *a != addr);
        listeners.len() != before
    }

    /// The counters so far.
    pub fn stats(&self) -> ResolverStats {
        let s = &self.inner.shared.stats;
        ResolverStats {
            queries: s.queries.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            refused_busy: s.refused_busy.load(Ordering::Relaxed),
            tcp_rejected: s.tcp_rejected.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            sandbox_listeners: self
                .inner
                .sandboxes
                .lock()
                .expect("listeners lock poisoned")
                .len(),
            endpoints: self
                .inner
                .shared
                .records
                .read()
                .expect("records lock poisoned")
                .endpoint_count(),
        }
    }

    fn listen_ctx(&self, kind: Kind, netns: NetNs) -> ListenCtx {
        let l = self.inner.shared.limits;
        ListenCtx {
            shared: self.inner.shared.clone(),
            kind,
            netns,
            forward_slots: Arc::new(Semaphore::new(l.forward_concurrency_per_listener)),
            tcp_slots: Arc::new(Semaphore::new(l.tcp_connections_per_listener)),
            stopped: AtomicBool::new(false),
        }
    }
}
