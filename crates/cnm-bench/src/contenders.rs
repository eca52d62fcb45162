//! The contenders of the attach/detach, ports, scale and parallel scenarios: each one builds a
//! sandbox, an endpoint on an existing bridge network and its published ports, its own way, in
//! its own throwaway host namespace.
//!
//! Attach `i` always means sandbox `i`: the same names, the `i`th address of the subnet and the
//! ports asked for, so every contender does the same work.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use cnm::{Controller, Endpoint, EndpointOptions, Network, PortBinding, Sandbox};
use cnm_firewall::{Firewall, NetworkRules, PortMapping, Protocol};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink, RouteSpec};
use cnm_testkit::TestHost;
use cnm_types::IfName;
use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

use crate::fixture;
use crate::peers::{self, BridgeNet, Cmd, DockerPeer, Peers, PortSpec};

/// The network every contender attaches to (each in its own host namespace).
pub fn bench_net() -> BridgeNet {
    BridgeNet {
        name: "benchnet".into(),
        bridge: "benchbr0".into(),
        subnet: "10.89.0.0/16".parse().expect("constant subnet"),
        gateway: "10.89.0.1".parse().expect("constant gateway"),
    }
}

/// Attaches per network: attach `i` joins network `i / PER_NETWORK` (a Linux bridge takes at
/// most 1024 ports), so the 1000 of the scale scenario all join [`bench_net`] and the 10,000 of
/// `--scale` spread over ten networks (see [`Contender::add_networks`]).
pub const PER_NETWORK: u32 = 1000;

/// The network attach `i` joins and its address there.
pub fn placement(i: u32) -> (usize, BridgeNet, Ipv4Addr) {
    if !(PER_NETWORK..KEEPER).contains(&i) {
        let net = bench_net();
        let ip = net.address(i);
        return (0, net, ip);
    }
    let k = i / PER_NETWORK;
    let net = extra_net(k as usize);
    let ip = net.address(i % PER_NETWORK);
    (k as usize, net, ip)
}

/// Network `k` (from 1) beyond [`bench_net`].
fn extra_net(k: usize) -> BridgeNet {
    BridgeNet {
        name: format!("benchnet{k}"),
        bridge: format!("benchbr{k}"),
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 100 + k as u8, 0, 0), 16).expect("constant prefix"),
        gateway: Ipv4Addr::new(10, 100 + k as u8, 0, 1),
    }
}

/// The ports attach `i` publishes in the attach and scale scenarios: one TCP port.
pub fn one_port(i: u32) -> Vec<PortSpec> {
    vec![PortSpec::single(20000 + (i % 20000) as u16, 80)]
}

/// Which contender, before it is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// cnm through the library, with its default (durable, embedded redb) store.
    Cnm,
    /// cnm through the library with the store in memory: cnm's own overhead without the sync.
    CnmMemory,
    /// cnm through the `cnm` CLI and `cnmd`.
    Cli,
    /// The same netlink and nftables messages with no bookkeeping.
    Floor,
    /// The floor plus one synced record write per public call (what a durable store pays at
    /// least: cnm's embedded store fdatasyncs once per commit).
    FloorDurable,
    /// One `ip -batch` per side plus one `nft -f`.
    IpBatch,
    /// Debian's netavark 1.4 (iptables).
    NetavarkDeb,
    /// netavark 1.17.2 with the nftables driver.
    Netavark,
    /// The CNI reference plugins: bridge + host-local + portmap.
    Cni,
    /// `docker network connect/disconnect` of a running container (already on the default
    /// bridge) to a user-defined network, on the bench's own dockerd.
    Docker,
}

