//! A sandbox as the controller holds it: the container's namespace, its files, and the endpoints
//! joined to it with what each join made.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use cnm_sandbox::{HostsFile, ResolvConf, RouteSpec};
use cnm_types::IfName;

use super::endpoint::EndpointInner;
use crate::gateway::GatewayCandidate;
use crate::id;
use crate::kernel::SandboxNs;
use crate::options::{JoinOptions, check_dns_name};
use crate::port::PortBinding;
use crate::record::{self, JoinedRecord, SandboxRecord};
use crate::spi::{JoinInfo, JoinedInterface, SandboxRef, StaticRoute};

/// Name servers a container gets when the host has none it can reach (Docker's).
pub const FALLBACK_NAMESERVERS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(std::net::Ipv4Addr::new(8, 8, 4, 4)),
];

/// One endpoint joined to a sandbox.
#[derive(Clone)]
pub(crate) struct Joined {
    pub(crate) ep: Arc<EndpointInner>,
    /// The name the driver was asked to use (`ethN`).
    pub(crate) requested: IfName,
    /// `N` of `ethN`, when the join made an interface.
    pub(crate) eth: Option<u32>,
    /// The interface's final name and index inside the sandbox.
    pub(crate) ifname: Option<IfName>,
    pub(crate) index: Option<u32>,
    /// The host-side name of an interface the controller moved in (to give it back on leave).
    pub(crate) moved_from: Option<IfName>,
    pub(crate) info: JoinInfo,
    pub(crate) priority: i32,
    /// Ports as published while this endpoint is the gateway endpoint.
    pub(crate) published: Vec<PortBinding>,
}

impl Joined {
    pub(crate) fn to_record(&self) -> JoinedRecord {
        JoinedRecord {
            endpoint_id: self.ep.id.clone(),
            network_id: self.ep.network.id.clone(),
            ifname: self.ifname.clone(),
            gateway_priority: self.priority,
            requested: Some(self.requested.clone()),
            moved_from: self.moved_from.clone(),
            gateway_v4: self.info.gateway_v4,
            gateway_v6: self.info.gateway_v6,
            static_routes: self
                .info
                .static_routes
                .iter()
                .map(|r| (r.destination, r.next_hop))
                .collect(),
            disable_gateway_service: self.info.disable_gateway_service,
            needs_gateway_network: self.info.needs_gateway_network,
            published: self.published.clone(),
        }
    }

    /// A join as recorded, with the interface's index as found in the sandbox now.
    pub(crate) fn from_record(
        ep: Arc<EndpointInner>,
        rec: &JoinedRecord,
        index: Option<u32>,
    ) -> Self {
        let requested = match (&rec.requested, &rec.ifname) {
            (Some(r), _) | (None, Some(r)) => r.clone(),
            (None, None) => IfName::new("eth0").expect("a valid constant name"),
        };
        let eth = rec
            .ifname
            .as_ref()
            .and(requested.as_str().strip_prefix("eth"))
            .and_then(|n| n.parse().ok());
        let mut info = JoinInfo::new(match (&rec.moved_from, index) {
            (Some(host_name), _) => JoinedInterface::MoveIn {
                host_name: host_name.clone(),
                name_prefix: None,
            },
            (None, Some(index)) => JoinedInterface::InSandbox { index: Some(index) },
            (None, None) => JoinedInterface::None,
        });
        info.gateway_v4 = rec.gateway_v4;
        info.gateway_v6 = rec.gateway_v6;
        info.disable_gateway_service = rec.disable_gateway_service;
        info.needs_gateway_network = rec.needs_gateway_network;
        info.static_routes = rec
            .static_routes
            .iter()
            .map(|(destination, next_hop)| StaticRoute {
                destination: *destination,
                next_hop: *next_hop,
            })
            .collect();
        Self {
            ep,
            requested,
            eth,
            ifname: rec.ifname.clone(),
            index,
            moved_from: rec.moved_from.clone(),
            info,
            priority: rec.gateway_priority,
            published: rec.published.clone(),
        }
    }

