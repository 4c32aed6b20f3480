//! The crash test (issue #3, item 11): sustained mixed load against the real server,
//! which is SIGKILLed at random moments and restarted on the same data directory, then
//! checks that nothing acknowledged was lost, that no task ever ran twice at once, and
//! that every instance's state agrees with its history.
//!
//! Quick mode (3 kills; what CI runs):
//!
//! ```text
//! cargo test -p qtask --test crash -- --nocapture
//! ```
//!
//! Full mode (20 kills):
//!
//! ```text
//! QTASK_CRASH_KILLS=20 cargo test --release -p qtask --test crash -- --nocapture
//! ```
//!
//! `QTASK_CRASH_KILLS=N` sets the number of kills; `QTASK_CRASH_SEED=S` repeats a run's
//! random choices (each run prints its seed; the timing of kills against tasks still
//! varies). Linux only: the server's process ID is read from `/proc`.
//!
//! How it works. The server runs with slow simulated tasks (20–400 ms, so tasks are
//! often running at a kill), a 2 s lease, retryable faults on StopInstances and
//! RunInstances, and a journal (`--sim-journal`) in which the simulator appends a line
//! at every attempt's start and end. Client loops send signed RunInstances,
//! Start/Stop/RestartInstances chains, ModifyInstanceAttributes (which queues behind a
//! busy instance), CancelTask and DescribeTaskResult, and remember every requestId
//! answered with code 0. A killer SIGKILLs the server 0.3–1.5 s after each start and
//! restarts it, N times; before one kill in four it also freezes the server (SIGSTOP)
//! past the lease, so workers wake to lost leases and their tasks are claimed again —
//! the one way a task could run twice. Then the load stops, the tasks drain, and the
//! checks run: through the API (acknowledged IDs final, instance states replayed from
//! DescribeResourceHistory, nothing RUNNING), from the journal (attempts of one task
//! whose intervals overlap; an attempt without an end lasted until its process was
//! killed), and from the store after a graceful stop (fenced completions, task states).

#[path = "api/helpers.rs"]
mod helpers;

/// The test's parts, in `tests/crash/`.
mod crash {
    pub mod audit;
    pub mod journal;
    pub mod load;
    pub mod replay;
}

use crash::audit;
use crash::journal::{self, Journal, Kill};
use crash::load::{Load, Tally};
use helpers::TestApp;
use qtask_core::TaskState;
use qtask_engine::time::now_millis;
use qtask_store::{Store, StoreStats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::{Debug, Display};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_KILLS: usize = 3;
/// Concurrent client loops.
const CLIENT_LOOPS: u64 = 4;
const LEASE: Duration = Duration::from_secs(2);
/// How long a freeze lasts: past the lease, so every running task loses it.
const FREEZE: Duration = Duration::from_millis(2500);
/// How long the tasks may take to drain once the load stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

/// Retryable faults with short backoffs, so retries happen often and finish quickly.
const CONFIG: &str = r#"
[sim_failure_rates]
StopInstances = 0.1
RunInstances = 0.2

[actions.StopInstances]
backoff = "50ms"

[actions.RunInstances]
backoff = "50ms"
"#;

/// The run's settings, from the environment.
struct Settings {
    kills: usize,
    /// Freezes, each before a different kill.
    freezes: usize,
    seed: u64,
}

impl Settings {
    fn from_env() -> Self {
        let kills = env_number("QTASK_CRASH_KILLS").map_or(DEFAULT_KILLS, |n| n as usize);
        Self {
            kills,
            freezes: kills.div_ceil(4),
            seed: env_number("QTASK_CRASH_SEED").unwrap_or_else(rand::random),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
    )
}

/// The process ID of this test's server on `data_dir`: the child of this process whose
/// command line names that directory.
fn server_pid(data_dir: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    let wanted = data_dir.as_os_str().as_bytes();
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").expect("/proc is readable (the test needs Linux)");
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves_dir = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == wanted);
        if serves_dir && parent_pid(pid) == Some(me) {
            return pid;
        }
    }
    panic!(
        "no qtask process of this test serves {}",
        data_dir.display()
    );
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces, so read after its last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Kills the server at random moments and restarts it, `settings.kills` times, freezing
/// it first before `settings.freezes` of the kills; points the load at each new server.
async fn disrupt(
    app: &mut TestApp,
    load: &Load,
    settings: &Settings,
    rng: &mut StdRng,
) -> Vec<Kill> {
    let frozen: Vec<usize> =
        rand::seq::index::sample(rng, settings.kills, settings.freezes.min(settings.kills))
            .into_vec();
    let mut kills = Vec::new();
    for round in 0..settings.kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        if frozen.contains(&round) {
            app.signal("STOP");
            tokio::time::sleep(FREEZE).await;
            app.signal("CONT");
            // Leases are lost on waking; let the tasks be claimed again before the kill.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1000))).await;
        }
        let pid = server_pid(&app.data_dir);
        app.kill();
        kills.push(Kill {
            pid,
            at: now_millis(),
        });
        tokio::task::block_in_place(|| app.restart(None));
        load.switch_to(app.client());
    }
    kills
}

