//! The bridge network options (Docker's keys), parsed once into typed values.
//!
//! The MTU (`com.docker.network.driver.mtu`) is not among them: it is Docker's generic label,
//! which the controller checks and hands every driver as [`NetworkSpec::mtu`](cnm_core::spi::NetworkSpec::mtu).

use std::net::IpAddr;

use cnm_core::spi::DriverOptions;
use cnm_types::IfName;

use crate::BridgeError;

/// `-o com.docker.network.bridge.name=br0`: the Linux bridge's name.
pub const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// Short alias of [`BRIDGE_NAME`].
pub const BRIDGE_NAME_SHORT: &str = "bridge_name";
/// Whether containers of one network may talk to each other (default true).
pub const ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";
/// Whether traffic leaving the network is masqueraded (default true).
pub const ENABLE_IP_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
/// The default host address of published ports that name none (default: any).
pub const HOST_BINDING_IPV4: &str = "com.docker.network.bridge.host_binding_ipv4";
/// `nat`, `nat-unprotected`, `routed` or `isolated` for IPv4.
pub const GATEWAY_MODE_IPV4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
/// `nat`, `nat-unprotected`, `routed` or `isolated` for IPv6.
pub const GATEWAY_MODE_IPV6: &str = "com.docker.network.bridge.gateway_mode_ipv6";
/// Docker 28's `trusted_host_interfaces`: colon-separated names of host interfaces from which
/// the published ports of the network's containers are reachable directly, at the container's
/// address.
pub const TRUSTED_HOST_INTERFACES: &str = "com.docker.network.bridge.trusted_host_interfaces";
/// Docker's `inhibit_ipv4`: the bridge gets no IPv4 address (the network's IPv4 gateway is
/// someone else on the bridge's segment, e.g. a router the operator attached); containers still
/// get their addresses and the gateway as their default route.
pub const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
/// Docker's `default_bridge`: marks dockerd's own default network. `false` is every user
/// network's value; `true` is refused (the default bridge is the daemon's, made at start).
pub const DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";
/// A name prefix replacing `eth` for container interfaces of this network.
pub const CONTAINER_IFACE_PREFIX: &str = "com.docker.network.container_iface_prefix";
/// cnm's own: `true` lets containers of an *internal* network reach the host itself (its
/// addresses, the gateway's included). Default false: an internal network stays internal
/// (libnetwork#1151). Refused on a network that is not internal.
pub const INTERNAL_HOST_ACCESS: &str = "com.cnm.network.bridge.internal_host_access";
/// Driver-wide (`configure_network_driver`), cnm's own: `true` keeps forwarded traffic that is
/// neither to nor from a cnm bridge flowing even when cnm is the one that turned forwarding on
/// (the daemon's `--ip-forward-no-drop`, after Docker's flag of that name). Default false.
pub const IP_FORWARD_NO_DROP: &str = "com.cnm.bridge.ip_forward_no_drop";

/// How the network meets the outside: one type with the firewall that renders it.
pub use cnm_types::GatewayMode;

/// The options of one bridge network, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeOptions {
    /// The bridge's name, when the user chose one.
    pub bridge_name: Option<IfName>,
    /// Inter-container communication on the network.
    pub enable_icc: bool,
    /// Masquerade traffic leaving the network.
    pub enable_ip_masquerade: bool,
    /// Default host address of published ports (`None`: any address of both families).
    pub host_binding_ip: Option<IpAddr>,
    /// IPv4 gateway mode.
    pub gateway_mode_v4: GatewayMode,
    /// IPv6 gateway mode.
    pub gateway_mode_v6: GatewayMode,
    /// Prefix replacing `eth` for container interface names.
    pub container_iface_prefix: Option<String>,
    /// Containers of an internal network may reach the host itself.
    pub internal_host_access: bool,
    /// No IPv4 address on the bridge.
    pub inhibit_ipv4: bool,
    /// Host interfaces from which published ports are reachable at container addresses.
    pub trusted_host_interfaces: Vec<IfName>,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            bridge_name: None,
            enable_icc: true,
            enable_ip_masquerade: true,
            host_binding_ip: None,
            gateway_mode_v4: GatewayMode::Nat,
            gateway_mode_v6: GatewayMode::Nat,
            container_iface_prefix: None,
            internal_host_access: false,
            inhibit_ipv4: false,
            trusted_host_interfaces: Vec::new(),
        }
    }
}

