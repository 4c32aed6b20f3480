//! The load loop: `concurrency` callers, each with its own keep-alive connection, send
//! signed calls (a fresh nonce each) as fast as answers come (closed loop) or at a fixed
//! total rate (open loop). In the open loop a call's latency counts from the time it was
//! scheduled, not sent, so a slow server cannot hide its stalls by delaying the
//! generator (coordinated omission).

use super::http::Connection;
use crate::client::Client;
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The fields of an answer the bench looks at.
#[derive(Debug, Deserialize)]
pub struct Answer {
    pub code: i64,
    #[serde(default)]
    pub message: String,
    #[serde(rename = "requestId", default)]
    pub request_id: serde_json::Value,
    /// Only the status: the rest of `data` is skipped unread, not built as a tree (which
    /// took a fifth of the generator's CPU during `describe`, CPU the server then lacked).
    #[serde(default)]
    pub data: Option<AnswerData>,
}

/// The part of an answer's `data` the bench looks at.
#[derive(Debug, Deserialize)]
pub struct AnswerData {
    /// A task or chain's status (`DescribeTaskResult`): 2 while it runs.
    pub status: Option<i64>,
}

impl Answer {
    pub fn request_id(&self) -> Option<String> {
        match &self.request_id {
            serde_json::Value::String(id) if !id.is_empty() => Some(id.clone()),
            serde_json::Value::Number(id) => Some(id.to_string()),
            _ => None,
        }
    }
}

/// One call a caller makes next.
pub struct Call {
    pub action: &'static str,
    pub params: Vec<(String, String)>,
}

/// What a caller does, call after call.
pub trait Job: Send + 'static {
    /// Untimed work before the next call (a chain waits for its previous one here).
    fn prepare<'a>(
        &'a mut self,
        _connection: &'a mut Connection,
        _client: &'a Client,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'a {
        async { Ok(()) }
    }
    fn next_call(&mut self) -> Call;
    /// Sees the answer of the call it made.
    fn answered(&mut self, _answer: &Answer) {}
}

#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub duration: Duration,
    /// Calls per second in total; `None` = closed loop.
    pub rate: Option<f64>,
}

/// What the callers counted.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    /// By answer code, or `transport` for a call that got no answer.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error.
    pub error_samples: BTreeMap<String, String>,
    pub elapsed: Duration,
    /// This process's CPU seconds during the load (the generator's own cost).
    pub client_cpu_s: f64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: latency_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            elapsed: Duration::ZERO,
            client_cpu_s: 0.0,
        }
    }

    fn error(&mut self, key: String, message: String) {
        *self.errors.entry(key.clone()).or_default() += 1;
        self.error_samples.entry(key).or_insert(message);
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of the same bounds");
        self.ok += other.ok;
        for (key, count) in other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        for (key, message) in other.error_samples {
            self.error_samples.entry(key).or_insert(message);
        }
    }

    pub fn calls(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// Runs one caller per job for `pace.duration`; returns what they counted together.
pub async fn run<J: Job>(
    jobs: Vec<(J, Connection)>,
    client: Arc<Client>,
    pace: Pace,
) -> anyhow::Result<Tally> {
    let start = Instant::now();
    let end = start + pace.duration;
    let next = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = jobs
        .into_iter()
        .map(|(job, connection)| {
            let client = Arc::clone(&client);
            let next = Arc::clone(&next);
            tokio::spawn(caller(job, connection, client, pace, start, end, next))
        })
        .collect();
    let mut tally = Tally::new();
    for caller in callers {
        tally.merge(caller.await??);
    }
    tally.elapsed = start.elapsed();
    Ok(tally)
}

async fn caller<J: Job>(
    mut job: J,
    mut connection: Connection,
    client: Arc<Client>,
    pace: Pace,
    start: Instant,
    end: Instant,
    next: Arc<AtomicU64>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    loop {
        let began = match pace.rate {
            None => {
                job.prepare(&mut connection, &client).await?;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
            Some(rate) => {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let scheduled = start + Duration::from_secs_f64(index as f64 / rate);
                if scheduled >= end {
                    break;
                }
                tokio::time::sleep_until(scheduled).await;
                scheduled
            }
        };
        let call = job.next_call();
        let form = client.signed_form(call.action, call.params)?;
        let sent = connection.call(form).await;
        let took = began.elapsed();
        tally
            .latency_us
            .saturating_record(took.as_micros().max(1) as u64);
        match sent {
            Err(error) => {
                tally.error("transport".into(), format!("{error:#}"));
                // Do not spin on a dead server.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(body) => match serde_json::from_slice::<Answer>(&body) {
                Ok(answer) => {
                    if answer.code == 0 {
                        tally.ok += 1;
                    } else {
                        tally.error(answer.code.to_string(), answer.message.clone());
                    }
                    job.answered(&answer);
                }
                Err(error) => tally.error(
                    "not-json".into(),
                    format!("{error}: {}", String::from_utf8_lossy(&body)),
                ),
            },
        }
    }
    Ok(tally)
}
