//! Executors do a task's work. The engine claims the task, calls the executor with the
//! task, a snapshot of its resource and a cancellation signal, and records what it
//! returns.

use crate::catalog::file::ExecutorSpec;
use crate::catalog::Catalog;
use async_trait::async_trait;
use qtask_core::TaskError;
use qtask_store::ClaimedTask;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    /// Worth another attempt (a transient fault); the engine retries per the action's
    /// policy.
    Retryable(TaskError),
    /// Another attempt would fail the same way.
    Fatal(TaskError),
    /// The executor stopped because `cancel` was signalled; the message says how far
    /// it got.
    Canceled(String),
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs one attempt of a task. `task.task.attempts` is the attempt number (1 for the
    /// first), so an executor that talks to the outside world can make its work
    /// idempotent. `cancel` is signalled when a user cancels the task: an executor
    /// should stop and return [`ExecError::Canceled`] (or finish, if it is past the
    /// point of no return). The engine drops the future on timeout or lost lease, so
    /// the work must be safe to abandon at an await point.
    async fn execute(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError>;
}

/// Sends each task to its action's executor (the catalog says which: `sim`, `exec`
/// or `http`).
pub struct Router {
    routes: HashMap<String, Arc<dyn Executor>>,
}

impl Router {
    pub fn new(routes: HashMap<String, Arc<dyn Executor>>) -> Self {
        Self { routes }
    }
}

#[async_trait]
impl Executor for Router {
    async fn execute(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        match self.routes.get(&task.task.action) {
            Some(executor) => executor.execute(task, cancel).await,
            // A task of an action the catalog no longer has (the catalog changed
            // between runs): nothing can carry it out.
            None => Err(ExecError::Fatal(TaskError::operation_failed(format!(
                "no executor for {}: the action is not in the current catalog",
                task.task.action
            )))),
        }
    }
}

/// Settings of the simulated executor.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Multiplies every simulated duration; 0 finishes tasks at once.
    pub speed: f64,
    /// Per-action probability (0 to 1) that an attempt fails with a retryable fault.
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

/// The marker that makes an instance's tasks fail deterministically and for good: an
/// instance whose name contains `qtask-fail:StopInstances` fails every StopInstances.
pub const FAIL_MARKER: &str = "qtask-fail:";
/// The marker of transient faults: `qtask-flaky:StartInstances:2` fails the first two
/// attempts of every StartInstances with a retryable fault (`:N` defaults to 1).
pub const FLAKY_MARKER: &str = "qtask-flaky:";

/// Simulates the catalog's actions: waits the action's duration (scaled), then succeeds
/// — or fails, when fault injection says so. The state changes themselves are the
/// catalog's, applied by the store when the outcome is recorded.
pub struct SimExecutor {
    settings: SimSettings,
    durations: HashMap<String, Duration>,
    journal: Option<Journal>,
}

impl SimExecutor {
    pub fn new(catalog: &Catalog, settings: SimSettings) -> Self {
        let durations = catalog
            .action_names()
            .into_iter()
            .filter_map(|name| match catalog.operation(name)?.executor {
                ExecutorSpec::Sim { seconds } => Some((
                    name.to_owned(),
                    Duration::from_secs_f64(seconds * settings.speed.max(0.0)),
                )),
                _ => None,
            })
            .collect();
        Self {
            settings,
            durations,
            journal: None,
        }
    }

    /// Records every attempt's start and end in `path` (see [`Journal`]).
    pub fn with_journal(mut self, path: &Path) -> std::io::Result<Self> {
        self.journal = Some(Journal::open(path)?);
        Ok(self)
    }

    fn injected_failure(&self, task: &ClaimedTask) -> Option<ExecError> {
        let action = &task.task.action;
        let texts: Vec<&str> = task
            .resource_attrs
            .values()
            .filter_map(Value::as_str)
            .collect();
        let fail = format!("{FAIL_MARKER}{action}");
        if texts.iter().any(|text| text.contains(&fail)) {
            return Some(ExecError::Fatal(
                self.fault(task, &format!("the resource's name contains {fail:?}")),
            ));
        }
        let flaky = format!("{FLAKY_MARKER}{action}");
        for text in &texts {
            if let Some(at) = text.find(&flaky) {
                let count = text[at + flaky.len()..]
                    .strip_prefix(':')
                    .map(|rest| {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        digits.parse().unwrap_or(1)
                    })
                    .unwrap_or(1u32);
                if task.task.attempts <= count {
                    return Some(ExecError::Retryable(self.fault(
                        task,
                        &format!(
                            "attempt {} of the {count} that {flaky:?} fails",
                            task.task.attempts
                        ),
                    )));
                }
            }
        }
        let rate = self
            .settings
            .failure_rates
            .get(action)
            .copied()
            .unwrap_or(0.0);
        (rate > 0.0 && rand::random::<f64>() < rate).then(|| {
            ExecError::Retryable(self.fault(task, &format!("failure rate {rate} for {action}")))
        })
    }

    fn fault(&self, task: &ClaimedTask, reason: &str) -> TaskError {
        TaskError::operation_failed(format!(
            "{} failed on {} (simulated fault: {reason})",
            task.task.action, task.task.resource
        ))
    }

    async fn attempt(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        if let Some(duration) = self.durations.get(&task.task.action) {
            if !duration.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(*duration) => {}
                    _ = cancel.cancelled() => {
                        return Err(ExecError::Canceled(format!(
                            "canceled while running: {} stopped before it finished",
                            task.task.action
                        )));
                    }
                }
            }
        }
        match self.injected_failure(task) {
            Some(failure) => Err(failure),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Executor for SimExecutor {
    async fn execute(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        let Some(journal) = &self.journal else {
            return self.attempt(task, cancel).await;
        };
        journal.record("start", task, None);
        // Written when the attempt is dropped unfinished (timeout, lost lease,
        // shutdown), so an abandoned attempt still has an end.
        let mut entry = JournalEntry {
            journal,
            task,
            outcome: "aborted",
        };
        let result = self.attempt(task, cancel).await;
        entry.outcome = match &result {
            Ok(_) => "ok",
            Err(ExecError::Retryable(_)) => "retryable",
            Err(ExecError::Fatal(_)) => "fatal",
            Err(ExecError::Canceled(_)) => "canceled",
        };
        result
    }
}

/// Records an attempt's end when it goes out of scope, however it ends.
struct JournalEntry<'a> {
    journal: &'a Journal,
    task: &'a ClaimedTask,
    outcome: &'static str,
}

impl Drop for JournalEntry<'_> {
    fn drop(&mut self) {
        self.journal.record("end", self.task, Some(self.outcome));
    }
}

/// An append-only record of the simulator's attempts, one JSON object per line:
/// `{"event":"start"|"end","task":…,"fence":…,"attempt":…,"pid":…,"at":<unix ms>}` (an
/// `end` also has `"outcome"`: ok, retryable, fatal, canceled, or aborted when the
/// engine abandoned the attempt). Each line is one `write` to a file opened for append,
/// so lines from concurrent attempts never interleave and survive a SIGKILL. The crash
/// test reads it to count attempts that overlapped.
struct Journal {
    file: Mutex<std::fs::File>,
}

impl Journal {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    fn record(&self, event: &str, task: &ClaimedTask, outcome: Option<&str>) {
        let mut line = serde_json::json!({
            "event": event,
            "task": task.task.id.get(),
            "fence": task.fence,
            "attempt": task.task.attempts,
            "pid": std::process::id(),
            "at": crate::time::now_millis(),
        });
        if let Some(outcome) = outcome {
            line["outcome"] = Value::String(outcome.to_owned());
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = file.write_all(text.as_bytes()) {
            tracing::error!(%error, "cannot write the simulator journal");
        }
    }
}
