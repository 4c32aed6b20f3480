//! The action catalog: every action qtask answers, its parameters, and — for mutating
//! actions — what it does to the resources it names.
//!
//! A mutating action is an [`Operation`]: which resources it targets (one, a list, or
//! new ones), the states they must be in, the state they show while the task runs and
//! the one they end in. The store applies those rules atomically at submission; the
//! executor only does the work.

pub mod audit;
pub mod describe;
pub mod file;
pub mod health;
pub mod history;
pub mod params;
pub mod tasks;

use crate::args::{ArgError, Args};
use crate::dispatch::Dispatcher;
use crate::maintenance::CLIENT_TOKEN_LIFETIME;
use crate::policy::Policy;
use crate::{Answer, Call, EngineError, Outcome, Refusal};
use file::ExecutorSpec;
use params::{Generator, ParamRule};
use qtask_core::{Effect, RequestId, ResourceId, ResourceState};
use qtask_store::{IdempotencyKey, NewResource, PlannedTask, Store, SubmitReport, Target};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Parameters every mutating action accepts besides its own.
pub const CLIENT_TOKEN: &str = "clientToken";
/// Where to POST the result when the task (or the whole chain) is final.
pub const CALLBACK_URL: &str = "callbackUrl";
/// Stored beside the callback URL: the SecretId whose key signs the callback.
pub const CALLBACK_SECRET_ID: &str = "callbackSecretId";
/// Parameters every mutating action takes besides its own.
pub const MUTATING_COMMON: [&str; 2] = [CLIENT_TOKEN, CALLBACK_URL];

/// What a query handler sees.
pub struct QueryContext<'a> {
    pub store: &'a dyn Store,
    pub catalog: &'a Catalog,
    pub dispatcher: &'a Dispatcher,
    pub events: &'a crate::events::EventBus,
    pub call: &'a Call,
}

pub type QueryFn = for<'a> fn(QueryContext<'a>) -> BoxFuture<'a, Result<Answer, EngineError>>;

/// Plans a mutating call from what the store holds (RetryTask).
pub type ReplanFn = for<'a> fn(QueryContext<'a>) -> BoxFuture<'a, Result<Plan, EngineError>>;

pub enum Handler {
    /// Answers at once: built-in queries, and commands that create no task
    /// (CancelTask).
    Query(QueryFn),
    /// A query declared in a catalog: lists resources through a view.
    Describe(&'static describe::DescribeSpec),
    /// Creates tasks, committed with the request's nonce before the answer.
    Mutate(Box<Operation>),
    /// Creates tasks planned from stored ones (RetryTask).
    Replan(ReplanFn),
}

pub struct ActionSpec {
    pub name: &'static str,
    /// The action's own parameters (top-level names); anything else is refused.
    pub params: &'static [&'static str],
    pub handler: Handler,
}

impl ActionSpec {
    pub fn is_mutating(&self) -> bool {
        matches!(self.handler, Handler::Mutate(_) | Handler::Replan(_))
    }

    /// Refuses parameters the action does not know, so a typo is an error rather than a
    /// silently ignored setting.
    pub fn check_params(&self, params: &Map<String, Value>) -> Result<(), ArgError> {
        let mutating = self.is_mutating();
        for name in params.keys() {
            let known = self.params.contains(&name.as_str())
                || (mutating && MUTATING_COMMON.contains(&name.as_str()));
            if !known {
                let mut accepted: Vec<&str> = self.params.to_vec();
                if mutating {
                    accepted.extend(MUTATING_COMMON);
                }
                let hint = if accepted.is_empty() {
                    "it takes no parameters".to_owned()
                } else {
                    format!("it takes {}", accepted.join(", "))
                };
                return Err(ArgError::new(
                    name,
                    format!("is not a parameter of {}; {hint}", self.name),
                ));
            }
        }
        Ok(())
    }
}

/// A resource type: what its IDs look like, what it is called in messages, and its
/// states.
#[derive(Debug)]
pub struct ResourceType {
    /// Stored as the resource's kind.
    pub kind: &'static str,
    pub noun: &'static str,
    pub prefix: &'static str,
    pub states: &'static [StateSpec],
    /// The state a new resource shows while its creation runs.
    pub initial_state: &'static str,
    /// The state of a resource that is gone for good (a returned instance): retention
    /// deletes it after a grace period.
    pub retired_state: Option<&'static str>,
    /// The attribute a search word matches besides the ID.
    pub name_attribute: Option<&'static str>,
}

