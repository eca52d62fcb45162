//! Network namespaces held as file descriptors, and the short-lived threads that work inside them.
//!
//! A thread's network namespace is sticky: once a thread has `setns()`ed, everything it does
//! afterwards (sockets, sysctls, netlink) lands in that namespace. So we never switch a thread we
//! do not own (a tokio worker would carry the namespace into unrelated tasks); every piece of
//! namespace work gets a fresh OS thread that enters, works and exits.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::fstat;

use crate::SandboxError;

/// Where the kernel exposes the calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// The magic number of nsfs, the filesystem namespace files live on (`NSFS_MAGIC` in linux/magic.h).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A network namespace held open as a file descriptor. Cloning is cheap (the fd is shared).
///
/// Holding a `NetNs` keeps the namespace alive even after [`NetNs::delete`] removed its mount.
#[derive(Clone, Debug)]
pub struct NetNs(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    fd: OwnedFd,
    path: Option<PathBuf>,
    id: (u64, u64),
}

impl NetNs {
    /// The namespace of the calling thread (opens `/proc/thread-self/ns/net`).
    pub fn current() -> Result<NetNs, SandboxError> {
        let file = File::open(THREAD_NETNS)
            .map_err(|e| SandboxError::kernel("open current netns", THREAD_NETNS, e))?;
        Self::from_file(file, None, THREAD_NETNS)
    }

    /// Opens a namespace persisted at `path` (a bind mount, like `/run/netns/NAME`).
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, SandboxError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|e| SandboxError::kernel("open netns", &shown, e))?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| SandboxError::errno_err("open netns", &shown, e))?;
        // An empty file at the path (a crashed create, or a deleted namespace) is not a namespace.
        #[allow(clippy::useless_conversion)] // f_type's width differs between targets
        let fs_type = i64::from(fs.filesystem_type().0);
        if fs_type != NSFS_MAGIC {
            return Err(SandboxError::invalid(
                "netns path",
                shown,
                "not a namespace file (no namespace is mounted there)",
            ));
        }
        Self::from_file(file, Some(path.to_path_buf()), &shown)
    }

    /// Creates a new namespace and persists it by bind-mounting it at `path` (parent directories
    /// are created). Fails with `AlreadyExists` if `path` exists. Leaves nothing behind on failure.
    pub async fn create(path: impl AsRef<Path>) -> Result<NetNs, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        on_thread("create netns", shown, move || create_persisted(&path)).await?
    }

    /// Blocking variant of [`NetNs::create`].
    pub fn create_blocking(path: impl AsRef<Path>) -> Result<NetNs, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        on_thread_blocking("create netns", shown, move || create_persisted(&path))?
    }

    /// Creates a new namespace that is not persisted: it lives as long as a clone of the
    /// returned `NetNs` (its fd) is alive.
    pub async fn create_anonymous() -> Result<NetNs, SandboxError> {
        on_thread("create netns", "(anonymous)", create_unpersisted).await?
    }

    /// Unmounts (`MNT_DETACH`) and removes a persisted namespace at `path`; the kernel frees the
    /// namespace when the last fd and the last process in it are gone.
    ///
    /// A leftover plain file at `path` (no mount) is removed too; a missing path is `NotFound`.
    pub async fn delete(path: impl AsRef<Path>) -> Result<(), SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        // No namespace is entered here, so a pooled blocking thread serves (no fresh thread).
        tokio::task::spawn_blocking(move || delete_persisted(&path))
            .await
            .map_err(|_| SandboxError::ThreadPanicked {
                op: "delete netns",
                object: shown,
            })?
    }

    /// Blocking variant of [`NetNs::delete`].
    pub fn delete_blocking(path: impl AsRef<Path>) -> Result<(), SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        on_thread_blocking("delete netns", shown, move || delete_persisted(&path))?
    }

    /// The bind-mount path, if this namespace was created or opened by path.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// Device and inode of the namespace: two `NetNs` of one namespace are equal by this.
    pub fn id(&self) -> (u64, u64) {
        self.0.id
    }

    /// The namespace file descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace; the thread exits afterwards.
    ///
    /// Dropping the returned future does not stop `f`; the thread still finishes and exits, so
    /// no thread is ever left inside the namespace.
    pub async fn run<F, R>(&self, f: F) -> Result<R, SandboxError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        on_thread("run in", self.to_string(), move || {
            ns.enter()?;
            Ok(f())
        })
        .await?
    }

    /// Blocking variant of [`NetNs::run`], for non-async callers (tests, xtask).
    pub fn run_blocking<F, R>(&self, f: F) -> Result<R, SandboxError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        on_thread_blocking("run in", self.to_string(), move || {
            ns.enter()?;
            Ok(f())
        })?
    }

    /// Moves the calling thread into this namespace. Only for threads this crate spawned.
    pub(crate) fn enter(&self) -> Result<(), SandboxError> {
        setns(self.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| SandboxError::errno_err("enter", self.to_string(), e))
    }

    fn from_file(file: File, path: Option<PathBuf>, shown: &str) -> Result<NetNs, SandboxError> {
        let st = fstat(&file).map_err(|e| SandboxError::errno_err("stat netns", shown, e))?;
        #[allow(clippy::useless_conversion)] // st_dev/st_ino widths differ between targets
        let id = (u64::from(st.st_dev), u64::from(st.st_ino));
        Ok(NetNs(Arc::new(Inner {
            fd: OwnedFd::from(file),
            path,
            id,
        })))
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for NetNs {}

impl fmt::Display for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.path {
            Some(p) => write!(f, "netns {}", p.display()),
            None => write!(f, "netns net:[{}]", self.0.id.1),
        }
    }
}

