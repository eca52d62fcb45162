//! Benchmark harness of cnm-dns: queries per second and p50/p99 latency for local names, and
//! the cost of attaching a sandbox's listener. Needs root (it builds throwaway namespaces).
//!
//! ```text
//! cargo bench -p cnm-dns --bench local_names                     # built-in load generator
//! cargo bench -p cnm-dns --bench local_names -- --dnsperf         # dnsperf too, if installed
//! cargo bench -p cnm-dns --bench local_names -- --names 1000 --seconds 5 --clients 2 --attach 200
//! cargo bench -p cnm-dns --bench local_names -- --dnsperf --aardvark /usr/lib/podman/aardvark-dns --rounds 3 --rate 20000 --server-cpu 0.25
//! cargo xtask bench dns                                           # the last one, in a private mount namespace
//! ```
//!
//! With `--aardvark PATH`, aardvark-dns (what netavark starts for podman) serves the same
//! records from a config directory in its own format, in a throwaway namespace, bound to the
//! network's gateway address as netavark binds it; the same load (the closed-loop client and
//! dnsperf) runs against both, in turn, `--rounds` times; the summary is the median of the
//! per-round ratios, and beside each dnsperf rate the server's CPU time per answered query
//! (from /proc), which a loaded machine skews far less than the rate.
//!
//! On two cores an uncapped full-load run measures dnsperf as much as the server (each needs
//! most of a core). So dnsperf runs at full load a second time with each server capped at
//! `--server-cpu` cores (default 0.25; 0 skips it) by a throwaway cgroup's CPU quota (the
//! resolver's threads for cnm, the whole process for aardvark-dns), the server and dnsperf
//! both at the largest CPU weight so that other jobs on a shared machine do not starve them
//! below the cap: then the server saturates first (the output says in what share of the
//! quota's periods it was throttled) and the rate ratio is the servers' ratio. The cgroups are
//! removed after each run. At a fixed rate (`--rate`), the server and dnsperf run under
//! SCHED_FIFO (`chrt`, undone after the run), so that the latency is the server's and not the
//! wait for a core that other jobs of a shared machine hold.
//!
//! aardvark-dns answers only clients whose source address is a
//! container of the network, so the client asks from such an address. The forwarded-query
//! figure asks cnm's resolver for names it forwards to an upstream the bench runs on the
//! host namespace's loopback, next to the same questions asked of that upstream directly.

#![allow(clippy::print_stdout)] // a benchmark reports to its user

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cnm_dns::{EndpointDns, NetworkDns, Resolver, ResolverConfig, SandboxDns};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{Behaviour, TestUpstream};

/// What to measure.
#[derive(Clone, Debug)]
struct Opts {
    names: usize,
    seconds: u64,
    clients: usize,
    attach: usize,
    dnsperf: bool,
    aardvark: Option<std::path::PathBuf>,
    rounds: usize,
    /// dnsperf also at this fixed rate (`-Q`), below saturation: the latency a client sees
    /// when the server keeps up, which is how a latency target is stated.
    rate: Option<u64>,
    /// dnsperf at full load again with each server capped at this many cores (a cgroup's CPU
    /// quota), so that the server saturates before dnsperf does; 0: not run.
    server_cpu: f64,
}

/// Closed-loop figures.
#[derive(Debug)]
struct QueryReport {
    queries: usize,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// What attaching listeners costs.
#[derive(Debug)]
struct AttachReport {
    p50_us: f64,
    p99_us: f64,
    rss_kib_per_sandbox: f64,
    fds_per_sandbox: f64,
}

/// dnsperf's figures: its rate, and the latency of every answered query (from `-v`); and the
/// CPU time the server spent per answered query, which the load of a shared machine does not
/// skew as it skews the rate (a starved server answers fewer queries, not dearer ones).
#[derive(Debug)]
struct DnsperfReport {
    qps: f64,
    lost: usize,
    p50_us: f64,
    p99_us: f64,
    server_cpu_us: f64,
    /// With a CPU cap: the quota's periods and how many of them throttled the server (most,
    /// when the server is the bottleneck).
    throttled: Option<(u64, u64)>,
}

/// A DNS server to measure and where to ask it from.
#[derive(Clone, Debug)]
struct Target {
    ns: NetNs,
    server: SocketAddr,
    /// The client's source address (aardvark-dns answers known containers only).
    source: IpAddr,
    /// The process serving it, whose CPU time is measured.
    pid: u32,
    /// What a CPU cap holds to cap this server.
    held: Held,
}

/// The CPU time (user + system, every thread) process `pid` has used, in µs.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) end with `)`; utime and stime
    // are fields 14 and 15, in USER_HZ ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 * 10_000.0)
}

