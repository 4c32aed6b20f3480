//! The audit log: one entry for every mutating call, whatever its outcome — who
//! (account, SecretId, source address), what (action, resource IDs), and what came of
//! it (the answer's code, the requestIds it gave).

use crate::{Listing, Page, StoreResult};
use async_trait::async_trait;
use qtask_core::{AccountId, UnixMillis};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Set by the store when the entry is written (0 before).
    pub id: u64,
    pub at: UnixMillis,
    pub account: AccountId,
    pub secret_id: String,
    /// The client's address as the server saw it.
    pub source: String,
    pub action: String,
    pub resources: Vec<String>,
    /// The answer's code (0, 5400, or an error code).
    pub code: u32,
    pub request_ids: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub secret_id: Option<String>,
    pub code: Option<u32>,
    pub resource: Option<String>,
    pub from: Option<UnixMillis>,
    pub to: Option<UnixMillis>,
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an entry (durably, like every write).
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()>;

    /// The account's entries, newest first.
    async fn audit_log(
        &self,
        account: AccountId,
        filter: AuditFilter,
        page: Page,
    ) -> StoreResult<Listing<AuditEntry>>;
}
