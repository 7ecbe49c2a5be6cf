//! Repository membership shared through the bucket: an empty object
//! `v1/members/<upstream>/<repository>/<alg>/<hex>` says upstream confirmed the digest
//! in that repository (its manifest referenced it, or a HEAD under that name answered).
//! A load balancer sends a pull's manifest to one replica and its blobs to others; those
//! find the record here instead of asking upstream again. Only replicas write them, and
//! only after upstream's word, so they are as trustworthy as a replica's own records.

use object_store::path::Path;
use object_store::PutPayload;

use super::Bucket;
use crate::oci::{Digest, RepoName};
use crate::store::files::LAYOUT_VERSION;

impl Bucket {
    fn member_path(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{LAYOUT_VERSION}/members/{upstream}/{repo}/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Whether some replica recorded `digest` as a member of `repo` on `upstream`.
    pub async fn is_member(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> bool {
        let path = self.member_path(upstream, repo, digest);
        self.head("head_member", &path).await.is_some()
    }

    /// Records `digests` as members of `repo` on `upstream` (create-only: what is there
    /// stays). Stops at the first failure; the bucket is then paused anyway.
    pub async fn record_members(&self, upstream: &str, repo: &RepoName, digests: &[Digest]) {
        for digest in digests {
            let path = self.member_path(upstream, repo, digest);
            if !self.create(&path, PutPayload::new(), "put_member").await {
                return;
            }
        }
    }
}
