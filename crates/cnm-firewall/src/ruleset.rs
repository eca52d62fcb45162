//! The ruleset cnm owns: `table inet cnm`, its sets, chains and constant rules.
//!
//! Every rule is constant; per-packet decisions go through set and map lookups, so neither the
//! packet path nor an operation grows with the number of networks, endpoints or ports: single
//! ports are hash lookups, port ranges interval lookups in sets that hold only ranges.
//!
//! Chains (policy accept everywhere: cnm never decides for traffic that is not its own):
//! - `prerouting` (nat, dstnat): drops packets for 127.0.0.0/8 arriving on a non-loopback
//!   interface (a port published on 127.0.0.1 must not be reachable from elsewhere, the lesson
//!   of CVE-2020-8558), then DNATs local destinations through `publish`.
//! - `output` (nat, -100): the same DNAT for connections from the host itself, 127.0.0.1 included.
//! - `postrouting` (nat, srcnat): hairpin masquerade, masquerade of host loopback sources
//!   entering a bridge, masquerade of each network's subnets leaving through a non-bridge link.
//! - `forward` (filter, priority filter - 1): isolation, ICC, internal, NAT/routed inbound.
//!   ICC off between two ports of one bridge is the bridge driver's port isolation (frames never
//!   reach IP hooks without br_netfilter); `intra`'s `icc_off` drop is what stops traffic
//!   *routed* between two containers of one bridge through the gateway (and bridged frames
//!   too where br_netfilter happens to be on).
//!   Every packet it lets through jumps to `allow`, which sets [`FORWARD_MARK`] so a
//!   Docker/iptables `FORWARD` policy of DROP can accept it (see `compat`).

use crate::model::{Element, Elements, Field};
use crate::nftnl::{CtKey, ElemBytes, Expr, MetaKey, NFPROTO_IPV4, NFPROTO_IPV6, SetSpec, Verdict};

/// The table cnm owns (family inet).
pub const TABLE: &str = "cnm";

/// The packet mark bit cnm's forward chain sets on every packet it accepts. The iptables
/// compatibility rule accepts packets carrying it. Chosen clear of kube-proxy (0x4000, 0x8000),
/// Cilium (0x0f00) and Weave (0x20000, 0x40000); Calico users must exclude it from Calico's
/// mark mask.
pub const FORWARD_MARK: u32 = 0x0100_0000;

/// The sets and maps of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum SetName {
    Bridges,
    Internal,
    IccOff,
    Routed,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    IfName,
    V4,
    V6,
    Proto,
    Port,
}

impl Ty {
    fn id(self) -> u32 {
        match self {
            Self::IfName => 41,
            Self::V4 => 7,
            Self::V6 => 8,
            Self::Proto => 12,
            Self::Port => 13,
        }
    }
    fn len(self) -> u32 {
        match self {
            Self::IfName | Self::V6 => 16,
            Self::V4 => 4,
            Self::Proto => 1,
            Self::Port => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::IfName => "ifname",
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
            Self::Proto => "inet_proto",
            Self::Port => "inet_service",
        }
    }
}

use Ty::{IfName as I, Port as P, Proto as R, V4, V6};

impl SetName {
    /// Every set, in table order.
    pub const ALL: [SetName; 19] = [
        Self::Bridges,
        Self::Internal,
        Self::IccOff,
        Self::Routed,
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
    ];

    /// The set's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bridges => "bridges",
            Self::Internal => "internal",
            Self::IccOff => "icc_off",
            Self::Routed => "routed",
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

    /// (key fields, data fields, interval).
    ///
    /// Single ports live in hash sets and maps (concatenated keys, no `flags interval`): the
    /// kernel's rhash adds and removes one element in O(1). Only real port ranges go to the
    /// interval (pipapo) sets, which the kernel clones whole on every transaction that touches
    /// them and searches linearly on removal (`nft_pipapo_remove`), so those must stay small.
    fn shape(self) -> (&'static [Ty], &'static [Ty], bool) {
        match self {
            Self::Bridges | Self::Internal | Self::IccOff | Self::Routed => (&[I], &[], false),
            Self::SameBridge => (&[I, I], &[], false),
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
        }
    }

