//! The listeners: a UDP socket and a TCP listener, bound inside a namespace by a short-lived
//! thread and then served by two tokio tasks. The query path is here: decode, decide under the
//! records' read lock, answer or forward, encode to the size the client allows.
//!
//! Limits that keep one client from starving the others (CVE-2024-8418, CVE-2026-35406):
//! forwarded queries are bounded per listener and overall (beyond: REFUSED at once); TCP
//! connections are capped per listener (beyond: closed at once) and each must deliver every
//! message within the idle timeout or is closed; a truncated message or a reset ends only its
//! own connection.

use cnm_types::FailedTo;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cnm_sandbox::NetNs;
use hickory_proto::op::{Message, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::DnsError;
use crate::answer::{Decision, View, decide};
use crate::batch::{BATCH, Batch, with_batch};
use crate::forward::{Origin, Upstream};
use crate::records::Plan;
use crate::resolvconf::SANDBOX_RESOLVER;
use crate::resolver::Shared;
use crate::wire::{
    HEADER_LEN, MAX_TCP, Reject, Reply, encode, parse_query, response_to, write_reply,
};

/// Whose listener this is.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Sandbox(Arc<str>),
    Host,
}

/// What a listener's tasks share.
#[derive(Debug)]
pub(crate) struct ListenCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) kind: Kind,
    pub(crate) netns: NetNs,
    pub(crate) forward_slots: Arc<Semaphore>,
    pub(crate) tcp_slots: Arc<Semaphore>,
    /// Set when the listener is stopped. An abort lands only at the task's next await, and a
    /// batch of datagrams is answered within one poll, so every message checks this first:
    /// once a stop returns, nothing more is answered.
    pub(crate) stopped: AtomicBool,
}

/// A running listener; dropping it stops its tasks (and, through their join sets, every
/// connection and forwarded query they started) and closes its sockets.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) netns_id: (u64, u64),
    pub(crate) addr: SocketAddr,
    ctx: Arc<ListenCtx>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.ctx.stopped.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds UDP and TCP at `addr` inside `ns` (port 0: one free port for both).
pub(crate) async fn bind(
    ns: &NetNs,
    addr: SocketAddr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    ns.run(move || bind_here(addr))
        .await
        .map_err(|e| DnsError::failed("bind a DNS listener in", ns.to_string(), e))?
        .map_err(|e| DnsError::failed("bind a DNS listener at", format!("{addr} in {ns}"), e))
}

fn bind_here(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let domain = Domain::for_address(addr);
    let freebind = |s: &Socket| {
        // Bind even while the sandbox's loopback is still down: the listener is ready the
        // moment it comes up.
        if addr.is_ipv4() {
            s.set_freebind_v4(true)
        } else {
            s.set_freebind_v6(true)
        }
    };
    let udp = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    freebind(&udp)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let bound = udp
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("UDP listener has no IP address"))?;
    let tcp = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    freebind(&tcp)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&bound.into())?;
    tcp.listen(128)?;
    Ok((udp.into(), tcp.into()))
}

/// Starts serving the bound sockets on `rt` (one of the resolver's threads).
pub(crate) fn spawn(
    ctx: Arc<ListenCtx>,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    rt: &tokio::runtime::Handle,
) -> Result<Listener, DnsError> {
    // The sockets register with the reactor of the runtime that serves them.
    let _in_rt = rt.enter();
    let addr = udp
        .local_addr()
        .map_err(|e| DnsError::failed("read the address of", "a DNS listener", e))?;
    let shown = format!("{addr} in {}", ctx.netns);
    let v6 = addr.is_ipv6();
    let udp = tokio::net::UdpSocket::from_std(udp)
        .map_err(|e| DnsError::failed("register the UDP listener", &shown, e))?;
    let tcp = tokio::net::TcpListener::from_std(tcp)
        .map_err(|e| DnsError::failed("register the TCP listener", &shown, e))?;
    let netns_id = ctx.netns.id();
    Ok(Listener {
        netns_id,
        addr,
        tasks: [
            rt.spawn(serve_udp(ctx.clone(), udp, v6)),
            rt.spawn(serve_tcp(ctx.clone(), tcp)),
        ],
        ctx,
    })
}

/// After a socket error, wait this long before the next try so that a persistent error (no
/// memory, no file descriptors) cannot spin a core.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// At most this many full batches are answered in a row before the task yields, so that one
/// busy listener cannot keep the other tasks of its worker thread waiting.
const BATCHES_IN_A_ROW: usize = 2;

/// What one pass over a batch leaves for the task to do after it (rare: both are empty when
/// every query was answered locally and the socket took every answer).
#[derive(Default)]
struct Later {
    /// Answers the socket had no room for, sent when it has.
    pending: Vec<(Vec<u8>, SocketAddr)>,
    /// Queries to forward, each on a task of its own.
    jobs: Vec<(Box<Job>, SocketAddr)>,
}

