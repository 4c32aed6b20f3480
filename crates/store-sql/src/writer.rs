//! Group commit: one thread owns the write connection. Callers send it jobs; it takes
//! every job waiting (up to [`MAX_BATCH`]), runs each in its own savepoint inside one
//! transaction, commits once — one fsync for the whole group — and only then answers
//! each caller. A job that fails rolls back to its savepoint without touching the others.
//! A job alone in its group needs no savepoint: if it fails, the transaction rolls back.
//!
//! On a database several qtask nodes share, each batch first takes the cluster-wide
//! write lock (see [`WriteConn::begin`]), so batches from different nodes never
//! interleave: every guarantee of the single-node store (nonces, client tokens, one
//! task at a time per resource, fencing) holds across nodes without per-row locking.

use crate::args;
use crate::nonces::{self, NonceIndex};
use crate::sql::{Db, Row};
use qtask_store::{StoreError, StoreResult};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The most jobs one transaction takes. Large enough to amortise the fsync, small
/// enough that one commit never holds callers for long.
pub const MAX_BATCH: usize = 512;

/// The write connection of a backend.
pub trait WriteConn: Db + Send + 'static {
    /// Opens a batch's transaction. On a shared database it also takes the
    /// cluster-wide write lock, held until commit or rollback.
    /// `sync`: the commit must be durable before it returns; a backend may ignore
    /// `false` and always wait for the disk.
    fn begin(&mut self, sync: bool) -> StoreResult<()>;
    fn commit(&mut self) -> StoreResult<()>;
    fn rollback(&mut self);
    /// Whether other processes write the same database (the counters must then be
    /// read again in every batch, under the write lock).
    fn shared(&self) -> bool;
    /// Inside the open transaction: tells the other nodes, on commit, that tasks
    /// became runnable (a shared database; nothing to do on an exclusive one).
    fn notify_ready(&mut self) -> StoreResult<()> {
        Ok(())
    }
    /// Called after a batch's callers were answered: housekeeping that should hold up
    /// the next batch rather than this one's callers.
    fn after_batch(&mut self) {}
}

/// A counter kept in the writer and persisted in `meta` with each batch that used it,
/// so allocating costs no statement of its own.
struct Counter {
    key: &'static str,
    next: u64,
    persisted: u64,
}

impl Counter {
    fn load(db: &mut dyn Db, key: &'static str) -> StoreResult<Self> {
        let next: u64 = db.query_one(
            "SELECT value FROM meta WHERE key = ?1",
            args![key],
            |r: &Row| r.get(0),
        )?;
        Ok(Self {
            key,
            next,
            persisted: next,
        })
    }

    fn allocate(&mut self) -> u64 {
        let value = self.next;
        self.next += 1;
        value
    }

    fn persist(&self, db: &mut dyn Db) -> StoreResult<()> {
        if self.next != self.persisted {
            db.send(
                "UPDATE meta SET value = ?2 WHERE key = ?1",
                args![self.key, self.next],
            )?;
        }
        Ok(())
    }
}

/// Writer-owned state that jobs may use and change.
pub struct WriterState {
    /// Task and group IDs: never reused, even after deletions.
    ids: Counter,
    /// Fencing tokens: each claim draws one larger than all before.
    fences: Counter,
    /// Set by a job that made tasks runnable: a shared database tells the other nodes.
    pub(crate) woke_tasks: bool,
    /// The nonces, on a database no other process writes (see `nonces`): shared with
    /// the store, which claims queries' nonces in it on the callers' threads.
    pub(crate) nonces: Option<SharedNonceIndex>,
    /// Tasks this batch inserted (all QUEUED), added to `task_state_counts` once at
    /// commit. A trigger per inserted row did it before: on SQLite a trigger makes each
    /// INSERT open a statement journal, copying every page the insert touches first
    /// (with its close, 14 % of the writer's samples in a `chain` profile).
    queued_inserted: u64,
}

/// Where a job starts: what it told the writer's state is undone to here if it fails.
pub(crate) struct Mark {
    nonces: Option<nonces::Mark>,
    queued_inserted: u64,
}

/// The nonce index of a database no other process writes, shared by the writer and
/// the store's callers.
pub type SharedNonceIndex = Arc<Mutex<NonceIndex>>;

