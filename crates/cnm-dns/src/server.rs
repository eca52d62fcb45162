//! The listeners: a UDP socket and a TCP listener, bound inside a namespace by a short-lived
//! thread and then served by two tokio tasks. The query path is here: decode, decide under the
//! records' read lock, answer or forward, encode to the size the client allows.
//!
//! Limits that keep one client from starving the others (CVE-2024-8418, CVE-2026-35406):
//! forwarded queries are bounded per listener and overall (beyond: REFUSED at once); TCP
//! connections are capped per listener (beyond: closed at once) and each must deliver every
//! message within the idle timeout or is closed; a truncated message or a reset ends only its
//! own connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cnm_sandbox::NetNs;
use hickory_proto::op::{Message, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::DnsError;
use crate::answer::{Decision, View, decide};
use crate::forward::{Origin, Upstream};
use crate::records::Plan;
use crate::resolvconf::SANDBOX_RESOLVER;
use crate::resolver::Shared;
use crate::wire::{HEADER_LEN, MAX_TCP, MAX_UDP, Reject, encode, parse_query, response_to};

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
}

/// A running listener; dropping it stops its tasks (and, through their join sets, every
/// connection and forwarded query they started) and closes its sockets.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) netns_id: (u64, u64),
    pub(crate) addr: SocketAddr,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
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
        .map_err(|e| DnsError::sandbox("bind a DNS listener in", ns.to_string(), e))?
        .map_err(|e| DnsError::io("bind a DNS listener at", format!("{addr} in {ns}"), e))
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

/// Starts serving the bound sockets.
pub(crate) fn spawn(
    ctx: Arc<ListenCtx>,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> Result<Listener, DnsError> {
    let addr = udp
        .local_addr()
        .map_err(|e| DnsError::io("read the address of", "a DNS listener", e))?;
    let shown = format!("{addr} in {}", ctx.netns);
    let udp = tokio::net::UdpSocket::from_std(udp)
        .map_err(|e| DnsError::io("register the UDP listener", &shown, e))?;
    let tcp = tokio::net::TcpListener::from_std(tcp)
        .map_err(|e| DnsError::io("register the TCP listener", &shown, e))?;
    let netns_id = ctx.netns.id();
    Ok(Listener {
        netns_id,
        addr,
        tasks: [
            tokio::spawn(serve_udp(ctx.clone(), udp)),
            tokio::spawn(serve_tcp(ctx, tcp)),
        ],
    })
}

/// After a socket error, wait this long before the next try so that a persistent error (no
/// memory, no file descriptors) cannot spin a core.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

async fn serve_udp(ctx: Arc<ListenCtx>, socket: tokio::net::UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_UDP + 1];
    let mut jobs = JoinSet::new();
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        while jobs.try_join_next().is_some() {}
        if n > MAX_UDP {
            ctx.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match handle(&ctx, &buf[..n], false) {
            Handled::Reply(bytes) => {
                if let Err(e) = socket.send_to(&bytes, peer).await {
                    tracing::debug!(error = %e, %peer, "DNS UDP send failed");
                }
            }
            Handled::Forward(job) => {
                let socket = socket.clone();
                let shared = ctx.shared.clone();
                jobs.spawn(async move {
                    let bytes = run_job(&shared, job, false).await;
                    if let Err(e) = socket.send_to(&bytes, peer).await {
                        tracing::debug!(error = %e, %peer, "DNS UDP send failed");
                    }
                });
            }
            Handled::Nothing => {}
        }
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
        let reply = match handle(ctx, &buf, true) {
            Handled::Reply(bytes) => bytes,
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
    Reply(Vec<u8>),
    Forward(Job),
    Nothing,
}

/// A query to forward, with the slots it holds until it is answered.
struct Job {
    query: Message,
    upstreams: Vec<Upstream>,
    limit: usize,
    _slots: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

fn handle(ctx: &ListenCtx, bytes: &[u8], tcp: bool) -> Handled {
    let shared = &ctx.shared;
    shared.stats.queries.fetch_add(1, Ordering::Relaxed);
    let query = match parse_query(bytes) {
        Ok(q) => q,
        Err(Reject::Drop) => {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Handled::Nothing;
        }
        Err(Reject::Respond(bytes)) => return Handled::Reply(bytes),
    };
    let limit = if tcp { MAX_TCP } else { query.udp_limit };
    let view = match &ctx.kind {
        Kind::Sandbox(id) => View::Sandbox(id),
        Kind::Host => View::Host(shared.domain.as_deref()),
    };
    let plan = {
        let records = shared.records.read().expect("records lock poisoned");
        match decide(&records, view, &query.msg, shared.ttl) {
            Decision::Answer(msg) => return Handled::Reply(encode(&msg, limit)),
            Decision::Forward => match &ctx.kind {
                Kind::Sandbox(id) => records.plan(id),
                Kind::Host => Plan::Refuse,
            },
        }
    };
    let refuse = |code| Handled::Reply(encode(&response_to(&query.msg, code), limit));
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
    Handled::Forward(Job {
        query: query.msg,
        upstreams,
        limit,
        _slots: (global, local),
    })
}

async fn run_job(shared: &Shared, job: Job, tcp: bool) -> Vec<u8> {
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
