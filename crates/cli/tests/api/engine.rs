//! The engine on the real server (issue 3): retries, timeouts, leases, cancellation,
//! idempotency across restarts, per-resource queues, RetryTask, resource history,
//! retention and draining at shutdown.

use crate::helpers::{app_with, chain, config_file, detail_task, text, wait_for, TestApp};
use serde_json::Value;
use std::time::Duration;

/// The `data` of DescribeTaskResult for a task or chain.
async fn task_data(app: &TestApp, id: &str) -> Value {
    let answer = app.call("DescribeTaskResult", &[("requestId", id)]).await;
    assert_eq!(answer["code"], 0, "DescribeTaskResult {id}: {answer}");
    answer["data"].clone()
}

/// Stops `ids` at speed 0 and waits until they are STOPPED.
async fn stopped(app: &TestApp, ids: &[&str]) {
    let answer = chain(app, "StopInstances", ids, &[]).await;
    assert_eq!(answer["code"], 0, "{answer}");
    app.wait_final(text(&answer["requestId"])).await;
}

#[tokio::test]
async fn retryable_faults_are_retried_with_backoff_until_max_attempts() {
    let config = config_file("[actions.StartInstances]\nbackoff = \"1s\"\n");
    let config_path = config.path().to_str().unwrap();
    let (app, ids) = app_with(
        &[
            "qtask-flaky:StartInstances:1",
            "qtask-flaky:StartInstances:9",
        ],
        &["--sim-speed", "0", "--config", config_path],
    )
    .await;
    let (recovers, never) = (ids[0].as_str(), ids[1].as_str());
    stopped(&app, &[recovers, never]).await;
    let start = chain(&app, "StartInstances", &[recovers, never], &[]).await;
    let (first, second) = (detail_task(&start, recovers), detail_task(&start, never));

    // Between attempts: queued again, with the attempt count, the next attempt's time
    // and the last error; the instance stays busy in its transitional state.
    let waiting = wait_for("the first attempt to fail", async || {
        let data = task_data(&app, &first).await;
        (data["state"] == "QUEUED" && data["attempts"] == 1).then_some(data)
    })
    .await;
    assert!(waiting["nextAttemptTime"].is_string(), "{waiting}");
    assert!(
        text(&waiting["error"]["message"]).contains("simulated fault"),
        "{waiting}"
    );
    assert_eq!(app.instance(recovers).await["statusName"], "STARTING");

    let done = app.wait_final(&first).await;
    assert_eq!(
        (&done["state"], &done["attempts"]),
        (&"SUCCESS".into(), &2.into()),
        "{done}"
    );
    assert!(done.get("error").is_none(), "{done}");
    assert_eq!(app.instance(recovers).await["statusName"], "RUNNING");

    let failed = app.wait_final(&second).await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert_eq!(failed["attempts"], 3, "three attempts by default: {failed}");
    assert!(
        text(&failed["error"]["message"]).contains("(attempt 3 of 3)"),
        "{failed}"
    );
    assert_eq!(app.instance(never).await["statusName"], "STOPPED");
}

#[tokio::test]
async fn an_attempt_past_the_action_timeout_is_aborted_and_retried() {
    let config = config_file(
        "[actions.RestartInstances]\ntimeout = \"100ms\"\nmax_attempts = 2\nbackoff = \"10ms\"\n",
    );
    // RestartInstances takes 1 s at speed 0.1.
    let (app, ids) = app_with(
        &["slow"],
        &[
            "--sim-speed",
            "0.1",
            "--config",
            config.path().to_str().unwrap(),
        ],
    )
    .await;
    let restart = chain(&app, "RestartInstances", &[&ids[0]], &[]).await;
    let data = app.wait_final(&detail_task(&restart, &ids[0])).await;
    assert_eq!(data["state"], "FAILED", "{data}");
    assert_eq!(data["attempts"], 2, "{data}");
    let message = text(&data["error"]["message"]);
    assert!(message.contains("timed out after 100ms"), "{message}");
    assert!(message.contains("(attempt 2 of 2)"), "{message}");
    assert_eq!(app.instance(&ids[0]).await["statusName"], "RUNNING");
}

