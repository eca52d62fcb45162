//! A private dockerd (Debian's docker.io 20.10) in throwaway network, mount and PID namespaces,
//! with its own data root, exec root, pidfile and socket in a temporary directory, and the
//! busybox-static image imported from a tarball (no registry is reachable).
//!
//! `unshare --net --mount --pid --fork` gives dockerd a namespace of its own for everything it
//! creates: its bridges and (with [`Options::iptables`]) its iptables rules live in its own
//! network namespace, its container netns bind mounts under a fresh tmpfs `/run`, its
//! `containerd`, the shims and the containers' processes in its PID namespace. `/etc/docker` is
//! a fresh tmpfs too, so nothing it writes there reaches the machine. It runs with the `vfs`
//! storage driver (no overlay mounts) and a cgroup parent of its own. `ip netns exec` is not
//! used: it remounts `/sys`, which loses the cgroup mounts dockerd needs.
//!
//! Stopping ([`Dockerd::stop`], or drop): every container is removed with `docker rm -f`
//! (runc deletes their cgroups), dockerd — PID 1 of its PID namespace — gets SIGTERM and, if
//! it has not exited within a bound, SIGKILL, which takes its containerd, shims and containers
//! with it; then the cgroup parent made for this run is removed and the temporary directory
//! (data root, exec root, socket, log) with it.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Debian's docker.io daemon, by path: another engine may come first on `PATH`.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// Its CLI, by path.
pub const DOCKER: &str = "/usr/bin/docker";
/// busybox-static's binary (Debian's dynamic `busybox` would replace it at the same path).
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_STATIC_MARK: &str = "/usr/share/doc/busybox-static/copyright";
/// How long dockerd may take to answer `/_ping` after its start.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long dockerd may take to exit after SIGTERM before it gets SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// How to start it.
#[derive(Debug, Clone)]
pub struct Options {
    /// A short name for this run: the containerd namespace and the cgroup parent
    /// (`/{name}-{pid}`) are made from it.
    pub name: String,
    /// Let dockerd program iptables (inside its own network namespace; the machine's are never
    /// touched). Off: `--iptables=false --ip6tables=false`.
    pub iptables: bool,
}

