//! The Docker SDK for Python (PyPI's `docker`, as Debian packages it: python3-docker, installed
//! by `cargo xtask test`) drives cnmd the way docker compose and the tools built on the SDK do: `python/compose_like.py` creates a project network with options,
//! IPAM and labels, lists by label and name, connects with an address and aliases,
//! disconnects, removes, prunes, and reads `info()`, `version()` and events. What it leaves
//! behind is then checked in cnm's own model, so the answers it saw were not just echoes.

mod common;

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use cnm_testkit::TestHost;
use common::Client;
use serde_json::json;

// What the SDK printed goes to the test's output (shown on failure or with --nocapture).
#[allow(clippy::print_stderr)]
#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn docker_sdk_for_python_drives_cnmd_like_compose() -> Result<()> {
    // Debian's interpreter by path, where python3-docker puts the SDK; missing is a failure.
    let python = "/usr/bin/python3".to_owned();
    let probe = std::process::Command::new(&python)
        .args(["-c", "import docker; print(docker.__version__)"])
        .output()
        .with_context(|| format!("run {python}"))?;
    ensure!(
        probe.status.success(),
        "the Docker SDK for Python is missing (Debian's python3-docker; `cargo xtask test` \
         installs it): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    eprintln!(
        "Docker SDK for Python {}",
        String::from_utf8_lossy(&probe.stdout).trim()
    );
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let api = Client::new(daemon.socket());
    for name in ["c1", "c2"] {
        api.expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({ "Name": name })),
            201,
        )
        .await?;
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/compose_like.py");
    let socket = daemon.socket().to_owned();
    let py = python.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .arg(script)
            .env("DOCKER_HOST", format!("unix://{}", socket.display()))
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS_VERIFY")
            .stdin(Stdio::null())
            .output()
    })
    .await?
    .with_context(|| format!("run {python} {script}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.contains("all checks passed"),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");

    // What the SDK left: proj_keep with c1 at 10.51.0.20, alias `api`, in cnm's own model.
    let ctl = daemon.controller();
    let net = ctl.network("proj_keep")?;
    ensure!(
        net.options().labels.get("com.docker.compose.project") == Some(&"proj".to_owned()),
        "labels reached the controller: {:?}",
        net.options().labels
    );
    let eps = net.endpoints();
    ensure!(eps.len() == 1, "one endpoint on proj_keep: {}", eps.len());
    let ep = &eps[0];
    ensure!(
        ep.ipv4().map(|a| a.to_string()) == Some("10.51.0.20/24".to_owned()),
        "address: {:?}",
        ep.ipv4()
    );
    ensure!(
        ep.options().aliases == ["api"],
        "aliases: {:?}",
        ep.options().aliases
    );
    let sb = ctl.sandbox("c1")?;
    ensure!(
        ep.sandbox_id().as_deref() == Some(sb.id()),
        "the endpoint is joined to sandbox c1"
    );
    for gone in ["proj_default", "proj_tmp", "other_tmp"] {
        ensure!(ctl.network(gone).is_err(), "{gone} was removed or pruned");
    }
    daemon.stop().await?;
    Ok(())
}
