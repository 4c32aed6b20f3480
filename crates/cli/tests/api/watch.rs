//! Waiting without polling loops: the long poll of DescribeTaskResult (`waitSeconds`,
//! `retryAfter`) and the `/v2/events` stream of task events.

use crate::helpers::{app_with, chain, detail_task, text, TestApp};
use qtask::client::{fresh_nonce, unix_seconds};
use qtask_protocol::signature::{sign_request, SignatureMethod};
use qtask_protocol::{Params, API_PATH};
use serde_json::Value;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_the_task_ends_or_when_time_is_up() {
    // StopInstances takes 2 s.
    let (app, ids) = app_with(&["a"], &["--sim-speed", "0.25"]).await;
    let stop = chain(&app, "StopInstances", &[&ids[0]], &[]).await;
    let task = detail_task(&stop, &ids[0]);

    let asked = Instant::now();
    let early = app
        .call(
            "DescribeTaskResult",
            &[("requestId", &task), ("waitSeconds", "1")],
        )
        .await;
    let waited = asked.elapsed();
    assert_eq!(early["data"]["status"], 2, "{early}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    let retry_after = early["data"]["retryAfter"].as_u64().expect("retryAfter");
    assert!((1..=3).contains(&retry_after), "{early}");

    let asked = Instant::now();
    let done = app
        .call(
            "DescribeTaskResult",
            &[
                ("requestId", text(&stop["requestId"])),
                ("waitSeconds", "30"),
            ],
        )
        .await;
    let waited = asked.elapsed();
    assert_eq!(done["data"]["status"], 0, "{done}");
    assert!(
        waited < Duration::from_secs(5),
        "held {waited:?} past the end"
    );
    assert!(done["data"].get("retryAfter").is_none(), "final: {done}");

    let bad = app
        .call(
            "DescribeTaskResult",
            &[("requestId", &task), ("waitSeconds", "31")],
        )
        .await;
    assert_eq!(bad["code"], 4000, "{bad}");
    assert!(text(&bad["message"]).contains("waitSeconds"), "{bad}");
}

/// Opens `/v2/events` with a request signed like an API call.
async fn open_events(app: &TestApp, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut params =
        Params::from_pairs(extra.iter().map(|(n, v)| (n.to_string(), v.to_string()))).unwrap();
    params.set("Action", "WatchTaskEvents");
    params.set("Region", "ap-guangzhou");
    params.set("SecretId", app.secret_id.clone());
    params.set("Timestamp", unix_seconds().to_string());
    params.set("Nonce", fresh_nonce().to_string());
    let host = app.http.to_string();
    let query = sign_request(
        &mut params,
        qtask_protocol::HttpMethod::Get,
        &host,
        API_PATH,
        SignatureMethod::HmacSha256,
        &app.secret_key,
    );
    reqwest::get(format!("http://{host}/v2/events?{query}"))
        .await
        .expect("the stream opens")
}

/// Reads server-sent events until `done` says so (with a deadline); returns
/// (event name, data) pairs.
async fn read_events(
    mut response: reqwest::Response,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buffer = String::new();
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no end of stream; events so far: {events:?}"))
            .expect("the stream reads");
        let Some(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
    events
}

#[tokio::test]
async fn the_event_stream_delivers_every_event_of_a_chain_in_order_then_ends() {
    let (app, ids) = app_with(&["a", "b", "c"], &["--sim-speed", "0.05"]).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Account-wide, opened before the call: sees the chain from its first event.
    let everything = open_events(&app, &[]).await;
    assert_eq!(
        everything.headers()["content-type"],
        "text/event-stream",
        "{everything:?}"
    );
    let stop = chain(&app, "StopInstances", &refs, &[]).await;
    let chain_id = text(&stop["requestId"]).to_owned();
    // Following the chain itself, opened after the call: ends once all tasks are final.
    let followed = open_events(&app, &[("requestId", &chain_id)]).await;

    let seen = read_events(everything, |events| {
        events
            .iter()
            .filter(|(name, _)| name == "succeeded")
            .count()
            == 3
    })
    .await;
    let mut last_seq = 0;
    for (_, event) in &seen {
        let seq = event["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "in order: {seen:?}");
        last_seq = seq;
        assert_eq!(event["chainId"], chain_id.as_str(), "{event}");
    }
    for id in &refs {
        let kinds: Vec<&str> = seen
            .iter()
            .filter(|(_, e)| e["resourceId"] == *id)
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(kinds, ["queued", "started", "succeeded"], "{id}: {seen:?}");
    }
    let tail = read_events(followed, |events| {
        events.iter().any(|(name, _)| name == "end")
    })
    .await;
    let (name, end) = tail.last().unwrap();
    assert_eq!(
        (name.as_str(), &end["requestId"]),
        ("end", &Value::from(chain_id.as_str()))
    );
    assert!(
        tail.iter()
            .all(|(name, e)| name == "end" || e["chainId"] == chain_id.as_str()),
        "{tail:?}"
    );

    // Errors before the stream starts are ordinary envelopes.
    let unknown = open_events(&app, &[("requestId", "987654321")]).await;
    let body: Value = serde_json::from_str(&unknown.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], 5000, "{body}");
}

/// A callback receiver on 127.0.0.1 that fails its first `failures` requests with 503
/// and records every request (headers and body).
async fn receiver(
    failures: usize,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let record = Arc::clone(&record);
            async move {
                let mut seen = record.lock().unwrap();
                seen.push((headers, body));
                if seen.len() <= failures {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn a_chain_calls_back_once_when_final_signed_and_retried() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(2, "hooked").await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (url, seen) = receiver(1).await;
    let stop = chain(&app, "StopInstances", &refs, &[("callbackUrl", &url)]).await;
    assert_eq!(stop["code"], 0, "{stop}");
    let chain_id = text(&stop["requestId"]).to_owned();
    crate::helpers::wait_for("the callback to be delivered", async || {
        (seen.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    // A little longer: no second delivery may follow the successful one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one 503, then one success: {seen:?}");
    let (headers, body) = &seen[1];
    assert_eq!(seen[0].1, *body, "the retry sends the same body");
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-qtask-secret-id"), app.secret_id);
    assert!(qtask_executors::verify_signature(
        &app.secret_key,
        &header("x-qtask-timestamp"),
        body.as_bytes(),
        &header("x-qtask-signature"),
    ));
    assert!(!qtask_executors::verify_signature(
        "another key",
        &header("x-qtask-timestamp"),
        body.as_bytes(),
        &header("x-qtask-signature"),
    ));
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["event"], "chainFinished", "{payload}");
    assert_eq!(payload["data"]["requestId"], chain_id.as_str(), "{payload}");
    assert_eq!(payload["data"]["state"], "SUCCESS", "{payload}");
    assert_eq!(payload["data"]["taskCount"], 2, "{payload}");

    let bad = chain(
        &app,
        "StartInstances",
        &refs,
        &[("callbackUrl", "ftp://example/x")],
    )
    .await;
    assert_eq!(bad["code"], 4000, "{bad}");
    assert!(text(&bad["message"]).contains("callbackUrl"), "{bad}");
}

/// A task of its own (not a chain) calls back `taskFinished` once when it ends; a task
/// submitted without `callbackUrl` calls nothing back.
#[tokio::test]
async fn a_task_calls_back_when_it_ends_and_only_if_asked() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "hooked").await;
    let (url, seen) = receiver(0).await;
    let rename = |name: &'static str, callback: Option<&str>| {
        let mut params = vec![
            ("instanceId", ids[0].clone()),
            ("instanceName", name.to_owned()),
        ];
        if let Some(url) = callback {
            params.push(("callbackUrl", url.to_owned()));
        }
        params
    };
    let call = async |params: Vec<(&str, String)>| {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = app.call("ModifyInstanceAttributes", &params).await;
        assert_eq!(answer["code"], 0, "{answer}");
        text(&answer["requestId"]).to_owned()
    };
    let plain = call(rename("plain", None)).await;
    app.wait_final(&plain).await;
    let hooked = call(rename("hooked", Some(&url))).await;
    crate::helpers::wait_for("the callback to be delivered", async || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "one callback, for the task that asked: {seen:?}"
    );
    let payload: Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(payload["event"], "taskFinished", "{payload}");
    assert_eq!(payload["data"]["requestId"], hooked.as_str(), "{payload}");
    assert_eq!(payload["data"]["state"], "SUCCESS", "{payload}");
}

/// Two nodes on one PostgreSQL schema: every task runs on node A, yet both nodes' event
/// streams show every task start and succeed, each event once (relayed, never echoed
/// back), and the chain's callback comes once (B does not call back on relayed events).
/// Needs `QTASK_TEST_DATABASE_URL` (scripts/test sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_every_node_streams_the_events_of_tasks_another_node_ran() {
    // Node A runs every task; node B runs none (`--workers 0`), so B's stream sees them
    // only through the relay, and a callback from B could only come from a relayed event.
    let cluster = tokio::task::block_in_place(|| {
        crate::helpers::Cluster::start(1, &["--sim-speed", "0.05", "--workers", "2"])
    });
    let a = &cluster.nodes[0];
    let credentials = qtask::credentials::path(&a.data_dir);
    let mut b_args = vec!["--sim-speed", "0.05", "--workers", "0"];
    b_args.extend(cluster.key_args.iter().map(String::as_str));
    let b = &tokio::task::block_in_place(|| {
        TestApp::spawn_node(
            std::sync::Arc::clone(&cluster.schema),
            Some(&credentials),
            &b_args,
        )
    });
    let ids = a.create_instances(3, "relayed").await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let streams = [open_events(a, &[]).await, open_events(b, &[]).await];
    let (url, delivered) = receiver(0).await;
    let stop = chain(a, "StopInstances", &refs, &[("callbackUrl", &url)]).await;
    let tasks: Vec<String> = ids.iter().map(|id| detail_task(&stop, id)).collect();

    let events_of = |events: &[(String, Value)], task: &str| -> Vec<String> {
        events
            .iter()
            .filter(|(_, data)| data["requestId"] == task)
            .map(|(name, _)| name.clone())
            .collect()
    };
    for (node, stream) in ["A", "B"].into_iter().zip(streams) {
        let seen = read_events(stream, |events| {
            tasks
                .iter()
                .all(|task| events_of(events, task).contains(&"succeeded".to_owned()))
        })
        .await;
        for task in &tasks {
            let names = events_of(&seen, task);
            let once = |name: &str| names.iter().filter(|n| *n == name).count() == 1;
            assert!(
                once("started") && once("succeeded"),
                "node {node}'s stream, task {task}: {names:?}"
            );
        }
    }
    // The node that ran the chain's last task calls back; the other saw it relayed.
    crate::helpers::wait_for("the callback to be delivered", async || {
        (!delivered.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "one callback per chain: {delivered:?}");
}
