//! Serving: the accept loop (HTTP/1.1 and h2, over TLS or clear text), the registry API
//! service, and the admin endpoints. Handlers live one per file; errors leave through
//! `respond`. A plain-text connection starts in `plain` (simple requests, sendfile for
//! blob bytes) and goes to hyper at the first request `plain` does not take. The
//! `[server]` limits are enforced here and in `conn`, `peers`, `plain` and `guard`;
//! `[server.auth]` in `auth`.

pub mod admin;
pub mod auth;
mod blob;
pub mod body;
mod conn;
mod guard;
mod listings;
mod manifest;
mod peers;
mod plain;
mod respond;
mod rewind;
mod service;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use admin::admin_response;
/// The plain path's request-head parser, for the fuzz target.
pub use plain::request::{parse as parse_plain_head, Head as PlainHead};
pub use service::{handle, PRIORITY};

use crate::config::ServerConfig;
use crate::metrics::{Limit, Metrics};
use crate::mirror::Mirror;
use crate::upstream::Upstreams;

/// Everything a request handler may use.
pub struct State {
    pub cache: Arc<Mirror>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    pub access: auth::Access,
    /// The admin listener's token, prefetch jobs and status page history.
    pub admin: admin::Admin,
}

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// A request's body, for the one handler that reads one (the admin API's import): handlers
/// take requests without bodies, which is all the registry API needs.
#[derive(Clone)]
pub struct RequestBody(Arc<std::sync::Mutex<Option<hyper::body::Incoming>>>);

impl RequestBody {
    fn new(incoming: hyper::body::Incoming) -> RequestBody {
        RequestBody(Arc::new(std::sync::Mutex::new(Some(incoming))))
    }

    /// The body, once.
    pub fn take(&self) -> Option<hyper::body::Incoming> {
        self.0.lock().expect("request body lock").take()
    }
}

/// How one listener treats its clients.
#[derive(Clone)]
pub struct Serving {
    pub limits: ServerConfig,
    pub tls: Option<tls::Tls>,
    pub metrics: Metrics,
}

/// Accepts connections on `listener` until `shutdown` resolves, then lets requests in
/// flight finish for up to `shutdown_grace` and closes whatever is left.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    serving: Serving,
    handler: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<()>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<body::Outgoing>> + Send + 'static,
{
    let grace = serving.limits.shutdown_grace;
    let metrics = serving.metrics.clone();
    let permits = Arc::new(Semaphore::new(serving.limits.max_connections));
    let peers = peers::Peers::new(serving.limits.max_connections_per_ip);
    let shared = Arc::new(conn::Shared::new(serving));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Some(peer_slot) = peers.admit(peer.ip()) else {
            metrics.limit_hit(Limit::MaxConnectionsPerIp);
            tracing::debug!(%peer, "connection refused: server.max_connections_per_ip reached");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closing at once is cheaper than holding a socket we will not serve.
            metrics.limit_hit(Limit::MaxConnections);
            tracing::debug!(%peer, "connection refused: server.max_connections reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = conn::serve_connection(
            stream,
            peer,
            shared.clone(),
            handler.clone(),
            closing_seen.clone(),
        );
        connections.spawn(
            async move {
                task.await;
                drop((permit, peer_slot));
            }
            .instrument(tracing::debug_span!("connection", %peer)),
        );
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = connections.len();
        tracing::warn!(
            connections = left,
            "connections still open after server.shutdown_grace_secs; closing them"
        );
        metrics
            .limit_rejections
            .with_label_values(&[Limit::ShutdownGrace.as_str()])
            .inc_by(left as u64);
        connections.shutdown().await;
    }
}
