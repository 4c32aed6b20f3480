//! The store conformance suite (`qtask_store::conformance`) against the SQLite backend:
//! one test per behaviour, each on a fresh database in its own temporary directory.

use qtask_store::conformance;
use qtask_store_sqlite::SqliteStore;
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

/// A fresh, empty store; the directory must outlive it.
fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(&dir.path().join("qtask.db"));
    (dir, store)
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Behaviours that take `&dyn Store`.
macro_rules! on_a_fresh_store {
    ($($behaviour:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $behaviour() {
            let (_dir, store) = fresh();
            conformance::$behaviour(&store).await;
        }
    )*};
}

/// Behaviours that run many calls at once and take an `Arc<dyn Store>`.
macro_rules! on_a_shared_store {
    ($($behaviour:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $behaviour() {
            let (_dir, store) = fresh();
            conformance::$behaviour(Arc::new(store)).await;
        }
    )*};
}

on_a_fresh_store! {
    submit_commits_queued_tasks_and_marks_resources_busy,
    submit_refuses_missing_foreign_and_other_region_resources,
    submit_refuses_busy_resources_naming_the_unfinished_task,
    submit_refuses_wrong_state_listing_the_allowed_states,
    submit_reports_outcomes_in_task_order,
    submit_creates_a_group_only_when_a_task_is_accepted,
    submit_create_inserts_the_resource_busy,
    duplicate_resource_rolls_back_the_whole_submission,
    record_nonce_tells_fresh_resent_and_reused,
    submit_resend_gets_the_stored_answer,
    submit_refuses_a_nonce_a_query_used,
    client_token_repeats_the_first_answer,
    client_token_with_other_parameters_is_refused,
    client_tokens_are_per_account,
    claim_starts_a_queued_task_once,
    complete_success_applies_the_effect,
    complete_failure_restores_the_state,
    complete_ignores_tasks_that_are_not_running,
    recover_requeues_running_tasks,
    task_and_group_reads_are_account_scoped,
    task_listing_filters_and_pages,
    resource_listing_filters_and_pages,
    resource_listing_shows_the_latest_operation,
    listings_page_through_equal_creation_times_once,
    accounts_and_keys,
}

on_a_shared_store! {
    concurrent_submits_all_commit_with_distinct_ids,
    a_failing_submit_does_not_disturb_concurrent_ones,
    concurrent_submits_on_one_resource_accept_exactly_one,
    concurrent_claims_have_one_winner,
}

#[tokio::test]
async fn reopen_keeps_everything_and_never_reuses_ids() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("qtask.db");
    let path = &path;
    conformance::reopen_keeps_everything_and_never_reuses_ids(|| async move { open(path) }).await;
}
