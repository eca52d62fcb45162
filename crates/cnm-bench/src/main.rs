//! cnm-bench: cnm measured against the tools users would use instead, on one machine, in one
//! run, as ratios.
//!
//! **Owns**: the scenarios (attach/detach, ports, scale, parallel, IPAM, data path, restart,
//! memory), the contenders (cnm as a library with its durable store and in memory, the `floor`
//! of the same kernel messages with no bookkeeping and `floor-durable` with one synced record
//! per public call, `ip -batch` + `nft -f`, netavark 1.4 and 1.17, the CNI plugins, Docker), the
//! statistics (median, p95, ratio), where cnm's time goes (its tracing spans, `spans.rs`), the
//! table, the targets, `target/bench/latest.json`, the comparison with an older one
//! (`compare.rs`) and the README's table (`readme.rs`).
//! **Does not**: install or build the peers (`cargo xtask bench --install-peers` does), or
//! touch the machine's own network namespace: every contender run gets a throwaway "host"
//! namespace, peers are spawned from a thread inside it, and `/run/netns` and `/run/cnm` are
//! private tmpfs mounts of this process.
//!
//! ```text
//! cargo xtask bench --quick                  # about two minutes
//! cargo xtask bench --install-peers          # install the peers, then the full run
//! cargo xtask bench attach detach            # only these scenarios
//! cnm-bench --contenders cnm,floor -n 3 --out /tmp/x.json attach   # what the smoke test runs
//! cargo xtask bench --scale 10000            # only the 10,000-endpoint run (10 networks)
//! cargo xtask bench --churn 100000           # only the churn: 100,000 attach/detach cycles
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary that reports to its user

mod children;
mod compare;
mod contenders;
mod datapath;
mod docker;
mod env;
mod fixture;
mod overlay;
mod peers;
mod readme;
mod report;
mod restart;
mod scenarios;
mod spans;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::peers::Peers;
use crate::report::{Outcome, Report, SCENARIOS};
use crate::scenarios::{Bench, Options, StoreChoice};

const USAGE: &str = "\
usage: cnm-bench [--quick] [-n N] [--contenders A,B] [--store durable|memory] [--out FILE] [--peers-dir DIR]
                 [--cli CNM --cnmd CNMD | --cli-unavailable REASON] [--command TEXT]
                 [--compare OLD.json] [--readme README.md] [--no-run] [--scale N] [--churn N]
                 [--sim-hosts N] [--no-dns] [--restart-endpoints N] [--restart-networks M]
                 [SCENARIO…]
  --scale N           also N attaches over N/1000 networks (cnm and the floor; 1st, 1000th, N/2th,
                      Nth), cnm restarted with them, cnmd's memory with N endpoints and N ports
  --no-dns            cnm's networks without the embedded DNS (as plugin networks are): no DNS
                      listener, so two descriptors less per sandbox (for --scale 10000 under a
                      hard RLIMIT_NOFILE of 20,000); said in the output and the report
  --churn N           also N attach/detach cycles of cnm: p50/p99 and what is left (memory,
                      descriptors, links, nftables rules and elements, mounts) per 10,000
                      (with either flag and no scenario named, only what the flags ask for runs)
  --restart-endpoints N, --restart-networks M
                      the restart scenario with N endpoints (each joined, each publishing a
                      port) over M bridge networks (default 1000 over 1; 200 with --quick), on
                      the store of --store (default memory; durable: redb in the state dir);
                      -n R restarts the same state R times (default 1); runs only restart
                      when no scenario is named
  --sim-hosts N       hosts of the overlay's control-plane simulation (overlay-sim; default 100)
  --compare OLD.json  after the run, each figure against OLD.json's; a FLAG line and exit
                      status 1 for any figure more than 20% slower
  --readme FILE       rewrite the block between the bench-table markers of FILE from the run
  --no-run            measure nothing: compare and/or render the existing --out file
scenarios (default: all): attach detach ports100-setup ports100-teardown ports1000range-setup
  ports1000range-teardown scale-attach-{1,100,500,1000} scale-network-{1,200} parallel32
  ipam-v4-16 ipam-v6-64 ipam-memory-1m-v6 datapath-bridge datapath-published restart memory
  docker-connect docker-disconnect docker-network-create docker-network-rm docker-run-p docker-rm
  overlay-attach overlay-reach overlay-iperf overlay-iperf-encrypted overlay-alloc overlay-sim
  (also the groups: ports scale ipam datapath docker overlay)
