//! Prometheus metrics at `/metrics`, in the OpenMetrics text format (which Prometheus
//! scrapes natively). Three sources:
//!
//! - the API: every answered call, by action and code, and its latency — from the
//!   [`AnsweredCall`] the handler attaches to its response;
//! - the engine's task events ([`follow_task_events`]): attempts, their duration,
//!   retries, lost leases, refused late outcomes, and a duplicate-run check. The same
//!   loop writes one log line per task outcome;
//! - the store, read at scrape time: tasks by state, the ready queue and its oldest
//!   wait, fencing refusals ever.
//!
//! Label values are bounded: an action label is always one of the catalog's actions
//! (anything else is `unknown`), so a client cannot grow the series by inventing names.

use crate::api::AnsweredCall;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use qtask_core::{RequestId, TaskState};
use qtask_engine::catalog::{Catalog, Targets};
use qtask_engine::events::{EventKind, TaskEvent};
use qtask_engine::maintenance;
use qtask_engine::time::now_millis;
use qtask_protocol::ErrorCode;
use qtask_store::Store;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast::{self, error::RecvError};
use tracing::level_filters::LevelFilter;
use tracing::Level;

/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The action label of calls whose action is not in the catalog (or was never read).
const UNKNOWN_ACTION: &str = "unknown";

/// API latency buckets, in seconds: from a cached answer to a 30 s long poll.
const CALL_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Attempt duration buckets, in seconds: from an instant simulation to half an hour.
const ATTEMPT_SECONDS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Start delay buckets, in seconds: 10 µs growing by 10 % a step up to ~14 s, fine enough
/// that a quantile read between two scrapes is within a few percent.
fn start_delay_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1e-5, 1.1, 150,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: String,
    code: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    action: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn call_histogram() -> Histogram {
    Histogram::new(CALL_SECONDS)
}

fn attempt_histogram() -> Histogram {
    Histogram::new(ATTEMPT_SECONDS)
}

/// Every metric qtask exports, and what it needs to refresh the store's view.
pub struct Metrics {
    registry: Registry,
    store: Arc<dyn Store>,
    /// The catalog's actions: the only values an action label takes.
    actions: HashSet<String>,
    /// Actions answered as task chains (code 0, 5100 or 5400 with a detail per resource).
    chain_actions: HashSet<String>,
    api_calls: Family<CallLabels, Counter>,
    api_call_seconds: HistogramFamily<ActionLabels>,
    chain_calls: Family<CallLabels, Counter>,
    task_events: Family<EventLabels, Counter>,
    attempt_seconds: HistogramFamily<AttemptLabels>,
    start_delay: Histogram,
    duplicate_runs: Counter,
    events_missed: Counter,
    tasks: Family<StateLabels, Gauge>,
    queue_ready: Gauge,
    queue_oldest_ready_seconds: Gauge<f64, AtomicU64>,
    rescued: Counter,
    fenced_completions: Counter,
    store_up: Gauge,
    /// Held while counters catch up with totals read elsewhere, so two concurrent
    /// scrapes cannot both add the same difference.
    catching_up: Mutex<()>,
}