/// The driver-wide options (`configure_network_driver`), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverConfig {
    /// Never drop foreign forwarded traffic, even when cnm turned forwarding on.
    pub ip_forward_no_drop: bool,
}

impl TryFrom<&DriverOptions> for DriverConfig {
    type Error = BridgeError;

    fn try_from(raw: &DriverOptions) -> Result<Self, BridgeError> {
        let mut config = Self::default();
        for (key, value) in raw {
            match key.as_str() {
                IP_FORWARD_NO_DROP => config.ip_forward_no_drop = parse_bool(key, value)?,
                _ => return Err(BridgeError::UnknownOption { key: key.clone() }),
            }
        }
        Ok(config)
    }
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> BridgeError {
    BridgeError::InvalidOption {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Go's `strconv.ParseBool`, which Docker uses for these options.
fn parse_bool(key: &str, value: &str) -> Result<bool, BridgeError> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

/// Every key the bridge driver knows; the values of these are checked strictly. Any other key
/// is kept on the network without effect, as Docker's bridge keeps it (see [`unknown_keys`]),
/// except one in cnm's own namespace ([`CNM_KEY_PREFIX`]), which is refused.
pub const KNOWN_KEYS: &[&str] = &[
    BRIDGE_NAME,
    BRIDGE_NAME_SHORT,
    ENABLE_ICC,
    ENABLE_IP_MASQUERADE,
    HOST_BINDING_IPV4,
    GATEWAY_MODE_IPV4,
    GATEWAY_MODE_IPV6,
    TRUSTED_HOST_INTERFACES,
    CONTAINER_IFACE_PREFIX,
    INTERNAL_HOST_ACCESS,
    INHIBIT_IPV4,
    DEFAULT_BRIDGE,
];

/// The namespace of cnm's own keys: a key in it the bridge does not know is a typo in cnm's own
/// words, refused rather than kept (the generic labels core owns never reach the driver).
pub const CNM_KEY_PREFIX: &str = "com.cnm.";

/// The keys of `raw` the bridge driver does not know and keeps, in order.
pub fn unknown_keys(raw: &DriverOptions) -> Vec<String> {
    raw.keys()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with(CNM_KEY_PREFIX))
        .cloned()
        .collect()
}

/// An endpoint's options: the bridge knows none and keeps any, except one in cnm's namespace
/// ([`CNM_KEY_PREFIX`]), which is a typo and refused naming it.
pub fn check_endpoint_options(raw: &DriverOptions) -> Result<(), BridgeError> {
    match raw.iter().find(|(k, _)| k.starts_with(CNM_KEY_PREFIX)) {
        Some((key, value)) => Err(invalid(
            key,
            value,
            "not an endpoint option of the bridge driver",
        )),
        None => Ok(()),
    }
}

impl TryFrom<&DriverOptions> for BridgeOptions {
    type Error = BridgeError;

    fn try_from(raw: &DriverOptions) -> Result<Self, BridgeError> {
        let mut opts = Self::default();
        for (key, value) in raw {
            let value = value.as_str();
            match key.as_str() {
                BRIDGE_NAME | BRIDGE_NAME_SHORT => {
                    let name =
                        IfName::new(value).map_err(|e| invalid(key, value, e.to_string()))?;
                    opts.bridge_name = Some(name);
                }
                ENABLE_ICC => opts.enable_icc = parse_bool(key, value)?,
                ENABLE_IP_MASQUERADE => opts.enable_ip_masquerade = parse_bool(key, value)?,
                HOST_BINDING_IPV4 => {
                    let ip: IpAddr = value
                        .parse()
                        .map_err(|_| invalid(key, value, "expected an IP address"))?;
                    cnm_core::port::check_host_ip(ip)
                        .map_err(|e| invalid(key, value, e.to_string()))?;
                    // 0.0.0.0 is Docker's default and means "every address".
                    opts.host_binding_ip = if ip.is_unspecified() { None } else { Some(ip) };
                }
                GATEWAY_MODE_IPV4 | GATEWAY_MODE_IPV6 => {
                    let mode: GatewayMode = value.parse().map_err(|_| {
                        invalid(
                            key,
                            value,
                            "expected nat, nat-unprotected, routed or isolated",
                        )
                    })?;
                    if key == GATEWAY_MODE_IPV4 {
                        opts.gateway_mode_v4 = mode;
                    } else {
                        opts.gateway_mode_v6 = mode;
                    }
                }
                TRUSTED_HOST_INTERFACES => {
                    // empty names (an empty value, `a::b`) are skipped, as Docker skips them
                    opts.trusted_host_interfaces = value
                        .split(':')
                        .filter(|n| !n.is_empty())
                        .map(|n| {
                            IfName::new(n)
                                .map_err(|e| invalid(key, value, format!("interface {n:?}: {e}")))
                        })
                        .collect::<Result<_, _>>()?;
                }
                CONTAINER_IFACE_PREFIX => {
                    // The controller appends an index; leave room for up to three digits.
                    if value.is_empty()
                        || value.len() > IfName::MAX_LEN - 3
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(invalid(
                            key,
                            value,
                            "expected 1 to 12 letters, digits, '-' or '_'",
                        ));
                    }
                    opts.container_iface_prefix = Some(value.to_owned());
                }
                INTERNAL_HOST_ACCESS => opts.internal_host_access = parse_bool(key, value)?,
                INHIBIT_IPV4 => opts.inhibit_ipv4 = parse_bool(key, value)?,
                // `false` is every user network's value, and has no effect.
                DEFAULT_BRIDGE if parse_bool(key, value)? => {
                    return Err(invalid(
                        key,
                        value,
                        "the default bridge is the daemon's own network, made when it starts; \
                         a network created later cannot be it",
                    ));
                }
                // cnm's own words are cnm's to know: a typo there is an error.
                _ if key.starts_with(CNM_KEY_PREFIX) => {
                    return Err(invalid(
                        key,
                        value,
                        "no such option in cnm's own namespace (a typo?)",
                    ));
                }
                // Docker's bridge keeps keys it does not know, without effect; so does cnm's
                // (the caller warns, see `unknown_keys`).
                _ => {}
            }
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    fn raw(pairs: &[(&str, &str)]) -> DriverOptions {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_docker() {
        let o = BridgeOptions::try_from(&DriverOptions::new()).unwrap();
        assert_eq!(o, BridgeOptions::default());
        assert!(o.enable_icc && o.enable_ip_masquerade);
        assert_eq!(o.gateway_mode_v4, GatewayMode::Nat);
    }

    #[test]
    fn parses_every_docker_key() {
        let o = BridgeOptions::try_from(&raw(&[
            (BRIDGE_NAME, "br-test"),
            (ENABLE_ICC, "false"),
            (ENABLE_IP_MASQUERADE, "0"),
            (HOST_BINDING_IPV4, "127.0.0.1"),
            (GATEWAY_MODE_IPV4, "routed"),
            (GATEWAY_MODE_IPV6, "nat"),
            (CONTAINER_IFACE_PREFIX, "data"),
            (INTERNAL_HOST_ACCESS, "true"),
        ]))
        .unwrap();
        assert!(o.internal_host_access);
        assert_eq!(o.bridge_name.unwrap().as_str(), "br-test");
        assert!(!o.enable_icc && !o.enable_ip_masquerade);
        assert_eq!(o.host_binding_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(o.gateway_mode_v4, GatewayMode::Routed);
        assert_eq!(o.container_iface_prefix.as_deref(), Some("data"));
        let o = BridgeOptions::try_from(&raw(&[
            (BRIDGE_NAME_SHORT, "br1"),
            (HOST_BINDING_IPV4, "0.0.0.0"),
        ]))
        .unwrap();
        assert_eq!(o.bridge_name.unwrap().as_str(), "br1");
        assert_eq!(o.host_binding_ip, None);
        let o = BridgeOptions::try_from(&raw(&[
            (GATEWAY_MODE_IPV4, "nat-unprotected"),
            (GATEWAY_MODE_IPV6, "isolated"),
        ]))
        .unwrap();
        assert_eq!(o.gateway_mode_v4, GatewayMode::NatUnprotected);
        assert_eq!(o.gateway_mode_v6, GatewayMode::Isolated);
        let o = BridgeOptions::try_from(&raw(&[(TRUSTED_HOST_INTERFACES, "eth1::wg0")])).unwrap();
        let names: Vec<&str> = o
            .trusted_host_interfaces
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(names, ["eth1", "wg0"]);
        assert!(unknown_keys(&raw(&[(TRUSTED_HOST_INTERFACES, "eth1")])).is_empty());
    }

    #[test]
    fn unknown_keys_are_kept_without_effect_and_named() {
        let r = raw(&[
            ("com.docker.network.bridge.bogus", "1"),
            ("foo", "bar"),
            (ENABLE_ICC, "false"),
            (DEFAULT_BRIDGE, "false"),
            (INHIBIT_IPV4, "true"),
        ]);
        let o = BridgeOptions::try_from(&r).unwrap();
        assert!(!o.enable_icc);
        assert!(o.inhibit_ipv4);
        assert_eq!(unknown_keys(&r), ["com.docker.network.bridge.bogus", "foo"]);
    }

    #[test]
    fn endpoint_options_are_kept_except_in_cnms_namespace() {
        check_endpoint_options(&raw(&[("foo", "bar"), ("com.example.x", "1")])).unwrap();
        let e = check_endpoint_options(&raw(&[("com.cnm.endpoint.nope", "1")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("com.cnm.endpoint.nope"), "{e}");
    }

    #[test]
    fn unknown_key_in_cnms_namespace_is_refused_naming_it() {
        let key = "com.cnm.network.bridge.internal_host_acess";
        let e = BridgeOptions::try_from(&raw(&[(key, "true")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains(key) && e.to_string().contains("true"),
            "{e}"
        );
        assert!(unknown_keys(&raw(&[(key, "true")])).is_empty());
    }

    #[test]
    fn default_bridge_true_is_refused_naming_it() {
        let e = BridgeOptions::try_from(&raw(&[(DEFAULT_BRIDGE, "true")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(DEFAULT_BRIDGE), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (key, value) in [
            (ENABLE_ICC, "maybe"),
            (BRIDGE_NAME, "a-name-far-too-long"),
            (HOST_BINDING_IPV4, "1.2.3"),
            (HOST_BINDING_IPV4, "255.255.255.255"),
            (HOST_BINDING_IPV4, "224.0.0.1"),
            (GATEWAY_MODE_IPV4, "isolate"),
            (GATEWAY_MODE_IPV6, "nat_unprotected"),
            (TRUSTED_HOST_INTERFACES, "eth0:a-name-far-too-long"),
            (CONTAINER_IFACE_PREFIX, "bad/prefix"),
            (INTERNAL_HOST_ACCESS, "sometimes"),
            (INHIBIT_IPV4, "perhaps"),
            (DEFAULT_BRIDGE, "no"),
        ] {
            let e = BridgeOptions::try_from(&raw(&[(key, value)])).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{key}={value}");
            let text = e.to_string();
            assert!(text.contains(key) && text.contains(value), "{text}");
        }
        // The generic MTU label is the controller's, never the driver's to parse: handed to the
        // bridge anyway, it has no effect (and would be named, not acted on).
        let r = raw(&[(cnm_core::options::KEY_DRIVER_MTU, "1")]);
        assert_eq!(
            BridgeOptions::try_from(&r).unwrap(),
            BridgeOptions::default()
        );
        assert_eq!(unknown_keys(&r), [cnm_core::options::KEY_DRIVER_MTU]);
    }

    #[test]
    fn driver_config_parses_the_no_drop_flag_and_refuses_others() {
        assert_eq!(
            DriverConfig::try_from(&DriverOptions::new()).unwrap(),
            DriverConfig::default()
        );
        let c = DriverConfig::try_from(&raw(&[(IP_FORWARD_NO_DROP, "true")])).unwrap();
        assert!(c.ip_forward_no_drop);
        let e = DriverConfig::try_from(&raw(&[(IP_FORWARD_NO_DROP, "yes")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(IP_FORWARD_NO_DROP), "{e}");
        let e = DriverConfig::try_from(&raw(&[(BRIDGE_NAME, "br0")])).unwrap_err();
        assert!(e.to_string().contains(BRIDGE_NAME), "{e}");
    }
}
