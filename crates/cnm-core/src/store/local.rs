//! Building blocks for in-process store backends ([`super::MemoryStore`], `cnm-store`'s redb):
//! the watchers with their replayable history ([`ChangeLog`]) and the lease bookkeeping
//! ([`LeaseTable`]). A cluster backend (etcd) has both on its server and needs neither.
//!
//! Neither type locks: the backend keeps each under the lock that serialises its commits, and
//! calls [`ChangeLog::publish`] once per commit, in commit order, before it lets the next commit
//! start. That one rule is what gives watchers commit order and `watch_from` its exact hand-over.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Lease, LeaseId, StoreError, Watch, WatchEvent};

/// How many events a local store keeps for [`ChangeLog::watch_from`] by default.
pub const DEFAULT_HISTORY: usize = 4096;

#[derive(Debug)]
struct Watcher {
    prefix: String,
    /// Only events of later revisions are for this watcher.
    after: u64,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

/// The watchers of one store and a bounded history of its recent changes.
///
/// The history holds every change committed after [`ChangeLog::complete_after`]; a watch from an
/// older revision gets [`WatchEvent::Resync`]. It keeps at least the last `capacity` events
/// (whole commits: a commit is never half in it).
#[derive(Debug)]
pub struct ChangeLog {
    revision: u64,
    complete_after: u64,
    capacity: usize,
    history: VecDeque<WatchEvent>,
    watchers: Vec<Watcher>,
}

impl ChangeLog {
    /// A log for a store whose last committed revision is `revision` (0 for a new store), with
    /// no history before it, keeping about `capacity` events.
    pub fn new(revision: u64, capacity: usize) -> Self {
        Self {
            revision,
            complete_after: revision,
            capacity,
            history: VecDeque::new(),
            watchers: Vec::new(),
        }
    }

    /// The last committed revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The oldest revision a watch can resume from: every change after it is in the history.
    pub fn complete_after(&self) -> u64 {
        self.complete_after
    }

    /// Records the commit of `revision` (greater than every earlier one) and its events (each
    /// of that revision, in order), and tells the watchers. A commit that changed nothing
    /// publishes no events but still advances the revision.
    pub fn publish(&mut self, revision: u64, events: Vec<WatchEvent>) {
        debug_assert!(revision > self.revision, "revisions only grow");
        self.revision = revision;
        self.watchers.retain(|w| {
            !w.tx.is_closed()
                && events
                    .iter()
                    .filter(|e| e.revision() > w.after && e.key().starts_with(w.prefix.as_str()))
                    .all(|e| w.tx.send(e.clone()).is_ok())
        });
        self.history.extend(events);
        while self.history.len() > self.capacity {
            // Drop whole commits from the front, so the history is complete after the last
            // dropped revision.
            let Some(first) = self.history.pop_front() else {
                break;
            };
            let dropped = first.revision();
            while self
                .history
                .front()
                .is_some_and(|e| e.revision() == dropped)
            {
                self.history.pop_front();
            }
            self.complete_after = dropped;
        }
    }

    /// Watches `prefix` from now on.
    pub fn watch(&mut self, prefix: &str) -> Watch {
        self.watch_from(prefix, self.revision)
    }

    /// Watches `prefix` for every change after revision `after`: the history first, then live
    /// changes. If the history does not reach back to `after`, the watch gets
    /// [`WatchEvent::Resync`] and ends.
    pub fn watch_from(&mut self, prefix: &str, after: u64) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        if after < self.complete_after {
            // Nobody holds the receiver yet, so the send cannot fail; the sender is dropped
            // here, which ends the watch after this event.
            let _ = tx.send(WatchEvent::Resync {
                compacted: self.complete_after,
            });
            return Watch::new(rx);
        }
        for event in self
            .history
            .iter()
            .filter(|e| e.revision() > after && e.key().starts_with(prefix))
        {
            // As above: the receiver is still in our hands.
            let _ = tx.send(event.clone());
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            after,
            tx,
        });
        Watch::new(rx)
    }
}

#[derive(Debug)]
struct LocalLease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// The leases of an in-process store: ids, deadlines and the keys attached to each.
///
/// A lease whose deadline has passed counts as gone at once (keep-alive and attaching refuse
/// it), even before the backend's timer has deleted its keys.
#[derive(Debug)]
pub struct LeaseTable {
    next: i64,
    leases: HashMap<LeaseId, LocalLease>,
    owner: HashMap<String, LeaseId>,
}

impl LeaseTable {
    /// A table whose first lease gets id `first` (a durable store persists the next id so that
    /// no id is issued twice).
    pub fn new(first: i64) -> Self {
        Self {
            next: first.max(1),
            leases: HashMap::new(),
            owner: HashMap::new(),
        }
    }

    /// The id the next grant will issue.
    pub fn next_id(&self) -> i64 {
        self.next
    }

