//! The built-in tables: the firewall's own (`table inet cnm`: the guards every owner relies
//! on) and the bridge fragment's (`table inet cnm-bridge`, `table bridge cnm-bridge`).
//!
//! Every rule is constant; per-packet decisions go through set and map lookups, so neither the
//! packet path nor an operation grows with the number of networks, endpoints or ports: single
//! ports are hash lookups, port ranges interval lookups in sets that hold only ranges.
//!
//! `table inet cnm` (the firewall's own; policy accept everywhere):
//! - `guard` (filter, raw priority -300, prerouting): drops packets for 127.0.0.0/8 and `::1`
//!   arriving on a non-loopback interface (a port published on 127.0.0.1 must not be reachable
//!   from elsewhere, the lesson of CVE-2020-8558; and a container must not reach the host's
//!   loopback-only services through `route_localnet`). It sits before conntrack, so no packet
//!   escapes it: a NAT chain is never traversed by packets conntrack calls INVALID (a lone
//!   FIN, SYN|FIN, NULL…), which is how such probes reached 127.0.0.1 when the drop lived in
//!   a `prerouting` NAT chain.
//! - `forward` (filter, priority filter - 2): drops traffic that neither comes from nor goes to
//!   an interface some owner claimed (set `interfaces`), for the families in `forward_drop`:
//!   those whose forwarding cnm itself turned on (no open router). It belongs to no driver: a
//!   second driver's interfaces are cnm's as much as the bridges are.
//!
//! `table inet cnm-bridge` (the bridge driver's fragment):
//! - `prerouting` (nat, dstnat): DNATs local destinations through `publish`.
//! - `output` (nat, -100): the same DNAT for connections from the host itself, 127.0.0.1 included.
//! - `input` (filter): containers of an internal network (set `no_host`, unless the network
//!   allows host access) reach nothing on the host but neighbour discovery and replies to
//!   connections the host opened (libnetwork#1151).
//!
//! The sets that follow a network's gateway mode (`internal`, `no_host`, `routed`,
//! `unprotected`) are keyed by family and bridge (`meta nfproto . oifname`), and NAT (`masq4`,
//! `masq6`, the `dnat4*`/`dnat6*` maps) is per family already: a dual-stack network whose
//! families have different modes (Docker's `gateway_mode_ipv4` `nat` beside
//! `gateway_mode_ipv6` `routed`, say) gets each family's behaviour from one lookup, and an
//! IPv4 packet never follows IPv6's mode. The rules stay constant.
//! - `postrouting` (nat, srcnat): hairpin masquerade, masquerade of host loopback sources
//!   entering a bridge, masquerade of each network's subnets leaving through a non-bridge link.
//! - `forward` (filter, priority filter - 1): isolation, ICC, internal, NAT/routed inbound
//!   (the `inbound` chain: a bridge in `unprotected`, Docker's `nat-unprotected`, lets
//!   everything routed to its containers through; one in `routed` their published ports and
//!   ICMP; a (host interface, bridge) pair in `trusted`, Docker's `trusted_host_interfaces`,
//!   the published ports from that interface; the rest is dropped).
//!   ICC off between two ports of one bridge is the bridge driver's port isolation (frames never
//!   reach IP hooks without br_netfilter); `intra`'s `icc_off` drop is what stops traffic
//!   *routed* between two containers of one bridge through the gateway (and bridged frames
//!   too where br_netfilter happens to be on). It ignores (`return`s) what touches no bridge.
//!   Every packet it lets through jumps to `allow`, which sets [`FORWARD_MARK`] so a
//!   Docker/iptables `FORWARD` policy of DROP can accept it (see `compat`).
//!
//! `table bridge cnm-bridge` sees bridged frames without br_netfilter. Its `prerouting` chain
//! (filter, -300, before the bridge learns the source MAC) drops, on every port in `ports` (the
//! host end of each endpoint's veth), frames whose source MAC, IPv4/IPv6 source, ARP sender
//! MAC/IP or neighbour-advertisement target is not the endpoint's own (one lookup per check in
//! sets keyed by port name and address). IPv6 link-local sources (fe80::/10) and `::`
//! (duplicate address detection) pass; VLAN-tagged frames are dropped (they would carry IP past
//! the checks).

use std::borrow::Cow;

use crate::model::SetId;
use crate::nftnl::{
    CtKey, Expr, ICMP_ICMPV6, MetaKey, ND_NS_NA, NFPROTO_BRIDGE, NFPROTO_INET, NFPROTO_IPV4,
    NFPROTO_IPV6, TCP_UDP_SCTP, Table, VLAN_ETHERTYPES, Verdict,
};
use crate::table::{ChainDef, Hook, RuleDef, SetDef, TableDef, Ty, Typeof};

/// The name of the firewall's own table (`table inet cnm`); every owner's tables are named
/// `cnm-<owner>`.
pub const TABLE: &str = "cnm";

/// The prefix of an owner's tables.
pub(crate) const OWNER_PREFIX: &str = "cnm-";

