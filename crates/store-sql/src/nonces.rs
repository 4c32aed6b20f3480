//! Nonces: every signed request's, kept until it expires, so that the same request
//! resent gets its first answer and another request with the same nonce is refused.
//!
//! Both backends append rows to `nonces` (`id` in arrival order). How a reuse is found
//! depends on who writes the database:
//! - one process (SQLite): the table has no index on the nonce; the store keeps one in
//!   memory, a [`NonceIndex`]. A unique index over client-chosen random numbers put each
//!   request's nonce on a B-tree page of its own, and that page into the commit: two of
//!   the seven WAL frames a `RunInstances` wrote (BENCHMARKS.md). A query's nonce lives in
//!   that index only, claimed on the caller's thread without the writer: a query changes
//!   nothing, so all a restart can cost is that a query resent across it is answered
//!   again — where going through the writer cost over a quarter of a `describe`'s CPU.
//! - several nodes (PostgreSQL): the primary key `(secret_id, nonce)` refuses a reuse
//!   whichever node sees it.

use crate::args;
use crate::sql::{Db, Row};
use qtask_store::{NonceClaim, NonceOutcome, StoreError, StoreResult};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

/// A nonce as the index keys it: the SecretId's number in `secrets`, and the nonce.
pub type Key = (u32, u64);

/// Where each stored nonce's row is, for the writer of a database no other process
/// writes. What must never happen is a committed nonce missing from the index, so an
/// insert enters it at once (a later job of the same transaction must see it) and a
/// deletion leaves it only when it commits; an insert rolled back leaves it again.
/// A row ID found here is still read back with its key before it is believed.
///
/// Queries' nonces are kept beside the rows, in memory only, until they expire.
#[derive(Default)]
pub struct NonceIndex {
    secrets: HashMap<String, u32>,
    rows: HashMap<Key, i64>,
    /// Queries' nonces and their requests' signatures, hashed: equal means the same
    /// request resent. (A collision could only make a caller's own other query count
    /// as a resend, and a resent query is answered again.)
    queries: HashMap<Key, u64>,
    /// The queries' nonces in arrival order, for their expiry: nearly in expiry order
    /// (a nonce expires a fixed time after its request's timestamp), and one that stays
    /// a little longer is harmless, since its request's timestamp has left the window.
    query_expiry: VecDeque<(i64, Key)>,
    signatures: RandomState,
    /// Rows inserted by the open transaction: removed again if it rolls back.
    inserted: Vec<(Key, i64)>,
    /// Rows deleted by the open transaction: forgotten once it commits.
    deleted: Vec<(Key, i64)>,
}

/// How far the open transaction's changes to the index go (see [`NonceIndex::mark`]).
#[derive(Clone, Copy)]
pub struct Mark {
    inserted: usize,
    deleted: usize,
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

    fn remember(&mut self, key: Key, row: i64) {
        self.rows.insert(key, row);
        self.inserted.push((key, row));
    }

    /// Removes `key` if it still points at `row` (a later insert may have replaced it).
    fn forget(&mut self, key: Key, row: i64) {
        if self.rows.get(&key) == Some(&row) {
            self.rows.remove(&key);
        }
    }

    /// How far the open transaction's changes go, to undo a failed job's with
    /// [`NonceIndex::undo_to`].
    pub fn mark(&self) -> Mark {
        Mark {
            inserted: self.inserted.len(),
            deleted: self.deleted.len(),
        }
    }

    /// The changes after `mark` were rolled back (a job failed in its savepoint): the
    /// rows it inserted are gone, those it deleted stay.
    pub fn undo_to(&mut self, mark: Mark) {
        for (key, row) in self.inserted.split_off(mark.inserted) {
            self.forget(key, row);
        }
        self.deleted.truncate(mark.deleted);
    }

    /// The transaction committed: its deleted rows leave the index.
    pub fn committed(&mut self) {
        self.inserted.clear();
        for (key, row) in std::mem::take(&mut self.deleted) {
            self.forget(key, row);
        }
    }

