//! Runs the real `regcache` binary as a child process for end-to-end tests.
//!
//! The proxy listens on 127.0.0.1 (ports picked free), pulls from one `--upstream`
//! and keeps its cache in a directory the test owns, so a test can stop it and start
//! another on the same cache. Its stdout and stderr go to `<cache_dir>.log`
//! (appended across restarts), which is printed when it fails to start.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::registry::{free_port, http_status, spawn_logged};

/// How long `start` waits for `GET /v2/` to answer 200.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts, each on new ports, when a port was taken between picking and binding.
const START_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub struct Regcache {
    port: u16,
    admin_port: u16,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Regcache {
    /// Starts `regcache serve` against `upstream_url` with its cache in `cache_dir`
    /// (which may hold a previous run's cache). Panics with the log if it is not
    /// answering `GET /v2/` with 200 within ~20 s.
    pub fn start(upstream_url: &str, cache_dir: &Path) -> Regcache {
        Regcache::launch(cache_dir, &["--upstream", upstream_url], &[], None)
    }

    /// Starts `regcache serve --config <cache_dir>.toml` after writing `config` there
    /// (listen addresses and the cache dir still come from the command line).
    pub fn start_with_config(config: &str, cache_dir: &Path) -> Regcache {
        Regcache::start_with_config_env(config, cache_dir, &[])
    }

    /// As [`Regcache::start_with_config`], with `env` added to the daemon's environment
    /// (say, the AWS credentials of a bucket).
    pub fn start_with_config_env(config: &str, cache_dir: &Path, env: &[(&str, &str)]) -> Regcache {
        Regcache::start_on(None, config, cache_dir, env)
    }

    /// As [`Regcache::start_with_config_env`], listening on `port` when given (a member of
    /// a cluster whose config names every member's address before they start).
    pub fn start_on(
        port: Option<u16>,
        config: &str,
        cache_dir: &Path,
        env: &[(&str, &str)],
    ) -> Regcache {
        let config_path = cache_dir.with_extension("toml");
        if let Some(parent) = config_path.parent() {
            std::fs::create_dir_all(parent).expect("create config dir");
        }
        std::fs::write(&config_path, config).expect("write regcache config");
        let config_arg = config_path.display().to_string();
        Regcache::launch(cache_dir, &["--config", &config_arg], env, port)
    }

    /// As [`Regcache::start`], with `--config FILE` under the command-line flags.
    pub fn start_with_config_file(
        upstream_url: &str,
        cache_dir: &Path,
        config: Option<&Path>,
    ) -> Regcache {
        let mut args = vec!["--upstream".to_string(), upstream_url.to_string()];
        if let Some(config) = config {
            args.extend(["--config".to_string(), config.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Regcache::launch(cache_dir, &args, &[], None)
    }

    fn launch(
        cache_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        fixed_port: Option<u16>,
    ) -> Regcache {
        let log_path = cache_dir.with_extension("log");
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).expect("create log dir");
        }
        for _ in 0..START_ATTEMPTS {
            let (port, admin_port) = (fixed_port.unwrap_or_else(free_port), free_port());
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcache"));
            cmd.arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
                .args(args)
                .arg("--cache-dir")
                .arg(cache_dir)
                .envs(env.iter().copied())
                .env("RUST_LOG", "info");
            let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let child = Some(spawn_logged(&mut cmd, &log_path));
            let log_path = log_path.clone();
            let mut regcache = Regcache {
                port,
                admin_port,
                log_path,
                child,
            };
            match regcache.wait_ready() {
                Ok(()) => return regcache,
                Err(why) => {
                    regcache.stop();
                    let log = regcache.log();
                    let this_run = log.get(log_start as usize..).unwrap_or(&log);
                    if !this_run.contains("already in use") {
                        panic!("regcache did not start ({why}); its log:\n{log}");
                    }
                }
            }
        }
        panic!("regcache did not start: ports kept being taken");
    }

    /// `127.0.0.1:PORT` of the registry API, as skopeo wants it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `127.0.0.1:PORT` of the admin listener (metrics, health).
    pub fn admin_addr(&self) -> String {
        format!("127.0.0.1:{}", self.admin_port)
    }

    /// The Prometheus text from the admin `/metrics`; panics unless it answers 200.
    pub async fn metrics(&self) -> String {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let url = format!("http://{}/metrics", self.admin_addr());
        let response = client.get(&url).send().await.expect("GET /metrics");
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        response.text().await.expect("metrics body")
    }

    /// Waits (bounded) until no fill is in flight: a client's response ends once the digest
    /// matched, and the blob is in the store a moment later.
    pub async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_sum(&self.metrics().await, "regcache_fills_in_flight").unwrap_or(0.0) > 0.0 {
            assert!(Instant::now() < deadline, "fills never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything regcache printed so far, across restarts on the same cache dir.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&self) {
        let pid = self.pid().expect("regcache is running").to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
    }

    /// Waits up to `timeout` for the process to exit; its status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills regcache and waits for it. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let child = self.child.as_mut().ok_or("not running")?;
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            // Over TLS the API does not speak plain HTTP; the admin listener always does.
            let api = http_status(&self.addr(), "/v2/") == Some(200);
            if api || http_status(&self.admin_addr(), "/healthz") == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no 200 from GET /v2/ in {START_TIMEOUT:?}"))
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `regcache check-config` on `text` (written to `dir/regcache.toml`): how it exited,
/// and everything it printed (stdout, then stderr).
pub fn check_config(dir: &Path, text: &str) -> (std::process::ExitStatus, String) {
    let path = dir.join("regcache.toml");
    std::fs::write(&path, text).expect("write the config");
    let output = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run regcache check-config");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, printed)
}

/// The sum of every sample of metric `name` (all label sets) in Prometheus text,
/// or None if there is none.
pub fn metric_sum(metrics: &str, name: &str) -> Option<f64> {
    series(metrics, name)
        .into_iter()
        .fold(None, |sum, (_, v)| Some(sum.unwrap_or(0.0) + v))
}

/// Every sample of `name` in Prometheus text: its labels and value.
pub fn series(metrics: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let labels = labels
                .split("\",")
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}
