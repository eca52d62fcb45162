//! Fragments: what one owner (a driver) keeps in the shared firewall, declared as data.
//!
//! An owner declares its sets, maps and chains once ([`FragmentSpec`]); the firewall compiles
//! them into tables of the owner's own (`table inet cnm-<owner>`, `table bridge cnm-<owner>`),
//! each base chain at the hook and priority the owner asked for. From then on the owner only
//! adds and deletes elements of its own sets ([`ElementChange`]), each change one transaction
//! that touches nothing of any other owner's. The owner's tables are in the kernel exactly while
//! its sets hold at least one element: created by the change that adds the first, deleted by
//! the one that deletes the last.
//!
//! Why tables of their own, each with its own base chains, rather than chains jumped to from
//! shared base chains: a verdict of `accept` ends the base chain it was reached from, but not
//! the other base chains of the hook; `drop` is final everywhere. With a jump from a shared
//! chain, an owner's `accept` would skip every owner after it, so one driver could open what
//! another closes. In base chains of their own, each owner's filtering holds whatever another
//! accepts: a packet must pass every owner's chains, and the order between owners (by priority)
//! only matters for NAT, where the first mapping of a connection wins.
//!
//! The rule language is small on purpose: lookups of concatenated keys in the owner's sets
//! (`iifname . ip saddr @pairs`), comparisons with a constant (`meta l4proto tcp`), and a verdict,
//! a jump, `allow` (the owner's `allow` chain: sets [`crate::FORWARD_MARK`] and accepts, so
//! Docker's `FORWARD` DROP policy lets the packet through, see
//! [`crate::Firewall::ensure_iptables_compat`]), `masquerade`, or `dnat` through one of its maps.
//! Per-packet cost is a few lookups whatever the number of elements. Expressions are encoded as
//! nft 1.0.6 encodes the same text (protocol dependencies included), so `nft list ruleset`
//! shows the rule as written.
//!
//! Here the declaration types; `compile.rs` turns a spec into tables, `registry.rs` keeps every
//! owner's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use cnm_sandbox::IpFamily;
use cnm_types::{IfName, MacAddress};

use crate::FirewallError;
use crate::model::{Element, Field, SetId};
use crate::nftnl::{Expr, MetaKey, NFPROTO_BRIDGE, NFPROTO_INET};
use crate::table::{SetDef, Ty};

/// The family of the table a set or chain lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 packets at the IP hooks (filtering, NAT).
    Inet,
    /// `bridge`: frames crossing a Linux bridge, before any IP hook sees them.
    Bridge,
}

impl Family {
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Self::Inet => NFPROTO_INET,
            Self::Bridge => NFPROTO_BRIDGE,
        }
    }
}

/// The type of one field of a set's key or of a map's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldType {
    /// An interface name (`ifname`).
    IfName,
    /// An IPv4 address (`ipv4_addr`).
    Ipv4,
    /// An IPv6 address (`ipv6_addr`).
    Ipv6,
    /// A transport protocol (`inet_proto`).
    Proto,
    /// A port (`inet_service`).
    Port,
    /// A MAC address (`ether_addr`).
    Mac,
    /// An address family (`nf_proto`: `ipv4`, `ipv6`).
    Family,
}

impl FieldType {
    pub(crate) fn ty(self) -> Ty {
        match self {
            Self::IfName => Ty::IfName,
            Self::Ipv4 => Ty::V4,
            Self::Ipv6 => Ty::V6,
            Self::Proto => Ty::Proto,
            Self::Port => Ty::Port,
            Self::Mac => Ty::Ether,
            Self::Family => Ty::NfProto,
        }
    }
}

/// A value of one field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Value {
    /// An interface name.
    IfName(IfName),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// A transport protocol.
    Proto(crate::Protocol),
    /// A port.
    Port(u16),
    /// A MAC address.
    Mac(MacAddress),
    /// An address family.
    Family(IpFamily),
}

