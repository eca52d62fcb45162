//! Deleting an endpoint: refused while it is joined; the driver first, then the record and the
//! addresses (a crash in between leaves the record, and the restart brings the endpoint back).

use cnm_types::FailedTo;
use std::sync::Arc;

use tracing::Instrument as _;

use crate::CoreError;
use crate::id;
use crate::model::endpoint::EndpointInner;
use crate::state::Core;
use crate::store::Expect;
use crate::undo::Errors;

pub(crate) async fn delete_endpoint(
    core: Arc<Core>,
    ep: Arc<EndpointInner>,
) -> Result<(), CoreError> {
    let _op = ep.op.lock().await;
    let version = {
        let st = ep.state();
        if st.deleted {
            return Err(ep.deleted_error());
        }
        if let Some(sb) = &st.sandbox {
            return Err(CoreError::EndpointInUse {
                endpoint: ep.name.clone(),
                sandbox: id::short(sb).to_owned(),
            });
        }
        st.version
    };
    let net = &ep.network;
    core.driver_of(net)?
        .delete_endpoint(&net.id, &ep.id)
        .instrument(tracing::debug_span!("driver", call = "delete_endpoint"))
        .await
        .map_err(|e| CoreError::failed("delete endpoint", &ep.name, e))?;
    // Past this point the endpoint is gone from the data plane: finish every step, report all.
    // A crash before the record goes leaves the record: the restart brings the endpoint back.
    crate::crash::point("endpoint-delete:after-driver");
    ep.state().deleted = true;
    let mut errors = Errors::default();
    let key = ep.key();
    errors.check(
        core.store
            .delete(&key, Expect::Version(version))
            .await
            .map_err(|e| CoreError::failed("delete", &key, e)),
    );
    crate::crash::point("endpoint-delete:after-record");
    for (addr, pool) in ep.reserved() {
        errors.check(core.release_address(net, pool, addr).await);
    }
    // The endpoint's facts, if its driver published any, go with it.
    if net.is_global()
        && let Some(cluster) = core.cluster()
    {
        for key in [
            crate::facts::cluster_key(&net.driver_name, &net.id, &ep.id),
            crate::remote_names::cluster_key(&net.id, &ep.id),
        ] {
            errors.check(
                cluster
                    .store
                    .delete(&key, Expect::Any)
                    .await
                    .map_err(|e| CoreError::failed("delete", &key, e)),
            );
        }
    }
    {
        let mut st = net.state();
        st.endpoints.remove(&ep.name);
        st.release_mac(ep.mac, &ep.name);
    }
    core.endpoints.remove(&ep.id);
    tracing::info!(endpoint = id::short(&ep.id), name = %ep.name, "endpoint deleted");
    errors.into_result()
}
