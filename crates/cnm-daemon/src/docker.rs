//! The Docker Engine API's network part (what `docker network …` uses), plus `/_ping`,
//! `/version`, `/info` and `/events`, answered as dockerd answers them: per API version where
//! dockerd's answers change with it, with dockerd's texts and statuses where clients read them.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cnm::{CoreError, Network as CnmNetwork};
use cnm_api::docker::{
    Commit, ComponentVersion, Filters, Network, NetworkConnectRequest, NetworkCreateRequest,
    NetworkCreateResponse, NetworkDisconnectRequest, NetworkPruneResponse, Platform, PluginsInfo,
    StringMap, SwarmInfo, SystemInfo, SystemVersion, label_matches,
};
use tokio::sync::broadcast::error::RecvError;

use crate::ApiError;
use crate::clock;
use crate::events::Event;
use crate::request::{Parse as _, any_filters, filters, query_param};
use crate::server::{
    API_VERSION, ApiVersion, Body, DockerJson, Key, MIN_API_VERSION, St, is_predefined,
    no_such_container,
};
use crate::views::{self, Shape};

/// `GET|HEAD /_ping`: "OK"; the version headers are stamped on every response.
pub(crate) async fn ping() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "OK",
    )
}

/// `GET /version`: cnmd as the `Engine` component (where clients look for the API versions).
pub(crate) async fn version() -> DockerJson<SystemVersion> {
    let (ma, mi) = MIN_API_VERSION;
    let min = format!("{ma}.{mi}");
    let kernel = host::kernel_version();
    let details = StringMap::from([
        ("ApiVersion".to_owned(), API_VERSION.to_owned()),
        ("Arch".to_owned(), go_arch().to_owned()),
        ("BuildTime".to_owned(), String::new()),
        ("Experimental".to_owned(), "false".to_owned()),
        ("GitCommit".to_owned(), String::new()),
        ("GoVersion".to_owned(), String::new()),
        ("KernelVersion".to_owned(), kernel.clone()),
        ("MinAPIVersion".to_owned(), min.clone()),
        ("Os".to_owned(), "linux".to_owned()),
    ]);
    DockerJson(SystemVersion {
        platform: Platform {
            name: "cnm".to_owned(),
        },
        components: vec![ComponentVersion {
            name: "Engine".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            details,
        }],
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api_version: API_VERSION.to_owned(),
        min_api_version: min,
        os: "linux".to_owned(),
        arch: go_arch().to_owned(),
        kernel_version: kernel,
        ..Default::default()
    })
}

