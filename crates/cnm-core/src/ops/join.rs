//! Joining an endpoint to a sandbox: driver join → one interface call into the kernel layer →
//! gateway choice (default route, published ports) → the records, in one transaction, committed
//! while the hosts file is written and the DNS listener started. On failure every step is
//! undone (a committed record by a second commit that writes back the previous ones).

use cnm_types::FailedTo;
use std::sync::Arc;

use crate::undo::Cleanup;

use tracing::Instrument as _;

use cnm_sandbox::{InterfaceConfig, InterfaceSource, RouteSpec};
use cnm_types::IfName;

use super::commit_join_state;
use super::gateway::{check_ports_follow_gateway, switch_gateway};
use crate::CoreError;
use crate::gateway::{self, GatewayCandidate};
use crate::id;
use crate::model::endpoint::EndpointInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::spi::{JoinInfo, JoinRequest, JoinedInterface, LeaveRequest};
use crate::state::Core;
use crate::undo::Undo;

/// Joins `ep` to `sb` with gateway `priority`, then attaches the sandbox to the gateway network
/// or detaches it, as it now needs ([`super::gateway_network`]); if that fails, `ep` leaves
/// again.
pub(crate) async fn join(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    priority: i32,
) -> Result<(), CoreError> {
    join_one(core, sb, ep, priority).await?;
    if let Err(e) = super::gateway_network::reconcile(core, sb).await {
        let cleanup = super::leave::leave_one(core, sb, ep).await;
        return Err(e.with_cleanup(cleanup.err().into_iter().collect()));
    }
    Ok(())
}