impl Metrics {
    pub fn new(catalog: &Catalog, store: Arc<dyn Store>) -> Self {
        let actions: HashSet<String> = catalog
            .action_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let chain_actions = actions
            .iter()
            .filter(|action| {
                catalog
                    .operation(action)
                    .is_some_and(|op| matches!(op.targets, Targets::Many(_)))
            })
            .cloned()
            .collect();
        let metrics = Self {
            registry: Registry::default(),
            store,
            actions,
            chain_actions,
            api_calls: Family::default(),
            api_call_seconds: Family::new_with_constructor(call_histogram),
            chain_calls: Family::default(),
            task_events: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_histogram),
            start_delay: start_delay_histogram(),
            duplicate_runs: Counter::default(),
            events_missed: Counter::default(),
            tasks: Family::default(),
            queue_ready: Gauge::default(),
            queue_oldest_ready_seconds: Gauge::default(),
            rescued: Counter::default(),
            fenced_completions: Counter::default(),
            store_up: Gauge::default(),
            catching_up: Mutex::new(()),
        };
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "qtask_build",
            "The qtask version serving",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "qtask_api_calls",
            "API calls answered, by action and answer code (6200: refused while draining)",
            self.api_calls.clone(),
        );
        r.register_with_unit(
            "qtask_api_call_duration",
            "Time to answer an API call, by action (long polls included)",
            Unit::Seconds,
            self.api_call_seconds.clone(),
        );
        r.register(
            "qtask_chain_calls",
            "Task-chain calls by outcome: 0 all resources accepted, 5400 some, 5100 none",
            self.chain_calls.clone(),
        );
        r.register(
            "qtask_task_events",
            "Task events this process published, by event (queued, started, retrying, \
             succeeded, failed, canceled, released, leaseLost, fenced) and action",
            self.task_events.clone(),
        );
        r.register_with_unit(
            "qtask_task_attempt_duration",
            "How long attempts ran, by action and outcome (succeeded, failed, canceled, retrying)",
            Unit::Seconds,
            self.attempt_seconds.clone(),
        );
        r.register_with_unit(
            "qtask_task_start_delay",
            "Time from a submission's commit to its task's executor start, for tasks \
             runnable at once (dispatch hand-off and claim)",
            Unit::Seconds,
            self.start_delay.clone(),
        );
        r.register(
            "qtask_duplicate_runs",
            "Attempts started for a task this process was already running (must stay 0)",
            self.duplicate_runs.clone(),
        );
        r.register(
            "qtask_metrics_events_missed",
            "Task events the metrics fell too far behind to see (event counts are low by this)",
            self.events_missed.clone(),
        );
        r.register(
            "qtask_tasks",
            "Tasks in the store by state (all accounts; finished ones until retention)",
            self.tasks.clone(),
        );
        r.register(
            "qtask_queue_ready_tasks",
            "Queued tasks a worker could take now (heads of their resource's queue, \
             past any retry backoff)",
            self.queue_ready.clone(),
        );
        r.register_with_unit(
            "qtask_queue_oldest_ready_age",
            "How long the longest-waiting ready task has waited (0 when none waits)",
            Unit::Seconds,
            self.queue_oldest_ready_seconds.clone(),
        );
        r.register(
            "qtask_rescued_tasks",
            "Running tasks whose lease expired, put back in the queue by this process",
            self.rescued.clone(),
        );
        r.register(
            "qtask_fenced_completions",
            "Late outcomes the store refused because the worker had lost its lease \
             (ever, all processes)",
            self.fenced_completions.clone(),
        );
        r.register(
            "qtask_store_up",
            "1 when the store answered the last scrape's reads, else 0",
            self.store_up.clone(),
        );
        self
    }

    /// The action label for `action`: itself if the catalog has it, else `unknown`.
    fn action_label(&self, action: Option<&str>) -> String {
        match action {
            Some(action) if self.actions.contains(action) => action.to_owned(),
            _ => UNKNOWN_ACTION.to_owned(),
        }
    }

    fn record_call(&self, call: &AnsweredCall, elapsed: std::time::Duration) {
        let action = self.action_label(call.action.as_deref());
        let labels = CallLabels {
            action: action.clone(),
            code: call.code,
        };
        self.api_calls.get_or_create(&labels).inc();
        self.api_call_seconds
            .get_or_create(&ActionLabels {
                action: action.clone(),
            })
            .observe(elapsed.as_secs_f64());
        let chain_outcome = [
            0,
            ErrorCode::OperationFailed.code(),
            ErrorCode::PartialSuccess.code(),
        ]
        .contains(&call.code);
        if chain_outcome && self.chain_actions.contains(&action) {
            self.chain_calls.get_or_create(&labels).inc();
        }
    }

    /// A task's executor started `delay` after its submission committed.
    pub fn observe_start_delay(&self, delay: std::time::Duration) {
        self.start_delay.observe(delay.as_secs_f64());
    }

    fn record_event(&self, event: &TaskEvent) {
        let action = self.action_label(Some(&event.action));
        self.task_events
            .get_or_create(&EventLabels {
                event: event.kind.name(),
                action: action.clone(),
            })
            .inc();
        if let Some(ms) = event.duration_ms {
            self.attempt_seconds
                .get_or_create(&AttemptLabels {
                    action,
                    outcome: event.kind.name(),
                })
                .observe(ms as f64 / 1000.0);
        }
    }

    /// Reads the store's side and catches counters up with totals kept elsewhere.
    async fn refresh(&self) {
        let now = now_millis();
        let (stats, queue) = tokio::join!(self.store.stats(), self.store.queue_summary(now));
        match (stats, queue) {
            (Ok(stats), Ok(queue)) => {
                for state in TaskState::ALL {
                    let count = stats
                        .tasks
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    self.tasks
                        .get_or_create(&StateLabels {
                            state: state.as_str(),
                        })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                self.queue_ready
                    .set(i64::try_from(queue.ready).unwrap_or(i64::MAX));
                let waited_ms = queue
                    .oldest_ready_since
                    .map_or(0, |since| now.saturating_sub(since).max(0));
                self.queue_oldest_ready_seconds
                    .set(waited_ms as f64 / 1000.0);
                let _guard = self.catching_up.lock().unwrap_or_else(|e| e.into_inner());
                catch_up(&self.fenced_completions, stats.fenced_completions);
                self.store_up.set(1);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "metrics: cannot read the store");
                self.store_up.set(0);
            }
        }
        let _guard = self.catching_up.lock().unwrap_or_else(|e| e.into_inner());
        catch_up(&self.rescued, maintenance::rescued_tasks());
    }

    /// The exposition, after a refresh.
    pub async fn render(&self) -> String {
        self.refresh().await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Raises `counter` to `total` (a count kept by the engine or the store).
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// Serves `/metrics` beside `app` and counts every API call `app` answers.
pub fn instrument(app: Router, metrics: Arc<Metrics>) -> Router {
    app.route(METRICS_PATH, get(scrape).with_state(Arc::clone(&metrics)))
        .layer(axum::middleware::from_fn_with_state(metrics, count_calls))
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        metrics.render().await,
    )
        .into_response()
}

