//! Plain-text HTTP/1.1 connections. hyper cannot send a file with sendfile(2), and copying
//! a hot layer through user space costs most of a mirror's CPU, so simple requests (GET
//! or HEAD, no body, no upgrade; what registry clients send) are parsed here with httparse
//! and answered by this loop through the same handler hyper calls. The first request that
//! is not simple, and the rest of the connection with it, goes to hyper, which replays
//! the bytes already read and answers it, errors and limits included.
//!
//! While a request is being answered the socket is still read, as hyper does: a client
//! that hangs up drops its request with whatever it waited for (a login queued for
//! bcrypt, say), instead of leaving the work to run for nobody.

pub(super) mod request;
mod response;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Method, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::body::Outgoing;
use super::guard::{Activity, Guarded};
use super::rewind::Rewind;
use super::{Peer, Serving};
use crate::metrics::Limit;
use request::Head;

/// What a request head is read into first; it grows up to `server.max_header_bytes`.
const READ_BUF: usize = 8 << 10;

/// How a plain connection ended: closed here, or handed to hyper to go on.
pub enum Ended {
    Closed,
    Handoff(Rewind<Guarded<TcpStream>>),
}

pub async fn serve<F, Fut>(
    mut io: Guarded<TcpStream>,
    peer: SocketAddr,
    serving: &Serving,
    handler: &F,
    closing: &mut watch::Receiver<bool>,
    activity: &Arc<Activity>,
) -> Ended
where
    F: Fn(Request<()>) -> Fut,
    Fut: Future<Output = http::Response<Outgoing>>,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut socket = None;
    loop {
        let (mut request, close) =
            match next_head(&mut io, &mut buf, serving, closing, activity).await {
                Next::Request(request, close) => (request, close),
                Next::Other => return Ended::Handoff(Rewind::new(buf.freeze(), io)),
                Next::Closed(limit) => {
                    if let Some(limit) = limit {
                        serving.metrics.limit_hit(limit);
                        tracing::debug!(limit = limit.as_str(), "connection closed by a limit");
                    }
                    return Ended::Closed;
                }
            };
        request.extensions_mut().insert(Peer(peer));
        let head_only = request.method() == Method::HEAD;
        let guard = activity.start_request();
        let answering = handler(request);
        let response = tokio::select! {
            // An answer that is ready goes out even if the client has closed its side.
            biased;
            response = answering => response,
            () = hung_up(&mut io, &mut buf, serving.limits.max_header_bytes) => {
                tracing::debug!("client left before its answer; request dropped");
                return Ended::Closed;
            }
        };
        let close = close || *closing.borrow();
        let written = response::write(&mut io, &mut socket, response, head_only, close).await;
        drop(guard);
        if let Err(e) = written {
            if let Some(limit) = super::conn::limit_of(activity, None) {
                serving.metrics.limit_hit(limit);
            }
            tracing::debug!(error = %e, "response cut; closing the connection");
            return Ended::Closed;
        }
        if close {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Resolves when the client closes its side (or the socket fails) while its request is
/// answered. Bytes it sends meanwhile (a pipelined request) are kept in `buf`; once `max`
/// are there, this stops reading and never resolves.
async fn hung_up(io: &mut Guarded<TcpStream>, buf: &mut BytesMut, max: usize) {
    while buf.len() < max {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF);
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

// Short-lived, on the stack: boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request<()>, bool),
    Other,
    Closed(Option<Limit>),
}

/// Reads until `buf` holds a whole request head, under the same clocks hyper applies:
/// `header_read_timeout` for the head (and the wait for it between requests), the idle
/// timeout, and a graceful shutdown that closes a connection waiting for a request.
async fn next_head(
    io: &mut Guarded<TcpStream>,
    buf: &mut BytesMut,
    serving: &Serving,
    closing: &mut watch::Receiver<bool>,
    activity: &Activity,
) -> Next {
    let limits = &serving.limits;
    let deadline = Instant::now() + limits.header_read_timeout;
    loop {
        match request::parse(buf, limits.max_headers) {
            Head::Simple {
                request,
                len,
                close,
            } => {
                let _ = buf.split_to(len);
                return Next::Request(request, close);
            }
            Head::Other => return Next::Other,
            // hyper answers 431 for a head past the limit.
            Head::Partial if buf.len() >= limits.max_header_bytes => return Next::Other,
            Head::Partial => {}
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF);
        }
        let waiting = buf.is_empty();
        tokio::select! {
            read = io.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Next::Closed(None),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                let limit = if waiting && activity.between_requests() {
                    Limit::IdleTimeout
                } else {
                    Limit::HeaderReadTimeout
                };
                return Next::Closed(Some(limit));
            }
            _ = closing.wait_for(|c| *c), if waiting => return Next::Closed(None),
            () = activity.idle_for(limits.idle_timeout), if waiting => {
                return Next::Closed(Some(Limit::IdleTimeout));
            }
        }
    }
}
