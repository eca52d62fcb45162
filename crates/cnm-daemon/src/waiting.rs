//! Networks that wait for a plugin come back the moment it appears.
//!
//! At start the controller reloads every recorded network; one whose driver or IPAM driver is a
//! plugin that is not there (no socket or spec file answers its name) waits, its name, pools,
//! links and joins kept ([`Controller::waiting_networks`]). cnmd watches the plugin directories
//! (`--plugin-dir`) with inotify for a socket, spec file or subdirectory named like a driver or
//! IPAM driver something waits for (`NAME.sock`, `NAME.spec`, `NAME.json`, `NAME/…`), and then
//! asks the controller to restore what waits ([`Controller::restore_waiting`]), which finds the
//! plugin by name and brings its networks back with their endpoints and joins. A directory
//! that does not exist yet is watched for from its parent.
//!
//! inotify is the mechanism; a slow retry with back-off ([`BACKSTOP_FIRST`], doubling up to
//! [`BACKSTOP_MAX`]) is the backstop for what it cannot see (a plugin behind a spec file whose
//! address comes up later, a socket that appeared before it listened and was refused, a plugin
//! directory deeper than one missing level). The watch ends when nothing waits any more, or at
//! shutdown. A network create that finds a plugin others wait for restores them in the
//! controller itself ([`Controller::new_network`]).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use cnm::{Controller, CoreError};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// The first wait of the backstop retry; each retry that finds nothing doubles it.
pub const BACKSTOP_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two backstop retries.
pub const BACKSTOP_MAX: Duration = Duration::from_secs(300);

/// The names something waits for: drivers and IPAM drivers.
fn waited(ctl: &Controller) -> BTreeSet<String> {
    ctl.waiting_drivers()
        .into_iter()
        .chain(ctl.waiting_ipams())
        .collect()
}

/// The plugin name a file in a plugin directory stands for: `NAME.sock`, `NAME.spec` and
/// `NAME.json` stand for `NAME`, and so does a directory `NAME` (holding `NAME.sock` and so on).
fn plugin_name(file: &OsStr) -> Option<&str> {
    let file = file.to_str()?;
    for ext in [".sock", ".spec", ".json"] {
        if let Some(stem) = file.strip_suffix(ext) {
            return Some(stem);
        }
    }
    Some(file)
}

/// The inotify instance, readable through tokio.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The inotify watches on the plugin directories.
struct Watcher {
    fd: AsyncFd<Fd>,
    /// What each watch is on.
    watches: HashMap<WatchDescriptor, PathBuf>,
}

/// What a file appearing in a directory may be: a plugin's socket or spec, a plugin's own
/// subdirectory, or a plugin directory made after cnmd started.
const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB);

impl Watcher {
    fn new() -> std::io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the inotify descriptor (an `OwnedFd` inside `Inotify`), which stays
        // open and the same until the `AsyncFd` drops it with its owner; `as_raw_fd` always
        // returns that descriptor.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }.map_err(std::io::Error::from)?;
        Ok(Watcher {
            fd,
            watches: HashMap::new(),
        })
    }

    /// Watches each plugin directory and, in it, the subdirectory of each waited name (a
    /// directory that does not exist yet: its parent). Returns whether a watch was added: a
    /// plugin may have appeared where nothing watched.
    fn ensure(&mut self, dirs: &[PathBuf], waited: &BTreeSet<String>) -> bool {
        let mut added = false;
        let mut paths: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            paths.push(dir.clone());
            paths.extend(waited.iter().map(|n| dir.join(n)));
        }
        for path in paths {
            let target = if path.is_dir() {
                path
            } else {
                match path.parent() {
                    Some(parent) if parent.is_dir() => parent.to_owned(),
                    _ => continue,
                }
            };
            if self.watches.values().any(|p| *p == target) {
                continue;
            }
            match self.fd.get_ref().0.add_watch(&target, MASK) {
                Ok(wd) => {
                    tracing::debug!(dir = %target.display(), "watching for plugins");
                    self.watches.insert(wd, target);
                    added = true;
                }
                Err(e) => {
                    tracing::debug!(dir = %target.display(), error = %e, "cannot watch for plugins");
                }
            }
        }
        added
    }

    /// Waits for a file to appear whose name is a waited one, or a directory named like one
    /// of `dirs` (a plugin directory made after start).
    async fn next(&mut self, dirs: &[PathBuf], waited: &BTreeSet<String>) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let events = match guard.get_inner().0.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut hit = false;
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The directory went away: watched again (or its parent) by `ensure`.
                    self.watches.remove(&ev.wd);
                    hit = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    hit = true;
                    continue;
                }
                let Some(name) = ev.name.as_deref() else {
                    continue;
                };
                let dir = self.watches.get(&ev.wd);
                let in_plugin_dir = dir.is_some_and(|d| {
                    d.file_name()
                        .and_then(OsStr::to_str)
                        .is_some_and(|n| waited.contains(n))
                });
                let makes_plugin_dir =
                    dir.is_some_and(|d| dirs.iter().any(|p| p.parent() == Some(d.as_path())));
                if in_plugin_dir
                    || plugin_name(name).is_some_and(|n| waited.contains(n))
                    || (makes_plugin_dir
                        && dirs
                            .iter()
                            .any(|p| p.file_name() == Some(name) && p.is_dir()))
                {
                    tracing::debug!(file = ?name, dir = ?dir.map(|d| d.display().to_string()), "a waited plugin may have appeared");
                    hit = true;
                }
            }
            if hit {
                return Ok(());
            }
        }
    }
}

