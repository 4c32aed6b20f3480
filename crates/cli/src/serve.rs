//! `qtask serve`: wires the store, the engine, the workers and the listeners together,
//! and stops them in order on SIGINT or SIGTERM.

use crate::config::ServeConfig;
use crate::{credentials, keys};
use anyhow::Context;
use qtask_engine::catalog::Catalog;
use qtask_engine::dispatch::WorkerPool;
use qtask_engine::executor::{SimExecutor, SimSettings};
use qtask_engine::Engine;
use qtask_server::render::ProtocolRender;
use qtask_server::{AppState, AuthSettings, Listeners};
use qtask_store::Store;
use qtask_store_sqlite::SqliteStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const DATABASE_FILE: &str = "qtask.db";

pub fn now_millis() -> i64 {
    qtask_engine::time::now_millis()
}

/// Opens the data directory's store, creating the directory if needed.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    create_private_dir(data_dir)?;
    let path = data_dir.join(DATABASE_FILE);
    SqliteStore::open(&path).with_context(|| format!("cannot open the store {}", path.display()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(open_store(&config.data_dir)?);
    let data_dir = config.data_dir.display().to_string();
    println!(
        "qtask {} — data in {data_dir} (SQLite, WAL, synchronous=FULL)",
        env!("CARGO_PKG_VERSION")
    );
    bootstrap_credentials(store.as_ref(), &config.data_dir).await?;

    let catalog = Arc::new(Catalog::builtin());
    for action in config.sim_failure_rates.keys() {
        if catalog.operation(action).is_none() {
            anyhow::bail!("sim_failure_rates names {action:?}, which is not a mutating action");
        }
    }
    let listeners = bind(&config)?;
    let shutdown = CancellationToken::new();
    let executor = Arc::new(SimExecutor::new(
        &catalog,
        SimSettings {
            speed: config.sim_speed,
            failure_rates: config.sim_failure_rates.clone(),
        },
    ));
    let (dispatcher, pool) = WorkerPool::start(
        Arc::clone(&store),
        executor,
        config.workers,
        shutdown.child_token(),
        config.shutdown_grace,
    );
    let recovered = store
        .recover()
        .await
        .context("cannot recover unfinished tasks")?;
    if !recovered.is_empty() {
        println!(
            "Resuming {} unfinished task(s) from the last run",
            recovered.len()
        );
    }
    dispatcher.enqueue(recovered);
    let engine = Arc::new(Engine::new(
        Arc::clone(&store),
        catalog,
        dispatcher,
        Arc::new(ProtocolRender),
    ));
    let state = Arc::new(AppState {
        store,
        engine,
        auth: AuthSettings {
            timestamp_window: config.timestamp_window,
            public_names: config.public_names.clone(),
        },
    });

    let mut endpoints = Vec::new();
    if let Some(listener) = &listeners.http {
        endpoints.push(format!("http://{}", listener.local_addr()?));
    }
    if let Some((listener, _)) = &listeners.https {
        endpoints.push(format!("https://{}", listener.local_addr()?));
    }
    for endpoint in &endpoints {
        println!("Listening on {endpoint}{}", qtask_protocol::API_PATH);
    }
    println!("Ready. Try: qtask call DescribeInstances --data-dir {data_dir}");

    let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
    let served = qtask_server::serve(
        qtask_server::app(state),
        listeners,
        shutdown.clone(),
        Duration::from_secs(5),
    )
    .await;
    shutdown.cancel();
    signals.abort();
    pool.join().await;
    println!("Stopped.");
    served.context("the server failed")
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("can listen for SIGTERM");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    println!("Stopping: no new requests; running tasks get their grace period…");
    shutdown.cancel();
}

/// On the first start (no keys at all), creates the default account and a key pair,
/// shows them once and writes them to DATA_DIR/credentials.
async fn bootstrap_credentials(store: &dyn Store, data_dir: &Path) -> anyhow::Result<()> {
    if !store.keys().await?.is_empty() {
        let path = credentials::path(data_dir);
        if path.exists() {
            println!("Credentials: {}", path.display());
        }
        return Ok(());
    }
    let (secret_id, secret_key) = keys::create(store, keys::DEFAULT_ACCOUNT).await?;
    let path = credentials::write(data_dir, &secret_id, &secret_key)?;
    println!(
        "First start: created account {:?} with an API key (shown once):",
        keys::DEFAULT_ACCOUNT
    );
    println!("  SecretId:  {secret_id}");
    println!("  SecretKey: {secret_key}");
    println!("Saved to {} (mode 0600).", path.display());
    Ok(())
}

fn bind(config: &ServeConfig) -> anyhow::Result<Listeners> {
    let http = config
        .listen
        .map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))
        })
        .transpose()?;
    let https = match config.tls_listen {
        None => None,
        Some(addr) => {
            let (cert, key) = match &config.tls_files {
                Some((cert, key)) => (cert.clone(), key.clone()),
                None => {
                    let paths = qtask_server::tls::ensure_generated(
                        &config.data_dir.join("tls"),
                        &config.tls_names,
                    )?;
                    if let Some(ca) = &paths.ca {
                        println!(
                            "TLS: clients should trust {} (e.g. SSL_CERT_FILE={})",
                            ca.display(),
                            ca.display()
                        );
                    }
                    (paths.cert, paths.key)
                }
            };
            let tls = qtask_server::tls::server_config(&cert, &key)?;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            Some((listener, tls))
        }
    };
    if http.is_none() && https.is_none() {
        anyhow::bail!("both listen and tls_listen are off: nothing would answer");
    }
    Ok(Listeners { http, https })
}
