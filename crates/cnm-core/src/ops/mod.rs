//! The life-cycle operations, one module each. Every operation takes the [`Core`] and the
//! objects it works on, and nothing else: none reaches into another's module, and the public
//! handles only call in here.
//!
//! | operation | module | write order |
//! |---|---|---|
//! | create a network | [`network_create`] | pools, driver, record last |
//! | delete a network | [`network_delete`] | driver, then record and pools (the restore redoes the delete's kernel part from a surviving record) |
//! | create an endpoint | [`endpoint_create`] | addresses, driver, record last |
//! | delete an endpoint | [`endpoint_delete`] | driver, then record and addresses |
//! | create a sandbox | [`sandbox_create`] | record committed while the namespace and files (hosts last) are made; a record without its hosts file is dropped on restore |
//! | delete a sandbox | [`sandbox_delete`] | records first (one transaction), then every leave in the kernel, the namespace, the files |
//! | join | [`join`] | driver join → one interface call → gateway choice → records (one transaction) committed while hosts and DNS are done (a restart redoes both from the records) |
//! | leave | [`leave`] | records first, then the kernel |
//! | attach to / detach from the gateway network after a join or leave | [`gateway_network`] | a join and its gateway endpoint's are undone together |
//! | connect, disconnect, remove a sandbox with its endpoints | [`connect`] | composed of the above, undone together |
//! | reload on start | [`reload`] | records (the cluster's global networks too) → objects, IPAM, drivers, kernel reconciled, sweep, then the cluster watch |
//! | sync with the cluster, register a late driver | [`reload`] | adopt other hosts' global networks, drop those they deleted; restore the networks that waited for a driver |
//!
//! A global network (`cluster.rs`) writes its record, name and subnets in the cluster
//! store in one transaction before its driver creates it (the other hosts create it from that
//! record); its delete marks the record first, and is refused while any host holds an address.
//!
//! Each constructive operation pushes the inverse of every effect on an [`Undo`](crate::undo::Undo)
//! list; a failure unwinds it and reports every cleanup error with the first cause.

pub(crate) mod connect;
pub(crate) mod endpoint_create;
pub(crate) mod endpoint_delete;
pub(crate) mod gateway;
pub(crate) mod gateway_network;
pub(crate) mod join;
pub(crate) mod leave;
pub(crate) mod network_create;
pub(crate) mod network_delete;
pub(crate) mod reload;
pub(crate) mod sandbox_create;
pub(crate) mod sandbox_delete;

use cnm_types::FailedTo;
use std::future::Future;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::record;
use crate::state::Core;
use crate::store::{Expect, Txn};

/// Runs a mutating operation in its own task (so a dropped caller cannot cut it half-way) inside
/// a span naming it, holding a pass through the core's gate (so a shutdown waits for it).
pub(crate) async fn run_op<T, F, Fut>(
    core: Arc<Core>,
    op: &'static str,
    object: String,
    f: F,
) -> Result<T, CoreError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Core>) -> Fut,
    Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
{
    let pass = core.gate.enter()?;
    let span = tracing::info_span!("cnm", op, object = %object);
    let fut = f(core);
    let task = async move {
        let _pass = pass;
        fut.await
    };
    match tokio::spawn(task.instrument(span)).await {
        Ok(result) => result,
        Err(e) => Err(CoreError::Aborted {
            op,
            object,
            reason: e.to_string(),
        }),
    }
}

/// Runs a record's commit and the kernel work that does not depend on it at once, so that the
/// store's sync overlaps the kernel's round trips, and returns both results (neither is cut
/// short by the other's failure: the caller undoes whichever succeeded).
///
/// With the crash point `between` armed, the commit runs first, then the point, then the kernel
/// work: the crash tests' record-without-kernel-state lands there every time.
pub(crate) async fn overlapped<C, K>(
    between: &'static str,
    commit: C,
    kernel: K,
) -> (C::Output, K::Output)
where
    C: Future,
    K: Future,
{
    if crate::crash::is_armed(between) {
        let committed = commit.await;
        crate::crash::point(between);
        (committed, kernel.await)
    } else {
        futures::join!(commit, kernel)
    }
}

