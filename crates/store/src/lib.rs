//! The store: the one interface through which everything durable is read and written.
//! The engine and the server see only [`Store`]; the binary picks a backend
//! (`qtask-store-sqlite` today).
//!
//! Writes are shaped for group commit: each call is one self-contained command
//! (a whole submission, one claim, one completion) that a backend may commit together
//! with other callers' commands in one transaction, answering each only once that
//! transaction is durable.
//!
//! Architecture invariant: an `Ok` from a write means the write is durable.

use async_trait::async_trait;
use qtask_core::{
    AccountId, Effect, Nonce, Region, Rejection, RequestId, ResourceId, ResourceState, SecretId,
    TaskError, TaskState, UnixMillis,
};
use serde_json::{Map, Value};

pub mod audit;
#[cfg(feature = "conformance")]
pub mod conformance;
mod records;
pub use audit::{AuditEntry, AuditFilter, AuditLog};
pub use records::*;

/// The longest message [`Store::broadcast_event`] carries; longer ones are dropped.
/// (PostgreSQL's NOTIFY payloads stay under 8,000 bytes, with room for a batch header.)
pub const BROADCAST_MESSAGE_MAX: usize = 6_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The nonce was already used by this SecretId for a different request.
    #[error("nonce {nonce} was already used by {secret_id} within the validity window")]
    NonceReused { secret_id: SecretId, nonce: u64 },
    /// The request's key was disabled (after the caller read it).
    #[error("SecretId {0} is disabled")]
    KeyDisabled(SecretId),
    /// The account of the request's key was blocked (after the caller read the key).
    #[error("account {0} is blocked")]
    AccountBlocked(String),
    /// The client token was already used for another action or other parameters.
    #[error("clientToken {token:?} was already used with a different action or parameters")]
    TokenReused { token: String },
    /// A resource to create has an ID that exists already (the caller draws new IDs).
    #[error("resource {0} already exists")]
    DuplicateResource(ResourceId),
    /// A record that must exist does not (an account named by an admin command).
    #[error("{0} not found")]
    NotFound(String),
    /// A submission would take the account over one of its [`AccountLimits`]; it was
    /// rolled back.
    #[error("the account may have at most {limit} {what}; this request would make {would_be}")]
    LimitExceeded {
        what: &'static str,
        limit: u64,
        would_be: u64,
    },
    /// The backend failed (I/O, corruption, a bug): the operation did not happen.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Renders the answer of a submission inside the transaction that commits it, so the
/// exact answer can be kept for a resent request (same nonce, same signature) or a
/// repeated client token. It may be called more than once (a store may run a
/// submission again after one it was grouped with failed); it must not have effects.
pub type AnswerFn = Box<dyn Fn(&SubmitReport) -> String + Send>;

