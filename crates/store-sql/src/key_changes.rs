//! Key changes, told cheaply to the calls of a database one process serves (see
//! `nonces`: a query's nonce is claimed in memory and a submission's by a plain insert, so
//! no writer statement checks their key).
//! Every change that can make a key unusable — a key disabled, an account blocked —
//! appends a byte to a marker file beside the database once it has committed, whichever
//! process made it (`qtask keys …` runs beside the server). A query can then trust a key
//! it found usable while the marker's size is unchanged: one `fstat` of the open marker
//! instead of reading the key, which cost about 10 µs per call (a read transaction takes
//! file locks). A `stat` by path walked the path on every call (≈ 4 % of a `describe`).

use qtask_core::SecretId;
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// How long a key found usable is trusted without a read even if no change is seen:
/// the bound should a marker be unwritable (a change is then logged, not announced).
const TRUSTED_FOR: Duration = Duration::from_secs(5);
/// The most keys trusted at once; more start the set afresh.
const CAPACITY: usize = 4096;

/// The marker of a database's key changes, and the keys found usable since it last changed.
pub struct KeyChanges {
    marker: PathBuf,
    /// The marker as last opened; `None` once it was found missing.
    opened: RwLock<Option<File>>,
    usable: Mutex<Usable>,
}

/// Keys found usable while the marker stood at `generation`, since `since`.
struct Usable {
    generation: Generation,
    since: Instant,
    keys: HashSet<SecretId>,
}

/// The marker's state: its size, or `None` when it cannot be read (nothing is then trusted).
pub type Generation = Option<u64>;

impl KeyChanges {
    /// Marks key changes in `marker`, created empty if missing.
    pub fn open(marker: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&marker)?;
        Ok(Self {
            marker,
            opened: RwLock::new(Some(file)),
            usable: Mutex::new(Usable {
                generation: None,
                since: Instant::now(),
                keys: HashSet::new(),
            }),
        })
    }

    /// The marker's state now: read it before reading a key, so that a change committed
    /// after this point is either seen by that read or moves the marker.
    pub fn generation(&self) -> Generation {
        let opened = self
            .opened
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(Ok(metadata)) = opened.as_ref().map(File::metadata) {
            // A marker deleted or replaced has no links left: the path names another file.
            if metadata.nlink() > 0 {
                return Some(metadata.len());
            }
        }
        drop(opened);
        self.reopen()
    }

    /// Opens the marker at its path again (it was deleted or replaced), without creating it.
    fn reopen(&self) -> Generation {
        let file = File::open(&self.marker).ok();
        let generation = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        *self
            .opened
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = file;
        generation
    }

    /// Whether `secret_id` was found usable at the marker's `generation`.
    pub fn trusted(&self, secret_id: &SecretId, generation: Generation) -> bool {
        let usable = self.lock();
        generation.is_some()
            && usable.generation == generation
            && usable.since.elapsed() < TRUSTED_FOR
            && usable.keys.contains(secret_id)
    }

    /// `secret_id` was read and found usable after the marker stood at `generation`.
    pub fn found_usable(&self, secret_id: &SecretId, generation: Generation) {
        if generation.is_none() {
            return;
        }
        let mut usable = self.lock();
        if usable.generation != generation
            || usable.since.elapsed() >= TRUSTED_FOR
            || usable.keys.len() >= CAPACITY
        {
            *usable = Usable {
                generation,
                since: Instant::now(),
                keys: HashSet::new(),
            };
        }
        usable.keys.insert(secret_id.clone());
    }

    /// Tells every process serving the database that keys changed (call after commit).
    pub fn announce(&self) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.marker)
            .and_then(|mut marker| marker.write_all(b"."));
        if let Err(error) = appended {
            tracing::warn!(
                marker = %self.marker.display(),
                %error,
                "cannot mark the key change; a running server may take {TRUSTED_FOR:?} to see it"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Usable> {
        self.usable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_trusted_only_at_the_generation_it_was_found_usable() {
        let dir = tempfile::tempdir().expect("a directory");
        let marker = dir.path().join("db-keys");
        let changes = KeyChanges::open(marker.clone()).expect("the marker");
        let key: SecretId = "AKIDone".parse().expect("a SecretId");
        let other: SecretId = "AKIDother".parse().expect("a SecretId");

        let first = changes.generation();
        assert_eq!(first, Some(0), "an empty marker");
        changes.found_usable(&key, first);
        assert!(changes.trusted(&key, first));
        assert!(
            !changes.trusted(&other, first),
            "only the key that was read"
        );

        changes.announce();
        let second = changes.generation();
        assert_ne!(second, first, "every change moves the marker");
        assert!(
            !changes.trusted(&key, second),
            "a change makes every key be read again"
        );
        changes.found_usable(&other, second);
        assert!(!changes.trusted(&key, second), "found before the change");
        assert!(changes.trusted(&other, second));

        std::fs::remove_file(&marker).expect("removed");
        let missing = changes.generation();
        assert_eq!(missing, None);
        changes.found_usable(&other, missing);
        assert!(
            !changes.trusted(&other, missing),
            "nothing is trusted without a marker"
        );

        // A marker made again (a change announced after the deletion) is followed.
        changes.announce();
        let recreated = changes.generation();
        assert_eq!(recreated, Some(1));
        changes.found_usable(&other, recreated);
        changes.announce();
        assert_eq!(
            changes.generation(),
            Some(2),
            "changes to the new file are seen"
        );
    }

    #[test]
    fn a_marker_replaced_by_another_file_is_followed() {
        let dir = tempfile::tempdir().expect("a directory");
        let marker = dir.path().join("db-keys");
        let changes = KeyChanges::open(marker.clone()).expect("the marker");
        assert_eq!(changes.generation(), Some(0));
        // Replaced behind the server's back (a restore, an editor's save): renamed over.
        let replacement = dir.path().join("db-keys.new");
        std::fs::write(&replacement, b"...").expect("written");
        std::fs::rename(&replacement, &marker).expect("renamed over the marker");
        assert_eq!(changes.generation(), Some(3), "the file the path names now");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&marker)
            .and_then(|mut f| f.write_all(b"."))
            .expect("appended");
        assert_eq!(changes.generation(), Some(4));
    }
}
