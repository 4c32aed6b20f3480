//! `qtask bench`: each scenario runs for a second against a real server and reports
//! sane figures (no timing thresholds: the machine is shared); `bench fill` leaves a
//! store the server opens and serves.

use crate::helpers::TestApp;
use serde_json::Value;
use std::process::{Command, Output};

fn bench(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qtask"))
        .arg("bench")
        .args(args)
        .args(["--endpoint", &format!("http://{}", app.http)])
        .args([
            "--secret-id",
            &app.secret_id,
            "--secret-key",
            &app.secret_key,
        ])
        .env("QTASK_LOG", "warn")
        .output()
        .expect("qtask bench runs")
}

/// Runs a scenario for a second with `--json`; returns its report.
fn report(app: &TestApp, scenario: &str, extra: &[&str]) -> Value {
    let pid = app.pid().to_string();
    let mut args = vec![
        "--scenario",
        scenario,
        "--duration",
        "1s",
        "--json",
        "--server-pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    let output = bench(app, &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "qtask bench {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("the report is JSON");
    assert_eq!(report["scenario"], scenario, "{report:#}");
    assert!(report["ok"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(
        report["ok"], report["calls"],
        "every call succeeded: {report:#}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    let latency = &report["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(
        latency["p50"].as_f64() <= latency["p99"].as_f64(),
        "{report:#}"
    );
    assert!(
        latency["p99"].as_f64() <= latency["max"].as_f64(),
        "{report:#}"
    );
    assert!(report["calls_per_s"].as_f64().unwrap() > 0.0, "{report:#}");
    let server = &report["server"];
    assert_eq!(server["pid"], app.pid(), "{report:#}");
    assert!(
        server["rss_mib_before"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(
        server["cpu_us_per_call"].as_f64().unwrap() >= 0.0,
        "{report:#}"
    );
    report
}

async fn count_tasks(app: &TestApp, status: &str) -> u64 {
    let answer = app
        .call("DescribeTasks", &[("status", status), ("limit", "1")])
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    answer["totalCount"].as_u64().expect("totalCount")
}

#[tokio::test]
async fn submit_with_workers_off_commits_tasks_that_stay_queued() {
    let app = TestApp::spawn_with(&["--workers", "0"]).await;
    let report = report(&app, "submit", &["--concurrency", "4"]);
    let ok = report["ok"].as_u64().unwrap();
    assert!(
        report["server"]["cpu_us_per_task"].as_f64().is_some(),
        "{report:#}"
    );
    // Workers off: every accepted task is committed and none ran.
    assert_eq!(count_tasks(&app, "QUEUED").await, ok);
    assert_eq!(count_tasks(&app, "RUNNING,SUCCESS").await, 0);
}

#[tokio::test]
async fn e2e_counts_completed_tasks_and_waits_for_the_backlog() {
    let app = TestApp::spawn().await;
    let report = report(&app, "e2e", &["--concurrency", "4"]);
    let tasks = &report["tasks"];
    assert_eq!(tasks["submitted"], report["ok"], "{report:#}");
    assert!(tasks["completed"].as_u64().unwrap() > 0, "{report:#}");
    assert_eq!(count_tasks(&app, "QUEUED,RUNNING").await, 0, "drained");
    assert_eq!(
        count_tasks(&app, "SUCCESS").await,
        report["ok"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn latency_reads_the_start_delay_at_a_fixed_rate() {
    let app = TestApp::spawn().await;
    let report = report(&app, "latency", &["--concurrency", "4", "--rate", "50"]);
    let delay = &report["start_delay"];
    // 50 calls/s for a second: about 50 tasks, each started once.
    let samples = delay["samples"].as_u64().unwrap();
    assert_eq!(samples, report["ok"].as_u64().unwrap(), "{report:#}");
    assert!(delay["p50_ms"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(
        delay["p50_ms"].as_f64() <= delay["p99_ms"].as_f64(),
        "{report:#}"
    );
    assert!(report["calls"].as_u64().unwrap() <= 51, "{report:#}");
}

#[tokio::test]
async fn chain_and_describe_answer_every_call() {
    let app = TestApp::spawn().await;
    let chain = report(&app, "chain", &["--concurrency", "2"]);
    assert!(chain["server"]["cpu_us_per_task"].is_null(), "{chain:#}");
    let stopped = app
        .call(
            "DescribeTasks",
            &[("action", "StopInstances"), ("limit", "1")],
        )
        .await;
    assert!(stopped["totalCount"].as_u64().unwrap() >= 100, "{stopped}");
    report(&app, "describe", &["--concurrency", "2"]);
}

#[tokio::test]
async fn bad_arguments_are_named() {
    let app = TestApp::spawn().await;
    for (args, expected) in [
        (&["--duration", "1s"][..], "--scenario is required"),
        (
            &["--scenario", "submit", "--duration", "soon"],
            "--duration",
        ),
        (&["--scenario", "submit", "--rate", "0"], "--rate"),
        (&["--scenario", "chain", "--rate", "10"], "--rate"),
        (
            &["--scenario", "submit", "--concurrency", "0"],
            "--concurrency",
        ),
    ] {
        let output = bench(&app, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args(["bench", "--scenario", "submit", "--endpoint"])
        .arg(format!("https://{}", app.https))
        .args([
            "--secret-id",
            &app.secret_id,
            "--secret-key",
            &app.secret_key,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--endpoint must be an http://"), "{stderr}");
}

#[tokio::test]
async fn fill_leaves_a_store_the_server_serves() {
    // `bench fill` writes the store of the tests' backend: the SQLite file of the data
    // directory, or the PostgreSQL schema (with COPY).
    let mut app = TestApp::spawn_with(&["--sim-speed", "0"]).await;
    let before = app.create_instances(1, "mine").await;
    assert!(app.terminate().success());
    let output = Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args(["bench", "fill", "--tasks", "3000", "--data-dir"])
        .arg(&app.data_dir)
        .envs(app.store_env())
        .env("QTASK_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("3000 finished tasks"), "{printed}");
    app.restart(None);

    // The account of the data directory got its share (a quarter, by instance).
    let total = count_tasks(&app, "SUCCESS").await;
    assert!((700..=900).contains(&total), "{total}");
    let listed = app
        .call(
            "DescribeTasks",
            &[("action", "StopInstances"), ("limit", "5")],
        )
        .await;
    let task = listed["taskSet"][0]["requestId"].clone();
    let task = task
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| task.to_string());
    let result = app.wait_final(&task).await;
    assert_eq!(result["state"], "SUCCESS", "{result}");
    let instances = app.call("DescribeInstances", &[("limit", "100")]).await;
    assert!(
        instances["totalCount"].as_u64().unwrap() > 50,
        "{instances}"
    );
    // Each filled instance as its history left it: created, then stopped and started in
    // turn nine times — stopped.
    let filled: Vec<&serde_json::Value> = instances["instanceSet"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["instanceName"]
                .as_str()
                .is_some_and(|n| n.starts_with("fill-"))
        })
        .collect();
    assert!(filled.len() > 50, "{instances}");
    assert!(
        filled
            .iter()
            .all(|i| i["status"] == 4 && i["statusName"] == "STOPPED"),
        "{instances}"
    );
    // The store still works as before: its own instance, and new calls.
    assert_eq!(app.instance(&before[0]).await["status"], 2);
    let created = app.create_instances(2, "after-fill").await;
    assert_eq!(created.len(), 2);
    // The counts by state (what /metrics shows) hold the filled tasks: the creation
    // before the fill, the fill's 3000, and the two creations after it.
    let counted = crate::ops::scrape(app.http).await;
    assert_eq!(
        counted.value("qtask_tasks", &[("state", "SUCCESS")]),
        Some(1.0 + 3000.0 + 2.0)
    );
}

/// `bench null-server` answers every scenario's set-up and calls with code 0, so the
/// generator measures the machine's ceiling against it; it names the address it took.
#[tokio::test]
async fn null_server_answers_every_call_and_names_its_address() {
    use std::io::BufRead;
    let mut server = Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args(["bench", "null-server", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("qtask bench null-server starts");
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().expect("its stdout"))
        .read_line(&mut ready)
        .expect("a first line");
    let endpoint = ready
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned();
    for scenario in ["submit", "describe"] {
        let output = Command::new(env!("CARGO_BIN_EXE_qtask"))
            .args(["bench", "--endpoint", &endpoint])
            .args(["--secret-id", "AKIDnullnullnullnullnullnullnullnull"])
            .args(["--secret-key", "any-key-the-null-server-ignores"])
            .args(["--scenario", scenario, "--duration", "1s", "--json"])
            .args(["--concurrency", "4", "--server-pid"])
            .arg(server.id().to_string())
            .output()
            .expect("qtask bench runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{scenario}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_str(&stdout).expect("the report is JSON");
        assert!(report["ok"].as_u64().unwrap() > 0, "{report:#}");
        assert_eq!(report["ok"], report["calls"], "{report:#}");
        assert_eq!(report["server"]["pid"], server.id(), "{report:#}");
    }
    server.kill().expect("stopped");
    server.wait().expect("reaped");
}
