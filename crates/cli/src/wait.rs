//! `--wait`: follows every task an answer started until each is final, showing one
//! line per resource — live progress bars when stderr is a terminal, else a plain
//! line per state change — and a summary.
//!
//! It long-polls `DescribeTaskResult` with `waitSeconds`; a server that predates the
//! long poll refuses the parameter (4000 naming it), and then it polls every
//! [`MIN_POLL_INTERVAL`] instead.

use crate::client::{request_ids, Client};
use crate::exit::{answer_code, CliError, Exit};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest a single long poll asks the server to hold the answer.
const LONG_POLL: Duration = Duration::from_secs(10);
/// Polls of one task or chain start at least this far apart.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often the live display redraws elapsed times and bars.
const REDRAW: Duration = Duration::from_millis(200);
/// The bar's resolution.
const BAR_STEPS: u64 = 1000;
/// Without an estimate from the server, a running task's bar reaches half way after
/// this long (and never fills until the task ends).
const UNKNOWN_HALF_WAY: Duration = Duration::from_secs(10);

/// How the wait shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// Progress bars redrawn in place.
    Live,
    /// One line per state change.
    Lines,
}

impl DisplayMode {
    /// Live when stderr (where the display goes) is a terminal.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Live
        } else {
            Self::Lines
        }
    }
}

/// What the sources of a wait report to it.
enum Update {
    /// A `DescribeTaskResult` answer's `data`: a task, or a chain with its tasks.
    Snapshot(Value),
    /// An event of the task event stream.
    Event(Value),
    /// A poller stopped: its task or chain is final, or the deadline passed.
    PollerDone,
    Failed(anyhow::Error),
}

/// Follows the tasks `answer` (of a call) started; 0 when the call was accepted and
/// every task ended SUCCESS, else 1.
///
/// `DescribeTaskResult` is the authority: one poller per request ID asks at once,
/// then long-polls until its task or chain is final. Beside it, the task event stream
/// (where the server has one) reports each task's changes as they happen, so that
/// the display moves between polls.
pub async fn follow(
    client: Arc<Client>,
    answer: &Value,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut tracker = Tracker::new(DisplayMode::detect(), started);
    for (resource, message) in refusals(answer) {
        tracker.refused(&resource, &message);
    }
    let ids = request_ids(answer);
    let (updates, mut received) = mpsc::unbounded_channel();
    let mut sources = tokio::task::JoinSet::new();
    for id in &ids {
        sources.spawn(poll(client.clone(), id.clone(), deadline, updates.clone()));
        sources.spawn(stream_events(client.clone(), id.clone(), updates.clone()));
    }
    drop(updates);
    let mut pollers_left = ids.len();
    let mut redraw = tokio::time::interval(REDRAW);
    let timed_out = loop {
        if pollers_left == 0 {
            break false;
        }
        tokio::select! {
            update = received.recv() => match update {
                Some(Update::Snapshot(data)) => tracker.apply(&data),
                Some(Update::Event(event)) => tracker.apply_event(&event),
                Some(Update::PollerDone) => pollers_left -= 1,
                Some(Update::Failed(error)) => {
                    tracker.abandon();
                    return Err(error);
                }
                None => break false,
            },
            _ = redraw.tick() => tracker.redraw(),
            _ = tokio::time::sleep_until(deadline) => break true,
        }
    };
    sources.abort_all();
    let summary = tracker.finish();
    eprintln!(
        "{}{} in {}",
        tracker.action_prefix(),
        summary.describe(),
        format_duration(started.elapsed())
    );
    if timed_out && summary.unfinished > 0 {
        eprintln!(
            "gave up waiting after {}: {} task(s) still unfinished (see them with qtask tasks show)",
            format_duration(timeout),
            summary.unfinished
        );
    }
    Ok(Exit::from_success(
        answer_code(answer) == 0 && summary.all_succeeded(),
    ))
}

