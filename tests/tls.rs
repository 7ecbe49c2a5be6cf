//! TLS on the registry API: HTTP/2 through ALPN and HTTP/1.1, and a certificate reload on
//! SIGHUP that new connections see while a transfer on an old one completes.
//!
//! Sends SIGHUP to this test process, so it lives in its own test binary.

mod support;

use std::path::Path;
use std::time::Duration;

use support::fake::{FakeRegistry, Fault};
use support::proxy::Proxy;

struct Pem {
    cert: String,
    key: String,
}

fn self_signed() -> Pem {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pem {
        cert: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
    }
}

fn write(dir: &Path, pem: &Pem) {
    std::fs::write(dir.join("cert.pem"), &pem.cert).unwrap();
    std::fs::write(dir.join("key.pem"), &pem.key).unwrap();
}

/// A client that trusts only `pem`'s certificate and reaches the proxy as `localhost`.
fn client(pem: &Pem, proxy: &Proxy, http1_only: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.cert.as_bytes()).unwrap())
        .resolve("localhost", proxy.addr)
        .timeout(Duration::from_secs(20));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("https://localhost:{}{path}", proxy.addr.port())
}

async fn start(fake: &FakeRegistry, dir: &Path) -> Proxy {
    let server = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    Proxy::start_server(&fake.url(), &server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http2_and_http1_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pem = self_signed();
    write(dir.path(), &pem);
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(vec![7u8; 100_000]);
    let proxy = start(&fake, dir.path()).await;

    let h2 = client(&pem, &proxy, false);
    let response = h2.get(url(&proxy, "/v2/")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let blob = h2
        .get(url(&proxy, &format!("/v2/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.bytes().await.unwrap().len(), 100_000);

    let h1 = client(&pem, &proxy, true);
    let response = h1.get(url(&proxy, "/v2/")).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);

    // Clear text on the TLS port is refused, not served.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let clear = plain
        .get(format!("http://{}/v2/", proxy.addr))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(clear.is_err() || clear.unwrap().status().as_u16() != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_certificate_without_dropping_transfers() {
    use tokio::signal::unix::{signal, SignalKind};
    // Our own handler first, so SIGHUP can never take the default action (exit).
    let _hangups = signal(SignalKind::hangup()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (self_signed(), self_signed());
    write(dir.path(), &old);
    let fake = FakeRegistry::start().await;
    let blob: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    let proxy = start(&fake, dir.path()).await;

    let trusts_old = client(&old, &proxy, false);
    let mut transfer = trusts_old
        .get(url(&proxy, &format!("/v2/a/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let first = transfer.chunk().await.unwrap().unwrap();

    write(dir.path(), &new);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let trusts_new = client(&new, &proxy, false);
    let mut reloaded = false;
    for _ in 0..50 {
        if let Ok(r) = trusts_new.get(url(&proxy, "/v2/")).send().await {
            reloaded = r.status().as_u16() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "new connections get the new certificate");
    let fresh_old = client(&old, &proxy, false);
    assert!(
        fresh_old.get(url(&proxy, "/v2/")).send().await.is_err(),
        "the old certificate is no longer offered"
    );

    fake.release();
    let mut got = first.to_vec();
    while let Some(chunk) = transfer.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, blob, "the transfer begun before the reload completed");
}
