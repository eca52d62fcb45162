//! Pools: their ids, how they are requested, and the address bookkeeping of one pool.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addrset::AddressSet;
use crate::config::make_net;
use crate::error::{InRange, IpamError, Reservation, check_canonical};
use crate::family::{Family, addr_to_u128, net_bounds, u128_to_addr};

/// The address space of the pools this IPAM hands out (Docker's `LocalDefault`).
pub const LOCAL_ADDRESS_SPACE: &str = "local";

/// The id of a pool: `AddressSpace/subnet[/ip-range]`, e.g. `local/172.18.0.0/16` or
/// `local/10.1.0.0/16/10.1.4.0/24`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolId {
    space: String,
    subnet: IpNet,
    range: Option<IpNet>,
}

impl PoolId {
    /// The id of `subnet` (optionally narrowed to `range`) in the local address space.
    pub fn local(subnet: IpNet, range: Option<IpNet>) -> Self {
        Self {
            space: LOCAL_ADDRESS_SPACE.to_owned(),
            subnet,
            range,
        }
    }

    /// The address space part.
    pub fn address_space(&self) -> &str {
        &self.space
    }

    /// The subnet part.
    pub fn subnet(&self) -> IpNet {
        self.subnet
    }

    /// The ip-range part, if any.
    pub fn range(&self) -> Option<IpNet> {
        self.range
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.space, self.subnet)?;
        if let Some(range) = self.range {
            write!(f, "/{range}")?;
        }
        Ok(())
    }
}

impl FromStr for PoolId {
    type Err = IpamError;

    fn from_str(s: &str) -> Result<Self, IpamError> {
        let invalid = |reason| IpamError::InvalidPoolId {
            value: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        let (space, subnet, range) = match parts.as_slice() {
            [space, addr, len] => (*space, format!("{addr}/{len}"), None),
            [space, addr, len, raddr, rlen] => (
                *space,
                format!("{addr}/{len}"),
                Some(format!("{raddr}/{rlen}")),
            ),
            _ => return Err(invalid("expected AddressSpace/subnet[/ip-range]")),
        };
        if space.is_empty() {
            return Err(invalid("the address space is empty"));
        }
        let subnet: IpNet = subnet
            .parse()
            .map_err(|_| invalid("the subnet is not a CIDR network"))?;
        let range = range
            .map(|r| r.parse::<IpNet>())
            .transpose()
            .map_err(|_| invalid("the ip-range is not a CIDR network"))?;
        Ok(Self {
            space: space.to_owned(),
            subnet,
            range,
        })
    }
}

impl TryFrom<String> for PoolId {
    type Error = IpamError;

    fn try_from(s: String) -> Result<Self, IpamError> {
        s.parse()
    }
}

impl From<PoolId> for String {
    fn from(id: PoolId) -> String {
        id.to_string()
    }
}

/// What a caller asks of [`crate::Ipam::request_pool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRequest {
    /// The family of the pool.
    pub family: Family,
    /// The subnet wanted; `None` takes the first free default pool.
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// Narrows dynamic (`Any`) allocations to this range inside the subnet.
    #[serde(default)]
    pub ip_range: Option<IpNet>,
    /// The gateway a `Gateway` address request gets; default: the first usable address that is
    /// not an aux address.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Addresses reserved for the caller's own use, never handed out.
    #[serde(default)]
    pub aux_addresses: Vec<IpAddr>,
    /// Networks a default pool must not overlap (host on-link routes, nameservers).
    #[serde(default)]
    pub exclude: Vec<IpNet>,
}

impl PoolRequest {
    /// A request for the first free default pool of `family`.
    pub fn new(family: Family) -> Self {
        Self {
            family,
            subnet: None,
            ip_range: None,
            gateway: None,
            aux_addresses: Vec::new(),
            exclude: Vec::new(),
        }
    }

    /// A request for exactly `subnet`.
    pub fn with_subnet(subnet: IpNet) -> Self {
        Self {
            subnet: Some(subnet),
            ..Self::new(Family::of_net(&subnet))
        }
    }
}

/// A pool as handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Its id, for address requests and release.
    pub id: PoolId,
    /// Its subnet.
    pub subnet: IpNet,
    /// The range dynamic allocations come from, if narrower than the subnet.
    pub range: Option<IpNet>,
    /// The preferred gateway: the requested one, else the first usable address of the subnet
    /// that is not an aux address.
    /// It is not allocated until someone asks for [`AddressRequest::Gateway`].
    pub gateway: IpAddr,
    /// The reserved aux addresses.
    pub aux_addresses: Vec<IpAddr>,
}

/// Which address [`crate::Ipam::request_address`] should hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressRequest {
    /// The lowest free address (inside the ip-range if the pool has one).
    Any,
    /// The pool's preferred gateway.
    Gateway,
    /// Exactly this address (anywhere in the subnet, even outside the ip-range).
    Specific(IpAddr),
}

