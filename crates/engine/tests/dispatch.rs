//! The worker step ([`Worker::run`]) and the pool, on the real SQLite store: claim under
//! a lease, execute, record — and retries, timeouts, panics, cancellation, lost leases,
//! fencing, shutdown, rescue and retention.

use async_trait::async_trait;
use qtask_core::{
    AccountId, Effect, Nonce, Region, RequestId, ResourceId, ResourceState, TaskError, TaskState,
};
use qtask_engine::catalog::Catalog;
use qtask_engine::dispatch::{Dispatcher, Step, Worker, WorkerPool, WorkerSettings};
use qtask_engine::executor::{ExecError, Executor, SimExecutor, SimSettings};
use qtask_engine::maintenance::{self, RetentionSettings};
use qtask_engine::policy::Policy;
use qtask_engine::time::now_millis;
use qtask_store::{
    CancelOutcome, ClaimedTask, Lease, NewResource, NonceClaim, OnBusy, PlannedTask, Runnable,
    Store, Submission, Submitted, Target, TaskOutcome, TaskRecord,
};

use qtask_store_postgres::testing::{scratch_if_postgres, ScratchSchema};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    _schema: Option<ScratchSchema>,
    store: Arc<dyn Store>,
    account: AccountId,
}

/// A fresh store: SQLite, or PostgreSQL under `QTASK_TEST_BACKEND=postgres`.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let schema = scratch_if_postgres();
    let store: Arc<dyn Store> = match &schema {
        None => Arc::new(qtask_store_sqlite::open(&dir.path().join("q.db")).unwrap()),
        Some(schema) => {
            let url = schema.url();
            Arc::new(
                tokio::task::spawn_blocking(move || qtask_store_postgres::open(&url))
                    .await
                    .unwrap()
                    .unwrap(),
            )
        }
    };
    let account = store.create_account("test", 0).await.unwrap();
    Fixture {
        _dir: dir,
        _schema: schema,
        store,
        account,
    }
}

/// Submits one RunInstances-like task creating `id`; returns the task ID.
async fn submit_creation(f: &Fixture, id: &str, name: &str, nonce: u64) -> RequestId {
    let submission = Submission {
        account: f.account,
        region: "ap-guangzhou".parse::<Region>().unwrap(),
        action: "RunInstances".into(),
        nonce: NonceClaim {
            secret_id: "AKIDtest".parse().unwrap(),
            nonce: Nonce::new(nonce).unwrap(),
            expires_at: i64::MAX,
            signature: format!("sig-{nonce}"),
        },
        idempotency: None,
        grouped: false,
        tasks: vec![PlannedTask {
            target: Target::Create(NewResource {
                id: ResourceId::parse("ins", id).unwrap(),
                kind: "instance".into(),
                state: ResourceState::new("PENDING"),
                attrs: json!({ "instanceName": name }).as_object().unwrap().clone(),
            }),
            params: json!({}),
            effect: Effect {
                transitional: None,
                on_success: Some(ResourceState::new("RUNNING")),
                on_failure: Some(ResourceState::new("LAUNCH_FAILED")),
                patch: Default::default(),
            },
            on_busy: OnBusy::Refuse,
        }],
        now: 1,
        answer: Box::new(|_| String::new()),
        limits: Default::default(),
        audit: None,
    };
    match f.store.submit(submission).await.unwrap() {
        Submitted::New { report, .. } => report.accepted().next().unwrap(),
        other => panic!("not committed: {other:?}"),
    }
}

async fn record(f: &Fixture, id: RequestId) -> TaskRecord {
    f.store.task(f.account, id).await.unwrap().unwrap()
}

async fn resource_state(f: &Fixture, id: &str) -> (String, Option<RequestId>) {
    let filter = qtask_store::ResourceFilter {
        kind: "instance".into(),
        region: "ap-guangzhou".parse().unwrap(),
        ids: vec![ResourceId::parse("ins", id).unwrap()],
        states: vec![],
        search: None,
        name_attr: "instanceName",
        attr_in: vec![],
    };
    let page = qtask_store::Page {
        offset: 0,
        limit: 10,
    };
    let listing = f.store.resources(f.account, filter, page).await.unwrap();
    let resource = &listing.items[0];
    (resource.state.as_str().to_owned(), resource.active_task)
}

/// The built-in catalog with RunInstances' policy replaced.
fn catalog_with(policy: Policy) -> Arc<Catalog> {
    let mut catalog = Catalog::builtin();
    catalog.set_policy("RunInstances", policy).unwrap();
    Arc::new(catalog)
}

