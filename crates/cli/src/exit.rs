//! The exit codes of the client commands (`call`, `tasks`, `instances`, `lb`), and
//! which errors map to which.

use crate::client::ClientError;

/// What a client command's exit status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Success = 0,
    /// The server answered an error, or a task failed, was canceled or did not end
    /// within the wait.
    Failed = 1,
    /// The command line, a configuration file or the keys were wrong.
    Usage = 2,
    /// The server could not be reached (or does not offer what was asked).
    Unreachable = 3,
}

/// The `--help` text that documents [`Exit`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  everything succeeded (with --wait: every task ended SUCCESS)
  1  the server answered an error, or a task failed, was canceled or outlived --wait-timeout
  2  usage error: bad arguments, configuration or keys
  3  the server could not be reached";

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// 0 when `ok`, else 1.
    pub fn from_success(ok: bool) -> Self {
        if ok {
            Self::Success
        } else {
            Self::Failed
        }
    }

    /// The exit status an error ends the command with.
    pub fn of_error(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if let Some(error) = cause.downcast_ref::<CliError>() {
                return match error {
                    CliError::Usage(_) => Self::Usage,
                    CliError::Answer { .. } => Self::Failed,
                    CliError::Unavailable(_) => Self::Unreachable,
                };
            }
            if let Some(error) = cause.downcast_ref::<ClientError>() {
                return match error {
                    ClientError::Unreachable { .. } | ClientError::StreamBroken { .. } => {
                        Self::Unreachable
                    }
                    ClientError::Status { .. }
                    | ClientError::NotJson(_)
                    | ClientError::StreamRefused { .. } => Self::Failed,
                    ClientError::Endpoint(_) | ClientError::Ca { .. } | ClientError::Params(_) => {
                        Self::Usage
                    }
                };
            }
        }
        Self::Usage
    }
}

/// Failures of client commands that are not the transport's.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// The server answered with a non-zero code.
    #[error("{action} answered {code}: {message}")]
    Answer {
        action: String,
        code: i64,
        message: String,
    },
    /// The server answers but cannot serve what was asked: it lacks the feature (an
    /// older version) or closed the connection.
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// The error an answer with a non-zero `code` stands for.
    pub fn answer(action: &str, answer: &serde_json::Value) -> Self {
        Self::Answer {
            action: action.to_owned(),
            code: answer_code(answer),
            message: answer
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// An answer's `code` (-1 when it has none).
pub fn answer_code(answer: &serde_json::Value) -> i64 {
    answer
        .get("code")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_exit_codes() {
        let usage = anyhow::Error::new(CliError::usage("bad"));
        assert_eq!(Exit::of_error(&usage), Exit::Usage);
        let answer = anyhow::Error::new(CliError::answer(
            "CancelTask",
            &serde_json::json!({"code": 5000, "message": "no"}),
        ))
        .context("canceling");
        assert_eq!(Exit::of_error(&answer), Exit::Failed);
        let missing = anyhow::Error::new(CliError::Unavailable("old".into()));
        assert_eq!(Exit::of_error(&missing), Exit::Unreachable);
        let endpoint = anyhow::Error::new(ClientError::Endpoint("x".into()));
        assert_eq!(Exit::of_error(&endpoint), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("other")), Exit::Usage);
    }
}
