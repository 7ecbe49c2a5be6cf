//! What the status page shows over time: samples of the request counters every
//! `SAMPLE_EVERY` (the last `SAMPLES` of them, so "the last five minutes" is a difference
//! of two samples), and manifest requests per repository since start (bounded; never a
//! metric label, since repositories are unbounded).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::proto::MetricFamily;

use crate::metrics::{self, Metrics};
use crate::store::unix_now;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Five minutes of samples, and the one before them.
const SAMPLES: usize = 31;
/// Repositories counted; a new one beyond this is not (the busiest arrive early).
const MAX_REPOSITORIES: usize = 10_000;

/// The request results the status page breaks the hit ratio into.
pub const RESULTS: [&str; 7] = [
    "memory_hit",
    "disk_hit",
    "bucket_hit",
    "redirected",
    "coalesced",
    "miss",
    "error",
];
/// Of those, the ones answered without a new upstream fetch (as the recording rules in
/// `config/prometheus` count them).
const HITS: [&str; 5] = [
    "memory_hit",
    "disk_hit",
    "bucket_hit",
    "redirected",
    "coalesced",
];

/// Counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at: u64,
    /// Manifest and blob requests by result.
    pub results: HashMap<String, u64>,
    /// Upstream requests and failed ones (5xx or no answer), by upstream.
    pub upstreams: HashMap<String, (u64, u64)>,
}

impl Sample {
    pub fn take(families: &[MetricFamily]) -> Sample {
        let mut sample = Sample {
            at: unix_now(),
            ..Sample::default()
        };
        for (labels, value) in metrics::counters(families, metrics::REQUESTS) {
            if matches!(
                labels.get("kind").map(String::as_str),
                Some("manifest" | "blob")
            ) {
                let result = labels.get("result").cloned().unwrap_or_default();
                *sample.results.entry(result).or_default() += value;
            }
        }
        for (labels, value) in metrics::counters(families, metrics::UPSTREAM_REQUESTS) {
            let upstream = labels.get("upstream").cloned().unwrap_or_default();
            let entry = sample.upstreams.entry(upstream).or_default();
            entry.0 += value;
            if matches!(
                labels.get("status").map(String::as_str),
                Some("5xx" | "error")
            ) {
                entry.1 += value;
            }
        }
        sample
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &Sample) -> Sample {
        let results = self
            .results
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.results.get(k).copied().unwrap_or(0)))
            .collect();
        let upstreams = self
            .upstreams
            .iter()
            .map(|(k, (n, e))| {
                let (n0, e0) = earlier.upstreams.get(k).copied().unwrap_or_default();
                (k.clone(), (n - n0, e - e0))
            })
            .collect();
        Sample {
            at: self.at,
            results,
            upstreams,
        }
    }

    /// Requests answered without a new upstream fetch, of all answered (errors left out).
    pub fn hit_ratio(&self) -> Option<f64> {
        let count =
            |names: &[&str]| -> u64 { names.iter().filter_map(|n| self.results.get(*n)).sum() };
        let answered = count(&RESULTS) - count(&["error"]);
        (answered > 0).then(|| count(&HITS) as f64 / answered as f64)
    }
}

#[derive(Default)]
pub struct Activity {
    samples: Mutex<VecDeque<Sample>>,
    pulls: Mutex<HashMap<(String, String), u64>>,
}

impl Activity {
    /// Samples `metrics` every `SAMPLE_EVERY` for as long as `activity` lives.
    pub fn start(activity: &Arc<Activity>, metrics: Metrics) {
        let weak: Weak<Activity> = Arc::downgrade(activity);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(activity) = weak.upgrade() else {
                    return;
                };
                activity.record(Sample::take(&metrics.gather()));
            }
        });
    }

    pub fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("samples lock");
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("samples lock")
            .iter()
            .cloned()
            .collect()
    }

    /// A manifest request for `repo` of `upstream` was answered.
    pub fn pulled(&self, upstream: &str, repo: &str) {
        let mut pulls = self.pulls.lock().expect("pulls lock");
        let key = (upstream.to_string(), repo.to_string());
        if let Some(n) = pulls.get_mut(&key) {
            *n += 1;
        } else if pulls.len() < MAX_REPOSITORIES {
            pulls.insert(key, 1);
        }
    }

    /// The `n` repositories with the most manifest requests.
    pub fn most_pulled(&self, n: usize) -> Vec<((String, String), u64)> {
        let pulls = self.pulls.lock().expect("pulls lock");
        let mut all: Vec<((String, String), u64)> =
            pulls.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, hits: u64, misses: u64, errors: u64) -> Sample {
        let results = [("disk_hit", hits), ("miss", misses), ("error", errors)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Sample {
            at,
            results,
            upstreams: HashMap::new(),
        }
    }

    #[test]
    fn the_hit_ratio_leaves_errors_out_and_works_on_differences() {
        let (early, late) = (sample(0, 10, 10, 5), sample(10, 40, 20, 50));
        assert_eq!(late.since(&early).hit_ratio(), Some(0.75));
        assert_eq!(sample(0, 0, 0, 3).hit_ratio(), None);
    }

    #[test]
    fn samples_and_repositories_are_bounded() {
        let activity = Activity::default();
        for at in 0..100 {
            activity.record(sample(at, 0, 0, 0));
        }
        let kept = activity.samples();
        assert_eq!((kept.len(), kept[0].at), (SAMPLES, 100 - SAMPLES as u64));
        for n in 0..MAX_REPOSITORIES + 5 {
            activity.pulled("hub", &format!("r{n}"));
        }
        activity.pulled("hub", "r7");
        assert_eq!(activity.pulls.lock().unwrap().len(), MAX_REPOSITORIES);
        assert_eq!(activity.most_pulled(1), [(("hub".into(), "r7".into()), 2)]);
    }
}
