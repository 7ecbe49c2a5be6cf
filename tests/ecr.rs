//! Amazon ECR upstreams against a local fake of the ECR API (`support::fake_ecr`) and the
//! in-process fake registry requiring Basic `AWS:<password>`, as ECR does.
//!
//! The AWS SDK signs with static credentials from the environment; this binary sets them
//! (and turns off profile files and instance metadata) for the whole process, which is why
//! these tests have a binary of their own. The refresh timing itself is tested with the
//! clock paused in `upstream::credentials`; here the token lifetime is a few seconds.
#![cfg(feature = "ecr")]

mod support;

use std::sync::Once;
use std::time::Duration;

use support::fake::FakeRegistry;
use support::fake_ecr::FakeEcr;
use support::proxy::Proxy;

fn aws_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDREGCACHETEST");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "regcache-test-secret");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/regcache-test");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/regcache-test");
    });
}

/// A fake registry with `blobs` blobs requiring `AWS:pw1`, the fake ECR API answering
/// `pw1`, and a proxy whose upstream is the registry as an `ecr` upstream.
async fn setup(blobs: usize) -> (FakeRegistry, FakeEcr, Proxy, Vec<String>) {
    aws_environment();
    let registry = FakeRegistry::start().await;
    registry.require_basic("AWS", "pw1");
    let digests = (0..blobs)
        .map(|i| registry.add_blob(format!("layer {i}").into_bytes()))
        .collect();
    let ecr = FakeEcr::start("pw1").await;
    let extra = format!(
        "name = \"ecr\"\necr = {{ region = \"us-east-1\", endpoint_url = \"{}\" }}",
        ecr.url()
    );
    let proxy = Proxy::start_with(&registry.url(), &extra, None).await;
    (registry, ecr, proxy, digests)
}

async fn get_blob(proxy: &Proxy, digest: &str) -> u16 {
    let url = proxy.url(&format!("/v2/team/app/blobs/{digest}"));
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecr_token_is_sent_as_basic_and_reused() {
    let (_registry, ecr, proxy, blobs) = setup(3).await;
    for blob in &blobs {
        assert_eq!(get_blob(&proxy, blob).await, 200);
    }
    assert_eq!(ecr.token_requests(), 1, "one token for every request");
    assert!(
        ecr.unknown_targets().is_empty(),
        "{:?}",
        ecr.unknown_targets()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_ecr_token() {
    let (registry, ecr, proxy, blobs) = setup(2).await;
    assert_eq!(get_blob(&proxy, &blobs[0]).await, 200);
    // The token is revoked early: the registry now wants the next one.
    registry.require_basic("AWS", "pw2");
    ecr.set_password("pw2");
    assert_eq!(get_blob(&proxy, &blobs[1]).await, 200);
    assert_eq!(ecr.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecr_token_is_refreshed_before_it_expires() {
    aws_environment();
    let (_registry, ecr, proxy, blobs) = setup(2).await;
    // Refreshed a tenth of its life early: at 2.7 s of 3 s.
    ecr.set_lifetime(Duration::from_secs(3));
    assert_eq!(get_blob(&proxy, &blobs[0]).await, 200);
    assert_eq!(ecr.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2800)).await;
    assert_eq!(get_blob(&proxy, &blobs[1]).await, 200);
    assert_eq!(
        ecr.token_requests(),
        2,
        "renewed before the expiry, not after a 401"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_during_a_refresh_make_one_token_request() {
    let (registry, ecr, proxy, blobs) = setup(12).await;
    ecr.set_delay(Duration::from_millis(300));
    let proxy = std::sync::Arc::new(proxy);
    let pull_all = |blobs: Vec<String>| {
        let tasks: Vec<_> = blobs
            .into_iter()
            .map(|blob| {
                let proxy = proxy.clone();
                tokio::spawn(async move { get_blob(&proxy, &blob).await })
            })
            .collect();
        async move {
            for task in tasks {
                assert_eq!(task.await.unwrap(), 200);
            }
        }
    };
    pull_all(blobs[..6].to_vec()).await;
    assert_eq!(ecr.token_requests(), 1, "the first fetch is shared");
    // Every request of the next burst is refused with the old token at once.
    registry.require_basic("AWS", "pw2");
    ecr.set_password("pw2");
    pull_all(blobs[6..].to_vec()).await;
    assert_eq!(ecr.token_requests(), 2, "one refresh for the whole burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ecr_api_is_a_clear_upstream_error() {
    aws_environment();
    let registry = FakeRegistry::start().await;
    registry.require_basic("AWS", "pw1");
    let blob = registry.add_blob(b"layer".to_vec());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let extra = format!(
        "name = \"ecr\"\necr = {{ region = \"us-east-1\", endpoint_url = \"{endpoint}\" }}"
    );
    let proxy = Proxy::start_with(&registry.url(), &extra, None).await;
    let response = reqwest::get(proxy.url(&format!("/v2/team/app/blobs/{blob}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("GetAuthorizationToken"), "{body}");
}
