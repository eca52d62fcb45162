//! Two drivers that both need firewall rules, side by side on one controller: the bridge and
//! `tdrv`, a test driver defined here (registered through `inventory`, as an out-of-tree
//! driver would be) that keeps a fragment of its own in the controller's shared firewall — a
//! blocklist per network, a DNAT map for the ports it publishes, masquerade, the `allow` mark.
//! Real packets prove each driver's rules work while the other's do, across network churn, a
//! restart (durable store) and `nft flush ruleset`; and that the last network takes every cnm
//! table and the iptables compatibility rule with it.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use cnm::cnm_firewall::{
    Action, ChainHook, ChainType, ElementChange, FieldType, Fragment, FragmentChain, FragmentSet,
    FragmentSpec, Key, Match, Rule, SetElement, Value,
};
use cnm::cnm_sandbox::{LinkKind, LinkSpec};
use cnm::cnm_types::{ErrorKind, IfName};
use cnm::{
    Capability, Controller, CoreError, Driver, DriverContext, DriverError, DriverOptions,
    DriverRegistration, EndpointInfo, EndpointOptions, EndpointSpec, JoinInfo, JoinRequest,
    JoinedInterface, LeaveRequest, NetworkOptions, NetworkSpec, PortBinding, Protocol,
    PublishRequest, RestoredEndpoint,
};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};
use ipnet::Ipv4Net;

// ---------------------------------------------------------------------------------------------
// The test driver: a bridge per network, a veth per endpoint, and its own firewall fragment.

const NAME: &str = "tdrv";
/// Addresses the network's containers may not reach (comma-separated IPv4).
const BLOCK: &str = "com.example.tdrv.block";

inventory::submit! { DriverRegistration::new(NAME, TestDriver::create) }

#[derive(Debug, Clone)]
struct Net {
    bridge: IfName,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    blocked: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone)]
struct Ep {
    ip: Ipv4Addr,
    /// (host address, host port, container port), while published.
    published: Vec<(Ipv4Addr, u16, u16)>,
}

#[derive(Debug)]
struct TestDriver {
    ctx: DriverContext,
    fragment: tokio::sync::OnceCell<Fragment>,
    nets: Mutex<HashMap<String, Net>>,
    eps: Mutex<HashMap<String, Ep>>,
}

fn err(e: impl std::error::Error + Send + Sync + 'static, kind: ErrorKind) -> DriverError {
    DriverError::new(NAME, kind, e)
}

fn fw_err(e: cnm::cnm_firewall::FirewallError) -> DriverError {
    let kind = e.kind();
    err(e, kind)
}

fn sb_err(e: cnm::cnm_sandbox::SandboxError) -> DriverError {
    let kind = e.kind();
    err(e, kind)
}

fn invalid(what: String) -> DriverError {
    DriverError::new(NAME, ErrorKind::InvalidInput, what)
}

/// The driver's fragment: its rules, declared once as data.
fn spec() -> FragmentSpec {
    use FieldType as F;
    FragmentSpec::new(NAME)
        .set(FragmentSet::new("ifaces", [F::IfName]))
        .set(FragmentSet::new("blocked", [F::IfName, F::Ipv4]))
        .set(FragmentSet::new("subnets", [F::IfName, F::Ipv4]).interval())
        .set(FragmentSet::new("forwards", [F::Ipv4, F::Port]).to([F::Ipv4, F::Port]))
        .chain(
            FragmentChain::base("screen", ChainHook::Forward, ChainType::Filter, -10)
                .rule(Rule::new(
                    [Match::in_set([Key::IifName, Key::IpDaddr], "blocked")],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [Match::in_set([Key::IifName], "ifaces")],
                    Action::Allow,
                ))
                .rule(Rule::new(
                    [Match::in_set([Key::OifName], "ifaces")],
                    Action::Allow,
                )),
        )
        .chain(
            FragmentChain::base("nat_in", ChainHook::Prerouting, ChainType::Nat, -95).rule(
                Rule::new(
                    [Match::is(Key::L4Proto, Protocol::Tcp)],
                    Action::Dnat {
                        keys: vec![Key::IpDaddr, Key::ThDport],
                        map: "forwards".into(),
                    },
                ),
            ),
        )
        .chain(
            FragmentChain::base("nat_out", ChainHook::Postrouting, ChainType::Nat, 105).rule(
                Rule::new(
                    [
                        Match::not_in_set([Key::OifName], "ifaces"),
                        Match::in_set([Key::IifName, Key::IpSaddr], "subnets"),
                    ],
                    Action::Masquerade,
                ),
            ),
        )
}

