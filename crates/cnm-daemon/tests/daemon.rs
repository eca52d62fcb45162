//! cnmd over HTTP, in-process, with a throwaway namespace as its host: cnm's API, the events
//! stream, metrics, the state-dir lock, graceful shutdown, and bad input.

mod common;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use cnm_daemon::{Daemon, DaemonError, StateLock};
use cnm_testkit::TestHost;
use common::{Client, next_line};
use http_body_util::BodyExt;
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn cnm_api_sandboxes_connect_with_ports() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());

    let info = api.expect("GET", "/cnm/v1/info", None, 200).await?;
    ensure!(
        info["Store"] == "redb"
            && info["Drivers"] == json!(["bridge", "host", "ipvlan", "macvlan", "null", "overlay"]),
        "{info}"
    );
    ensure!(
        info["StateDir"] == host.state_dir().display().to_string(),
        "{info}"
    );

    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(
                json!({"Name": "web1", "Hostname": "web", "Domainname": "example.test",
                        "ExtraHosts": ["db:10.0.0.5"], "Dns": ["10.0.0.53"]}),
            ),
            201,
        )
        .await?;
    let id = sb["Id"].as_str().context("Id")?.to_owned();
    ensure!(
        sb["Name"] == "web1" && sb["Hostname"] == "web" && sb["Endpoints"] == json!([]),
        "{sb}"
    );
    let key = sb["Key"].as_str().context("Key")?;
    ensure!(std::path::Path::new(key).exists(), "netns {key} exists");
    let hosts = std::fs::read_to_string(sb["HostsPath"].as_str().context("HostsPath")?)?;
    ensure!(
        hosts.contains("10.0.0.5") && hosts.contains("db"),
        "{hosts}"
    );
    let rc = std::fs::read_to_string(sb["ResolvConfPath"].as_str().context("ResolvConfPath")?)?;
    ensure!(rc.contains("nameserver 10.0.0.53"), "{rc}");

    // by id prefix, and in the list
    let same = api
        .expect("GET", &format!("/cnm/v1/sandboxes/{}", &id[..8]), None, 200)
        .await?;
    ensure!(same["Name"] == "web1");
    let all = api.expect("GET", "/cnm/v1/sandboxes", None, 200).await?;
    ensure!(all.as_array().map(Vec::len) == Some(1), "{all}");

    // connect to the default bridge with a published port and a fixed address
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web1/connect",
            Some(json!({"Network": "bridge", "Ports": ["127.0.0.1:8080:80/tcp"], "Aliases": ["www"]})),
            200,
        )
        .await?;
    let ep = &sb["Endpoints"][0];
    ensure!(
        ep["Network"] == "bridge" && ep["Interface"] == "eth0" && ep["Gateway"] == true,
        "{sb}"
    );
    ensure!(
        ep["Ports"]
            == json!([{"Proto": "tcp", "HostIp": "127.0.0.1", "HostPort": 8080, "ContainerPort": 80}]),
        "{sb}"
    );
    ensure!(
        ep["IPv4Address"]
            .as_str()
            .is_some_and(|a| a.ends_with("/16")),
        "default pool: {sb}"
    );
    // the default bridge is cnm0 in the host namespace
    ensure!(
        host.netlink().link("cnm0").await?.is_some(),
        "cnm0 exists in the test host"
    );

    // a second network, disconnect from the first
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "back", "IPAM": {"Config": [{"Subnet": "10.55.0.0/24"}]}})),
        201,
    )
    .await?;
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web1/connect",
            Some(json!({"Network": "back", "IPv4Address": "10.55.0.9"})),
            200,
        )
        .await?;
    ensure!(sb["Endpoints"].as_array().map(Vec::len) == Some(2), "{sb}");
    ensure!(sb["Endpoints"][1]["IPv4Address"] == "10.55.0.9/24", "{sb}");
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes/web1/disconnect",
            Some(json!({"Network": "bridge"})),
            200,
        )
        .await?;
    ensure!(
        sb["Endpoints"].as_array().map(Vec::len) == Some(1)
            && sb["Endpoints"][0]["Network"] == "back",
        "{sb}"
    );
    ensure!(
        daemon
            .controller()
            .network("bridge")?
            .endpoints()
            .is_empty(),
        "endpoint deleted"
    );
    // disconnecting again is a conflict
    let (s, v) = api
        .json(
            "POST",
            "/cnm/v1/sandboxes/web1/disconnect",
            Some(json!({"Network": "bridge"})),
        )
        .await?;
    ensure!(
        s == 409
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("not connected")),
        "{s} {v}"
    );

    // delete leaves every network and deletes the endpoints
    api.expect("DELETE", "/cnm/v1/sandboxes/web1", None, 204)
        .await?;
    ensure!(!std::path::Path::new(key).exists(), "netns removed");
    ensure!(daemon.controller().network("back")?.endpoints().is_empty());
    api.expect("GET", "/cnm/v1/sandboxes/web1", None, 404)
        .await?;
    api.expect("DELETE", "/networks/back", None, 204).await?;
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn events_stream_in_docker_shape() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    // Subscribed once the response head is here.
    let resp = api
        .stream(
            "GET",
            "/v1.45/events?filters=%7B%22type%22%3A%5B%22network%22%5D%7D",
            Vec::new(),
        )
        .await?;
    ensure!(resp.status() == 200);
    let mut body = resp.into_body();
    let mut buf = Vec::new();

    let created = api
        .expect("POST", "/networks/create", Some(json!({"Name": "ev"})), 201)
        .await?;
    let net_id = created["Id"].as_str().context("Id")?.to_owned();
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({"Name": "e1"})),
            201,
        )
        .await?;
    let sb_id = sb["Id"].as_str().context("Id")?.to_owned();
    api.expect(
        "POST",
        "/networks/ev/connect",
        Some(json!({"Container": "e1"})),
        200,
    )
    .await?;
    api.expect(
        "POST",
        "/networks/ev/disconnect",
        Some(json!({"Container": "e1"})),
        200,
    )
    .await?;
    api.expect("DELETE", "/networks/ev", None, 204).await?;

    let mut actions = Vec::new();
    for _ in 0..4 {
        let ev = next_line(&mut body, &mut buf)
            .await?
            .context("stream ended early")?;
        ensure!(ev["Type"] == "network" && ev["scope"] == "local", "{ev}");
        ensure!(ev["Actor"]["ID"] == net_id.as_str(), "{ev}");
        ensure!(
            ev["Actor"]["Attributes"]["name"] == "ev"
                && ev["Actor"]["Attributes"]["type"] == "bridge",
            "{ev}"
        );
        ensure!(
            ev["time"].as_u64().is_some() && ev["timeNano"].as_u64().is_some(),
            "{ev}"
        );
        let action = ev["Action"].as_str().context("Action")?.to_owned();
        if action == "connect" || action == "disconnect" {
            ensure!(
                ev["Actor"]["Attributes"]["container"] == sb_id.as_str(),
                "{ev}"
            );
        }
        actions.push(action);
    }
    ensure!(
        actions == ["create", "connect", "disconnect", "destroy"],
        "{actions:?}"
    );

    // An unknown filter key is ignored, as dockerd does (`until` in the past: the replay of the
    // kept events, filtered, then the end); filters that are not JSON are a 400, not a stream.
    let (s, body_past) = api
        .raw(
            "GET",
            "/events?until=1&filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
            Vec::new(),
        )
        .await?;
    ensure!(s == 200 && body_past.is_empty(), "{s} {body_past:?}");
    let (s, _) = api.json("GET", "/events?filters=%7Bbogus", None).await?;
    ensure!(s == 400);
    // `since` replays the kept events.
    let (s, replay) = api
        .raw("GET", "/events?since=0&until=0s", Vec::new())
        .await
        .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))?;
    ensure!(s == 200 && replay.lines().count() >= 4, "{s} {replay}");
    daemon.stop().await?;
    ensure!(
        next_line(&mut body, &mut buf).await?.is_none(),
        "stream ends on shutdown"
    );
    Ok(())
}

