//! The embedded store: one redb file, every commit durable before it returns.
//!
//! Layout: table `kv` maps each key to `(version, value)`; table `meta` holds the store revision
//! under `revision`, written in the same redb transaction as the data so that the two can never
//! disagree after a crash. A [`Txn`] is one redb write transaction: each op's expectation is
//! checked against the state as the earlier ops of the same transaction left it, and the first
//! failure aborts the whole redb transaction, so nothing of it lands.
//!
//! Leases live in this process ([`cnm_core::store::local::LeaseTable`], a timer task per lease);
//! which key is attached to which lease is on disk (table `leased`), in the same redb
//! transaction as the key, so that a store opened again deletes every key still attached (one
//! commit at open): no lease outlives the process that granted it. Lease ids come from a counter
//! in `meta` (`next_lease`), so one database never issues an id twice.
//!
//! Watch history ([`Store::watch_from`]) is in memory, from the revision at open: a watch from an
//! older revision gets [`WatchEvent::Resync`], as a watcher of a restarted process would list
//! again anyway.
//!
//! redb is synchronous, so every call runs on tokio's blocking pool. Commits are serialised by a
//! writer mutex that is held from `begin_write` until the watchers have been told, which is what
//! keeps notifications in commit order. (redb would serialise the write transactions anyway; a
//! dedicated writer thread batching several `Txn`s per fsync was left out until a workload needs
//! it.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cnm_core::store::local::{ChangeLog, LeaseTable};
use cnm_core::store::{
    Lease, LeaseId, Listing, Store, StoreError, Txn, TxnOp, Versioned, Watch, WatchEvent,
    check_lease_ttl,
};
use redb::backends::FileBackend;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::{RedbStoreError, StateDirLock};

/// The name of the database file inside the state directory.
pub const DB_FILE: &str = "state.redb";

const BACKEND: &str = "redb";
const KV: TableDefinition<'static, &str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// Key → the lease it is attached to (absent: not leased).
const LEASED: TableDefinition<'static, &str, i64> = TableDefinition::new("leased");
const REVISION: &str = "revision";
/// The next lease id to issue (absent: 1).
const NEXT_LEASE: &str = "next_lease";
/// redb's page cache (read cache and write buffer together). redb's default is 1 GiB, and the
/// cache keeps every page it reads or writes until it reaches that size, so it grew with the
/// data: at 10,000 endpoints it held the whole file in cnmd's heap (issue 15: resident memory
/// under 30 MB). The kernel's page cache already keeps the file's hot pages; reads past this
/// cache are `pread`s that hit it. 1 MiB (256 pages) holds the tables' branch pages and a
/// commit's dirty ones (a commit that dirties more writes the excess early).
pub const REDB_CACHE_BYTES: usize = 1024 * 1024;
/// Events kept for [`Store::watch_from`]. Each keeps its record's bytes (about 1 KiB for an
/// endpoint or a sandbox), so cnm-core's default of 4,096 held 3-4 MB of cnmd's heap once 1,400
/// containers had attached (issue 15). Local watchers resume from the revision of a listing
/// they have just read (cnm-core's facts), a few commits back at most; one further behind gets
/// [`WatchEvent::Resync`] and lists again.
pub const REDB_HISTORY: usize = 512;

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
    /// Held across a whole commit, including telling the watchers, and across lease grants and
    /// ends. Lock order: `writer`, then `leases` or `log` (never both, never across I/O).
    writer: Mutex<()>,
    /// The state-directory lock, when the store was opened with [`RedbStore::open_exclusive`]:
    /// held for as long as the store lives.
    lock: Option<StateDirLock>,
    /// The watchers and the history since open.
    log: Mutex<ChangeLog>,
    /// This process's leases.
    leases: Mutex<LeaseTable>,
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
            .and_then(|backend| {
                Database::builder()
                    .set_cache_size(REDB_CACHE_BYTES)
                    .create_with_backend(backend)
            });
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
        // Create every table up front so that readers can always open them (`leased` is new
        // since the first release; opening an older file adds it).
        let wtx = db
            .begin_write()
            .map_err(|e| init("begin the table set-up transaction")(e.into()))?;
        wtx.open_table(KV)
            .map_err(|e| init("create table kv")(e.into()))?;
        wtx.open_table(META)
            .map_err(|e| init("create table meta")(e.into()))?;
        wtx.open_table(LEASED)
            .map_err(|e| init("create table leased")(e.into()))?;
        wtx.commit()
            .map_err(|e| init("commit the table set-up transaction")(e.into()))?;
        // Every lease died with the process that granted it: its keys go now, in one commit,
        // before anyone can read or watch them.
        let (revision, next_lease, swept) =
            sweep_orphaned_leases(&db).map_err(init("delete the keys of expired leases"))?;
        let store = RedbStore {
            inner: Arc::new(Inner {
                path: path.clone(),
                db,
                writer: Mutex::new(()),
                lock,
                log: Mutex::new(ChangeLog::new(revision, REDB_HISTORY)),
                leases: Mutex::new(LeaseTable::new(next_lease)),
            }),
        };
        tracing::info!(path = %store.inner.path.display(), revision, swept, "store opened");
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

