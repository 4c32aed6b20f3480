//! Task events: each change of a task's state this process makes, published on an
//! in-process broadcast channel. The event stream (`/v2/events`), completion callbacks,
//! long polls and metrics subscribe. Publishing never waits: a subscriber that falls
//! behind by more than the channel's capacity misses events and is told how many
//! (`RecvError::Lagged`).
//!
//! On a database shared by several nodes, [`crate::relay`] also publishes the events of
//! the other nodes (marked [`TaskEvent::remote`]), so every node's stream shows the
//! whole cluster's tasks.

use crate::catalog::CALLBACK_URL;
use crate::time;
use qtask_core::{AccountId, RequestId, ResourceId, TaskError, TaskState, UnixMillis};
use qtask_store::TaskRecord;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Committed (or promoted to the head of its resource's queue).
    Queued,
    /// An attempt started.
    Started,
    /// An attempt failed and another will run at `next_attempt_at`.
    Retrying,
    Succeeded,
    Failed,
    Canceled,
    /// Given back to the queue at shutdown.
    Released,
    /// Its worker lost the lease; the attempt was stopped.
    LeaseLost,
    /// Back in the queue because its lease expired (its worker stalled or died).
    Rescued,
    /// A late outcome from a worker that had lost the task was refused.
    Fenced,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        Self::Queued,
        Self::Started,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
        Self::Released,
        Self::LeaseLost,
        Self::Rescued,
        Self::Fenced,
    ];

    /// The name events carry (`"succeeded"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Released => "released",
            Self::LeaseLost => "leaseLost",
            Self::Rescued => "rescued",
            Self::Fenced => "fenced",
        }
    }

    /// The task's state after the event (`None` for a refused late outcome, which
    /// changes nothing).
    pub fn state(self) -> Option<TaskState> {
        match self {
            Self::Queued | Self::Retrying | Self::Released | Self::LeaseLost | Self::Rescued => {
                Some(TaskState::Queued)
            }
            Self::Started => Some(TaskState::Running),
            Self::Succeeded => Some(TaskState::Succeeded),
            Self::Failed => Some(TaskState::Failed),
            Self::Canceled => Some(TaskState::Canceled),
            Self::Fenced => None,
        }
    }

    pub fn is_final(self) -> bool {
        self.state().is_some_and(TaskState::is_final)
    }

    /// The kind named `name` (see [`EventKind::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    /// Increases with every event of this process.
    pub seq: u64,
    pub at: UnixMillis,
    pub kind: EventKind,
    pub account: AccountId,
    pub task: RequestId,
    pub chain: Option<RequestId>,
    pub action: String,
    pub resource: ResourceId,
    pub attempt: u32,
    pub error: Option<TaskError>,
    pub result: Option<Value>,
    pub next_attempt_at: Option<UnixMillis>,
    /// For an attempt's end: how long it ran.
    pub duration_ms: Option<u64>,
    /// Made by another node of a shared database and relayed here (false for the events
    /// of this process). What must happen once per cluster ignores these.
    pub remote: bool,
    /// The task was submitted with a `callbackUrl`: its end is called back (qtask-executors
    /// `callbacks`). Carried here so that the ends of other tasks cost no read.
    pub calls_back: bool,
}

