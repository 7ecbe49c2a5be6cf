//! The registry API service: parses the route first, then dispatches to a handler, and
//! records one span, one request metric and the served-bytes count per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tracing::Instrument;

use super::body::{full, Body, Outgoing, ServedBytes};
use super::respond::{self, API_VERSION};
use super::{blob, listings, manifest, Peer, State};
use crate::error::Result;
use crate::metrics::Outcome;
use crate::oci::{self, ErrorCode, RepoName, Route, RouteError};
use crate::upstream::{Priority, RouteRequest, Target};

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// What a handler produced, and how (for the request metric and the bytes' source).
pub struct Reply {
    pub response: Response<Outgoing>,
    pub outcome: Outcome,
}

impl Reply {
    pub fn new(response: Response<impl Into<Outgoing>>, outcome: Outcome) -> Reply {
        let response = response.map(Into::into);
        Reply { response, outcome }
    }
}

/// Handles one request. Never fails: every error becomes an OCI error response here.
pub async fn handle<B>(state: Arc<State>, request: Request<B>) -> Response<Outgoing> {
    let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    let (parts, _body) = request.into_parts();
    let route = oci::route::parse(parts.uri.path());
    let kind = route.as_ref().map_or("invalid", Route::kind);
    let span = tracing::info_span!(
        "request",
        id,
        method = %parts.method,
        route = kind,
        upstream = tracing::field::Empty,
        via = tracing::field::Empty,
        digest = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let missing = match &route {
            Ok(Route::Blob { .. }) => ErrorCode::BlobUnknown,
            Ok(Route::Manifest { .. }) => ErrorCode::ManifestUnknown,
            _ => ErrorCode::NameUnknown,
        };
        // Another replica forwarding a miss vouches for its client (it admitted it).
        let hops = state
            .cache
            .cluster()
            .map_or(0, |cluster| cluster.hops(&parts.headers));
        let admitted = match hops {
            0 => admit(&state, &parts).await,
            _ => Ok(()),
        };
        let result = match admitted {
            Err(e) => Err(e),
            Ok(()) => match route {
                Ok(route) => dispatch(&state, &parts, route, hops).await,
                Err(e) => Err(route_error(e)),
            },
        };
        let (mut response, outcome) = match result {
            Ok(mut reply) => {
                // Whichever path sends the body counts what the client received.
                let served = ServedBytes {
                    bytes: state
                        .metrics
                        .served_bytes
                        .with_label_values(&[reply.outcome.byte_source()]),
                    started,
                    first_byte: state.metrics.first_byte.with_label_values(&[kind]),
                };
                reply.response.extensions_mut().insert(served);
                (reply.response, reply.outcome)
            }
            Err(e) => {
                let response = respond::error(&state.metrics, &e, missing);
                (response.map(Outgoing::Body), Outcome::Error)
            }
        };
        state
            .metrics
            .requests
            .with_label_values(&[kind, outcome.as_str()])
            .inc();
        state
            .metrics
            .request_duration
            .with_label_values(&[kind, outcome.as_str()])
            .observe(started.elapsed().as_secs_f64());
        response
            .headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        tracing::debug!(
            status = response.status().as_u16(),
            result = outcome.as_str(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        );
        response
    }
    .instrument(span)
    .await
}

/// Applies `[server.auth]` before anything else, `/v2/` included (clients probe it to
/// learn whether to send credentials).
async fn admit(state: &State, parts: &Parts) -> Result<()> {
    let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
    let authorization = parts.headers.get(AUTHORIZATION);
    state
        .access
        .check(peer, authorization)
        .await
        .map_err(|denial| {
            state
                .metrics
                .auth_failures
                .with_label_values(&[denial.reason()])
                .inc();
            denial.into_error()
        })
}

async fn dispatch(state: &State, parts: &Parts, route: Route, hops: u8) -> Result<Reply> {
    let method = &parts.method;
    let head = method == Method::HEAD;
    let read_only = matches!(*method, Method::GET | Method::HEAD);
    match route {
        Route::Upload { .. } => Err(unsupported(method)),
        _ if !read_only => Err(unsupported(method)),
        Route::Base => Ok(Reply::new(base(), Outcome::MemoryHit)),
        Route::Manifest { name, reference } => {
            let mut target = target(state, parts, &name)?;
            target.hops = hops;
            manifest::get(state, parts, &target, &reference, head).await
        }
        Route::Blob { name, digest } => {
            let mut target = target(state, parts, &name)?;
            target.hops = hops;
            blob::get(state, parts, &target, &digest, head).await
        }
        Route::Tags { name } => listings::tags(state, parts, &target(state, parts, &name)?).await,
        Route::Referrers { name, digest } => {
            let target = target(state, parts, &name)?;
            listings::referrers(state, parts, &target, &digest).await
        }
    }
}

/// Routes the request to an upstream and names it on the request's span.
fn target(state: &State, parts: &Parts, name: &RepoName) -> Result<Target> {
    let host = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let mut target = state.upstreams.target(RouteRequest {
        query: parts.uri.query(),
        host,
        name,
    })?;
    // Prefetch through the daemon says so; a client lowering its own priority harms nobody.
    if parts
        .headers
        .get(PRIORITY)
        .is_some_and(|v| v == "background")
    {
        target.priority = Priority::Background;
    }
    let span = tracing::Span::current();
    span.record("upstream", target.upstream.name());
    span.record("via", target.via.as_str());
    let policy = &target.upstream.config().policy;
    if let Err(refusal) = policy.check(target.name.as_str()) {
        state
            .metrics
            .policy_denials
            .with_label_values(&[target.upstream.name(), refusal.reason()])
            .inc();
        let message = policy.explain(&refusal, target.upstream.name(), target.name.as_str());
        return Err(crate::error::Error::client(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            message,
        ));
    }
    Ok(target)
}

/// The request header that marks work nobody waits on (`regcache prefetch --via`).
pub const PRIORITY: &str = "x-regcache-priority";

fn unsupported(method: &Method) -> crate::error::Error {
    crate::error::Error::client(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("{method} is not supported: regcache is a read-only pull-through mirror"),
    )
}

fn base() -> Response<Body> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full("{}"))
        .expect("static headers are valid")
}

fn route_error(e: RouteError) -> crate::error::Error {
    use crate::error::Error;
    let bad = StatusCode::BAD_REQUEST;
    match e {
        RouteError::NotFound => Error::client(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "not a registry API path; regcache serves the OCI distribution API under /v2/",
        ),
        RouteError::Name(e) => Error::client(
            bad,
            ErrorCode::NameInvalid,
            format!("invalid repository name: {e}"),
        ),
        // No manifest can have such a name: the spec (and its conformance suite) wants 404.
        RouteError::Reference(oci::ReferenceError::Tag(e)) => Error::client(
            StatusCode::NOT_FOUND,
            ErrorCode::ManifestUnknown,
            format!("no manifest can have this reference ({e}); name a tag or a digest"),
        ),
        RouteError::Reference(oci::ReferenceError::Digest(e)) | RouteError::Digest(e) => {
            Error::client(
                bad,
                ErrorCode::DigestInvalid,
                format!("invalid digest: {e}"),
            )
        }
    }
}
