//! The data model: every owner's set elements, the bridge fragment's networks and published
//! ports, and what one change does to the tables.
//!
//! Chains and rules are constant; everything that varies lives in set and map elements. A
//! network, an endpoint or a fragment's change therefore owns a precise list of elements,
//! derived here, and adding or removing it adds or deletes exactly those. An owner's tables are
//! in the kernel while its sets hold an element; the firewall's own table while any set does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cnm_types::{GatewayMode, IfName, MacAddress, Protocol};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::FirewallError;
use crate::fragment::{ElementChange, FragmentSpec, Held};
use crate::nftnl::Table;
use crate::registry::Registry;
use crate::ruleset::{SetName, SharedSet};

/// Who a set, and the tables it lives in, belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Owner {
    /// The firewall itself (`table inet cnm`: the guards).
    Shared,
    /// The built-in bridge fragment.
    Bridge,
    /// A declared fragment, by declaration order.
    Custom(u16),
}

impl Owner {
    /// The first and last set ids an owner can have (set ids sort by owner).
    fn range(self) -> std::ops::RangeInclusive<SetId> {
        match self {
            Self::Shared => SetId::Shared(SharedSet::FIRST)..=SetId::Shared(SharedSet::LAST),
            Self::Bridge => SetId::Bridge(SetName::FIRST)..=SetId::Bridge(SetName::LAST),
            Self::Custom(i) => SetId::Custom(i, 0)..=SetId::Custom(i, u16::MAX),
        }
    }
}

/// One set of one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SetId {
    Shared(SharedSet),
    Bridge(SetName),
    /// (owner, the set's index in its fragment's declaration)
    Custom(u16, u16),
}

impl SetId {
    pub(crate) fn owner(self) -> Owner {
        match self {
            Self::Shared(_) => Owner::Shared,
            Self::Bridge(_) => Owner::Bridge,
            Self::Custom(o, _) => Owner::Custom(o),
        }
    }
}

impl From<SetName> for SetId {
    fn from(s: SetName) -> Self {
        Self::Bridge(s)
    }
}

impl From<SharedSet> for SetId {
    fn from(s: SharedSet) -> Self {
        Self::Shared(s)
    }
}

/// The firewall's view of one bridge network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRules {
    /// The network id (the key of every later call).
    pub id: String,
    /// The bridge interface.
    pub bridge: IfName,
    /// IPv4 subnets on the bridge.
    pub subnets_v4: Vec<Ipv4Net>,
    /// IPv6 subnets on the bridge.
    pub subnets_v6: Vec<Ipv6Net>,
    /// Inter-container traffic within the bridge is allowed (`true`) or dropped.
    pub icc: bool,
    /// Masquerade the subnets' traffic that leaves through a non-bridge interface, for each
    /// family whose gateway mode is a NAT one (`routed` translates nothing, as in Docker; see
    /// [`masquerades`](Self::masquerades)).
    pub masquerade: bool,
    /// No forwarding off the bridge at all, either direction.
    pub internal: bool,
    /// For an internal network: whether its containers may reach the host itself (its
    /// addresses, the gateway's included). `false` (the default) blocks them; ignored for
    /// networks that are not internal, whose containers reach the host as the outside does.
    pub host_access: bool,
    /// IPv4's gateway mode: NAT, unprotected NAT, routed or isolated access from outside (an
    /// isolated family is internal, as if [`internal`](Self::internal) were set for it alone).
    pub gateway_mode_v4: GatewayMode,
    /// IPv6's gateway mode, independent of IPv4's (Docker's `gateway_mode_ipv6`): every rule
    /// that depends on the mode matches the packet's family, so IPv4 never follows IPv6's mode.
    pub gateway_mode_v6: GatewayMode,
    /// Docker's `trusted_host_interfaces`: interfaces from which packets may reach the
    /// published ports of this network's containers directly, at the container's address (as
    /// `routed` allows from everywhere). Ignored for an internal network.
    #[serde(default)]
    pub trusted_interfaces: Vec<IfName>,
}

/// An endpoint's bridge port and the only addresses frames from it may carry (anti-spoofing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPort {
    /// The endpoint's id (the key of [`crate::Firewall::remove_endpoint`]).
    pub endpoint_id: String,
    /// The network it is on.
    pub network_id: String,
    /// The host end of its veth, a port of the network's bridge.
    pub port: IfName,
    /// The source MAC of its frames (and the sender MAC of its ARP packets).
    pub mac: MacAddress,
    /// Its IPv4 address: the only IPv4 source (and ARP sender address) it may use.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address: with link-local addresses and `::`, the only IPv6 source it may use
    /// (and the only non-link-local target of its neighbour advertisements).
    pub ipv6: Option<Ipv6Addr>,
}

/// The elements that let an endpoint's port send as itself.
pub(crate) fn port_elements(p: &EndpointPort) -> Elements {
    let mut out = Elements::new();
    let port = Field::ifname(&p.port);
    push(&mut out, SetName::Ports, Element::point(vec![port]));
    push(
        &mut out,
        SetName::OwnMac,
        Element::point(vec![port, Field::Mac(p.mac.octets())]),
    );
    if let Some(a) = p.ipv4 {
        push(
            &mut out,
            SetName::OwnV4,
            Element::point(vec![port, Field::V4(a)]),
        );
    }
    if let Some(a) = p.ipv6 {
        push(
            &mut out,
            SetName::OwnV6,
            Element::point(vec![port, Field::V6(a)]),
        );
        push(
            &mut out,
            SetName::NdTarget,
            Element::point(vec![port, Field::Raw128(u128::from(a))]),
        );
    }
    out
}

/// The element that drops forwarded traffic of `family` that is not cnm's.
pub(crate) fn forward_drop_element(v6: bool) -> Elements {
    let mut out = Elements::new();
    let proto = if v6 {
        crate::nftnl::NFPROTO_IPV6
    } else {
        crate::nftnl::NFPROTO_IPV4
    };
    push(
        &mut out,
        SharedSet::ForwardDrop,
        Element::point(vec![Field::NfProto(proto)]),
    );
    out
}

/// One published port (range) of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Transport protocol.
    pub proto: Protocol,
    /// Host address to bind; `None` is every address of the container address's family.
    pub host_ip: Option<IpAddr>,
    /// Host ports, inclusive.
    pub host_ports: (u16, u16),
    /// The container's address.
    pub container_ip: IpAddr,
    /// Container ports, inclusive; the same size as `host_ports`.
    pub container_ports: (u16, u16),
}

/// The ports one endpoint publishes, as one item of
/// [`Firewall::add_port_mappings_batch`](crate::Firewall::add_port_mappings_batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointMappings {
    /// The endpoint's network.
    pub network_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// What it publishes.
    pub mappings: Vec<PortMapping>,
}