    pub(crate) fn candidate(&self) -> GatewayCandidate {
        GatewayCandidate {
            endpoint_id: self.ep.id.clone(),
            priority: self.priority,
            no_gateway_service: self.ep.network.internal() || self.info.disable_gateway_service,
            has_gateway: self.index.is_some()
                && (self.info.gateway_v4.is_some() || self.info.gateway_v6.is_some()),
            network_name: self.ep.network.name.clone(),
        }
    }

    pub(crate) fn default_routes(&self) -> Vec<RouteSpec> {
        let Some(index) = self.index else {
            return Vec::new();
        };
        [
            self.info.gateway_v4.map(IpAddr::V4),
            self.info.gateway_v6.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        .map(|gw| RouteSpec::default_via(gw, Some(index)))
        .collect()
    }
}

/// A sandbox's mutable state.
#[derive(Clone)]
pub(crate) struct SandboxState {
    pub(crate) joined: Vec<Joined>,
    /// The id of the endpoint giving the default route.
    pub(crate) gateway: Option<String>,
    pub(crate) deleted: bool,
    /// The store version of the sandbox record.
    pub(crate) version: u64,
}

impl SandboxState {
    /// The gateway endpoint's join, if it is among `joined`.
    pub(crate) fn gateway_join(&self) -> Option<&Joined> {
        let gw = self.gateway.as_ref()?;
        self.joined.iter().find(|j| &j.ep.id == gw)
    }
}

/// One sandbox.
pub(crate) struct SandboxInner {
    pub(crate) id: String,
    pub(crate) container_id: String,
    /// `run_dir/sandboxes/<id>`: hosts and resolv.conf.
    pub(crate) dir: PathBuf,
    /// The namespace (its key is the sandbox key).
    pub(crate) ns: SandboxNs,
    pub(crate) options: JoinOptions,
    /// Serialises join, leave and delete in this sandbox (taken before an endpoint's).
    pub(crate) op: tokio::sync::Mutex<()>,
    state: Mutex<SandboxState>,
    /// Joins recorded for endpoints whose network waits for its driver (registered later):
    /// kept in every record written meanwhile. A leaf lock, taken after the state's.
    detached: Mutex<Detached>,
}

/// Joins recorded for endpoints whose network waits for its driver.
#[derive(Default)]
struct Detached {
    joins: Vec<JoinedRecord>,
    /// The sandbox's gateway endpoint, when it is one of them: it keeps the default route.
    gateway: Option<String>,
}

impl SandboxInner {
    pub(crate) fn new(
        id: String,
        container_id: String,
        dir: PathBuf,
        ns: SandboxNs,
        options: JoinOptions,
        state: SandboxState,
    ) -> Self {
        Self {
            id,
            container_id,
            dir,
            ns,
            options,
            op: tokio::sync::Mutex::new(()),
            state: Mutex::new(state),
            detached: Mutex::new(Detached::default()),
        }
    }

    /// Sets the joins whose network waits for its driver, and the sandbox's gateway endpoint
    /// when it is one of them.
    pub(crate) fn set_detached(&self, joins: Vec<JoinedRecord>, gateway: Option<&str>) {
        let gateway = gateway
            .filter(|g| joins.iter().any(|j| j.endpoint_id == *g))
            .map(str::to_owned);
        *crate::sync::lock(&self.detached) = Detached { joins, gateway };
    }

    /// The gateway endpoint, when its network waits for its driver: the sandbox keeps it.
    pub(crate) fn detached_gateway(&self) -> Option<String> {
        crate::sync::lock(&self.detached).gateway.clone()
    }

    /// The interface names waiting joins hold.
    pub(crate) fn detached_names(&self) -> Vec<IfName> {
        crate::sync::lock(&self.detached)
            .joins
            .iter()
            .filter(|j| j.ifname.is_some())
            .filter_map(|j| j.requested.clone().or_else(|| j.ifname.clone()))
            .collect()
    }