impl From<&IfName> for Value {
    fn from(v: &IfName) -> Self {
        Self::IfName(v.clone())
    }
}
/// `From<T>` for each variant of [`Value`] that holds a `T` as it is.
macro_rules! value_from {
    ($($ty:ty => $variant:ident),+ $(,)?) => {
        $(impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Self::$variant(v)
            }
        })+
    };
}
value_from!(
    Ipv4Addr => Ipv4,
    Ipv6Addr => Ipv6,
    crate::Protocol => Proto,
    u16 => Port,
    MacAddress => Mac,
);

impl Value {
    pub(crate) fn field(&self) -> Field {
        match self {
            Self::IfName(n) => Field::ifname(n),
            Self::Ipv4(a) => Field::V4(*a),
            Self::Ipv6(a) => Field::V6(*a),
            Self::Proto(p) => Field::Proto(p.number()),
            Self::Port(p) => Field::Port(*p),
            Self::Mac(m) => Field::Mac(m.octets()),
            Self::Family(IpFamily::V4) => Field::NfProto(crate::nftnl::NFPROTO_IPV4),
            Self::Family(IpFamily::V6) => Field::NfProto(crate::nftnl::NFPROTO_IPV6),
        }
    }
}

/// One element of a fragment's set or map: a key, for an interval set an inclusive end, and for
/// a map its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SetElement {
    pub(crate) key: Vec<Value>,
    pub(crate) key_end: Option<Vec<Value>>,
    pub(crate) data: Vec<Value>,
}

impl SetElement {
    /// An element with this key (one value per field of the set's key).
    pub fn new(key: impl IntoIterator<Item = Value>) -> Self {
        Self {
            key: key.into_iter().collect(),
            key_end: None,
            data: Vec::new(),
        }
    }

    /// For an interval set: the key range ends (inclusively) here, field by field.
    pub fn through(mut self, end: impl IntoIterator<Item = Value>) -> Self {
        self.key_end = Some(end.into_iter().collect());
        self
    }

    /// For a map: the value the key maps to.
    pub fn to(mut self, data: impl IntoIterator<Item = Value>) -> Self {
        self.data = data.into_iter().collect();
        self
    }

    /// Checks the element against its set and makes the model's element of it.
    pub(crate) fn element(&self, set: &SetDef, what: &str) -> Result<Element, FirewallError> {
        let fields = |vals: &[Value]| vals.iter().map(Value::field).collect::<Vec<_>>();
        let e = Element {
            key: fields(&self.key),
            key_end: self.key_end.as_deref().map(fields),
            data: fields(&self.data),
        };
        let typed = |tys: &[Ty], got: &[Field]| {
            tys.len() == got.len() && tys.iter().zip(got).all(|(t, f)| t.admits(f))
        };
        let invalid = |reason: &str| FirewallError::invalid(what, e.text(), reason);
        if !typed(&set.key, &e.key) {
            return Err(invalid("the key does not have the set's key type"));
        }
        if let Some(end) = &e.key_end {
            if !set.interval {
                return Err(invalid("only an interval set takes a range"));
            }
            if !typed(&set.key, end) {
                return Err(invalid("the range end does not have the set's key type"));
            }
            if e.key.iter().zip(end).any(|(a, b)| a > b) {
                return Err(invalid("the range ends before it starts"));
            }
        }
        if !typed(&set.data, &e.data) {
            return Err(invalid(if set.data.is_empty() {
                "a set's element maps to nothing"
            } else {
                "the value does not have the map's value type"
            }));
        }
        Ok(e)
    }
}

/// A set or map of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentSet {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) key: Vec<FieldType>,
    pub(crate) data: Vec<FieldType>,
    pub(crate) interval: bool,
}

impl FragmentSet {
    /// A set of `inet` family with this key (one field, or a concatenation).
    pub fn new(name: impl Into<String>, key: impl IntoIterator<Item = FieldType>) -> Self {
        Self {
            name: name.into(),
            family: Family::Inet,
            key: key.into_iter().collect(),
            data: Vec::new(),
            interval: false,
        }
    }

