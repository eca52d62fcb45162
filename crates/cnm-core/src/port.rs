//! Published ports: `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTO]`, as `docker run -p`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transport protocol a port can be published for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        })
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
        if start == 0 || end < start {
            return Err(PortError::Range(format!("{start}-{end}")));
        }
        Ok(Self { start, end })
    }

    /// One port.
    pub fn single(port: u16) -> Result<Self, PortError> {
        Self::new(port, port)
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
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PortError::Range(s.to_owned());
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let start: u16 = a.parse().map_err(|_| bad())?;
        let end: u16 = b.parse().map_err(|_| bad())?;
        Self::new(start, end).map_err(|_| bad())
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
    #[error("invalid port or port range {0:?}")]
    Range(String),
    /// Not tcp, udp or sctp.
    #[error("invalid protocol {0:?}: expected tcp, udp or sctp")]
    Protocol(String),
    /// Not a valid host address.
    #[error("invalid host IP {0:?}")]
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
    #[error("invalid port binding {0:?}: expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]")]
    Spec(String),
}

impl PortError {
    /// Every malformed port is invalid input.
    pub fn kind(&self) -> cnm_types::ErrorKind {
        cnm_types::ErrorKind::InvalidInput
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
        _ => crate::options::reserved::RESERVED
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
    /// Checks that host and container ranges have the same size (a single host port may front a
    /// single container port only), and that the host address can take a published port (see
    /// [`check_host_ip`]).
    pub fn validate(&self) -> Result<(), PortError> {
        if let Some(ip) = self.host_ip {
            check_host_ip(ip)?;
        }
        match self.host_port {
            Some(host) if host.len() != self.container_port.len() => {
                Err(PortError::RangeMismatch {
                    host,
                    container: self.container_port,
                })
            }
            _ => Ok(()),
        }
    }
}

impl FromStr for PortBinding {
    type Err = PortError;
    /// Parses `docker run -p` syntax: `80`, `8080:80`, `127.0.0.1:8080:80/udp`, `[::1]:8080:80`,
    /// `127.0.0.1::80` (ephemeral host port), `8000-8009:9000-9009`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, proto)) => (spec, proto.parse()?),
            None => (s, Protocol::Tcp),
        };
        // A bracketed IPv6 host address first, then split the rest on ':'.
        let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
            let (ip, rest) = after
                .split_once("]:")
                .ok_or_else(|| PortError::Spec(s.to_owned()))?;
            let ip: IpAddr = ip.parse().map_err(|_| PortError::HostIp(ip.to_owned()))?;
            (Some(ip), rest.to_owned())
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                1 | 2 => (None, spec.to_owned()),
                3 => {
                    let ip = parts[0];
                    let ip: IpAddr = ip.parse().map_err(|_| PortError::HostIp(ip.to_owned()))?;
                    (Some(ip), format!("{}:{}", parts[1], parts[2]))
                }
                _ => return Err(PortError::Spec(s.to_owned())),
            }
        };
        let (host_port, container_port) = match rest.split_once(':') {
            Some(("", c)) => (None, c.parse()?),
            Some((h, c)) => (Some(h.parse()?), c.parse()?),
            None => (None, rest.parse()?),
        };
        let binding = Self {
            proto,
            container_port,
            host_ip,
            host_port,
        };
        binding.validate()?;
        Ok(binding)
    }
}

impl fmt::Display for PortBinding {
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
        write!(f, "{}/{}", self.container_port, self.proto)
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
        for s in [
            "127.0.0.1:8080:80",
            "[::1]::80/tcp",
            "8000-8009:9000-9009/udp",
            "80/tcp",
        ] {
            let b: PortBinding = s.parse().unwrap();
            assert_eq!(b.to_string().parse::<PortBinding>().unwrap(), b, "{s}");
        }
    }

    #[test]
    fn rejects_bad_ports_naming_them() {
        for (s, needle) in [
            ("0", "\"0\""),
            ("70000", "\"70000\""),
            ("9-8", "\"9-8\""),
            ("80/icmp", "\"icmp\""),
            ("1.2.3:80:80", "\"1.2.3\""),
            ("8000-8001:80", "8000-8001"),
            ("a:b:c:d", "a:b:c:d"),
        ] {
            let e = s.parse::<PortBinding>().unwrap_err();
            assert!(e.to_string().contains(needle), "{s}: {e}");
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
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
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
        // A binding built by hand is checked by validate() too.
        let b = PortBinding {
            proto: Protocol::Tcp,
            container_port: PortRange::single(80).unwrap(),
            host_ip: Some("255.255.255.255".parse().unwrap()),
            host_port: None,
        };
        assert!(matches!(
            b.validate(),
            Err(PortError::HostIpNotUnicast { .. })
        ));
    }
}
