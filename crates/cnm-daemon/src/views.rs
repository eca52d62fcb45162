//! Response bodies built from the controller's objects: networks in Docker's shape
//! ([`cnm_api::docker::Network`]), sandboxes in cnm's ([`cnm_api::v1::Sandbox`]).

use std::collections::BTreeMap;

use cnm::{Controller, Endpoint, Network, Sandbox};
use cnm_api::docker::{self, ConfigReference, EndpointResource, Ipam, IpamConfig};
use cnm_api::v1::{self, PublishedPort, SandboxEndpoint};

/// The container of sandbox `sandbox_id`, as a `Containers` entry names it (empty when the
/// sandbox is gone).
fn container_name(ctl: &Controller, sandbox_id: &str) -> String {
    ctl.sandbox(sandbox_id)
        .map(|s| s.container_id().to_owned())
        .unwrap_or_default()
}

fn opt_string<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// What a network's answer carries, by API version and route.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The attached containers: in inspect, and in lists before API 1.28 (dockerd's lists
    /// carry none since).
    pub containers: bool,
    /// `EnableIPv4`: from API 1.48 on.
    pub enable_ipv4: bool,
}

impl Shape {
    /// Everything (inspect at the newest version).
    pub const FULL: Shape = Shape {
        containers: true,
        enable_ipv4: true,
    };
}

/// A network as `GET /networks/{id}` shows it; `created` is the RFC 3339 creation time.
///
/// `IPAM.Config` shows what the user asked for, as dockerd does: a gateway only when one was
/// given, except for a subnet IPAM picked from the default pools, whose gateway is shown too.
/// Networks the daemon made itself (`bridge`, `none`) show their subnets only, and `null` IPAM
/// options.
pub async fn network(
    ctl: &Controller,
    net: &Network,
    created: String,
    shape: Shape,
) -> docker::Network {
    let opts = net.options();
    let predefined = crate::server::PREDEFINED.contains(&net.name());
    let mut config = Vec::new();
    let (v4, v6) = (net.ipv4(), net.ipv6());
    let allocated = v4
        .iter()
        .map(|d| {
            let gw = d.gateway.map(|g| std::net::IpAddr::V4(g.addr()));
            (ipnet::IpNet::V4(d.pool), gw, &d.aux_addresses)
        })
        .chain(v6.iter().map(|d| {
            let gw = d.gateway.map(|g| std::net::IpAddr::V6(g.addr()));
            (ipnet::IpNet::V6(d.pool), gw, &d.aux_addresses)
        }));
    for (pool, allocated_gateway, aux_addresses) in allocated {
        let given = opts.pools.iter().find(|p| p.subnet() == pool);
        let gateway = match given {
            Some(p) => opt_string(p.gateway()),
            None if predefined => String::new(),
            None => opt_string(allocated_gateway),
        };
        config.push(IpamConfig {
            ip_range: opt_string(given.and_then(|p| p.ip_range())),
            // As written, host bits and all, as dockerd shows it.
            subnet: given.map_or(pool, |p| p.subnet_as_given()).to_string(),
            gateway,
            auxiliary_addresses: aux(aux_addresses),
        });
    }
    let mut containers = BTreeMap::new();
    for ep in net.endpoints().into_iter().filter(|_| shape.containers) {
        let Some(sandbox_id) = ep.sandbox_id() else {
            continue;
        };
        containers.insert(
            sandbox_id.clone(),
            EndpointResource {
                name: container_name(ctl, &sandbox_id),
                endpoint_id: ep.id().to_owned(),
                mac_address: opt_string(ep.mac()),
                ipv4_address: opt_string(ep.ipv4()),
                ipv6_address: opt_string(ep.ipv6()),
            },
        );
    }
    let mut options = opts.as_docker_options();
    if net.name() == "bridge" {
        // cnmd's own mark on the predefined `bridge` (no embedded DNS, as Docker's), not an
        // option anyone gave: Docker's view shows what dockerd shows.
        options.remove(cnm::options::KEY_EMBEDDED_DNS);
        // The mark dockerd puts on its own default network. The bridge driver refuses it on a
        // network made later (cnmd's predefined `bridge` is the one that carries it).
        options.insert(
            "com.docker.network.bridge.default_bridge".to_owned(),
            "true".to_owned(),
        );
    }
    docker::Network {
        name: net.name().to_owned(),
        id: net.id().to_owned(),
        created,
        scope: net.scope().to_string(),
        driver: net.driver().to_owned(),
        enable_ipv4: shape.enable_ipv4.then_some(opts.enable_ipv4),
        enable_ipv6: opts.enable_ipv6,
        ipam: ipam(
            opts.ipam_driver.as_deref().unwrap_or_default(),
            opts.ipam_options.clone(),
            config,
        ),
        internal: opts.internal,
        attachable: opts.attachable,
        ingress: false,
        config_from: ConfigReference::default(),
        config_only: false,
        containers,
        options,
        labels: opts.labels.clone(),
        waiting: None,
    }
}