/// What the checks through the API found, once the load stopped.
struct ApiFindings {
    acknowledged: Vec<String>,
    unsettled: Vec<(String, serde_json::Value)>,
    drained: bool,
    instances: usize,
    disagreements: Vec<crash::replay::Disagreement>,
    running_by_api: u64,
}

impl ApiFindings {
    /// Waits for the tasks to drain, then checks every acknowledged ID and instance.
    async fn gather(client: Arc<qtask::client::Client>, load: &Load) -> Self {
        let drained = audit::drain(&client, DRAIN_DEADLINE).await;
        let acknowledged = load.acknowledged();
        let unsettled = audit::unsettled(Arc::clone(&client), &acknowledged).await;
        // The check must notice an ID the server never gave.
        let never_given = acknowledged
            .iter()
            .filter_map(|id| id.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1_000_000;
        let probe = audit::unsettled(Arc::clone(&client), &[never_given.to_string()]).await;
        assert_eq!(
            probe.len(),
            1,
            "the check missed a requestId never given: {probe:?}"
        );
        let instances = audit::instances(&client).await;
        let disagreements = audit::disagreements(&client, &instances).await;
        Self {
            acknowledged,
            unsettled,
            drained,
            instances: instances.len(),
            disagreements,
            running_by_api: audit::tasks_in(&client, "RUNNING").await,
        }
    }
}

/// What the checks found.
struct Findings {
    kills: Vec<Kill>,
    freezes: usize,
    api: ApiFindings,
    stats: StoreStats,
    journal: Journal,
    overlaps: Vec<(journal::Attempt, journal::Attempt)>,
}

impl Findings {
    fn tasks_in(&self, wanted: TaskState) -> u64 {
        self.stats
            .tasks
            .iter()
            .filter(|(state, _)| *state == wanted)
            .map(|(_, n)| n)
            .sum()
    }

