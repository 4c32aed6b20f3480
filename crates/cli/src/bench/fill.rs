//! `qtask bench fill`: fills a stopped server's SQLite store with finished tasks, fast,
//! to measure qtask with a large store. Rows go straight into the existing tables with
//! bulk INSERTs in large transactions (no per-row fsync), shaped like what qtask itself
//! writes: instances created by RunInstances, then stopped and started in chains of
//! ten, across a few accounts — so every index grows as it would in production.

use crate::{keys, serve};
use anyhow::Context;
use qtask_engine::catalog::new_resource_id;
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
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
    let path = args.data_dir.join(serve::DATABASE_FILE);
    let tasks = args.tasks;
    let filled = tokio::task::spawn_blocking(move || fill(&path, &accounts, tasks)).await??;
    println!(
        "Filled {} with {} finished tasks, {} instances and {} chains in {:.1} s",
        args.data_dir.display(),
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
    // The SQLite store of the data directory: fill writes its file directly.
    let store = crate::database::open_store(
        &args.data_dir,
        args.master_key_file.as_deref(),
        &crate::database::Database::Sqlite,
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

fn fill(path: &std::path::Path, accounts: &[i64], tasks: u64) -> anyhow::Result<Filled> {
    let mut conn =
        Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // A bulk load: a crash mid-fill may lose the fill, never qtask's own data, which
    // was committed before; the final checkpoint makes it all durable.
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;",
    )?;
    let first_id: i64 =
        conn.query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
            r.get(0)
        })?;
    let first_fence: i64 =
        conn.query_row("SELECT value FROM meta WHERE key = 'next_fence'", [], |r| {
            r.get(0)
        })?;
    let now = qtask_engine::time::now_millis();
    let mut plan = Plan {
        next_id: first_id,
        next_fence: first_fence,
        accounts: accounts.to_vec(),
        clock: now - SPAN_MS,
        step_ms: (SPAN_MS / tasks.max(1) as i64).max(1),
        sets: 0,
        filled: Filled::default(),
    };
    let mut remaining = tasks;
    while remaining > 0 {
        let batch = remaining.min(BATCH);
        let tx = conn.transaction()?;
        let before = plan.filled.tasks;
        plan.batch(&tx, batch)?;
        // Counted as qtask's writer counts the tasks it inserts (no trigger does).
        tx.execute(
            "INSERT INTO task_state_counts (state, n) VALUES ('SUCCESS', ?1)
             ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
            [(plan.filled.tasks - before) as i64],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_id'",
            [plan.next_id],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_fence'",
            [plan.next_fence],
        )?;
        tx.commit()?;
        remaining -= batch;
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .optional()?;
    Ok(plan.filled)
}

struct Plan {
    next_id: i64,
    next_fence: i64,
    accounts: Vec<i64>,
    clock: i64,
    step_ms: i64,
    /// Sets of instances written so far.
    sets: usize,
    filled: Filled,
}

/// One finished task about to be written.
struct TaskRow<'a> {
    id: i64,
    account: i64,
    group: Option<i64>,
    action: &'a str,
    resource: &'a str,
    params: String,
    effect: &'a str,
    prior_state: &'a str,
    at: i64,
    allowed: Option<&'a str>,
}

