//! A real upstream for end-to-end tests: Debian's `docker-registry` (distribution 2.8)
//! run as a child process on 127.0.0.1, with its storage, config and log in a tempdir.
//!
//! Besides starting and stopping it, this module reads the registry's access log so a
//! test can count what reached the upstream (`blob_gets`, `manifest_gets`). The access
//! log is Apache's combined format, one line per request after the response is written,
//! `127.0.0.1 - - [22/Nov/2026:15:54:19 +0000] "GET /v2/a/b/blobs/sha256:.. HTTP/1.1" 200 157 "" "ua"`;
//! the registry also writes a logrus line (`time="..." level=info msg="response
//! completed" ...`) per request, which is ignored here.
//!
//! No I/O happens outside 127.0.0.1 and every wait is bounded.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `start` waits for `GET /v2/` to answer 200 (or 401 when auth is on).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at starting, each on a new port, in case another test took the port first.
const START_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// One request as the registry's access log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Registry {
    /// Starts a registry with no auth and deletes enabled; panics with its log if it is
    /// not answering `GET /v2/` within ~20 s.
    pub fn start() -> Registry {
        Registry::start_with("")
    }

    /// Like `start`, with `extra_yaml` appended to the generated config. It may add
    /// top-level sections other than `version`, `log`, `storage` and `http` (for example
    /// `auth:`); `{dir}` in it is replaced by the registry's tempdir, where a test can
    /// write an htpasswd file or certificates before or after the call.
    pub fn start_with(extra_yaml: &str) -> Registry {
        let dir = tempfile::tempdir().expect("registry tempdir");
        let mut registry = Registry {
            dir,
            port: 0,
            child: None,
        };
        let config_path = registry.dir().join("config.yml");
        for _ in 0..START_ATTEMPTS {
            registry.port = free_port();
            let config = config_yaml(registry.dir(), registry.port, extra_yaml);
            std::fs::write(&config_path, config).expect("write registry config");
            registry.spawn();
            if registry.wait_ready() {
                return registry;
            }
            registry.stop();
            if !registry.log().contains("already in use") {
                break;
            }
        }
        panic!(
            "docker-registry did not start; its log:\n{}",
            registry.log()
        );
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the form skopeo and containers expect.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The tempdir holding config, storage (`data/`) and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the registry and waits for it. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again after `stop`, on the same port, config and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        if !self.wait_ready() {
            self.stop();
            panic!("docker-registry did not restart; its log:\n{}", self.log());
        }
    }

    /// Everything the registry printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The access log, parsed, once it has stopped growing (the registry writes a line
    /// just after the response, so a client may finish before its line appears).
    pub fn access_log(&self) -> Vec<AccessEntry> {
        wait_until_quiet(&self.log_path());
        self.log().lines().filter_map(parse_access_line).collect()
    }

    /// Number of `GET /v2/<name>/blobs/sha256:...` requests received, whatever their status.
    pub fn blob_gets(&self) -> usize {
        self.count_gets("/blobs/sha256:")
    }

    /// Number of GETs of blob `digest` received, whatever their status.
    pub fn gets_of(&self, digest: &str) -> usize {
        self.count_gets(&format!("/blobs/{digest}"))
    }

    /// Number of `GET /v2/<name>/manifests/<reference>` requests received.
    pub fn manifest_gets(&self) -> usize {
        self.count_gets("/manifests/")
    }

    fn count_gets(&self, needle: &str) -> usize {
        let entries = self.access_log();
        let gets = entries.iter().filter(|e| e.method == "GET");
        gets.filter(|e| e.path.starts_with("/v2/") && e.path.contains(needle))
            .count()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(self.dir().join("config.yml"));
        self.child = Some(spawn_logged(&mut cmd, &self.log_path()));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                return false;
            }
            // 401 is an answer too: a registry with auth configured is up.
            if matches!(http_status(&self.addr(), "/v2/"), Some(200 | 401)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config_yaml(dir: &Path, port: u16, extra_yaml: &str) -> String {
    let data = dir.join("data");
    let extra = extra_yaml.replace("{dir}", &dir.display().to_string());
    format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: regcache-e2e-not-a-secret
{extra}
",
        data = data.display()
    )
}

/// A port that was free a moment ago: bind port 0, read it, release it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = out.try_clone().expect("clone log handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Runs `cmd` to its end with its output appended to `log`, without the caller's proxy
/// variables (everything here is on loopback); killed after `timeout` (then `None`).
pub fn run_bounded(cmd: &mut Command, log: &Path, timeout: Duration) -> Option<ExitStatus> {
    for var in ["http_proxy", "https_proxy", "all_proxy"] {
        cmd.env_remove(var).env_remove(var.to_uppercase());
    }
    let mut child = spawn_logged(cmd, log);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of a plain `GET path` to `addr`, or None if nothing answered in 2 s.
/// Deliberately dependency-free and blocking so it works inside and outside a runtime.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr.parse().ok()?, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits (at most 3 s) until `path` has not grown for 300 ms.
fn wait_until_quiet(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = size();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

/// Parses `host - - [time] "METHOD PATH PROTO" STATUS SIZE "referer" "agent"`.
fn parse_access_line(line: &str) -> Option<AccessEntry> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessEntry {
        method,
        path,
        status,
    })
}
