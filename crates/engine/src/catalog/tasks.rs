//! Task queries: `DescribeTaskResult` and the legacy per-product names that answer
//! the same status integers, and `DescribeTasks`.

use super::{
    attach_callback, idempotency_key, parse_request_id, ActionSpec, AnswerShape, BoxFuture,
    Handler, Plan, QueryContext, QueryFn, Targets,
};
use crate::args::{ArgError, Args};
use crate::dispatch::Dispatcher;
use crate::events::{EventKind, TaskEvent};
use crate::{views, Answer, EngineError, RawJson};
use qtask_core::{RequestId, ResourceId, ResourceState, TaskState};
use qtask_store::{CancelOutcome, Named, Page, PlannedTask, Target, TaskFilter, TaskRecord};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

pub fn actions() -> Vec<ActionSpec> {
    let query = |name: &'static str, params: &'static [&'static str], query: QueryFn| ActionSpec {
        name,
        params,
        handler: Handler::Query(query),
    };
    vec![
        query(
            "DescribeTaskResult",
            &["requestId", "waitSeconds"],
            by_request_id,
        ),
        // Legacy products' names for the same question, with the same status integers.
        query(
            "DescribeLoadBalancersTaskResult",
            &["requestId", "waitSeconds"],
            by_request_id,
        ),
        query(
            "DescribeBmLoadBalancersTaskResult",
            &["requestId", "waitSeconds"],
            by_request_id,
        ),
        query(
            "DescribeVpcTaskResult",
            &["taskId", "waitSeconds"],
            by_task_id,
        ),
        query(
            "DescribeTasks",
            &[
                "status",
                "action",
                "resourceId",
                "startTime",
                "endTime",
                "offset",
                "limit",
            ],
            |ctx| Box::pin(describe_tasks(ctx)),
        ),
        query("CancelTask", &["requestId"], |ctx| {
            Box::pin(cancel_task(ctx))
        }),
        ActionSpec {
            name: "RetryTask",
            params: &["requestId"],
            handler: Handler::Replan(|ctx| Box::pin(retry_task(ctx))),
        },
    ]
}

/// The error for an ID the account has no task or chain under: "expired" when
/// retention may have deleted it, so the two cases read differently.
pub async fn missing(ctx: &QueryContext<'_>, id: RequestId) -> EngineError {
    match ctx.store.purged(ctx.call.account, id).await {
        Ok(true) => EngineError::NotFound(format!(
            "task {id} has expired: finished tasks are deleted after the retention period"
        )),
        Ok(false) => EngineError::NotFound(format!("task {id} does not exist")),
        Err(error) => error.into(),
    }
}

/// The tasks a request ID names: the task, or every task of the chain.
async fn named_tasks(
    ctx: &QueryContext<'_>,
    id: RequestId,
) -> Result<Vec<TaskRecord>, EngineError> {
    match ctx.store.named(ctx.call.account, id).await? {
        Some(named) => Ok(named.into_tasks()),
        None => Err(missing(ctx, id).await),
    }
}

