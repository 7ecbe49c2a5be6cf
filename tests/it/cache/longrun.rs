//! Running for months: the disk budget and LRU eviction, corrupt files on disk, offline
//! operation, and a disk that fills up during a fill. Against the in-process fake upstream.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::data;
use crate::support::fake::{sha256, FakeRegistry};
use crate::support::proxy::Proxy;

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn blob_path(dir: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    dir.join("v1/blobs/sha256").join(&hex[..2]).join(hex)
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Memory tier off, so every read exercises the disk.
const SMALL_DISK: &str =
    "disk_bytes = \"10MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\nmemory_bytes = \"0\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulls_beyond_the_budget_evict_the_least_recently_used() {
    let fake = FakeRegistry::start().await;
    let blobs: Vec<(String, Vec<u8>)> = (0..5u8)
        .map(|n| {
            let bytes = data(2 * MIB, n);
            (fake.add_blob(bytes.clone()), bytes)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::to(&fake.url())
        .cache(SMALL_DISK)
        .dir(dir.path())
        .start()
        .await;
    let url = |d: &str| proxy.url(&format!("/v2/a/b/blobs/{d}"));
    // 8 MiB: under the high mark (9 MiB).
    for (digest, bytes) in &blobs[..4] {
        assert!(fetch(&url(digest)).await.1 == *bytes);
        proxy.settled().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Blob 0 is used again: now blob 1 is the least recently used.
    assert!(fetch(&url(&blobs[0].0)).await.1 == blobs[0].1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    // 10 MiB passes the high mark: evict down to 5 MiB, oldest first.
    assert!(fetch(&url(&blobs[4].0)).await.1 == blobs[4].1);
    // The response ends once the digest matched; the file lands just after.
    proxy.settled().await;
    let on_disk = |i: usize| blob_path(dir.path(), &blobs[i].0).exists();
    eventually("blobs 1, 2 and 3 are evicted", || {
        !on_disk(1) && !on_disk(2) && !on_disk(3)
    })
    .await;
    assert!(on_disk(0) && on_disk(4), "the recent ones stay");
    let evicted = proxy
        .metric("regcache_evictions_total{reason=\"budget\"}")
        .await;
    assert_eq!(evicted, 3.0);
    assert_eq!(proxy.metric("regcache_disk_objects").await, 2.0);
    assert_eq!(proxy.metric("regcache_disk_bytes").await, (4 * MIB) as f64);
    // An evicted blob is simply fetched again.
    assert!(fetch(&url(&blobs[1].0)).await.1 == blobs[1].1);
    assert_eq!(fake.count("GET", &blobs[1].0), 2);
    assert_eq!(fake.count("GET", &blobs[0].0), 1, "blob 0 was a hit");
    proxy.stop().await;

    // Recency survives a restart: the snapshot written at shutdown orders the next eviction.
    let index = std::fs::read_to_string(dir.path().join("v1/index")).unwrap();
    assert!(index.contains(blobs[0].0.as_str()), "{index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_or_damaged_blob_is_removed_and_fetched_again() {
    let fake = FakeRegistry::start().await;
    let big = data(3 * MIB, 7);
    let digest = fake.add_blob(big.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::to(&fake.url())
        .cache(SMALL_DISK)
        .dir(dir.path())
        .start()
        .await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));
    assert!(fetch(&url).await.1 == big);
    proxy.settled().await;
    let path = blob_path(dir.path(), &digest);
    std::fs::write(&path, &big[..MIB]).unwrap();
    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200);
    assert!(body == big, "the short file is never served");
    assert_eq!(fake.count("GET", &digest), 2);
    proxy.settled().await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), big.len() as u64);
    assert_eq!(
        proxy
            .metric("regcache_evictions_total{reason=\"corruption\"}")
            .await,
        1.0
    );
    proxy.stop().await;

    // A flipped bit in a small blob (read whole into memory) fails its digest check.
    let small = data(1000, 9);
    let small_digest = fake.add_blob(small.clone());
    let proxy = Proxy::to(&fake.url()).dir(dir.path()).start().await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{small_digest}"));
    assert!(fetch(&url).await.1 == small);
    proxy.stop().await;
    let path = blob_path(dir.path(), &small_digest);
    let mut damaged = small.clone();
    damaged[500] ^= 1;
    std::fs::write(&path, &damaged).unwrap();
    let proxy = Proxy::to(&fake.url()).dir(dir.path()).start().await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{small_digest}"));
    assert!(fetch(&url).await.1 == small);
    assert_eq!(fake.count("GET", &small_digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_serves_the_cache_whatever_its_age_and_refuses_the_rest() {
    let fake = FakeRegistry::start().await;
    let layer = data(100_000, 3);
    let layer_digest = fake.add_blob(layer.clone());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[{{"digest":"{layer_digest}","size":{}}}]}}"#,
        layer.len()
    );
    let manifest_digest = fake.add_manifest("a/b", "v1", OCI_MANIFEST, manifest.clone());
    let dir = tempfile::tempdir().unwrap();
    // Every tag is stale at once: online, each pull would revalidate upstream.
    let online = Proxy::start_with(&fake.url(), "tag_ttl_secs = 0", Some(dir.path())).await;
    let client = reqwest::Client::new();
    let get_manifest = |base: String, reference: &str| {
        client
            .get(format!("{base}/v2/a/b/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
    };
    let response = get_manifest(online.url(""), "v1").await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        fetch(&online.url(&format!("/v2/a/b/blobs/{layer_digest}")))
            .await
            .1
            == layer
    );
    online.stop().await;
    let upstream_requests = fake.count("GET", "") + fake.count("HEAD", "");

    let offline = Proxy::to(&fake.url())
        .cache("offline = true")
        .upstream_toml("tag_ttl_secs = 0")
        .dir(dir.path())
        .start()
        .await;
    let response = get_manifest(offline.url(""), "v1").await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "a stale tag is served offline"
    );
    assert_eq!(response.text().await.unwrap(), manifest);
    let by_digest = get_manifest(offline.url(""), &manifest_digest)
        .await
        .unwrap();
    assert_eq!(by_digest.status().as_u16(), 200);
    let url = offline.url(&format!("/v2/a/b/blobs/{layer_digest}"));
    assert!(fetch(&url).await.1 == layer);

    let unknown = sha256(b"never cached");
    let response = reqwest::get(offline.url(&format!("/v2/a/b/blobs/{unknown}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
    let response = get_manifest(offline.url(""), "v2").await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("offline"));

    assert_eq!(
        fake.count("GET", "") + fake.count("HEAD", ""),
        upstream_requests,
        "offline never contacts upstream"
    );
    let misses = offline.metrics().await;
    let misses: f64 = misses
        .lines()
        .filter(|l| l.starts_with("regcache_offline_misses_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(misses, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_being_read_is_not_evicted_until_its_reader_is_done() {
    let fake = FakeRegistry::start().await;
    let add = |len: usize, seed: u8| {
        let bytes = data(len, seed);
        (fake.add_blob(bytes.clone()), bytes)
    };
    // Larger than loopback socket buffers, so a reader that stops reading holds its stream.
    let (a, a_bytes) = add(24 * MIB, 1);
    let (b, b_bytes) = add(14 * MIB, 2);
    let (c, _) = add(MIB, 3);
    let dir = tempfile::tempdir().unwrap();
    let cache =
        "disk_bytes = \"40MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\nmemory_bytes = \"0\"";
    let proxy = Proxy::to(&fake.url())
        .cache(cache)
        .dir(dir.path())
        .start()
        .await;
    let url = |d: &str| proxy.url(&format!("/v2/a/b/blobs/{d}"));
    assert!(fetch(&url(&a)).await.1 == a_bytes);

    // A slow client holds a stream of A from disk while B pushes the store over the mark.
    let mut held = reqwest::get(url(&a)).await.unwrap();
    let mut got = held.chunk().await.unwrap().unwrap().to_vec();
    assert!(fetch(&url(&b)).await.1 == b_bytes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(blob_path(dir.path(), &a).exists(), "A is being read");
    while let Some(chunk) = held.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == a_bytes, "the reader got every byte");
    drop(held);
    // The server lets go of its stream (and the pin) a moment after the client has every
    // byte; the served-bytes count is recorded exactly then.
    let released = std::time::Instant::now() + Duration::from_secs(10);
    while proxy
        .metric("regcache_served_bytes_total{source=\"disk\"}")
        .await
        < (24 * MIB) as f64
    {
        assert!(
            std::time::Instant::now() < released,
            "the stream of A was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Released: the next publish over the mark evicts A, the least recently used. While
    // A was held, an eviction may have taken B instead (once B's own fill let go of it),
    // so B is pulled again first: a hit, or a publish that goes over the mark again.
    assert!(fetch(&url(&b)).await.1 == b_bytes);
    fetch(&url(&c)).await;
    eventually("A is evicted once released", || {
        !blob_path(dir.path(), &a).exists()
    })
    .await;
    assert!(blob_path(dir.path(), &b).exists() && blob_path(dir.path(), &c).exists());
}
