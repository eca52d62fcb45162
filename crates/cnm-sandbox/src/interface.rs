//! Finishing a container's interface in one call: what the controller does after a driver's
//! join (MAC, MTU, addresses, IPv6 on, up, routes; moving the interface in and renaming it first
//! when the driver made it elsewhere).
//!
//! The messages go out back to back on the namespace's netlink socket without waiting for each
//! acknowledgement: the kernel handles one socket's requests in order, so every address is
//! there when the link comes up and the link is up when its routes are added, for the cost of
//! one round trip instead of one per message.

use std::fmt;

use cnm_types::{Cleanup, IfName, MacAddress};
use futures::future::{BoxFuture, FutureExt, try_join_all};
use ipnet::IpNet;

use crate::{InterfaceSysctl, Netlink, RouteSpec, SandboxError, set_sysctls};

/// Where the interface to configure is.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum InterfaceSource {
    /// Already in the namespace the call is made on, under `name`; `index` saves its lookup
    /// when known.
    Existing {
        /// The interface's name.
        name: IfName,
        /// Its index, when the caller knows it.
        index: Option<u32>,
    },
    /// In the namespace of `from` under `name`: moved into the namespace the call is made on and
    /// renamed to `rename` in the same message (with `IFLA_NET_NS_FD` the kernel takes
    /// `IFLA_IFNAME` as the name in the target namespace).
    MoveIn {
        /// A handle in the namespace the interface is in now.
        from: Netlink,
        /// Its name there.
        name: IfName,
        /// Its name in this namespace.
        rename: IfName,
    },
}

impl InterfaceSource {
    /// The interface's final name.
    pub fn name(&self) -> &IfName {
        match self {
            Self::Existing { name, .. } => name,
            Self::MoveIn { rename, .. } => rename,
        }
    }
}

/// Everything that makes an interface ready, applied by [`Netlink::configure_interface`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InterfaceConfig {
    /// Where the interface is.
    pub source: InterfaceSource,
    /// The MAC to set (none: keep the one it has).
    pub mac: Option<MacAddress>,
    /// The MTU to set (none: keep the one it has).
    pub mtu: Option<u32>,
    /// Addresses to add, with their prefix length (IPv6 ones without duplicate detection, so
    /// they are usable at once).
    pub addresses: Vec<IpNet>,
    /// Turn IPv6 on for this interface (`disable_ipv6 = 0`) before its addresses are added:
    /// for namespaces whose interfaces are born with IPv6 off.
    pub enable_ipv6: bool,
    /// Per-interface sysctls, set (after IPv6 is turned on, before the addresses) under the
    /// interface's final name.
    pub sysctls: Vec<InterfaceSysctl>,
    /// Bring it up.
    pub up: bool,
    /// Routes through it; each one's `oif` is set to the interface's index.
    pub routes: Vec<RouteSpec>,
}

impl InterfaceConfig {
    /// A configuration that brings the interface up and changes nothing else.
    pub fn new(source: InterfaceSource) -> Self {
        Self {
            source,
            mac: None,
            mtu: None,
            addresses: Vec::new(),
            enable_ipv6: false,
            sysctls: Vec::new(),
            up: true,
            routes: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), SandboxError> {
        crate::link::validate_mac(self.mac)?;
        crate::link::validate_mtu(self.mtu)?;
        for route in &self.routes {
            // Checked as it will be added: through this interface (an on-link route, with no
            // gateway, is valid because of that).
            let mut through = *route;
            through.oif = Some(through.oif.unwrap_or(u32::MAX));
            crate::netlink::validate_route(&through)?;
        }
        Ok(())
    }
}

impl fmt::Display for InterfaceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Existing { name, .. } => write!(f, "{name}"),
            Self::MoveIn { from, name, rename } => {
                write!(f, "{name} (moved in from {} as {rename})", from.netns())
            }
        }
    }
}

