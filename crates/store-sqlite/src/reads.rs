//! Read queries, run on the pool of read-only connections.

use crate::writer::backend;
use crate::writes::{effect_from_json, parse_object};
use qtask_core::{
    AccountId, Region, RequestId, ResourceId, ResourceState, SecretId, TaskError, TaskState,
    UnixMillis,
};
use qtask_store::*;
use r2d2_sqlite::rusqlite::types::{ToSql, Type};
use r2d2_sqlite::rusqlite::{self, params, params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;

/// A task's columns, in the order [`task_from_row`] reads them; the table must be
/// named `tasks`. A QUEUED task waiting behind others on its resource gets the task
/// just ahead of it and its position (both from the index on resource and ID).
pub const TASK_COLUMNS: &str =
    "id, account_id, group_id, action, resource_id, region, params, state, attempts, \
     created_at, started_at, finished_at, error_code, error_message, result, effect, \
     not_before, lease_owner, lease_expires_at, fence, cancel_requested, \
     CASE WHEN state = 'QUEUED' THEN (SELECT MAX(b.id) FROM tasks b \
        WHERE b.account_id = tasks.account_id AND b.resource_id = tasks.resource_id \
          AND b.id < tasks.id AND b.state IN ('QUEUED', 'RUNNING')) END, \
     CASE WHEN state = 'QUEUED' THEN (SELECT COUNT(*) FROM tasks b \
        WHERE b.account_id = tasks.account_id AND b.resource_id = tasks.resource_id \
          AND b.id < tasks.id AND b.state IN ('QUEUED', 'RUNNING')) END";

fn bad_column(index: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Text, message.into())
}

fn request_id(index: usize, value: i64) -> rusqlite::Result<RequestId> {
    RequestId::new(value as u64).map_err(|e| bad_column(index, e.to_string()))
}

fn json_column(index: usize, text: Option<String>) -> rusqlite::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| bad_column(index, e.to_string())))
        .transpose()
}

fn region(index: usize, text: String) -> rusqlite::Result<Region> {
    text.parse()
        .map_err(|_| bad_column(index, format!("unknown region {text}")))
}

pub fn task_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let state: String = row.get(7)?;
    let error_code: Option<u32> = row.get(12)?;
    Ok(TaskRecord {
        id: request_id(0, row.get(0)?)?,
        account: AccountId(row.get(1)?),
        group: row
            .get::<_, Option<i64>>(2)?
            .map(|g| request_id(2, g))
            .transpose()?,
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
                Ok::<_, rusqlite::Error>(TaskError {
                    code,
                    message: row.get::<_, Option<String>>(13)?.unwrap_or_default(),
                })
            })
            .transpose()?,
        result: json_column(14, row.get(14)?)?,
        effect: effect_from_json(&row.get::<_, String>(15)?)
            .map_err(|e| bad_column(15, e.to_string()))?,
        run: run_info(row, state == "QUEUED", error_code.is_some())?,
    })
}

fn run_info(row: &Row<'_>, queued: bool, failed_before: bool) -> rusqlite::Result<RunInfo> {
    let not_before: i64 = row.get(16)?;
    let lease = match (row.get::<_, Option<String>>(17)?, row.get(18)?) {
        (Some(owner), Some(expires_at)) => Some(LeaseInfo { owner, expires_at }),
        _ => None,
    };
    let blocked_by = match row.get::<_, Option<i64>>(21)? {
        Some(ahead) => Some((request_id(21, ahead)?, row.get::<_, u32>(22)?)),
        None => None,
    };
    Ok(RunInfo {
        next_attempt_at: (queued && failed_before && not_before > 0).then_some(not_before),
        lease,
        fence: row.get::<_, i64>(19)? as u64,
        cancel_requested: row.get(20)?,
        blocked_by,
    })
}

pub fn purged(conn: &Connection, account: AccountId, id: RequestId) -> StoreResult<bool> {
    let up_to: Option<i64> = conn
        .prepare_cached("SELECT purged_up_to FROM accounts WHERE id = ?1")
        .and_then(|mut s| s.query_row([account.0], |r| r.get(0)).optional())
        .map_err(backend)?;
    Ok(up_to.is_some_and(|up_to| id.get() as i64 <= up_to))
}

pub fn stats(conn: &Connection) -> StoreResult<StoreStats> {
    let mut stmt = conn
        .prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        .map_err(backend)?;
    let tasks = stmt
        .query_map([], |r| {
            let state: String = r.get(0)?;
            let state = state
                .parse::<TaskState>()
                .map_err(|e| bad_column(0, e.to_string()))?;
            Ok((state, r.get::<_, i64>(1)? as u64))
        })
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    let fenced_completions = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'fenced_completions'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)? as u64;
    Ok(StoreStats {
        tasks,
        fenced_completions,
    })
}

