//! The state store: versioned key/value records with optimistic concurrency, prefix watches that
//! can resume from a revision, and leases.
//!
//! Every network, endpoint, sandbox and allocation is a serde record under a key such as
//! `network/<id>`. Each write is checked against an expectation ([`Expect`]) so two writers can
//! never silently overwrite each other, and several writes can go in as one atomic [`Txn`] (what
//! etcd's transactions and an embedded database's write transactions both give). [`MemoryStore`]
//! is the in-process implementation; durable backends (`cnm-store`: redb, etcd) implement the
//! same trait.
//!
//! # Revisions
//! Every commit that writes gets a new store-wide revision, strictly greater than every earlier
//! one; a record's [`Versioned::version`] is the revision of its last write (etcd's
//! `mod_revision`), and [`Expect::Version`] compares exactly that. A watcher that listed at
//! revision R ([`Store::list_with_revision`]) and then watches from R ([`Store::watch_from`])
//! sees every later change exactly once, in commit order: no gap, no duplicate.
//!
//! # Leases
//! A lease ([`Store::grant_lease`]) lives for its TTL unless kept alive ([`Store::keep_alive`],
//! or [`LeaseKeeper`] which does it in the background). Keys written with
//! [`Txn::put_leased`] are attached to it; when the lease expires or is revoked the store deletes
//! them all in one revision, and watchers see the deletions. A later plain put detaches a key.
//!
//! | backend | a lease lives | on expiry |
//! |---|---|---|
//! | etcd | in the cluster, across client and server restarts, until its TTL runs out without a keep-alive | etcd deletes the keys |
//! | memory | in this process: a timer per lease | the store deletes the keys (one commit) |
//! | redb | in this process, like memory; attachments are on disk | same; and keys still attached when the store is opened again are deleted at open, since every lease died with the process that granted it |
//!
//! # Local and cluster stores
//! [`Store::is_cluster`] tells a store shared by every host (etcd) from a host's own (redb,
//! memory): the controller keeps global-scope state in the former. A driver sees either only
//! through its own key prefix ([`ScopedStore`]).

mod keeper;
pub mod local;
mod memory;
mod scoped;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cnm_types::ErrorKind;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use keeper::{LeaseKeeper, LeaseLost};
pub use memory::MemoryStore;
pub use scoped::ScopedStore;

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
    /// The key must not exist (create). On etcd: `create_revision == 0`.
    Absent,
    /// The key must exist at exactly this version (compare-and-swap). On etcd:
    /// `mod_revision == version`.
    Version(u64),
}

impl Expect {
    /// Checks the expectation against the key's current version (`None`: no key), with the
    /// wording every backend uses: `expected version 3, found version 4`.
    pub fn check(self, key: &str, current: Option<u64>) -> Result<(), StoreError> {
        let ok = match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current == Some(v),
        };
        if ok {
            return Ok(());
        }
        let expected = match self {
            Expect::Any => "anything".to_owned(),
            Expect::Absent => describe(None),
            Expect::Version(v) => describe(Some(v)),
        };
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            found: describe(current),
        })
    }
}

/// The id of a lease granted by a store ([`Store::grant_lease`]). Shown in hex, as `etcdctl` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(i64);

impl LeaseId {
    /// A lease id as the store issued it.
    pub const fn new(id: i64) -> Self {
        Self(id)
    }

    /// The raw id.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease: its id and the TTL the store granted (etcd may round it up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The id.
    pub id: LeaseId,
    /// How long the lease lives without a keep-alive.
    pub ttl: Duration,
}

/// One operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key` if `expect` holds. A key attached to a lease is detached.
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
    /// Writes `value` at `key` if `expect` holds, attached to `lease`: the store deletes the key
    /// when the lease expires or is revoked. An unknown or expired lease refuses the whole
    /// transaction ([`StoreError::LeaseNotFound`]).
    PutLeased {
        /// The key.
        key: String,
        /// The encoded value.
        value: Vec<u8>,
        /// The expectation.
        expect: Expect,
        /// The lease the key lives under.
        lease: LeaseId,
    },
    /// Writes nothing: the transaction applies only if `expect` holds for `key` (etcd's compare
    /// without a write). What guards a write on one key by the state of another: a host claims
    /// an address block only while the network record is at the version it knows, so a delete
    /// that changed the record first can never miss the claim.
    Check {
        /// The key.
        key: String,
        /// The expectation.
        expect: Expect,
    },
}

