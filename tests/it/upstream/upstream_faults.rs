//! Upstream faults a real registry cannot stage on demand: silence before the headers and
//! mid-body, a host name that does not resolve, TLS that fails, and SIGTERM to the real
//! binary mid-transfer. For each: the client gets a clear error or correct bytes, never
//! wrong bytes presented as complete, and the cache holds only verified content after.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::data;
use crate::support::fake::{FakeRegistry, Fault, Silent};
use crate::support::proxy::Proxy;
use crate::support::regcache::Regcache;
use crate::support::store::verified_objects;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Status and OCI error body (or the body) of a GET.
async fn get_text(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_504_within_its_idle_timeout() {
    let silent = Silent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&silent.url(), "idle_timeout_secs = 1", Some(dir.path())).await;
    let digest = crate::support::fake::sha256(b"never sent");
    for path in [
        "/v2/team/app/manifests/latest".to_string(),
        format!("/v2/team/app/blobs/{digest}"),
    ] {
        let started = Instant::now();
        let (status, body) = get_text(&proxy.url(&path)).await;
        let took = started.elapsed();
        assert_eq!(status, 504, "{path}: {body}");
        assert!(body.contains("timed out"), "{body}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{path} answered after {took:?}; upstream idle_timeout_secs = 1"
        );
    }
    assert_eq!(verified_objects(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_silent_mid_blob_ends_the_transfer_as_an_error() {
    let fake = FakeRegistry::start().await;
    let blob = data(2 << 20, 1);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    // With Range support the stall would be resumed (tests/resilience.rs covers that).
    fake.ignore_ranges();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "idle_timeout_secs = 1", Some(dir.path())).await;
    let url = proxy.url(&format!("/v2/team/app/blobs/{digest}"));

    let started = Instant::now();
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.bytes().await.is_err(),
        "half a blob must not arrive as a complete body"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(verified_objects(dir.path()), 0);

    // Upstream recovers: the next pull gets every byte and caches it.
    fake.set_fault(&digest, Fault::None);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.bytes().await.unwrap().to_vec(), blob);
    proxy.settled().await;
    assert_eq!(verified_objects(dir.path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_name_that_does_not_resolve_gets_502_naming_dns() {
    let proxy = Proxy::start_with(
        "http://no-such-registry.regcache-test.invalid",
        "connect_timeout_secs = 5",
        None,
    )
    .await;
    let (status, body) = get_text(&proxy.url("/v2/team/app/manifests/latest")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("\"UNAVAILABLE\""), "{body}");
    assert!(body.to_lowercase().contains("dns"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_speak_tls_gets_502_naming_tls() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(1000, 2));
    let proxy = Proxy::start_with(&fake.wrong_scheme_url(), "connect_timeout_secs = 5", None).await;
    let (status, body) = get_text(&proxy.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_nobody_trusts_gets_502_naming_tls() {
    let fake = FakeRegistry::start_untrusted_tls().await;
    let digest = fake.add_blob(data(1000, 3));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "connect_timeout_secs = 5", Some(dir.path())).await;
    let (status, body) = get_text(&proxy.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS"), "{body}");
    assert!(body.contains("certificate"), "{body}");
    assert_eq!(fake.count("GET", &digest), 0, "no request got through");
    assert_eq!(verified_objects(dir.path()), 0);
}

/// Starts the real binary with `[server]` settings `server`, in front of `fake`.
fn start_binary(fake: &FakeRegistry, cache: &Path, server: &str) -> Regcache {
    let config = cache.with_extension("toml");
    let text = format!(
        "[server]\n{server}\n[[upstream]]\nurl = \"{}\"\n",
        fake.url()
    );
    std::fs::write(&config, text).unwrap();
    tokio::task::block_in_place(|| {
        Regcache::start_with_config_file(&fake.url(), cache, Some(&config))
    })
}

/// Reads the rest of a body after `first`; `Err` when it ended as an error.
async fn read_rest(
    mut response: reqwest::Response,
    first: Vec<u8>,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut got = first;
    while let Some(chunk) = response.chunk().await? {
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_transfer_lets_it_finish_within_the_grace_period() {
    let fake = FakeRegistry::start().await;
    let blob = data(3 << 20, 4);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let mut regcache = start_binary(&fake, &cache, "shutdown_grace_secs = 20");
    let url = format!("{}/v2/team/app/blobs/{digest}", regcache.url());

    let mut response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let first = response.chunk().await.unwrap().unwrap().to_vec();
    regcache.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.release();
    let got = read_rest(response, first)
        .await
        .expect("the transfer completes");
    assert_eq!(got.len(), blob.len());
    assert!(got == blob, "every byte is right");

    let status = tokio::task::block_in_place(|| regcache.wait_exit(Duration::from_secs(15)));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        regcache.log().contains("draining transfers in flight"),
        "{}",
        regcache.log()
    );
    assert!(verified_objects(&cache) <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_transfer_past_the_grace_period_cuts_it_as_an_error() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(3 << 20, 5));
    fake.set_fault(&digest, Fault::Held);
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let mut regcache = start_binary(&fake, &cache, "shutdown_grace_secs = 1");
    let url = format!("{}/v2/team/app/blobs/{digest}", regcache.url());

    let mut response = client().get(&url).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap().to_vec();
    regcache.terminate();
    let started = Instant::now();
    let rest = read_rest(response, first).await;
    assert!(rest.is_err(), "a cut transfer must not end cleanly");
    assert!(started.elapsed() < Duration::from_secs(10));
    let status = tokio::task::block_in_place(|| regcache.wait_exit(Duration::from_secs(15)));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    fake.release();
    assert_eq!(verified_objects(&cache), 0, "half a blob was not kept");
}