/// `GET /info`: what a network daemon can say truthfully about itself and its host; `Plugins.
/// Network` lists the linked drivers, `Containers` counts sandboxes.
pub(crate) async fn info(st: St) -> DockerJson<SystemInfo> {
    let sandboxes = st.ctl.sandboxes().len() as u64;
    let os = host::os_release();
    let env = |k: &str| {
        std::env::var(k)
            .or_else(|_| std::env::var(k.to_ascii_lowercase()))
            .unwrap_or_default()
    };
    DockerJson(SystemInfo {
        containers: sandboxes,
        containers_running: sandboxes,
        plugins: PluginsInfo {
            network: cnm::builtin_drivers()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            ..Default::default()
        },
        ipv4_forwarding: host::ipv4_forwarding(st.ctl.host_netns()).await,
        n_fd: host::open_fds(),
        system_time: clock::rfc3339(SystemTime::now()),
        n_events_listener: st.events.listeners() as u64,
        kernel_version: host::kernel_version(),
        operating_system: os.pretty_name,
        os_version: os.version_id,
        os_type: "linux".to_owned(),
        architecture: std::env::consts::ARCH.to_owned(),
        ncpu: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        mem_total: host::mem_total(),
        docker_root_dir: st.state_dir.display().to_string(),
        http_proxy: env("HTTP_PROXY"),
        https_proxy: env("HTTPS_PROXY"),
        no_proxy: env("NO_PROXY"),
        name: host::hostname(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        swarm: SwarmInfo {
            local_node_state: "inactive".to_owned(),
            ..Default::default()
        },
        // Networks and sandboxes stay up while cnmd is stopped, and are adopted on start.
        live_restore_enabled: true,
        containerd_commit: Commit::default(),
        runc_commit: Commit::default(),
        init_commit: Commit::default(),
        ..Default::default()
    })
}

/// Facts about the host for `/info` and `/version`, read from `/proc` and `/etc`.
mod host {
    use cnm::cnm_sandbox::NetNs;

    fn read(path: &str) -> String {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    pub(super) fn kernel_version() -> String {
        read("/proc/sys/kernel/osrelease")
    }

    pub(super) fn hostname() -> String {
        read("/proc/sys/kernel/hostname")
    }

    pub(super) fn open_fds() -> u64 {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
    }

    pub(super) fn mem_total() -> u64 {
        read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Forwarding in the namespace cnmd treats as the host (not necessarily its own).
    pub(super) async fn ipv4_forwarding(ns: &NetNs) -> bool {
        matches!(
            ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")).await,
            Ok(Ok(v)) if v.trim() == "1"
        )
    }

    pub(super) struct OsRelease {
        pub(super) pretty_name: String,
        pub(super) version_id: String,
    }

    pub(super) fn os_release() -> OsRelease {
        let text = std::fs::read_to_string("/etc/os-release")
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_default()
        };
        OsRelease {
            pretty_name: field("PRETTY_NAME"),
            version_id: field("VERSION_ID"),
        }
    }
}

/// The architecture as Go (and so Docker) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

const LIST_FILTERS: &[&str] = &["name", "id", "driver", "label", "type", "scope", "dangling"];

/// What a network's answer carries at API version `v`.
fn shape(v: ApiVersion, containers: bool) -> Shape {
    Shape {
        containers,
        enable_ipv4: v.at_least(1, 48),
    }
}

/// `GET /networks[?filters=…]`. Since API 1.28 the list carries no containers (inspect does);
/// `dangling` is about attachments, as in current engines.
pub(crate) async fn list(
    st: St,
    v: ApiVersion,
    RawQuery(q): RawQuery,
) -> Result<DockerJson<Vec<Network>>, ApiError> {
    let f = filters(q.as_deref(), LIST_FILTERS)?;
    for t in f.get("type") {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    let mut dangling = None;
    for d in f.get("dangling") {
        dangling = Some(match d {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid value for filter 'dangling', must be \"true\" (or \"1\"), or \
                     \"false\" (or \"0\")",
                ));
            }
        });
    }
    let mut out = Vec::new();
    for net in st.ctl.networks() {
        let predefined = is_predefined(&net);
        let keep = f.any("name", |v| net.name().contains(v))
            && f.any("id", |v| net.id().starts_with(v))
            && f.any("driver", |v| net.driver() == v)
            && f.labels_match("label", &net.options().labels)
            && f.any("type", |v| (v == "builtin") == predefined)
            && f.any("scope", |v| v == net.scope().to_string())
            && dangling.is_none_or(|d| d == (!predefined && net.endpoints().is_empty()));
        if keep {
            let shape = shape(v, !v.at_least(1, 28));
            out.push(views::network(&st.ctl, &net, st.created(&net), shape).await);
        }
    }
    // Networks recorded before cnmd started that wait for a plugin: listed as recorded, with
    // `Waiting` saying for what.
    for w in st.ctl.waiting_networks() {
        let rec = &w.record;
        let keep = f.any("name", |v| rec.name.contains(v))
            && f.any("id", |v| rec.id.starts_with(v))
            && f.any("driver", |v| rec.driver == v)
            && f.labels_match("label", &rec.labels)
            && f.any("type", |v| v == "custom")
            && f.any("scope", |v| v == rec.scope.to_string())
            && dangling.is_none_or(|d| d == w.endpoints.is_empty());
        if keep {
            let shape = shape(v, !v.at_least(1, 28));
            out.push(views::waiting_network(
                &st.ctl,
                &w,
                st.created_waiting(&w),
                shape,
            ));
        }
    }
    Ok(DockerJson(out))
}