    /// Makes it a map whose elements map to values of these types.
    pub fn to(mut self, data: impl IntoIterator<Item = FieldType>) -> Self {
        self.data = data.into_iter().collect();
        self
    }

    /// Makes it an interval set (its elements may be ranges); only for concatenated keys.
    /// Keep such sets small: the kernel copies them whole on each transaction that touches them.
    pub fn interval(mut self) -> Self {
        self.interval = true;
        self
    }

    /// Puts it in the owner's table of `family` (default [`Family::Inet`]).
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    pub(crate) fn def(&self) -> SetDef {
        let tys = |f: &[FieldType]| f.iter().map(|t| t.ty()).collect::<Vec<_>>();
        SetDef::new(
            self.name.clone(),
            &tys(&self.key),
            &tys(&self.data),
            self.interval,
        )
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChainHook {
    /// Packets (frames) as they arrive, before routing.
    Prerouting,
    /// Packets for the host itself.
    Input,
    /// Packets routed (frames bridged) through the host.
    Forward,
    /// Packets the host sends.
    Output,
    /// Packets about to leave.
    Postrouting,
}

impl ChainHook {
    pub(crate) fn num(self) -> u32 {
        match self {
            Self::Prerouting => 0,
            Self::Input => 1,
            Self::Forward => 2,
            Self::Output => 3,
            Self::Postrouting => 4,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    /// Filtering: verdicts.
    Filter,
    /// NAT (`inet` only): `dnat` at prerouting and output, `masquerade` at postrouting; sees
    /// the first packet of each connection.
    Nat,
}

/// What a rule matches on: a field of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    /// `iifname`: the interface the packet came in on.
    IifName,
    /// `oifname`: the interface it goes out on.
    OifName,
    /// `ip saddr`.
    IpSaddr,
    /// `ip daddr`.
    IpDaddr,
    /// `ip6 saddr`.
    Ip6Saddr,
    /// `ip6 daddr`.
    Ip6Daddr,
    /// `meta l4proto`: the transport protocol.
    L4Proto,
    /// `th sport`: the transport source port.
    ThSport,
    /// `th dport`: the transport destination port.
    ThDport,
    /// `meta nfproto` (`inet` only): the address family.
    Family,
    /// `ether saddr` (`bridge` only).
    EtherSaddr,
    /// `ether daddr` (`bridge` only).
    EtherDaddr,
}

impl Key {
    pub(crate) fn ty(self) -> Ty {
        match self {
            Self::IifName | Self::OifName => Ty::IfName,
            Self::IpSaddr | Self::IpDaddr => Ty::V4,
            Self::Ip6Saddr | Self::Ip6Daddr => Ty::V6,
            Self::L4Proto => Ty::Proto,
            Self::ThSport | Self::ThDport => Ty::Port,
            Self::Family => Ty::NfProto,
            Self::EtherSaddr | Self::EtherDaddr => Ty::Ether,
        }
    }

    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::IifName => "iifname",
            Self::OifName => "oifname",
            Self::IpSaddr => "ip saddr",
            Self::IpDaddr => "ip daddr",
            Self::Ip6Saddr => "ip6 saddr",
            Self::Ip6Daddr => "ip6 daddr",
            Self::L4Proto => "meta l4proto",
            Self::ThSport => "th sport",
            Self::ThDport => "th dport",
            Self::Family => "meta nfproto",
            Self::EtherSaddr => "ether saddr",
            Self::EtherDaddr => "ether daddr",
        }
    }

    /// The address family whose header this field is read from.
    pub(crate) fn needs(self) -> Option<IpFamily> {
        match self {
            Self::IpSaddr | Self::IpDaddr => Some(IpFamily::V4),
            Self::Ip6Saddr | Self::Ip6Daddr => Some(IpFamily::V6),
            _ => None,
        }
    }

    pub(crate) fn allowed_in(self, family: Family) -> bool {
        match self {
            Self::Family => family == Family::Inet,
            Self::EtherSaddr | Self::EtherDaddr => family == Family::Bridge,
            _ => true,
        }
    }

    pub(crate) fn load(self, dreg: u32) -> Expr {
        let meta = |key| Expr::Meta { key, dreg };
        let payload = |base, offset, len| Expr::Payload {
            dreg,
            base,
            offset,
            len,
        };
        match self {
            Self::IifName => meta(MetaKey::IifName),
            Self::OifName => meta(MetaKey::OifName),
            Self::L4Proto => meta(MetaKey::L4Proto),
            Self::Family => meta(MetaKey::NfProto),
            Self::IpSaddr => payload(1, 12, 4),
            Self::IpDaddr => payload(1, 16, 4),
            Self::Ip6Saddr => payload(1, 8, 16),
            Self::Ip6Daddr => payload(1, 24, 16),
            Self::ThSport => payload(2, 0, 2),
            Self::ThDport => payload(2, 2, 2),
            Self::EtherSaddr => payload(0, 6, 6),
            Self::EtherDaddr => payload(0, 0, 6),
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The concatenation of `keys` is (or, `negate`, is not) an element of the owner's `set`:
    /// `iifname . ip saddr @pairs`.
    InSet {
        /// The packet's fields, in the order of the set's key.
        keys: Vec<Key>,
        /// The owner's set, in the same family as the chain.
        set: String,
        /// `!=`.
        negate: bool,
    },
    /// The field equals (or not) a constant: `meta l4proto tcp`, `iifname != "lo"`.
    Is {
        /// The field.
        key: Key,
        /// The constant.
        value: Value,
        /// `!=`.
        negate: bool,
    },
}

impl Match {
    /// `keys @set`.
    pub fn in_set(keys: impl IntoIterator<Item = Key>, set: impl Into<String>) -> Self {
        Self::InSet {
            keys: keys.into_iter().collect(),
            set: set.into(),
            negate: false,
        }
    }

    /// `keys != @set`.
    pub fn not_in_set(keys: impl IntoIterator<Item = Key>, set: impl Into<String>) -> Self {
        Self::InSet {
            keys: keys.into_iter().collect(),
            set: set.into(),
            negate: true,
        }
    }

    /// `key value`.
    pub fn is(key: Key, value: impl Into<Value>) -> Self {
        Self::Is {
            key,
            value: value.into(),
            negate: false,
        }
    }

    /// `key != value`.
    pub fn is_not(key: Key, value: impl Into<Value>) -> Self {
        Self::Is {
            key,
            value: value.into(),
            negate: true,
        }
    }
}

/// What a rule does when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// `accept`: ends this base chain (other owners' base chains still see the packet).
    Accept,
    /// `drop`: final.
    Drop,
    /// `return`: back to the calling chain (from a base chain: its policy, accept).
    Return,
    /// `jump chain`: one of the owner's regular chains of the same family.
    Jump(String),
    /// `jump allow` (`inet` only): marks the packet with [`crate::FORWARD_MARK`] and accepts it,
    /// so that Docker's iptables `FORWARD` DROP policy lets it through too. That chain runs at
    /// priority 0: a forward chain that allows (directly or through jumps) must have a priority
    /// below 0 (the bridge's runs at filter - 1).
    Allow,
    /// `masquerade` (a `nat` base chain at postrouting only).
    Masquerade,
    /// `dnat ip[6] to <keys> map @map` (a `nat` base chain at prerouting or output only): the
    /// map's value is an address, or an address and a port. The rule must establish the
    /// address family first (a key of that family, or [`Key::Family`]), and for a port the
    /// transport protocol (a [`Match::Is`] on [`Key::L4Proto`]).
    Dnat {
        /// The packet's fields, in the order of the map's key.
        keys: Vec<Key>,
        /// The owner's map.
        map: String,
    },
}

/// One rule: conditions, then an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) matches: Vec<Match>,
    pub(crate) action: Action,
}

impl Rule {
    /// A rule doing `action` when every one of `matches` holds.
    pub fn new(matches: impl IntoIterator<Item = Match>, action: Action) -> Self {
        Self {
            matches: matches.into_iter().collect(),
            action,
        }
    }
}

/// A chain of a fragment: regular (reached by jumps), or a base chain on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentChain {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) base: Option<(ChainHook, ChainType, i32)>,
    pub(crate) rules: Vec<Rule>,
}