async fn count_calls(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(call) = response.extensions().get::<AnsweredCall>() {
        metrics.record_call(call, started.elapsed());
    }
    response
}

/// The attempts this process runs, to notice a second start of one that has not ended.
#[derive(Default)]
struct Running(HashSet<RequestId>);

impl Running {
    /// A bound for safety only: every attempt reports an end, except at shutdown.
    const LIMIT: usize = 1_000_000;

    /// Follows one event; true when it starts an attempt of a task whose previous
    /// attempt has not ended: a duplicate run.
    fn is_duplicate(&mut self, event: &TaskEvent) -> bool {
        match event.kind {
            EventKind::Started => {
                if self.0.len() >= Self::LIMIT {
                    self.0.clear();
                }
                !self.0.insert(event.task)
            }
            EventKind::Succeeded
            | EventKind::Failed
            | EventKind::Canceled
            | EventKind::Retrying
            | EventKind::Released
            | EventKind::LeaseLost
            | EventKind::Fenced => {
                self.0.remove(&event.task);
                false
            }
            EventKind::Queued | EventKind::Rescued => false,
        }
    }

    /// Forgets every attempt (after missed events, which may have held their ends).
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Counts and logs every task event until the bus closes. Subscribe before the workers
/// start, so no attempt is missed.
pub fn follow_task_events(
    metrics: Arc<Metrics>,
    mut events: broadcast::Receiver<Arc<TaskEvent>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut running = Running::default();
        loop {
            let event = match events.recv().await {
                // Another node counts and logs its own tasks' events.
                Ok(event) if event.remote => continue,
                Ok(event) => event,
                Err(RecvError::Closed) => return,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "metrics fell behind the task events");
                    metrics.events_missed.inc_by(missed);
                    // Rather than report duplicates that are not.
                    running.clear();
                    continue;
                }
            };
            metrics.record_event(&event);
            log_task_event(&event);
            if running.is_duplicate(&event) {
                metrics.duplicate_runs.inc();
                let span = task_span(&event);
                let _in_task = span.enter();
                tracing::error!(
                    attempt = event.attempt,
                    "an attempt started while this process was already running the task"
                );
            }
        }
    })
}

