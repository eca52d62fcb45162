//! The reference the differential test compares cnmd against: cnm-testkit's private dockerd
//! (Debian's docker.io 20.10 in throwaway network, mount and PID namespaces, its own data root,
//! exec root and socket; see `cnm_testkit::dockerd`), here with `--iptables=false
//! --ip6tables=false` (the script compares API answers, not firewalls), and the busybox image
//! the script's containers run.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
pub use cnm_testkit::dockerd::Dockerd;

/// The image every container runs: busybox-static's one binary and the links the sequence uses.
pub const IMAGE: &str = "cnm-difftest-busybox:latest";

/// Starts the reference dockerd and imports [`IMAGE`] (blocking).
pub fn start() -> Result<Dockerd> {
    let dockerd = Dockerd::start(&cnm_testkit::dockerd::Options {
        name: "cnm-difftest".into(),
        iptables: false,
    })?;
    dockerd.import_busybox(IMAGE, &["sh", "sleep", "ip", "cat", "ls"])?;
    Ok(dockerd)
}

/// Writes `text` to `path` (a helper for report files).
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
