//! `qtask call` end to end: the real binary signs, sends, waits and exits with the
//! documented code.

use crate::helpers::TestApp;
use serde_json::Value;
use std::process::{Command, Output};

/// Runs `qtask call …` with a clean environment for the QTASK_* variables.
fn qtask_call(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qtask"));
    command.arg("call").args(args);
    for var in [
        "QTASK_ENDPOINT",
        "QTASK_SECRET_ID",
        "QTASK_SECRET_KEY",
        "QTASK_REGION",
        "QTASK_DATA_DIR",
        "QTASK_CA_FILE",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("qtask call runs")
}

/// Runs `qtask call …` against `app`'s HTTP listener with keys from its data directory.
fn qtask_call_app(app: &TestApp, args: &[&str]) -> Output {
    let endpoint = format!("http://{}", app.http);
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--endpoint",
        &endpoint,
        "--data-dir",
        app.data_dir.to_str().unwrap(),
    ]);
    qtask_call(&all, &[])
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout is not one JSON answer: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn code_and_stderr(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn call_reads_keys_from_the_data_dir_and_waits_for_every_task() {
    let app = TestApp::spawn().await;
    let output = qtask_call_app(
        &app,
        &[
            "RunInstances",
            "goodsNum=2",
            "instanceName=from the cli",
            "--wait",
        ],
    );
    let (code, waited) = code_and_stderr(&output);
    assert_eq!(code, Some(0), "stderr: {waited}");
    let answer = stdout_json(&output);
    assert_eq!(answer["code"], 0, "{answer}");
    let ids = answer["instanceIds"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    // --wait printed the final result of the request, and it succeeded.
    assert!(waited.contains("\"state\": \"SUCCESS\""), "{waited}");
    for id in ids {
        let instance = app.instance(id.as_str().unwrap()).await;
        assert_eq!(instance["statusName"], "RUNNING", "{instance}");
        assert_eq!(instance["instanceName"], "from the cli");
    }
}

#[tokio::test]
async fn wait_exits_1_when_a_task_fails() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "db qtask-fail:StopInstances").await;
    let first = format!("instanceIds.0={}", ids[0]);
    let second = format!("instanceIds.1={}", ids[1]);
    let output = qtask_call_app(&app, &["StopInstances", &first, &second, "--wait"]);
    let (code, waited) = code_and_stderr(&output);
    assert_eq!(code, Some(1), "stderr: {waited}");
    assert_eq!(
        stdout_json(&output)["code"],
        0,
        "the call itself was accepted"
    );
    assert!(waited.contains("simulated fault"), "{waited}");
}

#[tokio::test]
async fn keys_and_endpoint_from_the_environment_over_https_post_sha1() {
    let app = TestApp::spawn().await;
    let endpoint = format!("https://{}", app.https);
    let ca = app.ca_file();
    let output = qtask_call(
        &["DescribeInstances", "limit=5", "--post", "--sha1"],
        &[
            ("QTASK_ENDPOINT", endpoint.as_str()),
            ("QTASK_SECRET_ID", app.secret_id.as_str()),
            ("QTASK_SECRET_KEY", app.secret_key.as_str()),
            ("QTASK_CA_FILE", ca.to_str().unwrap()),
            ("QTASK_REGION", "gz"),
        ],
    );
    let (code, stderr) = code_and_stderr(&output);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let answer = stdout_json(&output);
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["totalCount"], 0);
}

#[tokio::test]
async fn an_error_answer_exits_1_and_usage_problems_exit_2() {
    let app = TestApp::spawn().await;
    let refused = qtask_call_app(&app, &["StartInstances", "instanceIds.0=bogus"]);
    assert_eq!(refused.status.code(), Some(1));
    let answer = stdout_json(&refused);
    assert_eq!(answer["code"], 4000, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("instanceIds.0"),
        "{answer}"
    );

    let not_a_pair = qtask_call_app(&app, &["DescribeInstances", "limit"]);
    let (code, stderr) = code_and_stderr(&not_a_pair);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not NAME=VALUE"), "{stderr}");

    let endpoint = format!("http://{}", app.http);
    let no_keys = qtask_call(
        &[
            "DescribeInstances",
            "--endpoint",
            &endpoint,
            "--data-dir",
            "/nonexistent",
        ],
        &[],
    );
    let (code, stderr) = code_and_stderr(&no_keys);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no keys given"), "{stderr}");

    let data_dir = app.data_dir.to_str().unwrap();
    let unreachable = qtask_call(
        &[
            "DescribeInstances",
            "--endpoint",
            "http://127.0.0.1:9",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    let (code, stderr) = code_and_stderr(&unreachable);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("could not reach"), "{stderr}");
}
