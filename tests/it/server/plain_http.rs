//! Plain HTTP/1.1 on a raw socket: the path that answers simple requests itself (and
//! sends stored blobs with sendfile) must frame every response exactly, keep pipelined
//! requests in order, and hand a connection to hyper at the first request it does not
//! take, without losing a byte.

use std::time::Duration;

use crate::support::fake::{sha256, FakeRegistry, Fault};
use crate::support::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off the socket: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response; `head_only` for the answer to a HEAD. Framing is checked by
/// reading exactly `content-length` bytes, or the chunks up to the last one.
async fn read_answer(socket: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Answer {
    let (status, headers, used) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(used) = parsed.parse(buf).unwrap() {
            let headers = parsed
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8(h.value.to_vec()).unwrap();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect::<Vec<_>>();
            break (parsed.code.unwrap(), headers, used);
        }
        fill(socket, buf).await;
    };
    buf.drain(..used);
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only {
        return answer;
    }
    if let Some(len) = answer.header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            fill(socket, buf).await;
        }
        answer.body = buf.drain(..len).collect();
    } else {
        assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(socket, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(socket, buf).await;
            }
            answer
                .body
                .extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    answer
}

async fn fill(socket: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 256 << 10];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert!(n > 0, "connection closed mid-answer");
    buf.extend_from_slice(&chunk[..n]);
}

/// A blob too large for the memory tier, so a hit comes from disk.
fn big_blob() -> Vec<u8> {
    (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_with_exact_framing() {
    let fake = FakeRegistry::start().await;
    let bytes = big_blob();
    let digest = fake.add_blob(bytes.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let path = format!("/v2/a/blobs/{digest}");
    // The first GET fills the cache; the ones after it are disk hits.
    let warm = reqwest::get(proxy.url(&path)).await.unwrap();
    assert_eq!(warm.bytes().await.unwrap(), bytes);
    proxy.settled().await;

    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\n\r\n\
         GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=1-\r\n\r\n"
    );
    socket.write_all(requests.as_bytes()).await.unwrap();
    let mut buf = Vec::new();

    let whole = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(whole.status, 200);
    assert_eq!(sha256(&whole.body), digest);
    assert_eq!(whole.header("docker-content-digest"), Some(digest.as_str()));
    assert!(whole.header("date").is_some());

    let head = read_answer(&mut socket, &mut buf, true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("6291456"));

    let range = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &bytes[100..200]);
    assert_eq!(range.header("content-range"), Some("bytes 100-199/6291456"));

    let base = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!((base.status, base.body.as_slice()), (200, &b"{}"[..]));

    let rest = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(rest.status, 206);
    assert_eq!(rest.body, &bytes[1..]);
    assert!(buf.is_empty(), "nothing after the last answer");

    // Two whole bodies and two ranges went out from disk, counted once each.
    let from_disk = proxy
        .metric("regcache_served_bytes_total{source=\"disk\"}")
        .await;
    assert_eq!(from_disk as usize, 2 * bytes.len() - 1 + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_it_does_not_take_goes_to_hyper_with_the_rest_of_the_connection() {
    let fake = FakeRegistry::start().await;
    let bytes = big_blob();
    let digest = fake.add_blob(bytes.clone());
    let proxy = Proxy::start(&fake.url()).await;
    let path = format!("/v2/a/blobs/{digest}");
    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let requests = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         GET {path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(requests.as_bytes()).await.unwrap();
    let mut buf = Vec::new();

    let first = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(first.status, 200);
    assert_eq!(sha256(&first.body), digest);

    let post = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(post.status, 405);
    let error: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(error["errors"][0]["code"], "UNSUPPORTED");

    let range = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &bytes[..10]);

    let last = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.body, bytes);
    let mut rest = Vec::new();
    socket.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty() && buf.is_empty(),
        "closed after Connection: close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_without_a_length_is_chunked_and_a_corrupt_one_never_ends_cleanly() {
    let fake = FakeRegistry::start().await;
    let bytes = big_blob();
    let digest = fake.add_blob(bytes.clone());
    fake.set_fault(&digest, Fault::NoLength);
    let mut corrupt_bytes = big_blob();
    corrupt_bytes[0] = 1;
    let corrupt = fake.add_blob(corrupt_bytes);
    fake.set_fault(&corrupt, Fault::Corrupt);
    let proxy = Proxy::start(&fake.url()).await;

    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /v2/a/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut socket, &mut buf, false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, bytes);

    let mut socket = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /v2/a/blobs/{corrupt} HTTP/1.1\r\nHost: x\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut received));
    let _ = read.await.expect("the connection ends");
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        received.len() - head_end < bytes.len(),
        "the client must not receive the whole announced body"
    );
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = "[[upstream]]\nurl = \"http://127.0.0.1:9\"\n";
    let mut plain =
        crate::support::regcache::Regcache::start_with_config(upstream, &dir.path().join("plain"));
    // Nothing listens on the upstream's port: the daemon says so once at startup.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !plain
        .log()
        .contains("the default upstream is not reachable")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning: {}",
            plain.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    plain.stop();
    let log = plain.log();
    assert!(log.contains("regcache listening"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file: {log:?}"
    );

    let config = format!("log_format = \"json\"\n{upstream}");
    let mut json =
        crate::support::regcache::Regcache::start_with_config(&config, &dir.path().join("json"));
    json.stop();
    let log = json.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let listening = lines
        .iter()
        .find(|l| l["message"] == "regcache listening")
        .expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["addr"].is_string(), "{listening}");
}