impl TxnOp {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. }
            | Self::Delete { key, .. }
            | Self::PutLeased { key, .. }
            | Self::Check { key, .. } => key,
        }
    }

    /// The operation's expectation.
    pub fn expect(&self) -> Expect {
        match self {
            Self::Put { expect, .. }
            | Self::Delete { expect, .. }
            | Self::PutLeased { expect, .. }
            | Self::Check { expect, .. } => *expect,
        }
    }
}

/// Several writes applied atomically: all expectations hold and every write lands, or none does.
///
/// Portable transactions name each key at most once: the local stores apply repeated keys in
/// order (a later op sees the earlier one), etcd refuses them ([`StoreError::Unsupported`]).
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

    /// Adds a put of an encoded value.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>, expect: Expect) -> Self {
        self.ops.push(TxnOp::Put {
            key: key.into(),
            value,
            expect,
        });
        self
    }

    /// Adds a put of an encoded value attached to `lease`.
    pub fn put_leased(
        mut self,
        key: impl Into<String>,
        value: Vec<u8>,
        expect: Expect,
        lease: LeaseId,
    ) -> Self {
        self.ops.push(TxnOp::PutLeased {
            key: key.into(),
            value,
            expect,
            lease,
        });
        self
    }

    /// Adds a put of a JSON-encoded record.
    pub fn put_json<T: Serialize>(
        self,
        key: impl Into<String>,
        value: &T,
        expect: Expect,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(self.put(key, value, expect))
    }

    /// Adds a put of a JSON-encoded record attached to `lease`.
    pub fn put_json_leased<T: Serialize>(
        self,
        key: impl Into<String>,
        value: &T,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(self.put_leased(key, value, expect, lease))
    }

    /// Adds a check that writes nothing: the transaction applies only if `expect` holds for
    /// `key` ([`TxnOp::Check`]).
    pub fn check(mut self, key: impl Into<String>, expect: Expect) -> Self {
        self.ops.push(TxnOp::Check {
            key: key.into(),
            expect,
        });
        self
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

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The key was written.
    Put {
        /// The key.
        key: String,
        /// The new value and its version.
        value: Versioned<Vec<u8>>,
    },
    /// The key was removed (deleted, or its lease expired or was revoked).
    Delete {
        /// The key.
        key: String,
        /// The revision of the removal.
        version: u64,
    },
    /// The store no longer has the history the watch needs (it was compacted past the revision
    /// the watch resumes from), so changes may have been missed. The watch ends after this event:
    /// list again ([`Store::list_with_revision`]) and watch from the listing's revision.
    Resync {
        /// The oldest revision the store still has history after.
        compacted: u64,
    },
}

impl WatchEvent {
    /// The key the event is about (empty for [`WatchEvent::Resync`]).
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key, .. } => key,
            Self::Resync { .. } => "",
        }
    }

    /// The revision of the change (for [`WatchEvent::Resync`], the compaction revision).
    pub fn revision(&self) -> u64 {
        match self {
            Self::Put { value, .. } => value.version,
            Self::Delete { version, .. } => *version,
            Self::Resync { compacted } => *compacted,
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

    /// The next change, or `None` when the watch has ended (the store is gone, or after a
    /// [`WatchEvent::Resync`]).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// A change if one is already queued.
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }
}

/// Every key under a prefix, sorted by key, as of one store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The store revision the listing was read at: [`Store::watch_from`] this revision to see
    /// every later change.
    pub revision: u64,
    /// The keys and their versioned values.
    pub entries: Vec<(String, Versioned<Vec<u8>>)>,
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
    #[error("failed to open the {backend} store in {path}: {source}")]
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
    #[error("store backend {backend} failed to {op}: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it was doing.
        op: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The lease does not exist (any more): it expired or was revoked, and its keys are gone.
    /// Nothing of the operation was written.
    #[error("store lease {lease} has expired or was revoked")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// The backend does not offer this (a store written before the operation existed, or a
    /// transaction shape its server refuses).
    #[error("store backend {backend} does not support {what}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// What was asked.
        what: String,
    },
    /// An argument is out of range; nothing was done.
    #[error("invalid store {field} {value:?}: {reason}")]
    Invalid {
        /// Which argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
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
            Self::LeaseNotFound { .. } => ErrorKind::NotFound,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::Invalid { .. } => ErrorKind::InvalidInput,
        }
    }

    /// [`StoreError::Unsupported`] for a backend that does not implement `what`.
    pub fn unsupported(backend: &'static str, what: impl Into<String>) -> Self {
        Self::Unsupported {
            backend,
            what: what.into(),
        }
    }
}