    /// The netlink description, as nft 1.0.6 builds it.
    pub(crate) fn spec(self) -> SetSpec {
        let (key, data, interval) = self.shape();
        let concat_key = key.len() > 1;
        let mut flags = 0;
        if interval {
            flags |= 0x4 | 0x80; // NFT_SET_INTERVAL | NFT_SET_CONCAT
        }
        if !data.is_empty() {
            flags |= 0x8; // NFT_SET_MAP
        }
        let type_of = |tys: &[Ty]| tys.iter().fold(0u32, |acc, t| (acc << 6) | t.id());
        let len_of = |tys: &[Ty]| -> u32 {
            if tys.len() == 1 {
                tys[0].len()
            } else {
                tys.iter().map(|t| t.len().div_ceil(4) * 4).sum()
            }
        };
        // User data: NFTNL_UDATA_SET_KEYBYTEORDER (host for a lone ifname, else none), for
        // maps DATABYTEORDER (big endian for a lone address), the concat typeof markers and
        // DATA_INTERVAL; nft reads them back when listing.
        const CONCAT_TYPEOF: [u8; 8] = [0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00];
        let mut ud = vec![0x00, 0x04];
        ud.extend_from_slice(&u32::from(!concat_key).to_le_bytes());
        if !data.is_empty() {
            ud.extend_from_slice(&[0x01, 0x04]);
            ud.extend_from_slice(&(if data.len() == 1 { 2u32 } else { 0 }).to_le_bytes());
        }
        if concat_key {
            ud.extend_from_slice(&[0x03, 0x08]);
            ud.extend_from_slice(&CONCAT_TYPEOF);
        }
        if data.len() > 1 {
            ud.extend_from_slice(&[0x04, 0x08]);
            ud.extend_from_slice(&CONCAT_TYPEOF);
        }
        if !data.is_empty() {
            ud.extend_from_slice(&[0x06, 0x04, 0, 0, 0, 0]);
        }
        SetSpec {
            name: self.name().to_string(),
            flags,
            key_type: type_of(key),
            key_len: len_of(key),
            data: (!data.is_empty()).then(|| (type_of(data), len_of(data))),
            concat: if interval {
                key.iter().map(|t| t.len()).collect()
            } else {
                vec![]
            },
            size: None,
            userdata: ud,
        }
    }

    /// The set's declaration lines (without elements).
    fn declaration(self) -> String {
        let (key, data, interval) = self.shape();
        let names = |tys: &[Ty]| tys.iter().map(|t| t.name()).collect::<Vec<_>>().join(" . ");
        let kind = if data.is_empty() { "set" } else { "map" };
        let mut s = format!("\t{kind} {} {{\n\t\ttype {}", self.name(), names(key));
        if !data.is_empty() {
            s.push_str(" : ");
            s.push_str(&names(data));
        }
        s.push('\n');
        if interval {
            s.push_str("\t\tflags interval\n");
        }
        s
    }

