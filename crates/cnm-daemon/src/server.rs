//! [`Daemon`]: the state-dir lock, the controller, the predefined networks, and the HTTP servers
//! (the API on a unix socket, metrics on an opt-in TCP address) with graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use cnm::cnm_sandbox::NetNs;
use cnm::store::{MemoryStore, Store};
use cnm::{Controller, CoreError, Endpoint, JoinOption, Network, NetworkOptions, Sandbox};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::conn::{self, Limits, Registry};
use crate::events::{Event, Events};
use crate::lock::StateLock;
use crate::metrics::{Gauges, Metrics};
use crate::request::{MAX_BODY, decode};
use crate::{ApiError, DaemonError, clock, cnm_api, docker};

/// The newest Docker Engine API version this daemon speaks (announced in `/_ping` and every
/// answer's `Api-Version` header, and used for requests without a `/v1.NN` prefix): the
/// network API of Docker 28.0 (`EnableIPv4`, `GwPriority`).
pub const API_VERSION: &str = "1.48";
/// [`API_VERSION`] as numbers.
pub const MAX_API_VERSION: (u32, u32) = (1, 48);
/// The oldest Docker Engine API version accepted in a `/v1.NN` prefix: what dockerd 20.10
/// accepts (current engines default to 1.24). Answers are shaped per version where Docker's
/// are (see `docker.rs`); errors are plain text before 1.24, as dockerd's.
pub const MIN_API_VERSION: (u32, u32) = (1, 12);
/// The default socket.
pub const DEFAULT_SOCKET: &str = "/run/cnm/cnm.sock";
/// The names Docker reserves for its predefined networks.
pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];
/// The default bridge's interface name.
pub const DEFAULT_BRIDGE_IF: &str = "cnm0";
/// Default [`Config::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Config::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The socket's mode: owner and group read and write, nobody else.
const SOCKET_MODE: u32 = 0o660;

/// Which state store backs the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreKind {
    /// In memory: state is lost when cnmd exits.
    Memory,
    /// The embedded durable store (`cnm-store`'s redb) in the state dir (the default): networks,
    /// endpoints and sandboxes survive a restart of cnmd, and running containers keep their
    /// connectivity across it.
    Redb,
}

impl StoreKind {
    /// The name as given on the command line and shown in `/cnm/v1/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redb => "redb",
        }
    }
}

impl FromStr for StoreKind {
    type Err = DaemonError;
    fn from_str(s: &str) -> Result<Self, DaemonError> {
        match s {
            "memory" => Ok(Self::Memory),
            "redb" => Ok(Self::Redb),
            _ => Err(DaemonError::Config {
                field: "store",
                reason: format!("{s:?} is not one of memory, redb"),
            }),
        }
    }
}

/// What a daemon is started with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The API socket (default `/run/cnm/cnm.sock`), created with mode 0660, owned by root and
    /// [`Config::socket_group`].
    pub socket: PathBuf,
    /// The group that may use the socket besides root (like dockerd's `--group`): a name or a
    /// numeric gid. None (the default): the socket's group is the daemon's own (root).
    pub socket_group: Option<String>,
    /// How long a client has to send a request head, counted from when its connection starts
    /// waiting for one (at accept, and after each response on a keep-alive connection): it
    /// closes half-sent requests and idle keep-alive connections alike. Default 10 s.
    pub header_timeout: Duration,
    /// How long a client has to send a request body once its head has arrived (408 after).
    /// Default 30 s.
    pub body_timeout: Duration,
    /// Open API connections at most (default 1024, and at most half the descriptor limit);
    /// beyond it the longest-idle connection is closed to serve the new one.
    pub max_connections: usize,
    /// The run dir (default `/run/cnm`).
    pub run_dir: PathBuf,
    /// The state dir (default `/var/lib/cnm`), locked for this process.
    pub state_dir: PathBuf,
    /// Where to serve Prometheus `/metrics` over TCP (off by default).
    pub metrics_addr: Option<SocketAddr>,
    /// The store.
    pub store: StoreKind,
    /// The namespace treated as the host (default: the process's own). Tests pass a throwaway.
    pub host_netns: Option<NetNs>,
    /// The resolv.conf containers' resolv.conf derives from (default `/etc/resolv.conf`).
    pub resolv_conf: Option<PathBuf>,
    /// `--ip-forward-no-drop`: keep forwarding traffic that is not cnm's even when cnm turned
    /// forwarding on (the bridge driver's `com.cnm.bridge.ip_forward_no_drop`).
    pub ip_forward_no_drop: bool,
    /// Where network driver plugins are found by name, the moment a network names a driver
    /// cnmd does not have, and how long each call to one may take (cnmd's `--plugin-dir`,
    /// `--plugin-timeout`). None (the default here, for embedding and tests): no plugins, an
    /// unknown driver is not found.
    pub plugins: Option<cnm_driver_remote::RemoteConfig>,
    /// Serve cnm's drivers and IPAM to dockerd as a Docker plugin on `DIR/NAME.sock` (cnmd's
    /// `--docker-plugin NAME`, `--docker-plugin-dir DIR`). None (the default): not served.
    pub docker_plugin: Option<crate::plugin::DockerPluginConfig>,
    /// The cluster store every host shares (`--cluster-store etcd://HOST:PORT[,HOST:PORT…]`),
    /// where global (overlay) networks live. None (the default): local networks only. Not
    /// reachable at start: cnmd starts with local networks and keeps trying in the background
    /// (every 1 s, doubling up to 10 s), joining the cluster the moment it answers.
    pub cluster_store: Option<cnm_store::EtcdEndpoints>,
    /// This host's address on the cluster's underlay (`--advertise-addr`): its overlay VTEP.
    pub advertise_addr: Option<std::net::IpAddr>,
    /// The TTL of the lease this host's per-endpoint facts live under (`--cluster-lease-ttl`):
    /// when this host dies the others drop its endpoints within it.
    pub cluster_lease_ttl: Duration,
    /// Host-wide driver settings, `(driver, key, value)` (cnmd's `--wireguard-port` and
    /// `--wireguard-key-rotation` for the overlay's): see `ControllerBuilder::driver_setting`.
    pub driver_settings: Vec<(String, String, String)>,
    /// The resolver on the host answering `name.network[.cnm]` (cnmd's `--host-dns`; see
    /// [`HostDns`]). Default here (for embedding and tests): off.
    pub host_dns: HostDns,
    /// Register the host resolver with systemd-resolved for the `cnm` domain (cnmd's
    /// `--resolved-bus`, `--resolved-link`; see [`Resolved`]). None (the default here, for
    /// embedding and tests): not asked. Only used when the host resolver runs.
    pub resolved: Option<Resolved>,
}