    /// The transaction rolled back: nothing it inserted is stored, nothing it deleted
    /// is gone.
    pub fn rolled_back(&mut self) {
        self.undo_to(Mark {
            inserted: 0,
            deleted: 0,
        });
    }

    /// Claims a query's nonce in memory: fresh (now held), the same query resent, or
    /// a nonce a stored row holds (its signature must be read back to tell).
    pub fn claim_query(&mut self, claim: &NonceClaim) -> QueryClaim {
        let key = self.key(claim.secret_id.as_str(), claim.nonce.get());
        if let Some(&row) = self.rows.get(&key) {
            return QueryClaim::Stored { row };
        }
        let signature = self.signatures.hash_one(&claim.signature);
        match self.queries.entry(key) {
            Entry::Occupied(held) if *held.get() == signature => QueryClaim::Resent,
            Entry::Occupied(_) => QueryClaim::Reused,
            Entry::Vacant(free) => {
                free.insert(signature);
                self.query_expiry.push_back((claim.expires_at, key));
                QueryClaim::Fresh
            }
        }
    }

    /// Whether a query holds `key`, and with the same signature.
    fn held_by_query(&self, key: Key, signature: &str) -> Option<bool> {
        self.queries
            .get(&key)
            .map(|held| *held == self.signatures.hash_one(signature))
    }

    /// Forgets up to `limit` queries' nonces that expired before `expired_before`;
    /// returns how many.
    pub fn purge_queries(&mut self, expired_before: i64, limit: u64) -> u64 {
        let mut purged = 0;
        while purged < limit {
            match self.query_expiry.front() {
                Some(&(expires_at, key)) if expires_at < expired_before => {
                    self.query_expiry.pop_front();
                    self.queries.remove(&key);
                    purged += 1;
                }
                _ => break,
            }
        }
        purged
    }

    /// How many nonces the index holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.len() + self.queries.len()
    }
}

/// What a query's nonce found in memory (see [`NonceIndex::claim_query`]).
#[derive(Debug, PartialEq)]
pub enum QueryClaim {
    Fresh,
    Resent,
    Reused,
    /// A stored request's nonce (a mutating one, or a query of an earlier run).
    Stored {
        row: i64,
    },
}

