//! The events stream: Docker's network events (create, destroy, connect, disconnect), fanned
//! out to every `GET /events` subscriber as one JSON object per line.

use tokio::sync::broadcast;

/// How many events a slow subscriber may lag behind before it misses some.
const BACKLOG: usize = 1024;

/// One event, in Docker's `events.Message` shape (`Event::network(...)` makes one stamped now).
pub type Event = cnm_api::docker::EventMessage;

/// The publisher side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    /// Sends an event to every current subscriber (none is fine).
    pub fn publish(&self, event: Event) {
        tracing::debug!(action = %event.action, id = %event.actor.id, "event");
        // An error only means nobody listens right now.
        let _ = self.tx.send(event);
    }

    /// A new subscription, seeing every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
