//! What a hostile or spoofed upstream may not make regcache do: follow a redirect to its
//! own admin port or another network, hand the upstream's credentials to a token realm
//! on another host or over plain http; and what the config may not hold: a password in
//! an upstream URL. Every server here is an in-process fake on 127.0.0.1.

use std::time::Duration;

use crate::support::fake::FakeRegistry;
use crate::support::proxy::Proxy;
use base64::Engine as _;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn manifest_body() -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[]}}"#,
        "0".repeat(64)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_or_manifest_redirected_to_the_admin_port_is_refused_not_served() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start(&fake.url()).await;
    let metrics = format!("http://{}/metrics", proxy.admin);
    fake.redirect("/v2/team/app/tags/list", &metrics);
    fake.redirect("/v2/team/app/manifests/latest", &metrics);

    for path in ["/v2/team/app/tags/list", "/v2/team/app/manifests/latest"] {
        for _ in 0..2 {
            let (status, body) = get(&proxy.url(path)).await;
            assert_eq!(status, 502, "{path}: {body}");
            assert!(body.contains("\"errors\""), "{path}: {body}");
            assert!(body.contains("redirect"), "{path}: {body}");
            assert!(
                !body.contains("regcache_"),
                "the metrics page leaked: {body}"
            );
        }
    }
    // Asked twice each: nothing was stored from the first answer.
    assert_eq!(fake.count("GET", "/manifests/latest"), 2);
    assert_eq!(fake.count("GET", "/tags/list"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirect_reaches_storage_on_the_upstreams_network_without_its_token() {
    let upstream = FakeRegistry::start().await;
    upstream.require_bearer("upstream-token");
    let storage = FakeRegistry::start().await;
    let blob = b"layer bytes kept in object storage".to_vec();
    let digest = storage.add_blob(blob.clone());
    let location = format!("{}/v2/bucket/blobs/{digest}", storage.url());
    upstream.redirect(&format!("/v2/team/app/blobs/{digest}"), &location);
    let proxy = Proxy::start(&upstream.url()).await;

    let response = client()
        .get(proxy.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), blob);
    let sent = upstream.authorizations(&digest);
    assert_eq!(
        sent.last(),
        Some(&Some("Bearer upstream-token".to_string()))
    );
    assert_eq!(
        storage.authorizations(&digest),
        [None],
        "no token to storage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirect_to_an_address_off_the_upstreams_network_is_refused() {
    let upstream = FakeRegistry::start().await;
    let storage = FakeRegistry::start().await;
    let digest = storage.add_blob(b"never fetched".to_vec());
    // 0.0.0.0 reaches this host on Linux, but it is not the loopback the upstream is on.
    let port = storage.url().rsplit(':').next().unwrap().to_string();
    let location = format!("http://0.0.0.0:{port}/v2/bucket/blobs/{digest}");
    upstream.redirect(&format!("/v2/team/app/blobs/{digest}"), &location);
    let proxy = Proxy::start(&upstream.url()).await;

    let (status, body) = get(&proxy.url(&format!("/v2/team/app/blobs/{digest}"))).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("redirect not followed"), "{body}");
    assert!(body.contains("0.0.0.0"), "{body}");
    assert_eq!(storage.count("GET", &digest), 0, "storage was never asked");
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

const CREDENTIALS: &str = "username = \"alice\"\npassword = \"secretpw\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_to_a_token_realm_on_the_upstreams_host_or_a_listed_one() {
    let upstream = FakeRegistry::start().await;
    upstream.require_bearer("granted");
    upstream.add_manifest("team/app", "1.0", MANIFEST, manifest_body());
    let issuer = FakeRegistry::start().await;
    issuer.require_bearer("granted");
    let port = issuer.url().rsplit(':').next().unwrap().to_string();
    // `localhost` is not the upstream's host (127.0.0.1): another host, for the test.
    upstream.set_realm(&format!("http://localhost:{port}/token"));
    let path = "/v2/team/app/manifests/1.0";

    let proxy = Proxy::start_with(&upstream.url(), CREDENTIALS, None).await;
    let (status, body) = get(&proxy.url(path)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("token_realm_hosts = [\\\"localhost\\\"]"),
        "{body}"
    );
    assert!(issuer.token_authorizations().is_empty(), "nothing sent");
    proxy.stop().await;

    let listed = format!("{CREDENTIALS}token_realm_hosts = [\"localhost\"]\n");
    let proxy = Proxy::start_with(&upstream.url(), &listed, None).await;
    let (status, body) = get(&proxy.url(path)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        issuer.token_authorizations(),
        [Some(basic("alice", "secretpw"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_never_sends_credentials_to_a_plain_http_realm() {
    let upstream = FakeRegistry::start_untrusted_tls().await;
    upstream.require_bearer("granted");
    upstream.add_manifest("team/app", "1.0", MANIFEST, manifest_body());
    let issuer = FakeRegistry::start().await;
    issuer.require_bearer("granted");
    upstream.set_realm(&format!("{}/token", issuer.url()));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, upstream.cert_pem().unwrap()).unwrap();
    let extra = format!("{CREDENTIALS}ca_file = \"{}\"\n", ca.display());

    let proxy = Proxy::start_with(&upstream.url(), &extra, None).await;
    let (status, body) = get(&proxy.url("/v2/team/app/manifests/1.0")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("plain-http token realm"), "{body}");
    assert!(issuer.token_authorizations().is_empty(), "nothing sent");
}

#[test]
fn check_config_refuses_a_password_in_the_upstream_url_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        "listen = \"127.0.0.1:5000\"\n[[upstream]]\nurl = \"http://user:secretpw@127.0.0.1:1\"\n";
    let (status, printed) = crate::support::regcache::check_config(dir.path(), text);
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(printed.contains("upstream[0].url"), "{printed}");
    assert!(
        printed.contains("upstream[0].username and upstream[0].password"),
        "{printed}"
    );
    assert!(!printed.contains("secretpw"), "{printed}");
}
