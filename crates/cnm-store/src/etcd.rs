//! The cluster store: cnm's [`Store`] on etcd (v3 API over gRPC), shared by every host.
//!
//! How the trait maps onto etcd:
//! - a key `K` is the etcd key `ROOT K` (root `/cnm/` by default), so several clusters can share
//!   one etcd; [`Versioned::version`] is the key's `mod_revision`, and revisions are etcd's own
//!   (store-wide, strictly increasing);
//! - [`Txn`] is one etcd `Txn`: `Expect::Absent` compares `create_revision = 0`,
//!   `Expect::Version(v)` compares `mod_revision = v`; the success branch holds the writes; the
//!   failure branch reads the compared keys, so a refusal names the key and what it found,
//!   exactly as the local stores do. etcd refuses a key twice in one transaction, so this
//!   backend does too ([`StoreError::Unsupported`]), before sending;
//! - listing reads pages of [`LIST_PAGE`] keys, all at the revision of the first page;
//! - watches resume from the last delivered revision after any break (see the `watch` module);
//! - leases are etcd leases (TTL rounded up to whole seconds); keys put with one are deleted by
//!   etcd when it expires, and watchers see the deletions.
//!
//! Every request is bounded by the request timeout; connecting is bounded by the connect
//! timeout and proves etcd answers (a read), so an unreachable etcd is a typed
//! [`EtcdStoreError::Unreachable`] naming the endpoints, not a hang. A request that failed while
//! connecting (never sent) is sent again within its timeout; any other failure is returned. As
//! with any remote store, a write that timed out may or may not have been applied: re-read before
//! retrying (an expectation makes the retry safe, since a CAS cannot apply twice).

mod config;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cnm_core::store::{
    Expect, Lease, LeaseId, Listing, Store, StoreError, Txn, TxnOp, Versioned, Watch,
    check_lease_ttl,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseClient, PutOptions,
    ResponseHeader, TxnOpResponse,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_ROOT, EtcdConfig, EtcdEndpoints,
    EtcdStoreError,
};

const BACKEND: &str = "etcd";
/// The most operations etcd takes in one transaction (its `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;
/// Keys per page when listing.
pub const LIST_PAGE: i64 = 1000;

