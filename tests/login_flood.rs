//! Basic logins under a flood of wrong passwords: bcrypt is slow on purpose, so failed
//! logins must not queue it without bound, nor run it for clients that already left.
//!
//! Measures a valid login's latency while 100 connections from one address send wrong
//! passwords, and right after the flood stops; prints the figures (`--nocapture`):
//!
//!     cargo test --test login_flood -- --nocapture
//!
//! Also: a login whose client left while it waited is never verified.
//!
//! Its own test binary, so the flood does not slow other tests and their SIGHUPs do not
//! reset its caches.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::fake::FakeRegistry;
use support::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Connections of the flood, as in the issue.
const FLOOD_CONNECTIONS: usize = 100;
/// A cost that makes one verification take tens of milliseconds, as a real htpasswd does.
const COST: u32 = 10;

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// `alice` and `user0..users`, each with the password `pw-<name>`.
fn write_htpasswd(path: &Path, users: usize) {
    let names = std::iter::once("alice".to_string()).chain((0..users).map(|i| format!("user{i}")));
    let lines: String = names
        .map(|name| {
            let hash = bcrypt::hash(format!("pw-{name}"), COST).unwrap();
            format!("{name}:{hash}\n")
        })
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// Sends one `GET /v2/` from `from` with `authorization` and returns the status (0 when
/// the connection failed or closed without an answer), within `limit`.
async fn login(server: SocketAddr, from: IpAddr, authorization: &str, limit: Duration) -> u16 {
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(from, 0)).ok()?;
        let mut stream = socket.connect(server).await.ok()?;
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nhost: x\r\nauthorization: {authorization}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(limit, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Timed valid logins from `from`, one fresh user each (so each needs bcrypt).
async fn timed_logins(
    server: SocketAddr,
    from: IpAddr,
    users: std::ops::Range<usize>,
) -> Vec<(u16, Duration)> {
    let mut results = Vec::new();
    for i in users {
        let name = format!("user{i}");
        let started = Instant::now();
        let status = login(
            server,
            from,
            &basic(&name, &format!("pw-{name}")),
            Duration::from_secs(30),
        )
        .await;
        results.push((status, started.elapsed()));
    }
    results
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    unauthorized: AtomicU64,
    throttled: AtomicU64,
    other: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_login_answers_within_a_second_during_a_wrong_password_flood() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    tokio::task::block_in_place(|| write_htpasswd(&htpasswd, 10));
    // The flood's connections all come from one address: let them in, to load the logins.
    let server = format!(
        "max_connections_per_ip = 1000\n[server.auth]\nhtpasswd_file = \"{}\"\n",
        htpasswd.display()
    );
    let proxy = Proxy::start_server(&fake.url(), &server).await;
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    let user: IpAddr = "127.0.0.2".parse().unwrap();

    // Each flood connection sends a new wrong password each time (the worst case: no
    // remembered failure helps), waiting for each answer; bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let flood: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|c| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), proxy.addr);
            tokio::spawn(async move {
                for n in 0..10_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let wrong = basic("alice", &format!("wrong-{c}-{n}"));
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let counter = match login(addr, attacker, &wrong, Duration::from_secs(30)).await
                    {
                        401 => &tally.unauthorized,
                        429 => &tally.throttled,
                        _ => &tally.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = timed_logins(proxy.addr, user, 0..5).await;
    stop.store(true, Ordering::Relaxed);
    // The flood's clients leave at once, with requests still waiting for an answer.
    for task in &flood {
        task.abort();
    }
    for task in flood {
        let _ = task.await;
    }
    let after = timed_logins(proxy.addr, user, 5..8).await;
    let same_peer = {
        let started = Instant::now();
        let status = login(
            proxy.addr,
            attacker,
            &basic("user9", "pw-user9"),
            Duration::from_secs(30),
        )
        .await;
        (status, started.elapsed())
    };

    let ms = |r: &[(u16, Duration)]| -> Vec<String> {
        r.iter()
            .map(|(s, d)| format!("{s} in {} ms", d.as_millis()))
            .collect()
    };
    eprintln!(
        "login_flood: {FLOOD_CONNECTIONS} connections, bcrypt cost {COST}: sent {}, 401 {}, 429 {}, other {}",
        tally.sent.load(Ordering::Relaxed),
        tally.unauthorized.load(Ordering::Relaxed),
        tally.throttled.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    eprintln!(
        "login_flood: valid logins during the flood (other address): {:?}",
        ms(&during)
    );
    eprintln!(
        "login_flood: valid logins right after the flood: {:?}",
        ms(&after)
    );
    eprintln!(
        "login_flood: valid login from the flooding address: {} in {} ms",
        same_peer.0,
        same_peer.1.as_millis()
    );
    eprintln!(
        "login_flood: bcrypt runs: {}",
        proxy.metric("regcache_auth_bcrypt_runs_total").await
    );
    for (status, took) in during.iter().chain(&after) {
        assert_eq!(*status, 200, "{during:?} {after:?}");
        assert!(*took < Duration::from_secs(1), "{during:?} {after:?}");
    }
}

/// Polls the bcrypt counter until it holds still for 1.5 s (at most 20 s).
async fn settled_bcrypt_runs(proxy: &Proxy) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = -1.0;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        let runs = proxy.metric("regcache_auth_bcrypt_runs_total").await;
        if runs != last {
            (last, since) = (runs, Instant::now());
        } else if since.elapsed() > Duration::from_millis(1500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_whose_clients_left_are_never_verified() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // A slower hash, so the queue is long when the clients leave.
    let hash = tokio::task::block_in_place(|| bcrypt::hash("pw-alice", COST + 1).unwrap());
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let server = format!(
        "[server.auth]\nhtpasswd_file = \"{}\"\n",
        htpasswd.display()
    );
    let proxy = Proxy::start_server(&fake.url(), &server).await;

    // 30 clients, each from its own address, send a wrong password and leave after 100 ms.
    const CLIENTS: usize = 30;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = proxy.addr;
            let from = IpAddr::from([127, 0, 0, 10 + i as u8]);
            tokio::spawn(async move {
                let wrong = basic("alice", &format!("wrong-{i}"));
                login(addr, from, &wrong, Duration::from_millis(100)).await
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    // Whatever they queued must not stand in front of the next login.
    let started = Instant::now();
    let good = basic("alice", "pw-alice");
    let from = "127.0.0.2".parse().unwrap();
    let status = login(proxy.addr, from, &good, Duration::from_secs(30)).await;
    let took = started.elapsed();
    let runs = settled_bcrypt_runs(&proxy).await;
    eprintln!(
        "login_flood: {CLIENTS} clients left while waiting; the next valid login: {status} in \
         {} ms; bcrypt ran {runs} times in all",
        took.as_millis()
    );
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        runs <= 8.0,
        "bcrypt ran {runs} times for {CLIENTS} clients that left"
    );
}
