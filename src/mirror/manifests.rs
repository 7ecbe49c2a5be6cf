//! Manifests: by digest from the cache when held, by tag through the tag's freshness.
//!
//! A tag within its TTL (or, offline, any known tag) is answered locally. After it, a `HEAD` upstream (which Docker Hub
//! does not count as a pull) revalidates it, and a `GET` goes upstream only for a digest
//! regcache does not hold. Every manifest is verified against its digest before it is stored.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method};

use super::tags::TagEntry;
use super::Mirror;
use crate::error::{Error, Result, UpstreamError};
use crate::metrics::Outcome;
use crate::oci::{self, Accept, Algorithm, Digest, ErrorCode, Reference, Tag};
use crate::store::memory::{Entry, Key};
use crate::store::{Held, ObjectKey};
use crate::upstream::{classify, Resource, Target, MAX_MANIFEST_BYTES};

/// A manifest answer. `bytes` is `None` only for a HEAD answered from upstream's headers.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: Arc<str>,
    pub len: u64,
    pub bytes: Option<Bytes>,
    pub outcome: Outcome,
    /// Served from the cache because upstream failed while revalidating the tag.
    pub stale: bool,
}

impl Mirror {
    /// Resolves a manifest request. `want_body` is false for HEAD, which then never makes
    /// regcache download a manifest it does not hold.
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &Accept,
        want_body: bool,
    ) -> Result<Manifest> {
        let found = match reference {
            Reference::Digest(digest) => {
                self.manifest_by_digest(target, digest, accept, want_body)
                    .await?
            }
            Reference::Tag(tag) => match self.tag_from_owner(target, tag, accept, want_body).await?
            {
                Some(found) => found,
                // The tag's owner answering a replica's HEAD holds the manifest after: the
                // replica GETs it next unless it holds it, and the tag is then confirmed.
                None => {
                    let want_body = want_body || target.hops > 0;
                    self.manifest_by_tag(target, tag, accept, want_body).await?
                }
            },
        };
        if !accept.accepts(&found.media_type) {
            return Err(Error::not_found(
                ErrorCode::ManifestUnknown,
                format!(
                    "the manifest is a {}, which the request's Accept header does not allow",
                    found.media_type
                ),
            ));
        }
        self.note_manifest(target, &found);
        Ok(found)
    }

    async fn manifest_by_digest(
        &self,
        target: &Target,
        digest: &Digest,
        accept: &Accept,
        want_body: bool,
    ) -> Result<Manifest> {
        if let Some(found) = self.held_manifest(target, digest).await {
            // Held, but perhaps from another repository: served only once it is this one's.
            self.ensure_member(target, digest, Some(&accept.header_value()))
                .await?;
            return Ok(found);
        }
        let path = Resource::Manifest(digest);
        // One fetch per digest at a time: those who waited find it held.
        let _turn = self.flights.enter(format!("manifest\n{digest}")).await;
        if let Some(found) = self.held_manifest(target, digest).await {
            self.ensure_member(target, digest, Some(&accept.header_value()))
                .await?;
            return Ok(found);
        }
        if !want_body {
            if let Some(found) = self.head_upstream(target, path, accept).await? {
                if found.digest == *digest {
                    return Ok(found);
                }
            }
        }
        let fetched = self.fetch(target, path, accept, Some(digest)).await?;
        Ok(fetched)
    }

    async fn manifest_by_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &Accept,
        want_body: bool,
    ) -> Result<Manifest> {
        if let (Some(found), _) = self.known_tag(target, tag, accept).await {
            return Ok(found);
        }
        // One revalidation per tag at a time: those who waited find the first one's answer.
        let key = format!("tag\n{}\n{}\n{tag}", target.upstream.name(), target.name);
        let _turn = self.flights.enter(key).await;
        let (found, known) = self.known_tag(target, tag, accept).await;
        if let Some(found) = found {
            return Ok(found);
        }
        let answer = self
            .revalidate_tag(target, tag, accept, want_body, known.is_some())
            .await;
        let config = target.upstream.config();
        match (answer, known) {
            (Err(e), Some(entry)) if e.is_upstream_unavailable() => {
                self.serve_stale(target, &entry, e).await
            }
            // Upstream deleted the tag: kept only when the operator asked for it.
            (Err(e), Some(entry)) if config.serve_stale_on_not_found && e.is_not_found() => {
                self.serve_stale(target, &entry, e).await
            }
            (answer, _) => answer,
        }
    }

    /// The tag's answer when it can be given without asking upstream (fresh, or offline
    /// whatever its age), and the last known entry either way.
    async fn known_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &Accept,
    ) -> (Option<Manifest>, Option<TagEntry>) {
        let config = target.upstream.config();
        let known = self
            .tags
            .get(
                self.store(),
                target.upstream.name(),
                &target.name,
                tag,
                config.tag_ttl,
            )
            .await
            .filter(|entry| accept.accepts(&entry.media_type));
        // Offline, a known tag is served whatever its age: upstream cannot be asked.
        let usable = known.as_ref().filter(|e| e.is_fresh() || config.offline);
        let found = match usable {
            Some(entry) => self.held_manifest(target, &entry.digest).await,
            None => None,
        };
        (found, known)
    }

    /// Upstream failed while revalidating a tag regcache knows: the last answer is served,
    /// marked stale, within `stale_if_error` after it stopped being fresh.
    async fn serve_stale(&self, target: &Target, entry: &TagEntry, e: Error) -> Result<Manifest> {
        let window = target.upstream.config().stale_if_error;
        if !entry.servable_stale(window) {
            return Err(e);
        }
        let Some(mut found) = self.held_manifest(target, &entry.digest).await else {
            return Err(e);
        };
        let upstream = target.upstream.name();
        tracing::warn!(%upstream, digest = %entry.digest, error = %e, "upstream did not confirm the tag; serving the cached answer stale");
        self.count_stale(upstream);
        found.stale = true;
        Ok(found)
    }

    /// Asks upstream what a tag points at now (HEAD first when regcache may hold the answer),
    /// fetching the manifest only when regcache does not hold it.
    async fn revalidate_tag(
        &self,
        target: &Target,
        tag: &Tag,
        accept: &Accept,
        want_body: bool,
        known: bool,
    ) -> Result<Manifest> {
        let path = Resource::TaggedManifest(tag);
        // Stale, unknown, or in a type this client does not take: ask upstream cheaply first.
        // Where pulls are budgeted, always: the digest may be held, and a HEAD is free.
        if known || !want_body || target.upstream.budgeted() {
            if let Some(head) = self.head_upstream(target, path, accept).await? {
                if let Some(found) = self.held_manifest(target, &head.digest).await {
                    self.confirm_tag(target, tag, &found);
                    return Ok(found);
                }
                if !want_body {
                    return Ok(head);
                }
                // Fetch by digest so a tag moving meanwhile cannot mix two answers.
                let fetched = self
                    .fetch(
                        target,
                        Resource::Manifest(&head.digest),
                        accept,
                        Some(&head.digest),
                    )
                    .await?;
                self.confirm_tag(target, tag, &fetched);
                return Ok(fetched);
            }
        }
        let fetched = self.fetch(target, path, accept, None).await?;
        self.confirm_tag(target, tag, &fetched);
        Ok(fetched)
    }

    /// Records that upstream says `tag` points at `manifest` now: fresh for the upstream's
    /// tag TTL.
    pub(super) fn confirm_tag(&self, target: &Target, tag: &Tag, manifest: &Manifest) {
        let ttl = target.upstream.config().tag_ttl;
        self.tags.confirm(
            self.disk(),
            target.upstream.name(),
            &target.name,
            tag,
            &manifest.digest,
            &manifest.media_type,
            ttl,
        );
    }

    /// A manifest held that `target`'s trust domain delivered (see [`Mirror::trusted`]):
    /// one that only another domain delivered is fetched again from this upstream, so a
    /// hostile upstream cannot name (or answer a tag with) another one's digest and read it.
    pub(super) async fn held_manifest(&self, target: &Target, digest: &Digest) -> Option<Manifest> {
        if !self.trusted(target, digest).await {
            return None;
        }
        self.stored_manifest(digest).await
    }

    /// A manifest held in memory or on disk.
    async fn stored_manifest(&self, digest: &Digest) -> Option<Manifest> {
        let (held, tier) = self.ctx.tiers.find(&ObjectKey::manifest(digest)).await?;
        let Held::Bytes(entry) = held else {
            return None;
        };
        Some(manifest(digest, entry, tier.into()))
    }

    /// Counts an answer served stale because upstream failed (tags and listings alike).
    pub(super) fn count_stale(&self, upstream: &str) {
        self.ctx
            .metrics
            .stale_serves
            .with_label_values(&[upstream])
            .inc();
    }

    /// Asks upstream for a manifest's digest and type without its body. `None` when upstream's
    /// answer lacks the digest (then only a GET can tell).
    async fn head_upstream(
        &self,
        target: &Target,
        resource: Resource<'_>,
        accept: &Accept,
    ) -> Result<Option<Manifest>> {
        let response = target
            .upstream
            .send(
                Method::HEAD,
                &target.name,
                resource,
                Some(&accept.header_value()),
                target.priority,
            )
            .await?;
        let headers = response.headers();
        let Some(digest) = header_digest(headers) else {
            return Ok(None);
        };
        Ok(Some(Manifest {
            media_type: content_type(headers)
                .unwrap_or(oci::media::OCI_MANIFEST)
                .into(),
            len: content_length(headers).unwrap_or(0),
            digest,
            bytes: None,
            outcome: Outcome::Miss,
            stale: false,
        }))
    }

    /// GETs a manifest, verifies it (against `expected`, or else upstream's digest header),
    /// and stores it.
    async fn fetch(
        &self,
        target: &Target,
        resource: Resource<'_>,
        accept: &Accept,
        expected: Option<&Digest>,
    ) -> Result<Manifest> {
        let mut response = target
            .upstream
            .send(
                Method::GET,
                &target.name,
                resource,
                Some(&accept.header_value()),
                target.priority,
            )
            .await?;
        let found = self.take_manifest(target, &mut response, expected).await?;
        target.upstream.count_bytes(found.len);
        Ok(found)
    }

    /// Reads a manifest answer (from upstream, or from the replica that owns its tag),
    /// verifies it (against `expected`, or else the answer's digest header) and stores it.
    pub(super) async fn take_manifest(
        &self,
        target: &Target,
        response: &mut reqwest::Response,
        expected: Option<&Digest>,
    ) -> Result<Manifest> {
        let upstream = &target.upstream;
        let too_large = || {
            upstream.error(UpstreamError::Invalid(format!(
                "manifest larger than {MAX_MANIFEST_BYTES} bytes"
            )))
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(too_large());
        }
        let headers = response.headers().clone();
        let mut body = BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| upstream.error(classify(&e)))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let bytes = body.freeze();
        let claimed = expected.cloned().or_else(|| header_digest(&headers));
        let algorithm = claimed
            .as_ref()
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let actual = Digest::of(algorithm, &bytes);
        if let Some(claimed) = claimed.filter(|c| *c != actual) {
            self.ctx
                .metrics
                .digest_mismatches
                .with_label_values(&["manifest"])
                .inc();
            let cause = UpstreamError::DigestMismatch {
                expected: claimed,
                actual,
            };
            return Err(upstream.error(cause));
        }
        // Read strictly by its type before anything trusts what it references.
        let document = oci::manifest::read(content_type(&headers), &bytes).map_err(|e| {
            upstream.error(UpstreamError::Invalid(format!(
                "manifest {actual} refused: {e}"
            )))
        })?;
        let media_type: Arc<str> = document.media_type.into();
        self.put_manifest(&actual, &media_type, &bytes, upstream.name());
        let domain = &upstream.config().trust_domain;
        self.members.record_delivered(domain, &actual);
        if let Some(bucket) = &self.ctx.tiers.bucket {
            let (bucket, domain) = (bucket.clone(), domain.clone());
            let (digest, media_type, bytes) = (actual.clone(), media_type.clone(), bytes.clone());
            tokio::spawn(async move {
                bucket.put_manifest(&digest, &media_type, &bytes).await;
                bucket.mark_delivered(&domain, &digest).await;
            });
        }
        Ok(Manifest {
            len: bytes.len() as u64,
            digest: actual,
            media_type,
            bytes: Some(bytes),
            outcome: Outcome::Miss,
            stale: false,
        })
    }

    /// Stores a verified manifest: in memory now, on disk in the background.
    fn put_manifest(&self, digest: &Digest, media_type: &Arc<str>, bytes: &Bytes, origin: &str) {
        let entry = Entry {
            bytes: bytes.clone(),
            media_type: Some(media_type.clone()),
        };
        self.ctx
            .tiers
            .memory
            .insert(Key::Manifest(digest.clone()), entry);
        let disk = self.ctx.tiers.disk.clone();
        let (d, m, b) = (digest.clone(), media_type.clone(), bytes.clone());
        let origin = origin.to_string();
        self.ctx.store.write_behind(move || {
            // Verified before it was served; `land_bytes` checks again for the store.
            let _ = disk.land_bytes(&ObjectKey::manifest(&d), Some(&m), &b, &origin);
        });
    }
}

fn manifest(digest: &Digest, entry: Entry, outcome: Outcome) -> Manifest {
    Manifest {
        digest: digest.clone(),
        media_type: entry
            .media_type
            .unwrap_or_else(|| oci::media::OCI_MANIFEST.into()),
        len: entry.bytes.len() as u64,
        bytes: Some(entry.bytes),
        outcome,
        stale: false,
    }
}

pub(super) fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// reqwest reports a HEAD answer's body size (0), not the header.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

pub(super) fn content_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next()?.trim();
    // Some registries label manifests generically; the body's mediaType then decides.
    let generic = [
        "",
        "application/json",
        "text/plain",
        "application/octet-stream",
    ];
    (!generic.contains(&media_type)).then_some(media_type)
}
