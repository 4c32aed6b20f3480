//! Group commit: one thread owns the write connection. Callers send it jobs; it takes
//! every job waiting (up to [`MAX_BATCH`]), runs each in its own savepoint inside one
//! transaction, commits once — one fsync for the whole group — and only then answers
//! each caller. A job that fails rolls back to its savepoint without touching the others.

use qtask_store::{StoreError, StoreResult};
use r2d2_sqlite::rusqlite::{self, Connection};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// The most jobs one transaction takes. Large enough to amortise the fsync, small
/// enough that one commit never holds callers for long.
pub const MAX_BATCH: usize = 512;

/// A counter kept in the writer and persisted in `meta` with each batch that used it,
/// so allocating never costs a read.
struct Counter {
    key: &'static str,
    next: u64,
    persisted: u64,
}

impl Counter {
    fn load(conn: &Connection, key: &'static str) -> StoreResult<Self> {
        let next = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(backend)? as u64;
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

    fn persist(&self, conn: &Connection) -> StoreResult<()> {
        if self.next != self.persisted {
            conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")
                .and_then(|mut s| s.execute(rusqlite::params![self.key, self.next as i64]))
                .map_err(backend)?;
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
}

impl WriterState {
    pub fn allocate_id(&mut self) -> u64 {
        self.ids.allocate()
    }

    pub fn allocate_fence(&mut self) -> u64 {
        self.fences.allocate()
    }

    fn persist(&self, conn: &Connection) -> StoreResult<()> {
        self.ids.persist(conn)?;
        self.fences.persist(conn)
    }

    fn committed(&mut self) {
        self.ids.persisted = self.ids.next;
        self.fences.persisted = self.fences.next;
    }
}

/// Called once the batch's transaction has committed (`Ok`) or failed (`Err`).
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// Runs the job's operation (when the flag says the transaction is open) and returns
/// how to answer its caller.
type Job = Box<dyn FnOnce(&Connection, &mut WriterState, bool) -> Finish + Send>;

#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
}

impl WriterHandle {
    /// Starts the writer thread on `conn`.
    pub fn spawn(conn: Connection) -> StoreResult<(Self, std::thread::JoinHandle<()>)> {
        let state = WriterState {
            ids: Counter::load(&conn, "next_id")?,
            fences: Counter::load(&conn, "next_fence")?,
        };
        let (jobs, inbox) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("qtask-store-writer".into())
            .spawn(move || run(conn, state, inbox))
            .map_err(|e| StoreError::Backend(format!("cannot start the store writer: {e}")))?;
        Ok((Self { jobs }, thread))
    }

    /// Runs `op` in the next group commit and answers once it is durable.
    pub async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut WriterState) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn, state, run| {
            let result = if run {
                in_savepoint(conn, state, op)
            } else {
                Err(StoreError::Backend(
                    "not run: the transaction did not start".into(),
                ))
            };
            Box::new(move |commit| {
                let _ = reply.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(e.clone()),
                });
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store writer stopped".into()))?
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    state: &mut WriterState,
    op: impl FnOnce(&Connection, &mut WriterState) -> StoreResult<T>,
) -> StoreResult<T> {
    conn.execute_batch("SAVEPOINT job").map_err(backend)?;
    let result = catch_unwind(AssertUnwindSafe(|| op(conn, state)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a store operation panicked".into())));
    let end = if result.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    conn.execute_batch(end).map_err(backend)?;
    result
}

fn run(conn: Connection, mut state: WriterState, inbox: mpsc::Receiver<Job>) {
    while let Ok(first) = inbox.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let error = backend(e);
            tracing::error!(%error, "store writer cannot begin a transaction");
            for job in batch {
                // The job does not run; its caller gets the error.
                job(&conn, &mut state, false)(Err(&error));
            }
            continue;
        }
        let finishes: Vec<Finish> = batch
            .into_iter()
            .map(|job| job(&conn, &mut state, true))
            .collect();
        let commit = state
            .persist(&conn)
            .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
        match &commit {
            Ok(()) => state.committed(),
            Err(error) => {
                tracing::error!(%error, jobs = finishes.len(), "store commit failed");
                // The counters keep counting from what was allocated: gaps are
                // harmless, reuse is not.
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for finish in finishes {
            finish(commit.as_ref().map(|_| ()));
        }
    }
    tracing::debug!("store writer stopped");
}

pub fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
