//! An h2 client that opens many blob streams with a one-byte window and never grants more
//! (issue 3 of the security review): the daemon's memory must stay bounded and the stalled
//! connections must be closed within twice `send_timeout_secs`, giving the memory back.
//! Runs the real binary, so its RSS is the daemon's alone.

mod support;

use std::time::{Duration, Instant};

use support::fake::FakeRegistry;
use support::regcache::Regcache;

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

/// Opens `STREAMS` GETs of `path` on one h2 connection with a one-byte window, reads no
/// body, and returns when the server ends the connection (or after `limit`), with how
/// many streams it accepted.
async fn stall(addr: String, path: String, limit: Duration) -> (usize, Option<Instant>) {
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1)
        .handshake::<_, bytes::Bytes>(tcp)
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
async fn streams_held_shut_cost_bounded_memory_and_are_closed() {
    let fake = FakeRegistry::start().await;
    // Larger than the memory tier takes, so every stream reads from disk.
    let digest = fake.add_blob(vec![7u8; 16 << 20]);
    let work = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nsend_timeout_secs = {SEND_TIMEOUT_SECS}\n[[upstream]]\nurl = \"{}\"\n",
        fake.url()
    );
    let proxy = Regcache::start_with_config(&config, &work.path().join("cache"));
    let path = format!("/v2/a/b/blobs/{digest}");
    let warm = reqwest::get(format!("{}{path}", proxy.url()))
        .await
        .unwrap();
    assert_eq!(warm.bytes().await.unwrap().len(), 16 << 20);
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
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(stall(proxy.addr(), path.clone(), limit)))
        .collect();
    let mut accepted = 0;
    for client in clients {
        let (streams, ended) = client.await.unwrap();
        accepted += streams;
        let ended = ended.expect("the daemon never closed a stalled connection");
        let after = ended - started;
        eprintln!(
            "connection closed {:.1} s after the streams opened",
            after.as_secs_f64()
        );
        assert!(
            after <= Duration::from_secs(2 * SEND_TIMEOUT_SECS) + Duration::from_millis(500),
            "closed only after {after:?}"
        );
    }
    let peak = sampler.await.unwrap();
    eprintln!(
        "{CONNECTIONS} connections, {accepted} streams accepted: RSS idle {} MiB, peak {} MiB",
        idle / 1024,
        peak / 1024
    );
    assert!(accepted >= CONNECTIONS, "no stream was opened");
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
        "RSS {} MiB {:.1} s after the streams opened",
        now / 1024,
        started.elapsed().as_secs_f64()
    );
    assert!(
        now <= idle + (16 << 10),
        "RSS stayed at {now} KiB (idle {idle} KiB)"
    );
    // Served as usual afterwards.
    let again = reqwest::get(format!("{}{path}", proxy.url()))
        .await
        .unwrap();
    assert_eq!(again.bytes().await.unwrap().len(), 16 << 20);
}
