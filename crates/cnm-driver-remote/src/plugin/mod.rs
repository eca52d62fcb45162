//! Docker's plugin protocol, the client side, knowing nothing of cnm's model: finding a plugin
//! by name ([`PluginDirs`]), the `Plugin.Activate` handshake, and calls over HTTP/1.1 on a unix
//! socket or TCP, each bounded in time ([`PluginClient`]).
//!
//! The protocol, from Docker's `docs/extend/plugin_api.md`: every call is an HTTP `POST` to
//! `/Subsystem.Method` with a JSON body (none for calls without arguments), sent with
//! `Accept: application/vnd.docker.plugins.v1.2+json`; the plugin answers 200 with JSON, or
//! an error status whose body carries `{"Err": "…"}`.

mod addr;
mod client;
mod discovery;
mod error;

pub use addr::PluginAddr;
pub use client::{ACTIVATE, Answer, Body, Call, ClientConfig, MEDIA_TYPE, Manifest, PluginClient};
pub use discovery::{
    DOCKER_SOCKET_DIR, DOCKER_SPEC_DIRS, JsonSpec, PluginDirs, PluginSpec, TlsConfig, check_name,
};
pub use error::{Detail, PluginError, Waited};
