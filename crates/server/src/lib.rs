//! qtask's HTTP edge: the API 2.0 endpoint at `/v2/index.php`.
//!
//! A request is decoded and verified here ([`auth`]: parameters, key, signature,
//! timestamp), handed to the engine as a [`qtask_engine::Call`], and its outcome rendered
//! as an API 2.0 envelope ([`render`]). Every API answer is HTTP 200; the JSON `code`
//! says what happened.
//!
//! Architecture invariant: this is the only crate that maps errors to protocol codes
//! (in [`render`]); the only crate that speaks HTTP.

pub mod api;
pub mod auth;
pub mod console;
pub mod events;
pub mod health;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod render;
pub mod tls;

use axum::routing::get;
use axum::Router;
pub use limits::HttpLimits;
use limits::LimitAcceptor;
use qtask_engine::Engine;
use qtask_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How requests are verified.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The largest accepted distance between a request's Timestamp and the server's
    /// clock; nonces are remembered for as long.
    pub timestamp_window: Duration,
    /// Hosts (with port) a client may have signed besides the `Host` it sent, for
    /// servers behind a proxy that rewrites `Host`.
    pub public_names: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            timestamp_window: Duration::from_secs(300),
            public_names: Vec::new(),
        }
    }
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    /// API keys read recently (see `keys.rs` for what may be trusted from it).
    pub keys: keys::KeyCache,
    pub engine: Arc<Engine>,
    pub auth: AuthSettings,
    /// Cancelled when shutdown begins: from then on every API call answers 6200.
    pub draining: CancellationToken,
}

/// Where the Server-Sent Events stream of task events is.
pub const EVENTS_PATH: &str = "/v2/events";

/// The whole HTTP application.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            qtask_protocol::API_PATH,
            // The POST handler reads its body with its own limit (refused with 4000).
            get(api::get)
                .post(api::post)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(EVENTS_PATH, get(events::stream))
        .route("/healthz", get(health::alive))
        .route("/readyz", get(health::ready))
        .merge(console::routes())
        .with_state(state)
}

/// Listeners the server answers on; each is optional, at least one should be given.
pub struct Listeners {
    pub http: Option<std::net::TcpListener>,
    pub https: Option<(std::net::TcpListener, Arc<rustls::ServerConfig>)>,
}

/// Serves `app` until `shutdown` is cancelled, then lets open requests finish for up
/// to `grace`.
pub async fn serve(
    app: Router,
    listeners: Listeners,
    limits: HttpLimits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    // One pool of connection places for both listeners.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut servers = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.http {
        listener.set_nonblocking(true)?;
        let mut server = axum_server::from_tcp(listener)
            .handle(handle.clone())
            .map(|inner| LimitAcceptor::new(inner, Arc::clone(&permits)));
        limits.configure(server.http_builder());
        let service = service.clone();
        servers.spawn(async move { server.serve(service).await });
    }
    if let Some((listener, config)) = listeners.https {
        listener.set_nonblocking(true)?;
        let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
        let mut server = axum_server::from_tcp_rustls(listener, config)
            .handle(handle.clone())
            .map(|inner| LimitAcceptor::new(inner, Arc::clone(&permits)));
        limits.configure(server.http_builder());
        let service = service.clone();
        servers.spawn(async move { server.serve(service).await });
    }
    let stopper = {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.graceful_shutdown(Some(grace));
        })
    };
    let mut result = Ok(());
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Err(e)) => {
                // One listener failing stops the others: a half-served API is worse
                // than a clear exit.
                handle.shutdown();
                result = Err(e);
            }
            Err(e) => result = Err(std::io::Error::other(e)),
            Ok(Ok(())) => {}
        }
    }
    stopper.abort();
    result
}
