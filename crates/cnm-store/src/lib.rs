//! State stores for cnm behind [`cnm_core::store::Store`]: the embedded, crash-safe default and
//! the etcd cluster store.
//!
//! **Owns**
//! - [`RedbStore`]: `<state_dir>/state.redb`, with exactly `MemoryStore`'s semantics (store-wide
//!   strictly increasing revisions, all-or-nothing transactions, ordered prefix watches that can
//!   resume from a revision, in-process leases), every commit durable before it returns,
//!   revisions persisted across restarts.
//! - [`StateDirLock`]: one process per state directory (`<state_dir>/lock`, `flock`, holder pid).
//! - [`EtcdStore`] (feature `etcd`, on by default): the store shared by every host of a cluster,
//!   on etcd's transactions (compare on `mod_revision`/`create_revision`), revisions, watches
//!   (re-established after any break without loss or duplicates) and leases, under a
//!   configurable key root ([`EtcdConfig`], from `etcd://HOST:PORT[,HOST:PORT…]`).
//! - The state directory's privacy: files created 0600, a directory it creates 0700.
//!
//! **Does not**
//! - decide what is stored (records and keys belong to cnm-core);
//! - take the state-directory lock in [`RedbStore::open`]: [`RedbStore::open_exclusive`] (and the
//!   controller's default store, registered here as [`cnm_core::store::DefaultStore`] `redb`)
//!   takes [`StateDirLock`] first and holds it as long as the store lives;
//! - decide which state is global: the controller routes global-scope records to a store whose
//!   [`cnm_core::store::Store::is_cluster`] is true;
//! - speak TLS to etcd (plain gRPC only; `etcd-client`'s TLS features are left off).
//!
//! ```
//! use cnm_core::store::{Expect, Store, Txn};
//! use cnm_store::{RedbStore, StateDirLock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let state_dir = dir.path();
//! let _lock = StateDirLock::acquire(state_dir)?; // a second daemon is refused here
//! let store = RedbStore::open(state_dir)?;
//! let v = store.put("network/n1", b"{}".to_vec(), Expect::Absent).await?;
//! let txn = Txn::new()
//!     .put_json("network/n1", &"updated", Expect::Version(v))?
//!     .put_json("endpoint/n1/e1", &"new", Expect::Absent)?;
//! let rev = store.commit(txn).await?; // on disk when this returns
//! assert_eq!(store.get("endpoint/n1/e1").await?.map(|r| r.version), Some(rev));
//! # Ok(())
//! # }
//! ```

mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod lock;
mod private;
mod redb_store;

pub use error::RedbStoreError;
#[cfg(feature = "etcd")]
pub use etcd::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_ROOT, EtcdConfig, EtcdEndpoints,
    EtcdStore, EtcdStoreError, LIST_PAGE, MAX_TXN_OPS,
};
pub use lock::{LOCK_FILE, StateDirLock};
pub use redb_store::{DB_FILE, REDB_CACHE_BYTES, REDB_HISTORY, RESTART_PATIENCE, RedbStore};

/// The name under which the embedded store registers itself as the controller's default.
pub const DEFAULT_STORE_NAME: &str = "redb";

inventory::submit! { cnm_core::store::DefaultStore::new(DEFAULT_STORE_NAME, open_default) }

/// Opens the embedded store as a controller's default: exclusively (see
/// [`RedbStore::open_exclusive`]).
fn open_default(
    state_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn cnm_core::store::Store>, cnm_core::store::StoreError> {
    match RedbStore::open_exclusive(state_dir) {
        Ok(store) => Ok(std::sync::Arc::new(store)),
        Err(e) => Err(cnm_core::store::StoreError::Open {
            backend: DEFAULT_STORE_NAME,
            path: state_dir.to_owned(),
            kind: e.kind(),
            source: Box::new(e),
        }),
    }
}
