//! The worker step (`run_task`) and the pool, on the real SQLite store: claim, execute,
//! complete — and what happens when an executor fails or panics.

use async_trait::async_trait;
use qtask_core::{
    AccountId, Effect, Nonce, Region, RequestId, ResourceId, ResourceState, TaskError, TaskState,
};
use qtask_engine::catalog::Catalog;
use qtask_engine::dispatch::{run_task, WorkerPool, INTERNAL_ERROR};
use qtask_engine::executor::{Executor, SimExecutor, SimSettings};
use qtask_store::{
    ClaimedTask, NewResource, NonceClaim, PlannedTask, Store, Submission, Submitted, Target,
    TaskOutcome,
};
use qtask_store_sqlite::SqliteStore;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    account: AccountId,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("q.db")).unwrap());
    let account = store.create_account("test", 0).await.unwrap();
    Fixture {
        _dir: dir,
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
        }],
        now: 1,
        answer: Box::new(|_| String::new()),
    };
    match f.store.submit(submission).await.unwrap() {
        Submitted::New { report, .. } => report.accepted().next().unwrap(),
        other => panic!("not committed: {other:?}"),
    }
}

async fn task_state(f: &Fixture, id: RequestId) -> (TaskState, u32, Option<TaskError>) {
    let task = f.store.task(f.account, id).await.unwrap().unwrap();
    (task.state, task.attempts, task.error)
}

fn sim() -> Arc<dyn Executor> {
    Arc::new(SimExecutor::new(
        &Catalog::builtin(),
        SimSettings {
            speed: 0.0,
            ..SimSettings::default()
        },
    ))
}

#[tokio::test]
async fn one_step_claims_executes_and_completes() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0001", "web", 1).await;
    let outcome = run_task(f.store.as_ref(), sim(), task, &CancellationToken::new()).await;
    assert_eq!(outcome, Some(TaskOutcome::Succeeded { result: None }));
    assert_eq!(task_state(&f, task).await, (TaskState::Succeeded, 1, None));
    // A second step on a final task does nothing: no task runs twice.
    assert_eq!(
        run_task(f.store.as_ref(), sim(), task, &CancellationToken::new()).await,
        None
    );
    assert_eq!(task_state(&f, task).await.1, 1);
}

#[tokio::test]
async fn injected_faults_fail_the_task_with_5100() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0002", "web qtask-fail:RunInstances", 1).await;
    let outcome = run_task(f.store.as_ref(), sim(), task, &CancellationToken::new()).await;
    let Some(TaskOutcome::Failed(error)) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!(error.code, 5100);
    assert!(
        error.message.contains("simulated fault"),
        "{}",
        error.message
    );
    assert_eq!(task_state(&f, task).await.0, TaskState::Failed);
}

struct Panicking;

#[async_trait]
impl Executor for Panicking {
    async fn execute(&self, _task: &ClaimedTask) -> Result<Option<Value>, TaskError> {
        panic!("executor bug");
    }
}

#[tokio::test]
async fn a_panicking_executor_fails_the_task_and_frees_the_resource() {
    let f = fixture().await;
    let task = submit_creation(&f, "ins-aaaa0003", "web", 1).await;
    let outcome = run_task(
        f.store.as_ref(),
        Arc::new(Panicking),
        task,
        &CancellationToken::new(),
    )
    .await;
    let Some(TaskOutcome::Failed(error)) = outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert_eq!(error.code, INTERNAL_ERROR);
    let (state, _, recorded) = task_state(&f, task).await;
    assert_eq!(state, TaskState::Failed);
    assert_eq!(recorded.unwrap().code, INTERNAL_ERROR);
    let filter = qtask_store::ResourceFilter {
        kind: "instance".into(),
        region: "ap-guangzhou".parse().unwrap(),
        ids: vec![ResourceId::parse("ins", "ins-aaaa0003").unwrap()],
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
    assert_eq!(listing.items[0].state.as_str(), "LAUNCH_FAILED");
    assert_eq!(
        listing.items[0].active_task, None,
        "the resource is free again"
    );
}

/// Counts concurrent executions to check the pool's bound.
struct Counting {
    running: AtomicU32,
    peak: AtomicU32,
}

#[async_trait]
impl Executor for Counting {
    async fn execute(&self, _task: &ClaimedTask) -> Result<Option<Value>, TaskError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Some(json!({"done": true})))
    }
}

#[tokio::test]
async fn the_pool_runs_every_enqueued_task_with_at_most_n_at_once() {
    let f = fixture().await;
    let executor = Arc::new(Counting {
        running: AtomicU32::new(0),
        peak: AtomicU32::new(0),
    });
    let shutdown = CancellationToken::new();
    let (dispatcher, pool) = WorkerPool::start(
        f.store.clone(),
        executor.clone(),
        3,
        shutdown.clone(),
        Duration::from_secs(5),
    );
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        tasks.push(submit_creation(&f, &format!("ins-bbbb{i:04}"), "w", i + 1).await);
    }
    dispatcher.enqueue(tasks.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    for task in &tasks {
        while task_state(&f, *task).await.0 != TaskState::Succeeded {
            assert!(Instant::now() < deadline, "task {task} did not finish");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let record = f.store.task(f.account, *task).await.unwrap().unwrap();
        assert_eq!(record.result, Some(json!({"done": true})));
    }
    assert!(
        executor.peak.load(Ordering::SeqCst) <= 3,
        "more than 3 tasks ran at once"
    );
    assert!(
        executor.peak.load(Ordering::SeqCst) >= 2,
        "the pool never ran tasks side by side"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), pool.join())
        .await
        .expect("the pool stops");
}
