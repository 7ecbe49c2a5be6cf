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
use crate::upstream::{Kind, Target};

/// Headers worth passing back from upstream's answer.
const KEPT: [&str; 3] = ["content-type", "link", "oci-filters-applied"];

pub async fn tags(parts: &Parts, target: &Target) -> Result<Reply> {
    let path = with_query("tags/list", parts);
    forward(parts, target, Kind::Tags, &path).await
}

pub async fn referrers(parts: &Parts, target: &Target, digest: &Digest) -> Result<Reply> {
    let path = with_query(&format!("referrers/{digest}"), parts);
    forward(parts, target, Kind::Referrers, &path).await
}

/// Keeps `n`, `last` and `artifactType` (the only query keys these endpoints define).
fn with_query(path: &str, parts: &Parts) -> String {
    let Some(query) = parts.uri.query() else {
        return path.to_string();
    };
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| matches!(k.as_ref(), "n" | "last" | "artifactType"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return path.to_string();
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{path}?{encoded}")
}

async fn forward(parts: &Parts, target: &Target, kind: Kind, path: &str) -> Result<Reply> {
    let accept = parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let answer = target
        .upstream
        .send(Method::GET, kind, &target.name, path, accept)
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