/// Where and on which link cnmd registers its host resolver with systemd-resolved
/// (`org.freedesktop.resolve1` on D-Bus): the listener's address as the link's DNS server,
/// `~cnm` as its routing-only domain, no default route; reverted when cnmd stops.
///
/// The link is cnm's default bridge ([`DEFAULT_BRIDGE_IF`]) by default: resolved refuses
/// loopback, the link must be cnm's own (resolved's settings live as long as the link, and a
/// host interface's belong to its network manager), and the default bridge is the one link
/// cnmd always has. resolved uses a link's servers only while it has carrier, i.e. while at
/// least one container is on that bridge; `--resolved-link` names another (an always-up dummy
/// of the administrator's), or a resolved.conf drop-in (`DNS=` + `Domains=~cnm`) covers every
/// case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The bus resolved is on.
    pub bus: cnm::cnm_dns::resolved::ResolvedBus,
    /// The interface (in the host namespace) the settings go on.
    pub link: String,
}

impl Default for Resolved {
    /// The system bus, the default bridge.
    fn default() -> Self {
        Self {
            bus: cnm::cnm_dns::resolved::ResolvedBus::System,
            link: DEFAULT_BRIDGE_IF.to_owned(),
        }
    }
}

/// cnmd's default host resolver address: loopback (never reachable from another machine, nor
/// from a container: the kernel never routes 127.0.0.0/8 between namespaces), and not
/// systemd-resolved's 127.0.0.53/54.
pub const DEFAULT_HOST_DNS: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 153)),
    53,
);

/// Whether and where cnmd offers the embedded DNS on the host (moby#27790), answering
/// `name.network` and `name.network.cnm` for every network and REFUSED for anything else (it
/// forwards nothing). The address must be a loopback one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostDns {
    /// No host resolver.
    #[default]
    Off,
    /// At this address if it can be bound; if not (another DNS server holds the port on every
    /// address), a warning and the daemon runs without it. cnmd's default, at
    /// [`DEFAULT_HOST_DNS`].
    Try(SocketAddr),
    /// At this address or the daemon does not start (an explicit `--host-dns ADDR`).
    Require(SocketAddr),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            run_dir: PathBuf::from(cnm::DEFAULT_RUN_DIR),
            state_dir: PathBuf::from(cnm::DEFAULT_STATE_DIR),
            metrics_addr: None,
            store: StoreKind::Redb,
            host_netns: None,
            resolv_conf: None,
            ip_forward_no_drop: false,
            plugins: None,
            docker_plugin: None,
            cluster_store: None,
            advertise_addr: None,
            cluster_lease_ttl: cnm::spi::DEFAULT_LEASE_TTL,
            driver_settings: Vec::new(),
            host_dns: HostDns::Off,
            resolved: None,
        }
    }
}

impl Config {
    /// Defaults with the given run and state dirs, the socket being `<run_dir>/cnm.sock`.
    pub fn in_dirs(run_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let run_dir = run_dir.into();
        Self {
            socket: run_dir.join("cnm.sock"),
            run_dir,
            state_dir: state_dir.into(),
            ..Self::default()
        }
    }
}

/// The API version of a request: its `/v1.NN` prefix, else [`MAX_API_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ApiVersion(pub(crate) u32, pub(crate) u32);

impl ApiVersion {
    /// Whether the request speaks at least `major.minor`.
    pub(crate) fn at_least(self, major: u32, minor: u32) -> bool {
        self >= ApiVersion(major, minor)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let (ma, mi) = MAX_API_VERSION;
        Ok(parts
            .extensions
            .get::<ApiVersion>()
            .copied()
            .unwrap_or(ApiVersion(ma, mi)))
    }
}

/// A JSON answer as dockerd writes it: `application/json`, ending with a newline.
pub(crate) struct DockerJson<T>(pub(crate) T);

impl<T: serde::Serialize> IntoResponse for DockerJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(mut body) => {
                body.push(b'\n');
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response()
            }
            Err(e) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to encode the answer: {e}"),
            )
            .into_response(),
        }
    }
}

/// Everything a request handler sees.
pub(crate) struct AppState {
    pub(crate) ctl: Controller,
    pub(crate) events: Events,
    pub(crate) metrics: Arc<Metrics>,
    connections: Arc<Registry>,
    body_timeout: Duration,
    created: Mutex<HashMap<String, SystemTime>>,
    started: SystemTime,
    pub(crate) run_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) store: StoreKind,
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) type St = State<Arc<AppState>>;

impl AppState {
    /// The network with this name, id or unique id prefix; 404 or 400 (ambiguous) in Docker's
    /// words.
    pub(crate) fn network(&self, key: &str) -> Result<Network, ApiError> {
        self.ctl
            .network(key)
            .map_err(|e| self.network_error(key, e))
    }

    /// A failed network lookup in dockerd's words; for a network that waits for its plugin
    /// (see [`Controller::waiting_networks`]), a conflict saying so.
    pub(crate) fn network_error(&self, key: &str, e: CoreError) -> ApiError {
        match e {
            CoreError::NotFound { .. } => match self.waiting_network(key) {
                Some(w) => ApiError::conflict(format!(
                    "network {} id {} is waiting for its {} (a plugin not found yet): it cannot \
                     be used or removed until the plugin appears",
                    w.record.name, w.record.id, w.waits_for
                )),
                None => ApiError::not_found(format!("network {key} not found")),
            },
            CoreError::Ambiguous { matches, .. } => ApiError::bad_request(format!(
                "network {key} is ambiguous ({} matches found based on ID prefix)",
                matches.len()
            )),
            e => e.into(),
        }
    }

