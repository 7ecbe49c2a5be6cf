//! The upstream's pull budget, planned rather than discovered. Docker Hub counts a manifest
//! GET as a pull (a HEAD is free) and allows so many per window; once spent it answers 429
//! for hours. The budget here is the configured `pulls_per_hour` and what the upstream
//! reports in its `ratelimit-*` headers, whichever is tighter.
//!
//! Clients waiting on a pull come first: background work (prefetch) never takes the last
//! `pull_reserve` pulls, and holds while a client needed a pull within the last minute.
//! A pull refused here becomes a clear 429 saying when the budget refills; nothing is sent.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window `pulls_per_hour` counts over (sliding).
const HOUR: Duration = Duration::from_secs(3600);

/// How long background pulls hold after a client needed one.
const CLIENT_HOLD: Duration = Duration::from_secs(60);

/// Whose request wants a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Priority {
    /// A client is waiting for the answer.
    #[default]
    Client,
    /// Prefetch and other work nobody waits on.
    Background,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Client => "client",
            Priority::Background => "background",
        }
    }
}

/// Why a pull was not sent, and when asking again makes sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The budget is spent (`limit` pulls per `window`).
    Spent {
        limit: u64,
        window: Duration,
        refill_in: Duration,
    },
    /// Background work waits: the rest is kept for clients.
    Held { refill_in: Duration },
    /// The upstream answered 429 itself; it is not asked again before this.
    Upstream { retry_in: Duration },
}

impl Refusal {
    pub fn wait(&self) -> Duration {
        match self {
            Refusal::Spent { refill_in, .. } | Refusal::Held { refill_in } => *refill_in,
            Refusal::Upstream { retry_in } => *retry_in,
        }
        .max(Duration::from_secs(1))
    }

    /// The reason, for the client's error message.
    pub fn explain(&self) -> String {
        let secs = self.wait().as_secs();
        match self {
            Refusal::Spent { limit, window, .. } => format!(
                "pull budget spent ({limit} manifest pulls per {} s); it refills in about \
                 {secs} s; cached images are still served",
                window.as_secs()
            ),
            Refusal::Held { .. } => format!(
                "pull budget kept for clients' requests (background work does not take the \
                 last pulls, nor pulls while clients need them); try again in about {secs} s"
            ),
            Refusal::Upstream { .. } => format!(
                "the upstream refused with 429 (its pull limit is reached); it is not asked \
                 again for about {secs} s; cached images are still served"
            ),
        }
    }
}

/// What the upstream last said of its own count.
#[derive(Clone, Copy, Debug)]
struct Reported {
    limit: u64,
    remaining: u64,
    window: Duration,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// Pulls sent within the last hour, oldest first.
    spent: VecDeque<Instant>,
    reported: Option<Reported>,
    refused_until: Option<Instant>,
    client_wanted: Option<Instant>,
}

pub struct Budget {
    per_hour: Option<u64>,
    reserve: Option<u64>,
    state: Mutex<State>,
}

