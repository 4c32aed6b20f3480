//! Nonces: every signed request's, kept until it expires, so that the same request
//! resent gets its first answer and another request with the same nonce is refused.
//!
//! Both backends append rows to `nonces` (`id` in arrival order). How a reuse is found
//! depends on who writes the database:
//! - one process (SQLite): the table has no index on the nonce; the writer keeps one in
//!   memory, a [`NonceIndex`]. A unique index over client-chosen random numbers put each
//!   request's nonce on a B-tree page of its own, and that page into the commit: two of
//!   the seven WAL frames a `RunInstances` wrote (BENCHMARKS.md).
//! - several nodes (PostgreSQL): the primary key `(secret_id, nonce)` refuses a reuse
//!   whichever node sees it.

use crate::args;
use crate::sql::{Db, Row};
use qtask_store::{NonceClaim, StoreError, StoreResult};
use std::collections::HashMap;

/// A nonce as the index keys it: the SecretId's number in `secrets`, and the nonce.
type Key = (u32, u64);

/// Where each stored nonce's row is, for the writer of a database no other process
/// writes. A row ID found here is a hint, read back with its key: rows of rolled-back
/// transactions leave stale entries, harmless since the row is checked. What must never
/// happen is a committed nonce missing from the index, so entries are dropped only when
/// their rows' deletion commits.
#[derive(Default)]
pub struct NonceIndex {
    secrets: HashMap<String, u32>,
    rows: HashMap<Key, i64>,
    /// Rows deleted by the open transaction: forgotten once it commits.
    deleted: Vec<(Key, i64)>,
}

/// How many rows one query reads while the index is loaded.
const LOAD_PAGE: i64 = 10_000;

