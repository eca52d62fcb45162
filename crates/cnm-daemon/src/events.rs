//! The events stream: Docker's network events (create, destroy, connect, disconnect), fanned
//! out to every `GET /events` subscriber as one JSON object per line, and kept in a bounded
//! history so that `since`/`until` can replay them (dockerd keeps the last 256).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

/// How many events a slow subscriber may lag behind before it misses some.
const BACKLOG: usize = 1024;
/// How many past events are kept for replay (dockerd's `eventsLimit`).
pub const HISTORY: usize = 256;

/// One event, in Docker's `events.Message` shape (`Event::network(...)` makes one stamped now).
pub type Event = cnm_api::docker::EventMessage;

/// The publisher side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    history: Arc<Mutex<VecDeque<Event>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
            history: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY))),
        }
    }
}

impl Events {
    /// Records an event and sends it to every current subscriber (none is fine).
    pub fn publish(&self, event: Event) {
        tracing::debug!(action = %event.action, id = %event.actor.id, "event");
        // Recorded and sent under one lock, so that a subscriber's replay and its live events
        // neither overlap nor leave a gap.
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // An error only means nobody listens right now.
        let _ = self.tx.send(event);
    }

    /// A new subscription, seeing every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The kept past events, oldest first, and a subscription to every later one.
    pub fn replay_and_subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        (history.iter().cloned().collect(), self.tx.subscribe())
    }

    /// How many subscribers listen now.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_replay_joins_the_live_stream() {
        let ev = Events::default();
        for i in 0..HISTORY + 10 {
            ev.publish(Event::network(
                "create",
                &i.to_string(),
                "n",
                "bridge",
                None,
            ));
        }
        let (past, mut rx) = ev.replay_and_subscribe();
        assert_eq!(past.len(), HISTORY);
        assert_eq!(past[0].actor.id, "10", "the oldest events went first");
        ev.publish(Event::network("destroy", "x", "n", "bridge", None));
        assert_eq!(rx.try_recv().unwrap().actor.id, "x");
        assert_eq!(ev.listeners(), 1);
    }
}
