//! The system packages the tests need, installed with apt-get when missing.
//!
//! Keep the list here and only here: later issues add to it (iperf3, …). What building needs
//! (protoc for the etcd client) is here too, so that `cargo xtask test` on a fresh machine builds;
//! `.ci/run` installs the build packages itself before it starts cargo.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A Debian package and a command that proves it is installed.
struct SystemPackage {
    /// The Debian package name.
    deb: &'static str,
    /// A program it provides; found on `PATH` (or in an sbin directory) means installed. An
    /// absolute path names a file instead (for packages that install no program).
    provides: &'static str,
}

/// Everything the privileged tests and the xtask itself call out to.
const SYSTEM_PACKAGES: &[SystemPackage] = &[
    SystemPackage {
        deb: "iproute2",
        provides: "ip",
    },
    SystemPackage {
        deb: "nftables",
        provides: "nft",
    },
    SystemPackage {
        deb: "iptables",
        provides: "iptables",
    },
    SystemPackage {
        deb: "conntrack",
        provides: "conntrack",
    },
    SystemPackage {
        deb: "procps",
        provides: "sysctl",
    },
    // `unshare` runs the privileged phase in a private mount namespace.
    SystemPackage {
        deb: "util-linux",
        provides: "unshare",
    },
    // `mount` puts a tmpfs on /run/cnm inside that namespace.
    SystemPackage {
        deb: "mount",
        provides: "mount",
    },
    // Demo servers inside sandboxes (e2e tests, the quickstart test).
    SystemPackage {
        deb: "python3-minimal",
        provides: "python3",
    },
    // The Docker SDK for Python (PyPI's `docker`, packaged by Debian) for cnm-daemon's
    // python_sdk test, which drives cnmd the way compose does. Keyed on the module itself.
    SystemPackage {
        deb: "python3-docker",
        provides: "/usr/lib/python3/dist-packages/docker/__init__.py",
    },
    // An unprivileged HTTP client over the daemon's unix socket (socket access tests).
    SystemPackage {
        deb: "curl",
        provides: "curl",
    },
    // The daemon's tests drive cnmd with the real docker CLI, and the differential test runs
    // the same sequence against a real dockerd (in throwaway namespaces; never as a service).
    // Keyed on Debian's dockerd by path: a machine may have a docker client without the
    // daemon, or another engine elsewhere on PATH; the tests use /usr/sbin/dockerd (20.10) and
    // /usr/bin/docker (its 20.10 CLI) by path.
    SystemPackage {
        deb: "docker.io",
        provides: "/usr/sbin/dockerd",
    },
    // The differential test's containers: an image made of busybox-static's one binary, imported
    // from a tarball (no registry is reachable).
    // Keyed on the package's own file: Debian's dynamic `busybox` installs /bin/busybox too
    // (the two replace each other), and a dynamic binary would not run in the image.
    SystemPackage {
        deb: "busybox-static",
        provides: "/usr/share/doc/busybox-static/copyright",
    },
    // cnm-dns proves interoperability with a real resolver client.
    SystemPackage {
        deb: "bind9-dnsutils",
        provides: "dig",
    },
    // The systemd-resolved registration tests run a private bus (own config and socket in a
    // temporary directory) with a fake org.freedesktop.resolve1 written in Rust (zbus).
    SystemPackage {
        deb: "dbus-daemon",
        provides: "dbus-daemon",
    },
    // Building: the etcd client's build script compiles etcd's .proto files with protoc, which
    // needs protobuf's well-known types (google/protobuf/*.proto) from libprotobuf-dev.
    SystemPackage {
        deb: "protobuf-compiler",
        provides: "protoc",
    },
    SystemPackage {
        deb: "libprotobuf-dev",
        provides: "/usr/include/google/protobuf/descriptor.proto",
    },
    // The cluster-store tests start a real etcd in a namespace of their own, and use etcdctl
    // as an independent client (compaction, revocation, listing the raw keys).
    SystemPackage {
        deb: "etcd-server",
        provides: "etcd",
    },
    SystemPackage {
        deb: "etcd-client",
        provides: "etcdctl",
    },
    // cnm-bench's smoke test of the overlay group measures throughput across hosts with iperf3.
    SystemPackage {
        deb: "iperf3",
        provides: "iperf3",
    },
];

