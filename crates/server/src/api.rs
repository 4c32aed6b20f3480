//! The `/v2/index.php` handlers: GET with the parameters in the query string, POST with
//! them in an `application/x-www-form-urlencoded` body.

use crate::auth::{self, IncomingRequest};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use qtask_engine::time::now_millis;
use qtask_protocol::signature::HttpMethod;
use qtask_protocol::{ApiError, ErrorCode};
use std::net::SocketAddr;
use std::sync::Arc;

pub async fn get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let form = uri.query().unwrap_or("").as_bytes();
    handle(&state, HttpMethod::Get, peer, &headers, &uri, form).await
}

pub async fn post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
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
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let request = IncomingRequest { method, host, form };
    if let Some(refused) = refuse_when_draining(state) {
        return refused;
    }
    let body = match auth::verify(state, request, now_millis()).await {
        Ok(call) => {
            let action = call.action.clone();
            let body = state.engine.call(call).await;
            tracing::info!(%peer, action, answer = %head(&body), "call");
            body
        }
        Err(error) => {
            tracing::info!(%peer, code = error.code.code(), message = %error.message, "refused");
            error.to_body()
        }
    };
    answer(body)
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

/// The start of an answer, for the log line (code and message, never data).
fn head(body: &str) -> &str {
    let end = body.find(",\"codeDesc\"").unwrap_or(body.len().min(80));
    &body[..end]
}
