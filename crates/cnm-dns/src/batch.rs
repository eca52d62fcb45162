//! Datagrams in batches: per readiness wake-up a UDP listener takes up to [`BATCH`] queries
//! with one `recvmmsg(2)` and sends their answers with one `sendmmsg(2)`, so that a busy
//! listener pays two system calls per batch rather than two per query (issue 11's rate goal).
//!
//! The buffers (a receive slot of [`MAX_UDP`] + 1 bytes per datagram, a reused answer buffer per
//! slot, the message headers) belong to the resolver thread, not to a listener: a thread serves
//! one batch at a time, synchronously between two awaits, so every listener on it shares them,
//! and a thousand idle sandboxes cost no more memory than one. No buffer is allocated per query.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::SockAddr;

use crate::wire::MAX_UDP;

/// The most datagrams taken (and answers sent) per system call.
pub(crate) const BATCH: usize = 32;
/// A receive slot: one byte more than we accept, so that a bigger datagram shows as too big.
const SLOT: usize = MAX_UDP + 1;

/// One received datagram: where it is in the thread's buffers, and who sent it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) slot: usize,
    pub(crate) len: usize,
    pub(crate) peer: SocketAddr,
    /// Longer than [`MAX_UDP`]: dropped, as the single-datagram path dropped it.
    pub(crate) too_big: bool,
}

/// A thread's batch buffers.
pub(crate) struct Batch {
    bufs: Vec<u8>,
    /// Receive headers per address family: the kernel shrinks a header's address length to what
    /// it wrote, so an IPv6 socket must not reuse headers an IPv4 socket shrank.
    v4: Option<MultiHeaders<SockaddrStorage>>,
    v6: Option<MultiHeaders<SockaddrStorage>>,
    pub(crate) received: Vec<Received>,
    /// The answer to the datagram in slot `i` is written into `outs[i]`.
    pub(crate) outs: Vec<Vec<u8>>,
    /// Answers to send: (slot, peer), in arrival order.
    pub(crate) sends: Vec<(usize, SocketAddr)>,
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

thread_local! {
    static BATCH_BUFFERS: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's batch buffers (made on first use). `f` must not await: the
/// buffers are shared by every listener of the thread.
pub(crate) fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BATCH_BUFFERS.with_borrow_mut(|b| f(b.get_or_insert_with(Batch::new)))
}

impl Batch {
    fn new() -> Self {
        Self {
            bufs: vec![0; BATCH * SLOT],
            v4: None,
            v6: None,
            received: Vec::with_capacity(BATCH),
            outs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            sends: Vec::with_capacity(BATCH),
            names: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }

    /// The bytes of a received datagram.
    pub(crate) fn datagram(&self, r: &Received) -> &[u8] {
        &self.bufs[r.slot * SLOT..][..r.len]
    }

    /// Takes up to [`BATCH`] waiting datagrams from `fd` (non-blocking) into
    /// [`Batch::received`]; returns how many the kernel gave (`WouldBlock` when none waited).
    pub(crate) fn recv(&mut self, fd: RawFd, v6: bool) -> io::Result<usize> {
        self.received.clear();
        self.sends.clear();
        let headers = if v6 { &mut self.v6 } else { &mut self.v4 };
        let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(BATCH, None));
        let mut chunks = self.bufs.chunks_exact_mut(SLOT);
        let mut iovs: [[io::IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [io::IoSliceMut::new(
                chunks.next().expect("the buffer holds BATCH slots"),
            )]
        });
        let got = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
        let mut n = 0;
        for (slot, msg) in got.enumerate() {
            n += 1;
            // A datagram without a usable source address cannot be answered.
            let Some(peer) = msg.address.as_ref().and_then(socket_addr) else {
                continue;
            };
            self.received.push(Received {
                slot,
                len: msg.bytes.min(SLOT),
                peer,
                too_big: msg.bytes > MAX_UDP || msg.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(n)
    }

    /// Sends the answers in [`Batch::sends`] from index `from` on with one `sendmmsg`; returns
    /// how many went (fewer than asked when the socket's buffer filled).
    #[allow(unsafe_code)]
    pub(crate) fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let todo = &self.sends[from..];
        if todo.is_empty() {
            return Ok(0);
        }
        self.names.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for &(slot, peer) in todo {
            let out = &self.outs[slot];
            self.names.push(SockAddr::from(peer));
            self.iovs.push(libc::iovec {
                iov_base: out.as_ptr().cast_mut().cast(),
                iov_len: out.len(),
            });
        }
        for (name, iov) in self.names.iter().zip(&self.iovs) {
            // SAFETY: an all-zero mmsghdr is a valid value (null pointers, zero lengths); the
            // fields that matter are set below.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
            h.msg_hdr.msg_namelen = name.len();
            h.msg_hdr.msg_iov = std::ptr::from_ref(iov).cast_mut();
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let count = u32::try_from(self.hdrs.len()).expect("at most BATCH messages");
        // SAFETY: every header points at an address in `self.names` and an iovec in
        // `self.iovs`, which point at answers in `self.outs`; none of these vectors is touched
        // until the call returns, and the kernel only reads them (it writes each header's
        // msg_len, which is ours). `count` is the number of headers.
        let sent = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), count, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(sent).expect("sendmmsg returns a count or -1"))
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}
