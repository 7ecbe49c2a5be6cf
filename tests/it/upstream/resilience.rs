//! Upstream trouble regcache rides out: retries with backoff (and `Retry-After`) before
//! any byte reached a client, a cut blob download resumed with `Range`, and the
//! per-upstream cap on concurrent requests.

use std::time::{Duration, Instant};

use crate::support::data;
use crate::support::fake::{FakeRegistry, Fault};
use crate::support::proxy::Proxy;

async fn fetch(url: &str) -> (u16, Result<Vec<u8>, reqwest::Error>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.map(|b| b.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_retried_with_backoff_then_given_up() {
    let fake = FakeRegistry::start().await;
    let blob = data(1000, 1);
    let digest = fake.add_blob(blob.clone());
    let proxy = Proxy::start_with(&fake.url(), "name = \"up\"\nretries = 3", None).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));

    fake.fail_next(2, 503);
    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 3, "two 503s, then the blob");
    assert_eq!(
        proxy
            .metric("regcache_upstream_retries_total{upstream=\"up\"}")
            .await,
        2.0
    );

    let other = fake.add_blob(data(1000, 2));
    fake.fail_next(10, 502);
    let (status, _) = fetch(&proxy.url(&format!("/v2/a/blobs/{other}"))).await;
    assert_eq!(status, 502);
    assert_eq!(
        fake.count("GET", &other),
        4,
        "the first attempt and 3 retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_retry_after_unless_it_asks_too_much() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(1000, 3));
    let config = "retries = 3\nmax_retry_after_secs = 2";
    let proxy = Proxy::start_with(&fake.url(), config, None).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));

    fake.retry_after("1");
    fake.fail_next(1, 429);
    let started = Instant::now();
    assert_eq!(fetch(&url).await.0, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
    assert_eq!(fake.count("GET", &digest), 2);

    let other = fake.add_blob(data(1000, 4));
    fake.retry_after("3600");
    fake.fail_next(1, 429);
    let started = Instant::now();
    let (status, _) = fetch(&proxy.url(&format!("/v2/a/blobs/{other}"))).await;
    assert_eq!(status, 429, "too long a wait: the client hears it at once");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.count("GET", &other), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_blob_download_is_resumed_with_a_range_request() {
    let fake = FakeRegistry::start().await;
    let blob = data(3 << 20, 5);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Cut);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "name = \"up\"", Some(dir.path())).await;
    let url = proxy.url(&format!("/v2/a/blobs/{digest}"));

    let (status, body) = fetch(&url).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.unwrap(),
        blob,
        "the client's stream continued, byte exact"
    );
    assert_eq!(
        fake.count("GET", &digest),
        2,
        "the cut GET and one ranged GET"
    );
    assert_eq!(
        proxy
            .metric("regcache_upstream_resumes_total{result=\"resumed\",upstream=\"up\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("regcache_fills_total{result=\"cached\"}")
            .await,
        1.0
    );
    let (_, again) = fetch(&url).await;
    assert_eq!(again.unwrap(), blob);
    assert_eq!(fake.count("GET", &digest), 2, "then served from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upstream_requests_are_capped_per_upstream() {
    let fake = FakeRegistry::start().await;
    let held = fake.add_blob(data(1 << 20, 6));
    fake.set_fault(&held, Fault::Held);
    let waiting = fake.add_blob(data(1000, 7));
    let proxy = Proxy::start_with(&fake.url(), "max_concurrent_requests = 1", None).await;

    // The held download keeps the only permit until its body is done.
    let held_url = proxy.url(&format!("/v2/a/blobs/{held}"));
    let first = tokio::spawn(async move { fetch(&held_url).await });
    while fake.count("GET", &held) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiting_url = proxy.url(&format!("/v2/a/blobs/{waiting}"));
    let second = tokio::spawn(async move { fetch(&waiting_url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.count("GET", &waiting), 0, "waits for a permit");

    fake.release();
    let (status, body) = first.await.unwrap();
    assert_eq!((status, body.unwrap().len()), (200, 1 << 20));
    let (status, body) = second.await.unwrap();
    assert_eq!((status, body.unwrap().len()), (200, 1000));
    assert_eq!(fake.count("GET", &waiting), 1);
}
