//! Default pools: which subnets a pool request without a subnet may get, enumerated lazily.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::IpamError;
use crate::family::{Family, host_mask, net_bounds, u128_to_addr};

/// A base network split into subnets of one prefix length: `{ base: 172.20.0.0/14, size: 16 }`
/// offers 172.20.0.0/16 … 172.23.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The network to split (host bits are ignored).
    pub base: IpNet,
    /// The prefix length of each subnet; at least the base's, at most the family's maximum.
    pub size: u8,
}

impl PoolSpec {
    /// A validated spec.
    pub fn new(base: IpNet, size: u8) -> Result<Self, IpamError> {
        let spec = Self { base, size };
        spec.validate()?;
        Ok(spec)
    }

    /// Refuses a size shorter than the base prefix or longer than the family allows.
    pub fn validate(&self) -> Result<(), IpamError> {
        let reason = if self.size < self.base.prefix_len() {
            "the size is shorter than the base prefix"
        } else if self.size > self.base.max_prefix_len() {
            "the size is longer than an address"
        } else {
            return Ok(());
        };
        Err(IpamError::InvalidPoolSpec {
            base: self.base,
            size: self.size,
            reason,
        })
    }

    /// The family of the base network.
    pub fn family(&self) -> Family {
        Family::of_net(&self.base)
    }

    /// The subnets of this spec in ascending order, computed one at a time (an invalid spec
    /// yields none).
    pub fn subnets(&self) -> Subnets {
        let family = self.family();
        let mask = host_mask(family, self.size);
        let (first, last) = net_bounds(&self.base);
        Subnets {
            family,
            size: self.size,
            next: self.validate().is_ok().then_some(first),
            last_start: last & !mask,
            mask,
        }
    }
}

/// Lazy iterator over the subnets of a [`PoolSpec`]; see [`PoolSpec::subnets`].
#[derive(Debug, Clone)]
pub struct Subnets {
    family: Family,
    size: u8,
    next: Option<u128>,
    last_start: u128,
    mask: u128,
}

impl Subnets {
    /// Continues at the first subnet that starts after `value` (skips every subnet containing
    /// it or before it). This is how the allocator jumps past an obstacle in O(1).
    pub(crate) fn skip_past(&mut self, value: u128) {
        self.next = match (self.next, value.checked_add(1)) {
            (Some(next), Some(after)) => {
                // Round up to the next subnet boundary.
                let aligned = (after & !self.mask).checked_add(if after & self.mask == 0 {
                    0
                } else {
                    self.mask + 1
                });
                aligned.map(|a| a.max(next))
            }
            _ => None,
        };
    }

    /// The next subnet as (first address, last address) numbers.
    pub(crate) fn next_bounds(&mut self) -> Option<(u128, u128)> {
        let start = self.next?;
        if start > self.last_start {
            self.next = None;
            return None;
        }
        let end = start | self.mask;
        self.next = end.checked_add(1);
        Some((start, end))
    }

    /// The network starting at `start`.
    pub(crate) fn net(&self, start: u128) -> IpNet {
        make_net(u128_to_addr(self.family, start), self.size)
    }
}

impl Iterator for Subnets {
    type Item = IpNet;

    fn next(&mut self) -> Option<IpNet> {
        let (start, _) = self.next_bounds()?;
        Some(self.net(start))
    }
}

/// A network from an address and a prefix length that is known to fit the address's family.
pub(crate) fn make_net(addr: IpAddr, prefix_len: u8) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(
            Ipv4Net::new(a, prefix_len)
                .expect("IPv4 prefix length bounded by a valid spec or subnet"),
        ),
        IpAddr::V6(a) => IpNet::V6(
            Ipv6Net::new(a, prefix_len)
                .expect("IPv6 prefix length bounded by a valid spec or subnet"),
        ),
    }
}

/// Which default pools the IPAM offers, per family, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// IPv4 default pools.
    pub v4_pools: Vec<PoolSpec>,
    /// IPv6 default pools.
    pub v6_pools: Vec<PoolSpec>,
}

impl IpamConfig {
    /// The host id [`Default`] derives its IPv6 pool from.
    pub const DEFAULT_HOST_ID: &'static str = "cnm";

    /// Docker's default local pools: 172.17/16, 172.18/16, 172.19/16, 172.20/14, 172.24/14 and
    /// 172.28/14 split into /16s, 192.168/16 split into /20s; for IPv6 the ULA /48 of `host_id`
    /// ([`IpamConfig::ula_prefix`]) split into /64s.
    pub fn docker_defaults(host_id: &str) -> Self {
        let v4 = |a: u8, b: u8, len: u8, size: u8| PoolSpec {
            base: IpNet::V4(
                Ipv4Net::new(Ipv4Addr::new(a, b, 0, 0), len)
                    .expect("constant prefix lengths are at most 32"),
            ),
            size,
        };
        Self {
            v4_pools: vec![
                v4(172, 17, 16, 16),
                v4(172, 18, 16, 16),
                v4(172, 19, 16, 16),
                v4(172, 20, 14, 16),
                v4(172, 24, 14, 16),
                v4(172, 28, 14, 16),
                v4(192, 168, 16, 20),
            ],
            v6_pools: vec![PoolSpec {
                base: IpNet::V6(Self::ula_prefix(host_id)),
                size: 64,
            }],
        }
    }

