//! Runs regcache in-process on loopback (port 0), the way `main` does, for integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use regcache::app::{self, Listeners};
use regcache::config::{Config, Overrides};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A test proxy's config: one upstream, and TOML for its `[server]` and `[cache]` tables
/// and its `[[upstream]]` table's other keys; a fresh cache directory unless given one.
pub struct ProxyBuilder {
    upstream: String,
    server: String,
    cache: String,
    extra: String,
    dir: Option<PathBuf>,
}

impl ProxyBuilder {
    /// The body of the `[server]` table (limits, TLS files).
    pub fn server(mut self, toml: &str) -> ProxyBuilder {
        self.server = toml.to_string();
        self
    }

    /// The body of the `[cache]` table.
    pub fn cache(mut self, toml: &str) -> ProxyBuilder {
        self.cache = toml.to_string();
        self
    }

    /// More keys of the `[[upstream]]` table (e.g. `tag_ttl_secs = 0`).
    pub fn upstream_toml(mut self, toml: &str) -> ProxyBuilder {
        self.extra = toml.to_string();
        self
    }

    /// Uses (or reuses, for a restart) this cache directory.
    pub fn dir(mut self, dir: &Path) -> ProxyBuilder {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub async fn start(self) -> Proxy {
        let text = format!(
            "[server]\n{}\n[cache]\n{}\n[[upstream]]\nurl = \"{}\"\n{}\n",
            self.server, self.cache, self.upstream, self.extra
        );
        Proxy::start_config_in(&text, self.dir.as_deref()).await
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: Option<TempDir>,
}

impl Proxy {
    /// A proxy in front of `upstream` with a fresh cache directory.
    pub async fn start(upstream: &str) -> Proxy {
        Proxy::start_with(upstream, "", None).await
    }

    /// `extra` is TOML for the single `[[upstream]]` table (e.g. `tag_ttl_secs = 0`);
    /// `dir` reuses a cache directory (a restart).
    pub async fn start_with(upstream: &str, extra: &str, dir: Option<&Path>) -> Proxy {
        let builder = Proxy::to(upstream).upstream_toml(extra);
        match dir {
            Some(dir) => builder.dir(dir).start().await,
            None => builder.start().await,
        }
    }

    /// `server` is TOML for the `[server]` table (limits, TLS files).
    pub async fn start_server(upstream: &str, server: &str) -> Proxy {
        Proxy::to(upstream).server(server).start().await
    }

    /// A proxy in front of `upstream`, configured step by step (see [`ProxyBuilder`]).
    pub fn to(upstream: &str) -> ProxyBuilder {
        ProxyBuilder {
            upstream: upstream.to_string(),
            server: String::new(),
            cache: String::new(),
            extra: String::new(),
            dir: None,
        }
    }

    /// A proxy running `config` (TOML, typically several `[[upstream]]` tables) with its
    /// cache in `dir`, or in a fresh directory.
    pub async fn start_config_in(config: &str, dir: Option<&Path>) -> Proxy {
        let temp = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().unwrap()),
        };
        let cache_dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| temp.as_ref().unwrap().path().to_path_buf());
        Proxy::start_text(config, cache_dir, temp).await
    }

    async fn start_text(text: &str, cache_dir: PathBuf, temp: Option<TempDir>) -> Proxy {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: None,
            cache_dir: Some(cache_dir),
            ..Overrides::default()
        };
        let config = Config::parse(text, "test", &overrides).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.api.local_addr().unwrap();
        let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app::run(listeners, &config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Proxy {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
            _dir: temp,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample, e.g. `metric("regcache_fills_total{result=\"cached\"}")`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits (bounded) until no fill is in flight: a client's response ends once the digest
    /// matched, and the blob is in the store a moment later.
    pub async fn settled(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.metric("regcache_fills_in_flight ").await > 0.0 {
            assert!(std::time::Instant::now() < deadline, "fills never ended");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Asks for shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the app has stopped after [`Proxy::begin_shutdown`].
    pub async fn stopped(mut self) {
        if let Some(task) = self.task.take() {
            task.await.expect("app task");
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