/// `table inet cnm`: the guards shared by every owner.
pub(crate) const SHARED: Table = Table::new(NFPROTO_INET, TABLE);

/// The bridge fragment's owner name.
pub(crate) const BRIDGE_OWNER: &str = "bridge";

/// `table inet cnm-bridge`: the bridge driver's NAT, forwarding and host filtering.
pub(crate) const BRIDGE_INET: Table = Table::new(NFPROTO_INET, "cnm-bridge");

/// `table bridge cnm-bridge`: anti-spoofing on the bridge driver's endpoint ports.
pub(crate) const BRIDGE_L2: Table = Table::new(NFPROTO_BRIDGE, "cnm-bridge");

/// Whether a table of this family and name may be one of ours (the firewall's own, or an
/// owner's): what the watcher listens for and a reconcile sweeps.
pub(crate) fn may_be_ours(family: u8, name: &str) -> bool {
    (family == NFPROTO_INET || family == NFPROTO_BRIDGE)
        && (name == TABLE || name.starts_with(OWNER_PREFIX))
}

/// The packet mark bit every owner's `allow` chain sets on the packets it accepts. The iptables
/// compatibility rule accepts packets carrying it. Chosen clear of kube-proxy (0x4000, 0x8000),
/// Cilium (0x0f00) and Weave (0x20000, 0x40000); Calico users must exclude it from Calico's
/// mark mask.
pub const FORWARD_MARK: u32 = 0x0100_0000;

/// A built-in set, by its name in its table.
pub(crate) trait Named: Copy {
    fn name(self) -> &'static str;
}

/// The sets of the firewall's own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SharedSet {
    /// Every interface some owner forwards for (the bridges, a driver's links…).
    Interfaces,
    /// The families whose forwarding cnm turned on: `ipv4`, `ipv6`.
    ForwardDrop,
}

impl Named for SharedSet {
    fn name(self) -> &'static str {
        match self {
            Self::Interfaces => "interfaces",
            Self::ForwardDrop => "forward_drop",
        }
    }
}

impl SharedSet {
    pub(crate) const FIRST: SharedSet = SharedSet::Interfaces;
    pub(crate) const LAST: SharedSet = SharedSet::ForwardDrop;

    fn def(self) -> SetDef {
        match self {
            Self::Interfaces => SetDef::new(self.name(), &[Ty::IfName], &[], false),
            Self::ForwardDrop => SetDef::new(self.name(), &[Ty::NfProto], &[], false),
        }
    }
}

/// The sets and maps of the bridge fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SetName {
    Bridges,
    Internal,
    IccOff,
    Routed,
    Unprotected,
    Trusted,
    NoHost,
    SameBridge,
    Masq4,
    Masq6,
    Published4,
    Published4Range,
    Published6,
    Published6Range,
    Dnat4,
    Dnat4Range,
    Dnat4Any,
    Dnat4AnyRange,
    Dnat6,
    Dnat6Range,
    Dnat6Any,
    Dnat6AnyRange,
    Ports,
    OwnMac,
    OwnV4,
    OwnV6,
    NdTarget,
}

use Ty::{Ether as E, IfName as I, Int128, NfProto as F, Port as P, Proto as R, V4, V6};

/// nft 1.0.6's user data of `set nd_target { typeof iifname . @th,64,128; }`: key byteorder,
/// and the typeof expressions (meta iifname, raw transport payload at bit 64, 128 bits long).
const ND_TARGET_UDATA: &[u8] = &[
    0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x40, 0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x38,
    0x00, 0x0e, 0x00, 0x04, 0x09, 0x00, 0x00, 0x00, 0x01, 0x06, 0x00, 0x04, 0x06, 0x00, 0x00, 0x00,
    0x01, 0x26, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x1e, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x03, 0x00, 0x00, 0x00, 0x03, 0x04, 0x40, 0x00,
    0x00, 0x00, 0x04, 0x04, 0x80, 0x00, 0x00, 0x00,
];

impl Named for SetName {
    fn name(self) -> &'static str {
        match self {
            Self::Bridges => "bridges",
            Self::Internal => "internal",
            Self::IccOff => "icc_off",
            Self::Routed => "routed",
            Self::Unprotected => "unprotected",
            Self::Trusted => "trusted",
            Self::NoHost => "no_host",
            Self::Ports => "ports",
            Self::OwnMac => "own_mac",
            Self::OwnV4 => "own_v4",
            Self::OwnV6 => "own_v6",
            Self::NdTarget => "nd_target",
            Self::SameBridge => "same_bridge",
            Self::Masq4 => "masq4",
            Self::Masq6 => "masq6",
            Self::Published4 => "published4",
            Self::Published4Range => "published4_range",
            Self::Published6 => "published6",
            Self::Published6Range => "published6_range",
            Self::Dnat4 => "dnat4",
            Self::Dnat4Range => "dnat4_range",
            Self::Dnat4Any => "dnat4_any",
            Self::Dnat4AnyRange => "dnat4_any_range",
            Self::Dnat6 => "dnat6",
            Self::Dnat6Range => "dnat6_range",
            Self::Dnat6Any => "dnat6_any",
            Self::Dnat6AnyRange => "dnat6_any_range",
        }
    }
}

