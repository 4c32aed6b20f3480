//! Read queries, run on the pool of read-only connections.

use crate::args;
use crate::sql::{Db, Dialect, Row, Value as SqlValue};
use crate::writes::{effect_from_json, parse_object};
use qtask_core::{
    AccountId, Region, RequestId, ResourceId, ResourceState, SecretId, TaskError, TaskState,
    UnixMillis,
};
use qtask_store::*;
use serde_json::Value;

/// A task's own columns: [`TASK_COLUMNS`] without the queue position.
macro_rules! task_fields {
    () => {
        "id, account_id, group_id, action, resource_id, region, params, state, attempts, \
         created_at, started_at, finished_at, error_code, error_message, result, effect, \
         not_before, lease_owner, lease_expires_at, fence, cancel_requested"
    };
}

/// [`TASK_COLUMNS`], for `concat!`.
macro_rules! task_columns {
    () => {
        concat!(
            task_fields!(),
            ", CASE WHEN state = 'QUEUED' THEN (SELECT MAX(b.id) FROM tasks b \
                WHERE b.account_id = tasks.account_id AND b.resource_id = tasks.resource_id \
                  AND b.id < tasks.id AND b.state IN ('QUEUED', 'RUNNING')) END, \
             CASE WHEN state = 'QUEUED' THEN (SELECT COUNT(*) FROM tasks b \
                WHERE b.account_id = tasks.account_id AND b.resource_id = tasks.resource_id \
                  AND b.id < tasks.id AND b.state IN ('QUEUED', 'RUNNING')) END"
        )
    };
}

/// A task's columns, in the order [`task_from_row`] reads them; the table must be
/// named `tasks`. A QUEUED task waiting behind others on its resource gets the task
/// just ahead of it and its position, from the index of unfinished tasks by resource
/// (the condition on `b.state` is that partial index's, so it applies).
pub const TASK_COLUMNS: &str = task_columns!();

/// One task by ID, whatever its account (the writer's reads).
pub const TASK_BY_ID_SQL: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");

/// One task of an account.
pub const TASK_OF_ACCOUNT_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE id = ?1 AND account_id = ?2"
);

/// A chain's tasks.
const GROUP_TASKS_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE group_id = ?1 ORDER BY id"
);

/// [`TASK_COLUMNS`] of a task known not to be QUEUED (so without a queue position), for
/// `UPDATE … RETURNING`, whose row the position's subqueries cannot name; for `concat!`.
macro_rules! running_task_columns {
    () => {
        concat!(
            $crate::reads::task_fields!(),
            ", CAST(NULL AS BIGINT), CAST(NULL AS BIGINT)"
        )
    };
}
pub(crate) use {running_task_columns, task_fields};

fn bad_column(index: usize, message: String) -> StoreError {
    StoreError::Backend(format!("column {index}: {message}"))
}

/// A stored task or group ID.
pub fn stored_id(value: i64) -> StoreResult<RequestId> {
    RequestId::new(value as u64).map_err(|e| StoreError::Backend(e.to_string()))
}

fn json_column(index: usize, text: Option<String>) -> StoreResult<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| bad_column(index, e.to_string())))
        .transpose()
}

fn region(index: usize, text: String) -> StoreResult<Region> {
    text.parse()
        .map_err(|_| bad_column(index, format!("unknown region {text}")))
}

pub fn task_from_row(row: &Row) -> StoreResult<TaskRecord> {
    let state: String = row.get(7)?;
    let error_code: Option<u32> = row.get(12)?;
    Ok(TaskRecord {
        id: stored_id(row.get(0)?)?,
        account: AccountId(row.get(1)?),
        group: row.get::<Option<i64>>(2)?.map(stored_id).transpose()?,
        action: row.get(3)?,
        resource: ResourceId::from_stored(row.get(4)?),
        region: region(5, row.get(5)?)?,
        params: json_column(6, row.get(6)?)?.unwrap_or(Value::Null),
        state: state
            .parse()
            .map_err(|_| bad_column(7, format!("unknown task state {state}")))?,
        attempts: row.get(8)?,
        created_at: row.get(9)?,
        started_at: row.get(10)?,
        finished_at: row.get(11)?,
        error: error_code
            .map(|code| {
                Ok::<_, StoreError>(TaskError {
                    code,
                    message: row.get::<Option<String>>(13)?.unwrap_or_default(),
                })
            })
            .transpose()?,
        result: json_column(14, row.get(14)?)?,
        effect: effect_from_json(&row.get::<String>(15)?)
            .map_err(|e| bad_column(15, e.to_string()))?,
        run: run_info(row, state == "QUEUED", error_code.is_some())?,
    })
}

