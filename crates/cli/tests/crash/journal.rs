//! The simulator's journal (`--sim-journal`): one JSON line per attempt start and end,
//! appended by each server process in turn. This module pairs the lines into attempts
//! and finds tasks whose attempts overlapped in time — a task run twice at once.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Deserialize)]
struct Line {
    event: String,
    task: u64,
    fence: u64,
    pid: u32,
    at: i64,
    #[serde(default)]
    outcome: Option<String>,
}

/// One claim of a task (its fence) run by one process.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub task: u64,
    pub fence: u64,
    pub pid: u32,
    pub start: i64,
    /// When the executor finished or was dropped, and the outcome written then; `None`
    /// when no end was written (its process died while it ran).
    pub end: Option<(i64, String)>,
}

/// A server process the test SIGKILLed, and when: `at` is taken after the process was
/// reaped, so nothing of it ran later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kill {
    pub pid: u32,
    pub at: i64,
}

#[derive(Debug, Default)]
pub struct Journal {
    pub attempts: Vec<Attempt>,
    /// Lines that cannot be read or paired (an end without a start, a second start of
    /// one claim): any of them means the journal cannot be trusted.
    pub defects: Vec<String>,
}

impl Journal {
    pub fn parse(text: &str) -> Self {
        let mut journal = Journal::default();
        // (task, fence) → index of its attempt that has no end yet.
        let mut open: HashMap<(u64, u64), usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let line: Line = match serde_json::from_str(raw) {
                Ok(line) => line,
                Err(error) => {
                    journal
                        .defects
                        .push(format!("line {number} is not an entry ({error}): {raw}"));
                    continue;
                }
            };
            let claim = (line.task, line.fence);
            match line.event.as_str() {
                "start" => {
                    if open.insert(claim, journal.attempts.len()).is_some() {
                        journal.defects.push(format!(
                            "line {number}: task {} fence {} starts again before it ended",
                            line.task, line.fence
                        ));
                    }
                    journal.attempts.push(Attempt {
                        task: line.task,
                        fence: line.fence,
                        pid: line.pid,
                        start: line.at,
                        end: None,
                    });
                }
                "end" => match open.remove(&claim) {
                    Some(i) if journal.attempts[i].pid == line.pid => {
                        journal.attempts[i].end = Some((line.at, line.outcome.unwrap_or_default()));
                    }
                    _ => journal.defects.push(format!(
                        "line {number} ends an attempt that never started: {raw}"
                    )),
                },
                other => journal
                    .defects
                    .push(format!("line {number} has an unknown event {other:?}")),
            }
        }
        journal
    }

    /// Attempts that ended with `outcome` (ok, retryable, fatal, canceled, aborted).
    pub fn ended_with(&self, outcome: &str) -> usize {
        self.attempts
            .iter()
            .filter(|a| matches!(&a.end, Some((_, o)) if o == outcome))
            .count()
    }

    /// Distinct tasks that were attempted.
    pub fn tasks(&self) -> usize {
        self.attempts
            .iter()
            .map(|a| a.task)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Attempts without an end whose process was killed: work a crash cut short.
    pub fn cut_by_kills(&self, kills: &[Kill]) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.end.is_none() && killed_while_running(a, kills).is_some())
            .count()
    }

    /// Attempts without an end in a process that was *not* killed: the journal lost
    /// their end, so they are taken to run for ever (and overlap any later attempt).
    pub fn never_ended(&self, kills: &[Kill]) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.end.is_none() && killed_while_running(a, kills).is_none())
            .collect()
    }

    /// Every pair of attempts of one task whose [start, end] intervals overlap (touching
    /// ends do not). An attempt without an end lasted until its process was killed.
    pub fn overlaps(&self, kills: &[Kill]) -> Vec<(Attempt, Attempt)> {
        let mut by_task: BTreeMap<u64, Vec<(i64, i64, &Attempt)>> = BTreeMap::new();
        for attempt in &self.attempts {
            let end = match &attempt.end {
                Some((at, _)) => *at,
                None => killed_while_running(attempt, kills).unwrap_or(i64::MAX),
            };
            by_task
                .entry(attempt.task)
                .or_default()
                .push((attempt.start, end, attempt));
        }
        let mut found = Vec::new();
        for attempts in by_task.values_mut() {
            attempts.sort_by_key(|(start, end, _)| (*start, *end));
            for (i, (_, first_end, first)) in attempts.iter().enumerate() {
                // Sorted by start, so a later attempt overlaps when it starts before
                // this one ended.
                for (second_start, _, second) in &attempts[i + 1..] {
                    if second_start < first_end {
                        found.push(((*first).clone(), (*second).clone()));
                    }
                }
            }
        }
        found
    }
}

/// A task a kill cut short, and how long after the kill its next attempt started.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumption {
    pub task: u64,
    pub killed_at: i64,
    /// `None`: no later attempt (it was canceled, or never ran again).
    pub after_ms: Option<i64>,
}

