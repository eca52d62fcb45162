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
