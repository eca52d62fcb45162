//! The `overlay` group: cnm's overlay driver across hosts, and the control plane of 100 hosts.
//!
//! **Three hosts** (`overlay-attach`, `overlay-reach`, `overlay-iperf`,
//! `overlay-iperf-encrypted`, `overlay-alloc`): a real etcd on an underlay bridge in a namespace
//! of the bench's, and three hosts, each a namespace with a veth onto that bridge
//! ([`cnm_testkit::underlay`]) and its own cnm controller, the library as an embedder (or cnmd)
//! runs it: its durable store, the cluster store on etcd, its advertise address, and cnmd's
//! gateway network (`cnm_gwbridge`). Each controller lives on a tokio runtime of its own whose
//! threads are in its host's namespace, so its etcd connections leave through that host's
//! `eth0`. Host 1 creates the global overlay network; hosts 2 and 3 join it.
//!
//! - `overlay-attach`: a sandbox on host 2 or 3 (alternately) joining the network (sandbox +
//!   endpoint + join), p50/p99;
//! - `overlay-reach`: from the join's return until a sandbox on host 1 gets its first ICMP echo
//!   reply from the new endpoint (a probe every few milliseconds, bounded by [`REACH_WITHIN`]);
//!   the prober's neighbour retransmit time is 10 ms so that an ARP sent before the entry was
//!   programmed does not hide the figure behind the kernel's default one-second retry;
//! - `overlay-iperf`: iperf3 TCP from a sandbox on host 2 to one on host 1 over the overlay,
//!   against host 2 to host 1 over the underlay itself, runs alternating;
//!   `overlay-iperf-encrypted` the same on a network created with `encrypted` (Docker's `-o
//!   encrypted`), or "not measured: <the driver's refusal>";
//! - `overlay-alloc`: endpoints (each one dynamic address claimed cluster-wide) created from the
//!   three hosts at once, per second, with the etcd writes per address (etcd's revision) and a
//!   count of duplicates.
//!
//! **The simulation** (`overlay-sim`, `--sim-hosts N`, 100 by default): N agents on one etcd,
//! control plane only. Each is the overlay driver's own peer watch ([`PeerAgent`]) with its own
//! etcd connection, host id and lease, programming into a recording table instead of a kernel.
//! Every agent first publishes one endpoint (so each holds a lease, and the watches have N
//! facts to sync); then endpoints are published one at a time from agents in turn, and each is
//! timed from the publish call until the last of the N − 1 other agents programmed it. The
//! etcd writes (its revision), the client's transactions, the watch events delivered and their
//! bytes are counted over that phase, and etcd's database size read before and after.
//!
//! Everything (etcd, namespaces, iperf3) is stopped and removed at the end, on failure too: the
//! namespaces are anonymous, etcd and iperf3 are killed on drop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm::cnm_sandbox::{NetNs, Netlink, SandboxError};
use cnm::cnm_store::{EtcdConfig, EtcdStore};
use cnm::cnm_types::MacAddress;
use cnm::spi::DriverContext;
use cnm::store::{
    Lease, LeaseId, Listing, MemoryStore, Store, StoreError, Txn, Versioned, Watch, WatchEvent,
};
use cnm::{Controller, EndpointOptions, Network, NetworkOptions, Sandbox};
use cnm_driver_overlay::{PeerAgent, PeerFact, PeerSink};
use cnm_testkit::TestHost;
use cnm_testkit::etcd::{EtcdServer, run_in};
use cnm_testkit::probe::Probe;
use cnm_testkit::underlay::Underlay;
use serde_json::{Map, Value, json};
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

use crate::datapath;
use crate::report::{Outcome, round3};
use crate::stats::{Summary, median, percentile};

/// The group's scenarios, in the order they run.
pub const SCENARIOS: [&str; 6] = [
    "overlay-attach",
    "overlay-reach",
    "overlay-iperf",
    "overlay-iperf-encrypted",
    "overlay-alloc",
    "overlay-sim",
];

