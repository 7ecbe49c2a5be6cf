//! Blob fills against an in-process fake upstream: corrupt and cut bodies, upstream errors,
//! slow bodies, and single flight.

use std::sync::Arc;
use std::time::Duration;

use crate::support::data;
use crate::support::fake::{sha256, FakeRegistry, Fault};
use crate::support::proxy::Proxy;
use tokio::sync::Barrier;

/// Reads a whole body; `Err` when the response was cut.
async fn fetch(url: &str) -> (u16, Result<Vec<u8>, reqwest::Error>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.map(|b| b.to_vec()))
}

fn cached_blob_files(dir: &std::path::Path) -> usize {
    let root = dir.join("v1/blobs/sha256");
    walk(&root)
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_bytes_end_the_response_as_an_error_and_are_not_cached() {
    let fake = FakeRegistry::start().await;
    let blob = data(3 << 20, 1);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Corrupt);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "", Some(dir.path())).await;
    let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));

    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200, "headers go out before the digest is known");
    assert!(
        body.is_err(),
        "a corrupt blob must not arrive as a complete body"
    );
    assert_eq!(cached_blob_files(dir.path()), 0);
    assert_eq!(
        proxy
            .metric("regcache_digest_mismatches_total{kind=\"blob\"}")
            .await,
        1.0
    );

    // Upstream heals: the next request fetches again and caches.
    fake.set_fault(&digest, Fault::None);
    let (_, body) = fetch(&url).await;
    assert_eq!(body.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 2);
    proxy.settled().await;
    assert_eq!(cached_blob_files(dir.path()), 1);
    let (_, body) = fetch(&url).await;
    assert_eq!(body.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 2, "the third pull is a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_cut_midway_without_range_support_is_an_error_and_leaves_nothing_behind() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(1 << 20, 2));
    fake.set_fault(&digest, Fault::Cut);
    // Asked for the rest, upstream sends the whole blob again: not resumable.
    fake.ignore_ranges();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "", Some(dir.path())).await;
    let (_, body) = fetch(&proxy.url(&format!("/v2/a/blobs/{digest}"))).await;
    assert!(body.is_err());
    assert_eq!(cached_blob_files(dir.path()), 0);
    assert_eq!(
        walk(&dir.path().join("v1/tmp")),
        0,
        "the temp file is removed"
    );
    assert_eq!(
        proxy
            .metric("regcache_fills_total{result=\"mismatch\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_errors_become_gateway_errors_with_an_oci_body() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(1000, 3));
    fake.set_fault(&digest, Fault::Status(500));
    let proxy = Proxy::start(&fake.url()).await;
    let response = reqwest::get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&fake.url()[7..]),
        "names the upstream: {message}"
    );

    let missing = sha256(b"nothing");
    let response = reqwest::get(proxy.url(&format!("/v2/a/blobs/{missing}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string());

    // Nothing listening there at all.
    let dead = Proxy::start("http://127.0.0.1:9").await;
    let response = reqwest::get(dead.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_byte_does_not_wait_for_the_download() {
    let fake = FakeRegistry::start().await;
    let blob = data(4 << 20, 4);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    let proxy = Proxy::start(&fake.url()).await;
    let mut response = reqwest::get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap();
    // Upstream has sent only half and is held: bytes must already flow to the client.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("first bytes arrive while upstream is held")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    fake.release();
    let mut got = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_cold_gets_make_one_upstream_get() {
    let fake = FakeRegistry::start().await;
    let blob = data(8 << 20, 5);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Slow(Duration::from_millis(2)));
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url(&format!("/v2/library/x/blobs/{digest}"));
    let barrier = Arc::new(Barrier::new(20));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                fetch(&url).await
            })
        })
        .collect();
    for client in clients {
        let (status, body) = client.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.unwrap() == blob, "every client gets the right bytes");
    }
    assert_eq!(fake.count("GET", &digest), 1, "exactly one upstream GET");
    let coalesced = proxy
        .metric("regcache_requests_total{kind=\"blob\",result=\"coalesced\"}")
        .await;
    let hits = proxy
        .metric("regcache_requests_total{kind=\"blob\",result=\"disk_hit\"}")
        .await;
    assert_eq!(coalesced + hits, 19.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fill_completes_after_its_client_left() {
    let fake = FakeRegistry::start().await;
    let blob = data(2 << 20, 6);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "", Some(dir.path())).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));
    let mut response = reqwest::get(&url).await.unwrap();
    response.chunk().await.unwrap();
    drop(response);
    fake.release();
    for _ in 0..200 {
        if cached_blob_files(dir.path()) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        cached_blob_files(dir.path()),
        1,
        "the fill finished without its client"
    );
    let (_, body) = fetch(&url).await;
    assert_eq!(body.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_does_not_hold_back_a_fast_one() {
    let fake = FakeRegistry::start().await;
    let blob = data(16 << 20, 7);
    let digest = fake.add_blob(blob.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));
    // The slow client reads one chunk and then stalls for the whole test.
    let mut slow = reqwest::get(&url).await.unwrap();
    slow.chunk().await.unwrap();
    let (_, fast) = tokio::time::timeout(Duration::from_secs(20), fetch(&url))
        .await
        .unwrap();
    assert_eq!(fast.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 1);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_are_served_during_a_fill_and_from_the_cache() {
    let fake = FakeRegistry::start().await;
    let blob = data(1 << 20, 8);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Slow(Duration::from_millis(5)));
    let proxy = Proxy::start_with(&fake.url(), "", None).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));
    let client = reqwest::Client::new();
    let ranged = |range: &'static str| client.get(&url).header("range", range).send();

    // During the fill (the fake is slow) and then from disk.
    for _ in 0..2 {
        let response = ranged("bytes=100-199").await.unwrap();
        assert_eq!(response.status().as_u16(), 206);
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes 100-199/{}", blob.len()).as_str()
        );
        assert_eq!(&response.bytes().await.unwrap()[..], &blob[100..200]);
    }
    let response = ranged("bytes=-10").await.unwrap();
    assert_eq!(
        &response.bytes().await.unwrap()[..],
        &blob[blob.len() - 10..]
    );
    let response = ranged("bytes=99999999-").await.unwrap();
    assert_eq!(response.status().as_u16(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{}", blob.len()).as_str()
    );
    let response = ranged("bytes=0-1,5-6").await.unwrap();
    assert_eq!(response.status().as_u16(), 416);
    assert_eq!(fake.count("GET", &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_without_length_streams_and_verifies() {
    let fake = FakeRegistry::start().await;
    let blob = data(300_000, 9);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::NoLength);
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));
    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), blob);
    let (_, body) = fetch(&url).await;
    assert_eq!(body.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_never_downloads_a_blob() {
    let fake = FakeRegistry::start().await;
    let blob = data(5000, 10);
    let digest = fake.add_blob(blob.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let client = reqwest::Client::new();
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));
    let response = client.head(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-length"], "5000");
    assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(fake.count("GET", &digest), 0);
    assert_eq!(fake.count("HEAD", &digest), 1);
}
