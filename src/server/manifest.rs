//! `GET` and `HEAD /v2/<name>/manifests/<tag or digest>`, honouring the client's `Accept`.

use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ETAG, WARNING};
use http::request::Parts;
use http::{HeaderValue, Response};

use super::body::{empty, full};
use super::respond::DOCKER_CONTENT_DIGEST;
use super::service::Reply;
use super::State;
use crate::error::Result;
use crate::metrics::Outcome;
use crate::oci::{Accept, Reference};
use crate::upstream::Target;

/// Set to `1` on a manifest served from the cache because upstream failed.
pub const STALE: &str = "x-regcache-stale";

pub async fn get(
    state: &State,
    parts: &Parts,
    target: &Target,
    reference: &Reference,
    head: bool,
) -> Result<Reply> {
    if let Reference::Digest(d) = reference {
        tracing::Span::current().record("digest", tracing::field::display(d));
    }
    let accept = Accept::parse(
        parts
            .headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let manifest = state
        .cache
        .manifest(target, reference, &accept, !head)
        .await?;
    state
        .admin
        .pulled(target.upstream.name(), target.name.as_str());
    // A GET answered without one upstream is a pull Docker Hub never counted.
    if !head && target.hops == 0 && manifest.outcome != Outcome::Miss {
        state
            .metrics
            .pulls_avoided
            .with_label_values(&[target.upstream.name()])
            .inc();
    }
    let media_type = HeaderValue::try_from(&*manifest.media_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let mut builder = Response::builder()
        .header(CONTENT_TYPE, media_type)
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(ETAG, format!("\"{}\"", manifest.digest))
        .header(CONTENT_LENGTH, manifest.len);
    if manifest.stale {
        builder = builder
            .header(WARNING, "110 - \"response is stale\"")
            .header(STALE, "1");
    }
    let body = match (head, manifest.bytes) {
        (false, Some(bytes)) => full(bytes),
        _ => empty(),
    };
    Ok(Reply::new(
        builder.body(body).expect("valid headers"),
        manifest.outcome,
    ))
}
