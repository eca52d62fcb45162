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
//!
//! Published ports of such an endpoint (an overlay's) are carried by the gateway endpoint, as
//! Docker publishes an overlay container's ports through its docker_gwbridge endpoint: the
//! gateway endpoint publishes the union of the ports of the sandbox's endpoints that need it
//! ([`carried_ports`]), so the DNAT goes to the sandbox's address on the gateway network, on
//! the host where the sandbox lives. Every join, leave and [`publish_carried`] reconciles that
//! union; a failure to publish it undoes the operation that asked for it. (In a sandbox made
//! without the gateway network the ordinary rule applies: ports follow the default route.)

use std::sync::Arc;

use super::endpoint_create::create_endpoint;
use super::endpoint_delete::delete_endpoint;
use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::options::{EndpointOptions, NetworkOptions};
use crate::port::PortBinding;
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

/// Whether `j` is an endpoint whose published ports the gateway endpoint carries: one of a
/// non-internal network that needs the gateway network.
fn carries(spec: &GatewayNetwork, j: &Joined) -> bool {
    j.info.needs_gateway_network && !is_gateway(spec, &j.ep.network) && !j.ep.network.internal()
}

/// The ports the gateway endpoint publishes for a sandbox with `joined`: the union, in join
/// order, of the ports of the endpoints it carries.
fn carried_ports(spec: &GatewayNetwork, joined: &[Joined]) -> Vec<PortBinding> {
    let mut ports: Vec<PortBinding> = Vec::new();
    for j in joined.iter().filter(|j| carries(spec, j)) {
        for b in j.ep.port_bindings() {
            if !ports.contains(&b) {
                ports.push(b);
            }
        }
    }
    ports
}

/// Whether the gateway endpoint will carry the published ports of `j`, the last of `joined`
/// (the sandbox's endpoints with `j` joined): `j` needs the gateway network and the sandbox will
/// use it (no other endpoint gives the default route). `Err` names why not when `j` needs
/// the gateway network but another endpoint gives the route; `Ok(false)` when `j` does not need
/// it (the ordinary rule of [`super::gateway::check_ports_follow_gateway`] applies).
pub(crate) fn ports_carried(
    core: &Core,
    sb: &SandboxInner,
    joined: &[Joined],
    j: &Joined,
    ports: &[PortBinding],
) -> Result<bool, CoreError> {
    let Some(spec) = &core.gateway_network else {
        return Ok(false);
    };
    if sb.options.no_gateway_network || !carries(spec, j) {
        return Ok(false);
    }
    if needed(spec, joined) {
        return Ok(true);
    }
    let gateway = joined
        .iter()
        .filter(|o| !is_gateway(spec, &o.ep.network) && o.ep.id != j.ep.id)
        .find(|o| {
            let c = o.candidate();
            c.has_gateway && !c.no_gateway_service
        })
        .map(|o| o.ep.name.clone());
    Err(CoreError::PortsNotPublishable {
        endpoint: j.ep.name.clone(),
        network: j.ep.network.name.clone(),
        ports: ports.iter().map(ToString::to_string).collect(),
        reason: format!(
            "the ports of an endpoint on network {} are published through the gateway network              {}, which sandbox {} (container {}) does not use while endpoint {} gives its              default route; publish them on that endpoint's network",
            j.ep.network.name,
            spec.name,
            sb.short(),
            sb.container_id,
            gateway.as_deref().unwrap_or("-"),
        ),
        gateway,
    })
}

/// `joined` without the endpoints on the gateway network: what decides whether an endpoint
/// joining now will give the default route (the gateway endpoint goes when another does).
pub(crate) fn without_gateway_network(core: &Core, joined: &[Joined]) -> Vec<Joined> {
    joined
        .iter()
        .filter(|j| {
            core.gateway_network
                .as_ref()
                .is_none_or(|spec| !is_gateway(spec, &j.ep.network))
        })
        .cloned()
        .collect()
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
        (true, None) => attach(core, sb, spec, carried_ports(spec, &joined)).await,
        (true, Some(ep)) => {
            let ports = carried_ports(spec, &joined);
            if ep.port_bindings() == ports {
                return Ok(());
            }
            super::gateway::replace_ports(core, sb, &ep, ports)
                .await
                .map(drop)
        }
        (false, Some(ep)) => detach(core, sb, ep).await,
        (false, None) => Ok(()),
    }
}

