//! Write operations. Each runs inside the writer's transaction, in its own savepoint.

use crate::args;
use crate::nonces::{self, Claimed};
use crate::reads::{running_task_columns, stored_id, task_from_row, TASK_BY_ID_SQL};
use crate::sql::{Db, Row, Value as SqlValue};
use crate::writer::{in_savepoint, WriterState};
use qtask_core::{
    AccountId, Effect, Rejection, RequestId, ResourceState, SecretId, TaskError, TaskState,
    UnixMillis,
};
use qtask_store::*;
use serde_json::{json, Map, Value};

pub fn record_nonce(
    db: &mut dyn Db,
    state: &mut WriterState,
    claim: &NonceClaim,
) -> StoreResult<NonceOutcome> {
    Ok(
        match nonces::claim(db, state.nonce_index().as_deref_mut(), claim)? {
            Claimed::Fresh(_) => NonceOutcome::Fresh,
            Claimed::Resent { answer } => NonceOutcome::Resent { answer },
        },
    )
}

/// Submissions that arrived together, in one savepoint: a savepoint per submission
/// copied each page it touched first (8 % of the writer's time in an `e2e` profile on
/// SQLite; two commands per submission on PostgreSQL), while consecutive submissions
/// touch mostly the same pages. If one fails, the savepoint rolls back and each runs
/// again in a savepoint of its own, so that a refusal stays its own. A submission alone
/// needs none: the writer rolls its job back if it fails.
pub fn submit_many(
    db: &mut dyn Db,
    state: &mut WriterState,
    submissions: Vec<Submission>,
) -> StoreResult<Vec<StoreResult<Submitted>>> {
    let answers = if let [one] = submissions.as_slice() {
        vec![Ok(submit(db, state, one)?)]
    } else {
        let together = in_savepoint(db, state, |db, state| {
            submissions
                .iter()
                .map(|submission| submit(db, state, submission))
                .collect::<StoreResult<Vec<_>>>()
        });
        match together {
            Ok(submitted) => submitted.into_iter().map(Ok).collect(),
            Err(_) => submissions
                .iter()
                .map(|submission| {
                    in_savepoint(db, state, |db, state| submit(db, state, submission))
                })
                .collect(),
        }
    };
    state.woke_tasks |= answers.iter().any(|answer| {
        answer
            .as_ref()
            .is_ok_and(crate::MakesRunnable::makes_runnable)
    });
    Ok(answers)
}

fn submit(
    db: &mut dyn Db,
    state: &mut WriterState,
    submission: &Submission,
) -> StoreResult<Submitted> {
    let submitted = submit_tasks(db, state, submission)?;
    if let Some(entry) = &submission.audit {
        // In the submission's transaction: no commit of its own.
        let mut entry = entry.clone();
        entry.complete_from_answer(submitted.answer());
        crate::audit::append(db, &entry)?;
    }
    Ok(submitted)
}

fn submit_tasks(
    db: &mut dyn Db,
    state: &mut WriterState,
    submission: &Submission,
) -> StoreResult<Submitted> {
    let Submission {
        account,
        region,
        action,
        nonce,
        idempotency,
        grouped,
        tasks,
        now,
        answer,
        limits,
        audit: _,
    } = submission;
    let (account, grouped, now, limits) = (*account, *grouped, *now, *limits);

    let fresh = match nonces::claim_unstored(db, state.nonce_index().as_deref_mut(), nonce)? {
        Claimed::Fresh(fresh) => fresh,
        Claimed::Resent {
            answer: Some(answer),
        } => return Ok(Submitted::Repeated { answer }),
        // The same signature on a request that stored no answer cannot be this
        // mutating request: treat it as a reuse.
        Claimed::Resent { answer: None } => {
            return Err(StoreError::NonceReused {
                secret_id: nonce.secret_id.clone(),
                nonce: nonce.nonce.get(),
            })
        }
    };
    if let Some(key) = idempotency {
        if let Some(first_answer) = earlier_answer(db, account, key)? {
            let mut index = state.nonce_index();
            nonces::store_answer(db, index.as_deref_mut(), nonce, &fresh, &first_answer)?;
            return Ok(Submitted::Repeated {
                answer: first_answer,
            });
        }
    }

    let group = grouped.then(|| RequestId::new(state.allocate_id()).expect("IDs start at 1"));
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut runnable = Vec::with_capacity(tasks.len());
    for planned in tasks {
        let resource = planned.target.resource_id().clone();
        let outcome = plan_one(
            db,
            state,
            account,
            region.as_str(),
            action,
            group,
            planned,
            now,
        )?;
        outcomes.push((
            resource,
            outcome.map(|(task, started)| {
                if started {
                    runnable.push(task);
                }
                task
            }),
        ));
    }
    let accepted: Vec<bool> = outcomes.iter().map(|(_, o)| o.is_ok()).collect();
    let created = tasks
        .iter()
        .zip(&accepted)
        .any(|(planned, ok)| *ok && matches!(planned.target, Target::Create(_)));
    check_limits(db, account, limits, accepted.contains(&true), created)?;
    let report = SubmitReport {
        group: group.filter(|_| outcomes.iter().any(|(_, o)| o.is_ok())),
        outcomes,
    };
    if let Some(group) = report.group {
        db.send(
            "INSERT INTO task_groups (id, account_id, action, created_at) VALUES (?1, ?2, ?3, ?4)",
            args![group.get() as i64, account.0, action, now],
        )?;
    }
    let answer = answer(&report);
    let mut index = state.nonce_index();
    nonces::store_answer(db, index.as_deref_mut(), nonce, &fresh, &answer)?;
    if let Some(key) = idempotency {
        db.send(
            "INSERT INTO client_tokens (account_id, token, fingerprint, answer, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account_id, token) DO UPDATE SET fingerprint = excluded.fingerprint,
                 answer = excluded.answer, created_at = excluded.created_at",
            args![account.0, key.token, key.fingerprint, answer, now],
        )?;
    }
    Ok(Submitted::New {
        report,
        answer,
        runnable,
    })
}