fn describe(v: Option<u64>) -> String {
    match v {
        Some(v) => format!("version {v}"),
        None => "no key".to_owned(),
    }
}

/// Checks a lease TTL the way every backend does: at least a millisecond, at most a year.
pub fn check_lease_ttl(ttl: Duration) -> Result<(), StoreError> {
    const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
    if ttl < Duration::from_millis(1) || ttl > MAX {
        return Err(StoreError::Invalid {
            field: "lease TTL",
            value: format!("{ttl:?}"),
            reason: "must be between 1ms and 365 days",
        });
    }
    Ok(())
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
/// change under their prefix in commit order. The module documentation lists where backends
/// differ (leases' lifetime, repeated keys in one transaction).
///
/// The methods after [`Store::delete`] came with the cluster store; each has a default that
/// refuses with [`StoreError::Unsupported`], so a store written before them (a test's wrapper)
/// still compiles and keeps working for everything else.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The backend's name (`memory`, `redb`, `etcd`, …).
    fn backend(&self) -> &'static str;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError>;

    /// Every key under `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError>;

    /// Applies a transaction atomically; returns the revision it was committed at.
    ///
    /// A transaction that writes something gets a new revision. One that writes nothing (no ops,
    /// or only deletes of missing keys) gets a new revision from the local stores and the
    /// current one from etcd; nobody may rely on either.
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError>;

    /// Watches changes under `prefix` from now on.
    ///
    /// For a cluster store "now" is the latest revision this client has seen: changes committed
    /// by other clients just before the call may be delivered too. Use
    /// [`Store::list_with_revision`] and [`Store::watch_from`] for an exact hand-over.
    fn watch(&self, prefix: &str) -> Result<Watch, StoreError>;

    /// Writes one key if `expect` holds; returns its new version.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StoreError> {
        self.commit(Txn::new().put(key, value, expect)).await
    }

    /// Removes one key if `expect` holds.
    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StoreError> {
        self.commit(Txn::new().delete(key, expect)).await?;
        Ok(())
    }

    /// Whether this store is shared by every host of a cluster (etcd) rather than one host's own
    /// (redb, memory): the controller keeps global-scope state in a cluster store.
    fn is_cluster(&self) -> bool {
        false
    }

    /// Every key under `prefix`, sorted by key, with the revision the listing was read at.
    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        let _ = prefix;
        Err(StoreError::unsupported(
            self.backend(),
            "listing at a revision",
        ))
    }

    /// Watches changes under `prefix` committed after revision `after`: every one of them
    /// exactly once, in commit order, then every later one as it happens. If the store no longer
    /// has the history back to `after`, the watch delivers [`WatchEvent::Resync`] and ends.
    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let _ = (prefix, after);
        Err(StoreError::unsupported(
            self.backend(),
            "watching from a revision",
        ))
    }

    /// Grants a lease that lives `ttl` unless kept alive. The store may grant a longer TTL
    /// (etcd rounds up to whole seconds and to its minimum); the returned [`Lease`] says which.
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let _ = ttl;
        Err(StoreError::unsupported(self.backend(), "leases"))
    }

    /// Renews a lease for its whole TTL from now. [`StoreError::LeaseNotFound`] when it has
    /// already expired or was revoked (its keys are gone).
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let _ = lease;
        Err(StoreError::unsupported(self.backend(), "leases"))
    }

    /// Revokes a lease now: its keys are deleted in one revision. [`StoreError::LeaseNotFound`]
    /// when it does not exist.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let _ = lease;
        Err(StoreError::unsupported(self.backend(), "leases"))
    }

    /// Writes one key attached to `lease` if `expect` holds; returns its new version.
    async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: Expect,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        self.commit(Txn::new().put_leased(key, value, expect, lease))
            .await
    }
}

/// Reads and decodes a JSON record.
pub async fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(v) => Ok(Some(decode(key, v)?)),
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
            let v = decode(&key, v)?;
            Ok((key, v))
        })
        .collect()
}

fn decode<T: DeserializeOwned>(
    key: &str,
    v: Versioned<Vec<u8>>,
) -> Result<Versioned<T>, StoreError> {
    let value = serde_json::from_slice(&v.value).map_err(|source| StoreError::Decode {
        key: key.to_owned(),
        source,
    })?;
    Ok(Versioned {
        version: v.version,
        value,
    })
}
