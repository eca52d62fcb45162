//! The scenarios: each runs its contenders alternately (A B A B …) and records one outcome per
//! contender in the report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cnm::NetworkOptions;
use cnm_ipam::{AddressRequest, Ipam, IpamConfig, PoolRequest, parse_subnet};
use serde_json::{Map, Value, json};

use crate::contenders::{Contender, Kind, PER_NETWORK, Unavailable, one_port};
use crate::fixture;
use crate::peers::{Peers, PortSpec};
use crate::report::{Outcome, Report, round3};
use crate::spans::{self, Phases, TIMES};
use crate::stats::Summary;

/// How the run was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--quick`: fewer iterations, smaller scales, shorter data-path runs.
    pub quick: bool,
    /// Overrides the attach/detach iteration count (`-n`).
    pub iterations: Option<usize>,
    /// Restricts the contenders (`--contenders a,b`); `None` means all.
    pub contenders: Option<Vec<String>>,
    /// `--store`: which store the cnm library contender uses; `None`: both where a scenario
    /// measures both (`cnm` durable, `cnm-memory` in memory), the durable one elsewhere.
    pub store: Option<StoreChoice>,
    /// `--restart-endpoints`: the endpoints of the restart scenario (default 1000).
    pub restart_endpoints: Option<u32>,
    /// `--restart-networks`: the networks they are spread over (default 1).
    pub restart_networks: Option<u32>,
    /// Data-path runs per side.
    pub runs_datapath: usize,
    /// Seconds per data-path run.
    pub secs_datapath: u32,
}

/// The store of the cnm library contender (`--store durable|memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// The default embedded store (redb in the state directory, synced on every commit).
    Durable,
    /// cnm-core's in-memory store: nothing is synced, nothing survives the controller.
    Memory,
}

impl std::str::FromStr for StoreChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "durable" => Ok(StoreChoice::Durable),
            "memory" => Ok(StoreChoice::Memory),
            other => bail!("--store takes durable or memory, not {other:?}"),
        }
    }
}

impl Options {
    /// Whether the contender `name` is measured this run.
    pub fn wants(&self, name: &str) -> bool {
        self.contenders.as_ref().is_none_or(|list| {
            list.iter().any(|c| {
                c == name
                    // With `--store memory`, `cnm` names the library contender, in memory.
                    || (name == "cnm-memory" && c == "cnm" && self.store == Some(StoreChoice::Memory))
            })
        })
    }

