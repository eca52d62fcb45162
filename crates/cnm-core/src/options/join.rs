//! Join options: what the sandbox gets (host name, hosts entries, DNS) and how the endpoint ranks
//! as the sandbox's gateway.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{check_dns_name, parse_ip};
use crate::CoreError;

/// One option of `join` or `new_sandbox`, as libnetwork's `SandboxOption`/`EndpointOption`.
///
/// Constructors never fail; the options are checked together, before anything is done, when the
/// call that takes them starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinOption {
    /// The container's host name.
    Hostname(String),
    /// The container's domain name.
    Domainname(String),
    /// An extra hosts-file line.
    ExtraHost {
        /// The name.
        name: String,
        /// Its address.
        ip: IpAddr,
    },
    /// A name server for resolv.conf (replaces the host's).
    DnsServer(IpAddr),
    /// A search domain for resolv.conf.
    DnsSearch(String),
    /// A resolv.conf option (`ndots:2`).
    DnsOption(String),
    /// The endpoint's gateway priority: the highest ranks first for the sandbox's default route.
    GatewayPriority(i32),
    /// The sandbox is the host's own namespace (libnetwork's `OptionUseDefaultSandbox`): what
    /// a join with the `host` network gives by itself, for a sandbox made beforehand.
    HostNamespace,
    /// The sandbox never joins the controller's gateway network: whoever ends up holding its
    /// interfaces gives the way out (cnmd's Docker plugin hands them to dockerd, whose
    /// docker_gwbridge does).
    NoGatewayNetwork,
}

impl JoinOption {
    /// The container's host name.
    pub fn hostname(name: impl Into<String>) -> Self {
        Self::Hostname(name.into())
    }

    /// The container's domain name.
    pub fn domainname(name: impl Into<String>) -> Self {
        Self::Domainname(name.into())
    }

    /// An extra `ip name` line in the hosts file.
    pub fn extra_host(name: impl Into<String>, ip: IpAddr) -> Self {
        Self::ExtraHost {
            name: name.into(),
            ip,
        }
    }

    /// A name server.
    pub fn dns_server(ip: IpAddr) -> Self {
        Self::DnsServer(ip)
    }

    /// A search domain.
    pub fn dns_search(domain: impl Into<String>) -> Self {
        Self::DnsSearch(domain.into())
    }

    /// A resolv.conf option.
    pub fn dns_option(option: impl Into<String>) -> Self {
        Self::DnsOption(option.into())
    }

    /// The gateway priority of the joining endpoint.
    pub fn gateway_priority(priority: i32) -> Self {
        Self::GatewayPriority(priority)
    }

    /// The sandbox is the host's own namespace.
    pub fn host_namespace() -> Self {
        Self::HostNamespace
    }

    /// The sandbox never joins the controller's gateway network.
    pub fn no_gateway_network() -> Self {
        Self::NoGatewayNetwork
    }
}

/// Join options checked and gathered: the typed form the controller works with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JoinOptions {
    /// Host name.
    pub hostname: Option<String>,
    /// Domain name.
    pub domainname: Option<String>,
    /// Extra hosts lines.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Name servers (none: the host's, filtered).
    pub dns_servers: Vec<IpAddr>,
    /// Search domains.
    pub dns_search: Vec<String>,
    /// resolv.conf options.
    pub dns_options: Vec<String>,
    /// Gateway priority of the joining endpoint.
    pub gateway_priority: i32,
    /// The sandbox is the host's own namespace (see [`JoinOption::HostNamespace`]).
    #[serde(default)]
    pub host_namespace: bool,
    /// The sandbox never joins the gateway network (see [`JoinOption::NoGatewayNetwork`]).
    #[serde(default)]
    pub no_gateway_network: bool,
}

impl JoinOptions {
    /// Checks and gathers options; a later host name or domain name replaces an earlier one.
    pub fn from_options(options: impl IntoIterator<Item = JoinOption>) -> Result<Self, CoreError> {
        let mut out = Self::default();
        for option in options {
            match option {
                JoinOption::Hostname(h) => {
                    check_dns_name("hostname", &h)?;
                    out.hostname = Some(h);
                }
                JoinOption::Domainname(d) => {
                    check_dns_name("domainname", &d)?;
                    out.domainname = Some(d);
                }
                JoinOption::ExtraHost { name, ip } => {
                    check_dns_name("extra host", &name)?;
                    out.extra_hosts.push((name, ip));
                }
                JoinOption::DnsServer(ip) => out.dns_servers.push(ip),
                JoinOption::DnsSearch(d) => {
                    check_dns_name("dns search domain", &d)?;
                    out.dns_search.push(d);
                }
                JoinOption::DnsOption(o) => {
                    if o.is_empty() || o.chars().any(char::is_whitespace) {
                        return Err(CoreError::invalid(
                            "dns option",
                            o,
                            "it must be one word, like ndots:2",
                        ));
                    }
                    out.dns_options.push(o);
                }
                JoinOption::GatewayPriority(p) => out.gateway_priority = p,
                JoinOption::HostNamespace => out.host_namespace = true,
                JoinOption::NoGatewayNetwork => out.no_gateway_network = true,
            }
        }
        Ok(out)
    }

