//! For tests: a scratch schema of its own on the test database, dropped afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that names the test database; the PostgreSQL tests need it.
pub const TEST_DATABASE_ENV: &str = "QTASK_TEST_DATABASE_URL";

/// The test database's URL, if the tests should use PostgreSQL.
pub fn test_database_url() -> Option<String> {
    std::env::var(TEST_DATABASE_ENV)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Whether the tests that can run on either backend should use PostgreSQL:
/// `QTASK_TEST_BACKEND=postgres` (scripts/test runs them so in a second pass).
pub fn postgres_backend() -> bool {
    match std::env::var("QTASK_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("QTASK_TEST_BACKEND must be sqlite or postgres, not {other:?}"),
    }
}

/// A scratch schema of the test database when the tests run on PostgreSQL.
pub fn scratch_if_postgres() -> Option<ScratchSchema> {
    postgres_backend().then(|| {
        let base = test_database_url().unwrap_or_else(|| {
            panic!("QTASK_TEST_BACKEND=postgres needs {TEST_DATABASE_ENV} (scripts/test sets it)")
        });
        ScratchSchema::create(&base)
    })
}

/// A schema no other test uses, dropped (with everything in it) when this is dropped.
pub struct ScratchSchema {
    base: String,
    schema: String,
}

impl ScratchSchema {
    /// A new schema on the database at `base`.
    pub fn create(base: &str) -> Self {
        // The clock alone is not enough: two tests of one process once read the same
        // nanosecond (a CI run failed on `pg_namespace_nspname_index`).
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let serial = CREATED.fetch_add(1, Ordering::Relaxed);
        let schema = format!("qt_{}_{nanos:x}_{serial}", std::process::id());
        let sql = format!("CREATE SCHEMA {schema}");
        run_outside_async(base.to_owned(), sql);
        Self {
            base: base.to_owned(),
            schema,
        }
    }

    /// The URL whose connections create and find their tables in this schema.
    pub fn url(&self) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{separator}options=-csearch_path%3D{}",
            self.base, self.schema
        )
    }

    pub fn name(&self) -> &str {
        &self.schema
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        run_outside_async(self.base.clone(), sql);
    }
}

/// Runs `sql` on its own thread: the blocking client must not run on an async one.
fn run_outside_async(url: String, sql: String) {
    let outcome = std::thread::spawn(move || {
        let mut client = url
            .parse::<postgres::Config>()
            .map_err(|e| e.to_string())?
            .connect(postgres::NoTls)
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        client
            .batch_execute(&sql)
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{sql}: {}", db.message()),
                None => format!("{sql}: {e}"),
            })
    })
    .join()
    .expect("the scratch-schema thread panicked");
    if let Err(error) = outcome {
        panic!("test database: {error}");
    }
}
