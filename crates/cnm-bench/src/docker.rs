//! Docker measured for real: the bench's own dockerd, and the `docker-*` scenarios that put
//! Docker's network operations beside cnm's equivalents.
//!
//! **The daemon** ([`DockerEnv`]): Debian's dockerd 20.10 started by cnm-testkit's
//! [`Dockerd`] in throwaway network, mount and PID namespaces with its own data root, exec
//! root, pidfile and socket. It programs iptables as it does on a real host, but inside its own
//! network namespace (the machine's tables are never touched). The busybox-static image is
//! imported from a tarball and a keeper container is started on the default bridge. At the end
//! of the run every container is removed and dockerd (with its containerd, shims and
//! namespaces) is stopped and its directory removed. When it cannot start, every Docker figure
//! is a "not measured: why" line, and the rest of the bench runs.
//!
//! **The scenarios**, each alternating its contenders every round (A B C A B C …):
//! - `docker-connect` / `docker-disconnect`: a running container (sandbox) already on a bridge
//!   network connected to a second bridge network and disconnected again. `docker`: the docker
//!   CLI against dockerd; `cnmd`: the same docker CLI binary and the same command against
//!   cnmd's Engine API (the container is a cnm sandbox); `cnm`: the library (endpoint + join,
//!   leave + delete).
//! - `docker-network-create` / `docker-network-rm`: `docker network create --subnet` and
//!   `docker network rm`, against dockerd and cnmd; the library's `new_network`/`delete`.
//! - `docker-run-p` / `docker-rm`: `docker run -d -p H:80` of the keeper image and
//!   `docker rm -f`: the container's start and stop included (extra field `network_none_ms`:
//!   the same `docker run -d --network none`, so the difference is roughly what the network and
//!   the port cost). cnm's equivalent is its attach with one published port: `cnm-cli` (two
//!   `cnm` CLI calls to cnmd: `sandbox create`, `connect -p`) and `cnm` (the library).
//!
//! Fairness: `docker` and `cnmd` are measured through the very same client (Debian's docker
//! CLI, one process per call, its start included on both sides), so their ratio (`x_cnmd` on
//! Docker's row) is the servers' difference; `x cnm` in the table is against the library.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cnm::{Controller, Endpoint, EndpointOptions, Network, Sandbox};
use cnm_testkit::TestHost;
use cnm_testkit::dockerd::{self, Dockerd};
use ipnet::IpNet;
use serde_json::{Map, json};

use crate::contenders::{Contender, Kind, Unavailable, bench_net, one_port};
use crate::fixture;
use crate::peers::{Cmd, DockerPeer, docker_cli};
use crate::report::{Outcome, round3};
use crate::scenarios::Bench;
use crate::stats::{Summary, ratio};

/// The image the containers run.
pub const IMAGE: &str = "cnm-bench-busybox:latest";
/// The keeper container's name.
const KEEPER: &str = "cnm-bench-keeper";
/// The second network of the connect scenario (on every side).
const CONN_NET: &str = "connnet";
const CONN_SUBNET: &str = "10.90.0.0/16";

/// The `docker-*` scenarios, in report order.
pub const SCENARIOS: [&str; 6] = [
    "docker-connect",
    "docker-disconnect",
    "docker-network-create",
    "docker-network-rm",
    "docker-run-p",
    "docker-rm",
];

/// The bench's own dockerd, with the image imported and the keeper running.
pub struct DockerEnv {
    daemon: Dockerd,
    /// How the contenders reach it.
    pub peer: DockerPeer,
}

impl DockerEnv {
    /// Starts dockerd (blocking); `Err` is the report's status line.
    pub fn start() -> Result<DockerEnv, String> {
        if let Err(e) = dockerd::check_installed() {
            return Err(format!(
                "not installed: {e:#} (`cargo xtask bench --install-peers` installs docker.io)"
            ));
        }
        let options = dockerd::Options {
            name: "cnm-bench".into(),
            iptables: true,
        };
        let daemon = Dockerd::start(&options)
            .map_err(|e| format!("not measured: dockerd did not start: {}", one_line(&e)))?;
        let setup = || -> Result<()> {
            daemon.import_busybox(IMAGE, &["sh", "sleep"])?;
            daemon.docker(&["run", "-d", "--name", KEEPER, IMAGE, "sleep", "1000000"])?;
            Ok(())
        };
        if let Err(e) = setup() {
            let why = format!(
                "not measured: dockerd started but the image or keeper failed: {}",
                one_line(&e)
            );
            if let Err(e) = daemon.stop() {
                eprintln!("cnm-bench: stopping dockerd: {e:#}");
            }
            return Err(why);
        }
        let peer = DockerPeer {
            host_arg: daemon.host_arg(),
            config: daemon.cli_config(),
            keeper: KEEPER.into(),
            image: IMAGE.into(),
        };
        Ok(DockerEnv { daemon, peer })
    }