/// The task's context on its lines; at error level so that it is there whatever
/// `QTASK_LOG` lets through (a span prints no line of its own).
fn task_span(event: &TaskEvent) -> tracing::Span {
    tracing::error_span!(target: TASK_LOG, "task", requestId = %event.task, action = %event.action)
}

/// The log target of task outcome lines (`QTASK_LOG=warn,qtask::tasks=info` keeps
/// them and little else).
const TASK_LOG: &str = "qtask::tasks";

/// One line per task outcome, in the task's span (its requestId and action). Outcomes,
/// failures included, are the callers' business: info. A refused late outcome is
/// qtask's own trouble: warn. Lines the worker writes itself (a lost lease) are not
/// repeated.
fn log_task_event(event: &TaskEvent) {
    let level = match event.kind {
        EventKind::Queued | EventKind::Started => Level::DEBUG,
        EventKind::Fenced => Level::WARN,
        EventKind::Succeeded
        | EventKind::Canceled
        | EventKind::Released
        | EventKind::Retrying
        | EventKind::Failed => Level::INFO,
        EventKind::LeaseLost | EventKind::Rescued => return,
    };
    // The span formats its fields when made (three events per task, ≈ 2 % of a task's CPU
    // in an `e2e` profile): only when the line may print.
    if level > LevelFilter::current() {
        return;
    }
    let span = task_span(event);
    let _in_task = span.enter();
    let attempt = event.attempt;
    let duration_ms = event.duration_ms;
    let (code, error) = event
        .error
        .as_ref()
        .map(|e| (e.code, e.message.as_str()))
        .unzip();
    match event.kind {
        EventKind::Queued => {
            tracing::debug!(target: TASK_LOG, resource = %event.resource, "task queued")
        }
        EventKind::Started => tracing::debug!(target: TASK_LOG, attempt, "attempt started"),
        EventKind::Succeeded => {
            tracing::info!(target: TASK_LOG, attempt, duration_ms, "task succeeded")
        }
        EventKind::Canceled => {
            tracing::info!(target: TASK_LOG, attempt, duration_ms, reason = error, "task canceled")
        }
        EventKind::Released => {
            tracing::info!(target: TASK_LOG, attempt, "task given back to the queue at shutdown")
        }
        EventKind::Retrying => {
            tracing::info!(target: TASK_LOG, attempt, duration_ms, code, error, "attempt failed; will retry")
        }
        EventKind::Failed => {
            tracing::info!(target: TASK_LOG, attempt, duration_ms, code, error, "task failed")
        }
        EventKind::Fenced => tracing::warn!(
            target: TASK_LOG,
            attempt,
            "a late outcome was refused: another worker had taken the task over"
        ),
        EventKind::LeaseLost | EventKind::Rescued => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtask_core::{AccountId, ResourceId};

    fn event(task: u64, kind: EventKind) -> TaskEvent {
        TaskEvent {
            seq: 0,
            at: 0,
            kind,
            account: AccountId(1),
            task: RequestId::new(task).unwrap(),
            chain: None,
            action: "StopInstances".into(),
            resource: ResourceId::parse("ins", "ins-00000001").unwrap(),
            attempt: 1,
            error: None,
            result: None,
            next_attempt_at: None,
            duration_ms: None,
            remote: false,
            calls_back: false,
        }
    }

    #[test]
    fn a_second_start_before_an_end_is_a_duplicate_run() {
        let mut running = Running::default();
        let duplicates = |running: &mut Running, events: &[(u64, EventKind)]| {
            events
                .iter()
                .filter(|(task, kind)| running.is_duplicate(&event(*task, *kind)))
                .count()
        };
        use EventKind::*;
        let sequential = [
            (1, Queued),
            (1, Started),
            (2, Started),
            (1, Retrying),
            (1, Started),
            (1, LeaseLost),
            (1, Started),
            (2, Succeeded),
            (1, Fenced),
            (1, Started),
        ];
        assert_eq!(duplicates(&mut running, &sequential), 0);
        assert_eq!(duplicates(&mut running, &[(1, Started), (2, Started)]), 1);
        running.clear();
        assert_eq!(duplicates(&mut running, &[(1, Started)]), 0, "forgotten");
    }
}