fn sim(speed: f64) -> Arc<dyn Executor> {
    Arc::new(SimExecutor::new(
        &Catalog::builtin(),
        SimSettings {
            speed,
            ..SimSettings::default()
        },
    ))
}

fn worker(
    f: &Fixture,
    executor: Arc<dyn Executor>,
    catalog: Arc<Catalog>,
    lease: Duration,
) -> Worker {
    Worker::new(
        f.store.clone(),
        executor,
        catalog,
        WorkerSettings {
            node: "test-node".into(),
            lease,
        },
    )
}

/// A pool of `workers` running `executor` on the built-in catalog with 30 s leases.
fn start_pool(
    f: &Fixture,
    executor: Arc<dyn Executor>,
    workers: usize,
    shutdown: &CancellationToken,
    grace: Duration,
) -> (Dispatcher, WorkerPool) {
    let worker = worker(
        f,
        executor,
        Arc::new(Catalog::builtin()),
        Duration::from_secs(30),
    );
    WorkerPool::start(worker, workers, shutdown.clone(), grace)
}

fn instant_worker(f: &Fixture) -> Worker {
    worker(
        f,
        sim(0.0),
        Arc::new(Catalog::builtin()),
        Duration::from_secs(30),
    )
}

/// Waits, with a deadline, until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn recorded(step: Step) -> (TaskOutcome, Vec<Runnable>) {
    match step {
        Step::Recorded { outcome, runnable } => (outcome, runnable),
        other => panic!("expected a recorded outcome, got {other:?}"),
    }
}

#[tokio::test]
async fn one_step_claims_executes_and_completes_once() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0001", "web", 1).await;
    let worker = instant_worker(&f);
    let (outcome, runnable) = recorded(worker.run(task, &CancellationToken::new()).await);
    assert_eq!(outcome, TaskOutcome::Succeeded { result: None });
    assert!(runnable.is_empty());
    let done = record(&f, task).await;
    assert_eq!((done.state, done.attempts), (TaskState::Succeeded, 1));
    assert_eq!(done.run.lease, None, "a final task holds no lease");
    // A second step on a final task does nothing: no task runs twice.
    assert_eq!(
        worker.run(task, &CancellationToken::new()).await,
        Step::NotClaimable
    );
    assert_eq!(record(&f, task).await.attempts, 1);
}

#[tokio::test]
async fn a_fatal_fault_fails_at_once_with_5100() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0002", "web qtask-fail:RunInstances", 1).await;
    let (outcome, _) = recorded(
        instant_worker(&f)
            .run(task, &CancellationToken::new())
            .await,
    );
    let TaskOutcome::Failed(error) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!(error.code, 5100);
    assert!(
        error.message.contains("simulated fault"),
        "{}",
        error.message
    );
    let done = record(&f, task).await;
    assert_eq!((done.state, done.attempts), (TaskState::Failed, 1));
}

#[tokio::test]
async fn retryable_faults_retry_after_a_backoff_then_succeed() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0003", "web qtask-flaky:RunInstances:2", 1).await;
    let policy = Policy {
        backoff: Duration::from_millis(200),
        ..Policy::default()
    };
    let worker = worker(&f, sim(0.0), catalog_with(policy), Duration::from_secs(30));
    let stop = CancellationToken::new();

    let before = now_millis();
    let (outcome, runnable) = recorded(worker.run(task, &stop).await);
    let TaskOutcome::Retry { error, not_before } = outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(error.message.contains("qtask-flaky"), "{}", error.message);
    // Equal jitter: between half and all of the 200 ms backoff.
    assert!(
        not_before >= before + 100,
        "retry not delayed: {}",
        not_before - before
    );
    assert!(not_before <= now_millis() + 200);
    assert_eq!(runnable, vec![Runnable { task, not_before }]);
    let waiting = record(&f, task).await;
    assert_eq!(waiting.state, TaskState::Queued);
    assert_eq!(waiting.run.next_attempt_at, Some(not_before));
    assert_eq!(waiting.error, Some(error), "the last error stays visible");
    assert_eq!(
        resource_state(&f, "ins-aaaa0003").await.1,
        Some(task),
        "still busy"
    );
    assert_eq!(
        worker.run(task, &stop).await,
        Step::NotClaimable,
        "not due yet"
    );

    tokio::time::sleep(Duration::from_millis(
        (not_before - now_millis()).max(0) as u64 + 5,
    ))
    .await;
    let (outcome, _) = recorded(worker.run(task, &stop).await);
    assert!(matches!(outcome, TaskOutcome::Retry { .. }), "{outcome:?}");
    eventually("the third attempt succeeds", || async {
        matches!(
            worker.run(task, &stop).await,
            Step::Recorded {
                outcome: TaskOutcome::Succeeded { .. },
                ..
            }
        )
    })
    .await;
    let done = record(&f, task).await;
    assert_eq!(
        (done.state, done.attempts, done.error),
        (TaskState::Succeeded, 3, None)
    );
    assert_eq!(
        resource_state(&f, "ins-aaaa0003").await,
        ("RUNNING".into(), None)
    );
}

