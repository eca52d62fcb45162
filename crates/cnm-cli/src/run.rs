//! `cnm run`: a sandbox for one command, and the hidden re-exec helpers it is built on.
//!
//! The command cannot be started from this (multi-threaded, tokio) process straight into the
//! sandbox: `unshare(CLONE_NEWNS)` refuses in a threaded process and `setns` would only move one
//! thread. So `cnm run` spawns `cnm __exec`, a fresh single-threaded copy of itself, which enters
//! the sandbox and then `exec`s the command; no `pre_exec` hook and no unsafe code is needed.

use std::hash::{BuildHasher as _, Hasher as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{ExitCode, ExitStatus, Stdio};

use anyhow::Context as _;
use cnm_api::v1::{Sandbox, SandboxConnectRequest};
use cnm_sandbox::exec::{BindMount, SandboxEntry};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::de::IgnoredAny;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{ExecArgs, RunArgs};
use crate::client::{Client, UsageError, encode};
use crate::hint::Target;
use crate::network::connect_body;
use crate::output::{Outcome, report};
use crate::sandbox;

/// The exit code of `cnm __exec` when it could not enter the sandbox (docker's "daemon error").
const EXIT_ENTER_FAILED: u8 = 125;
/// The exit code when the command exists but cannot be executed.
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The exit code when the command does not exist.
const EXIT_NOT_FOUND: u8 = 127;

/// `cnm run`.
pub async fn run(client: &Client, a: RunArgs) -> anyhow::Result<Outcome> {
    // Everything that can be checked without the daemon is checked before anything exists.
    let networks = if a.networks.is_empty() {
        vec!["bridge".to_owned()]
    } else {
        a.networks.clone()
    };
    // `--network host`: the command runs on the host's own stack (the sandbox is the host's
    // namespace), which joins no other network.
    let host = networks.iter().any(|n| n == "host");
    if host && networks.len() > 1 {
        return Err(UsageError(
            "--network host cannot be combined with other networks: the command runs on the host's own network stack"
                .to_owned(),
        )
        .into());
    }
    let bodies = networks
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let first = i == 0;
            connect_body(
                n,
                a.ip.as_deref().filter(|_| first),
                a.ip6.as_deref().filter(|_| first),
                &a.dns_aliases,
                if first { &a.publish } else { &[] },
            )
        })
        .collect::<Result<Vec<_>, UsageError>>()?;
    let name = a.name.clone().unwrap_or_else(generated_name);
    // The command's hostname (UTS namespace) and its /etc/hosts entry must agree, so the
    // default is chosen here and given to the daemon rather than guessed from its answer.
    let mut config = a.config.clone();
    if config.hostname.is_none() && is_hostname(&name) && !host {
        config.hostname = Some(name.clone());
    }

    let created = sandbox::create_on(client, &name, &config, host).await?;
    let result = connect_and_exec(client, &name, &created, &bodies, &networks, &a).await;
    if a.keep {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("kept sandbox {name} (remove it with `cnm sandbox rm {name}`)");
        }
        return result;
    }
    match (result, sandbox::remove(client, &name).await) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Err(e), Ok(())) => Err(e),
        (Ok(outcome), Err(cleanup)) => {
            report(&cleanup.context(format!("failed to remove sandbox {name}")));
            Ok(match outcome {
                Outcome::Code(c) if c != 0 => outcome,
                _ => Outcome::Failed,
            })
        }
        (Err(e), Err(cleanup)) => Err(e.context(format!(
            "and failed to remove sandbox {name} afterwards: {cleanup:#}"
        ))),
    }
}

async fn connect_and_exec(
    client: &Client,
    name: &str,
    created: &Sandbox,
    bodies: &[SandboxConnectRequest],
    networks: &[String],
    a: &RunArgs,
) -> anyhow::Result<Outcome> {
    for (body, network) in bodies.iter().zip(networks) {
        client
            .post::<IgnoredAny>(
                &format!("/cnm/v1/sandboxes/{}/connect", encode(name)),
                body,
                Target::Attach {
                    network,
                    sandbox: name,
                },
            )
            .await?;
    }
    let key = &created.key;
    if key.is_empty() {
        anyhow::bail!("cnmd returned sandbox {name} without a Key (netns path)");
    }
    let mut cmd = tokio::process::Command::new(
        std::env::current_exe().context("cannot find the cnm executable to re-exec")?,
    );
    cmd.arg("__exec").arg("--netns").arg(key);
    for (src, target) in [
        (&created.hosts_path, "/etc/hosts"),
        (&created.resolv_conf_path, "/etc/resolv.conf"),
    ] {
        if !src.is_empty() {
            cmd.arg("--bind").arg(format!("{src}:{target}"));
        }
    }
    let hostname = a.config.hostname.as_deref().unwrap_or(&created.hostname);
    if !hostname.is_empty() {
        cmd.arg("--hostname").arg(hostname);
    }
    cmd.arg("--").args(&a.command);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let status = supervise(cmd).await?;
    Ok(Outcome::Code(exit_code_of(status)))
}

