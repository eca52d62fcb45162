//! The state store: versioned key/value records with optimistic concurrency and prefix watches.
//!
//! Every network, endpoint, sandbox and allocation is a serde record under a key such as
//! `network/<id>`. Each write is checked against an expectation ([`Expect`]) so two writers can
//! never silently overwrite each other, and several writes can go in as one atomic [`Txn`] (what
//! etcd's transactions and an embedded database's write transactions both give). [`MemoryStore`]
//! is the in-process implementation; durable backends implement the same trait.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use cnm_types::ErrorKind;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// A value with the store revision at which it was last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The store revision of the last write of this key (strictly increasing across the store).
    pub version: u64,
    /// The value.
    pub value: T,
}

/// What a write expects of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No check: last writer wins.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key must exist at exactly this version (compare-and-swap).
    Version(u64),
}

/// One operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key` if `expect` holds.
    Put {
        /// The key.
        key: String,
        /// The encoded value.
        value: Vec<u8>,
        /// The expectation.
        expect: Expect,
    },
    /// Removes `key` if `expect` holds (`Expect::Any` on a missing key is not an error).
    Delete {
        /// The key.
        key: String,
        /// The expectation.
        expect: Expect,
    },
}

/// Several writes applied atomically: all expectations hold and every write lands, or none does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The operations, applied in order.
    pub ops: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of a JSON-encoded record.
    pub fn put_json<T: Serialize>(
        mut self,
        key: impl Into<String>,
        value: &T,
        expect: Expect,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
            key: key.clone(),
            source,
        })?;
        self.ops.push(TxnOp::Put { key, value, expect });
        Ok(self)
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>, expect: Expect) -> Self {
        self.ops.push(TxnOp::Delete {
            key: key.into(),
            expect,
        });
        self
    }

    /// Whether the transaction has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put {
        /// The key.
        key: String,
        /// The new value and its version.
        value: Versioned<Vec<u8>>,
    },
    /// The key was removed.
    Delete {
        /// The key.
        key: String,
        /// The revision of the removal.
        version: u64,
    },
}

impl WatchEvent {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
        }
    }
}

/// A stream of changes under a prefix; dropping it ends the watch.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::UnboundedReceiver<WatchEvent>,
}

impl Watch {
    /// A watch fed by `rx`: a store backend keeps the sender and sends every committed change under
    /// the watched prefix, in commit order; a failed send means the watch was dropped.
    pub fn new(rx: mpsc::UnboundedReceiver<WatchEvent>) -> Self {
        Self { rx }
    }

    /// The next change, or `None` when the store is gone.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// A change if one is already queued.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An expectation did not hold; nothing of the transaction was written.
    #[error("store key {key:?} changed concurrently: expected {expected}, found {found}")]
    Conflict {
        /// The key whose expectation failed.
        key: String,
        /// What the writer expected.
        expected: String,
        /// What the store held.
        found: String,
    },
    /// A record could not be encoded.
    #[error("failed to encode store record {key:?}")]
    Encode {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be decoded.
    #[error("failed to decode store record {key:?}")]
    Decode {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A store could not be opened (for a durable store: its state directory is locked by
    /// another process, or its file is unreadable).
    #[error("failed to open the {backend} store in {path}")]
    Open {
        /// Which backend.
        backend: &'static str,
        /// The state directory.
        path: std::path::PathBuf,
        /// What kind of failure the backend reported.
        kind: ErrorKind,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The backend failed (I/O, connection, …).
    #[error("store backend {backend} failed to {op}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it was doing.
        op: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Encode { .. } | Self::Decode { .. } => ErrorKind::Internal,
            Self::Backend { .. } => ErrorKind::Unavailable,
            Self::Open { kind, .. } => *kind,
        }
    }
}

fn describe(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no key".to_owned(),
    }
}

fn check(key: &str, expect: Expect, current: Option<u64>) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
    };
    if ok {
        return Ok(());
    }
    let expected = match expect {
        Expect::Any => "anything".to_owned(),
        Expect::Absent => "no key".to_owned(),
        Expect::Version(v) => format!("version {v}"),
    };
    Err(StoreError::Conflict {
        key: key.to_owned(),
        expected,
        found: describe(current),
    })
}

