//! Following task events as they happen (`/v2/events`): a [`Watch`] filters the event
//! bus to one account, and optionally one task or chain (then it ends once every task
//! of it is final) or one action.

use crate::args::{ArgError, Args};
use crate::catalog::parse_request_id;
use crate::events::{EventBus, TaskEvent};
use crate::{Call, EngineError};
use qtask_core::{AccountId, RequestId};
use qtask_store::Store;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

/// The action a signed request to the event stream names.
pub const WATCH_ACTION: &str = "WatchTaskEvents";

/// How often a watch on a chain reads the store, for endings no event reports.
const RECHECK: Duration = Duration::from_secs(2);

pub enum WatchItem {
    Event(Arc<TaskEvent>),
    /// Every task the watch followed is final.
    End(RequestId),
    /// The watcher fell behind and missed this many events.
    Lagged(u64),
}

pub struct Watch {
    store: Arc<dyn Store>,
    receiver: broadcast::Receiver<Arc<TaskEvent>>,
    account: AccountId,
    action: Option<String>,
    /// The task or chain followed, with its tasks not yet final.
    target: Option<(RequestId, HashSet<RequestId>)>,
    ended: bool,
}

impl Watch {
    /// Opens a watch for a verified `WatchTaskEvents` call (its nonce already
    /// recorded): optional `requestId` (a task or chain) and `action`.
    pub async fn open(
        store: Arc<dyn Store>,
        events: &EventBus,
        call: &Call,
    ) -> Result<Self, EngineError> {
        let args = Args(&call.params);
        for name in call.params.keys() {
            if name != "requestId" && name != "action" {
                return Err(ArgError::new(
                    name,
                    format!("is not a parameter of {WATCH_ACTION}; it takes requestId, action"),
                )
                .into());
            }
        }
        let action = args.bounded_text("action", 128)?.map(str::to_owned);
        // Subscribed before reading, so nothing between the read and the stream is lost.
        let receiver = events.subscribe();
        let target = match args.text("requestId")? {
            None => None,
            Some(_) => {
                let id = parse_request_id(args, "requestId")?;
                let pending = unfinished(store.as_ref(), call.account, id)
                    .await?
                    .ok_or_else(|| EngineError::NotFound(format!("task {id} does not exist")))?;
                Some((id, pending))
            }
        };
        Ok(Self {
            store,
            receiver,
            account: call.account,
            action,
            target,
            ended: false,
        })
    }

    /// The next event for the watcher; `None` when the watch is over.
    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            if self.ended {
                return None;
            }
            if let Some((id, pending)) = &self.target {
                if pending.is_empty() {
                    self.ended = true;
                    return Some(WatchItem::End(*id));
                }
            }
            let received = match &self.target {
                Some(_) => match tokio::time::timeout(RECHECK, self.receiver.recv()).await {
                    Ok(received) => received,
                    Err(_) => {
                        self.recheck().await;
                        continue;
                    }
                },
                None => self.receiver.recv().await,
            };
            match received {
                Ok(event) if self.wants(&event) => {
                    if let Some((_, pending)) = &mut self.target {
                        if event.kind.is_final() {
                            pending.remove(&event.task);
                        }
                    }
                    return Some(WatchItem::Event(event));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => return Some(WatchItem::Lagged(missed)),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn wants(&self, event: &TaskEvent) -> bool {
        event.account == self.account
            && self.action.as_deref().is_none_or(|a| a == event.action)
            && self
                .target
                .as_ref()
                .is_none_or(|(id, _)| event.task == *id || event.chain == Some(*id))
    }

    /// Drops from the pending set the tasks the store says are final.
    async fn recheck(&mut self) {
        let Some((id, pending)) = &mut self.target else {
            return;
        };
        if let Ok(Some(still)) = unfinished(self.store.as_ref(), self.account, *id).await {
            pending.retain(|task| still.contains(task));
        }
    }
}

/// The unfinished tasks of a task or chain; `None` when the account has neither.
async fn unfinished(
    store: &dyn Store,
    account: AccountId,
    id: RequestId,
) -> Result<Option<HashSet<RequestId>>, EngineError> {
    let Some(named) = store.named(account, id).await? else {
        return Ok(None);
    };
    Ok(Some(
        named
            .tasks()
            .iter()
            .filter(|t| t.state.is_unfinished())
            .map(|t| t.id)
            .collect(),
    ))
}
