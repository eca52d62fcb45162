//! The differential test: the same scripted sequence of docker CLI commands and raw API calls
//! run against a real dockerd (Debian's docker.io 20.10, in throwaway namespaces) and against
//! cnmd, with each docker CLI the machine has (Debian's 20.10 at `/usr/bin/docker`, and the
//! current one at `/usr/local/bin/docker` when present); outcomes are normalised (ids, times,
//! MACs) and compared field by field. Every difference must be in `allowlist.txt` with its
//! reason; a difference it does not name fails the test, and so does an entry that no longer
//! matches anything (so the list stays true).
//!
//! Per client: one fresh dockerd and one fresh cnmd, the whole sequence, each step run on both
//! daemons at once. Containers on dockerd are busybox containers (an image imported from a
//! tarball of busybox-static: no registry is reachable); on cnmd they are cnm sandboxes of the
//! same name, made through `/cnm/v1`. Both start on the default bridge.
//!
//! A report of every difference, allowed or not, is written to
//! `target/tmp/differential-report-<client>.txt`.

#[path = "../common/mod.rs"]
mod common;

mod allow;
mod compare;
mod dockerd;
mod http;
mod normalise;
mod script;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use cnm_testkit::TestHost;
use regex::{Captures, Regex};

use crate::compare::{Diff, Outcome};
use crate::normalise::Registry;
use crate::script::{Action, Step};

/// How long one step may take before it counts as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// One docker CLI binary.
#[derive(Debug, Clone)]
struct Client {
    /// `20.10`, `28`: what allow-list entries name with `@…`.
    name: String,
    path: PathBuf,
}

fn clients() -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for (path, required) in [("/usr/bin/docker", true), ("/usr/local/bin/docker", false)] {
        let path = PathBuf::from(path);
        if !path.exists() {
            ensure!(
                !required,
                "{} is missing (xtask installs docker.io)",
                path.display()
            );
            continue;
        }
        let o = Command::new(&path)
            .args(["version", "--format", "{{.Client.Version}}"])
            .env("DOCKER_HOST", "unix:///nonexistent")
            .output()?;
        let version = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mut parts = version.split(['.', '+', '-']);
        let major = parts.next().unwrap_or_default();
        let name = if major == "20" {
            format!("20.{}", parts.next().unwrap_or_default())
        } else {
            major.to_owned()
        };
        ensure!(
            !name.is_empty(),
            "cannot tell the version of {}",
            path.display()
        );
        out.push(Client { name, path });
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Dockerd,
    Cnmd,
}

/// One daemon as the sequence sees it.
struct Target {
    kind: Kind,
    socket: PathBuf,
    config: tempfile::TempDir,
    reg: Registry,
    marks: HashMap<String, String>,
}

static VAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\$\{(\w+)(?::([\w.-]+))?\}").unwrap());

