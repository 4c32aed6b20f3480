//! How tasks and chains appear in query answers.

use crate::time;
use qtask_core::TaskState;
use qtask_store::{GroupRecord, TaskRecord};
use serde_json::{json, Map, Value};

fn optional_time(millis: Option<i64>) -> Value {
    millis.map_or(Value::Null, |t| Value::String(time::format(t)))
}

pub fn task(record: &TaskRecord) -> Value {
    let mut view = json!({
        "requestId": record.id.to_string(),
        "status": record.state.legacy_status(),
        "state": record.state.as_str(),
        "action": record.action,
        "resourceId": record.resource.as_str(),
        "region": record.region.as_str(),
        "createTime": time::format(record.created_at),
        "startTime": optional_time(record.started_at),
        "endTime": optional_time(record.finished_at),
        "attempts": record.attempts,
    });
    let fields = view.as_object_mut().expect("a JSON object");
    if let Some(group) = record.group {
        fields.insert("chainId".into(), Value::String(group.to_string()));
    }
    if let Some(error) = &record.error {
        fields.insert(
            "error".into(),
            json!({"code": error.code, "message": error.message}),
        );
    }
    if let Some(result) = &record.result {
        fields.insert("result".into(), result.clone());
    }
    let run = &record.run;
    if let Some(at) = run.next_attempt_at {
        fields.insert("nextAttemptTime".into(), Value::String(time::format(at)));
    }
    if let Some((ahead, position)) = run.blocked_by {
        fields.insert("blockedBy".into(), Value::String(ahead.to_string()));
        fields.insert("queuePosition".into(), json!(position));
    }
    if let Some(lease) = &run.lease {
        fields.insert(
            "lease".into(),
            json!({
                "owner": lease.owner,
                "expiresTime": time::format(lease.expires_at),
                "fencingToken": run.fence,
            }),
        );
    }
    if run.cancel_requested {
        fields.insert("cancelRequested".into(), Value::Bool(true));
    }
    view
}

pub fn group(record: &GroupRecord) -> Value {
    let state = TaskState::aggregate(record.tasks.iter().map(|t| t.state));
    let started = record.tasks.iter().filter_map(|t| t.started_at).min();
    let finished = if state.is_final() {
        record.tasks.iter().filter_map(|t| t.finished_at).max()
    } else {
        None
    };
    let count = |wanted: TaskState| record.tasks.iter().filter(|t| t.state == wanted).count();
    let counts: Map<String, Value> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(count(*s))))
        .collect();
    json!({
        "requestId": record.id.to_string(),
        "status": state.legacy_status(),
        "state": state.as_str(),
        "action": record.action,
        "createTime": time::format(record.created_at),
        "startTime": optional_time(started),
        "endTime": optional_time(finished),
        "taskCount": record.tasks.len(),
        "taskStates": counts,
        "tasks": record.tasks.iter().map(task).collect::<Vec<_>>(),
    })
}