impl PortMapping {
    /// Checks ranges and families; `index` names the mapping in the error.
    pub fn validate(&self, index: usize) -> Result<(), FirewallError> {
        let field = |f: &str| format!("port mapping {index} {f}");
        for (name, (lo, hi)) in [
            ("host_ports", self.host_ports),
            ("container_ports", self.container_ports),
        ] {
            if lo == 0 {
                return Err(FirewallError::invalid(
                    field(name),
                    format!("{lo}-{hi}"),
                    "port 0 cannot be published",
                ));
            }
            if hi < lo {
                return Err(FirewallError::invalid(
                    field(name),
                    format!("{lo}-{hi}"),
                    "the range ends before it starts",
                ));
            }
        }
        if self.host_ports.1 - self.host_ports.0 != self.container_ports.1 - self.container_ports.0
        {
            return Err(FirewallError::invalid(
                field("container_ports"),
                format!("{}-{}", self.container_ports.0, self.container_ports.1),
                format!(
                    "the range must be as long as host_ports {}-{}",
                    self.host_ports.0, self.host_ports.1
                ),
            ));
        }
        if let Some(h) = self.host_ip
            && h.is_ipv4() != self.container_ip.is_ipv4()
        {
            return Err(FirewallError::invalid(
                field("host_ip"),
                h,
                format!("its family differs from container_ip {}", self.container_ip),
            ));
        }
        let c = self.container_ip;
        if c.is_unspecified() || c.is_multicast() || c.is_loopback() {
            return Err(FirewallError::invalid(
                field("container_ip"),
                c,
                "not a unicast container address",
            ));
        }
        if let Some(h) = self.host_ip
            && h.is_multicast()
        {
            return Err(FirewallError::invalid(
                field("host_ip"),
                h,
                "a multicast address cannot be published",
            ));
        }
        Ok(())
    }

    /// The host address with `0.0.0.0`/`::` folded into "any address".
    fn host_key(&self) -> Option<IpAddr> {
        self.host_ip.filter(|h| !h.is_unspecified())
    }

    fn is_v4(&self) -> bool {
        self.container_ip.is_ipv4()
    }
}

impl NetworkRules {
    /// The gateway mode of one family (IPv6's when `v6`).
    pub fn gateway_mode(&self, v6: bool) -> GatewayMode {
        if v6 {
            self.gateway_mode_v6
        } else {
            self.gateway_mode_v4
        }
    }

    /// Whether no traffic of the family is forwarded off the bridge: the network is
    /// [`internal`](Self::internal), or the family's gateway mode is `isolated`.
    pub fn is_internal_for(&self, v6: bool) -> bool {
        self.internal || self.gateway_mode(v6) == GatewayMode::Isolated
    }

    /// Whether no traffic at all is forwarded off the bridge: internal for both families.
    pub fn is_internal(&self) -> bool {
        self.is_internal_for(false) && self.is_internal_for(true)
    }

    /// Whether the family's traffic leaving the bridge is masqueraded: asked for, and the
    /// family's mode is a NAT one (`routed` translates nothing, `isolated` forwards nothing).
    pub fn masquerades(&self, v6: bool) -> bool {
        self.masquerade && self.gateway_mode(v6).is_nat() && !self.is_internal_for(v6)
    }

    /// A NAT network on `bridge` with ICC and masquerade on, not internal, IPv4 only: what a
    /// bridge network is by default; other shapes change fields of it.
    pub fn nat(id: impl Into<String>, bridge: IfName, subnets_v4: Vec<Ipv4Net>) -> Self {
        Self {
            id: id.into(),
            bridge,
            subnets_v4,
            subnets_v6: vec![],
            icc: true,
            masquerade: true,
            internal: false,
            host_access: false,
            gateway_mode_v4: GatewayMode::Nat,
            gateway_mode_v6: GatewayMode::Nat,
            trusted_interfaces: vec![],
        }
    }

    /// Checks the fields that are not already typed.
    pub fn validate(&self) -> Result<(), FirewallError> {
        if self.id.is_empty() {
            return Err(FirewallError::invalid("network id", "", "it is empty"));
        }
        Ok(())
    }
}

/// One field of a set element key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Field {
    /// An interface name (16 bytes, NUL padded).
    IfName([u8; 16]),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Proto(u8),
    Port(u16),
    Mac([u8; 6]),
    /// An nfproto value (`ipv4` 2, `ipv6` 10).
    NfProto(u8),
    /// A 128-bit raw payload value (an IPv6 address read with `@th,64,128`).
    Raw128(u128),
}

impl Field {
    pub(crate) fn ifname(name: &IfName) -> Self {
        let mut b = [0u8; 16];
        b[..name.as_str().len()].copy_from_slice(name.as_str().as_bytes());
        Self::IfName(b)
    }

    /// The field's bytes in network order, unpadded.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        match self {
            Self::IfName(b) => b.to_vec(),
            Self::V4(a) => a.octets().to_vec(),
            Self::V6(a) => a.octets().to_vec(),
            Self::Proto(p) | Self::NfProto(p) => vec![*p],
            Self::Port(p) => p.to_be_bytes().to_vec(),
            Self::Mac(m) => m.to_vec(),
            Self::Raw128(v) => v.to_be_bytes().to_vec(),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::IfName(b) => {
                let end = b.iter().position(|&c| c == 0).unwrap_or(16);
                format!("\"{}\"", String::from_utf8_lossy(&b[..end]))
            }
            Self::V4(a) => a.to_string(),
            Self::V6(a) => a.to_string(),
            Self::Proto(6) => "tcp".into(),
            Self::Proto(17) => "udp".into(),
            Self::Proto(132) => "sctp".into(),
            Self::Proto(p) => p.to_string(),
            Self::Port(p) => p.to_string(),
            Self::Mac(m) => m
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            Self::NfProto(2) => "ipv4".into(),
            Self::NfProto(10) => "ipv6".into(),
            Self::NfProto(p) => p.to_string(),
            Self::Raw128(v) => format!("0x{v:032x}"),
        }
    }
}

/// One element: a key (with an inclusive end for interval sets) and, for maps, a value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Element {
    pub key: Vec<Field>,
    /// Same length as `key`; equal to `key` for a single point.
    pub key_end: Option<Vec<Field>>,
    pub data: Vec<Field>,
}

impl Element {
    pub(crate) fn point(key: Vec<Field>) -> Self {
        Self {
            key,
            key_end: None,
            data: Vec::new(),
        }
    }

    /// An interval element of a set: the keys from `key` to `key_end`, both included.
    pub(crate) fn interval(key: Vec<Field>, key_end: Vec<Field>) -> Self {
        Self {
            key,
            key_end: Some(key_end),
            data: Vec::new(),
        }
    }

    /// The element in nft syntax, e.g. `10.0.0.2 . tcp . 8000-8010 : 172.18.0.2`.
    pub(crate) fn text(&self) -> String {
        let mut parts = Vec::with_capacity(self.key.len());
        for (i, k) in self.key.iter().enumerate() {
            let end = self.key_end.as_ref().map(|e| e[i]).unwrap_or(*k);
            parts.push(match (k, end) {
                (a, b) if *a == b => a.text(),
                (Field::V4(a), Field::V4(b)) => match prefix_v4(*a, b) {
                    Some(len) => format!("{a}/{len}"),
                    None => format!("{a}-{b}"),
                },
                (Field::V6(a), Field::V6(b)) => match prefix_v6(*a, b) {
                    Some(len) => format!("{a}/{len}"),
                    None => format!("{a}-{b}"),
                },
                (a, b) => format!("{}-{}", a.text(), b.text()),
            });
        }
        let mut s = parts.join(" . ");
        if !self.data.is_empty() {
            s.push_str(" : ");
            s.push_str(
                &self
                    .data
                    .iter()
                    .map(Field::text)
                    .collect::<Vec<_>>()
                    .join(" . "),
            );
        }
        s
    }
}