    /// The sandbox with this name, id or unique id prefix; 404 says `not_found`.
    pub(crate) fn sandbox(
        &self,
        key: &str,
        not_found: impl FnOnce() -> String,
    ) -> Result<Sandbox, ApiError> {
        self.ctl.sandbox(key).map_err(|e| match e {
            CoreError::NotFound { .. } => ApiError::not_found(not_found()),
            e => e.into(),
        })
    }

    /// When the network was created: its record's time (kept across restarts); for a network
    /// recorded without one, when this daemon saw it created, else the daemon's start.
    pub(crate) fn created_at(&self, net: &Network) -> SystemTime {
        let recorded = net.created();
        if recorded != SystemTime::UNIX_EPOCH {
            return recorded;
        }
        let map = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(net.id()).copied().unwrap_or(self.started)
    }

    /// The network waiting for its driver or IPAM driver (see
    /// [`Controller::waiting_networks`]) with this name, id or unique id prefix.
    pub(crate) fn waiting_network(&self, key: &str) -> Option<cnm::WaitingNetwork> {
        let waiting = self.ctl.waiting_networks();
        if let Some(w) = waiting
            .iter()
            .find(|w| w.record.id == key || w.record.name == key)
        {
            return Some(w.clone());
        }
        let mut prefixed = waiting.into_iter().filter(|w| w.record.id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some(w), None) if !key.is_empty() => Some(w),
            _ => None,
        }
    }

    /// When a waiting network was created, in RFC 3339: its record's time, else the daemon's
    /// start.
    pub(crate) fn created_waiting(&self, w: &cnm::WaitingNetwork) -> String {
        let recorded = w.record.created;
        clock::rfc3339(if recorded == SystemTime::UNIX_EPOCH {
            self.started
        } else {
            recorded
        })
    }

    /// [`AppState::created_at`] in RFC 3339.
    pub(crate) fn created(&self, net: &Network) -> String {
        clock::rfc3339(self.created_at(net))
    }

    /// Publishes Docker's network event `action` on `net` (with the sandbox `sandbox` for a
    /// connect or disconnect).
    pub(crate) fn publish_network(&self, action: &str, net: &Network, sandbox: Option<&str>) {
        self.events.publish(Event::network(
            action,
            net.id(),
            net.name(),
            net.driver(),
            sandbox,
        ));
    }

    pub(crate) fn network_created(&self, net: &Network) {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(net.id().to_owned(), SystemTime::now());
        self.publish_network("create", net, None);
    }

    pub(crate) fn network_destroyed(&self, net: &Network) {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(net.id());
        self.publish_network("destroy", net, None);
    }

    /// Runs and times one mutating operation.
    pub(crate) async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let t = Instant::now();
        let r = fut.await;
        self.metrics.operation(op, t.elapsed());
        r
    }

    /// Creates the endpoint of `sb` on `net` (named after the sandbox, as Docker names an
    /// endpoint after its container) and joins it, as one core operation (the endpoint goes
    /// again if the join fails).
    pub(crate) async fn connect(
        &self,
        net: &Network,
        sb: &Sandbox,
        options: cnm::EndpointOptions,
        join: Vec<JoinOption>,
    ) -> Result<Endpoint, ApiError> {
        self.timed("connect", async {
            let ep = net.connect(sb.container_id(), sb, options, join).await?;
            self.publish_network("connect", net, Some(sb.id()));
            Ok(ep)
        })
        .await
    }

    /// Leaves `net` and deletes the sandbox's endpoint on it (one core operation).
    pub(crate) async fn disconnect(&self, net: &Network, sb: &Sandbox) -> Result<(), ApiError> {
        self.timed("disconnect", async {
            sb.disconnect(net).await.map_err(|e| match e {
                // dockerd names the container by its id.
                CoreError::NotConnected { .. } => ApiError::conflict(format!(
                    "container {} is not connected to network {}",
                    sb.id(),
                    net.name()
                )),
                e => e.into(),
            })?;
            self.publish_network("disconnect", net, Some(sb.id()));
            Ok(())
        })
        .await
    }

    pub(crate) fn gauges(&self) -> Gauges {
        let networks = self.ctl.networks();
        Gauges {
            endpoints: networks.iter().map(|n| n.endpoints().len()).sum(),
            networks: networks.len(),
            sandboxes: self.ctl.sandboxes().len(),
            connections: self.connections.len(),
        }
    }
}

/// A JSON body, size-limited and decoded by [`decode`]; refusals are 4xx in Docker's shape.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        // A head followed by a body that never comes would hold the connection (and mark it
        // busy, so last in line for eviction) for ever.
        let limit = state.body_timeout;
        let bytes = tokio::time::timeout(limit, axum::body::Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request body not received within {} s", limit.as_secs_f64()),
                )
            })?
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body is larger than {MAX_BODY} bytes"),
                    )
                } else {
                    ApiError::new(e.status(), e.body_text())
                }
            })?;
        decode(&bytes).map(Body)
    }
}

