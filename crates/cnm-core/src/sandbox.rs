//! [`Sandbox`]: one container's network stack (a persisted network namespace, its hosts file and
//! resolv.conf), and the join/leave flow that plugs endpoints into it.
//!
//! A sandbox's namespace is made with `net.ipv6.conf.default.disable_ipv6 = 1`, so every
//! interface a driver creates in it (or the controller moves in) starts with IPv6 off, not even a
//! link-local address (CVE-2024-32473); a join turns IPv6 on for the interface of an endpoint that
//! has an IPv6 address, before adding it. Loopback predates the default and keeps `::1`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cnm_sandbox::{HostsFile, NetNs, Netlink, ResolvConf, RouteSpec, set_sysctls};
use cnm_types::IfName;
use ipnet::IpNet;

use crate::CoreError;
use crate::controller::{ControllerInner, FALLBACK_NAMESERVERS, read_resolv_conf, run_op};
use crate::endpoint::{Endpoint, EndpointInner, EndpointState};
use crate::gateway::{self, GatewayCandidate, JoinOutcome};
use crate::id;
use crate::options::{JoinOptions, check_dns_name};
use crate::port::PortBinding;
use crate::record::{self, JoinedRecord, SandboxRecord};
use crate::spi::{JoinInfo, JoinRequest, JoinedInterface, LeaveRequest, SandboxRef};
use crate::store::{Expect, Txn};
use crate::undo::{Errors, Undo};

