//! The store conformance suite: what every backend must do, written once.
//!
//! Each `pub async fn` here checks one behaviour of [`Store`] and panics (with a message
//! naming what broke) when the backend does not behave. A backend's test file calls each
//! of them from its own `#[tokio::test]`, so every behaviour is reported on its own:
//!
//! * most take `&dyn Store` and need a **fresh, empty** store (no accounts, resources,
//!   tasks or nonces): they count tasks, scan IDs and list everything an account has;
//! * the concurrency checks take an `Arc<dyn Store>` (they spawn tokio tasks, so the test
//!   should run on the multi-threaded runtime);
//! * [`reopen_keeps_everything_and_never_reuses_ids`] takes a function that opens the
//!   *same* database again each time it is called.
//!
//! The store is generic, so the values here are plain literals in the style of the one
//! catalog qtask has today (kind `instance`, IDs `ins-xxxxxxxx`, states `RUNNING`, …).

use crate::*;
use qtask_core::{
    AccountId, Effect, Nonce, Region, Rejection, RequestId, ResourceId, ResourceState, SecretId,
    TaskError, TaskState, UnixMillis,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The clock every check starts from (2023-11-14T22:13:20Z).
const T0: UnixMillis = 1_700_000_000_000;
const KIND: &str = "instance";
const DAY: i64 = 86_400_000;
/// The node that holds the leases the checks take, and for how long.
const OWNER: &str = "node-1";
const LEASE_MS: i64 = 30_000;
/// Enough to hold everything one check creates.
const EVERYTHING: Page = Page {
    offset: 0,
    limit: 1000,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn gz() -> Region {
    "ap-guangzhou".parse().expect("a known region")
}

fn sh() -> Region {
    "ap-shanghai".parse().expect("a known region")
}

fn state(name: &str) -> ResourceState {
    ResourceState::new(name)
}

/// `ins-0000000n`.
fn ins(n: u32) -> ResourceId {
    ResourceId::parse("ins", &format!("ins-{n:08}")).expect("a well-formed instance ID")
}

fn secret() -> SecretId {
    "AKIDconformance".parse().expect("a well-formed SecretId")
}

fn nonce_claim(secret_id: &SecretId, nonce: u64, signature: &str) -> NonceClaim {
    NonceClaim {
        secret_id: secret_id.clone(),
        nonce: Nonce::new(nonce).expect("a positive nonce"),
        expires_at: T0 + 300_000,
        signature: signature.to_owned(),
    }
}

/// Nonces drawn here are far above the small ones the nonce checks pick by hand.
static NEXT_NONCE: AtomicU64 = AtomicU64::new(1 << 40);

fn fresh_nonce() -> NonceClaim {
    let n = NEXT_NONCE.fetch_add(1, Ordering::Relaxed);
    nonce_claim(&secret(), n, &format!("signature-{n}"))
}

/// What an answer closure was called with, so a check can see it was called exactly
/// once, with the report the store returned (or not at all).
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<SubmitReport>>>);

impl Probe {
    fn calls(&self) -> Vec<SubmitReport> {
        self.0.lock().expect("probe lock").clone()
    }
}

/// The answer a submission labelled `label` renders. Non-ASCII on purpose: a stored
/// answer must come back byte for byte.
fn render(label: &str, report: &SubmitReport) -> String {
    format!("{{\"label\":\"{label} ✓\",\"report\":\"{report:?}\"}}")
}

fn answer(label: &str) -> (AnswerFn, Probe) {
    let probe = Probe::default();
    let seen = probe.clone();
    let label = label.to_owned();
    let answer: AnswerFn = Box::new(move |report: &SubmitReport| {
        seen.0.lock().expect("probe lock").push(report.clone());
        render(&label, report)
    });
    (answer, probe)
}

/// A submission with a fresh nonce, no client token and an answer labelled `action`.
fn submission(
    account: AccountId,
    region: Region,
    action: &str,
    grouped: bool,
    tasks: Vec<PlannedTask>,
    now: UnixMillis,
) -> (Submission, Probe) {
    let (answer, probe) = answer(action);
    let submission = Submission {
        account,
        region,
        action: action.to_owned(),
        nonce: fresh_nonce(),
        idempotency: None,
        grouped,
        tasks,
        now,
        answer,
        limits: AccountLimits::default(),
        audit: None,
    };
    (submission, probe)
}

/// A client token whose window covers every time the checks use.
fn token(token: &str, fingerprint: &str) -> Option<IdempotencyKey> {
    token_since(token, fingerprint, T0 - DAY)
}

/// A client token that forgets uses before `valid_from`.
fn token_since(token: &str, fingerprint: &str, valid_from: UnixMillis) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        token: token.to_owned(),
        fingerprint: fingerprint.to_owned(),
        valid_from,
    })
}

fn effect(
    transitional: Option<&str>,
    on_success: Option<&str>,
    on_failure: Option<&str>,
) -> Effect {
    Effect {
        transitional: transitional.map(state),
        on_success: on_success.map(state),
        on_failure: on_failure.map(state),
        patch: Map::new(),
    }
}

/// StopInstances: STOPPING while it runs, STOPPED on success, back on failure.
fn stop_effect() -> Effect {
    effect(Some("STOPPING"), Some("STOPPED"), None)
}

/// StartInstances: STARTING while it runs, RUNNING on success, back on failure.
fn start_effect() -> Effect {
    effect(Some("STARTING"), Some("RUNNING"), None)
}

/// RestartInstances: REBOOTING while it runs, then back to the state before.
fn reboot_effect() -> Effect {
    effect(Some("REBOOTING"), None, None)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("{other} is not a JSON object"),
    }
}

/// Task parameters with some nesting, to see them come back whole.
fn params(id: &ResourceId) -> Value {
    json!({"instanceId": id.as_str(), "options": {"force": true, "retries": 3}, "tags": ["a", "b"]})
}

fn existing(id: &ResourceId, allowed: &[&str], effect: Effect) -> PlannedTask {
    PlannedTask {
        target: Target::Existing {
            id: id.clone(),
            allowed: allowed.iter().map(|s| state(s)).collect(),
        },
        params: params(id),
        effect,
        on_busy: OnBusy::Refuse,
    }
}

/// The same task, waiting behind the resource's unfinished tasks instead of refused.
fn queued_behind(task: PlannedTask) -> PlannedTask {
    PlannedTask {
        on_busy: OnBusy::Queue,
        ..task
    }
}

fn new_resource(id: &ResourceId, kind: &str, state_name: &str, attrs: Value) -> NewResource {
    NewResource {
        id: id.clone(),
        kind: kind.to_owned(),
        state: state(state_name),
        attrs: object(attrs),
    }
}

fn creating(new: NewResource, effect: Effect) -> PlannedTask {
    PlannedTask {
        params: params(&new.id),
        target: Target::Create(new),
        effect,
        on_busy: OnBusy::Refuse,
    }
}

async fn account(store: &dyn Store, name: &str) -> AccountId {
    store
        .create_account(name, T0)
        .await
        .unwrap_or_else(|e| panic!("create_account({name:?}) failed: {e}"))
}

/// Submits and expects the submission to be committed now.
async fn submit_new(store: &dyn Store, submission: Submission) -> SubmitReport {
    let action = submission.action.clone();
    match store.submit(submission).await {
        Ok(Submitted::New { report, .. }) => report,
        other => panic!("submit({action}) should commit new tasks, got {other:?}"),
    }
}

/// Submits one `RunInstances` group creating PENDING instances 1 to `count`, instance `n`
/// with `effect(n)`; returns the group's tasks, all accepted.
async fn create_pending(
    store: &dyn Store,
    account: AccountId,
    count: u32,
    effect: impl Fn(u32) -> Effect,
) -> Vec<RequestId> {
    let planned = (1..=count)
        .map(|n| creating(new_resource(&ins(n), KIND, "PENDING", json!({})), effect(n)))
        .collect();
    let (sub, _) = submission(account, gz(), "RunInstances", true, planned, T0);
    let tasks: Vec<RequestId> = submit_new(store, sub).await.accepted().collect();
    assert_eq!(tasks.len(), count as usize, "every creation accepted");
    tasks
}

/// Submits one ungrouped task and expects it accepted; returns it and whether the store
/// said it can run now (it holds its resource).
async fn submit_one(
    store: &dyn Store,
    account: AccountId,
    action: &str,
    planned: PlannedTask,
    now: UnixMillis,
) -> (RequestId, bool) {
    let (sub, _) = submission(account, gz(), action, false, vec![planned], now);
    match store.submit(sub).await {
        Ok(Submitted::New {
            report, runnable, ..
        }) => {
            let task = only_task(&report);
            assert!(
                runnable.is_empty() || runnable == vec![task],
                "runnable {runnable:?} names a task the submission did not create ({task})"
            );
            (task, !runnable.is_empty())
        }
        other => panic!("submit({action}) should commit a new task, got {other:?}"),
    }
}

/// Submits a task that queues behind the unfinished tasks of busy resource `id`, and
/// expects it accepted but not runnable.
async fn wait_behind(
    store: &dyn Store,
    account: AccountId,
    id: &ResourceId,
    action: &str,
    allowed: &[&str],
    effect: Effect,
    now: UnixMillis,
) -> RequestId {
    let planned = queued_behind(existing(id, allowed, effect));
    let (task, runnable) = submit_one(store, account, action, planned, now).await;
    assert!(
        !runnable,
        "task {task} waits behind {id}'s task: not runnable"
    );
    task
}

/// The task of a one-task report that must have been accepted.
fn only_task(report: &SubmitReport) -> RequestId {
    match report.outcomes.as_slice() {
        [(_, Ok(task))] => *task,
        other => panic!("expected one accepted task, got {other:?}"),
    }
}

/// The lease a worker of [`OWNER`] asks for at `now`.
fn lease(now: UnixMillis) -> Lease {
    Lease {
        owner: OWNER.to_owned(),
        now,
        expires_at: now + LEASE_MS,
    }
}

fn runnable(task: RequestId, not_before: UnixMillis) -> Runnable {
    Runnable { task, not_before }
}

/// Claims a task under [`lease`]`(now)`; `None` when it is not claimable.
async fn try_claim(store: &dyn Store, task: RequestId, now: UnixMillis) -> Option<ClaimedTask> {
    store
        .claim(task, lease(now))
        .await
        .unwrap_or_else(|e| panic!("claim({task}) failed: {e}"))
}

/// Claims a task that must be claimable; the claimed record carries the claim's fence.
async fn claim(store: &dyn Store, task: RequestId, now: UnixMillis) -> ClaimedTask {
    let claimed = try_claim(store, task, now)
        .await
        .unwrap_or_else(|| panic!("task {task} should be claimable"));
    assert_eq!(
        claimed.task.run.fence, claimed.fence,
        "the claimed record shows the claim's fence"
    );
    claimed
}

/// Records the outcome of a claimed task, which its fence must still hold; returns what
/// can run now.
async fn complete(
    store: &dyn Store,
    claimed: &ClaimedTask,
    outcome: TaskOutcome,
    now: UnixMillis,
) -> Vec<Runnable> {
    let task = claimed.task.id;
    match store.complete(task, claimed.fence, outcome, now).await {
        Ok(Completion::Recorded { runnable }) => runnable,
        other => panic!("complete({task}) by its holder should be recorded, got {other:?}"),
    }
}

/// Claims a QUEUED task and records its outcome; returns what can run now.
async fn finish(
    store: &dyn Store,
    task: RequestId,
    outcome: TaskOutcome,
    now: UnixMillis,
) -> Vec<Runnable> {
    let claimed = claim(store, task, now).await;
    complete(store, &claimed, outcome, now).await
}

fn success() -> TaskOutcome {
    TaskOutcome::Succeeded { result: None }
}

fn fault() -> TaskError {
    TaskError {
        code: 5100,
        message: "simulated fault: the disk is on fire".into(),
    }
}

/// Creates a resource and runs its creation task to success: the resource ends idle, in
/// `new.state`. Returns the creation task.
async fn create_idle(
    store: &dyn Store,
    account: AccountId,
    region: Region,
    new: NewResource,
    now: UnixMillis,
) -> RequestId {
    let id = new.id.clone();
    let kind = new.kind.clone();
    let expected = new.state.clone();
    let (sub, _) = submission(
        account,
        region,
        "RunInstances",
        false,
        vec![creating(new, Effect::default())],
        now,
    );
    let task = only_task(&submit_new(store, sub).await);
    finish(store, task, success(), now).await;
    let record = resource_of(store, account, region, &kind, &id)
        .await
        .unwrap_or_else(|| panic!("{id} should exist after its creation succeeded"));
    assert_eq!(record.state, expected, "{id} after an effect-less creation");
    assert_eq!(record.active_task, None, "{id} after its creation ended");
    task
}

/// Creates an idle `instance` with the given state and attributes.
async fn instance(
    store: &dyn Store,
    account: AccountId,
    region: Region,
    id: &ResourceId,
    state_name: &str,
    attrs: Value,
    now: UnixMillis,
) -> RequestId {
    create_idle(
        store,
        account,
        region,
        new_resource(id, KIND, state_name, attrs),
        now,
    )
    .await
}

/// Submits one ungrouped task on an existing resource (any state) and expects it
/// accepted.
async fn start_task(
    store: &dyn Store,
    account: AccountId,
    id: &ResourceId,
    action: &str,
    effect: Effect,
    now: UnixMillis,
) -> RequestId {
    let (sub, _) = submission(
        account,
        gz(),
        action,
        false,
        vec![existing(id, &[], effect)],
        now,
    );
    only_task(&submit_new(store, sub).await)
}

fn listing_filter(region: Region, kind: &str) -> ResourceFilter {
    ResourceFilter {
        kind: kind.to_owned(),
        region,
        ids: Vec::new(),
        states: Vec::new(),
        search: None,
        name_attr: "instanceName",
        attr_in: Vec::new(),
    }
}

async fn resource_of(
    store: &dyn Store,
    account: AccountId,
    region: Region,
    kind: &str,
    id: &ResourceId,
) -> Option<ResourceRecord> {
    let filter = ResourceFilter {
        ids: vec![id.clone()],
        ..listing_filter(region, kind)
    };
    let listing = store
        .resources(account, filter, EVERYTHING)
        .await
        .expect("resources");
    assert!(listing.items.len() <= 1, "listing one ID found {listing:?}");
    listing.items.into_iter().next()
}

/// An instance in ap-guangzhou, as the account sees it.
async fn resource(
    store: &dyn Store,
    account: AccountId,
    id: &ResourceId,
) -> Option<ResourceRecord> {
    resource_of(store, account, gz(), KIND, id).await
}

async fn must_resource(store: &dyn Store, account: AccountId, id: &ResourceId) -> ResourceRecord {
    resource(store, account, id)
        .await
        .unwrap_or_else(|| panic!("{id} should exist"))
}

async fn must_task(store: &dyn Store, account: AccountId, id: RequestId) -> TaskRecord {
    store
        .task(account, id)
        .await
        .expect("task")
        .unwrap_or_else(|| panic!("task {id} should exist"))
}

async fn all_tasks(store: &dyn Store, account: AccountId) -> Listing<TaskRecord> {
    store
        .tasks(account, TaskFilter::default(), EVERYTHING)
        .await
        .expect("tasks")
}

async fn task_count(store: &dyn Store, account: AccountId) -> u64 {
    let listing = all_tasks(store, account).await;
    assert_eq!(
        listing.total,
        listing.items.len() as u64,
        "the total of an unpaged listing"
    );
    listing.total
}

/// A task as it is right after its submission at `now`.
fn queued_record(
    id: RequestId,
    account: AccountId,
    group: Option<RequestId>,
    action: &str,
    resource: &ResourceId,
    effect: &Effect,
    now: UnixMillis,
) -> TaskRecord {
    TaskRecord {
        id,
        account,
        group,
        action: action.to_owned(),
        resource: resource.clone(),
        region: gz(),
        params: params(resource),
        state: TaskState::Queued,
        attempts: 0,
        created_at: now,
        started_at: None,
        finished_at: None,
        error: None,
        result: None,
        effect: effect.clone(),
        run: RunInfo::default(),
    }
}

/// `task` as a claim at `now` with `fence` leaves it (its first attempt or a later one).
fn claimed_record(task: TaskRecord, fence: Fence, now: UnixMillis) -> TaskRecord {
    TaskRecord {
        state: TaskState::Running,
        attempts: task.attempts + 1,
        started_at: task.started_at.or(Some(now)),
        run: RunInfo {
            lease: Some(LeaseInfo {
                owner: OWNER.to_owned(),
                expires_at: now + LEASE_MS,
            }),
            fence,
            ..RunInfo::default()
        },
        ..task
    }
}

/// A running `task` ended at `now` in `state`.
fn ended_record(
    task: TaskRecord,
    state: TaskState,
    error: Option<TaskError>,
    result: Option<Value>,
    now: UnixMillis,
) -> TaskRecord {
    TaskRecord {
        state,
        finished_at: Some(now),
        error,
        result,
        run: RunInfo {
            fence: task.run.fence,
            ..RunInfo::default()
        },
        ..task
    }
}

fn last_op(task: RequestId, action: &str, state: TaskState) -> Option<LastOperation> {
    Some(LastOperation {
        task,
        action: action.to_owned(),
        state,
        error: None,
    })
}

fn ids_of<T>(items: &[T], id: impl Fn(&T) -> RequestId) -> Vec<RequestId> {
    items.iter().map(id).collect()
}

/// Recovery as another node than the one holding the leases ([`OWNER`]) starts.
async fn recover(store: &dyn Store, now: UnixMillis) -> Vec<Runnable> {
    store
        .recover(now, "node-2")
        .await
        .unwrap_or_else(|e| panic!("recover failed: {e}"))
}

/// The tasks of `runnable`, each of which must be due by `now`.
fn due_by(runnable: &[Runnable], now: UnixMillis) -> Vec<RequestId> {
    for r in runnable {
        assert!(
            r.not_before <= now,
            "task {} should be runnable at {now}, not from {}",
            r.task,
            r.not_before
        );
    }
    runnable.iter().map(|r| r.task).collect()
}

async fn renew(
    store: &dyn Store,
    task: RequestId,
    fence: Fence,
    expires_at: UnixMillis,
) -> LeaseStatus {
    store
        .renew(task, fence, expires_at)
        .await
        .unwrap_or_else(|e| panic!("renew({task}) failed: {e}"))
}

/// Releases a task; true when the fence held it.
async fn release(store: &dyn Store, task: RequestId, fence: Fence, now: UnixMillis) -> bool {
    released(store, task, fence, now).await.is_some()
}

/// Releases a task; what can run now, or `None` when the fence did not hold it.
async fn released(
    store: &dyn Store,
    task: RequestId,
    fence: Fence,
    now: UnixMillis,
) -> Option<Vec<Runnable>> {
    store
        .release(task, fence, now)
        .await
        .unwrap_or_else(|e| panic!("release({task}) failed: {e}"))
}

async fn rescue(store: &dyn Store, now: UnixMillis, keep: Vec<RequestId>) -> Vec<Runnable> {
    store
        .rescue(now, keep)
        .await
        .unwrap_or_else(|e| panic!("rescue failed: {e}"))
}

/// Cancels `id` (a task or a group) that the account must have.
async fn cancel(
    store: &dyn Store,
    account: AccountId,
    id: RequestId,
    now: UnixMillis,
) -> Cancellation {
    store
        .cancel(account, id, now)
        .await
        .unwrap_or_else(|e| panic!("cancel({id}) failed: {e}"))
        .unwrap_or_else(|| panic!("cancel({id}) should find the task or group"))
}

/// What a cancellation did, per task.
fn cancel_outcomes(cancellation: &Cancellation) -> Vec<(RequestId, CancelOutcome)> {
    cancellation
        .tasks
        .iter()
        .map(|(task, outcome)| (task.id, *outcome))
        .collect()
}

/// The error of a task canceled before it started.
fn canceled_before_start() -> TaskError {
    TaskError::operation_failed("canceled by request before it started")
}

/// The error of a task canceled because `ahead` (running `action` on `resource`) failed.
fn canceled_behind(ahead: RequestId, action: &str, resource: &ResourceId) -> TaskError {
    TaskError::operation_failed(format!(
        "canceled: task {ahead} ({action}) ahead of it on {resource} failed"
    ))
}

/// A retention that deletes nothing: checks set the kinds they test.
fn retain_everything(batch: u32) -> Retention {
    Retention {
        tasks_finished_before: UnixMillis::MIN,
        nonces_expired_before: UnixMillis::MIN,
        tokens_created_before: UnixMillis::MIN,
        resources: Vec::new(),
        batch,
    }
}

/// Purges batch after batch until a report says there is no more (at most `limit`
/// batches); returns every report.
async fn purge_all(store: &dyn Store, retention: Retention, limit: usize) -> Vec<PurgeReport> {
    let mut reports = Vec::new();
    loop {
        let report = store
            .purge(retention.clone())
            .await
            .unwrap_or_else(|e| panic!("purge failed: {e}"));
        reports.push(report);
        if !report.more {
            return reports;
        }
        assert!(
            reports.len() < limit,
            "purge still has more after {limit} batches: {reports:?}"
        );
    }
}

async fn stats(store: &dyn Store) -> StoreStats {
    store
        .stats()
        .await
        .unwrap_or_else(|e| panic!("stats failed: {e}"))
}

async fn fenced_completions(store: &dyn Store) -> u64 {
    stats(store).await.fenced_completions
}

/// The task counts of [`Store::stats`], states with no task left out.
async fn tasks_by_state(store: &dyn Store) -> HashMap<TaskState, u64> {
    let mut counts = HashMap::new();
    for (state, count) in stats(store).await.tasks {
        let previous = counts.insert(state, count);
        assert_eq!(previous, None, "stats lists {state} twice");
    }
    counts.retain(|_, count| *count > 0);
    counts
}

// ---------------------------------------------------------------------------------------
// submit
// ---------------------------------------------------------------------------------------

/// A group of tasks on existing resources commits them QUEUED, shows each resource in the
/// transitional state and busy with its task, calls the answer closure once with the
/// report and returns what it rendered.
pub async fn submit_commits_queued_tasks_and_marks_resources_busy(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r1, r2) = (ins(1), ins(2));
    for (id, name) in [(&r1, "web-1"), (&r2, "web-2")] {
        instance(
            store,
            a,
            gz(),
            id,
            "RUNNING",
            json!({"instanceName": name}),
            T0,
        )
        .await;
    }
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let now = T0 + 1_000;
    let (sub, probe) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![
            existing(&r1, &["RUNNING"], stop.clone()),
            existing(&r2, &["RUNNING"], stop.clone()),
        ],
        now,
    );
    let (report, answer, runnable) = match store.submit(sub).await {
        Ok(Submitted::New {
            report,
            answer,
            runnable,
        }) => (report, answer, runnable),
        other => panic!("submit should commit new tasks, got {other:?}"),
    };
    assert_eq!(
        probe.calls(),
        vec![report.clone()],
        "the answer closure is called exactly once, with the report submit returns"
    );
    assert_eq!(
        answer,
        render("StopInstances", &report),
        "submit returns what the answer closure rendered"
    );
    let group = report.group.expect("a grouped submission has a group ID");
    let (t1, t2) = match report.outcomes.as_slice() {
        [(x, Ok(t1)), (y, Ok(t2))] if *x == r1 && *y == r2 => (*t1, *t2),
        other => panic!("expected [({r1}, Ok), ({r2}, Ok)], got {other:?}"),
    };
    assert_eq!(report.accepted().collect::<Vec<_>>(), vec![t1, t2]);
    assert_eq!(
        runnable,
        vec![t1, t2],
        "both hold their resource: both can run"
    );
    let distinct: BTreeSet<_> = [group, t1, t2].into_iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "group and task IDs are distinct: {distinct:?}"
    );

    let mut records = Vec::new();
    for (task, id) in [(t1, &r1), (t2, &r2)] {
        let record = must_task(store, a, task).await;
        assert_eq!(
            record,
            queued_record(task, a, Some(group), "StopInstances", id, &stop, now),
            "the committed task {task}"
        );
        records.push(record);
        let res = must_resource(store, a, id).await;
        assert_eq!(
            res.state,
            state("STOPPING"),
            "{id} shows the transitional state"
        );
        assert_eq!(res.active_task, Some(task), "{id} is busy with its task");
        assert_eq!(
            res.last_operation,
            last_op(task, "StopInstances", TaskState::Queued)
        );
        assert_eq!(
            Value::Object(res.attrs),
            json!({"instanceName": if task == t1 { "web-1" } else { "web-2" }}),
            "submission leaves the attributes alone"
        );
    }
    let group_record = store
        .group(a, group)
        .await
        .expect("group")
        .expect("the group exists");
    assert_eq!(
        group_record,
        GroupRecord {
            id: group,
            action: "StopInstances".into(),
            created_at: now,
            tasks: records,
        }
    );
}