fn prefix_v4(a: Ipv4Addr, b: Ipv4Addr) -> Option<u8> {
    let (a, b) = (u32::from(a), u32::from(b));
    let host = a ^ b;
    (host.wrapping_add(1) & host == 0 && a & host == 0).then(|| 32 - host.count_ones() as u8)
}

fn prefix_v6(a: Ipv6Addr, b: Ipv6Addr) -> Option<u8> {
    let (a, b) = (u128::from(a), u128::from(b));
    let host = a ^ b;
    (host.wrapping_add(1) & host == 0 && a & host == 0).then(|| 128 - host.count_ones() as u8)
}

/// Elements grouped by set, ordered so that renders and batches are deterministic.
pub(crate) type Elements = BTreeMap<SetId, BTreeSet<Element>>;

fn push(out: &mut Elements, set: impl Into<SetId>, e: Element) {
    out.entry(set.into()).or_default().insert(e);
}

/// The elements a network owns.
pub(crate) fn network_elements(net: &NetworkRules) -> Elements {
    let mut out = Elements::new();
    let br = Field::ifname(&net.bridge);
    push(&mut out, SetName::Bridges, Element::point(vec![br]));
    // the bridge's forwarded traffic is cnm's: the no-open-router drop lets it through
    push(&mut out, SharedSet::Interfaces, Element::point(vec![br]));
    push(&mut out, SetName::SameBridge, Element::point(vec![br, br]));
    // The sets that depend on the gateway mode are keyed by family (`meta nfproto . ifname`):
    // each family of a network follows its own mode.
    for v6 in [false, true] {
        let fam = Field::NfProto(crate::ruleset::family(v6));
        let internal = net.is_internal_for(v6);
        if internal {
            push(&mut out, SetName::Internal, Element::point(vec![fam, br]));
            if !net.host_access {
                push(&mut out, SetName::NoHost, Element::point(vec![fam, br]));
            }
            continue;
        }
        match net.gateway_mode(v6) {
            GatewayMode::Routed => push(&mut out, SetName::Routed, Element::point(vec![fam, br])),
            GatewayMode::NatUnprotected => push(
                &mut out,
                SetName::Unprotected,
                Element::point(vec![fam, br]),
            ),
            _ => {}
        }
    }
    if !net.icc {
        push(&mut out, SetName::IccOff, Element::point(vec![br]));
    }
    // A family that is internal drops before `inbound` is reached: trusted interfaces only
    // ever open the published ports of a family that forwards.
    if !net.is_internal() {
        for t in &net.trusted_interfaces {
            let t = Field::ifname(t);
            push(&mut out, SetName::Trusted, Element::point(vec![t, br]));
        }
    }
    if net.masquerades(false) {
        for &s in &net.subnets_v4 {
            push(&mut out, SetName::Masq4, masquerade(br, s.into()));
        }
    }
    if net.masquerades(true) {
        for &s in &net.subnets_v6 {
            push(&mut out, SetName::Masq6, masquerade(br, s.into()));
        }
    }
    out
}

/// The `masq4`/`masq6` element of `subnet` on the bridge `br`: its addresses, network to
/// broadcast.
fn masquerade(br: Field, subnet: IpNet) -> Element {
    let s = subnet.trunc();
    Element::interval(vec![br, addr(s.network())], vec![br, addr(s.broadcast())])
}

fn addr(ip: IpAddr) -> Field {
    match ip {
        IpAddr::V4(a) => Field::V4(a),
        IpAddr::V6(a) => Field::V6(a),
    }
}

/// The elements one port mapping owns on `net`.
///
/// A single port is one element of a hash map (and of the hash set `published4/6`); equal host
/// and container ranges are one interval element DNATing to the address only (the kernel keeps
/// the port). A range shifted to other container ports cannot be one element:
/// nftables has no port arithmetic and its NAT offset mode is not exposed to maps, so it becomes
/// one element per port, as Docker does.
pub(crate) fn mapping_elements(net: &NetworkRules, m: &PortMapping) -> Elements {
    let mut out = Elements::new();
    let proto = Field::Proto(m.proto.number());
    let v4 = m.is_v4();
    let cip = addr(m.container_ip);
    let (clo, chi) = m.container_ports;
    push(
        &mut out,
        SetName::published(!v4, clo != chi),
        if clo == chi {
            Element::point(vec![cip, proto, Field::Port(clo)])
        } else {
            Element::interval(
                vec![cip, proto, Field::Port(clo)],
                vec![cip, proto, Field::Port(chi)],
            )
        },
    );
    // DNAT from host addresses only where the mapping's family is NAT'd: a routed family's
    // published ports are reached at the container's address, an internal one's not at all.
    if !net.gateway_mode(!v4).is_nat() || net.is_internal_for(!v4) {
        return out;
    }
    let host = m.host_key().map(addr);
    let prefix = |port: u16| -> Vec<Field> {
        let mut k: Vec<Field> = host.into_iter().collect();
        k.extend([proto, Field::Port(port)]);
        k
    };
    let (hlo, hhi) = m.host_ports;
    if hlo != hhi && m.host_ports == m.container_ports {
        push(
            &mut out,
            SetName::dnat(!v4, host.is_none(), true),
            Element {
                key: prefix(hlo),
                key_end: Some(prefix(hhi)),
                data: vec![cip],
            },
        );
    } else {
        // a single port, or a range shifted to other ports: one element per port
        for (i, hp) in (hlo..=hhi).enumerate() {
            let cp = m.container_ports.0 + i as u16;
            push(
                &mut out,
                SetName::dnat(!v4, host.is_none(), false),
                Element {
                    key: prefix(hp),
                    key_end: None,
                    data: vec![cip, Field::Port(cp)],
                },
            );
        }
    }
    out
}

/// What a host port range is published on: protocol, family (IPv4?), host address (`None`:
/// every address of the family).
type HostKey = (Protocol, bool, Option<IpAddr>);

/// A published mapping and the endpoint that owns it, as the conflict indexes keep it.
#[derive(Debug, Clone)]
struct Owned {
    endpoint: String,
    mapping: PortMapping,
}

/// Everything the firewall has been told: the single source of truth for every transaction.
///
/// Besides the networks and endpoints it keeps what is installed, each element with the
/// number of owners (a network, or one port mapping) that need it, and two indexes of the
/// published ports for conflict checks. So adding or removing one endpoint's mappings costs
/// the same whatever the number of other endpoints: every operation is planned (`plan_*`, pure:
/// the elements to add or delete) and applied (`apply_*`) only once the kernel took the batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Model {
    /// Every owner's tables and sets.
    pub registry: Arc<Registry>,
    /// What each declared fragment holds (its elements and its claims), by declaration order.
    custom: Vec<Held>,
    pub networks: BTreeMap<String, NetworkRules>,
    /// endpoint id → (network id, mappings)
    pub endpoints: BTreeMap<String, (String, Vec<PortMapping>)>,
    /// element → number of owners, per set
    installed: BTreeMap<SetId, BTreeMap<Element, u32>>,
    /// Host port ranges by where they are published, keyed by their first port. Ranges under
    /// one key never overlap (overlaps are refused), so one ordered lookup finds a clash.
    host_ports: BTreeMap<HostKey, BTreeMap<u16, Owned>>,
    /// Container port ranges by protocol and container address.
    /// Container port ranges by protocol and container address, keyed by their first port:
    /// ranges under one key are disjoint or equal (equal ones share an entry), since ranges
    /// that overlap without being equal are refused.
    container_ports: HashMap<(Protocol, IpAddr), BTreeMap<u16, Vec<Owned>>>,
    /// endpoint id → its bridge port (anti-spoofing)
    pub ports: BTreeMap<String, EndpointPort>,
    /// Port name → endpoint id, to refuse a port claimed twice.
    port_names: HashMap<IfName, String>,
    /// Forwarded traffic that is not cnm's is dropped for IPv4 (`[0]`) and IPv6 (`[1]`).
    pub forward_drop: [bool; 2],
}

