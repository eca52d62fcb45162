//! [`Sandbox`]: a handle to one container's network stack (a persisted network namespace, its
//! hosts file and resolv.conf).
//!
//! A sandbox's namespace is made with `net.ipv6.conf.default.disable_ipv6 = 1`, so every
//! interface a driver creates in it (or the controller moves in) starts with IPv6 off, not even a
//! link-local address (CVE-2024-32473); a join turns IPv6 on for the interface of an endpoint that
//! has an IPv6 address, before adding it. Loopback predates the default and keeps `::1`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnm_sandbox::exec::{BindMount, SandboxEntry};
use cnm_sandbox::{NetNs, Netlink};
use cnm_types::IfName;

use crate::CoreError;
use crate::endpoint::Endpoint;
use crate::model::sandbox::SandboxInner;
use crate::network::Network;
use crate::ops::{self, run_op};
use crate::options::JoinOptions;
use crate::port::PortBinding;
use crate::state::{CoreRef, upgrade};

/// A container's sandbox. Cheap to clone; a handle to the controller's state that does not keep
/// the controller alive (see [`Network`]).
#[derive(Clone)]
pub struct Sandbox {
    core: CoreRef,
    inner: Arc<SandboxInner>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.inner.short())
            .field("container_id", &self.inner.container_id)
            .field("key", &self.inner.key())
            .finish()
    }
}

impl Sandbox {
    pub(crate) fn new(core: CoreRef, inner: Arc<SandboxInner>) -> Self {
        Self { core, inner }
    }

    pub(crate) fn inner(&self) -> &Arc<SandboxInner> {
        &self.inner
    }

    #[cfg(test)]
    pub(crate) fn core_ref(&self) -> CoreRef {
        self.core.clone()
    }

    /// The 64-hex-character id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The container's id.
    pub fn container_id(&self) -> &str {
        &self.inner.container_id
    }

    /// The sandbox key: the path of the persisted network namespace.
    pub fn key(&self) -> &Path {
        self.inner.key()
    }

    /// The network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns.ns
    }

    /// A netlink handle inside the namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.inner.ns.netlink
    }

    /// The container's hosts file.
    pub fn hosts_path(&self) -> PathBuf {
        self.inner.hosts_path()
    }

    /// The container's resolv.conf.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.inner.resolv_conf_path()
    }

    /// What a runtime applies to the command it runs in this container, before it spawns it:
    /// the command starts in the sandbox's network namespace, with the sandbox's hosts file and
    /// resolv.conf bind-mounted over `/etc/hosts` and `/etc/resolv.conf` in a mount namespace
    /// of its own, and with the sandbox's hostname (when it was given one) in a UTS namespace
    /// of its own. Works from a multi-threaded (tokio) program (a `tokio::process::Command` is
    /// made `From` the `std` one); the library runs nothing itself.
    ///
    /// ```no_run
    /// # fn run(sandbox: &cnm_core::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
    /// let entry = sandbox.entry();
    /// let mut cmd = std::process::Command::new("/bin/sh");
    /// cmd.args(["-c", "ip addr; cat /etc/hosts"]);
    /// entry.apply(&mut cmd)?;                           // checked here, entered in the child
    /// let child = cmd.spawn().map_err(|e| entry.spawn_error(e))?;   // names the sandbox
    /// # let _ = child; Ok(()) }
    /// ```
    ///
    /// The files are rewritten in place as endpoints join and leave, so a running command sees
    /// the changes. Add more (a root filesystem, other mounts) with
    /// [`SandboxEntry::bind`] before applying.
    pub fn entry(&self) -> SandboxEntry {
        let entry = SandboxEntry::new(self.netns().clone())
            .bind(BindMount::new(self.hosts_path(), "/etc/hosts"))
            .bind(BindMount::new(self.resolv_conf_path(), "/etc/resolv.conf"));
        match &self.inner.options.hostname {
            Some(h) => entry.hostname(h.clone()),
            None => entry,
        }
    }

    /// The options it was created with.
    pub fn options(&self) -> &JoinOptions {
        &self.inner.options
    }

    /// The joined endpoints with their interface names, in join order.
    pub fn endpoints(&self) -> Vec<(Endpoint, Option<IfName>)> {
        self.inner
            .state()
            .joined
            .iter()
            .map(|j| {
                (
                    Endpoint::new(self.core.clone(), j.ep.clone()),
                    j.ifname.clone(),
                )
            })
            .collect()
    }

    /// The endpoint giving the default route, if any.
    pub fn gateway_endpoint(&self) -> Option<Endpoint> {
        let st = self.inner.state();
        st.gateway_join()
            .map(|j| Endpoint::new(self.core.clone(), j.ep.clone()))
    }

    /// The ports published for the gateway endpoint, as the driver made them.
    pub fn published_ports(&self) -> Vec<PortBinding> {
        self.inner
            .state()
            .joined
            .iter()
            .flat_map(|j| j.published.iter().copied())
            .collect()
    }

    /// Leaves every endpoint (they stay, free to join elsewhere, but for its endpoint on the
    /// gateway network, which is deleted), then removes the namespace, the files and the record.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let sb = self.inner.clone();
        run_op(
            upgrade(&self.core)?,
            "delete sandbox",
            self.inner.short().to_owned(),
            |core| async move {
                let deleted = ops::sandbox_delete::delete_sandbox(core.clone(), sb).await?;
                let mut errors = crate::undo::Errors::default();
                errors.check(deleted.kernel);
                errors.check(ops::gateway_network::delete_freed(&core, &deleted.endpoints).await);
                errors.into_result()
            },
        )
        .await
    }

    /// Removes the container's networking: [`Sandbox::delete`], then deletes every endpoint that
    /// was joined to it (one deleted meanwhile counts as done); returns the endpoints deleted.
    pub async fn delete_with_endpoints(&self) -> Result<Vec<Endpoint>, CoreError> {
        let sb = self.inner.clone();
        let gone = run_op(
            upgrade(&self.core)?,
            "delete sandbox with its endpoints",
            self.inner.short().to_owned(),
            |core| ops::connect::delete_with_endpoints(core, sb),
        )
        .await?;
        Ok(gone
            .into_iter()
            .map(|e| Endpoint::new(self.core.clone(), e))
            .collect())
    }

    /// Disconnects the sandbox from `network`: its endpoint there leaves and is deleted (one
    /// deleted meanwhile, by a racing removal of the sandbox, counts as done). Returns that
    /// endpoint; refused (`Conflict`) when the sandbox is not on the network.
    pub async fn disconnect(&self, network: &Network) -> Result<Endpoint, CoreError> {
        let ep = self
            .inner
            .state()
            .joined
            .iter()
            .find(|j| j.ep.network.id == network.id())
            .map(|j| j.ep.clone())
            .ok_or_else(|| CoreError::NotConnected {
                container: self.container_id().to_owned(),
                network: network.name().to_owned(),
            })?;
        let (sb, e) = (self.inner.clone(), ep.clone());
        let object = format!("{} from network {}", self.inner.short(), network.name());
        run_op(upgrade(&self.core)?, "disconnect", object, |core| {
            ops::connect::disconnect(core, sb, e)
        })
        .await?;
        Ok(Endpoint::new(self.core.clone(), ep))
    }
}
