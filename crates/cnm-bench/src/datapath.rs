//! The data-path scenarios: iperf3 TCP throughput between two sandboxes on a cnm bridge against
//! the same topology wired by hand with `ip`; and through a published port (from an "outside"
//! namespace, DNATed by the host) against directly (sandbox to sandbox on the bridge).
//!
//! iperf3's server and client run inside the namespaces; every run is bounded (`-t`), runs
//! alternate between the two sides, and only traffic between the benchmark's own namespaces
//! flows.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cnm::{Controller, EndpointOptions, PortBinding, Sandbox};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use serde_json::{Map, Value, json};

use crate::fixture;
use crate::peers::{self, Cmd};
use crate::stats::median;

pub(crate) const PORT: u16 = 5201;

/// An iperf3 server running inside a namespace; killed on drop.
pub(crate) struct Server(Child);

impl Server {
    pub(crate) async fn start(iperf3: &Path, ns: &NetNs) -> Result<Server> {
        let program = iperf3.to_path_buf();
        let child = ns
            .run(move || {
                Command::new(program)
                    .args(["-s", "-p", &PORT.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .await??;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill(); // it may have exited already; either way it is gone
        let _ = self.0.wait();
    }
}

/// One bounded client run from `ns` to `addr:port`; Gbit/s received. Retries (bounded) while
/// the server is not listening yet.
pub(crate) async fn client(
    iperf3: &Path,
    ns: &NetNs,
    addr: IpAddr,
    port: u16,
    secs: u32,
) -> Result<f64> {
    let mut last = None;
    for _ in 0..50 {
        let out = Cmd::new(
            iperf3,
            &[
                "-c",
                &addr.to_string(),
                "-p",
                &port.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ],
        )
        .run_in(ns)
        .await;
        match out {
            Ok(out) => {
                let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    return Ok(bps / 1e9);
                }
                let error = v["error"].as_str().unwrap_or("no error given").to_owned();
                if !error.contains("unable to connect") {
                    bail!("iperf3 to {addr}:{port} reported no throughput: {error}");
                }
                // The server is not listening yet (or the path is broken: then we give up below).
                last = Some(anyhow::anyhow!("iperf3 to {addr}:{port}: {error}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if format!("{e:#}").contains("unable to connect") => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("iperf3 never connected")))
}

/// Two sandboxes on a cnm bridge; A publishes the iperf3 port.
struct CnmSide {
    host: TestHost,
    _ctl: Controller,
    a: Sandbox,
    b: Sandbox,
    a_ip: IpAddr,
}

impl CnmSide {
    async fn new() -> Result<CnmSide> {
        let host = TestHost::new().await?;
        let ctl = host.controller().await?;
        let net = fixture::bridge_network(&ctl, "dpnet", "10.93.0.0/16".parse()?).await?;
        let binding: PortBinding = format!("{PORT}:{PORT}/tcp").parse()?;
        let publish = EndpointOptions::default().publish(binding);
        let (a, ep_a) = fixture::joined(&ctl, &net, "dp-a", publish).await?;
        let (b, _) = fixture::joined(&ctl, &net, "dp-b", EndpointOptions::default()).await?;
        let a_ip = IpAddr::V4(ep_a.ipv4().context("endpoint A has no IPv4")?.addr());
        Ok(CnmSide {
            host,
            _ctl: ctl,
            a,
            b,
            a_ip,
        })
    }
}

/// The same topology by hand: a bridge and two veths into two namespaces, with `ip`.
struct HandSide {
    _host: TestHost,
    a: NetNs,
    b: NetNs,
    a_ip: IpAddr,
}

impl HandSide {
    async fn new() -> Result<HandSide> {
        let host = TestHost::new().await?;
        let ns = host.netns();
        Cmd::new("ip", &["-batch", "-"])
            .stdin(
                "link add dpbr0 type bridge\naddr add 10.94.0.1/16 dev dpbr0\nlink set dpbr0 up\n",
            )
            .run_in(ns)
            .await?;
        let mut sides = Vec::new();
        for (name, addr) in [("dp-hand-a", "10.94.0.2/16"), ("dp-hand-b", "10.94.0.3/16")] {
            let veth = format!("v{}", &name[name.len() - 1..]);
            Cmd::new("ip", &["-batch", "-"])
                .stdin(peers::ip_attach_host_script(name, &veth, "dpbr0"))
                .run_in(ns)
                .await?;
            Cmd::new("ip", &["-n", name, "-batch", "-"])
                .stdin(peers::ip_attach_sandbox_script(
                    addr.parse()?,
                    "10.94.0.1".parse()?,
                ))
                .run_in(ns)
                .await?;
            sides.push(NetNs::open(PathBuf::from("/run/netns").join(name))?);
        }
        let b = sides.pop().context("two sides")?;
        let a = sides.pop().context("two sides")?;
        Ok(HandSide {
            _host: host,
            a,
            b,
            a_ip: "10.94.0.2".parse()?,
        })
    }
}

impl Drop for HandSide {
    fn drop(&mut self) {
        for name in ["dp-hand-a", "dp-hand-b"] {
            if let Err(e) = NetNs::delete_blocking(PathBuf::from("/run/netns").join(name)) {
                tracing::warn!(netns = name, error = %e, "failed to delete a hand-wired namespace");
            }
        }
    }
}

fn values(runs: &[f64], key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        key.into(),
        json!(median(runs).map(|g| (g * 1000.0).round() / 1000.0)),
    );
    m.insert(format!("{key}_runs"), json!(runs));
    m.insert("n".into(), json!(runs.len()));
    m
}

/// `datapath-bridge`: cnm vs hand-wired (`ip-batch`), alternating; Gbit/s per side.
pub async fn bridge(
    iperf3: &Path,
    runs: usize,
    secs: u32,
) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let cnm = CnmSide::new().await?;
    let hand = HandSide::new().await?;
    let _s1 = Server::start(iperf3, cnm.a.netns()).await?;
    let _s2 = Server::start(iperf3, &hand.a).await?;
    let (mut c, mut h) = (Vec::new(), Vec::new());
    for r in 0..runs {
        for cnm_turn in [r % 2 == 0, r % 2 != 0] {
            if cnm_turn {
                c.push(client(iperf3, cnm.b.netns(), cnm.a_ip, PORT, secs).await?);
            } else {
                h.push(client(iperf3, &hand.b, hand.a_ip, PORT, secs).await?);
            }
        }
    }
    Ok((values(&c, "gbps"), values(&h, "gbps")))
}

/// `datapath-published`: outside → host:published port → A, against B → A directly.
pub async fn published(iperf3: &Path, runs: usize, secs: u32) -> Result<Map<String, Value>> {
    let cnm = CnmSide::new().await?;
    let outside = cnm.host.outside().await?;
    let host_addr = outside.host_addr_v4();
    let _server = Server::start(iperf3, cnm.a.netns()).await?;
    let (mut p, mut d) = (Vec::new(), Vec::new());
    for r in 0..runs {
        for published_turn in [r % 2 == 0, r % 2 != 0] {
            if published_turn {
                p.push(client(iperf3, outside.netns(), host_addr, PORT, secs).await?);
            } else {
                d.push(client(iperf3, cnm.b.netns(), cnm.a_ip, PORT, secs).await?);
            }
        }
    }
    if p.is_empty() {
        bail!("no published-port run");
    }
    let mut m = values(&p, "gbps");
    m.extend(values(&d, "direct_gbps"));
    m.insert(
        "direct".into(),
        json!("sandbox to sandbox on the same bridge"),
    );
    Ok(m)
}
