//! The NETLINK_NETFILTER sockets: sending a batch and collecting the kernel's acks, asking the
//! kernel questions (generation, chains, rules), and receiving change notifications.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};

use crate::FirewallError;
use crate::nftnl::{
    self, MsgType, NETLINK_NETFILTER, NFNLGRP_NFTABLES, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR,
};

/// Room for the acks of the largest batch: losing an ack to ENOBUFS would report a committed
/// batch as failed.
const ACK_BUFFER: usize = 4 * 1024 * 1024;
/// Room for the notifications of the largest transaction (a full restore of a table with tens
/// of thousands of elements is a few MB of coalesced messages). An overflow is survivable (see
/// `watch`), but costs a check of the generation and possibly a restore.
pub(crate) const NOTIFY_BUFFER: usize = 32 * 1024 * 1024;
/// The send buffer we start with; grown on demand for larger batches (`ensure_send_buffer`).
const SEND_BUFFER: usize = 1024 * 1024;

/// Sets a socket buffer size: the `*FORCE` option (root may exceed `rmem_max`/`wmem_max`),
/// falling back to the plain one, capped by the sysctl, for an unprivileged process.
fn set_buffer(sock: &Socket, size: usize, send: bool) -> io::Result<()> {
    let size = size.min(i32::MAX as usize);
    let forced = if send {
        setsockopt(sock, sockopt::SndBufForce, &size)
    } else {
        setsockopt(sock, sockopt::RcvBufForce, &size)
    };
    if forced.is_ok() {
        return Ok(());
    }
    let plain = if send {
        setsockopt(sock, sockopt::SndBuf, &size)
    } else {
        setsockopt(sock, sockopt::RcvBuf, &size)
    };
    plain.map_err(io::Error::from)
}

/// Splits a datagram into (type, flags, seq, portid, payload) netlink messages.
pub(crate) fn messages(buf: &[u8]) -> Vec<(u16, u16, u32, u32, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
        if len < 16 || i + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[i + 4], buf[i + 5]]);
        let flags = u16::from_ne_bytes([buf[i + 6], buf[i + 7]]);
        let seq = u32::from_ne_bytes([buf[i + 8], buf[i + 9], buf[i + 10], buf[i + 11]]);
        let pid = u32::from_ne_bytes([buf[i + 12], buf[i + 13], buf[i + 14], buf[i + 15]]);
        out.push((ty, flags, seq, pid, &buf[i + 16..i + len]));
        i += len.div_ceil(4) * 4;
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ack), and the sequence number it answers.
fn error_of(payload: &[u8], seq: u32) -> Option<(i32, u32)> {
    let errno = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    // the echoed header's sequence number sits at offset 4 + 8
    let answered = payload
        .get(12..16)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(seq);
    Some((errno, answered))
}

/// The socket transactions and questions go through, created inside the firewall's namespace
/// (a socket keeps the namespace it was created in, so it can be used from any thread).
pub(crate) struct NfSocket {
    sock: Socket,
    portid: u32,
    seq: AtomicU32,
    send_buffer: AtomicUsize,
}