/// The one path parameter (a name, id or prefix), percent-decoded.
pub(crate) struct Key(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Key(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Every route: (method, path, handler). The OpenAPI file is checked against this list.
pub(crate) fn routes() -> Vec<(&'static str, &'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("get", "/_ping", get(docker::ping)),
        ("head", "/_ping", axum::routing::head(docker::ping)),
        ("get", "/version", get(docker::version)),
        ("get", "/info", get(docker::info)),
        ("get", "/events", get(docker::events)),
        ("get", "/networks", get(docker::list)),
        // dockerd lists on the trailing slash too (API 1.26+).
        ("get", "/networks/", get(docker::list)),
        ("post", "/networks/create", post(docker::create)),
        ("post", "/networks/prune", post(docker::prune)),
        ("get", "/networks/{id}", get(docker::inspect)),
        (
            "delete",
            "/networks/{id}",
            axum::routing::delete(docker::remove),
        ),
        ("post", "/networks/{id}/connect", post(docker::connect)),
        (
            "post",
            "/networks/{id}/disconnect",
            post(docker::disconnect),
        ),
        ("get", "/cnm/v1/info", get(cnm_api::info)),
        ("get", "/cnm/v1/sandboxes", get(cnm_api::list)),
        ("post", "/cnm/v1/sandboxes", post(cnm_api::create)),
        ("get", "/cnm/v1/sandboxes/{key}", get(cnm_api::inspect)),
        (
            "delete",
            "/cnm/v1/sandboxes/{key}",
            axum::routing::delete(cnm_api::remove),
        ),
        (
            "post",
            "/cnm/v1/sandboxes/{key}/connect",
            post(cnm_api::connect),
        ),
        (
            "post",
            "/cnm/v1/sandboxes/{key}/disconnect",
            post(cnm_api::disconnect),
        ),
    ]
}

/// The metrics listener's one route.
pub(crate) const METRICS_ROUTE: (&str, &str) = ("get", "/metrics");

fn api_router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::not_found("page not found") })
        // dockerd's router answers an unrouted method with 404 too.
        .method_not_allowed_fallback(|| async { ApiError::not_found("page not found") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn count_requests(State(st): St, req: Request, next: Next) -> Response {
    // The route template the router matched, never the raw path: a label's values stay few.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let span = tracing::debug_span!("request", %method, uri = %req.uri());
    let resp = tracing::Instrument::instrument(next.run(req), span).await;
    st.metrics.request(&route, &method, resp.status());
    resp
}

/// Splits `/v1.45/networks` into ((1, 45), "/networks").
fn split_version(path: &str) -> Option<((u32, u32), &str)> {
    let rest = path.strip_prefix("/v")?;
    let slash = rest.find('/').unwrap_or(rest.len());
    let (major, minor) = rest[..slash].split_once('.')?;
    let v = (major.parse().ok()?, minor.parse().ok()?);
    let tail = &rest[slash..];
    Some((v, if tail.is_empty() { "/" } else { tail }))
}

/// Strips Docker's `/v1.NN` prefix (refusing versions outside the range served, in dockerd's
/// words), records the version for the handlers, turns error bodies into plain text for
/// versions before 1.24 (dockerd's JSON errors start there), and stamps Docker's headers on
/// every response.
async fn docker_version(mut req: Request, next: Next) -> Response {
    let (ma, mi) = MAX_API_VERSION;
    let mut version = ApiVersion(ma, mi);
    if let Some((v, tail)) = split_version(req.uri().path()) {
        version = ApiVersion(v.0, v.1);
        if v < MIN_API_VERSION {
            let (ma, mi) = MIN_API_VERSION;
            let e = ApiError::bad_request(format!(
                "client version {}.{} is too old. Minimum supported API version is {ma}.{mi}, \
                 please upgrade your client to a newer version",
                v.0, v.1
            ));
            return stamp(versioned_error(version, e.into_response()).await);
        }
        if v > MAX_API_VERSION {
            let e = ApiError::bad_request(format!(
                "client version {}.{} is too new. Maximum supported API version is {API_VERSION}",
                v.0, v.1
            ));
            return stamp(versioned_error(version, e.into_response()).await);
        }
        let pq = match req.uri().query() {
            Some(q) => format!("{tail}?{q}"),
            None => tail.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        match pq.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return stamp(ApiError::bad_request("invalid request path").into_response()),
        }
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return stamp(ApiError::bad_request("invalid request path").into_response()),
        }
    }
    req.extensions_mut().insert(version);
    let resp = next.run(req).await;
    stamp(versioned_error(version, resp).await)
}

/// Before API 1.24 dockerd sends errors as `text/plain` lines, not `{"message": …}`.
async fn versioned_error(version: ApiVersion, resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if version.at_least(1, 24)
        || !resp.status().is_client_error() && !resp.status().is_server_error()
        || !is_json
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return parts.status.into_response();
    };
    let message = serde_json::from_slice::<::cnm_api::docker::ErrorResponse>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    (
        parts.status,
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

fn stamp(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert(
        "server",
        HeaderValue::from_static(concat!("cnmd/", env!("CARGO_PKG_VERSION"))),
    );
    resp
}

/// The local network that gives overlay endpoints their way out (Docker's `docker_gwbridge`).
pub const GATEWAY_NETWORK: &str = "cnm_gwbridge";

/// Its options, as dockerd gives docker_gwbridge: a bridge of the same name, masquerading on,
/// and no inter-container traffic (so two overlay networks never meet through it); no embedded
/// DNS (its endpoints are not names anyone asks for).
fn gateway_network_options() -> NetworkOptions {
    NetworkOptions::default()
        .driver_option("com.docker.network.bridge.name", GATEWAY_NETWORK)
        .driver_option("com.docker.network.bridge.enable_icc", "false")
        .driver_option("com.docker.network.bridge.enable_ip_masquerade", "true")
        .driver_option(cnm::options::KEY_EMBEDDED_DNS, "false")
}

/// Creates `none`, `host` and the default `bridge` when missing, marked predefined (the
/// controller refuses to delete them).
async fn ensure_predefined(ctl: &Controller) -> Result<(), DaemonError> {
    let have: Vec<String> = ctl.networks().iter().map(|n| n.name().to_owned()).collect();
    let predefined =
        || NetworkOptions::default().driver_option(cnm::options::KEY_PREDEFINED, "true");
    let wanted = [
        ("null", "none", predefined()),
        ("host", "host", predefined()),
        (
            "bridge",
            "bridge",
            predefined()
                .driver_option("com.docker.network.bridge.name", DEFAULT_BRIDGE_IF)
                // dockerd's default bridge states its settings (the defaults, here) among its
                // options, and clients read them there.
                .driver_option("com.docker.network.bridge.enable_icc", "true")
                .driver_option("com.docker.network.bridge.enable_ip_masquerade", "true")
                .driver_option("com.docker.network.bridge.host_binding_ipv4", "0.0.0.0")
                .driver_option(cnm::options::KEY_DRIVER_MTU, "1500")
                // Docker's default bridge has no embedded DNS: containers on it get the host's
                // name servers and find each other only by legacy links.
                .driver_option(cnm::options::KEY_EMBEDDED_DNS, "false"),
        ),
    ];
    for (driver, name, options) in wanted {
        if have.iter().any(|h| h == name) {
            continue;
        }
        ctl.new_network(driver, name, options)
            .await
            .map_err(|source| DaemonError::Controller {
                op: format!("create predefined network {name}"),
                source: Box::new(source),
            })?;
        tracing::info!(network = name, driver, "predefined network created");
    }
    Ok(())
}

/// The gid of `spec`, a group name or a numeric gid (as dockerd's `--group` takes them).
fn resolve_group(spec: &str) -> Result<u32, DaemonError> {
    let bad = |reason: String| DaemonError::Config {
        field: "group",
        reason,
    };
    match nix::unistd::Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => spec.parse::<u32>().map_err(|_| {
            bad(format!(
                "no group named {spec:?}, and it is not a numeric gid"
            ))
        }),
        Err(e) => Err(bad(format!("cannot look up group {spec:?}: {e}"))),
    }
}

/// The connection cap: as configured, but at most half the descriptor limit, so that
/// connections alone can never use up the descriptors published ports and namespaces need.
fn connection_cap(configured: usize) -> Result<usize, DaemonError> {
    if configured == 0 {
        return Err(DaemonError::Config {
            field: "max-connections",
            reason: "must be at least 1".to_owned(),
        });
    }
    let soft = match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; keeping the connection cap");
            return Ok(configured);
        }
    };
    let half = usize::try_from(soft / 2).unwrap_or(usize::MAX).max(1);
    if configured > half {
        tracing::warn!(
            configured,
            cap = half,
            nofile = soft,
            "connection cap lowered to half the descriptor limit"
        );
        return Ok(half);
    }
    Ok(configured)
}