impl SetName {
    pub(crate) const FIRST: SetName = SetName::Bridges;
    pub(crate) const LAST: SetName = SetName::NdTarget;

    /// Every set, in ruleset order (table by table).
    pub(crate) const ALL: [SetName; 27] = [
        Self::Bridges,
        Self::Internal,
        Self::IccOff,
        Self::Routed,
        Self::Unprotected,
        Self::Trusted,
        Self::NoHost,
        Self::SameBridge,
        Self::Masq4,
        Self::Masq6,
        Self::Published4,
        Self::Published4Range,
        Self::Published6,
        Self::Published6Range,
        Self::Dnat4,
        Self::Dnat4Range,
        Self::Dnat4Any,
        Self::Dnat4AnyRange,
        Self::Dnat6,
        Self::Dnat6Range,
        Self::Dnat6Any,
        Self::Dnat6AnyRange,
        Self::Ports,
        Self::OwnMac,
        Self::OwnV4,
        Self::OwnV6,
        Self::NdTarget,
    ];

    /// The DNAT map for one family, a host-specific address or any, single ports or ranges.
    pub(crate) fn dnat(v6: bool, any: bool, range: bool) -> SetName {
        match (v6, any, range) {
            (false, false, false) => Self::Dnat4,
            (false, false, true) => Self::Dnat4Range,
            (false, true, false) => Self::Dnat4Any,
            (false, true, true) => Self::Dnat4AnyRange,
            (true, false, false) => Self::Dnat6,
            (true, false, true) => Self::Dnat6Range,
            (true, true, false) => Self::Dnat6Any,
            (true, true, true) => Self::Dnat6AnyRange,
        }
    }

    /// The set of published container ports for one family, single ports or ranges.
    pub(crate) fn published(v6: bool, range: bool) -> SetName {
        match (v6, range) {
            (false, false) => Self::Published4,
            (false, true) => Self::Published4Range,
            (true, false) => Self::Published6,
            (true, true) => Self::Published6Range,
        }
    }

    /// Whether the set lives in the `bridge` family table.
    fn is_l2(self) -> bool {
        matches!(
            self,
            Self::Ports | Self::OwnMac | Self::OwnV4 | Self::OwnV6 | Self::NdTarget
        )
    }

    /// Key and value types, and whether it holds intervals.
    ///
    /// Single ports live in hash sets and maps (concatenated keys, no `flags interval`): the
    /// kernel's rhash adds and removes one element in O(1). Only real port ranges go to the
    /// interval (pipapo) sets, which the kernel clones whole on every transaction that touches
    /// them and searches linearly on removal (`nft_pipapo_remove`), so those must stay small.
    pub(crate) fn def(self) -> SetDef {
        let (key, data, interval): (&[Ty], &[Ty], bool) = match self {
            Self::Bridges | Self::IccOff => (&[I], &[], false),
            // by family: each family of a network has its own gateway mode
            Self::Internal | Self::Routed | Self::Unprotected | Self::NoHost => {
                (&[F, I], &[], false)
            }
            Self::Ports => (&[I], &[], false),
            Self::OwnMac => (&[I, E], &[], false),
            Self::OwnV4 => (&[I, V4], &[], false),
            Self::OwnV6 => (&[I, V6], &[], false),
            Self::NdTarget => (&[I, Int128], &[], false),
            Self::SameBridge | Self::Trusted => (&[I, I], &[], false),
            Self::Masq4 => (&[I, V4], &[], true),
            Self::Masq6 => (&[I, V6], &[], true),
            Self::Published4 => (&[V4, R, P], &[], false),
            Self::Published4Range => (&[V4, R, P], &[], true),
            Self::Published6 => (&[V6, R, P], &[], false),
            Self::Published6Range => (&[V6, R, P], &[], true),
            Self::Dnat4 => (&[V4, R, P], &[V4, P], false),
            Self::Dnat4Range => (&[V4, R, P], &[V4], true),
            Self::Dnat4Any => (&[R, P], &[V4, P], false),
            Self::Dnat4AnyRange => (&[R, P], &[V4], true),
            Self::Dnat6 => (&[V6, R, P], &[V6, P], false),
            Self::Dnat6Range => (&[V6, R, P], &[V6], true),
            Self::Dnat6Any => (&[R, P], &[V6, P], false),
            Self::Dnat6AnyRange => (&[R, P], &[V6], true),
        };
        let mut def = SetDef::new(self.name(), key, data, interval);
        if self == Self::NdTarget {
            def.typeof_ = Some(Typeof {
                udata: ND_TARGET_UDATA,
                decl: "typeof iifname . @th,64,128",
            });
        }
        def
    }
}

fn regular(name: &'static str) -> ChainDef {
    ChainDef {
        name: Cow::Borrowed(name),
        hook: None,
    }
}

