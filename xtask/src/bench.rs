//! `cargo xtask bench`: builds `cnm-bench` in release mode and runs it, after installing the
//! peers it compares cnm with when asked to; then the embedded DNS benchmark (scenario `dns`:
//! cnm-dns's `local_names` bench against aardvark-dns, with dnsperf).
//!
//! xtask stays light: it does not link any cnm crate; it builds and runs the `cnm-bench`
//! binary (crates/cnm-bench), which does the measuring and writes `target/bench/latest.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::packages;
use crate::run;

/// Debian packages of the peers and of the tools the benchmark drives.
pub const PEER_PACKAGES: &[&str] = &[
    // Docker is measured on a dockerd of the bench's own (throwaway namespaces, its own data
    // root and socket), never on a dockerd of the machine's; its containers run an image made
    // from busybox-static's one binary.
    "docker.io",
    "busybox-static",
    "netavark",
    "containernetworking-plugins",
    "iperf3",
    "dnsperf",
    "aardvark-dns",
    "protobuf-compiler",
];

/// Where Debian's `aardvark-dns` package puts the program (podman's helper directory), and
/// where other distributions do.
const AARDVARK_PATHS: &[&str] = &[
    "/usr/lib/podman/aardvark-dns",
    "/usr/libexec/podman/aardvark-dns",
];

/// The scenario that runs the embedded DNS benchmark (cnm-dns's `local_names` bench, not a
/// cnm-bench scenario): local names with dnsperf side by side with aardvark-dns, forwarded
/// queries against a local upstream, listener attach cost.
pub const DNS_SCENARIO: &str = "dns";

/// The current netavark, built from crates.io (Debian's is 1.4, iptables only).
pub const NETAVARK_VERSION: &str = "1.17.2";

/// Directories the benchmark mounts a private tmpfs on; xtask makes missing mount points and
/// removes them again afterwards, so the machine's /run is left as it was.
const MOUNT_POINTS: &[&str] = &["/run/netns", "/run/cnm"];

/// Options of `cargo xtask bench`.
#[derive(Debug, Default, PartialEq)]
pub struct BenchArgs {
    /// About two minutes instead of about fifteen.
    pub quick: bool,
    /// Install the peers (Debian packages, netavark from crates.io) first.
    pub install_peers: bool,
    /// `--compare OLD.json`: each figure against an older `latest.json`; more than 20% slower
    /// is a FLAG line and a failed run.
    pub compare: Option<PathBuf>,
    /// `--readme`: rewrite the README's bench table from `target/bench/latest.json`.
    pub readme: bool,
    /// `--no-run`: measure nothing, only compare and/or rewrite the README.
    pub no_run: bool,
    /// Options handed to cnm-bench as they are: `-n N`, `--contenders A,B`,
    /// `--store durable|memory`, `--scale N`, `--churn N`, `--sim-hosts N`, `--no-dns`.
    pub passthrough: Vec<String>,
    /// Scenarios (or groups) to run; empty means all.
    pub scenarios: Vec<String>,
}

/// Parses the options after `bench`.
pub fn parse(args: &[String]) -> Result<BenchArgs> {
    let mut parsed = BenchArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("`{flag}` needs a value"))
        };
        match arg.as_str() {
            "--quick" => parsed.quick = true,
            "--install-peers" => parsed.install_peers = true,
            "--compare" => parsed.compare = Some(value("--compare")?.into()),
            "--readme" => parsed.readme = true,
            "--no-run" => parsed.no_run = true,
            flag @ ("-n" | "--contenders" | "--store" | "--scale" | "--churn" | "--sim-hosts") => {
                let v = value(flag)?;
                parsed.passthrough.extend([flag.to_owned(), v]);
            }
            "--no-dns" => parsed.passthrough.push("--no-dns".to_owned()),
            flag if flag.starts_with('-') => bail!("unknown option `{flag}` for `bench`"),
            scenario => parsed.scenarios.push(scenario.to_owned()),
        }
    }
    if parsed.no_run && parsed.compare.is_none() && !parsed.readme {
        bail!("`--no-run` needs `--compare OLD.json` or `--readme`");
    }
    if parsed.no_run && (parsed.install_peers || !parsed.scenarios.is_empty()) {
        bail!("`--no-run` measures nothing: it takes no scenarios and no `--install-peers`");
    }
    Ok(parsed)
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts build outputs for this invocation.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

/// The text recorded as the run's command in the JSON.
pub fn command_line(args: &BenchArgs) -> String {
    let mut parts = vec!["cargo xtask bench".to_owned()];
    if args.quick {
        parts.push("--quick".into());
    }
    if args.install_peers {
        parts.push("--install-peers".into());
    }
    parts.extend(args.passthrough.iter().cloned());
    parts.extend(args.scenarios.iter().cloned());
    parts.join(" ")
}