/// The sysctl that makes interfaces born in (or moved into) a sandbox start with IPv6 off.
const IPV6_DEFAULT_OFF: &str = "net.ipv6.conf.default.disable_ipv6";

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
    fn to_record(&self) -> JoinedRecord {
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
        info.static_routes = rec
            .static_routes
            .iter()
            .map(|(destination, next_hop)| crate::spi::StaticRoute {
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

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.ep.ipv4.as_ref().map(|(a, _)| IpAddr::V4(a.addr()));
        let v6 = self.ep.ipv6.as_ref().map(|(a, _)| IpAddr::V6(a.addr()));
        v4.into_iter().chain(v6)
    }
}

pub(crate) struct SandboxState {
    pub(crate) joined: Vec<Joined>,
    /// The id of the endpoint giving the default route.
    pub(crate) gateway: Option<String>,
    pub(crate) deleted: bool,
    /// The store version of the sandbox record.
    pub(crate) version: u64,
}

pub(crate) struct SandboxInner {
    pub(crate) id: String,
    pub(crate) container_id: String,
    /// The sandbox key: the netns bind mount.
    pub(crate) key: PathBuf,
    /// `run_dir/sandboxes/<id>`: hosts and resolv.conf.
    pub(crate) dir: PathBuf,
    pub(crate) ns: NetNs,
    pub(crate) netlink: Netlink,
    pub(crate) options: JoinOptions,
    pub(crate) state: tokio::sync::Mutex<SandboxState>,
}

impl SandboxInner {
    pub(crate) fn short(&self) -> &str {
        id::short(&self.id)
    }

    pub(crate) fn sandbox_ref(&self) -> SandboxRef {
        SandboxRef {
            id: self.id.clone(),
            key: self.key.clone(),
            ns: self.ns.clone(),
            netlink: self.netlink.clone(),
        }
    }

    fn hosts_path(&self) -> PathBuf {
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

    fn hosts_file(&self, joined: &[Joined]) -> HostsFile {
        let mut hosts = HostsFile::with_defaults();
        for (name, ip) in &self.options.extra_hosts {
            hosts.push(*ip, [name.clone()]);
        }
        let names = self.host_names();
        if !names.is_empty() {
            for j in joined {
                for ip in j.addresses() {
                    hosts.push(ip, names.clone());
                }
            }
        }
        hosts
    }

    pub(crate) fn write_hosts(&self, joined: &[Joined]) -> Result<(), CoreError> {
        let path = self.hosts_path();
        self.hosts_file(joined)
            .write(&path)
            .map_err(|e| CoreError::sandbox("write hosts file", path.display().to_string(), e))
    }

    pub(crate) fn record(&self, joined: &[Joined], gateway: Option<&str>) -> SandboxRecord {
        SandboxRecord {
            schema: record::SCHEMA,
            id: self.id.clone(),
            container_id: self.container_id.clone(),
            key: self.key.clone(),
            options: self.options.clone(),
            endpoints: joined.iter().map(Joined::to_record).collect(),
            gateway_endpoint: gateway.map(str::to_owned),
        }
    }
}

/// The resolv.conf a container gets: the host's without loopback servers (or Docker's
/// fallbacks), with the join's DNS options replacing the host's where given.
pub(crate) fn container_resolv_conf(host: &ResolvConf, opts: &JoinOptions) -> ResolvConf {
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

fn check_container_id(cid: &str) -> Result<(), CoreError> {
    if cid.is_empty()
        || cid.len() > 255
        || cid
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(CoreError::invalid(
            "container id",
            cid,
            "must be 1 to 255 characters without '/' or whitespace",
        ));
    }
    Ok(())
}

/// Finds the sandbox of a container, or creates it. With `allow_existing` false an existing
/// sandbox is an error. Returns whether this call created it.
pub(crate) async fn find_or_create(
    ctl: &Arc<ControllerInner>,
    cid: &str,
    opts: JoinOptions,
    allow_existing: bool,
) -> Result<(Arc<SandboxInner>, bool), CoreError> {
    check_container_id(cid)?;
    if !allow_existing && opts.gateway_priority != 0 {
        return Err(CoreError::invalid(
            "gateway priority",
            opts.gateway_priority,
            "it is a join option, not a sandbox option",
        ));
    }
    loop {
        let slot = ctl.containers.entry(cid.to_owned()).or_default().clone();
        let mut guard = slot.lock().await;
        // The slot may have been retired (sandbox deleted, creation failed) while we waited.
        if !ctl
            .containers
            .get(cid)
            .is_some_and(|s| Arc::ptr_eq(&s, &slot))
        {
            continue;
        }
        if let Some(sb) = guard.as_ref() {
            if allow_existing {
                return Ok((sb.clone(), false));
            }
            return Err(CoreError::SandboxExists(cid.to_owned()));
        }
        let cid_owned = cid.to_owned();
        match run_op(
            "create sandbox",
            cid_owned.clone(),
            create(ctl.clone(), cid_owned, opts.clone()),
        )
        .await
        {
            Ok(sb) => {
                ctl.sandboxes.insert(sb.id.clone(), sb.clone());
                *guard = Some(sb.clone());
                return Ok((sb, true));
            }
            Err(e) => {
                ctl.containers.remove_if(cid, |_, s| Arc::ptr_eq(s, &slot));
                return Err(e);
            }
        }
    }
}

async fn create(
    ctl: Arc<ControllerInner>,
    cid: String,
    opts: JoinOptions,
) -> Result<Arc<SandboxInner>, CoreError> {
    let id = id::generate();
    let short = id::short(&id).to_owned();
    let key = ctl.run_dir.join("netns").join(&id);
    let dir = ctl.run_dir.join("sandboxes").join(&id);
    let mut undo = Undo::new();
    let result = async {
        // One thread creates the namespace, sets its defaults and opens its netlink socket.
        // Interfaces are born with IPv6 off (CVE-2024-32473: no IPv6, not even link-local, on
        // the interfaces of IPv4-only endpoints); a join turns it on for an IPv6 endpoint's.
        // Loopback predates the default and keeps ::1.
        let (ns, netlink) = Netlink::create_netns(&key, &[(IPV6_DEFAULT_OFF, "1")])
            .await
            .map_err(|e| CoreError::sandbox("create netns of sandbox", &short, e))?;
        {
            let key = key.clone();
            undo.push("delete netns", move || async move {
                NetNs::delete(&key)
                    .await
                    .map_err(|e| CoreError::sandbox("delete netns", key.display().to_string(), e))
            });
        }
        crate::crash::point("sandbox-create:after-netns");
        // Loopback comes up while the files are written.
        let files = {
            let (dir, source) = (dir.clone(), ctl.resolv_conf.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| CoreError::io("create directory", dir.display(), e))?;
                read_resolv_conf(&source)
            })
        };
        let (lo, files) = futures::join!(netlink.loopback_up(), files);
        let host = files.map_err(|e| CoreError::Aborted {
            op: "create sandbox",
            object: short.clone(),
            reason: e.to_string(),
        });
        {
            let dir = dir.clone();
            undo.push("remove sandbox directory", move || async move {
                match tokio::fs::remove_dir_all(&dir).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(CoreError::io("remove directory", dir.display(), e))
                    }
                    _ => Ok(()),
                }
            });
        }
        let host = host??;
        lo.map_err(|e| CoreError::sandbox("bring up loopback in sandbox", &short, e))?;
        let mut sb = SandboxInner {
            id: id.clone(),
            container_id: cid.clone(),
            key: key.clone(),
            dir: dir.clone(),
            ns,
            netlink,
            options: opts,
            state: tokio::sync::Mutex::new(SandboxState {
                joined: Vec::new(),
                gateway: None,
                deleted: false,
                version: 0,
            }),
        };
        let rc_path = sb.resolv_conf_path();
        container_resolv_conf(&host, &sb.options)
            .write(&rc_path)
            .map_err(|e| {
                CoreError::sandbox("write resolv.conf", rc_path.display().to_string(), e)
            })?;
        sb.write_hosts(&[])?;
        let rkey = record::sandbox_key(&id);
        let bytes =
            serde_json::to_vec(&sb.record(&[], None)).map_err(|source| CoreError::Record {
                op: "encode",
                key: rkey.clone(),
                source,
            })?;
        let version = ctl
            .store
            .put(&rkey, bytes, Expect::Absent)
            .await
            .map_err(|e| CoreError::store("write", &rkey, e))?;
        sb.state.get_mut().version = version;
        crate::crash::point("sandbox-create:after-record");
        Ok(Arc::new(sb))
    }
    .await;
    let sb = undo.finish(result).await?;
    tracing::info!(sandbox = %short, container = %cid, key = %key.display(), "sandbox created");
    Ok(sb)
}