/// Binds the API socket with its final mode from the start: never reachable by more users than
/// it should be, not even for the moment between bind and chmod.
///
/// The socket is born 0600 (umask 0177 around `bind`), then given its group, then opened to the
/// group (0660): each step only widens access to whom it is meant for. The umask is
/// process-wide, but while it is raised other threads' new files get fewer permission bits,
/// never more (and the sandbox files set their mode explicitly).
fn bind_socket(path: &Path, gid: Option<u32>) -> Result<tokio::net::UnixListener, DaemonError> {
    use nix::sys::stat::{Mode, umask};
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(|e| DaemonError::io("bind", path.display(), e))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| DaemonError::io("chown", path.display(), e))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| DaemonError::io("chmod", path.display(), e))?;
    Ok(listener)
}

/// Removes a socket file left by a dead cnmd; refuses to remove anything that is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), DaemonError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path)
                .map_err(|e| DaemonError::io("remove stale socket", path.display(), e))
        }
        Ok(_) => Err(DaemonError::Config {
            field: "socket",
            reason: format!("{} exists and is not a socket", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::io("inspect", path.display(), e)),
    }
}

/// A running daemon. Dropping it does not stop it; call [`Daemon::stop`].
#[derive(Debug)]
pub struct Daemon {
    controller: Controller,
    socket: PathBuf,
    metrics_addr: Option<SocketAddr>,
    host_dns: Option<SocketAddr>,
    resolved: Option<cnm::cnm_dns::resolved::Registration>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

impl Daemon {
    /// Locks the state dir, builds the controller, creates the predefined networks and starts
    /// serving; returns once both listeners accept connections.
    pub async fn start(config: Config) -> Result<Daemon, DaemonError> {
        // Bad configuration is refused before anything exists.
        let socket_gid = match &config.socket_group {
            Some(g) => Some(resolve_group(g)?),
            None => None,
        };
        let limits = Limits {
            header_timeout: config.header_timeout,
            max_connections: connection_cap(config.max_connections)?,
        };
        if let Some(p) = &config.docker_plugin {
            p.validate().map_err(|reason| DaemonError::Config {
                field: "docker-plugin",
                reason,
            })?;
        }
        let lock = StateLock::acquire(&config.state_dir)?;
        let store: Arc<dyn Store> = match config.store {
            StoreKind::Memory => Arc::new(MemoryStore::new()),
            StoreKind::Redb => {
                // Opening may repair the file after a crash: blocking work.
                let dir = config.state_dir.clone();
                // Not `open_exclusive`: the daemon holds the state dir's lock already.
                let opened = tokio::task::spawn_blocking(move || cnm_store::RedbStore::open(&dir))
                    .await
                    .map_err(|e| DaemonError::Task(e.to_string()))?;
                Arc::new(opened.map_err(|source| DaemonError::Store {
                    path: config.state_dir.clone(),
                    source,
                })?)
            }
        };
        let mut builder = Controller::builder()
            .run_dir(&config.run_dir)
            .state_dir(&config.state_dir)
            .store(store);
        if let Some(ns) = config.host_netns.clone() {
            builder = builder.host_netns(ns);
        }
        if let Some(rc) = &config.resolv_conf {
            builder = builder.resolv_conf(rc);
        }
        let awaited = match connect_cluster(&config).await? {
            ClusterAtStart::None => None,
            ClusterAtStart::Joined(cluster) => {
                builder = builder.cluster_store(cluster);
                None
            }
            ClusterAtStart::Awaited(endpoints) => {
                builder = builder.cluster_store_awaited(endpoints.to_string());
                Some(endpoints)
            }
        };
        if let Some(addr) = config.advertise_addr {
            builder = builder.advertise_addr(addr);
        }
        builder = builder.cluster_lease_ttl(config.cluster_lease_ttl);
        for (driver, key, value) in &config.driver_settings {
            builder = builder.driver_setting(driver, key, value.clone());
        }
        // Docker's docker_gwbridge: the way out of overlay endpoints, made on first need.
        builder = builder.gateway_network(GATEWAY_NETWORK, "bridge", gateway_network_options());
        // Plugins are found before the reload too: a recorded network of a plugin's driver
        // comes back once its plugin answers.
        if let Some(plugins) = &config.plugins {
            builder = builder.driver_resolver(Arc::new(cnm_driver_remote::PluginResolver::new(
                plugins.clone(),
            )));
            builder = builder.ipam_resolver(Arc::new(cnm_driver_remote::PluginIpamResolver::new(
                plugins.clone(),
            )));
        }
        let ctl = builder
            .build()
            .await
            .map_err(|source| DaemonError::Controller {
                op: "build the controller".to_owned(),
                source: Box::new(source),
            })?;
        if config.ip_forward_no_drop {
            // cnm_driver_bridge::options::IP_FORWARD_NO_DROP
            let mut opts = cnm::DriverOptions::new();
            opts.insert("com.cnm.bridge.ip_forward_no_drop".into(), "true".into());
            ctl.configure_network_driver("bridge", opts)
                .await
                .map_err(|source| DaemonError::Controller {
                    op: "configure the bridge driver (--ip-forward-no-drop)".to_owned(),
                    source: Box::new(source),
                })?;
        }
        ensure_predefined(&ctl).await?;
        let host_dns = start_host_dns(&ctl, config.host_dns).await?;
        let resolved = match host_dns {
            Some(bound) => register_with_resolved(&ctl, config.resolved.as_ref(), bound).await,
            None => None,
        };

        // Only the lock holder may touch the socket: a second cnmd must not unlink a live one.
        if let Some(dir) = config.socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DaemonError::io("create socket dir", dir.display(), e))?;
        }
        remove_stale_socket(&config.socket)?;
        let listener = bind_socket(&config.socket, socket_gid)?;
        let plugin = match &config.docker_plugin {
            Some(p) => {
                let host_id = ctl.host_id().map_err(|source| DaemonError::Controller {
                    op: "read the host id".to_owned(),
                    source: Box::new(source),
                })?;
                let ipam = crate::plugin::ipam::IpamServer::open(&config.state_dir, &host_id)
                    .map_err(|reason| DaemonError::Config {
                        field: "docker-plugin",
                        reason,
                    })?;
                std::fs::create_dir_all(&p.dir)
                    .map_err(|e| DaemonError::io("create plugin dir", p.dir.display(), e))?;
                let path = p.socket();
                remove_stale_socket(&path)?;
                // dockerd runs as root: the plugin socket is root's only.
                let listener = bind_socket(&path, None)?;
                let networks = crate::plugin::mapping::NetworkMap::open(&config.state_dir)
                    .map_err(|reason| DaemonError::Config {
                        field: "docker-plugin",
                        reason,
                    })?;
                let state = Arc::new(crate::plugin::PluginState {
                    ctl: ctl.clone(),
                    ipam,
                    networks,
                });
                Some((listener, path, state))
            }
            None => None,
        };
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| DaemonError::io("bind metrics address", addr, e))?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| DaemonError::io("read address of", "metrics listener", e))?,
            ),
            None => None,
        };

        let (tx, rx) = watch::channel(false);
        let connections = Arc::new(Registry::default());
        let state = Arc::new(AppState {
            ctl: ctl.clone(),
            events: Events::default(),
            metrics: Arc::new(Metrics::default()),
            connections: connections.clone(),
            body_timeout: config.body_timeout,
            created: Mutex::new(HashMap::new()),
            started: SystemTime::now(),
            run_dir: config.run_dir.clone(),
            state_dir: config.state_dir.clone(),
            store: config.store,
            shutdown: rx.clone(),
        });
        let app = tower::Layer::layer(
            &middleware::from_fn(docker_version),
            api_router(state.clone()),
        );
        let socket = config.socket.clone();
        let api = conn::serve(
            listener,
            conn::App::new(app),
            limits,
            connections,
            Some(state.metrics.clone()),
            rx.clone(),
        );
        let metrics = metrics_listener.map(|l| {
            let router = Router::new()
                .route(METRICS_ROUTE.1, get(metrics_handler))
                .with_state(state.clone());
            conn::serve(
                l,
                conn::App::new(router),
                limits,
                Arc::new(Registry::default()),
                None,
                rx.clone(),
            )
        });
        let plugin = plugin.map(|(listener, path, st)| {
            tracing::info!(socket = %path.display(), "serving cnm as a Docker network and IPAM plugin");
            let serve = conn::serve(
                listener,
                conn::App::new(crate::plugin::router(st)),
                limits,
                Arc::new(Registry::default()),
                None,
                rx.clone(),
            );
            (serve, path)
        });
        tracing::info!(
            socket = %socket.display(),
            metrics = ?metrics_addr,
            store = config.store.as_str(),
            header_timeout = ?limits.header_timeout,
            max_connections = limits.max_connections,
            "cnmd listening"
        );
        let rejoin =
            awaited.map(|endpoints| join_cluster_later(ctl.clone(), endpoints, rx.clone()));
        // Networks reloaded without their plugin (driver or IPAM) come back when it appears.
        let waiter = config
            .plugins
            .as_ref()
            .filter(|_| !ctl.waiting_drivers().is_empty() || !ctl.waiting_ipams().is_empty())
            .map(|plugins| {
                let dirs = crate::waiting::plugin_dirs(plugins);
                tracing::warn!(
                    networks = ?ctl.waiting_networks().iter().map(|w| format!("{} ({})", w.record.name, w.waits_for)).collect::<Vec<_>>(),
                    dirs = ?dirs,
                    "networks wait for plugins not found: restored when they appear"
                );
                crate::waiting::restore_when_plugins_appear(ctl.clone(), dirs, rx.clone())
            });
        let sock = socket.clone();
        let task = tokio::spawn(async move {
            let metrics = async move {
                if let Some(m) = metrics {
                    m.await;
                }
            };
            let plugin_path = plugin.as_ref().map(|(_, p)| p.clone());
            let plugin = async move {
                if let Some((p, _)) = plugin {
                    p.await;
                }
            };
            let rejoin = async move {
                if let Some(r) = rejoin {
                    r.await;
                }
            };
            let waiter = async move {
                if let Some(w) = waiter {
                    w.await;
                }
            };
            tokio::join!(api, metrics, plugin, rejoin, waiter);
            if let Some(p) = plugin_path
                && let Err(e) = std::fs::remove_file(&p)
            {
                tracing::warn!(path = %p.display(), error = %e, "failed to remove plugin socket");
            }
            // Still holding the lock: the socket is ours to remove.
            if let Err(e) = std::fs::remove_file(&sock)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %sock.display(), error = %e, "failed to remove socket");
            }
            drop(lock);
            tracing::info!("cnmd stopped; networks and sandboxes are left in place");
            Ok(())
        });
        Ok(Daemon {
            controller: ctl,
            socket,
            metrics_addr,
            host_dns,
            resolved,
            shutdown: tx,
            task,
        })
    }

    /// The controller it serves.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The metrics listener's bound address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where the host resolver answers ([`Config::host_dns`]), if it runs.
    pub fn host_dns(&self) -> Option<SocketAddr> {
        self.host_dns
    }

    /// Stops accepting, lets in-flight requests finish (event streams end), removes the socket
    /// and releases the state-dir lock. Networks and sandboxes stay as they are.
    pub async fn stop(self) -> Result<(), DaemonError> {
        tracing::info!("cnmd shutting down");
        // resolved stops sending the cnm domain to a listener that goes away with the process.
        if let Some(reg) = self.resolved {
            let link = reg.ifindex();
            match reg.revert().await {
                Ok(()) => tracing::info!(link, "systemd-resolved registration reverted"),
                Err(e) => {
                    tracing::warn!(link, error = %e, "failed to revert the systemd-resolved registration")
                }
            }
        }
        self.shutdown.send_replace(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(DaemonError::Task(e.to_string())),
        }
    }
}

