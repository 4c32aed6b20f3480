//! The `exec` executor against real programs (sh scripts written to a temp dir: the
//! executor runs them directly, the scripts themselves use sh).

mod common;

use common::{claimed_task, expected_document, wait_until};
use qtask_engine::executor::{ExecError, Executor};
use qtask_executors::{ExecExecutor, ExecSettings, INHERITED_ENV};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// Long enough for any process to die after SIGKILL on a loaded machine.
const DEATH_DEADLINE: Duration = Duration::from_secs(10);

/// A temp dir holding one script, run with `WORK` set to the dir (where the scripts
/// leave their PIDs and whatever the test inspects).
struct Script {
    dir: TempDir,
    path: PathBuf,
}

impl Script {
    fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("action.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir, path }
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }

    fn settings(&self) -> ExecSettings {
        ExecSettings {
            command: vec![self.path.to_str().unwrap().to_owned()],
            env: BTreeMap::from([("WORK".to_owned(), self.work().display().to_string())]),
            ..ExecSettings::default()
        }
    }

    fn executor(&self) -> ExecExecutor {
        ExecExecutor::new(self.settings())
    }

    async fn run(&self) -> Result<Option<Value>, ExecError> {
        self.executor()
            .execute(&claimed_task(json!({})), &CancellationToken::new())
            .await
    }

    /// A PID the script wrote to `$WORK/<name>`, once it is there.
    async fn pid(&self, name: &str) -> i32 {
        let path = self.work().join(name);
        wait_until(
            DEATH_DEADLINE,
            &format!("the script wrote {name}"),
            || async { std::fs::read_to_string(&path).is_ok_and(|text| text.ends_with('\n')) },
        )
        .await;
        std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Writes the script's process group and a background grandchild's PID, then waits.
const LEAVES_A_GRANDCHILD: &str = r#"
echo $$ > "$WORK/pgid"
sleep 1000 &
echo $! > "$WORK/grandchild"
wait
"#;

/// Processes of group `pgid` that still run (zombies do not: they wait to be reaped,
/// which is up to their parent, or to init for the reparented grandchild).
fn live_members(pgid: i32) -> Vec<i32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        let (state, group) = (fields[0], fields[2].parse::<i32>().unwrap());
        if group == pgid && !matches!(state, "Z" | "X") {
            live.push(pid);
        }
    }
    live
}

async fn assert_group_dies(pgid: i32) {
    wait_until(
        DEATH_DEADLINE,
        &format!("process group {pgid} is gone"),
        || async { live_members(pgid).is_empty() },
    )
    .await;
}

fn message(error: ExecError) -> String {
    match error {
        ExecError::Retryable(error) | ExecError::Fatal(error) => error.message,
        ExecError::Canceled(message) => message,
    }
}

#[tokio::test]
async fn success_returns_the_last_json_object_line_of_stdout() {
    let script = Script::new(
        r#"
echo starting
echo '{"partial": true}'
echo "working on $QTASK_RESOURCE_ID" >&2
echo 100
echo '{"backupId": "bk-1", "sizeBytes": 3}'
echo done
"#,
    );
    let result = script.run().await.unwrap();
    assert_eq!(result, Some(json!({"backupId": "bk-1", "sizeBytes": 3})));
}

#[tokio::test]
async fn success_without_a_json_line_has_no_result() {
    let script = Script::new("echo all good; echo 42");
    assert_eq!(script.run().await.unwrap(), None);
}

