//! Durability: what was acknowledged survives a restart, a SIGKILL in the middle of
//! running tasks, a SIGKILL right after answers, and a graceful SIGTERM.

use crate::helpers::{wait_for, TestApp};
use serde_json::Value;
use std::time::{Duration, Instant};

fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// `count` running instances created at speed 0, then the server restarted with `args`
/// (so slow-task tests do not wait for slow creations).
async fn app_with_instances(count: usize, args: &[&str]) -> (TestApp, Vec<String>) {
    let mut app = TestApp::spawn().await;
    let ids = app.create_instances(count, "web").await;
    app.kill();
    app.restart(Some(args));
    (app, ids)
}

/// Everything the API shows about the account: instances, tasks and each result.
async fn snapshot(app: &TestApp, request_ids: &[String]) -> Vec<Value> {
    let mut views = vec![
        app.call("DescribeInstances", &[("limit", "100")]).await,
        app.call("DescribeTasks", &[("limit", "100")]).await,
    ];
    for id in request_ids {
        views.push(app.call("DescribeTaskResult", &[("requestId", id)]).await);
    }
    for view in &views {
        assert_eq!(view["code"], 0, "{view}");
    }
    views
}

/// The tasks still QUEUED or RUNNING.
async fn unfinished(app: &TestApp) -> Value {
    let answer = app
        .call("DescribeTasks", &[("status", "QUEUED,RUNNING")])
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    answer
}