impl Target {
    fn new(kind: Kind, socket: PathBuf) -> Result<Target> {
        let config = tempfile::tempdir()?;
        let reg = Registry {
            paths: vec![
                socket.display().to_string(),
                config.path().display().to_string(),
            ],
            ..Default::default()
        };
        Ok(Target {
            kind,
            socket,
            config,
            reg,
            marks: HashMap::new(),
        })
    }

    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Dockerd => "dockerd",
            Kind::Cnmd => "cnmd",
        }
    }

    /// The networks now: (id, name).
    fn networks(&self) -> Result<Vec<(String, String)>> {
        let r = http::request(&self.socket, "GET", "/networks", None)?;
        ensure!(
            r.status == 200,
            "{}: list networks: {}",
            self.label(),
            r.status
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                (
                    n["Id"].as_str().unwrap_or_default().to_owned(),
                    n["Name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    fn refresh(&mut self) -> Result<()> {
        for (id, name) in self.networks()? {
            self.reg.networks.insert(id, name);
        }
        Ok(())
    }

    fn substitute(&self, s: &str) -> Result<String> {
        if !s.contains("${") {
            return Ok(s.to_owned());
        }
        let nets = self.networks()?;
        let mut err = None;
        let out = VAR.replace_all(s, |c: &Captures<'_>| {
            let arg = c.get(2).map_or("", |m| m.as_str());
            let v = match &c[1] {
                "id" => self.reg.network_id(arg, &nets),
                "id12" => self.reg.network_id(arg, &nets).map(|i| i[..12].to_owned()),
                "ctr" => self
                    .reg
                    .containers
                    .iter()
                    .find(|(_, n)| *n == arg)
                    .map(|(i, _)| i.clone()),
                "mark" => self.marks.get(arg).cloned(),
                "ambiguous" => ambiguous_prefix(&nets),
                _ => None,
            };
            v.unwrap_or_else(|| {
                err = Some(format!("{}: cannot substitute {}", self.label(), &c[0]));
                String::new()
            })
        });
        match err {
            Some(e) => bail!(e),
            None => Ok(out.into_owned()),
        }
    }

    /// A container named `name`: a busybox container on dockerd, a sandbox on cnmd; both on
    /// the default bridge.
    fn container(&mut self, setup_client: &Path, name: &str) -> Result<()> {
        let id = match self.kind {
            Kind::Dockerd => {
                let o = self.cli(
                    setup_client,
                    &[
                        "run",
                        "-d",
                        "--name",
                        name,
                        dockerd::IMAGE,
                        "sleep",
                        "86400",
                    ]
                    .map(String::from),
                )?;
                ensure!(o.code == 0, "docker run {name}: {}", o.stderr);
                o.stdout.trim().to_owned()
            }
            Kind::Cnmd => {
                let body = serde_json::json!({ "Name": name }).to_string();
                let r = http::request(
                    &self.socket,
                    "POST",
                    "/cnm/v1/sandboxes",
                    Some(body.as_bytes()),
                )?;
                ensure!(r.status == 201, "create sandbox {name}: {}", r.status);
                let v: serde_json::Value = serde_json::from_slice(&r.body)?;
                let id = v["Id"].as_str().context("sandbox id")?.to_owned();
                let r = http::request(
                    &self.socket,
                    "POST",
                    &format!("/cnm/v1/sandboxes/{name}/connect"),
                    Some(br#"{"Network":"bridge"}"#),
                )?;
                ensure!(
                    r.status == 200,
                    "connect sandbox {name} to bridge: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                id
            }
        };
        self.reg.containers.insert(id, name.to_owned());
        Ok(())
    }

    /// Runs the docker CLI against this daemon (raw outcome, not normalised).
    fn cli(&self, client: &Path, args: &[String]) -> Result<Outcome> {
        let child = Command::new(client)
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.config.path())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", client.display()))?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(STEP_TIMEOUT) {
            Ok(out) => out?,
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                bail!(
                    "{}: docker {args:?} hung for {STEP_TIMEOUT:?}",
                    self.label()
                );
            }
        };
        Ok(Outcome {
            code: i64::from(out.status.code().unwrap_or(-1)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ..Default::default()
        })
    }

    /// Runs one step; compared steps give their normalised outcome.
    fn run(
        &mut self,
        client: &Client,
        setup_client: &Path,
        step: &Step,
    ) -> Result<Option<Outcome>> {
        let raw = match &step.action {
            Action::Container(name) => {
                self.container(setup_client, name)?;
                return Ok(None);
            }
            Action::Remove(names) => {
                for n in names {
                    let path = format!("/networks/{}", encode_uri(n));
                    http::request(&self.socket, "DELETE", &path, None)?;
                }
                self.refresh()?;
                return Ok(None);
            }
            Action::Disconnect { network, container } => {
                let body = serde_json::json!({ "Container": container, "Force": true }).to_string();
                let path = format!("/networks/{}/disconnect", encode_uri(network));
                http::request(&self.socket, "POST", &path, Some(body.as_bytes()))?;
                return Ok(None);
            }
            Action::Mark(name) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
                self.marks.insert(
                    name.clone(),
                    format!("{}.{:09}", now.as_secs(), now.subsec_nanos()),
                );
                return Ok(None);
            }
            Action::Docker(args) => {
                let args = args
                    .iter()
                    .map(|a| self.substitute(a))
                    .collect::<Result<Vec<_>>>()?;
                self.cli(&client.path, &args)?
            }
            Action::Api { method, path, body } => {
                let path = encode_uri(&self.substitute(path)?);
                let body = body.as_deref().map(|b| self.substitute(b)).transpose()?;
                let r = http::request(
                    &self.socket,
                    method,
                    &path,
                    body.as_deref().map(str::as_bytes),
                )?;
                Outcome {
                    code: i64::from(r.status),
                    stdout: String::from_utf8_lossy(&r.body).into_owned(),
                    content_type: r.header("content-type").map(|c| {
                        // `application/json; charset=utf-8` and `application/json` read alike.
                        c.split(';').next().unwrap_or_default().trim().to_owned()
                    }),
                    trailing_newline: (!r.body.is_empty()).then(|| r.body.ends_with(b"\n")),
                    ..Default::default()
                }
            }
        };
        self.refresh()?;
        Ok(Some(Outcome {
            stdout: self.reg.normalise(&raw.stdout),
            stderr: self.reg.normalise(&raw.stderr),
            ..raw
        }))
    }
}

