//! `cargo xtask`: cnm's task runner.
//!
//! `cargo xtask test` is the one command that proves the workspace: it installs the system tools the
//! tests need, checks formatting and lints, runs the unit and doc tests, then runs every privileged
//! test (those marked `#[ignore = "privileged: run cargo xtask test"]`) inside a private mount
//! namespace with its own tmpfs on `/run/cnm` and `/run/netns`, and prints one summary.
//! `cargo xtask ci` is exactly what CI runs (the same as `test`).
//!
//! **Owns**: the order of the checks, the system package list, counting libtest results.
//! **Does not**: decide what a test does; each privileged test builds its own throwaway namespaces.
//!
//! ```text
//! cargo xtask test                      # everything, as CI runs it
//! cargo xtask test --no-lint            # skip fmt and clippy
//! cargo xtask test --privileged-only    # only the privileged tests
//! cargo xtask test -p cnm-testkit probe # one crate, tests whose name contains "probe"
//! cargo xtask bench --quick             # cnm against its peers, about two minutes
//! cargo xtask soak --kills 200           # random operations killed with SIGKILL, restart, check
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary that reports to its user

mod bench;
mod libtest;
mod outside;
mod packages;
mod privileged;
mod run;
mod soak;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::libtest::Counts;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test [--no-lint] [--privileged-only] [-p CRATE]... [FILTER]... [-- LIBTEST-ARGS]
        install missing test tools, fmt --check, clippy -D warnings, unit + doc tests,
        then every privileged test inside a private mount namespace
  ci    exactly what CI runs (the same as `test`, no options)
  bench [--quick] [--install-peers] [-n N] [--contenders A,B] [--store durable|memory]
        [--compare OLD.json] [--readme] [--no-run] [SCENARIO]...
        build cnm-bench in release mode and run it: cnm against the peers (netavark, CNI,
        ip, docker on a private dockerd) as medians, p95s and ratios; writes
        target/bench/latest.json; scenarios `docker-*` (group `docker`): connect, network
        create/rm and run -p against dockerd and cnmd through the same docker CLI;
        --compare: each figure against OLD.json, FLAG (and failure) when >20% slower;
        --readme: rewrite README.md's bench table from latest.json; --no-run: only those two;
        scenario `dns`: the embedded DNS against aardvark-dns with dnsperf
  soak [--kills N]
        crash soak (default 200 kills): random operations in a child controller killed with
        SIGKILL at random moments, restart, check records against the kernel and IPAM
";

/// What `cargo xtask` was asked to do.
#[derive(Debug, PartialEq)]
enum Command {
    /// The full test matrix (also what CI runs).
    Test(TestArgs),
    /// Benchmarks against the peers.
    Bench(bench::BenchArgs),
    /// The crash soak.
    Soak(soak::SoakArgs),
    /// Internal: we are the child of `unshare --mount`; set up the private `/run` and exec the rest.
    InMountNs(Vec<String>),
    /// Print usage.
    Help,
}

