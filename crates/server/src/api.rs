//! The `/v2/index.php` handlers: GET with the parameters in the query string, POST with
//! them in an `application/x-www-form-urlencoded` body.

use crate::auth::{self, IncomingRequest};
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use qtask_engine::time::now_millis;
use qtask_protocol::signature::HttpMethod;
use qtask_protocol::{ApiError, ErrorCode};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::field::{display, Empty};
use tracing::Instrument;

pub async fn get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let form = uri.query().unwrap_or("").as_bytes();
    handle(&state, HttpMethod::Get, peer, &headers, &uri, form).await
}

/// The largest POST body read. A larger one is refused with 4000 after reading at most
/// this much (never the whole body).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a client may take to send a POST body (its head has its own limit,
/// `HttpLimits::client_timeout`).
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    );
    let body = match read.await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            let error = ApiError::invalid_parameter(format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes (1 MiB)"
            ));
            return answer_and_close(error.to_body());
        }
        Err(_) => {
            let error = ApiError::invalid_parameter(format!(
                "the request body did not arrive within {}s",
                BODY_READ_TIMEOUT.as_secs()
            ));
            return answer_and_close(error.to_body());
        }
    };
    handle(&state, HttpMethod::Post, peer, &headers, &uri, &body).await
}

async fn handle(
    state: &AppState,
    method: HttpMethod,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
    form: &[u8],
) -> Response {
    // Every log line of the call carries its peer, action and requestId. The span is
    // context, not a line of its own: at error level it is on whenever any line is.
    let span = tracing::error_span!("call", %peer, action = Empty, requestId = Empty);
    async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        let request = IncomingRequest {
            method,
            host,
            form,
            peer,
        };
        if let Some(refused) = refuse_when_draining(state) {
            return answered(refused, None, ErrorCode::Unavailable.code());
        }
        match auth::verify(state, request, now_millis()).await {
            Ok(call) => {
                let span = tracing::Span::current();
                span.record("action", display(&call.action));
                // A call about a task names it; a call that creates tasks answers with one.
                let named = call.params.get("requestId").and_then(|id| id.as_str());
                if let Some(id) = named {
                    span.record("requestId", display(id));
                }
                let names_a_task = named.is_some();
                let action = call.action.clone();
                let secret_id = call.secret_id.clone();
                let body = state.engine.call(call).await;
                let summary = AnswerSummary::of(&body);
                // The store refused the key the cache gave: read it afresh next time.
                if [ErrorCode::InvalidSecretId, ErrorCode::AccessDenied]
                    .iter()
                    .any(|refused| refused.code() == summary.code)
                {
                    state.keys.forget(&secret_id);
                }
                if let (Some(id), false) = (&summary.request_id, names_a_task) {
                    span.record("requestId", display(id));
                }
                tracing::info!(answer = %head(&body), "call");
                answered(answer(body), Some(action), summary.code)
            }
            Err(error) => {
                tracing::info!(code = error.code.code(), reason = %error.message, "refused");
                answered(answer(error.to_body()), None, error.code.code())
            }
        }
    }
    .instrument(span)
    .await
}

/// What an API call was and how it was answered, attached to its response for the
/// metrics layer.
#[derive(Debug, Clone)]
pub struct AnsweredCall {
    /// `None` when the call was refused before its action was known.
    pub action: Option<String>,
    pub code: u32,
}

fn answered(mut response: Response, action: Option<String>, code: u32) -> Response {
    response
        .extensions_mut()
        .insert(AnsweredCall { action, code });
    response
}

/// The fields of an answer the log and the metrics need; the rest is skipped unread.
#[derive(Debug, serde::Deserialize)]
struct AnswerSummary {
    code: u32,
    #[serde(rename = "requestId")]
    request_id: Option<String>,
}

impl AnswerSummary {
    fn of(body: &str) -> Self {
        let mut summary: Self = serde_json::from_str(body).unwrap_or_else(|error| {
            tracing::error!(%error, "the engine rendered an answer that is not an envelope");
            Self {
                code: ErrorCode::InternalError.code(),
                request_id: None,
            }
        });
        // A chain that every resource refused has an empty requestId.
        summary.request_id = summary.request_id.filter(|id| !id.is_empty());
        summary
    }
}

/// 6200 once shutdown began: nothing new is accepted, so a client should retry
/// elsewhere or after the restart.
pub fn refuse_when_draining(state: &AppState) -> Option<Response> {
    state.draining.is_cancelled().then(|| {
        let error = ApiError::new(
            ErrorCode::Unavailable,
            "qtask is shutting down and accepts no new calls; retry in a moment",
        );
        answer(error.to_body())
    })
}

/// Every API answer is HTTP 200: the legacy clients treat any other status as a
/// network failure. The JSON `code` tells the outcome.
pub fn answer(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An answer to a request whose body was left partly unread: the connection cannot carry
/// another request, so the answer says it closes. Without `Connection: close` a client may
/// put the connection back in its pool and lose its next request to a broken pipe.
fn answer_and_close(body: String) -> Response {
    let mut response = answer(body);
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The start of an answer, for the log line (code and message, never data).
fn head(body: &str) -> &str {
    let end = body.find(",\"codeDesc\"").unwrap_or(body.len().min(80));
    &body[..end]
}
