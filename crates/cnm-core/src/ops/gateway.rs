//! The effects of a sandbox's gateway choice ([`crate::gateway`] makes the choice, purely): the
//! default route through the gateway endpoint, and the published ports that follow it.

use cnm_types::FailedTo;
use std::sync::Arc;

use tracing::Instrument as _;

use cnm_sandbox::RouteSpec;

use crate::CoreError;
use crate::gateway::{self, GatewayCandidate, JoinOutcome};
use crate::model::endpoint::EndpointInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::port::PortBinding;
use crate::spi::PublishRequest;
use crate::state::Core;
use crate::undo::Cleanup as _;
use crate::undo::Undo;

pub(crate) async fn add_routes(
    core: &Core,
    sb: &SandboxInner,
    routes: &[RouteSpec],
    what: &'static str,
) -> Result<(), CoreError> {
    for r in routes {
        core.kernel.add_route(&sb.ns, r).await.map_err(|e| {
            CoreError::failed(
                what,
                format!("{} in sandbox {}", r.destination, sb.short()),
                e,
            )
        })?;
    }
    Ok(())
}

pub(crate) async fn del_routes(
    core: &Core,
    sb: &SandboxInner,
    routes: &[RouteSpec],
) -> Result<(), CoreError> {
    for r in routes {
        core.kernel.del_route(&sb.ns, r).await.map_err(|e| {
            CoreError::failed(
                "delete route",
                format!("{} in sandbox {}", r.destination, sb.short()),
                e,
            )
        })?;
    }
    Ok(())
}

/// Publishes `bindings` for a joined endpoint; returns them as made (host ports resolved).
pub(crate) async fn program(
    core: &Core,
    j: &Joined,
    bindings: &[PortBinding],
    op: &'static str,
) -> Result<Vec<PortBinding>, CoreError> {
    let net = &j.ep.network;
    core.driver_of(net)?
        .program_external_connectivity(&PublishRequest::new(&net.id, &j.ep.id, bindings))
        .instrument(tracing::debug_span!(
            "driver",
            call = "program_external_connectivity"
        ))
        .await
        .map_err(|e| CoreError::failed(op, &j.ep.name, e))
}

pub(crate) async fn revoke(core: &Core, j: &Joined) -> Result<(), CoreError> {
    let net = &j.ep.network;
    core.driver_of(net)?
        .revoke_external_connectivity(&net.id, &j.ep.id)
        .instrument(tracing::debug_span!(
            "driver",
            call = "revoke_external_connectivity"
        ))
        .await
        .map_err(|e| CoreError::failed("withdraw published ports of endpoint", &j.ep.name, e))
}

/// Moves the default route and the published ports from `old` (if it is still in `list`) to the
/// endpoint libnetwork's order picks among `list`. Returns the new gateway endpoint's id.
pub(crate) async fn switch_gateway(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    old: Option<Joined>,
    list: &mut [Joined],
    undo: &mut Undo<CoreError>,
) -> Result<Option<String>, CoreError> {
    let new_id = match next_gateway(sb, old.as_ref(), list) {
        Next::Unchanged(id) => return Ok(id),
        Next::To(id) => id,
    };
    if let Some(old) = old {
        revoke(core, &old).await?;
        {
            let (core, old) = (core.clone(), old.clone());
            undo.push("republish ports", move || async move {
                let bindings = old.ep.port_bindings();
                program(&core, &old, &bindings, "publish ports of endpoint")
                    .await
                    .map(drop)
            });
        }
        let routes = old.default_routes();
        del_routes(core, sb, &routes).await?;
        {
            let (core, sb) = (core.clone(), sb.clone());
            undo.push("restore default route", move || async move {
                add_routes(&core, &sb, &routes, "restore default route").await
            });
        }
        if let Some(j) = list.iter_mut().find(|j| j.ep.id == old.ep.id) {
            j.published.clear();
        }
    }
    if let Some(new_id) = &new_id {
        let Some(j) = list.iter_mut().find(|j| &j.ep.id == new_id) else {
            return Ok(None);
        };
        let routes = j.default_routes();
        // The default route (in the sandbox) and the published ports (the driver, on the host)
        // are independent: do them at once, then record the inverse of each that was done.
        let bindings = j.ep.port_bindings();
        let (routed, published) = futures::join!(
            add_routes(core, sb, &routes, "add default route"),
            program(core, j, &bindings, "publish ports of endpoint")
        );
        if routed.is_ok() {
            let (core, sb) = (core.clone(), sb.clone());
            undo.push("delete default route", move || async move {
                del_routes(&core, &sb, &routes).await
            });
        }
        if let Ok(ports) = &published {
            j.published = ports.clone();
            let (core, jc) = (core.clone(), j.clone());
            undo.push("withdraw published ports", move || async move {
                revoke(&core, &jc).await
            });
        }
        routed?;
        published?;
    }
    Ok(new_id)
}

