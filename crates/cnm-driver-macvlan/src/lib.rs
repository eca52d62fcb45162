//! The `macvlan` and `ipvlan` network drivers: containers directly on a parent link's LAN.
//!
//! One crate for both, as they share everything but the link type: the parent option
//! (`-o parent=IF`, or `IF.VLAN` for an 802.1Q sub-interface cnm creates when missing and
//! removes with the last network on it), the rules between networks on one parent, and the
//! endpoint's link, born directly in the sandbox under its final name.
//!
//! - `macvlan` modes (`-o macvlan_mode=`): `bridge` (default; endpoints of one parent talk
//!   directly), `private` (they never do), `vepa` (their traffic goes out through the parent,
//!   and only comes back if the switch there hairpins it), `passthru` (one endpoint, which
//!   takes the parent over).
//! - `ipvlan` modes (`-o ipvlan_mode=`): `l2` (default), `l3`, `l3s`. Where the kernel lacks
//!   ipvlan (or 8021q for a VLAN parent), creating the network fails at once with a typed
//!   `Unsupported` error naming the kernel feature, and leaves nothing behind: the network
//!   create probes the link type on the parent and deletes the probe.
//! - No parent: an internal network on a veth pair made for it (see [`ParentPlan::Internal`]).
//! - A gateway only where the user names one (`--gateway`): without it the endpoints get no
//!   default route ([`cnm_core::Capability::gateway_on_request`]).
//! - IPv6 stays off on an endpoint's interface unless the endpoint has an IPv6 address
//!   (CVE-2024-32473): the link is born in the sandbox, whose default is IPv6 off.
//! - Two networks on one parent may not have overlapping subnets, and a passthru network has
//!   its parent to itself (Docker's words): typed `Conflict` errors.
//! - The parent's MTU bounds the network's: a larger `com.docker.network.driver.mtu` is
//!   refused; without one, endpoints get the parent's.
//!
//! **Owns**: the `macvlan` and `ipvlan` registrations; the parent links it makes (marked with the
//! alias `cnm:<driver>:<network id>`, swept after a crash); the endpoints' links.
//! **Does not**: publish ports, touch the firewall, or change a parent it did not make.
//!
//! ```
//! use cnm_driver_macvlan as _;
//! let drivers = cnm_core::registered_drivers();
//! assert!(drivers.contains(&"macvlan") && drivers.contains(&"ipvlan"));
//! ```

mod error;
pub mod options;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cnm_core::cnm_sandbox::{Link, LinkSpec};
use cnm_core::spi::Lookup;
use cnm_core::undo::Cleanup;
use cnm_core::{
    Capability, Driver, DriverContext, DriverError, DriverOptions, EndpointInfo, EndpointSpec,
    JoinInfo, JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, ParsedOptions,
    RestoredEndpoint, async_trait, register_driver,
};
use cnm_types::{FailedTo, IfName};
use ipnet::IpNet;

pub use error::MacvlanError;
pub use options::{Flavor, Mode, NetworkOptions, Parent};
pub use plan::{ParentPlan, endpoint_spec};

/// The macvlan driver's registered name.
pub const MACVLAN: &str = "macvlan";
/// The ipvlan driver's registered name.
pub const IPVLAN: &str = "ipvlan";

register_driver!(MACVLAN, MacvlanDriver::create_macvlan);
register_driver!(IPVLAN, MacvlanDriver::create_ipvlan);

/// Where a network's parent link came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A link that was there (the user's): never deleted.
    Found,
    /// A link one of this driver's networks made (a shared VLAN, or this network's own in an
    /// earlier life): deleted with the last network on it.
    Ours,
    /// Made by this create: deleted again if the create fails.
    MadeNow,
}

/// One network as the driver holds it.
#[derive(Debug)]
struct Net {
    options: NetworkOptions,
    plan: ParentPlan,
    /// Whether this driver made the parent link (it goes with the last network on it).
    made_parent: bool,
    /// The MTU of the endpoints' links.
    mtu: u32,
    subnets: Vec<IpNet>,
    gateways: Vec<(IpNet, std::net::IpAddr)>,
    internal: bool,
    /// Endpoint id → whether it is joined.
    endpoints: HashMap<String, bool>,
}

