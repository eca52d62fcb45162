//! Entering a sandbox from a process that is about to `exec` a command inside it.
//!
//! A container runtime starts its command in the sandbox's network namespace, with the sandbox's
//! hosts and resolv.conf over `/etc/hosts` and `/etc/resolv.conf` (in a private mount namespace,
//! so nobody else sees them) and with the sandbox's hostname (in its own UTS namespace).
//! [`SandboxEntry::apply`] arranges that for a [`std::process::Command`] the runtime then spawns
//! (from any program, tokio included): the child does it between `fork` and `exec`.
//! [`SandboxEntry::enter`] does the same to the calling process, for a single-threaded helper
//! that `exec`s next.
//!
//! Why between `fork` and `exec`: `setns` moves only the calling thread, and
//! `unshare(CLONE_NEWNS)` refuses (`EINVAL`) in a multi-threaded process because its threads
//! share one filesystem context. The child of `fork` has one thread and its own copy of that
//! context, so both work there. But that child is a copy of a multi-threaded program: another
//! thread may have held the allocator's lock at the fork, so the child may only make
//! async-signal-safe calls — no allocation, no locks. Everything is therefore prepared before:
//! the namespace is opened as a file descriptor ([`NetNs::fd`]), paths and the hostname become
//! C strings, and the child makes six kinds of system call on them, nothing else.
//!
//! A failure in the child reaches the parent as the `io::Error` of `spawn()`, with the errno
//! only (`std` sends nothing more across); [`SandboxEntry::spawn_error`] names the sandbox in it.
//! Everything that can be checked beforehand (paths exist, names are valid) is checked by
//! [`SandboxEntry::apply`], with an error naming the field and the value.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{NetNs, SandboxError};

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

/// Everything a process does to move into a sandbox before it `exec`s a command: private mount
/// namespace with bind mounts, UTS namespace with a hostname, then the sandbox's network
/// namespace.
///
/// A runtime gets one from its sandbox handle (`cnm::Sandbox::entry()`, which fills in the
/// namespace, hosts, resolv.conf and hostname) and applies it to the command it spawns:
///
/// ```no_run
/// use std::process::Command;
/// use cnm_sandbox::NetNs;
/// use cnm_sandbox::exec::{BindMount, SandboxEntry};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let entry = SandboxEntry::new(NetNs::open("/run/cnm/netns/3f2a")?)
///     .bind(BindMount::new("/run/cnm/sandboxes/3f2a/hosts", "/etc/hosts"))
///     .hostname("web");
/// let mut cmd = Command::new("ip");
/// cmd.args(["addr"]);
/// entry.apply(&mut cmd)?;                       // checks now, enters in the child
/// let status = cmd.status().map_err(|e| entry.spawn_error(e))?;
/// # let _ = status; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SandboxEntry {
    netns: NetNs,
    binds: Vec<BindMount>,
    hostname: Option<String>,
}

impl SandboxEntry {
    /// Entry into the network namespace `netns`.
    pub fn new(netns: NetNs) -> SandboxEntry {
        SandboxEntry {
            netns,
            binds: Vec::new(),
            hostname: None,
        }
    }

    /// Entry into the network namespace persisted at `key` (the sandbox key); fails naming the
    /// path when nothing is mounted there.
    pub fn open(key: impl AsRef<Path>) -> Result<SandboxEntry, SandboxError> {
        Ok(Self::new(NetNs::open(key)?))
    }

    /// Adds a bind mount, applied in a private mount namespace, in the order added.
    pub fn bind(mut self, mount: BindMount) -> SandboxEntry {
        self.binds.push(mount);
        self
    }

    /// Gives the process its own UTS namespace with this hostname.
    pub fn hostname(mut self, name: impl Into<String>) -> SandboxEntry {
        self.hostname = Some(name.into());
        self
    }

    /// The network namespace entered.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The bind mounts, in order.
    pub fn binds(&self) -> &[BindMount] {
        &self.binds
    }

