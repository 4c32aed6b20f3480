//! The engine: what happens between a verified request and its answer, and after.
//!
//! - [`catalog`]: every action, its parameters, and what it does to resources;
//! - [`Engine::call`]: runs a query, or plans a mutating call's tasks and commits them
//!   through the store (with the nonce, in one transaction) before answering;
//! - [`dispatch`]: hands committed tasks to a pool of workers, which claim them, run
//!   their [`executor`], and record the outcome.
//!
//! Architecture invariant: the engine never sees the wire format. It takes decoded
//! parameters and returns answers through a [`Render`] the server supplies.

pub mod args;
pub mod catalog;
pub mod dispatch;
pub mod events;
pub mod executor;
pub mod maintenance;
pub mod policy;
pub mod quota;
pub mod relay;
pub mod start_delay;
pub mod time;
pub mod views;
pub mod watch;

use args::ArgError;
use catalog::{Catalog, Handler, Plan, QueryContext};
use dispatch::Dispatcher;
use events::{EventBus, EventKind, TaskEvent};
use qtask_core::{
    AccountId, Nonce, Region, Rejection, RequestId, ResourceId, SecretId, UnixMillis,
};
use qtask_store::{
    AccountLimits, AuditEntry, KeyAccess, NonceClaim, NonceOutcome, RequestRate, Runnable, Store,
    StoreError, Submission, Submitted, Target,
};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A verified request, ready for the engine.
#[derive(Debug, Clone)]
pub struct Call {
    pub account: AccountId,
    pub secret_id: SecretId,
    pub nonce: Nonce,
    /// When the request's nonce may be forgotten: past it, its timestamp is refused.
    pub nonce_expires_at: UnixMillis,
    pub signature: String,
    pub action: String,
    pub region: Region,
    /// The action's own parameters (common ones removed), unflattened.
    pub params: Map<String, Value>,
    pub now: UnixMillis,
    /// What the calling key may do.
    pub access: KeyAccess,
    /// Whether the calling key is its account's main key.
    pub main_key: bool,
    /// The client's address as the server saw it (for the audit log).
    pub source: String,
}

/// Actions only an account's main key may call (the first key created for it): the
/// account-wide audit trail.
pub const MAIN_KEY_ONLY: &[&str] = &["DescribeAuditLog"];

/// Actions that answer at once yet change something: refused to read-only keys.
const CHANGING_QUERIES: &[&str] = &["CancelTask"];

/// A successful answer, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A query's data, placed beside `code` and `message`.
    Data(Map<String, Value>),
    /// A query's `data`, already written as JSON (a task or chain, written straight from
    /// its records).
    RawData(RawJson),
    /// A general asynchronous call: the task (or group) ID and any extra fields.
    Accepted {
        request_id: RequestId,
        extra: Map<String, Value>,
    },
    /// A task-chain call: one line per resource, in request order.
    Chain {
        request_id: Option<RequestId>,
        detail: Vec<(ResourceId, Result<RequestId, Refusal>)>,
    },
}

/// JSON already written; equal to another when their texts are.
#[derive(Debug, Clone)]
pub struct RawJson(pub Box<serde_json::value::RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// One resource's refusal, with the noun its catalog uses for it ("instance").
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub noun: &'static str,
    pub resource: ResourceId,
    pub action: String,
    pub rejection: Rejection,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refusal {
            noun,
            resource,
            action,
            rejection,
        } = self;
        match rejection {
            Rejection::NotFound => write!(f, "{noun} {resource} does not exist"),
            Rejection::Busy { task, action: busy } => write!(
                f,
                "{noun} {resource} has an unfinished task {task} ({busy}); {action} can run when it ends"
            ),
            Rejection::WrongState { state, allowed } => {
                let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                write!(f, "{noun} {resource} is {state}; {action} needs it to be {}", allowed.join(" or "))
            }
        }
    }
}

