//! One upstream registry: its HTTP client and the requests regcache sends it.
//!
//! Every request goes through [`Upstream::send`], which adds credentials, answers one
//! auth challenge, counts the request, and turns every non-2xx answer into an
//! [`UpstreamError`] so callers only ever see success or a classified failure.

use std::time::Duration;

use http::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use reqwest::Response;

use super::auth::Auth;
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
    metrics: Metrics,
}

/// What a request is for: the `kind` label of upstream metrics.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Manifest,
    Blob,
    Tags,
    Referrers,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Tags => "tags",
            Kind::Referrers => "referrers",
        }
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig, metrics: Metrics) -> Result<Upstream, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("regcache/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.idle_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Upstream {
            base: config.url.as_str().trim_end_matches('/').to_string(),
            auth: Auth::new(config.credentials.clone()),
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

    /// The repository name as this upstream knows it (`nginx` is `library/nginx` on Docker Hub).
    pub fn repository(&self, name: &RepoName) -> RepoName {
        if self.config.library_prefix {
            name.with_library_prefix()
        } else {
            name.clone()
        }
    }

    /// Sends `method` to `/v2/<name>/<path>` and returns a 2xx response, or the classified failure.
    /// `name` must already be the upstream's repository name.
    pub async fn send(
        &self,
        method: Method,
        kind: Kind,
        name: &RepoName,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response> {
        let url = format!("{}/v2/{}/{}", self.base, name, path);
        let scope = oci::scope_for_pull(name);
        let mut retried = false;
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(auth) = self
                .auth
                .header(&self.http, &scope)
                .await
                .map_err(|e| self.error(e))?
            {
                request = request.header(AUTHORIZATION, auth);
            }
            let result = request.send().await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            self.metrics
                .upstream_requests
                .with_label_values(&[self.name(), kind.as_str(), status_class(status)])
                .inc();
            let response = result.map_err(|e| self.error(classify(&e)))?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !retried {
                let challenges = challenges(response.headers());
                if self.auth.challenged(&challenges, &scope).await {
                    retried = true;
                    continue;
                }
            }
            return Err(self.error(failure(response).await));
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
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
