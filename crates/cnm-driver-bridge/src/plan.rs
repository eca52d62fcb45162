//! What a bridge network will look like, decided from its options and IPAM data alone.
//!
//! Planning is pure: every validation happens here, before any kernel object exists, and the
//! result is what `apply` creates (and what the tests read without root).

use std::net::IpAddr;

use cnm_core::spi::{IpamData, NetworkSpec};
use cnm_types::{IfName, InvalidTo, MacAddress};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::BridgeError;
use crate::options::{BridgeOptions, GatewayMode};

/// Prefix of bridge names derived from the network id.
const BRIDGE_PREFIX: &str = "cnm-";

/// The planned data plane of one bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgePlan {
    /// The network's id.
    pub network_id: String,
    /// The bridge's name (chosen by the user, or `cnm-` + 11 characters of the id).
    pub bridge: IfName,
    /// The bridge's MAC, pinned so that it does not follow its ports as they come and go
    /// (a bridge without an explicit address takes the lowest port MAC, which breaks neighbours'
    /// caches every time that port leaves).
    pub mac: MacAddress,
    /// MTU of the bridge and every veth, when set.
    pub mtu: Option<u32>,
    /// IPv4 gateway addresses (with the pool's prefix): put on the bridge unless
    /// [`inhibit_ipv4`](Self::inhibit_ipv4), and the containers' default route either way.
    pub gateways_v4: Vec<Ipv4Net>,
    /// Docker's `inhibit_ipv4`: the bridge has no IPv4 address.
    pub inhibit_ipv4: bool,
    /// IPv6 gateway addresses put on the bridge.
    pub gateways_v6: Vec<Ipv6Net>,
    /// The network's IPv4 subnets.
    pub subnets_v4: Vec<Ipv4Net>,
    /// The network's IPv6 subnets.
    pub subnets_v6: Vec<Ipv6Net>,
    /// Whether the network carries IPv4.
    pub ipv4: bool,
    /// Whether the network carries IPv6.
    pub ipv6: bool,
    /// No route off the network's own subnets, for any family (`--internal`, or every family
    /// the network carries `isolated`); see [`internal_for`](Self::internal_for) for one family.
    pub internal: bool,
    /// For an internal network: its containers may reach the host itself.
    pub host_access: bool,
    /// Inter-container communication.
    pub icc: bool,
    /// Masquerade outbound traffic (NAT gateway mode only).
    pub masquerade: bool,
    /// IPv4 gateway mode.
    pub gateway_mode_v4: GatewayMode,
    /// IPv6 gateway mode.
    pub gateway_mode_v6: GatewayMode,
    /// Default host address of published ports; `None` for any.
    pub host_binding_ip: Option<IpAddr>,
    /// Container interface name prefix, when the user asked for one.
    pub iface_prefix: Option<String>,
    /// Host interfaces from which published ports are reachable at container addresses.
    pub trusted_host_interfaces: Vec<IfName>,
}