/// The underlay's /24 (etcd on .254, host i on .i).
const UNDERLAY: [u8; 3] = [192, 168, 78];
const SUBNET: &str = "10.78.0.0/16";
const NETWORK: &str = "ovbench";
/// How long a new endpoint may take to answer before the scenario fails.
const REACH_WITHIN: Duration = Duration::from_secs(10);
/// One probe's wait for its echo reply.
const PROBE_TIMEOUT: Duration = Duration::from_millis(20);
/// How long the simulation waits for one endpoint to be programmed everywhere.
const SIM_WITHIN: Duration = Duration::from_secs(60);

/// How much the group does.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Attaches (and reach probes).
    pub attaches: usize,
    /// iperf3 runs per side, and seconds per run.
    pub iperf_runs: usize,
    pub iperf_secs: u32,
    /// Endpoints each host creates in `overlay-alloc`, and how many at once per host.
    pub allocs_per_host: usize,
    pub alloc_concurrency: usize,
    /// Simulated hosts, and endpoints timed in the simulation.
    pub sim_hosts: usize,
    pub sim_endpoints: usize,
}

/// One outcome for the report.
pub type Row = (&'static str, Outcome);

/// Runs the scenarios of the group that `wanted` names; every one asked for gets a row (its
/// figures, or why there are none).
pub async fn run(iperf3: Option<&Path>, sizes: Sizes, wanted: &[String]) -> Vec<Row> {
    let wants = |s: &str| wanted.iter().any(|w| w == s);
    let mut rows = Vec::new();
    let three = [
        "overlay-attach",
        "overlay-reach",
        "overlay-iperf",
        "overlay-alloc",
    ];
    if three.iter().any(|s| wants(s)) || wants("overlay-iperf-encrypted") {
        match three_hosts(iperf3, sizes, &wants).await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                for s in SCENARIOS.iter().filter(|s| **s != "overlay-sim") {
                    rows.push((*s, Outcome::Status(format!("failed: {e:#}"))));
                }
            }
        }
    }
    if wants("overlay-sim") {
        let outcome = match simulation(sizes.sim_hosts, sizes.sim_endpoints).await {
            Ok(values) => Outcome::Values(values),
            Err(e) => Outcome::Status(format!("failed: {e:#}")),
        };
        rows.push(("overlay-sim", outcome));
    }
    rows.retain(|(s, _)| wants(s));
    rows
}

/// A tokio runtime whose threads all live in a host's namespace, kept until [`HostRt::stop`]
/// (or drop): the host's controller runs there, so every socket it opens is the host's.
struct HostRt {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl HostRt {
    async fn start(ns: &NetNs) -> Result<HostRt> {
        let (give, handle) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let ns = ns.clone();
        let done = tokio::spawn(async move {
            run_in(&ns, move || async move {
                let _ = give.send(Handle::current());
                let _ = stopped.await; // a stop, or the HostRt dropped
                Ok(())
            })
            .await
        });
        let handle = handle.await.context("the host's runtime did not start")?;
        Ok(HostRt {
            handle,
            stop: Some(stop),
            done: Some(done),
        })
    }

    /// Runs `f` on the host's runtime.
    async fn on<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.handle
            .spawn(f)
            .await
            .context("a task on a host's runtime panicked")?
    }

    async fn stop(mut self) -> Result<()> {
        drop(self.stop.take());
        if let Some(done) = self.done.take() {
            done.await.context("a host's runtime panicked")??;
        }
        Ok(())
    }
}

/// One host of the three: its namespace, underlay address, runtime and controller.
struct Host {
    test: TestHost,
    addr: IpAddr,
    rt: HostRt,
    ctl: Controller,
}

impl Host {
    async fn start(ul: &Underlay, i: u8) -> Result<Host> {
        let (test, addr) = ul.add_host(i).await?;
        let rt = HostRt::start(test.netns()).await?;
        let builder = test.controller_builder()?;
        let endpoint = ul.etcd.endpoint();
        let ctl = rt
            .on(async move {
                let store = EtcdStore::connect(etcd_config(&endpoint)?).await?;
                // cnmd's gateway network, as `cnmd --cluster-store` configures it.
                let gw = NetworkOptions::default()
                    .driver_option("com.docker.network.bridge.name", "cnm_gwbridge")
                    .driver_option("com.docker.network.bridge.enable_icc", "false")
                    .driver_option("com.docker.network.bridge.enable_ip_masquerade", "true");
                Ok(builder
                    .cluster_store(Arc::new(store))
                    .advertise_addr(addr)
                    .gateway_network("cnm_gwbridge", "bridge", gw)
                    .build()
                    .await?)
            })
            .await
            .with_context(|| format!("controller of host {i}"))?;
        Ok(Host {
            test,
            addr,
            rt,
            ctl,
        })
    }

