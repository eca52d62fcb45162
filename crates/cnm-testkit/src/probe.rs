//! In-process traffic probes: TCP, UDP and ICMP/ICMPv6 echo, sent from inside a namespace.
//!
//! Every probe runs on a short-lived thread that has entered the namespace, so its socket belongs
//! there, and every probe is bounded by a timeout ([`DEFAULT_TIMEOUT`] unless set with
//! [`Probe::timeout`]), so a probe that is expected to fail fails quickly. No `ping` binary.
//!
//! TCP and UDP probes expect an echo server (see [`crate::server`]) on the far side: they send a
//! unique token and succeed only when the same token comes back.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_sandbox::NetNs;
use nix::sys::socket::{SockaddrLike, SockaddrStorage, recvfrom};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long a probe waits for its answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);

/// A probe with settings: a timeout and, optionally, the source address to send from.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    timeout: Duration,
    source: Option<IpAddr>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            timeout: DEFAULT_TIMEOUT,
            source: None,
        }
    }
}

impl Probe {
    /// A probe with [`DEFAULT_TIMEOUT`] and a kernel-chosen source address.
    pub fn new() -> Probe {
        Probe::default()
    }

    /// Sets how long the whole exchange may take.
    pub fn timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout;
        self
    }

    /// Binds the probe's socket to this source address before sending.
    pub fn source(mut self, source: IpAddr) -> Probe {
        self.source = Some(source);
        self
    }

    /// Connects to `addr:port` over TCP from inside `ns`, sends a token and expects it echoed.
    pub async fn tcp(self, ns: &NetNs, addr: IpAddr, port: u16) -> Result<()> {
        let target = SocketAddr::new(addr, port);
        ns.run(move || tcp_blocking(self, target))
            .await
            .context("failed to run the TCP probe in its namespace")?
            .with_context(|| format!("TCP probe to {target} failed"))
    }

    /// Sends a token to `addr:port` over UDP from inside `ns` and expects it echoed.
    pub async fn udp(self, ns: &NetNs, addr: IpAddr, port: u16) -> Result<()> {
        let target = SocketAddr::new(addr, port);
        ns.run(move || udp_blocking(self, target))
            .await
            .context("failed to run the UDP probe in its namespace")?
            .with_context(|| format!("UDP probe to {target} failed"))
    }

    /// Sends one ICMP (or ICMPv6) echo request to `addr` from inside `ns` and expects the
    /// matching reply (same identifier, sequence number and payload).
    pub async fn icmp(self, ns: &NetNs, addr: IpAddr) -> Result<()> {
        ns.run(move || icmp_blocking(self, addr))
            .await
            .context("failed to run the ICMP probe in its namespace")?
            .with_context(|| format!("ICMP echo probe to {addr} failed"))
    }
}

/// TCP echo probe with the default timeout.
pub async fn tcp(ns: &NetNs, addr: IpAddr, port: u16) -> Result<()> {
    Probe::new().tcp(ns, addr, port).await
}

/// TCP echo probe from a given source address (bound before connecting).
pub async fn tcp_from(ns: &NetNs, source: IpAddr, addr: IpAddr, port: u16) -> Result<()> {
    Probe::new().source(source).tcp(ns, addr, port).await
}

/// UDP echo probe with the default timeout.
pub async fn udp(ns: &NetNs, addr: IpAddr, port: u16) -> Result<()> {
    Probe::new().udp(ns, addr, port).await
}

/// UDP echo probe from a given source address.
pub async fn udp_from(ns: &NetNs, source: IpAddr, addr: IpAddr, port: u16) -> Result<()> {
    Probe::new().source(source).udp(ns, addr, port).await
}

/// ICMP/ICMPv6 echo probe with the default timeout.
pub async fn icmp(ns: &NetNs, addr: IpAddr) -> Result<()> {
    Probe::new().icmp(ns, addr).await
}

/// ICMP/ICMPv6 echo probe from a given source address.
pub async fn icmp_from(ns: &NetNs, source: IpAddr, addr: IpAddr) -> Result<()> {
    Probe::new().source(source).icmp(ns, addr).await
}

