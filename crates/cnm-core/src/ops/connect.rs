//! Operations composed of others, undone together: join a container (creating its sandbox),
//! connect (create an endpoint and join it), disconnect (leave and delete), and delete a sandbox
//! with every endpoint it had. A failure reports the first cause with every cleanup error
//! attached ([`CoreError::Cleanup`]).

use std::sync::Arc;

use super::endpoint_create::create_endpoint;
use super::endpoint_delete::delete_endpoint;
use super::join::join;
use super::leave::leave;
use super::sandbox_create::find_or_create;
use super::sandbox_delete::delete_sandbox;
use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::model::sandbox::SandboxInner;
use crate::options::{EndpointOptions, JoinOptions};
use crate::state::Core;
use crate::undo::{Cleanup, Errors};

/// Whether `e` says an endpoint was deleted already.
fn endpoint_gone(e: &CoreError) -> bool {
    matches!(
        e.primary(),
        CoreError::Deleted {
            what: "endpoint",
            ..
        }
    )
}

/// Joins `ep` to the sandbox of container `cid`, creating the sandbox (with `opts`) when the
/// container has none; a sandbox made for a join that fails is deleted again.
pub(crate) async fn join_container(
    core: Arc<Core>,
    ep: Arc<EndpointInner>,
    cid: String,
    opts: JoinOptions,
) -> Result<Arc<SandboxInner>, CoreError> {
    let priority = opts.gateway_priority;
    let mut opts = opts;
    // A container that joins the host's stack first is made on it (libnetwork's default
    // sandbox); one made already keeps what it is, and `join` refuses a mismatch.
    if ep.network.capability.host_namespace {
        opts.host_namespace = true;
    }
    let (sb, created) = find_or_create(&core, &cid, opts, true).await?;
    match join(&core, &sb, &ep, priority).await {
        Ok(()) => Ok(sb),
        Err(e) if created => {
            let cleanup = match delete_sandbox(core, sb).await {
                Ok(d) => d.kernel,
                Err(c) => Err(c),
            };
            Err(e.with_cleanup(cleanup.err().into_iter().collect()))
        }
        Err(e) => Err(e),
    }
}

/// Creates endpoint `name` on `net` and joins it to `sb`; a failed join deletes the endpoint
/// again.
pub(crate) async fn connect(
    core: Arc<Core>,
    net: Arc<NetworkInner>,
    sb: Arc<SandboxInner>,
    name: String,
    options: EndpointOptions,
    join_options: JoinOptions,
) -> Result<Arc<EndpointInner>, CoreError> {
    let ep = create_endpoint(core.clone(), net, name, options).await?;
    match join(&core, &sb, &ep, join_options.gateway_priority).await {
        Ok(()) => Ok(ep),
        Err(e) => {
            let cleanup = delete_endpoint(core, ep).await;
            Err(e.with_cleanup(cleanup.err().into_iter().collect()))
        }
    }
}

/// Leaves `sb` and deletes the endpoint. An endpoint deleted meanwhile (by a racing removal of
/// its sandbox) is what was wanted.
pub(crate) async fn disconnect(
    core: Arc<Core>,
    sb: Arc<SandboxInner>,
    ep: Arc<EndpointInner>,
) -> Result<(), CoreError> {
    leave(&core, &sb, &ep).await?;
    match delete_endpoint(core, ep).await {
        Err(e) if endpoint_gone(&e) => Ok(()),
        other => other,
    }
}

/// Deletes `sb` (every endpoint leaves it) and then every endpoint that was joined to it;
/// returns those deleted. An endpoint deleted meanwhile (a racing disconnect) counts as done.
pub(crate) async fn delete_with_endpoints(
    core: Arc<Core>,
    sb: Arc<SandboxInner>,
) -> Result<Vec<Arc<EndpointInner>>, CoreError> {
    let deleted = delete_sandbox(core.clone(), sb).await?;
    let mut errors = Errors::default();
    errors.check(deleted.kernel);
    let gone = delete_freed(core, deleted.endpoints, &mut errors).await;
    errors.into_result().map(|()| gone)
}

/// Deletes endpoints a removed sandbox freed; one deleted meanwhile is skipped, a failure kept.
pub(crate) async fn delete_freed(
    core: Arc<Core>,
    endpoints: Vec<Arc<EndpointInner>>,
    errors: &mut Errors<CoreError>,
) -> Vec<Arc<EndpointInner>> {
    let mut gone = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        match delete_endpoint(core.clone(), ep.clone()).await {
            Ok(()) => gone.push(ep),
            Err(e) if endpoint_gone(&e) => {}
            Err(e) => {
                errors.check::<()>(Err(e));
            }
        }
    }
    gone
}