/// What one transaction does to the tables (see [`Model::plan`]).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub registry: Arc<Registry>,
    /// Owners whose tables are created (replacing any of that name) whole, with these elements.
    pub create: Vec<(Owner, Elements)>,
    /// Tables deleted, whether or not they exist.
    pub delete: Vec<Table>,
    /// Elements deleted from tables that stay.
    pub del: Elements,
    /// Elements added to tables that stay.
    pub add: Elements,
    /// Whether any owner's tables (not only the firewall's own) are wanted (before, after).
    pub owners_live: (bool, bool),
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.delete.is_empty()
            && self.del.is_empty()
            && self.add.is_empty()
    }
}

/// A fragment's change, checked: the bookkeeping and the kernel's element changes.
#[derive(Debug, Clone)]
pub(crate) struct CustomDelta {
    owner: u16,
    /// (set, element, held afterwards)
    ops: Vec<(SetId, Element, bool)>,
    pub del: Elements,
    pub add: Elements,
}

fn ranges_overlap(a: (u16, u16), b: (u16, u16)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Whether `m` (new) clashes with `o` (published): the same host ports, or overlapping but
/// different container ranges of one container address.
fn clashes(m: &PortMapping, o: &PortMapping) -> bool {
    let host_clash = o.proto == m.proto
        && o.is_v4() == m.is_v4()
        && ranges_overlap(o.host_ports, m.host_ports)
        && (o.host_key().is_none() || m.host_key().is_none() || o.host_key() == m.host_key());
    let container_clash = o.proto == m.proto
        && o.container_ip == m.container_ip
        && ranges_overlap(o.container_ports, m.container_ports)
        && o.container_ports != m.container_ports;
    host_clash || container_clash
}

impl Model {
    /// Every element installed.
    #[cfg(test)]
    pub fn elements(&self) -> Elements {
        self.installed
            .iter()
            .map(|(set, elems)| (*set, elems.keys().cloned().collect()))
            .collect()
    }

    /// The elements installed in one owner's sets.
    fn owned(&self, owner: Owner) -> Elements {
        self.installed
            .range(owner.range())
            .map(|(set, elems)| (*set, elems.keys().cloned().collect()))
            .collect()
    }

    /// Installed elements per owner (owners with none left out). As many entries as sets.
    fn counts(&self) -> BTreeMap<Owner, usize> {
        let mut out = BTreeMap::new();
        for (set, elems) in &self.installed {
            *out.entry(set.owner()).or_default() += elems.len();
        }
        out
    }

    /// Whether an owner's tables are wanted, given the element counts: an owner's while its
    /// sets hold an element, the firewall's own while any set does.
    fn live(counts: &BTreeMap<Owner, usize>, owner: Owner) -> bool {
        match owner {
            Owner::Shared => counts.values().any(|n| *n > 0),
            o => counts.get(&o).is_some_and(|n| *n > 0),
        }
    }

    /// Whether any owner's tables (not only the firewall's own) are wanted.
    pub fn owners_live(&self) -> bool {
        self.installed
            .range(Owner::Bridge.range().start()..)
            .any(|(_, e)| !e.is_empty())
    }

    /// The tables the model wants in the kernel now.
    pub fn desired_tables(&self) -> Vec<Table> {
        let counts = self.counts();
        self.registry
            .owners()
            .filter(|o| Self::live(&counts, *o))
            .flat_map(|o| self.registry.tables(o).iter().map(|t| t.table.clone()))
            .collect()
    }

    /// What a change of exactly these elements (`del` only installed ones about to be orphaned,
    /// `add` only ones not installed yet) does to the tables: owners whose first element comes
    /// get their tables created with it; owners whose last element goes lose theirs; the rest
    /// is element changes. Costs as many steps as there are owners and sets, whatever the
    /// number of elements installed.
    pub fn plan(&self, mut del: Elements, mut add: Elements) -> Plan {
        let before = self.counts();
        let mut after = before.clone();
        for (set, e) in &del {
            let n = after.entry(set.owner()).or_default();
            *n = n.saturating_sub(e.len());
        }
        for (set, e) in &add {
            *after.entry(set.owner()).or_default() += e.len();
        }
        let take = |from: &mut Elements, owner: Owner| -> Elements {
            let keys: Vec<SetId> = from.range(owner.range()).map(|(k, _)| *k).collect();
            keys.into_iter()
                .filter_map(|k| from.remove_entry(&k))
                .collect()
        };
        let mut plan = Plan {
            registry: self.registry.clone(),
            create: Vec::new(),
            delete: Vec::new(),
            del: Elements::new(),
            add: Elements::new(),
            owners_live: (self.owners_live(), false),
        };
        for owner in self.registry.owners() {
            let (d, a) = (take(&mut del, owner), take(&mut add, owner));
            match (Self::live(&before, owner), Self::live(&after, owner)) {
                (false, true) => plan.create.push((owner, a)),
                (true, false) => plan
                    .delete
                    .extend(self.registry.tables(owner).iter().map(|t| t.table.clone())),
                (true, true) => {
                    plan.del.extend(d);
                    plan.add.extend(a);
                }
                (false, false) => {}
            }
            if owner != Owner::Shared && Self::live(&after, owner) {
                plan.owners_live.1 = true;
            }
        }
        plan
    }

    /// Every wanted table, whole, with everything installed; and `extra` tables deleted.
    pub fn replace_plan(&self, extra: Vec<Table>) -> Plan {
        let counts = self.counts();
        let live = self.owners_live();
        Plan {
            registry: self.registry.clone(),
            create: self
                .registry
                .owners()
                .filter(|o| Self::live(&counts, *o))
                .map(|o| (o, self.owned(o)))
                .collect(),
            delete: extra,
            del: Elements::new(),
            add: Elements::new(),
            owners_live: (live, live),
        }
    }

    /// Declares a fragment (see [`Registry::declare`]); returns its owner index.
    pub fn declare(&mut self, spec: &FragmentSpec) -> Result<u16, FirewallError> {
        let mut registry = (*self.registry).clone();
        let index = registry.declare(spec)?;
        self.registry = Arc::new(registry);
        if self.custom.len() <= usize::from(index) {
            self.custom.resize_with(usize::from(index) + 1, Held::new);
        }
        Ok(index)
    }

    /// Checks a fragment's change; returns what it does to the kernel's elements and to the
    /// fragment's bookkeeping. Only the owner's own sets (and its own claims) are touched.
    pub fn plan_custom(
        &self,
        owner: u16,
        change: &ElementChange,
    ) -> Result<CustomDelta, FirewallError> {
        let name = self.registry.owner_name(Owner::Custom(owner)).to_string();
        let empty = Held::new();
        let held = self.custom.get(usize::from(owner)).unwrap_or(&empty);
        let resolve = |set: &str, e: &crate::fragment::SetElement| {
            let id =
                self.registry
                    .custom_set(owner, set)
                    .ok_or_else(|| FirewallError::NotFound {
                        what: "set",
                        id: format!("{set} of fragment {name}"),
                    })?;
            let what = format!("element of set {set} of fragment {name}");
            Ok::<_, FirewallError>((id, e.element(self.registry.set(id).1, &what)?))
        };
        let claim = |n: &IfName| {
            (
                SetId::Shared(SharedSet::Interfaces),
                Element::point(vec![Field::ifname(n)]),
            )
        };
        let mut steps: Vec<((SetId, Element), bool)> = Vec::new();
        for (set, e) in &change.delete {
            steps.push((resolve(set, e)?, false));
        }
        steps.extend(change.release.iter().map(|n| (claim(n), false)));
        for (set, e) in &change.add {
            steps.push((resolve(set, e)?, true));
        }
        steps.extend(change.claim.iter().map(|n| (claim(n), true)));
        // the state of each element this change touches, step by step
        let mut state: BTreeMap<(SetId, Element), bool> = BTreeMap::new();
        for ((id, e), add) in steps {
            let key = (id, e);
            let present = state
                .get(&key)
                .copied()
                .unwrap_or_else(|| held.get(&key.0).is_some_and(|s| s.contains(&key.1)));
            let describe = |k: &(SetId, Element)| match k.0 {
                SetId::Shared(_) => format!("interface {}", k.1.text()),
                id => format!("{} in set {}", k.1.text(), self.registry.set(id).1.name),
            };
            match (present, add) {
                (true, true) => {
                    return Err(FirewallError::Conflict {
                        op: "add element".into(),
                        object: describe(&key),
                        reason: format!("fragment {name} holds it already"),
                    });
                }
                (false, false) => {
                    return Err(FirewallError::NotFound {
                        what: "element",
                        id: format!("{} of fragment {name}", describe(&key)),
                    });
                }
                _ => {}
            }
            state.insert(key, add);
        }
        let mut delta = CustomDelta {
            owner,
            ops: Vec::new(),
            del: Elements::new(),
            add: Elements::new(),
        };
        for ((id, e), now) in state {
            let was = held.get(&id).is_some_and(|s| s.contains(&e));
            if was == now {
                continue;
            }
            let count = self
                .installed
                .get(&id)
                .and_then(|m| m.get(&e))
                .copied()
                .unwrap_or(0);
            if now && count == 0 {
                push(&mut delta.add, id, e.clone());
            } else if !now && count == 1 {
                push(&mut delta.del, id, e.clone());
            }
            delta.ops.push((id, e, now));
        }
        Ok(delta)
    }

    /// Records a change planned by [`Model::plan_custom`].
    pub fn apply_custom(&mut self, delta: CustomDelta) {
        let owner = usize::from(delta.owner);
        if self.custom.len() <= owner {
            self.custom.resize_with(owner + 1, Held::new);
        }
        for (id, e, now) in delta.ops {
            let mut one = Elements::new();
            push(&mut one, id, e.clone());
            let held = self.custom[owner].entry(id).or_default();
            if now {
                held.insert(e);
                self.acquire(one);
            } else {
                held.remove(&e);
                self.release(one);
            }
        }
        self.custom[owner].retain(|_, s| !s.is_empty());
    }

    /// Every wanted table as nft text.
    pub fn render(&self) -> String {
        let counts = self.counts();
        let mut out = String::new();
        for owner in self.registry.owners() {
            if Self::live(&counts, owner) {
                let elements = self.owned(owner);
                for t in self.registry.tables(owner) {
                    t.render(&elements, &mut out);
                }
            }
        }
        out
    }

    /// The elements of `owned` that nothing installs yet.
    fn missing(&self, owned: Elements) -> Elements {
        let mut out = Elements::new();
        for (set, elems) in owned {
            let have = self.installed.get(&set);
            let left: BTreeSet<Element> = elems
                .into_iter()
                .filter(|e| !have.is_some_and(|h| h.contains_key(e)))
                .collect();
            if !left.is_empty() {
                out.insert(set, left);
            }
        }
        out
    }

    /// The elements that no owner needs any more once every owner in `owners` is gone.
    fn orphaned(&self, owners: impl IntoIterator<Item = Elements>) -> Elements {
        let mut counts: BTreeMap<SetId, BTreeMap<Element, u32>> = BTreeMap::new();
        for owned in owners {
            for (set, elems) in owned {
                let c = counts.entry(set).or_default();
                for e in elems {
                    *c.entry(e).or_default() += 1;
                }
            }
        }
        let mut out = Elements::new();
        for (set, elems) in counts {
            let have = self.installed.get(&set);
            let gone: BTreeSet<Element> = elems
                .into_iter()
                .filter(|(e, n)| have.and_then(|h| h.get(e)) == Some(n))
                .map(|(e, _)| e)
                .collect();
            if !gone.is_empty() {
                out.insert(set, gone);
            }
        }
        out
    }

    fn acquire(&mut self, owned: Elements) {
        for (set, elems) in owned {
            let have = self.installed.entry(set).or_default();
            for e in elems {
                *have.entry(e).or_default() += 1;
            }
        }
    }

    fn release(&mut self, owned: Elements) {
        for (set, elems) in owned {
            let Some(have) = self.installed.get_mut(&set) else {
                continue;
            };
            for e in elems {
                if let Some(n) = have.get_mut(&e) {
                    *n -= 1;
                    if *n == 0 {
                        have.remove(&e);
                    }
                }
            }
            if have.is_empty() {
                self.installed.remove(&set);
            }
        }
    }

    /// Refuses a network whose id or bridge is already taken.
    pub fn check_network(&self, net: &NetworkRules) -> Result<(), FirewallError> {
        for other in self.networks.values() {
            if other.id == net.id || other.bridge == net.bridge {
                return Err(FirewallError::Conflict {
                    op: "add network".into(),
                    object: format!("{} (bridge {})", net.id, net.bridge),
                    reason: format!(
                        "network {} on bridge {} is already installed",
                        other.id, other.bridge
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks a new network; returns the elements to add.
    pub fn plan_add_network(&self, net: &NetworkRules) -> Result<Elements, FirewallError> {
        net.validate()?;
        self.check_network(net)?;
        Ok(self.missing(network_elements(net)))
    }

    /// Records a network planned by [`Model::plan_add_network`].
    pub fn apply_add_network(&mut self, net: &NetworkRules) {
        self.acquire(network_elements(net));
        self.networks.insert(net.id.clone(), net.clone());
    }

    /// The elements to delete with a network and every port its endpoints publish.
    pub fn plan_remove_network(&self, id: &str) -> Result<Elements, FirewallError> {
        let Some(net) = self.networks.get(id) else {
            return Err(FirewallError::NotFound {
                what: "network",
                id: id.to_string(),
            });
        };
        let mappings = self
            .endpoints
            .values()
            .filter(|(net_id, _)| net_id == id)
            .flat_map(|(_, maps)| maps.iter().map(|m| mapping_elements(net, m)));
        let ports = self
            .ports
            .values()
            .filter(|p| p.network_id == id)
            .map(port_elements);
        Ok(self.orphaned(
            std::iter::once(network_elements(net))
                .chain(mappings)
                .chain(ports),
        ))
    }

    /// Forgets a network and its endpoints' mappings (planned by `plan_remove_network`).
    pub fn apply_remove_network(&mut self, id: &str) {
        let owned: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, (net_id, _))| net_id == id)
            .map(|(ep, _)| ep.clone())
            .collect();
        for ep in owned {
            self.apply_remove_endpoint(&ep);
        }
        let ports: Vec<String> = self
            .ports
            .values()
            .filter(|p| p.network_id == id)
            .map(|p| p.endpoint_id.clone())
            .collect();
        for ep in ports {
            self.apply_remove_port(&ep);
        }
        if let Some(net) = self.networks.remove(id) {
            self.release(network_elements(&net));
        }
    }

    /// Checks new mappings of an endpoint; returns the elements to add (none for no mappings).
    pub fn plan_add_mappings(
        &self,
        network_id: &str,
        endpoint_id: &str,
        mappings: &[PortMapping],
    ) -> Result<Elements, FirewallError> {
        for (i, m) in mappings.iter().enumerate() {
            m.validate(i)?;
        }
        if endpoint_id.is_empty() {
            return Err(FirewallError::invalid("endpoint id", "", "it is empty"));
        }
        let Some(net) = self.networks.get(network_id) else {
            return Err(FirewallError::NotFound {
                what: "network",
                id: network_id.to_string(),
            });
        };
        if let Some((other, _)) = self.endpoints.get(endpoint_id)
            && other != network_id
        {
            return Err(FirewallError::Conflict {
                op: "publish ports".into(),
                object: format!("endpoint {endpoint_id} on network {network_id}"),
                reason: format!("the endpoint already publishes ports on network {other}"),
            });
        }
        self.check_mappings(endpoint_id, mappings)?;
        let mut add = Elements::new();
        for m in mappings {
            merge(&mut add, mapping_elements(net, m));
        }
        Ok(self.missing(add))
    }

    /// Records mappings planned by [`Model::plan_add_mappings`].
    pub fn apply_add_mappings(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        mappings: &[PortMapping],
    ) {
        if mappings.is_empty() {
            return;
        }
        if let Some(net) = self.networks.get(network_id).cloned() {
            for m in mappings {
                self.acquire(mapping_elements(&net, m));
            }
        }
        for m in mappings {
            self.index(endpoint_id, m);
        }
        self.endpoints
            .entry(endpoint_id.to_string())
            .or_insert_with(|| (network_id.to_string(), Vec::new()))
            .1
            .extend_from_slice(mappings);
    }

    /// Whether an endpoint publishes ports.
    pub fn publishes(&self, endpoint_id: &str) -> bool {
        self.endpoints.contains_key(endpoint_id)
    }

    /// The elements to delete with every mapping of an endpoint; `None` if it publishes none.
    pub fn plan_remove_endpoint(&self, endpoint_id: &str) -> Option<Elements> {
        let (net_id, maps) = self.endpoints.get(endpoint_id)?;
        let net = self.networks.get(net_id)?;
        Some(self.orphaned(maps.iter().map(|m| mapping_elements(net, m))))
    }

    /// Forgets an endpoint's mappings (planned by [`Model::plan_remove_endpoint`]).
    pub fn apply_remove_endpoint(&mut self, endpoint_id: &str) {
        let Some((net_id, maps)) = self.endpoints.remove(endpoint_id) else {
            return;
        };
        if let Some(net) = self.networks.get(&net_id).cloned() {
            for m in &maps {
                self.release(mapping_elements(&net, m));
            }
        }
        for m in &maps {
            let key = (m.proto, m.is_v4(), m.host_key());
            if let Some(ranges) = self.host_ports.get_mut(&key) {
                ranges.remove(&m.host_ports.0);
                if ranges.is_empty() {
                    self.host_ports.remove(&key);
                }
            }
            let key = (m.proto, m.container_ip);
            if let Some(ranges) = self.container_ports.get_mut(&key) {
                if let Some(owners) = ranges.get_mut(&m.container_ports.0) {
                    owners.retain(|o| o.endpoint != endpoint_id);
                    if owners.is_empty() {
                        ranges.remove(&m.container_ports.0);
                    }
                }
                if ranges.is_empty() {
                    self.container_ports.remove(&key);
                }
            }
        }
    }

    /// Checks an endpoint's port; returns the elements to add.
    pub fn plan_add_port(&self, p: &EndpointPort) -> Result<Elements, FirewallError> {
        if p.endpoint_id.is_empty() {
            return Err(FirewallError::invalid("endpoint id", "", "it is empty"));
        }
        if !self.networks.contains_key(&p.network_id) {
            return Err(FirewallError::NotFound {
                what: "network",
                id: p.network_id.clone(),
            });
        }
        let m = p.mac.octets();
        if m[0] & 1 == 1 || m == [0; 6] {
            return Err(FirewallError::invalid(
                "endpoint mac",
                p.mac,
                "not a unicast address",
            ));
        }
        if self.ports.contains_key(&p.endpoint_id) {
            return Err(FirewallError::Conflict {
                op: "guard port".into(),
                object: format!("endpoint {}", p.endpoint_id),
                reason: "the endpoint already has a guarded port".into(),
            });
        }
        if let Some(other) = self.port_names.get(&p.port) {
            return Err(FirewallError::Conflict {
                op: "guard port".into(),
                object: format!("{} of endpoint {}", p.port, p.endpoint_id),
                reason: format!("the port belongs to endpoint {other}"),
            });
        }
        Ok(self.missing(port_elements(p)))
    }

    /// Records a port planned by [`Model::plan_add_port`].
    pub fn apply_add_port(&mut self, p: &EndpointPort) {
        self.acquire(port_elements(p));
        self.port_names
            .insert(p.port.clone(), p.endpoint_id.clone());
        self.ports.insert(p.endpoint_id.clone(), p.clone());
    }

    /// The elements to delete with an endpoint: its port and its published ports. `None`
    /// when the firewall knows neither.
    pub fn plan_remove_endpoint_all(&self, endpoint_id: &str) -> Option<Elements> {
        let port = self.ports.get(endpoint_id).map(port_elements);
        let maps = self.endpoints.get(endpoint_id).and_then(|(net_id, maps)| {
            let net = self.networks.get(net_id)?;
            Some(
                maps.iter()
                    .map(|m| mapping_elements(net, m))
                    .collect::<Vec<_>>(),
            )
        });
        if port.is_none() && maps.is_none() {
            return None;
        }
        Some(self.orphaned(port.into_iter().chain(maps.into_iter().flatten())))
    }

    /// Forgets an endpoint's port.
    pub fn apply_remove_port(&mut self, endpoint_id: &str) {
        if let Some(p) = self.ports.remove(endpoint_id) {
            self.port_names.remove(&p.port);
            self.release(port_elements(&p));
        }
    }

    /// The change that turns the drop of foreign forwarded traffic of a family on or off:
    /// (elements to add, elements to delete).
    pub fn plan_forward_drop(&self, v6: bool, on: bool) -> (Elements, Elements) {
        let was = self.forward_drop[usize::from(v6)];
        match (was, on) {
            (false, true) => (forward_drop_element(v6), Elements::new()),
            (true, false) => (Elements::new(), forward_drop_element(v6)),
            _ => (Elements::new(), Elements::new()),
        }
    }

    /// Records the change planned by [`Model::plan_forward_drop`].
    pub fn apply_forward_drop(&mut self, v6: bool, on: bool) {
        let slot = &mut self.forward_drop[usize::from(v6)];
        if *slot == on {
            return;
        }
        *slot = on;
        if on {
            self.acquire(forward_drop_element(v6));
        } else {
            self.release(forward_drop_element(v6));
        }
    }

    /// The published mappings `m` could clash with: those on the same host ports (same or
    /// wildcard address) and those of the same container address. Logarithmic in the number
    /// of published mappings.
    fn neighbours<'a>(&'a self, m: &PortMapping) -> Vec<&'a Owned> {
        let mut out = Vec::new();
        let (proto, v4) = (m.proto, m.is_v4());
        let mut look = |ranges: &'a BTreeMap<u16, Owned>| {
            if let Some((_, o)) = ranges.range(..=m.host_ports.1).next_back()
                && o.mapping.host_ports.1 >= m.host_ports.0
            {
                out.push(o);
            }
        };
        match m.host_key() {
            Some(h) => {
                for key in [(proto, v4, None), (proto, v4, Some(h))] {
                    if let Some(ranges) = self.host_ports.get(&key) {
                        look(ranges);
                    }
                }
            }
            // a wildcard clashes with every address of the family: one lookup per address
            None => {
                for (_, ranges) in self
                    .host_ports
                    .range((proto, v4, None)..)
                    .take_while(|((p, f, _), _)| *p == proto && *f == v4)
                {
                    look(ranges);
                }
            }
        }
        if let Some(ranges) = self.container_ports.get(&(m.proto, m.container_ip))
            && let Some((_, owners)) = ranges.range(..=m.container_ports.1).next_back()
            && let Some(o) = owners.first()
            && o.mapping.container_ports.1 >= m.container_ports.0
        {
            // disjoint ranges: the last one starting before our end is the only candidate
            out.push(o);
        }
        out
    }

    /// Adds a mapping to the conflict indexes.
    fn index(&mut self, endpoint_id: &str, m: &PortMapping) {
        let owned = Owned {
            endpoint: endpoint_id.to_string(),
            mapping: *m,
        };
        self.host_ports
            .entry((m.proto, m.is_v4(), m.host_key()))
            .or_default()
            .insert(m.host_ports.0, owned.clone());
        self.container_ports
            .entry((m.proto, m.container_ip))
            .or_default()
            .entry(m.container_ports.0)
            .or_default()
            .push(owned);
    }

    /// Refuses host ports already published (same protocol and family, overlapping ports, same
    /// or wildcard address) and container port ranges that overlap without being equal.
    pub fn check_mappings(
        &self,
        endpoint_id: &str,
        new: &[PortMapping],
    ) -> Result<(), FirewallError> {
        // the mappings of this call, indexed as they are checked: each check is logarithmic
        let mut earlier = Model::default();
        for (i, m) in new.iter().enumerate() {
            let candidates = self
                .neighbours(m)
                .into_iter()
                .chain(earlier.neighbours(m))
                .map(|o| (o.endpoint.clone(), o.mapping))
                .collect::<Vec<_>>();
            earlier.index(endpoint_id, m);
            for (owner, o) in candidates {
                let o = &o;
                if clashes(m, o) {
                    return Err(FirewallError::Conflict {
                        op: "publish".into(),
                        object: format!(
                            "port mapping {i} {}/{}-{} of endpoint {endpoint_id}",
                            m.proto, m.host_ports.0, m.host_ports.1
                        ),
                        reason: format!(
                            "overlaps {}/{}-{} -> {} {}-{} of endpoint {owner}",
                            o.proto,
                            o.host_ports.0,
                            o.host_ports.1,
                            o.container_ip,
                            o.container_ports.0,
                            o.container_ports.1
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn merge(into: &mut Elements, from: Elements) {
    for (set, elems) in from {
        into.entry(set).or_default().extend(elems);
    }
}

/// A desired ruleset as a plain value, without a kernel: what [`crate::Firewall`] keeps inside
/// (the bridge fragment's networks and ports, the guards, declared fragments). Useful to review
/// or test the rules cnm would install (`render`), e.g. as golden files.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    model: Model,
}

impl Ruleset {
    /// An empty ruleset: no tables at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a network, with the same checks as [`crate::Firewall::add_network`].
    pub fn add_network(&mut self, net: &NetworkRules) -> Result<(), FirewallError> {
        self.model.plan_add_network(net)?;
        self.model.apply_add_network(net);
        Ok(())
    }

    /// Publishes ports, with the same checks as [`crate::Firewall::add_port_mappings`].
    pub fn add_port_mappings(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        mappings: &[PortMapping],
    ) -> Result<(), FirewallError> {
        self.model
            .plan_add_mappings(network_id, endpoint_id, mappings)?;
        self.model
            .apply_add_mappings(network_id, endpoint_id, mappings);
        Ok(())
    }

    /// Guards an endpoint's port, with the same checks as [`crate::Firewall::add_endpoint`].
    pub fn add_endpoint(&mut self, port: &EndpointPort) -> Result<(), FirewallError> {
        self.model.plan_add_port(port)?;
        self.model.apply_add_port(port);
        Ok(())
    }

    /// Drops forwarded traffic of a family that is not cnm's, as
    /// [`crate::Firewall::set_forward_drop`].
    pub fn set_forward_drop(&mut self, family: cnm_sandbox::IpFamily, on: bool) {
        self.model
            .apply_forward_drop(family == cnm_sandbox::IpFamily::V6, on);
    }

    /// Declares a fragment, as [`crate::Firewall::fragment`].
    pub fn fragment(&mut self, spec: &FragmentSpec) -> Result<(), FirewallError> {
        self.model.declare(spec).map(drop)
    }

    /// Changes a declared fragment's elements, as [`crate::Fragment::apply`].
    pub fn apply(&mut self, owner: &str, change: &ElementChange) -> Result<(), FirewallError> {
        let index =
            self.model
                .registry
                .custom_index(owner)
                .ok_or_else(|| FirewallError::NotFound {
                    what: "fragment",
                    id: owner.to_string(),
                })?;
        let delta = self.model.plan_custom(index, change)?;
        self.model.apply_custom(delta);
        Ok(())
    }

    /// Every table the kernel would have, as nft text (nothing when nothing is installed).
    pub fn render(&self) -> String {
        self.model.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: (u16, u16), cont: (u16, u16)) -> PortMapping {
        PortMapping {
            proto: Protocol::Tcp,
            host_ip: None,
            host_ports: host,
            container_ip: "172.18.0.2".parse().unwrap(),
            container_ports: cont,
        }
    }

    #[test]
    fn validation_names_field_and_value() {
        let e = m((10, 5), (10, 5)).validate(3).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "invalid port mapping 3 host_ports \"10-5\": the range ends before it starts"
        );
        assert!(m((1, 5), (1, 6)).validate(0).is_err());
        assert!(m((0, 0), (1, 1)).validate(0).is_err());
        let mut fam = m((80, 80), (80, 80));
        fam.host_ip = Some("::1".parse().unwrap());
        assert!(fam.validate(0).unwrap_err().to_string().contains("host_ip"));
        assert!(m((8000, 8010), (9000, 9010)).validate(0).is_ok());
    }

    #[test]
    fn element_text_uses_prefixes_and_ranges() {
        let e = Element {
            key: vec![Field::V4("10.0.0.0".parse().unwrap()), Field::Port(1)],
            key_end: Some(vec![
                Field::V4("10.0.255.255".parse().unwrap()),
                Field::Port(9),
            ]),
            data: vec![Field::V4("1.2.3.4".parse().unwrap())],
        };
        assert_eq!(e.text(), "10.0.0.0/16 . 1-9 : 1.2.3.4");
        assert_eq!(
            prefix_v4("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()),
            None
        );
    }

    #[test]
    fn shifted_ranges_expand_equal_ranges_do_not() {
        let net = NetworkRules::nat("n", "br-n".parse().unwrap(), vec![]);
        let eq = mapping_elements(&net, &m((8000, 8099), (8000, 8099)));
        assert_eq!(eq[&SetName::Dnat4AnyRange.into()].len(), 1);
        let shifted = mapping_elements(&net, &m((8000, 8009), (9000, 9009)));
        assert_eq!(shifted[&SetName::Dnat4Any.into()].len(), 10);
    }

    #[test]
    fn shared_elements_are_counted_and_deltas_hold_only_changes() {
        let net = NetworkRules::nat(
            "n",
            "br-n".parse().unwrap(),
            vec!["172.18.0.0/16".parse().unwrap()],
        );
        let mut model = Model::default();
        let add = model.plan_add_network(&net).unwrap();
        assert_eq!(add, network_elements(&net));
        model.apply_add_network(&net);
        // two endpoints' host ports lead to the same container port: one published4 element
        let a = [m((8080, 8080), (80, 80))];
        let b = [m((8081, 8081), (80, 80))];
        let add = model.plan_add_mappings("n", "a", &a).unwrap();
        assert_eq!(add[&SetName::Published4.into()].len(), 1);
        assert_eq!(add[&SetName::Dnat4Any.into()].len(), 1);
        assert!(
            !add.contains_key(&SetName::Dnat4AnyRange.into()),
            "single ports are hashed"
        );
        model.apply_add_mappings("n", "a", &a);
        let add = model.plan_add_mappings("n", "b", &b).unwrap();
        assert!(
            !add.contains_key(&SetName::Published4.into()),
            "already installed"
        );
        assert_eq!(add[&SetName::Dnat4Any.into()].len(), 1);
        model.apply_add_mappings("n", "b", &b);
        // removing a keeps the shared element for b
        let del = model.plan_remove_endpoint("a").unwrap();
        assert!(!del.contains_key(&SetName::Published4.into()));
        assert_eq!(del[&SetName::Dnat4Any.into()].len(), 1);
        model.apply_remove_endpoint("a");
        // a's host port is free again, b's is not
        model
            .check_mappings("c", &[m((8080, 8080), (80, 80))])
            .unwrap();
        assert!(
            model
                .check_mappings("c", &[m((8081, 8081), (80, 80))])
                .is_err()
        );
        // the network takes b's elements with it, and the model is empty again
        let del = model.plan_remove_network("n").unwrap();
        assert_eq!(del[&SetName::Published4.into()].len(), 1);
        model.apply_remove_network("n");
        assert!(model.elements().is_empty());
        assert!(model.endpoints.is_empty());
        model
            .check_mappings("c", &[m((8081, 8081), (80, 80))])
            .unwrap();
    }

    #[test]
    fn each_family_follows_its_own_gateway_mode() {
        let br: IfName = "br-n".parse().unwrap();
        let net = NetworkRules {
            subnets_v6: vec!["fd00:1::/64".parse().unwrap()],
            gateway_mode_v6: GatewayMode::Routed,
            ..NetworkRules::nat("n", br.clone(), vec!["172.18.0.0/16".parse().unwrap()])
        };
        let el = network_elements(&net);
        let only = |el: &Elements, set: SetName, v6: bool| {
            let fam = Field::NfProto(crate::ruleset::family(v6));
            assert_eq!(
                el[&set.into()],
                [Element::point(vec![fam, Field::ifname(&br)])].into(),
                "{set:?}"
            );
        };
        only(&el, SetName::Routed, true);
        assert!(!el.contains_key(&SetName::Unprotected.into()));
        assert!(!el.contains_key(&SetName::Internal.into()));
        assert!(el.contains_key(&SetName::Masq4.into()), "IPv4 is NAT'd");
        assert!(!el.contains_key(&SetName::Masq6.into()), "IPv6 is routed");
        // a published port: DNAT for IPv4 only, IPv6 reached at the container's address
        let mut v6 = m((8080, 8080), (80, 80));
        v6.container_ip = "fd00:1::2".parse().unwrap();
        let e6 = mapping_elements(&net, &v6);
        assert!(e6.contains_key(&SetName::Published6.into()));
        assert!(!e6.contains_key(&SetName::Dnat6Any.into()));
        let e4 = mapping_elements(&net, &m((8080, 8080), (80, 80)));
        assert!(e4.contains_key(&SetName::Dnat4Any.into()));
        // IPv4 isolated beside IPv6 NAT: IPv4 alone is internal, kept off the host
        let net = NetworkRules {
            gateway_mode_v4: GatewayMode::Isolated,
            gateway_mode_v6: GatewayMode::Nat,
            ..net
        };
        assert!(net.is_internal_for(false) && !net.is_internal_for(true));
        assert!(!net.is_internal());
        let el = network_elements(&net);
        only(&el, SetName::Internal, false);
        only(&el, SetName::NoHost, false);
        assert!(!el.contains_key(&SetName::Masq4.into()));
        assert!(el.contains_key(&SetName::Masq6.into()));
        assert!(
            !mapping_elements(&net, &m((8080, 8080), (80, 80)))
                .contains_key(&SetName::Dnat4Any.into())
        );
        assert!(mapping_elements(&net, &v6).contains_key(&SetName::Dnat6Any.into()));
    }

    #[test]
    fn wildcard_and_specific_host_addresses_clash() {
        let mut model = Model::default();
        let mut specific = m((9000, 9010), (9000, 9010));
        specific.host_ip = Some("10.0.0.1".parse().unwrap());
        model.apply_add_mappings("n", "a", &[specific]);
        let mut other_addr = specific;
        other_addr.host_ip = Some("10.0.0.2".parse().unwrap());
        other_addr.container_ip = "172.18.0.3".parse().unwrap();
        model.check_mappings("b", &[other_addr]).unwrap();
        let mut wildcard = m((9010, 9020), (9010, 9020));
        wildcard.container_ip = "172.18.0.4".parse().unwrap();
        assert!(model.check_mappings("b", &[wildcard]).is_err());
        // and within one call
        let e = model
            .check_mappings("c", &[m((1, 1), (1, 1)), m((1, 1), (2, 2))])
            .unwrap_err();
        assert!(e.to_string().contains("of endpoint c"), "{e}");
    }

    #[test]
    fn overlapping_host_ports_conflict() {
        let mut model = Model::default();
        model.apply_add_mappings("n", "a", &[m((8000, 8010), (8000, 8010))]);
        let mut other = m((8010, 8010), (80, 80));
        other.container_ip = "172.18.0.3".parse().unwrap();
        let e = model.check_mappings("b", &[other]).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::Conflict);
        other.host_ports = (8011, 8011);
        model.check_mappings("b", &[other]).unwrap();
        other.proto = Protocol::Udp;
        other.host_ports = (8005, 8005);
        model.check_mappings("b", &[other]).unwrap();
    }
}