fn unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        // The guarded state is on disk, in redb's own transactions; poisoning protects nothing.
        unpoisoned(&self.writer)
    }

    fn lock_log(&self) -> MutexGuard<'_, ChangeLog> {
        // The log only gains whole commits and whole watchers; a panic elsewhere cannot tear one.
        unpoisoned(&self.log)
    }

    fn lock_leases(&self) -> MutexGuard<'_, LeaseTable> {
        // Each lease-table call leaves it whole; what is on disk does not depend on it.
        unpoisoned(&self.leases)
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
        // One read transaction: the revision and the keys are of the same snapshot.
        let meta = rtx.open_table(META).map_err(backend(&op()))?;
        let revision = meta
            .get(REVISION)
            .map_err(backend(&op()))?
            .map(|g| g.value())
            .unwrap_or(0);
        let kv = rtx.open_table(KV).map_err(backend(&op()))?;
        let mut entries = Vec::new();
        for entry in kv.range(prefix..).map_err(backend(&op()))? {
            let (k, v) = entry.map_err(backend(&op()))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (version, value) = v.value();
            entries.push((
                key.to_owned(),
                Versioned {
                    version,
                    value: value.to_vec(),
                },
            ));
        }
        Ok(Listing { revision, entries })
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut wtx = self
            .db
            .begin_write()
            .map_err(backend("begin a write transaction"))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(backend("set commit durability"))?;
        Ok(wtx)
    }

    fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let _writer = self.lock_writer();
        // The leases this transaction attaches keys to must be live now. Only `end_lease` forgets
        // a lease, and it waits for the writer lock, so they are still there to attach to after
        // the write; the lease table is not held across the fsync (keep-alives would wait).
        let live: HashSet<LeaseId> = {
            let leases = self.lock_leases();
            let now = Instant::now();
            txn.ops
                .iter()
                .filter_map(|op| match op {
                    TxnOp::PutLeased { lease, .. } if leases.is_live(*lease, now) => Some(*lease),
                    _ => None,
                })
                .collect()
        };
        let wtx = self.begin_write()?;
        let (revision, events, attachments) = match apply(&wtx, txn, &live) {
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
        {
            let mut leases = self.lock_leases();
            for (key, lease) in attachments {
                leases.attach(&key, lease);
            }
        }
        self.lock_log().publish(revision, events);
        Ok(revision)
    }

    /// A watch of `prefix` after revision `after` (`None`: from now on).
    fn watch(&self, prefix: &str, after: Option<u64>) -> Watch {
        // Under the writer lock no commit is half-published while the watcher joins.
        let _writer = self.lock_writer();
        let mut log = self.lock_log();
        match after {
            Some(after) => log.watch_from(prefix, after),
            None => log.watch(prefix),
        }
    }

    /// Issues a lease id (persisting the next one first, so that no id is issued twice) and
    /// starts the lease.
    fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        // Grants are serialised by the writer lock, so the id read here is the one `grant` below
        // issues.
        let _writer = self.lock_writer();
        let id = self.lock_leases().next_id();
        let next = u64::try_from(id).unwrap_or(u64::MAX).saturating_add(1);
        let wtx = self.begin_write()?;
        {
            let mut meta = wtx.open_table(META).map_err(backend("open table meta"))?;
            meta.insert(NEXT_LEASE, next)
                .map_err(backend("write the next lease id"))?;
        }
        wtx.commit().map_err(backend("commit a lease grant"))?;
        Ok(self.lock_leases().grant(ttl, Instant::now()))
    }

    /// Forgets `lease` and deletes its keys in one commit (no commit if it had none); says
    /// whether the lease was still live. A failed commit keeps the lease for another try.
    fn end_lease(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let _writer = self.lock_writer();
        let (live, keys) = {
            let leases = self.lock_leases();
            let live = leases.is_live(lease, Instant::now());
            match leases.keys(lease) {
                Some(keys) => (live, keys.clone()),
                None => return Ok(false),
            }
        };
        if keys.is_empty() {
            self.lock_leases().remove(lease);
            return Ok(live);
        }
        let wtx = self.begin_write()?;
        let revision = delete_keys(&wtx, keys.iter().map(String::as_str))?;
        wtx.commit()
            .map_err(backend(&format!("commit revision {revision}")))?;
        self.lock_leases().remove(lease);
        let events = keys
            .into_iter()
            .map(|key| WatchEvent::Delete {
                key,
                version: revision,
            })
            .collect();
        self.lock_log().publish(revision, events);
        Ok(live)
    }
}