/// A missing resource, another account's and another region's are all NotFound, and
/// a refusal changes nothing.
pub async fn submit_refuses_missing_foreign_and_other_region_resources(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let (theirs, elsewhere, missing) = (ins(1), ins(2), ins(3));
    instance(store, b, gz(), &theirs, "RUNNING", json!({}), T0).await;
    instance(store, a, sh(), &elsewhere, "RUNNING", json!({}), T0).await;
    let before_a = task_count(store, a).await;
    let before_b = task_count(store, b).await;
    let theirs_before = resource(store, b, &theirs).await;
    let elsewhere_before = resource_of(store, a, sh(), KIND, &elsewhere).await;

    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    for id in [&missing, &theirs, &elsewhere] {
        for allowed in [&["RUNNING"][..], &[]] {
            let (sub, probe) = submission(
                a,
                gz(),
                "StopInstances",
                false,
                vec![existing(id, allowed, stop.clone())],
                T0 + 10,
            );
            let report = submit_new(store, sub).await;
            let expected = SubmitReport {
                group: None,
                outcomes: vec![(id.clone(), Err(Rejection::NotFound))],
            };
            assert_eq!(report, expected, "{id} (allowed {allowed:?})");
            assert_eq!(
                probe.calls(),
                vec![expected],
                "the answer renders refusals too"
            );
        }
    }
    assert_eq!(
        task_count(store, a).await,
        before_a,
        "refusals create no task"
    );
    assert_eq!(task_count(store, b).await, before_b);
    assert_eq!(resource(store, b, &theirs).await, theirs_before);
    assert_eq!(
        resource_of(store, a, sh(), KIND, &elsewhere).await,
        elsewhere_before
    );
    assert_eq!(resource(store, a, &missing).await, None);
}

/// A resource with an unfinished task (QUEUED or RUNNING) refuses another, naming the
/// task and its action, whatever states the new task allows.
pub async fn submit_refuses_busy_resources_naming_the_unfinished_task(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let stop = start_task(
        store,
        a,
        &r,
        "StopInstances",
        effect(Some("STOPPING"), Some("STOPPED"), None),
        T0 + 1,
    )
    .await;
    let busy = Err(Rejection::Busy {
        task: stop,
        action: "StopInstances".into(),
    });
    let mut running = None;
    for phase in ["queued", "running"] {
        if phase == "running" {
            running = Some(claim(store, stop, T0 + 2).await);
        }
        for allowed in [&["STOPPED"][..], &["STOPPING"], &[]] {
            let before = task_count(store, a).await;
            let (sub, _) = submission(
                a,
                gz(),
                "StartInstances",
                true,
                vec![existing(
                    &r,
                    allowed,
                    effect(Some("STARTING"), Some("RUNNING"), None),
                )],
                T0 + 3,
            );
            let report = submit_new(store, sub).await;
            assert_eq!(
                report.outcomes,
                vec![(r.clone(), busy.clone())],
                "{phase} task, allowed {allowed:?}"
            );
            assert_eq!(report.group, None, "nothing accepted, so no group");
            assert_eq!(task_count(store, a).await, before);
            let res = must_resource(store, a, &r).await;
            assert_eq!(res.state, state("STOPPING"));
            assert_eq!(res.active_task, Some(stop));
        }
    }
    let running = running.expect("claimed in the running phase");
    complete(store, &running, success(), T0 + 4).await;
    let start = start_task(
        store,
        a,
        &r,
        "StartInstances",
        effect(Some("STARTING"), Some("RUNNING"), None),
        T0 + 5,
    )
    .await;
    assert_eq!(
        must_resource(store, a, &r).await.active_task,
        Some(start),
        "once the task ended the resource takes a new one"
    );
}

/// A resource in a state the task does not allow refuses it, naming its state and the
/// allowed ones; an empty allowed list accepts any state.
pub async fn submit_refuses_wrong_state_listing_the_allowed_states(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "STOPPED", json!({}), T0).await;
    let before = task_count(store, a).await;
    let (sub, _) = submission(
        a,
        gz(),
        "RestartInstances",
        false,
        vec![existing(
            &r,
            &["RUNNING", "REBOOTING"],
            effect(Some("REBOOTING"), None, None),
        )],
        T0 + 1,
    );
    let report = submit_new(store, sub).await;
    assert_eq!(
        report.outcomes,
        vec![(
            r.clone(),
            Err(Rejection::WrongState {
                state: state("STOPPED"),
                allowed: vec![state("RUNNING"), state("REBOOTING")],
            })
        )]
    );
    assert_eq!(task_count(store, a).await, before);
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("STOPPED"), None));

    let (sub, _) = submission(
        a,
        gz(),
        "ModifyInstanceAttributes",
        false,
        vec![existing(&r, &[], Effect::default())],
        T0 + 2,
    );
    let task = only_task(&submit_new(store, sub).await);
    let res = must_resource(store, a, &r).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPED"), Some(task)),
        "no transitional state keeps the state; the resource is busy all the same"
    );
}

/// A report has one outcome per planned task, in the order of the tasks, accepted and
/// refused ones interleaved; only the accepted ones become tasks of the group.
pub async fn submit_reports_outcomes_in_task_order(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    for n in [1, 3, 5] {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, a, gz(), &ins(2), "STOPPED", json!({}), T0).await;
    instance(store, a, sh(), &ins(4), "RUNNING", json!({}), T0).await;
    instance(store, b, gz(), &ins(6), "RUNNING", json!({}), T0).await;
    let busy_with = start_task(store, a, &ins(5), "ResetInstances", Effect::default(), T0).await;
    let before = task_count(store, a).await;

    let order = [7, 1, 6, 2, 4, 5, 3];
    let reboot = effect(Some("REBOOTING"), None, None);
    let (sub, probe) = submission(
        a,
        gz(),
        "RestartInstances",
        true,
        order
            .iter()
            .map(|n| existing(&ins(*n), &["RUNNING"], reboot.clone()))
            .collect(),
        T0 + 10,
    );
    let report = submit_new(store, sub).await;
    assert_eq!(probe.calls(), vec![report.clone()]);
    let got: Vec<ResourceId> = report.outcomes.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        got,
        order.iter().map(|n| ins(*n)).collect::<Vec<_>>(),
        "outcomes follow the planned tasks"
    );
    let accepted: Vec<RequestId> = report.accepted().collect();
    assert_eq!(accepted.len(), 2, "{report:?}");
    let expected = vec![
        (ins(7), Err(Rejection::NotFound)),
        (ins(1), Ok(accepted[0])),
        (ins(6), Err(Rejection::NotFound)),
        (
            ins(2),
            Err(Rejection::WrongState {
                state: state("STOPPED"),
                allowed: vec![state("RUNNING")],
            }),
        ),
        (ins(4), Err(Rejection::NotFound)),
        (
            ins(5),
            Err(Rejection::Busy {
                task: busy_with,
                action: "ResetInstances".into(),
            }),
        ),
        (ins(3), Ok(accepted[1])),
    ];
    assert_eq!(report.outcomes, expected);
    assert!(accepted[0] < accepted[1], "IDs follow the task order");
    assert_eq!(task_count(store, a).await, before + 2);
    let group = report.group.expect("two tasks were accepted");
    let members: Vec<_> = store
        .group(a, group)
        .await
        .expect("group")
        .expect("the group exists")
        .tasks
        .iter()
        .map(|t| (t.id, t.resource.clone()))
        .collect();
    assert_eq!(members, vec![(accepted[0], ins(1)), (accepted[1], ins(3))]);
    for (n, expected_state) in [(1, "REBOOTING"), (3, "REBOOTING"), (2, "STOPPED")] {
        assert_eq!(
            must_resource(store, a, &ins(n)).await.state,
            state(expected_state)
        );
    }
}

/// A grouped submission gets a group only when at least one task is accepted; an
/// ungrouped one never does. No group exists that a report did not name.
pub async fn submit_creates_a_group_only_when_a_task_is_accepted(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r1, r2) = (ins(1), ins(2));
    let first = instance(store, a, gz(), &r1, "STOPPED", json!({}), T0).await;
    instance(store, a, gz(), &r2, "STOPPED", json!({}), T0).await;
    let before = task_count(store, a).await;

    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![
            existing(&r1, &["RUNNING"], stop.clone()),
            existing(&ins(9), &["RUNNING"], stop),
        ],
        T0 + 1,
    );
    let refused = submit_new(store, sub).await;
    assert_eq!(
        refused.group, None,
        "every task refused: no group ({refused:?})"
    );
    assert_eq!(refused.accepted().count(), 0);
    assert_eq!(task_count(store, a).await, before);

    let start = effect(Some("STARTING"), Some("RUNNING"), None);
    let (sub, _) = submission(
        a,
        gz(),
        "StartInstances",
        true,
        vec![existing(&r1, &["STOPPED"], start.clone())],
        T0 + 2,
    );
    let grouped = submit_new(store, sub).await;
    let group = grouped.group.expect("one task accepted: a group");
    let grouped_task = only_task(&grouped);
    assert_eq!(must_task(store, a, grouped_task).await.group, Some(group));

    let (sub, _) = submission(
        a,
        gz(),
        "StartInstances",
        false,
        vec![existing(&r2, &["STOPPED"], start)],
        T0 + 3,
    );
    let single = submit_new(store, sub).await;
    assert_eq!(single.group, None, "an ungrouped submission has no group");
    let single_task = only_task(&single);
    assert_eq!(must_task(store, a, single_task).await.group, None);

    let last = [group, grouped_task, single_task]
        .into_iter()
        .max()
        .expect("IDs");
    for n in first.get()..=last.get() + 3 {
        let id = RequestId::new(n).expect("a positive ID");
        let found = store.group(a, id).await.expect("group");
        assert_eq!(
            found.is_some(),
            id == group,
            "group {id}: only the group a report named exists"
        );
    }
}

// ---------------------------------------------------------------------------------------
// create targets
// ---------------------------------------------------------------------------------------

/// A create target inserts the resource at submission, busy with its task, in the
/// account and region of the submission only; its task's effect settles it.
pub async fn submit_create_inserts_the_resource_busy(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let (r1, r2) = (ins(1), ins(2));
    let attrs = json!({"instanceName": "web", "cpu": 2, "zone": "ap-guangzhou-3"});
    let run = effect(None, Some("RUNNING"), Some("LAUNCH_FAILED"));
    let run_effect = run.clone();
    let now = T0 + 5;
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        vec![
            creating(
                new_resource(&r1, KIND, "PENDING", attrs.clone()),
                run.clone(),
            ),
            creating(new_resource(&r2, KIND, "PENDING", attrs.clone()), run),
        ],
        now,
    );
    let report = submit_new(store, sub).await;
    let group = report.group.expect("a grouped creation has a group");
    let (t1, t2) = match report.outcomes.as_slice() {
        [(x, Ok(t1)), (y, Ok(t2))] if *x == r1 && *y == r2 => (*t1, *t2),
        other => panic!("expected both creations accepted, got {other:?}"),
    };
    for (id, task) in [(&r1, t1), (&r2, t2)] {
        assert_eq!(
            resource(store, a, id).await,
            Some(ResourceRecord {
                id: id.clone(),
                kind: KIND.into(),
                region: gz(),
                state: state("PENDING"),
                attrs: object(attrs.clone()),
                created_at: now,
                active_task: Some(task),
                last_operation: last_op(task, "RunInstances", TaskState::Queued),
            })
        );
        assert_eq!(
            must_task(store, a, task).await,
            queued_record(task, a, Some(group), "RunInstances", id, &run_effect, now)
        );
        assert_eq!(resource(store, b, id).await, None, "not in another account");
        assert_eq!(
            resource_of(store, a, sh(), KIND, id).await,
            None,
            "not in another region"
        );
    }

    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![existing(&r1, &[], Effect::default())],
        now + 1,
    );
    assert_eq!(
        submit_new(store, sub).await.outcomes,
        vec![(
            r1.clone(),
            Err(Rejection::Busy {
                task: t1,
                action: "RunInstances".into()
            })
        )],
        "a resource being created is busy"
    );

    let claimed = claim(store, t1, now + 2).await;
    assert_eq!(Value::Object(claimed.resource_attrs.clone()), attrs);
    complete(store, &claimed, success(), now + 3).await;
    finish(store, t2, TaskOutcome::Failed(fault()), now + 3).await;
    for (id, expected) in [(&r1, "RUNNING"), (&r2, "LAUNCH_FAILED")] {
        let res = must_resource(store, a, id).await;
        assert_eq!(
            (res.state, res.active_task),
            (state(expected), None),
            "{id}"
        );
    }
}

/// A create target whose ID exists (in any account: IDs are global) fails the whole
/// submission with DuplicateResource: no task, no resource change, and neither its nonce
/// nor its client token is kept, so the caller can submit again with a new ID.
pub async fn duplicate_resource_rolls_back_the_whole_submission(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let (taken, idle, fresh, fresher) = (ins(1), ins(2), ins(3), ins(4));
    instance(
        store,
        a,
        gz(),
        &taken,
        "RUNNING",
        json!({"instanceName": "a"}),
        T0,
    )
    .await;
    instance(
        store,
        a,
        gz(),
        &idle,
        "RUNNING",
        json!({"instanceName": "b"}),
        T0,
    )
    .await;
    let tasks_before = all_tasks(store, a).await;
    let taken_before = resource(store, a, &taken).await;
    let idle_before = resource(store, a, &idle).await;

    let nonce = fresh_nonce();
    let plan = |duplicate: &ResourceId, new: &ResourceId| {
        vec![
            existing(&idle, &[], effect(Some("REBOOTING"), None, None)),
            creating(
                new_resource(new, KIND, "PENDING", json!({})),
                Effect::default(),
            ),
            creating(
                new_resource(duplicate, KIND, "PENDING", json!({})),
                Effect::default(),
            ),
        ]
    };
    let (mut sub, _) = submission(a, gz(), "RunInstances", true, plan(&taken, &fresh), T0 + 1);
    sub.nonce = nonce.clone();
    sub.idempotency = token("tok-1", "fp-1");
    match store.submit(sub).await {
        Err(StoreError::DuplicateResource(id)) if id == taken => {}
        other => panic!("expected DuplicateResource({taken}), got {other:?}"),
    }
    assert_eq!(all_tasks(store, a).await, tasks_before, "no task was kept");
    assert_eq!(resource(store, a, &taken).await, taken_before);
    assert_eq!(
        resource(store, a, &idle).await,
        idle_before,
        "the accepted task on {idle} was rolled back"
    );
    assert_eq!(
        resource(store, a, &fresh).await,
        None,
        "the other creation was rolled back"
    );

    // Another account cannot create it either.
    let (sub, _) = submission(
        b,
        gz(),
        "RunInstances",
        false,
        vec![creating(
            new_resource(&taken, KIND, "PENDING", json!({})),
            Effect::default(),
        )],
        T0 + 2,
    );
    match store.submit(sub).await {
        Err(StoreError::DuplicateResource(id)) if id == taken => {}
        other => panic!("another account's ID must be a duplicate too, got {other:?}"),
    }
    assert_eq!(task_count(store, b).await, 0);

    // The same request (same nonce and signature, same token) with a new ID commits.
    let (mut sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        plan(&fresher, &fresh),
        T0 + 3,
    );
    sub.nonce = nonce;
    sub.idempotency = token("tok-1", "fp-1");
    let report = submit_new(store, sub).await;
    assert_eq!(report.accepted().count(), 3, "{report:?}");
    assert!(resource(store, a, &fresh).await.is_some());
    assert!(resource(store, a, &fresher).await.is_some());
    assert_eq!(
        must_resource(store, a, &idle).await.state,
        state("REBOOTING")
    );
}

// ---------------------------------------------------------------------------------------
// nonces
// ---------------------------------------------------------------------------------------

/// A query's nonce is Fresh once; the same signature again is a resend with no stored
/// answer; another signature is a reuse. Nonces belong to their SecretId.
pub async fn record_nonce_tells_fresh_resent_and_reused(store: &dyn Store) {
    let me = secret();
    let other: SecretId = "AKIDsomebodyelse".parse().expect("a SecretId");
    let outcome = |claim: NonceClaim| async move { store.record_nonce(claim).await };
    assert_eq!(
        outcome(nonce_claim(&me, 1, "sig-a")).await.expect("fresh"),
        NonceOutcome::Fresh
    );
    assert_eq!(
        outcome(nonce_claim(&me, 1, "sig-a")).await.expect("resent"),
        NonceOutcome::Resent { answer: None }
    );
    match outcome(nonce_claim(&me, 1, "sig-b")).await {
        Err(StoreError::NonceReused { secret_id, nonce }) => {
            assert_eq!((secret_id, nonce), (me.clone(), 1));
        }
        other => panic!("another signature must be NonceReused, got {other:?}"),
    }
    assert_eq!(
        outcome(nonce_claim(&me, 1, "sig-a")).await.expect("resent"),
        NonceOutcome::Resent { answer: None },
        "a refused reuse does not replace the first request"
    );
    assert_eq!(
        outcome(nonce_claim(&other, 1, "sig-b"))
            .await
            .expect("fresh"),
        NonceOutcome::Fresh,
        "another SecretId's nonce 1 is its own"
    );
    assert_eq!(
        outcome(nonce_claim(&me, 2, "sig-a")).await.expect("fresh"),
        NonceOutcome::Fresh,
        "a new nonce is fresh whatever its signature"
    );
}

/// A key disabled, or an account blocked, after the caller read the key claims no nonce:
/// neither a query's nor a submission's, nor a resend's. Enabled or unblocked again, it
/// claims as before. A key the store does not hold is left to the caller.
pub async fn a_disabled_key_or_blocked_account_claims_no_nonce(store: &dyn Store) {
    let a = account(store, "main").await;
    instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let key: SecretId = "AKIDrevocable".parse().expect("a SecretId");
    let new_key = NewApiKey {
        secret_id: key.clone(),
        secret_key: "s3cret".into(),
        account: a,
        access: KeyAccess::default(),
    };
    store.create_key(new_key, T0).await.expect("create_key");
    let claim = |n: u64| nonce_claim(&key, n, &format!("sig-{n}"));
    let stop = |nonce: NonceClaim| {
        let (mut sub, _) = submission(
            a,
            gz(),
            "StopInstances",
            false,
            vec![existing(&ins(1), &[], Effect::default())],
            T0 + 1,
        );
        sub.nonce = nonce;
        sub
    };
    assert_eq!(
        store.record_nonce(claim(1)).await.expect("fresh"),
        NonceOutcome::Fresh
    );

    assert!(store.set_key_enabled(&key, false).await.expect("disable"));
    let disabled = |outcome: StoreResult<()>, what: &str| match outcome {
        Err(StoreError::KeyDisabled(id)) => assert_eq!(id, key, "{what}"),
        other => panic!("{what} with a disabled key: {other:?}"),
    };
    disabled(store.record_nonce(claim(2)).await.map(drop), "a query");
    disabled(store.record_nonce(claim(1)).await.map(drop), "a resend");
    disabled(store.submit(stop(claim(3))).await.map(drop), "a submission");
    assert_eq!(
        must_resource(store, a, &ins(1)).await.active_task,
        None,
        "the refused submission changed nothing"
    );

    assert!(store.set_key_enabled(&key, true).await.expect("enable"));
    assert_eq!(
        store.record_nonce(claim(2)).await.expect("fresh"),
        NonceOutcome::Fresh
    );

    assert!(store
        .set_account_blocked("main", true)
        .await
        .expect("block"));
    match store.record_nonce(claim(4)).await {
        Err(StoreError::AccountBlocked(account)) => assert_eq!(account, "main"),
        other => panic!("a blocked account's key: {other:?}"),
    }
    match store.submit(stop(claim(5))).await.map(drop) {
        Err(StoreError::AccountBlocked(account)) => assert_eq!(account, "main"),
        other => panic!("a blocked account's submission: {other:?}"),
    }
    assert!(store
        .set_account_blocked("main", false)
        .await
        .expect("unblock"));
    assert_eq!(
        store.record_nonce(claim(4)).await.expect("fresh"),
        NonceOutcome::Fresh
    );
    assert_eq!(
        store.record_nonce(fresh_nonce()).await.expect("fresh"),
        NonceOutcome::Fresh,
        "a key the store does not hold"
    );
}

/// One nonce sent by many callers at once (so that several share a commit) is Fresh
/// exactly once; the same signature again is a resend, another one a reuse.
pub async fn one_nonce_sent_at_once_by_many_is_fresh_once(store: Arc<dyn Store>) {
    let me = secret();
    let handles: Vec<_> = (0..40)
        .map(|n| {
            let store = Arc::clone(&store);
            let me = me.clone();
            let signature = if n % 2 == 0 { "sig-a" } else { "sig-b" };
            tokio::spawn(async move {
                let outcome = store.record_nonce(nonce_claim(&me, 7, signature)).await;
                (signature, outcome)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("a recording task panicked"));
    }
    let fresh: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Ok(NonceOutcome::Fresh)))
        .map(|(signature, _)| *signature)
        .collect();
    assert_eq!(fresh.len(), 1, "{outcomes:?}");
    for (signature, outcome) in &outcomes {
        match outcome {
            Ok(NonceOutcome::Fresh) => {}
            Ok(NonceOutcome::Resent { answer: None }) if *signature == fresh[0] => {}
            Err(StoreError::NonceReused { nonce: 7, .. }) if *signature != fresh[0] => {}
            other => panic!("{signature} after {} was first: {other:?}", fresh[0]),
        }
    }
}

