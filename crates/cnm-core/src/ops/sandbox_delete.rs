//! Deleting a sandbox. Records first, in one transaction: the sandbox's record goes and every
//! joined endpoint's record says it is free. Then the kernel: each endpoint leaves (newest
//! first), the namespace and the files go. A crash after the transaction leaves only what the
//! restart's sweep removes (the namespace's bind mount, its files, veths no record owns).

use cnm_types::FailedTo;
use std::sync::Arc;

use super::leave::leave_kernel;
use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::sandbox::SandboxInner;
use crate::record;
use crate::state::Core;
use crate::store::{Expect, Txn};
use crate::undo::Errors;

/// A sandbox deleted: its records are gone.
pub(crate) struct Deleted {
    /// The endpoints that were joined to it (now free), in join order.
    pub(crate) endpoints: Vec<Arc<EndpointInner>>,
    /// The kernel's part (leaves, namespace, files): best effort, every failure reported.
    pub(crate) kernel: Result<(), CoreError>,
}

/// Deletes `sb`. An error is returned only when nothing was done (the records stand); once
/// they are gone, a failure of the kernel's part is in [`Deleted::kernel`].
pub(crate) async fn delete_sandbox(
    core: Arc<Core>,
    sb: Arc<SandboxInner>,
) -> Result<Deleted, CoreError> {
    let slot = core.containers.get(&sb.container_id).map(|s| s.clone());
    let mut slot_guard = match &slot {
        Some(s) => Some(s.lock().await),
        None => None,
    };
    let _sb_op = sb.op.lock().await;
    let st = sb.state().clone();
    if st.deleted {
        return Err(sb.deleted_error());
    }
    let joined = st.joined;
    let mut ep_ops = Vec::with_capacity(joined.len());
    for j in &joined {
        ep_ops.push(j.ep.op.lock().await);
    }
    let key = record::sandbox_key(&sb.id);
    let mut txn = Txn::new().delete(&key, Expect::Version(st.version));
    for j in &joined {
        let version = j.ep.state().version;
        txn = txn
            .put_json(j.ep.key(), &j.ep.record(None), Expect::Version(version))
            .map_err(|e| CoreError::failed("encode", j.ep.key(), e))?;
    }
    let revision = core
        .store
        .commit(txn)
        .await
        .map_err(|e| CoreError::failed("delete", &key, e))?;
    for j in &joined {
        let mut e = j.ep.state();
        e.sandbox = None;
        e.version = revision;
    }
    drop(ep_ops);
    {
        let mut s = sb.state();
        s.deleted = true;
        s.gateway = None;
        s.joined.clear();
    }
    core.sandboxes.remove(&sb.id);
    let mut errors = Errors::default();
    errors.check(crate::dns::sandbox_deleted(&core, &sb, &joined).await);
    crate::crash::point("sandbox-delete:after-record");
    for j in joined.iter().rev() {
        let gw = st.gateway.as_deref() == Some(j.ep.id.as_str());
        leave_kernel(&core, &sb, j, gw, &mut errors).await;
    }
    crate::crash::point("sandbox-delete:after-leave");
    // A sandbox on the host's namespace leaves the namespace alone.
    if !sb.options.host_namespace {
        errors.check(
            core.kernel
                .delete_netns(sb.key())
                .await
                .map_err(|e| CoreError::failed("delete netns", sb.key().display().to_string(), e)),
        );
    }
    crate::crash::point("sandbox-delete:after-netns");
    errors.check(
        core.kernel
            .remove_dir(&sb.dir)
            .await
            .map_err(|e| CoreError::failed("remove directory", sb.dir.display().to_string(), e)),
    );
    if let (Some(slot), Some(guard)) = (&slot, slot_guard.as_mut())
        && guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sb))
    {
        **guard = None;
        core.containers
            .remove_if(&sb.container_id, |_, s| Arc::ptr_eq(s, slot));
    }
    tracing::info!(sandbox = sb.short(), container = %sb.container_id, "sandbox deleted");
    Ok(Deleted {
        endpoints: joined.into_iter().map(|j| j.ep).collect(),
        kernel: errors.into_result(),
    })
}
