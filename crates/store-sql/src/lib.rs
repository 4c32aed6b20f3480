//! The store's logic, written once in SQL for both backends.
//!
//! [`SqlStore`] implements [`Store`] over two things a backend provides: a write
//! connection, driven by the group-committing [`writer`], and a pool of read
//! connections. `qtask-store-sqlite` and `qtask-store-postgres` supply those (and their
//! own migrations); every query, rule and invariant lives here, so the two backends
//! cannot drift apart. See [`sql`] for the small interface the queries are written
//! against.

mod audit;
mod key_changes;
mod nonces;
mod reads;
mod sealing;
mod shared;
pub mod sql;
pub mod writer;
mod writes;

use async_trait::async_trait;
use qtask_core::{AccountId, RequestId, SecretId, UnixMillis};
use qtask_store::*;
use shared::Shared;
use sql::Db;
use std::sync::Arc;
use writer::{WriteConn, WriteMode, WriterHandle};

pub use key_changes::KeyChanges;
pub use sealing::MasterKey;

/// Queries that run again and again whatever the store's size (rescue, the sweep for
/// runnable tasks, queue health) or at every start: each must find its rows through an
/// index, never by walking every task or resource (a test of the SQLite backend checks
/// their plans).
pub const RECURRING_QUERIES: &[&str] = &[
    writes::RESCUE_SQL,
    writes::REQUEUE_RUNNING_SQL,
    writes::READY_SQL,
    reads::QUEUE_SUMMARY_SQL,
    reads::NAMED_SQL,
    nonces::INSERT_NONCE_SQL,
];

pub use reads::NAMED_SQL;
pub use writes::many_row_statements;

/// What the backends' tests check reads only unfinished tasks through the index of
/// unfinished tasks by resource: a task's columns (its queue position) and an account's
/// count of unfinished tasks.
pub const UNFINISHED_TASK_QUERIES: &[&str] = &[
    reads::TASK_OF_ACCOUNT_SQL,
    reads::TASK_BY_ID_SQL,
    writes::UNFINISHED_TASKS_SQL,
];

/// What a database shared by several qtask nodes adds: one node at a time runs the
/// background maintenance, and nodes hear of tasks other nodes made runnable.
pub trait Cluster: Send + Sync + 'static {
    /// Whether this node leads the maintenance now (blocking; takes the lead when free).
    fn lead_maintenance(&self) -> StoreResult<bool>;
    /// Notified when another node has committed runnable tasks.
    fn ready_signal(&self) -> Arc<tokio::sync::Notify>;
    /// Sends `message` to the other nodes, best effort, without blocking.
    fn broadcast_event(&self, message: String);
    /// The messages other nodes broadcast.
    fn remote_events(&self) -> tokio::sync::broadcast::Receiver<Arc<str>>;
}

/// Removes a plain copy of re-sealed keys the backend may keep (SQLite's WAL).
pub type AfterReseal = Box<dyn Fn() -> StoreResult<()> + Send + Sync>;

/// The store over a backend's write connection and read pool `M`.
pub struct SqlStore<M: r2d2::ManageConnection> {
    writer: WriterHandle,
    /// Submissions, claims and completions waiting to share a writer job with others of
    /// their kind.
    claims: Shared<(RequestId, Lease), Option<writes::ClaimedRow>>,
    completions: Shared<writes::Completing, Completion>,
    submissions: Shared<Submission, Submitted>,
    readers: r2d2::Pool<M>,
    /// Seals SecretKeys before they are written and opens them when read; without it
    /// keys are stored as given (tests of the store alone).
    master_key: Option<Arc<MasterKey>>,
    cluster: Option<Arc<dyn Cluster>>,
    after_reseal: Option<AfterReseal>,
    /// Whether a point read may run on the calling async thread (see [`Self::point_read`]).
    inline_point_reads: bool,
    /// Where key changes are marked, on a database one process serves (see `key_changes`).
    key_changes: Option<KeyChanges>,
}

