//! The networks the host is on (its addresses and routes, outside cnm's own bridges), which a
//! network's subnet must not take from it. Pure: the controller reads the links, addresses and
//! routes of its host namespace over netlink and hands them here.
//!
//! A bridge network's subnet becomes an on-link route in the host the moment its bridge comes
//! up, more specific than (or as specific as) what the host had: a subnet equal to the LAN of
//! `eth1` cuts the host off that LAN at once, and one inside a routed network (a VPN's
//! `10.8.0.0/16 via …`) cuts it off that part. Default pools avoid these networks; an explicit
//! subnet that overlaps one is refused unless the network allows it.

use cnm_sandbox::{Address, Link, Route};
use ipnet::IpNet;

use crate::options::reserved::{MIN_PREFIX_V4, MIN_PREFIX_V6};

/// One network the host is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostNetwork {
    /// The route's destination, or the network of the address.
    pub(crate) net: IpNet,
    /// For messages: `10.0.0.0/24 on eth1 (route)`, `10.0.0.1/24 on eth1 (address)`.
    pub(crate) description: String,
}

/// The prefix of the alias cnm's drivers give the links they create (`cnm:<id>`).
pub(crate) const ALIAS_PREFIX: &str = "cnm:";

/// Whether a route is a catch-all rather than a network: the default route, or one at least as
/// wide as the widest subnet a network may have (a VPN's `0.0.0.0/1` and `128.0.0.0/1` halves
/// stand in for the default route). A network inside one narrows nothing the host relies on
/// more than a network inside the default route does.
fn catch_all(net: &IpNet) -> bool {
    match net {
        IpNet::V4(_) => net.prefix_len() < MIN_PREFIX_V4,
        IpNet::V6(_) => net.prefix_len() < MIN_PREFIX_V6,
    }
}

/// The host's networks among `links`, `addresses` and `routes`, leaving out those on a link
/// `own` says is cnm's (the bridges of its networks) and catch-all routes.
pub(crate) fn collect(
    links: &[Link],
    addresses: &[Address],
    routes: &[Route],
    own: impl Fn(&Link) -> bool,
) -> Vec<HostNetwork> {
    let link = |index: u32| links.iter().find(|l| l.index == index);
    let name = |index: Option<u32>| match index.and_then(link) {
        Some(l) => format!(" on {}", l.name),
        None => match index {
            Some(i) => format!(" on interface {i}"),
            None => String::new(),
        },
    };
    let is_own = |index: Option<u32>| index.and_then(link).is_some_and(&own);
    let mut out = Vec::new();
    for r in routes {
        if is_own(r.oif) || catch_all(&r.destination) {
            continue;
        }
        let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        out.push(HostNetwork {
            net: r.destination,
            description: format!("{}{via}{} (route)", r.destination, name(r.oif)),
        });
    }
    for a in addresses {
        if is_own(Some(a.index)) {
            continue;
        }
        out.push(HostNetwork {
            net: a.addr.trunc(),
            description: format!("{}{} (address)", a.addr, name(Some(a.index))),
        });
    }
    out
}

/// Whether two networks share an address.
pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The first of the host's networks `subnet` overlaps (routes come before addresses).
pub(crate) fn overlap<'a>(subnet: &IpNet, host: &'a [HostNetwork]) -> Option<&'a HostNetwork> {
    host.iter().find(|h| overlaps(subnet, &h.net))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, alias: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: None,
            mac: None,
            mtu: 1500,
            up: true,
            master: None,
            alias: alias.map(Into::into),
        }
    }

    fn route(dst: &str, gw: Option<&str>, oif: Option<u32>) -> Route {
        Route {
            destination: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif,
            metric: None,
        }
    }

    fn host() -> Vec<HostNetwork> {
        let links = [
            link(1, "lo", None),
            link(2, "eth0", None),
            link(3, "eth1", None),
            link(4, "cnm-0123456789a", Some("cnm:0123")),
            link(5, "tun0", None),
        ];
        let addrs = [
            Address {
                index: 1,
                addr: "127.0.0.1/8".parse().unwrap(),
            },
            Address {
                index: 3,
                addr: "10.0.0.7/24".parse().unwrap(),
            },
            Address {
                index: 4,
                addr: "172.18.0.1/16".parse().unwrap(),
            },
            Address {
                index: 2,
                addr: "192.0.2.10/32".parse().unwrap(),
            },
        ];
        let routes = [
            route("0.0.0.0/0", Some("203.0.113.1"), Some(2)),
            route("0.0.0.0/1", Some("10.8.0.1"), Some(5)),
            route("10.0.0.0/24", None, Some(3)),
            route("172.18.0.0/16", None, Some(4)),
            route("10.64.0.0/16", Some("10.0.0.1"), Some(3)),
            route("198.51.100.0/24", None, None),
        ];
        collect(&links, &addrs, &routes, |l| {
            l.alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
        })
    }

    fn hit(subnet: &str) -> Option<String> {
        let h = host();
        overlap(&subnet.parse().unwrap(), &h).map(|n| n.description.clone())
    }

    #[test]
    fn routes_and_addresses_are_named_with_their_interface() {
        let cases = [
            ("10.0.0.0/24", "10.0.0.0/24 on eth1 (route)"),
            ("10.0.0.128/25", "10.0.0.0/24 on eth1 (route)"),
            ("10.0.0.0/16", "10.0.0.0/24 on eth1 (route)"),
            ("10.64.3.0/24", "10.64.0.0/16 via 10.0.0.1 on eth1 (route)"),
            ("198.51.100.0/25", "198.51.100.0/24 (route)"),
            ("192.0.2.0/24", "192.0.2.10/32 on eth0 (address)"),
        ];
        for (subnet, conflict) in cases {
            assert_eq!(hit(subnet).as_deref(), Some(conflict), "{subnet}");
        }
    }

    #[test]
    fn cnm_bridges_and_catch_all_routes_are_not_the_hosts() {
        // The bridge of one of cnm's networks: IPAM, not this check, answers for its pools.
        assert_eq!(hit("172.18.0.0/16"), None);
        // Inside the default route and a VPN's 0.0.0.0/1: no network of the host's.
        assert_eq!(hit("10.1.0.0/24"), None);
        assert_eq!(hit("100.64.0.0/24"), None);
    }

    #[test]
    fn overlap_is_symmetric() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.1.0.0/16".parse().unwrap();
        let c: IpNet = "11.0.0.0/16".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a) && !overlaps(&a, &c));
    }
}
