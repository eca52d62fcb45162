//! The example runtime (`examples/runtime.rs`) runs to the end in throwaway namespaces: it
//! enters a multi-homed container with `Sandbox::entry()` to exec real processes, serves
//! traffic through a published port and across an internal network, restarts its controller
//! after `shutdown()` and finds everything adopted, then removes everything it made.

use std::process::Command;

use anyhow::{Context, Result, ensure};

#[test]
#[ignore = "privileged: run cargo xtask test"]
fn the_runtime_example_enters_its_container_restarts_and_finds_everything_adopted() -> Result<()> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("no target dir")?;
    let example = profile_dir.join("examples").join("runtime");
    ensure!(example.exists(), "{} not built", example.display());
    // A network namespace of its own plays the host; tmpfs over /run and /var/lib keep the
    // default paths (/run/cnm, /var/lib/cnm) inside a private mount namespace. After the
    // example, what is left in that host namespace is listed.
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /var/lib; \
         ip link set lo up; {}; echo '--- left:'; ip -o link show",
        example.display()
    );
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", &script])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "example failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (report, left) = stdout.split_once("--- left:").context("no listing")?;
    let has = |s: &str| report.lines().filter(|l| l.contains(s)).count();
    // Entered: its processes saw both interfaces, the hostname and the hosts file, twice
    // (before and after the restart).
    ensure!(
        has("inside web, `ip addr` shows eth0 10.77.0.") == 2,
        "{report}"
    );
    ensure!(
        has("inside web, hostname web and /etc/hosts") == 2,
        "{report}"
    );
    // Traffic, before and after the restart: through the published port and from `db`.
    ensure!(
        has("(published) answers \"hello from web\"") == 2,
        "{report}"
    );
    ensure!(has("from db, 10.78.0.") == 2, "{report}");
    ensure!(has("ok: adopted after restart") == 1, "{report}");
    ensure!(
        has("ok: removed the sandboxes, endpoints and networks") == 1,
        "{report}"
    );
    // Nothing of cnm's is left in the host namespace: loopback only.
    let links: Vec<&str> = left.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        links.len() == 1 && links[0].contains(": lo:"),
        "left behind: {left}"
    );
    Ok(())
}
