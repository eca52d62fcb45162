//! Per-endpoint facts a driver shares with the other hosts of a cluster: what libnetwork keeps
//! in its networkdb tables (an overlay endpoint's IP, MAC and VTEP, which every other host
//! turns into neighbour and FDB entries).
//!
//! A fact lives in the cluster store under the driver's prefix, at
//! `driver/<driver>/facts/<network id>/<endpoint id>`, carrying the id of the host that
//! published it. A host watches a network's facts ([`Facts::watch`]) and gets every other
//! host's as [`FactEvent::Added`] and [`FactEvent::Removed`] events, built on the store's
//! list-then-watch-from hand-over, so nothing is missed between the two. The controller
//! withdraws an endpoint's fact when it deletes the endpoint.
//!
//! Facts are written without a lease for now: a host that dies leaves its facts behind until
//! its endpoints are deleted. The overlay issue puts them under a per-host lease, so the
//! store removes a dead host's facts and every watcher sees them go.

use std::collections::BTreeMap;

use cnm_types::ErrorKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spi::DriverError;
use crate::store::{Expect, ScopedStore, StoreError, Watch, WatchEvent};

/// The relative key of a fact.
fn key(network_id: &str, endpoint_id: &str) -> String {
    format!("{}{endpoint_id}", net_prefix(network_id))
}

fn net_prefix(network_id: &str) -> String {
    format!("facts/{network_id}/")
}

/// The key of an endpoint's fact in the cluster store, for the controller to withdraw it.
pub(crate) fn cluster_key(driver: &str, network_id: &str, endpoint_id: &str) -> String {
    format!(
        "{}{}",
        crate::spi::driver_prefix(driver),
        key(network_id, endpoint_id)
    )
}

/// A fact as stored.
#[derive(Debug, Serialize, Deserialize)]
struct FactRecord {
    host: String,
    value: serde_json::Value,
}

/// One endpoint's fact, as published by its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The endpoint's network.
    pub network_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The id of the host that published it.
    pub host: String,
    /// The value as published.
    pub value: serde_json::Value,
}

impl Fact {
    /// The value as the driver's own type.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.value)
    }
}

/// A change of another host's facts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FactEvent {
    /// A fact was published or changed.
    Added(Fact),
    /// An endpoint's fact was withdrawn (its endpoint deleted).
    Removed {
        /// The endpoint's network.
        network_id: String,
        /// The endpoint.
        endpoint_id: String,
        /// The host that had published it.
        host: String,
    },
}

/// A driver's facts: publish this host's, watch the others'. From
/// [`DriverContext::facts`](crate::spi::DriverContext::facts). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Facts {
    store: ScopedStore,
    host: String,
}

fn driver_error(store: &ScopedStore, e: StoreError) -> DriverError {
    let driver = store
        .prefix()
        .trim_start_matches("driver/")
        .trim_end_matches('/')
        .to_owned();
    DriverError::new(driver, e.kind(), e)
}

impl Facts {
    pub(crate) fn new(store: ScopedStore, host: String) -> Self {
        Self { store, host }
    }

    /// This host's id, which its facts carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Publishes (or replaces) the fact of one of this host's endpoints.
    pub async fn publish<T: Serialize>(
        &self,
        network_id: &str,
        endpoint_id: &str,
        value: &T,
    ) -> Result<(), DriverError> {
        let value = serde_json::to_value(value)
            .map_err(|e| DriverError::new(self.driver(), ErrorKind::InvalidInput, e))?;
        let record = FactRecord {
            host: self.host.clone(),
            value,
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| DriverError::new(self.driver(), ErrorKind::Internal, e))?;
        self.store
            .put(&key(network_id, endpoint_id), bytes, Expect::Any)
            .await
            .map(drop)
            .map_err(|e| driver_error(&self.store, e))
    }

    /// Withdraws an endpoint's fact (nothing if there is none).
    pub async fn withdraw(&self, network_id: &str, endpoint_id: &str) -> Result<(), DriverError> {
        self.store
            .delete(&key(network_id, endpoint_id), Expect::Any)
            .await
            .map_err(|e| driver_error(&self.store, e))
    }