/// Replaces the ports of `ep`, an endpoint whose ports the gateway endpoint carries: its record
/// first, then the gateway endpoint publishes the new union; if that fails, the record is put
/// back (and the gateway endpoint kept its ports). Returns what the gateway endpoint publishes
/// now for `ep`'s bindings (host ports resolved). `Ok(None)` when `ep`'s ports are not carried
/// (the caller applies the ordinary rule).
pub(crate) async fn publish_carried(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    bindings: &[PortBinding],
) -> Result<Option<Vec<PortBinding>>, CoreError> {
    let Some(spec) = &core.gateway_network else {
        return Ok(None);
    };
    if sb.options.no_gateway_network {
        return Ok(None);
    }
    let old = {
        let locked = super::lock_pair(sb, ep).await?;
        let st = &locked.state;
        let (pos, ep_version) = locked.joined_at(sb, ep)?;
        if !carries(spec, &st.joined[pos]) {
            return Ok(None);
        }
        if !bindings.is_empty() {
            ports_carried(core, sb, &st.joined, &st.joined[pos], bindings)?;
        }
        replace_ports(core, sb, ep, &locked, ep_version, bindings.to_vec()).await?
    };
    if let Err(e) = reconcile(core, sb).await {
        let cleanup = restore_ports(core, sb, ep, old).await;
        return Err(e.with_cleanup(cleanup.err().into_iter().collect()));
    }
    // What the gateway endpoint publishes for these bindings, host ports resolved.
    let st = sb.state();
    let published: Vec<PortBinding> = st
        .joined
        .iter()
        .filter(|j| is_gateway(spec, &j.ep.network))
        .flat_map(|j| j.published.iter().copied())
        .filter(|p| {
            bindings.iter().any(|b| {
                b.proto == p.proto
                    && b.container_port == p.container_port
                    && b.host_ip == p.host_ip
                    && (b.host_port.is_none() || b.host_port == p.host_port)
            })
        })
        .collect();
    Ok(Some(published))
}

/// Puts `ep`'s recorded ports back after the gateway endpoint could not publish its new ones.
async fn restore_ports(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    old: Vec<PortBinding>,
) -> Result<(), CoreError> {
    let locked = super::lock_pair(sb, ep).await?;
    let (_, ep_version) = locked.joined_at(sb, ep)?;
    replace_ports(core, sb, ep, &locked, ep_version, old).await?;
    Ok(())
}

/// Records `bindings` as `ep`'s requested ports and commits the join state (`locked`, with
/// `ep` at `ep_version`); returns the ports it replaced. On a failed commit `ep` keeps its
/// ports and nothing changed.
async fn replace_ports(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    locked: &super::Pair<'_>,
    ep_version: u64,
    bindings: Vec<PortBinding>,
) -> Result<Vec<PortBinding>, CoreError> {
    let st = &locked.state;
    let old = std::mem::replace(&mut ep.state().port_bindings, bindings);
    match super::commit_join_state(
        core,
        sb,
        &st.joined,
        st.gateway.as_deref(),
        st.version,
        ep,
        ep_version,
        Some(&sb.id),
    )
    .await
    {
        Ok(v) => {
            ep.state().version = v;
            sb.state().version = v;
            Ok(old)
        }
        Err(e) => {
            ep.state().port_bindings = old;
            Err(e)
        }
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
    ports: Vec<PortBinding>,
) -> Result<(), CoreError> {
    let net = network(core, spec).await?;
    let options = ports
        .into_iter()
        .fold(EndpointOptions::default(), EndpointOptions::publish);
    let ep = create_endpoint(core.clone(), net, endpoint_name(sb), options).await?;
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
