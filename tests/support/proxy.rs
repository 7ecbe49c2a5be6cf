//! Runs regcache in-process on loopback (port 0), the way `main` does, for integration tests.

use std::net::SocketAddr;
use std::path::Path;

use regcache::app::{self, Listeners};
use regcache::config::{Config, Overrides};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
        Proxy::start_config(upstream, "", extra, dir).await
    }

    /// Like `start_with`, with `cache` as the body of the `[cache]` table.
    pub async fn start_config(
        upstream: &str,
        cache: &str,
        extra: &str,
        dir: Option<&Path>,
    ) -> Proxy {
        let temp = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().unwrap()),
        };
        let cache_dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| temp.as_ref().unwrap().path().to_path_buf());
        let text = format!("[cache]\n{cache}\n[[upstream]]\nurl = \"{upstream}\"\n{extra}\n");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            upstream: None,
            cache_dir: Some(cache_dir),
        };
        let config = Config::parse(&text, "test", &overrides).unwrap();
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
