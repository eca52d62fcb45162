//! The controller's life cycle against the real kernel, in throwaway namespaces, with the
//! built-in drivers (bridge, null).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use cnm::cnm_sandbox::{IpFamily, NetNs, Netlink};
use cnm::cnm_types::ErrorKind;
use cnm::store::{MemoryStore, Store, StoreError, Txn, Versioned, Watch};
use cnm::{
    Controller, EndpointOptions, JoinOption, NetworkOptions, RawIpamConfig, RawNetworkOptions,
};
use cnm_testkit::TestHost;

async fn controller(host: &TestHost) -> Result<Controller> {
    controller_with_store(host, Arc::new(MemoryStore::new())).await
}

async fn controller_with_store(host: &TestHost, store: Arc<dyn Store>) -> Result<Controller> {
    Ok(host.controller_builder()?.store(store).build().await?)
}

async fn link_names(netlink: &Netlink) -> Result<BTreeSet<String>> {
    Ok(netlink.links().await?.into_iter().map(|l| l.name).collect())
}

async fn store_listing(ctl: &Controller) -> Result<Vec<(String, Vec<u8>)>> {
    Ok(ctl
        .store()?
        .list("")
        .await?
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect())
}

fn subnet_opts(subnet: &str) -> Result<NetworkOptions> {
    Ok(NetworkOptions::default().subnet(subnet.parse()?))
}

