//! The audit log on the real server: every mutating call, accepted or refused, with who
//! made it, from where, what it named and what it answered; queries are not audited.

use crate::helpers::{chain, text, TestApp};

#[tokio::test]
async fn every_mutating_call_is_audited_with_its_outcome() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "audited").await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let stop = chain(&app, "StopInstances", &refs, &[]).await;
    app.wait_final(text(&stop["requestId"])).await;
    // Refused: the instances are stopped, not running.
    let refused = chain(&app, "StopInstances", &refs, &[]).await;
    assert_eq!(refused["code"], 5100, "{refused}");
    app.call("DescribeInstances", &[]).await;

    let log = app.call("DescribeAuditLog", &[]).await;
    assert_eq!(log["code"], 0, "{log}");
    assert_eq!(
        log["totalCount"], 3,
        "Run, Stop, refused Stop; no query: {log}"
    );
    let entries = log["auditSet"].as_array().unwrap();
    let (newest, middle, oldest) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(newest["action"], "StopInstances");
    assert_eq!(newest["code"], 5100, "{newest}");
    assert_eq!(newest["requestIds"], serde_json::json!([]), "{newest}");
    assert_eq!(middle["code"], 0, "{middle}");
    assert_eq!(
        middle["requestIds"].as_array().unwrap().len(),
        3,
        "the chain and its two tasks: {middle}"
    );
    assert_eq!(middle["resourceIds"], serde_json::json!(ids), "{middle}");
    assert_eq!(oldest["action"], "RunInstances");
    assert_eq!(
        oldest["resourceIds"],
        serde_json::json!(ids),
        "the created IDs: {oldest}"
    );
    for entry in entries {
        assert_eq!(entry["secretId"], app.secret_id.as_str(), "{entry}");
        assert_eq!(entry["sourceIp"], "127.0.0.1", "{entry}");
        assert!(entry["time"].is_string(), "{entry}");
    }

    let filtered = app
        .call(
            "DescribeAuditLog",
            &[("code", "5100"), ("resourceId", &ids[0])],
        )
        .await;
    assert_eq!(filtered["totalCount"], 1, "{filtered}");
    let other = app.create_key("someone-else");
    let theirs = TestApp::call_with(
        &app.client_for(
            &other.0,
            &other.1,
            qtask_protocol::signature::HttpMethod::Get,
            qtask_protocol::signature::SignatureMethod::HmacSha256,
        ),
        "DescribeAuditLog",
        &[],
    )
    .await;
    assert_eq!(theirs["totalCount"], 0, "accounts are isolated: {theirs}");
}
