//! How the engine runs an action's tasks: attempts, timeout, backoff between attempts,
//! and what to do with a second operation on a busy resource. Each action has one
//! [`Policy`] in the catalog; the configuration file may override it.

use qtask_store::OnBusy;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Attempts in all, the first included; a retryable failure on the last one fails
    /// the task. An attempt interrupted by a crash or a lost lease counts.
    pub max_attempts: u32,
    /// An attempt running longer is aborted and counts as a retryable failure.
    pub timeout: Duration,
    /// The wait before the second attempt; it doubles with each further attempt.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    pub on_busy: OnBusy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            timeout: Duration::from_secs(600),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            on_busy: OnBusy::Refuse,
        }
    }
}

impl Policy {
    /// The wait after failed attempt number `attempt` (1-based): exponential, capped,
    /// with "equal jitter" — between half and all of it — so that tasks failing
    /// together do not retry together. `unit` is a random number in [0, 1).
    pub fn retry_delay(&self, attempt: u32, unit: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let full = self
            .backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.backoff_max);
        full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_half() {
        let policy = Policy {
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..Policy::default()
        };
        assert_eq!(policy.retry_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(policy.retry_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.retry_delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(policy.retry_delay(3, 0.5), Duration::from_secs(3));
        assert_eq!(policy.retry_delay(10, 1.0), Duration::from_secs(10));
        assert_eq!(policy.retry_delay(u32::MAX, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = Policy {
            max_attempts: 2,
            ..Policy::default()
        };
        assert!(policy.may_retry(1));
        assert!(!policy.may_retry(2));
    }
}
