//! Fixtures for the resolver's privileged tests: a throwaway host with a resolver bound to it,
//! sandboxes with their listeners, a DNS client that asks from inside a namespace, and a tiny
//! authoritative upstream (hickory-proto messages over plain sockets) that counts what it sees.

#![allow(dead_code)] // each test file uses its own part of the fixtures

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cnm_dns::{Limits, Resolver, ResolverConfig, SandboxDns};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every sandbox's resolver.
pub const RESOLVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// A throwaway host, and a resolver whose host namespace it is; resolv.conf is a file of the
/// test's, empty at first, and there are no fallback servers, so nothing leaves unless a test
/// names an upstream.
pub struct Fix {
    pub host: TestHost,
    pub resolver: Resolver,
    pub resolv_conf: PathBuf,
}

/// Limits for tests: the defaults, with upstream timeouts short enough for a quick failure.
pub fn test_limits() -> Limits {
    Limits::default()
        .upstream_timeout(Duration::from_millis(1500))
        .hedge_delay(Duration::from_millis(300))
}

impl Fix {
    pub async fn new() -> Result<Fix> {
        Fix::with(test_limits()).await
    }

    pub async fn with(limits: Limits) -> Result<Fix> {
        Fix::configured(|c| c.limits(limits)).await
    }

    /// A fixture whose resolver's configuration `adjust` completes.
    pub async fn configured(adjust: impl FnOnce(ResolverConfig) -> ResolverConfig) -> Result<Fix> {
        let host = TestHost::new().await?;
        let resolv_conf = host.run_dir().join("host-resolv.conf");
        std::fs::write(&resolv_conf, "").context("write the test's resolv.conf")?;
        let resolver = Resolver::new(adjust(
            ResolverConfig::new(host.netns().clone())
                .resolv_conf(&resolv_conf)
                .fallback_servers(Vec::new())
                .limits(test_limits()),
        ))?;
        Ok(Fix {
            host,
            resolver,
            resolv_conf,
        })
    }

    /// Rewrites the host's resolv.conf (by rename, as resolvconf does).
    pub fn set_upstreams(&self, servers: &[IpAddr]) -> Result<()> {
        let text: String = servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        let tmp = self.resolv_conf.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.resolv_conf)?;
        Ok(())
    }

    /// A sandbox namespace (loopback up) with its listener attached.
    pub async fn sandbox(&self, id: &str) -> Result<NetNs> {
        let ns = self.host.sandbox_ns(id).await?;
        self.resolver
            .attach_sandbox(id, &ns, SandboxDns::default())
            .await
            .with_context(|| format!("attach sandbox {id}"))?;
        Ok(ns)
    }

    /// The outside namespace with `extra` more addresses on its link (198.51.100.x/24).
    pub async fn outside_with(&self, extra: &[Ipv4Addr]) -> Result<NetNs> {
        let outside = self.host.outside().await?;
        let eth0 = outside
            .netlink()
            .link("eth0")
            .await?
            .context("outside has eth0")?;
        for ip in extra {
            outside
                .netlink()
                .add_address(eth0.index, ipnet::IpNet::new(IpAddr::V4(*ip), 24)?)
                .await?;
        }
        Ok(outside.netns().clone())
    }
}

/// One question, how to ask it, and where.
#[derive(Clone, Debug)]
pub struct Ask {
    pub server: SocketAddr,
    pub name: String,
    pub qtype: RecordType,
    pub edns: Option<u16>,
    pub tcp: bool,
    pub timeout: Duration,
}

impl Ask {
    pub fn new(name: &str, qtype: RecordType) -> Ask {
        Ask {
            server: RESOLVER,
            name: name.to_owned(),
            qtype,
            edns: None,
            tcp: false,
            timeout: Duration::from_secs(3),
        }
    }

    pub fn tcp(mut self) -> Ask {
        self.tcp = true;
        self
    }

    pub fn edns(mut self, size: u16) -> Ask {
        self.edns = Some(size);
        self
    }

    pub fn server(mut self, server: SocketAddr) -> Ask {
        self.server = server;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Ask {
        self.timeout = t;
        self
    }

    pub fn message(&self) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(&self.name).expect("test names are valid"),
            self.qtype,
        ));
        if let Some(size) = self.edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    /// Asks from inside `ns`; returns the answer and its size on the wire.
    pub async fn from(&self, ns: &NetNs) -> Result<(Message, usize)> {
        let query = self.message();
        let bytes = query.to_vec()?;
        let me = self.clone();
        let raw = ns
            .run(move || exchange(me.server, &bytes, me.tcp, me.timeout))
            .await?
            .with_context(|| {
                format!(
                    "ask {} {} ({})",
                    self.name,
                    self.qtype,
                    if self.tcp { "tcp" } else { "udp" }
                )
            })?;
        let answer = Message::from_vec(&raw).context("decode the answer")?;
        if answer.id != query.id {
            bail!("answer id {} for query id {}", answer.id, query.id);
        }
        Ok((answer, raw.len()))
    }
}

