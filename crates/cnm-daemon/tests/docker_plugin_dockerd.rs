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
//!
//! Published ports (`docker run -p`) go through cnm's own port publishing: a peer namespace the
//! test makes, cabled to dockerd's namespace by a veth, reads a line from a container's
//! server through the host's address; `docker rm -f` closes the port and leaves the ruleset as
//! it was, also across a `nft flush ruleset` that cnmd's firewall repairs.

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
        for applet in ["sh", "sleep", "ip", "ping", "cat", "chmod", "nc"] {
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

/// A namespace outside dockerd's, cabled to it: `192.0.2.2/24` here, `192.0.2.1/24` (the
/// "host's address") on `cnmout` in dockerd's namespace. Its holder process is killed on drop.
struct Peer {
    holder: Child,
}

const PEER_HOST_ADDR: &str = "192.0.2.1";

impl Peer {
    fn new(stack: &Stack) -> Result<Peer> {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .context("start unshare --net sleep")?;
        let mut peer = Peer { holder };
        // unshare makes the namespace before exec'ing sleep: wait until the holder is sleep.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{}/comm", peer.holder.id()))?.trim() != "sleep"
        {
            ensure!(Instant::now() < deadline, "unshare did not exec sleep");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = peer.holder.id().to_string();
        stack.in_ns(&[
            "ip", "link", "add", "cnmout", "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ])?;
        stack.in_ns(&["ip", "addr", "add", "192.0.2.1/24", "dev", "cnmout"])?;
        stack.in_ns(&["ip", "link", "set", "cnmout", "up"])?;
        peer.run(&["ip", "link", "set", "lo", "up"])?;
        peer.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
        peer.run(&["ip", "link", "set", "eth0", "up"])?;
        Ok(peer)
    }

    fn run(&mut self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.holder.id()))
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

    /// What a TCP connection to `192.0.2.1:PORT` from here reads, bounded to 2 s.
    fn get(&mut self, port: u16) -> Result<String> {
        self.run(&[BUSYBOX, "nc", "-w", "2", PEER_HOST_ADDR, &port.to_string()])
    }

    /// Retries [`Peer::get`] until it answers, within `bound` (the container's server, or the
    /// firewall after a flush, may not be ready yet: a readiness probe, not a sleep).
    fn get_within(&mut self, port: u16, bound: Duration) -> Result<String> {
        let deadline = Instant::now() + bound;
        loop {
            match self.get(port) {
                Ok(page) => return Ok(page),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("port {port} did not answer within {bound:?}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A ruleset as a sorted list of its words: equal for the same rules and elements in any order
/// (a firewall repaired after a flush may list a set's elements in another order).
fn words(rules: &str) -> Vec<String> {
    let mut v: Vec<String> = rules
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Waits until `nft list ruleset` in dockerd's namespace satisfies `ok` (cnmd's firewall
/// repairs a flush on its own schedule), within 5 s; the last ruleset seen.
fn ruleset_when(stack: &Stack, ok: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rules = stack.in_ns(&["nft", "list", "ruleset"])?;
        if ok(&rules) {
            return Ok(rules);
        }
        ensure!(
            Instant::now() < deadline,
            "the ruleset did not settle within 5 s:\n{rules}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What explains a port that does not answer: dockerd's namespace's forwarding, addresses,
/// routes and ruleset.
fn diagnostics(stack: &Stack) -> String {
    let mut out = String::new();
    for cmd in [
        &["sysctl", "net.ipv4.ip_forward"][..],
        &["ip", "-o", "addr"],
        &["ip", "route"],
        &["ss", "-ltnp"],
        &["nft", "list", "ruleset"],
    ] {
        let got = stack.in_ns(cmd).unwrap_or_else(|e| format!("{e:#}"));
        out.push_str(&format!("--- {}\n{got}\n", cmd.join(" ")));
    }
    for cmd in [
        &["ps", "-a"][..],
        &["logs", "web"],
        &["exec", "web", "ip", "route"],
        &["exec", "web", "ip", "addr"],
        &["exec", "web", "busybox", "netstat", "-ltn"],
    ] {
        let got = stack.docker(cmd).unwrap_or_else(|e| format!("{e:#}"));
        out.push_str(&format!("--- docker {}\n{got}\n", cmd.join(" ")));
    }
    out
}

/// A server on port 80 that answers every connection with one line.
const WEB: &str = "printf '#!/bin/sh\\necho cnm-published\\n' >/page && chmod +x /page && exec nc -ll -p 80 -e /page";

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn dockerd_published_ports_reach_the_container_and_go_with_it() -> Result<()> {
    let stack = Stack::start()?;
    let result = async {
        stack.import_image()?;
        let mut peer = Peer::new(&stack)?;
        stack.docker(&[
            "network",
            "create",
            "-d",
            "cnm",
            "--subnet",
            "10.78.0.0/24",
            "cnm-pub",
        ])?;
        let links_before = stack.links()?;
        let rules_before = stack.in_ns(&["nft", "list", "ruleset"])?;
        ensure!(
            !rules_before.contains("8080"),
            "port 8080 in the ruleset before any container:\n{rules_before}"
        );
        ensure!(
            peer.get(8080).is_err(),
            "port 8080 answers before any container"
        );

        stack.docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            "--network",
            "cnm-pub",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ])?;
        // Real traffic: the peer reaches the container's server through the host's address.
        let page = peer
            .get_within(8080, Duration::from_secs(10))
            .with_context(|| diagnostics(&stack))?;
        ensure!(page.trim() == "cnm-published", "page {page:?}");
        // cnm's endpoint records the port as published.
        let web_ip = stack.docker(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"cnm-pub\").IPAddress}}",
            "web",
        ])?;
        let rules_web = stack.in_ns(&["nft", "list", "ruleset"])?;
        ensure!(
            rules_web.contains("8080") && rules_web.contains(&web_ip),
            "no rule names port 8080 and {web_ip}:\n{rules_web}"
        );

        // Atomic: a second container asking for the same host port fails, and leaves no rule,
        // link or endpoint; the first still answers.
        let err = stack
            .docker(&[
                "run",
                "-d",
                "--name",
                "web2",
                "-p",
                "8080:80",
                "--network",
                "cnm-pub",
                IMAGE,
                "sh",
                "-c",
                WEB,
            ])
            .expect_err("a host port in use must be refused");
        ensure!(format!("{err:#}").contains("8080"), "{err:#}");
        let _ = stack.docker(&["rm", "-f", "web2"]);
        let rules_after_refusal = stack.in_ns(&["nft", "list", "ruleset"])?;
        assert_eq!(
            rules_after_refusal, rules_web,
            "a refused publish changed the ruleset"
        );
        ensure!(peer.get(8080)?.trim() == "cnm-published");

        // cnmd's firewall repairs a flush of the whole ruleset, published port included.
        stack.in_ns(&["nft", "flush", "ruleset"])?;
        let page = peer.get_within(8080, Duration::from_secs(5))?;
        ensure!(
            page.trim() == "cnm-published",
            "after the flush: page {page:?}"
        );

        // docker rm -f: the port closes and nothing of it stays.
        stack.docker(&["rm", "-f", "web"])?;
        ensure!(
            peer.get(8080).is_err(),
            "port 8080 still answers after docker rm -f"
        );
        let rules = stack.in_ns(&["nft", "list", "ruleset"])?;
        assert_eq!(
            words(&rules),
            words(&rules_before),
            "docker rm -f left a rule:\n{rules}\nwas:\n{rules_before}"
        );
        assert_eq!(stack.links()?, links_before, "docker rm -f left a link");
        // ... nor after another flush and its repair.
        stack.in_ns(&["nft", "flush", "ruleset"])?;
        ruleset_when(&stack, |r| words(r) == words(&rules_before))?;
        ensure!(
            peer.get(8080).is_err(),
            "port 8080 answers after the repair"
        );

        let docker_id = stack.docker(&["network", "inspect", "-f", "{{.Id}}", "cnm-pub"])?;
        let cnm = cnm_network(&stack, &docker_id).await?;
        assert_eq!(
            cnm["Containers"].as_object().map(|o| o.len()).unwrap_or(0),
            0,
            "cnm endpoints left: {cnm}"
        );
        stack.docker(&["network", "rm", "cnm-pub"])?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        bail!("{e:#}\n{}", stack.logs());
    }
    Ok(())
}
