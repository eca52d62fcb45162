//! resolv.conf both ways: the host's, read again whenever it changes (the upstream servers), and
//! each sandbox's, rendered the way Docker renders it for its internal resolver.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cnm_sandbox::ResolvConf;

use crate::records::SandboxDns;

/// The address every sandbox's resolver listens on, inside the sandbox (Docker's).
pub const SANDBOX_RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// A sandbox's DNS settings as given at create (`--dns`, `--dns-search`, `--dns-option`);
/// empty lists keep the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsOverrides {
    /// Name servers: the resolver's upstreams for this sandbox.
    pub servers: Vec<IpAddr>,
    /// Search domains (`.` alone means none).
    pub search: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

impl DnsOverrides {
    /// Overrides from the three lists.
    pub fn new(servers: Vec<IpAddr>, search: Vec<String>, options: Vec<String>) -> Self {
        Self {
            servers,
            search,
            options,
        }
    }
}

/// What [`sandbox_resolv_conf`] produces: the file to write and the resolver settings to pass to
/// [`crate::Resolver::attach_sandbox`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxResolvConf {
    /// The sandbox's /etc/resolv.conf.
    pub file: ResolvConf,
    /// The resolver's settings for the sandbox.
    pub dns: SandboxDns,
}

/// A sandbox's resolv.conf, as Docker writes it for a container behind its internal resolver:
/// `nameserver 127.0.0.11` only; the host's search domains and options carried over unless
/// overridden; an invalid `ndots` dropped; `ndots:0` added when neither the host nor the
/// overrides set ndots (so single-label names reach the resolver first). The servers the file
/// no longer lists become the resolver's upstreams: the override servers in
/// [`SandboxDns::servers`]; the host's are followed live by the resolver itself.
pub fn sandbox_resolv_conf(host: &ResolvConf, overrides: &DnsOverrides) -> SandboxResolvConf {
    let search = if overrides.search.is_empty() {
        host.search.clone()
    } else {
        overrides
            .search
            .iter()
            .filter(|s| s.as_str() != ".")
            .cloned()
            .collect()
    };
    let mut options = if overrides.options.is_empty() {
        host.options.clone()
    } else {
        overrides.options.clone()
    };
    options.retain(|o| match o.strip_prefix("ndots:") {
        Some(n) => n.parse::<u32>().is_ok(),
        None => o != "ndots",
    });
    let ndots_set = options.iter().any(|o| o.starts_with("ndots:"));
    if !ndots_set {
        options.push("ndots:0".to_owned());
    }
    SandboxResolvConf {
        file: ResolvConf {
            nameservers: vec![IpAddr::V4(SANDBOX_RESOLVER)],
            search,
            options,
        },
        dns: SandboxDns {
            servers: overrides
                .servers
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect(),
            ndots_set,
        },
    }
}

/// What identifies one version of the file: a rewrite or a rename over it changes one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug)]
struct Cached {
    stamp: Option<Stamp>,
    servers: Arc<[SocketAddr]>,
}

/// The host's resolv.conf, followed: every forwarded query stats the file (one syscall, no
/// timer, no thread) and re-reads it when it changed, so a new upstream applies to the next
/// query.
#[derive(Debug)]
pub(crate) struct HostResolvConf {
    path: PathBuf,
    cache: Mutex<Cached>,
}

impl HostResolvConf {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(Cached {
                stamp: None,
                servers: Arc::from(Vec::new()),
            }),
        }
    }

    /// The host's name servers now (port 53), in file order; empty when the file is missing.
    pub(crate) fn servers(&self) -> Arc<[SocketAddr]> {
        let stamp = stamp_of(&self.path);
        {
            let cache = self.cache.lock().expect("resolv.conf cache lock poisoned");
            if stamp.is_some() && cache.stamp == stamp {
                return cache.servers.clone();
            }
        }
        let servers: Arc<[SocketAddr]> = match std::fs::read_to_string(&self.path) {
            Ok(text) => ResolvConf::parse(&text)
                .nameservers
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "host resolv.conf unreadable");
                Arc::from(Vec::new())
            }
        };
        tracing::debug!(path = %self.path.display(), ?servers, "host resolv.conf (re)read");
        let mut cache = self.cache.lock().expect("resolv.conf cache lock poisoned");
        cache.stamp = stamp;
        cache.servers = servers.clone();
        servers
    }
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rendering_keeps_search_and_options_and_adds_ndots0() {
        let host = ResolvConf::parse(
            "nameserver 127.0.0.53\nsearch corp.example\noptions edns0 trust-ad\n",
        );
        let rc = sandbox_resolv_conf(&host, &DnsOverrides::default());
        assert_eq!(
            rc.file.render(),
            "search corp.example\nnameserver 127.0.0.11\noptions edns0 trust-ad ndots:0\n"
        );
        assert_eq!(rc.dns, SandboxDns::default());
    }

    #[test]
    fn host_ndots_is_kept_and_marks_the_sandbox() {
        let host = ResolvConf::parse("nameserver 10.0.0.1\noptions ndots:2\n");
        let rc = sandbox_resolv_conf(&host, &DnsOverrides::default());
        assert_eq!(rc.file.options, ["ndots:2"]);
        assert!(rc.dns.ndots_set);
        let host = ResolvConf::parse("options ndots:-1 ndots:x rotate\n");
        let rc = sandbox_resolv_conf(&host, &DnsOverrides::default());
        assert_eq!(
            rc.file.options,
            ["rotate", "ndots:0"],
            "invalid ndots dropped"
        );
        assert!(!rc.dns.ndots_set);
    }

    #[test]
    fn overrides_replace_and_become_upstreams() {
        let host = ResolvConf::parse("nameserver 10.0.0.1\nsearch a.example\noptions ndots:3\n");
        let o = DnsOverrides::new(
            vec!["192.0.2.53".parse().unwrap()],
            vec![".".into()],
            vec!["timeout:1".into()],
        );
        let rc = sandbox_resolv_conf(&host, &o);
        assert_eq!(
            rc.file.render(),
            "nameserver 127.0.0.11\noptions timeout:1 ndots:0\n"
        );
        assert_eq!(
            rc.dns.servers,
            vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(!rc.dns.ndots_set);
    }

    #[test]
    fn host_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        let conf = HostResolvConf::new(path.clone());
        assert!(conf.servers().is_empty(), "a missing file has no servers");
        std::fs::write(&path, "nameserver 192.0.2.1\n").unwrap();
        assert_eq!(&*conf.servers(), &["192.0.2.1:53".parse().unwrap()]);
        // Replaced by rename, as resolvconf and systemd-resolved do.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, "nameserver 192.0.2.2\nnameserver 192.0.2.3\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(conf.servers().len(), 2);
    }
}