fn base(
    name: &'static str,
    hook: (&'static str, u32),
    ty: &'static str,
    prio: (i32, &'static str),
) -> ChainDef {
    ChainDef {
        name: Cow::Borrowed(name),
        hook: Some(Hook {
            num: hook.1,
            prio: prio.0,
            ty,
            prio_text: Cow::Borrowed(prio.1),
            name: hook.0,
        }),
    }
}

/// The `allow` chain every owner's `inet` table has (see [`allow_rule`]).
pub(crate) fn allow_chain() -> ChainDef {
    regular("allow")
}

/// The firewall's own table.
pub(crate) fn shared_tables() -> Vec<TableDef> {
    vec![TableDef {
        table: SHARED,
        sets: [SharedSet::Interfaces, SharedSet::ForwardDrop]
            .into_iter()
            .map(|s| (SetId::Shared(s), s.def()))
            .collect(),
        chains: vec![
            base("guard", ("prerouting", 0), "filter", (-300, "raw")),
            base("forward", ("forward", 2), "filter", (-2, "filter - 2")),
        ],
        rules: shared_rules(),
    }]
}

/// The bridge fragment's tables.
pub(crate) fn bridge_tables() -> Vec<TableDef> {
    let sets = |l2: bool| {
        SetName::ALL
            .into_iter()
            .filter(|s| s.is_l2() == l2)
            .map(|s| (SetId::Bridge(s), s.def()))
            .collect()
    };
    vec![
        TableDef {
            table: BRIDGE_INET,
            sets: sets(false),
            chains: vec![
                regular("publish"),
                base("prerouting", ("prerouting", 0), "nat", (-100, "dstnat")),
                base("output", ("output", 3), "nat", (-100, "-100")),
                base("postrouting", ("postrouting", 4), "nat", (100, "srcnat")),
                base("input", ("input", 1), "filter", (0, "filter")),
                base("forward", ("forward", 2), "filter", (-1, "filter - 1")),
                regular("inbound"),
                regular("intra"),
                allow_chain(),
            ],
            rules: bridge_inet_rules(),
        },
        TableDef {
            table: BRIDGE_L2,
            sets: sets(true),
            chains: vec![base(
                "prerouting",
                ("prerouting", 0),
                "filter",
                (-300, "-300"),
            )],
            rules: bridge_l2_rules(),
        },
    ]
}

fn meta(key: MetaKey, dreg: u32) -> Expr {
    Expr::Meta { key, dreg }
}
fn cmp(sreg: u32, data: &[u8]) -> Expr {
    Expr::Cmp {
        sreg,
        neq: false,
        data: data.to_vec(),
    }
}
/// Register 1 masked with `mask` and compared with `data` (`& MASK == DATA`, `!=` with `neq`);
/// `with_op` as the rule's reference (nft or iptables-nft) sends it.
pub(crate) fn masked_cmp(mask: &[u8], with_op: bool, neq: bool, data: &[u8]) -> [Expr; 2] {
    [
        Expr::Bitwise {
            reg: 1,
            mask: mask.to_vec(),
            xor: vec![0; mask.len()],
            with_op,
        },
        Expr::Cmp {
            sreg: 1,
            neq,
            data: data.to_vec(),
        },
    ]
}
fn lookup(sreg: u32, set: impl Named) -> Expr {
    set_lookup(sreg, set, false)
}
fn not_in(sreg: u32, set: impl Named) -> Expr {
    set_lookup(sreg, set, true)
}
/// Register `sreg` looked up in `set`: a match when found (not found with `inv`).
fn set_lookup(sreg: u32, set: impl Named, inv: bool) -> Expr {
    Expr::Lookup {
        sreg,
        dreg: None,
        set: Cow::Borrowed(set.name()),
        inv,
    }
}
fn nfproto(family: u8) -> [Expr; 2] {
    [meta(MetaKey::NfProto, 1), cmp(1, &[family])]
}
fn nh(dreg: u32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: 1,
        offset,
        len,
    }
}
fn dport(dreg: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: 2,
        offset: 2,
        len: 2,
    }
}
fn jump(chain: &'static str) -> Expr {
    Expr::Immediate(Verdict::Jump(Cow::Borrowed(chain)))
}
fn ct_bit(key: CtKey, mask: u32) -> [Expr; 3] {
    let [and, test] = masked_cmp(&mask.to_ne_bytes(), false, true, &[0; 4]);
    [Expr::Ct { key, dreg: 1 }, and, test]
}
fn ifname(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

/// The nfproto value of IPv4 or IPv6.
pub(crate) fn family(v6: bool) -> u8 {
    if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }
}

/// `meta nfproto X` then `ip daddr . meta l4proto . th dport` (or `ip6 daddr …`) loaded for
/// `set` as nft loads it; also returns the register `meta l4proto` lands in.
fn daddr_proto_dport(v6: bool, set: SetName) -> (Vec<Expr>, u32) {
    let (off, len, preg, dreg) = if v6 { (24, 16, 2, 13) } else { (16, 4, 9, 10) };
    let mut v: Vec<Expr> = nfproto(family(v6)).into();
    v.extend([nh(1, off, len), meta(MetaKey::L4Proto, preg)]);
    v.extend(hton(set, preg));
    v.push(dport(dreg));
    (v, preg)
}

