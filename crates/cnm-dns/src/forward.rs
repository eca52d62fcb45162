//! Forwarding to upstream servers: one fresh UDP socket per query (random source port, random
//! id), TCP when the answer is truncated and the client asked over TCP, the next upstream on
//! SERVFAIL/REFUSED or silence, and a memory of which upstreams were silent so that a dead
//! first server costs one hedge delay once, not seconds on every query.
//!
//! Upstream sockets are born in the namespace the server is reached from: the host's (the
//! controller's host namespace; loopback servers such as systemd-resolved's 127.0.0.53 live
//! there), or, for a loopback `--dns` server, the sandbox's own. A socket keeps the namespace it
//! was created in, so a short-lived thread creates a batch of them there ([`SocketPool`]) and
//! tokio drives them from any worker afterwards.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cnm_sandbox::NetNs;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wire::{CLASSIC_UDP, MAX_UDP, OUR_PAYLOAD};

/// Where an upstream is reached from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// The host namespace.
    Host,
    /// A sandbox's own namespace (a loopback `--dns` server).
    Sandbox(NetNs),
}

/// An upstream as its health is remembered: address, and the namespace it is asked from.
type UpstreamKey = (SocketAddr, Option<(u64, u64)>);

/// One upstream server and where to reach it from.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) origin: Origin,
}

impl Upstream {
    fn key(&self) -> UpstreamKey {
        match &self.origin {
            Origin::Host => (self.addr, None),
            Origin::Sandbox(ns) => (self.addr, Some(ns.id())),
        }
    }
}

/// Timing of forwarding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ForwardTiming {
    /// How long one upstream gets to answer.
    pub(crate) timeout: Duration,
    /// How long to wait for one upstream before asking the next one too.
    pub(crate) hedge: Duration,
    /// How long a silent upstream goes to the back of the line.
    pub(crate) down_for: Duration,
}

/// An upstream's answer: the bytes as received and the decoded message.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) msg: Message,
}

