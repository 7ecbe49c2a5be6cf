//! One upstream registry: its HTTP client and the requests regcache sends it.
//!
//! Every request goes through [`Upstream::send`], which refuses at once when the upstream
//! is offline, waits for one of the upstream's request permits, adds credentials, answers
//! one auth challenge, follows a blob's redirects (see `redirect`), retries what may be
//! retried (see `retry`), counts the request, and turns every non-2xx answer into an
//! [`UpstreamError`] so callers only ever see success or a classified failure.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, StatusCode};
use reqwest::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::Auth;
use super::bandwidth::{Bandwidth, Lane};
use super::budget::{Budget, Priority, Refusal};
use super::credentials::CredentialSource;
use super::parents::{Asked, Parents};
use super::ratelimit;
use super::reach::{Guarded, Reach};
use super::realm::Realms;
use super::redirect::{self, Hop, Stop};
use super::resource::{Kind, Resource};
use super::retry::{Backoff, Decision};
use crate::config::UpstreamConfig;
use crate::error::{Error, Result, UpstreamError};
use crate::metrics::{status_class, Metrics};
use crate::oci::{self, RepoName};

/// The largest manifest regcache accepts (the distribution spec's own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// How much of an error body is read to find its OCI error code.
const MAX_ERROR_BODY: usize = 64 << 10;

pub struct Upstream {
    config: UpstreamConfig,
    base: String,
    http: reqwest::Client,
    auth: Auth,
    /// Where the client may connect besides the upstream (redirects, token realms).
    reach: Arc<Reach>,
    /// One per request in flight (body included): `max_concurrent_requests`.
    permits: Arc<Semaphore>,
    backoff: Backoff,
    /// Regcaches asked before the registry (`parents`).
    parents: Parents,
    /// Manifest GETs (pulls) allowed, planned by priority.
    budget: Budget,
    /// `max_bytes_per_second`, shared by every blob fill from this upstream.
    bandwidth: Option<Bandwidth>,
    metrics: Metrics,
}

/// A 2xx answer from upstream. It holds one of the upstream's request permits until it is
/// dropped (or its body stream ends), so the concurrency cap covers body transfers too.
pub struct Answer {
    response: Response,
    _permit: OwnedSemaphorePermit,
}

impl Deref for Answer {
    type Target = Response;

    fn deref(&self) -> &Response {
        &self.response
    }
}

impl DerefMut for Answer {
    fn deref_mut(&mut self) -> &mut Response {
        &mut self.response
    }
}