pub fn queue_summary(conn: &Connection, now: UnixMillis) -> StoreResult<QueueSummary> {
    // The repeated state test lets SQLite use the small partial index of unfinished
    // tasks; the resource's `active_task` says whether the task heads its queue.
    conn.prepare_cached(
        "SELECT COUNT(*), MIN(MAX(t.created_at, t.not_before))
         FROM tasks t JOIN resources r ON r.id = t.resource_id AND r.active_task = t.id
         WHERE t.state IN ('QUEUED', 'RUNNING') AND t.state = 'QUEUED' AND t.not_before <= ?1",
    )
    .and_then(|mut s| {
        s.query_row([now], |r| {
            Ok(QueueSummary {
                ready: r.get::<_, i64>(0)? as u64,
                oldest_ready_since: r.get(1)?,
            })
        })
    })
    .map_err(backend)
}

pub fn api_key(conn: &Connection, secret_id: &SecretId) -> StoreResult<Option<ApiKey>> {
    conn.prepare_cached(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.secret_id = ?1"),
    )
    .and_then(|mut s| s.query_row([secret_id.as_str()], key_from_row).optional())
    .map_err(backend)
}

const KEY_COLUMNS: &str = "k.secret_id, k.secret_key, k.account_id, a.name, k.enabled, k.created_at, \
     k.allowed_actions, k.allowed_resources, k.read_only, k.rate_per_second, k.rate_burst, k.is_main, a.blocked";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let list = |index: usize| -> rusqlite::Result<Option<Vec<String>>> {
        row.get::<_, Option<String>>(index)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| bad_column(index, format!("bad JSON list {text}: {e}")))
            })
            .transpose()
    };
    let rate = match (
        row.get::<_, Option<u32>>(9)?,
        row.get::<_, Option<u32>>(10)?,
    ) {
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

pub fn keys(conn: &Connection) -> StoreResult<Vec<ApiKey>> {
    let mut stmt = conn
        .prepare(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.id = k.account_id ORDER BY k.created_at, k.secret_id"),
        )
        .map_err(backend)?;
    let keys = stmt
        .query_map([], key_from_row)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend);
    keys
}

pub fn account_by_name(conn: &Connection, name: &str) -> StoreResult<Option<AccountId>> {
    conn.prepare_cached("SELECT id FROM accounts WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0).map(AccountId)).optional())
        .map_err(backend)
}

pub fn task(
    conn: &Connection,
    account: AccountId,
    id: RequestId,
) -> StoreResult<Option<TaskRecord>> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1 AND account_id = ?2");
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row(params![id.get() as i64, account.0], task_from_row)
                .optional()
        })
        .map_err(backend)
}

