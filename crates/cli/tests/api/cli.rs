//! The `qtask` client commands end to end: the real binary signs, sends, waits, prints
//! tables or JSON and exits with the documented code (0 success, 1 failed, 2 usage,
//! 3 unreachable).

use crate::helpers::{app_with, slow_app, TestApp, DEADLINE};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Every variable that changes where or how the client connects.
const CLIENT_VARS: [&str; 9] = [
    "QTASK_ENDPOINT",
    "QTASK_SECRET_ID",
    "QTASK_SECRET_KEY",
    "QTASK_REGION",
    "QTASK_DATA_DIR",
    "QTASK_CA_FILE",
    "QTASK_PROFILE",
    "QTASK_CONFIG_FILE",
    "QTASK_CATALOGS",
];

/// `qtask ARGS…` with none of the client's variables but `env`, and no configuration
/// file unless `env` names one (so a developer's own profiles never leak in).
fn qtask_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qtask"));
    command.args(args).env("QTASK_LOG", "warn");
    for var in CLIENT_VARS {
        command.env_remove(var);
    }
    command.env("QTASK_CONFIG_FILE", "/nonexistent/qtask/config.toml");
    command.envs(env.iter().copied());
    command
}

fn qtask(args: &[&str], env: &[(&str, &str)]) -> Output {
    qtask_command(args, env).output().expect("qtask runs")
}

/// Runs `qtask call …` with a clean environment for the QTASK_* variables.
fn qtask_call(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["call"];
    all.extend(args);
    qtask(&all, env)
}

/// `ARGS…` followed by `app`'s HTTP endpoint and data directory (for its keys).
fn with_app<'a>(app: &'a TestApp, args: &[&'a str], endpoint: &'a str) -> Vec<&'a str> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--endpoint",
        endpoint,
        "--data-dir",
        app.data_dir.to_str().unwrap(),
    ]);
    all
}

/// Runs `qtask ARGS…` against `app`'s HTTP listener with keys from its data directory.
fn qtask_app(app: &TestApp, args: &[&str]) -> Output {
    let endpoint = format!("http://{}", app.http);
    qtask(&with_app(app, args, &endpoint), &[])
}

/// Runs `qtask call …` against `app`.
fn qtask_call_app(app: &TestApp, args: &[&str]) -> Output {
    let mut all = vec!["call"];
    all.extend(args);
    qtask_app(app, &all)
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout is not one JSON document: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stdout_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn code_and_stderr(output: &Output) -> (Option<i32>, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts the exit code, showing both streams when it differs.
fn assert_exit(output: &Output, expected: i32) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "stdout: {}\nstderr: {}",
        stdout_text(output),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A plain `--wait` line: `ELAPSED  RESOURCE  STATE  task N  NOTE`.
fn wait_line<'a>(stderr: &'a str, resource: &str, state: &str) -> Option<&'a str> {
    stderr.lines().find(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.get(1) == Some(&resource) && words.get(2) == Some(&state)
    })
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
    assert_exit(&output, 0);
    let (_, waited) = code_and_stderr(&output);
    let answer = stdout_json(&output);
    assert_eq!(answer["code"], 0, "{answer}");
    let ids = answer["instanceIds"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    // Not a terminal: one plain line per resource's final state, then a summary.
    for id in ids {
        let id = id.as_str().unwrap();
        assert!(wait_line(&waited, id, "SUCCESS").is_some(), "{waited}");
        let instance = app.instance(id).await;
        assert_eq!(instance["statusName"], "RUNNING", "{instance}");
        assert_eq!(instance["instanceName"], "from the cli");
    }
    assert!(
        waited
            .lines()
            .last()
            .unwrap()
            .starts_with("RunInstances: 2 succeeded in "),
        "{waited}"
    );
}

