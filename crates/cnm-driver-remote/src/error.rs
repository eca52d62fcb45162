//! The adapters' error: a plugin's failure, with whatever undoing it failed too, or a refusal
//! of cnm's own.

use cnm_core::cnm_ipam::PoolId;
use cnm_types::ErrorKind;
use ipnet::IpNet;

use crate::plugin::PluginError;

/// What the remote driver and the remote IPAM report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The plugin failed, and so did the calls that were to undo what it may have done.
    #[error("{cause}; undoing it failed too: {}", List(.cleanup))]
    Cleanup {
        /// The first failure.
        #[source]
        cause: PluginError,
        /// Every failed undo.
        cleanup: Vec<PluginError>,
    },
    /// Driver-wide options were given: a plugin is configured out of band, as in Docker.
    #[error(
        "remote driver {driver:?} takes no driver-wide options (a plugin is configured out of band), got {key:?}"
    )]
    Configure {
        /// The plugin.
        driver: String,
        /// The first option given.
        key: String,
    },
    /// A pool the IPAM plugin handed out for an explicitly requested subnet overlaps a pool
    /// of an existing network (libnetwork's `ErrPoolOverlap` wording).
    #[error(
        "Pool overlaps with other one on this address space: IPAM plugin {plugin:?} returned {pool}, which overlaps {existing} of an existing network"
    )]
    PoolOverlap {
        /// The plugin.
        plugin: String,
        /// The pool it returned.
        pool: IpNet,
        /// The existing network's pool.
        existing: IpNet,
    },
    /// Every pool the IPAM plugin offered overlapped an existing network or the host.
    #[error(
        "IPAM plugin {plugin:?} offered only pools that overlap existing networks or the host's: {}",
        List(.offered)
    )]
    NoFreePool {
        /// The plugin.
        plugin: String,
        /// What it offered, in order.
        offered: Vec<IpNet>,
    },
    /// A pool id that no pool requested through this adapter has.
    #[error("IPAM plugin {plugin:?}: no pool {pool} was requested through this controller")]
    UnknownPool {
        /// The plugin.
        plugin: String,
        /// The id asked for.
        pool: PoolId,
    },
    /// A pool to adopt after a restart without replay, recorded without the plugin's id.
    #[error(
        "IPAM plugin {plugin:?}: pool {pool} was recorded without the plugin's PoolID, so it \
         cannot be taken back without asking for it again (the plugin does not want requests \
         replayed)"
    )]
    NoPluginPoolId {
        /// The plugin.
        plugin: String,
        /// The pool.
        pool: PoolId,
    },
}

impl RemoteError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Plugin(e) | Self::Cleanup { cause: e, .. } => e.kind(),
            Self::Configure { .. } => ErrorKind::Unsupported,
            Self::PoolOverlap { .. } => ErrorKind::Conflict,
            Self::NoFreePool { .. } => ErrorKind::Unavailable,
            Self::UnknownPool { .. } => ErrorKind::NotFound,
            Self::NoPluginPoolId { .. } => ErrorKind::Conflict,
        }
    }

    /// `cause`, with the failed undos attached when there are any.
    pub fn with_cleanup(cause: PluginError, cleanup: Vec<PluginError>) -> Self {
        if cleanup.is_empty() {
            Self::Plugin(cause)
        } else {
            Self::Cleanup { cause, cleanup }
        }
    }

    /// The plugin error behind this one, if any.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Self::Plugin(e) | Self::Cleanup { cause: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Renders a list as `a; b; c`.
struct List<'a, T>(&'a [T]);

impl<T: std::fmt::Display> std::fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}
