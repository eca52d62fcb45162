//! [`Network`]: a handle to one network.

use std::fmt;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::endpoint::Endpoint;
use crate::model::network::{NetworkInner, NetworkPool};
use crate::ops::{self, run_op};
use crate::options::{EndpointOptions, JoinOption, JoinOptions, NetworkOptions};
use crate::sandbox::Sandbox;
use crate::spi::{IpamData, Scope};
use crate::state::{CoreRef, upgrade};
use crate::{CoreError, id};

/// A network. Cheap to clone; a handle to the controller's state that does not keep the
/// controller alive (after [`Controller::shutdown`](crate::Controller::shutdown) its operations
/// return [`CoreError::Shutdown`]; its getters keep answering with what it last was).
#[derive(Clone)]
pub struct Network {
    core: CoreRef,
    inner: Arc<NetworkInner>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("id", &id::short(&self.inner.id))
            .field("name", &self.inner.name)
            .field("driver", &self.inner.driver_name)
            .finish()
    }
}

impl Network {
    pub(crate) fn new(core: CoreRef, inner: Arc<NetworkInner>) -> Self {
        Self { core, inner }
    }

    /// The 64-hex-character id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The driver's name.
    pub fn driver(&self) -> &str {
        &self.inner.driver_name
    }

    /// The options it was created with.
    pub fn options(&self) -> &NetworkOptions {
        &self.inner.options
    }

    /// When it was created (kept in its record, so it survives restarts; the Unix epoch for a
    /// network recorded by a build that did not keep it).
    pub fn created(&self) -> std::time::SystemTime {
        self.inner.created
    }

    /// Its scope, as its driver declares it. A global network lives in the cluster store: every
    /// host of the cluster sees it, and its names, subnets and addresses are the cluster's.
    pub fn scope(&self) -> Scope {
        self.inner.capability.scope
    }

    /// What its driver allocated for it, once for the whole cluster
    /// ([`Driver::allocate_network`](crate::Driver::allocate_network)): a VNI, for an overlay.
    pub fn allocation(&self) -> &crate::DriverOptions {
        &self.inner.allocation
    }

    /// The IPv4 subnets and gateways.
    pub fn ipv4(&self) -> Vec<IpamData<Ipv4Net>> {
        self.inner
            .pools_v4
            .iter()
            .filter_map(NetworkPool::ipam_data_v4)
            .collect()
    }

    /// The IPv6 subnets and gateways.
    pub fn ipv6(&self) -> Vec<IpamData<Ipv6Net>> {
        self.inner
            .pools_v6
            .iter()
            .filter_map(NetworkPool::ipam_data_v6)
            .collect()
    }

    /// Every endpoint, sorted by name.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.inner
            .endpoints()
            .into_iter()
            .map(|e| Endpoint::new(self.core.clone(), e))
            .collect()
    }

    /// The endpoint with this full id, name, or unique id prefix (in that order, as Docker).
    pub fn endpoint(&self, key: &str) -> Result<Endpoint, CoreError> {
        let candidates: Vec<_> = self
            .inner
            .endpoints()
            .into_iter()
            .map(|e| (e.name.clone(), e.id.clone(), e))
            .collect();
        let inner = id::lookup("endpoint", key, candidates)?;
        Ok(Endpoint::new(self.core.clone(), inner))
    }

    /// Creates an endpoint: addresses are assigned here (static ones as asked, else the lowest
    /// free), the driver prepares it, and its record is written. Bad input changes nothing.
    pub async fn create_endpoint(
        &self,
        name: &str,
        options: EndpointOptions,
    ) -> Result<Endpoint, CoreError> {
        let net = self.inner.clone();
        let name = name.to_owned();
        let object = format!("{}/{}", self.inner.name, name);
        let inner = run_op(upgrade(&self.core)?, "create endpoint", object, |core| {
            ops::endpoint_create::create_endpoint(core, net, name, options)
        })
        .await?;
        Ok(Endpoint::new(self.core.clone(), inner))
    }

    /// Connects a sandbox to this network: creates endpoint `name` and joins it to `sandbox`,
    /// as one operation (a join that fails deletes the endpoint again, and any failure of that
    /// is attached to the join's error).
    pub async fn connect(
        &self,
        name: &str,
        sandbox: &Sandbox,
        options: EndpointOptions,
        join: impl IntoIterator<Item = JoinOption>,
    ) -> Result<Endpoint, CoreError> {
        let join = JoinOptions::from_options(join)?;
        let (net, sb, name) = (self.inner.clone(), sandbox.inner().clone(), name.to_owned());
        let object = format!("{} to sandbox {}", self.inner.name, sb.short());
        let inner = run_op(upgrade(&self.core)?, "connect", object, |core| {
            ops::connect::connect(core, net, sb, name, options, join)
        })
        .await?;
        Ok(Endpoint::new(self.core.clone(), inner))
    }

    /// Deletes the network; refused (naming them) while it has endpoints.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let net = self.inner.clone();
        run_op(
            upgrade(&self.core)?,
            "delete network",
            self.inner.name.clone(),
            |core| ops::network_delete::delete_network(core, net),
        )
        .await
    }
}