/// Writes the endpoint's and the sandbox's records in one transaction; returns the revision.
#[allow(clippy::too_many_arguments)]
async fn commit_join_state(
    ctl: &ControllerInner,
    sb: &SandboxInner,
    joined: &[Joined],
    gateway: Option<&str>,
    sb_version: u64,
    ep: &EndpointInner,
    ep_version: u64,
    sandbox_id: Option<&str>,
) -> Result<u64, CoreError> {
    let skey = record::sandbox_key(&sb.id);
    let ekey = ep.key();
    let txn = Txn::new()
        .put_json(&ekey, &ep.record(sandbox_id), Expect::Version(ep_version))
        .and_then(|t| {
            t.put_json(
                &skey,
                &sb.record(joined, gateway),
                Expect::Version(sb_version),
            )
        })
        .map_err(|e| CoreError::store("encode", &skey, e))?;
    ctl.store
        .commit(txn)
        .await
        .map_err(|e| CoreError::store("write", format!("{ekey} and {skey}"), e))
}

async fn add_routes(
    sb: &SandboxInner,
    routes: &[RouteSpec],
    what: &'static str,
) -> Result<(), CoreError> {
    for r in routes {
        sb.netlink.add_route(r).await.map_err(|e| {
            CoreError::sandbox(
                what,
                format!("{} in sandbox {}", r.destination, sb.short()),
                e,
            )
        })?;
    }
    Ok(())
}

async fn del_routes(sb: &SandboxInner, routes: &[RouteSpec]) -> Result<(), CoreError> {
    for r in routes {
        sb.netlink.del_route(r).await.map_err(|e| {
            CoreError::sandbox(
                "delete route",
                format!("{} in sandbox {}", r.destination, sb.short()),
                e,
            )
        })?;
    }
    Ok(())
}

async fn program(j: &Joined) -> Result<Vec<PortBinding>, CoreError> {
    let net = &j.ep.network;
    net.driver
        .program_external_connectivity(&net.id, &j.ep.id, &j.ep.options.port_bindings)
        .await
        .map_err(|e| CoreError::driver("publish ports of endpoint", &j.ep.name, e))
}

async fn revoke(j: &Joined) -> Result<(), CoreError> {
    let net = &j.ep.network;
    net.driver
        .revoke_external_connectivity(&net.id, &j.ep.id)
        .await
        .map_err(|e| CoreError::driver("withdraw published ports of endpoint", &j.ep.name, e))
}

/// Moves the default route and the published ports from `old` (if it is still in `list`) to the
/// endpoint libnetwork's order picks among `list`. Returns the new gateway endpoint's id.
async fn switch_gateway(
    sb: &Arc<SandboxInner>,
    old: Option<Joined>,
    list: &mut [Joined],
    undo: &mut Undo,
) -> Result<Option<String>, CoreError> {
    let candidates: Vec<GatewayCandidate> = list.iter().map(Joined::candidate).collect();
    let new_id = gateway::select(&candidates).map(|c| c.endpoint_id.clone());
    let old_id = old.as_ref().map(|j| j.ep.id.clone());
    if new_id == old_id {
        return Ok(new_id);
    }
    if let Some(old) = old {
        revoke(&old).await?;
        {
            let old = old.clone();
            undo.push("republish ports", move || async move {
                program(&old).await.map(drop)
            });
        }
        let routes = old.default_routes();
        del_routes(sb, &routes).await?;
        {
            let sb = sb.clone();
            undo.push("restore default route", move || async move {
                add_routes(&sb, &routes, "restore default route").await
            });
        }
        if let Some(j) = list.iter_mut().find(|j| j.ep.id == old.ep.id) {
            j.published.clear();
        }
    }
    if let Some(new_id) = &new_id {
        let Some(j) = list.iter_mut().find(|j| &j.ep.id == new_id) else {
            return Ok(None);
        };
        let routes = j.default_routes();
        // The default route (in the sandbox) and the published ports (the driver, on the host)
        // are independent: do them at once, then record the inverse of each that was done.
        let (routed, published) =
            futures::join!(add_routes(sb, &routes, "add default route"), program(j));
        if routed.is_ok() {
            let sb = sb.clone();
            undo.push("delete default route", move || async move {
                del_routes(&sb, &routes).await
            });
        }
        if let Ok(ports) = &published {
            j.published = ports.clone();
            let jc = j.clone();
            undo.push("withdraw published ports", move || async move {
                revoke(&jc).await
            });
        }
        routed?;
        published?;
    }
    Ok(new_id)
}