#[tokio::test]
async fn a_restart_keeps_instances_tasks_and_results() {
    let mut app = TestApp::spawn().await;
    let ids = app.create_instances(3, "web").await;
    let flaky = app.create_instances(1, "qtask-fail:RestartInstances").await;
    let mut requests = Vec::new();
    for (action, params) in [
        ("StopInstances", vec![("instanceIds.0", ids[0].as_str())]),
        ("RestartInstances", vec![("instanceIds.0", ids[1].as_str())]),
        (
            "ModifyInstanceAttributes",
            vec![("instanceId", ids[2].as_str()), ("instanceName", "renamed")],
        ),
        (
            "RestartInstances",
            vec![("instanceIds.0", flaky[0].as_str())],
        ),
    ] {
        let answer = app.call(action, &params).await;
        assert_eq!(answer["code"], 0, "{action}: {answer}");
        let id = text(&answer["requestId"]).to_owned();
        app.wait_final(&id).await;
        requests.push(id);
    }
    let tasks = app.call("DescribeTasks", &[("limit", "100")]).await;
    for task in tasks["taskSet"].as_array().unwrap() {
        requests.push(text(&task["requestId"]).to_owned());
    }
    assert_eq!(requests.len(), 4 + 8, "{tasks}");
    let before = snapshot(&app, &requests).await;
    // The snapshot holds what the steps did, so comparing it is meaningful.
    let instances = &before[0];
    let state_of = |id: &str| {
        instances["instanceSet"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instanceId"] == id)
            .map(|i| (i["statusName"].clone(), i["instanceName"].clone()))
            .unwrap_or_else(|| panic!("no {id} in {instances}"))
    };
    assert_eq!(state_of(&ids[0]).0, "STOPPED");
    assert_eq!(state_of(&ids[2]).1, "renamed");
    assert_eq!(
        before[2 + 3]["data"]["state"],
        "FAILED",
        "{}",
        before[2 + 3]
    );

    let status = app.terminate();
    assert!(status.success(), "SIGTERM ends qtask cleanly: {status:?}");
    app.wait_output("Stopped.").await;
    app.restart(None);
    let after = snapshot(&app, &requests).await;
    assert_eq!(after, before, "the restart changed what the API shows");
    assert!(
        !app.printed("Resuming"),
        "nothing was unfinished: {:?}",
        app.output.lock().unwrap()
    );

    // Work continues, with request IDs never used before.
    let start = app
        .call("StartInstances", &[("instanceIds.0", &ids[0])])
        .await;
    assert_eq!(start["code"], 0, "{start}");
    let new_id: u64 = text(&start["requestId"]).parse().unwrap();
    let newest_before: u64 = requests
        .iter()
        .map(|r| r.parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(
        new_id > newest_before,
        "request ID {new_id} after {newest_before}"
    );
    assert_eq!(
        app.wait_final(&new_id.to_string()).await["state"],
        "SUCCESS"
    );
    assert_eq!(app.instance(&ids[0]).await["statusName"], "RUNNING");
}

#[tokio::test]
async fn tasks_running_at_a_sigkill_run_again_at_the_next_start() {
    // StopInstances takes 4 s. One worker makes the snapshot below stable: one task
    // RUNNING, the other two QUEUED until it ends.
    let (mut app, ids) = app_with_instances(3, &["--sim-speed", "0.5", "--workers", "1"]).await;
    let refs: Vec<(&str, &str)> = vec![
        ("instanceIds.0", ids[0].as_str()),
        ("instanceIds.1", ids[1].as_str()),
        ("instanceIds.2", ids[2].as_str()),
    ];
    let answer = app.call("StopInstances", &refs).await;
    assert_eq!(answer["code"], 0, "{answer}");
    let chain = text(&answer["requestId"]).to_owned();

    let seen = wait_for("a RUNNING task in the chain", async || {
        let data = app
            .call("DescribeTaskResult", &[("requestId", &chain)])
            .await["data"]
            .clone();
        (data["taskStates"]["RUNNING"].as_u64() >= Some(1)).then_some(data)
    })
    .await;
    let state_of = |state: &str| -> Vec<String> {
        seen["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == state)
            .map(|t| text(&t["requestId"]).to_owned())
            .collect()
    };
    let (running, queued) = (state_of("RUNNING"), state_of("QUEUED"));
    assert_eq!((running.len(), queued.len()), (1, 2), "one worker: {seen}");
    for id in &ids {
        assert_eq!(app.instance(id).await["statusName"], "STOPPING");
    }
    app.kill();

    app.restart(Some(&["--sim-speed", "0"]));
    let resumed = app.wait_output("Resuming").await;
    assert!(
        resumed.starts_with("Resuming 3 unfinished task"),
        "{resumed}"
    );
    let data = app.wait_final(&chain).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    for task in data["tasks"].as_array().unwrap() {
        let id = text(&task["requestId"]).to_owned();
        assert_eq!(task["state"], "SUCCESS", "{data}");
        let attempts = if running.contains(&id) { 2 } else { 1 };
        assert_eq!(
            task["attempts"], attempts,
            "task {id} (RUNNING ones ran twice): {data}"
        );
    }
    for id in &ids {
        let instance = app.instance(id).await;
        assert_eq!(instance["statusName"], "STOPPED", "{instance}");
        assert_eq!(instance["busyWith"], Value::Null, "{instance}");
    }
    let left = unfinished(&app).await;
    assert_eq!(left["totalCount"], 0, "{left}");
}

#[tokio::test]
async fn every_acknowledged_request_survives_a_sigkill_right_after_its_answer() {
    // ModifyInstanceAttributes and StopInstances take 2 s and 16 s: all are unfinished
    // when the process dies.
    let (mut app, ids) = app_with_instances(50, &["--sim-speed", "2"]).await;
    let mut calls = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let client = app.client();
        let id = id.clone();
        calls.spawn(async move {
            let (action, params) = if i % 2 == 0 {
                (
                    "ModifyInstanceAttributes",
                    vec![
                        ("instanceId".to_owned(), id.clone()),
                        ("instanceName".to_owned(), format!("renamed-{i}")),
                    ],
                )
            } else {
                (
                    "StopInstances",
                    vec![("instanceIds.0".to_owned(), id.clone())],
                )
            };
            let answer = client
                .call(action, params)
                .await
                .expect("the server answers");
            (i, id, action, answer)
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = calls.join_next().await {
        acknowledged.push(done.expect("the call task completes"));
    }
    app.kill();
    assert_eq!(acknowledged.len(), 50);
    for (_, id, action, answer) in &acknowledged {
        assert_eq!(answer["code"], 0, "{action} {id}: {answer}");
    }

    app.restart(Some(&["--sim-speed", "0"]));
    // The test means something only if work was cut off: at least the 25 stops were.
    let resumed = app.wait_output("Resuming").await;
    let count: usize = resumed
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {resumed:?}"));
    assert!((25..=50).contains(&count), "{resumed}");
    for (i, id, action, answer) in &acknowledged {
        let request = text(&answer["requestId"]);
        let data = app.wait_final(request).await;
        assert_eq!(data["state"], "SUCCESS", "{action} {id}: {data}");
        assert_eq!(data["action"], *action, "{data}");
        let instance = app.instance(id).await;
        if *action == "StopInstances" {
            let task = text(&answer["detail"][id]["requestId"]);
            assert_eq!(data["tasks"][0]["requestId"], task, "{data}");
            assert_eq!(data["tasks"][0]["resourceId"], id.as_str(), "{data}");
            assert_eq!(instance["statusName"], "STOPPED", "{instance}");
        } else {
            assert_eq!(data["resourceId"], id.as_str(), "{data}");
            assert_eq!(
                instance["instanceName"],
                format!("renamed-{i}"),
                "{instance}"
            );
            assert_eq!(instance["statusName"], "RUNNING", "{instance}");
        }
    }
    let left = unfinished(&app).await;
    assert_eq!(left["totalCount"], 0, "{left}");
}

#[tokio::test]
async fn sigterm_stops_within_the_grace_period_and_the_task_runs_again() {
    // StopInstances takes 8 s, the grace period is 1 s.
    let (mut app, ids) =
        app_with_instances(1, &["--sim-speed", "1", "--shutdown-grace", "1"]).await;
    let answer = app
        .call("StopInstances", &[("instanceIds.0", &ids[0])])
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    let chain = text(&answer["requestId"]).to_owned();
    wait_for("the StopInstances task to run", async || {
        let data = app
            .call("DescribeTaskResult", &[("requestId", &chain)])
            .await["data"]
            .clone();
        (data["taskStates"]["RUNNING"] == 1).then_some(())
    })
    .await;

    let asked = Instant::now();
    let status = app.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "SIGTERM ends qtask cleanly: {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "qtask took {took:?} to stop with a 1 s grace period"
    );
    app.wait_output("Stopped.").await;

    app.restart(Some(&["--sim-speed", "0"]));
    let data = app.wait_final(&chain).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(
        data["tasks"][0]["attempts"], 2,
        "it ran again after the restart: {data}"
    );
    assert_eq!(app.instance(&ids[0]).await["statusName"], "STOPPED");
}

#[tokio::test]
async fn sigterm_lets_a_task_that_ends_within_the_grace_period_finish() {
    // ModifyInstanceAttributes takes 1 s, the grace period is 10 s.
    let (mut app, ids) =
        app_with_instances(1, &["--sim-speed", "1", "--shutdown-grace", "10"]).await;
    let answer = app
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", &ids[0]), ("instanceName", "graceful")],
        )
        .await;
    assert_eq!(answer["code"], 0, "{answer}");
    let task = text(&answer["requestId"]).to_owned();
    wait_for("the ModifyInstanceAttributes task to run", async || {
        let data = app
            .call("DescribeTaskResult", &[("requestId", &task)])
            .await["data"]
            .clone();
        (data["state"] == "RUNNING").then_some(())
    })
    .await;

    let status = app.terminate();
    assert!(status.success(), "SIGTERM ends qtask cleanly: {status:?}");
    app.wait_output("Stopped.").await;

    app.restart(Some(&["--sim-speed", "0"]));
    let data = app.wait_final(&task).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    assert_eq!(
        data["attempts"], 1,
        "it finished before the process stopped: {data}"
    );
    assert_eq!(app.instance(&ids[0]).await["instanceName"], "graceful");
    assert!(
        !app.printed("Resuming"),
        "nothing was left unfinished: {:?}",
        app.output.lock().unwrap()
    );
}
