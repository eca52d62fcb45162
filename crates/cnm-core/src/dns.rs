//! The embedded DNS as the controller drives it: one [`cnm_dns::Resolver`] per controller, fed
//! from the operations at a few points (join, leave, sandbox delete, network delete, reload).
//!
//! A network is served when the resolver is on ([`crate::ControllerBuilder::embedded_dns`]),
//! its driver gives endpoints addresses (not `null`, `host`) and its option
//! [`KEY_EMBEDDED_DNS`](crate::options::KEY_EMBEDDED_DNS) is not `false` (cnmd sets it
//! on Docker's default `bridge`, which has no embedded DNS in Docker either). A sandbox joined to
//! at least one served network has its listener at `127.0.0.11:53` inside its own namespace and
//! a resolv.conf naming it; when its last served endpoint leaves, the listener stops and the
//! resolv.conf it had before (the host's, filtered) is written back, in place.
//!
//! Records change in step with the objects: an endpoint's names are published inside the join's
//! transaction (withdrawn if the join unwinds) and withdrawn by a leave or a sandbox delete as
//! soon as the records say so, before the kernel work. The resolver keeps no state of its own:
//! a reload replays every served network, sandbox and joined endpoint ([`replay`]).

use cnm_types::FailedTo;
use futures::{StreamExt, TryStreamExt};
use std::sync::{Arc, Mutex};

use cnm_dns::{DnsOverrides, EndpointDns, NetworkDns, Resolver, sandbox_resolv_conf};

use crate::CoreError;
use crate::model::endpoint::EndpointInner;
use crate::model::network::NetworkInner;
use crate::model::sandbox::{Joined, SandboxInner};
use crate::state::Core;
use crate::undo::Undo;

/// The controller's resolver slot: set by the builder when the embedded DNS is on, emptied at
/// shutdown (which stops every listener).
#[derive(Default)]
pub(crate) struct Dns(Mutex<Option<Resolver>>);

impl Dns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Resolver>> {
        crate::sync::lock(&self.0)
    }

    pub(crate) fn set(&self, resolver: Resolver) {
        *self.lock() = Some(resolver);
    }

    /// The resolver (a cheap clone), when on.
    pub(crate) fn resolver(&self) -> Option<Resolver> {
        self.lock().clone()
    }

    /// Drops the controller's resolver: its listeners stop with the last clone.
    pub(crate) fn release(&self) {
        self.lock().take();
    }
}

fn dns_error(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(cnm_dns::DnsError) -> CoreError {
    let object = object.into();
    move |source| CoreError::Dns {
        op,
        object,
        source: Box::new(source),
    }
}

/// Whether the embedded DNS serves `net` (see the module docs).
pub(crate) fn serves(net: &NetworkInner) -> bool {
    net.capability.needs_addresses && matches!(net.options.embedded_dns(), Ok(true))
}

/// Whether any of `joined` is on a served network.
fn any_served(joined: &[Joined]) -> bool {
    joined.iter().any(|j| serves(&j.ep.network))
}

/// The names the embedded DNS answers for `ep` on its network: its name (Docker's container
/// name), then its aliases and DNS names, without repeats (names are case-insensitive).
pub(crate) fn names(ep: &EndpointInner) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let given = std::iter::once(&ep.name)
        .chain(&ep.options.aliases)
        .chain(&ep.options.dns_names);
    for name in given {
        if !out.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            out.push(name.clone());
        }
    }
    out
}

/// The names `ep` is published under, as inspect shows them (Docker's `DNSNames`): empty when
/// the controller's resolver is off or does not serve the endpoint's network.
pub(crate) fn published_names(core: &Core, ep: &EndpointInner) -> Vec<String> {
    if core.dns.resolver().is_some() && serves(&ep.network) {
        names(ep)
    } else {
        Vec::new()
    }
}

pub(crate) fn network_dns(net: &NetworkInner) -> NetworkDns {
    let mut n = NetworkDns::new(net.name.clone()).internal(net.internal());
    for p in net.pools_v4.iter().chain(&net.pools_v6) {
        n = n.subnet(p.subnet);
    }
    // Checked when the network was created; a record that no longer parses forwards to the
    // host's servers rather than losing the network's names.
    for server in net.options.dns_servers().unwrap_or_default() {
        n = n.server(server);
    }
    n
}

fn endpoint_dns(sb: &SandboxInner, ep: &EndpointInner) -> EndpointDns {
    let mut names = names(ep).into_iter();
    let first = names.next().unwrap_or_else(|| ep.name.clone());
    let mut e = EndpointDns::new(ep.id.clone(), sb.id.clone(), first);
    for alias in names {
        e = e.alias(alias);
    }
    for ip in ep.addresses() {
        e = e.address(ip);
    }
    e
}

