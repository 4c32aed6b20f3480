//! The embedded SQLite backend of the store: the connections the shared SQL store
//! logic (`qtask-store-sql`) runs on, and SQLite's migrations.
//!
//! Durability settings (see ARCHITECTURE.md, "Durability"): WAL journal with
//! `synchronous = FULL`, so every commit is fsynced before any caller is answered; a
//! SIGKILL or a power loss loses nothing that was answered. Writes go through one writer
//! thread that commits them in groups; reads use a pool of read-only connections that
//! WAL lets run beside the writer. The process holds the database alone (the server's
//! lock file), so the store is not shared.

mod migrations;

use qtask_store::{StoreError, StoreResult};
use qtask_store_sql::sql::{Db, Dialect, Row, Value};
use qtask_store_sql::writer::WriteConn;
use qtask_store_sql::{KeyChanges, SqlStore};
use r2d2_sqlite::rusqlite::types::{ToSqlOutput, ValueRef};
use r2d2_sqlite::rusqlite::{self, Connection, OpenFlags, ToSql};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::Path;
use std::time::{Duration, Instant};

pub use migrations::LATEST as SCHEMA_VERSION;
pub use qtask_store_sql::MasterKey;

/// How long a connection waits for another process's lock (a `qtask keys` command
/// beside a running server) before it reports the database as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;
/// The writer's page cache (negative: KiB). Readers keep SQLite's default (2 MB): in WAL
/// mode a reader drops its whole cache whenever a write committed since its last read,
/// so a larger one only costs memory. The cache bounds memory whatever the store's size.
const WRITER_CACHE: &str = "PRAGMA cache_size = -16384"; // 16 MiB
/// Prepared statements kept per connection. rusqlite's default (16) is fewer than the
/// writer's statements of one submission, claim and completion, and the transaction
/// control statements: with it, the writer parsed most statements again every time.
const STATEMENT_CACHE: usize = 256;
/// How often the writer copies the WAL into the database (when it wrote since).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The store on an SQLite database file.
pub type SqliteStore = SqlStore<ReadConnections>;

/// Opens (creating if needed) the database at `path` and applies migrations.
pub fn open(path: &Path) -> StoreResult<SqliteStore> {
    let mut conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // secure_delete: a key sealed at start leaves no plain copy in freed space.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;",
    )
    .map_err(backend)?;
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if found > migrations::LATEST {
        return Err(StoreError::Backend(format!(
            "{} has schema version {found}, newer than this qtask understands ({}); use a newer qtask",
            path.display(),
            migrations::LATEST
        )));
    }
    migrations::migrate(&mut conn).map_err(backend)?;
    // No automatic checkpoint: SQLite's ran inside a commit, making every caller of
    // that group wait for it; the writer checkpoints after answering them instead (see
    // `after_batch`). Savepoint journals stay in memory.
    conn.execute_batch(&format!(
        "{WRITER_CACHE}; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(backend)?;

    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(|c| {
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            c.execute_batch("PRAGMA query_only = ON;")
        });
    let readers = r2d2::Pool::builder()
        .max_size(READERS)
        .min_idle(Some(1))
        .build(ReadConnections(manager))
        .map_err(|e| StoreError::Backend(format!("cannot open read connections: {e}")))?;
    let checkpoint_path = path.to_owned();
    let writer = SqliteConn::writer(conn);
    Ok(SqlStore::new(writer, readers, None)?
        .with_after_reseal(Box::new(move || checkpoint(&checkpoint_path)))
        .with_inline_point_reads()
        .with_key_changes(KeyChanges::open(key_changes_marker(path)).map_err(|e| {
            StoreError::Backend(format!("cannot open the key changes' marker: {e}"))
        })?))
}

/// The file beside the database where key changes are marked (`qtask.db-keys`, as
/// SQLite names its `-wal` and `-shm`): see `qtask_store_sql::KeyChanges`.
pub fn key_changes_marker(database: &Path) -> std::path::PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-keys");
    name.into()
}

/// Copies the WAL into the database file now, so the pages that held plain keys
/// (zeroed by `secure_delete`) replace the old ones in the file itself.
fn checkpoint(path: &Path) -> StoreResult<()> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(backend)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An SQLite connection as the store logic sees it.
pub struct SqliteConn {
    conn: Connection,
    /// Whether commits wait for the disk (`PRAGMA synchronous = FULL`, as opened).
    synchronous_full: bool,
    /// The writer's: when it last copied the WAL into the database, and whether it
    /// committed since.
    last_checkpoint: Instant,
    wrote_since_checkpoint: bool,
}

impl SqliteConn {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            synchronous_full: true,
            last_checkpoint: Instant::now(),
            wrote_since_checkpoint: false,
        }
    }

    fn writer(conn: Connection) -> Self {
        Self::new(conn)
    }
}

/// A statement argument bound to an SQLite parameter.
struct Arg<'a>(&'a Value<'a>);

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Real(x) => ValueRef::Real(*x),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }))
    }
}

