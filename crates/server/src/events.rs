//! `/v2/events`: a Server-Sent Events stream of the caller's task events, opened with a
//! request signed exactly like an API call (`Action=WatchTaskEvents`, over GET).
//! Every event is `event: <kind>`, `id: <seq>`, `data: <the event as JSON>`; a stream
//! that follows a task or chain (`requestId`) ends with `event: end` once all its tasks
//! are final. Errors before the stream starts are ordinary JSON envelopes.

use crate::api::{answer, refuse_when_draining};
use crate::auth::{self, IncomingRequest};
use crate::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use qtask_engine::time::now_millis;
use qtask_engine::watch::{Watch, WatchItem};
use qtask_protocol::signature::HttpMethod;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub async fn stream(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if let Some(refused) = refuse_when_draining(&state) {
        return refused;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let form = uri.query().unwrap_or("").as_bytes();
    let request = IncomingRequest {
        method: HttpMethod::Get,
        host,
        form,
        peer,
    };
    let call = match auth::verify(&state, request, now_millis()).await {
        Ok(call) => call,
        Err(error) => {
            tracing::info!(%peer, code = error.code.code(), reason = %error.message, "refused");
            return answer(error.to_body());
        }
    };
    let watch = match state.engine.watch(call).await {
        Ok(watch) => watch,
        Err(body) => return answer(body),
    };
    tracing::info!(%peer, "event stream opened");
    let events = futures_util::stream::unfold(watch, |mut watch: Watch| async move {
        let item = watch.next().await?;
        Some((Ok::<_, Infallible>(sse_event(item)), watch))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive"))
        .into_response()
}

fn sse_event(item: WatchItem) -> Event {
    match item {
        WatchItem::Event(event) => Event::default()
            .event(event.kind.name())
            .id(event.seq.to_string())
            .data(event.to_json().to_string()),
        WatchItem::End(id) => Event::default()
            .event("end")
            .data(serde_json::json!({ "requestId": id.to_string() }).to_string()),
        WatchItem::Lagged(missed) => Event::default()
            .event("lagged")
            .data(serde_json::json!({ "missed": missed }).to_string()),
    }
}
