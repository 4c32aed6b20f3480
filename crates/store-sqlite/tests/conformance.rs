//! The store conformance suite (`qtask_store::conformance`) against the SQLite backend:
//! one test per behaviour, each on a fresh database in its own temporary directory.

use qtask_store::{conformance, conformance_tests};
use qtask_store_sqlite::SqliteStore;
use std::path::Path;
use tempfile::TempDir;

/// A fresh, empty store; the directory must outlive it.
async fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(&dir.path().join("qtask.db"));
    (dir, store)
}

fn open(path: &Path) -> SqliteStore {
    qtask_store_sqlite::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

conformance_tests!(fresh);

#[tokio::test]
async fn reopen_keeps_everything_and_never_reuses_ids() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("qtask.db");
    let path = &path;
    conformance::reopen_keeps_everything_and_never_reuses_ids(|| async move { open(path) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_cannot_be_recorded_fails_alone() {
    let (dir, store) = fresh().await;
    let path = dir.path().join("qtask.db");
    conformance::a_completion_that_cannot_be_recorded_fails_alone(
        std::sync::Arc::new(store),
        |task| {
            let conn = r2d2_sqlite::rusqlite::Connection::open(&path).expect("open");
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .expect("busy timeout");
            conn.execute(
                "UPDATE tasks SET effect = 'not an effect' WHERE id = ?1",
                [task.get() as i64],
            )
            .expect("spoil the task's effect");
        },
    )
    .await;
}

#[tokio::test]
async fn multi_statement_reads_leave_no_transaction_open() {
    let (dir, store) = fresh().await;
    let path = dir.path().join("qtask.db");
    // A checkpoint that must reset the WAL is refused while any reader holds a snapshot.
    let holds_snapshot = || {
        let conn = r2d2_sqlite::rusqlite::Connection::open(&path).expect("open");
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .expect("checkpoint");
        busy != 0
    };
    conformance::multi_statement_reads_leave_no_transaction_open(&store, holds_snapshot).await;
}