#[tokio::test]
async fn retries_end_with_the_last_error_after_max_attempts() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0004", "web qtask-flaky:RunInstances:9", 1).await;
    let policy = Policy {
        max_attempts: 2,
        backoff: Duration::ZERO,
        ..Policy::default()
    };
    let worker = worker(&f, sim(0.0), catalog_with(policy), Duration::from_secs(30));
    let stop = CancellationToken::new();
    let (first, _) = recorded(worker.run(task, &stop).await);
    assert!(matches!(first, TaskOutcome::Retry { .. }), "{first:?}");
    let (last, _) = recorded(worker.run(task, &stop).await);
    let TaskOutcome::Failed(error) = last else {
        panic!("expected the task to fail, got {last:?}");
    };
    assert!(
        error.message.contains("attempt 2 of 2"),
        "{}",
        error.message
    );
    let done = record(&f, task).await;
    assert_eq!((done.state, done.attempts), (TaskState::Failed, 2));
    assert_eq!(resource_state(&f, "ins-aaaa0004").await.0, "LAUNCH_FAILED");
}

/// Never finishes by itself; remembers whether it was dropped (aborted) and how often
/// it started.
#[derive(Default)]
struct Hanging {
    started: AtomicU32,
    dropped: Arc<AtomicBool>,
    release: Notify,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl Executor for Hanging {
    async fn execute(
        &self,
        _task: &ClaimedTask,
        _cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        let _flag = DropFlag(Arc::clone(&self.dropped));
        self.started.fetch_add(1, Ordering::SeqCst);
        self.release.notified().await;
        Ok(Some(json!({"late": true})))
    }
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_aborted_and_counts_as_retryable() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0005", "web", 1).await;
    let policy = Policy {
        max_attempts: 2,
        timeout: Duration::from_millis(100),
        backoff: Duration::ZERO,
        ..Policy::default()
    };
    let hanging = Arc::new(Hanging::default());
    let worker = worker(
        &f,
        hanging.clone(),
        catalog_with(policy),
        Duration::from_secs(30),
    );
    let stop = CancellationToken::new();
    let (first, _) = recorded(worker.run(task, &stop).await);
    let TaskOutcome::Retry { error, .. } = first else {
        panic!("a timeout is retryable, got {first:?}");
    };
    assert!(
        error.message.contains("timed out after 100ms"),
        "{}",
        error.message
    );
    assert!(
        hanging.dropped.load(Ordering::SeqCst),
        "the attempt was aborted"
    );
    let (last, _) = recorded(worker.run(task, &stop).await);
    assert!(matches!(last, TaskOutcome::Failed(_)), "{last:?}");
    assert_eq!(hanging.started.load(Ordering::SeqCst), 2);
    assert_eq!(record(&f, task).await.state, TaskState::Failed);
}

struct Panicking;

#[async_trait]
impl Executor for Panicking {
    async fn execute(
        &self,
        _task: &ClaimedTask,
        _cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        panic!("executor bug");
    }
}

#[tokio::test]
async fn a_panicking_executor_fails_the_task_and_frees_the_resource() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0006", "web", 1).await;
    let worker = worker(
        &f,
        Arc::new(Panicking),
        Arc::new(Catalog::builtin()),
        Duration::from_secs(30),
    );
    let (outcome, _) = recorded(worker.run(task, &CancellationToken::new()).await);
    let TaskOutcome::Failed(error) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!(error.code, TaskError::INTERNAL);
    let done = record(&f, task).await;
    assert_eq!(done.state, TaskState::Failed);
    assert_eq!(done.error.unwrap().code, TaskError::INTERNAL);
    assert_eq!(
        resource_state(&f, "ins-aaaa0006").await,
        ("LAUNCH_FAILED".into(), None),
        "the resource is free again"
    );
}