/// `GET /networks/{id}[?verbose=…]`.
pub(crate) async fn inspect(
    st: St,
    v: ApiVersion,
    Key(key): Key,
    RawQuery(q): RawQuery,
) -> Result<DockerJson<Network>, ApiError> {
    if let Some(verbose) = query_param(q.as_deref().unwrap_or(""), "verbose")?
        && !verbose.is_empty()
        && go_bool(&verbose).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "invalid value for verbose: {verbose}: strconv.ParseBool: parsing \"{verbose}\": \
             invalid syntax"
        )));
    }
    let net = st.ctl.network(&key);
    if let Err(CoreError::NotFound { .. }) = &net
        && let Some(w) = st.waiting_network(&key)
    {
        return Ok(DockerJson(views::waiting_network(
            &st.ctl,
            &w,
            st.created_waiting(&w),
            shape(v, true),
        )));
    }
    let net = net.map_err(|e| match e {
        // dockerd's inspect words it the other way round from rm and connect.
        CoreError::Ambiguous { matches, .. } => ApiError::bad_request(format!(
            "{} matches found based on ID prefix: network {key} is ambiguous",
            matches.len()
        )),
        e => st.network_error(&key, e),
    })?;
    Ok(DockerJson(
        views::network(&st.ctl, &net, st.created(&net), shape(v, true)).await,
    ))
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `POST /networks/create` → 201 `{"Id", "Warning"}`.
///
/// A name is never taken twice, whatever `CheckDuplicate` says (current engines refuse at every
/// API version; dockerd 20.10 made a second network when it was false). `EnableIPv4` is read
/// from API 1.48 on, as dockerd does.
pub(crate) async fn create(
    st: St,
    v: ApiVersion,
    Body(mut req): Body<NetworkCreateRequest>,
) -> Result<(StatusCode, DockerJson<NetworkCreateResponse>), ApiError> {
    if crate::server::PREDEFINED.contains(&req.name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "operation is not permitted on predefined {} network",
            req.name
        )));
    }
    if !v.at_least(1, 48) {
        req.enable_ipv4 = None;
    }
    let c = req.parse()?;
    let options = c.options.clone();
    let net = st
        .timed("network_create", async {
            Ok(st.ctl.new_network(&c.driver, &c.name, c.options).await?)
        })
        .await?;
    // Keys no driver or IPAM knows are kept and shown, as dockerd keeps them, and named here
    // (after the create: a driver a resolver finds by name is registered by then). The network
    // exists: a failure here costs the warning, never the answer.
    let warnings = st
        .ctl
        .option_warnings(&c.driver, &options)
        .unwrap_or_else(|e| {
            tracing::warn!(network = %c.name, error = %e, "option warnings");
            Vec::new()
        });
    st.network_created(&net);
    Ok((
        StatusCode::CREATED,
        DockerJson(NetworkCreateResponse {
            id: net.id().to_owned(),
            warning: warnings.join("\n"),
        }),
    ))
}

/// `DELETE /networks/{id}` → 204; 403 for a predefined network or one in use.
pub(crate) async fn remove(st: St, Key(key): Key) -> Result<StatusCode, ApiError> {
    let predefined = |name: &str| {
        ApiError::forbidden(format!(
            "{name} is a pre-defined network and cannot be removed"
        ))
    };
    let net = match st.network(&key) {
        // `host` is reserved as in dockerd, even where its record is gone.
        Err(e) if e.status == StatusCode::NOT_FOUND && key == "host" => {
            return Err(predefined("host"));
        }
        r => r?,
    };
    if is_predefined(&net) {
        return Err(predefined(net.name()));
    }
    st.timed("network_delete", async {
        net.delete().await.map_err(|e| in_use(&net, e))
    })
    .await?;
    st.network_destroyed(&net);
    Ok(StatusCode::NO_CONTENT)
}

/// dockerd's words for a network that still has endpoints (libnetwork's
/// `ActiveEndpointsError`, 403).
fn in_use(net: &CnmNetwork, e: CoreError) -> ApiError {
    if matches!(e.primary(), CoreError::NetworkInUse { .. }) {
        return ApiError::forbidden(format!(
            "error while removing network: network {} id {} has active endpoints",
            net.name(),
            net.id()
        ));
    }
    e.into()
}

/// `POST /networks/{id}/connect`: the container is a sandbox made through cnm's API.
pub(crate) async fn connect(
    st: St,
    Key(key): Key,
    Body(req): Body<NetworkConnectRequest>,
) -> Result<StatusCode, ApiError> {
    let ec = req.endpoint_config.clone().unwrap_or_default();
    let ipam = ec.ipam_config.clone().unwrap_or_default();
    let addresses: Vec<String> = [ipam.ipv4_address, ipam.ipv6_address]
        .into_iter()
        .flatten()
        .filter(|a| !a.is_empty())
        .collect();
    let aliases = ec.aliases.unwrap_or_default();
    let c = req.parse()?;
    let net = st.network(&key)?;
    let sb = st.sandbox(&c.container, || no_such_container(&c.container))?;
    check_connect(&net, &sb, &addresses, &aliases).await?;
    st.connect(&net, &sb, c.endpoint, c.join).await?;
    Ok(StatusCode::OK)
}

