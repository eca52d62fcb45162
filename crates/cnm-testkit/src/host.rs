//! [`TestHost`]: a throwaway network namespace that plays "the host".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink, set_sysctls};
use cnm_types::IfName;
use ipnet::IpNet;
use tempfile::TempDir;
use tokio::sync::OnceCell;

use crate::mounts;

const NEEDS_ROOT: &str = "TestHost needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; \
                          run the privileged tests with `cargo xtask test`";

/// The host's end of the veth to the outside world.
const HOST_TO_OUTSIDE_IF: &str = "cnm-outside";
/// The outside world's end (inside its own namespace).
const OUTSIDE_IF: &str = "eth0";

// Documentation ranges (RFC 5737, RFC 3849); they only ever exist inside the test's namespaces.
const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

/// Where [`TestHost`]s make their run dirs, when [`set_run_dir_parent`] was called.
static RUN_DIR_PARENT: OnceLock<PathBuf> = OnceLock::new();

/// Makes every later [`TestHost`]'s run dir under `parent` instead of the temp dir: a tmpfs
/// there is what `/run/cnm` is on a real machine (a benchmark on a disk-backed `/tmp` would
/// count the file system's inode allocation for the netns files, sandbox directories and
/// their files). The state dir (the store) stays in the temp dir. Returns false, changing
/// nothing, if a parent was set already.
pub fn set_run_dir_parent(parent: PathBuf) -> bool {
    RUN_DIR_PARENT.set(parent).is_ok()
}

/// A throwaway network namespace standing in for the machine, with its own run and state dirs.
///
/// Loopback is up and forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) is on
/// inside it, as on a container host ([`TestHost::with_forwarding`] makes one that does not
/// forward, as a machine that is not a router). Everything it created goes away on drop: namespaces die
/// with their last file descriptor, mounts under its directories are detached, the directories
/// removed. Nothing is ever done in the machine's own namespace.
///
/// A cnm controller bound to this host: [`TestHost::controller`].
#[derive(Debug)]
pub struct TestHost {
    netns: NetNs,
    netlink: Netlink,
    outside: OnceCell<Outside>,
    // Drop order matters: the directories are unmounted in `Drop::drop`, then removed here.
    run_dir: TempDir,
    state_dir: TempDir,
}

impl TestHost {
    /// Creates the host namespace and its directories.
    ///
    /// Fails (never skips) when the process may not create namespaces, naming what is missing.
    pub async fn new() -> Result<TestHost> {
        Self::with_forwarding(true).await
    }

    /// Like [`TestHost::new`] with IPv4 and IPv6 forwarding both on (`true`) or both off. Set
    /// explicitly either way: a new namespace inherits IPv4 forwarding from the machine.
    pub async fn with_forwarding(forwarding: bool) -> Result<TestHost> {
        let netns = NetNs::create_anonymous().await.context(NEEDS_ROOT)?;
        let netlink = Netlink::connect(&netns)
            .await
            .context("failed to open netlink in the test host namespace")?;
        netlink
            .loopback_up()
            .await
            .context("failed to bring up loopback in the test host namespace")?;
        let value = if forwarding { "1" } else { "0" };
        set_sysctls(
            &netns,
            &[
                ("net.ipv4.ip_forward", value),
                ("net.ipv6.conf.all.forwarding", value),
            ],
        )
        .await
        .context("failed to set forwarding in the test host namespace")?;
        let mut run_dir = tempfile::Builder::new();
        run_dir.prefix("cnm-test-run-");
        let run_dir = match RUN_DIR_PARENT.get() {
            Some(parent) => run_dir.tempdir_in(parent),
            None => run_dir.tempdir(),
        }
        .context("failed to create a run dir")?;
        let state_dir = tempfile::Builder::new()
            .prefix("cnm-test-state-")
            .tempdir()
            .context("failed to create a state dir")?;
        tracing::debug!(run_dir = %run_dir.path().display(), "test host ready");
        Ok(TestHost {
            netns,
            netlink,
            outside: OnceCell::new(),
            run_dir,
            state_dir,
        })
    }

