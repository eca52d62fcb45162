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

/// A network namespace: held open as a file descriptor, or named by its bind mount. Cloning is
/// cheap.
///
/// A namespace with a path ([`NetNs::open`], [`NetNs::create`]) holds no descriptor: each use
/// opens the path for as long as it needs the namespace and checks that it still names the same
/// namespace (device and inode). So a host with 10,000 sandboxes does not hold 10,000 namespace
/// descriptors (the descriptor limit would end it first; issue 15), and using a handle of a
/// namespace that [`NetNs::delete`] removed fails with `NotFound` rather than working on a
/// namespace nobody can reach any more. One without a path ([`NetNs::current`],
/// [`NetNs::create_anonymous`]) lives as long as its descriptor, so that one is held.
#[derive(Clone, Debug)]
pub struct NetNs(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Held only when there is no path to open again.
    fd: Option<OwnedFd>,
    path: Option<PathBuf>,
    id: (u64, u64),
}

/// A namespace's descriptor for one use: borrowed from a held [`NetNs`], or opened from its path
/// for this use and closed when dropped. Keep it alive until the kernel has taken the descriptor
/// (a netlink request sent and answered, a `setns` done).
#[derive(Debug)]
pub struct NsFd<'a>(NsFdInner<'a>);

#[derive(Debug)]
enum NsFdInner<'a> {
    Held(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl AsFd for NsFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.0 {
            NsFdInner::Held(fd) => *fd,
            NsFdInner::Opened(fd) => fd.as_fd(),
        }
    }
}

impl NsFd<'_> {
    /// A descriptor of its own (duplicated when borrowed), for one that must outlive the
    /// `NetNs` borrow (a prepared `exec`).
    pub fn into_owned(self) -> Result<OwnedFd, SandboxError> {
        match self.0 {
            NsFdInner::Held(fd) => fd
                .try_clone_to_owned()
                .map_err(|e| SandboxError::kernel("duplicate netns descriptor", "(held)", e)),
            NsFdInner::Opened(fd) => Ok(fd),
        }
    }
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
        let file = open_namespace_file(path, &shown)?;
        Self::from_file(file, Some(path.to_path_buf()), &shown)
    }

    /// Creates a new namespace and persists it by bind-mounting it at `path` (parent directories
    /// are created). Fails with `AlreadyExists` if `path` exists. Leaves nothing behind on failure.
    pub async fn create(path: impl AsRef<Path>) -> Result<NetNs, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        on_thread("create netns", shown, move || create_persisted(&path))?
            .wait()
            .await?
    }

    /// Blocking variant of [`NetNs::create`].
    pub fn create_blocking(path: impl AsRef<Path>) -> Result<NetNs, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        on_thread("create netns", shown, move || create_persisted(&path))?.join()?
    }

    /// Creates a new namespace that is not persisted: it lives as long as a clone of the
    /// returned `NetNs` (its fd) is alive.
    pub async fn create_anonymous() -> Result<NetNs, SandboxError> {
        on_thread("create netns", "(anonymous)", create_unpersisted)?
            .wait()
            .await?
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
        on_thread("delete netns", shown, move || delete_persisted(&path))?.join()?
    }

    /// The bind-mount path, if this namespace was created or opened by path.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// Device and inode of the namespace: two `NetNs` of one namespace are equal by this.
    pub fn id(&self) -> (u64, u64) {
        self.0.id
    }

    /// The namespace's descriptor for one use: the held one, or the path opened now (and
    /// checked to be this namespace still). `NotFound` once the namespace was deleted; a path
    /// that names another namespace now is a `Conflict`.
    pub fn fd(&self) -> Result<NsFd<'_>, SandboxError> {
        if let Some(fd) = &self.0.fd {
            return Ok(NsFd(NsFdInner::Held(fd.as_fd())));
        }
        let path = self
            .0
            .path
            .as_deref()
            .expect("a NetNs without a held descriptor has a path");
        let shown = path.display().to_string();
        let file = open_namespace_file(path, &shown).map_err(|e| match e {
            // The mount is gone but the file is left: deleted, as far as this handle goes.
            SandboxError::InvalidInput { .. } => SandboxError::kernel(
                "open netns",
                &shown,
                io::Error::from_raw_os_error(libc::ENOENT),
            ),
            other => other,
        })?;
        let id = file_id(&file, &shown)?;
        if id != self.0.id {
            return Err(SandboxError::Replaced {
                path: shown,
                was: self.0.id.1,
                now: id.1,
            });
        }
        Ok(NsFd(NsFdInner::Opened(OwnedFd::from(file))))
    }

    /// The held descriptor of a namespace without a path ([`NetNs::current`],
    /// [`NetNs::create_anonymous`]), for handing to another process as `/proc/PID/fd/N`;
    /// `None` for one named by its path (use [`NetNs::path`] then).
    pub fn held_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.fd.as_ref().map(AsFd::as_fd)
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
        self.start(f)?.wait().await?
    }

    /// Blocking variant of [`NetNs::run`], for non-async callers (tests, xtask).
    pub fn run_blocking<F, R>(&self, f: F) -> Result<R, SandboxError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.start(f)?.join()?
    }

    /// Starts `f` on a fresh OS thread that enters this namespace first.
    fn start<F, R>(&self, f: F) -> Result<OnThread<Result<R, SandboxError>>, SandboxError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        on_thread("run in", self.to_string(), move || {
            ns.enter()?;
            Ok(f())
        })
    }

    /// Moves the calling thread into this namespace. Only for threads this crate spawned.
    pub(crate) fn enter(&self) -> Result<(), SandboxError> {
        let fd = self.fd()?;
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| SandboxError::errno_err("enter", self.to_string(), e))
    }

    /// A handle of the namespace open as `file`: by `path` when there is one (the file is
    /// closed here), else holding the descriptor.
    fn from_file(file: File, path: Option<PathBuf>, shown: &str) -> Result<NetNs, SandboxError> {
        let id = file_id(&file, shown)?;
        let fd = match path {
            Some(_) => None,
            None => Some(OwnedFd::from(file)),
        };
        Ok(NetNs(Arc::new(Inner { fd, path, id })))
    }
}