impl Budget {
    pub fn new(per_hour: Option<u32>, reserve: Option<u32>) -> Budget {
        Budget {
            per_hour: per_hour.map(u64::from),
            reserve: reserve.map(u64::from),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether pulls are counted here at all: a budget is configured or the upstream
    /// reports one. Then a tag is asked with a (free) HEAD before any GET.
    pub fn active(&self) -> bool {
        self.per_hour.is_some() || self.lock().reported.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one pull for `priority`, or says why not.
    pub fn spend(&self, priority: Priority) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now);
        if priority == Priority::Client {
            state.client_wanted = Some(now);
        }
        if let Some(until) = state.refused_until.filter(|&u| now < u) {
            return Err(Refusal::Upstream {
                retry_in: until - now,
            });
        }
        // Nothing limits pulls: none are counted (a report arriving later counts from then).
        let Some((remaining, limit)) = self.remaining(&state, now) else {
            return Ok(());
        };
        let allowed = match priority {
            Priority::Client => remaining > 0,
            Priority::Background => {
                let quiet = state
                    .client_wanted
                    .is_none_or(|t| now.duration_since(t) >= CLIENT_HOLD);
                quiet && remaining > self.reserve_of(limit)
            }
        };
        if allowed {
            state.spent.push_back(now);
            return Ok(());
        }
        let refill_in = self.refill_in(&state, now);
        Err(match priority {
            Priority::Client => {
                let (limit, window) = self.limit_and_window(&state);
                Refusal::Spent {
                    limit,
                    window,
                    refill_in,
                }
            }
            Priority::Background => Refusal::Held {
                refill_in: refill_in.min(CLIENT_HOLD),
            },
        })
    }

    /// Pulls left and the budget they are left of: the tighter of the configured budget
    /// and the upstream's report. `None`: nothing limits pulls.
    fn remaining(&self, state: &State, now: Instant) -> Option<(u64, u64)> {
        let configured = self
            .per_hour
            .map(|n| (n.saturating_sub(state.spent.len() as u64), n));
        let reported = state.reported.filter(|r| now < r.at + r.window).map(|r| {
            let since = state.spent.iter().filter(|&&t| t >= r.at).count() as u64;
            (r.remaining.saturating_sub(since), r.limit)
        });
        match (configured, reported) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The pulls background work leaves for clients: `pull_reserve`, else a fifth of the
    /// budget (at least one).
    fn reserve_of(&self, limit: u64) -> u64 {
        self.reserve.unwrap_or((limit / 5).max(1))
    }

    fn limit_and_window(&self, state: &State) -> (u64, Duration) {
        match (self.per_hour, state.reported) {
            (Some(n), _) => (n, HOUR),
            (None, Some(r)) => (r.limit, r.window),
            (None, None) => (0, HOUR),
        }
    }

    /// When the next pull frees up: the oldest pull of the hour leaving the window, or
    /// for a reported budget one pull's share of the upstream's window.
    fn refill_in(&self, state: &State, now: Instant) -> Duration {
        let configured = self
            .per_hour
            .filter(|&n| state.spent.len() as u64 >= n)
            .and_then(|_| state.spent.front())
            .map(|&oldest| (oldest + HOUR).saturating_duration_since(now));
        let reported = state
            .reported
            .filter(|r| r.limit > 0)
            .map(|r| r.window / u32::try_from(r.limit).unwrap_or(u32::MAX));
        configured
            .into_iter()
            .chain(reported)
            .max()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Takes in the upstream's own count (`ratelimit-limit`/`ratelimit-remaining`, with
    /// their `w=` window in seconds).
    pub fn observe(&self, limit: u64, remaining: u64, window: Option<Duration>) {
        let mut state = self.lock();
        state.reported = Some(Reported {
            limit,
            remaining,
            window: window.unwrap_or(HOUR),
            at: Instant::now(),
        });
    }

    /// The upstream answered 429: it is not asked for a pull again before `retry_in`
    /// (its `Retry-After`, else one pull's share of its window, else a minute).
    pub fn refused(&self, retry_in: Option<Duration>) -> Refusal {
        let mut state = self.lock();
        let share = state
            .reported
            .filter(|r| r.limit > 0)
            .map(|r| r.window / u32::try_from(r.limit).unwrap_or(u32::MAX));
        let wait = retry_in
            .or(share)
            .unwrap_or(Duration::from_secs(60))
            .max(Duration::from_secs(1));
        state.refused_until = Some(Instant::now() + wait);
        Refusal::Upstream { retry_in: wait }
    }

    /// Pulls left now, when anything limits them (for the gauge and the admin view).
    pub fn left(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.lock();
        state.prune(now);
        self.remaining(&state, now).map(|(left, _)| left)
    }
}

impl State {
    fn prune(&mut self, now: Instant) {
        while self
            .spent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= HOUR)
        {
            self.spent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clients_get_the_last_pulls_and_background_work_holds() {
        let budget = Budget::new(Some(10), None);
        // Nobody is waiting: background work may take all but the reserve (2 of 10).
        for _ in 0..8 {
            budget.spend(Priority::Background).unwrap();
        }
        assert!(matches!(
            budget.spend(Priority::Background),
            Err(Refusal::Held { .. })
        ));
        // Clients get the reserve, then a refusal that says when the oldest pull leaves.
        budget.spend(Priority::Client).unwrap();
        budget.spend(Priority::Client).unwrap();
        let refused = budget.spend(Priority::Client).unwrap_err();
        assert_eq!(
            refused,
            Refusal::Spent {
                limit: 10,
                window: HOUR,
                refill_in: HOUR
            }
        );
        assert!(refused.explain().contains("refills in about 3600 s"));
        tokio::time::advance(HOUR).await;
        assert_eq!(budget.left(), Some(10));
        // A client needed a pull a moment ago: background work holds, however much is left.
        budget.spend(Priority::Client).unwrap();
        assert!(budget.spend(Priority::Background).is_err());
        tokio::time::advance(CLIENT_HOLD).await;
        budget.spend(Priority::Background).unwrap();
        assert_eq!(budget.left(), Some(8));
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_report_and_its_429_are_taken_in() {
        let budget = Budget::new(None, None);
        assert!(!budget.active());
        budget.spend(Priority::Client).unwrap();
        // Docker Hub: 100 per 6 hours, 3 left.
        budget.observe(100, 3, Some(Duration::from_secs(21_600)));
        assert!(budget.active());
        for _ in 0..3 {
            budget.spend(Priority::Client).unwrap();
        }
        let refused = budget.spend(Priority::Client).unwrap_err();
        // One pull's share of the window: 216 s.
        assert_eq!(refused.wait(), Duration::from_secs(216));
        // A 429 with Retry-After stops every pull until then.
        let budget = Budget::new(Some(50), None);
        budget.refused(Some(Duration::from_secs(30)));
        assert!(matches!(
            budget.spend(Priority::Client),
            Err(Refusal::Upstream { .. })
        ));
        tokio::time::advance(Duration::from_secs(30)).await;
        budget.spend(Priority::Client).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_reserve_is_kept() {
        let budget = Budget::new(Some(10), Some(10));
        assert!(budget.spend(Priority::Background).is_err());
        let unlimited = Budget::new(None, None);
        for _ in 0..1000 {
            unlimited.spend(Priority::Background).unwrap();
        }
        assert_eq!(unlimited.left(), None);
    }
}
