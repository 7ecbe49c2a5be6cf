//! `Accept` headers (one value per line): parsing and matching never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::oci::Accept;

fuzz_target!(|text: &str| {
    let accept = Accept::parse(text.lines());
    let _ = accept.accepts("application/vnd.oci.image.manifest.v1+json");
    let _ = accept.accepts(text);
});