/// One allocated pool: immutable attributes plus the address set behind its own lock, so
/// address operations on different pools never contend.
#[derive(Debug)]
pub(crate) struct PoolSlot {
    pub(crate) family: Family,
    pub(crate) subnet: IpNet,
    pub(crate) range: Option<IpNet>,
    /// First and last address of the subnet.
    pub(crate) bounds: (u128, u128),
    gateway: u128,
    aux: BTreeSet<u128>,
    /// The addresses ever handed out: subnet minus network/broadcast/anycast.
    usable: (u128, u128),
    /// Where `Any` looks: `usable` narrowed to the ip-range; `None` if that is empty.
    dynamic: Option<(u128, u128)>,
    allocated: Mutex<AddressSet>,
}

impl PoolSlot {
    /// Validates a pool's parameters. `subnet` is canonical and of the right family already.
    pub(crate) fn new(
        subnet: IpNet,
        range: Option<IpNet>,
        gateway: Option<IpAddr>,
        aux_addresses: &[IpAddr],
    ) -> Result<Self, IpamError> {
        let family = Family::of_net(&subnet);
        let bounds = net_bounds(&subnet);
        let usable = usable_bounds(family, subnet.prefix_len(), bounds);
        let mut slot = Self {
            family,
            subnet,
            range,
            bounds,
            gateway: usable.0,
            aux: BTreeSet::new(),
            usable,
            dynamic: Some(usable),
            allocated: Mutex::new(AddressSet::default()),
        };
        if let Some(range) = range {
            check_canonical("ip-range", range)?;
            if !subnet.contains(&range) {
                return Err(IpamError::RangeOutsideSubnet { range, subnet });
            }
            let (first, last) = net_bounds(&range);
            let (low, high) = (first.max(usable.0), last.min(usable.1));
            slot.dynamic = (low <= high).then_some((low, high));
        }
        for &addr in aux_addresses {
            let value = slot.check_in_subnet("aux-address", addr)?;
            slot.aux.insert(value);
        }
        slot.gateway = match gateway {
            Some(addr) => slot.check_in_subnet("gateway", addr)?,
            // The first usable address that is not reserved as aux, as Docker does (it asks for
            // the lowest free address after reserving the aux addresses).
            None => (usable.0..=usable.1)
                .find(|v| !slot.aux.contains(v))
                .unwrap_or(usable.0),
        };
        if slot.aux.contains(&slot.gateway) {
            return Err(IpamError::GatewayIsAux {
                gateway: u128_to_addr(family, slot.gateway),
                subnet,
            });
        }
        Ok(slot)
    }

    /// The number of an address the request may name as gateway or aux address.
    fn check_in_subnet(&self, field: &'static str, addr: IpAddr) -> Result<u128, IpamError> {
        let subnet = self.subnet;
        self.number_of(addr, Self::structural_reservation)
            .map_err(|reserved| match reserved {
                None => IpamError::OutsideSubnet {
                    field,
                    addr,
                    subnet,
                },
                Some(reservation) => IpamError::ReservedInSubnet {
                    field,
                    addr,
                    subnet,
                    reservation,
                },
            })
    }

    /// The number of `addr` if it is in the subnet and `reserved` keeps it for nobody; else
    /// `Err(None)` (outside the subnet) or `Err(Some(why))` (reserved).
    fn number_of(
        &self,
        addr: IpAddr,
        reserved: fn(&Self, u128) -> Option<Reservation>,
    ) -> Result<u128, Option<Reservation>> {
        if !self.subnet.contains(&addr) {
            return Err(None);
        }
        let value = addr_to_u128(addr);
        match reserved(self, value) {
            Some(reservation) => Err(Some(reservation)),
            None => Ok(value),
        }
    }

    /// Network, broadcast or anycast address, if `value` (inside the subnet) is one.
    fn structural_reservation(&self, value: u128) -> Option<Reservation> {
        if value < self.usable.0 {
            Some(match self.family {
                Family::V4 => Reservation::NetworkAddress,
                Family::V6 => Reservation::SubnetRouterAnycast,
            })
        } else if value > self.usable.1 {
            Some(Reservation::BroadcastAddress)
        } else {
            None
        }
    }

    fn reservation(&self, value: u128) -> Option<Reservation> {
        self.structural_reservation(value)
            .or_else(|| self.aux.contains(&value).then_some(Reservation::AuxAddress))
    }

    /// The address set. No operation on it can panic half-way, so a poisoned lock still guards
    /// a consistent set and is taken over.
    fn lock(&self) -> MutexGuard<'_, AddressSet> {
        self.allocated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_prefix(&self, value: u128) -> IpNet {
        make_net(u128_to_addr(self.family, value), self.subnet.prefix_len())
    }