#[async_trait]
pub trait Store: AuditLog + Send + Sync + 'static {
    // --- the write path (group-committed) ---

    /// Records a nonce for a request that changes nothing (a query).
    async fn record_nonce(&self, claim: NonceClaim) -> StoreResult<NonceOutcome>;

    /// Commits a mutating request: its nonce, its tasks and their effect on resources,
    /// all or nothing. Per-resource refusals (not found, busy, wrong state) are part of
    /// the report, not errors.
    async fn submit(&self, submission: Submission) -> StoreResult<Submitted>;

    /// Moves a runnable QUEUED task (at the head of its resource's queue, due) to
    /// RUNNING under `lease`, counts the attempt and draws a new fencing token. `None`
    /// when the task is not claimable (already claimed, final, waiting or not due).
    async fn claim(&self, task: RequestId, lease: Lease) -> StoreResult<Option<ClaimedTask>>;

    /// Extends the lease of a running task, if `fence` still holds it.
    async fn renew(
        &self,
        task: RequestId,
        fence: Fence,
        expires_at: UnixMillis,
    ) -> StoreResult<LeaseStatus>;

    /// Records a RUNNING task's outcome, if `fence` still holds it, and applies its
    /// effect to the resource (or puts it back in the queue for a retry).
    async fn complete(
        &self,
        task: RequestId,
        fence: Fence,
        outcome: TaskOutcome,
        now: UnixMillis,
    ) -> StoreResult<Completion>;

    /// Gives a running task back to the queue without counting an outcome (shutdown, or
    /// a worker that lost its lease): runnable at once — or CANCELED, if a cancel was
    /// requested, and then the resource's next task may run. Returns what can run now;
    /// `None` when `fence` no longer holds the task.
    async fn release(
        &self,
        task: RequestId,
        fence: Fence,
        now: UnixMillis,
    ) -> StoreResult<Option<Vec<Runnable>>>;

    /// Puts RUNNING tasks whose lease expired before `now` back to QUEUED, except those
    /// in `keep` (tasks this process still runs); returns them.
    async fn rescue(&self, now: UnixMillis, keep: Vec<RequestId>) -> StoreResult<Vec<Runnable>>;

    /// At start-up of the node `node` (its lease owner name): puts RUNNING tasks back to
    /// QUEUED — every one on a store this process holds alone; on a shared store only
    /// `node`'s own (a restarted node; other nodes' tasks are rescued once their leases
    /// expire) — then returns every QUEUED task at the head of its resource's queue, in
    /// submission order.
    async fn recover(&self, now: UnixMillis, node: &str) -> StoreResult<Vec<Runnable>>;

    /// Up to `limit` QUEUED tasks at the head of their resource's queue (due now or
    /// later), oldest first: what a node with idle workers may claim.
    async fn ready(&self, limit: u32) -> StoreResult<Vec<Runnable>>;

    // --- several nodes on one database ---

    /// Whether other qtask nodes may use the same database.
    fn shared(&self) -> bool {
        false
    }

    /// Whether this node should run the background maintenance (rescue, retention) now:
    /// always on an exclusive store; on a shared one, exactly one node at a time.
    async fn lead_maintenance(&self) -> StoreResult<bool> {
        Ok(true)
    }

    /// On a shared store: notified when another node committed runnable tasks.
    fn ready_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// On a shared store: sends `message` (one line, at most [`BROADCAST_MESSAGE_MAX`]
    /// bytes) to every other node, best effort: it may be lost, and is never waited for.
    fn broadcast_event(&self, message: String) {
        let _ = message;
    }

    /// On a shared store: the messages other nodes sent with `broadcast_event`, one per
    /// item (a receiver that falls behind misses some).
    fn remote_events(&self) -> Option<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        None
    }

    /// Cancels the task `id`, or every unfinished task of the group `id`. `None` when
    /// the account has no such task or group.
    async fn cancel(
        &self,
        account: AccountId,
        id: RequestId,
        now: UnixMillis,
    ) -> StoreResult<Option<Cancellation>>;

    /// Deletes one batch of what `retention` says has expired. Callers repeat while the
    /// report says a batch was full.
    async fn purge(&self, retention: Retention) -> StoreResult<PurgeReport>;

    // --- reads ---

    async fn api_key(&self, secret_id: &SecretId) -> StoreResult<Option<ApiKey>>;
    async fn task(&self, account: AccountId, id: RequestId) -> StoreResult<Option<TaskRecord>>;
    /// A chain (or any group of tasks one call created) with its tasks.
    async fn group(&self, account: AccountId, id: RequestId) -> StoreResult<Option<GroupRecord>>;
    /// The task or else the chain `id` names, read at one point in time (one read
    /// transaction: the lookups of a `DescribeTaskResult` take and drop the store's
    /// read lock once, not once for each).
    async fn named(&self, account: AccountId, id: RequestId) -> StoreResult<Option<Named>>;
    /// Whether `id` may have been one of the account's tasks or groups that retention
    /// deleted (it is at or below the highest ID purged for the account).
    async fn purged(&self, account: AccountId, id: RequestId) -> StoreResult<bool>;
    /// Engine-wide counters.
    async fn stats(&self) -> StoreResult<StoreStats>;
    /// The tasks ready to run as of `now` that no worker holds: the depth of the work
    /// queue and how long its oldest entry has waited (for metrics; cheap to call).
    async fn queue_summary(&self, now: UnixMillis) -> StoreResult<QueueSummary>;
    async fn tasks(
        &self,
        account: AccountId,
        filter: TaskFilter,
        page: Page,
    ) -> StoreResult<Listing<TaskRecord>>;
    async fn resources(
        &self,
        account: AccountId,
        filter: ResourceFilter,
        page: Page,
    ) -> StoreResult<Listing<ResourceRecord>>;

    // --- administration ---

    async fn create_account(&self, name: &str, now: UnixMillis) -> StoreResult<AccountId>;
    async fn account_by_name(&self, name: &str) -> StoreResult<Option<AccountId>>;
    async fn create_key(&self, key: NewApiKey, now: UnixMillis) -> StoreResult<()>;
    /// Enables or disables a key; false when there is no such key.
    async fn set_key_enabled(&self, secret_id: &SecretId, enabled: bool) -> StoreResult<bool>;
    async fn keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Blocks or unblocks an account by name; false when there is no such account.
    async fn set_account_blocked(&self, name: &str, blocked: bool) -> StoreResult<bool>;
}