fn owned(index: usize, value: ValueRef<'_>) -> rusqlite::Result<Value<'static>> {
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(bytes) => Value::Text(
            std::str::from_utf8(bytes)
                .map_err(|e| rusqlite::Error::Utf8Error(index, e))?
                .to_owned()
                .into(),
        ),
        ValueRef::Blob(_) => {
            return Err(rusqlite::Error::InvalidColumnType(
                index,
                "blob".into(),
                rusqlite::types::Type::Blob,
            ))
        }
    })
}

impl Db for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<u64> {
        let mut statement = self.conn.prepare_cached(sql).map_err(backend)?;
        statement
            .execute(rusqlite::params_from_iter(args.iter().map(Arg)))
            .map(|n| n as u64)
            .map_err(backend)
    }

    fn insert_returning_id(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<i64> {
        self.execute(sql, args)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn query(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<Vec<Row>> {
        let mut statement = self.conn.prepare_cached(sql).map_err(backend)?;
        let columns = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(args.iter().map(Arg)))
            .map_err(backend)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            let values = (0..columns)
                .map(|i| row.get_ref(i).and_then(|v| owned(i, v)))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            out.push(Row(values));
        }
        Ok(out)
    }

    fn control(&mut self, sql: &str) -> StoreResult<()> {
        // Prepared once: parsing `SAVEPOINT`, `RELEASE` and `COMMIT` for every write
        // was a measurable share of the writer's time.
        let mut statement = self.conn.prepare_cached(sql).map_err(backend)?;
        statement.raw_execute().map(drop).map_err(backend)
    }
}

impl WriteConn for SqliteConn {
    fn begin(&mut self, sync: bool) -> StoreResult<()> {
        // A lazy batch commits to the WAL without an fsync (`NORMAL`): it survives a
        // crash of the process, and only a power failure can lose it. The level cannot
        // change inside a transaction, so it is set here.
        if self.synchronous_full != sync {
            let level = if sync { "FULL" } else { "NORMAL" };
            self.control(&format!("PRAGMA synchronous = {level}"))?;
            self.synchronous_full = sync;
        }
        self.control("BEGIN IMMEDIATE")
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.control("COMMIT")?;
        self.wrote_since_checkpoint = true;
        Ok(())
    }

    /// Copies the WAL into the database at most every [`CHECKPOINT_INTERVAL`], once the
    /// batch's callers have their answers. Here, between batches, the copy can finish
    /// before the next write, so that write starts the WAL over from its beginning (a
    /// checkpoint beside a busy writer never catches up, and the WAL grew without end).
    fn after_batch(&mut self) {
        if !self.wrote_since_checkpoint || self.last_checkpoint.elapsed() < CHECKPOINT_INTERVAL {
            return;
        }
        // PASSIVE: copies what no reader still needs; never waits for readers.
        if let Err(error) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(%error, "WAL checkpoint failed; retrying after the next batch");
        }
        self.last_checkpoint = Instant::now();
        self.wrote_since_checkpoint = false;
    }

    fn rollback(&mut self) {
        let _ = self.control("ROLLBACK");
    }

    fn shared(&self) -> bool {
        false
    }
}

/// The pool's connection manager: read-only SQLite connections.
pub struct ReadConnections(SqliteConnectionManager);

impl r2d2::ManageConnection for ReadConnections {
    type Connection = SqliteConn;
    type Error = rusqlite::Error;

    fn connect(&self) -> Result<SqliteConn, rusqlite::Error> {
        self.0.connect().map(SqliteConn::new)
    }

