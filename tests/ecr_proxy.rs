//! The ECR API call honours `HTTP_PROXY`/`NO_PROXY` like the rest of upstream traffic.
//! The environment is process-wide, so this binary holds this one test only.
#![cfg(feature = "ecr")]

mod support;

use support::fake::FakeRegistry;
use support::fake_ecr::FakeEcr;
use support::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecr_api_is_reached_through_the_proxy() {
    // The fake ECR API doubles as the forward proxy: the endpoint's host does not
    // resolve, so only a proxied GetAuthorizationToken can succeed.
    let ecr = FakeEcr::start("pw1").await;
    std::env::set_var("HTTP_PROXY", ecr.url());
    std::env::set_var("NO_PROXY", "127.0.0.1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDREGCACHETEST");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "regcache-test-secret");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/regcache-test");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/regcache-test");

    let registry = FakeRegistry::start().await;
    registry.require_basic("AWS", "pw1");
    let blob = registry.add_blob(b"layer".to_vec());
    let extra =
        "ecr = { region = \"us-east-1\", endpoint_url = \"http://api.ecr.regcache.invalid\" }";
    let proxy = Proxy::start_with(&registry.url(), extra, None).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = proxy.url(&format!("/v2/team/app/blobs/{blob}"));
    let response = client.get(url).send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await.unwrap()
    );
    assert_eq!(ecr.token_requests(), 1);
}