/// A request's nonce, kept until its timestamp leaves the validity window.
#[derive(Debug, Clone)]
pub struct NonceClaim {
    pub secret_id: SecretId,
    pub nonce: Nonce,
    pub expires_at: UnixMillis,
    /// The request's signature: equal signatures mean the same request resent.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NonceOutcome {
    Fresh,
    /// The same request again (a client's automatic resend); `answer` is what the first
    /// one got, when that was a mutating request.
    Resent {
        answer: Option<String>,
    },
}

/// A client token: the same token, action and parameters from one account give the
/// first answer again and create nothing.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub token: String,
    /// A digest of the action and its parameters.
    pub fingerprint: String,
    /// Earlier uses of the token count only from this time (24 hours ago): an older
    /// use is forgotten and the token starts afresh.
    pub valid_from: UnixMillis,
}

/// Everything one mutating request commits.
pub struct Submission {
    pub account: AccountId,
    pub region: Region,
    pub action: String,
    pub nonce: NonceClaim,
    pub idempotency: Option<IdempotencyKey>,
    /// Whether the tasks form a group with its own ID (chains, multi-resource creation).
    pub grouped: bool,
    pub tasks: Vec<PlannedTask>,
    pub now: UnixMillis,
    pub answer: AnswerFn,
    /// Checked inside the transaction, so concurrent submissions cannot pass together.
    pub limits: AccountLimits,
    /// The call's audit entry, completed from the answer and written in the same
    /// transaction when the submission succeeds (new or repeated).
    pub audit: Option<AuditEntry>,
}

/// One task of a submission.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub target: Target,
    /// The task's parameters, secrets already removed.
    pub params: Value,
    pub effect: Effect,
    pub on_busy: OnBusy,
}

/// What a submission does with an existing resource that has an unfinished task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBusy {
    /// Refuse the new operation (the legacy API's behaviour).
    #[default]
    Refuse,
    /// Queue it behind the unfinished ones (FIFO per resource). Its state precondition
    /// is checked when it reaches the head of the queue.
    Queue,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// An existing resource: refused unless it exists in the account and region, has no
    /// unfinished task, and is in one of `allowed` (any state when empty).
    Existing {
        id: ResourceId,
        allowed: Vec<ResourceState>,
    },
    /// A resource the task creates; it exists (busy) from submission on.
    Create(NewResource),
}

