//! The PostgreSQL backend of the store: several qtask nodes on one database.
//!
//! The store logic is `qtask-store-sql`'s, unchanged; this crate gives it connections
//! and what sharing a database needs:
//!
//! * **One writer at a time, cluster-wide.** Each node still commits its writes in
//!   groups, and every group first takes a transaction-scoped advisory lock. Groups of
//!   different nodes therefore never interleave, so the single-node guarantees (nonces,
//!   client tokens, one task at a time per resource, fencing tokens from one counter)
//!   hold across nodes with no row locking and no deadlocks. The price: the cluster's
//!   write rate is one writer's; reads, the API and the executors scale with nodes.
//! * **Maintenance once.** A session advisory lock (the next key) elects the node that
//!   runs rescue and retention; if it dies, its connection closes and another node
//!   takes the lock at its next try.
//! * **Wake-ups.** A commit that made tasks runnable sends `NOTIFY`; every other node
//!   LISTENs on a connection of its own and wakes its idle workers.
//!
//! Locks and the channel are derived from the schema the connection uses, so several
//! deployments can live in one database (a `search_path` per deployment).

mod cluster;
mod conn;
mod migrations;
mod statistics;
mod writer;

use conn::{backend, channel_for, ReadConnections, Target};
use qtask_store::{StoreError, StoreResult};
use qtask_store_sql::SqlStore;
use std::sync::Arc;
use std::time::Duration;

pub use migrations::LATEST as SCHEMA_VERSION;
/// The client `bulk_client` answers with, for its callers.
pub use postgres;

const READERS: u32 = 8;

/// The store on a PostgreSQL database.
pub type PostgresStore = SqlStore<ReadConnections>;

/// Whether `text` names a PostgreSQL database (a `postgres://` or `postgresql://` URL).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Connects to the database at `url`, applies migrations, and starts this node's
/// writer, readers, maintenance election and wake-up listener.
pub fn open(url: &str) -> StoreResult<PostgresStore> {
    let (target, mut client) = connect(url)?;
    migrations::migrate(&mut client, target.lock_key)?;
    drop(client);
    let readers = r2d2::Pool::builder()
        .max_size(READERS)
        .min_idle(Some(1))
        .connection_timeout(Duration::from_secs(10))
        .build(ReadConnections(target.clone()))
        .map_err(|e| StoreError::Backend(format!("cannot open read connections: {e}")))?;
    let cluster = cluster::PgCluster::start(target.clone())?;
    SqlStore::new(
        writer::PgWriter::connect(target)?,
        readers,
        Some(Arc::new(cluster)),
    )
}

/// A connection for a bulk load into the store at `url` (`qtask bench fill`), migrated
/// to the latest schema, and the statement that takes the deployment's write lock in a
/// transaction: run it first in each, so that the load and any running node's writer
/// take turns.
pub fn bulk_client(url: &str) -> StoreResult<(postgres::Client, String)> {
    let (target, mut client) = connect(url)?;
    migrations::migrate(&mut client, target.lock_key)?;
    Ok((
        client,
        format!("SELECT pg_advisory_xact_lock({})", target.lock_key),
    ))
}

/// Applies the migrations the database lacks; returns the schema version.
pub fn migrate(url: &str) -> StoreResult<u32> {
    let (target, mut client) = connect(url)?;
    migrations::migrate(&mut client, target.lock_key)
}

fn connect(url: &str) -> StoreResult<(Target, postgres::Client)> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("bad PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("qtask");
    let probe = Target {
        config,
        lock_key: 0,
        channel: String::new(),
        node: String::new(),
    };
    let mut client = probe.connect()?;
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .map_err(backend)?
        .get(0);
    let schema = schema.ok_or_else(|| {
        StoreError::Backend(
            "PostgreSQL: no schema to create tables in (check the search_path)".into(),
        )
    })?;
    let lock_key = lock_key_for(&schema);
    let target = Target {
        lock_key,
        channel: channel_for(lock_key),
        node: format!("{}:{}", std::process::id(), rand_suffix()),
        ..probe
    };
    Ok((target, client))
}

/// The advisory-lock key of the deployment in `schema` (FNV-1a: stable across builds
/// and platforms, unlike the standard library's hasher). Even, so that `key + 1` (the
/// maintenance lock) belongs to the same deployment.
fn lock_key_for(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "qtask:".bytes().chain(schema.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash & !1) as i64
}

/// Tells apart processes that reuse a PID (containers) in notification payloads.
fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_even_and_differ_by_schema() {
        let public = lock_key_for("public");
        assert_eq!(public, lock_key_for("public"));
        assert_eq!(public % 2, 0);
        assert_ne!(public, lock_key_for("qtask_b"));
    }
}

#[cfg(feature = "testing")]
pub mod testing;
