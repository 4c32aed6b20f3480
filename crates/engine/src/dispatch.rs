//! Dispatch: committed tasks go straight into an in-process queue (no database poll),
//! and a pool of at most `workers` concurrent workers claims, runs and completes them.
//!
//! A worker's claim and completion are store writes, group-committed with everyone
//! else's. If the store fails, the worker retries with backoff; if the process dies,
//! the task is found RUNNING or QUEUED at the next start and run again.

use crate::executor::Executor;
use crate::time::now_millis;
use qtask_core::{RequestId, TaskError};
use qtask_store::{ClaimedTask, Store, StoreResult, TaskOutcome};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// The code recorded when an executor panics.
pub const INTERNAL_ERROR: u32 = 6000;

/// Where committed tasks are handed to the workers.
#[derive(Clone)]
pub struct Dispatcher {
    queue: mpsc::UnboundedSender<RequestId>,
}

impl Dispatcher {
    pub fn enqueue(&self, tasks: impl IntoIterator<Item = RequestId>) {
        for task in tasks {
            // Fails only once the pool has stopped; the task is durable and will be
            // recovered at the next start.
            let _ = self.queue.send(task);
        }
    }
}

/// The running worker pool.
pub struct WorkerPool {
    done: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    /// Starts the pool. It stops taking tasks when `shutdown` is cancelled, then waits up
    /// to `grace` for running tasks; tasks still running after that stay RUNNING in the
    /// store and run again at the next start.
    pub fn start(
        store: Arc<dyn Store>,
        executor: Arc<dyn Executor>,
        workers: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> (Dispatcher, WorkerPool) {
        let (queue, inbox) = mpsc::unbounded_channel();
        let done = tokio::spawn(run(store, executor, workers.max(1), inbox, shutdown, grace));
        (Dispatcher { queue }, WorkerPool { done })
    }

    /// Waits until the pool has stopped.
    pub async fn join(self) {
        let _ = self.done.await;
    }
}

async fn run(
    store: Arc<dyn Store>,
    executor: Arc<dyn Executor>,
    workers: usize,
    mut inbox: mpsc::UnboundedReceiver<RequestId>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(workers));
    loop {
        // Take a task only when a worker slot is free.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let task = tokio::select! {
            _ = shutdown.cancelled() => break,
            task = inbox.recv() => match task {
                Some(task) => task,
                None => break,
            },
        };
        let store = Arc::clone(&store);
        let executor = Arc::clone(&executor);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            run_task(store.as_ref(), executor, task, &shutdown).await;
            drop(slot);
        });
    }
    let all = u32::try_from(workers).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "tasks still running at shutdown will run again at the next start"
        );
    }
}

/// Runs one task from claim to completion: the engine's single step, also used by
/// tests. Returns the recorded outcome, or `None` when the task was not claimable
/// (already running elsewhere or final) or shutdown interrupted it.
pub async fn run_task(
    store: &dyn Store,
    executor: Arc<dyn Executor>,
    task: RequestId,
    shutdown: &CancellationToken,
) -> Option<TaskOutcome> {
    let claimed: Option<ClaimedTask> =
        persist(shutdown, "claim", task, || store.claim(task, now_millis())).await?;
    let claimed = claimed?;
    let outcome = match tokio::spawn(async move { executor.execute(&claimed).await }).await {
        Ok(Ok(result)) => TaskOutcome::Succeeded { result },
        Ok(Err(error)) => TaskOutcome::Failed(error),
        Err(panic) => {
            tracing::error!(%task, %panic, "executor panicked");
            TaskOutcome::Failed(TaskError {
                code: INTERNAL_ERROR,
                message: "the executor failed unexpectedly".into(),
            })
        }
    };
    persist(shutdown, "complete", task, || {
        store.complete(task, outcome.clone(), now_millis())
    })
    .await?;
    Some(outcome)
}

/// Retries a store write with backoff until it succeeds or shutdown begins: a task
/// must not be dropped because the disk was briefly unavailable.
async fn persist<T, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    task: RequestId,
    mut write: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = StoreResult<T>>,
{
    let mut delay = Duration::from_millis(10);
    loop {
        match write().await {
            Ok(value) => return Some(value),
            Err(error) => {
                tracing::error!(%task, %error, ?delay, "cannot {what} the task; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
