//! Network namespaces, links, addresses, routes and sysctls over netlink: the kernel layer of cnm.
//!
//! **Owns**: network namespaces ([`NetNs`]: create, persist by bind mount, open, delete, run
//! code inside; one with a path is opened per use, so a sandbox holds no descriptor); rtnetlink handles bound to a namespace ([`Netlink`]: links,
//! addresses, routes, neighbours, FDB); a container interface's whole set-up in one call
//! ([`Netlink::configure_interface`]: moved in and renamed when needed, MAC, MTU, addresses,
//! IPv6, up, routes); per-namespace sysctls; writing a sandbox's hosts and
//! resolv.conf; entering a sandbox before `exec` ([`exec::SandboxEntry`]). It is the only crate of cnm
//! with `unsafe` permitted, used only between `fork` and `exec` there.
//!
//! **Does not**: know networks, endpoints, drivers or IPAM; choose names or addresses; touch
//! the firewall; keep any state beyond the file descriptors it hands out.
//!
//! Work inside a namespace always runs on a fresh OS thread that enters it and exits
//! afterwards, never on a tokio worker; netlink sockets are created inside the namespace and then
//! used from any task.
//!
//! ```no_run
//! use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink, RouteSpec};
//! # async fn attach() -> Result<(), cnm_sandbox::SandboxError> {
//! let sandbox = NetNs::create("/run/cnm/netns/3f2a").await?;   // the sandbox key is the path
//! let host = Netlink::connect(&NetNs::current()?).await?;
//! // The container end is born inside the sandbox with its final name: no move needed.
//! host.create_link(&LinkSpec {
//!     up: true,
//!     ..LinkSpec::new("veth3f2a".parse().unwrap(), LinkKind::Veth {
//!         peer_name: "eth0".parse().unwrap(),
//!         peer_ns: Some(sandbox.clone()),
//!         peer_mac: None,
//!         peer_mtu: None,
//!         peer_up: true,
//!     })
//! }).await?;
//! let inside = Netlink::connect(&sandbox).await?;
//! let eth0 = inside.link("eth0").await?.expect("just created");
//! inside.add_address(eth0.index, "172.17.0.2/16".parse().unwrap()).await?;
//! inside.add_route(&RouteSpec::default_via("172.17.0.1".parse().unwrap(), Some(eth0.index))).await?;
//! # Ok(()) }
//! ```
//!
//! ```
//! use cnm_sandbox::ResolvConf;
//! let host = ResolvConf::parse("nameserver 127.0.0.53\nsearch example.com\n");
//! let c = ResolvConf::for_container(&host, &["8.8.8.8".parse().unwrap()]);
//! assert_eq!(c.render(), "search example.com\nnameserver 8.8.8.8\n");
//! ```

mod error;
pub mod exec;
mod files;
mod interface;
mod link;
mod netlink;
mod ns;
mod route;
mod sysctl;

pub use error::SandboxError;
pub use files::{HostsEntry, HostsFile, ResolvConf};
pub use interface::{InterfaceConfig, InterfaceSource};
pub use link::{IpvlanMode, Link, LinkKind, LinkSpec, MacvlanMode};
pub use netlink::{FdbEntry, Neighbour, Netlink, POOL_LIMIT, pool_open, set_pool_limit};
pub use ns::{NetNs, NsFd};
pub use route::{Address, IpFamily, Route, RouteSpec};
pub use sysctl::{InterfaceSysctl, get_sysctl, set_sysctl, set_sysctls, sysctl_path};
