//! The default IPAM of cnm: address pools and sparse address sets, pure and fast.
//!
//! **Owns**: Docker's default local pools (IPv4 172.17–172.31 and 192.168 splits, an IPv6 ULA
//! /48 per host split into /64s), pool allocation with overlap checks and exclusions, address
//! allocation (gateway, lowest free, specific) in sparse sets whose memory follows what is
//! allocated, and a serialisable snapshot that restores exactly.
//! **Does not**: any I/O, async, persistence or knowledge of networks and drivers. The caller
//! supplies exclusions (host routes, nameservers) and stores [`IpamState`] where it likes.
//!
//! ```
//! use cnm_ipam::{AddressRequest, Family, Ipam, IpamConfig, PoolRequest, parse_subnet};
//!
//! let ipam = Ipam::new(IpamConfig::docker_defaults("host-1"));
//!
//! // A default pool that avoids the host's own on-link network.
//! let mut req = PoolRequest::new(Family::V4);
//! req.exclude.push(parse_subnet("exclude", "172.17.0.0/16")?);
//! let pool = ipam.request_pool(&req)?;
//! assert_eq!(pool.id.to_string(), "local/172.18.0.0/16");
//!
//! let gateway = ipam.request_address(&pool.id, AddressRequest::Gateway)?;
//! let first = ipam.request_address(&pool.id, AddressRequest::Any)?;
//! assert_eq!(gateway.to_string(), "172.18.0.1/16");
//! assert_eq!(first.to_string(), "172.18.0.2/16");
//!
//! // A given subnet that overlaps the pool is refused, naming both.
//! let err = ipam
//!     .request_pool(&PoolRequest::with_subnet(parse_subnet("subnet", "172.18.4.0/24")?))
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "subnet 172.18.4.0/24 overlaps existing pool 172.18.0.0/16");
//!
//! // State survives a restart.
//! let state = ipam.snapshot();
//! let again = Ipam::restore(IpamConfig::docker_defaults("host-1"), state.clone())?;
//! assert_eq!(again.snapshot(), state);
//! # Ok::<(), cnm_ipam::IpamError>(())
//! ```

mod addrset;
mod config;
mod error;
mod family;
mod ipam;
mod pool;

pub use config::{IpamConfig, PoolSpec, Subnets};
pub use error::{InRange, IpamError, Reservation, parse_cidr, parse_subnet};
pub use family::Family;
pub use ipam::{AddressRun, Ipam, IpamState, PoolRecord, PoolUsage};
pub use pool::{AddressRequest, LOCAL_ADDRESS_SPACE, Pool, PoolId, PoolRequest};