    /// The candidates this run measures: those asked for, with the cnm library contender on
    /// the store asked for (`--store memory` puts `cnm-memory` where a scenario lists `cnm`).
    fn kinds(&self, candidates: &[Kind]) -> Vec<Kind> {
        let mut out: Vec<Kind> = Vec::new();
        for &k in candidates {
            let k = match (self.store, k) {
                (Some(StoreChoice::Memory), Kind::Cnm) => Kind::CnmMemory,
                (Some(StoreChoice::Durable), Kind::CnmMemory) => continue,
                _ => k,
            };
            if self.wants(k.name()) && !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    /// Whether a cnm-only measurement (networks, IPAM, restart, memory) runs.
    fn wants_cnm(&self) -> bool {
        self.wants("cnm")
    }
}

/// Runs scenarios and fills the report.
pub struct Bench {
    /// Options.
    pub opts: Options,
    /// Where the peers are.
    pub peers: Peers,
    /// The results so far.
    pub report: Report,
}

/// Sets up every kind; the ones that cannot run get their status recorded under `scenarios`.
async fn setup_all(
    kinds: &[Kind],
    peers: &Peers,
    report: &mut Report,
    scenarios: &[&str],
) -> Vec<Contender> {
    let mut live = Vec::new();
    for &kind in kinds {
        match Contender::setup(kind, peers).await {
            Ok(c) => live.push(c),
            Err(Unavailable::Status(s)) => {
                for sc in scenarios {
                    report.set(sc, kind.name(), Outcome::Status(s.clone()));
                }
            }
            Err(Unavailable::Failed(e)) => {
                tracing::warn!(contender = kind.name(), error = %format!("{e:#}"), "setup failed");
                for sc in scenarios {
                    report.set(sc, kind.name(), Outcome::Status(format!("failed: {e:#}")));
                }
            }
        }
    }
    live
}

async fn finish_all(live: Vec<Contender>) {
    for c in live {
        let name = c.kind.name();
        if let Err(e) = c.finish().await {
            tracing::warn!(contender = name, error = %format!("{e:#}"), "cleanup failed");
        }
    }
}

/// cnm's per-phase means as the outcome's extra field `breakdown_ms` (nothing for the others).
fn breakdown(samples: &[Phases]) -> Map<String, Value> {
    let mut m = Map::new();
    if !samples.is_empty() {
        m.insert(
            "breakdown_ms".into(),
            Value::Object(spans::mean_ms(samples)),
        );
    }
    m
}

fn failed(e: &anyhow::Error) -> Outcome {
    Outcome::Status(format!("failed: {e:#}"))
}

impl Bench {
    /// Attach (sandbox + endpoint + join + one published port) and detach, alternating
    /// contenders every iteration.
    pub async fn attach_detach(&mut self) {
        let n = self
            .opts
            .iterations
            .unwrap_or(if self.opts.quick { 20 } else { 100 });
        let kinds = self.opts.kinds(&Kind::ALL);
        let scenarios = ["attach", "detach"];
        let mut live = setup_all(&kinds, &self.peers, &mut self.report, &scenarios).await;
        let mut samples: BTreeMap<&'static str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
        // cnm's phases per attach and per detach (from its spans: see spans.rs).
        let mut phases: BTreeMap<&'static str, (Vec<Phases>, Vec<Phases>)> = BTreeMap::new();
        // Two untimed rounds first: page cache, lazily created kernel state, the peers' first exec.
        let warmup = 2;
        for round in 0..(n + warmup) {
            let i = round as u32;
            let count = live.len();
            let mut dead = Vec::new();
            for j in 0..count {
                let idx = (round + j) % count;
                let c = &live[idx];
                let ports = one_port(i);
                let before = TIMES.snapshot();
                let t = Instant::now();
                let attached = c.attach(i, &ports).await;
                let a = t.elapsed();
                let mid = TIMES.snapshot();
                let detached = match &attached {
                    Ok(()) => {
                        let t = Instant::now();
                        c.detach(i, &ports).await.map(|()| t.elapsed())
                    }
                    Err(_) => Ok(Duration::ZERO),
                };
                let after = TIMES.snapshot();
                match (attached, detached) {
                    (Ok(()), Ok(d)) if round >= warmup => {
                        let e = samples.entry(c.kind.name()).or_default();
                        e.0.push(a);
                        e.1.push(d);
                        if c.kind.is_cnm_library() {
                            let p = phases.entry(c.kind.name()).or_default();
                            p.0.push(mid.since(&before).phases(a));
                            p.1.push(after.since(&mid).phases(d));
                        }
                    }
                    (Ok(()), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(contender = c.kind.name(), error = %format!("{e:#}"), "attach/detach failed");
                        for sc in scenarios {
                            self.report.set(sc, c.kind.name(), failed(&e));
                        }
                        dead.push(idx);
                    }
                }
            }
            dead.sort_unstable();
            for idx in dead.into_iter().rev() {
                let c = live.remove(idx);
                let _ = c.finish().await; // it already failed; its host namespace goes with it
            }
        }
        for (name, (a, d)) in samples {
            if let (Some(a), Some(d)) = (Summary::of(&a), Summary::of(&d)) {
                let (pa, pd) = phases.remove(name).unwrap_or_default();
                self.report
                    .set("attach", name, Outcome::Timed(a, breakdown(&pa)));
                self.report
                    .set("detach", name, Outcome::Timed(d, breakdown(&pd)));
            }
        }
        finish_all(live).await;
    }

    /// One endpoint with 100 published ports, and one with a 1000-port range: setup/teardown.
    pub async fn ports(&mut self) {
        let n = if self.opts.quick { 5 } else { 20 };
        let mut candidates = vec![
            Kind::Cnm,
            Kind::Floor,
            Kind::IpBatch,
            Kind::Netavark,
            Kind::Cni,
        ];
        if !self.opts.quick {
            // One iptables process per rule: tens of seconds per round at 100 ports.
            candidates.insert(3, Kind::NetavarkDeb);
        }
        let hundred: Vec<PortSpec> = (0..100)
            .map(|k| PortSpec::single(21000 + k, 8000 + k))
            .collect();
        let range = vec![PortSpec {
            host_port: 30000,
            container_port: 30000,
            range: 1000,
        }];
        for (prefix, ports) in [("ports100", hundred), ("ports1000range", range)] {
            let (setup_name, teardown_name) =
                (format!("{prefix}-setup"), format!("{prefix}-teardown"));
            let scenarios = [setup_name.as_str(), teardown_name.as_str()];
            let mut kinds = self.opts.kinds(&candidates);
            if self.opts.quick && prefix == "ports1000range" && kinds.contains(&Kind::Cni) {
                // portmap has no ranges: 1000 mappings take about 50 s per setup.
                kinds.retain(|k| *k != Kind::Cni);
                for sc in scenarios {
                    self.report.set(
                        sc,
                        Kind::Cni.name(),
                        Outcome::Status(
                            "not measured with --quick (1000 single mappings, about 50 s per setup)"
                                .into(),
                        ),
                    );
                }
            }
            let mut live = setup_all(&kinds, &self.peers, &mut self.report, &scenarios).await;
            let mut samples: BTreeMap<&'static str, (Vec<Duration>, Vec<Duration>)> =
                BTreeMap::new();
            // A slow peer stops sampling once it has a few samples and has used its budget.
            let budget = Duration::from_secs(if self.opts.quick { 10 } else { 40 });
            let mut spent: BTreeMap<&'static str, Duration> = BTreeMap::new();
            for round in 0..=n {
                let mut dead = Vec::new();
                for j in 0..live.len() {
                    let idx = (round + j) % live.len();
                    let c = &live[idx];
                    let i = round as u32;
                    let used = spent.entry(c.kind.name()).or_default();
                    let have = samples.get(c.kind.name()).map_or(0, |s| s.0.len());
                    if *used > budget && have >= 2 {
                        continue;
                    }
                    let t = Instant::now();
                    let result = async {
                        c.attach(i, &ports).await?;
                        let a = t.elapsed();
                        let t = Instant::now();
                        c.detach(i, &ports).await?;
                        Ok::<_, anyhow::Error>((a, t.elapsed()))
                    }
                    .await;
                    *spent.entry(c.kind.name()).or_default() += t.elapsed();
                    match result {
                        Ok((a, d)) if round > 0 => {
                            let e = samples.entry(c.kind.name()).or_default();
                            e.0.push(a);
                            e.1.push(d);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            for sc in scenarios {
                                self.report.set(sc, c.kind.name(), failed(&e));
                            }
                            dead.push(idx);
                        }
                    }
                }
                dead.sort_unstable();
                for idx in dead.into_iter().rev() {
                    let _ = live.remove(idx).finish().await;
                }
            }
            for (name, (a, d)) in samples {
                if let (Some(a), Some(d)) = (Summary::of(&a), Summary::of(&d)) {
                    self.report.set(&setup_name, name, Outcome::timed(a));
                    self.report.set(&teardown_name, name, Outcome::timed(d));
                }
            }
            finish_all(live).await;
        }
    }

    /// The cost of the 1st, 100th, 500th and 1000th attach on one network (each keeps its
    /// sandbox and published port), as the median of a window of five attaches at each mark.
    pub async fn scale_attach(&mut self) {
        let candidates = if self.opts.quick {
            vec![Kind::Cnm, Kind::Floor]
        } else {
            vec![
                Kind::Cnm,
                Kind::Floor,
                Kind::FloorDurable,
                Kind::Netavark,
                Kind::Cni,
            ]
        };
        let budget = Duration::from_secs(if self.opts.quick { 30 } else { 90 });
        let live = self
            .attach_series(
                "scale-attach-",
                1000,
                &[1, 100, 500, 1000],
                &candidates,
                budget,
            )
            .await;
        // No detaches: dropping each throwaway host namespace (and its sandboxes' mounts) takes
        // it all down; detaching 1000 CNI attaches one by one alone takes many minutes.
        finish_all(live).await;
    }

    /// `--scale N`: N attaches (each keeps its sandbox and published port) spread over
    /// N / 1000 networks, for cnm and the floor: the 1st, 1000th, (N/2)th and Nth attach
    /// (`scaleN-attach-M`); then cnm's controller restarted on its durable store with the N
    /// endpoints and N published ports (`scaleN-restart`); and the resident memory of cnmd
    /// holding N endpoints and N published ports made through the CLI (`scaleN-memory`).
    pub async fn scale_big(&mut self, n: u32) {
        let prefix = format!("scale{n}-attach-");
        let mut marks = vec![1usize, 1000, n as usize / 2, n as usize];
        marks.dedup();
        marks.retain(|m| *m >= 1 && *m <= n as usize);
        let budget = Duration::from_secs(3600);
        let mut live = self
            .attach_series(&prefix, n, &marks, &[Kind::Cnm, Kind::Floor], budget)
            .await;
        let restart = format!("scale{n}-restart");
        if let Some(c) = live.iter_mut().find(|c| c.kind == Kind::Cnm) {
            let outcome = match c.restart_cnm().await {
                Ok((ready, phases)) => {
                    // Where the restart's time went (kernel calls, store, firewall, the rest).
                    let mut extra = breakdown(&[phases]);
                    extra.insert("endpoints".into(), json!(n));
                    extra.insert("published_ports".into(), json!(n));
                    extra.insert("networks".into(), json!(n.div_ceil(PER_NETWORK)));
                    extra.insert("embedded_dns".into(), json!(fixture::embedded_dns()));
                    extra.insert(
                        "store".into(),
                        json!("durable (redb in the state directory)"),
                    );
                    Summary::of(&[ready])
                        .map(|s| Outcome::Timed(s, extra))
                        .unwrap_or_else(|| Outcome::Status("no sample".into()))
                }
                Err(e) => failed(&e),
            };
            self.report.set(&restart, "cnm", outcome);
        }
        finish_all(live).await;
        if self.opts.wants("cnm-cli") {
            let outcome = match cnmd_memory(&self.peers, n, false).await {
                Ok(o) => o,
                Err(e) => failed(&e),
            };
            self.report
                .set(&format!("scale{n}-memory"), "cnm-cli", outcome);
        }
    }

    /// Attaches `0..total` for each candidate, alternating contenders on every attach, and
    /// reports the window of five attaches at each of `marks` as `{prefix}{mark}`. A contender
    /// stops once its attaches took `budget` in all. Returns the live contenders, attaches kept.
    async fn attach_series(
        &mut self,
        prefix: &str,
        total: u32,
        marks: &[usize],
        candidates: &[Kind],
        budget: Duration,
    ) -> Vec<Contender> {
        let scenarios: Vec<String> = marks.iter().map(|m| format!("{prefix}{m}")).collect();
        let names: Vec<&str> = scenarios.iter().map(String::as_str).collect();
        let kinds = self.opts.kinds(candidates);
        let mut live = setup_all(&kinds, &self.peers, &mut self.report, &names).await;
        if live.is_empty() {
            return live;
        }
        let networks = total.div_ceil(PER_NETWORK) as usize;
        let mut dead: Vec<bool> = vec![false; live.len()];
        // Why a contender stopped: its budget used, or a failure (the marks before it stand).
        let mut stopped: Vec<Option<String>> = vec![None; live.len()];
        if networks > 1 {
            for (k, c) in live.iter_mut().enumerate() {
                if let Err(e) = c.add_networks(networks).await {
                    stopped[k] = Some(format!("failed to make {networks} networks: {e:#}"));
                    dead[k] = true;
                }
            }
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); live.len()];
        let mut phases: Vec<Vec<Phases>> = vec![Vec::new(); live.len()];
        for i in 0..total {
            if total >= 2000 && i > 0 && i % 1000 == 0 {
                eprintln!("cnm-bench: {prefix}: {i} of {total} attaches");
            }
            for (k, c) in live.iter().enumerate() {
                if dead[k] || stopped[k].is_some() {
                    continue;
                }
                if times[k].iter().sum::<Duration>() > budget {
                    let last = times[k].last().copied().unwrap_or_default();
                    stopped[k] = Some(format!(
                        "not reached: stopped after {i} attaches ({} s budget; the last took {:.1} ms)",
                        budget.as_secs(),
                        last.as_secs_f64() * 1e3
                    ));
                    continue;
                }
                let before = TIMES.snapshot();
                let t = Instant::now();
                match c.attach(i, &one_port(i)).await {
                    Ok(()) => {
                        let a = t.elapsed();
                        times[k].push(a);
                        if c.kind.is_cnm_library() {
                            phases[k].push(TIMES.snapshot().since(&before).phases(a));
                        }
                    }
                    Err(e) => {
                        // The marks reached keep their figures; the others say where it failed.
                        stopped[k] = Some(format!("failed at attach {}: {e:#}", i + 1));
                        dead[k] = true;
                    }
                }
            }
        }
        for (k, c) in live.iter().enumerate() {
            for (m, sc) in marks.iter().zip(&names) {
                if times[k].len() < *m {
                    let why = stopped[k].clone().unwrap_or_else(|| "not reached".into());
                    self.report.set(sc, c.kind.name(), Outcome::Status(why));
                    continue;
                }
                let start = (m - 1).min(times[k].len().saturating_sub(5));
                let end = (start + 5).min(times[k].len());
                if let Some(s) = Summary::of(&times[k][start..end]) {
                    let b = phases[k].get(start..end).map(breakdown).unwrap_or_default();
                    self.report.set(sc, c.kind.name(), Outcome::Timed(s, b));
                }
            }
        }
        let mut k = 0;
        live.retain(|_| {
            k += 1;
            !dead[k - 1]
        });
        live
    }

    /// Creating the 1st and the 200th network on one controller (median of five at each mark).
    pub async fn scale_network(&mut self) {
        if !self.opts.wants_cnm() {
            return;
        }
        let result = async {
            let host = cnm_testkit::TestHost::new().await?;
            let ctl = host.controller().await?;
            let mut times = Vec::new();
            let mut nets = Vec::new();
            for k in 0..200u32 {
                let subnet = format!("10.{}.{}.0/24", 100 + k / 256, k % 256).parse()?;
                let t = Instant::now();
                let net = ctl
                    .new_network(
                        "bridge",
                        &format!("net{k}"),
                        NetworkOptions::default().subnet(subnet),
                    )
                    .await?;
                times.push(t.elapsed());
                nets.push(net);
            }
            for net in nets {
                net.delete().await?;
            }
            Ok::<_, anyhow::Error>(times)
        }
        .await;
        match result {
            Ok(times) => {
                for (sc, window) in [
                    ("scale-network-1", &times[0..5]),
                    ("scale-network-200", &times[195..200]),
                ] {
                    if let Some(s) = Summary::of(window) {
                        self.report.set(sc, "cnm", Outcome::timed(s));
                    }
                }
            }
            Err(e) => {
                for sc in ["scale-network-1", "scale-network-200"] {
                    self.report.set(sc, "cnm", failed(&e));
                }
            }
        }
    }

    /// 32 attaches started at once against one after another: wall time and the ratio.
    pub async fn parallel(&mut self) {
        const N: u32 = 32;
        let reps = if self.opts.quick { 2 } else { 5 };
        let kinds = self.opts.kinds(&[Kind::Cnm, Kind::Floor, Kind::Netavark]);
        let mut live = setup_all(&kinds, &self.peers, &mut self.report, &["parallel32"]).await;
        let mut results: BTreeMap<&'static str, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
        let mut dead = Vec::new();
        for rep in 0..reps {
            for (k, c) in live.iter().enumerate() {
                if dead.contains(&k) {
                    continue;
                }
                let run = async {
                    let mut serial = Duration::ZERO;
                    let mut parallel = Duration::ZERO;
                    // Alternate which goes first.
                    for parallel_turn in [rep % 2 == 0, rep % 2 != 0] {
                        let t = Instant::now();
                        if parallel_turn {
                            futures::future::try_join_all(
                                (0..N).map(|i| async move { c.attach(i, &one_port(i)).await }),
                            )
                            .await?;
                            parallel = t.elapsed();
                        } else {
                            for i in 0..N {
                                c.attach(i, &one_port(i)).await?;
                            }
                            serial = t.elapsed();
                        }
                        for i in 0..N {
                            c.detach(i, &one_port(i)).await?;
                        }
                    }
                    Ok::<_, anyhow::Error>((serial, parallel))
                }
                .await;
                match run {
                    Ok((s, p)) => {
                        let e = results.entry(c.kind.name()).or_default();
                        e.0.push(s);
                        e.1.push(p);
                    }
                    Err(e) => {
                        self.report.set("parallel32", c.kind.name(), failed(&e));
                        dead.push(k);
                    }
                }
            }
        }
        for (name, (serial, parallel)) in results {
            if dead.iter().any(|&k| live[k].kind.name() == name) {
                continue;
            }
            let (Some(s), Some(p)) = (Summary::of(&serial), Summary::of(&parallel)) else {
                continue;
            };
            let mut extra = Map::new();
            extra.insert("serial_ms".into(), json!(round3(s.median_ms)));
            extra.insert("speedup".into(), json!(round3(s.median_ms / p.median_ms)));
            self.report
                .set("parallel32", name, Outcome::Timed(p, extra));
        }
        live.retain(|_| true);
        finish_all(live).await;
    }

    /// Allocate/release rates of cnm-ipam on a /16 and a /64, and its memory after 1 M
    /// allocations in a /64 (in a child process).
    pub async fn ipam(&mut self, scenarios: &[String]) {
        if !self.opts.wants_cnm() {
            return;
        }
        let v6_count = if self.opts.quick { 100_000 } else { 1_000_000 };
        for (sc, subnet, count) in [
            ("ipam-v4-16", "10.200.0.0/16", 65_000u32),
            ("ipam-v6-64", "fd00:b::/64", v6_count),
        ] {
            if !scenarios.iter().any(|s| s == sc) {
                continue;
            }
            let outcome = match ipam_rates(subnet, count) {
                Ok(values) => Outcome::Values(values),
                Err(e) => failed(&e),
            };
            self.report.set(sc, "cnm", outcome);
        }
        if scenarios.iter().any(|s| s == "ipam-memory-1m-v6") {
            let outcome = match crate::children::run_child("__ipam-memory-child", &[]).await {
                Ok(values) => Outcome::Values(values),
                Err(e) => failed(&e),
            };
            self.report.set("ipam-memory-1m-v6", "cnm", outcome);
        }
    }

    /// Resident memory of a process holding a controller with 1000 endpoints and 1000
    /// published ports; and of cnmd, once it exists.
    pub async fn memory(&mut self) {
        if self.opts.wants_cnm() {
            let outcome = match crate::children::run_child("__memory-child", &["1000"]).await {
                Ok(values) => Outcome::Values(values),
                Err(e) => failed(&e),
            };
            self.report.set("memory", "cnm", outcome);
        }
        if self.opts.wants("cnm-cli") {
            let outcome = if self.opts.quick {
                Outcome::Status("not measured with --quick (2000 CLI calls)".into())
            } else {
                match cnmd_memory(&self.peers, 1000, true).await {
                    Ok(o) => o,
                    Err(e) => failed(&e),
                }
            };
            self.report.set("memory", "cnm-cli", outcome);
        }
    }

    /// Time until a restarted controller is ready with 1000 endpoints and 1000 published ports
    /// (or as `--restart-endpoints`, `--restart-networks`, `--store` and `-n` ask).
    pub async fn restart(&mut self) {
        if !self.opts.wants_cnm() {
            return;
        }
        let shape = crate::restart::Shape {
            endpoints: self.opts.restart_endpoints.unwrap_or(if self.opts.quick {
                200
            } else {
                1000
            }),
            networks: self.opts.restart_networks.unwrap_or(1),
            durable: self.opts.store == Some(StoreChoice::Durable),
            restarts: self.opts.iterations.unwrap_or(1).max(1),
        };
        let outcome = match crate::restart::measure(shape).await {
            Ok(o) => o,
            Err(e) => failed(&e),
        };
        self.report.set("restart", "cnm", outcome);
    }
}

/// What churn samples after each window of cycles: the process and the host namespace.
#[derive(Debug, Clone, Copy)]
struct Residue {
    rss_kib: u64,
    fds: usize,
    links: usize,
    nft_rules: usize,
    nft_elements: usize,
    mounts: usize,
}

impl Residue {
    async fn sample(c: &Contender) -> Result<Residue> {
        let (rss_kib, _) = crate::env::rss_kib()?;
        let fds = std::fs::read_dir("/proc/self/fd")
            .context("failed to list /proc/self/fd")?
            .count();
        let links = c.host().netlink().links().await?.len();
        let out = crate::peers::Cmd::new("nft", &["-j", "list", "ruleset"])
            .run_in(c.host().netns())
            .await?;
        let doc: Value = serde_json::from_slice(&out.stdout).context("nft -j printed no JSON")?;
        let (mut nft_rules, mut nft_elements) = (0, 0);
        for obj in doc["nftables"].as_array().into_iter().flatten() {
            if obj.get("rule").is_some() {
                nft_rules += 1;
            }
            for kind in ["set", "map"] {
                if let Some(elems) = obj.get(kind).and_then(|s| s.get("elem")) {
                    nft_elements += elems.as_array().map_or(0, Vec::len);
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .context("failed to read /proc/self/mountinfo")?
            .lines()
            .count();
        Ok(Residue {
            rss_kib,
            fds,
            links,
            nft_rules,
            nft_elements,
            mounts,
        })
    }

    fn to_json(self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("rss_mb".into(), json!(round3(self.rss_kib as f64 / 1024.0)));
        m.insert("fds".into(), json!(self.fds));
        m.insert("links".into(), json!(self.links));
        m.insert("nft_rules".into(), json!(self.nft_rules));
        m.insert("nft_elements".into(), json!(self.nft_elements));
        m.insert("mounts".into(), json!(self.mounts));
        m
    }
}

impl Bench {
    /// `--churn N`: N attach/detach cycles of cnm through the library (the store as `--store`
    /// says, durable by default), one sandbox at a time (cycle `i` is attach `i % 1000`, with
    /// its published port). Per window of 10,000 cycles (N/10 when fewer): p50/p99 of attach
    /// and detach, and what is left after it: this process's resident memory and descriptors,
    /// the links, nftables rules and set elements of the host namespace, and mounts. Flat
    /// windows mean nothing leaks.
    pub async fn churn(&mut self, n: u32) {
        let name = format!("churn{n}");
        let kinds = self.opts.kinds(&[Kind::Cnm]);
        let live = setup_all(&kinds, &self.peers, &mut self.report, &[name.as_str()]).await;
        for c in &live {
            let outcome = match churn_one(c, n).await {
                Ok(values) => Outcome::Values(values),
                Err(e) => failed(&e),
            };
            self.report.set(&name, c.kind.name(), outcome);
        }
        finish_all(live).await;
    }
}

async fn churn_one(c: &Contender, n: u32) -> Result<Map<String, Value>> {
    let window = (n / 10).clamp(1, 10_000);
    let before = Residue::sample(c).await?;
    let mut windows = Vec::new();
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for cycle in 0..n {
        let i = cycle % PER_NETWORK;
        let ports = one_port(i);
        let t = Instant::now();
        c.attach(i, &ports)
            .await
            .with_context(|| format!("attach of cycle {cycle}"))?;
        attach.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.detach(i, &ports)
            .await
            .with_context(|| format!("detach of cycle {cycle}"))?;
        detach.push(t.elapsed().as_secs_f64() * 1e3);
        if (cycle + 1) % window == 0 || cycle + 1 == n {
            let after = Residue::sample(c).await?;
            let pct = |v: &[f64], p: f64| crate::stats::percentile(v, p).map(round3);
            let mut m = after.to_json();
            m.insert("cycles".into(), json!(cycle + 1));
            m.insert("attach_p50_ms".into(), json!(pct(&attach, 50.0)));
            m.insert("attach_p99_ms".into(), json!(pct(&attach, 99.0)));
            m.insert("detach_p50_ms".into(), json!(pct(&detach, 50.0)));
            m.insert("detach_p99_ms".into(), json!(pct(&detach, 99.0)));
            eprintln!(
                "cnm-bench: churn: {} cycles, {}",
                cycle + 1,
                Value::Object(m.clone())
            );
            windows.push(Value::Object(m));
            attach.clear();
            detach.clear();
        }
    }
    let last = Residue::sample(c).await?;
    let mut out = Map::new();
    out.insert("cycles".into(), json!(n));
    out.insert("window".into(), json!(window));
    out.insert(
        "minutes".into(),
        json!(round3(started.elapsed().as_secs_f64() / 60.0)),
    );
    out.insert("before".into(), Value::Object(before.to_json()));
    out.insert("after".into(), Value::Object(last.to_json()));
    // Nothing of a detached sandbox may stay: the same links, rules, elements and mounts as
    // before the first cycle.
    let leaked: Vec<&str> = [
        ("links", before.links != last.links),
        ("nft_rules", before.nft_rules != last.nft_rules),
        ("nft_elements", before.nft_elements != last.nft_elements),
        ("mounts", before.mounts != last.mounts),
    ]
    .into_iter()
    .filter_map(|(what, differs)| differs.then_some(what))
    .collect();
    out.insert("leaked".into(), json!(leaked));
    out.insert("windows".into(), Value::Array(windows));
    Ok(out)
}

/// Resident memory of `cnmd` after `count` attaches through the CLI (over `count / 1000`
/// networks), each publishing one port; then detached one by one if `detach`, else left for
/// the throwaway host namespace to take down.
async fn cnmd_memory(peers: &Peers, count: u32, detach: bool) -> Result<Outcome> {
    let mut c = match Contender::setup(Kind::Cli, peers).await {
        Ok(c) => c,
        Err(Unavailable::Status(s)) => return Ok(Outcome::Status(s)),
        Err(Unavailable::Failed(e)) => return Err(e),
    };
    c.add_networks(count.div_ceil(PER_NETWORK) as usize).await?;
    for i in 0..count {
        if count >= 2000 && i > 0 && i % 1000 == 0 {
            eprintln!("cnm-bench: cnmd memory: {i} of {count} attaches through the CLI");
        }
        c.attach(i, &one_port(i)).await?;
    }
    let pid = c.daemon_pid().context("the CLI contender has a daemon")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mut m = Map::new();
    m.insert("rss_mb".into(), json!(round3(kib("VmRSS:") / 1024.0)));
    m.insert("peak_rss_mb".into(), json!(round3(kib("VmHWM:") / 1024.0)));
    m.insert("endpoints".into(), json!(count));
    m.insert("published_ports".into(), json!(count));
    m.insert("process".into(), json!("cnmd"));
    m.insert("embedded_dns".into(), json!(fixture::embedded_dns()));
    if detach {
        for i in 0..count {
            c.detach(i, &one_port(i)).await?;
        }
    }
    c.finish().await?;
    Ok(Outcome::Values(m))
}

/// Allocates `count` addresses (lowest free) in `subnet`, then releases them all.
fn ipam_rates(subnet: &str, count: u32) -> Result<Map<String, Value>> {
    let ipam = Ipam::new(IpamConfig::docker_defaults("bench"));
    let pool = ipam.request_pool(&PoolRequest::with_subnet(parse_subnet("subnet", subnet)?))?;
    let mut addrs = Vec::with_capacity(count as usize);
    let t = Instant::now();
    for _ in 0..count {
        addrs.push(ipam.request_address(&pool.id, AddressRequest::Any)?);
    }
    let alloc = t.elapsed();
    let t = Instant::now();
    for a in &addrs {
        ipam.release_address(&pool.id, a.addr())?;
    }
    let release = t.elapsed();
    if ipam.usage(&pool.id)?.allocated > 2 {
        bail!("addresses left allocated after releasing all of them");
    }
    let rate = |d: Duration| (f64::from(count) / d.as_secs_f64()).round();
    let mut m = Map::new();
    m.insert("alloc_per_s".into(), json!(rate(alloc)));
    m.insert("release_per_s".into(), json!(rate(release)));
    m.insert("n".into(), json!(count));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(contenders: Option<&[&str]>, store: Option<StoreChoice>) -> Options {
        Options {
            quick: true,
            iterations: None,
            contenders: contenders.map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
            store,
            restart_endpoints: None,
            restart_networks: None,
            runs_datapath: 1,
            secs_datapath: 1,
        }
    }

    #[test]
    fn store_choice_picks_the_cnm_library_contender() {
        let all = [Kind::Cnm, Kind::CnmMemory, Kind::Floor, Kind::FloorDurable];
        assert_eq!(opts(None, None).kinds(&all), all.to_vec());
        assert_eq!(
            opts(None, Some(StoreChoice::Memory)).kinds(&all),
            [Kind::CnmMemory, Kind::Floor, Kind::FloorDurable]
        );
        assert_eq!(
            opts(None, Some(StoreChoice::Durable)).kinds(&all),
            [Kind::Cnm, Kind::Floor, Kind::FloorDurable]
        );
        // A scenario that lists only `cnm` measures it in memory with `--store memory`, also
        // when the contenders are restricted to `cnm`.
        let memory = opts(Some(&["cnm", "floor"]), Some(StoreChoice::Memory));
        assert_eq!(
            memory.kinds(&[Kind::Cnm, Kind::Floor, Kind::Netavark]),
            [Kind::CnmMemory, Kind::Floor]
        );
        assert_eq!(
            opts(Some(&["cnm-memory", "floor-durable"]), None).kinds(&all),
            [Kind::CnmMemory, Kind::FloorDurable]
        );
        assert!("memory".parse::<StoreChoice>().is_ok());
        assert!("disk".parse::<StoreChoice>().is_err());
    }
}
