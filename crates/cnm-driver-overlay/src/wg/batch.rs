//! Batched UDP for the userspace engine: the datagrams encrypted from one wake-up's TUN reads
//! leave in one `sendmmsg(2)`, and one `recvmmsg(2)` takes up to [`BATCH`] datagrams from the
//! underlay, so a burst costs a system call per batch instead of one per packet. The buffers
//! are allocated once per task (zeroed pages the kernel maps only as packets touch them).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 16;

/// `addr` as a `sockaddr_storage` and its length.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeros is a valid (AF_UNSPEC) value.
    #[allow(unsafe_code)]
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr (that is
            // its purpose); the write covers sockaddr_in's bytes only.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin)
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6)
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address in `storage`, if it is IPv4 or IPv6.
fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
            // aligned for it.
            #[allow(unsafe_code)]
            let sin = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            #[allow(unsafe_code)]
            let sin6 = unsafe { &*(std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An iovec pointing nowhere, filled in before a call.
const NO_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// The headers of one `sendmmsg`/`recvmmsg` of `n` messages: message `i` carries the one buffer
/// `iovs[i]` and the socket address `name(i)` gives (where it is and its length). The caller
/// keeps what they point at alive and unmoved until the call returns.
fn headers(
    n: usize,
    iovs: &mut [libc::iovec; BATCH],
    mut name: impl FnMut(usize) -> (*mut libc::c_void, libc::socklen_t),
) -> [libc::mmsghdr; BATCH] {
    // SAFETY: mmsghdr is plain data (pointers and integers); all zeros is a valid value.
    #[allow(unsafe_code)]
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (m, iov)) in msgs.iter_mut().zip(iovs.iter_mut()).take(n).enumerate() {
        (m.msg_hdr.msg_name, m.msg_hdr.msg_namelen) = name(i);
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    msgs
}

/// Datagrams waiting to be sent, each in its own buffer, in order.
pub(crate) struct SendBatch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    dests: [Option<SocketAddr>; BATCH],
    count: usize,
}

impl SendBatch {
    /// [`BATCH`] buffers of `slot` bytes each.
    pub(crate) fn new(slot: usize) -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
            lens: [0; BATCH],
            dests: [None; BATCH],
            count: 0,
        }
    }

    /// The next free buffer (`None` when full: flush first).
    pub(crate) fn free(&mut self) -> Option<&mut [u8]> {
        self.bufs.get_mut(self.count).map(Vec::as_mut_slice)
    }

    /// Takes the first `len` bytes of the free buffer as a datagram to `dest`.
    pub(crate) fn push(&mut self, len: usize, dest: SocketAddr) {
        if self.count < BATCH {
            self.lens[self.count] = len;
            self.dests[self.count] = Some(dest);
            self.count += 1;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.count == BATCH
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.count
    }

    /// One `sendmmsg` from datagram `from` on; how many the kernel took.
    fn sendmmsg(&self, fd: i32, from: usize) -> io::Result<usize> {
        let n = self.count - from;
        // SAFETY: plain data; all zeros is valid (overwritten below for each datagram).
        #[allow(unsafe_code)]
        let mut addrs: [(libc::sockaddr_storage, libc::socklen_t); BATCH] =
            unsafe { std::mem::zeroed() };
        let mut iovs = [NO_IOVEC; BATCH];
        for i in 0..n {
            let k = from + i;
            addrs[i] = to_sockaddr(self.dests[k].expect("every pushed datagram has a destination"));
            iovs[i] = libc::iovec {
                iov_base: self.bufs[k].as_ptr() as *mut libc::c_void,
                iov_len: self.lens[k],
            };
        }
        let mut msgs = headers(n, &mut iovs, |i| ((&raw mut addrs[i].0).cast(), addrs[i].1));
        // SAFETY: `msgs[..n]` point into `addrs`, `iovs` and `self.bufs`, all alive and
        // unmoved for the call; the kernel only reads the buffers (iov_base is *mut by type
        // only) and writes `msg_len`.
        #[allow(unsafe_code)]
        let rc =
            unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Sends every queued datagram (waiting while the socket's buffer is full); one the kernel
    /// refuses is dropped and logged, as a lost datagram on the underlay would be.
    pub(crate) async fn flush(&mut self, socket: &UdpSocket) {
        let fd = socket.as_raw_fd();
        let mut sent = 0;
        while sent < self.count {
            match socket.try_io(Interest::WRITABLE, || self.sendmmsg(fd, sent)) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.writable().await {
                        tracing::debug!(error = %e, "WireGuard socket not writable; datagrams dropped");
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, to = ?self.dests[sent], "WireGuard datagram not sent");
                    sent += 1;
                }
            }
        }
        self.count = 0;
    }
}