async fn metrics_handler(State(st): St) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(st.gauges()),
    )
}

/// Starts the host resolver as `want` says; returns where it answers.
async fn start_host_dns(
    ctl: &Controller,
    want: HostDns,
) -> Result<Option<SocketAddr>, DaemonError> {
    let (addr, required) = match want {
        HostDns::Off => return Ok(None),
        HostDns::Try(addr) => (addr, false),
        HostDns::Require(addr) => (addr, true),
    };
    let resolver = ctl.dns_resolver().ok().flatten();
    let bound = match resolver {
        Some(r) => r
            .listen_on_host(addr, false)
            .await
            .map_err(|e| e.to_string()),
        None => Err("the embedded DNS is off".to_owned()),
    };
    match bound {
        Ok(bound) => {
            tracing::info!(addr = %bound, "host DNS listener answering name.network and name.network.cnm");
            Ok(Some(bound))
        }
        Err(reason) if required => Err(DaemonError::Config {
            field: "host-dns",
            reason: format!("cannot serve DNS on the host at {addr}: {reason}"),
        }),
        Err(reason) => {
            tracing::warn!(%addr, %reason, "no host DNS listener (choose another address with --host-dns, or --host-dns off)");
            Ok(None)
        }
    }
}

/// Registers the host resolver at `bound` with systemd-resolved as `want` says. Never fails
/// the daemon: no bus, no resolved, no such link or a refusal is a log line with the hint for
/// doing it by hand.
async fn register_with_resolved(
    ctl: &Controller,
    want: Option<&Resolved>,
    bound: SocketAddr,
) -> Option<cnm::cnm_dns::resolved::Registration> {
    use cnm::cnm_dns::resolved::{Registered, ResolvedLink, register};
    let Some(want) = want else {
        tracing::info!("{}", host_resolver_hint(bound, None));
        return None;
    };
    // The system bus's resolved lives in the machine's network namespace: registering a link
    // index of another namespace (a cnmd run in a throwaway namespace, as tests do) would name
    // an unrelated host interface. An explicit bus address is the caller's word for it.
    if want.bus == cnm::cnm_dns::resolved::ResolvedBus::System {
        let machine = cnm::cnm_sandbox::NetNs::open("/proc/1/ns/net").map(|ns| ns.id());
        if machine.ok() != Some(ctl.host_netns().id()) {
            tracing::info!(
                "not registered with systemd-resolved: cnmd's host namespace is not the machine's (pid 1's)"
            );
            tracing::info!("{}", host_resolver_hint(bound, None));
            return None;
        }
    }
    let link = async {
        cnm::cnm_sandbox::Netlink::connect(ctl.host_netns())
            .await?
            .link(&want.link)
            .await
    };
    let ifindex = match link.await {
        Ok(Some(l)) => l.index,
        Ok(None) => {
            tracing::warn!(link = %want.link, "no such link to register the host resolver with systemd-resolved on");
            tracing::info!("{}", host_resolver_hint(bound, None));
            return None;
        }
        Err(e) => {
            tracing::warn!(link = %want.link, error = %e, "cannot look up the link for systemd-resolved");
            tracing::info!("{}", host_resolver_hint(bound, None));
            return None;
        }
    };
    let spec = ResolvedLink {
        ifindex,
        server: bound,
        domain: cnm::cnm_dns::DEFAULT_DOMAIN.to_owned(),
    };
    match register(&want.bus, &spec).await {
        Ok(Registered::Done(reg)) => {
            tracing::info!(
                link = %want.link,
                ifindex,
                server = %bound,
                domain = %format_args!("~{}", spec.domain),
                "registered with systemd-resolved: the host resolves NAME.NETWORK.cnm (reverted when cnmd stops)"
            );
            Some(reg)
        }
        Ok(Registered::Unavailable(why)) => {
            tracing::info!(%why, "not registered with systemd-resolved");
            tracing::info!("{}", host_resolver_hint(bound, Some(&why)));
            None
        }
        Err(e) => {
            tracing::warn!(link = %want.link, error = %e, "systemd-resolved refused the host resolver");
            tracing::info!("{}", host_resolver_hint(bound, None));
            None
        }
    }
}