/// Takes `task` over as another node would after its lease expired: back to the queue,
/// then claimed under a new fence.
async fn take_over(f: &Fixture, task: RequestId) -> u64 {
    let fence = record(f, task).await.run.fence;
    assert!(f
        .store
        .release(task, fence, now_millis())
        .await
        .unwrap()
        .is_some());
    let now = now_millis();
    let claimed = f
        .store
        .claim(
            task,
            Lease {
                owner: "other-node".into(),
                now,
                expires_at: now + 60_000,
            },
        )
        .await
        .unwrap()
        .expect("the other node claims it");
    assert!(claimed.fence > fence, "fences grow with every claim");
    claimed.fence
}

#[tokio::test]
async fn a_worker_that_finds_its_lease_taken_stops_its_executor_and_records_nothing() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0007", "web", 1).await;
    let hanging = Arc::new(Hanging::default());
    // Renews every 100 ms.
    let worker = worker(
        &f,
        hanging.clone(),
        Arc::new(Catalog::builtin()),
        Duration::from_millis(300),
    );
    let stop = CancellationToken::new();
    let step = tokio::spawn(async move { worker.run(task, &stop).await });
    eventually("the executor starts", || async {
        hanging.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let held = record(&f, task).await;
    assert_eq!(held.run.lease.as_ref().unwrap().owner, "test-node");
    let new_fence = take_over(&f, task).await;

    assert_eq!(step.await.unwrap(), Step::LeaseLost { runnable: vec![] });
    assert!(
        hanging.dropped.load(Ordering::SeqCst),
        "the executor was stopped"
    );
    let now_held = record(&f, task).await;
    assert_eq!(now_held.state, TaskState::Running);
    assert_eq!(
        now_held.run.fence, new_fence,
        "the new holder keeps the task"
    );
    assert_eq!(now_held.run.lease.unwrap().owner, "other-node");
}

#[tokio::test]
async fn a_late_completion_from_a_replaced_worker_is_refused_and_counted() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0008", "web", 1).await;
    let hanging = Arc::new(Hanging::default());
    // A long lease: no renewal happens before the executor returns.
    let worker = worker(
        &f,
        hanging.clone(),
        Arc::new(Catalog::builtin()),
        Duration::from_secs(60),
    );
    let stop = CancellationToken::new();
    let step = tokio::spawn(async move { worker.run(task, &stop).await });
    eventually("the executor starts", || async {
        hanging.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let new_fence = take_over(&f, task).await;
    hanging.release.notify_one();

    assert_eq!(step.await.unwrap(), Step::Fenced);
    assert_eq!(f.store.stats().await.unwrap().fenced_completions, 1);
    let task_now = record(&f, task).await;
    assert_eq!(
        task_now.state,
        TaskState::Running,
        "the late outcome was not recorded"
    );
    assert_eq!(task_now.result, None);
    // The current holder's outcome counts.
    let completion = f
        .store
        .complete(
            task,
            new_fence,
            TaskOutcome::Succeeded { result: None },
            now_millis(),
        )
        .await
        .unwrap();
    assert!(matches!(
        completion,
        qtask_store::Completion::Recorded { .. }
    ));
    assert_eq!(record(&f, task).await.state, TaskState::Succeeded);
}

#[tokio::test]
async fn a_cancel_seen_at_renewal_stops_the_executor_and_ends_canceled() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0009", "web", 1).await;
    // RunInstances takes 20 s at speed 1; the lease renews every 100 ms.
    let worker = worker(
        &f,
        sim(1.0),
        Arc::new(Catalog::builtin()),
        Duration::from_millis(300),
    );
    let stop = CancellationToken::new();
    let step = tokio::spawn(async move { worker.run(task, &stop).await });
    eventually("the task runs", || async {
        record(&f, task).await.state == TaskState::Running
    })
    .await;
    let cancellation = f
        .store
        .cancel(f.account, task, now_millis())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancellation.tasks[0].1, CancelOutcome::Requested);
    assert!(cancellation.tasks[0].0.run.cancel_requested);

    let (outcome, _) = recorded(
        tokio::time::timeout(Duration::from_secs(5), step)
            .await
            .unwrap()
            .unwrap(),
    );
    assert!(
        matches!(outcome, TaskOutcome::Canceled { .. }),
        "{outcome:?}"
    );
    let done = record(&f, task).await;
    assert_eq!(done.state, TaskState::Canceled);
    assert_eq!(done.state.legacy_status(), 1);
    assert!(done.error.unwrap().message.contains("canceled"));
    // A canceled creation ends like a failed one.
    assert_eq!(
        resource_state(&f, "ins-aaaa0009").await,
        ("LAUNCH_FAILED".into(), None)
    );
}

