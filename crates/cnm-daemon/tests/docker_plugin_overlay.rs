//! A cnm overlay over etcd, without swarm, used by two real dockerds (Debian's docker.io 20.10)
//! through cnmd's Docker plugin: `docker network create -d cnm --ipam-driver null -o
//! com.cnm.network=ov` on each host, and containers started by dockerd on host 1 and on host 2
//! reach each other by IP across the overlay, and reach a container cnm made itself.
//!
//! Two hosts: each a network namespace of the test's with a veth onto an underlay bridge (etcd
//! listens there, in a namespace of its own), in which `unshare --mount --pid` runs a cnmd
//! (`--cluster-store etcd://…`, `--docker-plugin cnm`, its socket in `/run/docker/plugins` of a
//! fresh tmpfs) and then becomes dockerd, PID 1 of its PID namespace, whose death takes cnmd,
//! containerd and the containers with it. Nothing touches the machine's own interfaces.
//!
//! dockerd without swarm refuses a plugin that answers `Scope: global` ("This node is not a
//! swarm manager"): the plugin answers local scope and the network is shared on cnm's side,
//! which is what this proves.

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink};
use cnm_testkit::etcd::EtcdServer;
use common::Client;
use serde_json::{Value, json};

const DOCKERD: &str = "/usr/sbin/dockerd";
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_STATIC_MARK: &str = "/usr/share/doc/busybox-static/copyright";
const IMAGE: &str = "cnm-overlay-busybox:latest";
const UNDERLAY: &str = "192.168.79";
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 254);
const SUBNET: &str = "10.79.0.0/24";