    /// Removes the containers and stops dockerd and everything it started (blocking).
    pub fn stop(self) -> Result<()> {
        self.daemon.stop()
    }
}

/// An error as one line (its chain joined), shortened for a table cell.
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").replace('\n', " | ");
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The library side: a controller whose keeper sandbox is on `benchnet`, and `connnet`.
struct CnmSide {
    _host: TestHost,
    ctl: Controller,
    net: Network,
    conn: Network,
    keeper: Sandbox,
    connected: Option<Endpoint>,
    networks: BTreeMap<u32, Network>,
    runs: BTreeMap<u32, (Sandbox, Endpoint)>,
}

impl CnmSide {
    async fn setup() -> Result<CnmSide> {
        let host = TestHost::new().await?;
        let ctl = host.controller().await?;
        let bn = bench_net();
        let net = fixture::bridge_network(&ctl, &bn.name, IpNet::V4(bn.subnet)).await?;
        let (keeper, _) = fixture::joined(&ctl, &net, "keeper", EndpointOptions::default()).await?;
        let conn = fixture::bridge_network(&ctl, CONN_NET, CONN_SUBNET.parse()?).await?;
        Ok(CnmSide {
            _host: host,
            ctl,
            net,
            conn,
            keeper,
            connected: None,
            networks: BTreeMap::new(),
            runs: BTreeMap::new(),
        })
    }
}

/// cnmd (with `benchnet`) driven by the docker CLI, and by the cnm CLI for what the docker
/// CLI cannot ask it (a sandbox, the `run -p` equivalent).
struct CnmdSide {
    cli: Contender,
    host_arg: String,
    config: tempfile::TempDir,
}

/// The attach index of cnmd's keeper sandbox (`c60001`; far above any timed one).
const CNMD_KEEPER: u32 = 60_001;

impl CnmdSide {
    async fn setup(bench: &Bench) -> Result<CnmdSide, Unavailable> {
        if !std::path::Path::new(dockerd::DOCKER).is_file() {
            return Err(Unavailable::Status(format!(
                "not installed: {} (docker.io), the client cnmd is driven with",
                dockerd::DOCKER
            )));
        }
        let cli = Contender::setup(Kind::Cli, &bench.peers).await?;
        let host_arg = cli
            .cnmd_host()
            .context("the CLI contender has a daemon")?
            .to_owned();
        let side = CnmdSide {
            cli,
            host_arg,
            config: tempfile::tempdir().context("docker CLI config dir")?,
        };
        side.cli.attach(CNMD_KEEPER, &[]).await?;
        side.docker(&["network", "create", "--subnet", CONN_SUBNET, CONN_NET])
            .await?;
        Ok(side)
    }

    fn cmd(&self, args: &[&str]) -> Cmd {
        docker_cli(&self.host_arg, self.config.path(), args)
    }

    async fn docker(&self, args: &[&str]) -> Result<()> {
        self.cmd(args).run_in(self.cli.netns()).await?;
        Ok(())
    }
}

/// dockerd through the docker CLI; the CLI runs from a throwaway namespace like the others'.
struct DockerSide {
    host: TestHost,
    peer: DockerPeer,
}

impl DockerSide {
    async fn setup(peer: DockerPeer) -> Result<DockerSide> {
        let side = DockerSide {
            host: TestHost::new().await?,
            peer,
        };
        side.docker(&["network", "create", "--subnet", CONN_SUBNET, CONN_NET])
            .await?;
        Ok(side)
    }

