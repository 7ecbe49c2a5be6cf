//! `Range` headers: parsing never panics, and a parsed range is ordered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::oci::{parse_range, RangeSpec};

fuzz_target!(|value: &str| {
    if let Ok(RangeSpec::From {
        start,
        end: Some(end),
    }) = parse_range(value)
    {
        assert!(start <= end);
    }
});
