//! Wiring: config -> metrics, cache and upstreams -> listeners. `main` and the tests both
//! start the daemon through [`run`], so what the tests exercise is what ships.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use crate::server::auth::{Access, AuthFileError};
use crate::server::tls::{Tls, TlsError};
use crate::server::{self, Serving, State};
use crate::store::bucket::Bucket;
use crate::store::lifecycle::Rules;
use crate::upstream::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot open the cache directory {dir}: {source}")]
    Cache { dir: String, source: io::Error },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server.tls_cert_file / server.tls_key_file: {0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Auth(#[from] AuthFileError),
    #[error("cannot use the socket passed by systemd: {0}")]
    Activated(io::Error),
    #[error("bucket: {0}")]
    Bucket(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Admin(io::Error),
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

    /// Adopts sockets passed by systemd (see [`crate::systemd::take_listeners`]); binds
    /// `admin_listen` itself when no admin socket was passed. Needs a running runtime.
    pub async fn from_activated(
        sockets: crate::systemd::Activated,
        config: &Config,
    ) -> Result<Listeners, AppError> {
        let adopt = |listener: std::net::TcpListener| {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)
        };
        let api = adopt(sockets.api).map_err(AppError::Activated)?;
        let admin = match (sockets.admin, config.admin_listen) {
            (Some(listener), _) => Some(adopt(listener).map_err(AppError::Activated)?),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind { addr, source })?,
            ),
            (None, None) => None,
        };
        Ok(Listeners { api, admin })
    }
}

/// Builds the shared state: opens the store (removing crash leftovers) and the clients.
pub fn state(config: &Config) -> Result<Arc<State>, AppError> {
    let metrics = Metrics::new();
    let cache = mirror(config, &metrics)?;
    let upstreams = Upstreams::new(config, &metrics)?;
    let access = Access::load(&config.server.auth, metrics.auth_bcrypt_runs.clone())?;
    let admin = server::admin::Admin::new(config).map_err(AppError::Admin)?;
    Ok(Arc::new(State {
        cache: Arc::new(cache),
        upstreams: Arc::new(upstreams),
        metrics,
        access,
        admin,
    }))
}

/// The cache and upstreams for an in-process prefetch: this process owns the store for
/// the run, and is refused while a daemon does (see `store::owner`).
pub fn owned(config: &Config) -> Result<(Mirror, Upstreams), AppError> {
    let metrics = Metrics::new();
    let cache = mirror(config, &metrics)?;
    Ok((cache, Upstreams::new(config, &metrics)?))
}

/// The mirror over the configured store, bucket and cluster; this process owns the store.
fn mirror(config: &Config, metrics: &Metrics) -> Result<Mirror, AppError> {
    let rules = Rules::new(&config.upstreams);
    let bucket = bucket(config, metrics)?;
    let cluster = cluster(config, metrics)?;
    let mirror =
        Mirror::open(&config.cache, bucket, cluster, rules, metrics.clone()).map_err(|source| {
            AppError::Cache {
                dir: config.cache.dir.display().to_string(),
                source,
            }
        })?;
    Ok(mirror.one_trust_domain(config.one_trust_domain()))
}

/// The other replicas, when the config lists a cluster.
fn cluster(config: &Config, metrics: &Metrics) -> Result<Option<Cluster>, AppError> {
    let Some(cluster) = &config.cluster else {
        return Ok(None);
    };
    Ok(Some(Cluster::new(cluster, metrics)?))
}

/// The shared bucket's client, when the config names one.
fn bucket(config: &Config, metrics: &Metrics) -> Result<Option<Bucket>, AppError> {
    let Some(bucket) = &config.bucket else {
        return Ok(None);
    };
    let counts = metrics.bucket_operations.clone();
    Bucket::new(bucket, counts)
        .map(Some)
        .map_err(|e| AppError::Bucket(e.to_string()))
}