#[derive(Debug)]
pub struct StateSpec {
    pub name: &'static str,
    /// The legacy API's status integer, where the state has one.
    pub legacy_status: Option<u8>,
}

impl ResourceType {
    pub fn has_state(&self, name: &str) -> bool {
        self.states.iter().any(|s| s.name == name)
    }

    pub fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|s| s.name).collect()
    }

    pub fn legacy_status(&self, state: &str) -> Option<u8> {
        self.states
            .iter()
            .find(|s| s.name == state)
            .and_then(|s| s.legacy_status)
    }

    /// The states a legacy status integer stands for.
    pub fn states_with_status(&self, status: i64) -> Vec<ResourceState> {
        self.states
            .iter()
            .filter(|s| s.legacy_status.map(i64::from) == Some(status))
            .map(|s| ResourceState::new(s.name))
            .collect()
    }
}

/// Which resources a mutating action operates.
#[derive(Debug, Clone, Copy)]
pub enum Targets {
    /// One existing resource named by this parameter: a general asynchronous call.
    One(&'static str),
    /// A list of existing resources named by this parameter: a task-chain call.
    Many(&'static str),
    /// New resources (as many as `count_param` says, 1 by default, at most
    /// `max_count`), in the type's initial state; their IDs are answered under
    /// `answer_key`.
    New {
        count_param: Option<&'static str>,
        max_count: usize,
        answer_key: &'static str,
    },
}

pub struct Operation {
    pub action: &'static str,
    pub resource: &'static ResourceType,
    pub targets: Targets,
    /// States the resource must be in; empty means any.
    pub allowed: &'static [&'static str],
    pub transitional: Option<&'static str>,
    /// `None` returns to the state before the task.
    pub on_success: Option<&'static str>,
    pub on_failure: Option<&'static str>,
    /// The action's own parameters.
    pub params: &'static [ParamRule],
    /// Attributes generated for each new resource.
    pub generate: &'static [Generator],
    pub executor: ExecutorSpec,
    /// Attempts, timeout, backoff, and what a busy resource does.
    pub policy: Policy,
}

/// The tasks of one call, ready for the store.
pub struct Plan {
    /// The action the tasks run (for RetryTask, the retried one's).
    pub action: String,
    pub tasks: Vec<PlannedTask>,
    pub idempotency: Option<IdempotencyKey>,
    pub shape: AnswerShape,
}

impl Plan {
    /// Draws new IDs for resources to create (after an ID collision).
    pub fn redraw_ids(&mut self) {
        for task in &mut self.tasks {
            if let Target::Create(new) = &mut task.target {
                let prefix = self.shape.prefix;
                new.id = new_resource_id(prefix);
            }
        }
    }
}

/// How a submission's report becomes the answer.
#[derive(Debug, Clone)]
pub struct AnswerShape {
    pub action: &'static str,
    pub noun: &'static str,
    pub prefix: &'static str,
    pub targets: Targets,
}

impl AnswerShape {
    pub fn grouped(&self) -> bool {
        !matches!(self.targets, Targets::One(_))
    }

