//! cnmd's library part: the daemon serving cnm over HTTP on a unix socket, with the network part
//! of Docker's Engine API (so `docker network …` works against it unmodified) beside cnm's own
//! `/cnm/v1` API, an events stream, and Prometheus metrics.
//!
//! **Owns**: the HTTP API ([`Daemon`], [`serve`]): routing, request decoding and conversion into
//! the controller's typed options at the boundary ([`request`]), building answers from the
//! controller's objects ([`views`]), the state-dir lock ([`StateLock`]), the
//! predefined networks (`none`, `host`, and `bridge` on interface `cnm0`), the Docker plugin socket
//! ([`plugin`]: cnm's drivers and IPAM served to a real dockerd), events, metrics, graceful
//! shutdown (which leaves networks and sandboxes in place), and the bounds that keep it answering
//! under abuse (header and body timeouts, a connection cap that closes the longest-idle
//! connection to serve a new one, a socket born with its final mode and group).
//! **Does not**: define the bodies' shapes (`cnm-api` does, shared with the CLI), implement
//! networking (the controller does, through the `cnm` facade), parse the command line
//! (`main.rs` does), or tear down the data plane on exit.
//!
//! Routes are documented in `openapi.yaml` beside this crate; a test checks every routed path is
//! there. Every Docker path also answers under a `/v1.NN` prefix, 1.12 ≤ NN ≤ 1.48 (dockerd
//! 20.10 accepts from 1.12; answers are shaped per version where dockerd's are).
//!
//! ```no_run
//! # async fn run() -> Result<(), cnm_daemon::DaemonError> {
//! use cnm_daemon::{Config, Daemon};
//!
//! let daemon = Daemon::start(Config::in_dirs("/run/cnm", "/var/lib/cnm")).await?;
//! // DOCKER_HOST=unix:///run/cnm/cnm.sock docker network ls
//! daemon.stop().await?; // graceful: in-flight requests finish, networks stay
//! # Ok(()) }
//! ```

mod clock;
mod cnm_api;
mod conn;
mod docker;
mod error;
pub mod events;
pub mod limits;
mod lock;
pub mod metrics;
pub mod plugin;
pub mod request;
mod server;
pub mod views;
mod waiting;

pub use error::{ApiError, DaemonError};
pub use lock::{LOCK_FILE, StateLock};
pub use server::{
    API_VERSION, Config, DEFAULT_BODY_TIMEOUT, DEFAULT_BRIDGE_IF, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST_DNS, DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET, Daemon, HostDns, MAX_API_VERSION,
    MIN_API_VERSION, PREDEFINED, Resolved, StoreKind, serve,
};