fn run_info(row: &Row, queued: bool, failed_before: bool) -> StoreResult<RunInfo> {
    let not_before: i64 = row.get(16)?;
    let lease = match (row.get::<Option<String>>(17)?, row.get(18)?) {
        (Some(owner), Some(expires_at)) => Some(LeaseInfo { owner, expires_at }),
        _ => None,
    };
    let blocked_by = match row.get::<Option<i64>>(21)? {
        Some(ahead) => Some((stored_id(ahead)?, row.get::<u32>(22)?)),
        None => None,
    };
    Ok(RunInfo {
        next_attempt_at: (queued && failed_before && not_before > 0).then_some(not_before),
        lease,
        fence: row.get::<i64>(19)? as u64,
        cancel_requested: row.get(20)?,
        blocked_by,
    })
}

pub fn purged(db: &mut dyn Db, account: AccountId, id: RequestId) -> StoreResult<bool> {
    let up_to: Option<i64> = db.query_opt(
        "SELECT purged_up_to FROM accounts WHERE id = ?1",
        args![account.0],
        |r| r.get(0),
    )?;
    Ok(up_to.is_some_and(|up_to| id.get() as i64 <= up_to))
}

pub fn stats(db: &mut dyn Db) -> StoreResult<StoreStats> {
    let tasks = db.query_all(
        // Kept by the writer (inserts) and by triggers (state changes, deletions): a
        // scrape never counts the tasks themselves.
        "SELECT state, n FROM task_state_counts WHERE n > 0",
        args![],
        |r: &Row| {
            let state: String = r.get(0)?;
            let state = state
                .parse::<TaskState>()
                .map_err(|e| bad_column(0, e.to_string()))?;
            Ok((state, r.get::<u64>(1)?))
        },
    )?;
    let fenced_completions = db.query_one(
        "SELECT value FROM meta WHERE key = 'fenced_completions'",
        args![],
        |r: &Row| r.get::<u64>(0),
    )?;
    Ok(StoreStats {
        tasks,
        fenced_completions,
    })
}

/// The repeated state test lets SQLite use the small partial index of unfinished tasks;
/// the resource's `active_task` says whether the task heads its queue.
pub const QUEUE_SUMMARY_SQL: &str = "SELECT COUNT(*),
       MIN(CASE WHEN t.created_at > t.not_before THEN t.created_at ELSE t.not_before END)
     FROM tasks t JOIN resources r ON r.id = t.resource_id AND r.active_task = t.id
     WHERE t.state IN ('QUEUED', 'RUNNING') AND t.state = 'QUEUED' AND t.not_before <= ?1";

pub fn queue_summary(db: &mut dyn Db, now: UnixMillis) -> StoreResult<QueueSummary> {
    db.query_one(QUEUE_SUMMARY_SQL, args![now], |r| {
        Ok(QueueSummary {
            ready: r.get::<i64>(0)? as u64,
            oldest_ready_since: r.get(1)?,
        })
    })
}

/// The columns [`key_from_row`] reads, as a literal for `concat!`.
macro_rules! key_columns {
    () => {
        "k.secret_id, k.secret_key, k.account_id, a.name, k.enabled, k.created_at, \
         k.allowed_actions, k.allowed_resources, k.read_only, k.rate_per_second, k.rate_burst, \
         k.is_main, a.blocked"
    };
}

pub fn api_key(db: &mut dyn Db, secret_id: &SecretId) -> StoreResult<Option<ApiKey>> {
    // Every call reads its key: the statement text is a constant, not formatted each time.
    const SQL: &str = concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.secret_id = ?1"
    );
    db.query_opt(SQL, args![secret_id.as_str()], key_from_row)
}