    /// The hostname set, if any.
    pub fn hostname_value(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// Makes `cmd` enter the sandbox when it is spawned: the child, between `fork` and `exec`,
    /// unshares its mount namespace (made private, so nothing propagates back to the host) and
    /// applies the bind mounts, unshares its UTS namespace and sets the hostname, then enters
    /// the network namespace. Works from a multi-threaded program.
    ///
    /// Checks first, changing nothing on failure: every bind source and target exists, the
    /// hostname is a valid one. The command's own `pre_exec` hooks added before this one run
    /// before it (in the host's namespaces), those added after it run inside the sandbox.
    pub fn apply(&self, cmd: &mut Command) -> Result<(), SandboxError> {
        let prepared = self.prepare()?;
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed. `Prepared::enter` makes only raw system calls
        // (unshare, mount, sethostname, setns) on data prepared above: C strings and a file
        // descriptor owned by `prepared`, which the closure owns, so they outlive the child's
        // use. It does not allocate, lock or touch any other state; its errors are bare errnos
        // (`io::Error::from_raw_os_error` does not allocate).
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || prepared.enter());
        }
        Ok(())
    }

    /// Moves the calling process into the sandbox, as [`SandboxEntry::apply`] does for a child.
    ///
    /// For a single-threaded process that `exec`s next (in a multi-threaded one the kernel
    /// refuses the mount namespace with `EINVAL`); nothing is undone on failure because the
    /// process is expected to exit.
    pub fn enter(&self) -> Result<(), SandboxError> {
        let prepared = self.prepare()?;
        prepared.enter().map_err(|e| self.spawn_error(e))
    }

    /// Names the sandbox in an error of `spawn()` on a command this entry was applied to (or
    /// of [`SandboxEntry::enter`]): `failed to enter sandbox netns /run/cnm/netns/…: <errno>`.
    pub fn spawn_error(&self, error: io::Error) -> SandboxError {
        SandboxError::kernel(
            "enter sandbox (mount, uts and network namespaces)",
            self.netns.to_string(),
            error,
        )
    }

    /// Everything the child needs, checked and converted now (the child may not allocate).
    fn prepare(&self) -> Result<Prepared, SandboxError> {
        let mut binds = Vec::with_capacity(self.binds.len());
        for b in &self.binds {
            for (field, path) in [("bind source", &b.source), ("bind target", &b.target)] {
                std::fs::metadata(path).map_err(|e| {
                    SandboxError::kernel("find", format!("{field} {}", path.display()), e)
                })?;
            }
            binds.push((
                c_path("bind source", &b.source)?,
                c_path("bind target", &b.target)?,
            ));
        }
        let hostname = match &self.hostname {
            Some(h) => {
                check_hostname(h)?;
                Some(h.as_bytes().to_vec())
            }
            None => None,
        };
        // Opened now (a namespace with a path holds no descriptor): the child of `fork` may
        // not allocate, and the command keeps this one until it has run.
        let netns = self.netns.fd()?.into_owned()?;
        Ok(Prepared {
            netns,
            root: c"/",
            binds,
            hostname,
        })
    }
}

/// A [`SandboxEntry`] made ready for the child of a `fork`: nothing left to allocate.
struct Prepared {
    /// The namespace's descriptor, open for as long as the command exists.
    netns: OwnedFd,
    root: &'static std::ffi::CStr,
    binds: Vec<(CString, CString)>,
    hostname: Option<Vec<u8>>,
}

impl Prepared {
    /// The steps, in order; async-signal-safe (see [`SandboxEntry::apply`]).
    fn enter(&self) -> io::Result<()> {
        if !self.binds.is_empty() {
            check(sys_unshare(libc::CLONE_NEWNS))?;
            // Without this, on a host whose / is shared (systemd's default) the bind mounts
            // below would propagate back to the host's mount namespace.
            check(sys_mount(None, self.root, libc::MS_REC | libc::MS_PRIVATE))?;
            for (source, target) in &self.binds {
                check(sys_mount(Some(source), target, libc::MS_BIND))?;
            }
        }
        if let Some(name) = &self.hostname {
            check(sys_unshare(libc::CLONE_NEWUTS))?;
            check(sys_sethostname(name))?;
        }
        // Last: the mounts above name paths of the host's view, which stays as it is, but
        // nothing else may run inside the sandbox's network namespace before exec.
        check(sys_setns(self.netns.as_raw_fd(), libc::CLONE_NEWNET))
    }
}

/// Moves the calling process into a new mount namespace of its own and makes every mount in it
/// private, so that what it mounts next never propagates back (on a host whose `/` is shared,
/// systemd's default, it otherwise would). `object` names what the namespace is for, in errors.
///
/// Like [`SandboxEntry::enter`], only works in a process with no other thread yet.
pub fn enter_private_mount_namespace(object: &str) -> Result<(), SandboxError> {
    check(sys_unshare(libc::CLONE_NEWNS))
        .map_err(|e| SandboxError::kernel("unshare mount namespace for", object.to_owned(), e))?;
    check(sys_mount(None, c"/", libc::MS_REC | libc::MS_PRIVATE))
        .map_err(|e| SandboxError::kernel("make private", "/".to_owned(), e))
}

