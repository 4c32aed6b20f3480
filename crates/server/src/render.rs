//! The one table that maps outcomes to API 2.0 codes and envelopes.

use qtask_core::Rejection;
use qtask_engine::{Answer, EngineError, Outcome, Refusal, Render};
use qtask_protocol::envelope::{self, DetailEntry};
use qtask_protocol::{ApiError, ErrorCode};

pub struct ProtocolRender;

impl Render for ProtocolRender {
    fn render(&self, outcome: &Outcome) -> String {
        match outcome {
            Ok(Answer::Data(data)) => envelope::query(data),
            Ok(Answer::RawData(data)) => envelope::query_raw(&data.0),
            Ok(Answer::Accepted { request_id, extra }) => {
                envelope::general(request_id.get(), extra.clone())
            }
            Ok(Answer::Chain { request_id, detail }) => {
                let detail: Vec<(String, DetailEntry)> = detail
                    .iter()
                    .map(|(resource, outcome)| {
                        let entry = match outcome {
                            Ok(task) => DetailEntry::Accepted {
                                request_id: task.get(),
                            },
                            Err(refusal) => DetailEntry::Refused(refusal_error(refusal)),
                        };
                        (resource.to_string(), entry)
                    })
                    .collect();
                envelope::chain(request_id.map(|id| id.get()), &detail)
            }
            Err(error) => api_error(error).to_body(),
        }
    }
}

/// Every engine error's code. Internal details never reach the caller.
pub fn api_error(error: &EngineError) -> ApiError {
    match error {
        EngineError::InvalidArgument(e) => ApiError::invalid_parameter(e.to_string()),
        EngineError::UnknownAction(action) => ApiError::new(
            ErrorCode::UnsupportedAction,
            format!("the action {action} does not exist"),
        ),
        EngineError::NotFound(message) => {
            ApiError::new(ErrorCode::ResourceNotFound, message.clone())
        }
        EngineError::Refused(refusal) => refusal_error(refusal),
        EngineError::NonceReused => ApiError::new(ErrorCode::NonceReplayed, error.to_string()),
        EngineError::KeyDisabled(_) => ApiError::new(ErrorCode::InvalidSecretId, error.to_string()),
        EngineError::AccountBlocked(_) => ApiError::new(ErrorCode::AccessDenied, error.to_string()),
        EngineError::TokenReused(_) => ApiError::invalid_parameter(format!("parameter {error}")),
        EngineError::ActionNotAllowed { .. } | EngineError::ReadOnlyKey(_) => {
            ApiError::new(ErrorCode::UnauthorizedAction, error.to_string())
        }
        EngineError::ResourcesNotAllowed(_) => {
            ApiError::new(ErrorCode::UnauthorizedResource, error.to_string())
        }
        EngineError::MainKeyOnly(_) => ApiError::new(ErrorCode::MainAccountOnly, error.to_string()),
        EngineError::RateExceeded(_) | EngineError::LimitExceeded(_) => {
            ApiError::new(ErrorCode::LimitExceeded, error.to_string())
        }
        EngineError::Internal(_) => ApiError::new(
            ErrorCode::InternalError,
            "internal error; the server log has details",
        ),
    }
}

fn refusal_error(refusal: &Refusal) -> ApiError {
    let code = match refusal.rejection {
        Rejection::NotFound => ErrorCode::ResourceNotFound,
        Rejection::Busy { .. } | Rejection::WrongState { .. } => ErrorCode::OperationFailed,
    };
    ApiError::new(code, refusal.to_string())
}
