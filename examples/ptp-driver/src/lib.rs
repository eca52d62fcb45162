//! `ptp`: a point-to-point network driver for cnm, written outside cnm's workspace against the
//! public `cnm` facade only. See README.md: it is the driver author's guide.
//!
//! Each joined container gets a veth pair: `eth0` (the name core asks for) born inside the
//! sandbox, the host end `<prefix><endpoint id>` in the host namespace carrying the network's
//! gateway address as a /32, and a /32 route to the container through it. No bridge: the host
//! routes. With `ptp.proxy_arp` (default on) the host end answers ARP for the network's other
//! containers, so containers of one network reach each other through the host's routing.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use cnm::cnm_sandbox::{LinkKind, LinkSpec, RouteSpec, SandboxError, set_sysctl};
use cnm::cnm_types::{Cleanup, IfName};
use cnm::ipnet::{IpNet, Ipv4Net};
use cnm::{
    Capability, Driver, DriverContext, DriverError, DriverOptions, EndpointInfo, EndpointSpec,
    ErrorKind, JoinInfo, JoinRequest, JoinedInterface, LeaveRequest, NetworkSpec, ParsedOptions,
};

/// The name it registers under (through `inventory`, when the crate is linked).
pub const NAME: &str = "ptp";

cnm::register_driver!(NAME, PtpDriver::create);

/// A network's options, parsed once ([`Driver::parse_network_options`]) and handed back by core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtpOptions {
    /// `ptp.prefix`: the host ends' name prefix, 1 to 4 letters (default `ptp`).
    pub prefix: String,
    /// `ptp.proxy_arp`: whether containers of the network reach each other (default true).
    pub proxy_arp: bool,
}

impl PtpOptions {
    /// Parses the user's options: an unknown key or a bad value is refused, naming both.
    pub fn parse(driver: &str, options: &DriverOptions) -> Result<Self, DriverError> {
        let bad = |key: &str, value: &str, why: &str| {
            let msg = format!("invalid option {key:?} = {value:?}: {why}");
            DriverError::new(driver, ErrorKind::InvalidInput, msg)
        };
        let mut parsed = PtpOptions {
            prefix: "ptp".into(),
            proxy_arp: true,
        };
        for (key, value) in options {
            match key.as_str() {
                "ptp.prefix"
                    if (1..=4).contains(&value.len())
                        && value.bytes().all(|b| b.is_ascii_lowercase()) =>
                {
                    parsed.prefix = value.clone()
                }
                "ptp.prefix" => return Err(bad(key, value, "1 to 4 lowercase letters")),
                "ptp.proxy_arp" => {
                    parsed.proxy_arp = value
                        .parse()
                        .map_err(|_| bad(key, value, "true or false"))?
                }
                _ => return Err(bad(key, value, "unknown key")),
            }
        }
        Ok(parsed)
    }
}

/// What the driver keeps per network: only what its spec said (core hands the spec back on a
/// restart, so nothing needs persisting).
#[derive(Debug, Clone)]
struct Net {
    gateway: Ipv4Addr,
    mtu: Option<u32>,
    options: PtpOptions,
}

/// The driver: one per controller.
#[derive(Debug)]
pub struct PtpDriver {
    name: String,
    ctx: DriverContext,
    networks: Mutex<HashMap<String, Net>>,
}

impl PtpDriver {
    /// The registration's constructor (`register_driver!`, [`cnm::ControllerBuilder::driver`]).
    pub fn create(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Self::named(NAME, ctx)
    }

    /// The driver under another name (registered while running, beside the linked one).
    pub fn named(name: &str, ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        let networks = Mutex::default();
        let (name, ctx) = (name.to_owned(), ctx.clone());
        Ok(Arc::new(PtpDriver {
            name,
            ctx,
            networks,
        }))
    }

    fn networks(&self) -> MutexGuard<'_, HashMap<String, Net>> {
        self.networks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn network(&self, id: &str) -> Result<Net, DriverError> {
        let found = self.networks().get(id).cloned();
        found.ok_or_else(|| self.error(ErrorKind::NotFound, format!("network {id} not found")))
    }

    fn error(&self, kind: ErrorKind, msg: impl Into<String>) -> DriverError {
        DriverError::new(&self.name, kind, msg.into())
    }

    fn kernel(&self, e: SandboxError) -> DriverError {
        DriverError::new(&self.name, e.kind(), e)
    }

    /// The host end's name: the prefix and the endpoint id's first hex digits (≤ 15 bytes).
    fn host_end(net: &Net, endpoint_id: &str) -> IfName {
        let short = &endpoint_id[..endpoint_id.len().min(15 - net.options.prefix.len())];
        IfName::new(format!("{}{short}", net.options.prefix)).expect("letters and hex, ≤ 15")
    }