#[tokio::test]
async fn a_frozen_server_loses_the_lease_and_runs_the_task_again_not_twice() {
    // StartInstances takes 3 s; the lease lasts 1 s and is renewed every ~330 ms.
    let (app, ids) = app_with(&["frozen"], &["--sim-speed", "0", "--lease", "1s"]).await;
    stopped(&app, &[&ids[0]]).await;
    let mut app = app;
    app.kill();
    app.restart(Some(&["--sim-speed", "0.375", "--lease", "1s"]));
    let start = chain(&app, "StartInstances", &[&ids[0]], &[]).await;
    let task = detail_task(&start, &ids[0]);
    let running = wait_for("the task to run", async || {
        let data = task_data(&app, &task).await;
        (data["state"] == "RUNNING").then_some(data)
    })
    .await;
    let first_fence = running["lease"]["fencingToken"].as_u64().expect("a fence");
    assert!(running["lease"]["owner"].is_string(), "{running}");

    // Frozen past its lease: on waking, the worker finds its lease gone and stops;
    // the task is claimed again under a larger fence.
    app.signal("STOP");
    std::thread::sleep(Duration::from_millis(1500));
    app.signal("CONT");
    let again = wait_for("the task to run again", async || {
        let data = task_data(&app, &task).await;
        (data["attempts"] == 2).then_some(data)
    })
    .await;
    if let Some(fence) = again["lease"]["fencingToken"].as_u64() {
        assert!(fence > first_fence, "{again}");
    }
    let done = app.wait_final(&task).await;
    assert_eq!(
        (&done["state"], &done["attempts"]),
        (&"SUCCESS".into(), &2.into()),
        "{done}"
    );
    assert_eq!(app.instance(&ids[0]).await["statusName"], "RUNNING");
}

#[tokio::test]
async fn cancel_task_cancels_queued_tasks_and_stops_the_running_one() {
    // One worker: of a three-instance chain one task runs, two wait. Start takes 2 s.
    let (app, ids) = app_with(&["a", "b", "c"], &["--sim-speed", "0"]).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    stopped(&app, &refs).await;
    let mut app = app;
    app.kill();
    app.restart(Some(&["--sim-speed", "0.25", "--workers", "1"]));
    let start = chain(&app, "StartInstances", &refs, &[]).await;
    let chain_id = text(&start["requestId"]).to_owned();
    wait_for("one task to run", async || {
        (task_data(&app, &chain_id).await["taskStates"]["RUNNING"] == 1).then_some(())
    })
    .await;

    let cancel = app.call("CancelTask", &[("requestId", &chain_id)]).await;
    assert_eq!(cancel["code"], 0, "{cancel}");
    let outcomes: Vec<&str> = cancel["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| text(&t["cancel"]))
        .collect();
    assert_eq!(
        {
            let mut sorted = outcomes.clone();
            sorted.sort();
            sorted
        },
        ["cancelRequested", "canceled", "canceled"],
        "{cancel}"
    );
    let data = app.wait_final(&chain_id).await;
    assert_eq!(data["status"], 1, "canceled is status 1: {data}");
    assert_eq!(data["taskStates"]["CANCELED"], 3, "{data}");
    for task in data["tasks"].as_array().unwrap() {
        assert!(
            text(&task["error"]["message"]).contains("canceled"),
            "{task}"
        );
    }
    for id in &refs {
        let instance = app.instance(id).await;
        assert_eq!(instance["statusName"], "STOPPED", "released: {instance}");
        assert!(instance["busyWith"].is_null(), "{instance}");
    }

    // Too late for a final task; unknown IDs are named as such.
    let again = app.call("CancelTask", &[("requestId", &chain_id)]).await;
    assert!(
        again["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["cancel"] == "tooLate"),
        "{again}"
    );
    let unknown = app.call("CancelTask", &[("requestId", "987654321")]).await;
    assert_eq!(unknown["code"], 5000, "{unknown}");
    assert!(
        text(&unknown["message"]).contains("does not exist"),
        "{unknown}"
    );
}

#[tokio::test]
async fn a_client_token_answers_the_same_bytes_after_a_restart_and_refuses_other_params() {
    let mut app = TestApp::spawn().await;
    let run = [("instanceName", "once"), ("clientToken", "tok-restart")];
    let first = app.call("RunInstances", &run).await;
    assert_eq!(first["code"], 0, "{first}");
    app.kill();
    app.restart(None);
    let again = app.call("RunInstances", &run).await;
    assert_eq!(
        again.to_string(),
        first.to_string(),
        "the same answer, byte for byte"
    );
    let listed = app.call("DescribeInstances", &[]).await;
    assert_eq!(listed["totalCount"], 1, "nothing new was created: {listed}");

    let other = app
        .call(
            "RunInstances",
            &[("instanceName", "twice"), ("clientToken", "tok-restart")],
        )
        .await;
    assert_eq!(other["code"], 4000, "{other}");
    assert!(
        text(&other["message"]).contains("different action or parameters"),
        "{other}"
    );
}

#[tokio::test]
async fn a_rename_waits_behind_a_busy_instance_then_runs() {
    // StopInstances takes 2 s; ModifyInstanceAttributes queues by default.
    let (app, ids) = app_with(&["before"], &["--sim-speed", "0.25"]).await;
    let id = ids[0].as_str();
    let stop = chain(&app, "StopInstances", &[id], &[]).await;
    let stop_task = detail_task(&stop, id);
    let rename = app
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", id), ("instanceName", "after")],
        )
        .await;
    assert_eq!(rename["code"], 0, "queued, not refused: {rename}");
    let rename_task = text(&rename["requestId"]).to_owned();
    let waiting = task_data(&app, &rename_task).await;
    assert_eq!(waiting["state"], "QUEUED", "{waiting}");
    assert_eq!(waiting["blockedBy"], stop_task.as_str(), "{waiting}");
    assert_eq!(waiting["queuePosition"], 1, "{waiting}");
    let second = app
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", id), ("instanceName", "last")],
        )
        .await;
    let second_task = text(&second["requestId"]).to_owned();
    let behind = task_data(&app, &second_task).await;
    assert_eq!(
        (&behind["blockedBy"], &behind["queuePosition"]),
        (&Value::from(rename_task.as_str()), &2.into()),
        "{behind}"
    );

    assert_eq!(app.wait_final(&second_task).await["state"], "SUCCESS");
    assert_eq!(app.wait_final(&rename_task).await["state"], "SUCCESS");
    let instance = app.instance(id).await;
    assert_eq!(
        (&instance["statusName"], &instance["instanceName"]),
        (&"STOPPED".into(), &"last".into()),
        "{instance}"
    );
}

