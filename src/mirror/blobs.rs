//! Blob answers: the one place a blob request is decided. A GET gets an answer ready to
//! send (its length, outcome and bytes) once upstream's head has arrived and membership is
//! settled; a HEAD gets a length without any body being fetched; a prefetch waits for the
//! blob to be held. Where the bytes come from (memory, disk, a fill joined or started) and
//! how a fill progresses stay in here.

use std::sync::Arc;

use bytes::Bytes;

use http::header::CONTENT_LENGTH;
use http::Method;

use super::fill::{Fill, Joined, Phase};
use super::reader::BlobReader;
use super::{vanished, Mirror};
use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::oci::Digest;

use crate::store::{Held, ObjectKey, Tier};
use crate::upstream::{Resource, Target};
use url::Url;

/// A blob ready to send: what the response head needs, and its bytes.
pub struct BlobAnswer {
    /// The blob's length; `None` only for a fill whose upstream sent no length (then only
    /// the whole blob can be sent, to wherever the fill ends).
    pub total: Option<u64>,
    pub outcome: Outcome,
    source: BlobSource,
}

/// Bytes of a blob to send: in memory already, or read (from the store or a fill) as the
/// client takes them.
pub enum BlobBody {
    Bytes(Bytes),
    Reader(BlobReader),
}

impl BlobAnswer {
    /// The bytes `start..end` (end exclusive, `u64::MAX` for "to the end of the fill").
    pub fn body(self, start: u64, end: u64) -> BlobBody {
        match self.source {
            BlobSource::Held(Held::Bytes(entry), _) => {
                BlobBody::Bytes(entry.bytes.slice(start as usize..end as usize))
            }
            BlobSource::Held(Held::File { file, pin, .. }, _) => {
                BlobBody::Reader(BlobReader::stored(file, start, end).holding(pin))
            }
            BlobSource::Fill { fill, .. } => {
                let progress = fill.subscribe();
                BlobBody::Reader(BlobReader::filling(fill, progress, start, end))
            }
        }
    }
}

/// Where a blob's bytes will come from.
enum BlobSource {
    Held(Held, Tier),
    Fill { fill: Arc<Fill>, started: bool },
}

impl BlobSource {
    /// The blob's length, when known (a fill knows it once upstream's headers arrived).
    fn known_len(&self) -> Option<u64> {
        match self {
            BlobSource::Held(held, _) => Some(held.size()),
            BlobSource::Fill { fill, .. } => fill.subscribe().borrow().total,
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            BlobSource::Held(_, tier) => (*tier).into(),
            BlobSource::Fill { started: true, .. } => Outcome::Miss,
            BlobSource::Fill { started: false, .. } => Outcome::Coalesced,
        }
    }
}

impl Mirror {
    /// A GET of `digest` for `target`'s repository, answered once its length is known:
    /// held content at once, a fill once upstream's head arrived (and, for a `ranged`
    /// request when upstream sent no length, once the fill ended). A fill this request
    /// started is upstream's own answer for the repository, recorded as such.
    pub async fn blob_answer(
        &self,
        digest: &Digest,
        target: &Target,
        ranged: bool,
    ) -> Result<BlobAnswer> {
        let source = self.blob(digest, target).await?;
        let mut outcome = source.outcome();
        let total = match &source {
            BlobSource::Fill { fill, started } => {
                // A fill from the bucket needs the repository's membership; it is looked up
                // while the fill connects, before the bucket gets busy sending the body.
                let shared = *started && self.ctx.tiers.bucket.is_some();
                let member = async { shared && self.known_member(target, digest).await };
                let (total, member) = tokio::join!(fill_length(fill, ranged), member);
                let total = total?;
                let from_bucket = fill.subscribe().borrow().from_bucket;
                if *started && from_bucket {
                    // The bucket is not upstream's word for this repository.
                    outcome = Outcome::BucketHit;
                    if !member {
                        self.ensure_member(target, digest, None).await?;
                    }
                } else {
                    self.confirmed(target, digest);
                }
                total
            }
            held => held.known_len(),
        };
        Ok(BlobAnswer {
            total,
            outcome,
            source,
        })
    }

    /// A HEAD of `digest` for `target`'s repository: the length from the cache when the
    /// blob is held for the repository, else from upstream's HEAD (never a download), which
    /// then confirms it for the repository.
    pub async fn blob_head(
        &self,
        digest: &Digest,
        target: &Target,
    ) -> Result<(Option<u64>, Outcome)> {
        if self.is_member(target, digest).await {
            if let Some(source) = self.stored_blob(digest).await {
                return Ok((source.known_len(), source.outcome()));
            }
        }
        let answer = target
            .upstream
            .send(
                Method::HEAD,
                &target.name,
                Resource::Blob(digest),
                None,
                target.priority,
            )
            .await?;
        self.confirmed(target, digest);
        // reqwest reports a HEAD answer's body size (0), not the header.
        let len = answer
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Ok((len, Outcome::Miss))
    }

    /// Which tier holds `digest` and its length, promoting a small blob to memory: the
    /// lookup every answer starts with, without any membership check, so never a way to
    /// serve bytes (the hot-path bench measures it).
    pub async fn held_blob(&self, digest: &Digest) -> Option<(Outcome, u64)> {
        let source = self.stored_blob(digest).await?;
        Some((source.outcome(), source.known_len()?))
    }

