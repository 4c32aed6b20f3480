//! User catalogs on the real server: the example's databases with a real `exec`
//! script, and invalid catalogs refused at start with the file and the line.

use crate::helpers::{list_params, text, TestApp};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/databases/catalog.toml")
}

async fn databases(app: &TestApp, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for name in names {
        let answer = app.call("CreateDatabases", &[("name", name)]).await;
        assert_eq!(answer["code"], 0, "{answer}");
        assert_eq!(
            app.wait_final(text(&answer["requestId"])).await["state"],
            "SUCCESS"
        );
        ids.push(text(&answer["databaseIds"][0]).to_owned());
    }
    ids
}

async fn backup(app: &TestApp, ids: &[&str], label: &str, destination: &str) -> Value {
    let params = list_params(
        "databaseIds",
        ids,
        &[("label", label), ("destination", destination)],
    );
    app.client()
        .call("BackupDatabases", params)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn the_example_catalog_backs_up_databases_with_its_script() {
    let example = example();
    let app =
        TestApp::spawn_with(&["--sim-speed", "0", "--catalog", example.to_str().unwrap()]).await;
    let ids = databases(&app, &["orders", "billing"]).await;
    let listed = app
        .call("DescribeDatabases", &[("searchWord", "orders")])
        .await;
    assert_eq!(listed["totalCount"], 1, "{listed}");
    assert_eq!(listed["databaseSet"][0]["state"], "AVAILABLE", "{listed}");
    assert_eq!(
        listed["databaseSet"][0]["engine"], "postgres",
        "a default: {listed}"
    );

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().to_str().unwrap();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let answer = backup(&app, &refs, "nightly", dest).await;
    assert_eq!(answer["code"], 0, "{answer}");
    let chain = app.wait_final(text(&answer["requestId"])).await;
    assert_eq!(chain["state"], "SUCCESS", "{chain}");
    for task in chain["tasks"].as_array().unwrap() {
        let file = text(&task["result"]["backupFile"]);
        assert!(file.starts_with(dest), "{task}");
        let dump: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(dump["database"], task["resourceId"], "{dump}");
        assert_eq!(dump["label"], "nightly");
    }
    let after = app
        .call("DescribeDatabases", &[("databaseIds.0", &ids[0])])
        .await;
    assert_eq!(after["databaseSet"][0]["lastBackup"], "nightly", "{after}");

    // Exit 75: retried, then succeeds; exit 1: fails with the end of stderr.
    let flaky = backup(&app, &refs[..1], "flaky", dest).await;
    let task = app
        .wait_final(text(&flaky["detail"][&ids[0]]["requestId"]))
        .await;
    assert_eq!(
        (&task["state"], &task["attempts"]),
        (&"SUCCESS".into(), &2.into()),
        "{task}"
    );
    let failing = backup(&app, &refs[1..], "fail", dest).await;
    let task = app
        .wait_final(text(&failing["detail"][&ids[1]]["requestId"]))
        .await;
    assert_eq!(task["state"], "FAILED", "{task}");
    let message = text(&task["error"]["message"]);
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(
        message.contains("label 'fail' asks for a failure"),
        "{message}"
    );
    // The database is released in its prior state either way.
    let again = app
        .call("DescribeDatabases", &[("databaseIds.0", &ids[1])])
        .await;
    assert_eq!(again["databaseSet"][0]["state"], "AVAILABLE", "{again}");

    // Parameters are checked as declared.
    let bad = backup(&app, &refs[..1], &"x".repeat(41), dest).await;
    assert_eq!(bad["code"], 4000, "{bad}");
    assert!(
        text(&bad["message"]).contains("parameter label must be at most 40 characters"),
        "{bad}"
    );
}

#[tokio::test]
async fn an_invalid_catalog_stops_the_start_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "preconditions = [\"AVAILABLE\"]",
        "preconditions = [\"READY\"]",
    );
    std::fs::write(&broken, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l == "[actions.BackupDatabases]")
        .unwrap()
        + 1;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_qtask"))
            .args(args)
            .arg(&broken)
            .env("QTASK_LOG", "warn")
            .output()
            .expect("qtask runs")
    };
    for output in [
        run(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
            "--catalog",
        ]),
        run(&["catalog", "check"]),
    ] {
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("broken.toml:{line}:1: action BackupDatabases: precondition \"READY\" is not a state of database")),
            "{stderr}"
        );
    }
    let good = Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args(["catalog", "check"])
        .arg(example())
        .output()
        .unwrap();
    assert!(good.status.success());
    assert!(String::from_utf8_lossy(&good.stdout).contains("BackupDatabases"));
}
