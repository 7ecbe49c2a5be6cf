//! `GET` and `HEAD /v2/<name>/blobs/<digest>`: from memory, disk or a fill, whole or one range.

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LOCATION,
    RANGE,
};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};

use super::body::{empty, full, Outgoing};
use super::respond::DOCKER_CONTENT_DIGEST;
use super::service::Reply;
use super::State;
use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::mirror::{self, BlobBody};
use crate::oci::{self, ByteRange, Digest, ErrorCode};
use crate::upstream::Target;

/// A byte span of the blob to send: `start..end`, end exclusive (so empty blobs fit).
#[derive(Clone, Copy)]
struct Span {
    start: u64,
    end: u64,
    partial: bool,
}

pub async fn get(
    state: &State,
    parts: &Parts,
    target: &Target,
    digest: &Digest,
    head: bool,
) -> Result<Reply> {
    tracing::Span::current().record("digest", tracing::field::display(digest));
    if head {
        let (len, outcome) = state.cache.blob_head(digest, target).await?;
        let mut builder = blob_response(digest);
        if let Some(len) = len {
            builder = builder.header(CONTENT_LENGTH, len);
        }
        let response = builder.body(empty()).expect("valid headers");
        return Ok(Reply::new(response, outcome));
    }
    if let Some(url) = state.cache.blob_redirect(digest, target).await? {
        let response = Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(LOCATION, url.as_str())
            // The URL expires: no cache may keep the redirect.
            .header(CACHE_CONTROL, "no-store")
            .body(Outgoing::Body(empty()))
            .expect("valid headers");
        return Ok(Reply::new(response, Outcome::Redirected));
    }
    let range = requested_range(parts)?;
    let chunk = match parts.version {
        http::Version::HTTP_2 => mirror::H2_CHUNK,
        _ => mirror::CHUNK,
    };
    let answer = state
        .cache
        .blob_answer(digest, target, range.is_some())
        .await?;
    let outcome = answer.outcome;
    let Some(total) = answer.total else {
        // Upstream sent no length and no range was asked: stream to the end of the fill.
        let body = answer.body(0, u64::MAX);
        let response = with_body(blob_response(digest), body, chunk);
        return Ok(Reply::new(response, outcome));
    };
    let Some(span) = resolve(range.as_ref(), total) else {
        return Err(Error::Unsatisfiable { total });
    };
    let mut builder = blob_response(digest).header(CONTENT_LENGTH, span.end - span.start);
    if span.partial {
        let r = ByteRange {
            start: span.start,
            end: span.end - 1,
        };
        builder = builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_RANGE, r.content_range(total));
    }
    let body = answer.body(span.start, span.end);
    Ok(Reply::new(with_body(builder, body, chunk), outcome))
}

/// The response with its body: bytes in hand, or the reader (sent with sendfile on a
/// plain HTTP/1.1 connection, read `chunk` bytes at a time otherwise).
fn with_body(builder: http::response::Builder, body: BlobBody, chunk: u64) -> Response<Outgoing> {
    let body = match body {
        BlobBody::Bytes(bytes) => Outgoing::Body(full(bytes)),
        BlobBody::Reader(reader) => Outgoing::Blob { reader, chunk },
    };
    builder.body(body).expect("valid headers")
}

fn blob_response(digest: &Digest) -> http::response::Builder {
    let digest_value = HeaderValue::try_from(digest.to_string()).expect("digests are header-safe");
    Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, digest_value)
        .header(ETAG, format!("\"{digest}\""))
        .header(ACCEPT_RANGES, "bytes")
        // Content-addressed: the bytes behind a digest never change.
        .header(CACHE_CONTROL, "public, max-age=31536000, immutable")
}

/// The client's `Range`, if it sent one. One we cannot honour exactly is refused.
fn requested_range(parts: &Parts) -> Result<Option<oci::RangeSpec>> {
    let Some(value) = parts.headers.get(RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    oci::parse_range(text).map(Some).map_err(|e| {
        Error::client(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            format!("unsupported Range header {text:?}: {e}; send one range as bytes=start-end"),
        )
    })
}

/// The span to send; `None` when the range cannot be satisfied.
fn resolve(range: Option<&oci::RangeSpec>, total: u64) -> Option<Span> {
    match range {
        None => Some(Span {
            start: 0,
            end: total,
            partial: false,
        }),
        Some(spec) => spec.resolve(total).map(|r| Span {
            start: r.start,
            end: r.end + 1,
            partial: true,
        }),
    }
}
