//! The Docker Engine API's network part (what `docker network …` uses), plus `/_ping`,
//! `/version` and `/events`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cnm_api::docker::{
    ComponentVersion, Filters, Network, NetworkConnectRequest, NetworkCreateRequest,
    NetworkCreateResponse, NetworkDisconnectRequest, NetworkPruneResponse, Platform, SystemVersion,
    label_matches,
};
use tokio::sync::broadcast::error::RecvError;

use crate::ApiError;
use crate::events::Event;
use crate::request::{Parse as _, filters, query_param};
use crate::server::{
    API_VERSION, Body, Key, MIN_API_VERSION, St, is_predefined, no_such_container,
};
use crate::views;

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

/// `GET /version`.
pub(crate) async fn version() -> Json<SystemVersion> {
    let (ma, mi) = MIN_API_VERSION;
    Json(SystemVersion {
        platform: Platform {
            name: "cnm".to_owned(),
        },
        components: vec![ComponentVersion {
            name: "cnmd".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            details: Default::default(),
        }],
        version: env!("CARGO_PKG_VERSION").to_owned(),
        api_version: API_VERSION.to_owned(),
        min_api_version: format!("{ma}.{mi}"),
        os: "linux".to_owned(),
        arch: go_arch().to_owned(),
        ..Default::default()
    })
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

/// `GET /networks[?filters=…]`.
pub(crate) async fn list(st: St, RawQuery(q): RawQuery) -> Result<Json<Vec<Network>>, ApiError> {
    let f = filters(q.as_deref(), LIST_FILTERS)?;
    for t in f.get("type") {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}'"
            )));
        }
    }
    for d in f.get("dangling") {
        if !matches!(d, "true" | "1" | "false" | "0") {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'dangling'='{d}'"
            )));
        }
    }
    let mut out = Vec::new();
    for net in st.ctl.networks() {
        let predefined = is_predefined(&net);
        let keep = f.any("name", |v| net.name().contains(v))
            && f.any("id", |v| net.id().starts_with(v))
            && f.any("driver", |v| net.driver() == v)
            && f.labels_match("label", &net.options().labels)
            && f.any("type", |v| (v == "builtin") == predefined)
            && f.any("scope", |v| v == "local");
        if !keep {
            continue;
        }
        let view = views::network(&st.ctl, &net, st.created(&net)).await;
        if !f.any("dangling", |v| {
            matches!(v, "true" | "1") == (view.containers.is_empty() && !predefined)
        }) {
            continue;
        }
        out.push(view);
    }
    Ok(Json(out))
}

/// `GET /networks/{id}`.
pub(crate) async fn inspect(st: St, Key(key): Key) -> Result<Json<Network>, ApiError> {
    let net = st.network(&key)?;
    Ok(Json(views::network(&st.ctl, &net, st.created(&net)).await))
}

/// `POST /networks/create` → 201 `{"Id", "Warning"}`.
pub(crate) async fn create(
    st: St,
    Body(req): Body<NetworkCreateRequest>,
) -> Result<(StatusCode, Json<NetworkCreateResponse>), ApiError> {
    let c = req.parse()?;
    if c.name == "host" && st.ctl.network("host").is_err() {
        return Err(ApiError::forbidden(
            "operation is not permitted on predefined host network",
        ));
    }
    let net = st
        .timed("network_create", async {
            Ok(st.ctl.new_network(&c.driver, &c.name, c.options).await?)
        })
        .await?;
    st.network_created(&net);
    Ok((
        StatusCode::CREATED,
        Json(NetworkCreateResponse {
            id: net.id().to_owned(),
            warning: String::new(),
        }),
    ))
}

/// `DELETE /networks/{id}` → 204; 403 for a predefined network.
pub(crate) async fn remove(st: St, Key(key): Key) -> Result<StatusCode, ApiError> {
    let net = st.network(&key)?;
    if is_predefined(&net) {
        return Err(ApiError::forbidden(format!(
            "{} is a pre-defined network and cannot be removed",
            net.name()
        )));
    }
    st.timed("network_delete", async { Ok(net.delete().await?) })
        .await?;
    st.network_destroyed(&net);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /networks/{id}/connect`: the container is a sandbox made through cnm's API.
pub(crate) async fn connect(
    st: St,
    Key(key): Key,
    Body(req): Body<NetworkConnectRequest>,
) -> Result<StatusCode, ApiError> {
    let c = req.parse()?;
    let net = st.network(&key)?;
    let sb = st.sandbox(&c.container, || no_such_container(&c.container))?;
    st.connect(&net, &sb, c.endpoint, c.join).await?;
    Ok(StatusCode::OK)
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

/// Parses Docker's `until` filter: a Unix timestamp (`1700000000[.5]`) or a duration before now
/// (`90s`, `10m`, `24h`).
fn parse_until(v: &str, now: SystemTime) -> Result<SystemTime, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid filter 'until={v}': expected a Unix timestamp or a duration like 10m or 24h"
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
    let secs: f64 = v.parse().map_err(|_| bad())?;
    let d = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    SystemTime::UNIX_EPOCH.checked_add(d).ok_or_else(bad)
}

/// `POST /networks/prune[?filters=…]`: deletes every unused, non-predefined network.
pub(crate) async fn prune(
    st: St,
    RawQuery(q): RawQuery,
) -> Result<Json<NetworkPruneResponse>, ApiError> {
    let f = filters(q.as_deref(), &["label", "label!", "until"])?;
    let now = SystemTime::now();
    let until = f
        .get("until")
        .map(|v| parse_until(v, now))
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
    Ok(Json(NetworkPruneResponse {
        networks_deleted: deleted,
    }))
}

fn event_matches(f: &Filters, ev: &Event) -> bool {
    f.any("type", |v| v == ev.kind)
        && f.any("event", |v| v == ev.action)
        && f.any("scope", |v| v == ev.scope)
        && f.any("network", |v| {
            v == ev.actor.id || ev.actor.attributes.get("name").is_some_and(|n| n == v)
        })
        && f.any("container", |v| {
            ev.actor.attributes.get("container").is_some_and(|c| c == v)
        })
}

/// `GET /events`: one JSON object per line as things happen, until the client goes away, the
/// `until` time passes, or the daemon shuts down.
pub(crate) async fn events(st: St, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let f = filters(
        q.as_deref(),
        &["type", "event", "network", "container", "scope"],
    )?;
    let until = match query_param(q.as_deref().unwrap_or(""), "until")? {
        Some(v) if !v.is_empty() => Some(parse_until(&v, SystemTime::now())?),
        _ => None,
    };
    let deadline = until.map(|u| {
        let left = u.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let rx = st.events.subscribe();
    let shutdown = st.shutdown.clone();
    let stream = futures::stream::unfold(
        (rx, shutdown, f, deadline),
        |(mut rx, mut shutdown, f, deadline)| async move {
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
                        let mut line = match serde_json::to_vec(&ev) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "failed to encode event");
                                continue;
                            }
                        };
                        line.push(b'\n');
                        return Some((
                            Ok::<_, Infallible>(Bytes::from(line)),
                            (rx, shutdown, f, deadline),
                        ));
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
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_accepts_timestamps_and_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            parse_until("100", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(100)
        );
        assert_eq!(
            parse_until("10m", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(9_400)
        );
        for bad in ["", "x", "10d", "-5", "1e400"] {
            assert_eq!(parse_until(bad, now).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn event_filters() {
        let ev = Event::network("connect", "abc", "web", "bridge", Some("sb1"));
        let f = |q: &str| {
            filters(Some(q), &["type", "event", "network", "container", "scope"]).unwrap()
        };
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
    }
}
