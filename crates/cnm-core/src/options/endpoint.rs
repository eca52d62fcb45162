//! Endpoint options: static addresses, MAC, DNS names and aliases, exposed and published ports.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use cnm_types::MacAddress;
use serde::{Deserialize, Serialize};

use super::check_dns_name;
use crate::CoreError;
pub use crate::port::ExposedPort;
use crate::port::{PortBinding, PortError};
use crate::spi::DriverOptions;

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
    /// Published ports (programmed while this endpoint is its sandbox's gateway endpoint).
    pub port_bindings: Vec<PortBinding>,
    /// Driver options for this endpoint.
    pub driver_options: DriverOptions,
}

impl EndpointOptions {
    /// Asks for a static IPv4 address.
    pub fn ipv4(mut self, ip: Ipv4Addr) -> Self {
        self.ipv4 = Some(ip);
        self
    }

    /// Asks for a static IPv6 address.
    pub fn ipv6(mut self, ip: Ipv6Addr) -> Self {
        self.ipv6 = Some(ip);
        self
    }

    /// Asks for a MAC address.
    pub fn mac(mut self, mac: MacAddress) -> Self {
        self.mac = Some(mac);
        self
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

    /// Checks what the public fields can get wrong: a multicast MAC, malformed names, port
    /// bindings whose ranges differ in size.
    pub fn validate(&self) -> Result<(), CoreError> {
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
        let exposed_ports = raw
            .exposed_ports
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e: PortError| CoreError::invalid("ExposedPorts", s, e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let port_bindings = raw
            .port_bindings
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|e: PortError| CoreError::invalid("PortBindings", s, e.to_string()))
            })
            .collect::<Result<_, _>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let cases: Vec<(RawEndpointOptions, [&str; 2])> = vec![
            (
                RawEndpointOptions {
                    ipam_config: RawEndpointIpam {
                        ipv4_address: "10.1.0".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ["IPv4Address", "10.1.0"],
            ),
            (
                RawEndpointOptions {
                    ipam_config: RawEndpointIpam {
                        ipv6_address: "10.1.0.1".into(),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ["IPv6Address", "10.1.0.1"],
            ),
            (
                RawEndpointOptions {
                    mac_address: "zz".into(),
                    ..Default::default()
                },
                ["MacAddress", "zz"],
            ),
            (
                RawEndpointOptions {
                    mac_address: "01:00:5e:00:00:01".into(),
                    ..Default::default()
                },
                ["mac address", "01:00:5e:00:00:01"],
            ),
            (
                RawEndpointOptions {
                    port_bindings: vec!["99999".into()],
                    ..Default::default()
                },
                ["PortBindings", "99999"],
            ),
            (
                RawEndpointOptions {
                    exposed_ports: vec!["80/icmp".into()],
                    ..Default::default()
                },
                ["ExposedPorts", "80/icmp"],
            ),
            (
                RawEndpointOptions {
                    aliases: vec!["bad name".into()],
                    ..Default::default()
                },
                ["alias", "bad name"],
            ),
        ];
        for (raw, needles) in cases {
            let e = EndpointOptions::try_from(raw).unwrap_err();
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
            for n in needles {
                assert!(e.to_string().contains(n), "{e} lacks {n}");
            }
        }
    }
}