/// A stored nonce's signature and kept answer, if its row is committed (an insert the
/// writer has not committed yet is not visible to a reader).
pub fn stored(
    db: &mut dyn Db,
    row: i64,
    claim: &NonceClaim,
) -> StoreResult<Option<(String, Option<String>)>> {
    db.query_opt(
        "SELECT signature, answer FROM nonces WHERE id = ?1 AND secret_id = ?2 AND nonce = ?3",
        args![row, claim.secret_id.as_str(), claim.nonce.get() as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// What a query with `claim`'s signature gets, given the nonce's earlier request (its
/// signature and kept answer), if any: the kept answer for the same request, else a
/// refusal.
pub fn resent_or_reused(
    claim: &NonceClaim,
    earlier: Option<(String, Option<String>)>,
) -> StoreResult<NonceOutcome> {
    match earlier {
        Some((signature, answer)) if signature == claim.signature => {
            Ok(NonceOutcome::Resent { answer })
        }
        _ => Err(reused(claim)),
    }
}

fn reused(claim: &NonceClaim) -> StoreError {
    StoreError::NonceReused {
        secret_id: claim.secret_id.clone(),
        nonce: claim.nonce.get(),
    }
}

/// What a nonce claim found.
pub enum Claimed {
    /// First seen now.
    Fresh(FreshNonce),
    /// The very same request (same signature) was seen before: its stored answer.
    Resent { answer: Option<String> },
}

/// A nonce first seen now, and where its row stands.
pub enum FreshNonce {
    /// Stored in this row (a shared database, where the insert itself claims it), to
    /// be given its answer by [`store_answer`].
    Stored(i64),
    /// Claimed in the writer's index, its row still to be written with its answer by
    /// [`store_answer`]: one statement per submission, not an insert then an update.
    /// A job that fails before rolls back as if it had been written.
    Unstored(Key),
}

/// Stores the claim's nonce, unless it was stored before: then the same request
/// (same signature) is `Resent`, and another is refused with `NonceReused`. A key that
/// is disabled now, or whose account is blocked now, claims nothing. On a shared
/// database the insert itself refuses it (no statement more on the common path), and
/// [`key_still_valid`] says why. With an `index` (a database one process writes), the
/// caller checked the key before the job (`SqlStore::submit`, as queries do).
pub fn claim(
    db: &mut dyn Db,
    mut index: Option<&mut NonceIndex>,
    claim: &NonceClaim,
) -> StoreResult<Claimed> {
    let claimed = claim_unstored(db, index.as_deref_mut(), claim)?;
    Ok(match claimed {
        Claimed::Fresh(FreshNonce::Unstored(key)) => {
            let row = append(db, claim, None)?;
            if let Some(index) = index {
                index.remember(key, row);
            }
            Claimed::Fresh(FreshNonce::Stored(row))
        }
        other => other,
    })
}

/// [`claim`], leaving a fresh nonce's row to [`store_answer`] where the writer's index
/// claims it.
pub fn claim_unstored(
    db: &mut dyn Db,
    index: Option<&mut NonceIndex>,
    claim: &NonceClaim,
) -> StoreResult<Claimed> {
    let secret_id = claim.secret_id.as_str();
    let nonce = claim.nonce.get();
    let earlier = match index {
        Some(index) => {
            let key = index.key(secret_id, nonce);
            if let Some(same) = index.held_by_query(key, &claim.signature) {
                // A query's nonce, in memory only (a request resent is the query again).
                key_still_valid(db, &claim.secret_id)?;
                return if same {
                    Ok(Claimed::Resent { answer: None })
                } else {
                    Err(reused(claim))
                };
            }
            let earlier = match index.rows.get(&key) {
                Some(&row) => stored(db, row, claim)?,
                None => None,
            };
            if earlier.is_none() {
                return Ok(Claimed::Fresh(FreshNonce::Unstored(key)));
            }
            earlier
        }
        None => match insert(db, claim)? {
            Some(row) => return Ok(Claimed::Fresh(FreshNonce::Stored(row))),
            None => db.query_opt(
                "SELECT signature, answer FROM nonces WHERE secret_id = ?1 AND nonce = ?2",
                args![secret_id, nonce as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        },
    };
    // Not inserted: a resend, a reuse, or a key refused since the caller read it (a
    // resend with a disabled key is refused too).
    key_still_valid(db, &claim.secret_id)?;
    let (signature, answer): (String, Option<String>) = earlier
        .ok_or_else(|| StoreError::Backend("a nonce was neither stored nor refused".into()))?;
    if signature == claim.signature {
        Ok(Claimed::Resent { answer })
    } else {
        Err(reused(claim))
    }
}

/// Refuses a key disabled, or an account blocked, since the caller read the key. Every
/// call claims its nonce in the writer, so this check in the writer's open transaction
/// (made by [`insert`] itself, spelled out here when it refused) is what lets the server
/// keep keys in memory (`qtask-server`'s key cache) and still refuse a key from the first
/// call after `qtask keys disable` commits, on any node. A key that is not stored is left
/// to the caller (keys are never deleted; the caller found it).
pub fn key_still_valid(db: &mut dyn Db, secret_id: &qtask_core::SecretId) -> StoreResult<()> {
    let state: Option<(bool, bool, String)> = db.query_opt(
        "SELECT k.enabled, a.blocked, a.name FROM api_keys k JOIN accounts a ON a.id = k.account_id
         WHERE k.secret_id = ?1",
        args![secret_id.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    match state {
        Some((false, _, _)) => Err(StoreError::KeyDisabled(secret_id.clone())),
        Some((true, true, account)) => Err(StoreError::AccountBlocked(account)),
        Some((true, false, _)) | None => Ok(()),
    }
}

/// Every call's nonce row, unless its key is no longer usable. The casts give PostgreSQL
/// the parameters' types (a select list has none).
pub const INSERT_NONCE_SQL: &str = "INSERT INTO nonces (secret_id, nonce, expires_at, signature)
     SELECT CAST(?1 AS TEXT), CAST(?2 AS BIGINT), CAST(?3 AS BIGINT), CAST(?4 AS TEXT)
     WHERE NOT EXISTS (
         SELECT 1 FROM api_keys k JOIN accounts a ON a.id = k.account_id
         WHERE k.secret_id = ?1 AND (k.enabled = 0 OR a.blocked <> 0))
     ON CONFLICT DO NOTHING RETURNING id";

/// Appends the nonce's row on a database one process writes, whose store checked the
/// key before the job ran (`SqlStore::submit`, against the key-change marker): a plain
/// insert, which SQLite runs without a statement journal.
fn append(db: &mut dyn Db, claim: &NonceClaim, answer: Option<&str>) -> StoreResult<i64> {
    db.insert_returning_id(
        "INSERT INTO nonces (secret_id, nonce, expires_at, signature, answer) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        args![
            claim.secret_id.as_str(),
            claim.nonce.get() as i64,
            claim.expires_at,
            claim.signature,
            answer
        ],
    )
}

/// Appends the nonce's row; `None` when a unique key refused it (a shared database) or
/// the key is no longer usable (disabled, or its account blocked).
fn insert(db: &mut dyn Db, claim: &NonceClaim) -> StoreResult<Option<i64>> {
    db.query_opt(
        INSERT_NONCE_SQL,
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
pub fn store_answer(
    db: &mut dyn Db,
    index: Option<&mut NonceIndex>,
    claim: &NonceClaim,
    fresh: &FreshNonce,
    answer: &str,
) -> StoreResult<()> {
    match (fresh, index) {
        (FreshNonce::Stored(row), _) => {
            db.send(
                "UPDATE nonces SET answer = ?2 WHERE id = ?1",
                args![*row, answer],
            )?;
        }
        (FreshNonce::Unstored(key), Some(index)) => {
            // A query may have taken the nonce in memory since the claim (queries claim
            // theirs on the calling threads): then this request is the reuse.
            if index.held_by_query(*key, &claim.signature).is_some() || index.rows.contains_key(key)
            {
                return Err(reused(claim));
            }
            let row = append(db, claim, Some(answer))?;
            index.remember(*key, row);
        }
        (FreshNonce::Unstored(_), None) => {
            return Err(StoreError::Backend(
                "a nonce claimed in the writer's index was answered without it".into(),
            ))
        }
    }
    Ok(())
}

/// Deletes up to `batch` stored nonces that expired before `expired_before`, and
/// forgets up to `batch` queries' nonces held in memory; returns how many of each.
pub fn purge(
    db: &mut dyn Db,
    index: Option<&mut NonceIndex>,
    expired_before: i64,
    batch: i64,
) -> StoreResult<(u64, u64)> {
    let deleted: Vec<(i64, String, i64)> = db.query_all(
        "DELETE FROM nonces WHERE id IN
             (SELECT id FROM nonces WHERE expires_at < ?1 LIMIT ?2)
         RETURNING id, secret_id, nonce",
        args![expired_before, batch],
        |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut queries = 0;
    if let Some(index) = index {
        for (id, secret_id, nonce) in &deleted {
            let key = index.key(secret_id, *nonce as u64);
            index.deleted.push((key, *id));
        }
        queries = index.purge_queries(expired_before, batch as u64);
    }
    Ok((deleted.len() as u64, queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: &mut NonceIndex, secret_id: &str, nonce: u64) -> Key {
        index.key(secret_id, nonce)
    }

    fn row(index: &mut NonceIndex, secret_id: &str, nonce: u64) -> Option<i64> {
        let key = index.key(secret_id, nonce);
        index.rows.get(&key).copied()
    }

    /// The index as loaded at start: committed rows.
    fn loaded(rows: &[(&str, u64, i64)]) -> NonceIndex {
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

    #[test]
    fn deleted_rows_leave_the_index_only_when_their_deletion_commits() {
        let mut index = loaded(&[("AKIDa", 1, 10), ("AKIDa", 2, 11), ("AKIDb", 1, 12)]);
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
        index.undo_to(mark);
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
    fn inserted_rows_leave_the_index_when_their_insert_rolls_back() {
        let mut index = loaded(&[("AKIDa", 1, 10)]);
        let k2 = key(&mut index, "AKIDa", 2);
        index.remember(k2, 20);
        let mark = index.mark();
        let k3 = key(&mut index, "AKIDa", 3);
        index.remember(k3, 21);
        index.undo_to(mark);
        assert_eq!(row(&mut index, "AKIDa", 3), None, "a failed job's insert");
        assert_eq!(
            row(&mut index, "AKIDa", 2),
            Some(20),
            "an earlier job's stays"
        );
        index.committed();
        index.rolled_back();
        assert_eq!(row(&mut index, "AKIDa", 2), Some(20), "committed before");

        let k4 = key(&mut index, "AKIDa", 4);
        index.remember(k4, 22);
        index.rolled_back();
        assert_eq!(
            row(&mut index, "AKIDa", 4),
            None,
            "a rolled-back transaction's"
        );
        assert_eq!(index.len(), 2, "nothing stale is left");
    }

    fn query(secret_id: &str, nonce: u64, signature: &str, expires_at: i64) -> NonceClaim {
        NonceClaim {
            secret_id: secret_id.parse().expect("a SecretId"),
            nonce: qtask_core::Nonce::new(nonce).expect("a nonce"),
            expires_at,
            signature: signature.into(),
        }
    }

    /// Records the statements run; an insert gets the next row ID.
    #[derive(Default)]
    struct Recorded {
        statements: Vec<String>,
        next_row: i64,
    }

    impl Db for Recorded {
        fn dialect(&self) -> crate::sql::Dialect {
            crate::sql::Dialect::Sqlite
        }
        fn execute(&mut self, sql: &str, _args: &[crate::sql::Value<'_>]) -> StoreResult<u64> {
            self.statements.push(sql.into());
            Ok(1)
        }
        fn query(&mut self, sql: &str, _args: &[crate::sql::Value<'_>]) -> StoreResult<Vec<Row>> {
            self.statements.push(sql.into());
            Ok(Vec::new())
        }
        fn control(&mut self, sql: &str) -> StoreResult<()> {
            self.statements.push(sql.into());
            Ok(())
        }
        fn insert_returning_id(
            &mut self,
            sql: &str,
            _args: &[crate::sql::Value<'_>],
        ) -> StoreResult<i64> {
            self.statements.push(sql.into());
            self.next_row += 1;
            Ok(self.next_row)
        }
    }

    /// A submission's nonce 7 of AKIDa, claimed on an empty store and left to its answer.
    fn submission_claimed() -> (Recorded, NonceIndex, NonceClaim, FreshNonce) {
        let mut db = Recorded::default();
        let mut index = loaded(&[]);
        let claim = query("AKIDa", 7, "sig-submit", 100);
        let fresh = match claim_unstored(&mut db, Some(&mut index), &claim).expect("claimed") {
            Claimed::Fresh(fresh @ FreshNonce::Unstored(_)) => fresh,
            _ => panic!("a fresh nonce left to its answer"),
        };
        (db, index, claim, fresh)
    }

    #[test]
    fn a_submission_s_nonce_is_written_once_with_its_answer() {
        let (mut db, mut index, claim, fresh) = submission_claimed();
        assert!(db.statements.is_empty(), "nothing written at the claim");
        assert_eq!(row(&mut index, "AKIDa", 7), None);
        store_answer(&mut db, Some(&mut index), &claim, &fresh, "{}").expect("stored");
        assert_eq!(db.statements.len(), 1, "one statement: {:?}", db.statements);
        assert!(db.statements[0].starts_with("INSERT INTO nonces"));
        assert!(db.statements[0].contains("answer"));
        assert_eq!(
            row(&mut index, "AKIDa", 7),
            Some(1),
            "remembered once written"
        );
        assert_eq!(
            index.claim_query(&query("AKIDa", 7, "sig-query", 100)),
            QueryClaim::Stored { row: 1 }
        );
    }

    #[test]
    fn a_query_that_takes_the_nonce_before_the_submission_s_answer_wins() {
        let (mut db, mut index, claim, fresh) = submission_claimed();
        // A query with the same nonce, on a calling thread, while the submission runs.
        assert_eq!(
            index.claim_query(&query("AKIDa", 7, "sig-query", 100)),
            QueryClaim::Fresh
        );
        let refused = store_answer(&mut db, Some(&mut index), &claim, &fresh, "{}");
        assert!(
            matches!(refused, Err(StoreError::NonceReused { nonce: 7, .. })),
            "{refused:?}"
        );
        assert!(db.statements.is_empty(), "nothing written");
        assert_eq!(row(&mut index, "AKIDa", 7), None);
    }

    #[test]
    fn a_query_nonce_is_fresh_once_then_resent_or_reused() {
        let mut index = loaded(&[("AKIDa", 1, 10)]);
        let claim = |index: &mut NonceIndex, nonce, signature| {
            index.claim_query(&query("AKIDa", nonce, signature, 100))
        };
        assert_eq!(claim(&mut index, 2, "sig-a"), QueryClaim::Fresh);
        assert_eq!(claim(&mut index, 2, "sig-a"), QueryClaim::Resent);
        assert_eq!(claim(&mut index, 2, "sig-b"), QueryClaim::Reused);
        assert_eq!(
            claim(&mut index, 2, "sig-a"),
            QueryClaim::Resent,
            "a refused reuse does not replace the first query"
        );
        assert_eq!(
            claim(&mut index, 1, "sig-a"),
            QueryClaim::Stored { row: 10 },
            "a stored row's nonce is told by its row"
        );
        assert_eq!(
            index.claim_query(&query("AKIDb", 2, "sig-b", 100)),
            QueryClaim::Fresh,
            "another SecretId's nonce 2 is its own"
        );
        let k2 = key(&mut index, "AKIDa", 2);
        assert_eq!(index.held_by_query(k2, "sig-a"), Some(true));
        assert_eq!(index.held_by_query(k2, "sig-b"), Some(false));
        let k3 = key(&mut index, "AKIDa", 3);
        assert_eq!(index.held_by_query(k3, "sig-a"), None);
    }

    #[test]
    fn query_nonces_are_forgotten_once_expired_oldest_first_at_most_a_batch() {
        let mut index = NonceIndex::default();
        for (nonce, expires_at) in [(1, 10), (2, 20), (3, 30), (4, 1_000), (5, 25)] {
            assert_eq!(
                index.claim_query(&query("AKIDa", nonce, "sig", expires_at)),
                QueryClaim::Fresh
            );
        }
        assert_eq!(index.purge_queries(100, 2), 2, "a batch at most");
        assert_eq!(index.purge_queries(100, 10), 1, "up to the unexpired one");
        assert_eq!(
            index.purge_queries(100, 10),
            0,
            "one expired behind it waits for it"
        );
        assert_eq!(index.len(), 2);
        for (nonce, fresh) in [(1, true), (3, true), (4, false), (5, false)] {
            let found = index.claim_query(&query("AKIDa", nonce, "other", 2_000));
            assert_eq!(
                found == QueryClaim::Fresh,
                fresh,
                "nonce {nonce}: {found:?}"
            );
        }
        assert_eq!(index.purge_queries(1_001, 10), 2, "4 and 5 in their turn");
    }

    #[test]
    fn a_deleted_row_does_not_take_a_newer_row_of_its_nonce_along() {
        let mut index = loaded(&[("AKIDa", 1, 10)]);
        deleted(&mut index, "AKIDa", 1, 10);
        // Stored again in the same transaction, in a new row.
        let k1 = key(&mut index, "AKIDa", 1);
        index.remember(k1, 20);
        index.committed();
        assert_eq!(row(&mut index, "AKIDa", 1), Some(20));
    }
}
