//! `qtask serve`: wires the store, the engine, the workers and the listeners together,
//! and stops them in order on SIGINT or SIGTERM.

use crate::config::ServeConfig;
use crate::database::open_store;
use crate::{credentials, keys};
use anyhow::Context;
use qtask_engine::catalog::file::ExecutorSpec;
use qtask_engine::catalog::Catalog;
use qtask_engine::dispatch::{host_name, Worker, WorkerPool, WorkerSettings};
use qtask_engine::events::EventBus;
use qtask_engine::executor::{Executor, Router, SimExecutor, SimSettings};
use qtask_engine::{maintenance, Engine};
use qtask_executors::{ExecExecutor, ExecSettings, HttpExecutor, HttpSettings};
use qtask_server::metrics::{self, Metrics};
use qtask_server::render::ProtocolRender;
use qtask_server::{AppState, AuthSettings, Listeners};
use qtask_store::Store;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::database::DATABASE_FILE;

pub fn now_millis() -> i64 {
    qtask_engine::time::now_millis()
}

pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    crate::logging::set_format(config.log_format);
    credentials::create_private_dir(&config.data_dir)?;
    // Two processes on one data directory would each take the other's running tasks for
    // abandoned: with SQLite all of them, with PostgreSQL the node's (the directory
    // names the node).
    let _lock = lock_data_dir(&config.data_dir)?;
    let store = open_store(
        &config.data_dir,
        config.master_key_file.as_deref(),
        &config.database,
    )
    .await?;
    println!(
        "qtask {} — {}",
        env!("CARGO_PKG_VERSION"),
        config.database.describe(&config.data_dir)
    );
    bootstrap_credentials(store.as_ref(), &config.data_dir)
        .await
        .context(
            "cannot read the API keys (nodes that share a database need the same master key: \
             --master-key-file or QTASK_MASTER_KEY)",
        )?;

    let catalog = Arc::new(build_catalog(&config)?);
    let listeners = bind(&config)?;
    let executor = executors(&catalog, &config)?;
    // Stable across restarts, and unique while the data directory is locked: a node
    // that restarts takes its own running tasks back at once (Store::recover).
    let node = format!(
        "{}:{}",
        host_name(),
        config.data_dir.canonicalize()?.display()
    );
    let settings = WorkerSettings {
        node,
        lease: config.lease,
    };
    let events = EventBus::default();
    // Subscribed before the workers start, so the metrics see every attempt.
    let metrics = config.metrics.then(|| {
        let metrics = Arc::new(Metrics::new(&catalog, Arc::clone(&store)));
        metrics::follow_task_events(Arc::clone(&metrics), events.subscribe());
        metrics
    });
    let worker = Worker::new(Arc::clone(&store), executor, Arc::clone(&catalog), settings)
        .with_events(events.clone());
    // Cancelled at SIGINT/SIGTERM: the API answers 6200 and workers take no new task.
    let draining = CancellationToken::new();
    let (dispatcher, pool, recovered) = WorkerPool::recover_and_start(
        worker,
        config.workers,
        draining.clone(),
        config.shutdown_grace,
    )
    .await
    .context("cannot recover unfinished tasks")?;
    if recovered > 0 {
        println!("Resuming {recovered} unfinished task(s) from the last run");
    }
    if let Some(metrics) = &metrics {
        let metrics = Arc::clone(metrics);
        dispatcher
            .start_delays()
            .observe_with(move |delay| metrics.observe_start_delay(delay));
    }
    let maintenance_stop = CancellationToken::new();
    let callbacks = qtask_executors::callbacks::start(
        Arc::clone(&store),
        &events,
        Default::default(),
        maintenance_stop.clone(),
    );
    // On a shared database: every node's event stream shows every node's tasks.
    let _relay = qtask_engine::relay::start(Arc::clone(&store), &events, maintenance_stop.clone());
    let maintenance = maintenance::start(
        Arc::clone(&store),
        Arc::clone(&catalog),
        dispatcher.clone(),
        config.lease,
        config.retention.clone(),
        maintenance_stop.clone(),
    );
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store),
            catalog,
            dispatcher,
            Arc::new(ProtocolRender),
        )
        .with_events(events)
        .with_quotas(config.rate_limit, config.account_limits),
    );
    let state = Arc::new(AppState {
        store,
        keys: Default::default(),
        engine,
        auth: AuthSettings {
            timestamp_window: config.timestamp_window,
            public_names: config.public_names.clone(),
        },
        draining: draining.clone(),
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
    if let Some(endpoint) = endpoints.first() {
        println!("Console: {endpoint}{}", qtask_server::console::CONSOLE_PATH);
    }
    println!(
        "Ready. Try: qtask call DescribeInstances --data-dir {}",
        config.data_dir.display()
    );

    let signals = tokio::spawn(stop_on_signal(draining.clone(), config.shutdown_grace));
    // Shutdown order: drain (the API answers 6200), let the pool finish or release its
    // tasks, stop maintenance, and only then close the listeners.
    let http_stop = CancellationToken::new();
    let stopper = tokio::spawn({
        let draining = draining.clone();
        let http_stop = http_stop.clone();
        async move {
            draining.cancelled().await;
            pool.join().await;
            maintenance_stop.cancel();
            let _ = maintenance.await;
            let _ = callbacks.await;
            http_stop.cancel();
        }
    });
    let mut app = qtask_server::app(state);
    if let Some(metrics) = metrics {
        app = metrics::instrument(app, metrics);
    }
    let served = qtask_server::serve(
        app,
        listeners,
        config.http_limits,
        http_stop,
        Duration::from_secs(1),
    )
    .await;
    draining.cancel();
    signals.abort();
    let _ = stopper.await;
    println!("Stopped.");
    served.context("the server failed")
}

/// The built-in catalog, then the `--catalog` files, then the configuration file's
/// action policies.
fn build_catalog(config: &ServeConfig) -> anyhow::Result<Catalog> {
    let (mut catalog, _) = crate::catalog::load(&config.catalogs)?;
    for action in config.sim_failure_rates.keys() {
        if catalog.operation(action).is_none() {
            anyhow::bail!("sim_failure_rates names {action:?}, which is not a mutating action");
        }
    }
    for (action, settings) in &config.actions {
        let Some(operation) = catalog.operation(action) else {
            anyhow::bail!("[actions.{action}]: {action} is not an action that creates tasks");
        };
        let policy = settings
            .apply(operation.policy.clone())
            .map_err(|e| anyhow::anyhow!("[actions.{action}]: {e}"))?;
        catalog
            .set_policy(action, policy)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(catalog)
}

/// One executor per action, as the catalog says: the simulator (shared), a program, or
/// a webhook.
fn executors(catalog: &Catalog, config: &ServeConfig) -> anyhow::Result<Arc<dyn Executor>> {
    let mut sim = SimExecutor::new(
        catalog,
        SimSettings {
            speed: config.sim_speed,
            failure_rates: config.sim_failure_rates.clone(),
        },
    );
    if let Some(path) = &config.sim_journal {
        sim = sim
            .with_journal(path)
            .with_context(|| format!("cannot open the simulator journal {}", path.display()))?;
    }
    let sim: Arc<dyn Executor> = Arc::new(sim);
    let mut routes: HashMap<String, Arc<dyn Executor>> = HashMap::new();
    for action in catalog.action_names() {
        let Some(operation) = catalog.operation(action) else {
            continue;
        };
        let executor: Arc<dyn Executor> = match &operation.executor {
            ExecutorSpec::Sim { .. } => Arc::clone(&sim),
            ExecutorSpec::Exec {
                command,
                env,
                working_dir,
            } => Arc::new(ExecExecutor::new(ExecSettings {
                command: command.clone(),
                env: env.clone(),
                working_dir: working_dir.clone(),
                ..ExecSettings::default()
            })),
            ExecutorSpec::Http {
                url,
                secret,
                secret_env,
            } => {
                let secret = match secret_env {
                    Some(name) => Some(std::env::var(name).with_context(|| {
                        format!("{action}: the webhook secret's variable {name} is not set")
                    })?),
                    None => secret.clone(),
                };
                let settings = HttpSettings {
                    url: url.clone(),
                    secret,
                    timeout: None,
                };
                Arc::new(HttpExecutor::new(settings).with_context(|| action.to_owned())?)
            }
        };
        routes.insert(action.to_owned(), executor);
    }
    Ok(Arc::new(Router::new(routes)))
}

/// Holds DATA_DIR/qtask.lock for as long as the server runs: two servers on one
/// SQLite database would each think the other's running tasks were abandoned.
pub(crate) fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("qtask.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another qtask serve is using {} (it holds {}); stop it first or use another --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

async fn stop_on_signal(draining: CancellationToken, grace: Duration) {
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
    println!(
        "Stopping: new calls answer 6200; running tasks get {}s to finish, then go back to the queue…",
        grace.as_secs()
    );
    draining.cancel();
}

/// On the first start (no keys at all), creates the default account and a key pair,
/// shows them once and writes them to DATA_DIR/credentials.
pub(crate) async fn bootstrap_credentials(
    store: &dyn Store,
    data_dir: &Path,
) -> anyhow::Result<()> {
    if !store.keys().await?.is_empty() {
        let path = credentials::path(data_dir);
        if path.exists() {
            println!("Credentials: {}", path.display());
        }
        return Ok(());
    }
    let (secret_id, secret_key) = match keys::create(store, keys::DEFAULT_ACCOUNT).await {
        Ok(created) => created,
        // Nodes that start together on an empty shared database: one of them wins.
        Err(_) if !store.keys().await?.is_empty() => {
            println!("Credentials: created by another node sharing the database");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
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
