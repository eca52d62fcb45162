//! The test plugin (`tests/plugin/fake_plugin.py`, Python standard library only) as a child
//! process, with its plugin directories, its request log and its fault switches; and a
//! controller on a throwaway host with the plugin as a driver.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cnm_core::store::{MemoryStore, Store};
use cnm_core::{Controller, Driver, Ipam};
use cnm_driver_remote::plugin::{ClientConfig, PluginDirs};
use cnm_driver_remote::{PluginIpamResolver, RemoteConfig, RemoteDriver, RemoteIpam};
use cnm_sandbox::NetNs;
use cnm_testkit::TestHost;
use serde::Deserialize;
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugin/fake_plugin.py");

/// How long a test waits for the plugin to say it listens.
const READY_WITHIN: Duration = Duration::from_secs(10);

fn python() -> &'static str {
    // The system interpreter (the test plugin needs nothing beyond the standard library).
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// One request as the plugin recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct Recorded {
    pub pid: u32,
    pub method: String,
    pub accept: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

/// How to start the plugin.
#[derive(Debug, Clone)]
pub struct PluginArgs {
    pub implements: &'static str,
    pub pools: &'static str,
    pub kernel: bool,
    pub require_activation: bool,
    pub tcp: bool,
    pub scope: &'static str,
    /// Listen on `NAME/NAME.sock` instead of `NAME.sock`.
    pub in_subdir: bool,
    /// IPAM capability `RequiresRequestReplay`.
    pub replay: bool,
}

impl Default for PluginArgs {
    fn default() -> Self {
        Self {
            implements: "NetworkDriver",
            pools: "",
            kernel: false,
            require_activation: false,
            tcp: false,
            scope: "local",
            in_subdir: false,
            replay: false,
        }
    }
}

/// The test plugin, running.
pub struct FakePlugin {
    pub name: String,
    root: tempfile::TempDir,
    ns: Option<NetNs>,
    args: Mutex<PluginArgs>,
    child: Mutex<Option<Child>>,
    /// Where it listens, as it said (`unix:///…` or `tcp://…`).
    pub url: Mutex<String>,
}

impl FakePlugin {
    /// Starts the plugin `name` in `ns` (this process's namespace when `None`).
    pub async fn start(name: &str, ns: Option<&NetNs>, args: PluginArgs) -> Result<FakePlugin> {
        let root = tempfile::Builder::new()
            .prefix("cnm-remote-test-")
            .tempdir()?;
        for d in ["run", "etc", "lib", "data"] {
            std::fs::create_dir_all(root.path().join(d))?;
        }
        let plugin = FakePlugin {
            name: name.to_owned(),
            root,
            ns: ns.cloned(),
            args: Mutex::new(args),
            child: Mutex::new(None),
            url: Mutex::new(String::new()),
        };
        plugin.spawn().await?;
        Ok(plugin)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The socket it listens on (unix mode).
    pub fn socket(&self) -> PathBuf {
        let run = self.root.path().join("run");
        if self.args.lock().unwrap().in_subdir {
            run.join(&self.name).join(format!("{}.sock", self.name))
        } else {
            run.join(format!("{}.sock", self.name))
        }
    }

    /// Its plugin directories: `run/` for sockets, `etc/` and `lib/` for spec files.
    pub fn dirs(&self) -> PluginDirs {
        PluginDirs::new(
            vec![self.root.path().join("run")],
            vec![self.root.path().join("etc"), self.root.path().join("lib")],
        )
    }

    /// A client configuration with these directories and a short call timeout.
    pub fn config(&self, call_timeout: Duration) -> RemoteConfig {
        RemoteConfig {
            dirs: self.dirs(),
            client: ClientConfig {
                call_timeout,
                activate_wait: Duration::from_millis(300),
                ..ClientConfig::default()
            },
        }
    }

    async fn spawn(&self) -> Result<()> {
        let args = self.args.lock().unwrap().clone();
        let socket = self.socket();
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut cmd = Command::new(python());
        cmd.arg(SCRIPT)
            .arg("--dir")
            .arg(self.data())
            .args(["--implements", args.implements])
            .args(["--scope", args.scope])
            .args(["--pools", args.pools])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.data().join("stderr.log"))?);
        if args.tcp {
            cmd.arg("--tcp");
        } else {
            cmd.arg("--socket").arg(&socket);
        }
        if args.kernel {
            cmd.arg("--kernel");
        }
        if args.require_activation {
            cmd.arg("--require-activation");
        }
        if args.replay {
            cmd.arg("--replay");
        }
        // The child is born in the namespace of the thread that forks it.
        let mut child = match &self.ns {
            Some(ns) => ns
                .run(move || cmd.spawn())
                .await
                .context("failed to enter the plugin's namespace")?,
            None => cmd.spawn(),
        }
        .context("failed to start the test plugin")?;
        let stdout = child.stdout.take().context("the plugin's stdout")?;
        *self.child.lock().unwrap() = Some(child);
        let line = tokio::time::timeout(
            READY_WITHIN,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await
        .context("the test plugin did not get ready")???;
        let Some(url) = line.trim().strip_prefix("READY ") else {
            bail!(
                "the test plugin failed to start: {line:?}; stderr: {}",
                std::fs::read_to_string(self.data().join("stderr.log")).unwrap_or_default()
            );
        };
        *self.url.lock().unwrap() = url.to_owned();
        Ok(())
    }