/// Joins `ep` to `sb`: driver join, interface set-up, gateway choice, files, records. On failure
/// every step is undone.
pub(crate) async fn join(
    ctl: &Arc<ControllerInner>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    priority: i32,
) -> Result<(), CoreError> {
    let mut st = sb.state.lock().await;
    if st.deleted {
        return Err(CoreError::Deleted {
            what: "sandbox",
            name: sb.short().to_owned(),
        });
    }
    let mut epst = ep.state.lock().await;
    if epst.deleted {
        return Err(ep.deleted_error());
    }
    if let Some(other) = &epst.sandbox {
        let container = ctl
            .sandboxes
            .get(other)
            .map(|s| s.container_id.clone())
            .unwrap_or_default();
        return Err(CoreError::AlreadyJoined {
            endpoint: ep.name.clone(),
            sandbox: id::short(other).to_owned(),
            container,
        });
    }
    // Published ports follow the default route: refuse them before any effect unless this join
    // makes the endpoint the gateway endpoint (as far as can be told before the driver says
    // whether it gives a gateway; checked again, exactly, once it has).
    check_ports_follow_gateway(
        sb,
        &st.joined,
        ep,
        &GatewayCandidate {
            endpoint_id: ep.id.clone(),
            priority,
            no_gateway_service: ep.network.internal(),
            has_gateway: true,
            network_name: ep.network.name.clone(),
        },
    )?;
    let n = gateway::pick_index(st.joined.iter().filter_map(|j| j.eth));
    let requested = IfName::new(format!("eth{n}")).expect("\"eth\" and a u32 fit in 15 bytes");
    let net = ep.network.clone();
    let request = JoinRequest {
        network_id: net.id.clone(),
        endpoint_id: ep.id.clone(),
        sandbox: sb.sandbox_ref(),
        ifname: requested.clone(),
        ipv4: ep.ipv4.as_ref().map(|(a, _)| *a),
        ipv6: ep.ipv6.as_ref().map(|(a, _)| *a),
        mac: ep.mac,
        options: ep.options.driver_options.clone(),
    };
    let mut undo = Undo::new();
    let result = async {
        let info = net
            .driver
            .join(&request)
            .await
            .map_err(|e| CoreError::driver("join endpoint", &ep.name, e))?;
        crate::crash::point("join:after-driver");
        {
            let leave = LeaveRequest {
                network_id: net.id.clone(),
                endpoint_id: ep.id.clone(),
                sandbox: sb.sandbox_ref(),
                ifname: requested.clone(),
            };
            let (driver, name) = (net.driver.clone(), ep.name.clone());
            undo.push("leave in driver", move || async move {
                driver
                    .leave(&leave)
                    .await
                    .map_err(|e| CoreError::driver("leave endpoint", name, e))
            });
        }
        let (index, ifname, moved_from) = match &info.interface {
            JoinedInterface::InSandbox { index } => {
                let index = match index {
                    Some(i) => *i,
                    None => find_link(&sb.netlink, &requested, sb.short()).await?,
                };
                (Some(index), Some(requested.clone()), None)
            }
            JoinedInterface::MoveIn {
                host_name,
                name_prefix,
            } => {
                let name = match name_prefix {
                    Some(p) => IfName::new(format!("{p}{n}")).map_err(|e| {
                        CoreError::invalid("interface name prefix", p, e.to_string())
                    })?,
                    None => requested.clone(),
                };
                let host_index =
                    find_link(&ctl.host_netlink, host_name, "the host namespace").await?;
                ctl.host_netlink
                    .move_to_netns(host_index, &sb.ns, Some(&name))
                    .await
                    .map_err(|e| {
                        CoreError::sandbox(
                            "move interface",
                            format!("{host_name} into sandbox {}", sb.short()),
                            e,
                        )
                    })?;
                let index = find_link(&sb.netlink, &name, sb.short()).await?;
                {
                    let (sbc, host_ns, host_name) =
                        (sb.clone(), ctl.host_ns.clone(), host_name.clone());
                    undo.push("move interface back", move || async move {
                        sbc.netlink
                            .move_to_netns(index, &host_ns, Some(&host_name))
                            .await
                            .map_err(|e| {
                                CoreError::sandbox(
                                    "move interface back to the host as",
                                    host_name.to_string(),
                                    e,
                                )
                            })
                    });
                }
                if let Some(mac) = ep.mac {
                    sb.netlink
                        .set_mac(index, mac)
                        .await
                        .map_err(|e| CoreError::sandbox("set MAC of", name.to_string(), e))?;
                }
                (Some(index), Some(name), Some(host_name.clone()))
            }
            JoinedInterface::None => (None, None, None),
        };
        if let (Some(index), Some(name)) = (index, &ifname) {
            // Addresses and routes go with the interface when the driver's leave removes it.
            let addrs = ep
                .ipv4
                .as_ref()
                .map(|(a, _)| IpNet::V4(*a))
                .into_iter()
                .chain(ep.ipv6.as_ref().map(|(a, _)| IpNet::V6(*a)));
            if ep.ipv6.is_some() {
                // Interfaces are born with IPv6 off in our sandboxes (see `create`).
                let key = format!("net/ipv6/conf/{name}/disable_ipv6");
                set_sysctls(&sb.ns, &[(key.as_str(), "0")])
                    .await
                    .map_err(|e| {
                        CoreError::sandbox(
                            "enable IPv6 on",
                            format!("{name} in sandbox {}", sb.short()),
                            e,
                        )
                    })?;
            }
            // Sent back to back without waiting for each ack: the kernel handles one socket's
            // requests in order, so the addresses are there when the link comes up.
            let adds = futures::future::try_join_all(addrs.map(|addr| async move {
                sb.netlink.add_address(index, addr).await.map_err(|e| {
                    CoreError::sandbox(
                        "add address",
                        format!("{addr} to {name} in sandbox {}", sb.short()),
                        e,
                    )
                })
            }));
            let up = async {
                sb.netlink.set_up(index).await.map_err(|e| {
                    CoreError::sandbox("bring up", format!("{name} in sandbox {}", sb.short()), e)
                })
            };
            futures::try_join!(adds, up)?;
            let routes: Vec<RouteSpec> = info
                .static_routes
                .iter()
                .map(|r| match r.next_hop {
                    Some(gw) => RouteSpec::via(r.destination, gw, Some(index)),
                    None => RouteSpec::on_link(r.destination, Some(index)),
                })
                .collect();
            add_routes(sb, &routes, "add static route").await?;
        }
        crate::crash::point("join:after-interface");
        let joined = Joined {
            ep: ep.clone(),
            requested: requested.clone(),
            eth: ifname.as_ref().map(|_| n),
            ifname,
            index,
            moved_from,
            info,
            priority,
            published: Vec::new(),
        };
        check_ports_follow_gateway(sb, &st.joined, ep, &joined.candidate())?;
        let mut list = st.joined.clone();
        list.push(joined);
        let old_gw = st
            .gateway
            .as_ref()
            .and_then(|g| st.joined.iter().find(|j| &j.ep.id == g))
            .cloned();
        let gw = switch_gateway(sb, old_gw, &mut list, &mut undo).await?;
        crate::crash::point("join:after-gateway");
        sb.write_hosts(&list)?;
        {
            let (sbc, old) = (sb.clone(), st.joined.clone());
            undo.push("restore hosts file", move || async move {
                sbc.write_hosts(&old)
            });
        }
        let revision = commit_join_state(
            ctl,
            sb,
            &list,
            gw.as_deref(),
            st.version,
            ep,
            epst.version,
            Some(&sb.id),
        )
        .await?;
        Ok((list, gw, revision))
    }
    .await;
    let (list, gw, revision) = undo.finish(result).await?;
    crate::crash::point("join:after-record");
    tracing::info!(
        endpoint = id::short(&ep.id),
        sandbox = sb.short(),
        ifname = list
            .last()
            .and_then(|j| j.ifname.as_ref())
            .map(IfName::as_str)
            .unwrap_or("-"),
        gateway = gw.as_deref().map(id::short).unwrap_or("-"),
        "joined"
    );
    st.joined = list;
    st.gateway = gw;
    st.version = revision;
    epst.sandbox = Some(sb.id.clone());
    epst.version = revision;
    Ok(())
}