    /// Makes sure the cache holds `digest` (for a prefetch): held already, or a fill joined
    /// or started and waited for. `progress` hears of the bytes as they arrive. Returns the
    /// blob's length.
    pub async fn hold_blob(
        &self,
        digest: &Digest,
        target: &Target,
        progress: impl Fn(u64),
    ) -> std::result::Result<u64, Arc<Error>> {
        let fill = match self.blob(digest, target).await.map_err(Arc::new)? {
            BlobSource::Fill { fill, .. } => fill,
            held => {
                let len = held.known_len().unwrap_or(0);
                progress(len);
                return Ok(len);
            }
        };
        let mut watch = fill.subscribe();
        let mut seen = 0;
        loop {
            let now = watch.borrow_and_update().clone();
            progress(now.written.saturating_sub(seen));
            seen = now.written;
            match now.phase {
                Phase::Done => return Ok(now.written),
                Phase::Failed(e) => return Err(e),
                // Held means in the store: wait for the publish too.
                Phase::Connecting | Phase::Streaming | Phase::Verified => {}
            }
            // The sender lives in the fill, which we hold: this only waits.
            let _ = watch.changed().await;
        }
    }

    /// The blob's bytes for `target`'s repository: from memory, from disk, or from a fill
    /// (joined or started). Content regcache holds (or is fetching for another request) is
    /// served only once it is known to belong to the repository (see [`Mirror::ensure_member`]);
    /// a fill this request started is upstream's own answer for the repository, recorded by
    /// [`Mirror::confirmed`] once upstream answered.
    async fn blob(&self, digest: &Digest, target: &Target) -> Result<BlobSource> {
        let source = match self.trusted(target, digest).await {
            true => self.any_blob(digest, target).await?,
            // Held for another trust domain: this upstream must deliver the bytes itself.
            false => match self
                .fills
                .join_or_start(&self.ctx, digest, target, true)
                .await?
            {
                Joined::Fill { fill, started } => BlobSource::Fill { fill, started },
                Joined::Stored => return Err(vanished()),
            },
        };
        if !matches!(source, BlobSource::Fill { started: true, .. }) {
            self.ensure_member(target, digest, None).await?;
        }
        Ok(source)
    }

    /// Any blob by digest, whichever repository it came from.
    async fn any_blob(&self, digest: &Digest, target: &Target) -> Result<BlobSource> {
        for _ in 0..2 {
            if let Some(source) = self.stored_blob(digest).await {
                return Ok(source);
            }
            match self
                .fills
                .join_or_start(&self.ctx, digest, target, false)
                .await?
            {
                Joined::Fill { fill, started } => return Ok(BlobSource::Fill { fill, started }),
                // Published between our lookup and the fills lock: look again.
                Joined::Stored => continue,
            }
        }
        Err(vanished())
    }

    /// A presigned bucket URL for a GET of a large blob that only the bucket holds here,
    /// when the bucket redirects (`bucket.redirect_min_bytes`) and the blob may be served
    /// for `target`. Never for a replica's request: replicas stream to each other.
    pub async fn blob_redirect(&self, digest: &Digest, target: &Target) -> Result<Option<Url>> {
        let bucket = self.ctx.tiers.bucket.as_ref();
        let Some(bucket) = bucket.filter(|b| b.redirecting() && target.hops == 0) else {
            return Ok(None);
        };
        if self.stored_blob(digest).await.is_some() {
            return Ok(None);
        }
        let len = bucket.blob_len(digest).await;
        if !len.is_some_and(|len| bucket.redirects(len)) || !self.trusted(target, digest).await {
            return Ok(None);
        }
        self.ensure_member(target, digest, None).await?;
        Ok(bucket.presigned(digest).await)
    }

    /// The blob if memory or disk has it (see [`crate::store::Tiers::find`]).
    async fn stored_blob(&self, digest: &Digest) -> Option<BlobSource> {
        let (held, tier) = self.ctx.tiers.find(&ObjectKey::blob(digest)).await?;
        Some(BlobSource::Held(held, tier))
    }
}

/// Waits for upstream's head on a fill; its status and length decide ours. Without a length
/// from upstream, a range must wait for the end of the fill to be resolved.
async fn fill_length(fill: &Fill, ranged: bool) -> Result<Option<u64>> {
    let vanished = || {
        Error::local(
            "blob fill",
            std::io::Error::other("fill ended without a result"),
        )
    };
    let mut progress = fill.subscribe();
    let (phase, total) = {
        let p = progress
            .wait_for(|p| !matches!(p.phase, Phase::Connecting))
            .await
            .map_err(|_| vanished())?;
        (p.phase.clone(), p.total)
    };
    if let Phase::Failed(e) = phase {
        return Err(Error::clone(&e));
    }
    if total.is_some() || !ranged {
        return Ok(total);
    }
    let (phase, written) = {
        let p = progress
            .wait_for(|p| matches!(p.phase, Phase::Verified | Phase::Done | Phase::Failed(_)))
            .await
            .map_err(|_| vanished())?;
        (p.phase.clone(), p.written)
    };
    match phase {
        Phase::Failed(e) => Err(Error::clone(&e)),
        _ => Ok(Some(written)),
    }
}