/// Registers `net` (again) and publishes `ep` on it. A name the resolver cannot hold (a network
/// or endpoint name DNS cannot carry) is skipped with a warning: the endpoint works, unnamed.
/// Returns whether the endpoint was published.
fn publish(resolver: &Resolver, sb: &SandboxInner, ep: &EndpointInner) -> Result<bool, CoreError> {
    let net = &ep.network;
    if let Err(e) = resolver.upsert_network(&net.id, &network_dns(net)) {
        if e.kind() == cnm_types::ErrorKind::InvalidInput {
            tracing::warn!(network = %net.name, error = %e, "network has no DNS names");
            return Ok(false);
        }
        return Err(dns_error("register network", net.name.clone())(e));
    }
    match resolver.add_endpoint(&net.id, &endpoint_dns(sb, ep)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == cnm_types::ErrorKind::InvalidInput => {
            tracing::warn!(endpoint = %ep.name, error = %e, "endpoint has no DNS names");
            Ok(false)
        }
        Err(e) => Err(dns_error("publish the names of endpoint", ep.name.clone())(
            e,
        )),
    }
}

/// Starts the sandbox's listener and writes its resolv.conf (`nameserver 127.0.0.11`, the
/// host's search domains and options, the sandbox's overrides); on failure nothing stays.
async fn attach(core: &Core, resolver: &Resolver, sb: &SandboxInner) -> Result<(), CoreError> {
    attach_prepared(core, resolver, sb, Prepared::default()).await
}

/// What a join's DNS step takes from outside the controller, made ahead by [`prepare`] while
/// the join does its kernel work: the sandbox listener's sockets (bound on a thread in the
/// sandbox's namespace) and the host's resolv.conf. Whatever is missing is made by the step.
#[derive(Default)]
pub(crate) struct Prepared {
    listener: Option<cnm_dns::BoundListener>,
    host: Option<cnm_sandbox::ResolvConf>,
}

/// Binds the listener's sockets and reads the host's resolv.conf for a join of `ep` to `sb`
/// that will start the sandbox's listener ([`join`] with the same `before`); nothing for any
/// other join. It changes nothing anyone sees: the sockets answer nothing until the step serves
/// them, and close if the join fails first. A failure here is left for the step to meet again
/// and report (it does the work itself then).
pub(crate) async fn prepare(
    core: &Core,
    sb: &SandboxInner,
    ep: &EndpointInner,
    before: &[Joined],
) -> Prepared {
    if core.dns.resolver().is_none() || !serves(&ep.network) || any_served(before) {
        return Prepared::default();
    }
    let (listener, host) =
        futures::join!(Resolver::bind_sandbox(&sb.ns.ns), core.host_resolv_conf());
    Prepared {
        listener: listener.ok(),
        host: host.ok(),
    }
}

async fn attach_prepared(
    core: &Core,
    resolver: &Resolver,
    sb: &SandboxInner,
    prepared: Prepared,
) -> Result<(), CoreError> {
    let host = match prepared.host {
        Some(host) => host,
        None => core.host_resolv_conf().await?,
    };
    let o = &sb.options;
    let rc = sandbox_resolv_conf(
        &host,
        &DnsOverrides::new(
            o.dns_servers.clone(),
            o.dns_search.clone(),
            o.dns_options.clone(),
        ),
    );
    resolver
        .attach_sandbox_bound(&sb.id, &sb.ns.ns, prepared.listener, rc.dns)
        .await
        .map_err(dns_error("start the DNS listener of sandbox", sb.short()))?;
    let path = sb.resolv_conf_path();
    if let Err(e) = core.kernel.write_resolv_conf(&path, &rc.file) {
        resolver.detach_sandbox(&sb.id);
        return Err(CoreError::failed(
            "write resolv.conf",
            path.display().to_string(),
            e,
        ));
    }
    Ok(())
}

/// Stops the sandbox's listener and writes back the resolv.conf it has without one.
async fn detach(core: &Core, resolver: &Resolver, sb: &SandboxInner) -> Result<(), CoreError> {
    resolver.detach_sandbox(&sb.id);
    let host = core.host_resolv_conf().await?;
    let path = sb.resolv_conf_path();
    core.kernel
        .write_resolv_conf(&path, &sb.resolv_conf(&host))
        .map_err(|e| CoreError::failed("write resolv.conf", path.display().to_string(), e))
}

/// A join's DNS step, inside its transaction: the sandbox's first served endpoint starts its
/// listener (on the sockets `prepared` holds, see [`prepare`]) and rewrites its resolv.conf; the
/// endpoint's names are published. Both are undone if the join unwinds.
pub(crate) async fn join(
    core: &Arc<Core>,
    sb: &Arc<SandboxInner>,
    ep: &Arc<EndpointInner>,
    before: &[Joined],
    prepared: Prepared,
    undo: &mut Undo<CoreError>,
) -> Result<(), CoreError> {
    let Some(resolver) = core.dns.resolver() else {
        return Ok(());
    };
    if !serves(&ep.network) {
        return Ok(());
    }
    if !any_served(before) {
        attach_prepared(core, &resolver, sb, prepared).await?;
        let (core, r, sb) = (core.clone(), resolver.clone(), sb.clone());
        undo.push("stop the sandbox's DNS listener", move || async move {
            detach(&core, &r, &sb).await
        });
    }
    if publish(&resolver, sb, ep)? {
        let (r, net, id) = (resolver.clone(), ep.network.id.clone(), ep.id.clone());
        undo.push("withdraw the endpoint's DNS names", move || async move {
            r.remove_endpoint(&net, &id);
            Ok(())
        });
        if crate::remote_names::shared(core, &ep.network) {
            crate::remote_names::publish(core, ep, names(ep)).await?;
            let (core, ep) = (core.clone(), ep.clone());
            undo.push(
                "withdraw the endpoint's DNS names from the other hosts",
                move || async move { crate::remote_names::withdraw(&core, &ep).await },
            );
        }
    }
    Ok(())
}

