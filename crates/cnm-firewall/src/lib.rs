//! nftables rulesets that cnm owns, rendered from data and applied as one atomic transaction.
//!
//! **Owns**: `table inet cnm` (its sets, maps, chains and rules) in one network namespace; the
//! data model of networks and published ports it is rendered from; the nfnetlink encoding and
//! transport; the opt-in iptables `FORWARD` compatibility rule; conntrack flushes for
//! re-published UDP ports.
//!
//! **Does not**: create links or set sysctls (`route_localnet`, `ip_forward`, `br_netfilter`
//! are the bridge driver's job, through cnm-sandbox); touch any table but its own; read the
//! kernel's ruleset back to decide what to change (every change derives from the model).
//!
//! Design: the chains and rules are constant (see `src/ruleset.rs`); what varies are the elements of
//! sets and verdict/NAT maps keyed by interface name, address, protocol and port, so the
//! per-packet cost is a few lookups whatever the number of networks or ports. Single ports live
//! in hash sets and maps; only real port ranges (and subnets) in interval sets, which the kernel
//! copies whole on each transaction that touches them, so those stay small.
//! Each operation is one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` … `END`) holding only the
//! elements it adds or deletes (the model counts the owners of each element), applied
//! atomically by the kernel: a refused batch changes nothing, and the model is only updated on
//! success. So an operation costs the same with 0 or 1000 other endpoints publishing ports.
//!
//! Known limit: a host port range mapped to a *different* container range (8000-8009 →
//! 9000-9009) becomes one map element per port (nftables maps cannot add an offset); equal
//! ranges and single ports are one element.
//!
//! ```no_run
//! # async fn demo(ns: &cnm_sandbox::NetNs) -> Result<(), cnm_firewall::FirewallError> {
//! use cnm_firewall::{Firewall, GatewayMode, NetworkRules, PortMapping, Proto};
//! let fw = Firewall::new(ns).await?;                       // one transaction: the base table
//! fw.add_network(&NetworkRules {
//!     id: "net1".into(),
//!     bridge: "br-net1".parse().expect("valid name"),
//!     subnets_v4: vec!["172.18.0.0/16".parse().expect("valid subnet")],
//!     subnets_v6: vec![],
//!     icc: true,
//!     masquerade: true,
//!     internal: false,
//!     gateway_mode: GatewayMode::Nat,
//! }).await?;
//! fw.add_port_mappings("net1", "ep1", &[PortMapping {
//!     proto: Proto::Tcp,
//!     host_ip: None,
//!     host_ports: (8080, 8080),
//!     container_ip: "172.18.0.2".parse().expect("valid address"),
//!     container_ports: (80, 80),
//! }]).await?;
//! assert!(fw.render().contains("tcp . 8080 : 172.18.0.2 . 80"));
//! # Ok(()) }
//! ```

mod compat;
mod conntrack;
mod error;
mod firewall;
mod model;
mod nftnl;
mod ruleset;
mod transport;

pub use conntrack::flush_conntrack;
pub use error::FirewallError;
pub use firewall::{Backend, Firewall};
pub use model::{GatewayMode, NetworkRules, PortMapping, Proto, Ruleset};
pub use ruleset::{FORWARD_MARK, TABLE};