    /// The join's kernel work after the veth exists; deleting the host end undoes all of it.
    async fn finish_host_end(
        &self,
        net: &Net,
        host_end: &IfName,
        addr: Ipv4Addr,
    ) -> Result<(), SandboxError> {
        let host = &self.ctx.host_netlink;
        let index = match host.link(host_end.as_str()).await? {
            Some(link) => link.index,
            None => {
                let (op, object) = ("find the new host end", host_end.to_string());
                return Err(SandboxError::Kernel {
                    op,
                    object,
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
        };
        let gateway = Ipv4Net::new(net.gateway, 32).expect("32 is a valid prefix");
        host.add_address(index, IpNet::V4(gateway)).await?;
        let to_container = Ipv4Net::new(addr, 32).expect("32 is a valid prefix");
        host.add_route(&RouteSpec::on_link(IpNet::V4(to_container), Some(index)))
            .await?;
        if net.options.proxy_arp {
            let key = format!("net.ipv4.conf.{host_end}.proxy_arp");
            set_sysctl(&self.ctx.host_ns, &key, "1").await?;
        }
        Ok(())
    }
}

#[cnm::async_trait]
impl Driver for PtpDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn capability(&self) -> Capability {
        // Local scope, IPAM addresses, a gateway address (the host ends carry it).
        Capability::local()
    }

    fn parse_network_options(&self, options: &DriverOptions) -> Result<ParsedOptions, DriverError> {
        PtpOptions::parse(&self.name, options).map(ParsedOptions::new)
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        if spec.enable_ipv6 {
            return Err(self.error(ErrorKind::Unsupported, "IPv6 is not supported"));
        }
        let gateway = match spec.ipv4.as_slice() {
            [pool] => pool.gateway.map(|g| g.addr()),
            _ => None,
        };
        let gateway = gateway.ok_or_else(|| {
            self.error(
                ErrorKind::InvalidInput,
                "needs exactly one IPv4 subnet with a gateway",
            )
        })?;
        let options = spec.parsed.get::<PtpOptions>().cloned();
        let options =
            options.ok_or_else(|| self.error(ErrorKind::Internal, "options not parsed"))?;
        let net = Net {
            gateway,
            mtu: spec.mtu,
            options,
        };
        match self.networks().insert(spec.id.clone(), net) {
            None => Ok(()),
            Some(_) => Err(self.error(ErrorKind::AlreadyExists, format!("network {}", spec.id))),
        }
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        self.network(network_id)?;
        self.networks().remove(network_id);
        Ok(())
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        self.network(&spec.network_id)?;
        if spec.ipv4.is_none() {
            return Err(self.error(ErrorKind::InvalidInput, "an endpoint needs an IPv4 address"));
        }
        Ok(EndpointInfo::with_mac(spec.mac))
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        _endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.network(network_id).map(drop)
    }

    async fn join(&self, request: &JoinRequest) -> Result<JoinInfo, DriverError> {
        let net = self.network(&request.network_id)?;
        let addr = request
            .ipv4
            .ok_or_else(|| self.error(ErrorKind::InvalidInput, "no IPv4 address"))?;
        let host_end = Self::host_end(&net, &request.endpoint_id);
        let veth = LinkKind::Veth {
            peer_name: request.ifname.clone(),
            peer_ns: Some(request.sandbox.ns.clone()),
            peer_mac: request.mac,
            peer_mtu: None,
            peer_up: true,
        };
        let spec = LinkSpec {
            up: true,
            mtu: net.mtu,
            ..LinkSpec::new(host_end.clone(), veth)
        };
        let host = &self.ctx.host_netlink;
        host.create_link(&spec).await.map_err(|e| self.kernel(e))?;
        // Undo rule: one inverse for everything made since — the host end's deletion takes its
        // peer, address, route and sysctl with it. A failed cleanup is reported, never dropped.
        if let Err(e) = self.finish_host_end(&net, &host_end, addr.addr()).await {
            let e = match host.delete_link_named(host_end.as_str()).await {
                Ok(_) => e,
                Err(cleanup) => e.with_cleanup(vec![cleanup]),
            };
            return Err(self.kernel(e));
        }
        let mut info = JoinInfo::new(JoinedInterface::InSandbox { index: None });
        info.gateway_v4 = Some(net.gateway);
        Ok(info)
    }

    async fn leave(&self, request: &LeaveRequest) -> Result<(), DriverError> {
        let net = self.network(&request.network_id)?;
        let host_end = Self::host_end(&net, &request.endpoint_id);
        // Gone already (a crash between this and core's record) counts as done.
        let host = &self.ctx.host_netlink;
        host.delete_link_named(host_end.as_str())
            .await
            .map(drop)
            .map_err(|e| self.kernel(e))
    }
}