fn docker_cli() -> Result<PathBuf> {
    ["/usr/bin/docker", "/usr/local/bin/docker"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no docker CLI: install Debian's docker.io (`cargo xtask test` does)")
}

/// One host: its network namespace, and in it cnmd and dockerd (stopped on drop).
struct Host {
    index: u8,
    netns: NetNs,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cgroup_parent: String,
    docker: PathBuf,
}

impl Host {
    /// The host's network namespace as a path another process can enter.
    fn ns_path(&self) -> String {
        format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.netns
                .held_fd()
                .expect("a test host's namespace is held")
                .as_raw_fd()
        )
    }

    /// Starts cnmd (in the cluster) and dockerd in `netns`, and waits until dockerd answers.
    fn start(index: u8, netns: NetNs) -> Result<Host> {
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
            .prefix(&format!("cnm-plugin-overlay-h{index}-"))
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}\n")?;
        let cgroup_parent = format!("cnm-plugin-overlay-{}-h{index}", std::process::id());
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let script = r#"set -e
mount -t tmpfs -o mode=0755 cnm-plugin-overlay /run
mount -t tmpfs -o mode=0755 cnm-plugin-overlay /etc/docker
ip link set lo up
"$CNMD" --socket "$DIR/cnm.sock" --run-dir "$DIR/cnm-run" --state-dir "$DIR/cnm-state" \
    --cluster-store "$CLUSTER" --advertise-addr "$ADVERTISE" --log-level info \
    --docker-plugin cnm --plugin-dir "$DIR/no-plugins" >"$DIR/cnmd.log" 2>&1 &
for i in $(seq 1 1500); do [ -S /run/docker/plugins/cnm.sock ] && break; sleep 0.02; done
[ -S /run/docker/plugins/cnm.sock ] || { echo "cnmd made no plugin socket"; exit 1; }
exec "$@""#;
        let child = Command::new("nsenter")
            .arg(format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                netns
                    .held_fd()
                    .expect("a test host's namespace is held")
                    .as_raw_fd()
            ))
            .args([
                "--",
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
            ])
            .args(["--kill-child", "--propagation", "private"])
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
            .arg("--containerd-namespace")
            .arg(format!("cnm-plugin-overlay-h{index}"))
            .arg("--cgroup-parent")
            .arg(format!("/{cgroup_parent}"))
            .env("CNMD", env!("CARGO_BIN_EXE_cnmd"))
            .env("DIR", d)
            .env("CLUSTER", format!("etcd://{ETCD_ADDR}:2379"))
            .env("ADVERTISE", format!("{UNDERLAY}.{index}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start nsenter unshare dockerd (needs root)")?;
        let mut me = Host {
            index,
            netns,
            child: Some(child),
            dir,
            cgroup_parent,
            docker,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
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
                    "host {}: dockerd exited ({status}) before it answered:\n{}",
                    self.index,
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "host {}: dockerd did not answer within 90 s:\n{}",
                    self.index,
                    self.logs()
                );
            }
            // A readiness probe with a bound, backing off: dockerd has no other signal.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- host {} dockerd.log\n{}\n--- host {} cnmd.log\n{}",
            self.index,
            read("dockerd.log"),
            self.index,
            read("cnmd.log")
        )
    }

    /// Runs the docker CLI against this host's dockerd; its stdout, trimmed.
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
            "host {}: docker {}: {}",
            self.index,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// This host's cnmd API.
    fn cnm(&self) -> Client {
        Client::new(&self.dir.path().join("cnm.sock"))
    }

    /// A command's output in this host's network namespace.
    fn in_ns(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path()))
            .arg("--")
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

    /// The veths of the host's namespace, sorted.
    fn veths(&self) -> Result<Vec<String>> {
        let out = self.in_ns(&["ip", "-o", "-d", "link", "show", "type", "veth"])?;
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_owned()))
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
        for applet in ["sh", "sleep", "ip", "ping"] {
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

    /// The address container `name` has on Docker network `net`.
    fn ip(&self, name: &str, net: &str) -> Result<String> {
        self.docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            name,
        ])
    }

    /// Waits (at most 30 s) until container `from` pings `to` once: the overlay's entries for
    /// a new endpoint reach the other host through etcd, on their own schedule.
    fn ping_within(&self, from: &str, to: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.docker(&["exec", from, "ping", "-c", "1", "-W", "2", to]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "host {}: {from} did not reach {to} within 30 s",
                        self.index
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// What explains a failed ping: the host's links, FDB, neighbours and ruleset, and each
    /// container's addresses, routes and neighbours.
    fn diagnostics(&self) -> String {
        let mut out = format!("=== host {} diagnostics\n", self.index);
        for cmd in [
            &["ip", "-d", "link"][..],
            &["ip", "-o", "addr"],
            &["bridge", "fdb", "show"],
            &["ip", "neigh", "show"],
            &["nft", "list", "ruleset"],
        ] {
            let got = self.in_ns(cmd).unwrap_or_else(|e| format!("{e:#}"));
            out.push_str(&format!("--- {}\n{got}\n", cmd.join(" ")));
        }
        let ids = self.docker(&["ps", "-q"]).unwrap_or_default();
        for id in ids.split_whitespace() {
            for cmd in [&["ip", "addr"][..], &["ip", "route"], &["ip", "neigh"]] {
                let mut argv = vec!["exec", id];
                argv.extend_from_slice(cmd);
                let got = self.docker(&argv).unwrap_or_else(|e| format!("{e:#}"));
                out.push_str(&format!("--- docker exec {id} {}\n{got}\n", cmd.join(" ")));
            }
        }
        out
    }

    fn ns_pid_of(child: &Child) -> Result<u32> {
        // nsenter → unshare → sh/dockerd.
        let mut pid = child.id();
        for _ in 0..2 {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
            pid = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .context("no child")?;
        }
        Ok(pid)
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // dockerd is PID 1 of its PID namespace: its death kills cnmd, containerd, shims and
        // containers with it.
        if let Ok(pid) = Self::ns_pid_of(&child) {
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
}

impl Drop for Host {
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

/// The underlay (a bridge in a namespace of the test's, etcd on it) and two hosts on it.
struct Cluster {
    hosts: Vec<Host>,
    _etcd: EtcdServer,
    _underlay: NetNs,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let underlay = NetNs::create_anonymous().await?;
        let nl = Netlink::connect(&underlay).await?;
        nl.loopback_up().await?;
        let mut br = LinkSpec::new("under0".parse()?, LinkKind::Bridge);
        br.up = true;
        nl.create_link(&br).await?;
        let br = nl.link("under0").await?.context("under0")?;
        nl.add_address(br.index, format!("{ETCD_ADDR}/24").parse()?)
            .await?;
        let etcd = EtcdServer::start(&underlay, ETCD_ADDR.into()).await?;
        let mut nss = Vec::new();
        for i in 1..=2u8 {
            let ns = NetNs::create_anonymous().await?;
            let mut veth = LinkSpec::new(
                format!("ul{i}").parse()?,
                LinkKind::Veth {
                    peer_name: "eth0".parse()?,
                    peer_ns: Some(ns.clone()),
                    peer_mac: None,
                    peer_mtu: None,
                    peer_up: true,
                },
            );
            veth.master = Some(br.index);
            veth.up = true;
            nl.create_link(&veth).await?;
            // A container host that forwards already (as TestHost's; dockerd's own bridge
            // driver turns it on too). The case of a host cnm makes forward, with br_netfilter
            // active, is crates/cnm/tests/overlay_br_netfilter.rs's.
            cnm_sandbox::set_sysctls(&ns, &[("net.ipv4.ip_forward", "1")]).await?;
            let hnl = Netlink::connect(&ns).await?;
            let eth0 = hnl.link("eth0").await?.context("eth0")?;
            hnl.add_address(eth0.index, format!("{UNDERLAY}.{i}/24").parse()?)
                .await?;
            nss.push((i, ns));
        }
        // Both dockerds start at once: on a loaded machine each takes seconds.
        let started = nss
            .into_iter()
            .map(|(i, ns)| std::thread::spawn(move || Host::start(i, ns)))
            .collect::<Vec<_>>();
        let mut hosts = Vec::new();
        let mut first_err = None;
        for t in started {
            match t.join() {
                Ok(Ok(h)) => hosts.push(h),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("Host::start panicked"))),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(Cluster {
            hosts,
            _etcd: etcd,
            _underlay: underlay,
        })
    }

    fn logs(&self) -> String {
        let mut out: Vec<String> = self.hosts.iter().map(Host::logs).collect();
        out.extend(self.hosts.iter().map(Host::diagnostics));
        out.join("\n")
    }
}

/// Waits (at most 10 s) until host `api`'s cnmd has cnm network `name`.
async fn until_network(api: &Client, name: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = api.json("GET", &format!("/networks/{name}"), None).await?;
        if status == 200 {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "cnm network {name} not seen within 10 s: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The IPv4 addresses (without prefix) of a cnm network's endpoints as cnmd lists them.
fn cnm_addresses(net: &Value) -> Vec<String> {
    let mut v: Vec<String> = net["Containers"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|e| e["IPv4Address"].as_str())
                .map(|s| s.split('/').next().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn in_subnet(ip: &str) -> bool {
    let net: ipnet::Ipv4Net = SUBNET.parse().expect("SUBNET is a prefix");
    ip.parse::<Ipv4Addr>().is_ok_and(|a| net.contains(&a))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn dockerd_containers_on_two_hosts_reach_each_other_over_a_cnm_overlay() -> Result<()> {
    let cluster = Cluster::start().await?;
    let result = async {
        let (h1, h2) = (&cluster.hosts[0], &cluster.hosts[1]);
        h1.import_image()?;
        h2.import_image()?;

        // The overlay is cnm's: made once, on host 1, seen by host 2 through etcd.
        let created = h1
            .cnm()
            .expect(
                "POST",
                "/networks/create",
                Some(json!({"Name": "ov", "Driver": "overlay",
                            "IPAM": {"Config": [{"Subnet": SUBNET}]}})),
                201,
            )
            .await?;
        let ov_id = created["Id"].as_str().context("Id")?.to_owned();
        let on2 = until_network(&h2.cnm(), "ov").await?;
        ensure!(
            on2["Id"] == ov_id.as_str() && on2["Scope"] == "global",
            "{on2}"
        );

        // Refused, naming what is wrong, and leaving nothing: dockerd's own addresses on a
        // shared network (each host's dockerd would give the same ones), and a network cnm
        // does not have.
        let err = h1
            .docker(&[
                "network",
                "create",
                "-d",
                "cnm",
                "-o",
                "com.cnm.network=ov",
                "dov-own-ipam",
            ])
            .expect_err("dockerd's IPAM on a shared cnm network must be refused");
        ensure!(format!("{err:#}").contains("--ipam-driver null"), "{err:#}");
        let err = h1
            .docker(&[
                "network",
                "create",
                "-d",
                "cnm",
                "--ipam-driver",
                "null",
                "-o",
                "com.cnm.network=nowhere",
                "dov-nowhere",
            ])
            .expect_err("a cnm network that does not exist must be refused");
        ensure!(format!("{err:#}").contains("nowhere"), "{err:#}");
        let listed = h1.docker(&["network", "ls", "--format", "{{.Name}}"])?;
        ensure!(
            !listed.contains("dov-"),
            "a refused network is listed:\n{listed}"
        );

        // Each host's dockerd makes its own Docker network on the one cnm overlay.
        for h in [h1, h2] {
            h.docker(&[
                "network",
                "create",
                "-d",
                "cnm",
                "--ipam-driver",
                "null",
                "-o",
                "com.cnm.network=ov",
                "dov",
            ])?;
        }
        // cnm's own container on host 2, on the same overlay.
        let api2 = h2.cnm();
        api2.expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({"Name": "s2"})),
            201,
        )
        .await?;
        let sb = api2
            .expect(
                "POST",
                "/cnm/v1/sandboxes/s2/connect",
                Some(json!({"Network": "ov"})),
                200,
            )
            .await?;
        let s2_ip = sb["Endpoints"][0]["IPv4Address"]
            .as_str()
            .and_then(|s| s.split('/').next())
            .context("s2's address")?
            .to_owned();
        ensure!(in_subnet(&s2_ip), "s2's address {s2_ip}");
        let veths_before = [h1.veths()?, h2.veths()?];
        h1.docker(&[
            "run",
            "-d",
            "--name",
            "c1",
            "--network",
            "dov",
            IMAGE,
            "sleep",
            "1000",
        ])?;
        h2.docker(&[
            "run",
            "-d",
            "--name",
            "c2",
            "--network",
            "dov",
            IMAGE,
            "sleep",
            "1000",
        ])?;
        let (ip1, ip2) = (h1.ip("c1", "dov")?, h2.ip("c2", "dov")?);
        // cnm chose both addresses, from the overlay's one allocator in etcd.
        ensure!(
            in_subnet(&ip1) && in_subnet(&ip2) && ip1 != ip2 && ![&ip1, &ip2].contains(&&s2_ip),
            "addresses {ip1:?}, {ip2:?} and s2's {s2_ip:?}: want three in {SUBNET}"
        );
        let eth0 = h1.docker(&["exec", "c1", "ip", "-o", "addr", "show", "eth0"])?;
        ensure!(eth0.contains(&format!("{ip1}/24")), "c1's eth0: {eth0}");
        let link = h1.docker(&["exec", "c1", "ip", "link", "show", "eth0"])?;
        ensure!(
            link.contains("mtu 1450"),
            "c1's eth0 has not the overlay's MTU: {link}"
        );

        // Real traffic across the overlay, both ways.
        h1.ping_within("c1", &ip2)?;
        h2.ping_within("c2", &ip1)?;

        // ... and to cnm's own container on host 2.
        h1.ping_within("c1", &s2_ip)?;

        // dockerd gives its containers their way out (docker_gwbridge): cnm's gateway network
        // is never made on host 1, which has only dockerd's container.
        let (status, v) = h1.cnm().json("GET", "/networks/cnm_gwbridge", None).await?;
        ensure!(
            status == 404,
            "cnm's gateway network on host 1: {status} {v}"
        );
        let route = h1.docker(&["exec", "c1", "ip", "route"])?;
        ensure!(
            route.contains("default via") && !route.contains("default via 10.79."),
            "c1's routes: {route}"
        );

        // Each cnmd lists its host's dockerd endpoint on the overlay, with dockerd's address.
        let on1 = h1.cnm().expect("GET", "/networks/ov", None, 200).await?;
        ensure!(cnm_addresses(&on1).contains(&ip1), "host 1's cnm: {on1}");
        let on2 = h2.cnm().expect("GET", "/networks/ov", None, 200).await?;
        ensure!(cnm_addresses(&on2).contains(&ip2), "host 2's cnm: {on2}");

        // docker rm -f: the endpoint leaves cnm and no veth stays behind.
        h1.docker(&["rm", "-f", "c1"])?;
        h2.docker(&["rm", "-f", "c2"])?;
        for (h, (ip, before)) in [
            (h1, (&ip1, &veths_before[0])),
            (h2, (&ip2, &veths_before[1])),
        ] {
            let now = h.cnm().expect("GET", "/networks/ov", None, 200).await?;
            ensure!(
                !cnm_addresses(&now).contains(ip),
                "host {}: endpoint {ip} left in cnm: {now}",
                h.index
            );
            ensure!(
                &h.veths()? == before,
                "host {}: docker rm -f left a veth: {:?}, was {before:?}",
                h.index,
                h.veths()?
            );
        }

        // docker network rm: dockerd's network goes, cnm's overlay stays (it is cnm's, and
        // host 2's cnm container is on it).
        for h in [h1, h2] {
            h.docker(&["network", "rm", "dov"])?;
        }
        let on1 = h1.cnm().expect("GET", "/networks/ov", None, 200).await?;
        ensure!(on1["Id"] == ov_id.as_str(), "{on1}");
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        bail!("{e:#}\n{}", cluster.logs());
    }
    Ok(())
}
