//! Ports: protocols, port ranges, exposed ports and published ports (port bindings), with the
//! one grammar every layer parses them with, `docker run -p`'s
//!
//! ```text
//! [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]      an IPv6 HOST_IP goes in brackets
//! ```
//!
//! and its tail `CONTAINER_PORT[-END][/PROTO]` for an exposed port. [`PortBinding::validate`] is
//! the one set of rules; parsing applies it, so a parsed binding is a valid one.
//!
//! The path of a published port, from `cnm connect -p 8080:80` to the firewall's netlink
//! element, is five conversions:
//!
//! 1. the CLI parses the argument into a [`PortBinding`] (clap, with [`PortBinding::from_str`]);
//! 2. it sends it as `"8080:80/tcp"` (`Display`) in `cnm_api::v1::SandboxConnectRequest::ports`;
//! 3. cnmd parses it back into a `PortBinding` as the body is decoded (the daemon checks what it
//!    is sent), which goes on unchanged into `EndpointOptions::port_bindings`, the endpoint's
//!    record and the driver's `program_external_connectivity` (the library's raw, Docker-shaped
//!    `RawEndpointOptions::port_bindings` strings enter here too, through the same parser);
//! 4. the bridge driver turns the binding and the host ports it reserved into one
//!    `cnm_firewall::PortMapping` per container address family;
//! 5. the firewall turns each mapping into the set and map elements of its netlink batch.
//!
//! ```
//! use cnm_types::port::{PortBinding, Protocol};
//! let b: PortBinding = "127.0.0.1:8080:80/udp".parse().unwrap();
//! assert_eq!((b.proto, b.container_port.start), (Protocol::Udp, 80));
//! assert_eq!(b.to_string(), "127.0.0.1:8080:80/udp");
//! assert!("[::1]:8080-8081:80".parse::<PortBinding>().is_err()); // ranges of different sizes
//! ```

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// What the grammar expects, for error messages.
const GRAMMAR: &str = "[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO], e.g. 8080:80 or \
                       127.0.0.1:8080:80/tcp; an IPv6 host IP goes in brackets";

/// A transport protocol a port can be exposed or published for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    #[default]
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number (what a packet's header and nftables carry).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The lowercase name: `tcp`, `udp` or `sctp` (also the nftables keyword).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = PortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "sctp" => Ok(Self::Sctp),
            _ => Err(PortError::Protocol(s.to_owned())),
        }
    }
}

/// An inclusive, non-empty range of ports; a single port is `start == end`. Port 0 is never part
/// of a range (as a host port, "any" is spelled by leaving the host port out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    /// The first port.
    pub start: u16,
    /// The last port (equal to `start` for one port).
    pub end: u16,
}

impl PortRange {
    /// A validated range: `1 <= start <= end`.
    pub fn new(start: u16, end: u16) -> Result<Self, PortError> {
        let range = Self { start, end };
        range.validate()?;
        Ok(range)
    }

    /// One port.
    pub fn single(port: u16) -> Result<Self, PortError> {
        Self::new(port, port)
    }

    /// Checks `1 <= start <= end` (the fields are public, so a range built by hand may not hold).
    pub fn validate(&self) -> Result<(), PortError> {
        if self.start == 0 || self.end < self.start {
            return Err(PortError::Range(format!("{}-{}", self.start, self.end)));
        }
        Ok(())
    }

    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for PortRange {
    type Err = PortError;
    /// `80` or `8000-8010`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PortError::Range(s.to_owned());
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let start: u16 = a.parse().map_err(|_| bad())?;
        let end: u16 = b.parse().map_err(|_| bad())?;
        Self::new(start, end).map_err(|_| bad())
    }
}

/// A port (range) a container exposes, published or not: `80`, `80/tcp`, `8000-8010/udp`. It is
/// the container side of a [`PortBinding`], and its spelling the tail of the binding's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExposedPort {
    /// The protocol.
    pub proto: Protocol,
    /// The port(s).
    pub ports: PortRange,
}

impl FromStr for ExposedPort {
    type Err = PortError;
    /// `CONTAINER_PORT[-END][/PROTO]`; the protocol defaults to tcp.
    fn from_str(s: &str) -> Result<Self, PortError> {
        let (ports, proto) = match s.rsplit_once('/') {
            Some((ports, proto)) => (ports, proto.parse()?),
            None => (s, Protocol::Tcp),
        };
        Ok(Self {
            proto,
            ports: ports.parse()?,
        })
    }
}

