//! Endpoint options: static addresses, MAC, DNS names and aliases, exposed and published ports.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use cnm_sandbox::InterfaceSysctl;
use cnm_types::{IfName, MacAddress};
use serde::{Deserialize, Serialize};

use super::check_dns_name;
use crate::CoreError;
pub use crate::port::ExposedPort;
use crate::port::{PortBinding, PortError};
use crate::spi::DriverOptions;

/// Docker's endpoint option (moby 25+) with sysctls of the endpoint's interface inside the
/// sandbox: a comma-separated list of `net.X.Y.IFNAME.Z=V`, `X` one of `ipv4`, `ipv6`, `mpls`,
/// `IFNAME` (or `ifname`, as the docker CLI lowercases it) standing for the interface's name.
/// Core owns it: it is checked when the endpoint is created and applied in the join, for every
/// driver; drivers never see it. It stays among the endpoint's options as given.
pub const KEY_ENDPOINT_SYSCTLS: &str = "com.docker.network.endpoint.sysctls";
/// Docker's endpoint option (moby 28) naming the endpoint's interface inside the sandbox
/// (instead of `ethN`, and before a driver's own prefix). Core owns it, as
/// [`KEY_ENDPOINT_SYSCTLS`].
pub const KEY_ENDPOINT_IFNAME: &str = "com.docker.network.endpoint.ifname";

/// The endpoint option keys core owns (left out of what drivers get).
const CORE_KEYS: [&str; 2] = [KEY_ENDPOINT_SYSCTLS, KEY_ENDPOINT_IFNAME];

/// Parses [`KEY_ENDPOINT_SYSCTLS`]'s value, refusing as dockerd does (its words, naming the
/// entry), and, where dockerd would fail only at the join, before anything is made.
pub fn parse_endpoint_sysctls(value: &str) -> Result<Vec<InterfaceSysctl>, CoreError> {
    value
        .split(',')
        .map(|entry| {
            let refuse = |reason: &str| {
                CoreError::invalid(
                    KEY_ENDPOINT_SYSCTLS,
                    entry,
                    format!(
                        "unrecognised network interface sysctl '{entry}'; represent \
                         'net.X.Y.ethN.Z=V' as 'net.X.Y.IFNAME.Z=V', 'X' must be 'ipv4', 'ipv6' \
                         or 'mpls'{reason}"
                    ),
                )
            };
            let parts: Vec<&str> = entry.splitn(5, '.').collect();
            let [net, family, table, ifname, rest] = parts[..] else {
                return Err(refuse(""));
            };
            if net != "net"
                || !matches!(family, "ipv4" | "ipv6" | "mpls")
                || !matches!(ifname, "IFNAME" | "ifname")
            {
                return Err(refuse(""));
            }
            let Some((name, v)) = rest.split_once('=') else {
                return Err(refuse(" (expected name=value)"));
            };
            InterfaceSysctl::new(family, table, name, v).map_err(|e| refuse(&format!(" ({e})")))
        })
        .collect()
}

/// The typed options of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointOptions {
    /// A static IPv4 address (must lie in one of the network's pools).
    pub ipv4: Option<Ipv4Addr>,
    /// A static IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The MAC the container interface carries; the driver picks one when absent.
    pub mac: Option<MacAddress>,
    /// Names the embedded DNS answers for this endpoint.
    pub dns_names: Vec<String>,
    /// Network-scoped aliases.
    pub aliases: Vec<String>,
    /// Exposed ports.
    pub exposed_ports: Vec<ExposedPort>,
    /// Published ports (programmed while this endpoint is its sandbox's gateway endpoint, or, on
    /// a network needing the gateway network, by the sandbox's endpoint there).
    pub port_bindings: Vec<PortBinding>,
    /// Driver options for this endpoint.
    pub driver_options: DriverOptions,
}

impl EndpointOptions {
    cnm_types::setters! {
        /// Asks for a static IPv4 address.
        pub fn ipv4(ip: Ipv4Addr) => ipv4 = Some(ip);
        /// Asks for a static IPv6 address.
        pub fn ipv6(ip: Ipv6Addr) => ipv6 = Some(ip);
        /// Asks for a MAC address.
        pub fn mac(mac: MacAddress) => mac = Some(mac);
    }

    /// Adds a DNS alias.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// Publishes a port.
    pub fn publish(mut self, binding: PortBinding) -> Self {
        self.port_bindings.push(binding);
        self
    }

