//! Crash consistency, proven with `SIGKILL`.
//!
//! For every crash point of every operation (`cnm_core::crash::POINTS`), a child process (this
//! binary, re-executed in a child mode) builds a controller on a shared host namespace (a
//! persisted one, by path) and run/state dirs, runs a scenario that goes through every
//! operation, and dies at the armed point. The parent then builds a controller on the same
//! dirs (the restart) and checks:
//! - the logical state (networks, endpoints, where each is joined, sandboxes) is the one before
//!   the interrupted operation or the one after it: all or nothing;
//! - the kernel matches the records: one bridge per network, exactly one veth on it per joined
//!   endpoint, the joined interfaces in their sandboxes with their addresses, a netns bind
//!   mount and a directory per sandbox and no other, nft elements only for live networks and
//!   published ports only of gateway endpoints;
//! - IPAM hands out no address held by an endpoint;
//! - everything can then be torn down, leaving the host namespace as it was.
//!
//! A randomised soak does the same with kills from the parent at random moments
//! (`--soak N`, run by `cargo xtask soak`; a short one runs here).
//!
//! Privileged: runs only with `--ignored` / `--include-ignored` (as `#[ignore]` tests do).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm::cnm_sandbox::{NetNs, Netlink};
use cnm::{Controller, EndpointOptions, NetworkOptions};
use rand::Rng;
use serde::{Deserialize, Serialize};

const CHILD: &str = "CNM_CRASH_CHILD";
const HOST_NS: &str = "CNM_CRASH_HOST_NS";
const RUN_DIR: &str = "CNM_CRASH_RUN_DIR";
const STATE_DIR: &str = "CNM_CRASH_STATE_DIR";
const SEED: &str = "CNM_CRASH_SEED";
/// The published host port of endpoint `e1` in the scenario.
const E1_PORT: u16 = 18080;

