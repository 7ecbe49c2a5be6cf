//! One request head from the bytes read so far, parsed with httparse, when it is simple
//! enough for `plain` to answer: GET or HEAD, HTTP/1.1, no body, no upgrade, no `Expect`.
//! Anything else is `Other`, and hyper answers it, errors included.
//!
//! It faces the socket, so it promises, for any bytes: no panic; a `Simple` head lies
//! within them (`len` bytes) and is the same whatever follows it; a strict prefix of a
//! complete head is `Partial`. Property tests below and `fuzz/fuzz_targets/plain_head.rs`
//! hold it to that.

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

/// Headers looked at per request; a request with more goes to hyper, which applies
/// `server.max_headers` and answers 431 when it is over.
const MAX_HEADERS: usize = 64;

// Short-lived, on the stack: boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// A complete simple request, how many bytes its head took, and whether the client
    /// asked for the connection to close after it.
    Simple {
        request: Request<()>,
        len: usize,
        close: bool,
    },
    /// The head is not complete yet.
    Partial,
    /// Not a request this path answers.
    Other,
}

pub fn parse(buf: &[u8], max_headers: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers[..max_headers.min(MAX_HEADERS)]);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Head::Other,
    };
    if parsed.version != Some(1) {
        return Head::Other;
    }
    let Some(Ok(uri)) = parsed.path.map(Uri::try_from) else {
        return Head::Other;
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Head::Other;
        };
        map.append(name, value);
    }
    let Some(close) = simple(&map) else {
        return Head::Other;
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Head::Simple {
        request,
        len,
        close,
    }
}

/// `Some(close)` when nothing in the headers needs more than this path does: no body,
/// no upgrade, no `Expect`.
fn simple(headers: &HeaderMap) -> Option<bool> {
    if headers.contains_key(TRANSFER_ENCODING)
        || headers.contains_key(EXPECT)
        || headers.contains_key(UPGRADE)
    {
        return None;
    }
    for length in headers.get_all(CONTENT_LENGTH) {
        if length.as_bytes() != b"0" {
            return None;
        }
    }
    let mut close = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().ok()?.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                return None;
            }
        }
    }
    Some(close)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple_request(text: &str) -> (Request<()>, usize, bool) {
        match parse(text.as_bytes(), 100) {
            Head::Simple {
                request,
                len,
                close,
            } => (request, len, close),
            Head::Partial => panic!("partial: {text:?}"),
            Head::Other => panic!("other: {text:?}"),
        }
    }

    #[test]
    fn a_blob_get_is_simple_and_pipelined_bytes_stay() {
        let text = "GET /v2/a/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nGET /";
        let (request, len, close) = simple_request(text);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/v2/a/blobs/sha256:00");
        assert_eq!(request.headers()["range"], "bytes=0-1");
        assert_eq!(&text[len..], "GET /");
        assert!(!close);
        let (_, _, close) =
            simple_request("HEAD / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert!(close);
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for text in [
            "POST /v2/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text.as_bytes(), 100), Head::Other),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost:", 100),
            Head::Partial
        ));
        assert!(matches!(parse(b"", 100), Head::Partial));
        let many: String = (0..5).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse(text.as_bytes(), 4), Head::Other));
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// A request this path answers, as a client would write it.
    #[derive(Debug, Clone)]
    struct Sent {
        method: &'static str,
        target: String,
        headers: Vec<(String, String)>,
        close: bool,
    }

    impl Sent {
        fn bytes(&self) -> Vec<u8> {
            let mut text = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
            for (name, value) in &self.headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            if self.close {
                text.push_str("Connection: close\r\n");
            }
            text.push_str("\r\n");
            text.into_bytes()
        }
    }

    /// Headers that change how a request is handled; the generated ones avoid them.
    const SPECIAL: [&str; 5] = [
        "connection",
        "content-length",
        "expect",
        "transfer-encoding",
        "upgrade",
    ];

    fn sent() -> impl Strategy<Value = Sent> {
        let header = ("[a-z][a-z0-9-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?")
            .prop_filter("not a special header", |(name, _)| {
                !SPECIAL.contains(&name.as_str())
            });
        (
            prop_oneof![Just("GET"), Just("HEAD")],
            "/v2/[a-z0-9._/-]{0,40}(:[a-f0-9]{0,8})?(\\?ns=[a-z.]{1,12})?",
            proptest::collection::vec(header, 0..12),
            any::<bool>(),
        )
            .prop_map(|(method, target, headers, close)| Sent {
                method,
                target,
                headers,
                close,
            })
    }

    /// Bytes near a request head, so that inputs get past the request line.
    fn near_miss() -> impl Strategy<Value = Vec<u8>> {
        let line = "(GET|HEAD|POST|get) [ -~]{0,20} HTTP/1\\.[01x]\r?\n";
        let header = "[A-Za-z-]{0,12}:[ -~\t]{0,12}\r?\n";
        (
            line,
            proptest::collection::vec(header, 0..6),
            "(\r?\n)?[ -~]{0,8}",
        )
            .prop_map(|(line, headers, tail)| {
                format!("{line}{}{tail}", headers.concat()).into_bytes()
            })
    }

    /// Checks what `parse` promises for any input.
    fn promises(bytes: &[u8], max_headers: usize) -> Result<(), TestCaseError> {
        if let Head::Simple { request, len, .. } = parse(bytes, max_headers) {
            prop_assert!(len > 0 && len <= bytes.len());
            prop_assert!(matches!(*request.method(), Method::GET | Method::HEAD));
            prop_assert_eq!(request.version(), Version::HTTP_11);
            prop_assert!(request.headers().len() <= max_headers.min(MAX_HEADERS));
            let Head::Simple { len: alone, .. } = parse(&bytes[..len], max_headers) else {
                return Err(TestCaseError::fail("the head alone is not the same head"));
            };
            prop_assert_eq!(alone, len);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_bytes_keep_the_promises(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            max_headers in 0usize..80,
        ) {
            promises(&bytes, max_headers)?;
        }

        #[test]
        fn near_misses_keep_the_promises(bytes in near_miss(), max_headers in 0usize..8) {
            promises(&bytes, max_headers)?;
        }

        #[test]
        fn a_well_formed_request_round_trips(sent in sent(), pipelined in "[ -~\r\n]{0,40}") {
            let head = sent.bytes();
            let mut bytes = head.clone();
            bytes.extend_from_slice(pipelined.as_bytes());
            let Head::Simple { request, len, close } = parse(&bytes, 100) else {
                return Err(TestCaseError::fail(format!("not simple: {sent:?}")));
            };
            prop_assert_eq!(len, head.len());
            prop_assert_eq!(close, sent.close);
            prop_assert_eq!(request.method().as_str(), sent.method);
            prop_assert_eq!(request.uri().to_string(), sent.target);
            let got: Vec<(String, String)> = request
                .headers()
                .iter()
                .filter(|(name, _)| *name != CONNECTION)
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            // A HeaderMap groups the values of a repeated name; compare as sets per name.
            let mut want = sent.headers.clone();
            let mut got_sorted = got.clone();
            want.sort();
            got_sorted.sort();
            prop_assert_eq!(got_sorted, want);
        }

        #[test]
        fn a_strict_prefix_of_a_head_is_partial(sent in sent(), cut in any::<proptest::sample::Index>()) {
            let head = sent.bytes();
            let cut = cut.index(head.len());
            prop_assert!(matches!(parse(&head[..cut], 100), Head::Partial), "{:?}", &head[..cut]);
        }
    }
}
