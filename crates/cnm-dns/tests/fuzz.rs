//! The query path under attack: random and mutated messages over UDP and TCP, a truncated TCP
//! query followed by a reset (CVE-2026-35406's case), many TCP connections that send nothing
//! (CVE-2024-8418's case). No panic, no busy loop, no answer bigger than the query allows, and
//! the resolver keeps answering everyone else.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_dns::{EndpointDns, NetworkDns};
use common::{Ask, Fix, RESOLVER, addrs, ip};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A sandbox `a` on network `front` with a name `beta`; no upstreams (forwarded queries get
/// SERVFAIL at once, so every answer comes back in order).
async fn fixture(limits: cnm_dns::Limits) -> Result<(Fix, cnm_sandbox::NetNs)> {
    fixture_with(Fix::with(limits).await?).await
}

async fn fixture_with(f: Fix) -> Result<(Fix, cnm_sandbox::NetNs)> {
    f.resolver.upsert_network(
        "n",
        &NetworkDns::new("front").subnet("10.1.0.0/24".parse()?),
    )?;
    f.resolver.add_endpoint(
        "n",
        &EndpointDns::new("ea", "a", "alpha").address(ip("10.1.0.2")),
    )?;
    f.resolver.add_endpoint(
        "n",
        &EndpointDns::new("eb", "b", "beta")
            .address(ip("10.1.0.3"))
            .alias("replicas"),
    )?;
    for i in 0..100u8 {
        f.resolver.add_endpoint(
            "n",
            &EndpointDns::new(format!("r{i}"), format!("r{i}"), format!("replica{i}"))
                .alias("replicas")
                .address(IpAddr::from([10, 1, 1, i])),
        )?;
    }
    let a = f.sandbox("a").await?;
    Ok((f, a))
}

fn limits() -> cnm_dns::Limits {
    common::test_limits()
        .tcp_idle_timeout(Duration::from_millis(400))
        .tcp_connections_per_listener(8)
}

/// Valid queries to mutate: local, alias with a big answer, forwarded, PTR, with and without EDNS.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, t) in [
        ("beta", RecordType::A),
        ("replicas", RecordType::A),
        ("example.test", RecordType::AAAA),
        ("3.0.1.10.in-addr.arpa.", RecordType::PTR),
        ("beta.front", RecordType::ANY),
    ] {
        out.push(Ask::new(name, t).message().to_vec().expect("encodes"));
        out.push(
            Ask::new(name, t)
                .edns(1232)
                .message()
                .to_vec()
                .expect("encodes"),
        );
    }
    out
}

/// What an answer to `input` may weigh over UDP: 512, or the EDNS size it asks for (capped).
fn allowed_udp(input: &[u8]) -> usize {
    match Message::from_vec(input) {
        Ok(m) => m
            .edns
            .as_ref()
            .map_or(512, |e| usize::from(e.max_payload()).clamp(512, 4096)),
        Err(_) => 512,
    }
}

