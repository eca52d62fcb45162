//! README's first command on a fresh machine (issue 8): `scripts/quickstart.sh` passes where
//! neither `nft` nor `iptables` is installed. The script runs in a throwaway network and mount
//! namespace with tmpfs over cnm's default directories, with a `PATH` holding only the tools it
//! uses, and with the `cnm`/`cnmd` already built for the tests (`CNM_BIN_DIR`) instead of a
//! release build of its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use common::{CNM, cnmd};

/// What the script, the commands it runs in sandboxes, and cnm itself call: nothing else is on
/// `PATH`. (`curl` is left out on purpose: the script falls back to bash's `/dev/tcp`.)
const TOOLS: &[&str] = &[
    "bash", "sh", "id", "dirname", "cat", "rm", "sed", "mktemp", "seq", "sleep", "awk", "head",
    "grep", "hostname", "python3",
];

/// Tools that must not be found.
const ABSENT: &[&str] = &[
    "nft",
    "iptables",
    "iptables-nft",
    "iptables-legacy",
    "ip6tables",
];

/// The real executable behind `name` on this machine's `PATH` (or sbin).
fn find(name: &str) -> Result<PathBuf> {
    if name == "python3" {
        // A version manager's shim is a script needing its own tools: take the interpreter.
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .context("python3 runs")?;
        ensure!(out.status.success(), "python3: {out:?}");
        return Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed"))
}

/// A directory of symlinks to exactly [`TOOLS`].
fn tool_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for tool in TOOLS {
        std::os::unix::fs::symlink(find(tool)?, dir.path().join(tool))?;
    }
    for tool in ABSENT {
        ensure!(!dir.path().join(tool).exists());
    }
    Ok(dir)
}

#[test]
#[ignore = "privileged: run cargo xtask test"]
fn quickstart_passes_without_nft_or_iptables_on_path() -> Result<()> {
    let bin_dir = cnmd().parent().context("cnmd's directory")?.to_owned();
    ensure!(
        Path::new(CNM).parent() == Some(bin_dir.as_path()),
        "cnm and cnmd side by side"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/quickstart.sh");
    let tools = tool_dir()?;
    // Set up with the machine's tools (tmpfs, loopback up as on any machine), then run the
    // script with nothing but the tool dir on PATH; the script stops the daemon it started.
    let harness = r#"
set -eu
cover() { if [ -d "$1" ]; then mount -t tmpfs cnm-test "$1"; else mount -t tmpfs cnm-test "$(dirname "$1")"; mkdir -p "$1"; fi; }
cover /run/cnm
cover /var/lib/cnm
ip link set lo up
for t in nft iptables ip6tables; do
    if PATH=$TOOLS command -v "$t" >/dev/null; then echo "$t is on the test PATH" >&2; exit 90; fi
done
exec env -i PATH="$TOOLS" HOME=/root CNM_BIN_DIR="$BIN" QS_SUBNET=10.88.0.0/24 QS_PORT=18088 \
    bash "$SCRIPT"
"#;
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["bash", "-c", harness])
        .env("TOOLS", tools.path())
        .env("BIN", &bin_dir)
        .env("SCRIPT", &script)
        .env_remove("CNM_HOST")
        .output()
        .context("unshare (needs root)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "quickstart failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
    }
    // One page fetched from the second sandbox, one from the host's published port.
    let fetched = stdout.matches("HTTP/1.0 200 OK").count();
    ensure!(fetched >= 2, "two fetches answered 200: {stdout}\n{stderr}");
    ensure!(
        stderr.contains("started cnmd (pid "),
        "the first cnm command started the daemon: {stderr}"
    );
    ensure!(
        stdout.contains("stopping the cnmd this script started"),
        "{stdout}"
    );
    Ok(())
}