The overlay group starts its own etcd (Debian's etcd-server) and three hosts (namespaces on an
underlay bridge, each with its own cnm controller); overlay-sim its own etcd and N agents.
Docker is measured on a dockerd of the bench's own (Debian's docker.io, in throwaway
namespaces), started when a scenario needs it and stopped at the end.
";

/// The command line, parsed.
#[derive(Debug, Default, PartialEq)]
struct Args {
    quick: bool,
    iterations: Option<usize>,
    contenders: Option<Vec<String>>,
    store: Option<StoreChoice>,
    out: Option<PathBuf>,
    peers_dir: Option<PathBuf>,
    cli: Option<PathBuf>,
    cnmd: Option<PathBuf>,
    cli_unavailable: Option<String>,
    command: Option<String>,
    compare: Option<PathBuf>,
    readme: Option<PathBuf>,
    no_run: bool,
    scale: Option<u32>,
    churn: Option<u32>,
    sim_hosts: Option<u32>,
    no_dns: bool,
    restart_endpoints: Option<u32>,
    restart_networks: Option<u32>,
    scenarios: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--quick" => a.quick = true,
            "-n" => a.iterations = Some(value("-n")?.parse().context("-n takes a number")?),
            "--contenders" => {
                a.contenders = Some(
                    value("--contenders")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--store" => a.store = Some(value("--store")?.parse()?),
            "--out" => a.out = Some(value("--out")?.into()),
            "--peers-dir" => a.peers_dir = Some(value("--peers-dir")?.into()),
            "--cli" => a.cli = Some(value("--cli")?.into()),
            "--cnmd" => a.cnmd = Some(value("--cnmd")?.into()),
            "--cli-unavailable" => a.cli_unavailable = Some(value("--cli-unavailable")?),
            "--command" => a.command = Some(value("--command")?),
            "--compare" => a.compare = Some(value("--compare")?.into()),
            "--readme" => a.readme = Some(value("--readme")?.into()),
            "--no-run" => a.no_run = true,
            "--no-dns" => a.no_dns = true,
            "--scale" => a.scale = Some(count("--scale", &value("--scale")?)?),
            "--churn" => a.churn = Some(count("--churn", &value("--churn")?)?),
            "--sim-hosts" => a.sim_hosts = Some(count("--sim-hosts", &value("--sim-hosts")?)?),
            "--restart-endpoints" => {
                a.restart_endpoints = Some(count(
                    "--restart-endpoints",
                    &value("--restart-endpoints")?,
                )?)
            }
            "--restart-networks" => {
                a.restart_networks =
                    Some(count("--restart-networks", &value("--restart-networks")?)?)
            }
            "-h" | "--help" => bail!("{USAGE}"),
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n{USAGE}"),
            name => a.scenarios.extend(expand(name)?),
        }
    }
    if a.scenarios.is_empty() && (a.restart_endpoints.is_some() || a.restart_networks.is_some()) {
        a.scenarios.push("restart".to_owned());
    }
    if a.scenarios.is_empty() && a.scale.is_none() && a.churn.is_none() {
        a.scenarios = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    }
    Ok(a)
}

/// A positive count for `flag`.
fn count(flag: &str, v: &str) -> Result<u32> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} takes a positive number, not {v:?}"),
    }
}

/// A scenario name or a group of them.
fn expand(name: &str) -> Result<Vec<String>> {
    let group: Vec<&str> = match name {
        "ports" => SCENARIOS
            .iter()
            .copied()
            .filter(|s| s.starts_with("ports"))
            .collect(),
        "scale" => SCENARIOS
            .iter()
            .copied()
            .filter(|s| s.starts_with("scale"))
            .collect(),
        "ipam" => SCENARIOS
            .iter()
            .copied()
            .filter(|s| s.starts_with("ipam"))
            .collect(),
        "datapath" => SCENARIOS
            .iter()
            .copied()
            .filter(|s| s.starts_with("datapath"))
            .collect(),
        "docker" => docker::SCENARIOS.to_vec(),
        "overlay" => overlay::SCENARIOS.to_vec(),
        one if SCENARIOS.contains(&one) => vec![one],
        other => bail!("unknown scenario {other}\n{USAGE}"),
    };
    Ok(group.into_iter().map(str::to_owned).collect())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let log = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            );
        // Its own filter: cnm's spans are timed whatever RUST_LOG says.
        let timing = spans::TIMES.layer().with_filter(spans::filter());
        tracing_subscriber::registry().with(log).with(timing).init();
    }
    let result = match args.first().map(String::as_str) {
        Some("__memory-child") => child(|rt| {
            let count = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1000);
            rt.block_on(children::memory_child(count))
        }),
        Some("__ipam-memory-child") => child(|_| children::ipam_memory_child()),
        _ => parse_args(&args).and_then(run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnm-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")
}

