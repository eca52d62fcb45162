//! cnmd: the cnm daemon. Parses the command line, sets up logging, and runs
//! [`cnm_daemon::serve`] until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use cnm_daemon::{Config, StoreKind};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// The cnm daemon: Docker-compatible network API and cnm's own API on a unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The API socket.
    #[arg(long, default_value = cnm_daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The run dir (netns bind mounts, sandbox files).
    #[arg(long, default_value = cnm::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The state dir (store, lock file).
    #[arg(long, default_value = cnm::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Log filter (tracing's syntax, e.g. info or cnm=debug); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// The state store: redb (durable, reloaded on start) or memory.
    #[arg(long, default_value = "redb")]
    store: String,
    /// Do not drop forwarded traffic that is neither to nor from a cnm network when cnm is the
    /// one that turned IP forwarding on (by default it is dropped, so that the host does not
    /// start routing between its other interfaces). A host that already forwarded is never
    /// touched either way.
    #[arg(long)]
    ip_forward_no_drop: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).context("invalid RUST_LOG")?,
        _ => EnvFilter::try_new(&args.log_level).context("invalid --log-level")?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let store: StoreKind = args.store.parse()?;
    let mut config = Config::in_dirs(args.run_dir, args.state_dir);
    config.socket = args.socket;
    config.metrics_addr = args.metrics_addr;
    config.store = store;
    config.ip_forward_no_drop = args.ip_forward_no_drop;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    cnm_daemon::serve(config, shutdown).await?;
    Ok(())
}