/// A network's elements (added, or deleted).
fn net_change(net: &Net, add: bool) -> ElementChange {
    let br = Value::from(&net.bridge);
    let subnet = SetElement::new([br.clone(), Value::Ipv4(net.subnet.network())])
        .through([br.clone(), Value::Ipv4(net.subnet.broadcast())]);
    let mut elements = vec![
        ("ifaces", SetElement::new([br.clone()])),
        ("subnets", subnet),
    ];
    for ip in &net.blocked {
        elements.push(("blocked", SetElement::new([br.clone(), Value::Ipv4(*ip)])));
    }
    let mut change = ElementChange::new();
    for (set, e) in elements {
        change = if add {
            change.add(set, e)
        } else {
            change.delete(set, e)
        };
    }
    if add {
        change.claim_interface(&net.bridge)
    } else {
        change.release_interface(&net.bridge)
    }
}

fn forward(ep: &Ep, (host, port, cport): (Ipv4Addr, u16, u16)) -> SetElement {
    SetElement::new([Value::Ipv4(host), Value::Port(port)])
        .to([Value::Ipv4(ep.ip), Value::Port(cport)])
}

impl TestDriver {
    fn create(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self {
            ctx: ctx.clone(),
            fragment: tokio::sync::OnceCell::new(),
            nets: Mutex::new(HashMap::new()),
            eps: Mutex::new(HashMap::new()),
        }))
    }

    /// The driver's part of the controller's one firewall.
    async fn fragment(&self) -> Result<&Fragment, DriverError> {
        self.fragment
            .get_or_try_init(|| async { self.ctx.firewall().fragment(spec()).map_err(fw_err) })
            .await
    }

    fn plan(spec: &NetworkSpec) -> Result<Net, DriverError> {
        let pool = spec
            .ipv4
            .first()
            .ok_or_else(|| invalid("no IPv4 pool".into()))?;
        let gateway = pool
            .gateway
            .ok_or_else(|| invalid("no gateway".into()))?
            .addr();
        let blocked = match spec.options.get(BLOCK) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| s.parse().map_err(|_| invalid(format!("{BLOCK}={s}"))))
                .collect::<Result<_, _>>()?,
        };
        let bridge =
            IfName::new(format!("{NAME}{}", &spec.id[..8])).map_err(|e| invalid(e.to_string()))?;
        Ok(Net {
            bridge,
            subnet: pool.pool,
            gateway,
            blocked,
        })
    }

    fn veth(endpoint_id: &str) -> IfName {
        IfName::new(format!("tv{}", &endpoint_id[..8])).expect("10 bytes")
    }

    /// The bridge, made (with the gateway address) unless it is there already.
    async fn bridge(&self, net: &Net) -> Result<(), DriverError> {
        let host = &self.ctx.host_netlink;
        if host
            .link(net.bridge.as_str())
            .await
            .map_err(sb_err)?
            .is_some()
        {
            return Ok(());
        }
        let mut link = LinkSpec::new(net.bridge.clone(), LinkKind::Bridge);
        link.up = true;
        host.create_link(&link).await.map_err(sb_err)?;
        let index = host
            .link(net.bridge.as_str())
            .await
            .map_err(sb_err)?
            .ok_or_else(|| invalid("bridge vanished".into()))?
            .index;
        let gw = Ipv4Net::new(net.gateway, net.subnet.prefix_len()).expect("valid prefix");
        host.add_address(index, gw.into()).await.map_err(sb_err)?;
        host.set_up(index).await.map_err(sb_err)
    }
}

