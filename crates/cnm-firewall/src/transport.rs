//! Sending a batch over NETLINK_NETFILTER and collecting the kernel's acks.

use std::collections::HashMap;
use std::io;

use netlink_sys::Socket;

use crate::FirewallError;
use crate::nftnl::{NETLINK_NETFILTER, NLMSG_ERROR};

/// A NETLINK_NETFILTER socket created inside the firewall's namespace (a socket keeps the
/// namespace it was created in, so it can be used from any thread afterwards).
pub(crate) struct NfSocket {
    sock: Socket,
}

impl NfSocket {
    /// Opens the socket; must run on a thread inside the target namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        // Acks carry only the failing header, not our whole message back.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        // Room for the acks of the largest batch (a full reconcile): losing an ack to ENOBUFS
        // would report a committed batch as failed.
        sock.set_rx_buf_sz(4 * 1024 * 1024_i32)?;
        Ok(Self { sock })
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
            for (ty, seq, payload) in messages(&buf) {
                if ty != NLMSG_ERROR || payload.len() < 4 {
                    continue;
                }
                let errno = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                // the echoed header's sequence number sits at offset 4 + 8
                let failed_seq = payload
                    .get(12..16)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(seq);
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
}

/// Splits a datagram into (type, seq, payload) netlink messages.
fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]) as usize;
        if len < 16 || i + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[i + 4], buf[i + 5]]);
        let seq = u32::from_ne_bytes([buf[i + 8], buf[i + 9], buf[i + 10], buf[i + 11]]);
        out.push((ty, seq, &buf[i + 16..i + len]));
        i += len.div_ceil(4) * 4;
    }
    out
}
