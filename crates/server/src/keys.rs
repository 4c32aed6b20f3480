//! API keys kept in memory between calls. Reading a call's key was one of the two read
//! transactions of a `DescribeTaskResult` (each takes and drops SQLite's shared lock);
//! without it a `describe` costs about a quarter less CPU (BENCHMARKS.md).
//!
//! Only what cannot go stale is trusted from here: a key's secret, account and access
//! never change once created. Whether it is still enabled, and its account unblocked,
//! the store checks again in the writer when the call claims its nonce (every call
//! does), so `qtask keys disable` or `block` refuses the very next call, on every node.
//! Only keys that were usable when read are kept, for [`KEY_LIFETIME`], so a key enabled
//! or unblocked again is read afresh at once; a refusal of the key forgets it.

use qtask_core::SecretId;
use qtask_store::ApiKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a key read from the store is used without reading it again.
pub const KEY_LIFETIME: Duration = Duration::from_secs(5);

/// The most keys kept; past it the cache starts over (a flood of distinct SecretIds
/// cannot grow the server's memory).
const CAPACITY: usize = 4_096;

#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<SecretId, (Arc<ApiKey>, Instant)>>,
}

impl KeyCache {
    /// The key, if it was read less than [`KEY_LIFETIME`] ago.
    pub fn get(&self, secret_id: &SecretId) -> Option<Arc<ApiKey>> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(secret_id)
            .filter(|(_, read_at)| read_at.elapsed() < KEY_LIFETIME)
            .map(|(key, _)| Arc::clone(key))
    }

    /// Keeps a key just read from the store, if it is usable.
    pub fn keep(&self, key: Arc<ApiKey>) {
        if !key.enabled || key.account_blocked {
            return;
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.len() >= CAPACITY && !keys.contains_key(&key.secret_id) {
            keys.clear();
        }
        keys.insert(key.secret_id.clone(), (key, Instant::now()));
    }

    /// Forgets a key the store refused (disabled, or its account blocked).
    pub fn forget(&self, secret_id: &SecretId) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(secret_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtask_core::AccountId;
    use qtask_store::KeyAccess;

    fn key(id: &str) -> ApiKey {
        ApiKey {
            secret_id: id.parse().expect("a SecretId"),
            secret_key: "secret".into(),
            account: AccountId(1),
            account_name: "main".into(),
            enabled: true,
            created_at: 0,
            access: KeyAccess::default(),
            main: true,
            account_blocked: false,
        }
    }

    fn id(text: &str) -> SecretId {
        text.parse().expect("a SecretId")
    }

    #[test]
    fn keeps_usable_keys_until_forgotten() {
        let cache = KeyCache::default();
        cache.keep(Arc::new(key("AKIDone")));
        assert_eq!(cache.get(&id("AKIDone")).as_deref(), Some(&key("AKIDone")));
        assert!(cache.get(&id("AKIDother")).is_none());
        cache.forget(&id("AKIDone"));
        assert!(cache.get(&id("AKIDone")).is_none());
    }

    #[test]
    fn never_keeps_a_disabled_key_or_a_blocked_account() {
        let cache = KeyCache::default();
        cache.keep(Arc::new(ApiKey {
            enabled: false,
            ..key("AKIDoff")
        }));
        cache.keep(Arc::new(ApiKey {
            account_blocked: true,
            ..key("AKIDblocked")
        }));
        assert!(cache.get(&id("AKIDoff")).is_none());
        assert!(cache.get(&id("AKIDblocked")).is_none());
    }

    #[test]
    fn a_key_read_too_long_ago_is_read_again() {
        let cache = KeyCache::default();
        let stale = Instant::now()
            .checked_sub(KEY_LIFETIME + Duration::from_millis(1))
            .expect("the clock is past the lifetime");
        cache
            .keys
            .lock()
            .unwrap()
            .insert(id("AKIDold"), (Arc::new(key("AKIDold")), stale));
        assert!(cache.get(&id("AKIDold")).is_none());
    }

    #[test]
    fn distinct_keys_past_the_capacity_start_it_over() {
        let cache = KeyCache::default();
        for n in 0..CAPACITY + 10 {
            cache.keep(Arc::new(key(&format!("AKIDkey{n}"))));
        }
        let kept = cache.keys.lock().unwrap().len();
        assert!(kept <= CAPACITY, "{kept} keys kept");
        assert!(cache
            .get(&id(&format!("AKIDkey{}", CAPACITY + 9)))
            .is_some());
    }
}