pub fn group(
    conn: &Connection,
    account: AccountId,
    id: RequestId,
) -> StoreResult<Option<GroupRecord>> {
    let head: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT action, created_at FROM task_groups WHERE id = ?1 AND account_id = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![id.get() as i64, account.0], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let Some((action, created_at)) = head else {
        return Ok(None);
    };
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE group_id = ?1 ORDER BY id");
    let tasks = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map([id.get() as i64], task_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
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
    args: Vec<Box<dyn ToSql>>,
}

impl Conditions {
    fn new() -> Self {
        Self {
            sql: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a condition; `?` in it stands for the next argument(s), in order.
    fn push(&mut self, condition: &str, args: Vec<Box<dyn ToSql>>) {
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
    fn push_in<T: ToSql + 'static>(&mut self, column: &str, values: impl IntoIterator<Item = T>) {
        let values: Vec<Box<dyn ToSql>> = values
            .into_iter()
            .map(|v| Box::new(v) as Box<dyn ToSql>)
            .collect();
        if values.is_empty() {
            return;
        }
        let condition = format!("{column} IN ({})", Self::placeholders(values.len()));
        self.push(&condition, values);
    }

    fn placeholders(n: usize) -> String {
        vec!["?"; n].join(", ")
    }

    fn clause(&self) -> String {
        self.sql.join(" AND ")
    }

    fn count(&self, conn: &Connection, from: &str) -> StoreResult<u64> {
        let sql = format!("SELECT COUNT(*) FROM {from} WHERE {}", self.clause());
        conn.prepare(&sql)
            .and_then(|mut s| {
                s.query_row(params_from_iter(self.args.iter()), |r| r.get::<_, i64>(0))
            })
            .map(|n| n as u64)
            .map_err(backend)
    }
}

pub fn tasks(
    conn: &Connection,
    account: AccountId,
    filter: &TaskFilter,
    page: Page,
) -> StoreResult<Listing<TaskRecord>> {
    let mut c = Conditions::new();
    c.push("account_id = ?", vec![Box::new(account.0)]);
    c.push_in("state", filter.states.iter().map(|s| s.as_str()));
    if let Some(action) = &filter.action {
        c.push("action = ?", vec![Box::new(action.clone())]);
    }
    if let Some(resource) = &filter.resource {
        c.push(
            "resource_id = ?",
            vec![Box::new(resource.as_str().to_owned())],
        );
    }
    if let Some(from) = filter.created_from {
        c.push("created_at >= ?", vec![Box::new(from)]);
    }
    if let Some(to) = filter.created_to {
        c.push("created_at <= ?", vec![Box::new(to)]);
    }
    let total = c.count(conn, "tasks")?;
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE {} ORDER BY id DESC LIMIT {} OFFSET {}",
        c.clause(),
        page.limit,
        page.offset
    );
    let items = conn
        .prepare(&sql)
        .and_then(|mut s| {
            s.query_map(params_from_iter(c.args.iter()), task_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    Ok(Listing { total, items })
}

/// A JSON scalar as a SQL argument that compares equal to what `json_extract` yields.
fn json_arg(value: &Value) -> Box<dyn ToSql> {
    match value {
        Value::Number(n) if n.is_i64() => Box::new(n.as_i64()),
        Value::Bool(b) => Box::new(*b),
        Value::String(s) => Box::new(s.clone()),
        other => Box::new(other.to_string()),
    }
}

pub fn resources(
    conn: &Connection,
    account: AccountId,
    filter: &ResourceFilter,
    page: Page,
) -> StoreResult<Listing<ResourceRecord>> {
    let mut c = Conditions::new();
    c.push("r.account_id = ?", vec![Box::new(account.0)]);
    c.push("r.kind = ?", vec![Box::new(filter.kind.clone())]);
    c.push("r.region = ?", vec![Box::new(filter.region.as_str())]);
    c.push_in("r.id", filter.ids.iter().map(|i| i.as_str().to_owned()));
    c.push_in(
        "r.state",
        filter.states.iter().map(|s| s.as_str().to_owned()),
    );
    if let Some(word) = &filter.search {
        let path = format!("$.{}", filter.name_attr);
        c.push(
            "(instr(r.id, ?) > 0 OR instr(COALESCE(json_extract(r.attrs, ?), ''), ?) > 0)",
            vec![
                Box::new(word.clone()),
                Box::new(path),
                Box::new(word.clone()),
            ],
        );
    }
    for (attr, values) in &filter.attr_in {
        let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(format!("$.{attr}"))];
        args.extend(values.iter().map(json_arg));
        c.push(
            &format!(
                "json_extract(r.attrs, ?) IN ({})",
                Conditions::placeholders(values.len())
            ),
            args,
        );
    }
    let total = c.count(conn, "resources r")?;
    let sql = format!(
        "SELECT r.id, r.kind, r.region, r.state, r.attrs, r.created_at, r.active_task,
                t.id, t.action, t.state, t.error_code, t.error_message
         FROM resources r LEFT JOIN tasks t ON t.id = r.last_task
         WHERE {} ORDER BY r.created_at DESC, r.id DESC LIMIT {} OFFSET {}",
        c.clause(),
        page.limit,
        page.offset
    );
    let mut stmt = conn.prepare(&sql).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(c.args.iter()), |row| {
            let attrs: String = row.get(4)?;
            let last_task: Option<i64> = row.get(7)?;
            let last_operation = match last_task {
                None => None,
                Some(task) => {
                    let state: String = row.get(9)?;
                    let error_code: Option<u32> = row.get(10)?;
                    Some(LastOperation {
                        task: request_id(7, task)?,
                        action: row.get(8)?,
                        state: state
                            .parse::<TaskState>()
                            .map_err(|e| bad_column(9, e.to_string()))?,
                        error: match error_code {
                            Some(code) => Some(TaskError {
                                code,
                                message: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
                            }),
                            None => None,
                        },
                    })
                }
            };
            Ok((
                ResourceRecord {
                    id: ResourceId::from_stored(row.get(0)?),
                    kind: row.get(1)?,
                    region: region(2, row.get(2)?)?,
                    state: ResourceState(row.get(3)?),
                    attrs: Default::default(),
                    created_at: row.get(5)?,
                    active_task: row
                        .get::<_, Option<i64>>(6)?
                        .map(|t| request_id(6, t))
                        .transpose()?,
                    last_operation,
                },
                attrs,
            ))
        })
        .map_err(backend)?;
    let mut items = Vec::new();
    for row in rows {
        let (mut record, attrs) = row.map_err(backend)?;
        record.attrs = parse_object(&attrs)?;
        items.push(record);
    }
    Ok(Listing { total, items })
}
