//! Response bodies: one boxed type for every answer, a blob body whose reader a plain
//! HTTP/1.1 connection may take over (to send file bytes with `sendfile`), a wrapper
//! that counts the bytes a client actually received, recorded once when the body is
//! dropped (never per chunk), and one that reports to the connection's stall watch.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use prometheus::IntCounter;

use super::guard::RequestGuard;
use crate::mirror::BlobReader;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A streamed body; an error item aborts the response (the client sees a cut, not an end).
pub fn stream<S>(stream: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(stream.map_ok(Frame::data).map_err(BoxError::from)).boxed_unsync()
}

/// The reader behind a blob body, in the response's extensions. Whoever takes it first
/// sends the bytes: hyper by polling the body, or a plain HTTP/1.1 connection directly.
#[derive(Clone)]
pub struct Sendable(Arc<Mutex<Option<BlobReader>>>);

impl Sendable {
    pub fn take(&self) -> Option<BlobReader> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A blob body over `reader` read `chunk` bytes at a time, and the handle that can take
/// the reader instead.
pub fn blob(reader: BlobReader, chunk: u64) -> (Body, Sendable) {
    let sendable = Sendable(Arc::new(Mutex::new(Some(reader))));
    let slot = sendable.clone();
    let body = futures_util::stream::once(async move {
        // Taken means another path sent the bytes; this body must not look complete.
        slot.take()
            .map(|reader| reader.into_stream(chunk))
            .ok_or_else(|| io::Error::other("blob body already sent another way"))
    })
    .try_flatten();
    (stream(body), sendable)
}

/// `inner`, reporting to `guard` when hyper asks for a frame and when it takes one, so a
/// stream that waits too long between the two can be told from one waiting on upstream.
/// The guard ends the request when the body is dropped, however it ends.
pub fn watched(inner: Body, guard: RequestGuard) -> Body {
    Watched { inner, guard }.boxed_unsync()
}

struct Watched {
    inner: Body,
    guard: RequestGuard,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.guard.polled();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.guard.handed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The served-bytes counter of a response whose bytes may bypass its body ([`Sendable`]).
#[derive(Clone)]
pub struct ServedBytes(pub IntCounter);

/// Counts data bytes that went out through `inner`.
pub struct Counted {
    inner: Body,
    sent: u64,
    counter: IntCounter,
}

impl Counted {
    pub fn wrap(inner: Body, counter: IntCounter) -> Body {
        Counted {
            inner,
            sent: 0,
            counter,
        }
        .boxed_unsync()
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The stream (and the pin on its cached object) goes first: once the count shows,
        // the object may already be evicted.
        drop(std::mem::replace(&mut self.inner, empty()));
        self.counter.inc_by(self.sent);
    }
}