    /// The unique-local /48 of a host: `fd` followed by 40 bits of a hash of `host_id`
    /// (RFC 4193 §3.2, with the 64-bit FNV-1a hash of the id standing in for the SHA-1 of a
    /// timestamp and EUI-64; stable as long as the host id is).
    pub fn ula_prefix(host_id: &str) -> Ipv6Net {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let hash = host_id.bytes().fold(FNV_OFFSET, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        });
        let global_id = u128::from(hash & ((1 << 40) - 1));
        let addr = Ipv6Addr::from((0xfd_u128 << 120) | (global_id << 80));
        Ipv6Net::new(addr, 48).expect("48 is a valid IPv6 prefix length")
    }

    /// Refuses an invalid spec or one listed under the wrong family.
    pub fn validate(&self) -> Result<(), IpamError> {
        for (family, specs) in [(Family::V4, &self.v4_pools), (Family::V6, &self.v6_pools)] {
            for spec in specs {
                spec.validate()?;
                if spec.family() != family {
                    return Err(IpamError::WrongFamily {
                        field: "default pool",
                        value: spec.base.to_string(),
                        family,
                    });
                }
            }
        }
        Ok(())
    }

    /// The specs of one family. Specs of the other family listed there are left out.
    pub fn pools(&self, family: Family) -> impl Iterator<Item = &PoolSpec> + '_ {
        let specs = match family {
            Family::V4 => &self.v4_pools,
            Family::V6 => &self.v6_pools,
        };
        specs.iter().filter(move |s| s.family() == family)
    }

    /// Every candidate default subnet of `family` in order, computed lazily: a /8 split into
    /// /64s is never materialised.
    pub fn candidates(&self, family: Family) -> impl Iterator<Item = IpNet> + '_ {
        self.pools(family).flat_map(PoolSpec::subnets)
    }
}

impl Default for IpamConfig {
    /// Docker's defaults with the IPv6 pool of [`IpamConfig::DEFAULT_HOST_ID`].
    fn default() -> Self {
        Self::docker_defaults(Self::DEFAULT_HOST_ID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::addr_to_u128;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn docker_v4_defaults_in_order() {
        let config = IpamConfig::default();
        let first: Vec<String> = config
            .candidates(Family::V4)
            .take(5)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            first,
            [
                "172.17.0.0/16",
                "172.18.0.0/16",
                "172.19.0.0/16",
                "172.20.0.0/16",
                "172.21.0.0/16"
            ]
        );
        // 3 + 3×4 /16s, then 192.168.0.0/16 as 16 /20s.
        let all: Vec<IpNet> = config.candidates(Family::V4).collect();
        assert_eq!(all.len(), 15 + 16);
        assert_eq!(all[14], net("172.31.0.0/16"));
        assert_eq!(all[15], net("192.168.0.0/20"));
        assert_eq!(all[30], net("192.168.240.0/20"));
    }

    #[test]
    fn ula_prefix_is_fd_plus_40_bits_and_stable() {
        let a = IpamConfig::ula_prefix("host-a");
        let b = IpamConfig::ula_prefix("host-b");
        assert_eq!(a, IpamConfig::ula_prefix("host-a"));
        assert_ne!(a, b);
        for p in [a, b] {
            assert_eq!(p.prefix_len(), 48);
            assert_eq!(p.addr().octets()[0], 0xfd);
            assert_eq!(p.trunc(), p);
        }
        let config = IpamConfig::docker_defaults("host-a");
        let mut v6 = config.candidates(Family::V6);
        let first = v6.next().unwrap();
        assert_eq!(first, IpNet::V6(Ipv6Net::new(a.addr(), 64).unwrap()));
        assert_eq!(v6.next().unwrap().prefix_len(), 64);
    }

    #[test]
    fn huge_splits_are_lazy() {
        // 2^56 candidates: only feasible if nothing is materialised.
        let spec = PoolSpec::new(net("fd00::/8"), 64).unwrap();
        let mut it = spec.subnets();
        assert_eq!(it.next(), Some(net("fd00::/64")));
        assert_eq!(it.next(), Some(net("fd00:0:0:1::/64")));
        let mut whole = PoolSpec::new(net("::/0"), 0).unwrap().subnets();
        assert_eq!(whole.next(), Some(net("::/0")));
        assert_eq!(whole.next(), None);
    }

    #[test]
    fn skip_past_jumps_to_the_next_boundary() {
        let spec = PoolSpec::new(net("10.0.0.0/8"), 16).unwrap();
        let mut it = spec.subnets();
        it.skip_past(addr_to_u128("10.3.0.0".parse().unwrap()));
        assert_eq!(it.next(), Some(net("10.4.0.0/16")));
        it.skip_past(addr_to_u128("10.5.255.255".parse().unwrap()));
        assert_eq!(it.next(), Some(net("10.6.0.0/16")));
        it.skip_past(addr_to_u128("10.255.255.255".parse().unwrap()));
        assert_eq!(it.next(), None);
        let mut top = PoolSpec::new(net("ffff::/16"), 64).unwrap().subnets();
        top.skip_past(u128::MAX);
        assert_eq!(top.next(), None);
    }

    #[test]
    fn invalid_specs_are_refused_and_yield_nothing() {
        let err = PoolSpec::new(net("10.0.0.0/16"), 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid default pool 10.0.0.0/16 split into /8: the size is shorter than the base prefix"
        );
        let bad = PoolSpec {
            base: net("10.0.0.0/16"),
            size: 33,
        };
        assert!(bad.validate().is_err());
        assert_eq!(bad.subnets().count(), 0);
        let mixed = IpamConfig {
            v4_pools: vec![PoolSpec {
                base: net("fd00::/8"),
                size: 64,
            }],
            v6_pools: vec![],
        };
        assert_eq!(
            mixed.validate().unwrap_err().to_string(),
            "default pool fd00::/8 is not IPv4"
        );
        assert_eq!(mixed.candidates(Family::V4).count(), 0);
    }
}