    /// The global network `name`, as this host sees it (adopted now if it is new).
    async fn network(&self, name: &'static str) -> Result<Network> {
        let ctl = self.ctl.clone();
        self.rt
            .on(async move {
                ctl.sync_cluster().await?;
                Ok(ctl.network(name)?)
            })
            .await
    }

    /// A sandbox `name` joined to `net`: the sandbox, its overlay address, and the time the
    /// three calls took (measured on the host's runtime).
    async fn attach(&self, net: &Network, name: String) -> Result<(Sandbox, IpAddr, Duration)> {
        let (ctl, net) = (self.ctl.clone(), net.clone());
        self.rt
            .on(async move {
                let start = Instant::now();
                let sb = ctl.new_sandbox(&name, []).await?;
                let ep = net
                    .create_endpoint(&name, EndpointOptions::default())
                    .await?;
                ep.join_sandbox(&sb, []).await?;
                let took = start.elapsed();
                let ip = IpAddr::V4(ep.ipv4().context("no IPv4 address")?.addr());
                Ok((sb, ip, took))
            })
            .await
    }

    /// Deletes a sandbox and its endpoints.
    async fn detach(&self, sb: Sandbox) -> Result<()> {
        self.rt
            .on(async move {
                sb.delete_with_endpoints().await?;
                Ok(())
            })
            .await
    }

    async fn shutdown(self) -> Result<()> {
        let ctl = self.ctl.clone();
        let result = self.rt.on(async move { Ok(ctl.shutdown().await?) }).await;
        self.rt.stop().await?;
        drop(self.test);
        result
    }
}

/// The three hosts' scenarios.
async fn three_hosts(
    iperf3: Option<&Path>,
    sizes: Sizes,
    wants: &dyn Fn(&str) -> bool,
) -> Result<Vec<Row>> {
    let ul = Underlay::start(UNDERLAY)
        .await
        .context("etcd on the underlay (the bench needs Debian's etcd-server and etcd-client)")?;
    let mut hosts = Vec::new();
    for i in 1..=3 {
        hosts.push(Host::start(&ul, i).await?);
    }
    progress("etcd and 3 hosts up");
    let result = measure_three(&ul, &hosts, iperf3, sizes, wants).await;
    // Torn down whatever happened: controllers, their runtimes, the hosts, then etcd.
    for host in hosts {
        if let Err(e) = host.shutdown().await {
            eprintln!("cnm-bench: warning: overlay host shutdown: {e:#}");
        }
    }
    drop(ul);
    progress("3 hosts and etcd stopped");
    result
}