    async fn docker(&self, args: &[&str]) -> Result<()> {
        self.peer.cmd(args).run_in(self.host.netns()).await?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pair {
    Connect,
    Network,
    Run,
}

impl Pair {
    fn scenarios(self) -> (&'static str, &'static str) {
        match self {
            Pair::Connect => ("docker-connect", "docker-disconnect"),
            Pair::Network => ("docker-network-create", "docker-network-rm"),
            Pair::Run => ("docker-run-p", "docker-rm"),
        }
    }
}

enum Side {
    Cnm(Box<CnmSide>),
    Cnmd(Box<CnmdSide>),
    Docker(Box<DockerSide>),
}

impl Side {
    /// The contender's name in the report for `pair`.
    fn name(&self, pair: Pair) -> &'static str {
        match (self, pair) {
            (Side::Cnm(_), _) => "cnm",
            (Side::Cnmd(_), Pair::Run) => "cnm-cli",
            (Side::Cnmd(_), _) => "cnmd",
            (Side::Docker(_), _) => "docker",
        }
    }

    /// The first operation of `pair` (connect, create, run) for round `i`.
    async fn up(&mut self, pair: Pair, i: u32) -> Result<()> {
        let subnet = round_subnet(i);
        match (self, pair) {
            (Side::Cnm(c), Pair::Connect) => {
                let ep = c
                    .conn
                    .create_endpoint(&format!("keeper-{i}"), EndpointOptions::default())
                    .await?;
                ep.join_sandbox(&c.keeper, []).await?;
                c.connected = Some(ep);
            }
            (Side::Cnm(c), Pair::Network) => {
                let net = fixture::bridge_network(&c.ctl, &round_net(i), subnet.parse()?).await?;
                c.networks.insert(i, net);
            }
            (Side::Cnm(c), Pair::Run) => {
                let port: cnm::PortBinding = one_port(i)[0].docker_syntax().parse()?;
                let options = EndpointOptions::default().publish(port);
                let joined = fixture::joined(&c.ctl, &c.net, &format!("r{i}"), options).await?;
                c.runs.insert(i, joined);
            }
            (Side::Cnmd(c), Pair::Connect) => {
                let keeper = format!("c{CNMD_KEEPER}");
                c.docker(&["network", "connect", CONN_NET, &keeper]).await?;
            }
            (Side::Cnmd(c), Pair::Network) => {
                c.docker(&["network", "create", "--subnet", &subnet, &round_net(i)])
                    .await?;
            }
            (Side::Cnmd(c), Pair::Run) => c.cli.attach(i, &one_port(i)).await?,
            (Side::Docker(d), Pair::Connect) => {
                let keeper = d.peer.keeper.clone();
                d.docker(&["network", "connect", CONN_NET, &keeper]).await?;
            }
            (Side::Docker(d), Pair::Network) => {
                d.docker(&["network", "create", "--subnet", &subnet, &round_net(i)])
                    .await?;
            }
            (Side::Docker(d), Pair::Run) => {
                let port = one_port(i)[0].docker_syntax();
                let image = d.peer.image.clone();
                d.docker(&[
                    "run",
                    "-d",
                    "-p",
                    &port,
                    "--name",
                    &format!("r{i}"),
                    &image,
                    "sleep",
                    "1000000",
                ])
                .await?;
            }
        }
        Ok(())
    }

    /// The second operation of `pair` (disconnect, rm, rm -f): undoes [`Side::up`].
    async fn down(&mut self, pair: Pair, i: u32) -> Result<()> {
        match (self, pair) {
            (Side::Cnm(c), Pair::Connect) => {
                let ep = c.connected.take().context("not connected")?;
                ep.leave_sandbox(&c.keeper).await?;
                ep.delete().await?;
            }
            (Side::Cnm(c), Pair::Network) => {
                let net = c.networks.remove(&i).context("no such network")?;
                net.delete().await?;
            }
            (Side::Cnm(c), Pair::Run) => {
                let (sb, ep) = c.runs.remove(&i).context("no such sandbox")?;
                ep.leave_sandbox(&sb).await?;
                ep.delete().await?;
                sb.delete().await?;
            }
            (Side::Cnmd(c), Pair::Connect) => {
                let keeper = format!("c{CNMD_KEEPER}");
                c.docker(&["network", "disconnect", CONN_NET, &keeper])
                    .await?;
            }
            (Side::Cnmd(c), Pair::Network) => c.docker(&["network", "rm", &round_net(i)]).await?,
            (Side::Cnmd(c), Pair::Run) => c.cli.detach(i, &one_port(i)).await?,
            (Side::Docker(d), Pair::Connect) => {
                let keeper = d.peer.keeper.clone();
                d.docker(&["network", "disconnect", CONN_NET, &keeper])
                    .await?;
            }
            (Side::Docker(d), Pair::Network) => d.docker(&["network", "rm", &round_net(i)]).await?,
            (Side::Docker(d), Pair::Run) => d.docker(&["rm", "-f", &format!("r{i}")]).await?,
        }
        Ok(())
    }

    /// Docker only: `docker run -d --network none` and its `rm -f`, the container's own cost.
    async fn run_none(&self, i: u32) -> Result<Option<Duration>> {
        let Side::Docker(d) = self else {
            return Ok(None);
        };
        let name = format!("n{i}");
        let t = Instant::now();
        d.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &name,
            &d.peer.image,
            "sleep",
            "1000000",
        ])
        .await?;
        let took = t.elapsed();
        d.docker(&["rm", "-f", &name]).await?;
        Ok(Some(took))
    }

    /// Undoes the setup where dropping does not.
    async fn finish(self) -> Result<()> {
        match self {
            Side::Cnm(c) => {
                for (_, (sb, ep)) in c.runs {
                    ep.leave_sandbox(&sb).await?;
                    ep.delete().await?;
                    sb.delete().await?;
                }
                Ok(())
            }
            Side::Cnmd(c) => c.cli.finish().await,
            Side::Docker(d) => d.docker(&["network", "rm", CONN_NET]).await,
        }
    }
}

