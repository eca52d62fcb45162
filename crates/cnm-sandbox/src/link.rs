//! What a link is (as read back) and what to create (as a validated spec).

use std::net::IpAddr;

use cnm_types::{IfName, MacAddress};

use crate::{NetNs, SandboxError};

/// A link to create: its name, type and the settings applied in the same create message.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// The final interface name.
    pub name: IfName,
    /// The link type and its type-specific settings.
    pub kind: LinkKind,
    /// MTU, if not the kernel default.
    pub mtu: Option<u32>,
    /// MAC address, if not random.
    pub mac: Option<MacAddress>,
    /// Index of the master (bridge) device to enslave it to.
    pub master: Option<u32>,
    /// Whether to bring the link up as it is created.
    pub up: bool,
    /// The namespace the link is born in (`IFLA_NET_NS_FD`), when not the handle's own: a
    /// macvlan or ipvlan made directly inside a sandbox, its parent still found (by index) in
    /// the handle's namespace. No move, and it starts with the sandbox's sysctl defaults (IPv6
    /// off in a cnm sandbox).
    pub netns: Option<NetNs>,
}

/// The link type and its type-specific settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A veth pair; the peer is created directly inside `peer_ns` (IFLA_NET_NS_FD) when given —
    /// no move needed.
    Veth {
        /// The peer's final name.
        peer_name: IfName,
        /// Namespace the peer is born in; `None` keeps it beside the first end.
        peer_ns: Option<NetNs>,
        /// The peer's MAC address.
        peer_mac: Option<MacAddress>,
        /// The peer's MTU (defaults to the first end's `mtu`).
        peer_mtu: Option<u32>,
        /// Whether the peer is brought up as it is created.
        peer_up: bool,
    },
    /// A VXLAN tunnel device.
    Vxlan {
        /// VXLAN network identifier (24 bits).
        vni: u32,
        /// Local source address of the tunnel.
        local: Option<IpAddr>,
        /// Multicast group or unicast remote.
        group: Option<IpAddr>,
        /// UDP destination port (4789 is the IANA port).
        port: u16,
        /// Whether the device learns remote MACs from traffic.
        learning: bool,
        /// Whether the device answers ARP and neighbour solicitations itself from its
        /// neighbour table (`proxy`): with static entries, no ARP request crosses the tunnel.
        proxy: bool,
        /// Index of the underlay device.
        parent: Option<u32>,
    },
    /// A dummy device.
    Dummy,
    /// A macvlan device on a parent link.
    Macvlan {
        /// Index of the parent device.
        parent: u32,
        /// Macvlan mode.
        mode: MacvlanMode,
    },
    /// An 802.1Q VLAN sub-interface of a parent link (needs the kernel's `8021q`).
    Vlan {
        /// Index of the parent device.
        parent: u32,
        /// The VLAN id, 1 to 4094.
        id: u16,
    },
    /// An ipvlan device on a parent link (needs the kernel's `ipvlan`).
    Ipvlan {
        /// Index of the parent device.
        parent: u32,
        /// Ipvlan mode.
        mode: IpvlanMode,
    },
    /// A WireGuard device (needs the kernel's `wireguard`); keys and peers are configured
    /// over generic netlink afterwards, not in the create message.
    Wireguard,
}

/// Ipvlan modes (`ip link add … type ipvlan mode …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvlanMode {
    /// Switching at layer 2: the slaves share the parent's MAC and its broadcast domain.
    L2,
    /// Routing at layer 3 by the parent; no broadcast or multicast.
    L3,
    /// As `L3`, with the traffic passing the host's netfilter (conntrack).
    L3s,
}

/// Macvlan modes (`ip link add … type macvlan mode …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacvlanMode {
    /// No traffic between macvlans of one parent.
    Private,
    /// Traffic between macvlans goes out through the adjacent switch.
    Vepa,
    /// Macvlans of one parent talk directly.
    Bridge,
    /// One macvlan takes over the parent.
    Passthru,
}

impl LinkKind {
    /// The kernel's name for this link type and the operation that creates one, as errors
    /// name it: one table, so the two never disagree.
    fn names(&self) -> (&'static str, &'static str) {
        match self {
            Self::Bridge => ("bridge", "create bridge"),
            Self::Veth { .. } => ("veth", "create veth"),
            Self::Vxlan { .. } => ("vxlan", "create vxlan"),
            Self::Dummy => ("dummy", "create dummy"),
            Self::Macvlan { .. } => ("macvlan", "create macvlan"),
            Self::Vlan { .. } => ("vlan", "create vlan"),
            Self::Ipvlan { .. } => ("ipvlan", "create ipvlan"),
            Self::Wireguard => ("wireguard", "create wireguard"),
        }
    }

    /// The kernel's name for this link type (`IFLA_INFO_KIND`).
    pub fn kernel_name(&self) -> &'static str {
        self.names().0
    }

    /// What creating a link of this type is called in errors ("create veth").
    pub(crate) fn create_op(&self) -> &'static str {
        self.names().1
    }

    /// The kernel feature (module) this link type needs, as an `Unsupported` error names it
    /// when the kernel answers that it does not know the type: the type's own name, but for
    /// VLANs, whose module is `8021q`.
    pub fn kernel_feature(&self) -> &'static str {
        match self {
            Self::Vlan { .. } => "8021q",
            other => other.kernel_name(),
        }
    }
}