#[async_trait]
impl Driver for TestDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn capability(&self) -> Capability {
        Capability::local()
    }

    fn parse_network_options(
        &self,
        options: &DriverOptions,
    ) -> Result<cnm::spi::ParsedOptions, DriverError> {
        match options.keys().find(|k| *k != BLOCK) {
            Some(k) => Err(invalid(format!("unknown option {k}"))),
            None => Ok(cnm::spi::ParsedOptions::none()),
        }
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<(), DriverError> {
        let net = Self::plan(spec)?;
        self.bridge(&net).await?;
        if let Err(e) = self.fragment().await?.apply(&net_change(&net, true)).await {
            self.ctx
                .host_netlink
                .delete_link_named(net.bridge.as_str())
                .await
                .map_err(sb_err)?;
            return Err(fw_err(e));
        }
        self.nets.lock().unwrap().insert(spec.id.clone(), net);
        Ok(())
    }

    async fn restore_network(
        &self,
        spec: &NetworkSpec,
        endpoints: &[RestoredEndpoint],
    ) -> Result<(), DriverError> {
        // the bridge and veths survived the restart: the rules go back in the (loading) firewall
        self.create_network(spec).await?;
        for ep in endpoints {
            self.create_endpoint(&ep.spec).await?;
        }
        Ok(())
    }

    async fn delete_network(&self, network_id: &str) -> Result<(), DriverError> {
        let net = self
            .nets
            .lock()
            .unwrap()
            .get(network_id)
            .cloned()
            .ok_or_else(|| invalid(format!("no network {network_id}")))?;
        self.fragment()
            .await?
            .apply(&net_change(&net, false))
            .await
            .map_err(fw_err)?;
        self.ctx
            .host_netlink
            .delete_link_named(net.bridge.as_str())
            .await
            .map_err(sb_err)?;
        self.nets.lock().unwrap().remove(network_id);
        Ok(())
    }

    async fn create_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        let ip = spec
            .ipv4
            .ok_or_else(|| invalid("no IPv4 address".into()))?
            .addr();
        self.eps.lock().unwrap().insert(
            spec.endpoint_id.clone(),
            Ep {
                ip,
                published: Vec::new(),
            },
        );
        Ok(EndpointInfo::default())
    }

    async fn delete_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        self.revoke_external_connectivity(network_id, endpoint_id)
            .await?;
        self.eps.lock().unwrap().remove(endpoint_id);
        Ok(())
    }

    async fn join(&self, req: &JoinRequest) -> Result<JoinInfo, DriverError> {
        let net = self
            .nets
            .lock()
            .unwrap()
            .get(&req.network_id)
            .cloned()
            .ok_or_else(|| invalid(format!("no network {}", req.network_id)))?;
        let host = &self.ctx.host_netlink;
        let bridge = host
            .link(net.bridge.as_str())
            .await
            .map_err(sb_err)?
            .ok_or_else(|| invalid("no bridge".into()))?;
        let mut link = LinkSpec::new(
            Self::veth(&req.endpoint_id),
            LinkKind::Veth {
                peer_name: req.ifname.clone(),
                peer_ns: Some(req.sandbox.ns.clone()),
                peer_mac: req.mac,
                peer_mtu: None,
                peer_up: false,
            },
        );
        link.master = Some(bridge.index);
        link.up = true;
        host.create_link(&link).await.map_err(sb_err)?;
        let mut info = JoinInfo::new(JoinedInterface::InSandbox { index: None });
        info.gateway_v4 = Some(net.gateway);
        Ok(info)
    }

    async fn leave(&self, req: &LeaveRequest) -> Result<(), DriverError> {
        self.ctx
            .host_netlink
            .delete_link_named(Self::veth(&req.endpoint_id).as_str())
            .await
            .map_err(sb_err)?;
        Ok(())
    }

    async fn program_external_connectivity(
        &self,
        &PublishRequest {
            network_id,
            endpoint_id,
            bindings,
            ..
        }: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        self.revoke_external_connectivity(network_id, endpoint_id)
            .await?;
        let mut ep = self
            .eps
            .lock()
            .unwrap()
            .get(endpoint_id)
            .cloned()
            .ok_or_else(|| invalid(format!("no endpoint {endpoint_id}")))?;
        let mut change = ElementChange::new();
        for b in bindings {
            let (Protocol::Tcp, Some(IpAddr::V4(host)), Some(port)) =
                (b.proto, b.host_ip, b.host_port)
            else {
                return Err(invalid(format!(
                    "tdrv publishes tcp HOSTIP:PORT only, not {b}"
                )));
            };
            let p = (host, port.start, b.container_port.start);
            change = change.add("forwards", forward(&ep, p));
            ep.published.push(p);
        }
        self.fragment()
            .await?
            .apply(&change)
            .await
            .map_err(fw_err)?;
        self.eps.lock().unwrap().insert(endpoint_id.to_owned(), ep);
        Ok(bindings.to_vec())
    }

    async fn revoke_external_connectivity(
        &self,
        _network_id: &str,
        endpoint_id: &str,
    ) -> Result<(), DriverError> {
        let Some(ep) = self.eps.lock().unwrap().get(endpoint_id).cloned() else {
            return Ok(());
        };
        if ep.published.is_empty() {
            return Ok(());
        }
        let mut change = ElementChange::new();
        for p in &ep.published {
            change = change.delete("forwards", forward(&ep, *p));
        }
        self.fragment()
            .await?
            .apply(&change)
            .await
            .map_err(fw_err)?;
        if let Some(e) = self.eps.lock().unwrap().get_mut(endpoint_id) {
            e.published.clear();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The world: a host with an outside (198.51.100.1 host, .2 and .3 outside), both drivers.

const ANY4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const OUT_OK: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const OUT_BLOCKED: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3));
const HOST_OUT: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));

