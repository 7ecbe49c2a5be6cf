//! Wiring: config -> metrics, cache and upstreams -> listeners. `main` and the tests both
//! start the daemon through [`run`], so what the tests exercise is what ships.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cache::lifecycle::Rules;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, State};
use crate::upstream::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot open the cache directory {dir}: {source}")]
    Cache { dir: String, source: io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The bound sockets. Binding before `run` lets callers (and tests, with port 0) learn the
/// real addresses first.
pub struct Listeners {
    pub api: TcpListener,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, AppError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })
        };
        let api = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { api, admin })
    }
}

/// Builds the shared state: opens the store (removing crash leftovers) and the clients.
pub fn state(config: &Config) -> Result<Arc<State>, AppError> {
    let metrics = Metrics::new();
    let rules = Rules::new(&config.upstreams);
    let cache =
        Cache::open(&config.cache, rules, metrics.clone()).map_err(|source| AppError::Cache {
            dir: config.cache.dir.display().to_string(),
            source,
        })?;
    let upstreams = Upstreams::new(config, &metrics)?;
    Ok(Arc::new(State {
        cache,
        upstreams,
        metrics,
    }))
}

/// Serves until `shutdown` resolves, then drains connections in flight.
pub async fn run(
    listeners: Listeners,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let state = state(config)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin = listeners.admin.map(|listener| {
        let state = state.clone();
        let mut stopped = stopped.clone();
        tracing::info!(addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "admin listening");
        tokio::spawn(server::serve(
            listener,
            move |request| {
                let response = server::admin_response(&state, &request);
                async move { response }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    if let Ok(addr) = listeners.api.local_addr() {
        let upstream = config.default_upstream();
        tracing::info!(%addr, upstream = %upstream.url, cache = %config.cache.dir.display(), "regcache listening");
    }
    let api_state = state.clone();
    server::serve(
        listeners.api,
        move |request| server::handle(api_state.clone(), request),
        shutdown,
    )
    .await;
    let _ = stop.send(true);
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    state.cache.flush().await;
    tracing::info!("stopped");
    Ok(())
}