/// Joins `ep` to `sb` with gateway `priority`, and nothing else.
pub(crate) async fn join_one(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    priority: i32,
) -> Result<(), CoreError> {
    let locked = super::lock_pair(sb, ep).await?;
    let st = &locked.state;
    let ep_version = {
        let epst = ep.state();
        if epst.deleted {
            return Err(ep.deleted_error());
        }
        if let Some(other) = &epst.sandbox {
            let container = core
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
        epst.version
    };
    let net = ep.network.clone();
    // Published ports follow the default route: refuse them before any effect unless this join
    // makes the endpoint the gateway endpoint (as far as can be told before the driver says
    // whether it gives a gateway; checked again, exactly, once it has).
    // (The gateway network's endpoint does not count: it goes when another endpoint gives the
    // default route, and carries the ports of one that needs it.)
    check_ports_follow_gateway(
        sb,
        &super::gateway_network::without_gateway_network(core, &st.joined),
        ep,
        &GatewayCandidate {
            endpoint_id: ep.id.clone(),
            priority,
            no_gateway_service: net.internal(),
            has_gateway: true,
            network_name: net.name.clone(),
        },
    )?;
    let driver = core.driver_of(&net)?;
    if net.capability.host_namespace != sb.options.host_namespace {
        return Err(CoreError::HostNamespace {
            container: sb.container_id.clone(),
            network: net.name.clone(),
            reason: if sb.options.host_namespace {
                "it shares the host's network namespace, which joins no other network"
            } else {
                "only a sandbox on the host's network namespace joins the host's network"
            },
        });
    }
    // The interface's sysctls, checked when the endpoint was created (a recorded endpoint from
    // an older cnm is checked here, before any effect).
    let sysctls = ep.options.interface_sysctls()?;
    // The name the user asked for (`com.docker.network.endpoint.ifname`), or the lowest free
    // `ethN`. Names held by joins waiting for their driver count as taken.
    let (requested, n, custom) = match ep.options.interface_name()? {
        Some(name) => {
            let taken = st
                .joined
                .iter()
                .filter_map(|j| j.ifname.as_ref().or(Some(&j.requested)))
                .chain(sb.detached_names().iter())
                .any(|used| used == &name);
            if taken || name.as_str() == "lo" {
                return Err(CoreError::InterfaceNameInUse {
                    name: name.to_string(),
                    sandbox: sb.short().to_owned(),
                });
            }
            let n = name
                .as_str()
                .strip_prefix("eth")
                .and_then(|n| n.parse().ok());
            (name, n, true)
        }
        None => {
            let n = gateway::pick_index(
                st.joined
                    .iter()
                    .filter_map(|j| j.eth)
                    .chain(sb.detached_eths()),
            );
            let name = IfName::new(format!("eth{n}")).expect("\"eth\" and a u32 fit in 15 bytes");
            (name, Some(n), false)
        }
    };
    let request = JoinRequest {
        network_id: net.id.clone(),
        endpoint_id: ep.id.clone(),
        sandbox: sb.sandbox_ref(),
        ifname: requested.clone(),
        ipv4: ep.ipv4.as_ref().map(|a| a.addr),
        ipv6: ep.ipv6.as_ref().map(|a| a.addr),
        mac: ep.mac,
        options: ep.options.options_for_driver(),
        parsed: ep.parsed.clone(),
    };
    let mut undo = Undo::new();
    let result = async {
        // The DNS listener's sockets are bound (a thread in the sandbox) while the driver
        // does its kernel work: they depend on nothing it does.
        let (info, dns_ready) = futures::join!(
            driver
                .join(&request)
                .instrument(tracing::debug_span!("driver", call = "join")),
            crate::dns::prepare(core, sb, ep, &st.joined)
        );
        let info = info.map_err(|e| CoreError::failed("join endpoint", &ep.name, e))?;
        crate::crash::point("join:after-driver");
        {
            let leave = LeaveRequest {
                network_id: net.id.clone(),
                endpoint_id: ep.id.clone(),
                sandbox: sb.sandbox_ref(),
                ifname: requested.clone(),
            };
            let (driver, name) = (driver.clone(), ep.name.clone());
            undo.push("leave in driver", move || async move {
                driver
                    .leave(&leave)
                    .await
                    .map_err(|e| CoreError::failed("leave endpoint", name, e))
            });
        }
        let joined = set_up_interface(
            core,
            sb,
            ep,
            info,
            Requested {
                name: requested.clone(),
                n,
                custom,
                sysctls: sysctls.clone(),
            },
            priority,
            &mut undo,
        )
        .await?;
        crate::crash::point("join:after-interface");
        let candidate = joined.candidate();
        let mut list = st.joined.clone();
        list.push(joined);
        // An endpoint that needs the gateway network has its ports published by the gateway
        // endpoint (reconciled after this join); any other follows the default route.
        let last = list.last().expect("just pushed");
        let ports = ep.port_bindings();
        if ports.is_empty()
            || !super::gateway_network::ports_carried(core, sb, &list, last, &ports)?
        {
            check_ports_follow_gateway(sb, &st.joined, ep, &candidate)?;
        }
        let old_gw = st.gateway_join().cloned();
        // The records are complete once the gateway is chosen. They are committed while the
        // rest of the kernel work goes on — the default route and the ports when the switch's
        // outcome can be told in advance (a first gateway endpoint, or none changing), the
        // hosts file and the DNS always: a restart redoes all of these from the records.
        let predicted = super::gateway::predict_switch(sb, old_gw.as_ref(), &list);
        let early = predicted.is_some();
        let (records, mut gw) = match predicted {
            Some(p) => p,
            None => {
                let gw = switch_gateway(core, sb, old_gw.clone(), &mut list, &mut undo).await?;
                crate::crash::point("join:after-gateway");
                (list.clone(), gw)
            }
        };
        let rest = async {
            let mut switched = gw.clone();
            if early {
                switched = switch_gateway(core, sb, old_gw, &mut list, &mut undo).await?;
                crate::crash::point("join:after-gateway");
            }
            write_hosts(core, sb, &list)?;
            {
                let (core, sb, old) = (core.clone(), sb.clone(), st.joined.clone());
                undo.push("restore hosts file", move || async move {
                    write_hosts(&core, &sb, &old)
                });
            }
            crate::dns::join(core, sb, ep, &st.joined, dns_ready, &mut undo).await?;
            Ok::<_, CoreError>(switched)
        };
        let (committed, done) = super::overlapped(
            "join:record-before-rest",
            commit_join_state(
                core,
                sb,
                &records,
                gw.as_deref(),
                st.version,
                ep,
                ep_version,
                Some(&sb.id),
            ),
            rest,
        )
        .await;
        if let Ok(revision) = committed {
            // Newest first on unwind: the records are written back as they were (a second
            // commit) before the kernel is undone.
            let (core, sb, ep) = (core.clone(), sb.clone(), ep.clone());
            let (old, old_gw) = (st.joined.clone(), st.gateway.clone());
            undo.push("write back the records", move || async move {
                let back = commit_join_state(
                    &core,
                    &sb,
                    &old,
                    old_gw.as_deref(),
                    revision,
                    &ep,
                    revision,
                    None,
                )
                .await?;
                // The operation locks are still held: the versions follow the records.
                sb.state().version = back;
                ep.state().version = back;
                Ok(())
            });
        }
        let revision = committed?;
        let mut sb_revision = revision;
        let switched = done?;
        let as_recorded = |l: &[Joined]| l.iter().map(Joined::to_record).collect::<Vec<_>>();
        if early && (switched != gw || as_recorded(&list) != as_recorded(&records)) {
            // The switch did not do as predicted (a driver that reports its ports otherwise):
            // the sandbox's record is written again as it is.
            tracing::debug!(
                sandbox = sb.short(),
                "join: sandbox record written again after the gateway switch"
            );
            sb_revision =
                super::commit_sandbox(core, sb, &list, switched.as_deref(), revision).await?;
            gw = switched;
        }
        Ok((list, gw, sb_revision, revision))
    }
    .await;
    let (list, gw, sb_revision, revision) = undo.finish(result).await?;
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
    {
        let mut s = sb.state();
        s.joined = list;
        s.gateway = gw;
        s.version = sb_revision;
    }
    let mut e = ep.state();
    e.sandbox = Some(sb.id.clone());
    e.version = revision;
    Ok(())
}

/// The interface a join asks for.
struct Requested {
    /// Its name (`ethN`, or the user's).
    name: IfName,
    /// `N` of `ethN` when the name is one.
    n: Option<u32>,
    /// The user named it: a driver's name prefix does not apply.
    custom: bool,
    /// Its sysctls.
    sysctls: Vec<cnm_sandbox::InterfaceSysctl>,
}

/// The kernel half of a join: one call that finishes the interface the driver made (moving it
/// in and renaming it when the driver could not create it inside), with the endpoint's
/// addresses, IPv6 on for an IPv6 endpoint, its sysctls, up, and the driver's static routes.
async fn set_up_interface(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    info: JoinInfo,
    wanted: Requested,
    priority: i32,
    undo: &mut Undo<CoreError>,
) -> Result<Joined, CoreError> {
    let Requested {
        name: requested,
        n,
        custom,
        sysctls,
    } = wanted;
    let source = match &info.interface {
        JoinedInterface::InSandbox { index } => Some(InterfaceSource::Existing {
            name: requested.clone(),
            index: *index,
        }),
        JoinedInterface::MoveIn {
            host_name,
            name_prefix,
        } => {
            // A name the user gave takes precedence over the driver's prefix (as in moby).
            let rename = match (name_prefix, custom) {
                (Some(p), false) => IfName::new(format!("{p}{}", n.unwrap_or_default()))
                    .map_err(|e| CoreError::invalid("interface name prefix", p, e.to_string()))?,
                _ => requested.clone(),
            };
            Some(InterfaceSource::MoveIn {
                from: core.kernel.host_netlink().clone(),
                name: host_name.clone(),
                rename,
            })
        }
        JoinedInterface::None => None,
    };
    let (mut index, mut ifname, mut moved_from) = (None, None, None);
    if let Some(source) = source {
        let name = source.name().clone();
        let host_name = match &source {
            InterfaceSource::MoveIn { name, .. } => Some(name.clone()),
            _ => None,
        };
        let mut config = InterfaceConfig::new(source);
        if host_name.is_some() {
            // Born in the host with the driver's choices; the endpoint's MAC and the network's
            // MTU are set as it comes in. (A driver that creates it inside sets them itself.)
            config.mac = ep.mac;
            config.mtu = ep.network.mtu;
        }
        config.addresses = ep.networks().collect();
        config.enable_ipv6 = ep.ipv6.is_some();
        config.sysctls = sysctls;
        config.routes = info
            .static_routes
            .iter()
            .map(|r| match r.next_hop {
                Some(gw) => RouteSpec::via(r.destination, gw, None),
                None => RouteSpec::on_link(r.destination, None),
            })
            .collect();
        let i = core
            .kernel
            .configure_interface(&sb.ns, &config)
            .await
            .map_err(|e| {
                CoreError::failed(
                    "set up interface",
                    format!("{name} in sandbox {}", sb.short()),
                    e,
                )
            })?;
        if let Some(host_name) = &host_name {
            let (core, sb, host_name) = (core.clone(), sb.clone(), host_name.clone());
            undo.push("move interface back", move || async move {
                core.kernel
                    .move_to_host(&sb.ns, i, &host_name)
                    .await
                    .map_err(|e| {
                        CoreError::failed(
                            "move interface back to the host as",
                            host_name.to_string(),
                            e,
                        )
                    })
            });
        }
        (index, ifname, moved_from) = (Some(i), Some(name), host_name);
    }
    Ok(Joined {
        ep: ep.clone(),
        requested,
        eth: ifname.as_ref().and(n),
        ifname,
        index,
        moved_from,
        info,
        priority,
        published: Vec::new(),
    })
}

/// Writes the sandbox's hosts file for `joined`.
pub(crate) fn write_hosts(
    core: &Core,
    sb: &SandboxInner,
    joined: &[Joined],
) -> Result<(), CoreError> {
    let path = sb.hosts_path();
    core.kernel
        .write_hosts(&path, &sb.hosts_file(joined))
        .map_err(|e| CoreError::failed("write hosts file", path.display().to_string(), e))
}
