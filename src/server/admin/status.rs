//! The status page: `status.html` (its style and script inline, no external assets, so it
//! works air-gapped) and the JSON it refreshes from, `GET /api/v1/status`. The numbers come
//! from the same collectors `/metrics` renders, so the page and a scrape agree.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::activity::{Sample, RESULTS};
use super::Outcome;
use crate::metrics::{self, counters};
use crate::mirror::InProgress;
use crate::server::State;

pub const PAGE: &str = include_str!("status.html");

/// How long the largest repositories (a walk of the records) are reused.
const LARGEST_FOR: Duration = Duration::from_secs(30);
/// Rows in each repository table.
const TOP: usize = 10;

#[derive(Serialize)]
pub struct Status {
    version: &'static str,
    now: u64,
    started: u64,
    /// Seconds the `recent` figures cover (up to five minutes).
    window_secs: u64,
    requests: Requests,
    hit_ratio: Ratios,
    history: Vec<Point>,
    served_bytes: BTreeMap<String, u64>,
    egress_saved: Egress,
    fills: Vec<InProgress>,
    upstreams: Vec<UpstreamStatus>,
    disk: Disk,
    memory: Memory,
    largest_repositories: Vec<RepoBytes>,
    most_pulled_repositories: Vec<RepoPulls>,
}