async fn scrape(addr: std::net::SocketAddr) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .uri("/metrics")
        .header("host", "localhost")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
    let resp = tx.send_request(req).await?;
    ensure!(resp.status() == 200);
    let ct = resp
        .headers()
        .get("content-type")
        .context("content type")?
        .to_str()?
        .to_owned();
    ensure!(ct.starts_with("text/plain"), "{ct}");
    Ok(String::from_utf8(
        resp.into_body().collect().await?.to_bytes().to_vec(),
    )?)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn metrics_count_requests_objects_and_latency() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, true).await?;
    let addr = daemon.metrics_addr().context("metrics enabled")?;
    ensure!(addr.ip().is_loopback());
    let api = Client::new(daemon.socket());
    api.expect("GET", "/networks", None, 200).await?;
    api.expect("GET", "/v1.45/networks/nope", None, 404).await?;
    api.expect("POST", "/networks/create", Some(json!({"Name": "m1"})), 201)
        .await?;
    api.expect(
        "POST",
        "/cnm/v1/sandboxes",
        Some(json!({"Name": "s1"})),
        201,
    )
    .await?;
    api.expect(
        "POST",
        "/cnm/v1/sandboxes/s1/connect",
        Some(json!({"Network": "m1"})),
        200,
    )
    .await?;
    api.expect("GET", "/no/such/route", None, 404).await?;

    let text = scrape(addr).await?;
    for line in [
        "cnmd_http_requests_total{route=\"/networks\",method=\"GET\",status=\"200\"} 1",
        "cnmd_http_requests_total{route=\"/networks/{id}\",method=\"GET\",status=\"404\"} 1",
        "cnmd_http_requests_total{route=\"/networks/create\",method=\"POST\",status=\"201\"} 1",
        "cnmd_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "cnmd_networks 4", // bridge, host, none and m1
        "cnmd_endpoints 1",
        "cnmd_sandboxes 1",
        "cnmd_operation_duration_seconds_count{operation=\"network_create\"} 1",
        "cnmd_operation_duration_seconds_count{operation=\"connect\"} 1",
        "cnmd_operation_duration_seconds_bucket{operation=\"connect\",le=\"+Inf\"} 1",
    ] {
        ensure!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // The metrics listener serves nothing else, and the API socket has no /metrics.
    api.expect("GET", "/metrics", None, 404).await?;
    daemon.stop().await?;
    Ok(())
}

