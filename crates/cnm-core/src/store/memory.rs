//! [`MemoryStore`]: the in-process store, and the reference for every backend's semantics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::local::{ChangeLog, DEFAULT_HISTORY, LeaseTable};
use super::{
    Lease, LeaseId, Listing, Store, StoreError, Txn, TxnOp, Versioned, Watch, WatchEvent,
    check_lease_ttl,
};
use crate::sync::lock;

#[derive(Debug)]
struct MemoryState {
    data: BTreeMap<String, Versioned<Vec<u8>>>,
    log: ChangeLog,
    leases: LeaseTable,
}

impl MemoryState {
    fn new(history: usize) -> Self {
        Self {
            data: BTreeMap::new(),
            log: ChangeLog::new(0, history),
            leases: LeaseTable::new(1),
        }
    }

    fn commit(&mut self, txn: Txn) -> Result<u64, StoreError> {
        // Check every expectation against the state as the transaction would see it, in order,
        // before writing anything: a later op may depend on an earlier one in the same txn.
        let now = Instant::now();
        let revision = self.log.revision() + 1;
        let mut shadow: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        for op in &txn.ops {
            let key = op.key();
            let current = match shadow.get(key) {
                Some(v) => *v,
                None => self.data.get(key).map(|v| v.version),
            };
            op.expect().check(key, current)?;
            if let TxnOp::PutLeased { lease, .. } = op
                && !self.leases.is_live(*lease, now)
            {
                return Err(StoreError::LeaseNotFound { lease: *lease });
            }
            let after = match op {
                TxnOp::Put { .. } | TxnOp::PutLeased { .. } => Some(revision),
                TxnOp::Delete { .. } => None,
                TxnOp::Check { .. } => current,
            };
            shadow.insert(key, after);
        }
        let mut events = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            match op {
                TxnOp::Put { key, value, .. } => {
                    self.leases.attach(&key, None);
                    events.push(self.write(key, value, revision));
                }
                TxnOp::PutLeased {
                    key, value, lease, ..
                } => {
                    self.leases.attach(&key, Some(lease));
                    events.push(self.write(key, value, revision));
                }
                TxnOp::Check { .. } => {}
                TxnOp::Delete { key, .. } => {
                    self.leases.detach(&key);
                    if self.data.remove(&key).is_some() {
                        events.push(WatchEvent::Delete {
                            key,
                            version: revision,
                        });
                    }
                }
            }
        }
        self.log.publish(revision, events);
        Ok(revision)
    }

    fn write(&mut self, key: String, value: Vec<u8>, revision: u64) -> WatchEvent {
        let v = Versioned {
            version: revision,
            value,
        };
        self.data.insert(key.clone(), v.clone());
        WatchEvent::Put { key, value: v }
    }

    /// Forgets `lease` and deletes its keys in one revision (none if it had no keys).
    fn end_lease(&mut self, lease: LeaseId) {
        let Some(keys) = self.leases.remove(lease) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let revision = self.log.revision() + 1;
        let events = keys
            .into_iter()
            .filter(|key| self.data.remove(key).is_some())
            .map(|key| WatchEvent::Delete {
                key,
                version: revision,
            })
            .collect();
        self.log.publish(revision, events);
    }
}

/// The in-process store: a sorted map under a mutex. Nothing survives the process.
///
/// Leases are real: each has a timer task (on the runtime that granted it) that deletes its keys
/// when its TTL passes without a keep-alive. History for [`Store::watch_from`] reaches back about
/// [`DEFAULT_HISTORY`] events ([`MemoryStore::with_history`] to change it).
#[derive(Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
    cluster: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that calls itself a cluster store ([`Store::is_cluster`]): for tests that
    /// stand several hosts in one process on one shared store.
    pub fn cluster() -> Self {
        Self {
            cluster: true,
            ..Self::default()
        }
    }

    /// [`MemoryStore::cluster`] keeping about `events` events of history (a small history lets
    /// a test see [`WatchEvent::Resync`]).
    pub fn cluster_with_history(events: usize) -> Self {
        Self {
            cluster: true,
            ..Self::with_history(events)
        }
    }

    /// An empty store keeping about `events` events of history for [`Store::watch_from`].
    pub fn with_history(events: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(MemoryState::new(events))),
            cluster: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        lock(&self.state)
    }
}