/// Round `i`'s network in the create/rm scenario.
fn round_net(i: u32) -> String {
    format!("dn{i}")
}

/// Round `i`'s subnet: a /24 in 10.120.0.0/14, clear of every other network of the bench.
fn round_subnet(i: u32) -> String {
    format!("10.{}.{}.0/24", 120 + (i / 256) % 4, i % 256)
}

#[derive(Default)]
struct Samples {
    up: Vec<Duration>,
    down: Vec<Duration>,
    none: Vec<Duration>,
}

impl Bench {
    /// The `docker-*` scenarios (those of `scenarios` that start with `docker-`).
    pub async fn docker(&mut self, scenarios: &[String]) {
        let n_connect = self
            .opts
            .iterations
            .unwrap_or(if self.opts.quick { 20 } else { 100 });
        let n_other = if self.opts.quick { 10 } else { 30 };
        let pairs: Vec<(Pair, usize)> = [
            (Pair::Connect, n_connect),
            (Pair::Network, n_other),
            (Pair::Run, n_other),
        ]
        .into_iter()
        .filter(|(p, _)| {
            let (a, b) = p.scenarios();
            scenarios.iter().any(|s| s == a || s == b)
        })
        .collect();
        if pairs.is_empty() {
            return;
        }
        let all: Vec<&str> = pairs
            .iter()
            .flat_map(|(p, _)| {
                let (a, b) = p.scenarios();
                [a, b]
            })
            .collect();
        let mut sides = self.docker_sides(&all).await;
        for (pair, n) in pairs {
            self.docker_pair(&mut sides, pair, n).await;
        }
        for side in sides {
            let name = side.name(Pair::Connect);
            if let Err(e) = side.finish().await {
                tracing::warn!(contender = name, error = %format!("{e:#}"), "cleanup failed");
            }
        }
    }

    async fn docker_sides(&mut self, scenarios: &[&str]) -> Vec<Side> {
        let mut sides = Vec::new();
        let unavailable = |report: &mut crate::report::Report, names: &[&str], why: String| {
            for sc in scenarios {
                for name in names {
                    // `cnm-cli` stands for cnmd only in the run scenarios, `cnmd` elsewhere.
                    let run = sc.starts_with("docker-r");
                    if (*name == "cnm-cli" && !run) || (*name == "cnmd" && run) {
                        continue;
                    }
                    report.set(sc, name, Outcome::Status(why.clone()));
                }
            }
        };
        if self.opts.wants("cnm") {
            match CnmSide::setup().await {
                Ok(c) => sides.push(Side::Cnm(Box::new(c))),
                Err(e) => unavailable(&mut self.report, &["cnm"], format!("failed: {e:#}")),
            }
        }
        if self.opts.wants("cnmd") || self.opts.wants("cnm-cli") {
            match CnmdSide::setup(self).await {
                Ok(c) => sides.push(Side::Cnmd(Box::new(c))),
                Err(Unavailable::Status(s)) => {
                    unavailable(&mut self.report, &["cnmd", "cnm-cli"], s);
                }
                Err(Unavailable::Failed(e)) => unavailable(
                    &mut self.report,
                    &["cnmd", "cnm-cli"],
                    format!("failed: {e:#}"),
                ),
            }
        }
        if self.opts.wants("docker") {
            match self.peers.docker.clone() {
                Ok(peer) => match DockerSide::setup(peer).await {
                    Ok(d) => sides.push(Side::Docker(Box::new(d))),
                    Err(e) => {
                        unavailable(&mut self.report, &["docker"], format!("failed: {e:#}"));
                    }
                },
                Err(why) => unavailable(&mut self.report, &["docker"], why),
            }
        }
        sides
    }

