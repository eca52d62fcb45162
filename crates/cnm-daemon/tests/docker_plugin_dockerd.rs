//! A real dockerd (Debian's docker.io 20.10) using cnmd as its network and IPAM plugin: two
//! busybox containers on a `docker network create -d cnm` network reach each other by IP,
//! cnmd sees the network and endpoints, and `docker rm -f` and `docker network rm` leave no
//! link behind.
//!
//! cnmd and dockerd share one throwaway set of namespaces (`unshare --net --mount --pid`,
//! fresh tmpfs on `/run` and `/etc/docker`): cnmd is started first, in the background, with
//! `--docker-plugin cnm`, so its socket is `/run/docker/plugins/cnm.sock` in that mount
//! namespace, where dockerd looks; then the shell becomes dockerd, PID 1 of the namespace, whose
//! death kills cnmd, containerd and the containers with it. dockerd runs with its own data root,
//! exec root and socket in a tempdir, `--iptables=false`, `--bridge none` and the vfs storage
//! driver; the image is imported from a tarball of busybox-static (no registry is reachable).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::Client;
use serde_json::Value;

const DOCKERD: &str = "/usr/sbin/dockerd";
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_STATIC_MARK: &str = "/usr/share/doc/busybox-static/copyright";
const IMAGE: &str = "cnm-plugin-busybox:latest";

fn docker_cli() -> Result<PathBuf> {
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no docker CLI: install Debian's docker.io (`cargo xtask test` does)")
}

/// dockerd and cnmd in their namespaces, stopped on drop.
struct Stack {
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup_parent: String,
    docker: PathBuf,
}

impl Stack {
    fn start() -> Result<Stack> {
        let out = Command::new(DOCKERD).arg("--version").output();
        let version = out
            .as_ref()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        ensure!(
            version.starts_with("Docker version 20.10."),
            "{DOCKERD} is not dockerd 20.10 (install Debian's docker.io; `cargo xtask test` does): \
             {version:?} {:?}",
            out.err()
        );
        let docker = docker_cli()?;
        let dir = tempfile::Builder::new()
            .prefix("cnm-plugin-e2e-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n")?;
        let cgroup_parent = format!("cnm-plugin-e2e-{}", std::process::id());
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let script = r#"set -e
mount -t tmpfs -o mode=0755 cnm-plugin-e2e /run
mount -t tmpfs -o mode=0755 cnm-plugin-e2e /etc/docker
ip link set lo up
"$CNMD" --socket "$DIR/cnm.sock" --run-dir "$DIR/cnm-run" --state-dir "$DIR/cnm-state" \
    --docker-plugin cnm --plugin-dir "$DIR/no-plugins" >"$DIR/cnmd.log" 2>&1 &
for i in $(seq 1 500); do [ -S /run/docker/plugins/cnm.sock ] && break; sleep 0.02; done
[ -S /run/docker/plugins/cnm.sock ] || { echo "cnmd made no plugin socket"; exit 1; }
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
            .arg(DOCKERD)
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
            .args(["--iptables=false", "--ip6tables=false", "--bridge", "none"])
            .args(["--storage-driver", "vfs"])
            .args(["--containerd-namespace", "cnm-plugin-e2e"])
            .arg("--cgroup-parent")
            .arg(format!("/{cgroup_parent}"))
            .env("CNMD", env!("CARGO_BIN_EXE_cnmd"))
            .env("DIR", d)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start unshare dockerd (needs root)")?;
        let mut me = Stack {
            child: Some(child),
            dir,
            cgroup_parent,
            docker,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(10);
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "dockerd exited ({status}) before it answered:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                bail!("dockerd did not answer within 60 s:\n{}", self.logs());
            }
            // A readiness probe with a bound, backing off: dockerd has no other signal.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- dockerd.log\n{}\n--- cnmd.log\n{}",
            read("dockerd.log"),
            read("cnmd.log")
        )
    }

    /// Runs the docker CLI against this dockerd; its stdout, trimmed.
    fn docker(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.docker)
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .output()
            .context("run docker")?;
        ensure!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// cnmd's API.
    fn cnm(&self) -> Client {
        Client::new(&self.dir.path().join("cnm.sock"))
    }

    /// dockerd's PID (PID 1 of the namespaces), seen from here.
    fn ns_pid(&self) -> Result<u32> {
        let unshare = self.child.as_ref().context("stopped")?.id();
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))?;
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .context("unshare has no child")
    }

    /// Runs a command in the namespaces' network namespace.
    fn in_ns(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.ns_pid()?))
            .args(cmd)
            .output()
            .context("run nsenter")?;
        ensure!(
            out.status.success(),
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The links of the namespace: name and kind, sorted.
    fn links(&self) -> Result<Vec<String>> {
        let out = self.in_ns(&["ip", "-o", "-d", "link", "show"])?;
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let name = l.split(": ").nth(1)?.split('@').next()?.to_owned();
                let kind = ["veth", "bridge"]
                    .into_iter()
                    .find(|k| l.contains(&format!(" {k} ")))
                    .unwrap_or("other");
                Some(format!("{name} ({kind})"))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn import_image(&self) -> Result<()> {
        ensure!(
            Path::new(BUSYBOX_STATIC_MARK).is_file() && Path::new(BUSYBOX).is_file(),
            "busybox-static is not installed (`cargo xtask test` installs it)"
        );
        let root = self.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
        for applet in ["sh", "sleep", "ip", "ping", "cat"] {
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
        self.docker(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(())
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // dockerd is PID 1 of its PID namespace: its death kills cnmd, containerd, shims and
        // containers with it.
        if let Ok(pid) = self.ns_pid_of(&child) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&self.cgroup_parent));
            }
        }
    }

    fn ns_pid_of(&self, child: &Child) -> Result<u32> {
        let unshare = child.id();
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))?;
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .context("unshare has no child")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Containers first: runc removes their cgroups.
        if self.child.is_some()
            && let Ok(ids) = self.docker(&["ps", "-aq"])
        {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.kill();
    }
}

