//! The embedded SQLite backend of the store.
//!
//! Durability settings (see ARCHITECTURE.md, "Durability"): WAL journal with
//! `synchronous = FULL`, so every commit is fsynced before any caller is answered; a
//! SIGKILL or a power loss loses nothing that was answered. Writes go through one writer
//! thread that commits them in groups ([`writer`]); reads use a pool of read-only
//! connections that WAL lets run beside the writer.

mod audit;
mod reads;
mod schema;
mod sealing;
mod writer;
mod writes;

use async_trait::async_trait;
use qtask_core::{AccountId, RequestId, SecretId, UnixMillis};
use qtask_store::*;
use r2d2_sqlite::rusqlite::{Connection, OpenFlags};
use r2d2_sqlite::SqliteConnectionManager;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writer::{backend, WriterHandle};

pub use schema::LATEST as SCHEMA_VERSION;
pub use sealing::MasterKey;

/// How long a connection waits for another process's lock (a `qtask keys` command
/// beside a running server) before it reports the database as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;

pub struct SqliteStore {
    path: PathBuf,
    writer: WriterHandle,
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// Seals SecretKeys before they are written and opens them when read; without it
    /// keys are stored as given (tests of the store alone).
    master_key: Option<Arc<MasterKey>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // secure_delete: a key sealed at start leaves no plain copy in freed space.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;",
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
            master_key: None,
        })
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
            .write(move |c, _| {
                writes::reseal_keys(c, |secret_id, stored| {
                    if sealing::is_sealed(stored) {
                        Ok(None)
                    } else {
                        master.seal(secret_id, stored).map(Some)
                    }
                })
            })
            .await?;
        if sealed > 0 {
            self.checkpoint()?;
        }
        Ok(sealed)
    }

    /// Copies the WAL into the database file now, so the pages that held plain keys
    /// (zeroed by `secure_delete`) replace the old ones in the file itself.
    fn checkpoint(&self) -> StoreResult<()> {
        let conn = Connection::open(&self.path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(backend)
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
            .write(move |c, _| {
                writes::reseal_keys(c, |secret_id, stored| {
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
        self.read(move |c| reads::api_key(c, &secret_id))
            .await?
            .map(|key| self.unseal(key))
            .transpose()
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

    async fn create_key(&self, mut key: NewApiKey, now: UnixMillis) -> StoreResult<()> {
        if let Some(master) = &self.master_key {
            key.secret_key = master
                .seal(key.secret_id.as_str(), &key.secret_key)
                .map_err(StoreError::Backend)?;
        }
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
        self.read(reads::keys)
            .await?
            .into_iter()
            .map(|key| self.unseal(key))
            .collect()
    }
}