impl fmt::Display for ExposedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ports, self.proto)
    }
}

/// One published port (or port range) of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    /// The protocol.
    pub proto: Protocol,
    /// The container port(s).
    pub container_port: PortRange,
    /// The host address to listen on; `None` for every address (of both families).
    pub host_ip: Option<IpAddr>,
    /// The host port(s); `None` to pick an ephemeral port from `ip_local_port_range`.
    pub host_port: Option<PortRange>,
}

/// Why a port specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// Not a valid port or port range.
    #[error("invalid port or port range {0:?}: expected a port 1-65535 or a range A-B")]
    Range(String),
    /// Not tcp, udp or sctp.
    #[error("invalid protocol {0:?}: expected tcp, udp or sctp")]
    Protocol(String),
    /// Not a valid host address.
    #[error("invalid host IP {0:?}: expected an IPv4 address, or an IPv6 address in brackets")]
    HostIp(String),
    /// Host and container ranges differ in size.
    #[error("host port range {host} and container port range {container} differ in size")]
    RangeMismatch {
        /// The host range.
        host: PortRange,
        /// The container range.
        container: PortRange,
    },
    /// The host address is not one a port can be published on (broadcast, multicast, reserved,
    /// IPv4-mapped, link-local IPv6).
    #[error(
        "host IP {ip} cannot take a published port: it is {reason}; give a unicast address of \
         the host, or none for every address"
    )]
    HostIpNotUnicast {
        /// The address.
        ip: IpAddr,
        /// What it is.
        reason: String,
    },
    /// The whole specification is malformed.
    #[error("invalid port binding {spec:?}: {reason} (expected {GRAMMAR})")]
    Spec {
        /// The specification as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl PortError {
    /// Every malformed port is invalid input.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Checks a host address for published ports: the unspecified address (every address of its
/// family) or a unicast one. Loopback (`127.0.0.1`, `::1`) and IPv4 link-local are the
/// host's own and fine; broadcast, multicast, "this network", the reserved `240.0.0.0/4`,
/// IPv4-mapped or -compatible IPv6 (write the IPv4 address) and IPv6 link-local (a socket needs
/// a zone a binding cannot carry) are refused.
pub fn check_host_ip(ip: IpAddr) -> Result<(), PortError> {
    if ip.is_unspecified() || ip.is_loopback() {
        return Ok(());
    }
    let link_local_v4 = matches!(ip, IpAddr::V4(v4) if v4.is_link_local());
    if link_local_v4 {
        return Ok(());
    }
    let reason = match ip {
        IpAddr::V6(v6) if let Some(v4) = v6.to_ipv4_mapped() => {
            Some(format!("an IPv4-mapped address (write it as {v4})"))
        }
        _ => crate::reserved::RESERVED
            .iter()
            .find(|r| r.net.contains(&ip))
            .map(|r| format!("in {}, {}", r.net, r.what)),
    };
    match reason {
        Some(reason) => Err(PortError::HostIpNotUnicast { ip, reason }),
        None => Ok(()),
    }
}

impl PortBinding {
    /// The rules every binding obeys, wherever it came from: valid ranges, host and container
    /// ranges of the same size (a single host port may front a single container port only), and
    /// a host address that can take a published port (see [`check_host_ip`]). Parsing applies
    /// them; call this for a binding built by hand.
    pub fn validate(&self) -> Result<(), PortError> {
        self.container_port.validate()?;
        if let Some(ip) = self.host_ip {
            check_host_ip(ip)?;
        }
        match self.host_port {
            Some(host) => {
                host.validate()?;
                if host.len() != self.container_port.len() {
                    return Err(PortError::RangeMismatch {
                        host,
                        container: self.container_port,
                    });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The container side: what the binding publishes.
    pub fn exposed(&self) -> ExposedPort {
        ExposedPort {
            proto: self.proto,
            ports: self.container_port,
        }
    }
}

impl FromStr for PortBinding {
    type Err = PortError;
    /// Parses `docker run -p` syntax: `80`, `8080:80`, `127.0.0.1:8080:80/udp`, `[::1]:8080:80`,
    /// `127.0.0.1::80` (ephemeral host port), `8000-8009:9000-9009`; then [validates](Self::validate).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = |reason| PortError::Spec {
            spec: s.to_owned(),
            reason,
        };
        // The container side has no ':', so it follows the last one.
        let (host, container) = match s.rsplit_once(':') {
            Some((host, container)) => (Some(host), container),
            None => (None, s),
        };
        // What precedes it: `HOST_PORT`, `HOST_IP:HOST_PORT` or `HOST_IP:` (ephemeral port).
        let (host_ip, host_port) = match host {
            None => (None, ""),
            Some(host) => match host.strip_prefix('[') {
                Some(bracketed) => match bracketed.strip_suffix(']') {
                    Some(ip) => (Some(ip), ""),
                    None => {
                        let (ip, port) = bracketed
                            .split_once("]:")
                            .ok_or_else(|| spec("missing \"]:\" after the IPv6 host IP"))?;
                        (Some(ip), port)
                    }
                },
                None => match host.split_once(':') {
                    Some((_, port)) if port.contains(':') => {
                        return Err(spec("too many ':' (put an IPv6 host IP in brackets)"));
                    }
                    Some(("", _)) => return Err(spec("the host IP is empty")),
                    Some((ip, port)) => (Some(ip), port),
                    None => (None, host),
                },
            },
        };
        let ExposedPort { proto, ports } = container.parse()?;
        let host_ip = host_ip
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| PortError::HostIp(ip.to_owned()))
            })
            .transpose()?;
        let host_port = match host_port {
            "" => None,
            p => Some(p.parse()?),
        };
        let binding = Self {
            proto,
            container_port: ports,
            host_ip,
            host_port,
        };
        binding.validate()?;
        Ok(binding)
    }
}