#[tokio::test]
async fn wait_exits_1_when_a_task_fails_and_names_the_failure() {
    let app = TestApp::spawn().await;
    let mut ids = app.create_instances(2, "web").await;
    ids.extend(app.create_instances(1, "db qtask-fail:StopInstances").await);
    let list = ids.join(",");
    let output = qtask_call_app(&app, &["StopInstances", "--instanceIds", &list, "--wait"]);
    assert_exit(&output, 1);
    assert_eq!(
        stdout_json(&output)["code"],
        0,
        "the call itself was accepted"
    );
    let (_, waited) = code_and_stderr(&output);
    let failed = wait_line(&waited, &ids[2], "FAILED").unwrap_or_else(|| panic!("{waited}"));
    assert!(
        failed.contains("5100") && failed.contains("simulated fault"),
        "{failed}"
    );
    for id in &ids[..2] {
        assert!(wait_line(&waited, id, "SUCCESS").is_some(), "{waited}");
    }
    assert!(
        waited.contains("StopInstances: 2 succeeded, 1 failed in "),
        "{waited}"
    );
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
    assert_exit(&output, 0);
    let answer = stdout_json(&output);
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["totalCount"], 0);
}

#[tokio::test]
async fn error_answers_exit_1_usage_problems_2_and_an_unreachable_server_3() {
    let app = TestApp::spawn().await;
    let refused = qtask_call_app(&app, &["StartInstances", "instanceIds.0=bogus"]);
    assert_exit(&refused, 1);
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
    assert_exit(&not_a_pair, 2);
    assert!(code_and_stderr(&not_a_pair).1.contains("not NAME=VALUE"));

    let no_value = qtask_call_app(&app, &["RunInstances", "--instanceName"]);
    assert_exit(&no_value, 2);
    assert!(code_and_stderr(&no_value)
        .1
        .contains("--instanceName needs a value"));

    let unknown_flag = qtask_app(&app, &["tasks", "ls", "--bogus"]);
    assert_exit(&unknown_flag, 2);

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
    assert_exit(&no_keys, 2);
    assert!(code_and_stderr(&no_keys).1.contains("no keys given"));

    let data_dir = app.data_dir.to_str().unwrap();
    let unreachable = [
        vec!["call", "DescribeInstances"],
        vec![
            "call",
            "StopInstances",
            "--instanceIds",
            "ins-1a2b3c4d",
            "--wait",
        ],
        vec!["tasks", "ls"],
        vec!["instances", "ls"],
    ];
    for args in unreachable {
        let mut args = args.clone();
        args.extend(["--endpoint", "http://127.0.0.1:9", "--data-dir", data_dir]);
        let output = qtask(&args, &[]);
        assert_exit(&output, 3);
        assert!(
            code_and_stderr(&output).1.contains("could not reach"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn a_server_lost_during_the_wait_exits_3() {
    let (mut app, ids) = slow_app("1", &["web"]).await;
    let endpoint = format!("http://{}", app.http);
    let args = with_app(
        &app,
        &["call", "StopInstances", "--instanceIds", &ids[0], "--wait"],
        &endpoint,
    );
    let mut child = qtask_command(&args, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qtask runs");
    // The first plain line shows the task under way (a stop takes 8 s here).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains(&ids[0]), "{first}");
    app.kill();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "qtask call --wait did not give up"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(3), "{first}{rest}");
    assert!(rest.contains("could not reach"), "{rest}");
}

#[tokio::test]
async fn list_parameters_as_commas_repeats_or_indexes_and_bare_booleans() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(3, "web").await;
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    let commas = format!("{a},{b}");
    let inline = format!("--instanceIds={a}");
    let (first, second) = (format!("instanceIds.0={a}"), format!("instanceIds.1={b}"));
    let forms: [Vec<&str>; 4] = [
        vec!["--instanceIds", &commas],
        vec!["--instanceIds", a, "--instanceIds", b],
        vec![&inline, "--instanceIds", b],
        vec![&first, &second],
    ];
    for form in forms {
        let mut args = vec!["DescribeInstances"];
        args.extend(form.iter().copied());
        let output = qtask_call_app(&app, &args);
        assert_exit(&output, 0);
        let answer = stdout_json(&output);
        assert_eq!(answer["totalCount"], 2, "{form:?}: {answer}");
    }
    // A scalar keeps its value whole; a bare boolean is true.
    let output = qtask_call_app(
        &app,
        &[
            "StopInstances",
            "--instanceIds",
            &commas,
            "--forceStop",
            "--wait",
        ],
    );
    assert_exit(&output, 0);
    assert_eq!(stdout_json(&output)["detail"].as_object().unwrap().len(), 2);
    let renamed = qtask_call_app(
        &app,
        &[
            "ModifyInstanceAttributes",
            "--instanceId",
            &ids[2],
            "--instanceName",
            "a,b",
            "--wait",
        ],
    );
    assert_exit(&renamed, 0);
    assert_eq!(app.instance(&ids[2]).await["instanceName"], "a,b");
}

/// Writes a configuration file with `toml` into `dir`; returns its path.
fn config_file(dir: &Path, toml: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_profile() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{}", app.http);
    let nowhere = "http://127.0.0.1:9";
    let config = config_file(
        dir.path(),
        &format!(
            "[profiles.default]\nendpoint = \"{endpoint}\"\nsecret_id = \"{}\"\nsecret_key = \"{}\"\n\n\
             [profiles.wrongkey]\nendpoint = \"{endpoint}\"\nsecret_id = \"{}\"\nsecret_key = \"not-the-key\"\n",
            app.secret_id, app.secret_key, app.secret_id
        ),
    );
    let config = ("QTASK_CONFIG_FILE", config.as_str());
    let list = ["instances", "ls", "--data-dir", "/nonexistent"];
    // The profile alone: its endpoint and keys.
    assert_exit(&qtask(&list, &[config]), 0);
    // The environment beats the profile...
    let env_endpoint = qtask(&list, &[config, ("QTASK_ENDPOINT", nowhere)]);
    assert_exit(&env_endpoint, 3);
    // ...and a flag beats the environment.
    let mut flagged = list.to_vec();
    flagged.extend(["--endpoint", &endpoint]);
    assert_exit(&qtask(&flagged, &[config, ("QTASK_ENDPOINT", nowhere)]), 0);

    // Keys: the environment's pair beats the profile's wrong one; a flag pair beats both.
    let wrong_profile = ("QTASK_PROFILE", "wrongkey");
    assert_exit(&qtask(&list, &[config, wrong_profile]), 1);
    let env_keys = [
        config,
        wrong_profile,
        ("QTASK_SECRET_ID", app.secret_id.as_str()),
        ("QTASK_SECRET_KEY", app.secret_key.as_str()),
    ];
    assert_exit(&qtask(&list, &env_keys), 0);
    let mut wrong_flags = list.to_vec();
    wrong_flags.extend(["--secret-id", &app.secret_id, "--secret-key", "wrong"]);
    let refused = qtask(&wrong_flags, &env_keys);
    assert_exit(&refused, 1);
    assert!(code_and_stderr(&refused).1.contains("4100"), "{refused:?}");
    // --profile beats QTASK_PROFILE.
    let mut named = list.to_vec();
    named.extend(["--profile", "default"]);
    assert_exit(&qtask(&named, &[config, wrong_profile]), 0);

    // A profile that was named must exist; the default one need not.
    let missing = qtask(&list, &[config, ("QTASK_PROFILE", "staging")]);
    assert_exit(&missing, 2);
    assert!(
        code_and_stderr(&missing)
            .1
            .contains("qtask configure --profile staging"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn configure_reads_piped_answers_and_writes_a_private_profile() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("qtask").join("config.toml");
    let endpoint = format!("http://{}", app.http);
    // Endpoint, SecretId, SecretKey, Region, CA (none), method, signature method.
    let answers = format!(
        "{endpoint}\n{}\n{}\nap-shanghai\n\nPOST\nHmacSHA1\n",
        app.secret_id, app.secret_key
    );
    let mut child = qtask_command(
        &["configure", "--profile", "ci"],
        &[("QTASK_CONFIG_FILE", config.to_str().unwrap())],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("qtask configure runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answers.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_exit(&output, 0);
    let (_, prompts) = code_and_stderr(&output);
    assert!(
        prompts.contains("Endpoint [http://127.0.0.1:8080]:"),
        "{prompts}"
    );
    assert!(prompts.contains("Saved profile \"ci\""), "{prompts}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let written: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    let profile = &written["profiles"]["ci"];
    assert_eq!(profile["endpoint"].as_str(), Some(endpoint.as_str()));
    assert_eq!(profile["region"].as_str(), Some("ap-shanghai"));
    assert_eq!(profile["method"].as_str(), Some("POST"));
    assert_eq!(profile["signature_method"].as_str(), Some("HmacSHA1"));
    assert!(profile.get("ca_file").is_none(), "{profile}");

    // The profile works; running configure again with empty answers keeps it.
    let env = [("QTASK_CONFIG_FILE", config.to_str().unwrap())];
    let listed = qtask(
        &[
            "instances",
            "ls",
            "--profile",
            "ci",
            "--data-dir",
            "/nonexistent",
        ],
        &env,
    );
    assert_exit(&listed, 0);
    let again = qtask_command(&["configure", "--profile", "ci"], &env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_exit(&again, 0);
    let rewritten: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    assert_eq!(rewritten, written);
}

#[tokio::test]
async fn json_output_is_the_answer_and_tables_show_columns() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "web").await;
    let created = qtask_call_app(
        &app,
        &["CreateLoadBalancer", "--loadBalancerName", "shop", "--wait"],
    );
    assert_exit(&created, 0);
    let lb = stdout_json(&created)["unLoadBalancerIds"][0]
        .as_str()
        .unwrap()
        .to_owned();

    // Piped stdout: JSON by default.
    let instances = qtask_app(&app, &["instances", "ls"]);
    assert_exit(&instances, 0);
    let answer = stdout_json(&instances);
    assert_eq!(answer["totalCount"], 2, "{answer}");
    let table = qtask_app(
        &app,
        &["instances", "ls", "--output", "table", "--search", "web"],
    );
    assert_exit(&table, 0);
    let text = stdout_text(&table);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("INSTANCE") && header.contains("STATE"),
        "{text}"
    );
    for id in &ids {
        let row = text.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(row.contains("RUNNING") && row.contains("web"), "{text}");
    }

    let lbs = qtask_app(&app, &["lb", "ls", "-o", "json"]);
    assert_exit(&lbs, 0);
    let answer = stdout_json(&lbs);
    assert_eq!(
        answer["loadBalancerSet"][0]["loadBalancerId"],
        lb.as_str(),
        "{answer}"
    );
    let lb_table = qtask_app(&app, &["lb", "ls", "-o", "table"]);
    let text = stdout_text(&lb_table);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&lb) && l.contains("shop") && l.contains("NORMAL")),
        "{text}"
    );
}

#[tokio::test]
async fn tasks_ls_show_retry_and_cancel() {
    let app = TestApp::spawn().await;
    let mut ids = app.create_instances(1, "web").await;
    ids.extend(app.create_instances(1, "db qtask-fail:StopInstances").await);
    let list = ids.join(",");
    let stop = qtask_call_app(&app, &["StopInstances", "--instanceIds", &list, "--wait"]);
    assert_exit(&stop, 1);
    let chain = stdout_json(&stop)["requestId"].as_str().unwrap().to_owned();

    let failed = qtask_app(
        &app,
        &[
            "tasks",
            "ls",
            "--state",
            "failed",
            "--action",
            "StopInstances",
        ],
    );
    assert_exit(&failed, 0);
    let answer = stdout_json(&failed);
    assert_eq!(answer["totalCount"], 1, "{answer}");
    let task = &answer["taskSet"][0];
    assert_eq!(task["resourceId"], ids[1].as_str());
    assert_eq!(task["chainId"], chain.as_str());
    let task_id = task["requestId"].as_str().unwrap().to_owned();
    let on_resource = qtask_app(&app, &["tasks", "ls", "--resource", &ids[0], "-o", "table"]);
    let text = stdout_text(&on_resource);
    assert_eq!(
        text.lines().filter(|l| l.contains(&ids[0])).count(),
        2,
        "{text}"
    );

    let shown = qtask_app(&app, &["tasks", "show", &chain]);
    assert_exit(&shown, 0);
    assert_eq!(
        stdout_json(&shown)["data"]["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let table = stdout_text(&qtask_app(&app, &["tasks", "show", &chain, "-o", "table"]));
    assert!(
        table.starts_with(&format!("chain {chain}  StopInstances  FAILED")),
        "{table}"
    );
    let failed_row = table.lines().find(|l| l.starts_with(&task_id)).unwrap();
    assert!(
        failed_row.contains("FAILED") && failed_row.contains("5100"),
        "{table}"
    );
    let one = stdout_text(&qtask_app(
        &app,
        &["tasks", "show", &task_id, "-o", "table"],
    ));
    assert!(
        one.lines()
            .any(|l| l.starts_with("state") && l.contains("FAILED")),
        "{one}"
    );
    let missing = qtask_app(&app, &["tasks", "show", "999999", "-o", "table"]);
    assert_exit(&missing, 1);
    assert!(code_and_stderr(&missing).1.contains("does not exist"));

    // RetryTask runs exactly the failed task again: it fails again, so --wait exits 1.
    let retried = qtask_app(&app, &["tasks", "retry", &chain, "--wait"]);
    assert_exit(&retried, 1);
    let answer = stdout_json(&retried);
    assert_eq!(answer["detail"].as_object().unwrap().len(), 1, "{answer}");
    assert!(
        answer["detail"][&ids[1]]["requestId"].is_string(),
        "{answer}"
    );

    // Canceling a finished chain is too late for each of its tasks.
    let canceled = qtask_app(&app, &["tasks", "cancel", &chain]);
    assert_exit(&canceled, 0);
    let answer = stdout_json(&canceled);
    let outcomes: Vec<&str> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["cancel"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["tooLate", "tooLate"], "{answer}");
}

#[tokio::test]
async fn canceling_a_running_chain_ends_its_tasks_canceled() {
    let (app, ids) = slow_app("1", &["a", "b"]).await;
    let list = ids.join(",");
    let stop = qtask_call_app(&app, &["StopInstances", "--instanceIds", &list]);
    assert_exit(&stop, 0);
    let chain = stdout_json(&stop)["requestId"].as_str().unwrap().to_owned();
    let canceled = qtask_app(&app, &["tasks", "cancel", &chain, "-o", "table"]);
    assert_exit(&canceled, 0);
    let text = stdout_text(&canceled);
    assert!(text.lines().next().unwrap().contains("CANCEL"), "{text}");
    for id in &ids {
        let row = text.lines().find(|l| l.contains(id.as_str())).unwrap();
        assert!(
            row.contains("canceled") || row.contains("cancelRequested"),
            "{text}"
        );
    }
    let data = app.wait_final(&chain).await;
    assert_eq!(data["taskStates"]["CANCELED"], 2, "{data}");
}

#[tokio::test]
async fn completions_are_scripts_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef qtask"),
        ("fish", "complete -c qtask"),
    ] {
        let output = qtask(&["completions", shell], &[]);
        assert_exit(&output, 0);
        let script = stdout_text(&output);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("tasks") && script.contains("--wait"),
            "{shell}"
        );
    }
    assert_exit(&qtask(&["completions", "tcsh"], &[]), 2);
}

#[tokio::test]
async fn every_help_has_examples() {
    let commands: [&[&str]; 12] = [
        &[],
        &["call"],
        &["tasks"],
        &["tasks", "ls"],
        &["tasks", "show"],
        &["tasks", "cancel"],
        &["tasks", "retry"],
        &["tasks", "watch"],
        &["instances", "ls"],
        &["lb", "ls"],
        &["configure"],
        &["completions"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let output = qtask(&args, &[]);
        assert_exit(&output, 0);
        let help = stdout_text(&output);
        assert!(help.contains("Example"), "{command:?}: {help}");
    }
    let top = stdout_text(&qtask(&["--help"], &[]));
    assert!(top.contains("Exit codes:") && top.contains("3  the server could not be reached"));
}

#[tokio::test]
async fn watch_prints_a_chains_events_in_order_and_exits_with_its_outcome() {
    let (app, ids) = app_with(
        &["web", "db qtask-fail:StopInstances"],
        &["--sim-speed", "1"],
    )
    .await;
    let list = ids.join(",");
    let stop = qtask_call_app(&app, &["StopInstances", "--instanceIds", &list]);
    assert_exit(&stop, 0);
    let chain = stdout_json(&stop)["requestId"].as_str().unwrap().to_owned();
    // Stops take 8 s here (long enough for a loaded machine to start the watch): the
    // stream opens while they run, and ends with the chain.
    let watched = qtask_app(&app, &["tasks", "watch", &chain, "--output", "json"]);
    assert_exit(&watched, 1);
    let events: Vec<Value> = stdout_text(&watched)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let (last, tasks) = events.split_last().expect("events");
    assert_eq!(last["event"], "end", "{events:?}");
    assert_eq!(last["requestId"], chain.as_str());
    let seqs: Vec<u64> = tasks.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let outcome = |resource: &str| {
        tasks
            .iter()
            .find(|e| {
                e["resourceId"] == resource && e["state"] != "RUNNING" && e["state"] != "QUEUED"
            })
            .map(|e| e["event"].as_str().unwrap().to_owned())
    };
    assert_eq!(outcome(&ids[0]).as_deref(), Some("succeeded"), "{events:?}");
    assert_eq!(outcome(&ids[1]).as_deref(), Some("failed"), "{events:?}");
}

/// A stand-in server on a local port: answers each request through `answer(path,
/// query)` with (HTTP status, body) and records what it was asked.
struct FakeServer {
    endpoint: String,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl FakeServer {
    fn start(answer: impl Fn(&str, &str) -> (u16, String) + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers; the client sends GET without a body.
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let target = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                seen.lock().unwrap().push((Instant::now(), target.clone()));
                let (status, body) = answer(path, query);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { endpoint, requests }
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend([
            "--endpoint",
            &self.endpoint,
            "--secret-id",
            "AKIDfake",
            "--secret-key",
            "fake",
        ]);
        all
    }
}

#[test]
fn watch_says_clearly_when_the_server_has_no_event_stream() {
    let server = FakeServer::start(|_, _| (404, String::new()));
    let output = qtask(&server.args(&["tasks", "watch"]), &[]);
    assert_exit(&output, 3);
    let (_, stderr) = code_and_stderr(&output);
    assert!(
        stderr.contains("does not offer the task event stream") && stderr.contains("404"),
        "{stderr}"
    );
}

#[test]
fn wait_falls_back_to_polling_a_server_without_the_long_poll() {
    let polls = Arc::new(Mutex::new(0));
    let counted = polls.clone();
    let server = FakeServer::start(move |path, query| {
        if path != "/v2/index.php" {
            return (404, String::new());
        }
        if query.contains("Action=StopInstances") {
            return (200, r#"{"code":0,"message":"","requestId":"8"}"#.to_owned());
        }
        if query.contains("waitSeconds") {
            let refusal = "parameter waitSeconds is not a parameter of DescribeTaskResult; it takes requestId";
            return (200, format!(r#"{{"code":4000,"message":"{refusal}"}}"#));
        }
        let mut polls = counted.lock().unwrap();
        *polls += 1;
        let state = if *polls < 3 {
            ("RUNNING", 2)
        } else {
            ("SUCCESS", 0)
        };
        let body = format!(
            r#"{{"code":0,"message":"","data":{{"requestId":"8","state":"{}","status":{},"action":"StopInstances","resourceId":"ins-1a2b3c4d","attempts":1}}}}"#,
            state.0, state.1
        );
        (200, body)
    });
    let output = qtask(
        &server.args(&[
            "call",
            "StopInstances",
            "--instanceIds",
            "ins-1a2b3c4d",
            "--wait",
        ]),
        &[],
    );
    assert_exit(&output, 0);
    let (_, stderr) = code_and_stderr(&output);
    assert!(
        wait_line(&stderr, "ins-1a2b3c4d", "RUNNING").is_some(),
        "{stderr}"
    );
    assert!(
        wait_line(&stderr, "ins-1a2b3c4d", "SUCCESS").is_some(),
        "{stderr}"
    );
    let requests = server.requests.lock().unwrap();
    let long_polls = requests
        .iter()
        .filter(|(_, r)| r.contains("waitSeconds"))
        .count();
    assert_eq!(long_polls, 1, "the refusal is remembered: {requests:?}");
    // Plain polls come at least 500 ms apart.
    let plain: Vec<Instant> = requests
        .iter()
        .filter(|(_, r)| r.contains("DescribeTaskResult") && !r.contains("waitSeconds"))
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(plain.len(), 3, "{requests:?}");
    assert!(
        plain[2].duration_since(plain[1]) >= std::time::Duration::from_millis(450),
        "{requests:?}"
    );
}