impl Kind {
    /// The contender's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cnm => "cnm",
            Kind::CnmMemory => "cnm-memory",
            Kind::Cli => "cnm-cli",
            Kind::Floor => "floor",
            Kind::FloorDurable => "floor-durable",
            Kind::IpBatch => "ip-batch",
            Kind::NetavarkDeb => "netavark-1.4",
            Kind::Netavark => "netavark",
            Kind::Cni => "cni",
            Kind::Docker => "docker",
        }
    }

    /// cnm through the library (its spans tell where its time goes).
    pub fn is_cnm_library(self) -> bool {
        matches!(self, Kind::Cnm | Kind::CnmMemory)
    }

    /// Every attach contender, in report order.
    pub const ALL: [Kind; 10] = [
        Kind::Cnm,
        Kind::CnmMemory,
        Kind::Cli,
        Kind::Floor,
        Kind::FloorDurable,
        Kind::IpBatch,
        Kind::NetavarkDeb,
        Kind::Netavark,
        Kind::Cni,
        Kind::Docker,
    ];
}

/// A contender that is set up and ready to attach.
pub struct Contender {
    /// Which one.
    pub kind: Kind,
    host: TestHost,
    imp: Imp,
}

enum Imp {
    Cnm(CnmImp),
    Cli(CliImp),
    Floor(FloorImp),
    IpBatch,
    Netavark(NetavarkImp),
    Cni(CniImp),
    Docker(DockerImp),
}

struct CnmImp {
    ctl: Controller,
    /// [`bench_net`], then the networks [`Contender::add_networks`] added.
    nets: Vec<Network>,
    live: Mutex<HashMap<u32, (Sandbox, Endpoint)>>,
}

/// `cnmd` running in the throwaway host namespace, driven through the `cnm` CLI.
struct CliImp {
    cnm: PathBuf,
    host_arg: String,
    daemon: std::process::Child,
}

impl CliImp {
    /// Runs `cnm --host … ARGS` inside `ns`.
    async fn run(&self, args: &[&str], ns: &NetNs) -> Result<()> {
        let mut all = vec!["--host", self.host_arg.as_str()];
        all.extend_from_slice(args);
        Cmd::new(&self.cnm, &all).run_in(ns).await?;
        Ok(())
    }

    /// `cnm network create` of the bridge network `net`, with the embedded DNS off under
    /// `--no-dns`.
    async fn create_network(&self, net: &BridgeNet, ns: &NetNs) -> Result<()> {
        let subnet = net.subnet.to_string();
        let mut args = vec!["network", "create", "--subnet", subnet.as_str()];
        let option = fixture::no_dns_option();
        if let Some(option) = &option {
            args.extend(["-o", option.as_str()]);
        }
        args.push(&net.name);
        self.run(&args, ns).await
    }
}

impl Drop for CliImp {
    fn drop(&mut self) {
        // SIGTERM: cnmd shuts down cleanly; then reap it.
        let pid = nix::unistd::Pid::from_raw(self.daemon.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
            let _ = self.daemon.kill(); // already gone or not ours to signal: make sure
        }
        let _ = self.daemon.wait();
    }
}

struct FloorImp {
    netlink: Netlink,
    /// The bridge of [`bench_net`], then those [`Contender::add_networks`] added.
    bridges: Vec<u32>,
    fw: Firewall,
    /// `floor-durable` only: where each public call's record is written and synced.
    journal: Option<Journal>,
}

/// The durable floor's store: one preallocated file in the contender's state directory (the
/// directory, and so the file system, cnm's embedded store uses). Each public call overwrites
/// one small record in place and `fdatasync`s it on a blocking thread, which is what cnm's redb
/// store does per commit (one-phase commit with checksums: the pages are written, then one
/// `File::sync_data`, from `spawn_blocking`). It keeps no index and reads nothing back, so it
/// is the least a durable system can pay, not a model of redb.
struct Journal {
    file: std::sync::Arc<std::fs::File>,
}

/// Bytes reserved for the journal, so a record write never grows the file (a growing file
/// needs its metadata synced too, which redb pays only when its file grows).
const JOURNAL_BYTES: u64 = 64 * 1024;

