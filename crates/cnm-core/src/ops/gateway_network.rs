//! The gateway network: a way out for sandboxes whose endpoints' drivers give none (an
//! overlay's), as libnetwork's `docker_gwbridge` (its `sandbox.needDefaultGW`,
//! `setupDefaultGW` and `clearDefaultGW`).
//!
//! A sandbox needs it when one of its endpoints is on a non-internal network whose driver said
//! [`JoinInfo::needs_gateway_network`](crate::spi::JoinInfo) and no other endpoint gives the
//! default route. Then, right after that join, the sandbox gets an endpoint
//! `gateway_<sandbox>` on the gateway network (created on first need from the builder's
//! [`GatewayNetwork`]; a bridge with inter-container traffic off and masquerading on in cnmd,
//! so the bridge driver's firewall does the NAT and two overlays never meet through it); the
//! join and this one are undone together. After a leave (or a join that brings a default
//! route of its own) that leaves no need, the gateway endpoint leaves and is deleted. The
//! gateway network itself stays, and is adopted on restart as any network. A sandbox made with
//! [`JoinOption::NoGatewayNetwork`](crate::JoinOption) never gets one.

use std::sync::Arc;

use super::endpoint_create::create_endpoint;
use super::endpoint_delete::delete_endpoint;
use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::options::{EndpointOptions, NetworkOptions};
use crate::state::Core;
use crate::undo::Cleanup;

/// The gateway network as the builder configured it.
#[derive(Debug, Clone)]
pub(crate) struct GatewayNetwork {
    pub(crate) name: String,
    pub(crate) driver: String,
    pub(crate) options: NetworkOptions,
    /// Serialises its creation: joins racing for it all get the one network.
    pub(crate) creating: Arc<tokio::sync::Mutex<()>>,
}

fn is_gateway(spec: &GatewayNetwork, net: &NetworkInner) -> bool {
    net.name == spec.name
}

/// Whether a sandbox with `joined` needs its gateway endpoint (libnetwork's needDefaultGW).
fn needed(spec: &GatewayNetwork, joined: &[Joined]) -> bool {
    let mut need = false;
    for j in joined {
        if is_gateway(spec, &j.ep.network) || j.ep.network.internal() {
            continue;
        }
        let c = j.candidate();
        if c.has_gateway && !c.no_gateway_service {
            return false;
        }
        need |= j.info.needs_gateway_network;
    }
    need
}

/// The endpoint's name on the gateway network.
fn endpoint_name(sb: &SandboxInner) -> String {
    format!("gateway_{}", sb.short())
}

/// Attaches the sandbox to the gateway network, or detaches it, as its endpoints now need.
pub(crate) async fn reconcile(core: &Arc<Core>, sb: &Arc<SandboxInner>) -> Result<(), CoreError> {
    let Some(spec) = &core.gateway_network else {
        return Ok(());
    };
    if sb.options.no_gateway_network {
        return Ok(());
    }
    let (joined, deleted) = {
        let st = sb.state();
        (st.joined.clone(), st.deleted)
    };
    if deleted {
        return Ok(());
    }
    let present = joined
        .iter()
        .find(|j| is_gateway(spec, &j.ep.network))
        .map(|j| j.ep.clone());
    match (needed(spec, &joined), present) {
        (true, None) => attach(core, sb, spec).await,
        (false, Some(ep)) => detach(core, sb, ep).await,
        _ => Ok(()),
    }
}

/// The gateway network, created when missing (a racing creation by another join is fine).
async fn network(core: &Arc<Core>, spec: &GatewayNetwork) -> Result<Arc<NetworkInner>, CoreError> {
    let find = || {
        core.networks
            .iter()
            .find(|n| n.value().name == spec.name)
            .map(|n| n.value().clone())
    };
    if let Some(net) = find() {
        return Ok(net);
    }
    let _creating = spec.creating.lock().await;
    if let Some(net) = find() {
        return Ok(net);
    }
    match super::network_create::create_network(
        core.clone(),
        spec.driver.clone(),
        spec.name.clone(),
        spec.options.clone(),
    )
    .await
    {
        Ok(net) => {
            tracing::info!(network = %spec.name, driver = %spec.driver, "gateway network created");
            Ok(net)
        }
        Err(e) => Err(e),
    }
}

async fn attach(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    spec: &GatewayNetwork,
) -> Result<(), CoreError> {
    let net = network(core, spec).await?;
    let ep = create_endpoint(
        core.clone(),
        net,
        endpoint_name(sb),
        EndpointOptions::default(),
    )
    .await?;
    match super::join::join_one(core, sb, &ep, 0).await {
        Ok(()) => {
            tracing::debug!(sandbox = sb.short(), "joined the gateway network");
            Ok(())
        }
        Err(e) => {
            let cleanup = delete_endpoint(core.clone(), ep).await;
            Err(e.with_cleanup(cleanup.err().into_iter().collect()))
        }
    }
}

/// Deletes the gateway endpoint among `freed`, the endpoints a deleted sandbox had joined.
pub(crate) async fn delete_freed(
    core: &Arc<Core>,
    freed: &[Arc<EndpointInner>],
) -> Result<(), CoreError> {
    let Some(spec) = &core.gateway_network else {
        return Ok(());
    };
    for ep in freed.iter().filter(|ep| is_gateway(spec, &ep.network)) {
        delete_endpoint(core.clone(), ep.clone()).await?;
    }
    Ok(())
}

async fn detach(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: Arc<EndpointInner>,
) -> Result<(), CoreError> {
    super::leave::leave_one(core, sb, &ep).await?;
    delete_endpoint(core.clone(), ep).await?;
    tracing::debug!(sandbox = sb.short(), "left the gateway network");
    Ok(())
}
