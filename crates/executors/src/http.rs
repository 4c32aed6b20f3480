//! The `http` executor: one attempt = one signed POST of the task document to a webhook.

use crate::document::task_document;
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use qtask_core::TaskError;
use qtask_engine::executor::{ExecError, Executor};
use qtask_store::ClaimedTask;
use reqwest::{header, StatusCode, Url};
use serde_json::Value;
use sha2::Sha256;
use std::error::Error as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

pub const REQUEST_ID_HEADER: &str = "X-Qtask-Request-Id";
pub const ATTEMPT_HEADER: &str = "X-Qtask-Attempt";
pub const TIMESTAMP_HEADER: &str = "X-Qtask-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Qtask-Signature";

const SIGNATURE_PREFIX: &str = "sha256=";

/// The largest successful answer read: a result is a small document, and a receiver
/// that streams more must not exhaust qtask's memory.
const MAX_RESULT_BYTES: usize = 1024 * 1024;

/// How much of an error answer is read, and how much of it a message quotes.
const ERROR_BODY_BYTES: usize = 4096;
const BODY_EXCERPT_CHARS: usize = 200;

/// Where to send each attempt.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// An `http` or `https` URL.
    pub url: String,
    /// The shared secret that signs requests; unsigned when `None`.
    pub secret: Option<String>,
    /// The limit of one request, answer included (the engine's action timeout still
    /// bounds the attempt).
    pub timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    #[error("invalid webhook URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// POSTs the task document (see the crate docs) to a webhook and judges the answer.
///
/// Redirects are not followed: a webhook that moved is a configuration to fix, and
/// following a 301 or 302 would turn the POST into a GET. Failure messages name the
/// webhook, not its URL, because they reach API callers and a URL can carry
/// credentials.
pub struct HttpExecutor {
    url: Url,
    secret: Option<String>,
    client: reqwest::Client,
}

impl HttpExecutor {
    pub fn new(settings: HttpSettings) -> Result<Self, HttpConfigError> {
        let bad_url = |reason: String| HttpConfigError::BadUrl {
            url: settings.url.clone(),
            reason,
        };
        let url = Url::parse(&settings.url).map_err(|error| bad_url(error.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url("the scheme must be http or https".into()));
        }
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qtask/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = settings.timeout {
            client = client.timeout(timeout);
        }
        Ok(Self {
            url,
            secret: settings.secret,
            client: client.build().map_err(HttpConfigError::Client)?,
        })
    }

    async fn post(&self, task: &ClaimedTask) -> Result<Option<Value>, ExecError> {
        let body = serde_json::to_vec(&task_document(task)).expect("JSON values serialize");
        let timestamp = unix_seconds().to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(REQUEST_ID_HEADER, task.task.id.to_string())
            .header(ATTEMPT_HEADER, task.task.attempts.to_string())
            .header(TIMESTAMP_HEADER, &timestamp);
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, sign(secret, &timestamp, &body));
        }
        let mut response = request.body(body).send().await.map_err(transport_failure)?;
        let status = response.status();
        let limit = if status.is_success() {
            MAX_RESULT_BYTES
        } else {
            ERROR_BODY_BYTES
        };
        let (body, complete) = read_prefix(&mut response, limit)
            .await
            .map_err(transport_failure)?;
        judge_answer(status, &body, complete)
    }
}

#[async_trait]
impl Executor for HttpExecutor {
    async fn execute(
        &self,
        task: &ClaimedTask,
        cancel: &CancellationToken,
    ) -> Result<Option<Value>, ExecError> {
        tokio::select! {
            outcome = self.post(task) => outcome,
            // Dropping the request closes its connection; the receiver may still
            // finish what it started.
            () = cancel.cancelled() => Err(ExecError::Canceled(
                "canceled while running: the webhook request was abandoned".into(),
            )),
        }
    }
}

