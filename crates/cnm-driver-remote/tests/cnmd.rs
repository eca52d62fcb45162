//! The plugin through the whole stack: the `cnm` CLI talking to a real `cnmd` that finds the
//! test plugin by name in its `--plugin-dir` the moment a network asks for its driver, in a
//! throwaway host namespace; traffic between two sandboxes through the plugin's veths, every
//! request the plugin received checked field by field, and a restart of cnmd that finds the
//! plugin again before it reloads the plugin's network.
//! And an IPAM plugin named by `--ipam-driver` and by the Docker API's `IPAM.Driver`.

#![allow(clippy::print_stderr)]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_driver_remote::plugin::MEDIA_TYPE;
use cnm_sandbox::{NetNs, Netlink};
use cnm_testkit::{TestHost, probe, server::TcpEchoServer};
use common::{FakePlugin, PluginArgs};
use ipnet::Ipv4Net;
use serde_json::{Value, json};

/// An unknown driver or IPAM name fails without waiting (Docker's discovery stalls 15 s);
/// measured through a spawned `cnm` on a machine that may be loaded, so the bound leaves room.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// The target dir's profile dir this test binary was built in (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/debug/deps/cnmd-HASH
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary lives in <profile>/deps")
        .to_owned()
}

/// `cnmd` and `cnm` built from this tree into the same target dir, once per run.
fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("the profile dir has a parent");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args(["build", "-q", "-p", "cnm-daemon", "-p", "cnm-cli"])
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", target);
        if profile.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let ok = build.status().is_ok_and(|s| s.success());
        assert!(ok, "cargo build -p cnm-daemon -p cnm-cli failed");
        (profile.join("cnmd"), profile.join("cnm"))
    })
}

/// What a `cnm` run printed.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> Result<Out> {
        ensure!(
            self.code == 0,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    fn json(&self) -> Result<Value> {
        let v: Value = serde_json::from_str(&self.stdout)
            .with_context(|| format!("not JSON: {}", self.stdout))?;
        // `inspect` prints an array of one.
        Ok(match v {
            Value::Array(mut a) if a.len() == 1 => a.remove(0),
            v => v,
        })
    }
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A `cnmd` in the test host's namespace, with the test host's directories and the plugin's
/// directories as its `--plugin-dir`s; stopped with SIGTERM on drop.
struct Cnmd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    host: NetNs,
    args: Vec<String>,
}

impl Cnmd {
    async fn start(host: &TestHost, plugin: &FakePlugin) -> Result<Cnmd> {
        Self::start_with(host, &[plugin]).await
    }

    /// With the directories of each of `plugins`.
    async fn start_with(host: &TestHost, plugins: &[&FakePlugin]) -> Result<Cnmd> {
        let dir = tempfile::tempdir()?;
        let mut args = vec![
            "--socket".to_owned(),
            dir.path().join("cnm.sock").display().to_string(),
            "--run-dir".to_owned(),
            host.run_dir().display().to_string(),
            "--state-dir".to_owned(),
            host.state_dir().display().to_string(),
            "--plugin-timeout".to_owned(),
            "5".to_owned(),
        ];
        for plugin in plugins {
            for sub in ["run", "etc"] {
                args.push("--plugin-dir".to_owned());
                args.push(plugin.root().join(sub).display().to_string());
            }
        }
        let mut d = Cnmd {
            child: None,
            dir,
            host: host.netns().clone(),
            args,
        };
        d.spawn().await?;
        Ok(d)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cnm.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cnmd.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) -> Result<()> {
        let (cnmd, _) = binaries();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cnmd.log"))?;
        let mut cmd = Command::new(cnmd);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Born in the test host's namespace: the thread that forks is in it.
        let child = self.host.run(move || cmd.spawn()).await??;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket().exists() && self.cnm(&["network", "ls", "-q"])?.code == 0 {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("cnmd exited with {status}: {}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "cnmd did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and waits for it to exit (bounded).
    async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .context("cnmd did not stop on SIGTERM")???;
        ensure!(
            status.success(),
            "cnmd exited with {status}: {}",
            self.log()
        );
        Ok(())
    }

    fn cnm(&self, args: &[&str]) -> Result<Out> {
        let (_, cnm) = binaries();
        let host = format!("unix://{}", self.socket().display());
        let out = Command::new(cnm)
            .arg("--host")
            .arg(host)
            .args(args)
            .env_remove("CNM_HOST")
            .stdin(Stdio::null())
            .output()
            .context("failed to run cnm")?;
        Ok(out.into())
    }
}

impl Drop for Cnmd {
    fn drop(&mut self) {
        // The test harness shows this only when the test fails: what cnmd said, to tell why.
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        eprintln!("--- cnmd log (last {} lines) ---", tail.len());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Err(e) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("cnmd {pid} did not stop: {e}");
            }
        }
    }
}