#[derive(Debug)]
enum AttemptError {
    Timeout,
    Io(io::Error),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("no answer in time"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

type Attempt<'a> =
    Pin<Box<dyn Future<Output = (usize, Result<Forwarded, AttemptError>)> + Send + 'a>>;

/// Forwards queries; shared by every listener.
#[derive(Debug)]
pub(crate) struct Forwarder {
    host_pool: Arc<SocketPool>,
    /// Upstreams that were silent, and until when they wait at the back of the line.
    down: Mutex<HashMap<UpstreamKey, Instant>>,
    timing: ForwardTiming,
}

impl Forwarder {
    pub(crate) fn new(host: NetNs, timing: ForwardTiming) -> Self {
        Self {
            host_pool: Arc::new(SocketPool::new(host)),
            down: Mutex::new(HashMap::new()),
            timing,
        }
    }

    /// Asks `upstreams` (best first, hedged) and returns the first good answer, or the last
    /// SERVFAIL/REFUSED one, or `None` when nobody answered.
    pub(crate) async fn forward(
        &self,
        query: &Message,
        upstreams: &[Upstream],
        tcp_client: bool,
    ) -> Option<Forwarded> {
        let order = self.order(upstreams);
        let question = query.queries.first()?.clone();
        let mut pending: FuturesUnordered<Attempt<'_>> = FuturesUnordered::new();
        let mut next = 0;
        let mut fallback = None;
        let mut answered = vec![false; order.len()];
        let launch = |i: usize| -> Attempt<'_> {
            let up = order[i].clone();
            let question = question.clone();
            Box::pin(async move { (i, self.attempt(&up, query, &question, tcp_client).await) })
        };
        loop {
            if pending.is_empty() {
                if next == order.len() {
                    break;
                }
                pending.push(launch(next));
                next += 1;
            }
            tokio::select! {
                Some((i, result)) = pending.next() => {
                    let up = &order[i];
                    answered[i] = true;
                    match result {
                        Ok(f) if !matches!(f.msg.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                            self.mark_up(up);
                            // Those asked before this one and still silent were overtaken by
                            // a hedge: to the back of the line with them, so that the next
                            // query does not wait on them first.
                            for (j, slow) in order.iter().enumerate().take(i) {
                                if !answered[j] {
                                    self.mark_down(slow);
                                }
                            }
                            return Some(f);
                        }
                        Ok(f) => {
                            tracing::debug!(upstream = %up.addr, code = %f.msg.response_code, "upstream failed the query; trying the next");
                            self.mark_up(up);
                            fallback = Some(f);
                        }
                        Err(e) => {
                            tracing::debug!(upstream = %up.addr, error = %e, "upstream silent; trying the next");
                            self.mark_down(up);
                        }
                    }
                    if next < order.len() {
                        pending.push(launch(next));
                        next += 1;
                    }
                }
                () = tokio::time::sleep(self.timing.hedge), if next < order.len() => {
                    pending.push(launch(next));
                    next += 1;
                }
            }
        }
        fallback
    }

    /// The upstreams in their given order, those recently silent moved to the back.
    fn order(&self, upstreams: &[Upstream]) -> Vec<Upstream> {
        let now = Instant::now();
        let mut down = self.down.lock().expect("upstream health lock poisoned");
        down.retain(|_, until| *until > now);
        let (mut ok, late): (Vec<Upstream>, Vec<Upstream>) = upstreams
            .iter()
            .cloned()
            .partition(|u| !down.contains_key(&u.key()));
        ok.extend(late);
        ok
    }

    fn mark_down(&self, up: &Upstream) {
        let until = Instant::now() + self.timing.down_for;
        self.down
            .lock()
            .expect("upstream health lock poisoned")
            .insert(up.key(), until);
    }

    fn mark_up(&self, up: &Upstream) {
        let mut down = self.down.lock().expect("upstream health lock poisoned");
        if !down.is_empty() {
            down.remove(&up.key());
        }
    }

    /// One upstream: UDP, then TCP if the answer was truncated and the client is on TCP.
    async fn attempt(
        &self,
        up: &Upstream,
        query: &Message,
        question: &Query,
        tcp_client: bool,
    ) -> Result<Forwarded, AttemptError> {
        let sent = Outgoing::new(query, question).map_err(AttemptError::Io)?;
        let answer = tokio::time::timeout(self.timing.timeout, self.udp(up, &sent))
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(AttemptError::Io)?;
        if !(answer.msg.truncation && tcp_client) {
            return Ok(answer);
        }
        let sent = Outgoing::new(query, question).map_err(AttemptError::Io)?;
        tokio::time::timeout(self.timing.timeout, self.tcp(up, &sent))
            .await
            .map_err(|_| AttemptError::Timeout)?
            .map_err(AttemptError::Io)
    }

    async fn udp(&self, up: &Upstream, query: &Outgoing<'_>) -> io::Result<Forwarded> {
        let std_socket = match &up.origin {
            Origin::Host => self.host_pool.take(up.addr.is_ipv4()).await?,
            Origin::Sandbox(ns) => {
                let v4 = up.addr.is_ipv4();
                ns.run(move || udp_socket(v4))
                    .await
                    .map_err(io::Error::other)??
            }
        };
        // Connected: the kernel drops datagrams from anyone else and reports ICMP errors.
        std_socket.connect(up.addr)?;
        let socket = tokio::net::UdpSocket::from_std(std_socket)?;
        socket.send(&query.bytes).await?;
        let mut buf = vec![0u8; MAX_UDP + 1];
        loop {
            let n = socket.recv(&mut buf).await?;
            if n <= MAX_UDP
                && let Some(msg) = query.accept(&buf[..n])
            {
                buf.truncate(n);
                return Ok(Forwarded { bytes: buf, msg });
            }
            // Anything else (a stray or forged datagram) is ignored; the timeout bounds us.
        }
    }

    async fn tcp(&self, up: &Upstream, query: &Outgoing<'_>) -> io::Result<Forwarded> {
        let v4 = up.addr.is_ipv4();
        let ns = match &up.origin {
            Origin::Host => self.host_pool.ns.clone(),
            Origin::Sandbox(ns) => ns.clone(),
        };
        let std_stream = ns
            .run(move || tcp_socket(v4))
            .await
            .map_err(io::Error::other)??;
        let mut stream = tokio::net::TcpSocket::from_std_stream(std_stream)
            .connect(up.addr)
            .await?;
        let bytes = &query.bytes;
        let len = u16::try_from(bytes.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
        stream.write_all(&out).await?;
        loop {
            let len = usize::from(stream.read_u16().await?);
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            if let Some(msg) = query.accept(&buf) {
                return Ok(Forwarded { bytes: buf, msg });
            }
        }
    }
}

/// One query as sent to one upstream over one transport, and what its answer must match.
struct Outgoing<'a> {
    /// Its fresh random id.
    id: u16,
    /// The encoded message (see [`upstream_query`]).
    bytes: Vec<u8>,
    /// The client's question.
    question: &'a Query,
}

impl<'a> Outgoing<'a> {
    fn new(query: &Message, question: &'a Query) -> io::Result<Self> {
        let (id, bytes) = upstream_query(query)?;
        Ok(Self {
            id,
            bytes,
            question,
        })
    }

