//! The events stream: Docker's network events (create, destroy, connect, disconnect), fanned
//! out to every `GET /events` subscriber as one JSON object per line.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock;

/// How many events a slow subscriber may lag behind before it misses some.
const BACKLOG: usize = 1024;

/// One event, in Docker's `events.Message` shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: u64,
    #[serde(rename = "timeNano")]
    pub time_nano: u128,
}

/// The object an event is about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// A network event; `container` is the sandbox id for connect and disconnect.
    pub fn network(
        action: &str,
        network_id: &str,
        name: &str,
        driver: &str,
        container: Option<&str>,
    ) -> Self {
        let mut attributes = BTreeMap::from([
            ("name".to_owned(), name.to_owned()),
            ("type".to_owned(), driver.to_owned()),
        ]);
        if let Some(c) = container {
            attributes.insert("container".to_owned(), c.to_owned());
        }
        let (time, time_nano) = clock::unix(SystemTime::now());
        Self {
            kind: "network".to_owned(),
            action: action.to_owned(),
            actor: Actor {
                id: network_id.to_owned(),
                attributes,
            },
            scope: "local".to_owned(),
            time,
            time_nano,
        }
    }
}

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
