//! What nodes sharing a database coordinate through it: the maintenance lead (a
//! session advisory lock) and wake-ups for idle workers (LISTEN/NOTIFY).

use crate::conn::{backend, OwnedClient, Target};
use postgres::fallible_iterator::FallibleIterator;
use qtask_store::StoreResult;
use qtask_store_sql::Cluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long the listener waits for a notification before it checks its connection
/// and whether the store is closing.
const LISTEN_TICK: Duration = Duration::from_secs(2);
/// How long the listener waits before reconnecting after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

pub struct PgCluster {
    target: Target,
    /// The connection that holds the maintenance lock while this node leads.
    leader: Mutex<Option<OwnedClient>>,
    ready: Arc<Notify>,
    closing: Arc<AtomicBool>,
}

impl PgCluster {
    /// Starts the listener thread.
    pub fn start(target: Target) -> StoreResult<Self> {
        let ready = Arc::new(Notify::new());
        let closing = Arc::new(AtomicBool::new(false));
        let listener = Listener {
            target: target.clone(),
            ready: Arc::clone(&ready),
            closing: Arc::clone(&closing),
        };
        std::thread::Builder::new()
            .name("qtask-store-listen".into())
            .spawn(move || listener.run())
            .map_err(|e| {
                qtask_store::StoreError::Backend(format!("cannot start the listener: {e}"))
            })?;
        Ok(Self {
            target,
            leader: Mutex::new(None),
            ready,
            closing,
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
            *leader = Some(OwnedClient::new(client));
        }
        Ok(took)
    }

    fn ready_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.ready)
    }
}

struct Listener {
    target: Target,
    ready: Arc<Notify>,
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
            .batch_execute(&format!("LISTEN {}", self.target.channel))
            .map_err(backend)?;
        // Notifications sent while not listening are lost: look once in any case.
        self.ready.notify_one();
        while !self.closing.load(Ordering::Relaxed) {
            {
                let mut notifications = client.notifications();
                let mut pending = notifications.timeout_iter(LISTEN_TICK);
                while let Some(notification) = pending.next().map_err(backend)? {
                    if notification.payload() != self.target.node {
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
}