/// Counts concurrent executions to check the pool's bound.
#[derive(Default)]
struct Counting {
    running: AtomicU32,
    peak: AtomicU32,
}

#[async_trait]
impl Executor for Counting {
    async fn execute(
        &self,
        _task: &ClaimedTask,
        _cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Some(json!({"done": true})))
    }
}

fn due_now(tasks: &[RequestId]) -> Vec<Runnable> {
    tasks
        .iter()
        .map(|&task| Runnable {
            task,
            not_before: 0,
        })
        .collect()
}

#[tokio::test]
async fn the_pool_runs_every_enqueued_task_with_at_most_n_at_once() {
    let f = fixture().await;
    let executor = Arc::new(Counting::default());
    let shutdown = CancellationToken::new();
    let (dispatcher, pool) = start_pool(&f, executor.clone(), 3, &shutdown, Duration::from_secs(5));
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        tasks.push(submit_creation(&f, &format!("ins-bbbb{i:04}"), "w", i + 1).await);
    }
    dispatcher.enqueue(due_now(&tasks));
    for task in &tasks {
        eventually("every task succeeds", || async {
            record(&f, *task).await.state == TaskState::Succeeded
        })
        .await;
        assert_eq!(record(&f, *task).await.result, Some(json!({"done": true})));
    }
    let peak = executor.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "more than 3 tasks ran at once ({peak})");
    assert!(peak >= 2, "the pool never ran tasks side by side");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), pool.join())
        .await
        .expect("the pool stops");
}

/// A pool whose shutdown began takes no task from its queue, even one that waits there
/// beside a free worker. (Chosen at random between the two, as an unbiased `select!` would,
/// one of these twenty pools would take its task with a probability above 99 %.)
#[tokio::test]
async fn a_pool_shutting_down_takes_no_task_from_its_queue() {
    let f = fixture().await;
    let executor = Arc::new(Counting::default());
    for n in 0..20u64 {
        let task = submit_creation(&f, &format!("ins-dddd{n:04}"), "w", n + 1).await;
        let shutdown = CancellationToken::new();
        let (dispatcher, pool) =
            start_pool(&f, executor.clone(), 2, &shutdown, Duration::from_secs(5));
        // Both before the pool's loop first runs (this runtime has one thread).
        dispatcher.enqueue(due_now(&[task]));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), pool.join())
            .await
            .expect("the pool stops");
        let left = record(&f, task).await;
        assert_eq!(
            (left.state, left.attempts),
            (TaskState::Queued, 0),
            "pool {n}"
        );
    }
    assert_eq!(executor.peak.load(Ordering::SeqCst), 0, "nothing ran");
}

#[tokio::test]
async fn shutdown_gives_tasks_still_running_after_the_grace_back_to_the_queue() {
    let f = fixture().await;
    let hanging = Arc::new(Hanging::default());
    let shutdown = CancellationToken::new();
    let (dispatcher, pool) = start_pool(
        &f,
        hanging.clone(),
        2,
        &shutdown,
        Duration::from_millis(100),
    );
    let task = submit_creation(&f, "ins-cccc0001", "w", 1).await;
    dispatcher.enqueue(due_now(&[task]));
    eventually("the executor starts", || async {
        hanging.started.load(Ordering::SeqCst) == 1
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), pool.join())
        .await
        .expect("the pool stops after its grace period");
    assert!(
        hanging.dropped.load(Ordering::SeqCst),
        "the executor was stopped"
    );
    let released = record(&f, task).await;
    assert_eq!(released.state, TaskState::Queued, "back in the queue");
    assert_eq!(released.run.lease, None);
    // The next start takes it at once.
    let recovered = f.store.recover(now_millis(), "test").await.unwrap();
    assert_eq!(
        recovered.iter().map(|r| r.task).collect::<Vec<_>>(),
        vec![task]
    );
    assert!(recovered[0].not_before <= now_millis());
}