    /// Every fact of a network, this host's included.
    pub async fn list(&self, network_id: &str) -> Result<Vec<Fact>, DriverError> {
        let listing = self
            .store
            .list(&net_prefix(network_id))
            .await
            .map_err(|e| driver_error(&self.store, e))?;
        Ok(listing
            .into_iter()
            .filter_map(|(k, v)| decode(network_id, &k, &v.value))
            .collect())
    }

    /// Watches the other hosts' facts of a network: first one [`FactEvent::Added`] for each
    /// that exists, then every change, each exactly once, in the order the store committed
    /// them.
    pub async fn watch(&self, network_id: &str) -> Result<FactWatch, DriverError> {
        let mut w = FactWatch {
            store: self.store.clone(),
            host: self.host.clone(),
            network_id: network_id.to_owned(),
            known: BTreeMap::new(),
            queued: std::collections::VecDeque::new(),
            watch: None,
        };
        w.resync().await?;
        Ok(w)
    }

    fn driver(&self) -> String {
        self.store
            .prefix()
            .trim_start_matches("driver/")
            .trim_end_matches('/')
            .to_owned()
    }
}

/// A fact from its relative key and stored value (`None` if it is not one).
fn decode(network_id: &str, key: &str, bytes: &[u8]) -> Option<Fact> {
    let endpoint_id = key.strip_prefix(&net_prefix(network_id))?;
    let record: FactRecord = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(key, error = %e, "undecodable fact ignored");
            return None;
        }
    };
    Some(Fact {
        network_id: network_id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        host: record.host,
        value: record.value,
    })
}

/// The other hosts' facts of one network, as they change ([`Facts::watch`]).
#[derive(Debug)]
pub struct FactWatch {
    store: ScopedStore,
    host: String,
    network_id: String,
    /// Endpoint → host of the other hosts' facts seen.
    known: BTreeMap<String, String>,
    queued: std::collections::VecDeque<FactEvent>,
    watch: Option<Watch>,
}

impl FactWatch {
    /// The next change, or `None` when the store is gone.
    pub async fn next(&mut self) -> Option<FactEvent> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            let event = self.watch.as_mut()?.next().await?;
            match event {
                WatchEvent::Put { key, value } => {
                    if let Some(fact) = decode(&self.network_id, &key, &value.value) {
                        self.saw(fact);
                    }
                }
                WatchEvent::Delete { key, .. } => {
                    if let Some(ep) = key.strip_prefix(&net_prefix(&self.network_id)) {
                        self.gone(ep.to_owned());
                    }
                }
                WatchEvent::Resync { .. } => {
                    // History lost: list again, report the difference, watch on.
                    if self.resync().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// A fact now in the store: queued when it is another host's.
    fn saw(&mut self, fact: Fact) {
        if fact.host == self.host {
            // This host's own (or one that moved here): no longer another's.
            self.gone(fact.endpoint_id);
            return;
        }
        self.known
            .insert(fact.endpoint_id.clone(), fact.host.clone());
        self.queued.push_back(FactEvent::Added(fact));
    }

    fn gone(&mut self, endpoint_id: String) {
        if let Some(host) = self.known.remove(&endpoint_id) {
            self.queued.push_back(FactEvent::Removed {
                network_id: self.network_id.clone(),
                endpoint_id,
                host,
            });
        }
    }

    /// Lists the facts and watches from the listing's revision; queues what changed since
    /// the facts known.
    async fn resync(&mut self) -> Result<(), DriverError> {
        let prefix = net_prefix(&self.network_id);
        let listing = self
            .store
            .list_with_revision(&prefix)
            .await
            .map_err(|e| driver_error(&self.store, e))?;
        let facts: Vec<Fact> = listing
            .entries
            .iter()
            .filter_map(|(k, v)| decode(&self.network_id, k, &v.value))
            .collect();
        let present: std::collections::BTreeSet<&str> =
            facts.iter().map(|f| f.endpoint_id.as_str()).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !present.contains(k.as_str()))
            .cloned()
            .collect();
        for ep in gone {
            self.gone(ep);
        }
        for fact in facts {
            self.saw(fact);
        }
        self.watch = Some(
            self.store
                .watch_from(&prefix, listing.revision)
                .map_err(|e| driver_error(&self.store, e))?,
        );
        Ok(())
    }
}