impl Target {
    pub fn resource_id(&self) -> &ResourceId {
        match self {
            Target::Existing { id, .. } => id,
            Target::Create(new) => &new.id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewResource {
    pub id: ResourceId,
    pub kind: String,
    pub state: ResourceState,
    pub attrs: Map<String, Value>,
}

/// What a submission did: one outcome per planned task, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitReport {
    pub group: Option<RequestId>,
    pub outcomes: Vec<(ResourceId, Result<RequestId, Rejection>)>,
}

impl SubmitReport {
    pub fn accepted(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.outcomes
            .iter()
            .filter_map(|(_, o)| o.as_ref().ok().copied())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Committed now: the accepted tasks are QUEUED; `runnable` ones must be dispatched
    /// (the others wait behind a busy resource).
    New {
        report: SubmitReport,
        answer: String,
        runnable: Vec<RequestId>,
    },
    /// The same request was answered before (a resent nonce or a repeated client
    /// token): nothing new was created.
    Repeated { answer: String },
}

impl Submitted {
    /// The answer to give the caller.
    pub fn answer(&self) -> &str {
        match self {
            Self::New { answer, .. } | Self::Repeated { answer } => answer,
        }
    }
}

/// A fencing token: drawn anew, larger than every earlier one, at each claim. Only the
/// holder of a task's current token may renew its lease or record its outcome.
pub type Fence = u64;

/// A lease a worker asks for when it claims a task.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Who holds it (the qtask node's name), for operators.
    pub owner: String,
    pub now: UnixMillis,
    pub expires_at: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Still held; `cancel_requested` tells the worker to stop the executor.
    Held { cancel_requested: bool },
    /// Another claim (or a rescue, a cancel) took the task: stop and record nothing.
    Lost,
}

/// A claimed task with a snapshot of its resource, for the executor.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task: TaskRecord,
    pub fence: Fence,
    pub resource_attrs: Map<String, Value>,
}

/// A QUEUED task that can run now or from `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runnable {
    pub task: RequestId,
    pub not_before: UnixMillis,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded {
        result: Option<Value>,
    },
    Failed(TaskError),
    /// Failed, but another attempt will run from `not_before`; `error` stays visible
    /// as the last error meanwhile.
    Retry {
        error: TaskError,
        not_before: UnixMillis,
    },
    /// The executor stopped because a cancel was requested.
    Canceled {
        message: String,
    },
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Recorded. `runnable`: tasks that can run now (the next task of the resource's
    /// queue, or this task again for a retry).
    Recorded { runnable: Vec<Runnable> },
    /// Refused: the fence no longer holds the task (its lease was taken over). The
    /// refusal is counted in [`StoreStats::fenced_completions`].
    Fenced,
}

/// What a cancel did to each task it named.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancellation {
    pub tasks: Vec<(TaskRecord, CancelOutcome)>,
    /// Tasks that can run now (queued behind a canceled one).
    pub runnable: Vec<Runnable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It had not started: it is CANCELED and its resource released.
    Canceled,
    /// It is running: its worker is told; it ends CANCELED or reaches its own end.
    Requested,
    /// It was already final.
    TooLate,
}

/// What retention deletes. Each kind is deleted in batches of at most `batch` rows.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Final tasks that finished before this (and groups left without tasks).
    pub tasks_finished_before: UnixMillis,
    /// Nonces whose request timestamp left the validity window.
    pub nonces_expired_before: UnixMillis,
    /// Client tokens first used before this.
    pub tokens_created_before: UnixMillis,
    /// Idle resources of `kind` in `state` since before `before` (returned instances).
    pub resources: Vec<ResourceRetention>,
    pub batch: u32,
}

#[derive(Debug, Clone)]
pub struct ResourceRetention {
    pub kind: String,
    pub state: ResourceState,
    pub idle_before: UnixMillis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub tasks: u64,
    pub groups: u64,
    pub nonces: u64,
    pub tokens: u64,
    pub resources: u64,
    /// Some kind filled its batch: there may be more to delete.
    pub more: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Tasks by state name.
    pub tasks: Vec<(TaskState, u64)>,
    /// Outcomes refused because their worker had lost its lease, ever.
    pub fenced_completions: u64,
}

/// The QUEUED tasks a worker could claim now: at the head of their resource's queue and
/// past any retry backoff (tasks waiting behind another on their resource, or for a
/// backoff to end, are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub ready: u64,
    /// Since when the longest-waiting ready task has been ready: the later of its
    /// submission and the end of its backoff. `None` when no task is ready.
    pub oldest_ready_since: Option<UnixMillis>,
}
