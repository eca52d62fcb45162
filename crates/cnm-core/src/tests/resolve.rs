//! Drivers found by name while running: a network naming a driver the controller does not
//! have asks the resolver, which registers what it finds; an unknown name fails with the
//! resolver's error and changes nothing; a restart finds a recorded network's driver again
//! before restoring the network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cnm_types::ErrorKind;

use super::World;
use crate::testing::{FakeDriver, FakeKernel};
use crate::{
    Controller, CoreError, Driver, DriverContext, DriverError, DriverResolver, NetworkOptions,
};

/// Knows some drivers by name; counts what it was asked.
#[derive(Debug, Default)]
struct Resolver {
    known: BTreeMap<String, Arc<FakeDriver>>,
    asked: Mutex<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("no plugin {0:?}: looked in /fake/plugins")]
struct Unknown(String);

#[async_trait]
impl DriverResolver for Resolver {
    async fn resolve(
        &self,
        name: &str,
        _ctx: &DriverContext,
    ) -> Result<Arc<dyn Driver>, DriverError> {
        self.asked.lock().unwrap().push(name.to_owned());
        match self.known.get(name) {
            Some(d) => Ok(d.clone() as Arc<dyn Driver>),
            None => Err(DriverError::new(
                name,
                ErrorKind::NotFound,
                Unknown(name.to_owned()),
            )),
        }
    }
}

fn resolver(kernel: &Arc<FakeKernel>) -> (Arc<Resolver>, Arc<FakeDriver>) {
    let plug = Arc::new(FakeDriver::new("plug", Some(kernel.clone())));
    let mut known = BTreeMap::new();
    known.insert("plug".to_owned(), plug.clone());
    let r = Arc::new(Resolver {
        known,
        asked: Mutex::default(),
    });
    (r, plug)
}

async fn build(w: &World, r: &Arc<Resolver>) -> Result<Controller, CoreError> {
    super::builder(&w.kernel, &w.driver, &w.store, w.run.path())
        .driver_resolver(r.clone())
        .build()
        .await
}