/// `dnat to … map @map` with the key loaded from register 1: the address lands in register 1,
/// the port (when the map has one) in `port`.
fn dnat_via(v6: bool, map: SetName, port: Option<u32>) -> [Expr; 2] {
    [
        Expr::Lookup {
            sreg: 1,
            dreg: Some(1),
            set: Cow::Borrowed(map.name()),
            inv: false,
        },
        Expr::Dnat {
            family: family(v6),
            addr: 1,
            proto: port,
        },
    ]
}

/// `meta l4proto { tcp, udp, sctp }`.
fn any_l4proto() -> [Expr; 2] {
    [
        meta(MetaKey::L4Proto, 1),
        Expr::LookupAnon {
            sreg: 1,
            set: &TCP_UDP_SCTP,
        },
    ]
}

/// `meta l4proto {tcp,udp,sctp} dnat ip to ip daddr . meta l4proto . th dport map @m` for a
/// host-specific DNAT map, as nft orders it.
fn dnat_host(v6: bool, map: SetName, with_port: bool) -> Vec<Expr> {
    let (key, preg) = daddr_proto_dport(v6, map);
    let mut v: Vec<Expr> = any_l4proto().into();
    v.extend(key);
    v.extend(dnat_via(v6, map, with_port.then_some(preg)));
    v
}

/// nft widens `meta l4proto` in a concatenation to network order for interval sets only
/// (their keys compare as big-endian ranges); a hash set hashes the register as loaded.
fn hton(set: SetName, reg: u32) -> Option<Expr> {
    set.def().interval.then_some(Expr::ByteorderHton { reg })
}

/// `meta nfproto X meta l4proto {…} dnat to meta l4proto . th dport map @m`.
fn dnat_any(v6: bool, map: SetName, with_port: bool) -> Vec<Expr> {
    let mut v: Vec<Expr> = nfproto(family(v6)).into();
    v.extend(any_l4proto());
    v.push(meta(MetaKey::L4Proto, 1));
    v.extend(hton(map, 1));
    v.push(dport(9));
    // the port follows the address in the map's value: register 9 after a 4-byte address,
    // register 2 (the next 16-byte one) after a 16-byte address
    v.extend(dnat_via(
        v6,
        map,
        with_port.then_some(if v6 { 2 } else { 9 }),
    ));
    v
}

/// The `publish` chain's DNAT rule for one map: by family, host-specific or any address, single
/// ports or ranges (a range maps to the same ports, so the rule sets no port).
fn publish_rule(v6: bool, any: bool, range: bool) -> RuleDef {
    let map = SetName::dnat(v6, any, range);
    let ip = if v6 { "ip6" } else { "ip" };
    let (text, exprs) = if any {
        let fam = if v6 { "ipv6" } else { "ipv4" };
        (
            format!(
                "meta nfproto {fam} meta l4proto {{ tcp, udp, sctp }} dnat {ip} to meta l4proto . th dport map @{}",
                map.name()
            ),
            dnat_any(v6, map, !range),
        )
    } else {
        (
            format!(
                "meta l4proto {{ tcp, udp, sctp }} dnat {ip} to {ip} daddr . meta l4proto . th dport map @{}",
                map.name()
            ),
            dnat_host(v6, map, !range),
        )
    };
    RuleDef {
        chain: Cow::Borrowed("publish"),
        text: Cow::Owned(text),
        exprs,
    }
}

/// The `inbound` chain's accept of published ports for one family, single ports or ranges.
fn published_rule(v6: bool, range: bool) -> RuleDef {
    let (routed, exprs) = by_family(MetaKey::OifName, SetName::Routed, true);
    inbound_allow(v6, range, &routed, exprs)
}

/// The `inbound` chain's accept of published ports from a network's trusted host interfaces.
fn trusted_rule(v6: bool, range: bool) -> RuleDef {
    let exprs = vec![
        meta(MetaKey::IifName, 1),
        meta(MetaKey::OifName, 2),
        lookup(1, SetName::Trusted),
    ];
    inbound_allow(v6, range, "iifname . oifname @trusted", exprs)
}

/// An `inbound` rule jumping to `allow` for the published ports (of one family, single ports
/// or ranges) after a condition: `text` and its expressions `exprs`.
fn inbound_allow(v6: bool, range: bool, text: &str, mut exprs: Vec<Expr>) -> RuleDef {
    let set = SetName::published(v6, range);
    let ip = if v6 { "ip6" } else { "ip" };
    exprs.extend(daddr_proto_dport(v6, set).0);
    exprs.extend([lookup(1, set), jump("allow")]);
    RuleDef {
        chain: Cow::Borrowed("inbound"),
        text: Cow::Owned(format!(
            "{text} {ip} daddr . meta l4proto . th dport @{} jump allow",
            set.name()
        )),
        exprs,
    }
}

