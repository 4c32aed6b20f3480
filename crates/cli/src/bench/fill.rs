//! `qtask bench fill`: fills a stopped server's store (SQLite, or the PostgreSQL database
//! of `--database`) with finished tasks, fast, to measure qtask with a large store. Rows
//! go straight into the existing tables in large transactions (no per-row fsync; COPY on
//! PostgreSQL), shaped like what qtask itself writes: instances created by RunInstances,
//! then stopped and started in chains of ten, across a few accounts — so every index
//! grows as it would in production.

use crate::database::Database;
use crate::{keys, serve};
use anyhow::Context;
use qtask_engine::catalog::new_resource_id;
use qtask_store_postgres::postgres;
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct FillArgs {
    /// The data directory of a stopped `qtask serve` (created if missing).
    #[arg(
        long,
        env = "QTASK_DATA_DIR",
        default_value = "qtask-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// `sqlite` (DATA_DIR/qtask.db) or the postgres:// URL the servers use (stop them
    /// first: the fill takes the deployment's write lock batch by batch, but a running
    /// node's counts and IDs in memory would not know of the rows).
    #[arg(long, env = "QTASK_DATABASE", default_value = "sqlite")]
    pub database: Database,
    /// Finished tasks to add.
    #[arg(long, value_name = "N")]
    pub tasks: u64,
    /// Accounts the tasks are spread over (besides the data directory's own, which
    /// gets its share too).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub accounts: u32,
    /// The master key file (as for `qtask serve`).
    #[arg(long, env = "QTASK_MASTER_KEY_FILE", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
}

/// Tasks each instance gets: its creation, then stops and starts.
const TASKS_PER_INSTANCE: u64 = 10;
/// Instances stopped or started by one chain.
const CHAIN_SIZE: usize = 10;
/// Tasks per transaction.
const BATCH: u64 = 200_000;
/// The filled history spans this long before now (well inside the default 7-day
/// retention, so the server keeps it).
const SPAN_MS: i64 = 24 * 3600 * 1000;

