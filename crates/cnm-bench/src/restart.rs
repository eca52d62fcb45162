//! The restart scenario: time until a controller rebuilt on the store of a previous one is
//! ready, with `endpoints` endpoints (each joined to a sandbox of its own and publishing one
//! port) over `networks` bridge networks to reload and reconcile.
//!
//! It turns itself on: it first checks whether a controller built on a store that holds a
//! network reloads it. Until the controller reloads its records, that check fails and the
//! scenario reports `not available: no durable state yet`; once it does, the same code measures.
//! The store is by default the in-memory one shared between the controllers (the reload path is
//! the same); with `durable` it is the embedded redb store in the host's state directory, whose
//! read time the restart then includes.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cnm::store::{MemoryStore, Store};
use cnm::{Controller, EndpointOptions, PortBinding};
use cnm_testkit::TestHost;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{Map, json};

use crate::fixture;
use crate::report::{Outcome, round3};
use crate::stats::Summary;

/// The status reported while the controller does not reload its state.
pub const NO_DURABLE_STATE: &str = "not available: no durable state yet";

/// How many joins the set-up runs at once (the set-up is not measured; this only shortens it).
const SETUP_PARALLEL: usize = 8;

/// The first published host port; endpoint `i` publishes `FIRST_PORT + i`.
const FIRST_PORT: u32 = 20000;

/// What one restart measurement restores.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Endpoints, each joined to its own sandbox and publishing one port.
    pub endpoints: u32,
    /// Bridge networks they are spread over (consecutive endpoints share a network).
    pub networks: u32,
    /// The embedded durable store (redb in the state dir) instead of the shared in-memory one.
    pub durable: bool,
    /// Restarts of the same state, each one sample.
    pub restarts: usize,
}

struct Host {
    host: TestHost,
    /// The shared in-memory store; `None`: the default (durable) store in the state dir.
    store: Option<Arc<dyn Store>>,
}

impl Host {
    async fn new(durable: bool) -> Result<Host> {
        Ok(Host {
            host: TestHost::new().await?,
            store: (!durable).then(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>),
        })
    }

    async fn controller(&self) -> Result<Controller> {
        let mut builder = self.host.controller_builder()?;
        if let Some(store) = &self.store {
            builder = builder.store(store.clone());
        }
        builder
            .build()
            .await
            .context("failed to build a controller")
    }
}

/// Measures `shape.restarts` restarts, or reports that reload does not exist yet.
pub async fn measure(shape: Shape) -> Result<Outcome> {
    if shape.networks > 100 || shape.endpoints > 65535 - FIRST_PORT {
        bail!(
            "the restart scenario takes at most 100 networks and {} endpoints (one host port \
             each from {FIRST_PORT}), not {} and {}",
            65535 - FIRST_PORT,
            shape.networks,
            shape.endpoints
        );
    }
    // Does a rebuilt controller see the network its predecessor created?
    {
        let probe = Host::new(shape.durable).await?;
        let ctl = probe.controller().await?;
        fixture::bridge_network(&ctl, "probe", "10.91.0.0/24".parse()?).await?;
        ctl.shutdown().await?;
        drop(ctl);
        let again = probe.controller().await?;
        if again.network("probe").is_err() {
            return Ok(Outcome::Status(format!(
                "{NO_DURABLE_STATE} (a controller rebuilt on the same store reloads no networks)"
            )));
        }
    }

    let h = Host::new(shape.durable).await?;
    let mut ctl = h.controller().await?;
    let per_network = shape.endpoints.div_ceil(shape.networks);
    let mut nets = Vec::new();
    for k in 0..shape.networks {
        let subnet = format!("10.{}.0.0/16", 100 + k).parse()?;
        nets.push(fixture::bridge_network(&ctl, &format!("restartnet{k}"), subnet).await?);
    }
    let setup = Instant::now();
    {
        let (ctl, nets) = (&ctl, &nets);
        let live: Vec<_> = stream::iter(0..shape.endpoints)
            .map(|i| async move {
                let binding: PortBinding = format!("{}:80/tcp", FIRST_PORT + i).parse()?;
                let options = EndpointOptions::default().publish(binding);
                let net = &nets[(i / per_network) as usize];
                fixture::joined(ctl, net, &format!("r{i}"), options).await
            })
            .buffer_unordered(SETUP_PARALLEL)
            .try_collect()
            .await?;
        drop(live);
    }
    eprintln!(
        "cnm-bench: restart: {} endpoints over {} networks set up in {:.1} s",
        shape.endpoints,
        shape.networks,
        setup.elapsed().as_secs_f64()
    );
    drop(nets);

    let mut samples = Vec::new();
    let mut phases = Vec::new();
    for round in 0..shape.restarts {
        ctl.shutdown()
            .await
            .context("failed to shut the controller down")?;
        drop(ctl);
        let before = crate::spans::TIMES.snapshot();
        let t = Instant::now();
        ctl = h.controller().await?;
        let ready = t.elapsed();
        phases.push(crate::spans::TIMES.snapshot().since(&before).phases(ready));
        let mut endpoints = 0;
        for k in 0..shape.networks {
            endpoints += ctl.network(&format!("restartnet{k}"))?.endpoints().len();
        }
        if endpoints != shape.endpoints as usize {
            bail!(
                "restart {round}: {endpoints} endpoints restored, not {}",
                shape.endpoints
            );
        }
        eprintln!(
            "cnm-bench: restart {}/{}: ready in {:.1} ms",
            round + 1,
            shape.restarts,
            ready.as_secs_f64() * 1e3
        );
        samples.push(ready);
    }
    // Where the restart's time went (kernel calls, store, firewall, the rest).
    let mut extra = Map::new();
    extra.insert(
        "breakdown_ms".into(),
        serde_json::Value::Object(crate::spans::mean_ms(&phases)),
    );
    extra.insert("endpoints".into(), json!(shape.endpoints));
    extra.insert("networks".into(), json!(shape.networks));
    extra.insert("published_ports".into(), json!(shape.endpoints));
    extra.insert(
        "store".into(),
        json!(if shape.durable {
            "durable (redb in the state directory)"
        } else {
            "memory (shared by the controllers)"
        }),
    );
    extra.insert("embedded_dns".into(), json!(fixture::embedded_dns()));
    extra.insert(
        "ready_ms".into(),
        json!(
            samples
                .iter()
                .map(|d| round3(d.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
        ),
    );
    let summary = Summary::of(&samples).context("no sample")?;
    Ok(Outcome::Timed(summary, extra))
}
