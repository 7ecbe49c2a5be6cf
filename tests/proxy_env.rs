//! Upstream traffic honours `HTTP_PROXY`/`HTTPS_PROXY` and `NO_PROXY` from the environment
//! (reqwest reads them when the client is built). The environment is process-wide, so this
//! binary holds this one test only.

mod support;

use support::fake::FakeRegistry;
use support::proxy::Proxy;

async fn status(url: &str) -> u16 {
    // The test's own requests to regcache go direct.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_go_through_the_proxy_unless_no_proxy_names_the_host() {
    // The fake registry doubles as the forward proxy: it answers absolute-form requests
    // for a host that does not resolve, so only a proxied request can succeed.
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(b"through the proxy".to_vec());
    let upstream = "http://upstream.regcache.invalid";
    let path = format!("/v2/a/blobs/{digest}");
    std::env::set_var("HTTP_PROXY", fake.url());
    std::env::set_var("NO_PROXY", "127.0.0.1");

    let proxied = Proxy::start_with(upstream, "", None).await;
    assert_eq!(status(&proxied.url(&path)).await, 200);
    assert_eq!(fake.count("GET", &digest), 1);

    std::env::set_var("NO_PROXY", "127.0.0.1,upstream.regcache.invalid");
    let direct = Proxy::start_with(upstream, "retries = 0", None).await;
    let other = fake.add_blob(b"not proxied".to_vec());
    assert_eq!(
        status(&direct.url(&format!("/v2/a/blobs/{other}"))).await,
        502
    );
    assert_eq!(fake.count("GET", &other), 0);
}
