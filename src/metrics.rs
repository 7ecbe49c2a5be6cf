//! Every Prometheus collector, on a registry owned by the app (no globals), so tests
//! can run several daemons in one process.
//!
//! Labels are bounded: kind, result, source, upstream name. Never a repository or digest.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS: &str = "regcache_requests_total";
pub const SERVED_BYTES: &str = "regcache_served_bytes_total";
pub const UPSTREAM_REQUESTS: &str = "regcache_upstream_requests_total";
pub const UPSTREAM_BYTES: &str = "regcache_upstream_bytes_total";
pub const DIGEST_MISMATCHES: &str = "regcache_digest_mismatches_total";
pub const FILLS_IN_FLIGHT: &str = "regcache_fills_in_flight";
pub const FILLS: &str = "regcache_fills_total";
pub const ERRORS: &str = "regcache_errors_total";
pub const CACHE_WRITE_ERRORS: &str = "regcache_cache_write_errors_total";
pub const CACHE_OBJECTS: &str = "regcache_memory_objects";
pub const CACHE_BYTES: &str = "regcache_memory_bytes";
pub const LIMIT_REJECTIONS: &str = "regcache_limit_rejections_total";
pub const CONNECTIONS: &str = "regcache_connections";
pub const AUTH_FAILURES: &str = "regcache_auth_failures_total";
pub const AUTH_BCRYPT_RUNS: &str = "regcache_auth_bcrypt_runs_total";
pub const POLICY_DENIALS: &str = "regcache_policy_denials_total";
pub const MEMBERSHIP_CHECKS: &str = "regcache_membership_checks_total";

/// Which `[server]` limit ended or refused a connection: the `limit` label of
/// [`LIMIT_REJECTIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    MaxConnections,
    MaxConnectionsPerIp,
    HeaderReadTimeout,
    HeaderSize,
    IdleTimeout,
    SendTimeout,
    TlsHandshakeTimeout,
    ShutdownGrace,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerIp => "max_connections_per_ip",
            Limit::HeaderReadTimeout => "header_read_timeout",
            Limit::HeaderSize => "header_size",
            Limit::IdleTimeout => "idle_timeout",
            Limit::SendTimeout => "send_timeout",
            Limit::TlsHandshakeTimeout => "tls_handshake_timeout",
            Limit::ShutdownGrace => "shutdown_grace",
        }
    }
}
pub const UPSTREAM_RETRIES: &str = "regcache_upstream_retries_total";
pub const UPSTREAM_RESUMES: &str = "regcache_upstream_resumes_total";
pub const STALE_SERVES: &str = "regcache_stale_serves_total";
pub const UPSTREAM_RATELIMIT_LIMIT: &str = "regcache_upstream_ratelimit_limit";
pub const UPSTREAM_RATELIMIT_REMAINING: &str = "regcache_upstream_ratelimit_remaining";
pub const UPSTREAM_PULLS: &str = "regcache_upstream_pulls_total";
pub const PULLS_AVOIDED: &str = "regcache_pulls_avoided_total";
pub const PULL_BUDGET_REFUSALS: &str = "regcache_pull_budget_refusals_total";
pub const PULL_BUDGET_REMAINING: &str = "regcache_pull_budget_remaining";
pub const UPSTREAM_PACED: &str = "regcache_upstream_paced_seconds_total";
pub const DISK_OBJECTS: &str = "regcache_disk_objects";
pub const DISK_BYTES: &str = "regcache_disk_bytes";
pub const EVICTIONS: &str = "regcache_evictions_total";
pub const OFFLINE_MISSES: &str = "regcache_offline_misses_total";
pub const BUCKET_OPERATIONS: &str = "regcache_bucket_operations_total";
pub const PEER_FORWARDS: &str = "regcache_peer_forwards_total";
pub const PARENT_REQUESTS: &str = "regcache_parent_requests_total";
pub const CLUSTER_MEMBERS: &str = "regcache_cluster_members";
pub const DISK_LIMITS: &str = "regcache_disk_limit_bytes";
pub const REQUEST_DURATION: &str = "regcache_request_duration_seconds";
pub const FIRST_BYTE: &str = "regcache_response_first_byte_seconds";
pub const UPSTREAM_DURATION: &str = "regcache_upstream_request_duration_seconds";

