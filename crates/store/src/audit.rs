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

impl AuditEntry {
    /// Completes the entry from its call's answer: the code, the requestIds it gave
    /// (a chain's under `detail`), and the IDs of resources it created (a list named
    /// `…Ids`).
    pub fn complete_from_answer(&mut self, body: &str) {
        let answer: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        // An answer that is not an envelope is an internal error (6000).
        self.code = answer["code"].as_u64().unwrap_or(6000) as u32;
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        self.request_ids.extend(text(&answer["requestId"]));
        if let Some(detail) = answer["detail"].as_object() {
            self.request_ids
                .extend(detail.values().filter_map(|d| text(&d["requestId"])));
        }
        if let Some(fields) = answer.as_object() {
            for (key, value) in fields {
                if let (true, Some(ids)) = (key.ends_with("Ids"), value.as_array()) {
                    self.resources.extend(ids.iter().filter_map(text));
                }
            }
        }
    }
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