/// 2xx succeeds (a JSON body is the result); 429 and 5xx are worth a retry; any other
/// status, or a 2xx whose body is not JSON, fails for good.
fn judge_answer(
    status: StatusCode,
    body: &[u8],
    complete: bool,
) -> Result<Option<Value>, ExecError> {
    let failure = |what: &str| {
        TaskError::operation_failed(format!(
            "the webhook answered {status}{what}{}",
            excerpt(body)
        ))
    };
    if status.is_success() {
        if !complete {
            let limit = MAX_RESULT_BYTES;
            return Err(ExecError::Fatal(failure(&format!(
                " with a body larger than {limit} bytes"
            ))));
        }
        let body = body.trim_ascii();
        if body.is_empty() {
            return Ok(None);
        }
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Null) => Ok(None),
            Ok(result) => Ok(Some(result)),
            Err(_) => Err(ExecError::Fatal(failure(" with a body that is not JSON"))),
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Err(ExecError::Retryable(failure("")))
    } else {
        Err(ExecError::Fatal(failure("")))
    }
}

/// `": <the start of body>"`, or nothing for an empty body.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((end, _)) => format!(": {}…", &text[..end]),
        None => format!(": {text}"),
    }
}

/// Reads at most `limit` bytes of the body; the flag says whether that was all of it.
async fn read_prefix(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// No answer (connection refused or reset, timeout, DNS): worth another attempt.
fn transport_failure(error: reqwest::Error) -> ExecError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not be reached"
    } else {
        "failed"
    };
    let error = error.without_url();
    let causes =
        std::iter::successors(error.source(), |cause| (*cause).source()).map(ToString::to_string);
    let detail = std::iter::once(error.to_string())
        .chain(causes)
        .collect::<Vec<_>>()
        .join(": ");
    ExecError::Retryable(TaskError::operation_failed(format!(
        "the webhook request {what}: {detail}"
    )))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn signature_mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Qtask-Signature` value for a request: `sha256=` and the lowercase hex of
/// HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let digest = signature_mac(secret, timestamp, body)
        .finalize()
        .into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{SIGNATURE_PREFIX}{hex}")
}

/// Whether `header` (an `X-Qtask-Signature` value) signs `timestamp` (the
/// `X-Qtask-Timestamp` value) and the raw `body` with `secret`. The comparison takes
/// the same time wherever the first wrong byte is, so it leaks nothing about the right
/// signature. Checking that the timestamp is recent is the receiver's part.
pub fn verify_signature(secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(signature) = header.strip_prefix(SIGNATURE_PREFIX).and_then(decode_hex) else {
        return false;
    };
    signature_mac(secret, timestamp, body)
        .verify_slice(&signature)
        .is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_any_change() {
        let signature = sign("s3cret", "1700000000", b"{\"a\":1}");
        assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
        assert!(verify_signature(
            "s3cret",
            "1700000000",
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify_signature(
            "s3cret",
            "1700000000",
            b"{\"a\":2}",
            &signature
        ));
        assert!(!verify_signature(
            "s3cret",
            "1700000001",
            b"{\"a\":1}",
            &signature
        ));
        assert!(!verify_signature(
            "other",
            "1700000000",
            b"{\"a\":1}",
            &signature
        ));
        let upper = signature.to_uppercase().replacen("SHA256=", "sha256=", 1);
        assert!(verify_signature(
            "s3cret",
            "1700000000",
            b"{\"a\":1}",
            &upper
        ));
        for malformed in [
            "",
            "sha256=",
            "sha256=zz",
            &signature[7..],
            &signature[..70],
        ] {
            assert!(!verify_signature(
                "s3cret",
                "1700000000",
                b"{\"a\":1}",
                malformed
            ));
        }
    }

    #[test]
    fn excerpts_are_short_and_trimmed() {
        assert_eq!(excerpt(b"  \n"), "");
        assert_eq!(excerpt(b" not found\n"), ": not found");
        let long = "é".repeat(300);
        assert_eq!(excerpt(long.as_bytes()), format!(": {}…", "é".repeat(200)));
    }
}
