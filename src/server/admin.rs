//! The admin listener: `/metrics` (Prometheus text), `/healthz`, and the store operations
//! that operator commands send here while this daemon owns the store (see
//! `store::owner`): `POST /store/gc`, `POST /store/verify` and `POST /store/import`
//! (the archive as the body, `?upstream=NAME` optional). Each answers with its report as
//! JSON, or `{"error": ...}`. The listener stays private while the registry port is shared;
//! the store operations also answer only clients on loopback.

use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use super::body::{full, Body};
use super::{Peer, RequestBody, State};
use crate::store::ops;
use crate::transfer::archive;

pub async fn admin_response(state: Arc<State>, request: Request<()>) -> Response<Body> {
    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/metrics") => {
            state.cache.report_usage();
            let text = state.metrics.render();
            answer(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::GET, "/healthz") => answer(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/store/gc" | "/store/verify" | "/store/import") => {
            let local = request
                .extensions()
                .get::<Peer>()
                .is_some_and(|p| p.0.ip().to_canonical().is_loopback());
            if !local {
                let message = "store operations answer only clients on this host";
                return report::<()>(Err((StatusCode::FORBIDDEN, message.into())));
            }
            match path {
                "/store/gc" => report(gc(&state).await),
                "/store/verify" => report(verify(&state).await),
                _ => report(import(&state, &request).await),
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

type Outcome<T> = Result<T, (StatusCode, String)>;

async fn gc(state: &State) -> Outcome<ops::GcReport> {
    let disk = state.cache.disk().clone();
    blocking(move || Ok(ops::gc(&disk))).await
}

async fn verify(state: &State) -> Outcome<ops::VerifyReport> {
    let disk = state.cache.disk().clone();
    blocking(move || ops::verify(&disk).map_err(failed)).await
}

/// Streams the request body, an OCI layout archive, into the store.
async fn import(state: &State, request: &Request<()>) -> Outcome<archive::ImportReport> {
    let upstream = request
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "upstream"))
        .map(|(_, v)| v.into_owned());
    let Some(body) = request
        .extensions()
        .get::<RequestBody>()
        .and_then(|b| b.take())
    else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the archive must be the body".into(),
        ));
    };
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let (disk, upstreams) = (state.cache.disk().clone(), state.upstreams.configs());
    let imported = blocking(move || {
        archive::import(&disk, &upstreams, reader, upstream.as_deref())
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    })
    .await;
    // Tag answers held in memory must not hide the tags just written.
    state.cache.forget_tags();
    imported
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
    let (status, json) = match outcome {
        Ok(report) => (StatusCode::OK, serde_json::to_string(&report)),
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