/// A rule made of interface (or family) set lookups and a verdict, such as `iifname != @bridges
/// oifname != @bridges return`: its text and its expressions come from one list, so they cannot
/// disagree. Each match is the meta key, the set, and whether the value must be in it.
fn set_rule<S: Named>(
    chain: &'static str,
    matches: &[(MetaKey, S, bool)],
    verdict: Verdict,
) -> RuleDef {
    let mut text = Vec::new();
    let mut exprs = Vec::new();
    for &(key, set, member) in matches {
        let not = if member { "" } else { "!= " };
        text.push(format!("{} {not}@{}", key.text(), set.name()));
        exprs.push(meta(key, 1));
        exprs.push(if member {
            lookup(1, set)
        } else {
            not_in(1, set)
        });
    }
    text.push(verdict.text().into_owned());
    exprs.push(Expr::Immediate(verdict));
    RuleDef {
        chain: Cow::Borrowed(chain),
        text: Cow::Owned(text.join(" ")),
        exprs,
    }
}

/// `meta nfproto . iifname @set` (or `oifname`, or `!=`): a lookup in one of the sets keyed
/// by family and interface, whose elements follow each family's gateway mode. Returns the text
/// and the expressions, as nft 1.0.6 loads the concatenation (the one-byte family in register
/// 1, the name in the next 32-bit register).
fn by_family(key: MetaKey, set: SetName, member: bool) -> (String, Vec<Expr>) {
    let not = if member { "" } else { "!= " };
    let text = format!("meta nfproto . {} {not}@{}", key.text(), set.name());
    let exprs = vec![
        meta(MetaKey::NfProto, 1),
        meta(key, 9),
        if member {
            lookup(1, set)
        } else {
            not_in(1, set)
        },
    ];
    (text, exprs)
}

/// A rule of one [`by_family`] lookup and a verdict.
fn by_family_rule(
    chain: &'static str,
    key: MetaKey,
    set: SetName,
    member: bool,
    verdict: Verdict,
) -> RuleDef {
    let (text, mut exprs) = by_family(key, set, member);
    let text = format!("{text} {}", verdict.text());
    exprs.push(Expr::Immediate(verdict));
    RuleDef {
        chain: Cow::Borrowed(chain),
        text: Cow::Owned(text),
        exprs,
    }
}

fn masq_subnets(v6: bool) -> Vec<Expr> {
    let (fam, off, len, set) = if v6 {
        (NFPROTO_IPV6, 8, 16, SetName::Masq6)
    } else {
        (NFPROTO_IPV4, 12, 4, SetName::Masq4)
    };
    let mut v = vec![meta(MetaKey::OifName, 1), not_in(1, SetName::Bridges)];
    v.extend(nfproto(fam));
    v.extend([
        meta(MetaKey::IifName, 1),
        nh(2, off, len),
        lookup(1, set),
        Expr::Masq,
    ]);
    v
}

fn rule(chain: &'static str, text: &'static str, exprs: Vec<Expr>) -> RuleDef {
    RuleDef {
        chain: Cow::Borrowed(chain),
        text: Cow::Borrowed(text),
        exprs,
    }
}

/// The rules of the firewall's own table: the loopback guard and the drop of forwarded
/// traffic that is not cnm's.
fn shared_rules() -> Vec<RuleDef> {
    let r = rule;
    let not_lo = || {
        vec![
            meta(MetaKey::IifName, 1),
            Expr::Cmp {
                sreg: 1,
                neq: true,
                data: ifname("lo"),
            },
        ]
    };
    vec![
        r("guard", "iifname != \"lo\" ip daddr 127.0.0.0/8 drop", {
            let mut v = not_lo();
            v.extend(loopback_v4(16));
            v.push(Expr::Immediate(Verdict::Drop));
            v
        }),
        r("guard", "iifname != \"lo\" ip6 daddr ::1 drop", {
            let mut v = not_lo();
            v.extend(nfproto(NFPROTO_IPV6));
            v.extend([
                nh(1, 24, 16),
                cmp(1, &std::net::Ipv6Addr::LOCALHOST.octets()),
                Expr::Immediate(Verdict::Drop),
            ]);
            v
        }),
        set_rule(
            "forward",
            &[
                (MetaKey::IifName, SharedSet::Interfaces, false),
                (MetaKey::OifName, SharedSet::Interfaces, false),
                (MetaKey::NfProto, SharedSet::ForwardDrop, true),
            ],
            Verdict::Drop,
        ),
    ]
}

/// The `allow` chain's one rule, in every owner's `inet` table: sets [`FORWARD_MARK`] (so a
/// Docker/iptables `FORWARD` policy of DROP lets the packet through, see `compat`) and accepts.
pub(crate) fn allow_rule() -> RuleDef {
    rule(
        "allow",
        "meta mark set meta mark | 0x01000000 accept",
        vec![
            meta(MetaKey::Mark, 1),
            Expr::Bitwise {
                reg: 1,
                mask: (!FORWARD_MARK).to_ne_bytes().to_vec(),
                xor: FORWARD_MARK.to_ne_bytes().to_vec(),
                with_op: true,
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: 1,
            },
            Expr::Immediate(Verdict::Accept),
        ],
    )
}

