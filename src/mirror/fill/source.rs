//! Where a fill's bytes come from, in order: the shared bucket (what some replica already
//! verified), the blob's owner replica (see `cluster`), the replica holding the blob's fill
//! lease (see `store::bucket::lease`), and only then upstream, under a lease of its own.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, StatusCode};
use url::Url;

use super::{Fill, FillContext};
use crate::cluster::{Cluster, MAX_HOPS};
use crate::error::Error;
use crate::oci;
use crate::store::bucket::{BlobStream, Claim, Lease};
use crate::upstream::{Answer, Resource, Target};

/// Owner replicas asked in turn before a fill goes upstream itself.
const MAX_OWNERS_ASKED: usize = 2;

/// Where a fill's bytes come from.
pub(super) enum Source {
    Upstream(Answer),
    Bucket(BlobStream),
    /// Another replica's answer: the blob's owner, or its lease holder.
    Peer(BoxStream<'static, Result<Bytes, BodyError>>),
}

/// Why a body stopped, by where it came from.
pub(super) enum BodyError {
    Upstream(reqwest::Error),
    Bucket(object_store::Error),
    Peer(reqwest::Error),
}

pub(super) struct Picked {
    pub source: Source,
    pub total: Option<u64>,
    /// Held while this replica fills from upstream, until the blob is in the bucket.
    pub lease: Option<Lease>,
}

/// Picks the first source that has the blob. `bucket_allowed` is false for a fill that
/// its trust domain must deliver itself.
pub(super) async fn pick(
    ctx: &FillContext,
    fill: &Fill,
    target: &Target,
    bucket_allowed: bool,
) -> Result<Picked, Error> {
    let bucket = ctx.tiers.bucket.as_ref();
    if let Some(bucket) = bucket.filter(|_| bucket_allowed) {
        if let Some((len, stream)) = bucket.blob(&fill.digest).await {
            return Ok(picked(Source::Bucket(stream), Some(len)));
        }
    }
    let cluster = ctx.cluster.as_deref();
    if let Some(cluster) = cluster.filter(|_| target.hops == 0) {
        if let Some(response) = from_owner(cluster, fill, target).await? {
            return Ok(peer(response));
        }
    }
    let mut lease = None;
    let this = cluster.and_then(Cluster::this);
    if let (Some(cluster), Some(bucket), Some(this)) = (cluster, bucket, this) {
        match bucket.claim(&fill.digest, this.as_str()).await {
            Claim::Taken(taken) => lease = Some(taken),
            Claim::HeldBy(holder) if holder != this.as_str() && target.hops < MAX_HOPS => {
                if let Some(response) = from_holder(cluster, &holder, fill, target).await? {
                    return Ok(peer(response));
                }
            }
            Claim::HeldBy(_) | Claim::Unknown => {}
        }
    }
    let resource = Resource::Blob(&fill.digest);
    let response = target
        .upstream
        .send(Method::GET, &target.name, resource, None, target.priority)
        .await?;
    let total = response.content_length();
    Ok(Picked {
        lease,
        ..picked(Source::Upstream(response), total)
    })
}

fn picked(source: Source, total: Option<u64>) -> Picked {
    Picked {
        source,
        total,
        lease: None,
    }
}

fn peer(response: reqwest::Response) -> Picked {
    let total = response.content_length();
    let body = response.bytes_stream().map_err(BodyError::Peer).boxed();
    picked(Source::Peer(body), total)
}

/// Asks the owner replica of the blob, unless this replica owns it. `None`: go on (the
/// owner failed, or there is none); an owner's "not found" is the answer.
async fn from_owner(
    cluster: &Cluster,
    fill: &Fill,
    target: &Target,
) -> Result<Option<reqwest::Response>, Error> {
    // A failed owner is left out and the next one asked: the replicas that saw it fail
    // agree on the next.
    for _ in 0..MAX_OWNERS_ASKED {
        let Some(owner) = cluster.owner(&fill.digest) else {
            return Ok(None);
        };
        match ask(cluster, &owner, "owner", fill, target).await? {
            Some(response) => return Ok(Some(response)),
            None => cluster.mark_down(&owner),
        }
    }
    Ok(None)
}

/// Asks the replica whose lease says it is filling the blob (members disagreed on the
/// owner). `None`: it failed; go upstream.
async fn from_holder(
    cluster: &Cluster,
    holder: &str,
    fill: &Fill,
    target: &Target,
) -> Result<Option<reqwest::Response>, Error> {
    let Ok(holder) = Url::parse(holder) else {
        return Ok(None);
    };
    ask(cluster, &holder, "lease_holder", fill, target).await
}

/// GETs the blob from `member`, one hop further. `None`: it failed.
async fn ask(
    cluster: &Cluster,
    member: &Url,
    role: &str,
    fill: &Fill,
    target: &Target,
) -> Result<Option<reqwest::Response>, Error> {
    let upstream = target.upstream.name();
    let hops = target.hops + 1;
    let asked = cluster
        .fetch_blob(member, upstream, &target.name, &fill.digest, hops)
        .await;
    match asked {
        Ok(response) if response.status().is_success() => {
            cluster.count(role, "ok");
            Ok(Some(response))
        }
        Ok(response) if response.status() == StatusCode::NOT_FOUND => {
            cluster.count(role, "not_found");
            Err(Error::not_found(
                oci::ErrorCode::BlobUnknown,
                format!(
                    "blob unknown to repository {} (the {role} replica asked)",
                    target.name
                ),
            ))
        }
        answer => {
            cluster.count(role, "fallback");
            let why = match answer {
                Ok(response) => response.status().to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(%member, role, digest = %fill.digest, %why, "a replica asked for a blob failed; going on");
            Ok(None)
        }
    }
}