    /// The namespace that plays the host.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// A netlink handle whose socket lives in the host namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The run directory (what `/run/cnm` is on a real machine): netns bind mounts, sockets.
    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The state directory (what `/var/lib/cnm` is on a real machine): the store.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// A bare extra namespace (loopback up, nothing else), persisted under the run dir as
    /// `testkit-netns/NAME`, e.g. for a client that is neither host nor container.
    pub async fn sandbox_ns(&self, name: &str) -> Result<NetNs> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            bail!("invalid test namespace name {name:?}: must be one path component");
        }
        let path = self.run_dir().join("testkit-netns").join(name);
        let ns = NetNs::create(&path)
            .await
            .with_context(|| format!("failed to create test namespace {}", path.display()))?;
        Netlink::connect(&ns)
            .await
            .with_context(|| format!("failed to open netlink in test namespace {name}"))?
            .loopback_up()
            .await
            .with_context(|| format!("failed to bring up loopback in test namespace {name}"))?;
        Ok(ns)
    }

    /// The outside world, created on first use: a namespace joined to the host by a veth pair.
    ///
    /// The outside has only its on-link routes (198.51.100.0/24, 2001:db8:100::/64) and no
    /// default route, so a container's packets get an answer from the outside only if the host
    /// masquerades them behind its own outside address.
    pub async fn outside(&self) -> Result<&Outside> {
        self.outside.get_or_try_init(|| Outside::create(self)).await
    }

    /// A "LAN" the host is attached to (index 1 to 3): a namespace joined to the host by a
    /// veth `cnm-lanN`, on 203.0.113.64N/26 and 2001:db8:200:N::/64 (host .1 / ::1, LAN .2 /
    /// ::2), whose default routes go through the host. Two LANs reach each other only if the
    /// host routes between them.
    pub async fn lan(&self, index: u8) -> Result<Lan> {
        if !(1..=3).contains(&index) {
            bail!("LAN index {index} out of 1..=3");
        }
        let netns = NetNs::create_anonymous().await.context(NEEDS_ROOT)?;
        let netlink = Netlink::connect(&netns)
            .await
            .context("failed to open netlink in a LAN namespace")?;
        netlink.loopback_up().await?;
        let host_if = format!("cnm-lan{index}");
        let spec = LinkSpec::new(
            IfName::new(host_if.clone()).context("LAN veth name")?,
            LinkKind::Veth {
                peer_name: IfName::new(OUTSIDE_IF).context("LAN peer name")?,
                peer_ns: Some(netns.clone()),
                peer_mac: None,
                peer_mtu: None,
                peer_up: false,
            },
        );
        self.netlink
            .create_link(&spec)
            .await
            .with_context(|| format!("failed to create veth {host_if} to LAN {index}"))?;
        let host_ifindex = index_of(&self.netlink, &host_if).await?;
        let lan_ifindex = index_of(&netlink, OUTSIDE_IF).await?;
        // No duplicate address detection on either end: a link-local address still tentative
        // leaves the host without a source for neighbour solicitations for about a second.
        let key = format!("net.ipv6.conf.{host_if}.accept_dad");
        set_sysctls(&self.netns, &[(key.as_str(), "0")]).await?;
        let key = format!("net.ipv6.conf.{OUTSIDE_IF}.accept_dad");
        set_sysctls(&netns, &[(key.as_str(), "0")]).await?;
        self.netlink.set_up(host_ifindex).await?;
        netlink.set_up(lan_ifindex).await?;
        let base = 64 * index;
        let host_v4 = Ipv4Addr::new(203, 0, 113, base + 1);
        let lan_v4 = Ipv4Addr::new(203, 0, 113, base + 2);
        let host_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x200, index.into(), 0, 0, 0, 1);
        let lan_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x200, index.into(), 0, 0, 0, 2);
        for addr in [net(host_v4.into(), 26), net(host_v6.into(), PREFIX_V6)] {
            self.netlink
                .add_address(host_ifindex, addr)
                .await
                .with_context(|| format!("failed to add {addr} to {host_if}"))?;
        }
        for addr in [net(lan_v4.into(), 26), net(lan_v6.into(), PREFIX_V6)] {
            netlink
                .add_address(lan_ifindex, addr)
                .await
                .with_context(|| format!("failed to add {addr} in LAN {index}"))?;
        }
        for gw in [IpAddr::from(host_v4), IpAddr::from(host_v6)] {
            netlink
                .add_route(&cnm_sandbox::RouteSpec::default_via(gw, Some(lan_ifindex)))
                .await
                .with_context(|| {
                    format!("failed to add a default route via {gw} in LAN {index}")
                })?;
        }
        Ok(Lan {
            netns,
            netlink,
            addr_v4: lan_v4.into(),
            addr_v6: lan_v6.into(),
            host_addr_v4: host_v4.into(),
        })
    }
}

/// A LAN of a [`TestHost`] (see [`TestHost::lan`]).
#[derive(Debug)]
pub struct Lan {
    netns: NetNs,
    netlink: Netlink,
    addr_v4: IpAddr,
    addr_v6: IpAddr,
    host_addr_v4: IpAddr,
}

impl Lan {
    /// The LAN's namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// A netlink handle in the LAN's namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The LAN machine's IPv4 address.
    pub fn addr_v4(&self) -> IpAddr {
        self.addr_v4
    }

