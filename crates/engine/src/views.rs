//! How tasks and chains appear in query answers.

use crate::time;
use qtask_core::TaskState;
use qtask_store::{GroupRecord, Named, TaskRecord};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// A task as query answers show it, written straight from its record (a `Value` tree
/// built first, then written, was a tenth of a `describe`).
pub struct TaskView<'a>(pub &'a TaskRecord);

/// A chain as query answers show it: its state as one, and each of its tasks.
pub struct GroupView<'a>(pub &'a GroupRecord);

/// What `DescribeTaskResult` answers as `data`: the task or chain, and when to ask again
/// while it is unfinished.
pub struct Described<'a> {
    pub named: &'a Named,
    pub retry_after: Option<u64>,
}

/// The task as a `Value`, for answers built as trees (listings, callbacks).
pub fn task(record: &TaskRecord) -> Value {
    serde_json::to_value(TaskView(record)).expect("a view has string keys")
}

/// The chain as a `Value`, for answers built as trees (callbacks).
pub fn group(record: &GroupRecord) -> Value {
    serde_json::to_value(GroupView(record)).expect("a view has string keys")
}

/// A time in the answers' layout.
struct Time(i64);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&time::format(self.0))
    }
}

/// An ID written as text, without a `String` of its own.
struct Text<T>(T);

impl<T: std::fmt::Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[derive(Serialize)]
struct ErrorView<'a> {
    code: u32,
    message: &'a str,
}

#[derive(Serialize)]
struct LeaseView<'a> {
    owner: &'a str,
    #[serde(rename = "expiresTime")]
    expires_time: Time,
    #[serde(rename = "fencingToken")]
    fencing_token: u64,
}

impl TaskView<'_> {
    fn entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let record = self.0;
        map.serialize_entry("requestId", &Text(record.id))?;
        map.serialize_entry("status", &record.state.legacy_status())?;
        map.serialize_entry("state", record.state.as_str())?;
        map.serialize_entry("action", &record.action)?;
        map.serialize_entry("resourceId", record.resource.as_str())?;
        map.serialize_entry("region", record.region.as_str())?;
        map.serialize_entry("createTime", &Time(record.created_at))?;
        map.serialize_entry("startTime", &record.started_at.map(Time))?;
        map.serialize_entry("endTime", &record.finished_at.map(Time))?;
        map.serialize_entry("attempts", &record.attempts)?;
        if let Some(group) = record.group {
            map.serialize_entry("chainId", &Text(group))?;
        }
        if let Some(error) = &record.error {
            let error = ErrorView {
                code: error.code,
                message: &error.message,
            };
            map.serialize_entry("error", &error)?;
        }
        if let Some(result) = &record.result {
            map.serialize_entry("result", result)?;
        }
        let run = &record.run;
        if let Some(at) = run.next_attempt_at {
            map.serialize_entry("nextAttemptTime", &Time(at))?;
        }
        if let Some((ahead, position)) = run.blocked_by {
            map.serialize_entry("blockedBy", &Text(ahead))?;
            map.serialize_entry("queuePosition", &position)?;
        }
        if let Some(lease) = &run.lease {
            let lease = LeaseView {
                owner: &lease.owner,
                expires_time: Time(lease.expires_at),
                fencing_token: run.fence,
            };
            map.serialize_entry("lease", &lease)?;
        }
        if run.cancel_requested {
            map.serialize_entry("cancelRequested", &true)?;
        }
        Ok(())
    }
}

impl GroupView<'_> {
    fn entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let record = self.0;
        let state = TaskState::aggregate(record.tasks.iter().map(|t| t.state));
        let started = record.tasks.iter().filter_map(|t| t.started_at).min();
        let finished = if state.is_final() {
            record.tasks.iter().filter_map(|t| t.finished_at).max()
        } else {
            None
        };
        map.serialize_entry("requestId", &Text(record.id))?;
        map.serialize_entry("status", &state.legacy_status())?;
        map.serialize_entry("state", state.as_str())?;
        map.serialize_entry("action", &record.action)?;
        map.serialize_entry("createTime", &Time(record.created_at))?;
        map.serialize_entry("startTime", &started.map(Time))?;
        map.serialize_entry("endTime", &finished.map(Time))?;
        map.serialize_entry("taskCount", &record.tasks.len())?;
        map.serialize_entry("taskStates", &StateCounts(&record.tasks))?;
        map.serialize_entry("tasks", &Tasks(&record.tasks))?;
        Ok(())
    }
}

/// How many of a chain's tasks are in each state, every state named.
struct StateCounts<'a>(&'a [TaskRecord]);

