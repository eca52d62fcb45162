//! Deleting conntrack entries of a published port over ctnetlink, so that a UDP port that was
//! re-published reaches its new container at once instead of following a stale entry.

use std::io;
use std::net::IpAddr;

use cnm_sandbox::NetNs;
use netlink_sys::Socket;

use crate::FirewallError;
use crate::nftnl::{NETLINK_NETFILTER, NLMSG_ERROR};
use crate::transport::messages;
use cnm_types::Protocol;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Deletes every conntrack entry in `ns` whose original direction goes to `proto`/`port`
/// (and to `dst` when given). Returns how many were deleted.
pub async fn flush_conntrack(
    ns: &NetNs,
    proto: Protocol,
    port: u16,
    dst: Option<IpAddr>,
) -> Result<usize, FirewallError> {
    let op = format!("flush conntrack entries of {proto}/{port}");
    ns.run(move || flush_blocking(proto, port, dst))
        .await
        .map_err(|source| FirewallError::Namespace {
            op: op.clone(),
            source,
        })?
        .map_err(|e| FirewallError::io(op, e))
}

fn flush_blocking(proto: Protocol, port: u16, dst: Option<IpAddr>) -> io::Result<usize> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let families: &[u8] = match dst {
        Some(IpAddr::V4(_)) => &[AF_INET],
        Some(IpAddr::V6(_)) => &[AF_INET6],
        None => &[AF_INET, AF_INET6],
    };
    let mut victims = Vec::new();
    for &family in families {
        sock.send(
            &message(
                IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
                1,
                &[],
            ),
            0,
        )?;
        'dump: loop {
            let (buf, _) = sock.recv_from_full()?;
            for (ty, _, _, _, payload) in messages(&buf) {
                match ty {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        break 'dump;
                    }
                    _ => {
                        let attrs = payload.get(4..).unwrap_or(&[]);
                        if let Some(keep) = matching(attrs, proto.number(), port, dst) {
                            victims.push((family, keep));
                        }
                    }
                }
            }
        }
    }
    let mut deleted = 0;
    for (i, (family, attrs)) in victims.iter().enumerate() {
        let seq = 100 + i as u32;
        sock.send(
            &message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                *family,
                seq,
                attrs,
            ),
            0,
        )?;
        let (buf, _) = sock.recv_from_full()?;
        for (ty, _, _, _, payload) in messages(&buf) {
            if ty == NLMSG_ERROR && payload.len() >= 4 {
                match i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]) {
                    0 => deleted += 1,
                    // gone already (it expired or was deleted meanwhile): the goal is reached
                    e if -e == 2 => {}
                    e => return Err(io::Error::from_raw_os_error(-e)),
                }
            }
        }
    }
    Ok(deleted)
}

fn message(cmd: u16, flags: u16, family: u8, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | cmd).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// (type without flags, payload, raw attribute bytes including header and padding)
fn attrs(buf: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[i], buf[i + 1]]) as usize;
        if len < 4 || i + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[i + 2], buf[i + 3]]) & 0x3fff;
        let end = (i + len.div_ceil(4) * 4).min(buf.len());
        out.push((ty, &buf[i + 4..i + len], &buf[i..end]));
        i = end;
    }
    out
}

fn find(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(t, _, _)| *t == ty)
        .map(|(_, v, _)| v)
}

/// If the entry matches, the attributes identifying it for a delete (orig tuple and zone).
fn matching(entry: &[u8], proto: u8, port: u16, dst: Option<IpAddr>) -> Option<Vec<u8>> {
    let all = attrs(entry);
    let (_, orig, orig_raw) = all.iter().find(|(t, _, _)| *t == CTA_TUPLE_ORIG)?;
    let ip = find(orig, 1)?;
    let l4 = find(orig, 2)?;
    if find(l4, 1)?.first() != Some(&proto) {
        return None;
    }
    let dport = find(l4, 3)?;
    if dport.len() < 2 || u16::from_be_bytes([dport[0], dport[1]]) != port {
        return None;
    }
    if let Some(want) = dst {
        let got: Option<IpAddr> = match want {
            IpAddr::V4(_) => find(ip, 2)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(IpAddr::from),
            IpAddr::V6(_) => find(ip, 4)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(IpAddr::from),
        };
        if got != Some(want) {
            return None;
        }
    }
    let mut keep = orig_raw.to_vec();
    if let Some((_, _, zone_raw)) = all.iter().find(|(t, _, _)| *t == CTA_ZONE) {
        keep.extend_from_slice(zone_raw);
    }
    Some(keep)
}