/// A sandbox as `cnm sandbox inspect` shows it: its namespace and its address on `network`.
struct Joined {
    ns: NetNs,
    key: String,
    endpoint: String,
    addr: Ipv4Net,
}

fn joined(d: &Cnmd, sandbox: &str, network: &str) -> Result<Joined> {
    let sb = d.cnm(&["sandbox", "inspect", sandbox])?.ok()?.json()?;
    let key = sb["Key"].as_str().context("Key")?.to_owned();
    let ep = sb["Endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["Network"] == network))
        .with_context(|| format!("{sandbox} is not on {network}: {sb}"))?;
    Ok(Joined {
        ns: NetNs::open(&key)?,
        key,
        endpoint: ep["EndpointId"].as_str().context("EndpointId")?.to_owned(),
        addr: ep["IPv4Address"]
            .as_str()
            .context("IPv4Address")?
            .parse()
            .context("IPv4Address")?,
    })
}

/// The requests the plugin received after the first `skip`, as (method, body), each with
/// Docker's headers.
fn requests_since(plugin: &FakePlugin, skip: usize) -> Result<Vec<(String, Value)>> {
    let reqs = plugin.requests()?;
    let new = reqs.get(skip..).unwrap_or_default();
    for r in new {
        ensure!(r.accept.as_deref() == Some(MEDIA_TYPE), "Accept of {r:?}");
        ensure!(
            r.content_type.as_deref() == Some(MEDIA_TYPE),
            "Content-Type of {r:?}"
        );
    }
    Ok(new
        .iter()
        .map(|r| (r.method.clone(), r.body.clone()))
        .collect())
}

fn expect(list: Vec<(&str, Value)>) -> Vec<(String, Value)> {
    list.into_iter().map(|(m, b)| (m.to_owned(), b)).collect()
}

async fn traffic(a: &Joined, b: &Joined) -> Result<()> {
    let server = TcpEchoServer::start(&b.ns, IpAddr::V4(b.addr.addr()), 8080).await?;
    probe::tcp(&a.ns, IpAddr::V4(b.addr.addr()), 8080).await?;
    let peers = server.peers();
    ensure!(
        peers.iter().any(|p| p.ip() == IpAddr::V4(a.addr.addr())),
        "{peers:?}"
    );
    probe::icmp(&b.ns, IpAddr::V4(a.addr.addr())).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn cnm_network_create_with_a_plugin_driver_finds_it_carries_traffic_and_survives_a_restart()
-> Result<()> {
    let host = TestHost::new().await?;
    let plugin = FakePlugin::start(
        "cnmplug",
        Some(host.netns()),
        PluginArgs {
            kernel: true,
            ..PluginArgs::default()
        },
    )
    .await?;
    let mut d = Cnmd::start(&host, &plugin).await?;
    ensure!(
        plugin.requests()?.is_empty(),
        "cnmd called the plugin before any network asked for it"
    );

    // A driver nobody serves fails at once, naming the directories looked in.
    let started = Instant::now();
    let out = d.cnm(&["network", "create", "-d", "nosuchplug", "n0"])?;
    let took = started.elapsed();
    eprintln!(
        "unknown driver refused in {took:?} (cnm process included): {}",
        out.stderr.trim()
    );
    ensure!(
        out.code != 0,
        "an unknown driver was accepted: {}",
        out.stdout
    );
    let run_dir = plugin.root().join("run").display().to_string();
    ensure!(
        out.stderr.contains("nosuchplug") && out.stderr.contains(&run_dir),
        "the error says neither the name nor where it looked: {}",
        out.stderr
    );
    ensure!(took < FAIL_FAST, "an unknown driver took {took:?}");
    ensure!(
        d.cnm(&["network", "ls", "-q", "-f", "name=n0"])?
            .ok()?
            .stdout
            .is_empty()
    );

    // The plugin's name: found in --plugin-dir, activated, registered, used.
    d.cnm(&[
        "network",
        "create",
        "-d",
        "cnmplug",
        "--subnet",
        "10.87.0.0/24",
        "-o",
        "test.dst-prefix=plg",
        "pnet",
    ])?
    .ok()?;
    let net = d.cnm(&["network", "inspect", "pnet"])?.ok()?.json()?;
    assert_eq!(net["Driver"], "cnmplug");
    let nid = net["Id"].as_str().context("Id")?.to_owned();
    let bridge = format!("rb{}", &nid[..10]);
    ensure!(
        host.netlink().link(&bridge).await?.is_some(),
        "the plugin made no bridge {bridge}"
    );
    for c in ["c1", "c2"] {
        d.cnm(&["sandbox", "create", c])?.ok()?;
        d.cnm(&["connect", "pnet", c])?.ok()?;
    }
    let (s1, s2) = (joined(&d, "c1", "pnet")?, joined(&d, "c2", "pnet")?);
    assert_eq!(s1.addr.to_string(), "10.87.0.2/24");
    assert_eq!(s2.addr.to_string(), "10.87.0.3/24");
    // The plugin's interface, moved in and renamed with its DstPrefix.
    ensure!(
        Netlink::connect(&s1.ns)
            .await?
            .link("plg0")
            .await?
            .is_some(),
        "no plg0 in c1"
    );
    traffic(&s1, &s2).await?;

    let ep = |e: &str| json!({"NetworkID": nid, "EndpointID": e});
    let create_ep = |j: &Joined| {
        json!({"NetworkID": nid, "EndpointID": j.endpoint, "Options": {},
               "Interface": {"Address": j.addr.to_string(), "AddressIPv6": "", "MacAddress": ""}})
    };
    let join = |j: &Joined| json!({"NetworkID": nid, "EndpointID": j.endpoint, "Options": {}, "SandboxKey": j.key});
    let program = |j: &Joined| json!({"NetworkID": nid, "EndpointID": j.endpoint, "Options": {}});
    assert_eq!(
        requests_since(&plugin, 0)?,
        expect(vec![
            ("Plugin.Activate", Value::Null),
            ("NetworkDriver.GetCapabilities", Value::Null),
            (
                "NetworkDriver.CreateNetwork",
                json!({
                    "NetworkID": nid,
                    "Options": {
                        "com.docker.network.generic": {"test.dst-prefix": "plg"},
                        "com.docker.network.enable_ipv6": false,
                    },
                    "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.87.0.0/24",
                                  "Gateway": "10.87.0.1/24"}],
                    "IPv6Data": [],
                }),
            ),
            ("NetworkDriver.CreateEndpoint", create_ep(&s1)),
            ("NetworkDriver.Join", join(&s1)),
            ("NetworkDriver.ProgramExternalConnectivity", program(&s1)),
            ("NetworkDriver.CreateEndpoint", create_ep(&s2)),
            ("NetworkDriver.Join", join(&s2)),
            ("NetworkDriver.ProgramExternalConnectivity", program(&s2)),
        ])
    );

    // Restart: the plugin is found again before the network is reloaded, and nothing of the
    // network is asked of it again (the plugin keeps its own state).
    let seen = plugin.requests()?.len();
    d.stop().await?;
    d.spawn().await?;
    assert_eq!(
        requests_since(&plugin, seen)?,
        expect(vec![
            ("Plugin.Activate", Value::Null),
            ("NetworkDriver.GetCapabilities", Value::Null),
        ])
    );
    let ls = d
        .cnm(&["network", "ls", "-f", "driver=cnmplug", "-q", "--no-trunc"])?
        .ok()?;
    assert_eq!(
        ls.stdout.trim(),
        nid,
        "the plugin's network after the restart"
    );
    let (r1, r2) = (joined(&d, "c1", "pnet")?, joined(&d, "c2", "pnet")?);
    assert_eq!((r1.addr, r2.addr), (s1.addr, s2.addr));
    traffic(&r2, &r1).await?;

    // Taken apart through the CLI: the inverse calls, and the plugin's links gone.
    let seen = plugin.requests()?.len();
    d.cnm(&["disconnect", "pnet", "c1"])?.ok()?;
    d.cnm(&["sandbox", "rm", "c1", "c2"])?.ok()?;
    d.cnm(&["network", "rm", "pnet"])?.ok()?;
    assert_eq!(
        requests_since(&plugin, seen)?,
        expect(vec![
            ("NetworkDriver.RevokeExternalConnectivity", ep(&s1.endpoint)),
            ("NetworkDriver.Leave", ep(&s1.endpoint)),
            ("NetworkDriver.DeleteEndpoint", ep(&s1.endpoint)),
            ("NetworkDriver.RevokeExternalConnectivity", ep(&s2.endpoint)),
            ("NetworkDriver.Leave", ep(&s2.endpoint)),
            ("NetworkDriver.DeleteEndpoint", ep(&s2.endpoint)),
            ("NetworkDriver.DeleteNetwork", json!({"NetworkID": nid})),
        ])
    );
    let left: Vec<String> = host
        .netlink()
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.starts_with("rb") || n.starts_with("rh") || n.starts_with("rc"))
        .collect();
    ensure!(left.is_empty(), "plugin links left: {left:?}");
    d.stop().await?;
    Ok(())
}