/// The tables of a write transaction that makes one new revision, and that revision (the
/// stored one plus one); [`NextRevision::commit`] records it.
struct NextRevision<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    kv: redb::Table<'t, &'static str, (u64, &'static [u8])>,
    leased: redb::Table<'t, &'static str, i64>,
    revision: u64,
}

impl<'t> NextRevision<'t> {
    fn open(wtx: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta = wtx.open_table(META).map_err(backend("open table meta"))?;
        let kv = wtx.open_table(KV).map_err(backend("open table kv"))?;
        let leased = wtx
            .open_table(LEASED)
            .map_err(backend("open table leased"))?;
        let revision = meta
            .get(REVISION)
            .map_err(backend("read the store revision"))?
            .map(|g| g.value())
            .unwrap_or(0)
            + 1;
        Ok(Self {
            meta,
            kv,
            leased,
            revision,
        })
    }

    /// Removes `key` and its lease attachment; says whether the key was there.
    fn remove(&mut self, key: &str) -> Result<bool, StoreError> {
        let removed = self
            .kv
            .remove(key)
            .map_err(backend(&format!("remove key {key:?}")))?
            .is_some();
        self.leased
            .remove(key)
            .map_err(backend(&format!("detach key {key:?}")))?;
        Ok(removed)
    }

    /// Records the new revision (the caller still commits the transaction).
    fn commit(mut self) -> Result<(), StoreError> {
        self.meta
            .insert(REVISION, self.revision)
            .map_err(backend("write the store revision"))?;
        Ok(())
    }
}

/// What a checked and applied transaction leaves to do after its redb commit: its revision,
/// its events, and the lease attachments to record (`None`: detached).
type Applied = (u64, Vec<WatchEvent>, Vec<(String, Option<LeaseId>)>);

/// Checks and applies every op of `txn` inside `wtx` (`live`: the leases that may be attached
/// to); the caller aborts `wtx` on error.
fn apply(wtx: &WriteTransaction, txn: Txn, live: &HashSet<LeaseId>) -> Result<Applied, StoreError> {
    let mut next = NextRevision::open(wtx)?;
    let revision = next.revision;
    let mut events = Vec::with_capacity(txn.ops.len());
    let mut attachments = Vec::new();
    for op in txn.ops {
        let key = op.key();
        // Reads inside the write transaction see the earlier ops of this same transaction.
        let current = next
            .kv
            .get(key)
            .map_err(backend(&format!("read key {key:?}")))?
            .map(|g| g.value().0);
        op.expect().check(key, current)?;
        let (key, value, lease) = match op {
            TxnOp::Put { key, value, .. } => (key, value, None),
            TxnOp::PutLeased {
                key, value, lease, ..
            } => {
                if !live.contains(&lease) {
                    return Err(StoreError::LeaseNotFound { lease });
                }
                (key, value, Some(lease))
            }
            TxnOp::Check { .. } => continue,
            TxnOp::Delete { key, .. } => {
                let removed = next.remove(&key)?;
                attachments.push((key.clone(), None));
                if removed {
                    events.push(WatchEvent::Delete {
                        key,
                        version: revision,
                    });
                }
                continue;
            }
        };
        next.kv
            .insert(key.as_str(), (revision, value.as_slice()))
            .map_err(backend(&format!("write key {key:?}")))?;
        match lease {
            Some(lease) => next.leased.insert(key.as_str(), lease.get()).map(drop),
            None => next.leased.remove(key.as_str()).map(drop),
        }
        .map_err(backend(&format!("record the lease of key {key:?}")))?;
        attachments.push((key.clone(), lease));
        events.push(WatchEvent::Put {
            key,
            value: Versioned {
                version: revision,
                value,
            },
        });
    }
    next.commit()?;
    Ok((revision, events, attachments))
}