impl Serialize for StateCounts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(TaskState::ALL.len()))?;
        for wanted in TaskState::ALL {
            let count = self.0.iter().filter(|t| t.state == wanted).count();
            map.serialize_entry(wanted.as_str(), &count)?;
        }
        map.end()
    }
}

struct Tasks<'a>(&'a [TaskRecord]);

impl Serialize for Tasks<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(TaskView))
    }
}

impl Serialize for TaskView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.entries(&mut map)?;
        map.end()
    }
}

impl Serialize for GroupView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.entries(&mut map)?;
        map.end()
    }
}

impl Serialize for Described<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.named {
            Named::Task(task) => TaskView(task).entries(&mut map)?,
            Named::Chain(group) => GroupView(group).entries(&mut map)?,
        }
        if let Some(seconds) = self.retry_after {
            map.serialize_entry("retryAfter", &seconds)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtask_core::{AccountId, Effect, RequestId, ResourceId, TaskError};
    use qtask_store::{LeaseInfo, RunInfo};

    fn id(n: u64) -> RequestId {
        RequestId::new(n).expect("an ID")
    }

    fn record(n: u64, state: TaskState) -> TaskRecord {
        TaskRecord {
            id: id(n),
            account: AccountId(1),
            group: Some(id(7)),
            action: "StopInstances".into(),
            resource: ResourceId::from_stored(format!("ins-{n}")),
            region: "gz".parse().expect("a region"),
            params: Value::Null,
            state,
            attempts: 1,
            created_at: 1_796_605_325_000,
            started_at: Some(1_796_605_326_000),
            finished_at: state.is_final().then_some(1_796_605_327_000),
            error: None,
            result: None,
            effect: Effect::default(),
            run: RunInfo::default(),
        }
    }

    /// Every field a task can show, in the order the answers have always had.
    #[test]
    fn a_task_shows_its_fields_in_order() {
        let mut task = record(8, TaskState::Running);
        task.error = Some(TaskError {
            code: 2,
            message: "a \"quoted\" failure".into(),
        });
        task.result = Some(serde_json::json!({"b": 1, "a": [true]}));
        task.run = RunInfo {
            next_attempt_at: Some(1_796_605_328_000),
            lease: Some(LeaseInfo {
                owner: "node-a".into(),
                expires_at: 1_796_605_329_000,
            }),
            fence: 3,
            cancel_requested: true,
            blocked_by: Some((id(5), 2)),
        };
        let written = serde_json::to_string(&TaskView(&task)).expect("written");
        assert_eq!(
            written,
            concat!(
                r#"{"requestId":"8","status":2,"state":"RUNNING","action":"StopInstances","#,
                r#""resourceId":"ins-8","region":"ap-guangzhou","createTime":"2026-12-07 01:02:05","#,
                r#""startTime":"2026-12-07 01:02:06","endTime":null,"attempts":1,"chainId":"7","#,
                r#""error":{"code":2,"message":"a \"quoted\" failure"},"result":{"b":1,"a":[true]},"#,
                r#""nextAttemptTime":"2026-12-07 01:02:08","blockedBy":"5","queuePosition":2,"#,
                r#""lease":{"owner":"node-a","expiresTime":"2026-12-07 01:02:09","fencingToken":3},"#,
                r#""cancelRequested":true}"#
            )
        );
        assert_eq!(
            super::task(&record(9, TaskState::Succeeded))["endTime"],
            "2026-12-07 01:02:07"
        );
    }

    #[test]
    fn a_chain_shows_its_state_counts_tasks_and_when_to_ask_again() {
        let chain = GroupRecord {
            id: id(7),
            action: "StopInstances".into(),
            created_at: 1_796_605_325_000,
            tasks: vec![
                record(8, TaskState::Succeeded),
                record(9, TaskState::Running),
            ],
        };
        let named = Named::Chain(chain);
        let described = Described {
            named: &named,
            retry_after: Some(3),
        };
        let written: Value =
            serde_json::from_str(&serde_json::to_string(&described).expect("written"))
                .expect("JSON");
        let keys: Vec<&str> = written
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "requestId",
                "status",
                "state",
                "action",
                "createTime",
                "startTime",
                "endTime",
                "taskCount",
                "taskStates",
                "tasks",
                "retryAfter"
            ]
        );
        assert_eq!(written["state"], "RUNNING");
        assert_eq!(written["endTime"], Value::Null, "unfinished");
        assert_eq!(written["taskCount"], 2);
        assert_eq!(
            written["taskStates"],
            serde_json::json!({"QUEUED": 0, "RUNNING": 1, "SUCCESS": 1, "FAILED": 0, "CANCELED": 0})
        );
        assert_eq!(written["tasks"][1]["requestId"], "9");
        assert_eq!(written["retryAfter"], 3);
    }
}
