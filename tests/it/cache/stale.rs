//! Stale serving: when upstream answers 429 or 5xx, or cannot be reached, while a cached tag
//! is revalidated, regcache serves the tag's last manifest, marked and counted, within
//! `stale_if_error_secs`; a tag it never saw gets a clear error.

use crate::support::fake::FakeRegistry;
use crate::support::proxy::Proxy;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const BODY: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

/// A tag is revalidated on every request (TTL 0), so each one asks upstream.
const ALWAYS_REVALIDATE: &str = "name = \"up\"\ntag_ttl_secs = 0\nretries = 0";

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_string()
}

fn is_stale(response: &reqwest::Response) -> bool {
    let h = response.headers();
    let marked = h.get("x-regcache-stale").is_some_and(|v| v == "1");
    let warned = h
        .get("warning")
        .is_some_and(|v| v.to_str().unwrap().starts_with("110 "));
    assert_eq!(marked, warned, "both stale headers or neither");
    marked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tag_is_served_stale_on_429_and_an_unknown_one_is_an_error() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "v1", OCI_MANIFEST, BODY.to_vec());
    fake.add_manifest("app", "v2", OCI_MANIFEST, b"{}".to_vec());
    let proxy = Proxy::start_with(&fake.url(), ALWAYS_REVALIDATE, None).await;
    let fresh = get(&proxy.url("/v2/app/manifests/v1")).await;
    assert_eq!(fresh.status().as_u16(), 200);
    assert!(!is_stale(&fresh));

    fake.fail_all(Some(429));
    let stale = get(&proxy.url("/v2/app/manifests/v1")).await;
    assert_eq!(stale.status().as_u16(), 200);
    assert!(is_stale(&stale));
    assert_eq!(stale.bytes().await.unwrap(), BODY);
    let head = reqwest::Client::new()
        .head(proxy.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert!(is_stale(&head));
    assert_eq!(
        proxy
            .metric("regcache_stale_serves_total{upstream=\"up\"}")
            .await,
        2.0
    );

    let unknown = get(&proxy.url("/v2/app/manifests/v2")).await;
    assert_eq!(unknown.status().as_u16(), 429);
    assert_eq!(error_code(unknown).await, "TOOMANYREQUESTS");

    // Upstream back: fresh answers again.
    fake.fail_all(None);
    let fresh = get(&proxy.url("/v2/app/manifests/v1")).await;
    assert!(!is_stale(&fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_window_upstreams_error_is_passed_on() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "v1", OCI_MANIFEST, BODY.to_vec());
    let config = format!("{ALWAYS_REVALIDATE}\nstale_if_error_secs = 0");
    let proxy = Proxy::start_with(&fake.url(), &config, None).await;
    assert_eq!(get(&proxy.url("/v2/app/manifests/v1")).await.status(), 200);
    fake.fail_all(Some(503));
    let response = get(&proxy.url("/v2/app/manifests/v1")).await;
    assert_eq!(response.status().as_u16(), 502);
    assert_eq!(error_code(response).await, "UNAVAILABLE");
    assert_eq!(
        proxy
            .metric("regcache_stale_serves_total{upstream=\"up\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tag_is_served_stale_with_upstream_unreachable_after_a_restart() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "v1", OCI_MANIFEST, BODY.to_vec());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), ALWAYS_REVALIDATE, Some(dir.path())).await;
    assert_eq!(get(&proxy.url("/v2/app/manifests/v1")).await.status(), 200);
    // The stop waits for the tag record written in the background.
    proxy.stop().await;

    let proxy = Proxy::start_with("http://127.0.0.1:9", ALWAYS_REVALIDATE, Some(dir.path())).await;
    let stale = get(&proxy.url("/v2/app/manifests/v1")).await;
    assert_eq!(stale.status().as_u16(), 200);
    assert!(is_stale(&stale));
    assert_eq!(stale.bytes().await.unwrap(), BODY);
    let unknown = get(&proxy.url("/v2/app/manifests/v9")).await;
    assert_eq!(unknown.status().as_u16(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_upstream_deleted_is_kept_stale_only_when_asked_for() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "v1", OCI_MANIFEST, BODY.to_vec());
    let keep = format!("{ALWAYS_REVALIDATE}\nserve_stale_on_not_found = true");
    let keeping = Proxy::start_with(&fake.url(), &keep, None).await;
    let plain = Proxy::start_with(&fake.url(), ALWAYS_REVALIDATE, None).await;
    for proxy in [&keeping, &plain] {
        assert_eq!(
            get(&proxy.url("/v2/app/manifests/v1"))
                .await
                .status()
                .as_u16(),
            200
        );
    }
    // Upstream now answers 404 for the tag (deleted).
    fake.fail_all(Some(404));
    let kept = get(&keeping.url("/v2/app/manifests/v1")).await;
    assert_eq!(kept.status().as_u16(), 200);
    assert!(is_stale(&kept));
    assert_eq!(kept.bytes().await.unwrap(), BODY);
    let gone = get(&plain.url("/v2/app/manifests/v1")).await;
    assert_eq!(gone.status().as_u16(), 404);
    assert_eq!(error_code(gone).await, "MANIFEST_UNKNOWN");
}
