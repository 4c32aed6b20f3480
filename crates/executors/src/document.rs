//! The task document both executors send (see the crate docs).

use qtask_store::ClaimedTask;
use serde_json::{json, Value};

/// The JSON object that describes one attempt of `task` to the outside world.
pub fn task_document(task: &ClaimedTask) -> Value {
    let record = &task.task;
    let mut document = json!({
        "requestId": record.id.get(),
        "action": record.action,
        "resourceId": record.resource.as_str(),
        "region": record.region.as_str(),
        "account": record.account.0,
        "attempt": record.attempts,
    });
    if let Some(chain) = record.group {
        document["chainId"] = json!(chain.get());
    }
    document["params"] = record.params.clone();
    document["resource"] = Value::Object(task.resource_attrs.clone());
    document
}
