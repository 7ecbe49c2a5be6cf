//! What a mirror shared by many teams must not do: serve repositories its upstream's
//! `allow`/`deny` patterns exclude, or hand out cached content through a repository
//! (or upstream) that regcache has not seen it belong to.

use crate::support::fake::FakeRegistry;
use crate::support::proxy::Proxy;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn get(url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await.unwrap()
}

async fn head(url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.head(url).send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let code = body["errors"][0]["code"].as_str().unwrap().to_string();
    let message = body["errors"][0]["message"].as_str().unwrap().to_string();
    (status, code, message)
}

/// An image manifest. Its descriptors leave `size` out: a declared size bounds the fill,
/// and these tests are about who may read what, not about sizes.
fn image(config: &str, layers: &[&str]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|d| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}"}},"layers":[{}]}}"#,
        layers.join(",")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_patterns_refuse_before_anything_goes_upstream() {
    let fake = FakeRegistry::start().await;
    let layer = fake.add_blob(vec![7u8; 1000]);
    for repo in ["library/nginx", "team/a/b", "team/secret-db", "other/app"] {
        fake.add_manifest(repo, "v1", OCI_MANIFEST, image(&layer, &[]));
    }
    let extra = r#"
        library_prefix = true
        allow = ["library/*", "team/**"]
        deny = ["team/secret-*"]
    "#;
    let proxy = Proxy::start_with(&fake.url(), extra, None).await;
    for path in ["/v2/nginx/manifests/v1", "/v2/team/a/b/manifests/v1"] {
        assert_eq!(get(&proxy.url(path)).await.status().as_u16(), 200, "{path}");
    }
    let denied = get(&proxy.url("/v2/team/secret-db/manifests/v1")).await;
    let (status, code, message) = error_of(denied).await;
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    assert!(message.contains(r#"deny = "team/secret-*""#), "{message}");
    let blob = get(&proxy.url(&format!("/v2/other/app/blobs/{layer}"))).await;
    let (status, code, message) = error_of(blob).await;
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    assert!(message.contains(r#"["library/*", "team/**"]"#), "{message}");
    let tags = get(&proxy.url("/v2/other/app/tags/list")).await;
    assert_eq!(tags.status().as_u16(), 403);
    assert_eq!(fake.count("GET", "/v2/team/secret-db/manifests/v1"), 0);
    assert_eq!(fake.count("GET", "/v2/other/app/tags/list"), 0);
    assert_eq!(
        fake.count("GET", &format!("/v2/other/app/blobs/{layer}")),
        0
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"regcache_policy_denials_total{reason="deny","#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"regcache_policy_denials_total{reason="not_allowed","#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_blob_is_served_through_another_repository_only_when_upstream_confirms_it() {
    let fake = FakeRegistry::start().await;
    let bytes = vec![9u8; 200 << 10];
    let layer = fake.add_blob(bytes.clone());
    let config = fake.add_blob(b"{}".to_vec());
    fake.only_in(&layer, &["team/a", "team/c"]);
    fake.add_manifest("team/a", "v1", OCI_MANIFEST, image(&config, &[&layer]));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_with(&fake.url(), "", Some(dir.path())).await;
    let blob = |repo: &str| proxy.url(&format!("/v2/{repo}/blobs/{layer}"));

    assert_eq!(
        get(&proxy.url("/v2/team/a/manifests/v1")).await.status(),
        200
    );
    for _ in 0..2 {
        let response = get(&blob("team/a")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), bytes);
    }
    assert_eq!(fake.count("GET", &format!("/v2/team/a/blobs/{layer}")), 1);
    assert_eq!(fake.count("HEAD", &format!("/v2/team/a/blobs/{layer}")), 0);

    // team/b does not have it upstream: the cached bytes are not handed out.
    let (status, code, message) = error_of(get(&blob("team/b")).await).await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"), "{message}");
    assert!(message.contains("team/b"), "{message}");
    assert_eq!(head(&blob("team/b")).await.status(), 404);
    assert_eq!(fake.count("GET", &format!("/v2/team/b/blobs/{layer}")), 0);

    // team/c has it upstream: one HEAD confirms it, the body comes from the cache.
    for _ in 0..2 {
        let response = get(&blob("team/c")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), bytes);
    }
    assert_eq!(fake.count("HEAD", &format!("/v2/team/c/blobs/{layer}")), 1);
    assert_eq!(fake.count("GET", &format!("/v2/team/c/blobs/{layer}")), 0);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"regcache_membership_checks_total{result="confirmed""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"regcache_membership_checks_total{result="refused""#),
        "{metrics}"
    );

    // A restart keeps what was learned: no new HEAD for team/c, and team/b still refused.
    // (A stop waits for the records written in the background.)
    proxy.stop().await;
    let proxy = Proxy::start_with(&fake.url(), "", Some(dir.path())).await;
    let response = get(&proxy.url(&format!("/v2/team/c/blobs/{layer}"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.count("HEAD", &format!("/v2/team/c/blobs/{layer}")), 1);
    let response = get(&proxy.url(&format!("/v2/team/b/blobs/{layer}"))).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_from_one_upstream_is_not_served_through_another() {
    let (hub, other) = (FakeRegistry::start().await, FakeRegistry::start().await);
    let bytes = vec![3u8; 100 << 10];
    let layer = hub.add_blob(bytes.clone());
    assert_eq!(other.add_blob(bytes.clone()), layer);
    other.only_in(&layer, &["team/app"]);
    hub.add_manifest("team/app", "v1", OCI_MANIFEST, image(&layer, &[]));
    let config = format!(
        r#"
        [[upstream]]
        name = "hub"
        url = "{}"
        default = true
        [[upstream]]
        name = "other"
        url = "{}"
        [[upstream]]
        name = "dark"
        url = "{}"
        offline = true
        "#,
        hub.url(),
        other.url(),
        other.url(),
    );
    let proxy = Proxy::start_config_in(&config, None).await;
    assert_eq!(
        get(&proxy.url("/v2/team/app/manifests/v1")).await.status(),
        200
    );
    let response = get(&proxy.url(&format!("/v2/team/app/blobs/{layer}"))).await;
    assert_eq!(response.bytes().await.unwrap(), bytes);

    // The same repository name on another upstream that does not have it: 404.
    let via_other = proxy.url(&format!("/v2/other/team/x/blobs/{layer}"));
    let (status, code, _) = error_of(get(&via_other).await).await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    // And one that does: another trust domain, so it delivers the bytes itself once; then
    // they are a hit for it too.
    for _ in 0..2 {
        let response = get(&proxy.url(&format!("/v2/other/team/app/blobs/{layer}"))).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), bytes);
    }
    assert_eq!(
        other.count("GET", &format!("/v2/team/app/blobs/{layer}")),
        1
    );

    // An upstream that cannot be asked (offline) gets 404, saying why.
    let via_dark = proxy.url(&format!("/v2/dark/team/app/blobs/{layer}"));
    let (status, code, message) = error_of(get(&via_dark).await).await;
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"));
    assert!(message.contains("offline"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_by_digest_follows_the_same_rule() {
    let fake = FakeRegistry::start().await;
    let config = fake.add_blob(b"{\"a\":1}".to_vec());
    let manifest = fake.add_manifest("team/a", "v1", OCI_MANIFEST, image(&config, &[]));
    fake.only_in(&manifest, &["team/a", "team/c"]);
    let proxy = Proxy::start(&fake.url()).await;
    let by_digest = |repo: &str| proxy.url(&format!("/v2/{repo}/manifests/{manifest}"));
    assert_eq!(
        get(&proxy.url("/v2/team/a/manifests/v1")).await.status(),
        200
    );
    assert_eq!(get(&by_digest("team/a")).await.status(), 200);
    assert_eq!(fake.count("HEAD", &format!("/manifests/{manifest}")), 0);

    let (status, code, _) = error_of(get(&by_digest("team/b")).await).await;
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"));
    assert_eq!(head(&by_digest("team/b")).await.status(), 404);
    assert_eq!(
        fake.count("GET", &format!("/v2/team/b/manifests/{manifest}")),
        0
    );

    for _ in 0..2 {
        let response = get(&by_digest("team/c")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            crate::support::fake::sha256(&response.bytes().await.unwrap()),
            manifest
        );
    }
    assert_eq!(
        fake.count("HEAD", &format!("/v2/team/c/manifests/{manifest}")),
        1
    );
    assert_eq!(
        fake.count("GET", &format!("/v2/team/c/manifests/{manifest}")),
        0
    );
    // The manifest made its config part of team/c: cached via team/a, served with no HEAD.
    let response = get(&proxy.url(&format!("/v2/team/a/blobs/{config}"))).await;
    assert_eq!(response.status(), 200);
    let response = get(&proxy.url(&format!("/v2/team/c/blobs/{config}"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.count("HEAD", &format!("/v2/team/c/blobs/{config}")), 0);
    assert_eq!(fake.count("GET", &format!("/v2/team/c/blobs/{config}")), 0);
}
