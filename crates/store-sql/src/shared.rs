//! Writes of one kind that share a writer job: every request that arrives while one
//! job of its kind is queued joins it, and the job carries them all out together (one
//! statement for all claims, two for all completions, on the writer's connection).
//! Workers claim and complete at once when tasks arrive together, so on PostgreSQL
//! this saves round trips and statements per task; each request still answers only
//! once its job is committed.

use crate::sql::Db;
use crate::writer::{WriteMode, WriterHandle, WriterState};
use qtask_store::{StoreError, StoreResult};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

type Reply<A> = oneshot::Sender<StoreResult<A>>;
/// Requests and where each one's answer goes.
type Waiting<Q, A> = Arc<Mutex<Vec<(Q, Reply<A>)>>>;

/// Carries out the requests of a job: one answer per request, in their order. An
/// error fails every request of the job.
pub type Together<Q, A> =
    fn(&mut dyn Db, &mut WriterState, Vec<Q>) -> StoreResult<Vec<StoreResult<A>>>;

/// The requests of kind `Q` not yet taken by a writer job. Invariant: it is non-empty
/// exactly while one job that will take it is queued — the request that makes it
/// non-empty queues that job, and only that job empties it.
pub struct Shared<Q, A> {
    waiting: Waiting<Q, A>,
    mode: WriteMode,
    together: Together<Q, A>,
}

impl<Q: Send + 'static, A: Send + 'static> Shared<Q, A> {
    pub fn new(mode: WriteMode, together: Together<Q, A>) -> Self {
        Self {
            waiting: Arc::default(),
            mode,
            together,
        }
    }

    /// Carries out `request` in the writer job now queued for its kind, or in a new one.
    pub async fn write(&self, writer: &WriterHandle, request: Q) -> StoreResult<A> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut waiting = lock(&self.waiting);
            waiting.push((request, reply));
            waiting.len() == 1
        };
        if first {
            self.queue_job(writer);
        }
        answer
            .await
            .map_err(|_| StoreError::Backend("the store writer stopped".into()))?
    }

    fn queue_job(&self, writer: &WriterHandle) {
        // The replies of the requests the job took, for the answers after the commit.
        let taken: Arc<Mutex<Vec<Reply<A>>>> = Arc::default();
        let (waiting, taken_by_op, together) = (self.waiting.clone(), taken.clone(), self.together);
        let op = move |db: &mut dyn Db, state: &mut WriterState| {
            let requests: Vec<Q> = {
                let mut waiting = lock(&waiting);
                let mut replies = lock(&taken_by_op);
                waiting
                    .drain(..)
                    .map(|(request, reply)| {
                        replies.push(reply);
                        request
                    })
                    .collect()
            };
            together(db, state, requests)
        };
        let waiting = self.waiting.clone();
        let answer = move |result: StoreResult<Vec<StoreResult<A>>>| {
            let mut replies = std::mem::take(&mut *lock(&taken));
            if replies.is_empty() {
                // The job never ran (its transaction did not start): the requests are
                // still waiting, and no other job was queued for them.
                replies = lock(&waiting).drain(..).map(|(_, reply)| reply).collect();
            }
            match result {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), replies.len(), "one answer per request");
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        };
        if let Err(error) = writer.enqueue(self.mode, op, answer) {
            for (_, reply) in lock(&self.waiting).drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// The lock, also after a panic elsewhere: the vectors stay consistent (every change
/// is a push or a drain).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