#[test]
fn builtin_drivers_are_listed() {
    assert_eq!(
        cnm::builtin_drivers(),
        ["bridge", "host", "ipvlan", "macvlan", "null", "overlay"]
    );
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn seed_life_cycle_with_bridge() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    assert_eq!(
        ctl.drivers(),
        ["bridge", "host", "ipvlan", "macvlan", "null", "overlay"]
    );
    let host_links_before = link_names(host.netlink()).await?;

    let network = ctl
        .new_network("bridge", "network1", NetworkOptions::default())
        .await?;
    let ep = network
        .create_endpoint("Endpoint1", EndpointOptions::default())
        .await?;
    let key = ep
        .join(
            "container1",
            [
                JoinOption::hostname("test"),
                JoinOption::domainname("docker.io"),
            ],
        )
        .await?
        .key()
        .to_owned();
    assert!(
        key.starts_with(host.run_dir().join("netns")),
        "{}",
        key.display()
    );

    // The key is a real namespace: enter it and look.
    let ns = NetNs::open(&key)?;
    let nl = Netlink::connect(&ns).await?;
    let lo = nl.link("lo").await?.context("no lo")?;
    assert!(lo.up, "lo must be up");
    let eth0 = nl.link("eth0").await?.context("no eth0 in the sandbox")?;
    assert!(eth0.up);
    let addrs: Vec<IpAddr> = nl
        .addresses(Some(eth0.index))
        .await?
        .into_iter()
        .map(|a| a.addr.addr())
        .collect();
    let ip = IpAddr::V4(ep.ipv4().context("no IPv4")?.addr());
    assert!(addrs.contains(&ip), "{addrs:?} lacks {ip}");
    let routes = nl.routes(IpFamily::V4).await?;
    assert!(
        routes
            .iter()
            .any(|r| r.destination.prefix_len() == 0 && r.gateway.is_some()),
        "{routes:?}"
    );

    let sandbox = ctl.sandbox_by_container_id("container1")?;
    assert_eq!(sandbox.key(), key);
    let hosts = std::fs::read_to_string(sandbox.hosts_path())?;
    assert!(
        hosts.contains(&format!("{ip}\ttest.docker.io test")),
        "{hosts}"
    );
    assert!(std::fs::read_to_string(sandbox.resolv_conf_path())?.contains("nameserver"));

    // Records: network, endpoint (joined), sandbox; no IPAM snapshot (rebuilt from these).
    let keys: Vec<String> = store_listing(&ctl)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&format!("network/{}", network.id())),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("endpoint/{}/{}", network.id(), ep.id())),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("sandbox/{}", sandbox.id())),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.starts_with("ipam/")), "{keys:?}");
    let rec: serde_json::Value = serde_json::from_slice(
        &ctl.store()?
            .get(&format!("endpoint/{}/{}", network.id(), ep.id()))
            .await?
            .context("no record")?
            .value,
    )?;
    assert_eq!(rec["sandbox_id"], sandbox.id());
    assert_eq!(rec["schema"], 1);

    ep.leave("container1").await?;
    assert!(nl.link("eth0").await?.is_none(), "eth0 must go on leave");
    sandbox.delete().await?;
    assert!(NetNs::open(&key).is_err(), "the netns mount must be gone");
    assert!(!sandbox.hosts_path().exists());
    ep.delete().await?;
    network.delete().await?;
    assert!(ctl.networks().is_empty());
    let left: Vec<String> = store_listing(&ctl)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(link_names(host.netlink()).await?, host_links_before);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn two_networks_give_eth0_and_eth1_and_the_gateway_moves() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let a = ctl
        .new_network("bridge", "net-a", subnet_opts("10.51.0.0/24")?)
        .await?;
    let b = ctl
        .new_network("bridge", "net-b", subnet_opts("10.52.0.0/24")?)
        .await?;
    let ea = a.create_endpoint("ea", EndpointOptions::default()).await?;
    let eb = b.create_endpoint("eb", EndpointOptions::default()).await?;
    let key = ea.join("c1", []).await?.key().to_owned();
    eb.join("c1", [JoinOption::gateway_priority(10)]).await?;
    let sb = ctl.sandbox_by_container_id("c1")?;
    let names: Vec<String> = sb
        .endpoints()
        .into_iter()
        .map(|(_, n)| n.map(|n| n.to_string()).unwrap_or_default())
        .collect();
    assert_eq!(names, ["eth0", "eth1"]);
    let nl = Netlink::connect(&NetNs::open(&key)?).await?;
    let eth1 = nl.link("eth1").await?.context("no eth1")?;
    assert!(nl.link("eth0").await?.is_some());
    // The higher priority takes the default route.
    assert_eq!(sb.gateway_endpoint().context("no gateway")?.name(), "eb");
    let default_oif = |routes: Vec<cnm::cnm_sandbox::Route>| {
        routes
            .into_iter()
            .find(|r| r.destination.prefix_len() == 0)
            .and_then(|r| r.oif)
    };
    assert_eq!(
        default_oif(nl.routes(IpFamily::V4).await?),
        Some(eth1.index)
    );
    // Leaving the gateway endpoint moves the default route to the other.
    eb.leave("c1").await?;
    assert_eq!(sb.gateway_endpoint().context("no gateway")?.name(), "ea");
    let eth0 = nl.link("eth0").await?.context("no eth0")?;
    assert_eq!(
        default_oif(nl.routes(IpFamily::V4).await?),
        Some(eth0.index)
    );
    // The freed index is reused.
    eb.join("c1", []).await?;
    assert!(nl.link("eth1").await?.is_some());
    sb.delete().await?;
    ensure!(
        ea.sandbox_id().is_none() && eb.sandbox_id().is_none(),
        "delete must leave all"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn conflicts_are_refused_and_named() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "busy", subnet_opts("10.53.0.0/24")?)
        .await?;
    let e1 = net
        .create_endpoint("one", EndpointOptions::default())
        .await?;
    let _e2 = net
        .create_endpoint("two", EndpointOptions::default())
        .await?;
    e1.join("c1", []).await?;

    let err = e1.join("c2", []).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains("one") && err.to_string().contains("c1"),
        "{err}"
    );
    ensure!(
        ctl.sandbox_by_container_id("c2").is_err(),
        "a failed join must not leave the sandbox it created"
    );

    let err = net.delete().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("one, two"), "{err}");

    let err = e1.delete().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    let err = ctl
        .new_network("bridge", "busy", NetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(err.to_string(), "network with name busy already exists");

    let err = net
        .create_endpoint("one", EndpointOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    // Lookup by id prefix.
    assert_eq!(ctl.network(&net.id()[..8])?.name(), "busy");
    ctl.sandbox_by_container_id("c1")?.delete().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn concurrent_creation_of_one_name_has_one_winner() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let ctl = ctl.clone();
        tasks.push(tokio::spawn(async move {
            ctl.new_network("bridge", "race", NetworkOptions::default())
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(ctl.networks().len(), 1);
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn bad_inputs_change_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("bridge", "good", subnet_opts("10.54.0.0/24")?)
        .await?;
    let snapshot = || async {
        Ok::<_, anyhow::Error>((
            store_listing(&ctl).await?,
            ctl.ipam()?.snapshot().await,
            link_names(host.netlink()).await?,
        ))
    };
    let before = snapshot().await?;

    let raw = |subnet: &str, range: &str, gateway: &str| RawNetworkOptions {
        ipam: cnm::RawIpam {
            config: vec![RawIpamConfig {
                subnet: subnet.into(),
                ip_range: range.into(),
                gateway: gateway.into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    for (raw, needle) in [
        (raw("10.60.0.0/33", "", ""), "10.60.0.0/33"),
        (raw("10.60.0.0/24", "", "10.61.0.1"), "10.61.0.1"),
        (raw("10.60.0.0/24", "10.61.0.0/25", ""), "10.61.0.0/25"),
    ] {
        let e = NetworkOptions::try_from(raw).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    let e = ctl
        .new_network("foo", "n", NetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "driver \"foo\" not found");
    // A known key's bad value is refused; an unknown key would be kept (with a warning).
    let e = ctl
        .new_network(
            "bridge",
            "n",
            NetworkOptions::default().driver_option("com.docker.network.bridge.enable_icc", "2"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(
        e.to_string()
            .contains("com.docker.network.bridge.enable_icc"),
        "{e}"
    );
    let unknown = NetworkOptions::default().driver_option("com.docker.network.bridge.bogus", "1");
    assert_eq!(
        ctl.option_warnings("bridge", &unknown)?,
        [
            "option \"com.docker.network.bridge.bogus\" is not known to the bridge driver: \
          kept on the network, without effect"
        ]
    );
    // Overlap with an existing network's pool: refused by IPAM, after nothing else was done.
    let e = ctl
        .new_network("bridge", "n", subnet_opts("10.54.0.0/16")?)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("10.54.0.0/16") && e.to_string().contains("10.54.0.0/24"),
        "{e}"
    );
    // A second pool of the same request overlapping: the first pool must be released again.
    let e = ctl
        .new_network(
            "bridge",
            "n",
            subnet_opts("10.70.0.0/24")?.subnet("10.54.0.128/25".parse()?),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("10.54.0.128/25"), "{e}");
    let e = net
        .create_endpoint("e", EndpointOptions::default().ipv4("10.99.0.5".parse()?))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        e.to_string().contains("10.99.0.5") && e.to_string().contains("10.54.0.0/24"),
        "{e}"
    );
    let e = net
        .create_endpoint("bad name", EndpointOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"bad name\""), "{e}");
    let e = ctl
        .new_network(
            "bridge",
            "n",
            NetworkOptions::default()
                .enable_ipv6(false)
                .subnet("fd00:1::/64".parse()?),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fd00:1::/64"), "{e}");

    assert!(
        before == snapshot().await?,
        "a refused request changed state"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn null_network_sandbox_has_loopback_only() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = controller(&host).await?;
    let net = ctl
        .new_network("null", "none", NetworkOptions::default())
        .await?;
    let e = ctl
        .new_network("null", "none2", NetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let ep = net
        .create_endpoint("ep", EndpointOptions::default())
        .await?;
    assert!(ep.ipv4().is_none());
    let key = ep
        .join("c", [JoinOption::hostname("quiet")])
        .await?
        .key()
        .to_owned();
    let nl = Netlink::connect(&NetNs::open(&key)?).await?;
    assert_eq!(
        link_names(&nl).await?.into_iter().collect::<Vec<_>>(),
        ["lo"]
    );
    ctl.sandbox_by_container_id("c")?.delete().await?;
    ep.delete().await?;
    net.delete().await?;
    Ok(())
}

/// A store that refuses multi-key transactions (a join's records) once armed.
#[derive(Debug, Default)]
struct FailingStore {
    inner: MemoryStore,
    armed: AtomicBool,
}

#[async_trait]
impl Store for FailingStore {
    fn backend(&self) -> &'static str {
        "failing"
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        if self.armed.load(Ordering::SeqCst) && txn.ops.len() > 1 {
            return Err(StoreError::Backend {
                backend: "failing",
                op: "commit".into(),
                source: "injected failure".into(),
            });
        }
        self.inner.commit(txn).await
    }
    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix)
    }
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_failure_late_in_join_leaves_nothing() -> Result<()> {
    let host = TestHost::new().await?;
    let store = Arc::new(FailingStore::default());
    let ctl = controller_with_store(&host, store.clone()).await?;
    let net = ctl
        .new_network("bridge", "n", subnet_opts("10.55.0.0/24")?)
        .await?;
    let ep = net
        .create_endpoint("ep", EndpointOptions::default())
        .await?;
    let sb = ctl.new_sandbox("c", [JoinOption::hostname("h")]).await?;
    let nl = Netlink::connect(sb.netns()).await?;
    let before = (
        store_listing(&ctl).await?,
        ctl.ipam()?.snapshot().await,
        link_names(host.netlink()).await?,
        link_names(&nl).await?,
        std::fs::read_to_string(sb.hosts_path())?,
    );
    store.armed.store(true, Ordering::SeqCst);
    let e = ep.join_sandbox(&sb, []).await.unwrap_err();
    assert!(
        e.to_string().contains("injected failure") || format!("{e:?}").contains("injected"),
        "{e}"
    );
    let after = (
        store_listing(&ctl).await?,
        ctl.ipam()?.snapshot().await,
        link_names(host.netlink()).await?,
        link_names(&nl).await?,
        std::fs::read_to_string(sb.hosts_path())?,
    );
    if before != after {
        bail!("a failed join left state behind:\nbefore {before:?}\nafter {after:?}");
    }
    assert!(ep.sandbox_id().is_none());
    store.armed.store(false, Ordering::SeqCst);
    ep.join_sandbox(&sb, []).await?;
    assert!(nl.link("eth0").await?.is_some());
    sb.delete().await?;
    Ok(())
}

#[test]
#[ignore = "privileged: run cargo xtask test"]
fn seed_example_runs() -> Result<()> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("no target dir")?;
    let example = profile_dir.join("examples").join("readme");
    ensure!(example.exists(), "{} not built", example.display());
    let script = format!(
        // tmpfs over /run and /var/lib (which exist everywhere) so the example's default
        // paths /run/cnm and /var/lib/cnm live only in this private mount namespace.
        "set -e; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /var/lib; \
         ip link set lo up; exec {}",
        example.display()
    );
    let out = std::process::Command::new("unshare")
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "example failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sandbox key: /run/cnm/netns/"), "{stdout}");
    assert!(stdout.contains("  address:   172."), "{stdout}");
    assert!(stdout.contains("interface: eth0 up"), "{stdout}");
    assert!(stdout.contains("test.docker.io test"), "{stdout}");
    assert!(
        stdout.contains("removed the sandbox, the endpoint and the network"),
        "{stdout}"
    );
    Ok(())
}