impl TaskEvent {
    /// An event about `task` (its record as the store had it), without a sequence yet.
    pub fn of(task: &TaskRecord, kind: EventKind, at: UnixMillis) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            account: task.account,
            task: task.id,
            chain: task.group,
            action: task.action.clone(),
            resource: task.resource.clone(),
            attempt: task.attempts,
            error: None,
            result: None,
            next_attempt_at: None,
            duration_ms: None,
            remote: false,
            calls_back: task.params.get(CALLBACK_URL).is_some(),
        }
    }

    /// As the event stream and callbacks show it.
    pub fn to_json(&self) -> Value {
        let mut view = json!({
            "seq": self.seq,
            "event": self.kind.name(),
            "time": time::format(self.at),
            "requestId": self.task.to_string(),
            "action": self.action,
            "resourceId": self.resource.as_str(),
            "attempt": self.attempt,
        });
        let fields = view.as_object_mut().expect("an object");
        if let Some(state) = self.kind.state() {
            fields.insert("state".into(), json!(state.as_str()));
            fields.insert("status".into(), json!(state.legacy_status()));
        }
        if let Some(chain) = self.chain {
            fields.insert("chainId".into(), json!(chain.to_string()));
        }
        if let Some(error) = &self.error {
            fields.insert(
                "error".into(),
                json!({"code": error.code, "message": error.message}),
            );
        }
        if let Some(result) = &self.result {
            fields.insert("result".into(), result.clone());
        }
        if let Some(at) = self.next_attempt_at {
            fields.insert("nextAttemptTime".into(), json!(time::format(at)));
        }
        if let Some(ms) = self.duration_ms {
            fields.insert("durationMs".into(), json!(ms));
        }
        view
    }

    /// The event as nodes relay it: one line of JSON, exact to the millisecond and with
    /// its account ([`TaskEvent::to_json`] is for people). Without its result when
    /// `with_result` is false (a result too long to relay).
    pub fn to_relay(&self, with_result: bool) -> String {
        let mut wire = json!({
            "event": self.kind.name(),
            "at": self.at,
            "account": self.account.0,
            "task": self.task.get(),
            "action": self.action,
            "resource": self.resource.as_str(),
            "attempt": self.attempt,
        });
        let fields = wire.as_object_mut().expect("an object");
        if let Some(chain) = self.chain {
            fields.insert("chain".into(), json!(chain.get()));
        }
        if let Some(error) = &self.error {
            fields.insert(
                "error".into(),
                json!({"code": error.code, "message": error.message}),
            );
        }
        if let (Some(result), true) = (&self.result, with_result) {
            fields.insert("result".into(), result.clone());
        }
        if let Some(at) = self.next_attempt_at {
            fields.insert("nextAttemptAt".into(), json!(at));
        }
        if let Some(ms) = self.duration_ms {
            fields.insert("durationMs".into(), json!(ms));
        }
        if self.calls_back {
            fields.insert("callsBack".into(), json!(true));
        }
        wire.to_string()
    }

    /// An event another node relayed ([`TaskEvent::to_relay`]), marked remote and not
    /// numbered yet.
    pub fn from_relay(text: &str) -> Result<Self, String> {
        let wire: Value =
            serde_json::from_str(text).map_err(|e| format!("not a relayed event: {e}"))?;
        let field = |name: &str| wire.get(name).filter(|v| !v.is_null());
        let int = |name: &str| {
            field(name)
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| format!("{name} is not an integer"))
                })
                .transpose()
        };
        let required = |name: &str| int(name)?.ok_or_else(|| format!("{name} is missing"));
        let text = |name: &str| {
            field(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} is missing or not a string"))
        };
        let request_id = |n: i64| {
            u64::try_from(n)
                .ok()
                .and_then(|n| RequestId::new(n).ok())
                .ok_or_else(|| format!("{n} is not a request ID"))
        };
        let kind = text("event")?;
        let error = match field("error") {
            None => None,
            Some(error) => Some(TaskError {
                code: error
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u32::try_from(c).ok())
                    .ok_or("error.code is missing or not a code")?,
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .ok_or("error.message is missing")?
                    .to_owned(),
            }),
        };
        let unsigned =
            |name: &str, n: i64| u64::try_from(n).map_err(|_| format!("{name} is negative"));
        Ok(Self {
            seq: 0,
            at: required("at")?,
            kind: EventKind::from_name(kind).ok_or_else(|| format!("unknown event {kind:?}"))?,
            account: AccountId(required("account")?),
            task: request_id(required("task")?)?,
            chain: int("chain")?.map(request_id).transpose()?,
            action: text("action")?.to_owned(),
            resource: ResourceId::from_stored(text("resource")?.to_owned()),
            attempt: u32::try_from(required("attempt")?)
                .map_err(|_| "attempt is out of range".to_owned())?,
            error,
            // Present only when the event had one (which may be `null`).
            result: wire.get("result").cloned(),
            next_attempt_at: int("nextAttemptAt")?,
            duration_ms: int("durationMs")?
                .map(|ms| unsigned("durationMs", ms))
                .transpose()?,
            remote: true,
            calls_back: field("callsBack").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// The broadcast channel of task events; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<TaskEvent>>,
    /// The next event's number. Held while the event is sent, so that subscribers get
    /// events in the order of their numbers: numbered on one thread while another sent
    /// its event, they had come out of order (the API test
    /// `the_event_stream_delivers_every_event_of_a_chain_in_order_then_ends` saw 5
    /// before 4 once; a unit test could not make the window wide enough to catch it).
    seq: Arc<Mutex<u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl EventBus {
    /// A bus that keeps up to `capacity` events for subscribers that fall behind.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            seq: Arc::new(Mutex::new(1)),
        }
    }

    /// Numbers the event and sends it to every subscriber (none is fine).
    pub fn publish(&self, mut event: TaskEvent) {
        let mut next = self
            .seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        event.seq = *next;
        *next += 1;
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TaskEvent>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended() -> TaskEvent {
        TaskEvent {
            seq: 7,
            at: 1_764_300_000_123,
            kind: EventKind::Retrying,
            account: AccountId(42),
            task: RequestId::new(9_001).unwrap(),
            chain: Some(RequestId::new(9_000).unwrap()),
            action: "StopInstances".into(),
            resource: ResourceId::parse("ins", "ins-0a1b2c3d").unwrap(),
            attempt: 2,
            error: Some(TaskError::operation_failed("line one\nline \"two\"")),
            result: Some(json!({"instanceState": "STOPPED", "none": null})),
            next_attempt_at: Some(1_764_300_005_456),
            duration_ms: Some(1_250),
            remote: false,
            calls_back: true,
        }
    }

    #[test]
    fn relayed_events_round_trip_exactly_on_one_line_and_arrive_remote() {
        let sent = ended();
        let wire = sent.to_relay(true);
        assert!(!wire.contains('\n'), "{wire}");
        let received = TaskEvent::from_relay(&wire).unwrap();
        assert_eq!(
            received,
            TaskEvent {
                seq: 0,
                remote: true,
                ..sent.clone()
            }
        );
        // Every optional part absent.
        let bare = TaskEvent {
            kind: EventKind::Queued,
            chain: None,
            error: None,
            result: None,
            next_attempt_at: None,
            duration_ms: None,
            calls_back: false,
            ..sent.clone()
        };
        let received = TaskEvent::from_relay(&bare.to_relay(true)).unwrap();
        assert_eq!(
            received,
            TaskEvent {
                seq: 0,
                remote: true,
                ..bare
            }
        );
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
    }

    #[test]
    fn a_relayed_event_without_its_result_keeps_the_rest() {
        let sent = ended();
        let received = TaskEvent::from_relay(&sent.to_relay(false)).unwrap();
        assert_eq!(received.result, None);
        assert_eq!(received.error, sent.error);
    }

    #[test]
    fn malformed_relayed_events_are_refused_with_the_field_named() {
        let wire: Value = serde_json::from_str(&ended().to_relay(true)).unwrap();
        for (field, value, expected) in [
            ("event", json!("exploded"), "unknown event"),
            ("task", json!(-1), "not a request ID"),
            ("at", Value::Null, "at is missing"),
            ("attempt", json!("two"), "attempt is not an integer"),
        ] {
            let mut broken = wire.clone();
            broken[field] = value;
            let error = TaskEvent::from_relay(&broken.to_string()).unwrap_err();
            assert!(error.contains(expected), "{field}: {error}");
        }
        assert!(TaskEvent::from_relay("not json").is_err());
    }
}