impl LinkSpec {
    /// A spec with no MTU, MAC or master, created down.
    pub fn new(name: IfName, kind: LinkKind) -> Self {
        Self {
            name,
            kind,
            mtu: None,
            mac: None,
            master: None,
            up: false,
            netns: None,
        }
    }

    /// Checks the values the kernel would refuse with a less helpful error. Pure.
    pub fn validate(&self) -> Result<(), SandboxError> {
        validate_mtu(self.mtu)?;
        validate_mac(self.mac)?;
        match &self.kind {
            LinkKind::Veth {
                peer_name,
                peer_ns,
                peer_mac,
                peer_mtu,
                ..
            } => {
                if peer_ns.is_none() && peer_name == &self.name {
                    return Err(SandboxError::invalid(
                        "veth peer name",
                        peer_name.as_str(),
                        "equals the first end's name in the same namespace",
                    ));
                }
                validate_mtu(*peer_mtu)?;
                validate_mac(*peer_mac)?;
            }
            LinkKind::Vxlan {
                vni, local, group, ..
            } => {
                if *vni >= 1 << 24 {
                    return Err(SandboxError::invalid(
                        "vxlan vni",
                        vni.to_string(),
                        "must be below 2^24",
                    ));
                }
                if let (Some(l), Some(g)) = (local, group)
                    && l.is_ipv4() != g.is_ipv4()
                {
                    return Err(SandboxError::invalid(
                        "vxlan group",
                        g.to_string(),
                        "must be of the same family as the local address",
                    ));
                }
            }
            LinkKind::Vlan { id, .. } => {
                // 0 and 4095 are reserved by 802.1Q.
                if !(1..=4094).contains(id) {
                    return Err(SandboxError::invalid(
                        "vlan id",
                        id.to_string(),
                        "must be between 1 and 4094",
                    ));
                }
            }
            LinkKind::Bridge
            | LinkKind::Dummy
            | LinkKind::Wireguard
            | LinkKind::Macvlan { .. }
            | LinkKind::Ipvlan { .. } => {}
        }
        Ok(())
    }
}

pub(crate) fn validate_mtu(mtu: Option<u32>) -> Result<(), SandboxError> {
    match mtu {
        // 68 is the IPv4 minimum (RFC 791); the kernel's ETH_MAX_MTU is 65535.
        Some(m) if !(68..=65535).contains(&m) => Err(SandboxError::invalid(
            "mtu",
            m.to_string(),
            "must be between 68 and 65535",
        )),
        _ => Ok(()),
    }
}

pub(crate) fn validate_mac(mac: Option<MacAddress>) -> Result<(), SandboxError> {
    match mac {
        Some(m) if m.is_multicast() || m.octets() == [0; 6] => Err(SandboxError::invalid(
            "mac address",
            m.to_string(),
            "must be a unicast, non-zero address",
        )),
        _ => Ok(()),
    }
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link type (`IFLA_INFO_KIND`), `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// MAC address, for Ethernet-like devices.
    pub mac: Option<MacAddress>,
    /// MTU.
    pub mtu: u32,
    /// Whether the link is administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the master device, if enslaved.
    pub master: Option<u32>,
    /// The alias (`IFLA_IFALIAS`), if set.
    pub alias: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        s.parse().unwrap()
    }

    #[test]
    fn spec_validation_rejects_bad_values() {
        let mut spec = LinkSpec::new(name("br0"), LinkKind::Bridge);
        assert!(spec.validate().is_ok());
        spec.mtu = Some(20);
        let e = spec.validate().unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("mtu"), "{e}");
        spec.mtu = Some(1500);
        spec.mac = Some("01:00:5e:00:00:01".parse().unwrap());
        assert!(spec.validate().is_err());

        let vx = LinkSpec::new(
            name("vx0"),
            LinkKind::Vxlan {
                vni: 1 << 24,
                local: None,
                group: None,
                port: 4789,
                learning: false,
                proxy: false,
                parent: None,
            },
        );
        assert!(vx.validate().unwrap_err().to_string().contains("vni"));

        let veth = LinkSpec::new(
            name("veth0"),
            LinkKind::Veth {
                peer_name: name("veth0"),
                peer_ns: None,
                peer_mac: None,
                peer_mtu: None,
                peer_up: false,
            },
        );
        assert!(veth.validate().is_err());
    }

    #[test]
    fn kernel_names() {
        assert_eq!(LinkKind::Dummy.kernel_name(), "dummy");
        assert_eq!(
            LinkKind::Macvlan {
                parent: 1,
                mode: MacvlanMode::Bridge
            }
            .kernel_name(),
            "macvlan"
        );
        assert_eq!(LinkKind::Bridge.kernel_feature(), "bridge");
        assert_eq!(LinkKind::Wireguard.kernel_feature(), "wireguard");
        assert_eq!(LinkKind::Bridge.create_op(), "create bridge");
        assert_eq!(
            LinkKind::Vlan { parent: 1, id: 10 }.kernel_feature(),
            "8021q"
        );
    }
}
