//! Tags answered by the replica that owns them. Each (upstream, repository, tag) has an
//! owner by the same rendezvous hashing as blobs, and the other replicas ask it what the tag
//! points at, so only the owner revalidates upstream: the requests Docker Hub counts are
//! spent once per tag for the whole cluster, not once per replica.
//!
//! A replica asks with a `HEAD` (the owner answers from its fresh record or revalidates)
//! and serves the digest from its own tiers when it holds it; otherwise it GETs the
//! manifest by digest from the owner and verifies it like an upstream answer. When the
//! owner fails, the replica revalidates the tag itself.

use http::{Method, StatusCode};

use super::manifests::{content_length, content_type, header_digest, Manifest};
use super::Mirror;
use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::oci::{self, Accept, ErrorCode, Tag};
use crate::upstream::Target;

impl Mirror {
    /// The tag's answer from its owner replica. `None`: this replica owns the tag, there
    /// is no cluster, the request was forwarded already, or the owner failed.
    pub(super) async fn tag_from_owner(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &Accept,
        want_body: bool,
    ) -> Result<Option<Manifest>> {
        let Some(cluster) = self.cluster().filter(|_| target.hops == 0) else {
            return Ok(None);
        };
        let upstream = target.upstream.name();
        let key = format!("tag\n{upstream}\n{}\n{tag}", target.name);
        let Some(owner) = cluster.owner_of(&key) else {
            return Ok(None);
        };
        let at = (upstream, &target.name);
        let accept_value = accept.header_value();
        let head = cluster
            .fetch_manifest(&owner, Method::HEAD, at, tag.as_str(), &accept_value)
            .await;
        let failed = |why: String| {
            cluster.count("tag_owner", "fallback");
            cluster.mark_down(&owner);
            tracing::warn!(%owner, %tag, %why, "the tag's owner replica failed; revalidating here");
            Ok(None)
        };
        let head = match head {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                cluster.count("tag_owner", "not_found");
                return Err(Error::not_found(
                    ErrorCode::ManifestUnknown,
                    format!(
                        "manifest unknown: {}:{tag} (the tag's owner replica asked)",
                        target.name
                    ),
                ));
            }
            Ok(r) => return failed(r.status().to_string()),
            Err(e) => return failed(e.to_string()),
        };
        let headers = head.headers();
        let Some(digest) = header_digest(headers) else {
            return failed("no Docker-Content-Digest in its answer".into());
        };
        cluster.count("tag_owner", "ok");
        let answered = Manifest {
            media_type: content_type(headers)
                .unwrap_or(oci::media::OCI_MANIFEST)
                .into(),
            len: content_length(headers).unwrap_or(0),
            digest: digest.clone(),
            bytes: None,
            outcome: Outcome::Miss,
            stale: false,
        };
        if let Some(found) = self.held_manifest(target, &digest).await {
            self.confirm_tag(target, tag, &found);
            return Ok(Some(found));
        }
        if !want_body {
            return Ok(Some(answered));
        }
        let get = cluster
            .fetch_manifest(&owner, Method::GET, at, &digest.to_string(), &accept_value)
            .await;
        let mut response = match get {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return failed(r.status().to_string()),
            Err(e) => return failed(e.to_string()),
        };
        let fetched = self
            .take_manifest(target, &mut response, Some(&digest))
            .await?;
        self.confirm_tag(target, tag, &fetched);
        Ok(Some(fetched))
    }
}