/// A measuring child: prints its JSON object on stdout.
fn child(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<serde_json::Value>) -> Result<()> {
    let rt = runtime()?;
    let value = f(&rt)?;
    println!("{value}");
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/latest.json"));
    if args.no_run {
        if args.compare.is_none() && args.readme.is_none() {
            bail!("--no-run needs --compare or --readme (there is nothing else to do)");
        }
    } else {
        measure(&args, &out)?;
    }
    let doc = read_json(&out)?;
    if let Some(path) = &args.readme {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let text = readme::splice(&text, &readme::render(&doc))
            .with_context(|| format!("in {}", path.display()))?;
        std::fs::write(path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
        println!("cnm-bench: rewrote the bench table in {}", path.display());
    }
    if let Some(old_path) = &args.compare {
        let old = read_json(old_path)?;
        let changes = compare::compare(&old, &doc, compare::DEFAULT_THRESHOLD);
        let label = old_path.display().to_string();
        print!(
            "\n{}",
            compare::text(&changes, &label, compare::DEFAULT_THRESHOLD)
        );
        let flagged = changes.iter().filter(|c| c.flagged).count();
        if flagged > 0 {
            bail!(
                "{flagged} figure(s) more than {:.0}% slower than in {label} (the FLAG lines above)",
                (compare::DEFAULT_THRESHOLD - 1.0) * 100.0
            );
        }
    }
    Ok(())
}

fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))
}

/// Descriptors the long runs need: cnm holds three per sandbox with one published port (the
/// embedded DNS's UDP and TCP listeners, the port's one dual-stack reservation; the namespace
/// is opened per use, netlink sockets are pooled), one without the DNS (`--no-dns`), so 10,000
/// sandboxes in this process (or in cnmd, which inherits the limit) need more than the usual
/// 1024, and with the DNS more than 20,000.
const LONG_RUN_FDS: u64 = 1 << 20;

/// Raises this process's descriptor limit to [`LONG_RUN_FDS`] (capped by the kernel's
/// `fs.nr_open`) with util-linux's `prlimit` (the library crates' nix build has no
/// `setrlimit`); says so and carries on when that fails.
fn raise_fd_limit() {
    let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(LONG_RUN_FDS, |max| max.min(LONG_RUN_FDS));
    let limit = format!("--nofile={want}:{want}");
    let pid = format!("--pid={}", std::process::id());
    match std::process::Command::new("prlimit")
        .args([pid.as_str(), limit.as_str()])
        .status()
    {
        Ok(s) if s.success() => {}
        _ => eprintln!(
            "cnm-bench: the descriptor limit stays as it is (raising the hard limit needs \
             CAP_SYS_RESOURCE): at three descriptors per cnm sandbox with the embedded DNS \
             (one with --no-dns), runs that hold more sandboxes than a third of it fail with \
             EMFILE"
        ),
    }
}