    /// Kills the plugin (SIGKILL, to this child only) and reaps it. Its socket file stays, as
    /// after a crash.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            child.kill().context("failed to kill the test plugin")?;
            child.wait().context("failed to reap the test plugin")?;
        }
        Ok(())
    }

    /// Waits for the plugin to exit on its own (after a `die` fault) and reaps it.
    pub async fn wait_exit(&self) -> Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .lock()
            .unwrap()
            .take()
            .context("the plugin is not running")?;
        let status = tokio::time::timeout(
            READY_WITHIN,
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .context("the plugin did not exit")???;
        Ok(status)
    }

    /// Starts it again (kills it first if it runs), with changed arguments.
    pub async fn restart(&self, change: impl FnOnce(&mut PluginArgs)) -> Result<()> {
        self.kill()?;
        change(&mut self.args.lock().unwrap());
        self.spawn().await
    }

    /// Forgets every pool and address it holds (its network driver state stays), as an IPAM
    /// plugin that keeps its state in memory forgets it when it restarts.
    pub fn forget_pools(&self) -> Result<()> {
        let path = self.data().join("state.json");
        let mut state: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        state["pools"] = serde_json::json!({});
        std::fs::write(&path, serde_json::to_vec(&state)?)?;
        Ok(())
    }

    /// Makes `method` misbehave (`hang`, `garbage`, `500`, `die`, …); `None` clears it.
    pub fn fault(&self, method: &str, fault: Option<&str>) -> Result<()> {
        let path = self.data().join("faults.json");
        let mut map: serde_json::Map<String, Value> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(_) => serde_json::Map::new(),
        };
        match fault {
            Some(f) => map.insert(method.to_owned(), Value::String(f.to_owned())),
            None => map.remove(method),
        };
        let tmp = self.data().join("faults.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&map)?)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Every request the plugin received, in order.
    pub fn requests(&self) -> Result<Vec<Recorded>> {
        let text = match std::fs::read_to_string(self.data().join("requests.jsonl")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad record {l:?}")))
            .collect()
    }

    /// The requests of one method.
    pub fn requests_of(&self, method: &str) -> Result<Vec<Recorded>> {
        Ok(self
            .requests()?
            .into_iter()
            .filter(|r| r.method == method)
            .collect())
    }

    /// The methods received, in order.
    pub fn methods(&self) -> Result<Vec<String>> {
        Ok(self.requests()?.into_iter().map(|r| r.method).collect())
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) -> Result<()> {
        match std::fs::remove_file(self.data().join("requests.jsonl")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for FakePlugin {
    #[allow(clippy::print_stderr)] // a test fixture telling why its child may linger
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("failed to stop the test plugin: {e:#}");
        }
    }
}

/// A controller on a throwaway host with the test plugin as its driver `name` (and as its IPAM
/// when `ipam`).
pub struct World {
    pub host: TestHost,
    pub plugin: FakePlugin,
    pub driver: Arc<RemoteDriver>,
    pub ipam: Option<Arc<RemoteIpam>>,
    pub ctl: Controller,
    call_timeout: Duration,
    ipam_mode: IpamMode,
    store: Arc<MemoryStore>,
    _resolv: tempfile::NamedTempFile,
}

/// How the controller uses the plugin's IPAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpamMode {
    /// Not at all: the default IPAM.
    None,
    /// As the controller's IPAM.
    Controller,
    /// Found by name for the networks that name it (an IPAM resolver); the default otherwise.
    ByName,
}

impl World {
    pub async fn new(name: &str, args: PluginArgs, call_timeout: Duration) -> Result<World> {
        let mode = if args.implements.contains("IpamDriver") {
            IpamMode::Controller
        } else {
            IpamMode::None
        };
        Self::with_ipam_mode(name, args, call_timeout, mode).await
    }

    pub async fn with_ipam_mode(
        name: &str,
        args: PluginArgs,
        call_timeout: Duration,
        with_ipam: IpamMode,
    ) -> Result<World> {
        let host = TestHost::new().await?;
        let plugin = FakePlugin::start(
            name,
            Some(host.netns()),
            PluginArgs {
                kernel: true,
                ..args
            },
        )
        .await?;
        let resolv = tempfile::NamedTempFile::new()?;
        std::fs::write(resolv.path(), "nameserver 192.0.2.53\n")?;
        // One store across restarts (no durable store is linked here).
        let store = Arc::new(MemoryStore::new());
        let (driver, ipam, ctl) = Self::controller(
            &host,
            &plugin,
            with_ipam,
            call_timeout,
            resolv.path(),
            &store,
        )
        .await?;
        Ok(World {
            host,
            plugin,
            driver,
            ipam,
            ctl,
            call_timeout,
            ipam_mode: with_ipam,
            store,
            _resolv: resolv,
        })
    }

    /// A controller on `host` with the plugin as its driver (and IPAM), freshly connected.
    async fn controller(
        host: &TestHost,
        plugin: &FakePlugin,
        with_ipam: IpamMode,
        call_timeout: Duration,
        resolv: &Path,
        store: &Arc<MemoryStore>,
    ) -> Result<(Arc<RemoteDriver>, Option<Arc<RemoteIpam>>, Controller)> {
        let name = plugin.name.as_str();
        let config = plugin.config(call_timeout);
        let driver = Arc::new(RemoteDriver::connect(name, &config).await?);
        let mut builder = Controller::builder()
            .host_netns(host.netns().clone())
            .run_dir(host.run_dir())
            .state_dir(host.state_dir())
            .resolv_conf(resolv)
            .store(store.clone() as Arc<dyn Store>)
            .driver(name, {
                let driver = driver.clone();
                move |_| Ok(driver as Arc<dyn Driver>)
            });
        let mut ipam = None;
        match with_ipam {
            IpamMode::None => {}
            IpamMode::Controller => {
                let remote = Arc::new(RemoteIpam::connect(name, &config).await?);
                builder = builder.ipam(remote.clone() as Arc<dyn Ipam>);
                ipam = Some(remote);
            }
            IpamMode::ByName => {
                builder = builder.ipam_resolver(Arc::new(PluginIpamResolver::new(config)));
            }
        }
        let ctl = builder
            .build()
            .await
            .context("failed to build a controller on the test host")?;
        Ok((driver, ipam, ctl))
    }

    /// Shuts the controller down and builds another on the same host, directories and store,
    /// connecting to the plugin afresh: a restart of cnm.
    pub async fn restart_controller(&mut self) -> Result<()> {
        self.ctl.shutdown().await?;
        let (driver, ipam, ctl) = Self::controller(
            &self.host,
            &self.plugin,
            self.ipam_mode,
            self.call_timeout,
            self._resolv.path(),
            &self.store,
        )
        .await?;
        (self.driver, self.ipam, self.ctl) = (driver, ipam, ctl);
        Ok(())
    }

    /// The names of the host namespace's links, sorted.
    pub async fn host_links(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .host
            .netlink()
            .links()
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Fails unless the host has nothing but what the test host starts with (loopback).
    pub async fn host_is_clean(&self) -> Result<()> {
        let links = self.host_links().await?;
        ensure!(links == ["lo"], "links left in the host: {links:?}");
        Ok(())
    }

    /// The persisted sandbox namespaces under the run dir.
    pub fn netns_files(&self) -> Result<Vec<PathBuf>> {
        let dir = self.host.run_dir().join("netns");
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}
