//! The embedded store: one redb file, every commit durable before it returns.
//!
//! Layout: table `kv` maps each key to `(version, value)`; table `meta` holds the store revision
//! under `revision`, written in the same redb transaction as the data so that the two can never
//! disagree after a crash. A [`Txn`] is one redb write transaction: each op's expectation is
//! checked against the state as the earlier ops of the same transaction left it, and the first
//! failure aborts the whole redb transaction, so nothing of it lands.
//!
//! redb is synchronous, so every call runs on tokio's blocking pool. Commits are serialised by a
//! writer mutex that is held from `begin_write` until the watchers have been told, which is what
//! keeps notifications in commit order. (redb would serialise the write transactions anyway; a
//! dedicated writer thread batching several `Txn`s per fsync was left out until a workload needs
//! it.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cnm_core::store::{Expect, Store, StoreError, Txn, TxnOp, Versioned, Watch, WatchEvent};
use redb::backends::FileBackend;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::watch::Watchers;
use crate::{RedbStoreError, StateDirLock};

/// The name of the database file inside the state directory.
pub const DB_FILE: &str = "state.redb";

const BACKEND: &str = "redb";
const KV: TableDefinition<'static, &str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// What `list` returns: keys in order with their versioned values.
type Listing = Vec<(String, Versioned<Vec<u8>>)>;

/// The embedded, crash-safe store: `<state_dir>/state.redb`.
///
/// It has exactly [`cnm_core::store::MemoryStore`]'s semantics, and keeps them across restarts
/// and crashes: a commit is on disk when [`Store::commit`] returns, and revisions keep growing
/// from where the last process stopped.
///
/// Opening does not take the [`crate::StateDirLock`]: the daemon takes it first, so that a second
/// daemon is refused with the holder's pid. redb also refuses a second open of the same file
/// ([`RedbStoreError::AlreadyOpen`]).
#[derive(Debug, Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    db: Database,
    /// Held across a whole commit, including telling the watchers.
    writer: Mutex<()>,
    /// The state-directory lock, when the store was opened with [`RedbStore::open_exclusive`]:
    /// held for as long as the store lives.
    lock: Option<StateDirLock>,
    watchers: Watchers,
}

/// How long [`RedbStore::open_exclusive`] waits for a held state-directory lock before it
/// refuses (see [`StateDirLock::acquire_within`]).
pub const RESTART_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

impl RedbStore {
    /// Opens (or creates) the store in `state_dir`, creating the directory if needed.
    ///
    /// Blocking: opening may repair the file after a crash. Call it before serving requests, or on
    /// the blocking pool.
    pub fn open(state_dir: &Path) -> Result<RedbStore, RedbStoreError> {
        Self::open_with(state_dir, None)
    }

    fn open_with(
        state_dir: &Path,
        lock: Option<StateDirLock>,
    ) -> Result<RedbStore, RedbStoreError> {
        crate::private::create_dir(state_dir).map_err(|source| RedbStoreError::CreateDir {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(DB_FILE);
        // Created 0600 by our own open (redb's would take the umask's 0644).
        let opened = crate::private::open_rw(&path)
            .map_err(DatabaseError::from)
            .and_then(FileBackend::new)
            .and_then(|backend| Database::builder().create_with_backend(backend));
        let db = opened.map_err(|source| match source {
            DatabaseError::DatabaseAlreadyOpen => RedbStoreError::AlreadyOpen {
                path: path.clone(),
                source: Box::new(source),
            },
            source => RedbStoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            },
        })?;
        let init = |op: &'static str| {
            let path = path.clone();
            move |source: redb::Error| RedbStoreError::Init {
                op,
                path,
                source: Box::new(source),
            }
        };
        // Create both tables up front so that readers can always open them.
        let wtx = db
            .begin_write()
            .map_err(|e| init("begin the table set-up transaction")(e.into()))?;
        wtx.open_table(KV)
            .map_err(|e| init("create table kv")(e.into()))?;
        wtx.open_table(META)
            .map_err(|e| init("create table meta")(e.into()))?;
        wtx.commit()
            .map_err(|e| init("commit the table set-up transaction")(e.into()))?;
        let store = RedbStore {
            inner: Arc::new(Inner {
                path: path.clone(),
                db,
                writer: Mutex::new(()),
                watchers: Watchers::default(),
                lock,
            }),
        };
        let revision = store
            .inner
            .revision()
            .map_err(init("read the store revision"))?;
        tracing::info!(path = %store.inner.path.display(), revision, "store opened");
        Ok(store)
    }

    /// Takes the state-directory lock ([`StateDirLock::acquire_within`], waiting up to
    /// [`RESTART_PATIENCE`] for a crashed holder's orphaned helper to let go), then opens the store, which holds the
    /// lock until it is dropped: the one process that owns the state directory is the one
    /// whose store is open on it. Refused, naming the lock file and its holder's pid, when
    /// another process (or another open in this one) holds it.
    ///
    /// Blocking, like [`RedbStore::open`].
    pub fn open_exclusive(state_dir: &Path) -> Result<RedbStore, RedbStoreError> {
        let lock = StateDirLock::acquire_within(state_dir, RESTART_PATIENCE)?;
        Self::open_with(state_dir, Some(lock))
    }

    /// The state-directory lock this store holds, if it was opened with
    /// [`RedbStore::open_exclusive`].
    pub fn lock(&self) -> Option<&StateDirLock> {
        self.inner.lock.as_ref()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|source| StoreError::Backend {
                backend: BACKEND,
                op: op.to_owned(),
                source: Box::new(source),
            })?
    }
}

