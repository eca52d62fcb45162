//! Leaving a sandbox. Records first, then the kernel: once the records say the endpoint left, a
//! crash leaves at most a veth, rules or a route that no record owns, which the restart sweeps.
//! The kernel steps are best effort: every one runs even if an earlier one failed, and every
//! failure is reported.

use cnm_types::FailedTo;
use std::sync::Arc;

use tracing::Instrument as _;

use super::gateway::{revoke, switch_gateway};
use super::join::write_hosts;
use super::{commit_join_state, commit_sandbox};
use crate::CoreError;
use crate::gateway::{self, GatewayCandidate};
use crate::id;
use crate::model::endpoint::EndpointInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::spi::LeaveRequest;
use crate::state::Core;
use crate::undo::{Errors, Undo};

/// Leaves `ep` from `sb`; then the sandbox leaves the gateway network if nothing needs it any
/// more ([`super::gateway_network`]).
pub(crate) async fn leave(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
) -> Result<(), CoreError> {
    let left = leave_one(core, sb, ep).await;
    if matches!(
        left.as_ref().map_err(CoreError::primary),
        Err(CoreError::NotJoined { .. })
    ) {
        return left;
    }
    let mut errors = Errors::default();
    errors.check(left);
    errors.check(super::gateway_network::reconcile(core, sb).await);
    errors.into_result()
}

/// Leaves `ep` from `sb`, and nothing else.
pub(crate) async fn leave_one(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
) -> Result<(), CoreError> {
    let locked = super::lock_pair(sb, ep).await?;
    let st = &locked.state;
    let (pos, ep_version) = locked.joined_at(sb, ep)?;
    let mut rest = st.joined.clone();
    let j = rest.remove(pos);
    let was_gateway = st.gateway.as_deref() == Some(ep.id.as_str());
    // The gateway the sandbox will have: the one switch_gateway picks below.
    let candidates: Vec<GatewayCandidate> = rest.iter().map(Joined::candidate).collect();
    let next_gw = sb
        .detached_gateway()
        .or_else(|| gateway::select(&candidates).map(|c| c.endpoint_id.clone()));
    let mut version = commit_join_state(
        core,
        sb,
        &rest,
        next_gw.as_deref(),
        st.version,
        ep,
        ep_version,
        None,
    )
    .await?;
    {
        let mut e = ep.state();
        e.version = version;
        e.sandbox = None;
    }
    crate::crash::point("leave:after-record");
    let old_gw = if was_gateway {
        None
    } else {
        st.gateway
            .as_ref()
            .and_then(|g| rest.iter().find(|x| &x.ep.id == g))
            .cloned()
    };
    {
        let mut s = sb.state();
        s.joined = rest.clone();
        s.gateway = next_gw.clone();
        s.version = version;
    }
    let mut errors = Errors::default();
    errors.check(crate::dns::leave(core, sb, ep, &rest).await);
    leave_kernel(core, sb, &j, was_gateway, &mut errors).await;
    crate::crash::point("leave:after-driver");
    // A leave is not rolled back: the inverses are dropped unrun.
    let mut undo = Undo::new();
    let switched = errors.check(switch_gateway(core, sb, old_gw, &mut rest, &mut undo).await);
    if switched.is_some() && next_gw.is_some() {
        // The new gateway endpoint's ports as published (host ports resolved) go in its record.
        let published = rest
            .iter()
            .any(|x| Some(&x.ep.id) == next_gw.as_ref() && !x.published.is_empty());
        if published
            && let Some(v) =
                errors.check(commit_sandbox(core, sb, &rest, next_gw.as_deref(), version).await)
        {
            version = v;
        }
    }
    errors.check(write_hosts(core, sb, &rest));
    {
        let mut s = sb.state();
        s.joined = rest;
        s.version = version;
    }
    tracing::info!(endpoint = id::short(&ep.id), sandbox = sb.short(), "left");
    errors.into_result()
}

/// The kernel half of a leave: withdraw published ports, give a moved-in interface back, and
/// the driver's leave (which removes the interface, its addresses and routes).
pub(crate) async fn leave_kernel(
    core: &Core,
    sb: &SandboxInner,
    j: &Joined,
    was_gateway: bool,
    errors: &mut Errors<CoreError>,
) {
    if was_gateway {
        errors.check(revoke(core, j).await);
    }
    if let (Some(index), Some(host_name)) = (j.index, &j.moved_from) {
        errors.check(
            core.kernel
                .move_to_host(&sb.ns, index, host_name)
                .await
                .map_err(|e| {
                    CoreError::failed(
                        "move interface back to the host as",
                        host_name.to_string(),
                        e,
                    )
                }),
        );
    }
    let net = &j.ep.network;
    let request = LeaveRequest {
        network_id: net.id.clone(),
        endpoint_id: j.ep.id.clone(),
        sandbox: sb.sandbox_ref(),
        ifname: j.requested.clone(),
    };
    let left = match core.driver_of(net) {
        Ok(driver) => driver
            .leave(&request)
            .instrument(tracing::debug_span!("driver", call = "leave"))
            .await
            .map_err(|e| CoreError::failed("leave endpoint", &j.ep.name, e)),
        Err(e) => Err(e),
    };
    errors.check(left);
}
