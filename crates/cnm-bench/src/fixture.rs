//! The set-up several measurements share: a bridge network, and sandboxes joined to it through
//! endpoints that publish ports.

use anyhow::Result;
use cnm::ipnet::IpNet;
use cnm::{Controller, Endpoint, EndpointOptions, Network, NetworkOptions, PortBinding, Sandbox};

/// A bridge network `name` on `subnet`.
pub async fn bridge_network(ctl: &Controller, name: &str, subnet: IpNet) -> Result<Network> {
    let options = NetworkOptions::default().subnet(subnet);
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