fn earlier_answer(
    db: &mut dyn Db,
    account: AccountId,
    key: &IdempotencyKey,
) -> StoreResult<Option<String>> {
    let found: Option<(String, String)> = db.query_opt(
        "SELECT fingerprint, answer FROM client_tokens
             WHERE account_id = ?1 AND token = ?2 AND created_at >= ?3",
        args![account.0, key.token, key.valid_from],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    match found {
        None => Ok(None),
        Some((fingerprint, answer)) if fingerprint == key.fingerprint => Ok(Some(answer)),
        Some(_) => Err(StoreError::TokenReused {
            token: key.token.clone(),
        }),
    }
}

/// Plans one task: `Ok((task, true))` when it holds its resource and can run now,
/// `Ok((task, false))` when it waits behind the resource's unfinished tasks.
#[allow(clippy::too_many_arguments)]
fn plan_one(
    db: &mut dyn Db,
    ids: &mut WriterState,
    account: AccountId,
    region: &str,
    action: &str,
    group: Option<RequestId>,
    planned: &PlannedTask,
    now: UnixMillis,
) -> StoreResult<Result<(RequestId, bool), Rejection>> {
    let mut waits = false;
    let prior_state = match &planned.target {
        Target::Existing { id, allowed } => {
            let found: Option<(i64, String, String, Option<i64>)> = db.query_opt(
                "SELECT account_id, region, state, active_task FROM resources WHERE id = ?1",
                args![id.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            let Some((owner, resource_region, state, active)) = found else {
                return Ok(Err(Rejection::NotFound));
            };
            if owner != account.0 || resource_region != region {
                return Ok(Err(Rejection::NotFound));
            }
            let state = ResourceState(state);
            if active.is_some() && planned.on_busy == OnBusy::Queue {
                // Its precondition is checked when it reaches the head of the queue.
                waits = true;
            } else if let Some(active) = active {
                let active_action: String = db.query_one(
                    "SELECT action FROM tasks WHERE id = ?1",
                    args![active],
                    |r| r.get(0),
                )?;
                return Ok(Err(Rejection::Busy {
                    task: RequestId::new(active as u64)
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                    action: active_action,
                }));
            }
            if !waits && !allowed.is_empty() && !allowed.contains(&state) {
                return Ok(Err(Rejection::WrongState {
                    state,
                    allowed: allowed.clone(),
                }));
            }
            state
        }
        Target::Create(new) => new.state.clone(),
    };

    let allowed = match &planned.target {
        Target::Existing { allowed, .. } if !allowed.is_empty() => Some(
            serde_json::to_string(&allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>())
                .expect("strings serialize"),
        ),
        _ => None,
    };
    let task = RequestId::new(ids.allocate_id()).expect("IDs start at 1");
    let task_id = task.get() as i64;
    match &planned.target {
        Target::Existing { id, .. } if waits => {
            db.send(
                "UPDATE resources SET last_task = ?2 WHERE id = ?1",
                args![id.as_str(), task_id],
            )?;
        }
        Target::Existing { id, .. } => {
            let shown = planned.effect.transitional.as_ref().unwrap_or(&prior_state);
            db.send(
                "UPDATE resources SET state = ?2, active_task = ?3, last_task = ?3, updated_at = ?4
                 WHERE id = ?1",
                args![id.as_str(), shown.as_str(), task_id, now],
            )?;
        }
        Target::Create(new) => {
            let inserted = db.execute(
"INSERT INTO resources (id, account_id, kind, region, state, attrs, created_at, active_task, last_task, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?7) ON CONFLICT DO NOTHING",
args![new.id.as_str(),
                        account.0,
                        new.kind,
                        region,
                        new.state.as_str(),
                        serde_json::to_string(&new.attrs).expect("a JSON map serializes"),
                        now,
                        task_id])?;
            if inserted == 0 {
                return Err(StoreError::DuplicateResource(new.id.clone()));
            }
        }
    }
    db.send(
"INSERT INTO tasks (id, account_id, group_id, action, resource_id, region, params, effect, prior_state, state, created_at, allowed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'QUEUED', ?10, ?11)",
args![task_id,
            account.0,
            group.map(|g| g.get() as i64),
            action,
            planned.target.resource_id().as_str(),
            region,
            planned.params.to_string(),
            effect_to_json(&planned.effect).to_string(),
            prior_state.as_str(),
            now,
            allowed])?;
    ids.inserted_queued_task();
    Ok(Ok((task, !waits)))
}

/// A statement that takes its rows as `(VALUES …) AS v` (columns `v.column1`, …): one
/// shape per power of two of rows up to [`ROWS_PER_STATEMENT`], so that a few statements,
/// kept prepared, serve any count. The first column is the key of the row to change;
/// the statement also lists the keys (`… IN (keys)`), so that a planner whose
/// statistics are older than the table's growth still finds the rows by key rather than
/// joining `VALUES` with a scan of every unfinished task (measured on PostgreSQL).
struct RowsStatement {
    /// The SQL type of each column.
    types: &'static [&'static str],
    /// The statement from the `VALUES` list and the list of keys.
    template: fn(&str, &str) -> String,
    shapes: std::sync::OnceLock<Vec<String>>,
}

/// The most rows one statement takes.
const ROWS_PER_STATEMENT: usize = 128;

impl RowsStatement {
    const fn new(types: &'static [&'static str], template: fn(&str, &str) -> String) -> Self {
        Self {
            types,
            template,
            shapes: std::sync::OnceLock::new(),
        }
    }

    fn sql(&self, rows: usize) -> &str {
        let shapes = self.shapes.get_or_init(|| {
            (0..=ROWS_PER_STATEMENT.trailing_zeros())
                .map(|power| {
                    let cast = |row: usize, column: usize| {
                        let ty = self.types[column];
                        format!("CAST(?{} AS {ty})", row * self.types.len() + column + 1)
                    };
                    let rows = 0..1usize << power;
                    let values = rows
                        .clone()
                        .map(|row| {
                            let columns = (0..self.types.len()).map(|column| cast(row, column));
                            format!("({})", columns.collect::<Vec<_>>().join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let keys = rows.map(|row| cast(row, 0)).collect::<Vec<_>>().join(", ");
                    (self.template)(&values, &keys)
                })
                .collect()
        });
        &shapes[rows.next_power_of_two().trailing_zeros() as usize]
    }

    /// Runs the statement over `values`, row after row (`types.len()` values each), as
    /// many times as it takes. Rows of NULLs fill a shape: a NULL key matches nothing.
    fn query(&self, db: &mut dyn Db, values: &[SqlValue<'_>]) -> StoreResult<Vec<Row>> {
        let width = self.types.len();
        let mut answered = Vec::new();
        for chunk in values.chunks(ROWS_PER_STATEMENT * width) {
            let rows = chunk.len() / width;
            let mut values = chunk.to_vec();
            values.resize(rows.next_power_of_two() * width, SqlValue::Null);
            answered.extend(db.query(self.sql(rows), &values)?);
        }
        Ok(answered)
    }
}

/// The statements that change many rows at once, in the shape for `rows` rows: each must
/// find its rows by key (a test of the SQLite backend checks their plans; PostgreSQL's
/// writer runs without hash joins, merge joins or table scans, see store-postgres).
pub fn many_row_statements(rows: usize) -> [&'static str; 3] {
    [CLAIMS.sql(rows), ENDINGS.sql(rows), RELEASES.sql(rows)]
}

/// Claims: row `i` holds a claim's task, time, owner, lease expiry and fence. Only the
/// head of its resource's queue, and only once its backoff has passed; it answers each
/// claimed task and its resource's attributes.
static CLAIMS: RowsStatement = RowsStatement::new(
    &["BIGINT", "BIGINT", "TEXT", "BIGINT", "BIGINT"],
    |values, keys| {
        format!(
            "UPDATE tasks SET state = 'RUNNING', attempts = attempts + 1,
                 started_at = COALESCE(started_at, v.column2), lease_owner = v.column3,
                 lease_expires_at = v.column4, fence = v.column5
             FROM (VALUES {values}) AS v
             WHERE tasks.id IN ({keys}) AND tasks.id = v.column1 AND tasks.state = 'QUEUED'
               AND tasks.not_before <= v.column2
               AND tasks.id = (SELECT active_task FROM resources r WHERE r.id = tasks.resource_id)
             RETURNING {}, (SELECT attrs FROM resources r WHERE r.id = tasks.resource_id)",
            running_task_columns!()
        )
    },
);

/// A claimed task's row as [`CLAIMS`] answers it, and its fence: read into a
/// [`ClaimedTask`] by [`ClaimedRow::read`] on the caller's thread, after the commit, so
/// that the writer does not spend its time parsing the task's JSON columns (≈ 8 % of its
/// samples in a `chain` profile).
pub struct ClaimedRow {
    row: Row,
    fence: Fence,
}

impl ClaimedRow {
    /// The claimed task. A task whose stored columns cannot be read fails alone (its
    /// claim stands: the lease runs out and rescue takes the task back).
    pub fn read(self) -> StoreResult<ClaimedTask> {
        claimed_from_row(&self.row, self.fence)
    }
}

/// Claims each task of `claims` under its lease, in as few statements as it takes;
/// answers in the same order, `None` for a task that is not claimable (a task named
/// twice is claimed at most once, by its first claim).
pub fn claim_many(
    db: &mut dyn Db,
    state: &mut WriterState,
    claims: Vec<(RequestId, Lease)>,
) -> StoreResult<Vec<StoreResult<Option<ClaimedRow>>>> {
    let mut answers: Vec<StoreResult<Option<ClaimedRow>>> = Vec::with_capacity(claims.len());
    let mut fences = std::collections::HashMap::with_capacity(claims.len());
    let mut values = Vec::with_capacity(claims.len() * 5);
    for (index, (task, lease)) in claims.iter().enumerate() {
        answers.push(Ok(None));
        if let std::collections::hash_map::Entry::Vacant(entry) = fences.entry(task.get() as i64) {
            let fence = state.allocate_fence();
            entry.insert((index, fence));
            values.extend([
                task.get().into(),
                lease.now.into(),
                lease.owner.as_str().into(),
                lease.expires_at.into(),
                fence.into(),
            ]);
        }
    }
    for row in CLAIMS.query(db, &values)? {
        let id: i64 = row.get(0)?;
        let (index, fence) = fences
            .get(&id)
            .copied()
            .ok_or_else(|| StoreError::Backend(format!("claimed task {id} was not asked for")))?;
        answers[index] = Ok(Some(ClaimedRow { row, fence }));
    }
    Ok(answers)
}

fn claimed_from_row(row: &Row, fence: Fence) -> StoreResult<ClaimedTask> {
    Ok(ClaimedTask {
        task: task_from_row(row)?,
        fence,
        resource_attrs: parse_object(&row.get::<String>(RESOURCE_ATTRS_COLUMN)?)?,
    })
}

/// Where [`CLAIMS`] answers the resource's attributes: after the task's columns.
const RESOURCE_ATTRS_COLUMN: usize = 23;

fn task_by_id(db: &mut dyn Db, task: RequestId) -> StoreResult<TaskRecord> {
    db.query_one(TASK_BY_ID_SQL, args![task.get() as i64], task_from_row)
}

pub fn renew(
    db: &mut dyn Db,
    task: RequestId,
    fence: Fence,
    expires_at: UnixMillis,
) -> StoreResult<LeaseStatus> {
    let held: Option<bool> = db.query_opt(
        "UPDATE tasks SET lease_expires_at = ?3
             WHERE id = ?1 AND fence = ?2 AND state = 'RUNNING' RETURNING cancel_requested",
        args![task.get() as i64, fence as i64, expires_at],
        |r| r.get(0),
    )?;
    Ok(match held {
        Some(cancel_requested) => LeaseStatus::Held { cancel_requested },
        None => LeaseStatus::Lost,
    })
}

/// What the store keeps of an unfinished task to finish it.
struct Unfinished {
    id: i64,
    account: i64,
    resource: String,
    action: String,
    effect: Effect,
    prior_state: String,
    state: String,
    fence: i64,
    cancel_requested: bool,
    attempts: u32,
}

/// The columns of a task that [`Unfinished`] keeps, in the order [`unfinished_from_row`] reads.
macro_rules! unfinished_columns {
    () => {
        "account_id, resource_id, action, effect, prior_state, state, fence, cancel_requested, attempts"
    };
}

fn unfinished(db: &mut dyn Db, task: i64) -> StoreResult<Option<Unfinished>> {
    db.query_opt(
        concat!(
            "SELECT ",
            unfinished_columns!(),
            " FROM tasks WHERE id = ?1"
        ),
        args![task],
        |r| unfinished_from_row(task, r),
    )
}

fn unfinished_from_row(id: i64, r: &Row) -> StoreResult<Unfinished> {
    Ok(Unfinished {
        id,
        account: r.get(0)?,
        resource: r.get(1)?,
        action: r.get(2)?,
        effect: effect_from_json(&r.get::<String>(3)?)?,
        prior_state: r.get(4)?,
        state: r.get(5)?,
        fence: r.get(6)?,
        cancel_requested: r.get(7)?,
        attempts: r.get(8)?,
    })
}

/// A worker's outcome for a task it ran, waiting to be recorded.
pub struct Completing {
    pub task: RequestId,
    pub fence: Fence,
    pub outcome: TaskOutcome,
    pub now: UnixMillis,
}

/// Records each outcome of `completions` as [`complete`] would, in the order given; those
/// that end running tasks (all but retries) take two statements together, whatever
/// their number. If recording them together fails, each is recorded alone, in a
/// savepoint of its own, so that one that cannot be recorded fails alone.
pub fn complete_many(
    db: &mut dyn Db,
    state: &mut WriterState,
    completions: Vec<Completing>,
) -> StoreResult<Vec<StoreResult<Completion>>> {
    let answers = if let [one] = completions.as_slice() {
        // Alone in its job, which the writer rolls back if it fails.
        vec![Ok(complete(
            db,
            one.task,
            one.fence,
            one.outcome.clone(),
            one.now,
        )?)]
    } else {
        match in_savepoint(db, state, |db, _| complete_together(db, &completions)) {
            Ok(answers) => answers,
            Err(error) => {
                tracing::warn!(%error, completions = completions.len(),
                    "outcomes could not be recorded together; recording each alone");
                completions
                    .iter()
                    .map(|c| {
                        in_savepoint(db, state, |db, _| {
                            complete(db, c.task, c.fence, c.outcome.clone(), c.now)
                        })
                    })
                    .collect()
            }
        }
    };
    state.woke_tasks |= answers.iter().any(|answer| {
        answer
            .as_ref()
            .is_ok_and(crate::MakesRunnable::makes_runnable)
    });
    Ok(answers)
}

/// Tasks that end: row `i` holds a task, the fence it must run under, then the values
/// of [`Ending::values`] but the first. Answers each ended task's [`Unfinished`] columns
/// (as the statement left them), then its ID.
static ENDINGS: RowsStatement = RowsStatement::new(
    &[
        "BIGINT", "BIGINT", "TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT",
    ],
    |values, keys| {
        format!(
            "UPDATE tasks SET state = v.column3, finished_at = v.column4, error_code = v.column5,
                 error_message = v.column6, result = v.column7, lease_owner = NULL,
                 lease_expires_at = NULL, cancel_requested = 0
             FROM (VALUES {values}) AS v
             WHERE tasks.id IN ({keys}) AND tasks.id = v.column1 AND tasks.fence = v.column2 AND tasks.state = 'RUNNING'
             RETURNING {}, tasks.id",
            unfinished_columns!()
        )
    },
);

/// Where [`ENDINGS`] answers the task's ID.
const ENDED_ID_COLUMN: usize = 9;

/// Resources released: row `i` holds the values of [`Release::values`].
static RELEASES: RowsStatement = RowsStatement::new(
    &["TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT"],
    |values, keys| {
        format!(
            "UPDATE resources SET state = v.column2, active_task = NULL, updated_at = v.column5,
                 attrs = COALESCE(v.column3, attrs)
             FROM (VALUES {values}) AS v
             WHERE resources.id IN ({keys}) AND resources.id = v.column1
               AND resources.active_task = v.column4
             RETURNING resources.id, last_task"
        )
    },
);

/// [`complete_many`] for several outcomes: every task that ends is ended in one
/// statement and every resource they held released in another; retries, a task named
/// twice and tasks not running under their fence go through [`complete`] after them.
/// An error other than a task not found fails the lot.
fn complete_together(
    db: &mut dyn Db,
    completions: &[Completing],
) -> StoreResult<Vec<StoreResult<Completion>>> {
    use std::collections::{HashMap, HashSet};
    let mut answers: Vec<Option<StoreResult<Completion>>> =
        completions.iter().map(|_| None).collect();

    // The first completion of each task whose outcome is final, by task.
    let mut ending: HashMap<i64, (usize, Ending)> = HashMap::new();
    for (index, c) in completions.iter().enumerate() {
        if !matches!(c.outcome, TaskOutcome::Retry { .. }) {
            ending
                .entry(c.task.get() as i64)
                .or_insert_with(|| (index, Ending::from(c.outcome.clone())));
        }
    }
    let mut values = Vec::with_capacity(ending.len() * ENDINGS.types.len());
    for (&id, (index, ending)) in &ending {
        let [id, state, at, code, message, result] = ending.values(id, completions[*index].now);
        values.extend([
            id,
            completions[*index].fence.into(),
            state,
            at,
            code,
            message,
            result,
        ]);
    }
    let mut ended = Vec::new();
    for row in ENDINGS.query(db, &values)? {
        let id: i64 = row.get(ENDED_ID_COLUMN)?;
        let (index, state) = ending
            .get(&id)
            .map(|(index, ending)| (*index, ending.state()))
            .ok_or_else(|| StoreError::Backend(format!("ended task {id} was not asked for")))?;
        ended.push((index, unfinished_from_row(id, &row)?, state));
    }

    // Each ended task held its resource (it was running), so no resource comes twice but
    // in a corrupt store; the second is then released alone.
    let mut releases = Vec::new();
    let mut resources = HashSet::new();
    for (index, task, state) in ended {
        match plan_release(db, &task, state)? {
            Some(release) if resources.insert(task.resource.clone()) => {
                releases.push((index, task, state, release));
            }
            Some(_) => {
                answers[index] = Some(
                    release_resource(db, &task, state, completions[index].now)
                        .map(|runnable| Completion::Recorded { runnable }),
                );
            }
            None => {
                answers[index] = Some(Ok(Completion::Recorded {
                    runnable: Vec::new(),
                }))
            }
        }
    }
    let values: Vec<SqlValue<'_>> = releases
        .iter()
        .flat_map(|(index, task, _, release)| release.values(task, completions[*index].now))
        .collect();
    let mut released: HashMap<String, Option<i64>> = HashMap::new();
    for row in RELEASES.query(db, &values)? {
        released.insert(row.get(0)?, row.get(1)?);
    }
    for (index, task, state, _) in &releases {
        let runnable = match released.get(&task.resource) {
            Some(last_task) => {
                after_release(db, task, *state, *last_task, completions[*index].now)?
            }
            None => Vec::new(),
        };
        answers[*index] = Some(Ok(Completion::Recorded { runnable }));
    }

    completions
        .iter()
        .zip(answers)
        .map(|(c, answer)| match answer {
            Some(answer) => answer.map(Ok),
            None => match complete(db, c.task, c.fence, c.outcome.clone(), c.now) {
                // Found nothing and changed nothing: an answer, not a failure of the lot.
                Err(StoreError::NotFound(what)) => Ok(Err(StoreError::NotFound(what))),
                other => other.map(Ok),
            },
        })
        .collect()
}

pub fn complete(
    db: &mut dyn Db,
    task: RequestId,
    fence: Fence,
    outcome: TaskOutcome,
    now: UnixMillis,
) -> StoreResult<Completion> {
    if !matches!(outcome, TaskOutcome::Retry { .. }) {
        // The common case in one statement: the ending does not depend on the task's row,
        // so the task is ended and read at once (one round trip less on PostgreSQL).
        let ending = Ending::from(outcome);
        let [id, state, at, code, message, result] = ending.values(task.get() as i64, now);
        let ended = db.query_opt(
            END_RUNNING_TASK,
            &[id, state, at, code, message, result, fence.into()],
            |r| unfinished_from_row(task.get() as i64, r),
        )?;
        if let Some(ended) = ended {
            let runnable = release_resource(db, &ended, ending.state(), now)?;
            return Ok(Completion::Recorded { runnable });
        }
        // Gone, or not this worker's any more: the statement changed nothing.
        let Some(found) = unfinished(db, task.get() as i64)? else {
            return Err(StoreError::NotFound(format!("task {task}")));
        };
        return refuse_completion(db, task, fence, &found);
    }
    let Some(found) = unfinished(db, task.get() as i64)? else {
        return Err(StoreError::NotFound(format!("task {task}")));
    };
    if found.state != "RUNNING" || found.fence != fence as i64 {
        return refuse_completion(db, task, fence, &found);
    }
    let outcome = match outcome {
        // A cancel asked for while it ran wins over another attempt.
        TaskOutcome::Retry { error, .. } if found.cancel_requested => TaskOutcome::Canceled {
            message: format!(
                "canceled while running (the attempt failed: {})",
                error.message
            ),
        },
        other => other,
    };
    if let TaskOutcome::Retry { error, not_before } = outcome {
        db.send(
            "UPDATE tasks SET state = 'QUEUED', not_before = ?2, error_code = ?3,
                 error_message = ?4, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ?1",
            args![found.id, not_before, error.code, error.message],
        )?;
        return Ok(Completion::Recorded {
            runnable: vec![Runnable { task, not_before }],
        });
    }
    let runnable = finish(db, &found, Ending::from(outcome), now)?;
    Ok(Completion::Recorded { runnable })
}

/// The outcome of a worker that no longer holds `task` (its lease was taken over; the
/// task is `found` now): it must not count.
fn refuse_completion(
    db: &mut dyn Db,
    task: RequestId,
    fence: Fence,
    found: &Unfinished,
) -> StoreResult<Completion> {
    db.send(
        "UPDATE meta SET value = value + 1 WHERE key = 'fenced_completions'",
        args![],
    )?;
    tracing::warn!(%task, fence, current = found.fence, state = found.state,
        "refused the outcome of a worker that no longer holds the task");
    Ok(Completion::Fenced)
}

/// Makes a task final: `?1` the task, then the values of [`Ending::values`].
macro_rules! end_task_sql {
    ($condition:literal) => {
        concat!(
            "UPDATE tasks SET state = ?2, finished_at = ?3, error_code = ?4, error_message = ?5,
                 result = ?6, lease_owner = NULL, lease_expires_at = NULL, cancel_requested = 0
             WHERE id = ?1",
            $condition
        )
    };
}

const END_TASK: &str = end_task_sql!("");

/// Ends a task only while it runs under the lease of fence `?7`, and answers its
/// [`Unfinished`] columns (as the statement left them).
const END_RUNNING_TASK: &str = concat!(
    end_task_sql!(" AND state = 'RUNNING' AND fence = ?7 RETURNING "),
    unfinished_columns!()
);

/// How an unfinished task ends.
enum Ending {
    Succeeded(Option<Value>),
    Failed(TaskError),
    Canceled(TaskError),
}

impl From<TaskOutcome> for Ending {
    fn from(outcome: TaskOutcome) -> Self {
        match outcome {
            TaskOutcome::Succeeded { result } => Self::Succeeded(result),
            TaskOutcome::Failed(error) | TaskOutcome::Retry { error, .. } => Self::Failed(error),
            TaskOutcome::Canceled { message } => {
                Self::Canceled(TaskError::operation_failed(message))
            }
        }
    }
}

impl Ending {
    fn state(&self) -> TaskState {
        match self {
            Self::Succeeded(_) => TaskState::Succeeded,
            Self::Failed(_) => TaskState::Failed,
            Self::Canceled(_) => TaskState::Canceled,
        }
    }

    /// The values of [`END_TASK`] for task `id`, ending at `now`.
    fn values(&self, id: i64, now: UnixMillis) -> [SqlValue<'_>; 6] {
        let (error, result) = match self {
            Self::Succeeded(result) => (None, result.as_ref().map(Value::to_string)),
            Self::Failed(error) | Self::Canceled(error) => (Some(error), None),
        };
        [
            id.into(),
            self.state().as_str().into(),
            now.into(),
            error.map(|e| e.code).into(),
            error.map(|e| e.message.as_str()).into(),
            result.into(),
        ]
    }
}

/// Makes a task final. If it held its resource, applies its effect and moves the
/// resource's queue on; returns the task that can run next, if any.
fn finish(
    db: &mut dyn Db,
    task: &Unfinished,
    ending: Ending,
    now: UnixMillis,
) -> StoreResult<Vec<Runnable>> {
    db.send(END_TASK, &ending.values(task.id, now))?;
    release_resource(db, task, ending.state(), now)
}

/// After `task` ended in `state`: if it held its resource, applies its effect and
/// moves the resource's queue on; returns the task that can run next, if any.
fn release_resource(
    db: &mut dyn Db,
    task: &Unfinished,
    state: TaskState,
    now: UnixMillis,
) -> StoreResult<Vec<Runnable>> {
    let Some(release) = plan_release(db, task, state)? else {
        return Ok(Vec::new());
    };
    let released: Option<Option<i64>> = db.query_opt(
        "UPDATE resources SET state = ?2, active_task = NULL, updated_at = ?5,
             attrs = COALESCE(?3, attrs)
         WHERE id = ?1 AND active_task = ?4 RETURNING last_task",
        &release.values(task, now),
        |r: &Row| r.get(0),
    )?;
    match released {
        Some(last_task) => after_release(db, task, state, last_task, now),
        // It was waiting behind another task: the queue is unchanged.
        None => Ok(Vec::new()),
    }
}

/// What releasing a task's resource writes.
struct Release {
    final_state: ResourceState,
    /// The attributes with the task's patch applied, if it has one.
    patched: Option<String>,
}

impl Release {
    /// The values of a release: resource, state, attributes, task, time.
    fn values<'a>(&'a self, task: &'a Unfinished, now: UnixMillis) -> [SqlValue<'a>; 5] {
        [
            task.resource.as_str().into(),
            self.final_state.as_str().into(),
            self.patched.as_deref().into(),
            task.id.into(),
            now.into(),
        ]
    }
}

/// How `task`, ended in `state`, releases its resource; `None` when it turns out not to
/// hold it.
fn plan_release(
    db: &mut dyn Db,
    task: &Unfinished,
    state: TaskState,
) -> StoreResult<Option<Release>> {
    let succeeded = state == TaskState::Succeeded;
    let final_state = task
        .effect
        .final_state(&ResourceState(task.prior_state.clone()), succeeded);
    // Keyed changes are RFC 7396 merge patches, applied here so that changes to other
    // entries committed meanwhile are kept. Without one, the attributes stay: no read.
    let patched = if succeeded && !task.effect.patch.is_empty() {
        // Only while the task holds its resource: one that waited behind another never
        // touched it.
        let attrs: Option<String> = db.query_opt(
            "SELECT attrs FROM resources WHERE id = ?1 AND active_task = ?2",
            args![&task.resource, task.id],
            |r: &Row| r.get(0),
        )?;
        let Some(attrs) = attrs else {
            return Ok(None);
        };
        let mut merged = Value::Object(parse_object(&attrs)?);
        json_patch::merge(&mut merged, &Value::Object(task.effect.patch.clone()));
        Some(merged.to_string())
    } else {
        None
    };
    Ok(Some(Release {
        final_state,
        patched,
    }))
}

/// Once `task`, ended in `state`, released its resource, whose last task is
/// `last_task`: hands the resource to the next task waiting for it, if any.
fn after_release(
    db: &mut dyn Db,
    task: &Unfinished,
    state: TaskState,
    last_task: Option<i64>,
    now: UnixMillis,
) -> StoreResult<Vec<Runnable>> {
    if last_task == Some(task.id) {
        // No task was submitted on the resource after it: nothing waits (no read).
        return Ok(Vec::new());
    }
    let failure = (state == TaskState::Failed).then(|| {
        format!(
            "canceled: task {} ({}) ahead of it on {} failed",
            task.id, task.action, task.resource
        )
    });
    advance_queue(db, task.account, &task.resource, task.id, failure, now)
}

/// Hands a released resource to the next task waiting for it. After a failure the
/// waiting tasks are canceled with `failure` as their message: they were submitted
/// expecting the one ahead to succeed. A task whose precondition no longer holds fails
/// (and so cancels the ones behind it).
fn advance_queue(
    db: &mut dyn Db,
    account: i64,
    resource: &str,
    after: i64,
    mut failure: Option<String>,
    now: UnixMillis,
) -> StoreResult<Vec<Runnable>> {
    let mut after = after;
    loop {
        let next: Option<(i64, String, Option<String>, String)> = db.query_opt(
            "SELECT id, action, allowed, effect FROM tasks
                 WHERE account_id = ?1 AND resource_id = ?2 AND id > ?3 AND state = 'QUEUED'
                 ORDER BY id LIMIT 1",
            args![account, resource, after],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let Some((next, action, allowed, effect)) = next else {
            return Ok(Vec::new());
        };
        after = next;
        if let Some(message) = &failure {
            end_waiting(db, next, TaskState::Canceled, message, now)?;
            continue;
        }
        let current: String = db.query_one(
            "SELECT state FROM resources WHERE id = ?1",
            args![resource],
            |r| r.get(0),
        )?;
        let allowed: Vec<String> = match allowed {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Backend(format!("corrupt allowed states: {e}")))?,
            None => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.contains(&current) {
            let message = format!(
                "{resource} was {current} when task {next} reached the head of its queue; \
                 {action} needs it to be {}",
                allowed.join(" or ")
            );
            end_waiting(db, next, TaskState::Failed, &message, now)?;
            failure = Some(format!(
                "canceled: task {next} ({action}) ahead of it on {resource} failed"
            ));
            continue;
        }
        let effect = effect_from_json(&effect)?;
        let shown = effect.transitional.map_or(current.clone(), |s| s.0);
        db.send(
            "UPDATE resources SET state = ?2, active_task = ?3, updated_at = ?4 WHERE id = ?1",
            args![resource, shown, next, now],
        )?;
        db.send(
            "UPDATE tasks SET prior_state = ?2 WHERE id = ?1",
            args![next, current],
        )?;
        return Ok(vec![Runnable {
            task: stored_id(next)?,
            not_before: now,
        }]);
    }
}

/// Ends a task that never held its resource.
fn end_waiting(
    db: &mut dyn Db,
    task: i64,
    state: TaskState,
    message: &str,
    now: UnixMillis,
) -> StoreResult<()> {
    db.send(
        "UPDATE tasks SET state = ?2, finished_at = ?3, error_code = ?4, error_message = ?5
         WHERE id = ?1",
        args![
            task,
            state.as_str(),
            now,
            TaskError::OPERATION_FAILED,
            message
        ],
    )?;
    Ok(())
}

pub fn release(
    db: &mut dyn Db,
    task: RequestId,
    fence: Fence,
    now: UnixMillis,
) -> StoreResult<Option<Vec<Runnable>>> {
    let Some(found) = unfinished(db, task.get() as i64)? else {
        return Ok(None);
    };
    if found.state != "RUNNING" || found.fence != fence as i64 {
        return Ok(None);
    }
    requeue(db, &found, now).map(Some)
}

/// Puts a RUNNING task back in the queue, runnable now; a task whose cancel was asked
/// for ends CANCELED instead. Returns what can run.
fn requeue(db: &mut dyn Db, task: &Unfinished, now: UnixMillis) -> StoreResult<Vec<Runnable>> {
    if task.cancel_requested {
        let ending = Ending::Canceled(TaskError::operation_failed(
            "canceled: its worker stopped before it finished",
        ));
        return finish(db, task, ending, now);
    }
    db.send(
        "UPDATE tasks SET state = 'QUEUED', not_before = ?2, lease_owner = NULL,
             lease_expires_at = NULL
         WHERE id = ?1",
        args![task.id, now],
    )?;
    Ok(vec![Runnable {
        task: stored_id(task.id)?,
        not_before: now,
    }])
}

/// Expired leases, by the index of running tasks' leases. Not `ORDER BY id`: with it,
/// SQLite walked the whole table in ID order (seconds on a store of 10M tasks, every
/// rescue); the IDs are sorted here instead.
pub const RESCUE_SQL: &str =
    "SELECT id FROM tasks WHERE state = 'RUNNING' AND lease_expires_at < ?1";

pub fn rescue(db: &mut dyn Db, now: UnixMillis, keep: &[RequestId]) -> StoreResult<Vec<Runnable>> {
    let mut expired = ids_of(db, RESCUE_SQL, args![now])?;
    expired.sort_unstable();
    let mut runnable = Vec::new();
    for id in expired {
        if keep.iter().any(|k| k.get() as i64 == id) {
            continue;
        }
        if let Some(task) = unfinished(db, id)? {
            tracing::warn!(task = id, "lease expired; the task goes back to the queue");
            runnable.extend(requeue(db, &task, now)?);
        }
    }
    Ok(runnable)
}

/// The repeated state test lets SQLite use the small partial index of unfinished tasks.
pub const REQUEUE_RUNNING_SQL: &str =
    "SELECT id FROM tasks WHERE state IN ('QUEUED', 'RUNNING') AND state = 'RUNNING'
       AND (CAST(?1 AS TEXT) IS NULL OR lease_owner = ?1) ORDER BY id";

/// Puts RUNNING tasks back to QUEUED at start-up: all of them on a store this process
/// holds alone, or those leased by `owner` (a restarted node) — nothing else can still
/// be running them.
pub fn requeue_running(db: &mut dyn Db, now: UnixMillis, owner: Option<&str>) -> StoreResult<()> {
    let running = ids_of(db, REQUEUE_RUNNING_SQL, args![owner])?;
    if !running.is_empty() {
        tracing::warn!(
            requeued = running.len(),
            "tasks that were running when the last process stopped will run again"
        );
    }
    for id in running {
        if let Some(task) = unfinished(db, id)? {
            requeue(db, &task, now)?;
        }
    }
    Ok(())
}

/// Joined by the task's resource, so that SQLite walks the unfinished tasks and looks
/// each resource up, rather than walking every resource.
pub const READY_SQL: &str = "SELECT t.id, t.not_before
     FROM tasks t JOIN resources r ON r.id = t.resource_id AND r.active_task = t.id
     WHERE t.state IN ('QUEUED', 'RUNNING') AND t.state = 'QUEUED' ORDER BY t.id LIMIT ?1";

/// The QUEUED tasks at the head of their resource's queue (due now or later), oldest
/// first, at most `limit`.
pub fn ready(db: &mut dyn Db, limit: u32) -> StoreResult<Vec<Runnable>> {
    db.query_all(READY_SQL, args![limit], |r: &Row| {
        Ok(Runnable {
            task: stored_id(r.get(0)?)?,
            not_before: r.get(1)?,
        })
    })
}

fn ids_of(db: &mut dyn Db, sql: &str, args: &[crate::sql::Value<'_>]) -> StoreResult<Vec<i64>> {
    db.query_all(sql, args, |r: &Row| r.get(0))
}

pub fn cancel(
    db: &mut dyn Db,
    account: AccountId,
    id: RequestId,
    now: UnixMillis,
) -> StoreResult<Option<Cancellation>> {
    let key = id.get() as i64;
    let mut ids = ids_of(
        db,
        "SELECT id FROM tasks WHERE id = ?1 AND account_id = ?2",
        args![key, account.0],
    )?;
    if ids.is_empty() {
        ids = ids_of(
            db,
            "SELECT t.id FROM tasks t JOIN task_groups g ON g.id = t.group_id
             WHERE g.id = ?1 AND g.account_id = ?2 ORDER BY t.id",
            args![key, account.0],
        )?;
        if ids.is_empty() {
            return Ok(None);
        }
    }
    let mut outcomes = Vec::with_capacity(ids.len());
    let mut runnable = Vec::new();
    // Last task first: a task waiting behind another of the same group is canceled
    // before the one ahead ends, so ending that one never promotes (and precondition-
    // checks, possibly failing) a task this cancel is about to cancel.
    for task in ids.into_iter().rev() {
        let found = unfinished(db, task)?
            .ok_or_else(|| StoreError::Backend(format!("task {task} vanished")))?;
        let outcome = match found.state.as_str() {
            "RUNNING" => {
                db.send(
                    "UPDATE tasks SET cancel_requested = 1 WHERE id = ?1",
                    args![task],
                )?;
                CancelOutcome::Requested
            }
            "QUEUED" => {
                let message = match found.attempts {
                    0 => "canceled by request before it started".to_owned(),
                    n => {
                        format!("canceled by request while waiting to retry, after {n} attempt(s)")
                    }
                };
                let ending = Ending::Canceled(TaskError::operation_failed(message));
                runnable.extend(finish(db, &found, ending, now)?);
                CancelOutcome::Canceled
            }
            _ => CancelOutcome::TooLate,
        };
        outcomes.push((stored_id(task)?, outcome));
    }
    outcomes.reverse();
    // A task released by one cancel may itself be canceled later in the same group.
    runnable.retain(|r| {
        !outcomes
            .iter()
            .any(|(task, outcome)| *task == r.task && *outcome == CancelOutcome::Canceled)
    });
    let tasks = outcomes
        .into_iter()
        .map(|(task, outcome)| Ok((task_by_id(db, task)?, outcome)))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(Cancellation { tasks, runnable }))
}

pub fn purge(
    db: &mut dyn Db,
    state: &mut WriterState,
    retention: &Retention,
) -> StoreResult<PurgeReport> {
    let batch = i64::from(retention.batch.max(1));
    let mut report = PurgeReport::default();

    let finished: Vec<(i64, i64, Option<i64>)> = {
        db.query_all(
            "SELECT id, account_id, group_id FROM tasks
             WHERE finished_at IS NOT NULL AND finished_at < ?1
             ORDER BY finished_at LIMIT ?2",
            args![retention.tasks_finished_before, batch],
            |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?
    };
    report.tasks = finished.len() as u64;
    // Per account, the highest ID deleted (a task's or its group's); per group, one
    // check whether it is left empty.
    let mut watermarks: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let mut groups: Vec<i64> = Vec::new();
    for (task, account, group) in &finished {
        db.send("DELETE FROM tasks WHERE id = ?1", args![task])?;
        let mark = watermarks.entry(*account).or_default();
        *mark = (*mark).max(*task).max(group.unwrap_or(0));
        if let Some(group) = group {
            if !groups.contains(group) {
                groups.push(*group);
            }
        }
    }
    for group in groups {
        let deleted = db.execute(
            "DELETE FROM task_groups WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE group_id = ?1)",
            args![group],
        )?;
        report.groups += deleted;
    }
    for (account, purged) in watermarks {
        db.send(
"UPDATE accounts SET purged_up_to = CASE WHEN purged_up_to > ?2 THEN purged_up_to ELSE ?2 END
         WHERE id = ?1",
args![account, purged])?;
    }

    let (stored_nonces, queries_nonces) = nonces::purge(
        db,
        state.nonce_index().as_deref_mut(),
        retention.nonces_expired_before,
        batch,
    )?;
    report.nonces = stored_nonces + queries_nonces;
    report.tokens = db.execute(
        "DELETE FROM client_tokens WHERE (account_id, token) IN
             (SELECT account_id, token FROM client_tokens WHERE created_at < ?1 LIMIT ?2)",
        args![retention.tokens_created_before, batch],
    )?;
    let mut full = [report.tasks, stored_nonces, queries_nonces, report.tokens]
        .iter()
        .any(|n| *n as i64 >= batch);
    for rule in &retention.resources {
        let deleted = db.execute(
            "DELETE FROM resources WHERE id IN
                 (SELECT id FROM resources WHERE kind = ?1 AND state = ?2 AND updated_at < ?3
                    AND active_task IS NULL LIMIT ?4)",
            args![rule.kind, rule.state.as_str(), rule.idle_before, batch],
        )?;
        full |= deleted as i64 >= batch;
        report.resources += deleted;
    }
    report.more = full;
    Ok(report)
}

pub fn create_account(db: &mut dyn Db, name: &str, now: UnixMillis) -> StoreResult<AccountId> {
    db.query_one(
        "INSERT INTO accounts (name, created_at) VALUES (?1, ?2) RETURNING id",
        args![name, now],
        |r: &Row| r.get(0).map(AccountId),
    )
}

pub fn create_key(db: &mut dyn Db, key: &NewApiKey, now: UnixMillis) -> StoreResult<()> {
    let access = &key.access;
    let list = |list: &Option<Vec<String>>| list.as_ref().map(|l| json!(l).to_string());
    db.execute(
        "INSERT INTO api_keys (secret_id, account_id, secret_key, enabled, created_at,
             allowed_actions, allowed_resources, read_only, rate_per_second, rate_burst, is_main)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9,
             CASE WHEN EXISTS (SELECT 1 FROM api_keys WHERE account_id = ?2) THEN 0 ELSE 1 END)",
        args![
            key.secret_id.as_str(),
            key.account.0,
            key.secret_key,
            now,
            list(&access.actions),
            list(&access.resources),
            access.read_only,
            access.rate.map(|r| r.per_second),
            access.rate.map(|r| r.burst),
        ],
    )?;
    Ok(())
}

pub fn set_account_blocked(db: &mut dyn Db, name: &str, blocked: bool) -> StoreResult<bool> {
    let changed = db.execute(
        "UPDATE accounts SET blocked = ?2 WHERE name = ?1",
        args![name, blocked],
    )?;
    Ok(changed == 1)
}

/// Refuses (the caller rolls back) a submission that took the account over a limit.
/// An account's unfinished tasks, counted through the index of unfinished tasks by
/// resource (its condition on `state` is that partial index's).
pub const UNFINISHED_TASKS_SQL: &str =
    "SELECT COUNT(*) FROM tasks WHERE account_id = ?1 AND state IN ('QUEUED', 'RUNNING')";

fn check_limits(
    db: &mut dyn Db,
    account: AccountId,
    limits: AccountLimits,
    added_tasks: bool,
    added_resources: bool,
) -> StoreResult<()> {
    let checks = [
        (
            added_tasks,
            limits.max_unfinished_tasks,
            "unfinished tasks",
            UNFINISHED_TASKS_SQL,
        ),
        (
            added_resources,
            limits.max_resources,
            "resources",
            "SELECT COUNT(*) FROM resources WHERE account_id = ?1",
        ),
    ];
    for (added, limit, what, count_sql) in checks {
        if !added || limit == 0 {
            continue;
        }
        let count: i64 = db.query_one(count_sql, args![account.0], |r| r.get(0))?;
        let count = count as u64;
        if count > limit {
            return Err(StoreError::LimitExceeded {
                what,
                limit,
                would_be: count,
            });
        }
    }
    Ok(())
}

pub fn set_key_enabled(db: &mut dyn Db, secret_id: &SecretId, enabled: bool) -> StoreResult<bool> {
    let changed = db.execute(
        "UPDATE api_keys SET enabled = ?2 WHERE secret_id = ?1",
        args![secret_id.as_str(), enabled],
    )?;
    Ok(changed == 1)
}

fn effect_to_json(effect: &Effect) -> Value {
    let state = |s: &Option<ResourceState>| s.as_ref().map(|s| s.as_str().to_owned());
    json!({
        "transitional": state(&effect.transitional),
        "onSuccess": state(&effect.on_success),
        "onFailure": state(&effect.on_failure),
        "patch": effect.patch,
    })
}

pub fn effect_from_json(text: &str) -> StoreResult<Effect> {
    let value = parse_object(text)?;
    let state = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(ResourceState::new)
    };
    Ok(Effect {
        transitional: state("transitional"),
        on_success: state("onSuccess"),
        on_failure: state("onFailure"),
        patch: value
            .get("patch")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

pub fn parse_object(text: &str) -> StoreResult<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(StoreError::Backend(format!(
            "corrupt JSON object in the store: {text:.80}"
        ))),
    }
}

/// Replaces every stored SecretKey by `reseal(secret_id, stored)` when it gives a new
/// value (all or nothing: an error leaves every row as it was); returns how many changed.
pub fn reseal_keys(
    db: &mut dyn Db,
    reseal: impl Fn(&str, &str) -> Result<Option<String>, String>,
) -> StoreResult<usize> {
    let rows: Vec<(String, String)> = db.query_all(
        "SELECT secret_id, secret_key FROM api_keys ORDER BY secret_id",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut changed = 0;
    for (secret_id, stored) in rows {
        if let Some(sealed) = reseal(&secret_id, &stored).map_err(StoreError::Backend)? {
            db.send(
                "UPDATE api_keys SET secret_key = ?2 WHERE secret_id = ?1",
                args![secret_id, sealed],
            )?;
            changed += 1;
        }
    }
    Ok(changed)
}