/// What a CPU cap holds: a process with all its threads (aardvark-dns), or some threads of
/// this process (cnm's resolver threads, which live in the bench's own process).
#[derive(Clone, Debug)]
enum Held {
    Process(u32),
    Threads(Vec<u32>),
}

/// Where the cpu controller is mounted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Hierarchy {
    /// cgroup v1's `cpu` hierarchy (`tasks` moves one thread; `cpu.cfs_quota_us`).
    V1,
    /// cgroup v2 with the cpu controller (`cpu.max`; threads move only inside a threaded
    /// subtree, so this process is moved into a domain-threaded parent for the run).
    V2,
}

const CGROUP_V1_CPU: &str = "/sys/fs/cgroup/cpu";
const CGROUP_V2: &str = "/sys/fs/cgroup";
/// The quota's period: short, so that a capped server is throttled in slices of a few
/// milliseconds rather than 50 ms pauses that dnsperf would count as lost queries.
const CAP_PERIOD_US: u64 = 10_000;
/// The largest CPU weight (v1 `cpu.shares`, v2 `cpu.weight`): a capped server and dnsperf
/// get their share of a machine loaded by other jobs, so that the cap, not the load, bounds
/// the server (for the few seconds of a run).
const WEIGHT_V1: &str = "262144";
const WEIGHT_V2: &str = "10000";

/// A throwaway cgroup capping a server's CPU time at `cores` for as long as it lives; dropping
/// it moves everything back where it was and removes the cgroup.
struct CpuCap {
    hierarchy: Hierarchy,
    /// The cgroup of the bench's own process (v2, threads) or of the server (everything else).
    root: std::path::PathBuf,
    /// The capped cgroup (`root` itself for v1 and for a v2 process).
    capped: std::path::PathBuf,
    held: Held,
    /// Where each moved thread or process was: (id, cgroup directory).
    origin: Vec<(u32, std::path::PathBuf)>,
}

