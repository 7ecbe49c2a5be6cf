//! Hostile and malformed requests: each gets its own error (with an OCI body where it is
//! a registry answer) while another client's slow transfer goes on undisturbed.

use std::time::Duration;

use crate::support::fake::{FakeRegistry, Fault};
use crate::support::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw request bytes and returns the status line's code and the whole answer.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_errors_and_do_not_disturb_a_transfer() {
    let fake = FakeRegistry::start().await;
    let blob: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
    let digest = fake.add_blob(blob.clone());
    fake.set_fault(&digest, Fault::Slow(Duration::from_millis(20)));
    let other = fake.add_blob(vec![1u8; 1000]);
    let proxy = Proxy::start(&fake.url()).await;

    let url = proxy.url(&format!("/v2/team/app/blobs/{digest}"));
    let transfer = tokio::spawn(async move {
        let response = reqwest::get(url).await.unwrap();
        response.bytes().await.unwrap().to_vec()
    });

    let long_name = "a/".repeat(200) + "b";
    let blob_path = format!("/v2/a/blobs/{other}");
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "dot segments",
            get("/v2/../../etc/passwd/manifests/x", ""),
            404,
            Some("NAME_UNKNOWN"),
        ),
        (
            "encoded slash",
            get("/v2/a%2Fb/manifests/latest", ""),
            400,
            Some("NAME_INVALID"),
        ),
        (
            "overlong name",
            get(&format!("/v2/{long_name}/manifests/latest"), ""),
            0,
            None,
        ),
        (
            "invalid digest",
            get("/v2/a/blobs/sha256:zz", ""),
            400,
            Some("DIGEST_INVALID"),
        ),
        (
            "invalid tag",
            get("/v2/a/manifests/-bad", ""),
            404,
            Some("MANIFEST_UNKNOWN"),
        ),
        (
            "invalid range",
            get(&blob_path, "range: bytes=oops\r\n"),
            416,
            Some("RANGE_INVALID"),
        ),
        (
            "unknown method",
            b"BREW /v2/a/manifests/latest HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                .to_vec(),
            405,
            Some("UNSUPPORTED"),
        ),
        (
            "oversized header",
            get("/v2/", &format!("x-big: {}\r\n", "z".repeat(100 * 1024))),
            431,
            None,
        ),
        (
            "garbage",
            b"\x16\x03\x01\x00\xff\r\n\r\n".to_vec(),
            400,
            None,
        ),
    ];
    for (what, request, want, code) in cases {
        let (status, answer) = raw(proxy.addr, &request).await;
        if want == 0 {
            assert!((400..500).contains(&status), "{what}: {answer}");
        } else {
            assert_eq!(status, want, "{what}: {answer}");
        }
        if let Some(code) = code {
            assert!(answer.contains(code), "{what}: expected {code} in {answer}");
        }
    }

    let got = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("the transfer finishes")
        .unwrap();
    assert_eq!(got, blob, "the other client's transfer is intact");
}