/// A restarted node takes back what its last run left, a task it was running and one
/// still queued, and runs each once: recovery comes before the new pool's first claim.
/// (On a shared store the pool's sweep looks for runnable tasks as soon as one is
/// announced, as here: had recovery come after, it would have requeued the sweep's claim
/// as the last run's, and that task would have run twice.)
#[tokio::test]
async fn a_restarted_pool_recovers_first_and_runs_each_task_once() {
    let f = fixture().await;
    let running = submit_creation(&f, "ins-eeee0001", "w", 1).await;
    let queued = submit_creation(&f, "ins-eeee0002", "w", 2).await;
    let now = now_millis();
    let lease = Lease {
        owner: "test-node".into(),
        now,
        expires_at: now + 30_000,
    };
    f.store
        .claim(running, lease)
        .await
        .unwrap()
        .expect("the last run claimed it");
    if let Some(announced) = f.store.ready_signal() {
        announced.notify_one();
    }
    let executor = Arc::new(Counting::default());
    let shutdown = CancellationToken::new();
    let (_dispatcher, pool, recovered) = WorkerPool::recover_and_start(
        worker(
            &f,
            executor,
            Arc::new(Catalog::builtin()),
            Duration::from_secs(30),
        ),
        2,
        shutdown.clone(),
        Duration::from_secs(5),
    )
    .await
    .expect("recovery");
    assert_eq!(recovered, 2);
    for task in [running, queued] {
        eventually("both tasks succeed", || async {
            record(&f, task).await.state == TaskState::Succeeded
        })
        .await;
    }
    assert_eq!(
        record(&f, running).await.attempts,
        2,
        "once more after the restart"
    );
    assert_eq!(record(&f, queued).await.attempts, 1, "once");
    assert_eq!(f.store.stats().await.unwrap().fenced_completions, 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), pool.join())
        .await
        .expect("the pool stops");
}

#[tokio::test]
async fn maintenance_rescues_a_task_whose_lease_expired() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-dddd0001", "w", 1).await;
    // A worker elsewhere claimed it and died: its lease ran out long ago.
    let now = now_millis();
    let dead = f
        .store
        .claim(
            task,
            Lease {
                owner: "dead-node".into(),
                now: now - 10_000,
                expires_at: now - 5_000,
            },
        )
        .await
        .unwrap()
        .unwrap();
    let catalog = Arc::new(Catalog::builtin());
    let shutdown = CancellationToken::new();
    let (dispatcher, pool) = WorkerPool::start(
        worker(&f, sim(0.0), catalog.clone(), Duration::from_millis(400)),
        2,
        shutdown.clone(),
        Duration::from_secs(1),
    );
    let stop = CancellationToken::new();
    let upkeep = maintenance::start(
        f.store.clone(),
        catalog,
        dispatcher,
        Duration::from_millis(400),
        RetentionSettings::default(),
        stop.clone(),
    );
    eventually("the rescued task succeeds", || async {
        record(&f, task).await.state == TaskState::Succeeded
    })
    .await;
    let done = record(&f, task).await;
    assert_eq!(done.attempts, 2);
    assert!(done.run.fence > dead.fence);
    // The dead worker's outcome can no longer count.
    let late = f
        .store
        .complete(
            task,
            dead.fence,
            TaskOutcome::Failed(TaskError::operation_failed("late")),
            now_millis(),
        )
        .await
        .unwrap();
    assert_eq!(late, qtask_store::Completion::Fenced);
    stop.cancel();
    shutdown.cancel();
    upkeep.await.unwrap();
    pool.join().await;
}

#[tokio::test]
async fn retention_deletes_old_finished_tasks_in_batches_and_remembers_them() {
    let f = fixture().await;
    let worker = instant_worker(&f);
    let mut tasks = Vec::new();
    for i in 0..5u64 {
        let task = submit_creation(&f, &format!("ins-eeee{i:04}"), "w", i + 1).await;
        recorded(worker.run(task, &CancellationToken::new()).await);
        tasks.push(task);
    }
    let unfinished = submit_creation(&f, "ins-eeee9999", "w", 99).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let settings = RetentionSettings {
        tasks: Duration::from_millis(10),
        batch: 2,
        ..RetentionSettings::default()
    };
    let report = maintenance::purge_expired(
        f.store.as_ref(),
        &Catalog::builtin(),
        &settings,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.tasks, 5);
    for task in tasks {
        assert!(f.store.task(f.account, task).await.unwrap().is_none());
        assert!(f.store.purged(f.account, task).await.unwrap());
    }
    assert_eq!(
        record(&f, unfinished).await.state,
        TaskState::Queued,
        "unfinished tasks stay"
    );
}
