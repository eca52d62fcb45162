//! nftables rulesets that cnm owns, rendered from data, applied as one atomic transaction, and
//! restored the moment anyone else changes them: one [`Firewall`] per network namespace, shared
//! by every driver, each driver's rules apart.
//!
//! **Owns**: in one network namespace, the firewall's own `table inet cnm` (the guards every
//! owner relies on: the loopback guard, the drop of foreign forwarded traffic, the `interfaces`
//! the drop lets through), the tables of each owner of rules (`cnm-<owner>`: the built-in
//! bridge fragment's NAT, forwarding isolation and host filtering of internal networks in
//! `table inet cnm-bridge`, its anti-spoofing in `table bridge cnm-bridge`; each declared
//! [`FragmentSpec`]'s sets, maps and chains), their elements, the data model they are rendered
//! from; the nfnetlink encoding and transport; the watcher that restores them; the opt-in
//! iptables `FORWARD` compatibility rule, managed over netlink; conntrack flushes for
//! re-published UDP ports.
//!
//! **Does not**: create links or set sysctls (`route_localnet`, `ip_forward`, `br_netfilter`
//! are the drivers' job, through cnm-sandbox); touch any table but its own (beyond the one
//! compatibility rule); read the kernel's ruleset back to decide what to change (every change
//! derives from the model); run any program (no `nft`, no `iptables`).
//!
//! Design: the chains and rules are constant (see `src/ruleset.rs`, and `src/fragment.rs` for
//! declared ones); what varies are the elements of sets and verdict/NAT maps keyed by interface
//! name, address, protocol and port, so the per-packet cost is a few lookups whatever the number
//! of networks or ports. Single ports live in hash sets and maps; only real port ranges (and
//! subnets) in interval sets, which the kernel copies whole on each transaction that touches
//! them, so those stay small. Each operation is one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` …
//! `END`) holding only the elements it adds or deletes (the model counts the owners of each
//! element), applied atomically by the kernel: a refused batch changes nothing, and the model
//! is only updated on success. So an operation costs the same with 0 or 1000 other endpoints
//! publishing ports. A large publication is split over several messages of the same batch
//! (each element list well under the netlink attribute limit) and the send buffer grows to fit.
//!
//! Owners apart: each owner's rules live in tables of its own with base chains of their own, so
//! an `accept` of one owner never skips another's chains (only `drop` is final, everywhere),
//! and an owner's transaction carries only its own elements. An owner's tables are in the
//! kernel exactly while it holds elements: the first element's transaction creates them, the
//! last one's deletes them; the firewall's own table goes with the last owner (unless cnm
//! turned forwarding on, whose drop stays as the forwarding does), and the compatibility rule
//! with it. Nothing of cnm's stays in the kernel once nothing needs it.
//!
//! Self-healing (see `src/watch.rs`): a thread reads nf_tables notifications and, when another
//! process deletes, flushes or changes a table we want, restores every wanted table of every
//! owner in one transaction within milliseconds; operations wait behind the restore (and
//! restore themselves if they find the tables gone first). On a restart, [`Firewall::loading`]
//! (or [`Firewall::lazy`] loading) keeps the previous run's tables in place until the full
//! restored state of every owner replaces them in one transaction ([`Firewall::finish_loading`]).
//!
//! Known limits: a host port range mapped to a *different* container range (8000-8009 →
//! 9000-9009) becomes one map element per port (nftables maps cannot add an offset); equal
//! ranges and single ports are one element. A declared fragment's interval sets need a
//! concatenated key.
//!
//! ```no_run
//! # async fn demo(ns: &cnm_sandbox::NetNs) -> Result<(), cnm_firewall::FirewallError> {
//! use cnm_firewall::{
//!     Action, ChainHook, ChainType, ElementChange, FieldType, Firewall, FragmentChain,
//!     FragmentSet, FragmentSpec, GatewayMode, Key, Match, NetworkRules, PortMapping, Protocol,
//!     Rule, SetElement, Value,
//! };
//! let fw = Firewall::new(ns).await?;                       // nothing installed yet
//! // the built-in bridge fragment: its first network brings its tables (one transaction)
//! fw.add_network(&NetworkRules {
//!     id: "net1".into(),
//!     bridge: "br-net1".parse().expect("valid name"),
//!     subnets_v4: vec!["172.18.0.0/16".parse().expect("valid subnet")],
//!     subnets_v6: vec![],
//!     icc: true,
//!     masquerade: true,
//!     internal: false,
//!     host_access: false,
//!     gateway_mode_v4: GatewayMode::Nat,
//!     gateway_mode_v6: GatewayMode::Routed,
//!     trusted_interfaces: vec![],
//! }).await?;
//! fw.add_port_mappings("net1", "ep1", &[PortMapping {
//!     proto: Protocol::Tcp,
//!     host_ip: None,
//!     host_ports: (8080, 8080),
//!     container_ip: "172.18.0.2".parse().expect("valid address"),
//!     container_ports: (80, 80),
//! }]).await?;
//! assert!(fw.render().contains("tcp . 8080 : 172.18.0.2 . 80"));
//! // another driver's rules, in tables of its own
//! let blocklist = fw.fragment(
//!     FragmentSpec::new("tdrv")
//!         .set(FragmentSet::new("ifaces", [FieldType::IfName]))
//!         .set(FragmentSet::new("blocked", [FieldType::Ipv4]))
//!         .chain(
//!             FragmentChain::base("screen", ChainHook::Forward, ChainType::Filter, 10).rule(
//!                 Rule::new(
//!                     [Match::in_set([Key::IifName], "ifaces"), Match::in_set([Key::IpDaddr], "blocked")],
//!                     Action::Drop,
//!                 ),
//!             ),
//!         ),
//! )?;
//! let ifname = "tdrv0".parse().expect("valid name");
//! blocklist.apply(&ElementChange::new()
//!     .add("ifaces", SetElement::new([Value::from(&ifname)]))
//!     .add("blocked", SetElement::new([Value::Ipv4("192.0.2.9".parse().expect("valid"))]))
//!     .claim_interface(&ifname)).await?;                  // one transaction: its tables come
//! assert!(fw.render().contains("table inet cnm-tdrv"));
//! # Ok(()) }
//! ```

mod compat;
mod compile;
mod conntrack;
mod error;
mod firewall;
mod fragment;
mod model;
mod nftnl;
mod registry;
mod ruleset;
mod table;
mod transport;
mod watch;

/// The vocabulary [`NetworkRules`] and [`PortMapping`] speak, shared with every other layer.
pub use cnm_types::{GatewayMode, Protocol};
pub use conntrack::flush_conntrack;
pub use error::FirewallError;
pub use firewall::{BoxError, Firewall, Fragment, Healing};
pub use fragment::{
    Action, ChainHook, ChainType, ElementChange, Family, FieldType, FragmentChain, FragmentSet,
    FragmentSpec, Key, Match, Rule, SetElement, Value,
};
pub use model::{EndpointMappings, EndpointPort, NetworkRules, PortMapping, Ruleset};
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
