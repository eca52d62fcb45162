//! cnm's own API under `/cnm/v1`: sandboxes (a container's network stack without the process),
//! connecting them with published ports, and daemon info.
//!
//! Request bodies are strict: an unknown field is refused, naming it. Published ports travel as
//! strings in the one `-p` grammar ([`cnm_types::port`]) and are parsed, and so validated, as
//! they are decoded.

use cnm_types::port::{PortBinding, Protocol};
use serde::{Deserialize, Serialize};

use crate::de::port_specs;

/// `GET /cnm/v1/info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Info {
    /// cnmd's version.
    pub version: String,
    /// The Docker API version it speaks.
    pub api_version: String,
    /// The built-in drivers.
    pub drivers: Vec<String>,
    /// The state dir.
    pub state_dir: String,
    /// The run dir.
    pub run_dir: String,
    /// `memory` or `redb`.
    pub store: String,
}

/// `POST /cnm/v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SandboxCreateRequest {
    /// The sandbox's name (Docker's container id): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
    pub name: String,
    /// The hostname in /etc/hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// Extra /etc/hosts entries, `name:ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Vec<String>>,
    /// Name servers for resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_search: Option<Vec<String>>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_options: Option<Vec<String>>,
    /// The sandbox is the host's own network namespace (for the `host` network, which only
    /// such a sandbox joins: `cnm run --network host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_namespace: Option<bool>,
}

/// `POST /cnm/v1/sandboxes/{key}/connect`: create an endpoint on a network and join it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConnectRequest {
    /// The network: name, id or unique id prefix.
    #[serde(rename = "Network")]
    pub network: String,
    /// A static IPv4 address.
    #[serde(
        rename = "IPv4Address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<String>,
    /// A static IPv6 address.
    #[serde(
        rename = "IPv6Address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<String>,
    /// The endpoint's MAC.
    #[serde(
        rename = "MacAddress",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mac_address: Option<String>,
    /// Network-scoped DNS aliases.
    #[serde(rename = "Aliases", default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// DNS names.
    #[serde(rename = "DnsNames", default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
    /// Published ports, each `[HOST_IP:][HOST_PORT:]CTR_PORT[/PROTO]` on the wire. They follow
    /// the sandbox's default route: taken only by a connect that makes this endpoint the
    /// gateway endpoint.
    #[serde(
        rename = "Ports",
        default,
        with = "port_specs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<PortBinding>,
    /// Which endpoint gives the sandbox its default gateway: the highest.
    #[serde(
        rename = "GatewayPriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_priority: Option<i32>,
}

/// `POST /cnm/v1/sandboxes/{key}/disconnect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SandboxDisconnectRequest {
    /// The network: name, id or unique id prefix.
    pub network: String,
}

/// A sandbox, as every `/cnm/v1/sandboxes` answer shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Sandbox {
    /// The id.
    pub id: String,
    /// The name (Docker's container id).
    pub name: String,
    /// The path of its network namespace.
    pub key: String,
    /// Its /etc/hosts.
    pub hosts_path: String,
    /// Its /etc/resolv.conf.
    pub resolv_conf_path: String,
    /// Its hostname (empty when none was given).
    pub hostname: String,
    /// The endpoints joined to it.
    pub endpoints: Vec<SandboxEndpoint>,
}

/// One endpoint joined to a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SandboxEndpoint {
    /// The network's name.
    pub network: String,
    /// The network's id.
    pub network_id: String,
    /// The endpoint's id.
    pub endpoint_id: String,
    /// The endpoint's name.
    pub endpoint_name: String,
    /// Its interface in the sandbox (`eth0`).
    pub interface: String,
    /// `address/prefix`, or empty.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// `address/prefix`, or empty.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
    /// Its MAC.
    pub mac_address: String,
    /// Whether it gives the sandbox its default route (and so holds the published ports).
    pub gateway: bool,
    /// Its network-scoped aliases, as given (Docker's `Aliases`).
    pub aliases: Vec<String>,
    /// The names the embedded DNS answers for it: its name, aliases and DNS names (Docker's
    /// `DNSNames`); empty on a network without embedded DNS (the default `bridge`).
    #[serde(rename = "DNSNames")]
    pub dns_names: Vec<String>,
    /// The ports published, with the host ports chosen for ephemeral requests.
    pub ports: Vec<PublishedPort>,
    /// The endpoint's driver options as given (Docker's `EndpointSettings.DriverOpts`, which
    /// dockerd shows in a container's inspect): absent when there are none.
    #[serde(
        rename = "DriverOpts",
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub driver_opts: std::collections::BTreeMap<String, String>,
}