impl NfSocket {
    /// Opens the socket; must run on a thread inside the target namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        let addr = sock.bind_auto()?;
        // Acks carry only the failing header, not our whole message back.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        set_buffer(&sock, ACK_BUFFER, false)?;
        set_buffer(&sock, SEND_BUFFER, true)?;
        Ok(Self {
            sock,
            portid: addr.port_number(),
            seq: AtomicU32::new(1),
            send_buffer: AtomicUsize::new(SEND_BUFFER),
        })
    }

    /// The netlink port id: notifications of our own transactions carry it.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// `n` fresh sequence numbers, the first returned.
    pub fn seqs(&self, n: u32) -> u32 {
        self.seq.fetch_add(n.max(1), Ordering::Relaxed)
    }

    /// A batch larger than the send buffer fails with `EMSGSIZE` ("Message too long"): grow it
    /// first (the kernel charges memory only while a message is queued).
    fn ensure_send_buffer(&self, len: usize) -> io::Result<()> {
        let want = len + 64 * 1024;
        if want > self.send_buffer.load(Ordering::Relaxed) {
            set_buffer(&self.sock, want, true)?;
            self.send_buffer.store(want, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends one batch and checks every ack. `described` maps sequence numbers to the decoded
    /// message for error reports. The kernel processes a netlink send synchronously, so when
    /// `send` returns every reply is already queued: we drain without blocking.
    pub fn transact(
        &self,
        op: &str,
        bytes: &[u8],
        described: &[(u32, String)],
    ) -> Result<(), FirewallError> {
        self.ensure_send_buffer(bytes.len()).map_err(|e| {
            FirewallError::io(format!("size the netfilter send buffer for {op}"), e)
        })?;
        self.sock
            .set_non_blocking(false)
            .map_err(|e| FirewallError::io(format!("configure netfilter socket for {op}"), e))?;
        self.sock
            .send(bytes, 0)
            .map_err(|e| FirewallError::io(format!("send nftables batch for {op}"), e))?;
        self.sock
            .set_non_blocking(true)
            .map_err(|e| FirewallError::io(format!("configure netfilter socket for {op}"), e))?;
        let names: HashMap<u32, &str> = described.iter().map(|(s, d)| (*s, d.as_str())).collect();
        let mut acked = 0usize;
        let mut first_error: Option<FirewallError> = None;
        loop {
            let buf = match self.sock.recv_from_full() {
                Ok((buf, _)) => buf,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(FirewallError::io(
                        format!("receive nftables acks for {op}"),
                        e,
                    ));
                }
            };
            for (ty, _, seq, _, payload) in messages(&buf) {
                if ty != NLMSG_ERROR {
                    continue;
                }
                let Some((errno, failed_seq)) = error_of(payload, seq) else {
                    continue;
                };
                if errno == 0 {
                    acked += 1;
                } else if first_error.is_none() {
                    let message = names
                        .get(&failed_seq)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| format!("batch message {failed_seq}"));
                    first_error = Some(FirewallError::Kernel {
                        op: op.to_string(),
                        message,
                        source: io::Error::from_raw_os_error(-errno),
                    });
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if acked < described.len() {
            return Err(FirewallError::io(
                format!("confirm nftables batch for {op}"),
                io::Error::other(format!(
                    "the kernel acked {acked} of {} messages",
                    described.len()
                )),
            ));
        }
        Ok(())
    }

    /// Sends one request (`msg` built with sequence number `seq`) and returns the payloads of
    /// its replies: one object, or every object of a dump. A kernel error is returned as the
    /// errno's `io::Error` (a missing chain is `NotFound`).
    pub fn ask(&self, msg: &[u8], seq: u32, dump: bool) -> io::Result<Vec<Vec<u8>>> {
        self.sock.set_non_blocking(false)?;
        self.sock.send(msg, 0)?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.sock.recv_from_full()?;
            for (ty, _, s, _, payload) in messages(&buf) {
                if s != seq {
                    continue; // a late reply to an earlier request
                }
                match ty {
                    NLMSG_ERROR => {
                        let (errno, _) = error_of(payload, s).unwrap_or((0, s));
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(out);
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push(payload.to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// The current ruleset generation (`NFT_MSG_GETGEN`).
    pub fn generation(&self) -> io::Result<u32> {
        let seq = self.seqs(1);
        let msg = nftnl::request(MsgType::GetGen, 0, 0, seq, |_| {});
        let replies = self.ask(&msg, seq, false)?;
        replies
            .first()
            .and_then(|p| nftnl::attr_be32(p.get(4..)?, 1))
            .ok_or_else(|| io::Error::other("the kernel's generation reply has no NFTA_GEN_ID"))
    }

    /// Every table of every family: (family, name).
    pub fn tables(&self) -> io::Result<Vec<(u8, String)>> {
        let seq = self.seqs(1);
        let msg = nftnl::request(MsgType::GetTable, NLM_F_DUMP, 0, seq, |_| {});
        Ok(self
            .ask(&msg, seq, true)?
            .into_iter()
            .filter_map(|p| {
                let family = *p.first()?;
                let name = nftnl::attr_str(p.get(4..)?, 1)?.to_string();
                Some((family, name))
            })
            .collect())
    }

    /// Whether chain `chain` of table `table` (family `family`) exists.
    pub fn chain_exists(&self, family: u8, table: &str, chain: &str) -> io::Result<bool> {
        let seq = self.seqs(1);
        let msg = nftnl::request(MsgType::GetChain, 0, family, seq, |a| {
            a.str(1, table).str(3, chain);
        });
        match self.ask(&msg, seq, false) {
            Ok(r) => Ok(!r.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The rules of one chain, each as its attributes (after the nfgenmsg header).
    pub fn rules(&self, family: u8, table: &str, chain: &str) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.seqs(1);
        let msg = nftnl::request(MsgType::GetRule, NLM_F_DUMP, family, seq, |a| {
            a.str(1, table).str(2, chain);
        });
        let replies = match self.ask(&msg, seq, true) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .filter_map(|p| p.get(4..).map(<[u8]>::to_vec))
            .collect())
    }

    /// Wakes the watcher listening on `portid` (a message it knows to be a stop request).
    pub fn poke(&self, portid: u32) -> io::Result<()> {
        let seq = self.seqs(1);
        // NLMSG_NOOP (1), addressed to the watcher's socket in the same namespace
        let mut msg = Vec::with_capacity(16);
        msg.extend_from_slice(&16u32.to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&self.portid.to_ne_bytes());
        self.sock.set_non_blocking(true)?;
        self.sock
            .send_to(&msg, &netlink_sys::SocketAddr::new(portid, 0), 0)
            .map(drop)
    }
}

/// The socket that receives nf_tables change notifications (`NFNLGRP_NFTABLES`).
pub(crate) struct NotifySocket {
    sock: Socket,
    portid: u32,
}

impl NotifySocket {
    /// Opens and subscribes with a receive buffer of `buffer` bytes; must run on a thread
    /// inside the target namespace.
    pub fn open(buffer: usize) -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        let addr = sock.bind_auto()?;
        set_buffer(&sock, buffer, false)?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        Ok(Self {
            sock,
            portid: addr.port_number(),
        })
    }

    /// Its port id (where a stop request is sent).
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Receives the next datagram; `wait` blocks until there is one. `Ok(None)`: nothing
    /// queued (with `wait == false`). An overflow is `Err` with `ENOBUFS`.
    pub fn recv(&self, buf: &mut Vec<u8>, wait: bool) -> io::Result<Option<usize>> {
        buf.clear();
        let flags = if wait {
            0
        } else {
            nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
        } | nix::sys::socket::MsgFlags::MSG_TRUNC.bits();
        match self.sock.recv(buf, flags) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