    /// The interface name asked for with [`KEY_ENDPOINT_IFNAME`], checked as the kernel
    /// checks names (1 to 15 bytes, no '/', ':' or whitespace).
    pub fn interface_name(&self) -> Result<Option<IfName>, CoreError> {
        self.driver_options
            .get(KEY_ENDPOINT_IFNAME)
            .map(|v| {
                IfName::new(v.as_str())
                    .map_err(|e| CoreError::invalid(KEY_ENDPOINT_IFNAME, v, e.to_string()))
            })
            .transpose()
    }

    /// The interface's sysctls asked for with [`KEY_ENDPOINT_SYSCTLS`].
    pub fn interface_sysctls(&self) -> Result<Vec<InterfaceSysctl>, CoreError> {
        match self.driver_options.get(KEY_ENDPOINT_SYSCTLS) {
            Some(v) => parse_endpoint_sysctls(v),
            None => Ok(Vec::new()),
        }
    }

    /// The driver options a driver gets: the keys core owns left out.
    pub fn options_for_driver(&self) -> DriverOptions {
        let mut o = self.driver_options.clone();
        for key in CORE_KEYS {
            o.remove(key);
        }
        o
    }

    /// Checks what the public fields can get wrong: a multicast MAC, malformed names, port
    /// bindings whose ranges differ in size, the interface name and sysctls core owns.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.interface_name()?;
        self.interface_sysctls()?;
        if let Some(mac) = self.mac
            && (mac.is_multicast() || mac.octets() == [0; 6])
        {
            return Err(CoreError::invalid(
                "mac address",
                mac,
                "a multicast or zero MAC cannot be an interface's",
            ));
        }
        for name in &self.dns_names {
            check_dns_name("dns name", name)?;
        }
        for alias in &self.aliases {
            check_dns_name("alias", alias)?;
        }
        for binding in &self.port_bindings {
            binding
                .validate()
                .map_err(|e| CoreError::invalid("port binding", binding, e.to_string()))?;
        }
        Ok(())
    }
}

/// Docker's `EndpointSettings.IPAMConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawEndpointIpam {
    /// A static IPv4 address.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// A static IPv6 address.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// Endpoint options as Docker's `EndpointSettings` (plus the container's ports in `-p` syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RawEndpointOptions {
    /// Static addresses.
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: RawEndpointIpam,
    /// `02:42:ac:11:00:02`.
    pub mac_address: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// DNS names.
    #[serde(rename = "DNSNames")]
    pub dns_names: Vec<String>,
    /// Driver options.
    pub driver_opts: BTreeMap<String, String>,
    /// `80/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
    /// `docker run -p` syntax: `127.0.0.1:8080:80/tcp`.
    pub port_bindings: Vec<String>,
}

impl TryFrom<RawEndpointOptions> for EndpointOptions {
    type Error = CoreError;

    fn try_from(raw: RawEndpointOptions) -> Result<Self, CoreError> {
        let ipv4 = match raw.ipam_config.ipv4_address.as_str() {
            "" => None,
            s => Some(
                s.parse()
                    .map_err(|_| CoreError::invalid("IPv4Address", s, "not an IPv4 address"))?,
            ),
        };
        let ipv6 = match raw.ipam_config.ipv6_address.as_str() {
            "" => None,
            s => Some(
                s.parse()
                    .map_err(|_| CoreError::invalid("IPv6Address", s, "not an IPv6 address"))?,
            ),
        };
        let mac = match raw.mac_address.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|e: cnm_types::MacAddressError| {
                CoreError::invalid("MacAddress", s, e.to_string())
            })?),
        };
        let exposed_ports = parse_ports("ExposedPorts", &raw.exposed_ports)?;
        let port_bindings = parse_ports("PortBindings", &raw.port_bindings)?;
        let typed = EndpointOptions {
            ipv4,
            ipv6,
            mac,
            dns_names: raw.dns_names,
            aliases: raw.aliases,
            exposed_ports,
            port_bindings,
            driver_options: raw.driver_opts,
        };
        typed.validate()?;
        Ok(typed)
    }
}

