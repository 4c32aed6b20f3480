//! A PostgreSQL connection as the shared store logic sees it: `?N` placeholders
//! rewritten to `$N`, statements prepared once per connection, values converted by the
//! column types the server reports.

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};
use qtask_store::{StoreError, StoreResult};
use qtask_store_sql::sql::{numbered_for_postgres, Db, Dialect, Row, Value};
use qtask_store_sql::writer::{WriteConn, READY_CHANNEL};
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
    pub config: postgres::Config,
    /// The advisory-lock key of the cluster-wide write lock; the maintenance lock is the
    /// next one. Derived from the schema, so several deployments can share a database.
    pub lock_key: i64,
    /// The channel on which nodes announce runnable tasks.
    pub channel: String,
    /// This process, in notification payloads (a node ignores its own).
    pub node: String,
}

impl Target {
    pub fn connect(&self) -> StoreResult<Client> {
        let mut client = self.config.connect(NoTls).map_err(backend)?;
        // A commit answered before it is durable would break qtask's promise, whatever
        // the server's default.
        client
            .batch_execute("SET synchronous_commit = on; SET client_min_messages = warning")
            .map_err(backend)?;
        Ok(client)
    }
}

/// A client that is dropped on a thread of its own: the blocking client owns a small
/// runtime, which must not be dropped on an async thread (the store may be dropped on
/// one).
pub struct OwnedClient(Option<Client>);

impl OwnedClient {
    pub fn new(client: Client) -> Self {
        Self(Some(client))
    }
}

impl std::ops::Deref for OwnedClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.0.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for OwnedClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.0.as_mut().expect("present until dropped")
    }
}

impl Drop for OwnedClient {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("qtask-pg-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

pub struct PgConn {
    client: OwnedClient,
    statements: HashMap<String, Statement>,
    /// Set on the writer's connection: what it needs to reconnect, lock and notify.
    target: Option<Target>,
}

impl PgConn {
    pub fn new(client: Client) -> Self {
        Self {
            client: OwnedClient::new(client),
            statements: HashMap::new(),
            target: None,
        }
    }

    /// The writer's connection: it takes the cluster-wide write lock in every batch and
    /// reconnects when the server went away.
    pub fn writer(target: Target) -> StoreResult<Self> {
        let mut conn = Self::new(target.connect()?);
        conn.target = Some(target);
        Ok(conn)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(&numbered_for_postgres(sql))
            .map_err(backend)?;
        // Listings put their page in the text: keep the cache bounded (dropping a
        // statement closes it on the server).
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A statement argument bound to a PostgreSQL parameter of whatever type the server
/// inferred for it.
#[derive(Debug)]
struct Arg<'a>(&'a Value<'a>);

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
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| column(row, i))
                    .collect::<StoreResult<Vec<_>>>()
                    .map(Row)
            })
            .collect()
    }

    fn control(&mut self, sql: &str) -> StoreResult<()> {
        // The simple protocol: one round trip, where a prepared statement takes two.
        self.client.batch_execute(sql).map_err(backend)
    }
}

impl WriteConn for PgConn {
    /// Always durable: on a shared database a lost claim could give its fencing token
    /// again while the node that drew it still runs the task.
    fn begin(&mut self, _sync: bool) -> StoreResult<()> {
        let target = self
            .target
            .clone()
            .ok_or_else(|| StoreError::Backend("not the writer's connection".into()))?;
        if self.client.is_closed() {
            tracing::warn!("the store's write connection was lost; reconnecting");
            self.client = OwnedClient::new(target.connect()?);
            self.statements.clear();
        }
        // Batches of all nodes take turns: see the writer's module documentation.
        self.control(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            target.lock_key
        ))
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.control("COMMIT")
    }

    fn rollback(&mut self) {
        let _ = self.control("ROLLBACK");
    }

    fn shared(&self) -> bool {
        true
    }

    fn notify_ready(&mut self) -> StoreResult<()> {
        let Some(target) = self.target.clone() else {
            return Ok(());
        };
        self.execute(
            "SELECT pg_notify(?1, ?2)",
            &[Value::from(target.channel), Value::from(target.node)],
        )?;
        Ok(())
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