    /// Grants a lease of `ttl` from `now`.
    pub fn grant(&mut self, ttl: Duration, now: Instant) -> Lease {
        let id = LeaseId::new(self.next);
        self.next += 1;
        self.leases.insert(
            id,
            LocalLease {
                ttl,
                deadline: now + ttl,
                keys: BTreeSet::new(),
            },
        );
        Lease { id, ttl }
    }

    /// Whether `lease` exists and has not passed its deadline at `now`.
    pub fn is_live(&self, lease: LeaseId, now: Instant) -> bool {
        self.leases.get(&lease).is_some_and(|l| l.deadline > now)
    }

    /// The lease's deadline, if it exists.
    pub fn deadline(&self, lease: LeaseId) -> Option<Instant> {
        self.leases.get(&lease).map(|l| l.deadline)
    }

    /// Renews `lease` for its TTL from `now`.
    pub fn keep_alive(&mut self, lease: LeaseId, now: Instant) -> Result<(), StoreError> {
        match self.leases.get_mut(&lease) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound { lease }),
        }
    }

    /// The keys attached to `lease` (sorted), if it exists.
    pub fn keys(&self, lease: LeaseId) -> Option<&BTreeSet<String>> {
        self.leases.get(&lease).map(|l| &l.keys)
    }

    /// Forgets `lease` and returns its keys, which the caller deletes in one commit.
    pub fn remove(&mut self, lease: LeaseId) -> Option<BTreeSet<String>> {
        let l = self.leases.remove(&lease)?;
        for key in &l.keys {
            self.owner.remove(key);
        }
        Some(l.keys)
    }

    /// Records that a committed put attached `key` to `lease` (`None`: a plain put, which
    /// detaches it).
    pub fn attach(&mut self, key: &str, lease: Option<LeaseId>) {
        self.detach(key);
        if let Some(lease) = lease
            && let Some(l) = self.leases.get_mut(&lease)
        {
            l.keys.insert(key.to_owned());
            self.owner.insert(key.to_owned(), lease);
        }
    }

    /// Records that `key` was deleted (or rewritten without a lease).
    pub fn detach(&mut self, key: &str) {
        if let Some(old) = self.owner.remove(key)
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Versioned;

    fn put(key: &str, rev: u64) -> WatchEvent {
        WatchEvent::Put {
            key: key.into(),
            value: Versioned {
                version: rev,
                value: Vec::new(),
            },
        }
    }

    #[test]
    fn history_keeps_whole_commits_and_resync_below_it() {
        let mut log = ChangeLog::new(10, 3);
        log.publish(11, vec![put("a/1", 11), put("a/2", 11)]);
        log.publish(12, vec![put("a/3", 12)]);
        assert_eq!(log.complete_after(), 10);
        log.publish(13, vec![put("a/4", 13)]);
        // Four events kept at most three: commit 11 went as a whole.
        assert_eq!(log.complete_after(), 11);
        let mut w = log.watch_from("a/", 11);
        assert_eq!(w.try_next().map(|e| e.revision()), Some(12));
        assert_eq!(w.try_next().map(|e| e.revision()), Some(13));
        assert!(w.try_next().is_none());
        let mut old = log.watch_from("a/", 10);
        assert_eq!(old.try_next(), Some(WatchEvent::Resync { compacted: 11 }));
        assert!(old.try_next().is_none());
        // A watch from the future sees only what comes after its revision.
        let mut future = log.watch_from("", 14);
        log.publish(14, vec![put("b", 14)]);
        log.publish(15, vec![put("b", 15)]);
        assert_eq!(future.try_next().map(|e| e.revision()), Some(15));
        assert_eq!(w.try_next(), None, "b is not under a/");
    }

    #[test]
    fn leases_attach_detach_and_expire_by_deadline() {
        let now = Instant::now();
        let mut t = LeaseTable::new(7);
        let l = t.grant(Duration::from_secs(2), now);
        assert_eq!(l.id, LeaseId::new(7));
        assert_eq!(t.next_id(), 8);
        t.attach("k1", Some(l.id));
        t.attach("k2", Some(l.id));
        t.attach("k2", None);
        assert_eq!(t.keys(l.id).map(|k| k.len()), Some(1));
        let later = now + Duration::from_secs(1);
        t.keep_alive(l.id, later).expect("live");
        assert!(t.is_live(l.id, later + Duration::from_millis(1999)));
        assert!(!t.is_live(l.id, later + Duration::from_secs(2)));
        assert!(matches!(
            t.keep_alive(l.id, later + Duration::from_secs(3)),
            Err(StoreError::LeaseNotFound { .. })
        ));
        let keys = t.remove(l.id).expect("exists");
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["k1"]);
        assert!(t.remove(l.id).is_none());
    }
}
