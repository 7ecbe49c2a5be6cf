//! Upstream auth against the real `docker-registry` (distribution 2.8), pulled through
//! regcache with skopeo:
//!
//! - `auth: token`: the Bearer flow with the test's token issuer (`crate::support::token_issuer`),
//!   whose signing certificate is the registry's `rootcertbundle`. Tokens are cached per
//!   scope: however many requests a pull makes, one token request per repository.
//! - `auth: htpasswd`: Basic, which is how Amazon ECR looks on the wire.
//!
//! In both, a regcache with the credentials in its config pulls; one without is refused
//! (403 to its client) and skopeo's pull fails.

use crate::support::images::{self, PushedImage};
use crate::support::regcache::Regcache;
use crate::support::registry::Registry;
use crate::support::skopeo;
use crate::support::token_issuer::TokenIssuer;

const USER: &str = "puller";
const PASSWORD: &str = "pull-pw";

fn config(registry: &Registry, credentials: Option<(&str, &str)>) -> String {
    let mut text = format!(
        "[[upstream]]\nname = \"private\"\nurl = \"{}\"\ndocker_config = false\n",
        registry.url()
    );
    if let Some((user, password)) = credentials {
        text.push_str(&format!(
            "username = \"{user}\"\npassword = \"{password}\"\n"
        ));
    }
    text
}

/// The status regcache answers for `GET /v2/<repo>/manifests/<tag>`.
async fn manifest_status(proxy: &Regcache, image: &PushedImage) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v2/{}/manifests/{}", proxy.url(), image.repo, image.tag);
    let accept = "application/vnd.docker.distribution.manifest.v2+json";
    let response = client.get(url).header("accept", accept).send().await;
    response.unwrap().status().as_u16()
}

fn pull_ok(proxy: &Regcache, image: &PushedImage, work: &std::path::Path, name: &str) {
    let reference = format!("{}:{}", image.repo, image.tag);
    match skopeo::pull(&proxy.addr(), &reference, work, name) {
        Ok(dir) => skopeo::check_pulled(&dir, image),
        Err(e) => panic!("{e}\n--- regcache log:\n{}", proxy.log()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_from_the_registry_token_service_are_cached_per_scope() {
    let issuer = TokenIssuer::start(USER, PASSWORD).await;
    let work = tempfile::tempdir().unwrap();
    let cert = work.path().join("token-signer.pem");
    issuer.write_cert(&cert);
    let registry = Registry::start_with(&issuer.registry_yaml(&cert));

    let push = |repo: &str| {
        format!(
            "Bearer {}",
            issuer.mint(&format!("repository:{repo}:pull,push"))
        )
    };
    let sizes = [256 * 1024, 4096];
    let app = images::push_docker_image_as(
        &registry.url(),
        Some(&push("e2e/app")),
        "e2e/app",
        "v1",
        &sizes,
        21,
    )
    .await;
    let tool = images::push_docker_image_as(
        &registry.url(),
        Some(&push("e2e/tool")),
        "e2e/tool",
        "v1",
        &[8192],
        22,
    )
    .await;

    let proxy = Regcache::start_with_config(
        &config(&registry, Some((USER, PASSWORD))),
        &work.path().join("with"),
    );
    pull_ok(&proxy, &app, work.path(), "app");
    pull_ok(&proxy, &tool, work.path(), "tool");
    // A pull is a manifest and three or more blobs upstream; each scope got one token.
    assert!(registry.blob_gets() >= app.blobs.len() + tool.blobs.len());
    assert_eq!(issuer.requests_for("repository:e2e/app:pull"), 1);
    assert_eq!(issuer.requests_for("repository:e2e/tool:pull"), 1);
    assert_eq!(issuer.refused(), 0);

    let anonymous =
        Regcache::start_with_config(&config(&registry, None), &work.path().join("without"));
    assert_eq!(manifest_status(&anonymous, &app).await, 403);
    let failed = skopeo::pull(&anonymous.addr(), "e2e/app:v1", work.path(), "anonymous");
    assert!(failed.is_err(), "an anonymous pull must be refused");
    assert!(
        issuer.refused() >= 1,
        "the token service refused the anonymous request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_against_an_htpasswd_registry() {
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    let hash = bcrypt::hash_with_result(PASSWORD, 5)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
    let yaml = format!(
        "auth:\n  htpasswd:\n    realm: regcache-e2e\n    path: {}\n",
        htpasswd.display()
    );
    let registry = Registry::start_with(&yaml);

    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let app = images::push_docker_image_as(
        &registry.url(),
        Some(&basic),
        "e2e/app",
        "v1",
        &[256 * 1024, 4096],
        31,
    )
    .await;

    let proxy = Regcache::start_with_config(
        &config(&registry, Some((USER, PASSWORD))),
        &work.path().join("with"),
    );
    pull_ok(&proxy, &app, work.path(), "app");

    for (name, credentials) in [("anonymous", None), ("wrong", Some((USER, "nope")))] {
        let proxy =
            Regcache::start_with_config(&config(&registry, credentials), &work.path().join(name));
        assert_eq!(manifest_status(&proxy, &app).await, 403, "{name}");
        let failed = skopeo::pull(&proxy.addr(), "e2e/app:v1", work.path(), name);
        assert!(failed.is_err(), "{name}: the pull must be refused");
    }
}
