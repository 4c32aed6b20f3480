//! The load: several client loops that send a random mix of calls to whichever server
//! is up, and remember every requestId the server acknowledged (code 0).

use qtask::client::Client;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Creation stops at this many known instances, so the final checks stay short.
const MAX_INSTANCES: usize = 48;
/// CancelTask picks among this many of the latest acknowledged requestIds.
const RECENT: usize = 20;
/// An instance name that makes every StopInstances on it fail for good.
const FAILING_STOP_NAME: &str = "crash qtask-fail:StopInstances";

/// Counters of what the loops saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub calls: AtomicU64,
    /// Mutating calls answered code 0 (or 5400: some resources accepted).
    pub acknowledged: AtomicU64,
    /// No answer (connection refused or dropped) or 6200 (draining).
    pub unacknowledged: AtomicU64,
    /// Other non-zero codes: busy or wrong state (5100), and the like.
    pub refused: AtomicU64,
    pub cancels: AtomicU64,
}

impl Tally {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the loops share: the current server's client, what they learned, and the stop.
pub struct Load {
    /// One client per server the load is spread over.
    clients: RwLock<Vec<Arc<Client>>>,
    instances: Mutex<Vec<String>>,
    acknowledged: Mutex<Vec<String>>,
    pub tally: Tally,
    stop: CancellationToken,
}

/// What a call is for the bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Creates tasks: its code-0 requestIds are acknowledged.
    Mutating,
    /// Reads, or cancels: creates no task.
    Query,
}

struct Call {
    action: &'static str,
    params: Vec<(String, String)>,
    kind: Kind,
}

impl Load {
    pub fn new(client: Client) -> Arc<Self> {
        Self::spread(vec![client])
    }

    /// A load spread over several servers (nodes of one cluster): each call goes to one
    /// of them at random.
    pub fn spread(clients: Vec<Client>) -> Arc<Self> {
        Arc::new(Self {
            clients: RwLock::new(clients.into_iter().map(Arc::new).collect()),
            instances: Mutex::new(Vec::new()),
            acknowledged: Mutex::new(Vec::new()),
            tally: Tally::default(),
            stop: CancellationToken::new(),
        })
    }

    /// Points the loops at a restarted server (its ports are new).
    pub fn switch_to(&self, client: Client) {
        self.spread_over(vec![client]);
    }

    /// Points the loops at these servers from now on.
    pub fn spread_over(&self, clients: Vec<Client>) {
        *self.clients.write().unwrap() = clients.into_iter().map(Arc::new).collect();
    }

    fn client(&self, rng: &mut StdRng) -> Arc<Client> {
        let clients = self.clients.read().unwrap();
        Arc::clone(&clients[rng.gen_range(0..clients.len())])
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Every requestId answered with code 0, in answer order.
    pub fn acknowledged(&self) -> Vec<String> {
        self.acknowledged.lock().unwrap().clone()
    }

    /// Runs one client loop until [`Load::stop`].
    pub async fn run(self: Arc<Self>, mut rng: StdRng) {
        while !self.stop.is_cancelled() {
            let call = self.pick(&mut rng);
            Tally::bump(&self.tally.calls);
            let answer = self
                .client(&mut rng)
                .call(call.action, call.params.iter().cloned())
                .await;
            let unacknowledged = match answer {
                Err(_) => true,
                Ok(answer) => self.record(&call, &answer),
            };
            let pause = if unacknowledged {
                Tally::bump(&self.tally.unacknowledged);
                // The server is down or restarting: give it a moment.
                rng.gen_range(20..60)
            } else {
                rng.gen_range(2..15)
            };
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
            }
        }
    }

