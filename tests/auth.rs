//! `[server.auth]` on the registry API: htpasswd (bcrypt) users and bearer tokens, the
//! IP allow list, the 401 challenge clients need, the failure metric, the credential
//! reload on SIGHUP, and `check-config`'s warnings and file checks.
//!
//! Sends SIGHUP to this test process, so it lives in its own test binary.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use support::fake::FakeRegistry;
use support::proxy::Proxy;

const TOKEN: &str = "ci-0123456789abcdef0123456789abcdef";

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Writes `users` (name, password) as bcrypt htpasswd lines at the lowest cost.
fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    let lines: String = users
        .iter()
        .map(|(user, password)| format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap()))
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// A proxy whose `[server.auth]` reads `dir/htpasswd` and `dir/tokens`.
async fn start_with_credentials(fake: &FakeRegistry, dir: &Path) -> Proxy {
    write_htpasswd(&dir.join("htpasswd"), &[("alice", "wonderland")]);
    std::fs::write(dir.join("tokens"), format!("# CI fleet\n{TOKEN}\n")).unwrap();
    let server = format!(
        "[server.auth]\nhtpasswd_file = \"{}\"\ntokens_file = \"{}\"\n",
        dir.join("htpasswd").display(),
        dir.join("tokens").display()
    );
    Proxy::start_server(&fake.url(), &server).await
}

