//! What a network and an endpoint need in the kernel, planned without touching it (unit-tested
//! for kernels this machine's is not: 8021q and ipvlan).

use cnm_core::cnm_sandbox::{LinkKind, LinkSpec, MacvlanMode, NetNs};
use cnm_types::{IfName, MacAddress};

use crate::MacvlanError;
use crate::options::{Flavor, Mode, Parent};

/// The prefix of the alias marking a parent link a driver made: `cnm:<driver>:<network id>`.
pub(crate) fn alias(flavor: Flavor, network_id: &str) -> String {
    format!("cnm:{}:{network_id}", flavor.name())
}

/// The network id in an alias `alias` wrote for `flavor`, if it is one.
pub(crate) fn alias_owner(flavor: Flavor, alias: &str) -> Option<&str> {
    alias
        .strip_prefix("cnm:")?
        .strip_prefix(flavor.name())?
        .strip_prefix(':')
}

/// How a network gets its parent link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentPlan {
    /// A link that exists: used as it is, never deleted.
    Existing {
        /// Its name.
        name: IfName,
    },
    /// `LINK.VLAN` is missing: made as an 802.1Q sub-interface of `link` (up), removed with the
    /// last network on it.
    Vlan {
        /// The sub-interface's name.
        name: IfName,
        /// The link it is made on.
        link: IfName,
        /// The VLAN id.
        id: u16,
    },
    /// No parent given: a veth pair made for this network alone, both ends up in the host
    /// namespace and nothing else on them. Docker makes a `dummy` link here; this kernel has no
    /// dummy driver, and a veth pair is the other link that is always there, has a carrier
    /// once both ends are up (a bridge without ports would not) and reaches nothing: the
    /// network is internal. Removed with the network.
    Internal {
        /// The end the endpoints hang off (`dm-` and 12 characters of the network id, as
        /// Docker names its dummy).
        name: IfName,
        /// The other end (`dp-` and the same 12).
        peer: IfName,
    },
}

impl ParentPlan {
    /// The plan for `parent` on network `network_id`, given whether a link of the parent's
    /// name exists in the host namespace.
    pub fn new(parent: &Parent, network_id: &str, exists: bool) -> Result<Self, MacvlanError> {
        let short: String = network_id.chars().take(12).collect();
        let named = |prefix: &str| {
            IfName::new(format!("{prefix}{short}")).map_err(|e| MacvlanError::InvalidOption {
                driver: "macvlan",
                key: crate::options::PARENT,
                value: network_id.to_owned(),
                reason: e.to_string(),
            })
        };
        match parent {
            Parent::None => Ok(Self::Internal {
                name: named("dm-")?,
                peer: named("dp-")?,
            }),
            Parent::Link { name, .. } if exists => Ok(Self::Existing { name: name.clone() }),
            Parent::Link {
                name,
                vlan: Some(Ok((link, id))),
            } => Ok(Self::Vlan {
                name: name.clone(),
                link: link.clone(),
                id: *id,
            }),
            Parent::Link {
                name,
                vlan: Some(Err(reason)),
            } => Err(MacvlanError::InvalidOption {
                driver: "macvlan",
                key: crate::options::PARENT,
                value: name.to_string(),
                reason: reason.clone(),
            }),
            Parent::Link { name, vlan: None } => {
                Err(MacvlanError::ParentNotFound(name.to_string()))
            }
        }
    }

    /// The link the endpoints hang off.
    pub fn link_name(&self) -> &IfName {
        match self {
            Self::Existing { name } | Self::Vlan { name, .. } | Self::Internal { name, .. } => name,
        }
    }

    /// Whether the network makes its parent (and so removes it).
    pub fn makes_link(&self) -> bool {
        !matches!(self, Self::Existing { .. })
    }

    /// The link to create for this plan, on the host link with index `link_index` (for a VLAN),
    /// or `None` when the parent exists.
    pub fn link_spec(&self, link_index: Option<u32>) -> Option<LinkSpec> {
        match self {
            Self::Existing { .. } => None,
            Self::Vlan { name, id, .. } => Some(LinkSpec {
                up: true,
                ..LinkSpec::new(
                    name.clone(),
                    LinkKind::Vlan {
                        parent: link_index.unwrap_or(0),
                        id: *id,
                    },
                )
            }),
            Self::Internal { name, peer } => Some(LinkSpec {
                up: true,
                ..LinkSpec::new(
                    name.clone(),
                    LinkKind::Veth {
                        peer_name: peer.clone(),
                        peer_ns: None,
                        peer_mac: None,
                        peer_mtu: None,
                        peer_up: true,
                    },
                )
            }),
        }
    }
}

