//! `SandboxEntry::apply`: a command spawned from a multi-threaded (tokio) program starts inside
//! the sandbox — its network namespace, its files over `/etc/hosts`, its hostname — while the
//! program itself stays where it was; a failure in the child comes back as the spawn's error.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use cnm_sandbox::exec::{BindMount, SandboxEntry};
use cnm_sandbox::{NetNs, SandboxError};

fn own(path: &str) -> Result<String> {
    Ok(std::fs::read_link(path)?.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "privileged: run cargo xtask test"]
async fn a_command_spawned_from_a_threaded_program_starts_inside_the_sandbox() -> Result<()> {
    let ns = NetNs::create_anonymous()
        .await
        .context("create a namespace (needs root)")?;
    let dir = tempfile::tempdir()?;
    let (hosts, extra, extra_target) = (
        dir.path().join("hosts"),
        dir.path().join("extra"),
        dir.path().join("extra-target"),
    );
    std::fs::write(&hosts, "10.1.2.3 inside-marker\n")?;
    std::fs::write(&extra, "second bind\n")?;
    std::fs::write(&extra_target, "before\n")?;
    let (net_before, host_hosts) = (own("/proc/self/ns/net")?, std::fs::read("/etc/hosts")?);
    let hostname_before = std::fs::read_to_string("/proc/sys/kernel/hostname")?;

    let entry = SandboxEntry::new(ns.clone())
        .bind(BindMount::new(&hosts, "/etc/hosts"))
        .bind(BindMount::new(&extra, &extra_target))
        .hostname("inside");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "readlink /proc/self/ns/net; cat /proc/sys/kernel/hostname; cat /etc/hosts; cat {}",
        extra_target.display()
    ));
    entry.apply(&mut cmd)?;
    // Spawned from a tokio worker of a multi-threaded runtime, as a runtime would.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    ensure!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines[0] == format!("net:[{}]", ns.id().1),
        "the command's netns {:?} is not the sandbox's ({:?})",
        lines[0],
        ns.id()
    );
    ensure!(lines[1] == "inside", "hostname {:?}", lines[1]);
    ensure!(lines[2] == "10.1.2.3 inside-marker", "hosts {:?}", lines[2]);
    ensure!(lines[3] == "second bind", "second bind {:?}", lines[3]);

    // The program itself is where it was; nothing propagated back.
    ensure!(own("/proc/self/ns/net")? == net_before);
    ensure!(
        std::fs::read("/etc/hosts")? == host_hosts,
        "/etc/hosts changed outside"
    );
    ensure!(std::fs::read_to_string(&extra_target)? == "before\n");
    ensure!(std::fs::read_to_string("/proc/sys/kernel/hostname")? == hostname_before);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_failure_in_the_child_is_the_spawn_error_naming_the_sandbox() -> Result<()> {
    let ns = NetNs::create_anonymous()
        .await
        .context("create a namespace (needs root)")?;
    let dir = tempfile::tempdir()?;
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    std::fs::write(&source, "x")?;
    std::fs::write(&target, "y")?;
    let entry = SandboxEntry::new(ns).bind(BindMount::new(&source, &target));
    let mut cmd = Command::new("true");
    entry.apply(&mut cmd)?;
    // Checked at apply; gone by the time the child mounts.
    std::fs::remove_file(&target)?;
    let err = cmd
        .status()
        .expect_err("the bind mount must fail in the child");
    ensure!(err.raw_os_error() == Some(libc::ENOENT), "{err}");
    let err: SandboxError = entry.spawn_error(err);
    ensure!(err.kind() == cnm_types::ErrorKind::NotFound, "{err}");
    ensure!(
        err.to_string().starts_with("failed to enter sandbox"),
        "{err}"
    );
    Ok(())
}
