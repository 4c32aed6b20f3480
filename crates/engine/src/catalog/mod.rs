//! The action catalog: every action qtask answers, its parameters, and — for mutating
//! actions — what it does to the resources it names.
//!
//! A mutating action is an [`Operation`]: which resources it targets (one, a list, or
//! new ones), the states they must be in, the state they show while the task runs and
//! the one they end in. The store applies those rules atomically at submission; the
//! executor only does the work.

pub mod cvm;
pub mod history;
pub mod tasks;

use crate::args::{ArgError, Args};
use crate::dispatch::Dispatcher;
use crate::maintenance::CLIENT_TOKEN_LIFETIME;
use crate::policy::Policy;
use crate::{Answer, Call, EngineError, Outcome, Refusal};
use qtask_core::{Effect, RequestId, ResourceId, ResourceState};
use qtask_store::{IdempotencyKey, NewResource, PlannedTask, Store, SubmitReport, Target};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Parameters every mutating action accepts besides its own.
pub const CLIENT_TOKEN: &str = "clientToken";

/// What a query handler sees.
pub struct QueryContext<'a> {
    pub store: &'a dyn Store,
    pub catalog: &'a Catalog,
    pub dispatcher: &'a Dispatcher,
    pub call: &'a Call,
}

pub type QueryFn = for<'a> fn(QueryContext<'a>) -> BoxFuture<'a, Result<Answer, EngineError>>;

/// Plans a mutating call from what the store holds (RetryTask).
pub type ReplanFn = for<'a> fn(QueryContext<'a>) -> BoxFuture<'a, Result<Plan, EngineError>>;

/// Prepares a mutating call: validates its own parameters and returns what the tasks
/// store and do. May be slow (password hashing), so it is async.
pub type PrepareFn = for<'a> fn(&'a Call) -> BoxFuture<'a, Result<Prepared, EngineError>>;

pub enum Handler {
    /// Answers at once: queries, and commands that create no task (CancelTask).
    Query(QueryFn),
    /// Creates tasks, committed with the request's nonce before the answer.
    Mutate(Operation),
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
    /// Refuses parameters the action does not know, so a typo is an error rather than a
    /// silently ignored setting.
    pub fn check_params(&self, params: &Map<String, Value>) -> Result<(), ArgError> {
        let mutating = matches!(self.handler, Handler::Mutate(_) | Handler::Replan(_));
        for name in params.keys() {
            let known = self.params.contains(&name.as_str()) || (mutating && name == CLIENT_TOKEN);
            if !known {
                let mut accepted: Vec<&str> = self.params.to_vec();
                if mutating {
                    accepted.push(CLIENT_TOKEN);
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

/// A resource type: what its IDs look like and what it is called in messages.
#[derive(Debug)]
pub struct ResourceType {
    /// Stored as the resource's kind.
    pub kind: &'static str,
    pub noun: &'static str,
    pub prefix: &'static str,
    /// The state of a resource that is gone for good (a returned instance): retention
    /// deletes it after a grace period.
    pub retired_state: Option<&'static str>,
}

/// Which resources a mutating action operates.
#[derive(Debug, Clone, Copy)]
pub enum Targets {
    /// One existing resource named by this parameter: a general asynchronous call.
    One(&'static str),
    /// A list of existing resources named by this parameter: a task-chain call.
    Many(&'static str),
    /// New resources, in `initial` state; their IDs are answered under `answer_key`.
    New {
        initial: &'static str,
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
    /// How long the simulated executor takes, at `--sim-speed 1`.
    pub sim_seconds: f64,
    pub prepare: PrepareFn,
    /// Attempts, timeout, backoff, and what a busy resource does.
    pub policy: Policy,
}

/// What an action's preparation yields.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The parameters to keep with each task (secrets removed).
    pub stored_params: Map<String, Value>,
    /// Attributes merged into each resource on success.
    pub patch: Map<String, Value>,
    /// For actions that create resources: each new resource's attributes.
    pub new_resources: Vec<Map<String, Value>>,
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
                new.id = random_id(prefix);
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
    pub async fn plan(&self, call: &Call) -> Result<Plan, EngineError> {
        let args = Args(&call.params);
        let prepared = (self.prepare)(call).await?;
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
            Targets::New { initial, .. } => prepared
                .new_resources
                .into_iter()
                .map(|attrs| {
                    Target::Create(NewResource {
                        id: random_id(self.resource.prefix),
                        kind: self.resource.kind.to_owned(),
                        state: ResourceState::new(initial),
                        attrs,
                    })
                })
                .collect(),
        };
        let stored_params = Value::Object(prepared.stored_params);
        Ok(Plan {
            action: self.action.to_owned(),
            tasks: targets
                .into_iter()
                .map(|target| PlannedTask {
                    target,
                    params: stored_params.clone(),
                    effect: effect.clone(),
                    on_busy: self.policy.on_busy,
                })
                .collect(),
            idempotency: idempotency_key(call, self.action, &stored_params)?,
            shape: AnswerShape {
                action: self.action,
                noun: self.resource.noun,
                prefix: self.resource.prefix,
                targets: self.targets,
            },
        })
    }
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

pub fn random_id(prefix: &'static str) -> ResourceId {
    ResourceId::compose(prefix, rand::random())
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
    /// The built-in catalog: task queries and the simulated CVM.
    pub fn builtin() -> Self {
        let mut catalog = Self {
            actions: HashMap::new(),
            resource_types: Vec::new(),
        };
        for spec in tasks::actions()
            .into_iter()
            .chain(history::actions())
            .chain(cvm::actions())
        {
            catalog.add(spec);
        }
        catalog.resource_types.push(&cvm::INSTANCE);
        catalog
    }

    fn add(&mut self, spec: ActionSpec) {
        let previous = self.actions.insert(spec.name, spec);
        assert!(previous.is_none(), "an action is defined twice");
    }

    pub fn get(&self, action: &str) -> Option<&ActionSpec> {
        self.actions.get(action)
    }

    pub fn operation(&self, action: &str) -> Option<&Operation> {
        match &self.get(action)?.handler {
            Handler::Mutate(operation) => Some(operation),
            Handler::Query(_) | Handler::Replan(_) => None,
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
