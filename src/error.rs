//! The daemon's error type: what went wrong and where (the client, an upstream, or this host).
//!
//! The source decides the status: client mistakes are 4xx, upstream failures 502/504 (or
//! upstream's own 4xx passed through), local faults 500. Turning an error into a response,
//! a log line and a metric happens in one place only: `server::respond`.

use std::io;
use std::time::Duration;

use http::StatusCode;

use crate::oci::{Digest, ErrorCode};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong or asks for something that does not exist.
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: ErrorCode,
        message: String,
    },
    /// The client must slow down before asking again: 429 with `Retry-After`.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: Duration,
    },
    /// A range past the end of the blob: 416 with the blob's length in `Content-Range`.
    #[error("range not satisfiable: the blob has {total} bytes")]
    Unsatisfiable { total: u64 },
    /// An upstream registry failed or refused.
    #[error("upstream {upstream}: {cause}")]
    Upstream {
        upstream: String,
        cause: UpstreamError,
    },
    /// A fault on this host (disk, task panic).
    #[error("{context}: {source}")]
    Local {
        context: &'static str,
        source: io::Error,
    },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Upstream answered with an error status; its OCI error code is kept to pass through.
    #[error("answered {status}{}", fmt_code(.code, .message))]
    Status {
        status: StatusCode,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("refused access ({status}); check the upstream's credentials")]
    Refused { status: StatusCode },
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("sent bytes with digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("body ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    /// A blob body (or its announced length) went past what it may be.
    #[error("sent a blob of more than {limit} bytes, the {bound}")]
    TooLarge { limit: u64, bound: &'static str },
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error("token service: {0}")]
    Token(String),
    /// A redirect regcache would not follow; never passed on to the client.
    #[error("redirect not followed: {0}")]
    Redirect(String),
    /// The upstream is configured offline and what was asked is not cached.
    #[error("is offline (offline = true) and this is not in the cache")]
    Offline { by_digest: bool },
    /// A credential helper or the ECR API could not give credentials.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The pull budget (`upstream::budget`) stopped a manifest GET; nothing was sent.
    #[error("{message}")]
    Budget { message: String, wait: Duration },
}

// A fill's failure reaches every client of that fill, so errors must be copyable.
impl Clone for Error {
    fn clone(&self) -> Error {
        match self {
            Error::Client {
                status,
                code,
                message,
            } => Error::Client {
                status: *status,
                code: *code,
                message: message.clone(),
            },
            Error::Throttled {
                message,
                retry_after,
            } => Error::Throttled {
                message: message.clone(),
                retry_after: *retry_after,
            },
            Error::Unsatisfiable { total } => Error::Unsatisfiable { total: *total },
            Error::Upstream { upstream, cause } => Error::Upstream {
                upstream: upstream.clone(),
                cause: cause.clone(),
            },
            Error::Local { context, source } => Error::Local {
                context,
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

fn fmt_code(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" {c}: {m}"),
        (Some(c), None) => format!(" {c}"),
        _ => String::new(),
    }
}

/// Where an error came from, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Local,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Local => "local",
        }
    }
}