async fn measure_three(
    ul: &Underlay,
    hosts: &[Host],
    iperf3: Option<&Path>,
    sizes: Sizes,
    wants: &dyn Fn(&str) -> bool,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let net = create_network(&hosts[0], NETWORK, &[]).await?;
    let nets = [
        net.clone(),
        hosts[1].network(NETWORK).await?,
        hosts[2].network(NETWORK).await?,
    ];
    // The prober on host 1: its neighbour retries every 10 ms (see the module's notes).
    let (prober, prober_ip, _) = hosts[0].attach(&net, "prober".into()).await?;
    fast_arp(prober.netns()).await?;
    // Sandboxes kept until the end: a detach would free its address for a later attach (the
    // iperf3 client's), whose new MAC the prober's neighbour cache would not know for tens of
    // seconds (a new endpoint's MAC is random; see the report's notes).
    let mut live = Vec::new();

    if wants("overlay-attach") || wants("overlay-reach") {
        let (mut attach, mut reach) = (Vec::new(), Vec::new());
        let before = etcd_status(&ul.etcd).await?;
        let mut result = Ok(());
        for k in 0..sizes.attaches {
            let h = 1 + k % 2;
            let (sb, ip, took) = match hosts[h].attach(&nets[h], format!("att{k}")).await {
                Ok(a) => a,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            live.push((h, sb));
            let joined = Instant::now();
            if let Err(e) = reachable(prober.netns(), ip).await {
                result = Err(e.context(format!("endpoint {ip} on host {}", h + 1)));
                break;
            }
            reach.push(joined.elapsed());
            attach.push(took);
        }
        result?;
        let writes = etcd_status(&ul.etcd).await?.revision - before.revision;
        progress("attach and reach measured");
        let note = "3 hosts (namespaces on an underlay bridge), each a cnm library controller \
                    with its durable store, etcd cluster store and cnmd's gateway network";
        let mut row = timed(&attach, note)?;
        if let Outcome::Timed(_, extra) = &mut row {
            extra.insert(
                "etcd_writes_per_attach".into(),
                json!(round3(writes as f64 / attach.len().max(1) as f64)),
            );
        }
        rows.push(("overlay-attach", row));
        rows.push((
            "overlay-reach",
            timed(
                &reach,
                "join returned → first ICMP echo reply from a sandbox on host 1",
            )?,
        ));
    }

    if wants("overlay-iperf") || wants("overlay-iperf-encrypted") {
        match iperf3 {
            None => {
                for s in ["overlay-iperf", "overlay-iperf-encrypted"] {
                    rows.push((s, Outcome::Status("not installed: iperf3".into())));
                }
            }
            Some(iperf3) => {
                let plain = iperf(
                    hosts,
                    &nets[0],
                    &nets[1],
                    prober.netns(),
                    prober_ip,
                    iperf3,
                    sizes,
                    true,
                )
                .await?;
                rows.push(("overlay-iperf", Outcome::Values(plain)));
                progress("iperf3 measured");
                if wants("overlay-iperf-encrypted") {
                    let name = "ovbench-enc";
                    let outcome = match create_network(&hosts[0], name, &[("encrypted", "")]).await
                    {
                        Err(e) => Outcome::Status(format!("not measured: {e:#}")),
                        Ok(enc) => {
                            let enc2 = hosts[1].network(name).await?;
                            let (srv, srv_ip, _) = hosts[0].attach(&enc, "enc-srv".into()).await?;
                            let v = iperf(
                                hosts,
                                &enc,
                                &enc2,
                                srv.netns(),
                                srv_ip,
                                iperf3,
                                sizes,
                                false,
                            )
                            .await;
                            hosts[0].detach(srv).await?;
                            match v {
                                Ok(v) => Outcome::Values(v),
                                Err(e) => Outcome::Status(format!("failed: {e:#}")),
                            }
                        }
                    };
                    rows.push(("overlay-iperf-encrypted", outcome));
                }
            }
        }
    }

    if wants("overlay-alloc") {
        rows.push(("overlay-alloc", alloc(ul, hosts, &nets, sizes).await?));
        progress("allocation measured");
    }
    for (h, sb) in live {
        hosts[h].detach(sb).await?;
    }
    hosts[0].detach(prober).await?;
    Ok(rows)
}

/// The etcd client's configuration: a request may wait 30 s (cnmd's default is 5 s) so that a
/// bench on a loaded machine fails only when etcd is really gone.
fn etcd_config(endpoint: &str) -> Result<EtcdConfig> {
    Ok(EtcdConfig::new(endpoint.parse()?)
        .request_timeout(Duration::from_secs(30))?
        .connect_timeout(Duration::from_secs(30))?)
}

/// A line on stderr with the time of day, so a slow phase shows.
fn progress(what: &str) {
    eprintln!(
        "cnm-bench: overlay: {what} ({})",
        crate::report::rfc3339_now()
    );
}

/// Creates the global overlay network `name` on `host` with these driver options.
async fn create_network(host: &Host, name: &str, options: &[(&str, &str)]) -> Result<Network> {
    let mut opts = NetworkOptions::default().subnet(SUBNET.parse()?);
    if name != NETWORK {
        opts = NetworkOptions::default().subnet("10.79.0.0/16".parse()?);
    }
    for (k, v) in options {
        opts = opts.driver_option(*k, *v);
    }
    let (ctl, name) = (host.ctl.clone(), name.to_owned());
    host.rt
        .on(async move { Ok(ctl.new_network("overlay", &name, opts).await?) })
        .await
}

/// Sets every interface's neighbour retransmit time in `ns` to 10 ms.
async fn fast_arp(ns: &NetNs) -> Result<()> {
    ns.run(|| -> Result<()> {
        for entry in std::fs::read_dir("/proc/sys/net/ipv4/neigh")? {
            let path = entry?.path().join("retrans_time_ms");
            std::fs::write(&path, "10").with_context(|| format!("{}", path.display()))?;
        }
        Ok(())
    })
    .await?
}

/// Probes `addr` from `ns` until an echo reply comes back (at most [`REACH_WITHIN`]).
async fn reachable(ns: &NetNs, addr: IpAddr) -> Result<()> {
    let start = Instant::now();
    loop {
        match Probe::new().timeout(PROBE_TIMEOUT).icmp(ns, addr).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > REACH_WITHIN => {
                return Err(e).context(format!("no echo reply within {REACH_WITHIN:?}"));
            }
            Err(_) => {}
        }
    }
}

