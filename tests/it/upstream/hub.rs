//! Docker Hub's ways, against the in-process fake: rate-limit headers become gauges, and
//! credentials come from the Docker CLI's config.json when the config has none.

use crate::support::fake::FakeRegistry;
use crate::support::proxy::Proxy;

async fn status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_become_gauges_per_upstream() {
    let fake = FakeRegistry::start().await;
    fake.add_header("ratelimit-limit", "100;w=21600");
    fake.add_header("ratelimit-remaining", "97;w=21600");
    let blob = fake.add_blob(b"layer".to_vec());
    let proxy = Proxy::start_with(&fake.url(), "name = \"hub\"", None).await;
    assert_eq!(
        status(&proxy.url(&format!("/v2/a/blobs/{blob}"))).await,
        200
    );
    assert_eq!(
        proxy
            .metric("regcache_upstream_ratelimit_limit{upstream=\"hub\"}")
            .await,
        100.0
    );
    assert_eq!(
        proxy
            .metric("regcache_upstream_ratelimit_remaining{upstream=\"hub\"}")
            .await,
        97.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_docker_config_file_unless_turned_off() {
    use base64::Engine as _;
    let fake = FakeRegistry::start().await;
    fake.require_basic("me", "dckr_pat_x");
    let blob = fake.add_blob(b"layer".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("me:dckr_pat_x");
    let host = fake.url().trim_start_matches("http://").to_string();
    std::fs::write(
        &file,
        format!(r#"{{"auths":{{"http://{host}/v1/":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let path = format!("/v2/a/blobs/{blob}");

    let with = format!("docker_config_file = \"{}\"", file.display());
    let proxy = Proxy::start_with(&fake.url(), &with, None).await;
    assert_eq!(status(&proxy.url(&path)).await, 200);

    let without = "docker_config = false";
    let proxy = Proxy::start_with(&fake.url(), without, None).await;
    assert_eq!(
        status(&proxy.url(&path)).await,
        403,
        "refused without credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parents_429_is_passed_on_not_worked_around_at_the_registry() {
    use crate::support::scripted::{answer, Scripted};
    let registry = FakeRegistry::start().await;
    let manifest = registry.add_manifest(
        "app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        br#"{"schemaVersion":2,"layers":[]}"#.to_vec(),
    );
    let parent = Scripted::start(|_, _| {
        let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"upstream docker.io: pull budget spent"}]}"#;
        answer(429, &[("content-type", "application/json"), ("retry-after", "120")], body)
    })
    .await;
    let parents = format!("parents = [\"{}\"]", parent.url());
    let node = Proxy::start_with(&registry.url(), &parents, None).await;
    let response = reqwest::get(node.url(&format!("/v2/app/manifests/{manifest}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "120");
    let body = response.text().await.unwrap();
    assert!(body.contains("TOOMANYREQUESTS"), "{body}");
    assert!(
        body.contains("parent mirror is out of pulls: upstream docker.io: pull budget spent"),
        "{body}"
    );
    assert_eq!(
        registry.count("GET", &format!("/manifests/{manifest}")),
        0,
        "the registry was not asked"
    );
}
