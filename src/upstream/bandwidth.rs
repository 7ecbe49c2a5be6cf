//! `max_bytes_per_second`: one token bucket (governor's GCRA) for every blob fill from an
//! upstream, so a mirror on a metered link never takes more than its share. Only what is
//! read from the upstream is paced: followers of a fill read its file at disk speed, so
//! eight clients of one blob take no longer than one.
//!
//! Fills a client waits on come first: while any is running, background fills (prefetch)
//! stop reading, and their upstream connections simply stall until it is done.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::budget::Priority;

/// How often a held background fill looks again.
const HOLD_POLL: Duration = Duration::from_millis(20);

pub struct Bandwidth {
    limiter: DefaultDirectRateLimiter,
    /// The most bytes taken at once: 50 ms of the rate, so the cap holds over short spans.
    burst: NonZeroU32,
    /// Client fills running under this cap.
    clients: AtomicUsize,
}

/// One fill's use of the cap; a client's holds background fills back until dropped.
pub struct Lane<'a> {
    bandwidth: &'a Bandwidth,
    priority: Priority,
}

impl Bandwidth {
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        let rate = u32::try_from(bytes_per_second).unwrap_or(u32::MAX).max(1);
        let burst = NonZeroU32::new((rate / 20).max(1)).expect("at least 1");
        let rate = NonZeroU32::new(rate).expect("at least 1");
        Bandwidth {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            burst,
            clients: AtomicUsize::new(0),
        }
    }

    pub fn lane(&self, priority: Priority) -> Lane<'_> {
        if priority == Priority::Client {
            self.clients.fetch_add(1, Ordering::SeqCst);
        }
        Lane {
            bandwidth: self,
            priority,
        }
    }
}

impl Lane<'_> {
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Waits until `bytes` more may be read; returns how long it waited.
    pub async fn take(&self, bytes: usize) -> Duration {
        let began = Instant::now();
        let bandwidth = self.bandwidth;
        if self.priority == Priority::Background {
            while bandwidth.clients.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(HOLD_POLL).await;
            }
        }
        let mut left = u32::try_from(bytes).unwrap_or(u32::MAX);
        while let Some(n) = NonZeroU32::new(left.min(bandwidth.burst.get())) {
            // Never more than the burst, so this cannot fail.
            let _ = bandwidth.limiter.until_n_ready(n).await;
            left -= n.get();
        }
        began.elapsed()
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        if self.priority == Priority::Client {
            self.bandwidth.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_holds_and_clients_go_first() {
        // 4 MiB/s: 1 MiB beyond the first burst takes about 0.25 s.
        let bandwidth = Bandwidth::new(4 << 20);
        let lane = bandwidth.lane(Priority::Client);
        let began = Instant::now();
        for _ in 0..16 {
            lane.take(64 << 10).await;
        }
        let took = began.elapsed().as_secs_f64();
        assert!((0.18..2.0).contains(&took), "{took} s for 1 MiB at 4 MiB/s");
        // A background fill waits while the client's lane is open.
        let background = bandwidth.lane(Priority::Background);
        let held = tokio::time::timeout(Duration::from_millis(100), background.take(1)).await;
        assert!(held.is_err(), "background went ahead of a client");
        drop(lane);
        tokio::time::timeout(Duration::from_secs(1), background.take(1))
            .await
            .expect("background goes on once no client fills");
    }
}
