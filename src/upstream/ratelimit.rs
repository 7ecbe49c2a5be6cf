//! Docker Hub's pull rate limit, as it reports it on every registry answer:
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600` (pulls per window
//! of `w` seconds). Both become per-upstream gauges and feed the upstream's pull budget.
//! Parsing is pure; recording is one update per upstream answer (never per body chunk).

use std::time::Duration;

use http::HeaderMap;

use super::budget::Budget;
use crate::metrics::Metrics;

pub const LIMIT: &str = "ratelimit-limit";
pub const REMAINING: &str = "ratelimit-remaining";

/// The count in a rate-limit header value (`100;w=21600` gives 100).
pub fn parse(value: &str) -> Option<u64> {
    value.split(';').next()?.trim().parse().ok()
}

/// The window in a rate-limit header value (`100;w=21600` gives 6 hours).
pub fn window(value: &str) -> Option<Duration> {
    value
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("w=")?.trim().parse().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

/// Records the rate-limit headers of one upstream answer, if it sent them.
pub fn observe(headers: &HeaderMap, metrics: &Metrics, upstream: &str, budget: &Budget) {
    let text = |name: &str| headers.get(name)?.to_str().ok();
    let read = |name: &str| parse(text(name)?);
    if let (Some(limit), Some(remaining)) = (read(LIMIT), read(REMAINING)) {
        budget.observe(limit, remaining, text(REMAINING).and_then(window));
    }
    if let Some(limit) = read(LIMIT) {
        metrics
            .upstream_ratelimit_limit
            .with_label_values(&[upstream])
            .set(limit as i64);
    }
    if let Some(remaining) = read(REMAINING) {
        metrics
            .upstream_ratelimit_remaining
            .with_label_values(&[upstream])
            .set(remaining as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_values() {
        assert_eq!(parse("100;w=21600"), Some(100));
        assert_eq!(parse(" 76 ;w=21600"), Some(76));
        assert_eq!(parse("0"), Some(0));
        assert_eq!(parse(""), None);
        assert_eq!(parse("-1;w=1"), None);
        assert_eq!(parse("lots"), None);
        assert_eq!(window("76;w=21600"), Some(Duration::from_secs(21_600)));
        assert_eq!(window("76"), None);
        assert_eq!(window("76;w=0"), None);
    }

    #[test]
    fn headers_become_gauges_per_upstream() {
        let metrics = Metrics::new();
        let mut headers = HeaderMap::new();
        headers.insert(LIMIT, "100;w=21600".parse().unwrap());
        headers.insert(REMAINING, "98;w=21600".parse().unwrap());
        let budget = Budget::new(None, None);
        observe(&headers, &metrics, "hub", &budget);
        assert_eq!(budget.left(), Some(98));
        observe(
            &HeaderMap::new(),
            &metrics,
            "other",
            &Budget::new(None, None),
        );
        let text = metrics.render();
        assert!(text.contains("regcache_upstream_ratelimit_limit{upstream=\"hub\"} 100"));
        assert!(text.contains("regcache_upstream_ratelimit_remaining{upstream=\"hub\"} 98"));
        assert!(!text.contains("upstream=\"other\""));
    }
}