/// The operation locks of a sandbox and an endpoint (in the lock order), with the sandbox's
/// state as committed; refused when the sandbox was deleted.
pub(crate) struct Pair<'a> {
    _sb: tokio::sync::MutexGuard<'a, ()>,
    _ep: tokio::sync::MutexGuard<'a, ()>,
    pub(crate) state: crate::model::sandbox::SandboxState,
}

impl Pair<'_> {
    /// Where `ep` stands in the sandbox's joined list, and the endpoint's record version;
    /// `NotJoined` when it is not joined to `sb`.
    pub(crate) fn joined_at(
        &self,
        sb: &SandboxInner,
        ep: &EndpointInner,
    ) -> Result<(usize, u64), CoreError> {
        let not_joined = || CoreError::NotJoined {
            endpoint: ep.name.clone(),
            sandbox: sb.short().to_owned(),
        };
        let version = {
            let e = ep.state();
            if e.sandbox.as_deref() != Some(sb.id.as_str()) {
                return Err(not_joined());
            }
            e.version
        };
        let pos = self
            .state
            .joined
            .iter()
            .position(|j| j.ep.id == ep.id)
            .ok_or_else(not_joined)?;
        Ok((pos, version))
    }
}

pub(crate) async fn lock_pair<'a>(
    sb: &'a SandboxInner,
    ep: &'a EndpointInner,
) -> Result<Pair<'a>, CoreError> {
    let sb_op = sb.op.lock().await;
    let ep_op = ep.op.lock().await;
    let state = sb.state().clone();
    if state.deleted {
        return Err(sb.deleted_error());
    }
    Ok(Pair {
        _sb: sb_op,
        _ep: ep_op,
        state,
    })
}

/// Docker's rule for network and endpoint names.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), CoreError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(CoreError::invalid(
            field,
            name,
            "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
        ));
    }
    Ok(())
}

/// Writes an endpoint's record (joined to `sandbox_id`, or free) and its sandbox's record in
/// one transaction; returns the revision.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn commit_join_state(
    core: &Core,
    sb: &SandboxInner,
    joined: &[Joined],
    gateway: Option<&str>,
    sb_version: u64,
    ep: &EndpointInner,
    ep_version: u64,
    sandbox_id: Option<&str>,
) -> Result<u64, CoreError> {
    let skey = record::sandbox_key(&sb.id);
    let ekey = ep.key();
    let txn = Txn::new()
        .put_json(&ekey, &ep.record(sandbox_id), Expect::Version(ep_version))
        .and_then(|t| {
            t.put_json(
                &skey,
                &sb.record(joined, gateway),
                Expect::Version(sb_version),
            )
        })
        .map_err(|e| CoreError::failed("encode", &skey, e))?;
    core.store
        .commit(txn)
        .await
        .map_err(|e| CoreError::failed("write", format!("{ekey} and {skey}"), e))
}

/// Rewrites the sandbox's record alone; returns the revision.
pub(crate) async fn commit_sandbox(
    core: &Core,
    sb: &SandboxInner,
    joined: &[Joined],
    gateway: Option<&str>,
    version: u64,
) -> Result<u64, CoreError> {
    let skey = record::sandbox_key(&sb.id);
    let txn = Txn::new()
        .put_json(&skey, &sb.record(joined, gateway), Expect::Version(version))
        .map_err(|e| CoreError::failed("encode", &skey, e))?;
    core.store
        .commit(txn)
        .await
        .map_err(|e| CoreError::failed("write", skey, e))
}

/// Writes a new record (`Expect::Absent`); returns its version.
pub(crate) async fn put_new_record<T: serde::Serialize>(
    core: &Core,
    key: &str,
    value: &T,
) -> Result<u64, CoreError> {
    let bytes = serde_json::to_vec(value).map_err(|source| CoreError::Record {
        op: "encode",
        key: key.to_owned(),
        source,
    })?;
    core.store
        .put(key, bytes, Expect::Absent)
        .await
        .map_err(|e| CoreError::failed("write", key, e))
}

/// The undo step of [`put_new_record`]: deletes the record at exactly `version`.
pub(crate) fn delete_record(
    core: &Arc<Core>,
    key: String,
    version: u64,
) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<(), CoreError>> + Send + 'static {
    let store = core.store.clone();
    move || {
        Box::pin(async move {
            store
                .delete(&key, Expect::Version(version))
                .await
                .map_err(|e| CoreError::failed("delete", key, e))
        })
    }
}