    /// `N` of the `ethN` each waiting join holds.
    pub(crate) fn detached_eths(&self) -> Vec<u32> {
        crate::sync::lock(&self.detached)
            .joins
            .iter()
            .filter(|j| j.ifname.is_some())
            .filter_map(|j| {
                let name = j.requested.as_ref().or(j.ifname.as_ref())?;
                name.as_str().strip_prefix("eth")?.parse().ok()
            })
            .collect()
    }

    /// Takes the waiting joins `which` selects.
    pub(crate) fn take_detached(&self, which: impl Fn(&JoinedRecord) -> bool) -> Vec<JoinedRecord> {
        let mut all = crate::sync::lock(&self.detached);
        let (taken, kept): (Vec<JoinedRecord>, Vec<JoinedRecord>) = std::mem::take(&mut all.joins)
            .into_iter()
            .partition(|j| which(j));
        all.joins = kept;
        if taken
            .iter()
            .any(|j| all.gateway.as_deref() == Some(j.endpoint_id.as_str()))
        {
            all.gateway = None;
        }
        taken
    }

    /// The state; held only for a few field updates, never across `.await`.
    pub(crate) fn state(&self) -> MutexGuard<'_, SandboxState> {
        crate::sync::lock(&self.state)
    }

    pub(crate) fn short(&self) -> &str {
        id::short(&self.id)
    }

    pub(crate) fn key(&self) -> &std::path::Path {
        &self.ns.key
    }

    pub(crate) fn sandbox_ref(&self) -> SandboxRef {
        SandboxRef {
            id: self.id.clone(),
            key: self.ns.key.clone(),
            ns: self.ns.ns.clone(),
            netlink: self.ns.netlink.clone(),
        }
    }

    pub(crate) fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    pub(crate) fn resolv_conf_path(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// The names a container's addresses get in its hosts file: `host.domain host`.
    fn host_names(&self) -> Vec<String> {
        let host = match &self.options.hostname {
            Some(h) => h.clone(),
            None => id::short(&self.container_id).to_owned(),
        };
        if check_dns_name("hostname", &host).is_err() {
            return Vec::new();
        }
        match &self.options.domainname {
            Some(d) => vec![format!("{host}.{d}"), host],
            None => vec![host],
        }
    }

    /// The hosts file with `joined`'s addresses.
    pub(crate) fn hosts_file(&self, joined: &[Joined]) -> HostsFile {
        let mut hosts = HostsFile::with_defaults();
        for (name, ip) in &self.options.extra_hosts {
            hosts.push(*ip, [name.clone()]);
        }
        let names = self.host_names();
        if !names.is_empty() {
            for j in joined {
                for ip in j.ep.addresses() {
                    hosts.push(ip, names.clone());
                }
            }
        }
        hosts
    }

    /// The resolv.conf a container gets: the host's without loopback servers (or Docker's
    /// fallbacks), with the sandbox's DNS options replacing the host's where given.
    pub(crate) fn resolv_conf(&self, host: &ResolvConf) -> ResolvConf {
        let opts = &self.options;
        let mut rc = ResolvConf::for_container(host, &FALLBACK_NAMESERVERS);
        if !opts.dns_servers.is_empty() {
            rc.nameservers = opts.dns_servers.clone();
        }
        if !opts.dns_search.is_empty() {
            rc.search = opts.dns_search.clone();
        }
        if !opts.dns_options.is_empty() {
            rc.options = opts.dns_options.clone();
        }
        rc
    }

    pub(crate) fn record(&self, joined: &[Joined], gateway: Option<&str>) -> SandboxRecord {
        SandboxRecord {
            schema: record::SCHEMA,
            id: self.id.clone(),
            container_id: self.container_id.clone(),
            key: self.ns.key.clone(),
            options: self.options.clone(),
            endpoints: joined
                .iter()
                .map(Joined::to_record)
                .chain(crate::sync::lock(&self.detached).joins.iter().cloned())
                .collect(),
            gateway_endpoint: gateway.map(str::to_owned),
        }
    }

    pub(crate) fn deleted_error(&self) -> crate::CoreError {
        crate::CoreError::Deleted {
            what: "sandbox",
            name: self.short().to_owned(),
        }
    }
}