/// Why a call failed as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    InvalidArgument(#[from] ArgError),
    #[error("the action {0} does not exist")]
    UnknownAction(String),
    /// A named thing (task, chain) does not exist for this account.
    #[error("{0}")]
    NotFound(String),
    /// The single resource of a general call refused the operation.
    #[error("{0}")]
    Refused(Refusal),
    #[error("the Nonce was already used by this SecretId for another request")]
    NonceReused,
    /// The request's key was disabled after it was read (the writer refused its nonce).
    #[error("SecretId {0} does not exist or is disabled")]
    KeyDisabled(SecretId),
    /// The account of the request's key was blocked after the key was read.
    #[error("account {0} is blocked")]
    AccountBlocked(String),
    #[error("clientToken {0:?} was already used with a different action or parameters")]
    TokenReused(String),
    /// The key may not call this action (it is not among the key's allowed actions).
    #[error("this key may not call {action}; it may call {}", allowed.join(", "))]
    ActionNotAllowed {
        action: String,
        allowed: Vec<String>,
    },
    #[error("this key is read-only; {0} changes resources")]
    ReadOnlyKey(String),
    /// Resources the key may not operate on, in request order.
    #[error("this key may not operate on {}", .0.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
    ResourcesNotAllowed(Vec<ResourceId>),
    #[error("{0} is reserved to the account's main key")]
    MainKeyOnly(String),
    #[error("request rate limit exceeded: this SecretId may make {0} requests")]
    RateExceeded(RequestRate),
    /// An account limit the request would exceed.
    #[error("{0}")]
    LimitExceeded(String),
    /// A failure of qtask itself; the details go to the log, not to the caller.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NonceReused { .. } => Self::NonceReused,
            StoreError::KeyDisabled(secret_id) => Self::KeyDisabled(secret_id),
            StoreError::AccountBlocked(account) => Self::AccountBlocked(account),
            StoreError::TokenReused { token } => Self::TokenReused(token),
            limit @ StoreError::LimitExceeded { .. } => Self::LimitExceeded(limit.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

pub type Outcome = Result<Answer, EngineError>;

/// Turns an outcome into the body sent to the client. The server supplies it; the
/// engine also calls it inside a submission's transaction, so that the exact answer
/// can be kept for a resent request.
pub trait Render: Send + Sync + 'static {
    fn render(&self, outcome: &Outcome) -> String;
}

