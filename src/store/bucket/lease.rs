//! Fill leases: a small create-only object, `v1/leases/<alg>/<hex>`, naming the replica
//! that is fetching a blob from upstream. Replicas normally agree on a blob's owner
//! without it; the lease covers the moments they do not (a member joining, a death seen by
//! some replicas first): a replica about to go upstream that finds another's lease streams
//! from that replica instead. The bucket's `If-None-Match: *` makes exactly one claim win.
//!
//! A lease is removed once its blob is in the bucket (or its fill failed). One left by a
//! replica that died is ignored after [`STALE_AFTER`]; before that, the replica that finds
//! its holder unreachable goes upstream without a lease.

use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::Bucket;
use crate::oci::Digest;
use crate::store::files::{unix_millis, LAYOUT_VERSION};

/// A lease this old was left by a replica that died mid-fill; longer than any fill.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// The outcome of claiming a blob's fill.
pub enum Claim {
    /// This replica fills; the lease goes when this is dropped.
    Taken(Lease),
    /// Another replica fills: its URL, as it wrote it.
    HeldBy(String),
    /// The bucket could not say: fill without a lease.
    Unknown,
}

/// A held lease; dropping it removes the object (in the background).
pub struct Lease {
    bucket: Bucket,
    path: Path,
}

impl Bucket {
    fn lease_path(&self, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{LAYOUT_VERSION}/leases/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Claims the upstream fill of `digest` for `holder` (this replica's URL).
    pub async fn claim(&self, digest: &Digest, holder: &str) -> Claim {
        let path = self.lease_path(digest);
        // Twice at most: once more after removing a stale lease.
        for _ in 0..2 {
            if !self.usable("lease") {
                return Claim::Unknown;
            }
            let record = format!("{holder}\n{}\n", unix_millis());
            let put = self
                .store
                .put_opts(&path, PutPayload::from(record), PutMode::Create.into())
                .await;
            match put {
                Ok(_) => {
                    self.count("lease", "taken");
                    let (bucket, path) = (self.clone(), path);
                    return Claim::Taken(Lease { bucket, path });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    self.failed("lease");
                    tracing::warn!(bucket = %self.name, %digest, error = %e, "claiming a fill lease failed");
                    return Claim::Unknown;
                }
            }
            match self.read_lease(&path).await {
                Some((held_by, since)) if unix_millis().saturating_sub(since) < stale_ms() => {
                    self.count("lease", "held");
                    return Claim::HeldBy(held_by);
                }
                Some(_) => {
                    tracing::info!(bucket = %self.name, %digest, "removing a stale fill lease");
                    let _ = self.store.delete(&path).await;
                }
                // Removed between the put and the read: its fill ended; claim again.
                None => {}
            }
        }
        Claim::Unknown
    }

    /// The holder and the claim time of the lease at `path`.
    async fn read_lease(&self, path: &Path) -> Option<(String, u64)> {
        let body = self.store.get(path).await.ok()?.bytes().await.ok()?;
        let text = std::str::from_utf8(&body).ok()?;
        let mut lines = text.lines();
        let holder = lines.next()?.to_string();
        let since = lines.next()?.parse().ok()?;
        Some((holder, since))
    }
}

fn stale_ms() -> u64 {
    STALE_AFTER.as_millis() as u64
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (bucket, path) = (self.bucket.clone(), std::mem::take(&mut self.path));
        runtime.spawn(async move {
            if let Err(e) = bucket.store.delete(&path).await {
                tracing::debug!(bucket = %bucket.name, %path, error = %e, "removing a fill lease failed; it goes stale");
            }
        });
    }
}
