//! Executors do a task's work. The engine claims the task, calls the executor with the
//! task and a snapshot of its resource, and records what it returns.

use crate::catalog::Catalog;
use async_trait::async_trait;
use qtask_core::TaskError;
use qtask_store::ClaimedTask;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// The API error code of an operation that failed.
pub const OPERATION_FAILED: u32 = 5100;

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt of a task. `task.task.attempts` is the attempt number (1 for the
    /// first run; higher when a task is run again after a crash), so an executor that
    /// talks to the outside world can make its work idempotent.
    async fn execute(&self, task: &ClaimedTask) -> Result<Option<Value>, TaskError>;
}

/// Settings of the simulated executor.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Multiplies every simulated duration; 0 finishes tasks at once.
    pub speed: f64,
    /// Per-action probability (0 to 1) that a task fails.
    pub failure_rates: HashMap<String, f64>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            speed: 1.0,
            failure_rates: HashMap::new(),
        }
    }
}

/// The marker that makes an instance's tasks fail deterministically: an instance whose
/// name contains `qtask-fail:StopInstances` fails every StopInstances.
pub const FAIL_MARKER: &str = "qtask-fail:";

/// Simulates the catalog's actions: waits the action's duration (scaled), then succeeds
/// — or fails, when fault injection says so. The state changes themselves are the
/// catalog's, applied by the store when the outcome is recorded.
pub struct SimExecutor {
    settings: SimSettings,
    durations: HashMap<String, Duration>,
}

impl SimExecutor {
    pub fn new(catalog: &Catalog, settings: SimSettings) -> Self {
        let durations = catalog
            .action_names()
            .into_iter()
            .filter_map(|name| {
                let seconds = catalog.operation(name)?.sim_seconds * settings.speed.max(0.0);
                Some((name.to_owned(), Duration::from_secs_f64(seconds)))
            })
            .collect();
        Self {
            settings,
            durations,
        }
    }

    fn injected_failure(&self, task: &ClaimedTask) -> Option<String> {
        let action = &task.task.action;
        let name = task.resource_attrs.values().filter_map(Value::as_str);
        let marker = format!("{FAIL_MARKER}{action}");
        if name.into_iter().any(|text| text.contains(&marker)) {
            return Some(format!("the resource's name contains {marker:?}"));
        }
        let rate = self
            .settings
            .failure_rates
            .get(action)
            .copied()
            .unwrap_or(0.0);
        (rate > 0.0 && rand::random::<f64>() < rate)
            .then(|| format!("failure rate {rate} for {action}"))
    }
}

#[async_trait]
impl Executor for SimExecutor {
    async fn execute(&self, task: &ClaimedTask) -> Result<Option<Value>, TaskError> {
        if let Some(duration) = self.durations.get(&task.task.action) {
            if !duration.is_zero() {
                tokio::time::sleep(*duration).await;
            }
        }
        match self.injected_failure(task) {
            Some(reason) => Err(TaskError {
                code: OPERATION_FAILED,
                message: format!(
                    "{} failed on {} (simulated fault: {reason})",
                    task.task.action, task.task.resource
                ),
            }),
            None => Ok(None),
        }
    }
}
