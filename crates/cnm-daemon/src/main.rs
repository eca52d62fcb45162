//! cnmd: the cnm daemon. Parses the command line, sets up logging, raises its descriptor limit,
//! and runs [`cnm_daemon::serve`] until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use cnm::cnm_dns::resolved::ResolvedBus;
use cnm_daemon::plugin::DockerPluginConfig;
use cnm_daemon::{Config, HostDns, StoreKind};
use cnm_driver_remote::RemoteConfig;
use cnm_driver_remote::plugin::{ClientConfig, PluginDirs};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// The cnm daemon: Docker-compatible network API and cnm's own API on a unix socket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The API socket.
    #[arg(long, default_value = cnm_daemon::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Group (name or gid) given read and write access to the socket besides root, like
    /// dockerd's --group. Default: root only.
    #[arg(short = 'G', long)]
    group: Option<String>,
    /// Seconds a client has to send a request head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, default_value_t = cnm_daemon::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    header_timeout: f64,
    /// Open API connections at most; beyond it the longest-idle one is closed.
    #[arg(long, default_value_t = cnm_daemon::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
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
    /// A directory where network driver plugins are looked for by name, the moment a network
    /// names a driver cnmd does not have (NAME.sock, NAME/NAME.sock, NAME.spec, NAME.json, …),
    /// in search order; repeat for several. Default: Docker's /run/docker/plugins,
    /// /etc/docker/plugins and /usr/lib/docker/plugins.
    #[arg(long = "plugin-dir", value_name = "DIR", default_values = DEFAULT_PLUGIN_DIRS)]
    plugin_dirs: Vec<PathBuf>,
    /// Seconds one call to a plugin may take, from connecting to its last byte.
    #[arg(long, default_value_t = 10.0)]
    plugin_timeout: f64,
    /// Serve cnm's drivers and IPAM to dockerd as a Docker plugin of this name, on
    /// `DIR/NAME.sock`: `docker network create -d NAME --ipam-driver NAME -o com.cnm.driver=bridge …`.
    #[arg(long, value_name = "NAME")]
    docker_plugin: Option<String>,
    /// The directory of the --docker-plugin socket.
    #[arg(long, value_name = "DIR", default_value = cnm_daemon::plugin::DEFAULT_PLUGIN_DIR)]
    docker_plugin_dir: PathBuf,
    /// Join a cluster: the etcd store every host shares (etcd://HOST:PORT[,HOST:PORT…]),
    /// where global (overlay) networks live. Unreachable at start: cnmd starts with local
    /// networks, refuses global ones (503, naming the store) and keeps trying in the background
    /// (every 1 s, doubling up to 10 s); it joins the cluster the moment the store answers,
    /// without a restart.
    #[arg(long, value_name = "etcd://HOST:PORT[,HOST:PORT…]")]
    cluster_store: Option<cnm_store::EtcdEndpoints>,
    /// This host's address on the cluster's underlay, as the other hosts reach it (the VTEP
    /// of its overlay networks). Required with --cluster-store.
    #[arg(long, value_name = "ADDR")]
    advertise_addr: Option<std::net::IpAddr>,
    /// Seconds of the lease this host's endpoints live under in the cluster store: when this
    /// host dies, the other hosts drop its endpoints within it.
    #[arg(long, default_value_t = 15.0)]
    cluster_lease_ttl: f64,
    /// The UDP port of this host's WireGuard (on the advertise address), which carries the
    /// traffic of encrypted overlay networks (`-o encrypted`). The same on every host.
    #[arg(long, default_value_t = 51820)]
    wireguard_port: u16,
    /// Seconds between replacements of this host's WireGuard static key (0: never; session
    /// keys are renewed every 2 minutes by WireGuard itself).
    #[arg(long, default_value_t = 0.0)]
    wireguard_key_rotation: f64,
    /// Where the host itself resolves containers: a DNS server on this loopback address
    /// answering NAME.NETWORK and NAME.NETWORK.cnm (and PTR) for every network, REFUSED for
    /// anything else. `off` for none. Default: 127.0.0.153:53 when that can be bound (a
    /// warning if not); an address given here must be bound or cnmd does not start.
    #[arg(long, value_name = "ADDR|off")]
    host_dns: Option<String>,
    /// Register the host resolver with systemd-resolved over D-Bus (the link's DNS server and
    /// `~cnm` routing domain, reverted at exit): `system` (the system bus, honouring
    /// $DBUS_SYSTEM_BUS_ADDRESS), a D-Bus address (`unix:path=…`), or `off`. Where no bus or
    /// no resolved answers, a note is logged with how to do it by hand.
    #[arg(long, value_name = "system|ADDRESS|off", default_value = "system")]
    resolved_bus: String,
    /// The link (in the host namespace) the registration goes on; resolved uses it while it has
    /// carrier. Default: the default bridge.
    #[arg(long, value_name = "IFNAME", default_value = cnm_daemon::DEFAULT_BRIDGE_IF)]
    resolved_link: String,
}

