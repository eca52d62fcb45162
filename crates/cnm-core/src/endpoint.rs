//! [`Endpoint`]: a handle to one endpoint; join, leave and delete.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cnm_ipam::PoolId;
use cnm_types::MacAddress;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::CoreError;
use crate::controller::{ControllerInner, run_op};
use crate::id;
use crate::network::{Network, NetworkInner};
use crate::options::{EndpointOptions, JoinOption, JoinOptions};
use crate::record::{self, EndpointRecord};
use crate::sandbox::{self, Sandbox};
use crate::store::Expect;
use crate::undo::Errors;

/// An endpoint's mutable state, behind its lock.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// The id of the sandbox it is joined to.
    pub(crate) sandbox: Option<String>,
    pub(crate) deleted: bool,
    /// The store version of its record.
    pub(crate) version: u64,
}

pub(crate) struct EndpointInner {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) network: Arc<NetworkInner>,
    pub(crate) ipv4: Option<(Ipv4Net, PoolId)>,
    pub(crate) ipv6: Option<(Ipv6Net, PoolId)>,
    pub(crate) mac: Option<MacAddress>,
    pub(crate) options: EndpointOptions,
    /// The record as created; joins and leaves rewrite `sandbox_id`.
    record: EndpointRecord,
    pub(crate) state: tokio::sync::Mutex<EndpointState>,
}

impl EndpointInner {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        name: String,
        network: Arc<NetworkInner>,
        ipv4: Option<(Ipv4Net, PoolId)>,
        ipv6: Option<(Ipv6Net, PoolId)>,
        mac: Option<MacAddress>,
        options: EndpointOptions,
        record: EndpointRecord,
        version: u64,
    ) -> Self {
        Self {
            id,
            name,
            network,
            ipv4,
            ipv6,
            mac,
            options,
            record,
            state: tokio::sync::Mutex::new(EndpointState {
                sandbox: None,
                deleted: false,
                version,
            }),
        }
    }

    pub(crate) fn key(&self) -> String {
        record::endpoint_key(&self.network.id, &self.id)
    }

    /// The record with `sandbox_id` set.
    pub(crate) fn record(&self, sandbox_id: Option<&str>) -> EndpointRecord {
        let mut r = self.record.clone();
        r.sandbox_id = sandbox_id.map(str::to_owned);
        r
    }

    pub(crate) fn deleted_error(&self) -> CoreError {
        CoreError::Deleted {
            what: "endpoint",
            name: self.name.clone(),
        }
    }
}

