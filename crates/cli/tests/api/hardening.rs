//! Issue #8: permissions, quotas and blocked accounts, provoked through the real
//! server with keys made by `qtask keys create`.

use crate::helpers::*;
use qtask::client::Client;
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use qtask_store::Store;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    let (client, secret_id) = restricted_client(
        &app,
        "default",
        &[
            "--allow-actions",
            "DescribeInstances,DescribeTaskResult",
            "--allow-resources",
            "ins-*",
            "--read-only",
            "--rate",
            "5/10",
        ],
    );
    let listing = qtask_keys(&app, &["list"]);
    let line = listing
        .lines()
        .find(|l| l.contains(&secret_id))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(
        line.ends_with(
            "read-only actions=DescribeInstances,DescribeTaskResult resources=ins-* rate=5/10"
        ),
        "{listing}"
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
    // CancelTask names tasks: the resources of the task (or chain) are checked.
    let other_chain = stop(&app.client(), &[&ids[1]]).await;
    assert_eq!(other_chain["code"], 0, "{other_chain}");
    let cancel = |id: String| call(&exact, "CancelTask", vec![("requestId".to_owned(), id)]);
    let refused = cancel(detail_task(&other_chain, &ids[1])).await;
    assert_code(&refused, 4102, "UnauthorizedResource", &[&ids[1]]);
    let chain_id = text(&other_chain["requestId"]).to_owned();
    assert_code(
        &cancel(chain_id).await,
        4102,
        "UnauthorizedResource",
        &[&ids[1]],
    );
    let own = cancel(detail_task(&allowed, &ids[0])).await;
    assert_eq!(own["code"], 0, "its own resource's task: {own}");
    // Creations are not restricted: their IDs are drawn by qtask.
    let created = call(
        &exact,
        "RunInstances",
        vec![("goodsNum".to_owned(), "1".to_owned())],
    )
    .await;
    assert_eq!(created["code"], 0, "{created}");

    let (pattern, _) = restricted_client(&app, "default", &["--allow-resources", "ins-*"]);
    let answer = stop(&pattern, &[&ids[2]]).await;
    assert_eq!(answer["code"], 0, "ins-* matches the instance: {answer}");
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
        &["--sim-speed", "0.05", "--max-unfinished-tasks", "2"],
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

// ---- Secrets at rest ----

/// The raw database files (the database, its WAL and shared memory) that contain
/// `needle`.
fn database_files_containing(app: &TestApp, needle: &str) -> Vec<String> {
    ["qtask.db", "qtask.db-wal", "qtask.db-shm"]
        .into_iter()
        .filter(|name| {
            std::fs::read(app.data_dir.join(name)).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_copy_of_the_database_reveals_no_secret_key_and_no_password() {
    let mut app = TestApp::spawn_on_sqlite(&["--sim-speed", "0"]).await;
    let (secret_id, canary_key) = app.create_key("default");
    let canary_password = "Canary7Pass9Word";
    let client = app.client_for(
        &secret_id,
        &canary_key,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    let run = call(
        &client,
        "RunInstances",
        vec![
            ("goodsNum".to_owned(), "1".to_owned()),
            ("password".to_owned(), canary_password.to_owned()),
        ],
    )
    .await;
    assert_eq!(run["code"], 0, "{run}");
    let data = app.wait_final(text(&run["requestId"])).await;
    assert_eq!(data["state"], "SUCCESS", "{data}");
    let canaries = [
        canary_key.clone(),
        app.secret_key.clone(),
        canary_password.into(),
    ];
    let check = |app: &TestApp, moment: &str| {
        for canary in &canaries {
            let found = database_files_containing(app, canary);
            assert!(found.is_empty(), "{moment}: {canary:?} found in {found:?}");
        }
    };
    check(&app, "while the server runs");
    assert!(app.terminate().success());
    check(&app, "after the server stopped");
    // The grep can find what is there: the SecretId is stored in plain text.
    assert!(!database_files_containing(&app, &secret_id).is_empty());
}

#[tokio::test]
async fn keys_stored_in_plain_text_are_sealed_at_the_next_start() {
    let mut app = TestApp::spawn_on_sqlite(&["--sim-speed", "0"]).await;
    app.kill();
    let plain = "plain-canary-0123456789abcdefghij";
    {
        // A store without the master key writes keys as given (an older qtask).
        let store = qtask_store_sqlite::open(&app.data_dir.join("qtask.db")).unwrap();
        let account = store.account_by_name("default").await.unwrap().unwrap();
        store
            .create_key(
                qtask_store::NewApiKey {
                    secret_id: "AKIDplaintext0000000000000000000000".parse().unwrap(),
                    secret_key: plain.into(),
                    account,
                    access: Default::default(),
                },
                0,
            )
            .await
            .unwrap();
    }
    assert!(!database_files_containing(&app, plain).is_empty());
    app.restart(None);
    let client = app.client_for(
        "AKIDplaintext0000000000000000000000",
        plain,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    assert_eq!(describe(&client).await["code"], 0, "the key still works");
    assert!(app.terminate().success());
    let found = database_files_containing(&app, plain);
    assert!(found.is_empty(), "{plain:?} still in {found:?}");
}

/// Writes a new master key file with `mode`; returns its path.
fn new_key_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join(format!("new-{mode:o}.key"));
    std::fs::write(
        &path,
        qtask_store_sqlite::MasterKey::generate().expect("a key"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn qtask_keys_fails(app: &TestApp, args: &[&str]) -> String {
    let output = run_keys(app, args);
    assert!(!output.status.success(), "qtask keys {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn rotating_the_master_key_keeps_every_key_working() {
    let mut app = TestApp::spawn().await;
    let (secret_id, secret_key) = app.create_key("team-a");
    let keys_dir = tempfile::tempdir().unwrap();
    let new_key = new_key_file(keys_dir.path(), 0o600);
    let new_key_arg = new_key.to_str().unwrap();

    let refused = qtask_keys_fails(&app, &["rotate-master", "--new-key-file", new_key_arg]);
    assert!(refused.contains("another qtask serve"), "{refused}");
    assert!(app.terminate().success());

    let open_file = new_key_file(keys_dir.path(), 0o640);
    let refused = qtask_keys_fails(
        &app,
        &[
            "rotate-master",
            "--new-key-file",
            open_file.to_str().unwrap(),
        ],
    );
    assert!(refused.contains("run chmod 600"), "{refused}");

    let old_master = std::fs::read_to_string(app.data_dir.join("master.key")).unwrap();
    let out = qtask_keys(&app, &["rotate-master", "--new-key-file", new_key_arg]);
    assert!(out.contains("Re-sealed 2 SecretKeys"), "{out}");
    let master = std::fs::read_to_string(app.data_dir.join("master.key")).unwrap();
    assert_eq!(master, std::fs::read_to_string(&new_key).unwrap());
    assert_ne!(master, old_master);

    app.restart(None);
    assert_eq!(describe(&app.client()).await["code"], 0, "the first key");
    let team = app.client_for(
        &secret_id,
        &secret_key,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    assert_eq!(describe(&team).await["code"], 0, "the team's key");

    // The old master key no longer opens the keys: the server refuses to start with it.
    assert!(app.terminate().success());
    let old_file = keys_dir.path().join("old.key");
    std::fs::write(&old_file, &old_master).unwrap();
    std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = qtask_keys_fails(
        &app,
        &["list", "--master-key-file", old_file.to_str().unwrap()],
    );
    assert!(
        refused.contains("does not open with this master key"),
        "{refused}"
    );
}