/// cnm's store on an etcd cluster. Cheap to clone (one connection pool); watches and their
/// reconnects end when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use cnm_core::store::{Expect, Store};
/// use cnm_store::{EtcdConfig, EtcdStore};
///
/// let config = EtcdConfig::new("etcd://127.0.0.1:2379".parse()?).root("/cluster-a/cnm/")?;
/// let store = EtcdStore::connect(config).await?; // a typed `Unreachable` within 2 s otherwise
/// let listing = store.list_with_revision("endpoint/").await?;
/// let mut changes = store.watch_from("endpoint/", listing.revision)?; // nothing missed between
/// let lease = store.grant_lease(Duration::from_secs(15)).await?;
/// store
///     .put_leased("endpoint/host-1/ep1", b"{}".to_vec(), Expect::Absent, lease.id)
///     .await?; // gone 15 s after the host stops renewing the lease
/// # let _ = changes.next().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: EtcdConfig,
    /// The newest revision this client has seen in any answer: what "now" means for
    /// [`Store::watch`].
    seen: Arc<AtomicU64>,
    /// Dropped with the store; every watch task waits on it.
    shutdown: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints.to_string())
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and proves etcd answers (one read under the root), within the connect timeout.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore, EtcdStoreError> {
        let unreachable = |source| EtcdStoreError::Unreachable {
            endpoints: config.endpoints.clone(),
            timeout: config.connect_timeout,
            source,
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            // HTTP/2 pings notice a dead connection that sent no FIN (a cut cable, a frozen
            // host) within a few seconds, so watches re-establish rather than hang.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // Without a leader etcd cannot serve linearisable reads or writes; fail fast.
            .with_require_leader(true);
        let deadline = Instant::now() + config.connect_timeout;
        let client = match tokio::time::timeout_at(
            deadline,
            Client::connect(config.endpoints.urls(), Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(Some(e))),
            Err(_) => return Err(unreachable(None)),
        };
        // The client connects lazily: one read proves that etcd answers.
        let probe = retry_unsent(
            deadline,
            || {
                let mut kv = client.kv_client();
                let root = config.root.clone();
                async move {
                    kv.get(root, Some(GetOptions::new().with_count_only()))
                        .await
                }
            },
            transient,
        );
        let response = match probe.await {
            Some(Ok(response)) => response,
            Some(Err(e)) => return Err(unreachable(Some(e))),
            None => return Err(unreachable(None)),
        };
        let revision = response
            .header()
            .and_then(|h| u64::try_from(h.revision()).ok())
            .unwrap_or(0);
        tracing::info!(endpoints = %config.endpoints, root = %config.root, revision, "connected to the cluster store");
        let (shutdown, _) = tokio::sync::watch::channel(());
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                config,
                seen: Arc::new(AtomicU64::new(revision)),
                shutdown,
            }),
        })
    }

    /// The configuration it was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.config.root)
    }

    /// The store key of an etcd key under the root.
    fn store_key(&self, kv: &KeyValue) -> Result<String, StoreError> {
        kv.key()
            .get(self.inner.config.root.len()..)
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                self.backend_error(
                    "read a key",
                    format!("etcd key {:?} is not UTF-8 under the root", kv.key()).into(),
                )
            })
    }

    fn note(&self, header: Option<&ResponseHeader>) -> u64 {
        let revision = header
            .and_then(|h| u64::try_from(h.revision()).ok())
            .unwrap_or(0);
        self.inner.seen.fetch_max(revision, Ordering::Relaxed);
        revision
    }

    fn backend_error(
        &self,
        op: &str,
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    ) -> StoreError {
        StoreError::Backend {
            backend: BACKEND,
            op: format!("{op} at {}", self.inner.config.endpoints),
            source,
        }
    }

    /// Runs one request within the request timeout, sending it again while it fails before
    /// reaching any etcd (see [`retry_unsent`]); the client's own error is left to the caller to
    /// interpret.
    async fn bounded<T, F, Fut>(
        &self,
        op: &str,
        request: F,
    ) -> Result<Result<T, etcd_client::Error>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.bounded_retrying(op, request, never_sent).await
    }

    /// Like [`EtcdStore::bounded`], also sending the request again after a failure that
    /// `retry` says is safe to retry.
    async fn bounded_retrying<T, F, Fut>(
        &self,
        op: &str,
        request: F,
        retry: fn(&etcd_client::Error) -> bool,
    ) -> Result<Result<T, etcd_client::Error>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.inner.config.request_timeout;
        retry_unsent(Instant::now() + timeout, request, retry)
            .await
            .ok_or_else(|| {
                self.backend_error(
                    op,
                    Box::new(EtcdStoreError::Timeout {
                        endpoints: self.inner.config.endpoints.clone(),
                        timeout,
                    }),
                )
            })
    }

    /// Runs one request within the request timeout.
    async fn call<T, F, Fut>(&self, op: &str, request: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.bounded(op, request)
            .await?
            .map_err(|e| self.backend_error(op, Box::new(e)))
    }

    /// Runs one read within the request timeout. A read changes nothing, so besides a request
    /// that was never sent, one that failed on the way (the connection broke, etcd was busy
    /// electing its leader or did not answer in time) is sent again while time is left.
    async fn read<T, F, Fut>(&self, op: &str, request: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.bounded_retrying(op, request, transient)
            .await?
            .map_err(|e| self.backend_error(op, Box::new(e)))
    }

    /// Runs one request about `lease` on a clone of the lease client, within the request
    /// timeout; a lease etcd does not know is [`StoreError::LeaseNotFound`].
    async fn on_lease<T, F, Fut>(
        &self,
        lease: LeaseId,
        op: &str,
        request: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(LeaseClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let leases = self.inner.client.lease_client();
        match self.bounded(op, || request(leases.clone())).await? {
            Ok(answer) => Ok(answer),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseNotFound { lease }),
            Err(e) => Err(self.backend_error(op, Box::new(e))),
        }
    }
}