/// A token no other probe in this process sends, so a stale echo cannot pass for ours.
fn token(kind: &str, sequence: u16) -> Vec<u8> {
    format!(
        "cnm-testkit {kind} probe pid {} seq {sequence}",
        std::process::id()
    )
    .into_bytes()
}

fn next_sequence() -> u16 {
    static SEQUENCE: AtomicU16 = AtomicU16::new(1);
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

fn domain(addr: IpAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn bind_source(socket: &Socket, source: Option<IpAddr>, target: IpAddr) -> Result<()> {
    if let Some(source) = source {
        ensure!(
            source.is_ipv4() == target.is_ipv4(),
            "source {source} and target {target} are of different families"
        );
        socket
            .bind(&SockAddr::from(SocketAddr::new(source, 0)))
            .with_context(|| format!("failed to bind the probe to source {source}"))?;
    }
    Ok(())
}

/// Time left before `deadline`, or an error naming what we were waiting for.
fn remaining(deadline: Instant, waiting_for: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("timed out waiting for {waiting_for}");
    }
    Ok(left)
}

fn tcp_blocking(probe: Probe, target: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + probe.timeout;
    let socket = Socket::new(domain(target.ip()), Type::STREAM, Some(Protocol::TCP))
        .context("failed to create a TCP socket")?;
    bind_source(&socket, probe.source, target.ip())?;
    socket
        .connect_timeout(&target.into(), remaining(deadline, "the connection")?)
        .context("failed to connect")?;
    let mut stream = std::net::TcpStream::from(socket);
    let token = token("tcp", next_sequence());
    stream
        .set_write_timeout(Some(remaining(deadline, "the send")?))
        .context("failed to set a send timeout")?;
    stream
        .write_all(&token)
        .context("failed to send the token")?;
    let mut echoed = vec![0; token.len()];
    let mut filled = 0;
    while filled < echoed.len() {
        stream
            .set_read_timeout(Some(remaining(deadline, "the echo")?))
            .context("failed to set a receive timeout")?;
        let read = stream
            .read(&mut echoed[filled..])
            .context("failed to receive the echo")?;
        ensure!(
            read > 0,
            "connection closed after {filled} of {} echoed bytes",
            token.len()
        );
        filled += read;
    }
    ensure!(echoed == token, "the echo did not match the token sent");
    Ok(())
}

fn udp_blocking(probe: Probe, target: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + probe.timeout;
    let socket = Socket::new(domain(target.ip()), Type::DGRAM, Some(Protocol::UDP))
        .context("failed to create a UDP socket")?;
    bind_source(&socket, probe.source, target.ip())?;
    // Connected, so an ICMP port-unreachable surfaces as ECONNREFUSED at once instead of a timeout,
    // and datagrams from anyone else are filtered out by the kernel.
    socket
        .connect(&target.into())
        .context("failed to connect the UDP socket")?;
    let socket = std::net::UdpSocket::from(socket);
    let token = token("udp", next_sequence());
    socket.send(&token).context("failed to send the token")?;
    let mut buf = vec![0; token.len() + 64];
    loop {
        socket
            .set_read_timeout(Some(remaining(deadline, "the echo")?))
            .context("failed to set a receive timeout")?;
        let read = socket
            .recv(&mut buf)
            .context("failed to receive the echo")?;
        if buf[..read] == token[..] {
            return Ok(());
        }
        // Something else from the same peer (an echo of an older probe): keep waiting.
    }
}

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Builds an echo request: type, code 0, checksum, identifier, sequence, payload.
fn echo_request(v4: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![
        if v4 {
            ICMP_ECHO_REQUEST
        } else {
            ICMPV6_ECHO_REQUEST
        },
        0,
        0,
        0,
    ];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(payload);
    if v4 {
        // ICMPv6 checksums cover a pseudo-header and the kernel fills them in for raw ICMPv6
        // sockets (RFC 3542 §3.1); for ICMPv4 the sender computes it.
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `icmp` (the ICMP message, without any IP header) is the reply to our request.
fn is_our_reply(v4: bool, icmp: &[u8], id: u16, seq: u16, payload: &[u8]) -> bool {
    let reply_type = if v4 {
        ICMP_ECHO_REPLY
    } else {
        ICMPV6_ECHO_REPLY
    };
    icmp.len() >= 8
        && icmp[0] == reply_type
        && icmp[1] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
        && &icmp[8..] == payload
}

fn icmp_blocking(probe: Probe, target: IpAddr) -> Result<()> {
    let deadline = Instant::now() + probe.timeout;
    let v4 = target.is_ipv4();
    let protocol = if v4 {
        Protocol::ICMPV4
    } else {
        Protocol::ICMPV6
    };
    let socket = Socket::new(domain(target), Type::RAW, Some(protocol))
        .context("failed to create a raw ICMP socket")?;
    bind_source(&socket, probe.source, target)?;
    // Raw sockets see every ICMP message in the namespace; the identifier (ours, per process)
    // plus the sequence (per probe) and the payload tell our reply apart.
    let id = (std::process::id() & 0xffff) as u16;
    let seq = next_sequence();
    let payload = token("icmp", seq);
    let request = echo_request(v4, id, seq, &payload);
    socket
        .send_to(&request, &SocketAddr::new(target, 0).into())
        .context("failed to send the echo request")?;
    let mut buf = vec![0u8; 2048];
    loop {
        socket
            .set_read_timeout(Some(remaining(deadline, "the echo reply")?))
            .context("failed to set a receive timeout")?;
        let (read, from) = recvfrom::<SockaddrStorage>(socket.as_raw_fd(), &mut buf)
            .map_err(std::io::Error::from)
            .context("failed to receive the echo reply")?;
        if from.as_ref().and_then(source_ip) != Some(target) {
            continue;
        }
        let message = &buf[..read];
        // IPv4 raw sockets deliver the IP header too; IPv6 raw sockets do not.
        let icmp = if v4 {
            let header_len = usize::from(message.first().copied().unwrap_or(0) & 0x0f) * 4;
            message.get(header_len..).unwrap_or_default()
        } else {
            message
        };
        if is_our_reply(v4, icmp, id, seq, &payload) {
            return Ok(());
        }
    }
}

fn source_ip(addr: &SockaddrStorage) -> Option<IpAddr> {
    match addr.family()? {
        nix::sys::socket::AddressFamily::Inet => {
            addr.as_sockaddr_in().map(|sin| IpAddr::V4(sin.ip()))
        }
        nix::sys::socket::AddressFamily::Inet6 => {
            addr.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmpv4_request_carries_a_valid_checksum() {
        let packet = echo_request(true, 0x1234, 7, b"abc");
        assert_eq!(packet[0], ICMP_ECHO_REQUEST);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
        // A packet that includes its own checksum sums to zero.
        assert_eq!(checksum(&packet), 0);
    }

    #[test]
    fn icmpv6_request_leaves_the_checksum_to_the_kernel() {
        let packet = echo_request(false, 1, 2, b"x");
        assert_eq!(packet[0], ICMPV6_ECHO_REQUEST);
        assert_eq!(&packet[2..4], &[0, 0]);
    }

    #[test]
    fn only_the_matching_reply_is_ours() {
        let mut reply = echo_request(true, 9, 3, b"tok");
        reply[0] = ICMP_ECHO_REPLY;
        assert!(is_our_reply(true, &reply, 9, 3, b"tok"));
        assert!(!is_our_reply(true, &reply, 9, 4, b"tok"), "other sequence");
        assert!(
            !is_our_reply(true, &reply, 8, 3, b"tok"),
            "other identifier"
        );
        assert!(!is_our_reply(true, &reply, 9, 3, b"other"), "other payload");
        let request = echo_request(true, 9, 3, b"tok");
        assert!(
            !is_our_reply(true, &request, 9, 3, b"tok"),
            "our own request seen on loopback"
        );
    }

    #[test]
    fn tokens_differ_between_probes() {
        assert_ne!(token("tcp", next_sequence()), token("tcp", next_sequence()));
    }
}