    fn print(&self, load: &Load, seed: u64, elapsed: Duration) {
        let journal = &self.journal;
        let kills = &self.kills;
        let tally = &load.tally;
        let tasks: u64 = self.stats.tasks.iter().map(|(_, n)| n).sum();
        let by_state: Vec<String> = self
            .stats
            .tasks
            .iter()
            .map(|(state, n)| format!("{n} {}", state.as_str()))
            .collect();
        let pids: Vec<String> = kills.iter().map(|k| k.pid.to_string()).collect();
        println!("crash test figures (QTASK_CRASH_SEED={seed}):");
        figure("kills", kills.len(), false);
        figure("killed pids", pids.join(" "), false);
        figure("freezes past the lease (SIGSTOP)", self.freezes, false);
        figure("calls sent", Tally::get(&tally.calls), false);
        figure(
            "calls acknowledged (code 0, or 5400 for some)",
            Tally::get(&tally.acknowledged),
            false,
        );
        figure(
            "calls unacknowledged (no answer, 6200)",
            Tally::get(&tally.unacknowledged),
            false,
        );
        figure(
            "calls refused (busy, wrong state, ...)",
            Tally::get(&tally.refused),
            false,
        );
        figure("cancels sent", Tally::get(&tally.cancels), false);
        figure(
            "acknowledged requestIds",
            self.api.acknowledged.len(),
            false,
        );
        figure("  missing or not final", self.api.unsettled.len(), true);
        figure(
            "tasks (store)",
            format!("{tasks}: {}", by_state.join(", ")),
            false,
        );
        figure("attempts journaled", journal.attempts.len(), false);
        figure(
            "attempts aborted (lost lease, timeout, shutdown)",
            journal.ended_with("aborted"),
            false,
        );
        figure(
            "attempts cut short by a kill",
            journal.cut_by_kills(kills),
            false,
        );
        figure("retryable faults", journal.ended_with("retryable"), false);
        figure(
            "retries (attempts beyond a task's first)",
            journal.attempts.len() - journal.tasks(),
            false,
        );
        figure(
            "attempts never ended, process not killed",
            journal.never_ended(kills).len(),
            false,
        );
        figure("journal defects", journal.defects.len(), true);
        figure(
            "tasks run concurrently twice",
            journal::tasks_in(&self.overlaps),
            true,
        );
        figure(
            "late completions refused by fencing",
            self.stats.fenced_completions,
            false,
        );
        figure("instances", self.api.instances, false);
        figure(
            "  state disagrees with the last successful task",
            self.api.disagreements.len(),
            true,
        );
        figure(
            "tasks left RUNNING (API, after the drain)",
            self.api.running_by_api,
            true,
        );
        figure(
            "tasks left RUNNING (store, after the graceful stop)",
            self.tasks_in(TaskState::Running),
            true,
        );
        figure(
            "tasks left QUEUED (store)",
            self.tasks_in(TaskState::Queued),
            false,
        );
        figure("drained within the deadline", self.api.drained, false);
        figure("elapsed", format!("{:.1} s", elapsed.as_secs_f64()), false);
    }

