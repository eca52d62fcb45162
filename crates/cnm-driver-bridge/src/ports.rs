//! Published ports: which host sockets to hold and which DNAT mappings to install.
//!
//! A host port is reserved by binding a real socket in the host namespace and holding it while
//! the mapping exists (TCP bound but never listening, so it accepts nothing; the DNAT rules take
//! the traffic before it could reach the socket). A host process that already has the port makes
//! the bind fail, so the user hears about it before any rule exists, and nobody can take the port
//! from under a mapping later.

use cnm_types::InvalidTo;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cnm_core::port::{PortBinding, PortRange, Protocol};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::BridgeError;

/// The host side of one binding: where to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostIp {
    /// Every address of both families: `::` dual-stack, or `0.0.0.0` and `::` on the same port
    /// (see `reserve_port`).
    Any,
    /// One address (or one family's unspecified address).
    One(IpAddr),
}

impl HostIp {
    /// The addresses sockets are bound to.
    fn bind_addrs(self) -> Vec<IpAddr> {
        match self {
            Self::Any => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
            Self::One(ip) => vec![ip],
        }
    }
}

/// One binding, checked and resolved against the endpoint's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRequest {
    /// The binding as asked.
    pub binding: PortBinding,
    /// Where on the host.
    pub host_ip: HostIp,
    /// DNAT targets: for each host family served, the host address to match (unspecified for
    /// any) and the container address.
    pub targets: Vec<(IpAddr, IpAddr)>,
}

/// Checks `bindings` and decides host addresses and DNAT targets. Pure.
///
/// `default_host_ip` is the network's `host_binding_ipv4`; a binding without a host address of
/// its own uses it, or every address when it is `None`.
pub(crate) fn plan(
    bindings: &[PortBinding],
    default_host_ip: Option<IpAddr>,
    ep_v4: Option<Ipv4Addr>,
    ep_v6: Option<Ipv6Addr>,
) -> Result<Vec<PortRequest>, BridgeError> {
    let mut out = Vec::with_capacity(bindings.len());
    // The bindings obey `PortBinding::validate` already: the controller checked them when the
    // endpoint was created (cnm-types' one set of rules), so only what depends on this network
    // and endpoint is checked here.
    for b in bindings {
        let host_ip = match b.host_ip.or(default_host_ip) {
            None => HostIp::Any,
            Some(ip) => HostIp::One(ip),
        };
        let mut targets = Vec::new();
        match host_ip {
            HostIp::Any => {
                if let Some(v4) = ep_v4 {
                    targets.push((IpAddr::from(Ipv4Addr::UNSPECIFIED), IpAddr::from(v4)));
                }
                if let Some(v6) = ep_v6 {
                    targets.push((IpAddr::from(Ipv6Addr::UNSPECIFIED), IpAddr::from(v6)));
                }
            }
            HostIp::One(ip @ IpAddr::V4(_)) => {
                if let Some(v4) = ep_v4 {
                    targets.push((ip, v4.into()));
                }
            }
            HostIp::One(ip @ IpAddr::V6(_)) => {
                if let Some(v6) = ep_v6 {
                    targets.push((ip, v6.into()));
                }
            }
        }
        if targets.is_empty() {
            let shown = match host_ip {
                HostIp::Any => "any".to_owned(),
                HostIp::One(ip) => ip.to_string(),
            };
            return Err(BridgeError::invalid(
                "port binding",
                b.to_string(),
                format!("the endpoint has no address of the family of host IP {shown}"),
            ));
        }
        out.push(PortRequest {
            binding: *b,
            host_ip,
            targets,
        });
    }
    Ok(out)
}

/// The sockets holding one binding's host ports, and the ports chosen.
#[derive(Debug)]
pub(crate) struct Reservation {
    /// The host ports (as asked, or chosen from the ephemeral range).
    pub host_ports: PortRange,
    /// Held open while the mapping exists; closing them frees the ports.
    #[expect(dead_code, reason = "held only so that dropping it closes the sockets")]
    pub sockets: Vec<Socket>,
}