/// dockerd's refusals of a connect, in its order and words (`runconfig` errors, all 400):
/// static addresses and aliases only on user-defined networks, static addresses only inside
/// the subnets the user configured, and `none` only alone.
async fn check_connect(
    net: &CnmNetwork,
    sb: &cnm::Sandbox,
    addresses: &[String],
    aliases: &[String],
) -> Result<(), ApiError> {
    if is_predefined(net) {
        if !addresses.is_empty() {
            return Err(ApiError::bad_request(
                "user specified IP address is supported on user defined networks only",
            ));
        }
        if !aliases.is_empty() {
            return Err(ApiError::bad_request(
                "network-scoped alias is supported only for containers in user defined networks",
            ));
        }
    }
    let pools = &net.options().pools;
    for a in addresses {
        let Ok(addr) = a.parse::<std::net::IpAddr>() else {
            continue; // refused, naming it, when the options are parsed
        };
        let family: Vec<_> = pools
            .iter()
            .map(|p| p.subnet())
            .filter(|s| s.addr().is_ipv4() == addr.is_ipv4())
            .collect();
        if family.is_empty() {
            return Err(ApiError::bad_request(
                "user specified IP address is supported only when connecting to networks with \
                 user configured subnets",
            ));
        }
        if !family.iter().any(|s| s.contains(&addr)) {
            return Err(ApiError::bad_request(format!(
                "Invalid address {addr}: It does not belong to any of this network's subnets"
            )));
        }
    }
    let joined = sb.endpoints();
    let on_none = joined.iter().any(|(ep, _)| ep.network().driver() == "null");
    if on_none || (net.driver() == "null" && !joined.is_empty()) {
        return Err(ApiError::bad_request(
            "container cannot be connected to multiple networks with one of the networks in \
             private (none) mode",
        ));
    }
    Ok(())
}

/// `POST /networks/{id}/disconnect`.
pub(crate) async fn disconnect(
    st: St,
    Key(key): Key,
    Body(req): Body<NetworkDisconnectRequest>,
) -> Result<StatusCode, ApiError> {
    let container = req.parse()?;
    let net = st.network(&key)?;
    let sb = st.sandbox(&container, || no_such_container(&container))?;
    st.disconnect(&net, &sb).await?;
    Ok(StatusCode::OK)
}

/// A time as Docker's `since`, `until` and prune's `until` take it: a Unix timestamp with up to
/// nine decimals (`1700000000.123456789`, exact), or a duration before now (`90s`, `10m`,
/// `24h`).
fn parse_time(v: &str, now: SystemTime) -> Result<SystemTime, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid time {v:?}: expected a Unix timestamp or a duration like 10m or 24h"
        ))
    };
    if let Some((num, unit)) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))
    {
        let n: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let d = Duration::try_from_secs_f64(n * scale).map_err(|_| bad())?;
        return now.checked_sub(d).ok_or_else(bad);
    }
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let nanos: u32 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or_else(bad)
}

/// `POST /networks/prune[?filters=…]`: deletes every unused, non-predefined network.
pub(crate) async fn prune(
    st: St,
    RawQuery(q): RawQuery,
) -> Result<DockerJson<NetworkPruneResponse>, ApiError> {
    let f = filters(q.as_deref(), &["label", "label!", "until"])?;
    let now = SystemTime::now();
    let until = f
        .get("until")
        .map(|v| parse_time(v, now))
        .collect::<Result<Vec<_>, _>>()?;
    let mut deleted = Vec::new();
    for net in st.ctl.networks() {
        let labels = &net.options().labels;
        if is_predefined(&net)
            || !net.endpoints().is_empty()
            || !f.labels_match("label", labels)
            || f.get("label!").any(|l| label_matches(l, labels))
        {
            continue;
        }
        if !until.is_empty() {
            let created = st.created_at(&net);
            if until.iter().any(|u| created > *u) {
                continue;
            }
        }
        match st
            .timed("network_delete", async { Ok(net.delete().await?) })
            .await
        {
            Ok(()) => {
                st.network_destroyed(&net);
                deleted.push(net.name().to_owned());
            }
            // Docker's prune skips what it cannot delete (a network that got an endpoint since).
            Err(e) => tracing::warn!(network = %net.name(), error = %e, "prune skipped network"),
        }
    }
    // dockerd (API 1.41+) reports every prune, even one that deleted nothing.
    let mut ev = Event::network("prune", "", "", "", None);
    ev.actor.attributes = StringMap::from([("reclaimed".to_owned(), "0".to_owned())]);
    st.events.publish(ev);
    Ok(DockerJson(NetworkPruneResponse {
        networks_deleted: deleted,
    }))
}