    fn assert_sound(&self) {
        assert!(
            self.api.drained,
            "tasks still QUEUED or RUNNING {DRAIN_DEADLINE:?} after the load stopped"
        );
        assert!(
            !self.api.acknowledged.is_empty() && self.api.instances > 0,
            "the load acknowledged nothing: the test tested nothing"
        );
        assert!(
            self.api.unsettled.is_empty(),
            "acknowledged but missing or not final: {}",
            head(&self.api.unsettled)
        );
        assert!(
            self.journal.defects.is_empty(),
            "journal defects: {}",
            head(&self.journal.defects)
        );
        assert!(
            self.overlaps.is_empty(),
            "attempts of one task that overlapped: {}",
            head(&self.overlaps)
        );
        assert!(
            self.api.disagreements.is_empty(),
            "instances whose state disagrees with their history: {}",
            head(&self.api.disagreements)
        );
        assert_eq!(self.api.running_by_api, 0, "tasks RUNNING after the drain");
        assert_eq!(
            self.tasks_in(TaskState::Running),
            0,
            "tasks RUNNING in the store after the graceful stop"
        );
    }
}

/// Prints one figure, marking the ones that must be zero.
fn figure(label: &str, value: impl Display, must_be_zero: bool) {
    let note = if must_be_zero { "   (must be 0)" } else { "" };
    println!("  {label:<52} {value}{note}");
}

/// The first few of `items`, for a failure message.
fn head<T: Debug>(items: &[T]) -> String {
    let shown = &items[..items.len().min(5)];
    format!("{} of {}: {shown:#?}", shown.len(), items.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_and_no_task_runs_twice_across_kills() {
    let started = Instant::now();
    let settings = Settings::from_env();
    let seed = settings.seed;
    println!(
        "crash test: {} kills, {} freezes, QTASK_CRASH_SEED={seed}",
        settings.kills, settings.freezes
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let config = helpers::config_file(CONFIG);
    let work = tempfile::tempdir().expect("a temporary directory");
    let journal_path = work.path().join("journal.jsonl");
    let (config_arg, journal_arg) = (
        config.path().display().to_string(),
        journal_path.display().to_string(),
    );
    let lease = format!("{}ms", LEASE.as_millis());
    let mut app = TestApp::spawn_with(&[
        "--sim-speed",
        "0.02",
        "--lease",
        &lease,
        "--workers",
        "16",
        "--config",
        &config_arg,
        "--sim-journal",
        &journal_arg,
    ])
    .await;

    let load = Load::new(app.client());
    let loops: Vec<_> = (0..CLIENT_LOOPS)
        .map(|n| {
            tokio::spawn(Arc::clone(&load).run(StdRng::seed_from_u64(seed.wrapping_add(n + 1))))
        })
        .collect();
    let kills = disrupt(&mut app, &load, &settings, &mut rng).await;
    // Load on the last server too, then stop.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
    load.stop();
    for client_loop in loops {
        client_loop.await.expect("a client loop");
    }

    let api = ApiFindings::gather(Arc::new(app.client()), &load).await;

    let status = app.terminate();
    assert!(status.success(), "the graceful stop failed: {status}");
    let store = qtask_store_sqlite::open(&app.data_dir.join(qtask::serve::DATABASE_FILE))
        .expect("the store opens");
    let stats = store.stats().await.expect("the store's stats");
    let journal =
        Journal::parse(&std::fs::read_to_string(&journal_path).expect("the journal is readable"));
    let overlaps = journal.overlaps(&kills);

    let findings = Findings {
        kills,
        freezes: settings.freezes,
        api,
        stats,
        journal,
        overlaps,
    };
    findings.print(&load, seed, started.elapsed());
    findings.assert_sound();
}

// ---------------------------------------------------------------------------------------
// Several nodes on one PostgreSQL database
// ---------------------------------------------------------------------------------------

/// Nodes in the multi-node test.
const NODES: usize = 3;
/// How long a killed node stays down before it rejoins (past the lease and the rescue
/// interval, so the others must rescue its tasks).
const DOWN: Duration = Duration::from_secs(5);
/// The documented rescue bound on a shared database (ARCHITECTURE.md, "Several nodes"):
/// the lease, one rescue interval (lease / 4), and one more if the dead node led the
/// maintenance (its lock passes at the next try).
fn rescue_bound() -> Duration {
    LEASE + LEASE / 2
}
/// Scheduling slack on a loaded 2-core machine, on top of the bound.
const SLACK: Duration = Duration::from_millis(1000);

/// The multi-node test (issue #4): three nodes on ports of 127.0.0.1 and one PostgreSQL
/// schema, mixed load spread over all three, one node SIGKILLed mid-run (and, in the
/// full mode, more kills in rounds, each node rejoining after a while). Then the crash
/// test's checks, plus: every task a dead node was running started again on another
/// node within the rescue bound.
///
/// Quick mode (CI): one kill. Full mode:
/// `QTASK_CLUSTER_KILLS=6 cargo test --release -p qtask --test crash postgres -- --nocapture`.
/// Needs `QTASK_TEST_DATABASE_URL` (scripts/test sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_postgres_lose_nothing_when_one_is_killed() {
    let started = Instant::now();
    let kills_wanted = env_number("QTASK_CLUSTER_KILLS").map_or(1, |n| n.max(1) as usize);
    let seed = env_number("QTASK_CRASH_SEED").unwrap_or_else(rand::random);
    println!("multi-node test: {NODES} nodes, {kills_wanted} kill(s), QTASK_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let config = helpers::config_file(CONFIG);
    let work = tempfile::tempdir().expect("a temporary directory");
    let journal_path = work.path().join("journal.jsonl");
    let lease = format!("{}ms", LEASE.as_millis());
    let (config_arg, journal_arg) = (
        config.path().display().to_string(),
        journal_path.display().to_string(),
    );
    let args = [
        "--sim-speed",
        "0.02",
        "--lease",
        &lease,
        "--workers",
        "8",
        "--config",
        &config_arg,
        "--sim-journal",
        &journal_arg,
    ];
    let cluster = tokio::task::block_in_place(|| helpers::Cluster::start(NODES, &args));
    let schema = Arc::clone(&cluster.schema);
    let mut nodes = cluster.nodes;
    let load = Load::spread(nodes.iter().map(TestApp::client).collect());
    let loops: Vec<_> = (0..CLIENT_LOOPS + 2)
        .map(|n| {
            tokio::spawn(Arc::clone(&load).run(StdRng::seed_from_u64(seed.wrapping_add(n + 1))))
        })
        .collect();

    let mut kills = Vec::new();
    for round in 0..kills_wanted {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2500))).await;
        let victim = rng.gen_range(0..NODES);
        let pid = server_pid(&nodes[victim].data_dir);
        nodes[victim].kill();
        kills.push(Kill {
            pid,
            at: now_millis(),
        });
        println!("round {round}: killed node {victim} (pid {pid})");
        let alive: Vec<_> = (0..NODES).filter(|n| *n != victim).collect();
        load.spread_over(alive.iter().map(|n| nodes[*n].client()).collect());
        // The others must take over its tasks while it is down.
        tokio::time::sleep(DOWN).await;
        tokio::task::block_in_place(|| nodes[victim].restart(None));
        load.spread_over(nodes.iter().map(TestApp::client).collect());
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
    load.stop();
    for client_loop in loops {
        client_loop.await.expect("a client loop");
    }

    let api = ApiFindings::gather(Arc::new(nodes[0].client()), &load).await;
    for node in &mut nodes {
        let status = node.terminate();
        assert!(status.success(), "a graceful stop failed: {status}");
    }
    let url = schema.url();
    let stats = tokio::task::spawn_blocking(move || {
        let store = qtask_store_postgres::open(&url).expect("the store opens");
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store.stats())
    })
    .await
    .unwrap()
    .expect("the store's stats");
    let journal =
        Journal::parse(&std::fs::read_to_string(&journal_path).expect("the journal is readable"));
    let overlaps = journal.overlaps(&kills);
    let resumptions = journal.resumptions(&kills);

    let findings = Findings {
        kills,
        freezes: 0,
        api,
        stats,
        journal,
        overlaps,
    };
    findings.print(&load, seed, started.elapsed());
    let resumed: Vec<i64> = resumptions.iter().filter_map(|r| r.after_ms).collect();
    let slowest = resumed.iter().copied().max();
    figure("tasks a killed node was running", resumptions.len(), false);
    figure("  started again on another node", resumed.len(), false);
    figure(
        "  slowest restart after the kill",
        slowest.map_or("-".into(), |ms| format!("{ms} ms")),
        false,
    );
    figure(
        "  rescue bound (1.5 × lease)",
        format!("{} ms", rescue_bound().as_millis()),
        false,
    );
    findings.assert_sound();
    let late: Vec<_> = resumptions
        .iter()
        .filter(|r| {
            r.after_ms
                .is_some_and(|ms| ms > (rescue_bound() + SLACK).as_millis() as i64)
        })
        .collect();
    assert!(
        late.is_empty(),
        "tasks of a killed node that restarted later than the rescue bound: {}",
        head(&late)
    );
}

/// Nodes must share the master key that seals the SecretKeys: a node started with another
/// key refuses to start and says why, instead of failing every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_node_with_another_master_key_refuses_to_start() {
    let cluster = tokio::task::block_in_place(|| helpers::Cluster::start(1, &["--sim-speed", "0"]));
    let (schema, first) = (&cluster.schema, &cluster.nodes[0]);
    let other = tempfile::tempdir().expect("a temporary directory");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            "--data-dir",
        ])
        .arg(other.path().join("data"))
        .envs(helpers::database_env(Some(schema)))
        .env("QTASK_LOG", "warn")
        .output()
        .expect("qtask runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("need the same master key"),
        "the refusal says why: {stderr}"
    );
    // The first node is unaffected.
    assert_eq!(first.call("DescribeInstances", &[]).await["code"], 0);
}
