//! Deleting a network: refused while it has endpoints; the driver first, then the record and
//! the pools (a crash in between leaves the record, and the restart recreates the network: the
//! delete did not happen).

use cnm_types::FailedTo;
use std::sync::Arc;

use crate::CoreError;
use crate::id;
use crate::model::network::NetworkInner;
use crate::record;
use crate::state::Core;
use crate::store::Expect;
use crate::undo::Errors;

pub(crate) async fn delete_network(
    core: Arc<Core>,
    net: Arc<NetworkInner>,
) -> Result<(), CoreError> {
    begin_delete(&net)?;
    let driver = match core.driver_of(&net) {
        Ok(d) => d,
        Err(e) => {
            net.state().deleting = false;
            return Err(e);
        }
    };
    // A global network is marked in the cluster store first: from then on no host can take an
    // address in it, and the delete is refused while any host holds one.
    let marked = if net.is_global() {
        let marked = match core.cluster_for(&net.name, &net.driver_name) {
            Ok(cluster) => cluster.begin_delete(&net.id, &net.name).await,
            Err(e) => Err(e),
        };
        match marked {
            Ok(m) => Some(m),
            Err(e) => {
                net.state().deleting = false;
                return Err(e);
            }
        }
    } else {
        None
    };
    if let Err(e) = driver.delete_network(&net.id).await {
        net.state().deleting = false;
        let e = CoreError::failed("delete network", &net.name, e);
        if let (Some(m), Some(cluster)) = (marked, core.cluster())
            && let Err(undo) = cluster.abort_delete(m).await
        {
            return Err(crate::undo::Cleanup::with_cleanup(e, vec![undo]));
        }
        return Err(e);
    }
    // A crash from here until the record is gone leaves the record: the restart recreates the
    // network from it (the delete did not happen).
    crate::crash::point("network-delete:after-driver");
    let mut errors = Errors::default();
    match (&marked, core.cluster()) {
        (Some(m), Some(cluster)) => {
            errors.check(cluster.finish_delete(m).await);
            cluster.forget(&net.id);
        }
        _ => {
            let key = record::network_key(&net.id);
            errors.check(
                core.store
                    .delete(&key, Expect::Version(net.version))
                    .await
                    .map_err(|e| CoreError::failed("delete", &key, e)),
            );
            if net.capability.needs_addresses
                && let Some(ipam) = errors.check(core.ipam_of(&net))
            {
                for pool in net.pools_v4.iter().chain(&net.pools_v6) {
                    errors.check(
                        ipam.release_pool(&pool.pool_id).await.map_err(|e| {
                            CoreError::failed("release pool of network", &net.name, e)
                        }),
                    );
                }
            }
        }
    }
    // Once for the cluster, by the host that deletes it.
    errors.check(
        driver
            .free_network(&net.id, &net.allocation)
            .await
            .map_err(|e| CoreError::failed("free network", &net.name, e)),
    );
    crate::crash::point("network-delete:after-record");
    core.networks.remove(&net.id);
    crate::dns::network_deleted(&core, &net);
    core.network_names.remove(&net.name);
    core.singletons
        .remove_if(&net.driver_name, |_, n| *n == net.name);
    tracing::info!(network = id::short(&net.id), name = %net.name, "network deleted");
    errors.into_result()
}

/// Marks the network as being deleted; refused while it has endpoints (or names reserved for
/// endpoints being created).
fn begin_delete(net: &NetworkInner) -> Result<(), CoreError> {
    let mut st = net.state();
    if st.deleting {
        return Err(net.deleted_error());
    }
    // Checked when the network was created: a bad value cannot be here.
    if net.options.predefined().unwrap_or(false) {
        return Err(CoreError::PredefinedNetwork(net.name.clone()));
    }
    if !st.endpoints.is_empty() {
        return Err(CoreError::NetworkInUse {
            network: net.name.clone(),
            endpoints: st.endpoints.keys().cloned().collect(),
        });
    }
    st.deleting = true;
    Ok(())
}