/// One nonce used at once by queries and by submissions, each another request: exactly
/// one of them spends it, every other is a reuse, and only a winning submission's task
/// exists. (A store that claims queries' nonces outside its writer must still check both
/// kinds against each other atomically.)
pub async fn one_nonce_raced_by_queries_and_submissions_is_spent_once(store: Arc<dyn Store>) {
    let a = account(&*store, "main").await;
    let me = secret();
    let handles: Vec<_> = (0..40u32)
        .map(|n| {
            let store = Arc::clone(&store);
            let claim = nonce_claim(&me, 9, &format!("request {n}"));
            tokio::spawn(async move {
                if n % 2 == 0 {
                    return (n, store.record_nonce(claim).await.map(drop));
                }
                let created = new_resource(&ins(n), KIND, "PENDING", json!({}));
                let (mut sub, _) = submission(
                    a,
                    gz(),
                    "RunInstances",
                    false,
                    vec![creating(created, Effect::default())],
                    T0,
                );
                sub.nonce = claim;
                (n, store.submit(sub).await.map(drop))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for handle in handles {
        match handle.await.expect("a caller panicked") {
            (n, Ok(())) => winners.push(n),
            (_, Err(StoreError::NonceReused { nonce: 9, .. })) => {}
            (n, other) => panic!("request {n}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let tasks = all_tasks(&*store, a).await;
    assert_eq!(
        tasks.items.len(),
        usize::from(winners[0] % 2 == 1),
        "{tasks:?}"
    );
}

/// A submission's answer is kept with its nonce: the identical request again (same nonce,
/// same signature) gets it byte for byte and changes nothing; a query resending it sees
/// it; another signature with that nonce is a reuse.
pub async fn submit_resend_gets_the_stored_answer(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let nonce = fresh_nonce();
    let stop = || {
        vec![existing(
            &r,
            &["RUNNING"],
            effect(Some("STOPPING"), Some("STOPPED"), None),
        )]
    };
    let (mut sub, _) = submission(a, gz(), "StopInstances", false, stop(), T0 + 1);
    sub.nonce = nonce.clone();
    let first = match store.submit(sub).await {
        Ok(Submitted::New { answer, .. }) => answer,
        other => panic!("the first request commits, got {other:?}"),
    };
    let tasks_before = all_tasks(store, a).await;
    let res_before = resource(store, a, &r).await;

    // What the resend plans does not matter: it is answered from the store.
    let (mut sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![creating(
            new_resource(&ins(2), KIND, "PENDING", json!({})),
            Effect::default(),
        )],
        T0 + 2,
    );
    let (again, probe) = answer("a resend must not render");
    sub.nonce = nonce.clone();
    sub.answer = again;
    assert_eq!(
        store.submit(sub).await.expect("resend"),
        Submitted::Repeated {
            answer: first.clone()
        }
    );
    assert_eq!(probe.calls(), vec![], "a resend renders nothing");
    assert_eq!(
        all_tasks(store, a).await,
        tasks_before,
        "a resend creates nothing"
    );
    assert_eq!(resource(store, a, &r).await, res_before);
    assert_eq!(resource(store, a, &ins(2)).await, None);

    assert_eq!(
        store
            .record_nonce(nonce.clone())
            .await
            .expect("record_nonce"),
        NonceOutcome::Resent {
            answer: Some(first)
        },
        "the kept answer is the nonce's answer"
    );

    let mut reused = nonce.clone();
    reused.signature = "another request".into();
    let (mut sub, _) = submission(a, gz(), "StopInstances", false, stop(), T0 + 3);
    sub.nonce = reused.clone();
    match store.submit(sub).await {
        Err(StoreError::NonceReused {
            secret_id,
            nonce: n,
        }) => {
            assert_eq!((secret_id, n), (nonce.secret_id.clone(), nonce.nonce.get()));
        }
        other => panic!("another signature must be NonceReused, got {other:?}"),
    }
    match store.record_nonce(reused).await {
        Err(StoreError::NonceReused { .. }) => {}
        other => panic!("a query reusing it must be NonceReused, got {other:?}"),
    }
    assert_eq!(all_tasks(store, a).await, tasks_before);
}

/// A submission whose nonce a query already used (another signature) is a reuse, and
/// commits nothing.
pub async fn submit_refuses_a_nonce_a_query_used(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let tasks_before = all_tasks(store, a).await;
    let query = fresh_nonce();
    assert_eq!(
        store
            .record_nonce(query.clone())
            .await
            .expect("record_nonce"),
        NonceOutcome::Fresh
    );
    let mut mutation = query.clone();
    mutation.signature = "a mutating request".into();
    let (mut sub, probe) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![existing(&r, &[], effect(Some("STOPPING"), None, None))],
        T0 + 1,
    );
    sub.nonce = mutation;
    match store.submit(sub).await {
        Err(StoreError::NonceReused { secret_id, nonce }) => {
            assert_eq!(
                (secret_id, nonce),
                (query.secret_id.clone(), query.nonce.get())
            );
        }
        other => panic!("expected NonceReused, got {other:?}"),
    }
    assert_eq!(probe.calls(), vec![]);
    assert_eq!(all_tasks(store, a).await, tasks_before);
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
    assert_eq!(
        store.record_nonce(query).await.expect("record_nonce"),
        NonceOutcome::Resent { answer: None },
        "the query's nonce is as it was"
    );
}

// ---------------------------------------------------------------------------------------
// client tokens
// ---------------------------------------------------------------------------------------

/// The same client token and fingerprint (another nonce) gets the first answer and
/// creates nothing, even when the resource could take the task again; that second
/// request's own resend gets the same answer.
pub async fn client_token_repeats_the_first_answer(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let plan = || {
        vec![
            existing(&r, &[], effect(Some("REBOOTING"), None, None)),
            creating(
                new_resource(&ins(2), KIND, "PENDING", json!({})),
                Effect::default(),
            ),
        ]
    };
    let (mut sub, _) = submission(a, gz(), "RestartInstances", true, plan(), T0 + 1);
    sub.idempotency = token("my-token", "fp");
    let (first, report) = match store.submit(sub).await {
        Ok(Submitted::New { answer, report, .. }) => (answer, report),
        other => panic!("the first request commits, got {other:?}"),
    };
    for task in report.accepted() {
        finish(store, task, success(), T0 + 2).await;
    }
    let tasks_before = all_tasks(store, a).await;
    let resources_before = store
        .resources(a, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");

    // ins-2 exists now; plan ins-3 instead so that only the token can stop a creation.
    let second_nonce = fresh_nonce();
    let (mut sub, _) = submission(
        a,
        gz(),
        "RestartInstances",
        true,
        vec![
            existing(&r, &[], effect(Some("REBOOTING"), None, None)),
            creating(
                new_resource(&ins(3), KIND, "PENDING", json!({})),
                Effect::default(),
            ),
        ],
        T0 + 3,
    );
    let (again, probe) = answer("a repeat must not render");
    sub.nonce = second_nonce.clone();
    sub.idempotency = token("my-token", "fp");
    sub.answer = again;
    assert_eq!(
        store.submit(sub).await.expect("repeat"),
        Submitted::Repeated {
            answer: first.clone()
        }
    );
    assert_eq!(probe.calls(), vec![]);
    assert_eq!(
        all_tasks(store, a).await,
        tasks_before,
        "nothing new was created"
    );
    assert_eq!(
        store
            .resources(a, listing_filter(gz(), KIND), EVERYTHING)
            .await
            .expect("resources"),
        resources_before
    );

    let (mut sub, _) = submission(a, gz(), "RestartInstances", true, plan(), T0 + 4);
    sub.nonce = second_nonce;
    sub.idempotency = token("my-token", "fp");
    assert_eq!(
        store.submit(sub).await.expect("resend"),
        Submitted::Repeated { answer: first },
        "a resend of the repeated request gets the same answer"
    );
    assert_eq!(all_tasks(store, a).await, tasks_before);
}

/// The same client token with another fingerprint is refused and commits nothing.
pub async fn client_token_with_other_parameters_is_refused(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let (mut sub, _) = submission(
        a,
        gz(),
        "RestartInstances",
        false,
        vec![existing(&r, &[], Effect::default())],
        T0 + 1,
    );
    sub.idempotency = token("tok", "fp-1");
    let task = only_task(&submit_new(store, sub).await);
    finish(store, task, success(), T0 + 2).await;
    let tasks_before = all_tasks(store, a).await;
    let res_before = resource(store, a, &r).await;

    let (mut sub, probe) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![existing(&r, &[], effect(Some("STOPPING"), None, None))],
        T0 + 3,
    );
    sub.idempotency = token("tok", "fp-2");
    match store.submit(sub).await {
        Err(StoreError::TokenReused { token }) => assert_eq!(token, "tok"),
        other => panic!("expected TokenReused, got {other:?}"),
    }
    assert_eq!(probe.calls(), vec![]);
    assert_eq!(all_tasks(store, a).await, tasks_before);
    assert_eq!(resource(store, a, &r).await, res_before);
}

/// Client tokens belong to their account: another account's identical token is new to it,
/// and each account then repeats its own answer.
pub async fn client_tokens_are_per_account(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let (ra, rb) = (ins(1), ins(2));
    instance(store, a, gz(), &ra, "RUNNING", json!({}), T0).await;
    instance(store, b, gz(), &rb, "RUNNING", json!({}), T0).await;
    let submit = |account: AccountId, id: &ResourceId| {
        let (mut sub, _) = submission(
            account,
            gz(),
            "StopInstances",
            false,
            vec![existing(id, &[], effect(Some("STOPPING"), None, None))],
            T0 + 1,
        );
        sub.idempotency = token("shared-token", "fp");
        store.submit(sub)
    };
    let answer_a = match submit(a, &ra).await {
        Ok(Submitted::New { answer, .. }) => answer,
        other => panic!("account a commits, got {other:?}"),
    };
    let answer_b = match submit(b, &rb).await {
        Ok(Submitted::New { answer, report, .. }) => {
            assert_eq!(report.accepted().count(), 1);
            answer
        }
        other => panic!("account b's first use of the token commits, got {other:?}"),
    };
    assert_ne!(answer_a, answer_b, "each got its own report");
    assert_eq!(task_count(store, b).await, 2, "b's creation and b's stop");
    assert_eq!(
        submit(a, &ra).await.expect("repeat"),
        Submitted::Repeated { answer: answer_a }
    );
    assert_eq!(
        submit(b, &rb).await.expect("repeat"),
        Submitted::Repeated { answer: answer_b }
    );
}

/// A client token remembers its first use only within its window (`valid_from`, 24 hours
/// in the engine): once that use is older, the token counts as new, the submission
/// commits, and its answer is the one repeated from then on.
pub async fn client_token_is_forgotten_after_its_window(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let use_token = |fingerprint: &str, now: UnixMillis| {
        let (mut sub, _) = submission(
            a,
            gz(),
            "RestartInstances",
            false,
            vec![existing(&r, &[], reboot_effect())],
            now,
        );
        sub.idempotency = token_since("tok", fingerprint, now - DAY);
        store.submit(sub)
    };
    let committed = |result: StoreResult<Submitted>| match result {
        Ok(Submitted::New { report, answer, .. }) => (only_task(&report), answer),
        other => panic!("expected a new submission, got {other:?}"),
    };
    let first_use = T0 + 1;
    let (first, first_answer) = committed(use_token("fp", first_use).await);
    finish(store, first, success(), first_use + 1).await;
    assert_eq!(
        use_token("fp", first_use + DAY).await.expect("repeat"),
        Submitted::Repeated {
            answer: first_answer.clone()
        },
        "within the window"
    );

    let second_use = first_use + DAY + 1;
    let (second, second_answer) = committed(use_token("fp", second_use).await);
    assert!(second > first, "a new task was created");
    assert_ne!(second_answer, first_answer);
    finish(store, second, success(), second_use + 1).await;
    assert_eq!(
        use_token("fp", second_use + 10).await.expect("repeat"),
        Submitted::Repeated {
            answer: second_answer
        },
        "the new use replaced the old one"
    );
    committed(use_token("other parameters", second_use + DAY + 1).await);
}

// ---------------------------------------------------------------------------------------
// claim and complete
// ---------------------------------------------------------------------------------------

/// Claiming moves a QUEUED task to RUNNING once, counting the attempt, recording the
/// lease and a fence, and returning the resource's attributes; a claimed, final or
/// unknown task cannot be claimed.
pub async fn claim_starts_a_queued_task_once(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    let attrs = json!({"instanceName": "web", "cpu": 2, "lanIp": "10.0.0.7"});
    instance(store, a, gz(), &r, "RUNNING", attrs.clone(), T0).await;
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let task = start_task(store, a, &r, "StopInstances", stop.clone(), T0 + 1).await;
    let queued = queued_record(task, a, None, "StopInstances", &r, &stop, T0 + 1);
    assert_eq!(must_task(store, a, task).await, queued, "before the claim");
    let claimed = claim(store, task, T0 + 2).await;
    assert!(
        claimed.fence > 0,
        "a claim draws a fence above 0 (no claim yet)"
    );
    let expected = claimed_record(queued, claimed.fence, T0 + 2);
    assert_eq!(claimed.task, expected, "the claimed task");
    assert_eq!(Value::Object(claimed.resource_attrs.clone()), attrs);
    assert_eq!(must_task(store, a, task).await, expected, "as read back");

    assert!(
        try_claim(store, task, T0 + 3).await.is_none(),
        "a RUNNING task cannot be claimed again"
    );
    assert_eq!(must_task(store, a, task).await, expected, "unchanged");

    complete(store, &claimed, success(), T0 + 4).await;
    let done = must_task(store, a, task).await;
    assert!(
        try_claim(store, task, T0 + 5).await.is_none(),
        "a final task cannot be claimed"
    );
    assert_eq!(must_task(store, a, task).await, done);
    assert_eq!(
        done,
        ended_record(expected, TaskState::Succeeded, None, None, T0 + 4)
    );

    let unknown = RequestId::new(task.get() + 1_000).expect("an ID");
    assert!(
        try_claim(store, unknown, T0 + 6).await.is_none(),
        "an unknown task cannot be claimed"
    );
}

/// Success records the result, applies the success state (or returns to the prior one
/// when the effect names none), merges the patch into the attributes and frees the
/// resource.
pub async fn complete_success_applies_the_effect(store: &dyn Store) {
    let a = account(store, "main").await;
    let attrs = json!({"instanceName": "web", "cpu": 2, "zone": "ap-guangzhou-3"});
    struct Case {
        action: &'static str,
        effect: Effect,
        result: Option<Value>,
        state: &'static str,
        attrs: Value,
    }
    let cases = [
        Case {
            action: "ModifyInstanceAttributes",
            effect: Effect {
                patch: object(json!({"instanceName": "renamed", "os": "linux"})),
                ..effect(Some("MODIFYING"), Some("STOPPED"), Some("BROKEN"))
            },
            result: Some(json!({"publicIp": "1.2.3.4", "nested": {"ok": true}})),
            state: "STOPPED",
            attrs: json!({"instanceName": "renamed", "cpu": 2, "zone": "ap-guangzhou-3", "os": "linux"}),
        },
        Case {
            action: "ResetInstancePassword",
            effect: effect(Some("RESETTING_PASSWORD"), None, Some("BROKEN")),
            result: None,
            state: "RUNNING",
            attrs: attrs.clone(),
        },
    ];
    for (n, case) in cases.into_iter().enumerate() {
        let r = ins(n as u32 + 1);
        instance(store, a, gz(), &r, "RUNNING", attrs.clone(), T0).await;
        let task = start_task(store, a, &r, case.action, case.effect.clone(), T0 + 1).await;
        let claimed = claim(store, task, T0 + 2).await;
        let outcome = TaskOutcome::Succeeded {
            result: case.result.clone(),
        };
        assert_eq!(
            complete(store, &claimed, outcome, T0 + 3).await,
            vec![],
            "nothing waits behind it"
        );
        assert_eq!(
            must_task(store, a, task).await,
            ended_record(
                claimed.task,
                TaskState::Succeeded,
                None,
                case.result,
                T0 + 3
            ),
            "{}",
            case.action
        );
        let res = must_resource(store, a, &r).await;
        assert_eq!(res.state, state(case.state), "{}", case.action);
        assert_eq!(Value::Object(res.attrs), case.attrs, "{}", case.action);
        assert_eq!(res.active_task, None, "{} frees the resource", case.action);
        assert_eq!(
            res.last_operation,
            last_op(task, case.action, TaskState::Succeeded)
        );
    }
}

/// Failure records the error, applies the failure state (or returns to the prior one)
/// and leaves the attributes alone: the patch is not applied.
pub async fn complete_failure_restores_the_state(store: &dyn Store) {
    let a = account(store, "main").await;
    let attrs = json!({"instanceName": "web", "imageId": "img-22trbn9x"});
    let patch = object(json!({"imageId": "img-eb30mz89", "os": "linux"}));
    let cases = [
        (
            "ResetInstances",
            "RUNNING",
            effect(Some("REINSTALLING"), Some("RUNNING"), Some("BROKEN")),
            "BROKEN",
        ),
        (
            "StartInstances",
            "STOPPED",
            effect(Some("STARTING"), Some("RUNNING"), None),
            "STOPPED",
        ),
    ];
    for (n, (action, prior, effect, expected)) in cases.into_iter().enumerate() {
        let r = ins(n as u32 + 1);
        instance(store, a, gz(), &r, prior, attrs.clone(), T0).await;
        let effect = Effect {
            patch: patch.clone(),
            ..effect
        };
        let task = start_task(store, a, &r, action, effect, T0 + 1).await;
        let claimed = claim(store, task, T0 + 2).await;
        complete(store, &claimed, TaskOutcome::Failed(fault()), T0 + 3).await;
        assert_eq!(
            must_task(store, a, task).await,
            ended_record(claimed.task, TaskState::Failed, Some(fault()), None, T0 + 3),
            "{action}"
        );
        let res = must_resource(store, a, &r).await;
        assert_eq!(res.state, state(expected), "{action}");
        assert_eq!(
            Value::Object(res.attrs),
            attrs,
            "{action}: no patch on failure"
        );
        assert_eq!(res.active_task, None);
        assert_eq!(
            res.last_operation,
            Some(LastOperation {
                task,
                action: action.into(),
                state: TaskState::Failed,
                error: Some(fault()),
            })
        );
    }
}

/// Completing a task that is not RUNNING (still QUEUED, or final already) is refused as
/// fenced, whatever fence it names, and changes nothing; each refusal is counted.
pub async fn complete_ignores_tasks_that_are_not_running(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r1, r2) = (ins(1), ins(2));
    instance(
        store,
        a,
        gz(),
        &r1,
        "RUNNING",
        json!({"instanceName": "a"}),
        T0,
    )
    .await;
    instance(
        store,
        a,
        gz(),
        &r2,
        "RUNNING",
        json!({"instanceName": "b"}),
        T0,
    )
    .await;
    let stop = Effect {
        patch: object(json!({"instanceName": "patched"})),
        ..effect(Some("STOPPING"), Some("STOPPED"), Some("BROKEN"))
    };
    let queued = start_task(store, a, &r1, "StopInstances", stop.clone(), T0 + 1).await;
    let done = start_task(store, a, &r2, "StopInstances", stop, T0 + 1).await;
    let claimed = claim(store, done, T0 + 2).await;
    let outcome = TaskOutcome::Succeeded {
        result: Some(json!(1)),
    };
    complete(store, &claimed, outcome, T0 + 2).await;
    let fenced_before = fenced_completions(store).await;

    let mut refusals = 0;
    for (task, id, fences) in [
        (queued, &r1, [0, claimed.fence + 1]),
        (done, &r2, [claimed.fence, 0]),
    ] {
        let task_before = must_task(store, a, task).await;
        let res_before = resource(store, a, id).await;
        for fence in fences {
            for outcome in [success(), TaskOutcome::Failed(fault())] {
                assert_eq!(
                    store.complete(task, fence, outcome, T0 + 9).await.ok(),
                    Some(Completion::Fenced),
                    "task {task} is {:?} (fence {fence})",
                    task_before.state
                );
                refusals += 1;
                assert_eq!(
                    must_task(store, a, task).await,
                    task_before,
                    "task {task} is {:?}",
                    task_before.state
                );
                assert_eq!(resource(store, a, id).await, res_before, "{id}");
            }
        }
    }
    assert_eq!(must_resource(store, a, &r1).await.state, state("STOPPING"));
    assert_eq!(must_resource(store, a, &r2).await.state, state("STOPPED"));
    assert_eq!(
        fenced_completions(store).await,
        fenced_before + refusals,
        "every refusal is counted"
    );
}

// ---------------------------------------------------------------------------------------
// recovery and durability
// ---------------------------------------------------------------------------------------

/// Recovery puts RUNNING tasks back to QUEUED (their attempts kept, their resources still
/// busy) and returns every unfinished task of every account in submission order, due
/// at once.
pub async fn recover_requeues_running_tasks(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    for n in 1..=4 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, b, gz(), &ins(5), "RUNNING", json!({}), T0).await;
    assert_eq!(
        recover(store, T0).await,
        vec![],
        "nothing is unfinished yet"
    );
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let queued = start_task(store, a, &ins(1), "StopInstances", stop.clone(), T0 + 1).await;
    let running = start_task(store, a, &ins(2), "StopInstances", stop.clone(), T0 + 2).await;
    let finished = start_task(store, a, &ins(3), "StopInstances", stop.clone(), T0 + 3).await;
    let other = start_task(store, b, &ins(5), "StopInstances", stop.clone(), T0 + 4).await;
    let last = start_task(store, a, &ins(4), "StopInstances", stop, T0 + 5).await;
    claim(store, running, T0 + 6).await;
    finish(store, finished, success(), T0 + 7).await;

    if store.shared() {
        // Other nodes may be running tasks: recovery leaves RUNNING tasks to rescue.
        let now = T0 + 100;
        assert_eq!(
            due_by(&recover(store, now).await, now),
            vec![queued, other, last],
            "a shared store recovers only the queued tasks"
        );
        let still = must_task(store, a, running).await;
        assert_eq!(
            still.state,
            TaskState::Running,
            "a running task is left alone"
        );
        assert!(still.run.lease.is_some(), "with its lease");
        return;
    }
    let unfinished = vec![queued, running, other, last];
    for attempt in 1..=2 {
        let now = T0 + 100 * i64::from(attempt);
        assert_eq!(
            due_by(&recover(store, now).await, now),
            unfinished,
            "recovery {attempt}"
        );
        let requeued = must_task(store, a, running).await;
        assert_eq!(requeued.state, TaskState::Queued, "recovery {attempt}");
        assert_eq!(requeued.attempts, attempt, "attempts are kept");
        assert_eq!(requeued.finished_at, None);
        assert_eq!(requeued.run.lease, None, "the lease is gone");
        let res = must_resource(store, a, &ins(2)).await;
        assert_eq!(
            (res.state, res.active_task),
            (state("STOPPING"), Some(running)),
            "the resource stays busy with the requeued task"
        );
        assert_eq!(must_task(store, a, queued).await.state, TaskState::Queued);
        assert_eq!(
            must_task(store, a, finished).await.state,
            TaskState::Succeeded
        );
        let again = claim(store, running, now + 10).await;
        assert_eq!(again.task.attempts, attempt + 1, "a new claim counts");
        assert!(
            again.fence > requeued.run.fence,
            "a claim after recovery draws a larger fence"
        );
    }
}

/// A node that restarts takes back its own running tasks at once, on every store (it
/// held them; nothing else can be running them).
pub async fn recover_requeues_the_running_tasks_of_the_restarted_node(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=2 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let mine = start_task(store, a, &ins(1), "StopInstances", stop.clone(), T0 + 1).await;
    let queued = start_task(store, a, &ins(2), "StopInstances", stop, T0 + 2).await;
    claim(store, mine, T0 + 3).await;
    let now = T0 + 10;
    let recovered = store.recover(now, OWNER).await.expect("recover");
    assert_eq!(due_by(&recovered, now), vec![mine, queued]);
    let record = must_task(store, a, mine).await;
    assert_eq!(record.state, TaskState::Queued, "requeued at once");
    assert_eq!(record.run.lease, None);
}

/// Everything committed survives closing and reopening the database, recovery after a
/// reopen finds the unfinished tasks, and new IDs are above every ID used before (across
/// several reopens, including IDs only refused submissions drew).
///
/// `open` opens the same database each time; the suite drops one store before opening the
/// next.
pub async fn reopen_keeps_everything_and_never_reuses_ids<F, Fut, S>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    let store = open().await;
    let a = account(&store, "main").await;
    let key = NewApiKey {
        secret_id: "AKIDreopen".parse().expect("a SecretId"),
        secret_key: "s3cret".into(),
        account: a,
        access: KeyAccess::default(),
    };
    store.create_key(key.clone(), T0).await.expect("create_key");
    let mut used = BTreeSet::new();
    for n in 1..=3 {
        used.insert(instance(&store, a, gz(), &ins(n), "RUNNING", json!({"n": n}), T0).await);
    }
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![
            existing(&ins(1), &["RUNNING"], stop.clone()),
            existing(&ins(2), &["RUNNING"], stop.clone()),
        ],
        T0 + 1,
    );
    let report = submit_new(&store, sub).await;
    let group = report.group.expect("a group");
    let tasks: Vec<RequestId> = report.accepted().collect();
    used.insert(group);
    used.extend(tasks.iter().copied());
    let first_claim = claim(&store, tasks[0], T0 + 2).await;
    // A refused completion is counted; the count is kept too.
    assert_eq!(
        store
            .complete(tasks[1], first_claim.fence, success(), T0 + 2)
            .await
            .ok(),
        Some(Completion::Fenced),
        "another task's fence holds nothing"
    );
    // Refused and rolled-back submissions may draw IDs too; none may come back later.
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![existing(&ins(9), &[], stop.clone())],
        T0 + 3,
    );
    assert_eq!(submit_new(&store, sub).await.group, None);
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        vec![creating(
            new_resource(&ins(3), KIND, "PENDING", json!({})),
            Effect::default(),
        )],
        T0 + 3,
    );
    assert!(matches!(
        store.submit(sub).await,
        Err(StoreError::DuplicateResource(_))
    ));
    let resend = fresh_nonce();
    let (mut sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![existing(&ins(3), &[], stop.clone())],
        T0 + 4,
    );
    sub.nonce = resend.clone();
    let resend_answer = match store.submit(sub).await {
        Ok(Submitted::New { answer, report, .. }) => {
            used.extend(report.accepted());
            answer
        }
        other => panic!("expected a commit, got {other:?}"),
    };

    let tasks_before = all_tasks(&store, a).await;
    let resources_before = store
        .resources(a, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");
    let group_before = store.group(a, group).await.expect("group");
    let keys_before = store.keys().await.expect("keys");
    drop(store);

    let store = open().await;
    assert_eq!(
        store
            .account_by_name("main")
            .await
            .expect("account_by_name"),
        Some(a)
    );
    assert_eq!(store.keys().await.expect("keys"), keys_before);
    assert_eq!(all_tasks(&store, a).await, tasks_before, "tasks survive");
    assert_eq!(
        store
            .resources(a, listing_filter(gz(), KIND), EVERYTHING)
            .await
            .expect("resources"),
        resources_before,
        "resources survive"
    );
    assert_eq!(store.group(a, group).await.expect("group"), group_before);
    let (mut sub, _) = submission(a, gz(), "StopInstances", false, vec![], T0 + 5);
    sub.nonce = resend.clone();
    assert_eq!(
        store.submit(sub).await.expect("resend"),
        Submitted::Repeated {
            answer: resend_answer
        },
        "kept answers survive"
    );
    match store
        .record_nonce(NonceClaim {
            signature: "another request".into(),
            ..resend
        })
        .await
    {
        Err(StoreError::NonceReused { .. }) => {}
        other => panic!("a nonce is still spent after a reopen, got {other:?}"),
    }

    assert_eq!(fenced_completions(&store).await, 1, "the refusal count");
    // A shared store leaves the task that was running to rescue, once its lease (taken
    // at T0 + 2) has expired; an exclusive one requeues it at once.
    let now = if store.shared() {
        let now = T0 + 2 + LEASE_MS + 1;
        store.rescue(now, vec![]).await.expect("rescue");
        now
    } else {
        T0 + 5
    };
    let unfinished = due_by(&recover(&store, now).await, now);
    let expected: Vec<RequestId> = tasks_before
        .items
        .iter()
        .rev()
        .filter(|t| !t.state.is_final())
        .map(|t| t.id)
        .collect();
    assert_eq!(unfinished, expected, "recovery after a reopen");
    assert_eq!(
        unfinished.len(),
        3,
        "two stops and one more: {unfinished:?}"
    );
    assert_eq!(
        must_task(&store, a, tasks[0]).await.state,
        TaskState::Queued,
        "the task that was running is queued again"
    );
    let second_claim = claim(&store, tasks[0], now + 1).await;
    assert!(
        second_claim.fence > first_claim.fence,
        "fences keep growing across a reopen: {} then {}",
        first_claim.fence,
        second_claim.fence
    );

    drop(store);

    for round in 1..=2 {
        let store = open().await;
        let highest = *used.iter().next_back().expect("IDs");
        let (sub, _) = submission(
            a,
            gz(),
            "RunInstances",
            true,
            (0..3)
                .map(|k| {
                    creating(
                        new_resource(&ins(100 * round + k), KIND, "PENDING", json!({})),
                        Effect::default(),
                    )
                })
                .collect(),
            T0 + 10,
        );
        let report = submit_new(&store, sub).await;
        let fresh: Vec<RequestId> = report.group.into_iter().chain(report.accepted()).collect();
        assert_eq!(fresh.len(), 4, "{report:?}");
        for id in &fresh {
            assert!(
                *id > highest,
                "round {round}: new ID {id} is not above {highest}, the highest used before"
            );
        }
        used.extend(fresh);
    }
}

// ---------------------------------------------------------------------------------------
// leases and fencing
// ---------------------------------------------------------------------------------------

/// Every claim draws a fence larger than all before it: across tasks (in claim order,
/// not ID order) and for the same task claimed again after a retry, a release or a
/// rescue. The task's record shows its latest fence.
pub async fn fences_grow_with_every_claim(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=3 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let mut tasks = Vec::new();
    for n in 1..=3 {
        tasks.push(start_task(store, a, &ins(n), "StopInstances", stop_effect(), T0 + 1).await);
    }
    let [t1, t2, t3] = tasks[..] else {
        unreachable!("three tasks")
    };
    let mut claims = vec![
        claim(store, t3, T0 + 10).await,
        claim(store, t1, T0 + 11).await,
        claim(store, t2, T0 + 12).await,
    ];
    let retry = TaskOutcome::Retry {
        error: fault(),
        not_before: T0 + 20,
    };
    complete(store, &claims[1], retry, T0 + 13).await;
    claims.push(claim(store, t1, T0 + 20).await);
    assert!(release(store, t2, claims[2].fence, T0 + 21).await);
    claims.push(claim(store, t2, T0 + 21).await);
    // Only t3's lease has expired by then.
    let expired = T0 + 10 + LEASE_MS + 1;
    assert_eq!(
        due_by(&rescue(store, expired, vec![]).await, expired),
        vec![t3]
    );
    claims.push(claim(store, t3, expired).await);

    let fences: Vec<Fence> = claims.iter().map(|c| c.fence).collect();
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences in claim order (t3, t1, t2, t1 after a retry, t2 after a release, t3 after \
         a rescue) must grow: {fences:?}"
    );
    for claimed in &claims[3..] {
        let task = claimed.task.id;
        assert_eq!(must_task(store, a, task).await.run.fence, claimed.fence);
    }
}

