//! The JSON answers of API 2.0 (`shared/protocol/README.md` §4–5). Every answer is
//! HTTP 200 with a body whose `code` tells success (0) or the error.

use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The outer `code` of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidParameter,
    AuthFailure,
    UnauthorizedAction,
    UnauthorizedResource,
    MainAccountOnly,
    InvalidSecretId,
    PermissionCheckFailed,
    RequestExpired,
    AccessDenied,
    LimitExceeded,
    NonceReplayed,
    ProtocolNotSupported,
    ResourceNotFound,
    OperationFailed,
    PurchaseFailed,
    InsufficientBalance,
    PartialSuccess,
    IdentityVerificationRequired,
    InternalError,
    UnsupportedAction,
    Unavailable,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            Self::InvalidParameter => 4000,
            Self::AuthFailure => 4100,
            Self::UnauthorizedAction => 4101,
            Self::UnauthorizedResource => 4102,
            Self::MainAccountOnly => 4103,
            Self::InvalidSecretId => 4104,
            Self::PermissionCheckFailed => 4110,
            Self::RequestExpired => 4200,
            Self::AccessDenied => 4300,
            Self::LimitExceeded => 4400,
            Self::NonceReplayed => 4500,
            Self::ProtocolNotSupported => 4600,
            Self::ResourceNotFound => 5000,
            Self::OperationFailed => 5100,
            Self::PurchaseFailed => 5200,
            Self::InsufficientBalance => 5300,
            Self::PartialSuccess => 5400,
            Self::IdentityVerificationRequired => 5500,
            Self::InternalError => 6000,
            Self::UnsupportedAction => 6100,
            Self::Unavailable => 6200,
        }
    }

    /// The error's name, sent as `codeDesc` beside the number.
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidParameter => "InvalidParameter",
            Self::AuthFailure => "AuthFailure",
            Self::UnauthorizedAction => "UnauthorizedOperation",
            Self::UnauthorizedResource => "UnauthorizedResource",
            Self::MainAccountOnly => "MainAccountOnly",
            Self::InvalidSecretId => "InvalidSecretId",
            Self::PermissionCheckFailed => "PermissionCheckFailed",
            Self::RequestExpired => "RequestExpired",
            Self::AccessDenied => "AccessDenied",
            Self::LimitExceeded => "RequestLimitExceeded",
            Self::NonceReplayed => "NonceReplayed",
            Self::ProtocolNotSupported => "ProtocolNotSupported",
            Self::ResourceNotFound => "ResourceNotFound",
            Self::OperationFailed => "OperationFailed",
            Self::PurchaseFailed => "PurchaseFailed",
            Self::InsufficientBalance => "InsufficientBalance",
            Self::PartialSuccess => "PartialSuccess",
            Self::IdentityVerificationRequired => "IdentityVerificationRequired",
            Self::InternalError => "InternalError",
            Self::UnsupportedAction => "UnsupportedAction",
            Self::Unavailable => "ServiceUnavailable",
        }
    }

    /// The code for a number a task stored, when it is one of ours.
    pub fn from_code(code: u32) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.code() == code)
    }
}

const ALL_CODES: [ErrorCode; 21] = [
    ErrorCode::InvalidParameter,
    ErrorCode::AuthFailure,
    ErrorCode::UnauthorizedAction,
    ErrorCode::UnauthorizedResource,
    ErrorCode::MainAccountOnly,
    ErrorCode::InvalidSecretId,
    ErrorCode::PermissionCheckFailed,
    ErrorCode::RequestExpired,
    ErrorCode::AccessDenied,
    ErrorCode::LimitExceeded,
    ErrorCode::NonceReplayed,
    ErrorCode::ProtocolNotSupported,
    ErrorCode::ResourceNotFound,
    ErrorCode::OperationFailed,
    ErrorCode::PurchaseFailed,
    ErrorCode::InsufficientBalance,
    ErrorCode::PartialSuccess,
    ErrorCode::IdentityVerificationRequired,
    ErrorCode::InternalError,
    ErrorCode::UnsupportedAction,
    ErrorCode::Unavailable,
];

/// An error answer: a code and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", code.code())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameter, message)
    }

    /// The JSON body of this error.
    pub fn to_body(&self) -> String {
        to_body(&Head::error(self))
    }
}

/// `code`, `message` and `codeDesc`, which every answer starts with.
#[derive(Serialize)]
struct Head<'a> {
    code: u32,
    message: &'a str,
    #[serde(rename = "codeDesc")]
    code_desc: &'a str,
    /// Borrowed when the caller keeps its data: a query's answer is not copied to be
    /// written.
    #[serde(flatten)]
    rest: Cow<'a, Map<String, Value>>,
}

impl<'a> Head<'a> {
    fn ok(message: &'a str, rest: Cow<'a, Map<String, Value>>) -> Self {
        Self {
            code: 0,
            message,
            code_desc: "Success",
            rest,
        }
    }

