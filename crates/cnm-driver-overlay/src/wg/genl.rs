//! The kernel WireGuard's configuration over generic netlink: the `wireguard` family of
//! `linux/wireguard.h` (its id resolved through the generic netlink controller,
//! `linux/genetlink.h`), `WG_CMD_SET_DEVICE` with the device's private key, listen port and
//! fwmark, and peers with their public key, endpoint, allowed IPs and keepalive.
//!
//! The encoding is written here (a few attributes, laid out as the UAPI headers say) and kept
//! pure, so it is checked against bytes derived by hand from the headers without a kernel
//! that has WireGuard; [`GenlSocket`] sends it on a `NETLINK_GENERIC` socket opened in the host
//! namespace and waits for the kernel's ack.

use std::io;
use std::net::{IpAddr, SocketAddr};

/// `NLMSG_ERROR` (`linux/netlink.h`): an ack (error 0) or a refusal.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
/// `NLA_F_NESTED` (`linux/netlink.h`): set on every nested attribute, as libmnl does.
const NLA_F_NESTED: u16 = 0x8000;
/// The length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// The length of `struct genlmsghdr` (cmd, version, reserved).
const GENL_HDRLEN: usize = 4;

/// `GENL_ID_CTRL` (`linux/genetlink.h`): the controller's fixed family id.
pub(crate) const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`.
const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID` (u16).
const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME` (NUL-terminated string).
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// `WG_GENL_NAME` (`linux/wireguard.h`).
pub(crate) const WG_GENL_NAME: &str = "wireguard";
/// `WG_GENL_VERSION`.
const WG_GENL_VERSION: u8 = 1;
/// `WG_CMD_SET_DEVICE` (after `WG_CMD_GET_DEVICE` = 0).
const WG_CMD_SET_DEVICE: u8 = 1;
/// `enum wgdevice_attribute`.
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_FWMARK: u16 = 7;
const WGDEVICE_A_PEERS: u16 = 8;
/// `WGDEVICE_F_REPLACE_PEERS`.
const WGDEVICE_F_REPLACE_PEERS: u32 = 1 << 0;
/// `enum wgpeer_attribute`.
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
/// `enum wgpeer_flag`.
const WGPEER_F_REMOVE_ME: u32 = 1 << 0;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;
/// `enum wgallowedip_attribute`.
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// One `WG_CMD_SET_DEVICE`: what is given is set, what is `None` is left as it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DeviceSet {
    /// The device (`WGDEVICE_A_IFNAME`).
    pub(crate) ifname: String,
    /// `WGDEVICE_A_PRIVATE_KEY`.
    pub(crate) private_key: Option<[u8; 32]>,
    /// `WGDEVICE_A_LISTEN_PORT`.
    pub(crate) listen_port: Option<u16>,
    /// `WGDEVICE_A_FWMARK` (0: none).
    pub(crate) fwmark: Option<u32>,
    /// `WGDEVICE_F_REPLACE_PEERS`: the peers below are the only ones afterwards.
    pub(crate) replace_peers: bool,
    /// `WGDEVICE_A_PEERS`, in order.
    pub(crate) peers: Vec<PeerSet>,
}

impl std::fmt::Debug for DeviceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key, not even in a debug log.
        f.debug_struct("DeviceSet")
            .field("ifname", &self.ifname)
            .field("private_key", &self.private_key.map(|_| "…"))
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("replace_peers", &self.replace_peers)
            .field("peers", &self.peers)
            .finish()
    }
}

impl DeviceSet {
    /// Changes nothing on `ifname` yet.
    pub(crate) fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.to_owned(),
            private_key: None,
            listen_port: None,
            fwmark: None,
            replace_peers: false,
            peers: Vec::new(),
        }
    }
}

/// One peer of a [`DeviceSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerSet {
    /// `WGPEER_A_PUBLIC_KEY`: which peer.
    pub(crate) public_key: [u8; 32],
    /// `WGPEER_F_REMOVE_ME`: the peer goes (nothing else is sent for it).
    pub(crate) remove: bool,
    /// `WGPEER_A_ENDPOINT`.
    pub(crate) endpoint: Option<SocketAddr>,
    /// `WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL` in seconds (0: off).
    pub(crate) keepalive: Option<u16>,
    /// `WGPEER_A_ALLOWEDIPS`, replacing the peer's (`WGPEER_F_REPLACE_ALLOWEDIPS`) when
    /// `Some`.
    pub(crate) allowed_ips: Option<Vec<(IpAddr, u8)>>,
}