/// Renewing with the current fence extends the lease and says whether a cancel was
/// requested; an older fence, or a task that is not running, has lost it and the lease
/// does not move.
pub async fn renew_needs_the_current_fence(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let task = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    let lease_expiry = |record: TaskRecord| record.run.lease.map(|l| l.expires_at);
    assert_eq!(
        renew(store, task, 0, T0 + 1_000).await,
        LeaseStatus::Lost,
        "a QUEUED task has no lease"
    );

    let first = claim(store, task, T0 + 10).await;
    let not_canceled = LeaseStatus::Held {
        cancel_requested: false,
    };
    assert_eq!(
        renew(store, task, first.fence, T0 + 100_000).await,
        not_canceled
    );
    assert_eq!(
        lease_expiry(must_task(store, a, task).await),
        Some(T0 + 100_000),
        "the lease was extended"
    );
    assert_eq!(
        renew(store, task, first.fence + 1_000, T0 + 200_000).await,
        LeaseStatus::Lost,
        "a fence never drawn for it"
    );

    assert!(release(store, task, first.fence, T0 + 20).await);
    let second = claim(store, task, T0 + 21).await;
    assert_eq!(
        renew(store, task, first.fence, T0 + 300_000).await,
        LeaseStatus::Lost,
        "the fence of an earlier claim"
    );
    assert_eq!(
        lease_expiry(must_task(store, a, task).await),
        Some(T0 + 21 + LEASE_MS),
        "a lost renewal does not move the lease"
    );
    assert_eq!(
        renew(store, task, second.fence, T0 + 400_000).await,
        not_canceled
    );

    let cancellation = cancel(store, a, task, T0 + 30).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![(task, CancelOutcome::Requested)]
    );
    assert_eq!(
        renew(store, task, second.fence, T0 + 500_000).await,
        LeaseStatus::Held {
            cancel_requested: true
        },
        "the holder learns of the cancel request"
    );
    assert_eq!(
        lease_expiry(must_task(store, a, task).await),
        Some(T0 + 500_000)
    );

    complete(store, &second, success(), T0 + 40).await;
    assert_eq!(
        renew(store, task, second.fence, T0 + 600_000).await,
        LeaseStatus::Lost,
        "a final task has no lease"
    );
}

/// A worker whose task was taken from it (released and claimed again, or rescued after
/// its lease expired) cannot record an outcome: whatever the outcome, the answer is
/// Fenced, nothing changes, and each refusal is counted. The current holder's outcome
/// is recorded.
pub async fn a_stale_fence_cannot_complete(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r1, r2) = (ins(1), ins(2));
    instance(store, a, gz(), &r1, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &r2, "RUNNING", json!({}), T0).await;
    let fenced_before = fenced_completions(store).await;
    let stale_outcomes = || {
        [
            success(),
            TaskOutcome::Failed(fault()),
            TaskOutcome::Retry {
                error: fault(),
                not_before: T0,
            },
            TaskOutcome::Canceled {
                message: "stopped".into(),
            },
        ]
    };

    // Released, then claimed by another worker.
    let released = start_task(store, a, &r1, "StopInstances", stop_effect(), T0 + 1).await;
    let old = claim(store, released, T0 + 10).await;
    assert!(release(store, released, old.fence, T0 + 11).await);
    let holder = claim(store, released, T0 + 12).await;
    // Rescued after its lease expired, then claimed by another worker.
    let rescued = start_task(store, a, &r2, "StopInstances", stop_effect(), T0 + 1).await;
    let expired = claim(store, rescued, T0 + 10).await;
    let later = T0 + 10 + LEASE_MS + 1;
    assert_eq!(
        due_by(&rescue(store, later, vec![]).await, later),
        vec![rescued]
    );
    let rescuer = claim(store, rescued, later).await;

    let mut refusals = 0;
    for (task, id, stale) in [(released, &r1, &old), (rescued, &r2, &expired)] {
        let task_before = must_task(store, a, task).await;
        let res_before = must_resource(store, a, id).await;
        for outcome in stale_outcomes() {
            assert_eq!(
                store
                    .complete(task, stale.fence, outcome.clone(), later + 1)
                    .await
                    .ok(),
                Some(Completion::Fenced),
                "task {task}: {outcome:?} with the stale fence {}",
                stale.fence
            );
            refusals += 1;
            assert_eq!(must_task(store, a, task).await, task_before, "{outcome:?}");
            assert_eq!(must_resource(store, a, id).await, res_before, "{outcome:?}");
        }
    }
    assert_eq!(fenced_completions(store).await, fenced_before + refusals);

    let result = Some(json!({"by": "the holder"}));
    let succeeded = TaskOutcome::Succeeded {
        result: result.clone(),
    };
    assert_eq!(complete(store, &holder, succeeded, later + 2).await, vec![]);
    assert_eq!(
        must_task(store, a, released).await,
        ended_record(holder.task, TaskState::Succeeded, None, result, later + 2)
    );
    assert_eq!(must_resource(store, a, &r1).await.state, state("STOPPED"));
    complete(store, &rescuer, TaskOutcome::Failed(fault()), later + 3).await;
    assert_eq!(
        must_task(store, a, rescued).await,
        ended_record(
            rescuer.task,
            TaskState::Failed,
            Some(fault()),
            None,
            later + 3
        )
    );
    let res = must_resource(store, a, &r2).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
    assert_eq!(
        fenced_completions(store).await,
        fenced_before + refusals,
        "the holders' completions are no refusals"
    );
}

// ---------------------------------------------------------------------------------------
// retries
// ---------------------------------------------------------------------------------------

/// A Retry outcome puts the task back to QUEUED with its backoff and its error visible;
/// it cannot be claimed before the backoff, and its resource stays busy in the
/// transitional state meanwhile. Attempts count across attempts, the start time is the
/// first start, and the last attempt decides the end.
pub async fn retry_requeues_the_task_after_its_backoff(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r1, r2) = (ins(1), ins(2));
    instance(store, a, gz(), &r1, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &r2, "RUNNING", json!({}), T0).await;
    let task = start_task(store, a, &r1, "StopInstances", stop_effect(), T0 + 1).await;
    let first = claim(store, task, T0 + 10).await;
    let flaky = |n: u32| TaskError::operation_failed(format!("flaky on attempt {n}"));
    let backoff = T0 + 5_000;
    let retry = TaskOutcome::Retry {
        error: flaky(1),
        not_before: backoff,
    };
    assert_eq!(
        complete(store, &first, retry, T0 + 20).await,
        vec![runnable(task, backoff)],
        "the task itself runs again, from its backoff"
    );
    let waiting = TaskRecord {
        state: TaskState::Queued,
        error: Some(flaky(1)),
        run: RunInfo {
            next_attempt_at: Some(backoff),
            fence: first.fence,
            ..RunInfo::default()
        },
        ..first.task.clone()
    };
    assert_eq!(must_task(store, a, task).await, waiting, "waiting to retry");
    let res = must_resource(store, a, &r1).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPING"), Some(task)),
        "the resource stays busy, in the transitional state"
    );
    let (sub, _) = submission(
        a,
        gz(),
        "StartInstances",
        false,
        vec![existing(&r1, &[], start_effect())],
        T0 + 30,
    );
    assert_eq!(
        submit_new(store, sub).await.outcomes,
        vec![(
            r1.clone(),
            Err(Rejection::Busy {
                task,
                action: "StopInstances".into()
            })
        )],
        "a task waiting to retry keeps its resource"
    );

    assert!(
        try_claim(store, task, backoff - 1).await.is_none(),
        "not claimable before its backoff"
    );
    assert_eq!(must_task(store, a, task).await, waiting, "unchanged");
    let second = claim(store, task, backoff).await;
    assert_eq!(
        second.task,
        TaskRecord {
            // Whether the last error shows while the next attempt runs is the store's
            // choice.
            error: second.task.error.clone(),
            ..claimed_record(waiting, second.fence, backoff)
        },
        "the second attempt: attempts 2, started at the first start"
    );
    assert_eq!(second.task.attempts, 2);
    assert_eq!(second.task.started_at, Some(T0 + 10));

    let backoff2 = backoff + 10_000;
    let retry = TaskOutcome::Retry {
        error: flaky(2),
        not_before: backoff2,
    };
    complete(store, &second, retry, backoff + 1).await;
    let record = must_task(store, a, task).await;
    assert_eq!(
        (record.error, record.run.next_attempt_at),
        (Some(flaky(2)), Some(backoff2)),
        "the latest error and backoff"
    );
    let third = claim(store, task, backoff2 + 7).await;
    assert_eq!(third.task.attempts, 3);
    let result = Some(json!({"attempt": 3}));
    let succeeded = TaskOutcome::Succeeded {
        result: result.clone(),
    };
    assert_eq!(
        complete(store, &third, succeeded, backoff2 + 8).await,
        vec![]
    );
    assert_eq!(
        must_task(store, a, task).await,
        ended_record(
            TaskRecord {
                error: None,
                ..third.task
            },
            TaskState::Succeeded,
            None,
            result,
            backoff2 + 8
        ),
        "success after retries: no error, three attempts, started at the first start"
    );
    let res = must_resource(store, a, &r1).await;
    assert_eq!((res.state, res.active_task), (state("STOPPED"), None));

    // Retries that end in failure: the last error, the prior state.
    let doomed = start_task(store, a, &r2, "StopInstances", stop_effect(), T0 + 1).await;
    let retry = TaskOutcome::Retry {
        error: flaky(1),
        not_before: T0 + 100,
    };
    finish(store, doomed, retry, T0 + 50).await;
    let last = claim(store, doomed, T0 + 100).await;
    complete(store, &last, TaskOutcome::Failed(flaky(2)), T0 + 110).await;
    let record = must_task(store, a, doomed).await;
    assert_eq!(
        (
            record.state,
            record.attempts,
            record.error,
            record.started_at
        ),
        (TaskState::Failed, 2, Some(flaky(2)), Some(T0 + 50))
    );
    assert_eq!(
        record.run.next_attempt_at, None,
        "a final task has no next attempt"
    );
    let res = must_resource(store, a, &r2).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
}

// ---------------------------------------------------------------------------------------
// rescue, release and recovery
// ---------------------------------------------------------------------------------------

/// Rescue puts back to QUEUED exactly the RUNNING tasks whose lease expired before `now`
/// and that are not in `keep`; they keep their attempts, fence and resource, and can be
/// claimed again at once. A lease is held up to its expiry.
pub async fn rescue_requeues_expired_leases_not_kept(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=5 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let mut tasks = Vec::new();
    for n in 1..=5 {
        tasks.push(start_task(store, a, &ins(n), "StopInstances", stop_effect(), T0 + 1).await);
    }
    let [expired, kept, fresh, done, queued] = tasks[..] else {
        unreachable!("five tasks")
    };
    let expired_claim = claim(store, expired, T0 + 10).await;
    claim(store, kept, T0 + 10).await;
    claim(store, fresh, T0 + 20).await;
    finish(store, done, success(), T0 + 10).await;
    let before: Vec<TaskRecord> = {
        let mut records = Vec::new();
        for task in &tasks {
            records.push(must_task(store, a, *task).await);
        }
        records
    };

    let expiry = T0 + 10 + LEASE_MS;
    assert_eq!(
        rescue(store, expiry, vec![]).await,
        vec![],
        "a lease is held up to its expiry"
    );
    let now = expiry + 5;
    assert_eq!(
        due_by(&rescue(store, now, vec![kept]).await, now),
        vec![expired],
        "only the expired lease that is not kept"
    );
    assert_eq!(
        must_task(store, a, expired).await,
        TaskRecord {
            state: TaskState::Queued,
            run: RunInfo {
                fence: expired_claim.fence,
                ..RunInfo::default()
            },
            ..expired_claim.task.clone()
        },
        "rescued: QUEUED, no lease, attempts and start kept"
    );
    let res = must_resource(store, a, &ins(1)).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPING"), Some(expired)),
        "its resource stays busy with it"
    );
    for (task, record) in tasks.iter().zip(&before).skip(1) {
        assert_eq!(
            &must_task(store, a, *task).await,
            record,
            "task {task} is untouched"
        );
    }
    let again = claim(store, expired, now).await;
    assert_eq!(again.task.attempts, 2);

    assert_eq!(
        due_by(&rescue(store, now, vec![]).await, now),
        vec![kept],
        "no longer kept, the expired lease is rescued"
    );
    assert_eq!(must_task(store, a, fresh).await.state, TaskState::Running);
    assert_eq!(must_task(store, a, queued).await.state, TaskState::Queued);
}

/// A rescued task whose cancel was requested ends CANCELED instead of running again: its
/// resource returns as on failure, and a task waiting behind it gets the resource and
/// is returned by the rescue.
/// A worker that gives back a task whose cancel was requested ends it CANCELED and
/// hands the resource to the task waiting behind it, which it returns to run.
pub async fn a_released_task_with_a_cancel_request_hands_on_its_resource(store: &dyn Store) {
    let a = account(store, "main").await;
    let id = ins(1);
    instance(store, a, gz(), &id, "RUNNING", json!({}), T0).await;
    let stop = start_task(store, a, &id, "StopInstances", stop_effect(), T0 + 1).await;
    let waiting = wait_behind(
        store,
        a,
        &id,
        "RestartInstances",
        &["RUNNING"],
        reboot_effect(),
        T0 + 2,
    )
    .await;
    let held = claim(store, stop, T0 + 10).await;
    cancel(store, a, stop, T0 + 11).await;
    let runnable = released(store, stop, held.fence, T0 + 12)
        .await
        .expect("the fence held the task");
    assert_eq!(due_by(&runnable, T0 + 12), vec![waiting]);
    assert_eq!(must_task(store, a, stop).await.state, TaskState::Canceled);
    let resource = must_resource(store, a, &id).await;
    assert_eq!(
        (resource.state, resource.active_task),
        (state("REBOOTING"), Some(waiting))
    );
}

pub async fn a_rescued_task_with_a_cancel_request_ends_canceled(store: &dyn Store) {
    let a = account(store, "main").await;
    let (alone, shared) = (ins(1), ins(2));
    instance(store, a, gz(), &alone, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &shared, "RUNNING", json!({}), T0).await;
    let reset = effect(Some("REINSTALLING"), Some("RUNNING"), Some("BROKEN"));
    let t1 = start_task(store, a, &alone, "ResetInstances", reset, T0 + 1).await;
    let t2 = start_task(store, a, &shared, "StopInstances", stop_effect(), T0 + 1).await;
    let waiting = wait_behind(
        store,
        a,
        &shared,
        "RestartInstances",
        &["RUNNING"],
        reboot_effect(),
        T0 + 2,
    )
    .await;
    for task in [t1, t2] {
        claim(store, task, T0 + 10).await;
        let cancellation = cancel(store, a, task, T0 + 11).await;
        assert_eq!(
            cancel_outcomes(&cancellation),
            vec![(task, CancelOutcome::Requested)]
        );
    }
    let now = T0 + 10 + LEASE_MS + 1;
    assert_eq!(
        due_by(&rescue(store, now, vec![]).await, now),
        vec![waiting],
        "the canceled tasks do not run again; the one behind one of them does"
    );
    for (task, id, expected) in [(t1, &alone, "BROKEN"), (t2, &shared, "REBOOTING")] {
        let record = must_task(store, a, task).await;
        assert_eq!(
            (record.state, record.finished_at, record.run.lease),
            (TaskState::Canceled, Some(now), None),
            "task {task}"
        );
        assert_eq!(
            record.error.map(|e| e.code),
            Some(TaskError::OPERATION_FAILED)
        );
        let res = must_resource(store, a, id).await;
        assert_eq!(res.state, state(expected), "{id}");
    }
    assert_eq!(must_resource(store, a, &alone).await.active_task, None);
    assert_eq!(
        must_resource(store, a, &shared).await.active_task,
        Some(waiting)
    );
    claim(store, waiting, now).await;
}

/// Release gives a RUNNING task back to the queue, runnable at once, with its lease
/// cleared (attempts and start kept); only the current fence can release, and only a
/// RUNNING task. A task whose cancel was requested ends CANCELED instead.
pub async fn release_puts_a_running_task_back(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let task = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    assert!(!release(store, task, 0, T0 + 2).await, "a QUEUED task");
    let first = claim(store, task, T0 + 10).await;
    assert!(
        !release(store, task, first.fence + 1_000, T0 + 11).await,
        "a wrong fence"
    );
    assert_eq!(must_task(store, a, task).await, first.task, "unchanged");

    assert!(release(store, task, first.fence, T0 + 12).await);
    let released = TaskRecord {
        state: TaskState::Queued,
        run: RunInfo {
            fence: first.fence,
            ..RunInfo::default()
        },
        ..first.task.clone()
    };
    assert_eq!(must_task(store, a, task).await, released);
    let res = must_resource(store, a, &r).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPING"), Some(task))
    );
    assert!(
        !release(store, task, first.fence, T0 + 13).await,
        "released already"
    );

    let second = claim(store, task, T0 + 12).await;
    assert_eq!(second.task, claimed_record(released, second.fence, T0 + 12));
    assert!(
        !release(store, task, first.fence, T0 + 14).await,
        "the earlier claim's fence"
    );
    assert_eq!(must_task(store, a, task).await.state, TaskState::Running);

    cancel(store, a, task, T0 + 15).await;
    assert!(release(store, task, second.fence, T0 + 16).await);
    let record = must_task(store, a, task).await;
    assert_eq!(
        (record.state, record.finished_at),
        (TaskState::Canceled, Some(T0 + 16)),
        "released after a cancel request: it ends"
    );
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
}