fn key_from_row(row: &Row) -> StoreResult<ApiKey> {
    let list = |index: usize| -> StoreResult<Option<Vec<String>>> {
        row.get::<Option<String>>(index)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| bad_column(index, format!("bad JSON list {text}: {e}")))
            })
            .transpose()
    };
    let rate = match (row.get::<Option<u32>>(9)?, row.get::<Option<u32>>(10)?) {
        (Some(per_second), Some(burst)) => Some(RequestRate { per_second, burst }),
        _ => None,
    };
    let secret_id: String = row.get(0)?;
    Ok(ApiKey {
        secret_id: secret_id
            .parse()
            .map_err(|_| bad_column(0, format!("bad SecretId {secret_id}")))?,
        secret_key: row.get(1)?,
        account: AccountId(row.get(2)?),
        account_name: row.get(3)?,
        enabled: row.get(4)?,
        created_at: row.get(5)?,
        access: KeyAccess {
            actions: list(6)?,
            resources: list(7)?,
            read_only: row.get(8)?,
            rate,
        },
        main: row.get(11)?,
        account_blocked: row.get(12)?,
    })
}

pub fn keys(db: &mut dyn Db) -> StoreResult<Vec<ApiKey>> {
    db.query_all(
        concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k JOIN accounts a ON a.id = k.account_id",
            " ORDER BY k.created_at, k.secret_id"
        ),
        args![],
        key_from_row,
    )
}

pub fn account_by_name(db: &mut dyn Db, name: &str) -> StoreResult<Option<AccountId>> {
    db.query_opt(
        "SELECT id FROM accounts WHERE name = ?1",
        args![name],
        |r| r.get(0).map(AccountId),
    )
}

pub fn task(db: &mut dyn Db, account: AccountId, id: RequestId) -> StoreResult<Option<TaskRecord>> {
    db.query_opt(
        TASK_OF_ACCOUNT_SQL,
        args![id.get() as i64, account.0],
        task_from_row,
    )
}

/// The task an ID names, or the tasks of the chain it names, with the chain's action and
/// creation time after the task's columns (NULL for a task). Task and chain IDs come from
/// one sequence, so at most one of the two matches. One statement, so one snapshot and, on
/// SQLite, one taking of the read lock: the task, the chain's head and its tasks as three
/// statements in a transaction cost `describe` twice as much store time. The account is
/// a filter (`+`), not a search: SQLite would otherwise walk the account's tasks.
pub const NAMED_SQL: &str = concat!(
    "SELECT ",
    task_columns!(),
    ", (SELECT action FROM task_groups WHERE id = ?1 AND account_id = ?2), \
       (SELECT created_at FROM task_groups WHERE id = ?1 AND account_id = ?2) \
     FROM tasks WHERE (id = ?1 OR group_id = ?1) AND +account_id = ?2 ORDER BY id"
);

/// The columns of [`NAMED_SQL`] after the task's.
const NAMED_HEAD_COLUMN: usize = 23;

/// The task or else the group `id` names.
pub fn named(db: &mut dyn Db, account: AccountId, id: RequestId) -> StoreResult<Option<Named>> {
    let mut head = None;
    let mut tasks = db.query_all(NAMED_SQL, args![id.get() as i64, account.0], |row| {
        if head.is_none() {
            head = row
                .get::<Option<String>>(NAMED_HEAD_COLUMN)?
                .zip(row.get::<Option<i64>>(NAMED_HEAD_COLUMN + 1)?);
        }
        task_from_row(row)
    })?;
    if tasks.is_empty() {
        // A chain whose tasks are all gone (or no such ID): its head alone, if any.
        return group(db, account, id).map(|found| found.map(Named::Chain));
    }
    if tasks.len() == 1 && tasks[0].id == id {
        return Ok(tasks.pop().map(|task| Named::Task(Box::new(task))));
    }
    Ok(head.map(|(action, created_at)| {
        Named::Chain(GroupRecord {
            id,
            action,
            created_at,
            tasks,
        })
    }))
}

/// Runs several read statements in one transaction on SQLite, where each statement on
/// its own takes and drops the database's shared lock and the WAL's read mark (locks
/// under a process-wide mutex and `fcntl`: 16 % of a `describe` profile). On PostgreSQL
/// a transaction would cost two more round trips, so the statements run as they are.
fn in_one_read<T>(
    db: &mut dyn Db,
    reads: impl FnOnce(&mut dyn Db) -> StoreResult<T>,
) -> StoreResult<T> {
    if db.dialect() != Dialect::Sqlite {
        return reads(db);
    }
    db.control("BEGIN")?;
    let result = reads(db);
    // Ended whatever the reads gave: a pooled connection left inside a transaction
    // would hold its snapshot, and the WAL could never be checkpointed past it.
    let ended = db.control(if result.is_ok() { "COMMIT" } else { "ROLLBACK" });
    let value = result?;
    ended.map(|()| value)
}

