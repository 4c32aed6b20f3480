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
    pub access: KeyAccess,
    /// The account's main key: the first key created for it. Some actions are
    /// reserved to it.
    pub main: bool,
    /// The key's account is blocked: every call with any of its keys is refused.
    pub account_blocked: bool,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub secret_id: SecretId,
    pub secret_key: String,
    pub account: AccountId,
    pub access: KeyAccess,
}

/// What a key may do. The default restricts nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyAccess {
    /// The actions the key may call; `None` = every action.
    pub actions: Option<Vec<String>>,
    /// Resource IDs or patterns (`ins-*`: a trailing `*` matches any rest) the key may
    /// operate on; `None` = every resource.
    pub resources: Option<Vec<String>>,
    /// The key may call only actions that change nothing.
    pub read_only: bool,
    /// The key's request rate, instead of the server's default.
    pub rate: Option<RequestRate>,
}

impl KeyAccess {
    /// Whether the key may operate on `resource` (an ID, matched against the patterns).
    pub fn allows_resource(&self, resource: &str) -> bool {
        self.resources.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => resource.starts_with(prefix),
                    None => resource == pattern,
                })
        })
    }

    pub fn allows_action(&self, action: &str) -> bool {
        self.actions
            .as_ref()
            .is_none_or(|actions| actions.iter().any(|a| a == action))
    }
}

/// A token bucket's settings: `per_second` tokens added each second, at most `burst`
/// kept (a burst of requests after a quiet time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: u32,
    pub burst: u32,
}

impl std::fmt::Display for RequestRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s (burst {})", self.per_second, self.burst)
    }
}

impl std::str::FromStr for RequestRate {
    type Err = String;

    /// `N` (burst N) or `N/BURST`; N at least 1.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |t: &str| {
            t.trim()
                .trim_end_matches("/s")
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    format!("{text:?} is not a rate: write N or N/BURST with N, BURST at least 1")
                })
        };
        match text.split_once('/').filter(|(_, b)| *b != "s") {
            Some((rate, burst)) => Ok(Self {
                per_second: number(rate)?,
                burst: number(burst)?,
            }),
            None => {
                let n = number(text)?;
                Ok(Self {
                    per_second: n,
                    burst: n,
                })
            }
        }
    }
}

/// Per-account ceilings a submission must stay under; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountLimits {
    /// QUEUED or RUNNING tasks.
    pub max_unfinished_tasks: u64,
    /// Resources the account has (in any state, until retention deletes them).
    pub max_resources: u64,
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

/// What a request ID names: one task, or a chain (any group of tasks one call created).
#[derive(Debug, Clone, PartialEq)]
pub enum Named {
    Task(Box<TaskRecord>),
    Chain(GroupRecord),
}

impl Named {
    pub fn tasks(&self) -> &[TaskRecord] {
        match self {
            Named::Task(task) => std::slice::from_ref(task),
            Named::Chain(group) => &group.tasks,
        }
    }

    pub fn into_tasks(self) -> Vec<TaskRecord> {
        match self {
            Named::Task(task) => vec![*task],
            Named::Chain(group) => group.tasks,
        }
    }

    pub fn is_final(&self) -> bool {
        self.tasks().iter().all(|t| t.state.is_final())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn access(resources: &[&str]) -> KeyAccess {
        KeyAccess {
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            ..KeyAccess::default()
        }
    }

    #[test]
    fn resource_patterns_match_exact_ids_and_prefixes() {
        let key = access(&["ins-abc", "lb-*"]);
        assert!(key.allows_resource("ins-abc"));
        assert!(
            !key.allows_resource("ins-abcd"),
            "an exact ID is not a prefix"
        );
        assert!(!key.allows_resource("ins-ab"));
        assert!(key.allows_resource("lb-12345678"));
        assert!(key.allows_resource("lb-"));
        assert!(!key.allows_resource("ins-12345678"));
        assert!(access(&["*"]).allows_resource("anything"));
        assert!(
            !access(&[]).allows_resource("ins-abc"),
            "an empty list allows none"
        );
        assert!(KeyAccess::default().allows_resource("ins-abc"));
    }

    #[test]
    fn actions_are_matched_exactly() {
        let key = KeyAccess {
            actions: Some(vec!["DescribeInstances".into()]),
            ..KeyAccess::default()
        };
        assert!(key.allows_action("DescribeInstances"));
        assert!(!key.allows_action("describeinstances"));
        assert!(!key.allows_action("DescribeInstance"));
        assert!(KeyAccess::default().allows_action("StopInstances"));
    }

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        let rate = |per_second, burst| RequestRate { per_second, burst };
        assert_eq!("5".parse(), Ok(rate(5, 5)));
        assert_eq!("5/s".parse(), Ok(rate(5, 5)));
        assert_eq!("5/20".parse(), Ok(rate(5, 20)));
        for bad in ["0", "", "x", "5/0", "-1", "5/x"] {
            assert!(bad.parse::<RequestRate>().is_err(), "{bad:?}");
        }
        assert_eq!(rate(5, 20).to_string(), "5/s (burst 20)");
    }
}