/// Deletes `keys` (and their lease attachments) in `wtx` as one new revision, which it returns.
/// The caller commits.
fn delete_keys<'k>(
    wtx: &WriteTransaction,
    keys: impl IntoIterator<Item = &'k str>,
) -> Result<u64, StoreError> {
    let mut next = NextRevision::open(wtx)?;
    let revision = next.revision;
    for key in keys {
        next.remove(key)?;
    }
    next.commit()?;
    Ok(revision)
}

/// At open: deletes every key still attached to a lease, in one commit. Returns the revision,
/// the next lease id and how many keys went.
fn sweep_orphaned_leases(db: &Database) -> Result<(u64, i64, usize), redb::Error> {
    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    let revision = meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0);
    let next_lease = meta.get(NEXT_LEASE)?.map(|g| g.value()).unwrap_or(1);
    let next_lease = i64::try_from(next_lease).unwrap_or(i64::MAX);
    let leased = rtx.open_table(LEASED)?;
    let mut keys = Vec::new();
    for entry in leased.iter()? {
        keys.push(entry?.0.value().to_owned());
    }
    drop((leased, meta, rtx));
    if keys.is_empty() {
        return Ok((revision, next_lease, 0));
    }
    let mut wtx = db.begin_write()?;
    wtx.set_durability(Durability::Immediate)?;
    {
        let mut meta = wtx.open_table(META)?;
        let mut kv = wtx.open_table(KV)?;
        let mut leased = wtx.open_table(LEASED)?;
        for key in &keys {
            kv.remove(key.as_str())?;
            leased.remove(key.as_str())?;
        }
        meta.insert(REVISION, revision + 1)?;
    }
    wtx.commit()?;
    Ok((revision + 1, next_lease, keys.len()))
}

/// The runtime a lease's timer runs on: the caller's.
fn expiry_runtime() -> Result<Handle, StoreError> {
    Handle::try_current().map_err(|source| StoreError::Backend {
        backend: BACKEND,
        op: "start a lease timer (leases need a tokio runtime)".to_owned(),
        source: Box::new(source),
    })
}

/// Ends `lease` when its deadline passes without a keep-alive; stops when the lease is gone
/// (revoked) or the store is dropped.
fn spawn_expiry(runtime: &Handle, inner: Weak<Inner>, lease: LeaseId, first: Instant) {
    runtime.spawn(async move {
        let mut deadline = first;
        loop {
            tokio::time::sleep_until(deadline).await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let current = strong.lock_leases().deadline(lease);
            match current {
                None => return,
                Some(later) if later > Instant::now() => {
                    deadline = later;
                    continue;
                }
                Some(_) => {}
            }
            tracing::debug!(%lease, "redb store lease expired");
            match tokio::task::spawn_blocking(move || strong.end_lease(lease)).await {
                Ok(Ok(_)) => return,
                // The keys stay attached (on disk too); try again shortly, and at the latest
                // the next open deletes them.
                Ok(Err(e)) => {
                    tracing::warn!(%lease, error = %e, "failed to delete the keys of an expired lease");
                    deadline = Instant::now() + Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(%lease, error = %e, "lease expiry task failed");
                    return;
                }
            }
        }
    });
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
        Ok(self.list_with_revision(prefix).await?.entries)
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        // Once spawned, the commit runs to the end even if the caller stops waiting: a cancelled
        // caller cannot leave half a transaction, only an unobserved whole one.
        // The span covers the hand-over to the blocking thread and the fsync: what a caller
        // waits for (benchmarks add these spans up per phase).
        tracing::Instrument::instrument(
            self.blocking("run a commit", move |inner| inner.commit(txn)),
            tracing::debug_span!("store_commit"),
        )
        .await
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        Ok(self.inner.watch(prefix, None))
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking("run a list", move |inner| inner.list(&prefix))
            .await
    }

    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        Ok(self.inner.watch(prefix, Some(after)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_ttl(ttl)?;
        let runtime = expiry_runtime()?;
        let lease = self
            .blocking("grant a lease", move |inner| inner.grant(ttl))
            .await?;
        spawn_expiry(
            &runtime,
            Arc::downgrade(&self.inner),
            lease.id,
            Instant::now() + lease.ttl,
        );
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lock_leases().keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let live = self
            .blocking("revoke a lease", move |inner| inner.end_lease(lease))
            .await?;
        if live {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound { lease })
        }
    }
}
