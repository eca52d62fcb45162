//! The process's surroundings: a private mount namespace with its own `/run/netns` and
//! `/run/cnm`, and a description of the machine for the report.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cnm_sandbox::exec::enter_private_mount_namespace;
use nix::mount::{MsFlags, mount};
use serde_json::{Value, json};

/// Directories that get a private tmpfs, so `ip netns add` and cnm's bind mounts made by the
/// benchmark never show in the machine's `/run`.
const PRIVATE_RUN_DIRS: &[&str] = &["/run/netns", "/run/cnm"];

/// Where every contender's throwaway host keeps its run dir (netns files, sandbox directories,
/// sockets): on the private tmpfs, as cnm's `/run/cnm` is on a real machine. (On a disk-backed
/// `/tmp` each attach paid the file system's inode allocation for its files, which grew with
/// the files deleted before it.) The stores stay on disk, in the temp dir.
const HOST_RUN_DIRS: &str = "/run/cnm/hosts";

/// Moves this process into a new mount namespace (nothing propagates back), mounts a tmpfs on
/// each of `/run/netns` and `/run/cnm`, and makes the throwaway hosts' run dirs on the latter.
///
/// Must run before any other thread exists: `unshare(CLONE_NEWNS)` refuses a process whose
/// threads share their filesystem context.
pub fn enter_private_mounts() -> Result<()> {
    enter_private_mount_namespace("the benchmark")
        .context("failed to enter a private mount namespace (the benchmark needs root)")?;
    for dir in PRIVATE_RUN_DIRS {
        if !Path::new(dir).is_dir() {
            // xtask creates missing mount points beforehand and removes them afterwards.
            bail!("mount point {dir} is missing (run the benchmark with `cargo xtask bench`)");
        }
        mount(
            Some("cnm-bench"),
            *dir,
            Some("tmpfs"),
            MsFlags::empty(),
            // A limit, not an allocation: 10,000 sandboxes' files take about 80 MB.
            Some("mode=0755,size=1g"),
        )
        .with_context(|| format!("failed to mount a private tmpfs on {dir}"))?;
    }
    std::fs::create_dir_all(HOST_RUN_DIRS)
        .with_context(|| format!("failed to create {HOST_RUN_DIRS}"))?;
    cnm_testkit::set_run_dir_parent(HOST_RUN_DIRS.into());
    Ok(())
}

/// Host name, kernel, CPUs and memory: enough to tell two machines' results apart.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mem_total_mb = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024);
    json!({
        "hostname": read("/proc/sys/kernel/hostname").trim(),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "mem_total_mb": mem_total_mb,
        // Other work on the machine skews every figure: the run says how busy it was.
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// This process's resident and peak resident memory in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib() -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}