/// Opens `path` and checks that a namespace is mounted there.
fn open_namespace_file(path: &Path, shown: &str) -> Result<File, SandboxError> {
    let file = File::open(path).map_err(|e| SandboxError::kernel("open netns", shown, e))?;
    let fs = nix::sys::statfs::fstatfs(&file)
        .map_err(|e| SandboxError::errno_err("open netns", shown, e))?;
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
    Ok(file)
}

/// Device and inode of an open namespace file: the namespace's identity.
fn file_id(file: &File, shown: &str) -> Result<(u64, u64), SandboxError> {
    let st = fstat(file).map_err(|e| SandboxError::errno_err("stat netns", shown, e))?;
    #[allow(clippy::useless_conversion)] // st_dev/st_ino widths differ between targets
    Ok((u64::from(st.st_dev), u64::from(st.st_ino)))
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

/// Starts `f` on a fresh, named OS thread; its result is then awaited with
/// [`OnThread::wait`] or, from blocking code, taken with [`OnThread::join`].
pub(crate) fn on_thread<F, R>(
    op: &'static str,
    object: impl Into<String>,
    f: F,
) -> Result<OnThread<R>, SandboxError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let object = object.into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The receiver may be gone (caller cancelled); the thread exits either way.
    let handle = spawn(op, &object, move || drop(tx.send(f())))?;
    Ok(OnThread {
        op,
        object,
        handle,
        rx,
    })
}

/// A thread started by [`on_thread`] and the way to its result.
pub(crate) struct OnThread<R> {
    op: &'static str,
    object: String,
    handle: std::thread::JoinHandle<()>,
    rx: tokio::sync::oneshot::Receiver<R>,
}

impl<R> OnThread<R> {
    /// Awaits the result without blocking the executor (the thread is not joined).
    pub(crate) async fn wait(self) -> Result<R, SandboxError> {
        let Self { op, object, rx, .. } = self;
        rx.await
            .map_err(|_| SandboxError::ThreadPanicked { op, object })
    }

    /// Blocks until the thread is gone, then takes its result.
    pub(crate) fn join(self) -> Result<R, SandboxError> {
        let Self {
            op,
            object,
            handle,
            mut rx,
        } = self;
        // A thread that panicked dropped its sender: then there is no result.
        let _ = handle.join();
        rx.try_recv()
            .map_err(|_| SandboxError::ThreadPanicked { op, object })
    }
}