/// Refuses the join of an endpoint with published ports that will not be its sandbox's gateway
/// endpoint (`me` is its gateway candidate, `joined` the sandbox's other endpoints).
///
/// Ports are published for the gateway endpoint only, because replies to outside clients leave
/// by the default route: a port published on another endpoint's address would answer from the
/// wrong interface (asymmetric routing, dropped by reverse-path filters and conntrack). Rather
/// than take the ports and leave them unpublished, the join is refused and nothing is done.
/// (An endpoint that was the gateway when it joined keeps its ports recorded if a later join
/// takes the default route: they are withdrawn while it is not the gateway and published again
/// when it is.)
fn check_ports_follow_gateway(
    sb: &SandboxInner,
    joined: &[Joined],
    ep: &EndpointInner,
    me: &GatewayCandidate,
) -> Result<(), CoreError> {
    if ep.options.port_bindings.is_empty() {
        return Ok(());
    }
    let others: Vec<GatewayCandidate> = joined.iter().map(Joined::candidate).collect();
    let sandbox = format!("sandbox {} (container {})", sb.short(), sb.container_id);
    let (gateway, reason) = match gateway::join_outcome(&others, me) {
        JoinOutcome::Gateway => return Ok(()),
        JoinOutcome::Outranked(best) => {
            let g = joined
                .iter()
                .find(|j| j.ep.id == best.endpoint_id)
                .expect("the candidates were made from the joined endpoints");
            (
                Some(g.ep.name.clone()),
                format!(
                    "endpoint {} on network {} provides the default route of {sandbox} and \
                     keeps it after this join; published ports follow the default route \
                     (replies to outside clients leave by it), so they are taken only on the \
                     join that makes the endpoint the gateway: join with a gateway priority \
                     above {}, or publish them on network {}",
                    g.ep.name, g.ep.network.name, g.priority, g.ep.network.name
                ),
            )
        }
        JoinOutcome::CannotServe if ep.network.internal() => (
            None,
            format!(
                "network {} is internal, so the endpoint never provides the default route of \
                 {sandbox}, and published ports follow the default route",
                ep.network.name
            ),
        ),
        JoinOutcome::CannotServe => (
            None,
            format!(
                "its driver gives it no gateway, so the endpoint never provides the default \
                 route of {sandbox}, and published ports follow the default route"
            ),
        ),
    };
    Err(CoreError::PortsNotPublishable {
        endpoint: ep.name.clone(),
        network: ep.network.name.clone(),
        ports: ep
            .options
            .port_bindings
            .iter()
            .map(ToString::to_string)
            .collect(),
        gateway,
        reason,
    })
}