    /// A connection to a local file does not go stale as a network one does, and a
    /// broken one fails its next query: no test query at every checkout (it was parsed
    /// anew each time, twice per `DescribeTaskResult`).
    fn is_valid(&self, _conn: &mut SqliteConn) -> Result<(), rusqlite::Error> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut SqliteConn) -> bool {
        self.0.has_broken(&mut conn.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a new store with every migration applied (and its directory).
    fn migrated_store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("qtask.db");
        drop(open(&path).expect("the store opens"));
        let conn = Connection::open(&path).expect("open");
        (dir, conn)
    }

    /// The steps of `sql`'s query plan, as `EXPLAIN QUERY PLAN` words them.
    fn plan_of(conn: &Connection, sql: &str) -> Vec<String> {
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("EXPLAIN QUERY PLAN");
        let unbound = std::iter::repeat_n(rusqlite::types::Null, plan.parameter_count());
        plan.query_map(rusqlite::params_from_iter(unbound), |row| {
            row.get::<_, String>(3)
        })
        .expect("the plan")
        .map(|step| step.expect("a plan step"))
        .collect()
    }

    /// Every recurring query finds its rows through an index: a plan step that walks a
    /// whole table ("SCAN tasks", "SCAN r") costs seconds on a store of 10M tasks, and
    /// these run every few seconds (as rescue's did, until its `ORDER BY` was dropped).
    #[test]
    fn recurring_queries_never_walk_a_whole_table() {
        let (_dir, conn) = migrated_store();
        for sql in qtask_store_sql::RECURRING_QUERIES {
            let steps = plan_of(&conn, sql);
            let walks = steps
                .iter()
                .filter(|step| step.starts_with("SCAN ") && !step.contains(" USING "))
                .filter(|step| *step != "SCAN CONSTANT ROW")
                .count();
            assert_eq!(walks, 0, "{sql}\nwalks a whole table: {steps:?}");
        }
    }

    /// A QUEUED task's place in its resource's queue, and an account's count of
    /// unfinished tasks, read only unfinished tasks: before migration 7 they went
    /// through `tasks_by_resource` and read the state of every earlier task of the
    /// resource — a long-lived instance's whole history, for each queued task.
    #[test]
    fn queue_positions_and_limits_read_only_unfinished_tasks() {
        let (_dir, conn) = migrated_store();
        for sql in qtask_store_sql::UNFINISHED_TASK_QUERIES {
            let steps = plan_of(&conn, sql);
            // Every search but the one of a task by its ID.
            let among_tasks: Vec<&String> = steps
                .iter()
                .filter(|step| step.starts_with("SEARCH ") && !step.contains("PRIMARY KEY"))
                .collect();
            assert!(!among_tasks.is_empty(), "{sql}\n{steps:?}");
            for step in among_tasks {
                assert!(
                    step.contains("tasks_unfinished_by_resource"),
                    "{sql}\nreads other tasks than unfinished ones: {steps:?}"
                );
            }
        }
    }

    /// `describe`'s read of a task or chain searches the tasks by the ID and by the chain,
    /// never through the account's index (which would read every task of the account).
    #[test]
    fn a_task_or_chain_is_found_by_its_id_not_among_the_account_s_tasks() {
        let (_dir, conn) = migrated_store();
        let steps = plan_of(&conn, qtask_store_sql::NAMED_SQL);
        let among_tasks: Vec<&String> = steps
            .iter()
            .filter(|step| step.starts_with("SEARCH tasks"))
            .collect();
        assert_eq!(among_tasks.len(), 2, "{steps:?}");
        assert!(among_tasks[0].contains("INTEGER PRIMARY KEY"), "{steps:?}");
        assert!(among_tasks[1].contains("tasks_by_group"), "{steps:?}");
    }

    /// The statements that change many rows at once find each row by its key: driven by
    /// the rows of their `VALUES`, never a walk of the tasks or the resources.
    #[test]
    fn many_row_statements_find_their_rows_by_key() {
        let (_dir, conn) = migrated_store();
        for sql in qtask_store_sql::many_row_statements(64) {
            let steps = plan_of(&conn, sql);
            let walks: Vec<&String> = steps
                .iter()
                .filter(|step| step.starts_with("SCAN tasks") || step.starts_with("SCAN resources"))
                .collect();
            assert!(walks.is_empty(), "{sql:.80}\nwalks a table: {steps:?}");
            assert!(
                steps.iter().any(|step| step.starts_with("SEARCH ")),
                "{sql:.80}\nfinds no row by key: {steps:?}"
            );
        }
    }

    fn writer_on(path: &Path) -> SqliteConn {
        let conn = Connection::open(path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .expect("pragmas");
        SqliteConn::writer(conn)
    }

    fn level(conn: &SqliteConn) -> i64 {
        conn.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("PRAGMA synchronous")
    }

    /// A lazy batch commits with `NORMAL` (no fsync); the next durable one is back to
    /// `FULL` before it begins.
    #[test]
    fn lazy_batches_skip_the_fsync_and_durable_ones_do_not() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut conn = writer_on(&dir.path().join("t.db"));
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        for (sync, expected) in [
            (false, NORMAL),
            (false, NORMAL),
            (true, FULL),
            (false, NORMAL),
        ] {
            conn.begin(sync).expect("begin");
            assert_eq!(level(&conn), expected, "a batch with sync = {sync}");
            conn.commit().expect("commit");
        }
    }

    /// The writer checkpoints between batches, so the WAL starts over instead of growing
    /// with every commit.
    #[test]
    fn the_writer_keeps_the_wal_short() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("t.db");
        let mut conn = writer_on(&path);
        conn.conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x TEXT);")
            .expect("table");
        let started = Instant::now();
        let mut written = 0;
        while started.elapsed() < CHECKPOINT_INTERVAL * 10 {
            conn.begin(false).expect("begin");
            let row = "x".repeat(4000);
            conn.execute("INSERT INTO t (x) VALUES (?1)", &[Value::from(row)])
                .expect("insert");
            conn.commit().expect("commit");
            conn.after_batch();
            written += 4000;
            std::thread::sleep(Duration::from_millis(2));
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .expect("the WAL")
            .len();
        let database = std::fs::metadata(&path).expect("the database").len();
        assert!(
            wal < written / 2 && database > written / 2,
            "{written} bytes written: WAL {wal} bytes, database {database} bytes"
        );
    }
}
