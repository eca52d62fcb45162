//! Who can reach cnmd and read its state (issue 8: `state.redb` was world-readable and the
//! socket was bound, then chmodded): the socket is root and one group's, 0660 from the start; the
//! state files are the daemon's alone.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::spawned::Spawned;

/// A gid and name no real group has; the group exists only in cnmd's mount namespace.
const GID: u32 = 47_391;
const GROUP: &str = "cnmtestsock";
/// A user id for the unprivileged clients (nobody's, by convention).
const NOBODY: &str = "65534";

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

/// `GET /_ping` over the socket as uid 65534 with exactly the group `gid`.
fn ping_as(socket: &Path, gid: u32) -> Result<std::process::Output> {
    Ok(Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            &gid.to_string(),
            "--clear-groups",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://cnm/_ping")
        .output()?)
}

#[test]
#[ignore = "privileged: run cargo xtask test"]
fn socket_is_root_and_its_group_only_and_state_files_are_private() -> Result<()> {
    // cnmd sees a group file with one more group, bind-mounted in its own mount namespace only.
    let etc = tempfile::tempdir()?;
    let group_file = etc.path().join("group");
    let mut groups = std::fs::read_to_string("/etc/group")?;
    ensure!(
        !groups.lines().any(|l| l.starts_with(&format!("{GROUP}:"))),
        "{GROUP} must not exist on the machine"
    );
    groups.push_str(&format!("{GROUP}:x:{GID}:\n"));
    std::fs::write(&group_file, groups)?;
    let prelude = format!("mount --bind {} /etc/group", group_file.display());
    let d = Spawned::start(&["--group", GROUP], &prelude)?;

    let sock = d.socket();
    let meta = std::fs::symlink_metadata(&sock)?;
    ensure!(mode(&sock)? == 0o660, "socket mode {:o}", mode(&sock)?);
    ensure!(
        meta.uid() == 0 && meta.gid() == GID,
        "socket owner {}:{}",
        meta.uid(),
        meta.gid()
    );

    // A member of the group reaches the daemon without root; anyone else is refused.
    let member = ping_as(&sock, GID)?;
    ensure!(
        member.status.success() && member.stdout == b"OK",
        "group member: {member:?}"
    );
    let stranger = ping_as(&sock, 65534)?;
    // curl's exit code 7: it could not connect (the kernel refused: no write permission).
    ensure!(
        stranger.status.code() == Some(7),
        "non-member: {stranger:?}"
    );

    let state = d.state_dir();
    ensure!(mode(&state)? == 0o700, "state dir {:o}", mode(&state)?);
    for file in ["state.redb", "lock"] {
        let p = state.join(file);
        ensure!(mode(&p)? == 0o600, "{file} mode {:o}", mode(&p)?);
    }
    drop(d);

    // A numeric gid works too, without any group of that id; without --group the socket is
    // root's group's only.
    let d = Spawned::start(&["--group", &(GID + 1).to_string()], "")?;
    ensure!(std::fs::symlink_metadata(d.socket())?.gid() == GID + 1);
    drop(d);
    let d = Spawned::start(&[], "")?;
    let meta = std::fs::symlink_metadata(d.socket())?;
    ensure!(meta.gid() == 0 && mode(&d.socket())? == 0o660);
    let refused = ping_as(&d.socket(), GID)?;
    ensure!(refused.status.code() == Some(7), "{refused:?}");
    drop(d);

    // An unknown group is refused before anything is created.
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(env!("CARGO_BIN_EXE_cnmd"))
        .arg("--socket")
        .arg(etc.path().join("x.sock"))
        .arg("--state-dir")
        .arg(etc.path().join("xstate"))
        .arg("--run-dir")
        .arg(etc.path().join("xrun"))
        .args(["--group", "no-such-group-cnm"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("no group named \"no-such-group-cnm\""),
        "{err}"
    );
    ensure!(!etc.path().join("xstate").exists(), "nothing created");
    Ok(())
}