/// A durable store backend that offers itself as the controller's default, found through
/// [`inventory`] as drivers are: core names no backend. A program that links one (the `cnm`
/// facade links `cnm-store`'s embedded store) gets it from `Controller::builder().build()`; a
/// program that links none gets a [`MemoryStore`].
///
/// `open` runs on the blocking pool with the state directory; the store it returns owns that
/// directory (it holds its lock) until it is dropped.
pub struct DefaultStore {
    /// The backend's name.
    pub name: &'static str,
    /// Opens the store in a state directory.
    pub open: fn(&std::path::Path) -> Result<std::sync::Arc<dyn Store>, StoreError>,
}

impl DefaultStore {
    /// A registration, for `inventory::submit!`.
    pub const fn new(
        name: &'static str,
        open: fn(&std::path::Path) -> Result<std::sync::Arc<dyn Store>, StoreError>,
    ) -> Self {
        Self { name, open }
    }
}

inventory::collect!(DefaultStore);

/// A key/value store of versioned records.
///
/// Object-safe; every implementation gives the same semantics as [`MemoryStore`]: revisions grow
/// strictly across the whole store, a [`Txn`] is all-or-nothing, and watchers see every committed
/// change under their prefix in commit order.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The backend's name (`memory`, `redb`, `etcd`, …).
    fn backend(&self) -> &'static str;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError>;

    /// Every key under `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError>;

    /// Applies a transaction atomically; returns the revision it was committed at.
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError>;

    /// Watches changes under `prefix` from now on.
    fn watch(&self, prefix: &str) -> Result<Watch, StoreError>;

    /// Writes one key if `expect` holds; returns its new version.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StoreError> {
        self.commit(Txn {
            ops: vec![TxnOp::Put {
                key: key.to_owned(),
                value,
                expect,
            }],
        })
        .await
    }

    /// Removes one key if `expect` holds.
    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StoreError> {
        self.commit(Txn {
            ops: vec![TxnOp::Delete {
                key: key.to_owned(),
                expect,
            }],
        })
        .await?;
        Ok(())
    }
}

/// Reads and decodes a JSON record.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(v) => {
            let value = serde_json::from_slice(&v.value).map_err(|source| StoreError::Decode {
                key: key.to_owned(),
                source,
            })?;
            Ok(Some(Versioned {
                version: v.version,
                value,
            }))
        }
    }
}

/// Lists and decodes the JSON records under a prefix.
pub async fn list_json<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<(String, Versioned<T>)>, StoreError> {
    store
        .list(prefix)
        .await?
        .into_iter()
        .map(|(key, v)| {
            let value = serde_json::from_slice(&v.value).map_err(|source| StoreError::Decode {
                key: key.clone(),
                source,
            })?;
            Ok((
                key,
                Versioned {
                    version: v.version,
                    value,
                },
            ))
        })
        .collect()
}

#[derive(Debug, Default)]
struct MemoryState {
    revision: u64,
    data: BTreeMap<String, Versioned<Vec<u8>>>,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchEvent>)>,
}

/// The in-process store: a sorted map under a mutex. Nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock cannot leave the map half-written: every commit checks
        // all expectations before its first write, so the data is consistent even if poisoned.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
        let state = self.lock();
        Ok(state
            .data
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut state = self.lock();
        // Check every expectation against the state as the transaction would see it, in order,
        // before writing anything: a later op may depend on an earlier one in the same txn.
        let mut shadow: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let revision = state.revision + 1;
        for op in &txn.ops {
            let (key, expect) = match op {
                TxnOp::Put { key, expect, .. } | TxnOp::Delete { key, expect } => (key, *expect),
            };
            let current = match shadow.get(key.as_str()) {
                Some(v) => *v,
                None => state.data.get(key).map(|v| v.version),
            };
            check(key, expect, current)?;
            let after = match op {
                TxnOp::Put { .. } => Some(revision),
                TxnOp::Delete { .. } => None,
            };
            shadow.insert(key, after);
        }
        state.revision = revision;
        let mut events = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            match op {
                TxnOp::Put { key, value, .. } => {
                    let v = Versioned {
                        version: revision,
                        value,
                    };
                    state.data.insert(key.clone(), v.clone());
                    events.push(WatchEvent::Put { key, value: v });
                }
                TxnOp::Delete { key, .. } => {
                    if state.data.remove(&key).is_some() {
                        events.push(WatchEvent::Delete {
                            key,
                            version: revision,
                        });
                    }
                }
            }
        }
        state.watchers.retain(|(prefix, tx)| {
            events
                .iter()
                .filter(|e| e.key().starts_with(prefix.as_str()))
                .all(|e| tx.send(e.clone()).is_ok())
        });
        Ok(revision)
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().watchers.push((prefix.to_owned(), tx));
        Ok(Watch { rx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