/// An endpoint. Cheap to clone; a handle to the controller's state.
#[derive(Clone)]
pub struct Endpoint {
    ctl: Arc<ControllerInner>,
    inner: Arc<EndpointInner>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &id::short(&self.inner.id))
            .field("name", &self.inner.name)
            .field("network", &self.inner.network.name)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(ctl: Arc<ControllerInner>, inner: Arc<EndpointInner>) -> Self {
        Self { ctl, inner }
    }

    /// The 64-hex-character id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The network it belongs to.
    pub fn network(&self) -> Network {
        Network::new(self.ctl.clone(), self.inner.network.clone())
    }

    /// The IPv4 address with its prefix length.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.inner.ipv4.as_ref().map(|(a, _)| *a)
    }

    /// The IPv6 address with its prefix length.
    pub fn ipv6(&self) -> Option<Ipv6Net> {
        self.inner.ipv6.as_ref().map(|(a, _)| *a)
    }

    /// The MAC (asked for, or chosen by the driver).
    pub fn mac(&self) -> Option<MacAddress> {
        self.inner.mac
    }

    /// The options it was created with.
    pub fn options(&self) -> &EndpointOptions {
        &self.inner.options
    }

    /// The id of the sandbox it is joined to.
    pub async fn sandbox_id(&self) -> Option<String> {
        self.inner.state.lock().await.sandbox.clone()
    }

    /// Joins the sandbox of `container_id`, creating the sandbox if the container has none
    /// (libnetwork's convenience); returns the sandbox key, the path of its network namespace.
    ///
    /// Sandbox options (host name, DNS, extra hosts) apply when this call creates the sandbox.
    pub async fn join(
        &self,
        container_id: &str,
        options: impl IntoIterator<Item = JoinOption>,
    ) -> Result<PathBuf, CoreError> {
        let opts = JoinOptions::from_options(options)?;
        let (ctl, ep, cid) = (
            self.ctl.clone(),
            self.inner.clone(),
            container_id.to_owned(),
        );
        let object = format!("{} to container {}", self.inner.name, container_id);
        run_op("join", object, async move {
            let priority = opts.gateway_priority;
            let (sb, created) = sandbox::find_or_create(&ctl, &cid, opts, true).await?;
            match sandbox::join(&ctl, &sb, &ep, priority).await {
                Ok(()) => Ok(sb.key.clone()),
                Err(e) if created => {
                    // The sandbox was made for this join: take it away again.
                    let cleanup = sandbox::delete(ctl.clone(), sb.clone()).await;
                    Err(crate::undo::with_cleanup(
                        e,
                        cleanup.err().into_iter().collect(),
                    ))
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Joins an existing sandbox.
    pub async fn join_sandbox(
        &self,
        sandbox: &Sandbox,
        options: impl IntoIterator<Item = JoinOption>,
    ) -> Result<(), CoreError> {
        let opts = JoinOptions::from_options(options)?;
        let (ctl, ep, sb) = (
            self.ctl.clone(),
            self.inner.clone(),
            sandbox.inner().clone(),
        );
        let object = format!("{} to sandbox {}", self.inner.name, id::short(&sb.id));
        run_op("join", object, async move {
            sandbox::join(&ctl, &sb, &ep, opts.gateway_priority).await
        })
        .await
    }

    /// Leaves the sandbox of `container_id`.
    pub async fn leave(&self, container_id: &str) -> Result<(), CoreError> {
        let sandbox = Sandbox::by_container(&self.ctl, container_id)?;
        self.leave_sandbox(&sandbox).await
    }

    /// Leaves a sandbox.
    pub async fn leave_sandbox(&self, sandbox: &Sandbox) -> Result<(), CoreError> {
        let (ctl, ep, sb) = (
            self.ctl.clone(),
            self.inner.clone(),
            sandbox.inner().clone(),
        );
        let object = format!("{} from sandbox {}", self.inner.name, id::short(&sb.id));
        run_op("leave", object, async move {
            sandbox::leave(&ctl, &sb, &ep).await
        })
        .await
    }

    /// Deletes the endpoint: refused while it is joined; releases its addresses.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let (ctl, ep) = (self.ctl.clone(), self.inner.clone());
        run_op("delete endpoint", self.inner.name.clone(), delete(ctl, ep)).await
    }
}

async fn delete(ctl: Arc<ControllerInner>, ep: Arc<EndpointInner>) -> Result<(), CoreError> {
    let mut st = ep.state.lock().await;
    if st.deleted {
        return Err(ep.deleted_error());
    }
    if let Some(sb) = &st.sandbox {
        return Err(CoreError::EndpointInUse {
            endpoint: ep.name.clone(),
            sandbox: id::short(sb).to_owned(),
        });
    }
    let net = &ep.network;
    net.driver
        .delete_endpoint(&net.id, &ep.id)
        .await
        .map_err(|e| CoreError::driver("delete endpoint", &ep.name, e))?;
    // Past this point the endpoint is gone from the data plane: finish every step, report all.
    // A crash before the record goes leaves the record: the restart brings the endpoint back.
    crate::crash::point("endpoint-delete:after-driver");
    st.deleted = true;
    let mut errors = Errors::default();
    let key = ep.key();
    errors.check(
        ctl.store
            .delete(&key, Expect::Version(st.version))
            .await
            .map_err(|e| CoreError::store("delete", &key, e)),
    );
    let v4 = ep
        .ipv4
        .as_ref()
        .map(|(a, p)| (std::net::IpAddr::V4(a.addr()), p));
    let v6 = ep
        .ipv6
        .as_ref()
        .map(|(a, p)| (std::net::IpAddr::V6(a.addr()), p));
    crate::crash::point("endpoint-delete:after-record");
    for (addr, pool) in v4.into_iter().chain(v6) {
        errors.check(
            ctl.ipam
                .release_address(pool, addr)
                .await
                .map_err(|e| CoreError::ipam("release address", addr.to_string(), e)),
        );
    }
    {
        let mut st = net.state();
        st.endpoints.remove(&ep.name);
        st.release_mac(ep.mac, &ep.name);
    }
    tracing::info!(endpoint = id::short(&ep.id), name = %ep.name, "endpoint deleted");
    errors.into_result()
}
