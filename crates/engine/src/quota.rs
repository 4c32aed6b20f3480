//! Request-rate quotas: one token bucket per SecretId, in memory (a restart refills
//! every bucket, which only ever lets a client make a burst more).

use qtask_core::SecretId;
use qtask_store::RequestRate;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket: `rate.per_second` tokens a second, at most `rate.burst` kept.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: RequestRate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: RequestRate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Every SecretId's bucket. Only keys whose signature verified reach it, so the map
/// holds at most one entry per existing key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// The rate of keys without their own; `None` = unlimited.
    default: Option<RequestRate>,
    buckets: Mutex<HashMap<SecretId, Bucket>>,
}

impl RateLimiter {
    pub fn new(default: Option<RequestRate>) -> Self {
        Self {
            default,
            buckets: Mutex::default(),
        }
    }

    /// Admits one request from `key` (whose own rate, if any, replaces the default);
    /// `Err` carries the rate it exceeded.
    pub fn admit(
        &self,
        key: &SecretId,
        own: Option<RequestRate>,
        now: Instant,
    ) -> Result<(), RequestRate> {
        let Some(rate) = own.or(self.default) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(rate, now));
        if bucket.take(rate, now) {
            Ok(())
        } else {
            Err(rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(per_second: u32, burst: u32) -> RequestRate {
        RequestRate { per_second, burst }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(Some(rate(2, 3)));
        let key: SecretId = "AKIDbucket".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..3 {
            assert!(limiter.admit(&key, None, t0).is_ok(), "burst request {n}");
        }
        assert_eq!(limiter.admit(&key, None, t0), Err(rate(2, 3)));
        // Half a second gives one token at 2/s.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.admit(&key, None, later).is_ok());
        assert!(limiter.admit(&key, None, later).is_err());
        // A long pause refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.admit(&key, None, much_later).is_ok());
        }
        assert!(limiter.admit(&key, None, much_later).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets_and_rates() {
        let limiter = RateLimiter::new(Some(rate(1, 1)));
        let (a, b): (SecretId, SecretId) = ("AKIDa".parse().unwrap(), "AKIDb".parse().unwrap());
        let t0 = Instant::now();
        assert!(limiter.admit(&a, None, t0).is_ok());
        assert!(limiter.admit(&a, None, t0).is_err());
        assert!(limiter.admit(&b, None, t0).is_ok(), "b has its own bucket");
        let own = Some(rate(10, 5));
        let c: SecretId = "AKIDc".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.admit(&c, own, t0).is_ok());
        }
        assert_eq!(limiter.admit(&c, own, t0), Err(rate(10, 5)));
    }

    #[test]
    fn no_rate_means_unlimited() {
        let limiter = RateLimiter::new(None);
        let key: SecretId = "AKIDfree".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| limiter.admit(&key, None, t0).is_ok()));
    }
}
