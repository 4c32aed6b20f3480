//! Issue #8: permissions, quotas and blocked accounts, provoked through the real
//! server with keys made by `qtask keys create`.

use crate::helpers::*;
use qtask::client::Client;
use serde_json::Value;

async fn call(client: &Client, action: &str, params: Vec<(String, String)>) -> Value {
    client
        .call(action, params)
        .await
        .expect("the server answers")
}

async fn stop(client: &Client, ids: &[&str]) -> Value {
    call(
        client,
        "StopInstances",
        list_params("instanceIds", ids, &[]),
    )
    .await
}

async fn describe(client: &Client) -> Value {
    call(client, "DescribeInstances", Vec::new()).await
}

#[tokio::test]
async fn a_key_limited_to_some_actions_is_refused_the_others_with_4101() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "web").await;
    let (client, _) = restricted_client(
        &app,
        "default",
        &["--allow-actions", "DescribeInstances,DescribeTaskResult"],
    );
    assert_eq!(describe(&client).await["code"], 0);
    assert_code(
        &stop(&client, &[&ids[0]]).await,
        4101,
        "UnauthorizedOperation",
        &[
            "this key may not call StopInstances",
            "it may call DescribeInstances, DescribeTaskResult",
        ],
    );
    // An action that does not exist is refused the same way: a restricted key learns
    // nothing about actions it may not call.
    assert_code(
        &call(&client, "NoSuchAction", Vec::new()).await,
        4101,
        "UnauthorizedOperation",
        &["NoSuchAction"],
    );
    assert_eq!(
        app.instance(&ids[0]).await["statusName"],
        "RUNNING",
        "nothing was stopped"
    );
}

#[tokio::test]
async fn a_read_only_key_may_describe_but_not_change_or_cancel() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(1, "web").await;
    let (client, _) = restricted_client(&app, "default", &["--read-only"]);
    assert_eq!(describe(&client).await["code"], 0);
    for (action, params) in [
        ("StopInstances", list_params("instanceIds", &[&ids[0]], &[])),
        (
            "RunInstances",
            vec![("goodsNum".to_owned(), "1".to_owned())],
        ),
        ("CancelTask", vec![("requestId".to_owned(), "1".to_owned())]),
    ] {
        assert_code(
            &call(&client, action, params).await,
            4101,
            "UnauthorizedOperation",
            &["this key is read-only", action],
        );
    }
}

#[tokio::test]
async fn a_key_limited_to_some_resources_is_refused_others_with_4102_listing_them() {
    let app = TestApp::spawn().await;
    let ids = app.create_instances(3, "web").await;
    let (exact, _) = restricted_client(&app, "default", &["--allow-resources", &ids[0]]);
    let answer = stop(&exact, &[&ids[0], &ids[1], &ids[2]]).await;
    assert_code(
        &answer,
        4102,
        "UnauthorizedResource",
        &[&format!(
            "this key may not operate on {}, {}",
            ids[1], ids[2]
        )],
    );
    assert!(!text(&answer["message"]).contains(&ids[0]), "{answer}");
    for id in &ids {
        assert_eq!(
            app.instance(id).await["statusName"],
            "RUNNING",
            "{id} untouched"
        );
    }

    let allowed = stop(&exact, &[&ids[0]]).await;
    assert_eq!(allowed["code"], 0, "the allowed instance: {allowed}");
    // Creations are not restricted: their IDs are drawn by qtask.
    let created = call(
        &exact,
        "RunInstances",
        vec![("goodsNum".to_owned(), "1".to_owned())],
    )
    .await;
    assert_eq!(created["code"], 0, "{created}");

    let (pattern, _) = restricted_client(&app, "default", &["--allow-resources", "ins-*"]);
    let answer = stop(&pattern, &[&ids[1], &ids[2]]).await;
    assert_eq!(answer["code"], 0, "ins-* matches every instance: {answer}");
    let (other, _) = restricted_client(&app, "default", &["--allow-resources", "lb-*"]);
    assert_code(
        &stop(&other, &[&ids[0]]).await,
        4102,
        "UnauthorizedResource",
        &[&ids[0]],
    );
}