/// The index, also after a panic elsewhere: each of its changes leaves it consistent.
pub fn lock_nonces(index: &SharedNonceIndex) -> MutexGuard<'_, NonceIndex> {
    index
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl WriterState {
    fn load(db: &mut dyn Db, shared: bool) -> StoreResult<Self> {
        Ok(Self {
            ids: Counter::load(db, "next_id")?,
            fences: Counter::load(db, "next_fence")?,
            woke_tasks: false,
            queued_inserted: 0,
            nonces: if shared {
                None
            } else {
                Some(Arc::new(Mutex::new(NonceIndex::load(db)?)))
            },
        })
    }

    /// Reads the counters again, in one query: other nodes may have moved them.
    fn reload_counters(&mut self, db: &mut dyn Db) -> StoreResult<()> {
        let values: Vec<(String, u64)> = db.query_all(
            "SELECT key, value FROM meta WHERE key IN (?1, ?2)",
            args![self.ids.key, self.fences.key],
            |r: &Row| Ok((r.get(0)?, r.get(1)?)),
        )?;
        for counter in [&mut self.ids, &mut self.fences] {
            let (_, next) = values
                .iter()
                .find(|(key, _)| key == counter.key)
                .ok_or_else(|| StoreError::Backend(format!("no {} in meta", counter.key)))?;
            counter.next = *next;
            counter.persisted = *next;
        }
        Ok(())
    }

    pub fn allocate_id(&mut self) -> u64 {
        self.ids.allocate()
    }

    pub fn allocate_fence(&mut self) -> u64 {
        self.fences.allocate()
    }

    /// Counts a task inserted as QUEUED: the batch adds them to the counts at commit.
    pub(crate) fn inserted_queued_task(&mut self) {
        self.queued_inserted += 1;
    }

    fn persist(&self, db: &mut dyn Db) -> StoreResult<()> {
        self.ids.persist(db)?;
        self.fences.persist(db)?;
        if self.queued_inserted > 0 {
            db.send(
                "INSERT INTO task_state_counts (state, n) VALUES ('QUEUED', ?1)
                 ON CONFLICT (state) DO UPDATE SET n = task_state_counts.n + excluded.n",
                args![self.queued_inserted],
            )?;
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.ids.persisted = self.ids.next;
        self.fences.persisted = self.fences.next;
        self.queued_inserted = 0;
        if let Some(mut nonces) = self.nonce_index() {
            nonces.committed();
        }
    }

    fn rolled_back(&mut self) {
        self.queued_inserted = 0;
        if let Some(mut nonces) = self.nonce_index() {
            nonces.rolled_back();
        }
    }

    /// Where a job starts, to undo what it told the state if it fails.
    fn mark(&self) -> Mark {
        Mark {
            nonces: self.nonce_index().map(|nonces| nonces.mark()),
            queued_inserted: self.queued_inserted,
        }
    }

    /// The job that started at `mark` failed and its changes were undone.
    fn job_failed(&mut self, mark: Mark) {
        self.queued_inserted = mark.queued_inserted;
        if let (Some(mut nonces), Some(at)) = (self.nonce_index(), mark.nonces) {
            nonces.undo_to(at);
        }
    }

    /// The nonce index, locked (a database no other process writes).
    pub(crate) fn nonce_index(&self) -> Option<MutexGuard<'_, NonceIndex>> {
        self.nonces.as_ref().map(lock_nonces)
    }
}

/// Called once the batch's transaction has committed (`Ok`) or failed (`Err`).
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// How a job runs in its batch.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// The transaction did not start: the job answers with the batch's error.
    Not,
    /// The only job of its batch: no savepoint; a failure rolls the transaction back.
    Alone,
    /// One of several: in a savepoint of its own.
    InGroup,
}
/// Runs the job's operation and returns how to answer its caller, and whether the
/// operation failed.
type Job = Box<dyn FnOnce(&mut dyn Db, &mut WriterState, Run) -> (Finish, bool) + Send>;

/// A job waiting for its batch.
struct Queued {
    job: Job,
    /// Whether its batch's commit must reach the disk before anyone is answered.
    sync: bool,
}

/// What a write may skip, when its operation allows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteMode {
    /// The operation has changed nothing when it fails (one change at most, and no
    /// statement that fails short of a broken connection): no savepoint of its own.
    pub atomic: bool,
    /// Losing the write to a power failure is harmless (what it recorded is redone
    /// after the restart): its batch may commit without waiting for the disk, if every
    /// job of the batch is lazy and the backend allows it (see [`WriteConn::commit`]).
    pub lazy: bool,
}

#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Queued>,
    nonces: Option<SharedNonceIndex>,
}

impl WriterHandle {
    /// Starts the writer thread on `conn`.
    pub fn spawn<C: WriteConn>(mut conn: C) -> StoreResult<Self> {
        let shared = conn.shared();
        let state = WriterState::load(&mut conn, shared)?;
        let nonces = state.nonces.clone();
        let (jobs, inbox) = mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("qtask-store-writer".into())
            .spawn(move || run(conn, state, inbox))
            .map_err(|e| StoreError::Backend(format!("cannot start the store writer: {e}")))?;
        Ok(Self { jobs, nonces })
    }

    /// The nonce index the writer keeps, on a database no other process writes.
    pub fn nonce_index(&self) -> Option<&SharedNonceIndex> {
        self.nonces.as_ref()
    }

