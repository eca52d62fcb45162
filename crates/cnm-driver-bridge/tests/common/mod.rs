//! Shared fixtures of the bridge driver's privileged tests: a controller bound to a throwaway
//! host namespace, containers made the way a user makes them, and leak checks.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use cnm_core::{
    Controller, Endpoint, EndpointOptions, Network, NetworkOptions, PortBinding, Sandbox,
};
use cnm_driver_bridge::BridgeDriver;
use cnm_sandbox::{IpFamily, NetNs, Netlink};
use cnm_testkit::TestHost;
use ipnet::IpNet;

/// A controller whose "host" is a throwaway namespace (cnm-testkit's fixture).
pub struct World {
    pub host: TestHost,
    pub ctl: Controller,
}

impl World {
    pub async fn new() -> Result<World> {
        World::on(TestHost::new().await?).await
    }

    /// A controller on `host`.
    pub async fn on(host: TestHost) -> Result<World> {
        let ctl = host.controller().await?;
        Ok(World { host, ctl })
    }

    /// Shuts the controller down and builds a new one on the same host and directories: a
    /// restart of cnmd (the new one reloads the store and restores the kernel state).
    pub async fn restart(self) -> Result<World> {
        let World { host, ctl } = self;
        let ctl = host.restart(ctl).await?;
        Ok(World { host, ctl })
    }

    /// The bridge driver instance the controller made for this host.
    pub fn driver(&self) -> Arc<BridgeDriver> {
        BridgeDriver::instance_for(self.host.netns())
            .expect("the controller created a bridge driver for this host")
    }

    /// An IPv4 bridge network on `subnet`.
    pub async fn net4(&self, name: &str, subnet: &str) -> Result<Network> {
        self.net(name, NetworkOptions::default().subnet(subnet.parse()?))
            .await
    }

    pub async fn net(&self, name: &str, opts: NetworkOptions) -> Result<Network> {
        Ok(self.ctl.new_network("bridge", name, opts).await?)
    }

    /// Creates an endpoint on `net` and joins a new container `name` to it.
    pub async fn run(&self, net: &Network, name: &str, opts: EndpointOptions) -> Result<Ctr> {
        let ep = net.create_endpoint(name, opts).await?;
        ep.join(name, []).await?;
        let sb = self.ctl.sandbox_by_container_id(name)?;
        Ok(Ctr { ep, sb })
    }

    /// Joins an existing container to one more network.
    pub async fn connect(&self, net: &Network, ctr: &Ctr, ep_name: &str) -> Result<Endpoint> {
        let ep = net
            .create_endpoint(ep_name, EndpointOptions::default())
            .await?;
        ep.join_sandbox(&ctr.sb, []).await?;
        Ok(ep)
    }

    /// Runs a command inside the host namespace (a thread there forks it, so it inherits it).
    pub async fn host_cmd(&self, args: &[&str]) -> Result<String> {
        run_in(self.host.netns(), args).await
    }

    /// Link names in the host namespace.
    pub async fn host_links(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .host
            .netlink()
            .links()
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        v.sort();
        Ok(v)
    }

    /// The nftables ruleset of the host namespace, as text.
    pub async fn ruleset(&self) -> Result<String> {
        self.host_cmd(&["nft", "list", "ruleset"]).await
    }

    /// Whether `port` can be bound on every address of the host (no reservation left).
    pub async fn port_free(&self, port: u16, udp: bool) -> Result<bool> {
        self.host
            .netns()
            .run(move || {
                let ty = if udp {
                    socket2::Type::DGRAM
                } else {
                    socket2::Type::STREAM
                };
                let s = socket2::Socket::new(socket2::Domain::IPV4, ty, None)?;
                Ok::<bool, std::io::Error>(
                    s.bind(&std::net::SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port).into())
                        .is_ok(),
                )
            })
            .await?
            .map_err(Into::into)
    }
}

/// A container: its endpoint and sandbox.
pub struct Ctr {
    pub ep: Endpoint,
    pub sb: Sandbox,
}

impl Ctr {
    pub fn ns(&self) -> &NetNs {
        self.sb.netns()
    }
    pub fn v4(&self) -> IpAddr {
        self.ep.ipv4().expect("endpoint has IPv4").addr().into()
    }
    pub fn v6(&self) -> IpAddr {
        self.ep.ipv6().expect("endpoint has IPv6").addr().into()
    }
    pub async fn published(&self) -> Vec<PortBinding> {
        self.sb.published_ports()
    }
}

pub async fn run_in(ns: &NetNs, args: &[&str]) -> Result<String> {
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let shown = owned.join(" ");
    let out = ns
        .run(move || Command::new(&owned[0]).args(&owned[1..]).output())
        .await?
        .with_context(|| format!("failed to run {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every address inside a namespace, of one family, except loopback's.
pub async fn addresses(netlink: &Netlink, family: IpFamily) -> Result<Vec<IpNet>> {
    let lo = netlink.link("lo").await?.map(|l| l.index);
    Ok(netlink
        .addresses(None)
        .await?
        .into_iter()
        .filter(|a| Some(a.index) != lo)
        .map(|a| a.addr)
        .filter(|a| {
            matches!(
                (family, a),
                (IpFamily::V4, IpNet::V4(_)) | (IpFamily::V6, IpNet::V6(_))
            )
        })
        .collect())
}

pub fn p(s: &str) -> PortBinding {
    s.parse().expect("valid port binding")
}

pub fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("valid IPv4")
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("valid IPv6")
}

/// Asserts the host has no bridge, veth or rule of ours beyond `baseline` links.
pub async fn assert_clean(world: &World, baseline: &[String], ports: &[u16]) -> Result<()> {
    let links = world.host_links().await?;
    ensure!(
        links == baseline,
        "links left behind: {links:?} (baseline {baseline:?})"
    );
    let rules = world.ruleset().await?;
    for port in ports {
        ensure!(
            !rules.contains(&port.to_string()),
            "a rule for port {port} was left behind:\n{rules}"
        );
        ensure!(
            world.port_free(*port, false).await?,
            "host port {port}/tcp is still held"
        );
    }
    Ok(())
}