/// Buffers for one `recvmmsg`.
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Each datagram's length and sender (`None`: truncated or of an unknown family, dropped).
    got: [Option<(usize, SocketAddr)>; BATCH],
}

impl RecvBatch {
    /// [`BATCH`] buffers of `slot` bytes each.
    pub(crate) fn new(slot: usize) -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; slot]).collect(),
            got: [None; BATCH],
        }
    }

    fn recvmmsg(&mut self, fd: i32) -> io::Result<usize> {
        let mut addrs: [MaybeUninit<libc::sockaddr_storage>; BATCH] =
            [const { MaybeUninit::zeroed() }; BATCH];
        let mut iovs = [NO_IOVEC; BATCH];
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
        }
        let room = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let mut msgs = headers(BATCH, &mut iovs, |i| (addrs[i].as_mut_ptr().cast(), room));
        // SAFETY: every msghdr points into `addrs`, `iovs` and `self.bufs`, alive, unmoved and
        // exclusively borrowed for the call; the kernel writes at most the lengths given.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for i in 0..n {
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: zero-initialised, then written by the kernel: a valid sockaddr_storage.
            #[allow(unsafe_code)]
            let addr = unsafe { addrs[i].assume_init_ref() };
            self.got[i] = match from_sockaddr(addr) {
                Some(from) if !truncated => Some((msgs[i].msg_len as usize, from)),
                _ => None,
            };
        }
        Ok(n)
    }

    /// Waits for datagrams and takes up to [`BATCH`] of them; returns how many.
    pub(crate) async fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.recvmmsg(fd)) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and its sender, unless it was dropped.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = (*self.got.get(i)?)?;
        Some((&self.bufs[i][..len], from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_sockaddr() {
        for a in [
            "192.168.77.2:51820",
            "[fd63:6e6d:7767::c0a8:4d02]:4789",
            "[fe80::1%3]:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let (s, len) = to_sockaddr(addr);
            assert_eq!(from_sockaddr(&s), Some(addr), "{a}");
            let want = if addr.is_ipv4() { 16 } else { 28 };
            assert_eq!(len as usize, want);
        }
    }

    #[tokio::test]
    async fn a_batch_goes_out_in_order_and_comes_in_with_its_senders() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = SendBatch::new(64);
        // More than one batch's worth: flushed when full, then the rest.
        let mut sent = 0u8;
        for _ in 0..BATCH + 3 {
            let slot = out.free().unwrap();
            slot[..2].copy_from_slice(&[0xab, sent]);
            out.push(2, to);
            sent += 1;
            if out.is_full() {
                out.flush(&tx).await;
                assert_eq!(out.len(), 0);
            }
        }
        out.flush(&tx).await;
        let mut inb = RecvBatch::new(64);
        let mut seen = Vec::new();
        while seen.len() < usize::from(sent) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), inb.recv(&rx))
                .await
                .expect("the datagrams arrive on loopback")
                .unwrap();
            for i in 0..n {
                let (d, from) = inb.get(i).unwrap();
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(d[0], 0xab);
                seen.push(d[1]);
            }
        }
        assert_eq!(seen, (0..sent).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_datagram_larger_than_its_buffer_is_dropped_not_cut() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tx.send_to(&[7u8; 100], rx.local_addr().unwrap())
            .await
            .unwrap();
        tx.send_to(&[8u8; 10], rx.local_addr().unwrap())
            .await
            .unwrap();
        let mut inb = RecvBatch::new(32);
        let mut kept = Vec::new();
        let mut total = 0;
        while total < 2 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), inb.recv(&rx))
                .await
                .unwrap()
                .unwrap();
            for i in 0..n {
                if let Some((d, _)) = inb.get(i) {
                    kept.push(d.to_vec());
                }
            }
            total += n;
        }
        assert_eq!(kept, vec![vec![8u8; 10]]);
    }
}