pub struct Engine {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    dispatcher: Dispatcher,
    render: Arc<dyn Render>,
    events: EventBus,
    rate_limiter: quota::RateLimiter,
    limits: AccountLimits,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        dispatcher: Dispatcher,
        render: Arc<dyn Render>,
    ) -> Self {
        Self {
            store,
            catalog,
            dispatcher,
            render,
            events: EventBus::default(),
            rate_limiter: quota::RateLimiter::default(),
            limits: AccountLimits::default(),
        }
    }

    /// Sets the request rate of keys without their own (`None` = unlimited) and the
    /// per-account limits every submission is checked against.
    pub fn with_quotas(mut self, default_rate: Option<RequestRate>, limits: AccountLimits) -> Self {
        self.rate_limiter = quota::RateLimiter::new(default_rate);
        self.limits = limits;
        self
    }

    /// Publishes submissions and cancellations on `events` (the workers publish the
    /// rest).
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs one verified call and returns the body to send.
    pub async fn call(&self, call: Call) -> String {
        // A mutating call is audited whatever its outcome: with its tasks when it
        // submits any, else on its own once answered.
        let mut audit = self.audit_entry(&call);
        let body = match self.try_call(call, &mut audit).await {
            Ok(Reply::Fresh(answer)) => self.render.render(&Ok(answer)),
            Ok(Reply::Stored(body)) => body,
            Err(error) => {
                if let EngineError::Internal(detail) = &error {
                    tracing::error!(%detail, "call failed inside qtask");
                }
                self.render.render(&Err(error))
            }
        };
        if let Some(mut entry) = audit {
            entry.complete_from_answer(&body);
            if let Err(error) = self.store.audit(entry).await {
                tracing::error!(%error, "cannot write the audit log");
            }
        }
        body
    }

    /// The checks that need only the key and the action's name: rate, main key, the
    /// key's allowed actions. They come before the action's lookup, so a restricted key
    /// learns nothing about actions it may not call.
    fn admit(&self, call: &Call) -> Result<(), EngineError> {
        self.rate_limiter
            .admit(&call.secret_id, call.access.rate, std::time::Instant::now())
            .map_err(EngineError::RateExceeded)?;
        if !call.main_key && MAIN_KEY_ONLY.contains(&call.action.as_str()) {
            return Err(EngineError::MainKeyOnly(call.action.clone()));
        }
        if !call.access.allows_action(&call.action) {
            return Err(EngineError::ActionNotAllowed {
                action: call.action.clone(),
                allowed: call.access.actions.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Refuses a plan naming existing resources the key may not operate on. Resources
    /// a call creates are not restricted (their IDs are drawn by qtask).
    fn check_resources(call: &Call, plan: &Plan) -> Result<(), EngineError> {
        refuse_resources(
            call,
            plan.tasks.iter().filter_map(|task| match &task.target {
                Target::Existing { id, .. } => Some(id),
                Target::Create(_) => None,
            }),
        )
    }

    /// Refuses a command on stored tasks (CancelTask) when the task, or a task of the
    /// chain, is on a resource the key may not operate on. An ID that names nothing is
    /// left to the command, which answers it.
    async fn check_task_resources(&self, call: &Call) -> Result<(), EngineError> {
        if call.access.resources.is_none() {
            return Ok(());
        }
        let Ok(id) = catalog::parse_request_id(args::Args(&call.params), "requestId") else {
            return Ok(());
        };
        let resources: Vec<_> = match self.store.named(call.account, id).await? {
            Some(named) => named.into_tasks().into_iter().map(|t| t.resource).collect(),
            None => Vec::new(),
        };
        refuse_resources(call, resources.iter())
    }

    /// `audit` is taken once the call's submission wrote it.
    async fn try_call(
        &self,
        call: Call,
        audit: &mut Option<AuditEntry>,
    ) -> Result<Reply, EngineError> {
        self.admit(&call)?;
        let action = self
            .catalog
            .get(&call.action)
            .ok_or_else(|| EngineError::UnknownAction(call.action.clone()))?;
        if call.access.read_only
            && (action.is_mutating() || CHANGING_QUERIES.contains(&action.name))
        {
            return Err(EngineError::ReadOnlyKey(call.action.clone()));
        }
        if CHANGING_QUERIES.contains(&action.name) {
            self.check_task_resources(&call).await?;
        }
        let nonce = NonceClaim {
            secret_id: call.secret_id.clone(),
            nonce: call.nonce,
            expires_at: call.nonce_expires_at,
            signature: call.signature.clone(),
        };
        action.check_params(&call.params)?;
        let ctx = QueryContext {
            store: self.store.as_ref(),
            catalog: &self.catalog,
            dispatcher: &self.dispatcher,
            events: &self.events,
            call: &call,
        };
        let plan = match &action.handler {
            Handler::Query(query) => return self.query(nonce, query(ctx)).await,
            Handler::Describe(spec) => {
                return self
                    .query(nonce, catalog::describe::describe(spec, ctx))
                    .await
            }
            Handler::Mutate(operation) => operation.plan(&call, self.store.as_ref()).await?,
            Handler::Replan(replan) => replan(ctx).await?,
        };
        Self::check_resources(&call, &plan)?;
        self.submit(&call, nonce, plan, audit).await
    }

    /// The audit entry of a mutating call, before its answer; `None` for a query or an
    /// unknown action.
    fn audit_entry(&self, call: &Call) -> Option<AuditEntry> {
        self.audited_resources(call).map(|resources| AuditEntry {
            id: 0,
            at: call.now,
            account: call.account,
            secret_id: call.secret_id.as_str().to_owned(),
            source: call.source.clone(),
            action: call.action.clone(),
            resources,
            code: 0,
            request_ids: Vec::new(),
        })
    }

    /// For a mutating call, the resource IDs it names (for the audit log); `None` for a
    /// query or an unknown action.
    fn audited_resources(&self, call: &Call) -> Option<Vec<String>> {
        let spec = self.catalog.get(&call.action)?;
        if !spec.is_mutating() {
            return None;
        }
        let Handler::Mutate(operation) = &spec.handler else {
            return Some(Vec::new());
        };
        let param = match operation.targets {
            catalog::Targets::One(param) | catalog::Targets::Many(param) => param,
            catalog::Targets::New { .. } => return Some(Vec::new()),
        };
        let ids = match call.params.get(param) {
            Some(Value::String(id)) => vec![id.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(ids)
    }

    /// Opens an event stream for a verified `WatchTaskEvents` call; an error comes as
    /// the rendered body to answer instead.
    pub async fn watch(&self, call: Call) -> Result<watch::Watch, String> {
        let opened = async {
            if call.action != watch::WATCH_ACTION {
                return Err(EngineError::InvalidArgument(args::ArgError::new(
                    "Action",
                    format!("must be {} on the event stream", watch::WATCH_ACTION),
                )));
            }
            self.admit(&call)?;
            let nonce = NonceClaim {
                secret_id: call.secret_id.clone(),
                nonce: call.nonce,
                expires_at: call.nonce_expires_at,
                signature: call.signature.clone(),
            };
            self.store.record_nonce(nonce).await?;
            watch::Watch::open(Arc::clone(&self.store), &self.events, &call).await
        };
        opened
            .await
            .map_err(|error| self.render.render(&Err(error)))
    }

    /// Records a query's nonce, then answers it (or gives the stored answer of a resent
    /// request).
    async fn query(
        &self,
        nonce: NonceClaim,
        answer: impl std::future::Future<Output = Result<Answer, EngineError>>,
    ) -> Result<Reply, EngineError> {
        if let NonceOutcome::Resent { answer: Some(body) } = self.store.record_nonce(nonce).await? {
            return Ok(Reply::Stored(body));
        }
        answer.await.map(Reply::Fresh)
    }

    /// Commits a mutating call's tasks with its nonce, then hands the runnable ones to
    /// the workers.
    async fn submit(
        &self,
        call: &Call,
        nonce: NonceClaim,
        mut plan: Plan,
        audit: &mut Option<AuditEntry>,
    ) -> Result<Reply, EngineError> {
        let mut attempt = 0;
        let submitted = loop {
            let shape = plan.shape.clone();
            let render = Arc::clone(&self.render);
            let submission = Submission {
                account: call.account,
                region: call.region,
                action: plan.action.clone(),
                nonce: nonce.clone(),
                idempotency: plan.idempotency.clone(),
                grouped: plan.shape.grouped(),
                tasks: plan.tasks.clone(),
                now: call.now,
                answer: Box::new(move |report| render.render(&shape.answer(report))),
                limits: self.limits,
                audit: audit.clone(),
            };
            attempt += 1;
            match self.store.submit(submission).await {
                Ok(submitted) => {
                    // Written with the submission.
                    *audit = None;
                    break submitted;
                }
                // A new resource drew an ID that exists; the store rolled the whole
                // submission back, so draw again.
                Err(StoreError::DuplicateResource(id)) if attempt < 5 => {
                    tracing::info!(%id, "a new resource ID collided; drawing again");
                    plan.redraw_ids();
                }
                other => break other?,
            }
        };
        let committed_at = std::time::Instant::now();
        match submitted {
            Submitted::New {
                answer,
                runnable,
                report,
            } => {
                for (resource, outcome) in &report.outcomes {
                    if let Ok(task) = outcome {
                        self.events.publish(TaskEvent {
                            seq: 0,
                            at: call.now,
                            kind: EventKind::Queued,
                            account: call.account,
                            task: *task,
                            chain: report.group,
                            action: plan.action.clone(),
                            resource: resource.clone(),
                            attempt: 0,
                            error: None,
                            result: None,
                            next_attempt_at: None,
                            duration_ms: None,
                            remote: false,
                            calls_back: call.params.contains_key(catalog::CALLBACK_URL),
                        });
                    }
                }
                self.dispatcher
                    .start_delays()
                    .committed(runnable.iter().copied(), committed_at);
                self.dispatcher
                    .enqueue(runnable.into_iter().map(|task| Runnable {
                        task,
                        not_before: call.now,
                    }));
                Ok(Reply::Stored(answer))
            }
            Submitted::Repeated { answer } => Ok(Reply::Stored(answer)),
        }
    }
}

enum Reply {
    Fresh(Answer),
    Stored(String),
}

/// Refuses the call when the key may not operate on some of `resources` (named once
/// each, in order).
fn refuse_resources<'a>(
    call: &Call,
    resources: impl Iterator<Item = &'a ResourceId>,
) -> Result<(), EngineError> {
    let mut refused: Vec<ResourceId> = Vec::new();
    for id in resources {
        if !call.access.allows_resource(id.as_str()) && !refused.contains(id) {
            refused.push(id.clone());
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(EngineError::ResourcesNotAllowed(refused))
    }
}