/// Runs the benchmark; returns whether it completed.
pub fn bench(args: &BenchArgs) -> Result<bool> {
    if args.no_run {
        return report_only(args);
    }
    if !packages::is_root()? {
        bail!(
            "the benchmark needs root (it creates network namespaces and a private mount namespace); \
             run `cargo xtask bench` as root"
        );
    }
    let root = workspace_root();
    let bench_dir = root.join("target").join("bench");
    let peers_dir = bench_dir.join("peers");
    let cargo = run::cargo_program();

    if args.install_peers {
        install_peers(&cargo, &peers_dir)?;
    }
    // `--scale`/`--churn` alone run only what they ask for (see cnm-bench's usage).
    let long_runs = args
        .passthrough
        .iter()
        .any(|a| a == "--scale" || a == "--churn");
    let dns_wanted = (args.scenarios.is_empty() && !long_runs)
        || args.scenarios.iter().any(|s| s == DNS_SCENARIO);
    let others: Vec<String> = args
        .scenarios
        .iter()
        .filter(|s| *s != DNS_SCENARIO)
        .cloned()
        .collect();
    if !args.scenarios.is_empty() && others.is_empty() {
        return dns_bench(&cargo, args.quick);
    }

    let release = ["build", "--release", "--quiet"].map(String::from).to_vec();
    let mut build = release.clone();
    build.extend(["-p", "cnm-bench", "--bin", "cnm-bench"].map(String::from));
    if !run::status(&cargo, &build)? {
        bail!("cnm-bench did not build");
    }
    // The CLI contender needs both binaries; if they do not build, it is reported, not fatal.
    let mut cli_build = release;
    cli_build.extend(["-p", "cnm-cli", "-p", "cnm-daemon"].map(String::from));
    let cli_ok = run::status(&cargo, &cli_build)?;

    let out_dir = target_dir(&root).join("release");
    let mut bench_args: Vec<String> = Vec::new();
    if args.quick {
        bench_args.push("--quick".into());
    }
    bench_args.extend([
        "--out".into(),
        bench_dir.join("latest.json").to_string_lossy().into_owned(),
        "--peers-dir".into(),
        peers_dir.to_string_lossy().into_owned(),
        "--command".into(),
        command_line(args),
    ]);
    bench_args.extend(args.passthrough.iter().cloned());
    bench_args.extend(report_args(args, &root));
    let (cnm, cnmd) = (out_dir.join("cnm"), out_dir.join("cnmd"));
    if cli_ok && cnm.is_file() && cnmd.is_file() {
        bench_args.extend([
            "--cli".into(),
            cnm.to_string_lossy().into_owned(),
            "--cnmd".into(),
            cnmd.to_string_lossy().into_owned(),
        ]);
    } else {
        bench_args.extend([
            "--cli-unavailable".into(),
            "cnm-cli/cnm-daemon do not build in release mode (cargo's errors are above)".into(),
        ]);
    }
    bench_args.extend(others);

    let ok = crate::privileged::with_mount_points(MOUNT_POINTS, || {
        run::status(&out_dir.join("cnm-bench").to_string_lossy(), &bench_args)
    })??;
    let dns_ok = if dns_wanted {
        dns_bench(&cargo, args.quick)?
    } else {
        true
    };
    Ok(ok && dns_ok)
}

/// cnm-bench's `--compare` and `--readme` options for these arguments.
fn report_args(args: &BenchArgs, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(old) = &args.compare {
        out.extend(["--compare".to_owned(), old.to_string_lossy().into_owned()]);
    }
    if args.readme {
        let readme = root.join("README.md");
        out.extend(["--readme".to_owned(), readme.to_string_lossy().into_owned()]);
    }
    out
}

/// `--no-run`: cnm-bench compares and/or renders the last run's `latest.json`, measuring
/// nothing (no root needed).
fn report_only(args: &BenchArgs) -> Result<bool> {
    let root = workspace_root();
    let cargo = run::cargo_program();
    let build = [
        "build",
        "--release",
        "--quiet",
        "-p",
        "cnm-bench",
        "--bin",
        "cnm-bench",
    ]
    .map(String::from)
    .to_vec();
    if !run::status(&cargo, &build)? {
        bail!("cnm-bench did not build");
    }
    let latest = root.join("target").join("bench").join("latest.json");
    let mut bench_args = vec![
        "--no-run".to_owned(),
        "--out".to_owned(),
        latest.to_string_lossy().into_owned(),
    ];
    bench_args.extend(report_args(args, &root));
    let program = target_dir(&root).join("release").join("cnm-bench");
    run::status(&program.to_string_lossy(), &bench_args)
}

