//! Shared test support. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod fake;
pub mod fake_ecr;
pub mod fake_images;
pub mod hub_limiter;
pub mod images;
pub mod proxy;
pub mod regcache;
pub mod registry;
pub mod scripted;
pub mod seaweed;
pub mod skopeo;
pub mod store;
pub mod throttle;
pub mod token_issuer;

/// A test whose prerequisite is missing here (`reason` says which) skips, saying so on
/// stderr. Under `tests/run.sh` (which installs the prerequisites and sets
/// `REGCACHE_REQUIRE_ALL=1`) it fails instead, so a skip never counts as a pass there.
pub fn skip(reason: &str) {
    if std::env::var_os("REGCACHE_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("prerequisite missing under REGCACHE_REQUIRE_ALL: {reason}");
    }
    eprintln!("SKIPPED (not a pass): {reason}");
}

/// `len` bytes of test content; different seeds give different content (and digests).
pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
