//! The one error of the protocol client: finding, activating and calling a plugin.

use std::path::PathBuf;
use std::time::Duration;

use cnm_types::ErrorKind;

/// Everything that can go wrong between cnm and a plugin process.
///
/// Every variant that concerns a call names the plugin and the call (`NetworkDriver.Join`), so
/// the message alone tells an operator which process to look at and what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The name cannot be a plugin's (it would escape the plugin directories).
    #[error("invalid plugin name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No socket and no spec file has this name.
    #[error(
        "plugin {name:?} not found: no socket and no spec file of that name (looked for {})",
        Paths(.searched)
    )]
    NotFound {
        /// The name asked for.
        name: String,
        /// Every path looked at, in Docker's order.
        searched: Vec<PathBuf>,
    },
    /// A spec file exists but cannot be read.
    #[error("plugin {name:?}: cannot read spec file {}", .path.display())]
    ReadSpec {
        /// The plugin.
        name: String,
        /// The spec file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A spec file does not hold a usable address.
    #[error("plugin {name:?}: invalid spec file {}: {reason}", .path.display())]
    InvalidSpec {
        /// The plugin.
        name: String,
        /// The spec file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin's address asks for something this build does not do (TLS).
    #[error("plugin {name:?}: {what} is not supported (spec file {})", .path.display())]
    Unsupported {
        /// The plugin.
        name: String,
        /// The spec file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// The plugin answered the handshake but does not offer what it is used for.
    #[error("plugin {name:?} does not implement {wanted} (its handshake lists {implements:?})")]
    NotImplemented {
        /// The plugin.
        name: String,
        /// `NetworkDriver` or `IpamDriver`.
        wanted: &'static str,
        /// What its `Plugin.Activate` answer listed.
        implements: Vec<String>,
    },
    /// Nothing accepted the connection (the plugin is not running); the request was not sent.
    #[error("plugin {plugin:?}: {call}: cannot connect to {addr}{waited}")]
    Unreachable {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The address connected to.
        addr: String,
        /// `", waited …"` when the client waited for the plugin to come up.
        waited: Waited,
        /// The connection error.
        #[source]
        source: std::io::Error,
    },
    /// No complete answer within the call's time limit (the plugin hangs).
    #[error("plugin {plugin:?}: {call}: no answer within {timeout:?}")]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The limit.
        timeout: Duration,
    },
    /// The connection broke after the request may have been delivered (the plugin died).
    #[error("plugin {plugin:?}: {call}: connection lost before a complete answer")]
    ConnectionLost {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The plugin does not serve this method (HTTP 404), even after being activated again.
    #[error("plugin {plugin:?}: {call}: not implemented by the plugin (HTTP 404{message})")]
    MethodNotFound {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// `": …"` with the plugin's text, if it gave one.
        message: Detail,
    },
    /// The plugin answered with an HTTP error status.
    #[error("plugin {plugin:?}: {call}: HTTP {status}: {message}")]
    Status {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The status code.
        status: u16,
        /// The plugin's `Err`/`Error` text, or the start of its body.
        message: String,
    },
    /// The plugin said the call failed (`Err` for network drivers, `Error` for IPAM drivers).
    #[error("plugin {plugin:?}: {call}: {message}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The plugin's error text.
        message: String,
    },
    /// The answer is not the JSON this call answers with.
    #[error("plugin {plugin:?}: {call}: the answer is not valid JSON for this call ({excerpt})")]
    Garbage {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The start of the answer, quoted.
        excerpt: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The answer is larger than the client accepts.
    #[error("plugin {plugin:?}: {call}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The limit.
        limit: usize,
    },
    /// A field of the answer has a value the protocol does not allow.
    #[error("plugin {plugin:?}: {call}: invalid {field} {value:?} in the answer: {reason}")]
    InvalidAnswer {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The field (`InterfaceName.SrcName`, `Pool`, …).
        field: &'static str,
        /// The value as answered.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The call failed in a way that suggests a restart, and activating the plugin again failed.
    #[error("plugin {plugin:?}: {call}: the plugin went away and could not be activated again")]
    Reactivation {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// Why the activation failed.
        #[source]
        source: Box<PluginError>,
    },
    /// A request could not be encoded (a bug: every request type encodes).
    #[error("plugin {plugin:?}: {call}: cannot encode the request")]
    Encode {
        /// The plugin.
        plugin: String,
        /// The call.
        call: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl PluginError {
    /// The kind of failure: a plugin that cannot be reached or does not answer is
    /// `Unavailable`; one that answers wrongly or refuses is `Internal` (Docker answers 500).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidName { .. } => ErrorKind::InvalidInput,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Unsupported { .. } | Self::NotImplemented { .. } => ErrorKind::Unsupported,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::ConnectionLost { .. } => {
                ErrorKind::Unavailable
            }
            Self::Reactivation { source, .. } => source.kind(),
            Self::ReadSpec { .. }
            | Self::InvalidSpec { .. }
            | Self::MethodNotFound { .. }
            | Self::Status { .. }
            | Self::Refused { .. }
            | Self::Garbage { .. }
            | Self::TooLarge { .. }
            | Self::InvalidAnswer { .. }
            | Self::Encode { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the plugin may have done the work although the call failed: no answer, a broken
    /// connection, an answer that cannot be read, or a success whose content cnm refuses. The
    /// caller then sends the inverse call, and reports it if that fails too. A plugin that
    /// answered with an error, or could not be reached, did nothing (by the protocol).
    pub fn may_have_acted(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::ConnectionLost { .. }
            | Self::Garbage { .. }
            | Self::TooLarge { .. }
            | Self::InvalidAnswer { .. } => true,
            Self::Reactivation { source, .. } => source.may_have_acted(),
            _ => false,
        }
    }
}

/// Renders a list of paths for [`PluginError::NotFound`].
struct Paths<'a>(&'a [PathBuf]);

impl std::fmt::Display for Paths<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", p.display())?;
        }
        Ok(())
    }
}

/// `", waited 300ms for it to answer"` when the client waited, nothing otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited(pub Option<Duration>);

impl std::fmt::Display for Waited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, " (waited {d:?} for it to answer)"),
            None => Ok(()),
        }
    }
}

/// `": text"` when there is a text, nothing otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail(pub Option<String>);

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(text) => write!(f, ": {text}"),
            None => Ok(()),
        }
    }
}
