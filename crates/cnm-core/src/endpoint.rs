//! [`Endpoint`]: a handle to one endpoint.

use std::fmt;
use std::sync::Arc;

use cnm_types::MacAddress;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::model::endpoint::EndpointInner;
use crate::network::Network;
use crate::ops::{self, run_op};
use crate::options::{EndpointOptions, JoinOption, JoinOptions};
use crate::port::PortBinding;
use crate::sandbox::Sandbox;
use crate::state::{CoreRef, upgrade};
use crate::{CoreError, id};

/// An endpoint. Cheap to clone; a handle to the controller's state that does not keep the
/// controller alive (see [`Network`]).
#[derive(Clone)]
pub struct Endpoint {
    core: CoreRef,
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
    pub(crate) fn new(core: CoreRef, inner: Arc<EndpointInner>) -> Self {
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

    /// The network it belongs to.
    pub fn network(&self) -> Network {
        Network::new(self.core.clone(), self.inner.network.clone())
    }

    /// The IPv4 address with its prefix length.
    pub fn ipv4(&self) -> Option<Ipv4Net> {
        self.inner.ipv4.as_ref().map(|a| a.addr)
    }

    /// The IPv6 address with its prefix length.
    pub fn ipv6(&self) -> Option<Ipv6Net> {
        self.inner.ipv6.as_ref().map(|a| a.addr)
    }

    /// The MAC (asked for, or chosen by the driver).
    pub fn mac(&self) -> Option<MacAddress> {
        self.inner.mac
    }

    /// The options it was created with, as given (they survive a restart).
    pub fn options(&self) -> &EndpointOptions {
        &self.inner.options
    }

    /// The names the controller's embedded DNS answers for it on its network while it is joined
    /// (Docker's `DNSNames`): its name, its aliases and its DNS names; empty when the embedded
    /// DNS is off or does not serve its network (Docker's default `bridge`, `none`). Its aliases
    /// as given (Docker's `Aliases`) are in [`EndpointOptions::aliases`].
    pub fn dns_names(&self) -> Vec<String> {
        match upgrade(&self.core) {
            Ok(core) => crate::dns::published_names(&core, &self.inner),
            Err(_) => Vec::new(),
        }
    }

    /// The id of the sandbox it is joined to.
    pub fn sandbox_id(&self) -> Option<String> {
        self.inner.state().sandbox.clone()
    }

    /// Joins the sandbox of `container_id`, creating the sandbox if the container has none
    /// (libnetwork's convenience; one created for a join that fails is deleted again), and
    /// returns the sandbox: [`Sandbox::key`] is the path of its network namespace.
    ///
    /// Sandbox options (host name, DNS, extra hosts) apply when this call creates the sandbox.
    pub async fn join(
        &self,
        container_id: &str,
        options: impl IntoIterator<Item = JoinOption>,
    ) -> Result<Sandbox, CoreError> {
        let opts = JoinOptions::from_options(options)?;
        let (ep, cid) = (self.inner.clone(), container_id.to_owned());
        let object = format!("{} to container {}", self.inner.name, container_id);
        let sb = run_op(upgrade(&self.core)?, "join", object, |core| {
            ops::connect::join_container(core, ep, cid, opts)
        })
        .await?;
        Ok(Sandbox::new(self.core.clone(), sb))
    }

    /// Joins an existing sandbox.
    pub async fn join_sandbox(
        &self,
        sandbox: &Sandbox,
        options: impl IntoIterator<Item = JoinOption>,
    ) -> Result<(), CoreError> {
        let opts = JoinOptions::from_options(options)?;
        let (ep, sb) = (self.inner.clone(), sandbox.inner().clone());
        let object = format!("{} to sandbox {}", self.inner.name, sb.short());
        run_op(upgrade(&self.core)?, "join", object, |core| async move {
            ops::join::join(&core, &sb, &ep, opts.gateway_priority).await
        })
        .await
    }

    /// Leaves the sandbox of `container_id`.
    pub async fn leave(&self, container_id: &str) -> Result<(), CoreError> {
        let sb = upgrade(&self.core)?.require_sandbox_of(container_id)?;
        self.leave_sandbox(&Sandbox::new(self.core.clone(), sb))
            .await
    }

    /// Leaves a sandbox.
    pub async fn leave_sandbox(&self, sandbox: &Sandbox) -> Result<(), CoreError> {
        let (ep, sb) = (self.inner.clone(), sandbox.inner().clone());
        let object = format!("{} from sandbox {}", self.inner.name, sb.short());
        run_op(upgrade(&self.core)?, "leave", object, |core| async move {
            ops::leave::leave(&core, &sb, &ep).await
        })
        .await
    }

    /// The ports it publishes while it is its sandbox's gateway endpoint: its options' at
    /// creation, or what [`Endpoint::publish_ports`] set since.
    pub fn port_bindings(&self) -> Vec<PortBinding> {
        self.inner.port_bindings()
    }

    /// Replaces the ports a joined endpoint publishes (libnetwork's
    /// `ProgramExternalConnectivity` for a container already running; an empty list withdraws
    /// them). Only the sandbox's gateway endpoint takes ports: published ports follow the
    /// default route. The ports of an endpoint that needs the gateway network (an overlay's)
    /// are published by its sandbox's endpoint on that network, to the sandbox's address there. Returns them as made (ephemeral host ports resolved); a failure leaves the
    /// old ports published and the records unchanged.
    pub async fn publish_ports(
        &self,
        bindings: Vec<PortBinding>,
    ) -> Result<Vec<PortBinding>, CoreError> {
        let core = upgrade(&self.core)?;
        let not_joined = || CoreError::NotJoined {
            endpoint: self.inner.name.clone(),
            sandbox: "none".to_owned(),
        };
        let sid = self.inner.state().sandbox.clone().ok_or_else(not_joined)?;
        let sb = core
            .sandboxes
            .get(&sid)
            .map(|s| s.value().clone())
            .ok_or_else(not_joined)?;
        let ep = self.inner.clone();
        let object = format!("{} in sandbox {}", self.inner.name, sb.short());
        run_op(core, "publish ports", object, |core| async move {
            ops::gateway::publish_ports(&core, &sb, &ep, bindings).await
        })
        .await
    }

    /// Deletes the endpoint: refused while it is joined; releases its addresses.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let ep = self.inner.clone();
        run_op(
            upgrade(&self.core)?,
            "delete endpoint",
            self.inner.name.clone(),
            |core| ops::endpoint_delete::delete_endpoint(core, ep),
        )
        .await
    }
}