/// One Docker Engine API call to cnmd over its socket: (status, body as JSON, or `null`). A
/// `null` body is sent as none (cnmd may answer a GET, and close, before reading a body).
fn docker_api(d: &Cnmd, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body)?
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: cnmd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, mut payload) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no head end: {text:?}"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("status")?;
    let mut decoded = String::new();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        loop {
            let (size, rest) = payload.split_once("\r\n").context("chunk size")?;
            let size = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
            if size == 0 {
                break;
            }
            decoded.push_str(rest.get(..size).context("short chunk")?);
            payload = rest.get(size + 2..).unwrap_or_default();
        }
    } else {
        decoded.push_str(payload);
    }
    let value = if decoded.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&decoded).with_context(|| format!("not JSON: {decoded:?}"))?
    };
    Ok((status, value))
}

/// The pools the test plugin holds, from its state file.
fn plugin_pools(plugin: &FakePlugin) -> Result<Value> {
    let state: Value =
        serde_json::from_slice(&std::fs::read(plugin.root().join("data/state.json"))?)?;
    Ok(state["pools"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn an_ipam_plugin_named_through_the_cli_and_the_docker_api_gives_pools_and_addresses()
-> Result<()> {
    let host = TestHost::new().await?;
    let plugin = FakePlugin::start(
        "cnmipam",
        Some(host.netns()),
        PluginArgs {
            implements: "IpamDriver",
            pools: "10.88.0.0/24,10.89.0.0/24",
            ..PluginArgs::default()
        },
    )
    .await?;
    let d = Cnmd::start(&host, &plugin).await?;

    // An IPAM name nobody serves fails at once, through either API, and leaves nothing.
    let started = Instant::now();
    let out = d.cnm(&["network", "create", "--ipam-driver", "nosuchipam", "n0"])?;
    let took = started.elapsed();
    ensure!(
        out.code != 0,
        "an unknown IPAM was accepted: {}",
        out.stdout
    );
    ensure!(
        out.stderr.contains("nosuchipam"),
        "the error does not name the IPAM: {}",
        out.stderr
    );
    ensure!(took < FAIL_FAST, "an unknown IPAM took {took:?}");
    let started = Instant::now();
    let (status, body) = docker_api(
        &d,
        "POST",
        "/networks/create",
        &json!({"Name": "n0", "IPAM": {"Driver": "nosuchipam"}}),
    )?;
    let took = started.elapsed();
    ensure!(
        (400..500).contains(&status),
        "an unknown IPAM through the Docker API: {status} {body}"
    );
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("nosuchipam")),
        "{body}"
    );
    ensure!(took < FAIL_FAST, "an unknown IPAM took {took:?}");
    ensure!(
        d.cnm(&["network", "ls", "-q", "-f", "name=n0"])?
            .ok()?
            .stdout
            .is_empty()
    );
    ensure!(
        plugin.requests()?.is_empty(),
        "the plugin was asked something"
    );

    // Through the CLI: the subnet (the plugin's choice) and the gateway come from the plugin.
    d.cnm(&["network", "create", "--ipam-driver", "cnmipam", "inet"])?
        .ok()?;
    let net = d.cnm(&["network", "inspect", "inet"])?.ok()?.json()?;
    assert_eq!(net["Driver"], "bridge");
    assert_eq!(net["IPAM"]["Driver"], "cnmipam");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.88.0.0/24");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.88.0.1");
    let pool1 = "cnmtest-local:10.88.0.0/24";
    let pool2 = "cnmtest-local:10.89.0.0/24";
    let gateway = |pool: &str| {
        json!({"PoolID": pool, "Address": "",
               "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    };
    let any_pool = json!({"AddressSpace": "cnmtest-local", "Pool": "", "SubPool": "",
                          "Options": {}, "V6": false});
    assert_eq!(
        requests_since(&plugin, 0)?,
        expect(vec![
            ("Plugin.Activate", Value::Null),
            ("IpamDriver.GetCapabilities", Value::Null),
            ("IpamDriver.GetDefaultAddressSpaces", Value::Null),
            ("IpamDriver.RequestPool", any_pool.clone()),
            ("IpamDriver.RequestAddress", gateway(pool1)),
        ])
    );

    // Through the Docker API: the plugin, found already, gives its next pool.
    let seen = plugin.requests()?.len();
    let (status, body) = docker_api(
        &d,
        "POST",
        "/networks/create",
        &json!({"Name": "dnet", "IPAM": {"Driver": "cnmipam"}}),
    )?;
    ensure!(status == 201, "{status} {body}");
    let did = body["Id"].as_str().context("Id")?.to_owned();
    let (status, dnet) = docker_api(&d, "GET", &format!("/networks/{did}"), &Value::Null)?;
    ensure!(status == 200, "{status} {dnet}");
    assert_eq!(dnet["IPAM"]["Driver"], "cnmipam");
    assert_eq!(dnet["IPAM"]["Config"][0]["Subnet"], "10.89.0.0/24");
    assert_eq!(dnet["IPAM"]["Config"][0]["Gateway"], "10.89.0.1");
    assert_eq!(
        requests_since(&plugin, seen)?,
        expect(vec![
            ("IpamDriver.RequestPool", any_pool),
            ("IpamDriver.RequestAddress", gateway(pool2)),
        ])
    );

    // Two sandboxes on the CLI's network get the plugin's addresses and reach each other.
    let seen = plugin.requests()?.len();
    for c in ["c1", "c2"] {
        d.cnm(&["sandbox", "create", c])?.ok()?;
        d.cnm(&["connect", "inet", c])?.ok()?;
    }
    let (s1, s2) = (joined(&d, "c1", "inet")?, joined(&d, "c2", "inet")?);
    assert_eq!(s1.addr.to_string(), "10.88.0.2/24");
    assert_eq!(s2.addr.to_string(), "10.88.0.3/24");
    traffic(&s1, &s2).await?;
    let any_address = json!({"PoolID": pool1, "Address": "", "Options": {}});
    assert_eq!(
        requests_since(&plugin, seen)?,
        expect(vec![
            ("IpamDriver.RequestAddress", any_address.clone()),
            ("IpamDriver.RequestAddress", any_address),
        ])
    );

    // Taken apart: every address and pool released at the plugin.
    let seen = plugin.requests()?.len();
    d.cnm(&["disconnect", "inet", "c1"])?.ok()?;
    d.cnm(&["sandbox", "rm", "c1", "c2"])?.ok()?;
    d.cnm(&["network", "rm", "inet"])?.ok()?;
    let (status, body) = docker_api(&d, "DELETE", &format!("/networks/{did}"), &Value::Null)?;
    ensure!(status == 204, "{status} {body}");
    let release = |pool: &str, a: &str| {
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": a}),
        )
    };
    assert_eq!(
        requests_since(&plugin, seen)?,
        expect(vec![
            release(pool1, "10.88.0.2"),
            release(pool1, "10.88.0.3"),
            release(pool1, "10.88.0.1"),
            ("IpamDriver.ReleasePool", json!({"PoolID": pool1})),
            release(pool2, "10.89.0.1"),
            ("IpamDriver.ReleasePool", json!({"PoolID": pool2})),
        ])
    );
    assert_eq!(
        plugin_pools(&plugin)?,
        json!({}),
        "the plugin holds nothing"
    );
    for n in ["inet", "dnet"] {
        let ls = d
            .cnm(&["network", "ls", "-q", "-f", &format!("name={n}")])?
            .ok()?;
        ensure!(ls.stdout.trim().is_empty(), "{n} left: {}", ls.stdout);
    }
    Ok(())
}

/// How long a test waits for cnmd to bring a network back after its plugin appeared: the
/// plugin directories are watched, so it is at once on an idle machine; the bound is for a
/// loaded one.
const BACK_WITHIN: Duration = Duration::from_secs(60);

/// `cnm network inspect NAME` until its `Waiting` is gone (bounded); the network then.
async fn wait_until_back(d: &Cnmd, name: &str) -> Result<Value> {
    let deadline = Instant::now() + BACK_WITHIN;
    loop {
        let net = d.cnm(&["network", "inspect", name])?.ok()?.json()?;
        if net.get("Waiting").is_none() {
            return Ok(net);
        }
        ensure!(
            Instant::now() < deadline,
            "{name} still waits {BACK_WITHIN:?} after its plugin came back: {net}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn networks_waiting_for_their_plugins_come_back_when_the_plugins_appear_without_restarting_cnmd()
-> Result<()> {
    let host = TestHost::new().await?;
    let drv = FakePlugin::start(
        "cnmplug",
        Some(host.netns()),
        PluginArgs {
            kernel: true,
            ..PluginArgs::default()
        },
    )
    .await?;
    let ipam = FakePlugin::start(
        "cnmipam",
        Some(host.netns()),
        PluginArgs {
            implements: "IpamDriver",
            pools: "10.88.0.0/24",
            ..PluginArgs::default()
        },
    )
    .await?;
    // A plugin that goes and never comes back.
    let ghost = FakePlugin::start("cnmghost", Some(host.netns()), PluginArgs::default()).await?;
    let mut d = Cnmd::start_with(&host, &[&drv, &ipam, &ghost]).await?;

    // A network on the driver plugin, one on the IPAM plugin (bridge driver), two sandboxes
    // joined to each; one on the plugin that will not come back.
    d.cnm(&[
        "network",
        "create",
        "-d",
        "cnmplug",
        "--subnet",
        "10.87.0.0/24",
        "pnet",
    ])?
    .ok()?;
    d.cnm(&["network", "create", "--ipam-driver", "cnmipam", "inet"])?
        .ok()?;
    d.cnm(&[
        "network",
        "create",
        "-d",
        "cnmghost",
        "--subnet",
        "10.86.0.0/24",
        "gnet",
    ])?
    .ok()?;
    for c in ["c1", "c2"] {
        d.cnm(&["sandbox", "create", c])?.ok()?;
        d.cnm(&["connect", "pnet", c])?.ok()?;
        d.cnm(&["connect", "inet", c])?.ok()?;
    }
    let before: Vec<Joined> = [
        ("c1", "pnet"),
        ("c2", "pnet"),
        ("c1", "inet"),
        ("c2", "inet"),
    ]
    .into_iter()
    .map(|(c, n)| joined(&d, c, n))
    .collect::<Result<_>>()?;
    let pid = d.cnm(&["network", "inspect", "pnet"])?.ok()?.json()?["Id"].clone();

    // cnmd and the plugins stop; cnmd starts without them: the networks wait.
    d.stop().await?;
    drv.kill()?;
    ipam.kill()?;
    ghost.kill()?;
    d.spawn().await?;
    let (status, list) = docker_api(&d, "GET", "/networks", &Value::Null)?;
    ensure!(status == 200, "{status} {list}");
    let waiting = |name: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|n| n["Name"] == name))
            .map(|n| n["Waiting"].clone())
    };
    assert_eq!(waiting("pnet"), Some(json!("driver cnmplug")), "{list}");
    assert_eq!(
        waiting("inet"),
        Some(json!("ipam driver cnmipam")),
        "{list}"
    );
    assert_eq!(waiting("gnet"), Some(json!("driver cnmghost")), "{list}");
    assert_eq!(
        waiting("bridge"),
        Some(Value::Null),
        "a working network: {list}"
    );
    let net = d.cnm(&["network", "inspect", "pnet"])?.ok()?.json()?;
    assert_eq!(net["Id"], pid);
    assert_eq!(net["Driver"], "cnmplug");
    assert_eq!(net["Waiting"], "driver cnmplug");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.87.0.0/24");
    let mut attached: Vec<String> = net["Containers"]
        .as_object()
        .context("Containers")?
        .values()
        .map(|e| e["IPv4Address"].as_str().unwrap_or_default().to_owned())
        .collect();
    attached.sort();
    assert_eq!(attached, ["10.87.0.2/24", "10.87.0.3/24"], "{net}");
    let net = d.cnm(&["network", "inspect", "inet"])?.ok()?.json()?;
    assert_eq!(net["IPAM"]["Driver"], "cnmipam");
    assert_eq!(net["Waiting"], "ipam driver cnmipam");
    let ls = d.cnm(&["network", "ls"])?.ok()?;
    ensure!(
        ls.stdout.contains("pnet")
            && ls
                .stderr
                .contains("network pnet is waiting for its driver cnmplug"),
        "cnm network ls: {}\n{}",
        ls.stdout,
        ls.stderr
    );
    // Their names stay taken; they cannot be removed meanwhile.
    let out = d.cnm(&["network", "create", "pnet"])?;
    ensure!(
        out.code != 0 && out.stderr.contains("already exists"),
        "a second pnet: {} {}",
        out.stdout,
        out.stderr
    );
    let (status, body) = docker_api(&d, "DELETE", "/networks/inet", &Value::Null)?;
    ensure!(
        status == 409
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("cnmipam")),
        "{status} {body}"
    );

    // cnmd works for everything else meanwhile, the same sandboxes included.
    d.cnm(&["network", "create", "--subnet", "10.91.0.0/24", "onet"])?
        .ok()?;
    for c in ["c1", "c2"] {
        d.cnm(&["connect", "onet", c])?.ok()?;
    }
    traffic(&joined(&d, "c1", "onet")?, &joined(&d, "c2", "onet")?).await?;

    // The plugins come back (cnmghost does not): their networks come back without a restart
    // of cnmd, as they were, and pass traffic.
    let seen = drv.requests()?.len();
    drv.restart(|_| {}).await?;
    ipam.restart(|_| {}).await?;
    let pnet = wait_until_back(&d, "pnet").await?;
    assert_eq!(pnet["Id"], pid);
    wait_until_back(&d, "inet").await?;
    let after: Vec<Joined> = [
        ("c1", "pnet"),
        ("c2", "pnet"),
        ("c1", "inet"),
        ("c2", "inet"),
    ]
    .into_iter()
    .map(|(c, n)| joined(&d, c, n))
    .collect::<Result<_>>()?;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.endpoint, b.addr), (&a.endpoint, a.addr), "as it was");
    }
    traffic(&after[0], &after[1]).await?;
    traffic(&after[3], &after[2]).await?;
    // The driver plugin was only found again: nothing of its network asked again.
    let methods: Vec<String> = requests_since(&drv, seen)?
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    ensure!(
        methods.contains(&"Plugin.Activate".to_owned())
            && methods
                .iter()
                .all(|m| m == "Plugin.Activate" || m == "NetworkDriver.GetCapabilities"),
        "{methods:?}"
    );

    // The plugin that never came back: its network still waits, and cnmd works on.
    let gnet = d.cnm(&["network", "inspect", "gnet"])?.ok()?.json()?;
    assert_eq!(gnet["Waiting"], "driver cnmghost");
    d.cnm(&["disconnect", "onet", "c1"])?.ok()?;
    d.cnm(&["network", "create", "--subnet", "10.92.0.0/24", "later"])?
        .ok()?;
    d.cnm(&["network", "rm", "later"])?.ok()?;
    let ls = d.cnm(&["network", "ls", "-q", "-f", "name=pnet"])?.ok()?;
    ensure!(
        !ls.stdout.trim().is_empty() && !ls.stderr.contains("pnet"),
        "{}",
        ls.stderr
    );
    d.stop().await?;
    Ok(())
}
