//! The audit log on SQLite: appended through the writer, listed from the readers.

use crate::writer::backend;
use crate::SqliteStore;
use async_trait::async_trait;
use qtask_core::AccountId;
use qtask_store::{AuditEntry, AuditFilter, AuditLog, Listing, Page, StoreResult};
use r2d2_sqlite::rusqlite::{params, Row};

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

fn entry_from_row(row: &Row<'_>) -> r2d2_sqlite::rusqlite::Result<AuditEntry> {
    let list = |i: usize| -> r2d2_sqlite::rusqlite::Result<Vec<String>> {
        let text: String = row.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(AuditEntry {
        id: row.get::<_, i64>(0)? as u64,
        at: row.get(1)?,
        account: AccountId(row.get(2)?),
        secret_id: row.get(3)?,
        source: row.get(4)?,
        action: row.get(5)?,
        resources: list(6)?,
        code: row.get(7)?,
        request_ids: list(8)?,
    })
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.writer
            .write(move |c, _| {
                c.prepare_cached(
                    "INSERT INTO audit_log (account_id, at, secret_id, source, action, resources, code, request_ids)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        entry.account.0,
                        entry.at,
                        entry.secret_id,
                        entry.source,
                        entry.action,
                        json_list(&entry.resources),
                        entry.code,
                        json_list(&entry.request_ids)
                    ])
                })
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn audit_log(
        &self,
        account: AccountId,
        filter: AuditFilter,
        page: Page,
    ) -> StoreResult<Listing<AuditEntry>> {
        self.read(move |c| {
            // Optional filters as `?N IS NULL OR …`, so one prepared statement serves all.
            let clause = "account_id = ?1
                 AND (?2 IS NULL OR action = ?2)
                 AND (?3 IS NULL OR secret_id = ?3)
                 AND (?4 IS NULL OR code = ?4)
                 AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(resources) WHERE value = ?5))
                 AND (?6 IS NULL OR at >= ?6)
                 AND (?7 IS NULL OR at <= ?7)";
            let args = params![
                account.0,
                filter.action,
                filter.secret_id,
                filter.code,
                filter.resource,
                filter.from,
                filter.to
            ];
            let total: i64 = c
                .prepare_cached(&format!("SELECT COUNT(*) FROM audit_log WHERE {clause}"))
                .and_then(|mut s| s.query_row(args, |r| r.get(0)))
                .map_err(backend)?;
            let sql = format!(
                "SELECT id, at, account_id, secret_id, source, action, resources, code, request_ids
                 FROM audit_log WHERE {clause} ORDER BY id DESC LIMIT {} OFFSET {}",
                page.limit, page.offset
            );
            let items = c
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(args, entry_from_row)?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(backend)?;
            Ok(Listing {
                total: total as u64,
                items,
            })
        })
        .await
    }
}
