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
