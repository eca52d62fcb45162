//! nftables rulesets that cnm owns, rendered from data, applied as one atomic transaction, and
//! restored the moment anyone else changes them.
//!
//! **Owns**: `table inet cnm` (NAT, forwarding isolation, the loopback guard, host filtering of
//! internal networks, the drop of foreign forwarded traffic) and `table bridge cnm`
//! (anti-spoofing on endpoint ports) in one network namespace: their sets, maps, chains and
//! rules; the data model of networks, endpoint ports and published ports they are rendered
//! from; the nfnetlink encoding and transport; the watcher that restores them; the opt-in
//! iptables `FORWARD` compatibility rule, managed over netlink; conntrack flushes for
//! re-published UDP ports.
//!
//! **Does not**: create links or set sysctls (`route_localnet`, `ip_forward`, `br_netfilter`
//! are the bridge driver's job, through cnm-sandbox); touch any table but its own (beyond the
//! one compatibility rule); read the kernel's ruleset back to decide what to change (every
//! change derives from the model); run any program (no `nft`, no `iptables`).
//!
//! Design: the chains and rules are constant (see `src/ruleset.rs`); what varies are the elements of
//! sets and verdict/NAT maps keyed by interface name, address, protocol and port, so the
//! per-packet cost is a few lookups whatever the number of networks or ports. Single ports live
//! in hash sets and maps; only real port ranges (and subnets) in interval sets, which the kernel
//! copies whole on each transaction that touches them, so those stay small.
//! Each operation is one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` … `END`) holding only the
//! elements it adds or deletes (the model counts the owners of each element), applied
//! atomically by the kernel: a refused batch changes nothing, and the model is only updated on
//! success. So an operation costs the same with 0 or 1000 other endpoints publishing ports. A
//! large publication is split over several messages of the same batch (each element list well
//! under the netlink attribute limit) and the send buffer grows to fit it.
//!
//! Self-healing (see `src/watch.rs`): a thread reads nf_tables notifications and, when another
//! process deletes, flushes or changes our tables, restores the whole desired state in one
//! transaction within milliseconds; operations wait behind the restore (and restore themselves
//! if they find the tables gone first). On a restart, [`Firewall::loading`] keeps the previous
//! run's tables in place until the full restored state replaces them in one transaction.
//!
//! Known limit: a host port range mapped to a *different* container range (8000-8009 →
//! 9000-9009) becomes one map element per port (nftables maps cannot add an offset); equal
//! ranges and single ports are one element.
//!
//! ```no_run
//! # async fn demo(ns: &cnm_sandbox::NetNs) -> Result<(), cnm_firewall::FirewallError> {
//! use cnm_firewall::{Firewall, GatewayMode, NetworkRules, PortMapping, Protocol};
//! let fw = Firewall::new(ns).await?;                       // one transaction: the base table
//! fw.add_network(&NetworkRules {
//!     id: "net1".into(),
//!     bridge: "br-net1".parse().expect("valid name"),
//!     subnets_v4: vec!["172.18.0.0/16".parse().expect("valid subnet")],
//!     subnets_v6: vec![],
//!     icc: true,
//!     masquerade: true,
//!     internal: false,
//!     host_access: false,
//!     gateway_mode: GatewayMode::Nat,
//! }).await?;
//! fw.add_port_mappings("net1", "ep1", &[PortMapping {
//!     proto: Protocol::Tcp,
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
mod watch;

/// The vocabulary [`NetworkRules`] and [`PortMapping`] speak, shared with every other layer.
pub use cnm_types::{GatewayMode, Protocol};
pub use conntrack::flush_conntrack;
pub use error::FirewallError;
pub use firewall::{Firewall, Healing};
pub use model::{EndpointPort, NetworkRules, PortMapping, Ruleset};
pub use ruleset::{FORWARD_MARK, TABLE};

#[cfg(test)]
mod tests {
    /// Library crates run no programs (a machine without `nft` or `iptables` runs cnm).
    #[test]
    fn no_source_file_runs_a_program() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in ["std::process", "Command::new"] {
                assert!(
                    !text.contains(needle) || path.ends_with("lib.rs"),
                    "{} mentions {needle}",
                    path.display()
                );
            }
        }
    }
}