/// A network recorded before cnmd started that waits for its driver or IPAM driver (a plugin
/// not found yet), as its record says, with `Waiting` naming what it waits for. Its endpoints
/// are shown where they are joined: they stay in their sandboxes meanwhile.
pub fn waiting_network(
    ctl: &Controller,
    w: &cnm::WaitingNetwork,
    created: String,
    shape: Shape,
) -> docker::Network {
    let rec = &w.record;
    let config = rec
        .ipv4
        .iter()
        .chain(&rec.ipv6)
        .map(|p| IpamConfig {
            subnet: p.subnet_as_given.unwrap_or(p.subnet).to_string(),
            ip_range: opt_string(p.pool_id.range()),
            gateway: opt_string(p.gateway.map(|g| g.addr())),
            auxiliary_addresses: aux(&p.aux_addresses),
        })
        .collect();
    let mut containers = BTreeMap::new();
    for ep in w.endpoints.iter().filter(|_| shape.containers) {
        let Some(sandbox_id) = ep.sandbox_id.clone() else {
            continue;
        };
        containers.insert(
            sandbox_id.clone(),
            EndpointResource {
                name: container_name(ctl, &sandbox_id),
                endpoint_id: ep.id.clone(),
                mac_address: opt_string(ep.mac),
                ipv4_address: opt_string(ep.ipv4.as_ref().map(|(a, _)| a)),
                ipv6_address: opt_string(ep.ipv6.as_ref().map(|(a, _)| a)),
            },
        );
    }
    docker::Network {
        name: rec.name.clone(),
        id: rec.id.clone(),
        created,
        scope: rec.scope.to_string(),
        driver: rec.driver.clone(),
        enable_ipv4: shape.enable_ipv4.then_some(rec.enable_ipv4),
        enable_ipv6: rec.enable_ipv6,
        ipam: ipam(&rec.ipam_driver, rec.ipam_options.clone(), config),
        internal: rec.internal,
        attachable: rec.attachable,
        ingress: false,
        config_from: ConfigReference::default(),
        config_only: false,
        containers,
        options: w
            .options
            .as_ref()
            .map(|o| o.as_docker_options())
            .unwrap_or_default(),
        labels: rec.labels.clone(),
        waiting: Some(w.waits_for.to_string()),
    }
}

/// A network's IPAM section: its driver (`default` where none was named) and its options as
/// given (null when the request had none; the predefined networks have none).
fn ipam(driver: &str, options: Option<BTreeMap<String, String>>, config: Vec<IpamConfig>) -> Ipam {
    let driver = if driver.is_empty() { "default" } else { driver };
    Ipam {
        driver: driver.to_owned(),
        options,
        config,
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
                driver_opts: ep.options().driver_options.clone(),
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
