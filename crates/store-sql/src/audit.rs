//! The audit log: appended through the writer, listed from the readers.

use crate::args;
use crate::sql::{Db, Dialect, Row};
use qtask_core::AccountId;
use qtask_store::{AuditEntry, AuditFilter, Listing, Page, StoreResult};

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

fn entry_from_row(row: &Row) -> StoreResult<AuditEntry> {
    let list = |i: usize| -> StoreResult<Vec<String>> {
        let text: String = row.get(i)?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    Ok(AuditEntry {
        id: row.get::<u64>(0)?,
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

pub fn append(db: &mut dyn Db, entry: &AuditEntry) -> StoreResult<()> {
    db.send(
        "INSERT INTO audit_log (account_id, at, secret_id, source, action, resources, code, request_ids)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![
            entry.account.0,
            entry.at,
            &entry.secret_id,
            &entry.source,
            &entry.action,
            json_list(&entry.resources),
            entry.code,
            json_list(&entry.request_ids)
        ],
    )?;
    Ok(())
}

pub fn list(
    db: &mut dyn Db,
    account: AccountId,
    filter: &AuditFilter,
    page: Page,
) -> StoreResult<Listing<AuditEntry>> {
    let names_resource = match db.dialect() {
        Dialect::Sqlite => "EXISTS (SELECT 1 FROM json_each(resources) WHERE value = ?5)",
        Dialect::Postgres => "resources::jsonb @> jsonb_build_array(?5::text)",
    };
    // Optional filters as `?N IS NULL OR …`, so one prepared statement serves all (the
    // casts give PostgreSQL the parameters' types).
    let clause = format!(
        "account_id = ?1
         AND (CAST(?2 AS TEXT) IS NULL OR action = ?2)
         AND (CAST(?3 AS TEXT) IS NULL OR secret_id = ?3)
         AND (CAST(?4 AS BIGINT) IS NULL OR code = ?4)
         AND (CAST(?5 AS TEXT) IS NULL OR {names_resource})
         AND (CAST(?6 AS BIGINT) IS NULL OR at >= ?6)
         AND (CAST(?7 AS BIGINT) IS NULL OR at <= ?7)"
    );
    let args = args![
        account.0,
        filter.action,
        filter.secret_id,
        filter.code,
        filter.resource,
        filter.from,
        filter.to
    ];
    let total = db.query_one(
        &format!("SELECT COUNT(*) FROM audit_log WHERE {clause}"),
        args,
        |r: &Row| r.get::<u64>(0),
    )?;
    let sql = format!(
        "SELECT id, at, account_id, secret_id, source, action, resources, code, request_ids
         FROM audit_log WHERE {clause} ORDER BY id DESC LIMIT {} OFFSET {}",
        page.limit, page.offset
    );
    let items = db.query_all(&sql, args, entry_from_row)?;
    Ok(Listing { total, items })
}
