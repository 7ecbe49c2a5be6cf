//! The pull API against an in-process fake upstream: manifests and tags, Accept, auth,
//! malformed input, read-only methods, and restarts.

use crate::support::fake::{sha256, FakeRegistry};
use crate::support::proxy::Proxy;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn manifest_bytes(n: u32) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"size":{n}}},"layers":[]}}"#
    )
    .into_bytes()
}

async fn get(url: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_announces_the_api_version() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start(&fake.url()).await;
    let response = get(&proxy.url("/v2/"), None).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_within_its_ttl_is_answered_locally() {
    let fake = FakeRegistry::start().await;
    let body = manifest_bytes(1);
    let digest = fake.add_manifest("team/app", "v1", OCI_MANIFEST, body.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url("/v2/team/app/manifests/v1");
    for _ in 0..3 {
        let response = get(&url, Some(OCI_MANIFEST)).await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(response.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(response.bytes().await.unwrap(), body);
    }
    assert_eq!(fake.count("GET", "/manifests/v1"), 1);
    assert_eq!(fake.count("HEAD", "/manifests/v1"), 0);
    // By digest: served from the cache, no upstream request.
    let response = get(
        &proxy.url(&format!("/v2/team/app/manifests/{digest}")),
        None,
    )
    .await;
    assert_eq!(response.bytes().await.unwrap(), body);
    assert_eq!(fake.count("GET", &digest), 0);
    assert_eq!(
        proxy
            .metric("regcache_requests_total{kind=\"manifest\",result=\"memory_hit\"}")
            .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_revalidated_with_head_and_fetched_only_when_it_moved() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "latest", OCI_MANIFEST, manifest_bytes(1));
    let proxy = Proxy::start_with(&fake.url(), "tag_ttl_secs = 0", None).await;
    let url = proxy.url("/v2/app/manifests/latest");
    get(&url, None).await.bytes().await.unwrap();
    get(&url, None).await.bytes().await.unwrap();
    assert_eq!(fake.count("GET", "/manifests/latest"), 1);
    assert_eq!(
        fake.count("HEAD", "/manifests/latest"),
        1,
        "revalidated with HEAD"
    );

    // The tag moves: HEAD shows a new digest, which is then fetched by digest.
    let moved = manifest_bytes(2);
    let new_digest = fake.add_manifest("app", "latest", OCI_MANIFEST, moved.clone());
    let response = get(&url, None).await;
    assert_eq!(
        response.headers()["docker-content-digest"],
        new_digest.as_str()
    );
    assert_eq!(response.bytes().await.unwrap(), moved);
    assert_eq!(fake.count("GET", &new_digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_honoured() {
    let fake = FakeRegistry::start().await;
    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    let digest = fake.add_manifest("multi", "v1", OCI_INDEX, index.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url("/v2/multi/manifests/v1");
    let response = get(&url, Some(&format!("{OCI_MANIFEST}, {OCI_INDEX}"))).await;
    assert_eq!(response.headers()["content-type"], OCI_INDEX);
    // A client that takes only Docker v2 manifests never receives the index.
    let response = get(&url, Some(DOCKER_V2)).await;
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(error_code(response).await, "MANIFEST_UNKNOWN");
    let by_digest = proxy.url(&format!("/v2/multi/manifests/{digest}"));
    assert_eq!(
        get(&by_digest, Some(DOCKER_V2)).await.status().as_u16(),
        404
    );
    assert_eq!(get(&by_digest, Some("*/*")).await.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_does_not_match_upstreams_digest_is_refused() {
    let fake = FakeRegistry::start().await;
    fake.add_manifest("app", "v1", OCI_MANIFEST, manifest_bytes(1));
    fake.lie_about_digest();
    let proxy = Proxy::start(&fake.url()).await;
    let response = get(&proxy.url("/v2/app/manifests/v1"), None).await;
    assert_eq!(response.status().as_u16(), 502);
    assert_eq!(
        proxy
            .metric("regcache_digest_mismatches_total{kind=\"manifest\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_manifest_answers_from_upstream_headers_without_a_get() {
    let fake = FakeRegistry::start().await;
    let body = manifest_bytes(3);
    let digest = fake.add_manifest("app", "v1", OCI_MANIFEST, body.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let response = reqwest::Client::new()
        .head(proxy.url("/v2/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        response.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(fake.count("GET", "/manifests/v1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_once_per_scope() {
    let fake = FakeRegistry::start().await;
    fake.require_bearer("t0ken");
    let blob = fake.add_blob(b"layer".to_vec());
    fake.add_manifest("app", "v1", OCI_MANIFEST, manifest_bytes(1));
    let proxy = Proxy::start(&fake.url()).await;
    let response = get(&proxy.url("/v2/app/manifests/v1"), None).await;
    assert_eq!(response.status().as_u16(), 200);
    let response = get(&proxy.url(&format!("/v2/app/blobs/{blob}")), None).await;
    assert_eq!(response.bytes().await.unwrap(), &b"layer"[..]);
    assert_eq!(fake.tokens_issued(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_come_from_the_config_and_refusals_are_named() {
    let fake = FakeRegistry::start().await;
    fake.require_basic("AWS", "secret");
    let blob = fake.add_blob(b"layer".to_vec());
    let good = Proxy::start_with(
        &fake.url(),
        "username = \"AWS\"\npassword = \"secret\"",
        None,
    )
    .await;
    let response = get(&good.url(&format!("/v2/app/blobs/{blob}")), None).await;
    assert_eq!(response.bytes().await.unwrap(), &b"layer"[..]);

    let bad = Proxy::start_with(
        &fake.url(),
        "username = \"AWS\"\npassword = \"wrong\"",
        None,
    )
    .await;
    let response = get(&bad.url(&format!("/v2/app/blobs/{blob}")), None).await;
    assert_eq!(response.status().as_u16(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_oci_errors() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start(&fake.url()).await;
    let digest = sha256(b"x");
    let cases = [
        ("/v2/UPPER/manifests/v1", 400, "NAME_INVALID"),
        // A reference that cannot name a manifest is unknown (the OCI conformance suite).
        ("/v2/a/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
        (
            "/v2/a/manifests/.INVALID_MANIFEST_NAME",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/a/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("/v2/a/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        (
            "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/a/%2e%2e/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/a%2Fb/manifests/v1", 400, "NAME_INVALID"),
        ("/v2/a/../b/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v3/", 404, "NAME_UNKNOWN"),
        ("/v2/a/manifests/v1", 404, "MANIFEST_UNKNOWN"),
        (&format!("/v2/a/blobs/{digest}"), 404, "BLOB_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        let (got, body) = raw_get(proxy.addr, path).await;
        assert_eq!(got, status, "{path}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{path}");
    }
    let head = reqwest::Client::new()
        .head(proxy.url("/v2/a/manifests/.INVALID_MANIFEST_NAME"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
    let long = format!("/v2/{}/manifests/v1", "a".repeat(300));
    assert_eq!(raw_get(proxy.addr, &long).await.0, 400);
}

/// Sends the path exactly as written (an HTTP client library would normalize `..`).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_as_unsupported() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start(&fake.url()).await;
    let client = reqwest::Client::new();
    let digest = sha256(b"x");
    let requests = [
        client.post(proxy.url("/v2/a/blobs/uploads/")),
        client.put(proxy.url("/v2/a/manifests/v1")),
        client.delete(proxy.url(&format!("/v2/a/blobs/{digest}"))),
        client.patch(proxy.url("/v2/a/blobs/uploads/abc")),
        client.get(proxy.url("/v2/a/blobs/uploads/abc")),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405);
        assert_eq!(error_code(response).await, "UNSUPPORTED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_what_was_cached_with_upstream_gone() {
    let fake = FakeRegistry::start().await;
    let body = manifest_bytes(9);
    let digest = fake.add_manifest("app", "v1", OCI_MANIFEST, body.clone());
    let blob = fake.add_blob(vec![7u8; 10 << 20]);
    let dir = tempfile::tempdir().unwrap();
    // Named, so the restarted proxy's upstream (same name, now unreachable) is the same one
    // the content was seen in: cached content is served per upstream and repository.
    let named = "name = \"up\"";
    let proxy = Proxy::start_with(&fake.url(), named, Some(dir.path())).await;
    get(&proxy.url("/v2/app/manifests/v1"), None)
        .await
        .bytes()
        .await
        .unwrap();
    get(&proxy.url(&format!("/v2/app/blobs/{blob}")), None)
        .await
        .bytes()
        .await
        .unwrap();
    // The stop waits for the manifest and tag writes in the background.
    proxy.stop().await;

    let proxy = Proxy::start_with("http://127.0.0.1:9", named, Some(dir.path())).await;
    let response = get(&proxy.url(&format!("/v2/app/manifests/{digest}")), None).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);
    let response = get(&proxy.url(&format!("/v2/app/blobs/{blob}")), None).await;
    assert_eq!(response.bytes().await.unwrap().len(), 10 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_404_for_a_listing_stays_404_and_is_not_cached() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start(&fake.url()).await;
    let digest = sha256(b"x");
    let response = get(&proxy.url(&format!("/v2/app/referrers/{digest}")), None).await;
    assert_eq!(
        response.status().as_u16(),
        404,
        "a 404 from upstream stays 404"
    );
    let response = get(&proxy.url("/v2/app/tags/list?n=10&last=a&evil=1"), None).await;
    assert_eq!(response.status().as_u16(), 404);
    let response = get(&proxy.url("/v2/app/tags/list"), None).await;
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(fake.count("GET", "/v2/app/tags/list"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_are_histograms_by_kind_result_and_upstream() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(vec![4u8; 300_000]);
    let proxy = Proxy::start(&fake.url()).await;
    let url = proxy.url(&format!("/v2/team/app/blobs/{digest}"));
    for _ in 0..2 {
        let body = get(&url, None).await.bytes().await.unwrap();
        assert_eq!(body.len(), 300_000);
    }
    // One miss, one hit; each answer's head and first body byte timed.
    let miss = "regcache_request_duration_seconds_count{kind=\"blob\",result=\"miss\"}";
    assert_eq!(proxy.metric(miss).await, 1.0);
    let hits = proxy.metrics().await;
    let hit_count: f64 = hits
        .lines()
        .filter(|l| l.starts_with("regcache_request_duration_seconds_count{kind=\"blob\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(hit_count, 2.0, "{hits}");
    let first = "regcache_response_first_byte_seconds_count{kind=\"blob\"}";
    assert_eq!(proxy.metric(first).await, 2.0);
    // The upstream's GET (and the HEAD or token requests, if any) timed by kind.
    let upstream = hits
        .lines()
        .find(|l| l.starts_with("regcache_upstream_request_duration_seconds_count{kind=\"blob\""))
        .expect("upstream blob requests timed");
    assert!(!upstream.ends_with(" 0"), "{upstream}");
    // Buckets resolve from 1 ms to 60 s.
    assert!(hits.contains(
        "regcache_request_duration_seconds_bucket{kind=\"blob\",result=\"miss\",le=\"0.001\"}"
    ));
    assert!(hits.contains("le=\"60\""));
}