impl FragmentChain {
    /// A regular chain of `inet` family (reached by [`Action::Jump`]).
    pub fn regular(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            family: Family::Inet,
            base: None,
            rules: Vec::new(),
        }
    }

    /// A base chain of `inet` family on `hook`, of type `ty`, at `priority` (nft's numbers:
    /// raw -300, dstnat -100, filter 0, srcnat 100; the bridge's own chains sit at -300,
    /// -100, 0, 100 and filter - 1; cnm's guards at raw and filter - 2; iptables' at 0, so a
    /// forward chain using [`Action::Allow`] sits below 0). Its policy is always accept: an
    /// owner drops only what its rules say.
    pub fn base(name: impl Into<String>, hook: ChainHook, ty: ChainType, priority: i32) -> Self {
        Self {
            name: name.into(),
            family: Family::Inet,
            base: Some((hook, ty, priority)),
            rules: Vec::new(),
        }
    }

    /// Puts it in the owner's table of `family` (default [`Family::Inet`]).
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// Appends a rule.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
}

/// Everything one owner keeps in the firewall: its sets, maps and chains.
///
/// Names are checked for what the kernel accepts; avoid nft keywords (`fwd`, `filter`, `map`,
/// `ip`…) all the same: the kernel takes them, but `nft -f` cannot read back a listing that
/// uses them unquoted, and saving `nft list ruleset` is how many hosts persist their firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentSpec {
    pub(crate) owner: String,
    pub(crate) sets: Vec<FragmentSet>,
    pub(crate) chains: Vec<FragmentChain>,
}

