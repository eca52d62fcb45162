//! cnmd as a Docker plugin (issue 13, the server half): cnm's drivers served to a real dockerd
//! over Docker's plugin protocol, so that `docker network create -d cnm …` gives containers
//! started by dockerd cnm networking.
//!
//! **Owns**: the plugin socket (`DIR/NAME.sock`, `--docker-plugin NAME`), the handshake
//! (`Plugin.Activate` answers `NetworkDriver` and `IpamDriver`), every `NetworkDriver.*` call
//! ([`network`]) and every `IpamDriver.*` call ([`ipam`]), each answered with Docker's content
//! type and error field (`Err` for network calls, `Error` for IPAM calls).
//! **Does not**: define the bodies (`cnm_driver_remote::wire` has Docker's exact shapes, shared
//! with the client half) or implement networking (the controller does: a Docker network is a cnm
//! network named by Docker's `NetworkID`, a Docker endpoint a cnm endpoint named by its
//! `EndpointID`, both durable in cnm's store; or, with `-o com.cnm.network=NAME`, the existing
//! cnm network `NAME`, shared with cnm's own containers and, for an overlay, with every host
//! of the cluster: see [`mapping`] for why and how).
//!
//! Errors travel with HTTP 200 and the error field set: both dockerd's plugin client and
//! libnetwork's remote driver and IPAM read them that way (a non-200 answer is read for `Err`
//! only, which an IPAM answer does not have). A body that does not decode is a 400 with the
//! same field.

pub mod ipam;
pub mod mapping;
pub mod network;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cnm::Controller;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Docker's plugin content type, sent with every answer.
pub const CONTENT_TYPE_V12: &str = cnm_driver_remote::plugin::MEDIA_TYPE;

/// Docker's directory of plugin sockets, where dockerd looks first.
pub const DEFAULT_PLUGIN_DIR: &str = "/run/docker/plugins";

/// Serving cnm as a Docker plugin (`cnmd --docker-plugin NAME --docker-plugin-dir DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPluginConfig {
    /// The plugin's name: dockerd's `-d NAME` and `--ipam-driver NAME`.
    pub name: String,
    /// Where its socket `NAME.sock` is made (default [`DEFAULT_PLUGIN_DIR`]).
    pub dir: PathBuf,
}

impl DockerPluginConfig {
    /// The plugin `name` with its socket in Docker's directory.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }

    /// Checks the name: dockerd finds a plugin by its file name, so it must be one path
    /// component, and not one of dockerd's own driver names, which dockerd would never ask a
    /// plugin for.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || n.starts_with('.')
        {
            return Err(format!(
                "{n:?}: want 1 to 64 characters of [A-Za-z0-9._-], not starting with '.'"
            ));
        }
        if [
            "bridge", "host", "null", "overlay", "macvlan", "ipvlan", "default",
        ]
        .contains(&n.as_str())
        {
            return Err(format!(
                "{n:?} is one of dockerd's built-in drivers: dockerd would never ask a plugin"
            ));
        }
        Ok(())
    }
}

/// What every plugin handler sees.
pub(crate) struct PluginState {
    pub(crate) ctl: Controller,
    pub(crate) ipam: ipam::IpamServer,
    pub(crate) networks: mapping::NetworkMap,
}

