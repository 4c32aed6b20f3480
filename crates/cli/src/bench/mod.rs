//! `qtask bench`: a load generator that behaves like real clients (every call signed
//! with a fresh nonce, keep-alive connections, a fixed concurrency or a fixed rate) and
//! reports throughput, latency percentiles, and the CPU and memory the server and the
//! generator used; and `qtask bench fill`, which fills a stopped server's store with
//! finished tasks to measure a large store. See BENCHMARKS.md for the method.

pub mod fill;
pub mod http;
pub mod load;
pub mod null_server;
pub mod probe;

use crate::client::Client;
use crate::connection::ConnectionArgs;
use crate::exit::Exit;
use http::{Connection, Target};
use load::{Answer, Call, Job, Pace, Tally};
use probe::{BucketQuantiles, Scrape};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EXAMPLES: &str = "\
Examples:
  qtask serve --workers 0 &            # then:
  qtask bench --scenario submit --duration 20s --concurrency 64
  qtask serve --sim-speed 0 &          # then any of:
  qtask bench --scenario e2e --duration 20s --concurrency 64 --server-pid $(pgrep -n qtask)
  qtask bench --scenario latency --rate 2000 --json
  qtask bench --scenario chain --concurrency 4
  qtask bench --scenario describe
  qtask bench fill --data-dir qtask-data --tasks 1000000   # server stopped";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Fill a stopped server's store with finished tasks (bulk inserts).
    #[command(after_help = "Example:\n  qtask bench fill --data-dir qtask-data --tasks 10000000")]
    Fill(fill::FillArgs),
    /// Serve the API path answering every call at once with code 0: the ceiling of this
    /// machine and generator, to read a sitting's figures against.
    #[command(
        name = "null-server",
        after_help = "Example:\n  qtask bench null-server --listen 127.0.0.1:18383 &\n  qtask bench --endpoint http://127.0.0.1:18383 --scenario describe"
    )]
    NullServer(null_server::NullServerArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// RunInstances (one resource, one task) accepted per second; serve with --workers 0.
    Submit,
    /// Tasks submitted and completed per second; serve with --sim-speed 0.
    E2e,
    /// Latency of 100-instance StopInstances/StartInstances calls (each caller waits
    /// for its chain to end before the next); serve with --sim-speed 0.
    Chain,
    /// DescribeTaskResult calls per second.
    Describe,
    /// Submission commit → executor start, from the server's start-delay histogram;
    /// serve with --sim-speed 0. Best with --rate.
    Latency,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// How long the load lasts (after set-up).
    #[arg(long, default_value = "20s", value_name = "DURATION")]
    pub duration: String,
    /// Concurrent callers, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
    /// A fixed total rate of calls per second (open loop; latency counts from each
    /// call's scheduled time); without it, each caller sends as soon as answered.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// The server's process ID on this machine: its CPU time per call and task and
    /// its memory are reported.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// Instances each chain caller stops and starts.
pub const CHAIN_SIZE: usize = 100;

/// How long to wait after the load for the server to finish what it accepted.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

const START_DELAY_METRIC: &str = "qtask_task_start_delay_seconds";
const TASK_EVENTS_METRIC: &str = "qtask_task_events_total";

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub endpoint: String,
    pub duration_s: f64,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub calls: u64,
    pub ok: u64,
    /// Calls that did not answer code 0, by code (`transport`: no answer).
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    pub calls_per_s: f64,
    pub ok_per_s: f64,
    pub latency_ms: Latency,
    /// Tasks the server completed (e2e, latency).
    pub tasks: Option<TaskFigures>,
    /// Submission commit → executor start, as the server measured it (latency).
    pub start_delay: Option<BucketQuantiles>,
    pub client: ProcessCost,
    pub server: Option<ServerCost>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct TaskFigures {
    pub submitted: u64,
    /// Tasks that reached a final state during the load.
    pub completed: u64,
    pub completed_per_s: f64,
    /// Accepted but unfinished when the load ended.
    pub backlog_at_end: u64,
    /// How long the server took after the load to finish the backlog.
    pub drained_in_s: f64,
    /// Task events the server's metrics missed (counts are low by this much).
    pub events_missed: u64,
}

#[derive(Debug, Serialize)]
pub struct ProcessCost {
    pub cpu_s: f64,
    pub cpu_us_per_call: f64,
}

#[derive(Debug, Serialize)]
pub struct ServerCost {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_us_per_call: f64,
    /// Per completed task (e2e) or accepted task (submit).
    pub cpu_us_per_task: Option<f64>,
    pub rss_mib_before: f64,
    pub rss_mib_max: f64,
    pub rss_mib_after: f64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Exit> {
    match args.command {
        Some(BenchCommand::Fill(fill)) => fill::run(fill).await.map(|()| Exit::Success),
        Some(BenchCommand::NullServer(server)) => null_server::run(server).await,
        None => {
            let json = args.run.json;
            let report = run_load(args.run).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_table(&report);
            }
            Ok(Exit::from_success(report.ok > 0))
        }
    }
}

/// Runs a scenario; returns its report.
pub async fn run_load(args: RunArgs) -> anyhow::Result<Report> {
    let scenario = args.scenario.ok_or_else(|| {
        anyhow::anyhow!("--scenario is required: submit, e2e, chain, describe or latency")
    })?;
    let duration = humantime::parse_duration(&args.duration).map_err(|e| {
        anyhow::anyhow!(
            "--duration must be a duration such as 20s, not {:?}: {e}",
            args.duration
        )
    })?;
    if duration.is_zero() {
        anyhow::bail!("--duration must be longer than 0");
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            anyhow::bail!("--rate must be a number of calls per second above 0, not {rate}");
        }
        if scenario == Scenario::Chain {
            anyhow::bail!(
                "--rate does not apply to --scenario chain: each caller waits for its chain to end"
            );
        }
    }
    let client = Arc::new(args.connection.client()?);
    let config = client.config();
    let target = Target::of(&config.endpoint, client.host(), config.method)?;
    let pid = args.server_pid.map(|p| p.to_string());
    let mut metrics = Connection::new(target.clone());
    // Fails early, with the server's own words, on a wrong endpoint or key.
    let probe = client
        .call("DescribeInstances", [("limit", "1")])
        .await
        .map_err(anyhow::Error::from)?;
    if probe["code"] != 0 {
        anyhow::bail!(
            "the server refused a test call (DescribeInstances): {} {}",
            probe["code"],
            probe["message"].as_str().unwrap_or_default()
        );
    }
    let needs_metrics = matches!(scenario, Scenario::E2e | Scenario::Latency);
    let pace = Pace {
        duration,
        rate: args.rate,
    };
    let connections = || (0..args.concurrency).map(|_| Connection::new(target.clone()));

    // Set-up, then the measured window between `before` and `after`.
    let before_metrics = if needs_metrics {
        wait_idle(&mut metrics, scenario).await?;
        Some(scrape(&mut metrics, scenario).await?)
    } else {
        None
    };
    let (tally, before, after, sampler) = match scenario {
        Scenario::Submit | Scenario::E2e | Scenario::Latency => {
            let jobs = connections().map(|c| (RunInstances, c)).collect();
            measured(pid.as_deref(), load::run(jobs, Arc::clone(&client), pace)).await?
        }
        Scenario::Describe => {
            let tasks = describe_targets(&client, args.concurrency).await?;
            let jobs = tasks
                .into_iter()
                .zip(connections())
                .map(|(request_id, c)| (DescribeTask { request_id }, c))
                .collect();
            measured(pid.as_deref(), load::run(jobs, Arc::clone(&client), pace)).await?
        }
        Scenario::Chain => {
            let mut jobs = Vec::new();
            for (ids, connection) in chain_instances(&client, args.concurrency)
                .await?
                .into_iter()
                .zip(connections())
            {
                jobs.push((
                    ChainJob {
                        ids,
                        stop_next: true,
                        pending: None,
                    },
                    connection,
                ));
            }
            measured(pid.as_deref(), load::run(jobs, Arc::clone(&client), pace)).await?
        }
    };

    let seconds = tally.elapsed.as_secs_f64();
    let mut tasks = None;
    let mut start_delay = None;
    if let Some(before_metrics) = before_metrics {
        let completed = |s: &Scrape| {
            ["succeeded", "failed", "canceled"]
                .iter()
                .map(|event| s.sum(TASK_EVENTS_METRIC, &[("event", event)]))
                .sum::<f64>()
        };
        let missed = |s: &Scrape| s.sum("qtask_metrics_events_missed_total", &[]);
        let at_end = scrape(&mut metrics, scenario).await?;
        let completed_in_window = (completed(&at_end) - completed(&before_metrics)).max(0.0) as u64;
        let submitted = tally.ok;
        // Wait until every accepted task has finished, so the next run starts clean
        // and the start-delay histogram holds every task of this one.
        let drain_start = Instant::now();
        let mut drained = at_end;
        while (completed(&drained) - completed(&before_metrics)) < submitted as f64
            && drain_start.elapsed() < DRAIN_LIMIT
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drained = scrape(&mut metrics, scenario).await?;
        }
        tasks = Some(TaskFigures {
            submitted,
            completed: completed_in_window,
            completed_per_s: completed_in_window as f64 / seconds,
            backlog_at_end: submitted.saturating_sub(completed_in_window),
            drained_in_s: drain_start.elapsed().as_secs_f64(),
            events_missed: (missed(&drained) - missed(&before_metrics)).max(0.0) as u64,
        });
        if scenario == Scenario::Latency {
            start_delay = probe::quantiles_between(&before_metrics, &drained, START_DELAY_METRIC);
            if start_delay.is_none() {
                anyhow::bail!(
                    "the server's {START_DELAY_METRIC} histogram saw no task start: is it a \
                     qtask with workers on (--sim-speed 0)?"
                );
            }
        }
    }

    let calls = tally.calls();
    let per_call = |cpu: f64| {
        if calls == 0 {
            0.0
        } else {
            cpu * 1e6 / calls as f64
        }
    };
    let server = match (&pid, before, after) {
        (Some(pid), Some(before), Some(after)) => {
            let cpu = after.cpu_s - before.cpu_s;
            let task_count = match scenario {
                Scenario::Submit => Some(tally.ok),
                Scenario::E2e | Scenario::Latency => tasks.as_ref().map(|t| t.completed),
                Scenario::Chain | Scenario::Describe => None,
            };
            Some(ServerCost {
                pid: pid.parse().unwrap_or_default(),
                cpu_s: cpu,
                cpu_us_per_call: per_call(cpu),
                cpu_us_per_task: task_count.filter(|n| *n > 0).map(|n| cpu * 1e6 / n as f64),
                rss_mib_before: before.rss_mib,
                rss_mib_max: sampler.max(after.rss_mib),
                rss_mib_after: after.rss_mib,
            })
        }
        _ => None,
    };
    let client_cpu = tally.client_cpu_s;
    let ms = |us: u64| us as f64 / 1000.0;
    let h = &tally.latency_us;
    let report = Report {
        scenario,
        endpoint: config.endpoint.clone(),
        duration_s: seconds,
        concurrency: args.concurrency,
        rate: args.rate,
        calls,
        ok: tally.ok,
        errors: tally.errors.clone(),
        error_samples: tally.error_samples.clone(),
        calls_per_s: calls as f64 / seconds,
        ok_per_s: tally.ok as f64 / seconds,
        latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        },
        tasks,
        start_delay,
        client: ProcessCost {
            cpu_s: client_cpu,
            cpu_us_per_call: per_call(client_cpu),
        },
        server,
    };
    Ok(report)
}