    /// Encodes an element's fields; concatenations pad each field to 4 bytes.
    pub(crate) fn elem_bytes(self, e: &Element) -> ElemBytes {
        let (key, _, _) = self.shape();
        let enc = |fields: &[Field]| -> Vec<u8> {
            let mut out = Vec::new();
            for f in fields {
                out.extend_from_slice(&f.bytes());
                if fields.len() > 1 {
                    while !out.len().is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            out
        };
        ElemBytes {
            key: enc(&e.key),
            key_end: (key.len() > 1 && self.shape().2)
                .then(|| enc(e.key_end.as_deref().unwrap_or(&e.key))),
            data: (!e.data.is_empty()).then(|| enc(&e.data)),
        }
    }
}

/// A chain: name, hook (number, priority, type, priority text) for base chains.
pub(crate) struct ChainDef {
    pub name: &'static str,
    pub hook: Option<(u32, i32, &'static str, &'static str)>,
}

/// The chains in table order. Hook numbers: prerouting 0, forward 2, output 3, postrouting 4.
pub(crate) const CHAINS: [ChainDef; 8] = [
    ChainDef {
        name: "publish",
        hook: None,
    },
    ChainDef {
        name: "prerouting",
        hook: Some((0, -100, "nat", "dstnat")),
    },
    ChainDef {
        name: "output",
        hook: Some((3, -100, "nat", "-100")),
    },
    ChainDef {
        name: "postrouting",
        hook: Some((4, 100, "nat", "srcnat")),
    },
    ChainDef {
        name: "forward",
        hook: Some((2, -1, "filter", "filter - 1")),
    },
    ChainDef {
        name: "inbound",
        hook: None,
    },
    ChainDef {
        name: "intra",
        hook: None,
    },
    ChainDef {
        name: "allow",
        hook: None,
    },
];

/// One constant rule: its chain, its nft text and its expressions.
pub(crate) struct RuleDef {
    pub chain: &'static str,
    pub text: &'static str,
    pub exprs: Vec<Expr>,
}

const TCP_UDP_SCTP: &[u8] = &[6, 17, 132];
const ICMP_ICMPV6: &[u8] = &[1, 58];

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
fn lookup(sreg: u32, set: SetName) -> Expr {
    Expr::Lookup {
        sreg,
        dreg: None,
        set: set.name(),
        inv: false,
    }
}
fn not_in(sreg: u32, set: SetName) -> Expr {
    Expr::Lookup {
        sreg,
        dreg: None,
        set: set.name(),
        inv: true,
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
    Expr::Immediate(Verdict::Jump(chain))
}
fn ct_bit(key: CtKey, mask: u32) -> [Expr; 3] {
    [
        Expr::Ct { key, dreg: 1 },
        Expr::Bitwise {
            reg: 1,
            mask,
            xor: 0,
            with_op: false,
        },
        Expr::Cmp {
            sreg: 1,
            neq: true,
            data: vec![0; 4],
        },
    ]
}
fn ifname(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

/// `[meta l4proto {tcp,udp,sctp}] ip daddr . meta l4proto . th dport` for a host-specific
/// DNAT map, as nft orders it.
fn dnat_host(v6: bool, map: SetName, with_port: bool) -> Vec<Expr> {
    let (fam, off, len, preg, dreg) = if v6 {
        (NFPROTO_IPV6, 24, 16, 2, 13)
    } else {
        (NFPROTO_IPV4, 16, 4, 9, 10)
    };
    let mut v = vec![
        meta(MetaKey::L4Proto, 1),
        Expr::LookupProtos {
            sreg: 1,
            protos: TCP_UDP_SCTP,
        },
    ];
    v.extend(nfproto(fam));
    v.extend([nh(1, off, len), meta(MetaKey::L4Proto, preg)]);
    v.extend(hton(map, preg));
    v.extend([
        dport(dreg),
        Expr::Lookup {
            sreg: 1,
            dreg: Some(1),
            set: map.name(),
            inv: false,
        },
        Expr::Dnat {
            family: fam,
            addr: 1,
            proto: with_port.then_some(preg),
        },
    ]);
    v
}

/// nft widens `meta l4proto` in a concatenation to network order for interval sets only
/// (their keys compare as big-endian ranges); a hash set hashes the register as loaded.
fn hton(set: SetName, reg: u32) -> Option<Expr> {
    set.shape().2.then_some(Expr::ByteorderHton { reg })
}

/// `meta nfproto X meta l4proto {…} dnat to meta l4proto . th dport map @m`.
fn dnat_any(v6: bool, map: SetName, with_port: bool) -> Vec<Expr> {
    let fam = if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
    let mut v: Vec<Expr> = nfproto(fam).into();
    v.extend([
        meta(MetaKey::L4Proto, 1),
        Expr::LookupProtos {
            sreg: 1,
            protos: TCP_UDP_SCTP,
        },
        meta(MetaKey::L4Proto, 1),
    ]);
    v.extend(hton(map, 1));
    v.extend([
        dport(9),
        Expr::Lookup {
            sreg: 1,
            dreg: Some(1),
            set: map.name(),
            inv: false,
        },
        Expr::Dnat {
            family: fam,
            addr: 1,
            // the port follows the address in the map's value: register 9 after a 4-byte
            // address, register 2 (the next 16-byte one) after a 16-byte address
            proto: with_port.then_some(if v6 { 2 } else { 9 }),
        },
    ]);
    v
}

fn published(v6: bool, set: SetName) -> Vec<Expr> {
    let (fam, off, len, preg, dreg) = if v6 {
        (NFPROTO_IPV6, 24, 16, 2, 13)
    } else {
        (NFPROTO_IPV4, 16, 4, 9, 10)
    };
    let mut v = vec![meta(MetaKey::OifName, 1), lookup(1, SetName::Routed)];
    v.extend(nfproto(fam));
    v.extend([nh(1, off, len), meta(MetaKey::L4Proto, preg)]);
    v.extend(hton(set, preg));
    v.extend([dport(dreg), lookup(1, set), jump("allow")]);
    v
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

/// Every rule, in order.
pub(crate) fn rules() -> Vec<RuleDef> {
    use SetName as S;
    let r = |chain, text, exprs| RuleDef { chain, text, exprs };
    let loopback_v4 = |sreg_off: u32| -> Vec<Expr> {
        let mut v: Vec<Expr> = nfproto(NFPROTO_IPV4).into();
        v.extend([nh(1, sreg_off, 1), cmp(1, &[127])]);
        v
    };
    let fib_local = vec![
        Expr::FibDaddrType { dreg: 1 },
        cmp(1, &2u32.to_ne_bytes()),
        jump("publish"),
    ];
    vec![
        r(
            "publish",
            "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @dnat4",
            dnat_host(false, S::Dnat4, true),
        ),
        r(
            "publish",
            "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th dport map @dnat4_range",
            dnat_host(false, S::Dnat4Range, false),
        ),
        r(
            "publish",
            "meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @dnat4_any",
            dnat_any(false, S::Dnat4Any, true),
        ),
        r(
            "publish",
            "meta nfproto ipv4 meta l4proto { tcp, udp, sctp } dnat ip to meta l4proto . th dport map @dnat4_any_range",
            dnat_any(false, S::Dnat4AnyRange, false),
        ),
        r(
            "publish",
            "meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6",
            dnat_host(true, S::Dnat6, true),
        ),
        r(
            "publish",
            "meta l4proto { tcp, udp, sctp } dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6_range",
            dnat_host(true, S::Dnat6Range, false),
        ),
        r(
            "publish",
            "meta nfproto ipv6 meta l4proto { tcp, udp, sctp } dnat ip6 to meta l4proto . th dport map @dnat6_any",
            dnat_any(true, S::Dnat6Any, true),
        ),
        r(
            "publish",
            "meta nfproto ipv6 meta l4proto { tcp, udp, sctp } dnat ip6 to meta l4proto . th dport map @dnat6_any_range",
            dnat_any(true, S::Dnat6AnyRange, false),
        ),
        r(
            "prerouting",
            "iifname != \"lo\" ip daddr 127.0.0.0/8 drop",
            {
                let mut v = vec![
                    meta(MetaKey::IifName, 1),
                    Expr::Cmp {
                        sreg: 1,
                        neq: true,
                        data: ifname("lo"),
                    },
                ];
                v.extend(loopback_v4(16));
                v.push(Expr::Immediate(Verdict::Drop));
                v
            },
        ),
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
                    meta(MetaKey::IifName, 1),
                    meta(MetaKey::OifName, 2),
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
                let mut v = vec![meta(MetaKey::OifName, 1), lookup(1, S::Bridges)];
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
        r(
            "forward",
            "iifname != @bridges oifname != @bridges return",
            vec![
                meta(MetaKey::IifName, 1),
                not_in(1, S::Bridges),
                meta(MetaKey::OifName, 1),
                not_in(1, S::Bridges),
                Expr::Immediate(Verdict::Return),
            ],
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
                meta(MetaKey::IifName, 1),
                meta(MetaKey::OifName, 2),
                lookup(1, S::SameBridge),
                jump("intra"),
            ],
        ),
        r(
            "forward",
            "iifname @internal drop",
            vec![
                meta(MetaKey::IifName, 1),
                lookup(1, S::Internal),
                Expr::Immediate(Verdict::Drop),
            ],
        ),
        r(
            "forward",
            "oifname @internal drop",
            vec![
                meta(MetaKey::OifName, 1),
                lookup(1, S::Internal),
                Expr::Immediate(Verdict::Drop),
            ],
        ),
        r("forward", "ct status dnat jump allow", {
            let mut v: Vec<Expr> = ct_bit(CtKey::Status, 0x20).into();
            v.push(jump("allow"));
            v
        }),
        r(
            "forward",
            "iifname @bridges oifname @bridges drop",
            vec![
                meta(MetaKey::IifName, 1),
                lookup(1, S::Bridges),
                meta(MetaKey::OifName, 1),
                lookup(1, S::Bridges),
                Expr::Immediate(Verdict::Drop),
            ],
        ),
        r(
            "forward",
            "oifname @bridges jump inbound",
            vec![
                meta(MetaKey::OifName, 1),
                lookup(1, S::Bridges),
                jump("inbound"),
            ],
        ),
        r("forward", "jump allow", vec![jump("allow")]),
        r(
            "inbound",
            "oifname @routed ip daddr . meta l4proto . th dport @published4 jump allow",
            published(false, S::Published4),
        ),
        r(
            "inbound",
            "oifname @routed ip daddr . meta l4proto . th dport @published4_range jump allow",
            published(false, S::Published4Range),
        ),
        r(
            "inbound",
            "oifname @routed ip6 daddr . meta l4proto . th dport @published6 jump allow",
            published(true, S::Published6),
        ),
        r(
            "inbound",
            "oifname @routed ip6 daddr . meta l4proto . th dport @published6_range jump allow",
            published(true, S::Published6Range),
        ),
        r(
            "inbound",
            "oifname @routed meta l4proto { icmp, ipv6-icmp } jump allow",
            vec![
                meta(MetaKey::OifName, 1),
                lookup(1, S::Routed),
                meta(MetaKey::L4Proto, 1),
                Expr::LookupProtos {
                    sreg: 1,
                    protos: ICMP_ICMPV6,
                },
                jump("allow"),
            ],
        ),
        r("inbound", "drop", vec![Expr::Immediate(Verdict::Drop)]),
        r(
            "intra",
            "iifname @icc_off drop",
            vec![
                meta(MetaKey::IifName, 1),
                lookup(1, S::IccOff),
                Expr::Immediate(Verdict::Drop),
            ],
        ),
        r("intra", "jump allow", vec![jump("allow")]),
        r(
            "allow",
            "meta mark set meta mark | 0x01000000 accept",
            vec![
                meta(MetaKey::Mark, 1),
                Expr::Bitwise {
                    reg: 1,
                    mask: !FORWARD_MARK,
                    xor: FORWARD_MARK,
                    with_op: true,
                },
                Expr::MetaSet {
                    key: MetaKey::Mark,
                    sreg: 1,
                },
                Expr::Immediate(Verdict::Accept),
            ],
        ),
    ]
}

/// Renders the whole table with `elements` as nft text (what `nft -f` accepts).
pub(crate) fn render(elements: &Elements) -> String {
    let mut s = format!("table inet {TABLE} {{\n");
    for set in SetName::ALL {
        s.push_str(&set.declaration());
        if let Some(elems) = elements.get(&set).filter(|e| !e.is_empty()) {
            s.push_str("\t\telements = { ");
            s.push_str(
                &elems
                    .iter()
                    .map(Element::text)
                    .collect::<Vec<_>>()
                    .join(",\n\t\t\t     "),
            );
            s.push_str(" }\n");
        }
        s.push_str("\t}\n\n");
    }
    let rules = rules();
    for (i, chain) in CHAINS.iter().enumerate() {
        s.push_str(&format!("\tchain {} {{\n", chain.name));
        if let Some((_, _, ty, prio)) = chain.hook {
            // base chains are named after their hook
            s.push_str(&format!(
                "\t\ttype {ty} hook {} priority {prio}; policy accept;\n",
                chain.name
            ));
        }
        for rule in rules.iter().filter(|r| r.chain == chain.name) {
            s.push_str(&format!("\t\t{}\n", rule.text));
        }
        s.push_str("\t}\n");
        if i + 1 < CHAINS.len() {
            s.push('\n');
        }
    }
    s.push_str("}\n");
    s
}
