//! The privileged phase: `cargo test -- --ignored` inside a private mount namespace.
//!
//! xtask re-executes itself under `unshare --mount --propagation private`; the child (the hidden
//! [`IN_MOUNT_NS`] command) mounts a fresh tmpfs on each of [`PRIVATE_RUN_DIRS`] and then execs
//! cargo. Namespace bind mounts that tests make under those directories therefore never appear in
//! the machine's `/run`, and they vanish with the mount namespace even if a test crashes.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::packages;
use crate::run;

/// The hidden subcommand the re-executed child runs.
pub const IN_MOUNT_NS: &str = "__in-mount-ns";

/// Directories that get their own tmpfs inside the private mount namespace.
const PRIVATE_RUN_DIRS: &[&str] = &["/run/cnm", "/run/netns"];

/// Tells the child which mount namespace it must not be in (the one it was started from).
const PARENT_MNT_NS_ENV: &str = "XTASK_PARENT_MNT_NS";

fn mount_ns_of_self() -> Result<String> {
    let link =
        std::fs::read_link("/proc/self/ns/mnt").context("failed to read /proc/self/ns/mnt")?;
    Ok(link.to_string_lossy().into_owned())
}

/// Runs every ignored (privileged) test; returns cargo's success and its captured stdout.
pub fn run_tests(cargo: &str, scope: &[String], test_args: &[String]) -> Result<(bool, String)> {
    let mut cargo_args: Vec<String> = ["test", "--no-fail-fast"].map(String::from).to_vec();
    cargo_args.extend(scope.iter().cloned());
    // Integration and unit test binaries only: doc tests marked ```ignore are examples that do not
    // compile on their own, not privileged tests.
    cargo_args.push("--tests".to_owned());
    cargo_args.extend(["--", "--ignored"].map(String::from));
    cargo_args.extend(test_args.iter().cloned());
    run_cargo(cargo, &cargo_args)
}

/// Runs `cargo <cargo_args>` inside a private mount namespace with the private run dirs;
/// returns cargo's success and its captured stdout.
pub fn run_cargo(cargo: &str, cargo_args: &[String]) -> Result<(bool, String)> {
    if !packages::is_root()? {
        bail!(
            "the privileged tests need root (CAP_SYS_ADMIN for the private mount namespace, CAP_NET_ADMIN for \
             network namespaces); run `cargo xtask test` as root"
        );
    }
    let unshare =
        packages::find_program("unshare").context("`unshare` (util-linux) is not installed")?;
    let xtask = std::env::current_exe().context("failed to find the xtask executable")?;

    let mut args: Vec<String> = ["--mount", "--propagation", "private", "--"]
        .map(String::from)
        .to_vec();
    args.push(xtask.to_string_lossy().into_owned());
    args.push(IN_MOUNT_NS.to_owned());
    args.push(cargo.to_owned());
    args.extend(cargo_args.iter().cloned());

    // The child checks it really is in a new mount namespace before mounting anything.
    let parent_ns = mount_ns_of_self()?;
    // The tmpfs needs a mount point: the missing ones exist only while the tests run.
    with_mount_points(PRIVATE_RUN_DIRS, || {
        run::tee_with_env(
            &unshare.to_string_lossy(),
            &args,
            &[(PARENT_MNT_NS_ENV, &parent_ns)],
        )
    })?
}

/// Runs `f` with the directories `dirs` present: creates the missing ones first and removes
/// them afterwards (only while still empty: anything else was put there by someone else), so
/// the machine is left exactly as it was found.
pub fn with_mount_points<T>(dirs: &[&'static str], f: impl FnOnce() -> T) -> Result<T> {
    let mut created = Vec::new();
    for dir in dirs {
        if !Path::new(dir).exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create mount point {dir}"))?;
            created.push(*dir);
        }
    }
    let result = f();
    for dir in created {
        if let Err(err) = std::fs::remove_dir(dir) {
            eprintln!("xtask: warning: could not remove the mount point {dir} it created: {err}");
        }
    }
    Ok(result)
}

/// The child side: we are inside the new mount namespace; mount the private dirs and exec `rest`.
pub fn in_mount_ns(rest: &[String]) -> Result<std::convert::Infallible> {
    let parent = std::env::var(PARENT_MNT_NS_ENV).with_context(|| {
        format!("{IN_MOUNT_NS} is internal to `cargo xtask test` ({PARENT_MNT_NS_ENV} unset)")
    })?;
    let here = mount_ns_of_self()?;
    if here == parent {
        bail!(
            "refusing to mount over {PRIVATE_RUN_DIRS:?}: still in the original mount namespace ({here})"
        );
    }
    let (program, args) = rest
        .split_first()
        .context("nothing to run inside the mount namespace")?;
    for dir in PRIVATE_RUN_DIRS {
        // Normally the parent made it; it removes what it made once we are done.
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create mount point {dir}"))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755,size=64m", "cnm-xtask", dir])
            .status()
            .context("failed to start `mount`")?;
        if !status.success() {
            bail!("failed to mount a private tmpfs on {dir}: mount exited with {status}");
        }
    }
    let err = Command::new(program)
        .args(args)
        .env_remove(PARENT_MNT_NS_ENV)
        .exec();
    Err(err).with_context(|| format!("failed to exec {program}"))
}
