//! The final checks that ask the API: are acknowledged requestIds final, has everything
//! drained, does each instance's state agree with its history.

use super::replay::{self, Disagreement, Operation};
use qtask::client::Client;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parallel callers for the per-ID checks.
const CALLERS: usize = 8;
/// The largest page the API serves.
const PAGE: usize = 100;

/// One call that must reach the server (the load is over, nothing kills it now).
async fn call(client: &Client, action: &str, params: &[(&str, String)]) -> Value {
    client
        .call(action, params.iter().map(|(n, v)| (*n, v.clone())))
        .await
        .unwrap_or_else(|e| panic!("{action}: the server does not answer: {e}"))
}

/// Like [`call`], for an answer that must have code 0.
async fn query(client: &Client, action: &str, params: &[(&str, String)]) -> Value {
    let answer = call(client, action, params).await;
    assert_eq!(answer["code"], 0, "{action} {params:?}: {answer}");
    answer
}

/// How many tasks are in `states` (comma-separated names).
pub async fn tasks_in(client: &Client, states: &str) -> u64 {
    let answer = query(
        client,
        "DescribeTasks",
        &[("status", states.into()), ("limit", "1".into())],
    )
    .await;
    answer["totalCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("DescribeTasks has no totalCount: {answer}"))
}

/// Waits until no task is QUEUED or RUNNING; false if `deadline` passed first.
pub async fn drain(client: &Client, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    loop {
        if tasks_in(client, "QUEUED,RUNNING").await == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The acknowledged requestIds that are missing or not final, each with the answer
/// that says so. A chain's ID is final when the chain's aggregate is.
pub async fn unsettled(client: Arc<Client>, ids: &[String]) -> Vec<(String, Value)> {
    let chunk = ids.len().div_ceil(CALLERS).max(1);
    let mut callers = tokio::task::JoinSet::new();
    for part in ids.chunks(chunk) {
        let part = part.to_vec();
        let client = Arc::clone(&client);
        callers.spawn(async move {
            let mut found = Vec::new();
            for id in part {
                let answer =
                    call(&client, "DescribeTaskResult", &[("requestId", id.clone())]).await;
                let final_ =
                    answer["code"] == 0 && matches!(answer["data"]["status"].as_u64(), Some(0 | 1));
                if !final_ {
                    found.push((id, answer));
                }
            }
            found
        });
    }
    let mut found = Vec::new();
    while let Some(part) = callers.join_next().await {
        found.extend(part.expect("a checker task"));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every listed item of a paged query: `key` of each page until `totalCount` are read.
async fn every_page(
    client: &Client,
    action: &str,
    params: &[(&str, String)],
    key: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    loop {
        let mut paged = params.to_vec();
        paged.push(("offset", items.len().to_string()));
        paged.push(("limit", PAGE.to_string()));
        let answer = query(client, action, &paged).await;
        let total = answer["totalCount"].as_u64().unwrap_or(0) as usize;
        let page = answer[key].as_array().cloned().unwrap_or_default();
        let empty = page.is_empty();
        items.extend(page);
        if items.len() >= total || empty {
            return items;
        }
    }
}

/// Every instance as (instanceId, state name).
pub async fn instances(client: &Client) -> Vec<(String, String)> {
    every_page(client, "DescribeInstances", &[], "instanceSet")
        .await
        .iter()
        .map(|i| {
            let text = |key: &str| {
                i[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("an instance without {key}: {i}"))
                    .to_owned()
            };
            (text("instanceId"), text("statusName"))
        })
        .collect()
}

/// The instances whose state disagrees with their history.
pub async fn disagreements(client: &Client, instances: &[(String, String)]) -> Vec<Disagreement> {
    let mut found = Vec::new();
    for (id, state) in instances {
        let history: Vec<Operation> = every_page(
            client,
            "DescribeResourceHistory",
            &[("resourceId", id.clone())],
            "history",
        )
        .await
        .into_iter()
        .map(|op| {
            serde_json::from_value(op.clone())
                .unwrap_or_else(|e| panic!("a history entry of {id} ({e}): {op}"))
        })
        .collect();
        found.extend(replay::check(id, state, history));
    }
    found
}