#[tokio::test]
async fn tasks_queued_behind_a_failed_one_are_canceled() {
    let (app, ids) = app_with(&["qtask-fail:StopInstances"], &["--sim-speed", "0.25"]).await;
    let id = ids[0].as_str();
    let stop = chain(&app, "StopInstances", &[id], &[]).await;
    let stop_task = detail_task(&stop, id);
    let rename = app
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", id), ("instanceName", "never")],
        )
        .await;
    let rename_task = text(&rename["requestId"]).to_owned();
    assert_eq!(app.wait_final(&stop_task).await["state"], "FAILED");
    let data = app.wait_final(&rename_task).await;
    assert_eq!(data["state"], "CANCELED", "{data}");
    let message = text(&data["error"]["message"]);
    assert!(
        message.contains(&format!(
            "task {stop_task} (StopInstances) ahead of it on {id} failed"
        )),
        "{message}"
    );
    let instance = app.instance(id).await;
    assert_eq!(instance["statusName"], "RUNNING", "{instance}");
    assert!(
        text(&instance["instanceName"]).contains("qtask-fail"),
        "{instance}"
    );
}

#[tokio::test]
async fn a_queued_task_whose_state_precondition_fails_at_the_head_fails() {
    let config = config_file("[actions.StartInstances]\non_busy = \"queue\"\n");
    let (app, ids) = app_with(
        &["precondition"],
        &[
            "--sim-speed",
            "0.25",
            "--config",
            config.path().to_str().unwrap(),
        ],
    )
    .await;
    let id = ids[0].as_str();
    let restart = chain(&app, "RestartInstances", &[id], &[]).await;
    let restart_task = detail_task(&restart, id);
    // Start needs STOPPED; queued behind the restart, it is checked when its turn comes.
    let start = chain(&app, "StartInstances", &[id], &[]).await;
    let start_task = detail_task(&start, id);
    let data = app.wait_final(&start_task).await;
    assert_eq!(data["state"], "FAILED", "{data}");
    assert_eq!(
        text(&data["error"]["message"]),
        format!(
            "{id} was RUNNING when task {start_task} reached the head of its queue; StartInstances needs it to be STOPPED"
        )
    );
    assert_eq!(app.wait_final(&restart_task).await["state"], "SUCCESS");
    assert_eq!(app.instance(id).await["statusName"], "RUNNING");
}