pub async fn run(args: FillArgs) -> anyhow::Result<()> {
    if args.tasks == 0 {
        anyhow::bail!("--tasks must be at least 1");
    }
    let started = Instant::now();
    crate::credentials::create_private_dir(&args.data_dir)?;
    // Refuses a data directory a running server holds.
    let _lock = serve::lock_data_dir(&args.data_dir)?;
    let accounts = prepare_accounts(&args).await?;
    let tasks = args.tasks;
    let (target, filled) = match &args.database {
        Database::Sqlite => {
            let path = args.data_dir.join(serve::DATABASE_FILE);
            let shown = path.display().to_string();
            let filled = tokio::task::spawn_blocking(move || {
                fill(&mut SqliteRows::open(&path)?, &accounts, tasks)
            })
            .await??;
            (shown, filled)
        }
        Database::Postgres(url) => {
            let url = url.clone();
            let shown = crate::database::redacted(&url);
            let filled = tokio::task::spawn_blocking(move || {
                fill(&mut PostgresRows::open(&url)?, &accounts, tasks)
            })
            .await??;
            (shown, filled)
        }
    };
    println!(
        "Filled {target} with {} finished tasks, {} instances and {} chains in {:.1} s",
        filled.tasks,
        filled.instances,
        filled.chains,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The accounts to fill: the data directory's own (created with its credentials as a
/// first start would) and `--accounts` more, each with a key.
async fn prepare_accounts(args: &FillArgs) -> anyhow::Result<Vec<i64>> {
    let store = crate::database::open_store(
        &args.data_dir,
        args.master_key_file.as_deref(),
        &args.database,
    )
    .await?;
    let store = store.as_ref();
    serve::bootstrap_credentials(store, &args.data_dir).await?;
    for n in 1..=args.accounts {
        let name = format!("bench-{n}");
        if store.account_by_name(&name).await?.is_none() {
            keys::create(store, &name).await?;
        }
    }
    let mut accounts = Vec::new();
    for key in store.keys().await? {
        let id = key.account.0;
        if !accounts.contains(&id) {
            accounts.push(id);
        }
    }
    Ok(accounts)
}

#[derive(Debug, Default)]
struct Filled {
    tasks: u64,
    instances: u64,
    chains: u64,
}

/// Where a fill's rows go: a batch at a time, each in a transaction of its own with
/// the counts of the tasks it adds and the IDs it used.
trait Rows {
    /// The next task ID and fencing token qtask would hand out.
    fn counters(&mut self) -> anyhow::Result<(i64, i64)>;
    /// Writes `batch` and moves the counters past it, in one transaction.
    fn write(&mut self, batch: &Batch, next_id: i64, next_fence: i64) -> anyhow::Result<()>;
    /// Makes everything written durable.
    fn finish(&mut self) -> anyhow::Result<()>;
}

fn fill(rows: &mut dyn Rows, accounts: &[i64], tasks: u64) -> anyhow::Result<Filled> {
    let (first_id, first_fence) = rows.counters()?;
    let now = qtask_engine::time::now_millis();
    let mut plan = Plan {
        next_id: first_id,
        next_fence: first_fence,
        accounts: accounts.to_vec(),
        clock: now - SPAN_MS,
        step_ms: (SPAN_MS / tasks.max(1) as i64).max(1),
        sets: 0,
        drawn: HashSet::new(),
        filled: Filled::default(),
    };
    let mut remaining = tasks;
    while remaining > 0 {
        let count = remaining.min(BATCH);
        let batch = plan.batch(count);
        rows.write(&batch, plan.next_id, plan.next_fence)?;
        remaining -= count;
    }
    rows.finish()?;
    Ok(plan.filled)
}

/// The rows of one transaction.
#[derive(Default)]
struct Batch {
    groups: Vec<GroupRow>,
    /// Each instance once, as its history left it.
    resources: Vec<ResourceRow>,
    tasks: Vec<TaskRow>,
}

struct GroupRow {
    id: i64,
    account: i64,
    action: &'static str,
    at: i64,
}

struct ResourceRow {
    id: String,
    account: i64,
    state: &'static str,
    attrs: String,
    created_at: i64,
    last_task: i64,
    updated_at: i64,
}

/// One finished task.
struct TaskRow {
    id: i64,
    account: i64,
    group: Option<i64>,
    action: &'static str,
    resource: String,
    params: std::rc::Rc<str>,
    effect: std::rc::Rc<str>,
    prior_state: &'static str,
    at: i64,
    fence: i64,
    allowed: Option<std::rc::Rc<str>>,
}

struct Plan {
    next_id: i64,
    next_fence: i64,
    accounts: Vec<i64>,
    clock: i64,
    step_ms: i64,
    /// Sets of instances written so far.
    sets: usize,
    /// The instance IDs drawn so far (IDs of one interval and counter never repeat within
    /// a fill; this makes sure).
    drawn: HashSet<String>,
    filled: Filled,
}

impl Plan {
    fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// `count` tasks: whole instance histories (a RunInstances task, then chains of
    /// StopInstances and StartInstances over ten instances), the last one cut short.
    fn batch(&mut self, count: u64) -> Batch {
        let mut batch = Batch::default();
        let mut left = count;
        while left > 0 {
            // Each set of ten instances goes to the next account in turn.
            let account = self.accounts[self.sets % self.accounts.len()];
            self.sets += 1;
            let size = CHAIN_SIZE.min(left as usize);
            let mut instances = Vec::with_capacity(size);
            for _ in 0..size {
                instances.push(self.create_instance(&mut batch, account));
            }
            left -= size as u64;
            let mut stop = true;
            for _ in 1..TASKS_PER_INSTANCE {
                if left < size as u64 {
                    break;
                }
                self.chain(&mut batch, account, &mut instances, stop);
                left -= size as u64;
                stop = !stop;
            }
            batch.resources.extend(instances);
        }
        batch
    }

    /// A finished StopInstances (or StartInstances) chain over `instances`.
    fn chain(
        &mut self,
        batch: &mut Batch,
        account: i64,
        instances: &mut [ResourceRow],
        stop: bool,
    ) {
        let (action, prior, transitional, after) = if stop {
            ("StopInstances", "RUNNING", "STOPPING", "STOPPED")
        } else {
            ("StartInstances", "STOPPED", "STARTING", "RUNNING")
        };
        let group = self.take_id();
        self.clock += self.step_ms;
        batch.groups.push(GroupRow {
            id: group,
            account,
            action,
            at: self.clock,
        });
        self.filled.chains += 1;
        let effect: std::rc::Rc<str> = json!({
            "transitional": transitional,
            "onSuccess": after,
            "onFailure": null,
            "patch": {},
        })
        .to_string()
        .into();
        let allowed: std::rc::Rc<str> = json!([prior]).to_string().into();
        let ids: Vec<&str> = instances.iter().map(|r| r.id.as_str()).collect();
        let params: std::rc::Rc<str> = json!({ "instanceIds": ids }).to_string().into();
        for instance in instances.iter_mut() {
            let task = self.take_id();
            let row = self.task_row(
                task,
                account,
                Some(group),
                action,
                &instance.id,
                params.clone(),
                effect.clone(),
                prior,
                Some(allowed.clone()),
            );
            batch.tasks.push(row);
            instance.state = after;
            instance.last_task = task;
            instance.updated_at = self.clock;
        }
    }

    /// A RUNNING instance and the finished RunInstances task that created it.
    fn create_instance(&mut self, batch: &mut Batch, account: i64) -> ResourceRow {
        let task = self.take_id();
        self.clock += self.step_ms;
        let n = self.filled.instances;
        let attrs = json!({
            "zone": "ap-guangzhou-1",
            "cpu": 1,
            "mem": 2,
            "storageSize": 0,
            "rootSize": 50,
            "bandwidth": 1,
            "instanceName": format!("fill-{n}"),
            "projectId": 0,
            "imageId": "img-22trbn9x",
            "os": "Ubuntu Server 22.04 LTS 64bit",
            "lanIp": format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
            "wanIp": format!("43.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
        })
        .to_string();
        // IDs as qtask draws them.
        let id = loop {
            let id = new_resource_id("ins").as_str().to_owned();
            if self.drawn.insert(id.clone()) {
                break id;
            }
        };
        self.filled.instances += 1;
        let effect = json!({
            "transitional": null,
            "onSuccess": "RUNNING",
            "onFailure": "LAUNCH_FAILED",
            "patch": {},
        })
        .to_string();
        let params = json!({ "goodsNum": "1", "instanceName": format!("fill-{n}") }).to_string();
        let row = self.task_row(
            task,
            account,
            None,
            "RunInstances",
            &id,
            params.into(),
            effect.into(),
            "PENDING",
            None,
        );
        batch.tasks.push(row);
        ResourceRow {
            id,
            account,
            state: "RUNNING",
            attrs,
            created_at: self.clock,
            last_task: task,
            updated_at: self.clock,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn task_row(
        &mut self,
        id: i64,
        account: i64,
        group: Option<i64>,
        action: &'static str,
        resource: &str,
        params: std::rc::Rc<str>,
        effect: std::rc::Rc<str>,
        prior_state: &'static str,
        allowed: Option<std::rc::Rc<str>>,
    ) -> TaskRow {
        let fence = self.next_fence;
        self.next_fence += 1;
        self.filled.tasks += 1;
        TaskRow {
            id,
            account,
            group,
            action,
            resource: resource.to_owned(),
            params,
            effect,
            prior_state,
            at: self.clock,
            fence,
            allowed,
        }
    }
}

/// A task's times: started 2 ms and finished 5 ms after it was created.
const STARTED_AFTER_MS: i64 = 2;
const FINISHED_AFTER_MS: i64 = 5;

struct SqliteRows {
    conn: Connection,
}

impl SqliteRows {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // A bulk load: a crash mid-fill may lose the fill, never qtask's own data, which
        // was committed before; the final checkpoint makes it all durable.
        conn.execute_batch(
            "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;",
        )?;
        Ok(Self { conn })
    }
}

impl Rows for SqliteRows {
    fn counters(&mut self) -> anyhow::Result<(i64, i64)> {
        let read = |key: &str| {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        };
        Ok((read("next_id")?, read("next_fence")?))
    }

    fn write(&mut self, batch: &Batch, next_id: i64, next_fence: i64) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        // In the order qtask writes them: a chain's head, then its tasks; an instance
        // before its first task refers to it.
        let mut group_insert = tx.prepare_cached(
            "INSERT INTO task_groups (id, account_id, action, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for group in &batch.groups {
            group_insert.execute(params![group.id, group.account, group.action, group.at])?;
        }
        let mut resource_insert = tx.prepare_cached(
            "INSERT INTO resources (id, account_id, kind, region, state, attrs, created_at, active_task, last_task, updated_at)
             VALUES (?1, ?2, 'instance', 'ap-guangzhou', ?3, ?4, ?5, NULL, ?6, ?7)",
        )?;
        for resource in &batch.resources {
            resource_insert.execute(params![
                resource.id,
                resource.account,
                resource.state,
                resource.attrs,
                resource.created_at,
                resource.last_task,
                resource.updated_at
            ])?;
        }
        let mut task_insert = tx.prepare_cached(
            "INSERT INTO tasks (id, account_id, group_id, action, resource_id, region, params, effect,
                                prior_state, state, attempts, created_at, started_at, finished_at,
                                fence, allowed)
             VALUES (?1, ?2, ?3, ?4, ?5, 'ap-guangzhou', ?6, ?7, ?8, 'SUCCESS', 1, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for row in &batch.tasks {
            task_insert.execute(params![
                row.id,
                row.account,
                row.group,
                row.action,
                row.resource,
                &*row.params,
                &*row.effect,
                row.prior_state,
                row.at,
                row.at + STARTED_AFTER_MS,
                row.at + FINISHED_AFTER_MS,
                row.fence,
                row.allowed.as_deref()
            ])?;
        }
        drop((group_insert, resource_insert, task_insert));
        // Counted as qtask's writer counts the tasks it inserts (no trigger does).
        tx.execute(
            "INSERT INTO task_state_counts (state, n) VALUES ('SUCCESS', ?1)
             ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
            [batch.tasks.len() as i64],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
            [next_id],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_fence'",
            [next_fence],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.conn.execute_batch("PRAGMA synchronous = FULL;")?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .optional()?;
        Ok(())
    }
}

struct PostgresRows {
    client: postgres::Client,
    /// Takes the deployment's write lock in the open transaction.
    lock: String,
}

impl PostgresRows {
    fn open(url: &str) -> anyhow::Result<Self> {
        let (client, lock) = qtask_store_postgres::bulk_client(url)?;
        Ok(Self { client, lock })
    }
}

impl Rows for PostgresRows {
    fn counters(&mut self) -> anyhow::Result<(i64, i64)> {
        let mut read = |key: &str| -> anyhow::Result<i64> {
            Ok(self
                .client
                .query_one("SELECT value FROM meta WHERE key = $1", &[&key])?
                .get(0))
        };
        Ok((read("next_id")?, read("next_fence")?))
    }

    fn write(&mut self, batch: &Batch, next_id: i64, next_fence: i64) -> anyhow::Result<()> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute(&self.lock)?;
        let mut text = String::new();
        for group in &batch.groups {
            copy_line(
                &mut text,
                &[&group.id, &group.account, &group.action, &group.at],
            );
        }
        copy(
            &mut tx,
            "task_groups (id, account_id, action, created_at)",
            &text,
        )?;
        text.clear();
        for r in &batch.resources {
            copy_line(
                &mut text,
                &[
                    &r.id,
                    &r.account,
                    &"instance",
                    &"ap-guangzhou",
                    &r.state,
                    &r.attrs,
                    &r.created_at,
                    &r.last_task,
                    &r.updated_at,
                ],
            );
        }
        copy(
            &mut tx,
            "resources (id, account_id, kind, region, state, attrs, created_at, last_task, updated_at)",
            &text,
        )?;
        text.clear();
        for row in &batch.tasks {
            let group = row.group.map(|g| g.to_string());
            copy_line(
                &mut text,
                &[
                    &row.id,
                    &row.account,
                    &Nullable(group.as_deref()),
                    &row.action,
                    &row.resource,
                    &"ap-guangzhou",
                    &&*row.params,
                    &&*row.effect,
                    &row.prior_state,
                    &"SUCCESS",
                    &1i64,
                    &row.at,
                    &(row.at + STARTED_AFTER_MS),
                    &(row.at + FINISHED_AFTER_MS),
                    &row.fence,
                    &Nullable(row.allowed.as_deref()),
                ],
            );
        }
        copy(
            &mut tx,
            "tasks (id, account_id, group_id, action, resource_id, region, params, effect, \
             prior_state, state, attempts, created_at, started_at, finished_at, fence, allowed)",
            &text,
        )?;
        // Counted as qtask's writer counts the tasks it inserts (no trigger does).
        tx.execute(
            "INSERT INTO task_state_counts (state, n) VALUES ('SUCCESS', $1)
             ON CONFLICT (state) DO UPDATE SET n = task_state_counts.n + excluded.n",
            &[&(batch.tasks.len() as i64)],
        )?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'next_id'",
            &[&next_id],
        )?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'next_fence'",
            &[&next_fence],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        // Plans for the tables as they are now, not as they were before the fill.
        self.client
            .batch_execute("ANALYZE tasks; ANALYZE resources; ANALYZE task_groups")?;
        Ok(())
    }
}

/// A NULL, or text.
struct Nullable<'a>(Option<&'a str>);

impl std::fmt::Display for Nullable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("\\N"),
            Some(text) => write_escaped(f, text),
        }
    }
}