#[tokio::test]
async fn actions_reserved_to_the_main_key_answer_4103_to_other_keys() {
    let app = TestApp::spawn().await;
    let (second, _) = restricted_client(&app, "default", &[]);
    assert_code(
        &call(&second, "DescribeAuditLog", Vec::new()).await,
        4103,
        "MainAccountOnly",
        &["DescribeAuditLog is reserved to the account's main key"],
    );
    // The first key of the account (the server's own) is the main key.
    let main = app.call("DescribeAuditLog", &[]).await;
    assert_ne!(main["code"], 4103, "{main}");
    let listing = qtask_keys(&app, &["list"]);
    let main_line = listing
        .lines()
        .find(|l| l.contains(&app.secret_id))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(main_line.contains(" yes "), "{listing}");
}

#[tokio::test]
async fn a_blocked_account_answers_4300_until_unblocked() {
    let app = TestApp::spawn().await;
    let (team, _) = restricted_client(&app, "team-a", &[]);
    qtask_keys(&app, &["block", "team-a"]);
    assert_code(
        &describe(&team).await,
        4300,
        "AccessDenied",
        &["account team-a is blocked"],
    );
    assert_eq!(
        describe(&app.client()).await["code"],
        0,
        "other accounts are not blocked"
    );
    assert!(qtask_keys(&app, &["list"]).contains("blocked"));
    qtask_keys(&app, &["unblock", "team-a"]);
    assert_eq!(describe(&team).await["code"], 0);
}

#[tokio::test]
async fn a_key_over_its_request_rate_answers_4400() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--rate-limit", "1/3"]).await;
    let client = app.client();
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let refused = loop {
        let answer = describe(&client).await;
        if answer["code"] != 0 {
            break answer;
        }
        admitted += 1;
        assert!(admitted < 20, "no request was refused");
    };
    assert_code(
        &refused,
        4400,
        "RequestLimitExceeded",
        &["request rate limit exceeded", "1/s (burst 3)"],
    );
    // The burst, plus one a second while the test ran.
    let refilled = started.elapsed().as_secs();
    assert!(
        (3..=3 + refilled).contains(&admitted),
        "{admitted} admitted in {refilled} s"
    );
    // Each SecretId has its own bucket, and a key's own rate replaces the default.
    let (own, _) = restricted_client(&app, "default", &["--rate", "1/5"]);
    for n in 0..5 {
        assert_eq!(describe(&own).await["code"], 0, "own burst request {n}");
    }
    assert_code(
        &describe(&own).await,
        4400,
        "RequestLimitExceeded",
        &["1/s (burst 5)"],
    );
}

#[tokio::test]
async fn an_account_over_its_unfinished_task_limit_answers_4400_and_creates_nothing() {
    // Slow tasks stay unfinished while the test submits more.
    let (app, ids) = app_with(
        &["a", "b", "c"],
        &["--sim-speed", "0.001", "--max-unfinished-tasks", "2"],
    )
    .await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let answer = stop(&app.client(), &refs).await;
    assert_code(
        &answer,
        4400,
        "RequestLimitExceeded",
        &["at most 2 unfinished tasks", "would make 3"],
    );
    for id in &ids {
        assert_eq!(
            app.instance(id).await["statusName"],
            "RUNNING",
            "{id} untouched"
        );
    }
    let within = stop(&app.client(), &refs[..2]).await;
    assert_eq!(within["code"], 0, "{within}");
    assert_code(
        &stop(&app.client(), &refs[2..]).await,
        4400,
        "RequestLimitExceeded",
        &["unfinished tasks"],
    );
}

#[tokio::test]
async fn an_account_over_its_resource_limit_answers_4400() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--max-resources", "2"]).await;
    let client = app.client();
    let run = |count: &str| {
        call(
            &client,
            "RunInstances",
            vec![("goodsNum".to_owned(), count.to_owned())],
        )
    };
    assert_code(
        &run("3").await,
        4400,
        "RequestLimitExceeded",
        &["at most 2 resources"],
    );
    assert_eq!(run("2").await["code"], 0);
    assert_code(
        &run("1").await,
        4400,
        "RequestLimitExceeded",
        &["at most 2 resources", "would make 3"],
    );
    let listed = describe(&app.client()).await;
    assert_eq!(listed["totalCount"], 2, "{listed}");
}
