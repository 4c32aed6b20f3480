//! `DescribeQueueHealth` through HTTP: depth, oldest queued task, per-minute counts and
//! the failure rate, scoped to the caller's account.

use crate::helpers::{app_with, assert_code, chain, detail_task, TestApp};
use serde_json::Value;

fn sum(health: &Value, field: &str) -> u64 {
    health["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[field].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn queue_health_counts_the_window_per_minute_and_the_failure_rate() {
    let app = TestApp::spawn().await;
    let web = app.create_instances(1, "web").await;
    let db = app.create_instances(1, "db qtask-fail:StopInstances").await;
    let stop = chain(&app, "StopInstances", &[&web[0], &db[0]], &[]).await;
    assert_eq!(stop["code"], 0, "{stop}");
    app.wait_final(stop["requestId"].as_str().unwrap()).await;

    let health = app.call("DescribeQueueHealth", &[]).await;
    assert_eq!(health["code"], 0, "{health}");
    assert_eq!(health["minutes"], 15);
    assert_eq!(health["timeline"].as_array().unwrap().len(), 15, "{health}");
    assert_eq!(health["queued"], 0, "{health}");
    assert_eq!(health["running"], 0, "{health}");
    assert!(health["oldestQueuedTime"].is_null(), "{health}");
    // Two launches and two stops; the stop of "db" failed.
    assert_eq!(health["submitted"], 4, "{health}");
    assert_eq!(health["succeeded"], 3, "{health}");
    assert_eq!(health["failed"], 1, "{health}");
    assert_eq!(health["canceled"], 0, "{health}");
    assert_eq!(health["failureRate"], 0.25, "{health}");
    assert_eq!(health["complete"], true, "{health}");
    assert_eq!(sum(&health, "submitted"), 4, "{health}");
    assert_eq!(sum(&health, "succeeded"), 3, "{health}");
    assert_eq!(sum(&health, "failed"), 1, "{health}");
    // The current minute is last: the tasks were submitted in it or the one before.
    let recent = |i: usize| health["timeline"][i]["submitted"].as_u64().unwrap();
    assert_eq!(recent(13) + recent(14), 4, "{health}");

    let short = app.call("DescribeQueueHealth", &[("minutes", "5")]).await;
    assert_eq!(short["timeline"].as_array().unwrap().len(), 5, "{short}");

    for bad in ["0", "61", "many"] {
        let refused = app.call("DescribeQueueHealth", &[("minutes", bad)]).await;
        assert_code(&refused, 4000, "InvalidParameter", &["minutes"]);
    }
    let unknown = app.call("DescribeQueueHealth", &[("window", "5")]).await;
    assert_code(&unknown, 4000, "InvalidParameter", &["window"]);

    // Another account sees only its own (empty) queue.
    let (id, key) = app.create_key("other");
    let other = app.client_for(
        &id,
        &key,
        qtask_protocol::signature::HttpMethod::Post,
        qtask_protocol::signature::SignatureMethod::HmacSha1,
    );
    let theirs = TestApp::call_with(&other, "DescribeQueueHealth", &[]).await;
    assert_eq!(theirs["code"], 0, "{theirs}");
    assert_eq!(theirs["submitted"], 0, "{theirs}");
    assert!(theirs["failureRate"].is_null(), "{theirs}");
}

#[tokio::test]
async fn queue_health_shows_the_depth_and_the_oldest_queued_task() {
    // One worker and real durations: the second stop waits while the first runs.
    let (app, ids) = app_with(&["a", "b"], &["--sim-speed", "1", "--workers", "1"]).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let stop = chain(&app, "StopInstances", &ids, &[]).await;
    detail_task(&stop, ids[0]);
    let health = crate::helpers::wait_for("one running and one queued task", async || {
        let health = app.call("DescribeQueueHealth", &[]).await;
        (health["running"] == 1 && health["queued"] == 1).then_some(health)
    })
    .await;
    assert!(health["oldestQueuedTime"].is_string(), "{health}");
    let age = health["oldestQueuedSeconds"].as_u64().unwrap();
    assert!(age < 30, "{health}");
    // The two launches succeeded; nothing failed.
    assert_eq!(health["failureRate"], 0.0, "{health}");
}