async fn find_link(netlink: &Netlink, name: &IfName, where_: &str) -> Result<u32, CoreError> {
    netlink
        .link(name.as_str())
        .await
        .map_err(|e| CoreError::sandbox("look up interface", format!("{name} in {where_}"), e))?
        .map(|l| l.index)
        .ok_or_else(|| CoreError::NotFound {
            what: "interface",
            key: format!("{name} in {where_}"),
        })
}

/// Leaves `ep` from `sb`.
pub(crate) async fn leave(
    ctl: &Arc<ControllerInner>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
) -> Result<(), CoreError> {
    let mut st = sb.state.lock().await;
    if st.deleted {
        return Err(CoreError::Deleted {
            what: "sandbox",
            name: sb.short().to_owned(),
        });
    }
    let mut epst = ep.state.lock().await;
    if epst.sandbox.as_deref() != Some(sb.id.as_str()) {
        return Err(CoreError::NotJoined {
            endpoint: ep.name.clone(),
            sandbox: sb.short().to_owned(),
        });
    }
    leave_locked(ctl, sb, &mut st, ep, &mut epst).await
}

/// Records first, then the kernel: once the records say the endpoint left, a crash leaves at
/// most a veth, rules or a route that no record owns, which the restart sweeps. The kernel
/// steps are best effort: every one runs even if an earlier one failed, and every failure is
/// reported.
async fn leave_locked(
    ctl: &Arc<ControllerInner>,
    sb: &Arc<SandboxInner>,
    st: &mut SandboxState,
    ep: &Arc<EndpointInner>,
    epst: &mut EndpointState,
) -> Result<(), CoreError> {
    let Some(pos) = st.joined.iter().position(|j| j.ep.id == ep.id) else {
        return Err(CoreError::NotJoined {
            endpoint: ep.name.clone(),
            sandbox: sb.short().to_owned(),
        });
    };
    let mut rest = st.joined.clone();
    let j = rest.remove(pos);
    let was_gateway = st.gateway.as_deref() == Some(ep.id.as_str());
    // The gateway the sandbox will have: the one switch_gateway picks below.
    let candidates: Vec<GatewayCandidate> = rest.iter().map(Joined::candidate).collect();
    let next_gw = gateway::select(&candidates).map(|c| c.endpoint_id.clone());
    let revision = commit_join_state(
        ctl,
        sb,
        &rest,
        next_gw.as_deref(),
        st.version,
        ep,
        epst.version,
        None,
    )
    .await?;
    st.version = revision;
    epst.version = revision;
    epst.sandbox = None;
    crate::crash::point("leave:after-record");
    let old_gw = if was_gateway {
        None
    } else {
        st.gateway
            .as_ref()
            .and_then(|g| rest.iter().find(|x| &x.ep.id == g))
            .cloned()
    };
    st.joined = rest;
    st.gateway = next_gw.clone();
    let mut errors = Errors::default();
    leave_kernel(ctl, sb, &j, was_gateway, &mut errors).await;
    crate::crash::point("leave:after-driver");
    // A leave is not rolled back: the inverses are dropped unrun.
    let mut undo = Undo::new();
    let switched = errors.check(switch_gateway(sb, old_gw, &mut st.joined, &mut undo).await);
    if switched.is_some() && next_gw.is_some() {
        // The new gateway endpoint's ports as published (host ports resolved) go in its record.
        let published = st
            .joined
            .iter()
            .any(|x| Some(&x.ep.id) == next_gw.as_ref() && !x.published.is_empty());
        if published
            && let Some(v) = errors
                .check(commit_sandbox(ctl, sb, &st.joined, next_gw.as_deref(), st.version).await)
        {
            st.version = v;
        }
    }
    errors.check(sb.write_hosts(&st.joined));
    tracing::info!(endpoint = id::short(&ep.id), sandbox = sb.short(), "left");
    errors.into_result()
}