impl Journal {
    /// For every attempt a kill cut short: when the task's next attempt started.
    pub fn resumptions(&self, kills: &[Kill]) -> Vec<Resumption> {
        self.attempts
            .iter()
            .filter(|a| a.end.is_none())
            .filter_map(|cut| {
                let killed_at = killed_while_running(cut, kills)?;
                let next = self
                    .attempts
                    .iter()
                    .filter(|a| a.task == cut.task && a.start >= killed_at)
                    .map(|a| a.start)
                    .min();
                Some(Resumption {
                    task: cut.task,
                    killed_at,
                    after_ms: next.map(|start| start - killed_at),
                })
            })
            .collect()
    }
}

/// When the attempt's process was killed, if it was after the attempt started.
fn killed_while_running(attempt: &Attempt, kills: &[Kill]) -> Option<i64> {
    kills
        .iter()
        .filter(|k| k.pid == attempt.pid && k.at >= attempt.start)
        .map(|k| k.at)
        .min()
}

/// How many distinct tasks the overlapping pairs name.
pub fn tasks_in(overlaps: &[(Attempt, Attempt)]) -> usize {
    overlaps
        .iter()
        .map(|(first, _)| first.task)
        .collect::<BTreeSet<_>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(task: u64, fence: u64, pid: u32, at: i64) -> String {
        format!(
            r#"{{"event":"start","task":{task},"fence":{fence},"attempt":1,"pid":{pid},"at":{at}}}"#
        )
    }

    fn end(task: u64, fence: u64, pid: u32, at: i64, outcome: &str) -> String {
        format!(
            r#"{{"event":"end","task":{task},"fence":{fence},"attempt":1,"pid":{pid},"at":{at},"outcome":"{outcome}"}}"#
        )
    }

    fn journal(lines: &[String]) -> Journal {
        Journal::parse(&lines.join("\n"))
    }

    #[test]
    fn sequential_attempts_and_a_crash_before_the_rerun_do_not_overlap() {
        let kills = [Kill { pid: 10, at: 250 }];
        let journal = journal(&[
            start(1, 1, 10, 100),
            end(1, 1, 10, 150, "retryable"),
            start(1, 2, 10, 150),
            // pid 10 is killed at 250 while fence 2 runs; pid 11 runs it again.
            start(1, 3, 11, 300),
            end(1, 3, 11, 400, "ok"),
        ]);
        assert!(journal.defects.is_empty(), "{:?}", journal.defects);
        assert_eq!(journal.attempts.len(), 3);
        assert_eq!(journal.ended_with("retryable"), 1);
        assert_eq!(journal.cut_by_kills(&kills), 1);
        assert!(journal.never_ended(&kills).is_empty());
        assert!(journal.overlaps(&kills).is_empty());
    }

    #[test]
    fn a_rescue_while_the_first_attempt_still_runs_is_an_overlap() {
        let journal = journal(&[
            start(7, 1, 10, 100),
            start(7, 2, 10, 180),
            end(7, 1, 10, 200, "ok"),
            end(7, 2, 10, 260, "ok"),
            // Another task in between, on its own: no overlap.
            start(8, 3, 10, 120),
            end(8, 3, 10, 130, "ok"),
        ]);
        let overlaps = journal.overlaps(&[]);
        assert_eq!(overlaps.len(), 1, "{overlaps:?}");
        assert_eq!((overlaps[0].0.fence, overlaps[0].1.fence), (1, 2));
        assert_eq!(tasks_in(&overlaps), 1);
    }

    #[test]
    fn an_attempt_cut_by_a_kill_runs_until_the_kill() {
        // pid 10 dies at 500, but pid 11 already started the task at 400: both ran.
        let kills = [Kill { pid: 10, at: 500 }];
        let journal = journal(&[start(3, 1, 10, 100), start(3, 2, 11, 400)]);
        assert_eq!(journal.overlaps(&kills).len(), 1);
        // Had the kill come first, the second run would be a clean rerun.
        let earlier = [Kill { pid: 10, at: 350 }];
        assert!(journal.overlaps(&earlier).is_empty());
    }

    #[test]
    fn an_attempt_that_never_ended_in_a_live_process_overlaps_later_ones() {
        let journal = journal(&[start(4, 1, 12, 100), start(4, 2, 13, 900)]);
        assert_eq!(journal.never_ended(&[]).len(), 2);
        assert_eq!(journal.overlaps(&[]).len(), 1);
    }

    #[test]
    fn unpaired_and_unreadable_lines_are_defects() {
        let journal = journal(&[
            end(5, 1, 10, 100, "ok"),
            "{not json".to_owned(),
            start(6, 1, 10, 100),
            start(6, 1, 10, 110),
        ]);
        assert_eq!(journal.defects.len(), 3, "{:?}", journal.defects);
    }
}