/// Runs the child, forwarding SIGINT, SIGTERM and SIGHUP to it, and returns how it ended.
async fn supervise(mut cmd: tokio::process::Command) -> anyhow::Result<ExitStatus> {
    // Handlers go in before the child exists, so no signal can kill us between spawn and wait
    // and leave the sandbox behind.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut child = cmd.spawn().context("cannot start `cnm __exec`")?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw)
        .context("the child exited before it could be watched")?;
    loop {
        let sig = tokio::select! {
            status = child.wait() => return Ok(status?),
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
            _ = hup.recv() => Signal::SIGHUP,
        };
        // ESRCH means it is already gone; wait() will say how.
        if let Err(e) = kill(pid, sig)
            && e != nix::errno::Errno::ESRCH
        {
            return Err(anyhow::anyhow!(
                "cannot forward {sig} to the command (pid {pid}): {e}"
            ));
        }
    }
}

/// The shell convention: the exit code, or 128+N when killed by signal N.
pub fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

/// True for a valid DNS hostname label sequence (RFC 1123), at most 63 bytes.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A sandbox name when none was given: `run-` and 8 hex digits.
fn generated_name() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("run-{:08x}", h.finish() as u32)
}

/// `cnm __exec`: enter the sandbox, then become the command. Runs before any thread exists.
pub fn exec_in_sandbox(a: ExecArgs) -> ExitCode {
    #[allow(clippy::print_stderr)]
    fn fail(code: u8, msg: String) -> ExitCode {
        eprintln!("cnm: {msg}");
        ExitCode::from(code)
    }
    let mut entry = match SandboxEntry::open(&a.netns) {
        Ok(entry) => entry,
        Err(e) => return fail(EXIT_ENTER_FAILED, format!("cannot enter the sandbox: {e}")),
    };
    for b in &a.binds {
        match b.rsplit_once(':') {
            Some((src, dst)) if !src.is_empty() && !dst.is_empty() => {
                entry = entry.bind(BindMount::new(src, dst));
            }
            _ => {
                return fail(
                    EXIT_ENTER_FAILED,
                    format!("invalid --bind {b:?}: expected SRC:DST"),
                );
            }
        }
    }
    if let Some(h) = a.hostname {
        entry = entry.hostname(h);
    }
    if let Err(e) = entry.enter() {
        return fail(EXIT_ENTER_FAILED, format!("cannot enter the sandbox: {e}"));
    }
    let err = std::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_EXECUTE
    };
    fail(code, format!("cannot run {:?}: {err}", a.command[0]))
}

/// `cnm __detach`: leave the terminal's session, then become the program (cnmd).
pub fn detach(command: &[String]) -> ExitCode {
    #[allow(clippy::print_stderr)]
    fn fail(msg: String) -> ExitCode {
        eprintln!("cnm: {msg}");
        ExitCode::from(EXIT_ENTER_FAILED)
    }
    if let Err(e) = nix::unistd::setsid() {
        return fail(format!("setsid failed: {e}"));
    }
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    fail(format!("cannot run {:?}: {err}", command[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code_of(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code_of(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code_of(ExitStatus::from_raw(libc_sigkill())), 137);
    }

    fn libc_sigkill() -> i32 {
        Signal::SIGKILL as i32
    }

    #[test]
    fn only_valid_hostnames_become_the_default_hostname() {
        assert!(is_hostname("run-1a2b3c4d") && is_hostname("web.example"));
        assert!(!is_hostname("my_sandbox") && !is_hostname("-x") && !is_hostname(""));
        assert!(!is_hostname(&"a".repeat(64)));
    }

    #[test]
    fn generated_names_look_like_run_hex() {
        let n = generated_name();
        assert!(n.starts_with("run-") && n.len() == 12, "{n}");
        assert!(n[4..].chars().all(|c| c.is_ascii_hexdigit()), "{n}");
    }
}