async fn cancel_task(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let id = parse_request_id(Args(&ctx.call.params), "requestId")?;
    let Some(cancellation) = ctx.store.cancel(ctx.call.account, id, ctx.call.now).await? else {
        return Err(missing(&ctx, id).await);
    };
    ctx.dispatcher.enqueue(cancellation.runnable);
    let tasks: Vec<Value> = cancellation
        .tasks
        .iter()
        .map(|(task, outcome)| {
            let (name, message) = match outcome {
                CancelOutcome::Canceled => {
                    let mut event = TaskEvent::of(task, EventKind::Canceled, ctx.call.now);
                    event.error = task.error.clone();
                    ctx.events.publish(event);
                    ("canceled", "canceled before it started".to_owned())
                }
                CancelOutcome::Requested => {
                    ctx.dispatcher.signal_cancel(task.id);
                    (
                        "cancelRequested",
                        "cancel requested while running: the executor has been told; the task \
                         ends CANCELED, or SUCCESS or FAILED if it was past stopping"
                            .to_owned(),
                    )
                }
                CancelOutcome::TooLate => (
                    "tooLate",
                    format!("too late: the task had already ended {}", task.state),
                ),
            };
            json!({
                "requestId": task.id.to_string(),
                "resourceId": task.resource.as_str(),
                "action": task.action,
                "cancel": name,
                "state": task.state.as_str(),
                "status": task.state.legacy_status(),
                "message": message,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("requestId".into(), Value::String(id.to_string()));
    answer.insert("tasks".into(), Value::Array(tasks));
    Ok(Answer::Data(answer))
}

/// Plans new tasks for exactly the resources whose tasks failed or were canceled.
async fn retry_task(ctx: QueryContext<'_>) -> Result<Plan, EngineError> {
    let id = parse_request_id(Args(&ctx.call.params), "requestId")?;
    let tasks = named_tasks(&ctx, id).await?;
    let retried: Vec<&TaskRecord> = tasks
        .iter()
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Canceled))
        .collect();
    let Some(first) = retried.first() else {
        let states: Vec<&str> = tasks.iter().map(|t| t.state.as_str()).collect();
        return Err(ArgError::new(
            "requestId",
            format!(
                "names no failed or canceled task to retry (its tasks are {})",
                states.join(", ")
            ),
        )
        .into());
    };
    let operation = ctx.catalog.operation(&first.action).ok_or_else(|| {
        EngineError::Internal(format!("{} is no longer in the catalog", first.action))
    })?;
    let planned = retried
        .iter()
        .map(|task| {
            let mut effect = task.effect.clone();
            let allowed = match operation.targets {
                // A failed creation left the resource in its failure state: launch it
                // again from there.
                Targets::New { .. } => {
                    effect.transitional =
                        Some(ResourceState::new(operation.resource.initial_state));
                    operation
                        .on_failure
                        .iter()
                        .map(|s| ResourceState::new(s))
                        .collect()
                }
                Targets::One(_) | Targets::Many(_) => operation
                    .allowed
                    .iter()
                    .map(|s| ResourceState::new(s))
                    .collect(),
            };
            // A callback given to RetryTask replaces the original one.
            let mut params = task.params.as_object().cloned().unwrap_or_default();
            attach_callback(ctx.call, &mut params)?;
            Ok(PlannedTask {
                target: Target::Existing {
                    id: task.resource.clone(),
                    allowed,
                },
                params: Value::Object(params),
                effect,
                on_busy: operation.policy.on_busy,
            })
        })
        .collect::<Result<Vec<_>, ArgError>>()?;
    Ok(Plan {
        action: operation.action.to_owned(),
        tasks: planned,
        idempotency: idempotency_key(ctx.call, "RetryTask", &json!({ "requestId": id.get() }))?,
        shape: AnswerShape {
            action: operation.action,
            noun: operation.resource.noun,
            prefix: operation.resource.prefix,
            targets: Targets::Many("requestId"),
        },
    })
}

fn by_request_id(ctx: QueryContext<'_>) -> BoxFuture<'_, Result<Answer, EngineError>> {
    Box::pin(describe_result(ctx, "requestId"))
}

fn by_task_id(ctx: QueryContext<'_>) -> BoxFuture<'_, Result<Answer, EngineError>> {
    Box::pin(describe_result(ctx, "taskId"))
}

/// The longest `waitSeconds` of a long poll.
pub const MAX_WAIT_SECONDS: i64 = 30;

async fn lookup(ctx: &QueryContext<'_>, id: RequestId) -> Result<Named, EngineError> {
    match ctx.store.named(ctx.call.account, id).await? {
        Some(named) => Ok(named),
        None => Err(missing(ctx, id).await),
    }
}

/// DescribeTaskResult, with an optional long poll: `waitSeconds` (≤ 30) holds the
/// answer until the task or chain is final or the time is up. The wait holds no
/// worker and no database connection: it sleeps on the task event bus, and reads again
/// when an event about the task ends it (or every second, for changes no event
/// reports).
async fn describe_result(
    ctx: QueryContext<'_>,
    param: &'static str,
) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let id = parse_request_id(args, param)?;
    let wait = args.int("waitSeconds", 0, MAX_WAIT_SECONDS)?.unwrap_or(0);
    // Subscribed before the first read, so an event between the read and the wait
    // cannot be missed.
    let mut events = (wait > 0).then(|| ctx.events.subscribe());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait as u64);
    let named = loop {
        let named = lookup(&ctx, id).await?;
        let Some(receiver) = events.as_mut() else {
            break named;
        };
        if named.is_final() || tokio::time::Instant::now() >= deadline {
            break named;
        }
        let recheck = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        let mut awaited = Awaited::of(&named);
        loop {
            match tokio::time::timeout_at(recheck, receiver.recv()).await {
                Ok(Ok(event)) => {
                    if event.account == ctx.call.account
                        && awaited.ends_with(event.task, event.kind)
                    {
                        break;
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    events = None;
                    break;
                }
            }
        }
    };
    let described = views::Described {
        named: &named,
        retry_after: (!named.is_final())
            .then(|| retry_after(named.tasks(), ctx.dispatcher, ctx.call.now)),
    };
    let data = serde_json::value::to_raw_value(&described)
        .map_err(|e| EngineError::Internal(format!("a task's view: {e}")))?;
    Ok(Answer::RawData(RawJson(data)))
}

/// The unfinished tasks a long poll waits for, to read the task or chain again only
/// once they have all ended: a chain's tasks end one by one, and reading the whole chain
/// at each end read it up to 100 times.
struct Awaited(HashSet<RequestId>);

impl Awaited {
    fn of(named: &Named) -> Self {
        Self(
            named
                .tasks()
                .iter()
                .filter(|task| !task.state.is_final())
                .map(|task| task.id)
                .collect(),
        )
    }

    /// Whether an event of the caller's account, `kind` of `task`, calls for a new read:
    /// the last awaited task ended, or one failed or was canceled — which may have ended
    /// the tasks queued behind it without events of their own.
    fn ends_with(&mut self, task: RequestId, kind: EventKind) -> bool {
        if !kind.is_final() || !self.0.remove(&task) {
            return false;
        }
        self.0.is_empty() || kind != EventKind::Succeeded
    }
}

/// When to ask again, in whole seconds (at least 1): the longest estimate over the
/// unfinished tasks, from where each stands (running, waiting to retry, queued behind
/// others) and its action's typical attempt time in this process.
fn retry_after(tasks: &[TaskRecord], dispatcher: &Dispatcher, now: i64) -> u64 {
    let estimate = |task: &TaskRecord| -> f64 {
        let typical = dispatcher
            .typical_duration(&task.action)
            .map_or(1.0, |d| d.as_secs_f64());
        let since = |t: Option<i64>| t.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        match task.state {
            TaskState::Running => typical - since(task.started_at),
            TaskState::Queued => {
                let backoff = task
                    .run
                    .next_attempt_at
                    .map_or(0.0, |at| (at - now).max(0) as f64 / 1000.0);
                let ahead = task.run.blocked_by.map_or(0, |(_, position)| position);
                backoff + typical * f64::from(ahead + 1)
            }
            _ => 0.0,
        }
    };
    let longest = tasks
        .iter()
        .filter(|t| t.state.is_unfinished())
        .map(estimate)
        .fold(0.0, f64::max);
    longest.ceil().max(1.0) as u64
}

/// `offset` (default 0) and `limit` (default 20, at most 100).
pub fn page(args: Args<'_>) -> Result<Page, ArgError> {
    Ok(Page {
        offset: args.int("offset", 0, i64::MAX)?.unwrap_or(0) as u64,
        limit: args.int("limit", 1, 100)?.unwrap_or(20) as u64,
    })
}

async fn describe_tasks(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let states = match args.text("status")? {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<TaskState>())
            .collect::<Result<_, _>>()
            .map_err(|e| ArgError::new("status", e.to_string()))?,
    };
    let resource = args
        .bounded_text("resourceId", 64)?
        .map(|id| ResourceId::from_stored(id.to_owned()));
    let filter = TaskFilter {
        states,
        action: args.bounded_text("action", 128)?.map(str::to_owned),
        resource,
        created_from: args.instant("startTime")?,
        // Times have whole seconds: an end time includes its whole second.
        created_to: args.instant("endTime")?.map(|t| t + 999),
    };
    let listing = ctx
        .store
        .tasks(ctx.call.account, filter, page(args)?)
        .await?;
    let mut answer = Map::new();
    answer.insert("totalCount".into(), json!(listing.total));
    answer.insert(
        "taskSet".into(),
        Value::Array(listing.items.iter().map(views::task).collect()),
    );
    Ok(Answer::Data(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    fn id(n: u64) -> RequestId {
        RequestId::new(n).unwrap()
    }

    #[test]
    fn a_long_poll_reads_again_once_every_awaited_task_has_ended() {
        let mut awaited = Awaited(HashSet::from([id(1), id(2), id(3)]));
        let events = [
            (1, Started, false, "not an end"),
            (1, Retrying, false, "not an end"),
            (1, Succeeded, false, "2 and 3 run"),
            (1, Succeeded, false, "seen before"),
            (7, Failed, false, "not awaited"),
            (2, Succeeded, false, "3 runs"),
            (3, Succeeded, true, "the last"),
        ];
        for (task, kind, reads, why) in events {
            assert_eq!(
                awaited.ends_with(id(task), kind),
                reads,
                "{task} {kind:?}: {why}"
            );
        }
    }

    #[test]
    fn a_long_poll_reads_again_when_an_awaited_task_fails_or_is_canceled() {
        // Either may end the tasks queued behind it, which publish no event of their own.
        for kind in [Failed, Canceled] {
            let mut awaited = Awaited(HashSet::from([id(1), id(2)]));
            assert!(awaited.ends_with(id(1), kind), "{kind:?}");
        }
    }
}
