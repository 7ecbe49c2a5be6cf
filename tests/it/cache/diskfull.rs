//! A disk that fills up during a fill: the client still gets the blob, nothing half-written
//! stays, the error is counted, and caching resumes once there is room, made by evicting the
//! least recently used objects at once. Uses a small tmpfs, so it needs root; without it the
//! tests skip, saying so (and fail under `tests/run.sh`; the relay itself is unit-tested with a failing writer in
//! `cache::fill::copy`, the emergency eviction's choice of victims in `cache::disk`).

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use crate::support::proxy::Proxy;

/// A small tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
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
    crate::support::store::files(dir).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_still_serves_the_blob_and_caching_resumes_when_space_returns() {
    let outer = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(outer.path(), "4m") else {
        return crate::support::skip("mounting a tmpfs needs root");
    };
    let fake = crate::support::fake::FakeRegistry::start().await;
    let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 253) as u8).collect();
    let big_digest = fake.add_blob(big.clone());
    let small = vec![7u8; 1 << 20];
    let small_digest = fake.add_blob(small.clone());
    // A budget larger than the filesystem: only the disk itself says no.
    let cache = "disk_bytes = \"1GiB\"\nmemory_bytes = \"0\"";
    let proxy = Proxy::to(&fake.url()).cache(cache).dir(&fs.0).start().await;

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

/// The whole blob, once its fill (if it started one) has ended.
async fn get_blob(proxy: &Proxy, digest: &str) -> bytes::Bytes {
    let bytes = reqwest::get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .expect("the whole blob arrives");
    proxy.settled().await;
    bytes
}

fn blob_data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_evicts_the_least_recently_used_so_the_next_fill_is_cached() {
    let outer = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(outer.path(), "8m") else {
        return crate::support::skip("mounting a tmpfs needs root");
    };
    let fake = crate::support::fake::FakeRegistry::start().await;
    let old: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|n| {
            let data = blob_data(n, 2 << 20);
            (fake.add_blob(data.clone()), data)
        })
        .collect();
    let new = blob_data(9, 3 << 20);
    let new_digest = fake.add_blob(new.clone());
    // A budget far larger than the 8 MiB filesystem: no watermark will ever be reached.
    let cache = "disk_bytes = \"1GiB\"\nmemory_bytes = \"0\"";
    let proxy = Proxy::to(&fake.url()).cache(cache).dir(&fs.0).start().await;
    let full = "regcache_evictions_total{reason=\"disk_full\"}";

    // Three 2 MiB blobs fill 6 of the 8 MiB; the first is then used again, so the other
    // two are the least recently used.
    for (digest, data) in &old {
        assert!(get_blob(&proxy, digest).await[..] == data[..]);
    }
    assert!(get_blob(&proxy, &old[0].0).await[..] == old[0].1[..]);
    assert_eq!(crate::support::store::verified_blobs(&fs.0), 3);
    assert_eq!(proxy.metric(full).await, 0.0);

    // 3 MiB do not fit: the client still gets every byte, through the relay...
    assert!(get_blob(&proxy, &new_digest).await[..] == new[..]);
    assert!(proxy.metric("regcache_cache_write_errors_total").await >= 1.0);
    let uncached = "regcache_fills_total{result=\"uncached\"}";
    assert_eq!(proxy.metric(uncached).await, 1.0);
    // ...and the least recently used blobs go at once, with no watermark reached: two
    // while the relayed fill still holds its unlinked temp file, one if it let go of it
    // before the eviction looked at the free space.
    for _ in 0..100 {
        if proxy.metric(full).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let evicted = proxy.metric(full).await;
    assert!(evicted == 1.0 || evicted == 2.0, "{evicted} evicted");
    assert_eq!(
        proxy
            .metric("regcache_evictions_total{reason=\"budget\"}")
            .await,
        0.0
    );
    let held = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        crate::support::store::files(&fs.0.join("v1/blobs"))
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == hex))
    };
    assert!(held(&old[0].0), "the recently used blob stays");
    assert!(!held(&old[1].0), "the least recently used goes first");
    assert_eq!(held(&old[2].0), evicted == 1.0);

    // The next fill of the new blob is cached, and the pull after it never reaches upstream.
    assert!(get_blob(&proxy, &new_digest).await[..] == new[..]);
    let cached = "regcache_fills_total{result=\"cached\"}";
    assert_eq!(proxy.metric(cached).await, 4.0);
    let upstream_gets = |d: &str| fake.count("GET", &format!("/blobs/{d}"));
    assert_eq!(upstream_gets(&new_digest), 2);
    assert!(get_blob(&proxy, &new_digest).await[..] == new[..]);
    assert!(get_blob(&proxy, &old[0].0).await[..] == old[0].1[..]);
    assert_eq!(upstream_gets(&new_digest), 2, "served from the cache");
    assert_eq!(upstream_gets(&old[0].0), 1);
    assert_eq!(proxy.metric(uncached).await, 1.0);
    assert_eq!(
        crate::support::store::verified_blobs(&fs.0),
        4 - evicted as usize
    );
    assert_eq!(files_under(&fs.0.join("v1/tmp")), 0);
    proxy.stop().await;
}
