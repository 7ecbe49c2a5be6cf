//! The `[server]` limits against misbehaving clients: oversized heads, slow heads, idle
//! and non-reading clients, too many connections, and graceful shutdown with a transfer
//! in flight, one address holding every connection. Each limit must be counted in
//! `regcache_limit_rejections_total`.

use std::time::Duration;

use crate::support::data;
use crate::support::fake::{FakeRegistry, Fault};
use crate::support::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rejections(limit: &str) -> String {
    format!("regcache_limit_rejections_total{{limit=\"{limit}\"}}")
}

/// Polls the metric until it reaches `at_least`, for up to 10 s.
async fn wait_for_metric(proxy: &Proxy, sample: &str, at_least: f64) -> f64 {
    let mut value = 0.0;
    for _ in 0..100 {
        value = proxy.metric(sample).await;
        if value >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    value
}

/// Reads until EOF or error; returns what was read. Bounded by 10 s.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = stream.read_to_end(&mut got);
    let _ = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server closed the connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_gets_431_and_is_counted() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(&fake.url(), "max_header_bytes = \"16KiB\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let filler = "a".repeat(32 * 1024);
    let request = format!("GET /v2/ HTTP/1.1\r\nhost: x\r\nx-filler: {filler}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        wait_for_metric(&proxy, &rejections("header_size"), 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_get_431() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(&fake.url(), "max_headers = 10").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let headers: String = (0..20).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET /v2/ HTTP/1.1\r\nhost: x\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_too_slowly_is_cut_off() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(&fake.url(), "header_read_timeout_secs = 1").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /v2/ HTTP/1.1\r\nho").await.unwrap();
    read_to_close(&mut stream).await;
    let value = wait_for_metric(&proxy, &rejections("header_read_timeout"), 1.0).await;
    assert_eq!(value, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(&fake.url(), "idle_timeout_secs = 1").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(wait_for_metric(&proxy, &rejections("idle_timeout"), 1.0).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(24 << 20, 1));
    let proxy = Proxy::start_server(&fake.url(), "send_timeout_secs = 1").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /v2/a/blobs/{digest} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // Never read: the socket buffers fill and the server's writes stall.
    let value = wait_for_metric(&proxy, &rejections("send_timeout"), 1.0).await;
    assert_eq!(value, 1.0);
    let got = read_to_close(&mut stream).await;
    assert!(got.len() < 24 << 20, "the transfer was cut, not completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_maximum_are_refused() {
    let fake = FakeRegistry::start().await;
    let proxy = Proxy::start_server(&fake.url(), "max_connections = 2").await;
    let _held: Vec<TcpStream> = vec![
        TcpStream::connect(proxy.addr).await.unwrap(),
        TcpStream::connect(proxy.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(read_to_close(&mut third).await.is_empty());
    assert_eq!(
        wait_for_metric(&proxy, &rejections("max_connections"), 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_flood_from_one_address_does_not_lock_out_another() {
    let fake = FakeRegistry::start().await;
    // Fewer connections than the flood, as in the issue; the per-address cap is the default.
    let proxy = Proxy::start_server(&fake.url(), "max_connections = 128").await;
    let mut held = Vec::new();
    for _ in 0..150 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // A head that never ends: only header_read_timeout_secs (30 s) would close it.
        let _ = stream.write_all(b"GET /v2/ HTTP/1.1\r\nx-slow: ").await;
        held.push(stream);
    }
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let response = other.get(proxy.url("/v2/")).send().await;
    assert_eq!(
        response.map(|r| r.status().as_u16()).ok(),
        Some(200),
        "another address still gets in"
    );
    let refused = wait_for_metric(&proxy, &rejections("max_connections_per_ip"), 86.0).await;
    assert_eq!(refused, 86.0, "150 - the default of 64 per address");
    assert_eq!(proxy.metric(&rejections("max_connections")).await, 0.0);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_a_transfer_in_flight_finish_and_refuses_new_ones() {
    let fake = FakeRegistry::start().await;
    let blob = data(4 << 20, 2);
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Held);
    let mut proxy = Proxy::start_server(&fake.url(), "shutdown_grace_secs = 20").await;
    let addr = proxy.addr;
    let mut response = reqwest::get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections once shutdown began"
    );
    fake.release();
    let mut got = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, blob, "the transfer in flight completed intact");
    tokio::time::timeout(Duration::from_secs(10), proxy.stopped())
        .await
        .expect("the app stops once the transfer is done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_closes_what_is_left_after_the_grace_period() {
    let fake = FakeRegistry::start().await;
    let digest = fake.add_blob(data(4 << 20, 3));
    fake.set_fault(&digest, Fault::Held);
    let mut proxy = Proxy::start_server(&fake.url(), "shutdown_grace_secs = 1").await;
    let mut response = reqwest::get(proxy.url(&format!("/v2/a/blobs/{digest}")))
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    proxy.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.stopped())
        .await
        .expect("the app stops at the grace deadline although upstream is held");
    let mut rest = Ok(Some(bytes::Bytes::new()));
    while let Ok(Some(_)) = rest {
        rest = response.chunk().await;
    }
    assert!(
        rest.is_err(),
        "the cut transfer ends as an error, not a clean end"
    );
    fake.release();
}
