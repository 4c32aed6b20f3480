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
    keys_keep_their_access_and_accounts_can_be_blocked,
    submit_refuses_what_would_exceed_the_account_limits,
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
    client_token_is_forgotten_after_its_window,
    claim_starts_a_queued_task_once,
    complete_success_applies_the_effect,
    complete_failure_restores_the_state,
    complete_ignores_tasks_that_are_not_running,
    recover_requeues_running_tasks,
    fences_grow_with_every_claim,
    renew_needs_the_current_fence,
    a_stale_fence_cannot_complete,
    retry_requeues_the_task_after_its_backoff,
    rescue_requeues_expired_leases_not_kept,
    a_rescued_task_with_a_cancel_request_ends_canceled,
    a_released_task_with_a_cancel_request_hands_on_its_resource,
    release_puts_a_running_task_back,
    recover_returns_only_the_heads_of_resource_queues,
    queued_tasks_wait_behind_a_busy_resource,
    the_queue_moves_on_when_the_head_succeeds,
    a_failed_head_cancels_the_tasks_waiting_behind_it,
    a_precondition_failing_at_promotion_fails_the_task,
    cancel_before_start_ends_the_task,
    cancel_while_running_is_a_request,
    cancel_of_a_final_task_is_too_late,
    cancel_of_a_group_cancels_each_task,
    cancel_finds_only_the_accounts_tasks,
    cancel_of_a_waiting_task_leaves_the_head_alone,
    a_canceled_creation_leaves_the_failure_state,
    purge_deletes_finished_tasks_in_batches,
    purge_deletes_expired_nonces_and_old_client_tokens,
    purge_deletes_idle_resources_of_a_kind_and_state,
    stats_count_tasks_by_state,
    queue_summary_counts_ready_tasks_and_the_oldest_wait,
    task_and_group_reads_are_account_scoped,
    task_listing_filters_and_pages,
    resource_listing_filters_and_pages,
    resource_listing_shows_the_latest_operation,
    listings_page_through_equal_creation_times_once,
    accounts_and_keys,
}

on_a_shared_store! {
    concurrent_submits_stay_within_the_unfinished_task_limit,
    concurrent_submits_all_commit_with_distinct_ids,
    a_failing_submit_does_not_disturb_concurrent_ones,
    concurrent_submits_on_one_resource_accept_exactly_one,
    concurrent_claims_have_one_winner,
    a_completion_racing_a_rescue_counts_once,
}

#[tokio::test]
async fn reopen_keeps_everything_and_never_reuses_ids() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("qtask.db");
    let path = &path;
    conformance::reopen_keeps_everything_and_never_reuses_ids(|| async move { open(path) }).await;
}

#[tokio::test]
async fn audit_log_lists_an_accounts_entries_newest_first() {
    let (_dir, store) = fresh();
    conformance::audit_log_lists_an_accounts_entries_newest_first(&store).await;
}
