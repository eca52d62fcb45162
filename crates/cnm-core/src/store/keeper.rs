//! [`LeaseKeeper`]: keeps a lease alive in the background and says when it is lost.

use std::sync::Arc;
use std::time::Duration;

use cnm_types::ErrorKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Lease, LeaseId, Store, StoreError};

/// Why a kept lease was lost. After either, the lease's keys are (or are about to be) gone:
/// the owner writes them again under a new lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLost {
    /// The store answered that the lease no longer exists: it expired or was revoked.
    #[error("store lease {lease} expired or was revoked; its keys are gone")]
    Expired {
        /// The lease.
        lease: LeaseId,
    },
    /// No keep-alive got through for a whole TTL (the store was unreachable), so the store has
    /// expired the lease, or will before anyone can renew it.
    #[error("store lease {lease} was not renewed for its whole TTL of {ttl:?}: {last_error}")]
    NotRenewed {
        /// The lease.
        lease: LeaseId,
        /// Its TTL.
        ttl: Duration,
        /// The last keep-alive failure.
        last_error: String,
    },
}

impl LeaseLost {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Expired { .. } => ErrorKind::NotFound,
            Self::NotRenewed { .. } => ErrorKind::Unavailable,
        }
    }
}

/// Keeps a lease alive from a background task: a keep-alive every third of its TTL, retried
/// every tenth of it after a failure, until the lease is lost or the keeper dropped. The lease
/// counts as lost when the store says it is gone ([`LeaseLost::Expired`]) or when no keep-alive
/// got through before the TTL ran out ([`LeaseLost::NotRenewed`]: the store may still hold it
/// — etcd extends every lease when it restarts — but nobody can tell until it answers; the
/// owner writes its keys again under a new lease, which is idempotent per key).
///
/// Dropping the keeper stops the keep-alives without revoking the lease (it then expires after
/// its TTL, as a crashed host's would); [`LeaseKeeper::revoke`] ends it at once.
#[derive(Debug)]
pub struct LeaseKeeper {
    store: Arc<dyn Store>,
    lease: Lease,
    lost: watch::Receiver<Option<LeaseLost>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping `lease` (granted by `store`) alive on the current tokio runtime. Like
    /// `tokio::spawn`, panics when called outside one.
    pub fn spawn(store: Arc<dyn Store>, lease: Lease) -> Self {
        let (tx, lost) = watch::channel(None);
        let task = tokio::spawn(keep(Arc::clone(&store), lease, tx));
        Self {
            store,
            lease,
            lost,
            task,
        }
    }

    /// The lease being kept.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Waits until the lease is lost, and says why.
    pub async fn lost(&mut self) -> LeaseLost {
        let gone = LeaseLost::Expired {
            lease: self.lease.id,
        };
        let verdict = match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The task ended without a verdict: it panicked.
            Err(_) => None,
        };
        verdict.unwrap_or(gone)
    }

    /// Why the lease was lost, if it was.
    pub fn is_lost(&self) -> Option<LeaseLost> {
        self.lost.borrow().clone()
    }

    /// Stops keeping the lease and revokes it: its keys are deleted now.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.task.abort();
        self.store.revoke_lease(self.lease.id).await
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(store: Arc<dyn Store>, lease: Lease, tx: watch::Sender<Option<LeaseLost>>) {
    let every = (lease.ttl / 3).max(Duration::from_millis(1));
    let retry = (lease.ttl / 10).max(Duration::from_millis(1));
    // The store started the TTL when it granted the lease, a little before this.
    let mut renewed = Instant::now();
    let mut next = renewed + every;
    let mut last_error = String::from("no answer before the lease's deadline");
    loop {
        tokio::time::sleep_until(next).await;
        // The store counts the TTL from when it handled the last keep-alive, which is no
        // earlier than when we sent it: past this deadline the lease may be gone.
        let deadline = renewed + lease.ttl;
        let attempt = Instant::now();
        let lost = match tokio::time::timeout_at(deadline, store.keep_alive(lease.id)).await {
            Ok(Ok(())) => {
                renewed = attempt;
                next = attempt + every;
                continue;
            }
            Ok(Err(StoreError::LeaseNotFound { .. })) => {
                tracing::warn!(lease = %lease.id, "store lease expired");
                LeaseLost::Expired { lease: lease.id }
            }
            Ok(Err(e)) if Instant::now() + retry < deadline => {
                tracing::debug!(lease = %lease.id, error = %e, "store lease keep-alive failed; retrying");
                last_error = error_chain(&e);
                next = Instant::now() + retry;
                continue;
            }
            Ok(Err(e)) => LeaseLost::NotRenewed {
                lease: lease.id,
                ttl: lease.ttl,
                last_error: error_chain(&e),
            },
            Err(_) => LeaseLost::NotRenewed {
                lease: lease.id,
                ttl: lease.ttl,
                last_error,
            },
        };
        if let LeaseLost::NotRenewed { last_error, .. } = &lost {
            tracing::warn!(lease = %lease.id, error = %last_error, "store lease not renewed within its TTL");
        }
        // Nobody listening is fine: the keeper was dropped while the verdict was on its way.
        let _ = tx.send(Some(lost));
        return;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Expect, MemoryStore, WatchEvent};

    #[tokio::test]
    async fn kept_lease_outlives_its_ttl_and_a_dropped_keeper_lets_it_expire() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ttl = Duration::from_millis(150);
        let lease = store.grant_lease(ttl).await.unwrap();
        store
            .put_leased("host/a", b"a".to_vec(), Expect::Absent, lease.id)
            .await
            .unwrap();
        let mut w = store.watch("host/").unwrap();
        let keeper = LeaseKeeper::spawn(Arc::clone(&store), lease);
        // Three TTLs pass on the keeper's own keep-alives.
        for _ in 0..3 {
            assert!(
                tokio::time::timeout(ttl, w.next()).await.is_err(),
                "key stays"
            );
        }
        assert!(keeper.is_lost().is_none());
        drop(keeper);
        let gone = tokio::time::timeout(ttl * 3, w.next()).await.unwrap();
        assert!(matches!(gone, Some(WatchEvent::Delete { ref key, .. }) if key == "host/a"));
    }

    #[tokio::test]
    async fn revoked_lease_is_reported_lost() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let lease = store.grant_lease(Duration::from_millis(300)).await.unwrap();
        let mut keeper = LeaseKeeper::spawn(Arc::clone(&store), lease);
        store.revoke_lease(lease.id).await.unwrap();
        let lost = tokio::time::timeout(Duration::from_secs(2), keeper.lost())
            .await
            .unwrap();
        assert_eq!(lost, LeaseLost::Expired { lease: lease.id });
        assert_eq!(lost.kind(), ErrorKind::NotFound);
    }
}
