//! A controller built again on the same store and kernel finds everything: objects, addresses,
//! joins, the options as the user gave them (static addresses included), the driver's options
//! parsed once more (once per object), published ports.

use std::net::Ipv4Addr;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cnm_types::ErrorKind;

use super::{World, builder, ep_opts};
use crate::testing::{DriverStep, FakeDriver};
use crate::{CoreError, EndpointOptions, JoinOption, NetworkOptions};

#[tokio::test]
async fn objects_options_and_joins_survive_a_restart() {
    let mut w = World::new().await;
    let net = w
        .ctl
        .new_network(
            "fake",
            "n",
            NetworkOptions::default()
                .subnet("10.90.0.0/24".parse().unwrap())
                .driver_option("fake.color", "green"),
        )
        .await
        .unwrap();
    let asked = EndpointOptions::default()
        .ipv4(Ipv4Addr::new(10, 90, 0, 77))
        .alias("db")
        .publish("5432:5432/tcp".parse().unwrap());
    let mut asked = asked;
    asked.driver_options.insert("fake.size".into(), "xl".into());
    let ep = net.create_endpoint("e", asked.clone()).await.unwrap();
    let sb = ep.join("c", [JoinOption::hostname("db")]).await.unwrap();
    let parses_before = w.driver.faults().calls();
    let before = w.snapshot().await;

    w.restart().await.unwrap();
    // The old handles belong to the controller that was shut down.
    assert!(matches!(
        ep.delete().await.unwrap_err(),
        crate::CoreError::Shutdown
    ));
    let after = w.snapshot().await;
    assert_eq!(after.records, before.records, "a restart writes nothing");
    assert_eq!(after.objects, before.objects);
    assert_eq!(after.ipam, before.ipam, "IPAM rebuilt from the records");
    assert_eq!(
        after.kernel, before.kernel,
        "the kernel state adopted as it was"
    );

    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    assert_eq!(
        ep.options(),
        &asked,
        "the options as given, static address included"
    );
    assert_eq!(ep.ipv4().unwrap().to_string(), "10.90.0.77/24");
    let sb2 = w.ctl.sandbox_by_container_id("c").unwrap();
    assert_eq!(sb2.id(), sb.id());
    assert_eq!(sb2.published_ports()[0].to_string(), "5432:5432/tcp");
    assert_eq!(sb2.gateway_endpoint().unwrap().id(), ep.id());
    // One parse per object at reload: the network's and the endpoint's.
    let calls = w.driver.faults().calls();
    for step in [
        DriverStep::ParseNetworkOptions,
        DriverStep::ParseEndpointOptions,
    ] {
        assert_eq!(calls[&step], parses_before[&step] + 1, "{step:?}");
    }
    assert!(
        w.driver.always_got_parsed_options(),
        "every create, restore and join got the options parsed"
    );
    // And it all works on.
    ep.leave("c").await.unwrap();
    sb2.delete().await.unwrap();
    ep.delete().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_whose_namespace_is_gone_is_dropped_and_its_endpoint_freed() {
    let mut w = World::new().await;
    let net = w.net("n", "10.91.0.0/24").await;
    let ep = net
        .create_endpoint("e", EndpointOptions::default())
        .await
        .unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let key = sb.key().to_owned();
    w.ctl.shutdown().await.unwrap();
    // A reboot: namespaces do not survive it.
    crate::kernel::Kernel::delete_netns(w.kernel.as_ref(), &key)
        .await
        .unwrap();
    w.restart().await.unwrap();
    assert!(w.ctl.sandboxes().is_empty());
    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    assert_eq!(ep.sandbox_id(), None);
    ep.join("c", []).await.unwrap();
}

#[tokio::test]
async fn a_network_whose_driver_registers_late_waits_for_it_across_a_restart() {
    let mut w = World::new().await;
    let late = Arc::new(FakeDriver::new("late", Some(w.kernel.clone())));
    let d = late.clone();
    w.ctl.register_driver("late", move |_| Ok(d)).await.unwrap();
    let net = w
        .ctl
        .new_network(
            "late",
            "n",
            NetworkOptions::default().subnet("10.93.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    ep.join("c", []).await.unwrap();
    // The same container on a network of a driver that is always there.
    let other = w.net("other", "10.94.0.0/24").await;
    other
        .create_endpoint("e2", ep_opts())
        .await
        .unwrap()
        .join("c", [])
        .await
        .unwrap();
    let before = w.snapshot().await;

    // Rebuilt without "late": its network is not there, but nothing of it is lost or taken.
    w.restart().await.unwrap();
    assert!(w.ctl.network("n").is_err());
    let e = w
        .ctl
        .new_network(
            "fake",
            "n",
            NetworkOptions::default().subnet("10.95.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CoreError::NetworkExists(_)), "{e}");
    let e = w
        .ctl
        .new_network(
            "fake",
            "m",
            NetworkOptions::default().subnet("10.93.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Conflict,
        "its subnet stays reserved: {e}"
    );
    assert_eq!(w.snapshot().await.ipam, before.ipam);
    // A change to the container's sandbox keeps the waiting join in its record.
    let other = w.ctl.network("other").unwrap();
    let e3 = other.create_endpoint("e3", ep_opts()).await.unwrap();
    e3.join("c", []).await.unwrap();
    e3.leave("c").await.unwrap();
    e3.delete().await.unwrap();
    let rec: crate::record::SandboxRecord = crate::store::list_json(w.store.as_ref(), "sandbox/")
        .await
        .unwrap()
        .remove(0)
        .1
        .value;
    assert!(rec.endpoints.iter().any(|j| j.endpoint_id == ep.id()));

    // Registered while running: the network comes back, joined as it was.
    let d = late.clone();
    w.ctl.register_driver("late", move |_| Ok(d)).await.unwrap();
    let after = w.snapshot().await;
    let sorted = |s: &super::Snapshot| {
        let mut o = s.objects.clone();
        o.sort();
        o
    };
    assert_eq!(after.ipam, before.ipam);
    assert_eq!(after.kernel, before.kernel);
    assert_eq!(after.driver, before.driver);
    assert_eq!(
        sorted(&after).len(),
        sorted(&before).len(),
        "{:?}",
        after.objects
    );
    let sb = w.ctl.sandbox_by_container_id("c").unwrap();
    let mut names: Vec<String> = sb
        .endpoints()
        .iter()
        .map(|(e, _)| e.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["e", "e2"]);
    assert_eq!(sb.gateway_endpoint().unwrap().id(), ep.id());
    // And it works on.
    let ep = w.ctl.network("n").unwrap().endpoint("e").unwrap();
    ep.leave("c").await.unwrap();
    ep.delete().await.unwrap();
    w.ctl.network("n").unwrap().delete().await.unwrap();
    assert!(late.state().networks.is_empty());
}

/// An IPAM driver found by name ("plug"): the default IPAM's logic under another name, a fresh
/// one each time it is found (its state lives in memory, so a reload replays its requests).
#[derive(Debug)]
struct PlugIpam(cnm_ipam::Ipam);

#[async_trait::async_trait]
impl crate::Ipam for PlugIpam {
    fn name(&self) -> &str {
        "plug"
    }

    async fn request_pool(
        &self,
        req: &cnm_ipam::PoolRequest,
    ) -> Result<cnm_ipam::Pool, cnm_ipam::IpamError> {
        self.0.request_pool(req)
    }

    async fn release_pool(&self, pool: &cnm_ipam::PoolId) -> Result<(), cnm_ipam::IpamError> {
        self.0.release_pool(pool)
    }

    async fn request_address(
        &self,
        pool: &cnm_ipam::PoolId,
        req: cnm_ipam::AddressRequest,
    ) -> Result<ipnet::IpNet, cnm_ipam::IpamError> {
        self.0.request_address(pool, req)
    }

    async fn release_address(
        &self,
        pool: &cnm_ipam::PoolId,
        addr: std::net::IpAddr,
    ) -> Result<(), cnm_ipam::IpamError> {
        self.0.release_address(pool, addr)
    }
}

/// Finds "plug" while `present`, as a plugin directory holding its socket or not.
#[derive(Debug, Default)]
struct PlugResolver {
    present: AtomicBool,
}

#[async_trait::async_trait]
impl crate::IpamResolver for PlugResolver {
    async fn resolve(&self, name: &str) -> Result<Arc<dyn crate::Ipam>, cnm_ipam::IpamError> {
        if name == "plug" && self.present.load(Ordering::SeqCst) {
            return Ok(Arc::new(PlugIpam(cnm_ipam::Ipam::new(
                cnm_ipam::IpamConfig::default(),
            ))));
        }
        Err(cnm_ipam::IpamError::Driver {
            driver: name.to_owned(),
            kind: ErrorKind::NotFound,
            source: "no plugin of that name".into(),
        })
    }
}

#[tokio::test]
async fn a_network_whose_ipam_plugin_is_missing_at_reload_waits_for_it() {
    let mut w = World::new().await;
    let resolver = Arc::new(PlugResolver::default());
    resolver.present.store(true, Ordering::SeqCst);
    let rebuild = async |w: &mut World| {
        w.ctl.shutdown().await.unwrap();
        w.ctl = builder(&w.kernel, &w.driver, &w.store, w.run.path())
            .ipam_resolver(resolver.clone())
            .build()
            .await
            .expect("a controller, the IPAM plugin there or not");
    };
    rebuild(&mut w).await;
    let mut opts = NetworkOptions::default().subnet("10.96.0.0/24".parse().unwrap());
    opts.ipam_driver = Some("plug".to_owned());
    let net = w.ctl.new_network("fake", "p", opts).await.unwrap();
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let addr = ep.ipv4();
    assert_eq!(addr.map(|a| a.to_string()).as_deref(), Some("10.96.0.2/24"));
    let other = w.net("other", "10.97.0.0/24").await;
    other
        .create_endpoint("e2", ep_opts())
        .await
        .unwrap()
        .join("c", [])
        .await
        .unwrap();
    let before = w.snapshot().await;

    // Rebuilt while the plugin is missing: the controller starts, the network waits, its name
    // stays taken and its driver keeps its links.
    resolver.present.store(false, Ordering::SeqCst);
    rebuild(&mut w).await;
    assert!(w.ctl.network("p").is_err());
    assert_eq!(w.ctl.waiting_ipams(), ["plug"]);
    let e = w
        .ctl
        .new_network(
            "fake",
            "p",
            NetworkOptions::default().subnet("10.98.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CoreError::NetworkExists(_)), "{e}");
    assert_eq!(
        w.kernel.state().namespaces,
        before.kernel.namespaces,
        "its interfaces kept while it waits"
    );
    // The other networks work.
    let other = w.ctl.network("other").unwrap();
    let e3 = other.create_endpoint("e3", ep_opts()).await.unwrap();
    e3.join("c", []).await.unwrap();
    e3.leave("c").await.unwrap();
    e3.delete().await.unwrap();
    // Still missing: it keeps waiting.
    w.ctl.restore_waiting().await.unwrap();
    assert!(w.ctl.network("p").is_err());
    assert_eq!(w.ctl.waiting_ipams(), ["plug"]);

    // The plugin appears: the network comes back, with its address, joined as it was.
    resolver.present.store(true, Ordering::SeqCst);
    w.ctl.restore_waiting().await.unwrap();
    assert!(w.ctl.waiting_ipams().is_empty());
    let net = w.ctl.network("p").unwrap();
    let ep = net.endpoint("e").unwrap();
    assert_eq!(ep.ipv4(), addr);
    assert_eq!(ep.sandbox_id(), Some(sb.id().to_owned()));
    let after = w.snapshot().await;
    assert_eq!(after.kernel, before.kernel);
    assert_eq!(after.driver, before.driver);
    let sb = w.ctl.sandbox_by_container_id("c").unwrap();
    let mut names: Vec<String> = sb
        .endpoints()
        .iter()
        .map(|(e, _)| e.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["e", "e2"]);
    // And it works on: its address space is the plugin's.
    let e4 = net.create_endpoint("e4", ep_opts()).await.unwrap();
    assert_eq!(
        e4.ipv4().map(|a| a.to_string()).as_deref(),
        Some("10.96.0.3/24")
    );
    e4.delete().await.unwrap();
    ep.leave("c").await.unwrap();
    ep.delete().await.unwrap();
    net.delete().await.unwrap();
}
