//! What a mirror shared by many teams must not do: serve repositories its upstream's
//! `allow`/`deny` patterns exclude, or hand out cached content through a repository
//! (or upstream) that regcache has not seen it belong to.

mod support;

use support::fake::FakeRegistry;
use support::proxy::Proxy;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn get(url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let code = body["errors"][0]["code"].as_str().unwrap().to_string();
    let message = body["errors"][0]["message"].as_str().unwrap().to_string();
    (status, code, message)
}

fn image(config: &str, layers: &[&str]) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|d| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":1}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[{}]}}"#,
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