async fn controller(host: &TestHost) -> Result<Controller, CoreError> {
    Controller::builder()
        .host_netns(host.netns().clone())
        .run_dir(host.run_dir())
        .state_dir(host.state_dir())
        .build()
        .await
}

async fn sh(ns: &cnm::cnm_sandbox::NetNs, script: &str) -> Result<String> {
    let script = script.to_string();
    let (script, out) = ns
        .run(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .map(|o| (script, o))
        })
        .await??;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// cnm's tables in the host namespace (`nft list tables`), sorted.
async fn cnm_tables(host: &TestHost) -> Result<Vec<String>> {
    let mut v: Vec<String> = sh(host.netns(), "nft list tables")
        .await?
        .lines()
        .filter(|l| l.contains(" cnm"))
        .map(str::to_owned)
        .collect();
    v.sort();
    Ok(v)
}

fn blocked() -> probe::Probe {
    probe::Probe::new().timeout(Duration::from_millis(400))
}

/// A container on network `net` publishing `publish`, serving TCP on port `serve`.
struct Ctr {
    ns: cnm::cnm_sandbox::NetNs,
    _server: TcpEchoServer,
}

async fn run(ctl: &Controller, net: &str, name: &str, publish: &str, serve: u16) -> Result<Ctr> {
    let net = ctl.network(net)?;
    let mut opts = EndpointOptions::default();
    opts.port_bindings.push(publish.parse()?);
    let ep = net.create_endpoint(name, opts).await?;
    ep.join(name, []).await?;
    let sb = ctl.sandbox_by_container_id(name)?;
    let server = TcpEchoServer::start(sb.netns(), ANY4, serve).await?;
    Ok(Ctr {
        ns: sb.netns().clone(),
        _server: server,
    })
}

/// A container's namespace, found again by container id (after a restart).
fn find(ctl: &Controller, name: &str) -> Result<cnm::cnm_sandbox::NetNs> {
    Ok(ctl.sandbox_by_container_id(name)?.netns().clone())
}

/// Removes a container made by [`run`]: its sandbox, then its endpoint.
async fn remove(ctl: &Controller, net: &str, name: &str) -> Result<()> {
    ctl.sandbox_by_container_id(name)?.delete().await?;
    ctl.network(net)?.endpoint(name)?.delete().await?;
    Ok(())
}

/// The controller's shared firewall (through the bridge driver instance it made).
async fn firewall(host: &TestHost) -> Result<cnm::cnm_firewall::Firewall> {
    Ok(cnm_driver_bridge::BridgeDriver::instance_for(host.netns())
        .context("the controller made a bridge driver")?
        .firewall_for_tests()
        .await?)
}