/// p50 (the median), p95 and p99 of `samples`.
fn timed(samples: &[Duration], note: &str) -> Result<Outcome> {
    let summary = Summary::of(samples).context("no samples")?;
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut extra = Map::new();
    extra.insert("p99_ms".into(), json!(percentile(&ms, 99.0).map(round3)));
    extra.insert("note".into(), json!(note));
    Ok(Outcome::Timed(summary, extra))
}

/// iperf3 from a sandbox on host 2 (on `net2`) to `server` (on host 1, `net1`'s), alternating
/// with host 2 → host 1 over the underlay when `with_underlay`.
#[allow(clippy::too_many_arguments)]
async fn iperf(
    hosts: &[Host],
    _net1: &Network,
    net2: &Network,
    server: &NetNs,
    server_ip: IpAddr,
    iperf3: &Path,
    sizes: Sizes,
    with_underlay: bool,
) -> Result<Map<String, Value>> {
    let (client, _, _) = hosts[1]
        .attach(net2, format!("iperf-cli-{server_ip}"))
        .await?;
    let result = async {
        let _overlay_server = datapath::Server::start(iperf3, server).await?;
        let _underlay_server = datapath::Server::start(iperf3, hosts[0].test.netns()).await?;
        let (mut over, mut under) = (Vec::new(), Vec::new());
        for r in 0..sizes.iperf_runs {
            for overlay_turn in [r % 2 == 0, r % 2 != 0] {
                if overlay_turn {
                    over.push(
                        datapath::client(
                            iperf3,
                            client.netns(),
                            server_ip,
                            datapath::PORT,
                            sizes.iperf_secs,
                        )
                        .await?,
                    );
                } else if with_underlay {
                    under.push(
                        datapath::client(
                            iperf3,
                            hosts[1].test.netns(),
                            hosts[0].addr,
                            datapath::PORT,
                            sizes.iperf_secs,
                        )
                        .await?,
                    );
                }
            }
        }
        let mut m = Map::new();
        m.insert("gbps".into(), json!(median(&over).map(round3)));
        m.insert("gbps_runs".into(), json!(over));
        if with_underlay {
            let (o, u) = (median(&over), median(&under));
            m.insert("underlay_gbps".into(), json!(u.map(round3)));
            m.insert("underlay_gbps_runs".into(), json!(under));
            if let (Some(o), Some(u)) = (o, u) {
                m.insert("of_underlay".into(), json!(round3(o / u)));
            }
        }
        m.insert("n".into(), json!(over.len()));
        m.insert(
            "path".into(),
            json!("TCP, sandbox on host 2 → sandbox on host 1 (underlay: host 2 → host 1)"),
        );
        Ok::<_, anyhow::Error>(m)
    }
    .await;
    hosts[1].detach(client).await?;
    result
}

