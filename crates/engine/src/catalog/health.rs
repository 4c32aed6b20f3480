//! `DescribeQueueHealth`: how the caller's account's queue stands — its depth, its
//! oldest queued task, and per minute over the last `minutes` how many tasks were
//! submitted and how many ended in each final state (throughput and failure rate).
//!
//! Built from the store's task listing, scoped to the account like every other query:
//! one account never learns another's load.

use super::{ActionSpec, Handler, QueryContext};
use crate::args::Args;
use crate::{time, Answer, EngineError};
use qtask_core::{AccountId, TaskState, UnixMillis};
use qtask_store::{Page, Store, TaskFilter};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

pub fn actions() -> Vec<ActionSpec> {
    vec![ActionSpec {
        name: "DescribeQueueHealth",
        params: &["minutes"],
        handler: Handler::Query(|ctx| Box::pin(describe_queue_health(ctx))),
    }]
}

const MINUTE: i64 = 60_000;
/// The default and the longest window.
const DEFAULT_MINUTES: i64 = 15;
const MAX_MINUTES: i64 = 60;
/// The most tasks one answer reads for its per-minute counts; past it the answer says
/// `complete: false` and counts the newest tasks only.
const MAX_SCANNED: u64 = 5_000;
const SCAN_PAGE: u64 = 100;

/// One minute of the window.
#[derive(Default, Clone, Copy)]
struct Minute {
    submitted: u64,
    succeeded: u64,
    failed: u64,
    canceled: u64,
}

async fn describe_queue_health(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let minutes = args
        .int("minutes", 1, MAX_MINUTES)?
        .unwrap_or(DEFAULT_MINUTES);
    let account = ctx.call.account;
    let now = ctx.call.now;
    let store = ctx.store;

    let queued = count(store, account, TaskState::Queued).await?;
    let running = count(store, account, TaskState::Running).await?;
    let oldest_queued = oldest(store, account, queued).await?;

    // Whole minutes, the current one last (it is still filling).
    let start = (now.div_euclid(MINUTE) - minutes + 1) * MINUTE;
    let mut buckets = vec![Minute::default(); minutes as usize];
    let bucket = |at: UnixMillis| {
        (at >= start)
            .then(|| ((at - start) / MINUTE) as usize)
            .filter(|i| *i < minutes as usize)
    };
    let filter = TaskFilter {
        created_from: Some(start),
        ..TaskFilter::default()
    };
    let mut seen = HashSet::new();
    let mut complete = true;
    let mut offset = 0;
    loop {
        let page = Page {
            offset,
            limit: SCAN_PAGE,
        };
        let listing = store.tasks(account, filter.clone(), page).await?;
        for task in &listing.items {
            // Tasks submitted while paging shift the pages: count each task once.
            if !seen.insert(task.id) {
                continue;
            }
            if let Some(i) = bucket(task.created_at) {
                buckets[i].submitted += 1;
            }
            if let Some(i) = task.finished_at.and_then(bucket) {
                match task.state {
                    TaskState::Succeeded => buckets[i].succeeded += 1,
                    TaskState::Failed => buckets[i].failed += 1,
                    TaskState::Canceled => buckets[i].canceled += 1,
                    TaskState::Queued | TaskState::Running => {}
                }
            }
        }
        offset += SCAN_PAGE;
        if offset >= listing.total || listing.items.is_empty() {
            break;
        }
        if offset >= MAX_SCANNED {
            complete = false;
            break;
        }
    }

    let total = |f: fn(&Minute) -> u64| buckets.iter().map(f).sum::<u64>();
    let succeeded = total(|m| m.succeeded);
    let failed = total(|m| m.failed);
    let canceled = total(|m| m.canceled);
    let finished = succeeded + failed + canceled;
    let timeline: Vec<Value> = buckets
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "time": time::format(start + i as i64 * MINUTE),
                "submitted": m.submitted,
                "succeeded": m.succeeded,
                "failed": m.failed,
                "canceled": m.canceled,
            })
        })
        .collect();

    let mut answer = Map::new();
    answer.insert("queued".into(), json!(queued));
    answer.insert("running".into(), json!(running));
    answer.insert(
        "oldestQueuedTime".into(),
        json!(oldest_queued.map(time::format)),
    );
    answer.insert(
        "oldestQueuedSeconds".into(),
        json!(oldest_queued.map(|at| (now - at).max(0) / 1000)),
    );
    answer.insert("minutes".into(), json!(minutes));
    answer.insert("submitted".into(), json!(total(|m| m.submitted)));
    answer.insert("succeeded".into(), json!(succeeded));
    answer.insert("failed".into(), json!(failed));
    answer.insert("canceled".into(), json!(canceled));
    // FAILED among the tasks that ended in the window; none ended: no rate.
    answer.insert(
        "failureRate".into(),
        json!((finished > 0).then(|| failed as f64 / finished as f64)),
    );
    answer.insert("complete".into(), json!(complete));
    answer.insert("timeline".into(), Value::Array(timeline));
    Ok(Answer::Data(answer))
}

async fn count(
    store: &dyn Store,
    account: AccountId,
    state: TaskState,
) -> Result<u64, EngineError> {
    let filter = TaskFilter {
        states: vec![state],
        ..TaskFilter::default()
    };
    let page = Page {
        offset: 0,
        limit: 1,
    };
    Ok(store.tasks(account, filter, page).await?.total)
}

/// When the account's oldest QUEUED task was submitted: the last of the listing, which
/// is newest first.
async fn oldest(
    store: &dyn Store,
    account: AccountId,
    mut queued: u64,
) -> Result<Option<UnixMillis>, EngineError> {
    let filter = TaskFilter {
        states: vec![TaskState::Queued],
        ..TaskFilter::default()
    };
    // Tasks claimed between the count and the read shorten the list: read again at
    // its new end (a few times at most; then it is busy enough to answer "none").
    for _ in 0..3 {
        if queued == 0 {
            return Ok(None);
        }
        let page = Page {
            offset: queued - 1,
            limit: 1,
        };
        let listing = store.tasks(account, filter.clone(), page).await?;
        if let Some(task) = listing.items.first() {
            return Ok(Some(task.created_at));
        }
        queued = listing.total;
    }
    Ok(None)
}
