//! What nodes sharing a database coordinate through it: the maintenance lead (a
//! session advisory lock), wake-ups for idle workers and the relay of task events
//! (LISTEN/NOTIFY).

use crate::conn::{backend, events_channel_for, OffRuntime, Target};
use postgres::fallible_iterator::FallibleIterator;
use qtask_store::{StoreResult, BROADCAST_MESSAGE_MAX};
use qtask_store_sql::Cluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, Notify};

/// How long the listener waits for a notification before it checks its connection
/// and whether the store is closing.
const LISTEN_TICK: Duration = Duration::from_secs(2);
/// How long the listener waits before reconnecting after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long broadcast messages wait to be sent together.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// The largest NOTIFY payload sent (PostgreSQL refuses 8,000 bytes and more).
const PAYLOAD_MAX: usize = 7_000;
/// Messages waiting for the sender thread; more are dropped (events are best effort).
const OUTBOX: usize = 8_192;
/// Messages from other nodes kept for subscribers that fall behind.
const REMOTE_BACKLOG: usize = 4_096;

pub struct PgCluster {
    target: Target,
    /// The connection that holds the maintenance lock while this node leads.
    leader: Mutex<Option<OffRuntime<postgres::Client>>>,
    ready: Arc<Notify>,
    closing: Arc<AtomicBool>,
    /// To the sender thread, which ends when this is dropped.
    outbox: SyncSender<String>,
    remote: broadcast::Sender<Arc<str>>,
}

impl PgCluster {
    /// Starts the listener and the event sender threads.
    pub fn start(target: Target) -> StoreResult<Self> {
        let ready = Arc::new(Notify::new());
        let closing = Arc::new(AtomicBool::new(false));
        let (remote, _) = broadcast::channel(REMOTE_BACKLOG);
        let listener = Listener {
            target: target.clone(),
            events_channel: events_channel_for(target.lock_key),
            ready: Arc::clone(&ready),
            remote: remote.clone(),
            closing: Arc::clone(&closing),
        };
        spawn_thread("qtask-store-listen", move || listener.run())?;
        let (outbox, messages) = mpsc::sync_channel(OUTBOX);
        let sender = EventSender {
            target: target.clone(),
            channel: events_channel_for(target.lock_key),
            messages,
        };
        spawn_thread("qtask-store-relay", move || sender.run())?;
        Ok(Self {
            target,
            leader: Mutex::new(None),
            ready,
            closing,
            outbox,
            remote,
        })
    }

    fn maintenance_key(&self) -> i64 {
        self.target.lock_key + 1
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl Cluster for PgCluster {
    fn lead_maintenance(&self) -> StoreResult<bool> {
        let mut leader = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = leader.as_mut() {
            // Still connected means still holding the session lock.
            if client.simple_query("").is_ok() {
                return Ok(true);
            }
            tracing::warn!("lost the connection that held the maintenance lead");
            *leader = None;
        }
        let mut client = self.target.connect()?;
        let took: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&self.maintenance_key()],
            )
            .map_err(backend)?
            .get(0);
        if took {
            tracing::info!("this node now leads the maintenance (rescue, retention)");
            *leader = Some(OffRuntime::new(client));
        }
        Ok(took)
    }

    fn ready_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.ready)
    }

    fn broadcast_event(&self, message: String) {
        if message.len() > BROADCAST_MESSAGE_MAX || message.contains('\n') {
            tracing::warn!(
                bytes = message.len(),
                "a task event too long (or not one line) to relay was dropped"
            );
            return;
        }
        match self.outbox.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("the task event relay is behind; an event was dropped")
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("the task event relay stopped; an event was dropped")
            }
        }
    }

    fn remote_events(&self) -> broadcast::Receiver<Arc<str>> {
        self.remote.subscribe()
    }
}

fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> StoreResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(drop)
        .map_err(|e| qtask_store::StoreError::Backend(format!("cannot start {name}: {e}")))
}

struct Listener {
    target: Target,
    events_channel: String,
    ready: Arc<Notify>,
    /// Where the events other nodes relay go.
    remote: broadcast::Sender<Arc<str>>,
    closing: Arc<AtomicBool>,
}

impl Listener {
    fn run(self) {
        while !self.closing.load(Ordering::Relaxed) {
            if let Err(error) = self.listen() {
                tracing::warn!(%error, "the task wake-up listener failed; reconnecting");
                std::thread::sleep(RECONNECT_DELAY);
            }
        }
    }

    /// Listens until the connection fails or the store closes.
    fn listen(&self) -> StoreResult<()> {
        let mut client = self.target.connect()?;
        client
            .batch_execute(&format!(
                "LISTEN {}; LISTEN {}",
                self.target.channel, self.events_channel
            ))
            .map_err(backend)?;
        // Notifications sent while not listening are lost: look once in any case.
        self.ready.notify_one();
        while !self.closing.load(Ordering::Relaxed) {
            {
                let mut notifications = client.notifications();
                let mut pending = notifications.timeout_iter(LISTEN_TICK);
                while let Some(notification) = pending.next().map_err(backend)? {
                    if notification.channel() == self.events_channel {
                        self.pass_on(notification.payload());
                    } else if notification.payload() != self.target.node {
                        self.ready.notify_one();
                    }
                }
            }
            if client.is_closed() {
                return Err(qtask_store::StoreError::Backend(
                    "the listening connection closed".into(),
                ));
            }
        }
        Ok(())
    }

