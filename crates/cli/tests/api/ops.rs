//! Operations: `/healthz` and `/readyz`, the Prometheus `/metrics`, structured logs
//! with the requestId of calls and tasks, and secrets kept out of the logs.

use crate::helpers::*;
use qtask::client::{Client, ClientConfig};
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// GET `path` on the plain HTTP listener; the status and the body.
async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    let response = reqwest::get(format!("http://{address}{path}")).await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

// ---- /healthz and /readyz ----

#[tokio::test]
async fn readyz_is_503_while_draining_and_healthz_stays_200() {
    // StopInstances takes 8 s; the grace period keeps the server draining for 5 s.
    let (mut app, ids) = app_with(&["ready"], &["--sim-speed", "1", "--shutdown-grace", "5"]).await;
    assert_eq!(
        http_get(app.http, "/readyz").await.unwrap(),
        (200, "ready\n".to_owned())
    );
    let stop = chain(&app, "StopInstances", &[&ids[0]], &[]).await;
    let task = detail_task(&stop, &ids[0]);
    wait_for("the task to run", async || {
        let answer = app
            .call("DescribeTaskResult", &[("requestId", &task)])
            .await;
        (answer["data"]["state"] == "RUNNING").then_some(())
    })
    .await;

    app.signal("TERM");
    let (_, reason) = wait_for("/readyz to answer 503", async || {
        match http_get(app.http, "/readyz").await {
            Ok((503, body)) => Some((503, body)),
            Ok((200, _)) => None,
            Ok(other) => panic!("/readyz answered {other:?}"),
            Err(error) => panic!("the listener closed before /readyz said 503: {error}"),
        }
    })
    .await;
    assert!(reason.starts_with("draining"), "{reason:?}");
    assert_eq!(
        http_get(app.http, "/healthz").await.unwrap(),
        (200, "ok\n".to_owned()),
        "alive while draining"
    );
    let refused = app.call("DescribeInstances", &[]).await;
    assert_eq!(refused["code"], 6200, "{refused}");
    let metrics = scrape(app.http).await;
    assert_eq!(
        metrics.value(
            "qtask_api_calls_total",
            &[("action", "unknown"), ("code", "6200")]
        ),
        Some(1.0),
        "a call refused while draining is counted"
    );
    assert!(app.wait_exit().success());
}

// ---- /metrics ----

/// A parsed OpenMetrics text exposition: each sample by name and sorted labels.
pub(crate) struct Exposition {
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
}