async fn get(url: &str, authorization: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

fn failures(reason: &str) -> String {
    format!("regcache_auth_failures_total{{reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_tokens_get_in_and_everyone_else_gets_a_challenge() {
    let fake = FakeRegistry::start().await;
    let blob = b"layer bytes behind a password".to_vec();
    let digest = fake.add_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_with_credentials(&fake, dir.path()).await;
    let blob_url = proxy.url(&format!("/v2/team/app/blobs/{digest}"));

    for (path, authorization, reason) in [
        ("/v2/", None, "missing"),
        (blob_url.as_str(), None, "missing"),
        ("/not-the-api", None, "missing"),
        ("/v2/", Some(basic("alice", "guess")), "rejected"),
        ("/v2/", Some(basic("mallory", "wonderland")), "rejected"),
        ("/v2/", Some("Bearer not-a-token".to_string()), "rejected"),
        ("/v2/", Some("Digest x".to_string()), "malformed"),
    ] {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            proxy.url(path)
        };
        let response = get(&url, authorization.as_deref()).await;
        assert_eq!(response.status().as_u16(), 401, "{path} {authorization:?}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert_eq!(challenge, "Basic realm=\"regcache\"");
        let body = response.text().await.unwrap();
        assert!(body.contains("\"UNAUTHORIZED\""), "{reason}: {body}");
    }
    assert_eq!(fake.count("GET", &digest), 0, "nothing went upstream");
    assert_eq!(proxy.metric(&failures("missing")).await, 3.0);
    assert_eq!(proxy.metric(&failures("rejected")).await, 3.0);
    assert_eq!(proxy.metric(&failures("malformed")).await, 1.0);

    let alice = basic("alice", "wonderland");
    let response = get(&proxy.url("/v2/"), Some(&alice)).await;
    assert_eq!(response.status().as_u16(), 200);
    let response = get(&blob_url, Some(&alice)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), blob);
    for authorization in [format!("Bearer {TOKEN}"), basic("ci", TOKEN)] {
        let response = get(&blob_url, Some(&authorization)).await;
        assert_eq!(response.status().as_u16(), 200, "{authorization}");
        assert_eq!(response.bytes().await.unwrap().to_vec(), blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_failing_gets_429_with_retry_after() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_htpasswd(&dir.path().join("htpasswd"), &[("alice", "wonderland")]);
    let server = format!(
        "[server.auth]\nhtpasswd_file = \"{}\"\nmax_login_failures_per_min = 2\n",
        dir.path().join("htpasswd").display()
    );
    let proxy = Proxy::start_server(&fake.url(), &server).await;
    for guess in ["one", "two"] {
        let response = get(&proxy.url("/v2/"), Some(&basic("alice", guess))).await;
        assert_eq!(response.status().as_u16(), 401);
    }
    let again = get(&proxy.url("/v2/"), Some(&basic("alice", "one"))).await;
    assert_eq!(
        again.status().as_u16(),
        401,
        "a remembered failure is not throttled"
    );
    let response = get(&proxy.url("/v2/"), Some(&basic("alice", "wonderland"))).await;
    assert_eq!(response.status().as_u16(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let body = response.text().await.unwrap();
    assert!(body.contains("\"TOOMANYREQUESTS\""), "{body}");
    assert_eq!(proxy.metric(&failures("throttled")).await, 1.0);
    assert_eq!(proxy.metric("regcache_auth_bcrypt_runs_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_the_allow_list_is_denied() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(
        &fake.url(),
        "[server.auth]\nallow_ips = [\"10.0.0.0/8\", \"fd00::/8\"]\n",
    )
    .await;
    let response = get(&proxy.url("/v2/"), None).await;
    assert_eq!(response.status().as_u16(), 403);
    assert!(response.text().await.unwrap().contains("\"DENIED\""));
    assert_eq!(proxy.metric(&failures("address")).await, 1.0);

    for allowed in ["127.0.0.0/8", "::ffff:127.0.0.1"] {
        let server = format!("[server.auth]\nallow_ips = [\"{allowed}\"]\n");
        let proxy = Proxy::start_server(&fake.url(), &server).await;
        let response = get(&proxy.url("/v2/"), None).await;
        assert_eq!(response.status().as_u16(), 200, "{allowed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_credential_files_and_forgets_remembered_logins() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_with_credentials(&fake, dir.path()).await;
    let alice = basic("alice", "wonderland");
    let bob = basic("bob", "builder");
    assert_eq!(get(&proxy.url("/v2/"), Some(&alice)).await.status(), 200);
    assert_eq!(get(&proxy.url("/v2/"), Some(&bob)).await.status(), 401);

    write_htpasswd(&dir.path().join("htpasswd"), &[("bob", "builder")]);
    let pid = std::process::id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(sent.success());
    let mut status = 0;
    for _ in 0..50 {
        status = get(&proxy.url("/v2/"), Some(&bob)).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "bob is in after the reload");
    let status = get(&proxy.url("/v2/"), Some(&alice)).await.status();
    assert_eq!(status, 401, "alice's remembered login was forgotten");
}

fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let (status, printed) = support::regcache::check_config(dir, text);
    (status.success(), printed)
}

#[test]
fn check_config_warns_about_open_listeners_and_checks_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = "[[upstream]]\nurl = \"http://127.0.0.1:1\"\n";

    let (ok, out) = check_config(
        dir.path(),
        &format!("listen = \"0.0.0.0:5000\"\n{upstream}"),
    );
    assert!(ok, "{out}");
    assert!(out.contains("warning: listen = 0.0.0.0:5000"), "{out}");
    assert!(out.contains("no authentication"), "{out}");

    let (ok, out) = check_config(
        dir.path(),
        &format!("listen = \"127.0.0.1:5000\"\n{upstream}"),
    );
    assert!(ok && !out.contains("warning"), "{out}");

    let allowed = format!(
        "listen = \"0.0.0.0:5000\"\n[server.auth]\nallow_ips = [\"10.0.0.0/8\"]\n{upstream}"
    );
    let (ok, out) = check_config(dir.path(), &allowed);
    assert!(ok && !out.contains("warning"), "{out}");

    let admin = |addr: &str| format!("admin_listen = \"{addr}\"\n{upstream}");
    // Reachable from other hosts: the API needs a token, and /metrics is open anyway.
    let (ok, out) = check_config(dir.path(), &admin("0.0.0.0:5001"));
    assert!(!ok && out.contains("admin.token_file: required"), "{out}");
    let token = "[admin]\ntoken_file = \"/etc/regcache/admin-token\"\n";
    let (ok, out) = check_config(dir.path(), &format!("{}{token}", admin("0.0.0.0:5001")));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: admin_listen = 0.0.0.0:5001 is reachable from other hosts"),
        "{out}"
    );
    let (ok, out) = check_config(dir.path(), &admin("127.0.0.1:5001"));
    assert!(ok && !out.contains("warning"), "{out}");

    std::fs::write(dir.path().join("htpasswd"), "alice:$apr1$not-bcrypt\n").unwrap();
    let bad = format!(
        "[server.auth]\nhtpasswd_file = \"{}\"\n{upstream}",
        dir.path().join("htpasswd").display()
    );
    let (ok, out) = check_config(dir.path(), &bad);
    assert!(!ok, "{out}");
    assert!(out.contains("line 1: user alice: only bcrypt"), "{out}");

    // The TLS pair is loaded as serve would: a key that is not PEM is a problem now.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let tls = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{upstream}",
        cert.display(),
        key.display()
    );
    let (ok, out) = check_config(dir.path(), &tls);
    assert!(!ok, "{out}");
    assert!(out.contains("server.tls_cert_file"), "{out}");
    assert!(out.contains(&key.display().to_string()), "{out}");
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let (ok, out) = check_config(dir.path(), &tls);
    assert!(ok, "{out}");
}
