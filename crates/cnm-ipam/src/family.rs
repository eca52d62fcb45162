//! Address families and the `u128` arithmetic both families share.
//!
//! Every address is handled as a `u128` inside the crate (an IPv4 address is zero-extended), so one
//! address set and one pool type serve both families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of_addr(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// The longest prefix length of the family: 32 or 128.
    pub fn max_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// An address as a number (IPv4 zero-extended).
pub(crate) fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` with number `value`.
///
/// Callers only pass IPv4 values that came from an IPv4 network, so they fit in 32 bits; the
/// truncating cast cannot lose anything for them.
pub(crate) fn u128_to_addr(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// The mask of the host part of a prefix of length `prefix_len` in `family`.
pub(crate) fn host_mask(family: Family, prefix_len: u8) -> u128 {
    let host_bits = u32::from(family.max_prefix_len().saturating_sub(prefix_len));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// First and last address of a network as numbers (host bits of `net` are ignored).
pub(crate) fn net_bounds(net: &IpNet) -> (u128, u128) {
    let mask = host_mask(Family::of_net(net), net.prefix_len());
    let start = addr_to_u128(net.addr()) & !mask;
    (start, start | mask)
}

/// Whether two inclusive ranges share at least one value.
pub(crate) fn overlaps(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_of_v4_and_v6_networks() {
        let v4: IpNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(net_bounds(&v4), (0x0a01_0000, 0x0a01_ffff));
        let all6: IpNet = "::/0".parse().unwrap();
        assert_eq!(net_bounds(&all6), (0, u128::MAX));
        let host6: IpNet = "fd00::5/128".parse().unwrap();
        let v = addr_to_u128("fd00::5".parse().unwrap());
        assert_eq!(net_bounds(&host6), (v, v));
    }

    #[test]
    fn numbers_round_trip_to_addresses() {
        for s in [
            "0.0.0.0",
            "255.255.255.255",
            "172.17.0.1",
            "::",
            "fd12:3456::1",
            "ffff::ffff",
        ] {
            let a: IpAddr = s.parse().unwrap();
            assert_eq!(u128_to_addr(Family::of_addr(&a), addr_to_u128(a)), a);
        }
    }
}
