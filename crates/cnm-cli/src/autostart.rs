//! Starting cnmd in the background when nobody runs it at the default socket, so a new user has
//! no setup step.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::{Client, UnreachableError};

/// Where cnmd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cnm/cnm.sock";

/// The daemon log's mode: root and its group read it, nobody else (it names every network,
/// address and container; issue 8 found it world-readable).
const LOG_MODE: u32 = 0o640;
/// The autostart lock's mode.
const LOCK_MODE: u32 = 0o600;

/// How long a freshly started daemon may take to answer `/_ping`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Makes sure a daemon answers at the client's (default) socket, starting one when needed.
pub async fn ensure(client: &Client) -> anyhow::Result<()> {
    let err = match client.ping().await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let may_start = err
        .downcast_ref::<UnreachableError>()
        .is_some_and(UnreachableError::nobody_listens);
    if !may_start {
        return Err(err);
    }
    let run_dir = client
        .socket()
        .parent()
        .map_or_else(|| PathBuf::from("/run/cnm"), Path::to_path_buf);
    start(client, &run_dir).await
}

async fn start(client: &Client, run_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(run_dir).with_context(|| {
        format!(
            "cannot create {} to start cnmd (are you root?)",
            run_dir.display()
        )
    })?;
    // Two cnm commands racing to start the daemon: the second waits here, then finds it running.
    let lock = open_private(&run_dir.join("cnm-autostart.lock"), LOCK_MODE, false)
        .with_context(|| format!("cannot create a lock in {}", run_dir.display()))?;
    let _lock = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", "cnm-autostart.lock"))
    })
    .await??;
    if client.ping().await.is_ok() {
        return Ok(());
    }

    let cnmd = locate_cnmd()?;
    let log_path = run_dir.join("cnmd.log");
    let log = open_private(&log_path, LOG_MODE, true)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let me = std::env::current_exe().context("cannot find the cnm executable to start cnmd")?;
    // `cnm __detach` calls setsid() and execs cnmd: the daemon outlives this command and
    // the terminal's signals, without any unsafe pre_exec hook here.
    let mut child = Command::new(me)
        .arg("__detach")
        .arg("--")
        .arg(&cnmd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("cannot duplicate the log file")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", cnmd.display()))?;
    let pid = child.id();

    let deadline = Instant::now() + START_TIMEOUT;
    let mut backoff = Duration::from_millis(5);
    loop {
        if client.ping().await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait().context("cannot wait for cnmd")? {
            anyhow::bail!(
                "cnmd exited ({status}) before it answered; its log {} ends with:\n{}",
                log_path.display(),
                tail(&log_path, 10)
            );
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "cnmd (pid {pid}) did not answer on unix://{} within {}s; see {}",
                client.socket().display(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("started cnmd (pid {pid}), logs in {}", log_path.display());
    }
    // The daemon is reparented to init when we exit; not waiting here is deliberate.
    drop(child);
    Ok(())
}

/// Opens `path` for writing (appending, or without truncating), created with `mode` from the
/// start; a file left more open by an older version is narrowed to `mode`.
fn open_private(path: &Path, mode: u32, append: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(false)
        .mode(mode)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o777 & !mode != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// The `cnmd` next to this `cnm` executable, else the first on PATH.
fn locate_cnmd() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|me| me.parent().map(|d| d.join("cnmd")));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("cnmd"));
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no cnmd is running and none was found next to cnm or on PATH: build it with `cargo build --release -p cnm-daemon` or start it yourself with `cnmd --socket {DEFAULT_SOCKET}`"
            )
        })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
