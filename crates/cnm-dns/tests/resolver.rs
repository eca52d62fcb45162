//! The resolver with real sockets: sandboxes ask 127.0.0.11 inside their own namespaces, the
//! upstreams are authoritative servers of the test's in namespaces of the test's.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cnm_dns::{EndpointDns, NetworkDns, Resolver, SandboxDns};
use common::{Ask, Behaviour, Fix, TestUpstream, addrs, ip, zone};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{RData, RecordType};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const OUTSIDE_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// On the outside link, but nobody has it: queries to it vanish (no ARP answer).
const DEAD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);

fn at(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 53)
}

/// Networks `front` (10.1.0.0/24) and `back` (10.2.0.0/24); sandboxes a, b on front, c on back.
fn two_networks(f: &Fix) -> Result<()> {
    let r = &f.resolver;
    r.upsert_network(
        "n-front",
        &NetworkDns::new("front").subnet("10.1.0.0/24".parse()?),
    )?;
    r.upsert_network(
        "n-back",
        &NetworkDns::new("back").subnet("10.2.0.0/24".parse()?),
    )?;
    r.add_endpoint(
        "n-front",
        &EndpointDns::new("ep-a", "a", "alpha").address(ip("10.1.0.2")),
    )?;
    r.add_endpoint(
        "n-front",
        &EndpointDns::new("ep-b", "b", "beta")
            .alias("www")
            .address(ip("10.1.0.3"))
            .address(ip("fd00:1::3")),
    )?;
    r.add_endpoint(
        "n-back",
        &EndpointDns::new("ep-c", "c", "gamma").address(ip("10.2.0.2")),
    )?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn names_resolve_within_a_network_and_not_across() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let c = f.sandbox("c").await?;
    let outside = f.outside_with(&[]).await?;
    let up = TestUpstream::start(&outside, at(OUTSIDE), zone(&[])).await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;

    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(
        (m.response_code, addrs(&m)),
        (ResponseCode::NoError, vec![ip("10.1.0.3")])
    );
    let (m, _) = Ask::new("BeTa.", RecordType::AAAA).from(&a).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("fd00:1::3")],
        "names are case-insensitive"
    );
    let (m, _) = Ask::new("www.front", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")], "alias.network");
    let (m, _) = Ask::new("alpha", RecordType::AAAA).from(&a).await?;
    assert_eq!(
        (m.response_code, m.answers.len()),
        (ResponseCode::NoError, 0),
        "a known name without an address of the family is NOERROR, no answer"
    );
    assert_eq!(up.seen(), 0, "local names never leave");

    // Across networks: c (on back) does not see front's names, a does not see back's.
    let (m, _) = Ask::new("beta", RecordType::A).from(&c).await?;
    assert!(addrs(&m).is_empty() && m.response_code == ResponseCode::NXDomain);
    let (m, _) = Ask::new("gamma.back", RecordType::A).from(&a).await?;
    assert!(addrs(&m).is_empty() && m.response_code == ResponseCode::NXDomain);
    let (m, _) = Ask::new("gamma", RecordType::A).from(&c).await?;
    assert_eq!(addrs(&m), vec![ip("10.2.0.2")]);

    // Records change the moment an endpoint leaves or joins.
    assert!(f.resolver.remove_endpoint("n-front", "ep-b"));
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert!(addrs(&m).is_empty(), "gone at once after leave");
    f.resolver.add_endpoint(
        "n-back",
        &EndpointDns::new("ep-a2", "a", "alpha").address(ip("10.2.0.9")),
    )?;
    let (m, _) = Ask::new("gamma", RecordType::A).from(&a).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("10.2.0.2")],
        "a joined back: it sees back's names now"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn aliases_return_every_address_rotating() -> Result<()> {
    let f = Fix::new().await?;
    f.resolver.upsert_network("n", &NetworkDns::new("pool"))?;
    for i in 1..=4u8 {
        f.resolver.add_endpoint(
            "n",
            &EndpointDns::new(format!("e{i}"), format!("w{i}"), format!("worker{i}"))
                .alias("workers")
                .address(IpAddr::from([10, 3, 0, i])),
        )?;
    }
    f.resolver
        .add_endpoint("n", &EndpointDns::new("client", "cl", "client"))?;
    let cl = f.sandbox("cl").await?;
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let (m, _) = Ask::new("workers", RecordType::A).from(&cl).await?;
        let mut got = addrs(&m);
        firsts.push(got[0]);
        got.sort();
        assert_eq!(
            got,
            (1..=4u8)
                .map(|i| IpAddr::from([10, 3, 0, i]))
                .collect::<Vec<_>>()
        );
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 4, "every query starts with another address");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn ptr_names_endpoints_and_keeps_our_subnets_home() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let outside = f.outside_with(&[]).await?;
    let up = TestUpstream::start(&outside, at(OUTSIDE), zone(&[])).await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;

    let (m, _) = Ask::new("3.0.1.10.in-addr.arpa.", RecordType::PTR)
        .from(&a)
        .await?;
    let RData::PTR(PTR(name)) = &m.answers[0].data else {
        panic!("a PTR answer: {m}")
    };
    assert_eq!(name.to_ascii(), "beta.front.");
    let v6 = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa.";
    let (m, _) = Ask::new(v6, RecordType::PTR).from(&a).await?;
    assert_eq!(m.answers.len(), 1, "IPv6 reverse names too");
    for unknown in ["77.0.1.10.in-addr.arpa.", "2.0.2.10.in-addr.arpa."] {
        let (m, _) = Ask::new(unknown, RecordType::PTR).from(&a).await?;
        assert_eq!(m.response_code, ResponseCode::NXDomain, "{unknown}");
    }
    assert_eq!(
        up.seen(),
        0,
        "an address inside our subnets is never forwarded"
    );
    let (m, _) = Ask::new("1.2.0.192.in-addr.arpa.", RecordType::PTR)
        .from(&a)
        .await?;
    assert_eq!(m.response_code, ResponseCode::NXDomain);
    assert_eq!(up.seen(), 1, "other addresses are the upstream's to answer");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn forwards_to_the_upstream_and_passes_nxdomain_through() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let outside = f.outside_with(&[]).await?;
    let up = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("example.test", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;

    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(
        (m.response_code, addrs(&m)),
        (ResponseCode::NoError, vec![ip("192.0.2.7")])
    );
    let (m, _) = Ask::new("missing.test", RecordType::A).from(&a).await?;
    assert_eq!(m.response_code, ResponseCode::NXDomain);
    let (m, _) = Ask::new("example.test", RecordType::A)
        .tcp()
        .from(&a)
        .await?;
    assert_eq!(
        addrs(&m),
        vec![ip("192.0.2.7")],
        "a TCP client is forwarded too"
    );
    assert_eq!(up.seen(), 3);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn servfail_from_the_first_upstream_falls_back_to_the_second() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let outside = f.outside_with(&[OUTSIDE_2]).await?;
    let bad = TestUpstream::start(&outside, at(OUTSIDE), Behaviour::ServFail).await?;
    let good = TestUpstream::start(
        &outside,
        at(OUTSIDE_2),
        zone(&[("example.test", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE), IpAddr::V4(OUTSIDE_2)])?;
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(
        (m.response_code, addrs(&m)),
        (ResponseCode::NoError, vec![ip("192.0.2.7")])
    );
    assert_eq!((bad.seen(), good.seen()), (1, 1));
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_dead_first_upstream_adds_no_delay_to_later_queries() -> Result<()> {
    // Hedge after 1 s, give up on an upstream after 5 s: the gaps leave room for a loaded
    // machine while still telling a hedged answer from a timed-out one.
    let f = Fix::with(
        common::test_limits()
            .hedge_delay(Duration::from_secs(1))
            .upstream_timeout(Duration::from_secs(5)),
    )
    .await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let outside = f.outside_with(&[]).await?;
    let good = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("example.test", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(DEAD), IpAddr::V4(OUTSIDE)])?;

    let start = Instant::now();
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    let first = start.elapsed();
    assert_eq!(addrs(&m), vec![ip("192.0.2.7")]);
    assert!(
        first < Duration::from_secs(4),
        "the first query is hedged, not timed out: {first:?}"
    );
    // The dead server was overtaken by the hedge: the resolver now asks the live one first.
    for i in 0..5 {
        let start = Instant::now();
        let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
        let took = start.elapsed();
        assert_eq!(addrs(&m), vec![ip("192.0.2.7")]);
        // Below the hedge delay: this query did not wait for the dead server first.
        assert!(took < Duration::from_millis(900), "query {i} took {took:?}");
    }
    assert_eq!(good.seen(), 6);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_internal_network_forwards_nothing() -> Result<()> {
    let f = Fix::new().await?;
    let r = &f.resolver;
    r.upsert_network(
        "n-int",
        &NetworkDns::new("sealed")
            .internal(true)
            .subnet("10.9.0.0/24".parse()?),
    )?;
    r.upsert_network(
        "n-ext",
        &NetworkDns::new("open").subnet("10.8.0.0/24".parse()?),
    )?;
    r.add_endpoint(
        "n-int",
        &EndpointDns::new("e1", "inside", "inside").address(ip("10.9.0.2")),
    )?;
    r.add_endpoint(
        "n-int",
        &EndpointDns::new("e2", "both", "both").address(ip("10.9.0.3")),
    )?;
    r.add_endpoint(
        "n-ext",
        &EndpointDns::new("e3", "both", "both").address(ip("10.8.0.3")),
    )?;
    let inside = f.sandbox("inside").await?;
    let both = f.sandbox("both").await?;
    let outside = f.outside_with(&[]).await?;
    let up = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("example.test", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;

    for (name, qtype) in [
        ("example.test", RecordType::A),
        ("exfil-secret.example.test", RecordType::TXT),
        ("7.2.0.192.in-addr.arpa.", RecordType::PTR),
    ] {
        for tcp in [false, true] {
            let mut ask = Ask::new(name, qtype);
            ask.tcp = tcp;
            let (m, _) = ask.from(&inside).await?;
            assert_eq!(m.response_code, ResponseCode::Refused, "{name} tcp={tcp}");
        }
    }
    let (m, _) = Ask::new("both", RecordType::A).from(&inside).await?;
    assert_eq!(addrs(&m), vec![ip("10.9.0.3")], "local names still answer");
    assert_eq!(
        up.seen(),
        0,
        "the upstream saw no packet from the internal-only sandbox"
    );

    let (m, _) = Ask::new("example.test", RecordType::A).from(&both).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("192.0.2.7")],
        "internal plus a routed network may forward"
    );
    assert_eq!(up.seen(), 1);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn tcp_queries_are_answered() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let (m, _) = Ask::new("beta", RecordType::A).tcp().from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    let (m, _) = Ask::new("3.0.1.10.in-addr.arpa.", RecordType::PTR)
        .tcp()
        .from(&a)
        .await?;
    assert_eq!(m.answers.len(), 1);
    Ok(())
}

/// Queries that arrive together are taken in batches (up to 32 per receive): a burst of several
/// batches from several sockets, mixing local names, a forwarded name, a cut query and
/// datagrams that get no answer, gets exactly one right answer per query, and nothing else.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_burst_of_queries_gets_one_right_answer_each() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let outside = f.outside_with(&[]).await?;
    let up = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("ext.example", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;

    const SOCKETS: u16 = 3;
    const EACH: u16 = 40;
    let asked: [(&str, RecordType, Vec<IpAddr>); 4] = [
        ("beta", RecordType::A, vec![ip("10.1.0.3")]),
        ("ALPHA", RecordType::A, vec![ip("10.1.0.2")]),
        ("www.front", RecordType::A, vec![ip("10.1.0.3")]),
        ("beta", RecordType::AAAA, vec![ip("fd00:1::3")]),
    ];
    let forwarded = |i: u16| i % 17 == 5;
    let query = |id: u16, name: &str, qtype| {
        let mut m = Ask::new(name, qtype).message();
        m.metadata.id = id;
        m.to_vec()
    };
    // Every datagram of every socket, in the order it is sent.
    let mut plan: Vec<Vec<Vec<u8>>> = Vec::new();
    for s in 0..SOCKETS {
        let mut out = Vec::new();
        for i in 0..EACH {
            let id = s * 1000 + i;
            match i {
                10 => out.push(vec![0u8; 5]),    // shorter than a header: no answer
                20 => out.push(vec![0u8; 5000]), // bigger than we take: no answer
                30 => {
                    let mut cut = query(s * 1000 + 999, "beta", RecordType::A)?;
                    cut.truncate(cut.len() - 3); // FORMERR
                    out.push(cut);
                }
                _ => {}
            }
            out.push(if forwarded(i) {
                query(id, "ext.example", RecordType::A)?
            } else {
                let (name, qtype, _) = &asked[usize::from(i) % asked.len()];
                query(id, name, *qtype)?
            });
        }
        plan.push(out);
    }
    let answers = a
        .run(move || -> Result<Vec<Vec<Vec<u8>>>> {
            let sockets = (0..SOCKETS)
                .map(|_| {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    s.connect(common::RESOLVER)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    Ok(s)
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            // Everything is sent before anything is read, so the queries wait together.
            for (s, out) in sockets.iter().zip(&plan) {
                for d in out {
                    s.send(d)?;
                }
            }
            let mut answers = Vec::new();
            for s in &sockets {
                let mut got = Vec::new();
                // Per socket: one answer per query, and the FORMERR.
                for _ in 0..=EACH {
                    let mut buf = vec![0u8; 4096];
                    let n = s.recv(&mut buf).context("an answer of the burst")?;
                    buf.truncate(n);
                    got.push(buf);
                }
                answers.push(got);
            }
            Ok(answers)
        })
        .await??;
    for (s, got) in (0..SOCKETS).zip(answers) {
        let mut seen = std::collections::BTreeSet::new();
        for raw in got {
            let m = hickory_proto::op::Message::from_vec(&raw)?;
            assert!(seen.insert(m.id), "one answer per query (id {})", m.id);
            let i = m.id.checked_sub(s * 1000).expect("an id of this socket's");
            if i == 999 {
                assert_eq!(m.response_code, ResponseCode::FormErr, "the cut query");
            } else if forwarded(i) {
                assert_eq!(addrs(&m), vec![ip("192.0.2.7")], "forwarded, id {}", m.id);
            } else {
                let (name, _, want) = &asked[usize::from(i) % asked.len()];
                assert_eq!(&addrs(&m), want, "{name}, id {}", m.id);
                assert_eq!(m.queries[0].name().to_ascii(), format!("{name}."));
            }
        }
        assert_eq!(seen.len(), usize::from(EACH) + 1);
    }
    let forwarded_count = (0..EACH).filter(|i| forwarded(*i)).count() * usize::from(SOCKETS);
    assert_eq!(up.seen(), forwarded_count, "only the forwarded names left");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_large_answer_truncates_over_udp_and_completes_over_tcp() -> Result<()> {
    let f = Fix::new().await?;
    f.resolver
        .upsert_network("n", &NetworkDns::new("big").subnet("10.4.0.0/16".parse()?))?;
    let many: Vec<IpAddr> = (0..300u16)
        .map(|i| IpAddr::from([10, 4, (i >> 8) as u8, i as u8]))
        .collect();
    for (i, addr) in many.iter().enumerate() {
        f.resolver.add_endpoint(
            "n",
            &EndpointDns::new(format!("e{i}"), format!("s{i}"), format!("replica{i}"))
                .alias("replicas")
                .address(*addr),
        )?;
    }
    f.resolver
        .add_endpoint("n", &EndpointDns::new("me", "me", "me"))?;
    let me = f.sandbox("me").await?;

    // Local answer.
    for (edns, limit) in [(None, 512), (Some(1232), 1232), (Some(4096), 4096)] {
        let mut ask = Ask::new("replicas", RecordType::A);
        ask.edns = edns;
        let (m, size) = ask.from(&me).await?;
        assert!(size <= limit, "{size} bytes for a client allowing {limit}");
        assert!(m.truncation, "TC set when cut (edns {edns:?})");
        assert!(m.answers.len() < 300);
    }
    let (m, _) = Ask::new("replicas", RecordType::A).tcp().from(&me).await?;
    assert!(!m.truncation);
    let mut got = addrs(&m);
    got.sort();
    assert_eq!(got, many, "TCP gives every address");

    // Forwarded answer: the upstream truncates to us, we fall back to TCP for a TCP client.
    let outside = f.outside_with(&[]).await?;
    let strs: Vec<String> = (0..300u16)
        .map(|i| format!("192.0.{}.{}", 2 + (i >> 8), i & 0xff))
        .collect();
    let refs: Vec<&str> = strs.iter().map(String::as_str).collect();
    let up = TestUpstream::start(&outside, at(OUTSIDE), zone(&[("big.test", &refs)])).await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;
    let (m, size) = Ask::new("big.test", RecordType::A)
        .edns(1232)
        .from(&me)
        .await?;
    assert!(m.truncation && size <= 1232);
    let (m, _) = Ask::new("big.test", RecordType::A).tcp().from(&me).await?;
    assert_eq!((m.truncation, m.answers.len()), (false, 300));
    assert!(
        up.tcp_seen() >= 1,
        "the resolver asked the upstream over TCP"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn the_host_listener_resolves_name_network() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let listen: SocketAddr = "127.0.0.153:53".parse()?;
    let bound = f.resolver.listen_on_host(listen, false).await?;
    assert_eq!(bound, listen);
    let host = f.host.netns().clone();
    for name in ["gamma.back", "GAMMA.back.cnm."] {
        let (m, _) = Ask::new(name, RecordType::A)
            .server(bound)
            .from(&host)
            .await?;
        assert_eq!(addrs(&m), vec![ip("10.2.0.2")], "{name}");
    }
    let (m, _) = Ask::new("beta.front.cnm", RecordType::A)
        .server(bound)
        .tcp()
        .from(&host)
        .await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    let (m, _) = Ask::new("nobody.front.cnm", RecordType::A)
        .server(bound)
        .from(&host)
        .await?;
    assert_eq!(m.response_code, ResponseCode::NXDomain);
    let (m, _) = Ask::new("example.com", RecordType::A)
        .server(bound)
        .from(&host)
        .await?;
    assert_eq!(
        m.response_code,
        ResponseCode::Refused,
        "the host listener forwards nothing"
    );
    let (m, _) = Ask::new("2.0.2.10.in-addr.arpa.", RecordType::PTR)
        .server(bound)
        .from(&host)
        .await?;
    assert_eq!(m.answers.len(), 1);

    let e = f
        .resolver
        .listen_on_host("198.51.100.1:53".parse()?, false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a loopback address"), "{e}");
    assert!(f.resolver.stop_host_listener(bound));
    Ask::new("gamma.back", RecordType::A)
        .server(bound)
        .timeout(Duration::from_millis(300))
        .from(&host)
        .await
        .expect_err("stopped");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn loopback_upstreams_are_asked_from_the_host_namespace() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    // systemd-resolved's stub address, inside the (throwaway) host namespace only.
    let stub: SocketAddr = "127.0.0.53:53".parse()?;
    let up = TestUpstream::start(
        f.host.netns(),
        stub,
        zone(&[("example.test", &["192.0.2.8"])]),
    )
    .await?;
    f.set_upstreams(&[stub.ip()])?;
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("192.0.2.8")]);
    assert_eq!(up.seen(), 1);

    // The resolv.conf is followed: the next query goes where the new file says.
    let outside = f.outside_with(&[]).await?;
    let other = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("example.test", &["192.0.2.9"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(OUTSIDE)])?;
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("192.0.2.9")]);
    assert_eq!((up.seen(), other.seen()), (1, 1));
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn sandbox_servers_override_and_loopback_ones_are_the_sandboxs_own() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.host.sandbox_ns("a").await?;
    // A server on the sandbox's own loopback, as `--dns 127.0.0.1` means in Docker.
    let own: SocketAddr = "127.0.0.1:53".parse()?;
    let up = TestUpstream::start(&a, own, zone(&[("example.test", &["192.0.2.10"])])).await?;
    let mut dns = SandboxDns::default();
    dns.servers = vec![own, "127.0.0.11:53".parse()?];
    f.resolver.attach_sandbox("a", &a, dns).await?;
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("192.0.2.10")]);
    assert_eq!(up.seen(), 1);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn the_resolver_never_asks_itself() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let listen = f
        .resolver
        .listen_on_host("127.0.0.153:53".parse()?, false)
        .await?;
    f.set_upstreams(&[ip("127.0.0.11"), listen.ip()])?;
    let before = f.resolver.stats();
    let (m, _) = Ask::new("example.test", RecordType::A).from(&a).await?;
    assert_eq!(m.response_code, ResponseCode::ServFail, "no upstream left");
    let after = f.resolver.stats();
    assert_eq!(
        after.queries - before.queries,
        1,
        "exactly the client's query, no loop"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn beyond_the_forwarding_bound_the_answer_is_refused() -> Result<()> {
    let f = Fix::with(common::test_limits().forward_concurrency_per_listener(1)).await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let b = f.sandbox("b").await?;
    let outside = f.outside_with(&[]).await?;
    let _up = TestUpstream::start(
        &outside,
        at(OUTSIDE),
        zone(&[("example.test", &["192.0.2.7"])]),
    )
    .await?;
    f.set_upstreams(&[IpAddr::V4(DEAD), IpAddr::V4(OUTSIDE)])?;
    // The first query waits on the dead upstream (hedged after 300 ms) and holds a's one slot;
    // the second, sent right after it from the same thread (so it arrives second), is refused.
    let slow = Ask::new("example.test", RecordType::A).message();
    let second = Ask::new("other.test", RecordType::A).message();
    let (slow_bytes, second_bytes) = (slow.to_vec()?, second.to_vec()?);
    let (first_answer, second_answer) = a
        .run(move || -> std::io::Result<(Vec<u8>, Vec<u8>)> {
            let open = || -> std::io::Result<std::net::UdpSocket> {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.connect(common::RESOLVER)?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                Ok(s)
            };
            let (s1, s2) = (open()?, open()?);
            s1.send(&slow_bytes)?;
            s2.send(&second_bytes)?;
            let mut buf = vec![0u8; 4096];
            let n = s2.recv(&mut buf)?;
            let second = buf[..n].to_vec();
            let n = s1.recv(&mut buf)?;
            Ok((buf[..n].to_vec(), second))
        })
        .await??;
    let m = hickory_proto::op::Message::from_vec(&second_answer)?;
    assert_eq!(m.response_code, ResponseCode::Refused);
    assert_eq!(f.resolver.stats().refused_busy, 1);
    let m = hickory_proto::op::Message::from_vec(&first_answer)?;
    assert_eq!(
        addrs(&m),
        vec![ip("192.0.2.7")],
        "the first one was answered"
    );
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("10.1.0.3")],
        "local names answer regardless"
    );
    let (m, _) = Ask::new("example.test", RecordType::A).from(&b).await?;
    assert_eq!(
        addrs(&m),
        vec![ip("192.0.2.7")],
        "another sandbox has its own slots"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn resolvers_are_reachable_only_from_their_own_sandbox() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let c = f.host.sandbox_ns("c").await?; // no listener
    // A veth between a and c, as if on one network: c can reach a's addresses, not its resolver.
    let nl = cnm_sandbox::Netlink::connect(&a).await?;
    let mut spec = cnm_sandbox::LinkSpec::new(
        "eth0".parse()?,
        cnm_sandbox::LinkKind::Veth {
            peer_name: "eth0".parse()?,
            peer_ns: Some(c.clone()),
            peer_mac: None,
            peer_mtu: None,
            peer_up: true,
        },
    );
    spec.up = true;
    nl.create_link(&spec).await?;
    let idx = nl.link("eth0").await?.expect("created").index;
    nl.add_address(idx, "10.77.0.1/24".parse()?).await?;
    let nlc = cnm_sandbox::Netlink::connect(&c).await?;
    let idx = nlc.link("eth0").await?.expect("created").index;
    nlc.add_address(idx, "10.77.0.2/24".parse()?).await?;

    let short = Duration::from_millis(400);
    for tcp in [false, true] {
        let mut ask = Ask::new("beta", RecordType::A)
            .server("10.77.0.1:53".parse()?)
            .timeout(short);
        ask.tcp = tcp;
        ask.from(&c)
            .await
            .expect_err("a's resolver is not on its interfaces");
        let mut ask = Ask::new("beta", RecordType::A).timeout(short);
        ask.tcp = tcp;
        ask.from(&c)
            .await
            .expect_err("c's 127.0.0.11 is c's own, and c has no listener");
    }
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);

    // Detach: the listener is gone.
    assert!(f.resolver.detach_sandbox("a"));
    Ask::new("beta", RecordType::A)
        .timeout(short)
        .from(&a)
        .await
        .expect_err("detached");
    assert_eq!(f.resolver.stats().sandbox_listeners, 0);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn attaching_again_is_idempotent_and_a_new_namespace_replaces_the_listener() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    f.resolver
        .attach_sandbox("a", &a, SandboxDns::default())
        .await?;
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    // The sandbox is recreated in a new namespace (a restart): same id, new listener.
    let a2 = f.host.sandbox_ns("a-again").await?;
    f.resolver
        .attach_sandbox("a", &a2, SandboxDns::default())
        .await?;
    let (m, _) = Ask::new("beta", RecordType::A).from(&a2).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    Ask::new("beta", RecordType::A)
        .timeout(Duration::from_millis(300))
        .from(&a)
        .await
        .expect_err("the old namespace's listener stopped");
    assert_eq!(f.resolver.stats().sandbox_listeners, 1);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn sockets_bound_ahead_serve_their_namespace_and_others_are_not_used() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    // Bare namespaces (loopback up, no listener).
    let a = f.host.sandbox_ns("a").await?;
    let b = f.host.sandbox_ns("b").await?;
    // Bound ahead (as a join does while its driver works): nothing answers yet.
    let bound = Resolver::bind_sandbox(&a).await?;
    let short = Duration::from_millis(300);
    Ask::new("beta", RecordType::A)
        .timeout(short)
        .from(&a)
        .await
        .expect_err("bound, not served yet");
    f.resolver
        .attach_sandbox_bound("a", &a, Some(bound), SandboxDns::default())
        .await?;
    let (m, _) = Ask::new("beta", RecordType::A).from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    let (m, _) = Ask::new("beta", RecordType::A).tcp().from(&a).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    // Sockets bound in another namespace are not used: b's listener is bound in b, and c,
    // whose sockets were handed over by mistake, answers nothing.
    let c = f.host.sandbox_ns("c").await?;
    let of_c = Resolver::bind_sandbox(&c).await?;
    f.resolver
        .attach_sandbox_bound("b", &b, Some(of_c), SandboxDns::default())
        .await?;
    let (m, _) = Ask::new("beta", RecordType::A).from(&b).await?;
    assert_eq!(addrs(&m), vec![ip("10.1.0.3")]);
    Ask::new("beta", RecordType::A)
        .timeout(short)
        .from(&c)
        .await
        .expect_err("c's sockets were dropped unused");
    assert_eq!(f.resolver.stats().sandbox_listeners, 2);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn dig_resolves_through_the_sandbox_resolver() -> Result<()> {
    let f = Fix::new().await?;
    two_networks(&f)?;
    let a = f.sandbox("a").await?;
    let dig = |args: &'static [&'static str]| {
        let a = a.clone();
        async move {
            a.run(move || std::process::Command::new("dig").args(args).output())
                .await?
                .map_err(anyhow::Error::from)
        }
    };
    let out = dig(&["@127.0.0.11", "+short", "+tries=1", "+time=2", "beta.front"]).await?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10.1.0.3\n");
    let out = dig(&[
        "@127.0.0.11",
        "+tcp",
        "+short",
        "+tries=1",
        "+time=2",
        "www",
        "AAAA",
    ])
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fd00:1::3\n");
    let out = dig(&[
        "@127.0.0.11",
        "+short",
        "+tries=1",
        "+time=2",
        "-x",
        "10.1.0.2",
    ])
    .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alpha.front.\n");
    let out = dig(&["@127.0.0.11", "+tries=1", "+time=2", "gamma.back"]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status: SERVFAIL") || text.contains("status: NXDOMAIN"),
        "{text}"
    );
    Ok(())
}