/// Root runs tools from sbin even when `PATH` lacks it (e.g. `sudo` with a user's PATH).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Whether `program` is on `PATH` (like `command -v`) or in a standard system directory.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The effective uid, from /proc (std has no geteuid and xtask stays dependency-light).
pub fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let uid_line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid: line in /proc/self/status")?;
    // Fields: real, effective, saved, filesystem.
    let effective = uid_line
        .split_whitespace()
        .nth(1)
        .context("malformed Uid: line in /proc/self/status")?;
    Ok(effective == "0")
}

fn is_present(p: &SystemPackage) -> bool {
    if p.provides.starts_with('/') {
        Path::new(p.provides).is_file()
    } else {
        find_program(p.provides).is_some()
    }
}

fn missing() -> Vec<&'static SystemPackage> {
    SYSTEM_PACKAGES.iter().filter(|p| !is_present(p)).collect()
}

/// Makes sure every package in [`SYSTEM_PACKAGES`] is installed, installing the missing ones as root.
pub fn ensure_installed() -> Result<()> {
    let missing = missing();
    if missing.is_empty() {
        let names: Vec<_> = SYSTEM_PACKAGES.iter().map(|p| p.deb).collect();
        println!("xtask: all present: {}", names.join(" "));
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.deb).collect();
    let list = names.join(" ");
    if !is_root()? {
        bail!(
            "missing system packages: {list}; run as root so xtask can `apt-get install` them, or install them yourself"
        );
    }
    if crate::packages::find_program("apt-get").is_none() {
        bail!(
            "missing system packages: {list}; apt-get is not available, install them with your package manager"
        );
    }
    println!("xtask: installing missing system packages: {list}");
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&names);
    {
        // Packages such as docker.io start their daemons from the maintainer scripts; a daemon
        // started here would program the machine's own namespace, which tests never touch.
        let _no_services = NoServiceStarts::install()?;
        apt_get(&install)?;
    }
    let still: Vec<_> = self::missing()
        .iter()
        .map(|p| format!("{} (no `{}`)", p.deb, p.provides))
        .collect();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    Ok(())
}

/// Debian's `policy-rc.d` hook answering 101 ("action forbidden") to every service start while
/// it exists; removed again on drop unless someone else had put one there.
pub(crate) struct NoServiceStarts {
    created: bool,
}

impl NoServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    pub(crate) fn install() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if Path::new(Self::PATH).exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(
            Self::PATH,
            "#!/bin/sh\n# written by cargo xtask while installing test tools\nexit 101\n",
        )
        .with_context(|| format!("failed to write {}", Self::PATH))?;
        std::fs::set_permissions(Self::PATH, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("failed to make {} executable", Self::PATH))?;
        Ok(Self { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = std::fs::remove_file(Self::PATH)
        {
            eprintln!("xtask: failed to remove {}: {e}", Self::PATH);
        }
    }
}

/// Runs `apt-get` non-interactively, failing when it fails.
pub(crate) fn apt_get(args: &[&str]) -> Result<()> {
    println!("xtask: $ apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("failed to start apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_list_names_each_package_once() {
        let mut names: Vec<_> = SYSTEM_PACKAGES.iter().map(|p| p.deb).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYSTEM_PACKAGES.len());
    }

    #[test]
    fn finds_a_program_every_system_has_and_not_a_made_up_one() {
        assert!(find_program("sh").is_some());
        assert!(find_program("cnm-no-such-program").is_none());
    }
}
