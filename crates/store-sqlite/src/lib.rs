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
use qtask_store_sql::SqlStore;
use r2d2_sqlite::rusqlite::types::{ToSqlOutput, ValueRef};
use r2d2_sqlite::rusqlite::{self, Connection, OpenFlags, ToSql};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::Duration;

pub use migrations::LATEST as SCHEMA_VERSION;
pub use qtask_store_sql::MasterKey;

/// How long a connection waits for another process's lock (a `qtask keys` command
/// beside a running server) before it reports the database as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;
/// SQLite's page caches (negative: KiB). The default 2 MB made a large store's inserts
/// read B-tree pages with a system call each; these bound the cache, so memory still
/// does not grow with the store beyond them.
const WRITER_CACHE: &str = "PRAGMA cache_size = -65536"; // 64 MiB
const READER_CACHE: &str = "PRAGMA cache_size = -16384"; // 16 MiB each
/// The least time between two WAL checkpoints.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The store on an SQLite database file.
pub type SqliteStore = SqlStore<ReadConnections>;

/// Opens (creating if needed) the database at `path` and applies migrations.
pub fn open(path: &Path) -> StoreResult<SqliteStore> {
    let mut conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
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
    // The writer does not checkpoint: SQLite's automatic checkpoint ran inside a
    // commit, making every caller of that group wait for it. A thread of its own does
    // it beside the writer (WAL lets both run at once). Savepoint journals stay in
    // memory.
    conn.execute_batch(&format!(
        "{WRITER_CACHE}; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(backend)?;
    let checkpoints = spawn_checkpointer(path)?;

    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(|c| {
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.execute_batch(&format!("PRAGMA query_only = ON; {READER_CACHE};"))
        });
    let readers = r2d2::Pool::builder()
        .max_size(READERS)
        .min_idle(Some(1))
        .build(ReadConnections(manager))
        .map_err(|e| StoreError::Backend(format!("cannot open read connections: {e}")))?;
    let checkpoint_path = path.to_owned();
    let writer = SqliteConn {
        conn,
        checkpoints: Some(checkpoints),
        synchronous_full: true,
    };
    Ok(SqlStore::new(writer, readers, None)?
        .with_after_reseal(Box::new(move || checkpoint(&checkpoint_path))))
}

/// Copies the WAL into the database file now, so the pages that held plain keys
/// (zeroed by `secure_delete`) replace the old ones in the file itself.
fn checkpoint(path: &Path) -> StoreResult<()> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(backend)
}

/// Starts the thread that checkpoints the WAL after commits (at most every
/// [`CHECKPOINT_INTERVAL`]); it stops when the writer drops the returned sender.
fn spawn_checkpointer(path: &Path) -> StoreResult<SyncSender<()>> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    let (commits, committed) = sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("qtask-store-checkpoint".into())
        .spawn(move || {
            while committed.recv().is_ok() {
                // PASSIVE: copies what no reader still needs, never blocks the writer.
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "WAL checkpoint failed; retrying after the next commit");
                }
                std::thread::sleep(CHECKPOINT_INTERVAL);
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(commits)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An SQLite connection as the store logic sees it.
pub struct SqliteConn {
    conn: Connection,
    /// The writer's: tells the checkpoint thread that the WAL grew.
    checkpoints: Option<SyncSender<()>>,
    /// Whether commits wait for the disk (`PRAGMA synchronous = FULL`, as opened).
    synchronous_full: bool,
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
        if let Some(checkpoints) = &self.checkpoints {
            // Full means a checkpoint is already due.
            let _ = checkpoints.try_send(());
        }
        Ok(())
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
        self.0.connect().map(|conn| SqliteConn {
            conn,
            checkpoints: None,
            synchronous_full: true,
        })
    }

    fn is_valid(&self, conn: &mut SqliteConn) -> Result<(), rusqlite::Error> {
        self.0.is_valid(&mut conn.conn)
    }

    fn has_broken(&self, conn: &mut SqliteConn) -> bool {
        self.0.has_broken(&mut conn.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer_on(path: &Path) -> SqliteConn {
        let conn = Connection::open(path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .expect("pragmas");
        SqliteConn {
            conn,
            checkpoints: None,
            synchronous_full: true,
        }
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

    /// The writer never checkpoints; the checkpoint thread empties the WAL into the
    /// database after commits.
    #[test]
    fn the_checkpoint_thread_copies_the_wal_after_commits() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("t.db");
        let mut conn = writer_on(&path);
        conn.conn
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x TEXT);")
            .expect("table");
        conn.checkpoints = Some(spawn_checkpointer(&path).expect("checkpointer"));
        for _ in 0..50 {
            conn.begin(true).expect("begin");
            conn.execute(
                "INSERT INTO t (x) VALUES (?1)",
                &[Value::from("x".repeat(4000))],
            )
            .expect("insert");
            conn.commit().expect("commit");
        }
        // In WAL mode the database file grows only when a checkpoint copies pages in.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).expect("database file").len();
            if size > 50 * 4000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint copied the WAL into {} ({size} bytes)",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