/// Options of `cargo xtask test`.
#[derive(Debug, Default, PartialEq)]
struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    no_lint: bool,
    /// Skip lints and the unprivileged tests; run only the privileged ones.
    privileged_only: bool,
    /// Restrict to these packages instead of `--workspace`.
    packages: Vec<String>,
    /// Test name filters and other arguments handed to libtest.
    test_args: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    match command.as_str() {
        "test" => Ok(Command::Test(parse_test_args(rest)?)),
        "ci" => {
            if !rest.is_empty() {
                bail!("`cargo xtask ci` takes no options (it runs exactly what CI runs)");
            }
            Ok(Command::Test(TestArgs::default()))
        }
        "bench" => Ok(Command::Bench(bench::parse(rest)?)),
        "soak" => Ok(Command::Soak(soak::parse(rest)?)),
        privileged::IN_MOUNT_NS => Ok(Command::InMountNs(rest.to_vec())),
        "help" | "-h" | "--help" => Ok(Command::Help),
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn parse_test_args(args: &[String]) -> Result<TestArgs> {
    let mut parsed = TestArgs::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--no-lint" => parsed.no_lint = true,
            "--privileged-only" => parsed.privileged_only = true,
            "-p" | "--package" => {
                let name = iter.next().context("`-p/--package` needs a crate name")?;
                parsed.packages.push(name.clone());
            }
            "--" => {
                parsed.test_args.extend(iter.by_ref().cloned());
                break;
            }
            flag if flag.starts_with('-') => bail!("unknown option `{flag}` for `test`\n\n{USAGE}"),
            filter => parsed.test_args.push(filter.to_owned()),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse_args(&args).and_then(|command| match command {
        Command::Test(test_args) => test(&test_args),
        Command::Bench(bench_args) => bench::bench(&bench_args),
        Command::Soak(soak_args) => soak::soak(&soak_args),
        Command::InMountNs(rest) => privileged::in_mount_ns(&rest).map(|never| match never {}),
        Command::Help => {
            print!("{USAGE}");
            Ok(true)
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a cold `cargo xtask test` writes under `target/` (debug builds of every test binary, the
/// daemon and the crates outside the workspace, without incremental state): about 11 GiB.
const COLD_RUN_GIB: u64 = 14;

/// Says so up front when the target directory's file system has less room than a cold run
/// needs, instead of letting the run fail an hour in with `No space left on device` halfway
/// through a test's build.
fn warn_if_disk_is_short() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| outside::root().join("target"), std::path::PathBuf::from);
    let dir = target
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(std::path::Path::new("/"));
    let Ok(out) = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = free_kib {
        let gib = kib / (1024 * 1024);
        if gib < COLD_RUN_GIB {
            eprintln!(
                "xtask: warning: {gib} GiB free under {}; a cold run writes about {COLD_RUN_GIB} GiB \
                 (set CARGO_INCREMENTAL=0, as CI does, or free space)",
                dir.display()
            );
        }
    }
}

/// One phase's outcome, for the summary table.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Skipped(&'static str),
    /// A check without test counts (fmt, clippy).
    Checked {
        ok: bool,
    },
    /// A test run.
    Tests {
        counts: Counts,
        exit_ok: bool,
    },
}

/// Runs the whole matrix; returns whether everything passed.
fn test(args: &TestArgs) -> Result<bool> {
    let cargo = run::cargo_program();
    // The workspace's packages, and the crates outside it (`outside.rs`), each phase runs both.
    let scope = outside::scope(&args.packages);
    let mut phases = Vec::new();
    let mut failures: Vec<String> = Vec::new();

    banner("0/4 system packages");
    packages::ensure_installed()?;
    warn_if_disk_is_short();

    let lint = !(args.no_lint || args.privileged_only);
    if lint {
        banner("1/4 cargo fmt --check");
        let mut commands = Vec::new();
        if let Some(workspace) = &scope.workspace {
            let mut fmt = vec!["fmt".to_owned()];
            if args.packages.is_empty() {
                fmt.push("--all".to_owned());
            } else {
                fmt.extend(workspace.iter().cloned());
            }
            commands.push(fmt);
        }
        for c in &scope.outside {
            commands.push([vec!["fmt".to_owned()], c.manifest_args()].concat());
        }
        let mut ok = true;
        for mut fmt in commands {
            fmt.extend(["--".to_owned(), "--check".to_owned()]);
            ok &= run::status(&cargo, &fmt)?;
        }
        phases.push(Phase {
            name: "fmt",
            outcome: Outcome::Checked { ok },
        });
        if !ok {
            failures
                .push("`cargo fmt --check` found unformatted code (run `cargo fmt --all`)".into());
        }

        if failures.is_empty() {
            banner("2/4 cargo clippy -D warnings");
            let mut ok = true;
            for selection in scope_selections(&scope) {
                let mut clippy = vec!["clippy".to_owned()];
                clippy.extend(selection);
                clippy.extend(["--all-targets", "--", "-D", "warnings"].map(String::from));
                ok &= run::status(&cargo, &clippy)?;
            }
            phases.push(Phase {
                name: "clippy",
                outcome: Outcome::Checked { ok },
            });
            if !ok {
                failures.push("`cargo clippy` reported warnings or errors".into());
            }
        } else {
            phases.push(Phase {
                name: "clippy",
                outcome: Outcome::Skipped("fmt failed"),
            });
        }
    } else {
        let why = if args.privileged_only {
            "--privileged-only"
        } else {
            "--no-lint"
        };
        phases.push(Phase {
            name: "fmt",
            outcome: Outcome::Skipped(why),
        });
        phases.push(Phase {
            name: "clippy",
            outcome: Outcome::Skipped(why),
        });
    }

    // The unprivileged run tells us how many privileged tests exist (they show as ignored).
    let mut expected_privileged = None;
    if args.privileged_only {
        phases.push(Phase {
            name: "unit+doc",
            outcome: Outcome::Skipped("--privileged-only"),
        });
    } else if !failures.is_empty() {
        phases.push(Phase {
            name: "unit+doc",
            outcome: Outcome::Skipped("lint failed"),
        });
    } else {
        banner("3/4 cargo test (unit, doc; privileged tests show as ignored)");
        // --no-fail-fast: one failing crate must not hide the results (and the ignored count) of the rest.
        let (mut exit_ok, mut output) = (true, String::new());
        for selection in scope_selections(&scope) {
            let mut cmd = vec!["test".to_owned(), "--no-fail-fast".to_owned()];
            cmd.extend(selection);
            if !args.test_args.is_empty() {
                cmd.push("--".to_owned());
                cmd.extend(args.test_args.iter().cloned());
            }
            let (ok, out) = run::tee(&cargo, &cmd)?;
            exit_ok &= ok;
            output.push_str(&out);
        }
        let counts = libtest::count(&output);
        check_run("unit+doc", &counts, exit_ok, &mut failures);
        // Ignored doc tests (```ignore blocks) are not privileged tests and phase 4 does not run them.
        expected_privileged = Some(counts.ignored - counts.ignored_doc);
        phases.push(Phase {
            name: "unit+doc",
            outcome: Outcome::Tests { counts, exit_ok },
        });
    }

    // Privileged tests run even when unit tests failed, so one run shows every failure; but not
    // when the workspace did not build or lint.
    let built = phases.iter().all(|phase| match &phase.outcome {
        Outcome::Checked { ok } => *ok,
        Outcome::Tests { counts, exit_ok } => *exit_ok || counts.results > 0,
        Outcome::Skipped(_) => true,
    });
    if built {
        banner("4/4 privileged tests (private mount namespace, tmpfs on /run/cnm and /run/netns)");
        let (mut exit_ok, mut output) = (true, String::new());
        for selection in scope_selections(&scope) {
            let (ok, out) = privileged::run_tests(&cargo, &selection, &args.test_args)?;
            exit_ok &= ok;
            output.push_str(&out);
        }
        let counts = libtest::count(&output);
        check_run("privileged", &counts, exit_ok, &mut failures);
        let ran = counts.passed + counts.failed;
        if counts.results > 0 && ran == 0 {
            failures.push("the privileged phase ran zero tests".into());
        }
        if let Some(expected) = expected_privileged
            && ran < expected
        {
            failures.push(format!(
                "the privileged phase ran {ran} tests but the unprivileged phase reported {expected} ignored: \
                 some privileged test did not run"
            ));
        }
        phases.push(Phase {
            name: "privileged",
            outcome: Outcome::Tests { counts, exit_ok },
        });
    } else {
        phases.push(Phase {
            name: "privileged",
            outcome: Outcome::Skipped("an earlier phase failed"),
        });
    }

    print_summary(&phases);
    for failure in &failures {
        println!("xtask: FAIL: {failure}");
    }
    let (passed, failed) = phases
        .iter()
        .fold((0, 0), |(p, f), phase| match &phase.outcome {
            Outcome::Tests { counts, .. } => (p + counts.passed, f + counts.failed),
            _ => (p, f),
        });
    println!("xtask: {passed} passed, {failed} failed");
    Ok(failures.is_empty())
}

/// The cargo arguments selecting what to build and test: the workspace packages, then each
/// out-of-tree crate by its manifest (built into the workspace's target dir).
fn scope_selections(scope: &outside::Scope) -> Vec<Vec<String>> {
    scope
        .workspace
        .iter()
        .cloned()
        .chain(scope.outside.iter().map(|c| c.build_args()))
        .collect()
}

/// Records why a test phase failed, if it did.
fn check_run(phase: &str, counts: &Counts, exit_ok: bool, failures: &mut Vec<String>) {
    if counts.failed > 0 {
        failures.push(format!("{phase}: {} test(s) failed", counts.failed));
    } else if !exit_ok {
        // Build errors and crashed test binaries end here: cargo failed without a failed test.
        failures.push(format!(
            "{phase}: cargo test exited with an error (build failure or crashed test binary)"
        ));
    }
    if counts.results == 0 && exit_ok {
        failures.push(format!(
            "{phase}: no libtest result line found in the output"
        ));
    }
}

fn banner(title: &str) {
    println!("\n==== xtask: {title} ====");
}

fn print_summary(phases: &[Phase]) {
    println!("\n==== xtask: summary ====");
    println!(
        "{:<12} {:>6} {:>7} {:>7} {:>8}",
        "phase", "ran", "passed", "failed", "ignored"
    );
    for phase in phases {
        match &phase.outcome {
            Outcome::Skipped(why) => println!("{:<12} skipped ({why})", phase.name),
            Outcome::Checked { ok } => {
                println!("{:<12} {}", phase.name, if *ok { "ok" } else { "FAILED" })
            }
            Outcome::Tests { counts, exit_ok } => println!(
                "{:<12} {:>6} {:>7} {:>7} {:>8}{}",
                phase.name,
                counts.passed + counts.failed,
                counts.passed,
                counts.failed,
                counts.ignored,
                if *exit_ok {
                    ""
                } else {
                    "  (cargo exited with an error)"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned arguments from literals (the tests of every xtask module use it).
    pub(crate) fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn test_flags_filters_and_passthrough_parse() {
        let parsed = parse_args(&args(&[
            "test",
            "--no-lint",
            "-p",
            "cnm-ipam",
            "pool",
            "--",
            "--exact",
            "--nocapture",
        ]))
        .unwrap();
        assert_eq!(
            parsed,
            Command::Test(TestArgs {
                no_lint: true,
                privileged_only: false,
                packages: args(&["cnm-ipam"]),
                test_args: args(&["pool", "--exact", "--nocapture"]),
            })
        );
    }

    #[test]
    fn ci_is_the_default_test_run_and_takes_no_options() {
        assert_eq!(
            parse_args(&args(&["ci"])).unwrap(),
            Command::Test(TestArgs::default())
        );
        assert!(parse_args(&args(&["ci", "--no-lint"])).is_err());
    }

    #[test]
    fn unknown_commands_and_options_are_rejected() {
        assert!(parse_args(&args(&["tset"])).is_err());
        assert!(parse_args(&args(&["test", "--nolint"])).is_err());
        assert!(parse_args(&args(&["test", "-p"])).is_err());
        assert_eq!(
            parse_args(&args(&["bench"])).unwrap(),
            Command::Bench(bench::BenchArgs::default())
        );
        assert!(parse_args(&args(&["bench", "--fast"])).is_err());
        assert_eq!(parse_args(&[]).unwrap(), Command::Help);
    }
}
