//! `qtask bench null-server`: the baseline of a benchmark sitting. It serves the API path
//! with the same HTTP server, settings and router library as `qtask serve`, but answers
//! every call at once with a fixed success (after reading and decoding its parameters,
//! which any server must do). A scenario run against it measures what this machine and
//! this generator allow *any* server: the ceiling a figure of `qtask serve` is read
//! against (BENCHMARKS.md, "The ceiling").

use crate::exit::Exit;
use axum::body::Bytes;
use axum::http::{header, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use qtask_protocol::{Params, API_PATH};
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct NullServerArgs {
    /// Where to listen (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:18383", value_name = "ADDR")]
    pub listen: SocketAddr,
}

/// What every call is answered: a success naming one task and one instance, enough for
/// every scenario's set-up (`describe` and `chain` read the `requestId` and the
/// `instanceIds` of a `RunInstances`).
const ANSWER: &str = r#"{"code":0,"message":"","codeDesc":"Success","requestId":"1","instanceIds":["ins-00000001"]}"#;

async fn answer(form: &[u8]) -> impl IntoResponse {
    // Decoded and dropped: the one piece of a call's work no server can skip.
    let decoded = Params::decode(form).map(|params| params.iter().count());
    std::hint::black_box(decoded.ok());
    ([(header::CONTENT_TYPE, "application/json")], ANSWER)
}

pub async fn run(args: NullServerArgs) -> anyhow::Result<Exit> {
    let app = axum::Router::new().route(
        API_PATH,
        get(|uri: Uri| async move { answer(uri.query().unwrap_or("").as_bytes()).await })
            .post(|body: Bytes| async move { answer(&body).await }),
    );
    let listener = std::net::TcpListener::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "Ready. A null server on http://{} answers every call with code 0 (a benchmark's ceiling, not an API)",
        listener.local_addr()?
    );
    // Runs until killed: it holds nothing to save.
    let shutdown = CancellationToken::new();
    let listeners = qtask_server::Listeners {
        http: Some(listener),
        https: None,
    };
    qtask_server::serve(
        app,
        listeners,
        qtask_server::limits::HttpLimits::default(),
        shutdown,
        std::time::Duration::from_secs(1),
    )
    .await?;
    Ok(Exit::Success)
}