/// Recovery returns the heads of the resource queues only (not the tasks waiting behind
/// them), in ID order, each with the time it may run from: a task waiting to retry keeps
/// its backoff.
pub async fn recover_returns_only_the_heads_of_resource_queues(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=3 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let queued = start_task(store, a, &ins(1), "StopInstances", stop_effect(), T0 + 1).await;
    let behind_queued = wait_behind(
        store,
        a,
        &ins(1),
        "StartInstances",
        &[],
        start_effect(),
        T0 + 2,
    )
    .await;
    let running = start_task(store, a, &ins(2), "StopInstances", stop_effect(), T0 + 3).await;
    let behind_running = wait_behind(
        store,
        a,
        &ins(2),
        "StartInstances",
        &[],
        start_effect(),
        T0 + 4,
    )
    .await;
    let retrying = start_task(store, a, &ins(3), "StopInstances", stop_effect(), T0 + 5).await;
    claim(store, running, T0 + 10).await;
    let backoff = T0 + 50_000;
    let retry = TaskOutcome::Retry {
        error: fault(),
        not_before: backoff,
    };
    finish(store, retrying, retry, T0 + 11).await;

    let now = T0 + 100;
    let recovered = recover(store, now).await;
    // A shared store leaves the running task to rescue (other nodes may run it).
    let heads = if store.shared() {
        vec![queued, retrying]
    } else {
        vec![queued, running, retrying]
    };
    assert_eq!(
        recovered.iter().map(|r| r.task).collect::<Vec<_>>(),
        heads,
        "the heads, in ID order: {recovered:?}"
    );
    let due = recovered.len() - 1;
    assert_eq!(due_by(&recovered[..due], now), heads[..due].to_vec());
    assert_eq!(
        recovered[due],
        runnable(retrying, backoff),
        "its backoff is kept"
    );
    let ready = store.ready(100).await.expect("ready");
    assert_eq!(ready, recovered, "ready lists the same heads");
    let first = store.ready(1).await.expect("ready");
    assert_eq!(
        first,
        recovered[..1].to_vec(),
        "at most the limit, oldest first"
    );
    for (task, ahead) in [(behind_queued, queued), (behind_running, running)] {
        let record = must_task(store, a, task).await;
        assert_eq!(
            (record.state, record.run.blocked_by),
            (TaskState::Queued, Some((ahead, 1))),
            "task {task} still waits"
        );
    }
    let expected = if store.shared() {
        TaskState::Running
    } else {
        TaskState::Queued
    };
    assert_eq!(must_task(store, a, running).await.state, expected);
}

/// A completion racing a rescue of the same expired lease: exactly one wins. Either the
/// outcome is recorded and the rescue leaves the task alone, or the task is requeued
/// and the late completion is refused as fenced (and counted).
pub async fn a_completion_racing_a_rescue_counts_once(store: Arc<dyn Store>) {
    const TASKS: u32 = 20;
    let a = account(store.as_ref(), "main").await;
    let tasks = create_pending(store.as_ref(), a, TASKS, |_| Effect::default()).await;
    let mut claims = Vec::new();
    for task in &tasks {
        claims.push(claim(store.as_ref(), *task, T0 + 1).await);
    }
    let fenced_before = fenced_completions(store.as_ref()).await;
    let expired = T0 + 1 + LEASE_MS + 1;
    let rescuer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.rescue(expired, vec![]).await })
    };
    let completions: Vec<_> = claims
        .into_iter()
        .map(|claimed| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let task = claimed.task.id;
                (
                    task,
                    store
                        .complete(task, claimed.fence, success(), expired)
                        .await,
                )
            })
        })
        .collect();
    let rescued: BTreeSet<RequestId> = rescuer
        .await
        .expect("the rescuer panicked")
        .expect("rescue")
        .into_iter()
        .map(|r| r.task)
        .collect();
    let mut refused = 0;
    for handle in completions {
        let (task, completion) = handle.await.expect("a completing task panicked");
        let record = must_task(store.as_ref(), a, task).await;
        match completion.expect("complete") {
            Completion::Recorded { .. } => {
                assert!(!rescued.contains(&task), "task {task} recorded and rescued");
                assert_eq!(record.state, TaskState::Succeeded, "task {task}");
            }
            Completion::Fenced => {
                assert!(
                    rescued.contains(&task),
                    "task {task} fenced but not rescued"
                );
                assert_eq!(record.state, TaskState::Queued, "task {task}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        fenced_completions(store.as_ref()).await,
        fenced_before + refused
    );
}

// ---------------------------------------------------------------------------------------
// per-resource queues
// ---------------------------------------------------------------------------------------

/// With OnBusy::Queue a task on a busy resource is accepted but not runnable: it shows
/// the task just ahead of it and its position, cannot be claimed, and its state
/// precondition is not checked yet. On an idle resource it behaves as usual (runnable
/// at once, or refused in a wrong state); OnBusy::Refuse still refuses a busy one.
pub async fn queued_tasks_wait_behind_a_busy_resource(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r, idle, stopped) = (ins(1), ins(2), ins(3));
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &idle, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &stopped, "STOPPED", json!({}), T0).await;
    let (head, head_runnable) = submit_one(
        store,
        a,
        "StopInstances",
        existing(&r, &["RUNNING"], stop_effect()),
        T0 + 1,
    )
    .await;
    assert!(head_runnable, "the first task holds the idle resource");
    let first = wait_behind(
        store,
        a,
        &r,
        "StartInstances",
        &["STOPPED"],
        start_effect(),
        T0 + 2,
    )
    .await;
    // RUNNING is not the resource's state now (STOPPING): checked only at its turn.
    let second = wait_behind(
        store,
        a,
        &r,
        "RestartInstances",
        &["RUNNING"],
        reboot_effect(),
        T0 + 3,
    )
    .await;
    let waiting = |task, action, effect, now, ahead| TaskRecord {
        run: RunInfo {
            blocked_by: Some(ahead),
            ..RunInfo::default()
        },
        ..queued_record(task, a, None, action, &r, &effect, now)
    };
    let expected_first = waiting(first, "StartInstances", start_effect(), T0 + 2, (head, 1));
    let expected_second = waiting(
        second,
        "RestartInstances",
        reboot_effect(),
        T0 + 3,
        (first, 2),
    );
    assert_eq!(must_task(store, a, first).await, expected_first);
    assert_eq!(must_task(store, a, second).await, expected_second);
    assert_eq!(must_task(store, a, head).await.run.blocked_by, None);
    let res = must_resource(store, a, &r).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPING"), Some(head)),
        "the head's transitional state; busy with the head"
    );
    for task in [first, second] {
        assert!(
            try_claim(store, task, T0 + 4).await.is_none(),
            "task {task} waits: not claimable"
        );
    }
    claim(store, head, T0 + 5).await;
    assert_eq!(
        must_task(store, a, first).await,
        expected_first,
        "still behind the running head"
    );
    assert_eq!(must_task(store, a, second).await, expected_second);

    let (sub, _) = submission(
        a,
        gz(),
        "StartInstances",
        false,
        vec![existing(&r, &[], start_effect())],
        T0 + 6,
    );
    assert_eq!(
        submit_new(store, sub).await.outcomes,
        vec![(
            r.clone(),
            Err(Rejection::Busy {
                task: head,
                action: "StopInstances".into()
            })
        )],
        "OnBusy::Refuse still refuses, naming the head"
    );

    let (on_idle, on_idle_runnable) = submit_one(
        store,
        a,
        "StopInstances",
        queued_behind(existing(&idle, &["RUNNING"], stop_effect())),
        T0 + 7,
    )
    .await;
    assert!(on_idle_runnable, "nothing to wait for on an idle resource");
    assert_eq!(must_task(store, a, on_idle).await.run.blocked_by, None);
    let res = must_resource(store, a, &idle).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPING"), Some(on_idle))
    );
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        false,
        vec![
            queued_behind(existing(&stopped, &["RUNNING"], stop_effect())),
            queued_behind(existing(&ins(9), &["RUNNING"], stop_effect())),
        ],
        T0 + 8,
    );
    assert_eq!(
        submit_new(store, sub).await.outcomes,
        vec![
            (
                stopped.clone(),
                Err(Rejection::WrongState {
                    state: state("STOPPED"),
                    allowed: vec![state("RUNNING")],
                })
            ),
            (ins(9), Err(Rejection::NotFound)),
        ],
        "an idle resource checks the precondition at once"
    );
}

/// When the head succeeds, the next waiting task gets the resource: the completion
/// returns it as runnable, the resource shows its transitional state, and the state it
/// returns to on failure is the state at its promotion (not at its submission).
pub async fn the_queue_moves_on_when_the_head_succeeds(store: &dyn Store) {
    let a = account(store, "main").await;
    let (r, other) = (ins(1), ins(2));
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &other, "RUNNING", json!({}), T0).await;
    let head = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    let start = wait_behind(
        store,
        a,
        &r,
        "StartInstances",
        &["STOPPED"],
        start_effect(),
        T0 + 2,
    )
    .await;
    let restart = wait_behind(
        store,
        a,
        &r,
        "RestartInstances",
        &["RUNNING"],
        reboot_effect(),
        T0 + 3,
    )
    .await;

    for (done, next, shows, now) in [
        (head, start, "STARTING", T0 + 10),
        (start, restart, "REBOOTING", T0 + 20),
    ] {
        assert_eq!(
            due_by(&finish(store, done, success(), now).await, now),
            vec![next],
            "task {done} succeeded: {next} is next"
        );
        let res = must_resource(store, a, &r).await;
        assert_eq!(
            (res.state, res.active_task),
            (state(shows), Some(next)),
            "{next} holds the resource"
        );
        assert_eq!(must_task(store, a, next).await.run.blocked_by, None);
    }
    assert_eq!(
        must_task(store, a, restart).await.state,
        TaskState::Queued,
        "promoted, not started"
    );
    assert_eq!(finish(store, restart, success(), T0 + 30).await, vec![]);
    let res = must_resource(store, a, &r).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("RUNNING"), None),
        "back to the state it had when the restart was promoted"
    );

    let stop = start_task(store, a, &other, "StopInstances", stop_effect(), T0 + 1).await;
    let start = wait_behind(
        store,
        a,
        &other,
        "StartInstances",
        &["STOPPED"],
        start_effect(),
        T0 + 2,
    )
    .await;
    assert_eq!(
        due_by(&finish(store, stop, success(), T0 + 10).await, T0 + 10),
        vec![start]
    );
    assert_eq!(
        finish(store, start, TaskOutcome::Failed(fault()), T0 + 11).await,
        vec![]
    );
    let res = must_resource(store, a, &other).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("STOPPED"), None),
        "a failed promoted task returns to the state at its promotion, not STOPPING"
    );
}

/// When the head fails, every task waiting behind it ends CANCELED, saying which task
/// ahead failed; the resource returns as on the head's failure and is free.
pub async fn a_failed_head_cancels_the_tasks_waiting_behind_it(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let head = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    let behind = [
        (
            wait_behind(store, a, &r, "StartInstances", &[], start_effect(), T0 + 2).await,
            "StartInstances",
            start_effect(),
            T0 + 2,
        ),
        (
            wait_behind(
                store,
                a,
                &r,
                "RestartInstances",
                &[],
                reboot_effect(),
                T0 + 3,
            )
            .await,
            "RestartInstances",
            reboot_effect(),
            T0 + 3,
        ),
    ];
    assert_eq!(
        finish(store, head, TaskOutcome::Failed(fault()), T0 + 10).await,
        vec![],
        "nothing runs after a failure"
    );
    for (task, action, effect, created) in behind {
        assert_eq!(
            must_task(store, a, task).await,
            TaskRecord {
                state: TaskState::Canceled,
                finished_at: Some(T0 + 10),
                error: Some(canceled_behind(head, "StopInstances", &r)),
                ..queued_record(task, a, None, action, &r, &effect, created)
            },
            "{action} behind the failed head"
        );
        assert!(try_claim(store, task, T0 + 11).await.is_none());
    }
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
    start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 12).await;
}

/// A waiting task whose precondition does not hold when it reaches the head of the
/// queue ends FAILED, naming the resource's state, and the tasks behind it are canceled
/// because it failed.
pub async fn a_precondition_failing_at_promotion_fails_the_task(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let head = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    let restart = wait_behind(
        store,
        a,
        &r,
        "RestartInstances",
        &["RUNNING"],
        reboot_effect(),
        T0 + 2,
    )
    .await;
    let start = wait_behind(store, a, &r, "StartInstances", &[], start_effect(), T0 + 3).await;
    assert_eq!(
        finish(store, head, success(), T0 + 10).await,
        vec![],
        "the next task cannot run on a STOPPED instance"
    );
    let failed = must_task(store, a, restart).await;
    assert_eq!(
        (failed.state, failed.finished_at, failed.attempts),
        (TaskState::Failed, Some(T0 + 10), 0)
    );
    let error = failed.error.expect("a failed task has an error");
    assert_eq!(error.code, TaskError::OPERATION_FAILED);
    assert!(
        error.message.contains("STOPPED"),
        "the message names the state: {error:?}"
    );
    let canceled = must_task(store, a, start).await;
    assert_eq!(
        (canceled.state, canceled.error),
        (
            TaskState::Canceled,
            Some(canceled_behind(restart, "RestartInstances", &r))
        )
    );
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("STOPPED"), None));
}

// ---------------------------------------------------------------------------------------
// cancellation
// ---------------------------------------------------------------------------------------

/// Canceling a task that has not started ends it CANCELED at once (status 1 for the
/// legacy API) with a message that says so; its resource returns as on failure and is
/// free, or goes to the next task waiting for it, which the cancellation returns.
pub async fn cancel_before_start_ends_the_task(store: &dyn Store) {
    let a = account(store, "main").await;
    let (alone, shared) = (ins(1), ins(2));
    instance(store, a, gz(), &alone, "RUNNING", json!({}), T0).await;
    instance(store, a, gz(), &shared, "RUNNING", json!({}), T0).await;
    let lone = start_task(store, a, &alone, "StopInstances", stop_effect(), T0 + 1).await;
    let reset = effect(Some("REINSTALLING"), Some("RUNNING"), Some("BROKEN"));
    let head = start_task(store, a, &shared, "ResetInstances", reset.clone(), T0 + 1).await;
    let next = wait_behind(
        store,
        a,
        &shared,
        "RestartInstances",
        &["BROKEN"],
        reboot_effect(),
        T0 + 2,
    )
    .await;

    let cancellation = cancel(store, a, lone, T0 + 10).await;
    let expected = TaskRecord {
        state: TaskState::Canceled,
        finished_at: Some(T0 + 10),
        error: Some(canceled_before_start()),
        ..queued_record(
            lone,
            a,
            None,
            "StopInstances",
            &alone,
            &stop_effect(),
            T0 + 1,
        )
    };
    assert_eq!(
        cancellation,
        Cancellation {
            tasks: vec![(expected.clone(), CancelOutcome::Canceled)],
            runnable: vec![],
        }
    );
    assert_eq!(must_task(store, a, lone).await, expected);
    assert_eq!(expected.state.legacy_status(), 1);
    let res = must_resource(store, a, &alone).await;
    assert_eq!(
        (res.state, res.active_task, res.last_operation),
        (
            state("RUNNING"),
            None,
            Some(LastOperation {
                task: lone,
                action: "StopInstances".into(),
                state: TaskState::Canceled,
                error: Some(canceled_before_start()),
            })
        )
    );
    assert!(try_claim(store, lone, T0 + 11).await.is_none());

    let cancellation = cancel(store, a, head, T0 + 20).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![(head, CancelOutcome::Canceled)]
    );
    assert_eq!(
        due_by(&cancellation.runnable, T0 + 20),
        vec![next],
        "the task behind the canceled one is next"
    );
    let res = must_resource(store, a, &shared).await;
    assert_eq!(
        (res.state, res.active_task),
        (state("REBOOTING"), Some(next)),
        "promoted against the failure state BROKEN"
    );
    claim(store, next, T0 + 21).await;
}

/// Canceling a RUNNING task only asks: the flag shows in its record and in renew, and
/// the task reaches its own end. Success is still SUCCESS; an executor that stops on
/// the request ends it CANCELED with its message (the resource as on failure); a
/// requested retry ends it CANCELED instead of running again.
pub async fn cancel_while_running_is_a_request(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=3 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let mut claims = Vec::new();
    for n in 1..=3 {
        let task = start_task(store, a, &ins(n), "StopInstances", stop_effect(), T0 + 1).await;
        claims.push(claim(store, task, T0 + 10).await);
    }
    for claimed in &claims {
        let task = claimed.task.id;
        let requested = TaskRecord {
            run: RunInfo {
                cancel_requested: true,
                ..claimed.task.run.clone()
            },
            ..claimed.task.clone()
        };
        for attempt in 1..=2 {
            assert_eq!(
                cancel(store, a, task, T0 + 20).await,
                Cancellation {
                    tasks: vec![(requested.clone(), CancelOutcome::Requested)],
                    runnable: vec![],
                },
                "request {attempt} for task {task}"
            );
        }
        assert_eq!(must_task(store, a, task).await, requested);
        assert_eq!(
            renew(store, task, claimed.fence, T0 + 20 + LEASE_MS).await,
            LeaseStatus::Held {
                cancel_requested: true
            }
        );
    }

    let [finishes, stops, retries] = &claims[..] else {
        unreachable!("three claims")
    };
    complete(store, finishes, success(), T0 + 30).await;
    let record = must_task(store, a, finishes.task.id).await;
    assert_eq!(
        (record.state, record.error),
        (TaskState::Succeeded, None),
        "it reached its own end"
    );
    assert_eq!(
        must_resource(store, a, &ins(1)).await.state,
        state("STOPPED")
    );

    let message = "stopped on request after 2 of 5 steps";
    let canceled = TaskOutcome::Canceled {
        message: message.into(),
    };
    assert_eq!(complete(store, stops, canceled, T0 + 31).await, vec![]);
    let record = must_task(store, a, stops.task.id).await;
    assert_eq!(
        (record.state, record.error, record.finished_at),
        (
            TaskState::Canceled,
            Some(TaskError::operation_failed(message)),
            Some(T0 + 31)
        )
    );
    let res = must_resource(store, a, &ins(2)).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));

    let retry = TaskOutcome::Retry {
        error: fault(),
        not_before: T0 + 40,
    };
    assert_eq!(
        complete(store, retries, retry, T0 + 32).await,
        vec![],
        "a canceled task does not run again"
    );
    let record = must_task(store, a, retries.task.id).await;
    assert_eq!(record.state, TaskState::Canceled);
    let res = must_resource(store, a, &ins(3)).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
}

/// Canceling a final task is too late and changes nothing.
pub async fn cancel_of_a_final_task_is_too_late(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=3 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let succeeded = start_task(store, a, &ins(1), "StopInstances", stop_effect(), T0 + 1).await;
    finish(store, succeeded, success(), T0 + 2).await;
    let failed = start_task(store, a, &ins(2), "StopInstances", stop_effect(), T0 + 1).await;
    finish(store, failed, TaskOutcome::Failed(fault()), T0 + 2).await;
    let canceled = start_task(store, a, &ins(3), "StopInstances", stop_effect(), T0 + 1).await;
    cancel(store, a, canceled, T0 + 2).await;
    for task in [succeeded, failed, canceled] {
        let before = must_task(store, a, task).await;
        let res_before = must_resource(store, a, &before.resource).await;
        assert_eq!(
            cancel(store, a, task, T0 + 10).await,
            Cancellation {
                tasks: vec![(before.clone(), CancelOutcome::TooLate)],
                runnable: vec![],
            },
            "task {task} is {}",
            before.state
        );
        assert_eq!(must_task(store, a, task).await, before);
        assert_eq!(must_resource(store, a, &before.resource).await, res_before);
    }
}

/// A group's ID cancels each of its tasks, in task order, each as its state allows; a
/// group whose tasks queue on one resource is canceled whole, leaving the resource free.
pub async fn cancel_of_a_group_cancels_each_task(store: &dyn Store) {
    let a = account(store, "main").await;
    for n in 1..=4 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        (1..=3)
            .map(|n| existing(&ins(n), &["RUNNING"], stop_effect()))
            .collect(),
        T0 + 1,
    );
    let report = submit_new(store, sub).await;
    let group = report.group.expect("a group");
    let [done, running, queued] = report.accepted().collect::<Vec<_>>()[..] else {
        panic!("three tasks accepted: {report:?}")
    };
    finish(store, done, success(), T0 + 2).await;
    claim(store, running, T0 + 3).await;

    let cancellation = cancel(store, a, group, T0 + 10).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![
            (done, CancelOutcome::TooLate),
            (running, CancelOutcome::Requested),
            (queued, CancelOutcome::Canceled),
        ]
    );
    assert_eq!(cancellation.runnable, vec![]);
    let members = store
        .group(a, group)
        .await
        .expect("group")
        .expect("the group exists");
    for ((reported, _), record) in cancellation.tasks.iter().zip(&members.tasks) {
        assert_eq!(
            reported, record,
            "the cancellation reports the task as it is now"
        );
    }
    assert_eq!(
        members.tasks.iter().map(|t| t.state).collect::<Vec<_>>(),
        vec![
            TaskState::Succeeded,
            TaskState::Running,
            TaskState::Canceled
        ]
    );

    // A chain on one resource: the second waits for the first.
    let r = ins(4);
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![
            existing(&r, &["RUNNING"], stop_effect()),
            queued_behind(existing(&r, &["STOPPED"], start_effect())),
        ],
        T0 + 20,
    );
    let report = submit_new(store, sub).await;
    let chain = report.group.expect("a group");
    let [first, second] = report.accepted().collect::<Vec<_>>()[..] else {
        panic!("two tasks accepted: {report:?}")
    };
    assert_eq!(
        must_task(store, a, second).await.run.blocked_by,
        Some((first, 1))
    );
    let cancellation = cancel(store, a, chain, T0 + 21).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![
            (first, CancelOutcome::Canceled),
            (second, CancelOutcome::Canceled)
        ]
    );
    assert_eq!(
        cancellation.runnable,
        vec![],
        "nothing of the canceled chain runs"
    );
    for task in [first, second] {
        assert_eq!(must_task(store, a, task).await.state, TaskState::Canceled);
    }
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("RUNNING"), None));
}