impl Journal {
    fn create(dir: &std::path::Path) -> Result<Journal> {
        let path = dir.join("floor-durable.journal");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        file.set_len(JOURNAL_BYTES)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("failed to preallocate {}", path.display()))?;
        Ok(Journal {
            file: std::sync::Arc::new(file),
        })
    }

    /// Writes `record` (what the public call changed) at the start of the file and syncs it.
    async fn record(&self, record: String) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            file.write_all_at(record.as_bytes(), 0)?;
            file.sync_data()
        })
        .await
        .context("the journal's writer thread died")?
        .context("failed to write and sync the floor-durable record")
    }
}

struct NetavarkImp {
    binary: PathBuf,
    config_dir: tempfile::TempDir,
    firewall: &'static str,
    live: Mutex<HashMap<u32, Value>>,
}

struct CniImp {
    dir: PathBuf,
    data_dir: tempfile::TempDir,
    live: Mutex<HashMap<u32, (Value, Vec<PortSpec>)>>,
}

struct DockerImp {
    peer: DockerPeer,
    network: String,
    container: String,
}

impl DockerImp {
    /// `docker network connect|disconnect NETWORK CONTAINER` for the bench's container.
    async fn container_network(&self, verb: &str, ns: &NetNs) -> Result<()> {
        self.peer
            .cmd(&["network", verb, &self.network, &self.container])
            .run_in(ns)
            .await?;
        Ok(())
    }
}

/// Why a contender cannot run here ("not installed", "not reachable", …), or a real error.
pub enum Unavailable {
    /// Reported as the contender's status.
    Status(String),
    /// Setting it up failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Unavailable {
    fn from(e: anyhow::Error) -> Self {
        Unavailable::Failed(e)
    }
}

impl Contender {
    /// Sets the contender up in a fresh throwaway host namespace with the bridge network
    /// created (and, for the peers that delete an empty bridge, kept alive).
    pub async fn setup(kind: Kind, peers: &Peers) -> Result<Contender, Unavailable> {
        let host = TestHost::new().await?;
        let net = bench_net();
        let imp = match kind {
            Kind::Cnm | Kind::CnmMemory => {
                let ctl = if kind == Kind::Cnm {
                    host.controller().await
                } else {
                    host.memory_controller().await
                }
                .context("failed to build a cnm controller")?;
                let cnm_net = fixture::bridge_network(&ctl, &net.name, IpNet::V4(net.subnet))
                    .await
                    .context("failed to create the cnm network")?;
                Imp::Cnm(CnmImp {
                    ctl,
                    nets: vec![cnm_net],
                    live: Mutex::new(HashMap::new()),
                })
            }
            Kind::Cli => {
                let (cnm, cnmd) = peers
                    .cli
                    .clone()
                    .map_err(|why| Unavailable::Status(format!("not available: {why}")))?;
                Imp::Cli(cli_setup(&host, &net, cnm, cnmd).await?)
            }
            Kind::Floor => Imp::Floor(floor_setup(&host, &net, false).await?),
            Kind::FloorDurable => Imp::Floor(floor_setup(&host, &net, true).await?),
            Kind::IpBatch => {
                let script = format!(
                    "link add {br} type bridge\naddr add {gw}/{len} dev {br}\nlink set {br} up\n",
                    br = net.bridge,
                    gw = net.gateway,
                    len = net.subnet.prefix_len()
                );
                Cmd::new("ip", &["-batch", "-"])
                    .stdin(script)
                    .run_in(host.netns())
                    .await?;
                Cmd::new("nft", &["-f", "-"])
                    .stdin(peers::NFT_BASE)
                    .run_in(host.netns())
                    .await?;
                Imp::IpBatch
            }
            Kind::NetavarkDeb | Kind::Netavark => {
                let (binary, firewall) = if kind == Kind::NetavarkDeb {
                    (peers.netavark_deb.clone(), "iptables")
                } else {
                    (peers.netavark_new.clone(), "nftables")
                };
                let binary = binary.ok_or_else(|| Unavailable::Status("not installed".into()))?;
                let imp = NetavarkImp {
                    binary,
                    config_dir: tempfile::tempdir().context("netavark config dir")?,
                    firewall,
                    live: Mutex::new(HashMap::new()),
                };
                Imp::Netavark(imp)
            }
            Kind::Cni => {
                let dir = peers
                    .cni_dir
                    .clone()
                    .ok_or_else(|| Unavailable::Status("not installed".into()))?;
                Imp::Cni(CniImp {
                    dir,
                    data_dir: tempfile::tempdir().context("CNI data dir")?,
                    live: Mutex::new(HashMap::new()),
                })
            }
            Kind::Docker => Imp::Docker(docker_setup(peers, &host).await?),
        };
        let c = Contender { kind, host, imp };
        // netavark deletes the bridge with its last container: a keeper container holds it, so
        // every timed attach joins an existing network, as for the others.
        if matches!(c.imp, Imp::Netavark(_) | Imp::Cni(_)) {
            c.attach(KEEPER, &[]).await?;
        }
        Ok(c)
    }

