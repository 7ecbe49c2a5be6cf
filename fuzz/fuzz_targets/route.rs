//! Request paths: parsing never panics, and what parses names only valid parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regcache::oci::{route, Route};

fuzz_target!(|path: &str| {
    let Ok(parsed) = route::parse(path) else {
        return;
    };
    // Every name and reference a route holds must survive its own round trip.
    let name = match &parsed {
        Route::Base => return,
        Route::Manifest { name, reference } => {
            let again: regcache::oci::Reference = reference.to_string().parse().unwrap();
            assert_eq!(&again, reference);
            name
        }
        Route::Blob { name, digest } | Route::Referrers { name, digest } => {
            let again: regcache::oci::Digest = digest.to_string().parse().unwrap();
            assert_eq!(&again, digest);
            name
        }
        Route::Tags { name } | Route::Upload { name } => name,
    };
    let again: regcache::oci::RepoName = name.to_string().parse().unwrap();
    assert_eq!(&again, name);
    assert!(!name.to_string().split('/').any(|s| s == ".." || s == "."));
});
