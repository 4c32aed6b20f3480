//! What the executor tests share: a claimed task to run, and waits with deadlines.

#![allow(dead_code)] // each test binary uses its own part

use qtask_core::{AccountId, Effect, RequestId, ResourceId, TaskState};
use qtask_store::{ClaimedTask, RunInfo, TaskRecord};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;

pub const REQUEST_ID: u64 = 42;
pub const CHAIN_ID: u64 = 41;
pub const ATTEMPT: u32 = 2;

/// The second attempt of task 42 (chain 41), a BackupDatabases of db-1a2b3c4d.
pub fn claimed_task(params: Value) -> ClaimedTask {
    let task = TaskRecord {
        id: RequestId::new(REQUEST_ID).unwrap(),
        account: AccountId(1001),
        group: Some(RequestId::new(CHAIN_ID).unwrap()),
        action: "BackupDatabases".into(),
        resource: ResourceId::from_stored("db-1a2b3c4d".into()),
        region: "ap-guangzhou".parse().unwrap(),
        params,
        state: TaskState::Running,
        attempts: ATTEMPT,
        created_at: 1_700_000_000_000,
        started_at: Some(1_700_000_000_000),
        finished_at: None,
        error: None,
        result: None,
        effect: Effect::default(),
        run: RunInfo::default(),
    };
    let Value::Object(resource_attrs) = json!({"name": "orders", "engine": "postgres"}) else {
        unreachable!()
    };
    ClaimedTask {
        task,
        fence: 7,
        resource_attrs,
    }
}

/// The document every executor must send for [`claimed_task`].
pub fn expected_document(params: Value) -> Value {
    json!({
        "requestId": REQUEST_ID,
        "action": "BackupDatabases",
        "resourceId": "db-1a2b3c4d",
        "region": "ap-guangzhou",
        "account": 1001,
        "attempt": ATTEMPT,
        "chainId": CHAIN_ID,
        "params": params,
        "resource": {"name": "orders", "engine": "postgres"},
    })
}

/// Polls `condition` until it holds, failing the test after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: still not true after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