/// Percent-encodes what may not appear in a request target as written (`"`, `{`, space, …),
/// so the script can show filters as JSON.
fn encode_uri(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One hex character that starts at least two network ids (there is one once 17 networks
/// exist, by the pigeonhole principle).
fn ambiguous_prefix(nets: &[(String, String)]) -> Option<String> {
    let mut count: HashMap<char, usize> = HashMap::new();
    for (id, _) in nets {
        if let Some(c) = id.chars().next() {
            *count.entry(c).or_default() += 1;
        }
    }
    let mut shared: Vec<char> = count
        .into_iter()
        .filter(|(_, n)| *n >= 2)
        .map(|(c, _)| c)
        .collect();
    shared.sort_unstable();
    shared.first().map(char::to_string)
}

/// What one step gave on both daemons.
struct StepResult {
    step: usize,
    dockerd: Outcome,
    cnmd: Outcome,
    diffs: Vec<Diff>,
}

/// Runs the whole script with one client against a fresh dockerd and a fresh cnmd.
async fn run_client(
    client: &Client,
    setup_client: &Client,
    steps: &[Step],
) -> Result<Vec<StepResult>> {
    let host = TestHost::new().await?;
    let daemon = common::start(&host, false).await?;
    let cnmd_socket = daemon.socket().to_owned();
    let (client, setup, steps) = (client.clone(), setup_client.path.clone(), steps.to_vec());
    let results = tokio::task::spawn_blocking(move || -> Result<Vec<StepResult>> {
        let dockerd = dockerd::start()?;
        let run = || -> Result<Vec<StepResult>> {
            let mut d = Target::new(Kind::Dockerd, dockerd.socket())?;
            let mut c = Target::new(Kind::Cnmd, cnmd_socket)?;
            d.refresh()?;
            c.refresh()?;
            let mut results = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                let (a, b) = std::thread::scope(|s| {
                    let a = s.spawn(|| d.run(&client, &setup, step));
                    let b = s.spawn(|| c.run(&client, &setup, step));
                    (a.join(), b.join())
                });
                let ctx = || format!("script.txt line {}: {}", step.line, step.text);
                let a = a
                    .map_err(|_| anyhow::anyhow!("dockerd side panicked"))?
                    .with_context(ctx)?;
                let b = b
                    .map_err(|_| anyhow::anyhow!("cnmd side panicked"))?
                    .with_context(ctx)?;
                if let (Some(a), Some(b)) = (a, b) {
                    let diffs = compare::compare(&a, &b, step.sort);
                    results.push(StepResult {
                        step: i,
                        dockerd: a,
                        cnmd: b,
                        diffs,
                    });
                }
            }
            Ok(results)
        };
        let results = run();
        let log = dockerd.log();
        let stopped = dockerd.stop();
        let results = results.with_context(|| format!("dockerd's log:\n{log}"))?;
        stopped?;
        Ok(results)
    })
    .await??;
    daemon.stop().await?;
    Ok(results)
}

/// How many things one comparison looked at (exit code, stderr, each JSON leaf or the text).
fn leaves(o: &Outcome) -> usize {
    fn count(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Object(m) => m.values().map(count).sum::<usize>().max(1),
            serde_json::Value::Array(a) => a.iter().map(count).sum::<usize>().max(1),
            _ => 1,
        }
    }
    let body = serde_json::from_str::<serde_json::Value>(o.stdout.trim())
        .map(|v| count(&v))
        .unwrap_or(1);
    2 + body
}

