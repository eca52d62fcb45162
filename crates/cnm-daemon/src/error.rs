//! [`DaemonError`] (start-up and serving failures) and [`ApiError`] (one refused HTTP request).

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cnm::CoreError;
use cnm::cnm_ipam::{Family, IpamError};
use cnm::cnm_types::ErrorKind;
use cnm_api::docker::ErrorResponse;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another process holds the state dir's lock.
    #[error("state dir is in use: lock {path} is held by {holder}; is another cnmd running?")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// "pid N" as written by the holder, or "an unknown process".
        holder: String,
    },
    /// A file operation on the given path failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path (or address).
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The controller failed (building it, or creating a predefined network).
    #[error("failed to {op}: {source}")]
    Controller {
        /// What was being done.
        op: String,
        /// The controller's error (boxed: it is large).
        #[source]
        source: Box<CoreError>,
    },
    /// The durable store could not be opened.
    #[error("failed to open the store in {path}: {source}")]
    Store {
        /// The state dir.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: cnm_store::RedbStoreError,
    },
    /// A configuration value was refused.
    #[error("invalid configuration {field}: {reason}")]
    Config {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The server task died.
    #[error("the server task failed: {0}")]
    Task(String),
}

impl DaemonError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Locked { .. } => ErrorKind::Conflict,
            Self::Io { .. } => ErrorKind::Unavailable,
            Self::Controller { source, .. } => source.kind(),
            Self::Store { source, .. } => source.kind(),
            Self::Config { .. } => ErrorKind::InvalidInput,
            Self::Task(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// One refused request: an HTTP status and Docker's error body `{"message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status (always 4xx or 5xx).
    pub status: StatusCode,
    /// The message shown to the user.
    pub message: String,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// A 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// The HTTP status a kind of failure maps to.
    pub fn status_of(kind: ErrorKind) -> StatusCode {
        match kind {
            ErrorKind::InvalidInput | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        docker_wording(&e).unwrap_or_else(|| Self::new(Self::status_of(e.kind()), e.to_string()))
    }
}

/// dockerd's text and status for the failures clients recognise by their words: kind and
/// minikube retry another subnet on "Pool overlaps…", scripts test for "Address already in use"
/// and for the default pools running out. The texts are libnetwork's (moby 20.10 to 28),
/// exactly, statuses included.
fn docker_wording(e: &CoreError) -> Option<ApiError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(ipam) = c.downcast_ref::<IpamError>() {
            match ipam {
                IpamError::PoolOverlap { .. } => {
                    return Some(ApiError::forbidden(
                        "Pool overlaps with other one on this address space",
                    ));
                }
                IpamError::NoDefaultPool { family } => {
                    let v = match family {
                        Family::V4 => 4,
                        Family::V6 => 6,
                    };
                    return Some(ApiError::not_found(format!(
                        "could not find an available, non-overlapping IPv{v} address pool \
                         among the defaults to assign to the network"
                    )));
                }
                IpamError::AddressInUse { .. } => {
                    return Some(ApiError::forbidden("Address already in use"));
                }
                _ => {}
            }
        }
        cause = c.source();
    }
    match e.primary() {
        CoreError::SingletonNetwork { driver, .. } => Some(ApiError::forbidden(format!(
            "only one instance of \"{driver}\" network is allowed"
        ))),
        // libnetwork's words are cnm's; its status is 403.
        CoreError::EndpointExists { network, name } => Some(ApiError::forbidden(format!(
            "endpoint with name {name} already exists in network {network}"
        ))),
        // dockerd looks an unknown driver up as a plugin.
        CoreError::DriverNotFound(name) | CoreError::IpamDriverNotFound(name) => {
            Some(ApiError::not_found(format!("plugin \"{name}\" not found")))
        }
        _ => None,
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "request refused");
        }
        (
            self.status,
            crate::server::DockerJson(ErrorResponse {
                message: self.message,
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_docker_statuses() {
        for (kind, status) in [
            (ErrorKind::InvalidInput, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::AlreadyExists, 409),
            (ErrorKind::Conflict, 409),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::Internal, 500),
        ] {
            assert_eq!(ApiError::status_of(kind).as_u16(), status, "{kind:?}");
        }
    }
}
