//! `/healthz` and `/readyz`, for load balancers and supervisors. Plain text, ordinary
//! HTTP statuses (unlike the API, whose answers are all 200).
//!
//! - `/healthz`: the process answers HTTP — 200 until the listeners close.
//! - `/readyz`: it should get new calls — 200 when the store answers a read and the
//!   server is not draining; 503 with the reason otherwise.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use qtask_core::SecretId;
use std::sync::Arc;
use std::time::Duration;

/// How long the store may take to answer the readiness read.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn alive() -> &'static str {
    "ok\n"
}

pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let unavailable = |reason: String| (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    if state.draining.is_cancelled() {
        return unavailable("draining: qtask is shutting down".into());
    }
    // The read every API call starts with (a key lookup), for a key that cannot exist.
    let probe: SecretId = "qtaskReadinessProbe".parse().expect("a valid SecretId");
    match tokio::time::timeout(STORE_TIMEOUT, state.store.api_key(&probe)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(error)) => unavailable(format!("store unavailable: {error}")),
        Err(_) => unavailable(format!(
            "store unavailable: no answer within {STORE_TIMEOUT:?}"
        )),
    }
}