impl BridgePlan {
    /// Validates `spec` with `opts` and decides names, addresses and settings. Pure.
    pub fn new(opts: &BridgeOptions, spec: &NetworkSpec) -> Result<Self, BridgeError> {
        let bridge = match &opts.bridge_name {
            Some(name) => name.clone(),
            None => derived_bridge_name(&spec.id)?,
        };
        let ipv4 = spec.enable_ipv4 && !spec.ipv4.is_empty();
        let ipv6 = spec.enable_ipv6 && !spec.ipv6.is_empty();
        // Each family has its own gateway mode (Docker's `gateway_mode_ipv4` and
        // `gateway_mode_ipv6`): the firewall keys every mode-dependent rule by family.
        let (m4, m6) = (opts.gateway_mode_v4, opts.gateway_mode_v6);
        // Docker's `isolated`: that family is internal and has no gateway; the other family of
        // a dual-stack network works as its own mode says.
        let isolated_v4 = ipv4 && m4 == GatewayMode::Isolated;
        let isolated_v6 = ipv6 && m6 == GatewayMode::Isolated;
        // Internal as a whole: `--internal`, or every family the network carries isolated.
        let isolated_all = (!ipv4 || isolated_v4) && (!ipv6 || isolated_v6);
        if opts.internal_host_access && !(spec.internal || isolated_v4 || isolated_v6) {
            return Err(BridgeError::InvalidOption {
                key: crate::options::INTERNAL_HOST_ACCESS.to_owned(),
                value: "true".to_owned(),
                reason: "only an internal network keeps its containers off the host; \
                         this network is not internal"
                    .to_owned(),
            });
        }
        if spec.enable_ipv6 && spec.ipv6.is_empty() {
            return Err(BridgeError::invalid(
                "network",
                &spec.name,
                "IPv6 is enabled but the network has no IPv6 pool",
            ));
        }
        if !ipv4 && !ipv6 {
            return Err(BridgeError::invalid(
                "network",
                &spec.name,
                "a bridge network needs an IPv4 or an IPv6 pool",
            ));
        }
        if let Some(mtu) = spec.mtu
            && ipv6
            && mtu < cnm_core::options::MIN_MTU_V6
        {
            // The kernel turns IPv6 off on a link below 1280, and the gateway address could
            // not be added: refuse it here, before anything exists.
            return Err(BridgeError::invalid(
                cnm_core::options::KEY_DRIVER_MTU,
                mtu.to_string(),
                format!(
                    "a network with IPv6 needs an MTU of at least {} (RFC 8200)",
                    cnm_core::options::MIN_MTU_V6
                ),
            ));
        }
        let mut plan = Self {
            network_id: spec.id.clone(),
            bridge,
            mac: mac_for(&spec.id),
            mtu: spec.mtu,
            gateways_v4: Vec::new(),
            inhibit_ipv4: opts.inhibit_ipv4,
            gateways_v6: Vec::new(),
            subnets_v4: Vec::new(),
            subnets_v6: Vec::new(),
            ipv4,
            ipv6,
            internal: spec.internal || isolated_all,
            host_access: opts.internal_host_access,
            icc: opts.enable_icc,
            masquerade: opts.enable_ip_masquerade,
            gateway_mode_v4: opts.gateway_mode_v4,
            gateway_mode_v6: opts.gateway_mode_v6,
            host_binding_ip: opts.host_binding_ip,
            iface_prefix: opts.container_iface_prefix.clone(),
            trusted_host_interfaces: opts.trusted_host_interfaces.clone(),
        };
        if ipv4 {
            (plan.subnets_v4, plan.gateways_v4) = subnets_and_gateways(&spec.ipv4, |n| match n {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })?;
        }
        if ipv6 {
            (plan.subnets_v6, plan.gateways_v6) = subnets_and_gateways(&spec.ipv6, |n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            })?;
        }
        Ok(plan)
    }

    /// The addresses put on the bridge: the gateways, but no IPv4 one with `inhibit_ipv4`, and
    /// none of a family whose gateway mode is `isolated`.
    pub fn bridge_addresses(&self) -> impl Iterator<Item = ipnet::IpNet> + '_ {
        self.gateways_v4
            .iter()
            .filter(|_| !self.inhibit_ipv4 && self.gateway_mode_v4 != GatewayMode::Isolated)
            .map(|g| ipnet::IpNet::V4(*g))
            .chain(
                self.gateways_v6
                    .iter()
                    .filter(|_| self.gateway_mode_v6 != GatewayMode::Isolated)
                    .map(|g| ipnet::IpNet::V6(*g)),
            )
    }

    /// Sysctls of the bridge itself, set in the host namespace before it goes up.
    pub fn bridge_sysctls(&self) -> Vec<(String, String)> {
        let br = self.bridge.as_str();
        let mut out = Vec::new();
        // An IPv4-only bridge must not get a link-local IPv6 address or answer IPv6 at all. A
        // link below IPv6's minimum MTU has no IPv6 at all: the kernel keeps no IPv6 state (and
        // no `conf` directory) for it, so there is nothing to turn off.
        let no_ipv6_state = self.mtu.is_some_and(|m| m < cnm_core::options::MIN_MTU_V6);
        if !no_ipv6_state {
            out.push((
                format!("net.ipv6.conf.{br}.disable_ipv6"),
                if self.ipv6 { "0" } else { "1" }.to_owned(),
            ));
            if self.ipv6 {
                // No duplicate address detection for the bridge's link-local address: while it
                // is tentative (about a second after the bridge goes up) the host has no source
                // for neighbour solicitations on the bridge, and IPv6 routed to a container
                // (a `routed` family, or after DNAT) stalls. The address derives from the
                // bridge's MAC, which is cnm's own (see `mac_for`); its gateway addresses are
                // added without DAD too.
                out.push((format!("net.ipv6.conf.{br}.accept_dad"), "0".to_owned()));
            }
        }
        if self.ipv4 && !self.internal_for(false) {
            // Lets packets DNATed from 127.0.0.1 be routed out of the bridge (published ports
            // reached through the loopback address without a userland proxy).
            out.push((format!("net.ipv4.conf.{br}.route_localnet"), "1".to_owned()));
        }
        out
    }

    /// Sysctls of the host namespace this network needs; never turned off again (other
    /// networks and the host may rely on them). See `forwarding` for how they are set.
    pub fn host_sysctls(&self) -> Vec<(String, String)> {
        self.forwarding()
            .into_iter()
            .map(|f| (crate::forwarding::key(f).to_owned(), "1".to_owned()))
            .collect()
    }

    /// Whether the family (IPv6's when `v6`) goes nowhere off the network: the network is
    /// internal, or the family's gateway mode is `isolated`.
    pub fn internal_for(&self, v6: bool) -> bool {
        let mode = if v6 {
            self.gateway_mode_v6
        } else {
            self.gateway_mode_v4
        };
        self.internal || mode == GatewayMode::Isolated
    }

    /// The families this network needs the host to forward: those it carries that are not
    /// internal.
    pub fn forwarding(&self) -> Vec<cnm_sandbox::IpFamily> {
        let mut out = Vec::new();
        if self.ipv4 && !self.internal_for(false) {
            out.push(cnm_sandbox::IpFamily::V4);
        }
        if self.ipv6 && !self.internal_for(true) {
            out.push(cnm_sandbox::IpFamily::V6);
        }
        out
    }

    /// The IPv4 gateway a container with `addr` routes through, if the network gives one.
    pub fn gateway_v4_for(&self, addr: Option<Ipv4Net>) -> Option<std::net::Ipv4Addr> {
        match self.gateway_for(false, &self.gateways_v4, addr)?.addr() {
            IpAddr::V4(gw) => Some(gw),
            IpAddr::V6(_) => None,
        }
    }

    /// The IPv6 gateway a container with `addr` routes through, if the network gives one.
    pub fn gateway_v6_for(&self, addr: Option<Ipv6Net>) -> Option<std::net::Ipv6Addr> {
        match self.gateway_for(true, &self.gateways_v6, addr)?.addr() {
            IpAddr::V6(gw) => Some(gw),
            IpAddr::V4(_) => None,
        }
    }

    /// The gateway among `gateways` whose subnet holds `addr` (else the first), unless the
    /// family is internal (an `isolated` family has no default route) or the container has no
    /// address of the family.
    fn gateway_for<N: Copy + Into<IpNet>>(
        &self,
        v6: bool,
        gateways: &[N],
        addr: Option<N>,
    ) -> Option<IpNet> {
        if self.internal_for(v6) {
            return None;
        }
        let addr: IpNet = addr?.into();
        let gateways = gateways.iter().map(|g| (*g).into());
        gateways
            .clone()
            .find(|gw: &IpNet| gw.contains(&addr.addr()))
            .or_else(|| gateways.clone().next())
    }
}

