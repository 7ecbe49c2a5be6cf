//! Digests, repository names, tags and references: parsing never panics, and whatever
//! parses prints back to a string that parses to the same value.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use regcache::oci::{Digest, Reference, RepoName, Tag};

fn round_trip<T: FromStr + Display + PartialEq + std::fmt::Debug>(text: &str) {
    if let Ok(value) = text.parse::<T>() {
        let again = value.to_string().parse::<T>().ok();
        assert_eq!(again.as_ref(), Some(&value), "{text:?}");
    }
}

fuzz_target!(|text: &str| {
    round_trip::<Digest>(text);
    round_trip::<RepoName>(text);
    round_trip::<Tag>(text);
    round_trip::<Reference>(text);
});
