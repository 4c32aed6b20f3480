//! A PostgreSQL connection as the shared store logic sees it: `?N` placeholders
//! rewritten to `$N`, statements prepared once per connection, values converted by the
//! column types the server reports. This is the read pool's connection; the writer's,
//! which pipelines, is in `writer.rs`.

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};
use qtask_store::{StoreError, StoreResult};
use qtask_store_sql::sql::{numbered_for_postgres, Db, Dialect, Row, Value};
use qtask_store_sql::writer::READY_CHANNEL;
use std::collections::HashMap;
use std::error::Error;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

pub fn backend(e: postgres::Error) -> StoreError {
    // The database's own message (and its detail) says more than the client's summary.
    let text = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Backend(format!("PostgreSQL: {text}"))
}

/// Where and how a node connects: the parsed URL plus what makes one deployment's
/// locks and notifications its own.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// The advisory-lock key of the cluster-wide write lock; the maintenance lock is the
    /// next one. Derived from the schema, so several deployments can share a database.
    pub lock_key: i64,
    /// The channel on which nodes announce runnable tasks.
    pub channel: String,
    /// This process, in notification payloads (a node ignores its own).
    pub node: String,
}

/// Set on every connection. A commit answered before it is durable would break
/// qtask's promise, whatever the server's default.
pub const SESSION_SETTINGS: &str = "SET synchronous_commit = on; SET client_min_messages = warning";

impl Target {
    /// A blocking connection (the read pool's, the cluster's).
    pub fn connect(&self) -> StoreResult<Client> {
        let mut client = postgres::Config::from(self.config.clone())
            .connect(NoTls)
            .map_err(backend)?;
        client.batch_execute(SESSION_SETTINGS).map_err(backend)?;
        Ok(client)
    }
}

/// A value that is dropped on a thread of its own when it would be dropped on an async
/// thread: a blocking client owns a small runtime, and a runtime must not be dropped
/// there (the store may be dropped on one).
pub struct OffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffRuntime<T> {
    pub fn new(value: T) -> Self {
        Self(Some(value))
    }
}

impl<T: Send + 'static> std::ops::Deref for OffRuntime<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> std::ops::DerefMut for OffRuntime<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for OffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("qtask-pg-close".into())
                    .spawn(move || drop(value));
            }
        }
    }
}

pub struct PgConn {
    client: OffRuntime<Client>,
    statements: Statements,
}

impl PgConn {
    pub fn new(client: Client) -> Self {
        Self {
            client: OffRuntime::new(client),
            statements: Statements::default(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement);
        }
        let statement = self
            .client
            .prepare(&numbered_for_postgres(sql))
            .map_err(backend)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// The statements a connection has prepared, by the store's SQL text.
#[derive(Default)]
pub struct Statements(HashMap<String, Statement>);

impl Statements {
    pub fn get(&self, sql: &str) -> Option<Statement> {
        self.0.get(sql).cloned()
    }

    pub fn insert(&mut self, sql: &str, statement: Statement) {
        // Listings put their page in the text: keep the cache bounded (dropping a
        // statement closes it on the server).
        if self.0.len() >= STATEMENT_CACHE {
            self.0.clear();
        }
        self.0.insert(sql.to_owned(), statement);
    }

    /// Forgets every statement: the connection they were prepared on is gone.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A statement argument bound to a PostgreSQL parameter of whatever type the server
/// inferred for it.
#[derive(Debug)]
struct Arg<'a>(&'a Value<'a>);

/// An argument that outlives the call that gave it: a pipelined statement's.
#[derive(Debug)]
pub struct OwnedArg(pub Value<'static>);

impl OwnedArg {
    pub fn all(args: &[Value<'_>]) -> Vec<Self> {
        args.iter()
            .map(|value| {
                Self(match value {
                    Value::Text(text) => Value::Text(text.clone().into_owned().into()),
                    Value::Null => Value::Null,
                    Value::Int(n) => Value::Int(*n),
                    Value::Real(x) => Value::Real(*x),
                })
            })
            .collect()
    }
}

impl ToSql for OwnedArg {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        Arg(&self.0).to_sql(ty, out)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => Err(format!("an integer cannot bind to a {ty} parameter").into()),
            },
            Value::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                _ => Err(format!("a real cannot bind to a {ty} parameter").into()),
            },
            Value::Text(text) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                    text.as_ref().to_sql(ty, out)
                }
                _ => Err(format!("text cannot bind to a {ty} parameter").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Rows as the store reads them.
pub fn store_rows(rows: &[postgres::Row]) -> StoreResult<Vec<Row>> {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| column(row, i))
                .collect::<StoreResult<Vec<_>>>()
                .map(Row)
        })
        .collect()
}

fn column(row: &postgres::Row, index: usize) -> StoreResult<Value<'static>> {
    let ty = row.columns()[index].type_();
    let fail = |e: postgres::Error| backend(e);
    Ok(match *ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(index)
            .map_err(fail)?
            .map_or(Value::Null, Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)
            .map_err(fail)?
            .map_or(Value::Null, |n| Value::Int(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)
            .map_err(fail)?
            .map_or(Value::Null, |n| Value::Int(n.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)
            .map_err(fail)?
            .map_or(Value::Null, |b| Value::Int(b.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(index)
            .map_err(fail)?
            .map_or(Value::Null, Value::Real),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(index)
            .map_err(fail)?
            .map_or(Value::Null, |s| Value::Text(s.into())),
        Type::VOID => Value::Null,
        _ => {
            return Err(StoreError::Backend(format!(
                "PostgreSQL: column {index} has type {ty}, which the store does not read"
            )))
        }
    })
}

impl Db for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        let args: Vec<Arg<'_>> = args.iter().map(Arg).collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.client.execute(&statement, &params).map_err(backend)
    }

    fn query(&mut self, sql: &str, args: &[Value<'_>]) -> StoreResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        let args: Vec<Arg<'_>> = args.iter().map(Arg).collect();
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&statement, &params).map_err(backend)?;
        store_rows(&rows)
    }

    fn control(&mut self, sql: &str) -> StoreResult<()> {
        // The simple protocol: one round trip, where a prepared statement takes two.
        self.client.batch_execute(sql).map_err(backend)
    }
}

/// The read pool's connection manager.
pub struct ReadConnections(pub Target);

impl r2d2::ManageConnection for ReadConnections {
    type Connection = PgConn;
    type Error = StoreError;

    fn connect(&self) -> Result<PgConn, StoreError> {
        self.0.connect().map(PgConn::new)
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), StoreError> {
        conn.client.simple_query("").map(|_| ()).map_err(backend)
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_closed()
    }
}

/// The channel name of a deployment (a PostgreSQL identifier).
pub fn channel_for(lock_key: i64) -> String {
    format!("{READY_CHANNEL}_{:x}", lock_key as u64)
}

/// The channel on which a deployment's nodes relay task events to each other.
pub fn events_channel_for(lock_key: i64) -> String {
    format!("qtask_events_{:x}", lock_key as u64)
}