/// Parses the ports of option `field`, each as Docker writes it.
fn parse_ports<T>(field: &str, values: &[String]) -> Result<Vec<T>, CoreError>
where
    T: std::str::FromStr<Err = PortError>,
{
    values
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e: PortError| CoreError::invalid(field, s, e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_sysctls_parse_as_dockerd_checks_them() {
        let got = parse_endpoint_sysctls(
            "net.ipv4.conf.IFNAME.log_martians=1,net.ipv6.conf.ifname.accept_ra=2",
        )
        .unwrap();
        assert_eq!(
            got.iter().map(|s| s.key("eth1")).collect::<Vec<_>>(),
            [
                "net/ipv4/conf/eth1/log_martians",
                "net/ipv6/conf/eth1/accept_ra"
            ]
        );
        assert_eq!(got[1].value(), "2");
        for bad in [
            "",
            "net.ipv4.ip_forward=1",
            "net.core.conf.IFNAME.x=1",
            "kernel.ipv4.conf.IFNAME.x=1",
            "net.ipv4.conf.eth0.forwarding=1",
            "net.ipv4.conf.IFNAME.forwarding",
            "net.ipv4.conf.IFNAME.a.b=1",
            "net.ipv4.conf.IFNAME.log_martians=1,net.ipv4.ip_forward=1",
        ] {
            let e = parse_endpoint_sysctls(bad).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(KEY_ENDPOINT_SYSCTLS), "{text}");
            assert!(
                text.contains("unrecognised network interface sysctl"),
                "{text}"
            );
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn core_keys_are_checked_and_left_out_for_the_driver() {
        let mut o = EndpointOptions::default();
        o.driver_options
            .insert(KEY_ENDPOINT_IFNAME.into(), "lan0".into());
        o.driver_options.insert(
            KEY_ENDPOINT_SYSCTLS.into(),
            "net.ipv4.conf.IFNAME.forwarding=1".into(),
        );
        o.driver_options
            .insert("com.example.kept".into(), "x".into());
        o.validate().unwrap();
        assert_eq!(o.interface_name().unwrap().unwrap().as_str(), "lan0");
        assert_eq!(
            o.options_for_driver().keys().collect::<Vec<_>>(),
            ["com.example.kept"]
        );
        for bad in ["", "a/b", "has space", "sixteen-bytes-xx", "x:1"] {
            o.driver_options
                .insert(KEY_ENDPOINT_IFNAME.into(), bad.into());
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(KEY_ENDPOINT_IFNAME), "{e}");
        }
    }

    #[test]
    fn docker_json_parses() {
        let json = r#"{"IPAMConfig":{"IPv4Address":"10.1.0.9","IPv6Address":"fd00::9"},
            "MacAddress":"02:42:ac:11:00:09","Aliases":["web"],"DNSNames":["web.local"],
            "ExposedPorts":["80/tcp","53/udp"],"PortBindings":["127.0.0.1:8080:80"]}"#;
        let raw: RawEndpointOptions = serde_json::from_str(json).unwrap();
        let o = EndpointOptions::try_from(raw).unwrap();
        assert_eq!(o.ipv4.unwrap().to_string(), "10.1.0.9");
        assert_eq!(o.ipv6.unwrap().to_string(), "fd00::9");
        assert_eq!(o.mac.unwrap().to_string(), "02:42:ac:11:00:09");
        assert_eq!(o.exposed_ports[1].to_string(), "53/udp");
        assert_eq!(o.port_bindings[0].host_port.unwrap().start, 8080);
    }

    #[test]
    fn bad_inputs_name_field_and_value() {
        crate::options::assert_each_refused::<RawEndpointOptions, EndpointOptions>(&[
            (
                |r| r.ipam_config.ipv4_address = "10.1.0".into(),
                ["IPv4Address", "10.1.0"],
            ),
            (
                |r| r.ipam_config.ipv6_address = "10.1.0.1".into(),
                ["IPv6Address", "10.1.0.1"],
            ),
            (|r| r.mac_address = "zz".into(), ["MacAddress", "zz"]),
            (
                |r| r.mac_address = "01:00:5e:00:00:01".into(),
                ["mac address", "01:00:5e:00:00:01"],
            ),
            (
                |r| r.port_bindings = vec!["99999".into()],
                ["PortBindings", "99999"],
            ),
            (
                |r| r.exposed_ports = vec!["80/icmp".into()],
                ["ExposedPorts", "80/icmp"],
            ),
            (
                |r| r.aliases = vec!["bad name".into()],
                ["alias", "bad name"],
            ),
        ]);
    }
}
