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

#[cfg(feature = "conformance")]
pub mod conformance;
mod records;
pub use records::*;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The nonce was already used by this SecretId for a different request.
    #[error("nonce {nonce} was already used by {secret_id} within the validity window")]
    NonceReused { secret_id: SecretId, nonce: u64 },
    /// The client token was already used for another action or other parameters.
    #[error("clientToken {token:?} was already used with a different action or parameters")]
    TokenReused { token: String },
    /// A resource to create has an ID that exists already (the caller draws new IDs).
    #[error("resource {0} already exists")]
    DuplicateResource(ResourceId),
    /// A record that must exist does not (an account named by an admin command).
    #[error("{0} not found")]
    NotFound(String),
    /// The backend failed (I/O, corruption, a bug): the operation did not happen.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Renders the answer of a submission inside the transaction that commits it, so the
/// exact answer can be kept for a resent request (same nonce, same signature) or a
/// repeated client token.
pub type AnswerFn = Box<dyn FnOnce(&SubmitReport) -> String + Send>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // --- the write path (group-committed) ---

    /// Records a nonce for a request that changes nothing (a query).
    async fn record_nonce(&self, claim: NonceClaim) -> StoreResult<NonceOutcome>;

    /// Commits a mutating request: its nonce, its tasks and their effect on resources,
    /// all or nothing. Per-resource refusals (not found, busy, wrong state) are part of
    /// the report, not errors.
    async fn submit(&self, submission: Submission) -> StoreResult<Submitted>;

    /// Moves a QUEUED task to RUNNING and counts the attempt. `None` when the task is not
    /// QUEUED (already claimed or final).
    async fn claim(&self, task: RequestId, now: UnixMillis) -> StoreResult<Option<ClaimedTask>>;

    /// Records a RUNNING task's outcome and applies its effect to the resource.
    async fn complete(
        &self,
        task: RequestId,
        outcome: TaskOutcome,
        now: UnixMillis,
    ) -> StoreResult<()>;

    /// At start-up: puts tasks left RUNNING by a previous process back to QUEUED and
    /// returns every QUEUED task in submission order.
    async fn recover(&self) -> StoreResult<Vec<RequestId>>;

    // --- reads ---

    async fn api_key(&self, secret_id: &SecretId) -> StoreResult<Option<ApiKey>>;
    async fn task(&self, account: AccountId, id: RequestId) -> StoreResult<Option<TaskRecord>>;
    /// A chain (or any group of tasks one call created) with its tasks.
    async fn group(&self, account: AccountId, id: RequestId) -> StoreResult<Option<GroupRecord>>;
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
}

/// One task of a submission.
#[derive(Debug, Clone)]
pub struct PlannedTask {
    pub target: Target,
    /// The task's parameters, secrets already removed.
    pub params: Value,
    pub effect: Effect,
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
    /// Committed now: `tasks` are QUEUED and must be dispatched.
    New {
        report: SubmitReport,
        answer: String,
    },
    /// The same request was answered before (a resent nonce or a repeated client
    /// token): nothing new was created.
    Repeated { answer: String },
}

/// A claimed task with a snapshot of its resource, for the executor.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub task: TaskRecord,
    pub resource_attrs: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded { result: Option<Value> },
    Failed(TaskError),
}

impl TaskOutcome {
    pub fn state(&self) -> TaskState {
        match self {
            Self::Succeeded { .. } => TaskState::Succeeded,
            Self::Failed(_) => TaskState::Failed,
        }
    }
}