    fn error(error: &'a ApiError) -> Self {
        Self {
            code: error.code.code(),
            message: &error.message,
            code_desc: error.code.name(),
            rest: Cow::Owned(Map::new()),
        }
    }
}

fn to_body(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("answers serialise: string keys, no floats that fail")
}

/// A synchronous answer: the data sits beside `code` and `message`.
pub fn query(data: &Map<String, Value>) -> String {
    to_body(&Head::ok("", Cow::Borrowed(data)))
}

/// A synchronous answer whose `data` is already written as JSON.
pub fn query_raw(data: &serde_json::value::RawValue) -> String {
    #[derive(Serialize)]
    struct WithData<'a> {
        #[serde(flatten)]
        head: Head<'a>,
        data: &'a serde_json::value::RawValue,
    }
    to_body(&WithData {
        head: Head::ok("", Cow::Owned(Map::new())),
        data,
    })
}

/// A general asynchronous answer: the task's ID as `requestId`, plus any `extra` fields
/// (such as the IDs of created resources).
pub fn general(request_id: u64, mut extra: Map<String, Value>) -> String {
    extra.insert("requestId".into(), Value::String(request_id.to_string()));
    to_body(&Head::ok("", Cow::Owned(extra)))
}

/// One resource's line in a task-chain answer.
#[derive(Debug, Clone, PartialEq)]
pub enum DetailEntry {
    Accepted { request_id: u64 },
    Refused(ApiError),
}

/// A task-chain answer: outer code 0 when every resource accepted the operation, 5100
/// when none did, 5400 when some did; `detail` in request order.
pub fn chain(request_id: Option<u64>, detail: &[(String, DetailEntry)]) -> String {
    let refused = detail
        .iter()
        .filter(|(_, e)| matches!(e, DetailEntry::Refused(_)))
        .count();
    let entries: Map<String, Value> = detail
        .iter()
        .map(|(resource, entry)| {
            let line = match entry {
                DetailEntry::Accepted { request_id } => serde_json::json!({
                    "code": 0, "message": "", "requestId": request_id.to_string(),
                }),
                DetailEntry::Refused(error) => serde_json::json!({
                    "code": error.code.code(), "message": error.message, "requestId": "",
                }),
            };
            (resource.clone(), line)
        })
        .collect();
    let mut rest = Map::new();
    if let Some(id) = request_id {
        rest.insert("requestId".into(), Value::String(id.to_string()));
    }
    rest.insert("detail".into(), Value::Object(entries));
    let summary;
    let (code, message) = if refused == 0 {
        (None, "success")
    } else if refused == detail.len() {
        (
            Some(ErrorCode::OperationFailed),
            "the operation failed for every resource; see detail",
        )
    } else {
        summary = format!(
            "the operation failed for {refused} of {} resources; see detail",
            detail.len()
        );
        (Some(ErrorCode::PartialSuccess), summary.as_str())
    };
    let head = match code {
        None => Head::ok(message, Cow::Owned(rest)),
        Some(code) => Head {
            code: code.code(),
            message,
            code_desc: code.name(),
            rest: Cow::Owned(rest),
        },
    };
    to_body(&head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn every_code_is_distinct_and_round_trips() {
        for code in ALL_CODES {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(1234), None);
    }

    #[test]
    fn error_and_general_shapes() {
        let body = ApiError::invalid_parameter("instanceId is required").to_body();
        assert_eq!(
            parse(&body),
            json!({"code": 4000, "message": "instanceId is required", "codeDesc": "InvalidParameter"})
        );
        let body = general(42, Map::new());
        assert_eq!(
            parse(&body),
            json!({"code": 0, "message": "", "codeDesc": "Success", "requestId": "42"})
        );
    }

    #[test]
    fn chain_outer_code_follows_the_details() {
        let ok = |id| DetailEntry::Accepted { request_id: id };
        let refused = || {
            DetailEntry::Refused(ApiError::new(
                ErrorCode::ResourceNotFound,
                "no such instance",
            ))
        };
        let all_ok = parse(&chain(
            Some(9),
            &[("ins-b".into(), ok(1)), ("ins-a".into(), ok(2))],
        ));
        assert_eq!(all_ok["code"], 0);
        assert_eq!(all_ok["message"], "success");
        assert_eq!(all_ok["requestId"], "9");
        assert_eq!(
            all_ok["detail"]["ins-a"],
            json!({"code": 0, "message": "", "requestId": "2"})
        );
        // Request order is kept.
        let keys: Vec<&String> = all_ok["detail"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ins-b", "ins-a"]);

        let mixed = parse(&chain(
            Some(9),
            &[("ins-a".into(), ok(1)), ("ins-b".into(), refused())],
        ));
        assert_eq!(mixed["code"], 5400);
        assert_eq!(mixed["detail"]["ins-b"]["code"], 5000);

        let none = parse(&chain(None, &[("ins-b".into(), refused())]));
        assert_eq!(none["code"], 5100);
        assert!(none.get("requestId").is_none());
    }
}
