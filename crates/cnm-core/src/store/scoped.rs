//! [`ScopedStore`]: a driver's view of a store, confined to its own key prefix.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    Expect, Lease, LeaseId, Listing, Store, StoreError, Txn, TxnOp, Versioned, Watch, WatchEvent,
};

/// A store handle confined to one key prefix: what a driver persists through
/// ([`DriverContext::store`](crate::spi::DriverContext::store)).
///
/// Keys given to it are relative: `vni/42` is stored as `driver/overlay/vni/42`. Every read,
/// write, listing and watch stays under the prefix, and watch events and listings come back
/// with relative keys, so a driver can neither read nor change another's state or the
/// controller's records. Leases are the handle's own: it keeps alive, revokes and writes under
/// only the leases it granted. Otherwise it is the store itself: the same versions,
/// [`Expect`] checks, all-or-nothing [`Txn`]s and ordered watches.
///
/// Cheap to clone; clones share the leases granted.
#[derive(Clone)]
pub struct ScopedStore {
    store: Arc<dyn Store>,
    prefix: String,
    leases: Arc<Mutex<HashSet<LeaseId>>>,
}

impl fmt::Debug for ScopedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedStore")
            .field("backend", &self.store.backend())
            .field("cluster", &self.store.is_cluster())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl ScopedStore {
    /// `store` seen through `prefix`, which must end with `/` (so `driver/a/` never sees
    /// `driver/ab/`).
    pub fn new(store: Arc<dyn Store>, prefix: impl Into<String>) -> Result<Self, StoreError> {
        let prefix = prefix.into();
        if !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(StoreError::Invalid {
                field: "key prefix",
                value: prefix,
                reason: "must be non-empty and end with '/'",
            });
        }
        Ok(Self {
            store,
            prefix,
            leases: Arc::default(),
        })
    }

    /// The prefix every key of this handle is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the store behind is shared by every host of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.store.is_cluster()
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn relative(&self, key: String) -> String {
        match key.strip_prefix(&self.prefix) {
            Some(k) => k.to_owned(),
            None => key,
        }
    }

    fn check_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        if crate::sync::lock(&self.leases).contains(&lease) {
            Ok(())
        } else {
            Err(StoreError::Invalid {
                field: "lease",
                value: lease.to_string(),
                reason: "not granted through this handle",
            })
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        self.store.get(&self.full(key)).await
    }

    /// Every key under `prefix` (relative), sorted, with relative keys.
    pub async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        Ok(self
            .store
            .list(&self.full(prefix))
            .await?
            .into_iter()
            .map(|(k, v)| (self.relative(k), v))
            .collect())
    }

    /// [`Store::list_with_revision`] under the handle's prefix, with relative keys.
    pub async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        let mut listing = self.store.list_with_revision(&self.full(prefix)).await?;
        listing.entries = std::mem::take(&mut listing.entries)
            .into_iter()
            .map(|(k, v)| (self.relative(k), v))
            .collect();
        Ok(listing)
    }

    /// Applies a transaction of relative keys atomically; returns its revision. A lease it
    /// writes under must have been granted through this handle.
    pub async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut out = Txn::new();
        for op in txn.ops {
            out.ops.push(match op {
                TxnOp::Put { key, value, expect } => TxnOp::Put {
                    key: self.full(&key),
                    value,
                    expect,
                },
                TxnOp::PutLeased {
                    key,
                    value,
                    expect,
                    lease,
                } => {
                    self.check_lease(lease)?;
                    TxnOp::PutLeased {
                        key: self.full(&key),
                        value,
                        expect,
                        lease,
                    }
                }
                TxnOp::Delete { key, expect } => TxnOp::Delete {
                    key: self.full(&key),
                    expect,
                },
                TxnOp::Check { key, expect } => TxnOp::Check {
                    key: self.full(&key),
                    expect,
                },
            });
        }
        self.store.commit(out).await
    }

    /// Writes one key if `expect` holds; returns its new version.
    pub async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StoreError> {
        self.commit(Txn::new().put(key, value, expect)).await
    }

    /// Removes one key if `expect` holds.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<(), StoreError> {
        self.commit(Txn::new().delete(key, expect)).await.map(drop)
    }

    /// Watches changes under `prefix` (relative) from now on; events carry relative keys.
    pub fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let inner = self.store.watch(&self.full(prefix))?;
        Ok(self.relay(inner))
    }

    /// Watches changes under `prefix` (relative) committed after revision `after`
    /// ([`Store::watch_from`]); events carry relative keys.
    pub fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let inner = self.store.watch_from(&self.full(prefix), after)?;
        Ok(self.relay(inner))
    }

    /// Strips the prefix from every event of `inner`, on a task that ends with either side.
    fn relay(&self, mut inner: Watch) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    event = inner.next() => {
                        let Some(event) = event else { return };
                        let event = match event {
                            WatchEvent::Put { key, value } => WatchEvent::Put {
                                key: this.relative(key),
                                value,
                            },
                            WatchEvent::Delete { key, version } => WatchEvent::Delete {
                                key: this.relative(key),
                                version,
                            },
                            other => other,
                        };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Watch::new(rx)
    }

    /// Grants a lease ([`Store::grant_lease`]) that this handle may then write under.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let lease = self.store.grant_lease(ttl).await?;
        crate::sync::lock(&self.leases).insert(lease.id);
        Ok(lease)
    }

    /// Renews a lease this handle granted.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check_lease(lease)?;
        self.store.keep_alive(lease).await
    }

    /// Revokes a lease this handle granted: its keys go.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.check_lease(lease)?;
        self.store.revoke_lease(lease).await?;
        crate::sync::lock(&self.leases).remove(&lease);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use cnm_types::ErrorKind;

    #[tokio::test]
    async fn a_scoped_handle_cannot_leave_its_prefix() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .put("network/n", b"core".to_vec(), Expect::Absent)
            .await
            .unwrap();
        store
            .put("driver/ab/x", b"other".to_vec(), Expect::Absent)
            .await
            .unwrap();
        let a = ScopedStore::new(store.clone(), "driver/a/").unwrap();
        let mut w = a.watch("").unwrap();
        // Keys are relative: "../" and absolute-looking keys stay under the prefix.
        for key in ["../../network/n", "/network/n", "network/n", ""] {
            assert!(a.get(key).await.unwrap().is_none(), "{key}");
        }
        a.put("../../network/n", b"mine".to_vec(), Expect::Absent)
            .await
            .unwrap();
        assert_eq!(
            store.get("network/n").await.unwrap().unwrap().value,
            b"core"
        );
        assert!(
            store
                .get("driver/a/../../network/n")
                .await
                .unwrap()
                .is_some()
        );
        // Neither a sibling's keys nor the core's show in a listing or a watch.
        let listed: Vec<String> = a.list("").await.unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(listed, ["../../network/n"]);
        store
            .put("driver/ab/y", Vec::new(), Expect::Absent)
            .await
            .unwrap();
        a.put("vni/1", Vec::new(), Expect::Absent).await.unwrap();
        assert_eq!(w.next().await.unwrap().key(), "../../network/n");
        assert_eq!(w.next().await.unwrap().key(), "vni/1");
        assert!(w.try_next().is_none());
        // A lease it did not grant is refused before anything is written.
        let other = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        let e = a
            .commit(Txn::new().put_leased("k", Vec::new(), Expect::Any, other.id))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            a.revoke_lease(other.id).await.unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert!(a.get("k").await.unwrap().is_none());
        let own = a.grant_lease(Duration::from_secs(60)).await.unwrap();
        a.commit(Txn::new().put_leased("k", Vec::new(), Expect::Any, own.id))
            .await
            .unwrap();
        a.revoke_lease(own.id).await.unwrap();
        assert!(a.get("k").await.unwrap().is_none());
        assert!(ScopedStore::new(store, "driver").is_err());
    }
}