impl CpuCap {
    /// Which hierarchy has the cpu controller here, if any.
    fn hierarchy() -> Option<Hierarchy> {
        let v2 = std::fs::read_to_string(format!("{CGROUP_V2}/cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        if v2 {
            Some(Hierarchy::V2)
        } else if std::path::Path::new(CGROUP_V1_CPU)
            .join("cpu.cfs_quota_us")
            .is_file()
        {
            Some(Hierarchy::V1)
        } else {
            None
        }
    }

    /// How the cap is made, for the report.
    fn method(cores: f64) -> String {
        let quota = (cores * CAP_PERIOD_US as f64).round() as u64;
        match Self::hierarchy() {
            Some(Hierarchy::V1) => format!(
                "each server's threads in a throwaway cgroup v1 cpu group, cpu.cfs_quota_us {quota} per {CAP_PERIOD_US} µs ({cores} core); server and dnsperf each at cpu.shares {WEIGHT_V1} against the machine's other load"
            ),
            Some(Hierarchy::V2) => format!(
                "each server's threads in a throwaway cgroup v2 group, cpu.max {quota} {CAP_PERIOD_US} ({cores} core); server and dnsperf each at cpu.weight {WEIGHT_V2} against the machine's other load"
            ),
            None => "no cpu cgroup controller on this host".to_owned(),
        }
    }

    /// The cgroup directory (relative to the hierarchy's mount) `id` is in: a line
    /// `N:cpu,...:/path` (v1) or `0::/path` (v2) of `/proc/.../cgroup`.
    fn cgroup_of(hierarchy: Hierarchy, proc_dir: &str) -> Result<std::path::PathBuf> {
        let text = std::fs::read_to_string(format!("{proc_dir}/cgroup"))?;
        let rel = text
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                let ours = match hierarchy {
                    Hierarchy::V1 => ctrl.split(',').any(|c| c == "cpu"),
                    Hierarchy::V2 => id == "0" && ctrl.is_empty(),
                };
                ours.then(|| path.trim_start_matches('/').to_owned())
            })
            .with_context(|| format!("no cpu cgroup in {proc_dir}/cgroup"))?;
        let mount = match hierarchy {
            Hierarchy::V1 => CGROUP_V1_CPU,
            Hierarchy::V2 => CGROUP_V2,
        };
        Ok(std::path::Path::new(mount).join(rel))
    }

    fn write(path: &std::path::Path, value: &str) -> Result<()> {
        std::fs::write(path, value)
            .with_context(|| format!("write {value:?} to {}", path.display()))
    }

    /// Gives `held` the largest CPU weight and, with `cores`, caps it at that many cores (0.5:
    /// half a core), until the returned value is dropped.
    fn new(held: Held, cores: Option<f64>) -> Result<Self> {
        let hierarchy = Self::hierarchy().context(
            "--server-cpu needs the cpu cgroup controller (cgroup v2, or v1's cpu hierarchy)",
        )?;
        let quota = cores.map(|c| ((c * CAP_PERIOD_US as f64).round() as u64).max(1000));
        let (quota_v1, max_v2) = match quota {
            Some(q) => (q.to_string(), format!("{q} {CAP_PERIOD_US}")),
            None => ("-1".to_owned(), format!("max {CAP_PERIOD_US}")),
        };
        let name = format!(
            "cnm-dns-bench-{}-{}",
            std::process::id(),
            match &held {
                Held::Process(p) => *p,
                Held::Threads(t) => t.first().copied().unwrap_or(0),
            }
        );
        let root = match hierarchy {
            Hierarchy::V1 => std::path::Path::new(CGROUP_V1_CPU).join(&name),
            Hierarchy::V2 => std::path::Path::new(CGROUP_V2).join(&name),
        };
        std::fs::create_dir(&root).with_context(|| format!("create {}", root.display()))?;
        let mut cap = CpuCap {
            hierarchy,
            capped: root.clone(),
            root,
            held: held.clone(),
            origin: Vec::new(),
        };
        match (hierarchy, &held) {
            (Hierarchy::V1, _) => {
                Self::write(
                    &cap.root.join("cpu.cfs_period_us"),
                    &CAP_PERIOD_US.to_string(),
                )?;
                Self::write(&cap.root.join("cpu.cfs_quota_us"), &quota_v1)?;
                Self::write(&cap.root.join("cpu.shares"), WEIGHT_V1)?;
                let (file, ids, proc_dir): (_, Vec<u32>, fn(u32) -> String) = match &held {
                    Held::Process(p) => ("cgroup.procs", vec![*p], |p| format!("/proc/{p}")),
                    Held::Threads(t) => ("tasks", t.clone(), |t| format!("/proc/self/task/{t}")),
                };
                for id in ids {
                    let was = Self::cgroup_of(hierarchy, &proc_dir(id))?;
                    Self::write(&cap.root.join(file), &id.to_string())?;
                    cap.origin.push((id, was));
                }
            }
            (Hierarchy::V2, Held::Process(p)) => {
                Self::write(&cap.root.join("cpu.max"), &max_v2)?;
                Self::write(&cap.root.join("cpu.weight"), WEIGHT_V2)?;
                let was = Self::cgroup_of(hierarchy, &format!("/proc/{p}"))?;
                Self::write(&cap.root.join("cgroup.procs"), &p.to_string())?;
                cap.origin.push((*p, was));
            }
            (Hierarchy::V2, Held::Threads(tids)) => {
                // Threads move only between the cgroups of one threaded subtree: the root
                // (domain threaded) takes this whole process, its threaded child the threads.
                cap.capped = cap.root.join("server");
                std::fs::create_dir(&cap.capped)?;
                Self::write(&cap.capped.join("cgroup.type"), "threaded")?;
                let me = std::process::id();
                let was = Self::cgroup_of(hierarchy, "/proc/self")?;
                Self::write(&cap.root.join("cgroup.procs"), &me.to_string())?;
                cap.origin.push((me, was));
                Self::write(&cap.root.join("cgroup.subtree_control"), "+cpu")?;
                Self::write(&cap.root.join("cpu.weight"), WEIGHT_V2)?;
                Self::write(&cap.capped.join("cpu.max"), &max_v2)?;
                Self::write(&cap.capped.join("cpu.weight"), WEIGHT_V2)?;
                for t in tids {
                    Self::write(&cap.capped.join("cgroup.threads"), &t.to_string())?;
                }
            }
        }
        Ok(cap)
    }

    /// Periods so far, and how many of them the cap throttled (the server wanted more).
    fn throttled(&self) -> Result<(u64, u64)> {
        let stat = std::fs::read_to_string(self.capped.join("cpu.stat"))?;
        let get = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
                .with_context(|| format!("no {k} in cpu.stat"))
        };
        Ok((get("nr_periods ")?, get("nr_throttled ")?))
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Everything back where it was (best effort: a process that died is gone anyway),
        // then the cgroups, children first.
        match (self.hierarchy, &self.held) {
            (Hierarchy::V1, Held::Threads(_)) => {
                for (t, was) in &self.origin {
                    let _ = std::fs::write(was.join("tasks"), t.to_string());
                }
            }
            (Hierarchy::V2, Held::Threads(tids)) => {
                for t in tids {
                    let _ = std::fs::write(self.root.join("cgroup.threads"), t.to_string());
                }
                for (p, was) in &self.origin {
                    let _ = std::fs::write(was.join("cgroup.procs"), p.to_string());
                }
            }
            (_, Held::Process(_)) => {
                for (p, was) in &self.origin {
                    let _ = std::fs::write(was.join("cgroup.procs"), p.to_string());
                }
            }
        }
        if self.capped != self.root {
            let _ = std::fs::remove_dir(&self.capped);
        }
        if let Err(e) = std::fs::remove_dir(&self.root) {
            println!("warning: could not remove {}: {e}", self.root.display());
        }
    }
}