/// Cancel finds only the account's own tasks and groups: an unknown ID or another
/// account's is None, and changes nothing.
pub async fn cancel_finds_only_the_accounts_tasks(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    instance(store, b, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let (sub, _) = submission(
        b,
        gz(),
        "StopInstances",
        true,
        vec![existing(&ins(1), &[], stop_effect())],
        T0 + 1,
    );
    let report = submit_new(store, sub).await;
    let (group, task) = (report.group.expect("a group"), only_task(&report));
    let before = all_tasks(store, b).await;
    let unknown = RequestId::new(task.get() + 1_000).expect("an ID");
    for id in [task, group, unknown] {
        assert_eq!(
            store.cancel(a, id, T0 + 2).await.expect("cancel"),
            None,
            "{id} is not account a's"
        );
    }
    assert_eq!(all_tasks(store, b).await, before);
    assert_eq!(
        must_resource(store, b, &ins(1)).await.active_task,
        Some(task)
    );
}

/// Canceling a task that waits behind another leaves the head and the resource alone;
/// the tasks behind it move up.
pub async fn cancel_of_a_waiting_task_leaves_the_head_alone(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    let head = start_task(store, a, &r, "StopInstances", stop_effect(), T0 + 1).await;
    let first = wait_behind(store, a, &r, "StartInstances", &[], start_effect(), T0 + 2).await;
    let second = wait_behind(
        store,
        a,
        &r,
        "RestartInstances",
        &[],
        reboot_effect(),
        T0 + 3,
    )
    .await;
    let running = claim(store, head, T0 + 4).await;
    let res_before = must_resource(store, a, &r).await;

    let cancellation = cancel(store, a, first, T0 + 5).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![(first, CancelOutcome::Canceled)]
    );
    assert_eq!(cancellation.runnable, vec![]);
    let record = must_task(store, a, first).await;
    assert_eq!(
        (record.state, record.error),
        (TaskState::Canceled, Some(canceled_before_start()))
    );
    assert_eq!(
        must_task(store, a, head).await,
        running.task,
        "the head runs on"
    );
    assert_eq!(
        must_resource(store, a, &r).await,
        res_before,
        "the resource is untouched"
    );
    assert_eq!(
        must_task(store, a, second).await.run.blocked_by,
        Some((head, 1)),
        "the task behind moved up"
    );
    assert_eq!(
        due_by(&complete(store, &running, success(), T0 + 6).await, T0 + 6),
        vec![second]
    );
    assert_eq!(must_task(store, a, first).await.state, TaskState::Canceled);
}

/// A creation canceled before it started leaves its resource in the effect's failure
/// state, free.
pub async fn a_canceled_creation_leaves_the_failure_state(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        false,
        vec![creating(
            new_resource(&r, KIND, "PENDING", json!({})),
            effect(None, Some("RUNNING"), Some("LAUNCH_FAILED")),
        )],
        T0,
    );
    let task = only_task(&submit_new(store, sub).await);
    let cancellation = cancel(store, a, task, T0 + 1).await;
    assert_eq!(
        cancel_outcomes(&cancellation),
        vec![(task, CancelOutcome::Canceled)]
    );
    let res = must_resource(store, a, &r).await;
    assert_eq!((res.state, res.active_task), (state("LAUNCH_FAILED"), None));
}

// ---------------------------------------------------------------------------------------
// retention
// ---------------------------------------------------------------------------------------

/// Purge deletes final tasks that finished before the cutoff, a batch at a time (it says
/// when a batch was full), never an unfinished task or a newer one; a group goes with
/// its last task. `purged` then answers true for every deleted ID, and false for IDs
/// above the highest one deleted and for other accounts.
pub async fn purge_deletes_finished_tasks_in_batches(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        (1..=4)
            .map(|n| {
                creating(
                    new_resource(&ins(n), KIND, "RUNNING", json!({})),
                    Effect::default(),
                )
            })
            .collect(),
        T0,
    );
    let report = submit_new(store, sub).await;
    let created_group = report.group.expect("a group");
    let creations: Vec<RequestId> = report.accepted().collect();
    for task in &creations {
        finish(store, *task, success(), T0 + 10).await;
    }
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![
            existing(&ins(1), &[], stop_effect()),
            existing(&ins(2), &[], stop_effect()),
        ],
        T0 + 20,
    );
    let report = submit_new(store, sub).await;
    let half_done_group = report.group.expect("a group");
    let [stopped, still_queued] = report.accepted().collect::<Vec<_>>()[..] else {
        panic!("two tasks accepted: {report:?}")
    };
    finish(store, stopped, success(), T0 + 30).await;
    let still_running =
        start_task(store, a, &ins(4), "StopInstances", stop_effect(), T0 + 40).await;
    claim(store, still_running, T0 + 41).await;
    let newer = instance(store, a, gz(), &ins(5), "RUNNING", json!({}), T0 + 1_000).await;
    let theirs = instance(store, b, gz(), &ins(6), "RUNNING", json!({}), T0 + 1_000).await;
    let half_done_before = store
        .group(a, half_done_group)
        .await
        .expect("group")
        .expect("the group exists");

    let retention = Retention {
        tasks_finished_before: T0 + 100,
        ..retain_everything(2)
    };
    let reports = purge_all(store, retention.clone(), 10).await;
    let tasks_per_batch: Vec<(u64, bool)> = reports.iter().map(|r| (r.tasks, r.more)).collect();
    assert_eq!(
        tasks_per_batch,
        vec![(2, true), (2, true), (1, false)],
        "five old final tasks in batches of two: {reports:?}"
    );
    let groups: u64 = reports.iter().map(|r| r.groups).sum();
    assert_eq!(groups, 1, "only the group left empty: {reports:?}");
    for r in &reports {
        assert_eq!((r.nonces, r.tokens, r.resources), (0, 0, 0), "{r:?}");
    }
    assert_eq!(
        store.purge(retention).await.expect("purge"),
        PurgeReport::default(),
        "nothing more to delete"
    );

    let deleted: Vec<RequestId> = creations.iter().copied().chain([stopped]).collect();
    for task in &deleted {
        assert_eq!(
            store.task(a, *task).await.expect("task"),
            None,
            "task {task}"
        );
    }
    assert_eq!(store.group(a, created_group).await.expect("group"), None);
    let half_done = store
        .group(a, half_done_group)
        .await
        .expect("group")
        .expect("a group with an unfinished task stays");
    assert_eq!(
        half_done,
        GroupRecord {
            tasks: vec![half_done_before.tasks[1].clone()],
            ..half_done_before
        },
        "it keeps its unfinished task"
    );
    for (task, expected) in [
        (still_queued, TaskState::Queued),
        (still_running, TaskState::Running),
        (newer, TaskState::Succeeded),
    ] {
        assert_eq!(
            must_task(store, a, task).await.state,
            expected,
            "task {task}"
        );
    }
    assert_eq!(
        must_task(store, b, theirs).await.state,
        TaskState::Succeeded
    );

    let purged = |account: AccountId, id: RequestId| async move {
        store.purged(account, id).await.expect("purged")
    };
    for id in deleted.iter().copied().chain([created_group]) {
        assert!(purged(a, id).await, "{id} was purged");
        assert!(!purged(b, id).await, "{id} is not account b's");
    }
    for id in [still_queued, still_running, newer] {
        assert!(!purged(a, id).await, "{id} is above every purged ID");
    }
    assert!(!purged(b, theirs).await, "account b purged nothing");
    let counts = tasks_by_state(store).await;
    let expected: HashMap<TaskState, u64> = [
        (TaskState::Queued, 1),
        (TaskState::Running, 1),
        (TaskState::Succeeded, 2),
    ]
    .into();
    assert_eq!(counts, expected, "the tasks left");
}

/// Purge deletes nonces whose request expired before the cutoff (the nonce is then
/// fresh again) and client tokens first used before it (the token is then new), in
/// batches; newer ones stay.
pub async fn purge_deletes_expired_nonces_and_old_client_tokens(store: &dyn Store) {
    let a = account(store, "main").await;
    let me = secret();
    let expiring = |nonce: u64, signature: &str, expires_at: UnixMillis| NonceClaim {
        expires_at,
        ..nonce_claim(&me, nonce, signature)
    };
    for (nonce, expires_at) in [(1, T0 + 10), (2, T0 + 20), (3, T0 + 30), (4, T0 + 1_000)] {
        let claim = expiring(nonce, "first", expires_at);
        assert_eq!(
            store.record_nonce(claim).await.expect("record_nonce"),
            NonceOutcome::Fresh
        );
    }
    let with_token = |name: &str, fingerprint: &str, n: u32, now: UnixMillis| {
        let (mut sub, _) = submission(
            a,
            gz(),
            "RunInstances",
            false,
            vec![creating(
                new_resource(&ins(n), KIND, "PENDING", json!({})),
                Effect::default(),
            )],
            now,
        );
        sub.idempotency = token(name, fingerprint);
        sub
    };
    submit_new(store, with_token("old", "fp", 1, T0 + 5)).await;
    submit_new(store, with_token("new", "fp", 2, T0 + 500)).await;

    let retention = Retention {
        nonces_expired_before: T0 + 100,
        tokens_created_before: T0 + 100,
        ..retain_everything(2)
    };
    assert_eq!(
        purge_all(store, retention, 5).await,
        vec![
            PurgeReport {
                nonces: 2,
                tokens: 1,
                more: true,
                ..PurgeReport::default()
            },
            PurgeReport {
                nonces: 1,
                ..PurgeReport::default()
            },
        ]
    );

    let later = T0 + 300_000;
    assert_eq!(
        store
            .record_nonce(expiring(1, "another request", later))
            .await
            .expect("record_nonce"),
        NonceOutcome::Fresh,
        "a purged nonce is fresh again"
    );
    match store
        .record_nonce(expiring(4, "another request", later))
        .await
    {
        Err(StoreError::NonceReused { nonce: 4, .. }) => {}
        other => panic!("an unexpired nonce is still remembered, got {other:?}"),
    }
    submit_new(store, with_token("old", "other parameters", 3, T0 + 600)).await;
    match store
        .submit(with_token("new", "other parameters", 4, T0 + 600))
        .await
    {
        Err(StoreError::TokenReused { token }) => assert_eq!(token, "new"),
        other => panic!("a recent token is still remembered, got {other:?}"),
    }
}

/// Purge deletes resources of a kind that have been idle in a state since before the
/// cutoff, in batches; not busy ones, newer ones, other states or other kinds.
pub async fn purge_deletes_idle_resources_of_a_kind_and_state(store: &dyn Store) {
    let a = account(store, "main").await;
    for (n, state_name, since) in [
        (1, "TERMINATED", T0 + 10),
        (2, "TERMINATED", T0 + 20),
        (3, "TERMINATED", T0 + 500),
        (4, "RUNNING", T0 + 10),
        (5, "TERMINATED", T0 + 10),
    ] {
        instance(store, a, gz(), &ins(n), state_name, json!({}), since).await;
    }
    start_task(
        store,
        a,
        &ins(5),
        "TerminateInstances",
        Effect::default(),
        T0 + 20,
    )
    .await;
    let lb = ResourceId::parse("lb", "lb-00000001").expect("an ID");
    create_idle(
        store,
        a,
        gz(),
        new_resource(&lb, "loadbalancer", "TERMINATED", json!({})),
        T0 + 10,
    )
    .await;

    let retention = Retention {
        resources: vec![ResourceRetention {
            kind: KIND.into(),
            state: state("TERMINATED"),
            idle_before: T0 + 100,
        }],
        ..retain_everything(1)
    };
    let reports = purge_all(store, retention, 5).await;
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.resources, r.more))
            .collect::<Vec<_>>(),
        vec![(1, true), (1, true), (0, false)],
        "{reports:?}"
    );
    let left = store
        .resources(a, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");
    let left: BTreeSet<ResourceId> = left.items.into_iter().map(|r| r.id).collect();
    assert_eq!(left, [ins(3), ins(4), ins(5)].into_iter().collect());
    assert!(
        resource_of(store, a, gz(), "loadbalancer", &lb)
            .await
            .is_some(),
        "another kind stays"
    );
}

// ---------------------------------------------------------------------------------------
// stats
// ---------------------------------------------------------------------------------------

/// Stats count the tasks of every account by state, and start with no task and no
/// refused completion.
pub async fn stats_count_tasks_by_state(store: &dyn Store) {
    assert_eq!(
        tasks_by_state(store).await,
        HashMap::new(),
        "an empty store"
    );
    assert_eq!(fenced_completions(store).await, 0);
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    for n in 1..=5 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, b, gz(), &ins(6), "RUNNING", json!({}), T0).await;
    let mut stops = Vec::new();
    for n in 1..=5 {
        stops.push(start_task(store, a, &ins(n), "StopInstances", stop_effect(), T0 + 1).await);
    }
    let [_queued, running, failed, canceled, succeeded] = stops[..] else {
        unreachable!("five tasks")
    };
    wait_behind(
        store,
        a,
        &ins(1),
        "StartInstances",
        &[],
        start_effect(),
        T0 + 2,
    )
    .await;
    claim(store, running, T0 + 3).await;
    finish(store, failed, TaskOutcome::Failed(fault()), T0 + 3).await;
    cancel(store, a, canceled, T0 + 3).await;
    finish(store, succeeded, success(), T0 + 3).await;
    let expected: HashMap<TaskState, u64> = [
        (TaskState::Queued, 2),
        (TaskState::Running, 1),
        (TaskState::Succeeded, 7),
        (TaskState::Failed, 1),
        (TaskState::Canceled, 1),
    ]
    .into();
    assert_eq!(tasks_by_state(store).await, expected);

    // A submission refused after it inserted a task counts nothing.
    let (refused, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        vec![
            creating(
                new_resource(&ins(7), KIND, "PENDING", json!({})),
                Effect::default(),
            ),
            creating(
                new_resource(&ins(1), KIND, "PENDING", json!({})),
                Effect::default(),
            ),
        ],
        T0 + 3,
    );
    assert!(
        matches!(
            store.submit(refused).await,
            Err(StoreError::DuplicateResource(_))
        ),
        "ins-1 exists"
    );
    assert_eq!(
        tasks_by_state(store).await,
        expected,
        "after a refused submission"
    );

    // Retention deletes the final tasks: the counts follow deletions too.
    let retention = Retention {
        tasks_finished_before: T0 + 4,
        ..retain_everything(100)
    };
    purge_all(store, retention, 10).await;
    let expected: HashMap<TaskState, u64> =
        [(TaskState::Queued, 2), (TaskState::Running, 1)].into();
    assert_eq!(
        tasks_by_state(store).await,
        expected,
        "after retention deleted the final tasks"
    );
}

/// The queue summary counts the QUEUED tasks a worker could claim now, in every account:
/// not those waiting behind another task on their resource, for a backoff, or running;
/// the oldest is ready since the later of its submission and its backoff's end.
pub async fn queue_summary_counts_ready_tasks_and_the_oldest_wait(store: &dyn Store) {
    let summary = |now: UnixMillis| async move {
        store
            .queue_summary(now)
            .await
            .unwrap_or_else(|e| panic!("queue_summary failed: {e}"))
    };
    assert_eq!(summary(T0).await, QueueSummary::default(), "an empty store");
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    for n in 1..=4 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, b, gz(), &ins(5), "RUNNING", json!({}), T0).await;
    let first = start_task(store, a, &ins(1), "StopInstances", stop_effect(), T0 + 10).await;
    let second = start_task(store, b, &ins(5), "StopInstances", stop_effect(), T0 + 20).await;
    wait_behind(
        store,
        b,
        &ins(5),
        "StartInstances",
        &[],
        start_effect(),
        T0 + 30,
    )
    .await;
    let running = start_task(store, a, &ins(3), "StopInstances", stop_effect(), T0 + 40).await;
    claim(store, running, T0 + 50).await;
    let retrying = start_task(store, a, &ins(4), "StopInstances", stop_effect(), T0 + 60).await;
    let backoff = T0 + 5_000;
    let attempt = claim(store, retrying, T0 + 70).await;
    let retry = TaskOutcome::Retry {
        error: fault(),
        not_before: backoff,
    };
    complete(store, &attempt, retry, T0 + 80).await;
    let ready = |count: u64, since: UnixMillis| QueueSummary {
        ready: count,
        oldest_ready_since: Some(since),
    };
    assert_eq!(
        summary(T0 + 100).await,
        ready(2, T0 + 10),
        "two heads of their queues, in two accounts; not the waiting, running or retrying"
    );
    finish(store, first, success(), T0 + 200).await;
    assert_eq!(
        summary(T0 + 300).await,
        ready(1, T0 + 20),
        "a finished task leaves the queue"
    );
    assert_eq!(
        summary(backoff).await,
        ready(2, T0 + 20),
        "a retry is ready once its backoff ended"
    );
    finish(store, second, success(), backoff).await;
    let after = summary(backoff + 1).await;
    assert_eq!(
        after.ready, 2,
        "the task that waited behind a finished one is ready: {after:?}"
    );
    finish(store, retrying, success(), backoff + 2).await;
    assert_eq!(
        summary(backoff + 3).await.ready,
        1,
        "only the promoted task is left"
    );
}

// ---------------------------------------------------------------------------------------
// group commit under concurrency
// ---------------------------------------------------------------------------------------

/// 200 submissions in flight at once (each with its own nonce, half of them grouped) all
/// commit; every task and group ID is distinct and every task can be read back.
pub async fn concurrent_submits_all_commit_with_distinct_ids(store: Arc<dyn Store>) {
    const N: u32 = 200;
    let a = account(store.as_ref(), "main").await;
    let handles: Vec<_> = (1..=N)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let (sub, probe) = submission(
                    a,
                    gz(),
                    "RunInstances",
                    n % 2 == 0,
                    vec![creating(
                        new_resource(&ins(n), KIND, "PENDING", json!({"n": n})),
                        Effect::default(),
                    )],
                    T0 + i64::from(n),
                );
                let result = store.submit(sub).await;
                (n, result, probe)
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut created = Vec::new();
    for handle in handles {
        let (n, result, probe) = handle.await.expect("a submitting task panicked");
        let (report, answer) = match result {
            Ok(Submitted::New { report, answer, .. }) => (report, answer),
            other => panic!("submission {n} should commit, got {other:?}"),
        };
        assert_eq!(probe.calls(), vec![report.clone()], "submission {n}");
        assert_eq!(answer, render("RunInstances", &report), "submission {n}");
        let task = only_task(&report);
        assert_eq!(report.group.is_some(), n % 2 == 0, "submission {n}");
        assert!(ids.insert(task), "task ID {task} handed out twice");
        if let Some(group) = report.group {
            assert!(ids.insert(group), "group ID {group} handed out twice");
        }
        created.push((n, task, report.group));
    }
    assert_eq!(ids.len() as u32, N + N / 2);
    for (n, task, group) in &created {
        let record = must_task(store.as_ref(), a, *task).await;
        assert_eq!(
            (record.resource, record.state, record.group),
            (ins(*n), TaskState::Queued, *group),
            "task {task}"
        );
        if let Some(group) = group {
            let members = store
                .group(a, *group)
                .await
                .expect("group")
                .expect("the group exists");
            assert_eq!(ids_of(&members.tasks, |t| t.id), vec![*task]);
        }
        let res = must_resource(store.as_ref(), a, &ins(*n)).await;
        assert_eq!(Value::Object(res.attrs), json!({"n": n}));
    }
    assert_eq!(task_count(store.as_ref(), a).await, u64::from(N));
    let mut tasks: Vec<RequestId> = created.iter().map(|(_, t, _)| *t).collect();
    tasks.sort();
    assert_eq!(due_by(&recover(store.as_ref(), T0).await, T0), tasks);
}

/// A submission that fails (a duplicate resource) among many in flight does not disturb
/// the others, and is rolled back on its own: its nonce can be used again.
pub async fn a_failing_submit_does_not_disturb_concurrent_ones(store: Arc<dyn Store>) {
    const N: u32 = 100;
    let a = account(store.as_ref(), "main").await;
    let taken = ins(1);
    instance(store.as_ref(), a, gz(), &taken, "RUNNING", json!({}), T0).await;
    let fails = |n: u32| n % 4 == 1;
    let plan = move |n: u32, id: &ResourceId| {
        let mut tasks = vec![creating(
            new_resource(&ins(1_000 + n), KIND, "PENDING", json!({})),
            Effect::default(),
        )];
        if fails(n) {
            tasks.push(creating(
                new_resource(id, KIND, "PENDING", json!({})),
                Effect::default(),
            ));
        }
        tasks
    };
    let handles: Vec<_> = (1..=N)
        .map(|n| {
            let store = Arc::clone(&store);
            let taken = taken.clone();
            tokio::spawn(async move {
                let (sub, _) = submission(a, gz(), "RunInstances", true, plan(n, &taken), T0 + 1);
                let nonce = sub.nonce.clone();
                (n, nonce, store.submit(sub).await)
            })
        })
        .collect();
    let mut retry = Vec::new();
    for handle in handles {
        let (n, nonce, result) = handle.await.expect("a submitting task panicked");
        match result {
            Ok(Submitted::New { report, .. }) if !fails(n) => {
                assert_eq!(report.accepted().count(), 1, "submission {n}");
            }
            Err(StoreError::DuplicateResource(id)) if fails(n) && id == taken => {
                retry.push((n, nonce));
            }
            other => panic!("submission {n}: unexpected {other:?}"),
        }
    }
    let committed = N - N / 4;
    assert_eq!(
        task_count(store.as_ref(), a).await,
        1 + u64::from(committed)
    );
    // What failed beside others in a shared savepoint is not counted either.
    let counted = tasks_by_state(store.as_ref()).await;
    assert_eq!(
        counted.get(&TaskState::Queued).copied(),
        Some(u64::from(committed)),
        "{counted:?}"
    );
    for n in 1..=N {
        assert_eq!(
            resource(store.as_ref(), a, &ins(1_000 + n)).await.is_some(),
            !fails(n),
            "ins-{:08}",
            1_000 + n
        );
    }
    // A failed submission spent no nonce, also when it failed beside others it shared a
    // savepoint with: half of them are sent again, the other half's nonces serve queries.
    let mut retried = 0;
    for (n, nonce) in retry {
        if n % 8 == 5 {
            let query = NonceClaim {
                signature: format!("a query after submission {n}"),
                ..nonce
            };
            assert_eq!(
                store.record_nonce(query).await.expect("record_nonce"),
                NonceOutcome::Fresh,
                "the nonce of failed submission {n}"
            );
            continue;
        }
        let (mut sub, _) = submission(
            a,
            gz(),
            "RunInstances",
            true,
            plan(n, &ins(2_000 + n)),
            T0 + 2,
        );
        sub.nonce = nonce;
        let report = submit_new(store.as_ref(), sub).await;
        assert_eq!(report.accepted().count(), 2, "retry of submission {n}");
        retried += 1;
    }
    assert_eq!(
        task_count(store.as_ref(), a).await,
        1 + u64::from(committed) + 2 * retried
    );
    let counted = tasks_by_state(store.as_ref()).await;
    assert_eq!(
        counted.values().sum::<u64>(),
        1 + u64::from(committed) + 2 * retried,
        "{counted:?}"
    );
}

/// Many submissions on one idle resource at once: exactly one is accepted; every other
/// one is refused as busy with that task.
pub async fn concurrent_submits_on_one_resource_accept_exactly_one(store: Arc<dyn Store>) {
    const N: usize = 50;
    let a = account(store.as_ref(), "main").await;
    let r = ins(1);
    instance(store.as_ref(), a, gz(), &r, "RUNNING", json!({}), T0).await;
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let store = Arc::clone(&store);
            let r = r.clone();
            tokio::spawn(async move {
                let (sub, _) = submission(
                    a,
                    gz(),
                    "StopInstances",
                    false,
                    vec![existing(
                        &r,
                        &["RUNNING"],
                        effect(Some("STOPPING"), Some("STOPPED"), None),
                    )],
                    T0 + 1,
                );
                store.submit(sub).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        match handle.await.expect("a submitting task panicked") {
            Ok(Submitted::New { report, .. }) => {
                let [(_, outcome)] = <[_; 1]>::try_from(report.outcomes).expect("one outcome");
                outcomes.push(outcome);
            }
            other => panic!("expected a report, got {other:?}"),
        }
    }
    let winners: Vec<RequestId> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
    let [winner] = winners[..] else {
        panic!("exactly one submission must win, got {winners:?}");
    };
    let busy = Err(Rejection::Busy {
        task: winner,
        action: "StopInstances".into(),
    });
    assert_eq!(
        outcomes.iter().filter(|o| **o == busy).count(),
        N - 1,
        "all others are busy with the winner: {outcomes:?}"
    );
    assert_eq!(
        must_resource(store.as_ref(), a, &r).await.active_task,
        Some(winner)
    );
    assert_eq!(task_count(store.as_ref(), a).await, 2);
}

/// Concurrent claims of the same task: exactly one wins, and the attempt counts once.
pub async fn concurrent_claims_have_one_winner(store: Arc<dyn Store>) {
    const TASKS: u32 = 10;
    const CLAIMERS: usize = 8;
    let a = account(store.as_ref(), "main").await;
    let tasks = create_pending(store.as_ref(), a, TASKS, |_| Effect::default()).await;
    let handles: Vec<_> = (0..CLAIMERS)
        .flat_map(|_| tasks.iter().copied())
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (task, store.claim(task, lease(T0 + 1)).await) })
        })
        .collect();
    let mut wins = std::collections::BTreeMap::<RequestId, usize>::new();
    for handle in handles {
        let (task, result) = handle.await.expect("a claiming task panicked");
        if let Some(claimed) = result.expect("claim") {
            assert_eq!(claimed.task.id, task);
            *wins.entry(task).or_default() += 1;
        }
    }
    for task in &tasks {
        assert_eq!(wins.get(task), Some(&1), "task {task}: {wins:?}");
        let record = must_task(store.as_ref(), a, *task).await;
        assert_eq!((record.state, record.attempts), (TaskState::Running, 1));
    }
}

