//! Several upstreams in one regcache: requests are routed by containerd's `ns=`, by a path
//! prefix (podman / CRI-O mirrors), by `Host`, or to the default, and content shared by
//! upstreams is stored once (and delivered once by each trust domain).

use crate::support::fake::{sha256, FakeRegistry};
use crate::support::proxy::Proxy;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(layer: &str, size: usize) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{layer}","size":{size}}},"layers":[]}}"#
    )
    .into_bytes()
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.path().is_dir() {
            true => count_files(&e.path()),
            false => 1,
        })
        .sum()
}

async fn get(url: &str, host: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.send().await.unwrap()
}

async fn digest_of(response: reqwest::Response) -> String {
    assert_eq!(response.status().as_u16(), 200, "{:?}", response.url());
    sha256(&response.bytes().await.unwrap())
}

struct Two {
    hub: FakeRegistry,
    other: FakeRegistry,
    proxy: Proxy,
    dir: tempfile::TempDir,
    shared: String,
    hub_manifest: String,
    other_manifest: String,
}

/// `hub` (the default, Docker Hub-like with `library/`) and `other`, both holding one
/// shared layer.
async fn two_upstreams() -> Two {
    let (hub, other) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let layer = vec![42u8; 300 << 10];
    let shared = hub.add_blob(layer.clone());
    assert_eq!(other.add_blob(layer), shared);
    let hub_manifest = hub.add_manifest(
        "library/app",
        "v1",
        OCI_MANIFEST,
        manifest(&shared, 300 << 10),
    );
    let other_manifest = other.add_manifest("team/app", "v1", OCI_MANIFEST, manifest(&shared, 1));
    let config = format!(
        r#"
        [[upstream]]
        name = "hub"
        url = "{}"
        aliases = ["docker.io", "index.docker.io"]
        library_prefix = true
        default = true
        [[upstream]]
        name = "other"
        url = "{}"
        aliases = ["registry.other.test"]
        "#,
        hub.url(),
        other.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_config_in(&config, Some(dir.path())).await;
    Two {
        hub,
        other,
        proxy,
        dir,
        shared,
        hub_manifest,
        other_manifest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_path_prefix_and_default_reach_the_same_image_and_store_it_once() {
    let t = two_upstreams().await;
    let p = &t.proxy;
    let by_default = digest_of(get(&p.url("/v2/app/manifests/v1"), None).await).await;
    let by_ns =
        digest_of(get(&p.url("/v2/library/app/manifests/v1?ns=docker.io"), None).await).await;
    let by_prefix = digest_of(get(&p.url("/v2/docker.io/app/manifests/v1"), None).await).await;
    let by_name = digest_of(get(&p.url("/v2/hub/library/app/manifests/v1"), None).await).await;
    for d in [&by_default, &by_ns, &by_prefix, &by_name] {
        assert_eq!(d, &t.hub_manifest);
    }
    // One tag (hub, library/app:v1): the first request fetched it, the rest were hits.
    assert_eq!(t.hub.count("GET", "/v2/library/app/manifests/v1"), 1);
    assert_eq!(t.other.count("GET", "/manifests/v1"), 0);

    let blob = |path: &str| p.url(&format!("{path}/blobs/{}", t.shared));
    let first = digest_of(get(&blob("/v2/app"), None).await).await;
    let second = digest_of(get(&blob("/v2/other/team/app"), None).await).await;
    let by_ns = format!("{}?ns=registry.other.test", blob("/v2/team/app"));
    let third = digest_of(get(&by_ns, None).await).await;
    assert!(first == t.shared && second == t.shared && third == t.shared);
    assert_eq!(t.hub.count("GET", &t.shared), 1);
    assert_eq!(
        t.other.count("GET", &t.shared),
        1,
        "each trust domain delivers a layer itself once, then it is a hit for it too"
    );
    assert_eq!(
        count_files(&t.dir.path().join("v1/blobs")),
        1,
        "stored once"
    );
    assert_eq!(count_files(&t.dir.path().join("v1/manifests")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_prefix_reach_the_second_upstream_and_tags_are_kept_apart() {
    let t = two_upstreams().await;
    let p = &t.proxy;
    let by_host = get(
        &p.url("/v2/team/app/manifests/v1"),
        Some("registry.other.test"),
    )
    .await;
    assert_eq!(digest_of(by_host).await, t.other_manifest);
    let by_prefix = get(
        &p.url("/v2/registry.other.test/team/app/manifests/v1"),
        None,
    )
    .await;
    assert_eq!(digest_of(by_prefix).await, t.other_manifest);
    assert_eq!(t.other.count("GET", "/v2/team/app/manifests/v1"), 1);
    assert_eq!(t.hub.count("GET", "/manifests/v1"), 0);

    // The same repository and tag on the default upstream is another tag.
    let on_hub = get(&p.url("/v2/app/manifests/v1"), None).await;
    assert_eq!(digest_of(on_hub).await, t.hub_manifest);
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(
            r#"regcache_upstream_requests_total{kind="manifest",status="2xx",upstream="other"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ns_naming_no_upstream_is_refused() {
    let t = two_upstreams().await;
    let response = get(&t.proxy.url("/v2/app/manifests/v1?ns=quay.io"), None).await;
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("ns=quay.io"), "{message}");
    assert_eq!(t.hub.count("GET", "/manifests/v1"), 0);
}