impl Answer {
    /// The body as a stream; the permit is released when the stream is dropped.
    pub fn bytes_stream(self) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
        let permit = self._permit;
        self.response.bytes_stream().map(move |chunk| {
            let _held = &permit;
            chunk
        })
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig, metrics: Metrics) -> Result<Upstream, reqwest::Error> {
        let reach = Arc::new(Reach::new(&config.url, &config.token_realm_hosts));
        // HTTP(S)_PROXY, ALL_PROXY and NO_PROXY are read from the environment by reqwest.
        // Redirects are followed by `send_with`, for blobs only.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Guarded(reach.clone())))
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.idle_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true);
        if let Some(pem) = &config.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build()?;
        let ns = config.implied_names().swap_remove(0);
        let parents = Parents::new(
            &config.parents,
            ns,
            &config.name,
            config.idle_timeout,
            metrics.parent_requests.clone(),
        )?;
        Ok(Upstream {
            parents,
            budget: Budget::new(config.pulls_per_hour, config.pull_reserve),
            bandwidth: config.max_bytes_per_second.map(Bandwidth::new),
            base: config.url.as_str().trim_end_matches('/').to_string(),
            auth: Auth::new(
                CredentialSource::from_config(&config),
                Realms::new(&config, reach.clone()),
            ),
            reach,
            permits: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            backoff: Backoff {
                retries: config.retries,
                max_retry_after: config.max_retry_after,
            },
            config,
            http,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends `method` to `/v2/<name>/<path>` and returns a 2xx answer, or the classified failure.
    /// `name` must already be the upstream's repository name. A manifest GET (a pull) is
    /// sent only when the pull budget allows it for `priority`.
    pub async fn send(
        &self,
        method: Method,
        name: &RepoName,
        resource: Resource<'_>,
        accept: Option<&str>,
        priority: Priority,
    ) -> Result<Answer> {
        self.send_with(method, name, resource, accept, None, priority)
            .await
    }

    /// Whether this upstream's pulls are budgeted (configured, or reported by it): then a
    /// tag is asked with a free HEAD before any GET.
    pub fn budgeted(&self) -> bool {
        let hub = crate::config::is_docker_hub(self.config.url.host_str().unwrap_or_default());
        hub || self.budget.active()
    }

    /// Pulls left in the budget, when there is one.
    pub fn pulls_left(&self) -> Option<u64> {
        self.budget.left()
    }

    /// A fill's share of `max_bytes_per_second`, when this upstream has a cap.
    pub fn lane(&self, priority: Priority) -> Option<Lane<'_>> {
        self.bandwidth.as_ref().map(|b| b.lane(priority))
    }

    /// Waits until `bytes` more of a fill may be read from this upstream.
    pub async fn pace(&self, lane: Option<&Lane<'_>>, bytes: usize) {
        let Some(lane) = lane else { return };
        let waited = lane.take(bytes).await;
        if !waited.is_zero() {
            self.metrics
                .upstream_paced
                .with_label_values(&[self.name(), lane.priority().as_str()])
                .inc_by(waited.as_secs_f64());
        }
    }

    /// The parent mirror answered 429 (its budget, shared with this node's address most
    /// likely, is spent): passed on with its wait, not worked around at the registry.
    async fn parent_out_of_pulls(&self, response: Response) -> Error {
        let wait = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::retry::parse_retry_after)
            .unwrap_or(Duration::from_secs(60));
        let said = match failure(response).await {
            UpstreamError::Status {
                message: Some(m), ..
            } => m,
            other => other.to_string(),
        };
        self.error(UpstreamError::Budget {
            message: format!("the parent mirror is out of pulls: {said}"),
            wait,
        })
    }

    fn report_budget(&self) {
        if let Some(left) = self.budget.left() {
            self.metrics
                .pull_budget_remaining
                .with_label_values(&[self.name()])
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
    }

    /// A pull not sent (or refused by the upstream), as the client's clear 429.
    fn budget_error(&self, refusal: Refusal, priority: Priority) -> Error {
        self.metrics
            .pull_budget_refusals
            .with_label_values(&[self.name(), priority.as_str()])
            .inc();
        self.report_budget();
        self.error(UpstreamError::Budget {
            message: refusal.explain(),
            wait: refusal.wait(),
        })
    }

    /// GETs `/v2/<name>/<path>` from byte `from` on, to resume a download that was cut.
    /// The caller checks that the answer is the 206 it asked for.
    pub async fn resume(
        &self,
        name: &RepoName,
        resource: Resource<'_>,
        from: u64,
    ) -> Result<Answer> {
        let priority = Priority::Client;
        self.send_with(Method::GET, name, resource, None, Some(from), priority)
            .await
    }

    async fn send_with(
        &self,
        method: Method,
        name: &RepoName,
        resource: Resource<'_>,
        accept: Option<&str>,
        range_from: Option<u64>,
        priority: Priority,
    ) -> Result<Answer> {
        if self.config.offline {
            self.metrics
                .offline_misses
                .with_label_values(&[self.name()])
                .inc();
            let by_digest = resource.by_digest();
            return Err(self.error(UpstreamError::Offline { by_digest }));
        }
        let kind = resource.kind();
        let url = format!("{}/v2/{}/{}", self.base, name, resource.path());
        let scope = oci::scope_for_pull(name);
        let range =
            range_from.map(|from| HeaderValue::try_from(format!("bytes={from}-")).expect("digits"));
        if !self.parents.is_empty() {
            let permit = self.permit().await;
            let path = format!("{}/{}", name, resource.path());
            if let Asked::Answer(response) = self
                .parents
                .send(&method, &path, accept, range.as_ref())
                .await
            {
                if response.status().is_success() {
                    return Ok(Answer {
                        response,
                        _permit: permit,
                    });
                }
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    return Err(self.parent_out_of_pulls(response).await);
                }
                return Err(self.error(failure(response).await));
            }
        }
        // A parent's answer costs the registry nothing; from here on a manifest GET is a pull.
        let pull = method == Method::GET && kind == Kind::Manifest;
        if pull {
            self.budget
                .spend(priority)
                .map_err(|refusal| self.budget_error(refusal, priority))?;
            self.report_budget();
        }
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            let permit = self.permit().await;
            let mut request = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(range) = &range {
                request = request.header(RANGE, range.clone());
            }
            let sent = self
                .auth
                .header(&self.http, &scope)
                .await
                .map_err(|e| self.error(e))?;
            if let Some(sent) = &sent {
                request = request.header(AUTHORIZATION, sent.value.clone());
            }
            let hop = Hop {
                method: &method,
                authorization: sent.as_ref().map(|s| &s.value),
                range: range.as_ref(),
            };
            if pull {
                self.metrics
                    .upstream_pulls
                    .with_label_values(&[self.name()])
                    .inc();
            }
            let began = std::time::Instant::now();
            let result = self.exchange(request, kind, hop).await;
            self.metrics
                .upstream_duration
                .with_label_values(&[self.name(), kind.as_str()])
                .observe(began.elapsed().as_secs_f64());
            let status = result.as_ref().ok().map(|(r, _)| r.status().as_u16());
            self.metrics
                .upstream_requests
                .with_label_values(&[self.name(), kind.as_str(), status_class(status)])
                .inc();
            let (response, followed) = match result {
                Ok(answered) => answered,
                Err(Stop::Refused(cause)) => return Err(self.error(cause)),
                Err(Stop::Transport(e)) => {
                    drop(permit);
                    match self.backoff.after_connect_error(attempt) {
                        Decision::RetryAfter(wait) if e.is_connect() => {
                            self.pause(wait, attempt).await;
                            attempt += 1;
                            continue;
                        }
                        _ => return Err(self.error(classify(&e))),
                    }
                }
            };
            ratelimit::observe(response.headers(), &self.metrics, self.name(), &self.budget);
            let status = response.status();
            if status.is_success() {
                return Ok(Answer {
                    response,
                    _permit: permit,
                });
            }
            // A challenge from where a redirect led is not the upstream's to learn from.
            if status == StatusCode::UNAUTHORIZED && !challenged && !followed {
                let challenges = challenges(response.headers());
                if self
                    .auth
                    .challenged(&challenges, &scope, sent.as_ref())
                    .await
                {
                    challenged = true;
                    continue;
                }
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            // The registry's pull limit: asking again only spends more of it. Clients get
            // the budget's 429, which says when to come back, not the registry's.
            if status == StatusCode::TOO_MANY_REQUESTS && kind == Kind::Manifest {
                let wait = retry_after.and_then(super::retry::parse_retry_after);
                let refusal = self.budget.refused(wait);
                return Err(self.budget_error(refusal, priority));
            }
            if let Decision::RetryAfter(wait) =
                self.backoff.after_status(attempt, status, retry_after)
            {
                drop((response, permit));
                self.pause(wait, attempt).await;
                attempt += 1;
                continue;
            }
            return Err(self.error(failure(response).await));
        }
    }

    /// Sends one request. A blob's redirects are followed (`followed` is then true); any
    /// other redirect is refused, never passed on.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        kind: Kind,
        hop: Hop<'_>,
    ) -> Result<(Response, bool), Stop> {
        let response = request.send().await.map_err(Stop::Transport)?;
        if !redirect::is_redirect(response.status()) {
            return Ok((response, false));
        }
        if !matches!(kind, Kind::Blob) || !matches!(*hop.method, Method::GET | Method::HEAD) {
            return Err(Stop::Refused(redirect::not_followed(&response)));
        }
        redirect::follow(&self.http, &self.reach, &self.config.url, hop, response)
            .await
            .map(|response| (response, true))
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the permits are never closed")
    }

    async fn pause(&self, wait: Duration, attempt: u32) {
        tracing::debug!(
            upstream = self.name(),
            attempt,
            wait_ms = wait.as_millis() as u64,
            "retrying upstream"
        );
        self.metrics
            .upstream_retries
            .with_label_values(&[self.name()])
            .inc();
        tokio::time::sleep(wait).await;
    }

    /// Whether the registry answers at all (`GET /v2/`: any status will do, 401 included);
    /// the transport error when it does not. For the startup check.
    pub async fn reachable(&self) -> Result<(), String> {
        let url = format!("{}/v2/", self.base);
        let limit = self.config.connect_timeout + Duration::from_secs(5);
        match self.http.get(url).timeout(limit).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e).to_string()),
        }
    }

    pub fn error(&self, cause: UpstreamError) -> Error {
        Error::upstream(self.name(), cause)
    }

    pub fn count_bytes(&self, n: u64) {
        self.metrics
            .upstream_bytes
            .with_label_values(&[self.name()])
            .inc_by(n);
    }
}