/// Many claims at once, more than one statement of a backend takes (claims may share
/// statements): each claimable task is claimed once, by its own claim, with a fence of
/// its own that its record shows; a task that does not exist is not claimed.
pub async fn concurrent_claims_each_get_their_task_and_fence(store: Arc<dyn Store>) {
    const TASKS: u32 = 600;
    let a = account(store.as_ref(), "main").await;
    let tasks = create_pending(store.as_ref(), a, TASKS, |_| Effect::default()).await;
    let unknown = RequestId::new(tasks.iter().map(|t| t.get()).max().unwrap() + 1_000_000).unwrap();
    let handles: Vec<_> = tasks
        .iter()
        .copied()
        .chain([unknown])
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (task, store.claim(task, lease(T0 + 1)).await) })
        })
        .collect();
    let mut fences = std::collections::BTreeSet::new();
    for handle in handles {
        let (task, result) = handle.await.expect("a claiming task panicked");
        let claimed = result.expect("claim");
        if task == unknown {
            assert!(claimed.is_none(), "a task that does not exist was claimed");
            continue;
        }
        let claimed = claimed.unwrap_or_else(|| panic!("task {task} was not claimed"));
        assert_eq!(claimed.task.id, task);
        assert_eq!(claimed.task.run.fence, claimed.fence, "task {task}");
        assert!(
            fences.insert(claimed.fence),
            "fence {} given twice",
            claimed.fence
        );
        let record = must_task(store.as_ref(), a, task).await;
        assert_eq!(
            (record.state, record.attempts, record.run.fence),
            (TaskState::Running, 1, claimed.fence),
            "task {task}"
        );
    }
    assert_eq!(fences.len(), TASKS as usize);
}

/// Many outcomes at once (a backend may record them together): each is recorded as it
/// would be alone. Successes and failures end their tasks, move their resources to the
/// effect's state and hand them to the task waiting behind (a failure cancels it); a
/// patch applies; a retry queues the task again; a stale fence is refused and counted;
/// a task that does not exist is not found.
pub async fn concurrent_completions_each_record_their_own_outcome(store: Arc<dyn Store>) {
    const TASKS: usize = 200;
    let a = account(store.as_ref(), "main").await;
    let mut patched = effect(None, Some("RUNNING"), Some("FAILED"));
    patched.patch = object(json!({"ip": "10.0.0.1"}));
    let tasks = create_pending(store.as_ref(), a, TASKS as u32, |n| {
        if n > 100 {
            patched.clone()
        } else {
            effect(None, Some("RUNNING"), Some("FAILED"))
        }
    })
    .await;
    let mut claimed = Vec::new();
    for task in &tasks {
        claimed.push(claim(store.as_ref(), *task, T0 + 1).await);
    }
    // Tasks waiting behind the first 40 (the first 20 will succeed, the next 20 fail).
    let mut waiting = Vec::new();
    for n in 1..=40u32 {
        waiting.push(
            wait_behind(
                store.as_ref(),
                a,
                &ins(n),
                "StopInstances",
                &[],
                stop_effect(),
                T0 + 2,
            )
            .await,
        );
    }
    let fenced_before = fenced_completions(store.as_ref()).await;
    let retry_at = T0 + 60_000;
    let outcome = |i: usize| match i {
        20..=39 => TaskOutcome::Failed(fault()),
        150..=169 => TaskOutcome::Retry {
            error: fault(),
            not_before: retry_at,
        },
        _ => success(),
    };
    let unknown = RequestId::new(tasks.iter().map(|t| t.get()).max().unwrap() + 1_000_000).unwrap();
    let mut handles = Vec::new();
    for (i, c) in claimed.iter().enumerate() {
        // The last 30 complete with a fence that is not theirs (any more).
        let fence = if i >= 170 {
            c.fence + 1_000_000
        } else {
            c.fence
        };
        let (store, task, outcome) = (Arc::clone(&store), c.task.id, outcome(i));
        handles.push(tokio::spawn(async move {
            store.complete(task, fence, outcome, T0 + 3).await
        }));
    }
    let store_for_unknown = Arc::clone(&store);
    let unknown_answer = tokio::spawn(async move {
        store_for_unknown
            .complete(unknown, 1, success(), T0 + 3)
            .await
    });
    for (i, handle) in handles.into_iter().enumerate() {
        let task = tasks[i];
        let answer = handle.await.expect("a completing task panicked");
        match i {
            0..=19 => assert_eq!(
                answer.expect("complete"),
                Completion::Recorded {
                    runnable: vec![runnable(waiting[i], T0 + 3)]
                },
                "task {task}: its resource goes to the task waiting behind"
            ),
            150..=169 => assert_eq!(
                answer.expect("complete"),
                Completion::Recorded {
                    runnable: vec![runnable(task, retry_at)]
                },
                "task {task}: a retry"
            ),
            170.. => assert_eq!(answer.expect("complete"), Completion::Fenced, "task {task}"),
            _ => assert_eq!(
                answer.expect("complete"),
                Completion::Recorded {
                    runnable: Vec::new()
                },
                "task {task}"
            ),
        }
        let record = must_task(store.as_ref(), a, task).await;
        let resource = must_resource(store.as_ref(), a, &ins(i as u32 + 1)).await;
        let (state, resource_state, holder) = match i {
            0..=19 => (TaskState::Succeeded, "STOPPING", Some(waiting[i])),
            20..=39 => (TaskState::Failed, "FAILED", None),
            150..=169 => (TaskState::Queued, "PENDING", Some(task)),
            170.. => (TaskState::Running, "PENDING", Some(task)),
            _ => (TaskState::Succeeded, "RUNNING", None),
        };
        assert_eq!(record.state, state, "task {task}");
        assert_eq!(
            (resource.state.as_str(), resource.active_task),
            (resource_state, holder),
            "the resource of task {task}"
        );
        let ip = resource.attrs.get("ip").cloned();
        let expected_ip = (100..150).contains(&i).then(|| json!("10.0.0.1"));
        assert_eq!(ip, expected_ip, "the patch of task {task}");
    }
    for (n, task) in waiting.iter().enumerate().skip(20) {
        let record = must_task(store.as_ref(), a, *task).await;
        assert_eq!(
            record.state,
            TaskState::Canceled,
            "task {task} waited behind a failure (ins {})",
            n + 1
        );
    }
    assert!(
        matches!(
            unknown_answer.await.expect("panicked"),
            Err(StoreError::NotFound(_))
        ),
        "a task that does not exist"
    );
    assert_eq!(fenced_completions(store.as_ref()).await, fenced_before + 30);
}

/// A chain of one task on `instance` (a StopInstances that changes nothing): its group and
/// its task.
async fn stop_as_a_chain(
    store: &dyn Store,
    account: AccountId,
    instance: &ResourceId,
) -> (RequestId, RequestId) {
    let (sub, _) = submission(
        account,
        gz(),
        "StopInstances",
        true,
        vec![existing(instance, &[], Effect::default())],
        T0 + 1,
    );
    let report = submit_new(store, sub).await;
    (report.group.expect("a group"), only_task(&report))
}

/// Reads of several statements — by name (a task, a chain, nothing), a chain, the task and
/// resource listings — leave no read transaction open: `holds_snapshot` (the backend's
/// test) tells whether a connection of the store still holds one, which would keep the WAL
/// from ever being checkpointed past it.
pub async fn multi_statement_reads_leave_no_transaction_open(
    store: &dyn Store,
    holds_snapshot: impl Fn() -> bool,
) {
    let a = account(store, "main").await;
    instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let (group, task) = stop_as_a_chain(store, a, &ins(1)).await;
    let unknown = RequestId::new(group.get() + 1_000).expect("an ID");
    assert!(!holds_snapshot(), "before the reads");
    for id in [task, group, unknown] {
        store.named(a, id).await.expect("named");
        assert!(
            !holds_snapshot(),
            "the read of {id} left its transaction open"
        );
    }
    store
        .group(a, group)
        .await
        .expect("group")
        .expect("the chain");
    assert!(
        !holds_snapshot(),
        "the chain's read left its transaction open"
    );
    let listing = all_tasks(store, a).await;
    assert_eq!(listing.total, listing.items.len() as u64, "{listing:?}");
    assert!(
        !holds_snapshot(),
        "the task listing left its transaction open"
    );
    must_resource(store, a, &ins(1)).await;
    assert!(
        !holds_snapshot(),
        "the resource listing left its transaction open"
    );
}

