//! A program that writes far more than is kept: alone in its test binary, so that the
//! process's peak memory measures this attempt only.

mod common;

use common::claimed_task;
use qtask_engine::executor::{ExecError, Executor};
use qtask_executors::{ExecExecutor, ExecSettings};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use tokio_util::sync::CancellationToken;

/// A whole number of the scripts' 16-byte lines.
const WRITTEN_PER_STREAM: usize = 64 * 1024 * 1024;

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn huge_output_on_both_streams_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chatty.sh");
    // Both streams at once: a reader that drained them one after the other would
    // deadlock on a full pipe.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             yes 'progress output' | head -c {WRITTEN_PER_STREAM} &\n\
             yes 'a warning line!' | head -c {WRITTEN_PER_STREAM} >&2 &\n\
             wait\n\
             echo '{{\"finished\": true}}'\n\
             echo 'the last words' >&2\n\
             exit 9\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let executor = ExecExecutor::new(ExecSettings {
        command: vec![script.display().to_string()],
        ..ExecSettings::default()
    });

    let before = peak_rss();
    let outcome = executor
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await;
    let growth = peak_rss().saturating_sub(before);

    let Err(ExecError::Fatal(error)) = outcome else {
        panic!("exit 9 must be fatal: {outcome:?}");
    };
    assert!(
        error.message.ends_with("a warning line!\nthe last words"),
        "{}",
        error.message
    );
    assert!(
        error.message.len() < 1000,
        "{} bytes of message",
        error.message.len()
    );
    assert!(
        growth < 16 * 1024 * 1024,
        "{growth} bytes more memory for {} bytes of output",
        2 * WRITTEN_PER_STREAM
    );
}

#[tokio::test]
async fn the_result_line_after_huge_output_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chatty.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             yes 'progress output' | head -c {WRITTEN_PER_STREAM}\n\
             echo '{{\"finished\": true}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let executor = ExecExecutor::new(ExecSettings {
        command: vec![script.display().to_string()],
        max_output_bytes: 1024,
        ..ExecSettings::default()
    });
    let result = executor
        .execute(&claimed_task(json!({})), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(result, Some(json!({"finished": true})));
}