    /// Checks that `addr` may be held by a caller and returns its number.
    fn check_assignable(&self, addr: IpAddr) -> Result<u128, IpamError> {
        let pool = self.subnet;
        self.number_of(addr, Self::reservation)
            .map_err(|reserved| match reserved {
                None => IpamError::AddressOutsidePool { addr, pool },
                Some(reservation) => IpamError::AddressReserved {
                    addr,
                    pool,
                    reservation,
                },
            })
    }

    pub(crate) fn request(&self, req: AddressRequest) -> Result<IpNet, IpamError> {
        let value = match req {
            AddressRequest::Any => {
                let (low, high) = self.dynamic.ok_or_else(|| self.exhausted())?;
                let mut set = self.lock();
                let mut from = low;
                // Aux addresses are few (caller-listed), so skipping them one by one is cheap.
                let value = loop {
                    let candidate = set.first_free(from, high).ok_or_else(|| self.exhausted())?;
                    if !self.aux.contains(&candidate) {
                        break candidate;
                    }
                    from = candidate.checked_add(1).ok_or_else(|| self.exhausted())?;
                };
                set.insert(value);
                value
            }
            AddressRequest::Gateway => {
                self.claim(self.gateway, u128_to_addr(self.family, self.gateway))?
            }
            AddressRequest::Specific(addr) => {
                let value = self.check_assignable(addr)?;
                self.claim(value, addr)?
            }
        };
        Ok(self.with_prefix(value))
    }

    fn claim(&self, value: u128, addr: IpAddr) -> Result<u128, IpamError> {
        if self.lock().insert(value) {
            Ok(value)
        } else {
            Err(IpamError::AddressInUse {
                addr,
                pool: self.subnet,
            })
        }
    }

    fn exhausted(&self) -> IpamError {
        IpamError::PoolExhausted {
            pool: self.subnet,
            range: InRange(self.range),
        }
    }

    pub(crate) fn release(&self, addr: IpAddr) -> Result<(), IpamError> {
        let value = self.check_assignable(addr)?;
        if self.lock().remove(value) {
            Ok(())
        } else {
            Err(IpamError::AddressNotAllocated {
                addr,
                pool: self.subnet,
            })
        }
    }

    pub(crate) fn gateway(&self) -> IpAddr {
        u128_to_addr(self.family, self.gateway)
    }

    pub(crate) fn aux_addresses(&self) -> Vec<IpAddr> {
        self.aux
            .iter()
            .map(|&v| u128_to_addr(self.family, v))
            .collect()
    }

    pub(crate) fn to_pool(&self, id: &PoolId) -> Pool {
        Pool {
            id: id.clone(),
            subnet: self.subnet,
            range: self.range,
            gateway: self.gateway(),
            aux_addresses: self.aux_addresses(),
        }
    }

    /// The allocated runs as (first, last) addresses.
    pub(crate) fn runs(&self) -> Vec<(IpAddr, IpAddr)> {
        self.lock()
            .runs()
            .map(|(s, e)| (u128_to_addr(self.family, s), u128_to_addr(self.family, e)))
            .collect()
    }

    /// Marks a saved run allocated again; every address of it must be assignable and free.
    pub(crate) fn restore_run(&self, first: IpAddr, last: IpAddr) -> Result<(), IpamError> {
        let (low, high) = (self.check_assignable(first)?, self.check_assignable(last)?);
        if let Some(&aux) = self.aux.range(low..=high).next() {
            return Err(IpamError::AddressReserved {
                addr: u128_to_addr(self.family, aux),
                pool: self.subnet,
                reservation: Reservation::AuxAddress,
            });
        }
        if self.lock().insert_run(low, high) {
            Ok(())
        } else {
            Err(IpamError::AddressInUse {
                addr: first,
                pool: self.subnet,
            })
        }
    }

    /// Number of allocated addresses and of runs they form.
    pub(crate) fn usage(&self) -> (u128, usize) {
        let set = self.lock();
        (set.len(), set.run_count())
    }
}

/// The addresses of a subnet that may be handed out. IPv4 loses the network and broadcast
/// address except on /31 and /32 (RFC 3021); IPv6 loses the subnet-router anycast address
/// (RFC 4291 §2.6.1) except on /127 (RFC 6164) and /128, and has no broadcast, so the last
/// address of a /64 is usable.
fn usable_bounds(family: Family, prefix_len: u8, (first, last): (u128, u128)) -> (u128, u128) {
    match family {
        Family::V4 if prefix_len <= 30 => (first + 1, last - 1),
        Family::V6 if prefix_len <= 126 => (first + 1, last),
        _ => (first, last),
    }
}