/// Maps a redb failure to the store's error, naming what was being done.
fn backend<E: Into<redb::Error>>(op: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |source| StoreError::Backend {
        backend: BACKEND,
        op: op.to_owned(),
        source: Box::new(source.into()),
    }
}

impl Inner {
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded state is on disk, in redb's own transactions; poisoning protects nothing.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last committed revision.
    fn revision(&self) -> Result<u64, redb::Error> {
        let rtx = self.db.begin_read()?;
        let meta = rtx.open_table(META)?;
        Ok(meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0))
    }

    fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        let op = || format!("read key {key:?}");
        let rtx = self.db.begin_read().map_err(backend(&op()))?;
        let kv = rtx.open_table(KV).map_err(backend(&op()))?;
        let found = kv.get(key).map_err(backend(&op()))?;
        Ok(found.map(|g| {
            let (version, value) = g.value();
            Versioned {
                version,
                value: value.to_vec(),
            }
        }))
    }

    fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let op = || format!("list keys under {prefix:?}");
        let rtx = self.db.begin_read().map_err(backend(&op()))?;
        let kv = rtx.open_table(KV).map_err(backend(&op()))?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..).map_err(backend(&op()))? {
            let (k, v) = entry.map_err(backend(&op()))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (version, value) = v.value();
            out.push((
                key.to_owned(),
                Versioned {
                    version,
                    value: value.to_vec(),
                },
            ));
        }
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let _writer = self.lock_writer();
        let mut wtx = self
            .db
            .begin_write()
            .map_err(backend("begin a write transaction"))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(backend("set commit durability"))?;
        let applied = apply(&wtx, txn);
        let (revision, events) = match applied {
            Ok(done) => done,
            Err(error) => {
                if let Err(abort) = wtx.abort() {
                    // The transaction is discarded either way; the abort failure is only worth
                    // knowing about next to the error the caller gets.
                    tracing::warn!(%abort, %error, "failed to abort a refused store transaction");
                }
                return Err(error);
            }
        };
        wtx.commit()
            .map_err(backend(&format!("commit revision {revision}")))?;
        self.watchers.publish(&events);
        Ok(revision)
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        // Under the writer lock no commit is half-published while the watcher joins.
        let _writer = self.lock_writer();
        Ok(self.watchers.register(prefix))
    }
}

/// Checks and applies every op of `txn` inside `wtx`; the caller aborts `wtx` on error.
fn apply(wtx: &WriteTransaction, txn: Txn) -> Result<(u64, Vec<WatchEvent>), StoreError> {
    let mut meta = wtx.open_table(META).map_err(backend("open table meta"))?;
    let mut kv = wtx.open_table(KV).map_err(backend("open table kv"))?;
    let revision = meta
        .get(REVISION)
        .map_err(backend("read the store revision"))?
        .map(|g| g.value())
        .unwrap_or(0)
        + 1;
    let mut events = Vec::with_capacity(txn.ops.len());
    for op in txn.ops {
        let (key, expect) = match &op {
            TxnOp::Put { key, expect, .. } | TxnOp::Delete { key, expect } => (key, *expect),
        };
        // Reads inside the write transaction see the earlier ops of this same transaction.
        let current = kv
            .get(key.as_str())
            .map_err(backend(&format!("read key {key:?}")))?
            .map(|g| g.value().0);
        check(key, expect, current)?;
        match op {
            TxnOp::Put { key, value, .. } => {
                kv.insert(key.as_str(), (revision, value.as_slice()))
                    .map_err(backend(&format!("write key {key:?}")))?;
                events.push(WatchEvent::Put {
                    key,
                    value: Versioned {
                        version: revision,
                        value,
                    },
                });
            }
            TxnOp::Delete { key, .. } => {
                let removed = kv
                    .remove(key.as_str())
                    .map_err(backend(&format!("remove key {key:?}")))?
                    .is_some();
                if removed {
                    events.push(WatchEvent::Delete {
                        key,
                        version: revision,
                    });
                }
            }
        }
    }
    meta.insert(REVISION, revision)
        .map_err(backend("write the store revision"))?;
    Ok((revision, events))
}

/// The expectation check, with the same wording as `MemoryStore`'s.
fn check(key: &str, expect: Expect, current: Option<u64>) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
    };
    if ok {
        return Ok(());
    }
    let describe = |v: Option<u64>| match v {
        Some(v) => format!("version {v}"),
        None => "no key".to_owned(),
    };
    let expected = match expect {
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

#[async_trait]
impl Store for RedbStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        let key = key.to_owned();
        self.blocking("run a read", move |inner| inner.get(&key))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking("run a list", move |inner| inner.list(&prefix))
            .await
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        // Once spawned, the commit runs to the end even if the caller stops waiting: a cancelled
        // caller cannot leave half a transaction, only an unobserved whole one.
        self.blocking("run a commit", move |inner| inner.commit(txn))
            .await
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.inner.watch(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_text_matches_memory_store() {
        let e = check("network/a", Expect::Version(3), Some(4)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "store key \"network/a\" changed concurrently: expected version 3, found version 4"
        );
        let e = check("network/a", Expect::Absent, Some(4)).unwrap_err();
        assert!(
            e.to_string().ends_with("expected no key, found version 4"),
            "{e}"
        );
        assert!(check("x", Expect::Any, None).is_ok());
    }
}
