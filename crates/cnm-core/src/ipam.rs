//! The IPAM SPI: what the controller asks of an address manager, and its implementation for the
//! default [`cnm_ipam::Ipam`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use cnm_ipam::{AddressRequest, IpamError, IpamState, Pool, PoolId, PoolRequest};
use ipnet::IpNet;

/// An address manager: pools (subnets) and the addresses in them.
///
/// Object-safe and async so a remote IPAM plugin can implement it too; the request and response
/// types are the default IPAM's.
#[async_trait]
pub trait Ipam: Send + Sync + fmt::Debug {
    /// The IPAM driver's name (`default` for the built-in one).
    fn name(&self) -> &str;

    /// Allocates a pool: the requested subnet, or a free default one avoiding `req.exclude`.
    async fn request_pool(&self, req: &PoolRequest) -> Result<Pool, IpamError>;

    /// Releases a pool and every address in it.
    async fn release_pool(&self, pool: &PoolId) -> Result<(), IpamError>;

    /// Allocates an address of a pool, returned with the pool's prefix length.
    async fn request_address(&self, pool: &PoolId, req: AddressRequest)
    -> Result<IpNet, IpamError>;

    /// Releases an address.
    async fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), IpamError>;

    /// Whether a restarted controller requests every recorded pool, gateway and address again
    /// (libnetwork's `RequiresRequestReplay`). True for an IPAM whose state lives in memory, as
    /// the default's does; an IPAM that keeps its own answers false and is given its pools back
    /// with [`Ipam::adopt_pool`] instead.
    fn requires_request_replay(&self) -> bool {
        true
    }

    /// The IPAM's own id of a pool it handed out (a plugin's `PoolID`), kept in the network's
    /// record so that a restarted controller can [adopt](Ipam::adopt_pool) the pool. `None`
    /// when it has none.
    fn external_pool_id(&self, pool: &PoolId) -> Option<String> {
        let _ = pool;
        None
    }

    /// After a restart without replay: takes back a pool as it was recorded, with the addresses
    /// that were allocated in it, without requesting anything again. The default, for an IPAM
    /// that needs replay, refuses.
    async fn adopt_pool(&self, pool: &AdoptPool<'_>) -> Result<(), IpamError> {
        Err(IpamError::PoolNotFound {
            id: pool.id.clone(),
        })
    }

    /// The state to persist, if this IPAM keeps its state in the controller's store (the default
    /// IPAM does; a remote plugin keeps its own and answers `None`).
    async fn snapshot(&self) -> Option<IpamState> {
        None
    }
}

/// A pool as a network's record keeps it, for [`Ipam::adopt_pool`] after a restart.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AdoptPool<'a> {
    /// The pool as it was requested.
    pub request: &'a PoolRequest,
    /// The pool's id as it was given.
    pub id: &'a PoolId,
    /// The IPAM's own id of the pool ([`Ipam::external_pool_id`]), if it has one.
    pub external_id: Option<&'a str>,
    /// The addresses allocated in the pool (gateway included).
    pub addresses: &'a [IpAddr],
}

/// Finds an IPAM driver the controller does not have, by name, the moment a network asks for
/// it (a remote IPAM plugin: `cnm_driver_remote::PluginIpamResolver`). What it finds serves
/// every network that names it, for the controller's life.
#[async_trait]
pub trait IpamResolver: Send + Sync + fmt::Debug {
    /// The IPAM driver called `name`; an error when there is none (fast: no waiting for one
    /// that may yet appear).
    async fn resolve(&self, name: &str) -> Result<Arc<dyn Ipam>, IpamError>;
}

#[async_trait]
impl Ipam for cnm_ipam::Ipam {
    fn name(&self) -> &str {
        "default"
    }

    async fn request_pool(&self, req: &PoolRequest) -> Result<Pool, IpamError> {
        cnm_ipam::Ipam::request_pool(self, req)
    }

    async fn release_pool(&self, pool: &PoolId) -> Result<(), IpamError> {
        cnm_ipam::Ipam::release_pool(self, pool)
    }

    async fn request_address(
        &self,
        pool: &PoolId,
        req: AddressRequest,
    ) -> Result<IpNet, IpamError> {
        cnm_ipam::Ipam::request_address(self, pool, req)
    }

    async fn release_address(&self, pool: &PoolId, addr: IpAddr) -> Result<(), IpamError> {
        cnm_ipam::Ipam::release_address(self, pool, addr)
    }

    async fn snapshot(&self) -> Option<IpamState> {
        Some(cnm_ipam::Ipam::snapshot(self))
    }
}
