//! The real `cnmd` binary in its own throwaway network and mount namespaces (`unshare --net
//! --mount`), with its socket and directories in a tempdir: for what only a process shows
//! (descriptor limits, the socket's owner and mode, thousands of connections).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A cnmd process, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Spawned {
    child: Child,
    dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts cnmd with `args` after running the shell `prelude` (e.g. `ulimit -Sn 1024`) in the
    /// new namespaces, and waits until it answers.
    pub fn start(args: &[&str], prelude: &str) -> Result<Spawned> {
        let dir = tempfile::tempdir()?;
        // Other users may need to reach the socket in some tests.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let log = std::fs::File::create(dir.path().join("cnmd.log"))?;
        let script = format!("set -e\n{prelude}\nexec \"$@\"");
        let child = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .args(["bash", "-c", &script, "cnmd"])
            .arg(env!("CARGO_BIN_EXE_cnmd"))
            .arg("--socket")
            .arg(dir.path().join("cnm.sock"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("unshare cnmd (needs root)")?;
        let mut d = Spawned { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(5);
        while std::os::unix::net::UnixStream::connect(d.socket()).is_err() {
            if let Some(status) = d.child.try_wait()? {
                bail!("cnmd exited ({status}) before it answered:\n{}", d.log());
            }
            if Instant::now() > deadline {
                bail!("cnmd did not listen within 30 s:\n{}", d.log());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cnm.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cnmd.log")).unwrap_or_default()
    }

    /// How many descriptors the daemon holds.
    pub fn open_fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// A command run in the daemon's network and mount namespaces.
    pub fn nsenter(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-m", "-n", "--"])
            .args(argv);
        c
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's soft descriptor limit to its hard limit (the test holds the client
/// end of every connection).
pub fn raise_own_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}