/// Outcomes recorded at once, one of which cannot be: `corrupt` spoils that task's
/// stored effect (the backend's test does it behind the store's back). That completion
/// fails, and changes nothing — its task stays RUNNING, its resource held — while the
/// others are recorded.
pub async fn a_completion_that_cannot_be_recorded_fails_alone(
    store: Arc<dyn Store>,
    corrupt: impl FnOnce(RequestId),
) {
    const TASKS: u32 = 40;
    let a = account(store.as_ref(), "main").await;
    let tasks = create_pending(store.as_ref(), a, TASKS, |_| {
        effect(None, Some("RUNNING"), None)
    })
    .await;
    let mut claimed = Vec::new();
    for task in &tasks {
        claimed.push(claim(store.as_ref(), *task, T0 + 1).await);
    }
    let spoiled = tasks[TASKS as usize / 2];
    corrupt(spoiled);
    let handles: Vec<_> = claimed
        .iter()
        .map(|c| {
            let (store, task, fence) = (Arc::clone(&store), c.task.id, c.fence);
            tokio::spawn(async move { store.complete(task, fence, success(), T0 + 2).await })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let task = tasks[i];
        let answer = handle.await.expect("a completing task panicked");
        let resource = must_resource(store.as_ref(), a, &ins(i as u32 + 1)).await;
        if task == spoiled {
            // (Its record cannot be read any more either.)
            assert!(answer.is_err(), "the spoiled task's completion: {answer:?}");
            assert_eq!(
                (resource.state.as_str(), resource.active_task),
                ("PENDING", Some(task)),
                "nothing recorded: its resource is still held"
            );
        } else {
            let record = must_task(store.as_ref(), a, task).await;
            assert_eq!(
                answer.expect("complete"),
                Completion::Recorded {
                    runnable: Vec::new()
                },
                "task {task}"
            );
            assert_eq!(record.state, TaskState::Succeeded, "task {task}");
            assert_eq!(
                (resource.state.as_str(), resource.active_task),
                ("RUNNING", None),
                "the resource of task {task}"
            );
        }
    }
    assert_eq!(
        tasks_by_state(store.as_ref()).await,
        HashMap::from([
            (TaskState::Succeeded, u64::from(TASKS) - 1),
            (TaskState::Running, 1)
        ]),
        "the spoiled task is still running"
    );
}

// ---------------------------------------------------------------------------------------
// reads
// ---------------------------------------------------------------------------------------

/// Tasks and groups are read through their account: another account sees none of them,
/// exactly as if they did not exist; a group ID is not a task and a task ID not a group;
/// `named` finds either.
pub async fn task_and_group_reads_are_account_scoped(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let theirs = instance(store, b, gz(), &ins(2), "RUNNING", json!({}), T0).await;
    let (group, task) = stop_as_a_chain(store, a, &ins(1)).await;

    assert!(store.task(a, task).await.expect("task").is_some());
    assert!(store.group(a, group).await.expect("group").is_some());
    assert_eq!(store.task(b, task).await.expect("task"), None);
    assert_eq!(store.group(b, group).await.expect("group"), None);
    assert_eq!(store.task(a, theirs).await.expect("task"), None);
    assert_eq!(
        store.task(a, group).await.expect("task"),
        None,
        "a group is not a task"
    );
    assert_eq!(
        store.group(a, task).await.expect("group"),
        None,
        "a task is not a group"
    );
    // `named`: the task or else the group, through the account too.
    let as_task = store.task(a, task).await.expect("task").map(Box::new);
    assert_eq!(
        store.named(a, task).await.expect("named"),
        as_task.map(Named::Task)
    );
    assert_eq!(
        store.named(a, group).await.expect("named"),
        store
            .group(a, group)
            .await
            .expect("group")
            .map(Named::Chain)
    );
    for (who, id) in [(b, task), (b, group), (a, theirs)] {
        assert_eq!(store.named(who, id).await.expect("named"), None, "{id}");
    }
    let listed = all_tasks(store, b).await;
    assert_eq!(
        (listed.total, ids_of(&listed.items, |t| t.id)),
        (1, vec![theirs]),
        "b lists only its own task"
    );
    assert!(!ids_of(&all_tasks(store, a).await.items, |t| t.id).contains(&theirs));
    let r = store
        .resources(b, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");
    assert_eq!(
        r.items.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![ins(2)]
    );
}

/// The task listing: newest first, filtered by states, action, resource and an inclusive
/// creation-time range (combined with AND), paged, with the total of all matches.
pub async fn task_listing_filters_and_pages(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let c1 = instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0 + 1).await;
    let c2 = instance(store, a, gz(), &ins(2), "RUNNING", json!({}), T0 + 2).await;
    let c3 = instance(store, a, gz(), &ins(3), "RUNNING", json!({}), T0 + 3).await;
    instance(store, b, gz(), &ins(4), "RUNNING", json!({}), T0 + 15).await;
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let s1 = start_task(store, a, &ins(1), "StopInstances", stop.clone(), T0 + 10).await;
    finish(store, s1, success(), T0 + 11).await;
    let f1 = start_task(
        store,
        a,
        &ins(1),
        "StartInstances",
        Effect::default(),
        T0 + 20,
    )
    .await;
    finish(store, f1, TaskOutcome::Failed(fault()), T0 + 21).await;
    let r1 = start_task(
        store,
        a,
        &ins(1),
        "RestartInstances",
        Effect::default(),
        T0 + 30,
    )
    .await;
    claim(store, r1, T0 + 31).await;
    let q2 = start_task(store, a, &ins(2), "StopInstances", stop, T0 + 40).await;

    let everything = all_tasks(store, a).await;
    assert_eq!(
        ids_of(&everything.items, |t| t.id),
        vec![q2, r1, f1, s1, c3, c2, c1],
        "newest first"
    );
    assert_eq!(everything.total, 7);
    for item in &everything.items {
        assert_eq!(
            *item,
            must_task(store, a, item.id).await,
            "a listed task is the task"
        );
    }

    use TaskState::*;
    let f = TaskFilter::default;
    let states = |s: &[TaskState]| TaskFilter {
        states: s.to_vec(),
        ..f()
    };
    let action = |name: &str| TaskFilter {
        action: Some(name.into()),
        ..f()
    };
    let on = |id: ResourceId| TaskFilter {
        resource: Some(id),
        ..f()
    };
    let created = |from, to| TaskFilter {
        created_from: from,
        created_to: to,
        ..f()
    };
    // Unpaged: the total is the number of matches.
    let filtered = [
        ("no filter", f(), vec![q2, r1, f1, s1, c3, c2, c1]),
        ("unfinished", states(&[Queued, Running]), vec![q2, r1]),
        ("queued", states(&[Queued]), vec![q2]),
        ("succeeded", states(&[Succeeded]), vec![s1, c3, c2, c1]),
        ("failed", states(&[Failed]), vec![f1]),
        ("action", action("StopInstances"), vec![q2, s1]),
        ("unknown action", action("DescribeNothing"), vec![]),
        ("resource", on(ins(1)), vec![r1, f1, s1, c1]),
        ("another account's resource", on(ins(4)), vec![]),
        (
            "inclusive range",
            created(Some(T0 + 10), Some(T0 + 30)),
            vec![r1, f1, s1],
        ),
        ("from", created(Some(T0 + 31), None), vec![q2]),
        ("to", created(None, Some(T0 + 3)), vec![c3, c2, c1]),
        (
            "action and resource",
            TaskFilter {
                resource: Some(ins(1)),
                ..action("StopInstances")
            },
            vec![s1],
        ),
        (
            "state, resource and from",
            TaskFilter {
                resource: Some(ins(1)),
                created_from: Some(T0 + 5),
                ..states(&[Succeeded])
            },
            vec![s1],
        ),
    ];
    for (name, filter, expected) in filtered {
        let listing = store.tasks(a, filter, EVERYTHING).await.expect("tasks");
        let total = expected.len() as u64;
        assert_eq!(
            (ids_of(&listing.items, |t| t.id), listing.total),
            (expected, total),
            "{name}"
        );
    }
    // Paged: the total counts every match, not the page.
    let paged = [
        ("first page", f(), 0, 3, vec![q2, r1, f1], 7),
        ("second page", f(), 3, 3, vec![s1, c3, c2], 7),
        ("last page", f(), 6, 3, vec![c1], 7),
        ("past the end", f(), 7, 3, vec![], 7),
        ("filtered page", states(&[Succeeded]), 1, 2, vec![c3, c2], 4),
    ];
    for (name, filter, offset, limit, expected, total) in paged {
        let listing = store
            .tasks(a, filter, Page { offset, limit })
            .await
            .expect("tasks");
        assert_eq!(
            (ids_of(&listing.items, |t| t.id), listing.total),
            (expected, total),
            "{name}"
        );
    }
}

/// The resource listing: one kind in one region of one account, newest first, filtered
/// by IDs, states, a search word (a substring of the ID or of the name attribute) and
/// attribute values (text or integer; entries combined with AND), paged, with the total.
pub async fn resource_listing_filters_and_pages(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let r1 = ins(1);
    let r2 = ins(2);
    let r3 = ins(3);
    let r4 = ResourceId::parse("ins", "ins-0000abcd").expect("an ID");
    let rsh = ins(5);
    let rb = ins(6);
    let lb = ResourceId::parse("lb", "lb-00000001").expect("an ID");
    let seeds = [
        (
            a,
            gz(),
            &r1,
            KIND,
            "RUNNING",
            json!({"instanceName": "web-1", "zone": "ap-guangzhou-1", "cpu": 1}),
        ),
        (
            a,
            gz(),
            &r2,
            KIND,
            "STOPPED",
            json!({"instanceName": "web-2", "zone": "ap-guangzhou-3", "cpu": 2}),
        ),
        (
            a,
            gz(),
            &r3,
            KIND,
            "RUNNING",
            json!({"instanceName": "db", "zone": "ap-guangzhou-3", "cpu": 4}),
        ),
        (
            a,
            gz(),
            &r4,
            KIND,
            "STOPPED",
            json!({"instanceName": "cache", "cpu": 2}),
        ),
        (
            a,
            sh(),
            &rsh,
            KIND,
            "RUNNING",
            json!({"instanceName": "web-sh", "zone": "ap-shanghai-2", "cpu": 2}),
        ),
        (
            b,
            gz(),
            &rb,
            KIND,
            "RUNNING",
            json!({"instanceName": "web-b", "zone": "ap-guangzhou-3", "cpu": 2}),
        ),
        (
            a,
            gz(),
            &lb,
            "loadbalancer",
            "RUNNING",
            json!({"instanceName": "web-lb", "zone": "ap-guangzhou-3", "cpu": 2}),
        ),
    ];
    let mut expected_records = Vec::new();
    for (n, (account, region, id, kind, state_name, attrs)) in seeds.iter().enumerate() {
        let created_at = T0 + n as i64 + 1;
        let task = create_idle(
            store,
            *account,
            *region,
            new_resource(id, kind, state_name, attrs.clone()),
            created_at,
        )
        .await;
        expected_records.push(ResourceRecord {
            id: (*id).clone(),
            kind: (*kind).to_owned(),
            region: *region,
            state: state(state_name),
            attrs: object(attrs.clone()),
            created_at,
            active_task: None,
            last_operation: last_op(task, "RunInstances", TaskState::Succeeded),
        });
    }
    let everything = store
        .resources(a, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");
    let newest_first: Vec<ResourceRecord> = expected_records[..4].iter().rev().cloned().collect();
    assert_eq!(
        everything,
        Listing {
            total: 4,
            items: newest_first
        },
        "every instance of the account in the region, newest first"
    );

    let base = || listing_filter(gz(), KIND);
    let ids = |ids: &[&ResourceId]| ResourceFilter {
        ids: ids.iter().map(|id| (*id).clone()).collect(),
        ..base()
    };
    let states = |names: &[&str]| ResourceFilter {
        states: names.iter().map(|s| state(s)).collect(),
        ..base()
    };
    let search = |word: &str| ResourceFilter {
        search: Some(word.into()),
        ..base()
    };
    let attrs = |attr_in: Vec<(&'static str, Vec<Value>)>| ResourceFilter { attr_in, ..base() };
    let zone = |z: &str| json!(z);
    let cpu = |n: i64| json!(n);
    let unknown = ins(9);
    // Account a's instances in ap-guangzhou, unpaged: the total is the number of matches.
    let filtered = [
        ("no filter", base(), vec![&r4, &r3, &r2, &r1]),
        (
            "ids (another kind's, region's, account's and unknown ones are not found)",
            ids(&[&r3, &r1, &lb, &rsh, &rb, &unknown]),
            vec![&r3, &r1],
        ),
        ("one state", states(&["STOPPED"]), vec![&r4, &r2]),
        (
            "two states",
            states(&["RUNNING", "STOPPED"]),
            vec![&r4, &r3, &r2, &r1],
        ),
        ("unknown state", states(&["RETURNED"]), vec![]),
        ("search in the name", search("web"), vec![&r2, &r1]),
        ("search a whole name", search("db"), vec![&r3]),
        ("search in the ID", search("abc"), vec![&r4]),
        (
            "search a longer ID part",
            search("0000000"),
            vec![&r3, &r2, &r1],
        ),
        ("search matching nothing", search("zzz"), vec![]),
        ("search is no LIKE pattern (_)", search("web_1"), vec![]),
        ("search is no LIKE pattern (%)", search("%"), vec![]),
        (
            "text attribute",
            attrs(vec![("zone", vec![zone("ap-guangzhou-3")])]),
            vec![&r3, &r2],
        ),
        (
            "text attribute, two values",
            attrs(vec![(
                "zone",
                vec![zone("ap-guangzhou-1"), zone("ap-guangzhou-3")],
            )]),
            vec![&r3, &r2, &r1],
        ),
        (
            "integer attribute",
            attrs(vec![("cpu", vec![cpu(2), cpu(4)])]),
            vec![&r4, &r3, &r2],
        ),
        (
            "two attributes",
            attrs(vec![
                ("cpu", vec![cpu(2)]),
                ("zone", vec![zone("ap-guangzhou-3")]),
            ]),
            vec![&r2],
        ),
        (
            "attribute and state",
            ResourceFilter {
                attr_in: vec![("cpu", vec![cpu(1)])],
                ..states(&["STOPPED"])
            },
            vec![],
        ),
        (
            "state and search",
            ResourceFilter {
                search: Some("web".into()),
                ..states(&["STOPPED"])
            },
            vec![&r2],
        ),
    ];
    for (name, filter, expected) in filtered {
        let listing = store
            .resources(a, filter, EVERYTHING)
            .await
            .expect("resources");
        let got: Vec<&ResourceId> = listing.items.iter().map(|r| &r.id).collect();
        let total = expected.len() as u64;
        assert_eq!((got, listing.total), (expected, total), "{name}");
    }
    // Paged, or another account, region or kind.
    let cpu_2_or_4 = || attrs(vec![("cpu", vec![cpu(2), cpu(4)])]);
    let others = [
        ("a page", a, base(), 1, 2, vec![&r3, &r2], 4),
        ("past the end", a, base(), 4, 2, vec![], 4),
        ("a filtered page", a, cpu_2_or_4(), 2, 5, vec![&r2], 3),
        (
            "another region",
            a,
            listing_filter(sh(), KIND),
            0,
            10,
            vec![&rsh],
            1,
        ),
        (
            "another kind",
            a,
            listing_filter(gz(), "loadbalancer"),
            0,
            10,
            vec![&lb],
            1,
        ),
        ("another account", b, base(), 0, 10, vec![&rb], 1),
    ];
    for (name, account, filter, offset, limit, expected, total) in others {
        let listing = store
            .resources(account, filter, Page { offset, limit })
            .await
            .expect("resources");
        let got: Vec<&ResourceId> = listing.items.iter().map(|r| &r.id).collect();
        assert_eq!((got, listing.total), (expected, total), "{name}");
    }
}

/// Resources created by one submission share their creation time; the listings still
/// order them totally, so paging through them yields each exactly once, in the order of
/// the unpaged listing. Tasks are listed newest (highest ID) first even then.
pub async fn listings_page_through_equal_creation_times_once(store: &dyn Store) {
    let a = account(store, "main").await;
    let ids: Vec<ResourceId> = [7, 3, 9, 1, 5, 2, 8].into_iter().map(ins).collect();
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        ids.iter()
            .map(|id| {
                creating(
                    new_resource(id, KIND, "PENDING", json!({})),
                    Effect::default(),
                )
            })
            .collect(),
        T0,
    );
    let tasks: Vec<RequestId> = submit_new(store, sub).await.accepted().collect();
    assert_eq!(tasks.len(), ids.len());

    let unpaged = store
        .resources(a, listing_filter(gz(), KIND), EVERYTHING)
        .await
        .expect("resources");
    let order: Vec<ResourceId> = unpaged.items.iter().map(|r| r.id.clone()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(sorted, all, "every resource is listed once");
    for limit in [1, 2, 3] {
        let mut paged = Vec::new();
        for offset in (0..ids.len() as u64).step_by(limit as usize) {
            let page = store
                .resources(a, listing_filter(gz(), KIND), Page { offset, limit })
                .await
                .expect("resources");
            assert_eq!(page.total, ids.len() as u64);
            paged.extend(page.items.into_iter().map(|r| r.id));
        }
        assert_eq!(paged, order, "pages of {limit}");
    }

    let mut newest_first = tasks.clone();
    newest_first.reverse();
    let mut paged = Vec::new();
    for offset in (0..tasks.len() as u64).step_by(2) {
        let page = store
            .tasks(a, TaskFilter::default(), Page { offset, limit: 2 })
            .await
            .expect("tasks");
        paged.extend(page.items.into_iter().map(|t| t.id));
    }
    assert_eq!(paged, newest_first, "tasks of one submission, paged");
}

/// A resource's last operation is its latest task, whatever its state, with the error of
/// a failed one; a refused submission does not change it.
pub async fn resource_listing_shows_the_latest_operation(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    let created = instance(store, a, gz(), &r, "RUNNING", json!({}), T0).await;
    assert_eq!(
        must_resource(store, a, &r).await.last_operation,
        last_op(created, "RunInstances", TaskState::Succeeded)
    );
    let stop = effect(Some("STOPPING"), Some("STOPPED"), None);
    let failed = start_task(store, a, &r, "StopInstances", stop.clone(), T0 + 1).await;
    finish(store, failed, TaskOutcome::Failed(fault()), T0 + 2).await;
    let failed_op = Some(LastOperation {
        task: failed,
        action: "StopInstances".into(),
        state: TaskState::Failed,
        error: Some(fault()),
    });
    assert_eq!(must_resource(store, a, &r).await.last_operation, failed_op);

    let (sub, _) = submission(
        a,
        gz(),
        "StartInstances",
        false,
        vec![existing(&r, &["STOPPED"], Effect::default())],
        T0 + 3,
    );
    assert!(
        submit_new(store, sub).await.outcomes[0].1.is_err(),
        "RUNNING refuses StartInstances"
    );
    assert_eq!(
        must_resource(store, a, &r).await.last_operation,
        failed_op,
        "a refusal is no operation"
    );

    let next = start_task(store, a, &r, "StopInstances", stop, T0 + 4).await;
    let mut running = None;
    for (phase, expected) in [
        ("queued", TaskState::Queued),
        ("running", TaskState::Running),
        ("done", TaskState::Succeeded),
    ] {
        match phase {
            "running" => running = Some(claim(store, next, T0 + 5).await),
            "done" => {
                let claimed = running.as_ref().expect("claimed while running");
                complete(store, claimed, success(), T0 + 6).await;
            }
            _ => {}
        }
        let res = must_resource(store, a, &r).await;
        assert_eq!(
            res.last_operation,
            last_op(next, "StopInstances", expected),
            "{phase}"
        );
        assert_eq!(
            res.active_task,
            (phase != "done").then_some(next),
            "{phase}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// accounts and keys
// ---------------------------------------------------------------------------------------

/// Accounts are found by their unique name; keys are found by SecretId with their
/// account's name, can be disabled and enabled again, and are all listed.
pub async fn accounts_and_keys(store: &dyn Store) {
    let main = store
        .create_account("main", T0)
        .await
        .expect("create_account");
    let other = store
        .create_account("other", T0 + 1)
        .await
        .expect("create_account");
    assert_ne!(main, other);
    assert_eq!(
        store.account_by_name("main").await.expect("lookup"),
        Some(main)
    );
    assert_eq!(
        store.account_by_name("other").await.expect("lookup"),
        Some(other)
    );
    assert_eq!(store.account_by_name("nobody").await.expect("lookup"), None);
    assert!(
        store.create_account("main", T0 + 2).await.is_err(),
        "account names are unique"
    );
    assert_eq!(
        store.account_by_name("main").await.expect("lookup"),
        Some(main)
    );

    let id = |s: &str| -> SecretId { s.parse().expect("a SecretId") };
    let (k1, k2, unknown) = (id("AKIDmain1"), id("AKIDother1"), id("AKIDnobody"));
    for (secret_id, secret_key, account, now) in [
        (&k1, "key-1", main, T0 + 10),
        (&k2, "key-2", other, T0 + 20),
    ] {
        store
            .create_key(
                NewApiKey {
                    secret_id: secret_id.clone(),
                    secret_key: secret_key.into(),
                    account,
                    access: KeyAccess::default(),
                },
                now,
            )
            .await
            .expect("create_key");
    }
    let mut key1 = ApiKey {
        secret_id: k1.clone(),
        secret_key: "key-1".into(),
        account: main,
        account_name: "main".into(),
        enabled: true,
        created_at: T0 + 10,
        access: KeyAccess::default(),
        main: true,
        account_blocked: false,
    };
    let mut key2 = ApiKey {
        secret_id: k2.clone(),
        secret_key: "key-2".into(),
        account: other,
        account_name: "other".into(),
        enabled: true,
        created_at: T0 + 20,
        access: KeyAccess::default(),
        main: true,
        account_blocked: false,
    };
    let key = |s: SecretId| async move { store.api_key(&s).await.expect("api_key") };
    assert_eq!(key(k1.clone()).await, Some(key1.clone()));
    assert_eq!(key(k2.clone()).await, Some(key2.clone()));
    assert_eq!(key(unknown.clone()).await, None);

    assert!(store.set_key_enabled(&k1, false).await.expect("disable"));
    key1.enabled = false;
    assert_eq!(key(k1.clone()).await, Some(key1.clone()));
    assert_eq!(key(k2.clone()).await, Some(key2.clone()), "only that key");
    assert!(store.set_key_enabled(&k1, true).await.expect("enable"));
    key1.enabled = true;
    assert_eq!(key(k1.clone()).await, Some(key1.clone()));
    assert!(store.set_key_enabled(&k2, false).await.expect("disable"));
    key2.enabled = false;
    for enabled in [false, true] {
        assert!(
            !store
                .set_key_enabled(&unknown, enabled)
                .await
                .expect("set_key_enabled"),
            "an unknown key (enabled = {enabled})"
        );
    }
    assert_eq!(
        key(unknown).await,
        None,
        "setting an unknown key creates none"
    );

    let mut keys = store.keys().await.expect("keys");
    keys.sort_by(|x, y| x.secret_id.cmp(&y.secret_id));
    assert_eq!(keys, vec![key1, key2]);
}

// ---------------------------------------------------------------------------------------
// audit log

/// Audit entries are kept per account, newest first, and filter by code, resource and
/// time.
pub async fn audit_log_lists_an_accounts_entries_newest_first(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    let entry =
        |account: AccountId, at: UnixMillis, action: &str, code: u32, resources: &[&str]| {
            AuditEntry {
                id: 0,
                at,
                account,
                secret_id: "AKIDaudit".into(),
                source: "10.0.0.1".into(),
                action: action.into(),
                resources: resources.iter().map(|r| r.to_string()).collect(),
                code,
                request_ids: vec!["7".into()],
            }
        };
    for written in [
        entry(a, T0, "RunInstances", 0, &["ins-00000001"]),
        entry(
            a,
            T0 + 1000,
            "StopInstances",
            5100,
            &["ins-00000001", "ins-00000002"],
        ),
        entry(b, T0 + 2000, "StopInstances", 0, &[]),
    ] {
        store.audit(written).await.expect("audit");
    }
    let page = Page {
        offset: 0,
        limit: 10,
    };
    let list = |account: AccountId, filter: AuditFilter| async move {
        store
            .audit_log(account, filter, page)
            .await
            .expect("audit_log")
    };
    let all = list(a, AuditFilter::default()).await;
    assert_eq!(all.total, 2, "only the account's own");
    assert_eq!(all.items[0].action, "StopInstances", "newest first");
    assert!(all.items[0].id > all.items[1].id);
    assert_eq!(all.items[1].resources, vec!["ins-00000001".to_owned()]);
    assert_eq!(all.items[1].request_ids, vec!["7".to_owned()]);
    assert_eq!(all.items[1].source, "10.0.0.1");
    let filtered = [
        AuditFilter {
            code: Some(5100),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource: Some("ins-00000002".into()),
            ..AuditFilter::default()
        },
        AuditFilter {
            from: Some(T0 + 500),
            ..AuditFilter::default()
        },
        AuditFilter {
            action: Some("StopInstances".into()),
            ..AuditFilter::default()
        },
    ];
    for filter in filtered {
        let found = list(a, filter.clone()).await;
        assert_eq!(found.total, 1, "{filter:?}");
        assert_eq!(found.items[0].code, 5100, "{filter:?}");
    }
    assert_eq!(list(b, AuditFilter::default()).await.total, 1);
}

/// A submission carrying its call's audit entry writes it in the submission's own
/// transaction, completed from the answer (code, requestIds); a resent request is
/// audited too; a refused submission writes nothing, leaving the entry to its caller.
pub async fn a_submission_writes_its_audit_entry_with_its_tasks(store: &dyn Store) {
    let a = account(store, "main").await;
    instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let template = AuditEntry {
        id: 0,
        at: T0 + 1,
        account: a,
        secret_id: secret().as_str().to_owned(),
        source: "10.0.0.2".into(),
        action: "StopInstances".into(),
        resources: vec![ins(1).as_str().to_owned()],
        code: 0,
        request_ids: Vec::new(),
    };
    let nonce = fresh_nonce();
    let make = |nonce: NonceClaim| {
        let (mut sub, _) = submission(
            a,
            gz(),
            "StopInstances",
            false,
            vec![existing(&ins(1), &[], stop_effect())],
            T0 + 1,
        );
        sub.nonce = nonce;
        sub.answer = Box::new(|report: &SubmitReport| {
            format!(r#"{{"code":0,"requestId":"{}"}}"#, only_task(report))
        });
        sub.audit = Some(template.clone());
        sub
    };
    let task = submit_new(store, make(nonce.clone())).await;
    let task = only_task(&task).to_string();
    let entries = || async {
        store
            .audit_log(
                a,
                AuditFilter::default(),
                Page {
                    offset: 0,
                    limit: 10,
                },
            )
            .await
            .expect("audit_log")
    };
    let written = entries().await;
    assert_eq!(written.total, 1, "{written:?}");
    let entry = &written.items[0];
    assert_eq!(
        (
            entry.code,
            &entry.request_ids,
            &entry.source,
            &entry.resources
        ),
        (
            0,
            &vec![task.clone()],
            &template.source,
            &template.resources
        ),
        "completed from the answer"
    );

    match store.submit(make(nonce.clone())).await {
        Ok(Submitted::Repeated { .. }) => {}
        other => panic!("the same request again must be Repeated, got {other:?}"),
    }
    let written = entries().await;
    assert_eq!(
        written.total, 2,
        "the resent request is audited: {written:?}"
    );
    assert_eq!(written.items[0].request_ids, vec![task], "{written:?}");

    let forged = nonce_claim(&nonce.secret_id, nonce.nonce.get(), "another signature");
    assert!(
        matches!(
            store.submit(make(forged)).await,
            Err(StoreError::NonceReused { .. })
        ),
        "a reused nonce is refused"
    );
    assert_eq!(
        entries().await.total,
        2,
        "a refused submission writes no entry"
    );
}

// ---------------------------------------------------------------------------------
// Key access, blocked accounts and account limits (issue #8)

/// A key keeps the access it was created with; the first key of each account is its
/// main key; blocking an account shows on every key of it, and only on those.
pub async fn keys_keep_their_access_and_accounts_can_be_blocked(store: &dyn Store) {
    let (a, b) = (account(store, "a").await, account(store, "b").await);
    let id = |s: &str| -> SecretId { s.parse().expect("a SecretId") };
    let restricted = KeyAccess {
        actions: Some(vec!["DescribeInstances".into(), "StopInstances".into()]),
        resources: Some(vec!["ins-*".into(), "lb-00000001".into()]),
        read_only: true,
        rate: Some(RequestRate {
            per_second: 3,
            burst: 6,
        }),
    };
    for (secret_id, account, access, now) in [
        ("AKIDfirstofa", a, KeyAccess::default(), T0),
        ("AKIDsecondofa", a, restricted.clone(), T0 + 1),
        ("AKIDfirstofb", b, KeyAccess::default(), T0 + 2),
    ] {
        let key = NewApiKey {
            secret_id: id(secret_id),
            secret_key: "k".into(),
            account,
            access,
        };
        store.create_key(key, now).await.expect("create_key");
    }
    let key = |s: &str| {
        let s = id(s);
        async move { store.api_key(&s).await.expect("api_key").expect("the key") }
    };
    let (first, second, other) = (
        key("AKIDfirstofa").await,
        key("AKIDsecondofa").await,
        key("AKIDfirstofb").await,
    );
    assert_eq!(first.access, KeyAccess::default());
    assert_eq!(second.access, restricted);
    assert_eq!(
        (first.main, second.main, other.main),
        (true, false, true),
        "the first key of each account is its main key"
    );
    assert!(![&first, &second, &other].iter().any(|k| k.account_blocked));

    assert!(store.set_account_blocked("a", true).await.expect("block"));
    assert!(key("AKIDfirstofa").await.account_blocked);
    assert!(key("AKIDsecondofa").await.account_blocked);
    assert!(!key("AKIDfirstofb").await.account_blocked, "only account a");
    let listed = store.keys().await.expect("keys");
    assert_eq!(listed.iter().filter(|k| k.account_blocked).count(), 2);
    assert!(!store
        .set_account_blocked("nobody", true)
        .await
        .expect("block"));
    assert!(store
        .set_account_blocked("a", false)
        .await
        .expect("unblock"));
    assert!(!key("AKIDfirstofa").await.account_blocked);
}

fn is_limit(result: &StoreResult<Submitted>, what: &str, limit: u64, would_be: u64) -> bool {
    matches!(result, Err(StoreError::LimitExceeded { what: w, limit: l, would_be: n })
        if *w == what && *l == limit && *n == would_be)
}

/// A submission that would take its account over a limit commits nothing; other
/// accounts' tasks and resources do not count.
pub async fn submit_refuses_what_would_exceed_the_account_limits(store: &dyn Store) {
    let (a, b) = (account(store, "a").await, account(store, "b").await);
    for n in 1..=3 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, b, gz(), &ins(9), "RUNNING", json!({}), T0).await;
    start_task(store, b, &ins(9), "StopInstances", stop_effect(), T0).await;
    let tasks_before = task_count(store, a).await;
    let limits = AccountLimits {
        max_unfinished_tasks: 2,
        max_resources: 4,
    };
    let stop = |ids: &[u32]| {
        let tasks = ids
            .iter()
            .map(|n| existing(&ins(*n), &[], stop_effect()))
            .collect();
        let (mut sub, _) = submission(a, gz(), "StopInstances", true, tasks, T0 + 1);
        sub.limits = limits;
        sub
    };
    let over = store.submit(stop(&[1, 2, 3])).await;
    assert!(is_limit(&over, "unfinished tasks", 2, 3), "{over:?}");
    assert_eq!(
        task_count(store, a).await,
        tasks_before,
        "nothing committed"
    );
    assert_eq!(must_resource(store, a, &ins(1)).await.active_task, None);

    submit_new(store, stop(&[1, 2])).await;
    let third = store.submit(stop(&[3])).await;
    assert!(is_limit(&third, "unfinished tasks", 2, 3), "{third:?}");

    let create = |n: u32| {
        let new = new_resource(&ins(n), KIND, "PENDING", json!({}));
        let (mut sub, _) = submission(
            a,
            gz(),
            "RunInstances",
            false,
            vec![creating(new, Effect::default())],
            T0 + 2,
        );
        sub.limits = AccountLimits {
            max_unfinished_tasks: 0,
            ..limits
        };
        sub
    };
    submit_new(store, create(4)).await;
    let fifth = store.submit(create(5)).await;
    assert!(is_limit(&fifth, "resources", 4, 5), "{fifth:?}");
    assert!(resource(store, a, &ins(5)).await.is_none(), "not created");
}

/// Concurrent submissions cannot pass a limit together: the count is taken inside
/// each one's transaction.
pub async fn concurrent_submits_stay_within_the_unfinished_task_limit(store: Arc<dyn Store>) {
    let a = account(store.as_ref(), "a").await;
    for n in 1..=8 {
        instance(store.as_ref(), a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    let submits = (1..=8).map(|n| {
        let store = Arc::clone(&store);
        let (mut sub, _) = submission(
            a,
            gz(),
            "StopInstances",
            false,
            vec![existing(&ins(n), &[], stop_effect())],
            T0 + 1,
        );
        sub.limits = AccountLimits {
            max_unfinished_tasks: 3,
            max_resources: 0,
        };
        tokio::spawn(async move { store.submit(sub).await })
    });
    let mut accepted = 0;
    for handle in submits.collect::<Vec<_>>() {
        match handle.await.expect("the submit task") {
            Ok(Submitted::New { .. }) => accepted += 1,
            Err(StoreError::LimitExceeded { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted, 3, "exactly the limit");
}

/// One test per behaviour of the suite, for a backend's test file: `conformance_tests!(fresh)`
/// where `async fn fresh() -> (Guard, S)` gives a fresh, empty store `S: Store` and what must
/// outlive it (a temporary directory, a database schema). The behaviours that spawn many
/// calls at once run on the multi-threaded runtime. Every backend runs the same list.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:path) => {
        $crate::conformance_tests!(@each $fresh; keys_keep_their_access_and_accounts_can_be_blocked,
            submit_refuses_what_would_exceed_the_account_limits,
            submit_commits_queued_tasks_and_marks_resources_busy,
            submit_refuses_missing_foreign_and_other_region_resources,
            submit_refuses_busy_resources_naming_the_unfinished_task,
            submit_refuses_wrong_state_listing_the_allowed_states,
            submit_reports_outcomes_in_task_order,
            submit_creates_a_group_only_when_a_task_is_accepted,
            submit_create_inserts_the_resource_busy,
            duplicate_resource_rolls_back_the_whole_submission,
            record_nonce_tells_fresh_resent_and_reused,
            a_disabled_key_or_blocked_account_claims_no_nonce,
            submit_resend_gets_the_stored_answer,
            submit_refuses_a_nonce_a_query_used,
            client_token_repeats_the_first_answer,
            client_token_with_other_parameters_is_refused,
            client_tokens_are_per_account,
            client_token_is_forgotten_after_its_window,
            claim_starts_a_queued_task_once,
            complete_success_applies_the_effect,
            complete_failure_restores_the_state,
            complete_ignores_tasks_that_are_not_running,
            recover_requeues_running_tasks,
            recover_requeues_the_running_tasks_of_the_restarted_node,
            fences_grow_with_every_claim,
            renew_needs_the_current_fence,
            a_stale_fence_cannot_complete,
            retry_requeues_the_task_after_its_backoff,
            rescue_requeues_expired_leases_not_kept,
            a_rescued_task_with_a_cancel_request_ends_canceled,
            a_released_task_with_a_cancel_request_hands_on_its_resource,
            release_puts_a_running_task_back,
            recover_returns_only_the_heads_of_resource_queues,
            queued_tasks_wait_behind_a_busy_resource,
            the_queue_moves_on_when_the_head_succeeds,
            a_failed_head_cancels_the_tasks_waiting_behind_it,
            a_precondition_failing_at_promotion_fails_the_task,
            cancel_before_start_ends_the_task,
            cancel_while_running_is_a_request,
            cancel_of_a_final_task_is_too_late,
            cancel_of_a_group_cancels_each_task,
            cancel_finds_only_the_accounts_tasks,
            cancel_of_a_waiting_task_leaves_the_head_alone,
            a_canceled_creation_leaves_the_failure_state,
            purge_deletes_finished_tasks_in_batches,
            purge_deletes_expired_nonces_and_old_client_tokens,
            purge_deletes_idle_resources_of_a_kind_and_state,
            stats_count_tasks_by_state,
            queue_summary_counts_ready_tasks_and_the_oldest_wait,
            task_and_group_reads_are_account_scoped,
            task_listing_filters_and_pages,
            resource_listing_filters_and_pages,
            resource_listing_shows_the_latest_operation,
            listings_page_through_equal_creation_times_once,
            accounts_and_keys,
            audit_log_lists_an_accounts_entries_newest_first,
            a_submission_writes_its_audit_entry_with_its_tasks,
        );
        $crate::conformance_tests!(@concurrent $fresh; concurrent_submits_stay_within_the_unfinished_task_limit,
            concurrent_submits_all_commit_with_distinct_ids,
            a_failing_submit_does_not_disturb_concurrent_ones,
            concurrent_submits_on_one_resource_accept_exactly_one,
            concurrent_claims_have_one_winner,
            concurrent_claims_each_get_their_task_and_fence,
            concurrent_completions_each_record_their_own_outcome,
            a_completion_racing_a_rescue_counts_once,
            one_nonce_sent_at_once_by_many_is_fresh_once,
            one_nonce_raced_by_queries_and_submissions_is_spent_once,
        );
    };
    (@each $fresh:path; $($behaviour:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $behaviour() {
            let (_guard, store) = $fresh().await;
            $crate::conformance::$behaviour(&store).await;
        }
    )*};
    (@concurrent $fresh:path; $($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() {
            let (_guard, store) = $fresh().await;
            $crate::conformance::$behaviour(std::sync::Arc::new(store)).await;
        }
    )*};
}
