//! Where an upstream's username and password come from: the config (fixed), a Docker
//! credential helper, or Amazon ECR's `GetAuthorizationToken`. The last two are fetched
//! when first needed, kept until shortly before they expire (or for the helper's TTL), and
//! dropped when upstream refuses them. One fetch at a time per upstream: concurrent
//! requests during a refresh wait for it and share its answer.
//!
//! Time is `tokio::time`, so the refresh logic is tested with the clock paused.

use std::future::Future;
use std::time::Duration;

use futures_util::future::{self, BoxFuture, FutureExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::helper::Helper;
use crate::config::{Credentials, UpstreamConfig};
use crate::error::UpstreamError;

/// Credentials as sent, with the generation that lets a 401 drop exactly those.
#[derive(Clone, Debug)]
pub struct Current {
    pub credentials: Credentials,
    pub generation: u64,
}

/// The kinds of source; fetched ones sit behind a [`Refreshing`] cache.
pub enum CredentialSource {
    Anonymous,
    Fixed(Credentials),
    Helper(Helper, Refreshing),
    #[cfg(feature = "ecr")]
    Ecr(super::ecr::Ecr, Refreshing),
}

impl CredentialSource {
    pub fn from_config(config: &UpstreamConfig) -> CredentialSource {
        #[cfg(feature = "ecr")]
        if let Some(ecr) = &config.ecr {
            return CredentialSource::Ecr(super::ecr::Ecr::new(ecr.clone()), Refreshing::default());
        }
        if let Some(name) = &config.credential_helper {
            return CredentialSource::Helper(
                Helper::new(name, server_url(config), config.credential_helper_ttl),
                Refreshing::default(),
            );
        }
        match &config.credentials {
            Some(c) => CredentialSource::Fixed(c.clone()),
            None => CredentialSource::Anonymous,
        }
    }

    /// Whether there may be credentials to send (a helper may still answer "none").
    pub fn is_some(&self) -> bool {
        !matches!(self, CredentialSource::Anonymous)
    }

    /// The credentials to send now, fetching them if none are fresh. Boxed: the fetches
    /// are deep futures, and every upstream request awaits this one.
    pub fn get(&self) -> BoxFuture<'_, Result<Option<Current>, UpstreamError>> {
        match self {
            CredentialSource::Anonymous => future::ready(Ok(None)).boxed(),
            CredentialSource::Fixed(c) => future::ready(Ok(Some(Current {
                credentials: c.clone(),
                generation: 0,
            })))
            .boxed(),
            CredentialSource::Helper(helper, cache) => cache.get(|| helper.fetch()).boxed(),
            #[cfg(feature = "ecr")]
            CredentialSource::Ecr(ecr, cache) => cache.get(|| ecr.fetch()).boxed(),
        }
    }

    /// Upstream refused the credentials of `generation`: fetch new ones next time.
    pub async fn rejected(&self, generation: u64) {
        match self {
            CredentialSource::Anonymous | CredentialSource::Fixed(_) => {}
            CredentialSource::Helper(_, cache) => cache.rejected(generation).await,
            #[cfg(feature = "ecr")]
            CredentialSource::Ecr(_, cache) => cache.rejected(generation).await,
        }
    }
}

/// What a helper is asked for: the registry as `docker login` names it.
fn server_url(config: &UpstreamConfig) -> String {
    let host = config.url.host_str().unwrap_or_default();
    if crate::config::DOCKER_HUB_NAMES.contains(&host) {
        return "https://index.docker.io/v1/".to_string();
    }
    match config.url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Fetched credentials (or the answer "none") and when to fetch again.
struct Held {
    credentials: Option<Credentials>,
    refresh_at: Instant,
    generation: u64,
}

/// A single-flight cache of one fetched credential.
#[derive(Default)]
pub struct Refreshing {
    /// Held across a fetch: that is what makes concurrent callers wait for one fetch.
    held: Mutex<Option<Held>>,
    generations: std::sync::atomic::AtomicU64,
}

/// How long before its expiry a credential is replaced: a tenth of its life, at most
/// ten minutes (ECR's 12-hour tokens are renewed 10 minutes early).
pub fn refresh_margin(valid_for: Duration) -> Duration {
    (valid_for / 10).min(Duration::from_secs(600))
}

impl Refreshing {
    /// The held credentials if still fresh, else those `fetch` returns with how long they
    /// are valid. A failed fetch is not cached: the next request tries again.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Option<Current>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Option<Credentials>, Duration), UpstreamError>>,
    {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref().filter(|h| Instant::now() < h.refresh_at) {
            return Ok(current(h));
        }
        let (credentials, valid_for) = fetch().await?;
        let generation = 1 + self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = held.insert(Held {
            credentials,
            refresh_at: Instant::now() + valid_for.saturating_sub(refresh_margin(valid_for)),
            generation,
        });
        Ok(current(h))
    }

    /// Forgets the held credentials if they are still those of `generation`, so that
    /// several requests refused with the same credentials cause one new fetch.
    pub async fn rejected(&self, generation: u64) {
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|h| h.generation == generation) {
            *held = None;
        }
    }
}

fn current(h: &Held) -> Option<Current> {
    h.credentials.as_ref().map(|c| Current {
        credentials: c.clone(),
        generation: h.generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const HOUR: Duration = Duration::from_secs(3600);

    fn creds(password: &str) -> Credentials {
        Credentials {
            username: "AWS".into(),
            password: password.into(),
        }
    }

    /// A fetch that counts its calls and answers `pw<n>`, valid for 12 hours.
    async fn fetch(calls: &AtomicUsize) -> Result<(Option<Credentials>, Duration), UpstreamError> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((Some(creds(&format!("pw{n}"))), 12 * HOUR))
    }

    async fn password(cache: &Refreshing, calls: &AtomicUsize) -> String {
        let current = cache.get(|| fetch(calls)).await.unwrap().unwrap();
        current.credentials.password
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_are_refreshed_before_they_expire() {
        let (cache, calls) = (Refreshing::default(), AtomicUsize::new(0));
        assert_eq!(password(&cache, &calls).await, "pw1");
        tokio::time::advance(11 * HOUR).await;
        assert_eq!(password(&cache, &calls).await, "pw1", "still fresh");
        // 12 h minus the 10 minute margin has passed: renewed before the expiry.
        tokio::time::advance(HOUR - Duration::from_secs(599)).await;
        assert_eq!(password(&cache, &calls).await, "pw2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_drops_only_the_credentials_it_names() {
        let (cache, calls) = (Refreshing::default(), AtomicUsize::new(0));
        let first = cache.get(|| fetch(&calls)).await.unwrap().unwrap();
        cache.rejected(first.generation).await;
        assert_eq!(password(&cache, &calls).await, "pw2");
        // A late 401 for the old credentials does not throw the new ones away.
        cache.rejected(first.generation).await;
        assert_eq!(password(&cache, &calls).await, "pw2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_during_a_refresh_make_one_fetch() {
        let cache = Arc::new(Refreshing::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, calls, barrier) = (cache.clone(), calls.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    password(&cache, &calls).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), "pw1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_is_not_cached() {
        let cache = Refreshing::default();
        let failed = cache
            .get(|| async { Err(UpstreamError::Token("down".into())) })
            .await;
        assert!(failed.is_err());
        let calls = AtomicUsize::new(0);
        assert_eq!(password(&cache, &calls).await, "pw1");
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_life_up_to_ten_minutes() {
        assert_eq!(refresh_margin(12 * HOUR), Duration::from_secs(600));
        assert_eq!(
            refresh_margin(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
    }
}
