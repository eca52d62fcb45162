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
//! Facts live under a lease of their host (one per driver, granted at the first publish, TTL
//! [`DriverContext::lease_ttl`](crate::spi::DriverContext::lease_ttl), 15 s by default), kept
//! alive in the background: a host that dies stops renewing it, the store deletes its facts
//! when it expires, and every watcher sees them go ([`FactEvent::Removed`]). A host whose lease
//! was lost while it lived (the store was unreachable for a whole TTL) takes a new one and
//! writes its facts again.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cnm_types::ErrorKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spi::DriverError;
use crate::store::{
    Expect, LeaseId, LeaseKeeper, ScopedStore, Store, StoreError, Txn, Watch, WatchEvent,
};

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
    lease: Arc<HostLease>,
}

/// The lease a driver's facts live under on this host, shared by every [`Facts`] of one
/// driver context. No lease exists until the first publish.
#[derive(Debug)]
pub(crate) struct HostLease {
    /// The cluster store itself (the keeper renews through it).
    raw: Option<Arc<dyn Store>>,
    /// The driver's handle on it, which grants the lease and so may write under it (every
    /// [`Facts`] of the driver writes through a clone of it).
    scoped: Option<ScopedStore>,
    ttl: Duration,
    state: tokio::sync::Mutex<LeaseState>,
    /// Renews the lease, and takes a new one when it is lost.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct LeaseState {
    lease: Option<LeaseId>,
    /// What this host published, by relative key: written again under a new lease.
    published: BTreeMap<String, Vec<u8>>,
}

impl HostLease {
    pub(crate) fn new(
        raw: Option<Arc<dyn Store>>,
        scoped: Option<ScopedStore>,
        ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            raw,
            scoped,
            ttl,
            state: tokio::sync::Mutex::default(),
            task: std::sync::Mutex::new(None),
        })
    }

    /// The lease to write under, granted (and kept alive from now on) if there is none.
    async fn current(self: &Arc<Self>, store: &ScopedStore) -> Result<LeaseId, StoreError> {
        let mut state = self.state.lock().await;
        if let Some(lease) = state.lease {
            return Ok(lease);
        }
        let keeper = self.grant(store, &mut state).await?;
        let lease = keeper.lease().id;
        let task = tokio::spawn(renew(Arc::downgrade(self), store.clone(), keeper));
        if let Some(old) = crate::sync::lock(&self.task).replace(task) {
            old.abort();
        }
        Ok(lease)
    }

    /// Grants a lease, writes every published fact under it, and starts renewing it.
    async fn grant(
        &self,
        store: &ScopedStore,
        state: &mut LeaseState,
    ) -> Result<LeaseKeeper, StoreError> {
        let raw = self
            .raw
            .clone()
            .ok_or_else(|| StoreError::unsupported("none", "facts without a cluster store"))?;
        let lease = store.grant_lease(self.ttl).await?;
        for (key, value) in &state.published {
            store
                .commit(Txn::new().put_leased(key, value.clone(), Expect::Any, lease.id))
                .await?;
        }
        state.lease = Some(lease.id);
        Ok(LeaseKeeper::spawn(raw, lease))
    }

    /// Forgets a lease the store refused (it expired before the keeper noticed).
    async fn lost(&self, lease: LeaseId) {
        let mut state = self.state.lock().await;
        if state.lease == Some(lease) {
            state.lease = None;
        }
    }
}

impl Drop for HostLease {
    fn drop(&mut self) {
        // Renewals stop: the lease expires after its TTL, as a crashed host's would.
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Renews the lease; when it is lost, takes a new one (retrying every tenth of the TTL while
/// the store cannot grant one) and writes this host's facts again under it.
async fn renew(host: Weak<HostLease>, store: ScopedStore, mut keeper: LeaseKeeper) {
    loop {
        let why = keeper.lost().await;
        tracing::warn!(error = %why, "facts lease lost; taking a new one");
        loop {
            let Some(lease) = host.upgrade() else { return };
            let mut state = lease.state.lock().await;
            state.lease = None;
            match lease.grant(&store, &mut state).await {
                Ok(k) => {
                    tracing::info!(lease = %k.lease().id, facts = state.published.len(), "facts written again under a new lease");
                    keeper = k;
                    break;
                }
                Err(e) => {
                    let retry = lease.ttl / 10;
                    drop(state);
                    drop(lease);
                    tracing::warn!(error = %e, "cannot take a new facts lease yet");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
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
    /// The facts of a driver: `store` is its handle on the cluster store, used when the lease
    /// has none of its own (a context not bound through `for_driver`).
    pub(crate) fn new(store: ScopedStore, host: String, lease: Arc<HostLease>) -> Self {
        let store = lease.scoped.clone().unwrap_or(store);
        Self { store, host, lease }
    }

    /// This host's id, which its facts carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Publishes (or replaces) the fact of one of this host's endpoints, under this host's
    /// lease (see the module's documentation).
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
        let key = key(network_id, endpoint_id);
        // Remembered first: a new lease taken meanwhile writes it too.
        self.lease
            .state
            .lock()
            .await
            .published
            .insert(key.clone(), bytes.clone());
        let mut attempts = 0;
        loop {
            let lease = self
                .lease
                .current(&self.store)
                .await
                .map_err(|e| driver_error(&self.store, e))?;
            let put = Txn::new().put_leased(&key, bytes.clone(), Expect::Any, lease);
            match self.store.commit(put).await {
                Ok(_) => return Ok(()),
                // Expired before the keeper noticed: once more under a new one.
                Err(StoreError::LeaseNotFound { .. }) if attempts == 0 => {
                    attempts += 1;
                    self.lease.lost(lease).await;
                }
                Err(e) => return Err(driver_error(&self.store, e)),
            }
        }
    }

    /// Withdraws an endpoint's fact (nothing if there is none).
    pub async fn withdraw(&self, network_id: &str, endpoint_id: &str) -> Result<(), DriverError> {
        let key = key(network_id, endpoint_id);
        self.lease.state.lock().await.published.remove(&key);
        self.store
            .delete(&key, Expect::Any)
            .await
            .map_err(|e| driver_error(&self.store, e))
    }

    /// The lease this host's facts live under now, if one was granted (tests revoke it to
    /// play an expiry).
    pub async fn lease(&self) -> Option<LeaseId> {
        self.lease.state.lock().await.lease
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

    /// The endpoints the other hosts have facts for on a network now: what a watcher
    /// compares its kernel or resolver state with before it (re)starts watching.
    pub async fn others(&self, network_id: &str) -> Result<HashSet<String>, DriverError> {
        Ok(self
            .list(network_id)
            .await?
            .into_iter()
            .filter(|f| f.host != self.host())
            .map(|f| f.endpoint_id)
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