/// The kernel half of a leave: withdraw published ports, give a moved-in interface back, and
/// the driver's leave (which removes the interface, its addresses and routes).
async fn leave_kernel(
    ctl: &Arc<ControllerInner>,
    sb: &Arc<SandboxInner>,
    j: &Joined,
    was_gateway: bool,
    errors: &mut Errors,
) {
    if was_gateway {
        errors.check(revoke(j).await);
    }
    if let (Some(index), Some(host_name)) = (j.index, &j.moved_from) {
        errors.check(
            sb.netlink
                .move_to_netns(index, &ctl.host_ns, Some(host_name))
                .await
                .map_err(|e| {
                    CoreError::sandbox(
                        "move interface back to the host as",
                        host_name.to_string(),
                        e,
                    )
                }),
        );
    }
    let net = &j.ep.network;
    let request = LeaveRequest {
        network_id: net.id.clone(),
        endpoint_id: j.ep.id.clone(),
        sandbox: sb.sandbox_ref(),
        ifname: j.requested.clone(),
    };
    errors.check(
        net.driver
            .leave(&request)
            .await
            .map_err(|e| CoreError::driver("leave endpoint", &j.ep.name, e)),
    );
}

/// Rewrites the sandbox's record alone; returns the revision.
async fn commit_sandbox(
    ctl: &ControllerInner,
    sb: &SandboxInner,
    joined: &[Joined],
    gateway: Option<&str>,
    version: u64,
) -> Result<u64, CoreError> {
    let skey = record::sandbox_key(&sb.id);
    let txn = Txn::new()
        .put_json(&skey, &sb.record(joined, gateway), Expect::Version(version))
        .map_err(|e| CoreError::store("encode", &skey, e))?;
    ctl.store
        .commit(txn)
        .await
        .map_err(|e| CoreError::store("write", skey, e))
}

/// Deletes a sandbox. Records first, in one transaction: the sandbox's record goes and every
/// joined endpoint's record says it is free. Then the kernel: each endpoint leaves (newest
/// first), the namespace and the files go. A crash after the transaction leaves only what the
/// restart's sweep removes (the namespace's bind mount, its files, veths no record owns).
pub(crate) async fn delete(
    ctl: Arc<ControllerInner>,
    sb: Arc<SandboxInner>,
) -> Result<(), CoreError> {
    let slot = ctl.containers.get(&sb.container_id).map(|s| s.clone());
    let mut slot_guard = match &slot {
        Some(s) => Some(s.lock().await),
        None => None,
    };
    let mut st = sb.state.lock().await;
    if st.deleted {
        return Err(CoreError::Deleted {
            what: "sandbox",
            name: sb.short().to_owned(),
        });
    }
    let joined = st.joined.clone();
    let mut ep_states = Vec::with_capacity(joined.len());
    for j in &joined {
        ep_states.push(j.ep.state.lock().await);
    }
    let key = record::sandbox_key(&sb.id);
    let mut txn = Txn::new().delete(&key, Expect::Version(st.version));
    for (j, epst) in joined.iter().zip(&ep_states) {
        txn = txn
            .put_json(
                j.ep.key(),
                &j.ep.record(None),
                Expect::Version(epst.version),
            )
            .map_err(|e| CoreError::store("encode", j.ep.key(), e))?;
    }
    let revision = ctl
        .store
        .commit(txn)
        .await
        .map_err(|e| CoreError::store("delete", &key, e))?;
    for epst in &mut ep_states {
        epst.sandbox = None;
        epst.version = revision;
    }
    drop(ep_states);
    st.deleted = true;
    let was_gateway = st.gateway.take();
    st.joined.clear();
    ctl.sandboxes.remove(&sb.id);
    crate::crash::point("sandbox-delete:after-record");
    let mut errors = Errors::default();
    for j in joined.iter().rev() {
        let gw = was_gateway.as_deref() == Some(j.ep.id.as_str());
        leave_kernel(&ctl, &sb, j, gw, &mut errors).await;
    }
    crate::crash::point("sandbox-delete:after-leave");
    errors.check(
        NetNs::delete(&sb.key)
            .await
            .map_err(|e| CoreError::sandbox("delete netns", sb.key.display().to_string(), e)),
    );
    crate::crash::point("sandbox-delete:after-netns");
    match tokio::fs::remove_dir_all(&sb.dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.check::<()>(Err(CoreError::io("remove directory", sb.dir.display(), e)));
        }
        _ => {}
    }
    if let (Some(slot), Some(guard)) = (&slot, slot_guard.as_mut())
        && guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sb))
    {
        **guard = None;
        ctl.containers
            .remove_if(&sb.container_id, |_, s| Arc::ptr_eq(s, slot));
    }
    tracing::info!(sandbox = sb.short(), container = %sb.container_id, "sandbox deleted");
    errors.into_result()
}