/// Binds the host sockets of every request, in order. Must run on a thread inside the host
/// namespace. On failure every socket bound so far is closed: nothing is left behind.
pub(crate) fn reserve(requests: &[PortRequest]) -> Result<Vec<Reservation>, BridgeError> {
    let mut range: Option<(u16, u16)> = None;
    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        let proto = req.binding.proto;
        let reservation = match req.binding.host_port {
            Some(ports) => {
                let mut sockets = Vec::with_capacity(ports.len() as usize);
                for port in ports.start..=ports.end {
                    let held = reserve_port(req.host_ip, proto, port)
                        .map_err(|(e, addr)| port_error(e, proto, addr, port))?;
                    sockets.extend(held);
                }
                Reservation {
                    host_ports: ports,
                    sockets,
                }
            }
            None => {
                let (low, high) = match range {
                    Some(r) => r,
                    None => *range.insert(local_port_range()?),
                };
                ephemeral(req, low, high)?
            }
        };
        out.push(reservation);
    }
    Ok(out)
}

/// Finds a block of `container_port.len()` consecutive free ports in `low..=high`, starting at a
/// random place so that concurrent publishers rarely collide, each port free on every address.
fn ephemeral(req: &PortRequest, low: u16, high: u16) -> Result<Reservation, BridgeError> {
    let proto = req.binding.proto;
    let count = req.binding.container_port.len();
    let span = u32::from(high) + 1 - u32::from(low);
    let no_free = || BridgeError::NoFreePort {
        count,
        proto: proto.to_string(),
        host_ip: shown_host(req.host_ip),
        low,
        high,
    };
    if count > span {
        return Err(no_free());
    }
    let starts = span - count + 1;
    let first = rand::random_range(0..starts);
    'candidates: for i in 0..starts {
        let start = low + ((first + i) % starts) as u16;
        let end = start + (count - 1) as u16;
        let mut sockets = Vec::with_capacity(count as usize);
        for port in start..=end {
            match reserve_port(req.host_ip, proto, port) {
                Ok(held) => sockets.extend(held),
                Err((e, _)) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue 'candidates,
                Err((e, addr)) => return Err(port_error(e, proto, addr, port)),
            }
        }
        let host_ports = PortRange::new(start, end).map_err(|e| {
            BridgeError::invalid("host port range", format!("{start}-{end}"), e.to_string())
        })?;
        return Ok(Reservation {
            host_ports,
            sockets,
        });
    }
    Err(no_free())
}

/// The sockets reserving `port` on `host_ip`, or the error and the address that failed.
///
/// For any address, a TCP or UDP port is held by one dual-stack socket: `::` with
/// `IPV6_V6ONLY` off owns the port in both families (the kernel refuses a later bind of
/// `0.0.0.0`, or of any IPv4 address, on it, and refuses this one if any of those has it), so
/// a published port costs one descriptor instead of two (issue 15: 10,000 ports under a limit
/// of 20,000 descriptors). When that bind fails (a host without IPv6, or the port taken), one
/// socket per family says which address cannot be had, as before. SCTP keeps one socket per
/// family (its dual-stack binding rules are its own).
fn reserve_port(
    host_ip: HostIp,
    proto: Protocol,
    port: u16,
) -> Result<Vec<Socket>, (io::Error, IpAddr)> {
    if host_ip == HostIp::Any
        && proto != Protocol::Sctp
        && let Ok(socket) = bind_dual_stack(proto, port)
    {
        return Ok(vec![socket]);
    }
    let mut sockets = Vec::with_capacity(2);
    for addr in host_ip.bind_addrs() {
        match bind(proto, addr, port) {
            Ok(s) => sockets.push(s),
            Err(e) if skippable_v6(host_ip, addr, &e) => {}
            Err(e) => return Err((e, addr)),
        }
    }
    Ok(sockets)
}

/// A host without IPv6 (no `::` to bind) still serves IPv4 for an "any" binding.
fn skippable_v6(host_ip: HostIp, addr: IpAddr, e: &io::Error) -> bool {
    host_ip == HostIp::Any
        && addr.is_ipv6()
        && matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
        )
}

fn shown_host(h: HostIp) -> String {
    match h {
        HostIp::Any => "0.0.0.0 and ::".to_owned(),
        HostIp::One(ip) => ip.to_string(),
    }
}