/// The real-time priority of a server and dnsperf in fixed-rate runs (SCHED_FIFO; the
/// kernel's RT throttling, 95% of each second by default, still leaves the machine the rest).
const REALTIME_PRIORITY: &str = "10";

/// A server under SCHED_FIFO (through `chrt`) for as long as this lives; dropping it puts it
/// back under SCHED_OTHER.
struct Realtime(Vec<Vec<String>>);

impl Realtime {
    fn new(held: &Held) -> Result<Self> {
        let targets: Vec<Vec<String>> = match held {
            Held::Process(p) => vec![vec!["-a".to_owned(), p.to_string()]],
            Held::Threads(tids) => tids.iter().map(|t| vec![t.to_string()]).collect(),
        };
        let rt = Realtime(targets);
        for t in &rt.0 {
            rt.chrt(&["-f", "-p", REALTIME_PRIORITY], t)?;
        }
        Ok(rt)
    }

    fn chrt(&self, how: &[&str], target: &[String]) -> Result<()> {
        // `-a` (every thread of a process) goes before the policy.
        let (all, id) = match target {
            [a, id] => (vec![a.as_str()], id),
            [id] => (vec![], id),
            _ => bail!("a chrt target is [-a] ID"),
        };
        let ok = std::process::Command::new("chrt")
            .args(all)
            .args(how)
            .arg(id)
            .status()
            .context("run chrt (util-linux)")?
            .success();
        if !ok {
            bail!("chrt {how:?} {id} failed");
        }
        Ok(())
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        for t in &self.0 {
            if let Err(e) = self.chrt(&["-o", "-p", "0"], t) {
                println!("warning: {e:#}");
            }
        }
    }
}

