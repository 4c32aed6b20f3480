//! Versioned migrations, embedded in the binary. `PRAGMA user_version` holds the number
//! of the last one applied; each runs once, in its own transaction.

use r2d2_sqlite::rusqlite::{Connection, Result};

/// Migration N is `MIGRATIONS[N - 1]`. Never edit a released one: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, keys, nonces, client tokens, resources, tasks and groups.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    -- The next ID for a task or a group: IDs are never reused, even after deletions.
    INSERT INTO meta (key, value) VALUES ('next_id', 1);

    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );

    CREATE TABLE api_keys (
        secret_id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts (id),
        secret_key TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE nonces (
        secret_id TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        signature TEXT NOT NULL,
        answer TEXT,
        PRIMARY KEY (secret_id, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX nonces_by_expiry ON nonces (expires_at);

    CREATE TABLE client_tokens (
        account_id INTEGER NOT NULL,
        token TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        answer TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (account_id, token)
    ) WITHOUT ROWID;

    CREATE TABLE resources (
        id TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        region TEXT NOT NULL,
        state TEXT NOT NULL,
        attrs TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        active_task INTEGER,
        last_task INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX resources_listing ON resources (account_id, kind, region, created_at);

    CREATE TABLE task_groups (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );

    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL,
        group_id INTEGER,
        action TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        region TEXT NOT NULL,
        params TEXT NOT NULL,
        effect TEXT NOT NULL,
        prior_state TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        error_code INTEGER,
        error_message TEXT,
        result TEXT
    );
    -- Recovery and dispatch read only unfinished tasks: a small partial index.
    CREATE INDEX tasks_unfinished ON tasks (id) WHERE state IN ('QUEUED', 'RUNNING');
    CREATE INDEX tasks_by_account ON tasks (account_id, id);
    CREATE INDEX tasks_by_group ON tasks (group_id) WHERE group_id IS NOT NULL;
    CREATE INDEX tasks_by_resource ON tasks (account_id, resource_id, id);
    "#,
    // 2: retries, leases with fencing, cancellation, per-resource queues, retention.
    r#"
    INSERT INTO meta (key, value) VALUES ('next_fence', 1), ('fenced_completions', 0);

    -- A QUEUED task runs no earlier than not_before (a retry's backoff).
    ALTER TABLE tasks ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN lease_owner TEXT;
    ALTER TABLE tasks ADD COLUMN lease_expires_at INTEGER;
    -- The fencing token of the latest claim; only its holder may record an outcome.
    ALTER TABLE tasks ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    -- The states the resource must be in (JSON array; NULL = any), checked again when a
    -- queued task reaches the head of its resource's queue.
    ALTER TABLE tasks ADD COLUMN allowed TEXT;
    CREATE INDEX tasks_by_lease ON tasks (lease_expires_at) WHERE state = 'RUNNING';
    CREATE INDEX tasks_by_finish ON tasks (finished_at) WHERE finished_at IS NOT NULL;

    -- When the resource's state last changed (retention of returned resources).
    ALTER TABLE resources ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    UPDATE resources SET updated_at = created_at;
    CREATE INDEX resources_by_state ON resources (kind, state, updated_at);

    -- The highest task or group ID retention deleted for the account: a lookup at or
    -- below it that finds nothing answers "expired", not "does not exist".
    ALTER TABLE accounts ADD COLUMN purged_up_to INTEGER NOT NULL DEFAULT 0;

    CREATE INDEX client_tokens_by_age ON client_tokens (created_at);
    "#,
    // 3: key permissions and rates, blocked accounts, per-account limits.
    r#"
    -- JSON arrays; NULL = unrestricted.
    ALTER TABLE api_keys ADD COLUMN allowed_actions TEXT;
    ALTER TABLE api_keys ADD COLUMN allowed_resources TEXT;
    ALTER TABLE api_keys ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0;
    -- NULL = the server's default rate.
    ALTER TABLE api_keys ADD COLUMN rate_per_second INTEGER;
    ALTER TABLE api_keys ADD COLUMN rate_burst INTEGER;
    -- The first key of each account is its main key.
    ALTER TABLE api_keys ADD COLUMN is_main INTEGER NOT NULL DEFAULT 0;
    UPDATE api_keys SET is_main = 1 WHERE secret_id IN (
        SELECT (SELECT k.secret_id FROM api_keys k WHERE k.account_id = a.id
                ORDER BY k.created_at, k.secret_id LIMIT 1)
        FROM accounts a
    );
    ALTER TABLE accounts ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
    -- The per-account count of unfinished tasks a submission checks its limit with.
    CREATE INDEX tasks_unfinished_by_account ON tasks (account_id)
        WHERE state IN ('QUEUED', 'RUNNING');
    "#,
    // 4: the audit log of mutating calls.
    r#"
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        secret_id TEXT NOT NULL,
        source TEXT NOT NULL,
        action TEXT NOT NULL,
        resources TEXT NOT NULL,
        code INTEGER NOT NULL,
        request_ids TEXT NOT NULL
    );
    CREATE INDEX audit_by_account ON audit_log (account_id, id);
    "#,
    // 5: task counts by state, kept by triggers, so that stats (every /metrics scrape)
    // read a few rows instead of counting every task of the store.
    r#"
    CREATE TABLE task_state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO task_state_counts (state, n) SELECT state, COUNT(*) FROM tasks GROUP BY state;
    CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_state_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    CREATE TRIGGER tasks_count_update AFTER UPDATE OF state ON tasks
        WHEN OLD.state <> NEW.state BEGIN
        UPDATE task_state_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO task_state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    "#,
    // 6: nonces appended in arrival order, without an index on the nonce: the writer,
    // the one process writing this database, keeps that index in memory (store-sql
    // `nonces`).
    r#"
    CREATE TABLE nonces_in_order (
        id INTEGER PRIMARY KEY,
        secret_id TEXT NOT NULL,
        nonce INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        signature TEXT NOT NULL,
        answer TEXT
    );
    INSERT INTO nonces_in_order (secret_id, nonce, expires_at, signature, answer)
        SELECT secret_id, nonce, expires_at, signature, answer FROM nonces ORDER BY expires_at;
    DROP TABLE nonces;
    ALTER TABLE nonces_in_order RENAME TO nonces;
    CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    "#,
    // 7: unfinished tasks indexed by resource, in place of by account. A QUEUED task's
    // place in its resource's queue (TASK_COLUMNS) counted the resource's earlier tasks
    // through `tasks_by_resource`, reading each one's state: the whole history of a
    // long-lived resource, for every queued task a read returned. The account's count
    // of unfinished tasks (its limit) uses the new index's first column.
    r#"
    DROP INDEX tasks_unfinished_by_account;
    CREATE INDEX tasks_unfinished_by_resource ON tasks (account_id, resource_id, id)
        WHERE state IN ('QUEUED', 'RUNNING');
    "#,
    // 8: inserted tasks are counted by the writer, once per batch (store-sql `writer`):
    // with a trigger, SQLite opened a statement journal for every task it inserted.
    r#"
    DROP TRIGGER tasks_count_insert;
    "#,
];

/// The schema version this binary writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Applies every migration the database has not seen; returns the version it is at.
pub fn migrate(conn: &mut Connection) -> Result<u32> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = (index + 1) as i64;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied store migration");
    }
    Ok(current.max(LATEST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_6_keeps_every_nonce_in_expiry_order() {
        let mut conn = Connection::open_in_memory().expect("open");
        for (index, sql) in MIGRATIONS[..5].iter().enumerate() {
            conn.execute_batch(sql).expect("an earlier migration");
            conn.pragma_update(None, "user_version", index as i64 + 1)
                .expect("user_version");
        }
        conn.execute_batch(
            "INSERT INTO nonces (secret_id, nonce, expires_at, signature, answer) VALUES
                 ('AKIDa', 9, 2000, 'sig-late', NULL),
                 ('AKIDa', 3, 1000, 'sig-early', '{\"code\":0}');",
        )
        .expect("old nonces");
        assert_eq!(migrate(&mut conn).expect("migrate"), LATEST);
        let rows: Vec<(i64, String, i64, i64, String, Option<String>)> = conn
            .prepare("SELECT id, secret_id, nonce, expires_at, signature, answer FROM nonces ORDER BY id")
            .expect("prepare")
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .expect("query")
            .collect::<Result<_>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![
                (
                    1,
                    "AKIDa".into(),
                    3,
                    1000,
                    "sig-early".into(),
                    Some("{\"code\":0}".into())
                ),
                (2, "AKIDa".into(), 9, 2000, "sig-late".into(), None),
            ]
        );
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM nonces WHERE expires_at < 1500",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("nonces_by_expiry"), "{plan}");
    }
}
