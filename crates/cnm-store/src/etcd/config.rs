//! Where the cluster store is and how long to wait for it: [`EtcdConfig`], parsed from the
//! `etcd://HOST:PORT[,HOST:PORT…]` form users give (`cnmd --cluster-store`), and the errors of
//! connecting.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cnm_types::ErrorKind;

/// The URL scheme of a cluster-store address.
pub const SCHEME: &str = "etcd://";
/// The key prefix cnm's records live under in etcd, unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/cnm/";
/// How long connecting waits for etcd to answer, unless configured otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request waits for etcd to answer, unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the etcd store could not be configured or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdStoreError {
    /// The cluster-store address is malformed.
    #[error("invalid cluster store address {value:?}: {reason}")]
    InvalidEndpoints {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key root is malformed.
    #[error("invalid etcd key root {value:?}: {reason}")]
    InvalidRoot {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A timeout is out of range.
    #[error("invalid etcd {field} {value:?}: must be between 1ms and 1h")]
    InvalidTimeout {
        /// Which timeout.
        field: &'static str,
        /// What was given.
        value: Duration,
    },
    /// No endpoint answered within the connect timeout.
    #[error("cluster store {endpoints} is unreachable: no answer within {timeout:?}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: EtcdEndpoints,
        /// How long connecting waited.
        timeout: Duration,
        /// What the client reported, if it failed before the timeout.
        #[source]
        source: Option<etcd_client::Error>,
    },
    /// One request got no answer within the request timeout.
    #[error("cluster store {endpoints} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoints.
        endpoints: EtcdEndpoints,
        /// How long the request waited.
        timeout: Duration,
    },
}

impl EtcdStoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidEndpoints { .. }
            | Self::InvalidRoot { .. }
            | Self::InvalidTimeout { .. } => ErrorKind::InvalidInput,
            Self::Unreachable { .. } | Self::Timeout { .. } => ErrorKind::Unavailable,
        }
    }
}

/// One or more etcd client endpoints: `etcd://HOST:PORT[,HOST:PORT…]`, HOST an IPv4 address, a
/// bracketed IPv6 address or a DNS name. Plain HTTP: this build has no TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdEndpoints {
    /// `HOST:PORT` each, as given.
    hosts: Vec<String>,
}

impl EtcdEndpoints {
    /// The gRPC URLs the client dials (`http://HOST:PORT`).
    pub fn urls(&self) -> Vec<String> {
        self.hosts.iter().map(|h| format!("http://{h}")).collect()
    }

    /// The `HOST:PORT` of each endpoint.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

impl fmt::Display for EtcdEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.hosts.join(","))
    }
}

impl FromStr for EtcdEndpoints {
    type Err = EtcdStoreError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| EtcdStoreError::InvalidEndpoints {
            value: value.to_owned(),
            reason,
        };
        let Some(rest) = value.strip_prefix(SCHEME) else {
            return Err(invalid(format!(
                "must start with {SCHEME} (e.g. {SCHEME}127.0.0.1:2379)"
            )));
        };
        if rest.is_empty() {
            return Err(invalid("names no endpoint".to_owned()));
        }
        let hosts = rest
            .split(',')
            .map(|h| check_host_port(h).map_err(|reason| invalid(format!("{h:?}: {reason}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { hosts })
    }
}

fn check_host_port(hp: &str) -> Result<String, &'static str> {
    let (host, port) = hp.rsplit_once(':').ok_or("must be HOST:PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| "port must be a number from 1 to 65535")?;
    if port == 0 {
        return Err("port must be a number from 1 to 65535");
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "bracketed host must be an IPv6 address")?;
    } else if host.parse::<std::net::Ipv4Addr>().is_err() {
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err("host must be an IPv4 address, [IPv6] or a DNS name");
        }
    }
    Ok(hp.to_owned())
}

/// How to reach the cluster store and where in it cnm keeps its records.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub(crate) endpoints: EtcdEndpoints,
    pub(crate) root: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl EtcdConfig {
    /// The defaults: keys under [`DEFAULT_ROOT`], [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(endpoints: EtcdEndpoints) -> Self {
        Self {
            endpoints,
            root: DEFAULT_ROOT.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Keeps every key under `root` (e.g. `/cnm/`, `/cluster-b/cnm/`), so that several clusters
    /// share one etcd. Must start and end with `/` and be printable ASCII without spaces.
    pub fn root(mut self, root: &str) -> Result<Self, EtcdStoreError> {
        let invalid = |reason| EtcdStoreError::InvalidRoot {
            value: root.to_owned(),
            reason,
        };
        if !root.starts_with('/') || !root.ends_with('/') {
            return Err(invalid("must start and end with '/'"));
        }
        if !root.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be printable ASCII without spaces"));
        }
        self.root = root.to_owned();
        Ok(self)
    }

    /// How long [`crate::EtcdStore::connect`] waits for an answer before it gives up.
    pub fn connect_timeout(mut self, timeout: Duration) -> Result<Self, EtcdStoreError> {
        self.connect_timeout = check_timeout("connect timeout", timeout)?;
        Ok(self)
    }

    /// How long each request waits for an answer before it fails with a backend error.
    pub fn request_timeout(mut self, timeout: Duration) -> Result<Self, EtcdStoreError> {
        self.request_timeout = check_timeout("request timeout", timeout)?;
        Ok(self)
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &EtcdEndpoints {
        &self.endpoints
    }
}

fn check_timeout(field: &'static str, value: Duration) -> Result<Duration, EtcdStoreError> {
    if value < Duration::from_millis(1) || value > Duration::from_secs(3600) {
        return Err(EtcdStoreError::InvalidTimeout { field, value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoint_lists() {
        let e: EtcdEndpoints = "etcd://127.0.0.1:2379,[::1]:2379,etcd-1.example:12379"
            .parse()
            .unwrap();
        assert_eq!(
            e.urls(),
            [
                "http://127.0.0.1:2379",
                "http://[::1]:2379",
                "http://etcd-1.example:12379"
            ]
        );
        assert_eq!(
            e.to_string(),
            "etcd://127.0.0.1:2379,[::1]:2379,etcd-1.example:12379"
        );
    }

    #[test]
    fn refuses_bad_addresses_naming_them() {
        for (bad, why) in [
            ("127.0.0.1:2379", "must start with etcd://"),
            ("http://127.0.0.1:2379", "must start with etcd://"),
            ("etcd://", "names no endpoint"),
            ("etcd://127.0.0.1", "must be HOST:PORT"),
            ("etcd://127.0.0.1:0", "port must be"),
            ("etcd://127.0.0.1:70000", "port must be"),
            ("etcd://a:1,,b:2", "must be HOST:PORT"),
            ("etcd://[zz]:1", "IPv6"),
            ("etcd://bad_name:1", "DNS name"),
        ] {
            let e = bad.parse::<EtcdEndpoints>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let text = e.to_string();
            assert!(text.contains(bad) && text.contains(why), "{bad}: {text}");
        }
    }

    #[test]
    fn root_and_timeouts_are_checked() {
        let c = EtcdConfig::new("etcd://127.0.0.1:2379".parse().unwrap());
        assert_eq!(c.root, DEFAULT_ROOT);
        let c = c.root("/b/cnm/").unwrap();
        assert_eq!(c.root, "/b/cnm/");
        for bad in ["cnm/", "/cnm", "/c m/", ""] {
            let e = c.clone().root(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        let e = c.connect_timeout(Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("connect timeout"), "{e}");
    }
}
