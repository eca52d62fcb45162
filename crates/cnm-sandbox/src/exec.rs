//! Entering a sandbox from a process that is about to `exec` a command inside it.
//!
//! This is how `cnm run` starts a command: it re-executes itself as a fresh, single-threaded
//! process, which calls [`SandboxEntry::enter`] and then replaces itself with the command. The
//! process gets a private mount namespace (so the sandbox's hosts and resolv.conf can be
//! bind-mounted over `/etc/hosts` and `/etc/resolv.conf` without anyone else seeing them),
//! optionally its own UTS namespace with the sandbox's hostname, and finally the sandbox's network
//! namespace.
//!
//! Unlike [`crate::NetNs::run`], this changes the namespaces of the *calling process* for good;
//! that is the point. `unshare(CLONE_NEWNS)` also refuses (EINVAL) in a multi-threaded process,
//! because threads share their filesystem context, so this can only work before any thread or
//! async runtime is started.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

use crate::SandboxError;

/// A file or directory of the sandbox to bind-mount over a path of the process' view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// What to mount (for example the sandbox's hosts file).
    pub source: PathBuf,
    /// Where to mount it (for example `/etc/hosts`); it must already exist.
    pub target: PathBuf,
}

impl BindMount {
    /// A bind mount of `source` over `target`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> BindMount {
        BindMount {
            source: source.into(),
            target: target.into(),
        }
    }
}

/// Everything a process needs to do to move itself into a sandbox before it `exec`s a command.
///
/// ```no_run
/// use cnm_sandbox::exec::{BindMount, SandboxEntry};
/// # fn main() -> Result<(), cnm_sandbox::SandboxError> {
/// SandboxEntry::new("/run/cnm/netns/3f2a")
///     .bind(BindMount::new("/run/cnm/sandboxes/3f2a/hosts", "/etc/hosts"))
///     .hostname("web")
///     .enter()?; // single-threaded process only; exec the command next
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEntry {
    netns: PathBuf,
    binds: Vec<BindMount>,
    hostname: Option<String>,
}

impl SandboxEntry {
    /// Entry into the network namespace bind-mounted at `netns` (the sandbox key).
    pub fn new(netns: impl Into<PathBuf>) -> SandboxEntry {
        SandboxEntry {
            netns: netns.into(),
            binds: Vec::new(),
            hostname: None,
        }
    }

    /// Adds a bind mount, applied in a private mount namespace.
    pub fn bind(mut self, mount: BindMount) -> SandboxEntry {
        self.binds.push(mount);
        self
    }

    /// Gives the process its own UTS namespace with this hostname.
    pub fn hostname(mut self, name: impl Into<String>) -> SandboxEntry {
        self.hostname = Some(name.into());
        self
    }

    /// Moves the calling process into the sandbox: private mount namespace with the bind mounts,
    /// UTS namespace with the hostname (if any), then the sandbox's network namespace.
    ///
    /// Must be called by a single-threaded process that will `exec` next; nothing is undone on
    /// failure because the process is expected to exit.
    pub fn enter(&self) -> Result<(), SandboxError> {
        // Open the namespace first: a wrong key is the likeliest mistake, and the message should
        // name it rather than a mount.
        let shown = self.netns.display().to_string();
        let netns = File::open(&self.netns)
            .map_err(|e| SandboxError::kernel("open netns", shown.clone(), e))?;

        if !self.binds.is_empty() {
            enter_private_mount_namespace(&shown)?;
            for b in &self.binds {
                bind_mount(&b.source, &b.target)?;
            }
        }

        if let Some(name) = &self.hostname {
            unshare(CloneFlags::CLONE_NEWUTS).map_err(|e| {
                SandboxError::errno_err("unshare uts namespace for", shown.clone(), e)
            })?;
            // The UTS sysctls are per namespace: this writes the new namespace's hostname.
            std::fs::write("/proc/sys/kernel/hostname", name)
                .map_err(|e| SandboxError::kernel("set hostname", name.clone(), e))?;
        }

        setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| SandboxError::errno_err("enter netns", shown, e))?;
        Ok(())
    }
}

/// Moves the calling process into a new mount namespace of its own and makes every mount in it
/// private, so that what it mounts next never propagates back (on a host whose `/` is shared,
/// systemd's default, it otherwise would). `object` names what the namespace is for, in errors.
///
/// Like [`SandboxEntry::enter`], only works in a process with no other thread yet.
pub fn enter_private_mount_namespace(object: &str) -> Result<(), SandboxError> {
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| SandboxError::errno_err("unshare mount namespace for", object, e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| SandboxError::errno_err("make private", "/", e))
}

fn bind_mount(source: &Path, target: &Path) -> Result<(), SandboxError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        SandboxError::errno_err(
            "bind-mount",
            format!("{} over {}", source.display(), target.display()),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_collects_mounts_in_order() {
        let e = SandboxEntry::new("/run/cnm/netns/a")
            .bind(BindMount::new("/x/hosts", "/etc/hosts"))
            .bind(BindMount::new("/x/resolv.conf", "/etc/resolv.conf"))
            .hostname("h");
        assert_eq!(e.binds.len(), 2);
        assert_eq!(e.binds[1].target, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(e.hostname.as_deref(), Some("h"));
    }

    #[test]
    fn missing_netns_is_reported_by_path_before_anything_changes() {
        let err = SandboxEntry::new("/nonexistent/cnm/netns/zz")
            .bind(BindMount::new("/a", "/b"))
            .enter()
            .expect_err("no such namespace");
        let text = err.to_string();
        assert!(
            text.contains("open netns /nonexistent/cnm/netns/zz"),
            "{text}"
        );
        assert_eq!(err.kind(), cnm_types::ErrorKind::NotFound);
    }
}
