//! Task events across the nodes of a shared database: each node sends the events it
//! makes through the store ([`Store::broadcast_event`]) and publishes the other nodes'
//! on its own bus, marked remote. Best effort, like the bus itself: an event may be
//! lost (a node that falls behind, a lost connection), never duplicated on a node.

use crate::events::{EventBus, TaskEvent};
use qtask_store::{Store, BROADCAST_MESSAGE_MAX};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Relays events between this node and the others until `stop`; `None` on a store no
/// other node shares.
pub fn start(
    store: Arc<dyn Store>,
    events: &EventBus,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut remote = store.remote_events()?;
    let mut local = events.subscribe();
    let bus = events.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = local.recv() => match received {
                    // Relayed events came from the other nodes: sending them back would echo.
                    Ok(event) if !event.remote => store.broadcast_event(message(&event)),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the relay fell behind; other nodes miss some task events");
                    }
                    Err(RecvError::Closed) => return,
                },
                received = remote.recv() => match received {
                    Ok(message) => match TaskEvent::from_relay(&message) {
                        Ok(event) => bus.publish(event),
                        Err(error) => tracing::warn!(%error, "ignored a task event another node relayed"),
                    },
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the relay fell behind; some task events of other nodes were missed");
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }))
}

/// The event as relayed; without its result when that would make it too long to relay
/// (a watcher can still read the result with DescribeTask).
fn message(event: &TaskEvent) -> String {
    let full = event.to_relay(true);
    if full.len() <= BROADCAST_MESSAGE_MAX {
        return full;
    }
    event.to_relay(false)
}