/// How to point this host's resolver at the host DNS listener by hand, when cnmd did not
/// register it with systemd-resolved (`why` is set when resolved was not found on the bus).
/// A resolved.conf drop-in with global `DNS=` and `Domains=~cnm` works on every version and
/// needs no link with carrier; resolved before v252.3 sent a per-link loopback server's
/// queries out of that link (systemd#25397, #23010).
fn host_resolver_hint(bound: SocketAddr, why: Option<&str>) -> String {
    let resolved = why.is_none()
        && (std::path::Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
            || std::fs::read_to_string("/etc/resolv.conf")
                .map(|s| {
                    s.lines()
                        .any(|l| l.split_whitespace().eq(["nameserver", "127.0.0.53"]))
                })
                .unwrap_or(false));
    let (server, dnsmasq, unbound) = if bound.port() == 53 {
        let ip = bound.ip().to_string();
        (ip.clone(), ip.clone(), ip)
    } else {
        let (ip, port) = (bound.ip(), bound.port());
        (
            bound.to_string(),
            format!("{ip}#{port}"),
            format!("{ip}@{port}"),
        )
    };
    if resolved {
        format!(
            "systemd-resolved runs: to resolve containers from the host, add /etc/systemd/resolved.conf.d/cnm.conf with \"[Resolve]\\nDNS={server}\\nDomains=~cnm\" and reload it (systemctl reload systemd-resolved), or per link: resolvectl dns LINK {server}; resolvectl domain LINK '~cnm'; then `getent hosts NAME.NETWORK.cnm`"
        )
    } else {
        format!(
            "to resolve containers from the host, route the cnm domain to {server}: dnsmasq: server=/cnm/{dnsmasq}; unbound: a stub-zone \"cnm\" with stub-addr {unbound}; or ask it directly (dig @{} -p {} NAME.NETWORK)",
            bound.ip(),
            bound.port()
        )
    }
}