/// The gateway endpoint a switch leaves a sandbox with.
enum Next {
    /// The gateway stays (the one kept while its network waits for its driver, or the same
    /// endpoint as before): nothing to do.
    Unchanged(Option<String>),
    /// From the old gateway endpoint (if any) to this one (if any).
    To(Option<String>),
}

fn next_gateway(sb: &SandboxInner, old: Option<&Joined>, list: &[Joined]) -> Next {
    if old.is_none()
        && let Some(kept) = sb.detached_gateway()
    {
        // The gateway endpoint's network waits for its driver: the route through it stays.
        return Next::Unchanged(Some(kept));
    }
    let candidates: Vec<GatewayCandidate> = list.iter().map(Joined::candidate).collect();
    let new_id = gateway::select(&candidates).map(|c| c.endpoint_id.clone());
    if new_id.as_deref() == old.map(|j| j.ep.id.as_str()) {
        Next::Unchanged(new_id)
    } else {
        Next::To(new_id)
    }
}

/// What [`switch_gateway`] will leave in `list` and return, told before it runs, so that a
/// join's records can be committed while the route and the ports are made: when the gateway
/// stays, or when a sandbox gets its first gateway endpoint whose every port names its host
/// port (published as asked). `None` when the switch moves the gateway from one endpoint to
/// another, or when the driver picks a host port: those records are written after the switch.
/// A prediction the switch then contradicts costs a second commit, never a wrong record.
pub(crate) fn predict_switch(
    sb: &SandboxInner,
    old: Option<&Joined>,
    list: &[Joined],
) -> Option<(Vec<Joined>, Option<String>)> {
    let new_id = match next_gateway(sb, old, list) {
        Next::Unchanged(id) => return Some((list.to_vec(), id)),
        Next::To(_) if old.is_some() => return None,
        Next::To(id) => id,
    };
    let mut predicted = list.to_vec();
    if let Some(id) = &new_id {
        let j = predicted.iter_mut().find(|j| &j.ep.id == id)?;
        let bindings = j.ep.port_bindings();
        if bindings.iter().any(|b| b.host_port.is_none()) {
            return None;
        }
        j.published = bindings;
    }
    Some((predicted, new_id))
}

/// Refuses the join of an endpoint with published ports that will not be its sandbox's gateway
/// endpoint (`me` is its gateway candidate, `joined` the sandbox's other endpoints).
///
/// Ports are published for the gateway endpoint only, because replies to outside clients leave
/// by the default route: a port published on another endpoint's address would answer from the
/// wrong interface (asymmetric routing, dropped by reverse-path filters and conntrack). Rather
/// than take the ports and leave them unpublished, the join is refused and nothing is done.
/// (An endpoint that was the gateway when it joined keeps its ports recorded if a later join
/// takes the default route: they are withdrawn while it is not the gateway and published again
/// when it is.)
pub(crate) fn check_ports_follow_gateway(
    sb: &SandboxInner,
    joined: &[Joined],
    ep: &EndpointInner,
    me: &GatewayCandidate,
) -> Result<(), CoreError> {
    let ports = ep.port_bindings();
    if ports.is_empty() {
        return Ok(());
    }
    let others: Vec<GatewayCandidate> = joined.iter().map(Joined::candidate).collect();
    let sandbox = format!("sandbox {} (container {})", sb.short(), sb.container_id);
    let net = &ep.network;
    let (gateway, reason) = match gateway::join_outcome(&others, me) {
        JoinOutcome::Gateway => return Ok(()),
        JoinOutcome::Outranked(best) => {
            let g = joined
                .iter()
                .find(|j| j.ep.id == best.endpoint_id)
                .expect("the candidates were made from the joined endpoints");
            (
                Some(g.ep.name.clone()),
                format!(
                    "endpoint {} on network {} provides the default route of {sandbox} and \
                     keeps it after this join; published ports follow the default route \
                     (replies to outside clients leave by it), so they are taken only on the \
                     join that makes the endpoint the gateway: join with a gateway priority \
                     above {}, or publish them on network {}",
                    g.ep.name, g.ep.network.name, g.priority, g.ep.network.name
                ),
            )
        }
        JoinOutcome::CannotServe if net.internal() => (
            None,
            format!(
                "network {} is internal, so the endpoint never provides the default route of \
                 {sandbox}, and published ports follow the default route",
                net.name
            ),
        ),
        JoinOutcome::CannotServe => (
            None,
            format!(
                "its driver gives it no gateway, so the endpoint never provides the default \
                 route of {sandbox}, and published ports follow the default route"
            ),
        ),
    };
    Err(CoreError::PortsNotPublishable {
        endpoint: ep.name.clone(),
        network: net.name.clone(),
        ports: ports.iter().map(ToString::to_string).collect(),
        gateway,
        reason,
    })
}

