//! The task state machine.
//!
//! ```text
//!            claim             success
//!  QUEUED ──────────▶ RUNNING ─────────▶ SUCCESS
//!   │ ▲                  │
//!   │ └─ retry, crash, ──┤  failure (fatal, or retries exhausted)
//!   │    lease lost      ├─────────────▶ FAILED
//!   │                    │  cancel honoured by the executor
//!   │                    └─────────────▶ CANCELED
//!   └──── cancel before it started ────▶ CANCELED
//! ```
//! QUEUED and RUNNING are *unfinished*; SUCCESS, FAILED and CANCELED are *final* and
//! never change.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    /// The name used in answers and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCESS",
            Self::Failed => "FAILED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn is_final(self) -> bool {
        !self.is_unfinished()
    }

    pub fn is_unfinished(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    /// The API 2.0 task-result integer: 0 succeeded, 1 failed (or canceled: the legacy
    /// API knows no other end), 2 in progress.
    pub fn legacy_status(self) -> u8 {
        match self {
            Self::Succeeded => 0,
            Self::Failed | Self::Canceled => 1,
            Self::Queued | Self::Running => 2,
        }
    }

    /// The state of a group of tasks (a chain) seen as one: QUEUED while none has
    /// started, RUNNING while any is unfinished, then FAILED if any failed or was
    /// canceled, else SUCCESS.
    pub fn aggregate(states: impl IntoIterator<Item = TaskState>) -> TaskState {
        let (mut queued, mut unfinished, mut failed, mut total) = (0, 0, 0, 0);
        for state in states {
            total += 1;
            match state {
                Self::Queued => {
                    queued += 1;
                    unfinished += 1;
                }
                Self::Running => unfinished += 1,
                Self::Failed | Self::Canceled => failed += 1,
                Self::Succeeded => {}
            }
        }
        if total > 0 && queued == total {
            Self::Queued
        } else if unfinished > 0 {
            Self::Running
        } else if failed > 0 {
            Self::Failed
        } else {
            Self::Succeeded
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?} (expected QUEUED, RUNNING, SUCCESS, FAILED or CANCELED)")]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_owned()))
    }
}

/// Why a task failed: an API error code (5100 for an operation that failed) and a
/// message meant for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub code: u32,
    pub message: String,
}

impl TaskError {
    /// An operation that failed, or was canceled: the legacy API's code for both.
    pub const OPERATION_FAILED: u32 = 5100;
    /// qtask itself failed (an executor panicked).
    pub const INTERNAL: u32 = 6000;

    pub fn operation_failed(message: impl Into<String>) -> Self {
        Self {
            code: Self::OPERATION_FAILED,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn legacy_status_integers() {
        assert_eq!(Succeeded.legacy_status(), 0);
        assert_eq!(Failed.legacy_status(), 1);
        assert_eq!(Canceled.legacy_status(), 1);
        assert_eq!(Queued.legacy_status(), 2);
        assert_eq!(Running.legacy_status(), 2);
    }

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().unwrap(), state);
        }
        assert!("success".parse::<TaskState>().is_err());
    }

    #[test]
    fn aggregate_is_unfinished_until_every_task_is_final() {
        assert_eq!(TaskState::aggregate([Queued, Queued]), Queued);
        assert_eq!(TaskState::aggregate([Succeeded, Queued]), Running);
        assert_eq!(TaskState::aggregate([Running, Queued, Failed]), Running);
        assert_eq!(TaskState::aggregate([Queued, Running]), Running);
        assert_eq!(TaskState::aggregate([Succeeded, Failed]), Failed);
        assert_eq!(TaskState::aggregate([Succeeded, Canceled]), Failed);
        assert_eq!(TaskState::aggregate([Succeeded, Succeeded]), Succeeded);
    }
}
