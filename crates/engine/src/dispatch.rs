//! Dispatch: committed tasks go straight into an in-process queue (no database poll),
//! and a pool of at most `workers` concurrent workers claims, runs and completes them.
//!
//! A claim takes a lease with a fencing token. While the executor runs, the worker
//! renews the lease every third of its length; if it cannot renew before the lease
//! runs out, or finds it taken over, it aborts the executor and records nothing, so a
//! task never runs in two places at once — and should a frozen worker wake up late,
//! the store refuses its outcome by the fence. Store writes are retried with backoff;
//! if the process dies, the task is found RUNNING or QUEUED at the next start and run
//! again. On a database several nodes share, idle workers also take tasks other nodes
//! committed (see [`sweep`]).

use crate::catalog::Catalog;
use crate::events::{EventBus, EventKind, TaskEvent};
use crate::executor::{ExecError, Executor};
use crate::policy::Policy;
use crate::start_delay::StartDelays;
use crate::time::now_millis;
use qtask_core::{RequestId, TaskError};
use qtask_store::{Completion, Lease, LeaseStatus, Runnable, Store, StoreResult, TaskOutcome};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How this process's workers hold tasks.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The lease owner's name: this qtask node.
    pub node: String,
    /// How long a lease lasts without renewal. A task whose worker died is rescued
    /// within `lease` plus one rescue interval (`lease / 4`).
    pub lease: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            node: node_name(),
            lease: Duration::from_secs(30),
        }
    }
}

/// A name for this process as a lease owner: host and process ID.
pub fn node_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "qtask".into())
}

/// The tasks this process is running, with the signal that asks each to cancel, and
/// how long each action's attempts typically take here.
#[derive(Default)]
struct Running {
    tasks: Mutex<HashMap<RequestId, CancellationToken>>,
    /// An exponentially weighted mean of attempt durations, by action.
    durations: Mutex<HashMap<String, Duration>>,
    start_delays: StartDelays,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, CancellationToken>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, action: &str, took: Duration) {
        let mut durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let mean = durations.entry(action.to_owned()).or_insert(took);
        *mean = mean.mul_f64(0.8) + took.mul_f64(0.2);
    }
}

/// Removes a task from [`Running`] when its worker is done with it, however it ends.
struct RunningEntry<'a> {
    running: &'a Running,
    task: RequestId,
}

impl Drop for RunningEntry<'_> {
    fn drop(&mut self) {
        self.running.lock().remove(&self.task);
    }
}

/// Where committed tasks are handed to the workers.
#[derive(Clone)]
pub struct Dispatcher {
    queue: mpsc::UnboundedSender<RequestId>,
    running: Arc<Running>,
}

impl Dispatcher {
    /// Queues tasks that can run now or later (a retry's backoff).
    pub fn enqueue(&self, tasks: impl IntoIterator<Item = Runnable>) {
        let now = now_millis();
        for Runnable { task, not_before } in tasks {
            let wait = not_before.saturating_sub(now);
            if wait <= 0 {
                // Fails only once the pool has stopped; the task is durable and will
                // be recovered at the next start.
                let _ = self.queue.send(task);
            } else {
                let queue = self.queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                    let _ = queue.send(task);
                });
            }
        }
    }

    /// Tells the executor of a task this process runs that a cancel was requested.
    /// False when the task does not run here (the heartbeat of the node that runs it
    /// will see the request).
    pub fn signal_cancel(&self, task: RequestId) -> bool {
        match self.running.lock().get(&task) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The tasks this process is running now.
    pub fn running(&self) -> Vec<RequestId> {
        self.running.lock().keys().copied().collect()
    }

    /// Where committed tasks are stamped and their start delays observed.
    pub fn start_delays(&self) -> &StartDelays {
        &self.running.start_delays
    }

    /// How long an attempt of `action` typically takes in this process (none run yet:
    /// `None`).
    pub fn typical_duration(&self, action: &str) -> Option<Duration> {
        let durations = self
            .running
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        durations.get(action).copied()
    }
}

