//! A private D-Bus bus (Debian's `dbus-daemon`, with its own config and socket in a temporary
//! directory: never the host's bus) and a fake `org.freedesktop.resolve1` on it that records
//! every call, for the tests of the systemd-resolved registration. Shared by cnm-dns's and
//! cnm-daemon's tests (included by path).

#![allow(dead_code)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

/// How long the bus or a recorded call may take to appear on a loaded machine.
pub const BOUND: Duration = Duration::from_secs(20);

/// A `dbus-daemon` of the test's own, stopped on drop.
pub struct PrivateBus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts it; returns once it prints its address (it listens by then).
    pub async fn start() -> Result<PrivateBus> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context(
                "start dbus-daemon (Debian package dbus-daemon; cargo xtask test installs it)",
            )?;
        let stdout = child.stdout.take().context("dbus-daemon's stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        });
        let address = match tokio::time::timeout(BOUND, line).await {
            Ok(r) => r??.trim().to_owned(),
            Err(_) => {
                let _ = child.kill();
                bail!("dbus-daemon printed no address within {BOUND:?}");
            }
        };
        if !address.starts_with("unix:") {
            let _ = child.kill();
            bail!("dbus-daemon printed {address:?}, not an address");
        }
        Ok(PrivateBus {
            child,
            address,
            _dir: dir,
        })
    }

    /// Its D-Bus address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call the fake received, with its arguments as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `SetLinkDNSEx(i, a(iayqs))`.
    SetLinkDnsEx(i32, Vec<(i32, Vec<u8>, u16, String)>),
    /// `SetLinkDNS(i, a(iay))`.
    SetLinkDns(i32, Vec<(i32, Vec<u8>)>),
    /// `SetLinkDomains(i, a(sb))`.
    SetLinkDomains(i32, Vec<(String, bool)>),
    /// `SetLinkDefaultRoute(i, b)`.
    SetLinkDefaultRoute(i32, bool),
    /// `RevertLink(i)`.
    RevertLink(i32),
}

/// How the fake behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Like resolved before v246: no SetLinkDNSEx (UnknownMethod).
    pub without_dns_ex: bool,
    /// SetLinkDomains fails (as for a link networkd manages).
    pub refuse_domains: bool,
}

struct Manager {
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Sender<usize>,
    behaviour: Behaviour,
}

impl Manager {
    fn record(&self, call: Call) {
        let mut calls = self.calls.lock().expect("calls lock");
        calls.push(call);
        self.count.send_replace(calls.len());
    }
}

#[zbus::interface(name = "org.freedesktop.resolve1.Manager")]
impl Manager {
    #[zbus(name = "SetLinkDNSEx")]
    fn set_link_dns_ex(
        &self,
        ifindex: i32,
        servers: Vec<(i32, Vec<u8>, u16, String)>,
    ) -> zbus::fdo::Result<()> {
        if self.behaviour.without_dns_ex {
            return Err(zbus::fdo::Error::UnknownMethod("SetLinkDNSEx".into()));
        }
        self.record(Call::SetLinkDnsEx(ifindex, servers));
        Ok(())
    }

    #[zbus(name = "SetLinkDNS")]
    fn set_link_dns(&self, ifindex: i32, servers: Vec<(i32, Vec<u8>)>) {
        self.record(Call::SetLinkDns(ifindex, servers));
    }

    fn set_link_domains(
        &self,
        ifindex: i32,
        domains: Vec<(String, bool)>,
    ) -> zbus::fdo::Result<()> {
        self.record(Call::SetLinkDomains(ifindex, domains));
        if self.behaviour.refuse_domains {
            return Err(zbus::fdo::Error::Failed("Link is managed.".into()));
        }
        Ok(())
    }

    fn set_link_default_route(&self, ifindex: i32, enable: bool) {
        self.record(Call::SetLinkDefaultRoute(ifindex, enable));
    }

    fn revert_link(&self, ifindex: i32) {
        self.record(Call::RevertLink(ifindex));
    }
}

/// The fake systemd-resolved: owns `org.freedesktop.resolve1` on a bus while it lives.
pub struct FakeResolved {
    _conn: zbus::Connection,
    calls: Arc<Mutex<Vec<Call>>>,
    count: watch::Receiver<usize>,
}

impl FakeResolved {
    /// Serves `/org/freedesktop/resolve1` on `bus`; returns once the name is owned.
    pub async fn start(bus: &PrivateBus, behaviour: Behaviour) -> Result<FakeResolved> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(0);
        let manager = Manager {
            calls: calls.clone(),
            count: tx,
            behaviour,
        };
        let conn = tokio::time::timeout(
            BOUND,
            zbus::connection::Builder::address(bus.address())?
                .serve_at("/org/freedesktop/resolve1", manager)?
                .name("org.freedesktop.resolve1")?
                .build(),
        )
        .await
        .context("the fake resolved did not get on the bus in time")??;
        Ok(FakeResolved {
            _conn: conn,
            calls,
            count: rx,
        })
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Waits (bounded) until at least `n` calls arrived; returns them all.
    pub async fn wait_calls(&self, n: usize) -> Result<Vec<Call>> {
        let mut rx = self.count.clone();
        tokio::time::timeout(BOUND, rx.wait_for(|c| *c >= n))
            .await
            .with_context(|| {
                format!("fewer than {n} calls within {BOUND:?}: {:?}", self.calls())
            })??;
        Ok(self.calls())
    }
}