/// Serves until `shutdown` resolves, then drains connections in flight for up to
/// `server.shutdown_grace_secs`. Tells systemd when it is ready and when it stops.
pub async fn run(
    listeners: Listeners,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let state = state(config)?;
    let tls = config.server.tls.as_ref().map(Tls::load).transpose()?;
    spawn_reload_on_hangup(tls.clone(), state.clone());
    let serving = Serving {
        limits: config.server.clone(),
        tls,
        metrics: state.metrics.clone(),
    };
    // A socket passed by systemd bypasses the config's check of `admin_listen`.
    if let Some(addr) = listeners.admin.as_ref().and_then(|l| l.local_addr().ok()) {
        if let Some(fix) = crate::config::token_required(addr, state.admin.token.is_some()) {
            return Err(AppError::Admin(io::Error::other(format!(
                "admin.token_file: {fix}"
            ))));
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin = listeners.admin.map(|listener| {
        let state = state.clone();
        let mut stopped = stopped.clone();
        tracing::info!(addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "admin listening");
        state.admin.start(state.metrics.clone());
        if let Ok(addr) = listener.local_addr() {
            if let Some(warning) = crate::config::admin_exposure_warning(addr) {
                tracing::warn!("{warning}");
            }
            // Operator commands that find the store taken send their work here.
            if let Err(e) = state.cache.store().announce_admin(addr) {
                tracing::warn!(error = %e, "writing the admin address into the store's lock failed; operator commands cannot reach this daemon");
            }
        }
        // The admin port stays clear text: it is meant for a private interface.
        let admin_serving = Serving {
            tls: None,
            ..serving.clone()
        };
        tokio::spawn(server::serve(
            listener,
            admin_serving,
            move |request| {
                let answer = server::admin_response(state.clone(), request);
                async move { answer.await.map(server::body::Outgoing::Body) }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    if let Ok(addr) = listeners.api.local_addr() {
        let upstream = config.default_upstream();
        let scheme = if serving.tls.is_some() {
            "https"
        } else {
            "http"
        };
        // The config refuses userinfo in URLs; redacting keeps a slip out of the log anyway.
        let upstream = crate::upstream::redact::url(&upstream.url);
        tracing::info!(%addr, scheme, %upstream, cache = %config.cache.dir.display(), "regcache listening");
        if let Some(warning) = config
            .server
            .auth
            .exposure_warning(addr, serving.tls.is_some())
        {
            tracing::warn!("{warning}");
        }
    }
    spawn_upstream_check(&state);
    crate::systemd::notify_ready();
    crate::systemd::spawn_watchdog();
    let api_state = state.clone();
    server::serve(
        listeners.api,
        serving,
        move |request| server::handle(api_state.clone(), request),
        async {
            shutdown.await;
            crate::systemd::notify_stopping();
            tracing::info!("shutting down: no new connections; draining transfers in flight");
        },
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

/// Reloads the certificate and the client credential files on SIGHUP; open connections
/// keep the certificate they started with.
fn spawn_reload_on_hangup(tls: Option<Tls>, state: Arc<State>) {
    if tls.is_none() && !state.access.is_enabled() {
        return;
    }
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates and credentials will not reload");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some(tls) = &tls {
                match tls.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: certificate reload failed; keeping the current one")
                    }
                }
            }
            if state.access.is_enabled() {
                match state.access.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: client credentials reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: credential reload failed; keeping the current ones")
                    }
                }
            }
        }
    });
}

/// Says once, at startup, when the default upstream does not answer: the mirror still
/// serves what it holds, but every miss will fail until the registry can be reached.
fn spawn_upstream_check(state: &State) {
    let Some(upstream) = state.upstreams.default_upstream() else {
        return;
    };
    if upstream.config().offline {
        return;
    }
    tokio::spawn(async move {
        if let Err(why) = upstream.reachable().await {
            let url = crate::upstream::redact::url(&upstream.config().url);
            tracing::warn!(upstream = upstream.name(), %url, %why, "the default upstream is not reachable: cached content is served, misses fail until it is");
        }
    });
}
