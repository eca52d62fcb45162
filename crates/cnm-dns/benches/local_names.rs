//! Benchmark harness of cnm-dns: queries per second and p50/p99 latency for local names, and
//! the cost of attaching a sandbox's listener. Needs root (it builds throwaway namespaces).
//!
//! ```text
//! cargo bench -p cnm-dns --bench local_names                     # built-in load generator
//! cargo bench -p cnm-dns --bench local_names -- --dnsperf         # dnsperf too, if installed
//! cargo bench -p cnm-dns --bench local_names -- --names 1000 --seconds 5 --clients 2 --attach 200
//! ```
//!
//! [`local_names`] and [`attach_cost`] are the functions `cargo xtask bench` is meant to call
//! (side by side with aardvark-dns serving the same records through dnsperf).

#![allow(clippy::print_stdout)] // a benchmark reports to its user

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cnm_dns::{EndpointDns, NetworkDns, Resolver, ResolverConfig, SandboxDns};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// What to measure.
#[derive(Clone, Debug)]
struct Opts {
    names: usize,
    seconds: u64,
    clients: usize,
    attach: usize,
    dnsperf: bool,
}

/// Figures of a query run.
#[derive(Debug)]
struct QueryReport {
    queries: usize,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Figures of attaching listeners.
#[derive(Debug)]
struct AttachReport {
    p50_us: f64,
    p99_us: f64,
    rss_kib_per_sandbox: f64,
    fds_per_sandbox: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A resolver on a throwaway host with `names` endpoints on one network, and a client sandbox.
async fn setup(host: &TestHost, names: usize) -> Result<(Resolver, NetNs)> {
    let resolver = Resolver::new(
        ResolverConfig::new(host.netns().clone())
            .resolv_conf(host.run_dir().join("none"))
            .fallback_servers(Vec::new()),
    )?;
    resolver.upsert_network(
        "bench",
        &NetworkDns::new("bench").subnet("10.64.0.0/10".parse()?),
    )?;
    for i in 0..names {
        let addr = IpAddr::from([10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        resolver.add_endpoint(
            "bench",
            &EndpointDns::new(format!("e{i}"), format!("s{i}"), format!("c{i}")).address(addr),
        )?;
    }
    resolver.add_endpoint("bench", &EndpointDns::new("client", "client", "client"))?;
    let ns = host.sandbox_ns("client").await?;
    resolver
        .attach_sandbox("client", &ns, SandboxDns::default())
        .await?;
    Ok((resolver, ns))
}

/// Closed-loop clients inside the sandbox asking A for random local names at 127.0.0.11.
async fn local_names(
    ns: &NetNs,
    names: usize,
    seconds: u64,
    clients: usize,
) -> Result<QueryReport> {
    let start = Instant::now();
    let mut runs = Vec::new();
    for c in 0..clients {
        let ns = ns.clone();
        runs.push(tokio::spawn(async move {
            ns.run(move || client(c, names, Duration::from_secs(seconds)))
                .await?
        }));
    }
    let mut latencies = Vec::new();
    for r in runs {
        latencies.extend(r.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(QueryReport {
        queries: latencies.len(),
        qps: latencies.len() as f64 / wall,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
    })
}

fn client(seed: usize, names: usize, for_how_long: Duration) -> Result<Vec<f64>> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(SocketAddr::from(([127, 0, 0, 11], 53)))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let end = Instant::now() + for_how_long;
    let mut i = seed * 7919;
    while Instant::now() < end {
        i = (i + 104_729) % names.max(1);
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(format!("c{i}"))?,
            RecordType::A,
        ));
        let bytes = q.to_vec()?;
        let t = Instant::now();
        s.send(&bytes)?;
        let n = s.recv(&mut buf)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        let m = Message::from_vec(&buf[..n])?;
        if m.answers.len() != 1 {
            bail!("c{i}: expected one answer, got {m}");
        }
    }
    Ok(out)
}

fn rss_kib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Attaches `n` sandboxes' listeners (their namespaces made beforehand) and times each attach.
async fn attach_cost(host: &TestHost, resolver: &Resolver, n: usize) -> Result<AttachReport> {
    let mut namespaces = Vec::new();
    for i in 0..n {
        namespaces.push(host.sandbox_ns(&format!("attach{i}")).await?);
    }
    let (rss0, fds0) = (rss_kib()?, fds()?);
    let mut times = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let t = Instant::now();
        resolver
            .attach_sandbox(&format!("attach{i}"), ns, SandboxDns::default())
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (rss1, fds1) = (rss_kib()?, fds()?);
    times.sort_by(f64::total_cmp);
    Ok(AttachReport {
        p50_us: percentile(&times, 50.0),
        p99_us: percentile(&times, 99.0),
        rss_kib_per_sandbox: (rss1 - rss0) / n as f64,
        fds_per_sandbox: (fds1 - fds0) as f64 / n as f64,
    })
}

/// dnsperf against the sandbox's resolver, from inside the sandbox: (queries/s, mean latency µs).
async fn dnsperf(
    ns: &NetNs,
    names: usize,
    seconds: u64,
    dir: &std::path::Path,
) -> Result<(f64, f64)> {
    let file = dir.join("dnsperf-queries");
    let text: String = (0..names).map(|i| format!("c{i} A\n")).collect();
    std::fs::write(&file, text)?;
    let args = vec![
        "-s".to_owned(),
        "127.0.0.11".to_owned(),
        "-d".to_owned(),
        file.display().to_string(),
        "-l".to_owned(),
        seconds.to_string(),
        "-c".to_owned(),
        "4".to_owned(),
        "-q".to_owned(),
        "64".to_owned(),
    ];
    let out = ns
        .run(move || std::process::Command::new("dnsperf").args(&args).output())
        .await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dnsperf failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |label: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .with_context(|| format!("no {label:?} in dnsperf output:\n{text}"))?;
        Ok(line
            .split_whitespace()
            .nth_back(0)
            .context("value")?
            .parse()?)
    };
    let qps = field("Queries per second:")?;
    let avg = text
        .lines()
        .find(|l| l.trim_start().starts_with("Average Latency (s):"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok())
        .context("no average latency in dnsperf output")?;
    Ok((qps, avg * 1e6))
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        names: 1000,
        seconds: 3,
        clients: 1,
        attach: 100,
        dnsperf: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Result<u64> {
            args.next()
                .with_context(|| format!("{what} needs a value"))?
                .parse()
                .with_context(|| format!("{what} takes a number"))
        };
        match a.as_str() {
            "--names" => o.names = num("--names")? as usize,
            "--seconds" => o.seconds = num("--seconds")?,
            "--clients" => o.clients = num("--clients")? as usize,
            "--attach" => o.attach = num("--attach")? as usize,
            "--dnsperf" => o.dnsperf = true,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_opts()?;
    let host = TestHost::new().await?;
    let (resolver, ns) = setup(&host, o.names).await?;
    let r = local_names(&ns, o.names, o.seconds, o.clients).await?;
    println!(
        "local names ({} names, {} client(s), closed loop, UDP): {} queries, {:.0} q/s, p50 {:.0} µs, p99 {:.0} µs",
        o.names, o.clients, r.queries, r.qps, r.p50_us, r.p99_us
    );
    if o.dnsperf {
        let (qps, avg) = dnsperf(&ns, o.names, o.seconds, host.run_dir()).await?;
        println!("dnsperf (-c 4 -q 64): {qps:.0} q/s, mean latency {avg:.0} µs");
    }
    let a = attach_cost(&host, &resolver, o.attach).await?;
    println!(
        "attach listener ({} sandboxes): p50 {:.0} µs, p99 {:.0} µs, {:.1} KiB RSS and {:.1} fds per sandbox",
        o.attach, a.p50_us, a.p99_us, a.rss_kib_per_sandbox, a.fds_per_sandbox
    );
    Ok(())
}