impl FragmentSpec {
    /// An empty fragment of `owner` (a driver's name: `[a-z][a-z0-9_-]*`, at most 24 bytes;
    /// `bridge` is the built-in bridge fragment's). Its tables are `cnm-<owner>`.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// Adds a set or map.
    pub fn set(mut self, set: FragmentSet) -> Self {
        self.sets.push(set);
        self
    }

    /// Adds a chain.
    pub fn chain(mut self, chain: FragmentChain) -> Self {
        self.chains.push(chain);
        self
    }

    /// The owner's name.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// One transaction's changes to a fragment's elements: deletes first, then adds. Each element
/// is the owner's own; claims put interfaces in the firewall's shared `interfaces` set (the
/// interfaces whose forwarded traffic is cnm's, let through the no-open-router drop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementChange {
    pub(crate) delete: Vec<(String, SetElement)>,
    pub(crate) add: Vec<(String, SetElement)>,
    pub(crate) release: Vec<IfName>,
    pub(crate) claim: Vec<IfName>,
}

impl ElementChange {
    /// No change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` to the owner's `set`.
    pub fn add(mut self, set: impl Into<String>, element: SetElement) -> Self {
        self.add.push((set.into(), element));
        self
    }

    /// Deletes `element` from the owner's `set`.
    pub fn delete(mut self, set: impl Into<String>, element: SetElement) -> Self {
        self.delete.push((set.into(), element));
        self
    }

    /// Claims `ifname` as an interface cnm forwards for (see the type's docs).
    pub fn claim_interface(mut self, ifname: &IfName) -> Self {
        self.claim.push(ifname.clone());
        self
    }