/// `-1` → the errno as an `io::Error` (no allocation).
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sys_unshare(flags: libc::c_int) -> libc::c_int {
    // SAFETY: unshare takes no pointers; it only changes the calling thread's namespaces.
    #[allow(unsafe_code)]
    unsafe {
        libc::unshare(flags)
    }
}

fn sys_setns(fd: RawFd, nstype: libc::c_int) -> libc::c_int {
    // SAFETY: `fd` is an open namespace file descriptor owned by a live `Prepared`; setns
    // takes no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libc::setns(fd, nstype)
    }
}

fn sys_mount(
    source: Option<&std::ffi::CStr>,
    target: &std::ffi::CStr,
    flags: libc::c_ulong,
) -> libc::c_int {
    let source = source.map_or(std::ptr::null(), std::ffi::CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string borrowed for the call; no
    // filesystem type or data is passed (null), as bind and propagation changes take none.
    #[allow(unsafe_code)]
    unsafe {
        libc::mount(
            source,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    }
}

fn sys_sethostname(name: &[u8]) -> libc::c_int {
    // SAFETY: the pointer and length describe `name`, borrowed for the call.
    #[allow(unsafe_code)]
    unsafe {
        libc::sethostname(name.as_ptr().cast(), name.len())
    }
}

fn c_path(field: &'static str, path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        SandboxError::invalid(field, path.display().to_string(), "contains a NUL byte")
    })
}

/// A hostname the kernel takes and a resolver can use: 1..=63 bytes (HOST_NAME_MAX is 64),
/// letters, digits, `-` and `.`, no empty label.
fn check_hostname(name: &str) -> Result<(), SandboxError> {
    let reason = if name.is_empty() || name.len() > 63 {
        Some("must be 1 to 63 bytes")
    } else if !name
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
    {
        Some("must be dot-separated labels of letters, digits and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SandboxError::invalid("hostname", name, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> NetNs {
        NetNs::current().expect("every thread has a netns")
    }

    #[test]
    fn builder_collects_mounts_in_order() {
        let e = SandboxEntry::new(current())
            .bind(BindMount::new("/x/hosts", "/etc/hosts"))
            .bind(BindMount::new("/x/resolv.conf", "/etc/resolv.conf"))
            .hostname("h");
        assert_eq!(e.binds().len(), 2);
        assert_eq!(e.binds()[1].target, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(e.hostname_value(), Some("h"));
    }

    #[test]
    fn missing_netns_is_reported_by_path_before_anything_changes() {
        let err = SandboxEntry::open("/nonexistent/cnm/netns/zz").expect_err("no such namespace");
        let text = err.to_string();
        assert!(
            text.contains("open netns /nonexistent/cnm/netns/zz"),
            "{text}"
        );
        assert_eq!(err.kind(), cnm_types::ErrorKind::NotFound);
    }

    #[test]
    fn a_missing_bind_source_is_refused_before_the_command_is_touched() {
        let entry =
            SandboxEntry::new(current()).bind(BindMount::new("/nonexistent/hosts", "/etc/hosts"));
        let mut cmd = Command::new("true");
        let err = entry.apply(&mut cmd).expect_err("source missing");
        assert!(
            err.to_string().contains("bind source /nonexistent/hosts"),
            "{err}"
        );
        assert_eq!(err.kind(), cnm_types::ErrorKind::NotFound);
    }

    #[test]
    fn a_bad_hostname_is_refused_naming_it() {
        for bad in ["", "a b", "x..y", &"a".repeat(64)] {
            let err = SandboxEntry::new(current())
                .hostname(bad)
                .apply(&mut Command::new("true"))
                .expect_err(bad);
            assert_eq!(err.kind(), cnm_types::ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains("invalid hostname"), "{err}");
        }
        assert!(check_hostname("web-1.example").is_ok());
    }

    #[test]
    fn a_failure_in_the_child_names_the_sandbox() {
        let err =
            SandboxEntry::new(current()).spawn_error(io::Error::from_raw_os_error(libc::EPERM));
        let text = err.to_string();
        assert!(text.starts_with("failed to enter sandbox"), "{text}");
        assert_eq!(err.errno(), Some(libc::EPERM));
    }
}