    pub fn answer(&self, report: &SubmitReport) -> Outcome {
        let refusal = |resource: &ResourceId, rejection: &qtask_core::Rejection| Refusal {
            noun: self.noun,
            resource: resource.clone(),
            action: self.action.to_owned(),
            rejection: rejection.clone(),
        };
        match self.targets {
            Targets::One(_) => match report.outcomes.first() {
                Some((_, Ok(task))) => Ok(Answer::Accepted {
                    request_id: *task,
                    extra: Map::new(),
                }),
                Some((resource, Err(rejection))) => {
                    Err(EngineError::Refused(refusal(resource, rejection)))
                }
                None => Err(EngineError::Internal(
                    "a general call planned no task".into(),
                )),
            },
            Targets::Many(_) => Ok(Answer::Chain {
                request_id: report.group,
                detail: report
                    .outcomes
                    .iter()
                    .map(|(resource, outcome)| {
                        (
                            resource.clone(),
                            outcome.as_ref().copied().map_err(|r| refusal(resource, r)),
                        )
                    })
                    .collect(),
            }),
            Targets::New { answer_key, .. } => {
                let group = report
                    .group
                    .ok_or_else(|| EngineError::Internal("a creation was refused".into()))?;
                let ids: Vec<Value> = report
                    .outcomes
                    .iter()
                    .map(|(id, _)| Value::String(id.to_string()))
                    .collect();
                let mut extra = Map::new();
                extra.insert(answer_key.to_owned(), Value::Array(ids));
                Ok(Answer::Accepted {
                    request_id: group,
                    extra,
                })
            }
        }
    }
}

impl Operation {
    pub async fn plan(&self, call: &Call, store: &dyn Store) -> Result<Plan, EngineError> {
        let args = Args(&call.params);
        let count = match self.targets {
            Targets::New {
                count_param,
                max_count,
                ..
            } => Some(match count_param {
                Some(param) => args.int(param, 1, max_count as i64)?.unwrap_or(1) as usize,
                None => 1,
            }),
            Targets::One(_) | Targets::Many(_) => None,
        };
        let prepared = params::prepare(call, self.params, self.generate, count).await?;
        // After the checks of form, so a malformed ID is named as such.
        params::check_references(call, self.params, store).await?;
        let state = |s: Option<&'static str>| s.map(ResourceState::new);
        let effect = Effect {
            transitional: state(self.transitional),
            on_success: state(self.on_success),
            on_failure: state(self.on_failure),
            patch: prepared.patch,
        };
        let allowed: Vec<ResourceState> =
            self.allowed.iter().map(|s| ResourceState::new(s)).collect();
        let existing = |id: ResourceId| Target::Existing {
            id,
            allowed: allowed.clone(),
        };
        let targets: Vec<Target> = match self.targets {
            Targets::One(param) => vec![existing(args.resource_id(param, self.resource.prefix)?)],
            Targets::Many(param) => args
                .resource_ids(param, self.resource.prefix)?
                .into_iter()
                .map(existing)
                .collect(),
            Targets::New { .. } => prepared
                .new_resources
                .into_iter()
                .map(|attrs| {
                    Target::Create(NewResource {
                        id: new_resource_id(self.resource.prefix),
                        kind: self.resource.kind.to_owned(),
                        state: ResourceState::new(self.resource.initial_state),
                        attrs,
                    })
                })
                .collect(),
        };
        let mut stored = prepared.stored_params;
        let idempotency = idempotency_key(call, self.action, &Value::Object(stored.clone()))?;
        attach_callback(call, &mut stored)?;
        let params_of = task_params(stored, self.targets);
        Ok(Plan {
            action: self.action.to_owned(),
            tasks: targets
                .into_iter()
                .map(|target| PlannedTask {
                    params: params_of(target.resource_id()),
                    target,
                    effect: effect.clone(),
                    on_busy: self.policy.on_busy,
                })
                .collect(),
            idempotency,
            shape: AnswerShape {
                action: self.action,
                noun: self.resource.noun,
                prefix: self.resource.prefix,
                targets: self.targets,
            },
        })
    }
}

/// What each task of a call stores as its parameters: the call's, as they apply to the
/// task's own resource — a chain's task names only its resource in the IDs parameter.
/// (With every ID in every task, a chain of n resources stored n² IDs: ≈ 180 KB for a
/// 100-resource `StopInstances`, all serialized by the store's writer.)
fn task_params(stored: Map<String, Value>, targets: Targets) -> impl Fn(&ResourceId) -> Value {
    let ids_param = match targets {
        Targets::Many(param) => Some(param),
        Targets::One(_) | Targets::New { .. } => None,
    };
    let mut shared = stored;
    if let Some(param) = ids_param {
        // Emptied once here, filled per task below: no copy of every ID per task.
        if let Some(ids) = shared.get_mut(param) {
            *ids = Value::Array(Vec::new());
        }
    }
    move |resource| {
        let mut params = shared.clone();
        if let Some(Value::Array(ids)) = ids_param.and_then(|param| params.get_mut(param)) {
            ids.push(Value::String(resource.as_str().to_owned()));
        }
        Value::Object(params)
    }
}

/// Checks the call's `callbackUrl`, if any, and stores beside it the SecretId whose
/// key will sign the callback (a SecretId is not a secret; its key stays in the key
/// store).
pub fn attach_callback(call: &Call, stored: &mut Map<String, Value>) -> Result<(), ArgError> {
    let Some(text) = Args(&call.params).bounded_text(CALLBACK_URL, 1024)? else {
        return Ok(());
    };
    let url = url::Url::parse(text)
        .map_err(|e| ArgError::new(CALLBACK_URL, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ArgError::new(
            CALLBACK_URL,
            "must be an http:// or https:// URL",
        ));
    }
    stored.insert(CALLBACK_URL.into(), Value::String(text.to_owned()));
    stored.insert(
        CALLBACK_SECRET_ID.into(),
        Value::String(call.secret_id.as_str().to_owned()),
    );
    Ok(())
}

/// The call's client token, if it has one, with the digest that tells a repeat from a
/// different request.
pub fn idempotency_key(
    call: &Call,
    action: &str,
    stored_params: &Value,
) -> Result<Option<IdempotencyKey>, ArgError> {
    Ok(Args(&call.params)
        .bounded_text(CLIENT_TOKEN, 64)?
        .map(|token| IdempotencyKey {
            token: token.to_owned(),
            fingerprint: fingerprint(action, stored_params),
            valid_from: call
                .now
                .saturating_sub(CLIENT_TOKEN_LIFETIME.as_millis() as i64),
        }))
}

/// A digest of an action and its stored parameters (secrets are not stored, so a
/// repeated client token with only a different password counts as the same request).
fn fingerprint(action: &str, params: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(action.as_bytes());
    hasher.update([0]);
    hasher.update(params.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Draws the ID of a resource to create.
///
/// IDs follow creation time: a store's indexes on resource IDs then take new rows at
/// one end, as they do task IDs. Random IDs put each creation on its own page of every
/// such index, and each of those pages into the commit (measured: a third of the WAL
/// frames of a `RunInstances`; BENCHMARKS.md). The suffix's value is the time in
/// 1/64 s intervals (the high bits, wrapping every 2.3 hours) and a counter that starts
/// at a random value in each interval (the low 22 bits): one process never draws an ID
/// twice, and two nodes creating in the same interval rarely meet. When they do, the
/// store refuses the duplicate and the engine draws again.
pub fn new_resource_id(prefix: &'static str) -> ResourceId {
    static NEXT: Mutex<(u64, u64)> = Mutex::new((0, 0));
    const COUNTER_BITS: u32 = 22;
    const INTERVAL_BITS: u32 = 19;
    let interval = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
        / 16;
    let value = {
        let mut next = NEXT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last_interval, counter) = &mut *next;
        // A clock that steps back keeps counting in the last interval.
        if interval > *last_interval {
            *last_interval = interval;
            *counter = rand::random::<u64>() & ((1 << COUNTER_BITS) - 1);
        }
        let value = (*last_interval % (1 << INTERVAL_BITS)) << COUNTER_BITS | *counter;
        *counter = (*counter + 1) & ((1 << COUNTER_BITS) - 1);
        value
    };
    ResourceId::ordered(prefix, value)
}

/// The parameters to store for a task: the call's own, without the client token and
/// without any parameter named in `secrets`.
pub fn storable(call: &Call, secrets: &[&str]) -> Map<String, Value> {
    call.params
        .iter()
        .filter(|(name, _)| name.as_str() != CLIENT_TOKEN && !secrets.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

pub struct Catalog {
    actions: HashMap<&'static str, ActionSpec>,
    resource_types: Vec<&'static ResourceType>,
}

impl Catalog {
    /// The built-in catalog: the task queries and the embedded catalog files (the
    /// simulated CVM).
    pub fn builtin() -> Self {
        Self::load(&[]).expect("the built-in catalog is valid").0
    }

    /// The built-in catalog files, then `extra` files in order (a later definition of
    /// a resource type or action replaces an earlier one). Also returns the merged
    /// files, for `qtask catalog show`.
    pub fn load(
        extra: &[file::CatalogSource],
    ) -> Result<(Self, file::CatalogFile), file::CatalogError> {
        let sources: Vec<file::CatalogSource> = file::BUILTIN
            .iter()
            .map(|(name, text)| file::CatalogSource {
                name: (*name).to_owned(),
                text: (*text).to_owned(),
                dir: None,
            })
            .chain(extra.iter().cloned())
            .collect();
        file::load(&sources)
    }

    /// The actions written in code: task queries, CancelTask, RetryTask, history.
    fn with_builtin_queries() -> Self {
        let mut catalog = Self {
            actions: HashMap::new(),
            resource_types: Vec::new(),
        };
        for spec in tasks::actions()
            .into_iter()
            .chain(history::actions())
            .chain(health::actions())
            .chain(audit::actions())
        {
            let previous = catalog.actions.insert(spec.name, spec);
            assert!(previous.is_none(), "an action is defined twice");
        }
        catalog
    }

    pub fn get(&self, action: &str) -> Option<&ActionSpec> {
        self.actions.get(action)
    }

    pub fn operation(&self, action: &str) -> Option<&Operation> {
        match &self.get(action)?.handler {
            Handler::Mutate(operation) => Some(operation),
            Handler::Query(_) | Handler::Describe(_) | Handler::Replan(_) => None,
        }
    }

    /// Replaces an action's policy (from the configuration file).
    pub fn set_policy(&mut self, action: &str, policy: Policy) -> Result<(), String> {
        match self.actions.get_mut(action).map(|spec| &mut spec.handler) {
            Some(Handler::Mutate(operation)) => {
                operation.policy = policy;
                Ok(())
            }
            _ => Err(format!("{action} is not an action that creates tasks")),
        }
    }

    pub fn resource_types(&self) -> impl Iterator<Item = &'static ResourceType> + '_ {
        self.resource_types.iter().copied()
    }

    /// Every action name, sorted.
    pub fn action_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.actions.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The resource type a stored kind names.
    pub fn resource_type(&self, kind: &str) -> Option<&'static ResourceType> {
        self.resource_types.iter().copied().find(|t| t.kind == kind)
    }
}

/// A group's request ID, or a task's, as a query names it.
pub fn parse_request_id(args: Args<'_>, name: &str) -> Result<RequestId, ArgError> {
    let text = args.required_text(name)?;
    text.parse()
        .map_err(|e| ArgError::new(name, format!("{e} (got {text:?})")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use qtask_core::{AccountId, Nonce};
    use serde_json::json;

    /// A verified call of `action` with `params`, for the catalog's tests.
    pub(crate) fn call(action: &str, params: Value) -> Call {
        Call {
            account: AccountId(1),
            secret_id: "AKIDtest".parse().unwrap(),
            nonce: Nonce::new(1).unwrap(),
            nonce_expires_at: 0,
            signature: String::new(),
            action: action.into(),
            region: "ap-guangzhou".parse().unwrap(),
            params: params.as_object().unwrap().clone(),
            now: 0,
            access: Default::default(),
            main_key: true,
            source: "127.0.0.1".into(),
        }
    }

    #[tokio::test]
    async fn each_task_of_a_chain_stores_the_call_parameters_for_its_own_resource() {
        let dir = tempfile::tempdir().expect("a directory");
        let store = qtask_store_sqlite::open(&dir.path().join("qtask.db")).expect("a store");
        let call = call(
            "StopInstances",
            json!({
                "instanceIds": ["ins-00000001", "ins-00000002", "ins-00000003"],
                "forceStop": "true",
            }),
        );
        let catalog = Catalog::builtin();
        let plan = catalog
            .operation("StopInstances")
            .unwrap()
            .plan(&call, &store)
            .await
            .expect("a plan");
        let stored: Vec<(String, Value)> = plan
            .tasks
            .iter()
            .map(|task| (task.target.resource_id().to_string(), task.params.clone()))
            .collect();
        assert_eq!(
            stored,
            ["ins-00000001", "ins-00000002", "ins-00000003"]
                .iter()
                .map(|id| (
                    id.to_string(),
                    json!({"instanceIds": [id], "forceStop": "true"})
                ))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn new_resource_ids_are_distinct_well_formed_and_follow_creation() {
        let ids: Vec<ResourceId> = (0..20_000).map(|_| new_resource_id("ins")).collect();
        let distinct: std::collections::HashSet<&ResourceId> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "an ID was drawn twice");
        for id in &ids {
            ResourceId::parse("ins", id.as_str()).expect("a well-formed ID");
        }
        // In creation order, except where the interval number wraps (every 2.3 hours).
        let steps_back = ids.windows(2).filter(|w| w[0] >= w[1]).count();
        assert!(
            steps_back <= 1,
            "{steps_back} IDs sorted before the one drawn before them"
        );
    }
}
