//! The admin listener: `/metrics` and `/healthz` (always open, for scrapers and probes),
//! the status page at `/`, and the admin API under `/api/v1/` (JSON):
//!
//! ```text
//! GET  status                      what the status page shows
//! GET  upstreams                   configured upstreams with what they hold
//! GET  repositories?upstream=&sort=name|bytes|last_pull&offset=&limit=
//! GET  tags?upstream=&repository=  (paged)     GET manifests?upstream=&repository=
//! GET  pins                        POST pins / DELETE pins  {scope}: pin, unpin
//! POST purge {scope}               {"upstream": U[, "repository": R[, "tag": T | "digest": D]]}
//! POST prefetch {"images": [...]}  GET prefetch (jobs), GET prefetch/<id>
//! POST gc, verify, import (an OCI archive as the body, ?upstream=)
//! ```
//!
//! With `admin.token_file` every route but `/metrics` and `/healthz` needs the token;
//! without it only clients on loopback get in (the config refuses a listener other hosts
//! reach without a token). Operator commands send their work here while this daemon owns
//! the store (see `operator`).

mod activity;
mod api;
mod jobs;
mod status;
mod token;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::body::{full, Body};
use super::{Peer, State};
use crate::config::Config;
use crate::metrics::Metrics;
pub use activity::Activity;
pub use api::{Page, UpstreamInfo};
pub use jobs::{Request as PrefetchRequest, View as PrefetchJob};
pub use token::Token;

/// The admin listener's own state.
pub struct Admin {
    pub token: Option<Token>,
    /// Price per GB of upstream egress, and its currency.
    pricing: (f64, String),
    memory_budget: u64,
    activity: Arc<Activity>,
    jobs: jobs::Jobs,
    /// The largest repositories, and when they were measured.
    largest: Mutex<Option<(Instant, Vec<status::RepoBytes>)>>,
    started: u64,
}

impl Admin {
    /// Reads (or creates) the token file. Blocks briefly.
    pub fn new(config: &Config) -> io::Result<Admin> {
        let token = match &config.admin.token_file {
            Some(path) => Some(Token::load_or_create(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("admin.token_file {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        Ok(Admin {
            token,
            pricing: (
                config.admin.egress_price_per_gb,
                config.admin.currency.clone(),
            ),
            memory_budget: config.cache.memory_bytes,
            activity: Arc::default(),
            jobs: jobs::Jobs::default(),
            largest: Mutex::new(None),
            started: crate::store::unix_now(),
        })
    }

    /// Starts sampling for the status page's history (needs a runtime).
    pub fn start(&self, metrics: Metrics) {
        Activity::start(&self.activity, metrics);
    }

    /// A manifest of `repo` was served: counted for the most pulled repositories.
    pub fn pulled(&self, upstream: &str, repo: &str) {
        self.activity.pulled(upstream, repo);
    }
}

type Outcome<T> = Result<T, (StatusCode, String)>;

pub async fn admin_response(state: Arc<State>, request: Request<()>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            state.cache.report_usage();
            let text = state.metrics.render();
            return answer(StatusCode::OK, "text/plain; version=0.0.4", text);
        }
        (&Method::GET, "/healthz") => {
            return answer(StatusCode::OK, "text/plain", "ok\n".into());
        }
        _ => {}
    }
    if let Some(refused) = refuse(&state, &request) {
        return refused;
    }
    let q = api::query(&request);
    let route = path.strip_prefix("/api/v1/");
    match (&method, route, path.as_str()) {
        (&Method::GET, None, "/") => page(&state, &q),
        (&Method::GET, Some("status"), _) => report(status::status(&state).await),
        (&Method::GET, Some("upstreams"), _) => report(api::upstreams(&state).await),
        (&Method::GET, Some("repositories"), _) => report(api::repositories(&state, &q).await),
        (&Method::GET, Some("tags"), _) => report(api::tags(&state, &q).await),
        (&Method::GET, Some("manifests"), _) => report(api::manifests(&state, &q).await),
        (&Method::GET, Some("pins"), _) => report(Ok(api::pin_list(&state))),
        (&Method::POST | &Method::DELETE, Some("pins"), _) => {
            let pinned = api::pin(&state, &request, method == Method::POST).await;
            status::stale(&state);
            report(pinned)
        }
        (&Method::POST, Some("purge"), _) => {
            let purged = api::purge(&state, &request).await;
            status::stale(&state);
            report(purged)
        }
        (&Method::POST, Some("prefetch"), _) => {
            let started = match api::json::<PrefetchRequest>(&request).await {
                Ok(asked) => {
                    let (cache, upstreams) = (state.cache.clone(), state.upstreams.clone());
                    state.admin.jobs.start(asked, cache, upstreams)
                }
                Err(e) => Err(e),
            };
            report_with(StatusCode::ACCEPTED, started)
        }
        (&Method::GET, Some("prefetch"), _) => report(Ok(state.admin.jobs.list())),
        (&Method::GET, Some(job), _) if job.starts_with("prefetch/") => {
            let id = job["prefetch/".len()..].parse::<u64>().ok();
            report(id.and_then(|id| state.admin.jobs.get(id)).ok_or((
                StatusCode::NOT_FOUND,
                format!("no prefetch job {job:?} (finished jobs are kept for a while)"),
            )))
        }
        (&Method::POST, Some("gc"), _) => report(api::gc(&state).await),
        (&Method::POST, Some("verify"), _) => report(api::verify(&state).await),
        (&Method::POST, Some("import"), _) => {
            let imported = api::import(&state, &request).await;
            status::stale(&state);
            report(imported)
        }
        _ => report::<()>(Err((
            StatusCode::NOT_FOUND,
            format!(
                "no {method} {path} here: see / (status page), /api/v1/status, /metrics, /healthz"
            ),
        ))),
    }
}

