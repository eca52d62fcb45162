//! Addresses and routes as specified and as read back.

use std::net::IpAddr;

use ipnet::IpNet;

/// An address on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// Address and prefix length.
    pub addr: IpNet,
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A route to add to or delete from the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub destination: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Route priority (metric).
    pub metric: Option<u32>,
    /// Scope link (the destination is directly reachable on `oif`); otherwise scope universe.
    pub scope_link: bool,
}

impl RouteSpec {
    /// A default route (`0.0.0.0/0` or `::/0`, matching `gw`'s family) via `gw`.
    pub fn default_via(gw: IpAddr, oif: Option<u32>) -> Self {
        let destination = match gw {
            IpAddr::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
            IpAddr::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
        };
        Self {
            destination,
            gateway: Some(gw),
            oif,
            metric: None,
            scope_link: false,
        }
    }

    /// A route to `destination` through `gw`.
    pub fn via(destination: IpNet, gw: IpAddr, oif: Option<u32>) -> Self {
        Self {
            gateway: Some(gw),
            ..Self::on_link(destination, oif)
        }
        .with_scope_link(false)
    }

    /// An on-link route: `destination` is directly reachable on `oif` (no gateway, scope link).
    pub fn on_link(destination: IpNet, oif: Option<u32>) -> Self {
        Self {
            destination,
            gateway: None,
            oif,
            metric: None,
            scope_link: true,
        }
    }

    /// Sets the metric.
    pub fn with_metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    /// Sets scope link.
    pub fn with_scope_link(mut self, scope_link: bool) -> Self {
        self.scope_link = scope_link;
        self
    }

    /// The family of the destination.
    pub fn family(&self) -> IpFamily {
        match self.destination {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }
}

/// A route in the main table as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub destination: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Route priority (metric).
    pub metric: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_via_matches_gateway_family() {
        let r = RouteSpec::default_via("10.0.0.1".parse().unwrap(), Some(3));
        assert_eq!(r.destination.to_string(), "0.0.0.0/0");
        assert_eq!(r.family(), IpFamily::V4);
        let r6 = RouteSpec::default_via("fd00::1".parse().unwrap(), None);
        assert_eq!(r6.destination.to_string(), "::/0");
        assert_eq!(r6.family(), IpFamily::V6);
        assert!(!r6.scope_link);
        let l = RouteSpec::on_link("10.1.0.0/16".parse().unwrap(), Some(2));
        assert!(l.scope_link && l.gateway.is_none());
        let v = RouteSpec::via(
            "10.2.0.0/16".parse().unwrap(),
            "10.1.0.1".parse().unwrap(),
            None,
        );
        assert!(!v.scope_link && v.gateway.is_some());
    }
}
