//! The start delay: how long a freshly committed task waits before its executor starts
//! (submission commit → dispatch hand-off → claim → executor). The engine stamps each
//! runnable task when its submission has committed; the worker that claims it reports
//! the elapsed time to whoever observes (the metrics). Nothing is stamped while nobody
//! observes, so it costs nothing with metrics off.

use qtask_core::RequestId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Stamps kept at most: tasks that never reach a worker here (workers off, taken by
/// another node, canceled first) must not grow memory without bound.
const MAX_STAMPED: usize = 100_000;

type Observer = Box<dyn Fn(Duration) + Send + Sync>;

#[derive(Default)]
pub struct StartDelays {
    committed: Mutex<HashMap<RequestId, Instant>>,
    observer: OnceLock<Observer>,
}

impl StartDelays {
    /// Reports every start delay to `observer` from now on (the first observer stays).
    pub fn observe_with(&self, observer: impl Fn(Duration) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    /// `tasks` were committed at `at` and handed to the workers.
    pub fn committed(&self, tasks: impl IntoIterator<Item = RequestId>, at: Instant) {
        if self.observer.get().is_none() {
            return;
        }
        let mut committed = self.lock();
        for task in tasks {
            if committed.len() >= MAX_STAMPED {
                break;
            }
            committed.insert(task, at);
        }
    }

    /// Takes `task`'s stamp: called when a worker picks it up, claimed or not.
    pub fn take(&self, task: RequestId) -> Option<Instant> {
        self.observer.get()?;
        self.lock().remove(&task)
    }

    /// The executor of a task stamped at `committed_at` starts now.
    pub fn started(&self, committed_at: Instant) {
        if let Some(observer) = self.observer.get() {
            observer(committed_at.elapsed());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Instant>> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stamped_task_reports_its_delay_once_and_nothing_is_kept_unobserved() {
        let delays = StartDelays::default();
        let task = RequestId::new(7).unwrap();
        delays.committed([task], Instant::now());
        assert_eq!(delays.take(task), None, "no observer: nothing stamped");

        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        delays.observe_with(move |delay| sink.lock().unwrap().push(delay));
        let at = Instant::now() - Duration::from_millis(5);
        delays.committed([task], at);
        let stamp = delays.take(task).expect("stamped");
        delays.started(stamp);
        assert_eq!(delays.take(task), None, "taken once");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0] >= Duration::from_millis(5), "{:?}", seen[0]);
    }
}