/// The threads of this process whose name starts with `prefix` (the resolver's threads).
fn threads_named(prefix: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task")? {
        let e = e?;
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix)
            && let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok())
        {
            out.push(tid);
        }
    }
    if out.is_empty() {
        bail!("no thread named {prefix}* in this process");
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The address of name `c{i}` (10.64.0.0/10, skipping .0 and the gateway .1).
fn addr_of(i: usize) -> IpAddr {
    let n = i + 2;
    IpAddr::from([10, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8])
}

/// A resolver with `names` endpoints on one network and a client sandbox attached.
async fn setup(host: &TestHost, names: usize) -> Result<(Resolver, NetNs)> {
    let resolver = Resolver::new(
        ResolverConfig::new(host.netns().clone())
            .resolv_conf(host.run_dir().join("bench-resolv.conf"))
            .fallback_servers(Vec::new()),
    )?;
    resolver.upsert_network(
        "bench",
        &NetworkDns::new("bench").subnet("10.64.0.0/10".parse()?),
    )?;
    for i in 0..names {
        resolver.add_endpoint(
            "bench",
            &EndpointDns::new(format!("e{i}"), format!("s{i}"), format!("c{i}"))
                .address(addr_of(i)),
        )?;
    }
    resolver.add_endpoint("bench", &EndpointDns::new("client", "client", "client"))?;
    let ns = host.sandbox_ns("client").await?;
    resolver
        .attach_sandbox("client", &ns, SandboxDns::default())
        .await?;
    Ok((resolver, ns))
}

/// `clients` closed-loop clients for `seconds`, asking `name(i)` (A) over UDP.
async fn closed_loop(
    t: &Target,
    names: usize,
    seconds: u64,
    clients: usize,
    name: fn(usize) -> String,
) -> Result<QueryReport> {
    let start = Instant::now();
    let mut runs = Vec::new();
    for c in 0..clients {
        let t = t.clone();
        runs.push(tokio::spawn(async move {
            t.ns.run(move || {
                client(
                    c,
                    names,
                    Duration::from_secs(seconds),
                    t.server,
                    t.source,
                    name,
                )
            })
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

/// One closed-loop client (blocking, on a namespace thread); per-query latencies in µs.
fn client(
    seed: usize,
    names: usize,
    for_how_long: Duration,
    server: SocketAddr,
    source: IpAddr,
    name: fn(usize) -> String,
) -> Result<Vec<f64>> {
    let s = UdpSocket::bind(SocketAddr::new(source, 0))?;
    s.connect(server)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    let end = Instant::now() + for_how_long;
    let mut i = seed * 7919;
    while Instant::now() < end {
        i = (i + 104_729) % names.max(1);
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name(i))?, RecordType::A));
        let bytes = q.to_vec()?;
        let t = Instant::now();
        s.send(&bytes)?;
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("no answer from {server} for {}", name(i)))?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
        let m = Message::from_vec(&buf[..n])?;
        if m.answers.len() != 1 {
            bail!("{}: expected one answer, got {m}", name(i));
        }
    }
    Ok(out)
}

fn local_name(i: usize) -> String {
    format!("c{i}")
}

fn forwarded_name(i: usize) -> String {
    format!("x{i}.example")
}

/// The resident set of this process, in KiB.
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

/// Attaches `n` more sandboxes, timing each attach and the memory and fds they add.
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

/// dnsperf against `t` (4 clients, 64 queries in flight, every local name; at most `rate`
/// queries a second if given), verbose so that each answered query's latency is known.
async fn dnsperf(
    t: &Target,
    names: usize,
    seconds: u64,
    dir: &std::path::Path,
    rate: Option<u64>,
    cap: Option<f64>,
) -> Result<DnsperfReport> {
    let file = dir.join("dnsperf-queries");
    let text: String = (0..names).map(|i| format!("c{i} A\n")).collect();
    std::fs::write(&file, text)?;
    let args: Vec<String> = [
        "-s",
        &t.server.ip().to_string(),
        "-p",
        &t.server.port().to_string(),
        "-a",
        &t.source.to_string(),
        "-d",
        &file.display().to_string(),
        "-l",
        &seconds.to_string(),
        "-c",
        "4",
        "-q",
        "64",
        "-v",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut args = args;
    if let Some(q) = rate {
        args.extend(["-Q".to_owned(), q.to_string()]);
    }
    // Its output (a line per query) goes to a file, not a pipe: a pipe would have this
    // process read some 100,000 lines a second while it is also the resolver being measured.
    // On tmpfs where there is one: on a disk that other jobs fill with build output, a write
    // of dnsperf's could wait for writeback (dirty-page throttling), and every answer that
    // arrived meanwhile would count the wait as latency.
    let shm = std::path::Path::new("/dev/shm");
    let out_dir = match shm.is_dir() {
        true => tempfile::Builder::new()
            .prefix("cnm-dns-bench-")
            .tempdir_in(shm)
            .ok(),
        false => None,
    };
    let report = out_dir
        .as_ref()
        .map_or(dir, |d| d.path())
        .join("dnsperf-output");
    let stdout = std::fs::File::create(&report)?;
    let cap = match cap {
        Some(cores) => Some(CpuCap::new(t.held.clone(), Some(cores))?),
        None => None,
    };
    // At a fixed rate, the server and dnsperf run under SCHED_FIFO: the latency measured is
    // then the server's, not the wait for a core that other jobs of a shared machine hold (on
    // two cores at load 10-16, the longest CFS waits put both servers' p99 at 3-12 ms, and
    // moved it from run to run, even at the largest CPU weight).
    let realtime = match rate {
        Some(_) => match Realtime::new(&t.held) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("warning: {e:#}: this fixed-rate run is under the default scheduler");
                None
            }
        },
        None => None,
    };
    let cpu_before = cpu_us(t.pid)?;
    let rt = realtime.is_some();
    let child =
        t.ns.run(move || {
            let mut cmd = match rt {
                // Started under SCHED_FIFO, so that every thread it starts inherits it.
                true => {
                    let mut c = std::process::Command::new("chrt");
                    c.args(["-f", REALTIME_PRIORITY, "dnsperf"]);
                    c
                }
                false => std::process::Command::new("dnsperf"),
            };
            cmd.args(&args)
                .stdout(stdout)
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .await??;
    // dnsperf gets the server's weight (and no cap), so that it can always send more than a
    // capped server can answer, and so that its own waits do not count as the server's.
    let weighted = match &cap {
        Some(_) => Some(CpuCap::new(Held::Process(child.id()), None)?),
        None => None,
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    drop(weighted);
    let server_cpu = cpu_us(t.pid)? - cpu_before;
    let throttled = match &cap {
        Some(c) => Some(c.throttled()?),
        None => None,
    };
    drop(cap);
    drop(realtime);
    if !out.status.success() {
        bail!("dnsperf failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&report)?;
    let field = |label: &str, nth: usize| -> Result<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().nth(nth))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {label:?} in dnsperf's output"))
    };
    // Verbose lines: `> NOERROR c5 A 0.000071`.
    let mut latencies: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> NOERROR "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(DnsperfReport {
        qps: field("Queries per second:", 3)?,
        lost: field("Queries lost:", 2)? as usize,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        server_cpu_us: server_cpu / field("Queries completed:", 2)?,
        throttled,
    })
}

/// aardvark-dns serving the same records, started as netavark starts it (`--config DIR -p 53
/// run`, bound to the gateway listed first in the network's file), in a namespace of its own
/// whose loopback holds the gateway and the client's container address.
///
/// `run` forks: the server is the child it leaves behind, which writes its pid to
/// `DIR/aardvark.pid` (where netavark reads it to send SIGHUP), so that is the process measured
/// and stopped.
struct Aardvark {
    child: std::process::Child,
    server_pid: u32,
    target: Target,
}

impl Drop for Aardvark {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // 0 until the pid file was read (`kill 0` would signal our own process group).
        if self.server_pid != 0 {
            let _ = std::process::Command::new("kill")
                .arg(self.server_pid.to_string())
                .status();
        }
    }
}

async fn start_aardvark(
    host: &TestHost,
    program: &std::path::Path,
    names: usize,
) -> Result<Aardvark> {
    let gateway = IpAddr::from([10, 64, 0, 1]);
    let source = IpAddr::from([10, 127, 255, 254]);
    let dir = host.run_dir().join("aardvark-dns");
    std::fs::create_dir_all(&dir)?;
    // aardvark-dns's format: the listening addresses, then one line per container:
    // `ID IPV4S IPV6S NAMES` (an empty IPv6 list leaves two spaces).
    let mut conf = format!("{gateway}\n");
    for i in 0..names {
        conf.push_str(&format!("{:064x} {}  c{i}\n", i + 1, addr_of(i)));
    }
    conf.push_str(&format!("{:064x} {source}  client\n", names + 1));
    std::fs::write(dir.join("bench"), conf)?;
    let ns = host.sandbox_ns("aardvark").await?;
    let (program, config) = (program.to_owned(), dir.clone());
    let child = ns
        .run(move || -> Result<std::process::Child> {
            for a in [gateway, source] {
                let ok = std::process::Command::new("ip")
                    .args(["addr", "add", &format!("{a}/32"), "dev", "lo"])
                    .status()?
                    .success();
                if !ok {
                    bail!("ip addr add {a} failed");
                }
            }
            std::process::Command::new(&program)
                .args(["--config", &config.display().to_string(), "-p", "53", "run"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", program.display()))
        })
        .await??;
    let mut a = Aardvark {
        child,
        server_pid: 0,
        target: Target {
            ns,
            server: SocketAddr::new(gateway, 53),
            source,
            pid: 0,
            held: Held::Process(0),
        },
    };
    // Ready when it answers (bounded).
    let t = a.target.clone();
    t.ns.clone()
        .run(move || -> Result<()> {
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                match client(
                    0,
                    1,
                    Duration::from_millis(1),
                    t.server,
                    t.source,
                    local_name,
                ) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > end => {
                        return Err(e.context("aardvark-dns never answered"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .await??;
    let pid_file = dir.join("aardvark.pid");
    a.server_pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("a pid in {}", pid_file.display()))?;
    a.target.pid = a.server_pid;
    a.target.held = Held::Process(a.server_pid);
    Ok(a)
}

/// An upstream on the host namespace's loopback authoritative for every forwarded name (the
/// tests' counting upstream, shared rather than copied).
async fn start_upstream(host: &TestHost, names: usize) -> Result<(SocketAddr, TestUpstream)> {
    let addr = SocketAddr::from(([127, 0, 0, 53], 53));
    let zone = Behaviour::Zone(
        (0..names)
            .map(|i| (forwarded_name(i), vec![IpAddr::from([192, 0, 2, 1])]))
            .collect(),
    );
    Ok((addr, TestUpstream::start(host.netns(), addr, zone).await?))
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        names: 1000,
        seconds: 3,
        clients: 1,
        attach: 100,
        dnsperf: false,
        aardvark: None,
        rounds: 1,
        rate: None,
        server_cpu: 0.25,
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
            "--rounds" => o.rounds = (num("--rounds")? as usize).max(1),
            "--dnsperf" => o.dnsperf = true,
            "--rate" => o.rate = Some(num("--rate")?),
            "--server-cpu" => {
                let v = args.next().context("--server-cpu needs a value")?;
                o.server_cpu = v
                    .parse::<f64>()
                    .ok()
                    .filter(|c| (0.0..=64.0).contains(c))
                    .with_context(|| format!("--server-cpu takes cores (0 to 64), not {v:?}"))?;
            }
            "--aardvark" => {
                o.aardvark = Some(args.next().context("--aardvark needs a path")?.into());
            }
            // cargo bench passes --bench; anything else is a mistake worth knowing about.
            "--bench" => {}
            other => bail!("unknown option {other:?}"),
        }
    }
    Ok(o)
}

fn show(who: &str, what: &str, r: &QueryReport) {
    println!(
        "{who:<12} {what:<28} {:>8} queries {:>9.0} q/s  p50 {:>6.0} µs  p99 {:>6.0} µs",
        r.queries, r.qps, r.p50_us, r.p99_us
    );
}

fn show_dnsperf(who: &str, rate: Option<u64>, cap: Option<f64>, r: &DnsperfReport) {
    let how = match (rate, cap) {
        (Some(q), _) => format!("dnsperf -c 4 -q 64 -Q {q}"),
        (None, Some(c)) => format!("dnsperf -c 4 -q 64, {c} core"),
        (None, None) => "dnsperf -c 4 -q 64".to_owned(),
    };
    let throttled = match r.throttled {
        Some((periods, throttled)) => format!(
            ", throttled {:.0}% of periods",
            100.0 * throttled as f64 / periods.max(1) as f64
        ),
        None => String::new(),
    };
    println!(
        "{who:<12} {how:<28} {:>8} lost    {:>9.0} q/s  p50 {:>6.0} µs  p99 {:>6.0} µs  server CPU {:.2} µs/query{throttled}",
        r.lost, r.qps, r.p50_us, r.p99_us, r.server_cpu_us
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_opts()?;
    let host = TestHost::new().await?;
    let (upstream, upstream_server) = start_upstream(&host, o.names).await?;
    std::fs::write(
        host.run_dir().join("bench-resolv.conf"),
        format!("nameserver {}\n", upstream.ip()),
    )?;
    let (resolver, ns) = setup(&host, o.names).await?;
    let cnm = Target {
        ns: ns.clone(),
        server: SocketAddr::from(([127, 0, 0, 11], 53)),
        source: IpAddr::from([127, 0, 0, 1]),
        pid: std::process::id(),
        // Every resolver thread (the default name; one of them serves the client's listener).
        held: Held::Threads(threads_named("cnm-dns-")?),
    };
    let aardvark = match &o.aardvark {
        Some(p) => Some(start_aardvark(&host, p, o.names).await?),
        None => None,
    };
    let what = format!("{} names, {} client(s)", o.names, o.clients);
    println!(
        "local names, UDP, closed loop ({what}) and dnsperf; {} s each, {} round(s), cnm and aardvark-dns in turn",
        o.seconds, o.rounds
    );
    let mut cap = (o.dnsperf && o.server_cpu > 0.0).then_some(o.server_cpu);
    if cap.is_some() && CpuCap::hierarchy().is_none() {
        println!(
            "capped runs skipped: no cpu cgroup controller on this host (cgroup v2 or v1 cpu)"
        );
        cap = None;
    }
    if let Some(c) = cap {
        println!(
            "capped runs (the server, not dnsperf, is the bottleneck): {}",
            CpuCap::method(c)
        );
    }
    // Rounds alternate the servers so that both see the same share of a loaded machine; the
    // ratios are taken per round and their median is the figure.
    let mut closed_ratios = Vec::new();
    let mut perf_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    let (mut capped_ratios, mut capped_cpu_ratios) = (Vec::new(), Vec::new());
    let (mut full_p99, mut fixed_p99) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        let c = closed_loop(&cnm, o.names, o.seconds, o.clients, local_name).await?;
        show("cnm", "closed loop", &c);
        if let Some(a) = &aardvark {
            let d = closed_loop(&a.target, o.names, o.seconds, o.clients, local_name).await?;
            show("aardvark-dns", "closed loop", &d);
            closed_ratios.push(c.qps / d.qps);
        }
        if o.dnsperf {
            let c = dnsperf(&cnm, o.names, o.seconds, host.run_dir(), None, None).await?;
            show_dnsperf("cnm", None, None, &c);
            full_p99.push(c.p99_us);
            if let Some(a) = &aardvark {
                let d = dnsperf(&a.target, o.names, o.seconds, host.run_dir(), None, None).await?;
                show_dnsperf("aardvark-dns", None, None, &d);
                perf_ratios.push(c.qps / d.qps);
                cpu_ratios.push(d.server_cpu_us / c.server_cpu_us);
            }
            if let Some(core) = cap {
                let c = dnsperf(&cnm, o.names, o.seconds, host.run_dir(), None, cap).await?;
                show_dnsperf("cnm", None, Some(core), &c);
                if let Some(a) = &aardvark {
                    let d =
                        dnsperf(&a.target, o.names, o.seconds, host.run_dir(), None, cap).await?;
                    show_dnsperf("aardvark-dns", None, Some(core), &d);
                    capped_ratios.push(c.qps / d.qps);
                    capped_cpu_ratios.push(d.server_cpu_us / c.server_cpu_us);
                }
            }
            if let Some(q) = o.rate {
                let c = dnsperf(&cnm, o.names, o.seconds, host.run_dir(), Some(q), None).await?;
                show_dnsperf("cnm", Some(q), None, &c);
                fixed_p99.push(c.p99_us);
                if let Some(a) = &aardvark {
                    let d = dnsperf(&a.target, o.names, o.seconds, host.run_dir(), Some(q), None)
                        .await?;
                    show_dnsperf("aardvark-dns", Some(q), None, &d);
                }
            }
        }
    }
    if aardvark.is_some() {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(&v, 50.0)
        };
        println!(
            "cnm/aardvark-dns, median of {} round(s): rate {:.2}x closed loop, {:.2}x dnsperf (goal >= 2x); server CPU per query {:.2}x less",
            o.rounds,
            median(closed_ratios),
            median(perf_ratios),
            median(cpu_ratios)
        );
        if let Some(c) = cap {
            println!(
                "cnm/aardvark-dns with each server capped at {c} core, median of {} round(s): rate {:.2}x (goal >= 2x); server CPU per query {:.2}x less",
                o.rounds,
                median(capped_ratios),
                median(capped_cpu_ratios)
            );
        }
    }
    if o.dnsperf {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            percentile(&v, 50.0)
        };
        let fixed = match o.rate {
            Some(q) => format!(", {:.0} µs at {q} q/s", median(fixed_p99)),
            None => String::new(),
        };
        println!(
            "cnm p99 for local names under dnsperf, median of {} round(s): {:.0} µs at full load{fixed} (goal < 1000 µs)",
            o.rounds,
            median(full_p99),
        );
    }
    // Forwarded: the same upstream asked through cnm's resolver and directly.
    let direct = Target {
        ns: host.netns().clone(),
        server: upstream,
        source: upstream.ip(),
        pid: std::process::id(),
        held: Held::Process(0),
    };
    let f = closed_loop(&cnm, o.names, o.seconds, 1, forwarded_name).await?;
    show("cnm", "forwarded to local upstream", &f);
    let d = closed_loop(&direct, o.names, o.seconds, 1, forwarded_name).await?;
    show("(upstream)", "asked directly", &d);
    drop(aardvark);
    drop(upstream_server);
    let a = attach_cost(&host, &resolver, o.attach).await?;
    println!(
        "attach listener ({} sandboxes): p50 {:.0} µs, p99 {:.0} µs, {:.1} KiB RSS and {:.1} fds per sandbox",
        o.attach, a.p50_us, a.p99_us, a.rss_kib_per_sandbox, a.fds_per_sandbox
    );
    Ok(())
}