/// Runs `request` until it gets an answer or `deadline` passes (`None`). A request that failed
/// because no connection could be made to the endpoint it was routed to was never sent, so
/// sending it again cannot apply it twice: it is retried (after a short pause), which is what
/// carries a client over a dead member of a multi-endpoint cluster (the client's balancer routes
/// requests to endpoints it has not yet found dead) and over the first moments after an etcd
/// restart. Every other outcome is returned as it is.
async fn retry_unsent<T, F, Fut>(
    deadline: Instant,
    mut request: F,
    retry: fn(&etcd_client::Error) -> bool,
) -> Option<Result<T, etcd_client::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut pause = Duration::from_millis(10);
    loop {
        match tokio::time::timeout_at(deadline, request()).await {
            Err(_) => return None,
            Ok(Err(e)) if retry(&e) && Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "etcd request not sent; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Ok(result) => return Some(result),
        }
    }
}

/// Whether a request failed while connecting, before any byte of it reached etcd.
fn never_sent(e: &etcd_client::Error) -> bool {
    // tonic reports a failed connect as an `Unavailable` status whose message is its transport
    // error's ("tcp connect error", "transport error" while the channel reconnects) and whose
    // source is the connect error.
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            message.contains("connect error") || format!("{status:?}").contains("ConnectError")
        }
        _ => false,
    }
}

/// Whether a failure may pass if the same (idempotent) request is sent again: never sent, a
/// broken connection, or etcd's own "unavailable" and "deadline exceeded" (no leader yet, a
/// leader change, an overloaded member).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC's codes: DEADLINE_EXCEEDED 4, ABORTED 10, UNAVAILABLE 14.
        etcd_client::Error::GRpcStatus(status) => matches!(i32::from(status.code()), 4 | 10 | 14),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// The etcd range end that covers every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: no upper bound.
    vec![0]
}

fn versioned(kv: &KeyValue) -> Versioned<Vec<u8>> {
    Versioned {
        version: u64::try_from(kv.mod_revision()).unwrap_or(0),
        value: kv.value().to_vec(),
    }
}

