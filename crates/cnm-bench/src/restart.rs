//! The restart scenario: time until a controller rebuilt on the store of a previous one is
//! ready, with `count` endpoints and `count` published ports to reload and reconcile.
//!
//! It turns itself on: it first checks whether a controller built on a store that holds a
//! network reloads it. Until the controller reloads its records, that check fails and the
//! scenario reports `not available: no durable state yet`; once it does, the same code measures.
//! The store is the in-memory one shared between the two controllers (the reload path is the
//! same; a durable backend adds its own read time, measured when cnm-store has one).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use cnm::Controller;
use cnm::store::{MemoryStore, Store};
use cnm_testkit::TestHost;
use serde_json::{Map, json};

use crate::fixture;
use crate::report::{Outcome, round3};
use crate::stats::Summary;

/// The status reported while the controller does not reload its state.
pub const NO_DURABLE_STATE: &str = "not available: no durable state yet";

struct Host {
    host: TestHost,
    store: Arc<dyn Store>,
}

impl Host {
    async fn new() -> Result<Host> {
        Ok(Host {
            host: TestHost::new().await?,
            store: Arc::new(MemoryStore::new()),
        })
    }

    async fn controller(&self) -> Result<Controller> {
        self.host
            .controller_builder()?
            .store(self.store.clone())
            .build()
            .await
            .context("failed to build a controller")
    }
}

/// Measures one restart with `count` endpoints, or reports that reload does not exist yet.
pub async fn measure(count: u32) -> Result<Outcome> {
    // Does a rebuilt controller see the network its predecessor created?
    {
        let probe = Host::new().await?;
        let ctl = probe.controller().await?;
        fixture::bridge_network(&ctl, "probe", "10.91.0.0/24".parse()?).await?;
        drop(ctl);
        let again = probe.controller().await?;
        if again.network("probe").is_err() {
            return Ok(Outcome::Status(format!(
                "{NO_DURABLE_STATE} (a controller rebuilt on the same store reloads no networks)"
            )));
        }
    }

    let h = Host::new().await?;
    {
        let ctl = h.controller().await?;
        let net = fixture::bridge_network(&ctl, "restartnet", "10.92.0.0/16".parse()?).await?;
        fixture::publishing(&ctl, &net, "r", count).await?;
    }
    let before = crate::spans::TIMES.snapshot();
    let t = Instant::now();
    let ctl = h.controller().await?;
    let ready = t.elapsed();
    let phases = crate::spans::TIMES.snapshot().since(&before).phases(ready);
    let endpoints = ctl.network("restartnet")?.endpoints().len();
    // Where the restart's time went (kernel calls, store, firewall, the rest).
    let mut extra = Map::new();
    extra.insert(
        "breakdown_ms".into(),
        serde_json::Value::Object(crate::spans::mean_ms(&[phases])),
    );
    extra.insert("endpoints".into(), json!(endpoints));
    extra.insert("published_ports".into(), json!(count));
    extra.insert("store".into(), json!("memory (shared by both controllers)"));
    extra.insert("ready_ms".into(), json!(round3(ready.as_secs_f64() * 1e3)));
    let summary = Summary::of(&[ready]).context("one sample")?;
    Ok(Outcome::Timed(summary, extra))
}
