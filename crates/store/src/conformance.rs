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
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The clock every check starts from (2023-11-14T22:13:20Z).
const T0: UnixMillis = 1_700_000_000_000;
const KIND: &str = "instance";
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
    };
    (submission, probe)
}

fn token(token: &str, fingerprint: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        token: token.to_owned(),
        fingerprint: fingerprint.to_owned(),
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

/// The task of a one-task report that must have been accepted.
fn only_task(report: &SubmitReport) -> RequestId {
    match report.outcomes.as_slice() {
        [(_, Ok(task))] => *task,
        other => panic!("expected one accepted task, got {other:?}"),
    }
}

/// Claims a task, expecting it to be QUEUED.
async fn claim(store: &dyn Store, task: RequestId, now: UnixMillis) -> ClaimedTask {
    store
        .claim(task, now)
        .await
        .expect("claim")
        .unwrap_or_else(|| panic!("task {task} should be claimable"))
}

/// Claims a QUEUED task and records its outcome.
async fn finish(store: &dyn Store, task: RequestId, outcome: TaskOutcome, now: UnixMillis) {
    claim(store, task, now).await;
    store
        .complete(task, outcome, now)
        .await
        .unwrap_or_else(|e| panic!("complete({task}) failed: {e}"));
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

fn queued_record(
    id: RequestId,
    account: AccountId,
    group: Option<RequestId>,
    action: &str,
    resource: &ResourceId,
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
            existing(&r2, &["RUNNING"], stop),
        ],
        now,
    );
    let (report, answer) = match store.submit(sub).await {
        Ok(Submitted::New { report, answer }) => (report, answer),
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
            queued_record(task, a, Some(group), "StopInstances", id, now),
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
    for phase in ["queued", "running"] {
        if phase == "running" {
            claim(store, stop, T0 + 2).await;
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
    store
        .complete(stop, success(), T0 + 4)
        .await
        .expect("complete");
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
            queued_record(task, a, Some(group), "RunInstances", id, now)
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
    assert_eq!(Value::Object(claimed.resource_attrs), attrs);
    store
        .complete(t1, success(), now + 3)
        .await
        .expect("complete");
    claim(store, t2, now + 2).await;
    store
        .complete(t2, TaskOutcome::Failed(fault()), now + 3)
        .await
        .expect("complete");
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
        Ok(Submitted::New { answer, report }) => (answer, report),
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
        Ok(Submitted::New { answer, report }) => {
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

// ---------------------------------------------------------------------------------------
// claim and complete
// ---------------------------------------------------------------------------------------

/// Claiming moves a QUEUED task to RUNNING once, counting the attempt and returning the
/// resource's attributes; a claimed, final or unknown task cannot be claimed.
pub async fn claim_starts_a_queued_task_once(store: &dyn Store) {
    let a = account(store, "main").await;
    let r = ins(1);
    let attrs = json!({"instanceName": "web", "cpu": 2, "lanIp": "10.0.0.7"});
    instance(store, a, gz(), &r, "RUNNING", attrs.clone(), T0).await;
    let task = start_task(
        store,
        a,
        &r,
        "StopInstances",
        effect(Some("STOPPING"), Some("STOPPED"), None),
        T0 + 1,
    )
    .await;
    let claimed = claim(store, task, T0 + 2).await;
    let expected = TaskRecord {
        state: TaskState::Running,
        attempts: 1,
        started_at: Some(T0 + 2),
        ..queued_record(task, a, None, "StopInstances", &r, T0 + 1)
    };
    assert_eq!(claimed.task, expected, "the claimed task");
    assert_eq!(Value::Object(claimed.resource_attrs), attrs);
    assert_eq!(must_task(store, a, task).await, expected, "as read back");

    assert!(
        store.claim(task, T0 + 3).await.expect("claim").is_none(),
        "a RUNNING task cannot be claimed again"
    );
    assert_eq!(must_task(store, a, task).await, expected, "unchanged");

    store
        .complete(task, success(), T0 + 4)
        .await
        .expect("complete");
    let done = must_task(store, a, task).await;
    assert!(
        store.claim(task, T0 + 5).await.expect("claim").is_none(),
        "a final task cannot be claimed"
    );
    assert_eq!(must_task(store, a, task).await, done);
    assert_eq!(done.state, TaskState::Succeeded);

    let unknown = RequestId::new(task.get() + 1_000).expect("an ID");
    assert!(
        store.claim(unknown, T0 + 6).await.expect("claim").is_none(),
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
        let task = start_task(store, a, &r, case.action, case.effect, T0 + 1).await;
        claim(store, task, T0 + 2).await;
        store
            .complete(
                task,
                TaskOutcome::Succeeded {
                    result: case.result.clone(),
                },
                T0 + 3,
            )
            .await
            .expect("complete");
        assert_eq!(
            must_task(store, a, task).await,
            TaskRecord {
                state: TaskState::Succeeded,
                attempts: 1,
                started_at: Some(T0 + 2),
                finished_at: Some(T0 + 3),
                result: case.result,
                ..queued_record(task, a, None, case.action, &r, T0 + 1)
            },
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
        claim(store, task, T0 + 2).await;
        store
            .complete(task, TaskOutcome::Failed(fault()), T0 + 3)
            .await
            .expect("complete");
        assert_eq!(
            must_task(store, a, task).await,
            TaskRecord {
                state: TaskState::Failed,
                attempts: 1,
                started_at: Some(T0 + 2),
                finished_at: Some(T0 + 3),
                error: Some(fault()),
                ..queued_record(task, a, None, action, &r, T0 + 1)
            },
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

/// Completing a task that is not RUNNING (still QUEUED, or final already) changes
/// nothing. (Whether the store answers such a stale call with `Ok` or an error is its
/// choice; the records must not move.)
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
    finish(
        store,
        done,
        TaskOutcome::Succeeded {
            result: Some(json!(1)),
        },
        T0 + 2,
    )
    .await;

    for (task, id) in [(queued, &r1), (done, &r2)] {
        let task_before = must_task(store, a, task).await;
        let res_before = resource(store, a, id).await;
        for outcome in [success(), TaskOutcome::Failed(fault())] {
            let _whatever = store.complete(task, outcome, T0 + 9).await;
            assert_eq!(
                must_task(store, a, task).await,
                task_before,
                "task {task} is {:?}",
                task_before.state
            );
            assert_eq!(resource(store, a, id).await, res_before, "{id}");
        }
    }
    assert_eq!(must_resource(store, a, &r1).await.state, state("STOPPING"));
    assert_eq!(must_resource(store, a, &r2).await.state, state("STOPPED"));
}

// ---------------------------------------------------------------------------------------
// recovery and durability
// ---------------------------------------------------------------------------------------

/// Recovery puts RUNNING tasks back to QUEUED (their attempts kept, their resources still
/// busy) and returns every unfinished task of every account in submission order.
pub async fn recover_requeues_running_tasks(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    for n in 1..=4 {
        instance(store, a, gz(), &ins(n), "RUNNING", json!({}), T0).await;
    }
    instance(store, b, gz(), &ins(5), "RUNNING", json!({}), T0).await;
    assert_eq!(
        store.recover().await.expect("recover"),
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

    let unfinished = vec![queued, running, other, last];
    for attempt in 1..=2 {
        assert_eq!(
            store.recover().await.expect("recover"),
            unfinished,
            "recovery {attempt}"
        );
        let requeued = must_task(store, a, running).await;
        assert_eq!(requeued.state, TaskState::Queued, "recovery {attempt}");
        assert_eq!(requeued.attempts, attempt, "attempts are kept");
        assert_eq!(requeued.finished_at, None);
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
        let again = claim(store, running, T0 + 10).await;
        assert_eq!(again.task.attempts, attempt + 1, "a new claim counts");
    }
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
    claim(&store, tasks[0], T0 + 2).await;
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
        Ok(Submitted::New { answer, report }) => {
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
    sub.nonce = resend;
    assert_eq!(
        store.submit(sub).await.expect("resend"),
        Submitted::Repeated {
            answer: resend_answer
        },
        "kept answers survive"
    );

    let unfinished = store.recover().await.expect("recover");
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
            Ok(Submitted::New { report, answer }) => (report, answer),
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
    assert_eq!(store.recover().await.expect("recover"), tasks);
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
    for n in 1..=N {
        assert_eq!(
            resource(store.as_ref(), a, &ins(1_000 + n)).await.is_some(),
            !fails(n),
            "ins-{:08}",
            1_000 + n
        );
    }
    for (n, nonce) in retry {
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
    }
    assert_eq!(
        task_count(store.as_ref(), a).await,
        1 + 2 * u64::from(N) - u64::from(committed)
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
    let (sub, _) = submission(
        a,
        gz(),
        "RunInstances",
        true,
        (1..=TASKS)
            .map(|n| {
                creating(
                    new_resource(&ins(n), KIND, "PENDING", json!({})),
                    Effect::default(),
                )
            })
            .collect(),
        T0,
    );
    let tasks: Vec<RequestId> = submit_new(store.as_ref(), sub).await.accepted().collect();
    assert_eq!(tasks.len(), TASKS as usize);
    let handles: Vec<_> = (0..CLAIMERS)
        .flat_map(|_| tasks.iter().copied())
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (task, store.claim(task, T0 + 1).await) })
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

// ---------------------------------------------------------------------------------------
// reads
// ---------------------------------------------------------------------------------------

/// Tasks and groups are read through their account: another account sees none of them,
/// exactly as if they did not exist; a group ID is not a task and a task ID not a group.
pub async fn task_and_group_reads_are_account_scoped(store: &dyn Store) {
    let a = account(store, "main").await;
    let b = account(store, "other").await;
    instance(store, a, gz(), &ins(1), "RUNNING", json!({}), T0).await;
    let theirs = instance(store, b, gz(), &ins(2), "RUNNING", json!({}), T0).await;
    let (sub, _) = submission(
        a,
        gz(),
        "StopInstances",
        true,
        vec![existing(&ins(1), &[], Effect::default())],
        T0 + 1,
    );
    let report = submit_new(store, sub).await;
    let (group, task) = (report.group.expect("a group"), only_task(&report));

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
    for (phase, expected) in [
        ("queued", TaskState::Queued),
        ("running", TaskState::Running),
        ("done", TaskState::Succeeded),
    ] {
        match phase {
            "running" => {
                claim(store, next, T0 + 5).await;
            }
            "done" => store
                .complete(next, success(), T0 + 6)
                .await
                .expect("complete"),
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
    };
    let mut key2 = ApiKey {
        secret_id: k2.clone(),
        secret_key: "key-2".into(),
        account: other,
        account_name: "other".into(),
        enabled: true,
        created_at: T0 + 20,
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