/// Restores networks that wait for a plugin as their plugin appears in `dirs`, until none
/// waits or `shutdown` turns true (see the module's documentation).
pub(crate) async fn restore_when_plugins_appear(
    ctl: Controller,
    dirs: Vec<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watcher = match Watcher::new() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the plugin directories (inotify): networks waiting for a plugin are retried with back-off only");
            None
        }
    };
    let mut backstop = BACKSTOP_FIRST;
    let mut attempts = 0u32;
    loop {
        let waited = waited(&ctl);
        if waited.is_empty() {
            tracing::info!(attempts, "no network waits for a plugin any more");
            return;
        }
        // A watch added now may have missed a plugin that appeared before it: looked at at once.
        let fresh = watcher.as_mut().is_some_and(|w| w.ensure(&dirs, &waited));
        if !fresh {
            let event = async {
                match watcher.as_mut() {
                    Some(w) => w.next(&dirs, &waited).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                r = event => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "watching the plugin directories failed: networks waiting for a plugin are retried with back-off only");
                        watcher = None;
                        continue;
                    }
                    backstop = BACKSTOP_FIRST;
                }
                () = tokio::time::sleep(backstop) => {
                    backstop = (backstop * 2).min(BACKSTOP_MAX);
                }
            }
        }
        attempts += 1;
        let restore = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            r = ctl.restore_waiting() => r,
        };
        let still = self::waited(&ctl);
        let back: Vec<&String> = waited.difference(&still).collect();
        match restore {
            Ok(()) if !back.is_empty() => {
                tracing::info!(plugins = ?back, waiting = ?still, "plugins appeared: the networks waiting for them are restored");
            }
            Ok(()) => tracing::debug!(waiting = ?still, "the plugins waited for are still missing"),
            Err(CoreError::Shutdown) => return,
            Err(e) => {
                tracing::warn!(error = %e, waiting = ?still, "restoring networks waiting for a plugin failed; trying again when a plugin appears or after a while");
            }
        }
    }
}

/// The plugin directories to watch, each once.
pub(crate) fn plugin_dirs(config: &cnm_driver_remote::RemoteConfig) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for d in config.dirs.sockets.iter().chain(&config.dirs.specs) {
        if !out.iter().any(|o| o == d) {
            out.push(d.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn plugin_names_of_files() {
        for (file, name) in [
            ("p.sock", "p"),
            ("p.spec", "p"),
            ("p.json", "p"),
            ("p", "p"),
            ("a.b.sock", "a.b"),
        ] {
            assert_eq!(plugin_name(OsStr::new(file)), Some(name), "{file}");
        }
    }

    #[test]
    fn plugin_dirs_are_watched_once() {
        let config = cnm_driver_remote::RemoteConfig {
            dirs: cnm_driver_remote::plugin::PluginDirs::new(
                vec!["/a".into(), "/b".into()],
                vec!["/a".into(), "/c".into()],
            ),
            ..Default::default()
        };
        let dirs: Vec<PathBuf> = plugin_dirs(&config);
        assert_eq!(
            dirs,
            [Path::new("/a"), Path::new("/b"), Path::new("/c")]
                .map(Path::to_path_buf)
                .to_vec()
        );
    }
}
