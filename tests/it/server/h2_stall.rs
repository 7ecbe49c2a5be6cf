//! An h2 client that opens many blob streams with a one-byte window and never grants more
//! (issue 3 of the security review): the daemon's memory must stay bounded and the stalled
//! connections must be closed within twice `send_timeout_secs`, giving the memory back.
//! Runs the real binary, so its RSS is the daemon's alone; over cleartext (prior knowledge)
//! and over TLS with ALPN.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::support::fake::FakeRegistry;
use crate::support::regcache::Regcache;

const CONNECTIONS: usize = 4;
const STREAMS: usize = 200;
const SEND_TIMEOUT_SECS: u64 = 2;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `addr`: cleartext h2 (prior knowledge), or TLS offering only h2.
async fn connect(addr: &str, tls: Option<Arc<ClientConfig>>) -> Box<dyn Io> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let Some(tls) = tls else {
        return Box::new(tcp);
    };
    let name = ServerName::try_from("localhost").unwrap();
    let stream = TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    Box::new(stream)
}

/// Opens `STREAMS` GETs of `path` on one h2 connection with a one-byte window, reads no
/// body, and returns when the server ends the connection (or after `limit`), with how
/// many streams it asked for.
async fn stall(
    addr: String,
    tls: Option<Arc<ClientConfig>>,
    path: String,
    limit: Duration,
) -> (usize, Option<Instant>) {
    let io = connect(&addr, tls).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
        Instant::now()
    });
    let mut held = Vec::new();
    let opening = async {
        let mut client = client;
        for _ in 0..STREAMS {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break,
            };
            let request = http::Request::get(format!("http://{addr}{path}"))
                .body(())
                .unwrap();
            let Ok((response, _)) = client.send_request(request, true) else {
                break;
            };
            held.push(tokio::spawn(response));
        }
        std::future::pending::<()>().await
    };
    let ended_at = tokio::select! {
        at = ended => at.ok(),
        _ = tokio::time::timeout(limit, opening) => None,
    };
    (held.len(), ended_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_streams_held_shut_cost_bounded_memory_and_are_closed() {
    held_shut(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_held_shut_cost_bounded_memory_and_are_closed() {
    held_shut(true).await;
}

/// A client trusting only `cert`, reaching the daemon at `addr` as `localhost`.
fn https_client(cert: &rcgen::Certificate, addr: &str) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .resolve("localhost", addr.parse().unwrap())
        .build()
        .unwrap()
}

fn h2_tls_config(cert: &rcgen::Certificate) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn held_shut(tls: bool) {
    let fake = FakeRegistry::start().await;
    // Larger than the memory tier takes, so every stream reads from disk.
    let digest = fake.add_blob(vec![7u8; 16 << 20]);
    let work = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let tls_files = match tls {
        true => format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        false => String::new(),
    };
    let config = format!(
        "[server]\nsend_timeout_secs = {SEND_TIMEOUT_SECS}\n{tls_files}[[upstream]]\nurl = \"{}\"\n",
        fake.url()
    );
    let proxy = Regcache::start_with_config(&config, &work.path().join("cache"));
    let path = format!("/v2/a/b/blobs/{digest}");
    let port = proxy.addr().rsplit(':').next().unwrap().to_string();
    let scheme = if tls { "https" } else { "http" };
    let blob_url = format!("{scheme}://localhost:{port}{path}");
    let client = https_client(&made.cert, &proxy.addr());
    let pull = || async {
        client
            .get(&blob_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    assert_eq!(pull().await.len(), 16 << 20);
    let pid = proxy.pid().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);

    let limit = Duration::from_secs(6 * SEND_TIMEOUT_SECS);
    let started = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while started.elapsed() < limit {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    let h2_tls = tls.then(|| h2_tls_config(&made.cert));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(stall(proxy.addr(), h2_tls.clone(), path.clone(), limit)))
        .collect();
    let mut asked = 0;
    for client in clients {
        let (streams, ended) = client.await.unwrap();
        asked += streams;
        let ended = ended.expect("the daemon never closed a stalled connection");
        let after = ended - started;
        eprintln!(
            "tls={tls}: connection closed {:.1} s after the streams opened",
            after.as_secs_f64()
        );
        assert!(
            after <= Duration::from_secs(2 * SEND_TIMEOUT_SECS) + Duration::from_millis(500),
            "closed only after {after:?}"
        );
    }
    let peak = sampler.await.unwrap();
    eprintln!(
        "tls={tls}: {CONNECTIONS} connections, {asked} streams asked for: RSS idle {} MiB, peak {} MiB",
        idle / 1024,
        peak / 1024
    );
    assert!(asked >= CONNECTIONS, "no stream was opened");
    assert!(
        peak.saturating_sub(idle) < 64 << 10,
        "RSS grew from {idle} KiB to {peak} KiB"
    );
    // The streams' buffers go back to the system once their connections are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss_kib(pid);
    while now > idle + (16 << 10) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_kib(pid);
    }
    eprintln!(
        "tls={tls}: RSS {} MiB {:.1} s after the streams opened",
        now / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(
        now <= idle + (16 << 10),
        "RSS stayed at {now} KiB (idle {idle} KiB)"
    );
    // Served as usual afterwards.
    assert_eq!(pull().await.len(), 16 << 20);
}
