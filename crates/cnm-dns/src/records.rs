//! The record tables: networks, the endpoints joined to them, and which sandbox sits on which
//! network. Pure data, no I/O; the [`crate::Resolver`] keeps one behind a lock.
//!
//! Every query and every update is a handful of hash lookups: a name is looked up per network
//! the asking sandbox is on (a sandbox has a few), never by scanning endpoints. Endpoints that
//! share a name (an alias) sit in an ordered map under it, so adding or removing one is
//! O(log m) in the m endpoints sharing that name.

use cnm_types::InvalidTo;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::rr::Name;
use ipnet::IpNet;

use crate::DnsError;
use crate::name::{fqdn, key_of};

/// What the resolver needs to know about a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkDns {
    /// The network's name, as in `name.network` (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Its subnets: a PTR query for an address inside them is answered here, never forwarded.
    pub subnets: Vec<IpNet>,
    /// An internal network gives its sandboxes no way out, so the resolver forwards nothing for
    /// a sandbox that is only on internal networks (CVE-2024-29018).
    pub internal: bool,
    /// Upstream servers for this network's sandboxes, instead of the host's resolv.conf.
    pub servers: Vec<SocketAddr>,
}

impl NetworkDns {
    /// A network called `name`, no subnets, not internal, forwarding to the host's servers.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds a subnet.
    pub fn subnet(mut self, subnet: IpNet) -> Self {
        self.subnets.push(subnet);
        self
    }

    /// Marks the network internal (or not).
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }

    /// Adds an upstream server for this network's sandboxes.
    pub fn server(mut self, server: SocketAddr) -> Self {
        self.servers.push(server);
        self
    }
}

/// An endpoint joined to a network, as the resolver serves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointDns {
    /// The endpoint's id (unique within its network).
    pub id: String,
    /// The sandbox it is joined to: that sandbox may now resolve the network's names.
    pub sandbox: String,
    /// Its name (the container's name); PTR answers `name.network.`.
    pub name: String,
    /// More names for the same addresses (network-scoped aliases, the short container id).
    pub aliases: Vec<String>,
    /// Its addresses on the network.
    pub addresses: Vec<IpAddr>,
}

impl EndpointDns {
    /// An endpoint `id` named `name`, joined to `sandbox`, with no addresses yet.
    pub fn new(id: impl Into<String>, sandbox: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            sandbox: sandbox.into(),
            name: name.into(),
            ..Self::default()
        }
    }

    /// Adds an alias.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// Adds an address.
    pub fn address(mut self, address: IpAddr) -> Self {
        self.addresses.push(address);
        self
    }
}

/// Per-sandbox resolver settings; see [`crate::sandbox_resolv_conf`], which derives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxDns {
    /// Upstream servers given for this sandbox (`--dns`), used instead of the network's or the
    /// host's. A loopback server here is the sandbox's own loopback, queried from inside it, as
    /// Docker does.
    pub servers: Vec<SocketAddr>,
    /// Whether the sandbox's resolv.conf sets `ndots` itself (from the host or an override).
    /// Then a single-label A/AAAA name that is not ours is answered empty instead of being
    /// forwarded: the client goes on with its search domains (Docker's rule).
    pub ndots_set: bool,
}

/// Which address families a query wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) v4: bool,
    pub(crate) v6: bool,
}

/// The outcome of a name lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Every address of the wanted families, rotated.
    Addrs(Vec<IpAddr>),
    /// The name is ours but has no address of the wanted families.
    NoData,
    /// Not one of ours.
    Unknown,
}

/// The outcome of a lookup on the host listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostFound {
    Found(Found),
    /// A name in a network or in the cnm domain that does not exist.
    NxDomain,
    /// Not a name the host listener serves.
    OutOfZone,
}

/// The outcome of a reverse lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ptr {
    Name(Name),
    /// An address inside one of our subnets without an endpoint the asker may see.
    NxDomain,
    /// Not one of our addresses.
    NotOurs,
}

/// Where a sandbox's forwarded queries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Forward nothing: the sandbox is on no network, or only on internal ones.
    Refuse,
    /// The sandbox's own servers (loopback ones are queried from inside the sandbox).
    Sandbox(Vec<SocketAddr>),
    /// The servers of its (non-internal) networks.
    Networks(Vec<SocketAddr>),
    /// The host's resolv.conf.
    Host,
}

