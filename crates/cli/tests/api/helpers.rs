//! The one way tests start a server: [`TestApp::spawn`] runs the real binary with a
//! fresh data directory on ephemeral ports and returns signed clients for it.

#![allow(dead_code)]

use qtask::client::{Client, ClientConfig};
use qtask_protocol::signature::{HttpMethod, SignatureMethod};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestApp {
    child: Child,
    pub data_dir: PathBuf,
    /// The server's PostgreSQL schema when the tests run on PostgreSQL.
    pub database: Option<std::sync::Arc<qtask_store_postgres::testing::ScratchSchema>>,
    /// Keeps the directory alive; `None` when the caller owns it.
    _dir: Option<tempfile::TempDir>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub secret_id: String,
    pub secret_key: String,
    /// Every stdout line the server printed so far.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    extra_args: Vec<String>,
}

impl TestApp {
    /// A server with instant simulated tasks.
    pub async fn spawn() -> Self {
        Self::spawn_with(&["--sim-speed", "0"]).await
    }

    pub async fn spawn_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        let database =
            qtask_store_postgres::testing::scratch_if_postgres().map(std::sync::Arc::new);
        let mut app = Self::start(&data_dir, database, args);
        app._dir = Some(dir);
        app
    }

    /// A server on SQLite whatever the tests' backend: for checks of the SQLite file
    /// itself (what a copy of it reveals, a backup of it).
    pub async fn spawn_on_sqlite(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        let mut app = Self::start(&data_dir, None, args);
        app._dir = Some(dir);
        app
    }

    /// A node of a cluster: a server with its own data directory on `database`, which
    /// other nodes share. `credentials` (another node's credentials file) makes this
    /// node's clients sign with that node's key; without it the node must be the first.
    pub fn spawn_node(
        database: std::sync::Arc<qtask_store_postgres::testing::ScratchSchema>,
        credentials: Option<&Path>,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        if let Some(from) = credentials {
            qtask::credentials::create_private_dir(&data_dir).expect("the data directory");
            std::fs::copy(from, qtask::credentials::path(&data_dir)).expect("the credentials");
        }
        let mut app = Self::start(&data_dir, Some(database), args);
        app._dir = Some(dir);
        app
    }

    /// The environment that points a `qtask` command at this server's store.
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        database_env(self.database.as_deref())
    }

    fn start(
        data_dir: &Path,
        database: Option<std::sync::Arc<qtask_store_postgres::testing::ScratchSchema>>,
        args: &[&str],
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qtask"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
            .args(args)
            .envs(database_env(database.as_deref()))
            .env("QTASK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the qtask binary starts");
        let output = wait_ready(&mut child);
        let lines = output.lock().unwrap().clone();
        let address = |scheme: &str| listening_address(&lines, scheme);
        let (secret_id, secret_key) = qtask::credentials::read(&qtask::credentials::path(data_dir))
            .expect("the first start writes credentials");
        Self {
            child,
            data_dir: data_dir.to_owned(),
            database,
            _dir: None,
            http: address("http"),
            https: address("https"),
            secret_id,
            secret_key,
            output,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A client for the plain HTTP listener: GET, HmacSHA256.
    pub fn client(&self) -> Client {
        self.client_with(HttpMethod::Get, SignatureMethod::HmacSha256)
    }

    pub fn client_with(&self, method: HttpMethod, signature_method: SignatureMethod) -> Client {
        self.client_for(&self.secret_id, &self.secret_key, method, signature_method)
    }

    pub fn client_for(
        &self,
        secret_id: &str,
        secret_key: &str,
        method: HttpMethod,
        signature_method: SignatureMethod,
    ) -> Client {
        Client::new(ClientConfig {
            endpoint: format!("http://{}", self.http),
            secret_id: secret_id.to_owned(),
            secret_key: secret_key.to_owned(),
            region: "ap-guangzhou".into(),
            method,
            signature_method,
            ca_file: None,
        })
        .expect("a client")
    }

    /// A client for the HTTPS listener that trusts only the generated CA.
    pub fn https_client(&self) -> Client {
        Client::new(ClientConfig {
            endpoint: format!("https://{}", self.https),
            secret_id: self.secret_id.clone(),
            secret_key: self.secret_key.clone(),
            region: "ap-guangzhou".into(),
            method: HttpMethod::Post,
            signature_method: SignatureMethod::HmacSha1,
            ca_file: Some(self.ca_file()),
        })
        .expect("a client")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.crt")
    }

    /// Whether the server printed a line starting with `prefix`.
    pub fn printed(&self, prefix: &str) -> bool {
        self.output
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    }

    /// One signed call with the default client.
    pub async fn call(&self, action: &str, params: &[(&str, &str)]) -> Value {
        self.client()
            .call(
                action,
                params.iter().map(|(n, v)| (n.to_string(), v.to_string())),
            )
            .await
            .expect("the server answers")
    }

    /// Polls DescribeTaskResult until the task or chain is final; returns its `data`.
    pub async fn wait_final(&self, request_id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = self
                .call("DescribeTaskResult", &[("requestId", request_id)])
                .await;
            assert_eq!(
                answer["code"], 0,
                "DescribeTaskResult {request_id}: {answer}"
            );
            if answer["data"]["status"] != 2 {
                return answer["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {request_id} is not final after {DEADLINE:?}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates `count` running instances named `name` and waits until they run.
    pub async fn create_instances(&self, count: usize, name: &str) -> Vec<String> {
        let count_text = count.to_string();
        let answer = self
            .call(
                "RunInstances",
                &[("goodsNum", &count_text), ("instanceName", name)],
            )
            .await;
        assert_eq!(answer["code"], 0, "RunInstances: {answer}");
        let data = self.wait_final(answer["requestId"].as_str().unwrap()).await;
        assert_eq!(data["state"], "SUCCESS", "RunInstances: {data}");
        answer["instanceIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_owned())
            .collect()
    }

    /// The instance as DescribeInstances shows it.
    pub async fn instance(&self, id: &str) -> Value {
        let answer = self
            .call("DescribeInstances", &[("instanceIds.0", id)])
            .await;
        assert_eq!(answer["code"], 0, "DescribeInstances: {answer}");
        assert_eq!(answer["totalCount"], 1, "DescribeInstances {id}: {answer}");
        answer["instanceSet"][0].clone()
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`…) without waiting for its effect.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "qtask did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the process is reaped");
    }

    /// SIGTERM, then waits for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Starts the server again on the same data directory (after kill or terminate),
    /// with the same arguments unless `args` is given.
    pub fn restart(&mut self, args: Option<&[&str]>) {
        let args: Vec<String> = match args {
            Some(args) => args.iter().map(|s| s.to_string()).collect(),
            None => self.extra_args.clone(),
        };
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = self._dir.take();
        let fresh = Self::start(&self.data_dir, self.database.clone(), &arg_refs);
        let old = std::mem::replace(self, fresh);
        drop(old);
        self._dir = dir;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- General-purpose waits and fixtures (added for the task and durability tests) ----

/// Nodes of one deployment on PostgreSQL, for the multi-node tests: a scratch schema of
/// `QTASK_TEST_DATABASE_URL`, one master key for all (nodes must share it), and `count`
/// nodes started with `args`; the first creates the credentials every node signs with.
/// Blocking: call it inside `block_in_place` on a multi-threaded runtime.
pub struct Cluster {
    pub schema: std::sync::Arc<qtask_store_postgres::testing::ScratchSchema>,
    pub nodes: Vec<TestApp>,
    /// `--master-key-file` and the key file every node was given.
    pub key_args: [String; 2],
    _work: tempfile::TempDir,
}

impl Cluster {
    pub fn start(count: usize, args: &[&str]) -> Self {
        use qtask_store_postgres::testing::{test_database_url, ScratchSchema, TEST_DATABASE_ENV};
        let base = test_database_url()
            .unwrap_or_else(|| panic!("{TEST_DATABASE_ENV} is not set (scripts/test sets it)"));
        let schema = std::sync::Arc::new(ScratchSchema::create(&base));
        let work = tempfile::tempdir().expect("a temporary directory");
        let master_key = work.path().join("master.key");
        std::fs::write(&master_key, qtask_store_sql::MasterKey::generate().unwrap()).unwrap();
        std::fs::set_permissions(
            &master_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let key_args = [
            "--master-key-file".to_owned(),
            master_key.display().to_string(),
        ];
        let mut all: Vec<&str> = args.to_vec();
        all.extend(key_args.iter().map(String::as_str));
        let mut nodes: Vec<TestApp> = Vec::new();
        for _ in 0..count {
            let credentials = nodes
                .first()
                .map(|first| qtask::credentials::path(&first.data_dir));
            let node =
                TestApp::spawn_node(std::sync::Arc::clone(&schema), credentials.as_deref(), &all);
            nodes.push(node);
        }
        Self {
            schema,
            nodes,
            key_args,
            _work: work,
        }
    }
}

/// `QTASK_DATABASE` for a server's (or a command's) store: its scratch schema, or SQLite.
pub fn database_env(
    database: Option<&qtask_store_postgres::testing::ScratchSchema>,
) -> Vec<(&'static str, String)> {
    let url = database.map_or_else(|| "sqlite".to_owned(), |schema| schema.url());
    vec![("QTASK_DATABASE", url)]
}

/// Waits for `child` to exit, at most `deadline`; kills it and answers `None` past it.
pub async fn wait_child(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` every 20 ms until it yields `Some`, failing the test after [`DEADLINE`].
/// `what` says what is awaited, for the failure message.
pub async fn wait_for<T>(
    what: impl std::fmt::Display,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {DEADLINE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestApp {
    /// Polls DescribeInstances until the instance's `statusName` is `state`; returns it.
    pub async fn wait_instance_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let instance = self.instance(id).await;
            if instance["statusName"] == state {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} is not {state} after {DEADLINE:?}: {instance}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until a stdout line starting with `prefix` was printed; returns that line.
    pub async fn wait_output(&self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let lines = self.output.lock().unwrap().clone();
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line starting {prefix:?} after {DEADLINE:?}: {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates an API key for `account` (a new account unless it exists) with the CLI
    /// `qtask keys create`; returns (SecretId, SecretKey).
    pub fn create_key(&self, account: &str) -> (String, String) {
        let stdout = qtask_keys(self, &["create", "--account", account]);
        let field = |label: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {label} line in {stdout}"))
        };
        (field("SecretId:"), field("SecretKey:"))
    }

    /// One signed call with an explicit client (another key, region or method).
    pub async fn call_with(client: &Client, action: &str, params: &[(&str, &str)]) -> Value {
        client
            .call(
                action,
                params.iter().map(|(n, v)| (n.to_string(), v.to_string())),
            )
            .await
            .expect("the server answers")
    }
}

// ---- Calls and fixtures shared by the task and engine tests ----

/// `name.0=ids[0]`, `name.1=ids[1]`, ... followed by `extra`.
pub fn list_params(name: &str, ids: &[&str], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (format!("{name}.{i}"), id.to_string()))
        .chain(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())))
        .collect()
}

/// A task-chain call on `ids` (parameter `instanceIds`).
pub async fn chain(app: &TestApp, action: &str, ids: &[&str], extra: &[(&str, &str)]) -> Value {
    app.client()
        .call(action, list_params("instanceIds", ids, extra))
        .await
        .expect("the server answers")
}

/// The task ID a chain answer's detail gives `id`.
pub fn detail_task(answer: &Value, id: &str) -> String {
    let entry = &answer["detail"][id];
    assert_eq!(entry["code"], 0, "detail of {id}: {answer}");
    let task = entry["requestId"].as_str().unwrap_or_default().to_owned();
    assert!(
        !task.is_empty(),
        "detail of {id} has no requestId: {answer}"
    );
    task
}

pub fn text(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
}

/// A server at `speed` with `names.len()` running instances, one per name. The
/// instances are created at speed 0 and the server restarted at `speed`, so tests of
/// slow tasks do not wait for slow creations.
pub async fn slow_app(speed: &str, names: &[&str]) -> (TestApp, Vec<String>) {
    app_with(names, &["--sim-speed", speed]).await
}

/// A configuration file for `qtask serve --config`, deleted with the returned value.
pub fn config_file(toml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("a temporary file");
    std::fs::write(file.path(), toml).expect("the config file is written");
    file
}

/// A server restarted with `args` over instances created at speed 0, one per name
/// (like [`slow_app`], with any arguments).
pub async fn app_with(names: &[&str], args: &[&str]) -> (TestApp, Vec<String>) {
    let mut app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for name in names {
        ids.extend(app.create_instances(1, name).await);
    }
    app.kill();
    app.restart(Some(args));
    (app, ids)
}

// ---- Key management (the hardening tests) ----

/// Runs `qtask keys ARGS --data-dir DATA_DIR` beside the running server.
pub fn run_keys(app: &TestApp, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qtask"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(&app.data_dir)
        .envs(app.store_env())
        .env("QTASK_LOG", "warn")
        .output()
        .expect("qtask keys runs")
}

/// Runs `qtask keys ARGS` and expects it to succeed; returns stdout.
pub fn qtask_keys(app: &TestApp, args: &[&str]) -> String {
    let output = run_keys(app, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "qtask keys {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Creates a key for `account` with `qtask keys create` and its restriction flags;
/// returns a client signing with it and its SecretId.
pub fn restricted_client(app: &TestApp, account: &str, flags: &[&str]) -> (Client, String) {
    let mut args = vec!["create", "--account", account];
    args.extend_from_slice(flags);
    let stdout = qtask_keys(app, &args);
    let field = |label: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {label} line in {stdout}"))
    };
    let (secret_id, secret_key) = (field("SecretId:"), field("SecretKey:"));
    let client = app.client_for(
        &secret_id,
        &secret_key,
        HttpMethod::Get,
        SignatureMethod::HmacSha256,
    );
    (client, secret_id)
}

/// Asserts an error answer's code, codeDesc and message fragments.
#[track_caller]
pub fn assert_code(answer: &Value, code: u64, code_desc: &str, fragments: &[&str]) {
    assert_eq!(answer["code"], code, "{answer}");
    assert_eq!(answer["codeDesc"], code_desc, "{answer}");
    let message = text(&answer["message"]);
    for fragment in fragments {
        assert!(message.contains(fragment), "no {fragment:?} in {answer}");
    }
}

/// Collects a starting server's stdout lines and waits until it prints `Ready.`;
/// kills it and fails the test if it does not within [`DEADLINE`].
pub fn wait_ready(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let ready = line.starts_with("Ready.");
                output.lock().unwrap().push(line);
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
    }
    if ready_rx.recv_timeout(DEADLINE).is_err() {
        let _ = child.kill();
        panic!(
            "qtask did not become ready; it printed: {:?}",
            output.lock().unwrap()
        );
    }
    output
}

/// The address a server printed for `scheme` ("Listening on http://…").
pub fn listening_address(lines: &[String], scheme: &str) -> SocketAddr {
    let prefix = format!("Listening on {scheme}://");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {scheme} address in {lines:?}"))
}