impl<M> SqlStore<M>
where
    M: r2d2::ManageConnection,
    M::Connection: Db,
{
    /// Starts the writer on `writer` (migrations already applied) and reads from
    /// `readers`. A `cluster` makes the store shared: see [`Cluster`].
    pub fn new<W: WriteConn>(
        writer: W,
        readers: r2d2::Pool<M>,
        cluster: Option<Arc<dyn Cluster>>,
    ) -> StoreResult<Self> {
        Ok(Self {
            writer: WriterHandle::spawn(writer)?,
            // Lazy: a claim a power failure loses leaves its task QUEUED, to run again
            // after the restart, as a claimed task whose run the failure cut would (the
            // restart takes its own RUNNING tasks back). Its completion commits durably,
            // and with it every earlier write. Not atomic: many claims may take several
            // statements, so a job of them has a savepoint (one for all its claims).
            claims: Shared::new(
                WriteMode {
                    atomic: false,
                    lazy: true,
                },
                writes::claim_many,
            ),
            completions: Shared::new(WriteMode::default(), writes::complete_many),
            submissions: Shared::new(WriteMode::default(), writes::submit_many),
            readers,
            master_key: None,
            cluster,
            after_reseal: None,
            inline_point_reads: false,
            key_changes: None,
        })
    }

    /// Marks key changes in `changes`, and lets queries trust a key found usable until
    /// the next one (a database one process serves; see `key_changes`).
    pub fn with_key_changes(mut self, changes: KeyChanges) -> Self {
        self.key_changes = Some(changes);
        self
    }

    /// Refuses a key disabled, or an account blocked, since the caller read the key;
    /// reads the key unless it was found usable since the last key change.
    async fn check_key_still_valid(&self, secret_id: &SecretId) -> StoreResult<()> {
        let generation = self.key_changes.as_ref().and_then(KeyChanges::generation);
        if let Some(changes) = &self.key_changes {
            if changes.trusted(secret_id, generation) {
                return Ok(());
            }
        }
        let read = secret_id.clone();
        self.point_read(move |db| nonces::key_still_valid(db, &read))
            .await?;
        if let Some(changes) = &self.key_changes {
            changes.found_usable(secret_id, generation);
        }
        Ok(())
    }

    /// After a committed change that may make keys unusable.
    fn keys_changed(&self) {
        if let Some(changes) = &self.key_changes {
            changes.announce();
        }
    }

    /// Lets reads of one row by its key run on the calling async thread when a read
    /// connection is free: for a backend whose reads are short library calls (SQLite),
    /// never one that blocks on a network or runs a runtime of its own (PostgreSQL).
    pub fn with_inline_point_reads(mut self) -> Self {
        self.inline_point_reads = true;
        self
    }

    /// Runs `hook` after keys were re-sealed.
    pub fn with_after_reseal(mut self, hook: AfterReseal) -> Self {
        self.after_reseal = Some(hook);
        self
    }

    /// Seals SecretKeys with `key` from now on.
    pub fn with_master_key(mut self, key: MasterKey) -> Self {
        self.master_key = Some(Arc::new(key));
        self
    }

    /// Seals the keys stored in plain text (by a qtask without a master key): a
    /// one-time step at start. Returns how many it sealed.
    pub async fn seal_plaintext_keys(&self) -> StoreResult<usize> {
        let Some(master) = self.master_key.clone() else {
            return Ok(0);
        };
        let sealed = self
            .writer
            .write(move |db, _| {
                writes::reseal_keys(db, |secret_id, stored| {
                    if sealing::is_sealed(stored) {
                        Ok(None)
                    } else {
                        master.seal(secret_id, stored).map(Some)
                    }
                })
            })
            .await?;
        if sealed > 0 {
            if let Some(hook) = &self.after_reseal {
                hook()?;
            }
        }
        Ok(sealed)
    }

    /// Re-seals every SecretKey under `new` in one transaction (key rotation); a key
    /// that does not open with the current master key stops it, changing nothing.
    /// Returns how many keys it re-sealed.
    pub async fn rotate_master_key(&self, new: MasterKey) -> StoreResult<usize> {
        let current = self
            .master_key
            .clone()
            .ok_or_else(|| StoreError::Backend("rotating needs the current master key".into()))?;
        self.writer
            .write(move |db, _| {
                writes::reseal_keys(db, |secret_id, stored| {
                    let plain = if sealing::is_sealed(stored) {
                        current.open(secret_id, stored)?
                    } else {
                        stored.to_owned()
                    };
                    new.seal(secret_id, &plain).map(Some)
                })
            })
            .await
    }

    /// The key as callers see it: its SecretKey opened.
    fn unseal(&self, mut key: ApiKey) -> StoreResult<ApiKey> {
        if sealing::is_sealed(&key.secret_key) {
            let master = self.master_key.as_ref().ok_or_else(|| {
                StoreError::Backend("the SecretKeys are sealed: qtask needs the master key".into())
            })?;
            key.secret_key = master
                .open(key.secret_id.as_str(), &key.secret_key)
                .map_err(StoreError::Backend)?;
        }
        Ok(key)
    }

    /// Runs `query` on a pooled read connection, off the async threads.
    async fn read<T, F>(&self, query: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|e| StoreError::Backend(format!("no read connection: {e}")))?;
            query(&mut *conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("a read panicked: {e}")))?
    }

    /// Runs `query`, a read of a few rows by key, on the calling thread when the backend
    /// allows it and a read connection is free; else as [`Self::read`] does. A hand-off
    /// to the blocking pool and back cost more than the read itself: the futex wake-ups
    /// around it were a tenth of a call's CPU (BENCHMARKS.md).
    async fn point_read<T, F>(&self, query: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Db) -> StoreResult<T> + Send + 'static,
    {
        if self.inline_point_reads {
            if let Some(mut conn) = self.readers.try_get() {
                return query(&mut *conn);
            }
        }
        self.read(query).await
    }

    /// A write that may make tasks runnable: when it does, the other nodes of a shared
    /// database are told on commit.
    async fn write_waking<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: MakesRunnable + Send + 'static,
        F: FnOnce(&mut dyn Db, &mut writer::WriterState) -> StoreResult<T> + Send + 'static,
    {
        self.writer
            .write(move |db, state| {
                let result = op(db, state)?;
                state.woke_tasks |= result.makes_runnable();
                Ok(result)
            })
            .await
    }
}