    /// `n` timed rounds of one pair (after one untimed), the sides alternating.
    async fn docker_pair(&mut self, sides: &mut [Side], pair: Pair, n: usize) {
        let (a_name, b_name) = pair.scenarios();
        let mut samples: Vec<Samples> = sides.iter().map(|_| Samples::default()).collect();
        let mut dead = vec![false; sides.len()];
        let warmup = 1;
        for round in 0..(n + warmup) {
            let i = round as u32;
            for j in 0..sides.len() {
                let k = (round + j) % sides.len();
                if dead[k] {
                    continue;
                }
                let side = &mut sides[k];
                let result = async {
                    let t = Instant::now();
                    side.up(pair, i).await?;
                    let up = t.elapsed();
                    let t = Instant::now();
                    side.down(pair, i).await?;
                    let down = t.elapsed();
                    let none = if pair == Pair::Run {
                        side.run_none(i).await?
                    } else {
                        None
                    };
                    Ok::<_, anyhow::Error>((up, down, none))
                }
                .await;
                match result {
                    Ok((up, down, none)) if round >= warmup => {
                        samples[k].up.push(up);
                        samples[k].down.push(down);
                        samples[k].none.extend(none);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let name = side.name(pair);
                        tracing::warn!(contender = name, error = %format!("{e:#}"), "docker scenario failed");
                        for sc in [a_name, b_name] {
                            self.report
                                .set(sc, name, Outcome::Status(format!("failed: {e:#}")));
                        }
                        dead[k] = true;
                    }
                }
            }
        }
        // Docker's figures against cnmd's, both through the same docker CLI.
        let median_of = |name: &str, up: bool| {
            sides
                .iter()
                .zip(&samples)
                .zip(&dead)
                .find(|((s, _), d)| s.name(pair) == name && !**d)
                .and_then(|((_, x), _)| Summary::of(if up { &x.up } else { &x.down }))
                .map(|s| s.median_ms)
        };
        let server = if pair == Pair::Run { "cnm-cli" } else { "cnmd" };
        let bases = (median_of(server, true), median_of(server, false));
        for ((side, x), d) in sides.iter().zip(&samples).zip(&dead) {
            if *d {
                continue;
            }
            let name = side.name(pair);
            for (sc, list, base) in [(a_name, &x.up, bases.0), (b_name, &x.down, bases.1)] {
                let Some(s) = Summary::of(list) else {
                    continue;
                };
                let mut extra = Map::new();
                if name == "docker" {
                    if let Some(r) = base.and_then(|b| ratio(s.median_ms, b)) {
                        extra.insert(format!("x_{}", server.replace('-', "_")), json!(round3(r)));
                    }
                    if sc == a_name
                        && let Some(none) = Summary::of(&x.none)
                    {
                        extra.insert("network_none_ms".into(), json!(round3(none.median_ms)));
                    }
                }
                self.report.set(sc, name, Outcome::Timed(s, extra));
            }
        }
    }
}

/// Whether any of `scenarios` measures Docker (so the bench starts its dockerd).
pub fn wanted(scenarios: &[String]) -> bool {
    scenarios
        .iter()
        .any(|s| s == "attach" || s == "detach" || s.starts_with("docker-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_subnets_are_distinct_and_clear_of_the_others() {
        let nets: std::collections::BTreeSet<String> = (0..1000).map(round_subnet).collect();
        assert_eq!(nets.len(), 1000);
        for n in &nets {
            let net: ipnet::Ipv4Net = n.parse().unwrap();
            assert!(!bench_net().subnet.contains(&net.network()));
            let conn: ipnet::Ipv4Net = CONN_SUBNET.parse().unwrap();
            assert!(!conn.contains(&net.network()));
        }
    }
}