impl PeerSet {
    /// The peer with `public_key` removed.
    pub(crate) fn remove(public_key: [u8; 32]) -> Self {
        Self {
            public_key,
            remove: true,
            endpoint: None,
            keepalive: None,
            allowed_ips: None,
        }
    }
}

/// A netlink message under construction: the header is completed by [`Msg::finish`].
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Self { buf }
    }

    /// An attribute with `payload`, padded to 4 bytes (`nla_len` counts the unpadded length).
    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).expect("attributes here are a few bytes");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Opens a nested attribute; returns where its header is, for [`Msg::end_nest`].
    fn begin_nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("a nest here is well under 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("a message here is well under 4 GiB");
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`, acked.
pub(crate) fn get_family(seq: u32, name: &str) -> Vec<u8> {
    let mut m = Msg::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
    );
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    m.attr(CTRL_ATTR_FAMILY_NAME, &z);
    m.finish()
}

/// The `struct sockaddr_in` / `sockaddr_in6` of `addr`, as `WGPEER_A_ENDPOINT` carries it
/// (family in host order, port and address in network order).
fn sockaddr(addr: SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    match addr {
        SocketAddr::V4(a) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.flowinfo().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    b
}

/// `WG_CMD_SET_DEVICE` to the `wireguard` family (id `family`), acked.
pub(crate) fn set_device(family: u16, seq: u32, dev: &DeviceSet) -> Vec<u8> {
    let mut m = Msg::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        WG_CMD_SET_DEVICE,
        WG_GENL_VERSION,
    );
    let mut name = dev.ifname.as_bytes().to_vec();
    name.push(0);
    m.attr(WGDEVICE_A_IFNAME, &name);
    if let Some(key) = &dev.private_key {
        m.attr(WGDEVICE_A_PRIVATE_KEY, key);
    }
    if let Some(port) = dev.listen_port {
        m.attr(WGDEVICE_A_LISTEN_PORT, &port.to_ne_bytes());
    }
    if let Some(mark) = dev.fwmark {
        m.attr(WGDEVICE_A_FWMARK, &mark.to_ne_bytes());
    }
    if dev.replace_peers {
        m.attr(WGDEVICE_A_FLAGS, &WGDEVICE_F_REPLACE_PEERS.to_ne_bytes());
    }
    if !dev.peers.is_empty() {
        let peers = m.begin_nest(WGDEVICE_A_PEERS);
        for p in &dev.peers {
            // Array elements: the kernel ignores their type (wg(8) sends 0).
            let peer = m.begin_nest(0);
            m.attr(WGPEER_A_PUBLIC_KEY, &p.public_key);
            let mut flags = 0;
            if p.remove {
                flags |= WGPEER_F_REMOVE_ME;
            }
            if p.allowed_ips.is_some() && !p.remove {
                flags |= WGPEER_F_REPLACE_ALLOWEDIPS;
            }
            if flags != 0 {
                m.attr(WGPEER_A_FLAGS, &flags.to_ne_bytes());
            }
            if !p.remove {
                if let Some(e) = p.endpoint {
                    m.attr(WGPEER_A_ENDPOINT, &sockaddr(e));
                }
                if let Some(k) = p.keepalive {
                    m.attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &k.to_ne_bytes());
                }
                if let Some(ips) = &p.allowed_ips {
                    let list = m.begin_nest(WGPEER_A_ALLOWEDIPS);
                    for (ip, cidr) in ips {
                        let one = m.begin_nest(0);
                        match ip {
                            IpAddr::V4(a) => {
                                m.attr(WGALLOWEDIP_A_FAMILY, &(libc::AF_INET as u16).to_ne_bytes());
                                m.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
                            }
                            IpAddr::V6(a) => {
                                m.attr(
                                    WGALLOWEDIP_A_FAMILY,
                                    &(libc::AF_INET6 as u16).to_ne_bytes(),
                                );
                                m.attr(WGALLOWEDIP_A_IPADDR, &a.octets());
                            }
                        }
                        m.attr(WGALLOWEDIP_A_CIDR_MASK, &[*cidr]);
                        m.end_nest(one);
                    }
                    m.end_nest(list);
                }
            }
            m.end_nest(peer);
        }
        m.end_nest(peers);
    }
    m.finish()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// What one message of a reply said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The ack of request `seq`: `Ok` or the errno the kernel refused it with.
    Ack { seq: u32, errno: i32 },
    /// The controller's answer to `CTRL_CMD_GETFAMILY`: the family's id.
    Family { seq: u32, id: u16 },
    /// Anything else (skipped).
    Other,
}

/// The messages in one datagram from the kernel; a malformed one is `InvalidData`.
pub(crate) fn parse(datagram: &[u8]) -> io::Result<Vec<Reply>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed generic netlink reply",
        )
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = u32_at(datagram, at).ok_or_else(bad)? as usize;
        let kind = u16_at(datagram, at + 4).ok_or_else(bad)?;
        let seq = u32_at(datagram, at + 8).ok_or_else(bad)?;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return Err(bad());
        }
        let body = &datagram[at + NLMSG_HDRLEN..at + len];
        out.push(match kind {
            NLMSG_ERROR => {
                let code = u32_at(body, 0).ok_or_else(bad)? as i32;
                Reply::Ack { seq, errno: -code }
            }
            NLMSG_DONE => Reply::Other,
            GENL_ID_CTRL => {
                let mut id = None;
                let mut a = GENL_HDRLEN;
                while a + 4 <= body.len() {
                    let alen = usize::from(u16_at(body, a).ok_or_else(bad)?);
                    let akind = u16_at(body, a + 2).ok_or_else(bad)? & !NLA_F_NESTED;
                    if alen < 4 || a + alen > body.len() {
                        return Err(bad());
                    }
                    if akind == CTRL_ATTR_FAMILY_ID {
                        id = u16_at(body, a + 4);
                    }
                    a += alen.next_multiple_of(4);
                }
                match id {
                    Some(id) => Reply::Family { seq, id },
                    None => Reply::Other,
                }
            }
            _ => Reply::Other,
        });
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// A blocking `NETLINK_GENERIC` socket of the namespace it was opened in, with the
/// `wireguard` family's id resolved.
#[derive(Debug)]
pub(crate) struct GenlSocket {
    socket: netlink_sys::Socket,
    family: u16,
    seq: u32,
}

impl GenlSocket {
    /// Opens the socket in the calling thread's namespace and resolves the `wireguard`
    /// family (`ENOENT` when the kernel has no WireGuard).
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let mut s = Self {
            socket,
            family: 0,
            seq: 0,
        };
        let seq = s.next_seq();
        s.family = s
            .exchange(&get_family(seq, WG_GENL_NAME), seq)?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the controller answered without the wireguard family's id",
                )
            })?;
        Ok(s)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `msg` (sequence `seq`) and reads until its ack; returns the family id if a
    /// controller answer came with it.
    fn exchange(&mut self, msg: &[u8], seq: u32) -> io::Result<Option<u16>> {
        self.socket.send(msg, 0)?;
        let mut family = None;
        loop {
            let mut buf = Vec::with_capacity(16 * 1024);
            self.socket.recv(&mut buf, 0)?;
            for r in parse(&buf)? {
                match r {
                    Reply::Family { seq: s, id } if s == seq => family = Some(id),
                    Reply::Ack { seq: s, errno } if s == seq => {
                        return if errno == 0 {
                            Ok(family)
                        } else {
                            Err(io::Error::from_raw_os_error(errno))
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Applies `dev`; the kernel's refusal is its errno.
    pub(crate) fn set_device(&mut self, dev: &DeviceSet) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = set_device(self.family, seq, dev);
        let result = self.exchange(&msg, seq).map(drop);
        // The message may hold the private key: not left in freed memory.
        msg.iter_mut().for_each(|b| *b = 0);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds expected bytes: netlink fields are in host order (the tests run on a
    /// little-endian machine, as the kernel's would be).
    fn le16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    fn le32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn get_family_asks_the_controller_for_wireguard() {
        let m = get_family(7, "wireguard");
        let mut want = Vec::new();
        // nlmsghdr: len 16 + 4 + (4 + 10 → 16) = 36, type GENL_ID_CTRL 0x10, flags
        // REQUEST|ACK = 5, seq 7, pid 0.
        want.extend(le32(36));
        want.extend(le16(0x10));
        want.extend(le16(5));
        want.extend(le32(7));
        want.extend(le32(0));
        // genlmsghdr: CTRL_CMD_GETFAMILY = 3, version 1.
        want.extend([3, 1, 0, 0]);
        // CTRL_ATTR_FAMILY_NAME = 2, "wireguard\0" (10 bytes), len 14, padded to 16.
        want.extend(le16(14));
        want.extend(le16(2));
        want.extend(b"wireguard\0");
        want.extend([0, 0]);
        assert_eq!(m, want);
    }

    #[test]
    fn set_device_lays_out_key_port_fwmark_and_a_peer_as_the_uapi_says() {
        let private = [0x11u8; 32];
        let public = [0x22u8; 32];
        let mut dev = DeviceSet::new("cnm-wg0");
        dev.private_key = Some(private);
        dev.listen_port = Some(51820);
        dev.fwmark = Some(0);
        dev.replace_peers = true;
        dev.peers.push(PeerSet {
            public_key: public,
            remove: false,
            endpoint: Some("192.168.77.2:51820".parse().unwrap()),
            keepalive: Some(0),
            allowed_ips: Some(vec![("fd63:6e6d:7767::c0a8:4d02".parse().unwrap(), 128)]),
        });
        let m = set_device(0x1d, 9, &dev);

        let mut want = Vec::new();
        want.extend(le32(0)); // patched below
        want.extend(le16(0x1d)); // the family id resolved at run time
        want.extend(le16(5)); // NLM_F_REQUEST | NLM_F_ACK
        want.extend(le32(9));
        want.extend(le32(0));
        want.extend([1, 1, 0, 0]); // WG_CMD_SET_DEVICE = 1, WG_GENL_VERSION = 1
        // WGDEVICE_A_IFNAME = 2: "cnm-wg0\0" (8), len 12.
        want.extend(le16(12));
        want.extend(le16(2));
        want.extend(b"cnm-wg0\0");
        // WGDEVICE_A_PRIVATE_KEY = 3: 32 bytes, len 36.
        want.extend(le16(36));
        want.extend(le16(3));
        want.extend([0x11; 32]);
        // WGDEVICE_A_LISTEN_PORT = 6: u16 in host order, len 6, padded to 8.
        want.extend(le16(6));
        want.extend(le16(6));
        want.extend(le16(51820));
        want.extend([0, 0]);
        // WGDEVICE_A_FWMARK = 7: u32 0.
        want.extend(le16(8));
        want.extend(le16(7));
        want.extend(le32(0));
        // WGDEVICE_A_FLAGS = 5: WGDEVICE_F_REPLACE_PEERS = 1.
        want.extend(le16(8));
        want.extend(le16(5));
        want.extend(le32(1));
        // WGDEVICE_A_PEERS = 8 | NLA_F_NESTED, holding one peer (type 0 | NLA_F_NESTED).
        // The peer: public key (36) + flags (8) + endpoint (4 + 16 = 20) + keepalive (6 → 8)
        // + allowed IPs (4 + one entry (4 + family 8 + address 20 + cidr 5 → 8 = 40) = 44)
        // = 116, plus its own header: 120; the list: 124.
        want.extend(le16(124));
        want.extend(le16(8 | 0x8000));
        want.extend(le16(120));
        want.extend(le16(0x8000));
        // WGPEER_A_PUBLIC_KEY = 1.
        want.extend(le16(36));
        want.extend(le16(1));
        want.extend([0x22; 32]);
        // WGPEER_A_FLAGS = 3: WGPEER_F_REPLACE_ALLOWEDIPS = 2.
        want.extend(le16(8));
        want.extend(le16(3));
        want.extend(le32(2));
        // WGPEER_A_ENDPOINT = 4: struct sockaddr_in { AF_INET = 2 (host order), port 51820
        // (network order: 0xca 0x6c), 192.168.77.2, 8 zero bytes }.
        want.extend(le16(20));
        want.extend(le16(4));
        want.extend(le16(2));
        want.extend([0xca, 0x6c, 192, 168, 77, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5: u16 0 (off, as the userspace path).
        want.extend(le16(6));
        want.extend(le16(5));
        want.extend(le16(0));
        want.extend([0, 0]);
        // WGPEER_A_ALLOWEDIPS = 9 | NLA_F_NESTED, one entry (type 0 | NLA_F_NESTED).
        want.extend(le16(44));
        want.extend(le16(9 | 0x8000));
        want.extend(le16(40));
        want.extend(le16(0x8000));
        // WGALLOWEDIP_A_FAMILY = 1: AF_INET6 = 10 (u16), len 6, padded.
        want.extend(le16(6));
        want.extend(le16(1));
        want.extend(le16(10));
        want.extend([0, 0]);
        // WGALLOWEDIP_A_IPADDR = 2: the 16 bytes of the address.
        want.extend(le16(20));
        want.extend(le16(2));
        want.extend([
            0xfd, 0x63, 0x6e, 0x6d, 0x77, 0x67, 0, 0, 0, 0, 0, 0, 192, 168, 77, 2,
        ]);
        // WGALLOWEDIP_A_CIDR_MASK = 3: u8 128, len 5, padded to 8.
        want.extend(le16(5));
        want.extend(le16(3));
        want.extend([128, 0, 0, 0]);
        let len = want.len() as u32;
        want[..4].copy_from_slice(&le32(len));
        assert_eq!(len, 16 + 4 + 12 + 36 + 8 + 8 + 8 + 124);
        assert_eq!(m, want);
    }

    #[test]
    fn a_removed_peer_carries_its_key_and_the_remove_flag_only() {
        let mut dev = DeviceSet::new("cnm-wg0");
        dev.peers.push(PeerSet::remove([0x33; 32]));
        let m = set_device(0x1d, 1, &dev);
        let mut tail = Vec::new();
        // The peers list: 4 + peer (4 + key 36 + flags 8 = 48) = 52.
        tail.extend(le16(52));
        tail.extend(le16(8 | 0x8000));
        tail.extend(le16(48));
        tail.extend(le16(0x8000));
        tail.extend(le16(36));
        tail.extend(le16(1));
        tail.extend([0x33; 32]);
        tail.extend(le16(8));
        tail.extend(le16(3));
        tail.extend(le32(1)); // WGPEER_F_REMOVE_ME
        assert_eq!(m.len(), 16 + 4 + 12 + 52);
        assert_eq!(&m[32..], &tail[..]);
        // No private key, port, fwmark or flags when none are asked for.
        assert_eq!(&m[20..24], [12u8, 0, 2, 0]);
    }

    #[test]
    fn replies_give_the_family_id_and_the_ack_or_the_errno() {
        // The controller's answer: genl header + CTRL_ATTR_FAMILY_NAME + CTRL_ATTR_FAMILY_ID.
        let mut family = Vec::new();
        family.extend(le32(16 + 4 + 16 + 8));
        family.extend(le16(0x10));
        family.extend(le16(0));
        family.extend(le32(4));
        family.extend(le32(0));
        family.extend([1, 2, 0, 0]);
        family.extend(le16(14));
        family.extend(le16(2));
        family.extend(b"wireguard\0\0\0");
        family.extend(le16(6));
        family.extend(le16(1));
        family.extend(le16(0x1d));
        family.extend([0, 0]);
        // Then the ack: NLMSG_ERROR with error 0 and the request's header.
        let mut ack = Vec::new();
        ack.extend(le32(16 + 4 + 16));
        ack.extend(le16(2));
        ack.extend(le16(0));
        ack.extend(le32(4));
        ack.extend(le32(0));
        ack.extend(le32(0));
        ack.extend([0; 16]);
        let mut both = family.clone();
        both.extend(&ack);
        assert_eq!(
            parse(&both).unwrap(),
            vec![
                Reply::Family { seq: 4, id: 0x1d },
                Reply::Ack { seq: 4, errno: 0 }
            ]
        );
        // A refusal: -ENOENT (no such family).
        let mut nack = ack.clone();
        nack[16..20].copy_from_slice(&le32((-libc::ENOENT) as u32));
        assert_eq!(
            parse(&nack).unwrap(),
            vec![Reply::Ack {
                seq: 4,
                errno: libc::ENOENT
            }]
        );
        // Truncated: refused, not read past.
        assert!(parse(&both[..both.len() - 3]).is_err());
    }
}