/// What one worker step did with a task.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Not claimable: already running elsewhere, final, waiting, or not due yet.
    NotClaimable,
    /// The outcome is recorded; `runnable` can run now or later.
    Recorded {
        outcome: TaskOutcome,
        runnable: Vec<Runnable>,
    },
    /// The lease was taken over while the executor ran: its outcome was refused.
    Fenced,
    /// The lease could not be renewed in time or was taken over: the executor was
    /// stopped and nothing recorded. If nobody had taken the task yet, this worker
    /// gave it back; `runnable` is what must be dispatched again.
    LeaseLost { runnable: Vec<Runnable> },
    /// Shutdown: the task was given back to the queue (or, if the store could not be
    /// reached, left RUNNING for the next start).
    Released,
}

/// Runs tasks one step at a time: claim, execute under a lease, record.
pub struct Worker {
    store: Arc<dyn Store>,
    executor: Arc<dyn Executor>,
    catalog: Arc<Catalog>,
    settings: WorkerSettings,
    running: Arc<Running>,
    events: EventBus,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        executor: Arc<dyn Executor>,
        catalog: Arc<Catalog>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            store,
            executor,
            catalog,
            settings,
            running: Arc::default(),
            events: EventBus::default(),
        }
    }

    /// Publishes every claim and outcome on `events`.
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    fn policy(&self, action: &str) -> Policy {
        self.catalog
            .operation(action)
            .map(|op| op.policy.clone())
            .unwrap_or_default()
    }

    /// Runs one task from claim to recorded outcome: the engine's single step, also
    /// used by tests. `stop` interrupts it (shutdown after the grace period).
    #[tracing::instrument(name = "task", level = "error", skip_all, fields(requestId = %task))]
    pub async fn run(&self, task: RequestId, stop: &CancellationToken) -> Step {
        let committed_at = self.running.start_delays.take(task);
        let claimed_at = Instant::now();
        let now = now_millis();
        let lease = Lease {
            owner: self.settings.node.clone(),
            now,
            expires_at: now + self.settings.lease.as_millis() as i64,
        };
        let claim = persist(stop, "claim", task, || {
            self.store.claim(task, lease.clone())
        })
        .await;
        let Some(Some(claimed)) = claim else {
            return Step::NotClaimable;
        };
        let cancel = CancellationToken::new();
        self.running.lock().insert(task, cancel.clone());
        let _entry = RunningEntry {
            running: &self.running,
            task,
        };
        let fence = claimed.fence;
        let policy = self.policy(&claimed.task.action);
        let attempt = claimed.task.attempts;
        let action = claimed.task.action.clone();
        let record = claimed.task.clone();
        let event = |kind: EventKind| TaskEvent::of(&record, kind, now_millis());
        self.events.publish(event(EventKind::Started));

        if let Some(committed_at) = committed_at {
            self.running.start_delays.started(committed_at);
        }
        let executor = Arc::clone(&self.executor);
        let mut execution = AbortOnDrop(tokio::spawn({
            let cancel = cancel.clone();
            let timeout = policy.timeout;
            async move { tokio::time::timeout(timeout, executor.execute(&claimed, &cancel)).await }
                .in_current_span()
        }));
        let joined = tokio::select! {
            biased;
            () = self.hold_lease(task, fence, claimed_at, &cancel) => {
                execution.stop().await;
                tracing::warn!(%task, fence, "lost the lease; stopped the executor");
                self.events.publish(event(EventKind::LeaseLost));
                let runnable = match self.store.release(task, fence, now_millis()).await {
                    Ok(released) => released.unwrap_or_default(),
                    Err(error) => {
                        tracing::error!(%task, %error, "cannot release the task; rescue will take it");
                        Vec::new()
                    }
                };
                return Step::LeaseLost { runnable };
            }
            _ = stop.cancelled() => {
                execution.stop().await;
                if let Err(error) = self.store.release(task, fence, now_millis()).await {
                    tracing::error!(%task, %error, "cannot release the task; the next start will run it");
                }
                self.events.publish(event(EventKind::Released));
                return Step::Released;
            }
            joined = execution.wait() => joined,
        };
        let retry_or_fail = |error: TaskError| {
            if policy.may_retry(attempt) && !cancel.is_cancelled() {
                let delay = policy.retry_delay(attempt, rand::random());
                TaskOutcome::Retry {
                    error,
                    not_before: now_millis() + delay.as_millis() as i64,
                }
            } else {
                TaskOutcome::Failed(TaskError {
                    code: error.code,
                    message: format!(
                        "{} (attempt {attempt} of {})",
                        error.message, policy.max_attempts
                    ),
                })
            }
        };
        let outcome = match joined {
            Ok(Ok(Ok(result))) => TaskOutcome::Succeeded { result },
            Ok(Ok(Err(ExecError::Fatal(error)))) => TaskOutcome::Failed(error),
            Ok(Ok(Err(ExecError::Canceled(message)))) => TaskOutcome::Canceled { message },
            Ok(Ok(Err(ExecError::Retryable(error)))) => retry_or_fail(error),
            Ok(Err(_elapsed)) => retry_or_fail(TaskError::operation_failed(format!(
                "{action} on attempt {attempt} timed out after {:?}",
                policy.timeout
            ))),
            Err(panic) => {
                tracing::error!(%task, %panic, "executor panicked");
                TaskOutcome::Failed(TaskError {
                    code: TaskError::INTERNAL,
                    message: "the executor failed unexpectedly".into(),
                })
            }
        };
        let completion = persist(stop, "complete", task, || {
            self.store
                .complete(task, fence, outcome.clone(), now_millis())
        })
        .await;
        let mut ended = match &outcome {
            TaskOutcome::Succeeded { result } => TaskEvent {
                result: result.clone(),
                ..event(EventKind::Succeeded)
            },
            TaskOutcome::Failed(error) => TaskEvent {
                error: Some(error.clone()),
                ..event(EventKind::Failed)
            },
            TaskOutcome::Retry { error, not_before } => TaskEvent {
                error: Some(error.clone()),
                next_attempt_at: Some(*not_before),
                ..event(EventKind::Retrying)
            },
            TaskOutcome::Canceled { message } => TaskEvent {
                error: Some(TaskError::operation_failed(message.clone())),
                ..event(EventKind::Canceled)
            },
        };
        ended.duration_ms = Some(claimed_at.elapsed().as_millis() as u64);
        self.running.observe(&action, claimed_at.elapsed());
        match completion {
            Some(Completion::Recorded { runnable }) => {
                self.events.publish(ended);
                Step::Recorded { outcome, runnable }
            }
            Some(Completion::Fenced) => {
                self.events.publish(event(EventKind::Fenced));
                Step::Fenced
            }
            None => Step::Released,
        }
    }

    /// Renews the lease until it is lost: returns only then. Passes a cancel request
    /// seen in the store (made on another node) to the executor.
    async fn hold_lease(
        &self,
        task: RequestId,
        fence: u64,
        claimed_at: Instant,
        cancel: &CancellationToken,
    ) {
        let lease = self.settings.lease;
        // Stop a little before the store's expiry, so a rescuer never overlaps.
        let margin = lease / 10;
        let mut deadline = claimed_at + lease - margin;
        let mut next_renewal = claimed_at + lease / 3;
        loop {
            tokio::time::sleep_until(next_renewal.min(deadline)).await;
            if Instant::now() >= deadline {
                return;
            }
            let started = Instant::now();
            let expires_at = now_millis() + lease.as_millis() as i64;
            match self.store.renew(task, fence, expires_at).await {
                Ok(LeaseStatus::Held { cancel_requested }) => {
                    deadline = started + lease - margin;
                    if cancel_requested {
                        cancel.cancel();
                    }
                }
                Ok(LeaseStatus::Lost) => return,
                Err(error) => tracing::warn!(%task, %error, "cannot renew the lease"),
            }
            next_renewal = Instant::now() + lease / 3;
        }
    }
}