/// The logical state: networks → endpoints → the container each is joined to; sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Model {
    networks: BTreeMap<String, BTreeMap<String, Option<String>>>,
    sandboxes: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Op {
    NewNet(String),
    DelNet(String),
    NewEp(String, String),
    DelEp(String, String),
    NewSandbox(String),
    DelSandbox(String),
    Join(String, String, String),
    Leave(String, String, String),
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::NewNet(n) => {
                self.networks.insert(n.clone(), BTreeMap::new());
            }
            Op::DelNet(n) => {
                self.networks.remove(n);
            }
            Op::NewEp(n, e) => {
                self.networks
                    .get_mut(n)
                    .map(|eps| eps.insert(e.clone(), None));
            }
            Op::DelEp(n, e) => {
                self.networks.get_mut(n).map(|eps| eps.remove(e));
            }
            Op::NewSandbox(c) => {
                self.sandboxes.insert(c.clone());
            }
            Op::DelSandbox(c) => {
                self.sandboxes.remove(c);
                for eps in self.networks.values_mut() {
                    for j in eps.values_mut() {
                        if j.as_deref() == Some(c.as_str()) {
                            *j = None;
                        }
                    }
                }
            }
            Op::Join(n, e, c) => {
                self.networks
                    .get_mut(n)
                    .map(|eps| eps.insert(e.clone(), Some(c.clone())));
            }
            Op::Leave(n, e, _) => {
                self.networks
                    .get_mut(n)
                    .map(|eps| eps.insert(e.clone(), None));
            }
        }
    }

    /// A random operation that is valid in this state.
    fn random_op(&self, rng: &mut impl Rng, serial: &mut u32) -> Op {
        loop {
            *serial += 1;
            let s = *serial;
            let nets: Vec<&String> = self.networks.keys().collect();
            let pick = |rng: &mut dyn rand::RngCore, v: &[&String]| {
                v[rng.random_range(0..v.len())].clone()
            };
            match rng.random_range(0..8) {
                0 if nets.len() < 3 => return Op::NewNet(format!("n{s}")),
                1 if !nets.is_empty() => {
                    let n = pick(rng, &nets);
                    if self.networks[&n].is_empty() {
                        return Op::DelNet(n);
                    }
                }
                2 if !nets.is_empty() => {
                    let n = pick(rng, &nets);
                    if self.networks[&n].len() < 4 {
                        return Op::NewEp(n, format!("e{s}"));
                    }
                }
                3 => {
                    let free: Vec<(String, String)> = self
                        .networks
                        .iter()
                        .flat_map(|(n, eps)| {
                            eps.iter()
                                .filter(|(_, j)| j.is_none())
                                .map(move |(e, _)| (n.clone(), e.clone()))
                        })
                        .collect();
                    if !free.is_empty() {
                        let (n, e) = free[rng.random_range(0..free.len())].clone();
                        return Op::DelEp(n, e);
                    }
                }
                4 if self.sandboxes.len() < 3 => return Op::NewSandbox(format!("c{s}")),
                5 if !self.sandboxes.is_empty() => {
                    let v: Vec<&String> = self.sandboxes.iter().collect();
                    return Op::DelSandbox(pick(rng, &v));
                }
                6 if !self.sandboxes.is_empty() => {
                    let free: Vec<(String, String)> = self
                        .networks
                        .iter()
                        .flat_map(|(n, eps)| {
                            eps.iter()
                                .filter(|(_, j)| j.is_none())
                                .map(move |(e, _)| (n.clone(), e.clone()))
                        })
                        .collect();
                    let v: Vec<&String> = self.sandboxes.iter().collect();
                    if !free.is_empty() {
                        let (n, e) = free[rng.random_range(0..free.len())].clone();
                        let c = pick(rng, &v);
                        // One endpoint per network per sandbox, as Docker. Ports follow the
                        // default route: an endpoint with ports joins only a sandbox where it
                        // becomes the gateway (all bridge, priority 0: the lowest network name).
                        let joined_to =
                            |m: &String| self.networks[m].values().any(|j| j.as_ref() == Some(&c));
                        let outranked = self.networks.keys().any(|m| *m < n && joined_to(m));
                        if !joined_to(&n) && (port_of(&e).is_none() || !outranked) {
                            return Op::Join(n, e, c);
                        }
                    }
                }
                7 => {
                    let joined: Vec<(String, String, String)> = self
                        .networks
                        .iter()
                        .flat_map(|(n, eps)| {
                            eps.iter().filter_map(move |(e, j)| {
                                j.clone().map(|c| (n.clone(), e.clone(), c))
                            })
                        })
                        .collect();
                    if !joined.is_empty() {
                        let (n, e, c) = joined[rng.random_range(0..joined.len())].clone();
                        return Op::Leave(n, e, c);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The scenario that reaches every crash point of the operations.
fn scenario() -> Vec<Op> {
    let s = |x: &str| x.to_owned();
    vec![
        Op::NewNet(s("n1")),
        Op::NewEp(s("n1"), s("e1")),
        Op::NewEp(s("n1"), s("e2")),
        Op::NewSandbox(s("c1")),
        Op::Join(s("n1"), s("e1"), s("c1")),
        Op::NewSandbox(s("c2")),
        Op::Join(s("n1"), s("e2"), s("c2")),
        Op::NewNet(s("n2")),
        Op::NewEp(s("n2"), s("e3")),
        Op::Join(s("n2"), s("e3"), s("c1")),
        Op::Leave(s("n1"), s("e1"), s("c1")),
        Op::DelEp(s("n1"), s("e1")),
        Op::DelSandbox(s("c1")),
        Op::DelEp(s("n2"), s("e3")),
        Op::DelNet(s("n2")),
        Op::Leave(s("n1"), s("e2"), s("c2")),
        Op::DelSandbox(s("c2")),
        Op::DelEp(s("n1"), s("e2")),
        Op::DelNet(s("n1")),
    ]
}

async fn perform(ctl: &Controller, op: &Op) -> Result<()> {
    match op {
        Op::NewNet(n) => {
            ctl.new_network("bridge", n, NetworkOptions::default())
                .await?;
        }
        Op::DelNet(n) => ctl.network(n)?.delete().await?,
        Op::NewEp(n, e) => {
            let mut opts = EndpointOptions::default();
            if let Some(port) = port_of(e) {
                opts.port_bindings
                    .push(format!("{port}:80").parse().context("port binding")?);
            }
            ctl.network(n)?.create_endpoint(e, opts).await?;
        }
        Op::DelEp(n, e) => ctl.network(n)?.endpoint(e)?.delete().await?,
        Op::NewSandbox(c) => {
            ctl.new_sandbox(c, []).await?;
        }
        Op::DelSandbox(c) => ctl.sandbox_by_container_id(c)?.delete().await?,
        Op::Join(n, e, c) => {
            let sb = ctl.sandbox_by_container_id(c)?;
            ctl.network(n)?.endpoint(e)?.join_sandbox(&sb, []).await?;
        }
        Op::Leave(n, e, c) => {
            let sb = ctl.sandbox_by_container_id(c)?;
            ctl.network(n)?.endpoint(e)?.leave_sandbox(&sb).await?;
        }
    }
    Ok(())
}

/// The host port an endpoint publishes: e1 of the scenario, and the soak's endpoints.
fn port_of(endpoint: &str) -> Option<u16> {
    let n: u32 = endpoint.strip_prefix('e')?.parse().ok()?;
    match n {
        1 => Some(E1_PORT),
        2 | 3 => None,
        n => Some(20000 + (n % 20000) as u16),
    }
}

/// Where one test's world lives: a persisted host namespace and the dirs.
struct World {
    _dir: tempfile::TempDir,
    host_path: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
    resolv_conf: PathBuf,
    host: NetNs,
    host_nl: Netlink,
}

impl World {
    async fn new() -> Result<World> {
        let dir = tempfile::Builder::new().prefix("cnm-crash-").tempdir()?;
        let host_path = dir.path().join("host-ns");
        let host = NetNs::create(&host_path)
            .await
            .context("create the host namespace (needs root)")?;
        let host_nl = Netlink::connect(&host).await?;
        host_nl.loopback_up().await?;
        cnm::cnm_sandbox::set_sysctls(&host, &[("net.ipv4.ip_forward", "1")]).await?;
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(&resolv_conf, "nameserver 192.0.2.53\n")?;
        Ok(World {
            run_dir: dir.path().join("run"),
            state_dir: dir.path().join("state"),
            host_path,
            resolv_conf,
            host,
            host_nl,
            _dir: dir,
        })
    }

    fn child(&self, mode: &str) -> Command {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.env(CHILD, mode)
            .env(HOST_NS, &self.host_path)
            .env(RUN_DIR, &self.run_dir)
            .env(STATE_DIR, &self.state_dir)
            .env("CNM_CRASH_RESOLV", &self.resolv_conf)
            .env_remove(cnm::crash::CRASH_AT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    }

    async fn controller(&self) -> Result<Controller> {
        build(
            &self.host_path,
            &self.run_dir,
            &self.state_dir,
            &self.resolv_conf,
        )
        .await
    }

    async fn teardown(self) -> Result<()> {
        // Unmount what a failed check may have left, then the host namespace.
        for name in std::fs::read_dir(self.run_dir.join("netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = NetNs::delete(name.path()).await;
        }
        NetNs::delete(&self.host_path).await?;
        Ok(())
    }
}

async fn build(host: &Path, run: &Path, state: &Path, resolv: &Path) -> Result<Controller> {
    Ok(Controller::builder()
        .host_netns(NetNs::open(host)?)
        .run_dir(run)
        .state_dir(state)
        .resolv_conf(resolv)
        .build()
        .await?)
}

/// The logical state a controller holds.
async fn observe(ctl: &Controller) -> Result<Model> {
    let mut m = Model::default();
    for sb in ctl.sandboxes() {
        m.sandboxes.insert(sb.container_id().to_owned());
    }
    for net in ctl.networks() {
        let mut eps = BTreeMap::new();
        for ep in net.endpoints() {
            let joined = match ep.sandbox_id() {
                Some(id) => Some(ctl.sandbox(&id)?.container_id().to_owned()),
                None => None,
            };
            eps.insert(ep.name().to_owned(), joined);
        }
        m.networks.insert(net.name().to_owned(), eps);
    }
    Ok(m)
}

/// The bridge fragment's table and the firewall's own (its interfaces), as nft lists them
/// (empty for a table that is not there).
fn nft_table(host: &NetNs) -> Result<String> {
    let mut text = String::new();
    for table in ["cnm-bridge", "cnm"] {
        let out = host.run_blocking(move || {
            Command::new("nft")
                .args(["list", "table", "inet", table])
                .output()
        })??;
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    Ok(text)
}

/// Mount points under `dir` (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = format!("{}/", dir.display());
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter_map(|p| p.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect())
}

fn dir_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

/// Every invariant between records, kernel and IPAM. Returns the violations found.
async fn check_invariants(ctl: &Controller, w: &World) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    let links = w.host_nl.links().await?;
    let mut bridges = BTreeMap::new();
    let mut joined_ids = BTreeSet::new();
    let mut addrs: BTreeMap<IpAddr, String> = BTreeMap::new();
    for net in ctl.networks() {
        let mark = format!("cnm:{}", net.id());
        let Some(br) = links
            .iter()
            .find(|l| l.alias.as_deref() == Some(mark.as_str()))
        else {
            bad.push(format!("network {} has no bridge", net.name()));
            continue;
        };
        if !br.up {
            bad.push(format!("bridge {} is down", br.name));
        }
        bridges.insert(br.index, (net.clone(), br.name.clone()));
        for ep in net.endpoints() {
            if let Some(a) = ep.ipv4() {
                let ip = IpAddr::V4(a.addr());
                if let Some(other) = addrs.insert(ip, ep.name().to_owned()) {
                    bad.push(format!("address {ip} held by {other} and {}", ep.name()));
                }
            }
            if ep.sandbox_id().is_some() {
                joined_ids.insert(ep.id().to_owned());
            }
        }
    }
    for l in &links {
        if let Some(m) = l.master
            && let Some((net, br)) = bridges.get(&m)
        {
            // Named after its endpoint, or (name taken, older versions) marked by alias.
            let owner = match l.alias.as_deref().and_then(|a| a.strip_prefix("cnm:")) {
                Some(id) => Some(id.to_owned()),
                None => net
                    .endpoints()
                    .iter()
                    .find(|e| cnm_driver_bridge::endpoint_veth_name(e.id()) == l.name)
                    .map(|e| e.id().to_owned()),
            };
            let ok = owner.is_some_and(|id| {
                joined_ids.contains(&id) && net.endpoints().iter().any(|e| e.id() == id)
            });
            if !ok {
                bad.push(format!(
                    "{} on bridge {br} is owned by no joined endpoint",
                    l.name
                ));
            }
        }
        if l.kind.as_deref() == Some("bridge") && !bridges.contains_key(&l.index) {
            bad.push(format!("bridge {} belongs to no network", l.name));
        }
        if l.kind.as_deref() == Some("veth") && l.master.is_none_or(|m| !bridges.contains_key(&m)) {
            bad.push(format!("veth {} is on none of our bridges", l.name));
        }
    }
    let on_bridges = links
        .iter()
        .filter(|l| l.master.is_some_and(|m| bridges.contains_key(&m)))
        .count();
    if on_bridges != joined_ids.len() {
        bad.push(format!(
            "{on_bridges} veths on bridges for {} joined endpoints",
            joined_ids.len()
        ));
    }
    // Sandboxes: mounts, directories, interfaces and addresses.
    let sb_ids: BTreeSet<String> = ctl.sandboxes().iter().map(|s| s.id().to_owned()).collect();
    let mounts = mounts_under(&w.run_dir.join("netns"))?;
    if mounts != sb_ids {
        bad.push(format!("netns mounts {mounts:?} but sandboxes {sb_ids:?}"));
    }
    let files = dir_entries(&w.run_dir.join("netns"));
    if files != sb_ids {
        bad.push(format!("netns files {files:?} but sandboxes {sb_ids:?}"));
    }
    let dirs = dir_entries(&w.run_dir.join("sandboxes"));
    if dirs != sb_ids {
        bad.push(format!("sandbox dirs {dirs:?} but sandboxes {sb_ids:?}"));
    }
    let nft = nft_table(&w.host)?;
    for sb in ctl.sandboxes() {
        let in_ns = sb.netlink().links().await?;
        let ifs: Vec<_> = in_ns.iter().filter(|l| l.name != "lo").collect();
        let eps = sb.endpoints();
        if ifs.len() != eps.len() {
            bad.push(format!(
                "sandbox {} has {} interfaces for {} endpoints",
                sb.container_id(),
                ifs.len(),
                eps.len()
            ));
        }
        for (ep, ifname) in &eps {
            let Some(ifname) = ifname else { continue };
            let Some(l) = in_ns.iter().find(|l| l.name == ifname.as_str()) else {
                bad.push(format!("{ifname} of {} missing", ep.name()));
                continue;
            };
            let have: Vec<IpAddr> = sb
                .netlink()
                .addresses(Some(l.index))
                .await?
                .into_iter()
                .map(|a| a.addr.addr())
                .collect();
            if let Some(a) = ep.ipv4()
                && !have.contains(&IpAddr::V4(a.addr()))
            {
                bad.push(format!("{ifname} of {} lacks {a}", ep.name()));
            }
        }
        for (ep, _) in &eps {
            match ep.sandbox_id() {
                Some(id) if id == sb.id() => {}
                other => bad.push(format!(
                    "{} is in sandbox {}'s list but its record says {other:?}",
                    ep.name(),
                    sb.container_id()
                )),
            }
        }
    }
    // Published ports: exactly those of gateway endpoints.
    let mut gateways = BTreeSet::new();
    for sb in ctl.sandboxes() {
        if let Some(g) = sb.gateway_endpoint() {
            gateways.insert(g.id().to_owned());
        }
    }
    let mut published_ports = BTreeSet::new();
    let mut all_ports = Vec::new();
    for net in ctl.networks() {
        for ep in net.endpoints() {
            if let Some(sid) = ep.sandbox_id() {
                let listed = ctl
                    .sandbox(&sid)?
                    .endpoints()
                    .iter()
                    .any(|(e, _)| e.id() == ep.id());
                if !listed {
                    bad.push(format!(
                        "{} says it is joined to {sid} which does not list it",
                        ep.name()
                    ));
                }
            }
            if let Some(port) = port_of(ep.name()) {
                if gateways.contains(ep.id()) {
                    published_ports.insert(port);
                    if !nft.contains(&port.to_string()) {
                        bad.push(format!(
                            "gateway endpoint {} has port {port} unpublished",
                            ep.name()
                        ));
                    }
                }
                all_ports.push(port);
            }
        }
    }
    for port in all_ports {
        if !published_ports.contains(&port) && nft.contains(&port.to_string()) {
            bad.push(format!(
                "port {port} published but its endpoint is not a gateway endpoint"
            ));
        }
    }
    if !published_ports.contains(&E1_PORT) && nft.contains(&E1_PORT.to_string()) {
        bad.push(format!(
            "port {E1_PORT} published with no gateway endpoint owning it"
        ));
    }
    let names: BTreeSet<&str> = bridges.values().map(|(_, n)| n.as_str()).collect();
    for word in nft.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        if word.starts_with("cnm-") && word.len() == 15 && !names.contains(word) {
            bad.push(format!("nft still names bridge {word}"));
            break;
        }
    }
    // IPAM: a new endpoint never gets a held address.
    for net in ctl.networks() {
        let probe = net
            .create_endpoint("ipam-probe", EndpointOptions::default())
            .await?;
        if let Some(a) = probe.ipv4()
            && let Some(holder) = addrs.get(&IpAddr::V4(a.addr()))
        {
            bad.push(format!("IPAM handed out {a}, held by {holder}"));
        }
        if probe.ipv4().is_some() && net.ipv4().iter().any(|p| p.gateway == probe.ipv4()) {
            bad.push(format!("IPAM handed out the gateway of {}", net.name()));
        }
        probe.delete().await?;
    }
    Ok(bad)
}

/// Deletes everything, then checks the host is as it was.
async fn tear_down_all(ctl: &Controller, w: &World) -> Result<()> {
    for sb in ctl.sandboxes() {
        sb.delete().await?;
    }
    for net in ctl.networks() {
        for ep in net.endpoints() {
            ep.delete().await?;
        }
        net.delete().await?;
    }
    let links: Vec<String> = w
        .host_nl
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n != "lo")
        .collect();
    ensure!(links.is_empty(), "links left after teardown: {links:?}");
    ensure!(
        mounts_under(&w.run_dir.join("netns"))?.is_empty(),
        "netns mounts left after teardown"
    );
    let keys = ctl.store()?.list("").await?;
    ensure!(
        keys.is_empty(),
        "store entries left: {:?}",
        keys.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    Ok(())
}

/// Runs the scenario (mode `scenario`) or random operations (mode `soak`) in this child.
async fn child_main(mode: &str) -> Result<()> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} unset"));
    let ctl = build(
        Path::new(&env(HOST_NS)?),
        Path::new(&env(RUN_DIR)?),
        Path::new(&env(STATE_DIR)?),
        Path::new(&env("CNM_CRASH_RESOLV")?),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    match mode {
        "start" => {}
        "scenario" => {
            let stop: usize = match std::env::var("CNM_CRASH_STOP") {
                Ok(v) => v.parse()?,
                Err(_) => usize::MAX,
            };
            for (i, op) in scenario().iter().enumerate().take(stop) {
                perform(&ctl, op).await.with_context(|| format!("{op:?}"))?;
                writeln!(out, "done {i}")?;
                out.flush()?;
            }
        }
        "soak" => {
            let seed: u64 = env(SEED)?.parse()?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut model = observe(&ctl).await?;
            let mut serial = (seed % 1_000_000) as u32 * 1000;
            loop {
                let op = model.random_op(&mut rng, &mut serial);
                let mut after = model.clone();
                after.apply(&op);
                writeln!(out, "op {}", serde_json::to_string(&(&op, &after))?)?;
                out.flush()?;
                perform(&ctl, &op)
                    .await
                    .with_context(|| format!("{op:?}"))?;
                model = after;
                writeln!(out, "done")?;
                out.flush()?;
            }
        }
        other => bail!("unknown child mode {other}"),
    }
    Ok(())
}

use rand::SeedableRng as _;

/// One crash point: child dies there, parent restarts and checks.
async fn crash_at(point: &str) -> Result<Vec<String>> {
    let w = World::new().await?;
    let reload = point.starts_with("reload:");
    if reload {
        // State to reload: the scenario up to the second network's join.
        let mut child = w.child("scenario");
        child.env("CNM_CRASH_STOP", "10");
        let status = child.status()?;
        ensure!(status.success(), "setup child failed: {status}");
    }
    let mut child = w.child(if reload { "start" } else { "scenario" });
    child.env(cnm::crash::CRASH_AT, point);
    let mut proc = child.spawn()?;
    let stdout = BufReader::new(proc.stdout.take().expect("piped"));
    let mut done = 0usize;
    for line in stdout.lines() {
        if line?.starts_with("done") {
            done += 1;
        }
    }
    let status = proc.wait()?;
    use std::os::unix::process::ExitStatusExt as _;
    ensure!(
        status.signal() == Some(libc_sigkill()),
        "crash point {point} was not reached (child exited {status})"
    );
    let ctl = w
        .controller()
        .await
        .with_context(|| format!("restart after {point}"))?;
    let seen = observe(&ctl).await?;
    let mut violations = Vec::new();
    let steps = scenario();
    let expected: Vec<Model> = if reload {
        let mut m = Model::default();
        steps[..10].iter().for_each(|op| m.apply(op));
        vec![m]
    } else {
        let mut before = Model::default();
        steps[..done].iter().for_each(|op| before.apply(op));
        let mut after = before.clone();
        after.apply(&steps[done]);
        vec![before, after]
    };
    if !expected.contains(&seen) {
        violations.push(format!(
            "{point}: state {seen:?} is neither before nor after op {done} ({:?})",
            steps.get(done)
        ));
    }
    violations.extend(
        check_invariants(&ctl, &w)
            .await?
            .into_iter()
            .map(|v| format!("{point}: {v}")),
    );
    // The interrupted scenario can go on after the restart: the remaining operations.
    if !reload {
        let start = if seen == expected[0] { done } else { done + 1 };
        for op in &steps[start..] {
            perform(&ctl, op)
                .await
                .with_context(|| format!("{point}: {op:?} after the restart"))?;
        }
    }
    tear_down_all(&ctl, &w)
        .await
        .with_context(|| format!("{point}: teardown"))?;
    drop(ctl);
    w.teardown().await?;
    Ok(violations)
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

/// Random operations, killed at random moments; restart and check after each kill.
async fn soak(kills: usize, seed: u64) -> Result<(usize, usize, Vec<String>)> {
    let w = World::new().await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ops = 0usize;
    let mut violations = Vec::new();
    let mut observed = Model::default();
    let mut startup_kills = 0;
    for k in 0..kills {
        let mut child = w.child("soak");
        child.env(SEED, (seed.wrapping_mul(1_000_003) + k as u64).to_string());
        child.stderr(Stdio::null());
        let mut proc = child.spawn()?;
        let mut stdout = BufReader::new(proc.stdout.take().expect("piped"));
        // One kill in ten lands in the child's start (the reload), before any operation.
        let target = if rng.random_range(0..10) == 0 {
            0
        } else {
            rng.random_range(1..6usize)
        };
        let mut done = 0;
        let mut before: Option<Model> = Some(observed.clone());
        // (the state before the operation in flight, the state after it)
        let mut last: (Option<Model>, Option<Model>) = (before.clone(), None);
        let mut line = String::new();
        if target == 0 {
            startup_kills += 1;
            std::thread::sleep(Duration::from_micros(rng.random_range(0..60_000)));
        }
        if target > 0 {
            loop {
                line.clear();
                if stdout.read_line(&mut line)? == 0 {
                    break;
                }
                if let Some(rest) = line.strip_prefix("op ") {
                    let (_op, after): (Op, Model) = serde_json::from_str(rest.trim())?;
                    last = (before.clone(), Some(after));
                } else if line.starts_with("done") {
                    done += 1;
                    ops += 1;
                    before = last.1.clone();
                    last = (before.clone(), None);
                    if done >= target {
                        // Let it get into the next operation, then kill at a random moment.
                        line.clear();
                        stdout.read_line(&mut line)?;
                        if let Some(rest) = line.strip_prefix("op ") {
                            let (_op, after): (Op, Model) = serde_json::from_str(rest.trim())?;
                            last = (before.clone(), Some(after));
                        }
                        std::thread::sleep(Duration::from_micros(rng.random_range(0..30_000)));
                        break;
                    }
                }
            }
        }
        let _ = proc.kill();
        proc.wait()?;
        // Drain what it printed between our last read and the kill.
        let mut rest = String::new();
        while stdout.read_line(&mut rest)? > 0 {
            if let Some(r) = rest.strip_prefix("op ") {
                let (_op, after): (Op, Model) = serde_json::from_str(r.trim())?;
                last = (before.clone(), Some(after));
            } else if rest.starts_with("done") {
                ops += 1;
                before = last.1.clone();
                last = (before.clone(), None);
            }
            rest.clear();
        }
        let ctl = match w.controller().await {
            Ok(ctl) => ctl,
            Err(e) => {
                // Who holds what, for the record: the child is dead and reaped by now.
                let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
                eprintln!(
                    "restart failed; child pid {}; /proc/locks:\n{locks}",
                    proc.id()
                );
                return Err(e.context(format!("restart after kill {k}")));
            }
        };
        let seen = observe(&ctl).await?;
        let allowed: Vec<Model> = [last.0.clone(), last.1.clone()]
            .into_iter()
            .flatten()
            .collect();
        if !allowed.contains(&seen) {
            violations.push(format!("kill {k}: state {seen:?} not in {allowed:?}"));
        }
        observed = seen;
        violations.extend(
            check_invariants(&ctl, &w)
                .await?
                .into_iter()
                .map(|v| format!("kill {k}: {v}")),
        );
        drop(ctl);
    }
    let ctl = w.controller().await?;
    tear_down_all(&ctl, &w).await?;
    drop(ctl);
    w.teardown().await?;
    println!("soak: {startup_kills} of the kills landed in the child's start");
    Ok((kills, ops, violations))
}

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var(CHILD) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        return match rt.block_on(child_main(&mode)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child {mode}: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let privileged = args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    let soak_kills = args
        .iter()
        .position(|a| a == "--soak")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok());
    if !privileged && soak_kills.is_none() {
        println!("test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out");
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<bool> = rt.block_on(async {
        let started = Instant::now();
        if let Some(kills) = soak_kills {
            let seed: u64 = rand::random();
            let (kills, ops, violations) = soak(kills, seed).await?;
            println!(
                "soak: seed {seed}, {kills} kills, {ops} operations completed, {} violations, {:.1}s",
                violations.len(),
                started.elapsed().as_secs_f64()
            );
            for v in &violations {
                println!("  violation: {v}");
            }
            return Ok(violations.is_empty());
        }
        let mut all = Vec::new();
        for point in cnm::crash::POINTS {
            let v = crash_at(point).await.with_context(|| format!("crash point {point}"))?;
            println!("test crash_point::{point} ... {}", if v.is_empty() { "ok" } else { "FAILED" });
            all.extend(v);
        }
        let (kills, ops, violations) = soak(20, rand::random()).await?;
        println!(
            "test short_soak ({kills} kills, {ops} operations) ... {}",
            if violations.is_empty() { "ok" } else { "FAILED" }
        );
        all.extend(violations);
        for v in &all {
            println!("  violation: {v}");
        }
        println!(
            "crash: {} crash points + short soak, {} violations, {:.1}s",
            cnm::crash::POINTS.len(),
            all.len(),
            started.elapsed().as_secs_f64()
        );
        // In libtest's words, for runners that count results (cargo xtask test).
        let (ok, n) = (all.is_empty(), cnm::crash::POINTS.len() + 1);
        println!(
            "test result: {}. {} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s",
            if ok { "ok" } else { "FAILED" },
            if ok { n } else { 0 },
            if ok { 0 } else { 1 },
            started.elapsed().as_secs_f64()
        );
        Ok(all.is_empty())
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crash test failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