#[tokio::test]
async fn retry_task_retries_exactly_the_failed_resources_of_a_chain() {
    let mut app = TestApp::spawn().await;
    let good = app.create_instances(2, "good").await;
    let bad = app.create_instances(1, "qtask-fail:StopInstances").await;
    let all = [good[0].as_str(), good[1].as_str(), bad[0].as_str()];
    let stop = chain(&app, "StopInstances", &all, &[]).await;
    let chain_id = text(&stop["requestId"]).to_owned();
    let data = app.wait_final(&chain_id).await;
    assert_eq!(data["taskStates"]["FAILED"], 1, "{data}");

    // Mend the instance, then retry the chain: only it gets a new task.
    let mend = app
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", bad[0].as_str()), ("instanceName", "mended")],
        )
        .await;
    app.wait_final(text(&mend["requestId"])).await;
    let retry = app
        .call(
            "RetryTask",
            &[("requestId", &chain_id), ("clientToken", "retry-1")],
        )
        .await;
    assert_eq!(retry["code"], 0, "{retry}");
    let detail = retry["detail"].as_object().unwrap();
    assert_eq!(detail.keys().collect::<Vec<_>>(), [&bad[0]], "{retry}");
    let retried = app.wait_final(text(&retry["requestId"])).await;
    assert_eq!(retried["state"], "SUCCESS", "{retried}");
    assert_eq!(retried["action"], "StopInstances", "{retried}");
    assert_eq!(app.instance(&bad[0]).await["statusName"], "STOPPED");
    // The same client token answers the same; a chain with nothing failed is refused.
    let replay = app
        .call(
            "RetryTask",
            &[("requestId", &chain_id), ("clientToken", "retry-1")],
        )
        .await;
    assert_eq!(replay, retry);
    let nothing = app
        .call("RetryTask", &[("requestId", text(&retry["requestId"]))])
        .await;
    assert_eq!(nothing["code"], 4000, "{nothing}");
    assert!(
        text(&nothing["message"]).contains("no failed or canceled task"),
        "{nothing}"
    );
    app.kill();
}

#[tokio::test]
async fn resource_history_lists_every_operation_newest_first() {
    let app = TestApp::spawn().await;
    let id = app.create_instances(1, "history").await.remove(0);
    stopped(&app, &[&id]).await;
    let start = chain(&app, "StartInstances", &[&id], &[]).await;
    let start_task = detail_task(&start, &id);
    app.wait_final(&start_task).await;

    let history = app
        .call("DescribeResourceHistory", &[("resourceId", &id)])
        .await;
    assert_eq!(history["code"], 0, "{history}");
    assert_eq!(history["totalCount"], 3, "{history}");
    let entries = history["history"].as_array().unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| text(&e["action"])).collect();
    assert_eq!(
        actions,
        ["StartInstances", "StopInstances", "RunInstances"],
        "{history}"
    );
    assert_eq!(entries[0]["requestId"], start_task.as_str());
    assert!(
        entries
            .iter()
            .all(|e| e["state"] == "SUCCESS" && e["endTime"].is_string()),
        "{history}"
    );
    let page = app
        .call(
            "DescribeResourceHistory",
            &[("resourceId", &id), ("offset", "1"), ("limit", "1")],
        )
        .await;
    assert_eq!(page["history"][0]["action"], "StopInstances", "{page}");

    let unknown = app
        .call("DescribeResourceHistory", &[("resourceId", "ins-zzzzzzzz")])
        .await;
    assert_eq!(unknown["code"], 5000, "{unknown}");
}