/// A group and its tasks, from one snapshot (on SQLite; see [`in_one_read`]).
pub fn group(
    db: &mut dyn Db,
    account: AccountId,
    id: RequestId,
) -> StoreResult<Option<GroupRecord>> {
    in_one_read(db, |db| group_rows(db, account, id))
}

fn group_rows(
    db: &mut dyn Db,
    account: AccountId,
    id: RequestId,
) -> StoreResult<Option<GroupRecord>> {
    let head: Option<(String, i64)> = db.query_opt(
        "SELECT action, created_at FROM task_groups WHERE id = ?1 AND account_id = ?2",
        args![id.get() as i64, account.0],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((action, created_at)) = head else {
        return Ok(None);
    };
    let tasks = db.query_all(GROUP_TASKS_SQL, args![id.get() as i64], task_from_row)?;
    Ok(Some(GroupRecord {
        id,
        action,
        created_at,
        tasks,
    }))
}

/// A WHERE clause built from optional filters, with its parameters.
struct Conditions {
    sql: Vec<String>,
    args: Vec<SqlValue<'static>>,
}

impl Conditions {
    fn new() -> Self {
        Self {
            sql: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a condition; `?` in it stands for the next argument(s), in order.
    fn push(&mut self, condition: &str, args: Vec<SqlValue<'static>>) {
        let mut numbered = String::with_capacity(condition.len() + 8);
        let mut next = self.args.len();
        for ch in condition.chars() {
            if ch == '?' {
                next += 1;
                numbered.push_str(&format!("?{next}"));
            } else {
                numbered.push(ch);
            }
        }
        self.sql.push(numbered);
        self.args.extend(args);
    }

    /// Adds `column IN (…)` over `values`; nothing when there are none (no filter).
    fn push_in(&mut self, column: &str, values: impl IntoIterator<Item = String>) {
        let values: Vec<SqlValue<'static>> = values.into_iter().map(SqlValue::from).collect();
        if values.is_empty() {
            return;
        }
        let condition = format!("{column} IN ({})", Self::placeholders(values.len(), "?"));
        self.push(&condition, values);
    }

    fn placeholders(n: usize, one: &str) -> String {
        vec![one; n].join(", ")
    }

    fn clause(&self) -> String {
        self.sql.join(" AND ")
    }

    fn count(&self, db: &mut dyn Db, from: &str) -> StoreResult<u64> {
        let sql = format!("SELECT COUNT(*) FROM {from} WHERE {}", self.clause());
        db.query_one(&sql, &self.args, |r: &Row| r.get(0))
    }
}

pub fn tasks(
    db: &mut dyn Db,
    account: AccountId,
    filter: &TaskFilter,
    page: Page,
) -> StoreResult<Listing<TaskRecord>> {
    let mut c = Conditions::new();
    c.push("account_id = ?", vec![account.0.into()]);
    c.push_in("state", filter.states.iter().map(|s| s.as_str().to_owned()));
    if let Some(action) = &filter.action {
        c.push("action = ?", vec![action.clone().into()]);
    }
    if let Some(resource) = &filter.resource {
        c.push("resource_id = ?", vec![resource.as_str().to_owned().into()]);
    }
    if let Some(from) = filter.created_from {
        c.push("created_at >= ?", vec![from.into()]);
    }
    if let Some(to) = filter.created_to {
        c.push("created_at <= ?", vec![to.into()]);
    }
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE {} ORDER BY id DESC LIMIT {} OFFSET {}",
        c.clause(),
        page.limit,
        page.offset
    );
    // The total and the page from one snapshot (on SQLite), so they agree.
    in_one_read(db, |db| {
        let total = c.count(db, "tasks")?;
        let items = db.query_all(&sql, &c.args, task_from_row)?;
        Ok(Listing { total, items })
    })
}

/// A JSON scalar as a SQL argument that compares equal to what SQLite's `json_extract`
/// yields.
fn sqlite_json_arg(value: &Value) -> SqlValue<'static> {
    match value {
        Value::Number(n) if n.is_i64() => n.as_i64().into(),
        Value::Bool(b) => (*b).into(),
        Value::String(s) => s.clone().into(),
        other => other.to_string().into(),
    }
}

/// How a dialect reads the attribute at a dotted path: the SQL (one `?` for the path)
/// and the path argument.
fn attr_at(dialect: Dialect, path: &str) -> (&'static str, SqlValue<'static>) {
    match dialect {
        Dialect::Sqlite => ("json_extract(r.attrs, ?)", format!("$.{path}").into()),
        Dialect::Postgres => (
            "(r.attrs::jsonb #> string_to_array(?, '.'))",
            path.to_owned().into(),
        ),
    }
}

pub fn resources(
    db: &mut dyn Db,
    account: AccountId,
    filter: &ResourceFilter,
    page: Page,
) -> StoreResult<Listing<ResourceRecord>> {
    let dialect = db.dialect();
    let mut c = Conditions::new();
    c.push("r.account_id = ?", vec![account.0.into()]);
    c.push("r.kind = ?", vec![filter.kind.clone().into()]);
    c.push(
        "r.region = ?",
        vec![filter.region.as_str().to_owned().into()],
    );
    c.push_in("r.id", filter.ids.iter().map(|i| i.as_str().to_owned()));
    c.push_in(
        "r.state",
        filter.states.iter().map(|s| s.as_str().to_owned()),
    );
    if let Some(word) = &filter.search {
        let (name, path) = attr_at(dialect, filter.name_attr);
        let condition = match dialect {
            Dialect::Sqlite => {
                format!("(instr(r.id, ?) > 0 OR instr(COALESCE({name}, ''), ?) > 0)")
            }
            Dialect::Postgres => format!(
                "(strpos(r.id, ?) > 0 OR strpos(COALESCE({}, ''), ?) > 0)",
                name.replace(" #> ", " #>> ")
            ),
        };
        c.push(
            &condition,
            vec![word.clone().into(), path, word.clone().into()],
        );
    }
    for (attr, values) in &filter.attr_in {
        let (at, path) = attr_at(dialect, attr);
        let mut args = vec![path];
        let one = match dialect {
            Dialect::Sqlite => {
                args.extend(values.iter().map(sqlite_json_arg));
                "?"
            }
            Dialect::Postgres => {
                args.extend(values.iter().map(|v| SqlValue::from(v.to_string())));
                "?::text::jsonb"
            }
        };
        c.push(
            &format!("{at} IN ({})", Conditions::placeholders(values.len(), one)),
            args,
        );
    }
    let sql = format!(
        "SELECT r.id, r.kind, r.region, r.state, r.attrs, r.created_at, r.active_task,
                t.id, t.action, t.state, t.error_code, t.error_message
         FROM resources r LEFT JOIN tasks t ON t.id = r.last_task
         WHERE {} ORDER BY r.created_at DESC, r.id DESC LIMIT {} OFFSET {}",
        c.clause(),
        page.limit,
        page.offset
    );
    // The total and the page from one snapshot (on SQLite), so they agree.
    let (total, items) = in_one_read(db, |db| {
        let total = c.count(db, "resources r")?;
        Ok((total, db.query_all(&sql, &c.args, resource_from_row)?))
    })?;
    Ok(Listing { total, items })
}

fn resource_from_row(row: &Row) -> StoreResult<ResourceRecord> {
    let last_task: Option<i64> = row.get(7)?;
    let last_operation = match last_task {
        None => None,
        Some(task) => {
            let state: String = row.get(9)?;
            let error_code: Option<u32> = row.get(10)?;
            Some(LastOperation {
                task: stored_id(task)?,
                action: row.get(8)?,
                state: state
                    .parse::<TaskState>()
                    .map_err(|e| bad_column(9, e.to_string()))?,
                error: match error_code {
                    Some(code) => Some(TaskError {
                        code,
                        message: row.get::<Option<String>>(11)?.unwrap_or_default(),
                    }),
                    None => None,
                },
            })
        }
    };
    Ok(ResourceRecord {
        id: ResourceId::from_stored(row.get(0)?),
        kind: row.get(1)?,
        region: region(2, row.get(2)?)?,
        state: ResourceState(row.get(3)?),
        attrs: parse_object(&row.get::<String>(4)?)?,
        created_at: row.get(5)?,
        active_task: row.get::<Option<i64>>(6)?.map(stored_id).transpose()?,
        last_operation,
    })
}
