//! The embedded SQLite backend of the store.
//!
//! Durability settings (see ARCHITECTURE.md, "Durability"): WAL journal with
//! `synchronous = FULL`, so every commit is fsynced before any caller is answered; a
//! SIGKILL or a power loss loses nothing that was answered. Writes go through one writer
//! thread that commits them in groups ([`writer`]); reads use a pool of read-only
//! connections that WAL lets run beside the writer.

mod reads;
mod schema;
mod writer;
mod writes;

use async_trait::async_trait;
use qtask_core::{AccountId, RequestId, SecretId, UnixMillis};
use qtask_store::*;
use r2d2_sqlite::rusqlite::{Connection, OpenFlags};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::{Path, PathBuf};
use std::time::Duration;
use writer::{backend, WriterHandle};

pub use schema::LATEST as SCHEMA_VERSION;

/// How long a connection waits for another process's lock (a `qtask keys` command
/// beside a running server) before it reports the database as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;

pub struct SqliteStore {
    path: PathBuf,
    writer: WriterHandle,
    readers: r2d2::Pool<SqliteConnectionManager>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(backend)?;
        let found: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        if found > schema::LATEST {
            return Err(StoreError::Backend(format!(
                "{} has schema version {found}, newer than this qtask understands ({}); use a newer qtask",
                path.display(),
                schema::LATEST
            )));
        }
        schema::migrate(&mut conn).map_err(backend)?;
        let (writer, _thread) = WriterHandle::spawn(conn)?;

        let manager = SqliteConnectionManager::file(path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(|c| {
                c.busy_timeout(BUSY_TIMEOUT)?;
                c.execute_batch("PRAGMA query_only = ON;")
            });
        let readers = r2d2::Pool::builder()
            .max_size(READERS)
            .min_idle(Some(1))
            .build(manager)
            .map_err(|e| StoreError::Backend(format!("cannot open read connections: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T, F>(&self, query: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .get()
                .map_err(|e| StoreError::Backend(format!("no read connection: {e}")))?;
            query(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("a read panicked: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn record_nonce(&self, claim: NonceClaim) -> StoreResult<NonceOutcome> {
        self.writer
            .write(move |c, _| writes::record_nonce(c, &claim))
            .await
    }

    async fn submit(&self, submission: Submission) -> StoreResult<Submitted> {
        self.writer
            .write(move |c, s| writes::submit(c, s, submission))
            .await
    }

    async fn claim(&self, task: RequestId, lease: Lease) -> StoreResult<Option<ClaimedTask>> {
        self.writer
            .write(move |c, s| writes::claim(c, s, task, &lease))
            .await
    }

    async fn renew(
        &self,
        task: RequestId,
        fence: Fence,
        expires_at: UnixMillis,
    ) -> StoreResult<LeaseStatus> {
        self.writer
            .write(move |c, _| writes::renew(c, task, fence, expires_at))
            .await
    }

    async fn complete(
        &self,
        task: RequestId,
        fence: Fence,
        outcome: TaskOutcome,
        now: UnixMillis,
    ) -> StoreResult<Completion> {
        self.writer
            .write(move |c, _| writes::complete(c, task, fence, outcome, now))
            .await
    }

    async fn release(
        &self,
        task: RequestId,
        fence: Fence,
        now: UnixMillis,
    ) -> StoreResult<Option<Vec<Runnable>>> {
        self.writer
            .write(move |c, _| writes::release(c, task, fence, now))
            .await
    }

    async fn rescue(&self, now: UnixMillis, keep: Vec<RequestId>) -> StoreResult<Vec<Runnable>> {
        self.writer
            .write(move |c, _| writes::rescue(c, now, &keep))
            .await
    }

    async fn recover(&self, now: UnixMillis) -> StoreResult<Vec<Runnable>> {
        self.writer.write(move |c, _| writes::recover(c, now)).await
    }

    async fn cancel(
        &self,
        account: AccountId,
        id: RequestId,
        now: UnixMillis,
    ) -> StoreResult<Option<Cancellation>> {
        self.writer
            .write(move |c, _| writes::cancel(c, account, id, now))
            .await
    }

    async fn purge(&self, retention: Retention) -> StoreResult<PurgeReport> {
        self.writer
            .write(move |c, _| writes::purge(c, &retention))
            .await
    }

    async fn purged(&self, account: AccountId, id: RequestId) -> StoreResult<bool> {
        self.read(move |c| reads::purged(c, account, id)).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.read(reads::stats).await
    }

    async fn queue_summary(&self, now: UnixMillis) -> StoreResult<QueueSummary> {
        self.read(move |c| reads::queue_summary(c, now)).await
    }

    async fn api_key(&self, secret_id: &SecretId) -> StoreResult<Option<ApiKey>> {
        let secret_id = secret_id.clone();
        self.read(move |c| reads::api_key(c, &secret_id)).await
    }

    async fn task(&self, account: AccountId, id: RequestId) -> StoreResult<Option<TaskRecord>> {
        self.read(move |c| reads::task(c, account, id)).await
    }

    async fn group(&self, account: AccountId, id: RequestId) -> StoreResult<Option<GroupRecord>> {
        self.read(move |c| reads::group(c, account, id)).await
    }

    async fn tasks(
        &self,
        account: AccountId,
        filter: TaskFilter,
        page: Page,
    ) -> StoreResult<Listing<TaskRecord>> {
        self.read(move |c| reads::tasks(c, account, &filter, page))
            .await
    }

    async fn resources(
        &self,
        account: AccountId,
        filter: ResourceFilter,
        page: Page,
    ) -> StoreResult<Listing<ResourceRecord>> {
        self.read(move |c| reads::resources(c, account, &filter, page))
            .await
    }

    async fn create_account(&self, name: &str, now: UnixMillis) -> StoreResult<AccountId> {
        let name = name.to_owned();
        self.writer
            .write(move |c, _| writes::create_account(c, &name, now))
            .await
    }

    async fn account_by_name(&self, name: &str) -> StoreResult<Option<AccountId>> {
        let name = name.to_owned();
        self.read(move |c| reads::account_by_name(c, &name)).await
    }

    async fn create_key(&self, key: NewApiKey, now: UnixMillis) -> StoreResult<()> {
        self.writer
            .write(move |c, _| writes::create_key(c, &key, now))
            .await
    }

    async fn set_key_enabled(&self, secret_id: &SecretId, enabled: bool) -> StoreResult<bool> {
        let secret_id = secret_id.clone();
        self.writer
            .write(move |c, _| writes::set_key_enabled(c, &secret_id, enabled))
            .await
    }

    async fn set_account_blocked(&self, name: &str, blocked: bool) -> StoreResult<bool> {
        let name = name.to_owned();
        self.writer
            .write(move |c, _| writes::set_account_blocked(c, &name, blocked))
            .await
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.read(reads::keys).await
    }
}
