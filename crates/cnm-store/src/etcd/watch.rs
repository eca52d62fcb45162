//! One etcd watch behind a [`cnm_core::store::Watch`], re-established after every break.
//!
//! The task remembers exactly what it has delivered: the revision it would resume from and how
//! many events of that revision it already passed on. When the stream breaks (etcd restarted,
//! connection lost, leader lost) it watches again from that revision and skips those events, so
//! the consumer sees every change once, in order, across any number of reconnects. etcd orders
//! the events of one revision the same way every time (by their position in the transaction), so
//! skipping by count is exact. A progress notification (no events, header revision H) says every
//! change up to H was delivered, which moves the resume point past revisions with nothing under
//! the prefix. If etcd has compacted the revision to resume from, the task sends
//! [`WatchEvent::Resync`] and ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cnm_core::store::{Versioned, WatchEvent};
use etcd_client::{EventType, WatchClient, WatchOptions, WatchResponse};
use tokio::sync::{mpsc, watch};

/// The first pause before re-watching after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Everything a watch task needs; it holds no reference to the store, so dropping the store
/// (its shutdown sender) ends the task.
pub(super) struct WatchTask {
    pub(super) client: WatchClient,
    /// The full key prefix watched (root + prefix).
    pub(super) key: Vec<u8>,
    /// Bytes to strip from each key (the root).
    pub(super) root_len: usize,
    pub(super) tx: mpsc::UnboundedSender<WatchEvent>,
    /// The newest revision the store has seen; watch responses move it on.
    pub(super) seen: Arc<AtomicU64>,
    pub(super) shutdown: watch::Receiver<()>,
    /// For logs.
    pub(super) endpoints: String,
}

/// Where to resume: the first revision not fully delivered, and how many of its events were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    revision: u64,
    delivered: usize,
}

enum Step {
    /// Keep reading the stream.
    Continue,
    /// The stream is done for (canceled); watch again.
    Rewatch,
    /// The watch is over (consumer gone, or resync sent).
    Stop,
}

impl WatchTask {
    /// Delivers every change after `after` until the consumer drops its watch or the store goes.
    pub(super) async fn run(mut self, after: u64) {
        let mut resume = Resume {
            revision: after + 1,
            delivered: 0,
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(i64::try_from(resume.revision).unwrap_or(i64::MAX))
                .with_progress_notify();
            let mut client = self.client.clone();
            let created = tokio::select! {
                r = client.watch(self.key.clone(), Some(options)) => r,
                () = self.tx.closed() => return,
                _ = self.shutdown.changed() => return,
            };
            match created {
                Ok(mut stream) => {
                    // Events of `resume.revision` this stream will send again, already delivered.
                    let mut skip = resume.delivered;
                    loop {
                        let message = tokio::select! {
                            m = stream.message() => m,
                            () = self.tx.closed() => return,
                            _ = self.shutdown.changed() => return,
                        };
                        let step = match message {
                            Ok(Some(response)) => {
                                let step = self.handle(response, &mut resume, &mut skip);
                                if matches!(step, Step::Continue) {
                                    backoff = MIN_BACKOFF;
                                }
                                step
                            }
                            Ok(None) => {
                                tracing::debug!(endpoints = %self.endpoints, "etcd watch stream ended; watching again");
                                Step::Rewatch
                            }
                            Err(e) => {
                                tracing::debug!(endpoints = %self.endpoints, error = %e, "etcd watch stream broke; watching again");
                                Step::Rewatch
                            }
                        };
                        match step {
                            Step::Continue => {}
                            Step::Rewatch => break,
                            Step::Stop => return,
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(endpoints = %self.endpoints, error = %e, "etcd watch could not be created; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return,
                _ = self.shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn handle(&self, response: WatchResponse, resume: &mut Resume, skip: &mut usize) -> Step {
        let header = response.header().map(|h| h.revision()).unwrap_or(0);
        let header = u64::try_from(header).unwrap_or(0);
        self.seen.fetch_max(header, Ordering::Relaxed);
        if response.compact_revision() > 0 {
            let compacted = u64::try_from(response.compact_revision()).unwrap_or(0);
            tracing::warn!(endpoints = %self.endpoints, compacted, from = resume.revision, "etcd compacted the history this watch needs; resync");
            // Whether the consumer is still there does not matter: the watch ends either way.
            let _ = self.tx.send(WatchEvent::Resync { compacted });
            return Step::Stop;
        }
        if response.canceled() {
            tracing::debug!(endpoints = %self.endpoints, reason = response.cancel_reason(), "etcd canceled the watch; watching again");
            return Step::Rewatch;
        }
        if response.events().is_empty() {
            // A progress notification (or the creation answer): everything up to the header
            // revision has been delivered. Only a progress notification may say so; the
            // creation answer's header can be ahead of events still to come.
            if !response.created() && header >= resume.revision {
                *resume = Resume {
                    revision: header + 1,
                    delivered: 0,
                };
                *skip = 0;
            }
            return Step::Continue;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
            if revision < resume.revision {
                continue;
            }
            if revision == resume.revision && *skip > 0 {
                // Delivered before the reconnect.
                *skip -= 1;
                continue;
            }
            if revision == resume.revision {
                resume.delivered += 1;
            } else {
                *resume = Resume {
                    revision,
                    delivered: 1,
                };
                // Nothing of this new revision was delivered before.
                *skip = 0;
            }
            let Some(key) = kv
                .key()
                .get(self.root_len..)
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                tracing::warn!(key = ?kv.key(), "skipping an etcd key that is not UTF-8");
                continue;
            };
            let change = match event.event_type() {
                EventType::Put => WatchEvent::Put {
                    key: key.to_owned(),
                    value: Versioned {
                        version: revision,
                        value: kv.value().to_vec(),
                    },
                },
                EventType::Delete => WatchEvent::Delete {
                    key: key.to_owned(),
                    version: revision,
                },
            };
            if self.tx.send(change).is_err() {
                return Step::Stop;
            }
        }
        Step::Continue
    }
}
