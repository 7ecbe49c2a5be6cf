//! `GET` and `HEAD /v2/<name>/blobs/<digest>`: from memory, disk or a fill, whole or one range.

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE,
};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};

use tokio::sync::watch;

use super::body::{self, empty, full, Body, Sendable};
use super::respond::{oci_error, DOCKER_CONTENT_DIGEST};
use super::service::Reply;
use super::State;
use crate::cache::{self, BlobReader, BlobSource, Phase, Progress};
use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::oci::{self, ByteRange, Digest, ErrorCode};
use crate::upstream::{Kind, Target};

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
        return head_blob(state, target, digest).await;
    }
    let range = requested_range(parts)?;
    let chunk = match parts.version {
        http::Version::HTTP_2 => cache::H2_CHUNK,
        _ => cache::CHUNK,
    };
    let sendable = move |reader| sendable(reader, chunk);
    let source = state.cache.blob(digest, target).await?;
    let outcome = source.outcome();
    let (total, body): (Option<u64>, Box<dyn FnOnce(Span) -> Sent + Send>) = match source {
        BlobSource::Memory(bytes) => (
            Some(bytes.len() as u64),
            Box::new(move |s: Span| (full(bytes.slice(s.start as usize..s.end as usize)), None)),
        ),
        BlobSource::Disk { file, len, pin } => (
            Some(len),
            Box::new(move |s: Span| {
                sendable(BlobReader::stored(file, s.start, s.end).holding(pin))
            }),
        ),
        BlobSource::Fill { fill, .. } => {
            let mut progress = fill.subscribe();
            let total = fill_length(&mut progress, range.is_some()).await?;
            // Upstream answered for this repository: the blob is its from now on.
            state.cache.confirmed(target, digest);
            (
                total,
                Box::new(move |s: Span| {
                    sendable(BlobReader::filling(fill, progress, s.start, s.end))
                }),
            )
        }
    };
    let Some(total) = total else {
        // Upstream sent no length and no range was asked: stream to the end of the fill.
        let whole = Span {
            start: 0,
            end: u64::MAX,
            partial: false,
        };
        let response = with_body(blob_response(digest), body(whole));
        return Ok(Reply::new(response, outcome));
    };
    let Some(span) = resolve(range.as_ref(), total) else {
        return Ok(Reply::new(unsatisfiable(total), Outcome::Error));
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
    Ok(Reply::new(with_body(builder, body(span)), outcome))
}

/// A body, and the handle to send its bytes another way if it streams from a reader.
type Sent = (Body, Option<Sendable>);

fn sendable(reader: BlobReader, chunk: u64) -> Sent {
    let (body, sendable) = body::blob(reader, chunk);
    (body, Some(sendable))
}

fn with_body(builder: http::response::Builder, (body, sendable): Sent) -> Response<Body> {
    let mut response = builder.body(body).expect("valid headers");
    if let Some(sendable) = sendable {
        response.extensions_mut().insert(sendable);
    }
    response
}

/// Waits for upstream's headers on a fill; their status and length decide ours. Without a
/// length from upstream, a range must wait for the end of the fill to be resolved.
async fn fill_length(
    progress: &mut watch::Receiver<Progress>,
    ranged: bool,
) -> Result<Option<u64>> {
    let vanished = || {
        Error::local(
            "blob fill",
            std::io::Error::other("fill ended without a result"),
        )
    };
    let (phase, total) = {
        let p = progress
            .wait_for(|p| !matches!(p.phase, Phase::Connecting))
            .await
            .map_err(|_| vanished())?;
        (p.phase.clone(), p.total)
    };
    if let Phase::Failed(e) = phase {
        return Err(Error::clone(&e));
    }
    if total.is_some() || !ranged {
        return Ok(total);
    }
    let (phase, written) = {
        let p = progress
            .wait_for(|p| matches!(p.phase, Phase::Done | Phase::Failed(_)))
            .await
            .map_err(|_| vanished())?;
        (p.phase.clone(), p.written)
    };
    match phase {
        Phase::Failed(e) => Err(Error::clone(&e)),
        _ => Ok(Some(written)),
    }
}

/// HEAD never downloads a body: the length comes from the cache (for a blob known to belong
/// to the repository) or from upstream's HEAD, which then confirms it for the repository.
async fn head_blob(state: &State, target: &Target, digest: &Digest) -> Result<Reply> {
    let held = match state.cache.is_member(target, digest).await {
        true => state.cache.stored_blob(digest).await,
        false => None,
    };
    if let Some(source) = held {
        let mut builder = blob_response(digest);
        if let Some(len) = source.known_len() {
            builder = builder.header(CONTENT_LENGTH, len);
        }
        return Ok(Reply::new(
            builder.body(empty()).expect("valid headers"),
            source.outcome(),
        ));
    }
    let answer = target
        .upstream
        .send(
            Method::HEAD,
            Kind::Blob,
            &target.name,
            &format!("blobs/{digest}"),
            None,
        )
        .await?;
    state.cache.confirmed(target, digest);
    let mut builder = blob_response(digest);
    // reqwest reports a HEAD answer's body size (0), not the header.
    let len = answer
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = len {
        builder = builder.header(CONTENT_LENGTH, len);
    }
    Ok(Reply::new(
        builder.body(empty()).expect("valid headers"),
        Outcome::Miss,
    ))
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

fn unsatisfiable(total: u64) -> Response<Body> {
    let message = format!("range not satisfiable: the blob has {total} bytes");
    let mut response = oci_error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::RangeInvalid,
        &message,
    );
    let value = HeaderValue::try_from(oci::unsatisfied_content_range(total)).expect("valid header");
    response.headers_mut().insert(CONTENT_RANGE, value);
    response
}