    /// Runs `op` in the next group commit and answers once it is durable.
    pub async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db, &mut WriterState) -> StoreResult<T> + Send + 'static,
    {
        self.write_with(WriteMode::default(), op).await
    }

    /// Runs `op` in the next group commit, as `mode` allows, and answers once it is
    /// committed.
    pub async fn write_with<T, F>(&self, mode: WriteMode, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db, &mut WriterState) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.enqueue(mode, op, move |result| {
            let _ = reply.send(result);
        })?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store writer stopped".into()))?
    }

    /// Queues `op` for the next group commit, as `mode` allows. Once the batch has
    /// committed or failed, `answer` gets `op`'s result (or the batch's error) on the
    /// writer's thread — also when `op` never ran because the transaction did not start.
    /// An error: the store is closed, and `answer` is not called.
    pub fn enqueue<T, F, A>(&self, mode: WriteMode, op: F, answer: A) -> StoreResult<()>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db, &mut WriterState) -> StoreResult<T> + Send + 'static,
        A: FnOnce(StoreResult<T>) + Send + 'static,
    {
        let job: Job = Box::new(move |db, state, run| {
            let result = match run {
                Run::Not => Err(StoreError::Backend(
                    "not run: the transaction did not start".into(),
                )),
                Run::Alone => guarded(db, state, op),
                Run::InGroup if !mode.atomic => in_savepoint(db, state, op),
                Run::InGroup => guarded(db, state, op),
            };
            let failed = result.is_err();
            let finish: Finish = Box::new(move |commit| {
                answer(match commit {
                    Ok(()) => result,
                    Err(e) => Err(e.clone()),
                });
            });
            (finish, failed)
        });
        self.jobs
            .send(Queued {
                job,
                sync: !mode.lazy,
            })
            .map_err(|_| StoreError::Backend("the store is closed".into()))
    }
}

/// Runs `op`, turning a panic into an error, and waits for the statements it sent: a
/// job is done only once the database has answered all of them.
fn guarded<T>(
    db: &mut dyn Db,
    state: &mut WriterState,
    op: impl FnOnce(&mut dyn Db, &mut WriterState) -> StoreResult<T>,
) -> StoreResult<T> {
    let result = catch_unwind(AssertUnwindSafe(|| op(&mut *db, state)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a store operation panicked".into())));
    let flushed = db.flush();
    result.and_then(|value| flushed.map(|()| value))
}

/// Runs `op` in a savepoint: if it fails, what it changed is undone, in the database
/// and in the writer's state (the nonces it entered).
pub(crate) fn in_savepoint<T>(
    db: &mut dyn Db,
    state: &mut WriterState,
    op: impl FnOnce(&mut dyn Db, &mut WriterState) -> StoreResult<T>,
) -> StoreResult<T> {
    db.control("SAVEPOINT job")?;
    let mark = state.mark();
    let result = guarded(&mut *db, state, op);
    if result.is_err() {
        db.control("ROLLBACK TO SAVEPOINT job")?;
        state.job_failed(mark);
    }
    db.control("RELEASE SAVEPOINT job")?;
    result
}

/// Opens the batch's transaction and, on a shared database, reads the counters other
/// nodes may have moved.
fn begin<C: WriteConn>(conn: &mut C, state: &mut WriterState, sync: bool) -> StoreResult<()> {
    conn.begin(sync)?;
    if conn.shared() {
        if let Err(e) = state.reload_counters(conn) {
            conn.rollback();
            return Err(e);
        }
    }
    Ok(())
}

fn run<C: WriteConn>(mut conn: C, mut state: WriterState, inbox: mpsc::Receiver<Queued>) {
    while let Ok(first) = inbox.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let sync = batch.iter().any(|queued| queued.sync);
        if let Err(error) = begin(&mut conn, &mut state, sync) {
            tracing::error!(%error, "store writer cannot begin a transaction");
            for queued in batch {
                // The job does not run; its caller gets the error.
                (queued.job)(&mut conn, &mut state, Run::Not).0(Err(&error));
            }
            continue;
        }
        state.woke_tasks = false;
        let run = if batch.len() == 1 {
            Run::Alone
        } else {
            Run::InGroup
        };
        let mut failed_alone = false;
        let finishes: Vec<Finish> = batch
            .into_iter()
            .map(|queued| {
                let mark = state.mark();
                let (finish, failed) = (queued.job)(&mut conn, &mut state, run);
                if failed {
                    state.job_failed(mark);
                }
                failed_alone = failed && run == Run::Alone;
                finish
            })
            .collect();
        if failed_alone {
            // Nothing of the failed job may stay, and nothing else is in the transaction;
            // its caller gets the job's own error. (Allocated IDs are not reused: gaps
            // are harmless.)
            conn.rollback();
            state.rolled_back();
            for finish in finishes {
                finish(Ok(()));
            }
            continue;
        }
        let commit = state
            .persist(&mut conn)
            .and_then(|()| {
                if state.woke_tasks {
                    conn.notify_ready()
                } else {
                    Ok(())
                }
            })
            .and_then(|()| conn.commit());
        match &commit {
            Ok(()) => state.committed(),
            Err(error) => {
                tracing::error!(%error, jobs = finishes.len(), "store commit failed");
                // The counters keep counting from what was allocated: gaps are
                // harmless, reuse is not.
                conn.rollback();
                state.rolled_back();
            }
        }
        for finish in finishes {
            finish(commit.as_ref().map(|_| ()));
        }
        conn.after_batch();
    }
    tracing::debug!("store writer stopped");
}

/// The prefix of the channel on which a shared database announces runnable tasks.
pub const READY_CHANNEL: &str = "qtask_ready";
