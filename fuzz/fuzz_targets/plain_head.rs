//! Request heads as the plain HTTP/1.1 path reads them off the socket (the first byte
//! picks `server.max_headers`): parsing never panics, a complete head lies within the
//! bytes read, and it is the same head without the bytes that follow it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::server::{parse_plain_head, PlainHead};

fuzz_target!(|data: &[u8]| {
    let Some((&max_headers, bytes)) = data.split_first() else {
        return;
    };
    let max_headers = usize::from(max_headers);
    if let PlainHead::Simple { request, len, .. } = parse_plain_head(bytes, max_headers) {
        assert!(len > 0 && len <= bytes.len());
        assert!(request.headers().len() <= max_headers);
        match parse_plain_head(&bytes[..len], max_headers) {
            PlainHead::Simple { len: alone, .. } => assert_eq!(alone, len),
            _ => panic!("the head alone parsed differently"),
        }
    }
});