/// Runs the scenarios and writes the report to `out`.
fn measure(args: &Args, out: &std::path::Path) -> Result<()> {
    if args.scale.is_some() || args.churn.is_some() || args.restart_endpoints.is_some() {
        raise_fd_limit();
    }
    if args.no_dns {
        fixture::set_no_dns(true);
        eprintln!(
            "cnm-bench: --no-dns: cnm's networks have no embedded DNS (no DNS listener per \
             sandbox), as plugin networks do"
        );
    }
    // Before any thread exists (unshare of the mount namespace needs that).
    env::enter_private_mounts()?;
    let rt = runtime()?;
    let command = args.command.clone().unwrap_or_else(|| {
        std::iter::once("cnm-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let cli = match (&args.cli_unavailable, &args.cli, &args.cnmd) {
        (Some(why), _, _) => Err(why.clone()),
        (None, Some(cnm), Some(cnmd)) => Ok((cnm.clone(), cnmd.clone())),
        _ => Err("no cnm/cnmd binaries given (run through `cargo xtask bench`)".to_owned()),
    };
    let peers_dir = args
        .peers_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench/peers"));
    let mut bench = Bench {
        opts: Options {
            quick: args.quick,
            iterations: args.iterations,
            contenders: args.contenders.clone(),
            store: args.store,
            restart_endpoints: args.restart_endpoints,
            restart_networks: args.restart_networks,
            runs_datapath: if args.quick { 1 } else { 3 },
            secs_datapath: if args.quick { 1 } else { 3 },
        },
        peers: Peers::find(&peers_dir, cli),
        report: Report::default(),
    };
    let started = std::time::Instant::now();
    let mut scenarios = args.scenarios.clone();
    if let Some(n) = args.scale {
        scenarios.extend(
            [format!("scale{n}-restart"), format!("scale{n}-memory")]
                .into_iter()
                .chain(
                    [1, 1000, n / 2, n]
                        .into_iter()
                        .map(|m| format!("scale{n}-attach-{m}")),
                ),
        );
    }
    if let Some(n) = args.churn {
        scenarios.push(format!("churn{n}"));
    }
    // The bench's own dockerd, when Docker is measured (its absence is a status, not an error).
    let dockerd = if bench.opts.wants("docker") && docker::wanted(&scenarios) {
        eprintln!("cnm-bench: starting a private dockerd …");
        match docker::DockerEnv::start() {
            Ok(env) => {
                bench.peers.docker = Ok(env.peer.clone());
                Some(env)
            }
            Err(why) => {
                eprintln!("cnm-bench: docker {why}");
                bench.peers.docker = Err(why);
                None
            }
        }
    } else {
        None
    };
    rt.block_on(async {
        run_scenarios(&mut bench, &scenarios).await;
        if scenarios.iter().any(|s| s.starts_with("overlay")) {
            eprintln!("cnm-bench: overlay (3 hosts on etcd, then the control-plane simulation) …");
            let sizes = overlay_sizes(&bench.opts, args.sim_hosts);
            let iperf3 = bench.peers.iperf3.clone();
            for (scenario, outcome) in overlay::run(iperf3.as_deref(), sizes, &scenarios).await {
                bench.report.set(scenario, "cnm", outcome);
            }
        }
        if let Some(n) = args.scale {
            eprintln!(
                "cnm-bench: scale ({n} attaches over {} networks) …",
                n.div_ceil(1000)
            );
            bench.scale_big(n).await;
        }
        if let Some(n) = args.churn {
            eprintln!("cnm-bench: churn ({n} attach/detach cycles) …");
            bench.churn(n).await;
        }
        // Only the scenarios asked for stay in the report (a group may have filled its siblings).
        bench
            .report
            .scenarios
            .retain(|name, _| scenarios.contains(name));
    });
    if let Some(env) = dockerd {
        eprintln!("cnm-bench: stopping the private dockerd …");
        if let Err(e) = env.stop() {
            eprintln!("cnm-bench: warning: {e:#}");
        }
    }
    let date = report::rfc3339_now();
    let doc = bench.report.to_json(env::machine(), &date, &command);
    println!("\n{}", bench.report.table());
    println!("targets:\n{}", report::targets_text(&bench.report));
    println!(
        "cnm-bench: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("failed to write {}", out.display()))?;
    println!("cnm-bench: wrote {}", out.display());
    Ok(())
}

/// How much the overlay group does: `--quick` is the smoke test's size.
fn overlay_sizes(opts: &Options, sim_hosts: Option<u32>) -> overlay::Sizes {
    let quick = opts.quick;
    overlay::Sizes {
        attaches: opts.iterations.unwrap_or(if quick { 5 } else { 60 }),
        iperf_runs: opts.runs_datapath,
        iperf_secs: opts.secs_datapath,
        allocs_per_host: if quick { 10 } else { 150 },
        alloc_concurrency: 4,
        sim_hosts: sim_hosts.map_or(100, |n| n as usize),
        sim_endpoints: if quick { 10 } else { 50 },
    }
}

async fn run_scenarios(bench: &mut Bench, scenarios: &[String]) {
    let wants = |prefix: &str| scenarios.iter().any(|s| s.starts_with(prefix));
    let phase = |name: &str| eprintln!("cnm-bench: {name} …");
    if wants("attach") || wants("detach") {
        phase("attach/detach");
        bench.attach_detach().await;
    }
    if wants("ports") {
        phase("ports");
        bench.ports().await;
    }
    if wants("scale-attach") {
        phase("scale (1000 attaches on one network)");
        bench.scale_attach().await;
    }
    if wants("scale-network") {
        phase("scale (200 networks)");
        bench.scale_network().await;
    }
    if wants("parallel32") {
        phase("parallel");
        bench.parallel().await;
    }
    if wants("ipam") {
        phase("ipam");
        bench.ipam(scenarios).await;
    }
    if wants("datapath") {
        phase("data path");
        datapath(bench, scenarios).await;
    }
    if wants("docker-") {
        phase("docker (against the bench's own dockerd)");
        bench.docker(scenarios).await;
    }
    if wants("restart") {
        phase("restart");
        bench.restart().await;
    }
    if wants("memory") {
        phase("memory");
        bench.memory().await;
    }
}

async fn datapath(bench: &mut Bench, scenarios: &[String]) {
    let (runs, secs) = (bench.opts.runs_datapath, bench.opts.secs_datapath);
    let Some(iperf3) = bench.peers.iperf3.clone() else {
        for sc in ["datapath-bridge", "datapath-published"] {
            bench
                .report
                .set(sc, "cnm", Outcome::Status("not installed: iperf3".into()));
        }
        return;
    };
    if scenarios.iter().any(|s| s == "datapath-bridge") {
        match datapath::bridge(&iperf3, runs, secs).await {
            Ok((cnm, hand)) => {
                bench
                    .report
                    .set("datapath-bridge", "cnm", Outcome::Values(cnm));
                bench
                    .report
                    .set("datapath-bridge", "ip-batch", Outcome::Values(hand));
            }
            Err(e) => bench.report.set(
                "datapath-bridge",
                "cnm",
                Outcome::Status(format!("failed: {e:#}")),
            ),
        }
    }
    if scenarios.iter().any(|s| s == "datapath-published") {
        let outcome = match datapath::published(&iperf3, runs, secs).await {
            Ok(values) => Outcome::Values(values),
            Err(e) => Outcome::Status(format!("failed: {e:#}")),
        };
        bench.report.set("datapath-published", "cnm", outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_and_scenarios_parse() {
        let a = parse_args(&args(&[
            "--quick",
            "-n",
            "3",
            "--contenders",
            "cnm,floor",
            "attach",
            "ports",
        ]))
        .unwrap();
        assert!(a.quick);
        assert_eq!(a.iterations, Some(3));
        assert_eq!(a.contenders, Some(args(&["cnm", "floor"])));
        assert_eq!(
            a.scenarios,
            args(&[
                "attach",
                "ports100-setup",
                "ports100-teardown",
                "ports1000range-setup",
                "ports1000range-teardown"
            ])
        );
        assert_eq!(parse_args(&[]).unwrap().scenarios.len(), SCENARIOS.len());
        // The long runs only behind their flags, and then alone unless scenarios are named.
        let big = parse_args(&args(&["--scale", "10000", "--churn", "100000"])).unwrap();
        assert_eq!((big.scale, big.churn), (Some(10_000), Some(100_000)));
        assert!(big.scenarios.is_empty());
        let with = parse_args(&args(&["--churn", "10", "attach"])).unwrap();
        assert_eq!(with.scenarios, args(&["attach"]));
        assert!(parse_args(&args(&["--scale", "0"])).is_err());
        assert!(parse_args(&args(&["--churn", "many"])).is_err());
        assert!(parse_args(&args(&["atach"])).is_err());
        assert!(parse_args(&args(&["--fast"])).is_err());
        assert!(parse_args(&args(&["-n"])).is_err());
    }

    #[test]
    fn the_overlay_group_and_the_simulation_size_parse() {
        let a = parse_args(&args(&["--sim-hosts", "1000", "overlay"])).unwrap();
        assert_eq!(a.sim_hosts, Some(1000));
        assert_eq!(a.scenarios, args(&overlay::SCENARIOS));
        assert!(overlay::SCENARIOS.iter().all(|s| SCENARIOS.contains(s)));
        assert!(parse_args(&args(&["--sim-hosts", "0"])).is_err());
    }

    #[test]
    fn the_docker_group_names_its_scenarios_and_starts_dockerd() {
        let a = parse_args(&args(&["docker"])).unwrap();
        assert_eq!(a.scenarios, args(&docker::SCENARIOS));
        assert!(docker::SCENARIOS.iter().all(|s| SCENARIOS.contains(s)));
        assert!(docker::wanted(&a.scenarios));
        assert!(docker::wanted(&args(&["attach"])));
        assert!(!docker::wanted(&args(&["ports100-setup", "restart"])));
    }
}