/// A leave's DNS step, once the records say the endpoint left: its names go at once; the
/// sandbox's last served endpoint stops the listener (`rest` is what stays joined).
pub(crate) async fn leave(
    core: &Core,
    sb: &SandboxInner,
    ep: &EndpointInner,
    rest: &[Joined],
) -> Result<(), CoreError> {
    let Some(resolver) = core.dns.resolver() else {
        return Ok(());
    };
    if !serves(&ep.network) {
        return Ok(());
    }
    let withdrawn = withdraw(core, &resolver, ep).await;
    if !any_served(rest) {
        detach(core, &resolver, sb).await?;
    }
    withdrawn
}

/// Withdraws `ep`'s names: from this host's resolver at once, and from the other hosts too when
/// its network is served and shares its names.
async fn withdraw(core: &Core, resolver: &Resolver, ep: &EndpointInner) -> Result<(), CoreError> {
    resolver.remove_endpoint(&ep.network.id, &ep.id);
    if serves(&ep.network) && crate::remote_names::shared(core, &ep.network) {
        crate::remote_names::withdraw(core, ep).await
    } else {
        Ok(())
    }
}

/// A sandbox delete's DNS step, once its record is gone: its endpoints' names go (from the
/// other hosts too) and its listener stops (its files go with its directory).
pub(crate) async fn sandbox_deleted(
    core: &Core,
    sb: &SandboxInner,
    joined: &[Joined],
) -> Result<(), CoreError> {
    let Some(resolver) = core.dns.resolver() else {
        return Ok(());
    };
    let mut errors = crate::undo::Errors::default();
    for j in joined {
        errors.check(withdraw(core, &resolver, &j.ep).await);
    }
    resolver.detach_sandbox(&sb.id);
    errors.into_result()
}

/// A network delete's DNS step: its names go, the other hosts' too.
pub(crate) fn network_deleted(core: &Core, net: &NetworkInner) {
    core.remote_names.forget(&net.id);
    if let Some(resolver) = core.dns.resolver() {
        resolver.remove_network(&net.id);
    }
}

/// After a reload: every sandbox with a served endpoint gets its listener and resolv.conf again
/// and every joined endpoint its names, so names resolve as before the restart. A sandbox left
/// without one whose resolv.conf still names 127.0.0.11 (a crash between a join's DNS step and
/// its record, or the embedded DNS turned off since) gets the host's servers back.
pub(crate) async fn replay(core: &Arc<Core>) -> Result<(), CoreError> {
    let resolver = core.dns.resolver();
    let sandboxes: Vec<Arc<SandboxInner>> =
        core.sandboxes.iter().map(|s| s.value().clone()).collect();
    // Each sandbox's listener starts on a thread in its own namespace: a bounded number of
    // sandboxes at a time (as the rest of the reload does).
    let resolver = &resolver;
    let published: usize = futures::stream::iter(sandboxes)
        .map(|sb| async move {
            let mut published = 0usize;
            let joined = sb.state().joined.clone();
            match &resolver {
                Some(resolver) if any_served(&joined) => {
                    attach(core, resolver, &sb).await?;
                    for j in joined.iter().filter(|j| serves(&j.ep.network)) {
                        let named = publish(resolver, &sb, &j.ep)?;
                        published += usize::from(named);
                        // A new lease of this host's: its names are written again under it.
                        if named && crate::remote_names::shared(core, &j.ep.network) {
                            crate::remote_names::publish(core, &j.ep, names(&j.ep)).await?;
                        }
                    }
                }
                _ => {
                    let path = sb.resolv_conf_path();
                    let current =
                        core.kernel.read_resolv_conf(&path).await.map_err(|e| {
                            CoreError::failed("read", path.display().to_string(), e)
                        })?;
                    if current
                        .nameservers
                        .contains(&std::net::IpAddr::V4(cnm_dns::SANDBOX_RESOLVER))
                    {
                        let host = core.host_resolv_conf().await?;
                        core.kernel
                            .write_resolv_conf(&path, &sb.resolv_conf(&host))
                            .map_err(|e| {
                                CoreError::failed(
                                    "write resolv.conf",
                                    path.display().to_string(),
                                    e,
                                )
                            })?;
                    }
                }
            }
            Ok::<_, CoreError>(published)
        })
        .buffer_unordered(crate::ops::reload::RESTORE_PARALLEL)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    tracing::debug!(endpoints = published, "DNS records replayed");
    Ok(())
}