/// Sends `query` and returns the raw answer (blocking; runs on a namespace thread).
pub fn exchange(
    server: SocketAddr,
    query: &[u8],
    tcp: bool,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    if tcp {
        let mut s = TcpStream::connect_timeout(&server, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut out = (query.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(query);
        s.write_all(&out)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf)?;
        Ok(buf)
    } else {
        let s = UdpSocket::bind(if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        s.connect(server)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(query)?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// The A/AAAA addresses of an answer, in answer order.
pub fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test addresses are valid")
}

/// How a [`TestUpstream`] answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Authoritative for these names (lower case, no trailing dot); NXDOMAIN for the rest.
    Zone(HashMap<String, Vec<IpAddr>>),
    /// SERVFAIL for everything.
    ServFail,
}

/// A zone from (name, addresses) pairs.
pub fn zone(entries: &[(&str, &[&str])]) -> Behaviour {
    Behaviour::Zone(
        entries
            .iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|s| ip(s)).collect()))
            .collect(),
    )
}

/// An authoritative DNS server on UDP and TCP at `addr` in a namespace of the test's, counting
/// every message it receives.
pub struct TestUpstream {
    seen: Arc<AtomicUsize>,
    tcp_seen: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestUpstream {
    pub async fn start(ns: &NetNs, addr: SocketAddr, behaviour: Behaviour) -> Result<TestUpstream> {
        let (udp, tcp) = ns
            .run(
                move || -> std::io::Result<(UdpSocket, std::net::TcpListener)> {
                    let udp = UdpSocket::bind(addr)?;
                    udp.set_nonblocking(true)?;
                    let tcp = std::net::TcpListener::bind(addr)?;
                    tcp.set_nonblocking(true)?;
                    Ok((udp, tcp))
                },
            )
            .await?
            .with_context(|| format!("bind the test upstream at {addr}"))?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let seen = Arc::new(AtomicUsize::new(0));
        let tcp_seen = Arc::new(AtomicUsize::new(0));
        let b = Arc::new(behaviour);
        let (s, b1) = (seen.clone(), b.clone());
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                s.fetch_add(1, Ordering::SeqCst);
                if let Some(out) = respond(&buf[..n], &b1, false) {
                    let _ = udp.send_to(&out, peer).await;
                }
            }
        });
        let (s, ts, b2) = (seen.clone(), tcp_seen.clone(), b);
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let (s, ts, b) = (s.clone(), ts.clone(), b2.clone());
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut buf = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        s.fetch_add(1, Ordering::SeqCst);
                        ts.fetch_add(1, Ordering::SeqCst);
                        let Some(out) = respond(&buf, &b, true) else {
                            return;
                        };
                        let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&out);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(TestUpstream {
            seen,
            tcp_seen,
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// Messages received so far (UDP and TCP).
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Messages received over TCP so far.
    pub fn tcp_seen(&self) -> usize {
        self.tcp_seen.load(Ordering::SeqCst)
    }
}

fn respond(bytes: &[u8], behaviour: &Behaviour, tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(bytes).ok()?;
    if q.message_type != MessageType::Query {
        return None;
    }
    let mut r = Message::response(q.id, OpCode::Query);
    r.metadata.recursion_desired = q.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        r.edns = Some(e);
    }
    let question = q.queries.first()?;
    match behaviour {
        Behaviour::ServFail => r.metadata.response_code = ResponseCode::ServFail,
        Behaviour::Zone(names) => {
            let key = question
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            match names.get(&key) {
                None => r.metadata.response_code = ResponseCode::NXDomain,
                Some(addrs) => {
                    r.metadata.authoritative = true;
                    for a in addrs {
                        let data = match (a, question.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                            _ => continue,
                        };
                        r.add_answer(Record::from_rdata(question.name().clone(), 60, data));
                    }
                }
            }
        }
    }
    let out = r.to_vec().ok()?;
    let limit = if tcp {
        65535
    } else {
        q.edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()).max(512))
    };
    if out.len() <= limit {
        return Some(out);
    }
    r.answers.clear();
    r.metadata.truncation = true;
    r.to_vec().ok()
}
