//! Task queries: `DescribeTaskResult` and the legacy per-product names that answer
//! the same status integers, and `DescribeTasks`.

use super::{parse_request_id, ActionSpec, BoxFuture, Handler, QueryContext, QueryFn};
use crate::args::{ArgError, Args};
use crate::{time, views, Answer, EngineError};
use qtask_core::{ResourceId, TaskState};
use qtask_store::{Page, TaskFilter};
use serde_json::{json, Map, Value};

pub fn actions() -> Vec<ActionSpec> {
    let query = |name: &'static str, params: &'static [&'static str], query: QueryFn| ActionSpec {
        name,
        params,
        handler: Handler::Query(query),
    };
    vec![
        query("DescribeTaskResult", &["requestId"], by_request_id),
        // Legacy products' names for the same question, with the same status integers.
        query(
            "DescribeLoadBalancersTaskResult",
            &["requestId"],
            by_request_id,
        ),
        query(
            "DescribeBmLoadBalancersTaskResult",
            &["requestId"],
            by_request_id,
        ),
        query("DescribeVpcTaskResult", &["taskId"], by_task_id),
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
    ]
}

fn by_request_id(ctx: QueryContext<'_>) -> BoxFuture<'_, Result<Answer, EngineError>> {
    Box::pin(describe_result(ctx, "requestId"))
}

fn by_task_id(ctx: QueryContext<'_>) -> BoxFuture<'_, Result<Answer, EngineError>> {
    Box::pin(describe_result(ctx, "taskId"))
}

async fn describe_result(
    ctx: QueryContext<'_>,
    param: &'static str,
) -> Result<Answer, EngineError> {
    let id = parse_request_id(Args(&ctx.call.params), param)?;
    let account = ctx.call.account;
    let data = match ctx.store.task(account, id).await? {
        Some(task) => views::task(&task),
        None => match ctx.store.group(account, id).await? {
            Some(group) => views::group(&group),
            None => return Err(EngineError::NotFound(format!("task {id} does not exist"))),
        },
    };
    let mut answer = Map::new();
    answer.insert("data".into(), data);
    Ok(Answer::Data(answer))
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
    let instant = |name: &str| -> Result<Option<i64>, ArgError> {
        args.text(name)?
            .map(|text| {
                time::parse(text).ok_or_else(|| {
                    ArgError::new(
                        name,
                        "must be YYYY-MM-DD HH:MM:SS (UTC) or a Unix time in seconds",
                    )
                })
            })
            .transpose()
    };
    let resource = args
        .bounded_text("resourceId", 64)?
        .map(|id| ResourceId::from_stored(id.to_owned()));
    let filter = TaskFilter {
        states,
        action: args.bounded_text("action", 128)?.map(str::to_owned),
        resource,
        created_from: instant("startTime")?,
        // Times have whole seconds: an end time includes its whole second.
        created_to: instant("endTime")?.map(|t| t + 999),
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