/// The container's link for one endpoint: born inside the sandbox `netns` under its final name
/// (no move; it starts with the sandbox's IPv6-off default), on the parent with index
/// `parent`, with the network's MTU. A macvlan carries the endpoint's MAC, except in passthru
/// mode, where it takes the parent's; an ipvlan always has the parent's.
pub fn endpoint_spec(
    mode: Mode,
    parent: u32,
    ifname: IfName,
    netns: NetNs,
    mac: Option<MacAddress>,
    mtu: u32,
) -> LinkSpec {
    let (kind, mac) = match mode {
        Mode::Macvlan(MacvlanMode::Passthru) => (
            LinkKind::Macvlan {
                parent,
                mode: MacvlanMode::Passthru,
            },
            None,
        ),
        Mode::Macvlan(mode) => (LinkKind::Macvlan { parent, mode }, mac),
        Mode::Ipvlan(mode) => (LinkKind::Ipvlan { parent, mode }, None),
    };
    LinkSpec {
        mtu: Some(mtu),
        mac,
        netns: Some(netns),
        ..LinkSpec::new(ifname, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{NetworkOptions, PARENT};
    use cnm_core::cnm_sandbox::IpvlanMode;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parent(s: &str) -> Parent {
        let raw = [(PARENT.to_owned(), s.to_owned())].into_iter().collect();
        NetworkOptions::parse(Flavor::Macvlan, &raw).unwrap().parent
    }

    #[test]
    fn existing_parent_is_used_as_it_is() {
        let p = ParentPlan::new(&parent("up0.10"), ID, true).unwrap();
        assert_eq!(
            p,
            ParentPlan::Existing {
                name: "up0.10".parse().unwrap()
            }
        );
        assert!(!p.makes_link());
        assert!(p.link_spec(None).is_none());
    }

    #[test]
    fn missing_vlan_parent_plans_an_8021q_sub_interface_up() {
        let p = ParentPlan::new(&parent("up0.10"), ID, false).unwrap();
        assert_eq!(
            p,
            ParentPlan::Vlan {
                name: "up0.10".parse().unwrap(),
                link: "up0".parse().unwrap(),
                id: 10
            }
        );
        assert!(p.makes_link());
        let spec = p.link_spec(Some(2)).unwrap();
        assert_eq!(spec.name.as_str(), "up0.10");
        assert!(spec.up);
        assert!(matches!(spec.kind, LinkKind::Vlan { parent: 2, id: 10 }));
        assert_eq!(spec.kind.kernel_feature(), "8021q");
        spec.validate().unwrap();
    }

    #[test]
    fn missing_plain_parent_or_bad_vlan_name_is_refused() {
        let e = ParentPlan::new(&parent("eth9"), ID, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-o parent interface was not found on the host: eth9"
        );
        let e = ParentPlan::new(&parent("up0.5000"), ID, false).unwrap_err();
        assert!(
            e.to_string().contains("vlan id must be between 1-4094"),
            "{e}"
        );
    }

    #[test]
    fn no_parent_plans_a_veth_pair_named_after_the_network() {
        let p = ParentPlan::new(&Parent::None, ID, false).unwrap();
        assert_eq!(p.link_name().as_str(), "dm-0123456789ab");
        let spec = p.link_spec(None).unwrap();
        let LinkKind::Veth {
            peer_name, peer_up, ..
        } = &spec.kind
        else {
            panic!("a veth pair")
        };
        assert_eq!(peer_name.as_str(), "dp-0123456789ab");
        assert!(spec.up && *peer_up, "both ends up: a carrier");
    }

    #[test]
    fn endpoint_links_per_mode() {
        let ns = NetNs::current().unwrap();
        let mac: MacAddress = "02:42:c0:a8:00:02".parse().unwrap();
        let eth0: IfName = "eth0".parse().unwrap();
        let s = endpoint_spec(
            Mode::Macvlan(MacvlanMode::Private),
            7,
            eth0.clone(),
            ns.clone(),
            Some(mac),
            1400,
        );
        assert!(matches!(
            s.kind,
            LinkKind::Macvlan {
                parent: 7,
                mode: MacvlanMode::Private
            }
        ));
        assert_eq!(
            (s.mac, s.mtu, s.netns.is_some()),
            (Some(mac), Some(1400), true)
        );
        let s = endpoint_spec(
            Mode::Macvlan(MacvlanMode::Passthru),
            7,
            eth0.clone(),
            ns.clone(),
            Some(mac),
            1500,
        );
        assert_eq!(s.mac, None, "passthru takes the parent's MAC");
        for mode in [IpvlanMode::L2, IpvlanMode::L3, IpvlanMode::L3s] {
            let s = endpoint_spec(
                Mode::Ipvlan(mode),
                3,
                eth0.clone(),
                ns.clone(),
                Some(mac),
                1500,
            );
            assert!(matches!(s.kind, LinkKind::Ipvlan { parent: 3, mode: m } if m == mode));
            assert_eq!(s.mac, None, "ipvlan shares the parent's MAC");
            assert_eq!(s.kind.kernel_feature(), "ipvlan");
        }
    }

    #[test]
    fn aliases_name_driver_and_network() {
        let a = alias(Flavor::Ipvlan, ID);
        assert_eq!(alias_owner(Flavor::Ipvlan, &a), Some(ID));
        assert_eq!(alias_owner(Flavor::Macvlan, &a), None);
        assert_eq!(alias_owner(Flavor::Macvlan, "cnm:abc"), None);
    }
}
