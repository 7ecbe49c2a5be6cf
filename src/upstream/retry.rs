//! When to try an upstream request again, and after how long. Pure: the caller sleeps.
//!
//! Only requests that sent nothing to a client yet are retried (regcache's upstream
//! requests are all GET or HEAD, and a response is handed on only after its headers):
//! connection failures, 502/503/504, and 429, whose `Retry-After` (in seconds) is honoured
//! up to a cap; an upstream asking for a longer pause gets an answer at once instead.

use std::time::Duration;

use http::StatusCode;

/// The first pause; each retry doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The longest `Retry-After` waited for.
    pub max_retry_after: Duration,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp,
}

impl Backoff {
    /// After attempt number `attempt` (0 for the first) answered `status`, with
    /// `retry_after` as its `Retry-After` header, if any.
    pub fn after_status(
        &self,
        attempt: u32,
        status: StatusCode,
        retry_after: Option<&str>,
    ) -> Decision {
        if attempt >= self.retries || !retryable(status) {
            return Decision::GiveUp;
        }
        match retry_after.and_then(parse_retry_after) {
            Some(wait) if wait > self.max_retry_after => Decision::GiveUp,
            Some(wait) => Decision::RetryAfter(wait),
            None => Decision::RetryAfter(backoff(attempt)),
        }
    }

    /// After attempt number `attempt` failed to connect.
    pub fn after_connect_error(&self, attempt: u32) -> Decision {
        if attempt >= self.retries {
            return Decision::GiveUp;
        }
        Decision::RetryAfter(backoff(attempt))
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// 100 ms, 200 ms, 400 ms, ... capped at [`MAX_BACKOFF`].
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// `Retry-After` in delay-seconds. An HTTP date is not understood (`None`: back off instead).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        retries: 3,
        max_retry_after: Duration::from_secs(10),
    };

    fn ms(n: u64) -> Decision {
        Decision::RetryAfter(Duration::from_millis(n))
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let seen: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(seen, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn gateway_errors_and_429_are_retried_a_bounded_number_of_times() {
        for code in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(BACKOFF.after_status(0, status, None), ms(100), "{code}");
            assert_eq!(BACKOFF.after_status(2, status, None), ms(400), "{code}");
            assert_eq!(BACKOFF.after_status(3, status, None), Decision::GiveUp);
        }
        for code in [400, 401, 404, 500, 501] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(BACKOFF.after_status(0, status, None), Decision::GiveUp);
        }
        assert_eq!(BACKOFF.after_connect_error(1), ms(200));
        assert_eq!(BACKOFF.after_connect_error(3), Decision::GiveUp);
        let never = Backoff {
            retries: 0,
            ..BACKOFF
        };
        assert_eq!(never.after_connect_error(0), Decision::GiveUp);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let s = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(BACKOFF.after_status(0, s, Some("2")), ms(2000));
        assert_eq!(BACKOFF.after_status(0, s, Some(" 10 ")), ms(10_000));
        assert_eq!(BACKOFF.after_status(0, s, Some("11")), Decision::GiveUp);
        // A date is not understood: plain backoff.
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(BACKOFF.after_status(1, s, Some(date)), ms(200));
        assert_eq!(parse_retry_after("-1"), None);
    }
}