/// Docker's plugin directories: sockets in the first, spec files in the others (each is
/// searched for both).
const DEFAULT_PLUGIN_DIRS: [&str; 3] = [
    "/run/docker/plugins",
    "/etc/docker/plugins",
    "/usr/lib/docker/plugins",
];

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
        // Colour only for a terminal: a log file (cnmd.log, a journal) gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(nofile) = raise_nofile_limit()
        && let Some(warning) =
            cnm_daemon::limits::low_limit_warning(nofile, args.max_connections as u64)
    {
        tracing::warn!("{warning}");
    }
    let store: StoreKind = args.store.parse()?;
    let header_timeout = positive_secs("--header-timeout", args.header_timeout)?;
    let plugin_timeout = positive_secs("--plugin-timeout", args.plugin_timeout)?;
    let plugins = RemoteConfig {
        dirs: PluginDirs::new(args.plugin_dirs.clone(), args.plugin_dirs),
        client: ClientConfig {
            call_timeout: plugin_timeout,
            ..ClientConfig::default()
        },
    };
    let mut config = Config::in_dirs(args.run_dir, args.state_dir);
    config.socket = args.socket;
    config.socket_group = args.group;
    config.header_timeout = header_timeout;
    config.max_connections = args.max_connections;
    config.metrics_addr = args.metrics_addr;
    config.store = store;
    config.ip_forward_no_drop = args.ip_forward_no_drop;
    config.plugins = Some(plugins);
    config.docker_plugin = args.docker_plugin.map(|name| DockerPluginConfig {
        name,
        dir: args.docker_plugin_dir,
    });
    config.cluster_store = args.cluster_store;
    config.advertise_addr = args.advertise_addr;
    config.cluster_lease_ttl = Duration::try_from_secs_f64(args.cluster_lease_ttl)
        .ok()
        .filter(|d| *d >= Duration::from_secs(1))
        .with_context(|| {
            format!(
                "invalid --cluster-lease-ttl {}: must be at least 1 second",
                args.cluster_lease_ttl
            )
        })?;
    config.driver_settings.push((
        "overlay".to_owned(),
        "wireguard_port".to_owned(),
        args.wireguard_port.to_string(),
    ));
    config.driver_settings.push((
        "overlay".to_owned(),
        "wireguard_key_rotation".to_owned(),
        args.wireguard_key_rotation.to_string(),
    ));
    config.host_dns = match args.host_dns.as_deref() {
        None => HostDns::Try(cnm_daemon::DEFAULT_HOST_DNS),
        Some("off" | "none" | "false") => HostDns::Off,
        Some(v) => HostDns::Require(parse_host_dns(v)?),
    };
    args.resolved_link
        .parse::<cnm::cnm_types::IfName>()
        .map_err(|e| anyhow::anyhow!("invalid --resolved-link {:?}: {e}", args.resolved_link))?;
    config.resolved = match args.resolved_bus.as_str() {
        "off" | "none" | "false" => None,
        "system" => Some(cnm_daemon::Resolved {
            bus: ResolvedBus::System,
            link: args.resolved_link,
        }),
        addr => Some(cnm_daemon::Resolved {
            bus: ResolvedBus::Address(addr.to_owned()),
            link: args.resolved_link,
        }),
    };
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

/// A timeout flag's seconds as a duration: positive and finite, or an error naming the flag.
fn positive_secs(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("invalid {flag} {secs}: want a positive number of seconds"))
}

/// `--host-dns`: `IP:PORT`, or an IP (port 53); a loopback one.
fn parse_host_dns(v: &str) -> anyhow::Result<SocketAddr> {
    let addr = v
        .parse::<SocketAddr>()
        .or_else(|_| {
            v.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| anyhow::anyhow!("invalid --host-dns {v:?}: want IP[:PORT] or off"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "invalid --host-dns {v:?}: not a loopback address (it would be reachable from other machines)"
    );
    Ok(addr)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Each published host port holds a reserved
/// socket (one dual-stack socket when no host IP is given), so the common soft limit of 1,024
/// fails a range of a thousand ports (issue 8);
/// the hard limit is what the administrator allows. Failing to raise it is not fatal. Returns
/// the soft limit in force afterwards, if it could be read.
fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return None;
        }
    };
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at nr_open.
    let target = if hard == RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(soft)
    } else {
        hard
    };
    if soft >= target {
        tracing::debug!(soft, hard, "RLIMIT_NOFILE already at its hard limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = target, "raised the soft RLIMIT_NOFILE");
            Some(target)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the soft RLIMIT_NOFILE");
            Some(soft)
        }
    }
}
