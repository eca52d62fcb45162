//! Where a plugin listens: a unix socket or a TCP address, parsed from a spec URL.

use std::fmt;
use std::path::{Path, PathBuf};

/// A plugin's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginAddr {
    /// A unix socket (`unix:///run/docker/plugins/NAME.sock`).
    Unix(PathBuf),
    /// A TCP `host:port` (`tcp://127.0.0.1:9000`, or `http://…`).
    Tcp(String),
}

/// Why a URL is not a plugin address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AddrProblem {
    /// Malformed, naming what is wrong.
    Invalid(String),
    /// Well formed but needs TLS.
    Tls,
}

impl PluginAddr {
    /// Parses a spec URL: `unix:///absolute/path`, `tcp://host:port` or `http://host:port`.
    ///
    /// As Docker, a path after `host:port` is ignored (requests go to `/Plugin.Method`).
    /// `https://` is refused: this build speaks plain HTTP only, and a plugin that asked for
    /// TLS must not silently get plaintext.
    pub(crate) fn parse(url: &str) -> Result<Self, AddrProblem> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(AddrProblem::Invalid(format!(
                "{url:?} is not a URL (expected unix:///path or tcp://host:port)"
            )));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "unix" => {
                let path = Path::new(rest);
                if !path.is_absolute() {
                    return Err(AddrProblem::Invalid(format!(
                        "{url:?}: the socket path must be absolute (unix:///path)"
                    )));
                }
                Ok(Self::Unix(path.to_owned()))
            }
            "tcp" | "http" => {
                let host_port = rest.split('/').next().unwrap_or_default();
                let Some((host, port)) = host_port.rsplit_once(':') else {
                    return Err(AddrProblem::Invalid(format!("{url:?}: no port")));
                };
                if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(AddrProblem::Invalid(format!(
                        "{url:?}: expected host:port with a port from 1 to 65535"
                    )));
                }
                Ok(Self::Tcp(host_port.to_owned()))
            }
            "https" => Err(AddrProblem::Tls),
            other => Err(AddrProblem::Invalid(format!(
                "{url:?}: unknown protocol {other:?} (expected unix, tcp or http)"
            ))),
        }
    }

    /// The `Host` header for requests to this address.
    pub(crate) fn host_header(&self) -> &str {
        match self {
            // Any value will do on a unix socket; Docker's client sends a placeholder too.
            Self::Unix(_) => "plugin",
            Self::Tcp(host_port) => host_port,
        }
    }
}

impl fmt::Display for PluginAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(host_port) => write!(f, "tcp://{host_port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_schemes_docker_accepts() {
        assert_eq!(
            PluginAddr::parse("unix:///other.sock"),
            Ok(PluginAddr::Unix("/other.sock".into()))
        );
        assert_eq!(
            PluginAddr::parse(" tcp://127.0.0.1:9000\n"),
            Ok(PluginAddr::Tcp("127.0.0.1:9000".into()))
        );
        assert_eq!(
            PluginAddr::parse("http://[::1]:8080/docker/plugin"),
            Ok(PluginAddr::Tcp("[::1]:8080".into()))
        );
        assert_eq!(
            PluginAddr::parse("unix:///run/docker/plugins/x.sock")
                .unwrap()
                .to_string(),
            "unix:///run/docker/plugins/x.sock"
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(
            PluginAddr::parse("https://example.com/docker/plugin"),
            Err(AddrProblem::Tls)
        );
        for bad in [
            "/run/x.sock",
            "unix://relative.sock",
            "tcp://host",
            "tcp://:80",
            "tcp://h:0",
            "tcp://h:99999",
            "ftp://h:21",
        ] {
            let Err(AddrProblem::Invalid(reason)) = PluginAddr::parse(bad) else {
                panic!("{bad} accepted")
            };
            assert!(reason.contains(bad.trim()), "{reason}");
        }
    }
}