/// A small deterministic generator (xorshift): varied enough for made-up methods and paths.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn word(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
#[allow(clippy::print_stderr)]
async fn metrics_labels_stay_bounded_under_made_up_methods_and_paths() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, true).await?;
    let addr = daemon.metrics_addr().context("metrics enabled")?;
    let api = Client::new(daemon.socket());
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let upper = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let lower = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut sent = Vec::new();
    for i in 0..3000 {
        let method = noise.word(upper, 3 + (i % 8));
        let token = noise.word(lower, 12);
        let path = match i % 5 {
            0 => format!("/{token}"),
            1 => format!("/networks/{token}"),
            2 => format!("/v1.45/networks/{token}/connect"),
            3 => format!("/cnm/v1/sandboxes/{token}"),
            _ => format!("/{token}/{}", noise.word(lower, 8)),
        };
        let (status, _) = api.raw(&method, &path, Vec::new()).await?;
        ensure!((400..500).contains(&status), "{method} {path}: {status}");
        sent.push(token);
    }
    // Some real requests too, with standard methods and raw paths of every shape.
    for t in sent.iter().take(200) {
        api.raw("GET", &format!("/networks/{t}"), Vec::new())
            .await?;
        api.raw("DELETE", &format!("/cnm/v1/sandboxes/{t}"), Vec::new())
            .await?;
    }

    let text = scrape(addr).await?;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cnmd_http_requests_total{"))
        .collect();
    eprintln!(
        "{} request series after 3,400 requests:\n{}",
        series.len(),
        series.join("\n")
    );
    let known = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    for line in &series {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .context("labels")?
            .0;
        let method = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("method=\""))
            .and_then(|v| v.strip_suffix('"'))
            .context("method label")?;
        ensure!(known.contains(&method), "method label {method:?}: {line}");
        let route = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("route=\""))
            .context("route label")?;
        ensure!(
            route.starts_with("unmatched") || route.starts_with('/'),
            "{line}"
        );
        ensure!(
            !sent.iter().any(|t| line.contains(t.as_str())),
            "a raw path reached a label: {line}"
        );
    }
    // Routes (about 20) x methods x statuses actually seen: a handful, not thousands.
    ensure!(series.len() <= 30, "{} series:\n{text}", series.len());
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn second_daemon_on_the_same_state_dir_is_refused() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let lock_path = host.state_dir().join(cnm_daemon::LOCK_FILE);

    // In-process: refused before touching the socket or the kernel.
    let mut cfg = common::config(&host, false)?;
    cfg.socket = host.run_dir().join("other.sock");
    let err = Daemon::start(cfg)
        .await
        .expect_err("second daemon must be refused");
    ensure!(matches!(err, DaemonError::Locked { .. }), "{err}");
    let text = err.to_string();
    ensure!(text.contains(&lock_path.display().to_string()), "{text}");
    ensure!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    ensure!(!host.run_dir().join("other.sock").exists());

    // The built binary, in a private network namespace so nothing it might do reaches the
    // machine, exits non-zero naming the lock file and our pid.
    let out = tokio::task::spawn_blocking({
        let (state, run) = (host.state_dir().to_owned(), host.run_dir().to_owned());
        move || {
            std::process::Command::new("unshare")
                .args(["--net", "--"])
                .arg(env!("CARGO_BIN_EXE_cnmd"))
                .arg("--state-dir")
                .arg(&state)
                .arg("--run-dir")
                .arg(run.join("second"))
                .arg("--socket")
                .arg(run.join("second.sock"))
                .output()
        }
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "second cnmd must fail: {stderr}");
    ensure!(
        stderr.contains(&lock_path.display().to_string()),
        "{stderr}"
    );
    ensure!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );

    // The first one is unaffected.
    let (s, body) = Client::new(daemon.socket())
        .raw("GET", "/_ping", Vec::new())
        .await?;
    ensure!(s == 200 && body == b"OK");
    daemon.stop().await?;
    StateLock::acquire(host.state_dir()).context("lock released after stop")?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn graceful_shutdown_leaves_the_data_plane() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "keep", "Options": {"com.docker.network.bridge.name": "br-keep"}})),
        201,
    )
    .await?;
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({"Name": "k1"})),
            201,
        )
        .await?;
    api.expect(
        "POST",
        "/networks/keep/connect",
        Some(json!({"Container": "k1"})),
        200,
    )
    .await?;
    let key = sb["Key"].as_str().context("Key")?.to_owned();
    let events = api.stream("GET", "/events", Vec::new()).await?;
    let socket = daemon.socket().to_owned();

    daemon.stop().await?;
    // The open event stream did not hold shutdown up, and it has ended.
    let mut body = events.into_body();
    ensure!(next_line(&mut body, &mut Vec::new()).await?.is_none());
    ensure!(!socket.exists(), "socket removed");
    ensure!(
        tokio::net::UnixStream::connect(&socket).await.is_err(),
        "nobody listens any more"
    );
    // The data plane stays: both bridges in the host, the sandbox's netns with its eth0.
    let links: BTreeSet<String> = host
        .netlink()
        .links()
        .await?
        .into_iter()
        .map(|l| l.name)
        .collect();
    ensure!(
        links.contains("cnm0") && links.contains("br-keep"),
        "{links:?}"
    );
    let ns = cnm::cnm_sandbox::NetNs::open(&key)?;
    let nl = cnm::cnm_sandbox::Netlink::connect(&ns).await?;
    ensure!(
        nl.link("eth0").await?.is_some(),
        "eth0 still in the sandbox"
    );
    Ok(())
}