#[derive(Debug)]
struct Net {
    name: String,
    subnets: Vec<IpNet>,
    internal: bool,
    servers: Vec<SocketAddr>,
    endpoints: HashMap<Arc<str>, Arc<Ep>>,
    names: HashMap<String, NameSet>,
    ptr: HashMap<IpAddr, Arc<Ep>>,
}

#[derive(Debug)]
struct Ep {
    id: Arc<str>,
    sandbox: Arc<str>,
    name: String,
    /// The name and the aliases, each once.
    keys: Vec<String>,
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

/// The endpoints answering to one name in one network.
#[derive(Debug, Default)]
struct NameSet {
    endpoints: BTreeMap<Arc<str>, Arc<Ep>>,
    /// Bumped per answer: where the rotated answer starts.
    rotor: AtomicUsize,
}

impl NameSet {
    fn collect(&self, want: Want) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for ep in self.endpoints.values() {
            if want.v4 {
                out.extend(ep.v4.iter().copied().map(IpAddr::V4));
            }
            if want.v6 {
                out.extend(ep.v6.iter().copied().map(IpAddr::V6));
            }
        }
        if out.len() > 1 {
            let start = self.rotor.fetch_add(1, Ordering::Relaxed) % out.len();
            out.rotate_left(start);
        }
        out
    }
}

#[derive(Debug, Default)]
pub(crate) struct Sbx {
    /// (network, endpoint) in join order.
    endpoints: Vec<(Arc<str>, Arc<str>)>,
    /// The networks of those endpoints, each once, in join order.
    nets: Vec<Arc<str>>,
    pub(crate) dns: SandboxDns,
}

/// All networks, endpoints and sandboxes the resolver knows.
#[derive(Debug, Default)]
pub(crate) struct Records {
    networks: HashMap<Arc<str>, Net>,
    /// Network name key → id, for `name.network` on the host listener.
    by_name: HashMap<String, Arc<str>>,
    sandboxes: HashMap<Arc<str>, Sbx>,
}

fn check_id(field: &'static str, id: &str) -> Result<(), DnsError> {
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_control()) {
        return Err(DnsError::invalid(
            field,
            id,
            "must be 1 to 255 characters without control characters",
        ));
    }
    Ok(())
}

