//! Resources and what a task does to them.
//!
//! A resource has a state name (its catalog decides which names exist). While a task on
//! it is unfinished the resource is *busy*: it shows the action's transitional state and
//! refuses other operations. The [`Effect`] recorded with the task says where the state
//! goes when the task ends.

use crate::RequestId;
use std::fmt;

/// A resource state, by its catalog name (`RUNNING`, `STOPPED`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceState(pub String);

impl ResourceState {
    pub fn new(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task does to its resource's state and attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effect {
    /// The state shown from submission until the task ends; `None` keeps the state.
    pub transitional: Option<ResourceState>,
    /// The state on success; `None` returns to the state before the task.
    pub on_success: Option<ResourceState>,
    /// The state on failure; `None` returns to the state before the task.
    pub on_failure: Option<ResourceState>,
    /// Attributes merged into the resource on success (a JSON object).
    pub patch: serde_json::Map<String, serde_json::Value>,
}

impl Effect {
    /// The state a resource ends in, given the state it had before the task.
    pub fn final_state(&self, prior: &ResourceState, succeeded: bool) -> ResourceState {
        let chosen = if succeeded {
            &self.on_success
        } else {
            &self.on_failure
        };
        chosen.clone().unwrap_or_else(|| prior.clone())
    }
}

/// Why one resource refused an operation at submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// No such resource in the caller's account and region (also when it belongs to
    /// another account: the two answers are the same).
    NotFound,
    /// The resource has an unfinished task.
    Busy { task: RequestId, action: String },
    /// The action is not allowed in the resource's current state.
    WrongState {
        state: ResourceState,
        allowed: Vec<ResourceState>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_state_defaults_to_prior() {
        let effect = Effect {
            transitional: Some(ResourceState::new("STARTING")),
            on_success: Some(ResourceState::new("RUNNING")),
            on_failure: None,
            patch: Default::default(),
        };
        let prior = ResourceState::new("STOPPED");
        assert_eq!(effect.final_state(&prior, true).as_str(), "RUNNING");
        assert_eq!(effect.final_state(&prior, false).as_str(), "STOPPED");
    }
}
