//! The seed: libnetwork's README example, in Rust. Creates a bridge network, an endpoint, and
//! joins it to a container's sandbox; prints what it made (ids, the sandbox key — the path of the
//! container's network namespace — and the interfaces inside it), then removes all of it.
//!
//! Run as root: `cargo run --example readme`. It uses the defaults: /run/cnm, /var/lib/cnm and the
//! machine's own network namespace as the host. The store is the durable default (the embedded
//! one in /var/lib/cnm, locked while the controller lives): what the example makes would be
//! reloaded by the next controller on these directories if it did not remove it at the end.
#![allow(clippy::print_stdout)]

use cnm::{Controller, DriverOptions, EndpointOptions, JoinOption, NetworkOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let controller = Controller::builder().build().await?; // embedded store, default paths
    controller
        .configure_network_driver("bridge", DriverOptions::default())
        .await?;
    let network = controller
        .new_network("bridge", "network1", NetworkOptions::default())
        .await?;
    let ep = network
        .create_endpoint("Endpoint1", EndpointOptions::default())
        .await?;
    let sandbox = ep
        .join(
            "container1",
            [
                JoinOption::hostname("test"),
                JoinOption::domainname("docker.io"),
            ],
        )
        .await?;
    let sandbox_key = sandbox.key(); // path of the container's netns

    println!("drivers:     {}", controller.drivers().join(", "));
    println!(
        "network:     {} {} (driver {})",
        network.name(),
        network.id(),
        network.driver()
    );
    for pool in network.ipv4() {
        let gw = pool.gateway.map(|g| g.to_string()).unwrap_or_default();
        println!("  subnet:    {} gateway {gw}", pool.pool);
    }
    println!("endpoint:    {} {}", ep.name(), ep.id());
    if let Some(ip) = ep.ipv4() {
        println!("  address:   {ip}");
    }
    if let Some(mac) = ep.mac() {
        println!("  mac:       {mac}");
    }
    println!("sandbox key: {}", sandbox_key.display());
    println!("sandbox:     {} (container1)", sandbox.id());
    for link in sandbox.netlink().links().await? {
        let addrs: Vec<String> = sandbox
            .netlink()
            .addresses(Some(link.index))
            .await?
            .into_iter()
            .map(|a| a.addr.to_string())
            .collect();
        let state = if link.up { "up" } else { "down" };
        println!("  interface: {} {state} {}", link.name, addrs.join(" "));
    }
    println!("  hosts:     {}", sandbox.hosts_path().display());
    let hosts = std::fs::read_to_string(sandbox.hosts_path())?;
    if let Some(line) = hosts.lines().find(|l| l.contains("test.docker.io")) {
        println!("             {line}");
    }

    // Tear everything down again, in the reverse order.
    ep.leave("container1").await?;
    sandbox.delete().await?;
    ep.delete().await?;
    network.delete().await?;
    println!("removed the sandbox, the endpoint and the network");
    // Lets go of the store and its lock (dropping the controller would too).
    controller.shutdown().await?;
    Ok(())
}
