//! The first statistics of a young database. PostgreSQL plans a prepared statement
//! anew for its first executions, then keeps a generic plan when that looks no
//! costlier. On a fresh database that happens while the tables are empty, and the
//! plans kept are made for empty tables (measured: a claim walking an index of the
//! whole backlog for one task, 0.2–0.4 ms; the set-based claim joining by a hash of
//! every task, up to 58 ms) until autovacuum's first `ANALYZE`, up to a minute later.
//! So the writer analyzes each busy table once, as soon as it holds a few pages, if
//! nothing has analyzed it yet; that invalidates the plans, and later ones fit.

use qtask_store::StoreResult;
use qtask_store_sql::args;
use qtask_store_sql::sql::{Db, Row};
use std::time::{Duration, Instant};

/// The tables whose plans matter on the hot path.
const BUSY_TABLES: [&str; 3] = ["tasks", "resources", "nonces"];

/// The size from which a table is analyzed: large enough to hold a few hundred rows
/// (statistics of a handful would mislead as much), small enough to come within the
/// first second of load.
const ENOUGH_BYTES: i64 = 16 * 8192;

/// How often a young database is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The busy tables of the current schema never analyzed (PostgreSQL 14 and later
/// mark those with `reltuples` −1; earlier ones with 0), and whether each is large
/// enough to be.
const UNANALYZED_SQL: &str = "SELECT c.relname::text, pg_relation_size(c.oid) >= ?1
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = current_schema() AND c.relname::text IN (?2, ?3, ?4)
       AND c.reltuples <= 0";

/// The writer's watch over a young database, until every busy table has statistics.
pub struct FirstStatistics {
    next_check: Instant,
    /// Tables this writer analyzed: never twice (a role that may not analyze gets a
    /// warning from PostgreSQL, not an error, and the table stays unanalyzed).
    analyzed: Vec<String>,
    done: bool,
}

impl FirstStatistics {
    pub fn new() -> Self {
        Self {
            next_check: Instant::now(),
            analyzed: Vec::new(),
            done: false,
        }
    }

    /// Between batches: analyzes what needs it, at most once a second, until nothing
    /// does. Outside any transaction, so it holds no lock of the store.
    pub fn check(&mut self, db: &mut dyn Db) -> StoreResult<()> {
        if self.done || Instant::now() < self.next_check {
            return Ok(());
        }
        self.next_check = Instant::now() + CHECK_EVERY;
        let [a, b, c] = BUSY_TABLES;
        let unanalyzed: Vec<(String, bool)> =
            db.query_all(UNANALYZED_SQL, args![ENOUGH_BYTES, a, b, c], |r: &Row| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let due: Vec<String> = unanalyzed
            .iter()
            .filter(|(table, large)| *large && !self.analyzed.contains(table))
            .map(|(table, _)| table.clone())
            .collect();
        if !due.is_empty() {
            tracing::debug!(tables = ?due, "first statistics of young tables");
            // The names come from BUSY_TABLES: nothing to quote.
            db.control(&format!("ANALYZE {}", due.join(", ")))?;
            db.flush()?;
            self.analyzed.extend(due);
        }
        self.done = unanalyzed
            .iter()
            .all(|(table, _)| self.analyzed.contains(table));
        Ok(())
    }
}
