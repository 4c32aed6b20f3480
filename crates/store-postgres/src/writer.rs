//! The writer's connection, pipelined: statements whose answer the store's logic does
//! not read ([`Db::send`]) and transaction control (`BEGIN`, savepoints) are written to
//! the socket at once and answered later, together with the next statement whose answer
//! is needed. A submission then costs the round trips of its reads plus one, not one
//! per statement: on PostgreSQL the writer waits on round trips, not on CPU.
//!
//! tokio-postgres sends a request when its future is first polled and runs requests
//! in that order; this connection polls each once as it is issued, keeps it, and awaits
//! all of them, oldest first, whenever it needs an answer. Its errors surface there,
//! before the job that sent them counts as done (the writer flushes after each job).

use crate::conn::{
    backend, store_rows, OffRuntime, OwnedArg, Statements, Target, SESSION_SETTINGS,
};
use crate::statistics::FirstStatistics;
use postgres::types::ToSql;
use postgres::{NoTls, Statement};
use qtask_store::{StoreError, StoreResult};
use qtask_store_sql::sql::{numbered_for_postgres, Db, Dialect, Row, Value};
use qtask_store_sql::writer::WriteConn;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::runtime::Runtime;
use tokio_postgres::Client;

/// What a request answered.
enum Reply {
    Done,
    Count(u64),
    Rows(Vec<postgres::Row>),
}

type Request = Pin<Box<dyn Future<Output = Result<Reply, postgres::Error>> + Send>>;

/// A request written to the connection, its answer not read yet.
struct Sent {
    reply: Request,
    /// Transaction control: if it fails, the transaction may no longer hold what the
    /// jobs before it did, so it must not commit.
    control: bool,
}

/// A connection and the runtime that drives it: it runs only while this thread waits
/// for an answer.
struct Session {
    runtime: Runtime,
    client: Arc<Client>,
}

/// The writer runs point statements only: each finds its rows by key, also those that
/// take many rows at once (`UPDATE … FROM (VALUES …)`). With statistics older than the
/// tables' growth, PostgreSQL planned those as a hash join over a whole table (a
/// resource release read every resource) or a walk of every unfinished task; without
/// hash joins, merge joins and table scans, the rows of `VALUES` drive index lookups.
const WRITER_SETTINGS: &str =
    "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_seqscan = off";

impl Session {
    fn open(target: &Target) -> StoreResult<OffRuntime<Self>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the writer's runtime: {e}")))?;
        let (client, connection) = runtime
            .block_on(target.config.connect(NoTls))
            .map_err(backend)?;
        runtime.spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the store's write connection failed");
            }
        });
        runtime
            .block_on(client.batch_execute(&format!("{SESSION_SETTINGS}; {WRITER_SETTINGS}")))
            .map_err(backend)?;
        Ok(OffRuntime::new(Self {
            runtime,
            client: Arc::new(client),
        }))
    }
}

/// The writer's connection: it takes the cluster-wide write lock in every batch,
/// pipelines what it can, and reconnects when the server went away.
pub struct PgWriter {
    session: OffRuntime<Session>,
    statements: Statements,
    sent: Vec<Sent>,
    /// A transaction-control statement failed in the open transaction.
    control_failed: bool,
    target: Target,
    /// Taken out while it runs (it uses the writer).
    first_statistics: Option<FirstStatistics>,
}

impl PgWriter {
    pub fn connect(target: Target) -> StoreResult<Self> {
        Ok(Self {
            session: Session::open(&target)?,
            statements: Statements::default(),
            sent: Vec::new(),
            control_failed: false,
            target,
            first_statistics: Some(FirstStatistics::new()),
        })
    }

    /// Writes `request` to the connection without waiting for its answer.
    fn issue(&mut self, mut request: Request, control: bool) {
        let _runtime = self.session.runtime.enter();
        // The first poll encodes the request and queues it for the socket: that fixes
        // its place in the order. No waker is needed yet; `wait` polls it again.
        if let Poll::Ready(reply) = request
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            request = Box::pin(std::future::ready(reply));
        }
        self.sent.push(Sent {
            reply: request,
            control,
        });
    }

    /// Waits for every request issued; returns the last one's reply, or the first error.
    fn wait(&mut self) -> StoreResult<Reply> {
        let sent = std::mem::take(&mut self.sent);
        let (reply, control_failed) = self.session.runtime.block_on(async move {
            let mut outcome = Ok(Reply::Done);
            let mut control_failed = false;
            // Oldest first: answers arrive in order, and each request's answer must be
            // read before the connection reads the next one's.
            for Sent { reply, control } in sent {
                match reply.await {
                    Ok(reply) if outcome.is_ok() => outcome = Ok(reply),
                    Ok(_) => {}
                    Err(error) => {
                        control_failed |= control;
                        if outcome.is_ok() {
                            outcome = Err(error);
                        }
                    }
                }
            }
            (outcome, control_failed)
        });
        self.control_failed |= control_failed;
        reply.map_err(backend)
    }

    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement);
        }
        // Rare (once per statement and connection): not worth pipelining.
        self.wait()?;
        let client = self.session.client.clone();
        let statement = self
            .session
            .runtime
            .block_on(async move { client.prepare(&numbered_for_postgres(sql)).await })
            .map_err(backend)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn issue_statement(&mut self, sql: &str, args: &[Value<'_>], rows: bool) -> StoreResult<()> {
        let statement = self.statement(sql)?;
        let args = OwnedArg::all(args);
        let client = self.session.client.clone();
        let request: Request = Box::pin(async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            if rows {
                client.query(&statement, &params).await.map(Reply::Rows)
            } else {
                client.execute(&statement, &params).await.map(Reply::Count)
            }
        });
        self.issue(request, false);
        Ok(())
    }

    fn unexpected(reply: &Reply) -> StoreError {
        let what = match reply {
            Reply::Done => "nothing",
            Reply::Count(_) => "a count",
            Reply::Rows(_) => "rows",
        };
        StoreError::Backend(format!(
            "PostgreSQL: a statement answered {what}, unexpectedly"
        ))
    }
}

