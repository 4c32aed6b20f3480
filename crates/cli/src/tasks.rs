//! `qtask tasks ls|show|cancel|retry|watch`: the task API (DescribeTasks,
//! DescribeTaskResult, CancelTask, RetryTask) and the event stream, as tables or JSON.

use crate::client::{Client, ClientError, SseEvent, EVENTS_PATH};
use crate::connection::ConnectionArgs;
use crate::exit::{answer_code, CliError, Exit};
use crate::output::{self, cell, error_cell, page_footer, table, OutputArgs, OutputFormat};
use crate::wait;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    pub command: TasksCommand,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// List tasks (DescribeTasks), newest first.
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  qtask tasks ls\n  qtask tasks ls --state FAILED,CANCELED --action StopInstances\n  qtask tasks ls --resource ins-1a2b3c4d --limit 100 --output json"
    )]
    Ls(LsArgs),
    /// Show a task, or a chain with a table of its tasks (DescribeTaskResult).
    #[command(
        after_help = "Examples:\n  qtask tasks show 42\n  qtask tasks show 41 --output json"
    )]
    Show {
        /// A task's or a chain's requestId.
        id: String,
    },
    /// Cancel a task, or every unfinished task of a chain (CancelTask): a queued task
    /// ends CANCELED at once, a running one is asked to stop.
    #[command(
        after_help = "Examples:\n  qtask tasks cancel 42\n  qtask tasks cancel 41 --output json"
    )]
    Cancel {
        /// A task's or a chain's requestId.
        id: String,
    },
    /// Run the FAILED and CANCELED tasks of a chain (or a task) again (RetryTask).
    #[command(after_help = "Examples:\n  qtask tasks retry 41\n  qtask tasks retry 41 --wait")]
    Retry {
        /// A task's or a chain's requestId.
        id: String,
        /// Follow the new tasks until they are final; exit 1 if any failed.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        wait_timeout: u64,
    },
    /// Print task events as they happen (the /v2/events stream): every task of the
    /// account, or only those of one task or chain, until they are all final.
    #[command(
        after_help = "Examples:\n  qtask tasks watch\n  qtask tasks watch 41              # ends when chain 41 is final; exit 1 if it failed\n  qtask tasks watch --action StopInstances --output json | jq .event"
    )]
    Watch {
        /// Only this task's or chain's events; the command ends when it is final.
        id: Option<String>,
        /// Only tasks of this action.
        #[arg(long)]
        action: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only tasks in these states: QUEUED, RUNNING, SUCCESS, FAILED, CANCELED (comma
    /// list, or repeat the flag).
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<String>,
    /// Only tasks of this action.
    #[arg(long)]
    pub action: Option<String>,
    /// Only tasks on this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// At most this many tasks (1 to 100) [server default: 20].
    #[arg(long)]
    pub limit: Option<u32>,
    /// Skip this many tasks.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

pub async fn run(args: TasksArgs) -> anyhow::Result<Exit> {
    let client = args.connection.client()?;
    let format = args.output.format();
    match args.command {
        TasksCommand::Ls(ls) => list(&client, ls, format).await,
        TasksCommand::Show { id } => {
            let params = vec![("requestId".to_owned(), id)];
            output::query(&client, "DescribeTaskResult", params, format, |answer| {
                show_table(&answer["data"])
            })
            .await
        }
        TasksCommand::Cancel { id } => {
            let params = vec![("requestId".to_owned(), id)];
            output::query(&client, "CancelTask", params, format, cancel_table).await
        }
        TasksCommand::Retry {
            id,
            wait,
            wait_timeout,
        } => retry(client, id, wait, wait_timeout, format).await,
        TasksCommand::Watch { id, action } => watch(&client, id, action, format).await,
    }
}

async fn list(client: &Client, args: LsArgs, format: OutputFormat) -> anyhow::Result<Exit> {
    let mut params = Vec::new();
    if !args.state.is_empty() {
        let states: Vec<String> = args.state.iter().map(|s| s.to_ascii_uppercase()).collect();
        params.push(("status".to_owned(), states.join(",")));
    }
    let optional = [
        ("action", args.action),
        ("resourceId", args.resource),
        ("limit", args.limit.map(|l| l.to_string())),
    ];
    params.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    params.push(("offset".to_owned(), args.offset.to_string()));
    output::query(client, "DescribeTasks", params, format, |answer| {
        let tasks = answer["taskSet"].as_array().cloned().unwrap_or_default();
        let rows = tasks.iter().map(|task| {
            vec![
                cell(&task["requestId"]),
                cell(&task["action"]),
                cell(&task["resourceId"]),
                cell(&task["state"]),
                cell(&task["attempts"]),
                cell(&task["createTime"]),
                cell(&task["endTime"]),
                cell(&task["chainId"]),
                error_cell(&task["error"], 60),
            ]
        });
        let headers = [
            "TASK", "ACTION", "RESOURCE", "STATE", "ATTEMPTS", "CREATED", "ENDED", "CHAIN", "ERROR",
        ];
        format!(
            "{}\n{}",
            table(&headers, rows),
            page_footer(answer, tasks.len(), args.offset)
        )
    })
    .await
}

/// A task as field/value lines, or a chain as a summary and a table of its tasks.
fn show_table(data: &Value) -> String {
    let Some(tasks) = data["tasks"].as_array() else {
        let rows = data.as_object().into_iter().flatten().map(|(name, value)| {
            let value = match name.as_str() {
                "error" => error_cell(value, usize::MAX),
                _ => cell(value),
            };
            vec![name.clone(), value]
        });
        return format!("{}\n", table(&["FIELD", "VALUE"], rows));
    };
    let counts: Vec<String> = data["taskStates"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, count)| count.as_u64().unwrap_or(0) > 0)
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    let header = format!(
        "chain {}  {}  {}  ({})\ncreated {}  started {}  ended {}\n",
        cell(&data["requestId"]),
        cell(&data["action"]),
        cell(&data["state"]),
        counts.join(", "),
        cell(&data["createTime"]),
        cell(&data["startTime"]),
        cell(&data["endTime"]),
    );
    let rows = tasks.iter().map(|task| {
        vec![
            cell(&task["requestId"]),
            cell(&task["resourceId"]),
            cell(&task["state"]),
            cell(&task["attempts"]),
            cell(&task["startTime"]),
            cell(&task["endTime"]),
            error_cell(&task["error"], 80),
        ]
    });
    let headers = [
        "TASK", "RESOURCE", "STATE", "ATTEMPTS", "STARTED", "ENDED", "ERROR",
    ];
    format!("{header}\n{}\n", table(&headers, rows))
}

fn cancel_table(answer: &Value) -> String {
    let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
    let rows = tasks.iter().map(|task| {
        vec![
            cell(&task["requestId"]),
            cell(&task["resourceId"]),
            cell(&task["action"]),
            cell(&task["cancel"]),
            cell(&task["state"]),
            cell(&task["message"]),
        ]
    });
    format!(
        "{}\n",
        table(
            &["TASK", "RESOURCE", "ACTION", "CANCEL", "STATE", "MESSAGE"],
            rows
        )
    )
}

/// A chain answer's resources: the task each got, or why it was refused.
fn accepted_table(answer: &Value) -> String {
    let rows = answer["detail"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(resource, entry)| {
            let outcome = if answer_code(entry) == 0 {
                "accepted".to_owned()
            } else {
                format!(
                    "refused: {} {}",
                    answer_code(entry),
                    entry["message"].as_str().unwrap_or_default()
                )
            };
            vec![resource.clone(), cell(&entry["requestId"]), outcome]
        });
    format!(
        "chain {}\n{}\n",
        cell(&answer["requestId"]),
        table(&["RESOURCE", "TASK", "RESULT"], rows)
    )
}

async fn retry(
    client: Client,
    id: String,
    wait: bool,
    wait_timeout: u64,
    format: OutputFormat,
) -> anyhow::Result<Exit> {
    let answer = client
        .call("RetryTask", [("requestId".to_owned(), id)])
        .await?;
    match format {
        OutputFormat::Json => output::print_json(&answer),
        OutputFormat::Table if answer_code(&answer) == 0 => print!("{}", accepted_table(&answer)),
        OutputFormat::Table => {}
    }
    // 5400 (some resources refused) still started tasks worth following.
    if !matches!(answer_code(&answer), 0 | 5400) {
        return Err(CliError::answer("RetryTask", &answer).into());
    }
    if !wait {
        return Ok(Exit::from_success(answer_code(&answer) == 0));
    }
    wait::follow(Arc::new(client), &answer, Duration::from_secs(wait_timeout)).await
}

/// Prints the event stream until it ends; with an ID, exits like `--wait`: 0 if the
/// task or chain succeeded, else 1.
async fn watch(
    client: &Client,
    id: Option<String>,
    action: Option<String>,
    format: OutputFormat,
) -> anyhow::Result<Exit> {
    let params: Vec<(String, String)> = [("requestId", id.clone()), ("action", action)]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .collect();
    let mut stream = client.events(params).await.map_err(|error| match error {
        ClientError::Status { status: 404, .. } => {
            anyhow::Error::new(CliError::Unavailable(format!(
                "{} does not offer the task event stream ({EVENTS_PATH} answered 404): the server \
             predates it. Follow a task with `qtask tasks show ID` or `qtask call … --wait`.",
                client.config().endpoint
            )))
        }
        ClientError::StreamRefused { code, message } => anyhow::Error::new(CliError::Answer {
            action: crate::client::WATCH_ACTION.to_owned(),
            code,
            message,
        }),
        other => other.into(),
    })?;
    if format == OutputFormat::Table {
        eprintln!(
            "Watching {} (Ctrl-C to stop)…",
            id.as_deref()
                .map_or("every task".to_owned(), |id| format!("task {id}"))
        );
    }
    while let Some(event) = stream.next().await? {
        print_event(&event, format);
        if event.event == "end" {
            return match id {
                Some(id) => final_status(client, &id).await,
                None => Ok(Exit::Success),
            };
        }
    }
    Err(CliError::Unavailable(format!(
        "the server closed the event stream ({} stopped?)",
        client.config().endpoint
    ))
    .into())
}

/// 0 when the task or chain ended SUCCESS, else 1.
async fn final_status(client: &Client, id: &str) -> anyhow::Result<Exit> {
    let answer = client
        .call("DescribeTaskResult", [("requestId", id)])
        .await?;
    if answer_code(&answer) != 0 {
        return Err(CliError::answer("DescribeTaskResult", &answer).into());
    }
    Ok(Exit::from_success(answer["data"]["status"] == 0))
}

fn print_event(event: &SseEvent, format: OutputFormat) {
    let mut data: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
    if let Some(fields) = data.as_object_mut() {
        fields
            .entry("event")
            .or_insert_with(|| Value::String(event.event.clone()));
    }
    match format {
        OutputFormat::Json => println!("{data}"),
        OutputFormat::Table => println!("{}", event_line(&event.event, &data)),
    }
}

/// `2026-11-27 20:46:20  succeeded  task 12  StopInstances ins-1a2b3c4d  attempt 1  8.0s`.
pub fn event_line(kind: &str, data: &Value) -> String {
    if kind == "end" {
        return format!("end: every task of {} is final", cell(&data["requestId"]));
    }
    let mut line = format!(
        "{}  {:<9}  task {:<6}  {} {}  attempt {}",
        cell(&data["time"]),
        kind,
        cell(&data["requestId"]),
        cell(&data["action"]),
        cell(&data["resourceId"]),
        cell(&data["attempt"]),
    );
    if let Some(ms) = data["durationMs"].as_u64() {
        line.push_str(&format!(
            "  {}",
            wait::format_duration(Duration::from_millis(ms))
        ));
    }
    if !data["error"].is_null() {
        line.push_str(&format!("  {}", error_cell(&data["error"], usize::MAX)));
    }
    if let Some(next) = data["nextAttemptTime"].as_str() {
        line.push_str(&format!("  next attempt at {next}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_read_as_one_line_each() {
        let failed = json!({"seq": 9, "event": "failed", "time": "2026-11-27 20:46:20",
            "requestId": "12", "action": "StopInstances", "resourceId": "ins-1a2b3c4d",
            "attempt": 1, "durationMs": 8000,
            "error": {"code": 5100, "message": "simulated fault"}});
        assert_eq!(
            event_line("failed", &failed),
            "2026-11-27 20:46:20  failed     task 12      StopInstances ins-1a2b3c4d  attempt 1  8.0s  5100 simulated fault"
        );
        assert_eq!(
            event_line("end", &json!({"requestId": "11"})),
            "end: every task of 11 is final"
        );
    }

    #[test]
    fn a_chain_shows_its_counts_and_a_row_per_task() {
        let chain = json!({"requestId": "11", "action": "StopInstances", "state": "FAILED",
            "createTime": "t0", "startTime": "t1", "endTime": "t2",
            "taskStates": {"QUEUED": 0, "SUCCESS": 1, "FAILED": 1},
            "tasks": [
                {"requestId": "12", "resourceId": "ins-a", "state": "SUCCESS", "attempts": 1},
                {"requestId": "13", "resourceId": "ins-b", "state": "FAILED", "attempts": 1,
                 "error": {"code": 5100, "message": "simulated fault"}}]});
        let text = show_table(&chain);
        assert!(
            text.starts_with("chain 11  StopInstances  FAILED  (1 SUCCESS, 1 FAILED)"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("ins-b") && l.contains("5100 simulated fault")),
            "{text}"
        );
    }
}