/// `overlay-alloc`: endpoints created from the three hosts at once.
async fn alloc(
    ul: &Underlay,
    hosts: &[Host],
    nets: &[Network; 3],
    sizes: Sizes,
) -> Result<Outcome> {
    let before = etcd_status(&ul.etcd).await?;
    let start = Instant::now();
    let mut runs = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let net = nets[h].clone();
        let (n, c) = (sizes.allocs_per_host, sizes.alloc_concurrency);
        runs.push(host.rt.on(async move {
            use futures::StreamExt as _;
            let made: Vec<Result<cnm::Endpoint>> = futures::stream::iter(0..n)
                .map(|k| {
                    let net = net.clone();
                    async move {
                        Ok(net
                            .create_endpoint(&format!("alloc{h}-{k}"), EndpointOptions::default())
                            .await?)
                    }
                })
                .buffer_unordered(c)
                .collect()
                .await;
            made.into_iter().collect::<Result<Vec<_>>>()
        }));
    }
    let made = futures::future::join_all(runs).await;
    let wall = start.elapsed();
    let after = etcd_status(&ul.etcd).await?;
    let mut endpoints = Vec::new();
    let mut first_error = None;
    for (h, r) in made.into_iter().enumerate() {
        match r {
            Ok(eps) => endpoints.push((h, eps)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let addrs: Vec<Ipv4Addr> = endpoints
        .iter()
        .flat_map(|(_, eps)| eps.iter().filter_map(|e| e.ipv4().map(|n| n.addr())))
        .collect();
    let unique: HashSet<&Ipv4Addr> = addrs.iter().collect();
    // Deleted again (not timed), also after a failure.
    for (h, eps) in endpoints {
        hosts[h]
            .rt
            .on(async move {
                for ep in eps {
                    ep.delete().await?;
                }
                Ok(())
            })
            .await?;
    }
    if let Some(e) = first_error {
        return Err(e.context("creating endpoints from three hosts"));
    }
    let total = addrs.len();
    let mut m = Map::new();
    m.insert(
        "per_sec".into(),
        json!(round3(total as f64 / wall.as_secs_f64())),
    );
    m.insert("addresses".into(), json!(total));
    m.insert("duplicates".into(), json!(total - unique.len()));
    m.insert("hosts".into(), json!(3));
    m.insert("at_once_per_host".into(), json!(sizes.alloc_concurrency));
    m.insert(
        "etcd_writes_per_address".into(),
        json!(round3(
            after.revision.saturating_sub(before.revision) as f64 / total.max(1) as f64
        )),
    );
    m.insert(
        "what".into(),
        json!("endpoint create (one dynamic address claimed in etcd) on the global network"),
    );
    Ok(Outcome::Values(m))
}

/// etcd's own figures, from `etcdctl endpoint status`.
struct EtcdStatus {
    revision: u64,
    db_size: u64,
}

async fn etcd_status(etcd: &EtcdServer) -> Result<EtcdStatus> {
    let out = etcd.etcdctl(&["endpoint", "status", "-w", "json"]).await?;
    let v: Value = serde_json::from_str(&out).context("etcdctl endpoint status -w json")?;
    let status = &v[0]["Status"];
    Ok(EtcdStatus {
        revision: status["header"]["revision"]
            .as_u64()
            .context("no revision in etcd's status")?,
        db_size: status["dbSize"]
            .as_u64()
            .context("no dbSize in etcd's status")?,
    })
}

// ---- the simulation ----

/// What the simulation counts at the etcd client of every agent.
#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    events: AtomicU64,
    event_bytes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.commits.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            self.event_bytes.load(Ordering::Relaxed),
        ]
    }
}

/// A store that counts the transactions committed through it and the watch events (and their
/// key and value bytes) delivered from it; everything else goes to the store it wraps.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Store>,
    counters: Arc<Counters>,
}

impl Counting {
    fn wrap(&self, mut watch: Watch) -> Watch {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let counters = self.counters.clone();
        tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                counters.events.fetch_add(1, Ordering::Relaxed);
                let bytes = match &event {
                    WatchEvent::Put { key, value } => key.len() + value.value.len(),
                    other => other.key().len(),
                };
                counters
                    .event_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Watch::new(rx)
    }
}