/// Body of [`NetNs::create`]; runs on a dedicated thread that it moves into the new namespace.
pub(crate) fn create_persisted(path: &Path) -> Result<NetNs, SandboxError> {
    let shown = path.display().to_string();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| {
            SandboxError::kernel("create netns directory", parent.display().to_string(), e)
        })?;
    }
    // create_new: an existing path is someone else's namespace (or a leftover), never ours to reuse.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| SandboxError::kernel("create netns file", &shown, e))?;
    let remove_file = |primary: SandboxError| -> SandboxError {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %shown, error = %e, "cleanup after failed netns create: remove file");
        }
        primary
    };
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| remove_file(SandboxError::errno_err("unshare netns for", &shown, e)))?;
    mount(
        Some(THREAD_NETNS),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| remove_file(SandboxError::errno_err("bind-mount netns at", &shown, e)))?;
    let opened = File::open(path)
        .map_err(|e| SandboxError::kernel("open netns", &shown, e))
        .and_then(|file| NetNs::from_file(file, Some(path.to_path_buf()), &shown));
    opened.map_err(|primary| {
        if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %shown, error = %e, "cleanup after failed netns create: unmount");
        }
        remove_file(primary)
    })
}

/// Body of [`NetNs::create_anonymous`]; runs on a dedicated thread.
fn create_unpersisted() -> Result<NetNs, SandboxError> {
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| SandboxError::errno_err("unshare netns for", "(anonymous)", e))?;
    NetNs::current()
}

/// Body of [`NetNs::delete`].
pub(crate) fn delete_persisted(path: &Path) -> Result<(), SandboxError> {
    let shown = path.display().to_string();
    let unmounted = match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => true,
        // EINVAL: not a mount point (a leftover file); still remove the file below.
        Err(nix::Error::EINVAL) => false,
        Err(e) => return Err(SandboxError::errno_err("unmount netns", shown, e)),
    };
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && unmounted => Ok(()),
        Err(e) => Err(SandboxError::kernel("remove netns file", shown, e)),
    }
}

/// Starts `f` on a fresh, named OS thread.
fn spawn<F: FnOnce() + Send + 'static>(
    op: &'static str,
    object: &str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, SandboxError> {
    std::thread::Builder::new()
        .name("cnm-netns".into())
        .spawn(f)
        .map_err(|e| SandboxError::kernel("spawn thread to", format!("{op} {object}"), e))
}

/// Runs `f` on a fresh, named OS thread and awaits its result without blocking the executor.
pub(crate) async fn on_thread<F, R>(
    op: &'static str,
    object: impl Into<String>,
    f: F,
) -> Result<R, SandboxError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let object = object.into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The receiver may be gone (caller cancelled); the thread exits either way.
    spawn(op, &object, move || drop(tx.send(f())))?;
    rx.await
        .map_err(|_| SandboxError::ThreadPanicked { op, object })
}

/// Blocking twin of [`on_thread`].
pub(crate) fn on_thread_blocking<F, R>(
    op: &'static str,
    object: impl Into<String>,
    f: F,
) -> Result<R, SandboxError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let object = object.into();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = spawn(op, &object, move || drop(tx.send(f())))?;
    let result = rx.recv();
    // Joined so that the thread is gone when this returns, as before.
    let _ = handle.join();
    result.map_err(|_| SandboxError::ThreadPanicked { op, object })
}
