//! `WWW-Authenticate` values from upstream: parsing never panics or loops.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &str| {
    let _ = regcache::oci::parse_challenges(value);
});