/// One published port as made. A range shows its first port, with `HostPortEnd`/
/// `ContainerPortEnd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublishedPort {
    /// The protocol.
    pub proto: Protocol,
    /// Empty for every address of both families.
    #[serde(default)]
    pub host_ip: String,
    /// The (first) host port; 0 when none was chosen.
    pub host_port: u16,
    /// The last host port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    /// The (first) container port.
    pub container_port: u16,
    /// The last container port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port_end: Option<u16>,
}

impl From<&PortBinding> for PublishedPort {
    fn from(b: &PortBinding) -> Self {
        let end = |r: cnm_types::PortRange| (r.end != r.start).then_some(r.end);
        Self {
            proto: b.proto,
            host_ip: b.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            host_port: b.host_port.map_or(0, |h| h.start),
            host_port_end: b.host_port.and_then(end),
            container_port: b.container_port.start,
            container_port_end: end(b.container_port),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ports_travel_in_the_one_grammar() {
        let r: SandboxConnectRequest = serde_json::from_str(
            r#"{"Network":"n","Ports":["127.0.0.1:8080:80","[::1]::53/udp","8000-8001:9000-9001"]}"#,
        )
        .unwrap();
        assert_eq!(r.ports.len(), 3);
        assert_eq!(r.ports[1].proto, Protocol::Udp);
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"Network": "n",
                   "Ports": ["127.0.0.1:8080:80/tcp", "[::1]::53/udp", "8000-8001:9000-9001/tcp"]})
        );
        let r: SandboxConnectRequest =
            serde_json::from_str(r#"{"Network":"n","Ports":null}"#).unwrap();
        assert!(r.ports.is_empty());
    }

    #[test]
    fn a_bad_port_or_field_is_refused_naming_it() {
        for (body, needle) in [
            (r#"{"Network":"n","Ports":["99999"]}"#, "99999"),
            (r#"{"Network":"n","Ports":["80/icmp"]}"#, "icmp"),
            (
                r#"{"Network":"n","Ports":["255.255.255.255:80:80"]}"#,
                "broadcast",
            ),
            (r#"{"Network":"n","Ports":[80]}"#, "string"),
            (r#"{"Network":"n","Bogus":1}"#, "Bogus"),
            (r#"{"Ports":[]}"#, "Network"),
        ] {
            let e = serde_json::from_str::<SandboxConnectRequest>(body).unwrap_err();
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
        let e =
            serde_json::from_str::<SandboxCreateRequest>(r#"{"Name":"x","Bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("Bogus"), "{e}");
    }

    #[test]
    fn published_ports_show_ranges_by_their_ends() {
        let b: PortBinding = "10.0.0.1:8000-8001:9000-9001/udp".parse().unwrap();
        assert_eq!(
            serde_json::to_value(PublishedPort::from(&b)).unwrap(),
            json!({"Proto": "udp", "HostIp": "10.0.0.1", "HostPort": 8000, "HostPortEnd": 8001,
                   "ContainerPort": 9000, "ContainerPortEnd": 9001})
        );
        let b: PortBinding = "80".parse().unwrap();
        assert_eq!(
            serde_json::to_value(PublishedPort::from(&b)).unwrap(),
            json!({"Proto": "tcp", "HostIp": "", "HostPort": 0, "ContainerPort": 80})
        );
    }

    #[test]
    fn sandbox_answers_round_trip() {
        let s = Sandbox {
            id: "abc".into(),
            name: "web".into(),
            endpoints: vec![SandboxEndpoint {
                network: "n".into(),
                gateway: true,
                ports: vec![PublishedPort::from(
                    &"8080:80".parse::<PortBinding>().unwrap(),
                )],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["Endpoints"][0]["Ports"][0]["HostPort"], 8080);
        assert_eq!(v["Endpoints"][0]["IPv4Address"], "");
        assert_eq!(serde_json::from_value::<Sandbox>(v).unwrap(), s);
    }
}