/// How a pass ended.
enum Pass {
    /// The kernel gave a whole batch: more may wait.
    Full,
    /// Fewer than a batch: the socket is drained.
    Drained,
    /// The listener was stopped.
    Stopped,
}

/// The UDP receive loop. Per readiness wake-up: one `recvmmsg` takes up to a batch of queries,
/// each local answer is decided and encoded inline into the thread's reused buffers, and one
/// `sendmmsg` sends them ([`crate::batch`]). A batch shorter than [`BATCH`] means the socket is
/// drained, so its readiness is cleared without another receive that would fail. Forwarded
/// queries get a task each.
async fn serve_udp(ctx: Arc<ListenCtx>, socket: tokio::net::UdpSocket, v6: bool) {
    let socket = Arc::new(socket);
    let fd = socket.as_raw_fd();
    let mut jobs = JoinSet::new();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::debug!(error = %e, "DNS UDP socket failed");
            tokio::time::sleep(ERROR_BACKOFF).await;
            continue;
        }
        let mut later = Later::default();
        let mut drained = false;
        let mut failed = false;
        for _ in 0..BATCHES_IN_A_ROW {
            // A short batch reports `WouldBlock` so that tokio clears the readiness: the next
            // wait goes to epoll without a receive that would find nothing.
            let pass = socket.try_io(Interest::READABLE, || {
                match with_batch(|b| serve_batch(&ctx, b, fd, v6, &mut later)) {
                    Ok(Pass::Drained) => Err(io::ErrorKind::WouldBlock.into()),
                    other => other,
                }
            });
            match pass {
                Ok(Pass::Full) => {}
                Ok(Pass::Stopped) => return,
                Ok(Pass::Drained) => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    failed = true;
                    break;
                }
            }
        }
        if !jobs.is_empty() {
            while jobs.try_join_next().is_some() {}
        }
        for (bytes, peer) in later.pending {
            send_udp(&socket, &bytes, peer).await;
        }
        for (job, peer) in later.jobs {
            let socket = socket.clone();
            let shared = ctx.shared.clone();
            jobs.spawn(async move {
                let bytes = run_job(&shared, job, false).await;
                send_udp(&socket, &bytes, peer).await;
            });
        }
        if failed {
            tokio::time::sleep(ERROR_BACKOFF).await;
        } else if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// One batch: receive, decide every query, send every answer. Never awaits (the buffers are
/// the thread's); what must wait goes into `later`.
fn serve_batch(
    ctx: &ListenCtx,
    b: &mut Batch,
    fd: RawFd,
    v6: bool,
    later: &mut Later,
) -> io::Result<Pass> {
    let n = b.recv(fd, v6)?;
    for i in 0..b.received.len() {
        let r = b.received[i];
        // Checked per message: a stop lands between two messages of a batch.
        if ctx.stopped.load(Ordering::SeqCst) {
            return Ok(Pass::Stopped);
        }
        if r.too_big {
            ctx.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut out = std::mem::take(&mut b.outs[r.slot]);
        let handled = handle(ctx, b.datagram(&r), false, &mut out);
        b.outs[r.slot] = out;
        match handled {
            Handled::Reply => b.sends.push((r.slot, r.peer)),
            Handled::Forward(job) => later.jobs.push((job, r.peer)),
            Handled::Nothing => {}
        }
    }
    let mut from = 0;
    while from < b.sends.len() {
        match b.send(fd, from) {
            Ok(sent) => from += sent.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The socket's buffer is full: the rest waits for room (not on this thread's
                // buffers, which the next batch needs).
                for &(slot, peer) in &b.sends[from..] {
                    later.pending.push((b.outs[slot].clone(), peer));
                }
                break;
            }
            Err(e) => {
                // This answer cannot go (the kernel said why); the others still can.
                tracing::debug!(error = %e, peer = %b.sends[from].1, "DNS UDP send failed");
                from += 1;
            }
        }
    }
    Ok(if n == BATCH {
        Pass::Full
    } else {
        Pass::Drained
    })
}

/// Sends one datagram: at once when the socket has room (nearly always), else when it has.
async fn send_udp(socket: &tokio::net::UdpSocket, bytes: &[u8], peer: SocketAddr) {
    let sent = match socket.try_send_to(bytes, peer) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, peer).await,
        other => other,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, %peer, "DNS UDP send failed");
    }
}

async fn serve_tcp(ctx: Arc<ListenCtx>, listener: tokio::net::TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        if ctx.stopped.load(Ordering::SeqCst) {
            return;
        }
        while conns.try_join_next().is_some() {}
        match ctx.tcp_slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let ctx = ctx.clone();
                conns.spawn(async move {
                    serve_conn(&ctx, stream).await;
                    drop(permit);
                });
            }
            Err(_) => {
                // Over the cap: closed at once, so the client learns it now, not at a timeout.
                ctx.shared
                    .stats
                    .tcp_rejected
                    .fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        }
    }
}

