//! Response bodies: networks in Docker's shape, sandboxes in cnm's.

use std::collections::BTreeMap;

use cnm::{Controller, Endpoint, Network, PortBinding, Sandbox};
use serde::Serialize;

/// A network as `GET /networks/{id}` shows it (Docker's `network.Inspect`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct NetworkView {
    pub name: String,
    pub id: String,
    pub created: String,
    pub scope: String,
    pub driver: String,
    #[serde(rename = "EnableIPv4")]
    pub enable_ipv4: bool,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamView,
    pub internal: bool,
    pub attachable: bool,
    pub ingress: bool,
    pub config_from: ConfigFromView,
    pub config_only: bool,
    pub containers: BTreeMap<String, ContainerView>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// Docker's `IPAM`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct IpamView {
    pub driver: String,
    pub options: BTreeMap<String, String>,
    pub config: Vec<IpamConfigView>,
}

/// One `IPAM.Config` entry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct IpamConfigView {
    pub subnet: String,
    #[serde(rename = "IPRange", skip_serializing_if = "String::is_empty")]
    pub ip_range: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub auxiliary_addresses: BTreeMap<String, String>,
}

/// Docker's `ConfigFrom`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ConfigFromView {
    pub network: String,
}

/// One container (sandbox) attached to a network.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct ContainerView {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

fn opt_string<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl NetworkView {
    /// Builds the view; `created` is the RFC 3339 creation time.
    pub async fn new(ctl: &Controller, net: &Network, created: String) -> Self {
        let opts = net.options();
        let range_of = |subnet: String| {
            opts.pools
                .iter()
                .find(|p| p.subnet().to_string() == subnet)
                .and_then(|p| p.ip_range())
                .map(|r| r.to_string())
                .unwrap_or_default()
        };
        let mut config = Vec::new();
        for d in net.ipv4() {
            let subnet = d.pool.to_string();
            config.push(IpamConfigView {
                ip_range: range_of(subnet.clone()),
                subnet,
                gateway: opt_string(d.gateway.map(|g| g.addr())),
                auxiliary_addresses: aux(&d.aux_addresses),
            });
        }
        for d in net.ipv6() {
            let subnet = d.pool.to_string();
            config.push(IpamConfigView {
                ip_range: range_of(subnet.clone()),
                subnet,
                gateway: opt_string(d.gateway.map(|g| g.addr())),
                auxiliary_addresses: aux(&d.aux_addresses),
            });
        }
        let mut containers = BTreeMap::new();
        for ep in net.endpoints() {
            let Some(sandbox_id) = ep.sandbox_id() else {
                continue;
            };
            let name = ctl
                .sandbox(&sandbox_id)
                .map(|s| s.container_id().to_owned())
                .unwrap_or_default();
            containers.insert(
                sandbox_id,
                ContainerView {
                    name,
                    endpoint_id: ep.id().to_owned(),
                    mac_address: opt_string(ep.mac()),
                    ipv4_address: opt_string(ep.ipv4()),
                    ipv6_address: opt_string(ep.ipv6()),
                },
            );
        }
        Self {
            name: net.name().to_owned(),
            id: net.id().to_owned(),
            created,
            scope: "local".to_owned(),
            driver: net.driver().to_owned(),
            enable_ipv4: opts.enable_ipv4,
            enable_ipv6: opts.enable_ipv6,
            ipam: IpamView {
                driver: opts
                    .ipam_driver
                    .clone()
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| "default".to_owned()),
                options: BTreeMap::new(),
                config,
            },
            internal: opts.internal,
            attachable: false,
            ingress: false,
            config_from: ConfigFromView::default(),
            config_only: false,
            containers,
            options: opts.as_docker_options(),
            labels: opts.labels.clone(),
        }
    }
}

fn aux(m: &BTreeMap<String, std::net::IpAddr>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

/// A sandbox as cnm's API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct SandboxView {
    pub id: String,
    pub name: String,
    pub key: String,
    pub hosts_path: String,
    pub resolv_conf_path: String,
    pub hostname: String,
    pub endpoints: Vec<SandboxEndpointView>,
}

/// One endpoint joined to a sandbox.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct SandboxEndpointView {
    pub network: String,
    pub network_id: String,
    pub endpoint_id: String,
    pub endpoint_name: String,
    pub interface: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
    pub mac_address: String,
    pub gateway: bool,
    pub ports: Vec<PortView>,
}

/// One published port. A range shows its first port, with `HostPortEnd`/`ContainerPortEnd`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct PortView {
    pub proto: String,
    /// Empty for every address of both families.
    pub host_ip: String,
    pub host_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port_end: Option<u16>,
    pub container_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_port_end: Option<u16>,
}

impl From<&PortBinding> for PortView {
    fn from(b: &PortBinding) -> Self {
        let host = b.host_port;
        Self {
            proto: b.proto.to_string(),
            host_ip: opt_string(b.host_ip),
            host_port: host.map(|h| h.start).unwrap_or(0),
            host_port_end: host.filter(|h| h.end != h.start).map(|h| h.end),
            container_port: b.container_port.start,
            container_port_end: (b.container_port.end != b.container_port.start)
                .then_some(b.container_port.end),
        }
    }
}

impl SandboxView {
    /// Builds the view.
    pub async fn new(sb: &Sandbox) -> Self {
        let gateway = sb.gateway_endpoint().map(|e| e.id().to_owned());
        let published = sb.published_ports();
        let endpoints = sb
            .endpoints()
            .into_iter()
            .map(|(ep, ifname): (Endpoint, _)| {
                let is_gw = gateway.as_deref() == Some(ep.id());
                let net = ep.network();
                SandboxEndpointView {
                    network: net.name().to_owned(),
                    network_id: net.id().to_owned(),
                    endpoint_id: ep.id().to_owned(),
                    endpoint_name: ep.name().to_owned(),
                    interface: opt_string(ifname),
                    ipv4_address: opt_string(ep.ipv4()),
                    ipv6_address: opt_string(ep.ipv6()),
                    mac_address: opt_string(ep.mac()),
                    gateway: is_gw,
                    // Ports are published for the gateway endpoint only (libnetwork's rule).
                    ports: if is_gw {
                        published.iter().map(PortView::from).collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        Self {
            id: sb.id().to_owned(),
            name: sb.container_id().to_owned(),
            key: sb.key().display().to_string(),
            hosts_path: sb.hosts_path().display().to_string(),
            resolv_conf_path: sb.resolv_conf_path().display().to_string(),
            hostname: sb.options().hostname.clone().unwrap_or_default(),
            endpoints,
        }
    }
}