// The summary goes to the test's output (shown on failure or with --nocapture).
#[allow(clippy::print_stderr)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn docker_clients_see_cnmd_as_they_see_dockerd() -> Result<()> {
    let steps = script::parse(include_str!("script.txt"))?;
    let entries = allow::parse(include_str!("allowlist.txt"))?;
    let clients = clients()?;
    let setup = clients[0].clone();
    let compared = steps.iter().filter(|s| s.compared()).count();
    let mut used = vec![false; entries.len()];
    let mut unexplained = String::new();
    let mut summary = String::new();
    let mut total_leaves = 0;
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for client in &clients {
        let results = run_client(client, &setup, &steps).await?;
        let mut report = String::new();
        let mut allowed = 0;
        let mut new = 0;
        for r in &results {
            let step = &steps[r.step];
            total_leaves += leaves(&r.dockerd).max(leaves(&r.cnmd));
            if r.diffs.is_empty() {
                continue;
            }
            writeln!(report, "## line {}: {}", step.line, step.text)?;
            for d in &r.diffs {
                let hit = entries
                    .iter()
                    .position(|e| e.matches(&client.name, &step.text, &d.key));
                let verdict = match hit {
                    Some(i) => {
                        used[i] = true;
                        allowed += 1;
                        format!("allowed by allowlist.txt line {}", entries[i].line)
                    }
                    None => {
                        new += 1;
                        writeln!(
                            unexplained,
                            "[client {}] script.txt line {}: {}\n  {}\n    dockerd: {}\n    cnmd:    {}\n  suggested entry:\n{}\n  {} <category>: <reason>\n",
                            client.name,
                            step.line,
                            step.text,
                            d.key,
                            d.dockerd.replace('\n', "\n             "),
                            d.cnmd.replace('\n', "\n             "),
                            step.text,
                            d.key
                        )?;
                        "NEW".to_owned()
                    }
                };
                writeln!(
                    report,
                    "  {} ({verdict})\n    dockerd: {}\n    cnmd:    {}",
                    d.key,
                    d.dockerd.replace('\n', "\n             "),
                    d.cnmd.replace('\n', "\n             ")
                )?;
            }
        }
        let path = out_dir.join(format!("differential-report-{}.txt", client.name));
        dockerd::write_file(&path, &report)?;
        writeln!(
            summary,
            "client {} ({}): {} commands compared, {} differences allowed, {} new; report {}",
            client.name,
            client.path.display(),
            results.len(),
            allowed,
            new,
            path.display()
        )?;
    }
    let ran: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
    let mut stale = String::new();
    for (e, used) in entries.iter().zip(&used) {
        let applies = e.client.as_deref().is_none_or(|c| ran.contains(&c));
        if applies && !used {
            writeln!(
                stale,
                "allowlist.txt line {}: `{}` / {} no longer differs ({}); remove the entry",
                e.line, e.command, e.key, e.reason
            )?;
        }
    }
    let mut by_category: HashMap<&str, usize> = HashMap::new();
    for e in &entries {
        *by_category.entry(e.category()).or_default() += 1;
    }
    let mut cats: Vec<_> = by_category.into_iter().collect();
    cats.sort();
    writeln!(
        summary,
        "{} steps in script.txt ({compared} compared), {} compared leaves in all; allow-list: {} entries {:?}",
        steps.len(),
        total_leaves,
        entries.len(),
        cats
    )?;
    eprintln!("{summary}");
    if !unexplained.is_empty() || !stale.is_empty() {
        bail!(
            "{summary}\nDIFFERENCES NOT IN allowlist.txt:\n{unexplained}\nSTALE ENTRIES:\n{stale}"
        );
    }
    Ok(())
}