/// `meta nfproto ipv4` and the first byte of the address at `offset` is 127.
fn loopback_v4(offset: u32) -> Vec<Expr> {
    let mut v: Vec<Expr> = nfproto(NFPROTO_IPV4).into();
    v.extend([nh(1, offset, 1), cmp(1, &[127])]);
    v
}

/// The rules of the bridge fragment's `inet` table, in order.
fn bridge_inet_rules() -> Vec<RuleDef> {
    use MetaKey::{IifName as IIF, OifName as OIF};
    use SetName as S;
    let r = rule;
    let fib_local = vec![
        Expr::FibDaddrType { dreg: 1 },
        cmp(1, &2u32.to_ne_bytes()),
        jump("publish"),
    ];
    let jump_to = |chain| Verdict::Jump(Cow::Borrowed(chain));
    let mut rules = Vec::new();
    for v6 in [false, true] {
        for any in [false, true] {
            for range in [false, true] {
                rules.push(publish_rule(v6, any, range));
            }
        }
    }
    rules.extend([
        r(
            "prerouting",
            "fib daddr type local jump publish",
            fib_local.clone(),
        ),
        r("output", "fib daddr type local jump publish", fib_local),
        r(
            "postrouting",
            "ct status dnat iifname . oifname @same_bridge masquerade",
            {
                let mut v: Vec<Expr> = ct_bit(CtKey::Status, 0x20).into();
                v.extend([
                    meta(IIF, 1),
                    meta(OIF, 2),
                    lookup(1, S::SameBridge),
                    Expr::Masq,
                ]);
                v
            },
        ),
        r(
            "postrouting",
            "oifname @bridges ip saddr 127.0.0.0/8 masquerade",
            {
                let mut v = vec![meta(OIF, 1), lookup(1, S::Bridges)];
                v.extend(loopback_v4(12));
                v.push(Expr::Masq);
                v
            },
        ),
        r(
            "postrouting",
            "oifname != @bridges iifname . ip saddr @masq4 masquerade",
            masq_subnets(false),
        ),
        r(
            "postrouting",
            "oifname != @bridges iifname . ip6 saddr @masq6 masquerade",
            masq_subnets(true),
        ),
        by_family_rule("input", IIF, S::NoHost, false, Verdict::Accept),
        r("input", "ct state established,related accept", {
            let mut v: Vec<Expr> = ct_bit(CtKey::State, 0x6).into();
            v.push(Expr::Immediate(Verdict::Accept));
            v
        }),
        r(
            "input",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
            {
                let mut v: Vec<Expr> = nfproto(NFPROTO_IPV6).into();
                v.extend(icmpv6_type());
                v.extend([
                    Expr::LookupAnon {
                        sreg: 1,
                        set: &ND_NS_NA,
                    },
                    Expr::Immediate(Verdict::Accept),
                ]);
                v
            },
        ),
        r("input", "drop", vec![Expr::Immediate(Verdict::Drop)]),
        set_rule(
            "forward",
            &[(IIF, S::Bridges, false), (OIF, S::Bridges, false)],
            Verdict::Return,
        ),
        r("forward", "ct state established,related jump allow", {
            let mut v: Vec<Expr> = ct_bit(CtKey::State, 0x6).into();
            v.push(jump("allow"));
            v
        }),
        r(
            "forward",
            "iifname . oifname @same_bridge jump intra",
            vec![
                meta(IIF, 1),
                meta(OIF, 2),
                lookup(1, S::SameBridge),
                jump("intra"),
            ],
        ),
        by_family_rule("forward", IIF, S::Internal, true, Verdict::Drop),
        by_family_rule("forward", OIF, S::Internal, true, Verdict::Drop),
        r("forward", "ct status dnat jump allow", {
            let mut v: Vec<Expr> = ct_bit(CtKey::Status, 0x20).into();
            v.push(jump("allow"));
            v
        }),
        set_rule(
            "forward",
            &[(IIF, S::Bridges, true), (OIF, S::Bridges, true)],
            Verdict::Drop,
        ),
        set_rule("forward", &[(OIF, S::Bridges, true)], jump_to("inbound")),
        r("forward", "jump allow", vec![jump("allow")]),
    ]);
    // nat-unprotected: direct access to container addresses from outside is not filtered
    rules.push(by_family_rule(
        "inbound",
        OIF,
        S::Unprotected,
        true,
        jump_to("allow"),
    ));
    for v6 in [false, true] {
        for range in [false, true] {
            rules.push(published_rule(v6, range));
        }
    }
    // trusted_host_interfaces: published ports, directly, from those interfaces
    for v6 in [false, true] {
        for range in [false, true] {
            rules.push(trusted_rule(v6, range));
        }
    }
    rules.extend([
        {
            let (routed, mut exprs) = by_family(OIF, S::Routed, true);
            exprs.extend([
                meta(MetaKey::L4Proto, 1),
                Expr::LookupAnon {
                    sreg: 1,
                    set: &ICMP_ICMPV6,
                },
                jump("allow"),
            ]);
            RuleDef {
                chain: Cow::Borrowed("inbound"),
                text: Cow::Owned(format!(
                    "{routed} meta l4proto {{ icmp, ipv6-icmp }} jump allow"
                )),
                exprs,
            }
        },
        r("inbound", "drop", vec![Expr::Immediate(Verdict::Drop)]),
        set_rule("intra", &[(IIF, S::IccOff, true)], Verdict::Drop),
        r("intra", "jump allow", vec![jump("allow")]),
        allow_rule(),
    ]);
    rules
}