async fn scrape(metrics: &mut Connection, scenario: Scenario) -> anyhow::Result<Scrape> {
    let body = metrics.get("/metrics").await.map_err(|e| {
        anyhow::anyhow!(
            "--scenario {scenario:?} reads the server's /metrics, which failed \
             (serve with --metrics on): {e:#}"
        )
    })?;
    Ok(Scrape::parse(&String::from_utf8_lossy(&body)))
}

/// Waits until the server has no unfinished task: tasks left over (e.g. accepted with
/// workers off, then recovered at a restart) would run during the window and be
/// counted as this run's.
async fn wait_idle(metrics: &mut Connection, scenario: Scenario) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let scrape = scrape(metrics, scenario).await?;
        let unfinished = ["QUEUED", "RUNNING"]
            .iter()
            .map(|state| scrape.sum("qtask_tasks", &[("state", state)]))
            .sum::<f64>();
        if unfinished == 0.0 {
            return Ok(());
        }
        if started.elapsed() > DRAIN_LIMIT {
            anyhow::bail!(
                "the server still has {unfinished} unfinished tasks after {DRAIN_LIMIT:?}; \
                 e2e and latency need it idle at the start"
            );
        }
        if !told {
            eprintln!("waiting for the server's {unfinished} unfinished tasks to finish first");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    cpu_s: f64,
    rss_mib: f64,
}