async fn message(
    api: &Client,
    method: &str,
    path: &str,
    body: Vec<u8>,
    want: u16,
) -> Result<String> {
    let (s, bytes) = api.raw(method, path, body).await?;
    let v: Value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{method} {path}: not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let m = v["message"]
        .as_str()
        .with_context(|| format!("no message: {v}"))?
        .to_owned();
    ensure!(s == want, "{method} {path}: expected {want}, got {s}: {m}");
    Ok(m)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn bad_input_is_a_4xx_with_a_message_and_harmless() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let j = |v: Value| serde_json::to_vec(&v).expect("json");

    // malformed JSON, wrong types, empty body
    message(
        &api,
        "POST",
        "/networks/create",
        b"{\"Name\":".to_vec(),
        400,
    )
    .await?;
    let m = message(&api, "POST", "/networks/create", j(json!({"Name": 5})), 400).await?;
    ensure!(m.contains("Name"), "{m}");
    let m = message(
        &api,
        "POST",
        "/networks/create",
        j(json!({"Name": "x", "Labels": {"a": 1}})),
        400,
    )
    .await?;
    ensure!(m.contains("Labels.a"), "{m}");
    message(&api, "POST", "/cnm/v1/sandboxes", Vec::new(), 400).await?;
    message(&api, "POST", "/networks/create", j(json!([1, 2])), 400).await?;
    // unknown fields: ignored on Docker paths, refused on cnm's naming the field
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "u1", "Frobnicate": true})),
        201,
    )
    .await?;
    let m = message(
        &api,
        "POST",
        "/cnm/v1/sandboxes",
        j(json!({"Name": "x", "Bogus": 1})),
        400,
    )
    .await?;
    ensure!(m.contains("Bogus"), "{m}");
    // too big
    let big = j(json!({"Name": "big", "Labels": {"x": "y".repeat(2 << 20)}}));
    let m = message(&api, "POST", "/networks/create", big, 413).await?;
    ensure!(m.contains("1048576"), "{m}");
    // bad names
    for bad in ["", "a/b", "..", "-x", "a b"] {
        let m = message(
            &api,
            "POST",
            "/networks/create",
            j(json!({"Name": bad})),
            400,
        )
        .await?;
        ensure!(m.contains(&format!("{bad:?}")), "{m}");
        message(
            &api,
            "POST",
            "/cnm/v1/sandboxes",
            j(json!({"Name": bad})),
            400,
        )
        .await?;
    }
    // bad option values name the field
    let m = message(
        &api,
        "POST",
        "/networks/create",
        j(json!({"Name": "s", "IPAM": {"Config": [{"Subnet": "10.1.0.0/33"}]}})),
        400,
    )
    .await?;
    ensure!(m.contains("10.1.0.0/33"), "{m}");
    message(
        &api,
        "POST",
        "/networks/create",
        j(json!({"Name": "d", "Driver": "nosuch"})),
        404,
    )
    .await?;
    // not found
    let m = message(&api, "GET", "/networks/nope", Vec::new(), 404).await?;
    ensure!(m == "network nope not found", "{m}");
    let m = message(&api, "GET", "/cnm/v1/sandboxes/nope", Vec::new(), 404).await?;
    ensure!(m == "sandbox nope not found", "{m}");
    let m = message(
        &api,
        "POST",
        "/networks/u1/connect",
        j(json!({"Container": "ghost"})),
        404,
    )
    .await?;
    ensure!(m == "No such container: ghost", "{m}");
    message(&api, "DELETE", "/networks/nope", Vec::new(), 404).await?;
    message(&api, "GET", "/no/such/thing", Vec::new(), 404).await?;
    // An unrouted method is 404, as dockerd's router answers it.
    message(&api, "PUT", "/networks", Vec::new(), 404).await?;
    // duplicates and conflicts
    let m = message(
        &api,
        "POST",
        "/networks/create",
        j(json!({"Name": "u1"})),
        409,
    )
    .await?;
    ensure!(m.contains("already exists"), "{m}");
    api.expect(
        "POST",
        "/cnm/v1/sandboxes",
        Some(json!({"Name": "dup"})),
        201,
    )
    .await?;
    message(
        &api,
        "POST",
        "/cnm/v1/sandboxes",
        j(json!({"Name": "dup"})),
        409,
    )
    .await?;
    api.expect(
        "POST",
        "/networks/u1/connect",
        Some(json!({"Container": "dup"})),
        200,
    )
    .await?;
    // Connected already: libnetwork's 403.
    let m = message(
        &api,
        "POST",
        "/networks/u1/connect",
        j(json!({"Container": "dup"})),
        403,
    )
    .await?;
    ensure!(m.contains("already exists in network u1"), "{m}");
    let m = message(&api, "POST", "/networks/u1/connect",
        j(json!({"Container": "dup", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "nonsense"}}})), 400).await?;
    ensure!(m.contains("nonsense"), "{m}");
    // predefined networks
    for p in ["bridge", "host", "none"] {
        let m = message(&api, "DELETE", &format!("/networks/{p}"), Vec::new(), 403).await?;
        ensure!(m.contains("pre-defined"), "{m}");
    }
    message(
        &api,
        "POST",
        "/networks/create",
        j(json!({"Name": "host"})),
        403,
    )
    .await?;
    // bad filters and versions
    message(
        &api,
        "GET",
        "/networks?filters=%7Bnot-json",
        Vec::new(),
        400,
    )
    .await?;
    message(
        &api,
        "GET",
        "/networks?filters=%7B%22color%22%3A%5B%22red%22%5D%7D",
        Vec::new(),
        400,
    )
    .await?;
    // Versions outside 1.12..=1.48, in dockerd's words; before 1.24 errors are plain text.
    let m = message(&api, "GET", "/v1.99/networks", Vec::new(), 400).await?;
    ensure!(
        m == "client version 1.99 is too new. Maximum supported API version is 1.48",
        "{m}"
    );
    let (s, text) = api.raw("GET", "/v1.11/networks", Vec::new()).await?;
    ensure!(
        s == 400
            && text
                == b"client version 1.11 is too old. Minimum supported API version is 1.12, \
                     please upgrade your client to a newer version\n",
        "{s} {}",
        String::from_utf8_lossy(&text)
    );
    api.expect("GET", "/v1.24/networks", None, 200).await?;
    // an id prefix matching several networks
    let mut ids: Vec<String> = daemon
        .controller()
        .networks()
        .iter()
        .map(|n| n.id().to_owned())
        .collect();
    let mut n = 0;
    let prefix = loop {
        let mut firsts = BTreeSet::new();
        if let Some(dup) = ids.iter().find(|id| !firsts.insert(&id[..1])) {
            break dup[..1].to_owned();
        }
        // 17 ids cannot all differ in their first hex digit.
        ensure!(n < 17, "pigeonhole");
        let v = api
            .expect(
                "POST",
                "/networks/create",
                Some(json!({"Name": format!("amb{n}")})),
                201,
            )
            .await?;
        ids.push(v["Id"].as_str().context("Id")?.to_owned());
        n += 1;
    };
    let m = message(&api, "GET", &format!("/networks/{prefix}"), Vec::new(), 400).await?;
    ensure!(m.contains("ambiguous"), "{m}");

    // The daemon is unaffected.
    let (s, body) = api.raw("HEAD", "/_ping", Vec::new()).await?;
    ensure!(s == 200 && body.is_empty());
    let nets = api.expect("GET", "/v1.41/networks", None, 200).await?;
    ensure!(nets.as_array().is_some_and(|a| a.len() >= 3), "{nets}");
    daemon.stop().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn redb_store_keeps_records_in_the_state_dir() -> Result<()> {
    let host = TestHost::new().await?;
    let mut cfg = common::config(&host, false)?;
    cfg.store = cnm_daemon::StoreKind::Redb;
    let daemon = Daemon::start(cfg).await?;
    let api = Client::new(daemon.socket());
    let info = api.expect("GET", "/cnm/v1/info", None, 200).await?;
    ensure!(info["Store"] == "redb", "{info}");
    api.expect(
        "POST",
        "/networks/create",
        Some(json!({"Name": "durable"})),
        201,
    )
    .await?;
    let keys = daemon.controller().store()?.list("").await?;
    ensure!(
        keys.len() >= 3,
        "records of bridge, none, durable: {}",
        keys.len()
    );
    daemon.stop().await?;
    ensure!(
        host.state_dir().join(cnm_store::DB_FILE).exists(),
        "database file in the state dir"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn restart_reloads_networks_and_keeps_predefined_ones_once() -> Result<()> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let created = api
        .expect(
            "POST",
            "/networks/create",
            Some(json!({"Name": "kept", "IPAM": {"Config": [{"Subnet": "10.91.0.0/24"}]}})),
            201,
        )
        .await?;
    let kept_id = created["Id"].as_str().context("Id")?.to_owned();
    let before = api.expect("GET", "/networks", None, 200).await?;
    daemon.stop().await?;

    // The store is durable by default: the second start reloads what the first made, and does
    // not make the predefined networks again.
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let after = api.expect("GET", "/networks", None, 200).await?;
    let summary = |v: &Value| -> BTreeSet<(String, String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["Name"].as_str().unwrap_or_default().to_owned(),
                    n["Id"].as_str().unwrap_or_default().to_owned(),
                    n["Created"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    ensure!(summary(&before) == summary(&after), "{before} vs {after}");
    let names: Vec<String> = summary(&after).into_iter().map(|(n, _, _)| n).collect();
    ensure!(names == ["bridge", "host", "kept", "none"], "{names:?}");
    let kept = api
        .expect("GET", &format!("/networks/{kept_id}"), None, 200)
        .await?;
    ensure!(
        kept["IPAM"]["Config"][0]["Subnet"] == "10.91.0.0/24",
        "{kept}"
    );
    daemon.stop().await?;
    Ok(())
}

/// Options no driver knows are kept and shown, as dockerd keeps them, with a `Warning` in the
/// create response instead of a 400 (compose's `driver_opts`, terraform's `options`); IPAM
/// options are kept as given; values of known keys are still checked strictly.
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn unknown_options_are_kept_with_a_warning_and_known_ones_checked() -> Result<()> {
    let j = |v: Value| serde_json::to_vec(&v).expect("json");
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    let created = api
        .expect(
            "POST",
            "/v1.41/networks/create",
            Some(json!({"Name": "u", "Options": {"foo": "bar",
                "com.docker.network.bridge.default_bridge": "false",
                "com.docker.network.driver.mtu": "1400"},
                "IPAM": {"Options": {"x": "y"}, "Config": [{"Subnet": "10.44.0.0/24"}]}})),
            201,
        )
        .await?;
    let warning = created["Warning"].as_str().context("Warning")?;
    ensure!(
        warning.contains("\"foo\"")
            && warning.contains("IPAM option \"x\"")
            && !warning.contains("mtu")
            && !warning.contains("default_bridge"),
        "{warning}"
    );
    let net = api.expect("GET", "/v1.41/networks/u", None, 200).await?;
    ensure!(
        net["Options"]["foo"] == "bar"
            && net["Options"]["com.docker.network.driver.mtu"] == "1400"
            && net["IPAM"]["Options"] == json!({"x": "y"}),
        "{net}"
    );
    // A network made with known options only has no warning, and no IPAM options is null.
    let plain = api
        .expect(
            "POST",
            "/v1.41/networks/create",
            Some(
                json!({"Name": "p", "Options": {"com.docker.network.bridge.enable_icc": "false"}}),
            ),
            201,
        )
        .await?;
    ensure!(plain["Warning"] == "", "{plain}");
    let p = api.expect("GET", "/v1.41/networks/p", None, 200).await?;
    ensure!(p["IPAM"]["Options"].is_null(), "{p}");
    // A gateway mode per family on a dual-stack network (IPv4 nat beside IPv6 routed) is
    // accepted and shown as given.
    const MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
    const MODE_V6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
    let mixed = api
        .expect(
            "POST",
            "/v1.41/networks/create",
            Some(json!({"Name": "mixed", "EnableIPv6": true,
                "Options": {MODE_V4: "nat", MODE_V6: "routed"},
                "IPAM": {"Config": [{"Subnet": "10.45.0.0/24"}, {"Subnet": "fd00:45::/64"}]}})),
            201,
        )
        .await?;
    ensure!(mixed["Warning"] == "", "{mixed}");
    let m = api
        .expect("GET", "/v1.41/networks/mixed", None, 200)
        .await?;
    ensure!(
        m["Options"][MODE_V4] == "nat" && m["Options"][MODE_V6] == "routed",
        "{m}"
    );
    // Known keys are still checked, naming the key and value, and nothing is made.
    for (key, value) in [
        ("com.docker.network.bridge.enable_icc", "maybe"),
        ("com.docker.network.bridge.default_bridge", "true"),
        ("com.docker.network.bridge.inhibit_ipv4", "sometimes"),
        ("com.docker.network.driver.mtu", "abc"),
        ("com.cnm.network.typo", "1"),
        ("com.docker.network.bridge.gateway_mode_ipv4", "NAT"),
        (
            "com.docker.network.bridge.gateway_mode_ipv6",
            "nat_unprotected",
        ),
    ] {
        let m = message(
            &api,
            "POST",
            "/v1.41/networks/create",
            j(json!({"Name": "bad", "Options": {key: value}})),
            400,
        )
        .await?;
        ensure!(m.contains(key) && m.contains(value), "{key}={value}: {m}");
    }
    let (s, _) = api.raw("GET", "/v1.41/networks/bad", Vec::new()).await?;
    ensure!(s == 404, "a refused create made nothing: {s}");
    daemon.stop().await?;
    Ok(())
}
