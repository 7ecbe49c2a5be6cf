//! A disk that fills up during a fill: the client still gets the blob, nothing half-written
//! stays, the error is counted, and caching resumes once there is room. Uses a 4 MiB tmpfs,
//! so it needs root; without it the test says so and passes (the relay itself is unit-tested
//! with a failing writer in `cache::fill::copy`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::proxy::Proxy;

/// A small tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_still_serves_the_blob_and_caching_resumes_when_space_returns() {
    let outer = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(outer.path()) else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let fake = support::fake::FakeRegistry::start().await;
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 253) as u8).collect();
    let big_digest = fake.add_blob(big.clone());
    let small = vec![7u8; 1 << 20];
    let small_digest = fake.add_blob(small.clone());
    // A budget larger than the filesystem: only the disk itself says no.
    let cache = "disk_bytes = \"1GiB\"\nmemory_bytes = \"0\"";
    let proxy = Proxy::start_config(&fake.url(), cache, "", Some(&fs.0)).await;

    let body = reqwest::get(proxy.url(&format!("/v2/a/blobs/{big_digest}")))
        .await
        .unwrap()
        .bytes()
        .await
        .expect("the whole blob arrives");
    assert!(body[..] == big[..]);
    assert_eq!(
        files_under(&fs.0.join("v1/tmp")),
        0,
        "nothing half-written stays"
    );
    assert_eq!(files_under(&fs.0.join("v1/blobs")), 0);
    assert!(proxy.metric("regcache_cache_write_errors_total").await >= 1.0);
    assert_eq!(
        proxy
            .metric("regcache_fills_total{result=\"uncached\"}")
            .await,
        1.0
    );

    // The failed fill's space is back: the next blob is cached as usual.
    let body = reqwest::get(proxy.url(&format!("/v2/a/blobs/{small_digest}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body[..] == small[..]);
    assert_eq!(
        proxy
            .metric("regcache_fills_total{result=\"cached\"}")
            .await,
        1.0
    );
    assert_eq!(files_under(&fs.0.join("v1/blobs")), 1);
    proxy.stop().await;
}