#[tokio::test]
async fn retention_deletes_old_tasks_and_returned_instances_and_says_expired() {
    let app = TestApp::spawn_with(&[
        "--sim-speed",
        "0",
        "--task-retention",
        "1s",
        "--retired-retention",
        "1s",
        "--retention-interval",
        "200ms",
    ])
    .await;
    let answer = app.call("RunInstances", &[("instanceName", "brief")]).await;
    let created = text(&answer["requestId"]).to_owned();
    let id = text(&answer["instanceIds"][0]).to_owned();
    app.wait_final(&created).await;
    let give_back = app.call("ReturnInstance", &[("instanceId", &id)]).await;
    app.wait_final(text(&give_back["requestId"])).await;

    let expired = wait_for("the creation task to be purged", async || {
        let answer = app
            .call("DescribeTaskResult", &[("requestId", &created)])
            .await;
        (answer["code"] != 0).then_some(answer)
    })
    .await;
    assert_eq!(expired["code"], 5000, "{expired}");
    assert!(
        text(&expired["message"]).contains("has expired"),
        "{expired}"
    );
    let never = app
        .call("DescribeTaskResult", &[("requestId", "99999999")])
        .await;
    assert_eq!(never["code"], 5000, "{never}");
    assert!(
        text(&never["message"]).contains("does not exist"),
        "{never}"
    );
    assert_ne!(expired["message"], never["message"]);

    wait_for("the returned instance to be purged", async || {
        let listed = app.call("DescribeInstances", &[]).await;
        (listed["totalCount"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_with_6200_then_the_next_start_takes_the_released_task_at_once() {
    // StopInstances takes 8 s; the grace period is 1 s. The simulator's journal tells
    // every attempt, should their count ever differ.
    let journal_dir = tempfile::tempdir().expect("a directory");
    let journal = journal_dir.path().join("attempts.jsonl");
    let journal_arg = journal.display().to_string();
    let (mut app, ids) = app_with(
        &["draining"],
        &[
            "--sim-speed",
            "1",
            "--shutdown-grace",
            "1",
            "--sim-journal",
            &journal_arg,
        ],
    )
    .await;
    let stop = chain(&app, "StopInstances", &[&ids[0]], &[]).await;
    let task = detail_task(&stop, &ids[0]);
    wait_for("the task to run", async || {
        (task_data(&app, &task).await["state"] == "RUNNING").then_some(())
    })
    .await;

    app.signal("TERM");
    let client = app.client();
    let refused = wait_for("an answer while draining", async || {
        match client
            .call("DescribeInstances", Vec::<(String, String)>::new())
            .await
        {
            Ok(answer) if answer["code"] == 6200 => Some(answer),
            Ok(_) => None,
            Err(error) => panic!("the listener closed before any 6200: {error}"),
        }
    })
    .await;
    assert!(
        text(&refused["message"]).contains("shutting down"),
        "{refused}"
    );
    assert!(app.wait_exit().success());

    app.restart(Some(&["--sim-speed", "0", "--sim-journal", &journal_arg]));
    app.wait_output("Resuming 1 unfinished task").await;
    let done = app.wait_final(&task).await;
    assert_eq!(
        (&done["state"], &done["attempts"]),
        (&"SUCCESS".into(), &2.into()),
        "{done}\nattempts:\n{}",
        std::fs::read_to_string(&journal).unwrap_or_default()
    );
}

/// Two nodes on one PostgreSQL schema: a clientToken used on one node answers the first
/// answer on the other (and refuses other parameters there), and a resource's tasks keep
/// their order whichever node accepted them — a rename sent to B waits behind the stop
/// that A accepted, then runs. Needs `QTASK_TEST_DATABASE_URL` (scripts/test sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_client_tokens_and_resource_order_hold_across_nodes() {
    // StopInstances takes 2 s at speed 0.25.
    let cluster = tokio::task::block_in_place(|| {
        crate::helpers::Cluster::start(2, &["--sim-speed", "0.25", "--workers", "2"])
    });
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);

    let run = [("instanceName", "tokened"), ("clientToken", "tok-nodes")];
    let first = a.call("RunInstances", &run).await;
    assert_eq!(first["code"], 0, "{first}");
    let again = b.call("RunInstances", &run).await;
    assert_eq!(again.to_string(), first.to_string(), "B answers A's answer");
    let other = b
        .call(
            "RunInstances",
            &[("instanceName", "other"), ("clientToken", "tok-nodes")],
        )
        .await;
    assert_eq!(other["code"], 4000, "{other}");
    assert!(
        text(&other["message"]).contains("different action or parameters"),
        "{other}"
    );
    let created = a.wait_final(text(&first["requestId"])).await;
    assert_eq!(created["state"], "SUCCESS", "{created}");
    let listed = a.call("DescribeInstances", &[]).await;
    assert_eq!(listed["totalCount"], 1, "one instance in all: {listed}");
    let id = text(&listed["instanceSet"][0]["instanceId"]).to_owned();

    let stop = chain(a, "StopInstances", &[&id], &[]).await;
    let stop_task = detail_task(&stop, &id);
    let rename = b
        .call(
            "ModifyInstanceAttributes",
            &[("instanceId", &id), ("instanceName", "renamed")],
        )
        .await;
    assert_eq!(rename["code"], 0, "queued on B, not refused: {rename}");
    let rename_task = text(&rename["requestId"]).to_owned();
    let waiting = task_data(b, &rename_task).await;
    assert_eq!(waiting["state"], "QUEUED", "{waiting}");
    assert_eq!(waiting["blockedBy"], stop_task.as_str(), "{waiting}");

    let stopped = b.wait_final(&stop_task).await;
    let renamed = a.wait_final(&rename_task).await;
    assert_eq!(
        (&stopped["state"], &renamed["state"]),
        (&"SUCCESS".into(), &"SUCCESS".into())
    );
    assert!(
        text(&renamed["startTime"]) >= text(&stopped["endTime"]),
        "the rename started after the stop ended: {stopped} {renamed}"
    );
    let instance = b.instance(&id).await;
    assert_eq!(
        (&instance["statusName"], &instance["instanceName"]),
        (&"STOPPED".into(), &"renamed".into()),
        "{instance}"
    );
}