/// The subnets of one family's pools and their gateways with the pool's prefix length; a
/// gateway outside its pool is refused.
fn subnets_and_gateways<N: Copy + Into<IpNet>>(
    pools: &[IpamData<N>],
    narrow: fn(IpNet) -> Option<N>,
) -> Result<(Vec<N>, Vec<N>), BridgeError> {
    let same_family = "a pool's subnet and gateway are of its family";
    let (mut subnets, mut gateways) = (Vec::new(), Vec::new());
    for data in pools {
        let subnet = data.pool.into().trunc();
        if let Some(gw) = data.gateway {
            let gw: IpNet = gw.into();
            if !subnet.contains(&gw.addr()) {
                return Err(BridgeError::invalid(
                    "gateway",
                    gw.to_string(),
                    format!("not inside the pool {subnet}"),
                ));
            }
            let gw = IpNet::new(gw.addr(), subnet.prefix_len())
                .map_err(|e| BridgeError::invalid("gateway", gw.to_string(), e.to_string()))?;
            gateways.push(narrow(gw).expect(same_family));
        }
        subnets.push(narrow(subnet).expect(same_family));
    }
    Ok((subnets, gateways))
}

/// `cnm-` and the first 11 characters of the network id: 15 bytes, the kernel's limit.
pub fn derived_bridge_name(network_id: &str) -> Result<IfName, BridgeError> {
    let room = IfName::MAX_LEN - BRIDGE_PREFIX.len();
    let head: String = network_id.chars().take(room).collect();
    IfName::new(format!("{BRIDGE_PREFIX}{head}"))
        .map_err(|e| BridgeError::invalid("network id", network_id, e.to_string()))
}