/// The `macvlan` or `ipvlan` driver of one controller.
#[derive(Debug)]
pub struct MacvlanDriver {
    ctx: DriverContext,
    flavor: Flavor,
    networks: Mutex<HashMap<String, Net>>,
    /// Serialises network creates and deletes: the checks between networks on one parent and
    /// the parent links they share.
    lifecycle: tokio::sync::Mutex<()>,
}

impl MacvlanDriver {
    /// Builds the `macvlan` driver (the registration's constructor).
    pub fn create_macvlan(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self::new(ctx, Flavor::Macvlan)))
    }

    /// Builds the `ipvlan` driver (the registration's constructor).
    pub fn create_ipvlan(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self::new(ctx, Flavor::Ipvlan)))
    }

    fn new(ctx: &DriverContext, flavor: Flavor) -> Self {
        Self {
            ctx: ctx.clone(),
            flavor,
            networks: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    fn nets(&self) -> MutexGuard<'_, HashMap<String, Net>> {
        // Plain data: a panic elsewhere cannot leave it half-changed.
        self.networks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: MacvlanError) -> DriverError {
        e.into_driver(self.flavor.name())
    }

    fn options_of(&self, spec: &NetworkSpec) -> Result<NetworkOptions, MacvlanError> {
        match spec.parsed.get::<NetworkOptions>() {
            Some(o) => Ok(o.clone()),
            None => NetworkOptions::parse(self.flavor, &spec.options),
        }
    }

    async fn host_link(&self, name: &str) -> Result<Option<Link>, MacvlanError> {
        self.ctx
            .host_netlink
            .link(name)
            .await
            .map_err(|e| MacvlanError::failed("look up link", name, e))
    }

    /// Refuses what Docker refuses between networks on one parent, and overlapping subnets.
    fn check_siblings(
        &self,
        id: &str,
        options: &NetworkOptions,
        parent: &IfName,
        subnets: &[IpNet],
    ) -> Result<(), MacvlanError> {
        let nets = self.nets();
        if nets.contains_key(id) {
            return Err(Lookup::NetworkExists(id.to_owned()).into());
        }
        for (other_id, other) in nets.iter() {
            if other.plan.link_name() != parent {
                continue;
            }
            if options.mode.is_passthru() {
                return Err(MacvlanError::Conflict(format!(
                    "cannot use mode passthru, macvlan network {other_id} is already using parent interface {parent}"
                )));
            }
            if other.options.mode.is_passthru() {
                return Err(MacvlanError::Conflict(format!(
                    "macvlan network {other_id} is already using parent interface {parent} in mode passthru"
                )));
            }
            for s in subnets {
                if let Some(o) = other
                    .subnets
                    .iter()
                    .find(|o| o.contains(&s.network()) || s.contains(&o.network()))
                {
                    return Err(MacvlanError::Conflict(format!(
                        "subnet {s} overlaps subnet {o} of {} network {other_id} on parent interface {parent}",
                        self.flavor.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Makes the parent link the plan asks for, unless it exists; returns it and where it came
    /// from.
    async fn make_parent(
        &self,
        id: &str,
        plan: &ParentPlan,
        existing: Option<Link>,
    ) -> Result<(Link, Origin), MacvlanError> {
        let host = &self.ctx.host_netlink;
        if let Some(link) = existing {
            // A link of ours left by an earlier life of this network (restore), or one another
            // of our networks made: it goes with the last network on it.
            let ours = link
                .alias
                .as_deref()
                .and_then(|a| plan::alias_owner(self.flavor, a))
                .is_some();
            let origin = if ours && plan.makes_link() {
                Origin::Ours
            } else {
                Origin::Found
            };
            return Ok((link, origin));
        }
        let link_index = match plan {
            ParentPlan::Vlan { link, .. } => Some(
                self.host_link(link.as_str())
                    .await?
                    .ok_or_else(|| MacvlanError::ParentNotFound(link.to_string()))?
                    .index,
            ),
            _ => None,
        };
        let spec = plan
            .link_spec(link_index)
            .expect("a parent that does not exist is one the plan makes");
        let what = match plan {
            ParentPlan::Vlan { name, link, .. } => {
                format!("VLAN sub-interface {name} of {link}")
            }
            _ => format!("parent link {} of internal network", spec.name),
        };
        host.create_link(&spec)
            .await
            .map_err(|e| MacvlanError::create(what, spec.kind.kernel_feature(), e))?;
        let made = async {
            let link = self
                .host_link(spec.name.as_str())
                .await?
                .ok_or_else(|| MacvlanError::ParentNotFound(spec.name.to_string()))?;
            host.set_alias(link.index, &plan::alias(self.flavor, id))
                .await
                .map_err(|e| MacvlanError::failed("mark", spec.name.to_string(), e))?;
            Ok(link)
        }
        .await;
        match made {
            Ok(link) => Ok((link, Origin::MadeNow)),
            Err(e) => Err(self.undo_parent(e, &spec.name).await),
        }
    }

    /// Deletes a parent link this call made, attaching a failure to `cause`.
    async fn undo_parent(&self, cause: MacvlanError, name: &IfName) -> MacvlanError {
        match self.ctx.host_netlink.delete_link_named(name.as_str()).await {
            Ok(_) => cause,
            Err(e) => cause.with_cleanup(vec![MacvlanError::failed(
                "delete parent link",
                name.to_string(),
                e,
            )]),
        }
    }

    /// Makes (and deletes at once) one endpoint link of this flavor on `parent`, so that a
    /// kernel without the link type refuses the network now rather than its first join.
    async fn probe(&self, options: &NetworkOptions, parent: &Link) -> Result<(), MacvlanError> {
        let name = IfName::new(format!("cnmprobe{:07x}", rand::random::<u32>() >> 4))
            .expect("8 + 7 characters");
        let spec = LinkSpec::new(
            name.clone(),
            match endpoint_spec(
                options.mode,
                parent.index,
                name.clone(),
                self.ctx.host_ns.clone(),
                None,
                parent.mtu,
            )
            .kind
            {
                // Passthru would take the parent over for a moment: probe the type in bridge
                // mode (the kernel knows macvlan as a whole or not at all).
                cnm_core::cnm_sandbox::LinkKind::Macvlan { parent, .. } => {
                    cnm_core::cnm_sandbox::LinkKind::Macvlan {
                        parent,
                        mode: cnm_core::cnm_sandbox::MacvlanMode::Bridge,
                    }
                }
                kind => kind,
            },
        );
        let host = &self.ctx.host_netlink;
        host.create_link(&spec).await.map_err(|e| {
            MacvlanError::create(
                format!("{} links on {}", self.flavor.name(), parent.name),
                self.flavor.feature(),
                e,
            )
        })?;
        host.delete_link_named(name.as_str())
            .await
            .map_err(|e| MacvlanError::failed("delete probe link", name.to_string(), e))?;
        Ok(())
    }

    async fn create_network_inner(&self, spec: &NetworkSpec) -> Result<(), MacvlanError> {
        let options = self.options_of(spec)?;
        let subnets: Vec<IpNet> = spec
            .ipv4
            .iter()
            .map(|d| IpNet::V4(d.pool))
            .chain(spec.ipv6.iter().map(|d| IpNet::V6(d.pool)))
            .collect();
        let gateways = spec
            .ipv4
            .iter()
            .filter_map(|d| d.gateway.map(|g| (IpNet::V4(d.pool), g.addr().into())))
            .chain(
                spec.ipv6
                    .iter()
                    .filter_map(|d| d.gateway.map(|g| (IpNet::V6(d.pool), g.addr().into()))),
            )
            .collect();
        let _lifecycle = self.lifecycle.lock().await;
        let existing = match options.parent.name() {
            Some(n) => self.host_link(n.as_str()).await?,
            None => None,
        };
        let plan = ParentPlan::new(&options.parent, &spec.id, existing.is_some())?;
        // The internal parent is named after the network: a link of that name is ours from an
        // earlier life (restore), or a stranger's.
        let existing = match (&plan, existing) {
            (ParentPlan::Internal { name, .. }, _) => self.host_link(name.as_str()).await?,
            (_, e) => e,
        };
        self.check_siblings(&spec.id, &options, plan.link_name(), &subnets)?;
        let (parent, origin) = self.make_parent(&spec.id, &plan, existing).await?;
        let made = origin != Origin::Found;
        let checked = async {
            if let Some(mtu) = spec.mtu
                && mtu > parent.mtu
            {
                return Err(MacvlanError::InvalidOption {
                    driver: self.flavor.name(),
                    key: "com.docker.network.driver.mtu",
                    value: mtu.to_string(),
                    reason: format!(
                        "it exceeds the MTU {} of parent interface {}",
                        parent.mtu, parent.name
                    ),
                });
            }
            self.probe(&options, &parent).await
        }
        .await;
        if let Err(e) = checked {
            return Err(if origin == Origin::MadeNow {
                self.undo_parent(e, plan.link_name()).await
            } else {
                e
            });
        }
        let internal = spec.internal || matches!(plan, ParentPlan::Internal { .. });
        tracing::info!(
            driver = self.flavor.name(),
            network = %&spec.id[..spec.id.len().min(12)],
            parent = %plan.link_name(),
            mode = options.mode.as_str(),
            made_parent = made,
            "network created"
        );
        self.nets().insert(
            spec.id.clone(),
            Net {
                options,
                mtu: spec.mtu.unwrap_or(parent.mtu),
                plan,
                made_parent: made,
                subnets,
                gateways,
                internal,
                endpoints: HashMap::new(),
            },
        );
        Ok(())
    }

    async fn delete_network_inner(&self, id: &str) -> Result<(), MacvlanError> {
        let _lifecycle = self.lifecycle.lock().await;
        let net = self
            .nets()
            .remove(id)
            .ok_or_else(|| Lookup::NetworkNotFound(id.to_owned()))?;
        let shared = self
            .nets()
            .values()
            .any(|n| n.plan.link_name() == net.plan.link_name());
        if net.made_parent && !shared {
            let name = net.plan.link_name();
            self.ctx
                .host_netlink
                .delete_link_named(name.as_str())
                .await
                .map_err(|e| MacvlanError::failed("delete parent link", name.to_string(), e))?;
        }
        Ok(())
    }

    async fn join_inner(&self, req: &JoinRequest) -> Result<JoinInfo, MacvlanError> {
        let (mode, parent, mtu, internal, gateways) = {
            let nets = self.nets();
            let net = nets
                .get(&req.network_id)
                .ok_or_else(|| Lookup::NetworkNotFound(req.network_id.clone()))?;
            if !net.endpoints.contains_key(&req.endpoint_id) {
                return Err(Lookup::endpoint_not_found(&req.network_id, &req.endpoint_id).into());
            }
            if net.options.mode.is_passthru() && net.endpoints.values().any(|j| *j) {
                return Err(MacvlanError::Conflict(format!(
                    "macvlan network {} in mode passthru already has its one endpoint on parent interface {}",
                    req.network_id,
                    net.plan.link_name()
                )));
            }
            (
                net.options.mode,
                net.plan.link_name().clone(),
                net.mtu,
                net.internal,
                net.gateways.clone(),
            )
        };
        let link = self
            .host_link(parent.as_str())
            .await?
            .ok_or_else(|| MacvlanError::ParentNotFound(parent.to_string()))?;
        let spec = endpoint_spec(
            mode,
            link.index,
            req.ifname.clone(),
            req.sandbox.ns.clone(),
            req.mac,
            mtu,
        );
        self.ctx
            .host_netlink
            .create_link(&spec)
            .await
            .map_err(|e| {
                MacvlanError::create(
                    format!(
                        "{} link {} on {parent} in sandbox {}",
                        self.flavor.name(),
                        req.ifname,
                        req.sandbox.id
                    ),
                    spec.kind.kernel_feature(),
                    e,
                )
            })?;
        if let Some(net) = self.nets().get_mut(&req.network_id) {
            net.endpoints.insert(req.endpoint_id.clone(), true);
        }
        let mut info = JoinInfo::new(JoinedInterface::InSandbox { index: None });
        if internal {
            info.disable_gateway_service = true;
        } else {
            let gw = |addr: Option<IpNet>| {
                let addr = addr?;
                gateways
                    .iter()
                    .find(|(pool, _)| pool.contains(&addr.addr()))
                    .map(|(_, g)| *g)
            };
            info.gateway_v4 = match gw(req.ipv4.map(IpNet::V4)) {
                Some(std::net::IpAddr::V4(g)) => Some(g),
                _ => None,
            };
            info.gateway_v6 = match gw(req.ipv6.map(IpNet::V6)) {
                Some(std::net::IpAddr::V6(g)) => Some(g),
                _ => None,
            };
        }
        Ok(info)
    }

    async fn leave_inner(&self, req: &LeaveRequest) -> Result<(), MacvlanError> {
        if !self.nets().contains_key(&req.network_id) {
            return Err(Lookup::NetworkNotFound(req.network_id.clone()).into());
        }
        // The link lives in the sandbox; one already gone (the namespace deleted) is done.
        req.sandbox
            .netlink
            .delete_link_named(req.ifname.as_str())
            .await
            .map_err(|e| {
                MacvlanError::failed(
                    "delete endpoint link",
                    format!("{} in sandbox {}", req.ifname, req.sandbox.id),
                    e,
                )
            })?;
        if let Some(net) = self.nets().get_mut(&req.network_id) {
            net.endpoints.insert(req.endpoint_id.clone(), false);
        }
        Ok(())
    }

    async fn sweep_inner(&self, keep: &[String]) -> Result<(), MacvlanError> {
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let host = &self.ctx.host_netlink;
        let links = host
            .links()
            .await
            .map_err(|e| MacvlanError::failed("list links of", self.ctx.host_ns.to_string(), e))?;
        for l in links {
            let Some(owner) = l
                .alias
                .as_deref()
                .and_then(|a| plan::alias_owner(self.flavor, a))
            else {
                continue;
            };
            if !keep.contains(owner) {
                tracing::info!(link = %l.name, "deleting a parent link no network owns");
                match host.delete_link(l.index).await {
                    Ok(()) => {}
                    // A veth pair's other end went with the first.
                    Err(e) if e.kind() == cnm_types::ErrorKind::NotFound => {}
                    Err(e) => return Err(MacvlanError::failed("delete link", l.name, e)),
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for MacvlanDriver {
    fn name(&self) -> &str {
        self.flavor.name()
    }

    fn capability(&self) -> Capability {
        // Addresses live only in containers, on the parent's LAN: no host route, and sharing
        // the host's subnet is the point. The gateway is a router of that LAN, so only one the
        // user names.
        Capability::local()
            .with_host_routes(false)
            .with_gateway_on_request(true)
    }

    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        NetworkOptions::parse(self.flavor, options)
            .map(ParsedOptions::new)
            .map_err(|e| self.err(e))
    }

    fn unknown_network_options(&self, options: &DriverOptions) -> Vec<String> {
        NetworkOptions::unknown(self.flavor, options)
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        self.create_network_inner(spec)
            .await
            .map_err(|e| self.err(e))
    }

    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        // The parent is adopted (found by name, ours by its alias) or made again; endpoints'
        // links live in their sandboxes and survive the controller.
        self.create_network(spec).await?;
        if let Some(net) = self.nets().get_mut(&spec.id) {
            for ep in endpoints {
                net.endpoints
                    .insert(ep.spec.endpoint_id.clone(), ep.joined.is_some());
            }
        }
        Ok(())
    }

    async fn sweep(&self, keep: &[String]) -> Result<(), DriverError> {
        self.sweep_inner(keep).await.map_err(|e| self.err(e))
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        self.delete_network_inner(network_id)
            .await
            .map_err(|e| self.err(e))
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        let mut nets = self.nets();
        let net = nets
            .get_mut(&spec.network_id)
            .ok_or_else(|| self.err(Lookup::NetworkNotFound(spec.network_id.clone()).into()))?;
        net.endpoints.insert(spec.endpoint_id.clone(), false);
        Ok(EndpointInfo::with_mac(spec.mac))
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let mut nets = self.nets();
        let net = nets
            .get_mut(network_id)
            .ok_or_else(|| self.err(Lookup::NetworkNotFound(network_id.to_owned()).into()))?;
        net.endpoints.remove(endpoint_id);
        Ok(())
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        self.join_inner(request).await.map_err(|e| self.err(e))
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        self.leave_inner(request).await.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capability_has_no_host_routes_and_gateways_on_request() {
        let ctx = DriverContext::new(
            cnm_core::cnm_sandbox::NetNs::current().unwrap(),
            cnm_core::cnm_sandbox::Netlink::connect_current().unwrap(),
            "/nonexistent".into(),
            "/nonexistent".into(),
        );
        for flavor in [Flavor::Macvlan, Flavor::Ipvlan] {
            let d = MacvlanDriver::new(&ctx, flavor);
            let c = d.capability();
            assert!(!c.host_routes && c.gateway_on_request && c.needs_addresses);
            assert_eq!(d.name(), flavor.name());
        }
    }
}