async fn serve_conn(ctx: &ListenCtx, mut stream: tokio::net::TcpStream) {
    let idle = ctx.shared.limits.tcp_idle_timeout;
    let mut out = Vec::new();
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        if len < HEADER_LEN {
            ctx.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            // Cut short, reset or too slow: this connection ends, nothing else notices.
            _ => return,
        }
        if ctx.stopped.load(Ordering::SeqCst) {
            return;
        }
        let reply = match handle(ctx, &buf, true, &mut out) {
            Handled::Reply => std::mem::take(&mut out),
            Handled::Forward(job) => run_job(&ctx.shared, job, true).await,
            Handled::Nothing => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(idle, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// What to do with one message.
enum Handled {
    /// Send the answer [`handle`] wrote into its `out` buffer.
    Reply,
    /// Forward (boxed: the rare path carries the query and its slots).
    Forward(Box<Job>),
    Nothing,
}

/// A query to forward, with the slots it holds until it is answered.
struct Job {
    query: Message,
    upstreams: Vec<Upstream>,
    limit: usize,
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Decides what to do with one message; a reply is written into `out`.
fn handle(ctx: &ListenCtx, bytes: &[u8], tcp: bool, out: &mut Vec<u8>) -> Handled {
    let shared = &ctx.shared;
    shared.stats.queries.fetch_add(1, Ordering::Relaxed);
    let query = match parse_query(bytes) {
        Ok(q) => q,
        Err(Reject::Drop) => {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Handled::Nothing;
        }
        Err(Reject::Respond(bytes)) => {
            *out = bytes;
            return Handled::Reply;
        }
    };
    let limit = if tcp { MAX_TCP } else { query.udp_limit };
    let view = match &ctx.kind {
        Kind::Sandbox(id) => View::Sandbox(id),
        Kind::Host => View::Host(shared.domain.as_deref()),
    };
    let plan = {
        let records = shared.records.read().expect("records lock poisoned");
        match decide(&records, view, &query.msg, shared.ttl) {
            Decision::Answer(reply) => {
                write_reply(&query.msg, reply, limit, out);
                return Handled::Reply;
            }
            Decision::Forward => match &ctx.kind {
                Kind::Sandbox(id) => records.plan(id),
                Kind::Host => Plan::Refuse,
            },
        }
    };
    let mut refuse = |code| {
        write_reply(&query.msg, Reply::code(code), limit, out);
        Handled::Reply
    };
    let host = |addrs: Vec<SocketAddr>| -> Vec<Upstream> {
        addrs
            .into_iter()
            .map(|addr| Upstream {
                addr,
                origin: Origin::Host,
            })
            .collect()
    };
    let upstreams: Vec<Upstream> = match plan {
        Plan::Refuse => return refuse(ResponseCode::Refused),
        Plan::Sandbox(addrs) => addrs
            .into_iter()
            .map(|addr| Upstream {
                addr,
                origin: if addr.ip().is_loopback() {
                    Origin::Sandbox(ctx.netns.clone())
                } else {
                    Origin::Host
                },
            })
            .collect(),
        Plan::Networks(addrs) => host(addrs),
        Plan::Host => {
            let listed = shared.host_conf.servers();
            if listed.is_empty() {
                host(shared.fallback.clone())
            } else {
                host(listed.to_vec())
            }
        }
    };
    let upstreams: Vec<Upstream> = upstreams
        .into_iter()
        .filter(|u| !shared.is_self(u))
        .collect();
    if upstreams.is_empty() {
        return refuse(ResponseCode::ServFail);
    }
    let (Ok(global), Ok(local)) = (
        shared.forward_slots.clone().try_acquire_owned(),
        ctx.forward_slots.clone().try_acquire_owned(),
    ) else {
        shared.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
        return refuse(ResponseCode::Refused);
    };
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    Handled::Forward(Box::new(Job {
        query: query.msg,
        upstreams,
        limit,
        _slots: (global, local),
    }))
}

async fn run_job(shared: &Shared, job: Box<Job>, tcp: bool) -> Vec<u8> {
    let client_id = job.query.id;
    match shared
        .forwarder
        .forward(&job.query, &job.upstreams, tcp)
        .await
    {
        Some(f) if f.bytes.len() <= job.limit => {
            // Passed through as received (nothing lost in re-encoding), under the client's id.
            let mut bytes = f.bytes;
            bytes[..2].copy_from_slice(&client_id.to_be_bytes());
            bytes
        }
        Some(f) => {
            let mut msg = f.msg;
            msg.metadata.id = client_id;
            encode(&msg, job.limit)
        }
        None => encode(&response_to(&job.query, ResponseCode::ServFail), job.limit),
    }
}

/// Whether `up` is this resolver: 127.0.0.11:53 (every sandbox's listener) or a host listener.
pub(crate) fn is_sandbox_resolver(addr: SocketAddr) -> bool {
    addr.ip() == std::net::IpAddr::V4(SANDBOX_RESOLVER) && addr.port() == 53
}