/// Runs a daemon until `shutdown` completes, then stops it gracefully.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let daemon = Daemon::start(config).await?;
    shutdown.await;
    daemon.stop().await
}

/// The first wait before connecting again to a cluster store unreachable at start; each
/// failure doubles it, up to [`CLUSTER_RETRY_MAX`].
pub const CLUSTER_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reach the cluster store.
pub const CLUSTER_RETRY_MAX: Duration = Duration::from_secs(10);

/// What became of the cluster store at start.
enum ClusterAtStart {
    /// None configured.
    None,
    /// Reached.
    Joined(Arc<dyn Store>),
    /// Configured, not reachable yet: [`join_cluster_later`] keeps trying.
    Awaited(cnm_store::EtcdEndpoints),
}

/// Connects to the cluster store, if one is configured. An unreachable store is logged as an
/// error and cnmd starts without it: local networks work, and a global network is refused
/// (503, naming the store) until [`join_cluster_later`] reaches it.
async fn connect_cluster(config: &Config) -> Result<ClusterAtStart, DaemonError> {
    let Some(endpoints) = &config.cluster_store else {
        if config.advertise_addr.is_some() {
            tracing::warn!("--advertise-addr without --cluster-store: no cluster to advertise to");
        }
        return Ok(ClusterAtStart::None);
    };
    if config.advertise_addr.is_none() {
        return Err(DaemonError::Config {
            field: "--advertise-addr",
            reason: "a host of a cluster (--cluster-store) needs the address the other hosts \
                     reach it at on the underlay"
                .to_owned(),
        });
    }
    match cnm_store::EtcdStore::connect(cnm_store::EtcdConfig::new(endpoints.clone())).await {
        Ok(store) => {
            tracing::info!(store = %endpoints.urls().join(","), "joined the cluster store");
            Ok(ClusterAtStart::Joined(Arc::new(store)))
        }
        Err(e) => {
            tracing::error!(
                store = %endpoints,
                error = %e,
                "the cluster store is unreachable: starting without it; local networks work, \
                 global (overlay) networks are refused until it answers (retrying in the \
                 background)"
            );
            Ok(ClusterAtStart::Awaited(endpoints.clone()))
        }
    }
}

/// Tries to reach the cluster store again, waiting [`CLUSTER_RETRY_FIRST`] then twice as long
/// after each failure (at most [`CLUSTER_RETRY_MAX`]), until it answers, then attaches it to
/// the controller: from then on global networks work as if the store had been reachable at
/// start. Ends at once when `shutdown` turns true, a connection attempt in flight included.
async fn join_cluster_later(
    ctl: Controller,
    endpoints: cnm_store::EtcdEndpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = CLUSTER_RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
        attempts += 1;
        let config = cnm_store::EtcdConfig::new(endpoints.clone());
        let connected = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            connected = cnm_store::EtcdStore::connect(config) => connected,
        };
        match connected {
            Ok(store) => match ctl.attach_cluster_store(Arc::new(store)).await {
                Ok(()) => {
                    tracing::info!(
                        store = %endpoints,
                        attempts,
                        "the cluster store is reachable: joined it; global (overlay) networks \
                         are available"
                    );
                    return;
                }
                Err(CoreError::Shutdown) => return,
                Err(e) if e.kind() == cnm::ErrorKind::InvalidInput => {
                    // It has one already: nothing left to do.
                    tracing::warn!(store = %endpoints, error = %e, "not attaching the cluster store");
                    return;
                }
                Err(e) => {
                    wait = (wait * 2).min(CLUSTER_RETRY_MAX);
                    tracing::warn!(store = %endpoints, error = %e, next_in = ?wait, "attaching the cluster store failed; trying again");
                }
            },
            Err(e) => {
                wait = (wait * 2).min(CLUSTER_RETRY_MAX);
                tracing::debug!(store = %endpoints, error = %e, next_in = ?wait, "the cluster store is still unreachable");
            }
        }
    }
}

/// Whether `net` is one of Docker's predefined networks (never deleted, never pruned).
pub(crate) fn is_predefined(net: &Network) -> bool {
    PREDEFINED.contains(&net.name())
}

/// Maps a kind to the error text Docker uses when the kind is NotFound for containers.
pub(crate) fn no_such_container(key: &str) -> String {
    format!("No such container: {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes() {
        assert_eq!(
            split_version("/v1.45/networks"),
            Some(((1, 45), "/networks"))
        );
        assert_eq!(split_version("/v1.41"), Some(((1, 41), "/")));
        assert_eq!(split_version("/networks"), None);
        assert_eq!(split_version("/version"), None);
        assert_eq!(split_version("/vx.1/a"), None);
    }

    #[test]
    fn openapi_documents_every_route() {
        let text = include_str!("../openapi.yaml");
        let mut documented = std::collections::BTreeSet::new();
        let mut path = None;
        let mut in_paths = false;
        for line in text.lines() {
            if line == "paths:" {
                in_paths = true;
                continue;
            }
            if in_paths && !line.starts_with(' ') && !line.is_empty() {
                in_paths = false;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
                && p.starts_with('/')
            {
                path = Some(p.trim_matches('"').to_owned());
            } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
                && !m.starts_with(' ')
                && let Some(p) = &path
            {
                documented.insert((m.to_owned(), p.clone()));
            }
        }
        let mut all: Vec<(&str, &str)> = routes().iter().map(|(m, p, _)| (*m, *p)).collect();
        all.push(METRICS_ROUTE);
        for (m, p) in all {
            assert!(
                documented.contains(&(m.to_owned(), p.to_owned())),
                "{m} {p} is routed but not in openapi.yaml"
            );
        }
    }
}
