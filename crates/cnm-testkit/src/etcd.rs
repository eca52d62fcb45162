//! A real etcd (Debian's `etcd-server`) for tests, inside a namespace the test made, with its own
//! data directory, and a way to run client code in that namespace.
//!
//! etcd listens only on an address of the test's namespace (loopback by default), so its traffic
//! never leaves what the test created. Readiness is etcd's own `/health` answering
//! `"health":"true"` (a leader is elected), polled with a bound; a process that exits early fails
//! the start with the tail of its log. The process is killed (SIGKILL, by pid) and reaped on
//! drop; [`EtcdServer::kill`] and [`EtcdServer::start_again`] stage an outage on the same data
//! directory.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cnm_sandbox::{NetNs, Netlink};
use tempfile::TempDir;

/// The client port etcd listens on; its peer port is the next one.
pub const CLIENT_PORT: u16 = 2379;
/// How long a start may take until etcd reports itself healthy.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Pause between health probes while etcd starts.
const PROBE_EVERY: Duration = Duration::from_millis(50);
const MISSING: &str = "etcd is not installed: the tests need Debian's etcd-server (and \
                       etcd-client for etcdctl); `cargo xtask test` installs them";

/// One etcd member serving a single-member cluster.
#[derive(Debug)]
pub struct EtcdServer {
    ns: NetNs,
    client: SocketAddr,
    peer: SocketAddr,
    data: TempDir,
    child: Mutex<Option<Child>>,
}

impl EtcdServer {
    /// Starts etcd in a namespace of its own (loopback only) on 127.0.0.1:[`CLIENT_PORT`]. Run
    /// clients with [`EtcdServer::run_client`].
    pub async fn start_isolated() -> Result<EtcdServer> {
        let ns = NetNs::create_anonymous().await.context(
            "creating a namespace for etcd needs root (CAP_SYS_ADMIN); run `cargo xtask test`",
        )?;
        Netlink::connect(&ns)
            .await
            .context("failed to open netlink in etcd's namespace")?
            .loopback_up()
            .await
            .context("failed to bring up loopback in etcd's namespace")?;
        Self::start(&ns, Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts etcd in `ns`, listening on `addr` (which must be configured there) for clients on
    /// [`CLIENT_PORT`] and for peers on the next port.
    pub async fn start(ns: &NetNs, addr: IpAddr) -> Result<EtcdServer> {
        // In memory where the machine has a tmpfs for it: etcd syncs its log on every write,
        // and on a loaded CI machine a sync on disk can stall a request for seconds.
        let mut dir = tempfile::Builder::new();
        dir.prefix("cnm-test-etcd-");
        let shm = std::path::Path::new("/dev/shm");
        let data = if shm.is_dir() {
            dir.tempdir_in(shm).or_else(|_| dir.tempdir())
        } else {
            dir.tempdir()
        }
        .context("failed to create etcd's data directory")?;
        let server = EtcdServer {
            ns: ns.clone(),
            client: SocketAddr::new(addr, CLIENT_PORT),
            peer: SocketAddr::new(addr, CLIENT_PORT + 1),
            data,
            child: Mutex::new(None),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The namespace etcd listens in.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// The cluster-store address cnm takes: `etcd://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// The pid of the running etcd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL, as a crash would) and reaps it; its data directory stays.
    pub async fn kill(&self) -> Result<()> {
        let child = self.lock().take();
        if let Some(child) = child {
            tokio::task::spawn_blocking(move || reap(child))
                .await
                .context("etcd reaper thread failed")??;
        }
        Ok(())
    }

    /// Starts etcd again on the same data directory and addresses, and waits until it is healthy.
    pub async fn start_again(&self) -> Result<()> {
        if self.pid().is_some() {
            bail!("etcd is still running; kill it first");
        }
        self.spawn().await
    }

    /// Runs `etcdctl ARGS` against this etcd (from its namespace) and returns its stdout.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoint = format!("http://{}", self.client);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let shown = args.join(" ");
        let output = self
            .ns
            .run(move || {
                Command::new(program("etcdctl")?)
                    .env("ETCDCTL_API", "3")
                    .arg("--endpoints")
                    .arg(endpoint)
                    .arg("--dial-timeout=2s")
                    .arg("--command-timeout=5s")
                    .args(&args)
                    .output()
                    .context("failed to run etcdctl")
            })
            .await
            .context("failed to enter etcd's namespace")??;
        if !output.status.success() {
            bail!(
                "etcdctl {shown} failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `body` on a tokio runtime whose threads all live in etcd's namespace, so that every
    /// socket it opens (an etcd client's) is there too. The runtime ends with `body`.
    pub async fn run_client<F, Fut, T>(&self, body: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>>,
        T: Send + 'static,
    {
        run_in(&self.ns, body).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // Only ever holds a whole Child or none.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log_path(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    async fn spawn(&self) -> Result<()> {
        let etcd = program("etcd")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("failed to open etcd's log file")?;
        let client_url = format!("http://{}", self.client);
        let peer_url = format!("http://{}", self.peer);
        let mut command = Command::new(etcd);
        command
            .args(["--name", "cnm-test"])
            .arg("--data-dir")
            .arg(self.data.path().join("member-data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("cnm-test={peer_url}")])
            // A single member elects itself after one election timeout: keep it short.
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share etcd's log file")?)
            .stderr(log);
        // The child is born in the namespace of the thread that forks it.
        let child = self
            .ns
            .run(move || command.spawn())
            .await
            .context("failed to enter etcd's namespace")?
            .context("failed to start etcd")?;
        *self.lock() = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let exited = self
                .lock()
                .as_mut()
                .map(Child::try_wait)
                .transpose()
                .context("failed to check on etcd")?
                .flatten();
            if let Some(status) = exited {
                self.lock().take();
                bail!(
                    "etcd exited with {status} while starting; its log ends:\n{}",
                    tail(&self.log_path())
                );
            }
            let addr = self.client;
            let health = self
                .ns
                .run(move || probe_health(addr))
                .await
                .context("failed to enter etcd's namespace")?;
            match health {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if started.elapsed() < READY_WITHIN => {
                    tokio::time::sleep(PROBE_EVERY).await;
                }
                result => {
                    bail!(
                        "etcd at {addr} not healthy within {READY_WITHIN:?} (last probe: {result:?}); its log ends:\n{}",
                        tail(&self.log_path())
                    );
                }
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = self.lock().take()
            && let Err(e) = reap(child)
        {
            tracing::warn!(error = %e, "failed to stop the test etcd");
        }
    }
}

/// Runs `body` on a fresh multi-threaded tokio runtime whose threads all live in `ns` (built on a
/// thread that entered it; threads inherit their creator's namespace), so that every socket the
/// body opens is in `ns`. Nothing else ever runs on those threads.
pub async fn run_in<F, Fut, T>(ns: &NetNs, body: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
    T: Send + 'static,
{
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("failed to build a runtime in the namespace")?;
        runtime.block_on(body())
    })
    .await
    .context("failed to enter the namespace")?
}

fn program(name: &str) -> Result<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found; {MISSING}"))
}

fn reap(mut child: Child) -> Result<()> {
    // Only our own child, by its pid: kill() signals exactly this process.
    child.kill().context("failed to kill etcd")?;
    child.wait().context("failed to reap etcd")?;
    Ok(())
}

/// One `GET /health` over HTTP/1.0: whether etcd says it is healthy.
fn probe_health(addr: SocketAddr) -> Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.contains("\"health\":\"true\""))
}

fn tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}