/// Refuses a request without the token (or, with none configured, not from loopback).
fn refuse(state: &State, request: &Request<()>) -> Option<Response<Body>> {
    match &state.admin.token {
        Some(token) => {
            let from_link = request.uri().path() == "/"
                && api::query(request)
                    .get("token")
                    .is_some_and(|t| token.matches(t));
            if token.admits(request.headers()) || from_link {
                return None;
            }
            let mut refused = report::<()>(Err((
                StatusCode::UNAUTHORIZED,
                "the admin API needs the token in admin.token_file: send \
                 `Authorization: Bearer <token>`, or open /?token=<token> in a browser"
                    .into(),
            )));
            let value = http::HeaderValue::from_static("Bearer realm=\"regcache admin\"");
            refused
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
            Some(refused)
        }
        None => {
            let local = request
                .extensions()
                .get::<Peer>()
                .is_some_and(|p| p.0.ip().to_canonical().is_loopback());
            (!local).then(|| {
                report::<()>(Err((
                    StatusCode::FORBIDDEN,
                    "without admin.token_file the admin API answers only clients on this host"
                        .into(),
                )))
            })
        }
    }
}

/// The status page; `/?token=` (checked already) sets the cookie and drops the token from
/// the address bar.
fn page(state: &State, q: &std::collections::HashMap<String, String>) -> Response<Body> {
    if let (Some(token), true) = (&state.admin.token, q.contains_key("token")) {
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(LOCATION, "/")
            .header(SET_COOKIE, token.cookie())
            .body(full(String::new()))
            .expect("static headers are valid");
    }
    let mut response = answer(
        StatusCode::OK,
        "text/html; charset=utf-8",
        status::PAGE.into(),
    );
    let headers = response.headers_mut();
    // Everything is inline; nothing may load from elsewhere.
    let policy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                  connect-src 'self'; img-src data:; frame-ancestors 'none'";
    headers.insert(
        "content-security-policy",
        http::HeaderValue::from_static(policy),
    );
    headers.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Outcome<T> + Send + 'static,
) -> Outcome<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(failed(io::Error::other(e))))
}

fn failed(e: io::Error) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn report<T: Serialize>(outcome: Outcome<T>) -> Response<Body> {
    report_with(StatusCode::OK, outcome)
}

fn report_with<T: Serialize>(ok: StatusCode, outcome: Outcome<T>) -> Response<Body> {
    let (status, json) = match outcome {
        Ok(report) => (ok, serde_json::to_string(&report)),
        Err((status, error)) => (
            status,
            serde_json::to_string(&serde_json::json!({ "error": error })),
        ),
    };
    let json = json.expect("reports serialize");
    answer(status, "application/json", json)
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(full(body))
        .expect("static headers are valid")
}