    /// Makes networks 1 to `count - 1` beside [`bench_net`] (cnm, its CLI and the floors only),
    /// so that attaches up to `count * PER_NETWORK` have a network (see [`placement`]).
    pub async fn add_networks(&mut self, count: usize) -> Result<()> {
        for k in 1..count {
            let net = extra_net(k);
            match &mut self.imp {
                Imp::Cnm(c) => {
                    if c.nets.len() <= k {
                        let n = fixture::bridge_network(&c.ctl, &net.name, IpNet::V4(net.subnet))
                            .await?;
                        c.nets.push(n);
                    }
                }
                Imp::Floor(f) => {
                    if f.bridges.len() <= k {
                        let index = floor_bridge(&f.netlink, &f.fw, &net).await?;
                        f.bridges.push(index);
                    }
                }
                Imp::Cli(c) => c.create_network(&net, self.host.netns()).await?,
                _ => anyhow::bail!("{} has only one network here", self.kind.name()),
            }
        }
        Ok(())
    }

    /// cnm (durable store) only: shuts its controller down and builds a new one on the same
    /// state directory, as a restart of cnmd does; returns how long the new one took to be
    /// ready (records reloaded, kernel state reconciled). The live attaches' handles are
    /// dropped (they belong to the old controller) and looked up again by name.
    pub async fn restart_cnm(&mut self) -> Result<(std::time::Duration, crate::spans::Phases)> {
        let Imp::Cnm(c) = &mut self.imp else {
            anyhow::bail!("{} is not cnm through the library", self.kind.name());
        };
        if self.kind != Kind::Cnm {
            anyhow::bail!("restart needs the durable store (cnm, not cnm-memory)");
        }
        let live: Vec<u32> = lock(&c.live).drain().map(|(i, _)| i).collect();
        let names: Vec<String> = c.nets.iter().map(|n| n.name().to_owned()).collect();
        c.nets.clear();
        c.ctl
            .shutdown()
            .await
            .context("failed to shut the controller down")?;
        let before = crate::spans::TIMES.snapshot();
        let t = std::time::Instant::now();
        let ctl = self.host.controller().await?;
        let ready = t.elapsed();
        let phases = crate::spans::TIMES.snapshot().since(&before).phases(ready);
        for name in &names {
            c.nets.push(ctl.network(name)?);
        }
        for i in live {
            let name = format!("c{i}");
            let (k, _, _) = placement(i);
            let ep = c.nets[k].endpoint(&name)?;
            let sb = ctl.sandbox(&name)?;
            lock(&c.live).insert(i, (sb, ep));
        }
        c.ctl = ctl;
        Ok((ready, phases))
    }

