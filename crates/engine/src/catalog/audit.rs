//! `DescribeAuditLog`: the account's mutating calls, newest first — who made each
//! (SecretId, source address), what it named, and what it answered.

use super::tasks::page;
use super::{ActionSpec, Handler, QueryContext};
use crate::args::Args;
use crate::{time, Answer, EngineError};
use qtask_store::{AuditEntry, AuditFilter};
use serde_json::{json, Map, Value};

pub fn actions() -> Vec<ActionSpec> {
    vec![ActionSpec {
        name: "DescribeAuditLog",
        params: &[
            "action",
            "secretId",
            "code",
            "resourceId",
            "startTime",
            "endTime",
            "offset",
            "limit",
        ],
        handler: Handler::Query(|ctx| Box::pin(describe_audit_log(ctx))),
    }]
}

async fn describe_audit_log(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let filter = AuditFilter {
        action: args.bounded_text("action", 128)?.map(str::to_owned),
        secret_id: args.bounded_text("secretId", 128)?.map(str::to_owned),
        code: args.int("code", 0, 99_999)?.map(|c| c as u32),
        resource: args.bounded_text("resourceId", 64)?.map(str::to_owned),
        from: args.instant("startTime")?,
        // Times have whole seconds: an end time includes its whole second.
        to: args.instant("endTime")?.map(|t| t + 999),
    };
    let listing = ctx
        .store
        .audit_log(ctx.call.account, filter, page(args)?)
        .await?;
    let mut answer = Map::new();
    answer.insert("totalCount".into(), json!(listing.total));
    answer.insert(
        "auditSet".into(),
        Value::Array(listing.items.iter().map(view).collect()),
    );
    Ok(Answer::Data(answer))
}

fn view(entry: &AuditEntry) -> Value {
    json!({
        "time": time::format(entry.at),
        "secretId": entry.secret_id,
        "sourceIp": entry.source,
        "action": entry.action,
        "resourceIds": entry.resources,
        "code": entry.code,
        "requestIds": entry.request_ids,
    })
}