/// Whether a write's outcome made tasks runnable.
trait MakesRunnable {
    fn makes_runnable(&self) -> bool;
}

impl MakesRunnable for Vec<Runnable> {
    fn makes_runnable(&self) -> bool {
        !self.is_empty()
    }
}

impl MakesRunnable for Option<Vec<Runnable>> {
    fn makes_runnable(&self) -> bool {
        self.as_ref().is_some_and(|r| !r.is_empty())
    }
}

impl MakesRunnable for Submitted {
    fn makes_runnable(&self) -> bool {
        matches!(self, Submitted::New { runnable, .. } if !runnable.is_empty())
    }
}

impl MakesRunnable for Completion {
    fn makes_runnable(&self) -> bool {
        matches!(self, Completion::Recorded { runnable } if !runnable.is_empty())
    }
}

impl MakesRunnable for Option<Cancellation> {
    fn makes_runnable(&self) -> bool {
        self.as_ref().is_some_and(|c| !c.runnable.is_empty())
    }
}

#[async_trait]
impl<M> Store for SqlStore<M>
where
    M: r2d2::ManageConnection,
    M::Connection: Db,
{
    async fn record_nonce(&self, claim: NonceClaim) -> StoreResult<NonceOutcome> {
        if let Some(index) = self.writer.nonce_index() {
            // A database no other process writes: the query's nonce is claimed in memory
            // (see `nonces`), once its key is known to be still usable.
            self.check_key_still_valid(&claim.secret_id).await?;
            let found = writer::lock_nonces(index).claim_query(&claim);
            return match found {
                nonces::QueryClaim::Fresh => Ok(NonceOutcome::Fresh),
                nonces::QueryClaim::Resent => Ok(NonceOutcome::Resent { answer: None }),
                nonces::QueryClaim::Reused => nonces::resent_or_reused(&claim, None),
                nonces::QueryClaim::Stored { row } => {
                    let (earlier, claim) = self
                        .point_read(move |db| Ok((nonces::stored(db, row, &claim)?, claim)))
                        .await?;
                    nonces::resent_or_reused(&claim, earlier)
                }
            };
        }
        // On a shared database: one insert, refused without a change. Lazy: a power
        // failure can only lose nonces of queries (a mutating call's nonce commits with
        // its tasks), and a replayed query changes nothing.
        let mode = WriteMode {
            atomic: true,
            lazy: true,
        };
        self.writer
            .write_with(mode, move |db, s| writes::record_nonce(db, s, &claim))
            .await
    }

    async fn submit(&self, submission: Submission) -> StoreResult<Submitted> {
        if self.writer.nonce_index().is_some() {
            // A database no other process writes: the writer inserts the nonce without
            // checking the key (see `nonces::claim`), so it is checked here, as a
            // query's is.
            self.check_key_still_valid(&submission.nonce.secret_id)
                .await?;
        }
        self.submissions.write(&self.writer, submission).await
    }

    async fn claim(&self, task: RequestId, lease: Lease) -> StoreResult<Option<ClaimedTask>> {
        self.claims
            .write(&self.writer, (task, lease))
            .await?
            .map(writes::ClaimedRow::read)
            .transpose()
    }

    async fn renew(
        &self,
        task: RequestId,
        fence: Fence,
        expires_at: UnixMillis,
    ) -> StoreResult<LeaseStatus> {
        self.writer
            .write(move |db, _| writes::renew(db, task, fence, expires_at))
            .await
    }

    async fn complete(
        &self,
        task: RequestId,
        fence: Fence,
        outcome: TaskOutcome,
        now: UnixMillis,
    ) -> StoreResult<Completion> {
        let completing = writes::Completing {
            task,
            fence,
            outcome,
            now,
        };
        self.completions.write(&self.writer, completing).await
    }

    async fn release(
        &self,
        task: RequestId,
        fence: Fence,
        now: UnixMillis,
    ) -> StoreResult<Option<Vec<Runnable>>> {
        self.write_waking(move |db, _| writes::release(db, task, fence, now))
            .await
    }

    async fn rescue(&self, now: UnixMillis, keep: Vec<RequestId>) -> StoreResult<Vec<Runnable>> {
        self.write_waking(move |db, _| writes::rescue(db, now, &keep))
            .await
    }

    async fn recover(&self, now: UnixMillis, node: &str) -> StoreResult<Vec<Runnable>> {
        // Other nodes may be running tasks of a shared database: their leases say which
        // are abandoned, and rescue takes those back.
        let only = self.shared().then(|| node.to_owned());
        self.writer
            .write(move |db, _| {
                writes::requeue_running(db, now, only.as_deref())?;
                writes::ready(db, u32::MAX)
            })
            .await
    }

    async fn ready(&self, limit: u32) -> StoreResult<Vec<Runnable>> {
        self.read(move |db| writes::ready(db, limit)).await
    }

    fn shared(&self) -> bool {
        self.cluster.is_some()
    }

    async fn lead_maintenance(&self) -> StoreResult<bool> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(true);
        };
        tokio::task::spawn_blocking(move || cluster.lead_maintenance())
            .await
            .map_err(|e| StoreError::Backend(format!("the maintenance lock check panicked: {e}")))?
    }

    fn ready_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.cluster.as_ref().map(|c| c.ready_signal())
    }

    fn broadcast_event(&self, message: String) {
        if let Some(cluster) = &self.cluster {
            cluster.broadcast_event(message);
        }
    }

    fn remote_events(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<str>>> {
        self.cluster.as_ref().map(|c| c.remote_events())
    }

    async fn cancel(
        &self,
        account: AccountId,
        id: RequestId,
        now: UnixMillis,
    ) -> StoreResult<Option<Cancellation>> {
        self.write_waking(move |db, _| writes::cancel(db, account, id, now))
            .await
    }

    async fn purge(&self, retention: Retention) -> StoreResult<PurgeReport> {
        self.writer
            .write(move |db, s| writes::purge(db, s, &retention))
            .await
    }

    async fn purged(&self, account: AccountId, id: RequestId) -> StoreResult<bool> {
        self.read(move |db| reads::purged(db, account, id)).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.read(reads::stats).await
    }

    async fn queue_summary(&self, now: UnixMillis) -> StoreResult<QueueSummary> {
        self.read(move |db| reads::queue_summary(db, now)).await
    }

    async fn api_key(&self, secret_id: &SecretId) -> StoreResult<Option<ApiKey>> {
        let secret_id = secret_id.clone();
        self.point_read(move |db| reads::api_key(db, &secret_id))
            .await?
            .map(|key| self.unseal(key))
            .transpose()
    }

    async fn task(&self, account: AccountId, id: RequestId) -> StoreResult<Option<TaskRecord>> {
        self.point_read(move |db| reads::task(db, account, id))
            .await
    }

    async fn group(&self, account: AccountId, id: RequestId) -> StoreResult<Option<GroupRecord>> {
        // By key, and at most 100 tasks (one call's resources): DescribeTaskResult reads
        // it for the requestId of every RunInstances and task-chain call.
        self.point_read(move |db| reads::group(db, account, id))
            .await
    }

    async fn named(&self, account: AccountId, id: RequestId) -> StoreResult<Option<Named>> {
        self.point_read(move |db| reads::named(db, account, id))
            .await
    }

    async fn tasks(
        &self,
        account: AccountId,
        filter: TaskFilter,
        page: Page,
    ) -> StoreResult<Listing<TaskRecord>> {
        self.read(move |db| reads::tasks(db, account, &filter, page))
            .await
    }

    async fn resources(
        &self,
        account: AccountId,
        filter: ResourceFilter,
        page: Page,
    ) -> StoreResult<Listing<ResourceRecord>> {
        self.read(move |db| reads::resources(db, account, &filter, page))
            .await
    }

    async fn create_account(&self, name: &str, now: UnixMillis) -> StoreResult<AccountId> {
        let name = name.to_owned();
        self.writer
            .write(move |db, _| writes::create_account(db, &name, now))
            .await
    }

    async fn account_by_name(&self, name: &str) -> StoreResult<Option<AccountId>> {
        let name = name.to_owned();
        self.read(move |db| reads::account_by_name(db, &name)).await
    }

    async fn create_key(&self, mut key: NewApiKey, now: UnixMillis) -> StoreResult<()> {
        if let Some(master) = &self.master_key {
            key.secret_key = master
                .seal(key.secret_id.as_str(), &key.secret_key)
                .map_err(StoreError::Backend)?;
        }
        self.writer
            .write(move |db, _| writes::create_key(db, &key, now))
            .await
    }

    async fn set_key_enabled(&self, secret_id: &SecretId, enabled: bool) -> StoreResult<bool> {
        let secret_id = secret_id.clone();
        let changed = self
            .writer
            .write(move |db, _| writes::set_key_enabled(db, &secret_id, enabled))
            .await?;
        self.keys_changed();
        Ok(changed)
    }

    async fn set_account_blocked(&self, name: &str, blocked: bool) -> StoreResult<bool> {
        let name = name.to_owned();
        let changed = self
            .writer
            .write(move |db, _| writes::set_account_blocked(db, &name, blocked))
            .await?;
        self.keys_changed();
        Ok(changed)
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.read(reads::keys)
            .await?
            .into_iter()
            .map(|key| self.unseal(key))
            .collect()
    }
}

#[async_trait]
impl<M> AuditLog for SqlStore<M>
where
    M: r2d2::ManageConnection,
    M::Connection: Db,
{
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        let mode = WriteMode {
            atomic: true,
            lazy: false,
        };
        self.writer
            .write_with(mode, move |db, _| audit::append(db, &entry))
            .await
    }

    async fn audit_log(
        &self,
        account: AccountId,
        filter: AuditFilter,
        page: Page,
    ) -> StoreResult<Listing<AuditEntry>> {
        self.read(move |db| audit::list(db, account, &filter, page))
            .await
    }
}
