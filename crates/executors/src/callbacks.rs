//! Completion callbacks: a mutating call that carries `callbackUrl` gets its result
//! POSTed there when the task — or, for a chain, every task of it — is final. The body
//! is `{"event": "taskFinished" | "chainFinished", "data": <DescribeTaskResult's
//! data>}`, signed like a webhook (see the crate docs) with the SecretKey of the key
//! that made the call, named in `X-Qtask-Secret-Id`. Delivery is retried with backoff
//! on 429, 5xx and network errors, up to [`ATTEMPTS`] times.
//!
//! Deliveries live in memory: a callback still pending when the process stops is not
//! sent after the restart (poll `DescribeTaskResult`, or use the event stream, where a
//! result must not be missed).

use crate::http::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use qtask_core::{AccountId, RequestId};
use qtask_engine::catalog::{CALLBACK_SECRET_ID, CALLBACK_URL};
use qtask_engine::events::{EventBus, TaskEvent};
use qtask_engine::views;
use qtask_store::{Store, TaskRecord};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Deliveries tried per callback.
pub const ATTEMPTS: u32 = 6;
/// The header naming the SecretId whose key signed the callback.
pub const SECRET_ID_HEADER: &str = "X-Qtask-Secret-Id";

/// Waits between delivery attempts: 1 s, doubling.
#[derive(Debug, Clone, Copy)]
pub struct CallbackSettings {
    pub first_retry: Duration,
    pub request_timeout: Duration,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Starts delivering callbacks for the final events on `events`; stops with `stop`.
pub fn start(
    store: Arc<dyn Store>,
    events: &EventBus,
    settings: CallbackSettings,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut receiver = events.subscribe();
    let client = reqwest::Client::builder()
        .timeout(settings.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client with default TLS roots");
    // Chains already called back (several of their tasks can end at once).
    let sent_chains: Arc<Mutex<HashSet<RequestId>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                received = receiver.recv() => match received {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "callbacks fell behind the event bus; some may not be sent");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            // The node that ran the task calls back: once per cluster.
            if event.remote || !event.kind.is_final() || !event.calls_back {
                continue;
            }
            let store = Arc::clone(&store);
            let client = client.clone();
            let sent_chains = Arc::clone(&sent_chains);
            tokio::spawn(async move {
                if let Err(error) =
                    deliver(store.as_ref(), &client, &event, &sent_chains, settings).await
                {
                    tracing::warn!(task = %event.task, %error, "callback not delivered");
                }
            });
        }
    })
}

/// The callback URL and signing SecretId a task was submitted with.
fn callback_of(task: &TaskRecord) -> Option<(String, String)> {
    let url = task.params.get(CALLBACK_URL)?.as_str()?.to_owned();
    let secret_id = task.params.get(CALLBACK_SECRET_ID)?.as_str()?.to_owned();
    Some((url, secret_id))
}

async fn deliver(
    store: &dyn Store,
    client: &reqwest::Client,
    event: &TaskEvent,
    sent_chains: &Mutex<HashSet<RequestId>>,
    settings: CallbackSettings,
) -> Result<(), String> {
    let account: AccountId = event.account;
    let task = store
        .task(account, event.task)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the task is gone")?;
    let Some((url, secret_id)) = callback_of(&task) else {
        return Ok(());
    };
    let body = match event.chain {
        None => json!({"event": "taskFinished", "data": views::task(&task)}),
        Some(chain) => {
            let group = store
                .group(account, chain)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the chain is gone")?;
            let finished = group.tasks.iter().all(|t| t.state.is_final());
            let first = {
                let mut sent = sent_chains.lock().unwrap_or_else(|e| e.into_inner());
                finished && sent.insert(chain)
            };
            if !first {
                return Ok(());
            }
            json!({"event": "chainFinished", "data": views::group(&group)})
        }
    };
    let key = store
        .api_key(
            &secret_id
                .parse()
                .map_err(|_| "a stored SecretId is malformed")?,
        )
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the key that made the call no longer exists")?;
    post(client, &url, &secret_id, &key.secret_key, &body, settings).await
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret_id: &str,
    secret_key: &str,
    body: &Value,
    settings: CallbackSettings,
) -> Result<(), String> {
    let body = body.to_string();
    let mut wait = settings.first_retry;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let sent = client
            .post(url)
            .header("Content-Type", "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(
                SIGNATURE_HEADER,
                sign(secret_key, &timestamp, body.as_bytes()),
            )
            .header(SECRET_ID_HEADER, secret_id)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer) => {
                let status = answer.status();
                last = format!("the receiver answered {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(last);
                }
            }
            Err(error) => last = format!("cannot reach the receiver: {error}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(format!("{last} (after {ATTEMPTS} attempts)"))
}