/// Checks that dockerd 20.10 (Debian's docker.io) and its CLI are installed; returns dockerd's
/// version line.
pub fn check_installed() -> Result<String> {
    ensure!(
        Path::new(DOCKERD).is_file(),
        "{DOCKERD} is missing: install Debian's docker.io"
    );
    ensure!(
        Path::new(DOCKER).is_file(),
        "{DOCKER} is missing: install Debian's docker.io"
    );
    let out = Command::new(DOCKERD)
        .arg("--version")
        .output()
        .with_context(|| format!("failed to run {DOCKERD} --version"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && version.starts_with("Docker version 20.10."),
        "{DOCKERD} is not dockerd 20.10 (Debian's docker.io): {version:?}"
    );
    Ok(version)
}

/// A running dockerd and everything under it, stopped on drop.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Dockerd {
    /// Starts dockerd and waits (bounded) until it answers `/_ping`. Blocking.
    pub fn start(options: &Options) -> Result<Dockerd> {
        check_installed()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-dockerd-", options.name))
            .tempdir()
            .context("failed to make dockerd's directory")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n")?;
        std::fs::create_dir_all(d.join("cli"))?;
        let cgroup_parent = format!("{}-{}", options.name, std::process::id());
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        // `mount` and `ip` run inside the new namespaces before dockerd replaces the shell.
        let script = r#"set -e
mount -t tmpfs -o mode=0755 cnm-dockerd /run
mount -t tmpfs -o mode=0755 cnm-dockerd /etc/docker
ip link set lo up
exec "$@""#;
        let firewall: &[&str] = if options.iptables {
            &[]
        } else {
            &["--iptables=false", "--ip6tables=false"]
        };
        let child = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "--propagation",
                "private",
            ])
            .args(["--", "sh", "-c", script, "dockerd", DOCKERD])
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
            .args(firewall)
            .args(["--storage-driver", "vfs"])
            .args(["--containerd-namespace", &options.name])
            .arg("--cgroup-parent")
            .arg(format!("/{cgroup_parent}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("failed to start dockerd through `unshare` (util-linux; needs root)")?;
        let mut me = Dockerd {
            child: Some(child),
            dir,
            cgroup_parent,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut pause = Duration::from_millis(10);
        loop {
            if ping(&self.socket()).unwrap_or(false) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "dockerd exited ({status}) before it answered; its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer within {} s; its log ends:\n{}",
                    READY_WITHIN.as_secs(),
                    self.log_tail(20)
                );
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

    /// `unix://SOCKET`, for `DOCKER_HOST` or `docker -H`.
    pub fn host_arg(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A directory for the docker CLI's configuration (`DOCKER_CONFIG`), so the CLI never
    /// reads or writes the user's `~/.docker`.
    pub fn cli_config(&self) -> PathBuf {
        self.dir.path().join("cli")
    }

    /// Its directory (data root, exec root, log, socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// dockerd's process id as seen from here (PID 1 of its namespaces): `nsenter -t` it to
    /// look inside its network namespace.
    pub fn pid(&self) -> Result<u32> {
        let unshare = self.child.as_ref().context("dockerd is stopped")?.id();
        first_child(unshare).context("unshare has no child (dockerd is not running)")
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A `docker` CLI command against this dockerd (not yet run).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_HOST", self.host_arg())
            .env("DOCKER_CONFIG", self.cli_config())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs the docker CLI against this dockerd; its stdout, trimmed. Blocking.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("failed to run docker {}", args.join(" ")))?;
        ensure!(
            out.status.success(),
            "docker {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Imports `image` (for example `cnm-busybox:latest`): a root file system of
    /// busybox-static's one binary and a symlink to it for each of `applets` under `/bin`,
    /// packed into a tarball here and `docker import`ed. Blocking.
    pub fn import_busybox(&self, image: &str, applets: &[&str]) -> Result<()> {
        ensure!(
            Path::new(BUSYBOX_STATIC_MARK).is_file() && Path::new(BUSYBOX).is_file(),
            "busybox-static is not installed (Debian's busybox-static)"
        );
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy(BUSYBOX, root.join("bin/busybox"))
            .with_context(|| format!("failed to copy {BUSYBOX}"))?;
        for applet in applets {
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
            .context("failed to run tar")?;
        ensure!(status.success(), "tar failed: {status}");
        self.docker(&["import", &tar.display().to_string(), image])?;
        Ok(())
    }

    /// Removes every container, stops dockerd (SIGTERM, then SIGKILL after a bound) and with it
    /// its whole PID namespace, and removes the cgroup parent of this run. Blocking.
    pub fn stop(mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_containers() {
            errors.push(format!("failed to remove the containers: {e:#}"));
        }
        if let Err(e) = self.terminate() {
            errors.push(format!("{e:#}"));
        }
        if let Err(e) = self.remove_cgroups() {
            errors.push(e);
        }
        ensure!(errors.is_empty(), "stopping dockerd: {}", errors.join("; "));
        Ok(())
    }

    fn remove_containers(&self) -> Result<()> {
        let ids = self.docker(&["ps", "-aq"])?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        self.docker(&args)?;
        Ok(())
    }

    /// SIGTERM to dockerd, a bounded wait for unshare (which waits for it) to exit, then
    /// SIGKILL to both.
    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let signal = |pid: u32, sig| {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        };
        let inner = first_child(child.id());
        if let Some(pid) = inner {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WITHIN;
        let mut pause = Duration::from_millis(10);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
            // Waiting for an exit with a bound: there is no pidfd-based wait in std.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        if let Some(pid) = inner {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "dockerd did not exit within {} s of SIGTERM and was killed",
            STOP_WITHIN.as_secs()
        )
    }

    /// Removes the cgroup parent of this run, deepest directories first (a container killed
    /// with dockerd leaves its empty cgroup behind).
    fn remove_cgroups(&self) -> std::result::Result<(), String> {
        let mut left = Vec::new();
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return Ok(());
        };
        let mut tops = vec![PathBuf::from("/sys/fs/cgroup").join(&self.cgroup_parent)];
        tops.extend(
            controllers
                .flatten()
                .map(|c| c.path().join(&self.cgroup_parent)),
        );
        for top in tops {
            if top.is_dir() && remove_cgroup_tree(&top).is_err() {
                left.push(top.display().to_string());
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
        if self.child.is_some() {
            let _ = self.remove_containers();
            let _ = self.terminate();
        }
        let _ = self.remove_cgroups();
    }
}

fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The first child of process `pid` (unshare forks dockerd as its only child).
fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .find_map(|p| p.parse().ok())
}

/// Whether the socket answers `GET /_ping` with 200.
fn ping(socket: &Path) -> std::io::Result<bool> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    Ok(reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200"))
}
