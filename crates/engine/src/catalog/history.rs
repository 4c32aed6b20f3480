//! `DescribeResourceHistory`: every operation on one resource, newest first — an
//! instance-actions log.

use super::tasks::page;
use super::{ActionSpec, Handler, QueryContext};
use crate::args::{ArgError, Args};
use crate::{views, Answer, EngineError};
use qtask_core::ResourceId;
use qtask_store::{Page, ResourceFilter, TaskFilter};
use serde_json::{json, Map, Value};

pub fn actions() -> Vec<ActionSpec> {
    vec![ActionSpec {
        name: "DescribeResourceHistory",
        params: &["resourceId", "offset", "limit"],
        handler: Handler::Query(|ctx| Box::pin(describe_history(ctx))),
    }]
}

async fn describe_history(ctx: QueryContext<'_>) -> Result<Answer, EngineError> {
    let args = Args(&ctx.call.params);
    let text = args.required_text("resourceId")?;
    if text.len() > 64 {
        return Err(ArgError::new("resourceId", "is longer than 64 characters").into());
    }
    let resource = ResourceId::from_stored(text.to_owned());
    let filter = TaskFilter {
        resource: Some(resource.clone()),
        ..TaskFilter::default()
    };
    let listing = ctx
        .store
        .tasks(ctx.call.account, filter, page(args)?)
        .await?;
    if listing.total == 0 && !exists(&ctx, &resource).await? {
        return Err(EngineError::NotFound(format!(
            "resource {resource} does not exist in {}",
            ctx.call.region
        )));
    }
    let mut answer = Map::new();
    answer.insert("resourceId".into(), json!(resource.as_str()));
    answer.insert("totalCount".into(), json!(listing.total));
    answer.insert(
        "history".into(),
        Value::Array(listing.items.iter().map(views::task).collect()),
    );
    Ok(Answer::Data(answer))
}

/// Whether the account has the resource in the call's region (a resource whose history
/// retention deleted still has an empty history).
async fn exists(ctx: &QueryContext<'_>, resource: &ResourceId) -> Result<bool, EngineError> {
    for kind in ctx.catalog.resource_types() {
        if !resource.as_str().starts_with(&format!("{}-", kind.prefix)) {
            continue;
        }
        let filter = ResourceFilter {
            kind: kind.kind.to_owned(),
            region: ctx.call.region,
            ids: vec![resource.clone()],
            states: Vec::new(),
            search: None,
            name_attr: "",
            attr_in: Vec::new(),
        };
        let found = ctx
            .store
            .resources(
                ctx.call.account,
                filter,
                Page {
                    offset: 0,
                    limit: 1,
                },
            )
            .await?;
        if found.total > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}
