//! What reads return, and the filters they take.

use qtask_core::{
    AccountId, Effect, Region, RequestId, ResourceId, ResourceState, SecretId, TaskError,
    TaskState, UnixMillis,
};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub secret_id: SecretId,
    pub secret_key: String,
    pub account: AccountId,
    pub account_name: String,
    pub enabled: bool,
    pub created_at: UnixMillis,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub secret_id: SecretId,
    pub secret_key: String,
    pub account: AccountId,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: RequestId,
    pub account: AccountId,
    pub group: Option<RequestId>,
    pub action: String,
    pub resource: ResourceId,
    pub region: Region,
    pub params: Value,
    pub state: TaskState,
    pub attempts: u32,
    pub created_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    /// The error of a failed task, or the last error of a task waiting to retry.
    pub error: Option<TaskError>,
    pub result: Option<Value>,
    /// What the task does to its resource.
    pub effect: Effect,
    pub run: RunInfo,
}

/// Where an unfinished task stands in the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunInfo {
    /// A QUEUED task waiting to retry: when the next attempt may start.
    pub next_attempt_at: Option<UnixMillis>,
    /// A RUNNING task's lease.
    pub lease: Option<LeaseInfo>,
    /// The fencing token of the latest claim (0 before the first).
    pub fence: u64,
    pub cancel_requested: bool,
    /// A QUEUED task waiting behind another on its resource: that task, and how many
    /// unfinished tasks are ahead of this one (1 = next).
    pub blocked_by: Option<(RequestId, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseInfo {
    pub owner: String,
    pub expires_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: RequestId,
    pub action: String,
    pub created_at: UnixMillis,
    pub tasks: Vec<TaskRecord>,
}

/// The latest operation on a resource, as the resource listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastOperation {
    pub task: RequestId,
    pub action: String,
    pub state: TaskState,
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRecord {
    pub id: ResourceId,
    pub kind: String,
    pub region: Region,
    pub state: ResourceState,
    pub attrs: Map<String, Value>,
    pub created_at: UnixMillis,
    pub active_task: Option<RequestId>,
    pub last_operation: Option<LastOperation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub total: u64,
    pub items: Vec<T>,
}

#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub action: Option<String>,
    pub resource: Option<ResourceId>,
    pub created_from: Option<UnixMillis>,
    pub created_to: Option<UnixMillis>,
}

#[derive(Debug, Clone)]
pub struct ResourceFilter {
    pub kind: String,
    pub region: Region,
    pub ids: Vec<ResourceId>,
    pub states: Vec<ResourceState>,
    /// Matches a substring of the ID or of the `name_attr` attribute.
    pub search: Option<String>,
    pub name_attr: &'static str,
    /// Each entry keeps resources whose attribute equals one of the values (text or
    /// integer JSON values).
    pub attr_in: Vec<(&'static str, Vec<Value>)>,
}
