//! A real dockerd (Debian's docker.io) in throwaway network, mount and PID namespaces, with its
//! data root, exec root and socket in a tempdir: the reference the differential test compares
//! cnmd against.
//!
//! `unshare --net --mount --pid --fork` gives it a namespace of its own for everything it
//! creates (bridges, container netns bind mounts under `/run`, its `containerd`, the shims and
//! the containers' processes). In that mount namespace `/run` and `/etc/docker` are fresh tmpfs,
//! so nothing it writes there (runc state, the libtrust key) reaches the machine. It runs with
//! `--iptables=false --ip6tables=false` (no firewall work at all) and the `vfs` storage driver
//! (no overlay mounts). `ip netns exec` is not used: it remounts `/sys`, which loses the cgroup
//! mounts dockerd needs.
//!
//! Stopping: every container is removed with `docker rm -f` (SIGKILL, and runc deletes the
//! container's cgroups), then dockerd — PID 1 of its PID namespace — is killed, which kills
//! its containerd and shims with it. The empty cgroup parent made for this run is removed last.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::http;

/// The image every container runs: busybox-static's one binary and the links the sequence uses.
pub const IMAGE: &str = "cnm-difftest-busybox:latest";

/// Debian's docker.io daemon, by path: another engine may come first on PATH.
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// busybox-static's binary (Debian's dynamic `busybox` would replace it at the same path).
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_STATIC_MARK: &str = "/usr/share/doc/busybox-static/copyright";

/// The reference is dockerd 20.10 (Debian bookworm's docker.io); anything else fails loudly,
/// since the allow-list is written against it.
fn check_dockerd() -> Result<PathBuf> {
    let dockerd = PathBuf::from(DOCKERD);
    ensure!(
        dockerd.is_file(),
        "{DOCKERD} is missing: install Debian's docker.io (`cargo xtask test` does)"
    );
    let out = Command::new(&dockerd)
        .arg("--version")
        .output()
        .with_context(|| format!("run {DOCKERD} --version"))?;
    let version = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && version.starts_with("Docker version 20.10."),
        "{DOCKERD} is not dockerd 20.10 (Debian's docker.io): {version:?}"
    );
    Ok(dockerd)
}

/// A dockerd and everything under it, stopped on drop.
pub struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Dockerd {
    /// Starts dockerd and waits (bounded) until it answers `/_ping`.
    pub fn start() -> Result<Dockerd> {
        let dockerd = check_dockerd()?;
        let dir = tempfile::Builder::new().prefix("cnm-dockerd-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n")?;
        let cgroup_parent = format!("cnm-difftest-{}", std::process::id());
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        // `mount` and `ip` run inside the new namespaces before dockerd replaces the shell.
        let script = r#"set -e
mount -t tmpfs -o mode=0755 cnm-difftest /run
mount -t tmpfs -o mode=0755 cnm-difftest /etc/docker
ip link set lo up
exec "$@""#;
        let child = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
            ])
            .args(["--propagation", "private"])
            .args(["--", "sh", "-c", script, "dockerd"])
            .arg(&dockerd)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver",
                "vfs",
            ])
            .args(["--containerd-namespace", "cnm-difftest"])
            .arg("--cgroup-parent")
            .arg(format!("/{cgroup_parent}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start unshare dockerd (needs root)")?;
        let mut me = Dockerd {
            child: Some(child),
            dir,
            cgroup_parent,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(r) = http::request(&self.socket(), "GET", "/_ping", None)
                && r.status == 200
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "dockerd exited ({status}) before it answered:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s:\n{}", self.log());
            }
            // A readiness probe with a bound, backing off: dockerd has no other signal.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Its API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Imports the busybox image from a tarball made here (no registry is reachable).
    pub fn import_image(&self, docker: &Path, config: &Path) -> Result<()> {
        ensure!(
            Path::new(BUSYBOX_STATIC_MARK).is_file() && Path::new(BUSYBOX).is_file(),
            "busybox-static is not installed (`cargo xtask test` installs it)"
        );
        let busybox = PathBuf::from(BUSYBOX);
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy(&busybox, root.join("bin/busybox"))?;
        for applet in ["sh", "sleep", "ip", "cat", "ls"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .context("run tar")?;
        ensure!(status.success(), "tar failed: {status}");
        let out = Command::new(docker)
            .arg("import")
            .arg(&tar)
            .arg(IMAGE)
            .env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", config)
            .output()
            .context("docker import")?;
        ensure!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Removes every container (SIGKILL; runc removes their cgroups), kills dockerd and with it
    /// its whole PID namespace, and removes the cgroup parent of this run.
    pub fn stop(mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_containers() {
            errors.push(format!("remove containers: {e:#}"));
        }
        self.kill();
        if let Err(e) = self.remove_cgroups() {
            errors.push(e);
        }
        ensure!(errors.is_empty(), "stopping dockerd: {}", errors.join("; "));
        Ok(())
    }

    fn remove_containers(&self) -> Result<()> {
        let r = http::request(&self.socket(), "GET", "/containers/json?all=1", None)?;
        ensure!(r.status == 200, "list containers: {}", r.status);
        let list: serde_json::Value = serde_json::from_slice(&r.body)?;
        for c in list.as_array().into_iter().flatten() {
            let id = c["Id"].as_str().unwrap_or_default();
            let r = http::request(
                &self.socket(),
                "DELETE",
                &format!("/containers/{id}?force=1"),
                None,
            )?;
            ensure!(r.status == 204, "remove container {id}: {}", r.status);
        }
        Ok(())
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // unshare forked dockerd as PID 1 of the new PID namespace: when it dies the kernel
        // kills every other process in the namespace (containerd, shims, containers), and
        // unshare, which waits for it, exits.
        let unshare = child.id();
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn remove_cgroups(&self) -> std::result::Result<(), String> {
        let mut left = Vec::new();
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Ok(());
        };
        for c in controllers.flatten() {
            let dir = c.path().join(&self.cgroup_parent);
            if dir.exists() && std::fs::remove_dir(&dir).is_err() {
                left.push(dir.display().to_string());
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("cgroups left behind: {}", left.join(", ")))
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.kill();
        let _ = self.remove_cgroups();
    }
}

/// Writes `text` to `path` (a helper for report files).
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
