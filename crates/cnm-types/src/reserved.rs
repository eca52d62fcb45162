//! Address ranges the host itself relies on (loopback, link-local, multicast, broadcast, "this
//! network", IPv4-mapped IPv6, …): no network's subnet may overlap one (cnm-core refuses those
//! subnets) and no port may be published on an address in one ([`crate::port::check_host_ip`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One range no network may overlap, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedRange {
    /// The range.
    pub net: IpNet,
    /// What it is, with the RFC that reserves it.
    pub what: &'static str,
}

const fn v4(a: [u8; 4], len: u8, what: &'static str) -> ReservedRange {
    ReservedRange {
        net: IpNet::V4(Ipv4Net::new_assert(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            len,
        )),
        what,
    }
}

const fn v6(a: Ipv6Addr, len: u8, what: &'static str) -> ReservedRange {
    ReservedRange {
        net: IpNet::V6(Ipv6Net::new_assert(a, len)),
        what,
    }
}

/// The reserved ranges, the more specific of two nested ones first (so a subnet is named by
/// the narrowest range it lies in).
pub const RESERVED: &[ReservedRange] = &[
    v4(
        [0, 0, 0, 0],
        8,
        "\"this network\", never a destination (RFC 1122)",
    ),
    v4([127, 0, 0, 0], 8, "loopback, the host's own (RFC 1122)"),
    v4([169, 254, 0, 0], 16, "link-local (RFC 3927)"),
    v4([224, 0, 0, 0], 4, "multicast (RFC 5771)"),
    v4(
        [255, 255, 255, 255],
        32,
        "the limited broadcast address (RFC 919)",
    ),
    v4([240, 0, 0, 0], 4, "reserved for future use (RFC 1112)"),
    v6(
        Ipv6Addr::UNSPECIFIED,
        128,
        "the unspecified address (RFC 4291)",
    ),
    v6(
        Ipv6Addr::LOCALHOST,
        128,
        "loopback, the host's own (RFC 4291)",
    ),
    v6(
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped addresses (RFC 4291)",
    ),
    v6(
        Ipv6Addr::UNSPECIFIED,
        96,
        "IPv4-compatible addresses, deprecated (RFC 4291)",
    ),
    v6(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (RFC 4291)",
    ),
    v6(
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (RFC 4291)",
    ),
];
