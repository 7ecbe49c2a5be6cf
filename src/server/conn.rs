//! One client connection: the optional TLS handshake, the HTTP/1.1 or h2 connection with
//! the `[server]` limits applied, and the closing causes counted as limit metrics.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::{self, Outgoing, ServedBytes};
use super::guard::{Activity, Guarded};
use super::{plain, Peer, RequestBody, Serving};
use crate::metrics::Limit;

/// Bytes h2 buffers per stream ahead of the client's window (hyper's default is 400 KiB).
const H2_SEND_BUFFER: usize = 2 * crate::mirror::H2_CHUNK as usize;

/// What every connection of one listener shares.
pub struct Shared {
    serving: Serving,
    builder: auto::Builder<TokioExecutor>,
}

impl Shared {
    pub fn new(serving: Serving) -> Shared {
        let limits = &serving.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.max_headers)
            // hyper answers 431 when the request head outgrows this buffer.
            .max_buf_size(limits.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(limits.max_streams_per_connection)
            // What h2 queues per stream beyond what the window lets out.
            .max_send_buf_size(H2_SEND_BUFFER);
        Shared { serving, builder }
    }
}

/// Serves one connection until it ends, closing it gracefully once `closing` turns true.
pub async fn serve_connection<F, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    handler: F,
    closing: watch::Receiver<bool>,
) where
    F: Fn(Request<()>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Outgoing>> + Send + 'static,
{
    let metrics = shared.serving.metrics.clone();
    metrics.connections.inc();
    let activity = Activity::new();
    let limits = &shared.serving.limits;
    let io = Guarded::new(stream, activity.clone(), limits.send_timeout);
    match &shared.serving.tls {
        None => {
            let mut closing = closing;
            let serving = &shared.serving;
            match plain::serve(io, peer, serving, &handler, &mut closing, &activity).await {
                plain::Ended::Closed => {}
                plain::Ended::Handoff(io) => {
                    drive(io, peer, &shared, handler, closing, &activity).await
                }
            }
        }
        Some(tls) => {
            let handshake = tls.acceptor.accept(io);
            match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(io)) => drive(io, peer, &shared, handler, closing, &activity).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    metrics.limit_hit(Limit::TlsHandshakeTimeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
    metrics.connections.dec();
}

async fn drive<I, F, Fut>(
    io: I,
    peer: SocketAddr,
    shared: &Shared,
    handler: F,
    mut closing: watch::Receiver<bool>,
    activity: &Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<()>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Outgoing>> + Send + 'static,
{
    let limits = &shared.serving.limits;
    let metrics = &shared.serving.metrics;
    let service_activity = activity.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        // Only the admin API's import reads a body (see `RequestBody`); hyper discards
        // the others unread.
        let (parts, incoming) = request.into_parts();
        let mut request = Request::from_parts(parts, ());
        request.extensions_mut().insert(Peer(peer));
        request.extensions_mut().insert(RequestBody::new(incoming));
        let guard = service_activity.start_request();
        let handler = handler.clone();
        async move {
            let response = handler(request).await;
            let served = response.extensions().get::<ServedBytes>().cloned();
            Ok::<_, Infallible>(response.map(|b| body::watched(b, guard, served)))
        }
    });
    let connection = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    // A graceful close waits for open streams; one the client holds shut would never end.
    let mut drain_deadline = None;
    let result = loop {
        let drained = async {
            match drain_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = closing.wait_for(|c| *c), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout), if !draining => {
                metrics.limit_hit(Limit::IdleTimeout);
                draining = true;
                drain_deadline = Some(tokio::time::Instant::now() + limits.send_timeout);
                connection.as_mut().graceful_shutdown();
            }
            () = activity.stalled(limits.send_timeout) => {
                // Dropping the connection ends every stream and frees what they buffered.
                metrics.limit_hit(Limit::SendTimeout);
                tracing::debug!(%peer, "a stream's window stayed shut past the send timeout; connection closed");
                return;
            }
            () = drained => {
                metrics.limit_hit(Limit::SendTimeout);
                tracing::debug!(%peer, "streams still open past the send timeout after closing; connection closed");
                return;
            }
        }
    };
    let Err(e) = result else { return };
    match limit_of(activity, e.downcast_ref::<hyper::Error>()) {
        Some(limit) => {
            metrics.limit_hit(limit);
            tracing::debug!(limit = limit.as_str(), error = %e, "connection closed by a limit");
        }
        None => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// The limit that ended a connection whose last I/O failed (with `hyper_error`, when hyper
/// served it), if a limit did: the one classification for the plain path, hyper's
/// HTTP/1.1 and h2.
pub(super) fn limit_of(activity: &Activity, hyper_error: Option<&hyper::Error>) -> Option<Limit> {
    if activity.send_timed_out() {
        Some(Limit::SendTimeout)
    } else if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
        Some(Limit::HeaderSize)
    } else if hyper_error.is_some_and(hyper::Error::is_timeout) {
        // HTTP/1.1 waits for the next request head under the same timer.
        Some(if activity.between_requests() {
            Limit::IdleTimeout
        } else {
            Limit::HeaderReadTimeout
        })
    } else {
        None
    }
}