    /// The LAN machine's IPv6 address.
    pub fn addr_v6(&self) -> IpAddr {
        self.addr_v6
    }

    /// The host's IPv4 address on this LAN.
    pub fn host_addr_v4(&self) -> IpAddr {
        self.host_addr_v4
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Namespaces go with their fds; bind mounts under our directories must be detached
        // before TempDir can remove the mount-point files.
        mounts::unmount_all_under(self.run_dir.path());
        mounts::unmount_all_under(self.state_dir.path());
    }
}

/// The "outside world" of a [`TestHost`]: a namespace reachable only through the host.
#[derive(Debug)]
pub struct Outside {
    netns: NetNs,
    netlink: Netlink,
    host_ifindex: u32,
}

impl Outside {
    async fn create(host: &TestHost) -> Result<Outside> {
        let netns = NetNs::create_anonymous().await.context(NEEDS_ROOT)?;
        let netlink = Netlink::connect(&netns)
            .await
            .context("failed to open netlink in the outside namespace")?;
        netlink
            .loopback_up()
            .await
            .context("failed to bring up loopback in the outside namespace")?;

        let host_if = IfName::new(HOST_TO_OUTSIDE_IF).context("host-side veth name")?;
        let peer_if = IfName::new(OUTSIDE_IF).context("outside veth name")?;
        let mut spec = LinkSpec::new(
            host_if,
            LinkKind::Veth {
                peer_name: peer_if,
                peer_ns: Some(netns.clone()),
                peer_mac: None,
                peer_mtu: None,
                peer_up: true,
            },
        );
        spec.up = true;
        host.netlink().create_link(&spec).await.with_context(|| {
            format!("failed to create veth {HOST_TO_OUTSIDE_IF} to the outside namespace")
        })?;
        let host_ifindex = index_of(host.netlink(), HOST_TO_OUTSIDE_IF).await?;
        let outside_ifindex = index_of(&netlink, OUTSIDE_IF).await?;

        for addr in [
            net(HOST_V4.into(), PREFIX_V4),
            net(HOST_V6.into(), PREFIX_V6),
        ] {
            host.netlink()
                .add_address(host_ifindex, addr)
                .await
                .with_context(|| {
                    format!("failed to add {addr} to {HOST_TO_OUTSIDE_IF} in the test host")
                })?;
        }
        for addr in [
            net(OUTSIDE_V4.into(), PREFIX_V4),
            net(OUTSIDE_V6.into(), PREFIX_V6),
        ] {
            netlink
                .add_address(outside_ifindex, addr)
                .await
                .with_context(|| {
                    format!("failed to add {addr} to {OUTSIDE_IF} in the outside namespace")
                })?;
        }
        Ok(Outside {
            netns,
            netlink,
            host_ifindex,
        })
    }

    /// The outside namespace.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// A netlink handle in the outside namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The outside's IPv4 address (198.51.100.2).
    pub fn addr_v4(&self) -> IpAddr {
        OUTSIDE_V4.into()
    }

    /// The outside's IPv6 address (2001:db8:100::2).
    pub fn addr_v6(&self) -> IpAddr {
        OUTSIDE_V6.into()
    }

    /// The host's IPv4 address on the outside link (198.51.100.1): what masqueraded traffic shows.
    pub fn host_addr_v4(&self) -> IpAddr {
        HOST_V4.into()
    }

    /// The host's IPv6 address on the outside link (2001:db8:100::1).
    pub fn host_addr_v6(&self) -> IpAddr {
        HOST_V6.into()
    }

    /// Name of the host's interface towards the outside.
    pub fn host_ifname(&self) -> &'static str {
        HOST_TO_OUTSIDE_IF
    }

    /// Index of the host's interface towards the outside (in the host namespace).
    pub fn host_ifindex(&self) -> u32 {
        self.host_ifindex
    }
}

fn net(addr: IpAddr, prefix: u8) -> IpNet {
    IpNet::new(addr, prefix).expect("prefix lengths are constants within range")
}

async fn index_of(netlink: &Netlink, name: &str) -> Result<u32> {
    let link = netlink
        .link(name)
        .await
        .with_context(|| format!("failed to look up link {name}"))?;
    Ok(link
        .with_context(|| format!("link {name} is missing right after it was created"))?
        .index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_addresses_share_one_link_subnet_per_family() {
        let host4 = net(HOST_V4.into(), PREFIX_V4).trunc();
        assert!(host4.contains(&IpAddr::from(OUTSIDE_V4)));
        let host6 = net(HOST_V6.into(), PREFIX_V6).trunc();
        assert!(host6.contains(&IpAddr::from(OUTSIDE_V6)));
        assert!(IfName::new(HOST_TO_OUTSIDE_IF).is_ok() && IfName::new(OUTSIDE_IF).is_ok());
    }
}