fn challenges(headers: &HeaderMap) -> Vec<oci::Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(oci::parse_challenges)
        .collect()
}

/// Classifies a transport error (no HTTP answer).
pub fn classify(e: &reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout(if e.is_connect() {
            "connecting"
        } else {
            "waiting for data"
        })
    } else if e.is_connect() {
        UpstreamError::Unreachable(error_chain(e))
    } else if e.is_body() || e.is_decode() {
        UpstreamError::Invalid(error_chain(e))
    } else {
        UpstreamError::Unreachable(error_chain(e))
    }
}

/// reqwest's Display hides the cause (DNS, refused, TLS); operators need it.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        if is_tls(s) {
            text.push_str("TLS handshake failed: ");
        }
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// rustls's messages ("invalid peer certificate: UnknownIssuer") do not say TLS, and
/// its errors arrive inside an `io::Error`, whose `source()` skips them.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<tokio_rustls::rustls::Error>() {
        return true;
    }
    // io::Error(Other) -> io::Error(InvalidData) -> rustls::Error, as reqwest wraps it.
    let wrapped = e.downcast_ref::<std::io::Error>();
    wrapped
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| is_tls(inner))
}

/// Reads a non-2xx answer into an error, keeping upstream's OCI error code when it sent one.
async fn failure(mut response: Response) -> UpstreamError {
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return UpstreamError::Refused { status };
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let (code, message) = match oci::parse_error_body(&body) {
        Some((code, message)) => (Some(code), Some(message)),
        None => (None, None),
    };
    UpstreamError::Status {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn upstream_with_ca(pem: &str) -> Result<Upstream, reqwest::Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        let text = format!(
            "[[upstream]]\nurl = \"https://registry.internal\"\nca_file = \"{}\"\n",
            path.display()
        );
        let config = Config::parse(&text, "test", &Overrides::default()).unwrap();
        Upstream::new(config.upstreams[0].clone(), Metrics::new())
    }

    #[test]
    fn a_ca_file_is_added_to_the_trusted_roots() {
        // A self-signed CA generated for this test (openssl req -x509, P-256).
        let pem = include_str!("../../tests/data/test-ca.pem");
        assert!(upstream_with_ca(pem).is_ok());
        let broken = pem.replace("MII", "!!!");
        assert!(upstream_with_ca(&broken).is_err());
    }
}
