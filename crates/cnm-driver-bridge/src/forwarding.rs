//! IP forwarding in the host namespace, without turning the host into an open router.
//!
//! A bridge network needs the host to forward (`net.ipv4.ip_forward`,
//! `net.ipv6.conf.all.forwarding`). On a host that was not forwarding, turning it on would also
//! route between the host's other interfaces (two LANs, a LAN and a VPN…). So when cnm is the
//! one that turns a family's forwarding on, it first makes the firewall drop forwarded traffic
//! of that family that neither comes from nor goes to a cnm bridge (Docker sets its FORWARD
//! policy to DROP for the same reason), then turns it on. A host that was already forwarding
//! keeps forwarding as it did: cnm adds no drop.
//!
//! "cnm turned it on" is remembered across restarts of cnmd in a marker file per family under
//! `<run dir>/bridge/`: the run dir is a tmpfs (`/run/cnm`), cleared by a reboot exactly when
//! the kernel resets forwarding to off, so the marker lives as long as the state it describes.
//! When the driver first uses the firewall and a marker exists, the drop is put back (in the
//! controller's one transaction on a restart, with everything else). While the firewall is
//! loading, forwarding that is off is turned on only once that transaction is in the kernel
//! ([`cnm_firewall::Firewall::after_loading`]), so the drop is always there first.
//!
//! The driver-wide option [`crate::options::IP_FORWARD_NO_DROP`] (the daemon's
//! `--ip-forward-no-drop`) opts out: no drop is ever added, and one in place is removed.

use cnm_types::FailedTo;
use std::path::{Path, PathBuf};

use cnm_sandbox::{IpFamily, NetNs, get_sysctl, set_sysctls};

use crate::firewall::FirewallHandle;
use crate::{BridgeDriver, BridgeError, lock};

/// Records that cnm turns `family`'s forwarding on (`marker`), then turns it on in `ns`.
async fn turn_on(ns: &NetNs, marker: &Path, family: IpFamily) -> Result<(), BridgeError> {
    let record = || -> std::io::Result<()> {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            marker,
            format!(
                "cnm turned {} on in this network namespace; forwarded traffic that is not \
                 cnm's is dropped (see --ip-forward-no-drop)\n",
                key(family)
            ),
        )
    };
    record().map_err(|source| BridgeError::RunDir {
        op: "record that cnm turns forwarding on in",
        path: marker.display().to_string(),
        source,
    })?;
    set_sysctls(ns, &[(key(family), "1")])
        .await
        .map_err(|e| BridgeError::failed("enable forwarding in", ns.to_string(), e))
}

/// The sysctl that turns forwarding of `family` on.
pub(crate) fn key(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "net.ipv4.ip_forward",
        IpFamily::V6 => "net.ipv6.conf.all.forwarding",
    }
}

pub(crate) const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

impl BridgeDriver {
    /// The marker saying cnm turned on forwarding of `family` in this host namespace.
    fn marker(&self, family: IpFamily) -> PathBuf {
        let name = match family {
            IpFamily::V4 => "ipv4-forwarding-enabled-by-cnm",
            IpFamily::V6 => "ipv6-forwarding-enabled-by-cnm",
        };
        self.ctx.run_dir.join("bridge").join(name)
    }

    fn no_drop(&self) -> bool {
        lock(&self.config).ip_forward_no_drop
    }

    /// When the firewall opens: the families cnm turned on in an earlier run get their drop
    /// back (unless opted out).
    pub(crate) async fn restore_forward_drop(
        &self,
        fw: &FirewallHandle,
    ) -> Result<(), BridgeError> {
        if self.no_drop() {
            return Ok(());
        }
        for family in FAMILIES {
            if self.marker(family).exists() {
                fw.set_forward_drop(family, true).await?;
            }
        }
        Ok(())
    }

    /// Makes the host forward the families `plan` needs. While the firewall is loading (a
    /// restart), forwarding that is off is only turned on once the firewall committed, so the
    /// drop is in the kernel first.
    pub(crate) async fn enable_forwarding(
        &self,
        families: &[IpFamily],
        fw: &FirewallHandle,
    ) -> Result<(), BridgeError> {
        for &family in families {
            let key = key(family);
            let value = get_sysctl(&self.ctx.host_ns, key).await.map_err(|e| {
                BridgeError::failed("read", format!("{key} in {}", self.ctx.host_ns), e)
            })?;
            if value.trim() == "1" {
                continue;
            }
            if !self.no_drop() {
                fw.set_forward_drop(family, true).await?;
            }
            let (ns, marker) = (self.ctx.host_ns.clone(), self.marker(family));
            if fw.is_loading() {
                let slot = usize::from(family == IpFamily::V6);
                if std::mem::replace(&mut lock(&self.deferred_forwarding)[slot], true) {
                    continue; // already waiting
                }
                fw.after_loading(format!("turn {key} on"), async move {
                    turn_on(&ns, &marker, family)
                        .await
                        .map_err(|e| Box::new(e) as cnm_firewall::BoxError)
                })
                .await?;
                continue;
            }
            turn_on(&ns, &marker, family).await?;
        }
        Ok(())
    }

    /// Applies the driver-wide opt-out to a firewall already open.
    pub(crate) async fn apply_forward_drop_config(
        &self,
        fw: &FirewallHandle,
    ) -> Result<(), BridgeError> {
        for family in FAMILIES {
            let on = !self.no_drop() && self.marker(family).exists();
            fw.set_forward_drop(family, on).await?;
        }
        Ok(())
    }
}
