//! In-process watchers of a durable store: every committed change under a prefix, in commit order.
//!
//! The store calls [`Watchers::publish`] after each commit while it still holds its writer lock,
//! so watchers see changes in commit order. A watcher whose [`Watch`] was dropped is noticed at the
//! next publish (its send fails) and forgotten.

use std::sync::Mutex;

use cnm_core::store::{Watch, WatchEvent};
use tokio::sync::mpsc;

/// The watchers of one store.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    senders: Mutex<Vec<(String, mpsc::UnboundedSender<WatchEvent>)>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, mpsc::UnboundedSender<WatchEvent>)>> {
        // The list only gains and loses whole entries; a panic elsewhere cannot tear one.
        self.senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a watcher of `prefix`, which sees every change committed from now on.
    pub(crate) fn register(&self, prefix: &str) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push((prefix.to_owned(), tx));
        Watch::new(rx)
    }

    /// Delivers the events of one committed transaction. Called in commit order, under the
    /// store's writer lock.
    pub(crate) fn publish(&self, events: &[WatchEvent]) {
        self.lock().retain(|(prefix, tx)| {
            events
                .iter()
                .filter(|e| e.key().starts_with(prefix.as_str()))
                .all(|e| tx.send(e.clone()).is_ok())
        });
    }
}
