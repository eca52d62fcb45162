//! Runs the `attach` scenario for cnm and the floor with three iterations and checks the JSON
//! it writes. Never asserts timings: only that each contender measured, and the shape.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

#[test]
#[ignore = "privileged: run cargo xtask test"]
fn attach_scenario_for_cnm_and_floor_writes_the_documented_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("latest.json");
    let status = Command::new(env!("CARGO_BIN_EXE_cnm-bench"))
        .args(["--contenders", "cnm,floor", "-n", "3", "--out"])
        .arg(&out)
        .arg("attach")
        .status()
        .context("failed to run cnm-bench")?;
    ensure!(status.success(), "cnm-bench exited with {status}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    ensure!(
        doc["machine"]["cpus"].as_u64().is_some_and(|n| n > 0),
        "machine: {}",
        doc["machine"]
    );
    ensure!(
        doc["date"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z') && d.len() == 20),
        "date: {}",
        doc["date"]
    );
    ensure!(
        doc["command"]
            .as_str()
            .is_some_and(|c| c.contains("attach"))
    );
    let attach = doc["scenarios"]["attach"]
        .as_object()
        .context("no scenarios.attach object")?;
    let mut names: Vec<&str> = attach.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["cnm", "floor"], "only the contenders asked for");
    for name in ["cnm", "floor"] {
        let c = &attach[name];
        assert_eq!(c["n"], 3, "{name}: {c}");
        let median = c["median_ms"].as_f64().context("median_ms")?;
        let p95 = c["p95_ms"].as_f64().context("p95_ms")?;
        ensure!(median > 0.0 && p95 >= median, "{name}: {c}");
    }
    // `detach` was not asked for, so it is not in the report.
    ensure!(doc["scenarios"].get("detach").is_none());
    ensure!(doc["targets"].as_array().is_some_and(|t| !t.is_empty()));
    Ok(())
}

/// `--churn 3` alone: three attach/detach cycles of cnm, one window each, and nothing of them
/// left behind in the host namespace (links, nftables rules and elements) or the mounts. Only
/// counts are asserted, never timings.
#[test]
#[ignore = "privileged: run cargo xtask test"]
fn churn_cycles_leave_nothing_behind_and_report_each_window() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("churn.json");
    let status = Command::new(env!("CARGO_BIN_EXE_cnm-bench"))
        .args(["--contenders", "cnm", "--churn", "3", "--out"])
        .arg(&out)
        .status()
        .context("failed to run cnm-bench")?;
    ensure!(status.success(), "cnm-bench exited with {status}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let scenarios = doc["scenarios"].as_object().context("no scenarios")?;
    let names: Vec<&str> = scenarios.keys().map(String::as_str).collect();
    assert_eq!(names, ["churn3"], "only what the flag asked for runs");
    let churn = &doc["scenarios"]["churn3"]["cnm"];
    assert_eq!(churn["cycles"], 3, "{churn}");
    assert_eq!(churn["leaked"], serde_json::json!([]), "{churn}");
    let windows = churn["windows"].as_array().context("windows")?;
    assert_eq!(windows.len(), 3, "one window per cycle: {churn}");
    for (k, w) in windows.iter().enumerate() {
        assert_eq!(w["cycles"], k + 1, "{w}");
        for field in ["attach_p50_ms", "attach_p99_ms", "detach_p50_ms", "rss_mb"] {
            ensure!(w[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {w}");
        }
        // What a window leaves is what there was before the first cycle.
        for field in ["links", "nft_rules", "nft_elements", "mounts"] {
            assert_eq!(w[field], churn["before"][field], "{field}: {w}");
        }
    }
    Ok(())
}

/// The `overlay` group in its quick form: etcd and three hosts on an underlay, then the
/// control-plane simulation with 20 agents. Asserts what each scenario measured (counts, no
/// timings): every attach reached, no duplicate address, every endpoint programmed on every
/// other agent, the encrypted row either measured or refused with the driver's words.
#[test]
#[ignore = "privileged: run cargo xtask test"]
fn overlay_group_measures_three_hosts_and_the_simulation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("overlay.json");
    let status = Command::new(env!("CARGO_BIN_EXE_cnm-bench"))
        .args(["--quick", "--sim-hosts", "20", "--out"])
        .arg(&out)
        .arg("overlay")
        .status()
        .context("failed to run cnm-bench")?;
    ensure!(status.success(), "cnm-bench exited with {status}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    let s = &doc["scenarios"];
    let names: Vec<&str> = s
        .as_object()
        .context("no scenarios")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "overlay-alloc",
            "overlay-attach",
            "overlay-iperf",
            "overlay-iperf-encrypted",
            "overlay-reach",
            "overlay-sim"
        ]
    );
    for sc in ["overlay-attach", "overlay-reach"] {
        let c = &s[sc]["cnm"];
        assert_eq!(c["n"], 5, "{sc}: {c}");
        let p99 = c["p99_ms"].as_f64().context("p99_ms")?;
        let p50 = c["median_ms"].as_f64().context("median_ms")?;
        ensure!(p50 > 0.0 && p99 >= p50, "{sc}: {c}");
    }
    let iperf = &s["overlay-iperf"]["cnm"];
    for field in ["gbps", "underlay_gbps"] {
        ensure!(
            iperf[field].as_f64().is_some_and(|g| g > 0.0),
            "{field}: {iperf}"
        );
    }
    let enc = &s["overlay-iperf-encrypted"]["cnm"];
    ensure!(
        enc["gbps"].as_f64().is_some_and(|g| g > 0.0)
            || enc["status"]
                .as_str()
                .is_some_and(|st| st.starts_with("not measured: ") && st.contains("encrypted")),
        "encrypted: {enc}"
    );
    let alloc = &s["overlay-alloc"]["cnm"];
    assert_eq!(alloc["addresses"], 30, "{alloc}");
    assert_eq!(alloc["duplicates"], 0, "{alloc}");
    ensure!(
        alloc["per_sec"].as_f64().is_some_and(|r| r > 0.0),
        "{alloc}"
    );
    let sim = &s["overlay-sim"]["cnm"];
    assert_eq!(sim["hosts"], 20, "{sim}");
    assert_eq!(sim["endpoints"], 10, "{sim}");
    // Each agent programmed every other agent's first endpoint and the 10 timed ones it did
    // not publish itself.
    assert_eq!(sim["programmed_entries"], 20 * 19 + 10 * 19, "{sim}");
    ensure!(
        sim["watch_events_per_endpoint"]
            .as_f64()
            .is_some_and(|e| e >= 19.0),
        "{sim}"
    );
    ensure!(
        sim["etcd_writes_per_endpoint"]
            .as_f64()
            .is_some_and(|w| w >= 1.0),
        "{sim}"
    );
    Ok(())
}