/// A locally administered unicast MAC derived from the network id (FNV-1a), so the same network
/// gets the same bridge MAC every time it is created.
pub fn mac_for(network_id: &str) -> MacAddress {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    MacAddress([0x02, h[0], h[1], h[2], h[3], h[4]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;
    use std::collections::BTreeMap;

    const ID: &str = "3f2a9c0d1e2b4a5c6d7e8f90112233445566778899aabbccddeeff0011223344";

    fn v4(pool: &str, gw: Option<&str>) -> IpamData<Ipv4Net> {
        IpamData {
            pool: pool.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            aux_addresses: BTreeMap::new(),
        }
    }

    fn v6(pool: &str, gw: Option<&str>) -> IpamData<Ipv6Net> {
        IpamData {
            pool: pool.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            aux_addresses: BTreeMap::new(),
        }
    }

    fn spec() -> NetworkSpec {
        let mut s = NetworkSpec::new(ID, "net1");
        s.ipv4.push(v4("172.18.0.0/16", Some("172.18.0.1/16")));
        s
    }

    #[test]
    fn ipv4_network_plan() {
        let p = BridgePlan::new(&BridgeOptions::default(), &spec()).unwrap();
        assert_eq!(p.bridge.as_str(), "cnm-3f2a9c0d1e2");
        assert_eq!(
            p.gateways_v4,
            vec!["172.18.0.1/16".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            p.subnets_v4,
            vec!["172.18.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        assert!(p.ipv4 && !p.ipv6 && p.icc && p.masquerade);
        assert!(p.mac.is_locally_administered() && !p.mac.is_multicast());
        assert_eq!(p.mac, mac_for(ID));
        assert_ne!(mac_for(ID), mac_for("another"));
        assert_eq!(
            p.bridge_sysctls(),
            vec![
                (
                    "net.ipv6.conf.cnm-3f2a9c0d1e2.disable_ipv6".into(),
                    "1".into()
                ),
                (
                    "net.ipv4.conf.cnm-3f2a9c0d1e2.route_localnet".into(),
                    "1".into()
                ),
            ]
        );
        assert_eq!(
            p.host_sysctls(),
            vec![("net.ipv4.ip_forward".into(), "1".into())]
        );
        assert_eq!(
            p.gateway_v4_for(Some("172.18.0.2/16".parse().unwrap())),
            Some("172.18.0.1".parse().unwrap())
        );
        assert_eq!(p.gateway_v6_for(None), None);
    }

    #[test]
    fn dual_stack_and_ipv6_only() {
        let mut s = spec();
        s.enable_ipv6 = true;
        s.ipv6.push(v6("fd00:1::/64", Some("fd00:1::1/64")));
        let p = BridgePlan::new(&BridgeOptions::default(), &s).unwrap();
        assert!(p.ipv4 && p.ipv6);
        assert_eq!(p.bridge_sysctls()[0].1, "0");
        assert_eq!(p.host_sysctls().len(), 2);
        assert_eq!(
            p.gateway_v6_for(Some("fd00:1::2/64".parse().unwrap())),
            Some("fd00:1::1".parse().unwrap())
        );

        s.enable_ipv4 = false;
        s.ipv4.clear();
        let p = BridgePlan::new(&BridgeOptions::default(), &s).unwrap();
        assert!(!p.ipv4 && p.ipv6);
        assert_eq!(
            p.bridge_sysctls(),
            vec![
                (
                    "net.ipv6.conf.cnm-3f2a9c0d1e2.disable_ipv6".into(),
                    "0".into()
                ),
                (
                    "net.ipv6.conf.cnm-3f2a9c0d1e2.accept_dad".into(),
                    "0".into()
                ),
            ],
            "no route_localnet without IPv4"
        );
        assert_eq!(
            p.host_sysctls(),
            vec![("net.ipv6.conf.all.forwarding".into(), "1".into())]
        );
    }

    #[test]
    fn isolated_means_internal_without_a_gateway_address() {
        let opts = BridgeOptions {
            gateway_mode_v4: GatewayMode::Isolated,
            ..BridgeOptions::default()
        };
        let p = BridgePlan::new(&opts, &spec()).unwrap();
        assert!(p.internal, "isolated is internal");
        assert!(p.host_sysctls().is_empty());
        assert_eq!(p.bridge_addresses().count(), 0, "no gateway on the bridge");
        assert_eq!(
            p.gateway_v4_for(Some("172.18.0.2/16".parse().unwrap())),
            None,
            "no default route in containers"
        );
        // IPv6's mode does not matter on an IPv4-only network
        let p = BridgePlan::new(
            &BridgeOptions {
                gateway_mode_v6: GatewayMode::Isolated,
                ..BridgeOptions::default()
            },
            &spec(),
        )
        .unwrap();
        assert!(!p.internal && p.bridge_addresses().count() == 1);
    }

    #[test]
    fn dual_stack_takes_a_gateway_mode_per_family() {
        let mut s = spec();
        s.enable_ipv6 = true;
        s.ipv6.push(v6("fd00:1::/64", Some("fd00:1::1/64")));
        let all = [
            GatewayMode::Nat,
            GatewayMode::NatUnprotected,
            GatewayMode::Routed,
            GatewayMode::Isolated,
        ];
        let ctr4 = Some("172.18.0.2/16".parse().unwrap());
        let ctr6 = Some("fd00:1::2/64".parse().unwrap());
        for m4 in all {
            for m6 in all {
                let opts = BridgeOptions {
                    gateway_mode_v4: m4,
                    gateway_mode_v6: m6,
                    ..BridgeOptions::default()
                };
                let p = BridgePlan::new(&opts, &s).unwrap();
                assert_eq!((p.gateway_mode_v4, p.gateway_mode_v6), (m4, m6));
                let (iso4, iso6) = (m4 == GatewayMode::Isolated, m6 == GatewayMode::Isolated);
                assert_eq!(p.internal, iso4 && iso6, "{m4}/{m6}");
                assert_eq!((p.internal_for(false), p.internal_for(true)), (iso4, iso6));
                // an isolated family: no address on the bridge, no default route, no forwarding
                let on_bridge: Vec<_> = p.bridge_addresses().collect();
                assert_eq!(on_bridge.iter().any(|a| a.addr().is_ipv4()), !iso4);
                assert_eq!(on_bridge.iter().any(|a| a.addr().is_ipv6()), !iso6);
                assert_eq!(p.gateway_v4_for(ctr4).is_some(), !iso4, "{m4}/{m6}");
                assert_eq!(p.gateway_v6_for(ctr6).is_some(), !iso6, "{m4}/{m6}");
                let fwd = p.forwarding();
                assert_eq!(fwd.contains(&cnm_sandbox::IpFamily::V4), !iso4);
                assert_eq!(fwd.contains(&cnm_sandbox::IpFamily::V6), !iso6);
            }
        }
        // internal_host_access needs an internal family: one isolated family is enough
        let opts = BridgeOptions {
            gateway_mode_v6: GatewayMode::Isolated,
            internal_host_access: true,
            ..BridgeOptions::default()
        };
        assert!(BridgePlan::new(&opts, &s).unwrap().host_access);
        let opts = BridgeOptions {
            gateway_mode_v6: GatewayMode::Routed,
            internal_host_access: true,
            ..BridgeOptions::default()
        };
        let e = BridgePlan::new(&opts, &s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn internal_network_has_no_gateway_and_needs_no_forwarding() {
        let mut s = spec();
        s.internal = true;
        let p = BridgePlan::new(&BridgeOptions::default(), &s).unwrap();
        assert!(p.host_sysctls().is_empty());
        assert_eq!(
            p.gateway_v4_for(Some("172.18.0.2/16".parse().unwrap())),
            None
        );
        assert_eq!(p.gateways_v4.len(), 1, "the bridge still has its address");
    }

    #[test]
    fn host_access_is_an_internal_network_option() {
        let opts = BridgeOptions {
            internal_host_access: true,
            ..Default::default()
        };
        let e = BridgePlan::new(&opts, &spec()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("internal_host_access"), "{e}");
        let mut s = spec();
        s.internal = true;
        assert!(BridgePlan::new(&opts, &s).unwrap().host_access);
        assert!(
            !BridgePlan::new(&BridgeOptions::default(), &s)
                .unwrap()
                .host_access
        );
    }

    #[test]
    fn user_bridge_name_and_mtu() {
        let opts = BridgeOptions {
            bridge_name: Some("br-x".parse().unwrap()),
            ..Default::default()
        };
        let mut s = spec();
        s.mtu = Some(1400);
        let p = BridgePlan::new(&opts, &s).unwrap();
        assert_eq!(p.bridge.as_str(), "br-x");
        assert_eq!(p.mtu, Some(1400));
    }

    #[test]
    fn ipv6_needs_an_mtu_of_1280() {
        let mut s = spec();
        s.enable_ipv6 = true;
        s.ipv6.push(v6("fd00:1::/64", Some("fd00:1::1/64")));
        let opts = BridgeOptions::default();
        let with_mtu = |mut s: NetworkSpec, mtu| {
            s.mtu = Some(mtu);
            s
        };
        let e = BridgePlan::new(&opts, &with_mtu(s.clone(), 1279)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("1279") && e.to_string().contains("1280"),
            "{e}"
        );
        assert!(BridgePlan::new(&opts, &with_mtu(s, 1280)).is_ok());
        // Without IPv6 the IPv4 minimum is all that counts; such a link has no IPv6 sysctls.
        let p = BridgePlan::new(&opts, &with_mtu(spec(), 576)).unwrap();
        assert!(
            p.bridge_sysctls().iter().all(|(k, _)| !k.contains("ipv6")),
            "{:?}",
            p.bridge_sysctls()
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let mut s = spec();
        s.ipv4 = vec![v4("172.18.0.0/16", Some("10.0.0.1/16"))];
        let e = BridgePlan::new(&BridgeOptions::default(), &s).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("10.0.0.1"), "{e}");

        let mut s = spec();
        s.enable_ipv6 = true;
        assert!(
            BridgePlan::new(&BridgeOptions::default(), &s).is_err(),
            "IPv6 without a pool"
        );

        let mut s = spec();
        s.ipv4.clear();
        assert!(
            BridgePlan::new(&BridgeOptions::default(), &s).is_err(),
            "no pool at all"
        );

        let s = NetworkSpec::new("ab/cd", "n");
        assert!(derived_bridge_name(&s.id).is_err());
    }
}