/// Ends `lease` when its deadline passes without a keep-alive; stops when the lease is gone
/// (revoked) or the store is dropped.
fn spawn_expiry(runtime: &Handle, state: Weak<Mutex<MemoryState>>, lease: LeaseId, first: Instant) {
    runtime.spawn(async move {
        let mut deadline = first;
        loop {
            tokio::time::sleep_until(deadline).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let mut st = lock(&state);
            match st.leases.deadline(lease) {
                None => return,
                Some(later) if later > Instant::now() => deadline = later,
                Some(_) => {
                    tracing::debug!(%lease, "memory store lease expired");
                    st.end_lease(lease);
                    return;
                }
            }
        }
    });
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        Ok(self.lock().data.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        Ok(self.list_with_revision(prefix).await?.entries)
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let _span = tracing::debug_span!("store_commit").entered();
        self.lock().commit(txn)
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        Ok(self.lock().log.watch(prefix))
    }

    fn is_cluster(&self) -> bool {
        self.cluster
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.lock();
        Ok(Listing {
            revision: state.log.revision(),
            entries: state
                .data
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        Ok(self.lock().log.watch_from(prefix, after))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_ttl(ttl)?;
        let runtime = Handle::try_current().map_err(|source| StoreError::Backend {
            backend: "memory",
            op: "start a lease timer (leases need a tokio runtime)".to_owned(),
            source: Box::new(source),
        })?;
        let now = Instant::now();
        let lease = self.lock().leases.grant(ttl, now);
        spawn_expiry(&runtime, Arc::downgrade(&self.state), lease.id, now + ttl);
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.lock().leases.keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.lock();
        let live = state.leases.is_live(lease, Instant::now());
        // A lease past its deadline whose timer has not run yet ends here too, but it had
        // already expired: the caller hears so.
        state.end_lease(lease);
        if live {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound { lease })
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Expect, list_json};
    use cnm_types::ErrorKind;

    #[tokio::test]
    async fn versions_and_expectations() {
        let s = MemoryStore::new();
        let v1 = s
            .put("network/a", b"1".to_vec(), Expect::Absent)
            .await
            .unwrap();
        let e = s
            .put("network/a", b"2".to_vec(), Expect::Absent)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("network/a"), "{e}");
        let v2 = s
            .put("network/a", b"2".to_vec(), Expect::Version(v1))
            .await
            .unwrap();
        assert!(v2 > v1);
        assert!(
            s.put("network/a", b"3".to_vec(), Expect::Version(v1))
                .await
                .is_err()
        );
        assert_eq!(s.get("network/a").await.unwrap().unwrap().value, b"2");
        s.delete("network/a", Expect::Version(v2)).await.unwrap();
        assert!(s.get("network/a").await.unwrap().is_none());
        s.delete("network/a", Expect::Any).await.unwrap();
    }

    #[tokio::test]
    async fn txn_is_all_or_nothing() {
        let s = MemoryStore::new();
        s.put("endpoint/n/1", b"x".to_vec(), Expect::Absent)
            .await
            .unwrap();
        let txn = Txn::new()
            .put_json("sandbox/s", &"s", Expect::Absent)
            .unwrap()
            .put_json("endpoint/n/1", &"y", Expect::Absent)
            .unwrap();
        assert!(s.commit(txn).await.is_err());
        assert!(
            s.get("sandbox/s").await.unwrap().is_none(),
            "first op must not land"
        );
        // An op may rely on an earlier op of the same transaction.
        let txn = Txn::new()
            .put_json("a", &1, Expect::Absent)
            .unwrap()
            .delete("a", Expect::Any);
        s.commit(txn).await.unwrap();
        assert!(s.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_check_guards_a_write_and_writes_nothing() {
        let s = MemoryStore::new();
        let v = s
            .put("network/n", b"1".to_vec(), Expect::Absent)
            .await
            .unwrap();
        let mut w = s.watch("").unwrap();
        let guarded = |expect| {
            Txn::new()
                .check("network/n", expect)
                .put("block/n/1", b"h".to_vec(), Expect::Absent)
        };
        let e = s.commit(guarded(Expect::Version(v + 7))).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.to_string().contains("network/n"), "{e}");
        assert!(s.get("block/n/1").await.unwrap().is_none());
        s.commit(guarded(Expect::Version(v))).await.unwrap();
        // The checked key is neither rewritten nor reported to watchers.
        assert_eq!(s.get("network/n").await.unwrap().unwrap().version, v);
        assert_eq!(w.next().await.unwrap().key(), "block/n/1");
        assert!(w.try_next().is_none());
        s.commit(Txn::new().check("missing", Expect::Absent))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn list_by_prefix_and_watch() {
        let s = MemoryStore::new();
        let mut w = s.watch("endpoint/").unwrap();
        for k in ["endpoint/n/1", "endpoint/n/2", "network/n", "endpointx"] {
            s.put(k, b"{}".to_vec(), Expect::Any).await.unwrap();
        }
        let keys: Vec<String> = s
            .list("endpoint/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["endpoint/n/1", "endpoint/n/2"]);
        assert_eq!(w.next().await.unwrap().key(), "endpoint/n/1");
        assert_eq!(w.next().await.unwrap().key(), "endpoint/n/2");
        assert!(w.try_next().is_none());
        s.delete("endpoint/n/1", Expect::Any).await.unwrap();
        assert!(matches!(w.next().await, Some(WatchEvent::Delete { .. })));
        let decoded: Vec<(String, Versioned<serde_json::Value>)> =
            list_json(&s, "endpoint/").await.unwrap();
        assert_eq!(decoded.len(), 1);
    }
}