#[cnm::async_trait]
impl Store for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.inner.commit(txn).await
    }
    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        Ok(self.wrap(self.inner.watch(prefix)?))
    }
    fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }
    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.inner.list_with_revision(prefix).await
    }
    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        Ok(self.wrap(self.inner.watch_from(prefix, after)?))
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
}

/// Per endpoint IP: on how many agents it is programmed, and when the last one did it.
#[derive(Debug, Default)]
struct Table {
    programmed: Mutex<HashMap<IpAddr, (usize, Instant)>>,
    changed: Notify,
}

/// An agent's fake kernel: each neighbour entry added counts its IP once more in the shared
/// [`Table`] (the watch adds it last, after the FDB entry); the other calls succeed.
#[derive(Debug, Clone)]
struct Recorder(Arc<Table>);

impl PeerSink for Recorder {
    async fn add_fdb(&self, _: u32, _: MacAddress, _: Option<IpAddr>) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn append_fdb(&self, _: u32, _: MacAddress, _: IpAddr) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn del_fdb(&self, _: u32, _: MacAddress, _: Option<IpAddr>) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn add_neighbour(&self, _: u32, ip: IpAddr, _: MacAddress) -> Result<(), SandboxError> {
        {
            let mut t = self
                .0
                .programmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let e = t.entry(ip).or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        }
        self.0.changed.notify_waiters();
        Ok(())
    }
    async fn del_neighbour(&self, _: u32, _: IpAddr) -> Result<(), SandboxError> {
        Ok(())
    }
}

impl Table {
    /// Waits (at most `within`) until each of `ips` is programmed on `count` agents; returns
    /// when the last of them was.
    async fn wait(&self, ips: &[IpAddr], count: usize, within: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let t = self
                    .programmed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let done: Option<Vec<Instant>> = ips
                    .iter()
                    .map(|ip| t.get(ip).filter(|(n, _)| *n >= count).map(|(_, at)| *at))
                    .collect();
                if let Some(done) = done {
                    return done.into_iter().max().context("no endpoint to wait for");
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("not programmed on {count} agents within {within:?}");
            }
        }
    }
}

fn sim_v4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200 + (k >> 16) as u8, (k >> 8) as u8, k as u8)
}

fn sim_ip(k: usize) -> IpAddr {
    IpAddr::V4(sim_v4(k))
}

/// The store's revision now (every write makes one).
async fn revision(store: &dyn Store) -> Result<u64> {
    Ok(store
        .list_with_revision("sim-revision-probe/")
        .await?
        .revision)
}