#[tokio::test]
async fn exit_75_is_retryable_and_quotes_stderr() {
    let script = Script::new("echo 'database is locked' >&2; exit 75");
    let Err(ExecError::Retryable(error)) = script.run().await else {
        panic!("exit 75 must be retryable");
    };
    assert_eq!(error.code, 5100);
    assert!(
        error.message.contains("exited with code 75"),
        "{}",
        error.message
    );
    assert!(
        error.message.ends_with(": database is locked"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn another_exit_is_fatal_with_the_end_of_stderr() {
    let script = Script::new(
        r#"
i=0
while [ $i -lt 100 ]; do echo "noise line $i" >&2; i=$((i+1)); done
printf 'disk full\n\n' >&2
exit 3
"#,
    );
    let Err(ExecError::Fatal(error)) = script.run().await else {
        panic!("exit 3 must be fatal");
    };
    let program = script.path.display().to_string();
    let prefix = format!("{program} exited with code 3: …");
    assert!(error.message.starts_with(&prefix), "{}", error.message);
    assert!(
        error.message.ends_with("noise line 99\ndisk full"),
        "{}",
        error.message
    );
    let tail = &error.message[prefix.len()..];
    assert_eq!(
        tail.chars().count(),
        500,
        "the last 500 characters of stderr"
    );
}

/// A program file open for writing cannot be run (`ETXTBSY`): the executor tries again
/// for a moment. (A parallel test's fork can hold such a descriptor for an instant; this
/// test holds one for 50 ms.)
#[tokio::test]
async fn a_program_busy_for_a_moment_runs_once_it_is_free() {
    let script = Script::new(r#"echo '{"ran": true}'"#);
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&script.path)
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(writer);
    });
    assert_eq!(script.run().await.unwrap(), Some(json!({"ran": true})));
    release.await.unwrap();
}

#[tokio::test]
async fn a_failure_without_stderr_says_so() {
    let script = Script::new("exit 1");
    let error = message(script.run().await.unwrap_err());
    assert!(
        error.ends_with("exited with code 1 (nothing on stderr)"),
        "{error}"
    );
}

#[tokio::test]
async fn death_by_signal_is_fatal_and_named() {
    let script = Script::new("echo 'about to crash' >&2; kill -KILL $$");
    let Err(ExecError::Fatal(error)) = script.run().await else {
        panic!("a signal must be fatal");
    };
    assert!(
        error
            .message
            .contains("was killed by signal 9 (SIGKILL): about to crash"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_task_arrives_on_stdin_verbatim_and_nothing_in_it_runs() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("pwned");
    let marker_text = marker.display().to_string();
    let params = json!({
        "name": format!("$(touch {marker_text})"),
        "backtick": format!("`touch {marker_text}`"),
        "chained": format!("x; touch {marker_text}; rm -rf {marker_text}.dir"),
        "quotes": "it's \"quoted\" \\ and 'single'",
        "lines": "first\nsecond\r\nthird",
        "glob": "*",
        "list": ["|", "&&", ">", "$HOME"],
    });
    let script = Script::new(r#"cat > "$WORK/stdin.json""#);
    script
        .executor()
        .execute(&claimed_task(params.clone()), &CancellationToken::new())
        .await
        .unwrap();

    let stdin = std::fs::read_to_string(script.work().join("stdin.json")).unwrap();
    assert_eq!(stdin.lines().count(), 1, "one JSON line: {stdin:?}");
    let document: Value = serde_json::from_str(&stdin).unwrap();
    assert_eq!(document, expected_document(params));
    assert!(!marker.exists(), "a parameter was executed");
}

#[tokio::test]
async fn the_environment_has_the_task_the_settings_and_little_else() {
    let script = Script::new(r#"env > "$WORK/env""#);
    let mut settings = script.settings();
    settings
        .env
        .insert("BACKUP_BUCKET".into(), "s3://backups".into());
    settings.env.insert("QTASK_ACTION".into(), "Spoofed".into());
    ExecExecutor::new(settings)
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
        .unwrap();

    let env: BTreeMap<String, String> = std::fs::read_to_string(script.work().join("env"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    for (name, value) in [
        ("QTASK_REQUEST_ID", "42"),
        ("QTASK_ATTEMPT", "2"),
        ("QTASK_ACTION", "BackupDatabases"),
        ("QTASK_RESOURCE_ID", "db-1a2b3c4d"),
        ("QTASK_REGION", "ap-guangzhou"),
        ("QTASK_ACCOUNT", "1001"),
        ("BACKUP_BUCKET", "s3://backups"),
    ] {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
    // What sh itself sets, beside what the executor passes.
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let allowed: BTreeSet<&str> = INHERITED_ENV
        .into_iter()
        .chain(shell_own)
        .chain(["WORK", "BACKUP_BUCKET"])
        .collect();
    let unexpected: Vec<&String> = env
        .keys()
        .filter(|name| !name.starts_with("QTASK_") && !allowed.contains(name.as_str()))
        .collect();
    assert!(
        std::env::var_os("CARGO_MANIFEST_DIR").is_some(),
        "the test runs with cargo's variables, which must not leak"
    );
    assert!(
        unexpected.is_empty(),
        "leaked into the program: {unexpected:?}"
    );
}

#[tokio::test]
async fn the_working_directory_is_the_configured_one() {
    let script = Script::new(r#"pwd > "$WORK/pwd""#);
    let elsewhere = tempfile::tempdir().unwrap();
    let mut settings = script.settings();
    settings.working_dir = Some(elsewhere.path().to_owned());
    ExecExecutor::new(settings)
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
        .unwrap();
    let pwd = std::fs::read_to_string(script.work().join("pwd")).unwrap();
    assert_eq!(
        Path::new(pwd.trim()).canonicalize().unwrap(),
        elsewhere.path().canonicalize().unwrap()
    );
}

#[tokio::test]
async fn a_timeout_that_drops_the_attempt_kills_the_whole_group() {
    let script = Script::new(LEAVES_A_GRANDCHILD);
    let executor = script.executor();
    let task = claimed_task(json!({}));
    let cancel = CancellationToken::new();
    let attempt = executor.execute(&task, &cancel);
    let mut started = None;
    // The engine's action timeout, as the engine applies it: by dropping the future.
    let timed_out = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(attempt, async {
            let grandchild = script.pid("grandchild").await;
            started = Some((script.pid("pgid").await, pgid_of(grandchild)));
        })
    })
    .await;
    assert!(timed_out.is_err(), "the script waits for a sleep of 1000 s");
    let (pgid, grandchild_group) = started.expect("the script started within the timeout");
    assert_eq!(
        grandchild_group,
        Some(pgid),
        "the grandchild is in the group"
    );
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn cancel_terminates_the_group_and_reports_canceled() {
    let script = Script::new(LEAVES_A_GRANDCHILD);
    let cancel = CancellationToken::new();
    let task = claimed_task(json!({}));
    let executor = script.executor();
    let (outcome, pgid) = tokio::join!(executor.execute(&task, &cancel), async {
        script.pid("grandchild").await;
        cancel.cancel();
        script.pid("pgid").await
    });
    let Err(ExecError::Canceled(message)) = outcome else {
        panic!("a canceled attempt must say so: {outcome:?}");
    };
    assert!(message.ends_with("stopped on SIGTERM"), "{message}");
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn cancel_kills_a_group_that_ignores_sigterm_after_the_grace() {
    let script = Script::new(&format!("trap '' TERM\n{LEAVES_A_GRANDCHILD}"));
    let cancel = CancellationToken::new();
    let task = claimed_task(json!({}));
    let executor = script
        .executor()
        .with_cancel_grace(Duration::from_millis(200));
    let (outcome, pgid) = tokio::join!(executor.execute(&task, &cancel), async {
        script.pid("grandchild").await;
        cancel.cancel();
        script.pid("pgid").await
    });
    let Err(ExecError::Canceled(message)) = outcome else {
        panic!("a canceled attempt must say so: {outcome:?}");
    };
    assert!(
        message.ends_with("ignored SIGTERM for 200ms and was killed"),
        "{message}"
    );
    assert_group_dies(pgid).await;
}

#[tokio::test]
async fn what_a_successful_program_leaves_behind_is_killed() {
    // The background sleep keeps stdout open: the attempt must still end, and the
    // sleep with it.
    let script = Script::new(
        r#"
echo $$ > "$WORK/pgid"
sleep 1000 &
echo '{"started": true}'
"#,
    );
    let result = tokio::time::timeout(DEATH_DEADLINE, script.run())
        .await
        .expect("the attempt ends when the program does");
    assert_eq!(result.unwrap(), Some(json!({"started": true})));
    assert_group_dies(script.pid("pgid").await).await;
}

#[tokio::test]
async fn a_missing_program_is_fatal() {
    let executor = ExecExecutor::new(ExecSettings {
        command: vec!["/nonexistent/qtask-no-such-program".into(), "--flag".into()],
        ..ExecSettings::default()
    });
    let Err(ExecError::Fatal(error)) = executor
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
    else {
        panic!("a missing program must be fatal");
    };
    assert_eq!(
        error.message,
        "cannot run /nonexistent/qtask-no-such-program: program not found"
    );
}

#[tokio::test]
async fn a_program_that_is_not_executable_is_fatal() {
    let script = Script::new("exit 0");
    std::fs::set_permissions(&script.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = script.run().await.unwrap_err();
    assert!(matches!(error, ExecError::Fatal(_)), "{error:?}");
    assert!(message(error).ends_with("permission denied (is it executable?)"));
}

#[tokio::test]
async fn a_missing_working_directory_is_named() {
    let script = Script::new("exit 0");
    let mut settings = script.settings();
    settings.working_dir = Some(script.work().join("absent"));
    let error = ExecExecutor::new(settings)
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Fatal(_)), "{error:?}");
    assert!(message(error).ends_with("/absent does not exist"));
}

#[tokio::test]
async fn an_empty_command_is_fatal() {
    let error = ExecExecutor::new(ExecSettings::default())
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(error, ExecError::Fatal(_)), "{error:?}");
}

/// The process group of `pid`, while it exists.
fn pgid_of(pid: i32) -> Option<i32> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .ok()
        .map(|pgid| pgid.as_raw())
}