fn sample(pid: &str) -> anyhow::Result<ProcessSample> {
    Ok(ProcessSample {
        cpu_s: probe::cpu_seconds(pid)?,
        rss_mib: probe::rss_mib(pid)?,
    })
}

/// The highest RSS seen while the load ran.
struct RssPeak(f64);

impl RssPeak {
    fn max(&self, other: f64) -> f64 {
        self.0.max(other)
    }
}

/// Runs the load between two samples of the server process (and of this one), with
/// the server's RSS sampled every 100 ms in between.
async fn measured(
    pid: Option<&str>,
    load: impl std::future::Future<Output = anyhow::Result<Tally>>,
) -> anyhow::Result<(Tally, Option<ProcessSample>, Option<ProcessSample>, RssPeak)> {
    let before = pid.map(sample).transpose()?;
    let own_before = probe::cpu_seconds("self")?;
    let done = tokio_util::sync::CancellationToken::new();
    let sampler = pid.map(|pid| {
        let pid = pid.to_owned();
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !done.is_cancelled() {
                if let Ok(rss) = probe::rss_mib(&pid) {
                    peak = peak.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });
    let mut tally = load.await?;
    done.cancel();
    tally.client_cpu_s = probe::cpu_seconds("self")? - own_before;
    let after = pid.map(sample).transpose()?;
    let peak = match sampler {
        Some(sampler) => sampler.await.unwrap_or(0.0),
        None => 0.0,
    };
    Ok((tally, before, after, RssPeak(peak)))
}

/// Submit, e2e and latency: one RunInstances call creates one instance and one task.
struct RunInstances;

impl Job for RunInstances {
    fn next_call(&mut self) -> Call {
        Call {
            action: "RunInstances",
            params: vec![
                ("goodsNum".into(), "1".into()),
                ("instanceName".into(), "bench".into()),
            ],
        }
    }
}

struct DescribeTask {
    request_id: String,
}

impl Job for DescribeTask {
    fn next_call(&mut self) -> Call {
        Call {
            action: "DescribeTaskResult",
            params: vec![("requestId".into(), self.request_id.clone())],
        }
    }
}

/// Stops, then starts, the same 100 instances, waiting (untimed) for each chain to end.
struct ChainJob {
    ids: Vec<String>,
    stop_next: bool,
    pending: Option<String>,
}

impl Job for ChainJob {
    async fn prepare(
        &mut self,
        connection: &mut Connection,
        client: &Client,
    ) -> anyhow::Result<()> {
        if let Some(request_id) = self.pending.take() {
            wait_final(connection, client, &request_id).await?;
        }
        Ok(())
    }

    fn next_call(&mut self) -> Call {
        let action = if self.stop_next {
            "StopInstances"
        } else {
            "StartInstances"
        };
        self.stop_next = !self.stop_next;
        Call {
            action,
            params: self
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (format!("instanceIds.{i}"), id.clone()))
                .collect(),
        }
    }

    fn answered(&mut self, answer: &Answer) {
        self.pending = answer.request_id();
    }
}

/// Long-polls DescribeTaskResult until the task or chain is final.
async fn wait_final(
    connection: &mut Connection,
    client: &Client,
    request_id: &str,
) -> anyhow::Result<()> {
    loop {
        let form = client.signed_form(
            "DescribeTaskResult",
            [("requestId", request_id), ("waitSeconds", "30")],
        )?;
        let body = connection.call(form).await?;
        let answer: Answer = serde_json::from_slice(&body)?;
        if answer.code != 0 {
            anyhow::bail!(
                "DescribeTaskResult {request_id} answered {} {}",
                answer.code,
                answer.message
            );
        }
        let status = answer.data.and_then(|data| data.status);
        if status != Some(2) {
            return Ok(());
        }
    }
}

/// One task per caller to describe (it need not finish: workers may be off).
async fn describe_targets(client: &Client, callers: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(callers);
    for _ in 0..callers {
        let answer = client
            .call(
                "RunInstances",
                [("goodsNum", "1"), ("instanceName", "bench-describe")],
            )
            .await?;
        ids.push(accepted("RunInstances", &answer)?);
    }
    Ok(ids)
}

/// `CHAIN_SIZE` running instances per caller.
async fn chain_instances(client: &Client, callers: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let size = CHAIN_SIZE.to_string();
    let mut sets = Vec::with_capacity(callers);
    let mut target = None;
    for _ in 0..callers {
        let answer = client
            .call(
                "RunInstances",
                [("goodsNum", size.as_str()), ("instanceName", "bench-chain")],
            )
            .await?;
        let request_id = accepted("RunInstances", &answer)?;
        let ids: Vec<String> = answer["instanceIds"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let config = client.config();
        let target = match &mut target {
            Some(t) => t,
            None => target.insert(Connection::new(Target::of(
                &config.endpoint,
                client.host(),
                config.method,
            )?)),
        };
        wait_final(target, client, &request_id).await?;
        sets.push(ids);
    }
    Ok(sets)
}

fn accepted(action: &str, answer: &serde_json::Value) -> anyhow::Result<String> {
    match (answer["code"].as_i64(), answer["requestId"].as_str()) {
        (Some(0), Some(id)) => Ok(id.to_owned()),
        _ => anyhow::bail!("set-up call {action} was refused: {answer}"),
    }
}

fn print_table(report: &Report) {
    let mut lines = vec![
        format!(
            "scenario     {:?}, {} callers{}, {:.1} s against {}",
            report.scenario,
            report.concurrency,
            report
                .rate
                .map(|r| format!(" at {r} calls/s"))
                .unwrap_or_default(),
            report.duration_s,
            report.endpoint
        ),
        format!(
            "calls        {} ({} ok, {} errors) — {:.0} calls/s, {:.0} ok/s",
            report.calls,
            report.ok,
            report.calls - report.ok,
            report.calls_per_s,
            report.ok_per_s
        ),
        format!(
            "latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            report.latency_ms.p50,
            report.latency_ms.p90,
            report.latency_ms.p99,
            report.latency_ms.p999,
            report.latency_ms.max
        ),
    ];
    for (code, count) in &report.errors {
        let sample = report.error_samples.get(code).cloned().unwrap_or_default();
        lines.push(format!("error        {code} × {count}: {sample}"));
    }
    if let Some(t) = &report.tasks {
        lines.push(format!(
            "tasks        {} submitted, {} completed during the load ({:.0}/s), backlog {} drained in {:.1} s",
            t.submitted, t.completed, t.completed_per_s, t.backlog_at_end, t.drained_in_s
        ));
    }
    if let Some(d) = &report.start_delay {
        lines.push(format!(
            "start delay  commit → executor start over {} tasks: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
            d.samples, d.p50_ms, d.p90_ms, d.p99_ms
        ));
    }
    lines.push(format!(
        "client CPU   {:.2} s ({:.1} µs per call)",
        report.client.cpu_s, report.client.cpu_us_per_call
    ));
    if let Some(s) = &report.server {
        lines.push(format!(
            "server CPU   {:.2} s ({:.1} µs per call{})",
            s.cpu_s,
            s.cpu_us_per_call,
            s.cpu_us_per_task
                .map(|t| format!(", {t:.1} µs per task"))
                .unwrap_or_default()
        ));
        lines.push(format!(
            "server RSS   {:.1} MiB before, {:.1} MiB max, {:.1} MiB after",
            s.rss_mib_before, s.rss_mib_max, s.rss_mib_after
        ));
    }
    println!("{}", lines.join("\n"));
}
