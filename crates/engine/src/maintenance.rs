//! Background upkeep: rescuing tasks whose lease expired, and retention — deleting
//! finished tasks, spent nonces, old client tokens and retired resources in small
//! batches, each its own short write, so submissions and dispatch never wait long. On a
//! database several nodes share, only the node that leads the maintenance runs them.

use crate::catalog::Catalog;
use crate::dispatch::Dispatcher;
use crate::time::now_millis;
use qtask_store::{PurgeReport, ResourceRetention, Retention, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long things are kept.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Finished tasks (and chains) older than this are deleted.
    pub tasks: Duration,
    /// Client tokens are honoured this long.
    pub client_tokens: Duration,
    /// Resources in a retired state (returned instances) are deleted this long after
    /// they reached it.
    pub retired_resources: Duration,
    /// How often retention runs.
    pub interval: Duration,
    /// Rows deleted per write.
    pub batch: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            tasks: Duration::from_secs(7 * 24 * 3600),
            client_tokens: CLIENT_TOKEN_LIFETIME,
            retired_resources: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            batch: 200,
        }
    }
}

/// A client token gives the first answer again for this long.
pub const CLIENT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl RetentionSettings {
    /// What one pass deletes, as of `now`.
    pub fn rules(&self, catalog: &Catalog, now: i64) -> Retention {
        Retention {
            tasks_finished_before: now.saturating_sub(millis(self.tasks)),
            nonces_expired_before: now,
            tokens_created_before: now.saturating_sub(millis(self.client_tokens)),
            resources: catalog
                .resource_types()
                .filter_map(|kind| {
                    Some(ResourceRetention {
                        kind: kind.kind.to_owned(),
                        state: qtask_core::ResourceState::new(kind.retired_state?),
                        idle_before: now.saturating_sub(millis(self.retired_resources)),
                    })
                })
                .collect(),
            batch: self.batch,
        }
    }
}

/// Runs one retention pass to the end, batch after batch; returns what it deleted.
pub async fn purge_expired(
    store: &dyn Store,
    catalog: &Catalog,
    settings: &RetentionSettings,
    stop: &CancellationToken,
) -> qtask_store::StoreResult<PurgeReport> {
    let mut total = PurgeReport::default();
    loop {
        let batch = store.purge(settings.rules(catalog, now_millis())).await?;
        total.tasks += batch.tasks;
        total.groups += batch.groups;
        total.nonces += batch.nonces;
        total.tokens += batch.tokens;
        total.resources += batch.resources;
        if !batch.more || stop.is_cancelled() {
            return Ok(total);
        }
        // Let the writer serve everyone else between batches.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Tasks this process's rescue loop put back in the queue since it started (for
/// metrics). Process-wide because a process runs one maintenance loop.
static RESCUED_TASKS: AtomicU64 = AtomicU64::new(0);

pub fn rescued_tasks() -> u64 {
    RESCUED_TASKS.load(Ordering::Relaxed)
}

/// Whether this node runs the maintenance now: on a store several nodes share, one of
/// them at a time does (the store elects it); an error counts as not leading.
async fn leads(store: &dyn Store) -> bool {
    match store.lead_maintenance().await {
        Ok(leads) => leads,
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether this node leads the maintenance");
            false
        }
    }
}

/// Starts the rescue and retention loops; they end when `stop` is cancelled.
pub fn start(
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    dispatcher: Dispatcher,
    lease: Duration,
    retention: RetentionSettings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let rescue_every = (lease / 4).max(Duration::from_millis(50));
        let mut rescue = tokio::time::interval(rescue_every);
        let mut purge = tokio::time::interval(retention.interval);
        rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = rescue.tick() => {
                    if !leads(store.as_ref()).await {
                        continue;
                    }
                    match store.rescue(now_millis(), dispatcher.running()).await {
                        Ok(rescued) if !rescued.is_empty() => {
                            RESCUED_TASKS.fetch_add(rescued.len() as u64, Ordering::Relaxed);
                            tracing::warn!(count = rescued.len(), "rescued tasks whose lease expired");
                            dispatcher.enqueue(rescued);
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "cannot rescue expired leases"),
                    }
                }
                _ = purge.tick() => {
                    if !leads(store.as_ref()).await {
                        continue;
                    }
                    match purge_expired(store.as_ref(), &catalog, &retention, &stop).await {
                        Ok(report) if report != PurgeReport::default() => {
                            tracing::info!(?report, "retention deleted expired records");
                        }
                        Ok(_) => {}
                        Err(error) => tracing::error!(%error, "retention failed"),
                    }
                }
            }
        }
    })
}
