//! The store conformance suite (`qtask_store::conformance`) against the PostgreSQL
//! backend: one test per behaviour, each in a scratch schema of the database that
//! `QTASK_TEST_DATABASE_URL` names. Without the variable these tests fail: `scripts/test`
//! sets it (creating a fresh database on the machine's server), and `.ci/run` insists.

use qtask_store::{conformance, conformance_tests};
use qtask_store_postgres::testing::{test_database_url, ScratchSchema, TEST_DATABASE_ENV};
use qtask_store_postgres::PostgresStore;

fn database() -> String {
    test_database_url().unwrap_or_else(|| {
        panic!("{TEST_DATABASE_ENV} is not set: the PostgreSQL tests need a database (scripts/test sets it)")
    })
}

fn open(url: &str) -> PostgresStore {
    qtask_store_postgres::open(url).unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A fresh, empty store in a scratch schema; the schema must outlive it.
async fn fresh() -> (ScratchSchema, PostgresStore) {
    let schema = ScratchSchema::create(&database());
    let url = schema.url();
    let store = tokio::task::spawn_blocking(move || open(&url))
        .await
        .expect("open");
    (schema, store)
}

conformance_tests!(fresh);

#[tokio::test]
async fn reopen_keeps_everything_and_never_reuses_ids() {
    let schema = ScratchSchema::create(&database());
    let url = schema.url();
    let url = &url;
    conformance::reopen_keeps_everything_and_never_reuses_ids(|| async move {
        let url = url.clone();
        tokio::task::spawn_blocking(move || open(&url))
            .await
            .expect("open")
    })
    .await;
}