fn sim_mac(k: usize) -> MacAddress {
    let b = (k as u32).to_be_bytes();
    MacAddress([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

/// `overlay-sim`: `hosts` agents, `endpoints` timed.
async fn simulation(hosts: usize, endpoints: usize) -> Result<Map<String, Value>> {
    ensure!(
        hosts >= 2,
        "the simulation needs at least 2 hosts, not {hosts}"
    );
    let etcd = EtcdServer::start_isolated()
        .await
        .context("etcd for the simulation (Debian's etcd-server)")?;
    let endpoint = etcd.endpoint();
    let ns = etcd.netns().clone();
    let dir = tempfile::tempdir()?;
    let (run_dir, state_dir) = (dir.path().join("run"), dir.path().join("state"));
    let before_all = etcd_status(&etcd).await?;
    let stats = etcd
        .run_client(move || async move {
            let netlink = Netlink::connect(&ns).await?;
            let counters = Arc::new(Counters::default());
            let table = Arc::new(Table::default());
            let mut agents = Vec::new();
            let mut facts = Vec::new();
            let raw: Arc<dyn Store> = Arc::new(EtcdStore::connect(etcd_config(&endpoint)?).await?);
            for i in 0..hosts {
                let etcd = EtcdStore::connect(etcd_config(&endpoint)?).await?;
                let store: Arc<dyn Store> = Arc::new(Counting {
                    inner: Arc::new(etcd),
                    counters: counters.clone(),
                });
                let vtep = IpAddr::V4(Ipv4Addr::new(172, 20, (i >> 8) as u8, i as u8));
                let ctx = DriverContext::new(
                    ns.clone(),
                    netlink.clone(),
                    run_dir.clone(),
                    state_dir.clone(),
                )
                .with_stores(
                    Arc::new(MemoryStore::new()),
                    Some(store),
                    format!("sim-host-{i}"),
                )
                .with_cluster(Some(vtep), cnm::spi::DEFAULT_LEASE_TTL)
                .for_driver(cnm_driver_overlay::DRIVER_NAME);
                let f = ctx.facts()?;
                agents.push(PeerAgent::spawn(
                    f.clone(),
                    "simnet",
                    vtep,
                    false,
                    Recorder(table.clone()),
                )?);
                facts.push((f, vtep));
            }
            // Every agent publishes one endpoint (its lease granted then); all are synced.
            let started = Instant::now();
            let warm: Vec<IpAddr> = (0..hosts).map(sim_ip).collect();
            let publishes = facts.iter().enumerate().map(|(i, (f, vtep))| {
                let fact = PeerFact {
                    ipv4: Some(sim_v4(i)),
                    ipv6: None,
                    mac: sim_mac(i),
                    vtep: *vtep,
                };
                async move { f.publish("simnet", &format!("warm-{i}"), &fact).await }
            });
            for r in futures::future::join_all(publishes).await {
                r?;
            }
            table.wait(&warm, hosts - 1, SIM_WITHIN).await?;
            let initial_sync = started.elapsed();
            progress(&format!("simulation: {hosts} agents synced"));

            // The measured phase: one endpoint at a time.
            let r0 = revision(raw.as_ref()).await?;
            let c0 = counters.snapshot();
            let mut times = Vec::new();
            for k in 0..endpoints {
                let n = hosts + k;
                let (f, vtep) = &facts[(k * 7) % hosts];
                let fact = PeerFact {
                    ipv4: Some(sim_v4(n)),
                    ipv6: None,
                    mac: sim_mac(n),
                    vtep: *vtep,
                };
                let t0 = Instant::now();
                f.publish("simnet", &format!("ep-{k}"), &fact).await?;
                let last = table.wait(&[sim_ip(n)], hosts - 1, SIM_WITHIN).await?;
                times.push(last.saturating_duration_since(t0));
            }
            let c1 = counters.snapshot();
            let r1 = revision(raw.as_ref()).await?;
            let programmed: usize = agents.iter().map(PeerAgent::peers).sum();
            drop(agents);
            Ok((
                times,
                c0,
                c1,
                r1.saturating_sub(r0),
                initial_sync,
                programmed,
            ))
        })
        .await?;
    let (times, c0, c1, writes, initial_sync, programmed) = stats;
    progress("simulation measured");
    let after = etcd_status(&etcd).await?;
    drop(etcd);
    let per = |a: u64, b: u64| json!(round3(b.saturating_sub(a) as f64 / endpoints.max(1) as f64));
    let ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mut m = Map::new();
    m.insert("hosts".into(), json!(hosts));
    m.insert("endpoints".into(), json!(endpoints));
    m.insert(
        "programmed_all_p50_ms".into(),
        json!(median(&ms).map(round3)),
    );
    m.insert(
        "programmed_all_p99_ms".into(),
        json!(percentile(&ms, 99.0).map(round3)),
    );
    m.insert("client_txns_per_endpoint".into(), per(c0[0], c1[0]));
    m.insert("watch_events_per_endpoint".into(), per(c0[1], c1[1]));
    m.insert("watch_bytes_per_endpoint".into(), per(c0[2], c1[2]));
    m.insert("etcd_writes_per_endpoint".into(), per(0, writes));
    m.insert(
        "etcd_revisions_total".into(),
        json!(after.revision.saturating_sub(before_all.revision)),
    );
    m.insert(
        "initial_sync_ms".into(),
        json!(round3(initial_sync.as_secs_f64() * 1e3)),
    );
    m.insert("db_size_before".into(), json!(before_all.db_size));
    m.insert("db_size_after".into(), json!(after.db_size));
    m.insert("programmed_entries".into(), json!(programmed));
    m.insert(
        "what".into(),
        json!("control plane only: each agent the overlay driver's peer watch on its own etcd connection and lease, a recording table as its kernel"),
    );
    Ok(m)
}