/// The sandbox of a container: O(1) through its slot, unless the slot is busy (a create or
/// delete of it in flight), then by a scan that sees the committed state.
pub(crate) fn find_by_container(ctl: &ControllerInner, cid: &str) -> Option<Arc<SandboxInner>> {
    let slot = ctl.containers.get(cid).map(|s| s.value().clone())?;
    if let Ok(guard) = slot.try_lock() {
        return guard.clone();
    }
    ctl.sandboxes
        .iter()
        .find(|s| s.container_id == cid)
        .map(|s| s.value().clone())
}

/// A container's sandbox. Cheap to clone; a handle to the controller's state.
#[derive(Clone)]
pub struct Sandbox {
    ctl: Arc<ControllerInner>,
    inner: Arc<SandboxInner>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.inner.short())
            .field("container_id", &self.inner.container_id)
            .field("key", &self.inner.key)
            .finish()
    }
}

impl Sandbox {
    pub(crate) fn new(ctl: Arc<ControllerInner>, inner: Arc<SandboxInner>) -> Self {
        Self { ctl, inner }
    }

    pub(crate) fn inner(&self) -> &Arc<SandboxInner> {
        &self.inner
    }

    pub(crate) fn by_container(ctl: &Arc<ControllerInner>, cid: &str) -> Result<Self, CoreError> {
        find_by_container(ctl, cid)
            .map(|s| Self::new(ctl.clone(), s))
            .ok_or_else(|| CoreError::NotFound {
                what: "sandbox",
                key: cid.to_owned(),
            })
    }

    /// The 64-hex-character id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The container's id.
    pub fn container_id(&self) -> &str {
        &self.inner.container_id
    }

    /// The sandbox key: the path of the persisted network namespace.
    pub fn key(&self) -> &Path {
        &self.inner.key
    }

    /// The network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns
    }

    /// A netlink handle inside the namespace.
    pub fn netlink(&self) -> &Netlink {
        &self.inner.netlink
    }

    /// The container's hosts file.
    pub fn hosts_path(&self) -> PathBuf {
        self.inner.hosts_path()
    }

    /// The container's resolv.conf.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.inner.resolv_conf_path()
    }

    /// The options it was created with.
    pub fn options(&self) -> &JoinOptions {
        &self.inner.options
    }

    /// The joined endpoints with their interface names, in join order.
    pub async fn endpoints(&self) -> Vec<(Endpoint, Option<IfName>)> {
        let st = self.inner.state.lock().await;
        st.joined
            .iter()
            .map(|j| {
                (
                    Endpoint::new(self.ctl.clone(), j.ep.clone()),
                    j.ifname.clone(),
                )
            })
            .collect()
    }

    /// The endpoint giving the default route, if any.
    pub async fn gateway_endpoint(&self) -> Option<Endpoint> {
        let st = self.inner.state.lock().await;
        let gw = st.gateway.as_ref()?;
        st.joined
            .iter()
            .find(|j| &j.ep.id == gw)
            .map(|j| Endpoint::new(self.ctl.clone(), j.ep.clone()))
    }

    /// The ports published for the gateway endpoint, as the driver made them.
    pub async fn published_ports(&self) -> Vec<PortBinding> {
        let st = self.inner.state.lock().await;
        st.joined
            .iter()
            .flat_map(|j| j.published.iter().copied())
            .collect()
    }

    /// Leaves every endpoint, then removes the namespace, the files and the record.
    pub async fn delete(&self) -> Result<(), CoreError> {
        let (ctl, sb) = (self.ctl.clone(), self.inner.clone());
        run_op(
            "delete sandbox",
            self.inner.short().to_owned(),
            delete(ctl, sb),
        )
        .await
    }
}