impl Netlink {
    /// Configures an interface in this handle's namespace as `config` says, moving it in first
    /// for [`InterfaceSource::MoveIn`]; returns its index here.
    ///
    /// Bad values are refused before anything is sent. On failure after a move, the interface is
    /// moved back out under its old name (addresses and routes do not travel across namespaces),
    /// so the caller finds it where it was; an interface already inside keeps whatever of the
    /// configuration was applied, for the caller to remove with it.
    pub async fn configure_interface(&self, config: &InterfaceConfig) -> Result<u32, SandboxError> {
        config.validate()?;
        let (index, moved_from) = match &config.source {
            InterfaceSource::Existing {
                index: Some(index), ..
            } => (*index, None),
            InterfaceSource::Existing { name, index: None } => {
                (self.require_link(name).await?, None)
            }
            InterfaceSource::MoveIn { from, name, rename } => {
                let host_index = from.require_link(name).await?;
                from.move_to_netns(host_index, self.netns(), Some(rename))
                    .await?;
                match self.require_link(rename).await {
                    Ok(index) => (index, Some((from, name))),
                    Err(e) => return Err(self.move_back(e, None, from, name, rename).await),
                }
            }
        };
        match self.apply_config(index, config).await {
            Ok(()) => Ok(index),
            Err(e) => match moved_from {
                Some((from, name)) => Err(self
                    .move_back(e, Some(index), from, name, config.source.name())
                    .await),
                None => Err(e),
            },
        }
    }

    /// The index of the link called `name` in this namespace; `NotFound` when there is none.
    async fn require_link(&self, name: &IfName) -> Result<u32, SandboxError> {
        self.link(name.as_str())
            .await?
            .map(|l| l.index)
            .ok_or_else(|| {
                SandboxError::kernel(
                    "look up",
                    format!("{name} in {}", self.netns()),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })
    }

    /// Gives an interface moved in back to `from` under `name`; `cause` is why.
    async fn move_back(
        &self,
        cause: SandboxError,
        index: Option<u32>,
        from: &Netlink,
        name: &IfName,
        rename: &IfName,
    ) -> SandboxError {
        let index = match index {
            Some(i) => Ok(i),
            None => self.require_link(rename).await,
        };
        let back = match index {
            Ok(i) => self.move_to_netns(i, from.netns(), Some(name)).await,
            Err(e) => Err(e),
        };
        match back {
            Ok(()) => cause,
            Err(e) => {
                tracing::warn!(interface = %name, error = %e, "failed to move an interface back after a failed set-up");
                cause.with_cleanup(vec![e])
            }
        }
    }

    /// IPv6 on and the interface's sysctls (the one step that needs a thread in the namespace,
    /// one thread for all of them), then MAC, MTU, addresses, up and routes, sent back to back.
    async fn apply_config(&self, index: u32, config: &InterfaceConfig) -> Result<(), SandboxError> {
        let name = config.source.name();
        let mut sysctls: Vec<(String, &str)> = Vec::with_capacity(1 + config.sysctls.len());
        if config.enable_ipv6 {
            sysctls.push((format!("net/ipv6/conf/{name}/disable_ipv6"), "0"));
        }
        for s in &config.sysctls {
            sysctls.push((s.key(name.as_str()), s.value()));
        }
        if !sysctls.is_empty() {
            let settings: Vec<(&str, &str)> =
                sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            set_sysctls(self.netns(), &settings).await?;
        }
        let mut steps: Vec<BoxFuture<'_, Result<(), SandboxError>>> =
            Vec::with_capacity(3 + config.addresses.len() + config.routes.len());
        if let Some(mac) = config.mac {
            steps.push(self.set_mac(index, mac).boxed());
        }
        if let Some(mtu) = config.mtu {
            steps.push(self.set_mtu(index, mtu).boxed());
        }
        for addr in &config.addresses {
            steps.push(self.add_address(index, *addr).boxed());
        }
        if config.up {
            steps.push(self.set_up(index).boxed());
        }
        for route in &config.routes {
            let mut route = *route;
            route.oif = Some(index);
            steps.push(async move { self.add_route(&route).await }.boxed());
        }
        try_join_all(steps).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_checked_as_going_through_the_interface() {
        let mut config = InterfaceConfig::new(InterfaceSource::Existing {
            name: IfName::new("eth0").unwrap(),
            index: None,
        });
        // On link, no gateway: valid, since its output interface is the one configured (a
        // remote plugin's connected static route, issue 13).
        config.routes = vec![RouteSpec::on_link("192.0.2.0/24".parse().unwrap(), None)];
        config.validate().unwrap();
        // A gateway of the other family is still refused before anything is sent.
        config.routes = vec![RouteSpec::via(
            "192.0.2.0/24".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            None,
        )];
        let e = config.validate().unwrap_err();
        assert!(e.to_string().contains("fd00::1"), "{e}");
    }
}
