//! Blob sizes that manifests declared, per repository: a fill of a blob reached through a
//! manifest stops at that size, so an upstream cannot stream an endless body for it.
//!
//! Keyed by upstream and repository, as membership is: a manifest in one repository that
//! declares a wrong size for another repository's blob cuts only its own pulls short.
//! Memory only and bounded; a size forgotten (or never seen) leaves upstream's
//! `Content-Length` and `cache.max_blob_bytes` as the bounds.

use moka::sync::Cache;

use crate::oci::{Digest, RepoName};

/// About 200 bytes each.
const ENTRIES: u64 = 100_000;

#[derive(Clone)]
pub struct Declared(Cache<String, u64>);

impl Default for Declared {
    fn default() -> Declared {
        Declared(Cache::new(ENTRIES))
    }
}

fn key(upstream: &str, repo: &RepoName, digest: &Digest) -> String {
    format!("{upstream}\n{repo}\n{digest}")
}

impl Declared {
    pub fn record(&self, upstream: &str, repo: &RepoName, sizes: &[(Digest, u64)]) {
        for (digest, size) in sizes {
            self.0.insert(key(upstream, repo, digest), *size);
        }
    }

    pub fn get(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Option<u64> {
        self.0.get(&key(upstream, repo, digest))
    }
}