/// An etcd revision for a compare; a version no key can have never matches.
fn revision_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(-1)
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned<Vec<u8>>>, StoreError> {
        let kv = self.inner.client.kv_client();
        let full = self.full_key(key);
        let response = self
            .read(&format!("read key {key:?}"), || {
                let mut kv = kv.clone();
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        self.note(response.header());
        Ok(response.kvs().first().map(versioned))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned<Vec<u8>>)>, StoreError> {
        Ok(self.list_with_revision(prefix).await?.entries)
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        if txn.ops.len() > MAX_TXN_OPS {
            return Err(StoreError::unsupported(
                BACKEND,
                format!(
                    "{} operations in one transaction (etcd takes at most {MAX_TXN_OPS})",
                    txn.ops.len()
                ),
            ));
        }
        let mut keys = HashSet::with_capacity(txn.ops.len());
        if let Some(twice) = txn.ops.iter().find(|op| !keys.insert(op.key())) {
            return Err(StoreError::unsupported(
                BACKEND,
                format!(
                    "the same key twice in one transaction (key {:?})",
                    twice.key()
                ),
            ));
        }
        let mut compares = Vec::new();
        let mut writes = Vec::with_capacity(txn.ops.len());
        let mut reads = Vec::new();
        for op in &txn.ops {
            let key = self.full_key(op.key());
            match op.expect() {
                Expect::Any => {}
                Expect::Absent => {
                    compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0))
                }
                Expect::Version(v) => compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision_i64(v),
                )),
            }
            if op.expect() != Expect::Any {
                reads.push(etcd_client::TxnOp::get(
                    key.clone(),
                    Some(GetOptions::new().with_keys_only()),
                ));
            }
            writes.push(match op {
                TxnOp::Put { value, .. } => etcd_client::TxnOp::put(key, value.clone(), None),
                TxnOp::PutLeased { value, lease, .. } => etcd_client::TxnOp::put(
                    key,
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease.get())),
                ),
                TxnOp::Delete { .. } => etcd_client::TxnOp::delete(key, None),
                // A compare without a write.
                TxnOp::Check { .. } => continue,
            });
        }
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(writes)
            .or_else(reads);
        let op = "commit a transaction";
        let kv = self.inner.client.kv_client();
        let response = match self
            .bounded(op, || {
                let mut kv = kv.clone();
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .await?
        {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => {
                // etcd does not say which lease; the first one the transaction names is it
                // unless it names several, which cnm's writers do not.
                let lease = txn.ops.iter().find_map(|op| match op {
                    TxnOp::PutLeased { lease, .. } => Some(*lease),
                    _ => None,
                });
                return Err(match lease {
                    Some(lease) => StoreError::LeaseNotFound { lease },
                    None => self.backend_error(op, Box::new(e)),
                });
            }
            Err(e) => return Err(self.backend_error(op, Box::new(e))),
        };
        let revision = self.note(response.header());
        if response.succeeded() {
            return Ok(revision);
        }
        // Refused: the failure branch read every compared key at the same revision. Report the
        // first op (in order) whose expectation does not hold, as the local stores do.
        let mut found: HashMap<String, u64> = HashMap::new();
        for read in response.op_responses() {
            if let TxnOpResponse::Get(get) = read {
                for kv in get.kvs() {
                    found.insert(self.store_key(kv)?, versioned(kv).version);
                }
            }
        }
        for op in &txn.ops {
            op.expect().check(op.key(), found.get(op.key()).copied())?;
        }
        // Unreachable by etcd's guarantees (compares and reads see one revision); still a
        // refusal, so say which keys were compared.
        Err(StoreError::Conflict {
            key: txn
                .ops
                .iter()
                .find(|op| op.expect() != Expect::Any)
                .map(|op| op.key().to_owned())
                .unwrap_or_default(),
            expected: "the transaction's expectations".to_owned(),
            found: "a concurrent change".to_owned(),
        })
    }

    fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        self.watch_from(prefix, self.inner.seen.load(Ordering::Relaxed))
    }

    fn is_cluster(&self) -> bool {
        true
    }

    async fn list_with_revision(&self, prefix: &str) -> Result<Listing, StoreError> {
        let full = self.full_key(prefix);
        let end = prefix_end(full.as_bytes());
        let mut start = full.into_bytes();
        let mut revision = 0i64;
        let mut entries = Vec::new();
        let kv = self.inner.client.kv_client();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision != 0 {
                // Later pages read the snapshot of the first.
                options = options.with_revision(revision);
            }
            let response = self
                .read(&format!("list keys under {prefix:?}"), || {
                    let mut kv = kv.clone();
                    let (start, options) = (start.clone(), options.clone());
                    async move { kv.get(start, Some(options)).await }
                })
                .await?;
            if revision == 0 {
                revision = response.header().map(ResponseHeader::revision).unwrap_or(0);
                self.note(response.header());
            }
            for kv in response.kvs() {
                entries.push((self.store_key(kv)?, versioned(kv)));
            }
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing {
            revision: u64::try_from(revision).unwrap_or(0),
            entries,
        })
    }

    fn watch_from(&self, prefix: &str, after: u64) -> Result<Watch, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            self.backend_error(&format!("watch keys under {prefix:?}"), Box::new(e))
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = watch::WatchTask {
            client: self.inner.client.watch_client(),
            key: self.full_key(prefix).into_bytes(),
            root_len: self.inner.config.root.len(),
            tx,
            seen: Arc::clone(&self.inner.seen),
            shutdown: self.inner.shutdown.subscribe(),
            endpoints: self.inner.config.endpoints.to_string(),
        };
        runtime.spawn(task.run(after));
        Ok(Watch::new(rx))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_ttl(ttl)?;
        // etcd counts whole seconds; round up so the lease never lives shorter than asked.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        let leases = self.inner.client.lease_client();
        let op = format!("grant a lease of {secs}s");
        let response = self
            .call(&op, || {
                let mut leases = leases.clone();
                async move { leases.grant(secs, None).await }
            })
            .await?;
        self.note(response.header());
        if !response.error().is_empty() {
            return Err(self.backend_error(&op, response.error().to_owned().into()));
        }
        Ok(Lease {
            id: LeaseId::new(response.id()),
            ttl: Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0)),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One request and its answer on a short-lived stream: simple, and it survives
        // reconnects without any state here. (The client refuses an answer with TTL 0: the lease
        // is gone.)
        self.on_lease(
            lease,
            &format!("keep lease {lease} alive"),
            |mut leases| async move { leases.keep_alive(lease.get()).await },
        )
        .await
        .map(drop)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let response = self
            .on_lease(
                lease,
                &format!("revoke lease {lease}"),
                |mut leases| async move { leases.revoke(lease.get()).await },
            )
            .await?;
        self.note(response.header());
        Ok(())
    }
}
