//! Response bodies built from the controller's objects: networks in Docker's shape
//! ([`cnm_api::docker::Network`]), sandboxes in cnm's ([`cnm_api::v1::Sandbox`]).

use std::collections::BTreeMap;

use cnm::{Controller, Endpoint, Network, Sandbox};
use cnm_api::docker::{self, ConfigReference, EndpointResource, Ipam, IpamConfig};
use cnm_api::v1::{self, PublishedPort, SandboxEndpoint};

fn opt_string<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A network as `GET /networks/{id}` shows it; `created` is the RFC 3339 creation time.
pub async fn network(ctl: &Controller, net: &Network, created: String) -> docker::Network {
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
        config.push(IpamConfig {
            ip_range: range_of(subnet.clone()),
            subnet,
            gateway: opt_string(d.gateway.map(|g| g.addr())),
            auxiliary_addresses: aux(&d.aux_addresses),
        });
    }
    for d in net.ipv6() {
        let subnet = d.pool.to_string();
        config.push(IpamConfig {
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
            EndpointResource {
                name,
                endpoint_id: ep.id().to_owned(),
                mac_address: opt_string(ep.mac()),
                ipv4_address: opt_string(ep.ipv4()),
                ipv6_address: opt_string(ep.ipv6()),
            },
        );
    }
    docker::Network {
        name: net.name().to_owned(),
        id: net.id().to_owned(),
        created,
        scope: "local".to_owned(),
        driver: net.driver().to_owned(),
        enable_ipv4: opts.enable_ipv4,
        enable_ipv6: opts.enable_ipv6,
        ipam: Ipam {
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
        config_from: ConfigReference::default(),
        config_only: false,
        containers,
        options: opts.as_docker_options(),
        labels: opts.labels.clone(),
    }
}

fn aux(m: &BTreeMap<String, std::net::IpAddr>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

/// A sandbox as cnm's API shows it.
pub async fn sandbox(sb: &Sandbox) -> v1::Sandbox {
    let gateway = sb.gateway_endpoint().map(|e| e.id().to_owned());
    let published = sb.published_ports();
    let endpoints = sb
        .endpoints()
        .into_iter()
        .map(|(ep, ifname): (Endpoint, _)| {
            let is_gw = gateway.as_deref() == Some(ep.id());
            let net = ep.network();
            SandboxEndpoint {
                network: net.name().to_owned(),
                network_id: net.id().to_owned(),
                endpoint_id: ep.id().to_owned(),
                endpoint_name: ep.name().to_owned(),
                interface: opt_string(ifname),
                ipv4_address: opt_string(ep.ipv4()),
                ipv6_address: opt_string(ep.ipv6()),
                mac_address: opt_string(ep.mac()),
                gateway: is_gw,
                aliases: ep.options().aliases.clone(),
                dns_names: ep.dns_names(),
                // Ports are published for the gateway endpoint only (libnetwork's rule).
                ports: if is_gw {
                    published.iter().map(PublishedPort::from).collect()
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    v1::Sandbox {
        id: sb.id().to_owned(),
        name: sb.container_id().to_owned(),
        key: sb.key().display().to_string(),
        hosts_path: sb.hosts_path().display().to_string(),
        resolv_conf_path: sb.resolv_conf_path().display().to_string(),
        hostname: sb.options().hostname.clone().unwrap_or_default(),
        endpoints,
    }
}
