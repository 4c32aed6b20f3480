//! What the bench reads beside its own calls: a process's CPU time and resident memory
//! (from `/proc`), and the server's Prometheus metrics (counters and the start-delay
//! histogram), each read before and after a run.

use serde::Serialize;
use std::collections::BTreeMap;

/// Clock ticks per second of `/proc/PID/stat` times: Linux fixes USER_HZ at 100 on every
/// architecture it exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds `pid` (`self` for this process) has used, all threads.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} (is --server-pid right?): {e}"))?;
    // Fields after the command name (which may hold spaces) in parentheses: state is
    // the first, utime the 12th, stime the 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("{path} has no command field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| anyhow::anyhow!("{path}: field {} is not a number", index + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// Resident memory of `pid` in MiB (`VmRSS`).
pub fn rss_mib(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {path} (is --server-pid right?): {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| anyhow::anyhow!("{path} has no VmRSS line"))
}

/// One scrape of `/metrics`: every sample by its full name with labels.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { samples }
    }

    /// The sum of the samples of metric `name` whose labels include every `labels` pair.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(name).is_some_and(|rest| {
                    (rest.is_empty() || rest.starts_with('{'))
                        && labels
                            .iter()
                            .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
                })
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The cumulative buckets of histogram `name` (`le` bound in seconds, count).
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(key, count)| {
                let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// Quantiles of what a histogram counted between two scrapes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BucketQuantiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// The quantiles of the observations histogram `name` gained from `before` to `after`,
/// interpolated linearly inside a bucket; `None` without observations.
pub fn quantiles_between(before: &Scrape, after: &Scrape, name: &str) -> Option<BucketQuantiles> {
    let old = before.buckets(name);
    let new = after.buckets(name);
    let delta: Vec<(f64, f64)> = new
        .iter()
        .map(|(le, count)| {
            let earlier = old.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            (*le, count - earlier)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &delta {
            if cumulative >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let within = cumulative - lower.1;
                let share = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return lower.0 + (le - lower.0) * share;
            }
            lower = (le, cumulative);
        }
        lower.0
    };
    let ms = |q: f64| (quantile(q) * 1e6).round() / 1e3;
    Some(BucketQuantiles {
        samples: total as u64,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_difference_of_two_scrapes() {
        let before = Scrape::parse(
            "# TYPE d histogram\nd_bucket{le=\"0.001\"} 10\nd_bucket{le=\"0.002\"} 10\nd_bucket{le=\"+Inf\"} 10\n",
        );
        let after = Scrape::parse(
            "d_bucket{le=\"0.001\"} 60\nd_bucket{le=\"0.002\"} 110\nd_bucket{le=\"+Inf\"} 110\n",
        );
        let q = quantiles_between(&before, &after, "d").unwrap();
        assert_eq!(q.samples, 100);
        // 50 in (0, 1 ms], 50 in (1, 2 ms]: the median is the top of the first bucket.
        assert_eq!(q.p50_ms, 1.0);
        assert_eq!(q.p99_ms, 1.98);
        assert_eq!(quantiles_between(&after, &after, "d"), None);
    }

    #[test]
    fn sums_match_names_and_labels_exactly() {
        let scrape = Scrape::parse(
            "qtask_task_events_total{event=\"succeeded\",action=\"A\"} 3\n\
             qtask_task_events_total{event=\"succeeded\",action=\"B\"} 4\n\
             qtask_task_events_total{event=\"failed\",action=\"A\"} 1\n\
             qtask_task_events_totally 100\n",
        );
        assert_eq!(
            scrape.sum("qtask_task_events_total", &[("event", "succeeded")]),
            7.0
        );
        assert_eq!(scrape.sum("qtask_task_events_total", &[]), 8.0);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(rss_mib("self").unwrap() > 0.0);
        let error = cpu_seconds("999999999").unwrap_err();
        assert!(error.to_string().contains("--server-pid"), "{error}");
    }
}