/// dockerd's event filter: `type`, `event` and `scope` exact, the object keys (`network`,
/// `container`, …) a prefix of the actor's id or name, `label` on the attributes; any other key
/// is ignored.
fn event_matches(f: &Filters, ev: &Event) -> bool {
    let name = ev.actor.attributes.get("name").map_or("", String::as_str);
    let fuzzy = |key: &str| f.any(key, |v| ev.actor.id.starts_with(v) || name.starts_with(v));
    let image = ev.actor.attributes.get("image").map_or("", String::as_str);
    f.any("type", |v| v == ev.kind)
        && f.any("event", |v| v == ev.action)
        && f.any("scope", |v| v == ev.scope)
        && [
            "daemon",
            "container",
            "plugin",
            "volume",
            "network",
            "service",
            "node",
            "secret",
            "config",
        ]
        .iter()
        .all(|k| fuzzy(k))
        && f.any("image", |v| v == ev.actor.id || v == image)
        && f.labels_match("label", &ev.actor.attributes)
}

/// `GET /events`: with `since` or `until`, first the kept events in that window (dockerd keeps
/// the last 256), then — unless `until` has passed — one JSON object per line as things
/// happen, until the client goes away, `until` passes, or the daemon shuts down.
pub(crate) async fn events(st: St, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let f = any_filters(q.as_deref())?;
    let query = q.as_deref().unwrap_or("");
    let now = SystemTime::now();
    let time = |name: &str| -> Result<Option<SystemTime>, ApiError> {
        match query_param(query, name)? {
            Some(v) if !v.is_empty() => parse_time(&v, now).map(Some),
            _ => Ok(None),
        }
    };
    let since = time("since")?;
    let until = time("until")?;
    let (past, rx) = st.events.replay_and_subscribe();
    let in_window = |ev: &Event| {
        let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ev.time_nano).unwrap_or(u64::MAX));
        since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u)
    };
    let replay: Vec<Event> = if since.is_some() || until.is_some() {
        past.into_iter()
            .filter(|ev| in_window(ev) && event_matches(&f, ev))
            .collect()
    } else {
        Vec::new()
    };
    let live = until.is_none_or(|u| u > now);
    let deadline = until.map(|u| {
        let left = u.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let shutdown = st.shutdown.clone();
    let replayed = futures::stream::iter(replay.into_iter().filter_map(|ev| line(&ev)).map(Ok));
    let stream = futures::stream::unfold(
        (rx, shutdown, f, deadline, live),
        |(mut rx, mut shutdown, f, deadline, live)| async move {
            if !live {
                return None;
            }
            loop {
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let ev = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return None,
                    () = sleep => return None,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) if event_matches(&f, &ev) => {
                        let Some(l) = line(&ev) else { continue };
                        return Some((Ok::<_, Infallible>(l), (rx, shutdown, f, deadline, live)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "events subscriber lagged");
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(replayed.chain(stream)),
    )
        .into_response())
}

/// One event as a line of the stream.
fn line(ev: &Event) -> Option<Bytes> {
    match serde_json::to_vec(ev) {
        Ok(mut l) => {
            l.push(b'\n');
            Some(Bytes::from(l))
        }
        Err(e) => {
            tracing::error!(error = %e, "failed to encode event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_timestamps_or_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            parse_time("100", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(100)
        );
        assert_eq!(
            parse_time("1764477009.000000123", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::new(1_764_477_009, 123),
            "nanoseconds are exact"
        );
        assert_eq!(
            parse_time("7.5", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(7_500)
        );
        assert_eq!(
            parse_time("10m", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(9_400)
        );
        for bad in ["", "x", "10d", "-5", "1e400", "1.0000000001", ".5"] {
            assert_eq!(parse_time(bad, now).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn event_filters() {
        let ev = Event::network("connect", "abc", "web", "bridge", Some("sb1"));
        let f = |q: &str| any_filters(Some(q)).unwrap();
        assert!(event_matches(&Filters::default(), &ev));
        assert!(event_matches(&f("filters={\"network\":[\"web\"]}"), &ev));
        assert!(event_matches(
            &f("filters={\"event\":{\"connect\":true}}"),
            &ev
        ));
        assert!(!event_matches(&f("filters={\"event\":[\"create\"]}"), &ev));
        assert!(!event_matches(
            &f("filters={\"container\":[\"other\"]}"),
            &ev
        ));
        // Object keys are prefixes of the actor's id or name; unknown keys are ignored.
        assert!(event_matches(&f("filters={\"network\":[\"we\"]}"), &ev));
        assert!(event_matches(&f("filters={\"network\":[\"ab\"]}"), &ev));
        assert!(event_matches(&f("filters={\"bogus\":[\"x\"]}"), &ev));
    }
}