/// Every promise of both drivers, with packets.
async fn both_drivers_work(
    host: &TestHost,
    b1: &cnm::cnm_sandbox::NetNs,
    t1: &cnm::cnm_sandbox::NetNs,
    when: &str,
) -> Result<()> {
    let out = host.outside().await?;
    // the bridge: its published port from outside, its containers reach out (masqueraded)
    probe::tcp(out.netns(), HOST_OUT, 18_100)
        .await
        .with_context(|| format!("{when}: the bridge's published port"))?;
    probe::tcp(b1, OUT_BLOCKED, 7000)
        .await
        .with_context(|| format!("{when}: tdrv's blocklist must not touch the bridge's traffic"))?;
    // tdrv: its DNAT map from outside, its containers reach out but not what it blocks
    probe::tcp(out.netns(), HOST_OUT, 9090)
        .await
        .with_context(|| format!("{when}: tdrv's published port (its own DNAT map)"))?;
    probe::tcp(t1, OUT_OK, 7000)
        .await
        .with_context(|| format!("{when}: a tdrv container reaches the outside"))?;
    if blocked().tcp(t1, OUT_BLOCKED, 7000).await.is_ok() {
        bail!("{when}: tdrv's blocklist let {OUT_BLOCKED} through");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn two_drivers_keep_their_own_rules_across_churn_restart_and_flush() -> Result<()> {
    let host = TestHost::new().await?;
    let out = host.outside().await?;
    out.netlink()
        .add_address(
            out.netlink().link("eth0").await?.context("eth0")?.index,
            "198.51.100.3/24".parse()?,
        )
        .await?;
    let _outside = TcpEchoServer::start(out.netns(), ANY4, 7000).await?;
    // Docker's FORWARD policy: each driver's `allow` mark must carry its traffic through it
    sh(host.netns(), "iptables -P FORWARD DROP").await?;

    let ctl = controller(&host).await?;
    ensure!(
        cnm_tables(&host).await?.is_empty(),
        "nothing installed before a network"
    );
    ctl.new_network(
        "bridge",
        "nb",
        NetworkOptions::default().subnet("10.91.0.0/24".parse()?),
    )
    .await?;
    let mut topts = DriverOptions::new();
    topts.insert(BLOCK.into(), OUT_BLOCKED.to_string());
    let mut t = NetworkOptions::default().subnet("10.92.0.0/24".parse()?);
    t.driver_options = topts;
    ctl.new_network(NAME, "nt", t).await?;
    let b1 = run(&ctl, "nb", "b1", "18100:80", 80).await?;
    let t1 = run(&ctl, "nt", "t1", &format!("{HOST_OUT}:9090:90"), 90).await?;
    ensure!(
        cnm_tables(&host).await?
            == [
                "table bridge cnm-bridge",
                "table inet cnm",
                "table inet cnm-bridge",
                "table inet cnm-tdrv",
            ],
        "{:?}",
        cnm_tables(&host).await?
    );
    both_drivers_work(&host, &b1.ns, &t1.ns, "side by side").await?;

    // one driver's networks come and go: the other's rules do not move, its packets still flow
    let bridge_tables = || {
        sh(
            host.netns(),
            "nft list table inet cnm-bridge; nft list table bridge cnm-bridge",
        )
    };
    let tdrv_table = || sh(host.netns(), "nft list table inet cnm-tdrv");
    let (bridge_before, tdrv_before) = (bridge_tables().await?, tdrv_table().await?);
    ctl.new_network(
        NAME,
        "nt2",
        NetworkOptions::default().subnet("10.93.0.0/24".parse()?),
    )
    .await?;
    let t2 = run(&ctl, "nt2", "t2", &format!("{HOST_OUT}:9091:91"), 91).await?;
    probe::tcp(&t2.ns, OUT_BLOCKED, 7000)
        .await
        .context("a tdrv network without that block reaches it: blocks are per network")?;
    probe::tcp(out.netns(), HOST_OUT, 9091).await?;
    ensure!(
        bridge_tables().await? == bridge_before,
        "tdrv's churn moved the bridge's rules"
    );
    both_drivers_work(&host, &b1.ns, &t1.ns, "with a second tdrv network").await?;
    drop(t2);
    remove(&ctl, "nt2", "t2").await?;
    ctl.network("nt2")?.delete().await?;
    ensure!(
        bridge_tables().await? == bridge_before,
        "tdrv's churn moved the bridge's rules"
    );
    ctl.new_network(
        "bridge",
        "nb2",
        NetworkOptions::default().subnet("10.94.0.0/24".parse()?),
    )
    .await?;
    let b2 = run(&ctl, "nb2", "b2", "18101:80", 80).await?;
    probe::tcp(out.netns(), HOST_OUT, 18_101).await?;
    ensure!(
        tdrv_table().await? == tdrv_before,
        "the bridge's churn moved tdrv's rules"
    );
    both_drivers_work(&host, &b1.ns, &t1.ns, "with a second bridge network").await?;
    drop(b2);
    remove(&ctl, "nb2", "b2").await?;
    ctl.network("nb2")?.delete().await?;
    ensure!(
        tdrv_table().await? == tdrv_before,
        "the bridge's churn moved tdrv's rules"
    );
    both_drivers_work(&host, &b1.ns, &t1.ns, "after the churn").await?;

    // a restart on the durable store: every driver's rules back in one transaction
    drop(ctl);
    let ctl = controller(&host).await?;
    let fw = firewall(&host).await?;
    ensure!(
        fw.transactions() == 1,
        "the restart committed {} transactions, not one",
        fw.transactions()
    );
    let (b1ns, t1ns) = (find(&ctl, "b1")?, find(&ctl, "t1")?);
    both_drivers_work(&host, &b1ns, &t1ns, "after a restart").await?;

    // someone flushes the whole ruleset: both drivers' rules are back, in one transaction
    let mut healing = fw.healing();
    let before = healing.borrow_and_update().restores;
    let count = fw.transactions();
    sh(host.netns(), "nft flush ruleset").await?;
    tokio::time::timeout(
        Duration::from_secs(2),
        healing.wait_for(|h| h.restores > before),
    )
    .await
    .context("no restore within 2 s of `nft flush ruleset`")??;
    ensure!(
        fw.transactions() == count + 1,
        "one transaction for both drivers"
    );
    both_drivers_work(&host, &b1ns, &t1ns, "after `nft flush ruleset`").await?;

    // Docker's FORWARD chain again (the flush took it): the compatibility rule comes back
    sh(host.netns(), "iptables -P FORWARD DROP").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut healing = fw.healing();
    tokio::time::timeout_at(deadline, healing.wait_for(|h| h.compat_repairs > 0))
        .await
        .context("the compatibility rule did not come back")??;
    both_drivers_work(&host, &b1ns, &t1ns, "behind Docker's DROP policy again").await?;

    // the last network of all gone: no cnm table, no compatibility rule
    drop((b1, t1, b1ns, t1ns));
    remove(&ctl, "nb", "b1").await?;
    remove(&ctl, "nt", "t1").await?;
    ctl.network("nt")?.delete().await?;
    ensure!(
        cnm_tables(&host).await?.len() == 3,
        "the bridge's tables stay while it has a network: {:?}",
        cnm_tables(&host).await?
    );
    ctl.network("nb")?.delete().await?;
    ensure!(
        cnm_tables(&host).await?.is_empty(),
        "cnm tables left after the last network: {:?}",
        cnm_tables(&host).await?
    );
    let fwd = sh(host.netns(), "iptables -S FORWARD").await?;
    ensure!(!fwd.contains("cnm"), "the compatibility rule stayed: {fwd}");
    eprintln!(
        "after the last network: {:?}",
        sh(host.netns(), "nft list tables").await?
    );

    // and a network brings them back
    ctl.new_network(
        "bridge",
        "again",
        NetworkOptions::default().subnet("10.95.0.0/24".parse()?),
    )
    .await?;
    ensure!(
        cnm_tables(&host).await?
            == [
                "table bridge cnm-bridge",
                "table inet cnm",
                "table inet cnm-bridge"
            ],
        "{:?}",
        cnm_tables(&host).await?
    );
    ensure!(
        sh(host.netns(), "iptables -S FORWARD")
            .await?
            .contains("cnm")
    );
    Ok(())
}