/// The cnm network dockerd's network `name` is, as cnmd's API shows it.
async fn cnm_network(stack: &Stack, docker_id: &str) -> Result<Value> {
    let (status, v) = stack
        .cnm()
        .json("GET", &format!("/networks/{docker_id}"), None)
        .await?;
    ensure!(
        status == 200,
        "cnmd: GET /networks/{docker_id}: {status} {v}"
    );
    Ok(v)
}

async fn run_pair(stack: &Stack, net: &str) -> Result<()> {
    let docker_id = stack.docker(&["network", "inspect", "-f", "{{.Id}}", net])?;
    let cnm = cnm_network(stack, &docker_id).await?;
    assert_eq!(cnm["Name"], docker_id.as_str(), "{cnm}");
    assert_eq!(cnm["Driver"], "bridge", "{cnm}");
    let docker_subnet = stack.docker(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        net,
    ])?;
    assert_eq!(
        cnm["IPAM"]["Config"][0]["Subnet"],
        docker_subnet.as_str(),
        "{cnm}"
    );

    let links_before = stack.links()?;
    for name in ["ca", "cb"] {
        stack.docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            IMAGE,
            "sleep",
            "1000",
        ])?;
    }
    let ip = |c: &str| {
        stack.docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            c,
        ])
    };
    let (ip_a, ip_b) = (ip("ca")?, ip("cb")?);
    ensure!(
        !ip_a.is_empty() && !ip_b.is_empty() && ip_a != ip_b,
        "{ip_a} {ip_b}"
    );
    // Real traffic: each container pings the other by IP, through cnm's bridge.
    stack.docker(&["exec", "ca", "ping", "-c", "1", "-W", "5", &ip_b])?;
    stack.docker(&["exec", "cb", "ping", "-c", "1", "-W", "5", &ip_a])?;
    // The interface is eth0 inside, with dockerd's address.
    let addr = stack.docker(&["exec", "ca", "ip", "-o", "-4", "addr", "show", "eth0"])?;
    ensure!(addr.contains(&format!("{ip_a}/")), "{addr}");

    // cnmd sees both endpoints, with the same addresses.
    let cnm = cnm_network(stack, &docker_id).await?;
    let eps: Vec<String> = cnm["Containers"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|e| e["IPv4Address"].as_str())
                .map(|s| s.split('/').next().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut want = vec![ip_a.clone(), ip_b.clone()];
    want.sort();
    let mut got = eps.clone();
    got.sort();
    assert_eq!(got, want, "cnm's endpoints: {cnm}");

    stack.docker(&["rm", "-f", "ca", "cb"])?;
    assert_eq!(stack.links()?, links_before, "docker rm -f left a link");
    let cnm = cnm_network(stack, &docker_id).await?;
    assert_eq!(
        cnm["Containers"].as_object().map(|o| o.len()).unwrap_or(0),
        0,
        "cnm endpoints left: {cnm}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn dockerd_containers_on_a_cnm_network_reach_each_other_and_leave_nothing() -> Result<()> {
    let stack = Stack::start()?;
    let result = async {
        stack.import_image()?;
        let links_start = stack.links()?;
        let rules_start = stack.in_ns(&["nft", "list", "ruleset"])?;

        // dockerd's own IPAM, cnm's bridge driver.
        stack.docker(&[
            "network",
            "create",
            "-d",
            "cnm",
            "--subnet",
            "10.77.0.0/24",
            "-o",
            "com.cnm.driver=bridge",
            "cnm-default-ipam",
        ])?;
        run_pair(&stack, "cnm-default-ipam").await?;
        stack.docker(&["network", "rm", "cnm-default-ipam"])?;
        assert_eq!(stack.links()?, links_start, "docker network rm left a link");

        // cnm's IPAM too: a pool of cnm's choosing.
        stack.docker(&[
            "network",
            "create",
            "-d",
            "cnm",
            "--ipam-driver",
            "cnm",
            "cnm-ipam",
        ])?;
        let subnet = stack.docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            "cnm-ipam",
        ])?;
        ensure!(!subnet.is_empty(), "cnm's IPAM gave no pool");
        run_pair(&stack, "cnm-ipam").await?;
        stack.docker(&["network", "rm", "cnm-ipam"])?;
        assert_eq!(stack.links()?, links_start, "docker network rm left a link");
        assert_eq!(
            stack.in_ns(&["nft", "list", "ruleset"])?,
            rules_start,
            "docker network rm left a rule"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        bail!("{e:#}\n{}", stack.logs());
    }
    Ok(())
}
