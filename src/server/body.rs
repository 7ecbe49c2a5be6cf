//! Response bodies. A handler answers with [`Outgoing`]: any body, or a blob's reader,
//! which a plain HTTP/1.1 connection sends with `sendfile` and hyper reads a chunk at a
//! time. A successful registry answer carries its served-bytes counter ([`ServedBytes`]);
//! whichever path sends it counts the bytes the client received, recorded once when the
//! response ends (never per chunk). On the hyper path one wrapper does that and reports
//! to the connection's stall watch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use std::time::Instant;

use prometheus::{Histogram, IntCounter};

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

/// What a handler answers with.
pub enum Outgoing {
    Body(Body),
    /// A blob's bytes from the store or a fill, read `chunk` bytes at a time by hyper.
    Blob {
        reader: BlobReader,
        chunk: u64,
    },
}

impl From<Body> for Outgoing {
    fn from(body: Body) -> Outgoing {
        Outgoing::Body(body)
    }
}

impl Outgoing {
    /// As a body hyper can poll.
    pub fn into_body(self) -> Body {
        match self {
            Outgoing::Body(body) => body,
            Outgoing::Blob { reader, chunk } => stream(reader.into_stream(chunk)),
        }
    }
}

/// The accounting of a successful registry answer, in its extensions: its served-bytes
/// counter, and when the request began for the time to its first body byte.
#[derive(Clone)]
pub struct ServedBytes {
    pub bytes: IntCounter,
    pub started: Instant,
    pub first_byte: Histogram,
}

/// What a body sender tallies: bytes sent, and the first byte's time, observed once.
pub struct Tally {
    pub sent: u64,
    first_byte: Option<(Instant, Histogram)>,
}

impl Tally {
    pub fn new(served: Option<&ServedBytes>) -> Tally {
        Tally {
            sent: 0,
            first_byte: served.map(|s| (s.started, s.first_byte.clone())),
        }
    }

    pub fn add(&mut self, n: u64) {
        if n > 0 {
            if let Some((started, histogram)) = self.first_byte.take() {
                histogram.observe(started.elapsed().as_secs_f64());
            }
        }
        self.sent += n;
    }

    /// Records the bytes into `served`'s counter; once, when the response ends.
    pub fn record(&self, served: Option<&ServedBytes>) {
        if let Some(served) = served {
            served.bytes.inc_by(self.sent);
        }
    }
}

/// `body` for hyper: reports to `guard` when hyper asks for a frame and when it takes one,
/// so a stream that waits too long between the two can be told from one waiting on
/// upstream, and counts the data bytes that went out into `served`. The guard ends the
/// request, and the count is recorded, when the body is dropped, however it ends.
pub fn watched(body: Outgoing, guard: RequestGuard, served: Option<ServedBytes>) -> Body {
    Watched {
        inner: body.into_body(),
        guard,
        tally: Tally::new(served.as_ref()),
        served,
    }
    .boxed_unsync()
}

struct Watched {
    inner: Body,
    guard: RequestGuard,
    served: Option<ServedBytes>,
    tally: Tally,
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
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.guard.handed();
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.tally.add(n);
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

impl Drop for Watched {
    fn drop(&mut self) {
        // The stream (and the pin on its cached object) goes first: once the count shows,
        // the object may already be evicted.
        drop(std::mem::replace(&mut self.inner, empty()));
        self.tally.record(self.served.as_ref());
    }
}