    /// Publishes the messages of another node's batch (see [`Batch`]).
    fn pass_on(&self, payload: &str) {
        let mut lines = payload.split('\n');
        if lines.next() == Some(self.target.node.as_str()) {
            return;
        }
        for message in lines {
            // No subscriber is fine.
            let _ = self.remote.send(Arc::from(message));
        }
    }
}

/// Broadcast messages gathered into one NOTIFY payload: the sending node's name, then
/// one message per line, in at most [`PAYLOAD_MAX`] bytes.
struct Batch {
    node: String,
    payload: String,
    messages: usize,
}

impl Batch {
    fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            payload: node.to_owned(),
            messages: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Adds `message` (at most [`BROADCAST_MESSAGE_MAX`] bytes); returns the payload
    /// that had to be closed first to make room for it.
    fn push(&mut self, message: &str) -> Option<String> {
        let full = !self.is_empty() && self.payload.len() + 1 + message.len() > PAYLOAD_MAX;
        let closed = full.then(|| self.take());
        self.payload.push('\n');
        self.payload.push_str(message);
        self.messages += 1;
        closed
    }

    /// The payload so far; the batch starts again empty.
    fn take(&mut self) -> String {
        self.messages = 0;
        std::mem::replace(&mut self.payload, self.node.clone())
    }
}

/// Sends broadcast messages with a connection of its own, in batches: one NOTIFY per
/// [`FLUSH_EVERY`] at most, or sooner when a batch is full.
struct EventSender {
    target: Target,
    channel: String,
    messages: mpsc::Receiver<String>,
}

impl EventSender {
    /// Runs until the cluster is dropped, then sends what is left.
    fn run(self) {
        let mut connection = Connection::default();
        let mut batch = Batch::new(&self.target.node);
        while let Ok(first) = self.messages.recv() {
            batch.push(&first);
            let flush_at = Instant::now() + FLUSH_EVERY;
            let mut closed = false;
            loop {
                match self
                    .messages
                    .recv_timeout(flush_at.saturating_duration_since(Instant::now()))
                {
                    Ok(message) => {
                        if let Some(full) = batch.push(&message) {
                            self.send(&mut connection, &full);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.send(&mut connection, &batch.take());
            if closed {
                return;
            }
        }
    }

    /// Sends `payload`, connecting first if needed; drops it when the database cannot
    /// be reached (and does not try again for [`RECONNECT_DELAY`]).
    fn send(&self, connection: &mut Connection, payload: &str) {
        if connection.client.as_ref().is_some_and(|c| c.is_closed()) {
            connection.client = None;
        }
        if connection.client.is_none() {
            if connection.retry_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            match self.target.connect() {
                Ok(client) => connection.client = Some(client),
                Err(error) => {
                    tracing::warn!(%error, "cannot connect to relay task events; dropping some");
                    connection.retry_at = Some(Instant::now() + RECONNECT_DELAY);
                    return;
                }
            }
        }
        let client = connection.client.as_mut().expect("connected above");
        if let Err(error) = client.execute("SELECT pg_notify($1, $2)", &[&self.channel, &payload]) {
            tracing::warn!(error = %backend(error), "relaying task events failed; reconnecting");
            connection.client = None;
        }
    }
}

/// The sender's connection (a plain thread owns it, so it may be dropped there).
#[derive(Default)]
struct Connection {
    client: Option<postgres::Client>,
    retry_at: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_under_the_payload_limit_and_keep_every_message_in_order() {
        let node = "12345:1732760000000000000";
        let mut batch = Batch::new(node);
        let mut payloads = Vec::new();
        let messages: Vec<String> = (0..40)
            .map(|i| format!("{i:04}{}", "x".repeat(700)))
            .collect();
        for message in &messages {
            payloads.extend(batch.push(message));
        }
        payloads.push(batch.take());
        assert!(batch.is_empty());
        assert!(payloads.len() >= 40 * 704 / PAYLOAD_MAX);
        let mut relayed = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= PAYLOAD_MAX, "{} bytes", payload.len());
            let mut lines = payload.split('\n');
            assert_eq!(lines.next(), Some(node));
            relayed.extend(lines.map(str::to_owned));
        }
        assert_eq!(relayed, messages);
    }

    #[test]
    fn the_longest_message_fits_a_payload_alone() {
        let mut batch = Batch::new("12345:1732760000000000000");
        let before = "x".repeat(PAYLOAD_MAX - BROADCAST_MESSAGE_MAX);
        assert_eq!(batch.push(&before), None);
        let longest = "y".repeat(BROADCAST_MESSAGE_MAX);
        let closed = batch
            .push(&longest)
            .expect("the first message is sent first");
        assert!(closed.ends_with(&format!("\n{before}")));
        let alone = batch.take();
        assert!(alone.len() <= PAYLOAD_MAX);
        assert!(alone.ends_with(&longest));
    }
}
