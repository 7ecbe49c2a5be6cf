//! `tags/list` and `referrers`: answered by upstream every time (they change, and they are
//! small), with the headers clients rely on kept.

use futures_util::TryStreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Response};

use super::body::stream;
use super::service::Reply;
use crate::error::Result;
use crate::metrics::Outcome;
use crate::oci::Digest;
use crate::upstream::{Resource, Target};

/// Headers worth passing back from upstream's answer.
const KEPT: [&str; 3] = ["content-type", "link", "oci-filters-applied"];

pub async fn tags(parts: &Parts, target: &Target) -> Result<Reply> {
    let query = kept_query(parts);
    forward(parts, target, Resource::Tags(query.as_deref())).await
}

pub async fn referrers(parts: &Parts, target: &Target, digest: &Digest) -> Result<Reply> {
    let query = kept_query(parts);
    forward(parts, target, Resource::Referrers(digest, query.as_deref())).await
}

/// Keeps `n`, `last` and `artifactType` (the only query keys these endpoints define).
fn kept_query(parts: &Parts) -> Option<String> {
    let query = parts.uri.query()?;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| matches!(k.as_ref(), "n" | "last" | "artifactType"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    Some(encoded)
}

async fn forward(parts: &Parts, target: &Target, resource: Resource<'_>) -> Result<Reply> {
    let accept = parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let answer = target
        .upstream
        .send(Method::GET, &target.name, resource, accept)
        .await?;
    let mut builder = Response::builder().status(answer.status());
    for key in KEPT {
        if let Some(value) = answer.headers().get(key) {
            builder = builder.header(key, value);
        }
    }
    if !answer.headers().contains_key(CONTENT_TYPE) {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let body = answer.bytes_stream().map_err(std::io::Error::other);
    Ok(Reply::new(
        builder.body(stream(body)).expect("valid headers"),
        Outcome::Miss,
    ))
}
