//! Redirects to the bucket, off unless `bucket.redirect_min_bytes` is set: a large blob
//! that only the bucket holds is answered with a `307` to a presigned GET URL, so its
//! bytes go from the bucket to the client without passing through a replica. Clients must
//! reach the bucket; the URL is short-lived and the redirect never cached.

use std::time::Duration;

use http::Method;
use object_store::signer::Signer;
use url::Url;

use super::Bucket;
use crate::oci::Digest;
use crate::store::ObjectKey;

/// How long a presigned URL works: enough to start a pull, short enough not to leak far.
const URL_LIFETIME: Duration = Duration::from_secs(600);

impl Bucket {
    /// Whether a blob of `len` bytes in the bucket is redirected to.
    pub fn redirects(&self, len: u64) -> bool {
        self.redirect_min_bytes.is_some_and(|min| len >= min)
    }

    /// Whether redirects are on at all.
    pub fn redirecting(&self) -> bool {
        self.redirect_min_bytes.is_some()
    }

    /// The length of blob `digest` in the bucket, if it is there.
    pub async fn blob_len(&self, digest: &Digest) -> Option<u64> {
        let path = self.object(&ObjectKey::blob(digest));
        self.head("head_blob", &path).await
    }

    /// A presigned GET URL for blob `digest`.
    pub async fn presigned(&self, digest: &Digest) -> Option<Url> {
        let path = self.object(&ObjectKey::blob(digest));
        match self
            .store
            .signed_url(Method::GET, &path, URL_LIFETIME)
            .await
        {
            Ok(url) => {
                self.count("redirect", "ok");
                Some(url)
            }
            Err(e) => {
                self.failed("redirect");
                tracing::warn!(bucket = %self.name, %digest, error = %e, "presigning a blob URL failed");
                None
            }
        }
    }
}
