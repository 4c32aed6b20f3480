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

/// Writer-owned state that jobs may use and change.
pub struct WriterState {
    /// The next task/group ID; persisted in `meta` with each batch that used it.
    pub next_id: u64,
    persisted_next_id: u64,
}

impl WriterState {
    pub fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
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
        let next_id: u64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(backend)? as u64;
        let state = WriterState {
            next_id,
            persisted_next_id: next_id,
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
        let commit = persist_next_id(&conn, &state)
            .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
        match &commit {
            Ok(()) => state.persisted_next_id = state.next_id,
            Err(error) => {
                tracing::error!(%error, jobs = finishes.len(), "store commit failed");
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for finish in finishes {
            finish(commit.as_ref().map(|_| ()));
        }
    }
    tracing::debug!("store writer stopped");
}

fn persist_next_id(conn: &Connection, state: &WriterState) -> StoreResult<()> {
    if state.next_id != state.persisted_next_id {
        conn.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'next_id'")
            .and_then(|mut s| s.execute([state.next_id as i64]))
            .map_err(backend)?;
    }
    Ok(())
}

pub fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