fn port_error(e: io::Error, proto: Protocol, addr: IpAddr, port: u16) -> BridgeError {
    if e.raw_os_error() == Some(libc::EADDRINUSE) {
        BridgeError::PortInUse {
            port,
            proto: proto.to_string(),
            host_ip: addr.to_string(),
            source: e,
        }
    } else {
        BridgeError::PortSocket {
            op: "bind",
            port,
            proto: proto.to_string(),
            host_ip: addr.to_string(),
            source: e,
        }
    }
}

/// One bound, non-listening socket. No SO_REUSEADDR: two bound-but-not-listening TCP sockets with
/// it may share a port on Linux, which would defeat the reservation.
fn bind(proto: Protocol, addr: IpAddr, port: u16) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = new_socket(proto, domain)?;
    if addr.is_ipv6() {
        // `::` must not also claim the IPv4 port: that one is bound separately.
        socket.set_only_v6(true)?;
    }
    socket.bind(&SockAddr::from(SocketAddr::new(addr, port)))?;
    Ok(socket)
}

/// One bound, non-listening socket on `[::]:port` that also holds `0.0.0.0:port` (see
/// [`reserve_port`]).
fn bind_dual_stack(proto: Protocol, port: u16) -> io::Result<Socket> {
    let socket = new_socket(proto, Domain::IPV6)?;
    socket.set_only_v6(false)?;
    socket.bind(&SockAddr::from(SocketAddr::new(
        Ipv6Addr::UNSPECIFIED.into(),
        port,
    )))?;
    Ok(socket)
}

fn new_socket(proto: Protocol, domain: Domain) -> io::Result<Socket> {
    Ok(match proto {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?,
        Protocol::Sctp => Socket::new(
            domain,
            Type::STREAM,
            Some(socket2::Protocol::from(libc::IPPROTO_SCTP)),
        )?,
    })
}

/// The calling thread's namespace's `net.ipv4.ip_local_port_range` (shared by both families).
fn local_port_range() -> Result<(u16, u16), BridgeError> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map_err(BridgeError::PortRange)?;
    parse_port_range(&text)
}

fn parse_port_range(text: &str) -> Result<(u16, u16), BridgeError> {
    let bad = || {
        BridgeError::PortRange(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected {text:?}"),
        ))
    };
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low >= 1 && low <= high => Ok((low, high)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    fn b(s: &str) -> PortBinding {
        s.parse().unwrap()
    }

    const V4: Option<Ipv4Addr> = Some(Ipv4Addr::new(172, 18, 0, 2));
    const V6: Option<Ipv6Addr> = Some(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2));

    #[test]
    fn any_host_ip_targets_every_family_the_endpoint_has() {
        let p = plan(&[b("8080:80")], None, V4, V6).unwrap();
        assert_eq!(p[0].host_ip, HostIp::Any);
        assert_eq!(p[0].targets.len(), 2);
        let p = plan(&[b("8080:80")], None, V4, None).unwrap();
        assert_eq!(
            p[0].targets,
            vec![("0.0.0.0".parse().unwrap(), "172.18.0.2".parse().unwrap())]
        );
        assert_eq!(
            HostIp::Any.bind_addrs().len(),
            2,
            "both families reserved even for a v4 endpoint"
        );
    }

    #[test]
    fn specific_host_ip_and_network_default() {
        let p = plan(&[b("127.0.0.1:8080:80")], None, V4, V6).unwrap();
        assert_eq!(
            p[0].targets,
            vec![("127.0.0.1".parse().unwrap(), "172.18.0.2".parse().unwrap())]
        );
        let p = plan(&[b("8080:80")], Some("10.0.0.1".parse().unwrap()), V4, None).unwrap();
        assert_eq!(p[0].host_ip, HostIp::One("10.0.0.1".parse().unwrap()));
        let p = plan(&[b("[::1]:8080:80")], None, V4, V6).unwrap();
        assert_eq!(p[0].targets[0].1, IpAddr::from(V6.unwrap()));
    }

    #[test]
    fn refuses_a_family_the_endpoint_lacks() {
        let e = plan(&[b("[::1]:8080:80")], None, V4, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("::1"), "{e}");
        let e = plan(&[b("8080:80")], Some("::1".parse().unwrap()), V4, None).unwrap_err();
        assert!(e.to_string().contains("::1"), "{e}");
    }

    #[test]
    fn parses_ip_local_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert!(parse_port_range("").is_err());
        assert!(parse_port_range("9 8").is_err());
        assert!(parse_port_range("0 8").is_err());
    }
}