impl Plan {
    fn take_id(&mut self) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Writes `count` tasks: whole instance histories (a RunInstances task, then chains
    /// of StopInstances and StartInstances over ten instances), the last one cut short.
    fn batch(&mut self, tx: &Connection, count: u64) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            // Each set of ten instances goes to the next account in turn.
            let account = self.accounts[self.sets % self.accounts.len()];
            self.sets += 1;
            let size = CHAIN_SIZE.min(left as usize);
            let mut instances = Vec::with_capacity(size);
            for _ in 0..size {
                instances.push(self.create_instance(tx, account)?);
            }
            left -= size as u64;
            let mut stop = true;
            for _ in 1..TASKS_PER_INSTANCE {
                if left < size as u64 {
                    break;
                }
                self.chain(tx, account, &mut instances, stop)?;
                left -= size as u64;
                stop = !stop;
            }
        }
        Ok(())
    }

    /// A finished StopInstances (or StartInstances) chain over `instances` (ID and
    /// last task, updated).
    fn chain(
        &mut self,
        tx: &Connection,
        account: i64,
        instances: &mut [(String, i64)],
        stop: bool,
    ) -> anyhow::Result<()> {
        let (action, prior, transitional, after) = if stop {
            ("StopInstances", "RUNNING", "STOPPING", "STOPPED")
        } else {
            ("StartInstances", "STOPPED", "STARTING", "RUNNING")
        };
        let group = self.take_id();
        self.clock += self.step_ms;
        tx.prepare_cached(
            "INSERT INTO task_groups (id, account_id, action, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![group, account, action, self.clock])?;
        self.filled.chains += 1;
        let effect = json!({
            "transitional": transitional,
            "onSuccess": after,
            "onFailure": null,
            "patch": {},
        })
        .to_string();
        let allowed = json!([prior]).to_string();
        let ids: Vec<&str> = instances.iter().map(|(id, _)| id.as_str()).collect();
        let params = json!({ "instanceIds": ids }).to_string();
        for (id, last_task) in instances.iter_mut() {
            let task = self.take_id();
            self.insert_task(
                tx,
                TaskRow {
                    id: task,
                    account,
                    group: Some(group),
                    action,
                    resource: id,
                    params: params.clone(),
                    effect: &effect,
                    prior_state: prior,
                    at: self.clock,
                    allowed: Some(&allowed),
                },
            )?;
            tx.prepare_cached(
                "UPDATE resources SET state = ?2, last_task = ?3, updated_at = ?4 WHERE id = ?1",
            )?
            .execute(params![id.as_str(), after, task, self.clock])?;
            *last_task = task;
        }
        Ok(())
    }

    /// A RUNNING instance and the finished RunInstances task that created it.
    fn create_instance(&mut self, tx: &Connection, account: i64) -> anyhow::Result<(String, i64)> {
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
        // IDs as qtask draws them; draw again on the rare collision.
        let id = loop {
            let id = new_resource_id("ins");
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO resources (id, account_id, kind, region, state, attrs, created_at, active_task, last_task, updated_at)
                     VALUES (?1, ?2, 'instance', 'ap-guangzhou', 'RUNNING', ?3, ?4, NULL, ?5, ?4) ON CONFLICT DO NOTHING",
                )?
                .execute(params![id.as_str(), account, attrs, self.clock, task])?;
            if inserted == 1 {
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
        self.insert_task(
            tx,
            TaskRow {
                id: task,
                account,
                group: None,
                action: "RunInstances",
                resource: id.as_str(),
                params: json!({ "goodsNum": "1", "instanceName": format!("fill-{n}") }).to_string(),
                effect: &effect,
                prior_state: "PENDING",
                at: self.clock,
                allowed: None,
            },
        )?;
        Ok((id.as_str().to_owned(), task))
    }

    fn insert_task(&mut self, tx: &Connection, row: TaskRow<'_>) -> anyhow::Result<()> {
        let fence = self.next_fence;
        self.next_fence += 1;
        tx.prepare_cached(
            "INSERT INTO tasks (id, account_id, group_id, action, resource_id, region, params, effect,
                                prior_state, state, attempts, created_at, started_at, finished_at,
                                fence, allowed)
             VALUES (?1, ?2, ?3, ?4, ?5, 'ap-guangzhou', ?6, ?7, ?8, 'SUCCESS', 1, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            row.id,
            row.account,
            row.group,
            row.action,
            row.resource,
            row.params,
            row.effect,
            row.prior_state,
            row.at,
            row.at + 2,
            row.at + 5,
            fence,
            row.allowed
        ])?;
        self.filled.tasks += 1;
        Ok(())
    }
}