impl Exposition {
    /// Parses `text`, checking what Prometheus relies on: every sample belongs to the
    /// family its `# TYPE` line declared, names and labels are well formed, values are
    /// numbers, no sample repeats, and `# EOF` ends the text.
    fn parse(text: &str) -> Result<Self, String> {
        let mut samples = HashMap::new();
        let mut family: Option<(String, String)> = None;
        let mut lines = text.lines().enumerate().peekable();
        let mut ended = false;
        while let Some((number, line)) = lines.next() {
            let at = |message: String| format!("line {}: {message}: {line:?}", number + 1);
            if line == "# EOF" {
                ended = lines.peek().is_none();
                if !ended {
                    return Err(at("# EOF before the end".into()));
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
                let name = name
                    .filter(|n| is_metric_name(n))
                    .ok_or_else(|| at("bad name".into()))?;
                match (keyword, rest) {
                    (Some("TYPE"), Some(kind)) => {
                        let known = [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "summary",
                            "unknown",
                        ];
                        if !known.contains(&kind) {
                            return Err(at(format!("unknown type {kind}")));
                        }
                        family = Some((name.to_owned(), kind.to_owned()));
                    }
                    (Some("HELP"), Some(_)) | (Some("UNIT"), Some(_)) => {}
                    _ => return Err(at("unknown comment".into())),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                number => number
                    .parse()
                    .map_err(|_| at("value is not a number".into()))?,
            };
            let (name, labels) = parse_series(series).map_err(at)?;
            let Some((family_name, kind)) = &family else {
                return Err(at("a sample before any # TYPE".into()));
            };
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            if !suffixes.iter().any(|s| name == format!("{family_name}{s}")) {
                return Err(at(format!("not a sample of the {kind} {family_name}")));
            }
            if samples.insert((name, labels), value).is_some() {
                return Err(at("a repeated sample".into()));
            }
        }
        if !ended {
            return Err("no # EOF at the end".into());
        }
        Ok(Self { samples })
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// The value, 0 when the series does not exist yet (a counter not touched).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every label value `label` takes in the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples
            .keys()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, labels)| labels.get(label).cloned())
            .collect()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name` or `name{label="value",…}`, with `\\`, `\"` and `\n` escapes in values.
fn parse_series(series: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let Some((name, rest)) = series.split_once('{') else {
        return is_metric_name(series)
            .then(|| (series.to_owned(), BTreeMap::new()))
            .ok_or_else(|| "bad metric name".into());
    };
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return if after.is_empty() {
                Ok((name.to_owned(), labels))
            } else {
                Err("text after the labels".into())
            };
        }
        let (label, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
        if !is_metric_name(label) || label.contains(':') {
            return Err(format!("bad label name {label:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(label.to_owned(), value).is_some() {
            return Err(format!("label {label} twice"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

pub(crate) async fn scrape(address: SocketAddr) -> Exposition {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    Exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn the_exposition_check_refuses_what_prometheus_would() {
    let good = "# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\"} 2\n# EOF\n";
    assert_eq!(
        Exposition::parse(good)
            .unwrap()
            .value("a_total", &[("y", "q\""), ("x", "1")]),
        Some(2.0)
    );
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\nb_total 1\n# EOF\n",
        "a 1\n# EOF\n",
        "# TYPE a gauge\na{x=\"1} 1\n# EOF\n",
        "# TYPE a gauge\na one\n# EOF\n",
        "# TYPE a gauge\na 1\na 2\n# EOF\n",
        "# TYPE a gauge\n# EOF\na 1\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
}

/// Scrapes until `ready` accepts the exposition (event counters follow the tasks a
/// moment later); returns it.
async fn scrape_until(
    address: SocketAddr,
    what: &str,
    ready: impl Fn(&Exposition) -> bool,
) -> Exposition {
    wait_for(what, async || {
        let exposition = scrape(address).await;
        ready(&exposition).then_some(exposition)
    })
    .await
}

#[tokio::test]
async fn metrics_parse_and_count_calls_chains_tasks_and_states() {
    let app = TestApp::spawn().await;
    let ok = app.create_instances(2, "fine").await;
    let bad = app.create_instances(1, "qtask-fail:StopInstances").await;
    let before = scrape(app.http).await;
    let stop_calls = [("action", "StopInstances"), ("code", "5400")];
    let succeeded = [("event", "succeeded"), ("action", "StopInstances")];
    let failed = [("event", "failed"), ("action", "StopInstances")];
    let ran_ok = [("action", "StopInstances"), ("outcome", "succeeded")];

    // Two accepted and succeeding, one accepted and failing, one refused: 5400.
    let answer = chain(
        &app,
        "StopInstances",
        &[&ok[0], &ok[1], &bad[0], "ins-00000000"],
        &[],
    )
    .await;
    assert_eq!(answer["code"], 5400, "{answer}");
    app.wait_final(text(&answer["requestId"])).await;
    let unknown = app.call("LaunchRockets", &[]).await;
    assert_ne!(unknown["code"], 0, "{unknown}");

    let after = scrape_until(app.http, "the task events to be counted", |m| {
        m.count("qtask_task_events_total", &succeeded) >= 2.0
            && m.count("qtask_task_events_total", &failed) >= 1.0
    })
    .await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    assert_eq!(moved("qtask_api_calls_total", &stop_calls), 1.0);
    assert_eq!(moved("qtask_chain_calls_total", &stop_calls), 1.0);
    assert_eq!(
        moved(
            "qtask_api_call_duration_seconds_count",
            &[("action", "StopInstances")]
        ),
        1.0
    );
    assert_eq!(moved("qtask_task_events_total", &succeeded), 2.0);
    assert_eq!(moved("qtask_task_events_total", &failed), 1.0);
    assert_eq!(
        moved(
            "qtask_task_events_total",
            &[("event", "started"), ("action", "StopInstances")]
        ),
        3.0
    );
    assert_eq!(
        moved("qtask_task_attempt_duration_seconds_count", &ran_ok),
        2.0
    );
    assert_eq!(
        after.value(
            "qtask_task_attempt_duration_seconds_bucket",
            &[
                ("action", "StopInstances"),
                ("outcome", "succeeded"),
                ("le", "+Inf")
            ]
        ),
        after.value("qtask_task_attempt_duration_seconds_count", &ran_ok),
        "the +Inf bucket holds every attempt"
    );
    assert_eq!(
        after.value("qtask_tasks", &[("state", "FAILED")]),
        Some(1.0)
    );
    assert_eq!(
        after.value("qtask_tasks", &[("state", "SUCCESS")]),
        Some(2.0 + 3.0),
        "two stops and the three creations"
    );
    assert_eq!(
        after.value("qtask_tasks", &[("state", "QUEUED")]),
        Some(0.0)
    );
    assert_eq!(after.value("qtask_queue_ready_tasks", &[]), Some(0.0));
    assert_eq!(
        after.value("qtask_queue_oldest_ready_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(after.value("qtask_duplicate_runs_total", &[]), Some(0.0));
    assert_eq!(
        after.value("qtask_fenced_completions_total", &[]),
        Some(0.0)
    );
    assert_eq!(after.value("qtask_rescued_tasks_total", &[]), Some(0.0));
    assert_eq!(after.value("qtask_store_up", &[]), Some(1.0));
    let unknown_code = unknown["code"].to_string();
    assert_eq!(
        moved(
            "qtask_api_calls_total",
            &[("action", "unknown"), ("code", &unknown_code)]
        ),
        1.0,
        "an action the catalog does not have is counted as unknown"
    );
    assert!(
        !after
            .label_values("qtask_api_calls_total", "action")
            .contains(&"LaunchRockets".to_owned()),
        "a client cannot invent label values"
    );
}

#[tokio::test]
async fn metrics_off_serves_no_metrics() {
    let app = TestApp::spawn_with(&["--sim-speed", "0", "--metrics", "off"]).await;
    assert_eq!(http_get(app.http, "/metrics").await.unwrap().0, 404);
    assert_eq!(http_get(app.http, "/readyz").await.unwrap().0, 200);
}

// ---- logs ----

/// A server whose stderr (its log) goes to a file the test reads.
struct LoggedServer {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl LoggedServer {
    /// `qtask serve` on `data_dir` with `QTASK_LOG=filter`, logging to `log`.
    fn start(data_dir: &Path, filter: &str, log: &Path, args: &[&str]) -> Self {
        let log_file = std::fs::File::create(log).expect("the log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_qtask"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--tls-listen", "off"])
            .args(args)
            .env("QTASK_LOG", filter)
            .env_remove("QTASK_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("the qtask binary starts");
        let lines = wait_ready(&mut child);
        let http = listening_address(&lines.lock().unwrap(), "http");
        Self {
            child,
            http,
            log: log.to_owned(),
            stdout: lines,
        }
    }

    fn client(&self, secret_id: &str, secret_key: &str, method: HttpMethod) -> Client {
        Client::new(ClientConfig {
            endpoint: format!("http://{}", self.http),
            secret_id: secret_id.to_owned(),
            secret_key: secret_key.to_owned(),
            region: "ap-guangzhou".into(),
            method,
            signature_method: SignatureMethod::HmacSha256,
            ca_file: None,
        })
        .expect("a client")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("the log file")
    }

    /// The log's lines, each parsed as a JSON object (panics on any other line).
    fn json_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(value) if value.is_object() => value,
                _ => panic!("a log line that is not a JSON object: {line:?}"),
            })
            .collect()
    }

    /// Waits for a JSON log line `accept` takes; returns it.
    async fn wait_json_line(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, async || self.json_lines().into_iter().find(&accept)).await
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    fn stop(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "qtask did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data directory with one API key made by `qtask keys create` (so the server never
/// prints a key itself); returns the directory, SecretId and SecretKey.
fn data_dir_with_key(dir: &Path) -> (PathBuf, String, String) {
    let data_dir = dir.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_qtask"))
        .args(["keys", "create", "--data-dir"])
        .arg(&data_dir)
        .env("QTASK_LOG", "warn")
        .output()
        .expect("qtask keys create runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "qtask keys create: {stdout}");
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {label} in {stdout}"))
    };
    (data_dir, field("SecretId:"), field("SecretKey:"))
}

async fn call(client: &Client, action: &str, params: &[(&str, &str)]) -> Value {
    client
        .call(
            action,
            params.iter().map(|(n, v)| (n.to_string(), v.to_string())),
        )
        .await
        .expect("the server answers")
}

/// Polls DescribeTaskResult until `id` is final.
async fn wait_final_with(client: &Client, id: &str) -> Value {
    wait_for(format!("task {id} to end"), async || {
        let answer = call(client, "DescribeTaskResult", &[("requestId", id)]).await;
        (answer["data"]["status"] != 2).then(|| answer["data"].clone())
    })
    .await
}

fn span_field<'a>(line: &'a Value, field: &str) -> &'a Value {
    &line["span"][field]
}

#[tokio::test]
async fn json_logs_carry_the_action_and_request_id_of_calls_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (data_dir, secret_id, secret_key) = data_dir_with_key(dir.path());
    let json = ["--log-format", "json"];
    let server = LoggedServer::start(
        &data_dir,
        "info",
        &dir.path().join("first.log"),
        &[&json[..], &["--sim-speed", "0"]].concat(),
    );
    let client = server.client(&secret_id, &secret_key, HttpMethod::Get);
    let created = call(
        &client,
        "RunInstances",
        &[("goodsNum", "2"), ("instanceName", "log")],
    )
    .await;
    wait_final_with(&client, text(&created["requestId"])).await;
    let ids: Vec<&str> = created["instanceIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let stop = client
        .call("StopInstances", list_params("instanceIds", &ids, &[]))
        .await
        .unwrap();
    let chain_id = text(&stop["requestId"]).to_owned();
    wait_final_with(&client, &chain_id).await;

    let call_line = server
        .wait_json_line("the StopInstances call's line", |line| {
            line["message"] == "call" && span_field(line, "action") == "StopInstances"
        })
        .await;
    assert_eq!(span_field(&call_line, "requestId"), chain_id.as_str());
    assert_eq!(call_line["level"], "INFO");
    assert!(call_line["timestamp"].is_string(), "{call_line}");
    for id in &ids {
        let task = detail_task(&stop, id);
        let line = server
            .wait_json_line("the task's outcome line", |line| {
                line["message"] == "task succeeded"
                    && span_field(line, "requestId") == task.as_str()
            })
            .await;
        assert_eq!(span_field(&line, "action"), "StopInstances", "{line}");
        assert_eq!(line["target"], "qtask::tasks", "{line}");
    }
    server.stop();

    // A worker's own lines (here: its lease lost while the process was frozen) are in
    // the task's span too. StartInstances takes 8 s; the lease 1 s.
    let server = LoggedServer::start(
        &data_dir,
        "info",
        &dir.path().join("second.log"),
        &[&json[..], &["--sim-speed", "1", "--lease", "1s"]].concat(),
    );
    let client = server.client(&secret_id, &secret_key, HttpMethod::Get);
    let start = client
        .call("StartInstances", list_params("instanceIds", &ids[..1], &[]))
        .await
        .unwrap();
    let task = detail_task(&start, ids[0]);
    wait_for("the start to run", async || {
        let answer = call(&client, "DescribeTaskResult", &[("requestId", &task)]).await;
        (answer["data"]["state"] == "RUNNING").then_some(())
    })
    .await;
    server.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.signal("CONT");
    let lost = server
        .wait_json_line("the worker's lost-lease line", |line| {
            line["message"] == "lost the lease; stopped the executor"
        })
        .await;
    assert_eq!(span_field(&lost, "requestId"), task.as_str(), "{lost}");
    assert_eq!(lost["level"], "WARN");
    // Every line is JSON (json_lines panics otherwise), including start-up lines.
    assert!(server.json_lines().len() > 2);
    assert!(
        server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("Ready.")),
        "stdout keeps the human start-up lines"
    );
}

#[tokio::test]
async fn logs_never_show_a_password_or_a_secret_key() {
    const PASSWORD: &str = "Canary-Pw-7f3a9Q";
    const BAD_PASSWORD: &str = "canarypwlowercaseonly";
    const WRONG_KEY: &str = "CanaryWrongSecretKey4c1d";
    let dir = tempfile::tempdir().unwrap();
    let (data_dir, secret_id, secret_key) = data_dir_with_key(dir.path());
    let server = LoggedServer::start(
        &data_dir,
        "debug",
        &dir.path().join("debug.log"),
        &["--sim-speed", "0"],
    );
    let get = server.client(&secret_id, &secret_key, HttpMethod::Get);
    let post = server.client(&secret_id, &secret_key, HttpMethod::Post);
    let created = call(
        &post,
        "RunInstances",
        &[("goodsNum", "1"), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(created["code"], 0, "{created}");
    wait_final_with(&get, text(&created["requestId"])).await;
    let id = text(&created["instanceIds"][0]).to_owned();
    let reset = call(
        &get,
        "ResetInstancePassword",
        &[("instanceIds.0", &id), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(reset["code"], 0, "{reset}");
    wait_final_with(&get, text(&reset["requestId"])).await;
    let refused = call(&post, "RunInstances", &[("password", BAD_PASSWORD)]).await;
    assert_eq!(
        refused["code"], 4000,
        "a password without three kinds of characters: {refused}"
    );
    let wrong = server.client(&secret_id, WRONG_KEY, HttpMethod::Get);
    let forged = call(&wrong, "DescribeInstances", &[]).await;
    assert_ne!(forged["code"], 0, "{forged}");
    server.stop_and_check(&[PASSWORD, BAD_PASSWORD, &secret_key, WRONG_KEY]);
}

impl LoggedServer {
    /// Stops the server, then checks its whole log and stdout: logged at debug, and
    /// none of `secrets` anywhere.
    fn stop_and_check(self, secrets: &[&str]) {
        let log_path = self.log.clone();
        let stdout = Arc::clone(&self.stdout);
        self.stop();
        let log = std::fs::read_to_string(log_path).unwrap();
        assert!(
            log.contains(" DEBUG ") && log.contains("call{"),
            "the run logged at debug: {log}"
        );
        let stdout = stdout.lock().unwrap().join("\n");
        for secret in secrets {
            assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
            assert!(
                !stdout.contains(secret),
                "stdout shows {secret:?}:\n{stdout}"
            );
        }
    }
}

// ---- backup ----

/// The backup docs/operations.md documents, through Python's sqlite3 (on every machine
/// that runs the tests; the `sqlite3` shell runs the same statement): `VACUUM INTO`
/// copies a consistent snapshot of the live WAL database, then the copy is checked.
const VACUUM_INTO: &str = "import sqlite3, sys
sqlite3.connect(sys.argv[1]).execute('VACUUM INTO ?', (sys.argv[2],))
print(sqlite3.connect(sys.argv[2]).execute('PRAGMA integrity_check').fetchone()[0])";

#[tokio::test]
async fn a_vacuum_into_backup_under_load_restores_every_acknowledged_task() {
    let app = TestApp::spawn_on_sqlite(&["--sim-speed", "0"]).await;
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let answer = app.call("RunInstances", &[("goodsNum", "2")]).await;
        assert_eq!(answer["code"], 0, "{answer}");
        acknowledged.push(text(&answer["requestId"]).to_owned());
    }
    // Keep submitting while the backup runs.
    let submitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let client = app.client();
        let submitted = Arc::clone(&submitted);
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                let answer = call(&client, "RunInstances", &[("goodsNum", "3")]).await;
                assert_eq!(answer["code"], 0, "{answer}");
                submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    wait_for("the load to run", async || {
        (submitted.load(std::sync::atomic::Ordering::Relaxed) >= 3).then_some(())
    })
    .await;

    let restored = tempfile::tempdir().unwrap();
    let data_dir = restored.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let backup = Command::new("python3")
        .args(["-c", VACUUM_INTO])
        .arg(app.data_dir.join("qtask.db"))
        .arg(data_dir.join("qtask.db"))
        .output()
        .expect("python3 runs");
    stop.cancel();
    load.await.unwrap();
    assert!(
        backup.status.success(),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&backup.stdout).trim(), "ok");
    // The SecretKeys in the copy open only with the data directory's master key.
    for file in ["credentials", "master.key"] {
        std::fs::copy(app.data_dir.join(file), data_dir.join(file)).unwrap();
    }

    let server = LoggedServer::start(
        &data_dir,
        "warn",
        &restored.path().join("restored.log"),
        &["--sim-speed", "0"],
    );
    let (secret_id, secret_key) =
        qtask::credentials::read(&data_dir.join("credentials")).expect("the copied credentials");
    let client = server.client(&secret_id, &secret_key, HttpMethod::Get);
    for id in &acknowledged {
        let data = wait_final_with(&client, id).await;
        assert_eq!(
            data["state"], "SUCCESS",
            "task {id} after the restore: {data}"
        );
    }
}