    /// Attach `i`: sandbox, endpoint, join, publish `ports`.
    pub async fn attach(&self, i: u32, ports: &[PortSpec]) -> Result<()> {
        let (k, net, ip) = placement(i);
        if k > 0 && !matches!(self.imp, Imp::Cnm(_) | Imp::Cli(_) | Imp::Floor(_)) {
            anyhow::bail!("{} attaches on one network only", self.kind.name());
        }
        match &self.imp {
            Imp::Cnm(c) => {
                let mut opts = EndpointOptions::default();
                for p in ports {
                    let binding: PortBinding = p
                        .docker_syntax()
                        .parse()
                        .with_context(|| format!("port binding {}", p.docker_syntax()))?;
                    opts = opts.publish(binding);
                }
                let name = format!("c{i}");
                let net = c
                    .nets
                    .get(k)
                    .with_context(|| format!("no network {k} (see add_networks)"))?;
                let joined = fixture::joined(&c.ctl, net, &name, opts).await?;
                lock(&c.live).insert(i, joined);
            }
            Imp::Cli(c) => {
                let name = format!("c{i}");
                self.cli(c, &["sandbox", "create", &name]).await?;
                let mut args = vec!["connect".to_owned()];
                for p in ports {
                    args.extend(["-p".to_owned(), p.docker_syntax()]);
                }
                args.extend([net.name.clone(), name]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.cli(c, &args).await?;
            }
            Imp::Floor(f) => floor_attach(f, &self.host, i, ports).await?,
            Imp::IpBatch => {
                let (sb, veth) = (format!("sb{i}"), format!("vb{i}"));
                let ns = self.host.netns();
                Cmd::new("ip", &["-batch", "-"])
                    .stdin(peers::ip_attach_host_script(&sb, &veth, &net.bridge))
                    .run_in(ns)
                    .await?;
                let addr = Ipv4Net::new(ip, net.subnet.prefix_len()).context("address")?;
                Cmd::new("ip", &["-n", &sb, "-batch", "-"])
                    .stdin(peers::ip_attach_sandbox_script(addr, net.gateway))
                    .run_in(ns)
                    .await?;
                if !ports.is_empty() {
                    Cmd::new("nft", &["-f", "-"])
                        .stdin(peers::nft_ports_script(true, ip, ports))
                        .run_in(ns)
                        .await?;
                }
            }
            Imp::Netavark(n) => {
                let path = self.sandbox_path("netavark", i);
                NetNs::create(&path).await?;
                let config = peers::netavark_config(&format!("c{i}"), &net, ip, ports);
                self.netavark(n, "setup", &path, &config).await?;
                lock(&n.live).insert(i, config);
            }
            Imp::Cni(c) => {
                let path = self.sandbox_path("cni", i);
                NetNs::create(&path).await?;
                let bridge = peers::cni_bridge_config(&net, c.data_dir.path());
                let result = self.cni(c, "ADD", "bridge", i, &path, &bridge).await?;
                let result = if ports.is_empty() {
                    result
                } else {
                    let pm = peers::cni_portmap_config(&net, ports, &result);
                    self.cni(c, "ADD", "portmap", i, &path, &pm).await?
                };
                lock(&c.live).insert(i, (result, ports.to_vec()));
            }
            Imp::Docker(d) => d.container_network("connect", self.host.netns()).await?,
        }
        Ok(())
    }

    /// Detach `i`: the reverse of [`Contender::attach`].
    pub async fn detach(&self, i: u32, ports: &[PortSpec]) -> Result<()> {
        let (_, net, _) = placement(i);
        match &self.imp {
            Imp::Cnm(c) => {
                let (sb, ep) = lock(&c.live)
                    .remove(&i)
                    .with_context(|| format!("attach {i} is not live"))?;
                ep.leave_sandbox(&sb).await?;
                ep.delete().await?;
                sb.delete().await?;
            }
            Imp::Cli(c) => {
                let name = format!("c{i}");
                self.cli(c, &["disconnect", &net.name, &name]).await?;
                self.cli(c, &["sandbox", "rm", &name]).await?;
            }
            Imp::Floor(f) => floor_detach(f, &self.host, i).await?,
            Imp::IpBatch => {
                let ns = self.host.netns();
                if !ports.is_empty() {
                    Cmd::new("nft", &["-f", "-"])
                        .stdin(peers::nft_ports_script(false, net.address(i), ports))
                        .run_in(ns)
                        .await?;
                }
                Cmd::new("ip", &["-batch", "-"])
                    .stdin(peers::ip_detach_script(
                        &format!("sb{i}"),
                        &format!("vb{i}"),
                    ))
                    .run_in(ns)
                    .await?;
            }
            Imp::Netavark(n) => {
                let config = lock(&n.live)
                    .remove(&i)
                    .with_context(|| format!("attach {i} is not live"))?;
                let path = self.sandbox_path("netavark", i);
                self.netavark(n, "teardown", &path, &config).await?;
                NetNs::delete(&path).await?;
            }
            Imp::Cni(c) => {
                let (result, ports) = lock(&c.live)
                    .remove(&i)
                    .with_context(|| format!("attach {i} is not live"))?;
                let path = self.sandbox_path("cni", i);
                if !ports.is_empty() {
                    let pm = peers::cni_portmap_config(&net, &ports, &result);
                    self.cni(c, "DEL", "portmap", i, &path, &pm).await?;
                }
                let mut bridge = peers::cni_bridge_config(&net, c.data_dir.path());
                bridge["prevResult"] = result;
                self.cni(c, "DEL", "bridge", i, &path, &bridge).await?;
                NetNs::delete(&path).await?;
            }
            Imp::Docker(d) => d.container_network("disconnect", self.host.netns()).await?,
        }
        Ok(())
    }

    /// Undoes what setup did that dropping the host namespace does not (the keeper's sandbox,
    /// docker's network); errors are returned, not hidden.
    pub async fn finish(self) -> Result<()> {
        if matches!(self.imp, Imp::Netavark(_) | Imp::Cni(_)) {
            self.detach(KEEPER, &[]).await?;
        }
        if let Imp::Docker(d) = &self.imp {
            d.peer
                .cmd(&["network", "rm", &d.network])
                .run_in(self.host.netns())
                .await?;
        }
        Ok(())
    }

    fn sandbox_path(&self, dir: &str, i: u32) -> PathBuf {
        self.host.run_dir().join(dir).join(format!("sb{i}"))
    }

    async fn cli(&self, c: &CliImp, args: &[&str]) -> Result<()> {
        c.run(args, self.host.netns()).await
    }

    /// The contender's throwaway host.
    pub fn host(&self) -> &TestHost {
        &self.host
    }

    /// The throwaway host namespace the contender runs its commands in.
    pub fn netns(&self) -> &NetNs {
        self.host.netns()
    }

    /// `unix://SOCKET` of `cnmd`, for the CLI contender (the docker CLI speaks to it too).
    pub fn cnmd_host(&self) -> Option<&str> {
        match &self.imp {
            Imp::Cli(c) => Some(&c.host_arg),
            _ => None,
        }
    }

    /// The process id of `cnmd`, for the CLI contender.
    pub fn daemon_pid(&self) -> Option<u32> {
        match &self.imp {
            Imp::Cli(c) => Some(c.daemon.id()),
            _ => None,
        }
    }

    async fn netavark(
        &self,
        n: &NetavarkImp,
        command: &str,
        netns: &std::path::Path,
        config: &Value,
    ) -> Result<()> {
        let config_dir = n.config_dir.path().display().to_string();
        let netns = netns.display().to_string();
        Cmd::new(
            &n.binary,
            &[
                "--config",
                &config_dir,
                "--rootless",
                "false",
                command,
                &netns,
            ],
        )
        .env("NETAVARK_FW", n.firewall)
        .stdin(config.to_string())
        .run_in(self.host.netns())
        .await?;
        Ok(())
    }

    async fn cni(
        &self,
        c: &CniImp,
        command: &str,
        plugin: &str,
        i: u32,
        netns: &std::path::Path,
        config: &Value,
    ) -> Result<Value> {
        let out = Cmd::new(c.dir.join(plugin), &[])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", peers::long_id(&format!("c{i}")))
            .env("CNI_NETNS", netns.display().to_string())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", c.dir.display().to_string())
            .stdin(config.to_string())
            .run_in(self.host.netns())
            .await?;
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("CNI {plugin} {command} printed no JSON result"))
    }
}