/// `ether type X` in the bridge family: the link-layer header's type field.
fn ether_type(value: u16) -> [Expr; 2] {
    [
        Expr::Payload {
            dreg: 1,
            base: 0,
            offset: 12,
            len: 2,
        },
        cmp(1, &value.to_be_bytes()),
    ]
}

/// `iifname . <payload> != @set drop`.
fn port_check(payload: Expr, set: SetName) -> [Expr; 4] {
    [
        meta(MetaKey::IifName, 1),
        payload,
        not_in(1, set),
        Expr::Immediate(Verdict::Drop),
    ]
}

/// `icmpv6 type`'s load: the packet is ICMPv6 (`meta l4proto 58`), its type in register 1.
fn icmpv6_type() -> [Expr; 3] {
    [meta(MetaKey::L4Proto, 1), cmp(1, &[58]), th(1, 0, 1)]
}
fn th(dreg: u32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: 2,
        offset,
        len,
    }
}

/// The anti-spoofing rules of the bridge fragment's `bridge` table.
fn bridge_l2_rules() -> Vec<RuleDef> {
    use SetName as S;
    let r = |text, exprs| rule("prerouting", text, exprs);
    let cat = |a: &[Expr], b: &[Expr]| -> Vec<Expr> { a.iter().chain(b).cloned().collect() };
    const ETH_ARP: u16 = 0x0806;
    const ETH_IP: u16 = 0x0800;
    const ETH_IP6: u16 = 0x86dd;
    let mut link_local_mask = [0u8; 16];
    link_local_mask[..2].copy_from_slice(&[0xff, 0xc0]);
    let mut link_local = [0u8; 16];
    link_local[..2].copy_from_slice(&[0xfe, 0x80]);
    vec![
        set_rule(
            "prerouting",
            &[(MetaKey::IifName, S::Ports, false)],
            Verdict::Accept,
        ),
        r(
            "iifname . ether saddr != @own_mac drop",
            port_check(
                Expr::Payload {
                    dreg: 2,
                    base: 0,
                    offset: 6,
                    len: 6,
                },
                S::OwnMac,
            )
            .into(),
        ),
        r(
            "ether type { 8021q, 8021ad } drop",
            vec![
                Expr::Payload {
                    dreg: 1,
                    base: 0,
                    offset: 12,
                    len: 2,
                },
                Expr::LookupAnon {
                    sreg: 1,
                    set: &VLAN_ETHERTYPES,
                },
                Expr::Immediate(Verdict::Drop),
            ],
        ),
        r(
            "ether type arp iifname . arp saddr ether != @own_mac drop",
            cat(&ether_type(ETH_ARP), &port_check(nh(2, 8, 6), S::OwnMac)),
        ),
        r(
            "ether type arp iifname . arp saddr ip != @own_v4 drop",
            cat(&ether_type(ETH_ARP), &port_check(nh(2, 14, 4), S::OwnV4)),
        ),
        r(
            "ether type ip iifname . ip saddr != @own_v4 drop",
            cat(&ether_type(ETH_IP), &port_check(nh(2, 12, 4), S::OwnV4)),
        ),
        r(
            "ether type ip6 ip6 saddr != :: ip6 saddr != fe80::/10 iifname . ip6 saddr != @own_v6 drop",
            {
                let mut v: Vec<Expr> = ether_type(ETH_IP6).into();
                v.extend([
                    nh(1, 8, 16),
                    Expr::Cmp {
                        sreg: 1,
                        neq: true,
                        data: vec![0; 16],
                    },
                    nh(1, 8, 16),
                ]);
                v.extend(masked_cmp(&link_local_mask, false, true, &link_local));
                v.extend(port_check(nh(2, 8, 16), S::OwnV6));
                v
            },
        ),
        r(
            "icmpv6 type nd-neighbor-advert @th,64,16 & 0xffc0 != 0xfe80 iifname . @th,64,128 != @nd_target drop",
            {
                let mut v: Vec<Expr> = ether_type(ETH_IP6).into();
                v.extend(icmpv6_type());
                v.extend([cmp(1, &[136]), th(1, 8, 2)]);
                v.extend(masked_cmp(&[0xff, 0xc0], true, true, &[0xfe, 0x80]));
                v.extend(port_check(th(2, 8, 16), S::NdTarget));
                v
            },
        ),
    ]
}