    /// The fully qualified host name (`test.docker.io`), if a host name is set.
    pub fn fqdn(&self) -> Option<String> {
        let host = self.hostname.as_deref()?;
        Some(match self.domainname.as_deref() {
            Some(domain) => format!("{host}.{domain}"),
            None => host.to_owned(),
        })
    }
}

impl IntoIterator for JoinOptions {
    type Item = JoinOption;
    type IntoIter = std::vec::IntoIter<JoinOption>;

    fn into_iter(self) -> Self::IntoIter {
        let mut v = Vec::new();
        v.extend(self.hostname.map(JoinOption::Hostname));
        v.extend(self.domainname.map(JoinOption::Domainname));
        v.extend(
            self.extra_hosts
                .into_iter()
                .map(|(name, ip)| JoinOption::ExtraHost { name, ip }),
        );
        v.extend(self.dns_servers.into_iter().map(JoinOption::DnsServer));
        v.extend(self.dns_search.into_iter().map(JoinOption::DnsSearch));
        v.extend(self.dns_options.into_iter().map(JoinOption::DnsOption));
        if self.gateway_priority != 0 {
            v.push(JoinOption::GatewayPriority(self.gateway_priority));
        }
        if self.host_namespace {
            v.push(JoinOption::HostNamespace);
        }
        if self.no_gateway_network {
            v.push(JoinOption::NoGatewayNetwork);
        }
        v.into_iter()
    }
}

/// Join options as a CLI or Docker's container config carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RawJoinOptions {
    /// Host name.
    pub hostname: String,
    /// Domain name.
    pub domainname: String,
    /// `name:ip` (Docker's `--add-host`; the first `:` separates, so IPv6 works: `h:fd00::1`).
    pub extra_hosts: Vec<String>,
    /// Name servers.
    pub dns: Vec<String>,
    /// Search domains.
    pub dns_search: Vec<String>,
    /// resolv.conf options.
    pub dns_options: Vec<String>,
    /// Gateway priority.
    pub gw_priority: i32,
}

impl TryFrom<RawJoinOptions> for JoinOptions {
    type Error = CoreError;

    fn try_from(raw: RawJoinOptions) -> Result<Self, CoreError> {
        let mut options = Vec::new();
        if !raw.hostname.is_empty() {
            options.push(JoinOption::Hostname(raw.hostname));
        }
        if !raw.domainname.is_empty() {
            options.push(JoinOption::Domainname(raw.domainname));
        }
        for line in raw.extra_hosts {
            let (name, ip) = line
                .split_once(':')
                .ok_or_else(|| CoreError::invalid("ExtraHosts", &line, "expected name:ip"))?;
            let ip = parse_ip("ExtraHosts", ip)?;
            options.push(JoinOption::ExtraHost {
                name: name.to_owned(),
                ip,
            });
        }
        for dns in raw.dns {
            options.push(JoinOption::DnsServer(parse_ip("Dns", &dns)?));
        }
        options.extend(raw.dns_search.into_iter().map(JoinOption::DnsSearch));
        options.extend(raw.dns_options.into_iter().map(JoinOption::DnsOption));
        options.push(JoinOption::GatewayPriority(raw.gw_priority));
        Self::from_options(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_gather_and_round_trip() {
        let o = JoinOptions::from_options([
            JoinOption::hostname("test"),
            JoinOption::domainname("docker.io"),
            JoinOption::extra_host("db", "10.0.0.5".parse().unwrap()),
            JoinOption::gateway_priority(10),
        ])
        .unwrap();
        assert_eq!(o.fqdn().as_deref(), Some("test.docker.io"));
        assert_eq!(o.gateway_priority, 10);
        assert_eq!(JoinOptions::from_options(o.clone()).unwrap(), o);
    }

    #[test]
    fn raw_parses_and_bad_inputs_are_named() {
        let raw = RawJoinOptions {
            hostname: "web".into(),
            extra_hosts: vec!["h6:fd00::1".into()],
            dns: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        let o = JoinOptions::try_from(raw).unwrap();
        assert_eq!(o.extra_hosts[0].1.to_string(), "fd00::1");
        for (raw, needles) in [
            (
                RawJoinOptions {
                    hostname: "bad host".into(),
                    ..Default::default()
                },
                ["hostname", "bad host"],
            ),
            (
                RawJoinOptions {
                    extra_hosts: vec!["nocolon".into()],
                    ..Default::default()
                },
                ["ExtraHosts", "nocolon"],
            ),
            (
                RawJoinOptions {
                    extra_hosts: vec!["h:1.2.3".into()],
                    ..Default::default()
                },
                ["ExtraHosts", "1.2.3"],
            ),
            (
                RawJoinOptions {
                    dns: vec!["8.8.8".into()],
                    ..Default::default()
                },
                ["Dns", "8.8.8"],
            ),
            (
                RawJoinOptions {
                    dns_options: vec!["a b".into()],
                    ..Default::default()
                },
                ["dns option", "a b"],
            ),
        ] {
            let e = JoinOptions::try_from(raw).unwrap_err();
            for n in needles {
                assert!(e.to_string().contains(n), "{e} lacks {n}");
            }
        }
    }
}