#[derive(Serialize)]
struct Requests {
    recent: BTreeMap<String, u64>,
    total: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Ratios {
    recent: Option<f64>,
    total: Option<f64>,
}

#[derive(Serialize)]
struct Point {
    at: u64,
    hit_ratio: Option<f64>,
    requests: u64,
}

#[derive(Serialize)]
struct Egress {
    bytes: u64,
    price_per_gb: f64,
    currency: String,
    amount: f64,
}

#[derive(Serialize)]
struct UpstreamStatus {
    name: String,
    url: String,
    /// `ok`, `degraded` (5% of recent requests failed), `failing` (half), or `idle`.
    health: &'static str,
    requests: u64,
    errors: u64,
    error_rate: Option<f64>,
    ratelimit_remaining: Option<u64>,
    ratelimit_limit: Option<u64>,
    /// Manifest GETs sent upstream (Docker Hub's pulls) and client GETs answered without.
    pulls_spent: u64,
    pulls_avoided: u64,
    /// Pulls left in the budget, for an upstream that has one.
    pull_budget_left: Option<u64>,
}

#[derive(Serialize)]
struct Disk {
    used_bytes: u64,
    objects: u64,
    budget_bytes: u64,
    high_watermark_bytes: u64,
    low_watermark_bytes: u64,
    pinned_bytes: u64,
}

#[derive(Serialize)]
struct Memory {
    used_bytes: u64,
    objects: u64,
    budget_bytes: u64,
}

#[derive(Clone, Serialize)]
pub struct RepoBytes {
    upstream: String,
    repository: String,
    bytes: u64,
}

#[derive(Serialize)]
struct RepoPulls {
    upstream: String,
    repository: String,
    pulls: u64,
}

pub async fn status(state: &State) -> Outcome<Status> {
    state.cache.report_usage();
    let families = state.metrics.gather();
    let now = Sample::take(&families);
    let samples = state.admin.activity.samples();
    // The oldest sample within the window is the baseline; before the first one, all of it.
    let recent = samples
        .first()
        .map_or_else(|| now.clone(), |first| now.since(first));
    let window_secs = samples.first().map_or(0, |first| now.at - first.at);
    let by_result = |sample: &Sample| -> BTreeMap<String, u64> {
        RESULTS
            .iter()
            .map(|r| (r.to_string(), sample.results.get(*r).copied().unwrap_or(0)))
            .collect()
    };
    let history = samples
        .windows(2)
        .map(|pair| {
            let step = pair[1].since(&pair[0]);
            Point {
                at: step.at,
                hit_ratio: step.hit_ratio(),
                requests: step.results.values().sum(),
            }
        })
        .collect();

    let mut served_bytes: BTreeMap<String, u64> = ["memory", "disk", "bucket", "upstream"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for (labels, value) in counters(&families, metrics::SERVED_BYTES) {
        let source = labels.get("source").cloned().unwrap_or_default();
        *served_bytes.entry(source).or_default() += value;
    }
    let saved = served_bytes
        .iter()
        .filter(|(source, _)| *source != "upstream")
        .map(|(_, v)| v)
        .sum::<u64>();
    let (price, currency) = state.admin.pricing.clone();

    let gauge = |name: &str, upstream: &str| {
        counters(&families, name)
            .find(|(l, _)| l.get("upstream").map(String::as_str) == Some(upstream))
            .map(|(_, v)| v)
    };
    let upstreams = state
        .upstreams
        .configs()
        .into_iter()
        .map(|u| {
            let (requests, errors) = now.upstreams.get(&u.name).copied().unwrap_or_default();
            let (recent_n, recent_e) = recent.upstreams.get(&u.name).copied().unwrap_or_default();
            let health = match (recent_n, recent_e * 100 / recent_n.max(1)) {
                (0, _) => "idle",
                (_, 50..) => "failing",
                (_, 5..) => "degraded",
                _ => "ok",
            };
            UpstreamStatus {
                name: u.name.clone(),
                url: crate::upstream::redact::url(&u.url).to_string(),
                health,
                requests,
                errors,
                error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
                ratelimit_remaining: gauge(metrics::UPSTREAM_RATELIMIT_REMAINING, &u.name),
                ratelimit_limit: gauge(metrics::UPSTREAM_RATELIMIT_LIMIT, &u.name),
                pulls_spent: gauge(metrics::UPSTREAM_PULLS, &u.name).unwrap_or(0),
                pulls_avoided: gauge(metrics::PULLS_AVOIDED, &u.name).unwrap_or(0),
                pull_budget_left: gauge(metrics::PULL_BUDGET_REMAINING, &u.name),
            }
        })
        .collect();

    let disk = state.cache.disk();
    let (objects, used) = disk.index.usage();
    let (memory_objects, memory_used) = state.cache.memory_usage();
    let most_pulled = state
        .admin
        .activity
        .most_pulled(TOP)
        .into_iter()
        .map(|((upstream, repository), pulls)| RepoPulls {
            upstream,
            repository,
            pulls,
        })
        .collect();
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        now: now.at,
        started: state.admin.started,
        window_secs,
        hit_ratio: Ratios {
            recent: recent.hit_ratio(),
            total: now.hit_ratio(),
        },
        requests: Requests {
            recent: by_result(&recent),
            total: by_result(&now),
        },
        history,
        served_bytes,
        egress_saved: Egress {
            bytes: saved,
            amount: saved as f64 / 1e9 * price,
            price_per_gb: price,
            currency,
        },
        fills: state.cache.fills(),
        upstreams,
        disk: Disk {
            used_bytes: used,
            objects,
            budget_bytes: disk.limits.budget,
            high_watermark_bytes: disk.limits.high,
            low_watermark_bytes: disk.limits.low,
            pinned_bytes: disk.index.kept_usage().1,
        },
        memory: Memory {
            used_bytes: memory_used,
            objects: memory_objects,
            budget_bytes: state.admin.memory_budget,
        },
        largest_repositories: largest(state).await?,
        most_pulled_repositories: most_pulled,
    })
}

/// The largest repositories, from a walk at most `LARGEST_FOR` old.
async fn largest(state: &State) -> Outcome<Vec<RepoBytes>> {
    if let Some((at, repos)) = &*state.admin.largest.lock().expect("largest lock") {
        if at.elapsed() < LARGEST_FOR {
            return Ok(repos.clone());
        }
    }
    let q = [
        ("sort".to_string(), "bytes".to_string()),
        ("limit".into(), TOP.to_string()),
    ];
    let page = super::api::repositories(state, &q.into_iter().collect()).await?;
    let repos: Vec<RepoBytes> = page
        .items
        .into_iter()
        .filter(|r| r.bytes > 0)
        .map(|r| RepoBytes {
            upstream: r.upstream,
            repository: r.repository,
            bytes: r.bytes,
        })
        .collect();
    *state.admin.largest.lock().expect("largest lock") = Some((Instant::now(), repos.clone()));
    Ok(repos)
}

/// Forces the next status to walk the records again (after a purge, pin or import).
pub fn stale(state: &State) {
    *state.admin.largest.lock().expect("largest lock") = None;
}