/// A spawned task that is aborted when dropped (the executor of an abandoned attempt).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn wait(&mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }

    /// Aborts the task and waits until it has stopped, so that nothing of this attempt
    /// still runs when the task is handed to another worker.
    async fn stop(&mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The running worker pool.
pub struct WorkerPool {
    done: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    /// Starts the pool. It stops taking tasks when `shutdown` is cancelled, then waits up
    /// to `grace` for running tasks and gives the rest back to the queue, so the next
    /// start takes them at once.
    pub fn start(
        worker: Worker,
        workers: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> (Dispatcher, WorkerPool) {
        let (queue, inbox) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            queue,
            running: Arc::clone(&worker.running),
        };
        let done = tokio::spawn(run(
            Arc::new(worker),
            dispatcher.clone(),
            workers,
            inbox,
            shutdown,
            grace,
        ));
        (dispatcher, WorkerPool { done })
    }

    /// Takes back the tasks the node's last run left unfinished ([`Store::recover`]),
    /// then starts the pool with them queued; answers how many it recovered. In this
    /// order: recovery requeues every task still leased to this node's name, so a claim
    /// the new pool made first (on a shared store its sweep looks for runnable tasks at
    /// once) would be taken for the last run's and requeued while it runs — the task
    /// would run twice.
    pub async fn recover_and_start(
        worker: Worker,
        workers: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> StoreResult<(Dispatcher, WorkerPool, usize)> {
        let recovered = worker
            .store
            .recover(now_millis(), &worker.settings.node)
            .await?;
        let count = recovered.len();
        let (dispatcher, pool) = Self::start(worker, workers, shutdown, grace);
        dispatcher.enqueue(recovered);
        Ok((dispatcher, pool, count))
    }

    /// Waits until the pool has stopped.
    pub async fn join(self) {
        let _ = self.done.await;
    }
}

/// On a store several nodes share: how often a node with idle workers looks for
/// runnable tasks that no notification announced (their node died between committing
/// and running them, or a notification was missed while reconnecting).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// On a shared store, idle workers take runnable tasks that other nodes committed: at
/// once when a node announces some, and every [`SWEEP_INTERVAL`] in any case. Claims
/// decide who runs a task, so looking at the same tasks as another node is harmless.
async fn sweep(
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let Some(announced) = store.ready_signal() else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = announced.notified() => {}
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        let idle = slots.available_permits();
        if idle == 0 {
            continue;
        }
        match store.ready(u32::try_from(idle).unwrap_or(u32::MAX)).await {
            // Tasks waiting out a backoff are left to a later sweep (or to the timer
            // of the node that scheduled the retry).
            Ok(ready) => {
                let now = now_millis();
                dispatcher.enqueue(ready.into_iter().filter(|r| r.not_before <= now));
            }
            Err(error) => tracing::warn!(%error, "cannot look for runnable tasks"),
        }
    }
}

async fn run(
    worker: Arc<Worker>,
    dispatcher: Dispatcher,
    workers: usize,
    mut inbox: mpsc::UnboundedReceiver<RequestId>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    if workers == 0 {
        // Workers off: tasks are accepted and committed but none runs here; they stay
        // QUEUED in the store for the next start (or another node).
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                task = inbox.recv() => if task.is_none() { return },
            }
        }
    }
    let slots = Arc::new(Semaphore::new(workers));
    let stop = CancellationToken::new();
    if worker.store.shared() {
        tokio::spawn(sweep(
            Arc::clone(&worker.store),
            dispatcher.clone(),
            Arc::clone(&slots),
            shutdown.clone(),
        ));
    }
    loop {
        // Take a task only when a worker slot is free, and none once shutdown began
        // (`biased`: a task waiting in the inbox must not win against it at random).
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let task = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            task = inbox.recv() => match task {
                Some(task) => task,
                None => break,
            },
        };
        let worker = Arc::clone(&worker);
        let dispatcher = dispatcher.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            match worker.run(task, &stop).await {
                Step::Recorded { runnable, .. } | Step::LeaseLost { runnable } => {
                    dispatcher.enqueue(runnable)
                }
                Step::NotClaimable | Step::Fenced | Step::Released => {}
            }
            drop(slot);
        });
    }
    let all = u32::try_from(workers).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let left = dispatcher.running().len();
        tracing::warn!(
            ?grace,
            left,
            "tasks still running after the grace period go back to the queue"
        );
        stop.cancel();
        let _ = slots.acquire_many(all).await;
    }
}

/// Retries a store write with backoff until it succeeds or `stop` fires: a task must
/// not be dropped because the disk was briefly unavailable.
async fn persist<T, F, Fut>(
    stop: &CancellationToken,
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
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
