//! Dev-only fixtures for cnm: throwaway host namespaces and in-process traffic probes.
//!
//! Privileged tests never touch the machine's own network namespace. They build a [`TestHost`]
//! — a fresh network namespace that plays "the host", with its own run and state directories —
//! and prove behaviour with real packets sent by [`probe`] and answered by the echo servers in
//! [`server`], all from sockets created inside the namespaces the test made.
//!
//! **Owns**
//! - [`TestHost`]: a throwaway "host" namespace (loopback up, forwarding on or off), extra bare
//!   namespaces, an [`Outside`] world reachable only through the host over a veth pair, and
//!   [`Lan`]s, other networks the host is attached to.
//! - [`probe`]: TCP, UDP and ICMP/ICMPv6 echo probes with a bounded timeout, so an expected
//!   failure is quick.
//! - [`server`]: TCP and UDP echo servers that report the peer address they saw (proof of
//!   masquerading).
//! - [`etcd`]: a real etcd in a namespace of the test's, with its own data directory, killed
//!   and restarted on demand, and [`etcd::run_in`] to run client code inside a namespace.
//! - [`underlay`]: several hosts of one cluster: an underlay bridge, etcd on it, and
//!   [`TestHost`]s joined to it.
//! - [`dockerd`]: a private dockerd (Debian's docker.io) in throwaway network, mount and PID
//!   namespaces with its own data root, exec root and socket, and a busybox-static image.
//!
//! - [`TestHost::controller`]: a cnm controller on a throwaway host (and
//!   [`TestHost::controller_builder`], [`TestHost::restart`]), the one fixture for it.
//!
//! **Does not**
//! - link a driver: a test names the ones it uses (`use cnm_driver_bridge as _;`), so core's own
//!   tests see only their test drivers;
//! - skip anything: without root (CAP_SYS_ADMIN, CAP_NET_ADMIN) [`TestHost::new`] fails loudly.
//!
//! Errors are `anyhow::Error`: this crate only serves tests, whose failures are read by people.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cnm_testkit::{TestHost, probe, server::TcpEchoServer};
//!
//! let host = TestHost::new().await?;
//! let outside = host.outside().await?;
//! let echo = TcpEchoServer::start(outside.netns(), outside.addr_v4(), 8080).await?;
//! probe::tcp(host.netns(), outside.addr_v4(), 8080).await?;        // reaches
//! assert_eq!(echo.peers()[0].ip(), outside.host_addr_v4());        // seen from the host's side
//! probe::tcp(host.netns(), "198.51.100.99".parse()?, 8080)
//!     .await
//!     .expect_err("nobody has that address");
//! # Ok(()) }
//! ```

mod controller;
pub mod dockerd;
pub mod etcd;
mod host;
mod mounts;
pub mod probe;
pub mod server;
pub mod underlay;

pub use controller::HOST_NAMESERVER;
pub use host::{Lan, Outside, TestHost, set_run_dir_parent};