/// Latency buckets from 1 ms (a hot manifest) to 60 s (a slow upstream), about three
/// per decade so a p99 is resolved within a factor of two.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a request was answered; the `result` label of [`REQUESTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    MemoryHit,
    DiskHit,
    /// Went upstream (this request started the fetch, or only upstream could answer).
    Miss,
    /// Joined a fill another request started.
    Coalesced,
    /// Read from the shared bucket (this request started the fill from it).
    BucketHit,
    /// Sent to a presigned bucket URL (`bucket.redirect_min_bytes`).
    Redirected,
    Error,
}

impl From<crate::store::Tier> for Outcome {
    fn from(tier: crate::store::Tier) -> Outcome {
        match tier {
            crate::store::Tier::Memory => Outcome::MemoryHit,
            crate::store::Tier::Disk => Outcome::DiskHit,
            crate::store::Tier::Bucket => Outcome::BucketHit,
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::MemoryHit => "memory_hit",
            Outcome::DiskHit => "disk_hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::BucketHit => "bucket_hit",
            Outcome::Redirected => "redirected",
            Outcome::Error => "error",
        }
    }

    /// Where the body bytes of such a response come from (the `source` of [`SERVED_BYTES`]).
    pub fn byte_source(self) -> &'static str {
        match self {
            Outcome::MemoryHit => "memory",
            Outcome::DiskHit => "disk",
            Outcome::BucketHit | Outcome::Redirected => "bucket",
            Outcome::Miss | Outcome::Coalesced | Outcome::Error => "upstream",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub served_bytes: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub digest_mismatches: IntCounterVec,
    pub fills_in_flight: IntGauge,
    pub fills: IntCounterVec,
    pub bucket_operations: IntCounterVec,
    pub peer_forwards: IntCounterVec,
    pub parent_requests: IntCounterVec,
    pub cluster_members: IntGauge,
    pub errors: IntCounterVec,
    pub cache_write_errors: IntCounter,
    pub memory_objects: IntGauge,
    pub memory_bytes: IntGauge,
    pub limit_rejections: IntCounterVec,
    pub connections: IntGauge,
    pub upstream_ratelimit_limit: IntGaugeVec,
    pub upstream_ratelimit_remaining: IntGaugeVec,
    pub stale_serves: IntCounterVec,
    pub upstream_pulls: IntCounterVec,
    pub pulls_avoided: IntCounterVec,
    pub pull_budget_refusals: IntCounterVec,
    pub pull_budget_remaining: IntGaugeVec,
    pub upstream_paced: CounterVec,
    pub upstream_retries: IntCounterVec,
    pub upstream_resumes: IntCounterVec,
    pub disk_objects: IntGauge,
    pub disk_bytes: IntGauge,
    pub evictions: IntCounterVec,
    pub offline_misses: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub auth_bcrypt_runs: IntCounter,
    pub policy_denials: IntCounterVec,
    pub membership_checks: IntCounterVec,
    pub disk_limits: IntGaugeVec,
    pub request_duration: HistogramVec,
    pub first_byte: HistogramVec,
    pub upstream_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter_vec(
            REQUESTS,
            "Registry API requests by kind (manifest, blob, tags, referrers, base) and result.",
            &["kind", "result"],
        );
        let served_bytes = counter_vec(
            SERVED_BYTES,
            "Body bytes sent to clients by source (memory, disk, bucket, upstream).",
            &["source"],
        );
        let upstream_requests = counter_vec(
            UPSTREAM_REQUESTS,
            "Requests sent upstream by upstream, kind and status class.",
            &["upstream", "kind", "status"],
        );
        let upstream_bytes = counter_vec(
            UPSTREAM_BYTES,
            "Body bytes received from upstream (manifests and blobs).",
            &["upstream"],
        );
        let digest_mismatches = counter_vec(
            DIGEST_MISMATCHES,
            "Upstream content whose bytes did not match the digest (or were cut short).",
            &["kind"],
        );
        let bucket_operations = counter_vec(
            BUCKET_OPERATIONS,
            "Operations on the shared bucket by operation (get_blob, get_manifest, put_blob, \
             put_manifest, put_marker, head_marker, put_member, head_member, remove_blob, \
             lease, head_blob, redirect) and result (hit, \
             miss, ok, exists, aborted, corrupt, taken and held for leases, error, skipped: \
             within a pause after an error).",
            &["op", "result"],
        );
        let peer_forwards = counter_vec(
            PEER_FORWARDS,
            "Requests asked of another replica, by whom (to: owner, a blob digest's owner; \
             lease_holder, the replica whose fill lease was found; tag_owner, the replica \
             that revalidates a tag) and result (ok, not_found, fallback: it failed and \
             this replica went on without it).",
            &["result", "to"],
        );
        let parent_requests = counter_vec(
            PARENT_REQUESTS,
            "Requests sent to an upstream's parents (other regcaches asked before the \
             registry) by upstream and result (ok, not_found, throttled: it answered 429, \
             passed on; failed: the next parent or the registry was asked, skipped: the \
             parent failed within the last 10 s).",
            &["upstream", "result"],
        );
        let fills = counter_vec(
            FILLS,
            "Blob fills from upstream by result (cached, mismatch, failed).",
            &["result"],
        );
        let errors = counter_vec(
            ERRORS,
            "Error responses by source (client, upstream, local) and HTTP status.",
            &["source", "status"],
        );
        let limit_rejections = counter_vec(
            LIMIT_REJECTIONS,
            "Connections refused or closed because a [server] limit triggered, by limit.",
            &["limit"],
        );
        let stale_serves = counter_vec(
            STALE_SERVES,
            "Cached tags served stale because upstream failed (429, 5xx, unreachable) while revalidating.",
            &["upstream"],
        );
        let upstream_pulls = counter_vec(
            UPSTREAM_PULLS,
            "Manifest GETs sent to the upstream registry (what Docker Hub counts as pulls; \
             HEADs and blobs are not), by upstream.",
            &["upstream"],
        );
        let pulls_avoided = counter_vec(
            PULLS_AVOIDED,
            "Manifest GETs from clients answered without a manifest GET upstream (from the \
             cache, or after a free HEAD), by upstream.",
            &["upstream"],
        );
        let pull_budget_refusals = counter_vec(
            PULL_BUDGET_REFUSALS,
            "Manifest GETs not sent because the pull budget was spent or kept for clients, \
             by upstream and priority (client: answered 429; background: prefetch held).",
            &["upstream", "priority"],
        );
        let upstream_paced = CounterVec::new(
            Opts::new(
                UPSTREAM_PACED,
                "Seconds blob fills waited for the upstream's max_bytes_per_second cap, by \
                 upstream and priority.",
            ),
            &["upstream", "priority"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_paced.clone()))
            .expect("unique metric");
        let upstream_retries = counter_vec(
            UPSTREAM_RETRIES,
            "Upstream requests sent again after a connection failure, 429 or 502/503/504.",
            &["upstream"],
        );
        let upstream_resumes = counter_vec(
            UPSTREAM_RESUMES,
            "Blob downloads cut mid-way and resumed with a Range request, by result (resumed, refused).",
            &["upstream", "result"],
        );
        let evictions = counter_vec(
            EVICTIONS,
            "Objects removed from the disk store by reason (budget, disk_full, lifecycle, corruption).",
            &["reason"],
        );
        let offline_misses = counter_vec(
            OFFLINE_MISSES,
            "Requests that needed an upstream marked offline (answered 404 or 503).",
            &["upstream"],
        );
        let auth_failures = counter_vec(
            AUTH_FAILURES,
            "Requests refused by [server.auth], by reason (address, missing, malformed, rejected, busy, throttled).",
            &["reason"],
        );
        let policy_denials = counter_vec(
            POLICY_DENIALS,
            "Requests refused by an upstream's allow and deny patterns, by upstream and reason (deny, not_allowed).",
            &["upstream", "reason"],
        );
        let membership_checks = counter_vec(
            MEMBERSHIP_CHECKS,
            "Cached content asked for through a repository regcache had not seen it in, checked upstream, by upstream and result (confirmed, refused, unavailable).",
            &["upstream", "result"],
        );
        let cache_write_errors = IntCounter::new(
            CACHE_WRITE_ERRORS,
            "Failed writes to the disk store (the request is still served).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(cache_write_errors.clone()))
            .expect("unique metric");
        let auth_bcrypt_runs = IntCounter::new(
            AUTH_BCRYPT_RUNS,
            "bcrypt verifications run for Basic logins (the rest were answered from memory or refused first).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(auth_bcrypt_runs.clone()))
            .expect("unique metric");
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let request_duration = histogram_vec(
            REQUEST_DURATION,
            "Time from a registry API request to its response head, by kind and result.",
            &["kind", "result"],
        );
        let first_byte = histogram_vec(
            FIRST_BYTE,
            "Time from a registry API request to the first body byte handed to the \
             connection (a blob fill waits for upstream's first bytes), by kind.",
            &["kind"],
        );
        let upstream_duration = histogram_vec(
            UPSTREAM_DURATION,
            "Time from sending an upstream request to its response head, by upstream and \
             kind.",
            &["upstream", "kind"],
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let fills_in_flight = gauge(FILLS_IN_FLIGHT, "Blob downloads from upstream in progress.");
        let memory_objects = gauge(CACHE_OBJECTS, "Objects held in the memory tier.");
        let memory_bytes = gauge(
            CACHE_BYTES,
            "Bytes held in the memory tier (manifests and small blobs).",
        );
        let connections = gauge(CONNECTIONS, "Client connections open, on every listener.");
        let cluster_members = gauge(
            CLUSTER_MEMBERS,
            "Replicas in the cluster's member list (this one included), as last configured \
             or resolved from cluster.members_dns.",
        );
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let disk_limits = gauge_vec(
            DISK_LIMITS,
            "The disk store's limits in bytes (limit: budget, high: where eviction starts, \
             low: where it stops), as resolved at startup.",
            &["limit"],
        );
        let upstream_ratelimit_limit = gauge_vec(
            UPSTREAM_RATELIMIT_LIMIT,
            "Pulls allowed per window, as the upstream last reported (Docker Hub's ratelimit-limit).",
            &["upstream"],
        );
        let upstream_ratelimit_remaining = gauge_vec(
            UPSTREAM_RATELIMIT_REMAINING,
            "Pulls left in the window, as the upstream last reported (Docker Hub's ratelimit-remaining).",
            &["upstream"],
        );
        let pull_budget_remaining = gauge_vec(
            PULL_BUDGET_REMAINING,
            "Pulls left in the upstream's budget (the tighter of pulls_per_hour and the \
             upstream's own report), for upstreams that have one.",
            &["upstream"],
        );
        let disk_objects = gauge(
            DISK_OBJECTS,
            "Objects (blobs and manifests) in the disk store.",
        );
        let disk_bytes = gauge(DISK_BYTES, "Bytes of the objects in the disk store.");
        Metrics {
            registry,
            upstream_ratelimit_limit,
            upstream_ratelimit_remaining,
            stale_serves,
            upstream_pulls,
            pulls_avoided,
            pull_budget_refusals,
            pull_budget_remaining,
            upstream_paced,
            upstream_retries,
            upstream_resumes,
            requests,
            served_bytes,
            upstream_requests,
            upstream_bytes,
            digest_mismatches,
            fills_in_flight,
            fills,
            bucket_operations,
            peer_forwards,
            parent_requests,
            cluster_members,
            errors,
            cache_write_errors,
            memory_objects,
            memory_bytes,
            limit_rejections,
            connections,
            disk_objects,
            disk_bytes,
            evictions,
            offline_misses,
            auth_failures,
            auth_bcrypt_runs,
            policy_denials,
            membership_checks,
            disk_limits,
            request_duration,
            first_byte,
            upstream_duration,
        }
    }

    /// Counts one connection refused or closed by `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_rejections
            .with_label_values(&[limit.as_str()])
            .inc();
    }

    /// Every collector's current values (what the status page reads, so its numbers are
    /// the ones `/metrics` shows).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every collector.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Each series of counter or gauge `name` in `families`: its labels and value.
pub fn counters<'a>(
    families: &'a [prometheus::proto::MetricFamily],
    name: &'a str,
) -> impl Iterator<Item = (std::collections::HashMap<String, String>, u64)> + 'a {
    families
        .iter()
        .filter(move |f| f.name() == name)
        .flat_map(|f| {
            let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
            f.get_metric().iter().map(move |m| (counter, m))
        })
        .map(|(counter, m)| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let value = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            (labels, value.max(0.0) as u64)
        })
}

/// The status class label for upstream answers: `2xx`..`5xx`, or `error` for no answer.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "error",
    }
}