impl NonceIndex {
    /// Reads every stored nonce.
    pub fn load(db: &mut dyn Db) -> StoreResult<Self> {
        let mut index = Self::default();
        let mut after = 0i64;
        loop {
            let page: Vec<(i64, String, i64)> = db.query_all(
                "SELECT id, secret_id, nonce FROM nonces WHERE id > ?1 ORDER BY id LIMIT ?2",
                args![after, LOAD_PAGE],
                |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some(&(last, _, _)) = page.last() else {
                break;
            };
            for (id, secret_id, nonce) in page {
                let key = index.key(&secret_id, nonce as u64);
                index.rows.insert(key, id);
            }
            after = last;
        }
        Ok(index)
    }

    fn key(&mut self, secret_id: &str, nonce: u64) -> Key {
        let next = self.secrets.len() as u32;
        let secret = match self.secrets.get(secret_id) {
            Some(n) => *n,
            None => *self.secrets.entry(secret_id.to_owned()).or_insert(next),
        };
        (secret, nonce)
    }

    /// How far the open transaction's deletions go, to undo a failed job's with
    /// [`NonceIndex::keep_deleted`].
    pub fn mark(&self) -> usize {
        self.deleted.len()
    }

    /// The deletions after `mark` were rolled back: their rows stay, so do their entries.
    pub fn keep_deleted(&mut self, mark: usize) {
        self.deleted.truncate(mark);
    }

    /// The transaction committed: its deleted rows leave the index.
    pub fn committed(&mut self) {
        for (key, id) in self.deleted.drain(..) {
            if self.rows.get(&key) == Some(&id) {
                self.rows.remove(&key);
            }
        }
    }

    /// The transaction rolled back: nothing it deleted is gone.
    pub fn rolled_back(&mut self) {
        self.deleted.clear();
    }
}

/// What a nonce claim found.
pub enum Claimed {
    /// First seen now, and stored in this row.
    Fresh { row: i64 },
    /// The very same request (same signature) was seen before: its stored answer.
    Resent { answer: Option<String> },
}

/// Stores the claim's nonce, unless it was stored before: then the same request
/// (same signature) is `Resent`, and another is refused with `NonceReused`.
pub fn claim(
    db: &mut dyn Db,
    index: Option<&mut NonceIndex>,
    claim: &NonceClaim,
) -> StoreResult<Claimed> {
    let secret_id = claim.secret_id.as_str();
    let nonce = claim.nonce.get();
    let earlier = match index {
        Some(index) => {
            let key = index.key(secret_id, nonce);
            let earlier = match index.rows.get(&key) {
                Some(&row) => db.query_opt(
                    "SELECT signature, answer FROM nonces
                     WHERE id = ?1 AND secret_id = ?2 AND nonce = ?3",
                    args![row, secret_id, nonce as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?,
                None => None,
            };
            if earlier.is_none() {
                let row = insert(db, claim)?
                    .ok_or_else(|| StoreError::Backend("a nonce row was not inserted".into()))?;
                index.rows.insert(key, row);
                return Ok(Claimed::Fresh { row });
            }
            earlier
        }
        None => match insert(db, claim)? {
            Some(row) => return Ok(Claimed::Fresh { row }),
            None => db.query_opt(
                "SELECT signature, answer FROM nonces WHERE secret_id = ?1 AND nonce = ?2",
                args![secret_id, nonce as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        },
    };
    let (signature, answer): (String, Option<String>) = earlier
        .ok_or_else(|| StoreError::Backend("a nonce conflicted but is not stored".into()))?;
    if signature == claim.signature {
        Ok(Claimed::Resent { answer })
    } else {
        Err(StoreError::NonceReused {
            secret_id: claim.secret_id.clone(),
            nonce,
        })
    }
}

/// Appends the nonce's row; `None` when a unique key refused it (a shared database).
fn insert(db: &mut dyn Db, claim: &NonceClaim) -> StoreResult<Option<i64>> {
    db.query_opt(
        "INSERT INTO nonces (secret_id, nonce, expires_at, signature) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING RETURNING id",
        args![
            claim.secret_id.as_str(),
            claim.nonce.get() as i64,
            claim.expires_at,
            claim.signature
        ],
        |r| r.get(0),
    )
}

/// Keeps the answer of the request whose nonce is in `row`, for its resends.
pub fn store_answer(db: &mut dyn Db, row: i64, answer: &str) -> StoreResult<()> {
    db.execute(
        "UPDATE nonces SET answer = ?2 WHERE id = ?1",
        args![row, answer],
    )?;
    Ok(())
}

/// Deletes up to `batch` nonces that expired before `expired_before`; returns how many.
pub fn purge(
    db: &mut dyn Db,
    index: Option<&mut NonceIndex>,
    expired_before: i64,
    batch: i64,
) -> StoreResult<u64> {
    let deleted: Vec<(i64, String, i64)> = db.query_all(
        "DELETE FROM nonces WHERE id IN
             (SELECT id FROM nonces WHERE expires_at < ?1 LIMIT ?2)
         RETURNING id, secret_id, nonce",
        args![expired_before, batch],
        |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if let Some(index) = index {
        for (id, secret_id, nonce) in &deleted {
            let key = index.key(secret_id, *nonce as u64);
            index.deleted.push((key, *id));
        }
    }
    Ok(deleted.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(rows: &[(&str, u64, i64)]) -> NonceIndex {
        let mut index = NonceIndex::default();
        for (secret_id, nonce, id) in rows {
            let key = index.key(secret_id, *nonce);
            index.rows.insert(key, *id);
        }
        index
    }

    fn deleted(index: &mut NonceIndex, secret_id: &str, nonce: u64, id: i64) {
        let key = index.key(secret_id, nonce);
        index.deleted.push((key, id));
    }

    fn row(index: &mut NonceIndex, secret_id: &str, nonce: u64) -> Option<i64> {
        let key = index.key(secret_id, nonce);
        index.rows.get(&key).copied()
    }

    #[test]
    fn deleted_rows_leave_the_index_only_when_their_deletion_commits() {
        let mut index = index_with(&[("AKIDa", 1, 10), ("AKIDa", 2, 11), ("AKIDb", 1, 12)]);
        deleted(&mut index, "AKIDa", 1, 10);
        index.rolled_back();
        index.committed();
        assert_eq!(
            row(&mut index, "AKIDa", 1),
            Some(10),
            "a rolled-back deletion"
        );

        deleted(&mut index, "AKIDa", 1, 10);
        let mark = index.mark();
        deleted(&mut index, "AKIDa", 2, 11);
        index.keep_deleted(mark);
        index.committed();
        assert_eq!(row(&mut index, "AKIDa", 1), None, "a committed deletion");
        assert_eq!(
            row(&mut index, "AKIDa", 2),
            Some(11),
            "a failed job's deletion"
        );
        assert_eq!(row(&mut index, "AKIDb", 1), Some(12), "another SecretId's");
    }

    #[test]
    fn a_deleted_row_does_not_take_a_newer_row_of_its_nonce_along() {
        let mut index = index_with(&[("AKIDa", 1, 10)]);
        deleted(&mut index, "AKIDa", 1, 10);
        // Stored again in the same transaction, in a new row.
        let key = index.key("AKIDa", 1);
        index.rows.insert(key, 20);
        index.committed();
        assert_eq!(row(&mut index, "AKIDa", 1), Some(20));
    }
}