impl Error {
    pub fn client(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Client {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::client(StatusCode::NOT_FOUND, code, message)
    }

    pub fn throttled(message: impl Into<String>, retry_after: Duration) -> Error {
        Error::Throttled {
            message: message.into(),
            retry_after,
        }
    }

    /// How long the client should wait before asking again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after, .. } => Some(*retry_after),
            Error::Upstream {
                cause: UpstreamError::Budget { wait, .. },
                ..
            } => Some(*wait),
            _ => None,
        }
    }

    pub fn upstream(upstream: &str, cause: UpstreamError) -> Error {
        Error::Upstream {
            upstream: upstream.to_string(),
            cause,
        }
    }

    pub fn local(context: &'static str, source: io::Error) -> Error {
        Error::Local { context, source }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Error::Client { .. } | Error::Throttled { .. } | Error::Unsatisfiable { .. } => {
                Fault::Client
            }
            Error::Upstream { .. } => Fault::Upstream,
            Error::Local { .. } => Fault::Local,
        }
    }

    /// True when upstream said the thing does not exist (a normal miss, not a fault).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Client { status, .. } => *status == StatusCode::NOT_FOUND,
            Error::Upstream {
                cause: UpstreamError::Status { status, .. },
                ..
            } => *status == StatusCode::NOT_FOUND,
            Error::Upstream {
                cause: UpstreamError::Offline { by_digest },
                ..
            } => *by_digest,
            _ => false,
        }
    }

    /// True when upstream could not answer for now (429, 5xx, timeout, unreachable): the
    /// failures a cached answer may stand in for. Refusals and 4xx are not among them.
    pub fn is_upstream_unavailable(&self) -> bool {
        match self {
            Error::Upstream { cause, .. } => match cause {
                UpstreamError::Status { status, .. } => {
                    *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
                }
                UpstreamError::Timeout(_)
                | UpstreamError::Unreachable(_)
                | UpstreamError::Budget { .. } => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// Status and OCI code for the client. `missing` is the code for a 404 without one
    /// (`MANIFEST_UNKNOWN` or `BLOB_UNKNOWN`, depending on what was asked).
    pub fn status_and_code(&self, missing: ErrorCode) -> (StatusCode, ErrorCode) {
        match self {
            Error::Client { status, code, .. } => (*status, *code),
            Error::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
            Error::Unsatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
            }
            Error::Local { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
            Error::Upstream { cause, .. } => match cause {
                UpstreamError::Status { status, code, .. } => {
                    upstream_status(*status, code.as_deref(), missing)
                }
                UpstreamError::Refused { .. } => (StatusCode::FORBIDDEN, ErrorCode::Denied),
                UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable),
                UpstreamError::Budget { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
                }
                // A digest names content exactly: offline, not having it is a plain 404.
                UpstreamError::Offline { by_digest: true } => (StatusCode::NOT_FOUND, missing),
                UpstreamError::Offline { by_digest: false } => {
                    (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
                }
                UpstreamError::Unreachable(_)
                | UpstreamError::DigestMismatch { .. }
                | UpstreamError::Truncated { .. }
                | UpstreamError::TooLarge { .. }
                | UpstreamError::Invalid(_)
                | UpstreamError::Token(_)
                | UpstreamError::Redirect(_)
                | UpstreamError::Credentials(_) => {
                    (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable)
                }
            },
        }
    }

    /// The message for the client's OCI error body. Upstream errors name the upstream.
    pub fn client_message(&self) -> String {
        match self {
            // Upstream's own 4xx explanation passes through; a 5xx is named as upstream's.
            Error::Upstream {
                cause:
                    UpstreamError::Status {
                        status,
                        message: Some(m),
                        ..
                    },
                ..
            } if status.is_client_error() => m.clone(),
            Error::Local { context, .. } => format!("internal error: {context}"),
            other => other.to_string(),
        }
    }
}

/// Upstream's 4xx pass through with its code; 5xx become 502; 429 stays 429.
fn upstream_status(
    status: StatusCode,
    code: Option<&str>,
    missing: ErrorCode,
) -> (StatusCode, ErrorCode) {
    let passed = code.and_then(ErrorCode::from_wire);
    match status.as_u16() {
        404 => (StatusCode::NOT_FOUND, passed.unwrap_or(missing)),
        429 => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
        400..=499 => (status, passed.unwrap_or(ErrorCode::Unknown)),
        _ => (StatusCode::BAD_GATEWAY, ErrorCode::Unavailable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(cause: UpstreamError) -> Error {
        Error::upstream("hub", cause)
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        let s = |e: Error| e.status_and_code(ErrorCode::BlobUnknown).0.as_u16();
        assert_eq!(s(up(UpstreamError::Timeout("waiting for headers"))), 504);
        assert_eq!(s(up(UpstreamError::Unreachable("refused".into()))), 502);
        assert_eq!(
            s(up(UpstreamError::Refused {
                status: StatusCode::UNAUTHORIZED
            })),
            403
        );
        let five = UpstreamError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: None,
            message: None,
        };
        assert_eq!(s(up(five)), 502);
    }

    #[test]
    fn upstream_not_found_keeps_its_code_or_gets_the_routes() {
        let nf = |code: Option<&str>| {
            up(UpstreamError::Status {
                status: StatusCode::NOT_FOUND,
                code: code.map(str::to_string),
                message: None,
            })
        };
        assert_eq!(
            nf(None).status_and_code(ErrorCode::ManifestUnknown),
            (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown)
        );
        assert_eq!(
            nf(Some("NAME_UNKNOWN")).status_and_code(ErrorCode::ManifestUnknown),
            (StatusCode::NOT_FOUND, ErrorCode::NameUnknown)
        );
        assert!(nf(None).is_not_found());
    }

    #[test]
    fn only_unavailability_may_be_covered_by_a_stale_answer() {
        let status = |code: u16| {
            up(UpstreamError::Status {
                status: StatusCode::from_u16(code).unwrap(),
                code: None,
                message: None,
            })
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(status(code).is_upstream_unavailable(), "{code}");
        }
        for code in [400, 401, 404] {
            assert!(!status(code).is_upstream_unavailable(), "{code}");
        }
        assert!(up(UpstreamError::Timeout("connecting")).is_upstream_unavailable());
        assert!(up(UpstreamError::Unreachable("refused".into())).is_upstream_unavailable());
        let refused = up(UpstreamError::Refused {
            status: StatusCode::FORBIDDEN,
        });
        assert!(!refused.is_upstream_unavailable());
    }

    #[test]
    fn offline_misses_are_404_by_digest_and_503_otherwise() {
        let by_digest = up(UpstreamError::Offline { by_digest: true });
        assert_eq!(
            by_digest.status_and_code(ErrorCode::BlobUnknown),
            (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown)
        );
        assert!(by_digest.is_not_found());
        let by_tag = up(UpstreamError::Offline { by_digest: false });
        assert_eq!(by_tag.status_and_code(ErrorCode::ManifestUnknown).0, 503);
        assert!(by_tag.client_message().contains("offline"));
    }

    #[test]
    fn messages_name_the_upstream() {
        let e = up(UpstreamError::Refused {
            status: StatusCode::FORBIDDEN,
        });
        assert!(e
            .client_message()
            .starts_with("upstream hub: refused access"));
    }
}
