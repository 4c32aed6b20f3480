//! Claims share a writer job: every claim that arrives while one job is queued joins
//! it, and the job claims them all in one statement (`writes::claim_many`). Workers
//! claim at once when tasks arrive together, so on PostgreSQL this saves a round trip
//! and a statement per task; a claim still answers only once it is committed.

use crate::writer::{WriteMode, WriterHandle};
use crate::writes;
use qtask_core::RequestId;
use qtask_store::{ClaimedTask, Lease, StoreError, StoreResult};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<StoreResult<Option<ClaimedTask>>>;

/// A claim waiting for its writer job.
struct Waiting {
    task: RequestId,
    lease: Lease,
    reply: Reply,
}

/// The claims not yet taken by a writer job. Invariant: it is non-empty exactly while
/// one job that will take it is queued — the claim that makes it non-empty queues that
/// job, and only that job empties it.
#[derive(Default, Clone)]
pub struct Claims {
    waiting: Arc<Mutex<Vec<Waiting>>>,
}

impl Claims {
    pub async fn claim(
        &self,
        writer: &WriterHandle,
        task: RequestId,
        lease: Lease,
    ) -> StoreResult<Option<ClaimedTask>> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut waiting = lock(&self.waiting);
            waiting.push(Waiting { task, lease, reply });
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
        // Lazy: a claim a power failure loses leaves its task QUEUED, to run again after
        // the restart, as a claimed task whose run the failure cut would (the restart
        // takes its own RUNNING tasks back). Its completion commits durably, and with it
        // every earlier write. Atomic: one statement per 256 claims, which changes
        // nothing when it fails.
        let mode = WriteMode {
            atomic: true,
            lazy: true,
        };
        // The replies of the claims the job took, for the answer after the commit.
        let taken: Arc<Mutex<Vec<Reply>>> = Arc::default();
        let (waiting, taken_by_op) = (self.waiting.clone(), taken.clone());
        let op = move |db: &mut dyn crate::sql::Db, state: &mut crate::writer::WriterState| {
            let claims: Vec<(RequestId, Lease)> = {
                let mut waiting = lock(&waiting);
                let mut replies = lock(&taken_by_op);
                waiting
                    .drain(..)
                    .map(|w| {
                        replies.push(w.reply);
                        (w.task, w.lease)
                    })
                    .collect()
            };
            writes::claim_many(db, state, &claims)
        };
        let waiting = self.waiting.clone();
        let answer = move |result: StoreResult<Vec<StoreResult<Option<ClaimedTask>>>>| {
            let mut replies = std::mem::take(&mut *lock(&taken));
            if replies.is_empty() {
                // The job never ran (its transaction did not start): the claims are
                // still waiting, and no other job was queued for them.
                replies = lock(&waiting).drain(..).map(|w| w.reply).collect();
            }
            match result {
                Ok(claimed) => {
                    for (reply, claimed) in replies.into_iter().zip(claimed) {
                        let _ = reply.send(claimed);
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        };
        if let Err(error) = writer.enqueue(mode, op, answer) {
            for waiting in lock(&self.waiting).drain(..) {
                let _ = waiting.reply.send(Err(error.clone()));
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