    /// Books an answer; true when it is unacknowledged (6200).
    fn record(&self, call: &Call, answer: &Value) -> bool {
        let code = answer["code"].as_i64();
        if code == Some(6200) {
            return true;
        }
        if call.kind == Kind::Query {
            if code != Some(0) {
                Tally::bump(&self.tally.refused);
            }
            return false;
        }
        let ids = acknowledged_ids(answer);
        if ids.is_empty() {
            Tally::bump(&self.tally.refused);
            return false;
        }
        Tally::bump(&self.tally.acknowledged);
        if let Some(created) = answer["instanceIds"].as_array() {
            self.instances
                .lock()
                .unwrap()
                .extend(created.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        self.acknowledged.lock().unwrap().extend(ids);
        false
    }

    /// One of the latest acknowledged requestIds, if any.
    fn recent(&self, rng: &mut StdRng) -> Option<String> {
        let acknowledged = self.acknowledged.lock().unwrap();
        let from = acknowledged.len().saturating_sub(RECENT);
        let pick = rng.gen_range(from..acknowledged.len().max(from + 1));
        acknowledged.get(pick).cloned()
    }

    /// A random call: launches until there are a few instances, then mostly chains
    /// and renames over random instances, with cancels and result polls.
    fn pick(&self, rng: &mut StdRng) -> Call {
        let instances = self.instances.lock().unwrap().clone();
        let roll: f64 = rng.gen();
        if instances.len() < 6 || (instances.len() < MAX_INSTANCES && roll < 0.12) {
            let name = if rng.gen_bool(0.15) {
                FAILING_STOP_NAME
            } else {
                "crash"
            };
            return mutating(
                "RunInstances",
                vec![
                    ("goodsNum".into(), rng.gen_range(1..=3).to_string()),
                    ("instanceName".into(), name.into()),
                ],
            );
        }
        let roll: f64 = rng.gen();
        if roll < 0.05 {
            if let Some(id) = self.recent(rng) {
                Tally::bump(&self.tally.cancels);
                return query("CancelTask", vec![("requestId".into(), id)]);
            }
        } else if roll < 0.13 {
            if let Some(id) = self.recent(rng) {
                return query("DescribeTaskResult", vec![("requestId".into(), id)]);
            }
        } else if roll < 0.33 {
            let instance = &instances[rng.gen_range(0..instances.len())];
            return mutating(
                "ModifyInstanceAttributes",
                vec![
                    ("instanceId".into(), instance.clone()),
                    (
                        "instanceName".into(),
                        format!("crash renamed {}", rng.gen_range(0..1000)),
                    ),
                ],
            );
        }
        let action = ["StartInstances", "StopInstances", "RestartInstances"][rng.gen_range(0..3)];
        let count = rng.gen_range(1..=3.min(instances.len()));
        let chosen = rand::seq::index::sample(rng, instances.len(), count);
        mutating(
            action,
            chosen
                .iter()
                .enumerate()
                .map(|(n, i)| (format!("instanceIds.{n}"), instances[i].clone()))
                .collect(),
        )
    }
}

fn mutating(action: &'static str, params: Vec<(String, String)>) -> Call {
    Call {
        action,
        params,
        kind: Kind::Mutating,
    }
}

fn query(action: &'static str, params: Vec<(String, String)>) -> Call {
    Call {
        action,
        params,
        kind: Kind::Query,
    }
}

/// The requestIds a mutating call's answer acknowledges: a general call's `requestId`
/// when its code is 0; for a chain answered 0 or 5400 (some resources accepted), the
/// chain's own `requestId` and every `detail` entry with code 0.
pub fn acknowledged_ids(answer: &Value) -> Vec<String> {
    let code = answer["code"].as_i64();
    let own = answer["requestId"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let Some(detail) = answer["detail"].as_object() else {
        return if code == Some(0) {
            own.into_iter().collect()
        } else {
            Vec::new()
        };
    };
    if !matches!(code, Some(0 | 5400)) {
        return Vec::new();
    }
    own.into_iter()
        .chain(
            detail
                .values()
                .filter(|entry| entry["code"] == 0)
                .filter_map(|entry| entry["requestId"].as_str())
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::acknowledged_ids;
    use serde_json::json;

    #[test]
    fn only_accepted_work_is_acknowledged() {
        assert_eq!(
            acknowledged_ids(&json!({"code": 0, "message": "", "requestId": "7"})),
            ["7"]
        );
        assert!(acknowledged_ids(&json!({"code": 5100, "message": "busy"})).is_empty());
        let partial = json!({"code": 5400, "message": "", "requestId": "10", "detail": {
            "ins-a": {"code": 0, "message": "", "requestId": "11"},
            "ins-b": {"code": 5100, "message": "busy", "requestId": ""},
        }});
        assert_eq!(acknowledged_ids(&partial), ["10", "11"]);
        let refused = json!({"code": 5100, "message": "", "detail": {
            "ins-b": {"code": 5100, "message": "busy", "requestId": ""},
        }});
        assert!(acknowledged_ids(&refused).is_empty());
        assert!(acknowledged_ids(&json!({"code": 6200, "message": "draining"})).is_empty());
    }
}