fn input_strategy() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    let mutated = (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(move |(i, flips, cut)| {
            let mut bytes = seeds[i].clone();
            for (at, b) in flips {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..700), mutated]
}

/// Sends a well-formed query with a unique id and waits for its answer, collecting whatever
/// other answers arrive first (those answer the fuzz input sent just before).
fn sentinel(s: &UdpSocket, n: u16) -> std::io::Result<Vec<Vec<u8>>> {
    let mut q = Ask::new(&format!("sentinel{n}.front"), RecordType::A).message();
    q.metadata.id = n;
    s.send(&q.to_vec().map_err(std::io::Error::other)?)?;
    let mut others = Vec::new();
    let mut buf = vec![0u8; 65535];
    loop {
        let len = s.recv(&mut buf)?;
        if let Ok(m) = Message::from_vec(&buf[..len])
            && m.id == n
            && m.queries
                .first()
                .is_some_and(|q| q.name().to_ascii() == format!("sentinel{n}.front."))
        {
            return Ok(others);
        }
        others.push(buf[..len].to_vec());
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn random_and_mutated_udp_queries_get_bounded_answers_or_none() -> Result<()> {
    let (f, a) = fixture(limits()).await?;
    let report = a
        .run(move || -> Result<usize> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(RESOLVER)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut runner = TestRunner::new(Config {
                cases: 600,
                failure_persistence: None,
                ..Config::default()
            });
            let answered = std::cell::Cell::new(0usize);
            let n = std::cell::Cell::new(0u16);
            runner
                .run(&input_strategy(), |input| {
                    n.set(n.get().wrapping_add(1));
                    s.send(&input)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let answers = sentinel(&s, n.get()).map_err(|e| {
                        TestCaseError::fail(format!("resolver stopped answering: {e}"))
                    })?;
                    prop_assert!(answers.len() <= 1, "one message, at most one answer");
                    for ans in &answers {
                        answered.set(answered.get() + 1);
                        prop_assert!(ans.len() <= allowed_udp(&input), "{} bytes", ans.len());
                        let m = Message::from_vec(ans)
                            .map_err(|e| TestCaseError::fail(format!("undecodable answer: {e}")))?;
                        prop_assert_eq!(m.message_type, MessageType::Response);
                        prop_assert_eq!(
                            &ans[..2],
                            &input[..2],
                            "the answer carries the query's id"
                        );
                    }
                    Ok(())
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(answered.get())
        })
        .await??;
    ensure!(
        report > 50,
        "the mutated valid queries were answered ({report})"
    );
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    assert!(f.resolver.stats().dropped > 0, "junk was dropped");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn random_tcp_streams_end_only_their_connection() -> Result<()> {
    let (_f, a) = fixture(limits()).await?;
    a.run(move || -> Result<()> {
        let mut runner = TestRunner::new(Config {
            cases: 40,
            failure_persistence: None,
            ..Config::default()
        });
        let framing = prop_oneof![Just(0u8), Just(1), Just(2)];
        runner
            .run(&(input_strategy(), framing), |(input, framing)| {
                let mut s =
                    TcpStream::connect(RESOLVER).map_err(|e| TestCaseError::fail(e.to_string()))?;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                let mut out = Vec::new();
                match framing {
                    // Honest length prefix.
                    0 => out.extend_from_slice(&(input.len() as u16).to_be_bytes()),
                    // A prefix promising more than follows.
                    1 => out.extend_from_slice(
                        &((input.len() as u16).saturating_add(40)).to_be_bytes(),
                    ),
                    // No prefix at all.
                    _ => {}
                }
                out.extend_from_slice(&input);
                s.write_all(&out).ok();
                // Read until the resolver closes: it must, by the idle timeout at the latest.
                let start = Instant::now();
                let mut got = Vec::new();
                let r = s.read_to_end(&mut got);
                // Closed with a FIN, or with a reset when our bytes were left unread.
                let closed = match &r {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                };
                prop_assert!(closed, "closed, not timed out: {r:?}");
                prop_assert!(start.elapsed() < Duration::from_secs(4));
                // Whatever came back is whole framed messages.
                let mut rest = &got[..];
                while rest.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    prop_assert!(rest.len() >= 2 + len, "a whole message");
                    prop_assert!(Message::from_vec(&rest[2..2 + len]).is_ok());
                    rest = &rest[2 + len..];
                }
                prop_assert!(rest.is_empty());
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await??;
    let (m, _) = Ask::new("beta", RecordType::A).tcp().from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    Ok(())
}

/// The name of the resolver threads of the reset test (unique among this binary's tests,
/// which run side by side in one process).
const RESET_TEST_THREADS: &str = "dns-reset";

/// CPU time (user + system, in clock ticks of 10 ms) of this process's threads called
/// `name-N`, and how many there are.
fn threads_cpu_ticks(name: &str) -> Result<(u64, usize)> {
    let (mut ticks, mut threads) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task")? {
        // Other tests of this binary start and end threads meanwhile: one that ended between
        // the listing and the read is simply not counted.
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let (head, after) = stat.rsplit_once(')').context("stat has a comm")?;
        let comm = head.split_once('(').context("stat has a comm")?.1;
        if !comm.strip_prefix(name).is_some_and(|n| n.starts_with('-')) {
            continue;
        }
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields after the comm start at `state` (field 3): utime is field 14, stime field 15.
        ticks += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        threads += 1;
    }
    Ok((ticks, threads))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_truncated_tcp_query_then_a_reset_harms_nobody() -> Result<()> {
    let f = Fix::configured(|c| c.limits(limits()).thread_name(RESET_TEST_THREADS)).await?;
    let (_f, a) = fixture_with(f).await?;
    let query = Ask::new("beta", RecordType::A).message().to_vec()?;
    a.run(move || -> Result<()> {
        // Cut inside the length prefix, inside the message, one byte short; and the whole
        // query, reset before the answer is read (the resolver then writes to a dead socket).
        for cut in [1usize, 2, 5, 13, query.len() - 1, query.len() + 2] {
            for _ in 0..10 {
                let mut s = TcpStream::connect(RESOLVER)?;
                let mut out = (query.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&query);
                s.write_all(&out[..cut.min(out.len())])?;
                // SO_LINGER 0: close sends a reset instead of a FIN.
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                drop(s);
            }
        }
        Ok(())
    })
    .await??;
    // Every task of the resolver runs on its own threads: if one spun on a dead connection,
    // they would burn CPU while nobody asks anything.
    let (before, threads) = threads_cpu_ticks(RESET_TEST_THREADS)?;
    ensure!(threads > 0, "no thread called {RESET_TEST_THREADS}-N");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let spent = threads_cpu_ticks(RESET_TEST_THREADS)?.0 - before;
    assert!(
        spent <= 20,
        "the resolver's threads used {spent}0 ms of CPU in 1 s of quiet"
    );
    for tcp in [false, true] {
        let mut ask = Ask::new("beta", RecordType::A);
        ask.tcp = tcp;
        let (m, _) = ask.from(&a).await?;
        assert_eq!(
            addrs(&m),
            vec![ip("10.1.0.3")],
            "still answering (tcp={tcp})"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn many_silent_tcp_connections_do_not_starve_anyone() -> Result<()> {
    let (f, a) = fixture(limits()).await?;
    f.resolver.add_endpoint(
        "n",
        &EndpointDns::new("eo", "other", "other").address(ip("10.1.0.9")),
    )?;
    let other = f.sandbox("other").await?;
    // 64 connections that never send a byte (the cap is 8 per listener).
    let held = a
        .run(|| -> std::io::Result<Vec<TcpStream>> {
            (0..64).map(|_| TcpStream::connect(RESOLVER)).collect()
        })
        .await??;
    // The sandbox itself still gets UDP answers, and so does another sandbox over TCP.
    let start = Instant::now();
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    let (m, _) = Ask::new("beta", RecordType::A).tcp().from(&other).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "answered at once: {:?}",
        start.elapsed()
    );
    // Connections over the cap were closed at once; the others by the idle timeout.
    let closed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Duration>> {
        let start = Instant::now();
        held.into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut b = [0u8; 1];
                match s.read(&mut b) {
                    Ok(0) => Ok(start.elapsed()),
                    Ok(_) => Err(std::io::Error::other("unexpected data")),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        Ok(start.elapsed())
                    }
                    Err(e) => Err(e),
                }
            })
            .collect()
    })
    .await??;
    if let Some(slowest) = closed.iter().max()
        && *slowest > Duration::from_secs(3)
    {
        bail!("a silent connection stayed open {slowest:?}");
    }
    assert!(
        f.resolver.stats().tcp_rejected >= 56,
        "{:?}",
        f.resolver.stats()
    );
    let (m, _) = Ask::new("beta", RecordType::A).tcp().from(&a).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("10.1.0.3")],
        "TCP works again once they are gone"
    );
    Ok(())
}