    /// The answer in `bytes`, if it is one to this query (see [`accept`]).
    fn accept(&self, bytes: &[u8]) -> Option<Message> {
        accept(bytes, self.id, self.question)
    }
}

/// The query as sent upstream: the client's question, RD and CD bits, and an OPT record if the
/// client sent one (its size capped at ours, its DO bit kept), under a fresh random id.
fn upstream_query(query: &Message) -> io::Result<(u16, Vec<u8>)> {
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = query.recursion_desired;
    m.metadata.checking_disabled = query.checking_disabled;
    m.queries = query.queries.clone();
    if let Some(e) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload().clamp(CLASSIC_UDP as u16, OUR_PAYLOAD));
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        m.edns = Some(edns);
    }
    let bytes = m.to_vec().map_err(io::Error::other)?;
    Ok((id, bytes))
}

/// An upstream's answer to our question, or `None` for anything else.
fn accept(bytes: &[u8], id: u16, question: &Query) -> Option<Message> {
    let msg = Message::from_vec(bytes).ok()?;
    let q = msg.queries.first()?;
    // hickory's Name equality ignores case.
    (msg.id == id
        && msg.message_type == MessageType::Response
        && msg.queries.len() == 1
        && q.name() == question.name()
        && q.query_type() == question.query_type()
        && q.query_class() == question.query_class())
    .then_some(msg)
}

fn udp_socket(v4: bool) -> io::Result<std::net::UdpSocket> {
    let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

fn tcp_socket(v4: bool) -> io::Result<std::net::TcpStream> {
    let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Unbound UDP sockets made in one namespace, a batch per thread spawn, handed out one per
/// query (each then binds a random source port when it connects).
#[derive(Debug)]
pub(crate) struct SocketPool {
    ns: NetNs,
    v4: Mutex<Vec<std::net::UdpSocket>>,
    v6: Mutex<Vec<std::net::UdpSocket>>,
    refilling: [AtomicBool; 2],
}

/// Sockets made per trip into the namespace.
const BATCH: usize = 32;
/// Below this many spare sockets a refill starts in the background.
const LOW_WATER: usize = 8;

impl SocketPool {
    pub(crate) fn new(ns: NetNs) -> Self {
        Self {
            ns,
            v4: Mutex::new(Vec::new()),
            v6: Mutex::new(Vec::new()),
            refilling: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    fn slot(&self, v4: bool) -> (&Mutex<Vec<std::net::UdpSocket>>, &AtomicBool) {
        if v4 {
            (&self.v4, &self.refilling[0])
        } else {
            (&self.v6, &self.refilling[1])
        }
    }

    /// A fresh UDP socket of the namespace.
    pub(crate) async fn take(self: &Arc<Self>, v4: bool) -> io::Result<std::net::UdpSocket> {
        let (list, refilling) = self.slot(v4);
        let (socket, left) = {
            let mut l = list.lock().expect("socket pool lock poisoned");
            (l.pop(), l.len())
        };
        if left < LOW_WATER && !refilling.swap(true, Ordering::AcqRel) {
            let pool = self.clone();
            tokio::spawn(async move {
                let (list, refilling) = pool.slot(v4);
                match pool.batch(v4).await {
                    Ok(batch) => list
                        .lock()
                        .expect("socket pool lock poisoned")
                        .extend(batch),
                    Err(e) => {
                        tracing::warn!(error = %e, netns = %pool.ns, "cannot make upstream sockets")
                    }
                }
                refilling.store(false, Ordering::Release);
            });
        }
        if let Some(s) = socket {
            return Ok(s);
        }
        let mut batch = self.batch(v4).await?;
        let s = batch
            .pop()
            .ok_or_else(|| io::Error::other("empty socket batch"))?;
        list.lock()
            .expect("socket pool lock poisoned")
            .extend(batch);
        Ok(s)
    }

    async fn batch(&self, v4: bool) -> io::Result<Vec<std::net::UdpSocket>> {
        self.ns
            .run(move || {
                (0..BATCH)
                    .map(|_| udp_socket(v4))
                    .collect::<io::Result<Vec<_>>>()
            })
            .await
            .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn upstream_query_keeps_the_question_and_caps_edns() {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        let (id, bytes) = upstream_query(&q).unwrap();
        let sent = Message::from_vec(&bytes).unwrap();
        assert_eq!(sent.id, id);
        assert!(sent.recursion_desired);
        assert_eq!(sent.queries, q.queries);
        assert_eq!(sent.edns.unwrap().max_payload(), OUR_PAYLOAD);
    }

    #[test]
    fn only_our_answer_is_accepted() {
        let question = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        let mut r = Message::response(7, OpCode::Query);
        r.add_query(Query::query(
            Name::from_ascii("EXAMPLE.com.").unwrap(),
            RecordType::A,
        ));
        let bytes = r.to_vec().unwrap();
        assert!(accept(&bytes, 7, &question).is_some());
        assert!(accept(&bytes, 8, &question).is_none(), "another id");
        let other = Query::query(Name::from_ascii("example.org.").unwrap(), RecordType::A);
        assert!(accept(&bytes, 7, &other).is_none(), "another question");
        assert!(accept(&bytes[..5], 7, &question).is_none());
    }
}
