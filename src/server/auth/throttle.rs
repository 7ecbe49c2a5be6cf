//! How much bcrypt Basic logins may cost. bcrypt is slow on purpose, so a flood of wrong
//! passwords must not queue it without bound in front of everyone else's logins:
//!
//! - a few verifications run at once on the blocking pool (one per core);
//! - at most `max_pending_logins` wait for or run one, and each client address holds at
//!   most [`PENDING_PER_PEER`] of them, so one address cannot fill the queue;
//! - each address may fail `max_login_failures_per_min` times a minute (a bucket refilled
//!   evenly); an address past it gets no verification until the bucket refills.
//!
//! A refusal is a [`Refusal`] saying how long to wait. Remembering results, and knowing
//! which logins need no verification at all, is `auth`'s business.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Logins of one client address waiting for or running a verification at once.
pub const PENDING_PER_PEER: usize = 4;
/// Addresses whose failures are remembered at once; the least recent are forgotten.
const PEERS_MAX: u64 = 100_000;
/// When the queue is full, come back after this long.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Why a login got no verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many logins wait for bcrypt (in all, or from this address).
    Busy(Duration),
    /// This address failed too often lately.
    Throttled(Duration),
}

/// What one client address did lately.
struct Peer {
    /// Failures it may still have before it is throttled; refills with time.
    allowance: f64,
    refilled: Instant,
    pending: usize,
}

pub struct Throttle {
    slots: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
    /// Failures allowed per minute, which is also the burst.
    per_min: f64,
    peers: moka::sync::Cache<IpAddr, Arc<Mutex<Peer>>>,
}

/// A login admitted to wait for a verification; leaving it (dropped, or the client's
/// request dropped with it) frees its place in the queue.
pub struct Ticket<'a> {
    throttle: &'a Throttle,
    peer: Arc<Mutex<Peer>>,
}

impl Throttle {
    pub fn new(max_pending: usize, failures_per_min: u32) -> Throttle {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Throttle {
            slots: Arc::new(Semaphore::new(slots)),
            pending: AtomicUsize::new(0),
            max_pending,
            per_min: f64::from(failures_per_min),
            peers: moka::sync::Cache::builder()
                .max_capacity(PEERS_MAX)
                // Idle this long, an address's allowance is full again: forgetting it is
                // the same as keeping it.
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    /// Lets a login from `peer` wait for a verification, or says how long to wait.
    pub fn admit(&self, peer: IpAddr) -> Result<Ticket<'_>, Refusal> {
        let entry = self.peers.get_with(key(peer), || {
            Arc::new(Mutex::new(Peer {
                allowance: self.per_min,
                refilled: Instant::now(),
                pending: 0,
            }))
        });
        {
            let mut state = lock(&entry);
            self.refill(&mut state);
            if state.allowance < 1.0 {
                let secs = (1.0 - state.allowance) * 60.0 / self.per_min;
                return Err(Refusal::Throttled(Duration::from_secs_f64(secs)));
            }
            if state.pending >= PENDING_PER_PEER {
                return Err(Refusal::Busy(BUSY_RETRY));
            }
            if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Busy(BUSY_RETRY));
            }
            state.pending += 1;
        }
        Ok(Ticket {
            throttle: self,
            peer: entry,
        })
    }

    fn refill(&self, state: &mut Peer) {
        let now = Instant::now();
        let minutes = now.duration_since(state.refilled).as_secs_f64() / 60.0;
        state.allowance = (state.allowance + minutes * self.per_min).min(self.per_min);
        state.refilled = now;
    }
}

impl Ticket<'_> {
    /// Waits for a verification slot; the permit is meant to move into the blocking task,
    /// so a slot stays taken while bcrypt runs even if the request is dropped meanwhile.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.throttle
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Counts a failed verification against the client's address.
    pub fn failed(&self) {
        let mut state = lock(&self.peer);
        self.throttle.refill(&mut state);
        state.allowance -= 1.0;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.peer).pending -= 1;
        self.throttle.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock(peer: &Mutex<Peer>) -> std::sync::MutexGuard<'_, Peer> {
    peer.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a failure is counted against: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64 and can pick any address in it).
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn failures_use_up_an_allowance_that_refills_evenly() {
        let throttle = Throttle::new(32, 6);
        for _ in 0..6 {
            throttle.admit(ip("10.0.0.1")).unwrap().failed();
        }
        let Err(Refusal::Throttled(wait)) = throttle.admit(ip("10.0.0.1")) else {
            panic!("the seventh failure in a minute is refused");
        };
        assert_eq!(
            wait,
            Duration::from_secs(10),
            "one failure per 10 s comes back"
        );
        assert!(
            throttle.admit(ip("10.0.0.2")).is_ok(),
            "others are not affected"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(throttle.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn one_address_holds_a_few_places_and_the_queue_is_bounded() {
        let throttle = Throttle::new(6, 10);
        let mine: Vec<Ticket> = (0..PENDING_PER_PEER)
            .map(|_| throttle.admit(ip("10.0.0.1")).unwrap())
            .collect();
        let refused = throttle.admit(ip("10.0.0.1")).err();
        assert_eq!(refused, Some(Refusal::Busy(BUSY_RETRY)));
        let theirs: Vec<Ticket> = (0..2)
            .map(|_| throttle.admit(ip("10.0.0.2")).unwrap())
            .collect();
        assert!(throttle.admit(ip("10.0.0.3")).is_err(), "the queue is full");
        drop(theirs);
        assert!(throttle.admit(ip("10.0.0.3")).is_ok());
        drop(mine);
        assert_eq!(throttle.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