/// The plugin's routes: every call is a POST of JSON to `/Subsystem.Call`.
pub(crate) fn router(state: Arc<PluginState>) -> Router {
    use network as n;
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(n::capabilities))
        .route("/NetworkDriver.CreateNetwork", post(n::create_network))
        .route("/NetworkDriver.DeleteNetwork", post(n::delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(n::create_endpoint))
        .route(
            "/NetworkDriver.EndpointOperInfo",
            post(n::endpoint_oper_info),
        )
        .route("/NetworkDriver.DeleteEndpoint", post(n::delete_endpoint))
        .route("/NetworkDriver.Join", post(n::join))
        .route("/NetworkDriver.Leave", post(n::leave))
        .route("/NetworkDriver.DiscoverNew", post(n::discover))
        .route("/NetworkDriver.DiscoverDelete", post(n::discover))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(n::program_external_connectivity),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(n::revoke_external_connectivity),
        )
        .route("/IpamDriver.GetCapabilities", post(ipam::capabilities))
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(ipam::address_spaces),
        )
        .route("/IpamDriver.RequestPool", post(ipam::request_pool))
        .route("/IpamDriver.ReleasePool", post(ipam::release_pool))
        .route("/IpamDriver.RequestAddress", post(ipam::request_address))
        .route("/IpamDriver.ReleaseAddress", post(ipam::release_address))
        .fallback(unknown_call)
        .with_state(state)
}

#[derive(Serialize)]
struct Activation {
    #[serde(rename = "Implements")]
    implements: [&'static str; 2],
}

async fn activate() -> Response {
    reply(
        StatusCode::OK,
        &Activation {
            implements: [
                cnm_driver_remote::wire::network::SUBSYSTEM,
                cnm_driver_remote::wire::ipam::SUBSYSTEM,
            ],
        },
    )
}

/// A call this plugin does not serve: 404, which dockerd takes as "not implemented" for its
/// optional calls.
async fn unknown_call(uri: axum::http::Uri) -> Response {
    let body = serde_json::json!({ "Err": format!("{} is not a call of this plugin", uri.path()) });
    reply(StatusCode::NOT_FOUND, &body)
}

/// An answer with Docker's plugin content type.
pub(crate) fn reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(CONTENT_TYPE, CONTENT_TYPE_V12)], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(CONTENT_TYPE, CONTENT_TYPE_V12)],
            format!("{{\"Err\":\"encode answer: {e}\",\"Error\":\"encode answer: {e}\"}}"),
        )
            .into_response(),
    }
}

/// Which error field a subsystem's answers carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    /// `Err` (NetworkDriver).
    Err,
    /// `Error` (IpamDriver).
    Error,
}

/// An error answer: HTTP 200 with the subsystem's error field (see the module docs).
pub(crate) fn error_reply(field: Field, status: StatusCode, msg: impl Into<String>) -> Response {
    let msg = msg.into();
    let body = match field {
        Field::Err => serde_json::json!({ "Err": msg }),
        Field::Error => serde_json::json!({ "Error": msg }),
    };
    reply(status, &body)
}

/// Writes the plugin's state file `file` whole, then renames it into place: never half a
/// file, even on a crash.
async fn save_file(file: PathBuf, bytes: Vec<u8>) -> Result<(), String> {
    let tmp = file.with_extension("json.tmp");
    tokio::task::spawn_blocking(move || {
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("save {}: {e}", file.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The body of the call `$call` decoded, or (returned early) a 400 answer carrying the error in
/// the subsystem's error field `$field`.
macro_rules! body {
    ($field:expr, $call:literal, $body:expr) => {
        match $crate::plugin::decode($call, &$body) {
            Ok(v) => v,
            Err(e) => {
                return $crate::plugin::error_reply(
                    $field,
                    ::axum::http::StatusCode::BAD_REQUEST,
                    e,
                );
            }
        }
    };
}
use body;

/// Decodes a call's body (Go sends no body at all for calls without arguments); the error is
/// the text of a 400 answer.
pub(crate) fn decode<T: DeserializeOwned + Default>(call: &str, body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid {call} body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_one_path_component_and_not_dockers_own() {
        assert!(DockerPluginConfig::new("cnm").validate().is_ok());
        assert!(DockerPluginConfig::new("cnm-1.x_y").validate().is_ok());
        for bad in ["", "a/b", "..", ".x", "bridge", "null", "a b"] {
            let err = DockerPluginConfig::new(bad).validate().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(
            DockerPluginConfig::new("cnm").socket(),
            PathBuf::from("/run/docker/plugins/cnm.sock")
        );
    }
}