/// The resources a chain answer refused, with `code message`.
fn refusals(answer: &Value) -> Vec<(String, String)> {
    let Some(detail) = answer.get("detail").and_then(Value::as_object) else {
        return Vec::new();
    };
    detail
        .iter()
        .filter(|(_, entry)| answer_code(entry) != 0)
        .map(|(resource, entry)| {
            (
                resource.clone(),
                format!(
                    "{} {}",
                    answer_code(entry),
                    entry["message"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

/// Polls one task or chain until it is final or `deadline` passes, sending each
/// answer's `data`: at once, then with long polls.
async fn poll(
    client: Arc<Client>,
    request_id: String,
    deadline: Instant,
    updates: mpsc::UnboundedSender<Update>,
) {
    let update = match poll_until_final(&client, &request_id, deadline, &updates).await {
        Ok(()) => Update::PollerDone,
        Err(error) => Update::Failed(error),
    };
    let _ = updates.send(update);
}

async fn poll_until_final(
    client: &Client,
    request_id: &str,
    deadline: Instant,
    updates: &mpsc::UnboundedSender<Update>,
) -> anyhow::Result<()> {
    // The first answer comes at once, so the display starts with where things stand.
    let mut long_poll = false;
    let mut long_poll_refused = false;
    loop {
        let started = Instant::now();
        let mut params = vec![("requestId".to_owned(), request_id.to_owned())];
        if long_poll {
            let left = deadline.saturating_duration_since(started).min(LONG_POLL);
            let seconds = left.as_secs_f64().ceil().max(1.0) as u64;
            params.push(("waitSeconds".to_owned(), seconds.to_string()));
        }
        let answer = client.call("DescribeTaskResult", params).await?;
        if long_poll && refuses_long_poll(&answer) {
            long_poll = false;
            long_poll_refused = true;
            continue;
        }
        if answer_code(&answer) != 0 {
            return Err(
                anyhow::Error::new(CliError::answer("DescribeTaskResult", &answer))
                    .context(format!("cannot follow task {request_id}")),
            );
        }
        let data = answer["data"].clone();
        let unfinished = data["status"] == 2;
        if updates.send(Update::Snapshot(data)).is_err()
            || !unfinished
            || Instant::now() >= deadline
        {
            return Ok(());
        }
        long_poll = !long_poll_refused;
        tokio::time::sleep_until(started + MIN_POLL_INTERVAL).await;
    }
}

/// Forwards the task event stream of `request_id`, if the server offers one; a
/// server without it (or any failure of the stream) leaves the wait to the poller.
async fn stream_events(
    client: Arc<Client>,
    request_id: String,
    updates: mpsc::UnboundedSender<Update>,
) {
    let Ok(mut stream) = client.events([("requestId", request_id.as_str())]).await else {
        return;
    };
    while let Ok(Some(event)) = stream.next().await {
        if event.event == "end" {
            return;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        if updates.send(Update::Event(data)).is_err() {
            return;
        }
    }
}

/// Whether a server that predates the long poll refused `waitSeconds`.
fn refuses_long_poll(answer: &Value) -> bool {
    answer_code(answer) == 4000
        && answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("waitSeconds"))
}

/// One followed task.
struct Row {
    task: String,
    resource: String,
    action: String,
    state: String,
    attempts: u64,
    /// `code message` of the last error.
    error: Option<String>,
    /// When the task was seen first (for unfinished tasks' elapsed time).
    first_seen: Instant,
    /// When it was seen final.
    ended: Option<Instant>,
    /// When the server expects it to end (from `retryAfter`).
    expected_end: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl Row {
    fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "SUCCESS" | "FAILED" | "CANCELED" | "REFUSED"
        )
    }

    fn elapsed(&self, now: Instant) -> Duration {
        self.ended.unwrap_or(now).duration_since(self.first_seen)
    }

    /// How full the bar is, 0 to 1.
    fn progress(&self, now: Instant) -> f64 {
        match self.state.as_str() {
            "QUEUED" => 0.0,
            "RUNNING" => {
                let elapsed = self.elapsed(now).as_secs_f64();
                let fraction = match self.expected_end {
                    Some(end) => {
                        let total = end.duration_since(self.first_seen).as_secs_f64();
                        if total > 0.0 {
                            elapsed / total
                        } else {
                            1.0
                        }
                    }
                    None => elapsed / (elapsed + UNKNOWN_HALF_WAY.as_secs_f64()),
                };
                fraction.min(0.95)
            }
            _ => 1.0,
        }
    }

    /// What follows the state: the error, or the retry under way.
    fn note(&self) -> String {
        match (&self.error, self.state.as_str()) {
            (Some(error), "QUEUED") => {
                format!("attempt {} failed, retrying: {error}", self.attempts)
            }
            (Some(error), "FAILED" | "CANCELED" | "REFUSED") => error.clone(),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub succeeded: usize,
    pub failed: usize,
    pub canceled: usize,
    pub refused: usize,
    pub unfinished: usize,
}

impl Summary {
    pub fn all_succeeded(&self) -> bool {
        self.failed + self.canceled + self.refused + self.unfinished == 0
    }

    /// "19 succeeded, 1 failed".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            (self.succeeded, "succeeded"),
            (self.failed, "failed"),
            (self.canceled, "canceled"),
            (self.refused, "refused"),
            (self.unfinished, "unfinished"),
        ]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, word)| format!("{count} {word}"))
        .collect();
        if parts.is_empty() {
            "no task to wait for".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// The followed tasks and their display.
struct Tracker {
    mode: DisplayMode,
    started: Instant,
    rows: Vec<Row>,
    multi: Option<MultiProgress>,
    /// The live display's last line: how many are done.
    overall: Option<ProgressBar>,
    /// Width of the resource column.
    width: usize,
}

impl Tracker {
    fn new(mode: DisplayMode, started: Instant) -> Self {
        let (multi, overall) = match mode {
            DisplayMode::Live => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let overall = multi.add(
                    ProgressBar::new(0)
                        .with_style(style("{prefix:.bold} {bar:24.bold} {wide_msg}")),
                );
                (Some(multi), Some(overall))
            }
            DisplayMode::Lines => (None, None),
        };
        Self {
            mode,
            started,
            rows: Vec::new(),
            multi,
            overall,
            width: 12,
        }
    }

    /// A resource the call refused: a final row.
    fn refused(&mut self, resource: &str, message: &str) {
        let index = self.row(String::new(), resource, "");
        let row = &mut self.rows[index];
        row.error = Some(message.to_owned());
        self.change(index, "REFUSED", Instant::now());
    }

    /// Applies a `DescribeTaskResult` data: a task, or a chain with its tasks.
    fn apply(&mut self, data: &Value) {
        let now = Instant::now();
        let chain_estimate = retry_after(data);
        match data.get("tasks").and_then(Value::as_array) {
            Some(tasks) => {
                for task in tasks {
                    self.apply_task(task, retry_after(task).or(chain_estimate), now);
                }
            }
            None => self.apply_task(data, chain_estimate, now),
        }
        self.redraw();
    }

    /// Applies an event of the task event stream.
    fn apply_event(&mut self, event: &Value) {
        // An event without a state (a refused late outcome) changes nothing.
        if event["state"].is_null() {
            return;
        }
        let mut view = event.clone();
        view["attempts"] = event["attempt"].clone();
        self.apply_task(&view, None, Instant::now());
        self.redraw();
    }

    /// Applies a task's view; `estimate` (time left) replaces the last one if given.
    fn apply_task(&mut self, view: &Value, estimate: Option<Duration>, now: Instant) {
        let text = |name: &str| view[name].as_str().unwrap_or_default().to_owned();
        let index = self.row(text("requestId"), &text("resourceId"), &text("action"));
        let row = &mut self.rows[index];
        // A final state is the last word: a snapshot taken before an event that
        // arrives after it must not undo the event.
        if row.is_final() {
            return;
        }
        row.attempts = view["attempts"].as_u64().unwrap_or(row.attempts);
        let error = &view["error"];
        row.error = (!error.is_null()).then(|| {
            format!(
                "{} {}",
                error["code"],
                error["message"].as_str().unwrap_or_default()
            )
        });
        if let Some(left) = estimate {
            row.expected_end = Some(now + left);
        }
        let state = text("state");
        if state != row.state {
            self.change(index, &state, now);
        }
    }

    /// The index of the row of `task` (`resource` for a refusal), added if new.
    fn row(&mut self, task: String, resource: &str, action: &str) -> usize {
        let key = |row: &Row| {
            if task.is_empty() {
                row.task.is_empty() && row.resource == resource
            } else {
                row.task == task
            }
        };
        if let Some(index) = self.rows.iter().position(key) {
            return index;
        }
        self.width = self.width.max(resource.chars().count());
        let bar = self.multi.as_ref().map(|multi| {
            let bar = ProgressBar::new(BAR_STEPS)
                .with_style(style("{prefix} {bar:24.cyan/blue} {wide_msg}"));
            match &self.overall {
                Some(overall) => multi.insert_before(overall, bar),
                None => multi.add(bar),
            }
        });
        self.rows.push(Row {
            task,
            resource: resource.to_owned(),
            action: action.to_owned(),
            state: String::new(),
            attempts: 0,
            error: None,
            first_seen: self.started,
            ended: None,
            expected_end: None,
            bar,
        });
        if let Some(overall) = &self.overall {
            overall.set_length(self.rows.len() as u64);
        }
        self.rows.len() - 1
    }

    /// Records a new state of row `index` and shows it.
    fn change(&mut self, index: usize, state: &str, now: Instant) {
        let width = self.width;
        let row = &mut self.rows[index];
        row.state = state.to_owned();
        if row.is_final() {
            row.ended = Some(now);
        }
        match self.mode {
            DisplayMode::Lines => {
                let task = if row.task.is_empty() {
                    String::new()
                } else {
                    format!("task {}", row.task)
                };
                let line = format!(
                    "{:>6}  {:<width$}  {:<9} {task}  {}",
                    format_duration(row.elapsed(now)),
                    row.resource,
                    row.state,
                    row.note()
                );
                eprintln!("{}", line.trim_end());
            }
            DisplayMode::Live => {
                if let Some(bar) = &row.bar {
                    if row.is_final() {
                        let color = if row.state == "SUCCESS" {
                            "green"
                        } else {
                            "red"
                        };
                        bar.set_style(style(&format!(
                            "{{prefix:.{color}}} {{bar:24.{color}}} {{wide_msg}}"
                        )));
                    }
                }
            }
        }
    }

    /// Redraws the live display: positions, elapsed times, the overall count.
    fn redraw(&self) {
        if self.mode != DisplayMode::Live {
            return;
        }
        let now = Instant::now();
        for row in &self.rows {
            let Some(bar) = &row.bar else { continue };
            if bar.is_finished() {
                continue;
            }
            bar.set_prefix(format!(
                "{:<width$}  {:<9}",
                row.resource,
                row.state,
                width = self.width
            ));
            bar.set_position((row.progress(now) * BAR_STEPS as f64) as u64);
            bar.set_message(format!(
                "{:>6}  {}",
                format_duration(row.elapsed(now)),
                row.note()
            ));
            if row.is_final() {
                bar.finish();
            }
        }
        if let Some(overall) = &self.overall {
            let summary = self.summary();
            let done = self.rows.len() - summary.unfinished;
            overall.set_prefix(format!(
                "{:<width$}  {:<9}",
                "all",
                format!("{done}/{}", self.rows.len()),
                width = self.width
            ));
            overall.set_position(done as u64);
            overall.set_message(format!(
                "{:>6}  {}",
                format_duration(now.duration_since(self.started)),
                summary.describe()
            ));
        }
    }

    /// "StopInstances: ", from the first task that names its action.
    fn action_prefix(&self) -> String {
        self.rows
            .iter()
            .find(|row| !row.action.is_empty())
            .map(|row| format!("{}: ", row.action))
            .unwrap_or_default()
    }

    fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for row in &self.rows {
            match row.state.as_str() {
                "SUCCESS" => summary.succeeded += 1,
                "FAILED" => summary.failed += 1,
                "CANCELED" => summary.canceled += 1,
                "REFUSED" => summary.refused += 1,
                _ => summary.unfinished += 1,
            }
        }
        summary
    }

    /// Draws the last state and leaves the bars on screen.
    fn finish(&mut self) -> Summary {
        self.redraw();
        for bar in self.rows.iter().filter_map(|row| row.bar.as_ref()) {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if let Some(overall) = &self.overall {
            overall.finish();
        }
        self.summary()
    }

    /// Stops the live display where it is (before an error is printed).
    fn abandon(&mut self) {
        for bar in self.rows.iter().filter_map(|row| row.bar.as_ref()) {
            bar.abandon();
        }
        if let Some(overall) = &self.overall {
            overall.abandon();
        }
    }
}

/// The server's estimate of the time left (`retryAfter`, seconds).
fn retry_after(view: &Value) -> Option<Duration> {
    view.get("retryAfter")
        .and_then(Value::as_f64)
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .map(Duration::from_secs_f64)
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the templates are valid")
        .progress_chars("=> ")
}

/// `850ms`, `8.0s`, `1m05s`, `2h03m`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 3600 {
        format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60)
    } else if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else if duration >= Duration::from_secs(1) {
        format!("{:.1}s", duration.as_secs_f64())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(format_duration(Duration::from_millis(8049)), "8.0s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(format_duration(Duration::from_secs(7380)), "2h03m");
    }

    #[test]
    fn a_chain_is_tracked_per_task_and_summarized() {
        let start = Instant::now();
        let mut tracker = Tracker::new(DisplayMode::Lines, start);
        tracker.refused("ins-gone", "5000 no such instance");
        let task = |id: &str, resource: &str, state: &str| {
            json!({"requestId": id, "resourceId": resource, "action": "StopInstances",
                   "state": state, "attempts": 1})
        };
        tracker.apply(&json!({"status": 2, "tasks": [
            task("11", "ins-a", "RUNNING"), task("12", "ins-b", "QUEUED")]}));
        let mut failed = task("12", "ins-b", "FAILED");
        failed["error"] = json!({"code": 5100, "message": "simulated fault"});
        tracker.apply(&json!({"status": 1, "tasks": [task("11", "ins-a", "SUCCESS"), failed]}));
        let summary = tracker.finish();
        assert_eq!(
            summary,
            Summary {
                succeeded: 1,
                failed: 1,
                refused: 1,
                ..Summary::default()
            }
        );
        assert_eq!(summary.describe(), "1 succeeded, 1 failed, 1 refused");
        assert_eq!(tracker.rows[2].note(), "5100 simulated fault");
        assert!(!summary.all_succeeded());
    }

    #[test]
    fn a_running_bar_follows_the_estimate_and_never_fills_early() {
        let start = Instant::now();
        let mut row = Row {
            task: "1".into(),
            resource: "ins-a".into(),
            action: String::new(),
            state: "RUNNING".into(),
            attempts: 1,
            error: None,
            first_seen: start,
            ended: None,
            expected_end: Some(start + Duration::from_secs(10)),
            bar: None,
        };
        let at = |seconds| start + Duration::from_secs(seconds);
        assert!((row.progress(at(5)) - 0.5).abs() < 1e-9);
        assert_eq!(row.progress(at(30)), 0.95);
        row.expected_end = None;
        assert!((row.progress(at(10)) - 0.5).abs() < 1e-9);
        row.state = "SUCCESS".into();
        assert_eq!(row.progress(at(1)), 1.0);
    }

    #[test]
    fn a_server_without_the_long_poll_is_recognized() {
        let old = json!({"code": 4000, "message": "parameter waitSeconds is not a parameter of DescribeTaskResult; it takes requestId"});
        assert!(refuses_long_poll(&old));
        assert!(!refuses_long_poll(
            &json!({"code": 4000, "message": "requestId is required"})
        ));
    }
}
