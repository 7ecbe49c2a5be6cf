//! The admin endpoints: `/metrics` (Prometheus text) and `/healthz`. Served on their own
//! listener so they can stay private while the registry port is shared.

use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};

use super::body::{full, Body};
use super::State;

pub fn admin_response<B>(state: &State, request: &Request<B>) -> Response<Body> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            state.cache.report_usage();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(full(body))
        .expect("static headers are valid")
}
