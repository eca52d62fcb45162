//! The one error type of the crate.

use std::fmt;
use std::net::IpAddr;

use cnm_types::ErrorKind;
use ipnet::IpNet;

use crate::family::Family;
use crate::pool::PoolId;

/// Why an address of a subnet is never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reservation {
    /// The all-zero host part of an IPv4 subnet shorter than /31.
    NetworkAddress,
    /// The all-ones host part of an IPv4 subnet shorter than /31.
    BroadcastAddress,
    /// The all-zero host part of an IPv6 subnet shorter than /127 (RFC 4291 §2.6.1).
    SubnetRouterAnycast,
    /// An address the pool request listed in its aux addresses.
    AuxAddress,
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NetworkAddress => "network address",
            Self::BroadcastAddress => "broadcast address",
            Self::SubnetRouterAnycast => "subnet-router anycast address",
            Self::AuxAddress => "aux address",
        })
    }
}

/// Renders `" (ip-range R)"` when a pool has a range, nothing otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InRange(pub Option<IpNet>);

impl fmt::Display for InRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(range) => write!(f, " (ip-range {range})"),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong in the default IPAM. A failing call changes nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A string is not a CIDR network.
    #[error("invalid {field} {value:?}")]
    InvalidCidr {
        /// The field the value came from (`subnet`, `ip-range`, …).
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it does not parse.
        #[source]
        source: ipnet::AddrParseError,
    },
    /// A network has host bits set (`10.1.2.3/16` instead of `10.1.0.0/16`).
    #[error("invalid {field} {value}: host bits are set, did you mean {canonical}?")]
    NotCanonical {
        /// The field the value came from.
        field: &'static str,
        /// The value as given.
        value: IpNet,
        /// The network the value probably meant.
        canonical: IpNet,
    },
    /// A network or address is of the wrong family for the request.
    #[error("{field} {value} is not {family}")]
    WrongFamily {
        /// The field the value came from.
        field: &'static str,
        /// The value as given.
        value: String,
        /// The family the request asked for.
        family: Family,
    },
    /// An ip-range, gateway or aux address was given without a subnet to put it in.
    #[error("{field} {value} needs a subnet")]
    NeedsSubnet {
        /// The field the value came from.
        field: &'static str,
        /// The value as given.
        value: String,
    },
    /// The ip-range is not inside the subnet.
    #[error("ip-range {range} is not inside subnet {subnet}")]
    RangeOutsideSubnet {
        /// The requested range.
        range: IpNet,
        /// The requested subnet.
        subnet: IpNet,
    },
    /// A gateway or aux address is not inside the subnet.
    #[error("{field} {addr} is outside subnet {subnet}")]
    OutsideSubnet {
        /// `gateway` or `aux-address`.
        field: &'static str,
        /// The address as given.
        addr: IpAddr,
        /// The requested subnet.
        subnet: IpNet,
    },
    /// A gateway or aux address is an address of the subnet that is never handed out.
    #[error("{field} {addr} is the {reservation} of subnet {subnet}")]
    ReservedInSubnet {
        /// `gateway` or `aux-address`.
        field: &'static str,
        /// The address as given.
        addr: IpAddr,
        /// The requested subnet.
        subnet: IpNet,
        /// Why the address is reserved.
        reservation: Reservation,
    },
    /// The gateway is also listed as an aux address.
    #[error("gateway {gateway} is also an aux address of subnet {subnet}")]
    GatewayIsAux {
        /// The requested gateway.
        gateway: IpAddr,
        /// The requested subnet.
        subnet: IpNet,
    },
    /// A configured default pool cannot be split as asked.
    #[error("invalid default pool {base} split into /{size}: {reason}")]
    InvalidPoolSpec {
        /// The base network of the spec.
        base: IpNet,
        /// The prefix length of the subnets it is split into.
        size: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The requested subnet overlaps a pool that is already allocated.
    #[error("subnet {subnet} overlaps existing pool {existing}")]
    PoolOverlap {
        /// The requested subnet.
        subnet: IpNet,
        /// The subnet of the pool it overlaps.
        existing: IpNet,
    },
    /// Every default pool overlaps an allocated pool or an exclusion.
    #[error(
        "no default pool available for {family}: every configured pool overlaps an existing pool or an excluded network"
    )]
    NoDefaultPool {
        /// The requested family.
        family: Family,
    },
    /// A string is not a pool id.
    #[error("invalid pool id {value:?}: {reason}")]
    InvalidPoolId {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No pool has this id.
    #[error("pool {id} not found")]
    PoolNotFound {
        /// The id asked for.
        id: PoolId,
    },
    /// The address is not inside the pool's subnet.
    #[error("address {addr} is outside pool {pool}")]
    AddressOutsidePool {
        /// The address asked for.
        addr: IpAddr,
        /// The subnet of the pool.
        pool: IpNet,
    },
    /// The address is never handed out (network, broadcast, anycast or aux address).
    #[error("address {addr} is the {reservation} of pool {pool} and is never handed out")]
    AddressReserved {
        /// The address asked for.
        addr: IpAddr,
        /// The subnet of the pool.
        pool: IpNet,
        /// Why it is reserved.
        reservation: Reservation,
    },
    /// The address already has a holder.
    #[error("address {addr} is already allocated in pool {pool}")]
    AddressInUse {
        /// The address asked for.
        addr: IpAddr,
        /// The subnet of the pool.
        pool: IpNet,
    },
    /// The address to release has no holder.
    #[error("address {addr} is not allocated in pool {pool}")]
    AddressNotAllocated {
        /// The address to release.
        addr: IpAddr,
        /// The subnet of the pool.
        pool: IpNet,
    },
    /// Every address the request may take is allocated.
    #[error("no free address in pool {pool}{range}")]
    PoolExhausted {
        /// The subnet of the pool.
        pool: IpNet,
        /// The range dynamic allocations come from, if the pool has one.
        range: InRange,
    },
    /// An IPAM driver other than this crate's (a remote plugin) failed; its own error is the
    /// source, and it says what kind of failure it is.
    #[error("IPAM driver {driver}: {source}")]
    Driver {
        /// The IPAM driver's name.
        driver: String,
        /// The kind of failure.
        kind: ErrorKind,
        /// The driver's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A saved state cannot be restored.
    #[error("failed to restore IPAM state: {what}")]
    CorruptState {
        /// What is wrong, naming the pool.
        what: String,
        /// The validation error behind it, if any.
        #[source]
        source: Option<Box<IpamError>>,
    },
}

impl IpamError {
    /// The kind of failure, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidCidr { .. }
            | Self::NotCanonical { .. }
            | Self::WrongFamily { .. }
            | Self::NeedsSubnet { .. }
            | Self::RangeOutsideSubnet { .. }
            | Self::OutsideSubnet { .. }
            | Self::ReservedInSubnet { .. }
            | Self::GatewayIsAux { .. }
            | Self::InvalidPoolSpec { .. }
            | Self::InvalidPoolId { .. }
            | Self::AddressOutsidePool { .. } => ErrorKind::InvalidInput,
            Self::AddressReserved { reservation, .. } => match reservation {
                Reservation::AuxAddress => ErrorKind::Conflict,
                _ => ErrorKind::InvalidInput,
            },
            Self::PoolOverlap { .. } | Self::AddressInUse { .. } => ErrorKind::Conflict,
            Self::PoolNotFound { .. } | Self::AddressNotAllocated { .. } => ErrorKind::NotFound,
            Self::NoDefaultPool { .. } | Self::PoolExhausted { .. } => ErrorKind::Unavailable,
            Self::CorruptState { .. } => ErrorKind::Internal,
            Self::Driver { kind, .. } => *kind,
        }
    }
}

/// Parses a CIDR network, naming `field` and the value in the error ("invalid subnet
/// \"10.0.0.0/33\""). Host bits may be set; [`parse_subnet`] refuses them.
pub fn parse_cidr(field: &'static str, value: &str) -> Result<IpNet, IpamError> {
    value
        .trim()
        .parse()
        .map_err(|source| IpamError::InvalidCidr {
            field,
            value: value.to_owned(),
            source,
        })
}

/// Parses a CIDR network that must be canonical (no host bits set), as subnets and ip-ranges must.
pub fn parse_subnet(field: &'static str, value: &str) -> Result<IpNet, IpamError> {
    let net = parse_cidr(field, value)?;
    check_canonical(field, net)?;
    Ok(net)
}

/// Refuses a network with host bits set.
pub(crate) fn check_canonical(field: &'static str, net: IpNet) -> Result<(), IpamError> {
    let canonical = net.trunc();
    if canonical == net {
        Ok(())
    } else {
        Err(IpamError::NotCanonical {
            field,
            value: net,
            canonical,
        })
    }
}