#[tokio::test]
async fn an_unknown_driver_is_resolved_by_name_registered_and_used() {
    let mut w = World::new().await;
    let (r, plug) = resolver(&w.kernel);
    w.ctl.shutdown().await.unwrap();
    w.ctl = build(&w, &r).await.unwrap();
    assert_eq!(
        w.ctl.drivers(),
        ["fake"],
        "nothing resolved before it is asked for"
    );

    let before = w.snapshot().await;
    let e = w
        .ctl
        .new_network("nosuch", "n0", NetworkOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("find driver nosuch")
            && e.to_string().contains("looked in /fake/plugins"),
        "{e}"
    );
    assert_eq!(
        w.snapshot().await,
        before,
        "an unknown driver changes nothing"
    );

    let subnet = "10.120.0.0/24".parse().unwrap();
    let net = w
        .ctl
        .new_network("plug", "p", NetworkOptions::default().subnet(subnet))
        .await
        .unwrap();
    assert_eq!(w.ctl.drivers(), ["fake", "plug"]);
    assert!(plug.state().networks.contains_key(net.id()));
    // Registered for good: a second network does not ask again.
    w.ctl
        .new_network(
            "plug",
            "p2",
            NetworkOptions::default().subnet("10.121.0.0/24".parse().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(*r.asked.lock().unwrap(), ["nosuch", "plug"]);

    // A restart finds the recorded network's driver by name before restoring it.
    w.ctl.shutdown().await.unwrap();
    let (r2, plug2) = resolver(&w.kernel);
    w.ctl = build(&w, &r2).await.unwrap();
    assert_eq!(
        *r2.asked.lock().unwrap(),
        ["plug"],
        "asked once, for both networks"
    );
    assert_eq!(w.ctl.drivers(), ["fake", "plug"]);
    let restored = w.ctl.network("p").unwrap();
    assert_eq!(restored.id(), net.id());
    assert_eq!(restored.driver(), "plug");
    assert!(
        plug2.state().networks.contains_key(net.id()),
        "restored in the driver found"
    );

    // Without a resolver the network of a missing driver is skipped, as before.
    w.ctl.shutdown().await.unwrap();
    w.ctl = super::builder(&w.kernel, &w.driver, &w.store, w.run.path())
        .build()
        .await
        .unwrap();
    assert!(w.ctl.network("p").is_err());
    let e = w
        .ctl
        .new_network("plug", "p3", NetworkOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, CoreError::DriverNotFound(ref n) if n == "plug"),
        "{e}"
    );
}

/// A plugin that may be there or not: found by name only while `present`.
#[derive(Debug)]
struct Toggle {
    plug: Arc<FakeDriver>,
    present: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl DriverResolver for Toggle {
    async fn resolve(
        &self,
        name: &str,
        _ctx: &DriverContext,
    ) -> Result<Arc<dyn Driver>, DriverError> {
        if name == "plug" && self.present.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(self.plug.clone() as Arc<dyn Driver>);
        }
        Err(DriverError::new(
            name,
            ErrorKind::NotFound,
            Unknown(name.to_owned()),
        ))
    }
}

#[tokio::test]
async fn networks_waiting_for_a_driver_plugin_come_back_by_restore_waiting_or_a_network_create() {
    use std::sync::atomic::Ordering;

    let mut w = World::new().await;
    let r = Arc::new(Toggle {
        plug: Arc::new(FakeDriver::new("plug", Some(w.kernel.clone()))),
        present: true.into(),
    });
    let rebuild = async |w: &mut World| {
        w.ctl.shutdown().await.unwrap();
        w.ctl = super::builder(&w.kernel, &w.driver, &w.store, w.run.path())
            .driver_resolver(r.clone())
            .build()
            .await
            .expect("a controller, the plugin there or not");
    };
    rebuild(&mut w).await;
    let opts = |s: &str| NetworkOptions::default().subnet(s.parse().unwrap());
    let p = w
        .ctl
        .new_network("plug", "p", opts("10.122.0.0/24"))
        .await
        .unwrap();
    let ep = p.create_endpoint("e", super::ep_opts()).await.unwrap();
    ep.join("c", []).await.unwrap();

    // Rebuilt while the plugin is missing: the network waits, listed as waiting for "plug".
    r.present.store(false, Ordering::SeqCst);
    rebuild(&mut w).await;
    assert!(w.ctl.network("p").is_err());
    assert_eq!(w.ctl.waiting_drivers(), ["plug"]);
    let waiting = w.ctl.waiting_networks();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].record.name, "p");
    assert_eq!(waiting[0].record.id, p.id());
    assert_eq!(
        waiting[0].waits_for,
        crate::WaitingFor::Driver("plug".into())
    );
    assert_eq!(waiting[0].endpoints.len(), 1);
    assert_eq!(
        waiting[0].endpoints[0].sandbox_id.as_deref(),
        w.ctl
            .sandbox_by_container_id("c")
            .ok()
            .map(|s| s.id().to_owned())
            .as_deref()
    );
    // Still missing: nothing changes.
    w.ctl.restore_waiting().await.unwrap();
    assert_eq!(w.ctl.waiting_drivers(), ["plug"]);

    // The plugin appears: restore_waiting finds it by name and the network comes back joined.
    r.present.store(true, Ordering::SeqCst);
    w.ctl.restore_waiting().await.unwrap();
    assert!(w.ctl.waiting_drivers().is_empty());
    assert!(w.ctl.waiting_networks().is_empty());
    let back = w.ctl.network("p").unwrap();
    assert_eq!(back.id(), p.id());
    assert!(back.endpoint("e").unwrap().sandbox_id().is_some());

    // Again missing at reload; this time a network create naming the plugin finds it, and the
    // network waiting for it comes back with it.
    r.present.store(false, Ordering::SeqCst);
    rebuild(&mut w).await;
    assert_eq!(w.ctl.waiting_drivers(), ["plug"]);
    r.present.store(true, Ordering::SeqCst);
    w.ctl
        .new_network("plug", "q", opts("10.123.0.0/24"))
        .await
        .unwrap();
    assert!(w.ctl.waiting_drivers().is_empty());
    let back = w.ctl.network("p").unwrap();
    assert!(back.endpoint("e").unwrap().sandbox_id().is_some());
    assert!(r.plug.state().networks.contains_key(back.id()));
}