/// The embedded DNS benchmark: cnm-dns's `local_names` bench (release), in a private mount
/// namespace (its test host bind-mounts namespaces under a temporary directory), with dnsperf,
/// and aardvark-dns beside cnm when it is installed.
fn dns_bench(cargo: &str, quick: bool) -> Result<bool> {
    let seconds = if quick { "2" } else { "5" };
    let mut args: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        cargo,
        "bench",
        "--quiet",
        "-p",
        "cnm-dns",
        "--bench",
        "local_names",
        "--",
        "--names",
        "1000",
        "--seconds",
        seconds,
        "--rounds",
        "3",
        "--dnsperf",
        // p99 also at a fixed rate below saturation (dnsperf -Q), as latency goals are stated.
        "--rate",
        "20000",
        // Full load again with each server capped at a quarter of a core (a throwaway cgroup's
        // CPU quota), so that the server, not dnsperf, is the bottleneck on two cores: at half a
        // core cnm was throttled in only 32-75% of the quota's periods (dnsperf's own cost
        // bounded it), at a quarter in 72-99%.
        "--server-cpu",
        "0.25",
    ]
    .map(String::from)
    .to_vec();
    match AARDVARK_PATHS.iter().find(|p| Path::new(p).is_file()) {
        Some(p) => args.extend(["--aardvark".to_owned(), (*p).to_owned()]),
        None => println!(
            "xtask: aardvark-dns is not installed (cargo xtask bench --install-peers): cnm's DNS is measured alone"
        ),
    }
    if packages::find_program("dnsperf").is_none() {
        bail!("dnsperf is not installed: run `cargo xtask bench --install-peers dns`");
    }
    run::status("unshare", &args)
}

/// Installs the peers' Debian packages and builds netavark from crates.io (niced: it takes
/// about twelve minutes on two cores) under `target/bench/peers/`.
fn install_peers(cargo: &str, peers_dir: &Path) -> Result<()> {
    println!("xtask: installing the peers: {}", PEER_PACKAGES.join(" "));
    packages::apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(PEER_PACKAGES);
    {
        // docker.io's maintainer scripts would start a dockerd in the machine's own namespace.
        let _no_services = packages::NoServiceStarts::install()?;
        packages::apt_get(&install)?;
    }

    let root = peers_dir.join(format!("netavark-{NETAVARK_VERSION}"));
    if root.join("bin").join("netavark").is_file() {
        println!(
            "xtask: netavark {NETAVARK_VERSION} already built in {}",
            root.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(peers_dir)
        .with_context(|| format!("failed to create {}", peers_dir.display()))?;
    let root_arg = root.to_string_lossy().into_owned();
    let args = [
        "-n",
        "19",
        cargo,
        "install",
        "netavark",
        "--version",
        NETAVARK_VERSION,
        "--locked",
        "--root",
        &root_arg,
    ]
    .map(String::from);
    println!("xtask: building netavark {NETAVARK_VERSION} (about 12 minutes on 2 cores)");
    // Outside the workspace, so its toolchain file and config do not apply to the peer.
    let status = Command::new("nice")
        .args(&args)
        .current_dir(peers_dir)
        .status()
        .context("failed to start `nice cargo install netavark`")?;
    if !status.success() {
        bail!("`cargo install netavark --version {NETAVARK_VERSION}` failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::args;

    #[test]
    fn bench_options_parse_and_are_recorded() {
        let parsed = parse(&args(&["--quick", "attach", "ports"])).unwrap();
        assert_eq!(
            parsed,
            BenchArgs {
                quick: true,
                scenarios: args(&["attach", "ports"]),
                ..BenchArgs::default()
            }
        );
        assert_eq!(
            command_line(&parsed),
            "cargo xtask bench --quick attach ports"
        );
        assert!(parse(&args(&["--fast"])).is_err());
        assert_eq!(parse(&[]).unwrap(), BenchArgs::default());
        assert_eq!(
            parse(&args(&["--scale", "10000", "--churn", "100000"]))
                .unwrap()
                .passthrough,
            args(&["--scale", "10000", "--churn", "100000"])
        );
    }

    #[test]
    fn compare_readme_and_passthrough_options_parse() {
        let parsed = parse(&args(&[
            "--compare",
            "old.json",
            "--readme",
            "-n",
            "5",
            "--store",
            "memory",
            "--contenders",
            "cnm,floor",
            "attach",
        ]))
        .unwrap();
        assert_eq!(parsed.compare, Some(PathBuf::from("old.json")));
        assert!(parsed.readme && !parsed.no_run);
        assert_eq!(
            parsed.passthrough,
            args(&["-n", "5", "--store", "memory", "--contenders", "cnm,floor"])
        );
        assert_eq!(
            command_line(&parsed),
            "cargo xtask bench -n 5 --store memory --contenders cnm,floor attach"
        );
        let root = Path::new("/ws");
        assert_eq!(
            report_args(&parsed, root),
            args(&["--compare", "old.json", "--readme", "/ws/README.md"])
        );
        assert!(parse(&args(&["--compare"])).is_err());
        assert!(parse(&args(&["--no-run"])).is_err(), "nothing to do");
        assert!(parse(&args(&["--no-run", "--readme", "attach"])).is_err());
        assert!(parse(&args(&["--no-run", "--readme"])).is_ok());
    }
}
