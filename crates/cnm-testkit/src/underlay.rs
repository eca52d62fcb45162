//! Several hosts of one cluster on one machine: an underlay bridge in a namespace of the
//! test's, a real etcd listening on it, and hosts ([`TestHost`]s) each with a veth (`eth0`)
//! onto it. Nothing touches the machine's own interfaces: etcd listens on the underlay bridge,
//! the hosts reach it and each other over their veths.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink};

use crate::TestHost;
use crate::etcd::EtcdServer;

/// The underlay: its namespace (a machine outside every host, where etcd runs), its bridge
/// `under0` with the address `<prefix>.254/24`, and etcd on that address.
#[derive(Debug)]
pub struct Underlay {
    /// The underlay's own namespace.
    pub netns: NetNs,
    /// etcd, listening on [`Underlay::etcd_addr`].
    pub etcd: EtcdServer,
    netlink: Netlink,
    bridge: u32,
    prefix: [u8; 3],
}

impl Underlay {
    /// The bridge on `prefix.0/24` (for example `[192, 168, 77]`) and etcd on `prefix.254`.
    pub async fn start(prefix: [u8; 3]) -> Result<Underlay> {
        let netns = NetNs::create_anonymous()
            .await
            .context("creating the underlay's namespace needs root; run `cargo xtask test`")?;
        let netlink = Netlink::connect(&netns).await?;
        netlink.loopback_up().await?;
        let mut br = LinkSpec::new("under0".parse()?, LinkKind::Bridge);
        br.up = true;
        netlink.create_link(&br).await?;
        let bridge = netlink.link("under0").await?.context("under0")?.index;
        let [a, b, c] = prefix;
        let etcd_addr = Ipv4Addr::new(a, b, c, 254);
        netlink
            .add_address(bridge, format!("{etcd_addr}/24").parse()?)
            .await?;
        let etcd = EtcdServer::start(&netns, etcd_addr.into()).await?;
        Ok(Underlay {
            netns,
            etcd,
            netlink,
            bridge,
            prefix,
        })
    }

    /// etcd's address on the underlay.
    pub fn etcd_addr(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// A new host on the underlay: a fresh [`TestHost`] whose `eth0` (a veth `ul<i>` on the
    /// bridge) has `<prefix>.<i>/24`; returns it with that address. `i` is 1 to 253.
    pub async fn add_host(&self, i: u8) -> Result<(TestHost, IpAddr)> {
        let test = TestHost::new().await?;
        let mut veth = LinkSpec::new(
            format!("ul{i}").parse()?,
            LinkKind::Veth {
                peer_name: "eth0".parse()?,
                peer_ns: Some(test.netns().clone()),
                peer_mac: None,
                peer_mtu: None,
                peer_up: true,
            },
        );
        veth.master = Some(self.bridge);
        veth.up = true;
        self.netlink.create_link(&veth).await?;
        let eth0 = test.netlink().link("eth0").await?.context("eth0")?;
        let [a, b, c] = self.prefix;
        let addr: IpAddr = Ipv4Addr::new(a, b, c, i).into();
        test.netlink()
            .add_address(eth0.index, format!("{addr}/24").parse()?)
            .await?;
        Ok((test, addr))
    }
}