impl fmt::Display for PortBinding {
    /// The canonical spelling, which parses back to the same binding: `127.0.0.1:8080:80/tcp`,
    /// `[::1]::80/udp`, `80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        match self.host_port {
            Some(h) => write!(f, "{h}:")?,
            None if self.host_ip.is_some() => f.write_str(":")?,
            None => {}
        }
        write!(f, "{}", self.exposed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_syntax() {
        let b: PortBinding = "127.0.0.1:8080:80/udp".parse().unwrap();
        assert_eq!(b.proto, Protocol::Udp);
        assert_eq!(b.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(b.host_port, Some(PortRange::single(8080).unwrap()));
        assert_eq!(b.container_port, PortRange::single(80).unwrap());
        let b: PortBinding = "[::1]:8080:80".parse().unwrap();
        assert_eq!(b.host_ip, Some("::1".parse().unwrap()));
        let b: PortBinding = "127.0.0.1::80".parse().unwrap();
        assert_eq!(b.host_port, None);
        let b: PortBinding = "8000-8999:8000-8999".parse().unwrap();
        assert_eq!(b.host_port.unwrap().len(), 1000);
        let b: PortBinding = "80".parse().unwrap();
        assert_eq!((b.host_ip, b.host_port), (None, None));
        let b: PortBinding = "[::1]:80".parse().unwrap();
        assert_eq!((b.host_port, b.container_port.start), (None, 80));
        let b: PortBinding = ":80/SCTP".parse().unwrap();
        assert_eq!((b.host_port, b.proto), (None, Protocol::Sctp));
        for s in [
            "127.0.0.1:8080:80",
            "[::1]::80/tcp",
            "[::]::80",
            "8000-8009:9000-9009/udp",
            "80/tcp",
            "9000-9001/udp",
        ] {
            let b: PortBinding = s.parse().unwrap();
            assert_eq!(b.to_string().parse::<PortBinding>().unwrap(), b, "{s}");
        }
        assert_eq!(
            "8080:80".parse::<PortBinding>().unwrap().to_string(),
            "8080:80/tcp"
        );
    }

    #[test]
    fn rejects_bad_ports_naming_them() {
        for (s, needle) in [
            ("", "\"\""),
            ("0", "\"0\""),
            ("65536", "\"65536\""),
            ("70000", "\"70000\""),
            ("9-8", "\"9-8\""),
            ("90-80", "1-65535"),
            ("80/icmp", "\"icmp\""),
            ("80/", "\"\""),
            ("abc:80", "\"abc\""),
            ("80:x", "\"x\""),
            ("1.2.3:80:80", "\"1.2.3\""),
            ("8000-8001:80", "8000-8001"),
            ("a:b:c:d", "a:b:c:d"),
            ("::1:80:80", "too many ':'"),
            ("[::1:80:80", "]:"),
            ("[::1]80:80", "]:"),
            (":8080:80", "host IP is empty"),
            ("[nope]:80:80", "\"nope\""),
        ] {
            let e = s.parse::<PortBinding>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn exposed_ports_are_the_tail_of_the_grammar() {
        let e: ExposedPort = "8000-8010/udp".parse().unwrap();
        assert_eq!((e.proto, e.ports.len()), (Protocol::Udp, 11));
        assert_eq!(e.to_string(), "8000-8010/udp");
        assert_eq!("53".parse::<ExposedPort>().unwrap().to_string(), "53/tcp");
        assert!("80/icmp".parse::<ExposedPort>().is_err());
        assert!("1:80".parse::<ExposedPort>().is_err());
        let b: PortBinding = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(b.exposed(), "53/udp".parse().unwrap());
    }

    #[test]
    fn protocol_numbers_and_names() {
        for (p, n, s) in [
            (Protocol::Tcp, 6, "tcp"),
            (Protocol::Udp, 17, "udp"),
            (Protocol::Sctp, 132, "sctp"),
        ] {
            assert_eq!((p.number(), p.name(), p.to_string()), (n, s, s.to_owned()));
            assert_eq!(s.to_ascii_uppercase().parse::<Protocol>().unwrap(), p);
        }
    }

    #[test]
    fn host_ip_must_be_unicast_or_unspecified() {
        for (s, needle) in [
            ("255.255.255.255:8080:80", "limited broadcast"),
            ("224.0.0.1:8080:80", "multicast"),
            ("239.255.255.250:1900:1900/udp", "multicast"),
            ("240.0.0.1:8080:80", "reserved for future use"),
            ("0.1.2.3:8080:80", "this network"),
            ("[ff02::1]:8080:80", "multicast"),
            ("[::ffff:10.0.0.1]:8080:80", "write it as 10.0.0.1"),
            ("[fe80::1]:8080:80", "link-local"),
            ("[::a00:1]:8080:80", "IPv4-compatible"),
        ] {
            let e = s.parse::<PortBinding>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            let text = e.to_string();
            let ip = s.rsplitn(3, ':').last().unwrap().trim_matches(['[', ']']);
            assert!(text.contains(needle) && text.contains(ip), "{s}: {text}");
        }
        for s in [
            "0.0.0.0:8080:80",
            "[::]:8080:80",
            "127.0.0.1:8080:80",
            "[::1]:8080:80",
            "169.254.1.1:8080:80",
            "10.0.0.1:8080:80",
            "[2001:db8::1]:8080:80",
            "[fd00::1]::80",
        ] {
            assert!(s.parse::<PortBinding>().is_ok(), "{s}");
        }
    }

    #[test]
    fn validate_checks_bindings_built_by_hand() {
        let good = PortBinding {
            proto: Protocol::Tcp,
            container_port: PortRange::single(80).unwrap(),
            host_ip: None,
            host_port: None,
        };
        assert_eq!(good.validate(), Ok(()));
        let broadcast = PortBinding {
            host_ip: Some("255.255.255.255".parse().unwrap()),
            ..good
        };
        assert!(matches!(
            broadcast.validate(),
            Err(PortError::HostIpNotUnicast { .. })
        ));
        let zero = PortBinding {
            host_port: Some(PortRange { start: 0, end: 0 }),
            ..good
        };
        assert!(matches!(zero.validate(), Err(PortError::Range(_))));
        let inverted = PortBinding {
            container_port: PortRange { start: 90, end: 80 },
            ..good
        };
        assert!(matches!(inverted.validate(), Err(PortError::Range(_))));
        let mismatch = PortBinding {
            host_port: Some(PortRange::new(8000, 8001).unwrap()),
            ..good
        };
        let e = mismatch.validate().unwrap_err();
        assert!(e.to_string().contains("8000-8001"), "{e}");
    }
}
