//! An endpoint as the controller holds it: its addresses (and the pools they came from), its
//! options as given, its record, and which sandbox it is joined to.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cnm_ipam::PoolId;
use cnm_types::MacAddress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::network::NetworkInner;
use crate::CoreError;
use crate::options::EndpointOptions;
use crate::port::PortBinding;
use crate::record::{self, EndpointRecord};
use crate::spi::ParsedOptions;

/// An address of an endpoint and the IPAM pool it is reserved in (none for an address a driver
/// gave outside the network's pools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assigned<N> {
    pub(crate) addr: N,
    pub(crate) pool: Option<PoolId>,
}

impl<N: Copy + Into<IpNet>> Assigned<N> {
    /// The address a record keeps: held in a pool, or outside every pool.
    fn from_record(pooled: &Option<(N, PoolId)>, unpooled: Option<N>) -> Option<Self> {
        match (pooled, unpooled) {
            (Some((addr, pool)), _) => Some(Self {
                addr: *addr,
                pool: Some(pool.clone()),
            }),
            (None, Some(addr)) => Some(Self { addr, pool: None }),
            (None, None) => None,
        }
    }

    /// The address without its prefix, and its pool, when IPAM holds it.
    pub(crate) fn reserved(&self) -> Option<(IpAddr, &PoolId)> {
        let net: IpNet = self.addr.into();
        self.pool.as_ref().map(|p| (net.addr(), p))
    }
}

/// An endpoint's mutable state.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// The id of the sandbox it is joined to.
    pub(crate) sandbox: Option<String>,
    pub(crate) deleted: bool,
    /// The store version of its record.
    pub(crate) version: u64,
    /// The ports it publishes while it is its sandbox's gateway endpoint: the options' at
    /// creation, replaced by [`crate::Endpoint::publish_ports`]; kept in its record.
    pub(crate) port_bindings: Vec<PortBinding>,
}

/// One endpoint.
pub(crate) struct EndpointInner {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) network: Arc<NetworkInner>,
    pub(crate) ipv4: Option<Assigned<Ipv4Net>>,
    pub(crate) ipv6: Option<Assigned<Ipv6Net>>,
    pub(crate) mac: Option<MacAddress>,
    /// The options as the user gave them.
    pub(crate) options: EndpointOptions,
    /// The driver's options as the driver parsed them.
    pub(crate) parsed: ParsedOptions,
    /// The record as created; joins and leaves rewrite `sandbox_id`.
    record: EndpointRecord,
    /// Serialises join, leave and delete of this endpoint (taken after the sandbox's).
    pub(crate) op: tokio::sync::Mutex<()>,
    state: Mutex<EndpointState>,
}

impl EndpointInner {
    /// The endpoint its record describes, written at `version`. The one constructor, for a new
    /// endpoint and a reloaded one alike.
    pub(crate) fn from_record(
        record: EndpointRecord,
        network: Arc<NetworkInner>,
        options: EndpointOptions,
        parsed: ParsedOptions,
        version: u64,
    ) -> Self {
        let ipv4 = Assigned::from_record(&record.ipv4, record.unpooled_ipv4);
        let ipv6 = Assigned::from_record(&record.ipv6, record.unpooled_ipv6);
        Self {
            id: record.id.clone(),
            name: record.name.clone(),
            mac: record.mac,
            network,
            ipv4,
            ipv6,
            options,
            parsed,
            state: Mutex::new(EndpointState {
                sandbox: record.sandbox_id.clone(),
                deleted: false,
                version,
                port_bindings: record.port_bindings.clone(),
            }),
            op: tokio::sync::Mutex::new(()),
            record,
        }
    }

    /// The state; held only for a few field updates, never across `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, EndpointState> {
        crate::sync::lock(&self.state)
    }

    pub(crate) fn key(&self) -> String {
        record::endpoint_key(&self.network.id, &self.id)
    }

    /// The record with `sandbox_id` set (and the ports it publishes now).
    pub(crate) fn record(&self, sandbox_id: Option<&str>) -> EndpointRecord {
        let mut r = self.record.clone();
        r.sandbox_id = sandbox_id.map(str::to_owned);
        r.port_bindings = self.port_bindings();
        r
    }

    /// The ports it publishes while it is its sandbox's gateway endpoint.
    pub(crate) fn port_bindings(&self) -> Vec<PortBinding> {
        self.state().port_bindings.clone()
    }

    /// Its addresses, without prefix.
    pub(crate) fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.ipv4.as_ref().map(|a| IpAddr::V4(a.addr.addr()));
        let v6 = self.ipv6.as_ref().map(|a| IpAddr::V6(a.addr.addr()));
        v4.into_iter().chain(v6)
    }

    /// Its addresses with their prefix length.
    pub(crate) fn networks(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.ipv4.as_ref().map(|a| IpNet::V4(a.addr));
        let v6 = self.ipv6.as_ref().map(|a| IpNet::V6(a.addr));
        v4.into_iter().chain(v6)
    }

    /// Its addresses that IPAM holds, with their pools.
    pub(crate) fn reserved(&self) -> impl Iterator<Item = (IpAddr, &PoolId)> + '_ {
        let v4 = self.ipv4.as_ref().and_then(Assigned::reserved);
        let v6 = self.ipv6.as_ref().and_then(Assigned::reserved);
        v4.into_iter().chain(v6)
    }

    pub(crate) fn deleted_error(&self) -> CoreError {
        CoreError::Deleted {
            what: "endpoint",
            name: self.name.clone(),
        }
    }
}
