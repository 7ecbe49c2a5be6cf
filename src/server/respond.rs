//! The one place where an error becomes a response, a log line and a metric.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use super::auth;
use super::body::{full, Body};
use crate::error::{Error, Fault, UpstreamError};
use crate::metrics::Metrics;
use crate::oci::{error_body, ErrorCode};

pub const API_VERSION: &str = "docker-distribution-api-version";
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Answers `error` with an OCI error body. `missing` is the code a bare 404 gets.
/// A 401 is always this mirror's own refusal (upstream's become 403), so it carries
/// the challenge that makes clients send their credentials. A throttled client is told
/// when to come back (`Retry-After`, whole seconds).
pub fn error(metrics: &Metrics, error: &Error, missing: ErrorCode) -> Response<Body> {
    let (status, code) = error.status_and_code(missing);
    log(error, status);
    metrics
        .errors
        .with_label_values(&[error.fault().as_str(), status.as_str()])
        .inc();
    let mut response = oci_error(status, code, &error.client_message());
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(auth::CHALLENGE));
    }
    if let Error::Unsatisfiable { total } = error {
        let range = crate::oci::unsatisfied_content_range(*total);
        let value = HeaderValue::try_from(range).expect("a range is header-safe");
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    if let Some(wait) = error.retry_after() {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// An OCI error body with its status.
fn oci_error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let body = error_body(code, message);
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(API_VERSION, HeaderValue::from_static("registry/2.0"))
        .body(full(body))
        .expect("static headers are valid")
}

/// Client mistakes and plain misses are routine; upstream trouble is a warning;
/// a local fault needs an operator.
fn log(error: &Error, status: StatusCode) {
    match error.fault() {
        Fault::Client => tracing::debug!(%status, error = %error, "request refused"),
        Fault::Upstream if error.is_not_found() => {
            tracing::debug!(%status, error = %error, "not found upstream")
        }
        Fault::Upstream
            if matches!(
                error,
                Error::Upstream {
                    cause: UpstreamError::Offline { .. },
                    ..
                }
            ) =>
        {
            tracing::debug!(%status, error = %error, "offline miss")
        }
        Fault::Upstream => match error {
            Error::Upstream {
                cause: UpstreamError::DigestMismatch { .. },
                ..
            } => tracing::error!(%status, error = %error, "upstream sent corrupt content"),
            _ => tracing::warn!(%status, error = %error, "upstream failed"),
        },
        Fault::Local => tracing::error!(%status, error = %error, "local fault"),
    }
}