/// Replaces the ports `ep` publishes; it must be joined to `sb`. An endpoint whose ports the
/// gateway network's endpoint carries (an overlay's) has them published there
/// ([`super::gateway_network::publish_carried`]). On its sandbox's gateway
/// endpoint the driver withdraws what it published and publishes the new ports, then the
/// endpoint's and the sandbox's records say so, in one transaction; an
/// endpoint that is not the gateway takes no ports (see [`check_ports_follow_gateway`]), only
/// an empty list. A failure programs the old ports again and leaves the records as they were.
/// Returns the bindings as made (host ports resolved).
pub(crate) async fn publish_ports(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    bindings: Vec<PortBinding>,
) -> Result<Vec<PortBinding>, CoreError> {
    for b in &bindings {
        b.validate()
            .map_err(|e| CoreError::invalid("port binding", b, e.to_string()))?;
    }
    // An endpoint that needs the gateway network: its ports are the gateway endpoint's.
    if let Some(made) = super::gateway_network::publish_carried(core, sb, ep, &bindings).await? {
        return Ok(made);
    }
    replace_ports(core, sb, ep, bindings).await
}

/// [`publish_ports`] for an endpoint whose ports are its own (validated).
pub(crate) async fn replace_ports(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    bindings: Vec<PortBinding>,
) -> Result<Vec<PortBinding>, CoreError> {
    let locked = super::lock_pair(sb, ep).await?;
    let st = &locked.state;
    let (pos, ep_version) = locked.joined_at(sb, ep)?;
    let mut joined = st.joined.clone();
    let is_gateway = st.gateway.as_deref() == Some(ep.id.as_str());
    if !is_gateway && !bindings.is_empty() {
        let gateway = st.gateway_join().map(|g| g.ep.name.clone());
        let reason = match &gateway {
            Some(g) => format!(
                "endpoint {g} provides the default route of sandbox {} (container {}); \
                 published ports follow the default route (replies to outside clients leave \
                 by it)",
                sb.short(),
                sb.container_id
            ),
            None => format!(
                "the endpoint does not provide the default route of sandbox {} (container {}), \
                 and published ports follow the default route",
                sb.short(),
                sb.container_id
            ),
        };
        return Err(CoreError::PortsNotPublishable {
            endpoint: ep.name.clone(),
            network: ep.network.name.clone(),
            ports: bindings.iter().map(ToString::to_string).collect(),
            gateway,
            reason,
        });
    }
    let old_requested = ep.port_bindings();
    let old_published = joined[pos].published.clone();
    let made = if is_gateway {
        // Withdraw, then publish: the SPI's two calls, as a gateway switch makes them.
        if !old_published.is_empty() {
            revoke(core, &joined[pos]).await?;
        }
        let result = if bindings.is_empty() {
            Ok(Vec::new())
        } else {
            program(core, &joined[pos], &bindings, "publish ports of endpoint").await
        };
        match result {
            Ok(made) => made,
            Err(e) => {
                let undo = republish(core, &joined[pos], &old_published).await;
                return Err(e.with_cleanup(undo.err().into_iter().collect()));
            }
        }
    } else {
        Vec::new()
    };
    joined[pos].published = made.clone();
    ep.state().port_bindings = bindings;
    let committed = super::commit_join_state(
        core,
        sb,
        &joined,
        st.gateway.as_deref(),
        st.version,
        ep,
        ep_version,
        Some(&sb.id),
    )
    .await;
    let version = match committed {
        Ok(v) => v,
        Err(e) => {
            ep.state().port_bindings = old_requested;
            let mut cleanup = Vec::new();
            if is_gateway && let Err(u) = republish(core, &joined[pos], &old_published).await {
                cleanup.push(u);
            }
            return Err(e.with_cleanup(cleanup));
        }
    };
    ep.state().version = version;
    {
        let mut s = sb.state();
        s.joined = joined;
        s.version = version;
    }
    tracing::info!(
        endpoint = crate::id::short(&ep.id),
        sandbox = sb.short(),
        ports = made.len(),
        "published ports replaced"
    );
    Ok(made)
}

/// Puts back the ports `j` published before (none: withdraws what may be there).
async fn republish(core: &Core, j: &Joined, old: &[PortBinding]) -> Result<(), CoreError> {
    if old.is_empty() {
        revoke(core, j).await
    } else {
        revoke(core, j).await?;
        program(core, j, old, "publish again ports of endpoint")
            .await
            .map(drop)
    }
}