/// The attach index of the keeper container (far above any timed one).
const KEEPER: u32 = 60_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ifname(s: &str) -> Result<IfName> {
    IfName::new(s).with_context(|| format!("interface name {s}"))
}

/// Starts `cnmd` inside the host namespace with its socket and directories under the host's
/// temporary ones, waits (bounded) until it answers, and creates the network through the CLI.
async fn cli_setup(
    host: &TestHost,
    net: &BridgeNet,
    cnm: PathBuf,
    cnmd: PathBuf,
) -> Result<CliImp> {
    let run_dir = host.run_dir().join("cnmd");
    let socket = run_dir.join("cnm.sock");
    let args: Vec<String> = vec![
        "--socket".into(),
        socket.display().to_string(),
        "--run-dir".into(),
        run_dir.display().to_string(),
        "--state-dir".into(),
        host.state_dir().display().to_string(),
        "--log-level".into(),
        "warn".into(),
    ];
    let program = cnmd.clone();
    let daemon = host
        .netns()
        .run(move || {
            std::process::Command::new(program)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .await?
        .with_context(|| format!("failed to start {}", cnmd.display()))?;
    let imp = CliImp {
        cnm,
        host_arg: format!("unix://{}", socket.display()),
        daemon,
    };
    let mut last = None;
    for _ in 0..100 {
        match imp.run(&["info"], host.netns()).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    if let Some(e) = last {
        return Err(e.context("cnmd did not answer within 5 s"));
    }
    imp.create_network(net, host.netns()).await?;
    Ok(imp)
}

async fn floor_setup(host: &TestHost, net: &BridgeNet, durable: bool) -> Result<FloorImp> {
    let netlink = host.netlink().clone();
    let fw = Firewall::new(host.netns()).await?;
    let bridge = floor_bridge(&netlink, &fw, net).await?;
    let journal = if durable {
        Some(Journal::create(host.state_dir())?)
    } else {
        None
    };
    Ok(FloorImp {
        netlink,
        bridges: vec![bridge],
        fw,
        journal,
    })
}

/// The floor's network `net`: its bridge with the gateway address, and its NAT rules.
async fn floor_bridge(netlink: &Netlink, fw: &Firewall, net: &BridgeNet) -> Result<u32> {
    let mut spec = LinkSpec::new(ifname(&net.bridge)?, LinkKind::Bridge);
    spec.up = true;
    netlink.create_link(&spec).await?;
    let bridge = netlink
        .link(&net.bridge)
        .await?
        .context("bridge vanished")?
        .index;
    netlink
        .add_address(
            bridge,
            IpNet::V4(Ipv4Net::new(net.gateway, net.subnet.prefix_len())?),
        )
        .await?;
    fw.add_network(&NetworkRules::nat(
        net.name.clone(),
        ifname(&net.bridge)?,
        vec![net.subnet],
    ))
    .await?;
    Ok(bridge)
}

async fn floor_attach(f: &FloorImp, host: &TestHost, i: u32, ports: &[PortSpec]) -> Result<()> {
    let (k, net, ip) = placement(i);
    let bridge = *f
        .bridges
        .get(k)
        .with_context(|| format!("no network {k} (see add_networks)"))?;
    // Public call 1, the sandbox: its namespace, then its record.
    let ns = NetNs::create(host.run_dir().join("floor").join(format!("sb{i}"))).await?;
    f.record(|| format!("sandbox sb{i}")).await?;
    // Public call 2, the endpoint: an address (chosen by the caller here) and its record.
    f.record(|| format!("endpoint ep{i} {ip}")).await?;
    // Public call 3, the join: the kernel work, then the records.
    let mut spec = LinkSpec::new(
        ifname(&format!("vf{i}"))?,
        LinkKind::Veth {
            peer_name: ifname("eth0")?,
            peer_ns: Some(ns.clone()),
            peer_mac: None,
            peer_mtu: None,
            peer_up: true,
        },
    );
    spec.master = Some(bridge);
    spec.up = true;
    f.netlink.create_link(&spec).await?;
    let inside = Netlink::connect(&ns).await?;
    inside.loopback_up().await?;
    let eth0 = inside.link("eth0").await?.context("eth0 vanished")?.index;
    inside
        .add_address(eth0, IpNet::V4(Ipv4Net::new(ip, net.subnet.prefix_len())?))
        .await?;
    inside
        .add_route(&RouteSpec::default_via(IpAddr::V4(net.gateway), Some(eth0)))
        .await?;
    if !ports.is_empty() {
        let mappings: Vec<PortMapping> = ports
            .iter()
            .map(|p| PortMapping {
                proto: Protocol::Tcp,
                host_ip: None,
                host_ports: (p.host_port, p.host_port + p.range - 1),
                container_ip: IpAddr::V4(ip),
                container_ports: (p.container_port, p.container_port + p.range - 1),
            })
            .collect();
        f.fw.add_port_mappings(&net.name, &format!("ep{i}"), &mappings)
            .await?;
    }
    f.record(|| format!("join ep{i} sb{i}")).await?;
    Ok(())
}

/// Destructive calls write their records first (as cnm does), then undo the kernel work.
async fn floor_detach(f: &FloorImp, host: &TestHost, i: u32) -> Result<()> {
    // Public call 1, the leave.
    f.record(|| format!("leave ep{i} sb{i}")).await?;
    f.fw.remove_port_mappings(&format!("ep{i}")).await?;
    let veth = format!("vf{i}");
    let index = f
        .netlink
        .link(&veth)
        .await?
        .with_context(|| format!("{veth} vanished"))?
        .index;
    f.netlink.delete_link(index).await?;
    // Public call 2, the endpoint's delete (its address back to the caller).
    f.record(|| format!("delete ep{i}")).await?;
    // Public call 3, the sandbox's delete.
    f.record(|| format!("delete sb{i}")).await?;
    NetNs::delete(host.run_dir().join("floor").join(format!("sb{i}"))).await?;
    Ok(())
}

impl FloorImp {
    /// `floor-durable`: one synced record write; `floor`: nothing.
    async fn record(&self, what: impl FnOnce() -> String) -> Result<()> {
        match &self.journal {
            Some(j) => j.record(what()).await,
            None => Ok(()),
        }
    }
}

/// The Docker contender: a network `benchnet-N` on the bench's own dockerd, which its keeper
/// container (already on the default bridge) is connected to and disconnected from.
async fn docker_setup(peers: &Peers, host: &TestHost) -> Result<DockerImp, Unavailable> {
    let peer = peers.docker.clone().map_err(Unavailable::Status)?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let net = bench_net();
    let network = format!("{}-{n}", net.name);
    peer.cmd(&[
        "network",
        "create",
        "--subnet",
        &net.subnet.to_string(),
        &network,
    ])
    .run_in(host.netns())
    .await?;
    Ok(DockerImp {
        container: peer.keeper.clone(),
        peer,
        network,
    })
}