    /// Gives up a claim made by [`ElementChange::claim_interface`].
    pub fn release_interface(mut self, ifname: &IfName) -> Self {
        self.release.push(ifname.clone());
        self
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
            && self.add.is_empty()
            && self.claim.is_empty()
            && self.release.is_empty()
    }
}

/// Elements grouped per set of one owner (its own sets and its claims).
pub(crate) type Held = BTreeMap<SetId, std::collections::BTreeSet<Element>>;

/// A fragment using every set shape, key, match and action, with one element per set: the
/// nft reference `testdata/nft-1.0.6-fragment.nft` is its rendering.
#[cfg(test)]
pub(crate) fn sample() -> (FragmentSpec, ElementChange) {
    use ChainHook::{Forward, Postrouting, Prerouting};
    use FieldType as F;
    use Key::*;
    let n = |s: &str| -> IfName { s.parse().unwrap() };
    let v4 = |s: &str| Value::Ipv4(s.parse().unwrap());
    let v6 = |s: &str| Value::Ipv6(s.parse().unwrap());
    let mac: MacAddress = "02:00:00:00:00:01".parse().unwrap();
    let spec = FragmentSpec::new("sample")
        .set(FragmentSet::new("ifaces", [F::IfName]))
        .set(FragmentSet::new("blocked", [F::Ipv4]))
        .set(FragmentSet::new("blocked6", [F::Ipv6]))
        .set(FragmentSet::new("ports", [F::Port]))
        .set(FragmentSet::new("pairs", [F::IfName, F::Ipv4]).interval())
        .set(FragmentSet::new("services", [F::Ipv4, F::Proto, F::Port]).interval())
        .set(FragmentSet::new("fwd4", [F::Ipv4, F::Port]).to([F::Ipv4, F::Port]))
        .set(FragmentSet::new("fwd6", [F::Ipv6, F::Port]).to([F::Ipv6, F::Port]))
        .set(
            FragmentSet::new("anyport", [F::Proto, F::Port])
                .interval()
                .to([F::Ipv4]),
        )
        .set(FragmentSet::new("macs", [F::IfName, F::Mac]).family(crate::fragment::Family::Bridge))
        .set(FragmentSet::new("own4", [F::IfName, F::Ipv4]).family(crate::fragment::Family::Bridge))
        .chain(
            FragmentChain::base("nat_in", Prerouting, ChainType::Nat, -95)
                .rule(Rule::new(
                    [Match::is(L4Proto, crate::Protocol::Tcp)],
                    Action::Dnat {
                        keys: vec![IpDaddr, ThDport],
                        map: "fwd4".into(),
                    },
                ))
                .rule(Rule::new(
                    [Match::is(L4Proto, crate::Protocol::Tcp)],
                    Action::Dnat {
                        keys: vec![Ip6Daddr, ThDport],
                        map: "fwd6".into(),
                    },
                ))
                .rule(Rule::new(
                    [Match::is(Key::Family, Value::Family(IpFamily::V4))],
                    Action::Dnat {
                        keys: vec![L4Proto, ThDport],
                        map: "anyport".into(),
                    },
                )),
        )
        .chain(
            FragmentChain::base("nat_out", Postrouting, ChainType::Nat, 105).rule(Rule::new(
                [
                    Match::not_in_set([OifName], "ifaces"),
                    Match::in_set([IifName, IpSaddr], "pairs"),
                ],
                Action::Masquerade,
            )),
        )
        .chain(
            FragmentChain::base("screen", Forward, ChainType::Filter, -10)
                .rule(Rule::new(
                    [
                        Match::in_set([IifName], "ifaces"),
                        Match::in_set([IpDaddr], "blocked"),
                    ],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [
                        Match::in_set([IifName], "ifaces"),
                        Match::in_set([Ip6Daddr], "blocked6"),
                    ],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [Match::in_set([IpDaddr, L4Proto, ThDport], "services")],
                    Action::Allow,
                ))
                .rule(Rule::new(
                    [
                        Match::is_not(IifName, &n("lo")),
                        Match::is(IpSaddr, "10.1.0.2".parse::<Ipv4Addr>().unwrap()),
                        Match::not_in_set([ThSport], "ports"),
                    ],
                    Action::Return,
                ))
                .rule(Rule::new(
                    [Match::in_set([OifName], "ifaces")],
                    Action::Jump("inbound".into()),
                ))
                .rule(Rule::new([Match::is(ThDport, 80u16)], Action::Accept)),
        )
        .chain(
            FragmentChain::regular("inbound")
                .rule(Rule::new(
                    [Match::is(Key::Family, Value::Family(IpFamily::V6))],
                    Action::Accept,
                ))
                .rule(Rule::new([], Action::Allow)),
        )
        .chain(
            FragmentChain::base("spoof", Prerouting, ChainType::Filter, -290)
                .family(crate::fragment::Family::Bridge)
                .rule(Rule::new(
                    [Match::not_in_set([IifName, EtherSaddr], "macs")],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [Match::not_in_set([IifName, IpSaddr], "own4")],
                    Action::Drop,
                ))
                .rule(Rule::new([Match::is(EtherDaddr, mac)], Action::Drop)),
        );
    let port = n("tst0p");
    let change = ElementChange::new()
        .add("ifaces", SetElement::new([Value::from(&n("tst0"))]))
        .add("blocked", SetElement::new([v4("10.9.9.9")]))
        .add("blocked6", SetElement::new([v6("fd00::9")]))
        .add("ports", SetElement::new([Value::Port(53)]))
        .add(
            "pairs",
            SetElement::new([Value::from(&n("tst0")), v4("10.1.0.0")])
                .through([Value::from(&n("tst0")), v4("10.1.255.255")]),
        )
        .add(
            "services",
            SetElement::new([
                v4("10.0.0.5"),
                crate::Protocol::Tcp.into(),
                Value::Port(8000),
            ])
            .through([
                v4("10.0.0.5"),
                crate::Protocol::Tcp.into(),
                Value::Port(8010),
            ]),
        )
        .add(
            "fwd4",
            SetElement::new([v4("10.0.0.1"), Value::Port(80)])
                .to([v4("10.1.0.2"), Value::Port(8080)]),
        )
        .add(
            "fwd6",
            SetElement::new([v6("fd00::1"), Value::Port(80)])
                .to([v6("fd00:1::2"), Value::Port(8080)]),
        )
        .add(
            "anyport",
            SetElement::new([crate::Protocol::Udp.into(), Value::Port(5000)])
                .through([crate::Protocol::Udp.into(), Value::Port(5009)])
                .to([v4("10.1.0.3")]),
        )
        .add(
            "macs",
            SetElement::new([Value::from(&port), Value::Mac(mac)]),
        )
        .add(
            "own4",
            SetElement::new([Value::from(&port), v4("10.1.0.2")]),
        )
        .claim_interface(&n("tst0"));
    (spec, change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Owner;
    use crate::registry::Registry;

    fn spec() -> FragmentSpec {
        FragmentSpec::new("tdrv")
            .set(FragmentSet::new("ifaces", [FieldType::IfName]))
            .set(FragmentSet::new("blocked", [FieldType::Ipv4]))
            .chain(
                FragmentChain::base("filter", ChainHook::Forward, ChainType::Filter, -10).rule(
                    Rule::new(
                        [
                            Match::in_set([Key::IifName], "ifaces"),
                            Match::in_set([Key::IpDaddr], "blocked"),
                        ],
                        Action::Drop,
                    ),
                ),
            )
    }

    #[test]
    fn a_rule_reads_as_nft_writes_it() {
        let mut r = Registry::default();
        let i = r.declare(&spec()).unwrap();
        let t = &r.tables(Owner::Custom(i))[0];
        assert_eq!(t.table.to_string(), "inet cnm-tdrv");
        assert_eq!(t.rules[0].text, "iifname @ifaces ip daddr @blocked drop");
        assert_eq!(t.chains.last().unwrap().name, "allow");
        // the same spec is the same owner; another spec of that owner is refused
        assert_eq!(r.declare(&spec()).unwrap(), i);
        let other = spec().set(FragmentSet::new("more", [FieldType::Port]));
        assert_eq!(
            r.declare(&other).unwrap_err().kind(),
            cnm_types::ErrorKind::Conflict
        );
    }

    #[test]
    fn bad_declarations_name_the_field_and_value() {
        let mut r = Registry::default();
        let cases = [
            (FragmentSpec::new("bridge"), "the built-in bridge fragment"),
            (FragmentSpec::new("Bad"), "must match"),
            (
                spec().set(FragmentSet::new("blocked", [FieldType::Port])),
                "declared twice",
            ),
            (
                spec().chain(FragmentChain::regular("x").rule(Rule::new(
                    [Match::in_set([Key::IpSaddr], "ifaces")],
                    Action::Drop,
                ))),
                "key type",
            ),
            (
                spec()
                    .chain(
                        FragmentChain::regular("x").rule(Rule::new([], Action::Jump("y".into()))),
                    )
                    .chain(
                        FragmentChain::regular("y").rule(Rule::new([], Action::Jump("x".into()))),
                    ),
                "loop",
            ),
            (
                spec().chain(FragmentChain::regular("x").rule(Rule::new(
                    [Match::in_set([Key::IpSaddr, Key::Ip6Daddr], "blocked")],
                    Action::Drop,
                ))),
                "key type",
            ),
            (
                spec().set(FragmentSet::new("r", [FieldType::Ipv4]).interval()),
                "concatenated key",
            ),
            (
                spec()
                    .set(
                        FragmentSet::new("m", [FieldType::Port])
                            .to([FieldType::Ipv4, FieldType::Port]),
                    )
                    .chain(
                        FragmentChain::base("nat", ChainHook::Prerouting, ChainType::Nat, -100)
                            .rule(Rule::new(
                                [Match::is(Key::Family, Value::Family(IpFamily::V4))],
                                Action::Dnat {
                                    keys: vec![Key::ThDport],
                                    map: "m".into(),
                                },
                            )),
                    ),
                "transport protocol",
            ),
            (
                spec().chain(FragmentChain::regular("x").rule(Rule::new([], Action::Masquerade))),
                "postrouting",
            ),
            (
                spec()
                    .chain(FragmentChain::regular("ok").rule(Rule::new([], Action::Allow)))
                    .chain(
                        FragmentChain::base("late", ChainHook::Forward, ChainType::Filter, 0)
                            .rule(Rule::new([], Action::Jump("ok".into()))),
                    ),
                "priority below 0",
            ),
        ];
        for (s, want) in cases {
            let e = r.declare(&s).unwrap_err();
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn elements_are_checked_against_their_set() {
        let def = FragmentSet::new("p", [FieldType::Ipv4, FieldType::Port])
            .interval()
            .def();
        let ip = |s: &str| Value::Ipv4(s.parse().unwrap());
        let ok = SetElement::new([ip("10.0.0.1"), Value::Port(80)])
            .through([ip("10.0.0.9"), Value::Port(90)]);
        assert!(ok.element(&def, "x").is_ok());
        let backwards = SetElement::new([ip("10.0.0.9"), Value::Port(80)])
            .through([ip("10.0.0.1"), Value::Port(90)]);
        assert!(
            backwards
                .element(&def, "x")
                .unwrap_err()
                .to_string()
                .contains("before")
        );
        let wrong = SetElement::new([Value::Port(80), ip("10.0.0.1")]);
        assert!(wrong.element(&def, "x").is_err());
        let mapped = SetElement::new([ip("10.0.0.1"), Value::Port(80)]).to([Value::Port(1)]);
        assert!(mapped.element(&def, "x").is_err());
    }
}