impl Records {
    /// Registers a network or updates one (its endpoints stay).
    pub(crate) fn upsert_network(&mut self, id: &str, spec: &NetworkDns) -> Result<(), DnsError> {
        check_id("network id", id)?;
        let name = key_of("network name", &spec.name)?;
        if let Some(other) = self.by_name.get(&name)
            && **other != *id
        {
            return Err(DnsError::invalid(
                "network name",
                &spec.name,
                format!("network {other} already has that name"),
            ));
        }
        let existing = self.networks.get_key_value(id).map(|(k, _)| k.clone());
        match existing {
            Some(key) => {
                let net = self.networks.get_mut(id).expect("just found");
                if net.name != name {
                    self.by_name.remove(&net.name);
                    self.by_name.insert(name.clone(), key);
                    net.name = name;
                }
                net.subnets = spec.subnets.clone();
                net.internal = spec.internal;
                net.servers = spec.servers.clone();
            }
            None => {
                let id: Arc<str> = Arc::from(id);
                self.by_name.insert(name.clone(), id.clone());
                self.networks.insert(
                    id,
                    Net {
                        name,
                        subnets: spec.subnets.clone(),
                        internal: spec.internal,
                        servers: spec.servers.clone(),
                        endpoints: HashMap::new(),
                        names: HashMap::new(),
                        ptr: HashMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Forgets a network and every endpoint on it; false if it was unknown.
    pub(crate) fn remove_network(&mut self, id: &str) -> bool {
        let Some(net) = self.networks.get(id) else {
            return false;
        };
        let eps: Vec<Arc<str>> = net.endpoints.keys().cloned().collect();
        for ep in eps {
            self.remove_endpoint(id, &ep);
        }
        if let Some(net) = self.networks.remove(id) {
            self.by_name.remove(&net.name);
        }
        true
    }

    /// Adds a joined endpoint; its names answer from now on.
    pub(crate) fn add_endpoint(
        &mut self,
        network: &str,
        spec: &EndpointDns,
    ) -> Result<(), DnsError> {
        check_id("endpoint id", &spec.id)?;
        check_id("sandbox id", &spec.sandbox)?;
        let name = key_of("endpoint name", &spec.name)?;
        let mut keys = vec![name.clone()];
        for alias in &spec.aliases {
            let k = key_of("alias", alias)?;
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let net = self
            .networks
            .get_mut(network)
            .ok_or_else(|| DnsError::NetworkNotFound(network.to_owned()))?;
        if net.endpoints.contains_key(spec.id.as_str()) {
            return Err(DnsError::EndpointExists {
                network: network.to_owned(),
                endpoint: spec.id.clone(),
            });
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for addr in &spec.addresses {
            match addr {
                IpAddr::V4(a) if !v4.contains(a) => v4.push(*a),
                IpAddr::V6(a) if !v6.contains(a) => v6.push(*a),
                _ => {}
            }
        }
        let ep = Arc::new(Ep {
            id: Arc::from(spec.id.as_str()),
            sandbox: Arc::from(spec.sandbox.as_str()),
            name,
            keys,
            v4,
            v6,
        });
        for key in &ep.keys {
            net.names
                .entry(key.clone())
                .or_default()
                .endpoints
                .insert(ep.id.clone(), ep.clone());
        }
        for addr in &spec.addresses {
            net.ptr.insert(*addr, ep.clone());
        }
        net.endpoints.insert(ep.id.clone(), ep.clone());
        let net_id = net_key(&self.networks, network);
        let sbx = self.sandboxes.entry(ep.sandbox.clone()).or_default();
        sbx.endpoints.push((net_id.clone(), ep.id.clone()));
        if !sbx.nets.contains(&net_id) {
            sbx.nets.push(net_id);
        }
        Ok(())
    }

    /// Removes an endpoint (on leave); false if it was not there.
    pub(crate) fn remove_endpoint(&mut self, network: &str, endpoint: &str) -> bool {
        let Some(net) = self.networks.get_mut(network) else {
            return false;
        };
        let Some(ep) = net.endpoints.remove(endpoint) else {
            return false;
        };
        for key in &ep.keys {
            if let Some(set) = net.names.get_mut(key) {
                set.endpoints.remove(&ep.id);
                if set.endpoints.is_empty() {
                    net.names.remove(key);
                }
            }
        }
        for addr in ep
            .v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(ep.v6.iter().map(|a| IpAddr::V6(*a)))
        {
            if net.ptr.get(&addr).is_some_and(|owner| owner.id == ep.id) {
                net.ptr.remove(&addr);
            }
        }
        if let Some(sbx) = self.sandboxes.get_mut(&ep.sandbox) {
            sbx.endpoints
                .retain(|(n, e)| !(**n == *network && *e == ep.id));
            if !sbx.endpoints.iter().any(|(n, _)| **n == *network) {
                sbx.nets.retain(|n| **n != *network);
            }
            if sbx.endpoints.is_empty() && sbx.dns == SandboxDns::default() {
                self.sandboxes.remove(&ep.sandbox);
            }
        }
        true
    }

    /// Sets a sandbox's resolver settings.
    pub(crate) fn set_sandbox_dns(&mut self, sandbox: &str, dns: SandboxDns) {
        self.sandboxes.entry(Arc::from(sandbox)).or_default().dns = dns;
    }

    /// Forgets a sandbox's settings (its endpoints stay until they leave).
    pub(crate) fn clear_sandbox_dns(&mut self, sandbox: &str) {
        if let Some(sbx) = self.sandboxes.get_mut(sandbox) {
            sbx.dns = SandboxDns::default();
            if sbx.endpoints.is_empty() {
                self.sandboxes.remove(sandbox);
            }
        }
    }

    pub(crate) fn sandbox(&self, id: &str) -> Option<&Sbx> {
        self.sandboxes.get(id)
    }

    fn nets_of<'a>(&'a self, sbx: &'a Sbx) -> impl Iterator<Item = &'a Net> + 'a {
        sbx.nets.iter().filter_map(|id| self.networks.get(id))
    }

    /// A name as seen from a sandbox: only its networks, the first network (in join order)
    /// that has an address of the wanted family answers; then `name.network`.
    pub(crate) fn sandbox_lookup(&self, sandbox: &str, key: &str, want: Want) -> Found {
        let Some(sbx) = self.sandboxes.get(sandbox) else {
            return Found::Unknown;
        };
        let mut known = false;
        for net in self.nets_of(sbx) {
            if let Some(set) = net.names.get(key) {
                let addrs = set.collect(want);
                if !addrs.is_empty() {
                    return Found::Addrs(addrs);
                }
                known = true;
            }
        }
        if !known {
            for net in self.nets_of(sbx) {
                let Some(prefix) = key
                    .strip_suffix(net.name.as_str())
                    .and_then(|p| p.strip_suffix('.'))
                else {
                    continue;
                };
                if let Some(set) = net.names.get(prefix) {
                    let addrs = set.collect(want);
                    if !addrs.is_empty() {
                        return Found::Addrs(addrs);
                    }
                    known = true;
                }
            }
        }
        if known { Found::NoData } else { Found::Unknown }
    }

    /// A name as seen from the host: `name.network` or `name.network.<domain>`, any network.
    pub(crate) fn host_lookup(&self, key: &str, domain: Option<&str>, want: Want) -> HostFound {
        let (key, in_zone) = match domain {
            Some(d) if key == d => return HostFound::Found(Found::NoData),
            Some(d) => match key.strip_suffix(d).and_then(|k| k.strip_suffix('.')) {
                Some(k) => (k, true),
                None => (key, false),
            },
            None => (key, false),
        };
        let mut network_matched = false;
        // A network name may hold dots: try every split of `name.network`.
        for (i, _) in key.match_indices('.') {
            let (name, network) = (&key[..i], &key[i + 1..]);
            let Some(net) = self
                .by_name
                .get(network)
                .and_then(|id| self.networks.get(id))
            else {
                continue;
            };
            network_matched = true;
            if let Some(set) = net.names.get(name) {
                let addrs = set.collect(want);
                return HostFound::Found(if addrs.is_empty() {
                    Found::NoData
                } else {
                    Found::Addrs(addrs)
                });
            }
        }
        if network_matched || in_zone {
            HostFound::NxDomain
        } else {
            HostFound::OutOfZone
        }
    }

    /// A reverse lookup from a sandbox: names only from its networks; any address inside one
    /// of our subnets is ours to answer (NXDOMAIN), never forwarded.
    pub(crate) fn sandbox_ptr(&self, sandbox: &str, ip: IpAddr) -> Ptr {
        if let Some(sbx) = self.sandboxes.get(sandbox) {
            for net in self.nets_of(sbx) {
                if let Some(ep) = net.ptr.get(&ip) {
                    return Ptr::Name(ptr_name(ep, net));
                }
            }
        }
        self.ours_or_not(ip)
    }

    /// A reverse lookup from the host: any network.
    pub(crate) fn host_ptr(&self, ip: IpAddr) -> Ptr {
        // One hash lookup per network: networks are few, endpoints are many.
        for net in self.networks.values() {
            if let Some(ep) = net.ptr.get(&ip) {
                return Ptr::Name(ptr_name(ep, net));
            }
        }
        self.ours_or_not(ip)
    }

    fn ours_or_not(&self, ip: IpAddr) -> Ptr {
        let ours = self
            .networks
            .values()
            .any(|n| n.subnets.iter().any(|s| s.contains(&ip)));
        if ours { Ptr::NxDomain } else { Ptr::NotOurs }
    }

    /// Where a sandbox's other queries go.
    pub(crate) fn plan(&self, sandbox: &str) -> Plan {
        let Some(sbx) = self.sandboxes.get(sandbox) else {
            return Plan::Refuse;
        };
        let outward: Vec<&Net> = self.nets_of(sbx).filter(|n| !n.internal).collect();
        if outward.is_empty() {
            // No network, or internal ones only: nothing may leave (CVE-2024-29018).
            return Plan::Refuse;
        }
        if !sbx.dns.servers.is_empty() {
            return Plan::Sandbox(sbx.dns.servers.clone());
        }
        let mut servers: Vec<SocketAddr> = Vec::new();
        for net in outward {
            for s in &net.servers {
                if !servers.contains(s) {
                    servers.push(*s);
                }
            }
        }
        if servers.is_empty() {
            Plan::Host
        } else {
            Plan::Networks(servers)
        }
    }

    /// How many endpoints are registered (all networks).
    pub(crate) fn endpoint_count(&self) -> usize {
        self.networks.values().map(|n| n.endpoints.len()).sum()
    }
}

fn ptr_name(ep: &Ep, net: &Net) -> Name {
    fqdn(&format!("{}.{}", ep.name, net.name))
}

fn net_key(networks: &HashMap<Arc<str>, Net>, id: &str) -> Arc<str> {
    networks
        .get_key_value(id)
        .map(|(k, _)| k.clone())
        .expect("the network was looked up just before")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Want = Want {
        v4: true,
        v6: false,
    };
    const AAAA: Want = Want {
        v4: false,
        v6: true,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn two_networks() -> Records {
        let mut r = Records::default();
        r.upsert_network(
            "n1",
            &NetworkDns::new("front").subnet("10.1.0.0/24".parse().unwrap()),
        )
        .unwrap();
        r.upsert_network(
            "n2",
            &NetworkDns::new("back").subnet("10.2.0.0/24".parse().unwrap()),
        )
        .unwrap();
        r.add_endpoint(
            "n1",
            &EndpointDns::new("e1", "s1", "web").address(ip("10.1.0.2")),
        )
        .unwrap();
        r.add_endpoint(
            "n1",
            &EndpointDns::new("e2", "s2", "api")
                .alias("svc")
                .address(ip("10.1.0.3"))
                .address(ip("fd00::3")),
        )
        .unwrap();
        r.add_endpoint(
            "n2",
            &EndpointDns::new("e3", "s3", "db").address(ip("10.2.0.2")),
        )
        .unwrap();
        r
    }

    #[test]
    fn names_resolve_only_from_the_askers_networks() {
        let r = two_networks();
        assert_eq!(
            r.sandbox_lookup("s1", "api", A),
            Found::Addrs(vec![ip("10.1.0.3")])
        );
        assert_eq!(
            r.sandbox_lookup("s1", "svc", AAAA),
            Found::Addrs(vec![ip("fd00::3")])
        );
        assert_eq!(r.sandbox_lookup("s1", "web", AAAA), Found::NoData);
        assert_eq!(r.sandbox_lookup("s1", "db", A), Found::Unknown);
        assert_eq!(r.sandbox_lookup("s3", "web", A), Found::Unknown);
        assert_eq!(
            r.sandbox_lookup("s1", "api.front", A),
            Found::Addrs(vec![ip("10.1.0.3")])
        );
        assert_eq!(r.sandbox_lookup("s1", "db.back", A), Found::Unknown);
        assert_eq!(r.sandbox_lookup("nobody", "web", A), Found::Unknown);
    }

    #[test]
    fn aliases_give_every_address_rotating() {
        let mut r = two_networks();
        for i in 0..3u8 {
            r.add_endpoint(
                "n1",
                &EndpointDns::new(format!("w{i}"), format!("w{i}"), format!("worker{i}"))
                    .alias("workers")
                    .address(IpAddr::from([10, 1, 0, 10 + i])),
            )
            .unwrap();
        }
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let Found::Addrs(mut a) = r.sandbox_lookup("s1", "workers", A) else {
                panic!("workers must resolve")
            };
            firsts.push(a[0]);
            a.sort();
            assert_eq!(a, vec![ip("10.1.0.10"), ip("10.1.0.11"), ip("10.1.0.12")]);
        }
        firsts.sort();
        firsts.dedup();
        assert_eq!(firsts.len(), 3, "each query starts elsewhere");
        assert!(r.remove_endpoint("n1", "w1"));
        let Found::Addrs(a) = r.sandbox_lookup("s1", "workers", A) else {
            panic!()
        };
        assert_eq!(a.len(), 2);
        assert!(
            !r.remove_endpoint("n1", "w1"),
            "a second leave finds nothing"
        );
    }

    #[test]
    fn leaving_removes_names_ptr_and_membership() {
        let mut r = two_networks();
        assert!(r.remove_endpoint("n1", "e2"));
        assert_eq!(r.sandbox_lookup("s1", "api", A), Found::Unknown);
        assert_eq!(r.sandbox_ptr("s1", ip("10.1.0.3")), Ptr::NxDomain);
        assert_eq!(r.plan("s2"), Plan::Refuse, "s2 is on no network any more");
        assert!(r.sandbox("s2").is_none());
        assert_eq!(r.endpoint_count(), 2);
    }

    #[test]
    fn ptr_names_the_endpoint_in_its_network() {
        let r = two_networks();
        assert_eq!(
            r.sandbox_ptr("s1", ip("10.1.0.3")),
            Ptr::Name(fqdn("api.front"))
        );
        assert_eq!(r.sandbox_ptr("s1", ip("10.1.0.99")), Ptr::NxDomain);
        assert_eq!(
            r.sandbox_ptr("s1", ip("10.2.0.2")),
            Ptr::NxDomain,
            "not across networks"
        );
        assert_eq!(r.sandbox_ptr("s1", ip("192.0.2.1")), Ptr::NotOurs);
        assert_eq!(r.host_ptr(ip("10.2.0.2")), Ptr::Name(fqdn("db.back")));
    }

    #[test]
    fn host_view_serves_name_network_and_the_domain() {
        let r = two_networks();
        let found = |a: &str| HostFound::Found(Found::Addrs(vec![ip(a)]));
        assert_eq!(r.host_lookup("db.back", Some("cnm"), A), found("10.2.0.2"));
        assert_eq!(
            r.host_lookup("db.back.cnm", Some("cnm"), A),
            found("10.2.0.2")
        );
        assert_eq!(
            r.host_lookup("web.front", None, AAAA),
            HostFound::Found(Found::NoData)
        );
        assert_eq!(r.host_lookup("nope.front", None, A), HostFound::NxDomain);
        assert_eq!(
            r.host_lookup("x.nope.cnm", Some("cnm"), A),
            HostFound::NxDomain
        );
        assert_eq!(
            r.host_lookup("example.com", Some("cnm"), A),
            HostFound::OutOfZone
        );
        assert_eq!(r.host_lookup("web", Some("cnm"), A), HostFound::OutOfZone);
    }

    #[test]
    fn dotted_network_names_split_right() {
        let mut r = Records::default();
        r.upsert_network("n", &NetworkDns::new("a.b")).unwrap();
        r.add_endpoint(
            "n",
            &EndpointDns::new("e", "s", "x").address(ip("10.9.0.2")),
        )
        .unwrap();
        assert_eq!(
            r.host_lookup("x.a.b", None, A),
            HostFound::Found(Found::Addrs(vec![ip("10.9.0.2")]))
        );
        assert_eq!(
            r.sandbox_lookup("s", "x.a.b", A),
            Found::Addrs(vec![ip("10.9.0.2")])
        );
    }

    #[test]
    fn forwarding_plan_follows_internal_and_overrides() {
        let mut r = two_networks();
        r.upsert_network("i", &NetworkDns::new("sealed").internal(true))
            .unwrap();
        r.add_endpoint("i", &EndpointDns::new("ei", "si", "lonely"))
            .unwrap();
        assert_eq!(r.plan("si"), Plan::Refuse);
        r.add_endpoint("i", &EndpointDns::new("e1i", "s1", "web2"))
            .unwrap();
        assert_eq!(
            r.plan("s1"),
            Plan::Host,
            "internal plus a routed network may forward"
        );
        let up: SocketAddr = "192.0.2.53:53".parse().unwrap();
        r.upsert_network("n1", &NetworkDns::new("front").server(up))
            .unwrap();
        assert_eq!(r.plan("s1"), Plan::Networks(vec![up]));
        let own: SocketAddr = "127.0.0.1:53".parse().unwrap();
        r.set_sandbox_dns(
            "s1",
            SandboxDns {
                servers: vec![own],
                ndots_set: false,
            },
        );
        assert_eq!(r.plan("s1"), Plan::Sandbox(vec![own]));
        assert_eq!(r.plan("unknown"), Plan::Refuse);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let mut r = two_networks();
        let e = r
            .add_endpoint("n1", &EndpointDns::new("e9", "s9", "ok").alias("not ok"))
            .unwrap_err();
        assert!(e.to_string().contains("alias"), "{e}");
        assert!(r.sandbox("s9").is_none());
        assert!(matches!(
            r.add_endpoint("n1", &EndpointDns::new("e1", "s1", "web")),
            Err(DnsError::EndpointExists { .. })
        ));
        assert!(matches!(
            r.add_endpoint("zz", &EndpointDns::new("e1", "s1", "web")),
            Err(DnsError::NetworkNotFound(_))
        ));
        let e = r
            .upsert_network("n3", &NetworkDns::new("front"))
            .unwrap_err();
        assert!(e.to_string().contains("already has that name"), "{e}");
        r.upsert_network("n1", &NetworkDns::new("renamed")).unwrap();
        assert_eq!(
            r.sandbox_lookup("s1", "api.renamed", A),
            Found::Addrs(vec![ip("10.1.0.3")])
        );
        assert_eq!(r.sandbox_lookup("s1", "api.front", A), Found::Unknown);
        assert!(r.remove_network("n1"));
        assert_eq!(r.sandbox_lookup("s1", "api", A), Found::Unknown);
        assert!(!r.remove_network("n1"));
    }
}