/// Text in COPY's text format: backslash, tab, newline and carriage return escaped.
fn write_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    for ch in text.chars() {
        match ch {
            '\\' => out.write_str("\\\\")?,
            '\t' => out.write_str("\\t")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            other => out.write_char(other)?,
        }
    }
    Ok(())
}

/// One row of COPY's text format. Every field is escaped, except a [`Nullable`]'s NULL.
fn copy_line(out: &mut String, fields: &[&dyn CopyField]) {
    for (n, field) in fields.iter().enumerate() {
        if n > 0 {
            out.push('\t');
        }
        field.write(out);
    }
    out.push('\n');
}

trait CopyField {
    fn write(&self, out: &mut String);
}

impl CopyField for i64 {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "{self}");
    }
}

impl CopyField for &str {
    fn write(&self, out: &mut String) {
        let _ = write_escaped(out, self);
    }
}

impl CopyField for String {
    fn write(&self, out: &mut String) {
        let _ = write_escaped(out, self);
    }
}

impl CopyField for Nullable<'_> {
    fn write(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "{self}");
    }
}

fn copy(tx: &mut postgres::Transaction<'_>, table: &str, text: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut writer = tx.copy_in(&format!("COPY {table} FROM STDIN"))?;
    writer.write_all(text.as_bytes())?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_line_escapes_what_copy_s_text_format_reads_specially() {
        let mut line = String::new();
        copy_line(
            &mut line,
            &[
                &7i64,
                &"a\tb\nc\rd\\e",
                &Nullable(None),
                &Nullable(Some("x\\N")),
                &String::from("{\"k\": \"v\"}"),
            ],
        );
        assert_eq!(
            line, "7\ta\\tb\\nc\\rd\\\\e\t\\N\tx\\\\N\t{\"k\": \"v\"}\n",
            "one row: fields split by tabs, a NULL as \\N, a text \\N kept as text"
        );
    }
}