impl Db for PgWriter {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<u64> {
        self.issue_statement(sql, args, false)?;
        match self.wait()? {
            Reply::Count(n) => Ok(n),
            other => Err(Self::unexpected(&other)),
        }
    }

    fn query(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<Vec<Row>> {
        self.issue_statement(sql, args, true)?;
        match self.wait()? {
            Reply::Rows(rows) => store_rows(&rows),
            other => Err(Self::unexpected(&other)),
        }
    }

    fn control(&mut self, sql: &str) -> StoreResult<()> {
        let sql = sql.to_owned();
        let client = self.session.client.clone();
        // The simple protocol: several statements in one request.
        let request: Request =
            Box::pin(async move { client.batch_execute(&sql).await.map(|()| Reply::Done) });
        self.issue(request, true);
        Ok(())
    }

    fn send(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<()> {
        self.issue_statement(sql, args, false)
    }

    fn flush(&mut self) -> StoreResult<()> {
        self.wait().map(drop)
    }
}

impl WriteConn for PgWriter {
    /// Always durable: on a shared database a lost claim could give its fencing token
    /// again while the node that drew it still runs the task.
    fn begin(&mut self, _sync: bool) -> StoreResult<()> {
        if self.session.client.is_closed() {
            tracing::warn!("the store's write connection was lost; reconnecting");
            self.sent.clear();
            self.statements.clear();
            self.session = Session::open(&self.target)?;
        }
        self.control_failed = false;
        // Batches of all nodes take turns: see the writer's module documentation. Sent
        // with the batch's first query (the counters).
        let lock = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            self.target.lock_key
        );
        self.control(&lock)
    }

    fn commit(&mut self) -> StoreResult<()> {
        // A savepoint that failed may have let a later rollback undo a job that
        // succeeded. (One failing in the requests still unanswered leaves the
        // transaction aborted, which the `SELECT 1` below catches.)
        if self.control_failed {
            return Err(StoreError::Backend(
                "PostgreSQL: a savepoint failed in this batch; it was not committed".into(),
            ));
        }
        // COMMIT in a transaction a failed statement aborted answers "ROLLBACK", not an
        // error: the `SELECT 1` before it fails there instead, and stops the request.
        self.control("SELECT 1; COMMIT")?;
        self.wait().map(drop)
    }

    fn rollback(&mut self) {
        // Behind whatever is unanswered: ROLLBACK works in an aborted transaction too.
        let _ = self.control("ROLLBACK");
        let _ = self.wait();
    }

    fn shared(&self) -> bool {
        true
    }

    fn after_batch(&mut self) {
        if let Some(mut statistics) = self.first_statistics.take() {
            if let Err(error) = statistics.check(self) {
                tracing::warn!(%error, "cannot give the young store's tables their first statistics");
            }
            self.first_statistics = Some(statistics);
        }
    }

    fn notify_ready(&mut self) -> StoreResult<()> {
        let (channel, node) = (self.target.channel.clone(), self.target.node.clone());
        self.send(
            "SELECT pg_notify(?1, ?2)",
            &[Value::from(channel), Value::from(node)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{test_database_url, ScratchSchema, TEST_DATABASE_ENV};
    use qtask_store_sql::args;

    /// A writer on a scratch schema holding `t (id primary key, v)`.
    fn writer() -> (ScratchSchema, PgWriter) {
        let base = test_database_url()
            .unwrap_or_else(|| panic!("{TEST_DATABASE_ENV} is not set (scripts/test sets it)"));
        let schema = ScratchSchema::create(&base);
        let (target, mut client) = crate::connect(&schema.url()).expect("connect");
        client
            .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT)")
            .expect("create table");
        (schema, PgWriter::connect(target).expect("writer"))
    }

    fn stored(writer: &mut PgWriter) -> Vec<(i64, i64)> {
        let rows = writer.query("SELECT id, v FROM t ORDER BY id", args![]);
        rows.expect("read")
            .iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect()
    }

    #[test]
    fn sent_statements_run_in_order_and_their_errors_surface_at_the_next_wait() {
        let (_schema, mut w) = writer();
        w.begin(true).unwrap();
        w.send("INSERT INTO t VALUES (?1, ?2)", args![1i64, 10i64])
            .unwrap();
        w.send("UPDATE t SET v = v + ?2 WHERE id = ?1", args![1i64, 2i64])
            .unwrap();
        // Preparing a statement waits for what was sent before; a prepared one does not.
        w.send("UPDATE t SET v = v + ?2 WHERE id = ?1", args![1i64, 3i64])
            .unwrap();
        assert_eq!(w.sent.len(), 2, "both updates are in flight");
        assert_eq!(
            stored(&mut w),
            [(1, 15)],
            "the read sees all three, in order"
        );
        assert!(w.sent.is_empty());

        w.control("SAVEPOINT job").unwrap();
        w.send("INSERT INTO t VALUES (?1, ?2)", args![1i64, 0i64])
            .unwrap();
        let error = w
            .flush()
            .expect_err("the duplicate key is reported at the flush");
        assert!(error.to_string().contains("23505"), "{error}");
        // As the store's writer does after a failed job: back to its savepoint.
        w.control("ROLLBACK TO SAVEPOINT job").unwrap();
        w.control("RELEASE SAVEPOINT job").unwrap();
        w.send("INSERT INTO t VALUES (?1, ?2)", args![2i64, 20i64])
            .unwrap();
        w.commit()
            .expect("the batch commits without the failed job");
        assert_eq!(stored(&mut w), [(1, 15), (2, 20)]);
    }

    #[test]
    fn a_transaction_a_failed_statement_aborted_does_not_commit() {
        let (_schema, mut w) = writer();
        w.begin(true).unwrap();
        w.execute("INSERT INTO t VALUES (?1, ?2)", args![1i64, 10i64])
            .unwrap();
        // No savepoint: PostgreSQL aborts the transaction, and a plain COMMIT would
        // answer "ROLLBACK" without an error.
        w.execute("INSERT INTO t VALUES (?1, ?2)", args![1i64, 11i64])
            .expect_err("duplicate key");
        w.commit()
            .expect_err("an aborted transaction must not look committed");
        w.rollback();
        assert_eq!(stored(&mut w), []);
    }

    #[test]
    fn a_failed_savepoint_keeps_the_batch_from_committing() {
        let (_schema, mut w) = writer();
        w.begin(true).unwrap();
        w.send("INSERT INTO t VALUES (?1, ?2)", args![1i64, 10i64])
            .unwrap();
        // Rolling back to a savepoint that does not exist fails like a lost one would.
        w.control("ROLLBACK TO SAVEPOINT nowhere").unwrap();
        w.flush().expect_err("no such savepoint");
        w.commit()
            .expect_err("a batch whose savepoints failed is not committed");
        w.rollback();
        w.begin(true).unwrap();
        w.commit().expect("the next batch starts clean");
        assert_eq!(stored(&mut w), []);
    }
    fn reltuples(writer: &mut PgWriter, table: &str) -> f64 {
        let rows = writer.query(
            "SELECT reltuples::text FROM pg_class WHERE oid = to_regclass(?1)",
            args![table],
        );
        let text: String = rows.expect("read")[0].get(0).expect("reltuples");
        text.parse().expect("a number")
    }

    #[test]
    fn a_young_busy_table_gets_its_first_statistics_once_it_holds_a_few_pages() {
        let (_schema, mut w) = writer();
        let fill = |w: &mut PgWriter, table: &str| {
            w.execute(
                &format!("INSERT INTO {table} SELECT g, g FROM generate_series(1, 5000) g"),
                args![],
            )
            .expect("fill")
        };
        w.execute(
            "CREATE TABLE tasks (id BIGINT PRIMARY KEY, v BIGINT)",
            args![],
        )
        .unwrap();
        w.execute("INSERT INTO tasks VALUES (1, 1)", args![])
            .unwrap();
        w.after_batch();
        assert_eq!(reltuples(&mut w, "tasks"), -1.0, "one row: too early");
        fill(&mut w, "t");
        w.execute("DELETE FROM tasks", args![]).unwrap();
        fill(&mut w, "tasks");
        w.after_batch();
        assert_eq!(
            reltuples(&mut w, "tasks"),
            -1.0,
            "at most one look a second"
        );
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        w.after_batch();
        assert_eq!(reltuples(&mut w, "tasks"), 5000.0, "analyzed");
        assert_eq!(
            reltuples(&mut w, "t"),
            -1.0,
            "not a table of the store's hot path"
        );
    }
}
