//! The set-up several measurements share: a bridge network, and sandboxes joined to it through
//! endpoints that publish ports.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use cnm::ipnet::IpNet;
use cnm::options::KEY_EMBEDDED_DNS;
use cnm::{Controller, Endpoint, EndpointOptions, Network, NetworkOptions, PortBinding, Sandbox};

/// Whether cnm's networks are made without the embedded DNS (`--no-dns`).
static NO_DNS: AtomicBool = AtomicBool::new(false);

/// Makes every network of cnm (library and cnmd) from now on without the embedded DNS.
pub fn set_no_dns(off: bool) {
    NO_DNS.store(off, Ordering::Relaxed);
}

/// Whether cnm's networks have the embedded DNS (not `--no-dns`).
pub fn embedded_dns() -> bool {
    !NO_DNS.load(Ordering::Relaxed)
}

/// The network option that turns the embedded DNS off, as `KEY=VALUE`, under `--no-dns`.
pub fn no_dns_option() -> Option<String> {
    (!embedded_dns()).then(|| format!("{KEY_EMBEDDED_DNS}=false"))
}

/// A bridge network `name` on `subnet` (without the embedded DNS under `--no-dns`).
pub async fn bridge_network(ctl: &Controller, name: &str, subnet: IpNet) -> Result<Network> {
    let mut options = NetworkOptions::default().subnet(subnet);
    if !embedded_dns() {
        options = options.driver_option(KEY_EMBEDDED_DNS, "false");
    }
    Ok(ctl.new_network("bridge", name, options).await?)
}

/// A sandbox `name` joined to `net` through an endpoint of the same name.
pub async fn joined(
    ctl: &Controller,
    net: &Network,
    name: &str,
    options: EndpointOptions,
) -> Result<(Sandbox, Endpoint)> {
    let sb = ctl.new_sandbox(name, []).await?;
    let ep = net.create_endpoint(name, options).await?;
    ep.join_sandbox(&sb, []).await?;
    Ok((sb, ep))
}

/// `count` sandboxes `{prefix}0…`, the i-th publishing host port 20000 + i to port 80/tcp.
pub async fn publishing(
    ctl: &Controller,
    net: &Network,
    prefix: &str,
    count: u32,
) -> Result<Vec<(Sandbox, Endpoint)>> {
    let mut live = Vec::new();
    for i in 0..count {
        let binding: PortBinding = format!("{}:80/tcp", 20000 + i).parse()?;
        let options = EndpointOptions::default().publish(binding);
        live.push(joined(ctl, net, &format!("{prefix}{i}"), options).await?);
    }
    Ok(live)
}
