//! cnm's own API under `/cnm/v1`: sandboxes (create, list, inspect, delete, connect with
//! published ports, disconnect) and daemon info.

use ::cnm_api::v1::{
    Info, Sandbox, SandboxConnectRequest, SandboxCreateRequest, SandboxDisconnectRequest,
};
use axum::Json;
use axum::http::StatusCode;

use crate::ApiError;
use crate::request::Parse as _;
use crate::server::{Body, Key, St};
use crate::views;

/// `GET /cnm/v1/info`.
pub(crate) async fn info(st: St) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api_version: crate::server::API_VERSION.to_owned(),
        drivers: cnm::builtin_drivers()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        state_dir: st.state_dir.display().to_string(),
        run_dir: st.run_dir.display().to_string(),
        store: st.store.as_str().to_owned(),
    })
}

fn not_found(key: &str) -> String {
    format!("sandbox {key} not found")
}

/// `GET /cnm/v1/sandboxes`.
pub(crate) async fn list(st: St) -> Json<Vec<Sandbox>> {
    let mut out = Vec::new();
    for sb in st.ctl.sandboxes() {
        out.push(views::sandbox(&sb).await);
    }
    Json(out)
}

/// `POST /cnm/v1/sandboxes` → 201.
pub(crate) async fn create(
    st: St,
    Body(req): Body<SandboxCreateRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let (name, opts) = req.parse()?;
    let sb = st
        .timed("sandbox_create", async {
            Ok(st.ctl.new_sandbox(&name, opts).await?)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(views::sandbox(&sb).await)))
}

/// `GET /cnm/v1/sandboxes/{key}`.
pub(crate) async fn inspect(st: St, Key(key): Key) -> Result<Json<Sandbox>, ApiError> {
    let sb = st.sandbox(&key, || not_found(&key))?;
    Ok(Json(views::sandbox(&sb).await))
}

/// `DELETE /cnm/v1/sandboxes/{key}` → 204: leaves every network, deletes those endpoints, then
/// the sandbox.
pub(crate) async fn remove(st: St, Key(key): Key) -> Result<StatusCode, ApiError> {
    let sb = st.sandbox(&key, || not_found(&key))?;
    let gone = st
        .timed("sandbox_delete", async {
            Ok(sb.delete_with_endpoints().await?)
        })
        .await?;
    for ep in gone {
        let net = ep.network();
        st.publish_network("disconnect", &net, Some(sb.id()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /cnm/v1/sandboxes/{key}/connect` → 200 with the sandbox.
pub(crate) async fn connect(
    st: St,
    Key(key): Key,
    Body(req): Body<SandboxConnectRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    let (network, endpoint, join) = req.parse()?;
    let sb = st.sandbox(&key, || not_found(&key))?;
    let net = st.network(&network)?;
    st.connect(&net, &sb, endpoint, join).await?;
    Ok(Json(views::sandbox(&sb).await))
}

/// `POST /cnm/v1/sandboxes/{key}/disconnect` → 200 with the sandbox.
pub(crate) async fn disconnect(
    st: St,
    Key(key): Key,
    Body(req): Body<SandboxDisconnectRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    let network = req.parse()?;
    let sb = st.sandbox(&key, || not_found(&key))?;
    let net = st.network(&network)?;
    st.disconnect(&net, &sb).await?;
    Ok(Json(views::sandbox(&sb).await))
}
